//! End-to-end tests of sync for CRDT clients: `GET /v1/docs/{id}/sync` (binary Automerge
//! sync messages) with a Rust client that keeps its own Automerge replica, and `GET
//! /v1/repo` (the automerge-repo protocol) spoken by hand, message by message.
//!
//! Every wait is for a message the protocol promises; the timeout around it only turns a
//! hang into a failure.

use ciborium::Value as Cbor;
use concord_core::sync::{SyncMessage, SyncState};
use concord_core::{Document, Schema};
use concord_protocol::repo::{document_id, Incoming};
use concord_tests::sync::{cbor_map, field, text, Replica, RepoPeer};
use concord_tests::ws::{closed, connect, next};
use concord_tests::{meta, TestServer};
use futures_util::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};
use uuid::Uuid;

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

/// Joins `/v1/repo` as `id`, checking the server's `peer` answer: addressed to us, in
/// protocol version 1, with the server's peer id and a storage id.
async fn join(s: &TestServer, id: &str) -> RepoPeer {
    let (peer, answer) = RepoPeer::join(connect(s, "/v1/repo").await, id).await;
    assert_eq!(field(&answer, "type"), "peer");
    assert_eq!(field(&answer, "targetId"), id);
    assert_eq!(field(&answer, "selectedProtocolVersion"), "1");
    let metadata = answer
        .as_map()
        .unwrap()
        .iter()
        .find(|(k, _)| k.as_text() == Some("peerMetadata"))
        .unwrap()
        .1
        .clone();
    assert!(!field(&metadata, "storageId").is_empty());
    assert_eq!(peer.server, Some(field(&answer, "senderId")));
    peer
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

    let mut peer = join(&s, "rust-peer").await;

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
    let mut good = join(&s, "good").await;

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
    let mut bad = join(&s, "bad").await;
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
