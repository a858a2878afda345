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
//! A batch carries every change of its document that is not yet known to be durable, not
//! only its own: if an earlier batch failed, a later acknowledged change can never be
//! stored without the changes it depends on. Storing a change twice is harmless.
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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use concord_core::storage::{
    Delta, DocMeta, DocState, Expect, IdempotencyRecord, LeaseGrant, Refusal, Store, StoredChange,
    StoredLease, WriteBatch, WriterLock,
};
use concord_core::{Document, Strategy, Version, WriteMeta, WriteOutcome};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, watch, OwnedRwLockWriteGuard, RwLock};
use uuid::Uuid;

use crate::problem::ApiError;

/// One document in memory.
pub struct Loaded {
    /// Creation-time facts.
    pub meta: DocMeta,
    /// The CRDT.
    pub doc: Document,
    /// The current value as JSON, kept so that reads and change events need no conversion.
    pub value: Value,
    /// The version `value` is the value of.
    pub value_version: Version,
    /// Agent of the last write.
    pub last_agent: Option<String>,
    /// Time of the last write, ms since the epoch.
    pub updated_at_ms: i64,
    /// The lease of the lock strategy, if one was ever taken.
    pub lease: Option<Lease>,
    /// The newest fencing token issued. Seeded from the clock when the document is loaded
    /// (microseconds), so tokens keep growing across restarts.
    pub last_token: u64,
    /// Recent change events, for subscribers that resume from a version.
    pub recent: VecDeque<Arc<ChangeEvent>>,
    /// Number of the last change event.
    pub event_seq: u64,
    /// Stored change records not covered by a snapshot: when it passes
    /// [`Tuning::compact_after`], maintenance writes a snapshot.
    pub unsnapshotted: usize,
    /// How far this copy has read the store's change log ([`Store::changes_since`]):
    /// catching up reads the records after it. Moves past the load only on a shared store.
    pub synced: u64,
}

impl Loaded {
    fn new(
        meta: DocMeta,
        doc: Document,
        last_agent: Option<String>,
        updated_at_ms: i64,
    ) -> Result<Loaded, ApiError> {
        let value = doc.read(None)?;
        Ok(Loaded {
            meta,
            value_version: doc.version(),
            doc,
            value,
            last_agent,
            updated_at_ms,
            lease: None,
            last_token: u64::try_from(crate::api::now_ms())
                .unwrap_or(0)
                .saturating_mul(1000),
            recent: VecDeque::new(),
            event_seq: 0,
            unsnapshotted: 0,
            synced: 0,
        })
    }
}

/// A lease of the lock strategy: who may write, until when, with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token; only the newest one may write.
    pub token: u64,
    /// When the lease ends, ms since the epoch.
    pub expires_at_ms: i64,
    /// The agent holding it.
    pub agent: String,
}

/// How many change events a document keeps for resuming subscribers.
pub const RECENT_EVENTS: usize = 1024;

/// One change, as subscribers see it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeEvent {
    /// Event number, counted per document since it was loaded.
    pub seq: u64,
    /// The version before the change.
    pub previous: String,
    /// The version after it.
    pub version: String,
    /// The agent that wrote it.
    pub agent: Option<String>,
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// RFC 6902 operations from the previous value to this one.
    pub patch: Value,
}

/// One event of the global feed: a document was created, changed or deleted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedEvent {
    /// A new document (created or forked).
    Created {
        /// The document.
        id: Uuid,
        /// Its first version.
        version: String,
        /// Who created it.
        agent: Option<String>,
        /// When, ms since the epoch.
        time_ms: i64,
        /// Its strategy.
        strategy: concord_core::Strategy,
        /// How many changes it holds.
        changes: u64,
    },
    /// A write changed a document.
    Changed {
        /// The document.
        id: Uuid,
        /// Its version after the write.
        version: String,
        /// Who wrote.
        agent: Option<String>,
        /// When, ms since the epoch.
        time_ms: i64,
        /// Its strategy.
        strategy: concord_core::Strategy,
        /// How many changes it holds now.
        changes: u64,
        /// How many of them this write made.
        new_changes: u64,
    },
    /// A document was deleted (or a create failed to become durable).
    Deleted {
        /// The document.
        id: Uuid,
        /// When, ms since the epoch.
        time_ms: i64,
    },
}

/// How many global feed events a slow viewer may fall behind before it is told it lagged.
pub const FEED_BUFFER: usize = 1024;

/// What a subscriber gets first.
pub enum Catchup {
    /// The whole current value.
    Snapshot {
        /// The current version.
        version: String,
        /// The current value.
        value: Value,
    },
    /// The events after the version the subscriber has (possibly none).
    Events(Vec<Arc<ChangeEvent>>),
}

enum SlotState {
    Live(Box<Loaded>),
    /// Deleted or dropped from memory: whoever still holds this slot must look again.
    Retired,
}

/// Changes queued for storage but not yet confirmed durable, numbered in queue order.
#[derive(Default)]
struct Pending {
    last: u64,
    queue: VecDeque<(u64, StoredChange)>,
}

impl Pending {
    /// Adds new changes; returns the number of the last one and every unconfirmed change.
    fn push(&mut self, changes: Vec<StoredChange>) -> (u64, Vec<StoredChange>) {
        for change in changes {
            self.last += 1;
            self.queue.push_back((self.last, change));
        }
        (
            self.last,
            self.queue.iter().map(|(_, c)| c.clone()).collect(),
        )
    }

    /// Everything up to `upto` is durable.
    fn confirm(&mut self, upto: u64) {
        while self.queue.front().is_some_and(|(n, _)| *n <= upto) {
            self.queue.pop_front();
        }
    }

    /// The changes numbered `first` and after were refused: they must never be stored.
    fn discard_from(&mut self, first: u64) {
        self.queue.retain(|(n, _)| *n < first);
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
            last_used: AtomicI64::new(crate::api::now_ms()),
        })
    }

    fn touch(&self) {
        self.last_used
            .store(crate::api::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// When documents leave memory and when their change log is compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// A document nobody used for this long (and with no subscribers, no unconfirmed
    /// changes and no live lease) is dropped from memory; the next use loads it again.
    pub idle_evict: std::time::Duration,
    /// A document with this many stored change records not covered by a snapshot gets a
    /// new snapshot, which replaces them.
    pub compact_after: usize,
    /// How often the maintenance pass (eviction, compaction) runs.
    pub maintain_every: std::time::Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            idle_evict: std::time::Duration::from_secs(60),
            compact_after: 1000,
            maintain_every: std::time::Duration::from_secs(5),
        }
    }
}

/// What one maintenance pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Documents dropped from memory.
    pub evicted: usize,
    /// Documents whose change log was replaced by a snapshot.
    pub compacted: usize,
}

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 256;

/// The outcome of a write, ready to answer.
#[derive(Debug, Clone)]
pub struct Written {
    /// The document.
    pub id: Uuid,
    /// Its version after the write.
    pub version: Version,
    /// Its value after the write (the merged present).
    pub value: Value,
    /// Its strategy.
    pub strategy: concord_core::Strategy,
    /// How many new changes the write made.
    pub new_changes: usize,
}

/// What an idempotent request needs recorded with its write.
#[derive(Debug, Clone)]
pub struct IdempotencyDraft {
    /// The client's key.
    pub key: String,
    /// Digest of the request.
    pub fingerprint: String,
    /// The status the response will have.
    pub status: StatusCode,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

impl IdempotencyDraft {
    /// The record to store with the write: the response `respond` makes for `written`,
    /// which is the one a retry with the same key replays.
    fn record(self, respond: Responder, written: &Written) -> IdempotencyRecord {
        let (headers, body) = respond(written, self.status);
        IdempotencyRecord {
            key: self.key,
            fingerprint: self.fingerprint,
            status: self.status.as_u16(),
            headers,
            body,
            created_at_ms: self.now_ms,
        }
    }
}

/// Builds the response (status, headers, body) for a write; the same function makes the
/// live answer and the one recorded for idempotent replay.
pub type Responder = fn(&Written, StatusCode) -> (Vec<(String, String)>, Vec<u8>);

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
    /// Other nodes write to the store too: catch documents up, and let the store decide
    /// what depends on the current state (see the module docs).
    shared: bool,
    /// limits.rs: the largest a document's value may be, as compact JSON, in bytes.
    max_document_bytes: usize,
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
            shared: store.shared(),
            store,
            slots: Mutex::new(HashMap::new()),
            feed: broadcast::channel(FEED_BUFFER).0,
            closing: watch::channel(false).0,
            tuning,
            max_document_bytes: crate::limits::Limits::default().max_document_bytes,
            damage: Mutex::default(),
        }
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
        self.shared
    }

    /// One maintenance pass: compacts the change log of documents past
    /// [`Tuning::compact_after`], then drops idle documents from memory. Runs off the write
    /// path (the server calls it every [`Tuning::maintain_every`]).
    pub async fn maintain(&self) -> Maintained {
        let mut done = Maintained::default();
        let candidates: Vec<(Uuid, Arc<Slot>)> = self
            .slots()
            .iter()
            .map(|(id, slot)| (*id, Arc::clone(slot)))
            .collect();
        for (id, slot) in candidates {
            if self.compact(id, &slot).await {
                done.compacted += 1;
            }
        }
        done.evicted = self.evict_idle();
        if done.evicted > 0 {
            release_freed_memory();
        }
        done
    }

    /// Snapshots one document if its log is long enough; true if it did.
    async fn compact(&self, id: Uuid, slot: &Arc<Slot>) -> bool {
        // On a shared store, the snapshot must hold every record up to `synced`.
        if self.shared && self.catch_up(id, slot).await.is_err() {
            return false;
        }
        // The snapshot is taken under the read lock (writers wait, readers do not), then
        // stored without any lock: changes written meanwhile are simply not covered.
        let (snapshot, covered, counted, synced) = {
            let state = slot.state.read().await;
            let SlotState::Live(loaded) = &*state else {
                return false;
            };
            if loaded.unsnapshotted < self.tuning.compact_after {
                return false;
            }
            let covered: Vec<[u8; 32]> = loaded
                .doc
                .automerge()
                .get_changes_meta(&[])
                .iter()
                .map(|m| m.hash.0)
                .collect();
            (
                loaded.doc.save(),
                covered,
                loaded.unsnapshotted,
                loaded.synced,
            )
        };
        match self.store.compact_from(id, snapshot, covered, synced).await {
            Ok(done) => {
                // Not done: another node compacted further; its snapshot stands.
                if let SlotState::Live(loaded) = &mut *slot.state.write().await {
                    loaded.unsnapshotted = loaded.unsnapshotted.saturating_sub(counted);
                }
                if done {
                    tracing::debug!(doc = %id, records = counted, "compacted the change log");
                }
                done
            }
            Err(e) => {
                tracing::warn!(doc = %id, error = %e, "compaction failed; will retry");
                false
            }
        }
    }

    /// Drops documents nobody used for [`Tuning::idle_evict`] and that nothing holds: no
    /// request in flight, no subscriber, no unconfirmed change, no live lease.
    fn evict_idle(&self) -> usize {
        let now = crate::api::now_ms();
        let idle_ms = i64::try_from(self.tuning.idle_evict.as_millis()).unwrap_or(i64::MAX);
        let mut slots = self.slots();
        let before = slots.len();
        slots.retain(|_, slot| {
            // Under the map lock nobody can take a new reference to a slot, so a count of
            // one means no request holds it.
            let idle = now - slot.last_used.load(std::sync::atomic::Ordering::Relaxed) >= idle_ms;
            if !idle
                || Arc::strong_count(slot) > 1
                || slot.events.get().is_some_and(|e| e.receiver_count() > 0)
                || !slot.pending.lock().unwrap_or_else(PoisonError::into_inner).queue.is_empty()
            {
                return true;
            }
            let Ok(mut state) = slot.state.try_write() else {
                return true;
            };
            let leased = matches!(&*state, SlotState::Live(l) if l.lease.as_ref().is_some_and(|lease| lease.expires_at_ms > now));
            if leased {
                return true;
            }
            *state = SlotState::Retired;
            false
        });
        before - slots.len()
    }

    /// Subscribes to the global feed: one [`FeedEvent`] per create, change and delete.
    pub fn feed(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.feed.subscribe()
    }

    /// Tells every live stream to end; called once at shutdown.
    pub fn close_live(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes `true` when live streams must end (see [`Registry::close_live`]).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    fn announce(&self, event: FeedEvent) {
        // No viewers is not an error.
        let _ = self.feed.send(Arc::new(event));
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
    async fn slot(&self, id: Uuid) -> Result<Arc<Slot>, ApiError> {
        if let Some(slot) = self.slots().get(&id) {
            slot.touch();
            return Ok(Arc::clone(slot));
        }
        let stored = self
            .store
            .load(id)
            .await?
            .ok_or_else(|| ApiError::doc_not_found(id))?;
        let (doc, report) = Document::load(
            stored.meta.schema.clone(),
            stored.snapshot.as_deref(),
            &stored.changes,
        )
        .map_err(|e| {
            // -- storage damage (issue 6) --
            self.note_damage(id, &[format!("the stored document does not load: {e}")]);
            ApiError::internal(e)
        })?;
        for problem in &report.skipped {
            tracing::warn!(doc = %id, %problem, "skipped a stored record while loading");
        }
        self.note_damage(id, &report.skipped);
        let mut loaded = Loaded::new(
            stored.meta,
            doc,
            stored.state.last_agent,
            stored.state.updated_at_ms,
        )?;
        loaded.unsnapshotted = stored.changes.len();
        loaded.synced = stored.seq;
        // Another request may have loaded it meanwhile: keep the first.
        Ok(Arc::clone(
            self.slots().entry(id).or_insert_with(|| Slot::new(loaded)),
        ))
    }

    // -- storage damage (issue 6) --

    /// Remembers what loading `id` skipped (nothing: forgets it).
    fn note_damage(&self, id: Uuid, skipped: &[String]) {
        let mut damage = self.damage.lock().unwrap_or_else(PoisonError::into_inner);
        if skipped.is_empty() {
            damage.remove(&id);
        } else {
            damage.insert(id, skipped.to_vec());
        }
    }

    /// What the last load of `id` skipped, one line per stored record (empty: nothing).
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

    // -- end of storage damage --

    /// Runs `f` on the document, read-only.
    pub async fn read<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Loaded) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        loop {
            let slot = self.slot(id).await?;
            if self.shared {
                self.catch_up(id, &slot).await?;
            }
            let state = slot.state.read().await;
            if let Some(upto) = self.unanswered(&slot) {
                drop(state);
                Self::wait_answered(&slot, upto).await;
                continue;
            }
            if let SlotState::Live(loaded) = &*state {
                return f(loaded);
            }
        }
    }

    async fn lock(&self, id: Uuid) -> Result<WriteGuard, ApiError> {
        loop {
            let slot = self.slot(id).await?;
            let state = Arc::clone(&slot.state).write_owned().await;
            if let SlotState::Live(_) = &*state {
                return Ok(WriteGuard { slot, state });
            }
        }
    }

    /// Stores a new document made by `make` (a fresh one, or a fork). `client_chose_id`
    /// says the id came from the request (and so may already exist).
    pub async fn create(
        &self,
        meta: DocMeta,
        make: impl FnOnce() -> Result<(Document, WriteOutcome), ApiError>,
        write: &WriteMeta,
        client_chose_id: bool,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, ApiError> {
        let id = meta.id;
        let exists = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "already-exists",
                format!("document {id} already exists"),
            )
        };
        if self.slots().contains_key(&id)
            || (client_chose_id && self.store.load(id).await?.is_some())
        {
            return Err(exists());
        }
        let (doc, outcome) = make()?;
        let loaded = Loaded::new(meta.clone(), doc, Some(write.agent.clone()), write.time_ms)?;
        // limits.rs: no document larger than the document limit.
        crate::limits::check_document(&loaded.value, self.max_document_bytes)?;
        let slot = Slot::new(loaded);
        let mut guard = WriteGuard {
            state: Arc::clone(&slot.state)
                .try_write_owned()
                .expect("a new slot is unlocked"),
            slot: Arc::clone(&slot),
        };
        {
            let mut slots = self.slots();
            if slots.contains_key(&id) {
                return Err(exists());
            }
            slots.insert(id, Arc::clone(&slot));
        }
        // Announced under the new document's lock, so before any change to it.
        let loaded = guard.loaded();
        self.announce(FeedEvent::Created {
            id,
            version: loaded.value_version.to_string(),
            agent: Some(write.agent.clone()),
            time_ms: write.time_ms,
            strategy: loaded.meta.strategy,
            changes: loaded.doc.change_count() as u64,
        });
        let result = self
            .commit(guard, Some(meta), outcome, None, write, idempotency)
            .await;
        if result.is_err() {
            // Nothing durable: forget the document again.
            let mut guard = Arc::clone(&slot.state).write_owned().await;
            *guard = SlotState::Retired;
            self.retire(id, &slot);
            self.announce(FeedEvent::Deleted {
                id,
                time_ms: write.time_ms,
            });
        }
        result
    }

    /// Applies `edit` to the document and stores what it changed; returns once durable.
    pub async fn write(
        &self,
        id: Uuid,
        write: &WriteMeta,
        idempotency: Option<(IdempotencyDraft, Responder)>,
        edit: impl FnOnce(&mut Loaded) -> Result<WriteOutcome, ApiError>,
    ) -> Result<Written, ApiError> {
        let mut guard = self.lock(id).await?;
        let strategy = guard.loaded().meta.strategy;
        // Several nodes: the queue's cluster-wide writer lock first, so that the catch-up
        // below sees every write before this one; then the edit sees the store's present.
        let writer_lock = match (self.shared, strategy) {
            (true, Strategy::Queue) => self.store.lock_writer(id).await?,
            _ => None,
        };
        if self.shared {
            self.catch_up_locked(id, &mut guard).await?;
            if strategy == Strategy::Lock {
                // The newest lease, for the policy's check; the store checks it again.
                let now = crate::api::now_ms();
                guard.loaded().lease = self.store.lease(id).await?.map(|l| lease_from(l, now));
            }
        }
        let before = guard.loaded().doc.version();
        // The new value is read here, with the edit, so that a change that cannot be read
        // back (nested too deep, say) is treated as a failed edit.
        let edited = edit(guard.loaded()).and_then(|outcome| {
            let value = if outcome.changes.is_empty() {
                None
            } else {
                Some(guard.loaded().doc.read(None)?)
            };
            // limits.rs: refuse a write that makes the document too large.
            if let Some(value) = &value {
                crate::limits::check_document(value, self.max_document_bytes)?;
            }
            Ok((outcome, value))
        });
        let (outcome, value) = match edited {
            Ok(edited) => edited,
            Err(e) => {
                // limits.rs: undo a write refused for its size in memory (see `rewind`).
                if e.kind == crate::limits::DOCUMENT_TOO_LARGE {
                    crate::limits::rewind(&mut guard.loaded().doc, &before);
                }
                if guard.loaded().doc.version() != before {
                    // A failed edit left changes in memory that are not stored (raw changes
                    // refused halfway): drop the copy; the next use reloads from storage.
                    *guard.state = SlotState::Retired;
                    self.retire(id, &guard.slot);
                }
                return Err(e);
            }
        };
        match self.expectation(guard.loaded(), &before) {
            None => {
                self.commit(guard, None, outcome, value, write, idempotency)
                    .await
            }
            Some(expect) => {
                let write = CheckedWrite {
                    outcome,
                    new_value: value,
                    write,
                    idempotency,
                    expect,
                    writer_lock,
                };
                self.commit_checked(guard, write).await
            }
        }
    }

    /// What the store must check when it stores a write of this document made at
    /// `before`: nothing on a store of one node, or for strategies that merge.
    fn expectation(&self, loaded: &Loaded, before: &Version) -> Option<Expect> {
        if !self.shared {
            return None;
        }
        match loaded.meta.strategy {
            Strategy::Optimistic | Strategy::Queue => Some(Expect {
                version: Some(before.to_string()),
                lease: None,
            }),
            // The policy admitted the write with the newest lease's token (token 0 is
            // never issued: without a lease, the store refuses).
            Strategy::Lock => Some(Expect {
                version: None,
                lease: Some(loaded.lease.as_ref().map_or(0, |l| l.token)),
            }),
            Strategy::Crdt | Strategy::Lww | Strategy::Branches => None,
        }
    }

    /// Stores a write whose strategy the store decides (see the module docs): the document
    /// stays locked until the store answers; the change is published only once stored. A
    /// refusal reloads the document from the store and is answered as the policy would.
    async fn commit_checked(
        &self,
        mut guard: WriteGuard,
        checked: CheckedWrite<'_>,
    ) -> Result<Written, ApiError> {
        let CheckedWrite {
            outcome,
            new_value,
            write,
            idempotency,
            expect,
            writer_lock,
        } = checked;
        let slot = Arc::clone(&guard.slot);
        let new_changes = outcome.changes.len();
        let loaded = guard.loaded();
        let id = loaded.meta.id;
        let (last_agent, updated_at_ms) = if new_changes > 0 {
            (Some(write.agent.clone()), write.time_ms)
        } else {
            (loaded.last_agent.clone(), loaded.updated_at_ms)
        };
        let written = Written {
            id,
            version: outcome.version.clone(),
            value: new_value.clone().unwrap_or_else(|| loaded.value.clone()),
            strategy: loaded.meta.strategy,
            new_changes,
        };
        let record = idempotency.map(|(draft, respond)| draft.record(respond, &written));
        let (first, upto, changes) = {
            let mut pending = slot.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let first = pending.last + 1;
            let (upto, changes) = pending.push(outcome.stored_changes());
            (first, upto, changes)
        };
        let batch = WriteBatch {
            doc: id,
            create: None,
            changes,
            state: DocState {
                version: written.version.to_string(),
                change_count: loaded.doc.change_count() as u64,
                updated_at_ms,
                last_agent: last_agent.clone(),
            },
            idempotency: record,
        };
        let token = expect.lease;
        let stored = self.store.write_checked(batch, expect);
        // If this request is dropped while the store decides, memory may hold a change the
        // store refuses: the guard then drops the document from memory (it reloads).
        let mut settling = Settling {
            registry: self,
            id,
            guard: Some(guard),
        };
        let answer = stored.await;
        // The next writer may go once this write is durable (or refused).
        drop(writer_lock);
        slot.answered.send_modify(|n| *n = (*n).max(upto));
        // Still armed: a request dropped while the document is reloaded below leaves it
        // to the guard too.
        let guard = settling.guard.as_mut().expect("armed until settled");
        match answer {
            Ok(Ok(())) => {
                slot.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .confirm(upto);
                let loaded = guard.loaded();
                loaded.unsnapshotted += new_changes;
                loaded.last_agent = last_agent;
                loaded.updated_at_ms = updated_at_ms;
                if let Some(value) = new_value {
                    let previous = std::mem::replace(&mut loaded.value, value);
                    publish(
                        &slot,
                        loaded,
                        &previous,
                        Some(write.agent.clone()),
                        write.time_ms,
                    );
                    self.announce(FeedEvent::Changed {
                        id,
                        version: loaded.value_version.to_string(),
                        agent: Some(write.agent.clone()),
                        time_ms: write.time_ms,
                        strategy: loaded.meta.strategy,
                        changes: loaded.doc.change_count() as u64,
                        new_changes: new_changes as u64,
                    });
                }
                settling.guard.take();
                Ok(written)
            }
            Ok(Err(refusal)) => {
                slot.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .discard_from(first);
                // Reloaded, memory is the store again (or, failing that, the document was
                // dropped from memory): settled either way.
                let reloaded = self.reload_locked(id, guard).await;
                let strategy = guard.loaded_or_retired().map(|l| l.meta.strategy);
                let current = guard.loaded_or_retired().map(|l| l.doc.version());
                settling.guard.take();
                reloaded?;
                match (strategy, current) {
                    (Some(strategy), Some(current)) => {
                        Err(refused(&refusal, strategy, &current, token))
                    }
                    _ => Err(ApiError::doc_not_found(id)),
                }
            }
            // Stored or not, nobody knows: memory must not guess. The armed guard drops the
            // document from memory; the next use reloads it.
            Err(e) => {
                drop(settling);
                Err(e.into())
            }
        }
    }

    /// Replaces the document in memory by what the store holds (after a refused write),
    /// publishing what other nodes changed. Gone from the store: dropped from memory.
    async fn reload_locked(&self, id: Uuid, guard: &mut WriteGuard) -> Result<(), ApiError> {
        let stored = match self.store.load(id).await {
            Ok(Some(stored)) => stored,
            failed => {
                *guard.state = SlotState::Retired;
                self.retire(id, &guard.slot);
                return Err(match failed {
                    Ok(_) => ApiError::doc_not_found(id),
                    Err(e) => e.into(),
                });
            }
        };
        let loaded_doc = Document::load(
            stored.meta.schema.clone(),
            stored.snapshot.as_deref(),
            &stored.changes,
        );
        let (doc, value) = match loaded_doc
            .map_err(ApiError::internal)
            .and_then(|(doc, _)| Ok((doc.read(None)?, doc)))
        {
            Ok((value, doc)) => (doc, value),
            Err(e) => {
                *guard.state = SlotState::Retired;
                self.retire(id, &guard.slot);
                return Err(e);
            }
        };
        let slot = Arc::clone(&guard.slot);
        let loaded = guard.loaded();
        loaded.doc = doc;
        loaded.synced = stored.seq;
        loaded.unsnapshotted = stored.changes.len();
        if loaded.doc.version() != loaded.value_version {
            loaded.last_agent.clone_from(&stored.state.last_agent);
            loaded.updated_at_ms = stored.state.updated_at_ms;
            let previous = std::mem::replace(&mut loaded.value, value);
            publish(
                &slot,
                loaded,
                &previous,
                stored.state.last_agent.clone(),
                stored.state.updated_at_ms,
            );
        }
        Ok(())
    }

    /// Catches a document in memory up with what the store holds (a shared store: other
    /// nodes write too); takes the write lock only if there is something to apply.
    async fn catch_up(&self, id: Uuid, slot: &Arc<Slot>) -> Result<(), ApiError> {
        let since = match &*slot.state.read().await {
            SlotState::Live(loaded) => loaded.synced,
            SlotState::Retired => return Ok(()),
        };
        let delta = self.store.changes_since(id, since).await?;
        if delta.as_ref().is_some_and(|d| d.seq <= since) {
            return Ok(());
        }
        let mut state = Arc::clone(&slot.state).write_owned().await;
        self.apply_delta(id, slot, &mut state, delta)
    }

    /// [`Registry::catch_up`] for a document locked for writing.
    async fn catch_up_locked(&self, id: Uuid, guard: &mut WriteGuard) -> Result<(), ApiError> {
        let since = guard.loaded().synced;
        let delta = self.store.changes_since(id, since).await?;
        let slot = Arc::clone(&guard.slot);
        self.apply_delta(id, &slot, &mut guard.state, delta)
    }

    /// Applies what another node stored (`None`: it deleted the document) and publishes it.
    fn apply_delta(
        &self,
        id: Uuid,
        slot: &Arc<Slot>,
        state: &mut SlotState,
        delta: Option<Delta>,
    ) -> Result<(), ApiError> {
        let SlotState::Live(loaded) = state else {
            return Ok(());
        };
        let Some(delta) = delta else {
            *state = SlotState::Retired;
            self.retire(id, slot);
            self.announce(FeedEvent::Deleted {
                id,
                time_ms: crate::api::now_ms(),
            });
            return Err(ApiError::doc_not_found(id));
        };
        if delta.seq <= loaded.synced {
            // Another catch-up got here first.
            return Ok(());
        }
        let before = loaded.doc.version();
        let changes_before = loaded.doc.change_count();
        let mut records: Vec<&[u8]> = Vec::with_capacity(delta.changes.len() + 1);
        if let Some(snapshot) = &delta.snapshot {
            records.push(snapshot);
            loaded.unsnapshotted = 0;
        }
        records.extend(delta.changes.iter().map(Vec::as_slice));
        loaded.unsnapshotted += delta.changes.len();
        // One event per record, as if each were written here; a long backlog (a node that
        // was away) becomes one event, so that catching up stays linear.
        if records.len() <= REPLAYED_ONE_BY_ONE {
            for record in records {
                apply_remote(slot, loaded, &[record]);
            }
        } else {
            apply_remote(slot, loaded, &records);
        }
        loaded.synced = delta.seq;
        if loaded.doc.version() != before {
            loaded.last_agent.clone_from(&delta.state.last_agent);
            loaded.updated_at_ms = delta.state.updated_at_ms;
            self.announce(FeedEvent::Changed {
                id,
                version: loaded.value_version.to_string(),
                agent: delta.state.last_agent.clone(),
                time_ms: delta.state.updated_at_ms,
                strategy: loaded.meta.strategy,
                changes: loaded.doc.change_count() as u64,
                new_changes: (loaded.doc.change_count() - changes_before) as u64,
            });
        }
        Ok(())
    }

    /// Catches up a document after a notice from another node; nothing if it is not in
    /// memory (it will load fresh).
    pub async fn catch_up_loaded(&self, id: Uuid) {
        let slot = self.slots().get(&id).cloned();
        if let Some(slot) = slot {
            if let Err(e) = self.catch_up(id, &slot).await {
                if e.status != StatusCode::NOT_FOUND {
                    tracing::warn!(doc = %id, error = %e.detail, "could not catch up a document");
                }
            }
        }
    }

    /// The documents in memory.
    pub fn loaded_ids(&self) -> Vec<Uuid> {
        self.slots().keys().copied().collect()
    }

    /// Takes the lock strategy's lease of a document for `ttl_ms`: `Ok(lease)` if granted,
    /// `Err(lease)` with the lease that someone else holds. Kept in memory on a store of
    /// one node, in the store when it is shared.
    pub async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
        now: i64,
    ) -> Result<Result<Lease, Lease>, ApiError> {
        let strategy = self.read(id, |loaded| Ok(loaded.meta.strategy)).await?;
        if strategy != Strategy::Lock {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "strategy-refuses",
                format!("leases belong to lock documents; this one is {strategy}"),
            ));
        }
        if self.shared {
            return Ok(match self.store.acquire_lease(id, agent, ttl_ms).await? {
                LeaseGrant::Granted(lease) => Ok(lease_from(lease, now)),
                LeaseGrant::Held(lease) => Err(lease_from(lease, now)),
            });
        }
        self.update(id, |loaded| match &loaded.lease {
            Some(lease) if lease.expires_at_ms > now => Ok(Err(lease.clone())),
            _ => {
                loaded.last_token += 1;
                let lease = Lease {
                    token: loaded.last_token,
                    expires_at_ms: now + ttl_ms as i64,
                    agent: agent.to_owned(),
                };
                loaded.lease = Some(lease.clone());
                Ok(Ok(lease))
            }
        })
        .await
    }

    /// Releases the lease of `token` and wakes lock requests waiting for it (on every
    /// node, through the store's notice when it is shared).
    pub async fn release_lease(&self, id: Uuid, token: u64) -> Result<(), ApiError> {
        let not_held = || {
            ApiError::new(
                StatusCode::CONFLICT,
                "fenced",
                format!("token {token} does not hold the lock"),
            )
        };
        if self.shared {
            self.read(id, |_| Ok(())).await?;
            if !self.store.release_lease(id, token).await? {
                return Err(not_held());
            }
        } else {
            self.update(id, |loaded| match &loaded.lease {
                Some(lease) if lease.token == token => {
                    loaded.lease = None;
                    Ok(())
                }
                _ => Err(not_held()),
            })
            .await?;
        }
        self.notify_released(id);
        Ok(())
    }

    /// Queues the batch for a write under the lock, then releases the lock and waits for
    /// the disk.
    async fn commit(
        &self,
        mut guard: WriteGuard,
        create: Option<DocMeta>,
        outcome: WriteOutcome,
        new_value: Option<Value>,
        write: &WriteMeta,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, ApiError> {
        let slot = Arc::clone(&guard.slot);
        let new_changes = outcome.changes.len();
        let loaded = guard.loaded();
        loaded.unsnapshotted += new_changes;
        if new_changes > 0 || create.is_some() {
            loaded.last_agent = Some(write.agent.clone());
            loaded.updated_at_ms = write.time_ms;
        }
        if let Some(value) = new_value {
            let previous = std::mem::replace(&mut loaded.value, value);
            publish(
                &slot,
                loaded,
                &previous,
                Some(write.agent.clone()),
                write.time_ms,
            );
            if create.is_none() {
                self.announce(FeedEvent::Changed {
                    id: loaded.meta.id,
                    version: loaded.value_version.to_string(),
                    agent: Some(write.agent.clone()),
                    time_ms: write.time_ms,
                    strategy: loaded.meta.strategy,
                    changes: loaded.doc.change_count() as u64,
                    new_changes: new_changes as u64,
                });
            }
        }
        let written = Written {
            id: loaded.meta.id,
            version: outcome.version.clone(),
            value: loaded.value.clone(),
            strategy: loaded.meta.strategy,
            new_changes,
        };
        let record = idempotency.map(|(draft, respond)| draft.record(respond, &written));
        let (upto, changes) = slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(outcome.stored_changes());
        let batch = WriteBatch {
            doc: written.id,
            create,
            changes,
            state: DocState {
                version: written.version.to_string(),
                change_count: loaded.doc.change_count() as u64,
                updated_at_ms: loaded.updated_at_ms,
                last_agent: loaded.last_agent.clone(),
            },
            idempotency: record,
        };
        let durable = self.store.write(batch);
        // Unlock the document before waiting for the disk (see the module docs).
        drop(guard);
        // Awaited on a task of its own, so that the answer is recorded even if this
        // request is dropped meanwhile (readers may be waiting for it).
        let settled = Arc::clone(&slot);
        let answer = tokio::spawn(async move {
            let result = durable.await;
            if result.is_ok() {
                settled
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .confirm(upto);
            }
            settled.answered.send_modify(|n| *n = (*n).max(upto));
            result
        });
        answer
            .await
            .map_err(|e| ApiError::internal(format!("the write's task failed: {e}")))?
            .map_err(ApiError::from)?;
        Ok(written)
    }

    /// On a shared store: true if every change of the document in memory was answered by
    /// the store, else the number to wait for (see [`Slot::answered`]). Call it under the
    /// document's lock (no change can be queued meanwhile).
    fn unanswered(&self, slot: &Slot) -> Option<u64> {
        if !self.shared {
            return None;
        }
        let last = slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last;
        (*slot.answered.borrow() < last).then_some(last)
    }

    /// Waits until the store answered the batch of change number `upto`.
    async fn wait_answered(slot: &Slot, upto: u64) {
        let mut answered = slot.answered.subscribe();
        // The sender lives in the slot, which the caller holds.
        let _ = answered.wait_for(|n| *n >= upto).await;
    }

    /// Runs `f` on the document under its write lock, storing nothing (lease bookkeeping).
    pub async fn update<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&mut Loaded) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut guard = self.lock(id).await?;
        f(guard.loaded())
    }

    /// Wakes lock requests waiting on this document.
    pub fn notify_released(&self, id: Uuid) {
        if let Some(slot) = self.slots().get(&id) {
            slot.released.send_modify(|n| *n += 1);
        }
    }

    /// A receiver that changes whenever a lease of this document is released. Take it
    /// before checking the lease, then wait on it.
    pub async fn release_watch(&self, id: Uuid) -> Result<watch::Receiver<u64>, ApiError> {
        let slot = self.slot(id).await?;
        let mut receiver = slot.released.subscribe();
        receiver.borrow_and_update();
        Ok(receiver)
    }

    /// Subscribes to a document's changes: what the subscriber missed since `since` (or a
    /// snapshot), then every change, in order, from the returned receiver. Taken under the
    /// document's lock, so nothing falls between the two.
    pub async fn subscribe(
        &self,
        id: Uuid,
        since: Option<&Version>,
    ) -> Result<(Catchup, broadcast::Receiver<Arc<ChangeEvent>>), ApiError> {
        loop {
            let slot = self.slot(id).await?;
            if self.shared {
                // A version read on another node must be known here.
                self.catch_up(id, &slot).await?;
            }
            let state = slot.state.read().await;
            if let Some(upto) = self.unanswered(&slot) {
                drop(state);
                Self::wait_answered(&slot, upto).await;
                continue;
            }
            let SlotState::Live(loaded) = &*state else {
                continue;
            };
            let receiver = slot
                .events
                .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
                .subscribe();
            let current = loaded.doc.version();
            let catchup = match since {
                None => Catchup::Snapshot {
                    version: current.to_string(),
                    value: loaded.value.clone(),
                },
                Some(since) => {
                    loaded.doc.check_version(since).map_err(|e| {
                        ApiError::new(StatusCode::NOT_FOUND, "unknown-version", e.to_string())
                    })?;
                    let since_text = since.to_string();
                    if *since == current {
                        Catchup::Events(Vec::new())
                    } else if let Some(i) =
                        loaded.recent.iter().position(|e| e.version == since_text)
                    {
                        Catchup::Events(loaded.recent.iter().skip(i + 1).cloned().collect())
                    } else if loaded
                        .recent
                        .front()
                        .is_some_and(|e| e.previous == since_text)
                    {
                        // The version the oldest kept event started from (the one a document
                        // was created or loaded at): every kept event is news.
                        Catchup::Events(loaded.recent.iter().cloned().collect())
                    } else {
                        // Too old to replay change by change: start over from a snapshot.
                        Catchup::Snapshot {
                            version: current.to_string(),
                            value: loaded.value.clone(),
                        }
                    }
                }
            };
            return Ok((catchup, receiver));
        }
    }

    /// Deletes a document from memory and storage.
    pub async fn delete(&self, id: Uuid) -> Result<(), ApiError> {
        let mut guard = self.lock(id).await?;
        self.store.delete(id).await?;
        self.note_damage(id, &[]); // storage damage (issue 6): gone with the document
        *guard.state = SlotState::Retired;
        self.retire(id, &guard.slot);
        self.announce(FeedEvent::Deleted {
            id,
            time_ms: crate::api::now_ms(),
        });
        // Subscribers see their stream end.
        drop(guard);
        Ok(())
    }

    /// Removes `slot` from the map if it is still the one for `id`.
    fn retire(&self, id: Uuid, slot: &Arc<Slot>) {
        let mut slots = self.slots();
        if slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&id);
        }
    }
}

/// Records and broadcasts the change that turned `previous` into `loaded.value`.
fn publish(
    slot: &Slot,
    loaded: &mut Loaded,
    previous: &Value,
    agent: Option<String>,
    time_ms: i64,
) {
    let patch = serde_json::to_value(json_patch::diff(previous, &loaded.value))
        .unwrap_or(Value::Array(Vec::new()));
    loaded.event_seq += 1;
    let version = loaded.doc.version();
    let previous_version = std::mem::replace(&mut loaded.value_version, version.clone());
    let event = Arc::new(ChangeEvent {
        seq: loaded.event_seq,
        previous: previous_version.to_string(),
        version: version.to_string(),
        agent,
        time_ms,
        patch,
    });
    if loaded.recent.len() == RECENT_EVENTS {
        loaded.recent.pop_front();
    }
    loaded.recent.push_back(Arc::clone(&event));
    // No subscribers is not an error.
    if let Some(events) = slot.events.get() {
        let _ = events.send(event);
    }
}

/// Up to this many records caught up at once are published one event each.
const REPLAYED_ONE_BY_ONE: usize = 32;

/// Applies records another node stored and publishes one event for what they changed,
/// attributed to the agent of the last new change. A record that does not apply (corrupt)
/// is skipped, as a load skips it.
fn apply_remote(slot: &Slot, loaded: &mut Loaded, records: &[&[u8]]) {
    let mut last = None;
    for record in records {
        match loaded.doc.apply_changes(record) {
            Ok(outcome) => {
                if let Some(change) = outcome.changes.last() {
                    last = Some((
                        concord_core::doc::decode_note(change.message()).0,
                        change.timestamp().saturating_mul(1000),
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(doc = %loaded.meta.id, error = %e, "skipped a stored record that does not apply");
            }
        }
    }
    let Some((agent, time_ms)) = last else {
        return;
    };
    match loaded.doc.read(None) {
        Ok(value) => {
            let previous = std::mem::replace(&mut loaded.value, value);
            publish(slot, loaded, &previous, agent, time_ms);
        }
        Err(e) => {
            tracing::warn!(doc = %loaded.meta.id, error = %e, "a caught-up document cannot be read")
        }
    }
}

/// A lease as the store reported it, its end by this node's clock.
fn lease_from(lease: StoredLease, now: i64) -> Lease {
    Lease {
        token: lease.token,
        expires_at_ms: now.saturating_add(lease.remaining_ms),
        agent: lease.agent,
    }
}

/// A refused checked write, answered as the strategy's policy answers it.
fn refused(
    refusal: &Refusal,
    strategy: Strategy,
    current: &Version,
    token: Option<u64>,
) -> ApiError {
    match (refusal, strategy) {
        (Refusal::Stale { .. }, Strategy::Queue) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "writer-contended",
            "another node wrote this queue document while this write was applied (its writer lock was lost); nothing was applied: retry",
        ),
        (Refusal::Stale { .. }, _) => crate::policy::stale(current),
        (Refusal::Fenced { newest }, _) => crate::policy::fenced(token.unwrap_or(0), *newest),
        (Refusal::LeaseExpired, _) => crate::policy::lease_expired(token.unwrap_or(0)),
    }
}

/// A checked write on its way to [`Registry::commit_checked`].
struct CheckedWrite<'a> {
    outcome: WriteOutcome,
    new_value: Option<Value>,
    write: &'a WriteMeta,
    idempotency: Option<(IdempotencyDraft, Responder)>,
    expect: Expect,
    /// The queue's cluster-wide writer lock, released once the write is durable.
    writer_lock: Option<WriterLock>,
}

/// A document locked while its checked write is decided by the store. Dropped armed (the
/// request went away meanwhile), it drops the document from memory: memory may hold a
/// change the store refused, and the next use reloads what the store holds.
struct Settling<'a> {
    registry: &'a Registry,
    id: Uuid,
    guard: Option<WriteGuard>,
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        if let Some(mut guard) = self.guard.take() {
            *guard.state = SlotState::Retired;
            self.registry.retire(self.id, &guard.slot);
            // Readers waiting on this copy look again (and load what the store holds).
            guard.slot.answered.send_replace(u64::MAX);
        }
    }
}

/// Hands memory freed by evicted documents back to the operating system. glibc keeps freed
/// memory in its arenas otherwise, so a server that once held many documents would keep
/// their resident size after they left.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no
    // memory in use and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
