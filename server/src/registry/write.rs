//! The write path: a document is created or edited under its lock, the batch is queued
//! with the store, and the write is acknowledged once the batch is durable (see the
//! module docs of [`super`]).

use super::*;

/// The outcome of a write, ready to answer.
#[derive(Debug, Clone)]
pub struct Written {
    /// The document.
    pub id: Uuid,
    /// Its version after the write.
    pub version: Version,
    /// Its value after the write (the merged present), shared with the document in memory;
    /// `None` if the request asked for no value in its answer ([`Answer::Minimal`]), so
    /// that the next write need not copy the value this answer would otherwise hold.
    pub value: Option<Arc<Value>>,
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
    pub status: u16,
    /// Now, ms since the epoch.
    pub now_ms: i64,
}

impl IdempotencyDraft {
    /// The record to store with the write: the response `respond` makes for `written`,
    /// which is the one a retry with the same key replays.
    pub(super) fn record(self, respond: Responder, written: &Written) -> IdempotencyRecord {
        let (headers, body) = respond(written, self.status);
        IdempotencyRecord {
            key: self.key,
            fingerprint: self.fingerprint,
            status: self.status,
            headers,
            body,
            created_at_ms: self.now_ms,
        }
    }
}

/// Builds the response (status, headers, body) for a write; the same function makes the
/// live answer and the one recorded for idempotent replay.
pub type Responder = fn(&Written, u16) -> (Vec<(String, String)>, Vec<u8>);

/// A refused checked write, answered as the strategy's policy answers it.
pub(super) fn refused(
    refusal: &StoreRefusal,
    strategy: Strategy,
    current: &Version,
    token: Option<u64>,
) -> Refusal {
    let token = token.unwrap_or(0);
    match (refusal, strategy) {
        (StoreRefusal::Stale { .. }, Strategy::Queue) => Refusal::WriterContended,
        (StoreRefusal::Stale { .. }, _) => Refusal::Stale {
            current: current.clone(),
        },
        (StoreRefusal::Fenced { newest }, _) => Refusal::Fenced {
            newer: newest.is_some_and(|newest| newest > token),
        },
        (StoreRefusal::LeaseExpired, _) => Refusal::LeaseExpired,
    }
}

/// A write's outcome, with its new changes in storage form, each with its receipt.
pub(super) struct Received {
    outcome: WriteOutcome,
    changes: Vec<StoredChange>,
}

impl Received {
    fn new(outcome: WriteOutcome, write: &WriteMeta, inherited: Option<&Receipts>) -> Received {
        let changes = received(&outcome, write, inherited);
        Received { outcome, changes }
    }
}

/// How a write is answered: what an idempotent retry replays, and whether the answer
/// holds the value.
pub(super) type Reply = (Option<(IdempotencyDraft, Responder)>, Answer);

/// A checked write on its way to [`Registry::commit_checked`].
struct CheckedWrite<'a> {
    received: Received,
    /// The write's RFC 6902 operations, if it changed the value.
    patch: Option<Vec<Value>>,
    write: &'a WriteMeta,
    reply: Reply,
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

impl Registry {
    /// Stores a new document made by `make`. `client_chose_id` says the id came from the
    /// request (and so may already exist). Its changes are recorded as received from
    /// `write.agent`, now.
    pub async fn create<E: From<Error>>(
        &self,
        meta: DocMeta,
        make: impl FnOnce() -> Result<(Document, WriteOutcome), E>,
        write: &WriteMeta,
        client_chose_id: bool,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, E> {
        self.create_inheriting(meta, make, write, None, client_chose_id, idempotency)
            .await
    }

    /// [`Registry::create`] for a copy of a document (a fork): its changes keep the
    /// receipts they have in `inherited`, the original's.
    pub async fn create_copy<E: From<Error>>(
        &self,
        meta: DocMeta,
        make: impl FnOnce() -> Result<(Document, WriteOutcome), E>,
        write: &WriteMeta,
        inherited: &Receipts,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, E> {
        self.create_inheriting(meta, make, write, Some(inherited), false, idempotency)
            .await
    }

    async fn create_inheriting<E: From<Error>>(
        &self,
        meta: DocMeta,
        make: impl FnOnce() -> Result<(Document, WriteOutcome), E>,
        write: &WriteMeta,
        inherited: Option<&Receipts>,
        client_chose_id: bool,
        idempotency: Option<(IdempotencyDraft, Responder)>,
    ) -> Result<Written, E> {
        let id = meta.id;
        let exists = || E::from(Error::AlreadyExists(id));
        if self.slots().contains_key(&id)
            || (client_chose_id && self.store.load(id).await.map_err(Error::from)?.is_some())
        {
            return Err(exists());
        }
        let (doc, outcome) = make()?;
        // limits.rs: no document larger than the document limit.
        limit::check_document(&doc, self.max_document_bytes)?;
        let received = Received::new(outcome, write, inherited);
        let loaded = Loaded::new(meta.clone(), doc, Some(write.agent.clone()), write.time_ms);
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
            .commit(
                guard,
                Some(meta),
                received,
                None,
                write,
                (idempotency, Answer::Whole),
            )
            .await
            .map_err(E::from);
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
    /// `weight` is what the edit's input weighs (registry/budget.rs): a heavy edit waits
    /// for a CPU permit and runs off the async workers.
    /// The primitive under [`Registry::execute`], which every transport uses: it admits
    /// nothing by itself (the strategy's policy is the caller's). Each new change is
    /// recorded as received from `write.agent` now, unless it is copied from a document
    /// whose receipts are `inherited` (a fork merged back): then it keeps its receipt there.
    pub async fn write<E: From<Error>>(
        &self,
        id: Uuid,
        write: &WriteMeta,
        inherited: Option<&Receipts>,
        weight: usize,
        reply: Reply,
        edit: impl FnOnce(&mut Loaded) -> Result<WriteOutcome, E>,
    ) -> Result<Written, E> {
        let mut guard = self.lock(id).await?;
        let writer_lock = self.coordinator.prepare_write(self, id, &mut guard).await?;
        // limits.rs: a document whose history holds its budget takes no more writes.
        limit::check_history(guard.loaded(), self.max_history_bytes)?;
        let before = guard.loaded().doc.version();
        // The document keeps its value as JSON, moved forward by the edit's own patches (a
        // change that nests too deep fails the edit there); its size is kept too. The edit
        // is CPU work, bounded by the request's deadline (budget.rs).
        let loaded = guard.loaded();
        loaded.doc.set_deadline(
            budget::deadline()
                .map(|at| concord_core::Deadline::new(move || std::time::Instant::now() >= at)),
        );
        let edited = if budget::light(weight, &loaded.doc) {
            edit(loaded)
        } else {
            self.cpu.run(|| edit(loaded)).await
        };
        guard.loaded().doc.set_deadline(None);
        let edited = edited.and_then(|mut outcome| {
            let patch = if outcome.changes.is_empty() {
                None
            } else {
                // Refuse a write that makes the document too large.
                limit::check_document(&guard.loaded().doc, self.max_document_bytes)?;
                Some(std::mem::take(&mut outcome.patch))
            };
            Ok((outcome, patch))
        });
        let (outcome, patch) = match edited {
            Ok(edited) => edited,
            Err(e) => {
                if guard.loaded().doc.version() != before {
                    self.undo_failed_edit(id, &mut guard, &before).await;
                }
                return Err(e);
            }
        };
        // One receipt per new change: no walk of the history.
        let received = Received::new(outcome, write, inherited);
        let written = match self.coordinator.expectation(guard.loaded(), &before) {
            None => {
                self.commit(guard, None, received, patch, write, reply)
                    .await
            }
            Some(expect) => {
                let write = CheckedWrite {
                    received,
                    patch,
                    write,
                    reply,
                    expect,
                    writer_lock,
                };
                self.commit_checked(guard, write).await
            }
        };
        written.map_err(E::from)
    }

    /// Tells the document's subscribers what a write changed (`patch`), and (if
    /// `announce`) the feed: called under the document's lock, so that events keep the
    /// writes' order.
    fn publish_write(
        &self,
        slot: &Slot,
        loaded: &mut Loaded,
        patch: Vec<Value>,
        write: &WriteMeta,
        new_changes: usize,
        announce: bool,
    ) {
        publish(
            slot,
            loaded,
            patch,
            Some(write.agent.clone()),
            write.time_ms,
        );
        if announce {
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

    /// Puts a document back where it was before an edit that failed after changing it (raw
    /// changes refused halfway, a value grown past the document limit): memory must not keep
    /// a change that is not stored. Rewound in place; failing that, the copy is dropped, but
    /// only once every batch already queued for it is answered, so that the next use
    /// reloads a store that holds them (a write on its way to the disk is not forgotten).
    async fn undo_failed_edit(&self, id: Uuid, guard: &mut WriteGuard, before: &Version) {
        if !limit::rewind(&mut guard.loaded().doc, before) {
            self.retire_when_answered(id, guard).await;
        }
    }

    /// Drops a locked document from memory once every batch queued for it is answered.
    pub(super) async fn retire_when_answered(&self, id: Uuid, guard: &mut WriteGuard) {
        let last = guard
            .slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last;
        Self::wait_answered(&guard.slot, last).await;
        *guard.state = SlotState::Retired;
        self.retire(id, &guard.slot);
    }

    /// Stores a write whose strategy the store decides (see the module docs): the document
    /// stays locked until the store answers; the change is published only once stored. A
    /// refusal reloads the document from the store and is answered as the policy would.
    async fn commit_checked(
        &self,
        mut guard: WriteGuard,
        checked: CheckedWrite<'_>,
    ) -> Result<Written, Error> {
        let CheckedWrite {
            received: Received { outcome, changes },
            patch,
            write,
            reply: (idempotency, answer),
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
            value: (answer == Answer::Whole).then(|| Arc::clone(loaded.doc.value())),
            strategy: loaded.meta.strategy,
            new_changes,
        };
        let record = idempotency.map(|(draft, respond)| draft.record(respond, &written));
        let (first, upto) = {
            let mut pending = slot.pending.lock().unwrap_or_else(PoisonError::into_inner);
            (pending.last + 1, pending.push(changes.len()))
        };
        let batch = WriteBatch {
            doc: id,
            create: None,
            changes: changes.clone(),
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
                loaded.count_new(&changes);
                loaded.last_agent = last_agent;
                loaded.updated_at_ms = updated_at_ms;
                loaded.receipts.record(&changes);
                if let Some(patch) = patch {
                    self.publish_write(&slot, loaded, patch, write, new_changes, true);
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
                        Err(refused(&refusal, strategy, &current, token).into())
                    }
                    _ => Err(Error::NotFound(id)),
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

    /// Queues the batch for a write under the lock, then releases the lock and waits for
    /// the disk.
    async fn commit(
        &self,
        mut guard: WriteGuard,
        create: Option<DocMeta>,
        received: Received,
        patch: Option<Vec<Value>>,
        write: &WriteMeta,
        (idempotency, answer): Reply,
    ) -> Result<Written, Error> {
        let Received { outcome, changes } = received;
        let slot = Arc::clone(&guard.slot);
        let new_changes = outcome.changes.len();
        let loaded = guard.loaded();
        loaded.count_new(&changes);
        // Under the lock, with the change itself: history shows both at once.
        loaded.receipts.record(&changes);
        if new_changes > 0 || create.is_some() {
            loaded.last_agent = Some(write.agent.clone());
            loaded.updated_at_ms = write.time_ms;
        }
        if let Some(patch) = patch {
            // A create was announced already, as created.
            let announce = create.is_none();
            self.publish_write(&slot, loaded, patch, write, new_changes, announce);
        }
        let written = Written {
            id: loaded.meta.id,
            version: outcome.version.clone(),
            value: (answer == Answer::Whole).then(|| Arc::clone(loaded.doc.value())),
            strategy: loaded.meta.strategy,
            new_changes,
        };
        let record = idempotency.map(|(draft, respond)| draft.record(respond, &written));
        let upto = slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(changes.len());
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
            .map_err(|e| Error::Internal(format!("the write's task failed: {e}")))??;
        Ok(written)
    }
}
