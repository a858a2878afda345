//! The history of a run and its checker, in the style of Jepsen: every write is recorded
//! when it is invoked and when it completes (ok, fail, or unknown when the answer never
//! came), each under a unique mark. After the agents finish, the final document is read
//! and every acknowledged write is looked for. Lost = acknowledged and absent.
//!
//! A write missing from the final value is *lost silently*, unless the document lists it
//! among its lost edits (`GET /v1/docs/{id}?conflicts=true` answers them as `lost`: edits
//! of a value that a concurrent write deleted): then it is *lost but surfaced*, kept where
//! someone can see it and restore it.
//!
//! [`check`] and [`check_with_lost`] are pure functions of the history and the final
//! document.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::board::{self, BoardOp, TaskEdit};
use super::workload::text_token;

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The agent set out to write.
    Invoke,
    /// The write was acknowledged (2xx).
    Ok,
    /// The write was refused or never sent: it did not happen.
    Fail,
    /// No answer (a dropped connection, a timeout, a 5xx): it may or may not have happened.
    Unknown,
}

/// What a write puts in the document, and so where the checker looks for its mark.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Effect {
    /// The mark is appended to `/items`.
    Append,
    /// `/count` goes up by one (a counter holds no marks: the checker compares totals).
    Increment,
    /// `/fields/{key}` is set to the mark: a register its agent owns. A later write of the
    /// same field supersedes an earlier one; that is not a loss.
    Field {
        /// The field's key (the agent's name).
        key: String,
    },
    /// The word `[mark] ` is inserted into `/text`.
    Text,
    /// A board write as drawn, before the agent read which tasks there are; recorded at
    /// invoke, and at completion if the write never got as far as choosing its task.
    Board {
        /// What it sets out to do.
        op: BoardOp,
    },
    /// A board write bound to the task `task` (see [`board`]).
    Task {
        /// The task's id.
        task: String,
        /// What the write does to it.
        edit: TaskEdit,
    },
}

/// What a write was made from: which copy of the document it read and wrote, when it read
/// and when it wrote, in milliseconds since the run started. What the checker needs to tell
/// whether one write could have seen another. Recorded with a write's completion; unknown
/// times are bounded by its invoke and completion times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Basis {
    /// When the read the write was computed from was sent.
    pub read_sent_ms: Option<f64>,
    /// When that read was answered.
    pub read_ms: Option<f64>,
    /// When the write (its last attempt) was sent.
    pub sent_ms: Option<f64>,
    /// The private copy (the agent's fork, for branches) the write read and wrote, if not
    /// the shared document: writes on different copies never see each other.
    pub branch: Option<u32>,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Invoke, then ok, fail or unknown.
    pub phase: Phase,
    /// Who wrote.
    pub agent: String,
    /// The write's unique mark.
    pub mark: String,
    /// What the write does.
    pub effect: Effect,
    /// Milliseconds since the run started.
    pub at_ms: f64,
    /// On a completion: what its write was made from.
    pub basis: Basis,
}

/// A history being recorded by many agents at once.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            events: Arc::default(),
        }
    }

    /// Milliseconds since the history started.
    pub fn now_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }

    /// Records an event now; returns its time.
    pub fn record(&self, phase: Phase, agent: &str, mark: &str, effect: &Effect) -> f64 {
        self.complete(phase, agent, mark, effect, Basis::default())
    }

    /// Records an event now with what its write was made from; returns its time.
    pub fn complete(
        &self,
        phase: Phase,
        agent: &str,
        mark: &str,
        effect: &Effect,
        basis: Basis,
    ) -> f64 {
        let mut events = self.events.lock().expect("no recorder panics");
        // The time is read under the lock, so that the history is in time order.
        let at_ms = self.now_ms();
        events.push(Event {
            phase,
            agent: agent.to_owned(),
            mark: mark.to_owned(),
            effect: effect.clone(),
            at_ms,
            basis,
        });
        at_ms
    }

    /// The history so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("no recorder panics").clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// One edit the server reports as lost (`lost` in `GET /v1/docs/{id}?conflicts=true`):
/// a value deleted by one write while others edited it; their edits are no longer visible.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LostEdit {
    /// The lost edit's id.
    #[serde(default)]
    pub id: String,
    /// Where the value was (JSON Pointer, as of the version the deleting write read).
    #[serde(default)]
    pub path: String,
    /// The agents whose writes deleted it.
    #[serde(default)]
    pub deleted_by: Vec<String>,
    /// The agents whose edits of it are no longer visible.
    #[serde(default)]
    pub edited_by: Vec<String>,
    /// The deleted value, with those edits.
    #[serde(default)]
    pub value: Value,
    /// The change that deleted it.
    #[serde(default)]
    pub change: String,
    /// When, in ms since the epoch.
    #[serde(default)]
    pub time: Option<i64>,
}

impl LostEdit {
    /// The lost edits of a `GET /v1/docs/{id}?conflicts=true` answer; none if the answer
    /// has no `lost` (servers from before lost edits).
    pub fn from_answer(answer: &Value) -> Result<Vec<LostEdit>, String> {
        match answer.get("lost") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(lost) => serde_json::from_value(lost.clone())
                .map_err(|e| format!("the document's lost edits are not a list of edits: {e}")),
        }
    }
}

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Writes acknowledged (ok).
    pub acknowledged: usize,
    /// Writes that definitely did not happen.
    pub failed: usize,
    /// Writes whose fate is unknown (they may be in the document or not; never counted lost).
    pub unknown: usize,
    /// Acknowledged writes absent from the final document and not surfaced: lost silently.
    pub lost: usize,
    /// The marks of the silently lost writes that can be named (a counter's losses cannot).
    pub lost_marks: Vec<String>,
    /// Acknowledged writes absent from the final value but listed among the document's
    /// lost edits: lost, but surfaced.
    pub lost_surfaced: usize,
    /// The marks of the surfaced writes that can be named.
    pub surfaced_marks: Vec<String>,
}

/// One write of a history, as the checker sees it: its last recorded effect (a board write
/// is bound to its task at completion) and final phase.
#[derive(Debug, Clone)]
pub struct Op<'h> {
    /// The write's mark.
    pub mark: &'h str,
    /// Who wrote.
    pub agent: &'h str,
    /// What it did.
    pub effect: &'h Effect,
    /// Ok, fail or unknown (invoked and never completed counts as unknown).
    pub phase: Phase,
    /// When it was invoked.
    pub invoked_ms: f64,
    /// When it completed, if it did.
    pub ended_ms: Option<f64>,
    /// What its write was made from.
    pub basis: Basis,
}

impl Op<'_> {
    /// The latest time this write can have taken effect.
    pub fn effect_by(&self) -> f64 {
        self.ended_ms.unwrap_or(f64::INFINITY)
    }

    /// Certainly saw `other`: `other` was acknowledged, on the same copy of the document,
    /// before this write's read was sent, so the version this write was made from holds it.
    pub fn saw(&self, other: &Op<'_>) -> bool {
        let read_sent = self.basis.read_sent_ms.unwrap_or(self.invoked_ms);
        self.basis.branch == other.basis.branch
            && other.phase == Phase::Ok
            && other.effect_by() < read_sent
    }

    /// Certainly missed `other`: it was written on another copy of the document, or this
    /// write's read was answered before `other` was sent.
    pub fn missed(&self, other: &Op<'_>) -> bool {
        let read = self.basis.read_ms.unwrap_or(self.effect_by());
        self.basis.branch != other.basis.branch
            || read < other.basis.sent_ms.unwrap_or(other.invoked_ms)
    }
}

/// The writes of `history`, one per mark, in invoke order.
pub fn ops(history: &[Event]) -> Vec<Op<'_>> {
    let mut ops: Vec<Op<'_>> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for event in history {
        match at.get(event.mark.as_str()) {
            None => {
                at.insert(&event.mark, ops.len());
                ops.push(Op {
                    mark: &event.mark,
                    agent: &event.agent,
                    effect: &event.effect,
                    phase: if event.phase == Phase::Invoke {
                        Phase::Unknown
                    } else {
                        event.phase
                    },
                    invoked_ms: event.at_ms,
                    ended_ms: None,
                    basis: event.basis,
                });
            }
            Some(&i) => {
                let op = &mut ops[i];
                if event.phase != Phase::Invoke {
                    op.phase = event.phase;
                    op.ended_ms = Some(event.at_ms);
                    op.basis = event.basis;
                    op.effect = &event.effect;
                }
            }
        }
    }
    ops
}

/// Looks for every acknowledged write of `history` in `final_value`, the document read
/// after every agent finished, with no lost edits to consult: see [`check_with_lost`].
pub fn check(history: &[Event], final_value: &Value) -> Verdict {
    check_with_lost(history, final_value, &[])
}

/// Looks for every acknowledged write of `history` in `final_value`, the document read
/// after every agent finished, and in `lost`, the edits the document reports lost.
///
/// - an appended item or a text word is present if its mark is there;
/// - a field write is present if the field holds its mark or the mark of a later write of
///   the same field (superseded by its own agent, not lost);
/// - counter increments are present up to the counter's value: with `a` acknowledged
///   increments and a final count `c` (the count starts at 0), `max(0, a - c)` are lost.
///   Increments of unknown fate may hide that many losses, as in Jepsen's counter check;
/// - board writes as [`board::check`] says, the only ones a lost edit can surface.
pub fn check_with_lost(history: &[Event], final_value: &Value, lost: &[LostEdit]) -> Verdict {
    let ops = ops(history);
    let mut verdict = Verdict::default();
    let mut increments = 0i64;
    // For each field, its acknowledged writes (in order) and the order of every write.
    let mut fields: HashMap<&str, Vec<&str>> = HashMap::new();
    for op in &ops {
        let mark = op.mark;
        match op.phase {
            Phase::Ok => verdict.acknowledged += 1,
            Phase::Fail => {
                verdict.failed += 1;
                continue;
            }
            Phase::Unknown | Phase::Invoke => {
                verdict.unknown += 1;
                if let Effect::Field { key } = op.effect {
                    fields.entry(key.as_str()).or_default().push(mark);
                }
                continue;
            }
        }
        let present = match op.effect {
            Effect::Append => final_value["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i.as_str() == Some(mark))),
            Effect::Text => final_value["text"]
                .as_str()
                .is_some_and(|t| t.contains(text_token(mark).trim_end())),
            Effect::Increment => {
                increments += 1;
                true
            }
            Effect::Field { key } => {
                fields.entry(key.as_str()).or_default().push(mark);
                true
            }
            // Judged below, all together.
            Effect::Board { .. } | Effect::Task { .. } => true,
        };
        if !present {
            verdict.lost_marks.push(mark.to_owned());
        }
    }
    let phase: HashMap<&str, Phase> = ops.iter().map(|op| (op.mark, op.phase)).collect();
    // Fields: the writes after the one the field shows are lost (if acknowledged).
    for (key, marks) in &fields {
        let shown = final_value["fields"][*key].as_str();
        let kept_up_to = shown.and_then(|s| marks.iter().position(|m| *m == s));
        let after = kept_up_to.map_or(0, |i| i + 1);
        for mark in &marks[after..] {
            if phase.get(mark) == Some(&Phase::Ok) {
                verdict.lost_marks.push((*mark).to_owned());
            }
        }
    }
    let board = board::check(&ops, final_value, lost);
    verdict.lost_marks.extend(board.silent);
    verdict.surfaced_marks = board.surfaced;
    let counted = final_value["count"].as_i64().unwrap_or(0);
    let counter_lost = (increments - counted).max(0) as usize;
    verdict.lost = verdict.lost_marks.len() + counter_lost + board.silent_votes;
    verdict.lost_surfaced = verdict.surfaced_marks.len() + board.surfaced_votes;
    verdict
}

/// The `p`-th percentile (0..=100) of `values` by nearest rank; 0 for none.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A history of writes, each `(mark, effect, final phase)`, all by one agent.
    fn history(ops: &[(&str, Effect, Phase)]) -> Vec<Event> {
        let event = |phase, mark: &str, effect: &Effect| Event {
            phase,
            agent: "a".into(),
            mark: mark.into(),
            effect: effect.clone(),
            at_ms: 0.0,
            basis: Basis::default(),
        };
        ops.iter()
            .flat_map(|(mark, effect, end)| {
                [
                    event(Phase::Invoke, mark, effect),
                    event(*end, mark, effect),
                ]
            })
            .collect()
    }

    fn field(key: &str) -> Effect {
        Effect::Field { key: key.into() }
    }

    /// `(history, final value, expected lost marks, expected lost count)`.
    type Case = (
        Vec<(&'static str, Effect, Phase)>,
        Value,
        Vec<&'static str>,
        usize,
    );

    #[test]
    fn checker_table() {
        use Effect::*;
        use Phase::*;
        let cases: Vec<Case> = vec![
            // Everything acknowledged is there.
            (
                vec![("m1", Append, Ok), ("m2", Append, Ok)],
                json!({"items": ["m2", "m1"]}),
                vec![],
                0,
            ),
            // A lost write planted on purpose: acknowledged, absent.
            (
                vec![("m1", Append, Ok), ("m2", Append, Ok), ("m3", Append, Ok)],
                json!({"items": ["m1", "m3"]}),
                vec!["m2"],
                1,
            ),
            // Failed and unknown writes are never lost, present or not.
            (
                vec![
                    ("m1", Append, Fail),
                    ("m2", Append, Unknown),
                    ("m3", Append, Invoke),
                ],
                json!({"items": ["m2"]}),
                vec![],
                0,
            ),
            // Text: the word must be whole.
            (
                vec![("t1", Text, Ok), ("t2", Text, Ok)],
                json!({"text": "[t1] [t[x] 2] "}),
                vec!["t2"],
                1,
            ),
            // Counters compare totals.
            (
                vec![
                    ("c1", Increment, Ok),
                    ("c2", Increment, Ok),
                    ("c3", Increment, Ok),
                ],
                json!({"count": 1}),
                vec![],
                2,
            ),
            (
                vec![("c1", Increment, Ok), ("c2", Increment, Unknown)],
                json!({"count": 2}),
                vec![],
                0,
            ),
            // A field superseded by its own agent's later write is not lost...
            (
                vec![("f1", field("k"), Ok), ("f2", field("k"), Ok)],
                json!({"fields": {"k": "f2"}}),
                vec![],
                0,
            ),
            // ...but an older value shown after a newer acknowledged write is.
            (
                vec![
                    ("f1", field("k"), Ok),
                    ("f2", field("k"), Ok),
                    ("f3", field("k"), Ok),
                ],
                json!({"fields": {"k": "f1"}}),
                vec!["f2", "f3"],
                2,
            ),
            // A field showing a write of unknown fate keeps the writes before it.
            (
                vec![("f1", field("k"), Ok), ("f2", field("k"), Unknown)],
                json!({"fields": {"k": "f2"}}),
                vec![],
                0,
            ),
            // A field erased altogether loses its acknowledged writes.
            (
                vec![("f1", field("k"), Ok), ("g1", field("j"), Ok)],
                json!({"fields": {"j": "g1"}}),
                vec!["f1"],
                1,
            ),
        ];
        for (ops, final_value, lost_marks, lost) in cases {
            let verdict = check(&history(&ops), &final_value);
            let mut marks = verdict.lost_marks.clone();
            marks.sort();
            assert_eq!(
                (marks, verdict.lost),
                (lost_marks.iter().map(|m| m.to_string()).collect(), lost),
                "{ops:?} against {final_value}"
            );
        }
    }

    #[test]
    fn counts_each_outcome() {
        use Phase::*;
        let ops = [
            ("a", Effect::Append, Ok),
            ("b", Effect::Append, Fail),
            ("c", Effect::Append, Unknown),
            ("d", Effect::Append, Ok),
        ];
        let verdict = check(&history(&ops), &json!({"items": ["a"]}));
        assert_eq!(
            (
                verdict.acknowledged,
                verdict.failed,
                verdict.unknown,
                verdict.lost
            ),
            (2, 1, 1, 1)
        );
        assert_eq!(verdict.lost_marks, ["d"]);
    }

    #[test]
    fn recorder_keeps_time_order() {
        let recorder = Recorder::new();
        recorder.record(Phase::Invoke, "a", "m", &Effect::Append);
        recorder.record(Phase::Ok, "a", "m", &Effect::Append);
        let events = recorder.events();
        assert_eq!(events.len(), 2);
        assert!(events[0].at_ms <= events[1].at_ms);
        assert_eq!(check(&events, &json!({"items": ["m"]})).lost, 0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(percentile(&values, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
