//! Concord's wire types: what a Concord server and its clients exchange, defined once for
//! both sides so that they cannot drift apart.
//!
//! # Layout
//! - [`live`]: the JSON messages of the WebSocket protocol on `/v1/docs/{id}/ws`
//!   ([`live::ClientMessage`], [`live::ServerMessage`], [`live::Change`], [`live::Ack`]) and
//!   [`live::Problem`], the RFC 9457 fields of an HTTP error body and of a WebSocket
//!   `error`.
//! - [`json`]: strict JSON, as the server reads every JSON body and message: a key given
//!   twice and an integer out of the 64-bit range are errors, not silently changed.
//! - [`repo`]: the automerge-repo network protocol on `/v1/repo`: its CBOR messages
//!   ([`repo::Incoming`], [`repo::Outgoing`]) and automerge document ids and URLs.
//!
//! # Who depends on it
//! - `concord-server` reads what clients send and writes its answers with these types;
//! - `concord-client`, the Rust client for agents, speaks the same messages from the other
//!   side (and re-exports the [`live`] types);
//! - the fuzz targets (`fuzz/`) feed the decoders arbitrary bytes.
//!
//! The crate does no IO and has no async runtime: serde, CBOR and base58 only, so a client
//! depends on nothing of the server.
//!
//! # Example
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use concord_protocol::live::{ClientMessage, ServerMessage};
//! use concord_protocol::repo::{automerge_url, parse_document_id, Incoming, Outgoing};
//!
//! // A client's write, as it travels over `/v1/docs/{id}/ws`.
//! let text = r#"{"type": "patch", "id": 1, "ops": [], "base": "abc"}"#;
//! let message: ClientMessage = serde_json::from_value(concord_protocol::json::from_str(text)?)?;
//! assert!(matches!(message, ClientMessage::Patch { base: Some(_), .. }));
//! let answer: ServerMessage =
//!     serde_json::from_str(r#"{"type": "subscribed", "version": "abc"}"#)?;
//! assert_eq!(answer, ServerMessage::Subscribed { version: "abc".into() });
//!
//! // A Concord id is an automerge-repo document id, and back.
//! let id = uuid::Uuid::new_v4();
//! assert_eq!(parse_document_id(&automerge_url(id)), Some(id));
//!
//! // A CBOR message to a repo peer, read back as if the peer had sent it.
//! let bytes = Outgoing::Sync { document: "doc", data: vec![1, 2] }.encode("server", "peer");
//! assert!(matches!(Incoming::decode(&bytes)?, Incoming::Sync { request: false, .. }));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod json;
pub mod live;
pub mod repo;
