//! [`Document`]: one Automerge document holding a JSON object, with its schema.
//!
//! Every write is one Automerge change made in a transaction isolated at the writer's base
//! version, then merged into the present: what others wrote since that version survives.
//! The change records the agent (in its message, as `{"agent": …}`) and the time.
//!
//! One file for `Document`'s methods, as they are one type's API around one private
//! `write`: creating and loading, reads, the write forms, lost edits, raw changes, forks,
//! and `follow`, which moves the kept JSON value by each change's patches (the patch
//! arithmetic itself is `mirror.rs`).
//! What a change records is in `note.rs`, the strict chunk decoder in `chunks.rs`, the raw
//! changes after a version in `since.rs`; the merge logic lives in `reconcile`, `listdiff`,
//! `textdiff` and `lost`.

use automerge::transaction::Transaction;
use std::sync::Arc;

use automerge::{Automerge, Change, ChangeHash, LoadOptions, Patch, PatchLog, ReadDoc};
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::lost::{detect, LostEdit, LostLog};
use crate::mirror::{Applied, Desync, Mirror};
use crate::patch::{apply_merge_patch, apply_patch, PatchOp};
use crate::pointer::Pointer;
use crate::reconcile::{reconcile_prop, reconcile_root, write_new, Ctx, Present, Settle, ENCODING};
use crate::schema::{CompiledSchema, Schema};
use crate::storage::StoredChange;
use crate::value::{conflicts, len, locate, read_pointer, root_to_json, Conflict, MAX_DEPTH};
use crate::version::Version;

mod chunks;
mod deadline;
mod note;
mod since;

pub use crate::note::decode_note;
pub use chunks::parse_changes;
pub(crate) use chunks::read_uleb;
pub use deadline::Deadline;
use note::{commit_options, Extra};
pub use note::{HistoryEntry, WriteMeta};
pub use since::ChangesSince;

/// What a write did.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The document's version after the write.
    pub version: Version,
    /// The new changes to store (none if the write changed nothing).
    pub changes: Vec<Change>,
    /// RFC 6902 operations that turn the value before the write into the value after it
    /// (what subscribers are sent), derived from Automerge's patches.
    pub patch: Vec<Value>,
}

impl WriteOutcome {
    /// The new changes in storage form.
    pub fn stored_changes(&self) -> Vec<StoredChange> {
        self.changes.iter().map(stored).collect()
    }
}

/// A change in storage form, without a receipt (the server adds the one it records).
pub fn stored(change: &Change) -> StoredChange {
    StoredChange {
        hash: change.hash().0,
        bytes: change.raw_bytes().to_vec(),
        receipt: None,
    }
}

/// A JSON document kept as an Automerge CRDT.
///
/// A clone is the same document under the same actor (for a copy that writes as another,
/// see [`Document::fork`]).
#[derive(Clone)]
pub struct Document {
    pub(crate) doc: Automerge,
    pub(crate) schema: Schema,
    pub(crate) compiled: CompiledSchema,
    /// Kept here because Automerge can only count changes by walking the history.
    pub(crate) change_count: usize,
    /// The open lost-edit records, kept here for the same reason.
    pub(crate) lost: LostLog,
    /// Bytes of changes a sync peer sent that wait in Automerge's queue for dependencies
    /// not here yet (see [`crate::sync::MAX_WAITING_BYTES`]).
    pub(crate) waiting_bytes: usize,
    /// The present value as JSON, moved forward by each change's patches.
    pub(crate) mirror: Mirror,
    /// When edits must have finished ([`Document::set_deadline`]).
    pub(crate) deadline: Option<Deadline>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("version", &self.version().to_string())
            .field("changes", &self.change_count)
            .finish()
    }
}

/// What loading stored bytes skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// One line per stored record that could not be loaded.
    pub skipped: Vec<String>,
}

impl Document {
    /// A new document whose root is `value` (a JSON object), as one change.
    pub fn create(value: &Value, schema: Schema, meta: &WriteMeta) -> Result<(Self, WriteOutcome)> {
        let compiled = schema.compile()?;
        let mut doc = Document {
            doc: Automerge::new_with_encoding(ENCODING),
            schema,
            compiled,
            change_count: 0,
            lost: LostLog::default(),
            waiting_bytes: 0,
            mirror: Mirror::new(json!({})),
            deadline: None,
        };
        let mut outcome = doc.write(None, meta, &[], |tx, cx| reconcile_root(tx, cx, value))?;
        if outcome.changes.is_empty() {
            // An empty object still gets a first change, so that every document has a version.
            let hash = doc.doc.empty_commit(commit_options(meta, Extra::default()));
            outcome = doc.committed(&[hash], None, Vec::new());
        }
        Ok((doc, outcome))
    }

    /// Rebuilds a document from storage: an optional snapshot, then each stored change.
    /// A record that does not load is skipped and reported; the rest still loads.
    pub fn load(
        schema: Schema,
        snapshot: Option<&[u8]>,
        changes: &[Vec<u8>],
    ) -> Result<(Self, LoadReport)> {
        let compiled = schema.compile()?;
        let mut report = LoadReport::default();
        let mut doc = match snapshot {
            Some(bytes) => {
                Automerge::load_with_options(bytes, LoadOptions::new().text_encoding(ENCODING))
                    .map_err(|e| Error::Load(format!("snapshot: {e}")))?
            }
            None => Automerge::new_with_encoding(ENCODING),
        };
        for (i, bytes) in changes.iter().enumerate() {
            let applied = parse_changes(bytes).and_then(|c| {
                doc.apply_changes(c)
                    .map_err(|e| Error::InvalidChanges(e.to_string()))
            });
            if let Err(e) = applied {
                report.skipped.push(format!("change record {i}: {e}"));
            }
        }
        let missing = doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            report.skipped.push(format!(
                "{} change(s) wait for missing dependencies",
                missing.len()
            ));
        }
        let change_count = doc.get_changes_meta(&[]).len();
        let lost = LostLog::scan(&doc);
        let mirror = Mirror::new(root_to_json(&doc, None)?);
        Ok((
            Document {
                doc,
                schema,
                compiled,
                change_count,
                lost,
                waiting_bytes: 0,
                deadline: None,
                mirror,
            },
            report,
        ))
    }

    /// The current version.
    pub fn version(&self) -> Version {
        Version::new(self.doc.get_heads())
    }

    /// The schema fixed at creation.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// How many changes the document holds.
    pub fn change_count(&self) -> usize {
        self.change_count
    }

    /// How many changes this document lacks that changes it keeps aside build on (changes
    /// a sync peer sent before what they depend on): 0 when nothing waits.
    pub fn missing_dependencies(&self) -> usize {
        self.doc.get_missing_deps(&[]).len()
    }

    /// The underlying Automerge document, read-only.
    pub fn automerge(&self) -> &Automerge {
        &self.doc
    }

    /// Checks that this document has every head of `version`.
    pub fn check_version(&self, version: &Version) -> Result<()> {
        match version
            .heads()
            .iter()
            .find(|h| self.doc.get_change_meta_by_hash(h).is_none())
        {
            Some(missing) => Err(Error::UnknownVersion(missing.to_string())),
            None => Ok(()),
        }
    }

    /// Sets when the following edits (`put`, `patch`, `merge_patch`, …) must stop: asked
    /// between their operations, a deadline that has passed makes the edit roll back and
    /// fail with [`Error::DeadlineExceeded`], having changed nothing. `None` (the default)
    /// lets edits run to the end.
    pub fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    /// The present value, kept as JSON (no read of the document): shared, so that an answer
    /// can hold it without a copy.
    pub fn value(&self) -> &Arc<Value> {
        self.mirror.value()
    }

    /// The present value's size as compact JSON, in bytes (kept, not measured).
    pub fn json_bytes(&self) -> usize {
        self.mirror.bytes()
    }

    /// The whole value, now or at `at`, read from the CRDT.
    pub fn read(&self, at: Option<&Version>) -> Result<Value> {
        self.read_path(at, &Pointer::root())?
            .ok_or_else(|| Error::PathNotFound {
                path: String::new(),
            })
    }

    /// The value at `pointer`, now or at `at`; `None` if nothing is there.
    pub fn read_path(&self, at: Option<&Version>, pointer: &Pointer) -> Result<Option<Value>> {
        let heads = self.heads_for(at)?;
        read_pointer(&self.doc, pointer, heads.as_deref())
    }

    /// Every place holding concurrent values, now or at `at`.
    pub fn conflicts(&self, at: Option<&Version>) -> Result<Vec<Conflict>> {
        let heads = self.heads_for(at)?;
        conflicts(&self.doc, heads.as_deref())
    }

    fn heads_for(&self, at: Option<&Version>) -> Result<Option<Vec<ChangeHash>>> {
        match at {
            None => Ok(None),
            Some(v) => {
                self.check_version(v)?;
                Ok(Some(v.heads().to_vec()))
            }
        }
    }

    /// Makes the value equal to `value` as of `base` (the version the writer read; `None`
    /// for the present) and merges that difference into the present.
    pub fn put(
        &mut self,
        base: Option<&Version>,
        value: &Value,
        meta: &WriteMeta,
    ) -> Result<WriteOutcome> {
        self.write(base, meta, &[], |tx, cx| reconcile_root(tx, cx, value))
    }

    /// Applies JSON Patch operations as of `base`, atomically.
    pub fn patch(
        &mut self,
        base: Option<&Version>,
        ops: &[PatchOp],
        meta: &WriteMeta,
    ) -> Result<WriteOutcome> {
        self.write(base, meta, &[], |tx, cx| apply_patch(tx, cx, ops))
    }

    /// Applies an RFC 7396 merge patch as of `base`.
    pub fn merge_patch(
        &mut self,
        base: Option<&Version>,
        patch: &Value,
        meta: &WriteMeta,
    ) -> Result<WriteOutcome> {
        self.write(base, meta, &[], |tx, cx| apply_merge_patch(tx, cx, patch))
    }

    /// Replaces the present value with `value`, ignoring concurrent history: the
    /// last-writer-wins baseline. Written at the current version, so it overwrites.
    pub fn overwrite(&mut self, value: &Value, meta: &WriteMeta) -> Result<WriteOutcome> {
        self.put(None, value, meta)
    }

    /// Runs `edit` in a transaction at `base` (isolated from what was written since) and
    /// commits it as one change, merged into the present.
    ///
    /// An edit that moves elements needs what they hold now, which a transaction isolated at
    /// an old version cannot read: its first pass asks, the transaction is rolled back, the
    /// values are read, and the edit runs again (edits are deterministic). After a stale
    /// write, the edits it made invisible, or made invisibly, are recorded ([`crate::lost`]).
    /// `settles` names the lost-edit records the change closes.
    fn write(
        &mut self,
        base: Option<&Version>,
        meta: &WriteMeta,
        settles: &[String],
        edit: impl Fn(&mut Transaction<'_>, &mut Ctx<'_>) -> Result<()>,
    ) -> Result<WriteOutcome> {
        // The present's heads, which a stale write's effect is measured from.
        let present_heads = self.doc.get_heads();
        let stale_heads = match base {
            Some(v) => {
                self.check_version(v)?;
                let mut current = present_heads.clone();
                current.sort();
                (v.heads() != current.as_slice()).then(|| v.heads().to_vec())
            }
            None => None,
        };
        let mut present = Present {
            stale: stale_heads.is_some(),
            ..Present::default()
        };
        let mut passes = 0;
        let (hash, report, patches) = loop {
            passes += 1;
            // Only a stale base needs an isolated transaction; one at the current heads is a
            // plain transaction, which skips computing the isolation clock.
            // A transaction at the present logs its patches for the mirror; one isolated at
            // an old version sees the old state, so its patches would not fit the present.
            let mut tx = match &stale_heads {
                Some(heads) => self.doc.transaction_at(PatchLog::inactive(), heads),
                None => self.doc.transaction_log_patches(PatchLog::active()),
            }
            .expect("a new patch log belongs to any document");
            let mut cx = Ctx::new(&self.compiled, &present, self.deadline.as_ref());
            if let Err(e) = edit(&mut tx, &mut cx) {
                tx.rollback();
                return Err(e);
            }
            let report = cx.report;
            if !report.needs.is_empty() && passes < 3 {
                tx.rollback();
                for id in &report.needs {
                    let value = read_object(&self.doc, id)?;
                    present.objects.insert(id.clone(), value);
                }
                continue;
            }
            if automerge::transaction::Transactable::pending_ops(&tx) == 0 {
                tx.rollback();
                return Ok(WriteOutcome {
                    version: self.version(),
                    changes: Vec::new(),
                    patch: Vec::new(),
                });
            }
            let moves = report
                .moves
                .iter()
                .map(|(old, new)| (old.to_string(), new.to_string()))
                .collect();
            let extra = Extra {
                moves,
                settles: settles.to_vec(),
                ..Extra::default()
            };
            let (hash, mut log) = tx.commit_with(commit_options(meta, extra));
            let patches = stale_heads
                .is_none()
                .then(|| self.doc.make_patches(&mut log));
            break (hash, report, patches);
        };
        let mut hashes: Vec<ChangeHash> = hash.into_iter().collect();
        if let Some(base) = &stale_heads {
            // Objects this write deleted that a concurrent write had moved: the copies go
            // too, in a change at the present (the copies are not visible at the base).
            let copies = crate::lost::moved_copies(&self.doc, &self.lost, &report)?;
            if !copies.is_empty() {
                let mut places = Vec::with_capacity(copies.len());
                for copy in copies.values() {
                    places.extend(self.doc_parent(copy)?);
                }
                // From the highest index down, so that each index still names its copy.
                places.sort_by(|a, b| match (&a.1, &b.1) {
                    (automerge::Prop::Seq(x), automerge::Prop::Seq(y)) => y.cmp(x),
                    _ => std::cmp::Ordering::Equal,
                });
                let mut tx = self.doc.transaction();
                for (parent, prop) in places {
                    automerge::transaction::Transactable::delete(&mut tx, &parent, prop)?;
                }
                let (hash, _) = tx.commit_with(commit_options(meta, Extra::default()));
                hashes.extend(hash);
            }
            let notes = detect(&self.doc, base, &hashes, &report, &copies, &meta.agent)?;
            if !notes.is_empty() {
                let extra = Extra {
                    lost: notes,
                    ..Extra::default()
                };
                hashes.push(self.doc.empty_commit(commit_options(meta, extra)));
            }
        }
        // A stale write's effect on the present: the difference between the heads.
        let (patch, changes) = match patches {
            Some(patches) => {
                let mut patch = self.follow(&patches)?;
                for (obj, prop) in report.folded {
                    self.mirror
                        .settle_counter_at(&self.doc, &obj, prop, &mut patch);
                }
                #[cfg(debug_assertions)]
                self.check_mirror(&patches);
                (patch, None)
            }
            None => {
                let patches = self.doc.diff(&present_heads, &self.doc.get_heads());
                let changes = self.new_changes(&hashes);
                let mut patch = self.follow(&patches)?;
                self.mirror.settle_counters(&self.doc, &changes, &mut patch);
                #[cfg(debug_assertions)]
                self.check_mirror(&patches);
                (patch, Some(changes))
            }
        };
        Ok(self.committed(&hashes, changes, patch))
    }

    /// Moves the mirror forward by `patches`; returns them as RFC 6902 operations.
    ///
    /// A change that nests values deeper than [`MAX_DEPTH`] is an error, with the change
    /// still in the document and the mirror as it was: the caller puts the document back
    /// (as the server does for every failed edit) or drops it. Should the mirror ever not
    /// fit a patch (a bug), the value is read again whole.
    fn follow(&mut self, patches: &[Patch]) -> Result<Vec<Value>> {
        let ops = match self.mirror.apply(&self.doc, patches) {
            Ok(Applied::Ops(ops)) => ops,
            Ok(Applied::TooDeep) => {
                return Err(Error::InvalidValue(format!(
                    "objects nest deeper than {MAX_DEPTH} levels"
                )))
            }
            Err(Desync(why)) => {
                debug_assert!(false, "the JSON mirror does not fit a patch: {why}");
                self.mirror = Mirror::new(root_to_json(&self.doc, None)?);
                vec![json!({"op": "replace", "path": "", "value": **self.mirror.value()})]
            }
        };
        Ok(ops)
    }

    /// Debug builds check the mirror against a fresh read after every change (of documents
    /// small enough to read every time): what tests and fuzzers run exercises it.
    #[cfg(debug_assertions)]
    fn check_mirror(&self, patches: &[Patch]) {
        const CHECKED_UP_TO: usize = 64 * 1024;
        if self.mirror.bytes() > CHECKED_UP_TO {
            return;
        }
        if let Ok(fresh) = root_to_json(&self.doc, None) {
            assert_eq!(
                **self.mirror.value(),
                fresh,
                "the JSON mirror went astray after {patches:?}"
            );
            assert_eq!(
                self.mirror.bytes(),
                crate::mirror::json_len(&fresh),
                "the JSON mirror's size went astray"
            );
        }
    }

    /// Where an object sits now: its parent and its key or index there.
    fn doc_parent(
        &self,
        obj: &automerge::ObjId,
    ) -> Result<Option<(automerge::ObjId, automerge::Prop)>> {
        Ok(self.doc.parents(obj)?.next().map(|p| (p.obj, p.prop)))
    }

    /// The outcome of the changes just committed locally, taken in.
    fn committed(
        &mut self,
        hashes: &[ChangeHash],
        changes: Option<Vec<Change>>,
        patch: Vec<Value>,
    ) -> WriteOutcome {
        let changes = changes.unwrap_or_else(|| self.new_changes(hashes));
        self.took_in(&changes);
        WriteOutcome {
            version: self.version(),
            changes,
            patch,
        }
    }

    /// The changes just committed.
    fn new_changes(&self, hashes: &[ChangeHash]) -> Vec<Change> {
        hashes
            .iter()
            .filter_map(|h| self.doc.get_change_by_hash(h))
            .collect()
    }

    /// Counts new changes and reads their notes.
    pub(crate) fn took_in(&mut self, changes: &[Change]) {
        self.change_count += changes.len();
        for c in changes {
            self.lost.add(&c.hash(), c.timestamp(), c.message());
        }
    }

    /// The open lost-edit records: edits no longer visible because their object was deleted
    /// concurrently, oldest first.
    pub fn lost(&self) -> &[LostEdit] {
        self.lost.open()
    }

    /// Closes a lost-edit record without restoring it.
    pub fn dismiss_lost(&mut self, id: &str, meta: &WriteMeta) -> Result<WriteOutcome> {
        if self.lost.find(id).is_none() {
            return Err(Error::LostNotFound(id.to_owned()));
        }
        let hash = self.doc.empty_commit(commit_options(
            meta,
            Extra {
                settles: vec![id.to_owned()],
                ..Extra::default()
            },
        ));
        Ok(self.committed(&[hash], None, Vec::new()))
    }

    /// Writes a lost value back where it was (a list element is inserted at its old index,
    /// or at the end if the list is shorter now) and closes its record, in one change.
    pub fn restore_lost(&mut self, id: &str, meta: &WriteMeta) -> Result<WriteOutcome> {
        let lost = self
            .lost
            .find(id)
            .cloned()
            .ok_or_else(|| Error::LostNotFound(id.to_owned()))?;
        let pointer = Pointer::parse(&lost.path)?;
        self.write(None, meta, &[id.to_owned()], |tx, cx| {
            let place = locate(tx, &pointer, None)?.ok_or_else(|| {
                Error::InvalidValue("a lost value is never the whole document".into())
            })?;
            let mut path = pointer.tokens().to_vec();
            match place.parent_type {
                automerge::ObjType::List => {
                    let length = len(tx, &place.parent, None);
                    let index = crate::value::parse_index(&place.token)
                        .unwrap_or(length)
                        .min(length);
                    if let Some(last) = path.last_mut() {
                        *last = index.to_string();
                    }
                    let at = automerge::Prop::Seq(index);
                    write_new(tx, cx, &place.parent, at, true, &mut path, &lost.value)
                }
                _ => {
                    let at = automerge::Prop::Map(place.token.clone());
                    reconcile_prop(
                        tx,
                        cx,
                        &place.parent,
                        at,
                        &mut path,
                        &lost.value,
                        Settle::No,
                    )
                }
            }
        })
    }

    /// Applies raw Automerge changes (one or more encoded changes, or a saved document).
    /// Changes the document already has are ignored, so this is idempotent. Bytes that do
    /// not decode change nothing. If Automerge refuses a decoded change (a reused sequence
    /// number, say), the changes before it may have been applied: the caller should reload
    /// the document from storage.
    pub fn apply_changes(&mut self, bytes: &[u8]) -> Result<WriteOutcome> {
        self.apply_parsed(parse_changes(bytes)?)
    }

    fn apply_parsed(&mut self, incoming: Vec<Change>) -> Result<WriteOutcome> {
        let before = self.doc.get_heads();
        let mut log = PatchLog::active();
        let applied = self.doc.apply_changes_log_patches(incoming, &mut log);
        self.received(&before, &mut log, applied)
    }

    /// The outcome of changes received from elsewhere (raw, synced or merged) and applied
    /// with `log` recording their patches; `applied` is how applying them went.
    pub(crate) fn received(
        &mut self,
        before: &[ChangeHash],
        log: &mut PatchLog,
        applied: std::result::Result<(), automerge::AutomergeError>,
    ) -> Result<WriteOutcome> {
        // Even a refusal may come after some changes were applied: the mirror follows them.
        let patches = self.doc.make_patches(log);
        let mut patch = self.follow(&patches)?;
        let changes = if self.doc.get_heads() == before {
            Vec::new()
        } else {
            self.doc.get_changes(before)
        };
        self.mirror.settle_counters(&self.doc, &changes, &mut patch);
        #[cfg(debug_assertions)]
        self.check_mirror(&patches);
        applied.map_err(|e| Error::InvalidChanges(e.to_string()))?;
        self.took_in(&changes);
        Ok(WriteOutcome {
            version: self.version(),
            changes,
            patch,
        })
    }

    /// [`Document::apply_changes`] for changes that must be stored now: refuses, changing
    /// nothing, changes whose dependencies are neither in this document nor among `bytes`.
    /// Automerge would keep such a change aside, unapplied and so not in the outcome, until
    /// its dependencies came; a server that answered "applied" would then lose it on restart.
    pub fn apply_complete_changes(&mut self, bytes: &[u8]) -> Result<WriteOutcome> {
        let incoming = parse_changes(bytes)?;
        let arriving: std::collections::HashSet<ChangeHash> =
            incoming.iter().map(Change::hash).collect();
        for change in &incoming {
            if let Some(missing) = change.deps().iter().find(|dep| {
                !arriving.contains(dep) && self.doc.get_change_meta_by_hash(dep).is_none()
            }) {
                return Err(Error::InvalidChanges(format!(
                    "change {} depends on change {missing}, which this document does not have: \
                     send the changes it builds on first, or with it",
                    change.hash()
                )));
            }
        }
        self.apply_parsed(incoming)
    }

    /// An independent copy with the same history and schema (a branch), writing under a
    /// fresh actor; the outcome lists every change, for storing the copy.
    pub fn fork(&self) -> (Document, WriteOutcome) {
        let doc = self.doc.fork();
        let changes = doc.get_changes(&[]);
        let copy = Document {
            doc,
            schema: self.schema.clone(),
            compiled: self.compiled.clone(),
            change_count: self.change_count,
            lost: self.lost.clone(),
            waiting_bytes: self.waiting_bytes,
            mirror: self.mirror.clone(),
            deadline: None,
        };
        let outcome = WriteOutcome {
            version: copy.version(),
            changes,
            patch: Vec::new(),
        };
        (copy, outcome)
    }

    /// True if `other` descends from the same first change as this document (a fork of
    /// it, or it of a fork), so that merging them is meaningful.
    pub fn shares_origin(&self, other: &Document) -> bool {
        let root = self
            .doc
            .get_changes_meta(&[])
            .into_iter()
            .find(|m| m.deps.is_empty())
            .map(|m| m.hash);
        root.is_some_and(|h| other.doc.get_change_meta_by_hash(&h).is_some())
    }

    /// Merges every change of `other` that this document lacks.
    pub fn merge_from(&mut self, other: &Document) -> Result<WriteOutcome> {
        let before = self.doc.get_heads();
        let missing = self.doc.get_changes_added(&other.doc);
        let mut log = PatchLog::active();
        let applied = self.doc.apply_changes_log_patches(missing, &mut log);
        self.received(&before, &mut log, applied)
    }

    /// Hashes of changes that arrived but wait for dependencies this document lacks.
    pub fn missing_deps(&self) -> Vec<ChangeHash> {
        self.doc.get_missing_deps(&[])
    }

    /// The change graph in causal order, as the changes themselves claim it (no receipts:
    /// see [`Document::history_received`]).
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.history_received(|_| None)
    }

    /// The change graph with each change's receipt: `receipt(hash)` is who the server
    /// received the change from and when (ms since the epoch), if it recorded that. Sorted
    /// by that time (a change without a receipt by the time it claims), changes received
    /// at the same time in causal order; and never before a change it depends on (clocks
    /// of different nodes may disagree, and a write may be received before one it ends up
    /// built on): of the changes whose dependencies are listed, the earliest comes next.
    pub fn history_received<'r>(
        &self,
        receipt: impl Fn(&ChangeHash) -> Option<(&'r str, i64)>,
    ) -> Vec<HistoryEntry> {
        let metas = self.doc.get_changes_meta(&[]);
        let index: std::collections::HashMap<ChangeHash, usize> =
            metas.iter().enumerate().map(|(i, m)| (m.hash, i)).collect();
        let mut waiting = vec![0usize; metas.len()];
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); metas.len()];
        for (i, m) in metas.iter().enumerate() {
            for dep in m.deps.iter().filter_map(|d| index.get(d)) {
                waiting[i] += 1;
                dependents[*dep].push(i);
            }
        }
        let mut entries: Vec<Option<(i64, HistoryEntry)>> = metas
            .into_iter()
            .map(|m| {
                let (claimed_agent, message) = decode_note(m.message.as_deref());
                let received = receipt(&m.hash);
                let at_ms = match received {
                    Some((_, at_ms)) => at_ms,
                    None => m.timestamp.saturating_mul(1000),
                };
                let entry = HistoryEntry {
                    hash: m.hash.to_string(),
                    agent: match received {
                        Some((agent, _)) => Some(agent.to_owned()),
                        None => claimed_agent.clone(),
                    },
                    time: at_ms.div_euclid(1000),
                    recorded: received.is_some(),
                    claimed_agent,
                    claimed_time: m.timestamp,
                    message,
                    deps: m.deps.iter().map(|d| d.to_string()).collect(),
                    ops: (m.max_op + 1).saturating_sub(m.start_op),
                    actor: m.actor.to_hex_string(),
                    seq: m.seq,
                };
                Some((at_ms, entry))
            })
            .collect();
        // Kahn's topological order, the earliest received first; ties by causal position.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(i64, usize)>> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| waiting[*i] == 0)
            .filter_map(|(i, e)| e.as_ref().map(|(at, _)| std::cmp::Reverse((*at, i))))
            .collect();
        let mut history = Vec::with_capacity(entries.len());
        while let Some(std::cmp::Reverse((_, i))) = ready.pop() {
            if let Some((_, entry)) = entries[i].take() {
                history.push(entry);
            }
            for &next in &dependents[i] {
                waiting[next] -= 1;
                if waiting[next] == 0 {
                    if let Some((at, _)) = &entries[next] {
                        ready.push(std::cmp::Reverse((*at, next)));
                    }
                }
            }
        }
        history
    }

    /// The whole document in Automerge's compact format (a snapshot).
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }
}

/// The value of an object in the present; `None` if it is no longer visible.
fn read_object(doc: &Automerge, id: &automerge::ObjId) -> Result<Option<Value>> {
    if doc.parents(id)?.visible_path().is_none() {
        return Ok(None);
    }
    let kind = automerge::Value::Object(doc.object_type(id)?);
    crate::value::value_to_json(doc, &kind, id, None).map(Some)
}
