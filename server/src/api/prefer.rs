//! RFC 7240 `Prefer` on writes: `return=minimal` answers a write with its version and the
//! number of changes it made, without the document's value.

use axum::http::{header::HeaderName, HeaderMap};

/// The request header.
pub(super) const PREFER: HeaderName = HeaderName::from_static("prefer");

/// The response header naming the preference the answer honours.
pub(super) const PREFERENCE_APPLIED: &str = "preference-applied";

/// True if the request asks `return=minimal` (in any of its `Prefer` lines, any case, the
/// value quoted or not). Other preferences, `return=representation` and anything this
/// server does not know, are ignored, as RFC 7240 says they may be: the answer is whole.
/// What the request's answer carries: [`wants_minimal`] as the registry takes it.
pub(super) fn answer(headers: &HeaderMap) -> crate::registry::Answer {
    if wants_minimal(headers) {
        crate::registry::Answer::Minimal
    } else {
        crate::registry::Answer::Whole
    }
}

pub(super) fn wants_minimal(headers: &HeaderMap) -> bool {
    headers
        .get_all(PREFER)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        // `token [ "=" word ] *( ";" parameter )`: parameters do not matter here.
        .filter_map(|preference| preference.split(';').next()?.split_once('='))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("return")
                && value
                    .trim()
                    .trim_matches('"')
                    .eq_ignore_ascii_case("minimal")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(lines: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(PREFER, line.parse().unwrap());
        }
        wants_minimal(&headers)
    }

    #[test]
    fn return_minimal_in_any_spelling() {
        assert!(with(&["return=minimal"]));
        assert!(with(&["Return = \"Minimal\""]));
        assert!(with(&["respond-async, wait=5, return=minimal; x=1"]));
        assert!(with(&["handling=strict", "return=minimal"]));
    }

    #[test]
    fn anything_else_is_a_whole_answer() {
        assert!(!with(&[]));
        assert!(!with(&["return=representation"]));
        assert!(!with(&["return"]));
        assert!(!with(&["returns=minimal", "minimal"]));
        assert!(!with(&["handling=lenient; return=minimal"]));
    }
}
