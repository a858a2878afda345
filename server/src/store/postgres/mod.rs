//! The shared durable backend: a [`Store`] in PostgreSQL, for several Concord nodes at once.
//!
//! Every node opens its own `PostgresStore` on the same database (and schema); the nodes
//! share nothing else. What one node stores, the others learn through `LISTEN`/`NOTIFY`
//! and read back by log position ([`Store::changes_since`]); the decisions that depend on
//! the current state of a document (version checks, lock leases, the queue's single writer)
//! are made by the database, in the transaction that stores the write.
//!
//! # Connecting
//! [`PostgresStore::open`] takes a `postgres://` URL (libpq style, as `tokio-postgres` reads
//! it) plus one parameter of Concord's own, `schema=NAME`: the tables live in that schema,
//! which is created if missing (several stores, test suites say, can share one database
//! that way). Without it, the tables go in the first schema of the connection's
//! `search_path` (which `options=-c search_path=NAME` sets; that schema must exist).
//!
//! # Layout
//! - `schema_version`: one row, how many of [`MIGRATIONS`] were applied. `open` applies the
//!   missing ones in one transaction, under an advisory lock so that nodes starting together
//!   migrate once; a schema newer than this build is refused.
//! - `docs`: one row per document: creation-time facts, the state after the last write, and
//!   `seq` (creation order, for [`Store::list`]).
//! - `changes`: the Automerge changes, unique by `(doc, hash)` (storing one twice is
//!   harmless: `ON CONFLICT DO NOTHING`), each with a `BIGSERIAL` `seq`: its log position.
//! - `snapshots`: at most one saved document per document, with `covers_seq`, the highest
//!   log position among the change rows it replaced.
//! - `idempotency`: recorded responses of requests made with an `Idempotency-Key`.
//! - `leases` and the sequence `lease_tokens`: the lock strategy's leases, one row per
//!   document, tokens from the sequence (so a token is newer than every token issued before
//!   it, by any node).
//!
//! # Log positions
//! A write locks its document's row (`UPDATE docs ... WHERE id = $1`) before it inserts
//! change rows, and keeps the lock until it commits. So the change rows of one document
//! take their `seq` in the order their transactions commit, and a reader that has seen
//! position `n` of a document has seen every row of it below `n`: reading `seq > n` next
//! time misses nothing. A compaction may delete rows a reader has not read yet; it records
//! how far it deleted (`covers_seq`), and [`Store::changes_since`] hands out the snapshot to
//! a reader behind that point (merging a snapshot is idempotent). A compaction never
//! replaces a snapshot that reaches past what its node had read ([`Store::compact_from`]).
//!
//! # Group commit
//! One task per store owns the write connection and runs the store's group-commit queue
//! (`store::queue`): every mutation ([`Store::write_checked`], [`Store::delete`],
//! compactions, purges) is queued in the calling thread; the task takes every operation
//! queued at that moment (up to [`MAX_GROUP`]) and runs them in ONE transaction, each in
//! its own savepoint (a failed or refused operation is rolled back alone), sorted by
//! document id (every node locks documents in the same order, so two nodes' groups cannot
//! deadlock; operations of one document keep their queue order), then sends one `NOTIFY`
//! per document written or deleted and commits once. Waiters are answered after `COMMIT`
//! returned (PostgreSQL's `synchronous_commit` makes that durable). If the group fails as
//! a whole before its `COMMIT` (the connection broke, say), nothing of it is stored: the
//! task connects again and runs it once more, then answers every waiter
//! [`StoreError::Backend`] if it fails again. A failed `COMMIT` is answered at once, saying
//! the outcome is unknown.
//!
//! # Notices
//! A dedicated connection `LISTEN`s on the schema's channel (`concord_<schema>`); payloads
//! are `c|d|r <node> <doc>` (changed, deleted, lease released), and a node ignores its own.
//! When that connection breaks (or stops answering the periodic ping), the listener
//! connects again with a growing pause and then sends [`Notice::Resync`]: the node catches
//! up every document it has in memory, so a notice missed meanwhile loses nothing.
//!
//! # Strategies across nodes
//! - Version checks: [`Expect::version`] is a compare-and-set in the write's `UPDATE`.
//! - Leases: a row per document; [`Store::acquire_lease`] is one upsert that only replaces
//!   a released or expired lease (by the database's clock), and [`Expect::lease`] re-checks
//!   the token in the write's transaction under a share lock of that row, so a lease cannot
//!   change hands between the check and the commit.
//! - The queue's single writer: [`Store::lock_writer`] holds a session advisory lock on a
//!   connection of a separate small pool until the write is durable.
//!
//! # Code
//! This file holds the store; `schema` parses the URL, connects and migrates, `write` is
//! the writer, `read` the reads, `lease` the leases and writer locks, `listen` the
//! listener.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use concord_core::storage::{
    Checked, Delta, Expect, IdempotencyRecord, LeaseGrant, ListPage, LoadedDoc, Notice, NoticeSink,
    Store, StoreError, StoredLease, WriteBatch, WriterLock,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::queue::{GroupCounters, Queue};
use listen::listen_loop;
use schema::{connect, migrate, parse_url};
use write::write_loop;

mod lease;
mod listen;
mod read;
mod schema;
mod write;

pub use schema::MIGRATIONS;

/// The most operations the writer commits in one transaction.
pub const MAX_GROUP: usize = 512;

/// Connections for reads and leases.
const READ_POOL: usize = 8;
/// Connections that hold a queue document's writer lock, each for one write.
const LOCK_POOL: usize = 4;

/// Now by the database's clock, in ms since the epoch: every node judges leases by it.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PostgresStats {
    /// Group transactions committed.
    pub commits: u64,
    /// Operations answered `Ok` after their group committed: `commits / batches` is the
    /// number of commits per acknowledged operation.
    pub batches: u64,
    /// Times the listener connected (1 after start; more after reconnections).
    pub listens: u64,
}

/// What every task of a store shares.
struct Inner {
    /// This store's id among the nodes: its own notices are skipped.
    node: Uuid,
    /// The schema the tables are in.
    schema: String,
    /// The `NOTIFY` channel of that schema.
    channel: String,
    /// How to connect (search path included).
    config: tokio_postgres::Config,
    reads: Pool,
    locks: Pool,
    sink: Mutex<Option<Arc<NoticeSink>>>,
    groups: GroupCounters,
    /// Times the listener connected.
    listens: AtomicU64,
}

impl Inner {
    fn emit(&self, notice: Notice) {
        let sink = self
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(sink) = sink {
            sink(notice);
        }
    }

    async fn read_conn(&self) -> Result<Object, StoreError> {
        self.reads
            .get()
            .await
            .map_err(|e| StoreError::Backend(format!("no database connection: {e}")))
    }
}

/// A [`Store`] in PostgreSQL, shared by every node that opens it. See the [module docs](self).
pub struct PostgresStore {
    inner: Arc<Inner>,
    queue: Queue,
    writer: Mutex<Option<JoinHandle<()>>>,
    listener: JoinHandle<()>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("node", &self.inner.node)
            .field("schema", &self.inner.schema)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (see the [module docs](self) for `schema=`),
    /// creates the schema if asked, applies missing migrations and starts the writer and
    /// the listener.
    pub async fn open(url: &str) -> Result<PostgresStore, StoreError> {
        let (config, schema) = parse_url(url)?;
        let client = connect(&config, "migrate").await?;
        let schema = migrate(&client, schema.as_deref()).await?;
        drop(client);

        let node = Uuid::new_v4();
        let pool = |size: usize, role: &str, recycling: RecyclingMethod| {
            // Every connection names its node, so that an operator (or a test) can tell
            // them apart in pg_stat_activity.
            let mut config = config.clone();
            config.application_name(format!("concord-{role} {node}"));
            let manager = Manager::from_config(
                config,
                NoTls,
                ManagerConfig {
                    recycling_method: recycling,
                },
            );
            Pool::builder(manager)
                .max_size(size)
                .runtime(Runtime::Tokio1)
                .wait_timeout(Some(Duration::from_secs(30)))
                .create_timeout(Some(Duration::from_secs(10)))
                .build()
                .map_err(|e| StoreError::Backend(format!("cannot build a connection pool: {e}")))
        };
        let mut channel = format!("concord_{schema}");
        // Channel names are identifiers: at most 63 bytes (ASCII here).
        channel.truncate(63);
        let inner = Arc::new(Inner {
            node,
            channel,
            config: config.clone(),
            // A pooled connection is checked before it is handed out, so that one the
            // database dropped (a restart, a failover) is replaced instead of failing a read.
            reads: pool(READ_POOL, "reader", RecyclingMethod::Verified)?,
            // A lock connection also forgets every advisory lock before it is handed out
            // again, in case an unlock was lost with a task.
            locks: pool(
                LOCK_POOL,
                "locker",
                RecyclingMethod::Custom("SELECT pg_advisory_unlock_all()".into()),
            )?,
            schema,
            sink: Mutex::new(None),
            groups: GroupCounters::default(),
            listens: AtomicU64::new(0),
        });
        let (queue, jobs) = Queue::new("the writer");
        let writer = tokio::spawn(write_loop(Arc::clone(&inner), jobs));
        let listener = tokio::spawn(listen_loop(Arc::clone(&inner)));
        tracing::info!(
            schema = %inner.schema,
            node = %inner.node,
            "opened postgres store"
        );
        Ok(PostgresStore {
            inner,
            queue,
            writer: Mutex::new(Some(writer)),
            listener,
        })
    }

    /// This node's id: its connections are named `concord-<role> <id>` (roles: writer,
    /// listener, reader, locker).
    pub fn node(&self) -> Uuid {
        self.inner.node
    }

    /// The schema holding the tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// Commits, operations and listener connections so far.
    pub fn stats(&self) -> PostgresStats {
        PostgresStats {
            commits: self.inner.groups.commits(),
            batches: self.inner.groups.batches(),
            listens: self.inner.listens.load(Ordering::Relaxed),
        }
    }

    /// Stops taking operations, waits until the writer has committed and answered every
    /// operation queued before, and stops listening. Later operations are refused with
    /// [`StoreError::Backend`]. Dropping the store does the same without waiting.
    pub async fn close(&self) {
        self.queue.close();
        let writer = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        self.listener.abort();
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // The writer drains what is queued, then ends; the listener has nothing to finish.
        self.listener.abort();
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked {
        self.queue.write(batch, expect)
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        self.inner.load(id).await
    }

    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
        self.inner.changes_since(id, since).await
    }

    async fn list_page(&self, after: Option<u64>, limit: usize) -> Result<ListPage, StoreError> {
        self.inner.list_page(after, limit).await
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

    async fn compact_from(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
        synced: u64,
    ) -> Result<bool, StoreError> {
        self.queue
            .compact(id, snapshot, covered, Some(synced))
            .await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.inner.idempotency(key).await
    }

    async fn purge_idempotency(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.queue.purge(before_ms).await
    }

    fn shared(&self) -> bool {
        true
    }

    fn on_notice(&self, sink: NoticeSink) {
        *self
            .inner
            .sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(sink));
    }

    async fn lock_writer(&self, id: Uuid) -> Result<Option<WriterLock>, StoreError> {
        self.inner.lock_writer(id).await.map(Some)
    }

    async fn lease(&self, id: Uuid) -> Result<Option<StoredLease>, StoreError> {
        self.inner.lease(id).await
    }

    async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
    ) -> Result<LeaseGrant, StoreError> {
        self.inner.acquire_lease(id, agent, ttl_ms).await
    }

    async fn release_lease(&self, id: Uuid, token: u64, agent: &str) -> Result<bool, StoreError> {
        self.inner.release_lease(id, token, agent).await
    }
}

/// A database error, with the server's message when there is one.
fn pg(what: &str, e: tokio_postgres::Error) -> StoreError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    StoreError::Backend(format!("{what}: {detail}"))
}

fn corrupt(what: impl fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn to_i64(n: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(n).map_err(|_| StoreError::Backend(format!("{what} {n} does not fit in BIGINT")))
}

fn to_u64(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt(format_args!("negative {what} {n}")))
}
