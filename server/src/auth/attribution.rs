//! Attribution: which agents the Concord notes of raw changes (or of a sync message's
//! changes) name, so that a token without admin writes only changes recorded as its own.

use automerge::ChangeHash;

use super::Principal;

/// The changes among raw changes whose Concord notes name an agent other than `agent`: each
/// change's hash and the agent it names. Bytes that do not decode name nobody (whoever
/// takes them refuses them).
fn foreign_changes(changes: &[u8], agent: &str) -> Vec<(ChangeHash, String)> {
    let Ok(changes) = concord_core::doc::parse_changes(changes) else {
        return Vec::new();
    };
    changes
        .iter()
        .filter_map(|change| {
            let (named, _) = concord_core::doc::decode_note(change.message());
            named
                .filter(|named| named != agent)
                .map(|named| (change.hash(), named))
        })
        .collect()
}

/// The first agent other than `agent` that the Concord notes of raw changes name.
pub(super) fn foreign_agent(changes: &[u8], agent: &str) -> Option<String> {
    foreign_changes(changes, agent)
        .into_iter()
        .next()
        .map(|(_, named)| named)
}

/// The same as [`foreign_changes`], for the changes a sync message carries.
pub(super) fn foreign_changes_in_sync(message: &[u8], agent: &str) -> Vec<(ChangeHash, String)> {
    let Ok(message) = automerge::sync::Message::decode(message) else {
        return Vec::new();
    };
    message
        .changes
        .iter()
        .flat_map(|chunk| foreign_changes(chunk, agent))
        .collect()
}

/// Why changes recorded as `named` are refused to `principal`.
pub(super) fn not_yours(principal: &Principal, named: &str) -> String {
    format!(
        "these changes are recorded as {named:?}; with the token of {agent} they may name only \
         {agent:?} (or no agent)",
        agent = principal.agent()
    )
}
