//! The JSON protocol of `/v1/docs/{id}/ws`: one JSON object per WebSocket text message,
//! tagged by `type`. A client sends [`ClientMessage`]s (`subscribe`, `patch`, `put`); the
//! server answers [`ServerMessage`]s (`snapshot`, `subscribed`, `change`, `ack`, `error`).
//! A refusal is a [`Problem`], the same RFC 9457 fields as an HTTP error body.
//!
//! Parsing is strict where the server reads ([`ClientMessage`] denies unknown fields, so a
//! misspelt `base` is an error rather than a write against the current version; the server
//! reads a message's text with [`crate::json::from_str`], so a field given twice is an error
//! too) and lenient where clients read (a [`ServerMessage`] may gain fields).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// A message from a client to the server on `/v1/docs/{id}/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Start (or restart) receiving changes: a `snapshot` (or the `change`s after `since`),
    /// then `subscribed`, then every change as it happens.
    Subscribe {
        /// The last version the client has; it receives exactly what came after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
    },
    /// JSON Patch operations (RFC 6902 plus `increment` and `splice`).
    Patch {
        /// The message id, echoed in the `ack` or `error`; a write retried with the same id
        /// (by the same agent, on this document) is applied once. A string (1 to 255
        /// characters) or a non-negative integer.
        id: Value,
        /// The version the operations were written against (`*` or absent: the current one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        /// The operations.
        ops: Value,
        /// The lease token, for documents of the lock strategy.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "token"
        )]
        lock: Option<String>,
    },
    /// A whole new value, written against `base`.
    Put {
        /// The message id (see [`ClientMessage::Patch`]).
        id: Value,
        /// The version the value was derived from (`*`: the current one). Required by the
        /// crdt and optimistic strategies, as `If-Match` is over HTTP.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base: Option<String>,
        /// The new value (a JSON object).
        value: Value,
        /// The lease token, for documents of the lock strategy.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "token"
        )]
        lock: Option<String>,
    },
}

/// A lock token given as a string or a number.
fn token<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) if n.is_u64() => Ok(Some(n.to_string())),
        _ => Err(serde::de::Error::custom(
            "lock must be the token of a lease (a string or a number)",
        )),
    }
}

/// A message from the server to a client on `/v1/docs/{id}/ws`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage {
    /// The whole value: the first answer to `subscribe` without `since` (or with a `since`
    /// too old to replay), and after falling too far behind.
    Snapshot {
        /// Its version.
        version: String,
        /// The value.
        value: Value,
    },
    /// The catch-up after `subscribe` is complete; the subscriber is at `version`.
    Subscribed {
        /// The version the subscriber has now.
        version: String,
    },
    /// One change, in order.
    Change(Change),
    /// A write was applied (or had been: `replayed`).
    Ack(Ack),
    /// A message was refused, or the connection has a problem (RFC 9457 fields).
    Error(Problem),
}

/// One change to a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The version after the change.
    pub version: String,
    /// The version before it.
    pub previous: String,
    /// Who wrote it.
    pub agent: Option<String>,
    /// When, milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// RFC 6902 operations from the previous value to this one.
    pub patch: Value,
}

/// The answer to a write over the WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The id of the write message.
    pub id: Value,
    /// The document's version after the write.
    pub version: String,
    /// True when this id had already been applied: nothing was written again.
    #[serde(default)]
    pub replayed: bool,
}

/// An RFC 9457 problem: an HTTP error body, or a WebSocket `error` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The id of the WebSocket message refused, if the error answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The problem type, `urn:concord:problem:<kind>` (`type` in an HTTP body).
    #[serde(alias = "type")]
    pub type_uri: String,
    /// The HTTP status's reason phrase.
    pub title: String,
    /// The HTTP status the problem corresponds to.
    pub status: u16,
    /// What went wrong.
    pub detail: String,
    /// The current version, when the problem is a stale base (412).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Problem {
    /// The short kind: the last part of `type_uri` (`stale-version`, `not-found`, ...).
    pub fn kind(&self) -> &str {
        self.type_uri.rsplit(':').next().unwrap_or(&self.type_uri)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({}): {}",
            self.status,
            self.title,
            self.kind(),
            self.detail
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_messages_parse_strictly() {
        let ok = [
            (
                json!({"type": "subscribe"}),
                ClientMessage::Subscribe { since: None },
            ),
            (
                json!({"type": "patch", "id": 1, "ops": [], "lock": 7}),
                ClientMessage::Patch {
                    id: json!(1),
                    base: None,
                    ops: json!([]),
                    lock: Some("7".into()),
                },
            ),
        ];
        for (text, expected) in ok {
            assert_eq!(
                serde_json::from_value::<ClientMessage>(text).unwrap(),
                expected
            );
        }
        let bad = [
            json!({"type": "subscribe", "snice": "x"}),
            json!({"type": "patch", "id": 1, "ops": [], "bse": "x"}),
            json!({"type": "nope"}),
            json!({"id": 1}),
            json!({"type": "put", "id": 1}),
            json!({"type": "patch", "id": 1, "ops": [], "lock": [1]}),
        ];
        for text in bad {
            assert!(
                serde_json::from_value::<ClientMessage>(text.clone()).is_err(),
                "{text}"
            );
        }
    }

    #[test]
    fn server_messages_round_trip() {
        let messages = [
            ServerMessage::Snapshot {
                version: "v".into(),
                value: json!({"a": 1}),
            },
            ServerMessage::Subscribed {
                version: "v".into(),
            },
            ServerMessage::Ack(Ack {
                id: json!("w1"),
                version: "v".into(),
                replayed: true,
            }),
            ServerMessage::Error(Problem {
                id: Some(json!(3)),
                type_uri: "urn:concord:problem:stale-version".into(),
                title: "Precondition Failed".into(),
                status: 412,
                detail: "stale".into(),
                version: Some("v".into()),
            }),
        ];
        for message in messages {
            let text = serde_json::to_value(&message).unwrap();
            assert!(text["type"].is_string());
            assert_eq!(
                serde_json::from_value::<ServerMessage>(text).unwrap(),
                message
            );
        }
        // An HTTP problem body names its type `type`.
        let http = json!({"type": "urn:concord:problem:not-found", "title": "Not Found", "status": 404, "detail": "no"});
        assert_eq!(
            serde_json::from_value::<Problem>(http).unwrap().kind(),
            "not-found"
        );
    }
}
