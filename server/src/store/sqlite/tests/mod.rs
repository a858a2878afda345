//! The store against real files in temporary folders: what it keeps and reads back. The
//! writer's grouping and failures are in `writer`, damaged and old files in `files`.

use super::*;
use concord_core::schema::Schema;
use concord_core::storage::{DocMeta, DocState, ListPage, Receipt, Refusal, StoredChange};
use concord_core::strategy::Strategy;
use rusqlite::params;

use super::schema::MIGRATIONS;

mod files;
mod writer;

fn meta(id: Uuid, created_at_ms: i64) -> DocMeta {
    DocMeta {
        id,
        strategy: Strategy::Optimistic,
        schema: Schema {
            text: vec!["/title".into()],
            counters: vec!["/likes".into(), "/items/*/n".into()],
            ids: Vec::new(),
        },
        created_at_ms,
    }
}

fn state(version: &str, change_count: u64, agent: Option<&str>) -> DocState {
    DocState {
        version: version.into(),
        change_count,
        updated_at_ms: 1_000 + change_count as i64,
        last_agent: agent.map(str::to_owned),
    }
}

fn change(n: u8) -> StoredChange {
    let mut hash = [0u8; 32];
    hash[0] = n;
    hash[31] = 0xAA;
    StoredChange {
        hash,
        bytes: vec![n, n.wrapping_add(1), n.wrapping_add(2), 0, 0xFF],
        receipt: Some(receipt(&format!("agent-{n}"), i64::from(n))),
    }
}

fn receipt(agent: &str, at_ms: i64) -> Receipt {
    Receipt {
        agent: agent.into(),
        at_ms,
    }
}

/// The agents of receipts, in order.
fn senders(receipts: &[([u8; 32], Receipt)]) -> Vec<String> {
    receipts.iter().map(|(_, r)| r.agent.clone()).collect()
}

fn create_batch(id: Uuid, changes: Vec<StoredChange>) -> WriteBatch {
    WriteBatch {
        doc: id,
        create: Some(meta(id, 500)),
        state: state("v1", changes.len() as u64, Some("creator")),
        changes,
        idempotency: None,
    }
}

fn update_batch(id: Uuid, changes: Vec<StoredChange>, version: &str, count: u64) -> WriteBatch {
    WriteBatch {
        doc: id,
        create: None,
        changes,
        state: state(version, count, Some("writer")),
        idempotency: None,
    }
}

fn record(key: &str, created_at_ms: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        key: key.into(),
        fingerprint: format!("fp-{key}"),
        status: 201,
        headers: vec![
            ("ETag".into(), "\"abc\"".into()),
            ("Location".into(), "/docs/x".into()),
        ],
        body: b"{\"ok\":true}".to_vec(),
        created_at_ms,
    }
}

#[tokio::test]
async fn create_write_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    assert_eq!(store.load(id).await.unwrap(), None);

    store
        .write(create_batch(id, vec![change(1), change(2)]))
        .await
        .unwrap();
    store
        .write(update_batch(id, vec![change(3)], "v2", 3))
        .await
        .unwrap();

    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.meta, meta(id, 500));
    assert_eq!(loaded.state, state("v2", 3, Some("writer")));
    assert_eq!(loaded.snapshot, None);
    assert_eq!(
        loaded.changes,
        vec![change(1).bytes, change(2).bytes, change(3).bytes]
    );

    // A state without an agent round-trips as None.
    let mut batch = update_batch(id, vec![], "v3", 3);
    batch.state.last_agent = None;
    store.write(batch).await.unwrap();
    assert_eq!(
        store.load(id).await.unwrap().unwrap().state.last_agent,
        None
    );
    assert!(dir.path().join(DB_FILE).exists());
}

#[tokio::test]
async fn storing_a_change_twice_keeps_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store
        .write(create_batch(id, vec![change(1)]))
        .await
        .unwrap();
    store
        .write(update_batch(id, vec![change(1), change(2)], "v2", 2))
        .await
        .unwrap();
    store
        .write(update_batch(id, vec![change(2), change(1)], "v2", 2))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes, change(2).bytes]);

    // The same hash under another document is another change.
    let other = Uuid::new_v4();
    store
        .write(create_batch(other, vec![change(1)]))
        .await
        .unwrap();
    let loaded = store.load(other).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes]);
}

#[tokio::test]
async fn reopen_keeps_everything_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    {
        let store = SqliteStore::open(dir.path()).unwrap();
        store
            .write(create_batch(a, vec![change(1), change(2)]))
            .await
            .unwrap();
        let mut batch = create_batch(b, vec![change(9)]);
        batch.idempotency = Some(record("k1", 10));
        store.write(batch).await.unwrap();
        store
            .compact(a, b"snap".to_vec(), vec![change(1).hash])
            .await
            .unwrap();
        store
            .write(update_batch(a, vec![change(3)], "v9", 3))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let loaded = store.load(a).await.unwrap().unwrap();
    assert_eq!(loaded.meta, meta(a, 500));
    assert_eq!(loaded.state, state("v9", 3, Some("writer")));
    assert_eq!(loaded.snapshot, Some(b"snap".to_vec()));
    assert_eq!(loaded.changes, vec![change(2).bytes, change(3).bytes]);
    assert_eq!(
        store.load(b).await.unwrap().unwrap().changes,
        vec![change(9).bytes]
    );
    assert_eq!(
        store.idempotency("k1").await.unwrap(),
        Some(record("k1", 10))
    );
    let ids: Vec<Uuid> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.meta.id)
        .collect();
    assert_eq!(ids, vec![a, b]);

    // New documents after a reopen still list after the old ones.
    let c = Uuid::new_v4();
    store.write(create_batch(c, vec![])).await.unwrap();
    let ids: Vec<Uuid> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.meta.id)
        .collect();
    assert_eq!(ids, vec![a, b, c]);

    // The schema version was recorded.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn list_is_in_creation_order_with_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.list().await.unwrap().is_empty());
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut batch = create_batch(*id, vec![change(i as u8)]);
        batch.create = Some(DocMeta {
            strategy: Strategy::ALL[i],
            ..meta(*id, i as i64)
        });
        store.write(batch).await.unwrap();
    }
    // Updating the first does not move it.
    store
        .write(update_batch(ids[0], vec![change(50)], "v2", 2))
        .await
        .unwrap();

    let list = store.list().await.unwrap();
    assert_eq!(list.iter().map(|s| s.meta.id).collect::<Vec<_>>(), ids);
    for (i, summary) in list.iter().enumerate() {
        assert_eq!(summary.meta.strategy, Strategy::ALL[i]);
        assert_eq!(summary.meta.created_at_ms, i as i64);
        assert_eq!(summary.meta.schema, meta(ids[i], 0).schema);
    }
    assert_eq!(list[0].state, state("v2", 2, Some("writer")));
    assert_eq!(list[1].state, state("v1", 1, Some("creator")));

    // Deleting one keeps the order of the rest.
    assert!(store.delete(ids[2]).await.unwrap());
    let after: Vec<Uuid> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.meta.id)
        .collect();
    assert_eq!(after, vec![ids[0], ids[1], ids[3], ids[4]]);
}

/// Listing page by page gives every document once, in creation order, whatever the page
/// size; a listing under way goes on past a document deleted meanwhile (the one its place
/// names included) and reaches one created meanwhile.
async fn pages_list_each_document_once(store: &dyn Store) {
    let ids: Vec<Uuid> = (0..7).map(|_| Uuid::new_v4()).collect();
    for id in &ids {
        store.write(create_batch(*id, vec![])).await.unwrap();
    }
    let listed = |after, limit| async move {
        let mut seen = Vec::new();
        let mut after = after;
        loop {
            let page: ListPage = store.list_page(after, limit).await.unwrap();
            assert!(!page.docs.is_empty() || seen.is_empty());
            assert!(page.docs.len() <= limit.max(1));
            seen.extend(page.docs.iter().map(|d| d.meta.id));
            match page.next {
                Some(next) => after = Some(next),
                None => return seen,
            }
        }
    };
    for limit in [0, 1, 2, 3, 6, 7, 8, 1000] {
        assert_eq!(listed(None, limit).await, ids, "pages of {limit}");
    }
    let first = store.list_page(None, 3).await.unwrap();
    assert_eq!(first.docs.len(), 3);
    let after = first.next.expect("more than one page");
    assert!(store.delete(ids[2]).await.unwrap());
    assert!(store.delete(ids[4]).await.unwrap());
    let late = Uuid::new_v4();
    store.write(create_batch(late, vec![])).await.unwrap();
    assert_eq!(
        listed(Some(after), 2).await,
        vec![ids[3], ids[5], ids[6], late]
    );
}

#[tokio::test]
async fn sqlite_lists_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert!(store.list_page(None, 10).await.unwrap().docs.is_empty());
    pages_list_each_document_once(&store).await;
}

#[tokio::test]
async fn the_memory_store_lists_page_by_page() {
    pages_list_each_document_once(&concord_core::storage::MemoryStore::new()).await;
}

#[tokio::test]
async fn delete_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    let keep = Uuid::new_v4();
    store
        .write(create_batch(id, vec![change(1), change(2)]))
        .await
        .unwrap();
    store
        .write(create_batch(keep, vec![change(1)]))
        .await
        .unwrap();
    store
        .compact(id, b"snap".to_vec(), vec![change(1).hash])
        .await
        .unwrap();

    assert!(store.delete(id).await.unwrap());
    assert_eq!(store.load(id).await.unwrap(), None);
    assert!(!store.delete(id).await.unwrap());
    assert!(!store.delete(Uuid::new_v4()).await.unwrap());
    // A write to a deleted document is refused.
    assert!(matches!(
        store.write(update_batch(id, vec![], "v", 0)).await,
        Err(StoreError::NotFound(x)) if x == id
    ));

    // No rows of it are left, and the other document is intact.
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    for table in ["changes", "snapshots"] {
        let n: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE doc = ?1"),
                params![id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "{table}");
    }
    assert_eq!(
        store.load(keep).await.unwrap().unwrap().changes,
        vec![change(1).bytes]
    );

    // The id can be created again, fresh.
    store
        .write(create_batch(id, vec![change(7)]))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.snapshot, None);
    assert_eq!(loaded.changes, vec![change(7).bytes]);
}

#[tokio::test]
async fn compact_then_load_returns_snapshot_and_remaining_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store
        .write(create_batch(id, (1..=5).map(change).collect()))
        .await
        .unwrap();
    store
        .compact(
            id,
            b"snapshot-1".to_vec(),
            vec![change(1).hash, change(2).hash],
        )
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.snapshot, Some(b"snapshot-1".to_vec()));
    assert_eq!(
        loaded.changes,
        vec![change(3).bytes, change(4).bytes, change(5).bytes]
    );

    // A second compaction replaces the snapshot.
    store
        .write(update_batch(id, vec![change(6)], "v2", 6))
        .await
        .unwrap();
    store
        .compact(
            id,
            b"snapshot-2".to_vec(),
            vec![change(3).hash, change(4).hash, [0xEE; 32]],
        )
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.snapshot, Some(b"snapshot-2".to_vec()));
    assert_eq!(loaded.changes, vec![change(5).bytes, change(6).bytes]);
    assert_eq!(loaded.state, state("v2", 6, Some("writer")));

    // Compacting a missing document is NotFound and stores nothing.
    let missing = Uuid::new_v4();
    assert!(matches!(
        store.compact(missing, b"x".to_vec(), vec![]).await,
        Err(StoreError::NotFound(x)) if x == missing
    ));
    assert_eq!(store.load(missing).await.unwrap(), None);
}

#[tokio::test]
async fn idempotency_round_trip_and_purge() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    assert_eq!(store.idempotency("nope").await.unwrap(), None);
    let id = Uuid::new_v4();
    let mut batch = create_batch(id, vec![change(1)]);
    batch.idempotency = Some(record("old", 100));
    store.write(batch).await.unwrap();
    let mut batch = update_batch(id, vec![change(2)], "v2", 2);
    batch.idempotency = Some(record("new", 300));
    store.write(batch).await.unwrap();

    assert_eq!(
        store.idempotency("old").await.unwrap(),
        Some(record("old", 100))
    );
    assert_eq!(
        store.idempotency("new").await.unwrap(),
        Some(record("new", 300))
    );

    // A failed write stores no record.
    let mut bad = update_batch(Uuid::new_v4(), vec![], "v", 0);
    bad.idempotency = Some(record("bad", 100));
    assert!(store.write(bad).await.is_err());
    assert_eq!(store.idempotency("bad").await.unwrap(), None);

    assert_eq!(store.purge_idempotency(200).await.unwrap(), 1);
    assert_eq!(store.idempotency("old").await.unwrap(), None);
    assert_eq!(
        store.idempotency("new").await.unwrap(),
        Some(record("new", 300))
    );
    assert_eq!(store.purge_idempotency(200).await.unwrap(), 0);
    assert_eq!(store.purge_idempotency(301).await.unwrap(), 1);
    assert_eq!(store.idempotency("new").await.unwrap(), None);
}

#[tokio::test]
async fn create_of_existing_doc_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store
        .write(create_batch(id, vec![change(1)]))
        .await
        .unwrap();
    let mut again = create_batch(id, vec![change(2)]);
    again.idempotency = Some(record("dup", 1));
    assert!(matches!(
        store.write(again).await,
        Err(StoreError::AlreadyExists(x)) if x == id
    ));
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes]);
    assert_eq!(store.idempotency("dup").await.unwrap(), None);
}

#[tokio::test]
async fn changes_since_reads_the_log_and_survives_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store
        .write(create_batch(id, vec![change(1), change(2)]))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    let delta = store.changes_since(id, loaded.seq).await.unwrap().unwrap();
    assert!(delta.is_empty() && delta.seq == loaded.seq, "{delta:?}");

    store
        .write(update_batch(id, vec![change(2), change(3)], "v2", 3))
        .await
        .unwrap();
    let delta = store.changes_since(id, loaded.seq).await.unwrap().unwrap();
    assert_eq!(delta.changes, vec![change(3).bytes]);
    assert_eq!(delta.state, state("v2", 3, Some("writer")));
    let after_three = delta.seq;

    // Compacting every record, the highest one included: the next record still gets a
    // higher position, and a reader behind the compaction is handed the snapshot.
    store
        .compact(
            id,
            b"snap".to_vec(),
            vec![change(1).hash, change(2).hash, change(3).hash],
        )
        .await
        .unwrap();
    store
        .write(update_batch(id, vec![change(4)], "v3", 4))
        .await
        .unwrap();
    let behind = store.changes_since(id, loaded.seq).await.unwrap().unwrap();
    assert_eq!(behind.snapshot.as_deref(), Some(&b"snap"[..]));
    assert_eq!(behind.changes, vec![change(4).bytes]);
    assert!(behind.seq > after_three);
    let current = store.changes_since(id, after_three).await.unwrap().unwrap();
    assert_eq!(
        (current.snapshot, current.changes),
        (None, vec![change(4).bytes])
    );
    assert_eq!(store.load(id).await.unwrap().unwrap().seq, behind.seq);

    store.delete(id).await.unwrap();
    assert_eq!(store.changes_since(id, 0).await.unwrap(), None);
}

/// Each change's receipt is stored the first time the change is: a change stored again
/// (even after a compaction removed its record) keeps its first receipt, compaction keeps
/// them all, the log hands out those after a position, and a delete removes them.
#[tokio::test]
async fn receipts_are_kept_beside_their_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store
        .write(create_batch(id, vec![change(1), change(2)]))
        .await
        .unwrap();
    let mut again = change(2);
    again.receipt = Some(receipt("someone-else", 99));
    store
        .write(update_batch(id, vec![again.clone(), change(3)], "v2", 3))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(senders(&loaded.receipts), ["agent-1", "agent-2", "agent-3"]);
    assert_eq!(loaded.receipts[1], (change(2).hash, receipt("agent-2", 2)));
    let after_first = store.changes_since(id, 1).await.unwrap().unwrap();
    assert_eq!(senders(&after_first.receipts), ["agent-2", "agent-3"]);

    store
        .compact(id, b"snap".to_vec(), vec![change(1).hash, change(2).hash])
        .await
        .unwrap();
    // Stored again after its record went into the snapshot: still its first receipt.
    store
        .write(update_batch(id, vec![again], "v3", 3))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(senders(&loaded.receipts), ["agent-1", "agent-2", "agent-3"]);
    assert_eq!(loaded.receipts[1].1, receipt("agent-2", 2));
    let behind = store.changes_since(id, 1).await.unwrap().unwrap();
    assert!(behind.snapshot.is_some());
    assert_eq!(senders(&behind.receipts), ["agent-2", "agent-3"]);

    drop(store);
    let store = SqliteStore::open(dir.path()).unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(senders(&loaded.receipts), ["agent-1", "agent-2", "agent-3"]);
    assert!(store.delete(id).await.unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let left: i64 = conn
        .query_row("SELECT COUNT(*) FROM receipts", [], |row| row.get(0))
        .unwrap();
    assert_eq!(left, 0);
}
