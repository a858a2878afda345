//! What the server logs about requests, and that no token is in it.
//!
//! A bearer token is a password: a log line holding one hands it to whoever reads the logs.
//! Three places could carry one: `?access_token=` (the WebSocket and event-stream
//! endpoints take it, see [`crate::auth`]), the viewer's `/?token=` (read by the page, not
//! the server), and `Authorization: Bearer`. So:
//! - `access_token` is taken out of the query before the request log sees the request
//!   ([`crate::auth::take_query_token`] runs outside the log);
//! - the request log ([`request_span`]) records the URI with the value of every query
//!   parameter named `token` or `access_token` replaced by `[redacted]`, and no headers;
//! - [`redact`] does the same to any text, and hides what follows `Bearer `: the binary
//!   passes every log line through [`redact_line`], whatever its level or its origin (a
//!   dependency's trace output included).

use std::borrow::Cow;

use axum::http::Request;

/// What replaces a token.
pub const REDACTED: &str = "[redacted]";

/// Where a token begins, lowercase: what follows each marker, up to a delimiter, is the
/// secret.
const MARKERS: [&str; 2] = ["token=", "bearer "];

/// `text` with the value after every `token=` (so `access_token=` too) and every `Bearer `
/// (any case) replaced by [`REDACTED`].
pub fn redact(text: &str) -> Cow<'_, str> {
    // ASCII lowercasing keeps every byte where it is, so offsets carry over.
    let lower = text.to_ascii_lowercase();
    let next_marker = |from: usize| {
        MARKERS
            .iter()
            .filter_map(|m| lower[from..].find(m).map(|at| (from + at, m.len())))
            .min()
    };
    let Some(mut found) = next_marker(0) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    loop {
        let (at, len) = found;
        let start = at + len;
        let end = text[start..]
            .find(|c: char| c.is_whitespace() || "&\"'<>,;)}]#\\".contains(c))
            .map_or(text.len(), |n| start + n);
        out.push_str(&text[copied..start]);
        if end > start {
            out.push_str(REDACTED);
        }
        copied = end;
        match next_marker(end) {
            Some(next) => found = next,
            None => break,
        }
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// A log line with its tokens redacted, as [`redact`] does, also when it is coloured: the
/// escape sequences of colours may stand between a name and its value, so a line that has
/// something to redact once they are taken out is written without them.
pub fn redact_line(line: &str) -> Cow<'_, str> {
    if !line.contains('\x1b') {
        return redact(line);
    }
    let plain = strip_colours(line);
    match redact(&plain) {
        Cow::Borrowed(_) => Cow::Borrowed(line),
        Cow::Owned(redacted) => Cow::Owned(redacted),
    }
}

/// `text` without its ANSI escape sequences (`ESC [ … letter`).
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The request log's span: method, URI (tokens redacted) and version, at debug level, as
/// `tower_http`'s default span has them.
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %request.method(),
        uri = %redact(&request.uri().to_string()),
        version = ?request.version(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_wherever_they_are() {
        let cases = [
            (
                "/v1/events?access_token=s3cr3t",
                "/v1/events?access_token=[redacted]",
            ),
            ("/?token=abc&x=1", "/?token=[redacted]&x=1"),
            ("/x?a=1&TOKEN=abc#f", "/x?a=1&TOKEN=[redacted]#f"),
            (
                r#"{"authorization": "Bearer abc.def", "x": "y"}"#,
                r#"{"authorization": "Bearer [redacted]", "x": "y"}"#,
            ),
            (
                "bearer abc bearer def",
                "bearer [redacted] bearer [redacted]",
            ),
            ("uri=/a?token= next", "uri=/a?token= next"),
            ("nothing here", "nothing here"),
            ("é token=é€ é", "é token=[redacted] é"),
        ];
        for (text, expected) in cases {
            assert_eq!(redact(text), expected, "{text}");
        }
        assert!(matches!(redact("plain"), Cow::Borrowed(_)));
        let coloured = "\x1b[3mtoken\x1b[0m\x1b[2m=\x1b[0mabc \x1b[1mok\x1b[0m";
        assert_eq!(redact_line(coloured), "token=[redacted] ok");
        assert_eq!(redact_line("\x1b[1mplain\x1b[0m"), "\x1b[1mplain\x1b[0m");
    }
}
