//! Scale of documents: resident memory with many stored documents that were each touched
//! once and went idle, memory per open document, and the time to first read of a cold one.
//!
//! The server runs as a child process (the `concord` binary itself) so that its resident
//! memory is its own; without a binary (the smoke test) it runs in-process and the figures
//! include the load generator.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{fetch_json, percentile, BenchError};

/// Memory with `docs` idle documents.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Documents stored, each created (touched) once.
    pub docs: usize,
    /// Resident memory of the server once they went idle, MB.
    pub idle_rss_mb: f64,
    /// Resident memory at its peak while creating them, MB.
    pub peak_rss_mb: f64,
    /// Creates per second.
    pub creates_per_sec: f64,
}

/// The whole section.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// One row per document count.
    pub rows: Vec<ScaleRow>,
    /// Resident memory per open (loaded, not idle) small document, KB.
    pub per_open_doc_kb: f64,
    /// First read of an evicted document: median, ms.
    pub cold_read_p50_ms: f64,
    /// Same, 99th percentile.
    pub cold_read_p99_ms: f64,
    /// True when the server ran in the bench's own process (figures include the client).
    pub in_process: bool,
}

/// A `concord serve` child process.
pub(crate) struct Child {
    process: tokio::process::Child,
    /// Where it listens: `127.0.0.1:PORT`.
    pub(crate) addr: String,
}

impl Child {
    /// Starts `exe serve` over `data` with `flags`, on a free port.
    pub(crate) async fn start(
        exe: &Path,
        data: &Path,
        flags: &[&str],
    ) -> Result<Child, BenchError> {
        let mut process = tokio::process::Command::new(exe)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(flags)
            .arg("--data")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Io(format!("start {}: {e}", exe.display())))?;
        let stdout = process
            .stdout
            .take()
            .ok_or_else(|| BenchError::Io("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| BenchError::Io("the server did not say where it listens".into()))?
            .map_err(|e| BenchError::Io(e.to_string()))?
            .unwrap_or_default();
        let addr = line
            .rsplit("http://")
            .next()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| BenchError::Io(format!("unexpected first line {line:?}")))?
            .to_owned();
        Ok(Child { process, addr })
    }

    /// Its resident memory now, MB.
    pub(crate) fn rss_mb(&self) -> f64 {
        self.process.id().map_or(0.0, |pid| {
            status_kb(&format!("/proc/{pid}/status"), "VmRSS:") / 1024.0
        })
    }

    /// Its highest resident memory so far, MB.
    pub(crate) fn peak_mb(&self) -> f64 {
        self.process.id().map_or(0.0, |pid| {
            status_kb(&format!("/proc/{pid}/status"), "VmHWM:") / 1024.0
        })
    }
}

/// A field of a /proc status file, in kB (0 where unavailable).
pub(crate) fn status_kb(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0.0)
}

/// Creates `n` small documents with 64 requests in flight; returns their ids and the rate.
async fn create_many(
    client: &reqwest::Client,
    addr: &str,
    n: usize,
) -> Result<(Vec<String>, f64), BenchError> {
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    let workers = 64.min(n.max(1));
    for w in 0..workers {
        let (client, addr) = (client.clone(), addr.to_owned());
        let mine = n / workers + usize::from(w < n % workers);
        tasks.spawn(async move {
            let mut ids = Vec::with_capacity(mine);
            for i in 0..mine {
                let body: serde_json::Value = fetch_json(
                    client
                        .post(format!("http://{addr}/v1/docs"))
                        .json(&json!({"value": {"title": format!("doc {w}-{i}"), "n": i}})),
                )
                .await?;
                ids.push(body["id"].as_str().unwrap_or_default().to_owned());
            }
            Ok::<_, BenchError>(ids)
        });
    }
    while let Some(done) = tasks.join_next().await {
        ids.extend(done.map_err(|e| BenchError::Io(e.to_string()))??);
    }
    Ok((ids, n as f64 / started.elapsed().as_secs_f64()))
}

async fn get_ms(client: &reqwest::Client, addr: &str, id: &str) -> Result<f64, BenchError> {
    let started = Instant::now();
    client
        .get(format!("http://{addr}/v1/docs/{id}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Io(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

/// Runs the section with the `concord` binary at `exe` (a child process per count).
pub async fn run(
    exe: &Path,
    counts: &[usize],
    open_docs: usize,
    work: &Path,
) -> Result<ScaleReport, BenchError> {
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    let mut cold = Vec::new();
    let mut per_open_doc_kb = 0.0;
    for (i, &n) in counts.iter().enumerate() {
        let data: PathBuf = work.join(format!("scale-{n}"));
        let child = Child::start(exe, &data, &["--idle-evict-secs", "1"]).await?;
        let (ids, creates_per_sec) = create_many(&client, &child.addr, n).await?;
        // Let every document go idle and the maintenance pass (every 5 s) drop it.
        tokio::time::sleep(Duration::from_secs(7)).await;
        rows.push(ScaleRow {
            docs: n,
            idle_rss_mb: child.rss_mb(),
            peak_rss_mb: child.peak_mb(),
            creates_per_sec,
        });
        if i == 0 {
            for id in ids.iter().step_by((ids.len() / 200).max(1)) {
                cold.push(get_ms(&client, &child.addr, id).await?);
            }
            drop(child);
            // Memory per open document: a server that keeps everything loaded.
            let child = Child::start(exe, &data, &["--idle-evict-secs", "3600"]).await?;
            let before = child.rss_mb();
            for id in ids.iter().take(open_docs) {
                get_ms(&client, &child.addr, id).await?;
            }
            let after = child.rss_mb();
            per_open_doc_kb = (after - before) * 1024.0 / open_docs.min(ids.len()).max(1) as f64;
        }
    }
    Ok(ScaleReport {
        rows,
        per_open_doc_kb,
        cold_read_p50_ms: percentile(&cold, 0.5),
        cold_read_p99_ms: percentile(&cold, 0.99),
        in_process: false,
    })
}

/// The smoke version: an in-process server, a few documents, no waiting for eviction
/// (maintenance is called directly).
pub async fn smoke(concord: &super::LocalConcord, n: usize) -> Result<ScaleReport, BenchError> {
    let client = reqwest::Client::new();
    let addr = concord.addr.to_string();
    let (ids, creates_per_sec) = create_many(&client, &addr, n).await?;
    concord.state.registry.maintain().await;
    let mut cold = Vec::new();
    for id in &ids {
        cold.push(get_ms(&client, &addr, id).await?);
    }
    let rss = status_kb("/proc/self/status", "VmRSS:") / 1024.0;
    Ok(ScaleReport {
        rows: vec![ScaleRow {
            docs: n,
            idle_rss_mb: rss,
            peak_rss_mb: status_kb("/proc/self/status", "VmHWM:") / 1024.0,
            creates_per_sec,
        }],
        per_open_doc_kb: 0.0,
        cold_read_p50_ms: percentile(&cold, 0.5),
        cold_read_p99_ms: percentile(&cold, 0.99),
        in_process: true,
    })
}
