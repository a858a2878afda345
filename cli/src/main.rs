//! The `concord` binary: serve documents (the default), run the lost-update comparison
//! (`concord compare`), or measure Concord beside its baselines (`concord bench`).
//!
//! The command line is this crate's alone: the flags (clap) and the progress bars
//! (indicatif) are here, mapped to the plain option structs of the library crates
//! (`concord_server::Config`, the comparison's `Options`, the benchmark's `BenchOptions`),
//! which report progress through callbacks. The libraries' errors are typed; here they
//! become anyhow's, printed on one line.

mod bench;
mod compare;
mod redact;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use concord_server::auth::Auth;
use concord_server::limits::Limits;
use concord_server::{Config, LiveConfig, Server};

/// Concord: a document store for agents that share documents. Concurrent edits merge
/// (Automerge CRDTs) instead of overwriting each other.
#[derive(Parser)]
#[command(
    name = "concord",
    version,
    about = "Concord: a document store for agents that share documents. Concurrent edits merge (Automerge CRDTs) instead of overwriting each other.",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default when no command is given).
    Serve(ServeArgs),
    /// Run one seeded workload through every write strategy and report what each lost and
    /// what each cost (the lost-update comparison).
    Compare(compare::CompareArgs),
    /// Measure Concord beside its baselines (raw Automerge, lww, a no-op endpoint) and
    /// print a table of figures and ratios.
    Bench(bench::BenchArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_ADDR", default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Data folder: the SQLite store lives here (created if missing).
    #[arg(long, env = "CONCORD_DATA", default_value = "./concord-data")]
    data: PathBuf,
    /// Store documents in PostgreSQL instead, shared with every node given the same URL:
    /// postgres://USER@HOST:PORT/DATABASE[?schema=NAME] (see "Running a cluster").
    #[arg(long, env = "CONCORD_STORAGE", value_name = "URL")]
    storage: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    body_limit: usize,
    /// How long idempotency keys are remembered, in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    idempotency_ttl_secs: u64,
    /// How long a graceful shutdown may take, in seconds.
    #[arg(long, default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// A document unused for this many seconds leaves memory (it loads again on use).
    #[arg(long, default_value_t = 60)]
    idle_evict_secs: u64,
    /// Snapshot a document once this many stored changes are not covered by a snapshot.
    #[arg(long, default_value_t = 1000)]
    compact_after: usize,
    /// Require bearer tokens, listed with their agents and scopes in this JSON file (see
    /// the README, "Authentication and limits"). Without it, auth is off, which is only
    /// allowed on a loopback address.
    #[arg(long, env = "CONCORD_AUTH", value_name = "FILE")]
    auth: Option<PathBuf>,
    /// Serve without authentication on an address that is not loopback (for a server
    /// behind a proxy that authenticates).
    #[arg(long, conflicts_with = "auth")]
    insecure_no_auth: bool,
    /// Host names, besides IP addresses and localhost, that requests may name in `Host`
    /// (comma-separated; `*`: any). Others are refused (403), against DNS rebinding.
    #[arg(
        long,
        env = "CONCORD_ALLOWED_HOSTS",
        value_delimiter = ',',
        value_name = "NAMES"
    )]
    allowed_hosts: Vec<String>,
    /// Origins (`https://app.example`), besides this server's own, whose pages may write
    /// and open WebSockets (comma-separated; `*`: any). Others are refused (403).
    #[arg(
        long,
        env = "CONCORD_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    allowed_origins: Vec<String>,
    /// Largest document, as compact JSON, in bytes: a write that would make one larger is
    /// refused (413) and changes nothing.
    #[arg(long, default_value_t = Limits::default().max_document_bytes)]
    max_document_bytes: usize,
    /// A document whose history, as stored (snapshot and change records), holds this many
    /// bytes takes no more writes (413 history-too-large, nothing changed): what one
    /// document's history may hold in memory.
    #[arg(long, default_value_t = Limits::default().max_history_bytes)]
    max_history_bytes: u64,
    /// Most connections open at once (WebSocket included); more are answered 503 and
    /// closed.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    max_connections: usize,
    /// The share of --max-connections, in percent, that live streams (WebSocket and
    /// event streams) may hold; more are answered 503 too-many-streams, and the rest stay
    /// for requests. 0: no live streams.
    #[arg(long, default_value_t = Limits::default().stream_share, value_parser = clap::value_parser!(u8).range(0..=100))]
    stream_share_percent: u8,
    /// A connection that sends no complete request head for this many seconds (after
    /// opening, or after its previous response) is closed.
    #[arg(long, default_value_t = Limits::default().header_timeout.as_secs())]
    header_timeout_secs: u64,
    /// A request not answered within this many seconds gets 408 (its body was still
    /// arriving) or 503; an edit still running then stops and changes nothing. Live
    /// streams (WebSocket, SSE) are not cut by it; each WebSocket message has this long.
    #[arg(long, default_value_t = Limits::default().request_timeout.as_secs())]
    request_timeout_secs: u64,
    /// How many edits, document loads and snapshots run at once, each on a thread of its
    /// own so that other requests keep being answered; more wait their turn. Default: one
    /// per core.
    #[arg(long, default_value_t = Limits::default().cpu_at_once, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    cpu_at_once: usize,
    /// A connection whose client takes nothing written to it for this many seconds (it
    /// does not read) is dropped, whatever it carries: a response, an event stream, a
    /// WebSocket. 0: never.
    #[arg(long, default_value_t = Limits::default().write_timeout.as_secs())]
    write_timeout_secs: u64,
    /// Largest WebSocket message processed, in bytes (larger: an error; over twice this:
    /// the connection is closed).
    #[arg(long, default_value_t = LiveConfig::default().max_message)]
    ws_max_message: usize,
    /// How many WebSocket messages a connection may send at once (its burst).
    #[arg(long, default_value_t = LiveConfig::default().rate_burst)]
    ws_rate_burst: u32,
    /// How many WebSocket messages per second a connection earns back.
    #[arg(long, default_value_t = LiveConfig::default().rate_per_sec)]
    ws_rate_per_sec: f64,
    /// A WebSocket that sends nothing (not even a pong) for this many seconds is closed.
    #[arg(long, default_value_t = LiveConfig::default().idle_timeout.as_secs())]
    ws_idle_timeout_secs: u64,
    /// How often the server pings each WebSocket, in seconds (at least twice per idle
    /// timeout, whatever this says).
    #[arg(long, default_value_t = LiveConfig::default().ping_interval.as_secs())]
    ws_ping_interval_secs: u64,
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("concord: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // A failure is one line on stderr and a non-zero exit (issue 6): anyhow's default,
    // `Error:`, a `Caused by:` list repeating each cause and a backtrace, buries the reason
    // (a damaged data file, say) that an operator needs.
    let code = match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("concord: {}", one_line(&e));
            std::process::ExitCode::FAILURE
        }
    };
    // Work a timed-out shutdown abandoned (an edit still running on its own thread, which
    // nobody will be answered for) must not keep the process alive past the timeout, as
    // dropping the runtime would by waiting for it.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

/// An error and its causes on one line, skipping a cause its parent already quotes.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The comparison's own in-process server should not talk over its table.
    let quiet = matches!(cli.command, Some(Command::Compare(_) | Command::Bench(_)));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                if quiet {
                    "concord_server=warn,concord_compare=warn,concord_bench=warn,tower_http=warn"
                        .into()
                } else {
                    "concord_server=info,concord_compare=info,concord_bench=info,tower_http=warn"
                        .into()
                }
            }),
        )
        // No token reaches the log (concord_server::logging).
        .with_writer(redact::Redacting)
        .init();
    match cli.command {
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Compare(args)) => compare::run(args).await.context("concord compare failed"),
        Some(Command::Bench(args)) => bench::main(args).await.context("concord bench failed"),
        None => serve(cli.serve).await,
    }
}

/// The server's configuration from the serve flags (reading the token file, if any).
fn config(args: ServeArgs) -> anyhow::Result<Config> {
    let auth = match &args.auth {
        Some(path) => Some(Arc::new(Auth::load(path)?)),
        None => None,
    };
    Ok(Config {
        addr: args.addr,
        data: args.data,
        body_limit: args.body_limit,
        idempotency_ttl: Duration::from_secs(args.idempotency_ttl_secs),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        live: LiveConfig {
            max_message: args.ws_max_message,
            rate_burst: args.ws_rate_burst,
            rate_per_sec: args.ws_rate_per_sec,
            idle_timeout: Duration::from_secs(args.ws_idle_timeout_secs),
            ping_interval: Duration::from_secs(args.ws_ping_interval_secs),
            ..LiveConfig::default()
        },
        tuning: concord_server::registry::Tuning {
            idle_evict: Duration::from_secs(args.idle_evict_secs),
            compact_after: args.compact_after,
            ..Default::default()
        },
        auth,
        insecure_no_auth: args.insecure_no_auth,
        allowed: concord_server::origins::Allowed::new(&args.allowed_hosts, &args.allowed_origins),
        limits: Limits {
            max_document_bytes: args.max_document_bytes,
            max_history_bytes: args.max_history_bytes,
            max_connections: args.max_connections,
            header_timeout: Duration::from_secs(args.header_timeout_secs),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            write_timeout: Duration::from_secs(args.write_timeout_secs),
            stream_share: args.stream_share_percent,
            cpu_at_once: args.cpu_at_once,
        },
        storage: args.storage,
        // The viewer's comparison endpoints, `/v1/compare*`.
        extra_routes: concord_compare::routes(),
    })
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = config(args)?;
    if config.auth.is_none() {
        // The default log filter is concord_server's; this binary's own target is not in it.
        tracing::warn!(
            target: "concord_server",
            "authentication is off: anyone who can reach this address can read and write \
             every document (--auth FILE turns it on)"
        );
    }
    let server = Server::start(config)
        .await
        .context("cannot start concord")?;
    // Tests and scripts read this line to find the port.
    println!("concord listening on http://{}", server.addr());
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight writes");
    server.shutdown().await.context("shutdown failed")?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let args = match cli.command {
            Some(Command::Serve(args)) => args,
            _ => cli.serve,
        };
        config(args).unwrap()
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        let config = parse(&["concord"]);
        assert_eq!(config.limits, Limits::default());
        let live = LiveConfig::default();
        assert_eq!(config.live.max_message, live.max_message);
        assert_eq!(config.live.rate_burst, live.rate_burst);
        assert_eq!(config.live.rate_per_sec, live.rate_per_sec);
        assert_eq!(config.live.idle_timeout, live.idle_timeout);
        assert_eq!(config.live.ping_interval, live.ping_interval);
        assert!(config.auth.is_none() && !config.insecure_no_auth);
    }

    #[test]
    fn limit_flags_reach_the_config() {
        let config = parse(&[
            "concord",
            "serve",
            "--max-document-bytes",
            "1000",
            "--max-history-bytes",
            "5000",
            "--max-connections",
            "7",
            "--header-timeout-secs",
            "3",
            "--request-timeout-secs",
            "4",
            "--write-timeout-secs",
            "6",
            "--stream-share-percent",
            "50",
            "--cpu-at-once",
            "3",
            "--ws-max-message",
            "500",
            "--ws-rate-burst",
            "5",
            "--ws-rate-per-sec",
            "0.5",
            "--ws-idle-timeout-secs",
            "9",
            "--ws-ping-interval-secs",
            "2",
            "--insecure-no-auth",
        ]);
        assert_eq!(
            config.limits,
            Limits {
                max_document_bytes: 1000,
                max_history_bytes: 5000,
                max_connections: 7,
                header_timeout: Duration::from_secs(3),
                request_timeout: Duration::from_secs(4),
                write_timeout: Duration::from_secs(6),
                stream_share: 50,
                cpu_at_once: 3,
            }
        );
        assert_eq!(config.live.max_message, 500);
        assert_eq!(config.live.rate_burst, 5);
        assert_eq!(config.live.rate_per_sec, 0.5);
        assert_eq!(config.live.idle_timeout, Duration::from_secs(9));
        assert_eq!(config.live.ping_interval, Duration::from_secs(2));
        assert!(config.insecure_no_auth);
        // A share is a percentage.
        assert!(Cli::try_parse_from(["concord", "--stream-share-percent", "101"]).is_err());
        // Work needs at least one permit to run.
        assert!(Cli::try_parse_from(["concord", "serve", "--cpu-at-once", "0"]).is_err());
    }

    #[test]
    fn auth_flag_reads_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(
            &path,
            r#"{"tokens": [{"agent": "ops", "token": "0123456789abcdef0123", "scopes": ["admin"]}]}"#,
        )
        .unwrap();
        let config = parse(&["concord", "--auth", path.to_str().unwrap()]);
        let auth = config.auth.expect("auth on");
        assert_eq!(
            auth.authenticate("0123456789abcdef0123").unwrap().agent(),
            "ops"
        );
        // A missing file is an error at start, not a server without auth.
        let cli = Cli::try_parse_from(["concord", "--auth", "/nonexistent/tokens.json"]).unwrap();
        assert!(config_err(cli.serve).contains("cannot read the token file"));
        // --auth and --insecure-no-auth contradict each other.
        assert!(Cli::try_parse_from(["concord", "--auth", "f", "--insecure-no-auth"]).is_err());
    }

    fn config_err(args: ServeArgs) -> String {
        match config(args) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }
}
