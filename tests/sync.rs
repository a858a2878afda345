//! End-to-end tests of sync for CRDT clients: `GET /v1/docs/{id}/sync` (binary Automerge
//! sync messages) with a Rust client that keeps its own Automerge replica, and `GET
//! /v1/repo` (the automerge-repo protocol) spoken by hand, message by message.
//!
//! Every wait is for a message the protocol promises; the timeout around it only turns a
//! hang into a failure.

use std::time::Duration;

use ciborium::Value as Cbor;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema, WriteMeta};
use concord_protocol::repo::{document_id, Incoming};
use concord_tests::TestServer;
use futures_util::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Bounds every wait for the server; a correct server answers in milliseconds.
const PATIENCE: Duration = Duration::from_secs(20);

async fn connect(s: &TestServer, path: &str) -> Socket {
    let url = format!("ws://{}{}", s.addr(), path);
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .unwrap_or_else(|e| panic!("connect to {path}: {e}"));
    socket
}

/// The next frame that is not a ping or pong; `None` once the connection ended.
async fn next(socket: &mut Socket) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("the server answers in time");
        match frame {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(frame)) => return Some(frame),
        }
    }
}

/// Waits for the close frame; returns its code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        match next(socket).await {
            Some(Message::Close(Some(frame))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned())
            }
            Some(Message::Close(None)) | None => panic!("closed without a reason"),
            Some(_) => continue,
        }
    }
}

fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}

/// A Rust sync client: its own Automerge replica and the state of its peer, the server.
struct Replica {
    doc: Document,
    server: SyncState,
    /// Send every message twice.
    duplicate: bool,
}

impl Replica {
    fn new() -> Self {
        Replica {
            doc: Document::empty(Schema::default()).unwrap(),
            server: SyncState::new(),
            duplicate: false,
        }
    }

    async fn send_next(&mut self, socket: &mut Socket) {
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
    async fn sync(&mut self, socket: &mut Socket) {
        loop {
            self.send_next(socket).await;
            if self.server.their_heads().as_ref() == Some(&self.doc.version()) {
                return;
            }
            match next(socket).await {
                Some(Message::Binary(bytes)) => {
                    let message = SyncMessage::decode(&bytes).expect("a sync message");
                    self.doc
                        .receive_sync_message(&mut self.server, message)
                        .unwrap();
                }
                other => panic!("expected a sync message, got {other:?}"),
            }
        }
    }

    /// A new connection: what the server knows of us does not outlive it.
    fn reconnected(&mut self) {
        self.server = SyncState::new();
    }
}

#[tokio::test]
async fn sync_client_converges_after_concurrent_offline_edits() {
    let s = TestServer::start().await;
    let (id, _) = s
        .create(json!({"value": {"items": ["a"], "n": 1, "owner": "http"}}))
        .await;
    let path = format!("/v1/docs/{id}/sync");

    let mut replica = Replica::new();
    let mut socket = connect(&s, &path).await;
    replica.sync(&mut socket).await;
    let (value, version) = s.get(&id).await;
    assert_eq!(replica.doc.read(None).unwrap(), value);
    assert_eq!(replica.doc.version().to_string(), version);
    socket.close(None).await.unwrap();

    // Offline, both sides change the document.
    let mut edited = replica.doc.read(None).unwrap();
    edited["items"] = json!(["replica", "a"]);
    edited["owner"] = json!("replica");
    replica.doc.put(None, &edited, &meta("replica")).unwrap();
    let reply = s
        .patch(
            &id,
            "http-agent",
            None,
            &json!([{"op": "add", "path": "/items/-", "value": "server"},
                    {"op": "replace", "path": "/n", "value": 2}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    replica.reconnected();
    let mut socket = connect(&s, &path).await;
    replica.sync(&mut socket).await;
    let (value, version) = s.get(&id).await;
    assert_eq!(replica.doc.version().to_string(), version);
    assert_eq!(replica.doc.read(None).unwrap(), value);
    assert_eq!(
        value,
        json!({"items": ["replica", "a", "server"], "n": 2, "owner": "replica"})
    );

    // While connected, an HTTP write is pushed without being asked for.
    let reply = s
        .patch(
            &id,
            "http-agent",
            None,
            &json!([{"op": "replace", "path": "/n", "value": 3}]),
        )
        .await;
    while replica.doc.version().to_string() != reply.etag() {
        match next(&mut socket).await {
            Some(Message::Binary(bytes)) => {
                let message = SyncMessage::decode(&bytes).unwrap();
                replica
                    .doc
                    .receive_sync_message(&mut replica.server, message)
                    .unwrap();
                replica.send_next(&mut socket).await;
            }
            other => panic!("expected a pushed sync message, got {other:?}"),
        }
    }
    assert_eq!(replica.doc.read(None).unwrap()["n"], 3);

    // The replica's change is stored like any other: it survives a restart.
    let mut s = s;
    socket.close(None).await.unwrap();
    s.restart().await;
    assert_eq!(s.get(&id).await.0["owner"], "replica");
}

#[tokio::test]
async fn duplicated_sync_messages_are_harmless() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"items": []}})).await;
    let path = format!("/v1/docs/{id}/sync");
    let mut replica = Replica::new();
    replica.duplicate = true;
    let mut socket = connect(&s, &path).await;
    replica.sync(&mut socket).await;

    replica
        .doc
        .put(None, &json!({"items": ["once"]}), &meta("replica"))
        .unwrap();
    // Keep a message with the change, to replay it after the sync.
    let mut probe = replica.server.clone();
    let replay = replica
        .doc
        .generate_sync_message(&mut probe)
        .unwrap()
        .encode();
    replica.sync(&mut socket).await;
    socket.send(Message::binary(replay.clone())).await.unwrap();
    socket.send(Message::binary(replay)).await.unwrap();
    // The connection still works: the server answers the next change.
    replica
        .doc
        .put(
            None,
            &json!({"items": ["once", "twice?"]}),
            &meta("replica"),
        )
        .unwrap();
    replica.sync(&mut socket).await;

    let (value, version) = s.get(&id).await;
    assert_eq!(value, json!({"items": ["once", "twice?"]}));
    assert_eq!(version, replica.doc.version().to_string());
    let history = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}/history")))
        .await
        .json();
    assert_eq!(
        history["changes"].as_array().unwrap().len(),
        replica.doc.change_count(),
        "each change stored once"
    );
}

#[tokio::test]
async fn garbage_on_sync_is_closed_with_a_reason_and_others_keep_working() {
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"k": 1}})).await;
    let path = format!("/v1/docs/{id}/sync");

    // A well-behaved client, in sync, stays connected throughout.
    let mut good = Replica::new();
    let mut good_socket = connect(&s, &path).await;
    good.sync(&mut good_socket).await;

    // A sync message whose change is torn: valid framing, garbage inside.
    let (_, outcome) = Document::create(&json!({"x": 1}), Schema::default(), &meta("x")).unwrap();
    let torn = torn_sync_message(outcome.changes[0].raw_bytes());

    let cases: Vec<(&str, Message, u16)> = vec![
        (
            "not a sync message",
            Message::binary(b"hello, server".to_vec()),
            1007,
        ),
        ("empty", Message::binary(Vec::new()), 1007),
        ("a torn change", Message::binary(torn), 1007),
        ("a text frame", Message::text("{\"op\":\"sync\"}"), 1003),
    ];
    for (what, frame, code) in cases {
        let mut socket = connect(&s, &path).await;
        let _hello = next(&mut socket).await.expect("the server's first message");
        socket.send(frame).await.unwrap();
        let (got, reason) = closed(&mut socket).await;
        assert_eq!(got, code, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}");
    }
    assert_eq!(s.get(&id).await.1, version, "the document is unchanged");

    // The good client still gets pushed changes.
    let reply = s
        .patch(
            &id,
            "agent",
            None,
            &json!([{"op": "replace", "path": "/k", "value": 2}]),
        )
        .await;
    while good.doc.version().to_string() != reply.etag() {
        let Some(Message::Binary(bytes)) = next(&mut good_socket).await else {
            panic!("the good connection was closed");
        };
        let message = SyncMessage::decode(&bytes).unwrap();
        good.doc
            .receive_sync_message(&mut good.server, message)
            .unwrap();
        good.send_next(&mut good_socket).await;
    }

    // Deleting the document closes its connections with a reason.
    let reply = s
        .send(s.request(Method::DELETE, &format!("/v1/docs/{id}")))
        .await;
    assert!(reply.status.is_success());
    let (code, reason) = closed(&mut good_socket).await;
    assert_eq!(code, 4404, "{reason}");
}

#[tokio::test]
async fn sync_refuses_unknown_documents_and_other_strategies_before_upgrading() {
    let s = TestServer::start().await;
    let (lww, _) = s
        .create(json!({"value": {"k": 1}, "strategy": "lww"}))
        .await;
    let cases = [
        (format!("/v1/docs/{}/sync", Uuid::new_v4()), 404),
        (format!("/v1/docs/{lww}/sync"), 409),
        ("/v1/docs/not-a-uuid/sync".to_owned(), 400),
    ];
    for (path, status) in cases {
        let url = format!("ws://{}{}", s.addr(), path);
        match tokio_tungstenite::connect_async(url).await {
            Err(tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), status, "{path}");
                let body: Value =
                    serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["status"], status, "{path}: {body}");
            }
            other => panic!("{path}: expected a refused handshake, got {other:?}"),
        }
    }
    // A plain GET is told it needs a WebSocket.
    let (id, _) = s.create(json!({})).await;
    for path in [format!("/v1/docs/{id}/sync"), "/v1/repo".to_owned()] {
        let reply = s.send(s.request(Method::GET, &path)).await;
        let problem = reply.assert_problem(426);
        assert!(
            problem["detail"].as_str().unwrap().contains("WebSocket"),
            "{problem}"
        );
    }
}

fn torn_sync_message(change: &[u8]) -> Vec<u8> {
    // A v1 sync message (0x42): no heads, no need, no have, one change of the given bytes
    // minus its last three.
    let torn = &change[..change.len() - 3];
    let mut message = vec![0x42, 0, 0, 0, 1];
    let mut len = torn.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            message.push(byte);
            break;
        }
        message.push(byte | 0x80);
    }
    message.extend_from_slice(torn);
    message
}

// --- the automerge-repo protocol, spoken by hand -------------------------------------------

/// A CBOR map of text keys, as automerge-repo clients send.
fn cbor_map(fields: Vec<(&str, Cbor)>) -> Vec<u8> {
    let map = fields
        .into_iter()
        .map(|(k, v)| (Cbor::Text(k.to_owned()), v))
        .collect();
    let mut out = Vec::new();
    ciborium::ser::into_writer(&Cbor::Map(map), &mut out).unwrap();
    out
}

fn text(s: &str) -> Cbor {
    Cbor::Text(s.to_owned())
}

/// A text field of a CBOR map.
fn field(map: &Cbor, key: &str) -> String {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some(key)))
        .and_then(|(_, v)| v.as_text())
        .unwrap_or_else(|| panic!("no text field {key} in {map:?}"))
        .to_owned()
}

/// A hand-driven automerge-repo peer.
struct RepoPeer {
    socket: Socket,
    id: String,
    server: String,
}

impl RepoPeer {
    async fn join(s: &TestServer, id: &str) -> RepoPeer {
        let mut socket = connect(s, "/v1/repo").await;
        let join = cbor_map(vec![
            ("type", text("join")),
            ("senderId", text(id)),
            ("supportedProtocolVersions", Cbor::Array(vec![text("1")])),
        ]);
        socket.send(Message::binary(join)).await.unwrap();
        let Some(Message::Binary(bytes)) = next(&mut socket).await else {
            panic!("expected the peer message");
        };
        let peer: Cbor = ciborium::de::from_reader(&bytes[..]).unwrap();
        assert_eq!(field(&peer, "type"), "peer");
        assert_eq!(field(&peer, "targetId"), id);
        assert_eq!(field(&peer, "selectedProtocolVersion"), "1");
        let metadata = peer
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_text() == Some("peerMetadata"))
            .unwrap()
            .1
            .clone();
        assert!(!field(&metadata, "storageId").is_empty());
        RepoPeer {
            socket,
            id: id.to_owned(),
            server: field(&peer, "senderId"),
        }
    }

    async fn send_sync(&mut self, kind: &str, document: &str, data: &[u8]) {
        let message = cbor_map(vec![
            ("type", text(kind)),
            ("senderId", text(&self.id)),
            ("targetId", text(&self.server)),
            ("documentId", text(document)),
            ("data", Cbor::Bytes(data.to_vec())),
        ]);
        self.socket.send(Message::binary(message)).await.unwrap();
    }

    /// The next protocol message.
    async fn receive(&mut self) -> Incoming {
        match next(&mut self.socket).await {
            Some(Message::Binary(bytes)) => Incoming::decode(&bytes).expect("a repo message"),
            other => panic!("expected a repo message, got {other:?}"),
        }
    }

    /// Syncs `replica` as `document` until the server has what it has.
    async fn sync(&mut self, document: &str, replica: &mut Replica, first: &str) {
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
}

#[tokio::test]
async fn repo_peer_finds_edits_and_creates_documents() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"items": ["http"]}})).await;
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}")))
        .await;
    let url = reply.json()["url"].as_str().unwrap().to_owned();
    let document = url.strip_prefix("automerge:").unwrap().to_owned();
    assert_eq!(document, document_id(Uuid::parse_str(&id).unwrap()));

    let mut peer = RepoPeer::join(&s, "rust-peer").await;

    // find: a request for a document Concord has.
    let mut replica = Replica::new();
    peer.sync(&document, &mut replica, "request").await;
    assert_eq!(replica.doc.read(None).unwrap(), json!({"items": ["http"]}));

    // A change from the peer is stored; an HTTP change is pushed to the peer.
    let mut value = replica.doc.read(None).unwrap();
    value["items"] = json!(["http", "repo"]);
    replica.doc.put(None, &value, &meta("repo")).unwrap();
    peer.sync(&document, &mut replica, "sync").await;
    assert_eq!(s.get(&id).await.0, json!({"items": ["http", "repo"]}));
    let reply = s
        .patch(
            &id,
            "agent",
            None,
            &json!([{"op": "add", "path": "/items/-", "value": "later"}]),
        )
        .await;
    while replica.doc.version().to_string() != reply.etag() {
        match peer.receive().await {
            Incoming::Sync { data, .. } => {
                let message = SyncMessage::decode(&data).unwrap();
                replica
                    .doc
                    .receive_sync_message(&mut replica.server, message)
                    .unwrap();
                if let Some(m) = replica.doc.generate_sync_message(&mut replica.server) {
                    peer.send_sync("sync", &document, &m.encode()).await;
                }
            }
            other => panic!("expected a pushed sync message, got {other:?}"),
        }
    }

    // Deleted over HTTP: the peer is told it is unavailable now.
    let reply = s
        .send(s.request(Method::DELETE, &format!("/v1/docs/{id}")))
        .await;
    assert!(reply.status.is_success());
    loop {
        match peer.receive().await {
            // A late answer to the last exchange may come first.
            Incoming::Sync { .. } => continue,
            Incoming::Ignored { kind } => break assert_eq!(kind, "doc-unavailable"),
            other => panic!("expected doc-unavailable, got {other:?}"),
        }
    }

    // A request for a document nobody has: unavailable.
    let unknown = document_id(Uuid::new_v4());
    let hello = Document::empty(Schema::default())
        .unwrap()
        .generate_sync_message(&mut SyncState::new())
        .unwrap();
    peer.send_sync("request", &unknown, &hello.encode()).await;
    match peer.receive().await {
        Incoming::Ignored { kind } => assert_eq!(kind, "doc-unavailable"),
        other => panic!("expected doc-unavailable, got {other:?}"),
    }

    // A document the peer made: offered with heads, it becomes a Concord document.
    let new_id = Uuid::new_v4();
    let new_document = document_id(new_id);
    let mut made = Replica::new();
    made.doc = Document::create(
        &json!({"made": "in the peer"}),
        Schema::default(),
        &meta("peer"),
    )
    .unwrap()
    .0;
    peer.sync(&new_document, &mut made, "sync").await;
    let (value, version) = s.get(&new_id.to_string()).await;
    assert_eq!(value, json!({"made": "in the peer"}));
    assert_eq!(version, made.doc.version().to_string());
    let read = s
        .send(s.request(Method::GET, &format!("/v1/docs/{new_id}")))
        .await
        .json();
    assert_eq!(read["strategy"], "crdt");
    assert_eq!(read["url"], format!("automerge:{new_document}"));
}

#[tokio::test]
async fn garbage_on_repo_is_closed_with_a_reason_and_others_keep_working() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"k": 1}})).await;
    let document = document_id(Uuid::parse_str(&id).unwrap());
    let mut good = RepoPeer::join(&s, "good").await;

    // Before join.
    let cases: Vec<(&str, Message, u16)> = vec![
        ("not CBOR", Message::binary(vec![0xff, 0x00, 0x13]), 1007),
        ("not a map", Message::binary(vec![0x83, 1, 2, 3]), 1007),
        (
            "a map without type",
            Message::binary(cbor_map(vec![("senderId", text("x"))])),
            1007,
        ),
        ("a text frame", Message::text("{\"type\":\"join\"}"), 1003),
        (
            "sync before join",
            Message::binary(cbor_map(vec![
                ("type", text("sync")),
                ("senderId", text("x")),
                ("documentId", text(&document)),
                ("data", Cbor::Bytes(b"\x42\x00\x00\x00\x00".to_vec())),
            ])),
            1008,
        ),
        (
            "an unsupported protocol version",
            Message::binary(cbor_map(vec![
                ("type", text("join")),
                ("senderId", text("x")),
                ("supportedProtocolVersions", Cbor::Array(vec![text("99")])),
            ])),
            1008,
        ),
    ];
    for (what, frame, code) in cases {
        let mut socket = connect(&s, "/v1/repo").await;
        socket.send(frame).await.unwrap();
        let (got, reason) = closed(&mut socket).await;
        assert_eq!(got, code, "{what}: {reason}");
        assert!(!reason.is_empty(), "{what}");
    }

    // After join, an invalid sync message: an error message, then the close frame.
    let mut bad = RepoPeer::join(&s, "bad").await;
    bad.send_sync("sync", &document, b"not a sync message")
        .await;
    match bad.receive().await {
        Incoming::Ignored { kind } => assert_eq!(kind, "error"),
        other => panic!("expected an error message, got {other:?}"),
    }
    let (code, reason) = closed(&mut bad.socket).await;
    assert_eq!(code, 1007, "{reason}");
    assert!(reason.contains(&document), "{reason}");

    // Unknown message types are ignored, and the good peer still syncs.
    let leave = cbor_map(vec![("type", text("leave")), ("senderId", text("good"))]);
    good.socket.send(Message::binary(leave)).await.unwrap();
    let mut replica = Replica::new();
    good.sync(&document, &mut replica, "request").await;
    assert_eq!(replica.doc.read(None).unwrap(), json!({"k": 1}));
    assert_eq!(s.get(&id).await.0, json!({"k": 1}), "unchanged");
}
