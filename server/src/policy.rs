//! Write strategies as policies: given a document's strategy, the kind of write and the
//! version the writer names, the base version the write is applied at, or a refusal.

use axum::http::{header, HeaderValue, StatusCode};
use concord_core::{Strategy, Version};

use crate::problem::ApiError;

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

fn stale(current: &Version) -> ApiError {
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
        Strategy::Lock | Strategy::Queue => Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "strategy-unavailable",
            format!("the {strategy} strategy is not available in this build"),
        )),
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
        ];
        for (strategy, kind, if_match, expected) in cases {
            let got = base_for(strategy, kind, if_match, &current).map_err(|e| e.status.as_u16());
            assert_eq!(got, expected, "{strategy} {kind:?} {if_match:?}");
        }
    }
}
