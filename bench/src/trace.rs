//! The editing trace: 259,778 keystrokes of a real paper, replayed three ways.
//!
//! - a plain `String` doing the splices (the floor: no CRDT at all);
//! - raw Automerge, one transaction per edit, with and without encoding each change as
//!   durable storage needs it;
//! - Concord's text-edit path: `Document::patch` with a `splice` operation per edit, as a
//!   `PATCH` does (one change per edit, agent note, time, the change bytes for storage).
//!
//! Then the final document as Concord stores it: snapshot size, and a cold load from the
//! SQLite store (time; peak memory is measured by the caller in a child process).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{Automerge, ObjType, ReadDoc, ROOT};
use concord_core::patch::PatchOp;
use concord_core::{Document, Schema, WriteMeta};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::BenchError;

/// The SHA-256 of the text the full trace produces (from the data set's README).
pub const FINAL_SHA256: &str = "a489e9022976c14e46627aea174d07797edcb3fd17df42605956d4cf01bf9039";

/// Where the trace is, relative to the project root.
pub const DEFAULT_PATH: &str = "../shared/data/automerge-paper-edits.json";

/// One edit: at `pos`, delete `del` characters, insert `insert`.
#[derive(Debug, Clone)]
pub struct Edit {
    /// Position, in Unicode code points.
    pub pos: usize,
    /// Characters deleted.
    pub del: usize,
    /// Text inserted.
    pub insert: String,
}

/// Reads the trace (`[pos, del, ...inserted strings]` per edit).
pub fn load(path: &Path) -> Result<Vec<Edit>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        BenchError::Missing(format!(
            "the editing trace {} cannot be read ({e}); it ships in ../shared/data beside the project",
            path.display()
        ))
    })?;
    let raw: Vec<Vec<Value>> = serde_json::from_str(&text)
        .map_err(|e| BenchError::Invalid(format!("{}: {e}", path.display())))?;
    raw.into_iter()
        .enumerate()
        .map(|(i, e)| {
            let bad = || BenchError::Invalid(format!("edit {i} is not [pos, del, ...strings]"));
            let pos = e.first().and_then(Value::as_u64).ok_or_else(bad)? as usize;
            let del = e.get(1).and_then(Value::as_u64).ok_or_else(bad)? as usize;
            let mut insert = String::new();
            for s in e.iter().skip(2) {
                insert.push_str(s.as_str().ok_or_else(bad)?);
            }
            Ok(Edit { pos, del, insert })
        })
        .collect()
}

/// Timings and sizes of one replay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceReport {
    /// Edits replayed.
    pub edits: usize,
    /// Plain `String` splices.
    pub string: Duration,
    /// Raw Automerge, one commit per edit.
    pub automerge: Duration,
    /// Raw Automerge, one commit per edit, each change encoded for storage.
    pub automerge_encoded: Duration,
    /// Concord's `Document::patch` with one `splice` per edit.
    pub concord: Duration,
    /// Length of the final text, in characters.
    pub final_chars: usize,
    /// SHA-256 of the final text (hex); equals [`FINAL_SHA256`] for the whole trace.
    pub sha256: String,
    /// `Automerge::save` of Concord's final document, in bytes.
    pub snapshot_bytes: usize,
    /// Loading that document cold from the SQLite store (read + decode).
    pub cold_load: Duration,
}

fn splice_string(text: &mut String, edit: &Edit) {
    // Positions count code points; map them to byte offsets.
    let start = text
        .char_indices()
        .nth(edit.pos)
        .map_or(text.len(), |(b, _)| b);
    let end = text[start..]
        .char_indices()
        .nth(edit.del)
        .map_or(text.len(), |(b, _)| start + b);
    text.replace_range(start..end, &edit.insert);
}

/// Replays `edits` every way, `rounds` times each (the fastest round counts: the others
/// measured the machine's noise), and measures; `store_dir` holds the SQLite store for the
/// cold load.
pub async fn run(
    edits: &[Edit],
    store_dir: &Path,
    rounds: usize,
) -> Result<TraceReport, BenchError> {
    let rounds = rounds.max(1);
    let mut string = Duration::MAX;
    let mut floor = String::new();
    for _ in 0..rounds {
        let started = Instant::now();
        floor = String::new();
        for edit in edits {
            splice_string(&mut floor, edit);
        }
        string = string.min(started.elapsed());
    }
    let (mut automerge, mut automerge_encoded, mut concord) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut doc = None;
    for _ in 0..rounds {
        automerge = automerge.min(time_automerge(edits, false)?);
        automerge_encoded = automerge_encoded.min(time_automerge(edits, true)?);
        let (elapsed, replayed) = time_concord(edits)?;
        concord = concord.min(elapsed);
        doc = Some(replayed);
    }
    let doc = doc.expect("at least one round");
    let schema = doc.schema().clone();

    let text = doc
        .read_path(
            None,
            &concord_core::pointer::Pointer::parse("/text").expect("valid"),
        )
        .map_err(|e| BenchError::Invalid(e.to_string()))?
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    if text != floor {
        return Err(BenchError::Invalid(
            "Concord's text differs from the plain String replay".into(),
        ));
    }
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let snapshot = doc.save();
    let snapshot_bytes = snapshot.len();
    let cold_load = store_and_load(store_dir, schema, snapshot).await?;
    Ok(TraceReport {
        edits: edits.len(),
        string,
        automerge,
        automerge_encoded,
        concord,
        final_chars: text.chars().count(),
        sha256,
        snapshot_bytes,
        cold_load,
    })
}

/// Concord's text path: one `PATCH`-style splice per edit, each change taken out for
/// storage as the server does.
pub(crate) fn time_concord(edits: &[Edit]) -> Result<(Duration, Document), BenchError> {
    let meta = WriteMeta {
        agent: "trace".into(),
        time_ms: 0,
        message: None,
    };
    let schema = Schema {
        text: vec!["/text".into()],
        counters: Vec::new(),
        ids: Vec::new(),
    };
    let (mut doc, _) = Document::create(&json!({"text": ""}), schema, &meta)
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    let started = Instant::now();
    for edit in edits {
        let op = PatchOp::Splice {
            path: "/text".into(),
            pos: edit.pos,
            del: edit.del,
            insert: edit.insert.clone(),
        };
        let outcome = doc
            .patch(None, std::slice::from_ref(&op), &meta)
            .map_err(|e| BenchError::Invalid(format!("splice at {}: {e}", edit.pos)))?;
        std::hint::black_box(outcome.stored_changes());
    }
    Ok((started.elapsed(), doc))
}

fn time_automerge(edits: &[Edit], encode: bool) -> Result<Duration, BenchError> {
    let am = |e: automerge::AutomergeError| BenchError::Invalid(e.to_string());
    let mut doc = Automerge::new();
    let mut tx = doc.transaction();
    let text = tx.put_object(ROOT, "text", ObjType::Text).map_err(am)?;
    tx.commit();
    let started = Instant::now();
    for edit in edits {
        let mut tx = doc.transaction();
        tx.splice_text(&text, edit.pos, edit.del as isize, &edit.insert)
            .map_err(am)?;
        let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
        if encode {
            let change = hash.and_then(|h| doc.get_change_by_hash(&h));
            std::hint::black_box(change.map(|c| c.raw_bytes().len()));
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(doc.length(&text));
    Ok(elapsed)
}

/// Stores the document as a snapshot in a fresh SQLite store, then times a cold load of it
/// (store read plus `Document::load`), as the server does on first use.
async fn store_and_load(
    dir: &Path,
    schema: Schema,
    snapshot: Vec<u8>,
) -> Result<Duration, BenchError> {
    let store = open_store(dir)?;
    let id = store_snapshot(&store, schema, snapshot).await?;
    drop(store);
    let store = open_store(dir)?;
    let started = Instant::now();
    let doc = load_doc(&store, id).await?;
    let elapsed = started.elapsed();
    std::hint::black_box(doc.change_count());
    Ok(elapsed)
}

/// Opens the SQLite store in `dir`.
pub(crate) fn open_store(dir: &Path) -> Result<concord_server::sqlite::SqliteStore, BenchError> {
    concord_server::sqlite::SqliteStore::open(dir)
        .map_err(|e| BenchError::Io(format!("open store: {e}")))
}

/// Stores a document given as a snapshot; returns its id.
pub(crate) async fn store_snapshot(
    store: &concord_server::sqlite::SqliteStore,
    schema: Schema,
    snapshot: Vec<u8>,
) -> Result<uuid::Uuid, BenchError> {
    use concord_core::storage::{DocMeta, DocState, Store, WriteBatch};
    let (doc, _) = Document::load(schema.clone(), Some(&snapshot), &[])
        .map_err(|e| BenchError::Invalid(e.to_string()))?;
    let id = uuid::Uuid::new_v4();
    let io = |e: concord_core::storage::StoreError| BenchError::Io(e.to_string());
    store
        .write(WriteBatch {
            doc: id,
            create: Some(DocMeta {
                id,
                strategy: concord_core::Strategy::Crdt,
                schema,
                created_at_ms: 0,
            }),
            changes: Vec::new(),
            state: DocState {
                version: doc.version().to_string(),
                change_count: doc.change_count() as u64,
                updated_at_ms: 0,
                last_agent: None,
            },
            idempotency: None,
        })
        .await
        .map_err(io)?;
    store.compact(id, snapshot, Vec::new()).await.map_err(io)?;
    Ok(id)
}

/// Loads a stored document the way the registry does.
pub(crate) async fn load_doc(
    store: &concord_server::sqlite::SqliteStore,
    id: uuid::Uuid,
) -> Result<Document, BenchError> {
    use concord_core::storage::Store;
    let stored = store
        .load(id)
        .await
        .map_err(|e| BenchError::Io(e.to_string()))?
        .ok_or_else(|| BenchError::Invalid("stored document vanished".into()))?;
    let (doc, _) = Document::load(
        stored.meta.schema,
        stored.snapshot.as_deref(),
        &stored.changes,
    )
    .map_err(|e| BenchError::Invalid(e.to_string()))?;
    Ok(doc)
}

/// The trace file: `CONCORD_TRACE` if set, else [`DEFAULT_PATH`] from the working folder.
pub fn default_path() -> PathBuf {
    std::env::var_os("CONCORD_TRACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}
