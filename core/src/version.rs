//! Versions: the set of Automerge heads that names one state of a document.
//!
//! Written as the heads' hex hashes, sorted and joined by `.`; this is the document's ETag.
//! Any version the document has seen stays a valid base for a write.

use std::fmt;
use std::str::FromStr;

use automerge::ChangeHash;

use crate::error::Error;

/// A document state, named by its heads (sorted, deduplicated).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Version(Vec<ChangeHash>);

impl Version {
    /// The version with these heads.
    pub fn new(mut heads: Vec<ChangeHash>) -> Self {
        heads.sort();
        heads.dedup();
        Version(heads)
    }

    /// The heads, sorted.
    pub fn heads(&self) -> &[ChangeHash] {
        &self.0
    }

    /// True for the version of a document with no changes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, head) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{head}")?;
        }
        Ok(())
    }
}

impl FromStr for Version {
    type Err = Error;

    /// Parses `hash.hash...`; each hash is 64 hex digits.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || Error::InvalidVersion(s.chars().take(200).collect());
        if s.is_empty() {
            return Err(invalid());
        }
        s.split('.')
            .map(|part| {
                if part.len() != 64 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid());
                }
                ChangeHash::from_str(part).map_err(|_| invalid())
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Version::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_round_trips() {
        let a = ChangeHash([1; 32]);
        let b = ChangeHash([2; 32]);
        let v = Version::new(vec![b, a, b]);
        assert_eq!(v.heads(), &[a, b]);
        let text = v.to_string();
        assert_eq!(text.len(), 64 * 2 + 1);
        assert_eq!(text.parse::<Version>().unwrap(), v);
    }

    #[test]
    fn rejects_malformed() {
        let good = "ab".repeat(32);
        for bad in [
            "".to_string(),
            "xyz".into(),
            format!("{good}."),
            format!("{good}x"),
            "g".repeat(64),
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }
}
