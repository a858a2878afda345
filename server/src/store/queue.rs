//! The group-commit queue both stores write through.
//!
//! Every mutation of a store ([`Store::write_checked`], [`Store::delete`], compactions,
//! purges) is queued as a [`Job`] in the calling thread, together with a one-shot channel
//! typed by what that operation answers: a write answers `Result<(), Refusal>`, a delete
//! whether the document existed, a compaction whether its snapshot was kept, a purge how
//! many records it removed. Queueing happens in the call (not when the returned future is
//! first polled), so operations run in the order they were called.
//!
//! One writer owns the store's write connection and runs [`serve`]: it waits for the first
//! queued job, takes every other job queued at that moment (up to [`Writer::max_group`])
//! and runs the group in ONE transaction, each operation in its own savepoint. An operation
//! that fails, or whose [`Expect`] does not hold, is rolled back alone and answered its own
//! error or refusal, while the others go on. If any operation changed the store the group
//! commits once (one durable commit for all of them), else it rolls back; only then are
//! the callers answered. If the group fails as a whole (its BEGIN, a savepoint, its
//! COMMIT, ...) every caller is answered [`StoreError::Backend`]. So `Ok` always means
//! "durable", and under concurrent load many operations share one commit.
//!
//! What differs between the stores is behind [`Writer`]: the SQL of each operation,
//! whether a group runs in document order, what a failed COMMIT means, and whether a group
//! that failed before its COMMIT runs once more on a new connection. SQLite's writer is a
//! thread of its own that drives [`serve`] with [`block_on`]; PostgreSQL's is a task.
//!
//! Closing the queue ([`Queue::close`]) refuses later operations; the writer still runs
//! and answers every job queued before, then [`serve`] returns.
//!
//! # Fail-stop
//! A write that failed (its group as a whole, or the write alone with a backend error) is
//! not stored, but the document in memory has its change; a later write of that document
//! builds on it, and its batch carries only its own changes. So after such a failure the
//! writer *stops*: it refuses every later job, until the server restarts and documents
//! load from what is stored (as PostgreSQL stops after a failed fsync). Nothing
//! acknowledged can then depend on a change that was not stored. A refused write (its
//! [`Expect`] did not hold) and a write to a document deleted or created meanwhile are
//! answers, not failures.
//!
//! [`Store::write_checked`]: concord_core::storage::Store::write_checked
//! [`Store::delete`]: concord_core::storage::Store::delete

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll, Wake, Waker};

use concord_core::storage::{Checked, Expect, Refusal, StoreError, WriteBatch};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Opens a savepoint around one operation of a group.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT op";
/// Keeps what the operation did (or, after [`ROLLBACK_TO`], closes the savepoint).
pub(crate) const RELEASE: &str = "RELEASE SAVEPOINT op";
/// Undoes the operation alone.
pub(crate) const ROLLBACK_TO: &str = "ROLLBACK TO SAVEPOINT op";
/// Ends the group's transaction without storing anything.
pub(crate) const ROLLBACK: &str = "ROLLBACK";

/// A compaction: replaces the change records `covered` of document `id` by `snapshot`.
#[derive(Debug)]
pub(crate) struct Compaction {
    pub(crate) id: Uuid,
    pub(crate) snapshot: Vec<u8>,
    pub(crate) covered: Vec<[u8; 32]>,
    /// How far the compacting node had read the log (`None`: unconditionally); see
    /// `Store::compact_from`.
    pub(crate) synced: Option<u64>,
}

/// The writer's end of an operation's answer: the channel its caller waits on, and the
/// result the operation had in the group's transaction, kept until the group committed
/// (then it is sent) or failed (then the group's error is).
pub(crate) struct Reply<T> {
    sender: oneshot::Sender<Result<T, StoreError>>,
    result: Option<Result<T, StoreError>>,
}

impl<T> Reply<T> {
    /// Keeps `result`; true if the operation changed the store: `Ok`, with a value that
    /// `changed` accepts.
    fn keep(&mut self, result: Result<T, StoreError>, changed: impl FnOnce(&T) -> bool) -> bool {
        let stored = result.as_ref().is_ok_and(changed);
        self.result = Some(result);
        stored
    }

    /// Sends the kept result. A group is answered this way only after every job in it ran,
    /// so there is one; were there none, the caller would get an error, not a panic.
    fn answer(self) {
        let result = self.result.unwrap_or_else(|| {
            Err(StoreError::Backend(
                "nothing stored: the group ended before this operation ran".into(),
            ))
        });
        // A caller that stopped waiting is not an error: its operation is done.
        let _ = self.sender.send(result);
    }

    fn fail(self, error: StoreError) {
        let _ = self.sender.send(Err(error));
    }
}

/// One mutation queued for the writer, with its typed [`Reply`].
pub(crate) enum Job {
    /// Stores the batch if `expect` holds; answers the refusal if it does not.
    Write {
        batch: Box<WriteBatch>,
        expect: Expect,
        reply: Reply<Result<(), Refusal>>,
    },
    /// Deletes a document; answers whether it was stored.
    Delete { id: Uuid, reply: Reply<bool> },
    /// Answers whether the snapshot was stored (`false`: a newer one was kept).
    Compact {
        compaction: Box<Compaction>,
        reply: Reply<bool>,
    },
    /// Forgets idempotency records older than `before_ms`; answers how many.
    Purge { before_ms: i64, reply: Reply<u64> },
}

impl Job {
    /// The document the operation locks (none for a purge: the nil id).
    fn doc(&self) -> Uuid {
        match self {
            Job::Write { batch, .. } => batch.doc,
            Job::Delete { id, .. } => *id,
            Job::Compact { compaction, .. } => compaction.id,
            Job::Purge { .. } => Uuid::nil(),
        }
    }

    /// Runs the operation inside the open transaction and keeps its result. True if it
    /// changed the store; a refused write and a failed operation did not.
    async fn apply<W: Writer>(&mut self, writer: &mut W) -> bool {
        match self {
            Job::Write {
                batch,
                expect,
                reply,
            } => reply.keep(writer.write(batch, expect).await, Result::is_ok),
            Job::Delete { id, reply } => reply.keep(writer.delete(*id).await, |_| true),
            Job::Compact { compaction, reply } => {
                reply.keep(writer.compact(compaction).await, |_| true)
            }
            Job::Purge { before_ms, reply } => reply.keep(writer.purge(*before_ms).await, |_| true),
        }
    }

    /// A write that failed on its own with a backend error (not a refusal, and not a
    /// document deleted or created meanwhile): why the writer must stop.
    fn write_failure(&self) -> Option<String> {
        match self {
            Job::Write {
                batch,
                reply:
                    Reply {
                        result: Some(Err(StoreError::Backend(error))),
                        ..
                    },
                ..
            } => Some(format!("a write of document {} failed: {error}", batch.doc)),
            _ => None,
        }
    }

    /// Sends the kept result (the group committed, or stored nothing and rolled back).
    fn answer(self) {
        match self {
            Job::Write { reply, .. } => reply.answer(),
            Job::Delete { reply, .. } | Job::Compact { reply, .. } => reply.answer(),
            Job::Purge { reply, .. } => reply.answer(),
        }
    }

    /// Answers the group's failure instead.
    fn fail(self, message: &str) {
        let error = StoreError::Backend(message.to_owned());
        match self {
            Job::Write { reply, .. } => reply.fail(error),
            Job::Delete { reply, .. } | Job::Compact { reply, .. } => reply.fail(error),
            Job::Purge { reply, .. } => reply.fail(error),
        }
    }
}

/// Why a group failed as a whole.
#[derive(Debug)]
pub(crate) enum GroupError {
    /// Nothing of the group is stored.
    NothingStored(StoreError),
    /// COMMIT was sent and failed: the group may or may not be stored.
    InDoubt(StoreError),
}

impl From<StoreError> for GroupError {
    fn from(error: StoreError) -> Self {
        GroupError::NothingStored(error)
    }
}

/// What a store does for its writer: its SQL, inside the transaction [`serve`] opens for
/// each group. An error of [`Writer::write`], [`Writer::delete`], [`Writer::compact`] or
/// [`Writer::purge`] fails that operation alone (its savepoint is rolled back); an error
/// of any other method fails the whole group.
pub(crate) trait Writer {
    /// The store's name in logs.
    fn name(&self) -> &'static str;
    /// The most jobs one group takes.
    fn max_group(&self) -> usize;
    /// True if a group runs sorted by document id (a stable sort: one document's
    /// operations keep their queue order), so that writers of several nodes lock
    /// documents in one order and cannot deadlock; else in queue order.
    fn in_document_order(&self) -> bool;
    /// Makes sure the writer can run a group (connects if it has no usable connection).
    /// An error answers every job of the group: nothing of it was stored.
    async fn connect(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
    /// After a group failed before its COMMIT (nothing of it stored): connects again so
    /// that it runs once more, `Ok(true)`; `Ok(false)` if this writer does not retry (the
    /// group is then answered its error).
    async fn reconnect(&mut self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Begins the group's transaction.
    async fn begin(&mut self) -> Result<(), StoreError>;
    /// Runs a transaction control statement ([`SAVEPOINT`], [`RELEASE`], [`ROLLBACK_TO`],
    /// [`ROLLBACK`]), the same in both dialects.
    async fn execute(&mut self, statement: &'static str) -> Result<(), StoreError>;
    /// Stores a batch if `expect` holds.
    async fn write(
        &mut self,
        batch: &WriteBatch,
        expect: &Expect,
    ) -> Result<Result<(), Refusal>, StoreError>;
    /// Deletes a document and all it stored; `false` if it was not stored.
    async fn delete(&mut self, id: Uuid) -> Result<bool, StoreError>;
    /// Stores a compaction's snapshot; `false` if a newer snapshot was kept instead.
    async fn compact(&mut self, compaction: &Compaction) -> Result<bool, StoreError>;
    /// Forgets idempotency records created before `before_ms`; how many.
    async fn purge(&mut self, before_ms: i64) -> Result<u64, StoreError>;
    /// Commits the group's transaction, durably.
    async fn commit(&mut self) -> Result<(), GroupError>;
}

/// Counters of a writer, for tests and benchmarks.
#[derive(Debug, Default)]
pub(crate) struct GroupCounters {
    commits: AtomicU64,
    batches: AtomicU64,
}

impl GroupCounters {
    /// Group transactions committed.
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Operations answered `Ok` after their group committed. A group in which no operation
    /// changed the store is rolled back, not committed, so `commits <= batches` holds.
    pub(crate) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// The writer's end of the queue.
pub(crate) type Jobs = mpsc::UnboundedReceiver<Job>;

/// The callers' end of the queue.
pub(crate) struct Queue {
    sender: RwLock<Option<mpsc::UnboundedSender<Job>>>,
    /// How errors name the writer ("the writer thread").
    writer: &'static str,
}

impl Queue {
    /// A queue and its writer's end; `writer` names the writer in errors.
    pub(crate) fn new(writer: &'static str) -> (Queue, Jobs) {
        let (sender, jobs) = mpsc::unbounded_channel();
        let queue = Queue {
            sender: RwLock::new(Some(sender)),
            writer,
        };
        (queue, jobs)
    }

    /// Queues a job now; the future resolves to its answer.
    fn submit<T: Send + 'static>(
        &self,
        name: &'static str,
        job: impl FnOnce(Reply<T>) -> Job,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError> {
        let writer = self.writer;
        let (sender, answer) = oneshot::channel();
        let reply = Reply {
            sender,
            result: None,
        };
        {
            let guard = self.sender.read().unwrap_or_else(PoisonError::into_inner);
            let queue = guard.as_ref().ok_or_else(|| {
                StoreError::Backend(format!("{name} refused: the store is closed"))
            })?;
            queue.send(job(reply)).map_err(|_| {
                StoreError::Backend(format!("{name} refused: {writer} has stopped"))
            })?;
        }
        Ok(async move {
            answer.await.map_err(|_| {
                StoreError::Backend(format!("{name} failed: {writer} stopped before answering"))
            })?
        })
    }

    /// Queues a write now (see `Store::write_checked`).
    pub(crate) fn write(&self, batch: WriteBatch, expect: Expect) -> Checked {
        let answer = self.submit("write", move |reply| Job::Write {
            batch: Box::new(batch),
            expect,
            reply,
        });
        Box::pin(async move { answer?.await })
    }

    /// Queues a delete now; it answers `false` if the document was not stored.
    pub(crate) fn delete(&self, id: Uuid) -> impl Future<Output = Result<bool, StoreError>> {
        let answer = self.submit("delete", move |reply| Job::Delete { id, reply });
        async move { answer?.await }
    }

    /// Queues a compaction now: the change records `covered` of document `id` replaced by
    /// `snapshot`, by a node that read the log up to `synced` (`None`: unconditionally, see
    /// `Store::compact_from`). It answers `false` if a newer snapshot was kept instead.
    pub(crate) fn compact(
        &self,
        id: Uuid,
        snapshot: Vec<u8>,
        covered: Vec<[u8; 32]>,
        synced: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> {
        let compaction = Box::new(Compaction {
            id,
            snapshot,
            covered,
            synced,
        });
        let answer = self.submit("compact", move |reply| Job::Compact { compaction, reply });
        async move { answer?.await }
    }

    /// Queues a purge of the idempotency records created before `before_ms` now; it
    /// answers how many there were.
    pub(crate) fn purge(&self, before_ms: i64) -> impl Future<Output = Result<u64, StoreError>> {
        let answer = self.submit("purge_idempotency", move |reply| Job::Purge {
            before_ms,
            reply,
        });
        async move { answer?.await }
    }

    /// Refuses every later operation. The writer answers the ones queued before, then
    /// [`serve`] returns. Idempotent.
    pub(crate) fn close(&self) {
        drop(
            self.sender
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// The writer: runs the queued jobs group by group, until the queue is closed and every
/// job queued before has been answered.
pub(crate) async fn serve<W: Writer>(writer: &mut W, mut jobs: Jobs, counters: &GroupCounters) {
    let mut group = Vec::new();
    // Why the writer stopped (see the module docs), once it has.
    let mut stopped: Option<String> = None;
    // `recv_many` waits for one job, then takes those queued behind it; it answers 0 only
    // once the queue is closed and drained.
    while jobs.recv_many(&mut group, writer.max_group()).await > 0 {
        let group = std::mem::take(&mut group);
        match &stopped {
            Some(why) => fail_all(group, &stopped_message(why)),
            None => {
                stopped = run_group(writer, group, counters).await;
                if let Some(why) = &stopped {
                    tracing::error!(store = writer.name(), reason = %why, "the store stopped after a failed write: every later write is refused until the server restarts");
                    metrics::counter!(crate::metrics::STORE_STOPPED, "store" => writer.name())
                        .increment(1);
                }
            }
        }
    }
    tracing::debug!(store = writer.name(), "writer exiting");
}

/// What every job after the writer stopped is answered.
fn stopped_message(why: &str) -> String {
    format!(
        "nothing stored: the store stopped after a failed write ({why}); restart the server \
         to load what is stored"
    )
}

/// True if the group holds a write: its failure stops the writer.
fn has_write(group: &[Job]) -> bool {
    group.iter().any(|job| matches!(job, Job::Write { .. }))
}

/// Runs one group and answers every job of it, only after its transaction ended. Returns
/// why the writer must stop, if a write failed (see the module docs).
async fn run_group<W: Writer>(
    writer: &mut W,
    mut group: Vec<Job>,
    counters: &GroupCounters,
) -> Option<String> {
    let store = writer.name();
    if let Err(e) = writer.connect().await {
        tracing::error!(store, error = %e, "writer cannot connect");
        let stop = has_write(&group).then(|| format!("cannot connect: {e}"));
        fail_all(group, &format!("nothing stored: {e}"));
        return stop;
    }
    if writer.in_document_order() {
        group.sort_by_key(Job::doc);
    }
    let mut retried = false;
    let failure = loop {
        let failure = match transact(writer, &mut group).await {
            Ok(stored) => {
                if stored > 0 {
                    counters.commits.fetch_add(1, Ordering::Relaxed);
                    counters.batches.fetch_add(stored, Ordering::Relaxed);
                }
                tracing::trace!(store, size = group.len(), stored, "group done");
                let stop = group.iter().find_map(Job::write_failure);
                group.into_iter().for_each(Job::answer);
                return stop;
            }
            Err(failure) => failure,
        };
        // The transaction may still be open (a statement before COMMIT failed).
        let _ = writer.execute(ROLLBACK).await;
        match failure {
            // Nothing of it is stored: the connection was likely dropped by the database
            // (a restart, a failover). A writer that can runs it again, once, on a new one.
            GroupError::NothingStored(error) if !retried => match writer.reconnect().await {
                Ok(true) => {
                    tracing::warn!(store, size = group.len(), %error, "group failed before commit; retrying on a new connection");
                    retried = true;
                }
                Ok(false) => break GroupError::NothingStored(error),
                Err(e) => {
                    tracing::error!(store, error = %e, "writer cannot connect again");
                    let stop = has_write(&group).then(|| format!("cannot connect again: {e}"));
                    fail_all(group, &format!("nothing stored: {e}"));
                    return stop;
                }
            },
            failure => break failure,
        }
    };
    let (outcome, error) = match failure {
        GroupError::NothingStored(error) => ("nothing stored", error),
        GroupError::InDoubt(error) => ("the write may or may not be stored", error),
    };
    tracing::error!(store, size = group.len(), %error, "group commit failed");
    let stop = has_write(&group).then(|| format!("a group transaction failed, {outcome}: {error}"));
    fail_all(
        group,
        &format!("group transaction failed, {outcome}: {error}"),
    );
    stop
}

fn fail_all(group: Vec<Job>, message: &str) {
    for job in group {
        job.fail(message);
    }
}

/// Runs the group in one transaction, each operation in its own savepoint, and commits if
/// any changed the store (rolls back otherwise). Returns how many did.
async fn transact<W: Writer>(writer: &mut W, group: &mut [Job]) -> Result<u64, GroupError> {
    writer.begin().await?;
    let mut stored = 0;
    for job in group.iter_mut() {
        writer.execute(SAVEPOINT).await?;
        if job.apply(writer).await {
            writer.execute(RELEASE).await?;
            stored += 1;
        } else {
            writer.execute(ROLLBACK_TO).await?;
            writer.execute(RELEASE).await?;
        }
    }
    if stored > 0 {
        let started = std::time::Instant::now();
        writer.commit().await?;
        let store = writer.name();
        metrics::histogram!(crate::metrics::STORE_COMMIT_SECONDS, "store" => store)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::STORE_GROUP, "store" => store).record(stored as f64);
        metrics::counter!(crate::metrics::STORE_COMMITS, "store" => store).increment(1);
    } else {
        writer.execute(ROLLBACK).await?;
    }
    Ok(stored)
}

/// Runs a future to its end on this thread, parking the thread while the future waits:
/// how SQLite's writer thread drives [`serve`].
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            // A wake before the park makes the park return at once; a spurious return
            // only polls once more.
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests;
