//! HTTP writes on loopback: many agents doing small PATCH edits, on one hot document and
//! spread over many documents, under crdt and under lww (same server, same storage), and a
//! no-op axum endpoint as the ceiling of the HTTP stack.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use serde::Serialize;
use serde_json::json;

use super::{percentile, BenchError, LocalConcord};

/// Where the writes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Concord, one crdt document.
    CrdtHot,
    /// Concord, one lww document.
    LwwHot,
    /// Concord, crdt documents, writes spread over them.
    CrdtSpread,
    /// Concord, lww documents, writes spread over them.
    LwwSpread,
    /// An axum handler that answers at once: what the HTTP stack alone costs.
    Noop,
}

impl Target {
    /// Every target, in report order.
    pub const ALL: [Target; 5] = [
        Target::CrdtHot,
        Target::LwwHot,
        Target::CrdtSpread,
        Target::LwwSpread,
        Target::Noop,
    ];

    /// A short label.
    pub fn label(self) -> &'static str {
        match self {
            Target::CrdtHot => "crdt, 1 hot doc",
            Target::LwwHot => "lww, 1 hot doc",
            Target::CrdtSpread => "crdt, spread",
            Target::LwwSpread => "lww, spread",
            Target::Noop => "no-op endpoint",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct HttpRow {
    /// Where the writes went.
    pub target: Target,
    /// Concurrent agents.
    pub agents: usize,
    /// Acknowledged writes.
    pub writes: usize,
    /// Writes per second.
    pub writes_per_sec: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// SQLite commits (fsyncs) per acknowledged write; none for the no-op endpoint.
    pub fsyncs_per_write: Option<f64>,
}

/// Runs every target at every agent count, `per_run` writes each (at least 4 per agent).
pub async fn run(
    concord: &LocalConcord,
    agent_counts: &[usize],
    per_run: usize,
    spread_docs: usize,
    mut progress: impl FnMut(&str),
) -> Result<Vec<HttpRow>, BenchError> {
    let noop = start_noop().await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let mut rows = Vec::new();
    for &agents in agent_counts {
        for target in Target::ALL {
            progress(&format!("http: {} with {agents} agents", target.label()));
            let urls = match target {
                Target::Noop => vec![format!("http://{noop}/noop")],
                Target::CrdtHot | Target::LwwHot | Target::CrdtSpread | Target::LwwSpread => {
                    let strategy = if matches!(target, Target::CrdtHot | Target::CrdtSpread) {
                        "crdt"
                    } else {
                        "lww"
                    };
                    let count = if matches!(target, Target::CrdtHot | Target::LwwHot) {
                        1
                    } else {
                        spread_docs
                    };
                    concord
                        .create_docs(&client, count, strategy, json!({}))
                        .await?
                }
            };
            let writes = per_run.max(agents * 4);
            let before = concord.store.stats();
            let (latencies, wall) =
                drive(&client, &urls, agents, writes, target == Target::Noop).await?;
            let after = concord.store.stats();
            let fsyncs_per_write = (target != Target::Noop).then(|| {
                let commits = (after.commits - before.commits) as f64;
                commits / latencies.len().max(1) as f64
            });
            rows.push(HttpRow {
                target,
                agents,
                writes: latencies.len(),
                writes_per_sec: latencies.len() as f64 / wall.as_secs_f64(),
                p50_ms: percentile(&latencies, 0.50),
                p99_ms: percentile(&latencies, 0.99),
                fsyncs_per_write,
            });
        }
    }
    Ok(rows)
}

/// `agents` tasks share `writes` small PATCHes over `urls` (document URLs or the no-op);
/// returns every latency (ms) and the wall time.
pub(crate) async fn drive(
    client: &reqwest::Client,
    urls: &[String],
    agents: usize,
    writes: usize,
    noop: bool,
) -> Result<(Vec<f64>, Duration), BenchError> {
    let urls = Arc::new(urls.to_vec());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for agent in 0..agents {
        let (client, urls) = (client.clone(), Arc::clone(&urls));
        let mine = writes / agents + usize::from(agent < writes % agents);
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(mine);
            for i in 0..mine {
                let url = &urls[(agent * 7919 + i) % urls.len()];
                let body = json!([{"op": "add", "path": format!("/a{agent}"), "value": i}]);
                let request = if noop {
                    client.post(url).json(&body)
                } else {
                    client
                        .patch(url)
                        .header("content-type", "application/json-patch+json")
                        .header("concord-agent", format!("bench-{agent}"))
                        .body(body.to_string())
                };
                let sent = Instant::now();
                let response = request
                    .send()
                    .await
                    .map_err(|e| BenchError::Io(e.to_string()))?;
                let status = response.status();
                response
                    .bytes()
                    .await
                    .map_err(|e| BenchError::Io(e.to_string()))?;
                if !status.is_success() {
                    return Err(BenchError::Invalid(format!("a bench write got {status}")));
                }
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, BenchError>(latencies)
        });
    }
    let mut all = Vec::with_capacity(writes);
    while let Some(done) = tasks.join_next().await {
        all.extend(done.map_err(|e| BenchError::Io(e.to_string()))??);
    }
    Ok((all, started.elapsed()))
}

/// An axum server with one handler that reads the body and answers `{}`.
async fn start_noop() -> Result<std::net::SocketAddr, BenchError> {
    let app = axum::Router::new().route(
        "/noop",
        post(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            axum::Json(json!({}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let addr = listener
        .local_addr()
        .map_err(|e| BenchError::Io(e.to_string()))?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}
