//! Write strategies as policies: given a document's strategy, the kind of write and the
//! version the writer names, the base version the write is applied at, or a refusal.

use axum::http::{header, HeaderValue, StatusCode};
use concord_core::{Strategy, Version};

use crate::problem::ApiError;
use crate::registry::Lease;

/// The `If-Match` of a request (RFC 9110, section 13.1.1), compared strongly: a weak
/// entity tag (`W/"…"`) never matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: against whatever is current.
    Any,
    /// One strong entity tag: a version the writer read.
    Version(Version),
    /// A list of entity tags, of which any may match: the versions of its strong tags, in
    /// the order given. Weak tags are left out, as they never match; a list of weak tags
    /// only is empty, and matches nothing.
    AnyOf(Vec<Version>),
}

impl IfMatch {
    /// Parses the field lines of `If-Match`: `*`, or a comma-separated list of quoted
    /// entity tags, each holding a version. Several lines are one list (RFC 9110, section
    /// 5.3). Unquoted and unterminated tags are refused (400 `invalid-version`), as is a
    /// weak or strong tag that does not hold a version.
    pub fn parse_header<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self, ApiError> {
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
    pub fn parse_base(base: &str) -> Result<Self, ApiError> {
        match base.trim() {
            "*" => Ok(IfMatch::Any),
            base => parse_version(base).map(IfMatch::Version),
        }
    }

    /// The versions of the strong tags (none for `*`).
    pub fn versions(&self) -> &[Version] {
        match self {
            IfMatch::Any => &[],
            IfMatch::Version(v) => std::slice::from_ref(v),
            IfMatch::AnyOf(versions) => versions,
        }
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

/// How a request writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A whole new value.
    Put,
    /// JSON Patch or merge patch operations.
    Patch,
    /// Raw Automerge changes.
    Changes,
    /// A fork merged back.
    Merge,
}

/// The quoted entity tag of a version.
pub fn etag(version: &Version) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("hex and dots are valid in a header")
}

/// The 412 of a write whose base is not the current version, with the current `ETag`.
pub fn stale(current: &Version) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "stale-version",
        format!(
            "the document changed since the version you read; it is now {current}: read it again and retry"
        ),
    )
    .with_header(header::ETAG, etag(current))
}

/// The 412 of an `If-Match` made only of weak entity tags: under strong comparison (RFC
/// 9110, section 13.1.1) a weak tag never matches, so the precondition fails.
pub fn weak_only(current: &Version) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_FAILED,
        "weak-etag",
        format!(
            "If-Match held only weak entity tags (W/\"…\"), which never match a write's precondition; send the version you read as a strong tag, \"<version>\" (the document is now {current})"
        ),
    )
    .with_header(header::ETAG, etag(current))
}

fn if_match_required(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_REQUIRED,
        "if-match-required",
        format!(
            "{what} needs If-Match with the version you read (the ETag of your GET), or If-Match: * to write against the current version"
        ),
    )
}

/// Applies a document's strategy to a write: the base version to apply it at (`None`: the
/// present), or why it is refused. `lease` is the document's newest lease, `lock` the token
/// the writer sent.
pub fn admit(
    strategy: Strategy,
    kind: WriteKind,
    if_match: Option<&IfMatch>,
    lease: Option<&Lease>,
    lock: Option<u64>,
    now_ms: i64,
    current: &Version,
) -> Result<Option<Version>, ApiError> {
    if kind == WriteKind::Merge {
        return match strategy {
            Strategy::Branches | Strategy::Crdt => Ok(None),
            _ => Err(refuse(&format!(
                "only branches and crdt documents take merges; this one is {strategy}"
            ))),
        };
    }
    if strategy == Strategy::Lock {
        check_lease(lease, lock, now_ms)?;
    }
    base_for(strategy, kind, if_match, current)
}

/// The version a write is applied at (`None`: the current one), or why it is refused.
pub fn base_for(
    strategy: Strategy,
    kind: WriteKind,
    if_match: Option<&IfMatch>,
    current: &Version,
) -> Result<Option<Version>, ApiError> {
    if kind == WriteKind::Changes && strategy != Strategy::Crdt {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "strategy-refuses",
            format!("raw Automerge changes bypass the {strategy} strategy; only crdt documents accept them"),
        ));
    }
    match strategy {
        // With a list of tags, a crdt write is applied at the current version if the list
        // names it, else at the first strong tag listed (any listed version is one the
        // writer read; the first is taken as the one it means).
        Strategy::Crdt => match (kind, if_match) {
            (WriteKind::Put, None) => Err(if_match_required("a PUT")),
            (_, None | Some(IfMatch::Any)) => Ok(None),
            (_, Some(tags)) => match tags.versions() {
                [] => Err(weak_only(current)),
                versions if versions.contains(current) => Ok(Some(current.clone())),
                [first, ..] => Ok(Some(first.clone())),
            },
        },
        Strategy::Lww => Ok(None),
        // Passes if any strong tag listed is the current version.
        Strategy::Optimistic => match if_match {
            None => Err(if_match_required("an optimistic document's write")),
            Some(IfMatch::Any) => Ok(None),
            Some(tags) => match tags.versions() {
                [] => Err(weak_only(current)),
                versions if versions.contains(current) => Ok(None),
                _ => Err(stale(current)),
            },
        },
        // The lease was checked by `check_lease`; the holder read after locking.
        Strategy::Lock => Ok(None),
        Strategy::Queue => match (kind, if_match) {
            (WriteKind::Patch, None) => Ok(None),
            _ => Err(refuse(
                "a queue document accepts only intents: PATCH operations without If-Match, applied in arrival order",
            )),
        },
        Strategy::Branches => Err(refuse(
            "a branches document takes no direct writes: fork it (POST /v1/docs/{id}/fork), edit the fork, then merge the fork back (POST /v1/docs/{id}/merge)",
        )),
    }
}

fn refuse(detail: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "strategy-refuses", detail)
}

/// The request header carrying a lock token.
pub const LOCK_HEADER: &str = "concord-lock";

/// The 409 of a lock token that is not the newest one (`newest`, if known).
pub fn fenced(token: u64, newest: Option<u64>) -> ApiError {
    let detail = match newest {
        Some(newest) if newest > token => {
            format!("token {token} is fenced off: a newer lease (token {newest}) was issued since")
        }
        _ => format!("token {token} is not the token of the current lease"),
    };
    ApiError::new(StatusCode::CONFLICT, "fenced", detail)
}

/// The 409 of the newest lock token whose lease ran out (or was released).
pub fn lease_expired(token: u64) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "lease-expired",
        format!("the lease of token {token} expired; take the lock again"),
    )
}

/// Checks a lock-strategy write's token: it must be the newest token issued and its lease
/// must not have expired (fencing: a writer that paused past its lease cannot write).
pub fn check_lease(lease: Option<&Lease>, token: Option<u64>, now_ms: i64) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "lock-required",
            "a lock document needs the token of a lease: POST /v1/docs/{id}/lock, then send Concord-Lock: <token>",
        ));
    };
    match lease {
        Some(lease) if lease.token == token && lease.expires_at_ms > now_ms => Ok(()),
        Some(lease) if lease.token == token => Err(lease_expired(token)),
        lease => Err(fenced(token, lease.map(|l| l.token))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(byte: u8) -> Version {
        Version::new(vec![automerge::ChangeHash([byte; 32])])
    }

    /// `(strategy, kind, if_match, expected)`: `Ok(None)` is "at the current version",
    /// `Err(status)` a refusal.
    type Case<'a> = (
        Strategy,
        WriteKind,
        Option<&'a IfMatch>,
        Result<Option<Version>, u16>,
    );

    #[test]
    fn policy_table() {
        use Strategy::*;
        use WriteKind::*;
        let current = v(1);
        let old = IfMatch::Version(v(2));
        let now = IfMatch::Version(v(1));
        // Lists: with the current version (not first), without it, and of weak tags only.
        let with_now = IfMatch::AnyOf(vec![v(3), v(1), v(2)]);
        let without = IfMatch::AnyOf(vec![v(3), v(2)]);
        let weak = IfMatch::AnyOf(vec![]);
        let cases: Vec<Case<'_>> = vec![
            (Crdt, Put, None, Err(428)),
            (Crdt, Put, Some(&IfMatch::Any), Ok(None)),
            (Crdt, Put, Some(&old), Ok(Some(v(2)))),
            (Crdt, Put, Some(&with_now), Ok(Some(v(1)))),
            (Crdt, Put, Some(&without), Ok(Some(v(3)))),
            (Crdt, Put, Some(&weak), Err(412)),
            (Crdt, Patch, None, Ok(None)),
            (Crdt, Patch, Some(&old), Ok(Some(v(2)))),
            (Crdt, Patch, Some(&without), Ok(Some(v(3)))),
            (Crdt, Patch, Some(&weak), Err(412)),
            (Crdt, Changes, None, Ok(None)),
            (Lww, Put, None, Ok(None)),
            (Lww, Put, Some(&old), Ok(None)),
            (Lww, Put, Some(&weak), Ok(None)),
            (Lww, Changes, None, Err(409)),
            (Optimistic, Put, None, Err(428)),
            (Optimistic, Put, Some(&old), Err(412)),
            (Optimistic, Put, Some(&now), Ok(None)),
            (Optimistic, Put, Some(&with_now), Ok(None)),
            (Optimistic, Put, Some(&without), Err(412)),
            (Optimistic, Put, Some(&weak), Err(412)),
            (Optimistic, Patch, Some(&IfMatch::Any), Ok(None)),
            (Optimistic, Patch, Some(&with_now), Ok(None)),
            (Optimistic, Patch, Some(&weak), Err(412)),
            (Lock, Put, Some(&old), Ok(None)),
            (Lock, Put, Some(&weak), Ok(None)),
            (Queue, Patch, None, Ok(None)),
            (Queue, Patch, Some(&old), Err(409)),
            (Queue, Patch, Some(&weak), Err(409)),
            (Queue, Put, Some(&IfMatch::Any), Err(409)),
            (Branches, Put, Some(&IfMatch::Any), Err(409)),
            (Branches, Patch, None, Err(409)),
            (Branches, Changes, None, Err(409)),
        ];
        for (strategy, kind, if_match, expected) in cases {
            let got = base_for(strategy, kind, if_match, &current).map_err(|e| e.status.as_u16());
            assert_eq!(got, expected, "{strategy} {kind:?} {if_match:?}");
        }
    }

    #[test]
    fn weak_tags_only_fail_the_precondition_with_their_own_type() {
        let current = v(1);
        for strategy in [Strategy::Crdt, Strategy::Optimistic] {
            let e = base_for(
                strategy,
                WriteKind::Put,
                Some(&IfMatch::AnyOf(vec![])),
                &current,
            )
            .unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.kind),
                (412, "weak-etag"),
                "{strategy}"
            );
            assert!(e.headers.iter().any(|(name, _)| name == header::ETAG));
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
            let got = IfMatch::parse_header(lines.iter().map(String::as_str)).map_err(|e| {
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
        assert_eq!(IfMatch::parse_base("*").unwrap(), IfMatch::Any);
        assert_eq!(
            IfMatch::parse_base(&a.to_string()).unwrap(),
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
            assert_eq!(
                IfMatch::parse_base(&bad).unwrap_err().kind,
                "invalid-version"
            );
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;

    #[test]
    fn fencing_table() {
        let lease = Lease {
            token: 10,
            expires_at_ms: 1000,
            agent: "a".into(),
        };
        let cases = [
            (Some(&lease), Some(10), 999, Ok(())),
            (Some(&lease), Some(10), 1000, Err("lease-expired")),
            (Some(&lease), Some(9), 500, Err("fenced")),
            (Some(&lease), Some(11), 500, Err("fenced")),
            (None, Some(10), 500, Err("fenced")),
            (Some(&lease), None, 500, Err("lock-required")),
        ];
        for (lease, token, now, expected) in cases {
            let got = check_lease(lease, token, now).map_err(|e| e.kind);
            assert_eq!(got, expected, "{lease:?} {token:?} {now}");
        }
    }
}
