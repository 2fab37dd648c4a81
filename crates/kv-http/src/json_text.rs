//! The compact JSON text the store keeps for a JSON value.
//!
//! [`compact_json`] writes a parsed `serde_json::Value` as serde_json would, only faster for
//! strings. But serde_json (built without `arbitrary_precision`, a workspace-wide feature that
//! breaks its internally tagged enums, which the controller's commands are) reads an integer
//! that fits no 64-bit type as a double: written back from a `Value`,
//! `12345678901234567890123` became `1.2345678901234568e+22`. The original project kept such
//! integers exactly. So a document whose parsed `Value` holds a double ([`holds_a_double`]) is
//! read a second time, from its text ([`ExactJson::parse`]), where an integer literal too large
//! for 64 bits keeps its digits; every other part is written exactly as [`compact_json`] writes
//! it (strings escaped alike, other doubles as serde_json writes them, an object member given
//! twice kept at its first place with its last value), so the two paths agree wherever there
//! is no such integer.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value as Json;

/// `value` as compact JSON text, byte for byte what `serde_json::to_vec` gives (object members
/// in their order), but a string that needs no escaping is copied whole: serde_json looks each
/// byte of a string up in its escape table, which was a quarter of kvd's CPU time for PUTs of
/// 64 KiB string values (`docs/benchmarks.md`). Nesting is bounded by the parser (128 levels).
pub(crate) fn compact_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_compact(&mut out, value);
    out
}

fn write_compact(out: &mut Vec<u8>, value: &serde_json::Value) {
    use serde_json::Value as Json;
    match value {
        Json::String(text) => write_json_string(out, text),
        Json::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_compact(out, item);
            }
            out.push(b']');
        }
        Json::Object(members) => {
            out.push(b'{');
            for (index, (name, member)) in members.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_json_string(out, name);
                out.push(b':');
                write_compact(out, member);
            }
            out.push(b'}');
        }
        Json::Null | Json::Bool(_) | Json::Number(_) => {
            serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail")
        }
    }
}

/// A JSON string: quoted as is when nothing in it needs escaping (JSON escapes only `"`, `\`
/// and the control characters below U+0020, as serde_json does), else serde_json's escaping.
pub(crate) fn write_json_string(out: &mut Vec<u8>, text: &str) {
    // No early exit: the whole scan vectorizes, and the common case reads every byte anyway.
    let needs_escaping = text.bytes().fold(false, |found, byte| {
        found | (byte < 0x20) | (byte == b'"') | (byte == b'\\')
    });
    if needs_escaping {
        serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
        return;
    }
    out.reserve(text.len() + 2);
    out.push(b'"');
    out.extend_from_slice(text.as_bytes());
    out.push(b'"');
}

/// A parsed JSON value whose numbers keep the digits they were sent with.
#[derive(Debug)]
pub(crate) enum ExactJson {
    Object(Vec<(String, ExactJson)>),
    Array(Vec<ExactJson>),
    /// A string, number, `true`, `false` or `null`, as compact JSON text.
    Scalar(Vec<u8>),
}

/// Whether `value` holds a number serde_json read as a double (it may have been an integer
/// past 64 bits, which only [`ExactJson`] keeps exactly).
pub(crate) fn holds_a_double(value: &Json) -> bool {
    match value {
        Json::Number(number) => number.is_f64(),
        Json::Array(items) => items.iter().any(holds_a_double),
        Json::Object(members) => members.values().any(holds_a_double),
        Json::Null | Json::Bool(_) | Json::String(_) => false,
    }
}

impl ExactJson {
    /// Parses `text`, a JSON document serde_json has already accepted.
    pub fn parse(text: &str) -> serde_json::Result<ExactJson> {
        let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
        match text.as_bytes().first() {
            Some(b'{') => {
                let Members(members) = serde_json::from_str(text)?;
                let members = members
                    .into_iter()
                    .map(|(name, raw)| Ok((name, ExactJson::parse(raw.get())?)))
                    .collect::<serde_json::Result<_>>()?;
                Ok(ExactJson::Object(members))
            }
            Some(b'[') => {
                let items: Vec<Box<RawValue>> = serde_json::from_str(text)?;
                let items = items
                    .iter()
                    .map(|raw| ExactJson::parse(raw.get()))
                    .collect::<serde_json::Result<_>>()?;
                Ok(ExactJson::Array(items))
            }
            Some(b'"') => {
                let string: String = serde_json::from_str(text)?;
                let mut out = Vec::with_capacity(string.len() + 2);
                write_json_string(&mut out, &string);
                Ok(ExactJson::Scalar(out))
            }
            Some(b'-' | b'0'..=b'9') => Ok(ExactJson::Scalar(number_text(text)?)),
            _ => {
                // `true`, `false`, `null`: checked by parsing.
                let value: Json = serde_json::from_str(text)?;
                Ok(ExactJson::Scalar(value.to_string().into_bytes()))
            }
        }
    }

    /// The member `name` of an object.
    pub fn member(&self, name: &str) -> Option<&ExactJson> {
        match self {
            ExactJson::Object(members) => members
                .iter()
                .find(|(member, _)| member == name)
                .map(|(_, value)| value),
            _ => None,
        }
    }

    /// The items of an array.
    pub fn items(&self) -> &[ExactJson] {
        match self {
            ExactJson::Array(items) => items,
            _ => &[],
        }
    }

    /// Compact JSON text, as [`compact_json`] writes it but for the digits of
    /// integers past 64 bits.
    pub fn compact(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_compact(&mut out);
        out
    }

    fn write_compact(&self, out: &mut Vec<u8>) {
        match self {
            ExactJson::Object(members) => {
                out.push(b'{');
                for (index, (name, value)) in members.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    write_json_string(out, name);
                    out.push(b':');
                    value.write_compact(out);
                }
                out.push(b'}');
            }
            ExactJson::Array(items) => {
                out.push(b'[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(b',');
                    }
                    item.write_compact(out);
                }
                out.push(b']');
            }
            ExactJson::Scalar(text) => out.extend_from_slice(text),
        }
    }
}

/// A number's compact text: an integer literal that fits no 64-bit type as it was sent, any
/// other number as serde_json writes it (`1E2` is `100.0`, as before).
fn number_text(text: &str) -> serde_json::Result<Vec<u8>> {
    let number: serde_json::Number = serde_json::from_str(text)?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    let integer_literal = !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit());
    // (`-0` fits, and stays serde_json's `-0.0`.)
    if integer_literal && number.is_f64() && digits.parse::<u64>().is_err() {
        return Ok(text.as_bytes().to_vec());
    }
    serde_json::to_vec(&number)
}

/// An object's members in order, a name given twice kept at its first place with its last
/// value (as serde_json's `preserve_order` map does).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Members, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members: Vec<(String, Box<RawValue>)> = Vec::new();
                let mut places: HashMap<String, usize> = HashMap::new();
                while let Some((name, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    match places.get(&name) {
                        Some(&place) => members[place].1 = value,
                        None => {
                            places.insert(name.clone(), members.len());
                            members.push((name, value));
                        }
                    }
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value: strings of any characters (escapes, controls, non-ASCII), nested.
    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("finite", |number| number.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::String),
            "[ -~]{0,40}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                prop::collection::vec((any::<String>(), inner), 0..8).prop_map(|members| {
                    serde_json::Value::Object(members.into_iter().collect())
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn compact_json_is_what_serde_json_writes(value in json()) {
            prop_assert_eq!(compact_json(&value), serde_json::to_vec(&value).unwrap());
        }

        /// The path that keeps integers past 64 bits ([`ExactJson`]) writes every other
        /// value as compact_json writes what serde_json reads from the same text (a double
        /// read back may differ from the one written in its last bit: serde_json's parser is
        /// not exactly rounded without its `float_roundtrip` feature).
        #[test]
        fn the_exact_path_writes_what_compact_json_writes(value in json()) {
            let text = serde_json::to_string_pretty(&value).unwrap();
            let read: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(ExactJson::parse(&text).unwrap().compact(), compact_json(&read));
        }
    }

    #[test]
    fn strings_are_escaped_only_where_json_needs_it() {
        for text in [
            "plain",
            "",
            "quote \" here",
            "back\\slash",
            "tab\there",
            "\u{1}",
            "\u{7f} é 日本",
        ] {
            let value = serde_json::Value::String(text.to_owned());
            assert_eq!(
                compact_json(&value),
                serde_json::to_vec(&value).unwrap(),
                "{text:?}"
            );
        }
    }

    fn exact(text: &str) -> String {
        String::from_utf8(ExactJson::parse(text).unwrap().compact()).unwrap()
    }

    #[test]
    fn integers_past_64_bits_keep_their_digits() {
        for (sent, kept) in [
            ("12345678901234567890123", "12345678901234567890123"),
            ("-98765432109876543210987", "-98765432109876543210987"),
            (
                r#"{"id": 123456789012345678901234567890, "f": 1E2, "n": -0, "s": "\u00e9\n"}"#,
                r#"{"id":123456789012345678901234567890,"f":100.0,"n":-0.0,"s":"é\n"}"#,
            ),
            (
                r#"[1, 18446744073709551616, 2.5]"#,
                "[1,18446744073709551616,2.5]",
            ),
            (r#"{"a": 1, "b": 2, "a": 3}"#, r#"{"a":3,"b":2}"#),
        ] {
            assert_eq!(exact(sent), kept, "{sent}");
        }
    }

    #[test]
    fn without_such_integers_both_paths_write_the_same() {
        for text in [
            r#"{"b": [1, 2.5, -0.125, 1e-7, true, null], "a": {"x": "q\"uote"}, "b": 0.1}"#,
            "[]",
            "{}",
            "\"plain\"",
            "3.141592653589793238462643383279",
            "-17",
            "18446744073709551615",
            "-9223372036854775808",
        ] {
            let value: Json = serde_json::from_str(text).unwrap();
            assert_eq!(exact(text).into_bytes(), compact_json(&value), "{text}");
        }
    }

    #[test]
    fn doubles_are_found_anywhere() {
        let value: Json = serde_json::from_str(r#"{"a": [1, {"b": 2}]}"#).unwrap();
        assert!(!holds_a_double(&value));
        let value: Json = serde_json::from_str(r#"{"a": [1, {"b": 1e30}]}"#).unwrap();
        assert!(holds_a_double(&value));
    }
}
