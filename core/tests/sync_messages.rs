//! Hostile sync messages: each regression test is named for a bug fuzzing found in the
//! way Automerge handles a peer's message, now refused or repaired by
//! `SyncMessage::decode` before it can reach Automerge.

use automerge::sync::{BloomFilter, Have, Message, MessageVersion};
use automerge::ChangeHash;
use concord_core::sync::{SyncError, SyncMessage, SyncState};
use concord_core::{Document, Schema, WriteMeta};
use serde_json::json;

fn message(have: Vec<Have>, heads: Vec<ChangeHash>) -> Vec<u8> {
    Message {
        heads,
        need: Vec::new(),
        have,
        changes: Vec::<Vec<u8>>::new().into(),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode()
}

fn leb(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A Bloom filter in wire form: entries, bits per entry, probes, then the bits.
fn bloom(entries: u64, bits_per_entry: u64, probes: u64, bits: &[u8]) -> BloomFilter {
    let mut bytes = Vec::new();
    leb(entries, &mut bytes);
    leb(bits_per_entry, &mut bytes);
    leb(probes, &mut bytes);
    bytes.extend_from_slice(bits);
    BloomFilter::try_from(&bytes[..]).expect("Automerge parses it")
}

/// The server's side of a sync after receiving `bytes`: decode, receive, answer.
fn serve(bytes: &[u8]) -> Result<(), SyncError> {
    let meta = WriteMeta {
        agent: "s".into(),
        time_ms: 0,
        message: None,
    };
    let (mut doc, _) = Document::create(&json!({"k": 1}), Schema::default(), &meta).unwrap();
    let mut state = SyncState::new();
    let message = SyncMessage::decode(bytes)?;
    doc.receive_sync_message(&mut state, message)?;
    let _ = doc.generate_sync_message(&mut state);
    Ok(())
}

/// Bug: a filter with entries but zero bits per entry made Automerge compute `x % 0` when
/// it next wrote to the peer: a panic in the connection's task.
#[test]
fn bloom_filter_without_bits_is_refused() {
    let have = Have {
        last_sync: Vec::new(),
        bloom: bloom(3, 0, 7, &[]),
    };
    let err = serve(&message(vec![have], Vec::new())).unwrap_err();
    assert!(matches!(err, SyncError::Malformed(_)), "{err}");
}

/// Bug: Automerge allocates a vector of `probes` entries per hash it looks up, so a filter
/// asking for 2^32 - 1 probes made it ask for 16 GiB: the process aborts.
#[test]
fn bloom_filter_with_absurd_probes_is_refused() {
    let have = Have {
        last_sync: Vec::new(),
        bloom: bloom(1, 10, u64::from(u32::MAX), &[0xff, 0xff]),
    };
    let err = serve(&message(vec![have], Vec::new())).unwrap_err();
    assert!(matches!(err, SyncError::Malformed(_)), "{err}");
}

/// A well-formed filter, as Automerge makes them, still passes.
#[test]
fn ordinary_bloom_filters_pass() {
    let hashes = [ChangeHash([1; 32]), ChangeHash([2; 32])];
    let have = Have {
        last_sync: Vec::new(),
        bloom: BloomFilter::from_hashes(hashes.iter()),
    };
    serve(&message(vec![have], Vec::new())).unwrap();
}

/// Bug: heads sent out of order were kept so, and Automerge asserts (in debug builds)
/// that the hash lists it encodes are sorted.
#[test]
fn unsorted_hashes_are_put_in_order() {
    // Automerge will not encode them out of order: encode in order, then swap the two.
    let mut bytes = message(Vec::new(), vec![ChangeHash([1; 32]), ChangeHash([9; 32])]);
    assert_eq!(
        &bytes[..2],
        [0x42, 2],
        "a message type byte, then two heads"
    );
    bytes[2..66].rotate_left(32);
    assert_eq!(bytes[2], 9);
    let decoded = SyncMessage::decode(&bytes).unwrap();
    let again = SyncMessage::decode(&decoded.clone().encode()).unwrap();
    assert_eq!(again, decoded);
    assert_eq!(
        decoded.heads().heads(),
        [ChangeHash([1; 32]), ChangeHash([9; 32])]
    );
}

/// A peer's copy of `server` with `n` more changes of its own, one after the other, each
/// putting `size` bytes of text that does not compress (Automerge deflates large changes).
fn peer_changes(server: &Document, n: usize, size: usize) -> Vec<automerge::Change> {
    use automerge::transaction::Transactable;
    let mut peer = server.automerge().fork();
    let before = peer.get_heads();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..n {
        let text: String = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                char::from(b'a' + (seed % 26) as u8)
            })
            .collect();
        let mut tx = peer.transaction();
        tx.put(automerge::ROOT, format!("big{i}"), text).unwrap();
        tx.commit();
    }
    peer.get_changes(&before)
}

fn carrying(changes: &[automerge::Change]) -> SyncMessage {
    let bytes = Message {
        heads: Vec::new(),
        need: Vec::new(),
        have: Vec::new(),
        changes: changes
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect::<Vec<_>>()
            .into(),
        flags: None,
        version: MessageVersion::V1,
    }
    .encode();
    SyncMessage::decode(&bytes).unwrap()
}

fn server_doc() -> Document {
    let meta = WriteMeta {
        agent: "s".into(),
        time_ms: 0,
        message: None,
    };
    Document::create(&json!({"k": 1}), Schema::default(), &meta)
        .unwrap()
        .0
}

/// The protocol at work: a sender whose Bloom filter test answered "has it" wrongly sends a
/// change without the one it builds on; the change waits, and applies once that one comes.
#[test]
fn a_change_sent_before_the_one_it_builds_on_waits_for_it() {
    let mut server = server_doc();
    let changes = peer_changes(&server, 2, 10);
    let before = server.version();
    let mut state = SyncState::new();
    let outcome = server
        .receive_sync_message(&mut state, carrying(&changes[1..]))
        .unwrap();
    assert!(outcome.changes.is_empty(), "nothing applies yet");
    assert_eq!(server.version(), before);
    assert_eq!(server.missing_deps(), [changes[0].hash()]);
    let outcome = server
        .receive_sync_message(&mut state, carrying(&changes[..1]))
        .unwrap();
    assert_eq!(
        outcome.changes.len(),
        2,
        "both apply, and are there to store"
    );
    assert!(server.missing_deps().is_empty());
}

/// Bug: changes whose dependencies never come waited in memory without bound.
#[test]
fn changes_waiting_for_their_dependencies_are_bounded() {
    let mut server = server_doc();
    // Twelve changes of 1 MiB after a first one that is never sent: more than 8 MiB wait.
    let changes = peer_changes(&server, 13, 1 << 20);
    let orphans: usize = changes[1..].iter().map(|c| c.raw_bytes().len()).sum();
    assert!(orphans > concord_core::sync::MAX_WAITING_BYTES, "{orphans}");
    let before = server.version();
    let mut state = SyncState::new();
    let refused = server
        .receive_sync_message(&mut state, carrying(&changes[1..]))
        .unwrap_err();
    assert!(
        matches!(refused, SyncError::TooMuchWaiting { .. }),
        "{refused}"
    );
    assert_eq!(server.version(), before);
    assert!(server.missing_deps().is_empty(), "nothing was kept aside");
    // Sent a few at a time, they are refused once the bound is reached.
    let mut refusals = 0;
    for chunk in changes[1..].chunks(2) {
        match server.receive_sync_message(&mut state, carrying(chunk)) {
            Ok(outcome) => assert!(outcome.changes.is_empty()),
            Err(SyncError::TooMuchWaiting { waiting }) => {
                assert!(waiting > concord_core::sync::MAX_WAITING_BYTES);
                refusals += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refusals > 0);
    // With the change they build on, everything applies.
    let outcome = server
        .receive_sync_message(&mut state, carrying(&changes))
        .unwrap();
    assert_eq!(outcome.changes.len(), 13);
    assert!(server.missing_deps().is_empty());
}

/// A peer's change whose operation counter does not fit 32 bits: Automerge 0.12's change
/// decoder panics on it (found by fuzzing). It is refused as malformed, from a sync message
/// and as raw change bytes alike, and the document is unchanged.
#[test]
fn a_change_whose_op_counter_overflows_is_refused() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../tests/fuzz-regressions/sync_message/op-counter-past-u32-panics-the-change-decoder",
    );
    let bytes = std::fs::read(path).expect("the saved input");
    let decoded = Message::decode(&bytes).expect("the message itself decodes");
    let bad: Vec<&[u8]> = decoded
        .changes
        .iter()
        .filter(|chunk| {
            concord_core::doc::parse_changes(chunk)
                .is_err_and(|e| e.to_string().contains("the Automerge decoder failed"))
        })
        .collect();
    assert!(
        !bad.is_empty(),
        "a change in the message is the one the decoder fails on"
    );
    match serve(&bytes) {
        Err(SyncError::Malformed(why)) => assert!(why.contains("decoder failed"), "{why}"),
        other => panic!("expected a malformed message, got {other:?}"),
    }
    let mut doc = server_doc();
    let before = doc.version();
    assert!(doc.apply_changes(bad[0]).is_err());
    assert_eq!(doc.version(), before);
}
