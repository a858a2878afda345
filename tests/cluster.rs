//! Several Concord nodes on one PostgreSQL: two and three in-process nodes (and one real
//! process, killed and restarted) over separate `PostgresStore`s on one schema.
//!
//! The database comes from `CONCORD_TEST_POSTGRES` (for example
//! `postgres://postgres@127.0.0.1:5432/test`); every test works in a schema of its own,
//! created by the store it opens and dropped when the test ends. Without the variable the
//! suite is skipped and says so; under CI (`CI` set) a missing variable fails it.
//!
//! No test sleeps to synchronise: a change made on one node is awaited on another by
//! reading its subscription until the version arrives (with a generous guard against a
//! hang), and the few conditions polled are polled a bounded number of times.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use concord_client::{Client, ClientError, CreateOptions, Event, WriteOptions};
use concord_core::storage::{
    DocMeta, DocState, Expect, LeaseGrant, Receipt, Refusal, Store, StoredChange, WriteBatch,
};
use concord_core::{Schema, Strategy, WriteMeta};
use concord_server::postgres::{PostgresStore, MIGRATIONS};
use concord_server::registry::{Edit, Registry, Tuning, WriteCommand};
use concord_tests::cluster::{agreed, manual_maintenance, nodes, until_version, Db, Node, HUNG};
use concord_tests::{foreign_change, meta};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio::task::JoinSet;
use uuid::Uuid;

/// True if every change of the history follows the one before (one head at every step):
/// what a single writer at a time produces.
async fn history_is_a_chain(client: &Client, id: Uuid) -> bool {
    let history = client.history(id).await.expect("history");
    let mut heads: BTreeSet<String> = BTreeSet::new();
    for change in &history.changes {
        for dep in &change.deps {
            heads.remove(dep);
        }
        heads.insert(change.hash.clone());
        if heads.len() != 1 {
            return false;
        }
    }
    true
}

fn items(value: &Value) -> Vec<String> {
    value["items"]
        .as_array()
        .expect("an items list")
        .iter()
        .map(|v| v.as_str().expect("string items").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The store on its own.

fn change(n: u8) -> StoredChange {
    StoredChange {
        hash: [n; 32],
        bytes: vec![n, n, 0xC0],
        receipt: Some(Receipt {
            agent: format!("agent-{n}"),
            at_ms: i64::from(n),
        }),
    }
}

fn batch(id: Uuid, create: Option<Strategy>, changes: &[u8], version: &str) -> WriteBatch {
    WriteBatch {
        doc: id,
        create: create.map(|strategy| DocMeta {
            id,
            strategy,
            schema: Schema::default(),
            created_at_ms: 1,
        }),
        changes: changes.iter().map(|n| change(*n)).collect(),
        state: DocState {
            version: version.into(),
            change_count: changes.len() as u64,
            updated_at_ms: 2,
            last_agent: Some("store-test".into()),
        },
        idempotency: None,
    }
}

fn expect_version(version: &str) -> Expect {
    Expect {
        version: Some(version.into()),
        lease: None,
    }
}

fn expect_lease(token: u64) -> Expect {
    Expect {
        version: None,
        lease: Some(token),
    }
}

/// Two stores on one schema: what one stores the other reads by log position; version
/// checks, leases and writer locks are decided by the database; compaction never hides a
/// record from a reader behind it; migrations are versioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_decides_for_every_node() {
    let Some(db) = Db::new() else { return };
    let a = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    let b = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    assert!(a.shared() && b.shared());
    assert_ne!(a.node(), b.node());
    let admin = db.admin().await;
    let version: i32 = admin
        .query_one(
            &format!("SELECT version FROM {}.schema_version", db.schema),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(version as usize, MIGRATIONS.len());

    // Stored by one, read back by the other, by log position.
    let id = Uuid::new_v4();
    a.write(batch(id, Some(Strategy::Optimistic), &[1, 2], "v1"))
        .await
        .unwrap();
    let loaded = b.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes, change(2).bytes]);
    assert_eq!(loaded.meta.strategy, Strategy::Optimistic);
    b.write(batch(id, None, &[2, 3], "v2")).await.unwrap();
    let delta = a.changes_since(id, loaded.seq).await.unwrap().unwrap();
    assert_eq!(
        delta.changes,
        vec![change(3).bytes],
        "a change stored twice is kept once"
    );
    assert_eq!(delta.state.version, "v2");
    assert!(a
        .changes_since(id, delta.seq)
        .await
        .unwrap()
        .unwrap()
        .is_empty());

    // Both expect v2: the database lets exactly one through.
    let (first, second) = tokio::join!(
        a.write_checked(batch(id, None, &[4], "v3-a"), expect_version("v2")),
        b.write_checked(batch(id, None, &[5], "v3-b"), expect_version("v2")),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    let winner = match (&first, &second) {
        (Ok(()), Err(Refusal::Stale { current })) => {
            assert_eq!(current, "v3-a");
            4
        }
        (Err(Refusal::Stale { current }), Ok(())) => {
            assert_eq!(current, "v3-b");
            5
        }
        other => panic!("not exactly one winner: {other:?}"),
    };
    let stored = a.load(id).await.unwrap().unwrap();
    assert_eq!(stored.changes.last(), Some(&change(winner).bytes));
    assert_eq!(stored.changes.len(), 4, "the refused batch stored nothing");

    // A compaction by a node that read everything; a reader behind it gets the snapshot.
    let covered: Vec<[u8; 32]> = [1, 2, 3, winner].iter().map(|n| change(*n).hash).collect();
    assert!(a
        .compact_from(id, b"snapshot".to_vec(), covered, stored.seq)
        .await
        .unwrap());
    b.write(batch(id, None, &[6], "v4")).await.unwrap();
    let behind = b.changes_since(id, loaded.seq).await.unwrap().unwrap();
    assert_eq!(behind.snapshot.as_deref(), Some(&b"snapshot"[..]));
    assert_eq!(behind.changes, vec![change(6).bytes]);
    let current = b.changes_since(id, stored.seq).await.unwrap().unwrap();
    assert_eq!(
        (current.snapshot, current.changes),
        (None, vec![change(6).bytes])
    );
    // Receipts: one per change, the first one stored (change 2 was stored twice), kept
    // through the compaction, handed out after a log position like the changes.
    let senders = |receipts: &[([u8; 32], Receipt)]| -> Vec<String> {
        receipts.iter().map(|(_, r)| r.agent.clone()).collect()
    };
    let winner_agent = format!("agent-{winner}");
    assert_eq!(
        senders(&b.load(id).await.unwrap().unwrap().receipts),
        ["agent-1", "agent-2", "agent-3", &winner_agent, "agent-6"]
    );
    assert_eq!(
        senders(&behind.receipts),
        ["agent-3", &winner_agent, "agent-6"]
    );
    assert_eq!(senders(&current.receipts), ["agent-6"]);
    // A node that had read less may not replace that snapshot.
    assert!(!b
        .compact_from(id, b"older".to_vec(), vec![], loaded.seq)
        .await
        .unwrap());
    assert_eq!(
        a.load(id).await.unwrap().unwrap().snapshot.as_deref(),
        Some(&b"snapshot"[..])
    );

    // Leases: tokens from one sequence, checked in the write's transaction.
    let locked = Uuid::new_v4();
    a.write(batch(locked, Some(Strategy::Lock), &[], "l1"))
        .await
        .unwrap();
    let LeaseGrant::Granted(first) = a.acquire_lease(locked, "x", 60_000).await.unwrap() else {
        panic!("a free lease is granted");
    };
    assert!(first.remaining_ms > 0);
    match b.acquire_lease(locked, "y", 60_000).await.unwrap() {
        LeaseGrant::Held(held) => assert_eq!((held.token, held.agent.as_str()), (first.token, "x")),
        other => panic!("a held lease was granted again: {other:?}"),
    }
    let ok = b
        .write_checked(batch(locked, None, &[7], "l2"), expect_lease(first.token))
        .await
        .unwrap();
    assert_eq!(ok, Ok(()), "the holder writes through any node");
    // Only the agent that took it releases it.
    assert!(!a.release_lease(locked, first.token, "y").await.unwrap());
    assert!(a.release_lease(locked, first.token, "x").await.unwrap());
    assert!(!a.release_lease(locked, first.token, "x").await.unwrap());
    let released = b
        .write_checked(batch(locked, None, &[8], "l3"), expect_lease(first.token))
        .await
        .unwrap();
    assert_eq!(released, Err(Refusal::LeaseExpired));
    let LeaseGrant::Granted(second) = b.acquire_lease(locked, "y", 60_000).await.unwrap() else {
        panic!("a released lease is granted");
    };
    assert!(second.token > first.token);
    let fenced = a
        .write_checked(batch(locked, None, &[9], "l4"), expect_lease(first.token))
        .await
        .unwrap();
    assert_eq!(
        fenced,
        Err(Refusal::Fenced {
            newest: Some(second.token)
        })
    );
    assert_eq!(
        b.lease(locked).await.unwrap().map(|l| l.token),
        Some(second.token)
    );

    // The writer lock: one node at a time.
    let held = a
        .lock_writer(id)
        .await
        .unwrap()
        .expect("a shared store locks");
    let waiting = {
        let b = Arc::clone(&b);
        tokio::spawn(async move { b.lock_writer(id).await })
    };
    let mut polls = 0;
    loop {
        let waiters: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiters >= 1 {
            break;
        }
        polls += 1;
        assert!(polls < 2000, "the second node never waited for the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiting.is_finished());
    drop(held);
    let second_lock = tokio::time::timeout(HUNG, waiting)
        .await
        .expect("the lock passes on")
        .unwrap()
        .unwrap();
    drop(second_lock);

    // Deleted by one: gone for the other.
    assert!(a.delete(id).await.unwrap());
    assert_eq!(b.changes_since(id, 0).await.unwrap(), None);
    assert_eq!(b.load(id).await.unwrap(), None);
    a.close().await;
    b.close().await;

    // A schema from a newer build is refused, not used.
    admin
        .execute(
            &format!("UPDATE {}.schema_version SET version = 99", db.schema),
            &[],
        )
        .await
        .unwrap();
    let refused = PostgresStore::open(&db.url()).await.unwrap_err();
    assert!(refused.to_string().contains("99"), "{refused}");
}

/// Writes queued together share one transaction (group commit); a failing or refused one
/// is rolled back alone. On a runtime of one thread the writer cannot start before every
/// write below is queued, so the group is exactly these writes.
/// PostgreSQL lists page by page: every document once, in creation order, whatever the
/// page size; a listing under way goes on past a document deleted meanwhile (the one its
/// place names) and reaches one created meanwhile, by another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lists_page_by_page() {
    let Some(db) = Db::new() else { return };
    let a = PostgresStore::open(&db.url()).await.unwrap();
    let b = PostgresStore::open(&db.url()).await.unwrap();
    assert!(a.list_page(None, 10).await.unwrap().docs.is_empty());
    let ids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        a.write(batch(*id, Some(Strategy::Crdt), &[1], "v1"))
            .await
            .unwrap();
    }
    async fn listed(store: &PostgresStore, mut after: Option<u64>, limit: usize) -> Vec<Uuid> {
        let mut seen = Vec::new();
        loop {
            let page = store.list_page(after, limit).await.unwrap();
            assert!(page.docs.len() <= limit.max(1));
            seen.extend(page.docs.iter().map(|d| d.meta.id));
            match page.next {
                Some(next) => after = Some(next),
                None => return seen,
            }
        }
    }
    for limit in [0, 1, 3, 7, 8] {
        assert_eq!(listed(&b, None, limit).await, ids, "pages of {limit}");
    }
    let first = b.list_page(None, 3).await.unwrap();
    let after = first.next.expect("more than one page");
    assert!(a.delete(ids[2]).await.unwrap());
    let late = Uuid::new_v4();
    a.write(batch(late, Some(Strategy::Crdt), &[1], "v1"))
        .await
        .unwrap();
    assert_eq!(
        listed(&b, Some(after), 2).await,
        vec![ids[3], ids[4], ids[5], ids[6], late]
    );
}

#[tokio::test(flavor = "current_thread")]
async fn writes_queued_together_share_one_transaction() {
    let Some(db) = Db::new() else { return };
    let store = PostgresStore::open(&db.url()).await.unwrap();
    let existing = Uuid::new_v4();
    store
        .write(batch(existing, Some(Strategy::Optimistic), &[1], "v1"))
        .await
        .unwrap();
    let before = store.stats();
    let fresh: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let mut queued: Vec<_> = fresh
        .iter()
        .map(|id| store.write(batch(*id, Some(Strategy::Crdt), &[2], "v")))
        .collect();
    let duplicate = store.write(batch(existing, Some(Strategy::Crdt), &[3], "v"));
    let stale = store.write_checked(batch(existing, None, &[4], "v2"), expect_version("v0"));
    let good = store.write_checked(batch(existing, None, &[5], "v2"), expect_version("v1"));
    for write in queued.drain(..) {
        write.await.unwrap();
    }
    assert!(matches!(
        duplicate.await,
        Err(concord_core::storage::StoreError::AlreadyExists(id)) if id == existing
    ));
    assert_eq!(
        stale.await.unwrap(),
        Err(Refusal::Stale {
            current: "v1".into()
        })
    );
    assert_eq!(good.await.unwrap(), Ok(()));
    let after = store.stats();
    assert_eq!(after.commits - before.commits, 1, "one transaction");
    assert_eq!(after.batches - before.batches, 31);
    let loaded = store.load(existing).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes, change(5).bytes]);
    assert_eq!(loaded.state.version, "v2");
    assert_eq!(store.list().await.unwrap().len(), 31);
    store.close().await;
}

/// A registry that gets no notices catches up when it reads: after another node compacted
/// records it never read, from the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_compaction_catches_up_from_the_snapshot() {
    let Some(db) = Db::new() else { return };
    let writer = Node::start_with(
        &db,
        Tuning {
            compact_after: 5,
            ..manual_maintenance()
        },
    )
    .await;
    let client = writer.client("writer");
    let doc = client
        .create(&CreateOptions {
            value: Some(json!({"items": []})),
            ..Default::default()
        })
        .await
        .unwrap();
    // A second node's registry, following nothing: it only learns by reading.
    let behind =
        Registry::new(Arc::new(PostgresStore::open(&db.url()).await.unwrap()) as Arc<dyn Store>);
    let first = behind
        .read::<_, concord_server::registry::Error>(doc.id, |l| Ok(Value::clone(l.doc.value())))
        .await
        .unwrap();
    assert_eq!(first, json!({"items": []}));

    let mut last = String::new();
    for i in 0..12 {
        let ops = json!([{"op": "add", "path": "/items/-", "value": format!("item {i}")}]);
        last = client
            .patch(doc.id, None, &ops, &WriteOptions::default())
            .await
            .unwrap()
            .version;
    }
    let done = writer.state().registry.maintain().await;
    assert_eq!(done.compacted, 1);
    let admin = db.admin().await;
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {}.changes", db.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the snapshot replaced every change record");

    let (value, version) = behind
        .read::<_, concord_server::registry::Error>(doc.id, |l| {
            Ok((Value::clone(l.doc.value()), l.doc.version().to_string()))
        })
        .await
        .unwrap();
    assert_eq!(version, last);
    assert_eq!(value["items"].as_array().unwrap().len(), 12);
    assert_eq!(value, client.get(doc.id).await.unwrap().value);
    writer.stop().await;
}

/// A stored change whose dependency is not stored (written by hand here, as a damaged or
/// half-copied database would hold it) is skipped by a node catching up and reported, as a
/// load reports it: not applied, not kept aside in memory. A fresh load that finds the
/// dependency later takes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_skips_and_reports_a_change_with_a_missing_dependency() {
    let Some(db) = Db::new() else { return };
    let writer = Node::start_with(&db, manual_maintenance()).await;
    let doc = writer
        .create_doc(CreateOptions {
            value: Some(json!({"n": 1})),
            ..Default::default()
        })
        .await;
    let id = doc.id;
    type E = concord_server::registry::Error;
    let store =
        || async { Arc::new(PostgresStore::open(&db.url()).await.unwrap()) as Arc<dyn Store> };
    let behind = Registry::new(store().await);
    /// Version, value, and how many missing dependencies changes kept aside wait for.
    async fn state(registry: &Registry, id: Uuid) -> (String, Value, usize) {
        registry
            .read::<_, concord_server::registry::Error>(id, |l| {
                Ok((
                    l.doc.version().to_string(),
                    Value::clone(l.doc.value()),
                    l.doc.missing_dependencies(),
                ))
            })
            .await
            .unwrap()
    }
    let (version, _, waiting) = state(&behind, id).await;
    assert_eq!(waiting, 0);

    // Two changes by another client, the second built on the first; only the second is
    // stored.
    let admin = db.admin().await;
    let stored: Vec<u8> = admin
        .query(
            &format!(
                "SELECT bytes FROM {}.changes WHERE doc = $1 ORDER BY seq",
                db.schema
            ),
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .flat_map(|row| row.get::<_, Vec<u8>>(0))
        .collect();
    let first = foreign_change(&stored, Some("first"), 1_700_000_000);
    let second = foreign_change(
        &[stored, first.clone()].concat(),
        Some("second"),
        1_700_000_001,
    );
    let insert = |bytes: Vec<u8>| {
        let admin = &admin;
        let schema = &db.schema;
        async move {
            let hash = concord_core::doc::parse_changes(&bytes).unwrap()[0]
                .hash()
                .0
                .to_vec();
            admin
                .execute(
                    &format!("INSERT INTO {schema}.changes (doc, hash, bytes) VALUES ($1, $2, $3)"),
                    &[&id, &hash, &bytes],
                )
                .await
                .unwrap();
        }
    };
    insert(second).await;

    let (after, value, waiting) = state(&behind, id).await;
    assert_eq!(
        after, version,
        "the change without its dependency was not applied"
    );
    assert_eq!(value, json!({"n": 1}));
    assert_eq!(waiting, 0, "nothing is kept aside in memory");
    let damage = behind.damage_of(id);
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert!(damage[0].contains("depends on change"), "{damage:?}");
    assert_eq!(behind.damage_summary(), (1, 1));

    // The node still catches up what comes next, and reads keep working.
    let client = writer.client("writer");
    let written = client
        .patch(
            id,
            None,
            &json!([{"op": "replace", "path": "/n", "value": 2}]),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let (after, value, _) = state(&behind, id).await;
    assert_eq!(after, written.version);
    assert_eq!(value, json!({"n": 2}));

    // Once the dependency is stored too, a fresh load has both: nothing was lost.
    insert(first).await;
    let fresh = Registry::new(store().await);
    let (_, value, waiting) = state(&fresh, id).await;
    assert_eq!((value, waiting), (json!({"n": 2}), 0));
    let changes = fresh
        .read::<_, E>(id, |l| Ok(l.doc.change_count()))
        .await
        .unwrap();
    assert_eq!(
        changes, 4,
        "create, the write, and both hand-stored changes"
    );
    assert!(fresh.damage_of(id).is_empty());
    writer.stop().await;
}

/// A document's history as a registry shows it: hash, agent, time, whether recorded, the
/// claimed agent and time.
async fn history(
    registry: &Registry,
    id: Uuid,
) -> Vec<(String, Option<String>, i64, bool, Option<String>, i64)> {
    registry
        .read::<_, concord_server::registry::Error>(id, |l| {
            Ok(l.history()
                .into_iter()
                .map(|h| {
                    (
                        h.hash,
                        h.agent,
                        h.time,
                        h.recorded,
                        h.claimed_agent,
                        h.claimed_time,
                    )
                })
                .collect())
        })
        .await
        .unwrap()
}

/// Who sent a change, and when, is the same on every node: one that had the document
/// before the change and catches up after a compaction replaced its record (from the
/// snapshot, with the receipts), and one that loads it afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_who_sent_a_change() {
    let Some(db) = Db::new() else { return };
    let writer = Node::start_with(
        &db,
        Tuning {
            compact_after: 1,
            ..manual_maintenance()
        },
    )
    .await;
    let doc = writer
        .create_doc(CreateOptions {
            value: Some(json!({"n": 1})),
            ..Default::default()
        })
        .await;
    type E = concord_server::registry::Error;
    let registry = || async {
        Registry::new(Arc::new(PostgresStore::open(&db.url()).await.unwrap()) as Arc<dyn Store>)
    };
    let id = doc.id;
    // A node that has the document in memory, and follows nothing: it learns by reading.
    let behind = registry().await;
    history(&behind, id).await;

    let own = &writer.state().registry;
    let raw = own
        .read::<_, E>(doc.id, |l| Ok(l.doc.changes_since(None).unwrap()))
        .await
        .unwrap();
    let claims_1970 = foreign_change(&raw, Some("ops did this"), 1);
    let sender = WriteMeta {
        agent: "poster".into(),
        time_ms: 1_800_000_000_000,
        message: None,
    };
    own.execute(WriteCommand {
        doc: doc.id,
        meta: &sender,
        if_match: None,
        lock: None,
        edit: Edit::Changes(&claims_1970),
        idempotency: None,
        answer: concord_server::registry::Answer::Minimal,
    })
    .await
    .unwrap();
    let shown = history(own, id).await;
    let last = shown.last().unwrap();
    assert_eq!(
        (&last.1, last.2, last.3, &last.4, last.5),
        (&Some("poster".to_owned()), 1_800_000_000, true, &None, 1)
    );
    assert_eq!(own.maintain().await.compacted, 1);
    let admin = db.admin().await;
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {}.changes", db.schema), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the snapshot replaced every change record");

    assert_eq!(history(&behind, id).await, shown);
    assert_eq!(history(&registry().await, id).await, shown);
    writer.stop().await;
}

/// A store whose node loses a race: just before its next checked write, a rival node
/// stores a write of its own (prepared by the test).
struct Racing {
    inner: Arc<PostgresStore>,
    rival: Arc<PostgresStore>,
    next: std::sync::Mutex<Option<WriteBatch>>,
}

#[async_trait::async_trait]
impl Store for Racing {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> concord_core::storage::Checked {
        let first = self.next.lock().unwrap().take();
        let (inner, rival) = (Arc::clone(&self.inner), Arc::clone(&self.rival));
        Box::pin(async move {
            if let Some(first) = first {
                rival.write(first).await?;
            }
            inner.write_checked(batch, expect).await
        })
    }
    async fn load(
        &self,
        id: Uuid,
    ) -> Result<Option<concord_core::storage::LoadedDoc>, concord_core::storage::StoreError> {
        self.inner.load(id).await
    }
    async fn changes_since(
        &self,
        id: Uuid,
        since: u64,
    ) -> Result<Option<concord_core::storage::Delta>, concord_core::storage::StoreError> {
        self.inner.changes_since(id, since).await
    }
    async fn list_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<concord_core::storage::ListPage, concord_core::storage::StoreError> {
        self.inner.list_page(after, limit).await
    }
    async fn delete(&self, id: Uuid) -> Result<bool, concord_core::storage::StoreError> {
        self.inner.delete(id).await
    }
    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), concord_core::storage::StoreError> {
        self.inner.compact(id, snapshot, covered).await
    }
    async fn idempotency(
        &self,
        key: &str,
    ) -> Result<Option<concord_core::storage::IdempotencyRecord>, concord_core::storage::StoreError>
    {
        self.inner.idempotency(key).await
    }
    async fn purge_idempotency(
        &self,
        before_ms: i64,
    ) -> Result<u64, concord_core::storage::StoreError> {
        self.inner.purge_idempotency(before_ms).await
    }
    fn shared(&self) -> bool {
        true
    }
}

/// An optimistic write that passed the node's own check but lost the race in the database
/// is answered 412 with the winner's version, and leaves nothing behind: not in the store,
/// not in the node's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_by_the_database_leaves_nothing_behind() {
    use concord_core::{Document, Version};
    use concord_server::policy::{base_for, IfMatch, WriteKind};

    let Some(db) = Db::new() else { return };
    let inner = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    let rival = Arc::new(PostgresStore::open(&db.url()).await.unwrap());
    // The document, stored by the rival.
    let id = Uuid::new_v4();
    let (mut doc, created) =
        Document::create(&json!({"winner": null}), Schema::default(), &meta("setup")).unwrap();
    let v1 = doc.version();
    rival
        .write(WriteBatch {
            doc: id,
            create: Some(DocMeta {
                id,
                strategy: Strategy::Optimistic,
                schema: Schema::default(),
                created_at_ms: 1,
            }),
            changes: created.stored_changes(),
            state: DocState {
                version: v1.to_string(),
                change_count: 1,
                updated_at_ms: 1,
                last_agent: Some("setup".into()),
            },
            idempotency: None,
        })
        .await
        .unwrap();
    // The rival's write from v1, stored just before the node's own.
    let theirs = doc
        .put(Some(&v1), &json!({"winner": "rival"}), &meta("rival"))
        .unwrap();
    let racing = Arc::new(Racing {
        inner: Arc::clone(&inner),
        rival: Arc::clone(&rival),
        next: std::sync::Mutex::new(Some(WriteBatch {
            doc: id,
            create: None,
            changes: theirs.stored_changes(),
            state: DocState {
                version: theirs.version.to_string(),
                change_count: 2,
                updated_at_ms: 2,
                last_agent: Some("rival".into()),
            },
            idempotency: None,
        })),
    });
    let registry = Registry::new(racing as Arc<dyn Store>);
    let ours = meta("node");
    let if_match = IfMatch::Version(v1.clone());
    let refused = registry
        .write::<concord_server::problem::ApiError>(
            id,
            &ours,
            None,
            1,
            (None, concord_server::registry::Answer::Whole),
            |loaded| {
                // The node's own check passes: it has not seen the rival's write yet.
                let base = base_for(
                    loaded.meta.strategy,
                    WriteKind::Put,
                    Some(&if_match),
                    &loaded.doc.version(),
                )?;
                assert_eq!(base, None, "admitted at the current version");
                Ok(loaded.doc.put(None, &json!({"winner": "node"}), &ours)?)
            },
        )
        .await
        .expect_err("the database refuses");
    assert_eq!(refused.status.as_u16(), 412);
    assert_eq!(refused.kind, "stale-version");
    let etag = refused
        .headers
        .iter()
        .find(|(name, _)| name == "etag")
        .map(|(_, v)| v.to_str().unwrap().trim_matches('"').to_owned());
    assert_eq!(etag, Some(theirs.version.to_string()));
    // Memory holds the winner's state, not the refused change.
    let (value, version, changes) = registry
        .read::<_, concord_server::registry::Error>(id, |l| {
            Ok((
                Value::clone(l.doc.value()),
                l.doc.version(),
                l.doc.change_count(),
            ))
        })
        .await
        .unwrap();
    assert_eq!(value, json!({"winner": "rival"}));
    assert_eq!(version, theirs.version);
    assert_eq!(changes, 2);
    // And so does the store.
    let stored = inner.load(id).await.unwrap().unwrap();
    assert_eq!(stored.changes.len(), 2);
    assert_eq!(
        stored.state.version.parse::<Version>().unwrap(),
        theirs.version
    );
    inner.close().await;
    rival.close().await;
}

// ---------------------------------------------------------------------------------------
// Nodes.

/// Agents on every node write one crdt document at once, each from a stale read (whole
/// rewrites, on a node other than the one it read from, and patches): every node ends with
/// the same document, holding every write.
async fn agents_on_every_node_converge(n: usize) {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, n).await;
    let doc = nodes[0]
        .create_doc(CreateOptions {
            value: Some(json!({"items": [], "notes": "", "n": 0})),
            text: vec!["/notes".into()],
            counters: vec!["/n".into()],
            ..Default::default()
        })
        .await;
    let agents = 3 * n;
    let barrier = Arc::new(Barrier::new(agents));
    let mut tasks = JoinSet::new();
    for k in 0..agents {
        let reader = nodes[k % n].client(&format!("agent-{k}"));
        let writer = nodes[(k + 1) % n].client(&format!("agent-{k}"));
        let barrier = Arc::clone(&barrier);
        let id = doc.id;
        tasks.spawn(async move {
            let read = reader.get(id).await.unwrap();
            // Everybody reads before anybody writes: every write is from a stale read.
            barrier.wait().await;
            let mut value = read.value.clone();
            value["items"]
                .as_array_mut()
                .unwrap()
                .push(json!(format!("rewrite {k}")));
            value["notes"] = json!(format!("{}[{k}]", read.value["notes"].as_str().unwrap()));
            value["n"] = json!(read.value["n"].as_i64().unwrap() + 1);
            writer
                .put(id, &read.version, &value, &WriteOptions::default())
                .await
                .unwrap();
            let ops = json!([
                {"op": "add", "path": "/items/-", "value": format!("patch {k}")},
                {"op": "increment", "path": "/n", "value": 10}
            ]);
            reader
                .patch(id, Some(&read.version), &ops, &WriteOptions::default())
                .await
                .unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let value = agreed(&nodes, doc.id).await;
    let mut got = items(&value);
    got.sort();
    let mut want: Vec<String> = (0..agents)
        .flat_map(|k| [format!("rewrite {k}"), format!("patch {k}")])
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(value["n"], json!(11 * agents));
    let notes = value["notes"].as_str().unwrap();
    for k in 0..agents {
        assert!(notes.contains(&format!("[{k}]")), "{notes}");
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_two_nodes_converge() {
    agents_on_every_node_converge(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_three_nodes_converge() {
    agents_on_every_node_converge(3).await;
}

/// A WebSocket subscriber on node 1 sees every write made on node 2, in order, attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_sees_writes_on_another() {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, 2).await;
    let doc = nodes[0]
        .create_doc(CreateOptions {
            value: Some(json!({"items": []})),
            ..Default::default()
        })
        .await;
    let mut subscription = nodes[0]
        .client("watcher")
        .subscribe(doc.id, None)
        .await
        .unwrap();
    match subscription.next().await.unwrap() {
        Event::Snapshot { version, .. } => assert_eq!(version, doc.version),
        other => panic!("expected a snapshot first, got {other:?}"),
    }
    let writer = nodes[1].client("agent-on-node-2");
    let mut versions = Vec::new();
    for i in 0..5 {
        let ops = json!([{"op": "add", "path": "/items/-", "value": format!("from node 2: {i}")}]);
        versions.push(
            writer
                .patch(doc.id, None, &ops, &WriteOptions::default())
                .await
                .unwrap()
                .version,
        );
    }
    let changes = until_version(&mut subscription, versions.last().unwrap()).await;
    let seen: Vec<&str> = changes.iter().map(|c| c.version.as_str()).collect();
    assert_eq!(seen, versions, "one event per write, in order");
    for change in &changes {
        assert_eq!(change.agent.as_deref(), Some("agent-on-node-2"));
        assert_eq!(change.patch[0]["op"], "add", "{}", change.patch);
    }
    // A write on the subscriber's own node arrives as usual, after them.
    let own = nodes[0]
        .client("agent-on-node-1")
        .patch(
            doc.id,
            None,
            &json!([{"op": "add", "path": "/items/-", "value": "from node 1"}]),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    let more = until_version(&mut subscription, &own.version).await;
    assert_eq!(more.len(), 1);
    drop(subscription);
    for node in nodes {
        node.stop().await;
    }
}

/// One agent's writes under `strategy`, its reads, writes and lock requests spread over
/// three different nodes; returns the marks of the writes acknowledged.
async fn agent(
    strategy: Strategy,
    id: Uuid,
    read: Client,
    write: Client,
    lock: Client,
    k: usize,
    writes: usize,
) -> Vec<String> {
    let mut acked = Vec::new();
    for j in 0..writes {
        let mark = format!("a{k}w{j}");
        let added = |value: &Value| {
            let mut value = value.clone();
            value["items"].as_array_mut().unwrap().push(json!(mark));
            value
        };
        match strategy {
            Strategy::Crdt => {
                let doc = read.get(id).await.unwrap();
                write
                    .put(
                        id,
                        &doc.version,
                        &added(&doc.value),
                        &WriteOptions::default(),
                    )
                    .await
                    .unwrap();
            }
            Strategy::Optimistic => {
                let mut tries = 0;
                loop {
                    let doc = read.get(id).await.unwrap();
                    match write
                        .put(
                            id,
                            &doc.version,
                            &added(&doc.value),
                            &WriteOptions::default(),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.status() == Some(412) => {
                            tries += 1;
                            assert!(tries < 1000, "{mark} never got through");
                        }
                        Err(e) => panic!("{mark}: {e}"),
                    }
                }
            }
            Strategy::Lock => {
                let lease = loop {
                    match lock.lock(id, 30_000, 30_000).await {
                        Ok(lease) => break lease,
                        Err(e) if e.status() == Some(423) => continue,
                        Err(e) => panic!("{mark}: {e}"),
                    }
                };
                let doc = read.get(id).await.unwrap();
                write
                    .put(
                        id,
                        "*",
                        &added(&doc.value),
                        &WriteOptions::default().with_lock(&lease.token),
                    )
                    .await
                    .unwrap();
                lock.unlock(id, &lease.token).await.unwrap();
            }
            Strategy::Queue => {
                let ops = json!([{"op": "add", "path": "/items/-", "value": mark}]);
                write
                    .patch(id, None, &ops, &WriteOptions::default())
                    .await
                    .unwrap();
            }
            other => unreachable!("{other} is not run here"),
        }
        acked.push(mark);
    }
    acked
}

/// The comparison's workload (agents reading, rewriting and writing back one list), spread
/// over three nodes: crdt, optimistic, lock and queue lose nothing, and the strategies that
/// promise one writer at a time (optimistic, lock, queue) produce a history that is one
/// chain, however many nodes the writes went through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_strategy_keeps_its_meaning_across_nodes() {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, 3).await;
    let (agents, writes) = (6, 4);
    for strategy in [
        Strategy::Crdt,
        Strategy::Optimistic,
        Strategy::Lock,
        Strategy::Queue,
    ] {
        let doc = nodes[0]
            .create_doc(CreateOptions {
                value: Some(json!({"items": []})),
                strategy: Some(strategy),
                ..Default::default()
            })
            .await;
        let mut tasks = JoinSet::new();
        for k in 0..agents {
            let name = format!("agent-{k}");
            tasks.spawn(agent(
                strategy,
                doc.id,
                nodes[k % 3].client(&name),
                nodes[(k + 1) % 3].client(&name),
                nodes[(k + 2) % 3].client(&name),
                k,
                writes,
            ));
        }
        let mut acked = Vec::new();
        while let Some(done) = tasks.join_next().await {
            acked.extend(done.unwrap());
        }
        assert_eq!(
            acked.len(),
            agents * writes,
            "{strategy}: every write acknowledged"
        );
        let value = agreed(&nodes, doc.id).await;
        let mut got = items(&value);
        got.sort();
        acked.sort();
        assert_eq!(got, acked, "{strategy}: lost or invented writes");
        if strategy != Strategy::Crdt {
            assert!(
                history_is_a_chain(&nodes[1].client("auditor"), doc.id).await,
                "{strategy}: two writes were applied side by side"
            );
        }
    }
    for node in nodes {
        node.stop().await;
    }
}

/// Optimistic writers on three nodes all write from the same version at once: the database
/// lets exactly one through each round, whichever nodes they use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_checks_are_decided_by_the_database() {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, 3).await;
    let doc = nodes[0]
        .create_doc(CreateOptions {
            value: Some(json!({"winner": null})),
            strategy: Some(Strategy::Optimistic),
            ..Default::default()
        })
        .await;
    for round in 0..4 {
        let version = nodes[round % 3]
            .client("reader")
            .get(doc.id)
            .await
            .unwrap()
            .version;
        let writers = 6;
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = JoinSet::new();
        for k in 0..writers {
            let client = nodes[k % 3].client(&format!("agent-{k}"));
            let (barrier, version) = (Arc::clone(&barrier), version.clone());
            tasks.spawn(async move {
                barrier.wait().await;
                client
                    .put(
                        doc.id,
                        &version,
                        &json!({"winner": format!("round {round}: agent {k}")}),
                        &WriteOptions::default(),
                    )
                    .await
            });
        }
        let mut won = 0;
        while let Some(done) = tasks.join_next().await {
            match done.unwrap() {
                Ok(_) => won += 1,
                Err(e) => assert_eq!(e.status(), Some(412), "{e}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
    }
    assert!(history_is_a_chain(&nodes[2].client("auditor"), doc.id).await);
    for node in nodes {
        node.stop().await;
    }
}

fn refusal_kind(result: Result<concord_client::Doc, ClientError>) -> String {
    let e = result.expect_err("the write must be refused");
    let problem = e.problem().expect("a problem");
    assert_eq!(problem.status, 409, "{problem:?}");
    problem.kind().to_owned()
}

/// Lock fencing holds across nodes: a token from node 1 is fenced once node 2 issued a newer
/// one, on every node; a release on one node wakes a lock request waiting on another; an
/// expired lease passes to the next requester wherever it asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_fencing_holds_across_nodes() {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, 2).await;
    let (one, two) = (nodes[0].client("agent-1"), nodes[1].client("agent-2"));
    let doc = one
        .create(&CreateOptions {
            value: Some(json!({"owner": null})),
            strategy: Some(Strategy::Lock),
            ..Default::default()
        })
        .await
        .unwrap();
    let put = |client: &Client, token: &str, owner: &str| {
        let (client, token) = (client.clone(), token.to_owned());
        let value = json!({"owner": owner});
        async move {
            client
                .put(
                    doc.id,
                    "*",
                    &value,
                    &WriteOptions::default().with_lock(token),
                )
                .await
        }
    };

    let first = one.lock(doc.id, 60_000, 0).await.unwrap();
    let held = two.lock(doc.id, 60_000, 0).await.unwrap_err();
    assert_eq!(held.status(), Some(423), "{held}");
    // The holder may write through either node; nobody else may, even with its token.
    let one_via_two = nodes[1].client("agent-1");
    put(&one_via_two, &first.token, "agent-1 via node 2")
        .await
        .unwrap();
    assert_eq!(
        refusal_kind(put(&two, &first.token, "not agent-2's").await),
        "fenced"
    );
    let refused = two.unlock(doc.id, &first.token).await.unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    // No token at all in the refusal (a store's tokens are small numbers, so none).
    let detail = &refused.problem().expect("a problem").detail;
    assert!(!detail.chars().any(|c| c.is_ascii_digit()), "{detail}");

    // Agent 2 waits on node 2; agent 1 releases on node 1: the waiter gets the lease long
    // before its wait (or the 60 s lease) would run out.
    let waiter = {
        let two = two.clone();
        tokio::spawn(async move { two.lock(doc.id, 60_000, 50_000).await })
    };
    one.unlock(doc.id, &first.token).await.unwrap();
    let second = tokio::time::timeout(HUNG, waiter)
        .await
        .expect("the waiter was woken")
        .unwrap()
        .expect("the waiter got the lease");
    let (t1, t2): (u64, u64) = (first.token.parse().unwrap(), second.token.parse().unwrap());
    assert!(t2 > t1, "{t1} then {t2}");

    // The old token is fenced on both nodes; the new one writes on both.
    assert_eq!(
        refusal_kind(put(&one, &first.token, "stale").await),
        "fenced"
    );
    assert_eq!(
        refusal_kind(put(&two, &first.token, "stale").await),
        "fenced"
    );
    let two_via_one = nodes[0].client("agent-2");
    put(&two_via_one, &second.token, "agent-2 via node 1")
        .await
        .unwrap();
    two.unlock(doc.id, &second.token).await.unwrap();
    assert_eq!(
        refusal_kind(put(&two, &second.token, "released").await),
        "fenced"
    );

    // A lease that runs out passes to a requester on the other node.
    let short = one.lock(doc.id, 1, 0).await.unwrap();
    let next = two.lock(doc.id, 60_000, 50_000).await.unwrap();
    assert!(next.token.parse::<u64>().unwrap() > short.token.parse::<u64>().unwrap());
    assert_eq!(
        refusal_kind(put(&one, &short.token, "expired").await),
        "fenced"
    );
    put(&two, &next.token, "agent-2 again").await.unwrap();
    assert_eq!(
        agreed(&nodes, doc.id).await,
        json!({"owner": "agent-2 again"})
    );
    for node in nodes {
        node.stop().await;
    }
}

/// The real `concord` binary as a node of its own, to be killed (SIGKILL).
struct Process {
    child: std::process::Child,
    base: String,
}

impl Process {
    fn start(db: &Db, data: &std::path::Path) -> Process {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_concord-e2e"))
            .args(["serve", "--addr", "127.0.0.1:0", "--storage", &db.url()])
            .arg("--data")
            .arg(data)
            .env("RUST_LOG", "concord_server=warn")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let base = loop {
            let line = lines
                .next()
                .expect("the node prints its address")
                .expect("readable stdout");
            if let Some(address) = line.strip_prefix("concord listening on ") {
                break address.trim().to_owned();
            }
        };
        Process { child, base }
    }

    fn client(&self, agent: &str) -> Client {
        Client::new(&self.base, agent)
    }

    /// SIGKILL: no shutdown, nothing flushed, connections dropped by the kernel.
    fn kill(mut self) {
        self.child.kill().expect("killed");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node killed (a process, SIGKILL) or shut down, then started again, has every write the
/// others made meanwhile, and follows them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_and_restarted_catches_up() {
    let Some(db) = Db::new() else { return };
    let stay = Node::start(&db).await;
    let data = tempfile::tempdir().unwrap();
    let killed = Process::start(&db, data.path());
    let doc = killed
        .client("agent-k")
        .create(&CreateOptions {
            value: Some(json!({"items": []})),
            ..Default::default()
        })
        .await
        .unwrap();
    let add = |client: Client, item: String| async move {
        client
            .patch(
                doc.id,
                None,
                &json!([{"op": "add", "path": "/items/-", "value": item}]),
                &WriteOptions::default(),
            )
            .await
            .unwrap()
    };
    add(killed.client("agent-k"), "before the kill".into()).await;
    killed.kill();
    for i in 0..3 {
        add(stay.client("agent-s"), format!("while it was dead {i}")).await;
    }
    let again = Process::start(&db, data.path());
    let read = again.client("reader").get(doc.id).await.unwrap();
    let there = stay.client("reader").get(doc.id).await.unwrap();
    assert_eq!((&read.value, &read.version), (&there.value, &there.version));
    assert_eq!(items(&read.value).len(), 4);
    // It follows the others again: its subscriber sees the next write made elsewhere.
    let mut subscription = again
        .client("watcher")
        .subscribe(doc.id, None)
        .await
        .unwrap();
    let next = add(stay.client("agent-s"), "after the restart".into()).await;
    until_version(&mut subscription, &next.version).await;
    drop(subscription);
    drop(again);

    // The same with an in-process node that had the document in memory and shut down.
    let leaving = Node::start(&db).await;
    leaving.client("reader").get(doc.id).await.unwrap();
    leaving.stop().await;
    let last = add(stay.client("agent-s"), "while it was stopped".into()).await;
    let back = Node::start(&db).await;
    let read = back.client("reader").get(doc.id).await.unwrap();
    assert_eq!(read.version, last.version);
    assert_eq!(items(&read.value).len(), 6);
    back.stop().await;
    stay.stop().await;
}

/// Polls `condition` a bounded number of times, a few ms apart.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..6000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

/// When the database drops a node's connections (a restart, a failover), the node connects
/// again by itself: its listener reconnects and catches up (a notice missed meanwhile loses
/// nothing), and its writes and reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_loses_its_connections_reconnects_and_catches_up() {
    let Some(db) = Db::new() else { return };
    let nodes = nodes(&db, 2).await;
    let admin = db.admin().await;
    let doc = nodes[0]
        .create_doc(CreateOptions {
            value: Some(json!({"items": []})),
            ..Default::default()
        })
        .await;
    let mut subscription = nodes[0]
        .client("watcher")
        .subscribe(doc.id, None)
        .await
        .unwrap();
    subscription.next().await.unwrap();
    let store = Arc::clone(&nodes[0].store);
    eventually("the listener connected", || store.stats().listens >= 1).await;
    let listens = store.stats().listens;

    // Every connection of node 1, listener included, is cut.
    let cut: Vec<tokio_postgres::Row> = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("concord-% {}", store.node())],
        )
        .await
        .unwrap();
    assert!(!cut.is_empty());
    // Written on node 2 while node 1 may not be listening.
    let written = nodes[1]
        .client("agent-2")
        .patch(
            doc.id,
            None,
            &json!([{"op": "add", "path": "/items/-", "value": "during the cut"}]),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    until_version(&mut subscription, &written.version).await;
    eventually("the listener reconnected", || {
        store.stats().listens > listens
    })
    .await;

    // Node 1 writes and reads on new connections.
    let own = nodes[0]
        .client("agent-1")
        .patch(
            doc.id,
            None,
            &json!([{"op": "add", "path": "/items/-", "value": "after the cut"}]),
            &WriteOptions::default(),
        )
        .await
        .unwrap();
    until_version(&mut subscription, &own.version).await;
    let value = agreed(&nodes, doc.id).await;
    assert_eq!(items(&value), ["during the cut", "after the cut"]);
    drop(subscription);
    for node in nodes {
        node.stop().await;
    }
}
