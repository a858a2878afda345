//! The queue against a writer in memory that keeps a transaction's effects apart until its
//! COMMIT (and undoes a savepoint's on ROLLBACK TO), and can be told to fail. Every job is
//! queued before the writer runs, and the queue is closed, so [`serve`] runs exactly the
//! groups the test expects and returns.

use super::*;
use concord_core::storage::DocState;

/// A document id that sorts by `n`.
fn doc(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn batch(n: u128) -> WriteBatch {
    WriteBatch {
        doc: doc(n),
        create: None,
        changes: Vec::new(),
        state: DocState {
            version: "v".into(),
            change_count: 0,
            updated_at_ms: 0,
            last_agent: None,
        },
        idempotency: None,
    }
}

fn stale() -> Expect {
    Expect {
        version: Some("stale".into()),
        lease: None,
    }
}

#[derive(Default)]
struct Memory {
    max_group: usize,
    in_document_order: bool,
    /// Every call, in order.
    log: Vec<String>,
    /// What committed transactions did.
    stored: Vec<String>,
    /// What the open transaction did so far.
    open: Vec<String>,
    /// `open.len()` at the open savepoint.
    savepoint: usize,
    /// Operations on this document fail (after doing part of their work).
    failing: Option<Uuid>,
    /// How many BEGINs fail before one succeeds.
    failing_begins: usize,
    /// Every COMMIT fails so.
    failing_commit: Option<fn() -> GroupError>,
    /// What `reconnect` answers.
    reconnect: Option<Result<bool, String>>,
    /// `connect` fails with this.
    failing_connect: Option<String>,
    /// Operations on this document fail with a backend error (a torn page, say).
    broken: Option<Uuid>,
}

impl Memory {
    fn new(max_group: usize) -> Memory {
        Memory {
            max_group,
            ..Memory::default()
        }
    }

    /// Does `effect` in the open transaction; fails on the failing document afterwards.
    fn effect(&mut self, id: Uuid, effect: String) -> Result<(), StoreError> {
        self.log.push(effect.clone());
        self.open.push(effect);
        match (self.failing, self.broken) {
            (Some(failing), _) if failing == id => Err(StoreError::NotFound(id)),
            (_, Some(broken)) if broken == id => Err(backend("torn page")),
            _ => Ok(()),
        }
    }
}

fn backend(msg: &str) -> StoreError {
    StoreError::Backend(msg.into())
}

impl Writer for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn max_group(&self) -> usize {
        self.max_group
    }

    fn in_document_order(&self) -> bool {
        self.in_document_order
    }

    async fn connect(&mut self) -> Result<(), StoreError> {
        match &self.failing_connect {
            Some(msg) => Err(backend(msg)),
            None => Ok(()),
        }
    }

    async fn reconnect(&mut self) -> Result<bool, StoreError> {
        self.log.push("reconnect".into());
        match self.reconnect.clone() {
            None => Ok(false),
            Some(answer) => answer.map_err(|msg| backend(&msg)),
        }
    }

    async fn begin(&mut self) -> Result<(), StoreError> {
        self.log.push("BEGIN".into());
        if self.failing_begins > 0 {
            self.failing_begins -= 1;
            return Err(backend("connection lost"));
        }
        self.open.clear();
        Ok(())
    }

    async fn execute(&mut self, statement: &'static str) -> Result<(), StoreError> {
        self.log.push(statement.into());
        match statement {
            SAVEPOINT => self.savepoint = self.open.len(),
            ROLLBACK_TO => self.open.truncate(self.savepoint),
            ROLLBACK => self.open.clear(),
            _ => {}
        }
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &WriteBatch,
        expect: &Expect,
    ) -> Result<Result<(), Refusal>, StoreError> {
        self.effect(batch.doc, format!("write {}", batch.doc.as_u128()))?;
        if expect.version.as_deref() == Some("stale") {
            return Ok(Err(Refusal::Stale {
                current: "v".into(),
            }));
        }
        Ok(Ok(()))
    }

    async fn delete(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let wrote = format!("write {}", id.as_u128());
        let existed = self.stored.contains(&wrote) || self.open.contains(&wrote);
        self.effect(id, format!("delete {}", id.as_u128()))?;
        Ok(existed)
    }

    async fn compact(&mut self, compaction: &Compaction) -> Result<bool, StoreError> {
        self.effect(
            compaction.id,
            format!("compact {}", compaction.id.as_u128()),
        )?;
        Ok(compaction.synced.is_none())
    }

    async fn purge(&mut self, before_ms: i64) -> Result<u64, StoreError> {
        self.effect(Uuid::nil(), format!("purge {before_ms}"))?;
        Ok(7)
    }

    async fn commit(&mut self) -> Result<(), GroupError> {
        self.log.push("COMMIT".into());
        if let Some(failure) = self.failing_commit {
            self.open.clear();
            return Err(failure());
        }
        self.stored.append(&mut self.open);
        Ok(())
    }
}

/// Runs the writer over everything queued so far, closing the queue first.
fn drain(queue: &Queue, jobs: Jobs, writer: &mut Memory) -> GroupCounters {
    queue.close();
    let counters = GroupCounters::default();
    block_on(serve(writer, jobs, &counters));
    counters
}

fn count(log: &[String], entry: &str) -> usize {
    log.iter().filter(|e| *e == entry).count()
}

#[test]
fn a_group_takes_every_queued_job_up_to_the_limit() {
    let (queue, jobs) = Queue::new("the writer");
    let answers: Vec<Checked> = (1..=7)
        .map(|n| queue.write(batch(n), Expect::default()))
        .collect();
    let mut writer = Memory::new(3);
    let counters = drain(&queue, jobs, &mut writer);
    for answer in answers {
        assert_eq!(block_on(answer).unwrap(), Ok(()));
    }
    // 3 + 3 + 1, each group one transaction, committed once, in queue order.
    assert_eq!(count(&writer.log, "BEGIN"), 3);
    assert_eq!(count(&writer.log, "COMMIT"), 3);
    assert_eq!((counters.commits(), counters.batches()), (3, 7));
    let order: Vec<String> = (1..=7).map(|n| format!("write {n}")).collect();
    assert_eq!(writer.stored, order);
}

#[test]
fn each_operation_gets_its_own_typed_answer() {
    let (queue, jobs) = Queue::new("the writer");
    let written = queue.write(batch(1), Expect::default());
    let refused = queue.write(batch(2), stale());
    let deleted = queue.delete(doc(1));
    let missing = queue.delete(doc(9));
    let compacted = queue.compact(doc(3), vec![1], Vec::new(), None);
    let kept_newer = queue.compact(doc(4), vec![1], Vec::new(), Some(5));
    let purged = queue.purge(100);
    let mut writer = Memory::new(16);
    let counters = drain(&queue, jobs, &mut writer);
    assert_eq!(block_on(written).unwrap(), Ok(()));
    assert_eq!(
        block_on(refused).unwrap(),
        Err(Refusal::Stale {
            current: "v".into()
        })
    );
    let deleted: bool = block_on(deleted).unwrap();
    let missing: bool = block_on(missing).unwrap();
    assert!(deleted && !missing);
    let compacted: bool = block_on(compacted).unwrap();
    let kept_newer: bool = block_on(kept_newer).unwrap();
    assert!(compacted && !kept_newer);
    let purged: u64 = block_on(purged).unwrap();
    assert_eq!(purged, 7);
    // One transaction; the refused write was rolled back and not counted.
    assert_eq!((counters.commits(), counters.batches()), (1, 6));
    assert!(!writer.stored.contains(&"write 2".to_owned()));
}

#[test]
fn a_failing_operation_is_rolled_back_alone() {
    let (queue, jobs) = Queue::new("the writer");
    let first = queue.write(batch(1), Expect::default());
    let failing = queue.write(batch(2), Expect::default());
    let last = queue.write(batch(3), Expect::default());
    let mut writer = Memory {
        failing: Some(doc(2)),
        ..Memory::new(16)
    };
    let counters = drain(&queue, jobs, &mut writer);
    assert_eq!(block_on(first).unwrap(), Ok(()));
    assert!(matches!(block_on(failing), Err(StoreError::NotFound(id)) if id == doc(2)));
    assert_eq!(block_on(last).unwrap(), Ok(()));
    // What the failing write did before it failed is gone; the others committed together.
    assert_eq!(writer.stored, ["write 1", "write 3"]);
    assert_eq!(count(&writer.log, ROLLBACK_TO), 1);
    assert_eq!(count(&writer.log, RELEASE), 3);
    assert_eq!((counters.commits(), counters.batches()), (1, 2));
}

#[test]
fn a_group_that_changes_nothing_rolls_back() {
    let (queue, jobs) = Queue::new("the writer");
    let refused = queue.write(batch(1), stale());
    let failing = queue.write(batch(2), Expect::default());
    let mut writer = Memory {
        failing: Some(doc(2)),
        ..Memory::new(16)
    };
    let counters = drain(&queue, jobs, &mut writer);
    assert!(matches!(block_on(refused), Ok(Err(Refusal::Stale { .. }))));
    assert!(matches!(block_on(failing), Err(StoreError::NotFound(_))));
    assert_eq!(count(&writer.log, "COMMIT"), 0);
    assert_eq!(writer.log.last().map(String::as_str), Some(ROLLBACK));
    assert!(writer.stored.is_empty());
    assert_eq!((counters.commits(), counters.batches()), (0, 0));
}

#[test]
fn a_failed_commit_answers_every_job_with_the_error() {
    for (failure, outcome) in [
        (
            (|| GroupError::NothingStored(backend("disk full"))) as fn() -> GroupError,
            "nothing stored",
        ),
        (
            || GroupError::InDoubt(backend("disk full")),
            "the write may or may not be stored",
        ),
    ] {
        let (queue, jobs) = Queue::new("the writer");
        let good = queue.write(batch(1), Expect::default());
        let failing = queue.write(batch(2), Expect::default());
        let refused = queue.write(batch(3), stale());
        let mut writer = Memory {
            failing: Some(doc(2)),
            failing_commit: Some(failure),
            ..Memory::new(16)
        };
        let counters = drain(&queue, jobs, &mut writer);
        // Even the jobs that failed or were refused on their own get the group's error.
        for answer in [good, failing, refused] {
            match block_on(answer) {
                Err(StoreError::Backend(msg)) => {
                    assert!(msg.contains(outcome) && msg.contains("disk full"), "{msg}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(writer.stored.is_empty());
        assert_eq!((counters.commits(), counters.batches()), (0, 0));
        // The transaction is rolled back. With nothing stored the writer is asked whether
        // to run the group again (this one does not); a COMMIT in doubt is never retried.
        let end: &[&str] = if outcome == "nothing stored" {
            &["COMMIT", ROLLBACK, "reconnect"]
        } else {
            &["COMMIT", ROLLBACK]
        };
        let end: Vec<String> = end.iter().map(|e| e.to_string()).collect();
        assert!(writer.log.ends_with(&end), "{:?}", writer.log);
    }
}

#[test]
fn a_group_that_failed_before_commit_runs_once_more_on_a_new_connection() {
    let (queue, jobs) = Queue::new("the writer");
    let answer = queue.write(batch(1), Expect::default());
    let mut writer = Memory {
        failing_begins: 1,
        reconnect: Some(Ok(true)),
        ..Memory::new(16)
    };
    let counters = drain(&queue, jobs, &mut writer);
    assert_eq!(block_on(answer).unwrap(), Ok(()));
    assert_eq!(
        writer.log,
        [
            "BEGIN",
            ROLLBACK,
            "reconnect",
            "BEGIN",
            SAVEPOINT,
            "write 1",
            RELEASE,
            "COMMIT"
        ]
    );
    assert_eq!((counters.commits(), counters.batches()), (1, 1));

    // Once only: failing again answers the error.
    let (queue, jobs) = Queue::new("the writer");
    let answer = queue.write(batch(1), Expect::default());
    let mut writer = Memory {
        failing_begins: 2,
        reconnect: Some(Ok(true)),
        ..Memory::new(16)
    };
    drain(&queue, jobs, &mut writer);
    let err = block_on(answer).unwrap_err().to_string();
    assert!(
        err.contains("nothing stored: storage backend failed: connection lost"),
        "{err}"
    );
    assert_eq!(count(&writer.log, "reconnect"), 1);

    // Not connecting again answers why.
    let (queue, jobs) = Queue::new("the writer");
    let answer = queue.write(batch(1), Expect::default());
    let mut writer = Memory {
        failing_begins: 1,
        reconnect: Some(Err("refused".into())),
        ..Memory::new(16)
    };
    drain(&queue, jobs, &mut writer);
    let err = block_on(answer).unwrap_err().to_string();
    assert!(
        err.contains("nothing stored") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(count(&writer.log, "BEGIN"), 1);

    // A COMMIT in doubt is never run again.
    let (queue, jobs) = Queue::new("the writer");
    let answer = queue.write(batch(1), Expect::default());
    let mut writer = Memory {
        failing_commit: Some(|| GroupError::InDoubt(backend("reset"))),
        reconnect: Some(Ok(true)),
        ..Memory::new(16)
    };
    drain(&queue, jobs, &mut writer);
    assert!(block_on(answer).is_err());
    assert_eq!(count(&writer.log, "reconnect"), 0);
}

/// After a write failed, the writer refuses every later job without running it: a later
/// batch of the same document carries only its own changes and must not be stored
/// without the failed one. A refusal or a write to a deleted document is no failure.
#[test]
fn a_failed_write_stops_the_writer_until_restart() {
    let stopped = |answer: Result<(), StoreError>| {
        let err = answer.unwrap_err().to_string();
        assert!(
            err.contains("the store stopped after a failed write") && err.contains("restart"),
            "{err}"
        );
    };
    // A group that failed as a whole (its COMMIT), one job a group.
    let (queue, jobs) = Queue::new("the writer");
    let first = queue.write(batch(1), Expect::default());
    let second = queue.write(batch(2), Expect::default());
    let delete = queue.delete(doc(3));
    let mut writer = Memory {
        failing_commit: Some(|| GroupError::NothingStored(backend("disk full"))),
        ..Memory::new(1)
    };
    drain(&queue, jobs, &mut writer);
    let err = block_on(first).unwrap_err().to_string();
    assert!(err.contains("disk full"), "{err}");
    stopped(block_on(second).map(drop));
    stopped(block_on(delete).map(drop));
    assert_eq!(
        count(&writer.log, "BEGIN"),
        1,
        "nothing ran after the failure"
    );
    assert!(writer.stored.is_empty());

    // One write failing alone with a backend error: its group commits the others, and
    // then the writer stops.
    let (queue, jobs) = Queue::new("the writer");
    let good = queue.write(batch(1), Expect::default());
    let broken = queue.write(batch(2), Expect::default());
    let later = queue.write(batch(1), Expect::default());
    let mut writer = Memory {
        broken: Some(doc(2)),
        ..Memory::new(2)
    };
    drain(&queue, jobs, &mut writer);
    assert_eq!(block_on(good).unwrap(), Ok(()));
    assert!(block_on(broken)
        .unwrap_err()
        .to_string()
        .contains("torn page"));
    stopped(block_on(later).map(drop));
    assert_eq!(count(&writer.log, "COMMIT"), 1);

    // Refused, or written to a deleted document: answered, and the writer goes on.
    let (queue, jobs) = Queue::new("the writer");
    let refused = queue.write(batch(1), stale());
    let gone = queue.write(batch(2), Expect::default());
    let after = queue.write(batch(3), Expect::default());
    let mut writer = Memory {
        failing: Some(doc(2)),
        ..Memory::new(1)
    };
    drain(&queue, jobs, &mut writer);
    assert!(matches!(block_on(refused), Ok(Err(Refusal::Stale { .. }))));
    assert!(matches!(block_on(gone), Err(StoreError::NotFound(_))));
    assert_eq!(block_on(after).unwrap(), Ok(()));
}

#[test]
fn a_writer_that_cannot_connect_answers_everyone() {
    let (queue, jobs) = Queue::new("the writer");
    let answers = [
        queue.write(batch(1), Expect::default()),
        queue.write(batch(2), Expect::default()),
    ];
    let mut writer = Memory {
        failing_connect: Some("no route".into()),
        ..Memory::new(16)
    };
    drain(&queue, jobs, &mut writer);
    for answer in answers {
        let err = block_on(answer).unwrap_err().to_string();
        assert!(
            err.contains("nothing stored") && err.contains("no route"),
            "{err}"
        );
    }
    assert!(writer.log.is_empty());
}

#[test]
fn document_order_is_stable() {
    let (queue, jobs) = Queue::new("the writer");
    let writes: Vec<Checked> = [3, 1, 2]
        .into_iter()
        .map(|n| queue.write(batch(n), Expect::default()))
        .collect();
    // Queued after the write of document 3, so it runs after it.
    let deleted = queue.delete(doc(3));
    let purged = queue.purge(1);
    let mut writer = Memory {
        in_document_order: true,
        ..Memory::new(16)
    };
    drain(&queue, jobs, &mut writer);
    for answer in writes {
        assert_eq!(block_on(answer).unwrap(), Ok(()));
    }
    assert!(block_on(deleted).unwrap());
    assert_eq!(block_on(purged).unwrap(), 7);
    assert_eq!(
        writer.stored,
        ["purge 1", "write 1", "write 2", "write 3", "delete 3"]
    );
}

#[test]
fn a_closed_queue_refuses_and_the_writer_answers_what_came_before() {
    let (queue, jobs) = Queue::new("the writer thread");
    let before = queue.write(batch(1), Expect::default());
    queue.close();
    let after = block_on(queue.write(batch(2), Expect::default()));
    assert!(
        matches!(&after, Err(StoreError::Backend(m)) if m == "write refused: the store is closed"),
        "{after:?}"
    );
    let late = block_on(queue.delete(doc(1)));
    assert!(matches!(late, Err(StoreError::Backend(_))), "{late:?}");
    let mut writer = Memory::new(16);
    drain(&queue, jobs, &mut writer);
    assert_eq!(block_on(before).unwrap(), Ok(()));
    assert_eq!(writer.stored, ["write 1"]);
}

#[test]
fn a_writer_gone_is_an_error_not_a_hang() {
    let (queue, mut jobs) = Queue::new("the writer thread");
    // A job the writer drops unanswered.
    let dropped = queue.write(batch(1), Expect::default());
    let job = jobs.try_recv().unwrap();
    drop(job);
    let err = block_on(dropped).unwrap_err().to_string();
    assert!(
        err.contains("write failed: the writer thread stopped before answering"),
        "{err}"
    );
    // No writer at all.
    drop(jobs);
    let err = block_on(queue.write(batch(2), Expect::default()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("write refused: the writer thread has stopped"),
        "{err}"
    );
}

#[test]
fn block_on_waits_for_a_wake_from_another_thread() {
    let (sender, receiver) = oneshot::channel();
    let thread = std::thread::spawn(move || block_on(receiver));
    sender.send(5).unwrap();
    assert_eq!(thread.join().unwrap(), Ok(5));
}
