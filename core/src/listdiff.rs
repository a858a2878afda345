//! Which element of a list's old version each element of its new version is: list
//! reconciliation by identity, not by position.
//!
//! A writer who sends a whole new list gives no element ids, only values. Pairing by
//! position puts a concurrent edit on the wrong element as soon as the writer inserted,
//! deleted or reordered before it. So an old and a new element are paired only when they are
//! the same element:
//! 1. by an identity key: declared in the schema (`ids`), or a common one (`id`, `_id`,
//!    `uuid`, `key`) when every element is an object carrying a distinct scalar there;
//! 2. else by equal value (an unchanged element, perhaps moved);
//! 3. else by similarity: two objects whose equal members weigh at least half of all their
//!    members (strings and nested values weigh more than flags and numbers);
//! 4. scalars (which hold no edits of their own) left between the same two paired
//!    neighbours pair in order when of one type: a changed number or string is rewritten in
//!    place, and a counter keeps counting.
//!
//! An unpaired old element was deleted, an unpaired new one inserted. Of the pairs, the
//! longest run that keeps its order stays in place (and is reconciled there); the others
//! moved.

use std::collections::HashMap;

use serde_json::Value;

/// Keys used as identity when a list's elements all carry a distinct one.
const COMMON_ID_KEYS: [&str; 4] = ["id", "_id", "uuid", "key"];

/// Above this many unpaired elements on both sides, similarity is not tried (it compares
/// every unpaired old element with every unpaired new one).
const MAX_SIMILARITY_PAIRS: usize = 64 * 64;

/// How the elements of a new list relate to the old one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The old element at this index, in order with the other kept ones: reconciled in place.
    Keep(usize),
    /// The old element at this index, moved here: deleted there and inserted here.
    Moved(usize),
    /// A new element.
    New,
}

/// For each element of `new`, where it comes from in `old`. `id_key` is the schema's
/// declared identity key of this list, if any.
pub(crate) fn pair(old: &[Value], new: &[Value], id_key: Option<&str>) -> Vec<Slot> {
    let mut paired: Vec<Option<usize>> = vec![None; new.len()];
    let mut used = vec![false; old.len()];

    let key = id_key
        .map(str::to_owned)
        .or_else(|| common_key(old, new).map(str::to_owned));
    if let Some(key) = &key {
        let mut by_id: HashMap<String, usize> = HashMap::new();
        for (i, v) in old.iter().enumerate() {
            if let Some(id) = identity(v, key) {
                by_id.entry(id).or_insert(i);
            }
        }
        for (j, v) in new.iter().enumerate() {
            if let Some(i) = identity(v, key).and_then(|id| by_id.remove(&id)) {
                paired[j] = Some(i);
                used[i] = true;
            }
        }
    }

    // Equal values, in order first (a longest common subsequence), then moved ones. With a
    // key, an element whose key changed is a new element, whatever its other members.
    let keyed = |v: &Value| key.as_deref().is_some_and(|k| identity(v, k).is_some());
    pair_equal(old, new, &mut paired, &mut used, &keyed);
    pair_similar(old, new, &mut paired, &mut used, &keyed);
    pair_scalars_in_gaps(old, new, &mut paired, &mut used);

    order(&paired)
}

/// The identity of an element under `key`: its scalar member there, as JSON text.
fn identity(value: &Value, key: &str) -> Option<String> {
    match value.as_object()?.get(key)? {
        v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => Some(v.to_string()),
        _ => None,
    }
}

/// A common identity key that every element of both lists carries, distinct within each.
fn common_key(old: &[Value], new: &[Value]) -> Option<&'static str> {
    if old.is_empty() || new.is_empty() {
        return None;
    }
    COMMON_ID_KEYS.into_iter().find(|key| {
        [old, new].iter().all(|list| {
            let mut seen = std::collections::HashSet::new();
            list.iter()
                .all(|v| identity(v, key).is_some_and(|id| seen.insert(id)))
        })
    })
}

fn pair_equal(
    old: &[Value],
    new: &[Value],
    paired: &mut [Option<usize>],
    used: &mut [bool],
    keyed: &dyn Fn(&Value) -> bool,
) {
    let mut interned: HashMap<String, u32> = HashMap::new();
    let mut intern = |v: &Value| {
        let next = interned.len() as u32;
        *interned.entry(v.to_string()).or_insert(next)
    };
    // Elements already paired (or carrying a key) take no part: each gets an id of its own.
    let mut fresh = u32::MAX;
    let mut unique = || {
        fresh -= 1;
        fresh
    };
    let old_ids: Vec<u32> = old
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if used[i] || keyed(v) {
                unique()
            } else {
                intern(v)
            }
        })
        .collect();
    let new_ids: Vec<u32> = new
        .iter()
        .enumerate()
        .map(|(j, v)| {
            if paired[j].is_some() || keyed(v) {
                unique()
            } else {
                intern(v)
            }
        })
        .collect();
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, &old_ids, &new_ids) {
        if let similar::DiffOp::Equal {
            old_index,
            new_index,
            len,
        } = op
        {
            for k in 0..len {
                paired[new_index + k] = Some(old_index + k);
                used[old_index + k] = true;
            }
        }
    }
    // Equal values out of order: moves.
    let mut waiting: HashMap<u32, Vec<usize>> = HashMap::new();
    for (i, id) in old_ids.iter().enumerate().rev() {
        if !used[i] {
            waiting.entry(*id).or_default().push(i);
        }
    }
    for (j, id) in new_ids.iter().enumerate() {
        if paired[j].is_none() {
            if let Some(i) = waiting.get_mut(id).and_then(Vec::pop) {
                paired[j] = Some(i);
                used[i] = true;
            }
        }
    }
}

fn pair_similar(
    old: &[Value],
    new: &[Value],
    paired: &mut [Option<usize>],
    used: &mut [bool],
    keyed: &dyn Fn(&Value) -> bool,
) {
    let free_old: Vec<usize> = (0..old.len())
        .filter(|&i| !used[i] && !keyed(&old[i]))
        .collect();
    let free_new: Vec<usize> = (0..new.len())
        .filter(|&j| paired[j].is_none() && !keyed(&new[j]))
        .collect();
    if free_old.is_empty() || free_old.len() * free_new.len() > MAX_SIMILARITY_PAIRS {
        return;
    }
    for j in free_new {
        let best = free_old
            .iter()
            .filter(|&&i| !used[i])
            .map(|&i| (i, similarity(&old[i], &new[j])))
            .filter(|(_, score)| *score >= 0.5)
            // The most similar; among equals, the first.
            .fold(None::<(usize, f64)>, |best, (i, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((i, s)),
            });
        if let Some((i, _)) = best {
            paired[j] = Some(i);
            used[i] = true;
        }
    }
}

fn pair_scalars_in_gaps(
    old: &[Value],
    new: &[Value],
    paired: &mut [Option<usize>],
    used: &mut [bool],
) {
    let same_kind = |a: &Value, b: &Value| {
        matches!(
            (a, b),
            (Value::Number(_), Value::Number(_))
                | (Value::String(_), Value::String(_))
                | (Value::Bool(_), Value::Bool(_))
        )
    };
    let mut lo = 0;
    for j in 0..new.len() {
        if let Some(i) = paired[j] {
            if i >= lo {
                lo = i + 1;
            }
            continue;
        }
        // The gap ends at the old index of the next element paired in order.
        let hi = paired[j + 1..]
            .iter()
            .flatten()
            .find(|&&i| i >= lo)
            .copied()
            .unwrap_or(old.len());
        if let Some(i) = (lo..hi).find(|&i| !used[i] && same_kind(&old[i], &new[j])) {
            paired[j] = Some(i);
            used[i] = true;
            lo = i + 1;
        }
    }
}

/// How alike two values are, from 0 to 1: for objects, the weight of members with equal
/// values over the weight of all members; for lists, the share of equal elements; other
/// values are alike only when equal.
pub(crate) fn similarity(a: &Value, b: &Value) -> f64 {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut equal = 0.0;
            let mut total = 0.0;
            for (k, v) in x {
                let w = y.get(k).map_or(weight(v), |w| weight(v).max(weight(w)));
                total += w;
                if y.get(k) == Some(v) {
                    equal += w;
                }
            }
            for (k, v) in y {
                if !x.contains_key(k) {
                    total += weight(v);
                }
            }
            if total == 0.0 {
                1.0
            } else {
                equal / total
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            let longest = x.len().max(y.len());
            if longest == 0 {
                return 1.0;
            }
            let mut pool: Vec<&Value> = y.iter().collect();
            let mut equal = 0;
            for v in x {
                if let Some(k) = pool.iter().position(|w| *w == v) {
                    pool.swap_remove(k);
                    equal += 1;
                }
            }
            equal as f64 / longest as f64
        }
        (a, b) if a == b => 1.0,
        _ => 0.0,
    }
}

/// How much a member says about which element it belongs to.
fn weight(v: &Value) -> f64 {
    match v {
        Value::String(_) | Value::Object(_) | Value::Array(_) => 3.0,
        Value::Number(_) | Value::Bool(_) | Value::Null => 1.0,
    }
}

/// Turns pairs into slots: the longest increasing run of old indexes stays, the other
/// pairs moved.
fn order(paired: &[Option<usize>]) -> Vec<Slot> {
    let seq: Vec<(usize, usize)> = paired
        .iter()
        .enumerate()
        .filter_map(|(j, p)| p.map(|i| (j, i)))
        .collect();
    let kept = longest_increasing(&seq.iter().map(|&(_, i)| i).collect::<Vec<_>>());
    let mut slots: Vec<Slot> = paired
        .iter()
        .map(|p| p.map_or(Slot::New, Slot::Moved))
        .collect();
    for k in kept {
        let (j, i) = seq[k];
        slots[j] = Slot::Keep(i);
    }
    slots
}

/// Indexes (into `values`) of one longest strictly increasing subsequence, O(n log n).
fn longest_increasing(values: &[usize]) -> Vec<usize> {
    let mut tails: Vec<usize> = Vec::new(); // index into values of the tail of each length
    let mut prev: Vec<Option<usize>> = vec![None; values.len()];
    for (k, &v) in values.iter().enumerate() {
        let at = tails.partition_point(|&t| values[t] < v);
        if at > 0 {
            prev[k] = Some(tails[at - 1]);
        }
        if at == tails.len() {
            tails.push(k);
        } else {
            tails[at] = k;
        }
    }
    let mut out = Vec::with_capacity(tails.len());
    let mut at = tails.last().copied();
    while let Some(k) = at {
        out.push(k);
        at = prev[k];
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use Slot::*;

    fn check(old: Value, new: Value, id_key: Option<&str>, expected: &[Slot]) {
        let (old, new) = (old.as_array().unwrap(), new.as_array().unwrap());
        assert_eq!(pair(old, new, id_key), expected, "{old:?} -> {new:?}");
    }

    #[test]
    fn pairing_table() {
        // Delete before an edited element: the key pairs 2 with 2.
        check(
            json!([{"id": 1}, {"id": 2, "t": "b"}, {"id": 3}]),
            json!([{"id": 2, "t": "b2"}, {"id": 3}]),
            None,
            &[Keep(1), Keep(2)],
        );
        // Insert before an edited element, no key: B pairs with B+note by similarity, N is new.
        check(
            json!([{"name": "A"}, {"name": "B"}, {"name": "C"}]),
            json!([{"name": "A"}, {"name": "N"}, {"name": "B", "note": "x"}, {"name": "C"}]),
            None,
            &[Keep(0), New, Keep(1), Keep(2)],
        );
        // Swap neighbours: half stay, half move.
        check(
            json!([{"name": "A"}, {"name": "B"}, {"name": "C"}, {"name": "D"}]),
            json!([{"name": "B"}, {"name": "A"}, {"name": "D"}, {"name": "C"}]),
            None,
            &[Moved(1), Keep(0), Moved(3), Keep(2)],
        );
        // A declared key that is not one of the common ones.
        check(
            json!([{"sku": "a", "n": 1}, {"sku": "b", "n": 1}]),
            json!([{"sku": "b", "n": 2}, {"sku": "a", "n": 1}]),
            Some("sku"),
            &[Moved(1), Keep(0)],
        );
        // Different tasks with the same flag are not the same element.
        check(
            json!([{"t": "x", "done": false}]),
            json!([{"t": "y", "done": false}]),
            None,
            &[New],
        );
        // Scalars pair only when equal; duplicates pair in order.
        check(
            json!(["a", "b", "a"]),
            json!(["a", "a"]),
            None,
            &[Keep(0), Keep(2)],
        );
        check(
            json!([1, 2, 3]),
            json!([3, 1, 2]),
            None,
            &[Moved(2), Keep(0), Keep(1)],
        );
        // Scalars between the same neighbours are rewritten in place, in order.
        check(json!(["a"]), json!(["b"]), None, &[Keep(0)]);
        check(json!([1, 1]), json!([3, 2]), None, &[Keep(0), Keep(1)]);
        check(
            json!(["x", 1, "y"]),
            json!(["x", true, "y"]),
            None,
            &[Keep(0), New, Keep(2)],
        );
        // A changed id is another element.
        check(
            json!([{"id": 1, "t": "a"}]),
            json!([{"id": 2, "t": "a"}]),
            None,
            &[New],
        );
        // Duplicate ids are no identity: equal values and similarity decide.
        check(
            json!([{"id": 1, "t": "a"}, {"id": 1, "t": "b"}]),
            json!([{"id": 1, "t": "b"}]),
            None,
            &[Keep(1)],
        );
    }

    #[test]
    fn longest_increasing_run() {
        assert_eq!(longest_increasing(&[]), Vec::<usize>::new());
        assert_eq!(longest_increasing(&[3, 1, 2]), vec![1, 2]);
        assert_eq!(longest_increasing(&[0, 1, 2]), vec![0, 1, 2]);
        assert_eq!(longest_increasing(&[1, 0, 3, 2]).len(), 2);
    }

    #[test]
    fn similarity_weighs_names_above_flags() {
        assert_eq!(
            similarity(&json!({"name": "B"}), &json!({"name": "B", "note": "x"})),
            0.5
        );
        assert!(
            similarity(
                &json!({"t": "x", "done": false}),
                &json!({"t": "y", "done": false})
            ) < 0.5
        );
        assert!(
            similarity(
                &json!({"name": "A", "done": false}),
                &json!({"name": "A", "done": true})
            ) > 0.5
        );
        assert_eq!(similarity(&json!([1, 2]), &json!([2, 1])), 1.0);
        assert_eq!(similarity(&json!("a"), &json!("a")), 1.0);
    }
}
