//! The board workload: agents work on a list of task objects at `/tasks`, each
//! `{"id", "title", "done", "votes", "body"}`. A write inserts a task, deletes one, sets a
//! field (`title`, `done`), adds a vote (`votes` is a counter), inserts a marker word into
//! the `body` (collaborative text) or moves a task to another position.
//!
//! What an agent sets out to do is drawn from the seed ([`BoardOp`]); which task it does it
//! to depends on what it read, so the write is bound to a task only then ([`resolve`]),
//! and the history records the bound write ([`Effect::Task`]) when the write completes.
//!
//! [`check`] judges every acknowledged board write against the final document and the
//! document's lost edits (`GET …?conflicts=true`, `lost`): kept, lost but surfaced, or lost
//! silently.
//!
//! About 530 lines of code and 420 of tests in one file: the workload, its seeded plan and
//! its checker share the task model and are read together; the tests drive the checker on
//! hand-built documents.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use serde_json::{json, Value};

use super::history::{Effect, LostEdit, Op, Phase};
use super::workload::{text_token, word_boundaries};

/// How many tasks the board starts with (`t1` … `t5`).
pub const SEED_TASKS: usize = 5;

/// What a board write sets out to do, before the agent has read which tasks there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BoardOp {
    /// Insert a new task.
    Insert,
    /// Delete a task.
    Delete,
    /// Set a task's title.
    Title,
    /// Flip a task's `done`.
    Done,
    /// Add one to a task's votes.
    Vote,
    /// Insert a marker word into a task's body.
    Body,
    /// Move a task to another position.
    Move,
}

/// How often each kind is drawn: field edits, votes, text and moves twice as often as
/// inserts, inserts twice as often as deletes, so that the board neither empties nor only
/// grows.
const ROLLS: [BoardOp; 12] = [
    BoardOp::Insert,
    BoardOp::Title,
    BoardOp::Vote,
    BoardOp::Body,
    BoardOp::Move,
    BoardOp::Done,
    BoardOp::Insert,
    BoardOp::Title,
    BoardOp::Vote,
    BoardOp::Body,
    BoardOp::Move,
    BoardOp::Delete,
];

impl BoardOp {
    /// The kind `roll` draws.
    pub fn from_roll(roll: u32) -> BoardOp {
        ROLLS[(roll % ROLLS.len() as u32) as usize]
    }
}

/// A board write bound to a task: what it does to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum TaskEdit {
    /// The task (whose id is the write's mark) is inserted at index `at` (as read).
    Insert {
        /// The index in the list as the agent read it (the queue's intent appends).
        at: usize,
    },
    /// The task is removed.
    Delete,
    /// `title` is set to the write's mark.
    Title,
    /// `done` is set to `value` (the opposite of what the agent read).
    Done {
        /// The value written.
        value: bool,
    },
    /// `votes` goes up by one.
    Vote,
    /// The word `[mark] ` is inserted into `body`.
    Body,
    /// The task is taken out and put back at index `to` of the remaining list.
    Move {
        /// The index among the other tasks.
        to: usize,
    },
}

/// A new task: its title is its id, not done, no votes, an empty body.
pub fn new_task(id: &str) -> Value {
    json!({"id": id, "title": id, "done": false, "votes": 0, "body": ""})
}

/// The id of the `n`-th task the board starts with (from 1).
pub fn seed_id(n: usize) -> String {
    format!("t{n}")
}

/// The document the board starts from.
pub fn initial() -> Value {
    let tasks: Vec<Value> = (1..=SEED_TASKS).map(|n| new_task(&seed_id(n))).collect();
    json!({ "tasks": tasks })
}

fn tasks(doc: &Value) -> &[Value] {
    doc["tasks"].as_array().map_or(&[], Vec::as_slice)
}

fn task_id(task: &Value) -> Option<&str> {
    task["id"].as_str()
}

/// Where the task with `id` is in `doc`'s list (its first copy).
fn index_of(doc: &Value, id: &str) -> Option<usize> {
    tasks(doc).iter().position(|t| task_id(t) == Some(id))
}

/// Binds `op` to a task of `read`, the value the agent read: `pick` chooses the task and
/// any position. With no task to work on (an empty board, or a task without an id), the
/// write inserts one; a move on a board of one task adds a vote instead.
pub fn resolve(op: BoardOp, read: &Value, mark: &str, pick: u64) -> Effect {
    let list = tasks(read);
    let n = list.len();
    // Independent parts of the pick: which task, and which position.
    let position = pick >> 24;
    let insert = || Effect::Task {
        task: mark.to_owned(),
        edit: TaskEdit::Insert {
            at: (position % (n as u64 + 1)) as usize,
        },
    };
    if op == BoardOp::Insert || n == 0 {
        return insert();
    }
    let i = (pick % n as u64) as usize;
    let Some(id) = task_id(&list[i]) else {
        return insert();
    };
    let edit = match op {
        BoardOp::Insert => unreachable!("handled above"),
        BoardOp::Delete => TaskEdit::Delete,
        BoardOp::Title => TaskEdit::Title,
        BoardOp::Done => TaskEdit::Done {
            value: !list[i]["done"].as_bool().unwrap_or(false),
        },
        BoardOp::Vote => TaskEdit::Vote,
        BoardOp::Body => TaskEdit::Body,
        BoardOp::Move if n < 2 => TaskEdit::Vote,
        BoardOp::Move => {
            // Any index of the other n - 1 tasks' list (0..=n-1) but the one it came from.
            let mut to = (position % (n as u64 - 1)) as usize;
            if to >= i {
                to += 1;
            }
            TaskEdit::Move { to }
        }
    };
    Effect::Task {
        task: id.to_owned(),
        edit,
    }
}

/// Applies a bound write to `doc`, the whole document as the agent rewrites it. `pick`
/// chooses where a body word goes. A task that is not there (the write was bound to another
/// read) is left alone.
pub fn rewrite(doc: &mut Value, task: &str, edit: &TaskEdit, mark: &str, pick: u64) {
    if !doc["tasks"].is_array() {
        doc["tasks"] = json!([]);
    }
    let at = index_of(doc, task);
    let list = doc["tasks"].as_array_mut().expect("made a list");
    match (edit, at) {
        (TaskEdit::Insert { at }, _) => {
            let at = (*at).min(list.len());
            list.insert(at, new_task(task));
        }
        (_, None) => {}
        (TaskEdit::Delete, Some(i)) => {
            list.remove(i);
        }
        (TaskEdit::Title, Some(i)) => list[i]["title"] = json!(mark),
        (TaskEdit::Done { value }, Some(i)) => list[i]["done"] = json!(value),
        (TaskEdit::Vote, Some(i)) => {
            let votes = list[i]["votes"].as_i64().unwrap_or(0);
            list[i]["votes"] = json!(votes + 1);
        }
        (TaskEdit::Body, Some(i)) => {
            let mut body = list[i]["body"].as_str().unwrap_or("").to_owned();
            let boundaries = word_boundaries(&body);
            let at = boundaries[((pick >> 48) % boundaries.len() as u64) as usize];
            body.insert_str(at, &text_token(mark));
            list[i]["body"] = json!(body);
        }
        (TaskEdit::Move { to }, Some(i)) => {
            let moved = list.remove(i);
            let to = (*to).min(list.len());
            list.insert(to, moved);
        }
    }
}

/// The queue's intent for a bound write, JSON Patch without a base. A list index means
/// nothing once other intents have been applied, so every op on an existing task is guarded
/// by a `test` of the id at the index the agent read: applied to that task, or refused
/// whole (409 `test-failed`) and tried again from a new read. A delete tests the whole task
/// as read: it removes the task the agent decided to remove, not edits made since, which it
/// never saw. A new task is appended.
pub fn intent(read: &Value, task: &str, edit: &TaskEdit, mark: &str) -> Value {
    if matches!(edit, TaskEdit::Insert { .. }) {
        return json!([{"op": "add", "path": "/tasks/-", "value": new_task(task)}]);
    }
    // Bound to this read, so the task is there; a stale index only fails the test.
    let i = index_of(read, task).unwrap_or(0);
    let at = format!("/tasks/{i}");
    let guard = match edit {
        TaskEdit::Delete => {
            let as_read = tasks(read).get(i).cloned().unwrap_or(Value::Null);
            json!({"op": "test", "path": at, "value": as_read})
        }
        _ => json!({"op": "test", "path": format!("{at}/id"), "value": task}),
    };
    let op = match edit {
        TaskEdit::Insert { .. } => unreachable!("handled above"),
        TaskEdit::Delete => json!({"op": "remove", "path": at}),
        TaskEdit::Title => json!({"op": "replace", "path": format!("{at}/title"), "value": mark}),
        TaskEdit::Done { value } => {
            json!({"op": "replace", "path": format!("{at}/done"), "value": value})
        }
        TaskEdit::Vote => json!({"op": "increment", "path": format!("{at}/votes"), "value": 1}),
        TaskEdit::Body => json!({
            "op": "splice", "path": format!("{at}/body"), "pos": 0, "del": 0,
            "insert": text_token(mark),
        }),
        TaskEdit::Move { to } => json!({"op": "move", "from": at, "path": format!("/tasks/{to}")}),
    };
    json!([guard, op])
}

/// What became of one acknowledged board write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// In the final document, superseded by a write that saw it, or not checkable.
    Kept,
    /// Absent, and listed among the document's lost edits.
    Surfaced,
    /// Absent, and nowhere.
    Silent,
}

/// What the board checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BoardVerdict {
    /// Marks of the writes lost silently (votes are counted, not named).
    pub silent: Vec<String>,
    /// Marks of the writes lost but surfaced.
    pub surfaced: Vec<String>,
    /// Votes lost silently.
    pub silent_votes: usize,
    /// Votes lost but surfaced.
    pub surfaced_votes: usize,
}

impl BoardVerdict {
    fn cost(&self) -> (usize, usize) {
        (
            self.silent.len() + self.silent_votes,
            self.surfaced.len() + self.surfaced_votes,
        )
    }
}

/// The write a register (`title`, `done`) holds after `op`, if `op` writes it.
fn register_value(op: &Op<'_>, field: &str) -> Option<Value> {
    match (op.effect, field) {
        (
            Effect::Task {
                edit: TaskEdit::Title,
                ..
            },
            "title",
        ) => Some(json!(op.mark)),
        (
            Effect::Task {
                edit: TaskEdit::Done { value },
                ..
            },
            "done",
        ) => Some(json!(value)),
        _ => None,
    }
}

/// The writes of one task, and what the checker needs to judge them.
struct TaskOps<'a, 'h> {
    ops: Vec<&'a Op<'h>>,
    /// The agents the document's lost edits name for this task.
    listed: HashSet<&'a str>,
}

impl<'a, 'h> TaskOps<'a, 'h> {
    fn edit<'o>(op: &Op<'o>) -> Option<&'o TaskEdit> {
        match op.effect {
            Effect::Task { edit, .. } => Some(edit),
            _ => None,
        }
    }

    fn listed(&self, op: &Op<'_>) -> bool {
        self.listed.contains(op.agent)
    }

    /// Deletes of this task that may have happened.
    fn deletes(&self) -> impl Iterator<Item = &&'a Op<'h>> {
        self.ops
            .iter()
            .filter(|op| op.phase != Phase::Fail && Self::edit(op) == Some(&TaskEdit::Delete))
    }

    /// An edit absent from the final document that should be there (it was acknowledged
    /// and nothing that saw it replaced it): surfaced if a lost edit names its agent.
    fn absent(&self, op: &Op<'_>) -> Fate {
        if self.listed(op) {
            Fate::Surfaced
        } else {
            Fate::Silent
        }
    }

    /// The fate of an acknowledged edit of a task that is not in the final document.
    fn fate_when_gone(&self, op: &Op<'_>) -> Fate {
        match Self::edit(op) {
            // Moves are not checked (see `check`); a delete of a task that is gone is kept.
            Some(TaskEdit::Delete | TaskEdit::Move { .. }) | None => Fate::Kept,
            // Any delete of the task saw it inserted.
            Some(TaskEdit::Insert { .. }) if self.deletes().next().is_some() => Fate::Kept,
            Some(TaskEdit::Insert { .. }) => self.absent(op),
            Some(_) => {
                // Deleted by a write that had seen the edit: superseded, not lost.
                if self.deletes().any(|d| d.saw(op)) {
                    Fate::Kept
                } else if self.listed(op) {
                    Fate::Surfaced
                } else if self.deletes().all(|d| d.missed(op)) {
                    Fate::Silent
                } else {
                    // A delete may have seen it: given the benefit of the doubt.
                    Fate::Kept
                }
            }
        }
    }

    /// The fate of an acknowledged write of a register, against `copy`.
    fn register_fate(&self, op: &Op<'_>, field: &str, copy: &Value) -> Fate {
        let Some(value) = register_value(op, field) else {
            return Fate::Kept;
        };
        let shown = &copy[field];
        if *shown == value {
            return Fate::Kept;
        }
        // The write the register shows: of the writes of this value, the one that ended
        // last, which excuses the most writes.
        let candidates = self
            .ops
            .iter()
            .filter(|w| w.phase != Phase::Fail && register_value(w, field).as_ref() == Some(shown));
        let latest = candidates.max_by(|a, b| a.effect_by().total_cmp(&b.effect_by()));
        let should_show = match latest {
            // `op` saw the shown write and was acknowledged: it should have replaced it.
            Some(shown_by) if op.saw(shown_by) => true,
            // The shown write saw `op`: superseded.
            Some(shown_by) if shown_by.saw(op) => false,
            // Concurrent: one of two concurrent values is shown, and that is no loss.
            Some(_) => {
                return if self.listed(op) {
                    Fate::Surfaced
                } else {
                    Fate::Kept
                }
            }
            // The task's first value (every edit of the task had read it), or a value
            // nobody wrote.
            None => true,
        };
        if should_show {
            self.absent(op)
        } else {
            Fate::Kept
        }
    }

    /// Judges every acknowledged write of this task against one final copy of it.
    fn against_copy(&self, copy: &Value) -> BoardVerdict {
        let mut verdict = BoardVerdict::default();
        let mut votes = 0usize;
        let mut listed_votes = 0usize;
        for op in self.ops.iter().filter(|op| op.phase == Phase::Ok) {
            let fate = match Self::edit(op) {
                None | Some(TaskEdit::Insert { .. } | TaskEdit::Move { .. }) => Fate::Kept,
                // The task is still there: its delete was undone.
                Some(TaskEdit::Delete) => Fate::Silent,
                Some(TaskEdit::Title) => self.register_fate(op, "title", copy),
                Some(TaskEdit::Done { .. }) => self.register_fate(op, "done", copy),
                Some(TaskEdit::Body) => {
                    let word = text_token(op.mark);
                    let present = copy["body"]
                        .as_str()
                        .is_some_and(|b| b.contains(word.trim_end()));
                    if present {
                        Fate::Kept
                    } else {
                        self.absent(op)
                    }
                }
                Some(TaskEdit::Vote) => {
                    votes += 1;
                    listed_votes += usize::from(self.listed(op));
                    Fate::Kept
                }
            };
            verdict.push(fate, op.mark);
        }
        // Votes are a counter: acknowledged votes above the count are lost; as many as the
        // lost edits name the voters of are surfaced.
        let counted = copy["votes"].as_i64().unwrap_or(0).max(0) as usize;
        let missing = votes.saturating_sub(counted);
        verdict.surfaced_votes = missing.min(listed_votes);
        verdict.silent_votes = missing - verdict.surfaced_votes;
        verdict
    }

    fn judge(&self, copies: &[&Value]) -> BoardVerdict {
        if copies.is_empty() {
            let mut verdict = BoardVerdict::default();
            for op in self.ops.iter().filter(|op| op.phase == Phase::Ok) {
                verdict.push(self.fate_when_gone(op), op.mark);
            }
            return verdict;
        }
        // A task shown twice (two moves made at once each put it back) passes if one of
        // its copies does: the copy that loses least.
        copies
            .iter()
            .map(|copy| self.against_copy(copy))
            .min_by_key(BoardVerdict::cost)
            .expect("at least one copy")
    }
}

impl BoardVerdict {
    fn push(&mut self, fate: Fate, mark: &str) {
        match fate {
            Fate::Kept => {}
            Fate::Surfaced => self.surfaced.push(mark.to_owned()),
            Fate::Silent => self.silent.push(mark.to_owned()),
        }
    }
}

/// Judges every acknowledged board write of `ops` (the history, one entry per write, in
/// invoke order) against `final_value` and the document's `lost` edits:
///
/// - an insert is kept if its task is there, or some delete of it may have happened;
/// - a delete is kept if its task is gone (a task back after its delete lost the delete);
/// - `title` and `done` are registers: a write is lost if the task shows an older value
///   that the write had seen (its read began after that value's write was acknowledged), or
///   a value nobody wrote; of two concurrent writes either may show;
/// - votes are a counter: acknowledged votes above the task's count are lost;
/// - a body word is lost if the body lacks it;
/// - an edit of a task that is gone is lost unless a delete that had seen it removed the
///   task (a delete whose read may have included it gets the benefit of the doubt);
/// - a move is not checked: with moves made at once there is no one right order, and a
///   move that loses a task's edits shows up as those edits.
///
/// A lost write is *surfaced* if one of the lost edits is of its task (`value.id`) and
/// names its agent in `edited_by`; otherwise it is lost *silently*.
pub fn check(ops: &[Op<'_>], final_value: &Value, lost: &[LostEdit]) -> BoardVerdict {
    let mut by_task: HashMap<&str, Vec<&Op<'_>>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for op in ops {
        if let Effect::Task { task, .. } = op.effect {
            let entry = by_task.entry(task.as_str()).or_insert_with(|| {
                order.push(task.as_str());
                Vec::new()
            });
            entry.push(op);
        }
    }
    let mut copies: HashMap<&str, Vec<&Value>> = HashMap::new();
    for task in tasks(final_value) {
        if let Some(id) = task_id(task) {
            copies.entry(id).or_default().push(task);
        }
    }
    let mut listed: HashMap<&str, HashSet<&str>> = HashMap::new();
    for edit in lost {
        if let Some(id) = edit.value["id"].as_str() {
            let agents = listed.entry(id).or_default();
            agents.extend(edit.edited_by.iter().map(String::as_str));
        }
    }
    let mut verdict = BoardVerdict::default();
    for id in order {
        let task = TaskOps {
            ops: by_task.remove(id).unwrap_or_default(),
            listed: listed.remove(id).unwrap_or_default(),
        };
        let found = task.judge(copies.get(id).map_or(&[], Vec::as_slice));
        verdict.silent.extend(found.silent);
        verdict.surfaced.extend(found.surfaced);
        verdict.silent_votes += found.silent_votes;
        verdict.surfaced_votes += found.surfaced_votes;
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{check_with_lost, Basis, Event};

    fn bound(op: BoardOp, read: &Value, pick: u64) -> (String, TaskEdit) {
        match resolve(op, read, "m", pick) {
            Effect::Task { task, edit } => (task, edit),
            other => panic!("not bound: {other:?}"),
        }
    }

    fn titles(doc: &Value) -> Vec<&str> {
        tasks(doc).iter().filter_map(task_id).collect()
    }

    #[test]
    fn the_board_starts_with_seed_tasks() {
        let doc = initial();
        assert_eq!(titles(&doc), ["t1", "t2", "t3", "t4", "t5"]);
        assert_eq!(
            doc["tasks"][0],
            json!({"id": "t1", "title": "t1", "done": false, "votes": 0, "body": ""})
        );
        // Every kind is drawn.
        let kinds: HashSet<BoardOp> = (0..12).map(BoardOp::from_roll).collect();
        assert_eq!(kinds.len(), 7);
    }

    #[test]
    fn writes_bind_to_a_task_of_the_read() {
        let read = initial();
        // The pick's low bits choose the task, its high bits the position.
        assert_eq!(
            bound(BoardOp::Title, &read, 2),
            ("t3".into(), TaskEdit::Title)
        );
        assert_eq!(
            bound(BoardOp::Done, &read, 0),
            ("t1".into(), TaskEdit::Done { value: true })
        );
        assert_eq!(
            bound(BoardOp::Insert, &read, 3 << 24),
            ("m".into(), TaskEdit::Insert { at: 3 })
        );
        // A move never puts the task back where it was.
        for pick in 0..64u64 {
            let (task, edit) = bound(BoardOp::Move, &read, pick | (pick << 24));
            let from = index_of(&read, &task).unwrap();
            let TaskEdit::Move { to } = edit else {
                panic!("{edit:?}")
            };
            assert!(to != from && to < SEED_TASKS, "{from} -> {to}");
        }
        // Nothing to edit: the write inserts; one task cannot move.
        let empty = json!({"tasks": []});
        assert_eq!(
            bound(BoardOp::Delete, &empty, 9),
            ("m".into(), TaskEdit::Insert { at: 0 })
        );
        let one = json!({"tasks": [new_task("x")]});
        assert_eq!(bound(BoardOp::Move, &one, 0), ("x".into(), TaskEdit::Vote));
    }

    #[test]
    fn rewrites_edit_the_task_by_id() {
        let read = initial();
        let apply = |task: &str, edit: TaskEdit, pick: u64| {
            let mut doc = read.clone();
            rewrite(&mut doc, task, &edit, "m", pick);
            doc
        };
        let doc = apply("m", TaskEdit::Insert { at: 1 }, 0);
        assert_eq!(titles(&doc), ["t1", "m", "t2", "t3", "t4", "t5"]);
        assert_eq!(doc["tasks"][1], new_task("m"));
        let doc = apply("t2", TaskEdit::Delete, 0);
        assert_eq!(titles(&doc), ["t1", "t3", "t4", "t5"]);
        assert_eq!(apply("t2", TaskEdit::Title, 0)["tasks"][1]["title"], "m");
        let done = apply("t2", TaskEdit::Done { value: true }, 0);
        assert_eq!(done["tasks"][1]["done"], true);
        assert_eq!(apply("t2", TaskEdit::Vote, 0)["tasks"][1]["votes"], 1);
        assert_eq!(apply("t2", TaskEdit::Body, 0)["tasks"][1]["body"], "[m] ");
        let doc = apply("t1", TaskEdit::Move { to: 4 }, 0);
        assert_eq!(titles(&doc), ["t2", "t3", "t4", "t5", "t1"]);
        // Body words go between words.
        let mut doc = json!({"tasks": [{"id": "a", "body": "[x] [y] "}]});
        rewrite(&mut doc, "a", &TaskEdit::Body, "m", 1 << 48);
        assert_eq!(doc["tasks"][0]["body"], "[x] [m] [y] ");
        // A task that is not there is left alone.
        assert_eq!(apply("zz", TaskEdit::Title, 0), read);
    }

    #[test]
    fn intents_guard_the_index_they_read() {
        let read = initial();
        let ops = intent(&read, "t3", &TaskEdit::Vote, "m");
        assert_eq!(
            ops,
            json!([
                {"op": "test", "path": "/tasks/2/id", "value": "t3"},
                {"op": "increment", "path": "/tasks/2/votes", "value": 1},
            ])
        );
        let ops = intent(&read, "t1", &TaskEdit::Move { to: 3 }, "m");
        assert_eq!(
            ops[1],
            json!({"op": "move", "from": "/tasks/0", "path": "/tasks/3"})
        );
        let ops = intent(&read, "m", &TaskEdit::Insert { at: 2 }, "m");
        assert_eq!(ops[0]["path"], "/tasks/-");
        assert_eq!(ops[0]["value"], new_task("m"));
        let ops = intent(&read, "t2", &TaskEdit::Body, "m");
        assert_eq!(ops[1]["insert"], "[m] ");
        assert_eq!(ops[1]["path"], "/tasks/1/body");
        // A delete removes the task as it was read, or nothing.
        let ops = intent(&read, "t5", &TaskEdit::Delete, "m");
        assert_eq!(
            ops,
            json!([
                {"op": "test", "path": "/tasks/4", "value": new_task("t5")},
                {"op": "remove", "path": "/tasks/4"},
            ])
        );
    }

    /// One write of a hand-made history: `(mark, agent, task, edit)`, its read sent and
    /// answered, its write sent, its end, and its final phase.
    struct W {
        mark: &'static str,
        agent: &'static str,
        task: &'static str,
        edit: TaskEdit,
        read: (f64, f64),
        sent: f64,
        end: f64,
        phase: Phase,
        branch: Option<u32>,
    }

    /// A write by `agent` of `edit` to `task` that read at `t`, wrote at `t + 2` and was
    /// acknowledged at `t + 3`.
    fn w(mark: &'static str, agent: &'static str, task: &'static str, edit: TaskEdit, t: f64) -> W {
        W {
            mark,
            agent,
            task,
            edit,
            read: (t, t + 1.0),
            sent: t + 2.0,
            end: t + 3.0,
            phase: Phase::Ok,
            branch: None,
        }
    }

    fn events(writes: &[W]) -> Vec<Event> {
        let mut events = Vec::new();
        for x in writes {
            let event = |phase, at_ms, effect: Effect, basis| Event {
                phase,
                agent: x.agent.into(),
                mark: x.mark.into(),
                effect,
                at_ms,
                basis,
            };
            let op = BoardOp::Title;
            events.push(event(
                Phase::Invoke,
                x.read.0,
                Effect::Board { op },
                Basis::default(),
            ));
            let basis = Basis {
                read_sent_ms: Some(x.read.0),
                read_ms: Some(x.read.1),
                sent_ms: Some(x.sent),
                branch: x.branch,
            };
            let effect = Effect::Task {
                task: x.task.into(),
                edit: x.edit.clone(),
            };
            events.push(event(x.phase, x.end, effect, basis));
        }
        events.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms));
        events
    }

    fn board(tasks: Vec<Value>) -> Value {
        json!({ "tasks": tasks })
    }

    fn task(id: &str, fields: Value) -> Value {
        let mut t = new_task(id);
        for (k, v) in fields.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    }

    fn lost(id: &str, edited_by: &[&str], deleted_by: &[&str]) -> LostEdit {
        LostEdit {
            path: "/tasks/0".into(),
            value: task(id, json!({})),
            edited_by: edited_by.iter().map(|a| a.to_string()).collect(),
            deleted_by: deleted_by.iter().map(|a| a.to_string()).collect(),
            ..LostEdit::default()
        }
    }

    /// `(silent marks, surfaced marks, silent count, surfaced count)`.
    fn split(
        writes: &[W],
        final_value: &Value,
        lost: &[LostEdit],
    ) -> (Vec<String>, Vec<String>, usize, usize) {
        let verdict = check_with_lost(&events(writes), final_value, lost);
        let mut silent = verdict.lost_marks.clone();
        let mut surfaced = verdict.surfaced_marks.clone();
        silent.sort();
        surfaced.sort();
        (silent, surfaced, verdict.lost, verdict.lost_surfaced)
    }

    fn marks(m: &[&str]) -> Vec<String> {
        m.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_edit_of_a_task_deleted_meanwhile_is_surfaced_if_listed() {
        // Both read t1 at 0; b deletes it while a sets its title and adds a word and a vote.
        let writes = [
            w("d", "b", "t1", TaskEdit::Delete, 0.0),
            w("title", "a", "t1", TaskEdit::Title, 0.0),
            w("word", "a", "t1", TaskEdit::Body, 0.5),
            w("vote", "a", "t1", TaskEdit::Vote, 0.5),
        ];
        let gone = board(vec![task("t2", json!({}))]);
        assert_eq!(
            split(&writes, &gone, &[lost("t1", &["a"], &["b"])]),
            (vec![], marks(&["title", "vote", "word"]), 0, 3)
        );
        // Not listed (a server from before lost edits, or a list that names someone else):
        // lost silently.
        assert_eq!(
            split(&writes, &gone, &[]),
            (marks(&["title", "vote", "word"]), vec![], 3, 0)
        );
        assert_eq!(
            split(&writes, &gone, &[lost("t1", &["c"], &["b"])]),
            (marks(&["title", "vote", "word"]), vec![], 3, 0)
        );
        // Matched by the task's id, not by the path: a lost edit of t2 does not count.
        assert_eq!(split(&writes, &gone, &[lost("t2", &["a"], &["b"])]).2, 3);
    }

    #[test]
    fn a_delete_that_saw_the_edit_supersedes_it() {
        // a's title is acknowledged at 3; b reads at 5 and deletes: no loss at all.
        let writes = [
            w("title", "a", "t1", TaskEdit::Title, 0.0),
            w("d", "b", "t1", TaskEdit::Delete, 5.0),
        ];
        let gone = board(vec![]);
        assert_eq!(split(&writes, &gone, &[]), (vec![], vec![], 0, 0));
        // b's read was sent while a's write was in flight: it may have seen it, so the
        // benefit of the doubt.
        let mut writes = writes;
        writes[1].read = (2.5, 3.5);
        assert_eq!(split(&writes, &gone, &[]), (vec![], vec![], 0, 0));
        // Answered before a even sent its write: certainly missed.
        writes[1].read = (0.5, 1.5);
        assert_eq!(split(&writes, &gone, &[]).2, 1);
    }

    #[test]
    fn an_edit_lost_to_a_concurrent_move_is_surfaced_if_listed() {
        // b moves t1 from a read without a's word and vote; the copy it put back lacks them.
        let writes = [
            w("move", "b", "t1", TaskEdit::Move { to: 1 }, 0.0),
            w("word", "a", "t1", TaskEdit::Body, 0.0),
            w("vote", "a", "t1", TaskEdit::Vote, 0.0),
        ];
        let moved = board(vec![task("t2", json!({})), task("t1", json!({}))]);
        assert_eq!(
            split(&writes, &moved, &[lost("t1", &["a"], &["b"])]),
            (vec![], marks(&["word"]), 0, 2)
        );
        assert_eq!(
            split(&writes, &moved, &[]),
            (marks(&["word"]), vec![], 2, 0)
        );
        // The copy has them: nothing lost.
        let kept = board(vec![task("t1", json!({"body": "[word] ", "votes": 1}))]);
        assert_eq!(split(&writes, &kept, &[]), (vec![], vec![], 0, 0));
    }

    #[test]
    fn registers_keep_one_of_two_concurrent_values_and_the_latest_otherwise() {
        let t = |title: &str| board(vec![task("t1", json!({"title": title}))]);
        // Concurrent: either may show.
        let concurrent = [
            w("x", "a", "t1", TaskEdit::Title, 0.0),
            w("y", "b", "t1", TaskEdit::Title, 0.0),
        ];
        assert_eq!(split(&concurrent, &t("x"), &[]).2, 0);
        assert_eq!(split(&concurrent, &t("y"), &[]).2, 0);
        // y read after x was acknowledged: showing x loses y; showing the first title (or
        // a title nobody wrote) loses both.
        let sequential = [
            w("x", "a", "t1", TaskEdit::Title, 0.0),
            w("y", "b", "t1", TaskEdit::Title, 5.0),
        ];
        assert_eq!(split(&sequential, &t("y"), &[]), (vec![], vec![], 0, 0));
        assert_eq!(
            split(&sequential, &t("x"), &[]),
            (marks(&["y"]), vec![], 1, 0)
        );
        assert_eq!(split(&sequential, &t("t1"), &[]).0, marks(&["x", "y"]));
        assert_eq!(split(&sequential, &t("zz"), &[]).0, marks(&["x", "y"]));
        // done is judged by value: the latest write of the value shown excuses the most.
        let done = [
            w("on", "a", "t1", TaskEdit::Done { value: true }, 0.0),
            w("off", "b", "t1", TaskEdit::Done { value: false }, 5.0),
            w("on2", "a", "t1", TaskEdit::Done { value: true }, 10.0),
        ];
        let shows = |v: bool| board(vec![task("t1", json!({"done": v}))]);
        assert_eq!(split(&done, &shows(true), &[]).2, 0);
        assert_eq!(split(&done, &shows(false), &[]).0, marks(&["on2"]));
        // An unknown write of the value shown may be what shows.
        let mut unknown = done;
        unknown[2].phase = Phase::Unknown;
        assert_eq!(split(&unknown, &shows(true), &[]).2, 0);
    }

    #[test]
    fn writes_on_different_branches_never_saw_each_other() {
        // On the shared document, y read after x was acknowledged: showing x loses y.
        let mut writes = [
            w("x", "a", "t1", TaskEdit::Title, 0.0),
            w("y", "b", "t1", TaskEdit::Title, 5.0),
        ];
        let shows_x = board(vec![task("t1", json!({"title": "x"}))]);
        assert_eq!(split(&writes, &shows_x, &[]).2, 1);
        // On two forks, merged at the end, they are concurrent: either may show.
        writes[0].branch = Some(0);
        writes[1].branch = Some(1);
        assert_eq!(split(&writes, &shows_x, &[]).2, 0);
        // A delete on another fork had not seen the edit, however late it read.
        let mut deleted = [
            w("title", "a", "t1", TaskEdit::Title, 0.0),
            w("d", "b", "t1", TaskEdit::Delete, 5.0),
        ];
        deleted[0].branch = Some(0);
        deleted[1].branch = Some(1);
        assert_eq!(split(&deleted, &board(vec![]), &[]).0, marks(&["title"]));
        // On the same fork it had.
        deleted[1].branch = Some(0);
        assert_eq!(split(&deleted, &board(vec![]), &[]).2, 0);
    }

    #[test]
    fn votes_are_counted_and_surfaced_up_to_the_listed_voters() {
        let writes = [
            w("v1", "a", "t1", TaskEdit::Vote, 0.0),
            w("v2", "b", "t1", TaskEdit::Vote, 0.0),
            w("v3", "c", "t1", TaskEdit::Vote, 0.0),
        ];
        let one = board(vec![task("t1", json!({"votes": 1}))]);
        assert_eq!(
            split(&writes, &one, &[lost("t1", &["a"], &["m"])]),
            (vec![], vec![], 1, 1)
        );
        assert_eq!(split(&writes, &one, &[]), (vec![], vec![], 2, 0));
        let three = board(vec![task("t1", json!({"votes": 3}))]);
        assert_eq!(split(&writes, &three, &[]), (vec![], vec![], 0, 0));
    }

    #[test]
    fn inserts_deletes_and_copies() {
        // An insert erased without a delete is lost; one deleted later is not.
        let insert = [w("n", "a", "n", TaskEdit::Insert { at: 0 }, 0.0)];
        assert_eq!(
            split(&insert, &board(vec![]), &[]),
            (marks(&["n"]), vec![], 1, 0)
        );
        let deleted = [
            w("n", "a", "n", TaskEdit::Insert { at: 0 }, 0.0),
            w("d", "b", "n", TaskEdit::Delete, 5.0),
        ];
        assert_eq!(split(&deleted, &board(vec![]), &[]).2, 0);
        // A task back after an acknowledged delete lost the delete.
        let present = board(vec![new_task("n")]);
        assert_eq!(split(&deleted, &present, &[]).0, marks(&["d"]));
        // A failed delete did not happen: an insert it would have removed is still lost.
        let mut failed = deleted;
        failed[1].phase = Phase::Fail;
        assert_eq!(split(&failed, &board(vec![]), &[]).0, marks(&["n"]));
        // A task put back twice (two moves at once) passes if one copy has the edit.
        let writes = [w("word", "a", "t1", TaskEdit::Body, 0.0)];
        let copies = board(vec![
            task("t1", json!({})),
            task("t1", json!({"body": "[word] "})),
        ]);
        assert_eq!(split(&writes, &copies, &[]).2, 0);
    }

    #[test]
    fn lost_edits_are_read_from_the_answer() {
        let answer = json!({"id": "d", "version": "v", "value": {}, "conflicts": [], "lost": [{
            "id": "ab12", "path": "/tasks/1", "deleted_by": ["b"], "edited_by": ["a"],
            "value": {"id": "t1"}, "change": "cd34", "time": 7,
        }]});
        let lost = LostEdit::from_answer(&answer).unwrap();
        assert_eq!(lost.len(), 1);
        assert_eq!(
            (lost[0].edited_by.as_slice(), lost[0].time),
            (&["a".to_owned()][..], Some(7))
        );
        // A server from before lost edits answers none.
        assert_eq!(LostEdit::from_answer(&json!({"value": {}})), Ok(vec![]));
        assert!(LostEdit::from_answer(&json!({"lost": 3})).is_err());
    }
}
