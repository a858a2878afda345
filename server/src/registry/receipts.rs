//! Receipts: who the server received each change from, and when, by its own account (the
//! agent it authenticated, or the one the request named, and its clock), whatever the
//! change's note claims. Each write records one per new change, stored beside the change
//! in the same batch; a document in memory keeps them by change hash, for history.

use std::collections::HashMap;

use automerge::ChangeHash;
use concord_core::doc::HistoryEntry;
use concord_core::storage::{Receipt, StoredChange};
use concord_core::value::Conflict;
use concord_core::{WriteMeta, WriteOutcome};

use super::Loaded;

/// The receipts of a document's changes, by change hash. A change has at most one: the
/// first recorded stays.
#[derive(Debug, Clone, Default)]
pub struct Receipts(HashMap<ChangeHash, Receipt>);

impl Receipts {
    /// The receipts a store read back (a load, or what a catch-up brings).
    pub(super) fn from_stored(stored: Vec<([u8; 32], Receipt)>) -> Receipts {
        let mut receipts = Receipts::default();
        receipts.add(stored);
        receipts
    }

    /// Adds receipts, keeping the first one of each change.
    pub(super) fn add(&mut self, stored: impl IntoIterator<Item = ([u8; 32], Receipt)>) {
        for (hash, receipt) in stored {
            self.0.entry(ChangeHash(hash)).or_insert(receipt);
        }
    }

    /// Adds the receipts of changes a write stores.
    pub(super) fn record(&mut self, changes: &[StoredChange]) {
        for change in changes {
            if let Some(receipt) = &change.receipt {
                self.0
                    .entry(ChangeHash(change.hash))
                    .or_insert_with(|| receipt.clone());
            }
        }
    }

    /// The receipt of a change, if the server recorded one.
    pub fn get(&self, hash: &ChangeHash) -> Option<&Receipt> {
        self.0.get(hash)
    }

    /// Names the writer of each conflicting value as the server received its change (a
    /// value whose change has no receipt keeps the agent its note claims).
    pub fn attribute(&self, conflicts: &mut [Conflict]) {
        for value in conflicts.iter_mut().flat_map(|c| c.values.iter_mut()) {
            let receipt = value
                .change
                .as_deref()
                .and_then(|hash| hash.parse::<ChangeHash>().ok())
                .and_then(|hash| self.get(&hash));
            if let Some(receipt) = receipt {
                value.agent = Some(receipt.agent.clone());
            }
        }
    }

    /// How many changes have one.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no change has one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The new changes of a write in storage form, each with its receipt: the writer's (its
/// agent, the server's time of the request), or, for changes copied from another document
/// (a fork, or a fork merged back), the receipt they have there (none if they have none
/// there: a copy does not make the copier their sender).
pub(super) fn received(
    outcome: &WriteOutcome,
    write: &WriteMeta,
    inherited: Option<&Receipts>,
) -> Vec<StoredChange> {
    outcome
        .changes
        .iter()
        .map(|change| {
            let mut stored = concord_core::doc::stored(change);
            stored.receipt = match inherited {
                Some(from) => from.get(&change.hash()).cloned(),
                None => Some(Receipt {
                    agent: write.agent.clone(),
                    at_ms: write.time_ms,
                }),
            };
            stored
        })
        .collect()
}

impl Loaded {
    /// The document's history as the server received it: each change's agent and time
    /// from its receipt (its claim kept beside), sorted by the time received.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.doc.history_received(|hash| {
            self.receipts
                .get(hash)
                .map(|receipt| (receipt.agent.as_str(), receipt.at_ms))
        })
    }
}
