//! The writer thread's SQL: what each queued operation does inside the group's
//! transaction (see `store::queue`).

use concord_core::storage::{Expect, Refusal, StoreError, WriteBatch};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{sql, sql_err, MAX_GROUP};
use crate::store::queue::{Compaction, GroupError, Writer};

/// The writer thread's end of the store: the only write connection, driven by the queue.
pub(super) struct SqliteWriter {
    pub(super) conn: Connection,
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
