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

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use concord_core::schema::Schema;
use concord_core::storage::{
    Checked, Delta, DocMeta, DocState, DocSummary, Expect, IdempotencyRecord, LeaseGrant,
    LoadedDoc, Notice, NoticeSink, Refusal, Store, StoreError, StoredLease, WriteBatch, WriterLock,
};
use concord_core::strategy::Strategy;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};
use uuid::Uuid;

use super::queue::{self, Compaction, GroupCounters, GroupError, Jobs, Queue, Writer};

/// The most operations the writer commits in one transaction.
pub const MAX_GROUP: usize = 512;

/// Connections for reads and leases.
const READ_POOL: usize = 8;
/// Connections that hold a queue document's writer lock, each for one write.
const LOCK_POOL: usize = 4;
/// How often the listener checks that its connection still answers, and how long it waits.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// The pauses between reconnection attempts grow from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Now by the database's clock, in ms since the epoch: every node judges leases by it.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The schema migrations, in order: migration `i + 1` is `MIGRATIONS[i]`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial tables.
    "CREATE TABLE docs (
        id            UUID PRIMARY KEY,
        seq           BIGSERIAL NOT NULL UNIQUE,
        strategy      TEXT NOT NULL,
        schema        TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        version       TEXT NOT NULL,
        change_count  BIGINT NOT NULL,
        updated_at_ms BIGINT NOT NULL,
        last_agent    TEXT
    );
    CREATE TABLE changes (
        seq   BIGSERIAL PRIMARY KEY,
        doc   UUID NOT NULL REFERENCES docs (id) ON DELETE CASCADE,
        hash  BYTEA NOT NULL,
        bytes BYTEA NOT NULL,
        UNIQUE (doc, hash)
    );
    CREATE INDEX changes_doc_seq ON changes (doc, seq);
    CREATE TABLE snapshots (
        doc        UUID PRIMARY KEY REFERENCES docs (id) ON DELETE CASCADE,
        bytes      BYTEA NOT NULL,
        covers_seq BIGINT NOT NULL
    );
    CREATE TABLE idempotency (
        key           TEXT PRIMARY KEY,
        fingerprint   TEXT NOT NULL,
        status        INTEGER NOT NULL,
        headers       TEXT NOT NULL,
        body          BYTEA NOT NULL,
        created_at_ms BIGINT NOT NULL
    );
    CREATE INDEX idempotency_created ON idempotency (created_at_ms);
    CREATE SEQUENCE lease_tokens;
    CREATE TABLE leases (
        doc           UUID PRIMARY KEY REFERENCES docs (id) ON DELETE CASCADE,
        token         BIGINT NOT NULL,
        agent         TEXT NOT NULL,
        expires_at_ms BIGINT NOT NULL,
        released      BOOLEAN NOT NULL
    );",
];

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

/// A connection URL split into what `tokio-postgres` reads and Concord's `schema`.
fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Option<String>), StoreError> {
    let bad = |why: String| StoreError::Backend(format!("invalid PostgreSQL URL: {why}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(bad("it must start with postgres:// or postgresql://".into()));
    }
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut schema = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("schema", name)) => schema = Some(name.to_owned()),
            _ => rest.push(pair),
        }
    }
    if let Some(name) = &schema {
        let valid = !name.is_empty()
            && name.len() <= 48
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            return Err(bad(format!(
                "schema {name:?} must be 1 to 48 lowercase letters, digits and _, not starting with a digit"
            )));
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| bad(e.to_string()))?;
    if let Some(name) = &schema {
        let options = match config.get_options() {
            Some(options) => format!("{options} -c search_path={name}"),
            None => format!("-c search_path={name}"),
        };
        config.options(options);
    }
    if config.get_application_name().is_none() {
        config.application_name("concord");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // Dead peers are noticed in seconds, not the kernel's default two hours.
    config.keepalives_idle(Duration::from_secs(15));
    Ok((config, schema))
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

/// A stable 64-bit key for an advisory lock, scoped to the schema.
fn lock_key(scope: &str, name: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(scope)
        .chain_update(b"\n")
        .chain_update(name)
        .finalize();
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Connects one client, driving its connection on a task (errors are logged).
async fn connect(config: &tokio_postgres::Config, role: &str) -> Result<Client, StoreError> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg(&format!("connect ({role})"), e))?;
    let role = role.to_owned();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(role, error = %e, "postgres connection ended");
        }
    });
    Ok(client)
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

/// Creates the schema if asked, then applies the missing migrations, in one transaction
/// under an advisory lock. Returns the schema the tables are in.
async fn migrate(client: &Client, schema: Option<&str>) -> Result<String, StoreError> {
    let name = match schema {
        Some(name) => name.to_owned(),
        None => client
            .query_one("SELECT current_schema()", &[])
            .await
            .map_err(|e| pg("read the current schema", e))?
            .get::<_, Option<String>>(0)
            .ok_or_else(|| {
                StoreError::Backend(
                    "no schema to create tables in: add ?schema=NAME to the URL, or a search_path that exists"
                        .into(),
                )
            })?,
    };
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| pg("begin migration", e))?;
    let result = async {
        client
            .execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&lock_key("concord-migrate", &name)],
            )
            .await
            .map_err(|e| pg("lock for migration", e))?;
        if schema.is_some() {
            client
                .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(&name)))
                .await
                .map_err(|e| pg(&format!("create schema {name}"), e))?;
        }
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .await
            .map_err(|e| pg("create schema_version", e))?;
        let row = client
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(|e| pg("read schema version", e))?;
        let version = match row {
            Some(row) => row.get::<_, i32>(0),
            None => {
                client
                    .execute("INSERT INTO schema_version (version) VALUES (0)", &[])
                    .await
                    .map_err(|e| pg("start schema version", e))?;
                0
            }
        };
        let latest = MIGRATIONS.len();
        let applied = usize::try_from(version)
            .map_err(|_| corrupt(format_args!("schema {name}: negative schema version {version}")))?;
        if applied > latest {
            return Err(StoreError::Backend(format!(
                "schema {name}: schema version {applied} is newer than this build supports ({latest})"
            )));
        }
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            client
                .batch_execute(migration)
                .await
                .map_err(|e| pg(&format!("apply migration {}", i + 1), e))?;
            tracing::info!(schema = %name, migration = i + 1, "applied postgres migration");
        }
        if applied < latest {
            client
                .execute("UPDATE schema_version SET version = $1", &[&(latest as i32)])
                .await
                .map_err(|e| pg("set schema version", e))?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg("commit migration", e))?,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    }
    Ok(name)
}

// ---------------------------------------------------------------------------------------
// The writer

/// The writer's statements, prepared once per connection.
struct Statements {
    insert_doc: Statement,
    update_doc: Statement,
    doc_version: Statement,
    lease_check: Statement,
    insert_changes: Statement,
    upsert_idempotency: Statement,
    notify: Statement,
}

struct WriteConn {
    client: Client,
    st: Statements,
}

impl WriteConn {
    async fn open(inner: &Inner) -> Result<WriteConn, StoreError> {
        let mut config = inner.config.clone();
        config.application_name(format!("concord-writer {}", inner.node));
        let client = connect(&config, "writer").await?;
        // Acknowledged means durable, whatever the server's default.
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(|e| pg("configure writer", e))?;
        let prepare = |sql: String| {
            let client = &client;
            async move { client.prepare(&sql).await.map_err(|e| pg("prepare", e)) }
        };
        let st = Statements {
            insert_doc: prepare(
                "INSERT INTO docs (id, strategy, schema, created_at_ms, version, change_count,
                                   updated_at_ms, last_agent)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING"
                    .into(),
            )
            .await?,
            update_doc: prepare(
                "UPDATE docs SET version = $2, change_count = $3, updated_at_ms = $4,
                                 last_agent = $5
                 WHERE id = $1 AND ($6::text IS NULL OR version = $6::text) RETURNING 1"
                    .into(),
            )
            .await?,
            doc_version: prepare("SELECT version FROM docs WHERE id = $1".into()).await?,
            lease_check: prepare(format!(
                "SELECT token, released, expires_at_ms > {NOW_MS} FROM leases
                 WHERE doc = $1 FOR SHARE"
            ))
            .await?,
            insert_changes: prepare(
                "INSERT INTO changes (doc, hash, bytes)
                 SELECT $1, h, b FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS t (h, b, n)
                 ORDER BY n
                 ON CONFLICT (doc, hash) DO NOTHING"
                    .into(),
            )
            .await?,
            upsert_idempotency: prepare(
                "INSERT INTO idempotency (key, fingerprint, status, headers, body, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,
                     status = EXCLUDED.status, headers = EXCLUDED.headers,
                     body = EXCLUDED.body, created_at_ms = EXCLUDED.created_at_ms"
                    .into(),
            )
            .await?,
            notify: prepare("SELECT pg_notify($1, $2)".into()).await?,
        };
        Ok(WriteConn { client, st })
    }
}

/// The writer task: runs the queue on the write connection until the store closes.
async fn write_loop(inner: Arc<Inner>, jobs: Jobs) {
    let mut writer = PgWriter {
        inner: Arc::clone(&inner),
        conn: None,
        notices: BTreeSet::new(),
    };
    queue::serve(&mut writer, jobs, &inner.groups).await;
}

/// The writer's end of the store: the write connection (connected again when it broke),
/// driven by the queue.
struct PgWriter {
    inner: Arc<Inner>,
    conn: Option<WriteConn>,
    /// What the open transaction tells the other nodes when it commits: `c` (changed) or
    /// `d` (deleted), and the document.
    notices: BTreeSet<(char, Uuid)>,
}

impl PgWriter {
    fn conn(&self) -> Result<&WriteConn, StoreError> {
        self.conn
            .as_ref()
            .ok_or_else(|| StoreError::Backend("the writer is not connected".into()))
    }
}

impl Writer for PgWriter {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn max_group(&self) -> usize {
        MAX_GROUP
    }

    /// Every node locks documents in the same order, so two nodes' groups cannot deadlock.
    fn in_document_order(&self) -> bool {
        true
    }

    async fn connect(&mut self) -> Result<(), StoreError> {
        if self.conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            self.conn = None;
            self.conn = Some(WriteConn::open(&self.inner).await?);
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<bool, StoreError> {
        self.conn = None;
        self.conn = Some(WriteConn::open(&self.inner).await?);
        Ok(true)
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        self.notices.clear();
        self.execute("BEGIN").await
    }

    async fn execute(&mut self, statement: &'static str) -> Result<(), StoreError> {
        self.conn()?
            .client
            .batch_execute(statement)
            .await
            .map_err(|e| pg(statement, e))
    }

    async fn write(
        &mut self,
        batch: &WriteBatch,
        expect: &Expect,
    ) -> Result<Result<(), Refusal>, StoreError> {
        let result = apply_write(self.conn()?, batch, expect).await;
        if matches!(result, Ok(Ok(()))) {
            self.notices.insert(('c', batch.doc));
        }
        result
    }

    async fn delete(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let existed = self
            .conn()?
            .client
            .execute("DELETE FROM docs WHERE id = $1", &[&id])
            .await
            .map(|n| n > 0)
            .map_err(|e| pg("delete document", e))?;
        if existed {
            self.notices.insert(('d', id));
        }
        Ok(existed)
    }

    async fn compact(&mut self, compaction: &Compaction) -> Result<bool, StoreError> {
        apply_compact(&self.conn()?.client, compaction).await
    }

    async fn purge(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.conn()?
            .client
            .execute(
                "DELETE FROM idempotency WHERE created_at_ms < $1",
                &[&before_ms],
            )
            .await
            .map_err(|e| pg("purge idempotency records", e))
    }

    /// Sends the group's notices (delivered by the database only if it commits), then
    /// commits. Waiters are answered after COMMIT returned, which `synchronous_commit`
    /// makes durable; a COMMIT that failed may or may not have stored the group.
    async fn commit(&mut self) -> Result<(), GroupError> {
        let conn = self.conn()?;
        for (kind, doc) in &self.notices {
            let payload = format!("{kind} {} {doc}", self.inner.node);
            conn.client
                .execute(&conn.st.notify, &[&self.inner.channel, &payload])
                .await
                .map_err(|e| pg("notify", e))?;
        }
        conn.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| GroupError::InDoubt(pg("COMMIT", e)))
    }
}

async fn apply_write(
    conn: &WriteConn,
    batch: &WriteBatch,
    expect: &Expect,
) -> Result<Result<(), Refusal>, StoreError> {
    let (client, st) = (&conn.client, &conn.st);
    let id = batch.doc;
    let state = &batch.state;
    let change_count = to_i64(state.change_count, "change count")?;
    if let Some(meta) = &batch.create {
        if meta.id != id {
            return Err(StoreError::Backend(format!(
                "write batch for {id} creates a document with id {}",
                meta.id
            )));
        }
        let schema = serde_json::to_string(&meta.schema)
            .map_err(|e| StoreError::Backend(format!("cannot encode schema of {id}: {e}")))?;
        let inserted = client
            .execute(
                &st.insert_doc,
                &[
                    &id,
                    &meta.strategy.as_str(),
                    &schema,
                    &meta.created_at_ms,
                    &state.version,
                    &change_count,
                    &state.updated_at_ms,
                    &state.last_agent,
                ],
            )
            .await
            .map_err(|e| pg("insert document", e))?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists(id));
        }
    } else {
        // Locks the document's row until commit: see "Log positions" in the module docs.
        let updated = client
            .query(
                &st.update_doc,
                &[
                    &id,
                    &state.version,
                    &change_count,
                    &state.updated_at_ms,
                    &state.last_agent,
                    &expect.version,
                ],
            )
            .await
            .map_err(|e| pg("update document state", e))?;
        if updated.is_empty() {
            let current = client
                .query_opt(&st.doc_version, &[&id])
                .await
                .map_err(|e| pg("read document version", e))?;
            return match current {
                None => Err(StoreError::NotFound(id)),
                Some(row) => Ok(Err(Refusal::Stale {
                    current: row.get(0),
                })),
            };
        }
    }
    if let Some(token) = expect.lease {
        let row = client
            .query_opt(&st.lease_check, &[&id])
            .await
            .map_err(|e| pg("check lease", e))?;
        let refusal = match row {
            None => Some(Refusal::Fenced { newest: None }),
            Some(row) => {
                let newest = to_u64(row.get::<_, i64>(0), "lease token")?;
                let (released, live): (bool, bool) = (row.get(1), row.get(2));
                if newest != token {
                    Some(Refusal::Fenced {
                        newest: Some(newest),
                    })
                } else if released || !live {
                    Some(Refusal::LeaseExpired)
                } else {
                    None
                }
            }
        };
        if let Some(refusal) = refusal {
            return Ok(Err(refusal));
        }
    }
    if !batch.changes.is_empty() {
        let hashes: Vec<&[u8]> = batch.changes.iter().map(|c| &c.hash[..]).collect();
        let bytes: Vec<&[u8]> = batch.changes.iter().map(|c| &c.bytes[..]).collect();
        client
            .execute(&st.insert_changes, &[&id, &hashes, &bytes])
            .await
            .map_err(|e| pg("insert changes", e))?;
    }
    if let Some(record) = &batch.idempotency {
        let headers = serde_json::to_string(&record.headers).map_err(|e| {
            StoreError::Backend(format!("cannot encode headers of idempotency record: {e}"))
        })?;
        client
            .execute(
                &st.upsert_idempotency,
                &[
                    &record.key,
                    &record.fingerprint,
                    &i32::from(record.status),
                    &headers,
                    &record.body,
                    &record.created_at_ms,
                ],
            )
            .await
            .map_err(|e| pg("insert idempotency record", e))?;
    }
    Ok(Ok(()))
}

/// Stores a compaction's snapshot; `false` if a snapshot that reaches past what the
/// compacting node had read is kept instead.
async fn apply_compact(client: &Client, compaction: &Compaction) -> Result<bool, StoreError> {
    let (id, snapshot, synced) = (compaction.id, &compaction.snapshot[..], compaction.synced);
    let locked = client
        .query_opt("SELECT 1 FROM docs WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .map_err(|e| pg("lock document", e))?;
    if locked.is_none() {
        return Err(StoreError::NotFound(id));
    }
    if let Some(synced) = synced {
        let covers: Option<i64> = client
            .query_opt("SELECT covers_seq FROM snapshots WHERE doc = $1", &[&id])
            .await
            .map_err(|e| pg("read snapshot position", e))?
            .map(|row| row.get(0));
        if covers.is_some_and(|c| c > to_i64(synced, "log position").unwrap_or(i64::MAX)) {
            // A newer snapshot may hold records this one lacks: keep it.
            return Ok(false);
        }
    }
    let hashes: Vec<&[u8]> = compaction.covered.iter().map(|h| &h[..]).collect();
    let deleted: i64 = client
        .query_one(
            "WITH gone AS (DELETE FROM changes WHERE doc = $1 AND hash = ANY($2::bytea[])
                           RETURNING seq)
             SELECT COALESCE(MAX(seq), 0) FROM gone",
            &[&id, &hashes],
        )
        .await
        .map_err(|e| pg("delete covered changes", e))?
        .get(0);
    client
        .execute(
            "INSERT INTO snapshots (doc, bytes, covers_seq) VALUES ($1, $2, $3)
             ON CONFLICT (doc) DO UPDATE SET bytes = EXCLUDED.bytes,
                 covers_seq = GREATEST(snapshots.covers_seq, EXCLUDED.covers_seq)",
            &[&id, &snapshot, &deleted],
        )
        .await
        .map_err(|e| pg("store snapshot", e))?;
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// Reads

const DOC_COLUMNS: &str =
    "id, strategy, schema, created_at_ms, version, change_count, updated_at_ms, last_agent";

fn parse_state(row: &Row, from: usize) -> Result<DocState, StoreError> {
    Ok(DocState {
        version: row.get(from),
        change_count: to_u64(row.get(from + 1), "change count")?,
        updated_at_ms: row.get(from + 2),
        last_agent: row.get(from + 3),
    })
}

/// A `docs` row selected with [`DOC_COLUMNS`].
fn parse_doc(row: &Row) -> Result<DocSummary, StoreError> {
    let id: Uuid = row.get(0);
    let strategy: String = row.get(1);
    let strategy: Strategy = strategy
        .parse()
        .map_err(|e| corrupt(format_args!("strategy of document {id}: {e}")))?;
    let schema: String = row.get(2);
    let schema: Schema = serde_json::from_str(&schema)
        .map_err(|e| corrupt(format_args!("schema of document {id}: {e}")))?;
    Ok(DocSummary {
        meta: DocMeta {
            id,
            strategy,
            schema,
            created_at_ms: row.get(3),
        },
        state: parse_state(row, 4)?,
    })
}

/// The document row, its snapshot (if it reaches past `since`) and its change rows after
/// `since`, from ONE statement: one consistent view, one round trip. Part 0 is the row,
/// part 1 the snapshot, part 2 the changes in log order.
const LOG_AFTER: &str = "
    SELECT 0 AS part, 0::bigint AS seq, NULL::bytea AS bytes,
           version, change_count, updated_at_ms, last_agent
      FROM docs WHERE id = $1
    UNION ALL
    SELECT 1, covers_seq, bytes, NULL, NULL, NULL, NULL
      FROM snapshots WHERE doc = $1 AND covers_seq > $2
    UNION ALL
    SELECT 2, seq, bytes, NULL, NULL, NULL, NULL
      FROM changes WHERE doc = $1 AND seq > $2
    ORDER BY part, seq";

#[async_trait]
impl Store for PostgresStore {
    fn write_checked(&self, batch: WriteBatch, expect: Expect) -> Checked {
        self.queue.write(batch, expect)
    }

    async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        let conn = self.inner.read_conn().await?;
        let head = conn
            .prepare_cached(&format!("SELECT {DOC_COLUMNS} FROM docs WHERE id = $1"))
            .await
            .map_err(|e| pg("prepare load", e))?;
        let Some(row) = conn
            .query_opt(&head, &[&id])
            .await
            .map_err(|e| pg("load document row", e))?
        else {
            return Ok(None);
        };
        let meta = parse_doc(&row)?.meta;
        // The rest as a delta from the start of the log: one consistent view of the row,
        // the snapshot and the changes.
        let Some(delta) = log_after(&conn, id, 0).await? else {
            return Ok(None);
        };
        Ok(Some(LoadedDoc {
            meta,
            state: delta.state,
            snapshot: delta.snapshot,
            changes: delta.changes,
            seq: delta.seq,
        }))
    }

    async fn changes_since(&self, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
        let conn = self.inner.read_conn().await?;
        log_after(&conn, id, since).await
    }

    async fn list(&self) -> Result<Vec<DocSummary>, StoreError> {
        let conn = self.inner.read_conn().await?;
        let rows = conn
            .query(&format!("SELECT {DOC_COLUMNS} FROM docs ORDER BY seq"), &[])
            .await
            .map_err(|e| pg("list documents", e))?;
        rows.iter().map(parse_doc).collect()
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

    async fn compact_from(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
        synced: u64,
    ) -> Result<bool, StoreError> {
        let compaction = Compaction {
            id,
            snapshot,
            covered,
            synced: Some(synced),
        };
        self.queue.compact(compaction).await
    }

    async fn idempotency(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let conn = self.inner.read_conn().await?;
        let row = conn
            .query_opt(
                "SELECT fingerprint, status, headers, body, created_at_ms
                 FROM idempotency WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(|e| pg("load idempotency record", e))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let status: i32 = row.get(1);
        let headers: String = row.get(2);
        Ok(Some(IdempotencyRecord {
            key: key.to_owned(),
            fingerprint: row.get(0),
            status: u16::try_from(status)
                .map_err(|_| corrupt(format_args!("status {status} of idempotency key {key:?}")))?,
            headers: serde_json::from_str(&headers)
                .map_err(|e| corrupt(format_args!("headers of idempotency key {key:?}: {e}")))?,
            body: row.get(3),
            created_at_ms: row.get(4),
        }))
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
        let inner = Arc::clone(&self.inner);
        // Taken on a task of its own: if the caller gives up while waiting, the lock is
        // still released once granted (the guard drops on that task), never leaked.
        let task = tokio::spawn(async move {
            let key = lock_key(&inner.schema, &id.to_string());
            let conn = inner
                .locks
                .get()
                .await
                .map_err(|e| StoreError::Backend(format!("no database connection: {e}")))?;
            // A node that freezes while holding the lock (its session idle, not in a
            // transaction) loses the session, and so the lock, after this long; the write
            // it was making is then refused by its version check. Older servers lack the
            // setting: then only TCP keepalives end such a session.
            let _ = conn.batch_execute("SET idle_session_timeout = '30s'").await;
            conn.execute("SELECT pg_advisory_lock($1)", &[&key])
                .await
                .map_err(|e| pg("take the document's writer lock", e))?;
            Ok::<_, StoreError>(Box::new(AdvisoryLock {
                conn: Some(conn),
                key,
            }) as WriterLock)
        });
        let guard = task
            .await
            .map_err(|e| StoreError::Backend(format!("writer lock task failed: {e}")))??;
        Ok(Some(guard))
    }

    async fn lease(&self, id: Uuid) -> Result<Option<StoredLease>, StoreError> {
        let conn = self.inner.read_conn().await?;
        let row = conn
            .query_opt(
                &format!(
                    "SELECT token, agent, expires_at_ms - {NOW_MS} FROM leases
                     WHERE doc = $1 AND NOT released"
                ),
                &[&id],
            )
            .await
            .map_err(|e| pg("read lease", e))?;
        row.map(|row| stored_lease(&row)).transpose()
    }

    async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
    ) -> Result<LeaseGrant, StoreError> {
        let conn = self.inner.read_conn().await?;
        let ttl = to_i64(ttl_ms, "lease duration")?;
        // One statement: takes a new token unless an unexpired lease is held. The upsert
        // locks the lease row, so it waits for writes checking the old token to commit.
        let granted = conn
            .query_opt(
                &format!(
                    "INSERT INTO leases AS l (doc, token, agent, expires_at_ms, released)
                     VALUES ($1, nextval('lease_tokens'), $2, {NOW_MS} + $3, false)
                     ON CONFLICT (doc) DO UPDATE SET token = EXCLUDED.token,
                         agent = EXCLUDED.agent, expires_at_ms = EXCLUDED.expires_at_ms,
                         released = false
                     WHERE l.released OR l.expires_at_ms <= {NOW_MS}
                     RETURNING token, agent, expires_at_ms - {NOW_MS}"
                ),
                &[&id, &agent, &ttl],
            )
            .await;
        match granted {
            Ok(Some(row)) => Ok(LeaseGrant::Granted(stored_lease(&row)?)),
            Ok(None) => match self.lease(id).await? {
                Some(held) => Ok(LeaseGrant::Held(held)),
                // Released between the two statements: ask again.
                None => Box::pin(self.acquire_lease(id, agent, ttl_ms)).await,
            },
            Err(e) if e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(StoreError::NotFound(id))
            }
            Err(e) => Err(pg("acquire lease", e)),
        }
    }

    async fn release_lease(&self, id: Uuid, token: u64) -> Result<bool, StoreError> {
        let conn = self.inner.read_conn().await?;
        let token = to_i64(token, "lease token")?;
        let payload = format!("r {} {id}", self.inner.node);
        let rows = conn
            .query(
                "WITH r AS (UPDATE leases SET released = true
                            WHERE doc = $1 AND token = $2 AND NOT released RETURNING doc)
                 SELECT pg_notify($3, $4) FROM r",
                &[&id, &token, &self.inner.channel, &payload],
            )
            .await
            .map_err(|e| pg("release lease", e))?;
        Ok(!rows.is_empty())
    }
}

fn stored_lease(row: &Row) -> Result<StoredLease, StoreError> {
    Ok(StoredLease {
        token: to_u64(row.get(0), "lease token")?,
        agent: row.get(1),
        remaining_ms: row.get(2),
    })
}

async fn log_after(conn: &Object, id: Uuid, since: u64) -> Result<Option<Delta>, StoreError> {
    let statement = conn
        .prepare_cached(LOG_AFTER)
        .await
        .map_err(|e| pg("prepare log read", e))?;
    let since_sql = to_i64(since, "log position")?;
    let rows = conn
        .query(&statement, &[&id, &since_sql])
        .await
        .map_err(|e| pg("read the change log", e))?;
    let mut rows = rows.iter();
    let Some(head) = rows.next().filter(|row| row.get::<_, i32>(0) == 0) else {
        return Ok(None);
    };
    let state = parse_state(head, 3)?;
    let mut delta = Delta {
        state,
        seq: since,
        snapshot: None,
        changes: Vec::new(),
    };
    for row in rows {
        let seq = to_u64(row.get(1), "log position")?;
        delta.seq = delta.seq.max(seq);
        match row.get::<_, i32>(0) {
            1 => delta.snapshot = Some(row.get(2)),
            _ => delta.changes.push(row.get(2)),
        }
    }
    Ok(Some(delta))
}

/// A session advisory lock on a pooled connection; dropping it unlocks.
struct AdvisoryLock {
    conn: Option<Object>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = conn.execute("SELECT pg_advisory_unlock($1)", &[&key]).await {
                        tracing::warn!(error = %e, "could not release a writer lock; closing its connection");
                        // Closing the session releases every lock it holds.
                        drop(Object::take(conn));
                    }
                });
            }
            // No runtime to unlock on: closing the connection unlocks.
            Err(_) => drop(Object::take(conn)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The listener

async fn listen_loop(inner: Arc<Inner>) {
    let mut pause = RECONNECT_FIRST;
    loop {
        match listen_once(&inner).await {
            Ok(()) => pause = RECONNECT_FIRST,
            Err(e) => {
                tracing::warn!(error = %e, ?pause, "postgres listener lost its connection; reconnecting");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECONNECT_MAX);
    }
}

/// Listens on one connection until it fails; `Ok` if it had been listening.
async fn listen_once(inner: &Inner) -> Result<(), StoreError> {
    let mut config = inner.config.clone();
    config.application_name(format!("concord-listener {}", inner.node));
    let (client, mut connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| pg("connect (listener)", e))?;
    let (tx, mut notes) = mpsc::unbounded_channel();
    // Drives the connection; notifications come out of it, not out of the client.
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(note))) => {
                    if tx.send(note).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "postgres listener connection failed");
                    return;
                }
                None => return,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {}", quote_ident(&inner.channel)))
            .await
            .map_err(|e| pg("listen", e))?;
        inner.listens.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(channel = %inner.channel, "postgres listener connected");
        // Whatever was stored before LISTEN took effect is read by catching up now.
        inner.emit(Notice::Resync);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        loop {
            tokio::select! {
                note = notes.recv() => match note {
                    Some(note) => handle(inner, note.payload()),
                    None => return Err(StoreError::Backend("the listener connection closed".into())),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(pg("listener ping", e)),
                        Err(_) => return Err(StoreError::Backend("the listener connection stopped answering".into())),
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// Turns a notification payload (`c|d|r <node> <doc>`) into a notice.
fn handle(inner: &Inner, payload: &str) {
    let mut parts = payload.split(' ');
    let (Some(kind), Some(node), Some(doc)) = (parts.next(), parts.next(), parts.next()) else {
        tracing::debug!(payload, "ignoring a malformed notification");
        return;
    };
    let (Ok(node), Ok(doc)) = (Uuid::parse_str(node), Uuid::parse_str(doc)) else {
        tracing::debug!(payload, "ignoring a malformed notification");
        return;
    };
    if node == inner.node {
        return;
    }
    match kind {
        "c" | "d" => inner.emit(Notice::Changed(doc)),
        "r" => inner.emit(Notice::Released(doc)),
        _ => tracing::debug!(payload, "ignoring an unknown notification"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_concords_schema_apart() {
        let (config, schema) =
            parse_url("postgres://postgres@127.0.0.1:5432/test?schema=concord_a&connect_timeout=3")
                .unwrap();
        assert_eq!(schema.as_deref(), Some("concord_a"));
        assert_eq!(config.get_options(), Some("-c search_path=concord_a"));
        assert_eq!(config.get_dbname(), Some("test"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_application_name(), Some("concord"));

        let (config, schema) = parse_url("postgresql://u@h/db").unwrap();
        assert_eq!((schema, config.get_options()), (None, None));

        for bad in [
            "mysql://h/db",
            "postgres://h/db?schema=Bad-Name",
            "postgres://h/db?schema=1x",
            "postgres://h/db?schema=",
            "postgres://h/db?nonsense=1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_keys_depend_on_scope_and_name() {
        assert_eq!(lock_key("a", "x"), lock_key("a", "x"));
        assert_ne!(lock_key("a", "x"), lock_key("b", "x"));
        assert_ne!(lock_key("a", "x"), lock_key("a", "y"));
    }
}
