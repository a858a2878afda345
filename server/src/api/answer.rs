//! How a write is answered: the answer's JSON (`WriteAnswer`), whole or, for `Prefer:
//! return=minimal`, without the value (`api/prefer.rs`), and the `Idempotency-Key` handling
//! that records an answer and replays it. Every HTTP write (docs, branches) and the MCP
//! tools answer through here.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use concord_core::Strategy;

use crate::idempotency::{respond, Begin};
use crate::problem::ApiError;
use crate::registry::{IdempotencyDraft, Responder, Written};
use crate::AppState;

/// The JSON of a written document, as every write answers it.
pub(super) fn written_body(written: &Written) -> Value {
    serde_json::to_value(WriteAnswer::from(written)).expect("JSON serializes")
}

/// The answer to every write, with `ETag` (and `Location` on create).
#[derive(Serialize, ToSchema)]
pub(super) struct WriteAnswer<'a> {
    /// The document.
    id: Uuid,
    /// Its version after the write: the `If-Match` of the next write made from this value.
    version: String,
    /// Its write strategy.
    strategy: Strategy,
    /// Its value after the write: the merged present. Left out when the request said
    /// `Prefer: return=minimal`.
    #[schema(value_type = Option<Value>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a Value>,
    /// How many changes the write made (0: it changed nothing).
    new_changes: usize,
}

impl<'a> From<&'a Written> for WriteAnswer<'a> {
    fn from(written: &'a Written) -> Self {
        WriteAnswer {
            id: written.id,
            version: written.version.to_string(),
            strategy: written.strategy,
            value: written.value.as_deref(),
            new_changes: written.new_changes,
        }
    }
}

/// The answer to every write: `{"id","version","strategy","value","new_changes"}` with
/// `ETag` (and `Location` on create).
fn doc_response(written: &Written, status: u16) -> (Vec<(String, String)>, Vec<u8>) {
    let headers = write_headers(written, status);
    let body = WriteAnswer::from(written);
    (headers, serde_json::to_vec(&body).expect("JSON serializes"))
}

/// [`doc_response`] without the value, for `Prefer: return=minimal`.
fn minimal_response(written: &Written, status: u16) -> (Vec<(String, String)>, Vec<u8>) {
    let mut headers = write_headers(written, status);
    headers.push((
        super::prefer::PREFERENCE_APPLIED.to_owned(),
        "return=minimal".to_owned(),
    ));
    let body = WriteAnswer {
        value: None,
        ..WriteAnswer::from(written)
    };
    (headers, serde_json::to_vec(&body).expect("JSON serializes"))
}

fn write_headers(written: &Written, status: u16) -> Vec<(String, String)> {
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("etag".to_owned(), format!("\"{}\"", written.version)),
    ];
    if status == StatusCode::CREATED.as_u16() {
        headers.push(("location".to_owned(), format!("/v1/docs/{}", written.id)));
    }
    headers
}

/// What an idempotent write records, for HTTP to replay (and the MCP tools to read back).
pub(super) const DOC_RESPONSE: Responder = doc_response;

/// The answer a write's request asks for: [`DOC_RESPONSE`], or without the value if it
/// said `Prefer: return=minimal`. A retry with the same `Idempotency-Key` replays what the
/// first request was answered.
fn responder(headers: &HeaderMap) -> Responder {
    if super::prefer::wants_minimal(headers) {
        minimal_response
    } else {
        DOC_RESPONSE
    }
}

/// Runs a write with `Idempotency-Key` handling around it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn idempotent<F, Fut, E>(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    body: &[u8],
    status: StatusCode,
    now: i64,
    run: F,
) -> Result<Response<Body>, ApiError>
where
    F: FnOnce(Option<(IdempotencyDraft, Responder)>) -> Fut,
    Fut: std::future::Future<Output = Result<Written, E>>,
    ApiError: From<E>,
{
    let store = state.registry.store().as_ref();
    let responder = responder(headers);
    match state
        .idempotency
        .begin(store, headers, method, path, body, status, now)
        .await?
    {
        Begin::Replay(response) => Ok(response),
        Begin::Plain => Ok(respond(&run(None).await?, status, responder)),
        Begin::Record(in_flight, draft) => {
            let written = run(Some((draft, responder))).await;
            drop(in_flight);
            Ok(respond(&written?, status, responder))
        }
    }
}
