//! Live sync: the WebSocket JSON protocol of a document (`GET /v1/docs/{id}/ws`, in
//! `ws.rs`), its Server-Sent Events (`GET /v1/docs/{id}/events`) and the global feed
//! (`GET /v1/events`, both in `sse.rs`). Here: what a subscriber of a document is handed
//! ([`DocFeed`]), shared by the WebSocket and the event stream, and their common wording.
//! [`LiveSocket`] (`socket.rs`) keeps every WebSocket alive and ends it, the sync endpoints'
//! (`api::sync`, [`crate::repo`]) too.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::State;
use concord_core::Version;
use concord_protocol::live::{Change, Problem, ServerMessage};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::problem::ApiError;
use crate::registry::{self, Catchup, ChangeEvent};
use crate::AppState;

mod bucket;
mod message;
mod socket;
mod sse;
#[cfg(test)]
mod tests;
mod ws;

pub(crate) use socket::{LiveSocket, Received};

pub(super) use sse::{__path_doc_events, __path_feed, doc_events, feed};
pub(super) use ws::{__path_ws, ws};

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
    /// Counts it in `concord_live_subscribers` while it lives.
    _held: crate::metrics::Held,
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
            _held: crate::metrics::Held::new(crate::metrics::LIVE_SUBSCRIBERS),
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
    let version = e.current_version();
    ServerMessage::Error(Problem {
        id,
        type_uri: format!("urn:concord:problem:{}", e.kind),
        title: e.status.canonical_reason().unwrap_or("Error").to_owned(),
        status: e.status.as_u16(),
        detail: e.detail.clone(),
        version,
    })
}

/// Returns once the server is shutting down (or the registry is gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}
