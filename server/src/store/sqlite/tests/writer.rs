//! The writer thread and its queue: failures isolated in savepoints, a group that fails
//! as a whole, grouping under concurrent load, shutdown, checked writes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_write_does_not_affect_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let docs: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    for id in &docs {
        store.write(create_batch(*id, vec![])).await.unwrap();
    }
    let existing = docs[0];

    let mut tasks = Vec::new();
    for i in 0..48u8 {
        let store = Arc::clone(&store);
        let docs = docs.clone();
        tasks.push(tokio::spawn(async move {
            let batch = match i % 3 {
                // A valid write.
                0 => update_batch(docs[usize::from(i) % docs.len()], vec![change(i)], "v", 1),
                // A write to a missing document.
                1 => update_batch(Uuid::new_v4(), vec![change(i)], "v", 1),
                // A create of an existing document.
                _ => create_batch(existing, vec![change(i)]),
            };
            (i, store.write(batch).await)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match i % 3 {
            0 => assert!(result.is_ok(), "{i}: {result:?}"),
            1 => assert!(
                matches!(result, Err(StoreError::NotFound(_))),
                "{i}: {result:?}"
            ),
            _ => assert!(
                matches!(result, Err(StoreError::AlreadyExists(x)) if x == existing),
                "{i}: {result:?}"
            ),
        }
    }
    // Exactly the valid writes' changes are stored.
    let mut stored = 0;
    for id in &docs {
        let loaded = store.load(*id).await.unwrap().unwrap();
        for bytes in &loaded.changes {
            assert_eq!(bytes[0] % 3, 0, "a refused write left change {}", bytes[0]);
        }
        stored += loaded.changes.len();
    }
    assert_eq!(stored, 16);
    assert_eq!(store.list().await.unwrap().len(), docs.len());
}

/// Runs the jobs queued so far as groups on `conn`, as the writer thread would.
fn drain(queue: &Queue, jobs: queue::Jobs, conn: Connection) -> GroupCounters {
    queue.close();
    let counters = GroupCounters::default();
    let mut writer = SqliteWriter { conn };
    queue::block_on(queue::serve(&mut writer, jobs, &counters));
    counters
}

/// Queues one group before its writer runs, so its composition is fixed: the failing
/// operations are rolled back alone and answered their own errors, the others commit
/// together.
#[tokio::test]
async fn one_group_isolates_failures_in_savepoints() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let a = Uuid::new_v4();
    store.write(create_batch(a, vec![])).await.unwrap();
    let b = Uuid::new_v4();
    let missing = Uuid::new_v4();

    let mut bad = update_batch(missing, vec![change(2)], "v", 1);
    bad.idempotency = Some(record("bad", 1));
    let mut good = update_batch(a, vec![change(1)], "v2", 1);
    good.idempotency = Some(record("good", 1));
    let (queue, jobs) = Queue::new("the writer thread");
    let good = queue.write(good, Expect::default());
    let bad = queue.write(bad, Expect::default());
    let again = queue.write(create_batch(a, vec![change(3)]), Expect::default());
    let created = queue.write(create_batch(b, vec![change(4)]), Expect::default());
    let compacted = queue.compact(missing, vec![1], vec![], None);
    let deleted = queue.delete(missing);
    let counters = drain(
        &queue,
        jobs,
        open_connection(&dir.path().join(DB_FILE)).unwrap(),
    );

    assert!(matches!(good.await, Ok(Ok(()))));
    assert!(matches!(bad.await, Err(StoreError::NotFound(x)) if x == missing));
    assert!(matches!(again.await, Err(StoreError::AlreadyExists(x)) if x == a));
    assert!(matches!(created.await, Ok(Ok(()))));
    assert!(matches!(compacted.await, Err(StoreError::NotFound(x)) if x == missing));
    assert!(!deleted.await.unwrap());
    assert_eq!((counters.commits(), counters.batches()), (1, 3));

    let loaded = store.load(a).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes]);
    assert_eq!(loaded.state, state("v2", 1, Some("writer")));
    assert_eq!(
        store.load(b).await.unwrap().unwrap().changes,
        vec![change(4).bytes]
    );
    assert_eq!(store.load(missing).await.unwrap(), None);
    assert!(store.idempotency("good").await.unwrap().is_some());
    assert_eq!(store.idempotency("bad").await.unwrap(), None);
}

/// A group whose transaction cannot run answers every waiter `Backend`, stores nothing.
#[tokio::test]
async fn failed_group_answers_everyone_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let a = Uuid::new_v4();
    store.write(create_batch(a, vec![])).await.unwrap();

    // Another connection holds the write lock; ours does not wait for it.
    let path = dir.path().join(DB_FILE);
    let blocker = Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::ZERO).unwrap();

    let (queue, jobs) = Queue::new("the writer thread");
    let answers = [
        queue.write(update_batch(a, vec![change(1)], "v2", 1), Expect::default()),
        queue.write(
            update_batch(Uuid::new_v4(), vec![], "v", 0),
            Expect::default(),
        ),
    ];
    let counters = drain(&queue, jobs, conn);
    for answer in answers {
        let result = answer.await;
        assert!(
            matches!(&result, Err(StoreError::Backend(m)) if m.contains("nothing stored")),
            "{result:?}"
        );
    }
    assert_eq!(counters.commits(), 0);
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(store.load(a).await.unwrap().unwrap().changes.is_empty());
}

/// A COMMIT that fails stores nothing and answers every waiter `Backend`: here a
/// deferred foreign key, checked only at COMMIT, fails it.
#[tokio::test]
async fn failed_commit_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let a = Uuid::new_v4();
    store.write(create_batch(a, vec![])).await.unwrap();
    let path = dir.path().join(DB_FILE);
    let conn = open_connection(&path).unwrap();
    conn.execute_batch(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE guard (doc TEXT REFERENCES docs (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER guard_writes AFTER UPDATE ON docs
             BEGIN INSERT INTO guard VALUES ('no such document'); END;",
    )
    .unwrap();

    let (queue, jobs) = Queue::new("the writer thread");
    let b = Uuid::new_v4();
    let answers = [
        queue.write(update_batch(a, vec![change(1)], "v2", 1), Expect::default()),
        queue.write(create_batch(b, vec![change(2)]), Expect::default()),
    ];
    let counters = drain(&queue, jobs, conn);
    for answer in answers {
        let result = answer.await;
        assert!(
            matches!(&result, Err(StoreError::Backend(m))
                if m.contains("nothing stored") && m.contains("commit")),
            "{result:?}"
        );
    }
    assert_eq!((counters.commits(), counters.batches()), (0, 0));
    assert!(store.load(a).await.unwrap().unwrap().changes.is_empty());
    assert_eq!(store.load(b).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let id = Uuid::new_v4();
            store
                .write(create_batch(id, vec![change(i)]))
                .await
                .map(|()| (id, i))
        }));
    }
    let mut written = Vec::new();
    for task in tasks {
        written.push(task.await.unwrap().unwrap());
    }
    let stats = store.stats();
    assert_eq!(stats.batches, 64);
    assert!(
        stats.commits >= 1 && stats.commits <= stats.batches,
        "{stats:?}"
    );
    for (id, i) in written {
        let loaded = store.load(id).await.unwrap().unwrap();
        assert_eq!(loaded.changes, vec![change(i).bytes]);
    }
    assert_eq!(store.list().await.unwrap().len(), 64);
}

#[tokio::test]
async fn close_commits_queued_writes_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let id = Uuid::new_v4();
    store.write(create_batch(id, vec![])).await.unwrap();
    store.close();
    store.close();
    let result = store
        .write(update_batch(id, vec![change(1)], "v2", 1))
        .await;
    assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
    assert!(matches!(
        store.delete(id).await,
        Err(StoreError::Backend(_))
    ));
    // Reads still work, and see only what was acknowledged.
    assert!(store.load(id).await.unwrap().unwrap().changes.is_empty());
}

#[tokio::test]
async fn checked_writes_compare_and_set_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let id = Uuid::new_v4();
    store.write(create_batch(id, vec![])).await.unwrap();
    let expect = |version: &str| Expect {
        version: Some(version.into()),
        lease: None,
    };
    let first = store
        .write_checked(update_batch(id, vec![change(1)], "v2", 1), expect("v1"))
        .await;
    assert_eq!(first.unwrap(), Ok(()));
    let mut stale = update_batch(id, vec![change(2)], "v3", 2);
    stale.idempotency = Some(record("stale", 1));
    let second = store.write_checked(stale, expect("v1")).await;
    assert_eq!(
        second.unwrap(),
        Err(Refusal::Stale {
            current: "v2".into()
        })
    );
    // Nothing of the refused batch was stored, and it was not counted.
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes]);
    assert_eq!(store.idempotency("stale").await.unwrap(), None);
    assert_eq!(store.stats().batches, 2);
    // Leases are the node's business here.
    let fenced = store
        .write_checked(
            update_batch(id, vec![], "v2", 1),
            Expect {
                version: None,
                lease: Some(1),
            },
        )
        .await;
    assert_eq!(fenced.unwrap(), Err(Refusal::Fenced { newest: None }));
    assert!(!store.shared());
}
