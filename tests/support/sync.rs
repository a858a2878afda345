//! Sync clients spoken by hand: [`Replica`], an Automerge replica on the binary sync
//! endpoint (`/v1/docs/{id}/sync`), and [`RepoPeer`], an automerge-repo peer on
//! `/v1/repo`, with the CBOR helpers to write what such a peer sends.
//!
//! The peer's messages are built here field by field rather than with
//! `concord_protocol::repo`: that codec encodes what the server sends (`peer`, `sync`, ...),
//! not what a peer does (`join`, `request`), and bytes made independently of the server's
//! own code test its decoder the way a foreign client does.

use ciborium::Value as Cbor;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema};
use concord_protocol::repo::Incoming;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{next, RawSocket};

/// A Rust sync client: its own Automerge replica and the state of its peer, the server.
pub struct Replica {
    /// The replica.
    pub doc: Document,
    /// What the replica knows the server has.
    pub server: SyncState,
    /// Send every message twice.
    pub duplicate: bool,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new()
    }
}

impl Replica {
    /// An empty replica that has not synced yet.
    pub fn new() -> Self {
        Replica {
            doc: Document::empty(Schema::default()).unwrap(),
            server: SyncState::new(),
            duplicate: false,
        }
    }

    /// Sends the next sync message, if the replica has one to send.
    pub async fn send_next(&mut self, socket: &mut RawSocket) {
        if let Some(message) = self.doc.generate_sync_message(&mut self.server) {
            let bytes = message.encode();
            if self.duplicate {
                socket.send(Message::binary(bytes.clone())).await.unwrap();
            }
            socket.send(Message::binary(bytes)).await.unwrap();
        }
    }

    /// Syncs until the server says it has exactly what the replica has, and nothing is
    /// left to send either way.
    pub async fn sync(&mut self, socket: &mut RawSocket) {
        loop {
            self.send_next(socket).await;
            if self.server.their_heads().as_ref() == Some(&self.doc.version()) {
                return;
            }
            match next(socket).await {
                Some(Message::Binary(bytes)) => self.receive(&bytes),
                other => panic!("expected a sync message, got {other:?}"),
            }
        }
    }

    /// Keeps syncing until the server closes the connection, and returns its code and reason.
    /// The change may go out only after a round of heads and bloom filters (whether the first
    /// message carries it depends on what the server said last), so one send is not enough.
    pub async fn sync_until_closed(&mut self, socket: &mut RawSocket) -> (u16, String) {
        loop {
            if let Some(message) = self.doc.generate_sync_message(&mut self.server) {
                // The server may already have closed; its close frame is still to be read.
                let _ = socket.send(Message::binary(message.encode())).await;
            }
            match next(socket).await {
                Some(Message::Binary(bytes)) => self.receive(&bytes),
                Some(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned())
                }
                other => panic!("expected a sync message or the close, got {other:?}"),
            }
        }
    }

    /// A new connection: what the server knows of us does not outlive it.
    pub fn reconnected(&mut self) {
        self.server = SyncState::new();
    }

    /// Takes in one sync message from the server.
    fn receive(&mut self, bytes: &[u8]) {
        let message = SyncMessage::decode(bytes).expect("a sync message");
        self.doc
            .receive_sync_message(&mut self.server, message)
            .unwrap();
    }
}

/// A CBOR map of text keys, as automerge-repo clients send.
pub fn cbor_map(fields: Vec<(&str, Cbor)>) -> Vec<u8> {
    let map = fields
        .into_iter()
        .map(|(k, v)| (Cbor::Text(k.to_owned()), v))
        .collect();
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Cbor::Map(map), &mut out).unwrap();
    out
}

/// A CBOR text.
pub fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

/// A text field of a CBOR map (panics if there is none).
pub fn field(map: &Cbor, key: &str) -> String {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some(key)))
        .and_then(|(_, v)| v.as_text())
        .unwrap_or_else(|| panic!("no text field {key} in {map:?}"))
        .to_owned()
}

/// A hand-driven automerge-repo peer.
pub struct RepoPeer {
    /// Its connection.
    pub socket: RawSocket,
    /// Its peer id.
    pub id: String,
    /// The server's peer id (from its `peer` message), the target of what the peer sends.
    pub server: Option<String>,
}

impl RepoPeer {
    /// Sends `join` as `id` over `socket` (open on `/v1/repo`) and reads the answer, which
    /// must be a `peer` message; returns the peer and that answer, decoded, for the test to
    /// check further.
    pub async fn join(mut socket: RawSocket, id: &str) -> (RepoPeer, Cbor) {
        let join = cbor_map(vec![
            ("type", text("join")),
            ("senderId", text(id)),
            ("supportedProtocolVersions", Cbor::Array(vec![text("1")])),
        ]);
        socket.send(Message::binary(join)).await.unwrap();
        let Some(Message::Binary(bytes)) = next(&mut socket).await else {
            panic!("expected the peer message");
        };
        let answer: Cbor = ciborium::de::from_reader(&bytes[..]).expect("a CBOR message");
        assert_eq!(field(&answer, "type"), "peer", "{answer:?}");
        let server = answer
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("senderId")))
            .and_then(|(_, v)| v.as_text())
            .map(str::to_owned);
        let peer = RepoPeer {
            socket,
            id: id.to_owned(),
            server,
        };
        (peer, answer)
    }

    /// Sends a `sync` or `request` with an Automerge sync message for `document`.
    pub async fn send_sync(&mut self, kind: &str, document: &str, data: &[u8]) {
        let message = cbor_map(vec![
            ("type", text(kind)),
            ("senderId", text(&self.id)),
            ("targetId", text(self.server.as_deref().unwrap_or("server"))),
            ("documentId", text(document)),
            ("data", Cbor::Bytes(data.to_vec())),
        ]);
        self.socket.send(Message::binary(message)).await.unwrap();
    }

    /// The next protocol message.
    pub async fn receive(&mut self) -> Incoming {
        match next(&mut self.socket).await {
            Some(Message::Binary(bytes)) => Incoming::decode(&bytes).expect("a repo message"),
            other => panic!("expected a repo message, got {other:?}"),
        }
    }

    /// Syncs `replica` as `document` until the server has what it has; the first message
    /// is of type `first` (`request` when the replica has nothing yet).
    pub async fn sync(&mut self, document: &str, replica: &mut Replica, first: &str) {
        let mut kind = first;
        loop {
            if let Some(message) = replica.doc.generate_sync_message(&mut replica.server) {
                self.send_sync(kind, document, &message.encode()).await;
                kind = "sync";
            }
            if replica.server.their_heads().as_ref() == Some(&replica.doc.version()) {
                return;
            }
            match self.receive().await {
                Incoming::Sync {
                    document: d, data, ..
                } if d == document => {
                    let message = SyncMessage::decode(&data).unwrap();
                    replica
                        .doc
                        .receive_sync_message(&mut replica.server, message)
                        .unwrap();
                }
                other => panic!("expected a sync message for {document}, got {other:?}"),
            }
        }
    }

    /// Sends an ephemeral message about `document`.
    pub async fn send_ephemeral(&mut self, document: &str, data: &[u8]) {
        let message = cbor_map(vec![
            ("type", text("ephemeral")),
            ("senderId", text(&self.id)),
            ("targetId", text(self.server.as_deref().unwrap_or("server"))),
            ("count", Cbor::Integer(1.into())),
            ("sessionId", text("session")),
            ("documentId", text(document)),
            ("data", Cbor::Bytes(data.to_vec())),
        ]);
        self.socket.send(Message::binary(message)).await.unwrap();
    }

    /// The code and reason the server closes the connection with (after its `error`, and
    /// any sync message sent before).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match next(&mut self.socket).await {
                Some(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned())
                }
                Some(Message::Binary(bytes)) => {
                    match Incoming::decode(&bytes).expect("a repo message") {
                        Incoming::Ignored { kind } if kind == "error" => continue,
                        Incoming::Sync { .. } => continue,
                        other => panic!("expected the close, got {other:?}"),
                    }
                }
                other => panic!("expected the close, got {other:?}"),
            }
        }
    }
}
