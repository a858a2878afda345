//! The writer: its connection with prepared statements, and the SQL of each queued
//! operation inside the group's transaction (see `store::queue`).

use std::collections::BTreeSet;
use std::sync::Arc;

use concord_core::storage::{
    DocMeta, DocState, Expect, IdempotencyRecord, Refusal, StoreError, StoredChange, WriteBatch,
};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::schema::connect;
use super::{pg, to_u64, Inner, MAX_GROUP, NOW_MS};
use crate::store::apply::{self, BatchSql};
use crate::store::queue::{self, Compaction, GroupError, Jobs, Writer};

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
            // A change stored for the first time gets its receipt, at its log position; one
            // stored again keeps the receipt it has.
            insert_changes: prepare(
                "WITH given AS (
                     SELECT * FROM unnest($2::bytea[], $3::bytea[], $4::text[], $5::bigint[])
                         WITH ORDINALITY AS t (h, b, agent, at_ms, n)),
                 stored AS (
                     INSERT INTO changes (doc, hash, bytes)
                     SELECT $1, h, b FROM given ORDER BY n
                     ON CONFLICT (doc, hash) DO NOTHING
                     RETURNING seq, hash)
                 INSERT INTO receipts (doc, hash, seq, agent, at_ms)
                 SELECT $1, stored.hash, stored.seq, given.agent, given.at_ms
                   FROM stored JOIN given ON given.h = stored.hash
                  WHERE given.agent IS NOT NULL
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
pub(super) async fn write_loop(inner: Arc<Inner>, jobs: Jobs) {
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
        let result = apply::write(self.conn()?, batch, expect).await;
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
        apply::compact(self.conn()?, compaction).await
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

/// The statements of a write batch and a compaction, on the writer's connection.
impl BatchSql for WriteConn {
    async fn insert_doc(
        &self,
        meta: &DocMeta,
        schema: &str,
        state: &DocState,
        change_count: i64,
    ) -> Result<bool, StoreError> {
        let inserted = self
            .client
            .execute(
                &self.st.insert_doc,
                &[
                    &meta.id,
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
        Ok(inserted > 0)
    }

    /// Locks the document's row until commit: see "Log positions" in the module docs.
    async fn update_doc(
        &self,
        id: Uuid,
        state: &DocState,
        change_count: i64,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = self
            .client
            .query(
                &self.st.update_doc,
                &[
                    &id,
                    &state.version,
                    &change_count,
                    &state.updated_at_ms,
                    &state.last_agent,
                    &expected,
                ],
            )
            .await
            .map_err(|e| pg("update document state", e))?;
        Ok(!updated.is_empty())
    }

    async fn doc_version(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let row = self
            .client
            .query_opt(&self.st.doc_version, &[&id])
            .await
            .map_err(|e| pg("read document version", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    /// Under a share lock of the lease row, so that the lease cannot change hands before
    /// the write commits.
    async fn check_lease(&self, id: Uuid, token: u64) -> Result<Option<Refusal>, StoreError> {
        let row = self
            .client
            .query_opt(&self.st.lease_check, &[&id])
            .await
            .map_err(|e| pg("check lease", e))?;
        let Some(row) = row else {
            return Ok(Some(Refusal::Fenced { newest: None }));
        };
        let newest = to_u64(row.get::<_, i64>(0), "lease token")?;
        let (released, live): (bool, bool) = (row.get(1), row.get(2));
        Ok(if newest != token {
            Some(Refusal::Fenced {
                newest: Some(newest),
            })
        } else if released || !live {
            Some(Refusal::LeaseExpired)
        } else {
            None
        })
    }

    async fn insert_changes(&self, id: Uuid, changes: &[StoredChange]) -> Result<(), StoreError> {
        let hashes: Vec<&[u8]> = changes.iter().map(|c| &c.hash[..]).collect();
        let bytes: Vec<&[u8]> = changes.iter().map(|c| &c.bytes[..]).collect();
        let agents: Vec<Option<&str>> = changes
            .iter()
            .map(|c| c.receipt.as_ref().map(|r| r.agent.as_str()))
            .collect();
        let times: Vec<Option<i64>> = changes
            .iter()
            .map(|c| c.receipt.as_ref().map(|r| r.at_ms))
            .collect();
        self.client
            .execute(
                &self.st.insert_changes,
                &[&id, &hashes, &bytes, &agents, &times],
            )
            .await
            .map_err(|e| pg("insert changes", e))?;
        Ok(())
    }

    async fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        headers: &str,
    ) -> Result<(), StoreError> {
        self.client
            .execute(
                &self.st.upsert_idempotency,
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
        Ok(())
    }

    async fn lock_doc(&self, id: Uuid) -> Result<bool, StoreError> {
        let locked = self
            .client
            .query_opt("SELECT 1 FROM docs WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(|e| pg("lock document", e))?;
        Ok(locked.is_some())
    }

    async fn snapshot_covers(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        let row = self
            .client
            .query_opt("SELECT covers_seq FROM snapshots WHERE doc = $1", &[&id])
            .await
            .map_err(|e| pg("read snapshot position", e))?;
        Ok(row.map(|row| row.get(0)))
    }

    async fn delete_covered(&self, id: Uuid, covered: &[[u8; 32]]) -> Result<i64, StoreError> {
        let hashes: Vec<&[u8]> = covered.iter().map(|h| &h[..]).collect();
        let row = self
            .client
            .query_one(
                "WITH gone AS (DELETE FROM changes WHERE doc = $1 AND hash = ANY($2::bytea[])
                               RETURNING seq)
                 SELECT COALESCE(MAX(seq), 0) FROM gone",
                &[&id, &hashes],
            )
            .await
            .map_err(|e| pg("delete covered changes", e))?;
        Ok(row.get(0))
    }

    async fn put_snapshot(&self, id: Uuid, snapshot: &[u8], covers: i64) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO snapshots (doc, bytes, covers_seq) VALUES ($1, $2, $3)
                 ON CONFLICT (doc) DO UPDATE SET bytes = EXCLUDED.bytes,
                     covers_seq = GREATEST(snapshots.covers_seq, EXCLUDED.covers_seq)",
                &[&id, &snapshot, &covers],
            )
            .await
            .map_err(|e| pg("store snapshot", e))?;
        Ok(())
    }
}
