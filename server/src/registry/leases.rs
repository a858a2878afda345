//! The lock strategy's leases: granted and released in memory on a store of one node, by
//! the store when it is shared.

use super::*;

pub use concord_core::policy::Lease;

/// A lease as the store reported it, its end by this node's clock.
pub(super) fn lease_from(lease: StoredLease, now: i64) -> Lease {
    Lease {
        token: lease.token,
        expires_at_ms: now.saturating_add(lease.remaining_ms),
        agent: lease.agent,
    }
}

impl Registry {
    /// Takes the lock strategy's lease of a document for `ttl_ms`: `Ok(lease)` if granted,
    /// `Err(lease)` with the lease that someone else holds. Kept in memory on a store of
    /// one node, in the store when it is shared.
    pub async fn acquire_lease(
        &self,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
        now: i64,
    ) -> Result<Result<Lease, Lease>, Error> {
        let strategy = self
            .read::<_, Error>(id, |loaded| Ok(loaded.meta.strategy))
            .await?;
        if strategy != Strategy::Lock {
            return Err(Refusal::Strategy(format!(
                "leases belong to lock documents; this one is {strategy}"
            ))
            .into());
        }
        self.coordinator
            .acquire_lease(self, id, agent, ttl_ms, now)
            .await
    }

    /// Releases the lease of `token` if `agent` took it, and wakes lock requests waiting
    /// for it (on every node, through the store's notice when it is shared). Another
    /// agent's token, or no lease's, is refused alike ([`Refusal::NotHolder`]).
    pub async fn release_lease(&self, id: Uuid, token: u64, agent: &str) -> Result<(), Error> {
        if !self
            .coordinator
            .release_lease(self, id, token, agent)
            .await?
        {
            return Err(Refusal::NotHolder.into());
        }
        self.notify_released(id);
        Ok(())
    }

    /// Wakes lock requests waiting on this document.
    pub fn notify_released(&self, id: Uuid) {
        if let Some(slot) = self.slots().get(&id) {
            slot.released.send_modify(|n| *n += 1);
        }
    }

    /// A receiver that changes whenever a lease of this document is released. Take it
    /// before checking the lease, then wait on it.
    pub async fn release_watch(&self, id: Uuid) -> Result<watch::Receiver<u64>, Error> {
        let slot = self.slot(id).await?;
        let mut receiver = slot.released.subscribe();
        receiver.borrow_and_update();
        Ok(receiver)
    }
}
