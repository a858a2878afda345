//! Edits that a merge could not keep visible, recorded so that nothing vanishes silently.
//!
//! Two concurrent writes can leave an edit where nobody sees it: X deletes an object (or a
//! list element) while Y edits inside it. Automerge keeps Y's operations, but inside an
//! object no longer reachable from the root; the value reads as if Y never wrote. Concord
//! notices this on the write that completes the pair, whichever comes second:
//! - the write deleted an object that holds edits made since its base ("deleted under
//!   edits"), or
//! - the write edited inside an object deleted since its base ("edited after delete").
//!
//! Either way the write adds a note to the document's history ([`LostNote`], in the message
//! of a change with no operations): the path, who deleted, whose edits are no longer
//! visible, and the value as it stood with them. The record is part of the document, so it
//! is stored, replicated and reloaded with it, and it stays listed until a later change
//! settles it (restores the value or dismisses the record).

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash, ObjId, ObjType, ReadDoc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::note::decode_note;
use crate::pointer::Pointer;
use crate::reconcile::Report;
use crate::value::{get, value_to_json};

/// A lost edit as recorded in a change's note.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LostNote {
    /// Where the deleted value was, as a JSON Pointer at the version the write read.
    pub path: String,
    /// The agents whose changes deleted it.
    pub deleted_by: Vec<String>,
    /// The agents whose edits inside it are no longer visible.
    pub edited_by: Vec<String>,
    /// The deleted value as it stands with those edits.
    pub value: Value,
}

/// A lost edit that is still open: listed with the document's conflicts until settled.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LostEdit {
    /// Names the record in a restore or dismiss: the recording change and an index.
    pub id: String,
    /// Where the deleted value was, as a JSON Pointer at the version the write read.
    pub path: String,
    /// The agents whose changes deleted it.
    pub deleted_by: Vec<String>,
    /// The agents whose edits inside it are no longer visible.
    pub edited_by: Vec<String>,
    /// The deleted value as it stands with those edits.
    pub value: Value,
    /// The hash of the change that recorded it.
    pub change: String,
    /// When it was recorded, milliseconds since the Unix epoch.
    pub time: i64,
}

/// The open lost edits of a document, kept up to date as changes arrive.
#[derive(Debug, Clone, Default)]
pub(crate) struct LostLog {
    open: Vec<LostEdit>,
    settled: HashSet<String>,
    /// Moved objects (as text ids) and their copies, from the notes of moving changes.
    moved_to: HashMap<String, String>,
}

impl LostLog {
    /// Takes in the notes of a change (any order of arrival; a settle may come first).
    pub(crate) fn add(&mut self, hash: &ChangeHash, time_s: i64, message: Option<&str>) {
        let Some(note) = message.and_then(|m| serde_json::from_str::<NoteFields>(m).ok()) else {
            return;
        };
        self.moved_to.extend(note.moves);
        for id in note.settles {
            self.open.retain(|l| l.id != id);
            self.settled.insert(id);
        }
        for (i, lost) in note.lost.into_iter().enumerate() {
            let id = lost_id(hash, i);
            if self.settled.contains(&id) || self.open.iter().any(|l| l.id == id) {
                continue;
            }
            self.open.push(LostEdit {
                id,
                path: lost.path,
                deleted_by: lost.deleted_by,
                edited_by: lost.edited_by,
                value: lost.value,
                change: hash.to_string(),
                time: time_s.saturating_mul(1000),
            });
        }
    }

    /// Takes in every change of a document (on load).
    pub(crate) fn scan(doc: &Automerge) -> Self {
        let mut log = LostLog::default();
        for meta in doc.get_changes_meta(&[]) {
            log.add(&meta.hash, meta.timestamp, meta.message.as_deref());
        }
        log
    }

    /// The open records, oldest first.
    pub(crate) fn open(&self) -> &[LostEdit] {
        &self.open
    }

    /// The open record with this id.
    pub(crate) fn find(&self, id: &str) -> Option<&LostEdit> {
        self.open.iter().find(|l| l.id == id)
    }
}

/// The fields of a change note this module reads.
#[derive(Deserialize)]
struct NoteFields {
    #[serde(default)]
    lost: Vec<LostNote>,
    #[serde(default)]
    settles: Vec<String>,
    #[serde(default)]
    moves: Vec<(String, String)>,
}

/// For each object a write deleted that a concurrent change had moved (its copy is still
/// visible): the copy, which the write's delete must take too. Follows moves of moves.
pub(crate) fn moved_copies(
    doc: &Automerge,
    log: &LostLog,
    report: &Report,
) -> Result<HashMap<ObjId, ObjId>> {
    let mut out = HashMap::new();
    for (obj, _) in &report.deleted {
        if report.moved.contains(obj) {
            continue;
        }
        let mut at = obj.to_string();
        let mut hops = 0;
        while let Some(next) = log.moved_to.get(&at) {
            at = next.clone();
            hops += 1;
            if hops > 64 {
                break;
            }
        }
        if hops == 0 {
            continue;
        }
        let Ok(copy) = doc.import_obj(&at) else {
            continue;
        };
        if doc.parents(&copy)?.visible_path().is_some() {
            out.insert(obj.clone(), copy);
        }
    }
    Ok(out)
}

fn lost_id(hash: &ChangeHash, index: usize) -> String {
    format!("{}-{index}", &hash.to_string()[..16])
}

/// After a write isolated at `base` committed as `own`, the edits it made invisible or that
/// it made invisibly: the notes to record. `writer` is the write's agent.
pub(crate) fn detect(
    doc: &Automerge,
    base: &[ChangeHash],
    own: &[ChangeHash],
    report: &Report,
    copies: &HashMap<ObjId, ObjId>,
    writer: &str,
) -> Result<Vec<LostNote>> {
    let mut cache = None;
    let mut notes = Vec::new();
    let own_deletes: HashSet<&ObjId> = report.deleted.iter().map(|(id, _)| id).collect();

    // Deleted under edits: what this write deleted changed since its base.
    for (obj, path) in &report.deleted {
        if report.moved.contains(obj) {
            continue;
        }
        let kind = automerge::Value::Object(doc.object_type(obj)?);
        let before = value_to_json(doc, &kind, obj, Some(base))?;
        // A deleted object that was moved concurrently lives on in its copy.
        let holder = copies.get(obj).unwrap_or(obj);
        let now = value_to_json(doc, &kind, holder, None)?;
        if before == now {
            continue;
        }
        let mut inside = subtree(doc, obj)?;
        inside.extend(subtree(doc, holder)?);
        let edited_by = agents(concurrent(&mut cache, doc, base, own), |op| {
            inside.contains(&op.obj.to_string())
        });
        notes.push(LostNote {
            path: Pointer::from(path.clone()).to_string(),
            deleted_by: vec![writer.to_owned()],
            edited_by,
            value: now,
        });
    }

    // Edited after delete: where this write wrote is no longer visible.
    let mut reported: HashSet<ObjId> = HashSet::new();
    for (obj, path) in &report.touched {
        let Some((gone, up)) = deleted_ancestor(doc, obj)? else {
            continue;
        };
        if own_deletes.contains(&gone) || !reported.insert(gone.clone()) {
            continue;
        }
        let gone_id = gone.to_string();
        let deleted_by = agents(concurrent(&mut cache, doc, base, own), |op| {
            op.pred.iter().any(|p| p.to_string() == gone_id)
        });
        let kind = automerge::Value::Object(doc.object_type(&gone)?);
        notes.push(LostNote {
            path: Pointer::from(path[..path.len().saturating_sub(up)].to_vec()).to_string(),
            deleted_by,
            edited_by: vec![writer.to_owned()],
            value: value_to_json(doc, &kind, &gone, None)?,
        });
    }
    Ok(notes)
}

type Decoded = Vec<(Option<String>, automerge::ExpandedChange)>;

/// The changes concurrent with a write (not known at its base, not its own), decoded once.
fn concurrent<'c>(
    cache: &'c mut Option<Decoded>,
    doc: &Automerge,
    base: &[ChangeHash],
    own: &[ChangeHash],
) -> &'c Decoded {
    cache.get_or_insert_with(|| {
        doc.get_changes(base)
            .into_iter()
            .filter(|c| !own.contains(&c.hash()))
            .map(|c: Change| (decode_note(c.message()).0, c.decode()))
            .collect()
    })
}

/// The agents of the changes with an operation for which `hit` holds, sorted, once each.
fn agents(
    changes: &[(Option<String>, automerge::ExpandedChange)],
    hit: impl Fn(&automerge::legacy::Op) -> bool,
) -> Vec<String> {
    let mut out: Vec<String> = changes
        .iter()
        .filter(|(_, c)| c.operations.iter().any(&hit))
        .map(|(agent, c)| agent.clone().unwrap_or_else(|| c.actor_id.to_hex_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The outermost object on the way from `obj` to the root that is no longer visible in the
/// present (deleted), and how many levels above `obj` it is. An object hidden because it
/// lost a conflict is not deleted: it is listed with the conflicts.
fn deleted_ancestor(doc: &Automerge, obj: &ObjId) -> Result<Option<(ObjId, usize)>> {
    let mut child = obj.clone();
    let mut found = None;
    for (up, parent) in doc.parents(obj)?.enumerate() {
        if !parent.visible {
            // (A deleted list element has no index: the lookup may fail, and it is deleted.)
            let losing = doc
                .get_all(&parent.obj, parent.prop.clone())
                .is_ok_and(|all| all.iter().any(|(_, id)| *id == child));
            if !losing {
                found = Some((child.clone(), up));
            }
        }
        child = parent.obj;
    }
    Ok(found)
}

/// The ids (as text) of `obj` and every object inside it, in the present.
fn subtree(doc: &Automerge, obj: &ObjId) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    let mut stack = vec![obj.clone()];
    while let Some(o) = stack.pop() {
        out.insert(o.to_string());
        let props: Vec<automerge::Prop> = match doc.object_type(&o)? {
            ObjType::Map | ObjType::Table => doc.keys(&o).map(automerge::Prop::Map).collect(),
            ObjType::List => (0..doc.length(&o)).map(automerge::Prop::Seq).collect(),
            ObjType::Text => Vec::new(),
        };
        for prop in props {
            if let Some((automerge::Value::Object(_), id)) = get(doc, &o, prop, None)? {
                stack.push(id);
            }
        }
    }
    Ok(out)
}
