//! End-to-end tests of the lost-update comparison: the real server on 127.0.0.1:0 with a
//! temporary data folder, driven over HTTP by the comparison's agents.
//!
//! Nothing here depends on timing: the seed scenario orders its steps explicitly, the
//! stressed runs use lockstep (every agent reads before any agent writes, each round), and
//! the paused lock holder is overtaken by a lock request the server holds until the
//! holder's lease lapses.

use concord_compare::board::TaskEdit;
use concord_compare::history::{
    check, check_with_lost, Basis, Effect, LostEdit, Phase, Recorder, Verdict,
};
use concord_compare::run::{compare, create, run_strategies, Tracker};
use concord_compare::scenario::seed_scenario;
use concord_compare::wire::{Reply, Wire};
use concord_compare::workload::rewrite;
use concord_compare::{no_progress, Options, ThinkRange, Workload};
use concord_core::Strategy;
use concord_tests::TestServer;
use reqwest::Method;
use serde_json::{json, Value};

fn lost_by_strategy(report: &concord_compare::Report) -> Vec<(Strategy, usize)> {
    report.rows.iter().map(|r| (r.strategy, r.lost)).collect()
}

#[tokio::test]
async fn seed_scenario_loses_one_write_under_lww_only() {
    let s = TestServer::start().await;
    let report = seed_scenario(&s.url("")).await.expect("the scenario runs");
    let lost: Vec<(Strategy, usize)> = report
        .strategies
        .iter()
        .map(|r| (r.strategy, r.lost))
        .collect();
    let expected: Vec<(Strategy, usize)> = Strategy::ALL
        .iter()
        .map(|&st| (st, usize::from(st == Strategy::Lww)))
        .collect();
    assert_eq!(lost, expected, "{}", report.text());
    let run = |st: Strategy| report.strategies.iter().find(|r| r.strategy == st).unwrap();
    let has = |st: Strategy, action: &str, detail: &str| {
        run(st)
            .timeline
            .iter()
            .any(|m| m.action == action && m.detail.contains(detail))
    };
    assert!(run(Strategy::Lww).outcome.starts_with("erased"));
    assert!(has(Strategy::Lww, "final", "lost: B's finding"));
    assert!(has(Strategy::Optimistic, "write", "412"), "A gets 412");
    assert!(has(Strategy::Lock, "lock", "423"), "A waits for B");
    assert!(
        has(Strategy::Branches, "look", "[]"),
        "isolated until merged"
    );
    for st in Strategy::ALL {
        assert!(
            !run(st).outcome.starts_with("unexpected"),
            "{}",
            report.text()
        );
        // The lesson's clock: A reads at T=1 (or asks for the lock), B writes at T=4.
        let first = &run(st).timeline[0];
        assert_eq!(first.t, 1, "{st}");
        assert!(run(st).timeline.iter().any(|m| m.t == 4 && m.actor == "B"));
    }
}

/// 8 agents in lockstep: every round, all read the same version before any writes.
fn stressed(workload: Workload, agents: u32, writes: u32) -> Options {
    Options {
        workload,
        agents,
        writes,
        think: ThinkRange { min: 0, max: 3 },
        seed: 7,
        strategies: Strategy::ALL.to_vec(),
        lockstep: true,
    }
}

#[tokio::test]
async fn stressed_run_loses_writes_under_lww_only() {
    let s = TestServer::start().await;
    let opts = stressed(Workload::List, 8, 3);
    let report = compare(&s.url(""), &opts, no_progress())
        .await
        .expect("the comparison runs");
    for row in &report.rows {
        assert_eq!(row.acknowledged, 24, "{}", report.table());
    }
    // Each round, the last of the 8 overlapping writes erases the 7 before it.
    let expected: Vec<(Strategy, usize)> = Strategy::ALL
        .iter()
        .map(|&st| (st, if st == Strategy::Lww { 7 * 3 } else { 0 }))
        .collect();
    assert_eq!(lost_by_strategy(&report), expected, "{}", report.table());
    let optimistic = &report.rows[1];
    assert!(
        optimistic.retries > 0,
        "overlap forces 412s: {}",
        report.table()
    );
}

#[tokio::test]
async fn every_workload_loses_writes_under_lww_only() {
    let s = TestServer::start().await;
    // The board has a test of its own: deletes and moves made at once lose edits under
    // every strategy that does not serialise writers, silently or not.
    for workload in Workload::ALL.into_iter().filter(|w| *w != Workload::Board) {
        let opts = stressed(workload, 4, 2);
        let report = compare(&s.url(""), &opts, no_progress())
            .await
            .expect("the comparison runs");
        for (strategy, lost) in lost_by_strategy(&report) {
            if strategy == Strategy::Lww {
                assert!(lost > 0, "{workload}: {}", report.table());
            } else {
                assert_eq!(lost, 0, "{workload} {strategy}: {}", report.table());
            }
        }
        if workload == Workload::Fields {
            let crdt = report.rows.iter().find(|r| r.strategy == Strategy::Crdt);
            assert!(
                crdt.unwrap().conflicts_kept > 0,
                "concurrent /editor writes are kept as a conflict: {}",
                report.table()
            );
        }
    }
}

/// The board in lockstep: every round, four agents read the same version, then each inserts,
/// deletes, edits, votes on or moves a task. Edits of a task another agent deletes (or
/// moves: a copy put back) in the same round are lost; crdt must surface every one of them
/// in the document's lost edits, and lose nothing silently.
#[tokio::test]
async fn board_loses_nothing_silently_under_crdt_and_lww_loses() {
    let s = TestServer::start().await;
    let wire = Wire::new(&s.url(""));
    let opts = stressed(Workload::Board, 4, 10);
    let tracker = Tracker::new(opts.total_writes(), no_progress());
    let runs = run_strategies(&wire, &opts, &tracker)
        .await
        .expect("the comparison runs");
    let report = concord_compare::Report::new(&opts, runs.iter().map(|r| r.row.clone()).collect());
    let run = |st: Strategy| runs.iter().find(|r| r.row.strategy == st).unwrap();
    let why = |st: Strategy| format!("{st}: {:?}\n{}", run(st).verdict, report.table());
    for row in &report.rows {
        assert!(row.acknowledged > 0, "{}", why(row.strategy));
    }
    assert!(run(Strategy::Lww).row.lost > 0, "{}", why(Strategy::Lww));
    // Writers that take turns (or guard their intents) lose nothing, and so surface nothing.
    for st in [Strategy::Optimistic, Strategy::Lock, Strategy::Queue] {
        let row = &run(st).row;
        assert_eq!((row.lost, row.lost_surfaced), (0, 0), "{}", why(st));
    }
    assert_eq!(run(Strategy::Crdt).row.lost, 0, "{}", why(Strategy::Crdt));
    // The report names both counts, in JSON and in the table.
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["rows"][0].get("lost_surfaced").is_some());
    assert!(report.table().contains("lost surfaced"));
}

/// Two agents read the same board, then each writes a whole board back against that version
/// (crdt): `first` and then `second`, each `(agent, mark, effect)`. Returns the checker's
/// verdict over the final document and its lost edits, and the final value.
async fn race(
    wire: &Wire,
    first: (&str, &str, Effect),
    second: (&str, &str, Effect),
) -> (Verdict, Value) {
    let doc = create(wire, Workload::Board, Strategy::Crdt)
        .await
        .expect("the board is created");
    let history = Recorder::new();
    for (agent, mark, effect) in [&first, &second] {
        history.record(Phase::Invoke, agent, mark, effect);
    }
    let read_sent = history.now_ms();
    let base = wire.read(&doc, "both").await;
    let read = Basis {
        read_sent_ms: Some(read_sent),
        read_ms: Some(history.now_ms()),
        ..Basis::default()
    };
    let (version, value) = (base.version().unwrap(), base.value().unwrap().clone());
    for (agent, mark, effect) in [&first, &second] {
        let written = rewrite(&value, effect, mark, agent, 0);
        let basis = Basis {
            sent_ms: Some(history.now_ms()),
            ..read
        };
        let reply = wire.put(&doc, agent, &version, None, &written).await;
        assert!(reply.is_done(), "{reply:?}");
        history.complete(Phase::Ok, agent, mark, effect, basis);
    }
    let last = wire.read_with_conflicts(&doc).await;
    let body = last.body().expect("the final document").clone();
    let lost = LostEdit::from_answer(&body).expect("lost edits, if any, are a list");
    (
        check_with_lost(&history.events(), &body["value"], &lost),
        body["value"].clone(),
    )
}

fn on(task: &str, edit: TaskEdit) -> Effect {
    Effect::Task {
        task: task.into(),
        edit,
    }
}

/// An edit of a task that a concurrent write deleted is lost, and crdt must surface it among
/// the document's lost edits, in whichever order the two writes arrive.
#[tokio::test]
async fn board_edit_racing_a_delete_is_surfaced_under_crdt() {
    let s = TestServer::start().await;
    let wire = Wire::new(&s.url(""));
    let delete = ("A", "d", on("t2", TaskEdit::Delete));
    let title = ("B", "b-title", on("t2", TaskEdit::Title));
    for (first, second) in [(delete.clone(), title.clone()), (title, delete)] {
        let order = format!("{} then {}", first.1, second.1);
        let (verdict, value) = race(&wire, first, second).await;
        assert_eq!(
            (
                verdict.lost,
                verdict.lost_surfaced,
                verdict.surfaced_marks.as_slice()
            ),
            (0, 1, &["b-title".to_owned()][..]),
            "{order}: {verdict:?} {value}"
        );
    }
}

/// A delete racing a move of the same task: whichever arrives first, the delete must not be
/// lost silently (the task must not come back).
#[tokio::test]
async fn board_delete_racing_a_move_is_not_lost_under_crdt() {
    let s = TestServer::start().await;
    let wire = Wire::new(&s.url(""));
    let delete = ("A", "d", on("t1", TaskEdit::Delete));
    let moved = ("B", "m", on("t1", TaskEdit::Move { to: 4 }));
    for (first, second) in [(delete.clone(), moved.clone()), (moved, delete)] {
        let order = format!("{} then {}", first.1, second.1);
        let (verdict, value) = race(&wire, first, second).await;
        assert_eq!(verdict.lost, 0, "{order}: {verdict:?} {value}");
    }
}

fn token(reply: &Reply) -> String {
    reply.body().expect("a lease")["token"]
        .as_str()
        .expect("a token")
        .to_owned()
}

#[tokio::test]
async fn paused_lock_holder_late_write_is_refused() {
    let s = TestServer::start().await;
    let wire = Wire::new(&s.url(""));
    let created = wire
        .create(&Workload::List.create_body(Strategy::Lock))
        .await;
    let doc = created.body().unwrap()["id"].as_str().unwrap().to_owned();
    let history = Recorder::new();
    let a_mark = "A's late write";
    let b_mark = "B's write";

    // A takes a short lease, reads, and "pauses" (it simply does not write yet).
    history.record(Phase::Invoke, "A", a_mark, &Effect::Append);
    let a_token = token(&wire.lock(&doc, "A", 50, 0).await);
    let a_read = wire.read(&doc, "A").await;
    // B asks with a long wait: the server answers once A's lease has lapsed.
    history.record(Phase::Invoke, "B", b_mark, &Effect::Append);
    let b_token = token(&wire.lock(&doc, "B", 60_000, 30_000).await);
    assert!(b_token.parse::<u64>().unwrap() > a_token.parse::<u64>().unwrap());
    let b_read = wire.read(&doc, "B").await;
    let b_value = json!({"items": [b_mark]});
    let b_write = wire
        .put(
            &doc,
            "B",
            &b_read.version().unwrap(),
            Some(&b_token),
            &b_value,
        )
        .await;
    assert!(b_write.is_done(), "{b_write:?}");
    history.record(Phase::Ok, "B", b_mark, &Effect::Append);

    // A wakes up and writes from its stale read with its old token: fenced.
    let a_value = json!({"items": [a_mark]});
    let a_write = wire
        .put(
            &doc,
            "A",
            &a_read.version().unwrap(),
            Some(&a_token),
            &a_value,
        )
        .await;
    match &a_write {
        Reply::Refused { status, kind, .. } => {
            assert_eq!((status.as_u16(), kind.as_str()), (409, "fenced"))
        }
        other => panic!("the late write was not refused: {other:?}"),
    }
    history.record(Phase::Fail, "A", a_mark, &Effect::Append);

    let last = wire.read(&doc, "check").await;
    assert_eq!(last.value().unwrap(), &json!({"items": [b_mark]}));
    let verdict = check(&history.events(), last.value().unwrap());
    assert_eq!(
        (verdict.acknowledged, verdict.failed, verdict.lost),
        (1, 1, 0)
    );
}

#[tokio::test]
async fn checker_finds_a_planted_lost_write() {
    let s = TestServer::start().await;
    let wire = Wire::new(&s.url(""));
    let created = wire
        .create(&Workload::List.create_body(Strategy::Crdt))
        .await;
    let doc = created.body().unwrap()["id"].as_str().unwrap().to_owned();
    let history = Recorder::new();
    // Three agents append from the same stale version: crdt keeps all three.
    let base = wire.read(&doc, "x").await;
    let version = base.version().unwrap();
    for mark in ["m0", "m1", "m2"] {
        history.record(Phase::Invoke, mark, mark, &Effect::Append);
        let mut value = base.value().unwrap().clone();
        value["items"].as_array_mut().unwrap().push(json!(mark));
        let reply = wire.put(&doc, mark, &version, None, &value).await;
        assert!(reply.is_done(), "{reply:?}");
        history.record(Phase::Ok, mark, mark, &Effect::Append);
    }
    let before = wire.read(&doc, "check").await;
    assert_eq!(check(&history.events(), before.value().unwrap()).lost, 0);

    // Plant a lost write: a rogue writer rewrites the list without m1, against the
    // current version (If-Match: the version it just read).
    let mut rogue = before.value().unwrap().clone();
    rogue["items"].as_array_mut().unwrap().retain(|i| i != "m1");
    let planted = wire
        .put(&doc, "rogue", &before.version().unwrap(), None, &rogue)
        .await;
    assert!(planted.is_done());

    let after = wire.read(&doc, "check").await;
    let verdict = check(&history.events(), after.value().unwrap());
    assert_eq!(verdict.acknowledged, 3);
    assert_eq!(verdict.lost, 1);
    assert_eq!(verdict.lost_marks, ["m1"]);
}

/// `(event, data)` pairs of a Server-Sent Events body.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_owned());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            let name = name?;
            let data = serde_json::from_str(&data).expect("event data is JSON");
            Some((name, data))
        })
        .collect()
}

async fn post_sse(s: &TestServer, path: &str, body: Value) -> Vec<(String, Value)> {
    let reply = s.send(s.request(Method::POST, path).json(&body)).await;
    assert_eq!(reply.status.as_u16(), 200, "{:?}", reply.bytes);
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    sse_events(&String::from_utf8(reply.bytes).unwrap())
}

fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn compare_endpoint_streams_progress_then_result() {
    let s = TestServer::start().await;
    let events = post_sse(
        &s,
        "/v1/compare",
        json!({"workload": "list", "agents": 2, "writes": 2, "think_ms": [0, 1], "seed": 3,
               "strategies": ["lww", "crdt"]}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.len() >= 2, "{events:?}");
    assert!(names[..names.len() - 1].iter().all(|n| *n == "progress"));
    assert_eq!(names.last(), Some(&"result"), "{events:?}");
    assert_eq!(keys(&events[0].1), ["done", "strategy", "total"]);
    assert_eq!(events[0].1["total"], 8);
    let report = &events.last().unwrap().1;
    assert_eq!(
        keys(report),
        ["agents", "rows", "seed", "think_ms", "workload", "writes"]
    );
    assert_eq!(report["think_ms"], json!([0, 1]));
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        keys(&rows[0]),
        [
            "acknowledged",
            "conflicts_kept",
            "lock_wait_ms",
            "lost",
            "lost_surfaced",
            "p50_ms",
            "p99_ms",
            "retries",
            "strategy",
            "tradeoff",
            "wall_ms",
            "writes_per_sec"
        ]
    );
    assert_eq!(rows[1]["strategy"], "crdt");
    assert_eq!(rows[1]["lost"], 0);
    assert_eq!(rows[1]["lost_surfaced"], 0);
    // The board workload, as the viewer asks for it.
    let events = post_sse(
        &s,
        "/v1/compare",
        json!({"workload": "board", "agents": 2, "writes": 2, "think_ms": [0, 1],
               "strategies": ["crdt"]}),
    )
    .await;
    let (name, board) = events.last().unwrap();
    assert_eq!(name, "result", "{events:?}");
    assert_eq!(board["workload"], "board");
    assert_eq!(board["rows"][0]["acknowledged"], 4);
    // The run used a server of its own: this one holds no documents.
    let docs = s.send(s.request(Method::GET, "/v1/docs")).await.json();
    assert_eq!(docs["docs"], json!([]));
}

#[tokio::test]
async fn sweep_and_scenario_endpoints_answer_their_shapes() {
    let s = TestServer::start().await;
    let events = post_sse(
        &s,
        "/v1/compare/sweep",
        json!({"agents": [2], "think_ms": [[0, 1]], "writes": 1, "strategies": ["lww", "queue"]}),
    )
    .await;
    assert_eq!(events[0].0, "progress");
    let (name, result) = events.last().unwrap();
    assert_eq!(name, "result", "{events:?}");
    let points = result["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    assert_eq!(
        keys(&points[0]),
        [
            "agents",
            "conflict_rate",
            "lost",
            "p50_ms",
            "p99_ms",
            "retries",
            "strategy",
            "think_ms",
            "writes_per_sec"
        ]
    );

    let reply = s.send(s.request(Method::GET, "/v1/compare/scenario")).await;
    assert_eq!(reply.status.as_u16(), 200);
    let scenario = reply.json();
    let runs = scenario["strategies"].as_array().unwrap();
    assert_eq!(runs.len(), 6);
    assert_eq!(keys(&runs[0]), ["lost", "outcome", "strategy", "timeline"]);
    assert_eq!(
        keys(&runs[0]["timeline"][0]),
        ["action", "actor", "detail", "t"]
    );
    let lost: Vec<(&str, u64)> = runs
        .iter()
        .map(|r| (r["strategy"].as_str().unwrap(), r["lost"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        lost,
        [
            ("lww", 1),
            ("optimistic", 0),
            ("lock", 0),
            ("queue", 0),
            ("branches", 0),
            ("crdt", 0)
        ]
    );
}

#[tokio::test]
async fn bad_options_are_422_problems() {
    let s = TestServer::start().await;
    let cases = [
        ("/v1/compare", json!({"agents": 65})),
        ("/v1/compare", json!({"agents": 0})),
        ("/v1/compare", json!({"writes": 201})),
        ("/v1/compare", json!({"agents": -1})),
        ("/v1/compare", json!({"think_ms": [50, 10]})),
        ("/v1/compare", json!({"think_ms": [0, 10_000_000]})),
        ("/v1/compare", json!({"think_ms": 5})),
        ("/v1/compare", json!({"workload": "poem"})),
        ("/v1/compare", json!({"strategies": ["paxos"]})),
        ("/v1/compare", json!({"strategies": []})),
        ("/v1/compare", json!({"strategies": ["lww", "lww"]})),
        ("/v1/compare", json!({"agent": 2})),
        ("/v1/compare", json!([])),
        ("/v1/compare/sweep", json!({"agents": [2, 65]})),
        ("/v1/compare/sweep", json!({"agents": []})),
        ("/v1/compare/sweep", json!({"writes": 1000})),
        ("/v1/compare/sweep", json!({"think_ms": [[0, 5], [5, 0]]})),
    ];
    for (path, body) in cases {
        let reply = s.send(s.request(Method::POST, path).json(&body)).await;
        let problem = reply.assert_problem(422);
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("invalid-options"),
            "{path} {body}: {problem}"
        );
    }
    // Not JSON at all is a 400, with the wrong media type a 415.
    s.send(
        s.request(Method::POST, "/v1/compare")
            .header("content-type", "application/json")
            .body("{"),
    )
    .await
    .assert_problem(400);
    s.send(
        s.request(Method::POST, "/v1/compare")
            .header("content-type", "text/plain")
            .body("{}"),
    )
    .await
    .assert_problem(415);
}

/// The runs' agents only need to know whether a write took: their client asks for minimal
/// answers (`Prefer: return=minimal`), and what it writes is the same as with whole ones.
#[tokio::test]
async fn run_writes_ask_for_minimal_answers() {
    let s = TestServer::start().await;
    let (id, version) = s.create(json!({"value": {"items": []}})).await;
    let whole = Wire::new(&s.url(""));
    let minimal = Wire::new(&s.url("")).minimal_answers();
    let ops = json!([{"op": "add", "path": "/items/-", "value": "a"}]);
    let reply = minimal.patch(&id, "m", &ops).await;
    assert!(reply.is_done(), "{}", reply.summary());
    assert_eq!(
        reply.value(),
        Some(&Value::Null),
        "no value in a minimal answer"
    );
    let written = reply.version().expect("the version is in the answer");
    assert_ne!(written, version);
    let reply = minimal
        .put(&id, "m", &written, None, &json!({"items": ["a", "b"]}))
        .await;
    assert_eq!(reply.value(), Some(&Value::Null));
    let read = whole.read(&id, "w").await;
    assert_eq!(read.value(), Some(&json!({"items": ["a", "b"]})));
    assert_eq!(read.version(), reply.version());
    let reply = whole.patch(&id, "w", &ops).await;
    assert_eq!(reply.value(), Some(&json!({"items": ["a", "b", "a"]})));
}
