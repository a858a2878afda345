//! The automerge-repo network protocol (`GET /v1/repo`), so that the official JavaScript
//! `@automerge/automerge-repo` client (with its WebSocket adapter) can sync Concord documents.
//!
//! # Documents
//! An automerge-repo document id is the base58check encoding of 16 bytes; a Concord
//! document's id is a UUID, whose 16 bytes are those bytes. So every Concord document is
//! reachable as `automerge:<bs58check of its UUID's bytes>`
//! ([`concord_protocol::repo::automerge_url`]; `GET /v1/docs/{id}` shows it as `url`), and
//! every document created by automerge-repo (which draws its ids as random UUIDs) has a
//! Concord id. Both sides edit the same document: a
//! change made over HTTP reaches repo peers, a change from a repo peer is stored like any
//! other write (durably, before the peer gets the answer that acknowledges it) and published
//! to HTTP, SSE and WebSocket subscribers.
//!
//! A document Concord does not have:
//! - asked for by a peer that has nothing of it either (a `request`, or a `sync` without
//!   heads): answered `doc-unavailable`, which makes the client's `repo.find` fail;
//! - offered by a peer that has it (a `sync` whose message has heads, as after
//!   `repo.create()`) and may create documents (with authentication on, an admin token):
//!   Concord fetches the peer's changes and creates the document from them,
//!   as a `crdt` document with an empty schema (strings the client wrote as text stay text),
//!   under the id's UUID. Two JavaScript clients can so share a document created in
//!   JavaScript, and it is readable over HTTP.
//!
//! Deleting a document over HTTP is not a tombstone: a repo peer that still holds it (and
//! connects again) creates it anew. A document of another strategy than `crdt` is answered
//! `doc-unavailable`: sync changes would bypass its write policy (the same refusal as raw
//! changes), and a peer that cannot write would never converge.
//!
//! # Messages
//! Each WebSocket binary frame is one CBOR map with a `type`:
//! - `join` (client → server, first): answered `peer` with Concord's peer id, a storage id
//!   and protocol version `"1"`; a peer that supports no version we speak gets `error`.
//! - `request` / `sync` (both ways): `data` is an Automerge sync message for `documentId`,
//!   one [`SyncState`] per document per connection. Concord answers every message it
//!   receives, and pushes a `sync` whenever someone else changes a document the peer has
//!   open here.
//! - `doc-unavailable` (server → client, as above; from the client it is ignored).
//! - `ephemeral` (both ways): relayed to the other repo peers that have the document open
//!   here (presence, cursors); never stored.
//! - `error` (server → client, then the connection closes).
//! - `remote-subscription-change` and `remote-heads-changed` (heads gossip, off by default in
//!   the client) and any unknown type are ignored.
//!
//! Bytes that are not a CBOR map with a `type`, a first message that is not `join`, a text
//! frame, or an invalid sync message get an `error` message and a close frame with the
//! reason; other connections are unaffected.
//!
//! # Permissions
//! Each message is checked against the connection's [`Caller`] (see [`crate::auth`]): a
//! document it may not read is `doc-unavailable`, as one that does not exist, and its
//! ephemeral messages are dropped; a sync message carrying changes to a document it may not
//! write (or, without admin, recorded as another agent) closes the connection (1008).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::{close_code, CloseFrame, Message as Frame, Utf8Bytes, WebSocket};
use axum::http::StatusCode;
use concord_core::storage::DocMeta;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema, Strategy, WriteMeta, WriteOutcome};
use concord_protocol::repo::{
    document_id, parse_document_id, Ephemeral, Incoming, Outgoing, PROTOCOL_VERSION,
};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt, StreamMap};
use uuid::Uuid;

use crate::auth::Caller;
use crate::clock::now_ms;
use crate::problem::ApiError;
use crate::registry::{Edit, WriteCommand};
use crate::AppState;

/// Why a connection is being closed: a WebSocket close code and a reason for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    /// The close code (1000 normal, 1003 unsupported data, 1007 invalid data, 1008 policy,
    /// 1011 server error, 4404 no such document, 4409 refused by the document's strategy).
    pub code: u16,
    /// What went wrong, for a person reading it.
    pub reason: String,
}

impl Closing {
    /// A closing with this code and reason.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Closing {
            code,
            reason: reason.into(),
        }
    }

    /// The close code and reason for an API error met on a connection.
    pub fn from_api(error: &ApiError) -> Self {
        let code = match error.status {
            StatusCode::NOT_FOUND => 4404,
            StatusCode::CONFLICT => 4409,
            s if s.is_client_error() => close_code::INVALID,
            _ => close_code::ERROR,
        };
        Closing::new(code, error.detail.clone())
    }

    /// The close frame; the reason is cut to the 123 bytes a frame can carry.
    pub fn frame(&self) -> Frame {
        let mut end = self.reason.len().min(123);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::Close(Some(CloseFrame {
            code: self.code,
            reason: Utf8Bytes::from(&self.reason[..end]),
        }))
    }
}

/// An ephemeral message on its way to the other connections.
#[derive(Debug)]
struct Relayed {
    /// The connection it came from, which does not get it back.
    from: u64,
    message: Ephemeral,
}

/// What the repo connections of one server share.
pub struct Hub {
    app: Arc<AppState>,
    /// Concord's peer id: fresh for each server process, as peer ids name connections'
    /// ends, not data.
    peer_id: String,
    /// Names the data behind this server, so that peers with storage can keep sync states.
    storage_id: String,
    /// Ephemeral messages per document, to every connection that has it open.
    relays: Mutex<HashMap<Uuid, broadcast::Sender<Arc<Relayed>>>>,
    /// Numbers connections, to keep a relayed message from its own sender.
    next_connection: std::sync::atomic::AtomicU64,
}

/// How many ephemeral messages a slow connection may fall behind before it misses some.
const RELAY_BUFFER: usize = 64;

impl Hub {
    /// The hub of the server whose state is `app`.
    pub fn new(app: Arc<AppState>) -> Self {
        let data = std::fs::canonicalize(&app.config.data).unwrap_or(app.config.data.clone());
        Hub {
            storage_id: storage_id(&data.to_string_lossy()),
            peer_id: format!("concord-{}", Uuid::new_v4().simple()),
            app,
            relays: Mutex::new(HashMap::new()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The server's state.
    pub fn app(&self) -> &Arc<AppState> {
        &self.app
    }

    fn relays(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, broadcast::Sender<Arc<Relayed>>>> {
        self.relays.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn listen(&self, id: Uuid) -> broadcast::Receiver<Arc<Relayed>> {
        self.relays()
            .entry(id)
            .or_insert_with(|| broadcast::channel(RELAY_BUFFER).0)
            .subscribe()
    }

    fn relay(&self, id: Uuid, relayed: Relayed) {
        if let Some(sender) = self.relays().get(&id) {
            // Nobody listening is not an error.
            let _ = sender.send(Arc::new(relayed));
        }
    }

    /// Drops the channels of documents nobody has open any more.
    fn tidy(&self) {
        self.relays()
            .retain(|_, sender| sender.receiver_count() > 0);
    }
}

/// A stable storage id for a data folder: the UUID form of a digest of its path.
fn storage_id(path: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("concord storage {path}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// One document a connection syncs.
enum Session {
    /// A Concord document: synced against the registry.
    Live(SyncState),
    /// Offered by the peer and not (yet) in Concord: its changes collect in `scratch` until
    /// the first one arrives, which creates the document.
    Pending {
        state: SyncState,
        scratch: Box<Document>,
    },
    /// Refused for this connection (another strategy, or deleted while open).
    Unavailable,
}

/// What a connection waits on besides its socket.
enum Event {
    /// Someone changed the document (or we lagged behind its changes).
    Changed,
    /// The document left memory or was deleted.
    Gone,
    /// Another peer's ephemeral message.
    Ephemeral(Arc<Relayed>),
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>;

/// One repo connection.
struct Connection<'a> {
    hub: &'a Hub,
    number: u64,
    /// The peer's id, once it joined.
    peer: Option<String>,
    /// The agent of the upgrade request (its token's, or its `Concord-Agent`), if it has one.
    agent: Option<String>,
    /// What the token may do: each document and each change is checked against it.
    caller: Caller,
    sessions: HashMap<Uuid, Session>,
    events: StreamMap<Uuid, Events>,
    relays: StreamMap<Uuid, Events>,
}

/// Serves one repo connection until the peer leaves or breaks the protocol.
pub async fn serve(hub: Arc<Hub>, mut socket: WebSocket, agent: Option<String>, caller: Caller) {
    let number = hub
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut connection = Connection {
        hub: &hub,
        number,
        peer: None,
        agent,
        caller,
        sessions: HashMap::new(),
        events: StreamMap::new(),
        relays: StreamMap::new(),
    };
    let result = connection.run(&mut socket).await;
    let peer = connection.peer.take();
    drop(connection);
    hub.tidy();
    if let Err(closing) = result {
        tracing::info!(peer = ?peer, code = closing.code, reason = %closing.reason, "closing a repo connection");
        if let Some(peer) = &peer {
            let error = Outgoing::Error {
                message: &closing.reason,
            };
            let _ = socket
                .send(Frame::Binary(error.encode(&hub.peer_id, peer).into()))
                .await;
        }
        let _ = socket.send(closing.frame()).await;
    }
}

impl Connection<'_> {
    async fn run(&mut self, socket: &mut WebSocket) -> Result<(), Closing> {
        loop {
            tokio::select! {
                frame = socket.recv() => match frame {
                    None | Some(Err(_)) | Some(Ok(Frame::Close(_))) => return Ok(()),
                    Some(Ok(Frame::Binary(bytes))) => {
                        let message = Incoming::decode(&bytes)
                            .map_err(|e| Closing::new(close_code::INVALID, e.to_string()))?;
                        self.receive(socket, message).await?;
                    }
                    Some(Ok(Frame::Text(_))) => {
                        return Err(Closing::new(
                            close_code::UNSUPPORTED,
                            "text frames are not part of the automerge-repo protocol: send CBOR messages in binary frames",
                        ))
                    }
                    Some(Ok(_)) => {} // ping and pong: answered by the WebSocket layer
                },
                Some((id, event)) = self.events.next() => self.on_event(socket, id, event).await?,
                Some((id, event)) = self.relays.next() => self.on_event(socket, id, event).await?,
            }
        }
    }

    async fn send(&mut self, socket: &mut WebSocket, message: Outgoing<'_>) -> Result<(), Closing> {
        let peer = self.peer.as_deref().unwrap_or_default();
        socket
            .send(Frame::Binary(
                message.encode(&self.hub.peer_id, peer).into(),
            ))
            .await
            // The peer is gone: nothing to close.
            .map_err(|_| Closing::new(close_code::AWAY, "the peer is gone"))
    }

    async fn receive(&mut self, socket: &mut WebSocket, message: Incoming) -> Result<(), Closing> {
        let policy = close_code::POLICY;
        match message {
            Incoming::Join { sender, versions } => {
                self.peer = Some(sender);
                let supported = versions
                    .as_ref()
                    .is_none_or(|v| v.iter().any(|v| v == PROTOCOL_VERSION));
                if !supported {
                    return Err(Closing::new(policy, format!("unsupported protocol version: Concord speaks version {PROTOCOL_VERSION}")));
                }
                let storage = self.hub.storage_id.clone();
                self.send(socket, Outgoing::Peer { storage: &storage })
                    .await
            }
            _ if self.peer.is_none() => Err(Closing::new(policy, "the first message must be join")),
            Incoming::Sync {
                document,
                data,
                request,
                ..
            } => {
                // A document the token may not read does not exist for it.
                let Some(id) = parse_document_id(&document).filter(|id| self.caller.can_read(*id))
                else {
                    return self
                        .send(
                            socket,
                            Outgoing::Unavailable {
                                document: &document,
                            },
                        )
                        .await;
                };
                let message = SyncMessage::decode(&data)
                    .map_err(|e| Closing::new(close_code::INVALID, format!("{document}: {e}")))?;
                self.sync(socket, id, &document, request, message, &data)
                    .await
            }
            Incoming::Ephemeral(message) => {
                let readable =
                    parse_document_id(&message.document).filter(|id| self.caller.can_read(*id));
                if let Some(id) = readable {
                    self.hub.relay(
                        id,
                        Relayed {
                            from: self.number,
                            message,
                        },
                    );
                }
                Ok(())
            }
            Incoming::Ignored { kind } => {
                tracing::debug!(%kind, "ignoring a repo message");
                Ok(())
            }
        }
    }

    fn write_meta(&self) -> WriteMeta {
        let agent = self.agent.clone().unwrap_or_else(|| {
            let peer = self.peer.as_deref().unwrap_or("unknown");
            format!(
                "automerge-repo:{}",
                peer.chars().take(100).collect::<String>()
            )
        });
        WriteMeta {
            agent,
            time_ms: now_ms(),
            message: None,
        }
    }

    /// Handles a sync message for a document the token may read (`data`: its bytes).
    async fn sync(
        &mut self,
        socket: &mut WebSocket,
        id: Uuid,
        document: &str,
        request: bool,
        message: SyncMessage,
        data: &[u8],
    ) -> Result<(), Closing> {
        let invalid = |e: concord_core::sync::SyncError| {
            Closing::new(close_code::INVALID, format!("{document}: {e}"))
        };
        let session = match self.sessions.remove(&id) {
            Some(session) => session,
            None => match self.open(id, request, &message).await? {
                Some(session) => session,
                None => return self.send(socket, Outgoing::Unavailable { document }).await,
            },
        };
        // Changes write (to the document, or they create it), whatever the session: checked
        // here, before any of them is taken. A message without changes only tells what the
        // peer has.
        if message.has_changes() {
            self.caller
                .check_sync_changes(&self.hub.app.registry, id, data)
                .await
                .map_err(|reason| Closing::new(close_code::POLICY, reason))?;
        }
        let meta = self.write_meta();
        let registry = &self.hub.app.registry;
        let (session, reply) = match session {
            Session::Unavailable => (Session::Unavailable, None),
            Session::Live(mut state) => {
                match receive(registry, id, &meta, &mut state, message).await {
                    Ok(()) => {
                        let reply = next_message(registry, id, &mut state).await;
                        (Session::Live(state), Some(reply))
                    }
                    // Deleted since it was opened.
                    Err(e) if e.status == StatusCode::NOT_FOUND => {
                        self.events.remove(&id);
                        self.relays.remove(&id);
                        (Session::Unavailable, None)
                    }
                    Err(e) => return Err(Closing::from_api(&e)),
                }
            }
            Session::Pending {
                mut state,
                mut scratch,
            } => {
                scratch
                    .receive_sync_message(&mut state, message)
                    .map_err(invalid)?;
                if scratch.change_count() == 0 {
                    let reply = scratch.generate_sync_message(&mut state);
                    (Session::Pending { state, scratch }, Some(Ok(reply)))
                } else {
                    match self.adopt(id, &scratch, &mut state, &meta).await {
                        // Someone created a document of another strategy under this id.
                        Err(e) if e.status == StatusCode::CONFLICT => (Session::Unavailable, None),
                        reply => (Session::Live(state), Some(reply)),
                    }
                }
            }
        };
        self.sessions.insert(id, session);
        match reply {
            None => self.send(socket, Outgoing::Unavailable { document }).await,
            Some(Ok(Some(message))) => {
                let data = message.encode();
                self.send(socket, Outgoing::Sync { document, data }).await
            }
            Some(Ok(None)) => Ok(()),
            Some(Err(e)) => Err(Closing::from_api(&e)),
        }
    }

    /// Decides how to sync a document first named by the peer: `None` means unavailable.
    async fn open(
        &mut self,
        id: Uuid,
        request: bool,
        message: &SyncMessage,
    ) -> Result<Option<Session>, Closing> {
        match self
            .hub
            .app
            .registry
            .read::<_, ApiError>(id, |l| Ok(l.meta.strategy))
            .await
        {
            Ok(Strategy::Crdt) => {
                self.watch(id).await.map_err(|e| Closing::from_api(&e))?;
                Ok(Some(Session::Live(SyncState::new())))
            }
            Ok(strategy) => {
                tracing::debug!(doc = %id, %strategy, "a repo peer asked for a document it may not sync");
                Ok(Some(Session::Unavailable))
            }
            Err(e) if e.status == StatusCode::NOT_FOUND => {
                if request || message.heads().is_empty() || !self.caller.is_admin() {
                    // Nobody has it (or the peer may not create it): the peer's find fails.
                    // No session, so that an offer with heads later on this connection still
                    // creates it, or finds it once someone else created it.
                    Ok(None)
                } else {
                    Ok(Some(Session::Pending {
                        state: SyncState::new(),
                        scratch: Box::new(empty()),
                    }))
                }
            }
            Err(e) => Err(Closing::from_api(&e)),
        }
    }

    /// Subscribes to a document's changes and to its ephemeral messages.
    async fn watch(&mut self, id: Uuid) -> Result<(), ApiError> {
        let (_, changes) = self.hub.app.registry.subscribe(id, None).await?;
        let changes = BroadcastStream::new(changes)
            .map(|_| Event::Changed)
            .chain(tokio_stream::once(Event::Gone));
        self.events.insert(id, Box::pin(changes));
        if !self.relays.contains_key(&id) {
            let number = self.number;
            let relays = BroadcastStream::new(self.hub.listen(id)).filter_map(move |r| match r {
                Ok(relayed) if relayed.from != number => Some(Event::Ephemeral(relayed)),
                // Skipped ephemeral messages are not worth a resend.
                _ => None,
            });
            self.relays.insert(id, Box::pin(relays));
        }
        Ok(())
    }

    /// Makes the document the peer offered a Concord document (or merges it into the one
    /// someone created meanwhile), starts following it, and answers from it.
    async fn adopt(
        &mut self,
        id: Uuid,
        scratch: &Document,
        state: &mut SyncState,
        meta: &WriteMeta,
    ) -> Result<Option<SyncMessage>, ApiError> {
        let registry = &self.hub.app.registry;
        let doc_meta = DocMeta {
            id,
            strategy: Strategy::Crdt,
            schema: Schema::default(),
            created_at_ms: meta.time_ms,
        };
        match registry
            .create(doc_meta, || copy(scratch), meta, true, None)
            .await
        {
            Ok(_) => tracing::info!(doc = %id, "created a document offered by a repo peer"),
            Err(e) if e.kind == "already-exists" => {
                registry
                    .execute(WriteCommand {
                        doc: id,
                        meta,
                        if_match: None,
                        lock: None,
                        edit: Edit::Copy(scratch),
                        idempotency: None,
                    })
                    .await?;
            }
            Err(e) => return Err(e),
        }
        self.watch(id).await?;
        next_message(registry, id, state).await
    }

    async fn on_event(
        &mut self,
        socket: &mut WebSocket,
        id: Uuid,
        event: Event,
    ) -> Result<(), Closing> {
        let document = document_id(id);
        let registry = &self.hub.app.registry;
        match event {
            Event::Ephemeral(relayed) => {
                self.send(socket, Outgoing::Ephemeral(&relayed.message))
                    .await
            }
            Event::Changed => self.push(socket, id, &document).await,
            Event::Gone => {
                self.events.remove(&id);
                match registry
                    .read::<_, crate::registry::Error>(id, |_| Ok(()))
                    .await
                {
                    // It only left memory: follow it again.
                    Ok(()) => {
                        self.watch(id).await.map_err(|e| Closing::from_api(&e))?;
                        self.push(socket, id, &document).await
                    }
                    Err(crate::registry::Error::NotFound(_)) => {
                        self.relays.remove(&id);
                        self.sessions.insert(id, Session::Unavailable);
                        self.send(
                            socket,
                            Outgoing::Unavailable {
                                document: &document,
                            },
                        )
                        .await
                    }
                    Err(e) => Err(Closing::from_api(&e.into())),
                }
            }
        }
    }

    /// Sends the peer what changed in a document it has open, if anything.
    async fn push(
        &mut self,
        socket: &mut WebSocket,
        id: Uuid,
        document: &str,
    ) -> Result<(), Closing> {
        let Some(Session::Live(state)) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        match next_message(&self.hub.app.registry, id, state).await {
            Ok(Some(message)) => {
                let data = message.encode();
                self.send(socket, Outgoing::Sync { document, data }).await
            }
            Ok(None) => Ok(()),
            // Deleted: the Gone event that follows says so.
            Err(e) if e.status == StatusCode::NOT_FOUND => Ok(()),
            Err(e) => Err(Closing::from_api(&e)),
        }
    }
}

fn empty() -> Document {
    Document::empty(Schema::default()).expect("the default schema compiles")
}

/// A copy of a document with every change, for storing it as a new document.
fn copy(doc: &Document) -> Result<(Document, WriteOutcome), ApiError> {
    let bytes = doc.changes_since(None)?;
    let (copy, report) = Document::load(doc.schema().clone(), None, &[bytes])?;
    if !report.skipped.is_empty() {
        return Err(ApiError::internal(report.skipped.join("; ")));
    }
    let changes = copy.automerge().get_changes(&[]);
    let outcome = WriteOutcome {
        version: copy.version(),
        changes,
    };
    Ok((copy, outcome))
}

/// Applies a peer's sync message to a Concord document: a write (stored, published) when it
/// carries changes, else only an update of what the peer is known to have. Changes are taken
/// as they come: callers check them against the connection's caller first
/// ([`Caller::check_sync_changes`]).
pub(crate) async fn receive(
    registry: &crate::registry::Registry,
    id: Uuid,
    meta: &WriteMeta,
    state: &mut SyncState,
    message: SyncMessage,
) -> Result<(), ApiError> {
    let refused = |e: concord_core::sync::SyncError| {
        ApiError::bad_request("invalid-sync-message", e.to_string())
    };
    if message.has_changes() {
        registry
            .execute(WriteCommand {
                doc: id,
                meta,
                if_match: None,
                lock: None,
                edit: Edit::Sync { state, message },
                idempotency: None,
            })
            .await
            .map(drop)
            .map_err(ApiError::from)
    } else {
        registry
            .update(id, |loaded| {
                loaded
                    .doc
                    .receive_sync_message(state, message)
                    .map(drop)
                    .map_err(refused)
            })
            .await
    }
}

/// The next message for a peer of a Concord document, if any.
pub(crate) async fn next_message(
    registry: &crate::registry::Registry,
    id: Uuid,
    state: &mut SyncState,
) -> Result<Option<SyncMessage>, ApiError> {
    registry
        .read(id, |loaded| Ok(loaded.doc.generate_sync_message(state)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_frame() {
        let long = "é".repeat(200);
        let Frame::Close(Some(frame)) = Closing::new(1007, long).frame() else {
            panic!("a close frame");
        };
        assert!(frame.reason.as_str().len() <= 123);
    }
}
