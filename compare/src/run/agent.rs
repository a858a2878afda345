//! One agent of a strategy's run: its writes one after another, each made the way the
//! strategy requires (read, think, write; retry where the strategy refuses).

use std::sync::Arc;
use std::time::Duration;

use concord_core::Strategy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::Barrier;

use super::{Cost, Step, Tracker};
use crate::board::TaskEdit;
use crate::history::{Basis, Effect, Phase, Recorder};
use crate::wire::{Reply, Wire};
use crate::workload::{agent_name, intent, resolve, rewrite, Workload};
use crate::ThinkRange;

/// How long a lock request waits on the server before asking again (the server allows 60 s).
const LOCK_WAIT_MS: u64 = 30_000;
/// An optimistic or lock writer gives up on one write after this many refusals.
const MAX_RETRIES: u64 = 1_000;

/// What every agent of one strategy's run shares.
pub(super) struct Shared {
    pub(super) wire: Wire,
    pub(super) strategy: Strategy,
    pub(super) workload: Workload,
    pub(super) think: ThinkRange,
    pub(super) seed: u64,
    pub(super) doc: String,
    pub(super) recorder: Recorder,
    pub(super) tracker: Tracker,
    /// With lockstep: every agent starts a round together, and (but for lock, whose agents
    /// read only once they hold the lease) every agent has read before any agent writes.
    pub(super) gates: Option<(Barrier, Barrier)>,
    pub(super) lock_ttl_ms: u64,
}

/// One write being made.
struct Write<'a> {
    doc: &'a str,
    agent: &'a str,
    mark: &'a str,
    /// What the agent set out to do.
    effect: &'a Effect,
    /// The write as made from the agent's (last) read: see [`resolve`].
    bound: &'a mut Effect,
    /// When that read and the write happened, for the history.
    basis: &'a mut Basis,
    step: Step,
    cost: &'a mut Cost,
}

fn phase_of(reply: &Reply) -> Phase {
    match reply {
        Reply::Done { .. } => Phase::Ok,
        Reply::Refused { .. } => Phase::Fail,
        Reply::Unknown(_) => Phase::Unknown,
    }
}

/// The value and version of a read, if it succeeded.
fn read_parts(reply: &Reply) -> Option<(Value, String)> {
    Some((reply.value()?.clone(), reply.version()?))
}

async fn think(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

impl Shared {
    async fn round_gate(&self) {
        if let Some((round, _)) = &self.gates {
            round.wait().await;
        }
    }

    /// Called exactly once per write, right after the first read, by every strategy but
    /// lock (whose agents would wait here holding the lease: a deadlock).
    async fn read_gate(&self) {
        if let Some((_, read)) = &self.gates {
            if self.strategy != Strategy::Lock {
                read.wait().await;
            }
        }
    }

    /// Reads the document for `w`, noting when in its basis.
    async fn read(&self, w: &mut Write<'_>) -> Reply {
        let sent = self.recorder.now_ms();
        let reply = self.wire.read(w.doc, w.agent).await;
        let answered = self.recorder.now_ms();
        w.basis.read_sent_ms = Some(sent);
        w.basis.read_ms = Some(answered);
        reply
    }

    /// Binds `w`'s write to `value`, the value just read, and rewrites it.
    fn rewrite(&self, w: &mut Write<'_>, value: &Value) -> Value {
        *w.bound = resolve(w.effect, value, w.mark, w.step.pick);
        rewrite(value, w.bound, w.mark, w.agent, w.step.pick)
    }

    /// Notes that `w`'s write is being sent now.
    fn sending(&self, w: &mut Write<'_>) {
        let now = self.recorder.now_ms();
        w.basis.sent_ms = Some(now);
        w.cost.write_ms.get_or_insert(now);
    }

    /// crdt, lww and branches (on the agent's fork): read, think, send the whole document
    /// back with the version read.
    async fn rewrite_and_put(&self, mut w: Write<'_>) -> Phase {
        let read = self.read(&mut w).await;
        w.cost.read_ms = Some(self.recorder.now_ms());
        self.read_gate().await;
        let Some((value, version)) = read_parts(&read) else {
            return Phase::Fail;
        };
        think(w.step.think_ms).await;
        let value = self.rewrite(&mut w, &value);
        self.sending(&mut w);
        phase_of(&self.wire.put(w.doc, w.agent, &version, None, &value).await)
    }

    /// optimistic: read, think, write if the version is still current; on 412 read again,
    /// think again, and retry.
    async fn optimistic(&self, mut w: Write<'_>, retry_rng: &mut ChaCha8Rng) -> Phase {
        let read = self.read(&mut w).await;
        w.cost.read_ms = Some(self.recorder.now_ms());
        self.read_gate().await;
        let Some((mut value, mut version)) = read_parts(&read) else {
            return Phase::Fail;
        };
        think(w.step.think_ms).await;
        loop {
            let new = self.rewrite(&mut w, &value);
            self.sending(&mut w);
            let reply = self.wire.put(w.doc, w.agent, &version, None, &new).await;
            if reply.status() != 412 {
                return phase_of(&reply);
            }
            w.cost.retries += 1;
            if w.cost.retries >= MAX_RETRIES {
                return Phase::Fail;
            }
            let Some(again) = read_parts(&self.read(&mut w).await) else {
                return Phase::Fail;
            };
            (value, version) = again;
            // The agent must reason again over what it now sees: wasted thinking.
            think(retry_rng.random_range(self.think.min..=self.think.max)).await;
        }
    }

    /// lock: take the lease (waiting for it), read, think, write with the token, release.
    /// A write refused because the lease lapsed is retried from the start.
    async fn locked(&self, mut w: Write<'_>) -> Phase {
        loop {
            let token = loop {
                let asked = self.recorder.now_ms();
                let reply = self
                    .wire
                    .lock(w.doc, w.agent, self.lock_ttl_ms, LOCK_WAIT_MS)
                    .await;
                w.cost.lock_wait_ms += self.recorder.now_ms() - asked;
                match &reply {
                    Reply::Done { body, .. } => match body["token"].as_str() {
                        Some(token) => break token.to_owned(),
                        None => return Phase::Fail,
                    },
                    // Still held after the wait: ask again.
                    Reply::Refused { status, .. } if status.as_u16() == 423 => continue,
                    // Without a lease the write is never sent: it did not happen.
                    _ => return Phase::Fail,
                }
            };
            let read = self.read(&mut w).await;
            w.cost.read_ms.get_or_insert(self.recorder.now_ms());
            let Some((value, version)) = read_parts(&read) else {
                self.wire.unlock(w.doc, w.agent, &token).await;
                return Phase::Fail;
            };
            think(w.step.think_ms).await;
            let value = self.rewrite(&mut w, &value);
            self.sending(&mut w);
            let reply = self
                .wire
                .put(w.doc, w.agent, &version, Some(&token), &value)
                .await;
            // Refused if the lease lapsed meanwhile; then there is nothing to release.
            self.wire.unlock(w.doc, w.agent, &token).await;
            match &reply {
                Reply::Refused { kind, .. }
                    if matches!(kind.as_str(), "fenced" | "lease-expired")
                        && w.cost.retries + 1 < MAX_RETRIES =>
                {
                    w.cost.retries += 1;
                }
                other => return phase_of(other),
            }
        }
    }

    /// queue: read, think, send an intent; the document's single writer applies intents in
    /// arrival order. An intent whose `test` no longer holds (a board task is no longer at
    /// the index read) is refused whole: the agent reads again and sends it again, without
    /// thinking again.
    async fn queued(&self, mut w: Write<'_>) -> Phase {
        let read = self.read(&mut w).await;
        w.cost.read_ms = Some(self.recorder.now_ms());
        self.read_gate().await;
        let Some(mut value) = read.value().cloned() else {
            return Phase::Fail;
        };
        think(w.step.think_ms).await;
        loop {
            *w.bound = resolve(w.effect, &value, w.mark, w.step.pick);
            let ops = intent(&value, w.bound, w.mark, w.agent);
            self.sending(&mut w);
            let reply = self.wire.patch(w.doc, w.agent, &ops).await;
            // A guarded board intent refused because the list moved on: its test failed, or
            // the index it names (or moves to) is past the end by now.
            let guarded = matches!(
                w.bound,
                Effect::Task { edit, .. } if !matches!(edit, TaskEdit::Insert { .. })
            );
            match &reply {
                Reply::Refused { kind, .. }
                    if guarded
                        && matches!(kind.as_str(), "test-failed" | "path-not-found")
                        && w.cost.retries + 1 < MAX_RETRIES =>
                {
                    w.cost.retries += 1;
                }
                other => return phase_of(other),
            }
            let read = self.read(&mut w).await;
            let Some(again) = read.value().cloned() else {
                return Phase::Fail;
            };
            value = again;
        }
    }
}

/// One agent: its writes, one after another. It never stops early, so that with lockstep
/// every agent reaches every gate.
pub(super) async fn agent(
    shared: Arc<Shared>,
    i: usize,
    steps: Vec<Step>,
) -> (usize, Option<String>, Vec<Cost>) {
    let name = agent_name(i);
    let mut retry_rng = ChaCha8Rng::seed_from_u64(shared.seed);
    retry_rng.set_stream((1 << 32) + i as u64);
    // Branches: the agent edits its own fork of the document.
    let doc = match shared.strategy {
        Strategy::Branches => shared
            .wire
            .fork(&shared.doc, &name)
            .await
            .body()
            .and_then(|b| b["id"].as_str())
            .map(str::to_owned),
        _ => Some(shared.doc.clone()),
    };
    let mut costs = Vec::with_capacity(steps.len());
    for (k, step) in steps.into_iter().enumerate() {
        shared.round_gate().await;
        let mark = format!("a{i}w{k}");
        let effect = shared.workload.effect(&name, step.roll);
        let mut cost = Cost {
            agent: i,
            invoked_ms: shared.recorder.record(Phase::Invoke, &name, &mark, &effect),
            ..Cost::default()
        };
        let mut bound = effect.clone();
        let mut basis = Basis {
            // Branches: the agent reads and writes its own fork.
            branch: (shared.strategy == Strategy::Branches).then_some(i as u32),
            ..Basis::default()
        };
        let phase = match &doc {
            None => {
                shared.read_gate().await;
                Phase::Fail
            }
            Some(doc) => {
                let w = Write {
                    doc,
                    agent: &name,
                    mark: &mark,
                    effect: &effect,
                    bound: &mut bound,
                    basis: &mut basis,
                    step,
                    cost: &mut cost,
                };
                match shared.strategy {
                    Strategy::Crdt | Strategy::Lww | Strategy::Branches => {
                        shared.rewrite_and_put(w).await
                    }
                    Strategy::Optimistic => shared.optimistic(w, &mut retry_rng).await,
                    Strategy::Lock => shared.locked(w).await,
                    Strategy::Queue => shared.queued(w).await,
                }
            }
        };
        let at = shared.recorder.complete(phase, &name, &mark, &bound, basis);
        if phase == Phase::Ok {
            cost.acked_ms = Some(at);
        }
        costs.push(cost);
        shared.tracker.tick(shared.strategy);
    }
    let fork = (shared.strategy == Strategy::Branches)
        .then_some(doc)
        .flatten();
    (i, fork, costs)
}
