//! Write strategies as policies: given a document's strategy, the kind of write and the
//! version the writer names, the base version the write is applied at, or a refusal.

use axum::http::{header, HeaderValue, StatusCode};
use concord_core::{Strategy, Version};

use crate::problem::ApiError;
use crate::registry::Lease;

/// The `If-Match` of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: against whatever is current.
    Any,
    /// A version the writer read.
    Version(Version),
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

fn if_match_required(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::PRECONDITION_REQUIRED,
        "if-match-required",
        format!(
            "{what} needs If-Match with the version you read (the ETag of your GET), or If-Match: * to write against the current version"
        ),
    )
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
        Strategy::Crdt => match (kind, if_match) {
            (WriteKind::Put, None) => Err(if_match_required("a PUT")),
            (_, Some(IfMatch::Version(v))) => Ok(Some(v.clone())),
            _ => Ok(None),
        },
        Strategy::Lww => Ok(None),
        Strategy::Optimistic => match if_match {
            None => Err(if_match_required("an optimistic document's write")),
            Some(IfMatch::Any) => Ok(None),
            Some(IfMatch::Version(v)) if v == current => Ok(None),
            Some(IfMatch::Version(_)) => Err(stale(current)),
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
        let cases: Vec<Case<'_>> = vec![
            (Crdt, Put, None, Err(428)),
            (Crdt, Put, Some(&IfMatch::Any), Ok(None)),
            (Crdt, Put, Some(&old), Ok(Some(v(2)))),
            (Crdt, Patch, None, Ok(None)),
            (Crdt, Patch, Some(&old), Ok(Some(v(2)))),
            (Crdt, Changes, None, Ok(None)),
            (Lww, Put, None, Ok(None)),
            (Lww, Put, Some(&old), Ok(None)),
            (Lww, Changes, None, Err(409)),
            (Optimistic, Put, None, Err(428)),
            (Optimistic, Put, Some(&old), Err(412)),
            (Optimistic, Put, Some(&now), Ok(None)),
            (Optimistic, Patch, Some(&IfMatch::Any), Ok(None)),
            (Lock, Put, Some(&old), Ok(None)),
            (Queue, Patch, None, Ok(None)),
            (Queue, Patch, Some(&old), Err(409)),
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
