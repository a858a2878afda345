//! What a small write costs as a document grows: in size (1 KB to 10 MB) and in history
//! (100 to 100,000 changes), for four kinds of edit (set a field, increment a counter,
//! append to a list, splice collaborative text), at 1 and at 64 agents writing the one
//! document at once. Every write is a `PATCH` answered `Prefer: return=minimal` on
//! keep-alive connections; each cell's figures are comparable with its row's first.
//!
//! Building 100,000 increments of one counter takes about ten minutes of the section's
//! time: Automerge walks a counter's earlier increments on each new one (BENCHMARKS.md).
//!
//! Documents are grown the way agents grow them: a large one by appending 1 MB at a time
//! (no request body is larger), a long history by that many changes of the edit measured,
//! made in this process on a copy of the document and sent as raw changes in batches.

use std::time::{Duration, Instant};

use concord_core::patch::PatchOp;
use concord_core::{Document, Schema, WriteMeta};
use serde::Serialize;
use serde_json::{json, Value};

use super::{fetch_json, percentile, timed_write, BenchError, LocalConcord};

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthRow {
    /// `size` (documents of growing size, short history) or `history` (small documents,
    /// growing history).
    pub axis: &'static str,
    /// The document's size as compact JSON before the writes, bytes.
    pub doc_bytes: usize,
    /// Changes the document held before the writes.
    pub changes: usize,
    /// The edit: `set`, `increment`, `append` or `splice`.
    pub edit: &'static str,
    /// Agents writing at once, each on its own connection.
    pub agents: usize,
    /// PATCHes measured.
    pub writes: usize,
    /// PATCHes per second, over the wall time of the cell.
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct GrowthOptions {
    /// Document sizes, bytes (roughly: 1 KB strings).
    pub sizes: Vec<usize>,
    /// History lengths, changes.
    pub histories: Vec<usize>,
    /// Agents writing at once.
    pub agents: Vec<usize>,
    /// PATCHes per cell at one agent; at more, each agent makes `writes / agents` (at least
    /// `min_per_agent`).
    pub writes: usize,
    /// The fewest PATCHes each agent makes.
    pub min_per_agent: usize,
}

/// The kinds of edit, by name.
pub const EDITS: [&str; 4] = ["set", "increment", "append", "splice"];

fn edit_ops(edit: &str, n: usize) -> Value {
    match edit {
        "set" => json!([{"op": "replace", "path": "/status", "value": format!("step {n}")}]),
        "increment" => json!([{"op": "increment", "path": "/count", "value": 1}]),
        "append" => {
            json!([{"op": "add", "path": "/findings/-", "value": {"n": n, "note": "seen"}}])
        }
        _ => json!([{"op": "splice", "path": "/text", "pos": 0, "del": 0, "insert": "x"}]),
    }
}

fn base_value(items: usize) -> Value {
    json!({
        "status": "start",
        "count": 0,
        "findings": [],
        "text": "shared notes",
        "items": (0..items).map(item).collect::<Vec<_>>(),
    })
}

fn item(i: usize) -> Value {
    json!(format!("{i:>7} {}", "x".repeat(1000)))
}

const TEXT: &[&str] = &["/text"];
const COUNTERS: &[&str] = &["/count"];

/// Runs every cell; `progress` hears each as it starts.
pub async fn run(
    concord: &LocalConcord,
    options: &GrowthOptions,
    progress: &mut impl FnMut(&str),
) -> Result<Vec<GrowthRow>, BenchError> {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for &size in &options.sizes {
        for edit in EDITS {
            let url = sized_document(concord, &client, size).await?;
            for &agents in &options.agents {
                let row = cell(concord, &client, &url, "size", edit, agents, options).await?;
                progress(&row.line());
                rows.push(row);
            }
        }
    }
    for &history in &options.histories {
        for edit in EDITS {
            progress(&format!("growth: building {history} changes of {edit}"));
            let url = long_document(concord, &client, edit, history).await?;
            for &agents in &options.agents {
                let row = cell(concord, &client, &url, "history", edit, agents, options).await?;
                progress(&row.line());
                rows.push(row);
            }
        }
    }
    Ok(rows)
}

impl GrowthRow {
    /// The row as one line of text.
    pub fn line(&self) -> String {
        format!(
            "{:<7} {:>9} B {:>7} changes, {:<9} {:>3} agents: {:>7.0} PATCH/s, p50 {:>6.2} ms",
            self.axis,
            self.doc_bytes,
            self.changes,
            self.edit,
            self.agents,
            self.per_sec,
            self.p50_ms
        )
    }
}

/// A document of about `size` bytes: created small, then 1 MB appended at a time.
async fn sized_document(
    concord: &LocalConcord,
    client: &reqwest::Client,
    size: usize,
) -> Result<String, BenchError> {
    let total = (size / 1024).max(1);
    let first = total.min(1024);
    let url = create(concord, client, base_value(first)).await?;
    let mut have = first;
    while have < total {
        let batch: Vec<Value> = (have..total.min(have + 1024))
            .map(|i| json!({"op": "add", "path": "/items/-", "value": item(i)}))
            .collect();
        have += batch.len();
        patch(client, &url, &Value::Array(batch)).await?;
    }
    Ok(url)
}

/// A small document with `history` changes of `edit` (the first one included).
async fn long_document(
    concord: &LocalConcord,
    client: &reqwest::Client,
    edit: &str,
    history: usize,
) -> Result<String, BenchError> {
    let url = create(concord, client, base_value(1)).await?;
    let raw = client
        .get(format!("{url}/changes"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Io(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let (mut doc, _) = Document::load(schema(), None, &[raw.to_vec()])
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    let meta = WriteMeta {
        agent: "history".into(),
        time_ms: 0,
        message: None,
    };
    let mut sent = doc.version();
    for n in 1..history {
        let ops: Vec<PatchOp> = serde_json::from_value(edit_ops(edit, n))
            .map_err(|e| BenchError::Invalid(e.to_string()))?;
        doc.patch(None, &ops, &meta)
            .map_err(|e| BenchError::Invalid(e.to_string()))?;
        if n % 5000 == 0 || n + 1 == history {
            let bytes = doc
                .changes_since(Some(&sent))
                .map_err(|e| BenchError::Invalid(e.to_string()))?;
            fetch_json(
                client
                    .post(format!("{url}/changes"))
                    .header("content-type", "application/octet-stream")
                    .header("prefer", "return=minimal")
                    .body(bytes),
            )
            .await?;
            sent = doc.version();
        }
    }
    Ok(url)
}

fn schema() -> Schema {
    Schema {
        text: TEXT.iter().map(|s| s.to_string()).collect(),
        counters: COUNTERS.iter().map(|s| s.to_string()).collect(),
        ..Schema::default()
    }
}

async fn create(
    concord: &LocalConcord,
    client: &reqwest::Client,
    value: Value,
) -> Result<String, BenchError> {
    let body = fetch_json(
        client
            .post(format!("http://{}/v1/docs", concord.addr))
            .header("prefer", "return=minimal")
            .json(&json!({"value": value, "text": TEXT, "counters": COUNTERS})),
    )
    .await?;
    let id = body["id"].as_str().unwrap_or_default();
    Ok(format!("http://{}/v1/docs/{id}", concord.addr))
}

/// One PATCH, answered minimal; its latency.
async fn patch(client: &reqwest::Client, url: &str, ops: &Value) -> Result<Duration, BenchError> {
    let request = client
        .patch(url)
        .header("content-type", "application/json-patch+json")
        .header("concord-agent", "growth")
        .header("prefer", "return=minimal")
        .body(ops.to_string());
    Ok(timed_write(request).await?.0)
}

async fn cell(
    concord: &LocalConcord,
    client: &reqwest::Client,
    url: &str,
    axis: &'static str,
    edit: &'static str,
    agents: usize,
    options: &GrowthOptions,
) -> Result<GrowthRow, BenchError> {
    let id = url
        .rsplit('/')
        .next()
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .ok_or_else(|| BenchError::Invalid(format!("no document id in {url}")))?;
    let (changes, doc_bytes) = concord
        .state
        .registry
        .read::<_, concord_server::registry::Error>(id, |l| {
            Ok((l.doc.change_count(), l.doc.json_bytes()))
        })
        .await
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    let per_agent = (options.writes / agents).max(options.min_per_agent);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(agents);
    for a in 0..agents {
        // Its own client: its own keep-alive connection.
        let client = if agents == 1 {
            client.clone()
        } else {
            reqwest::Client::new()
        };
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_agent);
            for w in 0..per_agent {
                let elapsed = patch(&client, &url, &edit_ops(edit, a * per_agent + w)).await?;
                latencies.push(elapsed.as_secs_f64() * 1000.0);
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(per_agent * agents);
    for task in tasks {
        latencies.extend(task.await.map_err(|e| BenchError::Io(e.to_string()))??);
    }
    let wall = started.elapsed();
    Ok(GrowthRow {
        axis,
        doc_bytes,
        changes,
        edit,
        agents,
        writes: latencies.len(),
        per_sec: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: percentile(&latencies, 0.5),
    })
}
