//! Whole-text PUTs of collaborative text: the cost of a write that replaces a large text,
//! and of one that edits a line of it, through Concord's document (lines first, then
//! characters inside changed lines) beside Automerge's own `update_text` (a character diff
//! of the whole text) on the same inputs.
//!
//! `update_text`'s cost grows with the square of a large replacement, so it is measured at
//! the smaller size only; Concord at every size.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use concord_core::{Document, Schema, WriteMeta};
use serde::Serialize;
use serde_json::json;

use super::BenchError;

/// One measured size.
#[derive(Debug, Clone, Serialize)]
pub struct TextPutRow {
    /// Characters in the old and in the new text.
    pub chars: usize,
    /// What the PUT does: `replace` (a wholly new text) or `edit` (one line changed).
    pub kind: &'static str,
    /// Concord's PUT, milliseconds (best of the rounds).
    pub concord_ms: f64,
    /// Automerge `update_text` on the same texts, milliseconds, where measured.
    pub update_text_ms: Option<f64>,
}

/// A text of `chars` characters: lines of words drawn from a small vocabulary by a
/// generator seeded with `seed`, so that two seeds give unrelated prose.
fn text(chars: usize, seed: u64) -> String {
    const WORDS: [&str; 16] = [
        "agents", "write", "the", "report", "merge", "a", "list", "of", "findings", "and", "notes",
        "version", "read", "plan", "shared", "draft",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = String::with_capacity(chars + 64);
    let mut words_in_line = 0;
    while out.len() < chars {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push_str(WORDS[(state >> 60) as usize]);
        words_in_line += 1;
        if words_in_line == 10 {
            out.push('\n');
            words_in_line = 0;
        } else {
            out.push(' ');
        }
    }
    out.truncate(chars);
    out
}

fn meta() -> WriteMeta {
    WriteMeta {
        agent: "bench".into(),
        time_ms: 0,
        message: None,
    }
}

fn concord_put(old: &str, new: &str) -> Result<Duration, BenchError> {
    let schema = Schema {
        text: vec!["/t".into()],
        ..Schema::default()
    };
    let invalid = |e: concord_core::Error| BenchError::Invalid(e.to_string());
    let (mut doc, _) = Document::create(&json!({ "t": old }), schema, &meta()).map_err(invalid)?;
    let base = doc.version();
    let started = Instant::now();
    doc.put(Some(&base), &json!({ "t": new }), &meta())
        .map_err(invalid)?;
    let took = started.elapsed();
    if doc.read(None).map_err(invalid)?["t"] != new {
        return Err(BenchError::Invalid(
            "the PUT did not reach the new text".into(),
        ));
    }
    Ok(took)
}

fn update_text(old: &str, new: &str) -> Result<Duration, BenchError> {
    let invalid = |e: automerge::AutomergeError| BenchError::Invalid(e.to_string());
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let t = tx.put_object(ROOT, "t", ObjType::Text).map_err(invalid)?;
    tx.splice_text(&t, 0, 0, old).map_err(invalid)?;
    tx.commit();
    let started = Instant::now();
    let mut tx = doc.transaction();
    tx.update_text(&t, new).map_err(invalid)?;
    tx.commit();
    let took = started.elapsed();
    if doc.text(&t).map_err(invalid)? != new {
        return Err(BenchError::Invalid(
            "update_text did not reach the new text".into(),
        ));
    }
    Ok(took)
}

fn best(rounds: usize, f: impl Fn() -> Result<Duration, BenchError>) -> Result<f64, BenchError> {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        best = best.min(f()?);
    }
    Ok(best.as_secs_f64() * 1000.0)
}

/// Measures a replacement and a one-line edit at each size; `update_text` up to
/// `baseline_max` characters.
pub fn run(
    sizes: &[usize],
    baseline_max: usize,
    rounds: usize,
) -> Result<Vec<TextPutRow>, BenchError> {
    let mut rows = Vec::new();
    for &chars in sizes {
        let old = text(chars, 1);
        let replaced = text(chars, 2);
        let mut edited = old.clone();
        let middle = edited[..edited.len() / 2].rfind('\n').map_or(0, |i| i + 1);
        edited.insert_str(middle, "(edited) ");
        for (kind, new) in [("replace", &replaced), ("edit", &edited)] {
            let baseline = if chars <= baseline_max {
                Some(best(1, || update_text(&old, new))?)
            } else {
                None
            };
            rows.push(TextPutRow {
                chars,
                kind,
                concord_ms: best(rounds, || concord_put(&old, new))?,
                update_text_ms: baseline,
            });
        }
    }
    Ok(rows)
}
