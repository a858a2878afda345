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
//!
//! # Code
//! This file holds the store and its read pool; `schema` opens the file and migrates it,
//! `write` is the writer's SQL, `read` the reads.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use concord_core::storage::{
    Checked, Delta, Expect, IdempotencyRecord, ListPage, LoadedDoc, Store, StoreError, WriteBatch,
};
use rusqlite::{Connection, ErrorCode};
use uuid::Uuid;

use super::queue::{self, GroupCounters, Queue};
use read::{changes_since, list_page, load_doc, load_idempotency};
use schema::{configure_writer, migrate, open_connection};
use write::SqliteWriter;

mod read;
mod schema;
#[cfg(test)]
mod tests;
mod write;

/// The name of the database file inside the store's folder.
pub const DB_FILE: &str = "concord.sqlite3";

/// The most operations the writer thread commits in one transaction.
pub const MAX_GROUP: usize = 1024;

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many read connections the store keeps.
const READERS: usize = 4;

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

    async fn list_page(&self, after: Option<u64>, limit: usize) -> Result<ListPage, StoreError> {
        self.read("list", move |conn| list_page(conn, after, limit))
            .await
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
        self.queue
            .compact(id, snapshot, covered, None)
            .await
            .map(|_| ())
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
