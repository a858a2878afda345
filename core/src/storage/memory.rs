//! [`MemoryStore`]: the [`Store`] contract kept in memory, for tests (not shared, no
//! leases).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    Checked, Delta, DocMeta, DocState, DocSummary, Expect, IdempotencyRecord, ListPage, LoadedDoc,
    Receipt, Refusal, Store, StoreError, StoredChange, WriteBatch,
};

#[derive(Default)]
struct MemoryDoc {
    meta: Option<DocMeta>,
    state: Option<DocState>,
    snapshot: Option<Vec<u8>>,
    /// The highest log position among the records the snapshot replaced.
    covers: u64,
    /// Records with their log positions, in order.
    changes: Vec<(u64, StoredChange)>,
    /// Receipts with the log positions of their changes, in order; kept by compaction.
    receipts: Vec<(u64, [u8; 32], Receipt)>,
}

#[derive(Default)]
struct MemoryDocs {
    /// Creation order: documents by creation number.
    order: std::collections::BTreeMap<u64, Uuid>,
    /// The last creation number given out.
    created: u64,
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
        let MemoryDocs {
            order,
            created,
            docs,
            seq,
        } = &mut *guard;
        if let Some(meta) = &batch.create {
            if docs.contains_key(&batch.doc) {
                return Err(StoreError::AlreadyExists(batch.doc));
            }
            *created += 1;
            order.insert(*created, batch.doc);
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
                // The first receipt stays (a change stored again after a compaction).
                let first = !doc.receipts.iter().any(|(_, h, _)| *h == change.hash);
                if let (Some(receipt), true) = (&change.receipt, first) {
                    doc.receipts.push((*seq, change.hash, receipt.clone()));
                }
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
                receipts: doc
                    .receipts
                    .iter()
                    .map(|(_, h, r)| (*h, r.clone()))
                    .collect(),
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
                receipts: doc
                    .receipts
                    .iter()
                    .filter(|(n, _, _)| *n > since)
                    .map(|(_, h, r)| (*h, r.clone()))
                    .collect(),
            })
        }))
    }

    async fn list_page(&self, after: Option<u64>, limit: usize) -> Result<ListPage, StoreError> {
        let guard = self.docs.lock().expect("memory store poisoned");
        let start = after.map_or(0, |after| after.saturating_add(1));
        let mut page = ListPage::default();
        let mut last = None;
        for (&n, id) in guard.order.range(start..) {
            if page.docs.len() == limit.max(1) {
                page.next = last;
                break;
            }
            last = Some(n);
            if let Some(doc) = guard.docs.get(id) {
                if let (Some(meta), Some(state)) = (doc.meta.clone(), doc.state.clone()) {
                    page.docs.push(DocSummary { meta, state });
                }
            }
        }
        Ok(page)
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut guard = self.docs.lock().expect("memory store poisoned");
        guard.order.retain(|_, d| *d != id);
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
    use std::future::Future;

    use super::*;
    use crate::schema::Schema;
    use crate::strategy::Strategy;

    fn change(n: u8) -> StoredChange {
        StoredChange {
            hash: [n; 32],
            bytes: vec![n],
            receipt: Some(Receipt {
                agent: format!("agent-{n}"),
                at_ms: i64::from(n),
            }),
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
        let loaded = now(store.load(id)).unwrap().unwrap();
        assert_eq!(loaded.seq, 3);
        // Receipts outlive the records the snapshot replaced, and follow the log.
        let agents = |receipts: &[([u8; 32], Receipt)]| -> Vec<String> {
            receipts.iter().map(|(_, r)| r.agent.clone()).collect()
        };
        assert_eq!(agents(&loaded.receipts), ["agent-1", "agent-2", "agent-3"]);
        assert_eq!(agents(&behind.receipts), ["agent-2", "agent-3"]);
        assert_eq!(agents(&ahead.receipts), ["agent-3"]);

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
