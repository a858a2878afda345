//! The writer thread's SQL: what each queued operation does inside the group's
//! transaction (see `store::queue`).

use concord_core::storage::{
    DocMeta, DocState, Expect, IdempotencyRecord, Refusal, StoreError, StoredChange, WriteBatch,
};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{sql, sql_err, MAX_GROUP};
use crate::store::apply::{self, BatchSql};
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
        // The registry asks for checks only on a shared store, so the server's own writes
        // come here with `Expect::default()`; honouring one keeps the `Store` contract for
        // any other caller.
        apply::write(&self.conn, batch, expect).await
    }

    async fn delete(&mut self, id: Uuid) -> Result<bool, StoreError> {
        apply_delete(&self.conn, id)
    }

    async fn compact(&mut self, compaction: &Compaction) -> Result<bool, StoreError> {
        apply::compact(&self.conn, compaction).await
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

fn doc_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM docs WHERE id = ?1")
        .and_then(|mut stmt| stmt.exists(params![id]))
        .map_err(sql("look up document"))
}

fn apply_delete(conn: &Connection, id: Uuid) -> Result<bool, StoreError> {
    let id = id.to_string();
    let mut removed = 0;
    for (sql_text, what) in [
        ("DELETE FROM docs WHERE id = ?1", "delete document"),
        ("DELETE FROM changes WHERE doc = ?1", "delete changes"),
        ("DELETE FROM snapshots WHERE doc = ?1", "delete snapshot"),
        ("DELETE FROM receipts WHERE doc = ?1", "delete receipts"),
    ] {
        removed += conn
            .prepare_cached(sql_text)
            .and_then(|mut stmt| stmt.execute(params![id]))
            .map_err(|e| sql_err(what, e))?;
    }
    Ok(removed > 0)
}

/// The statements of a write batch and a compaction. One connection writes the file and
/// holds its write lock for the whole transaction, so no row needs a lock of its own.
impl BatchSql for Connection {
    async fn insert_doc(
        &self,
        meta: &DocMeta,
        schema: &str,
        state: &DocState,
        change_count: i64,
    ) -> Result<bool, StoreError> {
        let id = meta.id.to_string();
        if doc_exists(self, &id)? {
            return Ok(false);
        }
        self.prepare_cached(
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
        Ok(true)
    }

    async fn update_doc(
        &self,
        id: Uuid,
        state: &DocState,
        change_count: i64,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = self
            .prepare_cached(
                "UPDATE docs SET version = ?2, change_count = ?3, updated_at_ms = ?4,
                                 last_agent = ?5
                 WHERE id = ?1 AND (?6 IS NULL OR version = ?6)",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    id.to_string(),
                    state.version,
                    change_count,
                    state.updated_at_ms,
                    state.last_agent,
                    expected,
                ])
            })
            .map_err(sql("update document state"))?;
        Ok(updated > 0)
    }

    async fn doc_version(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.prepare_cached("SELECT version FROM docs WHERE id = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![id.to_string()], |row| row.get(0))
                    .optional()
            })
            .map_err(sql("read document version"))
    }

    /// Leases are kept by the node (the registry asks for lease checks only on a shared
    /// store): no token is the newest here.
    async fn check_lease(&self, _id: Uuid, _token: u64) -> Result<Option<Refusal>, StoreError> {
        Ok(Some(Refusal::Fenced { newest: None }))
    }

    /// A change stored for the first time gets its receipt, at its log position; one
    /// stored again keeps the receipt it has.
    async fn insert_changes(&self, id: Uuid, changes: &[StoredChange]) -> Result<(), StoreError> {
        let id = id.to_string();
        let mut stmt = self
            .prepare_cached("INSERT OR IGNORE INTO changes (doc, hash, bytes) VALUES (?1, ?2, ?3)")
            .map_err(sql("prepare change insert"))?;
        let mut receipt_stmt = self
            .prepare_cached(
                "INSERT OR IGNORE INTO receipts (doc, hash, seq, agent, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(sql("prepare receipt insert"))?;
        for change in changes {
            let inserted = stmt
                .execute(params![id, &change.hash[..], change.bytes])
                .map_err(sql("insert change"))?;
            if let (1, Some(receipt)) = (inserted, &change.receipt) {
                let seq = self.last_insert_rowid();
                receipt_stmt
                    .execute(params![
                        id,
                        &change.hash[..],
                        seq,
                        receipt.agent,
                        receipt.at_ms
                    ])
                    .map_err(sql("insert receipt"))?;
            }
        }
        Ok(())
    }

    async fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        headers: &str,
    ) -> Result<(), StoreError> {
        self.prepare_cached(
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
        Ok(())
    }

    async fn lock_doc(&self, id: Uuid) -> Result<bool, StoreError> {
        doc_exists(self, &id.to_string())
    }

    async fn snapshot_covers(&self, id: Uuid) -> Result<Option<i64>, StoreError> {
        self.prepare_cached("SELECT covers_seq FROM snapshots WHERE doc = ?1")
            .and_then(|mut stmt| {
                stmt.query_row(params![id.to_string()], |row| row.get(0))
                    .optional()
            })
            .map_err(sql("read snapshot position"))
    }

    async fn delete_covered(&self, id: Uuid, covered: &[[u8; 32]]) -> Result<i64, StoreError> {
        let doc = id.to_string();
        let mut stmt = self
            .prepare_cached("DELETE FROM changes WHERE doc = ?1 AND hash = ?2 RETURNING seq")
            .map_err(sql("prepare covered change delete"))?;
        let mut covers: i64 = 0;
        for hash in covered {
            let seq: Option<i64> = stmt
                .query_row(params![doc, &hash[..]], |row| row.get(0))
                .optional()
                .map_err(sql("delete covered change"))?;
            covers = covers.max(seq.unwrap_or(0));
        }
        Ok(covers)
    }

    async fn put_snapshot(&self, id: Uuid, snapshot: &[u8], covers: i64) -> Result<(), StoreError> {
        self.prepare_cached(
            "INSERT INTO snapshots (doc, bytes, covers_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes,
                 covers_seq = MAX(snapshots.covers_seq, excluded.covers_seq)",
        )
        .and_then(|mut stmt| stmt.execute(params![id.to_string(), snapshot, covers]))
        .map_err(sql("store snapshot"))?;
        Ok(())
    }
}
