//! The registry alone, on the in-memory store: what memory shows around batches that are
//! still on their way to the disk.

use std::collections::VecDeque;
use std::sync::Mutex;

use concord_core::storage::{Checked, LoadedDoc, MemoryStore, StoreError};
use concord_core::{Schema, Strategy};
use serde_json::json;
use tokio::sync::{oneshot, watch};

use super::*;

/// The in-memory store, with a gate before the disk: while closed, batches queue in order
/// and their futures wait; opening it stores them, in order, and answers them.
struct GatedStore {
    inner: MemoryStore,
    closed: Mutex<bool>,
    queued: Mutex<VecDeque<Held>>,
    /// How many batches wait at the gate (so a test can wait for one to arrive).
    waiting: watch::Sender<usize>,
}

type Held = (
    WriteBatch,
    Expect,
    oneshot::Sender<Result<Result<(), StoreRefusal>, StoreError>>,
);

impl GatedStore {
    fn new() -> Arc<GatedStore> {
        Arc::new(GatedStore {
            inner: MemoryStore::new(),
            closed: Mutex::new(false),
            queued: Mutex::new(VecDeque::new()),
            waiting: watch::channel(0).0,
        })
    }

    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    /// Stores every queued batch, in order, and lets later ones through.
    async fn open(&self) {
        *self.closed.lock().unwrap() = false;
        let held: Vec<Held> = self.queued.lock().unwrap().drain(..).collect();
        for (batch, expect, answer) in held {
            let result = self.inner.write_checked(batch, expect).await;
            let _ = answer.send(result);
        }
        self.waiting.send_replace(0);
    }

    async fn until_waiting(&self, n: usize) {
        let _ = self.waiting.subscribe().wait_for(|w| *w >= n).await;
    }
}

#[async_trait::async_trait]
impl Store for GatedStore {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked {
        if !*self.closed.lock().unwrap() {
            return self.inner.write_checked(batch, expect);
        }
        let (tx, rx) = oneshot::channel();
        let mut queued = self.queued.lock().unwrap();
        queued.push_back((batch, expect, tx));
        self.waiting.send_replace(queued.len());
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Backend("the gate was dropped".into())))
        })
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        self.inner.load(id).await
    }

    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
        self.inner.changes_since(id, since).await
    }

    async fn list(&self) -> Result<Vec<concord_core::storage::DocSummary>, StoreError> {
        self.inner.list().await
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        self.inner.delete(id).await
    }

    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError> {
        self.inner.compact(id, snapshot, covered).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.inner.purge_idempotency(before_ms).await
    }
}

fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}

async fn create(registry: &Registry, value: serde_json::Value) -> Uuid {
    let id = Uuid::new_v4();
    let doc_meta = DocMeta {
        id,
        strategy: Strategy::Crdt,
        schema: Schema::default(),
        created_at_ms: 0,
    };
    let write = meta("a");
    registry
        .create(
            doc_meta,
            || Ok::<_, Error>(Document::create(&value, Schema::default(), &write)?),
            &write,
            false,
            None,
        )
        .await
        .expect("created");
    id
}

async fn value(registry: &Registry, id: Uuid) -> serde_json::Value {
    registry
        .read::<_, Error>(id, |l| Ok(l.value.clone()))
        .await
        .unwrap()
}

/// A failed edit that left changes in memory, while an earlier write of the same document
/// waits for the disk: memory must still hold (and later show) the earlier write once it
/// is acknowledged, not reload a store that has not got it yet.
#[tokio::test]
async fn a_failed_edit_does_not_forget_a_write_still_on_its_way_to_disk() {
    let store = GatedStore::new();
    let registry = Arc::new(Registry::new(Arc::clone(&store) as Arc<dyn Store>));
    let id = create(&registry, json!({"n": 0})).await;

    store.close();
    let first = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            let write = meta("a");
            registry
                .write(id, &write, None, |loaded| {
                    Ok::<_, Error>(loaded.doc.put(None, &json!({"n": 1}), &write)?)
                })
                .await
        }
    });
    store.until_waiting(1).await;

    // An edit that changes the document and then fails (as raw changes refused halfway do).
    let write = meta("b");
    let failed = registry
        .write(id, &write, None, |loaded| {
            loaded
                .doc
                .put(None, &json!({"n": 1, "half": true}), &write)?;
            Err(Error::Internal("refused halfway".into()))
        })
        .await;
    assert!(failed.is_err());
    // A reader meanwhile sees the first write or not (it is not acknowledged yet), never
    // the failed one.
    let seen = value(&registry, id).await;
    assert!(seen == json!({"n": 0}) || seen == json!({"n": 1}), "{seen}");

    store.open().await;
    let written = first
        .await
        .unwrap()
        .expect("the first write is acknowledged");
    assert_eq!(written.value, json!({"n": 1}));
    // Acknowledged: every later read shows it.
    assert_eq!(value(&registry, id).await, json!({"n": 1}));
}

/// When a failed edit cannot be rewound in place the copy is dropped, but not before the
/// batches queued for it are answered.
#[tokio::test]
async fn a_dropped_copy_waits_for_its_queued_batches() {
    let store = GatedStore::new();
    let registry = Arc::new(Registry::new(Arc::clone(&store) as Arc<dyn Store>));
    let id = create(&registry, json!({"n": 0})).await;

    store.close();
    let first = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            let write = meta("a");
            registry
                .write(id, &write, None, |loaded| {
                    Ok::<_, Error>(loaded.doc.put(None, &json!({"n": 1}), &write)?)
                })
                .await
        }
    });
    store.until_waiting(1).await;
    let (locked, is_locked) = oneshot::channel();
    let retired = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            let mut guard = registry.lock(id).await.unwrap();
            let _ = locked.send(());
            registry.retire_when_answered(id, &mut guard).await;
        }
    });
    // One thread (the test runtime): the task runs on from the send until it waits, so by
    // the time this test runs again it is waiting for the disk, or done if it did not wait.
    is_locked.await.unwrap();
    assert_eq!(
        registry.loaded_count(),
        1,
        "not dropped while a batch is queued"
    );
    store.open().await;
    first.await.unwrap().expect("acknowledged");
    retired.await.unwrap();
    assert_eq!(registry.loaded_count(), 0, "the copy was dropped");
    assert_eq!(value(&registry, id).await, json!({"n": 1}));
}
