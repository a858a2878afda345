//! The `concord` binary: serve documents (the default), or run the lost-update comparison.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use concord_server::{Config, Server};

/// Concord: a document store for agents that share documents. Concurrent edits merge
/// (Automerge CRDTs) instead of overwriting each other.
#[derive(Parser)]
#[command(name = "concord", version, about, long_about = None)]
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
    Compare(concord_server::compare::cli::CompareArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_ADDR", default_value = "127.0.0.1:7878")]
    addr: SocketAddr,
    /// Data folder: the SQLite store lives here (created if missing).
    #[arg(long, env = "CONCORD_DATA", default_value = "./concord-data")]
    data: PathBuf,
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The comparison's own in-process server should not talk over its table.
    let quiet = matches!(cli.command, Some(Command::Compare(_)));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                if quiet {
                    "concord_server=warn,tower_http=warn".into()
                } else {
                    "concord_server=info,tower_http=warn".into()
                }
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Compare(args)) => concord_server::compare::cli::run(args)
            .await
            .context("concord compare failed"),
        None => serve(cli.serve).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config {
        addr: args.addr,
        data: args.data,
        body_limit: args.body_limit,
        idempotency_ttl: Duration::from_secs(args.idempotency_ttl_secs),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout_secs),
        live: concord_server::LiveConfig::default(),
        tuning: concord_server::registry::Tuning {
            idle_evict: Duration::from_secs(args.idle_evict_secs),
            compact_after: args.compact_after,
            ..Default::default()
        },
    };
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
