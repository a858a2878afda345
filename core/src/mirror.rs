//! The document's present value as JSON, kept up to date from Automerge's patches.
//!
//! Reading a whole document as JSON costs as much as the document, and so would a write
//! that re-read it. A [`Mirror`] is read once (when a document is created or loaded) and then
//! moved forward by the patches of each change: a write costs what its edit touches. From
//! the same patches come the RFC 6902 operations that tell subscribers what changed, and the
//! change in the value's size as compact JSON, so the document limit needs no serializing
//! either.
//!
//! Patches are applied in the order Automerge gives them: grouped by object, parents before
//! children (an object is always created after the object that holds it), each object's in
//! the order its operations ran. A patch's path names its object in the final state, which
//! is where the mirror's parents already are when their children's patches come.

use std::io;
use std::sync::Arc;

use automerge::legacy::{ElementId, Key, ObjectId, OpType};
use automerge::{Automerge, Cursor, ObjType, Patch, PatchAction, Prop, ReadDoc};
use serde_json::{json, Map, Value};

use crate::value::{get, scalar_to_json, MAX_DEPTH};

/// The present value as JSON, with its size as compact JSON.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    value: Arc<Value>,
    bytes: usize,
}

/// Why a patch could not be applied: the mirror and the document disagree, which is a bug.
/// The caller reads the value again.
#[derive(Debug)]
pub(crate) struct Desync(pub(crate) String);

/// What applying patches did.
pub(crate) enum Applied {
    /// The RFC 6902 operations that turn the value before into the value after.
    Ops(Vec<Value>),
    /// A patch would place a value deeper than [`MAX_DEPTH`]; nothing was applied.
    TooDeep,
}

impl Mirror {
    /// A mirror of `value` (read whole from the document).
    pub(crate) fn new(value: Value) -> Mirror {
        let bytes = json_len(&value);
        Mirror {
            value: Arc::new(value),
            bytes,
        }
    }

    /// The value, shared.
    pub(crate) fn value(&self) -> &Arc<Value> {
        &self.value
    }

    /// The value's size as compact JSON, in bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Applies `patches`. On [`Desync`] the mirror is left part-way and must be replaced.
    ///
    /// The value is changed in place when nobody else holds it; otherwise (an answer being
    /// sent, a read being serialized) it is copied first, as it must be for them.
    pub(crate) fn apply(&mut self, doc: &Automerge, patches: &[Patch]) -> Result<Applied, Desync> {
        // The depth check first, so that a refused change leaves the mirror as it was.
        if patches.iter().any(|p| p.path.len() + 1 > MAX_DEPTH) {
            return Ok(Applied::TooDeep);
        }
        if patches.is_empty() {
            return Ok(Applied::Ops(Vec::new()));
        }
        let root = Arc::make_mut(&mut self.value);
        let mut ops: Vec<Value> = Vec::with_capacity(patches.len());
        for patch in patches {
            apply_one(doc, root, &mut self.bytes, &mut ops, patch)?;
        }
        Ok(Applied::Ops(ops))
    }

    /// Brings the counters that `changes` touched up to date, adding an operation for each
    /// that moved.
    ///
    /// A counter created concurrently by several writers shows the sum of them all
    /// ([`get`]), but Automerge's patches follow only the winning one: an increment of, or a
    /// stale delete of, another one changes the sum without a patch. So after changes
    /// made at an old version or received from elsewhere (a write at the present reaches
    /// every concurrent value), each place their operations set, increment or delete that
    /// holds a counter now is read again.
    pub(crate) fn settle_counters(
        &mut self,
        doc: &Automerge,
        changes: &[automerge::Change],
        ops: &mut Vec<Value>,
    ) {
        for change in changes.iter().filter(|c| !c.is_empty()) {
            for op in change.decode().operations {
                let touches = match &op.action {
                    OpType::Increment(_) | OpType::Delete => true,
                    OpType::Put(_) => !op.insert,
                    _ => false,
                };
                if touches {
                    self.settle_counter(doc, &op.obj, &op.key, ops);
                }
            }
        }
    }

    fn settle_counter(&mut self, doc: &Automerge, obj: &ObjectId, key: &Key, ops: &mut Vec<Value>) {
        let obj = match obj {
            ObjectId::Root => automerge::ROOT,
            ObjectId::Id(id) => match doc.import(&id.to_string()) {
                Ok((obj, _)) => obj,
                Err(_) => return,
            },
        };
        let prop = match key {
            Key::Map(name) => Prop::Map(name.to_string()),
            Key::Seq(ElementId::Id(id)) => {
                let Ok(cursor) = Cursor::try_from(id.to_string()) else {
                    return;
                };
                match doc.get_cursor_position(&obj, &cursor, None) {
                    Ok(index) => Prop::Seq(index),
                    Err(_) => return,
                }
            }
            Key::Seq(ElementId::Head) => return,
        };
        self.settle_counter_at(doc, &obj, prop, ops);
    }

    /// Reads the counter at `prop` of `obj` again, if one is there, adding an operation if
    /// it moved.
    pub(crate) fn settle_counter_at(
        &mut self,
        doc: &Automerge,
        obj: &automerge::ObjId,
        prop: Prop,
        ops: &mut Vec<Value>,
    ) {
        let is_counter = matches!(
            doc.get(obj, prop.clone()),
            Ok(Some((automerge::Value::Scalar(s), _))) if s.is_counter()
        );
        let Some(path) = is_counter
            .then(|| doc.parents(obj).ok()?.visible_path())
            .flatten()
        else {
            return;
        };
        let Ok(Some((automerge::Value::Scalar(s), _))) = get(doc, obj, prop.clone(), None) else {
            return;
        };
        let new = scalar_to_json(&s);
        let root = Arc::make_mut(&mut self.value);
        let mut pointer = String::new();
        let slot = follow_path(root, &path, &mut pointer)
            .and_then(|target| child_mut(target, &prop, &mut pointer));
        if let Some(slot) = slot.filter(|slot| **slot != new) {
            let mut size = Size(self.bytes);
            replace_scalar(slot, new, &mut size, ops, pointer);
            self.bytes = size.0;
        }
    }
}

/// Applies one patch to `root`, adjusting `bytes` and adding its RFC 6902 operations.
fn apply_one(
    doc: &Automerge,
    root: &mut Value,
    bytes: &mut usize,
    ops: &mut Vec<Value>,
    patch: &Patch,
) -> Result<(), Desync> {
    let mut pointer = String::new();
    let target = follow_path(root, &patch.path, &mut pointer)
        .ok_or_else(|| desync(patch, "its path is not in the value"))?;
    let mut size = Size(*bytes);
    match (&patch.action, target) {
        (PatchAction::PutMap { key, value, .. }, Value::Object(map)) => {
            let new = new_value(doc, patch, &value.0)?;
            size.add(json_len(&new));
            let op = match map.get(key) {
                Some(old) => {
                    size.sub(json_len(old));
                    "replace"
                }
                None => {
                    size.add(key_len(key) + usize::from(!map.is_empty()));
                    "add"
                }
            };
            push_token(&mut pointer, key);
            ops.push(json!({"op": op, "path": pointer, "value": new}));
            map.insert(key.clone(), new);
        }
        (PatchAction::DeleteMap { key }, Value::Object(map)) => {
            let old = map
                .remove(key)
                .ok_or_else(|| desync(patch, "it deletes a key that is not there"))?;
            size.sub(key_len(key) + json_len(&old) + usize::from(!map.is_empty()));
            push_token(&mut pointer, key);
            ops.push(json!({"op": "remove", "path": pointer}));
        }
        (PatchAction::PutSeq { index, value, .. }, Value::Array(items)) => {
            let slot = items
                .get_mut(*index)
                .ok_or_else(|| desync(patch, "it sets an index past the end"))?;
            let new = new_value(doc, patch, &value.0)?;
            size.add(json_len(&new));
            size.sub(json_len(slot));
            *slot = new.clone();
            ops.push(json!({"op": "replace", "path": format!("{pointer}/{index}"), "value": new}));
        }
        (PatchAction::Insert { index, values }, Value::Array(items)) => {
            if *index > items.len() {
                return Err(desync(patch, "it inserts past the end"));
            }
            let was_empty = items.is_empty();
            let new = values
                .iter()
                .map(|(v, _, _)| new_value(doc, patch, v))
                .collect::<Result<Vec<Value>, Desync>>()?;
            // One comma per element, less one if the list was empty.
            size.add(new.iter().map(json_len).sum::<usize>() + new.len());
            if was_empty && !new.is_empty() {
                size.sub(1);
            }
            for (i, value) in new.iter().enumerate() {
                let at = index + i;
                ops.push(json!({"op": "add", "path": format!("{pointer}/{at}"), "value": value}));
            }
            items.splice(*index..*index, new);
        }
        (PatchAction::DeleteSeq { index, length }, Value::Array(items)) => {
            let end = index
                .checked_add(*length)
                .filter(|end| *end <= items.len())
                .ok_or_else(|| desync(patch, "it deletes past the end"))?;
            let removed: usize = items.drain(*index..end).map(|v| json_len(&v)).sum();
            size.sub(removed + length);
            if items.is_empty() && *length > 0 {
                size.add(1);
            }
            for _ in 0..*length {
                ops.push(json!({"op": "remove", "path": format!("{pointer}/{index}")}));
            }
        }
        (PatchAction::SpliceText { index, value, .. }, Value::String(text)) => {
            let inserted = value.make_string();
            let at = byte_offset(text, *index)
                .ok_or_else(|| desync(patch, "it splices past the end of the text"))?;
            size.add(escaped_len(&inserted));
            text.insert_str(at, &inserted);
            replace_text(ops, pointer, text);
        }
        (PatchAction::DeleteSeq { index, length }, Value::String(text)) => {
            let Some((from, to)) = byte_offset(text, *index)
                .and_then(|from| byte_offset(&text[from..], *length).map(|len| (from, from + len)))
            else {
                return Err(desync(patch, "it deletes past the end of the text"));
            };
            size.sub(escaped_len(&text[from..to]));
            text.replace_range(from..to, "");
            replace_text(ops, pointer, text);
        }
        // A counter shows the sum of its concurrent values (`value::get`), which a patch does
        // not carry: it is read. A new conflict may be a concurrent counter to add in.
        (PatchAction::Increment { prop, .. } | PatchAction::Conflict { prop }, target) => {
            let slot = child_mut(target, prop, &mut pointer)
                .ok_or_else(|| desync(patch, "its property is not in the value"))?;
            let is_increment = matches!(patch.action, PatchAction::Increment { .. });
            let Some(new) = scalar_now(doc, patch, prop.clone())? else {
                // A conflict over objects: the winner shown is unchanged.
                return match is_increment {
                    true => Err(desync(patch, "it increments an object")),
                    false => Ok(()),
                };
            };
            if is_increment || *slot != new {
                replace_scalar(slot, new, &mut size, ops, pointer);
            }
        }
        // Marks are not part of the JSON.
        (PatchAction::Mark { .. }, _) => {}
        _ => return Err(desync(patch, "it does not fit the value at its path")),
    }
    *bytes = size.0;
    Ok(())
}

/// The value at `path` (pairs of an object and a property in it, from the root), with its
/// JSON Pointer appended to `pointer`.
fn follow_path<'v>(
    root: &'v mut Value,
    path: &[(automerge::ObjId, Prop)],
    pointer: &mut String,
) -> Option<&'v mut Value> {
    let mut target = root;
    for (_, prop) in path {
        target = child_mut(target, prop, pointer)?;
    }
    Some(target)
}

/// The value at `prop` of `target` (a key of an object, an index of a list), with its
/// token appended to `pointer`.
fn child_mut<'v>(
    target: &'v mut Value,
    prop: &Prop,
    pointer: &mut String,
) -> Option<&'v mut Value> {
    match (target, prop) {
        (Value::Object(map), Prop::Map(key)) => {
            push_token(pointer, key);
            map.get_mut(key)
        }
        (Value::Array(items), Prop::Seq(index)) => {
            pointer.push('/');
            pointer.push_str(&index.to_string());
            items.get_mut(*index)
        }
        _ => None,
    }
}

/// Puts `new` in `slot` (at `pointer`), with its size and its `replace` operation.
fn replace_scalar(
    slot: &mut Value,
    new: Value,
    size: &mut Size,
    ops: &mut Vec<Value>,
    pointer: String,
) {
    size.sub(json_len(slot));
    size.add(json_len(&new));
    *slot = new.clone();
    ops.push(json!({"op": "replace", "path": pointer, "value": new}));
}

/// A byte count moved by additions and subtractions whose order may dip below zero.
struct Size(usize);

impl Size {
    fn add(&mut self, n: usize) {
        self.0 = self.0.saturating_add(n);
    }
    fn sub(&mut self, n: usize) {
        self.0 = self.0.saturating_sub(n);
    }
}

/// A text's new value, as one operation: consecutive splices of one text are one `replace`.
fn replace_text(ops: &mut Vec<Value>, pointer: String, text: &str) {
    if let Some(last) = ops.last_mut() {
        if last["op"] == "replace" && last["path"] == pointer.as_str() {
            last["value"] = Value::String(text.to_owned());
            return;
        }
    }
    ops.push(json!({"op": "replace", "path": pointer, "value": text}));
}

/// The JSON a patch's new value starts as: a scalar, or an empty object, list or text that
/// the patches after it fill in. A counter is read for its sum (see [`scalar_now`]).
fn new_value(
    doc: &Automerge,
    patch: &Patch,
    value: &automerge::Value<'_>,
) -> Result<Value, Desync> {
    Ok(match value {
        automerge::Value::Scalar(s) if s.is_counter() => {
            let prop = match &patch.action {
                PatchAction::PutMap { key, .. } => Prop::Map(key.clone()),
                PatchAction::PutSeq { index, .. } => Prop::Seq(*index),
                // An inserted counter is new: nothing concurrent with it to add up.
                _ => return Ok(scalar_to_json(s)),
            };
            scalar_now(doc, patch, prop)?.unwrap_or_else(|| scalar_to_json(s))
        }
        automerge::Value::Scalar(s) => scalar_to_json(s),
        automerge::Value::Object(ObjType::Map | ObjType::Table) => Value::Object(Map::new()),
        automerge::Value::Object(ObjType::List) => Value::Array(Vec::new()),
        automerge::Value::Object(ObjType::Text) => Value::String(String::new()),
    })
}

/// The scalar shown now at `prop` of the patch's object, read as every read does (so that
/// concurrent counters add up); `None` if an object is there.
fn scalar_now(doc: &Automerge, patch: &Patch, prop: Prop) -> Result<Option<Value>, Desync> {
    match get(doc, &patch.obj, prop, None) {
        Ok(Some((automerge::Value::Scalar(s), _))) => Ok(Some(scalar_to_json(&s))),
        Ok(Some(_)) => Ok(None),
        Ok(None) => Err(desync(patch, "its property is not in the document")),
        Err(e) => Err(desync(patch, &e.to_string())),
    }
}

fn desync(patch: &Patch, why: &str) -> Desync {
    Desync(format!("{why}: {:?}", patch.action))
}

/// Appends `/token` to a JSON Pointer, escaped (RFC 6901).
fn push_token(pointer: &mut String, token: &str) {
    pointer.push('/');
    for c in token.chars() {
        match c {
            '~' => pointer.push_str("~0"),
            '/' => pointer.push_str("~1"),
            c => pointer.push(c),
        }
    }
}

/// The byte offset of character `index` in `text` (its length for `index` = its count).
/// Text edits come one a write, so this runs on every splice: an ASCII prefix (checked a
/// word at a time) is its own offset; only text with wider characters before `index` is
/// walked character by character.
fn byte_offset(text: &str, index: usize) -> Option<usize> {
    if index == 0 {
        return Some(0);
    }
    if let Some(prefix) = text.as_bytes().get(..index) {
        if prefix.is_ascii() {
            return Some(index);
        }
    }
    match text.char_indices().nth(index) {
        Some((at, _)) => Some(at),
        None => (text.chars().count() == index).then_some(text.len()),
    }
}

/// Counts what a serializer writes.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The size of `value` as compact JSON, in bytes, counted without building the text.
pub fn json_len(value: &Value) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value).expect("a JSON value serializes");
    counter.0
}

/// The size of `text` inside a JSON string, escapes included, quotes not.
fn escaped_len(text: &str) -> usize {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, text).expect("a string serializes");
    counter.0 - 2
}

/// The size of `"key":` in compact JSON.
fn key_len(key: &str) -> usize {
    escaped_len(key) + 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_pieces_measure_as_serde_writes_them() {
        for text in [
            "",
            "plain",
            "quote \" and \\",
            "tab\tnew\nline\u{1}",
            "é日本🦀\u{7f}",
        ] {
            assert_eq!(
                escaped_len(text) + 2,
                serde_json::to_string(text).unwrap().len()
            );
        }
        assert_eq!(key_len("a\"b"), "\"a\\\"b\":".len());
    }

    #[test]
    fn offsets_count_characters() {
        assert_eq!(byte_offset("aé日", 0), Some(0));
        assert_eq!(byte_offset("aé日", 2), Some(3));
        assert_eq!(byte_offset("aé日", 3), Some(6));
        assert_eq!(byte_offset("aé日", 4), None);
        // An ASCII prefix is its own offset; a wide character after it is still walked.
        assert_eq!(byte_offset("abcé", 3), Some(3));
        assert_eq!(byte_offset("abcé", 4), Some(5));
        assert_eq!(byte_offset("abc", 4), None);
    }

    #[test]
    fn pointers_escape_their_tokens() {
        let mut p = String::new();
        push_token(&mut p, "a/b~c");
        assert_eq!(p, "/a~1b~0c");
    }
}
