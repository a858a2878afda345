//! Turning a whole new JSON value into the fewest Automerge operations.
//!
//! A writer who read version V and sends back a whole new value means "make it look like
//! this". Concord diffs V's state against the new value and records only the difference, in
//! a transaction isolated at V, so that everything written since V survives the merge:
//! maps are diffed by key, lists by a Myers diff (never `update_object`, which deletes from
//! the front of a shrinking list), collaborative text by `update_text`, counters by the
//! difference. A changed scalar is a `put`, which conflicts with (and keeps) a concurrent
//! `put` of the same place.

use std::collections::HashMap;

use automerge::transaction::Transactable;
use automerge::{hydrate, ObjId, ObjType, Prop, ScalarValue, TextEncoding, ROOT};
use serde_json::{Map, Value};
use similar::{capture_diff_slices, Algorithm, DiffOp};

use crate::error::{Error, Result};
use crate::schema::CompiledSchema;
use crate::value::{scalar_to_json, value_to_json};

/// The text encoding of every Concord document: positions count Unicode code points.
pub(crate) const ENCODING: TextEncoding = TextEncoding::UnicodeCodePoint;

/// Makes the root object equal to `new`, which must be a JSON object.
pub(crate) fn reconcile_root<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    new: &Value,
) -> Result<()> {
    let Value::Object(map) = new else {
        return Err(Error::InvalidValue(
            "the document root must be a JSON object".into(),
        ));
    };
    reconcile_map(tx, schema, &ROOT, &mut Vec::new(), map)
}

/// Makes the value at `prop` of `obj` equal to `new`, touching as little as possible.
/// `path` is the pointer of that value, for schema matching.
pub(crate) fn reconcile_prop<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    obj: &ObjId,
    prop: Prop,
    path: &mut Vec<String>,
    new: &Value,
) -> Result<()> {
    let existing = tx
        .get(obj, prop.clone())?
        .map(|(v, id)| (v.into_owned(), id));
    match (existing, new) {
        (Some((automerge::Value::Object(ObjType::Map | ObjType::Table), id)), Value::Object(m)) => {
            reconcile_map(tx, schema, &id, path, m)
        }
        (Some((automerge::Value::Object(ObjType::List), id)), Value::Array(items)) => {
            reconcile_list(tx, schema, &id, path, items)
        }
        (Some((automerge::Value::Object(ObjType::Text), id)), Value::String(s)) => {
            Ok(tx.update_text(&id, s)?)
        }
        (Some((automerge::Value::Scalar(current), _)), Value::Number(n))
            if current.is_counter() && n.as_i64().is_some() =>
        {
            let current = match current.as_ref() {
                ScalarValue::Counter(c) => i64::from(c),
                _ => unreachable!("checked is_counter"),
            };
            let target = n.as_i64().unwrap_or_default();
            let delta = target.checked_sub(current).ok_or_else(|| {
                Error::InvalidValue(format!("counter change at /{} overflows", path.join("/")))
            })?;
            if delta != 0 {
                tx.increment(obj, prop, delta)?;
            }
            Ok(())
        }
        (Some((automerge::Value::Scalar(current), _)), new)
            if json_equal(&scalar_to_json(&current), new) =>
        {
            Ok(())
        }
        (_, new) => write_new(tx, schema, obj, prop, false, path, new),
    }
}

fn reconcile_map<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    obj: &ObjId,
    path: &mut Vec<String>,
    new: &Map<String, Value>,
) -> Result<()> {
    let gone: Vec<String> = tx.keys(obj).filter(|k| !new.contains_key(k)).collect();
    for key in gone {
        tx.delete(obj, key)?;
    }
    for (key, value) in new {
        path.push(key.clone());
        let result = reconcile_prop(tx, schema, obj, Prop::Map(key.clone()), path, value);
        path.pop();
        result?;
    }
    Ok(())
}

/// Diffs the list's current elements against `new` (Myers, on whole-element equality) and
/// applies the edit script: equal runs are left alone, a deleted run next to an inserted run
/// is reconciled element by element (so an edited object keeps its identity), the rest is
/// deleted or inserted.
fn reconcile_list<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    list: &ObjId,
    path: &mut Vec<String>,
    new: &[Value],
) -> Result<()> {
    let old: Vec<Value> =
        match value_to_json(tx, &automerge::Value::Object(ObjType::List), list, None)? {
            Value::Array(items) => items,
            _ => Vec::new(),
        };
    let mut interned: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &Value| {
        let next = interned.len() as u32;
        *interned.entry(v.to_string()).or_insert(next)
    };
    let old_ids: Vec<u32> = old.iter().map(&mut intern).collect();
    let new_ids: Vec<u32> = new.iter().map(&mut intern).collect();
    let ops = capture_diff_slices(Algorithm::Myers, &old_ids, &new_ids);

    let mut cursor = 0usize;
    let mut i = 0;
    while i < ops.len() {
        match ops[i] {
            DiffOp::Equal { len, .. } => cursor += len,
            DiffOp::Delete { old_len, .. } => {
                if let Some(DiffOp::Insert {
                    new_index, new_len, ..
                }) = ops.get(i + 1)
                {
                    replace_run(
                        tx,
                        schema,
                        list,
                        path,
                        &mut cursor,
                        old_len,
                        &new[*new_index..*new_index + *new_len],
                    )?;
                    i += 1;
                } else {
                    for _ in 0..old_len {
                        tx.delete(list, cursor)?;
                    }
                }
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => replace_run(
                tx,
                schema,
                list,
                path,
                &mut cursor,
                0,
                &new[new_index..new_index + new_len],
            )?,
            DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => replace_run(
                tx,
                schema,
                list,
                path,
                &mut cursor,
                old_len,
                &new[new_index..new_index + new_len],
            )?,
        }
        i += 1;
    }
    Ok(())
}

/// Replaces `old_len` elements at `cursor` by `new`: pairs are reconciled in place, the
/// surplus deleted or inserted. Leaves `cursor` after the last new element.
fn replace_run<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    list: &ObjId,
    path: &mut Vec<String>,
    cursor: &mut usize,
    old_len: usize,
    new: &[Value],
) -> Result<()> {
    let paired = old_len.min(new.len());
    for value in &new[..paired] {
        path.push(cursor.to_string());
        let result = reconcile_prop(tx, schema, list, Prop::Seq(*cursor), path, value);
        path.pop();
        result?;
        *cursor += 1;
    }
    for _ in paired..old_len {
        tx.delete(list, *cursor)?;
    }
    for value in &new[paired..] {
        path.push(cursor.to_string());
        let result = write_new(tx, schema, list, Prop::Seq(*cursor), true, path, value);
        path.pop();
        result?;
        *cursor += 1;
    }
    Ok(())
}

/// Writes `value` fresh at `prop` of `obj` (inserting at a list index when `insert`).
pub(crate) fn write_new<T: Transactable>(
    tx: &mut T,
    schema: &CompiledSchema,
    obj: &ObjId,
    prop: Prop,
    insert: bool,
    path: &mut Vec<String>,
    value: &Value,
) -> Result<()> {
    match to_hydrate(schema, path, value)? {
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
