//! Several nodes on one store: bringing a document in memory up to what the store holds
//! (catch-up after other nodes' writes and notices, reload after a refused write).

use super::*;

/// Up to this many records caught up at once are published one event each.
const REPLAYED_ONE_BY_ONE: usize = 32;

/// Applies records another node stored and publishes one event for what they changed,
/// attributed as the last new change was received (its receipt, which the delta brought;
/// without one, what its note claims).
///
/// Records are decoded as strictly as `POST …/changes`: one that does not decode, or holds a
/// change whose dependencies are neither here nor in the record, is skipped whole, logged
/// and returned, as a load reports what it skips. (Automerge would otherwise keep such a
/// change aside in memory, unapplied and unannounced.)
fn apply_remote(slot: &Slot, loaded: &mut Loaded, records: &[&[u8]]) -> Vec<String> {
    let mut last = None;
    let mut skipped = Vec::new();
    let mut patch = Vec::new();
    for record in records {
        match loaded.doc.apply_complete_changes(record) {
            Ok(mut outcome) => {
                patch.append(&mut outcome.patch);
                if let Some(change) = outcome.changes.last() {
                    last = Some(match loaded.receipts.get(&change.hash()) {
                        Some(receipt) => (Some(receipt.agent.clone()), receipt.at_ms),
                        None => (
                            concord_core::doc::decode_note(change.message()).0,
                            change.timestamp().saturating_mul(1000),
                        ),
                    });
                }
            }
            Err(e) => {
                tracing::warn!(doc = %loaded.meta.id, error = %e, "skipped a stored record that does not apply");
                skipped.push(format!("caught-up change record: {e}"));
            }
        }
    }
    let Some((agent, time_ms)) = last else {
        return skipped;
    };
    publish(slot, loaded, patch, agent, time_ms);
    skipped
}

/// RFC 6902 operations from `old` as it was at `seen` to `new` as it is: read whole, as a
/// reload is (failing that, one that replaces the whole value).
fn published_to(old: &Document, seen: &Version, new: &Document) -> Vec<Value> {
    let ops = old
        .read(Some(seen))
        .ok()
        .and_then(|seen| serde_json::to_value(json_patch::diff(&seen, new.value())).ok());
    match ops {
        Some(Value::Array(ops)) => ops,
        _ => vec![serde_json::json!({"op": "replace", "path": "", "value": **new.value()})],
    }
}

impl Registry {
    /// Replaces the document in memory by what the store holds (after a refused write),
    /// publishing what other nodes changed. Gone from the store: dropped from memory.
    pub(super) async fn reload_locked(
        &self,
        id: Uuid,
        guard: &mut WriteGuard,
    ) -> Result<(), Error> {
        let stored = match self.store.load(id).await {
            Ok(Some(stored)) => stored,
            failed => {
                *guard.state = SlotState::Retired;
                self.retire(id, &guard.slot);
                return Err(match failed {
                    Ok(_) => Error::NotFound(id),
                    Err(e) => e.into(),
                });
            }
        };
        let loaded_doc = self.load_document(&stored).await;
        let doc = match loaded_doc.map_err(|e| Error::Unloadable(e.to_string())) {
            Ok((doc, _)) => doc,
            Err(e) => {
                *guard.state = SlotState::Retired;
                self.retire(id, &guard.slot);
                return Err(e);
            }
        };
        let slot = Arc::clone(&guard.slot);
        let loaded = guard.loaded();
        // From what subscribers were last told of (a refused write was never published) to
        // what the store holds.
        let patch = (loaded.value_version != doc.version())
            .then(|| published_to(&loaded.doc, &loaded.value_version, &doc));
        loaded.doc = doc;
        loaded.count_stored(&stored);
        loaded.receipts = Receipts::from_stored(stored.receipts);
        if loaded.doc.version() != loaded.value_version {
            loaded.last_agent.clone_from(&stored.state.last_agent);
            loaded.updated_at_ms = stored.state.updated_at_ms;
            publish(
                &slot,
                loaded,
                patch.unwrap_or_default(),
                stored.state.last_agent.clone(),
                stored.state.updated_at_ms,
            );
        }
        Ok(())
    }

    /// Catches a document in memory up with what the store holds (a shared store: other
    /// nodes write too); takes the write lock only if there is something to apply.
    pub(super) async fn catch_up(&self, id: Uuid, slot: &Arc<Slot>) -> Result<(), Error> {
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
    pub(super) async fn catch_up_locked(
        &self,
        id: Uuid,
        guard: &mut WriteGuard,
    ) -> Result<(), Error> {
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
    ) -> Result<(), Error> {
        let SlotState::Live(loaded) = state else {
            return Ok(());
        };
        let Some(delta) = delta else {
            *state = SlotState::Retired;
            self.retire(id, slot);
            self.announce(FeedEvent::Deleted {
                id,
                time_ms: crate::clock::now_ms(),
            });
            return Err(Error::NotFound(id));
        };
        if delta.seq <= loaded.synced {
            // Another catch-up got here first.
            return Ok(());
        }
        let before = loaded.doc.version();
        let changes_before = loaded.doc.change_count();
        // First, so that the events below name who sent each change.
        loaded.receipts.add(delta.receipts);
        let mut records: Vec<&[u8]> = Vec::with_capacity(delta.changes.len() + 1);
        if let Some(snapshot) = &delta.snapshot {
            records.push(snapshot);
            loaded.unsnapshotted = 0;
        }
        records.extend(delta.changes.iter().map(Vec::as_slice));
        loaded.unsnapshotted += delta.changes.len();
        loaded.history_bytes += limit::stored_bytes(
            delta.snapshot.as_deref(),
            delta.changes.iter().map(Vec::as_slice),
        );
        // One event per record, as if each were written here; a long backlog (a node that
        // was away) becomes one event, so that catching up stays linear.
        let skipped: Vec<String> = if records.len() <= REPLAYED_ONE_BY_ONE {
            records
                .into_iter()
                .flat_map(|record| apply_remote(slot, loaded, &[record]))
                .collect()
        } else {
            apply_remote(slot, loaded, &records)
        };
        // Shown as a load's damage is: in the document's reads and in `/healthz`.
        self.add_damage(id, skipped);
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
            match self.catch_up(id, &slot).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(doc = %id, error = %e, "could not catch up a document"),
            }
        }
    }

    /// Waits until the store answered the batch of change number `upto`.
    pub(super) async fn wait_answered(slot: &Slot, upto: u64) {
        let mut answered = slot.answered.subscribe();
        // The sender lives in the slot, which the caller holds.
        let _ = answered.wait_for(|n| *n >= upto).await;
    }
}
