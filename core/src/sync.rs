//! The Automerge sync protocol for a [`Document`]: how a replica elsewhere (an Automerge
//! client, the JavaScript automerge-repo, another server) and Concord bring each other up to
//! date by exchanging small binary messages, whatever each side changed meanwhile.
//!
//! One [`SyncState`] per peer and connection remembers what that peer is known to have. Each
//! side calls [`Document::generate_sync_message`] and sends what it returns (nothing means
//! "nothing to say until I hear from you or change"), and gives what it receives to
//! [`Document::receive_sync_message`], which applies the peer's changes and returns them in a
//! [`WriteOutcome`] so that the caller can store them. The two are in sync when neither has a
//! message to send.
//!
//! Changes carried by a message are checked chunk by chunk before anything is applied (as
//! [`parse_changes`] does for raw changes): a message with a torn or garbage change is refused
//! whole, where Automerge alone would apply what it could and drop the rest silently.
//!
//! # Example
//! ```
//! use concord_core::sync::SyncState;
//! use concord_core::{Document, Schema, WriteMeta};
//! use serde_json::json;
//!
//! let meta = WriteMeta { agent: "a".into(), time_ms: 0, message: None };
//! let (mut server, _) = Document::create(&json!({"n": 1}), Schema::default(), &meta).unwrap();
//! let mut replica = Document::empty(Schema::default()).unwrap();
//! let (mut on_server, mut on_replica) = (SyncState::new(), SyncState::new());
//! loop {
//!     let to_replica = server.generate_sync_message(&mut on_server);
//!     let to_server = replica.generate_sync_message(&mut on_replica);
//!     if to_replica.is_none() && to_server.is_none() {
//!         break;
//!     }
//!     if let Some(m) = to_replica {
//!         replica.receive_sync_message(&mut on_replica, m).unwrap();
//!     }
//!     if let Some(m) = to_server {
//!         server.receive_sync_message(&mut on_server, m).unwrap();
//!     }
//! }
//! assert_eq!(replica.read(None).unwrap(), json!({"n": 1}));
//! ```

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};

use automerge::sync::{Message, State, SyncDoc};
use automerge::{Automerge, Change, ChangeHash, PatchLog, ReadDoc};

use crate::doc::{parse_changes, read_uleb, Document, WriteOutcome};
use crate::error::Result;
use crate::reconcile::ENCODING;
use crate::schema::Schema;
use crate::version::Version;

/// Why a sync message was refused. Nothing is applied when one is returned, except after
/// [`SyncError::Refused`], which can leave some of the message's changes applied.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The bytes are not an Automerge sync message, or a change inside it does not decode.
    #[error("not an Automerge sync message: {0}")]
    Malformed(String),
    /// The message decodes, but Automerge refused to apply its changes (a reused sequence
    /// number, say). Changes before the refused one may have been applied: the caller should
    /// drop this copy of the document and reload it from storage.
    #[error("the sync message's changes could not be applied: {0}")]
    Refused(String),
    /// Applying the message would leave more than [`MAX_WAITING_BYTES`] of changes waiting
    /// for dependencies the document does not have. Nothing is applied.
    #[error(
        "the sync message's changes wait for {waiting} bytes of changes this document does \
         not have (at most {MAX_WAITING_BYTES} may wait): send the changes they build on first"
    )]
    TooMuchWaiting {
        /// The bytes that would wait, this message's included.
        waiting: usize,
    },
}

/// How many bytes of a peer's changes may wait in a document for their dependencies.
///
/// A sync message may carry a change without one it depends on: the sender's Bloom filter
/// test of the receiver's summary can answer "has it" wrongly, and the receiver then asks
/// for the missing change by hash in its next message. Automerge keeps such changes aside,
/// unapplied and unstored, until their dependencies arrive. That is the protocol working,
/// but a peer could also send changes whose dependencies never come: this bound keeps what
/// waits small, and a message that would pass it is refused whole.
pub const MAX_WAITING_BYTES: usize = 8 << 20;

/// What one peer is known to have, for one document and one connection.
#[derive(Debug, Clone, Default)]
pub struct SyncState(State);

impl SyncState {
    /// A state for a peer we know nothing about yet (a new connection).
    pub fn new() -> Self {
        SyncState(State::new())
    }

    /// The heads the peer last told us it has, if it told us anything.
    pub fn their_heads(&self) -> Option<Version> {
        self.0.their_heads.clone().map(Version::new)
    }

    /// Forgets what was sent in this session and asks the peer, with the next message, to do
    /// the same: both sides then send again whatever the other may lack. Use it when this
    /// side lost changes it had acknowledged (its copy of the document was replaced).
    pub fn restart(&mut self) {
        // Automerge resets a state when it leaves read-only mode, flagging the next message
        // so that the peer clears what it believes it has sent too.
        self.0.set_read_only(true);
        self.0.set_read_only(false);
    }
}

/// One decoded sync message.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncMessage(Message);

impl SyncMessage {
    /// Decodes a message received from a peer.
    pub fn decode(bytes: &[u8]) -> Result<Self, SyncError> {
        if bytes.is_empty() {
            return Err(SyncError::Malformed("no bytes".into()));
        }
        // Decoding is pure; a panic on hostile bytes must not take the connection's task down.
        match catch_unwind(|| Message::decode(bytes)) {
            Ok(Ok(mut message)) => {
                // Hash lists are sets, sent sorted, and Automerge counts on it: encoding an
                // unsorted one trips a debug assertion (found by fuzzing, see
                // tests/fuzz-regressions/sync_message). A peer's list is put in order here.
                message.heads.sort();
                message.need.sort();
                for have in &mut message.have {
                    have.last_sync.sort();
                    check_bloom(&have.bloom.to_bytes())?;
                }
                Ok(SyncMessage(message))
            }
            Ok(Err(e)) => Err(SyncError::Malformed(e.to_string())),
            Err(_) => Err(SyncError::Malformed("the decoder failed".into())),
        }
    }

    /// The bytes to send.
    pub fn encode(self) -> Vec<u8> {
        self.0.encode()
    }

    /// The sender's heads: empty when it has nothing of the document.
    pub fn heads(&self) -> Version {
        Version::new(self.0.heads.clone())
    }

    /// True if the message carries changes (and so may write to the document).
    pub fn has_changes(&self) -> bool {
        !self.0.changes.is_empty()
    }

    /// The bytes of the changes the message carries.
    pub fn change_bytes(&self) -> usize {
        self.0.changes.iter().map(<[u8]>::len).sum()
    }
}

/// The most probes per hash a peer's Bloom filter may ask for (Automerge uses 7).
const MAX_BLOOM_PROBES: u64 = 32;

/// Refuses a Bloom filter that Automerge would choke on when it next writes to this peer:
/// entries but no bits (a division by zero), or a number of probes it would allocate a
/// vector for, per hash (up to 16 GiB: an abort). Found by fuzzing; see
/// tests/fuzz-regressions/repo_message. `bytes` is the filter's wire form: entries, bits
/// per entry and probes (LEB128), then the bits; empty for an empty filter.
fn check_bloom(bytes: &[u8]) -> Result<(), SyncError> {
    let malformed = |what: &str| Err(SyncError::Malformed(format!("bloom filter: {what}")));
    if bytes.is_empty() {
        return Ok(());
    }
    let mut rest = bytes;
    let mut fields = [0u64; 3];
    for field in &mut fields {
        let Some((value, used)) = read_uleb(rest) else {
            return malformed("a malformed header");
        };
        *field = value;
        rest = &rest[used..];
    }
    let [entries, _, probes] = fields;
    if entries > 0 && rest.is_empty() {
        return malformed("entries but no bits");
    }
    if entries > 0 && !(1..=MAX_BLOOM_PROBES).contains(&probes) {
        return malformed(&format!(
            "{probes} probes (1 to {MAX_BLOOM_PROBES} allowed)"
        ));
    }
    Ok(())
}

impl Document {
    /// A document with no changes at all: the receiving end of a sync with a peer that has
    /// the document, before anything arrived. Its value reads as `{}`.
    pub fn empty(schema: Schema) -> Result<Document> {
        let compiled = schema.compile()?;
        Ok(Document {
            doc: Automerge::new_with_encoding(ENCODING),
            schema,
            compiled,
            change_count: 0,
            lost: crate::lost::LostLog::default(),
            waiting_bytes: 0,
            mirror: crate::mirror::Mirror::new(serde_json::json!({})),
            deadline: None,
        })
    }

    /// The next message for the peer `state` belongs to, or `None` if there is nothing to
    /// send until the peer answers or this document changes.
    pub fn generate_sync_message(&self, state: &mut SyncState) -> Option<SyncMessage> {
        self.doc
            .generate_sync_message(&mut state.0)
            .map(SyncMessage)
    }

    /// Applies a message from the peer `state` belongs to: its changes (each checked before
    /// any is applied; ones already here are ignored, so a duplicated message is harmless)
    /// and what it says the peer has. The outcome lists the changes that are new here.
    pub fn receive_sync_message(
        &mut self,
        state: &mut SyncState,
        message: SyncMessage,
    ) -> Result<WriteOutcome, SyncError> {
        let mut incoming = Vec::new();
        for (i, chunk) in message.0.changes.iter().enumerate() {
            incoming.extend(
                parse_changes(chunk)
                    .map_err(|e| SyncError::Malformed(format!("change {i}: {e}")))?,
            );
        }
        let orphans = self.orphan_bytes(&incoming);
        let waiting = self.waiting_bytes.saturating_add(orphans);
        if orphans > 0 && waiting > MAX_WAITING_BYTES {
            return Err(SyncError::TooMuchWaiting { waiting });
        }
        let before = self.doc.get_heads();
        let mut log = PatchLog::active();
        let received = catch_unwind(AssertUnwindSafe(|| {
            self.doc
                .receive_sync_message_log_patches(&mut state.0, message.0, &mut log)
        }));
        let applied = match received {
            Ok(applied) => applied,
            Err(_) => return Err(SyncError::Refused("Automerge failed applying them".into())),
        };
        let outcome = self
            .received(&before, &mut log, applied)
            .map_err(|e| SyncError::Refused(e.to_string()))?;
        self.waiting_bytes = if self.doc.get_missing_deps(&[]).is_empty() {
            0
        } else {
            waiting
        };
        Ok(outcome)
    }

    /// The bytes of the changes among `incoming` that cannot be applied yet: one of the
    /// changes they build on, directly or not, is neither here nor among `incoming`.
    fn orphan_bytes(&self, incoming: &[Change]) -> usize {
        let by_hash: HashMap<ChangeHash, &Change> =
            incoming.iter().map(|c| (c.hash(), c)).collect();
        let here = |hash: &ChangeHash| self.doc.get_change_meta_by_hash(hash).is_some();
        // Whether each incoming change can be applied, found depth-first with a stack of
        // its own (a long chain of changes must not overflow the thread's). Each entry is a
        // change and the index of the next dependency of it to look at.
        let mut complete: HashMap<ChangeHash, bool> = HashMap::new();
        let mut open = HashSet::new();
        for change in incoming {
            let mut stack = vec![(change.hash(), 0)];
            while let Some((hash, next)) = stack.last_mut() {
                let hash = *hash;
                if complete.contains_key(&hash) || here(&hash) {
                    stack.pop();
                    continue;
                }
                open.insert(hash);
                let deps = by_hash[&hash].deps();
                let verdict = loop {
                    let Some(dep) = deps.get(*next) else {
                        break Some(true);
                    };
                    if here(dep) || complete.get(dep) == Some(&true) {
                        *next += 1;
                        continue;
                    }
                    if complete.get(dep) == Some(&false)
                        || !by_hash.contains_key(dep)
                        || open.contains(dep)
                    {
                        break Some(false);
                    }
                    break None; // look at `dep` first, then come back to it
                };
                match verdict {
                    Some(verdict) => {
                        complete.insert(hash, verdict);
                        open.remove(&hash);
                        stack.pop();
                    }
                    None => {
                        let dep = deps[*next];
                        stack.push((dep, 0));
                    }
                }
            }
        }
        incoming
            .iter()
            .filter(|c| complete.get(&c.hash()) == Some(&false))
            .map(|c| c.raw_bytes().len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::WriteMeta;
    use serde_json::{json, Value};

    fn meta(agent: &str) -> WriteMeta {
        WriteMeta {
            agent: agent.into(),
            time_ms: 1_700_000_000_000,
            message: None,
        }
    }

    /// Exchanges messages until neither side has one; returns how many were sent. Every
    /// message is delivered twice when `duplicate` is set.
    fn sync(a: &mut Document, b: &mut Document, duplicate: bool) -> usize {
        let (mut sa, mut sb) = (SyncState::new(), SyncState::new());
        let mut sent = 0;
        for _ in 0..50 {
            let to_b = a.generate_sync_message(&mut sa);
            let to_a = b.generate_sync_message(&mut sb);
            if to_a.is_none() && to_b.is_none() {
                return sent;
            }
            for (message, doc, state) in [(to_b, &mut *b, &mut sb), (to_a, &mut *a, &mut sa)] {
                if let Some(m) = message {
                    sent += 1;
                    if duplicate {
                        doc.receive_sync_message(state, m.clone()).unwrap();
                    }
                    doc.receive_sync_message(state, m).unwrap();
                }
            }
        }
        panic!("no convergence after 50 rounds");
    }

    fn value(doc: &Document) -> Value {
        doc.read(None).unwrap()
    }

    #[test]
    fn concurrent_edits_converge_and_new_changes_are_reported() {
        let (mut server, _) =
            Document::create(&json!({"items": ["a"]}), Schema::default(), &meta("s")).unwrap();
        let mut replica = Document::empty(Schema::default()).unwrap();
        sync(&mut server, &mut replica, false);
        assert_eq!(value(&replica), json!({"items": ["a"]}));
        assert_eq!(replica.change_count(), server.change_count());

        server
            .put(None, &json!({"items": ["a", "server"]}), &meta("s"))
            .unwrap();
        replica
            .put(None, &json!({"items": ["replica", "a"]}), &meta("r"))
            .unwrap();
        let before = server.version();
        let (mut ss, mut sr) = (SyncState::new(), SyncState::new());
        let mut new_on_server = 0;
        for _ in 0..50 {
            let to_r = server.generate_sync_message(&mut ss);
            let to_s = replica.generate_sync_message(&mut sr);
            if to_r.is_none() && to_s.is_none() {
                break;
            }
            if let Some(m) = to_r {
                replica.receive_sync_message(&mut sr, m).unwrap();
            }
            if let Some(m) = to_s {
                new_on_server += server
                    .receive_sync_message(&mut ss, m)
                    .unwrap()
                    .changes
                    .len();
            }
        }
        assert_eq!(new_on_server, 1, "the replica's one change");
        assert_ne!(server.version(), before);
        assert_eq!(server.version(), replica.version());
        assert_eq!(value(&server), json!({"items": ["replica", "a", "server"]}));
        assert_eq!(server.change_count(), replica.change_count());
    }

    #[test]
    fn duplicated_messages_are_harmless() {
        let (mut server, _) =
            Document::create(&json!({"n": 1, "s": "x"}), Schema::default(), &meta("s")).unwrap();
        let mut replica = Document::empty(Schema::default()).unwrap();
        sync(&mut server, &mut replica, true);
        replica
            .put(None, &json!({"n": 2, "s": "x"}), &meta("r"))
            .unwrap();
        sync(&mut server, &mut replica, true);
        assert_eq!(value(&server), json!({"n": 2, "s": "x"}));
        assert_eq!(server.version(), replica.version());
        assert_eq!(server.history().len(), 2);
    }

    #[test]
    fn in_sync_documents_have_nothing_to_say_after_the_handshake() {
        let (mut a, _) = Document::create(&json!({"k": 1}), Schema::default(), &meta("a")).unwrap();
        let mut b = Document::empty(Schema::default()).unwrap();
        sync(&mut a, &mut b, false);
        // A fresh pair of states: one message each way says "I have what you have".
        assert!(sync(&mut a, &mut b, false) <= 4);
    }

    #[test]
    fn garbage_is_refused_and_changes_nothing() {
        let (mut doc, _) =
            Document::create(&json!({"k": 1}), Schema::default(), &meta("a")).unwrap();
        let version = doc.version();
        for bytes in [
            &b""[..],
            b"\x00",
            b"hello",
            b"\x42",
            b"\x42\x01",
            &[0x43; 40],
        ] {
            assert!(
                matches!(SyncMessage::decode(bytes), Err(SyncError::Malformed(_))),
                "{bytes:?}"
            );
        }
        // A well-formed message whose change is torn: refused whole.
        let (other, outcome) =
            Document::create(&json!({"x": 2}), Schema::default(), &meta("b")).unwrap();
        let mut change = outcome.changes[0].raw_bytes().to_vec();
        change.truncate(change.len() - 3);
        let torn = Message {
            heads: other.doc.get_heads(),
            need: Vec::new(),
            have: Vec::new(),
            changes: change.into(),
            flags: None,
            version: automerge::sync::MessageVersion::V1,
        };
        let message = SyncMessage::decode(&torn.encode()).unwrap();
        let err = doc
            .receive_sync_message(&mut SyncState::new(), message)
            .unwrap_err();
        assert!(matches!(err, SyncError::Malformed(_)), "{err}");
        assert_eq!(doc.version(), version);
    }

    #[test]
    fn an_empty_document_reads_as_an_empty_object() {
        let doc = Document::empty(Schema::default()).unwrap();
        assert_eq!(value(&doc), json!({}));
        assert!(doc.version().is_empty());
        assert_eq!(doc.change_count(), 0);
    }

    #[test]
    fn restart_makes_the_peer_send_again() {
        let (mut server, _) =
            Document::create(&json!({"k": 1}), Schema::default(), &meta("s")).unwrap();
        let mut replica = Document::empty(Schema::default()).unwrap();
        let (mut ss, mut sr) = (SyncState::new(), SyncState::new());
        // Run a full sync, then lose the replica's copy while keeping its state.
        for _ in 0..10 {
            let to_r = server.generate_sync_message(&mut ss);
            let to_s = replica.generate_sync_message(&mut sr);
            if let Some(m) = to_r {
                replica.receive_sync_message(&mut sr, m).unwrap();
            }
            if let Some(m) = to_s {
                server.receive_sync_message(&mut ss, m).unwrap();
            }
        }
        assert_eq!(value(&replica), json!({"k": 1}));
        let mut replica = Document::empty(Schema::default()).unwrap();
        sr.restart();
        for _ in 0..10 {
            let to_r = server.generate_sync_message(&mut ss);
            let to_s = replica.generate_sync_message(&mut sr);
            if let Some(m) = to_r {
                replica.receive_sync_message(&mut sr, m).unwrap();
            }
            if let Some(m) = to_s {
                server.receive_sync_message(&mut ss, m).unwrap();
            }
        }
        assert_eq!(value(&replica), json!({"k": 1}));
    }
}
