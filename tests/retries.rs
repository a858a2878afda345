//! Exact retries over HTTP: a write retried 1 to 3 times leaves exactly the state of one
//! delivery, on every endpoint that takes an `Idempotency-Key` (create, PUT, PATCH, merge
//! patch, raw changes, fork, merge), and raw changes are idempotent by hash even without a
//! key. A retry while the first request is in flight is 409; with another body, 422; a
//! key past its time to live is forgotten. (Retries over WebSocket: `tests/live.rs`,
//! `retried_ws_write_id_applies_once`; duplicated sync messages: `tests/sync.rs`,
//! `duplicated_sync_messages_are_harmless`; retries after a crash: `tests/crash.rs`.)

use std::sync::Arc;
use std::time::Duration;

use concord_server::{Config, Server};
use concord_tests::{Reply, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

/// A keyed request, sent as many times as asked.
struct Keyed<'a> {
    s: &'a TestServer,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Keyed<'_> {
    async fn send(&self) -> Reply {
        let mut request = self
            .s
            .request(self.method.clone(), &self.path)
            .body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        self.s.send(request).await
    }
}

/// Everything a retry could change: every document's raw changes, and the list.
async fn state(s: &TestServer) -> Vec<Vec<u8>> {
    let list = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    let mut ids: Vec<String> = list["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut out = vec![ids.join(",").into_bytes()];
    for id in &ids {
        out.push(s.raw(id).await);
    }
    out
}

#[tokio::test]
async fn http_retries_leave_the_state_of_one_delivery() {
    let s = TestServer::start().await;
    let (id, v1) = s
        .create(
            json!({"value": {"l": ["a"], "n": 0, "t": "x"}, "text": ["/t"], "counters": ["/n"]}),
        )
        .await;
    let (branch, _) = s
        .create(json!({"value": {"notes": []}, "strategy": "branches"}))
        .await;
    let fork = s
        .send(s.request(Method::POST, &format!("/v1/docs/{branch}/fork")))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.patch(
        &fork,
        "f",
        None,
        &json!([{"op": "add", "path": "/notes/-", "value": "from the fork"}]),
    )
    .await;
    // A change made elsewhere, for the raw-changes endpoint.
    let elsewhere = {
        let mut replica = concord_core::Document::empty(concord_core::Schema::default()).unwrap();
        replica.apply_changes(&s.raw(&id).await).unwrap();
        let ops =
            concord_core::patch::parse_patch(&json!([{"op": "add", "path": "/raw", "value": 1}]))
                .unwrap();
        let meta = concord_core::WriteMeta {
            agent: "r".into(),
            time_ms: 0,
            message: None,
        };
        replica.patch(None, &ops, &meta).unwrap().changes[0]
            .raw_bytes()
            .to_vec()
    };
    let json = |key: &str| {
        vec![
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", key.to_owned()),
        ]
    };
    let cases: Vec<(&str, Keyed)> = vec![
        ("create", Keyed { s: &s, method: Method::POST, path: "/v1/docs".into(), headers: json("k-create"), body: json!({"value": {"made": 1}}).to_string().into() }),
        ("patch", Keyed {
            s: &s,
            method: Method::PATCH,
            path: format!("/v1/docs/{id}"),
            headers: vec![("content-type", "application/json-patch+json".into()), ("idempotency-key", "k-patch".into())],
            body: json!([{"op": "add", "path": "/l/-", "value": "p"}, {"op": "increment", "path": "/n", "value": 5}, {"op": "splice", "path": "/t", "pos": 0, "insert": "y"}]).to_string().into(),
        }),
        ("merge patch", Keyed {
            s: &s,
            method: Method::PATCH,
            path: format!("/v1/docs/{id}"),
            headers: vec![("content-type", "application/merge-patch+json".into()), ("idempotency-key", "k-merge-patch".into())],
            body: json!({"m": {"deep": true}}).to_string().into(),
        }),
        ("stale put", Keyed {
            s: &s,
            method: Method::PUT,
            path: format!("/v1/docs/{id}"),
            headers: vec![("content-type", "application/json".into()), ("if-match", format!("\"{v1}\"")), ("idempotency-key", "k-put".into())],
            body: json!({"l": ["a", "q"], "n": 3, "t": "x!"}).to_string().into(),
        }),
        ("raw changes", Keyed {
            s: &s,
            method: Method::POST,
            path: format!("/v1/docs/{id}/changes"),
            headers: vec![("content-type", "application/octet-stream".into()), ("idempotency-key", "k-raw".into())],
            body: elsewhere,
        }),
        ("fork", Keyed { s: &s, method: Method::POST, path: format!("/v1/docs/{branch}/fork"), headers: vec![("idempotency-key", "k-fork".into())], body: Vec::new() }),
        ("merge", Keyed { s: &s, method: Method::POST, path: format!("/v1/docs/{branch}/merge"), headers: json("k-merge"), body: json!({"fork": fork}).to_string().into() }),
    ];
    for (name, request) in &cases {
        let first = request.send().await;
        assert!(first.status.is_success(), "{name}: {:?}", first.json());
        let once = state(&s).await;
        for retry in 1..=3 {
            let again = request.send().await;
            assert_eq!(again.status, first.status, "{name}: retry {retry}");
            assert_eq!(
                again.bytes, first.bytes,
                "{name}: retry {retry} answers the first response"
            );
            assert_eq!(
                again.header("idempotent-replayed").as_deref(),
                Some("true"),
                "{name}"
            );
            assert_eq!(
                state(&s).await,
                once,
                "{name}: retry {retry} changed the store"
            );
        }
    }
    let value = s.get(&id).await.0;
    assert_eq!(
        value["n"], 8,
        "one increment of 5 and one PUT's +3: {value}"
    );
    let mut items: Vec<String> = serde_json::from_value(value["l"].clone()).unwrap();
    items.sort();
    assert_eq!(items, ["a", "p", "q"], "{value}");
    assert_eq!(value["t"], "yx!", "{value}");
}

#[tokio::test]
async fn the_same_raw_change_posted_again_applies_once() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"k": 0}})).await;
    let mut replica = concord_core::Document::empty(concord_core::Schema::default()).unwrap();
    replica.apply_changes(&s.raw(&id).await).unwrap();
    let ops =
        concord_core::patch::parse_patch(&json!([{"op": "replace", "path": "/k", "value": 1}]))
            .unwrap();
    let meta = concord_core::WriteMeta {
        agent: "r".into(),
        time_ms: 0,
        message: None,
    };
    let change = replica.patch(None, &ops, &meta).unwrap().changes[0]
        .raw_bytes()
        .to_vec();
    let post = |body: Vec<u8>| {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("content-type", "application/octet-stream")
                .body(body),
        )
    };
    let first = post(change.clone()).await;
    assert_eq!(first.json()["new_changes"], 1);
    let once = state(&s).await;
    // Posted again, and twice within one body: nothing new.
    for body in [
        change.clone(),
        change.clone(),
        [change.clone(), change.clone()].concat(),
    ] {
        let again = post(body).await;
        assert_eq!(again.status, 200);
        assert_eq!(again.json()["new_changes"], 0);
        assert_eq!(again.etag(), first.etag());
        assert_eq!(state(&s).await, once);
    }
    assert_eq!(s.get(&id).await.0, json!({"k": 1}));
}

/// A server of our own (not `TestServer`), to reach its registry.
async fn own_server(ttl: Duration) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().to_path_buf(),
        idempotency_ttl: ttl,
        ..Config::default()
    };
    (Server::start(config).await.unwrap(), dir)
}

async fn create(client: &reqwest::Client, base: &str) -> String {
    let reply: Value = client
        .post(format!("{base}/v1/docs"))
        .json(&json!({"value": {"l": []}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["id"].as_str().unwrap().to_owned()
}

async fn append(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    key: &str,
    mark: &str,
) -> (u16, Value) {
    let response = client
        .patch(format!("{base}/v1/docs/{id}"))
        .header("content-type", "application/json-patch+json")
        .header("idempotency-key", key)
        .body(json!([{"op": "add", "path": "/l/-", "value": mark}]).to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn marks(client: &reqwest::Client, base: &str, id: &str) -> Vec<String> {
    let reply: Value = client
        .get(format!("{base}/v1/docs/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    serde_json::from_value(reply["value"]["l"].clone()).unwrap()
}

/// The first request is held in flight (its document's lock is taken from inside the
/// server), so that the retry meets it: 409, and once the first answers, a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_while_the_first_is_in_flight_is_409() {
    let (server, _dir) = own_server(Duration::from_secs(3600)).await;
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let id = create(&client, &base).await;
    let uuid: uuid::Uuid = id.parse().unwrap();

    // Hold the document's write lock until told to let go.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let state = Arc::clone(server.state());
    let holder = tokio::spawn(async move {
        state
            .registry
            .update::<_, concord_server::registry::Error>(uuid, move |_| {
                locked.send(()).unwrap();
                // Blocks this worker thread; the server runs on the others.
                released.recv().unwrap();
                Ok(())
            })
            .await
    });
    tokio::task::spawn_blocking(move || is_locked.recv().unwrap())
        .await
        .unwrap();

    let mut first = tokio::spawn({
        let (client, base, id) = (client.clone(), base.clone(), id.clone());
        async move { append(&client, &base, &id, "k", "once").await }
    });
    let mut second = tokio::spawn({
        let (client, base, id) = (client.clone(), base.clone(), id.clone());
        async move { append(&client, &base, &id, "k", "once").await }
    });
    // Neither write can finish while the lock is held: whichever answers first is the one
    // that met the other in flight.
    let (answered, waiting) = tokio::select! {
        a = &mut first => (a.unwrap(), second),
        b = &mut second => (b.unwrap(), first),
    };
    assert_eq!(answered.0, 409, "{}", answered.1);
    assert_eq!(
        answered.1["type"],
        "urn:concord:problem:idempotency-key-in-flight"
    );
    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Now a retry is a replay, and the write happened once.
    let (status, again) = append(&client, &base, &id, "k", "once").await;
    assert_eq!((status, &again), (200, &body));
    assert_eq!(marks(&client, &base, &id).await, ["once"]);
    server.shutdown().await.unwrap();
}

/// Many concurrent retries of one keyed write: exactly one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_with_one_key_apply_once() {
    let (server, _dir) = own_server(Duration::from_secs(3600)).await;
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let id = create(&client, &base).await;
    let mut tasks = tokio::task::JoinSet::new();
    for key in 0..30 {
        for _ in 0..6 {
            let (client, base, id) = (client.clone(), base.clone(), id.clone());
            tasks.spawn(async move {
                let mark = format!("mark-{key}");
                // 409 means "the first is still in flight": retry until it answers.
                for _ in 0..1000 {
                    let (status, body) = append(&client, &base, &id, &mark, &mark).await;
                    match status {
                        200 => return,
                        409 => tokio::task::yield_now().await,
                        other => panic!("{other}: {body}"),
                    }
                }
                panic!("{mark}: still in flight after 1000 tries");
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let mut marks = marks(&client, &base, &id).await;
    marks.sort();
    let mut expected: Vec<String> = (0..30).map(|k| format!("mark-{k}")).collect();
    expected.sort();
    assert_eq!(marks, expected, "each keyed write applied exactly once");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_key_past_its_time_to_live_is_forgotten() {
    let (server, _dir) = own_server(Duration::ZERO).await;
    let base = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let id = create(&client, &base).await;
    assert_eq!(append(&client, &base, &id, "k", "m").await.0, 200);
    // Forgotten at once: the same key is a new request.
    assert_eq!(append(&client, &base, &id, "k", "m").await.0, 200);
    assert_eq!(marks(&client, &base, &id).await, ["m", "m"]);
    server.shutdown().await.unwrap();
}
