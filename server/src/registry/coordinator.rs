//! How this node agrees with others about a document, chosen once when the registry is
//! built: [`Local`] when the store has one node (its memory is the truth), [`Shared`] when
//! several nodes write to one store (PostgreSQL). The write path asks the coordinator and
//! never which kind it has.

use super::*;

/// The decisions that depend on whether other nodes write to the store too.
#[async_trait::async_trait]
pub(super) trait Coordinator: Send + Sync {
    /// Brings a document in memory up to the store before it is read, subscribed to or
    /// compacted.
    async fn refresh(&self, registry: &Registry, id: Uuid, slot: &Arc<Slot>) -> Result<(), Error>;

    /// The number of the change a reader must wait for (its batch is not answered yet, and
    /// other nodes could not find the version it shows), or `None`. Called under the
    /// document's lock.
    fn unanswered(&self, slot: &Slot) -> Option<u64>;

    /// Prepares a document locked for a write, so that its edit sees the present: returns
    /// the cluster-wide writer lock to hold until the write is durable, if any.
    async fn prepare_write(
        &self,
        registry: &Registry,
        id: Uuid,
        guard: &mut WriteGuard,
    ) -> Result<Option<WriterLock>, Error>;

    /// What the store must check when it stores a write made at `before`; `None`: the
    /// write is pipelined (published under the lock, acknowledged once durable).
    fn expectation(&self, loaded: &Loaded, before: &Version) -> Option<Expect>;

    /// Grants the lock strategy's lease to `agent` for `ttl_ms` (`Ok`), or says who holds
    /// it (`Err`). The document is known to be a lock document.
    async fn acquire_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
        now: i64,
    ) -> Result<Result<Lease, Lease>, Error>;

    /// Releases the lease of `token` taken by `agent`; false if that token does not hold
    /// it, or `agent` did not take it.
    async fn release_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        token: u64,
        agent: &str,
    ) -> Result<bool, Error>;
}

/// The coordinator for `store`.
pub(super) fn for_store(store: &dyn Store) -> Box<dyn Coordinator> {
    if store.shared() {
        Box::new(Shared)
    } else {
        Box::new(Local)
    }
}

/// One node: memory is the truth; leases live in memory.
pub(super) struct Local;

#[async_trait::async_trait]
impl Coordinator for Local {
    async fn refresh(&self, _: &Registry, _: Uuid, _: &Arc<Slot>) -> Result<(), Error> {
        Ok(())
    }

    fn unanswered(&self, _: &Slot) -> Option<u64> {
        None
    }

    async fn prepare_write(
        &self,
        _: &Registry,
        _: Uuid,
        _: &mut WriteGuard,
    ) -> Result<Option<WriterLock>, Error> {
        Ok(None)
    }

    fn expectation(&self, _: &Loaded, _: &Version) -> Option<Expect> {
        None
    }

    async fn acquire_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
        now: i64,
    ) -> Result<Result<Lease, Lease>, Error> {
        registry
            .update(id, |loaded| match &loaded.lease {
                Some(lease) if lease.expires_at_ms > now => Ok(Err(lease.clone())),
                _ => {
                    loaded.last_token += 1;
                    let lease = Lease {
                        token: loaded.last_token,
                        expires_at_ms: now.saturating_add_unsigned(ttl_ms),
                        agent: agent.to_owned(),
                    };
                    loaded.lease = Some(lease.clone());
                    Ok(Ok(lease))
                }
            })
            .await
    }

    async fn release_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        token: u64,
        agent: &str,
    ) -> Result<bool, Error> {
        let holder = concord_core::policy::Holder {
            agent,
            token: Some(token),
        };
        registry
            .update(id, |loaded| {
                let held = concord_core::policy::check_release(loaded.lease.as_ref(), holder);
                if held.is_ok() {
                    loaded.lease = None;
                }
                Ok(held.is_ok())
            })
            .await
    }
}

/// Several nodes on one store: a document in memory may be behind the store, so it is
/// caught up before every use; decisions that depend on the present (versions, leases, the
/// queue's writer) are made by the store, in the transaction that stores the write (see the
/// module docs of [`super`]).
pub(super) struct Shared;

#[async_trait::async_trait]
impl Coordinator for Shared {
    async fn refresh(&self, registry: &Registry, id: Uuid, slot: &Arc<Slot>) -> Result<(), Error> {
        // A version read on another node must be known here.
        registry.catch_up(id, slot).await
    }

    fn unanswered(&self, slot: &Slot) -> Option<u64> {
        let last = slot
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .last;
        (*slot.answered.borrow() < last).then_some(last)
    }

    async fn prepare_write(
        &self,
        registry: &Registry,
        id: Uuid,
        guard: &mut WriteGuard,
    ) -> Result<Option<WriterLock>, Error> {
        let strategy = guard.loaded().meta.strategy;
        // The queue's cluster-wide writer lock first, so that the catch-up below sees every
        // write before this one; then the edit sees the store's present.
        let writer_lock = match strategy {
            Strategy::Queue => registry.store.lock_writer(id).await?,
            _ => None,
        };
        registry.catch_up_locked(id, guard).await?;
        if strategy == Strategy::Lock {
            // The newest lease, for the policy's check; the store checks it again.
            let now = crate::clock::now_ms();
            guard.loaded().lease = registry.store.lease(id).await?.map(|l| lease_from(l, now));
        }
        Ok(writer_lock)
    }

    fn expectation(&self, loaded: &Loaded, before: &Version) -> Option<Expect> {
        match loaded.meta.strategy {
            Strategy::Optimistic | Strategy::Queue => Some(Expect {
                version: Some(before.to_string()),
                lease: None,
            }),
            // The policy admitted the write with the newest lease's token (token 0 is
            // never issued: without a lease, the store refuses).
            Strategy::Lock => Some(Expect {
                version: None,
                lease: Some(loaded.lease.as_ref().map_or(0, |l| l.token)),
            }),
            Strategy::Crdt | Strategy::Lww | Strategy::Branches => None,
        }
    }

    async fn acquire_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        agent: &str,
        ttl_ms: u64,
        now: i64,
    ) -> Result<Result<Lease, Lease>, Error> {
        Ok(
            match registry.store.acquire_lease(id, agent, ttl_ms).await? {
                LeaseGrant::Granted(lease) => Ok(lease_from(lease, now)),
                LeaseGrant::Held(lease) => Err(lease_from(lease, now)),
            },
        )
    }

    async fn release_lease(
        &self,
        registry: &Registry,
        id: Uuid,
        token: u64,
        agent: &str,
    ) -> Result<bool, Error> {
        registry.read::<_, Error>(id, |_| Ok(())).await?;
        Ok(registry.store.release_lease(id, token, agent).await?)
    }
}
