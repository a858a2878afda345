//! Automerge is patched (vendor/README.md) to keep the changes of a document's latest local
//! commits instead of rebuilding each from the op set. A write's changes, as stored, must be
//! byte for byte what a rebuild gives, for every kind of write: at the present, at a stale
//! base (which may commit up to three changes), with lost edits, and on a long history.

use std::collections::HashMap;

use concord_core::patch::PatchOp;
use concord_core::{Document, Schema, WriteMeta};
use serde_json::json;

fn meta(agent: &str) -> WriteMeta {
    WriteMeta {
        agent: agent.into(),
        time_ms: 7,
        message: Some("why".into()),
    }
}

#[test]
fn stored_changes_are_the_changes_automerge_rebuilds() {
    let schema = Schema {
        counters: vec!["/count".into()],
        text: vec!["/text".into()],
        ..Schema::default()
    };
    let (mut doc, first) = Document::create(
        &json!({"count": 0, "text": "ab", "items": [{"id": 1}, {"id": 2}]}),
        schema.clone(),
        &meta("s"),
    )
    .unwrap();
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut keep = |out: &concord_core::WriteOutcome| {
        for c in out.stored_changes() {
            stored.push((hex(&c.hash), c.bytes));
        }
    };
    keep(&first);
    let v1 = doc.version();
    for i in 0..300 {
        let ops: Vec<PatchOp> = serde_json::from_value(json!([
            {"op": "increment", "path": "/count", "value": 1},
            {"op": "splice", "path": "/text", "pos": 1, "del": 0, "insert": "x"},
            {"op": "add", "path": "/items/-", "value": {"id": i + 10}},
        ]))
        .unwrap();
        keep(&doc.patch(None, &ops, &meta("a")).unwrap());
    }
    // A stale write that deletes what others changed since: its change, the copies' delete
    // and the lost-edit record.
    keep(
        &doc.put(Some(&v1), &json!({"count": 5, "text": "b"}), &meta("b"))
            .unwrap(),
    );
    assert!(!doc.lost().is_empty(), "the stale write lost edits");

    let rebuilt: HashMap<String, Vec<u8>> = doc
        .automerge()
        .get_changes(&[])
        .iter()
        .map(|c| (c.hash().to_string(), c.raw_bytes().to_vec()))
        .collect();
    assert_eq!(stored.len(), rebuilt.len(), "every change was stored once");
    for (hash, bytes) in &stored {
        assert_eq!(Some(bytes), rebuilt.get(hash), "change {hash}");
    }
    // And the stored changes load as the same document.
    let records: Vec<Vec<u8>> = stored.into_iter().map(|(_, b)| b).collect();
    let (loaded, report) = Document::load(schema, None, &records).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(loaded.version(), doc.version());
    assert_eq!(loaded.value(), doc.value());
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
