//! RFC 9457 problem details: every error the server answers is `application/problem+json`.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use concord_core::storage::StoreError;
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answered over HTTP: a status, a short stable kind, and a useful detail.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short slug naming the kind of problem; the `type` is `urn:concord:problem:<kind>`.
    pub kind: &'static str,
    /// What went wrong, for a person reading it.
    pub detail: String,
    /// Extra headers (the current `ETag` on a 412, say).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The body of every error answer (RFC 9457).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "urn:concord:problem:not-found",
    "title": "Not Found",
    "status": 404,
    "detail": "no document 7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10"
}))]
pub struct Problem<'a> {
    /// `urn:concord:problem:<kind>`: which problem, stable for programs to match on. Among
    /// them: 400 `invalid-json`, `invalid-id`, `invalid-version`, `invalid-pointer`,
    /// `invalid-patch`, `invalid-changes`, `invalid-agent`; 401 `unauthorized`; 403
    /// `forbidden`; 404 `not-found`, `unknown-version`, `path-not-found`; 408
    /// `body-timeout`; 409 `already-exists`, `path-not-found`, `test-failed`, `fenced`,
    /// `strategy-refuses`, `idempotency-key-in-flight`; 412 `stale-version`,
    /// `unknown-version`, `weak-etag`; 413 `body-too-large`, `document-too-large`,
    /// `history-too-large`; 415
    /// `unsupported-media-type`; 422 `invalid-body`, `invalid-value`, `wrong-type`,
    /// `idempotency-key-reused`; 423 `locked`; 428 `if-match-required`, `lock-required`;
    /// `patch-too-large`; 503 `too-many-connections`, `storage-unavailable`,
    /// `writer-contended`, `handling-timeout`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: &'a str,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person reading it.
    pub detail: &'a str,
}

impl ApiError {
    /// An error with this status, kind and detail.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(kind: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, detail)
    }

    /// 404: no such document.
    pub fn doc_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no document {id}"),
        )
    }

    /// 500: something broke inside; the detail is logged, not shown.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the server failed to handle this request; see its log",
        )
    }

    /// Adds a header to the response.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The current version, when the problem names it (its `ETag`: a stale base, say).
    pub fn current_version(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name == header::ETAG)
            .and_then(|(_, v)| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned())
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        problem_body(self.status, self.kind, &self.detail)
    }
}

/// The problem+json body for a status, kind and detail.
pub fn problem_body(status: StatusCode, kind: &str, detail: &str) -> Vec<u8> {
    serde_json::to_vec(&Problem {
        kind: format!("urn:concord:problem:{kind}"),
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        detail,
    })
    .expect("a problem always serializes")
}

impl ApiError {
    /// A body or message that is not JSON Concord takes (`concord_protocol::json`):
    /// `400` `invalid-json` (`syntax` is the kind of a plain syntax error, `what` names the
    /// input in its detail), or `422` `invalid-value` for an integer out of range.
    pub fn json(e: concord_protocol::json::Error, what: &str, syntax: &'static str) -> Self {
        use concord_protocol::json::Error as E;
        match e {
            E::NotUtf8(e) => Self::bad_request(syntax, format!("{what} is not UTF-8: {e}")),
            E::Syntax(e) => Self::bad_request(syntax, format!("{what} is not valid JSON: {e}")),
            E::DuplicateKey { .. } => Self::bad_request("invalid-json", format!("{what}: {e}")),
            E::IntegerOutOfRange { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-value",
                format!("{what}: {e}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let mut response = Response::new(Body::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

impl From<concord_core::Error> for ApiError {
    fn from(e: concord_core::Error) -> Self {
        use concord_core::Error as E;
        let detail = e.to_string();
        match e {
            E::InvalidPointer { .. } => ApiError::bad_request("invalid-pointer", detail),
            E::InvalidVersion(_) => ApiError::bad_request("invalid-version", detail),
            E::UnknownVersion(_) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "unknown-version", detail)
            }
            E::PathNotFound { .. } => ApiError::new(StatusCode::CONFLICT, "path-not-found", detail),
            E::TestFailed { .. } => ApiError::new(StatusCode::CONFLICT, "test-failed", detail),
            E::WrongType { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "wrong-type", detail)
            }
            E::InvalidPatch(_) => ApiError::bad_request("invalid-patch", detail),
            E::PatchTooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "patch-too-large", detail)
            }
            E::InvalidValue(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", detail)
            }
            E::InvalidChanges(_) => ApiError::bad_request("invalid-changes", detail),
            E::LostNotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "lost-not-found", detail),
            E::DeadlineExceeded => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "handling-timeout", detail)
                    .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            E::Load(_) | E::Automerge(_) => ApiError::internal(detail),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::doc_not_found(id),
            StoreError::AlreadyExists(id) => ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                format!("document {id} already exists"),
            ),
            // Not "unavailable, retry": damage does not heal by itself, and it is found by
            // reads too (issue 6). A corrupt row or page fails its statement, so nothing
            // was applied.
            StoreError::Corrupt(_) => {
                tracing::error!(error = %e, "stored data is damaged");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "storage-corrupt",
                    "the stored data this request needs is damaged, so it was not carried out; the server log says where",
                )
            }
            StoreError::Backend(_) => {
                tracing::error!(error = %e, "storage failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage-unavailable",
                    "storage failed; the write may or may not have been applied (retry with the same Idempotency-Key)",
                )
            }
        }
    }
}

/// The problem kind of a write refused for the size of the document it would make.
pub const DOCUMENT_TOO_LARGE: &str = "document-too-large";

/// A registry error as a problem: the one place its HTTP status and kind are chosen.
impl From<crate::registry::Error> for ApiError {
    fn from(e: crate::registry::Error) -> Self {
        use crate::registry::Error as E;
        let detail = e.to_string();
        match e {
            E::NotFound(id) => ApiError::doc_not_found(id),
            E::AlreadyExists(_) => ApiError::new(StatusCode::CONFLICT, "already-exists", detail),
            E::Refused(refusal) => refusal.into(),
            E::Document(e) => e.into(),
            E::InvalidSync(_) => ApiError::bad_request("invalid-sync-message", detail),
            E::UnknownVersion(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown-version", detail),
            E::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, DOCUMENT_TOO_LARGE, detail)
            }
            E::HistoryFull { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "history-too-large", detail)
            }
            E::Store(e) => e.into(),
            E::Unloadable(_) | E::Internal(_) => ApiError::internal(detail),
        }
    }
}

/// Where a transport that is not plain HTTP (the WebSocket, MCP tools) puts what HTTP puts
/// in `If-Match` and `Concord-Lock`: the names of its fields, for refusals that name them.
pub struct Fields {
    /// The field holding the version the writer read.
    pub base: &'static str,
    /// The field holding the lease token.
    pub lock: &'static str,
    /// How a lease is taken.
    pub lease: &'static str,
}

/// A write's error as a transport with [`Fields`] answers it: the HTTP problem, but the
/// refusals that name HTTP headers name the transport's fields instead.
pub fn in_fields(e: crate::registry::Error, fields: &Fields) -> ApiError {
    use crate::policy::Refusal;
    let detail = match &e {
        crate::registry::Error::Refused(Refusal::IfMatchRequired { .. }) => format!(
            "this write needs \"{}\": the version you read, or \"*\" to write against the current version",
            fields.base
        ),
        crate::registry::Error::Refused(Refusal::LockRequired) => format!(
            "a lock document needs the token of a lease: {}, then send \"{}\": <token> with each write",
            fields.lease, fields.lock
        ),
        _ => return e.into(),
    };
    ApiError { detail, ..e.into() }
}

/// Marks a response whose error body belongs to its own protocol (JSON-RPC, on `/mcp`):
/// [`ensure_problem_json`] leaves it as it is, since its client reads that body.
#[derive(Debug, Clone, Copy)]
pub struct OwnErrorBody;

/// Middleware: turns any error response that is not yet problem+json (a 404 for an unknown
/// route, a 405, a 413 from the body limit, an extractor rejection) into one, keeping its
/// status and using its text as the detail.
pub async fn ensure_problem_json(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.extensions().get::<OwnErrorBody>().is_some()
    {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such resource".to_owned(),
            StatusCode::METHOD_NOT_ALLOWED => "this method is not allowed here".to_owned(),
            StatusCode::PAYLOAD_TOO_LARGE => "the request body is over the size limit".to_owned(),
            _ => status.canonical_reason().unwrap_or("error").to_owned(),
        }
    } else {
        text
    };
    let kind = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    axum::response::Response::from_parts(parts, Body::from(problem_body(status, kind, &detail)))
}
