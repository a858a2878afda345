//! What machines read of the server: the OpenAPI description (`/openapi.json`) and the
//! Prometheus metrics (`/metrics`). The description's truth against the live server is
//! checked by the conformance run (`scripts/api-conformance.sh`, schemathesis); here, that
//! it covers the API and that metrics count what happened.
//!
//! The metrics recorder is process-wide: this file holds one test, so that its counts are
//! exactly what it did.

use concord_tests::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

/// The value of one sample line (`name{labels} value`) of a Prometheus text page, or 0.
fn sample(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_covers_the_api_and_metrics_count_what_happened() {
    let s = TestServer::start().await;

    // The description: OpenAPI 3.1, every route, problem+json for every operation.
    let reply = s.send(s.request(Method::GET, "/openapi.json")).await;
    assert_eq!(reply.status, 200);
    let doc: Value = reply.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/healthz",
        "/openapi.json",
        "/metrics",
        "/mcp",
        "/v1/docs",
        "/v1/docs/{id}",
        "/v1/docs/{id}/history",
        "/v1/docs/{id}/changes",
        "/v1/docs/{id}/lock",
        "/v1/docs/{id}/fork",
        "/v1/docs/{id}/merge",
        "/v1/docs/{id}/lost/{lost}",
        "/v1/docs/{id}/lost/{lost}/restore",
        "/v1/docs/{id}/ws",
        "/v1/docs/{id}/events",
        "/v1/docs/{id}/sync",
        "/v1/events",
        "/v1/repo",
        "/",
        "/web/{name}",
    ] {
        assert!(paths.contains_key(path), "{path} is not described");
    }
    let put = &doc["paths"]["/v1/docs/{id}"]["put"];
    let headers: Vec<&str> = put["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for header in [
        "If-Match",
        "Idempotency-Key",
        "Concord-Agent",
        "Concord-Lock",
    ] {
        assert!(headers.contains(&header), "PUT lacks {header}: {headers:?}");
    }
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let problem = &operation["responses"]["default"]["content"]["application/problem+json"];
            assert!(problem.is_object(), "{method} {path} has no problem answer");
        }
    }
    assert_eq!(
        doc["components"]["schemas"]["Problem"]["required"],
        json!(["type", "title", "status", "detail"])
    );

    // Metrics: a write, a stale write merged, a refusal, a 404.
    let (id, v0) = s.create(json!({"value": {"a": 1, "b": 1}})).await;
    assert_eq!(
        s.put(&id, "ann", &v0, &json!({"a": 2, "b": 1}))
            .await
            .status,
        200
    );
    assert_eq!(
        s.put(&id, "bob", &v0, &json!({"a": 1, "b": 2}))
            .await
            .status,
        200
    );
    let (opt, o0) = s.create(json!({"strategy": "optimistic"})).await;
    assert_eq!(s.put(&opt, "ann", &o0, &json!({"x": 1})).await.status, 200);
    s.put(&opt, "bob", &o0, &json!({"x": 2}))
        .await
        .assert_problem(412);
    s.send(s.request(Method::GET, "/v1/docs/7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10"))
        .await
        .assert_problem(404);

    let reply = s.send(s.request(Method::GET, "/metrics")).await;
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    let page = String::from_utf8(reply.bytes.clone()).unwrap();
    let put = r#"concord_http_requests_total{method="PUT",route="/v1/docs/{id}",status="#;
    assert_eq!(sample(&page, &format!(r#"{put}"200"}}"#)), 3.0, "{page}");
    assert_eq!(sample(&page, &format!(r#"{put}"412"}}"#)), 1.0, "{page}");
    let get = r#"concord_http_requests_total{method="GET",route="/v1/docs/{id}",status="404"}"#;
    assert_eq!(sample(&page, get), 1.0, "{page}");
    // Writes to documents (creates are not counted), refusals not among them.
    assert_eq!(
        sample(&page, r#"concord_writes_total{strategy="crdt"}"#),
        2.0
    );
    assert_eq!(
        sample(&page, r#"concord_writes_total{strategy="optimistic"}"#),
        1.0
    );
    assert_eq!(
        sample(&page, r#"concord_writes_merged_total{strategy="crdt"}"#),
        1.0
    );
    assert_eq!(
        sample(&page, r#"concord_refusals_total{kind="stale-version"}"#),
        1.0
    );
    // Two creates and three writes (at least) were stored, each group in one commit.
    let commits = sample(&page, r#"concord_store_commits_total{store="sqlite"}"#);
    let stored = sample(&page, r#"concord_store_group_batches_sum{store="sqlite"}"#);
    assert!(stored >= 5.0 && (1.0..=stored).contains(&commits), "{page}");
    assert!(
        sample(
            &page,
            r#"concord_store_commit_seconds_count{store="sqlite"}"#
        ) >= 1.0
    );
    assert_eq!(sample(&page, "concord_documents_in_memory"), 2.0);
    assert!(sample(&page, "concord_connections") >= 1.0);
    assert!(page.contains(
        r#"concord_http_request_duration_seconds_bucket{method="PUT",route="/v1/docs/{id}",le="#
    ));
}
