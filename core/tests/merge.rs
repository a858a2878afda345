//! Merge behaviour of concord-core: table-driven cases of two writers from one base, the
//! list traps (shrink, grow, reorder), and property tests for reconcile and convergence.

mod common;

use common::meta;
use concord_core::patch::{parse_patch, PatchOp};
use concord_core::{Deadline, Document, Schema, Version};
use proptest::prelude::*;
use serde_json::{json, Value};

fn schema(text: &[&str], counters: &[&str]) -> Schema {
    Schema {
        text: text.iter().map(|s| s.to_string()).collect(),
        counters: counters.iter().map(|s| s.to_string()).collect(),
        ids: Vec::new(),
    }
}

/// B and A both read `base`; B writes `b`, then A writes `a` from its stale copy.
fn check(schema: Schema, base: Value, b: Value, a: Value, expected: Value) {
    let (mut doc, _) = Document::create(&base, schema, &meta("setup")).unwrap();
    let v1 = doc.version();
    doc.put(Some(&v1), &b, &meta("B")).unwrap();
    doc.put(Some(&v1), &a, &meta("A")).unwrap();
    assert_eq!(
        doc.read(None).unwrap(),
        expected,
        "base {base}, B {b}, A {a}"
    );
    // The earlier version still reads as it was.
    assert_eq!(doc.read(Some(&v1)).unwrap(), base);
}

#[test]
fn two_writers_from_one_base() {
    let none = || Schema::default();
    // The seed scenario: both appends survive.
    let (mut doc, _) = Document::create(&json!({"items": []}), none(), &meta("setup")).unwrap();
    let v1 = doc.version();
    doc.put(Some(&v1), &json!({"items": ["b"]}), &meta("B"))
        .unwrap();
    doc.put(Some(&v1), &json!({"items": ["a"]}), &meta("A"))
        .unwrap();
    let mut items: Vec<String> =
        serde_json::from_value(doc.read(None).unwrap()["items"].clone()).unwrap();
    items.sort();
    assert_eq!(items, ["a", "b"]);

    // Edits to different keys merge.
    check(
        none(),
        json!({"x": 1, "y": 1}),
        json!({"x": 2, "y": 1}),
        json!({"x": 1, "y": 3}),
        json!({"x": 2, "y": 3}),
    );
    // A delete and an append to one list both apply.
    check(
        none(),
        json!({"l": ["a", "b", "c"]}),
        json!({"l": ["a", "c"]}),
        json!({"l": ["a", "b", "c", "d"]}),
        json!({"l": ["a", "c", "d"]}),
    );
    // Edits inside one list element and a new element both survive.
    check(
        none(),
        json!({"tasks": [{"t": "x", "done": false}]}),
        json!({"tasks": [{"t": "x", "done": true}]}),
        json!({"tasks": [{"t": "x", "done": false}, {"t": "y", "done": false}]}),
        json!({"tasks": [{"t": "x", "done": true}, {"t": "y", "done": false}]}),
    );
    // Counters add up: B adds 5, A adds 3.
    check(
        schema(&[], &["/n"]),
        json!({"n": 0}),
        json!({"n": 5}),
        json!({"n": 3}),
        json!({"n": 8}),
    );
    // Counters inside list elements, by pattern.
    check(
        schema(&[], &["/votes/*"]),
        json!({"votes": [1, 1]}),
        json!({"votes": [2, 1]}),
        json!({"votes": [3, 2]}),
        json!({"votes": [4, 2]}),
    );
    // Collaborative text merges by character.
    check(
        schema(&["/t"], &[]),
        json!({"t": "hello world"}),
        json!({"t": "Hello world"}),
        json!({"t": "hello world!"}),
        json!({"t": "Hello world!"}),
    );
    // A new key from each side.
    check(
        none(),
        json!({}),
        json!({"b": {"x": 1}}),
        json!({"a": [1]}),
        json!({"a": [1], "b": {"x": 1}}),
    );
    // Deleting a map holding something the other side edited: the delete of the key stands.
    check(
        none(),
        json!({"a": {"x": 1}, "k": 0}),
        json!({"k": 0}),
        json!({"a": {"x": 2}, "k": 0}),
        json!({"k": 0}),
    );
}

#[test]
fn same_field_conflict_keeps_both_values() {
    let (mut doc, _) =
        Document::create(&json!({"s": "x"}), Schema::default(), &meta("setup")).unwrap();
    let v1 = doc.version();
    doc.put(Some(&v1), &json!({"s": "b"}), &meta("B")).unwrap();
    doc.put(Some(&v1), &json!({"s": "a"}), &meta("A")).unwrap();
    let shown = doc.read(None).unwrap()["s"].clone();
    assert!(shown == json!("a") || shown == json!("b"));
    let conflicts = doc.conflicts(None).unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "/s");
    let mut seen: Vec<(Value, Option<String>)> = conflicts[0]
        .values
        .iter()
        .map(|v| (v.value.clone(), v.agent.clone()))
        .collect();
    seen.sort_by_key(|(v, _)| v.to_string());
    assert_eq!(
        seen,
        vec![
            (json!("a"), Some("A".into())),
            (json!("b"), Some("B".into()))
        ]
    );
    assert_eq!(
        conflicts[0].values[0].value, shown,
        "the shown value is listed first"
    );
    assert!(conflicts[0].values[0].shown && !conflicts[0].values[1].shown);

    // Writing one value resolves the conflict.
    doc.put(None, &json!({"s": "settled"}), &meta("C")).unwrap();
    assert!(doc.conflicts(None).unwrap().is_empty());
}

/// One writer at the current version: the result is exactly the value written.
fn check_single(schema: Schema, before: Value, after: Value) {
    let (mut doc, _) = Document::create(&before, schema, &meta("setup")).unwrap();
    doc.put(None, &after, &meta("w")).unwrap();
    assert_eq!(doc.read(None).unwrap(), after, "from {before}");
}

#[test]
fn lists_shrink_grow_and_reorder() {
    let lists = [
        (json!(["a", "b", "c"]), json!(["a"])),
        (json!(["a", "b", "c"]), json!(["c"])),
        (json!(["a", "b", "c"]), json!([])),
        (json!([]), json!(["a", "b"])),
        (json!(["a"]), json!(["x", "a", "y", "z"])),
        (json!(["a", "b", "c"]), json!(["c", "a", "b"])),
        (json!(["a", "b", "c", "d"]), json!(["d", "c", "b", "a"])),
        (json!([1, 2, 3]), json!([1, "2", 3.5, null, true])),
        (
            json!([{"a": 1}, {"b": 2}]),
            json!([{"b": 2}, {"a": 1, "c": 3}]),
        ),
        (json!([[1, 2], [3]]), json!([[3], [1, 2, 4]])),
        (json!(["a", "a", "b", "a"]), json!(["a", "b", "a", "a"])),
    ];
    for (before, after) in lists {
        check_single(Schema::default(), json!({"l": before}), json!({"l": after}));
    }
    // Types change in place.
    check_single(
        Schema::default(),
        json!({"x": [1]}),
        json!({"x": {"a": [1]}}),
    );
    check_single(Schema::default(), json!({"x": {"a": 1}}), json!({"x": "s"}));
    check_single(schema(&["/t"], &[]), json!({"t": "abc"}), json!({"t": 5}));
    check_single(
        schema(&["/t"], &["/n"]),
        json!({"t": "abc", "n": 4}),
        json!({"t": "xbcd", "n": -2}),
    );
}

#[test]
fn shrinking_a_list_keeps_the_right_elements_under_concurrency() {
    // The update_object trap: [a,b,c] -> [a] must delete b and c, not a and b.
    check(
        Schema::default(),
        json!({"l": ["a", "b", "c"], "k": 0}),
        json!({"l": ["a", "b", "c"], "k": 1}),
        json!({"l": ["a"], "k": 0}),
        json!({"l": ["a"], "k": 1}),
    );
}

#[test]
fn a_small_edit_makes_a_small_change() {
    let items: Vec<Value> = (0..200).map(|i| json!({"id": i, "done": false})).collect();
    let (mut doc, _) =
        Document::create(&json!({"items": items}), Schema::default(), &meta("s")).unwrap();
    let mut edited = doc.read(None).unwrap();
    edited["items"][100]["done"] = json!(true);
    let out = doc.put(None, &edited, &meta("w")).unwrap();
    assert_eq!(out.changes.len(), 1);
    assert_eq!(doc.history().last().unwrap().ops, 1);
    // Writing the same value again changes nothing.
    let again = doc.put(None, &edited, &meta("w")).unwrap();
    assert!(again.changes.is_empty());
}

#[test]
fn history_records_agents_and_time() {
    let (mut doc, _) =
        Document::create(&json!({"a": 1}), Schema::default(), &meta("setup")).unwrap();
    doc.put(None, &json!({"a": 2}), &meta("alice")).unwrap();
    let h = doc.history();
    assert_eq!(h.len(), 2);
    assert_eq!(h[0].agent.as_deref(), Some("setup"));
    assert_eq!(h[1].agent.as_deref(), Some("alice"));
    assert_eq!(h[1].time, 1_700_000_000);
    assert_eq!(h[1].deps, vec![h[0].hash.clone()]);
    assert_eq!(doc.change_count(), 2);
    assert!(!h[1].recorded);
    assert_eq!(
        (h[1].claimed_agent.as_deref(), h[1].claimed_time),
        (Some("alice"), 1_700_000_000)
    );
}

/// With receipts, history shows who the server received each change from and when, keeps
/// what the change claims beside it, and is sorted by the time received, never putting a
/// change before one it depends on.
#[test]
fn history_shows_receipts_and_keeps_claims() {
    let (mut doc, created) =
        Document::create(&json!({"a": 1}), Schema::default(), &meta("setup")).unwrap();
    let v1 = created.version;
    let claimed = concord_core::WriteMeta {
        agent: "ops".into(),
        time_ms: 9_000_000_000_000_000,
        message: Some("ops did this".into()),
    };
    doc.put(None, &json!({"a": 2}), &claimed).unwrap();
    // Concurrent with the change above: made at the first version.
    doc.put(Some(&v1), &json!({"a": 1, "b": 3}), &meta("carol"))
        .unwrap();
    let causal = doc.history();
    assert_eq!(causal.len(), 3);
    let by_claim = |agent: &str| -> automerge::ChangeHash {
        let entry = causal.iter().find(|h| h.agent.as_deref() == Some(agent));
        entry.unwrap().hash.parse().unwrap()
    };
    let (setup, ops, carol) = (by_claim("setup"), by_claim("ops"), by_claim("carol"));
    // Carol's change was received first of all, even before the one it is built on.
    let h = doc.history_received(|hash| {
        if *hash == setup {
            Some(("setup-sender", 1_800_000_000_000))
        } else if *hash == ops {
            Some(("mallory", 1_800_000_000_500))
        } else if *hash == carol {
            Some(("carol-sender", 1_750_000_000_000))
        } else {
            None
        }
    });
    let shown: Vec<(&str, i64, bool)> = h
        .iter()
        .map(|e| (e.agent.as_deref().unwrap(), e.time, e.recorded))
        .collect();
    assert_eq!(
        shown,
        [
            ("setup-sender", 1_800_000_000, true),
            ("carol-sender", 1_750_000_000, true),
            ("mallory", 1_800_000_000, true),
        ]
    );
    let shown_ops = &h[2];
    assert_eq!(shown_ops.hash, ops.to_string());
    assert_eq!(
        (shown_ops.claimed_agent.as_deref(), shown_ops.claimed_time),
        (Some("ops"), 9_000_000_000_000)
    );
    assert_eq!(shown_ops.message.as_deref(), Some("ops did this"));
    assert_eq!(h[1].claimed_agent.as_deref(), Some("carol"));
}

/// `(patch, expected)` applied to one starting document; `expected` `Err` holds a piece of
/// the error message, and the document must be unchanged.
fn check_patch(start: Value, patch: Value, expected: Result<Value, &str>) {
    let s = schema(&["/text"], &["/count"]);
    let (mut doc, _) = Document::create(&start, s, &meta("setup")).unwrap();
    let before = doc.version();
    let result = parse_patch(&patch).and_then(|ops| doc.patch(None, &ops, &meta("p")));
    match expected {
        Ok(value) => {
            result.unwrap_or_else(|e| panic!("{patch}: {e}"));
            assert_eq!(doc.read(None).unwrap(), value, "{patch}");
        }
        Err(piece) => {
            let err = result.expect_err(&patch.to_string()).to_string();
            assert!(err.contains(piece), "{patch}: {err:?} lacks {piece:?}");
            assert_eq!(doc.version(), before, "{patch} changed the document");
        }
    }
}

#[test]
fn json_patch_operations() {
    let start = json!({"a": 1, "l": [1, 2, 3], "o": {"x": "y"}, "text": "hello", "count": 1});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = start.clone();
        f(&mut v);
        Ok(v)
    };
    let cases: Vec<(Value, Result<Value, &str>)> = vec![
        (
            json!([{"op": "add", "path": "/b", "value": [1]}]),
            with(&|v| v["b"] = json!([1])),
        ),
        (
            json!([{"op": "add", "path": "/l/1", "value": 9}]),
            with(&|v| v["l"] = json!([1, 9, 2, 3])),
        ),
        (
            json!([{"op": "add", "path": "/l/-", "value": 4}]),
            with(&|v| v["l"] = json!([1, 2, 3, 4])),
        ),
        (
            json!([{"op": "add", "path": "/l/3", "value": 4}]),
            with(&|v| v["l"] = json!([1, 2, 3, 4])),
        ),
        (
            json!([{"op": "remove", "path": "/l/0"}]),
            with(&|v| v["l"] = json!([2, 3])),
        ),
        (
            json!([{"op": "remove", "path": "/o/x"}]),
            with(&|v| v["o"] = json!({})),
        ),
        (
            json!([{"op": "replace", "path": "/a", "value": {"z": 1}}]),
            with(&|v| v["a"] = json!({"z": 1})),
        ),
        (
            json!([{"op": "replace", "path": "/l/2", "value": 30}]),
            with(&|v| v["l"] = json!([1, 2, 30])),
        ),
        (
            json!([{"op": "move", "from": "/o/x", "path": "/m"}]),
            with(&|v| {
                v["o"] = json!({});
                v["m"] = json!("y");
            }),
        ),
        (
            json!([{"op": "move", "from": "/l/0", "path": "/l/-"}]),
            with(&|v| v["l"] = json!([2, 3, 1])),
        ),
        (
            json!([{"op": "copy", "from": "/o", "path": "/p"}]),
            with(&|v| v["p"] = json!({"x": "y"})),
        ),
        (
            json!([{"op": "test", "path": "/a", "value": 1.0}, {"op": "add", "path": "/t", "value": true}]),
            with(&|v| v["t"] = json!(true)),
        ),
        (
            json!([{"op": "increment", "path": "/count", "value": 4}]),
            with(&|v| v["count"] = json!(5)),
        ),
        (
            json!([{"op": "increment", "path": "/fresh", "value": 2}]),
            with(&|v| v["fresh"] = json!(2)),
        ),
        (
            json!([{"op": "splice", "path": "/text", "pos": 5, "insert": " world"}]),
            with(&|v| v["text"] = json!("hello world")),
        ),
        (
            json!([{"op": "splice", "path": "/text", "pos": 0, "del": 1, "insert": "J"}]),
            with(&|v| v["text"] = json!("jello".replace('j', "J"))),
        ),
        (
            json!([{"op": "replace", "path": "", "value": {"only": 1}}]),
            Ok(json!({"only": 1})),
        ),
        (
            json!([{"op": "add", "path": "/o/x~1y", "value": 1}]),
            with(&|v| v["o"]["x/y"] = json!(1)),
        ),
        // Failures: nothing applied, not even the operations before the failing one.
        (
            json!([{"op": "add", "path": "/b", "value": 1}, {"op": "test", "path": "/a", "value": 2}]),
            Err("test failed at /a"),
        ),
        (
            json!([{"op": "remove", "path": "/nope"}]),
            Err("no value at /nope"),
        ),
        (
            json!([{"op": "replace", "path": "/l/3", "value": 1}]),
            Err("no value at /l/3"),
        ),
        (
            json!([{"op": "add", "path": "/l/5", "value": 1}]),
            Err("no value at /l/5"),
        ),
        (
            json!([{"op": "add", "path": "/l/01", "value": 1}]),
            Err("not a list index"),
        ),
        (
            json!([{"op": "add", "path": "/missing/x", "value": 1}]),
            Err("no value at /missing/x"),
        ),
        (
            json!([{"op": "add", "path": "/a/x", "value": 1}]),
            Err("scalar value has no children"),
        ),
        (
            json!([{"op": "add", "path": "x", "value": 1}]),
            Err("invalid JSON Pointer"),
        ),
        (
            json!([{"op": "remove", "path": ""}]),
            Err("cannot remove the document root"),
        ),
        (
            json!([{"op": "move", "from": "/o", "path": "/o/inner"}]),
            Err("own child"),
        ),
        (
            json!([{"op": "increment", "path": "/a", "value": 1}]),
            Err("plain number"),
        ),
        (
            json!([{"op": "splice", "path": "/o/x", "pos": 0, "insert": "z"}]),
            Err("atomic string"),
        ),
        (
            json!([{"op": "splice", "path": "/text", "pos": 9, "insert": "z"}]),
            Err("outside the text"),
        ),
        (
            json!([{"op": "replace", "path": "", "value": [1]}]),
            Err("root must be a JSON object"),
        ),
        (json!([{"op": "jump", "path": "/a"}]), Err("operation 0")),
        (
            json!([{"op": "add", "path": "/a"}]),
            Err("missing field `value`"),
        ),
        // RFC 6902 §4: members an operation does not define are ignored (appendix A.11).
        (
            json!([{"op": "remove", "path": "/a", "extra": 1}]),
            with(&|v| {
                v.as_object_mut().unwrap().remove("a");
            }),
        ),
        (
            json!({"op": "remove", "path": "/a"}),
            Err("array of operations"),
        ),
    ];
    for (patch, expected) in cases {
        check_patch(start.clone(), patch, expected);
    }
}

#[test]
fn patch_paths_mean_what_they_meant_at_the_base() {
    let (mut doc, _) = Document::create(
        &json!({"l": ["a", "b", "c"]}),
        Schema::default(),
        &meta("s"),
    )
    .unwrap();
    let v1 = doc.version();
    // Someone inserts at the front; a patch made against v1 still removes "b".
    doc.patch(
        None,
        &parse_patch(&json!([{"op": "add", "path": "/l/0", "value": "z"}])).unwrap(),
        &meta("x"),
    )
    .unwrap();
    doc.patch(
        Some(&v1),
        &parse_patch(&json!([{"op": "remove", "path": "/l/1"}])).unwrap(),
        &meta("y"),
    )
    .unwrap();
    assert_eq!(doc.read(None).unwrap(), json!({"l": ["z", "a", "c"]}));
}

/// The value after a write, checked: the kept value is a fresh read, and the write's
/// change event replayed on `before` gives it.
fn kept_and_replayed(doc: &Document, before: Value, outcome: concord_core::WriteOutcome) -> Value {
    let now = doc.read(None).unwrap();
    assert_eq!(&**doc.value(), &now);
    let ops: json_patch::Patch = serde_json::from_value(Value::Array(outcome.patch)).unwrap();
    let mut replayed = before;
    json_patch::patch(&mut replayed, &ops).unwrap();
    assert_eq!(replayed, now);
    now
}

/// Side-by-side inserts are applied as one splice; they must mean exactly what the same
/// operations mean one at a time, at a stale base too, with schema types inside the run.
#[test]
fn runs_of_inserts_mean_what_their_operations_mean() {
    let schema = || schema(&["/l/*/body"], &["/l/*/votes"]);
    let start = json!({"l": [{"body": "x", "votes": 0}, {"body": "y", "votes": 0}], "m": {}});
    let element = |i: usize| json!({"body": format!("e{i}"), "votes": i});
    let appends: Vec<Value> = (0..50)
        .map(|i| json!({"op": "add", "path": "/l/-", "value": element(i)}))
        .collect();
    let at_one: Vec<Value> = (0..50)
        .map(|i| json!({"op": "add", "path": format!("/l/{}", 1 + i), "value": element(i)}))
        .collect();
    let repeated: Vec<Value> = (0..50)
        .map(|i| json!({"op": "add", "path": "/l/1", "value": element(49 - i)}))
        .collect();
    for run in [appends, at_one, repeated] {
        // One patch against the same patch split into one-op patches, at the present.
        let (mut whole, _) = Document::create(&start, schema(), &meta("s")).unwrap();
        let (mut split, _) = Document::create(&start, schema(), &meta("s")).unwrap();
        whole
            .patch(
                None,
                &parse_patch(&Value::from(run.clone())).unwrap(),
                &meta("w"),
            )
            .unwrap();
        for op in &run {
            split
                .patch(None, &parse_patch(&json!([op])).unwrap(), &meta("w"))
                .unwrap();
        }
        assert_eq!(whole.read(None).unwrap(), split.read(None).unwrap());
        assert_eq!(&**whole.value(), &whole.read(None).unwrap());

        // At a stale base, while someone edited the neighbours, inserted and appended.
        let (mut doc, _) = Document::create(&start, schema(), &meta("s")).unwrap();
        let v1 = doc.version();
        let present = json!([
            {"op": "replace", "path": "/l/0/body", "value": "X"},
            {"op": "replace", "path": "/l/1/body", "value": "Y"},
            {"op": "add", "path": "/l/1", "value": {"body": "mid", "votes": 0}},
            {"op": "add", "path": "/l/-", "value": {"body": "end", "votes": 0}}
        ]);
        doc.patch(None, &parse_patch(&present).unwrap(), &meta("B"))
            .unwrap();
        let mut stale = run.clone();
        // Schema types hold inside the run: a later op edits an inserted text and counter.
        stale.push(json!({"op": "splice", "path": "/l/2/body", "pos": 0, "insert": "!"}));
        stale.push(json!({"op": "increment", "path": "/l/2/votes", "value": 5}));
        let before = doc.read(None).unwrap();
        let outcome = doc
            .patch(
                Some(&v1),
                &parse_patch(&Value::from(stale)).unwrap(),
                &meta("A"),
            )
            .unwrap();
        // The kept value and the change event follow the splice too.
        let now = kept_and_replayed(&doc, before, outcome);
        let bodies: Vec<&str> = now["l"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["body"].as_str().unwrap())
            .collect();
        let ours: Vec<&str> = bodies
            .iter()
            .copied()
            .filter(|b| !["X", "Y", "mid", "end"].contains(b))
            .collect();
        let mut expected: Vec<String> = (0..50).map(|i| format!("e{i}")).collect();
        let edited = if run[0]["path"] == "/l/-" { 0 } else { 1 };
        expected[edited] = format!("!{}", expected[edited]);
        assert_eq!(ours, expected, "the run keeps its order: {bodies:?}");
        for kept in ["X", "Y", "mid", "end"] {
            assert!(bodies.contains(&kept), "{kept} survives: {bodies:?}");
        }
        let votes = now["l"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["body"] == expected[edited])
            .unwrap()["votes"]
            .clone();
        assert_eq!(votes, json!(edited + 5));
        if run[0]["path"] == "/l/1" {
            // Inserted where the writer saw them: between x and y.
            let x = bodies.iter().position(|b| *b == "X").unwrap();
            let y = bodies.iter().position(|b| *b == "Y").unwrap();
            let first = bodies.iter().position(|b| *b == "e0").unwrap();
            let last = bodies.iter().position(|b| *b == "e49").unwrap();
            assert!(x < first && last < y, "{bodies:?}");
        }
    }

    // A run that is not into a list, or past its end, means what its operations mean.
    let (mut doc, _) = Document::create(&start, schema(), &meta("s")).unwrap();
    let into_map = json!([
        {"op": "add", "path": "/m/-", "value": 1},
        {"op": "add", "path": "/m/-", "value": 2}
    ]);
    doc.patch(None, &parse_patch(&into_map).unwrap(), &meta("w"))
        .unwrap();
    assert_eq!(doc.read(None).unwrap()["m"], json!({"-": 2}));
    let past_end = json!([
        {"op": "add", "path": "/l/3", "value": 1},
        {"op": "add", "path": "/l/4", "value": 2}
    ]);
    let err = doc
        .patch(None, &parse_patch(&past_end).unwrap(), &meta("w"))
        .unwrap_err();
    assert!(err.to_string().contains("/l/3"), "{err}");
    assert_eq!(doc.read(None).unwrap()["l"].as_array().unwrap().len(), 2);
}

#[test]
fn merge_patch() {
    let (mut doc, _) = Document::create(
        &json!({"a": 1, "o": {"x": 1, "y": 2}, "k": "v"}),
        Schema::default(),
        &meta("s"),
    )
    .unwrap();
    doc.merge_patch(
        None,
        &json!({"a": null, "o": {"y": null, "z": {"deep": null, "w": 1}}, "n": [1]}),
        &meta("m"),
    )
    .unwrap();
    assert_eq!(
        doc.read(None).unwrap(),
        json!({"o": {"x": 1, "z": {"w": 1}}, "k": "v", "n": [1]})
    );
    assert!(doc.merge_patch(None, &json!([1]), &meta("m")).is_err());
}

#[test]
fn unknown_and_malformed_versions_are_refused() {
    let (mut doc, _) = Document::create(&json!({"a": 1}), Schema::default(), &meta("s")).unwrap();
    let unknown: Version = "ab".repeat(32).parse().unwrap();
    assert!(doc
        .put(Some(&unknown), &json!({}), &meta("x"))
        .unwrap_err()
        .to_string()
        .contains("unknown version"));
    assert!(doc.read(Some(&unknown)).is_err());
    assert!("nothex".parse::<Version>().is_err());
}

#[test]
fn raw_changes_are_idempotent_and_garbage_is_refused() {
    let (mut a, _) = Document::create(&json!({"a": 1}), Schema::default(), &meta("s")).unwrap();
    let all = a.changes_since(None).unwrap();
    let (mut b, _) = Document::load(Schema::default(), None, std::slice::from_ref(&all)).unwrap();
    a.put(None, &json!({"a": 2}), &meta("x")).unwrap();
    let v = b.version();
    let delta = a.changes_since(Some(&v)).unwrap();
    assert_eq!(b.apply_changes(&delta).unwrap().changes.len(), 1);
    assert_eq!(
        b.apply_changes(&delta).unwrap().changes.len(),
        0,
        "second delivery adds nothing"
    );
    assert_eq!(b.read(None).unwrap(), json!({"a": 2}));
    let before = b.version();
    assert!(b.apply_changes(b"definitely not automerge").is_err());
    let mut torn = delta.clone();
    torn.extend_from_slice(b"garbage tail");
    assert!(b.apply_changes(&torn).is_err());
    assert_eq!(b.version(), before);
}

/// An append finds the end of a list from Automerge's index of visible elements (the
/// vendored patch 3), which must count what a walk of the list counts: after concurrent
/// inserts and deletes, conflicting values of one element, and a rolled-back transaction.
#[test]
fn appends_land_at_the_end_whatever_the_list_went_through() {
    use automerge::ReadDoc;
    let length_of = |doc: &Document| {
        let am = doc.automerge();
        let (_, list) = am.get(automerge::ROOT, "l").unwrap().unwrap();
        let indexed = am.length(&list);
        assert_eq!(
            indexed,
            am.length_at(&list, &am.get_heads()),
            "index and walk"
        );
        assert_eq!(
            indexed,
            doc.read(None).unwrap()["l"].as_array().unwrap().len()
        );
        indexed
    };
    let add = |path: &str, value: Value| PatchOp::Add {
        path: path.into(),
        value,
    };
    let (mut a, _) =
        Document::create(&json!({"l": [0, 1, 2, 3]}), Schema::default(), &meta("s")).unwrap();
    let (mut b, _) = a.fork();
    a.patch(
        None,
        &[add("/l/1", json!("a1")), add("/l/-", json!("a-end"))],
        &meta("a"),
    )
    .unwrap();
    a.patch(
        None,
        &[PatchOp::Remove {
            path: "/l/0".into(),
        }],
        &meta("a"),
    )
    .unwrap();
    b.patch(
        None,
        &[PatchOp::Replace {
            path: "/l/2".into(),
            value: json!("b2"),
        }],
        &meta("b"),
    )
    .unwrap();
    b.patch(
        None,
        &[PatchOp::Remove {
            path: "/l/3".into(),
        }],
        &meta("b"),
    )
    .unwrap();
    a.merge_from(&b).unwrap();
    let merged = a.read(None).unwrap();
    let length = length_of(&a);
    assert_eq!(length, 4, "{merged}");
    // A patch that appends and then fails its test rolls back: the next append still lands
    // at the end.
    assert!(a
        .patch(
            None,
            &[
                add("/l/-", json!("gone")),
                PatchOp::Test {
                    path: "/l/0".into(),
                    value: json!("no")
                }
            ],
            &meta("a"),
        )
        .is_err());
    a.patch(
        None,
        &[add("/l/-", json!("x")), add("/l/-", json!("y"))],
        &meta("a"),
    )
    .unwrap();
    let after = a.read(None).unwrap();
    let list = after["l"].as_array().unwrap();
    assert_eq!(list.len(), length + 2);
    assert_eq!(&list[..length], merged["l"].as_array().unwrap().as_slice());
    assert_eq!(&list[length..], &[json!("x"), json!("y")]);
    // A stale append (its base before the merge) lands at the end of the list it saw, and
    // the present keeps every element.
    let (mut c, _) =
        Document::load(Schema::default(), None, &[b.changes_since(None).unwrap()]).unwrap();
    let stale = c.version();
    c.apply_changes(&a.changes_since(None).unwrap()).unwrap();
    c.patch(Some(&stale), &[add("/l/-", json!("stale"))], &meta("c"))
        .unwrap();
    let value = c.read(None).unwrap();
    let list = value["l"].as_array().unwrap();
    assert_eq!(length_of(&c), length + 3);
    assert!(list.contains(&json!("stale")));
}

#[test]
fn raw_changes_read_in_batches_are_the_changes_read_at_once() {
    let (mut a, _) =
        Document::create(&json!({"items": []}), Schema::default(), &meta("s")).unwrap();
    let (mut b, _) = a.fork();
    for i in 0..150 {
        let op = PatchOp::Add {
            path: "/items/-".into(),
            value: json!({"n": i, "pad": "x".repeat(i % 40)}),
        };
        a.patch(None, std::slice::from_ref(&op), &meta("a"))
            .unwrap();
        b.patch(None, &[op], &meta("b")).unwrap();
    }
    a.merge_from(&b).unwrap();
    let middle = a.version();
    for i in 0..50 {
        a.put(None, &json!({"items": [i]}), &meta("a")).unwrap();
    }
    let batches = |doc: &Document, since: Option<&Version>, max_bytes: usize| {
        let mut cursor = doc.changes_since_cursor(since).unwrap();
        let total = cursor.remaining();
        let (mut out, mut count) = (Vec::new(), 0);
        while let Some(batch) = cursor.next_batch(doc, max_bytes).unwrap() {
            assert!(!batch.is_empty());
            out.extend(batch);
            count += 1;
        }
        assert_eq!(cursor.remaining(), 0);
        (out, total, count)
    };
    for since in [None, Some(&middle)] {
        let whole = a.changes_since(since).unwrap();
        let (one_each, total, count) = batches(&a, since, 1);
        assert_eq!(one_each, whole, "one change a batch");
        assert_eq!(
            count, total,
            "a batch holds one change when each passes the limit"
        );
        let (few_each, _, fewer) = batches(&a, since, 4096);
        assert_eq!(few_each, whole, "batches of 4 KiB");
        assert!(
            fewer > 1 && fewer < total,
            "{fewer} batches of {total} changes"
        );
    }
    assert_eq!(
        batches(&a, None, 1).1,
        351,
        "creation, 300 patches and 50 puts"
    );

    // The cursor stays valid while the document takes more, and reads what it was made for;
    // what it reads, on top of what came before, is the document.
    let expected = a.changes_since(Some(&middle)).unwrap();
    let mut cursor = a.changes_since_cursor(Some(&middle)).unwrap();
    let mut read = cursor.next_batch(&a, 1).unwrap().unwrap();
    a.put(None, &json!({"items": ["later"]}), &meta("a"))
        .unwrap();
    while let Some(batch) = cursor.next_batch(&a, 1 << 20).unwrap() {
        read.extend(batch);
    }
    assert_eq!(read, expected);
    let (c, _) = Document::create(&json!({}), Schema::default(), &meta("c")).unwrap();
    assert!(
        c.changes_since_cursor(Some(&middle)).is_err(),
        "a version the document lacks"
    );
    assert!(
        a.changes_since_cursor(Some(&middle))
            .unwrap()
            .next_batch(&c, 1)
            .is_err(),
        "a cursor read against a document that lacks its changes"
    );
}

#[test]
fn loading_skips_a_corrupt_record_and_reports_it() {
    let (mut doc, first) =
        Document::create(&json!({"a": 1}), Schema::default(), &meta("s")).unwrap();
    let second = doc.put(None, &json!({"a": 2}), &meta("x")).unwrap();
    let mut records: Vec<Vec<u8>> = first
        .stored_changes()
        .into_iter()
        .chain(second.stored_changes())
        .map(|c| c.bytes)
        .collect();
    let good = records.clone();
    let last = records.last_mut().unwrap();
    last.truncate(last.len() / 2);
    let (loaded, report) = Document::load(Schema::default(), None, &records).unwrap();
    assert_eq!(loaded.read(None).unwrap(), json!({"a": 1}));
    assert_eq!(report.skipped.len(), 1);
    let (loaded, report) = Document::load(Schema::default(), None, &good).unwrap();
    assert_eq!(loaded.read(None).unwrap(), json!({"a": 2}));
    assert!(report.skipped.is_empty());
}

// ---- properties ----

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        "[a-c]{0,3}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::btree_map("[a-d]", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_root() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map("[a-d]", arb_json(), 0..4),
        prop::option::of("[a-c ]{0,8}"),
        prop::option::of(-10i64..10),
    )
        .prop_map(|(m, text, count)| {
            let mut v: serde_json::Map<String, Value> = m.into_iter().collect();
            if let Some(t) = text {
                v.insert("text".into(), t.into());
            }
            if let Some(c) = count {
                v.insert("count".into(), c.into());
            }
            Value::Object(v)
        })
}

fn prop_schema() -> Schema {
    schema(&["/text"], &["/count"])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// A write at the current version makes the document exactly the value written.
    #[test]
    fn reconcile_reaches_the_target(before in arb_root(), after in arb_root()) {
        let (mut doc, _) = Document::create(&before, prop_schema(), &meta("s")).unwrap();
        prop_assert_eq!(doc.read(None).unwrap(), before);
        doc.put(None, &after, &meta("w")).unwrap();
        prop_assert_eq!(doc.read(None).unwrap(), after);
    }

    /// Writers from random earlier versions, their changes delivered to replicas in random
    /// orders with duplicates: every replica ends equal to the origin.
    #[test]
    fn concurrent_writes_converge_in_any_order(
        start in arb_root(),
        writes in prop::collection::vec((arb_root(), any::<prop::sample::Index>()), 1..6),
        orders in prop::collection::vec(Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()), 2..4),
    ) {
        let (mut origin, first) = Document::create(&start, prop_schema(), &meta("s")).unwrap();
        let mut versions = vec![origin.version()];
        let mut changes: Vec<Vec<u8>> = first.stored_changes().into_iter().map(|c| c.bytes).collect();
        for (i, (value, base)) in writes.iter().enumerate() {
            let base = base.get(&versions).clone();
            let out = origin.put(Some(&base), value, &meta(&format!("w{i}"))).unwrap();
            changes.extend(out.stored_changes().into_iter().map(|c| c.bytes));
            versions.push(out.version);
        }
        let expected = origin.read(None).unwrap();
        for seed in orders {
            // A deterministic shuffle with duplicates, from the seed.
            let mut order: Vec<usize> = (0..changes.len()).chain(0..changes.len() / 2).collect();
            let mut s = seed | 1;
            for i in (1..order.len()).rev() {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                order.swap(i, (s % (i as u64 + 1)) as usize);
            }
            let (mut replica, _) = Document::load(prop_schema(), None, &[]).unwrap();
            for i in order {
                replica.apply_changes(&changes[i]).unwrap();
            }
            prop_assert!(replica.missing_deps().is_empty());
            prop_assert_eq!(replica.read(None).unwrap(), expected.clone());
            prop_assert_eq!(replica.version(), origin.version());
        }
    }
}

#[test]
fn forks_edit_apart_and_merge_back() {
    let (mut main, _) =
        Document::create(&json!({"notes": []}), Schema::default(), &meta("s")).unwrap();
    let (mut a, all) = main.fork();
    assert_eq!(all.changes.len(), 1);
    let (mut b, _) = main.fork();
    let va = a.version();
    a.put(Some(&va), &json!({"notes": ["from a"]}), &meta("A"))
        .unwrap();
    let vb = b.version();
    b.put(Some(&vb), &json!({"notes": ["from b"]}), &meta("B"))
        .unwrap();
    assert_eq!(
        main.read(None).unwrap(),
        json!({"notes": []}),
        "forks are isolated"
    );
    assert!(main.shares_origin(&a) && a.shares_origin(&main));
    assert_eq!(main.merge_from(&a).unwrap().changes.len(), 1);
    assert_eq!(main.merge_from(&b).unwrap().changes.len(), 1);
    assert_eq!(
        main.merge_from(&b).unwrap().changes.len(),
        0,
        "merging twice adds nothing"
    );
    assert_eq!(
        main.read(None).unwrap()["notes"].as_array().unwrap().len(),
        2
    );
    let (stranger, _) = Document::create(&json!({}), Schema::default(), &meta("s")).unwrap();
    assert!(!main.shares_origin(&stranger));
}

/// JSON does not tell `3` from `3.0`: a whole number written with a fraction part is the
/// same number in `increment` and `splice`; a fraction, a negative position or one past
/// 2^53 - 1 (what every JSON reader holds exactly) is refused.
#[test]
fn patch_numbers_are_whole_however_written() {
    let ops = parse_patch(&json!([
        {"op": "increment", "path": "/n", "value": 2.0},
        {"op": "splice", "path": "/t", "pos": 1.0, "del": 0.0, "insert": "x"},
    ]))
    .unwrap();
    assert_eq!(
        ops,
        parse_patch(&json!([
            {"op": "increment", "path": "/n", "value": 2},
            {"op": "splice", "path": "/t", "pos": 1, "del": 0, "insert": "x"},
        ]))
        .unwrap()
    );
    for bad in [
        json!([{"op": "increment", "path": "/n", "value": 1.5}]),
        json!([{"op": "splice", "path": "/t", "pos": -1, "insert": "x"}]),
        json!([{"op": "increment", "path": "/n", "value": 1e300}]),
        json!([{"op": "increment", "path": "/n", "value": 9_007_199_254_740_992_i64}]),
        json!([{"op": "splice", "path": "/t", "pos": 1.036_694_456_201_581e20, "insert": "x"}]),
    ] {
        let err = parse_patch(&bad).unwrap_err().to_string();
        assert!(err.contains("whole number"), "{bad}: {err}");
    }
}

#[test]
fn an_edit_past_its_deadline_changes_nothing() {
    let (mut doc, _) =
        Document::create(&json!({"l": [1, 2]}), Schema::default(), &meta("s")).unwrap();
    let v1 = doc.version();
    let appends = parse_patch(&json!([
        {"op": "add", "path": "/l/-", "value": 3},
        {"op": "replace", "path": "/l/0", "value": 0}
    ]))
    .unwrap();
    // A deadline that has passed: every kind of edit stops.
    doc.set_deadline(Some(Deadline::new(|| true)));
    for stale in [None, Some(&v1)] {
        let err = doc.patch(stale, &appends, &meta("w")).unwrap_err();
        assert!(
            matches!(err, concord_core::Error::DeadlineExceeded),
            "{err}"
        );
        let err = doc.put(stale, &json!({"l": [9]}), &meta("w")).unwrap_err();
        assert!(
            matches!(err, concord_core::Error::DeadlineExceeded),
            "{err}"
        );
        let err = doc
            .merge_patch(stale, &json!({"x": 1}), &meta("w"))
            .unwrap_err();
        assert!(
            matches!(err, concord_core::Error::DeadlineExceeded),
            "{err}"
        );
    }
    assert_eq!(doc.version(), v1);
    assert_eq!(doc.read(None).unwrap(), json!({"l": [1, 2]}));
    assert_eq!(&**doc.value(), &json!({"l": [1, 2]}));
    // One that passes halfway through a patch: what the patch did so far is rolled back.
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&asked);
    doc.set_deadline(Some(Deadline::new(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 5
    })));
    let replaces: Vec<Value> = (0..20)
        .map(|i| json!({"op": "replace", "path": format!("/l/{}", i % 2), "value": i}))
        .collect();
    let err = doc
        .patch(
            None,
            &parse_patch(&Value::from(replaces)).unwrap(),
            &meta("w"),
        )
        .unwrap_err();
    assert!(
        matches!(err, concord_core::Error::DeadlineExceeded),
        "{err}"
    );
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) > 5);
    assert_eq!(doc.version(), v1);
    assert_eq!(&**doc.value(), &json!({"l": [1, 2]}));
    // Without one, the same edit applies.
    doc.set_deadline(None);
    doc.patch(Some(&v1), &appends, &meta("w")).unwrap();
    assert_eq!(doc.read(None).unwrap(), json!({"l": [0, 2, 3]}));
}

/// Removes that all name one index are one splice; they must mean what the same removes
/// mean one at a time: the same value, and the same lost-edit records when a concurrent
/// writer edited an element they delete.
#[test]
fn runs_of_removes_mean_what_their_operations_mean() {
    let start = json!({
        "l": [{"name": "a"}, {"name": "b"}, {"name": "c"}, {"name": "d"}, {"name": "e"}],
        "m": {}
    });
    let removes = |index: usize, n: usize, broken: bool| {
        let mut ops = Vec::new();
        for _ in 0..n {
            ops.push(json!({"op": "remove", "path": format!("/l/{index}")}));
            if broken {
                // Changes nothing, and keeps the removes from forming a run.
                ops.push(json!({"op": "test", "path": "/m", "value": {}}));
            }
        }
        parse_patch(&Value::from(ops)).unwrap()
    };
    let mut outcomes = Vec::new();
    for broken in [false, true] {
        // At the present.
        let (mut doc, _) = Document::create(&start, Schema::default(), &meta("s")).unwrap();
        doc.patch(None, &removes(1, 3, broken), &meta("A")).unwrap();
        let present = doc.read(None).unwrap();
        assert_eq!(present["l"], json!([{"name": "a"}, {"name": "e"}]));
        // At a stale base, while someone edited an element the run deletes and inserted
        // one before it.
        let (mut doc, _) = Document::create(&start, Schema::default(), &meta("s")).unwrap();
        let v1 = doc.version();
        let concurrent = json!([
            {"op": "replace", "path": "/l/2/name", "value": "C edited"},
            {"op": "add", "path": "/l/1", "value": {"name": "new"}}
        ]);
        doc.patch(None, &parse_patch(&concurrent).unwrap(), &meta("B"))
            .unwrap();
        let before = doc.read(None).unwrap();
        let outcome = doc
            .patch(Some(&v1), &removes(1, 3, broken), &meta("A"))
            .unwrap();
        let now = kept_and_replayed(&doc, before, outcome);
        let lost: Vec<(String, Vec<String>)> = doc
            .lost()
            .iter()
            .map(|l| (l.path.clone(), l.edited_by.clone()))
            .collect();
        outcomes.push((now, lost));
    }
    assert_eq!(
        outcomes[0], outcomes[1],
        "one splice against one remove at a time"
    );
    let (now, lost) = &outcomes[0];
    assert_eq!(
        now["l"],
        json!([{"name": "a"}, {"name": "new"}, {"name": "e"}])
    );
    assert_eq!(lost.len(), 1, "the edit to c is kept as lost: {lost:?}");

    // Past the end, a run means what its operations mean: the second remove fails.
    let (mut doc, _) = Document::create(&start, Schema::default(), &meta("s")).unwrap();
    let err = doc
        .patch(None, &removes(4, 2, false), &meta("A"))
        .unwrap_err();
    assert!(err.to_string().contains("/l/4"), "{err}");
    assert_eq!(doc.read(None).unwrap(), start);
}
