//! End-to-end tests of the limits (`concord_server::limits`): document size, JSON nesting,
//! body size, open connections, slow headers, slow bodies, slow handling, and live streams
//! outliving the handling timeout. WebSocket message size and rate limits are proved in
//! `live.rs` (`ws_bad_input_gets_errors_and_changes_nothing`,
//! `rate_limit_answers_errors_then_closes`); the live streams' own limits (pings and the
//! idle timeout, their share of the connections, the write timeout) in `streams.rs`.
//!
//! No test sleeps to wait for something: a timeout is configured tiny and its outcome is
//! asserted. Waits on the network are bounded only to turn a hang into a failure.

use std::time::Duration;

use concord_bench::memory::incompressible;
use concord_client::{ClientMessage, ServerMessage, Socket};
use concord_core::{Document, Schema, WriteMeta};
use concord_tests::ws::recv;
use concord_tests::{Reply, SseStream, TestServer, PATIENCE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn problem_kind(reply: &Reply, status: u16) -> String {
    let problem = reply.assert_problem(status);
    problem["type"]
        .as_str()
        .unwrap()
        .trim_start_matches("urn:concord:problem:")
        .to_owned()
}

async fn ws(s: &TestServer, id: &str) -> Socket {
    Socket::connect(&format!("ws://{}/v1/docs/{id}/ws", s.addr()))
        .await
        .expect("connects")
}

// --- document size ----------------------------------------------------------------------------

#[tokio::test]
async fn a_write_that_makes_a_document_too_large_is_refused_and_changes_nothing() {
    let s = TestServer::start_with(|c| c.limits.max_document_bytes = 1000).await;
    let (id, version) = s.create(json!({"value": {"notes": "small"}})).await;
    let before = s.raw(&id).await;
    let big = "x".repeat(1200);

    let put = s.put(&id, "a", &version, &json!({"notes": big})).await;
    assert_eq!(problem_kind(&put, 413), "document-too-large");
    let patch = json!([{"op": "add", "path": "/more", "value": big}]);
    let patched = s.patch(&id, "a", None, &patch).await;
    assert_eq!(problem_kind(&patched, 413), "document-too-large");
    let merge = s
        .send(
            s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                .header("content-type", "application/merge-patch+json")
                .body(json!({"more": big}).to_string()),
        )
        .await;
    assert_eq!(problem_kind(&merge, 413), "document-too-large");
    // Raw changes made by a CRDT client, from the document as it is.
    let meta = WriteMeta {
        agent: "crdt".into(),
        time_ms: 0,
        message: None,
    };
    let (mut replica, _) =
        Document::load(Schema::default(), None, std::slice::from_ref(&before)).unwrap();
    let base = replica.version();
    replica
        .put(None, &json!({"notes": "small", "more": big}), &meta)
        .unwrap();
    let changes = replica.changes_since(Some(&base)).unwrap();
    let posted = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("content-type", "application/octet-stream")
                .body(changes),
        )
        .await;
    assert_eq!(problem_kind(&posted, 413), "document-too-large");
    // Over the WebSocket.
    let mut socket = ws(&s, &id).await;
    socket
        .send(&ClientMessage::Put {
            id: json!(1),
            base: Some("*".into()),
            value: json!({"notes": big}),
            lock: None,
        })
        .await
        .unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!(
                (problem.status, problem.kind()),
                (413, "document-too-large")
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Nothing of it reached the document, in memory or on disk.
    assert_eq!(s.raw(&id).await, before);
    assert_eq!(
        s.get(&id).await,
        (json!({"notes": "small"}), version.clone())
    );

    // Writes that fit go on, from the same version; growing past the limit in steps is
    // refused at the step that crosses it.
    let chunk = "y".repeat(400);
    for (i, expected) in [(1, 200), (2, 200), (3, 413)] {
        let reply = s
            .patch(
                &id,
                "a",
                None,
                &json!([{"op": "add", "path": format!("/c{i}"), "value": chunk}]),
            )
            .await;
        assert_eq!(reply.status.as_u16(), expected, "chunk {i}");
    }
    let (value, _) = s.get(&id).await;
    assert!(value.get("c2").is_some() && value.get("c3").is_none());
    assert!(serde_json::to_vec(&value).unwrap().len() <= 1000);

    // A new document over the limit is not created.
    let listed = |reply: Reply| reply.json()["docs"].as_array().unwrap().len();
    let count = listed(s.send(s.request(Method::GET, "/v1/docs")).await);
    let created = s
        .send(
            s.request(Method::POST, "/v1/docs")
                .json(&json!({"value": {"notes": big}})),
        )
        .await;
    assert_eq!(problem_kind(&created, 413), "document-too-large");
    assert_eq!(
        listed(s.send(s.request(Method::GET, "/v1/docs")).await),
        count
    );
}

/// A restart keeps the configuration: the restarted server refuses the same too-large
/// write, and the document is as it was.
#[tokio::test]
async fn a_restarted_server_keeps_its_document_limit() {
    let mut s = TestServer::start_with(|c| c.limits.max_document_bytes = 1000).await;
    let (id, version) = s.create(json!({"value": {"notes": "small"}})).await;
    s.restart().await;
    let put = s
        .put(&id, "a", &version, &json!({"notes": "x".repeat(1200)}))
        .await;
    assert_eq!(problem_kind(&put, 413), "document-too-large");
    assert_eq!(s.get(&id).await, (json!({"notes": "small"}), version));
}

/// A document whose history holds the budget takes no more writes: each write replaces a
/// 4 KB value (the document stays small, its history grows), and once the history passes
/// 40 KB the next write is `413` `history-too-large` and changes nothing, over HTTP and
/// the WebSocket and after a restart; reads go on.
#[tokio::test]
async fn a_document_whose_history_holds_its_budget_takes_no_more_writes() {
    const BUDGET: u64 = 40_000;
    let mut s = TestServer::start_with(|c| c.limits.max_history_bytes = BUDGET).await;
    let (id, _) = s.create(json!({"value": {"notes": ""}})).await;
    let mut accepted = 0;
    let refused = loop {
        let value = incompressible(accepted, 4000);
        let reply = s
            .patch(
                &id,
                "a",
                None,
                &json!([{"op": "replace", "path": "/notes", "value": value}]),
            )
            .await;
        if reply.status.as_u16() != 200 {
            break reply;
        }
        accepted += 1;
        assert!(
            accepted <= 20,
            "40 KB of history took {accepted} 4 KB writes"
        );
    };
    assert_eq!(problem_kind(&refused, 413), "history-too-large");
    // Each write stores about 4 KB: the budget holds some nine of them, plus the one that
    // crossed it.
    assert!((8..=11).contains(&accepted), "{accepted} writes accepted");
    let (value, version) = s.get(&id).await;
    assert_eq!(value["notes"], incompressible(accepted - 1, 4000));
    let stored = s.raw(&id).await.len() as u64;
    assert!(
        (BUDGET..BUDGET + 5000).contains(&stored),
        "{stored} bytes stored"
    );
    // Over the WebSocket too.
    let mut socket = ws(&s, &id).await;
    socket
        .send(&ClientMessage::Put {
            id: json!(1),
            base: Some("*".into()),
            value: json!({"notes": "short"}),
            lock: None,
        })
        .await
        .unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!((problem.status, problem.kind()), (413, "history-too-large"))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A restart measures the stored history again, and refuses the same.
    s.restart().await;
    let put = s.put(&id, "a", &version, &json!({"notes": "short"})).await;
    assert_eq!(problem_kind(&put, 413), "history-too-large");
    assert_eq!(s.get(&id).await, (value.clone(), version));
    // Its value can start a new document, which takes writes.
    let (copy, _) = s.create(json!({ "value": value })).await;
    let reply = s
        .patch(
            &copy,
            "a",
            None,
            &json!([{"op": "replace", "path": "/notes", "value": "short"}]),
        )
        .await;
    assert_eq!(reply.status.as_u16(), 200);
}

// --- JSON nesting -----------------------------------------------------------------------------

/// `levels` objects nested in each other: `{"d":{"d":...1...}}`.
fn nested(levels: usize) -> String {
    format!("{}1{}", "{\"d\":".repeat(levels), "}".repeat(levels))
}

#[tokio::test]
async fn json_nests_at_most_127_levels_and_documents_at_most_120() {
    assert_eq!(concord_server::limits::MAX_JSON_NESTING, 127);
    assert_eq!(concord_core::value::MAX_DEPTH, 120);
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {}})).await;
    let put = |body: String| {
        s.request(Method::PUT, &format!("/v1/docs/{id}"))
            .header("if-match", "*")
            .header("content-type", "application/json")
            .body(body)
    };
    // The deepest document is stored and reads back (its answers stay within what JSON
    // parsers take); one level more is refused, unapplied.
    let reply = s.send(put(nested(120))).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let before = s.raw(&id).await;
    s.send(put(nested(121))).await.assert_problem(422);
    assert_eq!(s.raw(&id).await, before);
    // A body the parser refuses is a 400.
    let reply = s.send(put(nested(128))).await;
    let problem = reply.assert_problem(400);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("recursion limit"),
        "{problem}"
    );
    assert_eq!(s.raw(&id).await, before);

    // A document cannot be nested deeper by adding to it in steps either.
    let path = "/d".repeat(118);
    let value: Value = serde_json::from_str(&nested(5)).unwrap();
    let reply = s
        .patch(
            &id,
            "a",
            None,
            &json!([{"op": "add", "path": format!("{path}/e"), "value": value}]),
        )
        .await;
    reply.assert_problem(422);
    assert_eq!(s.raw(&id).await, before);

    // Over the WebSocket: an error, and the connection goes on.
    let (shallow, _) = s.create(json!({"value": {"n": 1}})).await;
    let unchanged = s.raw(&shallow).await;
    let mut socket = ws(&s, &shallow).await;
    let message = format!(
        r#"{{"type": "put", "id": 1, "base": "*", "value": {}}}"#,
        nested(200)
    );
    socket.send_text(message).await.unwrap();
    match recv(&mut socket).await {
        ServerMessage::Error(problem) => {
            assert_eq!(problem.status, 400);
            assert!(
                problem.detail.contains("recursion limit"),
                "{}",
                problem.detail
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Snapshot { .. }
    ));
    assert_eq!(s.raw(&shallow).await, unchanged);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_changes_nothing() {
    let s = TestServer::start_with(|c| c.body_limit = 1000).await;
    let (id, version) = s.create(json!({"value": {"n": 1}})).await;
    let before = s.raw(&id).await;
    let reply = s
        .put(&id, "a", &version, &json!({"n": "z".repeat(2000)}))
        .await;
    reply.assert_problem(413);
    assert_eq!(s.raw(&id).await, before);
}

// --- connections and slow clients, over raw TCP -------------------------------------------

async fn connect(s: &TestServer) -> TcpStream {
    TcpStream::connect(s.addr()).await.expect("connects")
}

/// Reads one response whose body has a Content-Length; returns head and body.
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if buffer.len() >= end + 4 + length {
                    let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]);
                    return (head, body.into_owned());
                }
            }
            let n = stream.read(&mut chunk).await.expect("reads");
            assert!(
                n > 0,
                "the connection ended before a whole response: {buffer:?}"
            );
            buffer.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("a response in time")
}

/// Everything the server sends until it closes the connection.
async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut buffer))
        .await
        .expect("the server closes the connection in time");
    // A reset after the close is the same outcome for the client.
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
const HEALTH_THEN_CLOSE: &[u8] =
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn excess_connections_are_answered_503_and_closed() {
    let s = TestServer::start_with(|c| c.limits.max_connections = 2).await;
    // Two connections, each answered once and kept open.
    let mut a = connect(&s).await;
    let mut b = connect(&s).await;
    for held in [&mut a, &mut b] {
        held.write_all(HEALTH).await.unwrap();
        assert!(read_response(held).await.0.starts_with("http/1.1 200"));
    }
    // The third is refused at once.
    let mut c = connect(&s).await;
    c.write_all(HEALTH).await.unwrap();
    let refused = read_to_close(&mut c).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("application/problem+json"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("too-many-connections"), "{refused}");
    // A held connection that ends gives its place back before the client sees the end...
    a.write_all(HEALTH_THEN_CLOSE).await.unwrap();
    assert!(read_to_close(&mut a).await.starts_with("HTTP/1.1 200"));
    // ...so the next one is served. It creates a document, over a connection that closes.
    let mut d = connect(&s).await;
    let body = r#"{"value": {"n": 1}}"#;
    let create = format!(
        "POST /v1/docs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    d.write_all(create.as_bytes()).await.unwrap();
    let created = read_to_close(&mut d).await;
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let id = created
        .split("\"id\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the new document's id")
        .to_owned();
    // A WebSocket holds its place for as long as it is open.
    let mut socket = ws(&s, &id).await;
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Snapshot { .. }
    ));
    let mut e = connect(&s).await;
    e.write_all(HEALTH).await.unwrap();
    assert!(read_to_close(&mut e).await.starts_with("HTTP/1.1 503"));
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_headers_is_dropped() {
    let s = TestServer::start_with(|c| c.limits.header_timeout = Duration::from_millis(100)).await;
    // Half a request head, then nothing.
    let mut slow = connect(&s).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_to_close(&mut slow).await,
        "",
        "no answer, only the close"
    );
    // A connection that never sends anything, and one idle after its first response.
    let mut silent = connect(&s).await;
    assert_eq!(read_to_close(&mut silent).await, "");
    let mut idle = connect(&s).await;
    idle.write_all(HEALTH).await.unwrap();
    assert!(read_response(&mut idle).await.0.starts_with("http/1.1 200"));
    assert_eq!(read_to_close(&mut idle).await, "");
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408() {
    let s = TestServer::start_with(|c| c.limits.request_timeout = Duration::from_millis(200)).await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let before = s.raw(&id).await;
    let mut slow = connect(&s).await;
    let head = format!(
        "PUT /v1/docs/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\nIf-Match: *\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"n\": "
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    let answer = read_to_close(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body-timeout"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(s.raw(&id).await, before);
}

#[tokio::test]
async fn a_request_not_handled_in_time_is_503() {
    let s = TestServer::start_with(|c| c.limits.request_timeout = Duration::from_millis(300)).await;
    let (id, _) = s.create(json!({"strategy": "lock"})).await;
    let lock = |body: Value| {
        s.request(Method::POST, &format!("/v1/docs/{id}/lock"))
            .json(&body)
    };
    assert_eq!(
        s.send(lock(json!({"ttl_ms": 60_000}))).await.status,
        StatusCode::OK
    );
    // Waiting for that lease takes longer than the server allows a request.
    let reply = s
        .send(lock(json!({"ttl_ms": 1000, "wait_ms": 30_000})))
        .await;
    assert_eq!(problem_kind(&reply, 503), "handling-timeout");
    assert_eq!(reply.header("retry-after").as_deref(), Some("1"));
}

#[tokio::test]
async fn live_streams_outlive_the_request_timeout() {
    let s = TestServer::start_with(|c| c.limits.request_timeout = Duration::from_millis(300)).await;
    let (id, _) = s.create(json!({"value": {"n": 0}})).await;
    let (locked, _) = s.create(json!({"strategy": "lock"})).await;
    let mut events = SseStream::open(&s, &format!("/v1/docs/{id}/events"), &[]).await;
    let first = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.event, "snapshot");
    let mut socket = ws(&s, &id).await;
    socket
        .send(&ClientMessage::Subscribe { since: None })
        .await
        .unwrap();
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Snapshot { .. }
    ));
    assert!(matches!(
        recv(&mut socket).await,
        ServerMessage::Subscribed { .. }
    ));
    // Once a request opened after both streams has been cut by the timeout, the streams
    // are older than the timeout.
    let lock = |body: Value| {
        s.request(Method::POST, &format!("/v1/docs/{locked}/lock"))
            .json(&body)
    };
    assert_eq!(
        s.send(lock(json!({"ttl_ms": 60_000}))).await.status,
        StatusCode::OK
    );
    let cut = s
        .send(lock(json!({"ttl_ms": 1000, "wait_ms": 30_000})))
        .await;
    assert_eq!(problem_kind(&cut, 503), "handling-timeout");
    // Both still deliver.
    let reply = s
        .patch(
            &id,
            "a",
            None,
            &json!([{"op": "replace", "path": "/n", "value": 1}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let change = tokio::time::timeout(PATIENCE, events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.event, "change");
    match recv(&mut socket).await {
        ServerMessage::Change(change) => assert_eq!(change.agent.as_deref(), Some("a")),
        other => panic!("expected the change, got {other:?}"),
    }
}
