//! Concord's Rust client for agents: the HTTP API, and live subscriptions over the
//! WebSocket JSON protocol with automatic reconnect-and-resume.
//!
//! # Layout
//! - [`Client`]: one server, one agent; every HTTP endpoint an agent uses (create, read,
//!   write against a base version, history, locks, forks and merges).
//! - [`Socket`]: one raw WebSocket connection to a document, the protocol as is (tests of
//!   the server use it to send what a well-behaved client would not).
//! - [`Subscription`]: a document's changes in order, with writes over the same
//!   connection; it reconnects by itself and resumes from the last version it delivered.
//! - [`ClientError`]: why a call failed; a refusal carries the server's [`Problem`].
//!
//! The messages of the WebSocket protocol ([`ClientMessage`], [`ServerMessage`], ...) are
//! `concord-protocol`'s, re-exported here; the server speaks the same types.
//!
//! # Who depends on it
//! Agents written in Rust, and Concord's end-to-end tests. It depends on no part of the
//! server (no axum, no storage): only `concord-protocol`, `concord-core` (for
//! [`concord_core::Strategy`]), reqwest and tokio-tungstenite.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::{Client, CreateOptions, Event, WriteOptions};
//! use serde_json::json;
//!
//! let client = Client::new("http://127.0.0.1:7878", "agent-a");
//! let doc = client
//!     .create(&CreateOptions { value: Some(json!({"items": []})), ..Default::default() })
//!     .await?;
//! // HTTP: a write against the version read; concurrent writes merge.
//! let ops = json!([{"op": "add", "path": "/items/-", "value": "hello"}]);
//! client.patch(doc.id, Some(&doc.version), &ops, &WriteOptions::default()).await?;
//! // Live: every change, in order, resumed from the last one seen after a reconnect.
//! let mut live = client.subscribe(doc.id, None).await?;
//! live.patch(None, json!([{"op": "add", "path": "/items/-", "value": "live"}])).await?;
//! while let Ok(event) = live.next().await {
//!     if let Event::Change(change) = event {
//!         println!("{:?} wrote {}", change.agent, change.patch);
//!     }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs, unreachable_pub)]

mod http;
mod socket;
mod subscription;

pub use concord_protocol::live::{Ack, Change, ClientMessage, Problem, ServerMessage};
pub use http::{Client, CreateOptions, Doc, History, HistoryEntry, Lease, Reconnect, WriteOptions};
pub use socket::{Frame, Socket};
pub use subscription::{Event, Subscription, Write, Writer};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused: an HTTP error status, or a WebSocket `error` message.
    #[error("refused: {0}")]
    Problem(Box<Problem>),
    /// The HTTP request could not be made or its answer read.
    #[error("HTTP transport: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket could not be opened, or broke.
    #[error("WebSocket transport: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The server answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The live connection ended for good: closed by the server with a reason that a
    /// reconnect would not fix, out of reconnect attempts, or the subscription was dropped.
    #[error("closed ({code:?}): {reason}")]
    Closed {
        /// The WebSocket close code, if the server sent one.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// The problem, if the server refused.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ClientError::Problem(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        self.problem().map(|p| p.status)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as E;
        match e {
            // The upgrade was answered with an HTTP error: its body is a problem.
            E::Http(response) => {
                let status = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                ClientError::Problem(Box::new(problem_from(status, body, None)))
            }
            other => ClientError::WebSocket(Box::new(other)),
        }
    }
}

pub(crate) fn problem_from(status: u16, body: &[u8], version: Option<String>) -> Problem {
    match serde_json::from_slice::<Problem>(body) {
        Ok(mut problem) => {
            problem.version = problem.version.or(version);
            problem
        }
        Err(_) => Problem {
            id: None,
            type_uri: "about:blank".into(),
            title: reqwest::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error")
                .into(),
            status,
            detail: String::from_utf8_lossy(body).chars().take(500).collect(),
            version,
        },
    }
}

/// Percent-encodes a query value (versions are hex and dots, but callers pass any text).
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub(crate) fn protocol(what: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(what.to_string())
}
