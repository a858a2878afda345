//! The sweep: the same workload over a grid of agent counts and think times, so that each
//! strategy's cost can be plotted against the conflict rate.

use std::fmt::Write as _;

use concord_core::Strategy;
use serde::{Deserialize, Serialize};

use super::run::{run_strategies, Tracker};
use super::wire::Wire;
use super::{CompareError, Limits, Options, ProgressFn, ThinkRange};

/// What a sweep runs: `base` (workload, writes, seed, strategies) at every pair of `agents`
/// and `think`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepOptions {
    /// The workload, writes per agent, seed and strategies of every point.
    pub base: Options,
    /// Agent counts.
    pub agents: Vec<u32>,
    /// Think times.
    pub think: Vec<ThinkRange>,
}

/// Bounds on a sweep.
#[derive(Debug, Clone, Copy)]
pub struct SweepLimits {
    /// Bounds on every point.
    pub point: Limits,
    /// Most agent counts, and most think ranges.
    pub values: usize,
}

impl SweepLimits {
    /// What the browser endpoint accepts: small, a minute or so at most.
    pub const BROWSER: SweepLimits = SweepLimits {
        point: Limits {
            agents: 16,
            writes: 20,
            think_ms: 200,
        },
        values: 5,
    };
    /// What the command line accepts.
    pub const CLI: SweepLimits = SweepLimits {
        point: Limits::CLI,
        values: 32,
    };
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            base: Options {
                writes: 5,
                ..Options::default()
            },
            agents: vec![2, 4, 8],
            think: vec![
                ThinkRange { min: 0, max: 5 },
                ThinkRange { min: 10, max: 30 },
                ThinkRange { min: 40, max: 80 },
            ],
        }
    }
}

impl SweepOptions {
    /// Every point's options, agents first.
    pub fn points(&self) -> Vec<Options> {
        let mut points = Vec::new();
        for &agents in &self.agents {
            for &think in &self.think {
                points.push(Options {
                    agents,
                    think,
                    ..self.base.clone()
                });
            }
        }
        points
    }

    /// Checks the grid and every point against `limits`.
    pub fn validate(&self, limits: SweepLimits) -> Result<(), CompareError> {
        let n = limits.values;
        if self.agents.is_empty() || self.agents.len() > n {
            return Err(CompareError::Invalid(format!(
                "a sweep takes 1 to {n} agent counts, not {}",
                self.agents.len()
            )));
        }
        if self.think.is_empty() || self.think.len() > n {
            return Err(CompareError::Invalid(format!(
                "a sweep takes 1 to {n} think ranges, not {}",
                self.think.len()
            )));
        }
        self.points()
            .iter()
            .try_for_each(|p| p.validate(limits.point))
    }
}

/// One strategy at one point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The strategy.
    pub strategy: Strategy,
    /// Agents at this point.
    pub agents: u32,
    /// Think time `[min, max]` at this point, ms.
    pub think_ms: [u64; 2],
    /// Share of writes during whose read→write window another agent's write landed: the
    /// highest measured over the strategies at this point (a lock, which prevents the
    /// overlap, would otherwise hide it). The same for every strategy of a point.
    pub conflict_rate: f64,
    /// Acknowledged writes lost.
    pub lost: usize,
    /// Retries.
    pub retries: u64,
    /// Time to effect, median, ms.
    pub p50_ms: f64,
    /// Time to effect, 99th percentile, ms.
    pub p99_ms: f64,
    /// Acknowledged writes per second.
    pub writes_per_sec: f64,
}

/// The result of a sweep (`--sweep --json`, and the `result` event of
/// `POST /v1/compare/sweep`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Every strategy at every point.
    pub points: Vec<Point>,
}

/// Runs the sweep against the server at `url`.
pub async fn sweep(
    url: &str,
    opts: &SweepOptions,
    progress: ProgressFn,
) -> Result<SweepReport, CompareError> {
    let grid = opts.points();
    let total = grid.iter().map(Options::total_writes).sum();
    let tracker = Tracker::new(total, progress);
    let wire = Wire::new(url).minimal_answers();
    let mut points = Vec::new();
    for point in &grid {
        let runs = run_strategies(&wire, point, &tracker).await?;
        let rate = runs.iter().map(|r| r.overlap).fold(0.0, f64::max);
        for run in runs {
            // Documents of a sweep are many and small: remove them once measured.
            wire.delete(&run.doc).await;
            points.push(Point {
                strategy: run.row.strategy,
                agents: point.agents,
                think_ms: point.think.pair(),
                conflict_rate: (rate * 1000.0).round() / 1000.0,
                lost: run.row.lost,
                retries: run.row.retries,
                p50_ms: run.row.p50_ms,
                p99_ms: run.row.p99_ms,
                writes_per_sec: run.row.writes_per_sec,
            });
        }
    }
    Ok(SweepReport { points })
}

const COLUMNS: [&str; 10] = [
    "strategy",
    "agents",
    "think_min_ms",
    "think_max_ms",
    "conflict_rate",
    "lost",
    "retries",
    "p50_ms",
    "p99_ms",
    "writes_per_sec",
];

impl SweepReport {
    fn cells(p: &Point) -> [String; 10] {
        [
            p.strategy.to_string(),
            p.agents.to_string(),
            p.think_ms[0].to_string(),
            p.think_ms[1].to_string(),
            format!("{:.3}", p.conflict_rate),
            p.lost.to_string(),
            p.retries.to_string(),
            format!("{:.1}", p.p50_ms),
            format!("{:.1}", p.p99_ms),
            format!("{:.1}", p.writes_per_sec),
        ]
    }

    /// CSV with a header line (no cell needs quoting).
    pub fn csv(&self) -> String {
        let mut out = COLUMNS.join(",");
        out.push('\n');
        for p in &self.points {
            out.push_str(&Self::cells(p).join(","));
            out.push('\n');
        }
        out
    }

    /// An aligned table.
    pub fn table(&self) -> String {
        let rows: Vec<[String; 10]> = self.points.iter().map(Self::cells).collect();
        let widths: Vec<usize> = (0..COLUMNS.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].len())
                    .fold(COLUMNS[i].len(), usize::max)
            })
            .collect();
        let mut out = String::new();
        let mut line = |cells: Vec<&str>| {
            for (i, cell) in cells.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
                } else {
                    let _ = write!(out, "{cell:>w$}  ", w = widths[i]);
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        };
        line(COLUMNS.to_vec());
        for r in &rows {
            line(r.iter().map(String::as_str).collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_and_bounds() {
        let opts = SweepOptions::default();
        assert_eq!(opts.points().len(), 9);
        assert!(opts.validate(SweepLimits::BROWSER).is_ok());
        let big = SweepOptions {
            agents: vec![2, 64],
            ..opts.clone()
        };
        assert!(big.validate(SweepLimits::BROWSER).is_err());
        let none = SweepOptions {
            think: vec![],
            ..opts
        };
        assert!(none.validate(SweepLimits::CLI).is_err());
    }

    #[test]
    fn csv_has_a_header_and_a_line_per_point() {
        let point = Point {
            strategy: Strategy::Lww,
            agents: 4,
            think_ms: [0, 5],
            conflict_rate: 0.25,
            lost: 3,
            retries: 0,
            p50_ms: 1.0,
            p99_ms: 2.0,
            writes_per_sec: 100.0,
        };
        let report = SweepReport {
            points: vec![point.clone(), point],
        };
        let csv = report.csv();
        assert_eq!(csv.lines().count(), 3);
        assert_eq!(
            csv.lines().nth(1),
            Some("lww,4,0,5,0.250,3,0,1.0,2.0,100.0")
        );
        assert_eq!(report.table().lines().count(), 3);
    }
}
