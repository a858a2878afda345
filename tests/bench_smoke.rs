//! The benchmark harness, run with tiny sizes: every section runs and reports. It checks
//! that the harness works; it asserts nothing about speed.

use std::path::PathBuf;

use concord_bench::{report, run, BenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_section_runs_and_reports() {
    let trace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/automerge-paper-edits.json");
    let options = BenchOptions {
        smoke: true,
        only: Vec::new(),
        trace: trace.clone(),
        exe: None,
    };
    let mut steps = Vec::new();
    let report = run(&options, |step| steps.push(step.to_owned()))
        .await
        .expect("bench runs");
    assert!(!steps.is_empty(), "progress is reported");
    match &report.trace {
        Some(t) => {
            assert_eq!(t.edits, 2000);
            assert!(t.final_chars > 0, "a non-empty text");
            assert!(t.snapshot_bytes > 0);
        }
        None => {
            assert!(
                !trace.exists(),
                "the trace is only skipped when the file is missing"
            );
            assert!(report.skipped.iter().any(|s| s.starts_with("trace:")));
        }
    }
    // The trace over HTTP (when the trace is there) gives the in-process replay's text.
    match &report.tracehttp {
        Some(t) => assert!(t.matches && t.edits == 500 && t.per_sec > 0.0, "{t:?}"),
        None => assert!(report.skipped.iter().any(|s| s.starts_with("tracehttp:"))),
    }
    assert_eq!(report.http.len(), 2 * 5, "two agent counts, five targets");
    assert!(report.http.iter().all(|r| r.writes > 0));
    assert!(report
        .http
        .iter()
        .filter(|r| r.fsyncs_per_write.is_some())
        .all(|r| r.fsyncs_per_write.unwrap() > 0.0));
    assert_eq!(
        report.stale.iter().map(|r| r.age).collect::<Vec<_>>(),
        [1, 10, 100]
    );
    // Busy: each large patch alone at both bases, then the probes idle and busy.
    let busy = report.busy.as_ref().expect("busy section");
    assert_eq!(busy.solo.len(), 8);
    assert!(busy.solo.iter().all(|r| r.secs > 0.0), "{busy:?}");
    assert_eq!(busy.heavy_secs.len(), 2);
    assert_eq!(busy.rows.len(), 4);
    assert!(
        busy.rows
            .iter()
            .all(|r| r.probes >= 1 && r.p99_ms >= r.p50_ms),
        "{busy:?}"
    );
    // Whole and minimal answers for each size; a minimal answer is small whatever the size.
    assert_eq!(report.answer.len(), 4);
    for r in &report.answer {
        assert_eq!(r.writes, 5);
        match r.answer {
            "whole" => assert!(r.answer_bytes > r.doc_bytes, "{r:?}"),
            _ => assert!(r.answer_bytes < 400, "{r:?}"),
        }
    }
    // Growth: every size and history, every edit, at each agent count; a document grown
    // to a history holds at least that many changes.
    assert_eq!(report.growth.len(), (2 + 2) * 4 * 2);
    for r in &report.growth {
        assert!(r.writes >= 8 && r.per_sec > 0.0, "{r:?}");
        match r.axis {
            "size" => assert!(r.doc_bytes >= 1000, "{r:?}"),
            _ => assert!(r.changes >= 10, "{r:?}"),
        }
    }
    assert!(report
        .growth
        .iter()
        .any(|r| r.axis == "history" && r.changes >= 100));
    assert_eq!(report.fanout.len(), 1);
    // Memory needs the binary as a child process, which the smoke run does not give.
    assert!(report.memory.is_none());
    assert!(report.skipped.iter().any(|s| s.starts_with("memory:")));
    let scale = report.scale.as_ref().expect("scale section");
    assert!(scale.in_process && scale.rows[0].docs == 50);
    let peer = report.peer.as_ref().expect("peer section");
    match &peer.skipped {
        None => assert!(
            peer.rows.iter().any(|r| r.changes > 0),
            "the peer workload ran"
        ),
        Some(why) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "in CI the peer benchmark must run: {why}"
            );
            println!("peer benchmark SKIPPED: {why}");
        }
    }
    let table = report::table(&report);
    for heading in [
        "HTTP writes",
        "Stale-base merges",
        "Fan-out",
        "Scale of documents",
    ] {
        assert!(table.contains(heading), "{heading} missing from:\n{table}");
    }
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["http"].is_array());
}
