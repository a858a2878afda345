//! The fuzz harnesses: one function per decoder of Concord, each taking arbitrary bytes.
//!
//! They are shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, one line each) and
//! by `tests/fuzz_regressions.rs`, which includes this file and replays every saved input of
//! `tests/fuzz-regressions/<target>/` in `cargo test`. A harness fails by panicking: a panic
//! anywhere in Concord's handling of hostile input, or a broken invariant (a refused write
//! that changed the document, a round trip that does not give back what went in).
//!
//! Every harness is deterministic: no clock, no randomness, no IO.

use concord_core::doc::parse_changes;
use concord_core::patch::parse_patch;
use concord_core::sync::{SyncError, SyncMessage, SyncState};
use concord_core::{Document, Schema, Version, WriteMeta};
use concord_protocol::live::ClientMessage;
use concord_protocol::repo::{parse_document_id, Incoming, Outgoing};
use serde_json::{json, Value};

/// Called once before fuzzing, by every target. libFuzzer's panic hook aborts on any panic,
/// even one that is caught; Concord catches Automerge's decoders panicking on hostile bytes
/// on purpose (`concord_core::doc::parse_changes`, `SyncMessage::decode`) and answers them
/// as malformed input, so this hook prints each panic's message (the first three from each
/// place, so that a frequent caught one does not flood the log) and lets it unwind. A panic
/// nobody catches still ends the run (libFuzzer aborts on it) and leaves its input to
/// replay; its message is the last one printed.
pub fn init() {
    static SEEN: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());
    std::panic::set_hook(Box::new(|info| {
        let place = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let mut seen = SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = match seen.iter_mut().find(|(p, _)| *p == place) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                seen.push((place, 1));
                1
            }
        };
        if count <= 3 {
            eprintln!("{info}");
        }
    }));
}

/// A harness: takes any bytes, panics if Concord mishandles them.
pub type Harness = fn(&[u8]);

/// Every harness by name: the names of the cargo-fuzz targets and of the regression folders.
pub const TARGETS: &[(&str, Harness)] = &[
    ("json_patch", json_patch),
    ("reconcile", reconcile),
    ("ws_message", ws_message),
    ("sync_message", sync_message),
    ("repo_message", repo_message),
    ("stored_bytes", stored_bytes),
];

fn meta() -> WriteMeta {
    WriteMeta {
        agent: "fuzz".into(),
        time_ms: 1_700_000_000_000,
        message: None,
    }
}

fn schema() -> Schema {
    Schema {
        text: vec!["/t".into(), "/l/*/t".into()],
        counters: vec!["/n".into(), "/l/*/n".into()],
        ids: Vec::new(),
    }
}

/// A document with some of everything (a list of objects, text, a counter, a nested map, a
/// conflict) and an older version `v1` to write against: built once per process, and
/// cloned for each input (a clone is the same document under the same actor, so every
/// input meets exactly the same fixture).
fn fixture() -> (Document, Version) {
    static FIXTURE: std::sync::OnceLock<(Document, Version)> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(build_fixture).clone()
}

fn build_fixture() -> (Document, Version) {
    let (mut doc, _) = Document::create(
        &json!({
            "l": [{"t": "ab", "n": 1}, "x", 2.5, null, [true]],
            "t": "hello wörld",
            "n": 7,
            "o": {"k": "v", "deep": {"a": [1, 2]}},
            "s": "atomic"
        }),
        schema(),
        &meta(),
    )
    .expect("the fixture is valid");
    let v1 = doc.version();
    doc.patch(
        None,
        &parse_patch(&json!([
            {"op": "add", "path": "/l/1", "value": "y"},
            {"op": "splice", "path": "/t", "pos": 0, "del": 1, "insert": "H"},
            {"op": "increment", "path": "/n", "value": 3}
        ]))
        .expect("valid ops"),
        &meta(),
    )
    .expect("the fixture patch applies");
    // A concurrent set of one field from the old version: a conflict.
    doc.put(
        Some(&v1),
        &json!({
            "l": [{"t": "ab", "n": 1}, "x", 2.5, null, [true]],
            "t": "hello wörld",
            "n": 7,
            "o": {"k": "w", "deep": {"a": [1, 2]}},
            "s": "atomic"
        }),
        &meta(),
    )
    .expect("the fixture put applies");
    (doc, v1)
}

/// JSON equality where numbers compare by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

/// Reads everything a reader can ask for; none of it may panic.
fn read_all(doc: &Document) {
    let _ = doc.read(None);
    let _ = doc.conflicts(None);
    let _ = doc.history();
    let _ = doc.changes_since(None);
}

/// After a write: a refusal changed nothing, and the document still reads.
fn check_write<T>(doc: &Document, before: &Version, result: &Result<T, concord_core::Error>) {
    if result.is_err() {
        assert_eq!(
            &doc.version(),
            before,
            "a refused write changed the document"
        );
    }
    read_all(doc);
}

/// JSON Patch (RFC 6902 with `increment` and `splice`) and merge patch (RFC 7396): the
/// bytes as a patch document, applied to the fixture now and at its older version.
pub fn json_patch(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (mut doc, v1) = fixture();
    if let Ok(ops) = parse_patch(&value) {
        for base in [None, Some(&v1)] {
            let before = doc.version();
            let result = doc.patch(base, &ops, &meta());
            check_write(&doc, &before, &result);
        }
    }
    let before = doc.version();
    let result = doc.merge_patch(None, &value, &meta());
    check_write(&doc, &before, &result);
    let before = doc.version();
    let result = doc.merge_patch(Some(&v1), &value, &meta());
    check_write(&doc, &before, &result);
}

/// Whole-document writes: the bytes as a new value, written over the fixture now (which
/// must then read back as exactly that value) and from its older version, and as a new
/// document.
pub fn reconcile(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let (mut doc, v1) = fixture();
    let before = doc.version();
    let result = doc.put(None, &value, &meta());
    check_write(&doc, &before, &result);
    if result.is_ok() {
        if let Ok(read) = doc.read(None) {
            assert!(same(&read, &value), "put {value} read back {read}");
        }
    }
    let before = doc.version();
    let result = doc.put(Some(&v1), &value, &meta());
    check_write(&doc, &before, &result);

    if let Ok((created, _)) = Document::create(&value, schema(), &meta()) {
        if let Ok(read) = created.read(None) {
            assert!(same(&read, &value), "created {value} read back {read}");
        }
    }
}

/// The WebSocket JSON protocol: the bytes as a client message, parsed as the server does
/// (strict JSON, then the message type), round-tripped, and carried out on the fixture.
/// What the strict parser takes, it reads as `serde_json` does.
pub fn ws_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let direct = serde_json::from_str::<ClientMessage>(text).ok();
    let Ok(value) = concord_protocol::json::from_str(text) else {
        return;
    };
    assert_eq!(
        serde_json::from_str::<Value>(text).ok().as_ref(),
        Some(&value),
        "the strict parser read another value than serde_json"
    );
    let Ok(message) = serde_json::from_value::<ClientMessage>(value) else {
        return;
    };
    if let Some(direct) = direct {
        assert_eq!(direct, message, "two ways of parsing one message disagree");
    }
    let encoded = serde_json::to_string(&message).expect("a client message serializes");
    let again: ClientMessage =
        serde_json::from_str(&encoded).expect("a serialized client message parses");
    assert_eq!(again, message, "the message does not round-trip: {encoded}");

    let (mut doc, _) = fixture();
    let base = |base: &Option<String>| -> Option<Option<Version>> {
        match base.as_deref().map(str::trim) {
            None | Some("*") => Some(None),
            Some(text) => text.parse::<Version>().ok().map(Some),
        }
    };
    match &message {
        ClientMessage::Subscribe { since } => {
            if let Some(Some(since)) = base(since) {
                let _ = doc.check_version(&since);
                let _ = doc.changes_since(Some(&since));
            }
        }
        ClientMessage::Patch { base: b, ops, .. } => {
            if let (Some(base), Ok(ops)) = (base(b), parse_patch(ops)) {
                let before = doc.version();
                let result = doc.patch(base.as_ref(), &ops, &meta());
                check_write(&doc, &before, &result);
            }
        }
        ClientMessage::Put { base: b, value, .. } => {
            if let Some(base) = base(b) {
                let before = doc.version();
                let result = doc.put(base.as_ref(), value, &meta());
                check_write(&doc, &before, &result);
            }
        }
    }
}

/// Receives a decoded sync message into `doc`; a malformed one must change nothing.
fn receive(doc: &mut Document, message: SyncMessage) {
    let mut state = SyncState::new();
    let before = doc.version();
    match doc.receive_sync_message(&mut state, message) {
        Ok(_) => {
            read_all(doc);
            let _ = doc.generate_sync_message(&mut state);
        }
        Err(e @ (SyncError::Malformed(_) | SyncError::TooMuchWaiting { .. })) => {
            assert_eq!(
                doc.version(),
                before,
                "a refused sync message ({e}) changed the document"
            )
        }
        // Automerge refused a decoded change: the server drops this copy and reloads.
        Err(SyncError::Refused(_)) => {}
    }
}

/// Binary Automerge sync messages (`/v1/docs/{id}/sync`): decoded, re-encoded, and received
/// by the fixture and by an empty document.
pub fn sync_message(data: &[u8]) {
    let Ok(message) = SyncMessage::decode(data) else {
        return;
    };
    // Encoding is canonical (an empty Bloom filter loses its parameters, say): what was
    // encoded once encodes the same again.
    let encoded = message.clone().encode();
    let again = SyncMessage::decode(&encoded).expect("an encoded sync message decodes");
    assert_eq!(
        again.encode(),
        encoded,
        "a sync message does not round-trip"
    );
    let _ = message.heads();
    let (mut doc, _) = fixture();
    receive(&mut doc, message.clone());
    let mut empty = Document::empty(schema()).expect("the schema is valid");
    receive(&mut empty, message);
}

/// automerge-repo CBOR messages (`/v1/repo`): decoded as the server does; a sync message
/// inside is decoded and received; what the server relays round-trips.
pub fn repo_message(data: &[u8]) {
    let Ok(incoming) = Incoming::decode(data) else {
        return;
    };
    match incoming {
        Incoming::Sync { document, data, .. } => {
            let _ = parse_document_id(&document);
            let encoded = Outgoing::Sync {
                document: &document,
                data: data.clone(),
            }
            .encode("server", "peer");
            match Incoming::decode(&encoded) {
                Ok(Incoming::Sync {
                    document: d,
                    data: b,
                    request: false,
                    ..
                }) => assert!(
                    d == document && b == data,
                    "a sync message does not round-trip"
                ),
                other => panic!("an encoded sync message decodes as {other:?}"),
            }
            if let Ok(message) = SyncMessage::decode(&data) {
                let mut empty = Document::empty(Schema::default()).expect("the schema is valid");
                receive(&mut empty, message);
            }
        }
        Incoming::Ephemeral(ephemeral) => {
            let encoded = Outgoing::Ephemeral(&ephemeral).encode("server", "peer");
            match Incoming::decode(&encoded) {
                Ok(Incoming::Ephemeral(again)) => {
                    assert_eq!(again, ephemeral, "an ephemeral message does not round-trip")
                }
                other => panic!("an encoded ephemeral message decodes as {other:?}"),
            }
        }
        Incoming::Join { .. } | Incoming::Ignored { .. } => {}
    }
}

/// Stored bytes: as raw changes, as a snapshot, as one or two change records, and applied
/// to the fixture (`POST /v1/docs/{id}/changes`). A document that loads with nothing
/// skipped saves and loads again to the same version and value.
pub fn stored_bytes(data: &[u8]) {
    let _ = parse_changes(data);

    if let Ok((doc, _)) = Document::load(schema(), Some(data), &[]) {
        read_all(&doc);
    }
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let records = [
        data.to_vec(),
        data[..split].to_vec(),
        data[split..].to_vec(),
    ];
    for changes in [&records[..1], &records[1..]] {
        let Ok((doc, report)) = Document::load(schema(), None, changes) else {
            continue;
        };
        read_all(&doc);
        if report.skipped.is_empty() {
            let saved = doc.save();
            let (again, report) =
                Document::load(schema(), Some(&saved), &[]).expect("a saved document loads");
            assert!(report.skipped.is_empty(), "{:?}", report.skipped);
            assert_eq!(
                again.version(),
                doc.version(),
                "save and load changed the version"
            );
            if let Ok(value) = doc.read(None) {
                assert_eq!(
                    again.read(None).ok(),
                    Some(value),
                    "save and load changed the value"
                );
            }
        }
    }

    let (mut doc, _) = fixture();
    if doc.apply_changes(data).is_ok() {
        read_all(&doc);
    }
}
