//! Which parts of a document are collaborative text and which are counters.
//!
//! JSON has one string type and one number type; Automerge has more. By default a string is
//! an atomic value (two agents setting it concurrently is a conflict, both kept) and a number
//! a plain scalar. A document's schema names pointer patterns whose strings are collaborative
//! text (merged character by character) and whose numbers are counters (a write becomes an
//! increment by the difference, so concurrent increments add up). Its `ids` patterns name the
//! identity key of list elements (`/tasks/*/id`), so that list merges pair an element with
//! its new version by that key rather than by position.

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::pointer::Pattern;

/// The pointer patterns of a document's text and counters, fixed at creation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schema {
    /// Patterns (JSON Pointers, `*` for any one token) of collaborative text strings.
    #[serde(default)]
    pub text: Vec<String>,
    /// Patterns of counters.
    #[serde(default)]
    pub counters: Vec<String>,
    /// Patterns ending in `/*/<key>` naming the identity key of a list's elements:
    /// `/tasks/*/id` says the elements of `/tasks` are the same element when their `id`
    /// members are equal. Lists without one use a common key (`id`, `_id`, `uuid`, `key`)
    /// when every element carries a distinct one, else content similarity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
}

/// A [`Schema`] with its patterns parsed, ready to match paths.
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledSchema {
    text: Vec<Pattern>,
    counters: Vec<Pattern>,
    /// `(pattern of the list, key)` for each `ids` pattern.
    ids: Vec<(Pattern, String)>,
}

impl Schema {
    /// Checks every pattern and prepares them for matching.
    pub(crate) fn compile(&self) -> Result<CompiledSchema, Error> {
        let parse = |patterns: &[String]| {
            patterns
                .iter()
                .map(|p| Pattern::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let ids = self
            .ids
            .iter()
            .map(|p| {
                let pattern = Pattern::parse(p)?;
                let tokens = pattern.tokens();
                match tokens {
                    [list @ .., star, key] if star == "*" => Ok((
                        Pattern::parse(&crate::pointer::Pointer::from(list.to_vec()).to_string())?,
                        key.clone(),
                    )),
                    _ => Err(Error::InvalidPointer {
                        pointer: p.clone(),
                        reason: "an ids pattern ends in /*/<key>, as in /tasks/*/id".into(),
                    }),
                }
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(CompiledSchema {
            text: parse(&self.text)?,
            counters: parse(&self.counters)?,
            ids,
        })
    }

    /// Checks that every pattern is a valid pointer.
    pub fn validate(&self) -> Result<(), Error> {
        self.compile().map(|_| ())
    }
}

impl CompiledSchema {
    /// True if a string at `path` is collaborative text.
    pub(crate) fn is_text(&self, path: &[String]) -> bool {
        self.text.iter().any(|p| p.matches(path))
    }

    /// True if a number at `path` is a counter.
    pub(crate) fn is_counter(&self, path: &[String]) -> bool {
        self.counters.iter().any(|p| p.matches(path))
    }

    /// The declared identity key of the elements of the list at `path`, if any.
    pub(crate) fn id_key(&self, path: &[String]) -> Option<&str> {
        self.ids
            .iter()
            .find(|(p, _)| p.matches(path))
            .map(|(_, key)| key.as_str())
    }
}
