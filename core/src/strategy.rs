//! Write strategies: the policy a document follows when agents write to it.
//!
//! The default, [`Strategy::Crdt`], merges every write at the version its writer read. The
//! others are the classic answers to the lost update, kept so that the comparison mode can
//! run one workload through each and measure what each loses and costs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The write policy of one document, chosen at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Writes are applied at the version the writer read and merged into the present.
    #[default]
    Crdt,
    /// Last writer wins: a PUT replaces the current value, whatever the writer read.
    Lww,
    /// A write whose base is not the current version is refused (HTTP 412).
    Optimistic,
    /// Writes need the newest unexpired lease token (fencing).
    Lock,
    /// Only intents (patches without a base) are accepted, applied in arrival order.
    Queue,
    /// Isolated copies: agents fork the document, edit their fork, and forks are merged
    /// back at the end; the document itself takes no direct writes.
    Branches,
}

impl Strategy {
    /// Every strategy, in the order the comparison reports them.
    pub const ALL: [Strategy; 6] = [
        Strategy::Lww,
        Strategy::Optimistic,
        Strategy::Lock,
        Strategy::Queue,
        Strategy::Branches,
        Strategy::Crdt,
    ];

    /// The lowercase name used in the API and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Crdt => "crdt",
            Strategy::Lww => "lww",
            Strategy::Optimistic => "optimistic",
            Strategy::Lock => "lock",
            Strategy::Queue => "queue",
            Strategy::Branches => "branches",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name is not one of the strategies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown strategy {0:?} (expected crdt, lww, optimistic, lock, queue or branches)")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Strategy::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for s in Strategy::ALL {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("LWW".parse::<Strategy>().is_err());
    }
}
