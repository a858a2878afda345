//! Off the write path: compaction of long change logs into snapshots, and eviction of
//! idle documents from memory.

use super::*;

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

impl Registry {
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
    pub(super) async fn compact(&self, id: Uuid, slot: &Arc<Slot>) -> bool {
        // On a shared store, the snapshot must hold every record up to `synced`.
        if self.coordinator.refresh(self, id, slot).await.is_err() {
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
            let (snapshot, covered) = self
                .cpu
                .run(|| {
                    let covered: Vec<[u8; 32]> = loaded
                        .doc
                        .automerge()
                        .get_changes_meta(&[])
                        .iter()
                        .map(|m| m.hash.0)
                        .collect();
                    (loaded.doc.save(), covered)
                })
                .await;
            (snapshot, covered, loaded.unsnapshotted, loaded.synced)
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
        let now = crate::clock::now_ms();
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
}
