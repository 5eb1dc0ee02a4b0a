//! The RFC 3339 timestamps of a packument's `time` map.

/// An instant: whole seconds since the epoch and the nanoseconds past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

impl Instant {
    /// Whether this instant is later than `secs` seconds since the epoch.
    pub fn is_after(self, secs: u64) -> bool {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        self.secs > secs || (self.secs == secs && self.nanos > 0)
    }

    /// The whole seconds since the epoch; 0 for earlier instants.
    pub fn epoch_secs(self) -> u64 {
        u64::try_from(self.secs).unwrap_or(0)
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` as npm writes it
/// (`2015-03-24T00:12:24.039Z`); a missing offset means UTC.
pub fn parse_rfc3339(text: &str) -> Option<Instant> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let year = digits(&b[0..4])?;
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, &c) in fraction[..len].iter().take(9).enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }
    let offset = match rest {
        [] | [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let minutes = digits(&[*h1, *h2])? * 60 + digits(&[*m1, *m2])?;
            let seconds = i64::from(minutes) * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second)
        - offset;
    Some(Instant { secs, nanos })
}

/// The value of a run of ASCII digits.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Option<i64> {
        parse_rfc3339(text).map(|i| i.secs)
    }

    #[test]
    fn npm_timestamps() {
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(secs("2015-03-24T00:12:24.039Z"), Some(1_427_155_944));
        assert_eq!(
            parse_rfc3339("2015-03-24T00:12:24.039Z").unwrap().nanos,
            39_000_000
        );
        assert_eq!(secs("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(secs("2026-11-22T02:12:14.500Z"), Some(1_795_313_534));
        assert_eq!(secs("1969-12-31T23:59:59Z"), Some(-1));
    }

    #[test]
    fn offsets_and_variants() {
        assert_eq!(secs("2015-03-24T02:12:24+02:00"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-23T22:12:24-02:00"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-24 00:12:24"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-24t00:12:24.1234567891z"), Some(1_427_155_944));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "yesterday",
            "2015-13-01T00:00:00Z",
            "2015-02-29T00:00:00Z",
            "2015-03-24T24:00:00Z",
            "2015-03-24T00:12:24.Z",
            "2015-03-24T00:12:24+0200",
            "2015-03-24T00:12:24Zjunk",
            "2015-3-24T00:12:24Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text:?}");
        }
    }

    #[test]
    fn after() {
        let at = parse_rfc3339("1970-01-01T00:01:40Z").unwrap();
        assert!(!at.is_after(100));
        assert!(at.is_after(99));
        let later = parse_rfc3339("1970-01-01T00:01:40.5Z").unwrap();
        assert!(later.is_after(100));
        assert!(!later.is_after(101));
        assert_eq!(later.epoch_secs(), 100);
        assert_eq!(
            parse_rfc3339("1960-01-01T00:00:00Z").unwrap().epoch_secs(),
            0
        );
    }
}
