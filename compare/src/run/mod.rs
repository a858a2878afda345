//! Agents that read, "think" and write the way each strategy requires, and one report row
//! per strategy from what they recorded.
//!
//! Every strategy runs the same seeded plan: agent `i`'s think times and choices come from
//! one ChaCha stream per agent, so the strategies differ only in how they write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord_core::Strategy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::board::TaskEdit;
use super::history::{
    check_with_lost, percentile, Basis, Effect, LostEdit, Phase, Recorder, Verdict,
};
use super::report::{Report, Row};
use super::wire::{Reply, Wire};
use super::workload::{agent_name, intent, resolve, rewrite, without_ids, Workload};
use super::{CompareError, Options, Progress, ProgressFn, ThinkRange};

/// How long a lock request waits on the server before asking again (the server allows 60 s).
const LOCK_WAIT_MS: u64 = 30_000;
/// An optimistic or lock writer gives up on one write after this many refusals.
const MAX_RETRIES: u64 = 1_000;

/// One write of an agent's plan, drawn from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// How long the agent thinks between reading and writing.
    pub think_ms: u64,
    /// Picks the kind of write in the mix.
    pub roll: u32,
    /// Picks where a text word goes.
    pub pick: u64,
}

/// Agent `agent`'s plan: the same for every strategy.
pub fn plan(opts: &Options, agent: usize) -> Vec<Step> {
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    rng.set_stream(agent as u64);
    (0..opts.writes)
        .map(|_| Step {
            think_ms: rng.random_range(opts.think.min..=opts.think.max),
            roll: rng.random(),
            pick: rng.random(),
        })
        .collect()
}

/// Counts finished writes over a whole run (several strategies, or a whole sweep).
#[derive(Clone)]
pub struct Tracker {
    done: Arc<AtomicU64>,
    total: u64,
    progress: ProgressFn,
}

impl Tracker {
    /// A tracker for a run of `total` writes.
    pub fn new(total: u64, progress: ProgressFn) -> Tracker {
        Tracker {
            done: Arc::default(),
            total,
            progress,
        }
    }

    fn report(&self, strategy: Strategy, done: u64) {
        (self.progress)(Progress {
            strategy,
            done,
            total: self.total,
        });
    }

    fn tick(&self, strategy: Strategy) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        self.report(strategy, done);
    }

    fn start(&self, strategy: Strategy) {
        self.report(strategy, self.done.load(Ordering::Relaxed));
    }
}

/// What one write cost, for the figures (the history holds what it did).
#[derive(Debug, Clone, Default)]
struct Cost {
    agent: usize,
    invoked_ms: f64,
    /// When the agent's (first) read answered.
    read_ms: Option<f64>,
    /// When the agent first sent its write.
    write_ms: Option<f64>,
    acked_ms: Option<f64>,
    retries: u64,
    lock_wait_ms: f64,
}

/// One strategy's run: its row, and what the sweep needs besides.
#[derive(Debug, Clone)]
pub struct StrategyRun {
    /// The report row.
    pub row: Row,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// Share of writes during whose read→write window another agent's write was
    /// acknowledged: how often agents would have collided.
    pub overlap: f64,
    /// The document the run wrote (left in place for a look in the viewer).
    pub doc: String,
}

/// Runs `opts` against the server at `url`, one strategy after another.
pub async fn compare(
    url: &str,
    opts: &Options,
    progress: ProgressFn,
) -> Result<Report, CompareError> {
    let tracker = Tracker::new(opts.total_writes(), progress);
    let runs = run_strategies(&Wire::new(url), opts, &tracker).await?;
    Ok(Report::new(opts, runs.into_iter().map(|r| r.row).collect()))
}

/// Runs every strategy of `opts` in turn, counting progress on `tracker`.
pub async fn run_strategies(
    wire: &Wire,
    opts: &Options,
    tracker: &Tracker,
) -> Result<Vec<StrategyRun>, CompareError> {
    let mut runs = Vec::with_capacity(opts.strategies.len());
    for &strategy in &opts.strategies {
        runs.push(run_strategy(wire, opts, strategy, tracker).await?);
    }
    Ok(runs)
}

/// What every agent of one strategy's run shares.
struct Shared {
    wire: Wire,
    strategy: Strategy,
    workload: Workload,
    think: ThinkRange,
    seed: u64,
    doc: String,
    recorder: Recorder,
    tracker: Tracker,
    /// With lockstep: every agent starts a round together, and (but for lock, whose agents
    /// read only once they hold the lease) every agent has read before any agent writes.
    gates: Option<(Barrier, Barrier)>,
    lock_ttl_ms: u64,
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
async fn agent(
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

/// Runs one strategy: a fresh document, every agent, (for branches) the merges, then the
/// checker over the final document.
pub async fn run_strategy(
    wire: &Wire,
    opts: &Options,
    strategy: Strategy,
    tracker: &Tracker,
) -> Result<StrategyRun, CompareError> {
    tracker.start(strategy);
    let doc = create(wire, opts.workload, strategy).await?;
    let agents = opts.agents as usize;
    let shared = Arc::new(Shared {
        wire: wire.clone(),
        strategy,
        workload: opts.workload,
        think: opts.think,
        seed: opts.seed,
        doc: doc.clone(),
        recorder: Recorder::new(),
        tracker: tracker.clone(),
        gates: opts
            .lockstep
            .then(|| (Barrier::new(agents), Barrier::new(agents))),
        lock_ttl_ms: (10_000 + 4 * opts.think.max).min(600_000),
    });
    let mut tasks = JoinSet::new();
    for i in 0..agents {
        tasks.spawn(agent(Arc::clone(&shared), i, plan(opts, i)));
    }
    let mut finished = Vec::with_capacity(agents);
    while let Some(joined) = tasks.join_next().await {
        finished.push(joined.map_err(|e| CompareError::Server(format!("an agent failed: {e}")))?);
    }
    // Merged in agent order, so that the run is the same whichever agent finished first.
    finished.sort_by_key(|(i, _, _)| *i);
    let mut costs: Vec<Cost> = Vec::new();
    let mut merged_at: Vec<Option<f64>> = vec![None; agents];
    for (i, fork, agent_costs) in finished {
        if let Some(fork) = fork {
            // Branches: the fork is merged back at the end; until then its writes have no
            // effect on the shared document. A failed merge leaves them lost.
            let reply = wire.merge(&doc, &fork, "merge").await;
            if reply.is_done() {
                merged_at[i] = Some(shared.recorder.now_ms());
                wire.delete(&fork).await;
            }
        }
        costs.extend(agent_costs);
    }
    let wall_ms = shared.recorder.now_ms();
    let last = wire.read_with_conflicts(&doc).await;
    let final_body = last.body().cloned().ok_or_else(|| {
        CompareError::Server(format!(
            "cannot read the final {strategy} document: {}",
            last.summary()
        ))
    })?;
    let lost = LostEdit::from_answer(&final_body)
        .map_err(|e| CompareError::Server(format!("the final {strategy} document: {e}")))?;
    let verdict = check_with_lost(&shared.recorder.events(), &final_body["value"], &lost);
    let conflicts_kept = final_body["conflicts"].as_array().map_or(0, Vec::len);
    let effect_ms = |c: &Cost| match strategy {
        Strategy::Branches => c.acked_ms.and(merged_at[c.agent]),
        _ => c.acked_ms,
    };
    let to_effect: Vec<f64> = costs
        .iter()
        .filter_map(|c| Some(effect_ms(c)? - c.invoked_ms))
        .collect();
    let row = Row::new(
        strategy,
        &verdict,
        costs.iter().map(|c| c.retries).sum(),
        costs.iter().map(|c| c.lock_wait_ms).sum(),
        conflicts_kept,
        (percentile(&to_effect, 50.0), percentile(&to_effect, 99.0)),
        wall_ms,
    );
    Ok(StrategyRun {
        row,
        verdict,
        overlap: overlap(&costs),
        doc,
    })
}

/// Creates the document of `workload` under `strategy`; returns its id. A server that
/// refuses the `ids` field (from before list identity keys) is asked again without it: it
/// finds the `id` key by itself.
pub async fn create(
    wire: &Wire,
    workload: Workload,
    strategy: Strategy,
) -> Result<String, CompareError> {
    let body = workload.create_body(strategy);
    let mut created = wire.create(&body).await;
    if let Reply::Refused { status, detail, .. } = &created {
        if status.as_u16() == 422 && body.get("ids").is_some() && detail.contains("`ids`") {
            created = wire.create(&without_ids(&body)).await;
        }
    }
    created
        .body()
        .and_then(|b| b["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| {
            CompareError::Server(format!(
                "cannot create the {strategy} document: {}",
                created.summary()
            ))
        })
}

/// Share of writes during whose read→write window another agent's write was acknowledged.
fn overlap(costs: &[Cost]) -> f64 {
    let mut acks: Vec<f64> = costs.iter().filter_map(|c| c.acked_ms).collect();
    acks.sort_by(f64::total_cmp);
    let windows: Vec<(f64, f64)> = costs
        .iter()
        .filter_map(|c| Some((c.read_ms?, c.write_ms?)))
        .collect();
    if windows.is_empty() {
        return 0.0;
    }
    // An agent's own acknowledgements never fall in its own window (its writes are
    // sequential), so any acknowledgement inside is another agent's.
    let hit = windows
        .iter()
        .filter(|(read, write)| {
            let from = acks.partition_point(|a| a <= read);
            from < acks.len() && acks[from] < *write
        })
        .count();
    hit as f64 / windows.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_seeded_per_agent() {
        let opts = Options {
            think: ThinkRange { min: 5, max: 50 },
            ..Options::default()
        };
        assert_eq!(plan(&opts, 0), plan(&opts, 0));
        assert_ne!(plan(&opts, 0), plan(&opts, 1));
        let other = Options {
            seed: 7,
            ..opts.clone()
        };
        assert_ne!(plan(&opts, 0), plan(&other, 0));
        assert!(plan(&opts, 3)
            .iter()
            .all(|s| (5..=50).contains(&s.think_ms)));
    }

    #[test]
    fn overlap_counts_windows_with_a_foreign_ack() {
        let cost = |agent, read, write, acked| Cost {
            agent,
            read_ms: Some(read),
            write_ms: Some(write),
            acked_ms: Some(acked),
            ..Cost::default()
        };
        // Agent 1's ack at 5 lands inside agent 0's window 1..10; agent 1's window 2..4
        // holds no ack.
        let costs = [cost(0, 1.0, 10.0, 11.0), cost(1, 2.0, 4.0, 5.0)];
        assert_eq!(overlap(&costs), 0.5);
        assert_eq!(overlap(&[]), 0.0);
    }
}
