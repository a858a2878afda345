//! Concord's server: the HTTP API over the document registry, and the storage backends.
//!
//! # Layout
//! - [`Config`], [`Server`]: start a server on an address with a data folder; stop it.
//! - [`auth`]: bearer tokens with scopes, checked on every endpoint (off by default).
//! - [`limits`]: document size, connections, live streams' share of them, slow clients;
//!   the serve loop.
//! - [`api`]: the axum routes of the HTTP API (v1), [`app`] builds the router; live sync
//!   (WebSocket, Server-Sent Events) is in `api::live`.
//! - [`registry`]: documents in memory, one writer each, queued for storage in order.
//! - [`repo`]: the automerge-repo network protocol (`/v1/repo`); its messages and document
//!   ids are `concord-protocol`'s.
//! - [`policy`]: write strategies as policies on the base version of a write.
//! - [`idempotency`]: `Idempotency-Key` handling.
//! - [`problem`]: RFC 9457 problem+json errors.
//! - [`metrics`]: Prometheus metrics at `/metrics`.
//! - [`logging`]: the request log, and keeping tokens out of every log line.
//! - [`origins`]: which `Host` and `Origin` values may reach the API (DNS rebinding,
//!   cross-site requests).
//! - [`openapi`]: the OpenAPI 3.1 description at `/openapi.json`, from the handlers' own
//!   annotations and types.
//! - [`store`]: the durable stores, both writing through one group-commit queue:
//!   [`sqlite`], the embedded store, and [`postgres`], the store shared by several nodes
//!   (PostgreSQL, `LISTEN`/`NOTIFY`); [`cluster`]: a node following what the others write.
//! - [`web`]: the browser viewer, its files embedded in the binary, served at `/`.
//!
//! # Who depends on it
//! The `concord` binary (`cli/`), which maps its flags to a [`Config`] and mounts the
//! comparison's routes through [`Config::extra_routes`]; `concord-compare` and
//! `concord-bench`, which start servers of their own in-process; and the end-to-end tests.
//! It speaks the wire types of `concord-protocol`; the Rust client (`concord-client`) does
//! not depend on it.
#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod idempotency;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod origins;
pub mod policy;
pub mod problem;
pub mod registry;
pub mod repo;
pub mod store;
pub mod web;

pub use store::{postgres, sqlite};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use concord_core::storage::{Store, StoreError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::idempotency::Idempotency;
use crate::registry::Registry;
use crate::sqlite::SqliteStore;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen; port 0 picks a free one.
    pub addr: SocketAddr,
    /// The data folder (created if missing).
    pub data: PathBuf,
    /// The largest request body accepted, in bytes.
    pub body_limit: usize,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl: Duration,
    /// How long a graceful shutdown may take before in-flight requests are abandoned.
    pub shutdown_timeout: Duration,
    /// Limits and timers of live connections (WebSocket and Server-Sent Events).
    pub live: LiveConfig,
    /// When idle documents leave memory and change logs are compacted.
    pub tuning: registry::Tuning,
    /// Bearer tokens and their scopes; `None`: no authentication (see [`auth`]).
    pub auth: Option<Arc<auth::Auth>>,
    /// Serve without authentication on an address that is not loopback, which is refused
    /// otherwise: only for a server behind something else that authenticates.
    pub insecure_no_auth: bool,
    /// Host names and origins accepted besides the server's own (see [`origins`]).
    pub allowed: origins::Allowed,
    /// Document size, connections and timeouts (see [`limits`]).
    pub limits: limits::Limits,
    /// Where documents are stored: `None` for the embedded SQLite store in `data`, or a
    /// `postgres://` URL for a PostgreSQL store that several nodes share (see [`postgres`]).
    pub storage: Option<String>,
    /// Routes served beside the API's own, such as the comparison's `/v1/compare*` (the
    /// `concord-compare` crate, which depends on this one and so is mounted from outside by
    /// the binary). They are merged into the API's router where its own routes are, before
    /// the fallback, so they pass through the same layers: authentication (a route the
    /// [`auth`] rules do not name needs the admin scope), the body limit, the request
    /// deadline and problem+json errors. They take no state. A route that is also one of
    /// the API's, or a router with a fallback of its own, makes [`app`] panic, as axum's
    /// `Router::merge` does. Their operations join the OpenAPI description (`/openapi.json`,
    /// see [`openapi`]): register them with utoipa-axum's `routes!`.
    pub extra_routes: utoipa_axum::router::OpenApiRouter,
}

/// Limits and timers of live connections: WebSocket (`/v1/docs/{id}/ws`,
/// `/v1/docs/{id}/sync`, `/v1/repo`) and Server-Sent Events (`/v1/docs/{id}/events`,
/// `/v1/events`). How many may be open at once, and how long a write to one may wait for a
/// client that does not read, are [`limits::Limits`]' (`stream_share`, `write_timeout`).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// The largest WebSocket message processed, in bytes. A larger one is answered an
    /// `error` (413) and skipped; one over twice this size closes the connection (1009),
    /// since it is refused while being read.
    pub max_message: usize,
    /// How many messages a WebSocket connection may send at once: the capacity of its
    /// token bucket. A message beyond it is answered an `error` (429) and not processed.
    pub rate_burst: u32,
    /// How many messages per second a connection earns back. 0: the burst is all a
    /// connection ever gets (deterministic tests).
    pub rate_per_sec: f64,
    /// A connection whose messages are refused this many times in a row is closed (1008):
    /// it is not listening to the errors.
    pub max_refused: u32,
    /// How often the server pings an open WebSocket, of every kind (keep-alive through
    /// proxies, and the pongs prove the peer is alive). At least twice per
    /// [`idle_timeout`](Self::idle_timeout) whatever this says, so that a peer that answers
    /// pings is never idle.
    pub ping_interval: Duration,
    /// A WebSocket, of any kind, that sends nothing, not even a pong, for this long is
    /// closed (1001).
    pub idle_timeout: Duration,
    /// How often an SSE stream sends a keep-alive comment.
    pub sse_keep_alive: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_message: 8 * 1024 * 1024,
            rate_burst: 200,
            rate_per_sec: 100.0,
            max_refused: 50,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            sse_keep_alive: Duration::from_secs(15),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 7878)),
            data: PathBuf::from("concord-data"),
            body_limit: 8 * 1024 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            shutdown_timeout: Duration::from_secs(10),
            tuning: registry::Tuning::default(),
            live: LiveConfig::default(),
            auth: None,
            insecure_no_auth: false,
            allowed: origins::Allowed::default(),
            limits: limits::Limits::default(),
            storage: None,
            extra_routes: utoipa_axum::router::OpenApiRouter::new(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// The documents.
    pub registry: Registry,
    /// Keys of requests in flight.
    pub idempotency: Idempotency,
    /// The live streams open, bounded by their share of the connections.
    pub streams: limits::Streams,
    /// The configuration the server started with.
    pub config: Config,
}

impl AppState {
    /// State over a store.
    pub fn new(store: Arc<dyn Store>, config: Config) -> Arc<Self> {
        Arc::new(AppState {
            registry: Registry::with_tuning(store, config.tuning)
                .with_document_limit(config.limits.max_document_bytes)
                .with_history_limit(config.limits.max_history_bytes)
                .with_cpu_limit(config.limits.cpu_at_once),
            idempotency: Idempotency::new(config.idempotency_ttl.as_millis() as i64),
            streams: limits::Streams::new(&config.limits),
            config,
        })
    }
}

/// The whole HTTP application over `state`: use it in-process in tests, or serve it.
pub fn app(state: Arc<AppState>) -> Router {
    api::router(state)
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data folder's store could not be opened.
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The data folder.
        path: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
    /// The PostgreSQL store could not be opened (the URL's password is not repeated here).
    #[error("cannot open the PostgreSQL store: {source}")]
    Database {
        /// What went wrong.
        source: StoreError,
    },
    /// Authentication is off and the address is not loopback: anyone who can reach it
    /// could read and write every document.
    #[error(
        "refusing to serve without authentication on {addr}, which is not a loopback address: \
         give a token file (--auth FILE), or --insecure-no-auth if something in front of \
         Concord authenticates"
    )]
    Unprotected {
        /// The address.
        addr: SocketAddr,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<std::io::Result<()>>,
    state: Arc<AppState>,
}

impl Server {
    /// Opens the store in `config.data`, binds `config.addr` and starts serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        if let Some(url) = &config.storage {
            let store = postgres::PostgresStore::open(url)
                .await
                .map_err(|source| StartError::Database { source })?;
            return Self::start_with_store(Arc::new(store), config).await;
        }
        let data = config.data.clone();
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&data))
            .await
            .expect("opening the store does not panic")
            .map_err(|source| StartError::Store {
                path: config.data.clone(),
                source,
            })?;
        Self::start_with_store(Arc::new(store), config).await
    }

    /// Starts serving over an already opened store.
    pub async fn start_with_store(
        store: Arc<dyn Store>,
        config: Config,
    ) -> Result<Server, StartError> {
        if config.auth.is_none() && !config.insecure_no_auth && !config.addr.ip().is_loopback() {
            return Err(StartError::Unprotected { addr: config.addr });
        }
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.addr,
            source,
        })?;
        let state = AppState::new(store, config);
        let purge = tokio::spawn(purge_idempotency_keys(Arc::clone(&state)));
        let maintain = tokio::spawn(maintain_documents(Arc::clone(&state)));
        // A shared store: catch up what other nodes write.
        let follow = cluster::follow(Arc::clone(&state));
        let (stop, stopped) = watch::channel(false);
        let router = app(Arc::clone(&state));
        let limits = state.config.limits.clone();
        let task = tokio::spawn(async move {
            // Not axum::serve: it has neither a connection limit nor a header timeout.
            let result = limits::serve(listener, router, limits, stopped).await;
            purge.abort();
            maintain.abort();
            if let Some(follow) = follow {
                follow.abort();
            }
            result
        });
        tracing::info!(%addr, "concord is listening");
        Ok(Server {
            addr,
            stop,
            task,
            state,
        })
    }

    /// The address the server listens on (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (for in-process inspection).
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Stops accepting connections, lets in-flight requests finish (each acknowledged
    /// write is durable before it is answered) within the shutdown timeout, then returns.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let timeout = self.state.config.shutdown_timeout;
        // Live streams never end by themselves: end them, or the drain would wait for them.
        self.state.registry.close_live();
        let _ = self.stop.send(true);
        match tokio::time::timeout(timeout, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "shutdown timed out; abandoning in-flight requests"
                );
                Ok(())
            }
        }
    }
}

/// Compacts long change logs and drops idle documents from memory, periodically: first one
/// period after start (nothing is loaded at start, and a maintenance pass racing the first
/// requests would only get in their way).
async fn maintain_documents(state: Arc<AppState>) {
    let period = state.registry.tuning().maintain_every;
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let done = state.registry.maintain().await;
        if done != registry::Maintained::default() {
            tracing::debug!(?done, loaded = state.registry.loaded_count(), "maintenance");
        }
    }
}

/// Forgets expired idempotency keys, at start and then hourly.
async fn purge_idempotency_keys(state: Arc<AppState>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        let before = api::now_ms() - state.idempotency.ttl_ms();
        match state.registry.store().purge_idempotency(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "forgot expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "could not purge idempotency keys"),
        }
    }
}
