//! The storage contract: what a backend must keep so that a document survives a restart
//! exactly, and an in-memory backend for tests.
//!
//! Changes are content-addressed by (document, change hash), so storing one twice is
//! harmless. A [`WriteBatch`] is atomic and durable when [`Store::write`] returns `Ok`:
//! that is the point at which the server acknowledges the write to the client.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use crate::schema::Schema;
use crate::strategy::Strategy;

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

/// One Automerge change as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// The change hash (32 bytes); with the document id, the primary key.
    pub hash: [u8; 32],
    /// The encoded change (`Change::raw_bytes`).
    pub bytes: Vec<u8>,
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
}

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

/// A durable home for documents. Implementations must make [`Store::write`] atomic and
/// durable (on disk, fsynced) before returning `Ok`, and should let concurrent writes share
/// one sync (group commit).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Queues a batch, to be stored atomically, and returns a future that resolves once it
    /// is durable. The queueing happens in this call, not when the future is first polled:
    /// batches become durable in the order `write` was called, so a caller that calls it
    /// under a document's lock orders that document's writes without holding the lock
    /// while the disk syncs.
    fn write(&self, batch: WriteBatch) -> Durable;
    /// Reads a document back, or `None` if it is not stored.
    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError>;
    /// Lists every stored document, oldest first.
    async fn list(&self) -> Result<Vec<DocSummary>, StoreError>;
    /// Deletes a document and all it stored; `false` if it was not there.
    async fn delete(&self, id: Uuid) -> Result<bool, StoreError>;
    /// Replaces the stored changes listed in `covered` by one snapshot that contains them.
    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError>;
    /// Looks up the recorded response for an idempotency key.
    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
    /// Forgets idempotency records created before `before_ms`; returns how many.
    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError>;
}

#[derive(Default)]
struct MemoryDoc {
    meta: Option<DocMeta>,
    state: Option<DocState>,
    snapshot: Option<Vec<u8>>,
    changes: Vec<StoredChange>,
}

/// A [`Store`] in memory, for tests: the same contract without the disk.
#[derive(Default)]
pub struct MemoryStore {
    docs: Mutex<(Vec<Uuid>, HashMap<Uuid, MemoryDoc>)>,
    keys: Mutex<HashMap<String, IdempotencyRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn write_now(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        let (order, docs) = &mut *guard;
        if let Some(meta) = &batch.create {
            if docs.contains_key(&batch.doc) {
                return Err(StoreError::AlreadyExists(batch.doc));
            }
            order.push(batch.doc);
            docs.insert(
                batch.doc,
                MemoryDoc {
                    meta: Some(meta.clone()),
                    ..MemoryDoc::default()
                },
            );
        }
        let doc = docs
            .get_mut(&batch.doc)
            .ok_or(StoreError::NotFound(batch.doc))?;
        for change in batch.changes {
            if !doc.changes.iter().any(|c| c.hash == change.hash) {
                doc.changes.push(change);
            }
        }
        doc.state = Some(batch.state);
        if let Some(record) = batch.idempotency {
            self.keys
                .lock()
                .expect("memory store poisoned")
                .insert(record.key.clone(), record);
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn write(&self, batch: WriteBatch) -> Durable {
        let result = self.write_now(batch);
        Box::pin(std::future::ready(result))
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        Ok(guard.1.get(&id).and_then(|doc| {
            Some(LoadedDoc {
                meta: doc.meta.clone()?,
                state: doc.state.clone()?,
                snapshot: doc.snapshot.clone(),
                changes: doc.changes.iter().map(|c| c.bytes.clone()).collect(),
            })
        }))
    }

    async fn list(&self) -> Result<Vec<DocSummary>, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        let (order, docs) = &*guard;
        Ok(order
            .iter()
            .filter_map(|id| {
                let doc = docs.get(id)?;
                Some(DocSummary {
                    meta: doc.meta.clone()?,
                    state: doc.state.clone()?,
                })
            })
            .collect())
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        let (order, docs) = &mut *guard;
        order.retain(|d| *d != id);
        Ok(docs.remove(&id).is_some())
    }

    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        let doc = guard.1.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        doc.snapshot = Some(snapshot);
        doc.changes.retain(|c| !covered.contains(&c.hash));
        Ok(())
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        Ok(self
            .keys
            .lock()
            .expect("memory store poisoned")
            .get(key)
            .cloned())
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut keys = self.keys.lock().expect("memory store poisoned");
        let before = keys.len();
        keys.retain(|_, r| r.created_at_ms >= before_ms);
        Ok((before - keys.len()) as u64)
    }
}
