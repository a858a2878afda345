//! Maintenance: long change logs are compacted into snapshots, idle documents leave memory,
//! and either way every document reads back exactly as it was.

use std::time::Duration;

use concord_server::registry::Tuning;
use concord_tests::TestServer;
use reqwest::Method;
use serde_json::json;

/// A server whose maintenance runs only when the test calls it: documents are idle at
/// once and compacted after five records.
async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.tuning = Tuning {
            idle_evict: Duration::ZERO,
            compact_after: 5,
            maintain_every: Duration::from_secs(3600),
        }
    })
    .await
}

#[tokio::test]
async fn compaction_and_eviction_keep_documents_exact() {
    let mut s = server().await;
    let (id, _) = s
        .create(json!({"value": {"log": []}, "counters": ["/n"]}))
        .await;
    for i in 0..12 {
        let ops = json!([
            {"op": "add", "path": "/log/-", "value": i},
            {"op": "increment", "path": "/n", "value": 1}
        ]);
        assert!(s.patch(&id, "w", None, &ops).await.status.is_success());
    }
    let (value, version) = s.get(&id).await;
    let history = s.raw(&id).await;

    let registry = &s.state().registry;
    assert_eq!(registry.loaded_count(), 1);
    let done = registry.maintain().await;
    assert_eq!((done.compacted, done.evicted), (1, 1));
    assert_eq!(registry.loaded_count(), 0, "the idle document left memory");
    let stored = registry
        .store()
        .load(uuid::Uuid::parse_str(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(stored.snapshot.is_some());
    assert!(
        stored.changes.is_empty(),
        "the snapshot covers every change"
    );

    // Loading it again (from the snapshot) gives the same document.
    assert_eq!(s.get(&id).await, (value.clone(), version.clone()));
    assert_eq!(s.raw(&id).await, history);
    // It keeps taking writes, including from a version older than the snapshot.
    let v1_reply = s
        .send(s.request(Method::GET, &format!("/v1/docs/{id}/history")))
        .await
        .json();
    let first = v1_reply["changes"][0]["hash"].as_str().unwrap().to_owned();
    // As of the first version the document was {"log": []}.
    let stale = json!({"log": ["from the first version"]});
    assert!(s.put(&id, "late", &first, &stale).await.status.is_success());
    let (after, _) = s.get(&id).await;
    assert_eq!(after["log"].as_array().unwrap().len(), 13);
    assert_eq!(after["n"], 12);

    // A restart loads snapshot plus the changes after it.
    let before_restart = s.get(&id).await;
    s.restart().await;
    assert_eq!(s.get(&id).await, before_restart);
}

#[tokio::test]
async fn documents_in_use_stay_in_memory() {
    let s = server().await;
    let (watched, _) = s.create(json!({})).await;
    let (idle, _) = s.create(json!({})).await;
    // A live subscriber holds its document.
    let mut events =
        concord_tests::SseStream::open(&s, &format!("/v1/docs/{watched}/events"), &[]).await;
    let snapshot = events.next().await.expect("a snapshot event");
    assert_eq!(snapshot.event, "snapshot");
    let registry = &s.state().registry;
    let done = registry.maintain().await;
    assert_eq!(done.evicted, 1);
    assert_eq!(registry.loaded_count(), 1);
    // The idle one loads again on use.
    assert_eq!(s.get(&idle).await.0, json!({}));
}
