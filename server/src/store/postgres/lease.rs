//! Leases of the lock strategy (one row per document, tokens from a sequence, expiry by
//! the database's clock) and the queue strategy's writer locks (session advisory locks).

use std::sync::Arc;

use concord_core::storage::{LeaseGrant, StoreError, StoredLease, WriterLock};
use deadpool_postgres::Object;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use uuid::Uuid;

use super::schema::lock_key;
use super::{pg, to_i64, to_u64, Inner, NOW_MS};

impl Inner {
    pub(super) async fn lock_writer(self: &Arc<Self>, id: Uuid) -> Result<WriterLock, StoreError> {
        let inner = Arc::clone(self);
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
        Ok(guard)
    }

    pub(super) async fn lease(&self, id: Uuid) -> Result<Option<StoredLease>, StoreError> {
        let conn = self.read_conn().await?;
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

    pub(super) async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
    ) -> Result<LeaseGrant, StoreError> {
        let conn = self.read_conn().await?;
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

    pub(super) async fn release_lease(
        &self,
        id: Uuid,
        token: u64,
        agent: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.read_conn().await?;
        let token = to_i64(token, "lease token")?;
        let payload = format!("r {} {id}", self.node);
        let rows = conn
            .query(
                "WITH r AS (UPDATE leases SET released = true
                            WHERE doc = $1 AND token = $2 AND agent = $5 AND NOT released
                            RETURNING doc)
                 SELECT pg_notify($3, $4) FROM r",
                &[&id, &token, &self.channel, &payload, &agent],
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
