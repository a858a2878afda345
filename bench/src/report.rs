//! The benchmark's table, with the ratios that matter beside the raw figures.

use std::fmt::Write;

use super::http::Target;
use super::BenchReport;

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The HTTP row for a target and agent count.
fn rate(report: &BenchReport, target: Target, agents: usize) -> Option<f64> {
    report
        .http
        .iter()
        .find(|r| r.target == target && r.agents == agents)
        .map(|r| r.writes_per_sec)
}

/// The whole report as text.
pub fn table(report: &BenchReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {}", report.machine);
    if let Some(t) = &report.trace {
        let _ = writeln!(
            out,
            "\nEditing trace ({} edits, {} chars, sha256 {})",
            t.edits,
            t.final_chars,
            &t.sha256[..16]
        );
        let _ = writeln!(
            out,
            "  {:<34} {:>10}  {:>8}  {:>10}",
            "path (fastest of its rounds)", "ms", "vs raw", "vs raw+enc"
        );
        let raw = ms(t.automerge);
        let encoded = ms(t.automerge_encoded);
        for (name, d) in [
            ("String splices (floor)", t.string),
            ("raw Automerge, commit per edit", t.automerge),
            ("raw Automerge + encode each change", t.automerge_encoded),
            ("Concord text path (PATCH splice)", t.concord),
        ] {
            let _ = writeln!(
                out,
                "  {:<34} {:>10.1}  {:>7.2}x  {:>9.2}x",
                name,
                ms(d),
                ms(d) / raw,
                ms(d) / encoded
            );
        }
        let verdict = if t.sha256 == super::trace::FINAL_SHA256 {
            "matches"
        } else {
            "differs (partial trace?)"
        };
        let _ = writeln!(
            out,
            "  final text sha256 {verdict}; snapshot {} bytes; cold load from SQLite {:.1} ms",
            t.snapshot_bytes,
            ms(t.cold_load)
        );
    }
    if let Some(t) = &report.tracehttp {
        let _ = writeln!(
            out,
            "\nEditing trace over HTTP (one PATCH splice per edit, one agent, keep-alive, each durable)"
        );
        let _ = writeln!(
            out,
            "  {} edits in {:.1} s: {:.0} edits/s, p50 {:.2} ms, p99 {:.2} ms",
            t.edits, t.secs, t.per_sec, t.p50_ms, t.p99_ms
        );
        let _ = writeln!(
            out,
            "  in-process text path {:.1} s: HTTP takes {:.1}x; final text {} the in-process replay's (sha256 {})",
            t.in_process_secs,
            t.secs / t.in_process_secs.max(1e-9),
            if t.matches { "is" } else { "DIFFERS from" },
            &t.sha256[..16.min(t.sha256.len())]
        );
    }
    if !report.http.is_empty() {
        let _ = writeln!(out, "\nHTTP writes on loopback (small PATCH each)");
        let _ = writeln!(
            out,
            "  {:<18} {:>6} {:>8} {:>10} {:>8} {:>8} {:>10}",
            "target", "agents", "writes", "writes/s", "p50 ms", "p99 ms", "fsync/ack"
        );
        for r in &report.http {
            let fsync = r
                .fsyncs_per_write
                .map_or("-".to_owned(), |f| format!("{f:.3}"));
            let _ = writeln!(
                out,
                "  {:<18} {:>6} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>10}",
                r.target.label(),
                r.agents,
                r.writes,
                r.writes_per_sec,
                r.p50_ms,
                r.p99_ms,
                fsync
            );
        }
        let mut agents: Vec<usize> = report.http.iter().map(|r| r.agents).collect();
        agents.dedup();
        for a in agents {
            let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {a:>3} agents: crdt/lww hot {}, crdt/lww spread {}, durable spread/no-op {}, durable hot/no-op {}",
                ratio(rate(report, Target::CrdtHot, a), rate(report, Target::LwwHot, a)),
                ratio(rate(report, Target::CrdtSpread, a), rate(report, Target::LwwSpread, a)),
                ratio(rate(report, Target::CrdtSpread, a), rate(report, Target::Noop, a)),
                ratio(rate(report, Target::CrdtHot, a), rate(report, Target::Noop, a)),
            );
        }
    }
    if !report.textput.is_empty() {
        let _ = writeln!(out, "\nWhole-text PUTs (collaborative text; best of 3)");
        for r in &report.textput {
            let baseline = match r.update_text_ms {
                Some(b) => format!(
                    "; Automerge update_text {b:.0} ms ({:.1}x Concord's time)",
                    b / r.concord_ms.max(1e-9)
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:>7} chars, {:<7}: Concord {:.1} ms{baseline}",
                r.chars, r.kind, r.concord_ms
            );
        }
    }
    if !report.stale.is_empty() {
        let _ = writeln!(out, "\nStale-base merges (whole-document PUT)");
        for r in &report.stale {
            let _ = writeln!(
                out,
                "  base {:>3} versions old: {:>8.0} PUT/s, p50 {:.2} ms ({} writes)",
                r.age, r.per_sec, r.p50_ms, r.writes
            );
        }
    }
    if let Some(busy) = &report.busy {
        let _ = writeln!(
            out,
            "\nLarge patches alone ({} ops on a {}-element list)",
            busy.ops, busy.list
        );
        for r in &busy.solo {
            let present = busy
                .solo
                .iter()
                .find(|p| p.kind == r.kind && p.base == "present")
                .map_or(String::new(), |p| {
                    format!(", {:.2}x of the present", r.secs / p.secs.max(1e-9))
                });
            let _ = writeln!(
                out,
                "  {:<11} at a {:<7} base: {:.3} s{present}",
                r.kind, r.base, r.secs
            );
        }
        let secs: Vec<String> = busy
            .heavy_secs
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect();
        let _ = writeln!(
            out,
            "\nAnswering while busy (two patches of {} interleaved inserts at a stale base of a {}-element list, at once: {})",
            busy.ops,
            busy.list,
            secs.join(", ")
        );
        for r in &busy.rows {
            let _ = writeln!(
                out,
                "  {:<7} {:<4}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} probes)",
                r.probe, r.load, r.p50_ms, r.p99_ms, r.max_ms, r.probes
            );
        }
    }
    if let Some(m) = &report.memory {
        let _ = writeln!(
            out,
            "\nMemory of one document rewritten ({} PUTs of a {} KB value, history budget {} MiB)",
            m.puts,
            m.value_bytes / 1024,
            m.budget_bytes / (1024 * 1024)
        );
        let _ = writeln!(
            out,
            "  {} accepted, {} refused history-too-large; resident {:.0} MB at start, {:.0} MB at the end, {:.0} MB at the peak ({:.0} MB over the budget)",
            m.accepted,
            m.refused,
            m.start_rss_mb,
            m.end_rss_mb,
            m.peak_rss_mb,
            m.peak_rss_mb - m.budget_bytes as f64 / (1024.0 * 1024.0)
        );
        let _ = writeln!(
            out,
            "  then {} readers of every change at once ({:.0} MB each): peak {:.0} MB",
            m.readers,
            m.changes_bytes as f64 / 1e6,
            m.peak_after_reads_mb
        );
    }
    if !report.answer.is_empty() {
        let _ = writeln!(
            out,
            "\nWrite answers (PATCH one field; whole value against Prefer: return=minimal)"
        );
        for r in &report.answer {
            let whole = report
                .answer
                .iter()
                .find(|w| w.doc_bytes == r.doc_bytes && w.answer == "whole");
            let ratio = match whole {
                Some(w) if r.answer == "minimal" && w.per_sec > 0.0 => {
                    format!(", {:.2}x the writes/s of whole", r.per_sec / w.per_sec)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "  {:>8} B doc, {:<7}: {:>7.0} PATCH/s, p50 {:.2} ms, answer {} B{ratio}",
                r.doc_bytes, r.answer, r.per_sec, r.p50_ms, r.answer_bytes
            );
        }
    }
    if !report.growth.is_empty() {
        let _ = writeln!(
            out,
            "\nGrowth (small PATCHes answered minimal; ratio: writes/s against the row's smallest)"
        );
        for r in &report.growth {
            let first = report
                .growth
                .iter()
                .find(|f| f.axis == r.axis && f.edit == r.edit && f.agents == r.agents);
            let ratio = first.map_or(0.0, |f| r.per_sec / f.per_sec.max(1e-9));
            let _ = writeln!(out, "  {}, {ratio:.2}x", r.line());
        }
    }
    if !report.fanout.is_empty() {
        let _ = writeln!(
            out,
            "\nFan-out (one writer, WebSocket subscribers; until the last one has the change)"
        );
        for r in &report.fanout {
            let _ = writeln!(
                out,
                "  {:>5} subscribers: from ack p50 {:.2} ms p99 {:.2} ms; from send p50 {:.2} ms p99 {:.2} ms ({} writes)",
                r.subscribers, r.from_ack_p50_ms, r.from_ack_p99_ms, r.from_send_p50_ms, r.from_send_p99_ms, r.writes
            );
        }
    }
    if let Some(s) = &report.scale {
        let _ = writeln!(
            out,
            "\nScale of documents{}",
            if s.in_process {
                " (in-process: figures include the load generator)"
            } else {
                ""
            }
        );
        for r in &s.rows {
            let _ = writeln!(
                out,
                "  {:>7} idle docs: RSS {:.1} MB (peak {:.1} MB while creating {:.0}/s)",
                r.docs, r.idle_rss_mb, r.peak_rss_mb, r.creates_per_sec
            );
        }
        let _ = writeln!(
            out,
            "  per open document: {:.1} KB; first read of a cold document: p50 {:.2} ms, p99 {:.2} ms",
            s.per_open_doc_kb, s.cold_read_p50_ms, s.cold_read_p99_ms
        );
    }
    if !report.cluster.is_empty() {
        let _ = writeln!(
            out,
            "\nOne node against two on PostgreSQL (small PATCH each, spread over documents)"
        );
        for r in &report.cluster {
            let _ = writeln!(
                out,
                "  {} node(s), {} agents: {:>8.0} writes/s, p50 {:.2} ms, p99 {:.2} ms ({} writes)",
                r.nodes, r.agents, r.writes_per_sec, r.p50_ms, r.p99_ms, r.writes
            );
        }
        if let [one, two] = report.cluster.as_slice() {
            let _ = writeln!(
                out,
                "  two nodes / one node: {:.2}x",
                two.writes_per_sec / one.writes_per_sec.max(f64::MIN_POSITIVE)
            );
        }
    }
    if let Some(peer) = report.peer.as_ref().filter(|p| p.skipped.is_none()) {
        let _ = writeln!(
            out,
            "\nThe peer: automerge-repo sync server against Concord /v1/repo\n{peer}"
        );
    }
    for skipped in &report.skipped {
        let _ = writeln!(out, "\nskipped: {skipped}");
    }
    out
}
