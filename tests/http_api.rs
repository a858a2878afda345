//! End-to-end tests of the HTTP API: the real server on 127.0.0.1:0 with a temporary data
//! folder, driven over HTTP.

use std::sync::Arc;

use concord_core::{Document, Schema};
use concord_server::registry::Tuning;
use concord_tests::sync::Replica;
use concord_tests::ws::connect_with;
use concord_tests::{foreign_change, meta, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// The lost-update scenario: A reads at v1, B reads at v1, B writes, A writes from its stale
/// copy. Both items survive and the history names both agents.
#[tokio::test]
async fn seed_scenario_keeps_both_writes() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"items": []}})).await;
    let (a_copy, a_version) = s.get(&id).await; // A reads at T=1
    let (b_copy, b_version) = s.get(&id).await; // B reads at T=2
    assert_eq!((a_copy.clone(), &a_version), (b_copy.clone(), &v1));

    let mut b_edit = b_copy;
    b_edit["items"] = json!(["B's finding"]);
    let reply = s.put(&id, "agent-b", &b_version, &b_edit).await; // B writes at T=4
    assert_eq!(reply.status, StatusCode::OK);

    let mut a_edit = a_copy;
    a_edit["items"] = json!(["A's finding"]);
    let reply = s.put(&id, "agent-a", &a_version, &a_edit).await; // A writes at T=5
    assert_eq!(reply.status, StatusCode::OK);
    let merged = reply.json()["value"]["items"].clone();
    let mut items: Vec<String> = serde_json::from_value(merged).unwrap();
    items.sort();
    assert_eq!(items, ["A's finding", "B's finding"]);
    assert_eq!(reply.etag(), reply.json()["version"].as_str().unwrap());

    let history = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}/history")))
        .await
        .json();
    let agents: Vec<&str> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["agent"].as_str())
        .collect();
    assert!(
        agents.contains(&"agent-a") && agents.contains(&"agent-b"),
        "{agents:?}"
    );
    assert!(history["changes"][1]["time"].as_i64().unwrap() > 1_600_000_000);
}

/// Many agents write at once, all from the same stale version.
async fn concurrent_from_stale_base(
    s: &Arc<TestServer>,
    create: Value,
    n: usize,
    edit: impl Fn(usize, &mut Value),
) -> Value {
    let (id, v1) = s.create(create).await;
    let (base, _) = s.get(&id).await;
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let mut value = base.clone();
        edit(i, &mut value);
        let (s, id, v1) = (Arc::clone(s), id.clone(), v1.clone());
        tasks.spawn(async move {
            let reply = s.put(&id, &format!("agent-{i}"), &v1, &value).await;
            assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    s.get(&id).await.0
}

#[tokio::test]
async fn concurrent_stale_writes_all_survive() {
    let s = Arc::new(TestServer::start().await);
    const N: usize = 12;

    let lists = concurrent_from_stale_base(&s, json!({"value": {"l": ["seed"]}}), N, |i, v| {
        v["l"].as_array_mut().unwrap().push(json!(i));
    })
    .await;
    let l = lists["l"].as_array().unwrap();
    assert_eq!(l.len(), N + 1);
    assert_eq!(l[0], "seed");
    for i in 0..N {
        assert!(l.contains(&json!(i)), "item {i} lost: {l:?}");
    }

    let maps = concurrent_from_stale_base(&s, json!({"value": {"m": {}}}), N, |i, v| {
        v["m"][format!("k{i}")] = json!(i);
    })
    .await;
    assert_eq!(maps["m"].as_object().unwrap().len(), N);

    let counters = concurrent_from_stale_base(
        &s,
        json!({"value": {"n": 10}, "counters": ["/n"]}),
        N,
        |i, v| v["n"] = json!(10 + i as i64 + 1),
    )
    .await;
    assert_eq!(counters["n"], json!(10 + (1..=N as i64).sum::<i64>()));

    let texts = concurrent_from_stale_base(
        &s,
        json!({"value": {"t": "|"}, "text": ["/t"]}),
        N,
        |i, v| v["t"] = json!(format!("|{}", char::from(b'a' + i as u8))),
    )
    .await;
    let t = texts["t"].as_str().unwrap();
    assert_eq!(t.len(), N + 1);
    for i in 0..N {
        assert!(t.contains(char::from(b'a' + i as u8)), "{t}");
    }
}

#[tokio::test]
async fn same_field_conflict_keeps_both_values() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"title": "draft"}})).await;
    s.put(&id, "alice", &v1, &json!({"title": "Alice's"})).await;
    s.put(&id, "bob", &v1, &json!({"title": "Bob's"})).await;
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}?conflicts=true")))
        .await
        .json();
    let shown = reply["value"]["title"].clone();
    let conflict = &reply["conflicts"][0];
    assert_eq!(conflict["path"], "/title");
    let values = conflict["values"].as_array().unwrap();
    assert_eq!(values.len(), 2);
    assert_eq!(values[0]["value"], shown);
    let mut pairs: Vec<(String, String)> = values
        .iter()
        .map(|v| {
            (
                v["value"].as_str().unwrap().to_owned(),
                v["agent"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    pairs.sort();
    assert_eq!(
        pairs,
        [
            ("Alice's".into(), "alice".into()),
            ("Bob's".into(), "bob".into())
        ]
    );
    // Without the flag, no conflicts key.
    let plain = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}")))
        .await
        .json();
    assert!(plain.get("conflicts").is_none());
}

#[tokio::test]
async fn idempotency_key_applies_once() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"l": []}})).await;
    let send = |body: Value, key: &str| {
        s.send(
            s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                .header("content-type", "application/json-patch+json")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
    };
    let append = json!([{"op": "add", "path": "/l/-", "value": "once"}]);
    let first = send(append.clone(), "key-1").await;
    assert_eq!(first.status, StatusCode::OK);
    for _ in 0..3 {
        let retry = send(append.clone(), "key-1").await;
        assert_eq!(retry.status, StatusCode::OK);
        assert_eq!(retry.bytes, first.bytes, "the first response is replayed");
        assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
        assert_eq!(retry.etag(), first.etag());
    }
    assert_eq!(s.get(&id).await.0, json!({"l": ["once"]}));
    // The same key with another body is refused, and applies nothing.
    let other = send(
        json!([{"op": "add", "path": "/l/-", "value": "twice"}]),
        "key-1",
    )
    .await;
    other.assert_problem(422);
    assert_eq!(s.get(&id).await.0, json!({"l": ["once"]}));

    // PUT and create honour keys too.
    let put = || {
        s.send(
            s.request(Method::PUT, &format!("/v1/docs/{id}"))
                .header("if-match", format!("\"{v1}\""))
                .header("idempotency-key", "key-put")
                .json(&json!({"l": ["p"]})),
        )
    };
    let (a, b) = (put().await, put().await);
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(a.bytes, b.bytes);
    let create = || {
        s.send(
            s.request(Method::POST, "/v1/docs")
                .header("idempotency-key", "key-create")
                .json(&json!({"value": {"x": 1}})),
        )
    };
    let (a, b) = (create().await, create().await);
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(a.json()["id"], b.json()["id"]);
    assert_eq!(a.header("location"), b.header("location"));
    let docs = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    assert_eq!(
        docs["docs"].as_array().unwrap().len(),
        2,
        "one create, not two"
    );

    // Keys survive a restart.
    let mut s = s;
    s.restart().await;
    let retry = s
        .send(
            s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                .header("content-type", "application/json-patch+json")
                .header("idempotency-key", "key-1")
                .body(append.to_string()),
        )
        .await;
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
}

#[tokio::test]
async fn restart_keeps_every_acknowledged_write() {
    let mut s = TestServer::start().await;
    let (id, _) = s
        .create(json!({"value": {"log": [], "t": ""}, "text": ["/t"], "counters": ["/n"]}))
        .await;
    let mut expected = Vec::new();
    for i in 0..25 {
        let reply = s
            .patch(
                &id,
                "writer",
                None,
                &json!([
                    {"op": "add", "path": "/log/-", "value": format!("mark-{i}")},
                    {"op": "increment", "path": "/n", "value": 1},
                    {"op": "splice", "path": "/t", "pos": i, "insert": "x"}
                ]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        expected.push(json!(format!("mark-{i}")));
    }
    let (before, version) = s.get(&id).await;
    let history = s.raw(&id).await;
    s.restart().await;
    let (after, version_after) = s.get(&id).await;
    assert_eq!(after, before);
    assert_eq!(after["log"], Value::Array(expected));
    assert_eq!(after["n"], 25);
    assert_eq!(after["t"], "x".repeat(25));
    assert_eq!(version_after, version);
    assert_eq!(s.raw(&id).await, history, "the same changes, byte for byte");
    // And it still takes writes and merges after the restart.
    let reply = s
        .put(&id, "late", &version, &json!({"log": [], "t": "", "n": 0}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn reads_at_versions_and_paths() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"a": {"b": [1, 2]}}})).await;
    let v2 = s
        .patch(
            &id,
            "x",
            None,
            &json!([{"op": "add", "path": "/a/b/-", "value": 3}]),
        )
        .await
        .etag();
    let at = |v: &str, extra: &str| {
        s.send(s.request(Method::GET, &format!("/v1/docs/{id}?at={v}{extra}")))
    };
    let old = at(&v1, "").await;
    assert_eq!(old.json()["value"], json!({"a": {"b": [1, 2]}}));
    assert_eq!(old.etag(), v1);
    assert_eq!(
        at(&v2, "&path=/a/b").await.json()["value"],
        json!([1, 2, 3])
    );
    assert_eq!(at(&v1, "&path=/a/b/1").await.json()["value"], json!(2));
    at(&v1, "&path=/a/b/2").await.assert_problem(404);
    // Raw changes since v1 are exactly the one change made after it.
    let since = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}/changes?since={v1}")))
        .await;
    assert!(!since.bytes.is_empty());
    let all = s.raw(&id).await;
    assert!(all.len() > since.bytes.len());
}

/// `GET …/changes` sends a long history a batch at a time: what arrives is every change,
/// loadable as the document, and a write made while it streams is not in it.
#[tokio::test]
async fn the_changes_stream_whole_in_batches() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"notes": ""}})).await;
    let mut versions = Vec::new();
    for seed in 0..6 {
        let (_, base) = s.get(&id).await;
        let notes = concord_bench::memory::incompressible(seed, 400_000);
        let reply = s.put(&id, "w", &base, &json!({"notes": notes})).await;
        assert_eq!(reply.status, StatusCode::OK);
        versions.push(reply.etag());
    }
    let all = s.raw(&id).await;
    assert!(
        all.len() > 2 << 20,
        "{} bytes: more than two batches",
        all.len()
    );
    let (doc, _) = Document::load(Schema::default(), None, std::slice::from_ref(&all)).unwrap();
    assert_eq!(doc.read(None).unwrap(), s.get(&id).await.0);
    assert_eq!(doc.version().to_string(), versions[5]);

    // Since a version: the changes after it, the tail of the whole (one writer, one order).
    let since = s
        .send(s.request(
            Method::GET,
            &format!("/v1/docs/{id}/changes?since={}", versions[2]),
        ))
        .await;
    assert_eq!(since.etag(), versions[5]);
    assert!(!since.bytes.is_empty() && all.ends_with(&since.bytes));
    assert!(since.bytes.len() < all.len());

    // A write while the answer streams: the answer is the changes as the request found them.
    let mut streaming = s
        .request(Method::GET, &format!("/v1/docs/{id}/changes"))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);
    let reply = s
        .put(&id, "w", &versions[5], &json!({"notes": "later"}))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut body = Vec::new();
    while let Some(chunk) = streaming.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
    }
    assert_eq!(body, all);
    assert!(s.raw(&id).await.len() > all.len());
}

#[tokio::test]
async fn lists_reconcile_shrink_grow_and_reorder() {
    let s = TestServer::start().await;
    let (id, _) = s
        .create(json!({"value": {"l": ["a", "b", "c", "d"]}}))
        .await;
    for target in [
        json!(["a"]),
        json!(["a", "b", "c"]),
        json!(["c", "a", "b"]),
        json!([]),
        json!([{"x": 1}, "y", ["z"]]),
    ] {
        let (_, v) = s.get(&id).await;
        let reply = s.put(&id, "w", &v, &json!({"l": target})).await;
        assert_eq!(reply.json()["value"]["l"], target);
        assert_eq!(s.get(&id).await.0["l"], target);
    }
}

#[tokio::test]
async fn raw_changes_round_trip_and_are_idempotent() {
    let s = TestServer::start().await;
    let (source, _) = s.create(json!({"value": {"k": "v"}})).await;
    let (target, _) = s.create(json!({"value": {}})).await;
    // Applying a document's full history to another merges it in, once.
    let bytes = s.raw(&source).await;
    let post = || {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{target}/changes"))
                .header("content-type", "application/octet-stream")
                .body(bytes.clone()),
        )
    };
    let first = post().await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["new_changes"], 1);
    assert_eq!(first.json()["value"], json!({"k": "v"}));
    let second = post().await;
    assert_eq!(second.json()["new_changes"], 0);
    assert_eq!(second.etag(), first.etag());
}

#[tokio::test]
async fn merge_patch_and_json_patch_with_base() {
    let s = TestServer::start().await;
    let (id, v1) = s
        .create(json!({"value": {"l": ["a", "b"], "o": {"x": 1}}}))
        .await;
    s.patch(
        &id,
        "p",
        None,
        &json!([{"op": "add", "path": "/l/0", "value": "z"}]),
    )
    .await;
    // Index 1 means "b" as of v1, even though "z" was inserted since.
    let reply = s
        .patch(
            &id,
            "q",
            Some(&v1),
            &json!([{"op": "remove", "path": "/l/1"}]),
        )
        .await;
    assert_eq!(reply.json()["value"]["l"], json!(["z", "a"]));
    let merged = s
        .send(
            s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"o": {"x": null, "y": 2}}"#),
        )
        .await;
    assert_eq!(merged.json()["value"]["o"], json!({"y": 2}));
}

#[tokio::test]
async fn strategies_lww_and_optimistic() {
    let s = TestServer::start().await;
    // lww: the stale write replaces B's work.
    let (id, v1) = s
        .create(json!({"value": {"items": []}, "strategy": "lww"}))
        .await;
    s.put(&id, "B", &v1, &json!({"items": ["b"]})).await;
    s.put(&id, "A", &v1, &json!({"items": ["a"]})).await;
    assert_eq!(s.get(&id).await.0, json!({"items": ["a"]}));

    // optimistic: the stale write is refused with 412 and the current ETag.
    let (id, v1) = s
        .create(json!({"value": {"items": []}, "strategy": "optimistic"}))
        .await;
    let b = s.put(&id, "B", &v1, &json!({"items": ["b"]})).await;
    assert_eq!(b.status, StatusCode::OK);
    let a = s.put(&id, "A", &v1, &json!({"items": ["a"]})).await;
    a.assert_problem(412);
    assert_eq!(a.etag(), b.etag());
    let (current, v2) = s.get(&id).await;
    let mut retry = current;
    retry["items"].as_array_mut().unwrap().push(json!("a"));
    assert_eq!(s.put(&id, "A", &v2, &retry).await.status, StatusCode::OK);
    assert_eq!(s.get(&id).await.0, json!({"items": ["b", "a"]}));
    // Raw changes would bypass the policy.
    let raw = s.raw(&id).await;
    s.send(
        s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
            .header("content-type", "application/octet-stream")
            .body(raw),
    )
    .await
    .assert_problem(409);
}

#[tokio::test]
async fn list_delete_and_health() {
    let s = TestServer::start().await;
    let health = s.send(s.request(Method::GET, "/healthz")).await;
    assert_eq!(health.json(), json!({"status": "ok"}));
    let (a, _) = s.create(json!({})).await;
    let (b, _) = s
        .create(json!({"id": "0d6f3f3c-3b8e-4c43-9a55-7f1c1c9e2a10", "strategy": "lww"}))
        .await;
    assert_eq!(b, "0d6f3f3c-3b8e-4c43-9a55-7f1c1c9e2a10");
    let list = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    let docs = list["docs"].as_array().unwrap();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["id"], a);
    assert_eq!(docs[1]["strategy"], "lww");
    assert_eq!(docs[0]["changes"], 1);
    // The same id again is a conflict.
    s.send(s.request(Method::POST, "/v1/docs").json(&json!({"id": b})))
        .await
        .assert_problem(409);
    let deleted = s
        .send(s.request(Method::DELETE, &format!("/v1/docs/{a}")))
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    s.send(s.request(Method::GET, &format!("/v1/docs/{a}")))
        .await
        .assert_problem(404);
    s.send(s.request(Method::DELETE, &format!("/v1/docs/{a}")))
        .await
        .assert_problem(404);
    let list = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    assert_eq!(list["docs"].as_array().unwrap().len(), 1);
}

/// The list streams from the store page by page (500 documents a page): more than a page
/// lists every document once, in creation order, as one JSON body.
#[tokio::test]
async fn the_list_streams_every_document_once() {
    let s = TestServer::start().await;
    let mut created = Vec::new();
    for _ in 0..1_101 {
        created.push(s.create(json!({})).await.0);
    }
    let list = s.send(s.request(Method::GET, "/v1/docs")).await;
    assert_eq!(list.status, StatusCode::OK);
    let listed: Vec<String> = list.json()["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, created);
}

#[tokio::test]
async fn lock_strategy_fences_a_paused_holder() {
    let s = TestServer::start().await;
    let (id, _) = s
        .create(json!({"value": {"items": []}, "strategy": "lock"}))
        .await;
    let lock = |body: Value, agent: &str| {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{id}/lock"))
                .header("concord-agent", agent.to_owned())
                .json(&body),
        )
    };
    let write = |token: &str, item: &str| {
        // The holder of each token is the agent named in its item ("A's late write").
        let agent = item[..1].to_owned();
        s.send(
            s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                .header("content-type", "application/json-patch+json")
                .header("concord-agent", agent)
                .header("concord-lock", token.to_owned())
                .body(json!([{"op": "add", "path": "/items/-", "value": item}]).to_string()),
        )
    };
    // Writing without a lease is refused.
    s.patch(
        &id,
        "x",
        None,
        &json!([{"op": "add", "path": "/items/-", "value": 0}]),
    )
    .await
    .assert_problem(428);
    // A takes a 1 ms lease and "pauses" past it.
    let a = lock(json!({"ttl_ms": 1}), "A").await.json();
    let a_token = a["token"].as_str().unwrap().to_owned();
    // B waits for the lease to lapse (it is expired already or within 1 ms) and takes it.
    let b = lock(json!({"ttl_ms": 60000, "wait_ms": 5000}), "B")
        .await
        .json();
    let b_token = b["token"].as_str().unwrap().to_owned();
    assert!(b_token.parse::<u64>().unwrap() > a_token.parse::<u64>().unwrap());
    // A wakes up and writes with its old token: fenced.
    write(&a_token, "A's late write").await.assert_problem(409);
    // B writes.
    assert_eq!(write(&b_token, "B's write").await.status, StatusCode::OK);
    // C cannot take the lock while B holds it (no wait) and is told to retry.
    let c = lock(json!({"ttl_ms": 1000}), "C").await;
    c.assert_problem(423);
    assert!(c.header("retry-after").is_some());
    // B releases; C gets it at once.
    let released = s
        .send(
            s.request(Method::DELETE, &format!("/v1/docs/{id}/lock"))
                .header("concord-agent", "B")
                .header("concord-lock", b_token.clone()),
        )
        .await;
    assert_eq!(released.status, StatusCode::NO_CONTENT);
    assert_eq!(
        lock(json!({"ttl_ms": 1000}), "C").await.status,
        StatusCode::OK
    );
    write(&b_token, "B again").await.assert_problem(409);
    assert_eq!(s.get(&id).await.0, json!({"items": ["B's write"]}));
}

/// A lease is bound to the agent that took it (here, without authentication, its
/// `Concord-Agent`): another agent holding nothing, that knows the holder's token, can
/// neither write with it nor release it, and no refusal (nor the answer to its own lock
/// request) shows the holder's token.
#[tokio::test]
async fn a_lease_token_is_no_key_for_another_agent() {
    let s = TestServer::start().await;
    let (id, _) = s
        .create(json!({"value": {"items": []}, "strategy": "lock"}))
        .await;
    let lock_path = format!("/v1/docs/{id}/lock");
    let as_agent = |request: reqwest::RequestBuilder, agent: Option<&str>| match agent {
        Some(agent) => request.header("concord-agent", agent.to_owned()),
        None => request,
    };
    let write = |agent: Option<&str>, token: &str, item: &str| {
        let request = s
            .request(Method::PATCH, &format!("/v1/docs/{id}"))
            .header("content-type", "application/json-patch+json")
            .header("concord-lock", token.to_owned())
            .body(json!([{"op": "add", "path": "/items/-", "value": item}]).to_string());
        s.send(as_agent(request, agent))
    };
    let release = |agent: Option<&str>, token: &str| {
        let request = s
            .request(Method::DELETE, &lock_path)
            .header("concord-lock", token.to_owned());
        s.send(as_agent(request, agent))
    };
    let taken = s
        .send(
            s.request(Method::POST, &lock_path)
                .header("concord-agent", "agent-a")
                .json(&json!({"ttl_ms": 60000})),
        )
        .await;
    assert_eq!(taken.status, StatusCode::OK, "{:?}", taken.json());
    let token = taken.json()["token"].as_str().unwrap().to_owned();
    let shows_token = |reply: &concord_tests::Reply| {
        String::from_utf8_lossy(&reply.bytes).contains(&token)
            || reply
                .headers
                .values()
                .any(|v| v.to_str().unwrap_or_default().contains(&token))
    };
    // agent-b, and an agent that names nobody, hold nothing.
    for other in [Some("agent-b"), None] {
        let refused = write(other, &token, "not theirs").await;
        assert_eq!(
            refused.assert_problem(409)["type"],
            "urn:concord:problem:fenced"
        );
        assert!(!shows_token(&refused), "{other:?}: {:?}", refused.json());
        let refused = release(other, &token).await;
        assert_eq!(
            refused.assert_problem(409)["type"],
            "urn:concord:problem:fenced"
        );
        assert!(!shows_token(&refused), "{other:?}: {:?}", refused.json());
        // A made-up token does not learn the holder's either.
        for guess in ["0", "1"] {
            let refused = write(other, guess, "a guess").await;
            refused.assert_problem(409);
            assert!(!shows_token(&refused), "{other:?}: {:?}", refused.json());
        }
        let held = s
            .send(as_agent(
                s.request(Method::POST, &lock_path)
                    .json(&json!({"ttl_ms": 1000})),
                other,
            ))
            .await;
        held.assert_problem(423);
        assert!(!shows_token(&held), "{other:?}: {:?}", held.json());
    }
    assert_eq!(s.get(&id).await.0, json!({"items": []}));
    // The holder still writes with it, and releases it.
    assert_eq!(
        write(Some("agent-a"), &token, "A's").await.status,
        StatusCode::OK
    );
    assert_eq!(
        release(Some("agent-a"), &token).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(s.get(&id).await.0, json!({"items": ["A's"]}));
}

#[tokio::test]
async fn a_waiting_lock_request_gets_the_lease_on_release() {
    let s = Arc::new(TestServer::start().await);
    let (id, _) = s.create(json!({"strategy": "lock"})).await;
    let path = format!("/v1/docs/{id}/lock");
    let first = s
        .send(
            s.request(Method::POST, &path)
                .json(&json!({"ttl_ms": 60000})),
        )
        .await
        .json();
    let token = first["token"].as_str().unwrap().to_owned();
    let waiter = {
        let (s, path) = (Arc::clone(&s), path.clone());
        tokio::spawn(async move {
            s.send(
                s.request(Method::POST, &path)
                    .json(&json!({"ttl_ms": 1000, "wait_ms": 30000})),
            )
            .await
        })
    };
    // Release; the waiter (whether it started waiting yet or not) gets the lease.
    s.send(
        s.request(Method::DELETE, &path)
            .header("concord-lock", token),
    )
    .await;
    let got = waiter.await.unwrap();
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.json());
}

#[tokio::test]
async fn queue_strategy_takes_intents_only() {
    let s = TestServer::start().await;
    let (id, v1) = s
        .create(json!({"value": {"n": 0}, "strategy": "queue", "counters": ["/n"]}))
        .await;
    s.put(&id, "x", &v1, &json!({"n": 5}))
        .await
        .assert_problem(409);
    s.patch(
        &id,
        "x",
        Some(&v1),
        &json!([{"op": "increment", "path": "/n", "value": 1}]),
    )
    .await
    .assert_problem(409);
    for _ in 0..3 {
        let reply = s
            .patch(
                &id,
                "x",
                None,
                &json!([{"op": "increment", "path": "/n", "value": 1}]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(s.get(&id).await.0, json!({"n": 3}));
}

#[tokio::test]
async fn branches_fork_edit_and_merge() {
    let s = TestServer::start().await;
    let (main, v1) = s
        .create(json!({"value": {"notes": []}, "strategy": "branches"}))
        .await;
    s.put(&main, "x", &v1, &json!({"notes": ["direct"]}))
        .await
        .assert_problem(409);
    let fork = |agent: &str| {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{main}/fork"))
                .header("concord-agent", agent.to_owned()),
        )
    };
    let a = fork("A").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let a = a.json()["id"].as_str().unwrap().to_owned();
    let b = fork("B").await.json()["id"].as_str().unwrap().to_owned();
    for (fork, note) in [(&a, "from A"), (&b, "from B")] {
        let (_, v) = s.get(fork).await;
        assert_eq!(
            s.put(fork, note, &v, &json!({"notes": [note]}))
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        s.get(&main).await.0,
        json!({"notes": []}),
        "isolated until merged"
    );
    let merge = |fork: &str| {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{main}/merge"))
                .json(&json!({"fork": fork})),
        )
    };
    assert_eq!(merge(&a).await.status, StatusCode::OK);
    let merged = merge(&b).await.json();
    let mut notes: Vec<String> = serde_json::from_value(merged["value"]["notes"].clone()).unwrap();
    notes.sort();
    assert_eq!(notes, ["from A", "from B"]);
    // A document that is not a fork cannot be merged.
    let (stranger, _) = s.create(json!({})).await;
    merge(&stranger).await.assert_problem(409);
    merge("00000000-0000-4000-8000-000000000000")
        .await
        .assert_problem(422);
}

/// `If-Match` uses strong comparison (RFC 9110): a weak tag never matches, so an
/// `If-Match` of weak tags only is a failed precondition wherever `If-Match` is evaluated,
/// and nothing is written.
#[tokio::test]
async fn weak_if_match_never_matches() {
    let s = TestServer::start().await;
    for strategy in ["crdt", "optimistic", "lww"] {
        let (id, v1) = s
            .create(json!({"value": {"n": 1}, "strategy": strategy}))
            .await;
        let before = s.raw(&id).await;
        let put = |tag: String| {
            s.send(
                s.request(Method::PUT, &format!("/v1/docs/{id}"))
                    .header("if-match", tag)
                    .json(&json!({"n": 2})),
            )
        };
        for tag in [format!("W/\"{v1}\""), format!("W/\"{v1}\", W/\"{v1}\"")] {
            let reply = put(tag).await;
            if strategy == "lww" {
                // Last-writer-wins ignores If-Match.
                assert_eq!(reply.status, StatusCode::OK, "{strategy}");
                continue;
            }
            let problem = reply.assert_problem(412);
            assert_eq!(
                problem["type"], "urn:concord:problem:weak-etag",
                "{strategy}"
            );
            assert_eq!(reply.etag(), v1, "{strategy}: the current ETag");
            assert_eq!(s.raw(&id).await, before, "{strategy}: nothing written");
        }
        if strategy != "lww" {
            // A patch too; and a weak tag beside a strong one is just ignored.
            let weak_patch = s
                .send(
                    s.request(Method::PATCH, &format!("/v1/docs/{id}"))
                        .header("content-type", "application/json-patch+json")
                        .header("if-match", format!("W/\"{v1}\""))
                        .body(r#"[{"op": "replace", "path": "/n", "value": 3}]"#),
                )
                .await;
            weak_patch.assert_problem(412);
            assert_eq!(s.raw(&id).await, before, "{strategy}: nothing written");
            let reply = put(format!("W/\"{v1}\", \"{v1}\"")).await;
            assert_eq!(reply.status, StatusCode::OK, "{strategy}");
            assert_eq!(s.get(&id).await.0, json!({"n": 2}));
        }
    }
}

/// A list of entity tags matches if any strong tag does: an optimistic write passes when
/// the list names the current version, and is refused (412) when it does not. Several
/// `If-Match` lines are one list.
#[tokio::test]
async fn if_match_list_matches_any_listed_version() {
    let s = TestServer::start().await;
    let (id, v1) = s
        .create(json!({"value": {"n": 0}, "strategy": "optimistic"}))
        .await;
    let v2 = s.put(&id, "a", &v1, &json!({"n": 1})).await.etag();
    let v3 = s.put(&id, "a", &v2, &json!({"n": 2})).await.etag();
    let put = |lines: Vec<String>, n: i64| {
        let mut request = s.request(Method::PUT, &format!("/v1/docs/{id}"));
        for line in lines {
            request = request.header("if-match", line);
        }
        s.send(request.json(&json!({"n": n})))
    };
    // Without the current version: refused with the current ETag.
    let refused = put(vec![format!("\"{v1}\", \"{v2}\"")], 10).await;
    let problem = refused.assert_problem(412);
    assert_eq!(problem["type"], "urn:concord:problem:stale-version");
    assert_eq!(refused.etag(), v3);
    let refused = put(vec![format!("\"{v1}\""), format!("\"{v2}\"")], 10).await;
    refused.assert_problem(412);
    assert_eq!(s.get(&id).await, (json!({"n": 2}), v3.clone()));

    // With it, in one line or on a second line, first or last: written.
    let v4 = put(vec![format!("\"{v1}\", \"{v3}\"")], 3).await;
    assert_eq!(v4.status, StatusCode::OK, "{:?}", v4.json());
    let v4 = v4.etag();
    let v5 = put(vec![format!("\"{v4}\""), format!("\"{v1}\"")], 4).await;
    assert_eq!(v5.status, StatusCode::OK, "{:?}", v5.json());
    let v5 = v5.etag();
    let v6 = put(
        vec![format!("\"{v2}\""), format!("W/\"{v1}\", \"{v5}\"")],
        5,
    )
    .await;
    assert_eq!(v6.status, StatusCode::OK, "{:?}", v6.json());
    assert_eq!(s.get(&id).await.0, json!({"n": 5}));
}

/// On a crdt document a list's base is the current version if the list names it, else
/// the first strong tag listed.
#[tokio::test]
async fn crdt_if_match_list_picks_its_base() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"items": []}})).await;
    let v2 = s.put(&id, "b", &v1, &json!({"items": ["b"]})).await.etag();
    let put = |tags: String| {
        s.send(
            s.request(Method::PUT, &format!("/v1/docs/{id}"))
                .header("concord-agent", "a")
                .header("if-match", tags)
                .json(&json!({"items": ["a"]})),
        )
    };
    // The current version is listed (second): the write is made at it, so it replaces "b".
    let reply = put(format!("\"{v1}\", \"{v2}\"")).await;
    assert_eq!(reply.json()["value"], json!({"items": ["a"]}));
    let v3 = reply.etag();
    // Not listed: the first strong tag (v1) is the base, and "a" is added to what is there.
    let reply = s
        .send(
            s.request(Method::PUT, &format!("/v1/docs/{id}"))
                .header("if-match", format!("W/\"{v3}\", \"{v1}\", \"{v2}\""))
                .json(&json!({"items": ["c"]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.json());
    let items = reply.json()["value"]["items"].clone();
    let mut sorted: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_str().unwrap())
        .collect();
    sorted.sort_unstable();
    assert_eq!(sorted, ["a", "c"], "made at v1: {items}");
}

/// Entity tags must be quoted; an unquoted or unterminated one is a 400 problem, and the
/// document is unchanged. Query parameters keep taking a bare version.
#[tokio::test]
async fn unquoted_if_match_is_refused() {
    let s = TestServer::start().await;
    for strategy in ["crdt", "optimistic"] {
        let (id, v1) = s
            .create(json!({"value": {"n": 1}, "strategy": strategy}))
            .await;
        let before = s.raw(&id).await;
        for tag in [
            v1.clone(),
            format!("\"{v1}"),
            format!("{v1}\""),
            format!("W/{v1}"),
            format!("\"{v1}\" \"{v1}\""),
            format!("*, \"{v1}\""),
        ] {
            let reply = s
                .send(
                    s.request(Method::PUT, &format!("/v1/docs/{id}"))
                        .header("if-match", &tag)
                        .json(&json!({"n": 2})),
                )
                .await;
            let problem = reply.assert_problem(400);
            assert_eq!(
                problem["type"], "urn:concord:problem:invalid-version",
                "{strategy} {tag}"
            );
            assert_eq!(s.raw(&id).await, before, "{strategy} {tag}");
        }
        // A second line with a bad tag spoils the list.
        let reply = s
            .send(
                s.request(Method::PUT, &format!("/v1/docs/{id}"))
                    .header("if-match", format!("\"{v1}\""))
                    .header("if-match", v1.clone())
                    .json(&json!({"n": 2})),
            )
            .await;
        reply.assert_problem(400);
        // `?at=` and `?since=` are not entity tags: a bare version.
        let at = s
            .send(s.request(Method::GET, &format!("/v1/docs/{id}?at={v1}")))
            .await;
        assert_eq!(at.json()["value"], json!({"n": 1}));
        let since = s
            .send(s.request(Method::GET, &format!("/v1/docs/{id}/changes?since={v1}")))
            .await;
        assert_eq!(since.status, StatusCode::OK);
    }
}

/// An `Idempotency-Key` fingerprints every `If-Match` line: the same key with another second
/// line is another request (422), not a replay of the first.
#[tokio::test]
async fn idempotency_key_sees_every_if_match_line() {
    let s = TestServer::start().await;
    let (id, v1) = s.create(json!({"value": {"n": 0}})).await;
    let put = |second: String| {
        s.send(
            s.request(Method::PUT, &format!("/v1/docs/{id}"))
                .header("idempotency-key", "two-lines")
                .header("if-match", format!("\"{v1}\""))
                .header("if-match", second)
                .json(&json!({"n": 1})),
        )
    };
    let first = put(format!("\"{v1}\"")).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.json());
    let replay = put(format!("\"{v1}\"")).await;
    assert_eq!(
        replay.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    let other = put(format!("\"{}\"", first.etag())).await;
    other.assert_problem(422);
}

/// A JSON `null` as the body of a create or a lease request is what an empty body is: the
/// defaults (a client library that serializes "no options" as `null` is not refused).
#[tokio::test]
async fn a_null_body_means_the_defaults() {
    let s = TestServer::start().await;
    let created = s
        .send(
            s.request(Method::POST, "/v1/docs")
                .header("content-type", "application/json")
                .body("null"),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.json()["value"], json!({}));
    assert_eq!(created.json()["strategy"], "crdt");
    let (lock, _) = s.create(json!({"strategy": "lock"})).await;
    let lease = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{lock}/lock"))
                .header("content-type", "application/json")
                .body("null"),
        )
        .await;
    assert_eq!(lease.status, StatusCode::OK, "{:?}", lease.json());
    assert_eq!(lease.json()["ttl_ms"], 10_000);
}

/// A change time in seconds past what a JavaScript `Date` holds: a client's claim.
const FAR_FUTURE_SECS: i64 = 9_000_000_000_000;

/// Now by this machine's clock, in seconds since the epoch (the server's clock is the same).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A document's history, as the server answers it.
async fn history_of(s: &TestServer, id: &str) -> Vec<Value> {
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}/history")))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.json()["changes"].as_array().unwrap().clone()
}

/// `(agent, recorded, claimed_agent, claimed_time)` of the entries whose hashes are in
/// `hashes`, in history order, each checked to be received between `from` and `to`.
fn received(
    history: &[Value],
    hashes: &[String],
    from: i64,
    to: i64,
) -> Vec<(Value, Value, Value, Value)> {
    history
        .iter()
        .filter(|c| hashes.contains(&c["hash"].as_str().unwrap().to_owned()))
        .map(|c| {
            let time = c["time"].as_i64().unwrap();
            assert!(
                (from..=to).contains(&time),
                "received at {time}, not in {from}..={to}: {c}"
            );
            (
                c["agent"].clone(),
                c["recorded"].clone(),
                c["claimed_agent"].clone(),
                c["claimed_time"].clone(),
            )
        })
        .collect()
}

/// The hashes of the changes a document gained since `before` (its history then).
fn new_hashes(before: &[Value], after: &[Value]) -> Vec<String> {
    let old: Vec<&Value> = before.iter().map(|c| &c["hash"]).collect();
    after
        .iter()
        .filter(|c| !old.contains(&&c["hash"]))
        .map(|c| c["hash"].as_str().unwrap().to_owned())
        .collect()
}

/// Without authentication, every stored change records the `Concord-Agent` it was sent
/// with and the server's time, whatever the change says (no note at all, a message that
/// names someone, a note that names another agent, a time in the year 287,000 or 1970):
/// history shows the server's record, keeps the claim beside it, and is in the order the
/// server received the changes; so after a restart, and after a compaction replaced the
/// change records by a snapshot and the document left memory.
#[tokio::test]
async fn history_shows_who_sent_each_change_and_when() {
    let mut s = TestServer::start_with(|c| {
        c.tuning = Tuning {
            idle_evict: std::time::Duration::ZERO,
            compact_after: 1,
            maintain_every: std::time::Duration::from_secs(3600),
        }
    })
    .await;
    let from = now_secs();
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let created = history_of(&s, &id).await;
    let mut raw = s.raw(&id).await;
    let silent = foreign_change(&raw, None, FAR_FUTURE_SECS);
    raw.extend_from_slice(&silent);
    let says_ops = foreign_change(&raw, Some("ops did this"), 1);
    raw.extend_from_slice(&says_ops);
    let (mut replica, _) =
        concord_core::Document::load(concord_core::Schema::default(), None, &[raw.clone()])
            .unwrap();
    let base = replica.version();
    replica.put(None, &json!({"n": 2}), &meta("ops")).unwrap();
    let named_ops = replica.changes_since(Some(&base)).unwrap();
    let body = [silent, says_ops, named_ops].concat();
    let posted = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("concord-agent", "agent-x")
                .header("content-type", "application/octet-stream")
                .body(body),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{:?}", posted.json());
    assert_eq!(posted.json()["new_changes"], 3);
    let to = now_secs();
    let history = history_of(&s, &id).await;
    let hashes = new_hashes(&created, &history);
    assert_eq!(hashes.len(), 3);
    let expected = vec![
        (
            json!("agent-x"),
            json!(true),
            json!(null),
            json!(FAR_FUTURE_SECS),
        ),
        (json!("agent-x"), json!(true), json!(null), json!(1)),
        (
            json!("agent-x"),
            json!(true),
            json!("ops"),
            json!(1_700_000_000),
        ),
    ];
    assert_eq!(received(&history, &hashes, from, to), expected);
    assert_eq!(history[0]["agent"], "anonymous");
    let said = history.iter().find(|c| c["claimed_time"] == 1).unwrap();
    assert_eq!(said["message"], "ops did this");
    // In the order received: the creation first, though a later change claims 1970.
    assert_eq!(history[0]["hash"], created[0]["hash"]);
    let times: Vec<i64> = history
        .iter()
        .map(|c| c["time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // Restarted, compacted and reloaded: the same record.
    s.restart().await;
    assert_eq!(history_of(&s, &id).await, history);
    let registry = &s.state().registry;
    let done = registry.maintain().await;
    assert_eq!(done.compacted, 1);
    // The task that answered the read may still hold the document as its answer arrives
    // (eviction skips a document in use): maintain again until it lets go, boundedly.
    let mut evicted = done.evicted;
    for _ in 0..10_000 {
        if evicted > 0 {
            break;
        }
        tokio::task::yield_now().await;
        evicted += registry.maintain().await.evicted;
    }
    assert_eq!(evicted, 1);
    let stored = registry
        .store()
        .load(uuid::Uuid::parse_str(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.snapshot.is_some() && stored.changes.is_empty());
    assert_eq!(history_of(&s, &id).await, history);
    s.restart().await;
    assert_eq!(history_of(&s, &id).await, history);
}

/// Changes that come over `/sync` are recorded as the `Concord-Agent` of the connection
/// and the server's time, whatever their notes say.
#[tokio::test]
async fn sync_delivered_changes_record_their_sender() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"n": 1}})).await;
    let before = history_of(&s, &id).await;
    let from = now_secs();
    let mut socket = connect_with(
        &s,
        &format!("/v1/docs/{id}/sync"),
        "",
        &[("concord-agent", "agent-sync")],
    )
    .await
    .expect("connects");
    let mut replica = Replica::new();
    replica.sync(&mut socket).await;
    let claimed = concord_core::WriteMeta {
        agent: "ops".into(),
        time_ms: FAR_FUTURE_SECS * 1000,
        message: Some("ops did this".into()),
    };
    replica.doc.put(None, &json!({"n": 2}), &claimed).unwrap();
    let silent = foreign_change(&replica.doc.changes_since(None).unwrap(), None, 1);
    replica.doc.apply_changes(&silent).unwrap();
    replica.sync(&mut socket).await;
    let to = now_secs();
    let history = history_of(&s, &id).await;
    let hashes = new_hashes(&before, &history);
    assert_eq!(
        received(&history, &hashes, from, to),
        vec![
            (
                json!("agent-sync"),
                json!(true),
                json!("ops"),
                json!(FAR_FUTURE_SECS)
            ),
            (json!("agent-sync"), json!(true), json!(null), json!(1)),
        ]
    );
}

/// A fork is a copy: its changes keep who sent them to the original (not the forker), and
/// merged back, the fork's changes keep who sent them to the fork (not the merger). The
/// changes are raw ones that name nobody, so only the server's record says who sent them.
#[tokio::test]
async fn forks_and_merges_keep_who_sent_each_change() {
    let s = TestServer::start().await;
    let post = |id: &str, agent: &str, body: Vec<u8>| {
        s.send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("concord-agent", agent.to_owned())
                .header("content-type", "application/octet-stream")
                .body(body),
        )
    };
    let created = s
        .send(
            s.request(Method::POST, "/v1/docs")
                .header("concord-agent", "author")
                .json(&json!({"value": {"notes": []}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let silent = foreign_change(&s.raw(&id).await, None, 1);
    assert_eq!(post(&id, "poster", silent).await.status, StatusCode::OK);
    let forked = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/fork"))
                .header("concord-agent", "forker"),
        )
        .await;
    assert_eq!(forked.status, StatusCode::CREATED);
    let fork = forked.json()["id"].as_str().unwrap().to_owned();
    let agents = |history: Vec<Value>| -> Vec<String> {
        history
            .iter()
            .map(|c| c["agent"].as_str().unwrap_or("(none)").to_owned())
            .collect()
    };
    assert_eq!(agents(history_of(&s, &fork).await), ["author", "poster"]);
    let silent = foreign_change(&s.raw(&fork).await, None, 2);
    assert_eq!(post(&fork, "editor", silent).await.status, StatusCode::OK);
    let merged = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/merge"))
                .header("concord-agent", "merger")
                .json(&json!({"fork": fork})),
        )
        .await;
    assert_eq!(merged.status, StatusCode::OK, "{:?}", merged.json());
    assert_eq!(
        agents(history_of(&s, &id).await),
        ["author", "poster", "editor"]
    );
}

/// A conflict names the writer of each value as the server received its change: two raw
/// changes whose notes both name `ops`, posted by `agent-x` and `agent-y`.
#[tokio::test]
async fn conflicts_name_who_sent_each_value() {
    let s = TestServer::start().await;
    let (id, _) = s.create(json!({"value": {"title": "draft"}})).await;
    let raw = s.raw(&id).await;
    for (agent, title) in [("agent-x", "X's"), ("agent-y", "Y's")] {
        // Each replica writes from the same version, concurrently with the other.
        let (mut replica, _) = concord_core::Document::load(
            concord_core::Schema::default(),
            None,
            std::slice::from_ref(&raw),
        )
        .unwrap();
        let base = replica.version();
        replica
            .put(None, &json!({"title": title}), &meta("ops"))
            .unwrap();
        let change = replica.changes_since(Some(&base)).unwrap();
        let posted = s
            .send(
                s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                    .header("concord-agent", agent)
                    .header("content-type", "application/octet-stream")
                    .body(change),
            )
            .await;
        assert_eq!(posted.status, StatusCode::OK);
    }
    let reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}?conflicts=true")))
        .await
        .json();
    let values = reply["conflicts"][0]["values"].as_array().unwrap();
    let mut pairs: Vec<(&str, &str)> = values
        .iter()
        .map(|v| (v["value"].as_str().unwrap(), v["agent"].as_str().unwrap()))
        .collect();
    pairs.sort();
    assert_eq!(pairs, [("X's", "agent-x"), ("Y's", "agent-y")]);
}

/// `Prefer: return=minimal` (RFC 7240) on every kind of write: the answer is the version,
/// strategy and `new_changes` with `Preference-Applied`, never the value, and the version
/// is the next write's base; other preferences get the whole answer; a retry with the same
/// `Idempotency-Key` replays the first answer, whatever it prefers.
#[tokio::test]
async fn prefer_return_minimal_answers_every_write_without_its_value() {
    let s = TestServer::start().await;
    let minimal =
        |method: Method, path: &str| s.request(method, path).header("prefer", "return=minimal");
    let check = |reply: &concord_tests::Reply, status: StatusCode, new_changes: u64| {
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.bytes)
        );
        let body = reply.json();
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["id", "new_changes", "strategy", "version"], "{body}");
        assert_eq!(body["new_changes"], new_changes, "{body}");
        assert_eq!(
            reply.header("preference-applied").as_deref(),
            Some("return=minimal")
        );
        assert_eq!(Some(reply.etag().as_str()), body["version"].as_str());
        body["version"].as_str().unwrap().to_owned()
    };

    let created = s
        .send(minimal(Method::POST, "/v1/docs").json(&json!({"value": {"items": []}})))
        .await;
    check(&created, StatusCode::CREATED, 1);
    assert!(created.header("location").is_some());
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let doc = format!("/v1/docs/{id}");

    let patched = s
        .send(
            minimal(Method::PATCH, &doc)
                .header("content-type", "application/json-patch+json")
                .body(json!([{"op": "add", "path": "/items/-", "value": "a"}]).to_string()),
        )
        .await;
    let version = check(&patched, StatusCode::OK, 1);
    let merged = s
        .send(
            minimal(Method::PATCH, &doc)
                .header("content-type", "application/merge-patch+json")
                .header("if-match", format!("\"{version}\""))
                .body(json!({"title": "t"}).to_string()),
        )
        .await;
    let version = check(&merged, StatusCode::OK, 1);
    let put = s
        .send(
            minimal(Method::PUT, &doc)
                .header("if-match", format!("\"{version}\""))
                .json(&json!({"items": ["a", "b"], "title": "t"})),
        )
        .await;
    let version = check(&put, StatusCode::OK, 1);
    let nothing = s
        .send(
            minimal(Method::PATCH, &doc)
                .header("content-type", "application/json-patch+json")
                .body("[]"),
        )
        .await;
    assert_eq!(check(&nothing, StatusCode::OK, 0), version);
    let raw = foreign_change(&s.raw(&id).await, None, 1_700_000_000);
    let posted = s
        .send(
            minimal(Method::POST, &format!("{doc}/changes"))
                .header("content-type", "application/octet-stream")
                .body(raw),
        )
        .await;
    check(&posted, StatusCode::OK, 1);
    assert_eq!(
        s.get(&id).await.0,
        json!({"items": ["a", "b"], "title": "t"})
    );

    // Forks and merges.
    let (branches, _) = s
        .create(json!({"value": {"notes": []}, "strategy": "branches"}))
        .await;
    let forked = s
        .send(minimal(Method::POST, &format!("/v1/docs/{branches}/fork")))
        .await;
    check(
        &forked,
        StatusCode::CREATED,
        forked.json()["new_changes"].as_u64().unwrap(),
    );
    let fork = forked.json()["id"].as_str().unwrap().to_owned();
    let (_, v) = s.get(&fork).await;
    assert_eq!(
        s.put(&fork, "f", &v, &json!({"notes": ["n"]})).await.status,
        StatusCode::OK
    );
    let merge = s
        .send(
            minimal(Method::POST, &format!("/v1/docs/{branches}/merge"))
                .json(&json!({"fork": fork})),
        )
        .await;
    check(&merge, StatusCode::OK, 1);
    assert_eq!(s.get(&branches).await.0, json!({"notes": ["n"]}));

    // Without the preference, or with another, the answer is whole.
    let append = |prefer: Option<&str>, key: Option<&str>| {
        let mut request = s
            .request(Method::PATCH, &doc)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/items/-", "value": "c"}]).to_string());
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        s.send(request)
    };
    for prefer in [
        None,
        Some("return=representation"),
        Some("wait=1"),
        Some("return"),
    ] {
        let whole = append(prefer, None).await;
        assert_eq!(whole.status, StatusCode::OK);
        assert!(whole.json()["value"]["items"].is_array(), "{prefer:?}");
        assert_eq!(whole.header("preference-applied"), None);
    }
    // A retry replays the first answer, minimal or whole.
    let first = append(Some("return=minimal"), Some("minimal-key")).await;
    check(&first, StatusCode::OK, 1);
    let retry = append(None, Some("minimal-key")).await;
    assert_eq!(retry.bytes, first.bytes);
    assert_eq!(retry.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(
        retry.header("preference-applied").as_deref(),
        Some("return=minimal")
    );
}

/// A float comes back as exactly the number written (as Rust's own correctly rounding
/// parser reads it): the JSON reader rounds correctly (found by fuzzing: `3.333333333333333e-10` was read one ulp
/// off, as `3.3333333333333327e-10`, and stored so).
#[tokio::test]
async fn floats_come_back_exactly_as_written() {
    let s = TestServer::start().await;
    let written = [
        "3.333333333333333e-10",
        "0.1",
        "1e23",
        "2.2250738585072011e-308",
        "5e-324",
        "1.7976931348623157e308",
        "0.30000000000000004",
        "123456789.12345679",
    ];
    let body = format!("{{\"value\": {{\"f\": [{}]}}}}", written.join(", "));
    let created = s
        .send(
            s.request(Method::POST, "/v1/docs")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let read = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}")))
        .await;
    let text = String::from_utf8(read.bytes.clone()).unwrap();
    let stored: Vec<f64> = read.json()["value"]["f"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let exact: Vec<f64> = written.iter().map(|n| n.parse().unwrap()).collect();
    assert_eq!(stored, exact, "{text}");
}
