//! The automerge-repo network protocol (`/v1/repo`), as bytes: its CBOR messages and the
//! ids automerge-repo gives documents. What a server does with the messages (sync states,
//! storing changes, relaying presence) is the server's; this is only the wire.
//!
//! # Documents
//! An automerge-repo document id is the base58check encoding of 16 bytes; a Concord
//! document's id is a UUID, whose 16 bytes are those bytes. So every Concord document is
//! reachable as `automerge:<bs58check of its UUID's bytes>` ([`automerge_url`]), and every
//! document created by automerge-repo (which draws its ids as random UUIDs) has a Concord id
//! ([`parse_document_id`]).
//!
//! # Messages
//! Each WebSocket binary frame is one CBOR map with a `type`. [`Incoming::decode`] reads
//! what a repo peer sends (`join`, `request`, `sync`, `ephemeral`; any other type is
//! [`Incoming::Ignored`]), and [`Outgoing::encode`] writes what a server answers (`peer`,
//! `sync`, `doc-unavailable`, `ephemeral`, `error`). Bytes that are not a CBOR map with a
//! `type`, or a message without a field its type needs, are a [`ProtocolError`].

use ciborium::Value as Cbor;
use uuid::Uuid;

/// The one protocol version automerge-repo speaks today.
pub const PROTOCOL_VERSION: &str = "1";

/// The automerge-repo document id of a Concord document: bs58check of the UUID's bytes.
pub fn document_id(id: Uuid) -> String {
    bs58::encode(id.as_bytes()).with_check().into_string()
}

/// The `automerge:` URL of a Concord document, as automerge-repo's `repo.find` takes it.
pub fn automerge_url(id: Uuid) -> String {
    format!("automerge:{}", document_id(id))
}

/// The Concord id of an automerge-repo document id (or `automerge:` URL, heads ignored);
/// `None` unless it is bs58check of exactly 16 bytes.
pub fn parse_document_id(text: &str) -> Option<Uuid> {
    let id = text.strip_prefix("automerge:").unwrap_or(text);
    let id = id.split('#').next().unwrap_or(id);
    let bytes = bs58::decode(id).with_check(None).into_vec().ok()?;
    Uuid::from_slice(&bytes).ok()
}

/// A protocol message that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes are not CBOR.
    #[error("the message is not CBOR: {0}")]
    NotCbor(String),
    /// The CBOR is not a map.
    #[error("the message is not a CBOR map")]
    NotAMap,
    /// A field the message type needs is missing or of the wrong kind.
    #[error("the {kind} message has no valid {field} ({expected})")]
    Field {
        /// The message type.
        kind: String,
        /// The field.
        field: &'static str,
        /// What it should be.
        expected: &'static str,
    },
}

/// A message from a repo peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The handshake: who the peer is and which protocol versions it speaks (`None`: it
    /// did not say, which means version 1).
    Join {
        /// The peer's id.
        sender: String,
        /// `supportedProtocolVersions`.
        versions: Option<Vec<String>>,
    },
    /// A sync message (`request` when the sender has nothing of the document yet).
    Sync {
        /// The peer's id.
        sender: String,
        /// True for `request`.
        request: bool,
        /// The automerge-repo document id.
        document: String,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// Presence and other transient data about a document, to relay.
    Ephemeral(Ephemeral),
    /// A message type Concord does not act on (`doc-unavailable`, heads gossip, ...).
    Ignored {
        /// Its `type`.
        kind: String,
    },
}

/// An ephemeral message, as relayed.
#[derive(Debug, Clone, PartialEq)]
pub struct Ephemeral {
    /// The peer that sent it first.
    pub sender: String,
    /// The automerge-repo document id.
    pub document: String,
    /// The sender's counter, by which receivers drop duplicates.
    pub count: u64,
    /// The sender's session.
    pub session: String,
    /// The payload (CBOR, opaque here).
    pub data: Vec<u8>,
}

/// A message to a repo peer.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing<'a> {
    /// The answer to `join`.
    Peer {
        /// Concord's storage id, so that peers with storage can keep their sync state.
        storage: &'a str,
    },
    /// A sync message.
    Sync {
        /// The automerge-repo document id.
        document: &'a str,
        /// The Automerge sync message.
        data: Vec<u8>,
    },
    /// Concord has no such document (or will not sync it).
    Unavailable {
        /// The automerge-repo document id.
        document: &'a str,
    },
    /// An ephemeral message from another peer.
    Ephemeral(&'a Ephemeral),
    /// A fatal error; the connection closes after it.
    Error {
        /// What went wrong.
        message: &'a str,
    },
}

impl Incoming {
    /// Reads one message.
    pub fn decode(bytes: &[u8]) -> Result<Incoming, ProtocolError> {
        let value: Cbor =
            ciborium::de::from_reader(bytes).map_err(|e| ProtocolError::NotCbor(e.to_string()))?;
        let map = value.into_map().map_err(|_| ProtocolError::NotAMap)?;
        let field = |name: &str| {
            map.iter()
                .find(|(k, _)| k.as_text() == Some(name))
                .map(|(_, v)| v)
        };
        let kind = field("type")
            .and_then(Cbor::as_text)
            .ok_or(ProtocolError::Field {
                kind: "repo".into(),
                field: "type",
                expected: "a string",
            })?
            .to_owned();
        let missing = |field: &'static str, expected: &'static str| ProtocolError::Field {
            kind: kind.clone(),
            field,
            expected,
        };
        let text = |name: &'static str| {
            field(name)
                .and_then(Cbor::as_text)
                .map(str::to_owned)
                .ok_or_else(|| missing(name, "a string"))
        };
        let bytes = |name: &'static str| {
            match field(name) {
                Some(Cbor::Bytes(b)) => Some(b.clone()),
                // A typed array tagged by its encoder (RFC 8746 tag 64: uint8 array).
                Some(Cbor::Tag(64, inner)) => inner.as_bytes().cloned(),
                _ => None,
            }
            .ok_or_else(|| missing(name, "a byte string"))
        };
        Ok(match kind.as_str() {
            "join" => Incoming::Join {
                sender: text("senderId")?,
                versions: match field("supportedProtocolVersions") {
                    None | Some(Cbor::Null) => None,
                    Some(Cbor::Array(items)) => Some(
                        items
                            .iter()
                            .filter_map(Cbor::as_text)
                            .map(str::to_owned)
                            .collect(),
                    ),
                    Some(_) => {
                        return Err(missing("supportedProtocolVersions", "an array of strings"))
                    }
                },
            },
            "sync" | "request" => Incoming::Sync {
                sender: text("senderId")?,
                request: kind == "request",
                document: text("documentId")?,
                data: bytes("data")?,
            },
            "ephemeral" => Incoming::Ephemeral(Ephemeral {
                sender: text("senderId")?,
                document: text("documentId")?,
                count: field("count")
                    .and_then(Cbor::as_integer)
                    .and_then(|i| u64::try_from(i).ok())
                    .ok_or_else(|| missing("count", "a counter"))?,
                session: text("sessionId")?,
                data: bytes("data")?,
            }),
            _ => Incoming::Ignored { kind },
        })
    }
}

impl Outgoing<'_> {
    /// The CBOR bytes of this message from `sender` to `target`.
    pub fn encode(&self, sender: &str, target: &str) -> Vec<u8> {
        let text = |s: &str| Cbor::Text(s.to_owned());
        let mut map = Vec::with_capacity(8);
        let mut put = |k: &str, v: Cbor| map.push((text(k), v));
        match self {
            Outgoing::Peer { storage } => {
                put("type", text("peer"));
                put("senderId", text(sender));
                put("targetId", text(target));
                put(
                    "peerMetadata",
                    Cbor::Map(vec![
                        (text("storageId"), text(storage)),
                        (text("isEphemeral"), Cbor::Bool(false)),
                    ]),
                );
                put("selectedProtocolVersion", text(PROTOCOL_VERSION));
            }
            Outgoing::Sync { document, data } => {
                put("type", text("sync"));
                put("senderId", text(sender));
                put("targetId", text(target));
                put("documentId", text(document));
                put("data", Cbor::Bytes(data.clone()));
            }
            Outgoing::Unavailable { document } => {
                put("type", text("doc-unavailable"));
                put("senderId", text(sender));
                put("targetId", text(target));
                put("documentId", text(document));
            }
            Outgoing::Ephemeral(e) => {
                put("type", text("ephemeral"));
                // Relayed as sent: receivers drop duplicates by (sender, session, count).
                put("senderId", text(&e.sender));
                put("targetId", text(target));
                put("count", Cbor::Integer(e.count.into()));
                put("sessionId", text(&e.session));
                put("documentId", text(&e.document));
                put("data", Cbor::Bytes(e.data.clone()));
            }
            Outgoing::Error { message } => {
                put("type", text("error"));
                put("senderId", text(sender));
                put("targetId", text(target));
                put("message", text(message));
            }
        }
        let mut out = Vec::new();
        ciborium::ser::into_writer(&Cbor::Map(map), &mut out)
            .expect("writing CBOR to memory cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_ids_round_trip() {
        let id = Uuid::parse_str("7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10").unwrap();
        let doc = document_id(id);
        assert_eq!(parse_document_id(&doc), Some(id));
        assert_eq!(parse_document_id(&automerge_url(id)), Some(id));
        assert_eq!(parse_document_id(&format!("automerge:{doc}#abc")), Some(id));
        // A corrupted checksum, a wrong length, not base58.
        let mut bad = doc.clone().into_bytes();
        bad[3] = if bad[3] == b'2' { b'3' } else { b'2' };
        for text in [
            String::from_utf8(bad).unwrap(),
            bs58::encode([1u8; 8]).with_check().into_string(),
            "0OIl".into(),
            String::new(),
        ] {
            assert_eq!(parse_document_id(&text), None, "{text}");
        }
    }

    #[test]
    fn messages_round_trip_through_cbor() {
        let sync = Outgoing::Sync {
            document: "doc",
            data: vec![0x42, 1, 2],
        }
        .encode("server", "client");
        // Read back as if the client had sent it.
        assert_eq!(
            Incoming::decode(&sync).unwrap(),
            Incoming::Sync {
                sender: "server".into(),
                request: false,
                document: "doc".into(),
                data: vec![0x42, 1, 2]
            }
        );
        let e = Ephemeral {
            sender: "a".into(),
            document: "doc".into(),
            count: 7,
            session: "s".into(),
            data: vec![1],
        };
        let bytes = Outgoing::Ephemeral(&e).encode("server", "b");
        assert_eq!(Incoming::decode(&bytes).unwrap(), Incoming::Ephemeral(e));
    }

    #[test]
    fn bad_messages_are_typed_errors() {
        let encode = |v: Cbor| {
            let mut out = Vec::new();
            ciborium::ser::into_writer(&v, &mut out).unwrap();
            out
        };
        let text = |s: &str| Cbor::Text(s.into());
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"\xff\xfe".to_vec(), "not CBOR"),
            (Vec::new(), "not CBOR"),
            (encode(Cbor::Array(vec![])), "not a CBOR map"),
            (encode(Cbor::Map(vec![])), "no valid type"),
            (
                encode(Cbor::Map(vec![(text("type"), text("sync"))])),
                "no valid senderId",
            ),
            (
                encode(Cbor::Map(vec![
                    (text("type"), text("sync")),
                    (text("senderId"), text("p")),
                    (text("documentId"), text("d")),
                    (text("data"), text("not bytes")),
                ])),
                "no valid data",
            ),
        ];
        for (bytes, expected) in cases {
            let err = Incoming::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} should say {expected:?}");
        }
        let unknown = encode(Cbor::Map(vec![(text("type"), text("leave"))]));
        assert_eq!(
            Incoming::decode(&unknown).unwrap(),
            Incoming::Ignored {
                kind: "leave".into()
            }
        );
    }

    #[test]
    fn a_tagged_uint8_array_is_bytes() {
        let text = |s: &str| Cbor::Text(s.into());
        let mut out = Vec::new();
        let value = Cbor::Map(vec![
            (text("type"), text("request")),
            (text("senderId"), text("p")),
            (text("documentId"), text("d")),
            (text("data"), Cbor::Tag(64, Box::new(Cbor::Bytes(vec![9])))),
        ]);
        ciborium::ser::into_writer(&value, &mut out).unwrap();
        assert!(matches!(
            Incoming::decode(&out).unwrap(),
            Incoming::Sync { request: true, data, .. } if data == [9]
        ));
    }
}
