//! Runs of JSON Patch operations side by side in one list, applied as one Automerge splice:
//! inserts one after another (`/items/-` again and again, `/items/4`, `/items/5`, …, or
//! `/items/0` again and again, each before the last) and removes at one index
//! (`/items/0` again and again). Each operation on its own looks its place up again, which
//! in a transaction isolated at an old version walks the list, so a stale patch of many
//! such operations would cost the square of its length.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ScalarValue};

use super::{apply_op, PatchOp};
use crate::error::Result;
use crate::pointer::Pointer;
use crate::reconcile::{to_hydrate, Ctx};
use crate::value::{len, parse_index, resolve_object};

/// Applies the run of two or more operations that `ops` begins with, if it begins with
/// one: as one splice where the list has their places, else one by one (which says what
/// is wrong). How many operations it took: 0 if `ops` does not begin with a run.
pub(super) fn apply_run<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    ops: &[PatchOp],
) -> Result<usize> {
    let (taken, spliced) = match ops.first() {
        Some(PatchOp::Add { .. }) => match insert_run(ops) {
            Some(run) if run.len > 1 => (run.len, splice_inserts(tx, cx, &run, &ops[..run.len])?),
            _ => return Ok(0),
        },
        Some(PatchOp::Remove { .. }) => match remove_run(ops) {
            Some(run) if run.len > 1 => (run.len, splice_removes(tx, cx, &run)?),
            _ => return Ok(0),
        },
        _ => return Ok(0),
    };
    if !spliced {
        for op in &ops[..taken] {
            cx.on_time()?;
            apply_op(tx, cx, op)?;
        }
    }
    Ok(taken)
}

/// The parent an operation's path names and the list position in it: an index, or `None`
/// for `-`. `None` if the last token is neither.
fn list_place(path: &str) -> Option<(Pointer, Option<usize>)> {
    let pointer = Pointer::parse(path).ok()?;
    let (parent, token) = pointer.split_last()?;
    let index = match token {
        "-" => None,
        token => Some(parse_index(token)?),
    };
    Some((parent, index))
}

/// The list `parent` names and its length, if it names a list.
fn list_at<T: Transactable>(tx: &T, parent: &Pointer) -> Result<Option<(ObjId, usize)>> {
    let Ok(list) = resolve_object(tx, parent, None, parent) else {
        return Ok(None);
    };
    if tx.object_type(&list)? != ObjType::List {
        return Ok(None);
    }
    let length = len(tx, &list, None);
    Ok(Some((list, length)))
}

/// `add`s at the front of a patch that insert side by side into one parent.
struct InsertRun {
    /// The parent, as the pointers name it.
    parent: Pointer,
    /// The first index, or `None` for appends (`-`).
    first: Option<usize>,
    /// How many operations.
    len: usize,
    /// True if every operation names the first index: each goes before the one before it,
    /// so the run's values land in reverse order.
    reversed: bool,
}

/// The longest run of side-by-side inserts that `ops` begins with, if it begins with an
/// `add` that names a list position.
fn insert_run(ops: &[PatchOp]) -> Option<InsertRun> {
    let place = |op: &PatchOp| match op {
        PatchOp::Add { path, .. } => list_place(path),
        _ => None,
    };
    let (parent, first) = ops.first().and_then(place)?;
    // Inserts at one index (`/items/0`, `/items/0`, …) rather than one after another.
    let reversed = first.is_some()
        && ops
            .get(1)
            .and_then(place)
            .is_some_and(|(p, index)| p == parent && index == first);
    let step = usize::from(!reversed);
    let len = 1 + ops[1..]
        .iter()
        .enumerate()
        .take_while(|(k, op)| {
            place(op)
                .is_some_and(|(p, index)| p == parent && index == first.map(|i| i + step * (k + 1)))
        })
        .count();
    Some(InsertRun {
        parent,
        first,
        len,
        reversed,
    })
}

/// Inserts a run's values with one splice; `Ok(false)` if the parent is not a list that
/// has the run's first position.
fn splice_inserts<T: Transactable>(
    tx: &mut T,
    cx: &mut Ctx,
    run: &InsertRun,
    ops: &[PatchOp],
) -> Result<bool> {
    let Some((list, length)) = list_at(tx, &run.parent)? else {
        return Ok(false);
    };
    let index = match run.first {
        None => length,
        Some(i) if i <= length => i,
        Some(_) => return Ok(false),
    };
    let mut path = run.parent.tokens().to_vec();
    let mut values = Vec::with_capacity(ops.len());
    for (k, op) in ops.iter().enumerate() {
        let PatchOp::Add { value, .. } = op else {
            unreachable!("a run holds only adds");
        };
        // The index the operation names, as its own insert would see it.
        let at = if run.reversed { index } else { index + k };
        path.push(at.to_string());
        let value = to_hydrate(cx.schema, &mut path, value);
        path.pop();
        values.push(value?);
    }
    if run.reversed {
        values.reverse();
    }
    tx.splice(&list, index, 0, values)?;
    Ok(true)
}

/// `remove`s at the front of a patch that all name one index of one parent.
struct RemoveRun {
    /// The parent, as the pointers name it.
    parent: Pointer,
    /// The index.
    index: usize,
    /// How many operations.
    len: usize,
}

/// The longest run of removes at one index that `ops` begins with, if it begins with a
/// `remove` that names a list index.
fn remove_run(ops: &[PatchOp]) -> Option<RemoveRun> {
    let place = |op: &PatchOp| match op {
        PatchOp::Remove { path } => match list_place(path)? {
            (parent, Some(index)) => Some((parent, index)),
            (_, None) => None,
        },
        _ => None,
    };
    let (parent, index) = ops.first().and_then(place)?;
    let len = 1 + ops[1..]
        .iter()
        .take_while(|op| place(op).is_some_and(|(p, i)| p == parent && i == index))
        .count();
    Some(RemoveRun { parent, index, len })
}

/// Deletes a run's elements with one splice, noting each deleted object as its own
/// `remove` would; `Ok(false)` if the parent is not a list that has those elements.
fn splice_removes<T: Transactable>(tx: &mut T, cx: &mut Ctx, run: &RemoveRun) -> Result<bool> {
    let Some((list, length)) = list_at(tx, &run.parent)? else {
        return Ok(false);
    };
    if run.index + run.len > length {
        return Ok(false);
    }
    let parent_path = run.parent.tokens();
    let mut path = parent_path.to_vec();
    path.push(run.index.to_string());
    let deleted: Vec<ObjId> = tx
        .list_range(&list, run.index..run.index + run.len)
        .filter(|item| matches!(item.value, automerge::ValueRef::Object(_)))
        .map(|item| item.id())
        .collect();
    cx.report
        .deleted
        .extend(deleted.into_iter().map(|id| (id, path.clone())));
    cx.touch(&list, parent_path);
    tx.splice(
        &list,
        run.index,
        run.len as isize,
        std::iter::empty::<ScalarValue>(),
    )?;
    Ok(true)
}
