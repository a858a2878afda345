//! The HTTP API (v1): routes and the pieces every handler shares.

mod answer;
mod branches;
mod docs;
mod list;
pub(crate) mod live;
mod mcp;
mod media;
mod prefer;
mod sync;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::{middleware, Extension, Json, Router};
use concord_core::Version;
use serde::Serialize;
use serde_json::Value;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::policy::IfMatch;
use crate::problem::{ensure_problem_json, ApiError};
use crate::AppState;

/// The router over shared state: every route of the API, each registered through
/// `routes!` from its handler's OpenAPI annotation (see [`crate::openapi`]).
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.body_limit;
    let request_timeout = state.config.limits.request_timeout;
    let guarded = Arc::clone(&state);
    let allowed = Arc::new(state.config.allowed.clone());
    let hub = Arc::new(crate::repo::Hub::new(Arc::clone(&state)));
    // Installed before anything is recorded.
    crate::metrics::handle();
    let (schemas, paths, repo) = routes!(sync::repo);
    let (router, openapi) = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(openapi_json))
        .routes(routes!(crate::metrics::scrape))
        .routes(routes!(list::list, docs::create))
        .routes(routes!(docs::read, docs::put, docs::patch, docs::delete))
        .routes(routes!(docs::history))
        .routes(routes!(docs::dismiss_lost))
        .routes(routes!(docs::restore_lost))
        .routes(routes!(docs::get_changes, docs::post_changes))
        .routes(routes!(branches::acquire, branches::release))
        .routes(routes!(branches::fork))
        .routes(routes!(branches::merge))
        .merge(crate::web::routes())
        .routes(routes!(sync::sync))
        .routes((schemas, paths, repo.with_state(hub)))
        .routes(routes!(live::ws))
        .routes(routes!(live::doc_events))
        .routes(routes!(live::feed))
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
        .split_for_parts();
    let openapi = crate::openapi::finish(openapi);
    let bodies = Arc::new(media::Bodies::of(&openapi));
    let description = OpenApiJson(Bytes::from(
        serde_json::to_vec(&openapi).expect("the description serializes"),
    ));
    router
        .layer(Extension(description))
        .layer(DefaultBodyLimit::disable())
        // After authentication (a request without a token is 401 whatever its body), before
        // any handler reads the body: the media types each operation takes (api::media).
        .layer(middleware::from_fn_with_state(bodies, media::guard))
        // Inside the body limit (a merge's body is read to check its fork), after routing
        // (it needs the matched route): tokens, scopes, the token's agent (crate::auth).
        .layer(middleware::from_fn_with_state(guarded, crate::auth::guard))
        .layer(RequestBodyLimitLayer::new(body_limit))
        // Outside the rest, so that a slow body is timed too (crate::limits).
        .layer(middleware::from_fn_with_state(
            request_timeout,
            crate::limits::deadline,
        ))
        // Before anything reads the request: a page on another name or origin is refused
        // (crate::origins).
        .layer(middleware::from_fn_with_state(
            allowed,
            crate::origins::guard,
        ))
        // Outside the body limit, so that its 413 becomes problem+json too.
        .layer(middleware::map_response(ensure_problem_json))
        // Counts and times every request with its final status, by matched route.
        .layer(middleware::from_fn(crate::metrics::track))
        // The request log, with no token in it (crate::logging).
        .layer(TraceLayer::new_for_http().make_span_with(crate::logging::request_span))
        // Every answer: its Content-Type is what it is, browsers are not to sniff another.
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        // Before anything sees the request, the log included: `?access_token=` leaves the
        // URI (crate::auth).
        .layer(middleware::from_fn(crate::auth::take_query_token))
}

/// Liveness, and how much stored data failed to load since start.
#[derive(Serialize, ToSchema)]
struct Health {
    /// `ok` while the server answers.
    status: &'static str,
    /// Present when stored data failed to load: counts only (this endpoint is public); the
    /// log and each document's reads name the records.
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<StorageDamage>,
}

/// How much stored data failed to load since start.
#[derive(Serialize, ToSchema)]
struct StorageDamage {
    /// Documents with records that did not load.
    damaged_documents: usize,
    /// Records that did not load.
    skipped_records: usize,
}

/// Liveness, and how much stored data failed to load since start, if any.
#[utoipa::path(get, path = "/healthz", tag = "service", security(()),
    responses((status = 200, description = "The server answers.", body = Health)))]
async fn healthz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Json<Health> {
    let (documents, records) = state.registry.damage_summary();
    Json(Health {
        status: "ok",
        storage: (documents > 0).then_some(StorageDamage {
            damaged_documents: documents,
            skipped_records: records,
        }),
    })
}

/// The OpenAPI description, serialized once when the router is built.
#[derive(Clone)]
struct OpenApiJson(Bytes);

/// This API's OpenAPI 3.1 description.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", body = Object)))]
async fn openapi_json(Extension(description): Extension<OpenApiJson>) -> Response<Body> {
    let mut response = Response::new(Body::from(description.0));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
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
    value.to_str().ok().and_then(valid_agent).ok_or_else(|| {
        ApiError::bad_request(
            "invalid-agent",
            "Concord-Agent must be 1 to 128 visible ASCII characters",
        )
    })
}

/// An agent's name, trimmed, if it is 1 to 128 visible ASCII characters (spaces inside
/// allowed, no control characters).
pub(crate) fn valid_agent(raw: &str) -> Option<String> {
    let name = raw.trim();
    let visible = name.bytes().all(|b| (b' '..=b'~').contains(&b));
    (!name.is_empty() && name.len() <= 128 && visible).then(|| name.to_owned())
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

/// Checks that the body's media type (`Content-Type`) is one of `accepted`: `415`
/// `unsupported-media-type` for any other, and for none (no type is guessed). The router
/// checks this before a handler runs, from the description (`api::media`); handlers check
/// again where they read the body.
pub fn check_media(headers: &HeaderMap, accepted: &[&str]) -> Result<String, ApiError> {
    media::check(headers, accepted)
}

/// Parses a JSON body whose media type must be one of `accepted` (a body without a
/// Content-Type is refused); the errors are the API's own (400, 415, 422), for routes
/// mounted through [`crate::Config::extra_routes`] too.
pub fn json_body(headers: &HeaderMap, body: &[u8], accepted: &[&str]) -> Result<Value, ApiError> {
    check_media(headers, accepted)?;
    parse_json(body)
}

/// Parses a JSON body strictly (`concord_protocol::json`): `400` `invalid-json` for what is
/// not JSON or names a key twice, `422` `invalid-value` for an integer out of range.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    concord_protocol::json::from_slice(body)
        .map_err(|e| ApiError::json(e, "the body", "invalid-json"))
}
