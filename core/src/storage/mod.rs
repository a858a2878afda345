//! The storage contract: what a backend must keep so that a document survives a restart
//! exactly. [`MemoryStore`] (in `memory.rs`) keeps it in memory, for tests.
//!
//! Changes are content-addressed by (document, change hash), so storing one twice is
//! harmless. The first time a change is stored, its [`Receipt`] (who the server received
//! it from, and when) is stored beside it, and outlives the change's record when a
//! snapshot replaces it. A [`WriteBatch`] is atomic and durable when [`Store::write`] returns `Ok`:
//! that is the point at which the server acknowledges the write to the client.
//!
//! A store may be shared by several nodes ([`Store::shared`]): then it also hands out what
//! a document gained since a log position ([`Store::changes_since`]), tells its node when
//! other nodes wrote ([`Notice`]), and decides what no node's memory can: version checks
//! and lease tokens in the write's transaction ([`Store::write_checked`], [`Expect`]),
//! leases, and one writer per document ([`Store::lock_writer`]).

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;
use uuid::Uuid;

use crate::schema::Schema;
use crate::strategy::Strategy;

mod memory;

pub use memory::MemoryStore;

/// What a document is, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocMeta {
    /// The document id.
    pub id: Uuid,
    /// The write policy chosen at creation.
    pub strategy: Strategy,
    /// Which pointers hold collaborative text and counters.
    pub schema: Schema,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// What changes with every write; kept beside the changes so that listing documents does
/// not need to load them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocState {
    /// The version after the write (see [`crate::Version`]'s `Display`).
    pub version: String,
    /// How many changes the document holds.
    pub change_count: u64,
    /// Time of the last write, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
    /// The agent of the last write, if known.
    pub last_agent: Option<String>,
}

/// One row of the document list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSummary {
    /// Creation-time facts.
    pub meta: DocMeta,
    /// The state after the last durable write.
    pub state: DocState,
}

/// One page of the stored documents, oldest first ([`Store::list_page`]).
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// The documents.
    pub docs: Vec<DocSummary>,
    /// Where the next page starts (pass it as `after`), or `None` if this is the last.
    pub next: Option<u64>,
}

/// One Automerge change as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// The change hash (32 bytes); with the document id, the primary key.
    pub hash: [u8; 32],
    /// The encoded change (`Change::raw_bytes`).
    pub bytes: Vec<u8>,
    /// Who the server received it from, and when; stored with the change the first time
    /// the change is stored (a change stored again keeps its first receipt). `None`: the
    /// server knows no sender (a copy of a change stored before receipts were kept).
    pub receipt: Option<Receipt>,
}

/// Who the server received a change from, and when, by the server's own account: the
/// agent it authenticated (with authentication on) or the one the request named (without),
/// and its clock. A change's own note and time are the writer's claim; history shows the
/// receipt. Kept beside the change, and kept when a snapshot replaces the change's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The agent.
    pub agent: String,
    /// When the server received it, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The recorded outcome of a request made with an `Idempotency-Key`, replayed to a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    /// The client's key.
    pub key: String,
    /// A digest of method, path and body: the same key with another fingerprint is refused.
    pub fingerprint: String,
    /// The HTTP status of the first response.
    pub status: u16,
    /// The response headers worth replaying (ETag, Location, Content-Type).
    pub headers: Vec<(String, String)>,
    /// The response body.
    pub body: Vec<u8>,
    /// When the first request was answered, milliseconds since the Unix epoch.
    pub created_at_ms: i64,
}

/// Everything one acknowledged write stores, atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// The document written.
    pub doc: Uuid,
    /// Present when this write creates the document.
    pub create: Option<DocMeta>,
    /// New changes; ones already stored for this document are ignored.
    pub changes: Vec<StoredChange>,
    /// The document's state after the write.
    pub state: DocState,
    /// The response to replay for a retry with the same key, stored in the same transaction.
    pub idempotency: Option<IdempotencyRecord>,
}

/// A document as read back from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedDoc {
    /// Creation-time facts.
    pub meta: DocMeta,
    /// The state after the last durable write.
    pub state: DocState,
    /// A saved document (`Automerge::save`) covering some of the changes, if compacted.
    pub snapshot: Option<Vec<u8>>,
    /// Changes not covered by the snapshot, in the order they were stored.
    pub changes: Vec<Vec<u8>>,
    /// The receipt of every change that has one (those in the snapshot too), by change
    /// hash, in the order the changes were stored.
    pub receipts: Vec<([u8; 32], Receipt)>,
    /// The log position this load reaches (see [`Store::changes_since`]): everything stored
    /// up to it is in `snapshot` and `changes`.
    pub seq: u64,
}

/// What a document gained in storage after a log position ([`Store::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The state after the last durable write.
    pub state: DocState,
    /// The log position this delta reaches: the `since` of the next call.
    pub seq: u64,
    /// The snapshot, present when a compaction removed change records stored after `since`
    /// (they are only in it now): merge it, it holds nothing that is not stored.
    pub snapshot: Option<Vec<u8>>,
    /// The change records stored after `since`, in the order they became durable.
    pub changes: Vec<Vec<u8>>,
    /// The receipts of the changes stored after `since` (whether their records are in
    /// `changes` or only in `snapshot` now), by change hash, in the same order.
    pub receipts: Vec<([u8; 32], Receipt)>,
}

impl Delta {
    /// True if it brings nothing.
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.changes.is_empty()
    }
}

/// A condition a write must meet, checked by the store in the transaction that stores it
/// ([`Store::write_checked`]): how a strategy keeps its meaning when several nodes write to
/// one store and no node's memory can decide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expect {
    /// The stored version must still be this one (compare-and-set): nobody wrote since the
    /// writer's node last read the document.
    pub version: Option<String>,
    /// The lease of the lock strategy with this token must be the newest one issued, not
    /// released and not expired (fencing).
    pub lease: Option<u64>,
}

/// Why a checked write was not stored: its [`Expect`] did not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another write was stored first; the stored version is now `current`.
    #[error("the document changed: it is now at {current}")]
    Stale {
        /// The stored version.
        current: String,
    },
    /// The token is not the one of the newest lease (`newest`, if any was issued).
    #[error("the lease token is fenced off (newest token: {newest:?})")]
    Fenced {
        /// The newest token issued for the document, if any.
        newest: Option<u64>,
    },
    /// The token is the newest one, but its lease expired or was released.
    #[error("the lease expired or was released")]
    LeaseExpired,
}

/// A lease of the lock strategy as a shared store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLease {
    /// The fencing token, from a sequence that only grows.
    pub token: u64,
    /// The agent that took it.
    pub agent: String,
    /// How long it still runs, by the store's clock, when it was read (0 or less: expired).
    /// Relative, so that nodes whose clocks differ from the store's agree.
    pub remaining_ms: i64,
}

/// The answer to [`Store::acquire_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGrant {
    /// A new lease, with a token newer than every earlier one.
    Granted(StoredLease),
    /// Someone else holds an unexpired lease.
    Held(StoredLease),
}

/// What a shared store tells its node about writes made by other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Another node stored a change of this document, or deleted it: catch it up.
    Changed(Uuid),
    /// Another node released a lease of this document: lock requests waiting may retry.
    Released(Uuid),
    /// Notices may have been missed (the store's listener connected again): catch up every
    /// document in memory.
    Resync,
}

/// Where a shared store sends its [`Notice`]s.
pub type NoticeSink = Box<dyn Fn(Notice) + Send + Sync>;

/// Held while this node is the only writer of a document among every node of a shared
/// store ([`Store::lock_writer`]); dropping it lets the next writer in.
pub type WriterLock = Box<dyn std::any::Any + Send + Sync>;

/// A storage failure. Backends map their own errors into these.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The write names a document that is not stored (and is not being created).
    #[error("document {0} is not stored")]
    NotFound(Uuid),
    /// A create names a document that already exists.
    #[error("document {0} already exists")]
    AlreadyExists(Uuid),
    /// Stored bytes could not be read back (a corrupt row or file).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend failed (disk, database connection, ...).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// A write on its way to disk: resolves once the batch is durable (or has failed).
pub type Durable = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

/// A checked write on its way to disk: resolves to `Ok(Ok(()))` once the batch is durable,
/// to `Ok(Err(refusal))` if its [`Expect`] did not hold (nothing of it was stored).
pub type Checked =
    Pin<Box<dyn Future<Output = Result<Result<(), Refusal>, StoreError>> + Send + 'static>>;

fn no_leases() -> StoreError {
    StoreError::Backend(
        "this store keeps no leases: a store that is not shared leaves them to its node".into(),
    )
}

/// A durable home for documents. Implementations must make a write atomic and durable (on
/// disk, fsynced) before it resolves `Ok`, and should let concurrent writes share one sync
/// (group commit).
///
/// A store is either written by one node (SQLite: that node's memory is the truth, and the
/// methods about other nodes have trivial answers) or *shared* by several nodes
/// (PostgreSQL): then [`Store::shared`] is true, each stored change record gets a log
/// position (`seq`) so that a node can read what others stored ([`Store::changes_since`]),
/// [`Notice`]s tell it when to, and decisions that depend on the current state are made by
/// the store ([`Store::write_checked`], leases, [`Store::lock_writer`]).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues a batch, to be stored atomically, and returns a future that resolves once it
    /// is durable. The queueing happens in this call, not when the future is first polled:
    /// batches become durable in the order `write` was called, so a caller that calls it
    /// under a document's lock orders that document's writes without holding the lock
    /// while the disk syncs.
    fn write(&self, batch: WriteBatch) -> Durable {
        let checked = self.write_checked(batch, Expect::default());
        Box::pin(async move {
            checked.await?.map_err(|refusal| {
                StoreError::Backend(format!("a write without conditions was refused: {refusal}"))
            })
        })
    }
    /// [`Store::write`], stored only if `expect` holds in the transaction that stores it;
    /// queued in this call, in the same order as plain writes.
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked;
    /// Reads a document back, or `None` if it is not stored.
    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError>;
    /// What the document gained after log position `since` (from [`LoadedDoc::seq`] or an
    /// earlier [`Delta::seq`]), or `None` if it is not stored (any more). Log positions of a
    /// document grow in the order its records became durable, so nothing stored at or
    /// before the returned [`Delta::seq`] is missed by the next call.
    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError>;
    /// At most `limit` stored documents (at least one), oldest first, from after the
    /// place `after` names (from the start if `None`): a listing reads the store page by
    /// page, so that its memory is one page whatever the number of documents. Documents
    /// created or deleted meanwhile may or may not show; no other is missed or repeated.
    async fn list_page(&self, after: Option<u64>, limit: usize) -> Result<ListPage, StoreError>;
    /// Lists every stored document, oldest first (in memory at once: for tests and small
    /// stores; a server lists page by page).
    async fn list(&self) -> Result<Vec<DocSummary>, StoreError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.list_page(after, 1000).await?;
            all.extend(page.docs);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
    /// Deletes a document and all it stored; `false` if it was not there.
    async fn delete(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Replaces the stored changes listed in `covered` by one snapshot that contains them;
    /// their receipts stay.
    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError>;
    /// [`Store::compact`] by a node that read the document's log up to `synced` (so its
    /// snapshot holds every record stored up to there). On a shared store another node may
    /// have compacted records past `synced` meanwhile: then its snapshot is kept and this
    /// one dropped (`false`), since this one may lack what only that one holds.
    async fn compact_from(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
        synced: u64,
    ) -> Result<bool, StoreError> {
        let _ = synced;
        self.compact(id, snapshot, covered).await.map(|()| true)
    }
    /// Looks up the recorded response for an idempotency key.
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Forgets idempotency records created before `before_ms`; returns how many.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError>;

    /// True if other nodes write to this store too. Then a node must catch a document up
    /// before deciding anything on its state, and leave the decisions that no node's memory
    /// can make (version checks, leases, the queue's single writer) to the store.
    fn shared(&self) -> bool {
        false
    }
    /// Registers where [`Notice`]s go (a store that is not shared has none to send).
    fn on_notice(&self, sink: NoticeSink) {
        drop(sink);
    }
    /// Makes this node the only writer of document `id` across every node of a shared store,
    /// waiting for the current one; `None` on a store that is not shared (the node's own
    /// lock is enough).
    async fn lock_writer(&self, id: Uuid) -> Result<Option<WriterLock>, StoreError> {
        let _ = id;
        Ok(None)
    }
    /// The newest lease of a lock document, unless released (a shared store keeps leases;
    /// others leave them to their node).
    async fn lease(&self, id: Uuid) -> Result<Option<StoredLease>, StoreError> {
        let _ = id;
        Err(no_leases())
    }
    /// Takes the lease of a lock document for `ttl_ms`, unless an unexpired one is held.
    async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
    ) -> Result<LeaseGrant, StoreError> {
        let _ = (id, agent, ttl_ms);
        Err(no_leases())
    }
    /// Releases the lease with `token` taken by `agent`; `false` if it is not the current
    /// lease, or another agent took it.
    async fn release_lease(&self, id: Uuid, token: u64, agent: &str) -> Result<bool, StoreError> {
        let _ = (id, token, agent);
        Err(no_leases())
    }
}
