//! Every way a registry operation fails, typed. The transports render them, once each: HTTP
//! through `From<Error> for ApiError` (problem.rs), the WebSocket through the same problem
//! with its own wording for refusals that name HTTP headers (api/live/message.rs).

use concord_core::policy::Refusal;
use concord_core::storage::StoreError;
use uuid::Uuid;

/// Why a registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such document (or it was deleted meanwhile).
    #[error("no document {0}")]
    NotFound(Uuid),
    /// A create named a document that exists.
    #[error("document {0} already exists")]
    AlreadyExists(Uuid),
    /// The document's strategy refuses the write.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The edit itself failed (a bad pointer, a failed test, an unknown version, …).
    #[error(transparent)]
    Document(#[from] concord_core::Error),
    /// A sync message that does not apply.
    #[error("{0}")]
    InvalidSync(String),
    /// A subscription from a version this document never had.
    #[error("{0}")]
    UnknownVersion(String),
    /// The write would make the document larger than the document limit.
    #[error("this write would make the document more than {limit} bytes of JSON, the server's document limit; nothing was changed")]
    TooLarge {
        /// The limit, in bytes of compact JSON.
        limit: usize,
    },
    /// The document's history holds its budget: it takes no more writes.
    #[error("this document's history holds {bytes} bytes as stored, the server's history budget is {limit}: it takes no more writes (nothing was changed); its value can start a new document")]
    HistoryFull {
        /// The history's bytes.
        bytes: u64,
        /// The budget.
        limit: u64,
    },
    /// The store failed (or found its data damaged).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored document does not load.
    #[error("the stored document does not load: {0}")]
    Unloadable(String),
    /// Something broke inside (a task that failed).
    #[error("{0}")]
    Internal(String),
}
