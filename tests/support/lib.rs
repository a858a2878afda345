//! What the end-to-end suites share (the library of `concord-tests`): the real Concord
//! server on `127.0.0.1:0` with a temporary data folder, and the clients, connections and
//! fixtures the suites drive it with. Each suite (`tests/*.rs`) is a test target of this
//! package and uses these helpers; none of them asserts anything a suite relies on being
//! checked elsewhere.
//!
//! # Layout
//! - [`server`]: [`TestServer`], started with a configuration the test may adjust and
//!   restarted with the same one; [`Reply`], a response read whole.
//! - [`sse`]: [`SseStream`], Server-Sent Events read event by event.
//! - [`proxy`]: [`Proxy`], a TCP proxy that cuts and holds connections (reconnect tests).
//! - [`ws`]: raw WebSocket connections and frames, and the JSON protocol's next message.
//! - [`sync`]: the binary sync client ([`sync::Replica`]) and a hand-driven automerge-repo
//!   peer ([`sync::RepoPeer`]).
//! - [`node`]: the Node suites (`tests/js`, `tests/mcp`): can they run here, and running one.
//! - [`cluster`]: a PostgreSQL schema per test and nodes over it (`tests/cluster.rs`).
//! - [`meta`] and [`PATIENCE`], used by every suite that writes or waits;
//!   [`foreign_change`], a change as a client other than Concord makes it.

pub mod cluster;
pub mod node;
pub mod proxy;
pub mod server;
pub mod sse;
pub mod sync;
pub mod ws;

use std::time::Duration;

use concord_core::{Document, Schema, WriteMeta};

pub use proxy::Proxy;
pub use server::{Reply, TestServer};
pub use sse::{SseEvent, SseStream};

/// Bounds every wait for the server; a correct server answers in milliseconds.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// The metadata of a write by `agent` at a fixed time (2023-11-14), for documents built
/// in the test rather than through the server.
pub fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}

/// A raw change as a client other than Concord makes one: an empty Automerge change after
/// `changes` (raw changes of a document, concatenated), by a new actor, with `message` as
/// its message (`None`: no message, so no Concord note at all) and `time_secs` as its
/// time. The bytes to post to `POST /v1/docs/{id}/changes`.
pub fn foreign_change(changes: &[u8], message: Option<&str>, time_secs: i64) -> Vec<u8> {
    let (doc, _) = Document::load(Schema::default(), None, &[changes.to_vec()]).expect("changes");
    let mut raw = doc.automerge().fork();
    let heads = raw.get_heads();
    // This crate does not depend on Automerge, so it cannot name `CommitOptions`: the type
    // is inferred from `empty_commit`, whose closure is checked first.
    fn commit_with<O: Default>(commit: impl FnOnce(O), set: impl FnOnce(O) -> O) {
        commit(set(O::default()));
    }
    commit_with(
        |options| {
            raw.empty_commit(options);
        },
        |options| {
            let options = options.with_time(time_secs);
            match message {
                Some(message) => options.with_message(message),
                None => options,
            }
        },
    );
    raw.save_after(&heads)
}
