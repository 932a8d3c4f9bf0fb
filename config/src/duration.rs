//! Durations written as human strings (`"500ms"`, `"5s"`, `"10m"`), and the optional
//! form where `"off"` disables a check.
//!
//! A wrong duration is reported through `invalid_value` with what is expected, never
//! with the text given: configuration errors do not echo values (see `crate::de`).

use serde::de::{self, Unexpected};
use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

const EXPECTED: &str = "a duration such as \"500ms\", \"5s\" or \"10m\"";
const EXPECTED_OR_OFF: &str = "a duration such as \"500ms\", \"5s\" or \"10m\", or \"off\"";

/// `#[serde(with = "crate::duration::human")]` for a required duration.
pub(crate) mod human {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).ok_or_else(|| de::Error::invalid_value(Unexpected::Str(&text), &EXPECTED))
    }
}

/// `#[serde(with = "crate::duration::human_or_off")]` for a duration that `"off"` disables.
pub(crate) mod human_or_off {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => super::human::serialize(duration, serializer),
            None => serializer.serialize_str("off"),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        parse(&text)
            .map(Some)
            .ok_or_else(|| de::Error::invalid_value(Unexpected::Str(&text), &EXPECTED_OR_OFF))
    }
}

fn parse(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}
