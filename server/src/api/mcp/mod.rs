//! The Model Context Protocol endpoint, `/mcp`: the documents as tools for LLM agents.
//!
//! Built on the official Rust SDK (`rmcp`): its Streamable HTTP server, a tower service
//! mounted at `/mcp` under every layer of the API (authentication, body limit, deadline).
//! It runs stateless: every POST is answered on its own, as one JSON response, so no MCP
//! session is kept in memory and any node can answer any request. The protocol revisions
//! served are the ones `rmcp` negotiates: `2026-07-28` (per-request metadata, no
//! handshake) and, with an `initialize` handshake, `2025-11-25`, `2025-06-18`,
//! `2025-03-26` and `2024-11-05` (see [`rmcp::model::ProtocolVersion::KNOWN_VERSIONS`]).
//!
//! # The tools
//! [`tools`]: reads return a `version`; every write takes the version its caller read
//! (`base_version`) and is the same `WriteCommand` that HTTP and the WebSocket build, run
//! by `Registry::execute`, so a write from a stale read is merged, not lost. Results are
//! JSON, both as structured content and as text. A problem (unknown document, bad version,
//! pointer or patch, missing arguments, a refusal) is a tool result with `isError: true`
//! whose content is the problem+json the HTTP API would answer (`type`, `title`,
//! `status`, `detail`, and `version`, the current one, when a base was stale).
//!
//! # Who calls
//! With authentication on, `/mcp` needs a token (any: `Authorization: Bearer`), and each
//! tool checks what it reads or writes against the token's scopes as the HTTP route of the
//! same operation does; the token decides the agent. With authentication off, the agent is
//! the `Concord-Agent` header of the HTTP request, else `anonymous`, as over HTTP.
//!
//! A JSON-RPC body is read strictly first, as every JSON body of the API is: a key given
//! twice or an integer out of the 64-bit range is a JSON-RPC parse error (`-32700`, HTTP
//! 400) before the SDK sees it.
//!
//! # Retries
//! Every write tool takes an optional `idempotency_key`: a call retried with the same key
//! and the same arguments (by the same agent) is answered the first call's result, with
//! `replayed: true`, and applies nothing; the same key with other arguments is refused.
//! Keys live in the store HTTP's `Idempotency-Key` uses, as long.

mod tools;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::{ContentBuilder, Object, Required, ResponseBuilder};
use utoipa_axum::router::OpenApiRouter;

use crate::problem::OwnErrorBody;
use crate::AppState;

/// The `/mcp` route over shared state.
pub(super) fn routes(state: Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    let mut config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // The API's body limit bounds requests already (it is outside this service).
        .with_max_request_body_bytes(state.config.body_limit);
    // The SDK refuses a `Host` that is not loopback, against DNS rebinding: a web page
    // reaching a server on 127.0.0.1 that has no authentication. With tokens (a page has
    // none) or behind a proxy that authenticates, any host name may reach the server.
    if state.config.auth.is_some() || state.config.insecure_no_auth {
        config = config.disable_allowed_hosts();
    }
    let tools = tools::Tools::new(state);
    let service = StreamableHttpService::new(
        move || Ok(tools.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    let mut router = OpenApiRouter::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn(strict_json))
        .layer(axum::middleware::map_response(own_error_body));
    // A tower service has no handler annotation: its operation is described here.
    router
        .get_openapi_mut()
        .paths
        .add_path_operation("/mcp", vec![HttpMethod::Post], operation());
    router
}

/// `POST /mcp` in the OpenAPI description: JSON-RPC messages of the Model Context Protocol.
fn operation() -> Operation {
    let json_rpc = || ContentBuilder::new().schema(Some(Object::new())).build();
    OperationBuilder::new()
        .tag("mcp")
        .summary(Some(
            "The Model Context Protocol (Streamable HTTP, stateless)",
        ))
        .description(Some(
            "JSON-RPC 2.0 messages of the Model Context Protocol: `initialize`, `tools/list`, \
             `tools/call`. Each POST is answered on its own, as one JSON response (no session, \
             `GET` and `DELETE` answer 405). Tools read documents with their version and write \
             as of the version read, so a stale write is merged, not lost.",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .description(Some("A JSON-RPC request or notification"))
                .content("application/json", json_rpc())
                .required(Some(Required::True))
                .build(),
        ))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The JSON-RPC response")
                .content("application/json", json_rpc())
                .build(),
        )
        .response(
            "202",
            ResponseBuilder::new()
                .description("A notification, accepted")
                .build(),
        )
        .build()
}

/// Middleware: a JSON-RPC body is read as strictly as every other JSON the API takes
/// (`concord_protocol::json`) before the SDK reads it with its own parser, which would keep
/// the last of a key given twice and round an integer out of range to a float: either is
/// a JSON-RPC parse error (`-32700`, HTTP 400) naming what is wrong. Other syntax errors
/// are the SDK's to answer.
async fn strict_json(request: Request, next: Next) -> Response {
    use concord_protocol::json::{from_slice, Error};
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    // Bounded by the body limit outside.
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return crate::problem::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the request body is over the size limit",
        )
        .into_response();
    };
    match from_slice(&bytes) {
        Err(e @ (Error::DuplicateKey { .. } | Error::IntegerOutOfRange { .. })) => {
            let error = serde_json::json!({
                "jsonrpc": "2.0",
                "id": null,
                "error": {"code": -32700, "message": format!("Parse error: {e}")},
            });
            (StatusCode::BAD_REQUEST, axum::Json(error)).into_response()
        }
        _ => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// The SDK's error responses carry JSON-RPC errors, which MCP clients read: they stay.
async fn own_error_body(mut response: Response) -> Response {
    response.extensions_mut().insert(OwnErrorBody);
    response
}
