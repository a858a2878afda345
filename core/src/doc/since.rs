//! A document's raw changes after a version: all at once ([`Document::changes_since`]) or a
//! few at a time ([`ChangesSince`]), so that sending a long history holds one batch of it.

use automerge::{ChangeHash, ReadDoc};

use super::Document;
use crate::error::{Error, Result};
use crate::version::Version;

impl Document {
    /// Raw changes after `since` (all of them if `None`), concatenated: loadable with
    /// `Automerge::load_incremental` or [`Document::apply_changes`]. Builds every change
    /// at once; [`Document::changes_since_cursor`] reads them a batch at a time.
    pub fn changes_since(&self, since: Option<&Version>) -> Result<Vec<u8>> {
        let have = self.have(since)?;
        Ok(self
            .doc
            .get_changes(&have)
            .iter()
            .flat_map(|c| c.raw_bytes().to_vec())
            .collect())
    }

    /// The changes after `since` (all of them if `None`) as a cursor that reads them a batch
    /// at a time, in the order [`Document::changes_since`] concatenates them. It holds their
    /// hashes only (32 bytes a change), and as a document's changes never go away it stays
    /// valid while the document takes more.
    pub fn changes_since_cursor(&self, since: Option<&Version>) -> Result<ChangesSince> {
        let have = self.have(since)?;
        let hashes = self
            .doc
            .get_changes_meta(&have)
            .into_iter()
            .map(|m| m.hash)
            .collect();
        Ok(ChangesSince { hashes, next: 0 })
    }

    fn have(&self, since: Option<&Version>) -> Result<Vec<ChangeHash>> {
        match since {
            Some(v) => {
                self.check_version(v)?;
                Ok(v.heads().to_vec())
            }
            None => Ok(Vec::new()),
        }
    }
}

/// Changes of a document still to read, in causal order (see
/// [`Document::changes_since_cursor`]).
#[derive(Debug, Clone)]
pub struct ChangesSince {
    hashes: Vec<ChangeHash>,
    next: usize,
}

impl ChangesSince {
    /// How many changes are left to read.
    pub fn remaining(&self) -> usize {
        self.hashes.len() - self.next
    }

    /// The next changes' raw bytes, concatenated: changes are added until they hold
    /// `max_bytes` or more (so a batch passes it by less than one change). `None` once
    /// every change is read. `doc` must be the document (or a later state of it) the cursor was made from:
    /// a change it lacks is an error.
    pub fn next_batch(&mut self, doc: &Document, max_bytes: usize) -> Result<Option<Vec<u8>>> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let mut out = Vec::new();
        while let Some(hash) = self.hashes.get(self.next) {
            let change = doc
                .doc
                .get_change_by_hash(hash)
                .ok_or_else(|| Error::UnknownVersion(hash.to_string()))?;
            out.extend_from_slice(change.raw_bytes());
            self.next += 1;
            if out.len() >= max_bytes {
                break;
            }
        }
        Ok(Some(out))
    }
}
