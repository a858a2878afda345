//! Opening the file: connections, WAL with `synchronous=FULL`, and the schema migrations
//! (`PRAGMA user_version`).

use std::path::Path;

use concord_core::storage::StoreError;
use rusqlite::{Connection, TransactionBehavior};

use super::{file_err, BUSY_TIMEOUT};

/// The schema migrations, in order: migration `i + 1` is `MIGRATIONS[i]`, and
/// `PRAGMA user_version` holds how many have been applied.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the initial tables.
    "CREATE TABLE docs (
        id            TEXT PRIMARY KEY NOT NULL,
        seq           INTEGER NOT NULL UNIQUE,
        strategy      TEXT NOT NULL,
        schema        TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        version       TEXT NOT NULL,
        change_count  INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        last_agent    TEXT
    );
    CREATE TABLE changes (
        seq   INTEGER PRIMARY KEY,
        doc   TEXT NOT NULL,
        hash  BLOB NOT NULL,
        bytes BLOB NOT NULL,
        UNIQUE (doc, hash)
    );
    CREATE TABLE snapshots (
        doc   TEXT PRIMARY KEY NOT NULL,
        bytes BLOB NOT NULL
    );
    CREATE TABLE idempotency (
        key           TEXT PRIMARY KEY NOT NULL,
        fingerprint   TEXT NOT NULL,
        status        INTEGER NOT NULL,
        headers       TEXT NOT NULL,
        body          BLOB NOT NULL,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created_at_ms);",
    // 2: log positions that are never reused (a compaction may delete the highest rowid,
    // which plain rowids would then hand out again), an index to read a document's log in
    // order, and how far each snapshot reaches.
    "CREATE TABLE changes_log (
        seq   INTEGER PRIMARY KEY AUTOINCREMENT,
        doc   TEXT NOT NULL,
        hash  BLOB NOT NULL,
        bytes BLOB NOT NULL,
        UNIQUE (doc, hash)
    );
    INSERT INTO changes_log (seq, doc, hash, bytes) SELECT seq, doc, hash, bytes FROM changes;
    DROP TABLE changes;
    ALTER TABLE changes_log RENAME TO changes;
    CREATE INDEX changes_doc_seq ON changes (doc, seq);
    ALTER TABLE snapshots ADD COLUMN covers_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE snapshots SET covers_seq = (SELECT COALESCE(MAX(seq), 0) FROM changes);",
    // 3: who the server received each change from, and when (`seq`: the change's log
    // position), kept when a snapshot replaces the change's record. Changes stored before
    // have none: their history shows what their notes claim.
    "CREATE TABLE receipts (
        doc   TEXT NOT NULL,
        hash  BLOB NOT NULL,
        seq   INTEGER NOT NULL,
        agent TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        PRIMARY KEY (doc, hash)
    );
    CREATE INDEX receipts_doc_seq ON receipts (doc, seq);",
];

pub(super) fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(file_err(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(file_err(path, "set busy timeout"))?;
    Ok(conn)
}

pub(super) fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    // The first statement that reads the file: a foreign file fails here.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(file_err(path, "enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(
            path = %path.display(),
            mode,
            "SQLite refused WAL mode; writes stay durable but readers may wait for the writer"
        );
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(file_err(path, "set synchronous=FULL"))?;
    Ok(())
}

/// Applies the migrations `user_version` says are missing, in one transaction that also
/// reads the version (so two processes opening a new file at once cannot both migrate).
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let latest = MIGRATIONS.len();
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(file_err(path, "begin migration"))?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(file_err(path, "read schema version"))?;
    let version = usize::try_from(version).map_err(|_| {
        StoreError::Corrupt(format!(
            "{}: negative schema version {version}",
            path.display()
        ))
    })?;
    if version > latest {
        return Err(StoreError::Backend(format!(
            "{}: schema version {version} is newer than this build supports ({latest})",
            path.display()
        )));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(migration)
            .map_err(file_err(path, &format!("apply migration {}", i + 1)))?;
        tracing::info!(path = %path.display(), migration = i + 1, "applied sqlite migration");
    }
    if version < latest {
        tx.pragma_update(None, "user_version", latest as i64)
            .map_err(file_err(path, "set schema version"))?;
    }
    tx.commit().map_err(file_err(path, "commit migration"))?;
    Ok(())
}
