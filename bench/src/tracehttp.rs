//! The editing trace over HTTP: every edit one `PATCH` with a `splice` operation, sent by one
//! agent on one keep-alive connection, each acknowledged only once durable; against
//! Concord's in-process text path (`Document::patch`, as the trace section times it) in
//! the same run. The final text must be the trace's.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::trace::{time_concord, Edit};
use super::{fetch_json, percentile, timed_write, BenchError, LocalConcord};

/// The replay's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TraceHttpReport {
    /// Edits sent (every one acknowledged).
    pub edits: usize,
    /// Time for all of them, seconds.
    pub secs: f64,
    /// Edits per second.
    pub per_sec: f64,
    /// Median PATCH latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The in-process text path on the same edits, seconds.
    pub in_process_secs: f64,
    /// SHA-256 of the final text, as the server reads it back.
    pub sha256: String,
    /// True if it is the in-process replay's text.
    pub matches: bool,
}

/// Replays `edits` over HTTP, reporting progress every `every` edits.
pub async fn run(
    concord: &LocalConcord,
    edits: &[Edit],
    progress: &mut impl FnMut(&str),
    every: usize,
) -> Result<TraceHttpReport, BenchError> {
    let client = reqwest::Client::new();
    let created = fetch_json(
        client
            .post(format!("http://{}/v1/docs", concord.addr))
            .json(&json!({"value": {"text": ""}, "text": ["/text"]})),
    )
    .await?;
    let url = format!(
        "http://{}/v1/docs/{}",
        concord.addr,
        created["id"].as_str().unwrap_or_default()
    );
    let mut latencies = Vec::with_capacity(edits.len());
    let started = Instant::now();
    for (i, edit) in edits.iter().enumerate() {
        let op = json!([{"op": "splice", "path": "/text", "pos": edit.pos, "del": edit.del, "insert": edit.insert}]);
        let request = client
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .header("concord-agent", "trace")
            .header("prefer", "return=minimal")
            .body(op.to_string());
        let (elapsed, _) = timed_write(request).await?;
        latencies.push(ms(elapsed));
        if (i + 1) % every == 0 {
            progress(&format!(
                "trace over HTTP: {} of {} edits, {:.0}/s",
                i + 1,
                edits.len(),
                (i + 1) as f64 / started.elapsed().as_secs_f64()
            ));
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let read = fetch_json(client.get(&url)).await?;
    let text = read["value"]["text"].as_str().unwrap_or_default();
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let (in_process, doc) = time_concord(edits)?;
    let expected = doc.value()["text"].as_str().unwrap_or_default().to_owned();
    Ok(TraceHttpReport {
        edits: edits.len(),
        secs,
        per_sec: edits.len() as f64 / secs.max(1e-9),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        in_process_secs: in_process.as_secs_f64(),
        sha256,
        matches: text == expected,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
