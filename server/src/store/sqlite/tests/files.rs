//! Files that are not a store, damaged rows, and files of older and newer schema versions.

use super::*;

#[test]
fn garbage_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStore::open(dir.path()).unwrap_err();
    match &err {
        StoreError::Corrupt(msg) | StoreError::Backend(msg) => {
            assert!(msg.contains(DB_FILE), "{msg}")
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    // The file is left as it was.
    assert_eq!(std::fs::read(&path).unwrap(), garbage);

    // A short text file too.
    std::fs::write(&path, b"hello, not a database").unwrap();
    assert!(SqliteStore::open(dir.path()).is_err());
}

#[test]
fn folder_that_is_a_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"x").unwrap();
    assert!(matches!(
        SqliteStore::open(&file),
        Err(StoreError::Backend(_))
    ));
}

#[tokio::test]
async fn corrupt_rows_are_reported_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    store.write(create_batch(a, vec![])).await.unwrap();
    store.write(create_batch(b, vec![])).await.unwrap();
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.execute(
        "UPDATE docs SET strategy = 'nonsense' WHERE id = ?1",
        params![a.to_string()],
    )
    .unwrap();
    conn.execute(
        "UPDATE docs SET schema = '{not json' WHERE id = ?1",
        params![b.to_string()],
    )
    .unwrap();
    assert!(matches!(store.load(a).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.load(b).await, Err(StoreError::Corrupt(_))));
    assert!(matches!(store.list().await, Err(StoreError::Corrupt(_))));
}

/// A file written before migration 2 opens with its data intact and its log positions
/// kept.
#[tokio::test]
async fn version_one_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let id = Uuid::new_v4();
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute(
            "INSERT INTO docs VALUES (?1, 1, 'crdt', '{}', 5, 'v', 2, 6, NULL)",
            params![id.to_string()],
        )
        .unwrap();
        for n in [1u8, 2] {
            conn.execute(
                "INSERT INTO changes (doc, hash, bytes) VALUES (?1, ?2, ?3)",
                params![id.to_string(), &change(n).hash[..], change(n).bytes],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO snapshots (doc, bytes) VALUES (?1, x'00')",
            params![id.to_string()],
        )
        .unwrap();
    }
    let store = SqliteStore::open(dir.path()).unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(loaded.changes, vec![change(1).bytes, change(2).bytes]);
    assert_eq!(loaded.snapshot, Some(vec![0]));
    assert_eq!(loaded.seq, 2);
    // Its changes predate receipts: they have none (history falls back to their notes),
    // and new ones get theirs.
    assert!(loaded.receipts.is_empty());
    store
        .write(update_batch(id, vec![change(3)], "v2", 3))
        .await
        .unwrap();
    let loaded = store.load(id).await.unwrap().unwrap();
    assert_eq!(senders(&loaded.receipts), ["agent-3"]);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
}

#[test]
fn newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(SqliteStore::open(dir.path()).unwrap());
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Backend(m) if m.contains("99")),
        "{err:?}"
    );
}
