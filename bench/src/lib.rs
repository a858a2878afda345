//! `concord bench`: Concord measured beside its baselines, in one run, so that every figure
//! that matters is a ratio against something measured on the same machine at the same time.
//!
//! # Layout
//! - [`trace`]: the editing trace through a `String`, raw Automerge and Concord's text path.
//! - [`textput`]: whole-text PUTs (a replacement, a one-line edit) against `update_text`.
//! - [`http`]: loopback HTTP writes, crdt against lww against a no-op endpoint.
//! - [`stale`]: whole-document writes from bases 1, 10 and 100 versions old.
//! - [`answer`]: small writes on growing documents, answered whole and minimal.
//! - [`growth`]: small writes of four kinds as a document grows in size and in history, at
//!   1 and 64 agents.
//! - [`fanout`]: one writer, many WebSocket subscribers.
//! - [`scale`]: memory with many idle documents, per open document, cold reads.
//! - [`cluster`]: one node against two nodes on PostgreSQL (when a database is given).
//! - [`peer`]: the official automerge-repo sync server against Concord's `/v1/repo`,
//!   driven by the same JavaScript client workload.
//! - [`report`]: the table and the JSON.
//!
//! A smoke run ([`BenchOptions::smoke`]) exercises every section with tiny sizes; the test
//! suite runs it to check the harness works. It asserts no timing.
//!
//! # Who depends on it
//! The `concord` binary (`concord bench`: its flags are the binary's, mapped to
//! [`BenchOptions`]; [`run`] reports each step it starts through a callback) and the
//! end-to-end tests (`tests/bench_smoke.rs`). It depends on `concord-server` for the servers
//! it measures in-process, and drives `bench/peer/` (Node, beside this crate's `src/`) for
//! the peer section.
#![warn(missing_docs, unreachable_pub)]

pub mod answer;
pub mod busy;
pub mod cluster;
pub mod fanout;
pub mod growth;
pub mod http;
pub mod memory;
pub mod peer;
pub mod report;
pub mod scale;
pub mod stale;
pub mod textput;
pub mod trace;
pub mod tracehttp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use concord_core::storage::Store;
use concord_server::registry::Tuning;
use concord_server::sqlite::SqliteStore;
use concord_server::{AppState, Config, Server};
use serde::Serialize;
use serde_json::Value;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An input it needs is missing (the editing trace, say).
    #[error("{0}")]
    Missing(String),
    /// Something measured did not behave (a write refused, a wrong result).
    #[error("{0}")]
    Invalid(String),
    /// A server, socket or file failed.
    #[error("{0}")]
    Io(String),
}

/// What to run, and how big.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Tiny sizes everywhere: checks the harness, measures nothing meaningful.
    pub smoke: bool,
    /// Sections to run (all when empty): trace, tracehttp, textput, http, stale, busy,
    /// answer, growth, fanout, scale, memory, peer, cluster.
    pub only: Vec<String>,
    /// The editing trace file.
    pub trace: PathBuf,
    /// The `concord` binary, for the scale section's child servers (in-process if none).
    pub exe: Option<PathBuf>,
}

/// Every section, by the name [`BenchOptions::only`] gives it.
pub const SECTIONS: [&str; 13] = [
    "trace",
    "tracehttp",
    "textput",
    "http",
    "stale",
    "busy",
    "answer",
    "growth",
    "fanout",
    "scale",
    "memory",
    "peer",
    "cluster",
];

impl BenchOptions {
    fn wants(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

/// Every section's results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchReport {
    /// The machine: cores and a description.
    pub machine: Value,
    /// Editing trace.
    pub trace: Option<trace::TraceReport>,
    /// Editing trace over HTTP.
    pub tracehttp: Option<tracehttp::TraceHttpReport>,
    /// Whole-text PUTs.
    pub textput: Vec<textput::TextPutRow>,
    /// HTTP writes.
    pub http: Vec<http::HttpRow>,
    /// Stale-base merges.
    pub stale: Vec<stale::StaleRow>,
    /// Answers while heavy edits run.
    pub busy: Option<busy::BusyReport>,
    /// Whole against minimal write answers.
    pub answer: Vec<answer::AnswerRow>,
    /// Small writes as documents grow.
    pub growth: Vec<growth::GrowthRow>,
    /// Fan-out.
    pub fanout: Vec<fanout::FanoutRow>,
    /// Scale of documents.
    pub scale: Option<scale::ScaleReport>,
    /// Memory of one document's large rewrites against the history budget.
    pub memory: Option<memory::MemoryReport>,
    /// The automerge-repo sync server against Concord.
    pub peer: Option<peer::PeerReport>,
    /// One node against two on PostgreSQL.
    pub cluster: Vec<cluster::ClusterRow>,
    /// Sections skipped, with why.
    pub skipped: Vec<String>,
}

/// A Concord server in this process over a SQLite store in a temporary folder, with the
/// store at hand for its counters.
pub struct LocalConcord {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its store.
    pub store: Arc<SqliteStore>,
    /// Its shared state.
    pub state: Arc<AppState>,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl LocalConcord {
    /// Starts one.
    pub async fn start(tuning: Tuning) -> Result<LocalConcord, BenchError> {
        let dir = tempfile::tempdir().map_err(|e| BenchError::Io(e.to_string()))?;
        let store = Arc::new(trace::open_store(dir.path())?);
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: dir.path().to_path_buf(),
            tuning,
            // The fan-out section opens a thousand WebSockets at once.
            limits: concord_server::limits::Limits {
                max_connections: 4096,
                ..Default::default()
            },
            ..Config::default()
        };
        let server = Server::start_with_store(Arc::clone(&store) as Arc<dyn Store>, config)
            .await
            .map_err(|e| BenchError::Io(e.to_string()))?;
        Ok(LocalConcord {
            addr: server.addr(),
            state: Arc::clone(server.state()),
            store,
            server: Some(server),
            _dir: dir,
        })
    }

    /// Creates `count` documents with `value` and `strategy`; returns their URLs.
    pub async fn create_docs(
        &self,
        client: &reqwest::Client,
        count: usize,
        strategy: &str,
        value: Value,
    ) -> Result<Vec<String>, BenchError> {
        let mut urls = Vec::with_capacity(count);
        for _ in 0..count {
            let body: Value = fetch_json(
                client
                    .post(format!("http://{}/v1/docs", self.addr))
                    .json(&serde_json::json!({"value": value, "strategy": strategy})),
            )
            .await?;
            let id = body["id"].as_str().unwrap_or_default();
            urls.push(format!("http://{}/v1/docs/{id}", self.addr));
        }
        Ok(urls)
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.shutdown().await;
        }
    }
}

/// Sends a request and reads its JSON answer; an error status is an error.
pub(crate) async fn fetch_json(request: reqwest::RequestBuilder) -> Result<Value, BenchError> {
    request
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BenchError::Io(e.to_string()))?
        .json()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))
}

/// Sends a write and reads its answer whole; its latency (send to the answer's last byte)
/// and the answer's body. An error status is an error, with the body's text.
pub(crate) async fn timed_write(
    request: reqwest::RequestBuilder,
) -> Result<(Duration, axum::body::Bytes), BenchError> {
    let started = std::time::Instant::now();
    let response = request
        .send()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let elapsed = started.elapsed();
    if !status.is_success() {
        return Err(BenchError::Invalid(format!(
            "write got {status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    Ok((elapsed, body))
}

/// The `q` quantile of `values` (nearest rank), 0 for none.
pub fn percentile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs the chosen sections; `progress` hears what is running.
pub async fn run(
    options: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    let mut report = BenchReport {
        machine: serde_json::json!({
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "smoke": options.smoke,
        }),
        ..BenchReport::default()
    };
    let work = tempfile::tempdir().map_err(|e| BenchError::Io(e.to_string()))?;

    if options.wants("trace") {
        progress("trace: replaying the editing trace");
        match trace::load(&options.trace) {
            Ok(mut edits) => {
                if options.smoke {
                    edits.truncate(2000);
                }
                let rounds = if options.smoke { 1 } else { 3 };
                report.trace = Some(trace::run(&edits, &work.path().join("trace"), rounds).await?);
            }
            Err(BenchError::Missing(why)) => report.skipped.push(format!("trace: {why}")),
            Err(e) => return Err(e),
        }
    }

    if options.wants("textput") {
        progress("textput: whole-text PUTs against update_text");
        let (sizes, baseline_max, rounds): (&[usize], usize, usize) = if options.smoke {
            (&[2_000], 2_000, 1)
        } else {
            (&[40_000, 200_000], 40_000, 3)
        };
        report.textput = textput::run(sizes, baseline_max, rounds)?;
    }

    let tuning = Tuning {
        idle_evict: if options.smoke {
            Duration::ZERO
        } else {
            Tuning::default().idle_evict
        },
        ..Tuning::default()
    };
    let needs_local = [
        "tracehttp",
        "http",
        "stale",
        "busy",
        "answer",
        "growth",
        "fanout",
    ]
    .iter()
    .any(|s| options.wants(s))
        || (options.wants("scale") && options.exe.is_none());
    if needs_local {
        let concord = LocalConcord::start(tuning).await?;
        if options.wants("tracehttp") {
            progress("tracehttp: the editing trace, one PATCH per edit");
            match trace::load(&options.trace) {
                Ok(mut edits) => {
                    if options.smoke {
                        edits.truncate(500);
                    }
                    report.tracehttp =
                        Some(tracehttp::run(&concord, &edits, &mut progress, 20_000).await?);
                }
                Err(BenchError::Missing(why)) => report.skipped.push(format!("tracehttp: {why}")),
                Err(e) => return Err(e),
            }
        }
        if options.wants("http") {
            let (agents, per_run, spread): (&[usize], usize, usize) = if options.smoke {
                (&[1, 4], 40, 10)
            } else {
                (&[1, 8, 64, 256], 3000, 1000)
            };
            report.http = http::run(&concord, agents, per_run, spread, &mut progress).await?;
        }
        if options.wants("stale") {
            progress("stale: merging from old bases");
            let writes = if options.smoke { 5 } else { 200 };
            report.stale = stale::run(&concord, &[1, 10, 100], writes).await?;
        }
        if options.wants("busy") {
            progress("busy: /healthz and reads while two long stale patches run");
            let (list, ops) = if options.smoke {
                (200, 200)
            } else {
                (10_000, 10_000)
            };
            report.busy = Some(busy::run(&concord, list, ops).await?);
        }
        if options.wants("answer") {
            progress("answer: small writes answered whole and minimal");
            let (sizes, writes): (&[usize], usize) = if options.smoke {
                (&[1024, 16 * 1024], 5)
            } else {
                (&[1024, 100 * 1024, 1024 * 1024], 200)
            };
            report.answer = answer::run(&concord, sizes, writes).await?;
        }
        if options.wants("growth") {
            let growth = if options.smoke {
                growth::GrowthOptions {
                    sizes: vec![1024, 16 * 1024],
                    histories: vec![10, 100],
                    agents: vec![1, 4],
                    writes: 8,
                    min_per_agent: 2,
                }
            } else {
                growth::GrowthOptions {
                    sizes: vec![1024, 100 * 1024, 1024 * 1024, 10 * 1024 * 1024],
                    histories: vec![100, 10_000, 100_000],
                    agents: vec![1, 64],
                    writes: 1000,
                    min_per_agent: 8,
                }
            };
            report.growth = growth::run(&concord, &growth, &mut progress).await?;
        }
        if options.wants("fanout") {
            progress("fanout: one writer, many subscribers");
            let (counts, writes): (&[usize], usize) = if options.smoke {
                (&[5], 3)
            } else {
                (&[100, 1000], 50)
            };
            report.fanout = fanout::run(&concord, counts, writes).await?;
        }
        if options.wants("scale") && options.exe.is_none() {
            progress("scale: in-process (no binary given)");
            report.scale =
                Some(scale::smoke(&concord, if options.smoke { 50 } else { 2000 }).await?);
        }
        concord.stop().await;
    }
    if options.wants("scale") {
        if let Some(exe) = &options.exe {
            progress("scale: many idle documents in a child server");
            let counts: &[usize] = if options.smoke {
                &[100]
            } else {
                &[10_000, 100_000]
            };
            report.scale = Some(
                scale::run(
                    exe,
                    counts,
                    if options.smoke { 50 } else { 2000 },
                    work.path(),
                )
                .await?,
            );
        }
    }
    if options.wants("memory") {
        match &options.exe {
            Some(exe) => {
                progress("memory: large rewrites of one document against the history budget");
                let (puts, value, budget) = if options.smoke {
                    (12, 64 * 1024, 256 * 1024)
                } else {
                    (
                        150,
                        4 * 1024 * 1024,
                        concord_server::registry::DEFAULT_MAX_HISTORY_BYTES,
                    )
                };
                report.memory = Some(memory::run(exe, work.path(), puts, value, budget).await?);
            }
            None => report
                .skipped
                .push("memory: needs the concord binary to run as a child process".into()),
        }
    }
    if options.wants("cluster") {
        match cluster::url_from_env() {
            Some(url) => {
                progress("cluster: one node against two on PostgreSQL");
                let (agents, writes, docs) = if options.smoke { (4, 40, 8) } else { (64, 3000, 200) };
                report.cluster = cluster::run(&url, agents, writes, docs).await?;
            }
            None => report.skipped.push(
                "cluster: set CONCORD_BENCH_POSTGRES (or CONCORD_TEST_POSTGRES) to a postgres:// URL".into(),
            ),
        }
    }
    if options.wants("peer") {
        progress("peer: the automerge-repo sync server against Concord's /v1/repo");
        let peer = if options.smoke {
            peer::smoke().await
        } else {
            peer::run(&peer::PeerOptions::default()).await
        }
        .map_err(|e| BenchError::Io(format!("peer: {e}")))?;
        if let Some(why) = &peer.skipped {
            report.skipped.push(format!("peer: {why}"));
        }
        report.peer = Some(peer);
    }
    Ok(report)
}
