//! `concord bench`: runs the benchmark, prints the table, writes the JSON.

use std::path::PathBuf;

use clap::Args;
use concord_bench::{report, run, trace, BenchError, BenchOptions, SECTIONS};

/// Arguments of `concord bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Tiny sizes: checks the harness works in seconds; the figures mean nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Sections to run, comma-separated: trace, tracehttp, textput, http, stale, busy, answer, growth, fanout, scale, memory, peer, cluster
    /// (default: all; cluster needs CONCORD_BENCH_POSTGRES or CONCORD_TEST_POSTGRES).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// The editing trace (default: $CONCORD_TRACE or ../shared/data/automerge-paper-edits.json).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/latest.json")]
    pub json: PathBuf,
}

/// Runs `concord bench`: each step it starts is a line on stderr, with the time so far.
pub async fn main(args: BenchArgs) -> Result<(), BenchError> {
    if let Some(unknown) = args.only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        return Err(BenchError::Invalid(format!(
            "unknown section {unknown:?}; expected one of {}",
            SECTIONS.join(", ")
        )));
    }
    let options = BenchOptions {
        smoke: args.smoke,
        only: args.only,
        trace: args.trace.unwrap_or_else(trace::default_path),
        exe: std::env::current_exe().ok(),
    };
    let started = std::time::Instant::now();
    let report = run(&options, |step| {
        eprintln!("[{:>6.1}s] {step}", started.elapsed().as_secs_f64());
    })
    .await?;
    print!("{}", report::table(&report));
    if let Some(parent) = args.json.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| BenchError::Io(format!("{}: {e}", parent.display())))?;
    }
    let json = serde_json::to_vec_pretty(&report).map_err(|e| BenchError::Io(e.to_string()))?;
    std::fs::write(&args.json, json)
        .map_err(|e| BenchError::Io(format!("{}: {e}", args.json.display())))?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}
