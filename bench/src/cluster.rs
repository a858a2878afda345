//! One node against two nodes on PostgreSQL: the same concurrent writes, spread over many
//! documents, sent to one node or shared between two nodes of one database.

use std::net::SocketAddr;

use concord_server::{Config, Server};
use serde::Serialize;
use serde_json::json;

use super::{fetch_json, http, percentile, BenchError};

/// One measured cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRow {
    /// Nodes sharing the database.
    pub nodes: usize,
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
}

/// `url` with the connection's schema set to `schema`.
fn with_schema(url: &str, schema: &str) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!("{url}{join}schema={schema}")
}

/// Runs 1 and 2 nodes over a fresh schema each, dropped afterwards.
pub async fn run(
    url: &str,
    agents: usize,
    writes: usize,
    docs: usize,
) -> Result<Vec<ClusterRow>, BenchError> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .map_err(|e| BenchError::Io(e.to_string()))?;
    let mut rows = Vec::new();
    for nodes in [1usize, 2] {
        let schema = format!("concord_bench_{}", uuid::Uuid::new_v4().simple());
        let result = measure(
            &client,
            &with_schema(url, &schema),
            nodes,
            agents,
            writes,
            docs,
        )
        .await;
        drop_schema(url, &schema).await;
        rows.push(result?);
    }
    Ok(rows)
}

async fn measure(
    client: &reqwest::Client,
    url: &str,
    nodes: usize,
    agents: usize,
    writes: usize,
    docs: usize,
) -> Result<ClusterRow, BenchError> {
    let dir = tempfile::tempdir().map_err(|e| BenchError::Io(e.to_string()))?;
    let mut servers = Vec::with_capacity(nodes);
    for _ in 0..nodes {
        let config = Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data: dir.path().to_path_buf(),
            storage: Some(url.to_owned()),
            ..Config::default()
        };
        servers.push(
            Server::start(config)
                .await
                .map_err(|e| BenchError::Io(format!("start a PostgreSQL node: {e}")))?,
        );
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::addr).collect();
    // Each document is written through one node, the documents spread over the nodes.
    let mut urls = Vec::with_capacity(docs);
    for i in 0..docs {
        let body = fetch_json(
            client
                .post(format!("http://{}/v1/docs", addrs[0]))
                .json(&json!({"value": {}})),
        )
        .await?;
        let id = body["id"].as_str().unwrap_or_default();
        urls.push(format!("http://{}/v1/docs/{id}", addrs[i % nodes]));
    }
    let measured = http::drive(client, &urls, agents, writes, false).await;
    for server in servers {
        let _ = server.shutdown().await;
    }
    let (latencies, wall) = measured?;
    Ok(ClusterRow {
        nodes,
        agents,
        writes: latencies.len(),
        writes_per_sec: latencies.len() as f64 / wall.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

async fn drop_schema(url: &str, schema: &str) {
    match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok((db, connection)) => {
            let task = tokio::spawn(connection);
            if let Err(e) = db
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .await
            {
                tracing::warn!(%schema, error = %e, "could not drop the bench schema");
            }
            drop(db);
            let _ = task.await;
        }
        Err(e) => tracing::warn!(%schema, error = %e, "could not connect to drop the bench schema"),
    }
}

/// The PostgreSQL URL to use: `CONCORD_BENCH_POSTGRES`, else `CONCORD_TEST_POSTGRES`.
pub fn url_from_env() -> Option<String> {
    std::env::var("CONCORD_BENCH_POSTGRES")
        .or_else(|_| std::env::var("CONCORD_TEST_POSTGRES"))
        .ok()
        .filter(|u| !u.is_empty())
}
