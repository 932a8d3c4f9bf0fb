//! Deserializing a configuration with errors that never contain a value.
//!
//! serde's and toml's messages quote the offending input (`invalid type: string "…",
//! expected struct PasswordConfig`). A value in the wrong place may well be a secret: a
//! password written as `database.password = "…"` where a secret source belongs, or pasted
//! into the wrong environment variable, and configuration errors go to terminals, CI logs
//! and journald. So the configuration is deserialized through [`ValueDeserializer`], whose
//! error type [`QuietError`] keeps what was expected and only the *kind* of what was found.
//! No value reaches a message from here: the error names the key (the caller adds it) and
//! the operator knows what they wrote there.
//!
//! serde's `custom` messages are free text that third-party types fill with the input
//! (chrono-tz: `failed to parse timezone: '…'`), so they are replaced by a neutral text.
//! This crate's own helpers report through `invalid_value` with an
//! [`Expected`](de::Expected) instead, which keeps their hints.

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, Deserializer, IntoDeserializer, Unexpected, Visitor};
use std::fmt;
use toml::Value;

/// A deserialization error whose text holds no input value.
#[derive(Debug)]
pub(crate) struct QuietError(String);

impl fmt::Display for QuietError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for QuietError {}

impl de::Error for QuietError {
    fn custom<T: fmt::Display>(_message: T) -> Self {
        // Deliberately dropped: see the module documentation.
        QuietError("invalid value".to_owned())
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        QuietError(format!("found {}, expected {expected}", kind(&unexpected)))
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        QuietError(format!("invalid value ({}), expected {expected}", kind(&unexpected)))
    }

    fn invalid_length(len: usize, expected: &dyn de::Expected) -> Self {
        QuietError(format!("expected {expected}, found {len} elements"))
    }

    fn unknown_variant(_variant: &str, expected: &'static [&'static str]) -> Self {
        QuietError(format!("unknown value, expected {}", one_of(expected)))
    }

    /// Field names are keys, not values: naming them is what makes the error useful.
    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        QuietError(format!("unknown field `{field}`, expected {}", one_of(expected)))
    }

    fn missing_field(field: &'static str) -> Self {
        QuietError(format!("missing field `{field}`"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        QuietError(format!("duplicate field `{field}`"))
    }
}

/// What was found, without the value itself.
fn kind(unexpected: &Unexpected<'_>) -> &'static str {
    match unexpected {
        Unexpected::Bool(_) => "a boolean",
        Unexpected::Unsigned(_) | Unexpected::Signed(_) => "an integer",
        Unexpected::Float(_) => "a float",
        Unexpected::Char(_) => "a character",
        Unexpected::Str(_) => "a string",
        Unexpected::Bytes(_) => "bytes",
        Unexpected::Unit => "nothing",
        Unexpected::Seq => "an array",
        Unexpected::Map => "a table",
        // The rest do not come out of a TOML document; `Other` is free text.
        _ => "a value of another kind",
    }
}

fn one_of(names: &[&str]) -> String {
    match names {
        [] => "nothing here".to_owned(),
        [only] => format!("`{only}`"),
        names => {
            let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
            format!("one of {}", quoted.join(", "))
        }
    }
}

/// A parsed TOML value as a serde deserializer with [`QuietError`]s.
#[derive(Debug)]
pub(crate) struct ValueDeserializer(pub(crate) Value);

impl<'de> IntoDeserializer<'de, QuietError> for ValueDeserializer {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for ValueDeserializer {
    type Error = QuietError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QuietError> {
        match self.0 {
            Value::String(text) => visitor.visit_string(text),
            Value::Integer(number) => visitor.visit_i64(number),
            Value::Float(number) => visitor.visit_f64(number),
            Value::Boolean(flag) => visitor.visit_bool(flag),
            // No key takes a date: offered as text, it is refused like any wrong string.
            Value::Datetime(datetime) => visitor.visit_string(datetime.to_string()),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(ValueDeserializer));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Value::Table(table) => {
                let entries = table.into_iter().map(|(key, value)| (key, ValueDeserializer(value)));
                let mut map = MapDeserializer::new(entries);
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    /// A key that is present is `Some`: absence is handled by `#[serde(default)]`.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, QuietError> {
        visitor.visit_some(self)
    }

    /// Enums in the configuration are unit variants written as strings.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, QuietError> {
        match self.0 {
            Value::String(text) => {
                visitor.visit_enum(IntoDeserializer::<'de, QuietError>::into_deserializer(text))
            }
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    /// A section is a table. serde would also fill a struct from an array, field by
    /// field, which turns `password = ["…"]` into a puzzling error about `source`.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, QuietError> {
        match self.0 {
            Value::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, QuietError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        count: u8,
        #[serde(default)]
        tags: Vec<String>,
        #[serde(default)]
        mode: Option<Mode>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        Fast,
        Slow,
    }

    fn parse(text: &str) -> Result<Sample, QuietError> {
        let table: toml::Table = text.parse().unwrap();
        Sample::deserialize(ValueDeserializer(Value::Table(table)))
    }

    #[test]
    fn values_of_every_kind_deserialize() {
        let sample = parse("name = \"n\"\ncount = 3\ntags = [\"a\", \"b\"]\nmode = \"slow\"\n").unwrap();
        let expected =
            Sample { name: "n".into(), count: 3, tags: vec!["a".into(), "b".into()], mode: Some(Mode::Slow) };
        assert_eq!(sample, expected);
        assert_eq!(parse("name = \"n\"\ncount = 0\n").unwrap().mode, None);
    }

    #[test]
    fn errors_say_what_was_expected_and_found_but_not_the_value() {
        for (text, says) in [
            ("name = \"n\"\ncount = \"SECRET\"\n", "found a string, expected u8"),
            ("name = \"n\"\ncount = 1000\n", "invalid value (an integer), expected u8"),
            ("name = \"n\"\ncount = 1\nmode = \"SECRET\"\n", "unknown value, expected one of `fast`, `slow`"),
            ("name = \"n\"\ncount = 1\nSECRET_KEY = 1\n", "unknown field `SECRET_KEY`"),
            ("name = [\"SECRET\"]\ncount = 1\n", "found an array, expected a string"),
            ("count = 1\n", "missing field `name`"),
        ] {
            let text_of_error = parse(text).unwrap_err().to_string();
            assert!(text_of_error.contains(says), "{text_of_error}");
            assert!(!text_of_error.replace("SECRET_KEY", "").contains("SECRET"), "{text_of_error}");
            assert!(!text_of_error.contains("1000"), "{text_of_error}");
        }
    }
}
