//! The storage contract: what a backend must keep so that a document survives a restart
//! exactly, and an in-memory backend for tests.
//!
//! Changes are content-addressed by (document, change hash), so storing one twice is
//! harmless. A [`WriteBatch`] is atomic and durable when [`Store::write`] returns `Ok`:
//! that is the point at which the server acknowledges the write to the client.
//!
//! A store may be shared by several nodes ([`Store::shared`]): then it also hands out what
//! a document gained since a log position ([`Store::changes_since`]), tells its node when
//! other nodes wrote ([`Notice`]), and decides what no node's memory can: version checks
//! and lease tokens in the write's transaction ([`Store::write_checked`], [`Expect`]),
//! leases, and one writer per document ([`Store::lock_writer`]).

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
    /// Releases the lease with `token`; `false` if it is not the current lease.
    async fn release_lease(&self, id: Uuid, token: u64) -> Result<bool, StoreError> {
        let _ = (id, token);
        Err(no_leases())
    }
}

#[derive(Default)]
struct MemoryDoc {
    meta: Option<DocMeta>,
    state: Option<DocState>,
    snapshot: Option<Vec<u8>>,
    /// The highest log position among the records the snapshot replaced.
    covers: u64,
    /// Records with their log positions, in order.
    changes: Vec<(u64, StoredChange)>,
}

#[derive(Default)]
struct MemoryDocs {
    /// Creation order.
    order: Vec<Uuid>,
    docs: HashMap<Uuid, MemoryDoc>,
    /// The last log position given out.
    seq: u64,
}

/// A [`Store`] in memory, for tests: the same contract without the disk (not shared).
#[derive(Default)]
pub struct MemoryStore {
    docs: Mutex<MemoryDocs>,
    keys: Mutex<HashMap<String, IdempotencyRecord>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn write_now(
        &self,
        batch: WriteBatch,
        expect: Expect,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        let MemoryDocs { order, docs, seq } = &mut *guard;
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
        if let Some(expected) = &expect.version {
            let current = doc
                .state
                .as_ref()
                .map(|s| s.version.clone())
                .unwrap_or_default();
            if *expected != current {
                return Ok(Err(Refusal::Stale { current }));
            }
        }
        if expect.lease.is_some() {
            // No leases here: no token can be the newest.
            return Ok(Err(Refusal::Fenced { newest: None }));
        }
        for change in batch.changes {
            if !doc.changes.iter().any(|(_, c)| c.hash == change.hash) {
                *seq += 1;
                doc.changes.push((*seq, change));
            }
        }
        doc.state = Some(batch.state);
        if let Some(record) = batch.idempotency {
            self.keys
                .lock()
                .expect("memory store poisoned")
                .insert(record.key.clone(), record);
        }
        Ok(Ok(()))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked {
        let result = self.write_now(batch, expect);
        Box::pin(std::future::ready(result))
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        Ok(guard.docs.get(&id).and_then(|doc| {
            Some(LoadedDoc {
                meta: doc.meta.clone()?,
                state: doc.state.clone()?,
                snapshot: doc.snapshot.clone(),
                changes: doc.changes.iter().map(|(_, c)| c.bytes.clone()).collect(),
                seq: doc
                    .changes
                    .iter()
                    .map(|(n, _)| *n)
                    .max()
                    .unwrap_or(0)
                    .max(doc.covers),
            })
        }))
    }

    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        Ok(guard.docs.get(&id).and_then(|doc| {
            let changes: Vec<&(u64, StoredChange)> =
                doc.changes.iter().filter(|(n, _)| *n > since).collect();
            let snapshot = (doc.covers > since).then(|| doc.snapshot.clone()).flatten();
            let seq =
                changes
                    .iter()
                    .map(|(n, _)| *n)
                    .max()
                    .unwrap_or(since)
                    .max(if snapshot.is_some() {
                        doc.covers
                    } else {
                        since
                    });
            Some(Delta {
                state: doc.state.clone()?,
                seq,
                snapshot,
                changes: changes.into_iter().map(|(_, c)| c.bytes.clone()).collect(),
            })
        }))
    }

    async fn list(&self) -> Result<Vec<DocSummary>, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        Ok(guard
            .order
            .iter()
            .filter_map(|id| {
                let doc = guard.docs.get(id)?;
                Some(DocSummary {
                    meta: doc.meta.clone()?,
                    state: doc.state.clone()?,
                })
            })
            .collect())
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        guard.order.retain(|d| *d != id);
        Ok(guard.docs.remove(&id).is_some())
    }

    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        let doc = guard.docs.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        doc.snapshot = Some(snapshot);
        let removed = doc
            .changes
            .iter()
            .filter(|(_, c)| covered.contains(&c.hash))
            .map(|(n, _)| *n)
            .max()
            .unwrap_or(0);
        doc.covers = doc.covers.max(removed);
        doc.changes.retain(|(_, c)| !covered.contains(&c.hash));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change(n: u8) -> StoredChange {
        StoredChange {
            hash: [n; 32],
            bytes: vec![n],
        }
    }

    fn batch(id: Uuid, create: bool, changes: Vec<StoredChange>, version: &str) -> WriteBatch {
        WriteBatch {
            doc: id,
            create: create.then(|| DocMeta {
                id,
                strategy: Strategy::Crdt,
                schema: Schema::default(),
                created_at_ms: 0,
            }),
            changes,
            state: DocState {
                version: version.into(),
                change_count: 0,
                updated_at_ms: 0,
                last_agent: None,
            },
            idempotency: None,
        }
    }

    /// Runs a future that is ready at once (every future of the memory store is).
    fn now<F: Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(output) => output,
            std::task::Poll::Pending => panic!("the memory store never waits"),
        }
    }

    #[test]
    fn changes_since_follows_the_log_through_compaction() {
        let store = MemoryStore::new();
        let id = Uuid::new_v4();
        now(store.write(batch(id, true, vec![change(1)], "v1"))).unwrap();
        let loaded = now(store.load(id)).unwrap().unwrap();
        assert_eq!(loaded.seq, 1);
        let delta = now(store.changes_since(id, loaded.seq)).unwrap().unwrap();
        assert!(delta.is_empty());
        assert_eq!(delta.seq, 1);

        // Storing a change twice gives it no second position.
        now(store.write(batch(id, false, vec![change(1), change(2)], "v2"))).unwrap();
        let delta = now(store.changes_since(id, 1)).unwrap().unwrap();
        assert_eq!((delta.seq, delta.changes.clone()), (2, vec![vec![2]]));
        assert_eq!(delta.state.version, "v2");

        // A compaction removes records: a reader behind them gets the snapshot.
        now(store.compact(id, b"snap".to_vec(), vec![[1; 32], [2; 32]])).unwrap();
        now(store.write(batch(id, false, vec![change(3)], "v3"))).unwrap();
        let behind = now(store.changes_since(id, 1)).unwrap().unwrap();
        assert_eq!(behind.snapshot.as_deref(), Some(&b"snap"[..]));
        assert_eq!((behind.seq, behind.changes), (3, vec![vec![3]]));
        let ahead = now(store.changes_since(id, 2)).unwrap().unwrap();
        assert_eq!((ahead.snapshot, ahead.changes), (None, vec![vec![3]]));
        assert_eq!(now(store.load(id)).unwrap().unwrap().seq, 3);

        now(store.delete(id)).unwrap();
        assert_eq!(now(store.changes_since(id, 0)).unwrap(), None);
    }

    #[test]
    fn checked_writes_compare_and_set_the_version() {
        let store = MemoryStore::new();
        let id = Uuid::new_v4();
        now(store.write(batch(id, true, vec![], "v1"))).unwrap();
        let expect = |v: &str| Expect {
            version: Some(v.into()),
            lease: None,
        };
        let first = now(store.write_checked(batch(id, false, vec![change(1)], "v2"), expect("v1")));
        assert_eq!(first.unwrap(), Ok(()));
        let second =
            now(store.write_checked(batch(id, false, vec![change(2)], "v3"), expect("v1")));
        assert_eq!(
            second.unwrap(),
            Err(Refusal::Stale {
                current: "v2".into()
            })
        );
        // The refused batch stored nothing.
        let loaded = now(store.load(id)).unwrap().unwrap();
        assert_eq!(
            (loaded.changes.len(), loaded.state.version.as_str()),
            (1, "v2")
        );
        // A store that is not shared keeps no leases.
        assert!(!store.shared());
        assert!(now(store.lease(id)).is_err());
    }
}
