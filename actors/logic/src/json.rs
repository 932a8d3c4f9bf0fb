//! A small JSON reader for telemetry payloads.
//!
//! Why not serde_json: Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` as
//! bare tokens, and the contract wants those messages rejected as `non_finite`, not as
//! `malformed`. This reader accepts exactly JSON plus those three tokens, borrows strings
//! that have no escapes, keeps only the four telemetry fields, and bounds nesting so
//! hostile input is an error, never a stack overflow. Every byte is looked at a bounded
//! number of times, so reading time is linear in the payload's size.

use std::borrow::Cow;

/// The deepest nesting of containers read, the payload object being level 1; a container
/// at the next level is refused as malformed, whether it is empty or not.
pub const MAX_DEPTH: usize = 64;
/// The error for nesting past [`MAX_DEPTH`] (a unit test checks the two agree).
const TOO_DEEP: &str = "nesting deeper than 64 levels";
/// The level of the payload object itself.
const TOP_LEVEL: usize = 1;

/// One JSON value, as far as validation needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum JsonValue<'a> {
    Null,
    Bool(bool),
    /// A finite number, and its text as written: an epoch `ts` is read from its decimal
    /// digits, since the nearest f64 can lie on the other side of a microsecond.
    Number {
        value: f64,
        text: &'a str,
    },
    /// `NaN`, `Infinity`, `-Infinity`, or a literal too large for an f64 (`1e999`).
    NonFinite(f64),
    String(Cow<'a, str>),
    Array,
    Object,
}

impl JsonValue<'_> {
    /// The JSON type name, for error details.
    pub fn type_name(&self) -> &'static str {
        match self {
            JsonValue::Null => "null",
            JsonValue::Bool(_) => "boolean",
            JsonValue::Number { .. } | JsonValue::NonFinite(_) => "number",
            JsonValue::String(_) => "string",
            JsonValue::Array => "array",
            JsonValue::Object => "object",
        }
    }
}

/// The telemetry fields of a payload; any other key is checked for syntax and dropped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TelemetryFields<'a> {
    pub machine: Option<JsonValue<'a>>,
    pub ts: Option<JsonValue<'a>>,
    pub load_rate: Option<JsonValue<'a>>,
    pub mileage: Option<JsonValue<'a>>,
}

/// Why a payload is not a JSON object, with the byte offset where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub message: &'static str,
    pub offset: usize,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

/// Reads a JSON object and returns its telemetry fields.
pub fn parse_telemetry(text: &str) -> Result<TelemetryFields<'_>, JsonError> {
    let mut reader = Reader { bytes: text.as_bytes(), text, pos: 0 };
    reader.skip_whitespace();
    if reader.peek() != Some(b'{') {
        return Err(reader.error("expected a JSON object"));
    }
    let fields = reader.top_level_object()?;
    reader.skip_whitespace();
    if reader.pos != reader.bytes.len() {
        return Err(reader.error("unexpected data after the object"));
    }
    Ok(fields)
}

struct Reader<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, message: &'static str) -> JsonError {
        JsonError { message, offset: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, message: &'static str) -> Result<(), JsonError> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(message))
        }
    }

    fn top_level_object(&mut self) -> Result<TelemetryFields<'a>, JsonError> {
        let mut fields = TelemetryFields::default();
        self.pos += 1; // '{'
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(fields);
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.expect(b':', "expected ':' after a key")?;
            let slot = match key.as_ref() {
                "machine" => Some(&mut fields.machine),
                "ts" => Some(&mut fields.ts),
                "load_rate" => Some(&mut fields.load_rate),
                "mileage" => Some(&mut fields.mileage),
                _ => None,
            };
            let value = self.value(TOP_LEVEL)?;
            if let Some(slot) = slot {
                if slot.is_some() {
                    return Err(self.error("duplicate telemetry key"));
                }
                *slot = Some(value);
            }
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(fields);
                }
                _ => return Err(self.error("expected ',' or '}' in object")),
            }
        }
    }

    /// Reads a value inside a container at level `depth`.
    fn value(&mut self, depth: usize) -> Result<JsonValue<'a>, JsonError> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'"') => Ok(JsonValue::String(self.string()?)),
            Some(b'{') => self.container(b'}', true, depth + 1).map(|()| JsonValue::Object),
            Some(b'[') => self.container(b']', false, depth + 1).map(|()| JsonValue::Array),
            Some(b't') => self.literal("true", JsonValue::Bool(true)),
            Some(b'f') => self.literal("false", JsonValue::Bool(false)),
            Some(b'n') => self.literal("null", JsonValue::Null),
            Some(b'N') => self.literal("NaN", JsonValue::NonFinite(f64::NAN)),
            Some(b'I') => self.literal("Infinity", JsonValue::NonFinite(f64::INFINITY)),
            Some(b'-') if self.bytes.get(self.pos + 1) == Some(&b'I') => {
                self.pos += 1;
                self.literal("Infinity", JsonValue::NonFinite(f64::NEG_INFINITY))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character")),
            None => Err(self.error("unexpected end of input")),
        }
    }

    /// Reads an array or a nested object at level `depth` for syntax only. The level is
    /// checked at the opening bracket, so an empty container counts like a full one.
    fn container(&mut self, close: u8, keyed: bool, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error(TOO_DEEP));
        }
        self.pos += 1;
        self.skip_whitespace();
        if self.peek() == Some(close) {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if keyed {
                self.skip_whitespace();
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                self.string()?;
                self.expect(b':', "expected ':' after a key")?;
            }
            self.value(depth)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(byte) if byte == close => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or a closing bracket")),
            }
        }
    }

    fn literal(&mut self, word: &'static str, value: JsonValue<'a>) -> Result<JsonValue<'a>, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("unknown literal"))
        }
    }

    fn number(&mut self) -> Result<JsonValue<'a>, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digit expected after '.'"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: digit expected in exponent"));
            }
            self.digits();
        }
        let text = &self.text[start..self.pos];
        let value: f64 = text.parse().map_err(|_| JsonError { message: "invalid number", offset: start })?;
        Ok(if value.is_finite() { JsonValue::Number { value, text } } else { JsonValue::NonFinite(value) })
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    /// Reads a string at the opening quote; borrows it when it has no escapes.
    fn string(&mut self) -> Result<Cow<'a, str>, JsonError> {
        self.pos += 1;
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'"') => {
                    let text = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(text));
                }
                Some(b'\\') => break,
                Some(0x00..=0x1f) => return Err(self.error("control character in string")),
                Some(_) => self.pos += 1,
                None => return Err(self.error("unterminated string")),
            }
        }
        let mut owned = String::from(&self.text[start..self.pos]);
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(owned));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut owned)?;
                }
                Some(0x00..=0x1f) => return Err(self.error("control character in string")),
                Some(_) => {
                    // Copy one whole UTF-8 character; the input is valid UTF-8.
                    let rest = &self.text[self.pos..];
                    let ch = rest.chars().next().ok_or_else(|| self.error("unterminated string"))?;
                    owned.push(ch);
                    self.pos += ch.len_utf8();
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let byte = self.peek().ok_or_else(|| self.error("unterminated escape"))?;
        self.pos += 1;
        let ch = match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let first = self.hex4()?;
                if (0xD800..0xDC00).contains(&first) {
                    if !self.bytes[self.pos..].starts_with(b"\\u") {
                        return Err(self.error("unpaired surrogate in \\u escape"));
                    }
                    self.pos += 2;
                    let second = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&second) {
                        return Err(self.error("unpaired surrogate in \\u escape"));
                    }
                    let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                    char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))?
                } else {
                    char::from_u32(first).ok_or_else(|| self.error("unpaired surrogate in \\u escape"))?
                }
            }
            _ => return Err(self.error("invalid escape")),
        };
        out.push(ch);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let code = u32::from_str_radix(digits, 16).map_err(|_| self.error("invalid \\u escape"))?;
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_four_fields_and_ignores_others() {
        let fields = parse_telemetry(
            r#" {"machine":"m-1","ts":"2026-01-01T00:00:00Z","extra":{"a":[1,2,{"b":null}]},
                "load_rate":42.5,"mileage":1e3} "#,
        )
        .unwrap();
        assert_eq!(fields.machine, Some(JsonValue::String("m-1".into())));
        assert_eq!(fields.ts, Some(JsonValue::String("2026-01-01T00:00:00Z".into())));
        assert_eq!(fields.load_rate, Some(JsonValue::Number { value: 42.5, text: "42.5" }));
        assert_eq!(fields.mileage, Some(JsonValue::Number { value: 1000.0, text: "1e3" }));
    }

    #[test]
    fn python_non_finite_tokens_are_values() {
        let fields = parse_telemetry(r#"{"load_rate": NaN, "mileage": -Infinity, "ts": Infinity}"#).unwrap();
        assert!(matches!(fields.load_rate, Some(JsonValue::NonFinite(v)) if v.is_nan()));
        assert_eq!(fields.mileage, Some(JsonValue::NonFinite(f64::NEG_INFINITY)));
        assert_eq!(fields.ts, Some(JsonValue::NonFinite(f64::INFINITY)));
        assert_eq!(
            parse_telemetry(r#"{"mileage": 1e999}"#).unwrap().mileage,
            Some(JsonValue::NonFinite(f64::INFINITY))
        );
    }

    #[test]
    fn escapes_decode() {
        let fields = parse_telemetry(r#"{"machine":"a\"b\\c\u00e9\ud83d\ude00\n"}"#).unwrap();
        assert_eq!(fields.machine, Some(JsonValue::String("a\"b\\cé😀\n".into())));
        let fields = parse_telemetry(r#"{"machine":"nul\u0000"}"#).unwrap();
        assert_eq!(fields.machine, Some(JsonValue::String("nul\0".into())));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        for text in [
            "",
            "[]",
            "42",
            "\"s\"",
            "{",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":-}",
            "{\"a\":nan}",
            "{\"a\":tru}",
            "{\"a\":\"x}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":1} x",
            "{\"a\":[1,2}",
            "{\"a\":\"tab\there\"}",
            "{a:1}",
            "{\"machine\":\"a\",\"machine\":\"b\"}",
        ] {
            assert!(parse_telemetry(text).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let err = parse_telemetry(&deep).unwrap_err();
        assert_eq!(err.message, TOO_DEEP);
        assert!(TOO_DEEP.contains(&MAX_DEPTH.to_string()));
    }
}
