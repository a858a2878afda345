//! What a write may do to a document in memory: stay within the document limit (its value
//! as compact JSON, in bytes) and the history budget (its history as stored, in bytes), and
//! be undone in place when it fails after changing it.

use super::*;

/// The document limit unless the server is told otherwise (`Limits::max_document_bytes`).
pub const DEFAULT_MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// The history budget unless the server is told otherwise (`Limits::max_history_bytes`).
pub const DEFAULT_MAX_HISTORY_BYTES: u64 = 256 * 1024 * 1024;

/// The bytes a document's history takes as stored: its snapshot and change records.
pub(super) fn stored_bytes<'a>(
    snapshot: Option<&[u8]>,
    changes: impl IntoIterator<Item = &'a [u8]>,
) -> u64 {
    let changes: usize = changes.into_iter().map(<[u8]>::len).sum();
    (snapshot.map_or(0, <[u8]>::len) + changes) as u64
}

/// `Ok` unless the document's history already holds `max` bytes or more: then
/// [`Error::HistoryFull`], before anything is applied. The budget is checked before a write
/// (a write's size is not known until it is made), so a history passes it by at most one
/// write, which the body limit bounds.
pub(super) fn check_history(loaded: &Loaded, max: u64) -> Result<(), Error> {
    if loaded.history_bytes >= max {
        return Err(Error::HistoryFull {
            bytes: loaded.history_bytes,
            limit: max,
        });
    }
    Ok(())
}

/// `Ok` if `doc`'s value is at most `max` bytes of compact JSON; else [`Error::TooLarge`].
/// The size is kept by the document as it changes ([`Document::json_bytes`]): nothing is
/// serialized to check it.
pub(super) fn check_document(doc: &Document, max: usize) -> Result<(), Error> {
    if doc.json_bytes() > max {
        return Err(Error::TooLarge { limit: max });
    }
    Ok(())
}

/// Puts `doc` back at `to` (its version before a failed edit) without reloading it from
/// storage: a reload could miss writes whose batches are still on their way to the disk.
/// True if it did; on false the caller drops the document from memory instead.
pub(super) fn rewind(doc: &mut Document, to: &Version) -> bool {
    let Ok(at) = doc.automerge().fork_at(to.heads()) else {
        return false;
    };
    match Document::load(doc.schema().clone(), Some(&at.save()), &[]) {
        Ok((restored, report)) if report.skipped.is_empty() && restored.version() == *to => {
            *doc = restored;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::ApiError;
    use concord_core::Schema;
    use serde_json::json;

    #[test]
    fn document_size_is_counted_as_compact_json() {
        let value = json!({"a": [1, 2, "é\"\n"], "b": {"c": null}});
        let size = serde_json::to_vec(&value).unwrap().len();
        let meta = WriteMeta {
            agent: "a".into(),
            time_ms: 0,
            message: None,
        };
        let (doc, _) = Document::create(&value, Schema::default(), &meta).unwrap();
        assert!(check_document(&doc, size).is_ok());
        let e = ApiError::from(check_document(&doc, size - 1).unwrap_err());
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.kind, crate::limits::DOCUMENT_TOO_LARGE);
    }

    #[test]
    fn rewind_restores_the_version_and_value_before_an_edit() {
        let meta = WriteMeta {
            agent: "a".into(),
            time_ms: 0,
            message: None,
        };
        let (mut doc, _) = Document::create(&json!({"n": 1}), Schema::default(), &meta).unwrap();
        let before = doc.version();
        doc.put(None, &json!({"n": 2, "m": "x"}), &meta).unwrap();
        assert_ne!(doc.version(), before);
        assert!(rewind(&mut doc, &before));
        assert_eq!(doc.version(), before);
        assert_eq!(doc.read(None).unwrap(), json!({"n": 1}));
        // And it takes writes again.
        doc.put(None, &json!({"n": 3}), &meta).unwrap();
        assert_eq!(doc.read(None).unwrap(), json!({"n": 3}));
    }
}
