//! Workloads: the document a team of agents starts from, the write each agent makes, and
//! the two ways of making it: the whole document as the agent rewrote it (every strategy
//! but queue), or an intent that does not depend on what the agent read (queue).

use std::fmt;
use std::str::FromStr;

use concord_core::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::board;
use super::history::Effect;

/// What the agents write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Every write appends a unique item to one shared list (`/items`).
    #[default]
    List,
    /// Every write adds one to a shared counter (`/count`).
    Counter,
    /// Every agent keeps its own field (`/fields/agent-N`) up to date, and names itself in
    /// one shared field (`/editor`): the latter is a true conflict, kept by crdt.
    Fields,
    /// Every write inserts a unique word into one collaborative text (`/text`).
    Text,
    /// Each write is one of list, counter, fields and text, chosen by the seed.
    Mix,
    /// Agents work on a list of tasks (`/tasks`): insert, delete, set a title or done, vote,
    /// add a word to a body, move a task. An edit of a task deleted meanwhile is lost:
    /// silently, or surfaced among the document's lost edits.
    Board,
}

impl Workload {
    /// Every workload.
    pub const ALL: [Workload; 6] = [
        Workload::List,
        Workload::Counter,
        Workload::Fields,
        Workload::Text,
        Workload::Mix,
        Workload::Board,
    ];

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::List => "list",
            Workload::Counter => "counter",
            Workload::Fields => "fields",
            Workload::Text => "text",
            Workload::Mix => "mix",
            Workload::Board => "board",
        }
    }

    /// The value the document starts with.
    pub fn initial(self) -> Value {
        match self {
            Workload::List => json!({"items": []}),
            Workload::Counter => json!({"count": 0}),
            Workload::Fields => json!({"fields": {}, "editor": ""}),
            Workload::Text => json!({"text": ""}),
            Workload::Mix => {
                json!({"items": [], "count": 0, "fields": {}, "editor": "", "text": ""})
            }
            Workload::Board => board::initial(),
        }
    }

    /// The body of `POST /v1/docs` that creates the document under `strategy`. The board
    /// names its tasks' identity key (`ids`); a server that does not know `ids` finds the
    /// `id` key by itself, so [`without_ids`] may drop it.
    pub fn create_body(self, strategy: Strategy) -> Value {
        match self {
            Workload::Board => json!({
                "value": self.initial(),
                "strategy": strategy,
                "text": ["/tasks/*/body"],
                "counters": ["/tasks/*/votes"],
                "ids": ["/tasks/*/id"],
            }),
            _ => json!({
                "value": self.initial(),
                "strategy": strategy,
                "text": ["/text"],
                "counters": ["/count"],
            }),
        }
    }

    /// The effect of one write by `agent`; `roll` picks the kind for the mix.
    pub fn effect(self, agent: &str, roll: u32) -> Effect {
        let kind = match self {
            Workload::Mix => [
                Workload::List,
                Workload::Counter,
                Workload::Fields,
                Workload::Text,
            ][(roll % 4) as usize],
            other => other,
        };
        match kind {
            Workload::Board => Effect::Board {
                op: board::BoardOp::from_roll(roll),
            },
            Workload::Counter => Effect::Increment,
            Workload::Fields => Effect::Field {
                key: agent.to_owned(),
            },
            Workload::Text => Effect::Text,
            Workload::List | Workload::Mix => Effect::Append,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Workload::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown workload {s:?} (expected list, counter, fields, text, mix or board)"
                )
            })
    }
}

/// The name agent `i` writes under (`Concord-Agent`), and the key of its own field.
pub fn agent_name(i: usize) -> String {
    format!("agent-{i}")
}

/// The word a text write inserts: unique, so that the checker can look for it.
pub fn text_token(mark: &str) -> String {
    format!("[{mark}] ")
}

/// `body` without its `ids` field: what an older server accepts.
pub fn without_ids(body: &Value) -> Value {
    let mut body = body.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.remove("ids");
    }
    body
}

/// The places in a text where a word may go: the start, and after every word.
pub(super) fn word_boundaries(text: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            text.char_indices()
                .filter(|(_, c)| *c == ' ')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

fn object_at<'v>(doc: &'v mut Value, key: &str) -> &'v mut serde_json::Map<String, Value> {
    if !doc[key].is_object() {
        doc[key] = json!({});
    }
    doc[key].as_object_mut().expect("made an object")
}

/// The write `effect` as it is made from `read`, the value the agent read: a board write is
/// bound to one of the tasks read (`pick` chooses); every other write is what it was.
pub fn resolve(effect: &Effect, read: &Value, mark: &str, pick: u64) -> Effect {
    match effect {
        Effect::Board { op } => board::resolve(*op, read, mark, pick),
        other => other.clone(),
    }
}

/// The whole document as `agent` rewrote it from the value it read: the write of every
/// strategy but queue. `effect` is resolved against `read` ([`resolve`]); `pick` chooses
/// where a text word goes.
pub fn rewrite(read: &Value, effect: &Effect, mark: &str, agent: &str, pick: u64) -> Value {
    let mut doc = if read.is_object() {
        read.clone()
    } else {
        json!({})
    };
    match effect {
        Effect::Append => {
            if !doc["items"].is_array() {
                doc["items"] = json!([]);
            }
            doc["items"]
                .as_array_mut()
                .expect("made a list")
                .push(json!(mark));
        }
        Effect::Increment => {
            let n = doc["count"].as_i64().unwrap_or(0);
            doc["count"] = json!(n + 1);
        }
        Effect::Field { key } => {
            object_at(&mut doc, "fields").insert(key.clone(), json!(mark));
            doc["editor"] = json!(agent);
        }
        Effect::Text => {
            let mut text = doc["text"].as_str().unwrap_or("").to_owned();
            let boundaries = word_boundaries(&text);
            let at = boundaries[(pick % boundaries.len() as u64) as usize];
            text.insert_str(at, &text_token(mark));
            doc["text"] = json!(text);
        }
        Effect::Task { task, edit } => board::rewrite(&mut doc, task, edit, mark, pick),
        // Not bound to a task yet ([`resolve`] first): it changes nothing.
        Effect::Board { .. } => {}
    }
    doc
}

/// The queue's intent: JSON Patch operations that mean the same whatever the document
/// holds when the single writer applies them. That is why a text word goes at the start:
/// a position the agent read could fall inside another agent's word by then. A board
/// write, resolved against `read`, names a task by its index in `read` and tests its id
/// there ([`board::intent`]).
pub fn intent(read: &Value, effect: &Effect, mark: &str, agent: &str) -> Value {
    match effect {
        Effect::Append => json!([{"op": "add", "path": "/items/-", "value": mark}]),
        Effect::Increment => json!([{"op": "increment", "path": "/count", "value": 1}]),
        Effect::Field { key } => json!([
            {"op": "add", "path": format!("/fields/{}", escape(key)), "value": mark},
            {"op": "add", "path": "/editor", "value": agent},
        ]),
        Effect::Text => json!([{
            "op": "splice", "path": "/text", "pos": 0, "del": 0, "insert": text_token(mark),
        }]),
        Effect::Task { task, edit } => board::intent(read, task, edit, mark),
        // Not bound to a task yet ([`resolve`] first): no operations.
        Effect::Board { .. } => json!([]),
    }
}

/// A JSON Pointer token for a key (RFC 6901: `~` → `~0`, `/` → `~1`).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_words_go_between_words() {
        let read = json!({"text": "[x] [y] "});
        let at = |pick| rewrite(&read, &Effect::Text, "m", "a", pick)["text"].clone();
        assert_eq!(at(0), "[m] [x] [y] ");
        assert_eq!(at(1), "[x] [m] [y] ");
        assert_eq!(at(2), "[x] [y] [m] ");
        assert_eq!(at(3), "[m] [x] [y] ");
    }

    #[test]
    fn rewrites_and_intents_per_effect() {
        let doc = Workload::Mix.initial();
        let field = Effect::Field {
            key: "agent-1".into(),
        };
        assert_eq!(
            rewrite(&doc, &Effect::Append, "m", "a", 0)["items"],
            json!(["m"])
        );
        assert_eq!(
            rewrite(&doc, &Effect::Increment, "m", "a", 0)["count"],
            json!(1)
        );
        let written = rewrite(&doc, &field, "m", "agent-1", 0);
        assert_eq!(written["fields"], json!({"agent-1": "m"}));
        assert_eq!(written["editor"], "agent-1");
        assert_eq!(
            intent(&doc, &field, "m", "agent-1")[0]["path"],
            "/fields/agent-1"
        );
        assert_eq!(intent(&doc, &Effect::Text, "m", "a")[0]["insert"], "[m] ");
    }

    #[test]
    fn mix_rolls_every_kind_and_names_round_trip() {
        let kinds: Vec<Effect> = (0..4).map(|r| Workload::Mix.effect("a", r)).collect();
        assert_eq!(
            kinds,
            [
                Effect::Append,
                Effect::Increment,
                Effect::Field { key: "a".into() },
                Effect::Text
            ]
        );
        for w in Workload::ALL {
            assert_eq!(w.as_str().parse::<Workload>(), Ok(w));
        }
        assert!("lists".parse::<Workload>().is_err());
    }
}
