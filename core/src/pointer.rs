//! JSON Pointers (RFC 6901) and the patterns a [`Schema`](crate::Schema) is made of.

use std::fmt;

use crate::error::Error;

/// A parsed JSON Pointer: the unescaped reference tokens, root first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// The pointer to the whole document.
    pub fn root() -> Self {
        Pointer(Vec::new())
    }

    /// Parses `""` (the root) or `/a/b~1c`; anything else is [`Error::InvalidPointer`].
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(Error::InvalidPointer {
                pointer: s.to_owned(),
                reason: "a JSON Pointer is empty or starts with '/'".into(),
            });
        };
        rest.split('/')
            .map(|token| {
                unescape(token).ok_or_else(|| Error::InvalidPointer {
                    pointer: s.to_owned(),
                    reason: "'~' must be followed by '0' or '1'".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Pointer)
    }

    /// The reference tokens.
    pub fn tokens(&self) -> &[String] {
        &self.0
    }

    /// The pointer one level up and the last token, or `None` for the root.
    pub fn split_last(&self) -> Option<(Pointer, &str)> {
        let (last, parent) = self.0.split_last()?;
        Some((Pointer(parent.to_vec()), last))
    }

    /// This pointer with one more token.
    pub fn child(&self, token: impl Into<String>) -> Pointer {
        let mut tokens = self.0.clone();
        tokens.push(token.into());
        Pointer(tokens)
    }

    /// True if `self` is `other` or lies inside it.
    pub fn starts_with(&self, other: &Pointer) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl From<Vec<String>> for Pointer {
    fn from(tokens: Vec<String>) -> Self {
        Pointer(tokens)
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for token in &self.0 {
            write!(f, "/{}", token.replace('~', "~0").replace('/', "~1"))?;
        }
        Ok(())
    }
}

fn unescape(token: &str) -> Option<String> {
    if !token.contains('~') {
        return Some(token.to_owned());
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c == '~' {
            match chars.next() {
                Some('0') => out.push('~'),
                Some('1') => out.push('/'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// A pointer whose tokens may be `*`, matching any one token: `/tasks/*/notes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern(Pointer);

impl Pattern {
    /// Parses a pattern; it is a JSON Pointer whose `*` tokens are wildcards.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Pointer::parse(s).map(Pattern)
    }

    /// The tokens, `*` included.
    pub fn tokens(&self) -> &[String] {
        self.0.tokens()
    }

    /// True if `path` matches token by token.
    pub fn matches(&self, path: &[String]) -> bool {
        let tokens = self.0.tokens();
        tokens.len() == path.len() && tokens.iter().zip(path).all(|(p, t)| p == "*" || p == t)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for (text, tokens) in [
            ("", vec![]),
            ("/a", vec!["a"]),
            ("/a/0/b", vec!["a", "0", "b"]),
            ("/a~1b/c~0d", vec!["a/b", "c~d"]),
            ("/", vec![""]),
        ] {
            let p = Pointer::parse(text).unwrap();
            assert_eq!(p.tokens(), tokens.as_slice(), "{text}");
            assert_eq!(p.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_pointers() {
        for bad in ["a", "a/b", "/a~", "/a~2"] {
            assert!(Pointer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patterns_match_one_token_per_star() {
        let p = Pattern::parse("/tasks/*/notes").unwrap();
        let path = |s: &str| Pointer::parse(s).unwrap().tokens().to_vec();
        assert!(p.matches(&path("/tasks/0/notes")));
        assert!(p.matches(&path("/tasks/x/notes")));
        assert!(!p.matches(&path("/tasks/notes")));
        assert!(!p.matches(&path("/tasks/0/notes/1")));
    }
}
