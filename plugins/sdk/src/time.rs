//! RFC 3339 timestamps, as package indexes record publish times (PyPI
//! `upload-time`, npm `time`, Helm `created`, Forge `created_at`, Go
//! `.info` `Time`).

use std::time::{SystemTime, UNIX_EPOCH};

/// An instant: whole seconds since the epoch and the nanoseconds past them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant {
    /// Seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds past `secs`.
    pub nanos: u32,
}

impl Instant {
    /// Whether this instant is later than `secs` seconds since the epoch
    /// (the form of `index-options.hide-published-after`).
    pub fn is_after(self, secs: u64) -> bool {
        let secs = i64::try_from(secs).unwrap_or(i64::MAX);
        self.secs > secs || (self.secs == secs && self.nanos > 0)
    }

    /// The whole seconds since the epoch; 0 for earlier instants (the form
    /// of `publication.published-at`).
    pub fn epoch_secs(self) -> u64 {
        u64::try_from(self.secs).unwrap_or(0)
    }
}

/// Seconds since the epoch, now (from `wasi:clocks`).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`: `t`/`z` in lower
/// case, a space for `T`, surrounding whitespace, and a missing offset
/// (read as UTC, as some npm registries write it) are taken too.
pub fn parse_rfc3339(text: &str) -> Option<Instant> {
    let b = text.trim().as_bytes();
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
            let (hours, minutes) = (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = i64::from(hours * 3600 + minutes * 60);
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

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_rfc3339(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
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

/// The date of a day since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> Option<i64> {
        parse_rfc3339(text).map(|i| i.secs)
    }

    #[test]
    fn timestamps_as_indexes_write_them() {
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(secs("2015-03-24T00:12:24.039Z"), Some(1_427_155_944));
        assert_eq!(
            parse_rfc3339("2015-03-24T00:12:24.039Z").unwrap().nanos,
            39_000_000
        );
        assert_eq!(secs("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(secs("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(secs("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(
            secs("2016-10-06T16:23:20.499814565-06:00"),
            Some(1_475_792_600)
        );
        assert_eq!(secs(" 2023-05-01T12:30:00.123456Z\n"), Some(1_682_944_200));
    }

    #[test]
    fn offsets_and_variants() {
        assert_eq!(secs("2015-03-24T02:12:24+02:00"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-23T22:12:24-02:00"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-24 00:12:24"), Some(1_427_155_944));
        assert_eq!(secs("2015-03-24t00:12:24.1234567891z"), Some(1_427_155_944));
        assert_eq!(secs("2024-01-02t08:34:05+05:30"), Some(1_704_164_645));
    }

    #[test]
    fn garbage_is_refused() {
        for text in [
            "",
            "yesterday",
            "2024-01-02",
            "2015-13-01T00:00:00Z",
            "2015-02-29T00:00:00Z",
            "2015-03-24T24:00:00Z",
            "2015-03-24T00:12:24.Z",
            "2015-03-24T00:12:24+0200",
            "2015-03-24T00:12:24+24:00",
            "2015-03-24T00:12:24Zjunk",
            "2015-3-24T00:12:24Z",
            "２０24-01-02T03:04:05Z",
        ] {
            assert_eq!(parse_rfc3339(text), None, "{text:?}");
        }
    }

    #[test]
    fn after_and_epoch_seconds() {
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

    #[test]
    fn formats_and_parses_back() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_704_164_645), "2024-01-02T03:04:05Z");
        assert_eq!(format_rfc3339(1_709_164_800), "2024-02-29T00:00:00Z");
        for seconds in [-86_401, 0, 951_782_400, 1_704_164_645, 4_102_444_799] {
            assert_eq!(secs(&format_rfc3339(seconds)), Some(seconds));
        }
        assert!(now() > 1_704_164_645);
    }
}
