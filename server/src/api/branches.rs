//! The lock strategy's leases, and the branches strategy's forks and merges.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::Json;
use concord_core::storage::DocMeta;
use concord_core::{Document, Strategy, WriteMeta};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::answer::{idempotent, WriteAnswer};
use super::docs::{write_meta, WriteHead};
use super::{doc_id, json_body, now_ms};
use crate::openapi::{DocPath, WriteHeaders};
use crate::policy::LOCK_HEADER;
use crate::problem::ApiError;
use crate::registry::{self, Edit, IdempotencyDraft, Receipts, Responder, Written};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// The longest lease and the longest wait a lock request may ask for.
const MAX_TTL_MS: u64 = 10 * 60 * 1000;
const MAX_WAIT_MS: u64 = 60 * 1000;

/// A lease request: the body of `POST /v1/docs/{id}/lock`, the MCP `lock_document` tool's;
/// every field optional.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LockBody {
    /// How long the lease lasts (default 10 s).
    #[serde(default = "default_ttl")]
    #[schema(minimum = 1, maximum = 600_000, default = 10_000)]
    pub(super) ttl_ms: u64,
    /// How long to wait for a held lock before giving up (default 0: answer at once).
    #[serde(default)]
    #[schema(maximum = 60_000, default = 0)]
    pub(super) wait_ms: u64,
}

/// A lease taken: write with its token in `Concord-Lock` until it expires.
#[derive(Serialize, ToSchema)]
pub(super) struct Lease {
    /// The lease's token (a number, as text): the fencing token writes carry.
    token: String,
    /// When it expires, milliseconds since the Unix epoch.
    expires_at: i64,
    /// How long it lasts.
    ttl_ms: u64,
}

pub(super) fn default_ttl() -> u64 {
    10_000
}

/// `POST /v1/docs/{id}/lock`: takes the lease of a lock document, waiting up to `wait_ms`
/// for the current holder to release it or for its lease to expire.
#[utoipa::path(post, path = "/v1/docs/{id}/lock", tag = "branches",
    params(DocPath, ("Concord-Agent" = Option<String>, Header, description = "Who takes the lease",
        min_length = 1, max_length = 128, pattern = "^[!-~]([ -~]*[!-~])?$")),
    request_body(content = Option<LockBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The lease.", body = Lease),
        (status = 404, description = "No such document."),
        (status = 409, description = "Not a lock document."),
        (status = 423, description = "Another agent holds the lease; `Retry-After` says when it expires.",
            headers(("Retry-After" = String, description = "Seconds"))),
    ))]
pub(super) async fn acquire(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Lease>, ApiError> {
    let id = doc_id(&id)?;
    let agent = write_meta(&headers, 0)?.agent;
    // An empty body, or `null`, is all defaults.
    let defaults = LockBody {
        ttl_ms: default_ttl(),
        wait_ms: 0,
    };
    let request: LockBody = if body.iter().all(u8::is_ascii_whitespace) {
        defaults
    } else {
        serde_json::from_value::<Option<LockBody>>(json_body(
            &headers,
            &body,
            &["application/json"],
        )?)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                format!("invalid lock request: {e}"),
            )
        })?
        .unwrap_or(defaults)
    };
    acquire_lease(&state, id, &agent, request).await.map(Json)
}

/// Takes the lease of lock document `id` for `agent`, waiting as `request` says:
/// `{"token", "expires_at", "ttl_ms"}`, or 423 `locked` when it is still held.
pub(super) async fn acquire_lease(
    state: &AppState,
    id: Uuid,
    agent: &str,
    request: LockBody,
) -> Result<Lease, ApiError> {
    if request.ttl_ms == 0 || request.ttl_ms > MAX_TTL_MS || request.wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            format!("ttl_ms must be 1 to {MAX_TTL_MS} and wait_ms at most {MAX_WAIT_MS}"),
        ));
    }
    let deadline = now_ms() + request.wait_ms as i64;
    loop {
        // Taken before asking, so that a release in between is not missed (on a shared
        // store, releases on other nodes arrive as notices).
        let mut released = state.registry.release_watch(id).await?;
        let now = now_ms();
        let outcome = state
            .registry
            .acquire_lease(id, agent, request.ttl_ms, now)
            .await?;
        match outcome {
            Ok(lease) => {
                return Ok(Lease {
                    token: lease.token.to_string(),
                    expires_at: lease.expires_at_ms,
                    ttl_ms: request.ttl_ms,
                })
            }
            Err(held) if now >= deadline => {
                let retry = ((held.expires_at_ms - now).max(0) / 1000 + 1).to_string();
                return Err(ApiError::new(
                    StatusCode::LOCKED,
                    "locked",
                    format!(
                        "{} holds the lock for {} ms more; retry later or send wait_ms",
                        held.agent,
                        held.expires_at_ms - now
                    ),
                )
                .with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&retry).expect("digits"),
                ));
            }
            Err(held) => {
                // Wait for a release, the lease's expiry or our deadline, whichever is first.
                let until = held.expires_at_ms.min(deadline);
                let wait = Duration::from_millis((until - now).max(1) as u64);
                let _ = tokio::time::timeout(wait, released.changed()).await;
            }
        }
    }
}

/// `DELETE /v1/docs/{id}/lock` with `Concord-Lock`: releases the lease, if the caller is
/// the agent that took it.
#[utoipa::path(delete, path = "/v1/docs/{id}/lock", tag = "branches",
    params(DocPath, ("Concord-Lock" = String, Header, description = "The lease's token",
        pattern = "^[0-9]{1,18}$"),
        ("Concord-Agent" = Option<String>, Header, description = "Who releases it: the agent that took the lease (with authentication on, the token decides)",
        min_length = 1, max_length = 128, pattern = "^[!-~]([ -~]*[!-~])?$")),
    responses(
        (status = 204, description = "Released."),
        (status = 404, description = "No such document."),
        (status = 409, description = "The token is not the current lease's, or another agent took it (`fenced`)."),
    ))]
pub(super) async fn release(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let id = doc_id(&id)?;
    let token = headers
        .get(LOCK_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid-lock-token",
                "send the lease's token in Concord-Lock",
            )
        })?;
    let agent = write_meta(&headers, 0)?.agent;
    state.registry.release_lease(id, token, &agent).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/docs/{id}/fork`: an isolated copy (a crdt document) with the same history.
#[utoipa::path(post, path = "/v1/docs/{id}/fork", tag = "branches",
    params(DocPath, WriteHeaders),
    responses(
        (status = 201, description = "The fork.", body = WriteAnswer,
            headers(("ETag" = String, description = "The fork's version, quoted"),
                    ("Location" = String, description = "The fork's address"))),
        (status = 404, description = "No such document."),
    ))]
pub(super) async fn fork(
    State(state): Shared,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let parent = doc_id(&id)?;
    let now = now_ms();
    let meta = write_meta(&headers, now)?;
    let path = format!("/v1/docs/{parent}/fork");
    idempotent(
        &state,
        &headers,
        &method,
        &path,
        b"",
        StatusCode::CREATED,
        now,
        |idem| fork_doc(&state, parent, &meta, idem),
    )
    .await
}

/// Forks `parent` (a branches document): a new crdt document with its history, created as
/// `meta.agent`; returns once durable.
pub(super) async fn fork_doc(
    state: &AppState,
    parent: Uuid,
    meta: &WriteMeta,
    idempotency: Option<(IdempotencyDraft, Responder)>,
) -> Result<Written, ApiError> {
    let (schema, copy, receipts) = state
        .registry
        .read(parent, |loaded| {
            crate::policy::may_fork(loaded.meta.strategy)?;
            Ok::<_, ApiError>((
                loaded.meta.schema.clone(),
                loaded.doc.fork(),
                loaded.receipts.clone(),
            ))
        })
        .await?;
    let doc = DocMeta {
        id: Uuid::new_v4(),
        strategy: Strategy::Crdt,
        schema,
        created_at_ms: meta.time_ms,
    };
    let mut copy = Some(copy);
    // The fork's changes were received by the original: they keep its receipts.
    state
        .registry
        .create_copy(
            doc,
            move || {
                copy.take()
                    .ok_or_else(|| ApiError::internal("fork made twice"))
            },
            meta,
            &receipts,
            idempotency,
        )
        .await
}

/// The body of `POST /v1/docs/{id}/merge`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MergeBody {
    /// The fork whose changes to merge.
    fork: Uuid,
}

/// `POST /v1/docs/{id}/merge` `{"fork": id}`: merges a fork's changes back.
#[utoipa::path(post, path = "/v1/docs/{id}/merge", tag = "branches",
    params(DocPath, WriteHeaders),
    request_body(content = MergeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Merged.", body = WriteAnswer,
            headers(("ETag" = String, description = "The new version, quoted"))),
        (status = 404, description = "No such document."),
        (status = 422, description = "No such fork, or a document named as its own fork."),
    ))]
pub(super) async fn merge(
    State(state): Shared,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response<Body>, ApiError> {
    let head = WriteHead::plain(&id, &headers)?;
    let target = head.id();
    let request: MergeBody =
        serde_json::from_value(json_body(&headers, &body, &["application/json"])?).map_err(
            |e| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    format!("invalid merge request: {e}"),
                )
            },
        )?;
    let (fork, receipts) = read_fork(&state, target, request.fork).await?;
    let path = format!("/v1/docs/{target}/merge");
    let edit = Edit::MergeFork {
        fork: &fork,
        receipts: &receipts,
        id: request.fork,
    };
    head.execute(&state, (&method, &headers), &path, &body, edit)
        .await
}

/// A copy of the fork `fork` to merge into `target`, with its receipts: 422 if it is
/// `target` itself or does not exist.
pub(super) async fn read_fork(
    state: &AppState,
    target: Uuid,
    fork: Uuid,
) -> Result<(Document, Receipts), ApiError> {
    if fork == target {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "a document cannot be merged into itself",
        ));
    }
    let (copy, receipts) = state
        .registry
        .read(fork, |loaded| {
            Ok((loaded.doc.fork().0, loaded.receipts.clone()))
        })
        .await
        .map_err(|e| match e {
            registry::Error::NotFound(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown-fork",
                format!("no fork {fork}"),
            ),
            e => e.into(),
        })?;
    Ok((copy, receipts))
}
