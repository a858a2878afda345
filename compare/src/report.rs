//! The comparison's report: one row per strategy with what it lost and what it cost, the
//! trade-off in words, and the table people read.

use std::fmt::Write as _;

use concord_core::Strategy;
use serde::{Deserialize, Serialize};

use super::history::Verdict;
use super::workload::Workload;
use super::Options;

/// The whole report (`--json`, and the `result` event of `POST /v1/compare`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The workload.
    pub workload: Workload,
    /// Agents writing at once.
    pub agents: u32,
    /// Writes per agent.
    pub writes: u32,
    /// The seed.
    pub seed: u64,
    /// Think time `[min, max]`, ms.
    pub think_ms: [u64; 2],
    /// One row per strategy, in the order they ran.
    pub rows: Vec<Row>,
}

/// One strategy's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The strategy.
    pub strategy: Strategy,
    /// Writes the server acknowledged.
    pub acknowledged: usize,
    /// Acknowledged writes absent from the final document, with no trace: lost silently.
    pub lost: usize,
    /// Acknowledged writes absent from the final value but listed among the document's lost
    /// edits (`?conflicts=true`, `lost`): lost, but surfaced for someone to restore. Only
    /// edits of a deleted value can be; 0 for every workload but board.
    pub lost_surfaced: usize,
    /// Writes sent again after a refusal (optimistic: 412; lock: a lapsed lease).
    pub retries: u64,
    /// Time spent waiting for lock leases, all agents together, ms.
    pub lock_wait_ms: u64,
    /// Places in the final document holding concurrent values (`?conflicts=true`).
    pub conflicts_kept: usize,
    /// Time to effect, median: from setting out to write until the write is in the shared
    /// document (for branches: until its fork is merged), ms.
    pub p50_ms: f64,
    /// Time to effect, 99th percentile, ms.
    pub p99_ms: f64,
    /// From the first agent starting to the last write taking effect, ms.
    pub wall_ms: u64,
    /// Acknowledged writes per second of wall time.
    pub writes_per_sec: f64,
    /// The trade-off, in words.
    pub tradeoff: String,
}

fn tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Row {
    /// A row from a run's verdict and costs.
    pub fn new(
        strategy: Strategy,
        verdict: &Verdict,
        retries: u64,
        lock_wait_ms: f64,
        conflicts_kept: usize,
        (p50_ms, p99_ms): (f64, f64),
        wall_ms: f64,
    ) -> Row {
        let mut row = Row {
            strategy,
            acknowledged: verdict.acknowledged,
            lost: verdict.lost,
            lost_surfaced: verdict.lost_surfaced,
            retries,
            lock_wait_ms: lock_wait_ms.round() as u64,
            conflicts_kept,
            p50_ms: tenth(p50_ms),
            p99_ms: tenth(p99_ms),
            wall_ms: wall_ms.round() as u64,
            writes_per_sec: tenth(verdict.acknowledged as f64 * 1000.0 / wall_ms.max(1.0)),
            tradeoff: String::new(),
        };
        row.tradeoff = tradeoff(&row);
        row
    }
}

/// The trade-off of a row, in words, with its figures.
pub fn tradeoff(row: &Row) -> String {
    let surfaced = match row.lost_surfaced {
        0 => String::new(),
        n => format!(" ({n} more lost but surfaced among the document's lost edits)"),
    };
    let cost = match row.strategy {
        Strategy::Lww if row.lost > 0 => {
            return format!(
                "lost {} of {} acknowledged writes, silently: every writer got 200 OK{surfaced}",
                row.lost, row.acknowledged
            )
        }
        Strategy::Lww => {
            "lost nothing this time, by luck: a stale write still erases silently".to_owned()
        }
        Strategy::Optimistic => format!(
            "{} retries: each 412 means reading again and thinking again",
            row.retries
        ),
        Strategy::Lock => format!(
            "{} ms spent waiting for the lease: writers take turns, a stalled holder stalls all",
            row.lock_wait_ms
        ),
        Strategy::Queue => {
            "intents only (no rewrites), applied one at a time in arrival order".to_owned()
        }
        Strategy::Branches => format!(
            "edits stay invisible to others until the merge at the end (p50 {} ms to effect)",
            row.p50_ms
        ),
        Strategy::Crdt if row.conflicts_kept > 0 => format!(
            "no waiting, no retries; {} same-field conflicts kept and shown, not lost",
            row.conflicts_kept
        ),
        Strategy::Crdt => "no waiting, no retries; concurrent edits merged".to_owned(),
    };
    match (row.lost, row.lost_surfaced) {
        (0, 0) => format!("nothing lost; {cost}"),
        (0, 1) => format!(
            "nothing lost silently; 1 edit of a deleted value lost but surfaced among the \
             document's lost edits; {cost}"
        ),
        (0, n) => format!(
            "nothing lost silently; {n} edits of deleted values lost but surfaced among the \
             document's lost edits; {cost}"
        ),
        (lost, _) => format!("LOST {lost} acknowledged writes silently{surfaced}; {cost}"),
    }
}

impl Report {
    /// The report of a run of `opts`.
    pub fn new(opts: &Options, rows: Vec<Row>) -> Report {
        Report {
            workload: opts.workload,
            agents: opts.agents,
            writes: opts.writes,
            seed: opts.seed,
            think_ms: opts.think.pair(),
            rows,
        }
    }

    /// The table: one row per strategy, the trade-off in words beside the figures.
    pub fn table(&self) -> String {
        let mut out = format!(
            "Lost-update comparison: {} workload, {} agents x {} writes, think {}..{} ms, seed {}\n\n",
            self.workload,
            self.agents,
            self.writes,
            self.think_ms[0],
            self.think_ms[1],
            self.seed
        );
        let header = [
            "strategy",
            "acked",
            "lost silently",
            "lost surfaced",
            "retries",
            "lock wait ms",
            "conflicts",
            "p50 ms",
            "p99 ms",
            "wall ms",
            "writes/s",
        ];
        let cells: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| {
                vec![
                    r.strategy.to_string(),
                    r.acknowledged.to_string(),
                    r.lost.to_string(),
                    r.lost_surfaced.to_string(),
                    r.retries.to_string(),
                    r.lock_wait_ms.to_string(),
                    r.conflicts_kept.to_string(),
                    format!("{:.1}", r.p50_ms),
                    format!("{:.1}", r.p99_ms),
                    r.wall_ms.to_string(),
                    format!("{:.1}", r.writes_per_sec),
                ]
            })
            .collect();
        let widths: Vec<usize> = header
            .iter()
            .enumerate()
            .map(|(i, h)| cells.iter().map(|c| c[i].len()).fold(h.len(), usize::max))
            .collect();
        let line = |out: &mut String, row: &[&str], last: &str| {
            for (i, cell) in row.iter().enumerate() {
                if i == 0 {
                    let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
                } else {
                    let _ = write!(out, "{cell:>w$}  ", w = widths[i]);
                }
            }
            out.push_str(last);
            out.push('\n');
        };
        line(&mut out, &header, "trade-off");
        for (cells, row) in cells.iter().zip(&self.rows) {
            let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
            line(&mut out, &cells, &row.tradeoff);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(strategy: Strategy, lost: usize) -> Row {
        surfacing(strategy, lost, 0)
    }

    fn surfacing(strategy: Strategy, lost: usize, lost_surfaced: usize) -> Row {
        let verdict = Verdict {
            acknowledged: 10,
            lost,
            lost_surfaced,
            ..Verdict::default()
        };
        Row::new(strategy, &verdict, 3, 120.4, 1, (12.34, 56.78), 2000.0)
    }

    #[test]
    fn rows_round_and_explain() {
        let r = row(Strategy::Lww, 7);
        assert_eq!((r.p50_ms, r.p99_ms, r.writes_per_sec), (12.3, 56.8, 5.0));
        assert_eq!(r.lock_wait_ms, 120);
        assert!(r.tradeoff.starts_with("lost 7 of 10"), "{}", r.tradeoff);
        assert!(row(Strategy::Optimistic, 0).tradeoff.contains("3 retries"));
        assert!(row(Strategy::Lock, 0).tradeoff.contains("120 ms"));
        assert!(row(Strategy::Crdt, 0).tradeoff.contains("1 same-field"));
        assert!(row(Strategy::Queue, 2).tradeoff.starts_with("LOST 2"));
        // Surfaced losses are told apart from silent ones.
        let crdt = surfacing(Strategy::Crdt, 0, 3);
        assert!(
            crdt.tradeoff.starts_with("nothing lost silently; 3 edits"),
            "{}",
            crdt.tradeoff
        );
        let lww = surfacing(Strategy::Lww, 7, 2);
        assert!(
            lww.tradeoff.contains("(2 more lost but surfaced"),
            "{}",
            lww.tradeoff
        );
        let one = surfacing(Strategy::Crdt, 0, 1).tradeoff;
        assert!(
            one.starts_with("nothing lost silently; 1 edit of a deleted value"),
            "{one}"
        );
        let branches = surfacing(Strategy::Branches, 1, 2);
        assert!(
            branches
                .tradeoff
                .starts_with("LOST 1 acknowledged writes silently (2 more"),
            "{}",
            branches.tradeoff
        );
    }

    #[test]
    fn table_has_a_line_per_strategy() {
        let opts = Options::default();
        let report = Report::new(&opts, Strategy::ALL.iter().map(|s| row(*s, 0)).collect());
        let table = report.table();
        assert_eq!(table.lines().count(), 3 + Strategy::ALL.len());
        assert!(table.contains("trade-off"));
        assert!(table.contains("lost silently  lost surfaced"), "{table}");
        let json = serde_json::to_value(&report).unwrap();
        let keys: Vec<&String> = json["rows"][0].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 12);
        assert_eq!(json["rows"][0]["lost_surfaced"], 0);
        assert_eq!(json["think_ms"], serde_json::json!([10, 50]));
    }
}
