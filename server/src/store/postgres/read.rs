//! Reads, on pooled connections: a document, its log after a position, the list, and
//! idempotency records.

use concord_core::schema::Schema;
use concord_core::storage::{
    Delta, DocMeta, DocState, DocSummary, IdempotencyRecord, ListPage, LoadedDoc, Receipt,
    StoreError,
};
use concord_core::strategy::Strategy;
use deadpool_postgres::Object;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{corrupt, pg, to_i64, to_u64, Inner};

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

/// The document row, its snapshot (if it reaches past `since`), its change rows after
/// `since` and their receipts, from ONE statement: one consistent view, one round trip.
/// Part 0 is the row, part 1 the snapshot, part 2 the changes in log order, part 3 the
/// receipts in log order (`bytes` holds the change's hash).
const LOG_AFTER: &str = "
    SELECT 0 AS part, 0::bigint AS seq, NULL::bytea AS bytes,
           version, change_count, updated_at_ms, last_agent,
           NULL::text AS agent, NULL::bigint AS at_ms
      FROM docs WHERE id = $1
    UNION ALL
    SELECT 1, covers_seq, bytes, NULL, NULL, NULL, NULL, NULL, NULL
      FROM snapshots WHERE doc = $1 AND covers_seq > $2
    UNION ALL
    SELECT 2, seq, bytes, NULL, NULL, NULL, NULL, NULL, NULL
      FROM changes WHERE doc = $1 AND seq > $2
    UNION ALL
    SELECT 3, seq, hash, NULL, NULL, NULL, NULL, agent, at_ms
      FROM receipts WHERE doc = $1 AND seq > $2
    ORDER BY part, seq";

impl Inner {
    pub(super) async fn load(&self, id: Uuid) -> Result<Option<LoadedDoc>, StoreError> {
        let conn = self.read_conn().await?;
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
            receipts: delta.receipts,
            seq: delta.seq,
        }))
    }

    pub(super) async fn changes_since(
        &self,
        id: Uuid,
        since: u64,
    ) -> Result<Option<Delta>, StoreError> {
        let conn = self.read_conn().await?;
        log_after(&conn, id, since).await
    }

    /// At most `limit` documents after `after` (their `seq`), oldest first.
    pub(super) async fn list_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ListPage, StoreError> {
        let limit = limit.max(1);
        let after = after.map_or(0, |after| i64::try_from(after).unwrap_or(i64::MAX));
        let conn = self.read_conn().await?;
        // One more than asked: whether there is a next page.
        let rows = conn
            .query(
                &format!(
                    "SELECT {DOC_COLUMNS}, seq FROM docs WHERE seq > $1 ORDER BY seq LIMIT $2"
                ),
                &[&after, &(limit as i64 + 1)],
            )
            .await
            .map_err(|e| pg("list documents", e))?;
        let more = rows.len() > limit;
        let mut page = ListPage::default();
        for row in rows.iter().take(limit) {
            page.docs.push(parse_doc(row)?);
            page.next = Some(to_u64(row.get(8), "document seq")?);
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    pub(super) async fn idempotency(
        &self,
        key: &str,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let conn = self.read_conn().await?;
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
        receipts: Vec::new(),
    };
    for row in rows {
        let seq = to_u64(row.get(1), "log position")?;
        match row.get::<_, i32>(0) {
            1 => delta.snapshot = Some(row.get(2)),
            2 => delta.changes.push(row.get(2)),
            // A receipt's position is its change's: in a row or a snapshot read here, so
            // it moves nothing.
            _ => {
                let hash: Vec<u8> = row.get(2);
                let hash: [u8; 32] = hash.try_into().map_err(|hash: Vec<u8>| {
                    corrupt(format_args!(
                        "a receipt of document {id} names a hash of {} bytes",
                        hash.len()
                    ))
                })?;
                delta.receipts.push((
                    hash,
                    Receipt {
                        agent: row.get(7),
                        at_ms: row.get(8),
                    },
                ));
                continue;
            }
        }
        delta.seq = delta.seq.max(seq);
    }
    Ok(Some(delta))
}
