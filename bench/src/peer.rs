//! Benchmark item 6, the peer: the official automerge-repo sync server against Concord's
//! `/v1/repo`, driven by one JavaScript client workload.
//!
//! [`run`] starts the Node sync server (`bench/peer/sync-server.mjs`: automerge-repo's `Repo`
//! with `NodeWSServerAdapter` over a `ws` server and `NodeFSStorageAdapter`, assembled as
//! automerge-repo-sync-server does it) on a free port with a temporary data folder, runs
//! `bench/peer/workload.mjs` against it, stops it; then starts Concord in-process on
//! `127.0.0.1:0` with a temporary data folder and runs the same workload against
//! `ws://ADDR/v1/repo`. The workload (see its header) has N clients, each its own `Repo` and
//! connection, editing one shared document (`one-doc`) and many documents (`many-docs`),
//! closed-loop: each change waits for the server's acknowledgement (the remote heads the
//! server reports) before the client's next round. Each run gives one [`PeerRow`] per server
//! and workload; [`PeerRatio`] divides Concord's figures by the peer's.
//!
//! Besides the rates, each row has the CPU time of the server's process and of the client
//! process over the measured span. All clients share one Node process (one core), and at
//! these sizes they are what saturates first: the server's CPU per change is then the figure
//! that compares the servers themselves.
//!
//! Without `node` (20 or later) or without `bench/peer/node_modules` (`npm ci --prefix
//! bench/peer`), [`run`] returns a report whose [`PeerReport::skipped`] says why, instead
//! of failing: the rest of the benchmark runs on machines without Node.
//!
//! Call it from a multi-thread tokio runtime: Concord serves from the caller's runtime, and a
//! single-threaded one would measure Concord on one core next to two Node processes.
//!
//! About 830 lines of code and 130 of tests in one file: the options, the Node processes
//! they become flags of, and the rows parsed from what those processes print are one
//! protocol between this file and `bench/peer/`, read and changed together.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use concord_server::{Config, Server, StartError};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;

/// How long the Node sync server may take to print its URL.
const START_PATIENCE: Duration = Duration::from_secs(30);
/// How long a stopped Node process may take to exit before it is killed.
const STOP_PATIENCE: Duration = Duration::from_secs(5);
/// Beyond the workload's own timeout: Node's start-up and the clients' shutdown.
const WORKLOAD_SLACK: Duration = Duration::from_secs(30);
/// automerge-repo's own sync debounce (ms): the client as shipped.
pub const SHIPPED_SYNC_DEBOUNCE_MS: u32 = 100;

/// Which server a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerServer {
    /// The official automerge-repo sync server (Node).
    AutomergeRepoSyncServer,
    /// Concord's `/v1/repo`.
    Concord,
}

impl PeerServer {
    /// The name in tables and JSON (also the workload's `--label`).
    pub fn name(self) -> &'static str {
        match self {
            PeerServer::AutomergeRepoSyncServer => "automerge-repo-sync-server",
            PeerServer::Concord => "concord",
        }
    }
}

impl fmt::Display for PeerServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which workload a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerWorkload {
    /// Every client edits one shared document.
    OneDoc,
    /// Every client edits its own documents, each followed by other clients.
    ManyDocs,
}

impl PeerWorkload {
    /// The name in tables, JSON and the workload script's `--workloads`.
    pub fn name(self) -> &'static str {
        match self {
            PeerWorkload::OneDoc => "one-doc",
            PeerWorkload::ManyDocs => "many-docs",
        }
    }
}

impl fmt::Display for PeerWorkload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The size of the one-document workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OneDocSize {
    /// Clients, each editing the one document.
    pub clients: u32,
    /// Changes each client makes.
    pub changes: u32,
}

/// The size of the many-documents workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ManyDocsSize {
    /// Clients.
    pub clients: u32,
    /// Documents each client creates and edits.
    pub docs: u32,
    /// Changes each client makes to each of its documents.
    pub changes: u32,
    /// Other clients that follow (find, do not edit) each document, so that every change
    /// also travels to a reader. Less than `clients`.
    pub followers: u32,
}

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerOptions {
    /// The Node executable.
    pub node: PathBuf,
    /// `bench/peer`: the scripts and their `node_modules`.
    pub dir: PathBuf,
    /// The one-document workload.
    pub one_doc: OneDocSize,
    /// The many-documents workload.
    pub many_docs: ManyDocsSize,
    /// The clients' sync debounce in ms ([`SHIPPED_SYNC_DEBOUNCE_MS`] is automerge-repo as
    /// shipped, which sends a document's changes at most ten times a second and so bounds
    /// each client's closed loop; 0 lets each change go out at once, which loads the
    /// server). The server's own debounce (the Node peer's) is never changed.
    pub client_sync_debounce_ms: u32,
    /// Bounds each workload run against each server (setup, edits and convergence).
    #[serde(rename = "timeout_ms", serialize_with = "as_millis")]
    pub timeout: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for PeerOptions {
    /// The sizes of the benchmark: 4 clients × 50 changes on one document; 8 clients × 20
    /// documents × 5 changes, each document followed by one other client.
    fn default() -> Self {
        PeerOptions {
            node: PathBuf::from("node"),
            dir: default_dir(),
            one_doc: OneDocSize {
                clients: 4,
                changes: 50,
            },
            many_docs: ManyDocsSize {
                clients: 8,
                docs: 20,
                changes: 5,
                followers: 1,
            },
            client_sync_debounce_ms: SHIPPED_SYNC_DEBOUNCE_MS,
            timeout: Duration::from_secs(120),
        }
    }
}

impl PeerOptions {
    /// Tiny sizes that check the whole path works (both servers, both workloads) in a few
    /// seconds; for smoke tests, which assert no timing.
    pub fn smoke() -> Self {
        PeerOptions {
            one_doc: OneDocSize {
                clients: 2,
                changes: 3,
            },
            many_docs: ManyDocsSize {
                clients: 2,
                docs: 2,
                changes: 2,
                followers: 1,
            },
            timeout: Duration::from_secs(60),
            ..PeerOptions::default()
        }
    }

    /// Checks the sizes are within what the workload script accepts.
    pub fn validate(&self) -> Result<(), PeerError> {
        let check = |name: &str, n: u32, min: u32, max: u32| {
            if n < min || n > max {
                Err(PeerError::Invalid(format!(
                    "{name} must be from {min} to {max}, not {n}"
                )))
            } else {
                Ok(())
            }
        };
        check("one-doc clients", self.one_doc.clients, 1, 256)?;
        check("one-doc changes", self.one_doc.changes, 1, 100_000)?;
        check("many-docs clients", self.many_docs.clients, 1, 256)?;
        check("many-docs documents", self.many_docs.docs, 1, 10_000)?;
        check("many-docs changes", self.many_docs.changes, 1, 100_000)?;
        check(
            "many-docs followers",
            self.many_docs.followers,
            0,
            self.many_docs.clients - 1,
        )?;
        check(
            "client sync debounce (ms)",
            self.client_sync_debounce_ms,
            0,
            10_000,
        )?;
        if self.timeout < Duration::from_secs(1) || self.timeout > Duration::from_secs(3600) {
            return Err(PeerError::Invalid(format!(
                "the timeout must be from 1 s to 1 h, not {:?}",
                self.timeout
            )));
        }
        Ok(())
    }

    fn workload_args(&self, server: PeerServer, url: &str, pid: Option<u32>) -> Vec<String> {
        let timeout_ms = self.timeout.as_millis().to_string();
        let pid = pid.map(|pid| ("--server-pid", pid.to_string()));
        [
            ("--url", url.to_owned()),
            ("--label", server.name().to_owned()),
            ("--workloads", "one-doc,many-docs".to_owned()),
            ("--one-clients", self.one_doc.clients.to_string()),
            ("--one-changes", self.one_doc.changes.to_string()),
            ("--many-clients", self.many_docs.clients.to_string()),
            ("--many-docs", self.many_docs.docs.to_string()),
            ("--many-changes", self.many_docs.changes.to_string()),
            ("--followers", self.many_docs.followers.to_string()),
            (
                "--client-sync-debounce-ms",
                self.client_sync_debounce_ms.to_string(),
            ),
            ("--timeout-ms", timeout_ms),
        ]
        .into_iter()
        .chain(pid)
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }
}

/// `bench/peer` of this source tree (beside this crate's `src/`).
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peer")
}

/// One server on one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// The server.
    pub server: PeerServer,
    /// The workload.
    pub workload: PeerWorkload,
    /// Clients (connections).
    pub clients: u32,
    /// Documents.
    pub docs: u32,
    /// Changes made and acknowledged, in all.
    pub changes: u64,
    /// Changes acknowledged by the server per second of wall time (setup not counted).
    pub changes_per_sec: f64,
    /// From the last edit until every replica (every client that has the document) holds
    /// every change, in ms.
    pub converge_ms: f64,
    /// From a change to the server's acknowledgement, median, in ms.
    pub ack_p50_ms: f64,
    /// From a change to the server's acknowledgement, 99th percentile, in ms.
    pub ack_p99_ms: f64,
    /// From the first edit to the last acknowledgement, in ms.
    pub wall_ms: f64,
    /// CPU time (user + system) of the server's process from the first edit until
    /// convergence, in ms (Linux only). Concord's is the benchmark's own process, which
    /// does nothing else meanwhile but wait for node.
    pub server_cpu_ms: Option<f64>,
    /// `server_cpu_ms` per change: the server's own cost, whatever limits the rate.
    pub server_cpu_ms_per_change: Option<f64>,
    /// CPU time of the client process (every client) over the same span, in ms: close to
    /// `wall_ms + converge_ms` means the clients saturate their core and bound the rate.
    pub client_cpu_ms: f64,
    /// Sync messages between the clients and the server (both ways, same span) per change:
    /// how much the server coalesces, and so how much work it gives the clients.
    pub messages_per_change: f64,
}

/// Concord's figures divided by the peer's, for one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerRatio {
    /// The workload.
    pub workload: PeerWorkload,
    /// Concord's changes/s over the peer's: above 1, Concord syncs more per second.
    pub changes_per_sec: f64,
    /// Concord's time to converge over the peer's: below 1, Concord converges sooner.
    pub converge: f64,
    /// Concord's server CPU per change over the peer's: below 1, Concord spends less.
    pub server_cpu_per_change: Option<f64>,
}

/// What [`run`] measured, or why it did not.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerReport {
    /// Why nothing ran (no Node, no `node_modules`); `None` when it ran.
    pub skipped: Option<String>,
    /// The options it ran with.
    pub options: PeerOptions,
    /// One row per server and workload: the peer's first, then Concord's.
    pub rows: Vec<PeerRow>,
    /// One per workload.
    pub ratios: Vec<PeerRatio>,
}

impl PeerReport {
    /// A report of nothing, saying why.
    pub fn skipped(options: &PeerOptions, reason: impl Into<String>) -> Self {
        PeerReport {
            skipped: Some(reason.into()),
            options: options.clone(),
            rows: Vec::new(),
            ratios: Vec::new(),
        }
    }

    /// True when nothing ran.
    pub fn is_skipped(&self) -> bool {
        self.skipped.is_some()
    }

    /// The row of a server on a workload.
    pub fn row(&self, server: PeerServer, workload: PeerWorkload) -> Option<&PeerRow> {
        self.rows
            .iter()
            .find(|r| r.server == server && r.workload == workload)
    }

    fn from_rows(options: &PeerOptions, rows: Vec<PeerRow>) -> Self {
        let mut report = PeerReport {
            skipped: None,
            options: options.clone(),
            rows,
            ratios: Vec::new(),
        };
        report.ratios = [PeerWorkload::OneDoc, PeerWorkload::ManyDocs]
            .into_iter()
            .filter_map(|workload| {
                let peer = report.row(PeerServer::AutomergeRepoSyncServer, workload)?;
                let concord = report.row(PeerServer::Concord, workload)?;
                Some(PeerRatio {
                    workload,
                    changes_per_sec: ratio(concord.changes_per_sec, peer.changes_per_sec),
                    converge: ratio(concord.converge_ms, peer.converge_ms),
                    server_cpu_per_change: concord
                        .server_cpu_ms_per_change
                        .zip(peer.server_cpu_ms_per_change)
                        .map(|(c, p)| ratio(c, p)),
                })
            })
            .collect();
        report
    }
}

/// `a / b`, with a zero denominator answered by infinity (or 1 for 0/0) rather than NaN.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

impl fmt::Display for PeerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(reason) = &self.skipped {
            return writeln!(f, "peer benchmark skipped: {reason}");
        }
        writeln!(
            f,
            "{:<28} {:<10} {:>7} {:>5} {:>7} {:>10} {:>9} {:>9} {:>11} {:>13} {:>11} {:>7}",
            "server",
            "workload",
            "clients",
            "docs",
            "changes",
            "changes/s",
            "ack p50",
            "ack p99",
            "converge",
            "server cpu/ch",
            "client cpu",
            "msgs/ch"
        )?;
        for r in &self.rows {
            let cpu = r
                .server_cpu_ms_per_change
                .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"));
            writeln!(
                f,
                "{:<28} {:<10} {:>7} {:>5} {:>7} {:>10.1} {:>7.1}ms {:>7.1}ms {:>9.1}ms {:>13} {:>9.0}ms {:>7.1}",
                r.server.name(),
                r.workload.name(),
                r.clients,
                r.docs,
                r.changes,
                r.changes_per_sec,
                r.ack_p50_ms,
                r.ack_p99_ms,
                r.converge_ms,
                cpu,
                r.client_cpu_ms,
                r.messages_per_change
            )?;
        }
        for r in &self.ratios {
            let cpu = r
                .server_cpu_per_change
                .map_or_else(String::new, |x| format!(", server CPU per change {x:.2}x"));
            writeln!(
                f,
                "concord / peer, {:<10} changes/s {:.2}x, time to converge {:.2}x{cpu}",
                r.workload.name(),
                r.changes_per_sec,
                r.converge
            )?;
        }
        writeln!(
            f,
            "(client sync debounce {} ms{})",
            self.options.client_sync_debounce_ms,
            if self.options.client_sync_debounce_ms == SHIPPED_SYNC_DEBOUNCE_MS {
                ", as shipped"
            } else {
                ""
            }
        )
    }
}

/// Why the peer benchmark could not run (a missing Node is not an error: see [`run`]).
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The options are out of bounds.
    #[error("invalid peer benchmark options: {0}")]
    Invalid(String),
    /// A temporary folder could not be made, or a process not started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The Node sync server did not start (exited, or printed no URL in time).
    #[error("the automerge-repo sync server did not start: {0}")]
    SyncServer(String),
    /// Concord did not start.
    #[error("cannot start Concord: {0}")]
    Start(#[from] StartError),
    /// The workload script failed against a server.
    #[error("the workload against {server} failed ({status}): {stderr}")]
    Workload {
        /// The server.
        server: PeerServer,
        /// How node exited.
        status: String,
        /// The end of node's standard error.
        stderr: String,
    },
    /// The workload script's output is not the rows expected.
    #[error("the workload against {server} printed {problem}")]
    Output {
        /// The server.
        server: PeerServer,
        /// What is wrong with it.
        problem: String,
    },
    /// A Node process did not finish in time; it was killed.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was running.
        what: String,
        /// How long it had.
        after: Duration,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PeerError {
    let what = what.into();
    move |source| PeerError::Io { what, source }
}

/// Runs both workloads against the Node sync server, then against Concord; returns the rows
/// and the ratios, or a skipped report when Node or `bench/peer/node_modules` is missing.
pub async fn run(opts: &PeerOptions) -> Result<PeerReport, PeerError> {
    opts.validate()?;
    if let Some(reason) = missing(opts).await {
        return Ok(PeerReport::skipped(opts, reason));
    }
    let data = tempfile::Builder::new()
        .prefix("concord-bench-peer-")
        .tempdir()
        .map_err(io("cannot make a temporary data folder"))?;

    let mut rows = Vec::new();
    let peer = SyncServer::start(opts, &data.path().join("automerge-repo")).await?;
    let measured = run_workload(
        opts,
        PeerServer::AutomergeRepoSyncServer,
        &peer.url,
        peer.child.id(),
    )
    .await;
    peer.stop().await;
    rows.extend(measured?);

    let config = Config {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        data: data.path().join("concord"),
        ..Config::default()
    };
    let concord = Server::start(config).await?;
    let url = format!("ws://{}/v1/repo", concord.addr());
    let measured = run_workload(opts, PeerServer::Concord, &url, Some(std::process::id())).await;
    if let Err(e) = concord.shutdown().await {
        tracing::warn!(error = %e, "Concord did not shut down cleanly after the peer benchmark");
    }
    rows.extend(measured?);

    Ok(PeerReport::from_rows(opts, rows))
}

/// [`run`] at [`PeerOptions::smoke`] sizes: checks that both servers and both workloads
/// work end to end (or that it skips cleanly); asserts nothing about timing.
pub async fn smoke() -> Result<PeerReport, PeerError> {
    run(&PeerOptions::smoke()).await
}

/// Why the benchmark cannot run here, if it cannot: no usable Node, or no `node_modules`.
pub async fn missing(opts: &PeerOptions) -> Option<String> {
    let version = Command::new(&opts.node)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let version = match tokio::time::timeout(Duration::from_secs(20), version).await {
        Err(_) => {
            return Some(format!(
                "`{} --version` did not answer",
                opts.node.display()
            ))
        }
        Ok(Err(e)) => {
            return Some(format!(
                "`{}` cannot be run ({e}); install Node.js 20 or later",
                opts.node.display()
            ))
        }
        Ok(Ok(out)) if !out.status.success() => {
            return Some(format!("`{} --version` failed", opts.node.display()))
        }
        Ok(Ok(out)) => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    };
    // The debounce hook needs `module.register` (Node 20.6).
    let needed = if opts.client_sync_debounce_ms == SHIPPED_SYNC_DEBOUNCE_MS {
        (20, 0)
    } else {
        (20, 6)
    };
    match node_version(&version) {
        Some(v) if v >= needed => {}
        _ => {
            return Some(format!(
                "node {version} is too old; {}.{} or later is needed",
                needed.0, needed.1
            ))
        }
    }
    for script in ["sync-server.mjs", "workload.mjs"] {
        if !opts.dir.join(script).is_file() {
            return Some(format!("{} has no {script}", opts.dir.display()));
        }
    }
    for package in [
        "@automerge/automerge-repo",
        "@automerge/automerge-repo-network-websocket",
        "@automerge/automerge-repo-storage-nodefs",
        "ws",
    ] {
        if !opts.dir.join("node_modules").join(package).is_dir() {
            return Some(format!(
                "{} lacks node_modules/{package}; run `npm ci --prefix bench/peer`",
                opts.dir.display()
            ));
        }
    }
    None
}

/// `(major, minor)` of `node --version`'s `v20.20.2`.
fn node_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The Node sync server, running until [`SyncServer::stop`] (or until dropped: it is killed,
/// and it also exits by itself when its standard input closes).
struct SyncServer {
    child: Child,
    /// Held open: the server exits when it closes.
    stdin: Option<ChildStdin>,
    /// Held so that the server never writes into a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    stderr: JoinHandle<String>,
    url: String,
}

impl SyncServer {
    async fn start(opts: &PeerOptions, data: &Path) -> Result<SyncServer, PeerError> {
        let mut child = Command::new(&opts.node)
            .arg("sync-server.mjs")
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg("0")
            .arg("--dir")
            .arg(data)
            .arg("--exit-with-stdin")
            .current_dir(&opts.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io("cannot start the automerge-repo sync server"))?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let stderr = tokio::spawn(read_all(child.stderr.take().expect("stderr is piped")));
        let first = tokio::time::timeout(START_PATIENCE, stdout.next_line()).await;
        let url = match first {
            Ok(Ok(Some(line))) if line.starts_with("ws://") => line.trim().to_owned(),
            other => {
                let said = match other {
                    Err(_) => format!("no URL within {START_PATIENCE:?}"),
                    Ok(Err(e)) => format!("its output could not be read: {e}"),
                    Ok(Ok(None)) => "it exited before listening".to_owned(),
                    Ok(Ok(Some(line))) => format!("it printed {line:?} instead of its URL"),
                };
                let _ = child.kill().await;
                let stderr = tokio::time::timeout(STOP_PATIENCE, stderr)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                return Err(PeerError::SyncServer(format!("{said}; {}", tail(&stderr))));
            }
        };
        Ok(SyncServer {
            child,
            stdin,
            _stdout: stdout,
            stderr,
            url,
        })
    }

    /// Closes its standard input (it shuts its repo down and exits), killing it if it does
    /// not exit in time.
    async fn stop(mut self) {
        drop(self.stdin.take());
        match tokio::time::timeout(STOP_PATIENCE, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => {
                let stderr = tokio::time::timeout(STOP_PATIENCE, &mut self.stderr)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                tracing::warn!(%status, stderr = %tail(&stderr), "the automerge-repo sync server exited badly");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot wait for the automerge-repo sync server")
            }
            Err(_) => {
                tracing::warn!("the automerge-repo sync server did not stop in time; killing it");
                let _ = self.child.kill().await;
            }
        }
        self.stderr.abort();
    }
}

async fn read_all(mut from: impl AsyncRead + Unpin) -> String {
    let mut bytes = Vec::new();
    let _ = from.read_to_end(&mut bytes).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The last lines of a process's standard error, for an error message.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim().lines().collect();
    let start = lines.len().saturating_sub(12);
    let tail = lines[start..].join("\n");
    if tail.is_empty() {
        "(nothing on standard error)".to_owned()
    } else {
        tail
    }
}

/// Runs `workload.mjs` against `url` (served by process `pid`, whose CPU time it reads);
/// one row per workload.
async fn run_workload(
    opts: &PeerOptions,
    server: PeerServer,
    url: &str,
    pid: Option<u32>,
) -> Result<Vec<PeerRow>, PeerError> {
    let node = Command::new(&opts.node)
        .arg("workload.mjs")
        .args(opts.workload_args(server, url, pid))
        .current_dir(&opts.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let patience = opts.timeout + WORKLOAD_SLACK;
    let output = tokio::time::timeout(patience, node)
        .await
        .map_err(|_| PeerError::Timeout {
            what: format!("the workload against {server}"),
            after: patience,
        })?
        .map_err(io(format!("cannot run the workload against {server}")))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(PeerError::Workload {
            server,
            status: describe(output.status),
            stderr: tail(&stderr),
        });
    }
    parse_rows(server, &String::from_utf8_lossy(&output.stdout))
}

fn describe(status: ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => status.to_string(),
    }
}

/// One line of the workload script's output (other fields are ignored).
#[derive(Debug, Deserialize)]
struct Line {
    workload: PeerWorkload,
    clients: u32,
    docs: u32,
    changes: u64,
    changes_per_sec: f64,
    converge_ms: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    wall_ms: f64,
    server_cpu_ms: Option<f64>,
    server_cpu_ms_per_change: Option<f64>,
    client_cpu_ms: f64,
    messages_per_change: f64,
}

/// The rows in the workload script's standard output: one JSON object per line, one per
/// workload, both workloads present.
fn parse_rows(server: PeerServer, stdout: &str) -> Result<Vec<PeerRow>, PeerError> {
    let problem = |problem: String| PeerError::Output { server, problem };
    let mut rows = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parsed: Line = serde_json::from_str(line)
            .map_err(|e| problem(format!("a line that is not a result ({e}): {line:?}")))?;
        for (name, x) in [
            ("changes_per_sec", parsed.changes_per_sec),
            ("converge_ms", parsed.converge_ms),
            ("ack_p50_ms", parsed.ack_p50_ms),
            ("ack_p99_ms", parsed.ack_p99_ms),
            ("wall_ms", parsed.wall_ms),
            ("client_cpu_ms", parsed.client_cpu_ms),
            ("messages_per_change", parsed.messages_per_change),
            ("server_cpu_ms", parsed.server_cpu_ms.unwrap_or(0.0)),
        ] {
            if !x.is_finite() || x < 0.0 {
                return Err(problem(format!("{name} = {x} for {}", parsed.workload)));
            }
        }
        rows.push(PeerRow {
            server,
            workload: parsed.workload,
            clients: parsed.clients,
            docs: parsed.docs,
            changes: parsed.changes,
            changes_per_sec: parsed.changes_per_sec,
            converge_ms: parsed.converge_ms,
            ack_p50_ms: parsed.ack_p50_ms,
            ack_p99_ms: parsed.ack_p99_ms,
            wall_ms: parsed.wall_ms,
            server_cpu_ms: parsed.server_cpu_ms,
            server_cpu_ms_per_change: parsed.server_cpu_ms_per_change,
            client_cpu_ms: parsed.client_cpu_ms,
            messages_per_change: parsed.messages_per_change,
        });
    }
    for workload in [PeerWorkload::OneDoc, PeerWorkload::ManyDocs] {
        match rows.iter().filter(|r| r.workload == workload).count() {
            1 => {}
            0 => return Err(problem(format!("no {workload} result"))),
            n => return Err(problem(format!("{n} {workload} results"))),
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"server":"x","url":"ws://a","workload":"one-doc","clients":4,"docs":1,"changes":200,"changes_per_writer_per_doc":50,"client_sync_debounce_ms":100,"wall_ms":5000,"changes_per_sec":40,"ack_p50_ms":90.5,"ack_p99_ms":180,"converge_ms":120,"server_cpu_ms":400,"server_cpu_ms_per_change":2,"client_cpu_ms":4000,"messages_per_change":4.5}"#;
    const MANY: &str = r#"{"server":"x","url":"ws://a","workload":"many-docs","clients":8,"docs":160,"changes":800,"changes_per_writer_per_doc":5,"followers":1,"client_sync_debounce_ms":100,"wall_ms":1000,"changes_per_sec":800,"ack_p50_ms":50,"ack_p99_ms":70,"converge_ms":60,"server_cpu_ms":null,"server_cpu_ms_per_change":null,"client_cpu_ms":900,"messages_per_change":4}"#;

    #[test]
    fn rows_are_read_from_the_workload_output() {
        let rows = parse_rows(PeerServer::Concord, &format!("{ONE}\n\n{MANY}\n")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].workload, PeerWorkload::OneDoc);
        assert_eq!(rows[0].server, PeerServer::Concord);
        assert_eq!(rows[0].changes, 200);
        assert_eq!(rows[0].ack_p50_ms, 90.5);
        assert_eq!(rows[1].docs, 160);
        assert_eq!(rows[1].changes_per_sec, 800.0);
        assert_eq!(rows[0].server_cpu_ms_per_change, Some(2.0));
        assert_eq!(rows[1].server_cpu_ms, None);
        assert_eq!(rows[1].client_cpu_ms, 900.0);
        assert_eq!(rows[0].messages_per_change, 4.5);
    }

    #[test]
    fn bad_output_is_a_typed_error() {
        let cases = [
            (String::new(), "no one-doc result"),
            (ONE.to_owned(), "no many-docs result"),
            (format!("{ONE}\n{ONE}\n{MANY}"), "2 one-doc results"),
            (format!("{ONE}\nhello"), "not a result"),
            (
                ONE.replace("\"changes_per_sec\":40", "\"changes_per_sec\":-1") + "\n" + MANY,
                "changes_per_sec = -1",
            ),
        ];
        for (stdout, expected) in cases {
            let err = parse_rows(PeerServer::AutomergeRepoSyncServer, &stdout).unwrap_err();
            assert!(matches!(err, PeerError::Output { .. }), "{err:?}");
            assert!(
                err.to_string().contains(expected),
                "{err} should say {expected:?}"
            );
        }
    }

    #[test]
    fn ratios_divide_concord_by_the_peer() {
        let opts = PeerOptions::smoke();
        let mut rows = parse_rows(
            PeerServer::AutomergeRepoSyncServer,
            &format!("{ONE}\n{MANY}"),
        )
        .unwrap();
        let mut concord = parse_rows(PeerServer::Concord, &format!("{ONE}\n{MANY}")).unwrap();
        concord[0].changes_per_sec = 80.0;
        concord[0].converge_ms = 60.0;
        concord[0].server_cpu_ms_per_change = Some(0.5);
        concord[1].converge_ms = 0.0;
        rows.append(&mut concord);
        let report = PeerReport::from_rows(&opts, rows);
        assert_eq!(report.ratios.len(), 2);
        assert_eq!(report.ratios[0].changes_per_sec, 2.0);
        assert_eq!(report.ratios[0].converge, 0.5);
        assert_eq!(report.ratios[1].changes_per_sec, 1.0);
        assert_eq!(report.ratios[1].converge, 0.0);
        assert_eq!(report.ratios[0].server_cpu_per_change, Some(0.25));
        assert_eq!(report.ratios[1].server_cpu_per_change, None);
        let table = report.to_string();
        assert!(table.contains("concord / peer, one-doc"), "{table}");
        assert!(!report.is_skipped());
    }

    #[test]
    fn ratios_never_divide_by_zero() {
        assert_eq!(ratio(0.0, 0.0), 1.0);
        assert_eq!(ratio(3.0, 0.0), f64::INFINITY);
    }

    #[test]
    fn node_versions_are_compared_by_major_and_minor() {
        assert_eq!(node_version("v20.20.2\n"), Some((20, 20)));
        assert_eq!(node_version("v9.1.0"), Some((9, 1)));
        assert!(node_version("v20.5.1").unwrap() < (20, 6));
        assert_eq!(node_version("garbage"), None);
    }

    #[test]
    fn out_of_bounds_options_are_refused() {
        assert!(PeerOptions::default().validate().is_ok());
        assert!(PeerOptions::smoke().validate().is_ok());
        let mut opts = PeerOptions::smoke();
        opts.many_docs.followers = opts.many_docs.clients;
        assert!(matches!(opts.validate(), Err(PeerError::Invalid(_))));
        let mut opts = PeerOptions::smoke();
        opts.one_doc.clients = 0;
        assert!(opts
            .validate()
            .unwrap_err()
            .to_string()
            .contains("one-doc clients"));
    }

    #[tokio::test]
    async fn a_missing_node_skips_instead_of_failing() {
        let opts = PeerOptions {
            node: PathBuf::from("/nonexistent/node-for-concord-tests"),
            ..PeerOptions::smoke()
        };
        let report = run(&opts).await.unwrap();
        assert!(report.is_skipped());
        assert!(report.skipped.as_deref().unwrap().contains("cannot be run"));
        assert!(report.to_string().starts_with("peer benchmark skipped"));
    }

    #[tokio::test]
    async fn missing_node_modules_skip_instead_of_failing() {
        let empty = tempfile::tempdir().unwrap();
        let opts = PeerOptions {
            dir: empty.path().to_owned(),
            ..PeerOptions::smoke()
        };
        // Without node on this machine the reason is node; with it, the scripts.
        let report = run(&opts).await.unwrap();
        assert!(report.is_skipped(), "{report:?}");
    }
}
