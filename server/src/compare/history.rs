//! The history of a run and its checker, in the style of Jepsen: every write is recorded
//! when it is invoked and when it completes (ok, fail, or unknown when the answer never
//! came), each under a unique mark. After the agents finish, the final document is read
//! and every acknowledged write is looked for. Lost = acknowledged and absent.
//!
//! [`check`] is a pure function of the history and the final value.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

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
        let mut events = self.events.lock().expect("no recorder panics");
        // The time is read under the lock, so that the history is in time order.
        let at_ms = self.now_ms();
        events.push(Event {
            phase,
            agent: agent.to_owned(),
            mark: mark.to_owned(),
            effect: effect.clone(),
            at_ms,
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

/// What the checker found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Writes acknowledged (ok).
    pub acknowledged: usize,
    /// Writes that definitely did not happen.
    pub failed: usize,
    /// Writes whose fate is unknown (they may be in the document or not; never counted lost).
    pub unknown: usize,
    /// Acknowledged writes absent from the final document.
    pub lost: usize,
    /// The marks of the lost writes that can be named (a counter's losses cannot).
    pub lost_marks: Vec<String>,
}

/// Looks for every acknowledged write of `history` in `final_value`, the document read
/// after every agent finished.
///
/// - an appended item or a text word is present if its mark is there;
/// - a field write is present if the field holds its mark or the mark of a later write of
///   the same field (superseded by its own agent, not lost);
/// - counter increments are present up to the counter's value: with `a` acknowledged
///   increments and a final count `c` (the count starts at 0), `max(0, a - c)` are lost.
///   Increments of unknown fate may hide that many losses, as in Jepsen's counter check.
pub fn check(history: &[Event], final_value: &Value) -> Verdict {
    // Each mark's effect and final phase, in invoke order.
    let mut order: Vec<(&str, &Effect)> = Vec::new();
    let mut phase: HashMap<&str, Phase> = HashMap::new();
    for event in history {
        if event.phase == Phase::Invoke {
            order.push((&event.mark, &event.effect));
        }
        phase.insert(&event.mark, event.phase);
    }
    let mut verdict = Verdict::default();
    let mut increments = 0i64;
    // For each field, its acknowledged writes (in order) and the order of every write.
    let mut fields: HashMap<&str, Vec<&str>> = HashMap::new();
    for (mark, effect) in &order {
        match phase.get(mark) {
            Some(Phase::Ok) => verdict.acknowledged += 1,
            Some(Phase::Fail) => {
                verdict.failed += 1;
                continue;
            }
            // Invoked and never completed is as unknown as a lost answer.
            _ => {
                verdict.unknown += 1;
                if let Effect::Field { key } = effect {
                    fields.entry(key.as_str()).or_default().push(mark);
                }
                continue;
            }
        }
        let present = match effect {
            Effect::Append => final_value["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|i| i.as_str() == Some(*mark))),
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
        };
        if !present {
            verdict.lost_marks.push((*mark).to_owned());
        }
    }
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
    let counted = final_value["count"].as_i64().unwrap_or(0);
    let counter_lost = (increments - counted).max(0) as usize;
    verdict.lost = verdict.lost_marks.len() + counter_lost;
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
