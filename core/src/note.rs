//! Who made a change: Concord writes a JSON note as each change's message (its agent and
//! message, and in [`crate::doc`] the lost-edit records and moves it carries). Every module
//! that attributes a change reads it here.

use serde::Deserialize;

/// The fields of a note that say who wrote it; the rest are [`crate::doc`]'s.
#[derive(Deserialize)]
struct Head {
    agent: String,
    #[serde(default)]
    message: Option<String>,
}

/// Reads a change message: `(agent, message)`. Messages not written by Concord (raw changes
/// from other clients) have no agent and are kept whole.
pub fn decode_note(message: Option<&str>) -> (Option<String>, Option<String>) {
    match message {
        None => (None, None),
        Some(m) => match serde_json::from_str::<Head>(m) {
            Ok(head) => (Some(head.agent), head.message),
            Err(_) => (None, Some(m.to_owned())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_name_their_agent_and_others_are_kept_whole() {
        let note = r#"{"agent":"ada","message":"hi","lost":[]}"#;
        assert_eq!(
            decode_note(Some(note)),
            (Some("ada".into()), Some("hi".into()))
        );
        assert_eq!(
            decode_note(Some(r#"{"agent":"bo"}"#)),
            (Some("bo".into()), None)
        );
        assert_eq!(decode_note(Some("plain")), (None, Some("plain".into())));
        assert_eq!(decode_note(None), (None, None));
    }
}
