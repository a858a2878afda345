//! The HTTP side of the write strategies: `If-Match` and version parsing, entity tags, and
//! how a policy's [`Refusal`] is answered (status, problem type, `ETag`). The policies
//! themselves are pure functions in [`concord_core::policy`].

use axum::http::{header, HeaderValue, StatusCode};
pub use concord_core::policy::{
    admit, base_for, check_lease, check_release, may_fork, takes_changes, Holder, IfMatch, Lease,
    Refusal, WriteKind,
};
use concord_core::Version;

use crate::problem::ApiError;

/// Parses the field lines of `If-Match`: `*`, or a comma-separated list of quoted
/// entity tags, each holding a version. Several lines are one list (RFC 9110, section
/// 5.3). Unquoted and unterminated tags are refused (400 `invalid-version`), as is a
/// weak or strong tag that does not hold a version.
pub fn parse_if_match<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<IfMatch, ApiError> {
    let mut any = false;
    let mut strong = Vec::new();
    let mut tags = 0usize;
    for line in lines {
        let mut rest = line;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('*') {
                any = true;
                rest = after;
            } else {
                let (weak, version, after) = entity_tag(rest)?;
                tags += 1;
                if !weak {
                    strong.push(version);
                }
                rest = after;
            }
            rest = rest.trim_start_matches([' ', '\t']);
            if !rest.is_empty() && !rest.starts_with(',') {
                return Err(invalid_if_match(format!(
                    "If-Match entries are separated by commas; unexpected {:?}",
                    excerpt(rest)
                )));
            }
        }
    }
    match (any, tags) {
        (true, 0) => Ok(IfMatch::Any),
        (true, _) => Err(invalid_if_match(
            "If-Match is either * or a list of entity tags, not both".into(),
        )),
        (false, 0) => Err(invalid_if_match(
            "If-Match is empty: send the version you read, quoted (\"<version>\"), or *".into(),
        )),
        (false, _) if strong.len() == 1 => Ok(IfMatch::Version(strong.remove(0))),
        (false, _) => Ok(IfMatch::AnyOf(strong)),
    }
}

/// Parses the `base` of a WebSocket write: `*` or a bare version (it is not an HTTP
/// header, so the version is not quoted).
pub fn parse_base(base: &str) -> Result<IfMatch, ApiError> {
    match base.trim() {
        "*" => Ok(IfMatch::Any),
        base => parse_version(base).map(IfMatch::Version),
    }
}

/// Parses a bare version, as query parameters (`?at=`, `?since=`), `Last-Event-ID` and
/// WebSocket messages carry it: heads joined by `.`, not quoted. Every version the server
/// reads, the ones inside `If-Match` entity tags included, is parsed here.
pub fn parse_version(raw: &str) -> Result<Version, ApiError> {
    let raw = raw.trim();
    if raw.starts_with('"') || raw.starts_with("W/") {
        return Err(ApiError::bad_request(
            "invalid-version",
            format!(
                "{:?} is an entity tag; here a version is given bare (heads joined by '.'), without quotes or W/",
                excerpt(raw)
            ),
        ));
    }
    version(raw)
}

/// A version from its text form: the one parser behind [`parse_version`] and the versions
/// of entity tags.
fn version(text: &str) -> Result<Version, ApiError> {
    text.parse::<Version>().map_err(ApiError::from)
}

/// One entity tag at the start of `text`: `(weak, version, the rest)`.
fn entity_tag(text: &str) -> Result<(bool, Version, &str), ApiError> {
    let (weak, quoted) = match text.strip_prefix("W/") {
        Some(quoted) => (true, quoted),
        None => (false, text),
    };
    let Some(inner) = quoted.strip_prefix('"') else {
        return Err(invalid_if_match(format!(
            "If-Match entity tags are quoted: send \"<version>\" (the ETag as the server gave it) or *, not {:?}",
            excerpt(text)
        )));
    };
    let Some(end) = inner.find('"') else {
        return Err(invalid_if_match(format!(
            "If-Match has an unterminated entity tag (no closing quote): {:?}",
            excerpt(text)
        )));
    };
    let version = version(&inner[..end])?;
    Ok((weak, version, &inner[end + 1..]))
}

fn invalid_if_match(detail: String) -> ApiError {
    ApiError::bad_request("invalid-version", detail)
}

/// The first characters of a value, for an error's detail.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

/// The quoted entity tag of a version.
pub fn etag(version: &Version) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("hex and dots are valid in a header")
}

/// The request header carrying a lock token.
pub const LOCK_HEADER: &str = "concord-lock";

/// The status a refusal is answered with over HTTP.
pub fn status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::IfMatchRequired { .. } | Refusal::LockRequired => {
            StatusCode::PRECONDITION_REQUIRED
        }
        Refusal::Stale { .. } | Refusal::WeakOnly { .. } => StatusCode::PRECONDITION_FAILED,
        Refusal::Strategy(_)
        | Refusal::Fenced { .. }
        | Refusal::NotHolder
        | Refusal::LeaseExpired
        | Refusal::NotAFork { .. } => StatusCode::CONFLICT,
        Refusal::WriterContended => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A refusal as a problem: its status, its kind, its text, and the current version's
/// `ETag` when it tells the writer what to read again.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let e = ApiError::new(status(&refusal), refusal.kind(), refusal.to_string());
        match refusal.current() {
            Some(current) => e.with_header(header::ETAG, etag(current)),
            None => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(byte: u8) -> Version {
        Version::new(vec![automerge::ChangeHash([byte; 32])])
    }

    /// Each refusal's status, and the `ETag` of the present where the refusal names it.
    #[test]
    fn refusals_render_once_with_their_status() {
        let current = v(1);
        let id = uuid::Uuid::nil();
        let cases = [
            (Refusal::IfMatchRequired { what: "a PUT" }, 428, false),
            (Refusal::LockRequired, 428, false),
            (
                Refusal::Stale {
                    current: current.clone(),
                },
                412,
                true,
            ),
            (
                Refusal::WeakOnly {
                    current: current.clone(),
                },
                412,
                true,
            ),
            (Refusal::Strategy("no".into()), 409, false),
            (Refusal::Fenced { newer: true }, 409, false),
            (Refusal::NotHolder, 409, false),
            (Refusal::LeaseExpired, 409, false),
            (
                Refusal::NotAFork {
                    fork: id,
                    target: id,
                },
                409,
                false,
            ),
            (Refusal::WriterContended, 503, false),
        ];
        for (refusal, code, tagged) in cases {
            let kind = refusal.kind();
            let text = refusal.to_string();
            let e = ApiError::from(refusal);
            assert_eq!((e.status.as_u16(), e.kind), (code, kind));
            assert_eq!(e.detail, text);
            assert_eq!(
                e.headers.iter().any(|(name, _)| name == header::ETAG),
                tagged,
                "{kind}"
            );
        }
    }

    /// `If-Match` field lines and what they parse to: `Ok(IfMatch)` or `Err(kind)`.
    #[test]
    fn if_match_header_table() {
        let (a, b) = (v(1), v(2));
        let both = format!("{a}.{b}");
        let multi = Version::new(vec![
            automerge::ChangeHash([1; 32]),
            automerge::ChangeHash([2; 32]),
        ]);
        let cases: Vec<(Vec<String>, Result<IfMatch, &str>)> = vec![
            (vec!["*".into()], Ok(IfMatch::Any)),
            (vec![" * ".into()], Ok(IfMatch::Any)),
            (vec![format!("\"{a}\"")], Ok(IfMatch::Version(a.clone()))),
            (vec![format!("  \"{both}\"  ")], Ok(IfMatch::Version(multi))),
            // Lists: any may match; weak tags are dropped (they never match).
            (
                vec![format!("\"{a}\", \"{b}\"")],
                Ok(IfMatch::AnyOf(vec![a.clone(), b.clone()])),
            ),
            (
                vec![format!("\"{b}\",\"{a}\"")],
                Ok(IfMatch::AnyOf(vec![b.clone(), a.clone()])),
            ),
            (
                vec![format!("W/\"{a}\", \"{b}\"")],
                Ok(IfMatch::Version(b.clone())),
            ),
            (vec![format!("W/\"{a}\"")], Ok(IfMatch::AnyOf(vec![]))),
            (
                vec![format!("W/\"{a}\", W/\"{b}\"")],
                Ok(IfMatch::AnyOf(vec![])),
            ),
            // Two field lines are one list, in order; empty members are ignored.
            (
                vec![format!("\"{a}\""), format!("\"{b}\"")],
                Ok(IfMatch::AnyOf(vec![a.clone(), b.clone()])),
            ),
            (
                vec![format!(", \"{a}\" ,,"), format!("W/\"{b}\"")],
                Ok(IfMatch::Version(a.clone())),
            ),
            // Refused: unquoted, unterminated, malformed, mixed with *, empty.
            (vec![a.to_string()], Err("invalid-version")),
            (vec![format!("\"{a}")], Err("invalid-version")),
            (vec![format!("{a}\"")], Err("invalid-version")),
            (vec![format!("W/{a}")], Err("invalid-version")),
            (vec![format!("w/\"{a}\"")], Err("invalid-version")),
            (vec![format!("\"{a}\" \"{b}\"")], Err("invalid-version")),
            (vec![format!("\"{a}\"x")], Err("invalid-version")),
            (vec![format!("\"{a}\", {b}")], Err("invalid-version")),
            (vec!["\"zz\"".into()], Err("invalid-version")),
            (vec!["W/\"nope\"".into()], Err("invalid-version")),
            (vec!["\"\"".into()], Err("invalid-version")),
            (vec![format!("\" {a}\"")], Err("invalid-version")),
            (vec![format!("*, \"{a}\"")], Err("invalid-version")),
            (vec!["*".into(), format!("\"{a}\"")], Err("invalid-version")),
            (vec!["".into()], Err("invalid-version")),
            (vec![" , ".into()], Err("invalid-version")),
        ];
        for (lines, expected) in cases {
            let got = parse_if_match(lines.iter().map(String::as_str)).map_err(|e| {
                assert_eq!(e.status.as_u16(), 400, "{lines:?}");
                assert!(!e.detail.is_empty());
                e.kind
            });
            assert_eq!(got, expected, "{lines:?}");
        }
    }

    /// Query parameters and WebSocket bases carry bare versions, through one parser.
    #[test]
    fn bare_versions() {
        let a = v(1);
        assert_eq!(parse_version(&a.to_string()).unwrap(), a);
        assert_eq!(parse_version(&format!(" {a} ")).unwrap(), a);
        assert_eq!(parse_base("*").unwrap(), IfMatch::Any);
        assert_eq!(
            parse_base(&a.to_string()).unwrap(),
            IfMatch::Version(a.clone())
        );
        for bad in [
            String::new(),
            "zz".into(),
            format!("\"{a}\""),
            format!("W/\"{a}\""),
        ] {
            let e = parse_version(&bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.kind),
                (400, "invalid-version"),
                "{bad}"
            );
            assert_eq!(parse_base(&bad).unwrap_err().kind, "invalid-version");
        }
    }
}
