//! The JSON value a document keeps is moved forward by each change's patches rather than
//! read again (`core/src/mirror.rs`). Whatever happens to a document, that kept value must
//! be what a fresh read gives, its kept size what serializing gives, and each write's
//! operations must turn the value before into the value after: at the present and at stale
//! bases, for text, counters (concurrent ones add up), lists and nested objects, and for
//! changes received in any order.

use concord_core::patch::PatchOp;
use concord_core::{Document, Schema, Version, WriteMeta, WriteOutcome};
use proptest::prelude::*;
use serde_json::{json, Value};

fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 0,
        message: None,
    }
}

fn schema() -> Schema {
    serde_json::from_value(json!({
        "text": ["/text", "/items/*/note"],
        "counters": ["/count", "/items/*/n"],
    }))
    .unwrap()
}

/// The kept value is a fresh read, its size is its serialized size, and `outcome`'s
/// operations take `before` to it.
fn check(doc: &Document, before: &Value, outcome: &WriteOutcome) -> Result<(), TestCaseError> {
    let fresh = doc.read(None).unwrap();
    prop_assert_eq!(&**doc.value(), &fresh, "kept value against a fresh read");
    prop_assert_eq!(doc.json_bytes(), serde_json::to_vec(&fresh).unwrap().len());
    let ops: json_patch::Patch =
        serde_json::from_value(Value::Array(outcome.patch.clone())).unwrap();
    let mut replayed = before.clone();
    json_patch::patch(&mut replayed, &ops).unwrap();
    prop_assert_eq!(
        replayed,
        fresh,
        "the operations replayed on the value before"
    );
    Ok(())
}

fn item() -> impl Strategy<Value = Value> {
    ("[a-c]{1,2}", -5i64..5, "[ab\"\\\\é]{0,4}")
        .prop_map(|(id, n, note)| json!({"id": id, "n": n, "note": note}))
}

fn root() -> impl Strategy<Value = Value> {
    (
        "[a-c \n\"é🦀]{0,10}",
        -20i64..20,
        prop::collection::vec(item(), 0..4),
        prop::option::of(prop_oneof![
            Just(json!(null)),
            Just(json!([1, [2, {"x": "y"}]])),
            Just(json!({"k/~": 1.5})),
        ]),
    )
        .prop_map(|(text, count, items, extra)| {
            let mut v = json!({"text": text, "count": count, "items": items});
            if let Some(extra) = extra {
                v["extra"] = extra;
            }
            v
        })
}

/// One write: a whole value, or JSON Patch operations.
#[derive(Debug, Clone)]
enum Edit {
    Put(Value),
    Patch(Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        root().prop_map(Edit::Put),
        (-3i64..4).prop_map(|by| Edit::Patch(
            json!([{"op": "increment", "path": "/count", "value": by}])
        )),
        (0usize..3, 0usize..2, "[xy\n]{0,3}").prop_map(|(pos, del, insert)| Edit::Patch(
            json!([{"op": "splice", "path": "/text", "pos": pos, "del": del, "insert": insert}])
        )),
        item().prop_map(|it| Edit::Patch(json!([{"op": "add", "path": "/items/-", "value": it}]))),
        Just(Edit::Patch(json!([{"op": "remove", "path": "/items/0"}]))),
        Just(Edit::Patch(
            json!([{"op": "increment", "path": "/items/0/n", "value": 2}])
        )),
        ("[a-d]", -2i64..2).prop_map(|(k, v)| Edit::Patch(
            json!([{"op": "add", "path": format!("/extra{k}"), "value": {"deep": [v]}}])
        )),
    ]
}

fn run(
    doc: &mut Document,
    base: Option<&Version>,
    edit: &Edit,
    agent: &str,
) -> Option<WriteOutcome> {
    match edit {
        Edit::Put(v) => doc.put(base, v, &meta(agent)).ok(),
        Edit::Patch(ops) => {
            let ops: Vec<PatchOp> = serde_json::from_value(ops.clone()).unwrap();
            // A patch may not apply (no item 0 left): refused, it changes nothing.
            doc.patch(base, &ops, &meta(agent)).ok()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    /// Writes at random earlier versions, then the same changes delivered to a replica in a
    /// scrambled order: the kept value holds at every step of both.
    #[test]
    fn the_kept_value_is_always_a_fresh_read(
        start in root(),
        writes in prop::collection::vec((edit(), any::<prop::sample::Index>(), any::<bool>()), 1..10),
        seed in any::<u64>(),
    ) {
        let (mut doc, first) = Document::create(&start, schema(), &meta("s")).unwrap();
        check(&doc, &json!({}), &first)?;
        let mut versions = vec![doc.version()];
        let mut changes: Vec<Vec<u8>> = first.stored_changes().into_iter().map(|c| c.bytes).collect();
        for (i, (edit, base, stale)) in writes.iter().enumerate() {
            let base = stale.then(|| base.get(&versions).clone());
            let before = (**doc.value()).clone();
            if let Some(out) = run(&mut doc, base.as_ref(), edit, &format!("w{i}")) {
                check(&doc, &before, &out)?;
                changes.extend(out.stored_changes().into_iter().map(|c| c.bytes));
                versions.push(out.version);
            }
        }
        let mut order: Vec<usize> = (0..changes.len()).collect();
        let mut s = seed | 1;
        for i in (1..order.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            order.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let (mut replica, _) = Document::load(schema(), None, &[]).unwrap();
        for i in order {
            let before = (**replica.value()).clone();
            let out = replica.apply_changes(&changes[i]).unwrap();
            check(&replica, &before, &out)?;
        }
        prop_assert_eq!(replica.value(), doc.value());
    }
}

#[test]
fn a_stale_increment_of_a_concurrent_counter_shows_in_the_sum() {
    // Two writers create the counter at once; a third increments one of them from a version
    // that has only that one. No patch of Automerge's says so: the sum is read again.
    let (mut doc, _) = Document::create(&json!({}), schema(), &meta("s")).unwrap();
    let v0 = doc.version();
    doc.put(Some(&v0), &json!({"count": 0}), &meta("a"))
        .unwrap();
    let v1 = doc.version();
    doc.put(Some(&v0), &json!({"count": 0}), &meta("b"))
        .unwrap();
    let before = (**doc.value()).clone();
    let out = doc
        .put(Some(&v1), &json!({"count": 1}), &meta("c"))
        .unwrap();
    assert_eq!(**doc.value(), json!({"count": 1}));
    assert_eq!(
        out.patch,
        vec![json!({"op": "replace", "path": "/count", "value": 1})]
    );
    assert_ne!(before, **doc.value());
}

/// Two writers create the counter at once, as 1 and 0: it shows 1, their sum.
fn concurrent_counters() -> Document {
    let (mut doc, _) = Document::create(&json!({}), schema(), &meta("s")).unwrap();
    let v0 = doc.version();
    doc.put(Some(&v0), &json!({"count": 1}), &meta("a"))
        .unwrap();
    doc.put(Some(&v0), &json!({"count": 0}), &meta("b"))
        .unwrap();
    assert_eq!(**doc.value(), json!({"count": 1}));
    doc
}

#[test]
fn folding_concurrent_counters_at_the_present_shows_the_new_sum() {
    // A write at the present folds concurrent counters into one. When the new value is the
    // one the winning counter already held, Automerge's patches say nothing, yet the sum
    // shown changes: the place is read again.
    let mut doc = concurrent_counters();
    let out = doc.put(None, &json!({"count": 0}), &meta("c")).unwrap();
    assert_eq!(**doc.value(), json!({"count": 0}));
    assert_eq!(
        out.patch,
        vec![json!({"op": "replace", "path": "/count", "value": 0})]
    );
    // The same through JSON Patch increments, landing on either concurrent value.
    for (by, shown) in [(-1, 0), (0, 1)] {
        let mut doc = concurrent_counters();
        let ops: Vec<PatchOp> =
            serde_json::from_value(json!([{"op": "increment", "path": "/count", "value": by}]))
                .unwrap();
        doc.patch(None, &ops, &meta("c")).unwrap();
        assert_eq!(**doc.value(), json!({"count": shown}), "increment by {by}");
        assert_eq!(**doc.value(), doc.read(None).unwrap());
    }
}

#[test]
fn a_change_that_nests_too_deep_is_refused_and_the_kept_value_stays() {
    use automerge::transaction::Transactable;
    let (mut doc, _) = Document::create(&json!({"a": 1}), Schema::default(), &meta("s")).unwrap();
    // Raw changes from a peer, nesting one level past the limit.
    let mut peer = doc.automerge().fork();
    let mut tx = peer.transaction();
    let mut obj = automerge::ROOT;
    for _ in 0..=concord_core::value::MAX_DEPTH {
        obj = tx
            .put_object(&obj, "deeper", automerge::ObjType::Map)
            .unwrap();
    }
    tx.commit();
    let bytes: Vec<u8> = peer
        .get_changes(&doc.automerge().get_heads())
        .iter()
        .flat_map(|c| c.raw_bytes().to_vec())
        .collect();
    let err = doc.apply_changes(&bytes).unwrap_err();
    assert!(err.to_string().contains("nest deeper"), "{err}");
    assert_eq!(
        **doc.value(),
        json!({"a": 1}),
        "the kept value is the one before"
    );
}
