//! The project's JSON reader (`logic::json`) against `serde_json`, the reference for
//! standard JSON: same acceptance and same values for the four telemetry fields on
//! arbitrary documents; the `NaN`/`Infinity` extension serde_json refuses; the nesting
//! limit at its edge; and no panic and linear time on hostile input.

use fleetagg_logic::json::{parse_telemetry, JsonValue};
use fleetagg_logic::{validate, RejectReason};
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use std::time::{Duration, Instant};

use super::support::{accepted, assert_rejected, message_with, now, object, rules, valid_fields};

const TELEMETRY_KEYS: [&str; 4] = ["machine", "ts", "load_rate", "mileage"];

// ---------------------------------------------------------------------------------------
// Documents, with the choices of how each piece is written
// ---------------------------------------------------------------------------------------

/// A JSON value and the exact text chosen for it.
#[derive(Debug, Clone)]
enum Node {
    Null,
    Bool(bool),
    /// The number's text, in one of JSON's forms (`-0`, `1.50`, `2E+3`, `7e-2` ...).
    Number(String),
    String(JsonText),
    /// The items, and the whitespace written around each of them.
    Array(Vec<Node>, &'static str),
    /// The members, and the whitespace written around each key, colon and value.
    Object(Vec<(JsonText, Node)>, &'static str),
}

/// A string: what it decodes to, and how it is written (raw characters, short escapes,
/// `\u` escapes, surrogate pairs).
#[derive(Debug, Clone)]
struct JsonText {
    decoded: String,
    written: String,
}

impl Node {
    fn write(&self, out: &mut String) {
        match self {
            Node::Null => out.push_str("null"),
            Node::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
            Node::Number(text) => out.push_str(text),
            Node::String(text) => out.push_str(&text.written),
            Node::Array(items, space) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space);
                    item.write(out);
                    out.push_str(space);
                }
                out.push(']');
            }
            Node::Object(members, space) => write_object(members, space, out),
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }
}

fn write_object(members: &[(JsonText, Node)], space: &str, out: &mut String) {
    out.push('{');
    for (i, (key, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(space);
        out.push_str(&key.written);
        out.push_str(space);
        out.push(':');
        out.push_str(space);
        value.write(out);
        out.push_str(space);
    }
    out.push('}');
}

/// How one character is written in a string.
#[derive(Debug, Clone, Copy)]
enum Style {
    Raw,
    Short,
    Unicode,
    UpperUnicode,
}

fn write_char(ch: char, style: Style, out: &mut String) {
    let short = match ch {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '/' => Some("\\/"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        _ => None,
    };
    let must_escape = matches!(ch, '"' | '\\') || u32::from(ch) < 0x20;
    match (style, short) {
        (Style::Short, Some(escape)) => out.push_str(escape),
        (Style::Raw, _) if !must_escape => out.push(ch),
        (Style::Raw, Some(escape)) => out.push_str(escape),
        (style, _) => {
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                match style {
                    Style::UpperUnicode => out.push_str(&format!("\\u{unit:04X}")),
                    _ => out.push_str(&format!("\\u{unit:04x}")),
                }
            }
        }
    }
}

fn json_text(decoded: String, styles: &[Style]) -> JsonText {
    let mut written = String::from("\"");
    for (i, ch) in decoded.chars().enumerate() {
        write_char(ch, styles.get(i).copied().unwrap_or(Style::Raw), &mut written);
    }
    written.push('"');
    JsonText { decoded, written }
}

fn style() -> impl Strategy<Value = Style> {
    prop_oneof![6 => Just(Style::Raw), 2 => Just(Style::Short), 1 => Just(Style::Unicode), 1 => Just(Style::UpperUnicode)]
}

/// Any character, with the ones JSON treats specially made frequent.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        2 => prop::char::range(' ', '~'),
        2 => prop::sample::select(vec!['"', '\\', '/', '\u{0}', '\u{8}', '\u{c}', '\n', '\r', '\t', '\u{1f}', '\u{7f}']),
        1 => prop::sample::select(vec!['é', '機', '😀', '\u{2028}', '\u{feff}', '\u{fffd}', '\u{10ffff}', '\u{e000}']),
    ]
}

fn string_of(text: impl Strategy<Value = String>) -> impl Strategy<Value = JsonText> {
    (text, prop::collection::vec(style(), 0..40)).prop_map(|(decoded, styles)| json_text(decoded, &styles))
}

fn any_string() -> impl Strategy<Value = JsonText> {
    string_of(prop::collection::vec(any_char(), 0..24).prop_map(|chars| chars.into_iter().collect()))
}

/// A number in any of JSON's forms; exponents stay small enough to be finite in an f64
/// (larger ones are the extension, tested apart).
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,2})?",
        "-?[1-9][0-9]{0,3}",
        "-?0\\.0{0,30}[1-9]{1,3}",
        Just("-0".to_owned()),
        Just("-0.0e-0".to_owned()),
        Just("1.7976931348623157e308".to_owned()),
        Just("2.2250738585072014e-308".to_owned()),
        Just("4.9e-324".to_owned()),
        Just("9007199254740993".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("-9223372036854775809".to_owned()),
        Just("1796220599.9999995".to_owned()),
    ]
}

fn space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n", "\t", "\r\n  "])
}

fn leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        Just(Node::Null),
        any::<bool>().prop_map(Node::Bool),
        number_text().prop_map(Node::Number),
        any_string().prop_map(Node::String),
    ]
}

fn any_value() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..6), space())
                .prop_map(|(items, s)| Node::Array(items, s)),
            (prop::collection::vec((any_string(), inner), 0..6), space())
                .prop_map(|(members, s)| Node::Object(members, s)),
        ]
    })
}

/// A telemetry field's value: usually of the type validation wants, sometimes anything.
fn field_value(key: &str) -> BoxedStrategy<Node> {
    let typed = match key {
        "machine" => any_string().prop_map(Node::String).boxed(),
        "ts" => prop_oneof![
            number_text().prop_map(Node::Number),
            string_of(Just("2026-03-01T11:59:30.25+02:00".to_owned())).prop_map(Node::String),
        ]
        .boxed(),
        _ => number_text().prop_map(Node::Number).boxed(),
    };
    prop_oneof![3 => typed, 1 => any_value()].boxed()
}

/// A telemetry key, sometimes written with escapes (`"m\u0061chine"` is `machine`).
fn telemetry_key(key: &'static str) -> impl Strategy<Value = JsonText> {
    string_of(Just(key.to_owned()))
}

/// An extra member whose key is never a telemetry key.
fn extra_member() -> impl Strategy<Value = (JsonText, Node)> {
    (any_string(), any_value()).prop_filter_map("telemetry key", |(key, value)| {
        (!TELEMETRY_KEYS.contains(&key.decoded.as_str())).then_some((key, value))
    })
}

/// A payload object: each telemetry field present or not, sometimes one of them twice,
/// random extra members, all in random order.
#[derive(Debug, Clone)]
struct Document {
    members: Vec<(JsonText, Node)>,
    space: &'static str,
    /// Leading and trailing whitespace around the object.
    around: (&'static str, &'static str),
}

impl Document {
    fn text(&self) -> String {
        let mut out = String::from(self.around.0);
        write_object(&self.members, self.space, &mut out);
        out.push_str(self.around.1);
        out
    }

    fn has_repeated_telemetry_key(&self) -> bool {
        TELEMETRY_KEYS
            .iter()
            .any(|key| self.members.iter().filter(|(name, _)| name.decoded == *key).count() > 1)
    }

    /// The value of a telemetry field as written (the last one if repeated).
    fn field(&self, key: &str) -> Option<&Node> {
        self.members.iter().rev().find(|(name, _)| name.decoded == key).map(|(_, value)| value)
    }
}

fn document() -> impl Strategy<Value = Document> {
    let present =
        |key: &'static str| prop::option::weighted(0.85, (telemetry_key(key), field_value(key))).boxed();
    (
        (present("machine"), present("ts"), present("load_rate"), present("mileage")),
        prop::collection::vec(extra_member(), 0..6),
        prop::option::weighted(0.1, (prop::sample::select(TELEMETRY_KEYS.to_vec()), leaf())),
        space(),
        (space(), space()),
    )
        .prop_flat_map(|((machine, ts, load_rate, mileage), extras, repeat, space, around)| {
            let mut members: Vec<(JsonText, Node)> =
                [machine, ts, load_rate, mileage].into_iter().flatten().chain(extras).collect();
            if let Some((key, value)) = repeat {
                members.push((json_text(key.to_owned(), &[]), value));
            }
            Just(members).prop_shuffle().prop_map(move |members| Document { members, space, around })
        })
}

// ---------------------------------------------------------------------------------------
// Comparison
// ---------------------------------------------------------------------------------------

/// The top-level keys in order, repeats included (serde_json's `Value` keeps the last).
struct TopLevelKeys(Vec<String>);

impl<'de> Deserialize<'de> for TopLevelKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = TopLevelKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevelKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(key);
                }
                Ok(TopLevelKeys(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// What serde_json makes of a text, in this reader's terms: `Ok` with the four fields for
/// an object without repeated telemetry keys, `Err` for anything this reader must refuse.
fn serde_reference(text: &str) -> Result<[Option<serde_json::Value>; 4], String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let object = value.as_object().ok_or("not an object")?;
    let keys = serde_json::from_str::<TopLevelKeys>(text).map_err(|err| err.to_string())?.0;
    for key in TELEMETRY_KEYS {
        if keys.iter().filter(|name| *name == key).count() > 1 {
            return Err(format!("{key} repeated"));
        }
    }
    Ok(TELEMETRY_KEYS.map(|key| object.get(key).cloned()))
}

/// Two f64 at most one representable step apart. serde_json, without its
/// `float_roundtrip` feature (not enabled here), parses some long decimals one ulp off;
/// this reader uses Rust's correctly rounded `str::parse`, checked exactly elsewhere.
fn within_one_ulp(a: f64, b: f64) -> bool {
    a == b
        || (a.is_finite()
            && b.is_finite()
            && a.signum() == b.signum()
            && a.to_bits().abs_diff(b.to_bits()) <= 1)
}

fn same_value(ours: Option<&JsonValue<'_>>, reference: Option<&serde_json::Value>) -> Result<(), String> {
    use serde_json::Value;
    match (ours, reference) {
        (None, None) => Ok(()),
        (Some(JsonValue::Null), Some(Value::Null)) => Ok(()),
        (Some(JsonValue::Bool(a)), Some(Value::Bool(b))) if a == b => Ok(()),
        (Some(JsonValue::String(a)), Some(Value::String(b))) if a == b => Ok(()),
        (Some(JsonValue::Array), Some(Value::Array(_))) => Ok(()),
        (Some(JsonValue::Object), Some(Value::Object(_))) => Ok(()),
        (Some(JsonValue::Number { value, .. }), Some(Value::Number(b)))
            if b.as_f64().is_some_and(|b| within_one_ulp(*value, b)) =>
        {
            Ok(())
        }
        (ours, reference) => Err(format!("ours {ours:?}, serde_json {reference:?}")),
    }
}

fn ours_as_array<'a>(
    fields: &'a fleetagg_logic::json::TelemetryFields<'a>,
) -> [Option<&'a JsonValue<'a>>; 4] {
    [fields.machine.as_ref(), fields.ts.as_ref(), fields.load_rate.as_ref(), fields.mileage.as_ref()]
}

/// Same acceptance, same four values; where serde_json refuses and this reader accepts,
/// the text must use the extension (`NaN`, `Infinity`, a literal beyond f64).
fn agree_with_serde(text: &str) -> Result<(), TestCaseError> {
    let ours = parse_telemetry(text);
    match (ours, serde_reference(text)) {
        (Ok(fields), Ok(reference)) => {
            for ((key, ours), reference) in TELEMETRY_KEYS.iter().zip(ours_as_array(&fields)).zip(&reference)
            {
                same_value(ours, reference.as_ref())
                    .map_err(|why| TestCaseError::fail(format!("{key} in {text:?}: {why}")))?;
            }
            Ok(())
        }
        (Err(_), Err(_)) => Ok(()),
        (Ok(fields), Err(why)) => {
            let extension = text.contains("NaN") || text.contains("Infinity") || why.contains("out of range");
            prop_assert!(extension, "accepted {:?} ({:?}); serde_json: {}", text, fields, why);
            Ok(())
        }
        (Err(err), Ok(_)) => {
            Err(TestCaseError::fail(format!("refused {text:?} ({err}); serde_json accepts it")))
        }
    }
}

/// A text changed in a few places: characters replaced, dropped, inserted, or a slice
/// repeated, so reading stops at every kind of place.
fn mutated(text: &str, edits: &[(prop::sample::Index, u8, char)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, how, ch) in edits {
        if chars.is_empty() {
            chars.push(*ch);
            continue;
        }
        let at = at.index(chars.len());
        match how % 4 {
            0 => chars[at] = *ch,
            1 => {
                chars.remove(at);
            }
            2 => chars.insert(at, *ch),
            _ => {
                let end = (at + 8).min(chars.len());
                let slice: Vec<char> = chars[at..end].to_vec();
                chars.splice(at..at, slice);
            }
        }
    }
    chars.into_iter().collect()
}

fn json_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec!['{', '}', '[', ']', ':', ',', '"', '\\', 'u', '0', '9', '-', '+', '.', 'e', 'E', ' ', 'n', 't', 'f', 'N', 'I']),
        1 => any::<char>(),
    ]
}

// ---------------------------------------------------------------------------------------
// Differential properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(384))]

    /// Standard JSON documents: both readers accept (unless a telemetry key is repeated,
    /// which only this reader refuses) and give the same four values.
    #[test]
    fn agrees_with_serde_json_on_standard_documents(doc in document()) {
        let text = doc.text();
        agree_with_serde(&text)?;
        let ours = parse_telemetry(&text);
        prop_assert_eq!(ours.is_ok(), !doc.has_repeated_telemetry_key(), "{}", text);
        // Numbers are exactly what Rust's correctly rounded parser reads from their text.
        if let Ok(fields) = ours {
            for (key, value) in TELEMETRY_KEYS.iter().zip(ours_as_array(&fields)) {
                if let (Some(JsonValue::Number { value, text: digits }), Some(Node::Number(written))) =
                    (value, doc.field(key))
                {
                    prop_assert_eq!(digits, written);
                    let expected: f64 = written.parse().expect("a JSON number is a Rust float");
                    prop_assert_eq!(value.to_bits(), expected.to_bits(), "{}", written);
                }
                if let (Some(JsonValue::String(ours)), Some(Node::String(written))) = (value, doc.field(key)) {
                    prop_assert_eq!(ours.as_ref(), written.decoded.as_str());
                }
            }
        }
    }

    /// Any standard JSON value as the whole payload: only an object is accepted.
    #[test]
    fn agrees_with_serde_json_on_any_top_level_value(value in any_value(), around in (space(), space())) {
        let text = format!("{}{}{}", around.0, value.text(), around.1);
        agree_with_serde(&text)?;
        prop_assert_eq!(parse_telemetry(&text).is_ok(), matches!(value, Node::Object(..)));
    }

    /// Damaged documents: the same verdict as serde_json, never a panic.
    #[test]
    fn agrees_with_serde_json_on_damaged_documents(
        doc in document(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), json_char()), 1..5),
    ) {
        let text = mutated(&doc.text(), &edits);
        agree_with_serde(&text)?;
    }

    /// Token soup: never a panic, and no verdict serde_json contradicts.
    #[test]
    fn agrees_with_serde_json_on_token_soup(parts in prop::collection::vec(
        prop::sample::select(vec![
            "{", "}", "[", "]", ":", ",", "\"", "\\", "\\u", "d83d", "\\ude00", "\"k\"", "\"ts\"",
            "\"machine\"", "0", "-", "1.5", "e", "E+", "null", "true", "false", " ", "\n", "é",
        ]),
        0..48,
    )) {
        let text = parts.concat();
        agree_with_serde(&text)?;
    }

    /// Tokens close to JSON's numbers, literals and escapes, valid or not (`01`, `1.`,
    /// `+1`, `-`, `1e+`, `tru`, `"\x"`, `"\u12"` ...), where a value goes: the same verdict.
    #[test]
    fn agrees_with_serde_json_on_near_miss_tokens(
        token in prop_oneof![
            "[-+]?[0-9]{0,3}(\\.[0-9]{0,2})?([eE][-+]?[0-9]{0,2})?",
            "[-+]?(0|[1-9])[0-9xXbB_.]{0,4}",
            "(t|tr|tru|true|truee|f|fals|false|n|nul|null|nulll|True|NULL)",
            "\"([a-z]|\\\\[\"\\\\/bfnrtuxX0'a-fA-F]{0,6}){0,3}\"",
            "'[a-z]{0,3}'",
            "\\[[0-9,]{0,4}\\]",
            "\\{[\":a-z0-9,]{0,6}\\}",
        ],
        inside in any::<bool>(),
    ) {
        let text = if inside {
            format!("{{\"x\": [{token}], \"load_rate\": 1}}")
        } else {
            format!("{{\"load_rate\": {token}}}")
        };
        agree_with_serde(&text)?;
    }

    /// Arbitrary text and bytes: never a panic, whatever they hold.
    #[test]
    fn arbitrary_input_never_panics(text in any::<String>(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_telemetry(&text);
        let lossy = String::from_utf8_lossy(&bytes);
        let _ = parse_telemetry(&lossy);
        let _ = validate(&bytes, now(), &rules());
        agree_with_serde(&text)?;
    }
}

// ---------------------------------------------------------------------------------------
// The NaN / Infinity extension
// ---------------------------------------------------------------------------------------

/// Python's `json.dumps` writes `NaN`, `Infinity` and `-Infinity` bare; this reader takes
/// them as values (so validation can say `non_finite`), serde_json refuses the document.
#[test]
fn nan_and_infinity_are_values_serde_json_refuses() {
    for (token, check) in [
        ("NaN", f64::is_nan as fn(f64) -> bool),
        ("Infinity", |v: f64| v == f64::INFINITY),
        ("-Infinity", |v: f64| v == f64::NEG_INFINITY),
        ("1e999", |v: f64| v == f64::INFINITY),
        ("-1E+400", |v: f64| v == f64::NEG_INFINITY),
    ] {
        for text in [
            format!(r#"{{"load_rate": {token}}}"#),
            format!(r#"{{"load_rate":{token},"x":[{token},{{"y":{token}}}]}}"#),
            format!("{{\n  \"load_rate\" :\t{token} \n}}"),
        ] {
            let fields = parse_telemetry(&text).unwrap_or_else(|err| panic!("{text}: {err}"));
            assert!(matches!(fields.load_rate, Some(JsonValue::NonFinite(v)) if check(v)), "{text}");
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_err(), "serde_json read {text}");
        }
    }
    // A digit string beyond f64 is the same extension.
    let huge = format!("{{\"mileage\": 1{}}}", "0".repeat(400));
    assert_eq!(
        parse_telemetry(&huge).expect("huge literal").mileage,
        Some(JsonValue::NonFinite(f64::INFINITY))
    );
}

#[test]
fn near_misses_of_the_extension_are_malformed() {
    for token in [
        "nan",
        "NAN",
        "-NaN",
        "+NaN",
        "NaNa",
        "NaN0",
        "NaN.5",
        "infinity",
        "INFINITY",
        "+Infinity",
        "Inf",
        "-Inf",
        "Infinit",
        "Infinityy",
        "Infinity1",
        "Infinitye5",
        "--Infinity",
        "- Infinity",
        "-",
        "-I",
    ] {
        let text = format!(r#"{{"load_rate": {token}}}"#);
        assert!(parse_telemetry(&text).is_err(), "accepted {text}");
    }
    // The tokens are values, not keys.
    for text in ["{NaN: 1}", "{Infinity: 1}", "{\"a\": 1, NaN: 2}"] {
        assert!(parse_telemetry(text).is_err(), "accepted {text}");
    }
}

// ---------------------------------------------------------------------------------------
// The nesting limit
// ---------------------------------------------------------------------------------------

/// A message whose `extra` field nests containers so that the innermost is at `levels`
/// (the payload object is level 1), arrays or objects, the innermost empty or not.
fn nested_message(levels: usize, objects: bool, empty: bool) -> String {
    let inside = levels - 1;
    let (open, close, innermost) = match (objects, empty) {
        (false, true) => ("[", "]", "[]"),
        (false, false) => ("[", "]", "[1]"),
        (true, true) => ("{\"k\":", "}", "{}"),
        (true, false) => ("{\"k\":", "}", "{\"k\":1}"),
    };
    let extra = format!("{}{innermost}{}", open.repeat(inside - 1), close.repeat(inside - 1));
    let mut fields = valid_fields();
    fields.push(("extra", extra));
    object(&fields)
}

#[test]
fn nesting_is_limited_to_64_levels_whatever_the_innermost_container_holds() {
    for objects in [false, true] {
        for empty in [false, true] {
            let at_limit = nested_message(64, objects, empty);
            accepted(&at_limit, &rules());
            let over = nested_message(65, objects, empty);
            let rejection = assert_rejected(&over, &rules(), RejectReason::Malformed, &["nesting"]);
            assert!(rejection.detail.contains("64"), "{}", rejection.detail);
        }
    }
    // Mixed arrays and objects count alike; a telemetry field counts from level 2.
    let mixed_64 = format!("{}{{}}{}", "[{\"k\":".repeat(31), "}]".repeat(31));
    let mixed_65 = format!("[{mixed_64}]");
    let load_rate = |value: &str| message_with(&[("load_rate", value)]);
    assert_rejected(load_rate(&mixed_64), &rules(), RejectReason::BadType, &["array"]);
    assert_rejected(load_rate(&mixed_65), &rules(), RejectReason::Malformed, &["nesting"]);
    // The payload object alone is level 1.
    accepted(message_with(&[]), &rules());
    assert_eq!(parse_telemetry("{}").map(|_| ()), Ok(()));
}

// ---------------------------------------------------------------------------------------
// Linear time on hostile input
// ---------------------------------------------------------------------------------------

/// Documents built to make a careless reader slow, at a given size in bytes.
fn hostile_documents(size: usize) -> Vec<(&'static str, String)> {
    // Inside the level-2 array of `x`: 62 more levels reach the limit, not past it.
    let deep_64 = format!("{}{}", "[".repeat(62), "]".repeat(62));
    let escaped_key = r#""k\u00e9\ud83d\ude00\"\\": 0, "#;
    vec![
        ("escaped backslashes", format!("{{\"machine\": \"{}\"}}", "\\\\".repeat(size / 2))),
        ("raw text", format!("{{\"machine\": \"{}\"}}", "é".repeat(size / 2))),
        ("unicode escapes", format!("{{\"x\": \"{}\"}}", "\\ud83d\\ude00".repeat(size / 12))),
        (
            "many keys",
            format!("{{{}\"ts\": 1}}", (0..size / 12).map(|i| format!("\"k{i:06}\":0,")).collect::<String>()),
        ),
        ("many escaped keys", format!("{{{}\"ts\": 1}}", escaped_key.repeat(size / escaped_key.len()))),
        (
            "many 64-deep nests",
            format!("{{\"x\": [{}0]}}", format!("{deep_64},").repeat(size / (deep_64.len() + 1))),
        ),
        ("long integer", format!("{{\"ts\": 1{}}}", "0".repeat(size))),
        ("long fraction", format!("{{\"ts\": 0.{}1}}", "0".repeat(size))),
        ("long exponent", format!("{{\"ts\": 1e{}1}}", "0".repeat(size))),
        ("whitespace", format!("{{{}}}", " \n\t\r".repeat(size / 4))),
        ("many numbers", format!("{{\"x\": [{}0]}}", "-1.5e-7,".repeat(size / 8))),
        ("unterminated string", format!("{{\"x\": \"{}", "\\\"".repeat(size / 2))),
        ("unclosed array", format!("{{\"x\": [{}", "0,".repeat(size / 2))),
    ]
}

/// The fastest of a few runs: the least disturbed by other work on the machine.
fn fastest_parse(text: &str) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            let _ = std::hint::black_box(parse_telemetry(std::hint::black_box(text)));
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

/// Ten times the input takes about ten times as long: a quadratic step would take a
/// hundred times, and seconds at this size. The bound is loose (30x plus 200 ms, 5 s
/// at most) so a busy machine does not fail it.
#[test]
fn reading_time_grows_linearly_with_hostile_input() {
    let small = hostile_documents(100_000);
    let large = hostile_documents(1_000_000);
    for ((name, small), (_, large)) in small.iter().zip(&large) {
        // Each document is read to its end, not cut short by an early error.
        if let Err(err) = parse_telemetry(large) {
            assert!(err.offset + 16 >= large.len(), "{name}: stopped at {err}");
        }
        let (t_small, t_large) = (fastest_parse(small), fastest_parse(large));
        assert!(
            t_large <= t_small * 30 + Duration::from_millis(200),
            "{name}: {} bytes in {t_small:?}, {} bytes in {t_large:?}",
            small.len(),
            large.len()
        );
        assert!(t_large < Duration::from_secs(5), "{name}: {t_large:?} for {} bytes", large.len());
    }
}
