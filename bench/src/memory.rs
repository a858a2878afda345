//! What one document's writers can make the server hold: a `concord serve` child process,
//! one document, and PUTs that each replace one large value (the document stays that size,
//! its history grows by it each time) until the history budget refuses them. Resident
//! memory at the start, the end and the peak, against the budget; then the peak while
//! readers fetch the whole history at once (`GET …/changes`, streamed a batch at a time).

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::scale::Child;
use super::{fetch_json, BenchError};

/// The section's figures.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    /// PUTs sent.
    pub puts: usize,
    /// Bytes of the value each replaces.
    pub value_bytes: usize,
    /// The history budget the server ran with.
    pub budget_bytes: u64,
    /// PUTs answered 200.
    pub accepted: usize,
    /// PUTs answered 413 `history-too-large`.
    pub refused: usize,
    /// Resident memory before the first PUT, MB.
    pub start_rss_mb: f64,
    /// After the last, MB.
    pub end_rss_mb: f64,
    /// The highest it was, MB.
    pub peak_rss_mb: f64,
    /// Readers that then fetched every change at once.
    pub readers: usize,
    /// Bytes of changes each received.
    pub changes_bytes: usize,
    /// The highest resident memory after they had, MB.
    pub peak_after_reads_mb: f64,
}

/// Readers of the whole history at once.
const READERS: usize = 3;

/// Runs `puts` PUTs of `value_bytes`-byte values against a child `exe` with `budget`.
pub async fn run(
    exe: &Path,
    work: &Path,
    puts: usize,
    value_bytes: usize,
    budget: u64,
) -> Result<MemoryReport, BenchError> {
    let data = work.join("memory");
    let budget_flag = budget.to_string();
    let child = Child::start(exe, &data, &["--max-history-bytes", &budget_flag]).await?;
    let client = reqwest::Client::new();
    let created = fetch_json(
        client
            .post(format!("http://{}/v1/docs", child.addr))
            .json(&json!({"value": {"v": ""}})),
    )
    .await?;
    let url = format!(
        "http://{}/v1/docs/{}",
        child.addr,
        created["id"].as_str().unwrap_or_default()
    );
    let start_rss_mb = child.rss_mb();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..puts {
        let response = client
            .put(&url)
            .header("if-match", "*")
            .json(&json!({ "v": incompressible(i as u64, value_bytes) }))
            .send()
            .await
            .map_err(|e| BenchError::Io(e.to_string()))?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| BenchError::Io(e.to_string()))?;
        match status {
            200 => accepted += 1,
            413 if String::from_utf8_lossy(&body).contains("history-too-large") => refused += 1,
            _ => {
                return Err(BenchError::Invalid(format!(
                    "PUT {i} got {status}: {}",
                    String::from_utf8_lossy(&body)
                )))
            }
        }
    }
    let (end_rss_mb, peak_rss_mb) = (child.rss_mb(), child.peak_mb());
    let reads = (0..READERS).map(|_| read_all(&client, format!("{url}/changes")));
    let sizes = futures_util::future::try_join_all(reads).await?;
    Ok(MemoryReport {
        puts,
        value_bytes,
        budget_bytes: budget,
        accepted,
        refused,
        start_rss_mb,
        end_rss_mb,
        peak_rss_mb,
        readers: READERS,
        changes_bytes: sizes.into_iter().max().unwrap_or(0),
        peak_after_reads_mb: child.peak_mb(),
    })
}

/// Reads a body to its end without keeping it; its length.
async fn read_all(client: &reqwest::Client, url: String) -> Result<usize, BenchError> {
    let io = |e: reqwest::Error| BenchError::Io(e.to_string());
    let mut response = client.get(&url).send().await.map_err(io)?;
    if !response.status().is_success() {
        return Err(BenchError::Invalid(format!(
            "GET {url}: {}",
            response.status()
        )));
    }
    let mut bytes = 0;
    while let Some(chunk) = response.chunk().await.map_err(io)? {
        bytes += chunk.len();
    }
    Ok(bytes)
}

/// `len` characters no compressor shrinks much: hex of a xorshift generator seeded with
/// `seed` (the same seed, the same text).
pub fn incompressible(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out.truncate(len);
    out
}
