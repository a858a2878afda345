//! Convergence end to end: the replicas of `core/tests/common/replicas.rs` (forks of a
//! document created on the server) edit concurrently and exchange changes over a network
//! that reorders, duplicates and drops; their changes are also posted to the real server
//! (`POST /v1/docs/{id}/changes`), in a random order and with duplicates. When all is
//! delivered, the server's value and version equal the replicas', and stay so across a
//! restart.

#[path = "../core/tests/common/replicas.rs"]
mod replicas;

use std::collections::HashSet;

use concord_core::{Document, Version};
use concord_tests::TestServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use replicas::{arb_run, initial, schema, Run, RunSpec};
use reqwest::Method;
use serde_json::json;

/// Creates the origin on the server: `(id, the origin as a replica sees it)`.
async fn create(s: &TestServer) -> (String, Document) {
    let (id, _) = s
        .create(json!({"value": initial(), "text": ["/text"], "counters": ["/n"]}))
        .await;
    let mut origin = Document::empty(schema()).expect("empty");
    origin
        .apply_changes(&s.raw(&id).await)
        .expect("the server's changes apply");
    (id, origin)
}

async fn post(s: &TestServer, id: &str, bytes: Vec<u8>) -> reqwest::StatusCode {
    let reply = s
        .send(
            s.request(Method::POST, &format!("/v1/docs/{id}/changes"))
                .header("content-type", "application/octet-stream")
                .body(bytes),
        )
        .await;
    reply.status
}

/// Posts every change, each once its dependencies were posted (as a client that sends a
/// change only after what it builds on), in a seeded random order, some twice.
async fn post_all(s: &TestServer, id: &str, origin: &Document, run: &Run, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let parsed: Vec<(String, Vec<String>, Vec<u8>)> = run
        .changes
        .iter()
        .map(|bytes| {
            let change = concord_core::doc::parse_changes(bytes)
                .expect("a change")
                .remove(0);
            (
                change.hash().to_string(),
                change.deps().iter().map(ToString::to_string).collect(),
                bytes.clone(),
            )
        })
        .collect();
    let mut posted: HashSet<String> = origin.history().into_iter().map(|h| h.hash).collect();
    let mut left: Vec<usize> = (0..parsed.len()).collect();
    left.shuffle(&mut rng);
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|i| parsed[*i].1.iter().all(|d| posted.contains(d)))
            .expect("some change has its dependencies");
        let i = left.remove(ready);
        let copies = if rng.random_bool(0.2) { 2 } else { 1 };
        for _ in 0..copies {
            let status = post(s, id, parsed[i].2.clone()).await;
            assert_eq!(status, 200, "posting change {}", parsed[i].0);
        }
        posted.insert(parsed[i].0.clone());
    }
}

async fn check_server(s: &TestServer, id: &str, value: &serde_json::Value, version: &Version) {
    let (server_value, server_version) = s.get(id).await;
    assert_eq!(&server_value, value, "the server's value");
    assert_eq!(server_version, version.to_string(), "the server's version");
}

#[test]
fn replicas_and_the_server_converge() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (arb_run(3, 30), any::<u64>());
    runner
        .run(&strategy, |(spec, seed): (RunSpec, u64)| {
            runtime.block_on(async {
                let mut s = TestServer::start().await;
                let (id, origin) = create(&s).await;
                let mut run = Run::from_origin(&origin, &spec);
                run.play(&spec);
                run.settle();
                let (value, version) = run.assert_converged();
                post_all(&s, &id, &origin, &run, seed).await;
                check_server(&s, &id, &value, &version).await;
                s.restart().await;
                check_server(&s, &id, &value, &version).await;
            });
            Ok(())
        })
        .unwrap();
}

/// A change whose dependencies the server does not have cannot be stored (it would not
/// load): it must be refused, not acknowledged and then forgotten.
#[tokio::test]
async fn a_change_without_its_dependencies_is_refused() {
    let mut s = TestServer::start().await;
    let (id, origin) = create(&s).await;
    let (mut replica, _) = origin.fork();
    let first = replica
        .patch(
            None,
            &concord_core::patch::parse_patch(
                &json!([{"op": "add", "path": "/list/-", "value": "first"}]),
            )
            .unwrap(),
            &concord_core::WriteMeta {
                agent: "r".into(),
                time_ms: 0,
                message: None,
            },
        )
        .unwrap();
    let second = replica
        .patch(
            None,
            &concord_core::patch::parse_patch(
                &json!([{"op": "add", "path": "/list/-", "value": "second"}]),
            )
            .unwrap(),
            &concord_core::WriteMeta {
                agent: "r".into(),
                time_ms: 0,
                message: None,
            },
        )
        .unwrap();
    let before = s.raw(&id).await;
    let status = post(&s, &id, second.changes[0].raw_bytes().to_vec()).await;
    assert!(status.is_client_error(), "answered {status}");
    assert_eq!(s.raw(&id).await, before, "nothing was stored");
    // Sent in order, both apply, and both survive a restart.
    assert_eq!(
        post(&s, &id, first.changes[0].raw_bytes().to_vec()).await,
        200
    );
    assert_eq!(
        post(&s, &id, second.changes[0].raw_bytes().to_vec()).await,
        200
    );
    s.restart().await;
    let (value, version) = s.get(&id).await;
    assert_eq!(value["list"], json!(["a", "b", "c", "first", "second"]));
    assert_eq!(version, replica.version().to_string());
}
