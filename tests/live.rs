//! End-to-end tests of live sync: the WebSocket JSON protocol, Server-Sent Events, the
//! global feed, and the Rust client library, against the real server.

use concord_client::{
    Client, ClientError, CreateOptions, Event, Frame, ServerMessage, Socket, WriteOptions,
};
use concord_core::Strategy;
use concord_server::LiveConfig;
use concord_tests::ws::recv;
use concord_tests::{Proxy, SseStream, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers.

fn add(item: &str) -> Value {
    json!([{"op": "add", "path": "/items/-", "value": item}])
}

fn client(s: &TestServer, agent: &str) -> Client {
    Client::new(s.url(""), agent)
}

async fn create(s: &TestServer, value: Value) -> Uuid {
    let (id, _) = s.create(json!({ "value": value })).await;
    Uuid::parse_str(&id).unwrap()
}

/// The next close frame, counting the messages before it by type.
async fn recv_until_close(socket: &mut Socket) -> (Vec<ServerMessage>, u16, String) {
    let mut messages = Vec::new();
    loop {
        match socket.recv().await.expect("a frame") {
            Frame::Message(message) => messages.push(message),
            Frame::Close { code, reason } => return (messages, code, reason),
        }
    }
}

/// Subscribes a raw socket; returns the catch-up messages and the `subscribed` version.
async fn subscribe(socket: &mut Socket, since: Option<&str>) -> (Vec<ServerMessage>, String) {
    let mut message = json!({"type": "subscribe"});
    if let Some(since) = since {
        message["since"] = json!(since);
    }
    socket.send_text(message.to_string()).await.unwrap();
    let mut catchup = Vec::new();
    loop {
        match recv(socket).await {
            ServerMessage::Subscribed { version } => return (catchup, version),
            other => catchup.push(other),
        }
    }
}

fn change(message: ServerMessage) -> concord_client::Change {
    match message {
        ServerMessage::Change(change) => change,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn problem(message: ServerMessage) -> concord_client::Problem {
    match message {
        ServerMessage::Error(problem) => problem,
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn send_patch(socket: &mut Socket, id: &str, ops: Value) {
    let message = json!({"type": "patch", "id": id, "ops": ops});
    socket.send_text(message.to_string()).await.unwrap();
}

async fn items(s: &TestServer, id: Uuid) -> Vec<String> {
    serde_json::from_value(s.get(&id.to_string()).await.0["items"].clone()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests.

/// Two agents write over WebSocket in turns; each sees the other's changes, and an SSE
/// listener sees all of them, in order, with their agents.
#[tokio::test]
async fn two_agents_and_a_listener_see_each_others_edits() {
    let s = TestServer::start().await;
    let id = create(&s, json!({"items": []})).await;
    let (_, v1) = s.get(&id.to_string()).await;
    let mut a = client(&s, "agent-a").connect(id).await.unwrap();
    let mut b = client(&s, "agent-b").connect(id).await.unwrap();
    for socket in [&mut a, &mut b] {
        let (catchup, version) = subscribe(socket, None).await;
        assert_eq!(
            catchup,
            [ServerMessage::Snapshot {
                version: v1.clone(),
                value: json!({"items": []})
            }]
        );
        assert_eq!(version, v1);
    }
    let mut sse = SseStream::open(&s, &format!("/v1/docs/{id}/events"), &[]).await;
    let snapshot = sse.next().await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id.as_deref(), Some(v1.as_str()));
    assert_eq!(snapshot.json()["value"], json!({"items": []}));

    let mut previous = v1;
    for round in 0..4 {
        let (agent, writer, reader) = if round % 2 == 0 {
            ("agent-a", &mut a, &mut b)
        } else {
            ("agent-b", &mut b, &mut a)
        };
        let item = format!("{agent}-{round}");
        let msg_id = format!("w{round}");
        send_patch(writer, &msg_id, add(&item)).await;
        // The writer: its ack, then its change.
        let ack = match recv(writer).await {
            ServerMessage::Ack(ack) => ack,
            other => panic!("expected an ack, got {other:?}"),
        };
        assert_eq!((ack.id, ack.replayed), (json!(msg_id), false));
        let own = change(recv(writer).await);
        // The other agent and the listener: the same change.
        let seen = change(recv(reader).await);
        let heard = sse.next().await.unwrap();
        assert_eq!(heard.event, "change");
        assert_eq!(heard.id.as_deref(), Some(ack.version.as_str()));
        let heard: concord_client::Change = serde_json::from_value(heard.json()).unwrap();
        for c in [&own, &seen, &heard] {
            assert_eq!(c.version, ack.version);
            assert_eq!(c.previous, previous);
            assert_eq!(c.agent.as_deref(), Some(agent));
            assert_eq!(
                c.patch,
                json!([{"op": "add", "path": format!("/items/{round}"), "value": item}])
            );
            assert!(c.time_ms > 1_600_000_000_000);
        }
        previous = ack.version;
    }
    assert_eq!(
        items(&s, id).await,
        ["agent-a-0", "agent-b-1", "agent-a-2", "agent-b-3"]
    );
}

/// A client that reconnects with `since` receives exactly the changes it missed, then the
/// live ones: nothing missed, nothing twice.
#[tokio::test]
async fn reconnect_with_since_misses_nothing_and_duplicates_nothing() {
    let s = TestServer::start().await;
    let id = create(&s, json!({"items": []})).await;
    let agent = client(&s, "reader");
    let mut socket = agent.connect(id).await.unwrap();
    subscribe(&mut socket, None).await;
    let first = s.patch(&id.to_string(), "writer", None, &add("1")).await;
    let seen = change(recv(&mut socket).await);
    assert_eq!(seen.version, first.etag());
    socket.close().await.unwrap();

    // Written while the reader is away.
    let mut missed = Vec::new();
    for item in ["2", "3", "4"] {
        missed.push(
            s.patch(&id.to_string(), "writer", None, &add(item))
                .await
                .etag(),
        );
    }

    let mut socket = agent.connect(id).await.unwrap();
    let (catchup, version) = subscribe(&mut socket, Some(&seen.version)).await;
    let mut previous = seen.version.clone();
    let versions: Vec<String> = catchup
        .into_iter()
        .map(|message| {
            let c = change(message);
            assert_eq!(c.previous, previous);
            previous.clone_from(&c.version);
            c.version
        })
        .collect();
    assert_eq!(versions, missed);
    assert_eq!(&version, missed.last().unwrap());
    // The next message is the next change: nothing was sent twice.
    let next = s
        .patch(&id.to_string(), "writer", None, &add("5"))
        .await
        .etag();
    let c = change(recv(&mut socket).await);
    assert_eq!(
        (c.previous.as_str(), c.version.as_str()),
        (version.as_str(), next.as_str())
    );

    // Subscribing at the current version replays nothing.
    let mut socket = agent.connect(id).await.unwrap();
    let (catchup, version) = subscribe(&mut socket, Some(&next)).await;
    assert!(catchup.is_empty(), "{catchup:?}");
    assert_eq!(version, next);
}

/// The client library's subscription survives a network drop: it reconnects by itself,
/// resumes from the last version it delivered, and retries its unanswered write once.
#[tokio::test]
async fn client_subscription_resumes_after_a_network_drop() {
    let s = TestServer::start().await;
    let proxy = Proxy::start(s.addr()).await;
    let writer = client(&s, "writer");
    let doc = writer
        .create(&CreateOptions {
            value: Some(json!({"items": []})),
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    let watcher = Client::new(format!("http://{}", proxy.addr()), "watcher");
    let mut live = watcher.subscribe(doc.id, None).await.unwrap();
    assert_eq!(
        live.next().await.unwrap(),
        Event::Snapshot {
            version: doc.version.clone(),
            value: json!({"items": []})
        }
    );
    let one = writer
        .patch(doc.id, None, &add("1"), &WriteOptions::default())
        .await
        .unwrap();
    let Event::Change(c) = live.next().await.unwrap() else {
        panic!("expected a change")
    };
    assert_eq!(c.version, one.version);

    // The network drops; while it is down, the writer writes and the watcher writes too
    // (its write waits for the connection to come back).
    proxy.pause();
    proxy.cut();
    let mut expected = Vec::new();
    for item in ["2", "3"] {
        let written = writer
            .patch(doc.id, None, &add(item), &WriteOptions::default())
            .await
            .unwrap();
        expected.push((written.version, "writer".to_owned()));
    }
    let pending = {
        let writer = live.writer();
        tokio::spawn(async move { writer.patch(None, add("from the watcher")).await })
    };
    proxy.resume();

    let mut previous = one.version;
    for (version, agent) in &expected {
        let Event::Change(c) = live.next().await.unwrap() else {
            panic!("expected a change")
        };
        assert_eq!((&c.previous, &c.version), (&previous, version));
        assert_eq!(c.agent.as_deref(), Some(agent.as_str()));
        previous = c.version;
    }
    let ack = pending.await.unwrap().unwrap();
    assert!(!ack.replayed);
    let Event::Change(c) = live.next().await.unwrap() else {
        panic!("expected a change")
    };
    assert_eq!((&c.previous, &c.version), (&previous, &ack.version));
    assert_eq!(c.agent.as_deref(), Some("watcher"));
    assert_eq!(live.reconnects(), 1);
    assert_eq!(live.version().as_deref(), Some(ack.version.as_str()));
    assert_eq!(items(&s, doc.id).await, ["1", "2", "3", "from the watcher"]);
}

/// An SSE listener that comes back with `Last-Event-ID` receives exactly what it missed.
#[tokio::test]
async fn sse_resumes_with_last_event_id() {
    let s = TestServer::start().await;
    let id = create(&s, json!({"items": []})).await;
    let path = format!("/v1/docs/{id}/events");
    let mut sse = SseStream::open(&s, &path, &[]).await;
    assert_eq!(sse.next().await.unwrap().event, "snapshot");
    s.patch(&id.to_string(), "w", None, &add("1")).await;
    let last = sse.next().await.unwrap();
    assert_eq!(last.event, "change");
    drop(sse);

    let mut missed = Vec::new();
    for item in ["2", "3"] {
        missed.push(s.patch(&id.to_string(), "w", None, &add(item)).await.etag());
    }
    let last_id = last.id.unwrap();
    let mut sse = SseStream::open(&s, &path, &[("last-event-id", &last_id)]).await;
    let mut previous = last_id;
    for version in &missed {
        let event = sse.next().await.unwrap();
        assert_eq!(event.event, "change");
        assert_eq!(event.id.as_ref(), Some(version));
        assert_eq!(event.json()["previous"], json!(previous));
        previous.clone_from(version);
    }
    let next = s.patch(&id.to_string(), "w", None, &add("4")).await.etag();
    let event = sse.next().await.unwrap();
    assert_eq!(event.id.as_deref(), Some(next.as_str()));
    assert_eq!(event.json()["previous"], json!(previous));

    // `?since=` does the same for clients that cannot set headers.
    let mut sse = SseStream::open(&s, &format!("{path}?since={previous}"), &[]).await;
    assert_eq!(sse.next().await.unwrap().id.as_deref(), Some(next.as_str()));

    // A version the document never had, or a malformed one, is refused before streaming.
    let unknown = "ab".repeat(32);
    for (header, status) in [(unknown.as_str(), 404), ("nope", 400)] {
        let reply = s
            .send(
                s.request(Method::GET, &path)
                    .header("last-event-id", header),
            )
            .await;
        reply.assert_problem(status);
    }

    // Deleting the document ends the stream with a `deleted` event.
    let mut sse = SseStream::open(&s, &path, &[]).await;
    sse.next().await.unwrap();
    s.send(s.request(Method::DELETE, &format!("/v1/docs/{id}")))
        .await;
    let event = sse.next().await.unwrap();
    assert_eq!(event.event, "deleted");
    assert!(sse.next().await.is_none());
}

/// A write retried with the same message id is applied once, on the same connection or a
/// new one; the id belongs to its agent; the same id with another write is refused.
#[tokio::test]
async fn retried_ws_write_id_applies_once() {
    let s = TestServer::start().await;
    let id = create(&s, json!({"items": []})).await;
    let a = client(&s, "agent-a");
    let mut socket = a.connect(id).await.unwrap();
    let mut acks = Vec::new();
    for _ in 0..2 {
        send_patch(&mut socket, "w1", add("x")).await;
        acks.push(recv(&mut socket).await);
    }
    let mut again = a.connect(id).await.unwrap();
    send_patch(&mut again, "w1", add("x")).await;
    acks.push(recv(&mut again).await);
    let acks: Vec<_> = acks
        .into_iter()
        .map(|m| match m {
            ServerMessage::Ack(ack) => (ack.version, ack.replayed),
            other => panic!("expected an ack, got {other:?}"),
        })
        .collect();
    let version = acks[0].0.clone();
    assert_eq!(
        acks,
        [
            (version.clone(), false),
            (version.clone(), true),
            (version.clone(), true)
        ]
    );
    assert_eq!(items(&s, id).await, ["x"]);

    // The same id with another write: refused, nothing written.
    send_patch(&mut again, "w1", add("y")).await;
    let refused = problem(recv(&mut again).await);
    assert_eq!(
        (refused.status, refused.kind()),
        (422, "idempotency-key-reused")
    );
    assert_eq!(refused.id, Some(json!("w1")));

    // Another agent's "w1" is its own write.
    let mut b = client(&s, "agent-b").connect(id).await.unwrap();
    send_patch(&mut b, "w1", add("x")).await;
    let ServerMessage::Ack(ack) = recv(&mut b).await else {
        panic!("expected an ack")
    };
    assert!(!ack.replayed);
    assert_eq!(items(&s, id).await, ["x", "x"]);
}

enum Input {
    Text(String),
    Binary,
}

/// Every bad input is answered an error naming the problem; the document is unchanged, and
/// both that connection and another one keep working.
#[tokio::test]
async fn ws_bad_input_gets_errors_and_changes_nothing() {
    let s = TestServer::start_with(|config| config.live.max_message = 4096).await;
    let id = create(&s, json!({"items": [], "title": "t"})).await;
    let before = s.raw(&id.to_string()).await;
    let unknown = "ab".repeat(32);
    let text = |v: Value| Input::Text(v.to_string());
    let cases: Vec<(&str, Input, u16, &str, Option<Value>)> = vec![
        (
            "not JSON",
            Input::Text("{nope".into()),
            400,
            "invalid-message",
            None,
        ),
        (
            "not an object",
            text(json!([1, 2])),
            400,
            "invalid-message",
            None,
        ),
        (
            "no type",
            text(json!({"id": "n1"})),
            400,
            "invalid-message",
            Some(json!("n1")),
        ),
        (
            "unknown type",
            text(json!({"type": "jump", "id": 7})),
            400,
            "invalid-message",
            Some(json!(7)),
        ),
        (
            "unknown field",
            text(json!({"type": "patch", "id": "u1", "ops": [], "bse": "x"})),
            400,
            "invalid-message",
            Some(json!("u1")),
        ),
        (
            "no id",
            text(json!({"type": "patch", "ops": add("z")})),
            400,
            "invalid-message",
            None,
        ),
        (
            "bad id",
            text(json!({"type": "patch", "id": {"a": 1}, "ops": add("z")})),
            400,
            "invalid-message",
            None,
        ),
        (
            "empty id",
            text(json!({"type": "patch", "id": "", "ops": add("z")})),
            400,
            "invalid-message",
            None,
        ),
        (
            "malformed since",
            text(json!({"type": "subscribe", "since": "zz"})),
            400,
            "invalid-version",
            None,
        ),
        (
            "unknown since",
            text(json!({"type": "subscribe", "since": unknown})),
            404,
            "unknown-version",
            None,
        ),
        (
            "unknown op",
            text(json!({"type": "patch", "id": "p1", "ops": [{"op": "frob", "path": "/a"}]})),
            400,
            "invalid-patch",
            Some(json!("p1")),
        ),
        (
            "ops not a list",
            text(json!({"type": "patch", "id": "p2", "ops": {"op": "add"}})),
            400,
            "invalid-patch",
            Some(json!("p2")),
        ),
        (
            "missing path",
            text(
                json!({"type": "patch", "id": "p3", "ops": [{"op": "remove", "path": "/nothing"}]}),
            ),
            409,
            "path-not-found",
            Some(json!("p3")),
        ),
        (
            "failed test",
            text(
                json!({"type": "patch", "id": "p4", "ops": [{"op": "test", "path": "/title", "value": "u"}, {"op": "add", "path": "/items/-", "value": 1}]}),
            ),
            409,
            "test-failed",
            Some(json!("p4")),
        ),
        (
            "malformed base",
            text(json!({"type": "patch", "id": "p5", "base": "nope", "ops": add("z")})),
            400,
            "invalid-version",
            Some(json!("p5")),
        ),
        (
            "unknown base",
            text(json!({"type": "patch", "id": "p6", "base": unknown, "ops": add("z")})),
            412,
            "unknown-version",
            Some(json!("p6")),
        ),
        (
            "put without base",
            text(json!({"type": "put", "id": "p7", "value": {"items": []}})),
            428,
            "if-match-required",
            Some(json!("p7")),
        ),
        (
            "put of a list",
            text(json!({"type": "put", "id": "p8", "base": "*", "value": [1]})),
            422,
            "invalid-value",
            Some(json!("p8")),
        ),
        (
            "bad lock token",
            text(json!({"type": "patch", "id": "p9", "lock": "abc", "ops": add("z")})),
            400,
            "invalid-lock-token",
            Some(json!("p9")),
        ),
        ("binary", Input::Binary, 415, "unsupported-message", None),
        (
            "too large",
            text(json!({"type": "patch", "id": "p10", "ops": add(&"z".repeat(5000))})),
            413,
            "message-too-large",
            None,
        ),
    ];
    let mut bad = client(&s, "bad").connect(id).await.unwrap();
    let mut good = client(&s, "good").connect(id).await.unwrap();
    subscribe(&mut good, None).await;
    for (name, input, status, kind, echoed) in cases {
        match input {
            Input::Text(text) => bad.send_text(text).await.unwrap(),
            Input::Binary => bad.send_binary(vec![0, 1, 2]).await.unwrap(),
        }
        let p = problem(recv(&mut bad).await);
        assert_eq!((p.status, p.kind()), (status, kind), "{name}: {}", p.detail);
        assert_eq!(p.id, echoed, "{name}");
        assert!(!p.title.is_empty() && !p.detail.is_empty(), "{name}");
    }
    assert_eq!(s.raw(&id.to_string()).await, before);

    // Both connections still work; the subscriber saw nothing but these writes.
    send_patch(&mut good, "g1", add("good")).await;
    assert!(matches!(recv(&mut good).await, ServerMessage::Ack(_)));
    send_patch(&mut bad, "b1", add("bad")).await;
    assert!(matches!(recv(&mut bad).await, ServerMessage::Ack(_)));
    assert_eq!(change(recv(&mut good).await).agent.as_deref(), Some("good"));
    assert_eq!(change(recv(&mut good).await).agent.as_deref(), Some("bad"));

    // A stale base on an optimistic document names the current version.
    let (opt, v1) = s
        .create(json!({"value": {"items": []}, "strategy": "optimistic"}))
        .await;
    let opt = Uuid::parse_str(&opt).unwrap();
    let mut socket = client(&s, "o").connect(opt).await.unwrap();
    let ops = add("o");
    socket
        .send_text(json!({"type": "patch", "id": 1, "base": v1, "ops": ops}).to_string())
        .await
        .unwrap();
    let ServerMessage::Ack(ack) = recv(&mut socket).await else {
        panic!("expected an ack")
    };
    socket
        .send_text(json!({"type": "patch", "id": 2, "base": v1, "ops": ops}).to_string())
        .await
        .unwrap();
    let stale = problem(recv(&mut socket).await);
    assert_eq!((stale.status, stale.kind()), (412, "stale-version"));
    assert_eq!(stale.version, Some(ack.version));
}

/// An unknown document, and a document deleted under a connection, end it with an error
/// and a close frame saying why.
#[tokio::test]
async fn ws_unknown_and_deleted_documents_close_with_a_reason() {
    let s = TestServer::start().await;
    let agent = client(&s, "a");
    let mut socket = agent.connect(Uuid::new_v4()).await.unwrap();
    let (messages, code, reason) = recv_until_close(&mut socket).await;
    assert_eq!(problem(messages[0].clone()).status, 404);
    assert_eq!(code, 4404, "{reason}");
    // The client library reports it as the problem.
    let refused = agent.subscribe(Uuid::new_v4(), None).await.err().unwrap();
    assert_eq!(refused.status(), Some(404));

    let id = create(&s, json!({"items": []})).await;
    let mut subscriber = agent.connect(id).await.unwrap();
    subscribe(&mut subscriber, None).await;
    let mut writer = agent.connect(id).await.unwrap();
    let reply = s
        .send(s.request(Method::DELETE, &format!("/v1/docs/{id}")))
        .await;
    assert_eq!(reply.status.as_u16(), 204);
    let (messages, code, _) = recv_until_close(&mut subscriber).await;
    let gone = problem(messages[0].clone());
    assert_eq!((gone.status, gone.kind()), (410, "deleted"));
    assert_eq!(code, 4410);

    send_patch(&mut writer, "late", add("late")).await;
    let (messages, code, _) = recv_until_close(&mut writer).await;
    let refused = problem(messages[0].clone());
    assert_eq!((refused.status, refused.id), (404, Some(json!("late"))));
    assert_eq!(code, 4404);
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}")))
        .await;
    reply.assert_problem(404);
}

/// The global feed reports every create, change and delete.
#[tokio::test]
async fn global_feed_reports_create_change_delete() {
    let s = TestServer::start().await;
    let mut feed = SseStream::open(&s, "/v1/events", &[]).await;
    let maker = client(&s, "maker");
    let doc = maker
        .create(&CreateOptions {
            strategy: Some(Strategy::Lww),
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    let created = feed.next().await.unwrap();
    assert_eq!(created.event, "created");
    let data = created.json();
    assert_eq!(
        (
            &data["id"],
            &data["version"],
            &data["agent"],
            &data["strategy"]
        ),
        (
            &json!(doc.id),
            &json!(doc.version),
            &json!("maker"),
            &json!("lww")
        )
    );
    let written = maker
        .put(doc.id, "*", &json!({"a": 1}), &WriteOptions::default())
        .await
        .unwrap();
    let changed = feed.next().await.unwrap();
    assert_eq!(changed.event, "changed");
    let data = changed.json();
    assert_eq!(data["version"], json!(written.version));
    assert_eq!(data["agent"], json!("maker"));
    assert_eq!(
        (data["changes"].as_u64(), data["new_changes"].as_u64()),
        (Some(2), Some(1))
    );
    assert!(data["time_ms"].as_i64().unwrap() > 1_600_000_000_000);
    maker.delete(doc.id).await.unwrap();
    let deleted = feed.next().await.unwrap();
    assert_eq!(deleted.event, "deleted");
    assert_eq!(deleted.json()["id"], json!(doc.id));
}

/// Messages beyond the burst are refused with errors, not processed; a connection that keeps
/// going is closed with a reason; other connections are unaffected.
#[tokio::test]
async fn rate_limit_answers_errors_then_closes() {
    let s = TestServer::start_with(|config| {
        config.live = LiveConfig {
            rate_burst: 5,
            rate_per_sec: 0.0,
            max_refused: 3,
            ..LiveConfig::default()
        }
    })
    .await;
    let id = create(&s, json!({"items": []})).await;
    let mut flood = client(&s, "flood").connect(id).await.unwrap();
    for n in 0..12 {
        send_patch(&mut flood, &format!("m{n}"), add(&n.to_string())).await;
    }
    let (messages, code, reason) = recv_until_close(&mut flood).await;
    let acks = messages
        .iter()
        .filter(|m| matches!(m, ServerMessage::Ack(_)))
        .count();
    let refused: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            ServerMessage::Error(p) => Some((p.status, p.id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(acks, 5);
    assert_eq!(
        refused,
        [
            (429, Some(json!("m5"))),
            (429, Some(json!("m6"))),
            (429, Some(json!("m7")))
        ]
    );
    assert_eq!(code, 1008);
    assert!(reason.contains("rate limit"), "{reason}");
    assert_eq!(items(&s, id).await, ["0", "1", "2", "3", "4"]);

    let mut other = client(&s, "calm").connect(id).await.unwrap();
    send_patch(&mut other, "c1", add("calm")).await;
    assert!(matches!(recv(&mut other).await, ServerMessage::Ack(_)));
}

/// Every HTTP call of the client library, and its typed errors.
#[tokio::test]
async fn client_library_round_trip() {
    let s = TestServer::start().await;
    let c = client(&s, "agent-c");
    let doc = c
        .create(&CreateOptions {
            value: Some(json!({"notes": "hello", "count": 1, "items": []})),
            text: vec!["/notes".into()],
            counters: vec!["/count".into()],
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(doc.strategy, Strategy::Crdt);
    let read = c.get(doc.id).await.unwrap();
    assert_eq!((&read.version, &read.value), (&doc.version, &doc.value));

    let put = c
        .put(
            doc.id,
            &doc.version,
            &json!({"notes": "hello world", "count": 1, "items": []}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let patched = c
        .patch(
            doc.id,
            Some(&doc.version),
            &json!([{"op": "increment", "path": "/count", "value": 2}]),
            &WriteOptions::key("inc-1"),
        )
        .await
        .unwrap();
    // A retry with the same key is the same write.
    let retried = c
        .patch(
            doc.id,
            Some(&doc.version),
            &json!([{"op": "increment", "path": "/count", "value": 2}]),
            &WriteOptions::key("inc-1"),
        )
        .await
        .unwrap();
    assert_eq!(retried.version, patched.version);
    let merged = c
        .merge_patch(
            doc.id,
            None,
            &json!({"title": "T"}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        merged.value,
        json!({"notes": "hello world", "count": 3, "items": [], "title": "T"})
    );
    assert_ne!(put.version, merged.version);
    assert_eq!(
        c.get_at(doc.id, &doc.version).await.unwrap().value,
        doc.value
    );
    let history = c.history(doc.id).await.unwrap();
    assert_eq!(history.version, merged.version);
    assert_eq!(history.changes.len(), 4);
    assert!(history
        .changes
        .iter()
        .all(|h| h.agent.as_deref() == Some("agent-c")));
    assert_eq!(merged.new_changes, Some(1));
    assert_eq!(read.new_changes, None, "reads say nothing of changes");

    // A minimal answer: the version and the count, not the value.
    let minimal = c
        .patch(
            doc.id,
            Some(&merged.version),
            &json!([{"op": "replace", "path": "/title", "value": "U"}]),
            &WriteOptions::default().minimal_answer(),
        )
        .await
        .unwrap();
    assert_eq!(
        (&minimal.value, minimal.new_changes),
        (&Value::Null, Some(1))
    );
    let now = c.get(doc.id).await.unwrap();
    assert_eq!(now.version, minimal.version);
    assert_eq!(now.value["title"], "U");
    let created = c
        .create(&CreateOptions {
            value: Some(json!({"big": "x".repeat(1000)})),
            minimal: true,
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    assert_eq!(created.value, Value::Null);
    assert_eq!(c.get(created.id).await.unwrap().version, created.version);

    // A stale base on an optimistic document: 412 with the current version.
    let opt = c
        .create(&CreateOptions {
            strategy: Some(Strategy::Optimistic),
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    let now = c
        .put(
            opt.id,
            &opt.version,
            &json!({"a": 1}),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let stale = c
        .put(
            opt.id,
            &opt.version,
            &json!({"a": 2}),
            &WriteOptions::default(),
        )
        .await
        .unwrap_err();
    let p = stale.problem().expect("a problem");
    assert_eq!((p.status, p.kind()), (412, "stale-version"));
    assert_eq!(p.version.as_ref(), Some(&now.version));

    // Lock, write with the token, unlock.
    let locked = c
        .create(&CreateOptions {
            strategy: Some(Strategy::Lock),
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    let lease = c.lock(locked.id, 10_000, 0).await.unwrap();
    let refused = c
        .put(locked.id, "*", &json!({"a": 1}), &WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(428));
    c.put(
        locked.id,
        "*",
        &json!({"a": 1}),
        &WriteOptions::default().with_lock(&lease.token),
    )
    .await
    .unwrap();
    c.unlock(locked.id, &lease.token).await.unwrap();
    // Over the WebSocket, the token travels in the message.
    let lease = c.lock(locked.id, 10_000, 0).await.unwrap();
    let live = c.subscribe(locked.id, None).await.unwrap();
    let ack = live
        .send(
            concord_client::Write::patch(json!([{"op": "add", "path": "/b", "value": 2}]))
                .lock(&lease.token),
        )
        .await
        .unwrap();
    assert_eq!(c.get(locked.id).await.unwrap().version, ack.version);
    let refused = live
        .patch(None, json!([{"op": "add", "path": "/c", "value": 3}]))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(428));

    // Fork, edit the fork, merge it back.
    let branches = c
        .create(&CreateOptions {
            value: Some(json!({"items": []})),
            strategy: Some(Strategy::Branches),
            ..CreateOptions::default()
        })
        .await
        .unwrap();
    let fork = c.fork(branches.id).await.unwrap();
    c.patch(fork.id, None, &add("forked"), &WriteOptions::default())
        .await
        .unwrap();
    let merged = c
        .merge(branches.id, fork.id, &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(merged.value, json!({"items": ["forked"]}));

    // Delete; then it is not found.
    c.delete(doc.id).await.unwrap();
    let missing = c.get(doc.id).await.unwrap_err();
    assert_eq!(missing.problem().map(|p| p.kind()), Some("not-found"));
    assert!(matches!(missing, ClientError::Problem(_)));
    // A server that is not there is a transport error.
    let nowhere = Client::new("http://127.0.0.1:1", "x")
        .get(doc.id)
        .await
        .unwrap_err();
    assert!(matches!(nowhere, ClientError::Http(_)), "{nowhere}");
}

/// Browsers cannot set headers: `?agent=` names the agent; a bad one is refused at the
/// upgrade with a problem.
#[tokio::test]
async fn agent_from_the_query_string() {
    let s = TestServer::start().await;
    let id = create(&s, json!({"items": []})).await;
    let url = format!("ws://{}/v1/docs/{id}/ws", s.addr());
    let mut socket = Socket::connect(&format!("{url}?agent=browser-tab"))
        .await
        .unwrap();
    subscribe(&mut socket, None).await;
    send_patch(&mut socket, "b1", add("from a tab")).await;
    assert!(matches!(recv(&mut socket).await, ServerMessage::Ack(_)));
    assert_eq!(
        change(recv(&mut socket).await).agent.as_deref(),
        Some("browser-tab")
    );
    for bad in ["?agent=", "?agent=%00", "?who=x"] {
        let refused = Socket::connect(&format!("{url}{bad}")).await.err().unwrap();
        assert_eq!(refused.status(), Some(400), "{bad}: {refused}");
    }
    let refused = Socket::connect(&format!("ws://{}/v1/docs/nope/ws", s.addr()))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.problem().map(|p| p.kind()), Some("invalid-id"));
}

/// A graceful shutdown ends live connections with a reason instead of waiting on them:
/// every kind of WebSocket, and the event streams.
#[tokio::test]
async fn shutdown_closes_live_connections() {
    let mut s = TestServer::start().await;
    let id = create(&s, json!({})).await;
    let mut socket = client(&s, "a").connect(id).await.unwrap();
    subscribe(&mut socket, None).await;
    let mut sync = concord_tests::ws::connect(&s, &format!("/v1/docs/{id}/sync")).await;
    let _hello = concord_tests::ws::next(&mut sync)
        .await
        .expect("the first sync message");
    let mut repo = concord_tests::ws::connect(&s, "/v1/repo").await;
    let mut sse = SseStream::open(&s, &format!("/v1/docs/{id}/events"), &[]).await;
    sse.next().await.unwrap();
    let mut feed = SseStream::open(&s, "/v1/events", &[]).await;
    s.restart().await;
    let (messages, code, reason) = recv_until_close(&mut socket).await;
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(code, 1001);
    assert!(reason.contains("shutting down"), "{reason}");
    for raw in [&mut sync, &mut repo] {
        let (code, reason) = concord_tests::ws::closed(raw).await;
        assert_eq!(code, 1001, "{reason}");
        assert!(reason.contains("shutting down"), "{reason}");
    }
    assert!(sse.next().await.is_none());
    assert!(feed.next().await.is_none());
}
