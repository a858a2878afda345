//! Damaged stored bytes are refused, never taken for another change: each regression test
//! here is named for the bug it caught.

mod common;

use common::meta;
use concord_core::doc::parse_changes;
use concord_core::{Document, Schema};
use serde_json::json;

/// A document of two changes; the second is large enough for Automerge to compress.
fn two_changes() -> (Document, Vec<Vec<u8>>) {
    let (mut doc, _) =
        Document::create(&json!({"a": "first"}), Schema::default(), &meta("w")).unwrap();
    let big: Vec<String> = (0..60).map(|i| format!("item number {i}")).collect();
    doc.put(None, &json!({"a": "first", "items": big}), &meta("w"))
        .unwrap();
    let changes = doc
        .automerge()
        .get_changes(&[])
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    (doc, changes)
}

/// Bug: `Change::try_from` ignores the chunk checksum, so a change record with one flipped
/// bit loaded as a different change (different content, different hash) without a word.
#[test]
fn corrupted_change_bytes_are_refused_by_checksum() {
    let (_, changes) = two_changes();
    let mut compressed = Document::load(Schema::default(), None, &changes)
        .unwrap()
        .0
        .automerge()
        .get_changes(&[])[1]
        .clone();
    let compressed = compressed.bytes().to_vec();
    assert_eq!(compressed[8], 2, "a compressed change chunk");
    let hashes = |bytes: &[u8]| -> Option<Vec<String>> {
        parse_changes(bytes)
            .ok()
            .map(|cs| cs.iter().map(|c| c.hash().to_string()).collect())
    };
    for original in changes.iter().chain([&compressed]) {
        let expected = hashes(original).expect("the original decodes");
        // Every bit of every byte after the magic number.
        for i in 4..original.len() {
            for bit in 0..8 {
                let mut damaged = original.clone();
                damaged[i] ^= 1 << bit;
                // Refused, or (a padding bit of the compressed stream) the very same change.
                if let Some(decoded) = hashes(&damaged) {
                    assert_eq!(
                        decoded, expected,
                        "byte {i} bit {bit} of a {}-byte change (type {}) decoded as another change",
                        original.len(),
                        original[8]
                    );
                    assert_eq!(original[8], 2, "only compressed padding may be ignored");
                }
            }
        }
    }
}

#[test]
fn a_damaged_record_is_skipped_and_the_rest_loads() {
    let (doc, changes) = two_changes();
    let first_only = Document::load(Schema::default(), None, &changes[..1])
        .unwrap()
        .0;
    let mut second = changes[1].clone();
    let middle = second.len() / 2;
    second[middle] ^= 0x01;
    let (loaded, report) =
        Document::load(Schema::default(), None, &[changes[0].clone(), second]).unwrap();
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.skipped[0].contains("checksum"),
        "{:?}",
        report.skipped
    );
    assert_eq!(loaded.version(), first_only.version());
    assert_eq!(loaded.read(None).unwrap(), json!({"a": "first"}));
    assert_ne!(loaded.version(), doc.version());
}

#[test]
fn torn_change_bytes_are_refused_at_every_length() {
    let (_, changes) = two_changes();
    for change in &changes {
        for len in 0..change.len() {
            assert!(parse_changes(&change[..len]).is_err(), "torn at {len}");
        }
    }
}

/// Raw changes with a damaged byte change nothing when applied.
#[test]
fn applying_damaged_changes_changes_nothing() {
    let (_, changes) = two_changes();
    let (mut target, _) = Document::create(&json!({}), Schema::default(), &meta("w")).unwrap();
    let before = target.version();
    let mut all: Vec<u8> = changes.concat();
    let last = all.len() - 1;
    all[last] ^= 0x80;
    assert!(target.apply_changes(&all).is_err());
    assert_eq!(target.version(), before);
}

/// Bug: `POST /v1/docs/{id}/changes` with a change whose dependency the document lacked
/// answered 200: Automerge kept the change aside, unapplied and unstored, and a restart
/// lost it. Such changes are refused whole; sent with their dependencies, in any order,
/// they apply.
#[test]
fn changes_without_their_dependencies_are_refused_whole() {
    let (_, changes) = two_changes();
    let (mut target, _) = Document::create(&json!({}), Schema::default(), &meta("w")).unwrap();
    let before = target.version();
    let err = target.apply_complete_changes(&changes[1]).unwrap_err();
    assert!(err.to_string().contains("depends on"), "{err}");
    assert_eq!(target.version(), before);
    assert!(target.missing_deps().is_empty(), "nothing was kept aside");
    // Both at once, the dependent one first: complete, so both apply.
    let both = [changes[1].clone(), changes[0].clone()].concat();
    let outcome = target.apply_complete_changes(&both).unwrap();
    assert_eq!(outcome.changes.len(), 2);
    // Again: already there, nothing new, no error.
    assert!(target
        .apply_complete_changes(&changes[1])
        .unwrap()
        .changes
        .is_empty());
}
