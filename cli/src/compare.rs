//! `concord compare`: the comparison from the command line, with a progress bar on stderr
//! and the table (or JSON) on stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use concord_compare::scenario::seed_scenario;
use concord_compare::sweep::{sweep, SweepLimits, SweepOptions};
use concord_compare::{
    run, CompareError, Limits, Options, ProgressFn, Target, ThinkRange, Workload,
};
use concord_core::Strategy;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Which scripted scenario to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// The lesson's timeline: A reads at T=1, B at T=2, B writes at T=4, A at T=5.
    Seed,
}

/// What the agents write: the comparison's [`Workload`]s, as command-line values (the
/// names and the help of each are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkloadArg {
    /// Every write appends a unique item to one shared list (`/items`).
    List,
    /// Every write adds one to a shared counter (`/count`).
    Counter,
    /// Every agent keeps its own field (`/fields/agent-N`) up to date, and names itself in
    /// one shared field (`/editor`): the latter is a true conflict, kept by crdt.
    Fields,
    /// Every write inserts a unique word into one collaborative text (`/text`).
    Text,
    /// Each write is one of list, counter, fields and text, chosen by the seed.
    Mix,
    /// Agents work on a list of tasks (`/tasks`): insert, delete, set a title or done, vote,
    /// add a word to a body, move a task. An edit of a task deleted meanwhile is lost:
    /// silently, or surfaced among the document's lost edits.
    Board,
}

impl From<WorkloadArg> for Workload {
    fn from(arg: WorkloadArg) -> Workload {
        match arg {
            WorkloadArg::List => Workload::List,
            WorkloadArg::Counter => Workload::Counter,
            WorkloadArg::Fields => Workload::Fields,
            WorkloadArg::Text => Workload::Text,
            WorkloadArg::Mix => Workload::Mix,
            WorkloadArg::Board => Workload::Board,
        }
    }
}

/// Runs one seeded workload through every write strategy over the real HTTP API and
/// reports what each lost and what each cost.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Agents writing at the same time.
    #[arg(long, default_value_t = 4)]
    pub agents: u32,
    /// Writes per agent.
    #[arg(long, default_value_t = 10)]
    pub writes: u32,
    /// Think time between an agent's read and its write, in ms: MIN..MAX (or one number).
    #[arg(long, default_value = "10..50", value_name = "MIN..MAX")]
    pub think_ms: ThinkRange,
    /// Seeds think times and choices; the same seed gives every strategy the same plan.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Strategies to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lww,optimistic,lock,queue,branches,crdt"
    )]
    pub strategies: Vec<Strategy>,
    /// What the agents write.
    #[arg(long, value_enum, default_value = "list")]
    pub workload: WorkloadArg,
    /// Every agent reads before any agent writes, in every round: certain overlap.
    #[arg(long)]
    pub lockstep: bool,
    /// Print JSON instead of a table (no progress bar).
    #[arg(long)]
    pub json: bool,
    /// Run against this server instead of an in-process one on a temporary data folder.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Play a scripted scenario instead of a workload.
    #[arg(long, value_enum, conflicts_with = "sweep")]
    pub scenario: Option<Scenario>,
    /// Run the workload over a grid of agent counts and think times.
    #[arg(long)]
    pub sweep: bool,
    /// Agent counts of the sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2,4,8",
        requires = "sweep"
    )]
    pub sweep_agents: Vec<u32>,
    /// Think times of the sweep.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0..5,10..30,40..80",
        requires = "sweep",
        value_name = "MIN..MAX,..."
    )]
    pub sweep_think: Vec<ThinkRange>,
    /// Write the sweep's points to this file: .csv or .json.
    #[arg(long, value_name = "FILE", requires = "sweep")]
    pub out: Option<PathBuf>,
}

impl CompareArgs {
    fn options(&self) -> Options {
        Options {
            workload: self.workload.into(),
            agents: self.agents,
            writes: self.writes,
            think: self.think_ms,
            seed: self.seed,
            strategies: self.strategies.clone(),
            lockstep: self.lockstep,
        }
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal or output is JSON.
fn progress_bar(args: &CompareArgs, total: u64) -> (ProgressBar, ProgressFn) {
    let target = if args.json || !std::io::stderr().is_terminal() {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg:<11} [{bar:40}] {pos}/{len} writes {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    if !bar.is_hidden() {
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    let shown = bar.clone();
    let progress: ProgressFn = Arc::new(move |p| {
        shown.set_message(p.strategy.to_string());
        shown.set_position(p.done);
    });
    (bar, progress)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("reports serialize")
}

/// Runs `concord compare`.
pub async fn run(args: CompareArgs) -> Result<(), CompareError> {
    let target = Target::new(args.server.as_deref()).await?;
    let result = dispatch(&args, &target).await;
    target.finish().await;
    result
}

async fn dispatch(args: &CompareArgs, target: &Target) -> Result<(), CompareError> {
    if args.scenario == Some(Scenario::Seed) {
        let report = seed_scenario(target.url()).await?;
        if args.json {
            println!("{}", to_json(&report));
        } else {
            print!("{}", report.text());
        }
        return Ok(());
    }
    if args.sweep {
        return run_sweep(args, target).await;
    }
    let opts = args.options();
    opts.validate(Limits::CLI)?;
    let (bar, progress) = progress_bar(args, opts.total_writes());
    let report = run::compare(target.url(), &opts, progress).await;
    bar.finish_and_clear();
    let report = report?;
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn run_sweep(args: &CompareArgs, target: &Target) -> Result<(), CompareError> {
    let opts = SweepOptions {
        base: args.options(),
        agents: args.sweep_agents.clone(),
        think: args.sweep_think.clone(),
    };
    opts.validate(SweepLimits::CLI)?;
    let format = match &args.out {
        None => None,
        Some(path) => match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Some((path, true)),
            Some("json") => Some((path, false)),
            _ => {
                return Err(CompareError::Invalid(format!(
                    "--out {}: the file must end in .csv or .json",
                    path.display()
                )))
            }
        },
    };
    let total = opts.points().iter().map(Options::total_writes).sum();
    let (bar, progress) = progress_bar(args, total);
    let report = sweep(target.url(), &opts, progress).await;
    bar.finish_and_clear();
    let report = report?;
    if let Some((path, csv)) = format {
        let text = if csv { report.csv() } else { to_json(&report) };
        std::fs::write(path, text).map_err(|source| CompareError::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })?;
        eprintln!("wrote {} points to {}", report.points.len(), path.display());
    }
    if args.json {
        println!("{}", to_json(&report));
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    #[test]
    fn every_workload_has_its_own_name_on_the_command_line() {
        let args = WorkloadArg::value_variants();
        assert_eq!(args.len(), Workload::ALL.len());
        for arg in args {
            let name = arg.to_possible_value().expect("not hidden");
            assert_eq!(name.get_name(), Workload::from(*arg).as_str());
        }
    }
}
