//! The documents in memory: loaded from storage on first use, one writer at a time each,
//! and every write queued for storage before its document is unlocked.
//!
//! # The write path
//! A write takes the document's lock, applies the edit to the in-memory [`Document`] (one
//! Automerge change), queues a [`WriteBatch`] with the store, and releases the lock; only
//! then does it wait for the batch to be durable, and only then is the write acknowledged.
//! So writes to one document are ordered by its lock, writes to different documents proceed
//! in parallel, and many writes (to one document or many) share one fsync.
//!
//! A batch carries only its own changes. A later batch of the same document may be queued
//! before an earlier one is answered; were the earlier one to fail, the later one would be
//! stored without a change it depends on. The store rules that out by failing stop: after
//! a failed write it refuses every later one until the server restarts and documents load
//! from what is stored (`store/queue.rs`). (Carrying every unconfirmed change instead, as
//! before, copied O(writers²) changes per group on one hot document.)
//!
//! Readers may see a change a moment before it is acknowledged (while its batch syncs).
//!
//! # Live subscribers
//! Each document broadcasts a [`ChangeEvent`] per committed change ([`Registry::subscribe`]),
//! and the registry broadcasts a [`FeedEvent`] per create, change and delete of any document
//! ([`Registry::feed`]), both published under the document's lock so that their order is the
//! order of the writes. [`Registry::close_live`] tells every live stream to end (shutdown).
//!
//! # Several nodes on one store
//! When the store is shared ([`Store::shared`]: PostgreSQL under several nodes), other
//! nodes write too, so a document in memory may be behind the store. It is *caught up*
//! ([`Store::changes_since`], from [`Loaded::synced`]) before every read, subscription and
//! write, and whenever the store sends a
//! [`Notice`](concord_core::storage::Notice) (see [`crate::cluster`]); what it gains
//! is published to subscribers like a local write. Decisions that depend on the current
//! state are left to the store, in the transaction that stores the write: an optimistic or
//! queue write carries the version it was made at ([`Expect::version`]), a lock write the
//! token it was admitted with ([`Expect::lease`]), and a queue write also holds the
//! document's cluster-wide writer lock ([`Store::lock_writer`]) from before the catch-up
//! until it is durable. Such a *checked* write keeps the document locked until the store
//! answers and is published only once stored; a refused one is answered 412 or 409 and the
//! document is reloaded from the store, so memory never keeps a change the store refused.

mod budget;
mod catchup;
mod command;
mod coordinator;
mod error;
mod events;
mod leases;
mod limit;
mod maintain;
mod receipts;
mod write;

pub use budget::{default_cpu_at_once, within};
pub use command::{Answer, Edit, WriteCommand};
pub use error::Error;
pub use events::{
    Catchup, ChangeEvent, FeedEvent, EVENT_BUFFER, FEED_BUFFER, RECENT_EVENTS, RECENT_EVENT_BYTES,
};
pub use leases::Lease;
pub use limit::{DEFAULT_MAX_DOCUMENT_BYTES, DEFAULT_MAX_HISTORY_BYTES};
pub use maintain::{Maintained, Tuning};
pub use receipts::Receipts;
pub use write::{IdempotencyDraft, Responder, Written};

use budget::Cpu;
use coordinator::Coordinator;
use events::publish;
use leases::lease_from;
use receipts::received;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};

use concord_core::policy::Refusal;
use concord_core::storage::{
    Delta, DocMeta, DocState, Expect, IdempotencyRecord, LeaseGrant, LoadedDoc,
    Refusal as StoreRefusal, Store, StoredChange, StoredLease, WriteBatch, WriterLock,
};
use concord_core::{Document, Strategy, Version, WriteMeta, WriteOutcome};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, OwnedRwLockWriteGuard, RwLock};
use uuid::Uuid;

/// One document in memory.
pub struct Loaded {
    /// Creation-time facts.
    pub meta: DocMeta,
    /// The CRDT.
    pub doc: Document,
    /// The version subscribers were last told of (the document's own, but during a write
    /// not yet published).
    pub value_version: Version,
    /// Agent of the last write.
    pub last_agent: Option<String>,
    /// Time of the last write, ms since the epoch.
    pub updated_at_ms: i64,
    /// Who the server received each change from, and when: what history shows.
    pub receipts: Receipts,
    /// The lease of the lock strategy, if one was ever taken.
    pub lease: Option<Lease>,
    /// The newest fencing token issued. Seeded from the clock when the document is loaded
    /// (microseconds), so tokens keep growing across restarts.
    pub last_token: u64,
    /// Recent change events, for subscribers that resume from a version.
    /// Each with the bytes of its operations; at most [`RECENT_EVENTS`] of them and
    /// [`RECENT_EVENT_BYTES`] in all.
    pub recent: VecDeque<(Arc<ChangeEvent>, usize)>,
    /// The bytes of operations `recent` holds.
    pub recent_bytes: usize,
    /// Number of the last change event.
    pub event_seq: u64,
    /// Stored change records not covered by a snapshot: when it passes
    /// [`Tuning::compact_after`], maintenance writes a snapshot.
    pub unsnapshotted: usize,
    /// How far this copy has read the store's change log ([`Store::changes_since`]):
    /// catching up reads the records after it. Moves past the load only on a shared store.
    pub synced: u64,
    /// The bytes of the document's history as stored (snapshot and change records, as
    /// loaded, and every change stored since): what the history budget limits. A
    /// compaction makes it smaller only at the next load, when the snapshot is measured.
    pub history_bytes: u64,
}

impl Loaded {
    fn new(meta: DocMeta, doc: Document, last_agent: Option<String>, updated_at_ms: i64) -> Loaded {
        Loaded {
            meta,
            value_version: doc.version(),
            doc,
            last_agent,
            updated_at_ms,
            receipts: Receipts::default(),
            lease: None,
            last_token: u64::try_from(crate::clock::now_ms())
                .unwrap_or(0)
                .saturating_mul(1000),
            recent: VecDeque::new(),
            recent_bytes: 0,
            event_seq: 0,
            unsnapshotted: 0,
            synced: 0,
            history_bytes: 0,
        }
    }

    /// Counts what the store holds of the document, just loaded from `stored`: its change
    /// records, their bytes and its snapshot's, and how far the log was read.
    fn count_stored(&mut self, stored: &LoadedDoc) {
        self.unsnapshotted = stored.changes.len();
        self.history_bytes = limit::stored_bytes(
            stored.snapshot.as_deref(),
            stored.changes.iter().map(Vec::as_slice),
        );
        self.synced = stored.seq;
    }

    /// Counts `changes`, just stored.
    fn count_new(&mut self, changes: &[StoredChange]) {
        self.unsnapshotted += changes.len();
        self.history_bytes += limit::stored_bytes(None, changes.iter().map(|c| c.bytes.as_slice()));
    }
}

enum SlotState {
    Live(Box<Loaded>),
    /// Deleted or dropped from memory: whoever still holds this slot must look again.
    Retired,
}

/// Changes queued for storage but not yet confirmed durable, by their numbers in queue
/// order (a document with any is not evicted).
#[derive(Default)]
struct Pending {
    last: u64,
    queue: VecDeque<u64>,
}

impl Pending {
    /// Numbers `count` new changes; returns the number of the last one.
    fn push(&mut self, count: usize) -> u64 {
        for _ in 0..count {
            self.last += 1;
            self.queue.push_back(self.last);
        }
        self.last
    }

    /// Everything up to `upto` is durable.
    fn confirm(&mut self, upto: u64) {
        while self.queue.front().is_some_and(|n| *n <= upto) {
            self.queue.pop_front();
        }
    }

    /// The changes numbered `first` and after were refused: they are not stored.
    fn discard_from(&mut self, first: u64) {
        self.queue.retain(|n| *n < first);
    }
}

struct Slot {
    state: Arc<RwLock<SlotState>>,
    pending: Mutex<Pending>,
    /// Change events of this document, for live subscribers.
    /// Made on the first subscription: a channel's buffer is allocated up front, and most
    /// documents never have a live subscriber.
    events: std::sync::OnceLock<broadcast::Sender<Arc<ChangeEvent>>>,
    /// Counts lease releases, for lock requests that wait (a watch, so that a release
    /// between a waiter's check and its wait is not missed).
    released: watch::Sender<u64>,
    /// The number (as in [`Pending`]) of the last change whose batch the store answered
    /// (stored or failed). On a shared store a read waits until every change it would show
    /// was answered, so that no node hands out a version that other nodes cannot find.
    answered: watch::Sender<u64>,
    /// When a request last used this document, ms since the epoch: idle documents leave
    /// memory.
    last_used: AtomicI64,
}

impl Slot {
    fn new(loaded: Loaded) -> Arc<Slot> {
        Arc::new(Slot {
            state: Arc::new(RwLock::new(SlotState::Live(Box::new(loaded)))),
            pending: Mutex::new(Pending::default()),
            events: std::sync::OnceLock::new(),
            released: watch::channel(0).0,
            answered: watch::channel(0).0,
            last_used: AtomicI64::new(crate::clock::now_ms()),
        })
    }

    fn touch(&self) {
        self.last_used
            .store(crate::clock::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// Every document in memory, and the store behind them.
pub struct Registry {
    store: Arc<dyn Store>,
    slots: Mutex<HashMap<Uuid, Arc<Slot>>>,
    /// Created, changed and deleted documents, for viewers of the whole store.
    feed: broadcast::Sender<Arc<FeedEvent>>,
    /// Set once at shutdown: live streams (WebSocket, SSE) end, so that a graceful
    /// shutdown does not wait on connections that never finish by themselves.
    closing: watch::Sender<bool>,
    /// Eviction and compaction settings.
    tuning: Tuning,
    /// Whether other nodes write to the store too, and what follows from it (see the
    /// module docs): chosen once, from the store.
    coordinator: Box<dyn Coordinator>,
    /// limits.rs: the largest a document's value may be, as compact JSON, in bytes.
    max_document_bytes: usize,
    /// limits.rs: the bytes of history past which a document takes no more writes.
    max_history_bytes: u64,
    /// The permits for CPU-heavy work: edits, loads, snapshots (budget.rs).
    cpu: Cpu,
    // -- storage damage (issue 6) --
    /// What loading skipped (or why it failed), per document: reported by `/healthz` and
    /// by reads of the document.
    damage: Mutex<HashMap<Uuid, Vec<String>>>,
}

/// A document locked for writing.
struct WriteGuard {
    slot: Arc<Slot>,
    state: OwnedRwLockWriteGuard<SlotState>,
}

impl WriteGuard {
    /// The document, unless it was dropped from memory while locked.
    fn loaded_or_retired(&mut self) -> Option<&mut Loaded> {
        match &mut *self.state {
            SlotState::Live(loaded) => Some(loaded),
            SlotState::Retired => None,
        }
    }

    fn loaded(&mut self) -> &mut Loaded {
        match &mut *self.state {
            SlotState::Live(loaded) => loaded,
            SlotState::Retired => unreachable!("a guard is only handed out for a live slot"),
        }
    }
}

impl Registry {
    /// A registry over `store`, with nothing loaded.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_tuning(store, Tuning::default())
    }

    /// A registry with explicit eviction and compaction settings.
    pub fn with_tuning(store: Arc<dyn Store>, tuning: Tuning) -> Self {
        Registry {
            coordinator: coordinator::for_store(store.as_ref()),
            store,
            slots: Mutex::new(HashMap::new()),
            feed: broadcast::channel(FEED_BUFFER).0,
            closing: watch::channel(false).0,
            tuning,
            max_document_bytes: DEFAULT_MAX_DOCUMENT_BYTES,
            max_history_bytes: DEFAULT_MAX_HISTORY_BYTES,
            cpu: Cpu::new(default_cpu_at_once()),
            damage: Mutex::default(),
        }
    }

    /// limits.rs: refuses writes to a document whose history (as stored) holds `bytes` or
    /// more.
    pub fn with_history_limit(mut self, bytes: u64) -> Self {
        self.max_history_bytes = bytes;
        self
    }

    /// Runs at most `at_once` edits, loads and snapshots at a time, each off the async
    /// workers (see budget.rs); the default is [`default_cpu_at_once`].
    pub fn with_cpu_limit(mut self, at_once: usize) -> Self {
        self.cpu = Cpu::new(at_once);
        self
    }

    /// limits.rs: refuses writes that would make a document's value more than `bytes` of
    /// compact JSON (and the creation of such a document).
    pub fn with_document_limit(mut self, bytes: usize) -> Self {
        self.max_document_bytes = bytes;
        self
    }

    /// The eviction and compaction settings.
    pub fn tuning(&self) -> Tuning {
        self.tuning
    }

    /// True if other nodes share the store (see the module docs).
    pub fn shared(&self) -> bool {
        self.store.shared()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// How many documents are in memory.
    pub fn loaded_count(&self) -> usize {
        self.slots().len()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The slot of a document, loading it from storage if it is not in memory.
    async fn slot(&self, id: Uuid) -> Result<Arc<Slot>, Error> {
        if let Some(slot) = self.slots().get(&id) {
            slot.touch();
            return Ok(Arc::clone(slot));
        }
        let stored = self.store.load(id).await?.ok_or(Error::NotFound(id))?;
        let (doc, report) = self.load_document(&stored).await.map_err(|e| {
            let e = Error::Unloadable(e.to_string());
            self.note_damage(id, &[e.to_string()]);
            e
        })?;
        for problem in &report.skipped {
            tracing::warn!(doc = %id, %problem, "skipped a stored record while loading");
        }
        self.note_damage(id, &report.skipped);
        let mut loaded = Loaded::new(
            stored.meta.clone(),
            doc,
            stored.state.last_agent.clone(),
            stored.state.updated_at_ms,
        );
        loaded.count_stored(&stored);
        loaded.receipts = Receipts::from_stored(stored.receipts);
        // Another request may have loaded it meanwhile: keep the first.
        Ok(Arc::clone(
            self.slots().entry(id).or_insert_with(|| Slot::new(loaded)),
        ))
    }

    /// The document `stored` holds, loaded on a CPU permit (budget.rs).
    async fn load_document(
        &self,
        stored: &LoadedDoc,
    ) -> Result<(Document, concord_core::doc::LoadReport), concord_core::Error> {
        self.cpu
            .run(|| {
                Document::load(
                    stored.meta.schema.clone(),
                    stored.snapshot.as_deref(),
                    &stored.changes,
                )
            })
            .await
    }

    /// Remembers what loading `id` skipped (nothing: forgets it).
    fn note_damage(&self, id: Uuid, skipped: &[String]) {
        let mut damage = self.damage.lock().unwrap_or_else(PoisonError::into_inner);
        if skipped.is_empty() {
            damage.remove(&id);
        } else {
            damage.insert(id, skipped.to_vec());
        }
    }

    /// Adds what catching `id` up skipped to what its load skipped.
    pub(super) fn add_damage(&self, id: Uuid, skipped: Vec<String>) {
        if !skipped.is_empty() {
            let mut damage = self.damage.lock().unwrap_or_else(PoisonError::into_inner);
            damage.entry(id).or_default().extend(skipped);
        }
    }

    /// What the last load of `id` skipped, and catching it up since, one line per stored
    /// record (empty: nothing).
    pub fn damage_of(&self, id: Uuid) -> Vec<String> {
        self.damage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// How many documents loaded with damage since start, and how many records they skipped.
    pub fn damage_summary(&self) -> (usize, usize) {
        let damage = self.damage.lock().unwrap_or_else(PoisonError::into_inner);
        (damage.len(), damage.values().map(Vec::len).sum())
    }

    /// Runs `f` on the document, read-only.
    pub async fn read<T, E: From<Error>>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Loaded) -> Result<T, E>,
    ) -> Result<T, E> {
        self.read_weighed(id, false, f).await
    }

    /// [`Registry::read`] for a read that may be CPU-heavy (a past version, the history,
    /// the raw changes): `f` waits for a CPU permit and runs off the async workers
    /// (budget.rs), so that at most `--cpu-at-once` such reads hold their output at once.
    pub async fn read_heavy<T, E: From<Error>>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Loaded) -> Result<T, E>,
    ) -> Result<T, E> {
        self.read_weighed(id, true, f).await
    }

    async fn read_weighed<T, E: From<Error>>(
        &self,
        id: Uuid,
        heavy: bool,
        f: impl FnOnce(&Loaded) -> Result<T, E>,
    ) -> Result<T, E> {
        loop {
            let slot = self.slot(id).await?;
            self.coordinator.refresh(self, id, &slot).await?;
            let state = slot.state.read().await;
            if let Some(upto) = self.coordinator.unanswered(&slot) {
                drop(state);
                Self::wait_answered(&slot, upto).await;
                continue;
            }
            if let SlotState::Live(loaded) = &*state {
                if heavy {
                    return self.cpu.run(|| f(loaded)).await;
                }
                return f(loaded);
            }
        }
    }

    async fn lock(&self, id: Uuid) -> Result<WriteGuard, Error> {
        loop {
            let slot = self.slot(id).await?;
            let state = Arc::clone(&slot.state).write_owned().await;
            if let SlotState::Live(_) = &*state {
                return Ok(WriteGuard { slot, state });
            }
        }
    }

    /// Runs `f` on the document under its write lock, storing nothing (lease bookkeeping).
    pub async fn update<T, E: From<Error>>(
        &self,
        id: Uuid,
        f: impl FnOnce(&mut Loaded) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut guard = self.lock(id).await?;
        f(guard.loaded())
    }

    /// Deletes a document from memory and storage. A document whose stored state does not
    /// load can still be deleted: it was never in memory, so only the store holds it.
    pub async fn delete(&self, id: Uuid) -> Result<(), Error> {
        let guard = match self.lock(id).await {
            Ok(guard) => Some(guard),
            Err(Error::Unloadable(_)) => None,
            Err(e) => return Err(e),
        };
        if !self.store.delete(id).await? && guard.is_none() {
            return Err(Error::NotFound(id));
        }
        self.note_damage(id, &[]); // gone with the document
        if let Some(mut guard) = guard {
            *guard.state = SlotState::Retired;
            self.retire(id, &guard.slot);
            // Subscribers see their stream end once the guard is dropped, below.
        }
        self.announce(FeedEvent::Deleted {
            id,
            time_ms: crate::clock::now_ms(),
        });
        Ok(())
    }

    /// Removes `slot` from the map if it is still the one for `id`.
    fn retire(&self, id: Uuid, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&id);
        }
    }

    /// The documents in memory.
    pub fn loaded_ids(&self) -> Vec<Uuid> {
        self.slots().keys().copied().collect()
    }
}

#[cfg(test)]
mod tests;
