//! The WebSocket JSON protocol of a document: the upgrade and one [`Session`] per
//! connection.
//!
//! # Protocol
//! The agent is named by `Concord-Agent` at the upgrade, or `?agent=` (browsers cannot set
//! headers). Messages are JSON text; the types are [`ClientMessage`] and [`ServerMessage`].
//!
//! Client → server:
//! - `{"type":"subscribe","since"?:version}`: a `snapshot` (no `since`, or one too old to
//!   replay) or the `change`s after `since`, then `{"type":"subscribed","version"}`, then
//!   every change as it is committed.
//! - `{"type":"patch","id","base"?,"ops","lock"?}` and `{"type":"put","id","base","value",
//!   "lock"?}`: writes, admitted by the document's strategy exactly as over HTTP (`base` is
//!   `If-Match`, `*` included; `lock` is `Concord-Lock`).
//!
//! Server → client: `snapshot` `{version, value}`, `subscribed` `{version}`, `change`
//! `{version, previous, agent, time_ms, patch}`, `ack` `{id, version, replayed}`, `error`
//! `{id?, type_uri, title, status, detail, version?}` (RFC 9457 fields; `type` is taken by
//! the message type, so the problem type is `type_uri`; `version` is the current version
//! when a base was stale).
//!
//! A write's `id` is its idempotency key, scoped to (document, agent): a retry with the same
//! id, on any connection, is answered the first `ack` with `replayed: true` and writes
//! nothing. Writes on one connection are applied and acknowledged in order; a writer sees
//! its `ack` before the `change` it made.
//!
//! Bad input (not JSON, an unknown type or field, a malformed version or patch, a refused
//! write) is answered an `error` and the connection stays open. From a token that may read
//! the document but not write it (see [`crate::auth`]), a message of any type but
//! `subscribe` is answered an `error` (403) and not applied. The connection is closed,
//! with a reason, when the document does not exist (4404) or is deleted (4410), after
//! [`LiveConfig::max_refused`] rate-limited messages in a row, or as many writes refused to
//! a token that may only read (1008); and, as every WebSocket (see [`super::socket`]), for a
//! text frame that is not UTF-8 (1007), a message over twice [`LiveConfig::max_message`]
//! (1009), after [`LiveConfig::idle_timeout`] without a frame (1001), and at shutdown
//! (1001). Each connection is a live stream: when their share of the connections is taken,
//! the upgrade is answered `503` `too-many-streams`.

use std::sync::Arc;

use axum::extract::ws::{Message, Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use concord_core::patch::parse_patch;
use concord_core::WriteMeta;
use concord_protocol::live::{Ack, ClientMessage, ServerMessage};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use super::bucket::TokenBucket;
use super::message::{
    ack_record, check_id, fingerprint, for_ws, message_from, message_id, message_key,
    parse_json_message, valid_id, writes, WriteBody,
};
use super::socket::{LiveSocket, Received};
use super::{change_message, error_message, DocFeed, Item, Shared};
use crate::api::{agent, doc_id, now_ms, parse_version, valid_agent};
use crate::auth::Caller;
use crate::idempotency::Keyed;
use crate::problem::ApiError;
use crate::registry::{within, Answer, Edit, WriteCommand};
use crate::{AppState, LiveConfig};

/// Who connects, for a browser that cannot send headers.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(in crate::api) struct WsQuery {
    /// The agent, when `Concord-Agent` is not sent.
    agent: Option<String>,
}

/// The agent: `Concord-Agent`, else `?agent=`, else `anonymous`.
fn ws_agent(headers: &HeaderMap, query: Option<&str>) -> Result<String, ApiError> {
    match query {
        Some(name) if !headers.contains_key("concord-agent") => {
            valid_agent(name).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid-agent",
                    "agent must be 1 to 128 visible ASCII characters",
                )
            })
        }
        _ => agent(headers),
    }
}

/// `GET /v1/docs/{id}/ws`: a malformed id or agent is refused before the upgrade (400);
/// everything after it is answered in the protocol. The agent is the token's, if the caller
/// has one (see [`ws_agent`] otherwise).
#[utoipa::path(get, path = "/v1/docs/{id}/ws", tag = "live",
    description = "A WebSocket of JSON messages: `subscribe` (optionally `since` a version) gets a \
                   snapshot and every change; `put` and `patch` with a `base` version write as HTTP \
                   does, each acknowledged by its `id`.",
    params(crate::openapi::DocPath, WsQuery),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol."),
        (status = 400, description = "Not a WebSocket upgrade, or a malformed id or agent."),
        (status = 503, description = "The live streams' share of the connections is taken (`too-many-streams`): retry after `Retry-After`."),
    ))]
pub(in crate::api) async fn ws(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let id = doc_id(&id)?;
    let agent = match caller.agent() {
        Some(agent) => agent.to_owned(),
        None => ws_agent(&headers, query.agent.as_deref())?,
    };
    let slot = state.streams.admit()?;
    let limits = state.config.live.clone();
    // Messages up to twice the limit are read and answered an error; larger ones are
    // refused while being read, which ends the connection.
    let hard = limits.max_message.saturating_mul(2).max(64 * 1024);
    Ok(upgrade
        .max_message_size(hard)
        .max_frame_size(hard)
        .on_upgrade(move |socket| async move {
            Session {
                bucket: TokenBucket::new(&limits, Instant::now()),
                socket: LiveSocket::new(socket, &state, slot),
                state,
                doc: id,
                agent,
                caller,
                feed: None,
                refused_in_row: 0,
                forbidden_in_row: 0,
                limits,
            }
            .run()
            .await
        }))
}

/// What to do after handling a frame.
enum Flow {
    Continue,
    /// Close with this code and reason.
    Close(u16, String),
    /// The peer is gone (or closed): stop.
    Gone,
}

/// One WebSocket connection.
struct Session {
    state: Arc<AppState>,
    doc: Uuid,
    agent: String,
    /// What the token may do: each message that writes is checked against it.
    caller: Caller,
    /// Pings the peer, and ends the connection when it is silent too long.
    socket: LiveSocket,
    /// Present once the client subscribed.
    feed: Option<DocFeed>,
    bucket: TokenBucket,
    /// Rate-limited messages since the last one processed.
    refused_in_row: u32,
    /// Messages refused as writes the token may not make, since the last one taken.
    forbidden_in_row: u32,
    limits: LiveConfig,
}

/// The next item of an optional feed (never, without one).
async fn next_item(feed: &mut Option<DocFeed>) -> Item {
    match feed {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(mut self) {
        if let Err(e) = self
            .state
            .registry
            .read::<_, ApiError>(self.doc, |_| Ok(()))
            .await
        {
            let code = if e.status == StatusCode::NOT_FOUND {
                4404
            } else {
                1011
            };
            let reason = e.detail.clone();
            if self.send(&error_message(&e, None)).await.is_ok() {
                self.socket.close(code, &reason).await;
            }
            return;
        }
        let flow = loop {
            let flow = tokio::select! {
                received = self.socket.recv() => match received {
                    Received::Text(text) => self.on_text(text).await,
                    Received::Binary(_) => self.on_binary().await,
                    Received::Close(code, reason) => Flow::Close(code, reason),
                    // Ended, or broke: there is nobody to tell.
                    Received::Gone => Flow::Gone,
                },
                item = next_item(&mut self.feed) => self.on_item(item).await,
            };
            match flow {
                Flow::Continue => {}
                other => break other,
            }
        };
        match flow {
            Flow::Close(code, reason) => self.socket.close(code, &reason).await,
            _ => self.socket.drain().await,
        }
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), ()> {
        let text = serde_json::to_string(message).map_err(|_| ())?;
        self.socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| ())
    }

    /// Sends an error; `Gone` if the peer is.
    async fn fail(&mut self, e: &ApiError, id: Option<Value>) -> Flow {
        match self.send(&error_message(e, id)).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Gone,
        }
    }

    /// A binary message: not this protocol's.
    async fn on_binary(&mut self) -> Flow {
        if !self.bucket.take(Instant::now()) {
            return self.refuse(None).await;
        }
        let e = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-message",
            "this endpoint speaks JSON text messages; binary Automerge sync is at /v1/docs/{id}/sync",
        );
        self.fail(&e, None).await
    }

    async fn on_text(&mut self, text: Utf8Bytes) -> Flow {
        if !self.bucket.take(Instant::now()) {
            let id = message_id(text.as_str());
            return self.refuse(id).await;
        }
        self.refused_in_row = 0;
        if text.len() > self.limits.max_message {
            let e = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "message-too-large",
                format!(
                    "a message may be at most {} bytes; this one is {}",
                    self.limits.max_message,
                    text.len()
                ),
            );
            return self.fail(&e, None).await;
        }
        let value = match parse_json_message(text.as_str()) {
            Ok(value) => value,
            Err(e) => return self.fail(&e, None).await,
        };
        // Decided by the message's type before anything else is read of it: only the types
        // known to read are taken from a token that may not write.
        if writes(&value) {
            if let Some(refused) = self.caller.refuse_write(self.doc) {
                return self.forbid(refused, valid_id(&value)).await;
            }
        }
        self.forbidden_in_row = 0;
        match message_from(value) {
            Err((e, id)) => self.fail(&e, id).await,
            Ok(ClientMessage::Subscribe { since }) => self.subscribe(since).await,
            Ok(ClientMessage::Patch {
                id,
                base,
                ops,
                lock,
            }) => self.write(id, base, lock, WriteBody::Patch(ops)).await,
            Ok(ClientMessage::Put {
                id,
                base,
                value,
                lock,
            }) => self.write(id, base, lock, WriteBody::Put(value)).await,
        }
    }

    /// Answers a write the token may not make (403); closes after
    /// [`LiveConfig::max_refused`] in a row, since the client is not listening.
    async fn forbid(&mut self, detail: String, id: Option<Value>) -> Flow {
        self.forbidden_in_row += 1;
        if self.forbidden_in_row >= self.limits.max_refused.max(1) {
            return Flow::Close(
                1008,
                format!(
                    "{} writes refused in a row: this token may only read",
                    self.forbidden_in_row
                ),
            );
        }
        let e = ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail);
        self.fail(&e, id).await
    }

    /// Answers a rate-limited message; closes after too many in a row.
    async fn refuse(&mut self, id: Option<Value>) -> Flow {
        self.refused_in_row += 1;
        let e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "over the limit of {} messages at once and {} per second: this message was not processed; slow down",
                self.limits.rate_burst, self.limits.rate_per_sec
            ),
        );
        if let Flow::Gone = self.fail(&e, id).await {
            return Flow::Gone;
        }
        if self.refused_in_row >= self.limits.max_refused {
            return Flow::Close(
                1008,
                format!(
                    "rate limit: {} messages refused in a row",
                    self.refused_in_row
                ),
            );
        }
        Flow::Continue
    }

    async fn subscribe(&mut self, since: Option<String>) -> Flow {
        let since = match since.as_deref().map(parse_version).transpose() {
            Ok(since) => since,
            Err(e) => return self.fail(&e, None).await,
        };
        let mut feed = match DocFeed::start(Arc::clone(&self.state), self.doc, since.as_ref()).await
        {
            Ok(feed) => feed,
            Err(e) => return self.refused(e, None).await,
        };
        while let Some(item) = feed.queued() {
            if let flow @ (Flow::Close(..) | Flow::Gone) = self.on_item(item).await {
                return flow;
            }
        }
        let subscribed = ServerMessage::Subscribed {
            version: feed.version().to_owned(),
        };
        self.feed = Some(feed);
        match self.send(&subscribed).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Gone,
        }
    }

    /// Answers a refused request; closes if the document is gone.
    async fn refused(&mut self, e: ApiError, id: Option<Value>) -> Flow {
        let gone = e.status == StatusCode::NOT_FOUND && e.kind == "not-found";
        if let Flow::Gone = self.fail(&e, id).await {
            return Flow::Gone;
        }
        if gone {
            return Flow::Close(4404, format!("no document {}", self.doc));
        }
        Flow::Continue
    }

    async fn on_item(&mut self, item: Item) -> Flow {
        let message = match item {
            Item::Snapshot { version, value } => ServerMessage::Snapshot { version, value },
            Item::Change(event) => change_message(&event),
            Item::Ended(e) => {
                self.feed = None;
                if e.kind == "not-found" {
                    let e = deleted(self.doc);
                    if let Flow::Gone = self.fail(&e, None).await {
                        return Flow::Gone;
                    }
                    return Flow::Close(4410, format!("document {} was deleted", self.doc));
                }
                if let Flow::Gone = self.fail(&e, None).await {
                    return Flow::Gone;
                }
                return Flow::Close(1011, "the subscription failed; reconnect".into());
            }
        };
        match self.send(&message).await {
            Ok(()) => Flow::Continue,
            Err(()) => Flow::Gone,
        }
    }

    async fn write(
        &mut self,
        id: Value,
        base: Option<String>,
        lock: Option<String>,
        body: WriteBody,
    ) -> Flow {
        if let Err(e) = check_id(&id) {
            return self.fail(&e, None).await;
        }
        match self.apply(&id, base, lock, body).await {
            Ok((version, replayed)) => {
                let ack = ServerMessage::Ack(Ack {
                    id,
                    version,
                    replayed,
                });
                match self.send(&ack).await {
                    Ok(()) => Flow::Continue,
                    Err(()) => Flow::Gone,
                }
            }
            Err(e) => self.refused(e, Some(id)).await,
        }
    }

    /// Applies a write once per (document, agent, id): `(version, replayed)`.
    async fn apply(
        &mut self,
        id: &Value,
        base: Option<String>,
        lock: Option<String>,
        body: WriteBody,
    ) -> Result<(String, bool), ApiError> {
        let if_match = base.as_deref().map(crate::policy::parse_base).transpose()?;
        let lock = lock
            .map(|token| {
                token.trim().parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid-lock-token",
                        "lock must be the token of a lease (a number)",
                    )
                })
            })
            .transpose()?;
        let ops = match &body {
            WriteBody::Patch(ops) => parse_patch(ops)?,
            WriteBody::Put(_) => Vec::new(),
        };
        let now = now_ms();
        let meta = WriteMeta {
            agent: self.agent.clone(),
            time_ms: now,
            message: None,
        };
        let key = message_key(self.doc, &self.agent, id);
        let fingerprint = fingerprint(base.as_deref(), &body);
        let store = self.state.registry.store().as_ref();
        let (in_flight, draft) = match self
            .state
            .idempotency
            .begin_keyed(store, key, fingerprint, StatusCode::OK, now)
            .await?
        {
            Keyed::Replay(record) => {
                let version = serde_json::from_slice::<Value>(&record.body)
                    .ok()
                    .and_then(|body| body["version"].as_str().map(str::to_owned))
                    .ok_or_else(|| ApiError::internal("a recorded ack has no version"))?;
                return Ok((version, true));
            }
            Keyed::Record(in_flight, draft) => (in_flight, draft),
        };
        // Each message has the time an HTTP request has: an edit still running then
        // stops and changes nothing.
        let deadline = std::time::Instant::now() + self.state.config.limits.request_timeout;
        let written = self.state.registry.execute(WriteCommand {
            doc: self.doc,
            meta: &meta,
            if_match: if_match.as_ref(),
            lock,
            edit: match &body {
                WriteBody::Put(value) => Edit::Put(value),
                WriteBody::Patch(_) => Edit::Patch(&ops),
            },
            idempotency: Some((draft, ack_record)),
            // The acknowledgement carries the version; subscribers get the change.
            answer: Answer::Minimal,
        });
        let written = within(deadline, written).await.map_err(for_ws);
        drop(in_flight);
        Ok((written?.version.to_string(), false))
    }
}

fn deleted(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "deleted",
        format!("document {id} was deleted"),
    )
}
