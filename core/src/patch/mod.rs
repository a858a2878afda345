//! RFC 6902 JSON Patch, with two extension operations, and RFC 7396 merge patch.
//!
//! A patch is applied inside one transaction at the writer's base version, so its paths and
//! list indexes mean what they meant at that version, and it applies whole or not at all.
//! Extensions: `{"op":"increment","path","value":n}` adds to a counter (creating it at a
//! missing map key), and `{"op":"splice","path","pos","del","insert"}` edits collaborative
//! text at a position counted in Unicode code points.
//!
//! As RFC 6902 §4 asks, members an operation does not define are ignored. An operation that
//! names a place (`add`, `replace`, a merge patch member) writes it even when it shows that
//! value already: that is how a conflict of concurrent values is settled. `move` carries the
//! value the moved object holds now, edits made since the base included, and does not bring
//! back an object deleted since the base.
//!
//! Operations are parsed and applied here, one by one; `runs.rs` applies a run of them side
//! by side in one list as one splice.

use automerge::transaction::Transactable;
use automerge::{ObjType, Prop, ReadDoc, ScalarValue};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pointer::Pointer;
use crate::reconcile::{
    json_equal, merge3, reconcile_prop, reconcile_root, write_new, Ctx, Settle,
};
use crate::value::{counter_sum, get, len, locate, parse_index, prop_for, read_pointer, Place};

mod runs;

/// One JSON Patch operation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum PatchOp {
    /// Adds a member, inserts a list element (`-` appends), or replaces the root.
    Add {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
        /// What.
        value: Value,
    },
    /// Removes a member or list element, which must exist (not the root).
    Remove {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)+$"))]
        path: String,
    },
    /// Replaces a value, which must exist; the change is reconciled, not rewritten.
    Replace {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
        /// The new value.
        value: Value,
    },
    /// Removes the value at `from` and adds it at `path`.
    Move {
        /// Where the value is.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)+$"))]
        from: String,
        /// Where it goes.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
    },
    /// Adds a copy of the value at `from` at `path`.
    Copy {
        /// Where the value is.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)+$"))]
        from: String,
        /// Where the copy goes.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
    },
    /// Fails the whole patch unless the value at `path` equals `value`.
    Test {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
        /// The expected value.
        value: Value,
    },
    /// Adds `value` to the counter at `path`.
    Increment {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
        /// How much (may be negative).
        #[serde(deserialize_with = "whole")]
        #[cfg_attr(
            feature = "openapi",
            schema(minimum = -9_007_199_254_740_991_i64, maximum = 9_007_199_254_740_991_i64)
        )]
        value: i64,
    },
    /// Deletes `del` characters at `pos` of the text at `path` and inserts `insert` there.
    Splice {
        /// Where.
        #[cfg_attr(feature = "openapi", schema(pattern = "^(/([^~/]|~[01])*)*$"))]
        path: String,
        /// Position, in Unicode code points.
        #[serde(deserialize_with = "whole")]
        #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_u64))]
        pos: usize,
        /// How many characters to delete.
        #[serde(default, deserialize_with = "whole")]
        #[cfg_attr(feature = "openapi", schema(maximum = 9_007_199_254_740_991_u64))]
        del: usize,
        /// What to insert.
        #[serde(default)]
        insert: String,
    },
}

/// The largest whole number every JSON reader holds exactly (2^53 - 1, JavaScript's
/// `Number.MAX_SAFE_INTEGER`): the bound of counts and positions in a patch.
const MAX_SAFE: i128 = 9_007_199_254_740_991;

/// A whole number, written either way JSON allows (`3` or `3.0`), at most [`MAX_SAFE`] in
/// size and in range for `T`.
fn whole<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::de::Error as _;
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = match (number.as_i64(), number.as_u64(), number.as_f64()) {
        (Some(i), _, _) => Some(i128::from(i)),
        (_, Some(u), _) => Some(i128::from(u)),
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() <= MAX_SAFE as f64 => Some(f as i128),
        _ => None,
    };
    whole
        .filter(|w| w.abs() <= MAX_SAFE)
        .and_then(|w| T::try_from(w).ok())
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number in range")))
}

/// The most operations one JSON Patch may hold. A write runs to its end once begun (an
/// Automerge transaction cannot be cut short), and inserts into one list cost more the more
/// of them a patch makes: this bounds the time one request can take. Larger edits are sent
/// as several patches, or as one whole value.
pub const MAX_PATCH_OPS: usize = 10_000;

/// Parses a JSON Patch document: an array of operations.
pub fn parse_patch(doc: &Value) -> Result<Vec<PatchOp>> {
    let Value::Array(ops) = doc else {
        return Err(Error::InvalidPatch(
            "a JSON Patch is an array of operations".into(),
        ));
    };
    if ops.len() > MAX_PATCH_OPS {
        return Err(Error::PatchTooLarge {
            ops: ops.len(),
            max: MAX_PATCH_OPS,
        });
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            PatchOp::deserialize(op).map_err(|e| Error::InvalidPatch(format!("operation {i}: {e}")))
        })
        .collect()
}

/// Applies every operation in order; the caller rolls back on error. A run of operations
/// side by side in one list is one splice (`runs.rs`).
pub(crate) fn apply_patch<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    ops: &[PatchOp],
) -> Result<()> {
    let mut rest = ops;
    while let Some(op) = rest.first() {
        cx.on_time()?;
        let taken = match runs::apply_run(tx, cx, rest)? {
            0 => {
                apply_op(tx, cx, op)?;
                1
            }
            taken => taken,
        };
        rest = &rest[taken..];
    }
    Ok(())
}

fn apply_op<T: Transactable>(tx: &mut T, cx: &mut Ctx, op: &PatchOp) -> Result<()> {
    match op {
        PatchOp::Add { path, value } => add(tx, cx, &Pointer::parse(path)?, value),
        PatchOp::Remove { path } => remove(tx, cx, &Pointer::parse(path)?),
        PatchOp::Replace { path, value } => {
            let pointer = Pointer::parse(path)?;
            let Some(place) = locate(tx, &pointer, None)? else {
                return reconcile_root(tx, cx, value);
            };
            let prop = existing_prop(tx, &place, &pointer)?;
            reconcile_prop(
                tx,
                cx,
                &place.parent,
                prop,
                &mut pointer.tokens().to_vec(),
                value,
                Settle::Yes,
            )
        }
        PatchOp::Move { from, path } => {
            let (from, to) = (Pointer::parse(from)?, Pointer::parse(path)?);
            let value = must_read(tx, &from)?;
            if from == to {
                return Ok(());
            }
            if to.starts_with(&from) {
                return Err(Error::InvalidPatch(format!(
                    "cannot move {from} into its own child {to}"
                )));
            }
            // An object moves with what it holds now; one deleted since the base stays so.
            let object = object_at(tx, &from)?;
            if let Some(id) = &object {
                cx.report.moved.insert(id.clone());
            }
            remove(tx, cx, &from)?;
            let carried = match &object {
                Some(id) => match cx.present_value(id, &value) {
                    Some(now) => merge3(&value, &now, &value),
                    None => return Ok(()),
                },
                None => value,
            };
            add(tx, cx, &to, &carried)?;
            // Note the copy, so that a concurrent delete of the original deletes it too. (A
            // move to `-` names no index; its copy is found at the end of the list.)
            let at = match to.split_last() {
                Some((parent, "-")) => {
                    let last = read_pointer(tx, &parent, None)?
                        .and_then(|v| v.as_array().map(Vec::len))
                        .unwrap_or(0);
                    parent.child(last.saturating_sub(1).to_string())
                }
                _ => to,
            };
            if let (Some(old), Ok(Some(copy))) = (object, object_at(tx, &at)) {
                cx.report.moves.push((old, copy));
            }
            Ok(())
        }
        PatchOp::Copy { from, path } => {
            let value = must_read(tx, &Pointer::parse(from)?)?;
            add(tx, cx, &Pointer::parse(path)?, &value)
        }
        PatchOp::Test { path, value } => {
            let pointer = Pointer::parse(path)?;
            match read_pointer(tx, &pointer, None)? {
                Some(current) if json_equal(&current, value) => Ok(()),
                _ => Err(Error::TestFailed { path: path.clone() }),
            }
        }
        PatchOp::Increment { path, value } => increment(tx, cx, &Pointer::parse(path)?, *value),
        PatchOp::Splice {
            path,
            pos,
            del,
            insert,
        } => splice(tx, cx, &Pointer::parse(path)?, *pos, *del, insert),
    }
}

/// The object at `pointer`, if the value there is one.
fn object_at<T: ReadDoc>(tx: &T, pointer: &Pointer) -> Result<Option<automerge::ObjId>> {
    let Some(place) = locate(tx, pointer, None)? else {
        return Ok(None);
    };
    let prop = existing_prop(tx, &place, pointer)?;
    Ok(match get(tx, &place.parent, prop, None)? {
        Some((automerge::Value::Object(_), id)) => Some(id),
        _ => None,
    })
}

fn must_read<T: ReadDoc>(tx: &T, pointer: &Pointer) -> Result<Value> {
    read_pointer(tx, pointer, None)?.ok_or_else(|| Error::PathNotFound {
        path: pointer.to_string(),
    })
}

/// The property of an existing value at `place`; `PathNotFound` if there is none.
fn existing_prop<T: ReadDoc>(tx: &T, place: &Place, pointer: &Pointer) -> Result<Prop> {
    let length = len(tx, &place.parent, None);
    let prop = prop_for(place.parent_type, &place.token, length, pointer)?;
    if get(tx, &place.parent, prop.clone(), None)?.is_none() {
        return Err(Error::PathNotFound {
            path: pointer.to_string(),
        });
    }
    Ok(prop)
}

fn add<T: Transactable>(tx: &mut T, cx: &mut Ctx, pointer: &Pointer, value: &Value) -> Result<()> {
    let Some(place) = locate(tx, pointer, None)? else {
        return reconcile_root(tx, cx, value);
    };
    let mut path = pointer.tokens().to_vec();
    match place.parent_type {
        ObjType::Map | ObjType::Table => reconcile_prop(
            tx,
            cx,
            &place.parent,
            Prop::Map(place.token.clone()),
            &mut path,
            value,
            Settle::Yes,
        ),
        ObjType::List => {
            let length = len(tx, &place.parent, None);
            let index = if place.token == "-" {
                length
            } else {
                match parse_index(&place.token) {
                    Some(i) if i <= length => i,
                    Some(_) => {
                        return Err(Error::PathNotFound {
                            path: pointer.to_string(),
                        })
                    }
                    None => {
                        return Err(Error::WrongType {
                            path: pointer.to_string(),
                            reason: format!("{:?} is not a list index", place.token),
                        })
                    }
                }
            };
            if let Some(last) = path.last_mut() {
                *last = index.to_string();
            }
            write_new(
                tx,
                cx,
                &place.parent,
                Prop::Seq(index),
                true,
                &mut path,
                value,
            )
        }
        ObjType::Text => Err(Error::WrongType {
            path: pointer.to_string(),
            reason: "a text string has no children; use the splice operation".into(),
        }),
    }
}

fn remove<T: Transactable>(tx: &mut T, cx: &mut Ctx, pointer: &Pointer) -> Result<()> {
    let Some(place) = locate(tx, pointer, None)? else {
        return Err(Error::InvalidPatch(
            "cannot remove the document root".into(),
        ));
    };
    let prop = existing_prop(tx, &place, pointer)?;
    let parent_path = &pointer.tokens()[..pointer.tokens().len() - 1];
    cx.delete(tx, &place.parent, prop, parent_path)
}

fn increment<T: Transactable>(tx: &mut T, cx: &mut Ctx, pointer: &Pointer, by: i64) -> Result<()> {
    let Some(place) = locate(tx, pointer, None)? else {
        return Err(not_counter(pointer, "the document root"));
    };
    let length = len(tx, &place.parent, None);
    let prop = prop_for(place.parent_type, &place.token, length, pointer)?;
    cx.touch(
        &place.parent,
        &pointer.tokens()[..pointer.tokens().len() - 1],
    );
    let all = tx.get_all(&place.parent, prop.clone())?;
    if let Some(sum) = counter_sum(&all) {
        // Concurrent creations of one counter: fold them into one holding the new sum.
        let total = sum
            .checked_add(by)
            .ok_or_else(|| Error::InvalidValue(format!("counter at {pointer} overflows")))?;
        return cx.fold_counters(tx, &place.parent, prop, total);
    }
    match all.into_iter().last() {
        Some((automerge::Value::Scalar(s), _)) if s.is_counter() => {
            tx.increment(&place.parent, prop, by)?;
        }
        None => tx.put(&place.parent, prop, ScalarValue::counter(by))?,
        Some((automerge::Value::Scalar(s), _)) if s.is_int() || s.is_uint() || s.is_f64() => {
            return Err(not_counter(
                pointer,
                "a plain number (declare the path in the document's counters)",
            ))
        }
        Some(_) => return Err(not_counter(pointer, "not a number")),
    }
    Ok(())
}

fn not_counter(pointer: &Pointer, found: &str) -> Error {
    Error::WrongType {
        path: pointer.to_string(),
        reason: format!("increment needs a counter, found {found}"),
    }
}

fn splice<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    pointer: &Pointer,
    pos: usize,
    del: usize,
    insert: &str,
) -> Result<()> {
    let wrong = |found: &str| Error::WrongType {
        path: pointer.to_string(),
        reason: format!("splice needs collaborative text, found {found}"),
    };
    let Some(place) = locate(tx, pointer, None)? else {
        return Err(wrong("the document root"));
    };
    let prop = existing_prop(tx, &place, pointer)?;
    match get(tx, &place.parent, prop, None)? {
        Some((automerge::Value::Object(ObjType::Text), text)) => {
            let length = tx.length(&text);
            if pos > length || del > length - pos {
                return Err(Error::WrongType {
                    path: pointer.to_string(),
                    reason: format!(
                        "splice at {pos} deleting {del} is outside the text's {length} characters"
                    ),
                });
            }
            cx.touch(&text, pointer.tokens());
            tx.splice_text(&text, pos, del as isize, insert)?;
            Ok(())
        }
        Some((automerge::Value::Scalar(s), _)) if s.is_str() => Err(wrong(
            "an atomic string (declare the path in the document's text patterns)",
        )),
        _ => Err(wrong("another kind of value")),
    }
}

/// Applies an RFC 7396 merge patch to the root: `null` deletes, objects merge recursively,
/// anything else replaces (reconciled, so text and lists merge as a PUT would).
pub(crate) fn apply_merge_patch<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    patch: &Value,
) -> Result<()> {
    let Value::Object(_) = patch else {
        return Err(Error::InvalidValue(
            "a merge patch for a document must be a JSON object (the root stays an object)".into(),
        ));
    };
    merge_into(tx, cx, &automerge::ROOT, &mut Vec::new(), patch)
}

fn merge_into<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    obj: &automerge::ObjId,
    path: &mut Vec<String>,
    patch: &Value,
) -> Result<()> {
    let Value::Object(members) = patch else {
        return Ok(());
    };
    for (key, value) in members {
        let all = tx.get_all(obj, key.as_str())?;
        let conflicted = all.len() > 1;
        // The value shown: the last of the concurrent ones, concurrent counters summed.
        let existing = match counter_sum(&all) {
            Some(sum) => Some((
                automerge::Value::Scalar(std::borrow::Cow::Owned(ScalarValue::counter(sum))),
                all[0].1.clone(),
            )),
            None => all.into_iter().last().map(|(v, id)| (v.into_owned(), id)),
        };
        let result = match (value, existing) {
            (Value::Null, Some(_)) => cx.delete(tx, obj, Prop::Map(key.clone()), path),
            (Value::Null, None) => Ok(()),
            // A member that names concurrent objects settles them: the one shown, merged.
            (
                Value::Object(_),
                Some((automerge::Value::Object(ObjType::Map | ObjType::Table), id)),
            ) if !conflicted => {
                path.push(key.clone());
                let r = merge_into(tx, cx, &id, path, value);
                path.pop();
                r
            }
            (value, existing) => {
                let shown = match existing {
                    Some((v, id)) if conflicted && value.is_object() => {
                        Some(crate::value::value_to_json(tx, &v, &id, None)?)
                    }
                    _ => None,
                };
                let target = match shown {
                    Some(mut shown) => {
                        json_merge(&mut shown, value);
                        shown
                    }
                    None => strip_nulls(value),
                };
                path.push(key.clone());
                let r = reconcile_prop(
                    tx,
                    cx,
                    obj,
                    Prop::Map(key.clone()),
                    path,
                    &target,
                    Settle::Yes,
                );
                path.pop();
                r
            }
        };
        result?;
    }
    Ok(())
}

/// RFC 7396 applied to a JSON value.
fn json_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    json_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (target, patch) => *target = strip_nulls(patch),
    }
}

/// A merge patch's object applied to nothing: its `null` members mean "absent".
fn strip_nulls(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
