//! The HTTP API (v1): routes and the pieces every handler shares.

mod branches;
mod docs;
mod live;
mod mcp;
mod sync;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{middleware, Json, Router};
use concord_core::Version;
use serde_json::{json, Value};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

use crate::policy::IfMatch;
use crate::problem::{ensure_problem_json, ApiError};
use crate::AppState;

/// The router over shared state: every route of the API.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.body_limit;
    let request_timeout = state.config.limits.request_timeout;
    let guarded = Arc::clone(&state);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/docs", get(docs::list).post(docs::create))
        .route(
            "/v1/docs/{id}",
            get(docs::read)
                .put(docs::put)
                .patch(docs::patch)
                .delete(docs::delete),
        )
        .route("/v1/docs/{id}/history", get(docs::history))
        .route(
            "/v1/docs/{id}/lost/{lost}",
            axum::routing::delete(docs::dismiss_lost),
        )
        .route(
            "/v1/docs/{id}/lost/{lost}/restore",
            axum::routing::post(docs::restore_lost),
        )
        .route(
            "/v1/docs/{id}/changes",
            get(docs::get_changes).post(docs::post_changes),
        )
        .route(
            "/v1/docs/{id}/lock",
            axum::routing::post(branches::acquire).delete(branches::release),
        )
        .route("/v1/docs/{id}/fork", axum::routing::post(branches::fork))
        .route("/v1/docs/{id}/merge", axum::routing::post(branches::merge))
        .merge(crate::web::routes())
        .route("/v1/docs/{id}/sync", get(sync::sync))
        .route(
            "/v1/repo",
            get(sync::repo).with_state(Arc::new(crate::repo::Hub::new(Arc::clone(&state)))),
        )
        .route("/v1/docs/{id}/ws", get(live::ws))
        .route("/v1/docs/{id}/events", get(live::doc_events))
        .route("/v1/events", get(live::feed))
        .merge(mcp::routes(Arc::clone(&state)))
        // Routes mounted from outside this crate (the comparison's): under every layer below.
        .merge(
            state
                .config
                .extra_routes
                .clone()
                .with_state::<Arc<AppState>>(()),
        )
        .fallback(not_found)
        .with_state(state)
        .layer(DefaultBodyLimit::disable())
        // Inside the body limit (a merge's body is read to check its fork), after routing
        // (it needs the matched route): tokens, scopes, the token's agent (crate::auth).
        .layer(middleware::from_fn_with_state(guarded, crate::auth::guard))
        .layer(RequestBodyLimitLayer::new(body_limit))
        // Outside the rest, so that a slow body is timed too (crate::limits).
        .layer(middleware::from_fn_with_state(
            request_timeout,
            crate::limits::deadline,
        ))
        // Outside the body limit, so that its 413 becomes problem+json too.
        .layer(middleware::map_response(ensure_problem_json))
        .layer(TraceLayer::new_for_http())
}

/// Liveness, and (issue 6) how much stored data failed to load since start, if any:
/// counts only, as this endpoint is public; the log and each document's reads name the
/// records.
async fn healthz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Json<Value> {
    let mut health = json!({"status": "ok"});
    let (documents, records) = state.registry.damage_summary();
    if documents > 0 {
        health["storage"] = json!({"damaged_documents": documents, "skipped_records": records});
    }
    Json(health)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "no such resource")
}

pub(crate) use crate::clock::now_ms;

/// A document id from the path.
pub(crate) fn doc_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::bad_request(
            "invalid-id",
            format!(
                "{:?} is not a document id (a UUID such as 7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10)",
                raw.chars().take(100).collect::<String>()
            ),
        )
    })
}

/// The agent named by `Concord-Agent`, or `anonymous`.
pub(crate) fn agent(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(value) = headers.get("concord-agent") else {
        return Ok("anonymous".into());
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|a| !a.is_empty() && a.len() <= 128)
        .map(str::to_owned)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-agent",
                "Concord-Agent must be 1 to 128 visible ASCII characters",
            )
        })
}

/// Parses a version given in a query parameter (`?at=`, `?since=`) or `Last-Event-ID`: a
/// bare version, not an entity tag.
pub(crate) fn parse_version(raw: &str) -> Result<Version, ApiError> {
    crate::policy::parse_version(raw)
}

/// The request's `If-Match`, if any: every field line of it, as one list (RFC 9110).
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let lines = headers
        .get_all(header::IF_MATCH)
        .iter()
        .map(|value| {
            value.to_str().map_err(|_| {
                ApiError::bad_request("invalid-version", "If-Match is not visible ASCII")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if lines.is_empty() {
        return Ok(None);
    }
    crate::policy::parse_if_match(lines).map(Some)
}

/// The media type of the request body, lowercased, without parameters.
pub(crate) fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// Parses a JSON body whose media type must be one of `accepted` (a body without a
/// Content-Type is taken as `application/json`); the errors are the API's own (400, 415),
/// for routes mounted through [`crate::Config::extra_routes`] too.
pub fn json_body(headers: &HeaderMap, body: &[u8], accepted: &[&str]) -> Result<Value, ApiError> {
    let media = match content_type(headers) {
        Some(media) => media,
        None if accepted.contains(&"application/json") => "application/json".into(),
        None => "no Content-Type".into(),
    };
    if !accepted.contains(&media.as_str()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("expected {}, got {media}", accepted.join(" or ")),
        ));
    }
    parse_json(body)
}

/// Parses JSON bytes with a precise error.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request("invalid-json", format!("the body is not UTF-8: {e}"))
    })?;
    serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request("invalid-json", format!("the body is not valid JSON: {e}"))
    })
}
