//! The lost-update comparison: one seeded workload run through every write strategy over
//! the real HTTP API, with a Jepsen-style history checker counting what each strategy lost
//! and measuring what each cost.
//!
//! # Layout
//! - [`workload`]: the workloads ([`Workload`]), the document they start from, and how an
//!   agent rewrites a document (whole-value strategies) or states an intent (queue).
//! - [`board`]: the board workload (tasks inserted, deleted, edited, voted on, moved) and
//!   its checker, which tells edits lost silently from edits lost but surfaced.
//! - [`history`]: the recorded operations ([`history::Event`]) and the pure checker
//!   ([`history::check`]): lost = acknowledged and absent from the final document; lost
//!   silently, or surfaced among the document's lost edits.
//! - [`wire`]: a small HTTP client for the parts of the API the agents use.
//! - [`run`]: agents that read, think and write the way each strategy requires; one
//!   [`Report`] row per strategy.
//! - [`report`]: the report, the trade-off in words, the table.
//! - [`scenario`]: the lesson's exact timeline (A reads at T=1, B at T=2, B writes at T=4,
//!   A at T=5), deterministic, per strategy.
//! - [`sweep`]: agents × think time grid, for plotting cost against conflict rate.
//! - [`http`]: the viewer's `/v1/compare` endpoints; [`routes`] mounts them on a server.
//!
//! The comparison never touches documents it did not create: by default (and always from
//! the browser endpoints) it runs against a separate in-process server on a temporary data
//! folder ([`LocalServer`]).
//!
//! # Who depends on it
//! The `concord` binary (`concord compare`, whose flags and progress bar are the binary's:
//! this crate takes [`Options`] and reports [`Progress`] through a [`ProgressFn`]), which
//! also mounts [`routes`] on the server it serves through
//! [`concord_server::Config::extra_routes`]; and the end-to-end tests. It depends on
//! `concord-server` (for [`LocalServer`], and the API's errors in the endpoints), which
//! cannot depend on it in turn: that is why the routes are mounted from outside.
#![warn(missing_docs, unreachable_pub)]

pub mod board;
pub mod history;
pub mod http;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sweep;
pub mod wire;
pub mod workload;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use concord_core::Strategy;
use serde::Serialize;

use concord_server::{Config, Server, StartError};

pub use http::routes;
pub use report::{Report, Row};
pub use workload::Workload;

/// Why a comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The options are out of bounds or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// The in-process server could not start.
    #[error("cannot start the in-process server: {0}")]
    Start(#[from] StartError),
    /// A temporary data folder could not be made, or an output file written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The server refused or failed a request the comparison cannot do without (creating
    /// the document, reading the final value).
    #[error("{0}")]
    Server(String),
}

/// Think time: each agent waits a seeded time in `min..=max` ms between reading and writing,
/// standing in for model latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ThinkRange {
    /// Shortest think, in ms.
    pub min: u64,
    /// Longest think, in ms.
    pub max: u64,
}

impl ThinkRange {
    /// As the `[min, max]` pair of the JSON shapes.
    pub fn pair(self) -> [u64; 2] {
        [self.min, self.max]
    }
}

impl fmt::Display for ThinkRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

impl FromStr for ThinkRange {
    type Err = String;

    /// `MIN..MAX` or a single number.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?} is not MIN..MAX in milliseconds (e.g. 10..50)"))
        };
        let (min, max) = match s.split_once("..") {
            Some((a, b)) => (number(a)?, number(b.trim_start_matches('='))?),
            None => {
                let n = number(s)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("think time {min}..{max}: MIN is above MAX"));
        }
        Ok(ThinkRange { min, max })
    }
}

/// What one comparison runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// What the agents write.
    pub workload: Workload,
    /// Agents writing at the same time.
    pub agents: u32,
    /// Writes per agent.
    pub writes: u32,
    /// Think time between an agent's read and its write.
    pub think: ThinkRange,
    /// Seeds think times and choices, so that every strategy sees the same plan.
    pub seed: u64,
    /// The strategies, in the order they run and are reported.
    pub strategies: Vec<Strategy>,
    /// Every agent reads before any agent writes, in every round (barriers): overlap is then
    /// certain by construction instead of a matter of timing (the worst case, repeatable).
    pub lockstep: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workload: Workload::List,
            agents: 4,
            writes: 10,
            think: ThinkRange { min: 10, max: 50 },
            seed: 42,
            strategies: Strategy::ALL.to_vec(),
            lockstep: false,
        }
    }
}

/// Upper bounds on what a comparison may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most agents.
    pub agents: u32,
    /// Most writes per agent.
    pub writes: u32,
    /// Longest think time, in ms.
    pub think_ms: u64,
}

impl Limits {
    /// What the browser endpoint accepts: a run a person waits for.
    pub const BROWSER: Limits = Limits {
        agents: 64,
        writes: 200,
        think_ms: 10_000,
    };
    /// What the command line accepts.
    pub const CLI: Limits = Limits {
        agents: 1024,
        writes: 100_000,
        think_ms: 600_000,
    };
}

impl Options {
    /// Checks the options against `limits`; the error says which option and why.
    pub fn validate(&self, limits: Limits) -> Result<(), CompareError> {
        let bad = |m: String| Err(CompareError::Invalid(m));
        if self.agents == 0 || self.agents > limits.agents {
            return bad(format!(
                "agents must be 1 to {}, not {}",
                limits.agents, self.agents
            ));
        }
        if self.writes == 0 || self.writes > limits.writes {
            return bad(format!(
                "writes must be 1 to {} per agent, not {}",
                limits.writes, self.writes
            ));
        }
        if self.think.min > self.think.max || self.think.max > limits.think_ms {
            return bad(format!(
                "think_ms must be [min, max] with min <= max <= {}, not [{}, {}]",
                limits.think_ms, self.think.min, self.think.max
            ));
        }
        if self.strategies.is_empty() {
            return bad("strategies must name at least one strategy".into());
        }
        let mut seen = Vec::new();
        for s in &self.strategies {
            if seen.contains(s) {
                return bad(format!("strategy {s} is named twice"));
            }
            seen.push(*s);
        }
        Ok(())
    }

    /// How many writes the whole run makes (for progress).
    pub fn total_writes(&self) -> u64 {
        u64::from(self.agents) * u64::from(self.writes) * self.strategies.len() as u64
    }
}

/// How far a run is: `done` of `total` writes finished (over the whole run, every strategy),
/// and the strategy running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// The strategy running now.
    pub strategy: Strategy,
    /// Writes finished so far, over the whole run.
    pub done: u64,
    /// Writes the whole run makes.
    pub total: u64,
}

/// Where progress goes: a terminal bar, an event stream, nowhere.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// A progress sink that ignores everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// A Concord server of the comparison's own, in this process, on `127.0.0.1` with a
/// temporary data folder; the folder is removed when the server is stopped or dropped.
pub struct LocalServer {
    server: Server,
    url: String,
    // Dropped after the server: SQLite's files must outlive it.
    _dir: tempfile::TempDir,
}

impl LocalServer {
    /// Starts one on a free port.
    pub async fn start() -> Result<LocalServer, CompareError> {
        let dir = tempfile::Builder::new()
            .prefix("concord-compare-")
            .tempdir()
            .map_err(|source| CompareError::Io {
                what: "cannot make a temporary data folder".into(),
                source,
            })?;
        let config = Config {
            addr: ([127, 0, 0, 1], 0).into(),
            data: dir.path().to_path_buf(),
            ..Config::default()
        };
        let server = Server::start(config).await?;
        let url = format!("http://{}", server.addr());
        Ok(LocalServer {
            server,
            url,
            _dir: dir,
        })
    }

    /// Its base URL (`http://127.0.0.1:port`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops it gracefully and removes its data folder.
    pub async fn stop(self) {
        if let Err(e) = self.server.shutdown().await {
            tracing::warn!(error = %e, "the comparison's server did not stop cleanly");
        }
    }
}

/// Where a comparison runs: a server of its own, or one the user named.
pub enum Target {
    /// An in-process server on a temporary data folder.
    Local(LocalServer),
    /// A running server (`--server URL`); the comparison creates its own documents there.
    Remote(String),
}

impl Target {
    /// The local server by default, or the one at `url`.
    pub async fn new(url: Option<&str>) -> Result<Target, CompareError> {
        Ok(match url {
            Some(url) => Target::Remote(url.trim_end_matches('/').to_owned()),
            None => Target::Local(LocalServer::start().await?),
        })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        match self {
            Target::Local(local) => local.url(),
            Target::Remote(url) => url,
        }
    }

    /// Stops the local server, if there is one.
    pub async fn finish(self) {
        if let Target::Local(local) = self {
            local.stop().await;
        }
    }
}
