//! Strict JSON: how a Concord server reads the JSON a client sends (HTTP bodies, WebSocket
//! messages), the one parser for all of them.
//!
//! It is `serde_json`, read through a visitor of its own rather than into
//! `serde_json::Value` directly, because that keeps two things a client did not mean:
//! - **a key given twice** in one object keeps its last value (`{"base": A, "base": B}`
//!   writes against B, whatever a proxy or a log that read the first one saw). Here it is
//!   an error, [`Error::DuplicateKey`], naming the key and where it is.
//! - **an integer out of the 64-bit range** (`120000000000000000000000000000`) becomes the
//!   nearest float, another number than the one sent. Here it is
//!   [`Error::IntegerOutOfRange`]. A number written as a float (`1.2e29`, `3.0`) stays a
//!   float, as JSON says.
//!
//! The nesting limit is `serde_json`'s (128 levels).
//!
//! ```
//! use concord_protocol::json::{from_str, Error};
//!
//! assert_eq!(from_str(r#"{"a": 1.2e29}"#).unwrap()["a"], 1.2e29);
//! assert!(matches!(from_str(r#"{"a": 1, "a": 2}"#), Err(Error::DuplicateKey { .. })));
//! assert!(matches!(
//!     from_str("[120000000000000000000000000000]"),
//!     Err(Error::IntegerOutOfRange { .. })
//! ));
//! ```

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a text is not JSON that Concord takes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not UTF-8 (JSON text is).
    #[error("the JSON text is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// Not JSON: a syntax error, trailing characters, or nesting over the limit.
    #[error("not valid JSON: {0}")]
    Syntax(serde_json::Error),
    /// An object names one key twice.
    #[error(
        "the key {key:?} appears twice in one object (line {line}, column {column}); \
         each key may be given once"
    )]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where its second occurrence ends (1-based).
        line: usize,
        /// The same, the column (1-based).
        column: usize,
    },
    /// An integer literal (no fraction, no exponent) outside the 64-bit range.
    #[error(
        "the integer {literal} is outside the range of 64-bit integers \
         (-9223372036854775808 to 18446744073709551615), so it cannot be stored exactly; \
         write it as a float (with a fraction or an exponent) if an approximation will do, \
         or as a string"
    )]
    IntegerOutOfRange {
        /// The literal as written (at most 80 characters of it).
        literal: String,
    },
}

/// Parses JSON bytes strictly (see the module docs).
pub fn from_slice(bytes: &[u8]) -> Result<Value, Error> {
    from_str(std::str::from_utf8(bytes)?)
}

/// Parses a JSON text strictly (see the module docs).
pub fn from_str(text: &str) -> Result<Value, Error> {
    let found = RefCell::new(Found::default());
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = Strict { found: &found }
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    let found = found.into_inner();
    let value = match (parsed, found.duplicate) {
        (Err(e), Some(key)) => {
            return Err(Error::DuplicateKey {
                key,
                line: e.line(),
                column: e.column(),
            })
        }
        (Err(e), None) => return Err(Error::Syntax(e)),
        (Ok(value), _) => value,
    };
    if found.huge_integral_float {
        if let Some(literal) = integer_out_of_range(text) {
            return Err(Error::IntegerOutOfRange {
                literal: literal.chars().take(80).collect(),
            });
        }
    }
    Ok(value)
}

/// What the visitor noticed on its way.
#[derive(Default)]
struct Found {
    /// The key that appeared twice (the parse stops there).
    duplicate: Option<String>,
    /// A float with an integral value outside the 64-bit integers was read: either a
    /// float literal (`1e30`, fine) or an integer literal that `serde_json` widened to a
    /// float. Its visitor is handed the same `f64` for both, so the text says which.
    huge_integral_float: bool,
}

/// Deserializes one JSON value as `serde_json::Value` does, noting what [`Found`] names.
#[derive(Clone, Copy)]
struct Strict<'a> {
    found: &'a RefCell<Found>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        // Every integer literal from -2^63 to 2^64 - 1 arrives as an i64 or a u64, so a float
        // out there came from a float literal or from an integer literal out of range (one
        // just below -2^63 rounds to -2^63, hence `<=`).
        let beyond = v <= -9_223_372_036_854_775_808.0 || v >= 18_446_744_073_709_551_616.0;
        if beyond && v.fract() == 0.0 {
            self.found.borrow_mut().huge_integral_float = true;
        }
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key().clone();
                    let error = serde::de::Error::custom(format!("duplicate key {key:?}"));
                    self.found.borrow_mut().duplicate = Some(key);
                    return Err(error);
                }
            }
        }
        Ok(Value::Object(object))
    }
}

/// The first integer literal of a (valid) JSON text that is outside the 64-bit integers.
/// Only number tokens are looked at: strings are skipped whole, and outside them every
/// digit or `-` begins a number.
fn integer_out_of_range(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let integer = !token.contains(['.', 'e', 'E']);
                if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                    return Some(token);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_parse_as_serde_json_parses_them() {
        let texts = [
            r#"{"a": [1, -2, 3.5, "x\"y", true, null, {"b": {}}], "c": 18446744073709551615}"#,
            "-9223372036854775808",
            "[1e300, -1.5e-300, 0.0, -0]",
            r#""\u00e9\ud83d\ude00""#,
            "  [ ]  ",
        ];
        for text in texts {
            let strict = from_str(text).unwrap();
            let plain: Value = serde_json::from_str(text).unwrap();
            assert_eq!(strict, plain, "{text}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_and_named() {
        let cases = [
            (r#"{"a": 1, "a": 2}"#, "a", 1),
            (r#"{"x": {"b": 1, "c": 2, "b": 3}}"#, "b", 1),
            ("[{}, {\"k\": 1,\n \"k\": 1}]", "k", 2),
            (r#"{"é": 1, "\u00e9": 2}"#, "é", 1),
        ];
        for (text, key, line) in cases {
            match from_str(text) {
                Err(e @ Error::DuplicateKey { .. }) => {
                    let Error::DuplicateKey {
                        key: k, line: l, ..
                    } = &e
                    else {
                        unreachable!()
                    };
                    assert_eq!((k.as_str(), *l), (key, line), "{text}");
                    assert!(e.to_string().contains(&format!("{key:?}")), "{e}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // The same key in two objects is no duplicate.
        assert!(from_str(r#"[{"a": 1}, {"a": 2}, {"b": {"a": 3}}]"#).is_ok());
    }

    #[test]
    fn integers_out_of_range_are_refused_floats_are_not() {
        for text in [
            "120000000000000000000000000000",
            r#"{"n": [1, 18446744073709551616]}"#,
            "-9223372036854775809",
            r#"{"s": "1e30", "n": -99999999999999999999999}"#,
        ] {
            assert!(
                matches!(from_str(text), Err(Error::IntegerOutOfRange { .. })),
                "{text}"
            );
        }
        for (text, expected) in [
            ("1.2e29", json!(1.2e29)),
            ("1E20", json!(1e20)),
            ("18446744073709551616.0", json!(18446744073709551616.0)),
            ("-9223372036854775808", json!(i64::MIN)),
            (
                r#"["120000000000000000000000000000", 1e30]"#,
                json!(["120000000000000000000000000000", 1e30]),
            ),
            (
                r#"{"k\"120000000000000000000000000000": 1e30}"#,
                json!({"k\"120000000000000000000000000000": 1e30}),
            ),
        ] {
            assert_eq!(from_str(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn malformed_text_is_a_syntax_error() {
        for text in ["", "{", "[1,]", "{\"a\" 1}", "1 2", "[1] x", "NaN"] {
            assert!(matches!(from_str(text), Err(Error::Syntax(_))), "{text}");
        }
        assert!(matches!(from_slice(b"[\xff]"), Err(Error::NotUtf8(_))));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(matches!(from_str(&deep), Err(Error::Syntax(_))));
    }
}
