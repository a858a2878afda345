//! Every input the fuzzers ever crashed on, replayed in `cargo test`.
//!
//! The harnesses are the cargo-fuzz ones (`fuzz/src/lib.rs`, included here by path), so a
//! replay runs exactly the code the fuzzer ran. Inputs live in
//! `tests/fuzz-regressions/<target>/`, one file each, named for the bug they found; copy a
//! new crasher from `fuzz/artifacts/<target>/` there once it is fixed (see TESTING.md).
//!
//! `write_fuzz_seeds` (ignored; run it by name) writes the starting corpus the fuzzers use,
//! `fuzz/seeds/<target>/`: well-formed inputs of every kind, for the fuzzer to mutate.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod harness;

use std::path::{Path, PathBuf};

use concord_core::sync::SyncState;
use concord_core::{Document, Schema};
use concord_protocol::repo::{document_id, Ephemeral, Outgoing};
use concord_tests::meta;
use serde_json::{json, Value};

fn folder(root: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(root)
        .join(target)
}

/// The saved inputs of one target, sorted by name.
fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let name = p
                .file_name()
                .expect("a name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&p).expect("readable"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_saved_crasher_is_fixed() {
    let mut replayed = 0;
    for (target, harness) in harness::TARGETS {
        for (name, bytes) in inputs(&folder("tests/fuzz-regressions", target)) {
            // A panic here names the input; the harness's own message says what broke.
            eprintln!("replaying {target}/{name}");
            harness(&bytes);
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no saved crashers found under tests/fuzz-regressions"
    );
}

/// The seeds must pass too: a harness that panics on well-formed input is broken.
#[test]
fn every_seed_passes() {
    for (target, harness) in harness::TARGETS {
        for (_, bytes) in inputs(&folder("fuzz/seeds", target)) {
            harness(&bytes);
        }
    }
}

/// Writes `fuzz/seeds/<target>/<n>` for every target.
#[test]
#[ignore = "writes the fuzz seed corpus; run by name when the formats change"]
fn write_fuzz_seeds() {
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let text = |v: Value| v.to_string().into_bytes();

    for patch in [
        json!([{"op": "add", "path": "/l/-", "value": {"t": "new", "n": 0}}]),
        json!([{"op": "remove", "path": "/l/0"}, {"op": "replace", "path": "/s", "value": [1, {"a": null}]}]),
        json!([{"op": "move", "from": "/o/k", "path": "/l/1"}, {"op": "copy", "from": "/o", "path": "/c"}]),
        json!([{"op": "test", "path": "/n", "value": 10}, {"op": "increment", "path": "/n", "value": -4}]),
        json!([{"op": "splice", "path": "/t", "pos": 3, "del": 2, "insert": "é😀"}, {"op": "splice", "path": "/l/0/t", "pos": 0, "insert": "x"}]),
        json!([{"op": "add", "path": "", "value": {"fresh": true}}]),
        json!({"o": {"k": null, "new": [1, 2]}, "n": 20, "t": "merge"}),
    ] {
        seeds.push(("json_patch", text(patch)));
    }
    for value in [
        json!({"l": [{"t": "ab", "n": 1}, "y", "x", 2.5, null, [true]], "t": "Hello wörld", "n": 10, "o": {"k": "v"}, "s": 1}),
        json!({"l": [], "t": "", "n": -3, "o": {"deep": {"a": [[[]]]}}, "x": 18446744073709551615u64}),
        json!({"a": 1e300, "b": -0.5, "c": "\u{0}\u{ffff}", "": {"~1/": "k"}}),
        json!({"n": 1.5}),
    ] {
        seeds.push(("reconcile", text(value)));
    }
    for message in [
        json!({"type": "subscribe"}),
        json!({"type": "subscribe", "since": "0000000000000000000000000000000000000000000000000000000000000000"}),
        json!({"type": "patch", "id": "p1", "ops": [{"op": "add", "path": "/l/-", "value": 1}]}),
        json!({"type": "patch", "id": 7, "base": "*", "ops": [{"op": "increment", "path": "/n", "value": 1}], "lock": 12}),
        json!({"type": "put", "id": "w", "base": "*", "value": {"t": "whole", "n": 3}, "lock": "12"}),
        json!({"type": "put", "id": "w", "value": {}, "extra": 1}),
    ] {
        seeds.push(("ws_message", text(message)));
    }

    // A real sync session: a document with history and an empty replica.
    let (mut doc, _) = Document::create(
        &json!({"l": ["a", {"t": "x"}], "t": "text", "n": 1}),
        Schema {
            text: vec!["/t".into()],
            counters: vec!["/n".into()],
            ids: Vec::new(),
        },
        &meta("seed"),
    )
    .expect("a document");
    doc.put(
        None,
        &json!({"l": ["a", "b"], "t": "texts", "n": 4}),
        &meta("seed"),
    )
    .expect("a write");
    let mut replica = Document::empty(Schema::default()).expect("empty");
    let (mut on_doc, mut on_replica) = (SyncState::new(), SyncState::new());
    let mut sync_messages = Vec::new();
    for _ in 0..10 {
        let to_replica = doc.generate_sync_message(&mut on_doc);
        let to_doc = replica.generate_sync_message(&mut on_replica);
        if to_replica.is_none() && to_doc.is_none() {
            break;
        }
        if let Some(m) = to_replica {
            sync_messages.push(m.clone().encode());
            replica
                .receive_sync_message(&mut on_replica, m)
                .expect("applies");
        }
        if let Some(m) = to_doc {
            sync_messages.push(m.clone().encode());
            doc.receive_sync_message(&mut on_doc, m).expect("applies");
        }
    }
    let document = document_id(uuid::Uuid::from_u128(0x1234));
    for data in &sync_messages {
        seeds.push(("sync_message", data.clone()));
        seeds.push((
            "repo_message",
            Outgoing::Sync {
                document: &document,
                data: data.clone(),
            }
            .encode("peer", "server"),
        ));
    }
    let cbor = |value: ciborium::Value| {
        let mut out = Vec::new();
        ciborium::ser::into_writer(&value, &mut out).expect("CBOR");
        out
    };
    let t = |s: &str| ciborium::Value::Text(s.into());
    seeds.push((
        "repo_message",
        cbor(ciborium::Value::Map(vec![
            (t("type"), t("join")),
            (t("senderId"), t("peer")),
            (
                t("supportedProtocolVersions"),
                ciborium::Value::Array(vec![t("1")]),
            ),
        ])),
    ));
    seeds.push((
        "repo_message",
        cbor(ciborium::Value::Map(vec![
            (t("type"), t("request")),
            (t("senderId"), t("peer")),
            (t("documentId"), t(&document)),
            (
                t("data"),
                ciborium::Value::Tag(
                    64,
                    Box::new(ciborium::Value::Bytes(sync_messages[0].clone())),
                ),
            ),
        ])),
    ));
    let ephemeral = Ephemeral {
        sender: "peer".into(),
        document: document.clone(),
        count: 3,
        session: "s".into(),
        data: vec![0xa1, 0x61, 0x78, 0x01],
    };
    seeds.push((
        "repo_message",
        Outgoing::Ephemeral(&ephemeral).encode("peer", "server"),
    ));

    seeds.push(("stored_bytes", doc.save()));
    seeds.push(("stored_bytes", doc.changes_since(None).expect("changes")));
    for change in doc.automerge().get_changes(&[]) {
        seeds.push(("stored_bytes", change.raw_bytes().to_vec()));
    }

    for (target, _) in harness::TARGETS {
        let dir = folder("fuzz/seeds", target);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a seed folder");
    }
    let mut numbers = std::collections::HashMap::new();
    for (target, bytes) in seeds {
        let n = numbers.entry(target).or_insert(0);
        *n += 1;
        std::fs::write(
            folder("fuzz/seeds", target).join(format!("seed-{n:02}")),
            bytes,
        )
        .expect("a seed file");
    }
}
