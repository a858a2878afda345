//! Reads, on the pooled read-only connections: each runs in one read transaction, so it
//! sees one committed state.

use concord_core::schema::Schema;
use concord_core::storage::{
    Delta, DocMeta, DocState, DocSummary, IdempotencyRecord, ListPage, LoadedDoc, Receipt,
    StoreError,
};
use concord_core::strategy::Strategy;
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

use super::{corrupt, sql};

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
        Self::from_row_at(row, 0)
    }

    /// The row's [`DOC_COLUMNS`], from column `at` on.
    fn from_row_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<RawDoc> {
        Ok(RawDoc {
            id: row.get(at)?,
            strategy: row.get(at + 1)?,
            schema: row.get(at + 2)?,
            created_at_ms: row.get(at + 3)?,
            version: row.get(at + 4)?,
            change_count: row.get(at + 5)?,
            updated_at_ms: row.get(at + 6)?,
            last_agent: row.get(at + 7)?,
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

pub(super) fn load_doc(conn: &mut Connection, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
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
    let receipts = receipts_after(&tx, &doc, 0)?;
    tx.finish().map_err(sql("end load"))?;
    let covers = snapshot.as_ref().map_or(0, |(_, covers)| *covers);
    let seq = changes.iter().map(|(seq, _)| *seq).fold(covers, i64::max);
    Ok(Some(LoadedDoc {
        meta: summary.meta,
        state: summary.state,
        snapshot: snapshot.map(|(bytes, _)| bytes),
        changes: changes.into_iter().map(|(_, bytes)| bytes).collect(),
        receipts,
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

/// The receipts of a document's changes stored after log position `since`, in log order.
fn receipts_after(
    conn: &Connection,
    doc: &str,
    since: i64,
) -> Result<Vec<([u8; 32], Receipt)>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT hash, agent, at_ms FROM receipts WHERE doc = ?1 AND seq > ?2 ORDER BY seq",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![doc, since], |row| {
                Ok((row.get::<_, Vec<u8>>(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<(Vec<u8>, String, i64)>>>()
        })
        .map_err(sql("load receipts"))?;
    rows.into_iter()
        .map(|(hash, agent, at_ms)| {
            let hash: [u8; 32] = hash.try_into().map_err(|hash: Vec<u8>| {
                corrupt(format_args!(
                    "a receipt of document {doc} names a hash of {} bytes",
                    hash.len()
                ))
            })?;
            Ok((hash, Receipt { agent, at_ms }))
        })
        .collect()
}

fn position(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| corrupt(format_args!("negative log position {seq}")))
}

pub(super) fn changes_since(
    conn: &mut Connection,
    id: Uuid,
    since: u64,
) -> Result<Option<Delta>, StoreError> {
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
    let receipts = receipts_after(&tx, &doc, since)?;
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
        receipts,
    }))
}

/// At most `limit` documents after `after` (their `seq`), oldest first.
pub(super) fn list_page(
    conn: &mut Connection,
    after: Option<u64>,
    limit: usize,
) -> Result<ListPage, StoreError> {
    let limit = limit.max(1);
    let after = after.map_or(-1, |after| i64::try_from(after).unwrap_or(i64::MAX));
    // One more than asked: whether there is a next page.
    let rows = conn
        .prepare_cached(&format!(
            "SELECT seq, {DOC_COLUMNS} FROM docs WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .and_then(|mut stmt| {
            stmt.query_map(params![after, limit as i64 + 1], |row| {
                let seq: i64 = row.get(0)?;
                Ok((seq, RawDoc::from_row_at(row, 1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql("list documents"))?;
    let more = rows.len() > limit;
    let mut page = ListPage::default();
    for (seq, raw) in rows.into_iter().take(limit) {
        page.docs.push(raw.parse()?);
        page.next =
            Some(u64::try_from(seq).map_err(|_| corrupt(format_args!("document seq {seq}")))?);
    }
    if !more {
        page.next = None;
    }
    Ok(page)
}

pub(super) fn load_idempotency(
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
