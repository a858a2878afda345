//! The edits that turn one text into another, lines first, then characters inside the lines
//! that changed, with a bounded cost.
//!
//! A writer who sends a whole new text means "my edits are these". Where they are matters as
//! much as what they are: an insertion anchored to the wrong line puts a concurrent edit on
//! the wrong line. A character diff of the whole text anchors an insertion after the longest
//! common prefix, which can be another line (`"- one"` becoming `"- (!) one"` while someone
//! inserted `"- zero"` above it), and its cost grows with the square of a large replacement.
//! So the diff runs on lines, and only the lines a hunk replaces are diffed by character.
//!
//! The cost is bounded without reading a clock: a diff runs only on inputs below a size limit
//! (Myers' cost is at most the square of the input), larger hunks become one replacement
//! after trimming what they share at both ends.

use similar::{capture_diff_slices, Algorithm, DiffOp};

/// One edit of the old text, in Unicode code points of the old text: delete `del` characters
/// at `pos`, then insert `insert` there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Splice {
    /// Where, counted in characters of the old text.
    pub(crate) pos: usize,
    /// How many characters to delete.
    pub(crate) del: usize,
    /// What to insert.
    pub(crate) insert: String,
}

/// Above this many lines (old plus new) in the part that differs, lines are not diffed: the
/// part is replaced whole.
const MAX_DIFF_LINES: usize = 10_000;
/// Above this many characters (old plus new) in one hunk, characters are not diffed.
const MAX_DIFF_CHARS: usize = 10_000;

/// The splices that turn `old` into `new`, in increasing position, none overlapping.
pub(crate) fn text_splices(old: &str, new: &str) -> Vec<Splice> {
    if old == new {
        return Vec::new();
    }
    let old_lines = lines(old);
    let new_lines = lines(new);
    // Trim the lines both share at the ends: most writes change a little of a large text.
    let prefix = old_lines
        .iter()
        .zip(&new_lines)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = old_lines[prefix..]
        .iter()
        .rev()
        .zip(new_lines[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let old_mid = &old_lines[prefix..old_lines.len() - suffix];
    let new_mid = &new_lines[prefix..new_lines.len() - suffix];
    let start: usize = old_lines[..prefix].iter().map(|l| l.chars().count()).sum();

    let mut out = Vec::new();
    if old_mid.len() + new_mid.len() > MAX_DIFF_LINES || !share_a_line(old_mid, new_mid) {
        hunk(&mut out, start, old_mid, new_mid);
        return out;
    }
    let ops = capture_diff_slices(Algorithm::Myers, old_mid, new_mid);
    let mut pos = start;
    let mut i = 0;
    while i < ops.len() {
        let (old_range, new_range) = match ops[i] {
            DiffOp::Equal { old_index, len, .. } => {
                pos += char_len(&old_mid[old_index..old_index + len]);
                i += 1;
                continue;
            }
            DiffOp::Delete {
                old_index,
                old_len,
                new_index,
            } => match ops.get(i + 1) {
                // A delete next to an insert is one replacement hunk.
                Some(&DiffOp::Insert {
                    new_index, new_len, ..
                }) => {
                    i += 1;
                    (
                        old_index..old_index + old_len,
                        new_index..new_index + new_len,
                    )
                }
                _ => (old_index..old_index + old_len, new_index..new_index),
            },
            DiffOp::Insert {
                old_index,
                new_index,
                new_len,
            } => (old_index..old_index, new_index..new_index + new_len),
            DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => (
                old_index..old_index + old_len,
                new_index..new_index + new_len,
            ),
        };
        let (old_hunk, new_hunk) = (&old_mid[old_range], &new_mid[new_range]);
        hunk(&mut out, pos, old_hunk, new_hunk);
        pos += char_len(old_hunk);
        i += 1;
    }
    out
}

/// The splices of one hunk at `pos`: line by line when it replaces as many lines as it
/// brings, else by character over the whole hunk, within the size limit.
fn hunk(out: &mut Vec<Splice>, pos: usize, old: &[&str], new: &[&str]) {
    if old.is_empty() || new.is_empty() {
        push(out, pos, char_len(old), new.concat());
        return;
    }
    if old.len() == new.len() && old.len() > 1 {
        // Line for line: an edited line is diffed by character, a rewritten one replaced.
        let mut pos = pos;
        for (a, b) in old.iter().zip(new) {
            if alike(a, b) {
                chars(out, pos, a, b);
            } else {
                push(out, pos, a.chars().count(), (*b).to_owned());
            }
            pos += a.chars().count();
        }
        return;
    }
    chars(out, pos, &old.concat(), &new.concat());
}

/// Character splices turning `old` (at `pos`) into `new`.
fn chars(out: &mut Vec<Splice>, pos: usize, old: &str, new: &str) {
    if old == new {
        return;
    }
    let a: Vec<char> = old.chars().collect();
    let b: Vec<char> = new.chars().collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suffix = a[prefix..]
        .iter()
        .rev()
        .zip(b[prefix..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a, b) = (&a[prefix..a.len() - suffix], &b[prefix..b.len() - suffix]);
    let pos = pos + prefix;
    if a.len() + b.len() > MAX_DIFF_CHARS || a.is_empty() || b.is_empty() {
        push(out, pos, a.len(), b.iter().collect());
        return;
    }
    let mut at = pos;
    let ops = capture_diff_slices(Algorithm::Myers, a, b);
    for op in ops {
        match op {
            DiffOp::Equal { len, .. } => at += len,
            DiffOp::Delete { old_len, .. } => {
                push(out, at, old_len, String::new());
                at += old_len;
            }
            DiffOp::Insert {
                new_index, new_len, ..
            } => push(
                out,
                at,
                0,
                b[new_index..new_index + new_len].iter().collect(),
            ),
            DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => {
                push(
                    out,
                    at,
                    old_len,
                    b[new_index..new_index + new_len].iter().collect(),
                );
                at += old_len;
            }
        }
    }
}

/// Appends a splice, joining it to the previous one when they touch.
fn push(out: &mut Vec<Splice>, pos: usize, del: usize, insert: String) {
    if del == 0 && insert.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.pos + last.del == pos {
            last.del += del;
            last.insert.push_str(&insert);
            return;
        }
    }
    out.push(Splice { pos, del, insert });
}

/// True if two lines share at least half of the longer one at their ends: one is an edit
/// of the other rather than a rewrite.
fn alike(a: &str, b: &str) -> bool {
    let prefix = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let suffix = a
        .chars()
        .rev()
        .zip(b.chars().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let longest = a.chars().count().max(b.chars().count());
    2 * (prefix + suffix).min(longest) >= longest
}

/// The lines of a text, each with its `\n`.
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

fn char_len(lines: &[&str]) -> usize {
    lines.iter().map(|l| l.chars().count()).sum()
}

/// True if some line of `a` is also in `b` (else the whole part is one replacement, and a
/// line diff would only spend time finding that out).
fn share_a_line(a: &[&str], b: &[&str]) -> bool {
    let set: std::collections::HashSet<&str> = a.iter().copied().collect();
    b.iter().any(|line| set.contains(line))
}

/// Applies splices (as [`text_splices`] returns them) to a text: the reference for tests.
#[cfg(test)]
pub(crate) fn apply(old: &str, splices: &[Splice]) -> String {
    let chars: Vec<char> = old.chars().collect();
    let mut out = String::new();
    let mut at = 0;
    for s in splices {
        out.extend(&chars[at..s.pos]);
        out.push_str(&s.insert);
        at = s.pos + s.del;
    }
    out.extend(&chars[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(old: &str, new: &str, expected: &[(usize, usize, &str)]) {
        let got = text_splices(old, new);
        assert_eq!(apply(old, &got), new, "{old:?} -> {new:?}");
        let got: Vec<(usize, usize, &str)> = got
            .iter()
            .map(|s| (s.pos, s.del, s.insert.as_str()))
            .collect();
        assert_eq!(got, expected, "{old:?} -> {new:?}");
    }

    #[test]
    fn edits_stay_on_their_line() {
        // The insertion lands after "- " of its own line, not after the longest common
        // prefix of the whole text.
        check("- one\n- two\n", "- (!) one\n- two\n", &[(2, 0, "(!) ")]);
        check(
            "- one\n- two\n",
            "- zero\n- one\n- two\n",
            &[(0, 0, "- zero\n")],
        );
        check("a\nb\nc\n", "a\nc\n", &[(2, 2, "")]);
        check("a\nb\nc\n", "a\nB\nc\n", &[(2, 1, "B")]);
        check("a\nb\n", "x\ny\n", &[(0, 1, "x"), (2, 1, "y")]);
        check("same", "same", &[]);
        check("", "new", &[(0, 0, "new")]);
        check("old", "", &[(0, 3, "")]);
        check("héllo wörld", "héllo, wörld!", &[(5, 0, ","), (11, 0, "!")]);
        check("no newline", "no newline\n", &[(10, 0, "\n")]);
    }

    #[test]
    fn large_replacements_are_one_splice() {
        let old: String = (0..5000).map(|i| format!("old line {i}\n")).collect();
        let new: String = (0..5000).map(|i| format!("new row {i}\n")).collect();
        let splices = text_splices(&old, &new);
        assert_eq!(apply(&old, &splices), new);
        assert!(splices.len() < 10, "{} splices", splices.len());
    }

    proptest! {
        #[test]
        fn splices_reach_the_new_text(
            old in "[ab\\n]{0,40}",
            new in "[abc\\n]{0,40}",
        ) {
            let splices = text_splices(&old, &new);
            prop_assert_eq!(apply(&old, &splices), new);
            for pair in splices.windows(2) {
                prop_assert!(pair[0].pos + pair[0].del < pair[1].pos);
            }
        }
    }
}
