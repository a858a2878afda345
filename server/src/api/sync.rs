//! Sync for CRDT clients, over WebSocket:
//! - `GET /v1/docs/{id}/sync`: binary Automerge sync messages for one document, one
//!   [`SyncState`] per connection. Concord sends its first message on connect, answers every
//!   message it receives, and pushes a message whenever someone else changes the document.
//! - `GET /v1/repo`: the automerge-repo protocol (see [`crate::repo`]).
//!
//! An unknown document, or one whose strategy is not `crdt` (sync changes would bypass its
//! write policy, as raw changes would), is refused before the upgrade with problem+json, and
//! so is a connection over the live streams' share (`503` `too-many-streams`). On an open
//! connection, a text frame, bytes that are not a sync message, or the document's deletion
//! end the connection with a close frame that says why (close codes in [`Closing`]); the
//! document is unchanged by a refused message, and other connections go on. Both endpoints
//! are kept alive and ended as every WebSocket is ([`LiveSocket`]): pings, the idle timeout
//! (1001), shutdown (1001), a text frame that is not UTF-8 (1007).
//!
//! Each message that carries changes is checked against the [`Caller`] before they are
//! written: from a token that may read the document but not write it, or (without admin)
//! recorded as another agent, they close the connection (1008).

use std::sync::Arc;

use axum::extract::ws::{close_code, Message as Frame, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::WriteMeta;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use super::live::{LiveSocket, Received};
use super::{agent, doc_id, now_ms};
use crate::auth::Caller;
use crate::policy::{base_for, WriteKind};
use crate::problem::ApiError;
use crate::repo::{next_message, receive, Closing, Hub};
use crate::AppState;

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

/// A request that is not a WebSocket handshake, told what the endpoint is.
fn not_websocket(what: &str, rejection: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "websocket-required",
        format!("{what} is a WebSocket endpoint; connect with a WebSocket client ({rejection})"),
    )
}

/// The agent a sync client's writes are recorded under (the changes themselves carry no
/// Concord note), if it has one: its token's, else the one it named with `Concord-Agent`.
fn sync_agent(caller: &Caller, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if let Some(agent) = caller.agent() {
        return Ok(Some(agent.to_owned()));
    }
    match headers.contains_key("concord-agent") {
        true => agent(headers).map(Some),
        false => Ok(None),
    }
}

/// `GET /v1/docs/{id}/sync`.
#[utoipa::path(get, path = "/v1/docs/{id}/sync", tag = "live",
    description = "A WebSocket of binary Automerge sync messages for one document.",
    params(crate::openapi::DocPath),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed id or agent."),
        (status = 404, description = "No such document."),
        (status = 503, description = "The live streams' share of the connections is taken (`too-many-streams`): retry after `Retry-After`."),
    ))]
pub(super) async fn sync(
    State(state): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let id = doc_id(&id)?;
    let agent = sync_agent(&caller, &headers)?.unwrap_or_else(|| "automerge-sync".to_owned());
    // Refused here, with a status, rather than after the upgrade.
    state
        .registry
        .read(id, |loaded| {
            base_for(
                loaded.meta.strategy,
                WriteKind::Changes,
                None,
                &loaded.doc.version(),
            )
            .map(drop)
            .map_err(ApiError::from)
        })
        .await?;
    let upgrade = upgrade.map_err(|r| not_websocket("/v1/docs/{id}/sync", r))?;
    let slot = state.streams.admit()?;
    let limit = state.config.body_limit;
    Ok(upgrade
        .max_message_size(limit)
        .on_upgrade(move |socket| async move {
            let mut socket = LiveSocket::new(socket, &state, slot);
            if let Err(closing) = run(&state, id, &agent, &caller, &mut socket).await {
                tracing::info!(doc = %id, code = closing.code, reason = %closing.reason, "closing a sync connection");
                socket.close(closing.code, &closing.reason).await;
            }
        }))
}

/// `GET /v1/repo`.
#[utoipa::path(get, path = "/v1/repo", tag = "live",
    description = "A WebSocket speaking the automerge-repo network protocol (CBOR): Concord \
                   documents are automerge URLs, and documents a repo creates become Concord documents.",
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed id or agent."),
        (status = 503, description = "The live streams' share of the connections is taken (`too-many-streams`): retry after `Retry-After`."),
    ))]
pub(super) async fn repo(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    headers: HeaderMap,
    upgrade: Upgrade,
) -> Result<Response, ApiError> {
    let agent = sync_agent(&caller, &headers)?;
    let upgrade = upgrade.map_err(|r| not_websocket("/v1/repo", r))?;
    let slot = hub.app().streams.admit()?;
    let limit = hub.app().config.body_limit;
    Ok(upgrade.max_message_size(limit).on_upgrade(move |socket| {
        let socket = LiveSocket::new(socket, hub.app(), slot);
        crate::repo::serve(hub, socket, agent, caller)
    }))
}

/// Syncs one document with one peer until the peer leaves (`Ok`) or must be closed.
async fn run(
    state: &AppState,
    id: Uuid,
    agent: &str,
    caller: &Caller,
    socket: &mut LiveSocket,
) -> Result<(), Closing> {
    let registry = &state.registry;
    let api = |e: ApiError| Closing::from_api(&e);
    // Subscribed first, so that no change falls between the first message and the stream.
    let (_, mut changes) = registry
        .subscribe(id, None)
        .await
        .map_err(|e| api(e.into()))?;
    let mut peer = SyncState::new();
    send_next(state, id, &mut peer, socket).await?;
    loop {
        tokio::select! {
            received = socket.recv() => match received {
                Received::Gone => return Ok(()),
                Received::Close(code, reason) => return Err(Closing::new(code, reason)),
                Received::Binary(bytes) => {
                    let message = SyncMessage::decode(&bytes)
                        .map_err(|e| Closing::new(close_code::INVALID, e.to_string()))?;
                    // Changes write; a message without any only tells what the peer has.
                    if message.has_changes() {
                        caller
                            .check_sync_changes(registry, id, &bytes)
                            .await
                            .map_err(|reason| Closing::new(close_code::POLICY, reason))?;
                    }
                    let meta = WriteMeta { agent: agent.to_owned(), time_ms: now_ms(), message: None };
                    receive(registry, id, &meta, &mut peer, message).await.map_err(api)?;
                    send_next(state, id, &mut peer, socket).await?;
                }
                Received::Text(_) => {
                    return Err(Closing::new(
                        close_code::UNSUPPORTED,
                        "text frames are not part of the sync protocol: send binary Automerge sync messages",
                    ))
                }
            },
            change = changes.recv() => match change {
                // Falling behind loses nothing: the next message covers every change.
                Ok(_) | Err(RecvError::Lagged(_)) => send_next(state, id, &mut peer, socket).await?,
                Err(RecvError::Closed) => {
                    // Deleted, or only dropped from memory: look again.
                    changes = match registry.subscribe(id, None).await {
                        Ok((_, changes)) => changes,
                        Err(crate::registry::Error::NotFound(_)) => {
                            return Err(Closing::new(4404, format!("document {id} was deleted")))
                        }
                        Err(e) => return Err(api(e.into())),
                    };
                    send_next(state, id, &mut peer, socket).await?;
                }
            },
        }
    }
}

/// Sends the peer our next message, if there is one.
async fn send_next(
    state: &AppState,
    id: Uuid,
    peer: &mut SyncState,
    socket: &mut LiveSocket,
) -> Result<(), Closing> {
    let next = match next_message(&state.registry, id, peer).await {
        Ok(next) => next,
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            return Err(Closing::new(4404, format!("document {id} was deleted")))
        }
        Err(e) => return Err(Closing::from_api(&e)),
    };
    match next {
        Some(message) => socket
            .send(Frame::Binary(message.encode().into()))
            .await
            .map_err(|_| Closing::new(close_code::AWAY, "the peer is gone")),
        None => Ok(()),
    }
}
