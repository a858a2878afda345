//! What a client message is: parsed from its JSON, classified as a read or a write, its
//! id, the idempotency key and fingerprint of a write, and how a write's error is worded.

use concord_protocol::live::ClientMessage;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::problem::{ApiError, Fields};
use crate::registry::{self, Written};

/// The body of a write message.
pub(super) enum WriteBody {
    Patch(Value),
    Put(Value),
}

/// What an idempotent WebSocket write records, to replay its `ack`.
pub(super) fn ack_record(written: &Written, _status: u16) -> (Vec<(String, String)>, Vec<u8>) {
    let body = json!({ "id": written.id, "version": written.version.to_string() });
    (
        Vec::new(),
        serde_json::to_vec(&body).expect("JSON serializes"),
    )
}

/// The idempotency key of a write message: its id, scoped to the document and the agent.
pub(super) fn message_key(doc: Uuid, agent: &str, id: &Value) -> String {
    let mut hash = Sha256::new();
    hash.update(doc.as_bytes());
    hash.update(b"\n");
    hash.update(agent);
    hash.update(b"\n");
    hash.update(id.to_string());
    format!("ws:{}", hex::encode(hash.finalize()))
}

/// What makes two write messages with one id "the same write".
pub(super) fn fingerprint(base: Option<&str>, body: &WriteBody) -> String {
    let mut hash = Sha256::new();
    let (kind, value) = match body {
        WriteBody::Patch(ops) => ("patch", ops),
        WriteBody::Put(value) => ("put", value),
    };
    hash.update(kind);
    hash.update(b"\n");
    hash.update(base.unwrap_or(""));
    hash.update(b"\n");
    hash.update(value.to_string());
    hex::encode(hash.finalize())
}

/// A write's error as the WebSocket answers it: the HTTP problem, but refusals that name
/// HTTP headers name the message's fields instead.
pub(super) fn for_ws(e: registry::Error) -> ApiError {
    crate::problem::in_fields(
        e,
        &Fields {
            base: "base",
            lock: "lock",
            lease: "POST /v1/docs/{id}/lock",
        },
    )
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid-message", detail)
}

/// A message id: a string of 1 to 255 characters, or a non-negative integer.
pub(super) fn check_id(id: &Value) -> Result<(), ApiError> {
    match id {
        Value::String(s) if !s.is_empty() && s.chars().count() <= 255 => Ok(()),
        Value::Number(n) if n.is_u64() => Ok(()),
        _ => Err(invalid(
            "id must be a string of 1 to 255 characters or a non-negative integer",
        )),
    }
}

/// The id of a message, if it has a valid one (to answer a refusal with it).
pub(super) fn message_id(text: &str) -> Option<Value> {
    valid_id(&serde_json::from_str::<Value>(text).ok()?)
}

/// The id of a parsed message, if it has a valid one.
pub(super) fn valid_id(message: &Value) -> Option<Value> {
    message.get("id").cloned().filter(|id| check_id(id).is_ok())
}

/// The message types that only read. Every other type, known or not (a type added later
/// included), writes: a token that may not write the document is refused it.
const READ_ONLY_TYPES: &[&str] = &["subscribe"];

/// Whether a message (parsed as JSON) asks to write. A message without a type is none of
/// them: it is refused as invalid, whoever sends it.
pub(super) fn writes(message: &Value) -> bool {
    match message.get("type").and_then(Value::as_str) {
        Some(kind) => !READ_ONLY_TYPES.contains(&kind),
        None => false,
    }
}

/// A message's JSON, read strictly (`concord_protocol::json`): not JSON is
/// `invalid-message`, a key given twice `invalid-json`, an integer out of range (422)
/// `invalid-value`.
pub(super) fn parse_json_message(text: &str) -> Result<Value, ApiError> {
    concord_protocol::json::from_str(text)
        .map_err(|e| ApiError::json(e, "a message", "invalid-message"))
}

/// Parses a client message; on error, the error and the message's id if it has one.
#[cfg(test)]
fn parse_message(text: &str) -> Result<ClientMessage, (ApiError, Option<Value>)> {
    message_from(parse_json_message(text).map_err(|e| (e, None))?)
}

/// Reads a client message from its JSON; on error, the error and the message's id if it
/// has one.
pub(super) fn message_from(value: Value) -> Result<ClientMessage, (ApiError, Option<Value>)> {
    let id = valid_id(&value);
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err((
            invalid("a message is a JSON object with a \"type\": subscribe, patch or put"),
            id,
        ));
    };
    let kind = kind.chars().take(50).collect::<String>();
    serde_json::from_value(value)
        .map_err(|e| (invalid(format!("invalid {kind:?} message: {e}")), id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_types_known_to_read_are_not_writes() {
        // Every message type the server knows, classified here: a type added later does not
        // compile until it is, and is a write meanwhile (see READ_ONLY_TYPES).
        let known = [
            ClientMessage::Subscribe { since: None },
            ClientMessage::Patch {
                id: json!(1),
                base: None,
                ops: json!([]),
                lock: None,
            },
            ClientMessage::Put {
                id: json!(1),
                base: None,
                value: json!({}),
                lock: None,
            },
        ];
        for message in known {
            let reads = match &message {
                ClientMessage::Subscribe { .. } => true,
                ClientMessage::Patch { .. } | ClientMessage::Put { .. } => false,
            };
            let value = serde_json::to_value(&message).unwrap();
            assert_eq!(writes(&value), !reads, "{value}");
        }
        for kind in ["jump", "Subscribe", "subscribe ", ""] {
            assert!(writes(&json!({ "type": kind })), "{kind:?}");
        }
        // Without a type it is no message at all, refused as invalid to anyone.
        assert!(!writes(&json!({"id": 1})) && !writes(&json!([1])) && !writes(&json!({"type": 1})));
    }

    #[test]
    fn bad_messages_are_named() {
        let cases = [
            ("not json", "not valid JSON"),
            (
                r#"{"type": "put", "id": 1, "value": {}, "value": {"a": 1}}"#,
                "\"value\" appears twice",
            ),
            ("[1]", "\"type\""),
            (r#"{"type": "jump"}"#, "unknown variant"),
            (r#"{"type": "put", "id": 1, "vlaue": {}}"#, "unknown field"),
        ];
        for (text, expected) in cases {
            let (e, _) = parse_message(text).unwrap_err();
            assert!(e.detail.contains(expected), "{text}: {}", e.detail);
        }
        let (_, id) =
            parse_message(r#"{"type": "patch", "id": "a", "ops": 3, "x": 1}"#).unwrap_err();
        assert_eq!(id, Some(json!("a")));
    }
}
