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

    async fn list_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<concord_core::storage::ListPage, StoreError> {
        self.inner.list_page(after, limit).await
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
        .read::<_, Error>(id, |l| Ok(Value::clone(l.doc.value())))
        .await
        .unwrap()
}

/// A document `{"n": 0}`, and a write of `{"n": 1}` to it queued for a disk that holds it
/// back: the store, the registry, the document, and the write's task.
async fn a_write_held_at_the_disk() -> (
    Arc<GatedStore>,
    Arc<Registry>,
    Uuid,
    tokio::task::JoinHandle<Result<Written, Error>>,
) {
    let store = GatedStore::new();
    let registry = Arc::new(Registry::new(Arc::clone(&store) as Arc<dyn Store>));
    let id = create(&registry, json!({"n": 0})).await;
    store.close();
    let first = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            let write = meta("a");
            registry
                .write(id, &write, None, 1, (None, Answer::Whole), |loaded| {
                    Ok::<_, Error>(loaded.doc.put(None, &json!({"n": 1}), &write)?)
                })
                .await
        }
    });
    store.until_waiting(1).await;
    (store, registry, id, first)
}

/// A failed edit that left changes in memory, while an earlier write of the same document
/// waits for the disk: memory must still hold (and later show) the earlier write once it
/// is acknowledged, not reload a store that has not got it yet.
#[tokio::test]
async fn a_failed_edit_does_not_forget_a_write_still_on_its_way_to_disk() {
    let (store, registry, id, first) = a_write_held_at_the_disk().await;

    // An edit that changes the document and then fails (as raw changes refused halfway do).
    let write = meta("b");
    let failed = registry
        .write(id, &write, None, 1, (None, Answer::Whole), |loaded| {
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
    assert_eq!(written.value.as_deref(), Some(&json!({"n": 1})));
    // Acknowledged: every later read shows it.
    assert_eq!(value(&registry, id).await, json!({"n": 1}));
}

/// When a failed edit cannot be rewound in place the copy is dropped, but not before the
/// batches queued for it are answered.
#[tokio::test]
async fn a_dropped_copy_waits_for_its_queued_batches() {
    let (store, registry, id, first) = a_write_held_at_the_disk().await;
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

fn registry() -> Registry {
    Registry::new(Arc::new(MemoryStore::new()))
}

async fn create_with(registry: &Registry, strategy: Strategy, value: serde_json::Value) -> Uuid {
    let id = Uuid::new_v4();
    let write = meta("setup");
    registry
        .create(
            DocMeta {
                id,
                strategy,
                schema: Schema::default(),
                created_at_ms: 0,
            },
            || Ok::<_, Error>(Document::create(&value, Schema::default(), &write)?),
            &write,
            false,
            None,
        )
        .await
        .expect("created");
    id
}

fn put<'a>(
    doc: Uuid,
    meta: &'a WriteMeta,
    if_match: Option<&'a IfMatch>,
    value: &'a serde_json::Value,
) -> WriteCommand<'a> {
    WriteCommand {
        doc,
        meta,
        if_match,
        lock: None,
        edit: Edit::Put(value),
        idempotency: None,
        answer: Answer::Whole,
    }
}

use concord_core::policy::IfMatch;

#[tokio::test]
async fn a_refused_write_changes_nothing_and_says_why() {
    let registry = registry();
    let id = create_with(&registry, Strategy::Optimistic, json!({"n": 0})).await;
    let v0 = registry
        .read::<_, Error>(id, |l| Ok(l.doc.version()))
        .await
        .unwrap();
    let write = meta("a");
    let fresh = IfMatch::Version(v0.clone());
    registry
        .execute(put(id, &write, Some(&fresh), &json!({"n": 1})))
        .await
        .expect("the first writer at v0 wins");
    // The second writer read v0 too: refused, typed, naming the present.
    let refused = registry
        .execute(put(id, &write, Some(&fresh), &json!({"n": 2})))
        .await
        .unwrap_err();
    let Error::Refused(Refusal::Stale { current }) = refused else {
        panic!("expected a stale refusal, got {refused:?}");
    };
    assert_ne!(current, v0);
    assert_eq!(value(&registry, id).await, json!({"n": 1}));
    // No If-Match on an optimistic document: refused before anything is applied.
    let missing = registry
        .execute(put(id, &write, None, &json!({"n": 3})))
        .await
        .unwrap_err();
    assert!(
        matches!(missing, Error::Refused(Refusal::IfMatchRequired { .. })),
        "{missing:?}"
    );
    assert_eq!(value(&registry, id).await, json!({"n": 1}));
}

#[tokio::test]
async fn subscribers_see_every_write_in_order_and_resume_from_a_version() {
    let registry = registry();
    let id = create_with(&registry, Strategy::Crdt, json!({"n": 0})).await;
    let (first, mut events) = registry.subscribe(id, None).await.unwrap();
    let Catchup::Snapshot { version: start, .. } = first else {
        panic!("a new subscriber starts from a snapshot");
    };
    let write = meta("a");
    for n in 1..=3 {
        registry
            .execute(put(id, &write, Some(&IfMatch::Any), &json!({ "n": n })))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(events.recv().await.unwrap());
    }
    assert_eq!(seen[0].previous, start);
    for pair in seen.windows(2) {
        assert_eq!(pair[0].version, pair[1].previous, "a chain of versions");
        assert!(pair[0].seq < pair[1].seq);
    }
    // Resuming from the first event's version replays the two after it.
    let since: Version = seen[0].version.parse().unwrap();
    let (resumed, _) = registry.subscribe(id, Some(&since)).await.unwrap();
    let Catchup::Events(replayed) = resumed else {
        panic!("a known version resumes with events");
    };
    let versions: Vec<_> = replayed.iter().map(|e| e.version.clone()).collect();
    assert_eq!(
        versions,
        vec![seen[1].version.clone(), seen[2].version.clone()]
    );
}

/// Kept change events are bounded by the bytes of their operations, not only by count:
/// whole-value PUTs of a 1 MB value keep at most the budget's worth, and a subscriber
/// resuming from before them starts over from a snapshot.
#[tokio::test]
async fn kept_change_events_stay_within_their_byte_budget() {
    let registry = registry();
    let id = create_with(&registry, Strategy::Crdt, json!({"big": ""})).await;
    let start: Version = registry
        .read::<_, Error>(id, |l| Ok(l.doc.version()))
        .await
        .unwrap();
    let write = meta("a");
    let megabyte = 1024 * 1024;
    for n in 0..12 {
        let value = json!({ "big": format!("{n}").repeat(megabyte) });
        registry
            .execute(put(id, &write, Some(&IfMatch::Any), &value))
            .await
            .unwrap();
    }
    let (kept, bytes) = registry
        .read::<_, Error>(id, |l| {
            let sum: usize = l.recent.iter().map(|(_, b)| b).sum();
            assert_eq!(sum, l.recent_bytes, "the count of bytes is the sum");
            Ok((l.recent.len(), l.recent_bytes))
        })
        .await
        .unwrap();
    assert!(bytes <= RECENT_EVENT_BYTES, "{bytes}");
    assert!((1..12).contains(&kept), "{kept} kept");
    let (resumed, _) = registry.subscribe(id, Some(&start)).await.unwrap();
    assert!(
        matches!(resumed, Catchup::Snapshot { .. }),
        "too old to replay: a snapshot"
    );
}

#[tokio::test]
async fn leases_fence_older_tokens_on_one_node() {
    let registry = registry();
    let id = create_with(&registry, Strategy::Lock, json!({"n": 0})).await;
    let now = crate::clock::now_ms();
    let first = registry
        .acquire_lease(id, "a", 60_000, now)
        .await
        .unwrap()
        .expect("granted");
    let held = registry.acquire_lease(id, "b", 60_000, now).await.unwrap();
    assert_eq!(held, Err(first.clone()), "held by a");
    // Only its holder releases it: b, who knows a's token, cannot.
    let theirs = registry
        .release_lease(id, first.token, "b")
        .await
        .unwrap_err();
    assert!(
        matches!(theirs, Error::Refused(Refusal::NotHolder)),
        "{theirs:?}"
    );
    registry.release_lease(id, first.token, "a").await.unwrap();
    let second = registry
        .acquire_lease(id, "b", 60_000, now)
        .await
        .unwrap()
        .expect("granted after the release");
    assert!(second.token > first.token);
    // The old token can neither release nor write.
    let release = registry
        .release_lease(id, first.token, "a")
        .await
        .unwrap_err();
    assert!(
        matches!(release, Error::Refused(Refusal::NotHolder)),
        "{release:?}"
    );
    let write = meta("a");
    let fenced = registry
        .execute(WriteCommand {
            lock: Some(first.token),
            ..put(id, &write, None, &json!({"n": 1}))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(fenced, Error::Refused(Refusal::Fenced { .. })),
        "{fenced:?}"
    );
    // a knows b's token, but it is b's.
    let not_theirs = registry
        .execute(WriteCommand {
            lock: Some(second.token),
            ..put(id, &write, None, &json!({"n": 1}))
        })
        .await
        .unwrap_err();
    assert!(
        matches!(not_theirs, Error::Refused(Refusal::NotHolder)),
        "{not_theirs:?}"
    );
    registry
        .execute(WriteCommand {
            lock: Some(second.token),
            ..put(id, &meta("b"), None, &json!({"n": 2}))
        })
        .await
        .expect("the holder writes");
    // Leases belong to lock documents only.
    let crdt = create_with(&registry, Strategy::Crdt, json!({})).await;
    let refused = registry.acquire_lease(crdt, "a", 1, now).await.unwrap_err();
    assert!(
        matches!(refused, Error::Refused(Refusal::Strategy(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn creates_and_deletes_are_typed() {
    let registry = registry();
    let id = create_with(&registry, Strategy::Crdt, json!({})).await;
    let write = meta("a");
    let again = registry
        .create(
            DocMeta {
                id,
                strategy: Strategy::Crdt,
                schema: Schema::default(),
                created_at_ms: 0,
            },
            || Ok::<_, Error>(Document::create(&json!({}), Schema::default(), &write)?),
            &write,
            true,
            None,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(again, Error::AlreadyExists(x) if x == id),
        "{again:?}"
    );
    registry.delete(id).await.unwrap();
    let gone = registry.read::<_, Error>(id, |_| Ok(())).await.unwrap_err();
    assert!(matches!(gone, Error::NotFound(x) if x == id), "{gone:?}");
    let limited = Registry::new(Arc::new(MemoryStore::new())).with_document_limit(16);
    let small = create_with(&limited, Strategy::Crdt, json!({})).await;
    let big = json!({"text": "far more than sixteen bytes"});
    let too_large = limited
        .execute(put(small, &write, Some(&IfMatch::Any), &big))
        .await
        .unwrap_err();
    assert!(
        matches!(too_large, Error::TooLarge { limit: 16 }),
        "{too_large:?}"
    );
    assert_eq!(value(&limited, small).await, json!({}), "rewound in place");
}

/// A write whose request is out of time stops before it commits: nothing changes, nothing
/// is stored or announced, and the document takes the next write as usual.
#[tokio::test]
async fn a_write_out_of_time_changes_nothing() {
    let registry = registry();
    let id = create(&registry, json!({"items": [1, 2]})).await;
    let before = registry
        .read::<_, Error>(id, |l| Ok(l.doc.version()))
        .await
        .unwrap();
    let (_, mut events) = registry.subscribe(id, None).await.unwrap();
    let write = meta("a");
    let value = json!({"items": [1, 2, 3]});
    // A deadline already past (time only moves on).
    let late = within(
        std::time::Instant::now(),
        registry.execute(put(id, &write, Some(&IfMatch::Any), &value)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(late, Error::Document(concord_core::Error::DeadlineExceeded)),
        "{late:?}"
    );
    let (now, stored) = registry
        .read::<_, Error>(id, |l| Ok((l.doc.version(), l.doc.change_count())))
        .await
        .unwrap();
    assert_eq!(now, before);
    assert_eq!(stored, 1);
    assert_eq!(self::value(&registry, id).await, json!({"items": [1, 2]}));
    // With time to spare, the same write applies; it is the first event subscribers see.
    let at = std::time::Instant::now() + std::time::Duration::from_secs(600);
    within(
        at,
        registry.execute(put(id, &write, Some(&IfMatch::Any), &value)),
    )
    .await
    .unwrap();
    assert_eq!(self::value(&registry, id).await, value);
    let event = events.recv().await.unwrap();
    assert_eq!(event.previous, before.to_string());
}
