//! What core's integration tests share (each test file that needs it declares `mod common;`).
//! `replicas.rs` beside it is included by path instead, from `convergence.rs` here and from
//! the end-to-end `tests/convergence.rs`.

use concord_core::WriteMeta;

/// The metadata of a write by `agent` at a fixed time (2023-11-14).
pub fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}
