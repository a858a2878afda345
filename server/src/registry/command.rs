//! The one write command. Every transport (HTTP `PUT`/`PATCH`/`POST …/changes`, the lost
//! edits' restore and dismiss, a merge of a fork, the WebSocket `put`/`patch`, a `/sync`
//! message with changes, a `/v1/repo` peer's document) builds a [`WriteCommand`] and hands
//! it to [`Registry::execute`]: the strategy's policy admits it, under the document's lock,
//! against the present; then the edit is applied and stored as every other write is.

use concord_core::patch::PatchOp;
use concord_core::sync::{SyncMessage, SyncState};

use super::*;
use concord_core::policy::{self, IfMatch, WriteKind};

/// One write, as a transport asks for it.
pub struct WriteCommand<'a> {
    /// The document written.
    pub doc: Uuid,
    /// Who writes, when (the server's clock), with which message.
    pub meta: &'a WriteMeta,
    /// The versions the writer read (`If-Match`, a WebSocket `base`), if it named any.
    pub if_match: Option<&'a IfMatch>,
    /// The lock strategy's lease token, if the writer holds one.
    pub lock: Option<u64>,
    /// What it changes.
    pub edit: Edit<'a>,
    /// What a retry with the same key must replay, if the request is idempotent.
    pub idempotency: Option<(IdempotencyDraft, Responder)>,
    /// Whether the answer carries the value.
    pub answer: Answer,
}

/// Whether a write's answer carries the document's value ([`Written::value`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The version and the value.
    Whole,
    /// The version only (`Prefer: return=minimal`): the answer holds no reference to the
    /// value, so the next write to the document changes it in place instead of copying it.
    Minimal,
}

/// What a write changes.
pub enum Edit<'a> {
    /// A whole new value, merged at the base.
    Put(&'a Value),
    /// JSON Patch operations.
    Patch(&'a [PatchOp]),
    /// An RFC 7396 merge patch.
    MergePatch(&'a Value),
    /// Raw Automerge changes, each with its dependencies (stored or among them).
    Changes(&'a [u8]),
    /// A sync message that carries changes, from a peer whose sync state this is.
    Sync {
        /// The server's sync state with the peer.
        state: &'a mut SyncState,
        /// The message.
        message: SyncMessage,
    },
    /// Every change of a peer's copy of the document that this one lacks.
    Copy(&'a Document),
    /// A fork merged back into the document it was forked from.
    MergeFork {
        /// The fork's document.
        fork: &'a Document,
        /// The fork's receipts: its changes keep them.
        receipts: &'a Receipts,
        /// The fork's id, for the refusal if it is not a fork of this document.
        id: Uuid,
    },
    /// A lost edit written back where it was.
    RestoreLost(&'a str),
    /// A lost edit's record closed, its value left deleted.
    DismissLost(&'a str),
}

impl Edit<'_> {
    /// How the strategy's policy sees this edit.
    pub fn kind(&self) -> WriteKind {
        match self {
            Edit::Put(_) => WriteKind::Put,
            Edit::Patch(_) | Edit::MergePatch(_) | Edit::RestoreLost(_) | Edit::DismissLost(_) => {
                WriteKind::Patch
            }
            Edit::Changes(_) | Edit::Sync { .. } | Edit::Copy(_) => WriteKind::Changes,
            Edit::MergeFork { .. } => WriteKind::Merge,
        }
    }

    /// What the edit's input weighs, in the unit of [`budget::LIGHT_WEIGHT`] (and counted
    /// no further than one past it): whether it may run in place (registry/budget.rs).
    fn weight(&self) -> usize {
        let cap = budget::LIGHT_WEIGHT + 1;
        let weight = match self {
            Edit::Put(value) | Edit::MergePatch(value) => budget::json_weight(value, cap),
            Edit::Patch(ops) => ops
                .iter()
                .take(cap)
                .map(|op| match op {
                    PatchOp::Add { value, .. }
                    | PatchOp::Replace { value, .. }
                    | PatchOp::Test { value, .. } => budget::json_weight(value, cap),
                    PatchOp::Splice { insert, .. } => 1 + insert.len() / 64,
                    // A subtree of any size moves or is copied.
                    PatchOp::Move { .. } | PatchOp::Copy { .. } => cap,
                    PatchOp::Remove { .. } | PatchOp::Increment { .. } => 1,
                })
                .sum(),
            Edit::Changes(bytes) => bytes.len() / 16,
            Edit::Sync { message, .. } => message.change_bytes() / 16,
            Edit::Copy(_) | Edit::MergeFork { .. } => cap,
            Edit::RestoreLost(_) | Edit::DismissLost(_) => 1,
        };
        weight.min(cap)
    }

    /// Applies the edit to `doc` at `base` (`None`: the present).
    fn apply(
        self,
        target: Uuid,
        doc: &mut Document,
        base: Option<&Version>,
        meta: &WriteMeta,
    ) -> Result<WriteOutcome, Error> {
        Ok(match self {
            Edit::Put(value) => doc.put(base, value, meta)?,
            Edit::Patch(ops) => doc.patch(base, ops, meta)?,
            Edit::MergePatch(patch) => doc.merge_patch(base, patch, meta)?,
            // Complete: a change waiting for its dependencies would be acknowledged but not
            // stored (tests/convergence.rs).
            Edit::Changes(bytes) => doc.apply_complete_changes(bytes)?,
            Edit::Sync { state, message } => doc
                .receive_sync_message(state, message)
                .map_err(|e| Error::InvalidSync(e.to_string()))?,
            Edit::Copy(copy) => doc.merge_from(copy)?,
            Edit::MergeFork { fork, id, .. } => {
                if !doc.shares_origin(fork) {
                    return Err(Refusal::NotAFork { fork: id, target }.into());
                }
                doc.merge_from(fork)?
            }
            Edit::RestoreLost(lost) => doc.restore_lost(lost, meta)?,
            Edit::DismissLost(lost) => doc.dismiss_lost(lost, meta)?,
        })
    }
}

impl Registry {
    /// Runs a write command: admitted by the document's strategy against the present,
    /// applied, stored; returns once durable (see the module docs of [`super`]).
    pub async fn execute(&self, command: WriteCommand<'_>) -> Result<Written, Error> {
        let WriteCommand {
            doc,
            meta,
            if_match,
            lock,
            edit,
            idempotency,
            answer,
        } = command;
        // Changes copied from a fork keep the receipts they have there.
        let inherited = match &edit {
            Edit::MergeFork { receipts, .. } => Some(*receipts),
            _ => None,
        };
        let weight = edit.weight();
        let written = self
            .write(doc, meta, inherited, weight, (idempotency, answer), |loaded| {
                let current = loaded.doc.version();
                let strategy = loaded.meta.strategy;
                let base = policy::admit(
                    strategy,
                    edit.kind(),
                    if_match,
                    loaded.lease.as_ref(),
                    policy::Holder {
                        agent: &meta.agent,
                        token: lock,
                    },
                    meta.time_ms,
                    &current,
                )
                .inspect_err(|refusal| {
                    metrics::counter!(crate::metrics::REFUSALS, "kind" => refusal.kind())
                        .increment(1);
                })?;
                let lost_before = loaded.doc.lost().len();
                let outcome = edit.apply(doc, &mut loaded.doc, base.as_ref(), meta)?;
                if base.as_ref().is_some_and(|b| *b != current) {
                    metrics::counter!(crate::metrics::WRITES_MERGED, "strategy" => strategy.as_str())
                        .increment(1);
                }
                let lost = loaded.doc.lost().len().saturating_sub(lost_before);
                metrics::counter!(crate::metrics::LOST_EDITS).increment(lost as u64);
                Ok::<_, Error>(outcome)
            })
            .await?;
        metrics::counter!(crate::metrics::WRITES, "strategy" => written.strategy.as_str())
            .increment(1);
        Ok(written)
    }
}
