//! PEP 691 content negotiation: which form of a simple page the client gets.

/// A form a simple index page is served in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// PEP 691 JSON, `application/vnd.pypi.simple.v1+json`.
    Json,
    /// PEP 691 HTML, `application/vnd.pypi.simple.v1+html`.
    Html,
    /// PEP 503 HTML, `text/html`: what clients that say nothing get.
    TextHtml,
}

impl Form {
    /// The Content-Type a page in this form is served with.
    pub fn content_type(self) -> &'static str {
        match self {
            Form::Json => "application/vnd.pypi.simple.v1+json",
            Form::Html => "application/vnd.pypi.simple.v1+html",
            Form::TextHtml => "text/html; charset=utf-8",
        }
    }

    /// The media types naming this form exactly (PEP 691 `latest` aliases
    /// included).
    fn media_types(self) -> &'static [&'static str] {
        match self {
            Form::Json => &[
                "application/vnd.pypi.simple.v1+json",
                "application/vnd.pypi.simple.latest+json",
            ],
            Form::Html => &[
                "application/vnd.pypi.simple.v1+html",
                "application/vnd.pypi.simple.latest+html",
            ],
            Form::TextHtml => &["text/html"],
        }
    }

    /// The `type/*` range that covers this form.
    fn type_range(self) -> &'static str {
        match self {
            Form::Json | Form::Html => "application/*",
            Form::TextHtml => "text/*",
        }
    }
}

/// One media range of an `Accept` header.
struct Range {
    media: String,
    q: f32,
}

/// How well one form is accepted: its quality, how specifically a range
/// named it (2 exact, 1 `type/*`, 0 `*/*`) and where that range stood.
#[derive(Clone, Copy)]
struct Match {
    q: f32,
    specificity: u8,
    position: usize,
}

/// The form the client's `Accept` header prefers: highest quality first,
/// then the range that names the form most exactly, then the range listed
/// first, then HTML. No header, or one that accepts none of the forms, gets
/// PEP 503 HTML, which every client understands.
pub fn preferred(accept: Option<&str>) -> Form {
    let ranges = parse(accept.unwrap_or(""));
    let mut best: Option<(Form, Match)> = None;
    // Listed in the server's order of preference for full ties.
    for form in [Form::TextHtml, Form::Html, Form::Json] {
        let Some(found) = matching(form, &ranges) else {
            continue;
        };
        if found.q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((_, b)) => {
                (
                    found.q,
                    found.specificity,
                    std::cmp::Reverse(found.position),
                ) > (b.q, b.specificity, std::cmp::Reverse(b.position))
            }
        };
        if better {
            best = Some((form, found));
        }
    }
    best.map_or(Form::TextHtml, |(form, _)| form)
}

/// The most specific range that covers `form`; the first one on a tie.
fn matching(form: Form, ranges: &[Range]) -> Option<Match> {
    let mut best: Option<Match> = None;
    for (position, range) in ranges.iter().enumerate() {
        let specificity = if form.media_types().contains(&range.media.as_str()) {
            2
        } else if range.media == form.type_range() {
            1
        } else if range.media == "*/*" {
            0
        } else {
            continue;
        };
        if best.is_none_or(|b| specificity > b.specificity) {
            best = Some(Match {
                q: range.q,
                specificity,
                position,
            });
        }
    }
    best
}

fn parse(header: &str) -> Vec<Range> {
    header
        .split(',')
        .filter_map(|part| {
            let mut pieces = part.split(';');
            let media = pieces.next()?.trim().to_ascii_lowercase();
            if media.is_empty() {
                return None;
            }
            let q = pieces
                .filter_map(|param| param.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, value)| {
                    value.trim().parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0)
                });
            Some(Range { media, q })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_header_or_anything_means_pep_503_html() {
        assert_eq!(preferred(None), Form::TextHtml);
        assert_eq!(preferred(Some("")), Form::TextHtml);
        assert_eq!(preferred(Some("*/*")), Form::TextHtml);
        assert_eq!(preferred(Some("text/html")), Form::TextHtml);
        assert_eq!(preferred(Some("image/png")), Form::TextHtml);
    }

    #[test]
    fn pip_and_uv_get_json() {
        let pip = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01";
        assert_eq!(preferred(Some(pip)), Form::Json);
        let uv = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
        assert_eq!(preferred(Some(uv)), Form::Json);
        assert_eq!(
            preferred(Some("application/vnd.pypi.simple.latest+json")),
            Form::Json
        );
    }

    #[test]
    fn q_values_decide() {
        assert_eq!(
            preferred(Some(
                "application/vnd.pypi.simple.v1+json;q=0.5, application/vnd.pypi.simple.v1+html"
            )),
            Form::Html
        );
        assert_eq!(
            preferred(Some(
                "text/html;q=0.1, application/vnd.pypi.simple.v1+json;q=0.9"
            )),
            Form::Json
        );
        // q=0 refuses a form.
        assert_eq!(
            preferred(Some(
                "text/html;q=0, application/vnd.pypi.simple.v1+html;q=0.1"
            )),
            Form::Html
        );
        assert_eq!(
            preferred(Some("text/html;q=0, */*;q=0.5")),
            Form::Html,
            "the exact q=0 refuses text/html even though */* would take it"
        );
    }

    #[test]
    fn ties_go_to_the_exact_range_then_the_first_listed() {
        assert_eq!(
            preferred(Some("*/*, application/vnd.pypi.simple.v1+json")),
            Form::Json
        );
        assert_eq!(
            preferred(Some("application/vnd.pypi.simple.v1+json, text/html")),
            Form::Json
        );
        assert_eq!(
            preferred(Some("text/html, application/vnd.pypi.simple.v1+json")),
            Form::TextHtml
        );
        assert_eq!(preferred(Some("application/*")), Form::Html);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Form::Json.content_type(),
            "application/vnd.pypi.simple.v1+json"
        );
        assert_eq!(
            Form::Html.content_type(),
            "application/vnd.pypi.simple.v1+html"
        );
        assert!(Form::TextHtml.content_type().starts_with("text/html"));
    }
}
