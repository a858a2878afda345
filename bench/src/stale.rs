//! Stale-base merges: whole-document PUTs whose base is 1, 10 or 100 versions old. The
//! cost of merging grows with how much happened since the writer read; this measures it.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::{fetch_json, percentile, timed_write, BenchError, LocalConcord};

/// One measured age.
#[derive(Debug, Clone, Serialize)]
pub struct StaleRow {
    /// How many versions old each write's base was.
    pub age: usize,
    /// PUTs measured.
    pub writes: usize,
    /// PUTs per second (time inside the PUT requests only).
    pub per_sec: f64,
    /// Median PUT latency, ms.
    pub p50_ms: f64,
}

/// For each age, `writes` PUTs of the whole document, each from a base `age` versions
/// back, each changing one list element and appending one.
pub async fn run(
    concord: &LocalConcord,
    ages: &[usize],
    writes: usize,
) -> Result<Vec<StaleRow>, BenchError> {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for &age in ages {
        let items: Vec<Value> = (0..100).map(|i| json!(format!("item {i}"))).collect();
        let url = concord
            .create_docs(&client, 1, "crdt", json!({"items": items, "title": "t"}))
            .await?
            .remove(0);
        // Build `age` versions of history first, remembering each version.
        let mut versions = vec![get(&client, &url, None).await?.1];
        for i in 0..age {
            versions.push(patch_title(&client, &url, i).await?);
        }
        let mut latencies = Vec::with_capacity(writes);
        let mut total = Duration::ZERO;
        for w in 0..writes {
            let base = versions[versions.len() - 1 - age].clone();
            let (mut value, _) = get(&client, &url, Some(&base)).await?;
            if let Some(items) = value["items"].as_array_mut() {
                let k = w % items.len().max(1);
                items[k] = json!(format!("edited {w}"));
                items.push(json!(format!("added {w}")));
            }
            let request = client
                .put(&url)
                .header("if-match", format!("\"{base}\""))
                .header("concord-agent", "stale")
                .json(&value);
            let (elapsed, body) = timed_write(request).await?;
            let body: Value =
                serde_json::from_slice(&body).map_err(|e| BenchError::Invalid(e.to_string()))?;
            total += elapsed;
            latencies.push(elapsed.as_secs_f64() * 1000.0);
            versions.push(body["version"].as_str().unwrap_or_default().to_owned());
        }
        rows.push(StaleRow {
            age,
            writes,
            per_sec: writes as f64 / total.as_secs_f64().max(1e-9),
            p50_ms: percentile(&latencies, 0.5),
        });
    }
    Ok(rows)
}

async fn get(
    client: &reqwest::Client,
    url: &str,
    at: Option<&str>,
) -> Result<(Value, String), BenchError> {
    let url = match at {
        Some(v) => format!("{url}?at={v}"),
        None => url.to_owned(),
    };
    let body: Value = fetch_json(client.get(url)).await?;
    Ok((
        body["value"].clone(),
        body["version"].as_str().unwrap_or_default().to_owned(),
    ))
}

async fn patch_title(client: &reqwest::Client, url: &str, i: usize) -> Result<String, BenchError> {
    let body: Value = fetch_json(
        client
            .patch(url)
            .header("content-type", "application/json-patch+json")
            .body(
                json!([{"op": "replace", "path": "/title", "value": format!("t{i}")}]).to_string(),
            ),
    )
    .await?;
    Ok(body["version"].as_str().unwrap_or_default().to_owned())
}
