//! What one operation may spend: CPU and time.
//!
//! Edits, loads and snapshots are CPU work that can take seconds on a large document or at
//! a stale base. Run on an async worker, such work stalls every other request that worker
//! serves (`/healthz` included). So it runs through [`Cpu::run`]: at most a fixed number at
//! once (the rest wait for a permit, asynchronously), each on a thread of its own, while the
//! async workers go on answering.
//!
//! Most edits are small: a hand-off to another thread would cost more than they do, and on
//! one hot document it costs throughput. So an edit runs in place unless it is *heavy*: its
//! input weighs more than [`LIGHT_WEIGHT`] (operations, JSON values, change bytes / 16), or
//! its document is large (its value over 256 KiB, or over 10,000 changes, which a stale
//! base walks). Loads and snapshots always go through the permits.
//!
//! The time a request may take is its *deadline*, set by the transport for everything the
//! request does ([`within`]: the HTTP handling timeout, the same timeout per WebSocket
//! message). An edit still running at its deadline stops between two operations and rolls
//! back ([`concord_core::Error::DeadlineExceeded`]), so a write refused for time changed
//! nothing.

use std::future::Future;
use std::time::Instant;

use concord_core::Document;
use serde_json::Value;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Semaphore;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `work` with `deadline` as the deadline of everything it does.
pub async fn within<F: Future>(deadline: Instant, work: F) -> F::Output {
    DEADLINE.scope(deadline, work).await
}

/// The deadline of the request being handled, if its transport set one.
pub(super) fn deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// The permits for CPU-heavy work.
pub(super) struct Cpu {
    permits: Semaphore,
}

impl Cpu {
    /// At most `at_once` pieces of work at a time (at least one).
    pub(super) fn new(at_once: usize) -> Self {
        Cpu {
            permits: Semaphore::new(at_once.max(1)),
        }
    }

    /// Runs `work` once a permit is free, off the async workers where the runtime has
    /// others to hand them to (on a single-threaded runtime, as tests use, it runs in place).
    pub(super) async fn run<R>(&self, work: impl FnOnce() -> R) -> R {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the CPU permits are never closed");
        match Handle::try_current() {
            Ok(runtime) if runtime.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(work)
            }
            _ => work(),
        }
    }
}

/// Edits weighing at most this much on a small document run in place (see the module docs).
pub(super) const LIGHT_WEIGHT: usize = 64;
const LIGHT_DOC_BYTES: usize = 256 * 1024;
const LIGHT_CHANGES: usize = 10_000;

/// True if an edit of `weight` to `doc` is light enough to run in place.
pub(super) fn light(weight: usize, doc: &Document) -> bool {
    weight <= LIGHT_WEIGHT
        && doc.json_bytes() <= LIGHT_DOC_BYTES
        && doc.change_count() <= LIGHT_CHANGES
}

/// The number of JSON values in `value` (every scalar, array and object counts one),
/// counted up to `cap`: what a write of it costs, in the unit of [`LIGHT_WEIGHT`].
pub(super) fn json_weight(value: &Value, cap: usize) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        count += 1;
        if count >= cap {
            return cap;
        }
        match value {
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    count
}

/// How many pieces of CPU-heavy work run at once unless the server is told otherwise: one
/// per core.
pub fn default_cpu_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    /// Work that holds its thread (as a long edit does) leaves the async worker to others:
    /// on a runtime of one worker, a task that is not CPU work still runs meanwhile, and
    /// only as many pieces of work as there are permits run at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn heavy_work_leaves_the_workers_free_and_waits_its_turn() {
        let cpu = Arc::new(Cpu::new(1));
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, released) = mpsc::channel::<()>();
        let heavy = tokio::spawn({
            let cpu = Arc::clone(&cpu);
            async move {
                cpu.run(move || {
                    started_tx.send(()).unwrap();
                    // Blocks this thread until another task, on the one worker, answers
                    // (the guard only turns a broken hand-off into a failure, not a hang).
                    released.recv_timeout(Duration::from_secs(60)).is_ok()
                })
                .await
            }
        });
        started.await.unwrap();
        // The permit is taken: more work waits (asynchronously), it does not start.
        assert!(cpu.run(|| ()).now_or_never().is_none());
        // An ordinary task runs on the worker meanwhile and lets the work finish.
        tokio::spawn(async move { release.send(()).unwrap() })
            .await
            .unwrap();
        assert!(
            heavy.await.unwrap(),
            "the worker was free while the work ran"
        );
        // Once it is done, the next runs.
        assert_eq!(cpu.run(|| 7).await, 7);
    }

    #[test]
    fn an_edit_is_light_only_when_small_on_a_small_document() {
        let value = serde_json::json!({"a": [1, 2, {"b": null}], "c": "x"});
        assert_eq!(json_weight(&value, 100), 7);
        assert_eq!(json_weight(&value, 3), 3);
        let doc = |value: Value| {
            let meta = concord_core::WriteMeta {
                agent: "a".into(),
                time_ms: 0,
                message: None,
            };
            Document::create(&value, concord_core::Schema::default(), &meta)
                .unwrap()
                .0
        };
        let small = doc(serde_json::json!({"n": 0}));
        assert!(light(1, &small));
        assert!(light(LIGHT_WEIGHT, &small));
        assert!(!light(LIGHT_WEIGHT + 1, &small));
        let large = doc(serde_json::json!({ "t": "x".repeat(LIGHT_DOC_BYTES) }));
        assert!(!light(1, &large));
    }

    #[tokio::test]
    async fn the_deadline_is_the_transports() {
        assert_eq!(deadline(), None);
        let at = Instant::now() + Duration::from_secs(5);
        assert_eq!(within(at, async { deadline() }).await, Some(at));
    }
}
