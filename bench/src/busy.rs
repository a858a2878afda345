//! Large JSON Patches, and answering while they run. First each kind of large patch alone
//! (appends, inserts at the front, removes at the front, and inserts between every two
//! elements), at the present and at a stale base: the stale one against the same patch at
//! the present, in the same run. Then two patches of inserts between every two elements at
//! a stale base (each seconds of CPU, on a document of its own) run at once, and meanwhile
//! `/healthz` and reads of a third document are timed one after another; the same probes
//! against the idle server are the baseline.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{fetch_json, percentile, timed_write, BenchError, LocalConcord};

/// Probes timed at most, idle or busy (a bound on the section's traffic).
const MAX_PROBES: usize = 200_000;

/// One large patch alone.
#[derive(Debug, Clone, Serialize)]
pub struct SoloRow {
    /// `append` (`/items/-`), `insert at 0` or `remove at 0` (`/items/0`), or `interleave`
    /// (`/items/0`, `/items/2`, `/items/4`, …: a new element before each old one).
    pub kind: &'static str,
    /// `present` or `stale` (made as of the version before one other write).
    pub base: &'static str,
    /// Seconds from send to the answer's last byte.
    pub secs: f64,
}

/// One kind of probe under one load.
#[derive(Debug, Clone, Serialize)]
pub struct BusyRow {
    /// `healthz` or `read` (GET of a small document nobody writes).
    pub probe: &'static str,
    /// `idle` or `busy`.
    pub load: &'static str,
    /// Probes timed.
    pub probes: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Slowest, ms.
    pub max_ms: f64,
}

/// The section's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BusyReport {
    /// Elements of each patched list.
    pub list: usize,
    /// Operations in each large patch.
    pub ops: usize,
    /// Each kind of large patch alone.
    pub solo: Vec<SoloRow>,
    /// How long each of the two patches run at once took, seconds.
    pub heavy_secs: Vec<f64>,
    /// The probes, idle and while the two patches ran.
    pub rows: Vec<BusyRow>,
}

/// Runs the section: lists of `list` elements, patches of `ops` operations.
pub async fn run(
    concord: &LocalConcord,
    list: usize,
    ops: usize,
) -> Result<BusyReport, BenchError> {
    let client = reqwest::Client::new();
    let items: Vec<usize> = (0..list).collect();
    let listed = json!({ "items": items });

    let mut solo = Vec::new();
    for (kind, body) in [
        ("append", inserts(ops, "/items/-")),
        ("insert at 0", inserts(ops, "/items/0")),
        ("remove at 0", removes(ops)),
        ("interleave", interleave(ops)),
    ] {
        for stale in [false, true] {
            let url = concord
                .create_docs(&client, 1, "crdt", listed.clone())
                .await?
                .remove(0);
            let base = if stale {
                moved_on(&client, &url).await?
            } else {
                version(&client, &url).await?
            };
            let (elapsed, _) = timed_write(patch(&client, &url, &base, &body)).await?;
            solo.push(SoloRow {
                kind,
                base: if stale { "stale" } else { "present" },
                secs: elapsed.as_secs_f64(),
            });
        }
    }

    let heavy = concord.create_docs(&client, 2, "crdt", listed).await?;
    let quiet = concord
        .create_docs(&client, 1, "crdt", json!({"title": "read while busy"}))
        .await?
        .remove(0);
    let healthz = format!("http://{}/healthz", concord.addr);
    let mut rows = probe(&client, &healthz, &quiet, "idle", || true, 500).await?;
    let mut stale = Vec::new();
    for url in &heavy {
        stale.push(moved_on(&client, url).await?);
    }
    let body = interleave(ops);
    let running: Vec<_> = heavy
        .iter()
        .zip(&stale)
        .map(|(url, base)| tokio::spawn(timed_write(patch(&client, url, base, &body))))
        .collect();
    let busy = || running.iter().any(|task| !task.is_finished());
    rows.extend(probe(&client, &healthz, &quiet, "busy", busy, MAX_PROBES).await?);
    let mut heavy_secs = Vec::new();
    for task in running {
        let (elapsed, _) = task
            .await
            .map_err(|e| BenchError::Io(format!("a heavy patch's task failed: {e}")))??;
        heavy_secs.push(elapsed.as_secs_f64());
    }
    Ok(BusyReport {
        list,
        ops,
        solo,
        heavy_secs,
        rows,
    })
}

/// Times `/healthz` and a read of `quiet`, alternately, while `going` says so (at least
/// once each, at most `max` probes in all).
async fn probe(
    client: &reqwest::Client,
    healthz: &str,
    quiet: &str,
    load: &'static str,
    going: impl Fn() -> bool,
    max: usize,
) -> Result<Vec<BusyRow>, BenchError> {
    let mut health = Vec::new();
    let mut reads = Vec::new();
    while health.len() + reads.len() < max && (health.is_empty() || going()) {
        health.push(timed(client.get(healthz)).await?);
        reads.push(timed(client.get(quiet)).await?);
    }
    let row = |probe, times: &[f64]| BusyRow {
        probe,
        load,
        probes: times.len(),
        p50_ms: percentile(times, 0.5),
        p99_ms: percentile(times, 0.99),
        max_ms: times.iter().copied().fold(0.0, f64::max),
    };
    Ok(vec![row("healthz", &health), row("read", &reads)])
}

/// One GET's latency to its answer's last byte, ms.
async fn timed(request: reqwest::RequestBuilder) -> Result<f64, BenchError> {
    let started = Instant::now();
    let response = request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Io(e.to_string()))?;
    response
        .bytes()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    Ok(ms(started.elapsed()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `ops` JSON Patch `add`s of new strings at `path`.
fn inserts(ops: usize, path: &str) -> String {
    let ops: Value = (0..ops)
        .map(|i| json!({"op": "add", "path": path, "value": format!("new {i}")}))
        .collect();
    ops.to_string()
}

/// `ops` JSON Patch `add`s, each before the next element that was there (`/items/0`,
/// `/items/2`, …): no two side by side, so each is its own insert.
fn interleave(ops: usize) -> String {
    let ops: Value = (0..ops)
        .map(|i| json!({"op": "add", "path": format!("/items/{}", 2 * i), "value": format!("new {i}")}))
        .collect();
    ops.to_string()
}

/// `ops` JSON Patch `remove`s of the first element.
fn removes(ops: usize) -> String {
    let ops: Value = (0..ops)
        .map(|_| json!({"op": "remove", "path": "/items/0"}))
        .collect();
    ops.to_string()
}

/// A PATCH of `body` made as of `base`, answered minimally.
fn patch(client: &reqwest::Client, url: &str, base: &str, body: &str) -> reqwest::RequestBuilder {
    client
        .patch(url)
        .header("content-type", "application/json-patch+json")
        .header("if-match", format!("\"{base}\""))
        .header("prefer", "return=minimal")
        .body(body.to_owned())
}

async fn version(client: &reqwest::Client, url: &str) -> Result<String, BenchError> {
    let body = fetch_json(client.get(url)).await?;
    Ok(body["version"].as_str().unwrap_or_default().to_owned())
}

/// The document's version, after which it moves on by one write: a stale base.
async fn moved_on(client: &reqwest::Client, url: &str) -> Result<String, BenchError> {
    let base = version(client, url).await?;
    fetch_json(
        client
            .patch(url)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "add", "path": "/items/-", "value": -1}]).to_string()),
    )
    .await?;
    Ok(base)
}
