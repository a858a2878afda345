//! Prometheus metrics at `/metrics` (the `metrics` facade, rendered by its Prometheus
//! exporter).
//!
//! Counters and histograms are recorded where things happen (the request layer, the write
//! path, the store's group commit, the MCP tools); gauges that are a count of something the
//! server holds (documents in memory) are read when scraped. The recorder is process-wide,
//! as the `metrics` facade is: several servers in one process (the tests) share it.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `concord_http_requests_total` | counter | `method`, `route`, `status` |
//! | `concord_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `concord_writes_total` | counter | `strategy`: writes applied to documents (creates not counted) |
//! | `concord_writes_merged_total` | counter | `strategy`: writes made at a stale base and merged into the present |
//! | `concord_lost_edits_total` | counter | edits recorded as lost (hidden by a concurrent delete or move) |
//! | `concord_refusals_total` | counter | `kind`: `stale-version` (412), `if-match-required` (428), `fenced` (409), … |
//! | `concord_store_commits_total` | counter | `store` |
//! | `concord_store_group_batches` | histogram | `store`: writes per group commit |
//! | `concord_store_commit_seconds` | histogram | `store`: the COMMIT, fsync included |
//! | `concord_store_stopped_total` | counter | `store`: the writer stopped after a failed write (fail-stop) |
//! | `concord_documents_in_memory` | gauge | |
//! | `concord_connections` | gauge | open TCP connections |
//! | `concord_live_subscribers` | gauge | WebSocket and SSE subscriptions to a document |
//! | `concord_mcp_tool_calls_total` | counter | `tool`, `outcome` (`ok`, `error`) |

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Response};
use axum::middleware::Next;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Requests answered, by method, matched route and status.
pub const HTTP_REQUESTS: &str = "concord_http_requests_total";
/// Request latency in seconds, by method and matched route.
pub const HTTP_DURATION: &str = "concord_http_request_duration_seconds";
/// Writes applied, by strategy.
pub const WRITES: &str = "concord_writes_total";
/// Writes made at a stale base and merged into the present, by strategy.
pub const WRITES_MERGED: &str = "concord_writes_merged_total";
/// Edits recorded as lost by the writes that hid them.
pub const LOST_EDITS: &str = "concord_lost_edits_total";
/// Writes refused by their strategy's policy, by kind (the problem type's last part).
pub const REFUSALS: &str = "concord_refusals_total";
/// Group commits that stored something, by store.
pub const STORE_COMMITS: &str = "concord_store_commits_total";
/// Writes stored per group commit, by store.
pub const STORE_GROUP: &str = "concord_store_group_batches";
/// Time of a group's COMMIT (the fsync included), by store.
pub const STORE_COMMIT_SECONDS: &str = "concord_store_commit_seconds";
/// Times a store's writer stopped after a failed write (it then refuses every write until
/// the server restarts), by store.
pub const STORE_STOPPED: &str = "concord_store_stopped_total";
/// Documents held in memory.
pub const DOCUMENTS: &str = "concord_documents_in_memory";
/// Open TCP connections.
pub const CONNECTIONS: &str = "concord_connections";
/// WebSocket and Server-Sent Events subscriptions to a document.
pub const LIVE_SUBSCRIBERS: &str = "concord_live_subscribers";
/// MCP tool calls, by tool and outcome.
pub const MCP_TOOL_CALLS: &str = "concord_mcp_tool_calls_total";

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Group sizes: 1 to 1024 writes.
const GROUP_SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];

/// The process's recorder, installed on first use. `None` if another recorder was
/// installed first by the program embedding the server: then `/metrics` says so.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    SECONDS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        metrics_exporter_prometheus::Matcher::Full(STORE_GROUP.into()),
                        GROUP_SIZES,
                    )
                })
                .expect("bucket lists are not empty")
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is empty");
                    None
                }
            }
        })
        .as_ref()
}

/// The request layer: counts each request and times it, by its matched route (the
/// pattern, such as `/v1/docs/{id}`, so that ids do not become labels).
pub async fn track(request: Request, next: Next) -> Response<axum::body::Body> {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_DURATION, "method" => method.clone(), "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// Counts one of something held (a connection, a subscription) while it lives.
pub struct Held(&'static str);

impl Held {
    /// One more of `gauge`, until dropped.
    pub fn new(gauge: &'static str) -> Held {
        metrics::gauge!(gauge).increment(1.0);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// This server's metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "service",
    description = "Prometheus metrics: requests, writes, refusals, store commits, documents in \
                   memory, connections, live subscribers, MCP tool calls. With auth on, admin only.",
    responses((status = 200, description = "The Prometheus text format.",
        content_type = "text/plain; version=0.0.4", body = String)))]
pub async fn scrape(State(state): State<Arc<AppState>>) -> Response<axum::body::Body> {
    metrics::gauge!(DOCUMENTS).set(state.registry.loaded_count() as f64);
    let body = match handle() {
        Some(handle) => handle.render(),
        None => "# another metrics recorder is installed in this process\n".to_owned(),
    };
    let mut response = Response::new(axum::body::Body::from(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
