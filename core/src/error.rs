//! Every way a document operation can fail.

use automerge::AutomergeError;

/// A failed document operation. Nothing is applied when one is returned: every write is
/// one Automerge transaction, rolled back on error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JSON Pointer (in a patch, a `?path=` or a schema) is malformed.
    #[error("invalid JSON Pointer {pointer:?}: {reason}")]
    InvalidPointer {
        /// The pointer as given.
        pointer: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A version string is not a `.`-separated list of 64-digit hex change hashes.
    #[error("malformed version {0:?}: expected change hashes (64 hex digits) joined by '.'")]
    InvalidVersion(String),
    /// A well-formed version names a change this document does not have.
    #[error("unknown version: this document has no change {0}")]
    UnknownVersion(String),
    /// A path names nothing in the document (at the version the write was made against).
    #[error("no value at {path}")]
    PathNotFound {
        /// The pointer, as given.
        path: String,
    },
    /// A path runs through or ends at a value of the wrong kind for the operation.
    #[error("{path}: {reason}")]
    WrongType {
        /// The pointer, as given.
        path: String,
        /// What was expected and what was found.
        reason: String,
    },
    /// A JSON Patch `test` operation did not hold.
    #[error("test failed at {path}: the value there is not the one the patch expects")]
    TestFailed {
        /// The pointer of the failed test.
        path: String,
    },
    /// A patch document is malformed (not an array of operations, unknown op, missing field).
    #[error("invalid patch: {0}")]
    InvalidPatch(String),
    /// A JSON Patch holds more operations than one write may make.
    #[error("the patch holds {ops} operations, more than the {max} one write may make; send it as several patches")]
    PatchTooLarge {
        /// How many it holds.
        ops: usize,
        /// [`crate::patch::MAX_PATCH_OPS`].
        max: usize,
    },
    /// An edit ran past its deadline ([`crate::Document::set_deadline`]) and was rolled back.
    #[error("the edit did not finish within the request's time limit and was rolled back; nothing was applied")]
    DeadlineExceeded,
    /// A value cannot be stored: the root is not an object, a counter is not an integer, ...
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// Bytes given as Automerge changes could not be decoded or applied.
    #[error("invalid Automerge changes: {0}")]
    InvalidChanges(String),
    /// A lost-edit id names no open record of this document.
    #[error("no open lost-edit record {0:?} in this document")]
    LostNotFound(String),
    /// Stored bytes could not be loaded.
    #[error("stored document could not be loaded: {0}")]
    Load(String),
    /// Automerge refused an operation Concord believed valid; a bug, reported as such.
    #[error("internal automerge error: {0}")]
    Automerge(#[from] AutomergeError),
}

/// Shorthand for results of document operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
