//! Concord's document logic, free of IO: JSON documents kept as Automerge CRDTs, writes
//! applied at the version their writer read and merged into the present, and the storage
//! contract that server backends fulfil.
//!
//! # Layout
//! - [`doc`]: [`Document`], one Automerge document with its schema; reads, writes, history.
//! - [`version`]: [`Version`], the sorted set of heads that names a state (the ETag).
//! - [`pointer`]: JSON Pointers and the `*` patterns of a schema.
//! - [`schema`]: [`Schema`], which pointers hold collaborative text and counters.
//! - [`value`]: Automerge state to JSON, and the conflicts a state holds.
//! - [`reconcile`]: a whole new JSON value turned into the fewest Automerge operations.
//! - `listdiff`: which old list element each new one is (identity, not position).
//! - `textdiff`: the splices between two texts, lines first, then characters.
//! - [`lost`]: edits a merge could not keep visible, recorded so none vanishes silently.
//! - [`mirror`]: the present value as JSON, moved forward by each change's patches; and
//!   [`mirror::json_len`], the size of a value as compact JSON.
//! - [`patch`]: RFC 6902 JSON Patch (with `increment` and `splice`) and RFC 7396 merge patch.
//! - [`policy`]: each strategy's rule for a write: the base version it applies at, or a
//!   typed [`policy::Refusal`].
//! - [`strategy`]: [`Strategy`], the write policies compared by the comparison mode.
//! - [`sync`]: the Automerge sync protocol: [`sync::SyncState`] per peer, messages in and out.
//! - [`storage`]: the [`Store`](storage::Store) trait and an in-memory store.
//! - [`error`]: [`Error`], every way a document operation can fail.
//!
//! Core does no IO and reads no clock: times and agents come in as arguments.
//!
//! # Example
//! ```
//! use concord_core::{Document, Schema, WriteMeta};
//! use serde_json::json;
//!
//! let meta = |agent: &str| WriteMeta { agent: agent.into(), time_ms: 0, message: None };
//! let (mut doc, _) = Document::create(&json!({"items": []}), Schema::default(), &meta("setup")).unwrap();
//! let v1 = doc.version();
//! // A and B both read v1 and append an item; both survive.
//! doc.put(Some(&v1), &json!({"items": ["from B"]}), &meta("B")).unwrap();
//! doc.put(Some(&v1), &json!({"items": ["from A"]}), &meta("A")).unwrap();
//! let items = doc.read(None).unwrap()["items"].as_array().unwrap().len();
//! assert_eq!(items, 2);
//! ```
#![warn(missing_docs, unreachable_pub)]

pub mod doc;
pub mod error;
mod listdiff;
pub mod lost;
pub mod mirror;
mod note;
pub mod patch;
pub mod pointer;
pub mod policy;
pub mod reconcile;
pub mod schema;
pub mod storage;
pub mod strategy;
pub mod sync;
mod textdiff;
pub mod value;
pub mod version;

pub use doc::{Deadline, Document, WriteMeta, WriteOutcome};
pub use error::Error;
pub use lost::LostEdit;
pub use schema::Schema;
pub use strategy::Strategy;
pub use version::Version;
