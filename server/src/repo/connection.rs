//! One repo connection: the peer's messages, one sync session per document it names, the
//! documents it offers turned into Concord documents, and changes pushed as they happen.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{close_code, Message as Frame};
use axum::http::StatusCode;
use concord_core::storage::DocMeta;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema, Strategy, WriteMeta, WriteOutcome};
use concord_protocol::repo::{
    document_id, parse_document_id, Incoming, Outgoing, PROTOCOL_VERSION,
};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt, StreamMap};
use uuid::Uuid;

use super::{next_message, receive, Closing, Hub, Relayed};
use crate::api::live::{LiveSocket, Received};
use crate::auth::Caller;
use crate::clock::now_ms;
use crate::problem::ApiError;
use crate::registry::{Answer, Edit, WriteCommand};

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

/// Serves one repo connection until the peer leaves or breaks the protocol (or is silent
/// too long, or the server shuts down: see [`LiveSocket`]).
pub(crate) async fn serve(
    hub: Arc<Hub>,
    mut socket: LiveSocket,
    agent: Option<String>,
    caller: Caller,
) {
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
        socket.close(closing.code, &closing.reason).await;
    }
}

impl Connection<'_> {
    async fn run(&mut self, socket: &mut LiveSocket) -> Result<(), Closing> {
        loop {
            tokio::select! {
                received = socket.recv() => match received {
                    Received::Gone => return Ok(()),
                    Received::Close(code, reason) => return Err(Closing::new(code, reason)),
                    Received::Binary(bytes) => {
                        let message = Incoming::decode(&bytes)
                            .map_err(|e| Closing::new(close_code::INVALID, e.to_string()))?;
                        self.receive(socket, message).await?;
                    }
                    Received::Text(_) => {
                        return Err(Closing::new(
                            close_code::UNSUPPORTED,
                            "text frames are not part of the automerge-repo protocol: send CBOR messages in binary frames",
                        ))
                    }
                },
                Some((id, event)) = self.events.next() => self.on_event(socket, id, event).await?,
                Some((id, event)) = self.relays.next() => self.on_event(socket, id, event).await?,
            }
        }
    }

    async fn send(
        &mut self,
        socket: &mut LiveSocket,
        message: Outgoing<'_>,
    ) -> Result<(), Closing> {
        let peer = self.peer.as_deref().unwrap_or_default();
        socket
            .send(Frame::Binary(
                message.encode(&self.hub.peer_id, peer).into(),
            ))
            .await
            // The peer is gone: nothing to close.
            .map_err(|_| Closing::new(close_code::AWAY, "the peer is gone"))
    }

    async fn receive(&mut self, socket: &mut LiveSocket, message: Incoming) -> Result<(), Closing> {
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
        socket: &mut LiveSocket,
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
            Ok(strategy) if crate::policy::takes_changes(strategy) => {
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
                        answer: Answer::Minimal,
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
        socket: &mut LiveSocket,
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
        socket: &mut LiveSocket,
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
        patch: Vec::new(),
    };
    Ok((copy, outcome))
}
