//! Turning a whole new JSON value into the fewest Automerge operations.
//!
//! A writer who read version V and sends back a whole new value means "make it look like
//! this". Concord diffs V's state against the new value and records only the difference, in
//! a transaction isolated at V, so that everything written since V survives the merge:
//! - maps are diffed by key;
//! - lists by element identity ([`crate::listdiff`]): an edited element is reconciled in
//!   place, a moved one is deleted and inserted with the value it holds *now* (so edits made
//!   since V move with it, and an element deleted since V is not brought back), never
//!   `update_object`, which deletes from the front of a shrinking list;
//! - collaborative text by lines, then characters inside changed lines ([`crate::textdiff`]);
//! - counters by the difference; concurrent creations of one counter add up and the next
//!   write folds them into one.
//!
//! A changed scalar is a `put`, which conflicts with (and keeps) a concurrent `put` of the
//! same place. An explicit write of one place ([`Ctx::settle`]) writes it even when it holds
//! the value shown, which is how a conflict is settled.
//!
//! The [`Ctx`] of a write also notes what it deleted and where it wrote, so that the write
//! can tell afterwards whether it erased edits it had not seen ([`crate::lost`]).

use std::collections::{HashMap, HashSet};

use automerge::transaction::Transactable;
use automerge::{hydrate, ObjId, ObjType, Prop, ScalarValue, TextEncoding, ROOT};
use serde_json::{Map, Value};

use crate::doc::Deadline;
use crate::error::{Error, Result};
use crate::listdiff::{pair, Slot};
use crate::schema::CompiledSchema;
use crate::textdiff::text_splices;
use crate::value::{counter_sum, list_items, scalar_to_json, value_to_json};

/// A text write that deletes at least this many characters, and at least half of the text,
/// replaces the text object instead of deleting character by character.
const REWRITE_MIN_DELETED: usize = 20_000;

/// The text encoding of every Concord document: positions count Unicode code points.
pub(crate) const ENCODING: TextEncoding = TextEncoding::UnicodeCodePoint;

/// What a write isolated at an old version knows of the present (the document's current
/// state), gathered before it runs: what moved objects hold now.
#[derive(Debug, Default)]
pub(crate) struct Present {
    /// True if the write's base is older than the present; else the base is the present.
    pub(crate) stale: bool,
    /// Objects' present values; `None` for an object no longer visible (deleted).
    pub(crate) objects: HashMap<ObjId, Option<Value>>,
}

/// What one pass of a write saw and did, besides its operations.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Objects whose present value this pass needed and [`Present`] lacked: the write runs
    /// again once they are read.
    pub(crate) needs: Vec<ObjId>,
    /// Objects this write deleted, with their paths at the base.
    pub(crate) deleted: Vec<(ObjId, Vec<String>)>,
    /// Objects this write wrote into, with their paths at the base.
    pub(crate) touched: Vec<(ObjId, Vec<String>)>,
    /// Objects deleted only to be inserted elsewhere with their present value.
    pub(crate) moved: HashSet<ObjId>,
    /// The moved objects and their copies: `(old, new)`.
    pub(crate) moves: Vec<(ObjId, ObjId)>,
    /// Places where concurrent counters were folded into one. Automerge's patches follow
    /// only the winning counter, so a fold that leaves the winner's value as it was shows
    /// no patch, though the sum shown changed: the mirror reads these places again.
    pub(crate) folded: Vec<(ObjId, Prop)>,
    seen: HashSet<ObjId>,
}

/// The context of one pass of a write: the schema, the present, and the report.
pub(crate) struct Ctx<'a> {
    pub(crate) schema: &'a CompiledSchema,
    present: &'a Present,
    pub(crate) report: Report,
    /// When the edit must stop ([`crate::Document::set_deadline`]).
    deadline: Option<&'a Deadline>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        schema: &'a CompiledSchema,
        present: &'a Present,
        deadline: Option<&'a Deadline>,
    ) -> Self {
        Ctx {
            schema,
            present,
            report: Report::default(),
            deadline,
        }
    }

    /// Fails with [`Error::DeadlineExceeded`] once the deadline has passed: called for every
    /// operation an edit makes, so that no edit outlives its request.
    pub(crate) fn on_time(&self) -> Result<()> {
        match self.deadline {
            Some(deadline) if deadline.passed() => Err(Error::DeadlineExceeded),
            _ => Ok(()),
        }
    }

    /// Replaces concurrent counters at `prop` of `obj` with one holding `total`, and
    /// reports the place ([`Report::folded`]).
    pub(crate) fn fold_counters<T: Transactable>(
        &mut self,
        tx: &mut T,
        obj: &ObjId,
        prop: Prop,
        total: i64,
    ) -> Result<()> {
        tx.put(obj, prop.clone(), ScalarValue::counter(total))?;
        self.report.folded.push((obj.clone(), prop));
        Ok(())
    }

    /// Notes that the write puts an operation into `obj` (at `path`).
    pub(crate) fn touch(&mut self, obj: &ObjId, path: &[String]) {
        if self.report.seen.insert(obj.clone()) {
            self.report.touched.push((obj.clone(), path.to_vec()));
        }
    }

    /// Notes that the write deletes the value at `prop` of `obj`, if it is an object.
    fn deleting<T: Transactable>(&mut self, tx: &T, obj: &ObjId, prop: Prop, path: &[String]) {
        if let Ok(Some((automerge::Value::Object(_), id))) = tx.get(obj, prop) {
            self.report.deleted.push((id, path.to_vec()));
        }
    }

    /// Deletes the value at `prop` of `obj` (whose path is `obj_path`).
    pub(crate) fn delete<T: Transactable>(
        &mut self,
        tx: &mut T,
        obj: &ObjId,
        prop: Prop,
        obj_path: &[String],
    ) -> Result<()> {
        self.on_time()?;
        let mut path = obj_path.to_vec();
        path.push(prop_token(&prop));
        self.deleting(tx, obj, prop.clone(), &path);
        self.touch(obj, obj_path);
        tx.delete(obj, prop)?;
        Ok(())
    }

    /// The present value of a moved object; `None` if it is gone. In a first pass that has
    /// not read it yet, the value the writer sent stands in, and the write runs again.
    pub(crate) fn present_value(&mut self, id: &ObjId, sent: &Value) -> Option<Value> {
        if !self.present.stale {
            return Some(sent.clone());
        }
        match self.present.objects.get(id) {
            Some(value) => value.clone(),
            None => {
                self.report.needs.push(id.clone());
                Some(sent.clone())
            }
        }
    }
}

fn prop_token(prop: &Prop) -> String {
    match prop {
        Prop::Map(k) => k.clone(),
        Prop::Seq(i) => i.to_string(),
    }
}

/// Makes the root object equal to `new`, which must be a JSON object.
pub(crate) fn reconcile_root<T: Transactable>(tx: &mut T, cx: &mut Ctx, new: &Value) -> Result<()> {
    let Value::Object(map) = new else {
        return Err(Error::InvalidValue(
            "the document root must be a JSON object".into(),
        ));
    };
    reconcile_map(tx, cx, &ROOT, &mut Vec::new(), map)
}

/// How a write treats a place that holds concurrent values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Write only what differs from the value shown (a PUT).
    No,
    /// The write names this place: write it even if it shows the value already, so that
    /// the concurrent values become one.
    Yes,
}

/// Makes the value at `prop` of `obj` equal to `new`, touching as little as possible.
/// `path` is the pointer of that value, for schema matching.
pub(crate) fn reconcile_prop<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    obj: &ObjId,
    prop: Prop,
    path: &mut Vec<String>,
    new: &Value,
    settle: Settle,
) -> Result<()> {
    cx.on_time()?;
    let obj_path = path[..path.len().saturating_sub(1)].to_vec();
    let all = tx.get_all(obj, prop.clone())?;
    let counters = counter_sum(&all);
    if all.len() > 1 && (settle == Settle::Yes || counters.is_some()) {
        // Concurrent values: one write replaces them all. Concurrent counters are folded
        // into one holding their sum (plus this write's change), if it changes them.
        if let (Some(sum), Some(target)) = (counters, new.as_i64()) {
            if sum == target && settle == Settle::No {
                return Ok(());
            }
            cx.touch(obj, &obj_path);
            return cx.fold_counters(tx, obj, prop, target);
        }
        cx.deleting(tx, obj, prop.clone(), path);
        cx.touch(obj, &obj_path);
        return write_new(tx, cx, obj, prop, false, path, new);
    }
    // The value shown is the last of the concurrent ones (Automerge's `get`); concurrent
    // counters, which `get` would sum, returned above.
    let existing = all.into_iter().last().map(|(v, id)| (v.into_owned(), id));
    match (existing, new) {
        (Some((automerge::Value::Object(ObjType::Map | ObjType::Table), id)), Value::Object(m)) => {
            reconcile_map(tx, cx, &id, path, m)
        }
        (Some((automerge::Value::Object(ObjType::List), id)), Value::Array(items)) => {
            reconcile_list(tx, cx, &id, path, items)
        }
        (Some((automerge::Value::Object(ObjType::Text), id)), Value::String(s)) => {
            let old = tx.text(&id)?;
            let splices = text_splices(&old, s);
            let deleted: usize = splices.iter().map(|s| s.del).sum();
            if deleted >= REWRITE_MIN_DELETED && 2 * deleted >= old.chars().count() {
                // Most of a large text rewritten: a new text object, because Automerge
                // deletes characters one by one (about 7 µs each, against 0.5 µs to insert).
                // Concurrent edits of the old text are surfaced as lost edits.
                cx.deleting(tx, obj, prop.clone(), path);
                cx.touch(obj, &obj_path);
                let text = tx.put_object(obj, prop, ObjType::Text)?;
                tx.splice_text(&text, 0, 0, s)?;
                return Ok(());
            }
            if !splices.is_empty() {
                cx.touch(&id, path);
            }
            // From the end, so that each splice's position is still its old one.
            for s in splices.iter().rev() {
                tx.splice_text(&id, s.pos, s.del as isize, &s.insert)?;
            }
            Ok(())
        }
        (Some((automerge::Value::Scalar(current), _)), Value::Number(n))
            if current.is_counter() && n.as_i64().is_some() =>
        {
            let current = counter_value(&automerge::Value::Scalar(current));
            let target = n.as_i64().unwrap_or_default();
            let delta = target.checked_sub(current).ok_or_else(|| {
                Error::InvalidValue(format!("counter change at /{} overflows", path.join("/")))
            })?;
            if delta != 0 {
                cx.touch(obj, &obj_path);
                tx.increment(obj, prop, delta)?;
            }
            Ok(())
        }
        (Some((automerge::Value::Scalar(current), _)), new)
            if json_equal(&scalar_to_json(&current), new) =>
        {
            Ok(())
        }
        (existing, new) => {
            if existing.is_some() {
                cx.deleting(tx, obj, prop.clone(), path);
            }
            cx.touch(obj, &obj_path);
            write_new(tx, cx, obj, prop, false, path, new)
        }
    }
}

fn counter_value(v: &automerge::Value<'_>) -> i64 {
    match v {
        automerge::Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Counter(c) => i64::from(c),
            _ => 0,
        },
        _ => 0,
    }
}

fn reconcile_map<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    obj: &ObjId,
    path: &mut Vec<String>,
    new: &Map<String, Value>,
) -> Result<()> {
    let gone: Vec<String> = tx.keys(obj).filter(|k| !new.contains_key(k)).collect();
    for key in gone {
        cx.delete(tx, obj, Prop::Map(key), path)?;
    }
    for (key, value) in new {
        path.push(key.clone());
        let result = reconcile_prop(tx, cx, obj, Prop::Map(key.clone()), path, value, Settle::No);
        path.pop();
        result?;
    }
    Ok(())
}

/// Pairs the list's elements at the base with the new ones by identity, then: deletes the
/// old elements that were deleted or moved (from the end, so indexes hold), and walks the
/// new list, reconciling kept elements in place and inserting new and moved ones.
fn reconcile_list<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    list: &ObjId,
    path: &mut Vec<String>,
    new: &[Value],
) -> Result<()> {
    let elements = list_items(tx, list, None)?;
    let mut old = Vec::with_capacity(elements.len());
    let mut old_ids = Vec::with_capacity(elements.len());
    for (value, id) in elements {
        old.push(value_to_json(tx, &value, &id, None)?);
        old_ids.push(matches!(value, automerge::Value::Object(_)).then_some(id));
    }
    let slots = pair(&old, new, cx.schema.id_key(path));
    let mut keep = vec![false; old.len()];
    let mut moved_from: Vec<Option<usize>> = vec![None; new.len()];
    for (j, slot) in slots.iter().enumerate() {
        match slot {
            Slot::Keep(i) => keep[*i] = true,
            Slot::Moved(i) => moved_from[j] = Some(*i),
            Slot::New => {}
        }
    }
    for &i in moved_from.iter().flatten() {
        if let Some(id) = &old_ids[i] {
            cx.report.moved.insert(id.clone());
        }
    }
    if old.len() != new.len() || keep.iter().any(|k| !k) {
        cx.touch(list, path);
    }
    for i in (0..old.len()).rev().filter(|&i| !keep[i]) {
        let moved = old_ids[i]
            .as_ref()
            .is_some_and(|id| cx.report.moved.contains(id));
        if moved {
            tx.delete(list, i)?;
        } else {
            cx.delete(tx, list, Prop::Seq(i), path)?;
        }
    }
    let mut cursor = 0;
    for (slot, value) in slots.iter().zip(new) {
        path.push(cursor.to_string());
        let result = match slot {
            // Unchanged: nothing to do (and no lookup by index, which costs the list's length).
            Slot::Keep(i) if old[*i] == *value => Ok(()),
            Slot::Keep(_) => {
                reconcile_prop(tx, cx, list, Prop::Seq(cursor), path, value, Settle::No)
            }
            Slot::New => write_new(tx, cx, list, Prop::Seq(cursor), true, path, value),
            Slot::Moved(i) => match &old_ids[*i] {
                Some(id) => match cx.present_value(id, value) {
                    // What the element holds now, with this write's changes to it.
                    Some(now) => {
                        let carried = merge3(&old[*i], &now, value);
                        write_new(tx, cx, list, Prop::Seq(cursor), true, path, &carried).and_then(
                            |()| {
                                if let Some((_, copy)) = tx.get(list, cursor)? {
                                    cx.report.moves.push((id.clone(), copy));
                                }
                                Ok(())
                            },
                        )
                    }
                    // Deleted since the base: not brought back. If this write changed it
                    // too, the change is noted as made inside a deleted object, so that it
                    // is surfaced rather than lost silently.
                    None => {
                        if old[*i] != *value && cx.report.seen.insert(id.clone()) {
                            let mut at = path[..path.len() - 1].to_vec();
                            at.push(i.to_string());
                            cx.report.touched.push((id.clone(), at));
                        }
                        path.pop();
                        continue;
                    }
                },
                None => write_new(tx, cx, list, Prop::Seq(cursor), true, path, value),
            },
        };
        path.pop();
        result?;
        cursor += 1;
    }
    Ok(())
}

/// Three-way merge of JSON values: `theirs` (this write) changed `base`; `ours` is what the
/// document holds now. Members only one side changed take that side; where both changed a
/// member, objects merge recursively and otherwise this write's value stands.
pub(crate) fn merge3(base: &Value, ours: &Value, theirs: &Value) -> Value {
    if theirs == base {
        return ours.clone();
    }
    if ours == base {
        return theirs.clone();
    }
    match (base, ours, theirs) {
        (Value::Object(b), Value::Object(o), Value::Object(t)) => {
            let mut out = Map::new();
            let keys: Vec<&String> = t
                .keys()
                .chain(o.keys().filter(|k| !t.contains_key(*k)))
                .collect();
            for k in keys {
                let merged = match (b.get(k), o.get(k), t.get(k)) {
                    (Some(b), Some(o), Some(t)) => Some(merge3(b, o, t)),
                    // Deleted by this write; kept only if changed since.
                    (Some(b), Some(o), None) => (o != b).then(|| o.clone()),
                    // Deleted since; kept only if this write changed it.
                    (Some(b), None, Some(t)) => (t != b).then(|| t.clone()),
                    (_, Some(o), None) => Some(o.clone()),
                    (_, _, Some(t)) => Some(t.clone()),
                    (_, None, None) => None,
                };
                if let Some(v) = merged {
                    out.insert(k.clone(), v);
                }
            }
            Value::Object(out)
        }
        _ => theirs.clone(),
    }
}

/// Writes `value` fresh at `prop` of `obj` (inserting at a list index when `insert`).
pub(crate) fn write_new<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    obj: &ObjId,
    prop: Prop,
    insert: bool,
    path: &mut Vec<String>,
    value: &Value,
) -> Result<()> {
    cx.on_time()?;
    match to_hydrate(cx.schema, path, value)? {
        hydrate::Value::Scalar(s) => match (prop, insert) {
            (Prop::Seq(i), true) => tx.insert(obj, i, s)?,
            (prop, _) => tx.put(obj, prop, s)?,
        },
        object => {
            tx.batch_create_object(obj, prop, &object, insert)?;
        }
    }
    Ok(())
}

/// The Automerge form of a JSON value at `path`, following the schema for text and counters.
pub(crate) fn to_hydrate(
    schema: &CompiledSchema,
    path: &mut Vec<String>,
    value: &Value,
) -> Result<hydrate::Value> {
    Ok(match value {
        Value::Null => hydrate::Value::scalar(ScalarValue::Null),
        Value::Bool(b) => hydrate::Value::scalar(*b),
        Value::String(s) if schema.is_text(path) => hydrate::Value::text(ENCODING, s),
        Value::String(s) => hydrate::Value::scalar(s.as_str()),
        Value::Number(n) if schema.is_counter(path) => {
            let n = n.as_i64().ok_or_else(|| {
                Error::InvalidValue(format!(
                    "/{} is a counter and needs an integer, not {n}",
                    path.join("/")
                ))
            })?;
            hydrate::Value::scalar(ScalarValue::counter(n))
        }
        Value::Number(n) => hydrate::Value::scalar(number_scalar(n)),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                let v = to_hydrate(schema, path, item);
                path.pop();
                out.push(v?);
            }
            hydrate::Value::from(out)
        }
        Value::Object(map) => {
            let mut out = HashMap::with_capacity(map.len());
            for (k, item) in map {
                path.push(k.clone());
                let v = to_hydrate(schema, path, item);
                path.pop();
                out.insert(k.clone(), v?);
            }
            hydrate::Value::Map(hydrate::Map::from(out))
        }
    })
}

fn number_scalar(n: &serde_json::Number) -> ScalarValue {
    if let Some(i) = n.as_i64() {
        ScalarValue::Int(i)
    } else if let Some(u) = n.as_u64() {
        ScalarValue::Uint(u)
    } else {
        ScalarValue::F64(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// JSON equality where numbers compare by value (`1` equals `1.0`), as RFC 6902 `test` asks.
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64()
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::merge3;
    use serde_json::json;

    #[test]
    fn three_way_merge_table() {
        let cases = [
            // (base, ours = now, theirs = this write, expected)
            (
                json!({"a": 1}),
                json!({"a": 1, "done": true}),
                json!({"a": 2}),
                json!({"a": 2, "done": true}),
            ),
            (
                json!({"a": 1}),
                json!({"a": 3}),
                json!({"a": 1}),
                json!({"a": 3}),
            ),
            (
                json!({"a": 1, "b": 1}),
                json!({"a": 1, "b": 1}),
                json!({"a": 1}),
                json!({"a": 1}),
            ),
            (
                json!({"a": 1, "b": 1}),
                json!({"a": 1, "b": 2}),
                json!({"a": 1}),
                json!({"a": 1, "b": 2}),
            ),
            (
                json!({"a": {"x": 1}}),
                json!({"a": {"x": 1, "y": 2}}),
                json!({"a": {"x": 5}}),
                json!({"a": {"x": 5, "y": 2}}),
            ),
            (json!(1), json!(2), json!(3), json!(3)),
        ];
        for (base, ours, theirs, expected) in cases {
            assert_eq!(
                merge3(&base, &ours, &theirs),
                expected,
                "{base} {ours} {theirs}"
            );
        }
    }
}
