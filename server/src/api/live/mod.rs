//! Live sync: the WebSocket JSON protocol of a document (`GET /v1/docs/{id}/ws`), its
//! Server-Sent Events (`GET /v1/docs/{id}/events`), and the global feed (`GET /v1/events`).
//!
//! # WebSocket protocol
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
//! a token that may only read (1008), for a message over twice [`LiveConfig::max_message`]
//! (1009), after [`LiveConfig::idle_timeout`] without a frame (1001), and at shutdown
//! (1001).
//!
//! # Server-Sent Events
//! `/v1/docs/{id}/events`: a `snapshot` event (id = version, data `{type, version, value}`),
//! then one `change` event per change (id = version, data as the WebSocket `change`).
//! `Last-Event-ID` (or `?since=`) resumes after that version: exactly the missed changes. A
//! `deleted` event ends the stream when the document is deleted.
//!
//! `/v1/events`: `created`, `changed` and `deleted` events for every document (data: a
//! [`FeedEvent`]); `lagged` (`{missed}`) when a slow viewer lost some: re-read the list.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use concord_core::patch::parse_patch;
use concord_core::{Version, WriteMeta};
use concord_protocol::live::{Ack, Change, ClientMessage, Problem, ServerMessage};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use uuid::Uuid;

use super::{agent, doc_id, now_ms, parse_version};
use crate::auth::Caller;
use crate::idempotency::Keyed;
use crate::policy::Refusal;
use crate::problem::ApiError;
use crate::registry::{self, Catchup, ChangeEvent, Edit, FeedEvent, WriteCommand, Written};
use crate::{AppState, LiveConfig};

type Shared = State<Arc<AppState>>;

// ---------------------------------------------------------------------------------------
// A document's changes, as a subscriber receives them.

/// What a subscriber is handed next.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// The whole value: replace what you have.
    Snapshot { version: String, value: Value },
    /// One change.
    Change(Arc<ChangeEvent>),
    /// The stream is over: the document is gone (`not-found`) or could not be read again.
    Ended(ApiError),
}

/// Why the receiver must be replaced before reading on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    /// It lagged: start over from a snapshot.
    Snapshot,
    /// It closed (the document left memory, or was deleted): resume from the last version.
    Resume,
}

/// One subscriber's view of a document: the catch-up, then every change, repaired when the
/// broadcast lags or closes. Shared by the WebSocket and SSE endpoints.
pub(crate) struct DocFeed {
    state: Arc<AppState>,
    id: Uuid,
    receiver: broadcast::Receiver<Arc<ChangeEvent>>,
    /// The version of the last item handed out: where a resume starts.
    last: String,
    /// Items to hand out before reading the receiver again.
    queue: VecDeque<Item>,
    /// Set before the await that repairs the receiver, so that `next` stays cancel-safe
    /// (it runs inside `select!`): a cancelled repair is redone by the next call.
    repair: Option<Repair>,
    /// Set once `Ended` was handed out.
    ended: Option<ApiError>,
}

impl DocFeed {
    /// Subscribes from `since` (or a snapshot); the catch-up is queued.
    pub(crate) async fn start(
        state: Arc<AppState>,
        id: Uuid,
        since: Option<&Version>,
    ) -> Result<DocFeed, ApiError> {
        let (catchup, receiver) = state.registry.subscribe(id, since).await?;
        let mut feed = DocFeed {
            state,
            id,
            receiver,
            last: since.map(Version::to_string).unwrap_or_default(),
            queue: VecDeque::new(),
            repair: None,
            ended: None,
        };
        feed.queue_catchup(catchup);
        Ok(feed)
    }

    fn queue_catchup(&mut self, catchup: Catchup) {
        match catchup {
            Catchup::Snapshot { version, value } => {
                self.queue.push_back(Item::Snapshot { version, value })
            }
            Catchup::Events(events) => self.queue.extend(events.into_iter().map(Item::Change)),
        }
    }

    /// The next queued item, without waiting.
    pub(crate) fn queued(&mut self) -> Option<Item> {
        let item = self.queue.pop_front()?;
        self.note(&item);
        Some(item)
    }

    /// The version of the last item handed out (or the `since` it started from).
    pub(crate) fn version(&self) -> &str {
        &self.last
    }

    fn note(&mut self, item: &Item) {
        match item {
            Item::Snapshot { version, .. } => self.last.clone_from(version),
            Item::Change(event) => self.last.clone_from(&event.version),
            Item::Ended(e) => self.ended = Some(e.clone()),
        }
    }

    /// The next item, waiting for it. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Item {
        loop {
            if let Some(e) = &self.ended {
                return Item::Ended(e.clone());
            }
            if let Some(item) = self.queued() {
                return item;
            }
            if let Some(repair) = self.repair {
                let since = match repair {
                    Repair::Snapshot => None,
                    Repair::Resume => self.last.parse::<Version>().ok(),
                };
                match self.state.registry.subscribe(self.id, since.as_ref()).await {
                    Ok((catchup, receiver)) => {
                        self.receiver = receiver;
                        self.repair = None;
                        self.queue_catchup(catchup);
                    }
                    Err(registry::Error::UnknownVersion(_)) => self.repair = Some(Repair::Snapshot),
                    Err(e) => {
                        self.repair = None;
                        self.queue.push_back(Item::Ended(e.into()));
                    }
                }
                continue;
            }
            match self.receiver.recv().await {
                Ok(event) => {
                    let item = Item::Change(event);
                    self.note(&item);
                    return item;
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(doc = %self.id, missed, "a subscriber lagged: sending a snapshot");
                    self.repair = Some(Repair::Snapshot);
                }
                Err(RecvError::Closed) => self.repair = Some(Repair::Resume),
            }
        }
    }
}

fn change_message(event: &ChangeEvent) -> ServerMessage {
    ServerMessage::Change(Change {
        version: event.version.clone(),
        previous: event.previous.clone(),
        agent: event.agent.clone(),
        time_ms: event.time_ms,
        patch: event.patch.clone(),
    })
}

/// An error as a WebSocket `error` message.
fn error_message(e: &ApiError, id: Option<Value>) -> ServerMessage {
    let version = e
        .headers
        .iter()
        .find(|(name, _)| name == header::ETAG)
        .and_then(|(_, v)| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned());
    ServerMessage::Error(Problem {
        id,
        type_uri: format!("urn:concord:problem:{}", e.kind),
        title: e.status.canonical_reason().unwrap_or("Error").to_owned(),
        status: e.status.as_u16(),
        detail: e.detail.clone(),
        version,
    })
}

fn deleted(id: Uuid) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "deleted",
        format!("document {id} was deleted"),
    )
}

// ---------------------------------------------------------------------------------------
// WebSocket.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WsQuery {
    agent: Option<String>,
}

/// The agent: `Concord-Agent`, else `?agent=`, else `anonymous`.
fn ws_agent(headers: &HeaderMap, query: Option<&str>) -> Result<String, ApiError> {
    match query {
        Some(name) if !headers.contains_key("concord-agent") => {
            let name = name.trim();
            if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| (32..127).contains(&b))
            {
                return Err(ApiError::bad_request(
                    "invalid-agent",
                    "agent must be 1 to 128 visible ASCII characters",
                ));
            }
            Ok(name.to_owned())
        }
        _ => agent(headers),
    }
}

/// `GET /v1/docs/{id}/ws`: a malformed id or agent is refused before the upgrade (400);
/// everything after it is answered in the protocol. The agent is the token's, if the caller
/// has one (see [`ws_agent`] otherwise).
pub(super) async fn ws(
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
                state,
                doc: id,
                agent,
                caller,
                socket,
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
    socket: WebSocket,
    /// Present once the client subscribed.
    feed: Option<DocFeed>,
    bucket: TokenBucket,
    /// Rate-limited messages since the last one processed.
    refused_in_row: u32,
    /// Messages refused as writes the token may not make, since the last one taken.
    forbidden_in_row: u32,
    limits: LiveConfig,
}

/// Returns once the server is shutting down (or the registry is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
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
                self.close(code, &reason).await;
            }
            return;
        }
        let ping_every = self.limits.ping_interval;
        let idle_after = self.limits.idle_timeout;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        let mut closing: watch::Receiver<bool> = self.state.registry.closing();
        let flow = loop {
            let flow = tokio::select! {
                frame = self.socket.recv() => {
                    idle.as_mut().reset(Instant::now() + idle_after);
                    match frame {
                        Some(Ok(frame)) => self.on_frame(frame).await,
                        // Ended, or broke: there is nobody to tell.
                        None | Some(Err(_)) => Flow::Gone,
                    }
                }
                item = next_item(&mut self.feed) => self.on_item(item).await,
                _ = ping.tick() => match self.socket.send(Message::Ping(Bytes::new())).await {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Gone,
                },
                () = &mut idle => Flow::Close(
                    1001,
                    format!("idle: no frame (nor pong) for {} ms", idle_after.as_millis()),
                ),
                () = closed(&mut closing) => {
                    Flow::Close(1001, "the server is shutting down".into())
                }
            };
            match flow {
                Flow::Continue => {}
                other => break other,
            }
        };
        match flow {
            Flow::Close(code, reason) => self.close(code, &reason).await,
            _ => self.drain().await,
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

    /// Sends a close frame, then reads until the peer answers it: closing the socket with
    /// unread input would reset the connection and could lose the close frame.
    async fn close(&mut self, code: u16, reason: &str) {
        let mut reason = reason.to_owned();
        // A close reason is at most 123 bytes.
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.socket.send(Message::Close(Some(frame))).await.is_ok() {
            self.drain().await;
        }
    }

    async fn drain(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.socket.recv().await {}
        })
        .await;
    }

    async fn on_frame(&mut self, frame: Message) -> Flow {
        let text = match frame {
            Message::Text(text) => text,
            Message::Binary(_) => {
                if !self.bucket.take(Instant::now()) {
                    return self.refuse(None).await;
                }
                let e = ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-message",
                    "this endpoint speaks JSON text messages; binary Automerge sync is at /v1/docs/{id}/sync",
                );
                return self.fail(&e, None).await;
            }
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Close(_) => return Flow::Gone,
        };
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
        let written = self
            .state
            .registry
            .execute(WriteCommand {
                doc: self.doc,
                meta: &meta,
                if_match: if_match.as_ref(),
                lock,
                edit: match &body {
                    WriteBody::Put(value) => Edit::Put(value),
                    WriteBody::Patch(_) => Edit::Patch(&ops),
                },
                idempotency: Some((draft, ack_record)),
            })
            .await
            .map_err(for_ws);
        drop(in_flight);
        Ok((written?.version.to_string(), false))
    }
}

/// The body of a write message.
enum WriteBody {
    Patch(Value),
    Put(Value),
}

/// What an idempotent WebSocket write records, to replay its `ack`.
fn ack_record(written: &Written, _status: u16) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({ "id": written.id, "version": written.version.to_string() });
    (
        Vec::new(),
        serde_json::to_vec(&body).expect("JSON serializes"),
    )
}

/// The idempotency key of a write message: its id, scoped to the document and the agent.
fn message_key(doc: Uuid, agent: &str, id: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(doc.as_bytes());
    hash.update(b"\n");
    hash.update(agent);
    hash.update(b"\n");
    hash.update(id.to_string());
    format!("ws:{}", hex::encode(hash.finalize()))
}

/// What makes two write messages with one id "the same write".
fn fingerprint(base: Option<&str>, body: &WriteBody) -> String {
    let mut hash = Sha256::new();
    let (kind, value) = match body {
        WriteBody::Patch(ops) => ("patch", ops),
        WriteBody::Put(value) => ("put", value),
    };
    hash.update(kind);
    hash.update(b"\n");
    hash.update(base.unwrap_or(""));
    hash.update(b"\n");
    hash.update(value.to_string());
    hex::encode(hash.finalize())
}

/// A write's error as the WebSocket answers it: the HTTP problem, but refusals that name
/// HTTP headers name the message's fields instead.
fn for_ws(e: registry::Error) -> ApiError {
    let detail = match &e {
        registry::Error::Refused(Refusal::IfMatchRequired { .. }) => {
            "this write needs \"base\": the version you read, or \"*\" to write against the current version"
        }
        registry::Error::Refused(Refusal::LockRequired) => {
            "a lock document needs the token of a lease: POST /v1/docs/{id}/lock, then send \"lock\": <token> with each write"
        }
        _ => return e.into(),
    };
    ApiError {
        detail: detail.into(),
        ..e.into()
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-message", detail)
}

/// A message id: a string of 1 to 255 characters, or a non-negative integer.
fn check_id(id: &Value) -> Result<(), ApiError> {
    match id {
        Value::String(s) if !s.is_empty() && s.chars().count() <= 255 => Ok(()),
        Value::Number(n) if n.is_u64() => Ok(()),
        _ => Err(invalid(
            "id must be a string of 1 to 255 characters or a non-negative integer",
        )),
    }
}

/// The id of a message, if it has a valid one (to answer a refusal with it).
fn message_id(text: &str) -> Option<Value> {
    valid_id(&serde_json::from_str::<Value>(text).ok()?)
}

/// The id of a parsed message, if it has a valid one.
fn valid_id(message: &Value) -> Option<Value> {
    message.get("id").cloned().filter(|id| check_id(id).is_ok())
}

/// The message types that only read. Every other type, known or not (a type added later
/// included), writes: a token that may not write the document is refused it.
const READ_ONLY_TYPES: &[&str] = &["subscribe"];

/// Whether a message (parsed as JSON) asks to write. A message without a type is none of
/// them: it is refused as invalid, whoever sends it.
fn writes(message: &Value) -> bool {
    match message.get("type").and_then(Value::as_str) {
        Some(kind) => !READ_ONLY_TYPES.contains(&kind),
        None => false,
    }
}

/// A message's JSON.
fn parse_json_message(text: &str) -> Result<Value, ApiError> {
    serde_json::from_str(text).map_err(|e| invalid(format!("a message must be JSON: {e}")))
}

/// Parses a client message; on error, the error and the message's id if it has one.
#[cfg(test)]
fn parse_message(text: &str) -> Result<ClientMessage, (ApiError, Option<Value>)> {
    message_from(parse_json_message(text).map_err(|e| (e, None))?)
}

/// Reads a client message from its JSON; on error, the error and the message's id if it
/// has one.
fn message_from(value: Value) -> Result<ClientMessage, (ApiError, Option<Value>)> {
    let id = valid_id(&value);
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err((
            invalid("a message is a JSON object with a \"type\": subscribe, patch or put"),
            id,
        ));
    };
    let kind = kind.chars().take(50).collect::<String>();
    serde_json::from_value(value)
        .map_err(|e| (invalid(format!("invalid {kind:?} message: {e}")), id))
}

/// A token bucket: `rate_burst` messages at once, `rate_per_sec` more each second.
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(limits: &LiveConfig, now: Instant) -> Self {
        let capacity = f64::from(limits.rate_burst);
        TokenBucket {
            capacity,
            tokens: capacity,
            per_sec: limits.rate_per_sec.max(0.0),
            last: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------------------
// Server-Sent Events.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    since: Option<String>,
}

fn sse_event(kind: &str, id: Option<&str>, data: &impl serde::Serialize) -> SseEvent {
    let event = SseEvent::default().event(kind);
    let event = match id {
        Some(id) => event.id(id),
        None => event,
    };
    event
        .json_data(data)
        .unwrap_or_else(|_| SseEvent::default().comment("an event could not be serialized"))
}

/// One SSE event for a feed item, and whether the stream ends after it.
fn doc_sse_event(doc: Uuid, item: Item) -> (SseEvent, bool) {
    match item {
        Item::Snapshot { version, value } => {
            let data = ServerMessage::Snapshot {
                version: version.clone(),
                value,
            };
            (sse_event("snapshot", Some(&version), &data), false)
        }
        Item::Change(event) => (
            sse_event("change", Some(&event.version), &change_message(&event)),
            false,
        ),
        Item::Ended(e) if e.kind == "not-found" => (
            sse_event("deleted", None, &json!({"type": "deleted", "id": doc})),
            true,
        ),
        Item::Ended(e) => (sse_event("error", None, &error_message(&e, None)), true),
    }
}

/// `GET /v1/docs/{id}/events`: a snapshot then every change; `Last-Event-ID` (or `?since=`)
/// resumes after a version.
pub(super) async fn doc_events(
    State(state): Shared,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = doc_id(&id)?;
    let since = match headers.get("last-event-id") {
        Some(value) => Some(value.to_str().map(str::to_owned).map_err(|_| {
            ApiError::bad_request("invalid-version", "Last-Event-ID is not visible ASCII")
        })?),
        None => query.since,
    };
    let since = since
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_version)
        .transpose()?;
    let feed = DocFeed::start(Arc::clone(&state), id, since.as_ref()).await?;
    let closing = state.registry.closing();
    let keep_alive = state.config.live.sse_keep_alive;
    let stream = futures_util::stream::unfold(
        (feed, closing, false),
        move |(mut feed, mut closing, done)| async move {
            if done {
                return None;
            }
            let item = tokio::select! {
                item = feed.next() => item,
                () = closed(&mut closing) => return None,
            };
            let (event, done) = doc_sse_event(id, item);
            Some((Ok::<_, Infallible>(event), (feed, closing, done)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response())
}

/// `GET /v1/events`: `created`, `changed` and `deleted` for every document.
pub(super) async fn feed(State(state): Shared) -> Response {
    let receiver = state.registry.feed();
    let closing = state.registry.closing();
    let stream = futures_util::stream::unfold(
        (receiver, closing),
        |(mut receiver, mut closing)| async move {
            let event = tokio::select! {
                received = receiver.recv() => match received {
                    Ok(event) => {
                        let kind = match &*event {
                            FeedEvent::Created { .. } => "created",
                            FeedEvent::Changed { .. } => "changed",
                            FeedEvent::Deleted { .. } => "deleted",
                        };
                        sse_event(kind, None, &*event)
                    }
                    Err(RecvError::Lagged(missed)) => {
                        sse_event("lagged", None, &json!({"type": "lagged", "missed": missed}))
                    }
                    Err(RecvError::Closed) => return None,
                },
                () = closed(&mut closing) => return None,
            };
            Some((Ok::<_, Infallible>(event), (receiver, closing)))
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(state.config.live.sse_keep_alive))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use concord_core::storage::{DocMeta, MemoryStore};
    use concord_core::{Document, Schema, Strategy};

    fn meta(agent: &str) -> WriteMeta {
        WriteMeta {
            agent: agent.into(),
            time_ms: 1_700_000_000_000,
            message: None,
        }
    }

    async fn setup() -> (Arc<AppState>, Uuid) {
        let state = AppState::new(Arc::new(MemoryStore::new()), Config::default());
        let id = Uuid::new_v4();
        let doc = DocMeta {
            id,
            strategy: Strategy::Crdt,
            schema: Schema::default(),
            created_at_ms: 0,
        };
        state
            .registry
            .create(
                doc,
                || {
                    Ok::<_, ApiError>(Document::create(
                        &json!({"n": 0}),
                        Schema::default(),
                        &meta("setup"),
                    )?)
                },
                &meta("setup"),
                false,
                None,
            )
            .await
            .unwrap();
        (state, id)
    }

    async fn set(state: &AppState, id: Uuid, n: usize) {
        state
            .registry
            .execute(WriteCommand {
                doc: id,
                meta: &meta("w"),
                if_match: Some(&crate::policy::IfMatch::Any),
                lock: None,
                edit: Edit::Put(&json!({ "n": n })),
                idempotency: None,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_a_fresh_snapshot() {
        let (state, id) = setup().await;
        let mut feed = DocFeed::start(Arc::clone(&state), id, None).await.unwrap();
        assert!(matches!(feed.queued(), Some(Item::Snapshot { .. })));
        let writes = crate::registry::EVENT_BUFFER + 10;
        for n in 1..=writes {
            set(&state, id, n).await;
        }
        let current = state
            .registry
            .read::<_, ApiError>(id, |l| Ok(l.doc.version()))
            .await
            .unwrap();
        match feed.next().await {
            Item::Snapshot { version, value } => {
                assert_eq!(version, current.to_string());
                assert_eq!(value, json!({ "n": writes }));
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
        // And then the changes after it, nothing twice.
        set(&state, id, 0).await;
        match feed.next().await {
            Item::Change(event) => assert_eq!(event.previous, current.to_string()),
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_deleted_document_ends_the_feed() {
        let (state, id) = setup().await;
        let mut feed = DocFeed::start(Arc::clone(&state), id, None).await.unwrap();
        feed.queued();
        state.registry.delete(id).await.unwrap();
        match feed.next().await {
            Item::Ended(e) => assert_eq!(e.kind, "not-found"),
            other => panic!("expected the end, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_resume_replays_exactly_the_missed_changes() {
        let (state, id) = setup().await;
        let v0 = state
            .registry
            .read::<_, ApiError>(id, |l| Ok(l.doc.version()))
            .await
            .unwrap();
        for n in 1..=3 {
            set(&state, id, n).await;
        }
        let mut feed = DocFeed::start(Arc::clone(&state), id, Some(&v0))
            .await
            .unwrap();
        let mut previous = v0.to_string();
        for n in 1..=3 {
            match feed.queued() {
                Some(Item::Change(event)) => {
                    assert_eq!(event.previous, previous);
                    assert_eq!(
                        event.patch,
                        json!([{"op": "replace", "path": "/n", "value": n}])
                    );
                    previous.clone_from(&event.version);
                }
                other => panic!("expected change {n}, got {other:?}"),
            }
        }
        assert!(feed.queued().is_none());
        assert_eq!(feed.version(), previous);
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let limits = LiveConfig {
            rate_burst: 3,
            rate_per_sec: 2.0,
            ..LiveConfig::default()
        };
        let start = Instant::now();
        let mut bucket = TokenBucket::new(&limits, start);
        let taken: Vec<bool> = (0..5).map(|_| bucket.take(start)).collect();
        assert_eq!(taken, [true, true, true, false, false]);
        // Half a second earns one token; ten seconds fill the bucket, no more.
        assert!(bucket.take(start + Duration::from_millis(500)));
        assert!(!bucket.take(start + Duration::from_millis(500)));
        let later = start + Duration::from_secs(10);
        let taken: Vec<bool> = (0..4).map(|_| bucket.take(later)).collect();
        assert_eq!(taken, [true, true, true, false]);
    }

    #[test]
    fn only_the_types_known_to_read_are_not_writes() {
        // Every message type the server knows, classified here: a type added later does not
        // compile until it is, and is a write meanwhile (see READ_ONLY_TYPES).
        let known = [
            ClientMessage::Subscribe { since: None },
            ClientMessage::Patch {
                id: json!(1),
                base: None,
                ops: json!([]),
                lock: None,
            },
            ClientMessage::Put {
                id: json!(1),
                base: None,
                value: json!({}),
                lock: None,
            },
        ];
        for message in known {
            let reads = match &message {
                ClientMessage::Subscribe { .. } => true,
                ClientMessage::Patch { .. } | ClientMessage::Put { .. } => false,
            };
            let value = serde_json::to_value(&message).unwrap();
            assert_eq!(writes(&value), !reads, "{value}");
        }
        for kind in ["jump", "Subscribe", "subscribe ", ""] {
            assert!(writes(&json!({ "type": kind })), "{kind:?}");
        }
        // Without a type it is no message at all, refused as invalid to anyone.
        assert!(!writes(&json!({"id": 1})) && !writes(&json!([1])) && !writes(&json!({"type": 1})));
    }

    #[test]
    fn bad_messages_are_named() {
        let cases = [
            ("not json", "must be JSON"),
            ("[1]", "\"type\""),
            (r#"{"type": "jump"}"#, "unknown variant"),
            (r#"{"type": "put", "id": 1, "vlaue": {}}"#, "unknown field"),
        ];
        for (text, expected) in cases {
            let (e, _) = parse_message(text).unwrap_err();
            assert!(e.detail.contains(expected), "{text}: {}", e.detail);
        }
        let (_, id) =
            parse_message(r#"{"type": "patch", "id": "a", "ops": 3, "x": 1}"#).unwrap_err();
        assert_eq!(id, Some(json!("a")));
    }
}
