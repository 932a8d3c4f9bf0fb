//! `mqtt.url`: one broker address, or several tried in order (the nodes of a clustered
//! broker), written as a string, an array of strings, or a comma-separated string (the
//! form an environment variable can carry).

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserializer, Serialize, Serializer};
use std::fmt;

const EXPECTED: &str = "a broker URL, an array of them, or several separated by commas";

/// One is written back as a string, so a configuration printed by `check-config` looks
/// like the one that was read.
pub(crate) fn serialize<S: Serializer>(urls: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    match urls {
        [one] => serializer.serialize_str(one),
        many => many.serialize(serializer),
    }
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    deserializer.deserialize_any(UrlsVisitor)
}

struct UrlsVisitor;

impl<'de> Visitor<'de> for UrlsVisitor {
    type Value = Vec<String>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
        Ok(text.split(',').map(|url| url.trim().to_owned()).collect())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        let mut urls = Vec::new();
        while let Some(url) = seq.next_element::<String>()? {
            urls.push(url.trim().to_owned());
        }
        Ok(urls)
    }
}

/// The URL in the scheme paho understands (`tcp://`, `ssl://`, `ws://`, `wss://`):
/// `mqtt://` and `mqtts://` are aliases.
pub(crate) fn paho_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("mqtt://") {
        format!("tcp://{rest}")
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        format!("ssl://{rest}")
    } else {
        url.to_owned()
    }
}
