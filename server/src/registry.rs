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

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::StatusCode;
use concord_core::storage::{
    DocMeta, DocState, IdempotencyRecord, Store, StoredChange, WriteBatch,
};
use concord_core::{Document, Version, WriteMeta, WriteOutcome};
use serde_json::Value;
use serde::Serialize;
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
}

impl Loaded {
    fn new(meta: DocMeta, doc: Document, last_agent: Option<String>, updated_at_ms: i64) -> Result<Loaded, ApiError> {
        let value = doc.read(None)?;
        Ok(Loaded {
            meta,
            value_version: doc.version(),
            doc,
            value,
            last_agent,
            updated_at_ms,
            lease: None,
            last_token: u64::try_from(crate::api::now_ms()).unwrap_or(0).saturating_mul(1000),
            recent: VecDeque::new(),
            event_seq: 0,
            unsnapshotted: 0,
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
}

struct Slot {
    state: Arc<RwLock<SlotState>>,
    pending: Mutex<Pending>,
    /// Change events of this document, for live subscribers.
    events: broadcast::Sender<Arc<ChangeEvent>>,
    /// Counts lease releases, for lock requests that wait (a watch, so that a release
    /// between a waiter's check and its wait is not missed).
    released: watch::Sender<u64>,
    /// When a request last used this document, ms since the epoch: idle documents leave
    /// memory.
    last_used: AtomicI64,
}

impl Slot {
    fn new(loaded: Loaded) -> Arc<Slot> {
        Arc::new(Slot {
            state: Arc::new(RwLock::new(SlotState::Live(Box::new(loaded)))),
            pending: Mutex::new(Pending::default()),
            events: broadcast::channel(EVENT_BUFFER).0,
            released: watch::channel(0).0,
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
}

/// A document locked for writing.
struct WriteGuard {
    slot: Arc<Slot>,
    state: OwnedRwLockWriteGuard<SlotState>,
}

impl WriteGuard {
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
            store,
            slots: Mutex::new(HashMap::new()),
            feed: broadcast::channel(FEED_BUFFER).0,
            closing: watch::channel(false).0,
            tuning,
        }
    }

    /// The eviction and compaction settings.
    pub fn tuning(&self) -> Tuning {
        self.tuning
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
        done
    }

    /// Snapshots one document if its log is long enough; true if it did.
    async fn compact(&self, id: Uuid, slot: &Slot) -> bool {
        // The snapshot is taken under the read lock (writers wait, readers do not), then
        // stored without any lock: changes written meanwhile are simply not covered.
        let (snapshot, covered, counted) = {
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
            (loaded.doc.save(), covered, loaded.unsnapshotted)
        };
        match self.store.compact(id, snapshot, covered).await {
            Ok(()) => {
                if let SlotState::Live(loaded) = &mut *slot.state.write().await {
                    loaded.unsnapshotted = loaded.unsnapshotted.saturating_sub(counted);
                }
                tracing::debug!(doc = %id, records = counted, "compacted the change log");
                true
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
                || slot.events.receiver_count() > 0
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
        .map_err(ApiError::internal)?;
        for problem in &report.skipped {
            tracing::warn!(doc = %id, %problem, "skipped a stored record while loading");
        }
        let mut loaded = Loaded::new(
            stored.meta,
            doc,
            stored.state.last_agent,
            stored.state.updated_at_ms,
        )?;
        loaded.unsnapshotted = stored.changes.len();
        // Another request may have loaded it meanwhile: keep the first.
        Ok(Arc::clone(
            self.slots().entry(id).or_insert_with(|| Slot::new(loaded)),
        ))
    }

    /// Runs `f` on the document, read-only.
    pub async fn read<T>(
        &self,
        id: Uuid,
        f: impl FnOnce(&Loaded) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        loop {
            let slot = self.slot(id).await?;
            let state = slot.state.read().await;
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
        let slot = Slot::new(Loaded::new(
            meta.clone(),
            doc,
            Some(write.agent.clone()),
            write.time_ms,
        )?);
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
        let before = guard.loaded().doc.version();
        // The new value is read here, with the edit, so that a change that cannot be read
        // back (nested too deep, say) is treated as a failed edit.
        let edited = edit(guard.loaded()).and_then(|outcome| {
            let value = if outcome.changes.is_empty() {
                None
            } else {
                Some(guard.loaded().doc.read(None)?)
            };
            Ok((outcome, value))
        });
        let (outcome, value) = match edited {
            Ok(edited) => edited,
            Err(e) => {
                if guard.loaded().doc.version() != before {
                    // A failed edit left changes in memory that are not stored (raw changes
                    // refused halfway): drop the copy; the next use reloads from storage.
                    *guard.state = SlotState::Retired;
                    self.retire(id, &guard.slot);
                }
                return Err(e);
            }
        };
        self.commit(guard, None, outcome, value, write, idempotency)
            .await
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
            publish(&slot, loaded, &previous, write);
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
        let record = idempotency.map(|(draft, respond)| {
            let (headers, body) = respond(&written, draft.status);
            IdempotencyRecord {
                key: draft.key,
                fingerprint: draft.fingerprint,
                status: draft.status.as_u16(),
                headers,
                body,
                created_at_ms: draft.now_ms,
            }
        });
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
        durable.await.map_err(ApiError::from)?;
        slot.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .confirm(upto);
        Ok(written)
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
            let state = slot.state.read().await;
            let SlotState::Live(loaded) = &*state else {
                continue;
            };
            let receiver = slot.events.subscribe();
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
                    } else if let Some(i) = loaded.recent.iter().position(|e| e.version == since_text) {
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
fn publish(slot: &Slot, loaded: &mut Loaded, previous: &Value, write: &WriteMeta) {
    let patch = serde_json::to_value(json_patch::diff(previous, &loaded.value))
        .unwrap_or(Value::Array(Vec::new()));
    loaded.event_seq += 1;
    let version = loaded.doc.version();
    let previous_version = std::mem::replace(&mut loaded.value_version, version.clone());
    let event = Arc::new(ChangeEvent {
        seq: loaded.event_seq,
        previous: previous_version.to_string(),
        version: version.to_string(),
        agent: Some(write.agent.clone()),
        time_ms: write.time_ms,
        patch,
    });
    if loaded.recent.len() == RECENT_EVENTS {
        loaded.recent.pop_front();
    }
    loaded.recent.push_back(Arc::clone(&event));
    // No subscribers is not an error.
    let _ = slot.events.send(event);
}
