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
//! # Keep-alive and limits
//! A connection is kept alive and ended as every WebSocket is
//! (`api::live::LiveSocket`): pinged, closed after the idle timeout
//! without a frame (1001) and at shutdown (1001); a text frame that is not UTF-8 closes
//! it 1007. It holds a place among the live streams (`503` `too-many-streams` at the upgrade
//! when their share of the connections is taken).
//!
//! # Permissions
//! Each message is checked against the connection's [`Caller`] (see [`crate::auth`]): a
//! document it may not read is `doc-unavailable`, as one that does not exist, and its
//! ephemeral messages are dropped; a sync message carrying changes to a document it may not
//! write (or, without admin, recorded as another agent) closes the connection (1008).
//!
//! [`Caller`]: crate::auth::Caller

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::close_code;
use axum::http::StatusCode;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::WriteMeta;
use concord_protocol::repo::Ephemeral;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::problem::ApiError;
use crate::registry::{Answer, Edit, WriteCommand};
use crate::AppState;

mod connection;

pub(crate) use connection::serve;

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

/// Applies a peer's sync message to a Concord document: a write (stored, published) when it
/// carries changes, else only an update of what the peer is known to have. Changes are taken
/// as they come: callers check them against the connection's caller first
/// ([`Caller::check_sync_changes`](crate::auth::Caller::check_sync_changes)).
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
                answer: Answer::Minimal,
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
