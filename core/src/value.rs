//! Reading Automerge state as JSON, and finding the conflicts a state holds.
//!
//! Text objects read as strings, counters as numbers, timestamps as milliseconds, bytes as
//! lowercase hex strings. Where concurrent writes left several values at one place, the one
//! Automerge picks deterministically is shown; [`conflicts`] lists them all.

use automerge::{Automerge, ChangeHash, ObjType, Prop, ReadDoc, ScalarValue, ROOT};
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};
use crate::pointer::Pointer;

/// JSON for one Automerge scalar.
pub(crate) fn scalar_to_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(n) | ScalarValue::Timestamp(n) => Value::from(*n),
        ScalarValue::Uint(n) => Value::from(*n),
        ScalarValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Bytes(b) => Value::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

/// JSON for the value found at a property: scalars directly, objects read recursively.
///
/// Reads go through `get`, `keys` and `text` rather than `hydrate`, because inside a
/// transaction isolated at an old version only those honour the isolation.
pub(crate) fn value_to_json<R: ReadDoc>(
    doc: &R,
    value: &automerge::Value<'_>,
    id: &automerge::ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<Value> {
    to_json_at_depth(doc, value, id, heads, 0)
}

/// How deep values may nest, the root object being level 0. A write that would nest
/// deeper is refused: answers wrap the value in two more levels, and JSON parsers commonly
/// stop at 128; raw Automerge changes could nest without bound, and reading them must not
/// exhaust the stack.
pub const MAX_DEPTH: usize = 120;

fn to_json_at_depth<R: ReadDoc>(
    doc: &R,
    value: &automerge::Value<'_>,
    id: &automerge::ObjId,
    heads: Option<&[ChangeHash]>,
    depth: usize,
) -> Result<Value> {
    if depth > MAX_DEPTH {
        return Err(Error::InvalidValue(format!(
            "objects nest deeper than {MAX_DEPTH} levels"
        )));
    }
    match value {
        automerge::Value::Scalar(s) => Ok(scalar_to_json(s)),
        automerge::Value::Object(ObjType::Text) => Ok(Value::String(match heads {
            Some(h) => doc.text_at(id, h)?,
            None => doc.text(id)?,
        })),
        automerge::Value::Object(ObjType::List) => {
            let elements = list_items(doc, id, heads)?;
            let mut items = Vec::with_capacity(elements.len());
            for (v, child) in elements {
                items.push(to_json_at_depth(doc, &v, &child, heads, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        automerge::Value::Object(ObjType::Map | ObjType::Table) => {
            let keys: Vec<String> = match heads {
                Some(h) => doc.keys_at(id, h).collect(),
                None => doc.keys(id).collect(),
            };
            let mut map = Map::with_capacity(keys.len());
            for key in keys {
                if let Some((v, child)) = get(doc, id, key.as_str(), heads)? {
                    map.insert(key, to_json_at_depth(doc, &v, &child, heads, depth + 1)?);
                }
            }
            Ok(Value::Object(map))
        }
    }
}

/// The whole root object as JSON.
pub(crate) fn root_to_json<R: ReadDoc>(doc: &R, heads: Option<&[ChangeHash]>) -> Result<Value> {
    value_to_json(doc, &automerge::Value::Object(ObjType::Map), &ROOT, heads)
}

/// Where a pointer leads: the object holding the last token, how to address it there, and
/// what is there now (if anything).
pub(crate) struct Place {
    /// The object that holds the value (a map or a list).
    pub(crate) parent: automerge::ObjId,
    /// The kind of that object.
    pub(crate) parent_type: ObjType,
    /// The last token of the pointer, as given.
    pub(crate) token: String,
}

/// Follows a pointer through maps and lists to the object holding its last token.
/// `path_text` is the pointer as the caller wrote it, for error messages.
pub(crate) fn locate<R: ReadDoc>(
    doc: &R,
    pointer: &Pointer,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<Place>> {
    let Some((parent_ptr, last)) = pointer.split_last() else {
        return Ok(None);
    };
    let parent = resolve_object(doc, &parent_ptr, heads, pointer)?;
    let parent_type = doc.object_type(&parent)?;
    Ok(Some(Place {
        parent,
        parent_type,
        token: last.to_owned(),
    }))
}

/// The object a pointer names; an error if it names nothing or a scalar.
pub(crate) fn resolve_object<R: ReadDoc>(
    doc: &R,
    pointer: &Pointer,
    heads: Option<&[ChangeHash]>,
    full: &Pointer,
) -> Result<automerge::ObjId> {
    let mut obj = ROOT;
    for token in pointer.tokens() {
        let obj_type = doc.object_type(&obj)?;
        let prop = prop_for(obj_type, token, len(doc, &obj, heads), full)?;
        match get(doc, &obj, prop, heads)? {
            Some((automerge::Value::Object(ObjType::Text), _)) => {
                return Err(Error::WrongType {
                    path: full.to_string(),
                    reason: "a text string has no children".into(),
                })
            }
            Some((automerge::Value::Object(_), id)) => obj = id,
            Some((automerge::Value::Scalar(_), _)) => {
                return Err(Error::WrongType {
                    path: full.to_string(),
                    reason: "a scalar value has no children".into(),
                })
            }
            None => {
                return Err(Error::PathNotFound {
                    path: full.to_string(),
                })
            }
        }
    }
    Ok(obj)
}

/// The property a token names in an object of `obj_type` with `len` elements (lists).
/// List tokens must be canonical decimal indexes below `len`.
pub(crate) fn prop_for(obj_type: ObjType, token: &str, len: usize, full: &Pointer) -> Result<Prop> {
    match obj_type {
        ObjType::Map | ObjType::Table => Ok(Prop::Map(token.to_owned())),
        ObjType::List => match parse_index(token) {
            Some(i) if i < len => Ok(Prop::Seq(i)),
            Some(_) => Err(Error::PathNotFound {
                path: full.to_string(),
            }),
            None => Err(Error::WrongType {
                path: full.to_string(),
                reason: format!("{token:?} is not a list index"),
            }),
        },
        ObjType::Text => Err(Error::WrongType {
            path: full.to_string(),
            reason: "a text string has no children".into(),
        }),
    }
}

/// A canonical array index: `0` or digits without a leading zero.
pub(crate) fn parse_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

/// `get` or `get_at`, as `heads` says. Where concurrent writes created one counter more
/// than once, the value is one counter holding their sum: each creation counted.
pub(crate) fn get<R: ReadDoc, P: Into<Prop>>(
    doc: &R,
    obj: &automerge::ObjId,
    prop: P,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<(automerge::Value<'static>, automerge::ObjId)>> {
    let prop = prop.into();
    let found = match heads {
        Some(h) => doc.get_at(obj, prop.clone(), h)?,
        None => doc.get(obj, prop.clone())?,
    };
    let Some((value, id)) = found else {
        return Ok(None);
    };
    if let automerge::Value::Scalar(s) = &value {
        if s.is_counter() {
            if let Some(sum) = counter_sum(&all_at(doc, obj, prop, heads)?) {
                return Ok(Some((
                    automerge::Value::Scalar(std::borrow::Cow::Owned(ScalarValue::counter(sum))),
                    id,
                )));
            }
        }
    }
    Ok(Some((value.into_owned(), id)))
}

/// The elements of a list (now or at `heads`), in one pass: looking elements up one index
/// at a time costs the square of the list's length at an old version. An element holding
/// concurrent values is read through [`get`], which adds up concurrent counters.
pub(crate) fn list_items<R: ReadDoc>(
    doc: &R,
    list: &automerge::ObjId,
    heads: Option<&[ChangeHash]>,
) -> Result<Vec<(automerge::Value<'static>, automerge::ObjId)>> {
    let range = match heads {
        Some(h) => doc.list_range_at(list, .., h),
        None => doc.list_range(list, ..),
    };
    let mut out = Vec::new();
    let mut conflicted = Vec::new();
    for item in range {
        if item.conflict {
            conflicted.push((out.len(), item.index));
        }
        let id = item.id();
        out.push((automerge::Value::from(item.value), id));
    }
    for (at, index) in conflicted {
        if let Some(found) = get(doc, list, index, heads)? {
            out[at] = found;
        }
    }
    Ok(out)
}

/// `get_all` or `get_all_at`, as `heads` says.
fn all_at<R: ReadDoc>(
    doc: &R,
    obj: &automerge::ObjId,
    prop: Prop,
    heads: Option<&[ChangeHash]>,
) -> Result<Vec<(automerge::Value<'static>, automerge::ObjId)>> {
    Ok(match heads {
        Some(h) => doc.get_all_at(obj, prop, h)?,
        None => doc.get_all(obj, prop)?,
    }
    .into_iter()
    .map(|(v, id)| (v.into_owned(), id))
    .collect())
}

/// The sum of concurrent values that are all counters (more than one); else `None`.
pub(crate) fn counter_sum(values: &[(automerge::Value<'_>, automerge::ObjId)]) -> Option<i64> {
    if values.len() < 2 {
        return None;
    }
    values
        .iter()
        .map(|(v, _)| match v {
            automerge::Value::Scalar(s) => match s.as_ref() {
                ScalarValue::Counter(c) => Some(i64::from(c)),
                _ => None,
            },
            _ => None,
        })
        .try_fold(0i64, |sum, n| n.map(|n| sum.saturating_add(n)))
}

/// `length` or `length_at`, as `heads` says.
pub(crate) fn len<R: ReadDoc>(
    doc: &R,
    obj: &automerge::ObjId,
    heads: Option<&[ChangeHash]>,
) -> usize {
    match heads {
        Some(h) => doc.length_at(obj, h),
        None => doc.length(obj),
    }
}

/// The JSON value at a pointer, or `None` if nothing is there.
pub(crate) fn read_pointer<R: ReadDoc>(
    doc: &R,
    pointer: &Pointer,
    heads: Option<&[ChangeHash]>,
) -> Result<Option<Value>> {
    let Some(place) = locate(doc, pointer, heads)? else {
        return root_to_json(doc, heads).map(Some);
    };
    let length = len(doc, &place.parent, heads);
    let prop = match prop_for(place.parent_type, &place.token, length, pointer) {
        Ok(prop) => prop,
        Err(Error::PathNotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    match get(doc, &place.parent, prop, heads)? {
        Some((value, id)) => value_to_json(doc, &value, &id, heads).map(Some),
        None => Ok(None),
    }
}

/// One place where concurrent writes left more than one value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conflict {
    /// JSON Pointer of the place.
    pub path: String,
    /// Every value, the one shown first.
    pub values: Vec<ConflictValue>,
}

/// One of the values held at a conflicting place.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictValue {
    /// The value.
    pub value: Value,
    /// The agent whose change wrote it, if recorded.
    pub agent: Option<String>,
    /// The hash of that change.
    pub change: Option<String>,
    /// True for the value reads show.
    pub shown: bool,
}

/// Every conflict in the document (at `heads`, or now), depth first.
pub(crate) fn conflicts(doc: &Automerge, heads: Option<&[ChangeHash]>) -> Result<Vec<Conflict>> {
    let mut out = Vec::new();
    walk_conflicts(doc, &ROOT, &Pointer::root(), heads, &mut out)?;
    Ok(out)
}

fn walk_conflicts(
    doc: &Automerge,
    obj: &automerge::ObjId,
    path: &Pointer,
    heads: Option<&[ChangeHash]>,
    out: &mut Vec<Conflict>,
) -> Result<()> {
    if path.tokens().len() > MAX_DEPTH {
        return Err(Error::InvalidValue(format!(
            "objects nest deeper than {MAX_DEPTH} levels"
        )));
    }
    let props: Vec<Prop> = match doc.object_type(obj)? {
        ObjType::Map | ObjType::Table => match heads {
            Some(h) => doc.keys_at(obj, h).map(Prop::Map).collect(),
            None => doc.keys(obj).map(Prop::Map).collect(),
        },
        ObjType::List => (0..len(doc, obj, heads)).map(Prop::Seq).collect(),
        ObjType::Text => return Ok(()),
    };
    for prop in props {
        let child = path.child(match &prop {
            Prop::Map(k) => k.clone(),
            Prop::Seq(i) => i.to_string(),
        });
        let all = match heads {
            Some(h) => doc.get_all_at(obj, prop.clone(), h)?,
            None => doc.get_all(obj, prop.clone())?,
        };
        // Concurrent counters are no conflict: they add up (see `get`).
        if all.len() > 1 && counter_sum(&all).is_none() {
            let mut values = Vec::with_capacity(all.len());
            // Automerge shows the value with the greatest op id: the last one.
            for (i, (value, id)) in all.iter().enumerate().rev() {
                let change = doc.hash_for_opid(id);
                let agent = change
                    .and_then(|h| doc.get_change_meta_by_hash(&h))
                    .and_then(|m| crate::note::decode_note(m.message.as_deref()).0);
                values.push(ConflictValue {
                    value: value_to_json(doc, value, id, heads)?,
                    agent,
                    change: change.map(|h| h.to_string()),
                    shown: i + 1 == all.len(),
                });
            }
            out.push(Conflict {
                path: child.to_string(),
                values,
            });
        }
        if let Some((automerge::Value::Object(_), id)) = all.last() {
            walk_conflicts(doc, id, &child, heads, out)?;
        }
    }
    Ok(())
}
