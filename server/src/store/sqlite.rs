//! The embedded durable backend: a [`Store`] kept in one SQLite file.
//!
//! # Layout
//! The store lives in `DIR/concord.sqlite3` (plus SQLite's `-wal` and `-shm` files). Four
//! tables hold it:
//! - `docs`: one row per document: creation-time facts (strategy, schema as JSON, creation
//!   time), the state after the last write (version, change count, last write time and
//!   agent), and `seq`, the creation order used by [`Store::list`].
//! - `changes`: the Automerge changes of every document, keyed by `(doc, hash)` so that
//!   storing a change twice is harmless (`INSERT OR IGNORE`); an integer `seq`
//!   (`AUTOINCREMENT`, so never reused) keeps the order in which they were stored: the log
//!   position of [`Store::changes_since`].
//! - `snapshots`: at most one saved document per document, written by [`Store::compact`],
//!   which also deletes the changes the snapshot covers; `covers_seq` is the highest log
//!   position among them.
//! - `idempotency`: the recorded response of each request made with an `Idempotency-Key`.
//!
//! The schema is versioned with `PRAGMA user_version`; [`SqliteStore::open`] applies the
//! migrations a file lacks, in one transaction.
//!
//! # Durability and group commit
//! The database runs in WAL mode with `synchronous=FULL`: every `COMMIT` appends to the
//! write-ahead log and fsyncs it before returning, so a committed transaction survives a
//! crash or power loss.
//!
//! One dedicated writer thread owns the only write connection and runs the store's
//! group-commit queue (`store::queue`): every mutation ([`Store::write`], [`Store::delete`],
//! [`Store::compact`], [`Store::purge_idempotency`]) is queued in the calling thread, the
//! writer runs every operation queued at that moment (up to [`MAX_GROUP`]) in ONE
//! transaction (`BEGIN IMMEDIATE`), each in its own savepoint, in the order they were
//! queued, and answers the waiters only after `COMMIT` has returned. An operation that fails
//! (a write to a missing document, a create of an existing one, ...) is rolled back alone
//! and gets its own error; if the group fails as a whole (its `COMMIT`, say), every waiter
//! is answered [`StoreError::Backend`] and nothing of it is stored. So an `Ok` always means
//! "on disk", and under concurrent load many writes share one fsync; see
//! [`SqliteStore::stats`].
//!
//! Reads ([`Store::load`], [`Store::list`], [`Store::idempotency`]) use a small pool of
//! separate read-only connections on blocking threads; WAL lets them run while the writer
//! commits, and each read sees one consistent committed state.
//!
//! # Shutdown
//! [`SqliteStore::close`] (also run on drop) closes the queue and waits for the writer
//! thread: every operation queued before is committed and answered first. An operation
//! submitted after `close` is refused with [`StoreError::Backend`]; none is silently dropped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use concord_core::schema::Schema;
use concord_core::storage::{
    Checked, Delta, DocMeta, DocState, DocSummary, Expect, IdempotencyRecord, LoadedDoc, Refusal,
    Store, StoreError, WriteBatch,
};
use concord_core::strategy::Strategy;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, TransactionBehavior};
use uuid::Uuid;

use super::queue::{self, Compaction, GroupCounters, GroupError, Queue, Writer};

/// The name of the database file inside the store's folder.
pub const DB_FILE: &str = "concord.sqlite3";

/// The most operations the writer thread commits in one transaction.
pub const MAX_GROUP: usize = 1024;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many read connections the store keeps.
const READERS: usize = 4;

/// The schema migrations, in order: migration `i + 1` is `MIGRATIONS[i]`, and
/// `PRAGMA user_version` holds how many have been applied.
const MIGRATIONS: &[&str] = &[
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
];

/// Counters of the writer thread, for benchmarks: `commits / batches` is the number of
/// fsyncs per acknowledged operation (1.0 without grouping, less under concurrent load).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Transactions committed (each one fsync of the write-ahead log).
    pub commits: u64,
    /// Operations (writes, deletes, compactions, purges) answered `Ok` after their group
    /// committed. A group in which every operation failed is rolled back, not committed, so
    /// `commits <= batches` always holds.
    pub batches: u64,
}

/// A pool of read connections; a read takes a free one, or waits for one in turn.
struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl Readers {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        for conn in &self.conns {
            if let Ok(mut guard) = conn.try_lock() {
                return f(&mut guard);
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
        // A reader that panicked leaves a usable connection (its transaction is rolled
        // back when the `Transaction` guard drops), so a poisoned lock is still usable.
        let mut guard = self.conns[i].lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }
}

/// A [`Store`] in one SQLite file, with group commit. See the [module docs](self).
pub struct SqliteStore {
    path: PathBuf,
    queue: Queue,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Arc<Readers>,
    counters: Arc<GroupCounters>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the store in `dir` (created if missing): opens or creates `dir/concord.sqlite3`,
    /// switches it to WAL with `synchronous=FULL`, applies missing schema migrations and
    /// starts the writer thread.
    ///
    /// A file that is not a SQLite database gives [`StoreError::Corrupt`] naming it; a file
    /// written by a newer version (a higher schema version) gives [`StoreError::Backend`].
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!("cannot create store folder {}: {e}", dir.display()))
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = open_connection(&path)?;
        configure_writer(&conn, &path)?;
        migrate(&mut conn, &path)?;

        let mut conns = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let reader = open_connection(&path)?;
            reader
                .pragma_update(None, "query_only", true)
                .map_err(file_err(&path, "configure read connection"))?;
            conns.push(Mutex::new(reader));
        }

        let counters = Arc::new(GroupCounters::default());
        let (queue, jobs) = Queue::new("the writer thread");
        let writer = {
            let counters = Arc::clone(&counters);
            let mut writer = SqliteWriter { conn };
            std::thread::Builder::new()
                .name("concord-sqlite-writer".into())
                .spawn(move || queue::block_on(queue::serve(&mut writer, jobs, &counters)))
                .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?
        };
        tracing::info!(path = %path.display(), "opened sqlite store");
        Ok(SqliteStore {
            path,
            queue,
            writer: Mutex::new(Some(writer)),
            readers: Arc::new(Readers {
                conns,
                next: AtomicUsize::new(0),
            }),
            counters,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many transactions the writer committed and how many operations they carried.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.counters.commits(),
            batches: self.counters.batches(),
        }
    }

    /// Stops accepting operations, then blocks until the writer thread has committed and
    /// answered every operation queued before, and exits. Later operations are refused with
    /// [`StoreError::Backend`]; reads keep working. Idempotent; also run on drop.
    ///
    /// This blocks the calling thread for up to one group commit; from async code, prefer
    /// calling it through `tokio::task::spawn_blocking` or dropping the store there.
    pub fn close(&self) {
        // The writer answers what is queued, then `serve` returns and the thread exits.
        self.queue.close();
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "sqlite writer thread panicked");
            }
        }
    }

    /// Runs a read on a pooled read connection, on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || readers.with(f))
            .await
            .map_err(|e| StoreError::Backend(format!("{what} failed: read task ended: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked {
        self.queue.write(batch, expect)
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        self.read("load", move |conn| load_doc(conn, id)).await
    }

    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
        self.read("changes_since", move |conn| changes_since(conn, id, since))
            .await
    }

    async fn list(&self) -> Result<Vec<DocSummary>, StoreError> {
        self.read("list", list_docs).await
    }

    async fn delete(&self, id: Uuid) -> Result<bool, StoreError> {
        self.queue.delete(id).await
    }

    async fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let compaction = Compaction {
            id,
            snapshot,
            covered,
            synced: None,
        };
        self.queue.compact(compaction).await.map(|_| ())
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        self.read("idempotency", move |conn| load_idempotency(conn, &key))
            .await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.queue.purge(before_ms).await
    }
}

// ---------------------------------------------------------------------------------------
// Errors

/// Maps a SQLite error of `what` into a [`StoreError`]: a damaged or foreign file is
/// `Corrupt`, a value of the wrong type in a row is `Corrupt`, anything else `Backend`.
fn sql_err(what: &str, e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) =>
        {
            StoreError::Corrupt(format!("{what}: {e}"))
        }
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => {
            StoreError::Corrupt(format!("{what}: unexpected stored value: {e}"))
        }
        _ => StoreError::Backend(format!("{what}: {e}")),
    }
}

/// `map_err` adapter for [`sql_err`].
fn sql(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| sql_err(what, e)
}

/// `map_err` adapter for [`sql_err`] that names the database file.
fn file_err<'a>(path: &'a Path, what: &'a str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |e| match sql_err(&format!("{}: {what}", path.display()), e) {
        StoreError::Corrupt(msg) => {
            StoreError::Corrupt(format!("{msg} (is this a Concord SQLite store?)"))
        }
        other => other,
    }
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

// ---------------------------------------------------------------------------------------
// Opening

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(file_err(path, "open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(file_err(path, "set busy timeout"))?;
    Ok(conn)
}

fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreError> {
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
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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

// ---------------------------------------------------------------------------------------
// The writer thread

/// The writer thread's end of the store: the only write connection, driven by the queue.
struct SqliteWriter {
    conn: Connection,
}

impl Writer for SqliteWriter {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn max_group(&self) -> usize {
        MAX_GROUP
    }

    /// One writer locks the whole file: no order to keep but the queue's.
    fn in_document_order(&self) -> bool {
        false
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        // IMMEDIATE: the write lock is taken here, not at the first write.
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(sql("begin group transaction"))
    }

    async fn execute(&mut self, statement: &'static str) -> Result<(), StoreError> {
        self.conn.execute_batch(statement).map_err(sql(statement))
    }

    async fn write(
        &mut self,
        batch: &WriteBatch,
        expect: &Expect,
    ) -> Result<Result<(), Refusal>, StoreError> {
        if let Some(refusal) = check(&self.conn, batch, expect)? {
            return Ok(Err(refusal));
        }
        apply_write(&self.conn, batch).map(Ok)
    }

    async fn delete(&mut self, id: Uuid) -> Result<bool, StoreError> {
        apply_delete(&self.conn, id)
    }

    async fn compact(&mut self, compaction: &Compaction) -> Result<bool, StoreError> {
        // One node writes this store: no other node's snapshot can be newer.
        apply_compact(
            &self.conn,
            compaction.id,
            &compaction.snapshot,
            &compaction.covered,
        )
        .map(|()| true)
    }

    async fn purge(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.conn
            .prepare_cached("DELETE FROM idempotency WHERE created_at_ms < ?1")
            .and_then(|mut stmt| stmt.execute(params![before_ms]))
            .map(|n| n as u64)
            .map_err(sql("purge idempotency records"))
    }

    async fn commit(&mut self) -> Result<(), GroupError> {
        // A COMMIT that fails stores nothing: SQLite rolls the transaction back (or leaves
        // it open, and the queue rolls it back).
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| GroupError::NothingStored(sql_err("commit group transaction", e)))
    }
}

fn count_to_sql(count: u64) -> Result<i64, StoreError> {
    i64::try_from(count)
        .map_err(|_| StoreError::Backend(format!("change count {count} does not fit in SQLite")))
}

fn doc_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM docs WHERE id = ?1")
        .and_then(|mut stmt| stmt.exists(params![id]))
        .map_err(sql("look up document"))
}

/// Why a checked write must not be stored, if it must not. One node writes this store, so
/// the version check only fails after an earlier write of the document failed; leases are
/// kept by the node, so a lease condition never holds here. (The registry asks for checks
/// only on a shared store, so the server's own writes come with `Expect::default()` and
/// pass without a query; the check keeps [`Store::write_checked`]'s contract for any other
/// caller.)
fn check(
    conn: &Connection,
    batch: &WriteBatch,
    expect: &Expect,
) -> Result<Option<Refusal>, StoreError> {
    if let Some(expected) = &expect.version {
        let current: Option<String> = conn
            .prepare_cached("SELECT version FROM docs WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![batch.doc.to_string()], |row| row.get(0))
                    .optional()
            })
            .map_err(sql("read document version"))?;
        match current {
            None => return Err(StoreError::NotFound(batch.doc)),
            Some(current) if current != *expected => return Ok(Some(Refusal::Stale { current })),
            Some(_) => {}
        }
    }
    if expect.lease.is_some() {
        return Ok(Some(Refusal::Fenced { newest: None }));
    }
    Ok(None)
}

fn apply_write(conn: &Connection, batch: &WriteBatch) -> Result<(), StoreError> {
    let id = batch.doc.to_string();
    let state = &batch.state;
    let change_count = count_to_sql(state.change_count)?;
    if let Some(meta) = &batch.create {
        if meta.id != batch.doc {
            return Err(StoreError::Backend(format!(
                "write batch for {} creates a document with id {}",
                batch.doc, meta.id
            )));
        }
        if doc_exists(conn, &id)? {
            return Err(StoreError::AlreadyExists(batch.doc));
        }
        let schema = serde_json::to_string(&meta.schema)
            .map_err(|e| StoreError::Backend(format!("cannot encode schema of {id}: {e}")))?;
        conn.prepare_cached(
            "INSERT INTO docs (id, seq, strategy, schema, created_at_ms,
                               version, change_count, updated_at_ms, last_agent)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM docs), ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                id,
                meta.strategy.as_str(),
                schema,
                meta.created_at_ms,
                state.version,
                change_count,
                state.updated_at_ms,
                state.last_agent,
            ])
        })
        .map_err(sql("insert document"))?;
    } else {
        let updated = conn
            .prepare_cached(
                "UPDATE docs SET version = ?2, change_count = ?3, updated_at_ms = ?4,
                                 last_agent = ?5
                 WHERE id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id,
                    state.version,
                    change_count,
                    state.updated_at_ms,
                    state.last_agent,
                ])
            })
            .map_err(sql("update document state"))?;
        if updated == 0 {
            return Err(StoreError::NotFound(batch.doc));
        }
    }

    if !batch.changes.is_empty() {
        let mut stmt = conn
            .prepare_cached("INSERT OR IGNORE INTO changes (doc, hash, bytes) VALUES (?1, ?2, ?3)")
            .map_err(sql("prepare change insert"))?;
        for change in &batch.changes {
            stmt.execute(params![id, &change.hash[..], change.bytes])
                .map_err(sql("insert change"))?;
        }
    }

    if let Some(record) = &batch.idempotency {
        let headers = serde_json::to_string(&record.headers).map_err(|e| {
            StoreError::Backend(format!("cannot encode headers of idempotency record: {e}"))
        })?;
        conn.prepare_cached(
            "INSERT OR REPLACE INTO idempotency
                 (key, fingerprint, status, headers, body, created_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                record.key,
                record.fingerprint,
                record.status,
                headers,
                record.body,
                record.created_at_ms,
            ])
        })
        .map_err(sql("insert idempotency record"))?;
    }
    Ok(())
}

fn apply_delete(conn: &Connection, id: Uuid) -> Result<bool, StoreError> {
    let id = id.to_string();
    let mut removed = 0;
    for (sql_text, what) in [
        ("DELETE FROM docs WHERE id = ?1", "delete document"),
        ("DELETE FROM changes WHERE doc = ?1", "delete changes"),
        ("DELETE FROM snapshots WHERE doc = ?1", "delete snapshot"),
    ] {
        removed += conn
            .prepare_cached(sql_text)
            .and_then(|mut stmt| stmt.execute(params![id]))
            .map_err(|e| sql_err(what, e))?;
    }
    Ok(removed > 0)
}

fn apply_compact(
    conn: &Connection,
    id: Uuid,
    snapshot: &[u8],
    covered: &[[u8; 32]],
) -> Result<(), StoreError> {
    let doc = id.to_string();
    if !doc_exists(conn, &doc)? {
        return Err(StoreError::NotFound(id));
    }
    let mut covers: i64 = 0;
    {
        let mut stmt = conn
            .prepare_cached("DELETE FROM changes WHERE doc = ?1 AND hash = ?2 RETURNING seq")
            .map_err(sql("prepare covered change delete"))?;
        for hash in covered {
            let seq: Option<i64> = stmt
                .query_row(params![doc, &hash[..]], |row| row.get(0))
                .optional()
                .map_err(sql("delete covered change"))?;
            covers = covers.max(seq.unwrap_or(0));
        }
    }
    conn.prepare_cached(
        "INSERT INTO snapshots (doc, bytes, covers_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes,
             covers_seq = MAX(snapshots.covers_seq, excluded.covers_seq)",
    )
    .and_then(|mut stmt| stmt.execute(params![doc, snapshot, covers]))
    .map_err(sql("store snapshot"))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reads

/// A `docs` row as stored, before its text columns are parsed.
struct RawDoc {
    id: String,
    strategy: String,
    schema: String,
    created_at_ms: i64,
    version: String,
    change_count: i64,
    updated_at_ms: i64,
    last_agent: Option<String>,
}

const DOC_COLUMNS: &str = "id, strategy, schema, created_at_ms, version, change_count, \
                           updated_at_ms, last_agent";

impl RawDoc {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawDoc> {
        Ok(RawDoc {
            id: row.get(0)?,
            strategy: row.get(1)?,
            schema: row.get(2)?,
            created_at_ms: row.get(3)?,
            version: row.get(4)?,
            change_count: row.get(5)?,
            updated_at_ms: row.get(6)?,
            last_agent: row.get(7)?,
        })
    }

    fn parse(self) -> Result<DocSummary, StoreError> {
        let id = Uuid::parse_str(&self.id)
            .map_err(|e| corrupt(format_args!("document id {:?}: {e}", self.id)))?;
        let strategy: Strategy = self
            .strategy
            .parse()
            .map_err(|e| corrupt(format_args!("strategy of document {id}: {e}")))?;
        let schema: Schema = serde_json::from_str(&self.schema)
            .map_err(|e| corrupt(format_args!("schema of document {id}: {e}")))?;
        let change_count = u64::try_from(self.change_count).map_err(|_| {
            corrupt(format_args!(
                "change count of document {id} is negative ({})",
                self.change_count
            ))
        })?;
        Ok(DocSummary {
            meta: DocMeta {
                id,
                strategy,
                schema,
                created_at_ms: self.created_at_ms,
            },
            state: DocState {
                version: self.version,
                change_count,
                updated_at_ms: self.updated_at_ms,
                last_agent: self.last_agent,
            },
        })
    }
}

fn load_doc(conn: &mut Connection, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
    let doc = id.to_string();
    // One read transaction: the row, snapshot and changes come from the same commit, so a
    // concurrent compaction is seen entirely or not at all.
    let tx = conn.transaction().map_err(sql("begin load"))?;
    let raw = tx
        .prepare_cached(&format!("SELECT {DOC_COLUMNS} FROM docs WHERE id = ?1"))
        .and_then(|mut stmt| stmt.query_row(params![doc], RawDoc::from_row).optional())
        .map_err(sql("load document row"))?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let summary = raw.parse()?;
    let snapshot: Option<(Vec<u8>, i64)> = tx
        .prepare_cached("SELECT bytes, covers_seq FROM snapshots WHERE doc = ?1")
        .and_then(|mut stmt| {
            stmt.query_row(params![doc], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(sql("load snapshot"))?;
    let changes = log_after(&tx, &doc, 0)?;
    tx.finish().map_err(sql("end load"))?;
    let covers = snapshot.as_ref().map_or(0, |(_, covers)| *covers);
    let seq = changes.iter().map(|(seq, _)| *seq).fold(covers, i64::max);
    Ok(Some(LoadedDoc {
        meta: summary.meta,
        state: summary.state,
        snapshot: snapshot.map(|(bytes, _)| bytes),
        changes: changes.into_iter().map(|(_, bytes)| bytes).collect(),
        seq: position(seq)?,
    }))
}

/// A document's change records after log position `since`, in order.
fn log_after(conn: &Connection, doc: &str, since: i64) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
    conn.prepare_cached("SELECT seq, bytes FROM changes WHERE doc = ?1 AND seq > ?2 ORDER BY seq")
        .and_then(|mut stmt| {
            stmt.query_map(params![doc, since], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql("load changes"))
}

fn position(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| corrupt(format_args!("negative log position {seq}")))
}

fn changes_since(conn: &mut Connection, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
    let doc = id.to_string();
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    // One read transaction, as for a load.
    let tx = conn.transaction().map_err(sql("begin changes_since"))?;
    let raw = tx
        .prepare_cached(&format!("SELECT {DOC_COLUMNS} FROM docs WHERE id = ?1"))
        .and_then(|mut stmt| stmt.query_row(params![doc], RawDoc::from_row).optional())
        .map_err(sql("load document row"))?;
    let Some(raw) = raw else {
        return Ok(None);
    };
    let state = raw.parse()?.state;
    let snapshot: Option<(Vec<u8>, i64)> = tx
        .prepare_cached(
            "SELECT bytes, covers_seq FROM snapshots WHERE doc = ?1 AND covers_seq > ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![doc, since], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()
        })
        .map_err(sql("load snapshot"))?;
    let changes = log_after(&tx, &doc, since)?;
    tx.finish().map_err(sql("end changes_since"))?;
    let covers = snapshot.as_ref().map_or(since, |(_, covers)| *covers);
    let seq = changes
        .iter()
        .map(|(seq, _)| *seq)
        .fold(covers.max(since), i64::max);
    Ok(Some(Delta {
        state,
        seq: position(seq)?,
        snapshot: snapshot.map(|(bytes, _)| bytes),
        changes: changes.into_iter().map(|(_, bytes)| bytes).collect(),
    }))
}

fn list_docs(conn: &mut Connection) -> Result<Vec<DocSummary>, StoreError> {
    let raws = conn
        .prepare_cached(&format!("SELECT {DOC_COLUMNS} FROM docs ORDER BY seq"))
        .and_then(|mut stmt| {
            stmt.query_map([], RawDoc::from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql("list documents"))?;
    raws.into_iter().map(RawDoc::parse).collect()
}

fn load_idempotency(
    conn: &mut Connection,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    type Raw = (String, i64, String, Vec<u8>, i64);
    let raw: Option<Raw> = conn
        .prepare_cached(
            "SELECT fingerprint, status, headers, body, created_at_ms
             FROM idempotency WHERE key = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![key], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })
            .optional()
        })
        .map_err(sql("load idempotency record"))?;
    let Some((fingerprint, status, headers, body, created_at_ms)) = raw else {
        return Ok(None);
    };
    let status = u16::try_from(status)
        .map_err(|_| corrupt(format_args!("status {status} of idempotency key {key:?}")))?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers)
        .map_err(|e| corrupt(format_args!("headers of idempotency key {key:?}: {e}")))?;
    Ok(Some(IdempotencyRecord {
        key: key.to_owned(),
        fingerprint,
        status,
        headers,
        body,
        created_at_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_core::storage::StoredChange;

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
        }
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
        let compacted = queue.compact(Compaction {
            id: missing,
            snapshot: vec![1],
            covered: vec![],
            synced: None,
        });
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
}
