//! The merge is exact: no edit lands on the wrong element or disappears silently.
//!
//! Each case starts from a document at version V; Y writes first, then X, both at V (the
//! cases of the issue "The merge is exact"). Then the property: random list edits by X from
//! V while Y edits fields of elements at V; each of Y's edits ends on the element Y edited,
//! unless X deleted it, in which case it is listed as a lost edit.

mod common;

use common::meta;
use concord_core::patch::parse_patch;
use concord_core::{Document, Schema, Version};
use proptest::prelude::*;
use serde_json::{json, Value};

fn schema(text: &[&str], counters: &[&str], ids: &[&str]) -> Schema {
    let own = |p: &[&str]| p.iter().map(|s| s.to_string()).collect();
    Schema {
        text: own(text),
        counters: own(counters),
        ids: own(ids),
    }
}

/// One write: a whole value, a JSON Patch, or a merge patch.
#[derive(Clone, Debug)]
enum W {
    Put(Value),
    Patch(Value),
    Merge(Value),
}

fn write(doc: &mut Document, base: Option<&Version>, w: &W, agent: &str) {
    let m = meta(agent);
    match w {
        W::Put(v) => doc.put(base, v, &m),
        W::Patch(p) => doc.patch(base, &parse_patch(p).unwrap(), &m),
        W::Merge(p) => doc.merge_patch(base, p, &m),
    }
    .unwrap_or_else(|e| panic!("{agent} {w:?}: {e}"));
}

/// Y writes `y` at V, then X writes `x` at V: the value is `expected` and `lost` edits are
/// listed (as `(path, deleted_by, edited_by)`).
fn check(s: Schema, base: Value, y: W, x: W, expected: Value, lost: &[(&str, &str, &str)]) {
    let (mut doc, _) = Document::create(&base, s, &meta("setup")).unwrap();
    let v = doc.version();
    write(&mut doc, Some(&v), &y, "Y");
    write(&mut doc, Some(&v), &x, "X");
    assert_eq!(doc.read(None).unwrap(), expected, "Y {y:?} then X {x:?}");
    let got: Vec<(String, String, String)> = doc
        .lost()
        .iter()
        .map(|l| {
            (
                l.path.clone(),
                l.deleted_by.join(","),
                l.edited_by.join(","),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = lost
        .iter()
        .map(|(p, d, e)| (p.to_string(), d.to_string(), e.to_string()))
        .collect();
    assert_eq!(got, want, "lost edits of Y {y:?} then X {x:?}");
}

fn none() -> Schema {
    Schema::default()
}

#[test]
fn list_edits_stay_on_their_element() {
    // Delete before an edited element (ids detected).
    check(
        none(),
        json!({"items": [{"id": 1}, {"id": 2, "t": "b"}, {"id": 3}]}),
        W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        W::Put(json!({"items": [{"id": 2, "t": "b2"}, {"id": 3}]})),
        json!({"items": [{"id": 2, "t": "b2", "done": true}, {"id": 3}]}),
        &[],
    );
    // Insert before an edited element (no ids: similarity).
    check(
        none(),
        json!({"items": [{"name": "A"}, {"name": "B"}, {"name": "C"}]}),
        W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        W::Put(
            json!({"items": [{"name": "A"}, {"name": "N"}, {"name": "B", "note": "n"}, {"name": "C"}]}),
        ),
        json!({"items": [{"name": "A"}, {"name": "N"}, {"name": "B", "note": "n", "done": true}, {"name": "C"}]}),
        &[],
    );
    // Swap neighbours: the moved B carries Y's edit.
    check(
        none(),
        json!({"items": [{"name": "A"}, {"name": "B"}, {"name": "C"}, {"name": "D"}]}),
        W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        W::Put(json!({"items": [{"name": "B"}, {"name": "A"}, {"name": "D"}, {"name": "C"}]})),
        json!({"items": [{"name": "B", "done": true}, {"name": "A"}, {"name": "D"}, {"name": "C"}]}),
        &[],
    );
    // A declared identity key.
    check(
        schema(&[], &[], &["/items/*/sku"]),
        json!({"items": [{"sku": "a", "n": "x"}, {"sku": "b", "n": "y"}]}),
        W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        W::Put(json!({"items": [{"sku": "b", "n": "z"}]})),
        json!({"items": [{"sku": "b", "n": "z", "done": true}]}),
        &[],
    );
    // Counters and text inside the element: X deletes item 0 and renames item 1.
    check(
        schema(&["/items/*/body"], &["/items/*/votes"], &[]),
        json!({"items": [
            {"id": 0, "name": "zero", "votes": 0, "body": "a"},
            {"id": 1, "name": "one", "votes": 0, "body": "hello"}
        ]}),
        W::Patch(json!([
            {"op": "increment", "path": "/items/1/votes", "value": 1},
            {"op": "splice", "path": "/items/1/body", "pos": 5, "insert": " world"}
        ])),
        W::Put(json!({"items": [{"id": 1, "name": "uno", "votes": 0, "body": "hello"}]})),
        json!({"items": [{"id": 1, "name": "uno", "votes": 1, "body": "hello world"}]}),
        &[],
    );
}

#[test]
fn text_edits_stay_on_their_line() {
    check(
        schema(&["/t"], &[], &[]),
        json!({"t": "- one\n- two\n"}),
        W::Put(json!({"t": "- zero\n- one\n- two\n"})),
        W::Put(json!({"t": "- (!) one\n- two\n"})),
        json!({"t": "- zero\n- (!) one\n- two\n"}),
        &[],
    );
}

#[test]
fn concurrent_creations_of_a_counter_add_up() {
    let inc = || W::Patch(json!([{"op": "increment", "path": "/n", "value": 1}]));
    let (mut doc, _) =
        Document::create(&json!({}), schema(&[], &["/n"], &[]), &meta("setup")).unwrap();
    let v = doc.version();
    write(&mut doc, Some(&v), &inc(), "A");
    write(&mut doc, Some(&v), &inc(), "B");
    assert_eq!(doc.read(None).unwrap(), json!({"n": 2}));
    assert_eq!(
        doc.conflicts(None).unwrap(),
        vec![],
        "counters add up, no conflict"
    );
    // The next write folds them into one counter, which keeps counting.
    write(&mut doc, None, &inc(), "C");
    assert_eq!(doc.read(None).unwrap(), json!({"n": 3}));
    let v = doc.version();
    write(&mut doc, Some(&v), &inc(), "D");
    write(&mut doc, Some(&v), &inc(), "E");
    assert_eq!(doc.read(None).unwrap(), json!({"n": 5}));
    // A PUT of the counter folds too.
    write(&mut doc, None, &W::Put(json!({"n": 10})), "F");
    assert_eq!(doc.read(None).unwrap(), json!({"n": 10}));
}

#[test]
fn explicit_writes_settle_conflicts() {
    let settle: [(Value, Value, Value, W); 4] = [
        (
            json!({"title": "t"}),
            json!({"title": "a"}),
            json!({"title": "b"}),
            W::Patch(json!([{"op": "replace", "path": "/title", "value": "SHOWN"}])),
        ),
        (
            json!({"title": "t"}),
            json!({"title": "a"}),
            json!({"title": "b"}),
            W::Patch(json!([{"op": "add", "path": "/title", "value": "SHOWN"}])),
        ),
        (
            json!({"title": "t"}),
            json!({"title": "a"}),
            json!({"title": "b"}),
            W::Merge(json!({"title": "SHOWN"})),
        ),
        (
            json!({}),
            json!({"meta": {"x": 1}}),
            json!({"meta": {"y": 2}}),
            W::Patch(json!([{"op": "replace", "path": "/meta", "value": "SHOWN"}])),
        ),
    ];
    for (base, a, b, fix) in settle {
        let (mut doc, _) = Document::create(&base, none(), &meta("setup")).unwrap();
        let v = doc.version();
        write(&mut doc, Some(&v), &W::Put(a.clone()), "A");
        write(&mut doc, Some(&v), &W::Put(b.clone()), "B");
        assert_eq!(doc.conflicts(None).unwrap().len(), 1, "{a} {b}");
        let key = base_key(&a);
        let shown = doc.read(None).unwrap()[&key].clone();
        // The settling write sends exactly the value shown.
        let fix = match fix {
            W::Patch(p) => {
                W::Patch(json!([{"op": p[0]["op"], "path": p[0]["path"], "value": shown}]))
            }
            W::Merge(_) => W::Merge(json!({ key.clone(): shown })),
            W::Put(_) => unreachable!(),
        };
        write(&mut doc, None, &fix, "C");
        assert_eq!(doc.conflicts(None).unwrap(), vec![], "{fix:?} settles");
        assert_eq!(doc.read(None).unwrap()[&key], shown);
    }
    // A PUT writes only what differs from its base: the shown value again changes nothing.
    let (mut doc, _) = Document::create(&json!({"t": 0}), none(), &meta("setup")).unwrap();
    let v = doc.version();
    write(&mut doc, Some(&v), &W::Put(json!({"t": 1})), "A");
    write(&mut doc, Some(&v), &W::Put(json!({"t": 2})), "B");
    let now = doc.read(None).unwrap();
    write(&mut doc, None, &W::Put(now), "C");
    assert_eq!(doc.conflicts(None).unwrap().len(), 1);
}

fn base_key(v: &Value) -> String {
    v.as_object().unwrap().keys().next().unwrap().clone()
}

#[test]
fn moves_carry_the_present_and_raise_no_dead() {
    let abc = json!({"items": [{"name": "a"}, {"name": "b"}, {"name": "c"}]});
    // JSON Patch move of an element Y edited: the edit moves with it.
    check(
        none(),
        abc.clone(),
        W::Patch(json!([{"op": "add", "path": "/items/0/done", "value": true}])),
        W::Patch(json!([{"op": "move", "from": "/items/0", "path": "/items/2"}])),
        json!({"items": [{"name": "b"}, {"name": "c"}, {"name": "a", "done": true}]}),
        &[],
    );
    // Moving an element deleted since the base does not bring it back.
    check(
        none(),
        abc.clone(),
        W::Patch(json!([{"op": "remove", "path": "/items/0"}])),
        W::Patch(json!([{"op": "move", "from": "/items/0", "path": "/items/2"}])),
        json!({"items": [{"name": "b"}, {"name": "c"}]}),
        &[],
    );
    // A delete that comes after a concurrent move deletes the moved copy too.
    check(
        none(),
        abc.clone(),
        W::Put(json!({"items": [{"name": "b"}, {"name": "a"}, {"name": "c"}]})),
        W::Put(json!({"items": [{"name": "a"}, {"name": "c"}]})),
        json!({"items": [{"name": "a"}, {"name": "c"}]}),
        &[],
    );
    check(
        none(),
        abc.clone(),
        W::Patch(json!([{"op": "move", "from": "/items/0", "path": "/items/-"}])),
        W::Patch(json!([{"op": "remove", "path": "/items/0"}])),
        json!({"items": [{"name": "b"}, {"name": "c"}]}),
        &[],
    );
    // If the moved copy carried edits the deleter had not seen, they are surfaced.
    check(
        none(),
        abc.clone(),
        W::Patch(json!([
            {"op": "add", "path": "/items/0/done", "value": true},
            {"op": "move", "from": "/items/0", "path": "/items/2"}
        ])),
        W::Patch(json!([{"op": "remove", "path": "/items/0"}])),
        json!({"items": [{"name": "b"}, {"name": "c"}]}),
        &[("/items/0", "X", "Y")],
    );
    // A PUT that sorts the list: same, for an edited and a deleted element.
    check(
        none(),
        json!({"items": [{"name": "c"}, {"name": "b"}, {"name": "a"}]}),
        W::Patch(json!([
            {"op": "add", "path": "/items/0/done", "value": true},
            {"op": "remove", "path": "/items/1"}
        ])),
        W::Put(abc.clone()),
        json!({"items": [{"name": "a"}, {"name": "c", "done": true}]}),
        &[],
    );
}

#[test]
fn deleting_a_parent_of_unseen_edits_is_surfaced() {
    // X deletes what Y edited (X second).
    check(
        none(),
        json!({"a": {"x": 1}, "k": 0}),
        W::Put(json!({"a": {"x": 2}, "k": 0})),
        W::Put(json!({"k": 0})),
        json!({"k": 0}),
        &[("/a", "X", "Y")],
    );
    check(
        none(),
        json!({"a": {"x": 1}, "k": 0}),
        W::Put(json!({"a": {"x": 2}, "k": 0})),
        W::Merge(json!({"a": null})),
        json!({"k": 0}),
        &[("/a", "X", "Y")],
    );
    // X edits inside what Y deleted (X second).
    check(
        none(),
        json!({"items": [{"id": 1}, {"id": 2, "t": "b"}]}),
        W::Patch(json!([{"op": "remove", "path": "/items/1"}])),
        W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        json!({"items": [{"id": 1}]}),
        &[("/items/1", "Y", "X")],
    );
    // An untouched deleted object is no lost edit.
    check(
        none(),
        json!({"a": {"x": 1}, "k": 0}),
        W::Put(json!({"a": {"x": 1}, "k": 1})),
        W::Put(json!({"k": 0})),
        json!({"k": 1}),
        &[],
    );
}

#[test]
fn lost_edits_are_restored_or_dismissed_and_survive_a_reload() {
    let (mut doc, _) = Document::create(
        &json!({"items": [{"id": 1}, {"id": 2, "t": "b"}]}),
        none(),
        &meta("setup"),
    )
    .unwrap();
    let v = doc.version();
    write(
        &mut doc,
        Some(&v),
        &W::Patch(json!([{"op": "add", "path": "/items/1/done", "value": true}])),
        "Y",
    );
    write(
        &mut doc,
        Some(&v),
        &W::Put(json!({"items": [{"id": 1}]})),
        "X",
    );
    let lost = doc.lost().to_vec();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].value, json!({"id": 2, "t": "b", "done": true}));

    // The record is part of the document: it reloads.
    let (reloaded, report) = Document::load(doc.schema().clone(), Some(&doc.save()), &[]).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(reloaded.lost(), doc.lost());

    let mut restored = doc.fork().0;
    restored.restore_lost(&lost[0].id, &meta("R")).unwrap();
    assert_eq!(
        restored.read(None).unwrap(),
        json!({"items": [{"id": 1}, {"id": 2, "t": "b", "done": true}]})
    );
    assert!(restored.lost().is_empty());

    doc.dismiss_lost(&lost[0].id, &meta("D")).unwrap();
    assert!(doc.lost().is_empty());
    assert_eq!(doc.read(None).unwrap(), json!({"items": [{"id": 1}]}));
    let err = doc.dismiss_lost(&lost[0].id, &meta("D")).unwrap_err();
    assert!(
        err.to_string().contains("no open lost-edit record"),
        "{err}"
    );
}

// The property.

/// X's edit of the list: the elements it keeps (old index, and whether it edits it in place),
/// in their new order, with new elements among them.
#[derive(Clone, Debug)]
enum Elem {
    Old { index: usize, edit: u8 },
    New(usize),
}

fn arb_case() -> impl Strategy<Value = (usize, Vec<bool>, Vec<Elem>, bool, bool)> {
    (1usize..8).prop_flat_map(|n| {
        (
            Just(n),
            proptest::collection::vec(any::<bool>(), n),
            // Which old elements X keeps and how it edits them, then a shuffle, then inserts.
            proptest::collection::vec((any::<bool>(), 0u8..3), n),
            proptest::collection::vec(0usize..100, 0..3),
            any::<prop::sample::Index>(),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(n, y_edits, keep, inserts, shuffle, with_ids, x_first)| {
                let mut elems: Vec<Elem> = keep
                    .iter()
                    .enumerate()
                    .filter(|(_, (k, _))| *k)
                    .map(|(index, (_, edit))| Elem::Old { index, edit: *edit })
                    .collect();
                // A deterministic shuffle from the sampled index: rotate and swap pairs.
                if !elems.is_empty() {
                    let r = shuffle.index(elems.len());
                    elems.rotate_left(r);
                    if r % 2 == 1 && elems.len() > 1 {
                        let last = elems.len() - 1;
                        elems.swap(0, last);
                    }
                }
                for (k, at) in inserts.iter().enumerate() {
                    let at = at % (elems.len() + 1);
                    elems.insert(at, Elem::New(k));
                }
                (n, y_edits, elems, with_ids, x_first)
            })
    })
}

fn element(k: usize, with_ids: bool) -> Value {
    if with_ids {
        json!({"id": k, "name": format!("n{k}"), "v": 0})
    } else {
        json!({"name": format!("n{k}"), "v": 0})
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    #[test]
    fn edits_end_on_their_element_or_are_listed_as_lost(
        (n, y_edits, elems, with_ids, x_first) in arb_case()
    ) {
        let base: Vec<Value> = (0..n).map(|k| element(k, with_ids)).collect();
        let (mut doc, _) =
            Document::create(&json!({ "items": base }), Schema::default(), &meta("setup")).unwrap();
        let v = doc.version();
        // Y marks elements at V, each with its own marker.
        let y_ops: Vec<Value> = y_edits
            .iter()
            .enumerate()
            .filter(|(_, e)| **e)
            .map(|(k, _)| json!({"op": "add", "path": format!("/items/{k}/seen"), "value": format!("y{k}")}))
            .collect();
        // X sends a whole new list from V: kept elements (maybe edited), reordered, new ones.
        let x_items: Vec<Value> = elems
            .iter()
            .map(|e| match e {
                Elem::Old { index, edit } => {
                    let mut el = element(*index, with_ids);
                    match edit {
                        1 => el["v"] = json!(5),
                        2 => el["note"] = json!(format!("x{index}")),
                        _ => {}
                    }
                    el
                }
                Elem::New(k) => json!({"name": format!("new{k}"), "fresh": true}),
            })
            .collect();
        let y = W::Patch(Value::Array(y_ops));
        let x = W::Put(json!({ "items": x_items }));
        if x_first {
            write(&mut doc, Some(&v), &x, "X");
            write(&mut doc, Some(&v), &y, "Y");
        } else {
            write(&mut doc, Some(&v), &y, "Y");
            write(&mut doc, Some(&v), &x, "X");
        }
        let value = doc.read(None).unwrap();
        let items = value["items"].as_array().unwrap();
        let lost = doc.lost();
        let kept: Vec<usize> = elems
            .iter()
            .filter_map(|e| match e { Elem::Old { index, .. } => Some(*index), _ => None })
            .collect();
        for (k, edited) in y_edits.iter().enumerate() {
            let marker = json!(format!("y{k}"));
            let carriers: Vec<&Value> = items.iter().filter(|el| el["seen"] == marker).collect();
            // Never on another element.
            for el in &carriers {
                prop_assert_eq!(&el["name"], &json!(format!("n{k}")), "{} on the wrong element: {}", marker, value);
            }
            let surfaced = lost.iter().any(|l| l.value["seen"] == marker && l.value["name"] == json!(format!("n{k}")));
            if !*edited {
                prop_assert!(carriers.is_empty());
                continue;
            }
            if kept.contains(&k) && !x_first {
                // Y wrote first and X kept the element: the edit is on it.
                prop_assert_eq!(carriers.len(), 1, "{} missing or doubled: {}", marker, value);
            } else {
                // Deleted by X, or edited after X moved it: visible, or listed as lost.
                prop_assert!(carriers.len() == 1 || surfaced, "{} lost silently: {} lost {:?}", marker, value, lost);
            }
        }
        // X's edits stand too: every element X kept or added is there once.
        for e in &elems {
            let name = match e { Elem::Old { index, .. } => format!("n{index}"), Elem::New(k) => format!("new{k}") };
            let count = items.iter().filter(|el| el["name"] == json!(name)).count();
            prop_assert_eq!(count, 1, "{} appears {} times: {}", name, count, value);
        }
    }
}
