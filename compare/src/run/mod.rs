//! Agents that read, "think" and write the way each strategy requires, and one report row
//! per strategy from what they recorded.
//!
//! Every strategy runs the same seeded plan: agent `i`'s think times and choices come from
//! one ChaCha stream per agent, so the strategies differ only in how they write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use concord_core::Strategy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use super::history::{check_with_lost, percentile, LostEdit, Recorder, Verdict};
use super::report::{Report, Row};
use super::wire::{Reply, Wire};
use super::workload::{without_ids, Workload};
use super::{CompareError, Options, Progress, ProgressFn};

mod agent;

use agent::{agent, Shared};

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
    let runs = run_strategies(&Wire::new(url).minimal_answers(), opts, &tracker).await?;
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
    use crate::ThinkRange;

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
