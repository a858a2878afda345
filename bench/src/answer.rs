//! What a write's answer costs: small PATCHes (set one field) on documents of growing size,
//! answered whole (the value comes back) and with `Prefer: return=minimal` (the version
//! only), one after the other on one keep-alive connection.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::{percentile, timed_write, BenchError, LocalConcord};

/// One document size, answered one way.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerRow {
    /// The document's size as compact JSON, bytes.
    pub doc_bytes: usize,
    /// `whole` or `minimal`.
    pub answer: &'static str,
    /// PATCHes measured.
    pub writes: usize,
    /// PATCHes per second (time inside the requests only).
    pub per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// Bytes of one answer's body.
    pub answer_bytes: usize,
}

/// For each size in `sizes` (bytes, roughly), a document of that many 1 KB strings, then
/// `writes` PATCHes that set one field, answered whole, then as many answered minimal.
pub async fn run(
    concord: &LocalConcord,
    sizes: &[usize],
    writes: usize,
) -> Result<Vec<AnswerRow>, BenchError> {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    for &size in sizes {
        let items: Vec<Value> = (0..size.div_ceil(1024).max(1))
            .map(|i| json!(format!("{i:>6} {}", "x".repeat(1010))))
            .collect();
        let value = json!({"items": items, "n": 0});
        let doc_bytes = value.to_string().len();
        let url = concord
            .create_docs(&client, 1, "crdt", value)
            .await?
            .remove(0);
        for answer in ["whole", "minimal"] {
            let mut latencies = Vec::with_capacity(writes);
            let mut total = Duration::ZERO;
            let mut answer_bytes = 0;
            for w in 0..writes {
                let mut request = client
                    .patch(&url)
                    .header("content-type", "application/json-patch+json")
                    .header("concord-agent", "answer")
                    .body(json!([{"op": "replace", "path": "/n", "value": w}]).to_string());
                if answer == "minimal" {
                    request = request.header("prefer", "return=minimal");
                }
                let (elapsed, bytes) = timed_write(request).await?;
                total += elapsed;
                latencies.push(elapsed.as_secs_f64() * 1000.0);
                answer_bytes = bytes.len();
            }
            rows.push(AnswerRow {
                doc_bytes,
                answer,
                writes,
                per_sec: writes as f64 / total.as_secs_f64().max(1e-9),
                p50_ms: percentile(&latencies, 0.5),
                answer_bytes,
            });
        }
    }
    Ok(rows)
}
