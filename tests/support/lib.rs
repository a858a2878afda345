//! What the end-to-end suites share (the library of `concord-tests`): the real Concord
//! server on `127.0.0.1:0` with a temporary data folder, and the clients and connections
//! the suites drive it with.
//!
//! # Layout
//! - [`server`]: [`TestServer`], started with a configuration the test may adjust and
//!   restarted with the same one; [`Reply`], a response read whole.
//! - [`sse`]: [`SseStream`], Server-Sent Events read event by event.
//! - [`proxy`]: [`Proxy`], a TCP proxy that cuts and holds connections (reconnect tests).

pub mod proxy;
pub mod server;
pub mod sse;

pub use proxy::Proxy;
pub use server::{Reply, TestServer};
pub use sse::{SseEvent, SseStream};
