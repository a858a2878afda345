//! The lesson's timeline, exactly and deterministically: A reads at T=1, B reads at T=2,
//! B writes at T=4, A writes at T=5, once per strategy. The steps run one after another in
//! that order (no think-time luck), and the checker says what became of B's write.

use std::fmt::Write as _;

use concord_core::Strategy;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::history::{check, Effect, Phase, Recorder};
use super::wire::{Reply, Wire};
use super::workload::{intent, rewrite, Workload};
use super::CompareError;

/// Every strategy's run of the scenario (`GET /v1/compare/scenario`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// In the order of [`Strategy::ALL`].
    pub strategies: Vec<ScenarioRun>,
}

/// One strategy's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioRun {
    /// The strategy.
    pub strategy: Strategy,
    /// What happened to B's write, in words.
    pub outcome: String,
    /// Acknowledged writes absent at the end.
    pub lost: usize,
    /// What happened, step by step.
    pub timeline: Vec<Moment>,
}

/// One step of a timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Moment {
    /// The lesson's clock (T=1, T=2, …).
    pub t: u32,
    /// Who acted: `A`, `B`, or `check`.
    pub actor: String,
    /// What they did: `read`, `write`, `lock`, …
    pub action: String,
    /// What came of it.
    pub detail: String,
}

const A_ITEM: &str = "A's finding";
const B_ITEM: &str = "B's finding";

fn items(value: Option<&Value>) -> String {
    let items = value.map_or(Value::Null, |v| v["items"].clone());
    format!("items = {items}")
}

/// One strategy's scenario being played.
struct Play {
    wire: Wire,
    doc: String,
    recorder: Recorder,
    timeline: Vec<Moment>,
}

impl Play {
    async fn new(wire: &Wire, strategy: Strategy) -> Result<Play, CompareError> {
        let doc = super::run::create(wire, Workload::List, strategy).await?;
        Ok(Play {
            wire: wire.clone(),
            doc,
            recorder: Recorder::new(),
            timeline: Vec::new(),
        })
    }

    fn note(&mut self, t: u32, actor: &str, action: &str, detail: impl Into<String>) {
        self.timeline.push(Moment {
            t,
            actor: actor.into(),
            action: action.into(),
            detail: detail.into(),
        });
    }

    /// The agent sets out to write its finding.
    fn invoke(&self, actor: &str) {
        self.recorder
            .record(Phase::Invoke, actor, item(actor), &Effect::Append);
    }

    /// The agent's write ended as `reply` says.
    fn complete(&self, actor: &str, reply: &Reply) {
        let phase = match reply {
            Reply::Done { .. } => Phase::Ok,
            Reply::Refused { .. } => Phase::Fail,
            Reply::Unknown(_) => Phase::Unknown,
        };
        self.recorder
            .record(phase, actor, item(actor), &Effect::Append);
    }

    /// Reads `doc` as `actor` at `t`: its value and version.
    async fn read(&mut self, t: u32, actor: &str, doc: &str) -> (Value, String) {
        let reply = self.wire.read(doc, actor).await;
        self.note(t, actor, "read", items(reply.value()));
        (
            reply.value().cloned().unwrap_or(Value::Null),
            reply.version().unwrap_or_default(),
        )
    }

    /// PUTs `read` with the actor's finding appended, against `version`.
    async fn put(
        &mut self,
        t: u32,
        actor: &str,
        doc: &str,
        (read, version): &(Value, String),
        lock: Option<&str>,
    ) -> Reply {
        let value = rewrite(read, &Effect::Append, item(actor), actor, 0);
        let reply = self.wire.put(doc, actor, version, lock, &value).await;
        let detail = match &reply {
            Reply::Done { .. } => format!("{} → {}", reply.summary(), items(reply.value())),
            other => other.summary(),
        };
        self.note(t, actor, "write", detail);
        reply
    }

    /// Reads the document at the end and checks the history against it.
    async fn finish(mut self, t: u32, strategy: Strategy) -> ScenarioRun {
        let last = self.wire.read(&self.doc, "check").await;
        let value = last.value().cloned().unwrap_or(Value::Null);
        let verdict = check(&self.recorder.events(), &value);
        let lost = if verdict.lost_marks.is_empty() {
            "nothing lost".to_owned()
        } else {
            format!("lost: {}", verdict.lost_marks.join(", "))
        };
        self.note(
            t,
            "check",
            "final",
            format!("{}; {lost}", items(Some(&value))),
        );
        let expected = usize::from(strategy == Strategy::Lww);
        let outcome = outcome(strategy);
        ScenarioRun {
            strategy,
            outcome: if verdict.lost == expected {
                outcome.to_owned()
            } else {
                format!("unexpected ({} lost): {outcome}", verdict.lost)
            },
            lost: verdict.lost,
            timeline: self.timeline,
        }
    }
}

fn item(actor: &str) -> &'static str {
    if actor == "A" {
        A_ITEM
    } else {
        B_ITEM
    }
}

/// What the strategy does to B's write, in the lesson's words.
fn outcome(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Lww => "erased: B's write was acknowledged at T=4, then silently overwritten by A's stale copy at T=5",
        Strategy::Optimistic => "A gets 412 and retries: A's write from its stale read is refused; A reads again, sees B's write and writes on top of it",
        Strategy::Lock => "A waits for B: A reads only once B has released the lease, so A builds on B's write",
        Strategy::Queue => "serialized: the single writer applies B's intent, then A's",
        Strategy::Branches => "merged at the end: each agent edits its own fork, and both forks are merged into the document afterwards",
        Strategy::Crdt => "merged: A's write is applied at the version A read and merged with B's",
    }
}

/// Plays the scenario through every strategy against the server at `url`.
pub async fn seed_scenario(url: &str) -> Result<ScenarioReport, CompareError> {
    let wire = Wire::new(url);
    let mut strategies = Vec::new();
    for strategy in Strategy::ALL {
        strategies.push(play(&wire, strategy).await?);
    }
    Ok(ScenarioReport { strategies })
}

async fn play(wire: &Wire, strategy: Strategy) -> Result<ScenarioRun, CompareError> {
    let mut p = Play::new(wire, strategy).await?;
    let doc = p.doc.clone();
    match strategy {
        Strategy::Crdt | Strategy::Lww => {
            p.invoke("A");
            let a = p.read(1, "A", &doc).await;
            p.invoke("B");
            let b = p.read(2, "B", &doc).await;
            let reply = p.put(4, "B", &doc, &b, None).await;
            p.complete("B", &reply);
            let reply = p.put(5, "A", &doc, &a, None).await;
            p.complete("A", &reply);
            Ok(p.finish(6, strategy).await)
        }
        Strategy::Optimistic => {
            p.invoke("A");
            let a = p.read(1, "A", &doc).await;
            p.invoke("B");
            let b = p.read(2, "B", &doc).await;
            let reply = p.put(4, "B", &doc, &b, None).await;
            p.complete("B", &reply);
            let mut reply = p.put(5, "A", &doc, &a, None).await;
            if reply.status() == 412 {
                let again = p.read(6, "A", &doc).await;
                reply = p.put(7, "A", &doc, &again, None).await;
            }
            p.complete("A", &reply);
            Ok(p.finish(8, strategy).await)
        }
        Strategy::Lock => play_lock(p).await,
        Strategy::Queue => {
            p.invoke("A");
            p.read(1, "A", &doc).await;
            p.invoke("B");
            p.read(2, "B", &doc).await;
            for (t, actor) in [(4, "B"), (5, "A")] {
                let ops = intent(&Value::Null, &Effect::Append, item(actor), actor);
                let reply = p.wire.patch(&doc, actor, &ops).await;
                let detail = format!(
                    "add /items/- → {}: {}",
                    reply.summary(),
                    items(reply.value())
                );
                p.note(t, actor, "intent", detail);
                p.complete(actor, &reply);
            }
            Ok(p.finish(6, strategy).await)
        }
        Strategy::Branches => {
            let mut forks = Vec::new();
            for (t, actor) in [(1, "A"), (2, "B")] {
                p.invoke(actor);
                let fork = p.wire.fork(&doc, actor).await;
                let id = fork
                    .body()
                    .and_then(|b| b["id"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                p.note(
                    t,
                    actor,
                    "fork",
                    format!("{}: its own copy", fork.summary()),
                );
                let read = p.read(t, actor, &id).await;
                forks.push((actor, id, read));
            }
            // B writes its fork at T=4, A at T=5: acknowledged by the fork, in effect in
            // the document only once merged.
            for (t, (actor, fork, read)) in [(4, &forks[1]), (5, &forks[0])] {
                let reply = p.put(t, actor, fork, read, None).await;
                p.complete(actor, &reply);
            }
            let main = p.wire.read(&doc, "check").await;
            let detail = format!(
                "the document still has {}: forks are isolated",
                items(main.value())
            );
            p.note(6, "A+B", "look", detail);
            for (actor, fork, _) in &forks {
                let reply = p.wire.merge(&doc, fork, actor).await;
                let detail = format!("{} → {}", reply.summary(), items(reply.value()));
                p.note(6, actor, "merge", detail);
                p.wire.delete(fork).await;
            }
            Ok(p.finish(7, strategy).await)
        }
    }
}

/// Lock: B takes the lease first; A, wanting to read, has to wait for B to release it.
async fn play_lock(mut p: Play) -> Result<ScenarioRun, CompareError> {
    let doc = p.doc.clone();
    let ttl_ms = 60_000;
    p.invoke("B");
    let b_lock = p.wire.lock(&doc, "B", ttl_ms, 0).await;
    let b_token = b_lock
        .body()
        .and_then(|b| b["token"].as_str())
        .unwrap_or("")
        .to_owned();
    p.note(
        1,
        "B",
        "lock",
        format!("{}: B holds the lease (token {b_token})", b_lock.summary()),
    );
    p.invoke("A");
    let refused = p.wire.lock(&doc, "A", ttl_ms, 0).await;
    p.note(
        1,
        "A",
        "lock",
        format!("{}: B holds it; A waits before reading", refused.summary()),
    );
    // A's request waits on the server (wait_ms) while B works; it can be granted only
    // once B releases, whenever it reaches the server.
    let waiting = {
        let (wire, doc) = (p.wire.clone(), doc.clone());
        tokio::spawn(async move {
            let asked = std::time::Instant::now();
            let reply = wire.lock(&doc, "A", ttl_ms, 30_000).await;
            (reply, asked.elapsed())
        })
    };
    let b = p.read(2, "B", &doc).await;
    let reply = p.put(4, "B", &doc, &b, Some(&b_token)).await;
    p.complete("B", &reply);
    let released = p.wire.unlock(&doc, "B", &b_token).await;
    p.note(4, "B", "unlock", released.summary());
    let (a_lock, waited) = waiting
        .await
        .map_err(|e| CompareError::Server(format!("A's lock request failed: {e}")))?;
    let a_token = a_lock
        .body()
        .and_then(|b| b["token"].as_str())
        .unwrap_or("")
        .to_owned();
    p.note(
        5,
        "A",
        "lock",
        format!(
            "{} after waiting {} ms (token {a_token})",
            a_lock.summary(),
            waited.as_millis()
        ),
    );
    let a = p.read(5, "A", &doc).await;
    let reply = p.put(5, "A", &doc, &a, Some(&a_token)).await;
    p.complete("A", &reply);
    let released = p.wire.unlock(&doc, "A", &a_token).await;
    p.note(5, "A", "unlock", released.summary());
    Ok(p.finish(6, Strategy::Lock).await)
}

impl ScenarioReport {
    /// The timelines, for people.
    pub fn text(&self) -> String {
        let mut out = String::from(
            "The lesson's timeline: A reads at T=1, B reads at T=2, B writes at T=4, A writes at T=5.\n",
        );
        for run in &self.strategies {
            let _ = writeln!(
                out,
                "\n{} (lost {}): {}",
                run.strategy, run.lost, run.outcome
            );
            for m in &run.timeline {
                let _ = writeln!(
                    out,
                    "  T={:<2} {:<6} {:<7} {}",
                    m.t, m.actor, m.action, m.detail
                );
            }
        }
        out
    }
}
