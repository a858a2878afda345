//! What a write batch and a compaction do to a store, written once for both stores: the
//! checks, their order and the errors. Each store supplies the statements, in its SQL
//! dialect, through [`BatchSql`]; its writer runs these inside the savepoint the queue opens
//! for the operation, so whatever an operation did before it failed or was refused is
//! rolled back with it.

use concord_core::storage::{
    DocMeta, DocState, Expect, IdempotencyRecord, Refusal, StoreError, StoredChange, WriteBatch,
};
use uuid::Uuid;

use super::queue::Compaction;

/// The statements of a store's writer, one each.
pub(crate) trait BatchSql {
    /// Inserts a document's row; `false` if a document with its id is stored.
    async fn insert_doc(
        &self,
        meta: &DocMeta,
        schema: &str,
        state: &DocState,
        change_count: i64,
    ) -> Result<bool, StoreError>;
    /// Sets a stored document's state, locking its row until the transaction ends, if its
    /// version is `expected` (any version if `None`); `false` if no row was changed.
    async fn update_doc(
        &self,
        id: Uuid,
        state: &DocState,
        change_count: i64,
        expected: Option<&str>,
    ) -> Result<bool, StoreError>;
    /// The stored version of a document, `None` if it is not stored.
    async fn doc_version(&self, id: Uuid) -> Result<Option<String>, StoreError>;
    /// Why the lease with `token` does not admit a write of the document, if it does not;
    /// the lease must not change hands before the transaction ends.
    async fn check_lease(&self, id: Uuid, token: u64) -> Result<Option<Refusal>, StoreError>;
    /// Inserts change records in order, ignoring those the document has.
    async fn insert_changes(&self, id: Uuid, changes: &[StoredChange]) -> Result<(), StoreError>;
    /// Stores an idempotency record (`headers` as JSON), replacing one with its key.
    async fn put_idempotency(
        &self,
        record: &IdempotencyRecord,
        headers: &str,
    ) -> Result<(), StoreError>;
    /// Locks a document's row until the transaction ends; `false` if it is not stored.
    async fn lock_doc(&self, id: Uuid) -> Result<bool, StoreError>;
    /// How far the document's snapshot reaches, `None` if it has none.
    async fn snapshot_covers(&self, id: Uuid) -> Result<Option<i64>, StoreError>;
    /// Deletes the document's change records with these hashes; the highest log position
    /// among them (0 if none was stored).
    async fn delete_covered(&self, id: Uuid, covered: &[[u8; 32]]) -> Result<i64, StoreError>;
    /// Stores the snapshot, replacing the document's one; its `covers_seq` becomes the
    /// larger of the old one and `covers`.
    async fn put_snapshot(&self, id: Uuid, snapshot: &[u8], covers: i64) -> Result<(), StoreError>;
}

/// Stores a batch if `expect` holds: creates or updates the document's row, then adds its
/// changes and idempotency record. A refusal or an error may come after some of it ran.
pub(crate) async fn write<S: BatchSql>(
    sql: &S,
    batch: &WriteBatch,
    expect: &Expect,
) -> Result<Result<(), Refusal>, StoreError> {
    let id = batch.doc;
    let state = &batch.state;
    let change_count = i64::try_from(state.change_count).map_err(|_| {
        StoreError::Backend(format!(
            "change count {} does not fit in a 64-bit integer",
            state.change_count
        ))
    })?;
    if let Some(meta) = &batch.create {
        if meta.id != id {
            return Err(StoreError::Backend(format!(
                "write batch for {id} creates a document with id {}",
                meta.id
            )));
        }
        let schema = serde_json::to_string(&meta.schema)
            .map_err(|e| StoreError::Backend(format!("cannot encode schema of {id}: {e}")))?;
        if !sql.insert_doc(meta, &schema, state, change_count).await? {
            return Err(StoreError::AlreadyExists(id));
        }
    } else {
        let expected = expect.version.as_deref();
        if !sql.update_doc(id, state, change_count, expected).await? {
            return match sql.doc_version(id).await? {
                None => Err(StoreError::NotFound(id)),
                Some(current) => Ok(Err(Refusal::Stale { current })),
            };
        }
    }
    if let Some(token) = expect.lease {
        if let Some(refusal) = sql.check_lease(id, token).await? {
            return Ok(Err(refusal));
        }
    }
    if !batch.changes.is_empty() {
        sql.insert_changes(id, &batch.changes).await?;
    }
    if let Some(record) = &batch.idempotency {
        let headers = serde_json::to_string(&record.headers).map_err(|e| {
            StoreError::Backend(format!("cannot encode headers of idempotency record: {e}"))
        })?;
        sql.put_idempotency(record, &headers).await?;
    }
    Ok(Ok(()))
}

/// Replaces the covered change records by the snapshot; `false` (storing nothing) if the
/// stored snapshot reaches past what the compacting node had read.
pub(crate) async fn compact<S: BatchSql>(
    sql: &S,
    compaction: &Compaction,
) -> Result<bool, StoreError> {
    let id = compaction.id;
    if !sql.lock_doc(id).await? {
        return Err(StoreError::NotFound(id));
    }
    if let Some(synced) = compaction.synced {
        let synced = i64::try_from(synced).unwrap_or(i64::MAX);
        if sql
            .snapshot_covers(id)
            .await?
            .is_some_and(|covers| covers > synced)
        {
            // A newer snapshot may hold records this one lacks: keep it.
            return Ok(false);
        }
    }
    let covers = sql.delete_covered(id, &compaction.covered).await?;
    sql.put_snapshot(id, &compaction.snapshot, covers).await?;
    Ok(true)
}
