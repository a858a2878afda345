//! What a change records: who wrote it, when and why ([`WriteMeta`]), Concord's note in the
//! change message (agent, lost edits, moves, settles), and a change as history shows it.

use automerge::transaction::CommitOptions;
use serde::Serialize;

use crate::lost::LostNote;

/// Who writes, when, and why: recorded in the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteMeta {
    /// The agent's name (`Concord-Agent`).
    pub agent: String,
    /// Milliseconds since the Unix epoch; Automerge keeps whole seconds.
    pub time_ms: i64,
    /// An optional description of the change.
    pub message: Option<String>,
}

/// One change of the history. `agent` and `time` are the server's record of who sent the
/// change and when it arrived (its receipt), whatever the change claims; what the change
/// itself claims is `claimed_agent` and `claimed_time`. A change stored before the server
/// kept receipts shows its claim in both (`recorded: false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    /// The change hash (hex).
    pub hash: String,
    /// Who the server received the change from: the agent it authenticated (with
    /// authentication on), else the `Concord-Agent` (or `?agent=`) of the request that
    /// brought it. Without a receipt, the agent the change's note claims, if any.
    pub agent: Option<String>,
    /// When the server received the change, seconds since the Unix epoch (without a
    /// receipt, the change's own time).
    pub time: i64,
    /// True if `agent` and `time` are the server's record; false for a change stored before
    /// the server kept receipts, which shows what it claims.
    pub recorded: bool,
    /// The agent the change's own note names, if any: the writer's claim.
    pub claimed_agent: Option<String>,
    /// The time the change itself carries, seconds since the Unix epoch: the writer's
    /// claim (any value a client chose).
    pub claimed_time: i64,
    /// The message recorded besides the agent, if any.
    pub message: Option<String>,
    /// The hashes this change depends on.
    pub deps: Vec<String>,
    /// How many operations it holds.
    pub ops: u64,
    /// The Automerge actor (hex) and its sequence number.
    pub actor: String,
    /// Sequence number of the change for its actor.
    pub seq: u64,
}

/// The JSON object Concord writes as a change message.
#[derive(Serialize)]
struct Note {
    agent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// Edits this change found no longer visible (see [`crate::lost`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lost: Vec<LostNote>,
    /// Lost-edit records this change settles (restored or dismissed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    settles: Vec<String>,
    /// Objects this change moved: `(old object, its copy)`, so that a concurrent delete of
    /// the old object also deletes the copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    moves: Vec<(String, String)>,
}

/// What a change's note records besides its agent and message.
#[derive(Default)]
pub(super) struct Extra {
    pub(super) lost: Vec<LostNote>,
    pub(super) settles: Vec<String>,
    pub(super) moves: Vec<(String, String)>,
}

fn encode_note(meta: &WriteMeta, extra: Extra) -> String {
    serde_json::to_string(&Note {
        agent: meta.agent.clone(),
        message: meta.message.clone(),
        lost: extra.lost,
        settles: extra.settles,
        moves: extra.moves,
    })
    .expect("a note always serializes")
}

/// The options of a commit: the note (`meta` and `extra`) and the time, in whole seconds.
pub(super) fn commit_options(meta: &WriteMeta, extra: Extra) -> CommitOptions {
    CommitOptions::default()
        .with_message(encode_note(meta, extra))
        .with_time(meta.time_ms.div_euclid(1000))
}
