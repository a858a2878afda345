//! The token file and what it grants: [`Auth`] (the SHA-256 digests of the tokens, each
//! with its [`Principal`]), scopes, and constant-time lookup of a presented token.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The shortest token accepted in the file: shorter ones can be guessed.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// One token of the file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    agent: String,
    token: Option<String>,
    token_sha256: Option<String>,
    scopes: Vec<String>,
}

/// Why a token file was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read the token file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not a valid token file.
    #[error("invalid token file: {0}")]
    Invalid(String),
}

/// Which documents a scope covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Docs {
    #[default]
    Nothing,
    Every,
    These(BTreeSet<Uuid>),
}

impl Docs {
    /// `doc` is `None` for a path that names no valid document id: only `*` covers it (and
    /// the handler then answers 400).
    fn covers(&self, doc: Option<Uuid>) -> bool {
        match (self, doc) {
            (Docs::Every, _) => true,
            (Docs::These(ids), Some(id)) => ids.contains(&id),
            _ => false,
        }
    }

    fn add(&mut self, target: &str) -> Result<(), String> {
        if target == "*" {
            *self = Docs::Every;
            return Ok(());
        }
        let id = Uuid::parse_str(target)
            .map_err(|_| format!("{target:?} is neither * nor a document id (a UUID)"))?;
        match self {
            Docs::Every => {}
            Docs::These(ids) => {
                ids.insert(id);
            }
            Docs::Nothing => *self = Docs::These(BTreeSet::from([id])),
        }
        Ok(())
    }
}

/// Who a token speaks for, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    agent: String,
    admin: bool,
    read: Docs,
    write: Docs,
}

impl Principal {
    fn from_scopes(agent: &str, scopes: &[String]) -> Result<Principal, String> {
        if scopes.is_empty() {
            return Err("no scopes: give admin, read:<id>, read:*, write:<id> or write:*".into());
        }
        let mut principal = Principal {
            agent: agent.to_owned(),
            admin: false,
            read: Docs::Nothing,
            write: Docs::Nothing,
        };
        for scope in scopes {
            match scope.trim().split_once(':') {
                None if scope.trim() == "admin" => principal.admin = true,
                Some(("read", target)) => principal.read.add(target.trim())?,
                Some(("write", target)) => principal.write.add(target.trim())?,
                _ => {
                    return Err(format!(
                    "unknown scope {scope:?}: give admin, read:<id>, read:*, write:<id> or write:*"
                ))
                }
            }
        }
        Ok(principal)
    }

    /// The agent every write with this token is recorded under.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// True for the `admin` scope.
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// May it read this document?
    pub fn can_read(&self, doc: Uuid) -> bool {
        self.reads(Some(doc))
    }

    /// May it write this document?
    pub fn can_write(&self, doc: Uuid) -> bool {
        self.writes(Some(doc))
    }

    pub(super) fn reads(&self, doc: Option<Uuid>) -> bool {
        self.admin || self.read.covers(doc) || self.write.covers(doc)
    }

    pub(super) fn writes(&self, doc: Option<Uuid>) -> bool {
        self.admin || self.write.covers(doc)
    }

    pub(super) fn writes_every_document(&self) -> bool {
        self.admin || self.write == Docs::Every
    }
}

/// The tokens of a server: SHA-256 digests and what each may do.
pub struct Auth {
    tokens: Vec<([u8; 32], Arc<Principal>)>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Agents only: digests are not for logs either.
        f.debug_struct("Auth")
            .field(
                "agents",
                &self
                    .tokens
                    .iter()
                    .map(|(_, p)| p.agent())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&Sha256::digest(token.as_bytes()));
    out
}

/// Equality that takes the same time wherever the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

impl Auth {
    /// Reads a token file (see [`Auth::from_json`]).
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses a token file:
    ///
    /// ```json
    /// {"tokens": [
    ///   {"agent": "ops", "token": "3f9c…(at least 16 characters)", "scopes": ["admin"]},
    ///   {"agent": "planner", "token_sha256": "<64 hex digits>", "scopes": ["write:*"]},
    ///   {"agent": "reviewer", "token": "…", "scopes": ["read:*", "write:7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10"]}
    /// ]}
    /// ```
    ///
    /// Each token names its agent (1 to 128 visible ASCII characters), exactly one of
    /// `token` (visible ASCII, at least [`MIN_TOKEN_CHARS`]) or `token_sha256` (the hex
    /// SHA-256 of the token, so that the file need not hold secrets), and its scopes.
    /// Unknown fields, unknown scopes, an empty list and a token listed twice are errors.
    pub fn from_json(text: &str) -> Result<Auth, AuthError> {
        let file: TokenFile =
            serde_json::from_str(text).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if file.tokens.is_empty() {
            return Err(AuthError::Invalid(
                "the file lists no tokens, so nobody could use the server".into(),
            ));
        }
        let mut tokens: Vec<([u8; 32], Arc<Principal>)> = Vec::new();
        for (i, entry) in file.tokens.into_iter().enumerate() {
            let at = |what: String| AuthError::Invalid(format!("tokens[{i}]: {what}"));
            let agent = entry.agent.trim();
            if agent.is_empty()
                || agent.len() > 128
                || !agent.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(at("agent must be 1 to 128 visible ASCII characters".into()));
            }
            let digest = match (entry.token, entry.token_sha256) {
                (Some(token), None) => {
                    if token.len() < MIN_TOKEN_CHARS || !token.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(at(format!(
                            "a token must be at least {MIN_TOKEN_CHARS} visible ASCII characters \
                             without spaces (try `openssl rand -hex 32`)"
                        )));
                    }
                    digest(&token)
                }
                (None, Some(hex)) => {
                    let bytes = hex::decode(hex.trim())
                        .ok()
                        .filter(|b| b.len() == 32)
                        .ok_or_else(|| at("token_sha256 must be 64 hex digits".into()))?;
                    let mut out = [0u8; 32];
                    out.copy_from_slice(&bytes);
                    out
                }
                _ => return Err(at("give exactly one of token and token_sha256".into())),
            };
            if tokens.iter().any(|(d, _)| *d == digest) {
                return Err(at("this token is listed twice".into()));
            }
            let principal = Principal::from_scopes(agent, &entry.scopes).map_err(at)?;
            tokens.push((digest, Arc::new(principal)));
        }
        Ok(Auth { tokens })
    }

    /// Who a presented token speaks for, if it is one of ours.
    pub fn authenticate(&self, token: &str) -> Option<Arc<Principal>> {
        let presented = digest(token);
        let mut found = None;
        // Every digest is compared, found or not.
        for (known, principal) in &self.tokens {
            if same(known, &presented) {
                found = Some(Arc::clone(principal));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "7f1c1c9e-3b8e-4c43-9a55-0d6f3f3c2a10";

    fn file(entries: &str) -> String {
        format!("{{\"tokens\": [{entries}]}}")
    }

    #[test]
    fn tokens_and_scopes_are_parsed() {
        let digest_hex = hex::encode(Sha256::digest(b"hashed-token-0123456789"));
        let auth = Auth::from_json(&file(&format!(
            r#"{{"agent": "ops", "token": "admin-token-0123456789", "scopes": ["admin"]}},
               {{"agent": "reader", "token_sha256": "{digest_hex}", "scopes": ["read:{DOC}"]}},
               {{"agent": "writer", "token": "writer-token-0123456789", "scopes": ["read:*", "write:{DOC}"]}}"#
        )))
        .unwrap();
        let doc = Uuid::parse_str(DOC).unwrap();
        let other = Uuid::new_v4();
        let admin = auth.authenticate("admin-token-0123456789").unwrap();
        assert!(admin.is_admin() && admin.can_write(other));
        let reader = auth.authenticate("hashed-token-0123456789").unwrap();
        assert_eq!(reader.agent(), "reader");
        assert!(reader.can_read(doc) && !reader.can_write(doc) && !reader.can_read(other));
        let writer = auth.authenticate("writer-token-0123456789").unwrap();
        assert!(writer.can_write(doc) && !writer.can_write(other) && writer.can_read(other));
        assert!(!writer.writes_every_document());
        assert!(auth.authenticate("writer-token-012345678").is_none());
        assert!(auth.authenticate("").is_none());
        // Debug output names agents, never digests.
        let debug = format!("{auth:?}");
        assert!(debug.contains("reader") && !debug.contains(&digest_hex));
    }

    #[test]
    fn bad_token_files_are_refused_with_a_reason() {
        let t = "token-0123456789abcdef";
        let cases = [
            ("{}".to_owned(), "missing field"),
            (file(""), "no tokens"),
            (
                file(r#"{"agent": "a", "token": "short", "scopes": ["admin"]}"#),
                "at least 16",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t} x", "scopes": ["admin"]}}"#
                )),
                "at least 16",
            ),
            (
                file(&format!(
                    r#"{{"agent": "", "token": "{t}", "scopes": ["admin"]}}"#
                )),
                "agent",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": []}}"#
                )),
                "no scopes",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["root"]}}"#
                )),
                "unknown scope",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["read:doc-1"]}}"#
                )),
                "neither * nor",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["delete:*"]}}"#
                )),
                "unknown scope",
            ),
            (
                file(r#"{"agent": "a", "scopes": ["admin"]}"#),
                "exactly one",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "token_sha256": "00", "scopes": ["admin"]}}"#
                )),
                "exactly one",
            ),
            (
                file(r#"{"agent": "a", "token_sha256": "abc", "scopes": ["admin"]}"#),
                "64 hex",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["admin"], "role": 1}}"#
                )),
                "unknown field",
            ),
            (
                file(&format!(
                    r#"{{"agent": "a", "token": "{t}", "scopes": ["admin"]}}, {{"agent": "b", "token": "{t}", "scopes": ["read:*"]}}"#
                )),
                "listed twice",
            ),
        ];
        for (text, expected) in cases {
            let e = Auth::from_json(&text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn comparison_is_constant_time_shaped() {
        let a = digest("one");
        let mut b = a;
        assert!(same(&a, &b));
        b[31] ^= 1;
        assert!(!same(&a, &b));
    }
}
