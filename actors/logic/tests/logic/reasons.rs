//! Every rejection reason, with its exact reason and an informative detail.

use chrono::SecondsFormat;
use chrono_tz::Tz;
use fleetagg_logic::{EpochUnit, RejectReason};
use std::time::Duration;

use super::support::{
    accepted, accepted_ts, assert_rejected, message_at, message_with, message_without, object, pad_to, rules,
    timeless_rules, utc, valid_fields, RECENT,
};

// ---------------------------------------------------------------------------------------
// The reasons themselves
// ---------------------------------------------------------------------------------------

#[test]
fn reject_reasons_are_listed_in_contract_order_with_contract_names() {
    let names: Vec<&str> = RejectReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "too_large",
            "malformed",
            "missing_field",
            "bad_type",
            "bad_machine",
            "bad_timestamp",
            "non_finite",
            "out_of_range",
            "future_ts",
            "too_late",
            // Not a validation reason: a minute row PostgreSQL refused, listed last.
            "db_refused",
        ]
    );
    for (position, reason) in RejectReason::ALL.iter().enumerate() {
        assert_eq!(reason.index(), position, "{reason}");
        assert_eq!(reason.to_string(), reason.as_str());
    }
}

#[test]
fn a_valid_message_is_accepted_with_its_values() {
    let telemetry = accepted(message_with(&[]), &rules());
    assert_eq!(telemetry.machine, "press-7");
    assert_eq!(telemetry.sample.ts, utc(RECENT));
    assert_eq!(telemetry.sample.load_rate, 42.5);
    assert_eq!(telemetry.sample.mileage, 1234.5);
}

// ---------------------------------------------------------------------------------------
// 1. too_large
// ---------------------------------------------------------------------------------------

#[test]
fn too_large_payloads_over_the_limit_are_rejected() {
    let valid = message_with(&[]);
    let mut small = rules();
    small.max_payload_bytes = valid.len();
    // Exactly at the limit: fine.
    accepted(&valid, &small);
    // One byte over (trailing whitespace is still a valid object).
    let over = format!("{valid} ");
    assert_rejected(
        &over,
        &small,
        RejectReason::TooLarge,
        &[&over.len().to_string(), &valid.len().to_string()],
    );

    // The default 64 KiB limit, with a valid object padded by whitespace.
    let at_limit = pad_to(&valid, 65_536);
    assert_eq!(at_limit.len(), 65_536);
    accepted(&at_limit, &rules());
    let beyond = pad_to(&valid, 65_537);
    assert_rejected(&beyond, &rules(), RejectReason::TooLarge, &["65537", "65536"]);
    // A huge machine id is too large before it is a bad machine.
    let huge_machine = message_with(&[(
        "machine",
        &serde_json::to_string(&"m".repeat(70_000)).expect("a string is valid JSON"),
    )]);
    assert_rejected(&huge_machine, &rules(), RejectReason::TooLarge, &["65536"]);
    // A limit of zero refuses everything but the empty payload (which is malformed).
    let mut zero = rules();
    zero.max_payload_bytes = 0;
    assert_rejected("{}", &zero, RejectReason::TooLarge, &["2"]);
    assert_rejected("", &zero, RejectReason::Malformed, &[]);
}

// ---------------------------------------------------------------------------------------
// 2. malformed
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_invalid_utf8_is_rejected() {
    // Valid JSON around a lone continuation byte in the machine id.
    let mut in_machine = message_with(&[]).into_bytes();
    let at = in_machine.iter().position(|&b| b == b'p').unwrap();
    in_machine[at + 2] = 0x80;
    for payload in [
        b"\xff\xfe\xfd".to_vec(),
        b"\xc3".to_vec(),
        // An overlong encoding of '/'.
        b"{\"machine\": \"\xc0\xaf\"}".to_vec(),
        // A UTF-16 surrogate encoded in UTF-8 (CESU), refused by Rust's decoder.
        b"{\"machine\": \"\xed\xa0\x80\"}".to_vec(),
        in_machine,
    ] {
        assert_rejected(&payload, &rules(), RejectReason::Malformed, &["UTF-8"]);
    }
}

#[test]
fn malformed_non_objects_and_broken_json_are_rejected() {
    let valid = message_with(&[]);
    let truncated_by_one = valid[..valid.len() - 1].to_owned();
    let truncated_by_half = valid[..valid.len() / 2].to_owned();
    for payload in [
        "",
        "   ",
        "hello",
        "not json at all",
        "[]",
        r#"[{"machine": "m", "ts": 0, "load_rate": 1, "mileage": 1}]"#,
        "42",
        "-1.5e3",
        r#""a string""#,
        "null",
        "true",
        "{",
        "}",
        r#"{"machine": "m",}"#,
        r#"{"machine" "m"}"#,
        r#"{machine: "m"}"#,
        r#"{'machine': 'm'}"#,
        r#"{"machine": "m"} trailing"#,
        r#"{"machine": "m"}{"machine": "n"}"#,
        r#"{"machine": "unterminated}"#,
        r#"{"load_rate": 01}"#,
        r#"{"load_rate": 1.}"#,
        r#"{"load_rate": .5}"#,
        r#"{"load_rate": +1}"#,
        r#"{"load_rate": nan}"#,
        r#"{"load_rate": -NaN}"#,
        r#"{"load_rate": Inf}"#,
        r#"{"machine": "\x41"}"#,
        r#"{"machine": "\ud800"}"#,
        r#"{"machine": "\udc00"}"#,
        "{\"machine\": \"raw\ttab\"}",
        "{\"machine\": \"raw\nnewline\"}",
        &truncated_by_one,
        &truncated_by_half,
    ] {
        let rejection = assert_rejected(payload, &rules(), RejectReason::Malformed, &["JSON"]);
        assert!(
            rejection.detail.contains("byte"),
            "{payload:?}: detail {:?} does not say where reading stopped",
            rejection.detail
        );
    }
}

#[test]
fn malformed_deep_nesting_is_an_error_not_a_crash() {
    let deep_brackets = "[".repeat(100_000);
    let deep_in_field =
        format!("{{\"extra\": {}1{}, \"machine\": \"m\"}}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_objects = format!("{{{}1{}", "\"a\": {".repeat(50_000), "}".repeat(50_001));
    let deep_unclosed = format!("{{\"load_rate\": {}", "[{\"x\":".repeat(40_000));
    let mut big = rules();
    big.max_payload_bytes = 10_000_000;
    for payload in [deep_brackets, deep_in_field, deep_objects, deep_unclosed] {
        assert_rejected(&payload, &big, RejectReason::Malformed, &["JSON"]);
    }
    // Reasonable nesting in an ignored field is fine.
    let mut fields = valid_fields();
    fields.push(("extra", format!("{}1{}", "[".repeat(16), "]".repeat(16))));
    accepted(object(&fields), &rules());
}

#[test]
fn malformed_duplicate_telemetry_keys_are_rejected() {
    // Two `machine` keys: which one is authoritative is undefined, so the message is refused.
    let mut fields = valid_fields();
    fields.push(("machine", r#""other""#.to_owned()));
    assert_rejected(object(&fields), &rules(), RejectReason::Malformed, &["JSON"]);
}

// ---------------------------------------------------------------------------------------
// 3. missing_field
// ---------------------------------------------------------------------------------------

#[test]
fn missing_field_absent_fields_are_named() {
    for field in ["machine", "ts", "load_rate", "mileage"] {
        let with_backticks = format!("`{field}`");
        assert_rejected(message_without(&[field]), &rules(), RejectReason::MissingField, &[&with_backticks]);
    }
    // An empty object misses the first field, machine.
    assert_rejected("{}", &rules(), RejectReason::MissingField, &["`machine`"]);
    // Extra fields do not stand in for missing ones, nor do nested ones.
    let mut fields: Vec<(&str, String)> =
        valid_fields().into_iter().filter(|(name, _)| *name != "mileage").collect();
    fields.push(("Mileage", "5".to_owned()));
    fields.push(("extra", r#"{"mileage": 5}"#.to_owned()));
    assert_rejected(object(&fields), &rules(), RejectReason::MissingField, &["`mileage`"]);
}

#[test]
fn missing_field_null_counts_as_missing() {
    for field in ["machine", "ts", "load_rate", "mileage"] {
        let with_backticks = format!("`{field}`");
        assert_rejected(
            message_with(&[(field, "null")]),
            &rules(),
            RejectReason::MissingField,
            &[&with_backticks, "null"],
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. bad_type
// ---------------------------------------------------------------------------------------

#[test]
fn bad_type_names_the_field_and_the_type_found() {
    for (field, raw, found) in [
        ("load_rate", r#""42""#, "string"),
        ("load_rate", "true", "boolean"),
        ("load_rate", "[42]", "array"),
        ("load_rate", r#"{"value": 42}"#, "object"),
        ("machine", "42", "number"),
        ("machine", "false", "boolean"),
        ("machine", r#"["m"]"#, "array"),
        ("machine", r#"{"id": "m"}"#, "object"),
        ("ts", "true", "boolean"),
        ("ts", "[]", "array"),
        ("ts", "{}", "object"),
        ("mileage", "{}", "object"),
        ("mileage", r#""1234.5""#, "string"),
        ("mileage", "false", "boolean"),
    ] {
        let with_backticks = format!("`{field}`");
        assert_rejected(
            message_with(&[(field, raw)]),
            &rules(),
            RejectReason::BadType,
            &[&with_backticks, found],
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. bad_machine
// ---------------------------------------------------------------------------------------

#[test]
fn bad_machine_empty_is_rejected() {
    assert_rejected(
        message_with(&[("machine", r#""""#)]),
        &rules(),
        RejectReason::BadMachine,
        &["`machine`", "empty"],
    );
}

#[test]
fn bad_machine_length_is_counted_in_characters() {
    for (unit, name) in [("a", "ascii"), ("é", "two-byte"), ("機", "three-byte"), ("😀", "four-byte")] {
        let at_limit = unit.repeat(128);
        let telemetry = accepted(
            message_with(&[("machine", &serde_json::to_string(&at_limit).expect("a string is valid JSON"))]),
            &rules(),
        );
        assert_eq!(telemetry.machine, at_limit, "{name}");

        let over = unit.repeat(129);
        assert_rejected(
            message_with(&[("machine", &serde_json::to_string(&over).expect("a string is valid JSON"))]),
            &rules(),
            RejectReason::BadMachine,
            &["`machine`", "129", "128"],
        );
    }
    // Escaped characters count once each too.
    let escaped_128 = "\\u00e9".repeat(128);
    assert_eq!(
        accepted(message_with(&[("machine", &format!("\"{escaped_128}\""))]), &rules())
            .machine
            .chars()
            .count(),
        128
    );
}

#[test]
fn bad_machine_control_characters_are_rejected() {
    for (escaped, code) in [
        (r#""\u0000""#, "U+0000"),
        (r#""nul\u0000inside""#, "U+0000"),
        (r#""tab\there""#, "U+0009"),
        (r#""new\nline""#, "U+000A"),
        (r#""bell\u0007""#, "U+0007"),
        (r#""\u001f""#, "U+001F"),
        (r#""del\u007f""#, "U+007F"),
        ("\"raw del \u{7f}\"", "U+007F"),
        (r#""c1\u0085""#, "U+0085"),
        ("\"raw c1 \u{9b}\"", "U+009B"),
    ] {
        assert_rejected(
            message_with(&[("machine", escaped)]),
            &rules(),
            RejectReason::BadMachine,
            &["`machine`", "control", code],
        );
    }
}

#[test]
fn machine_ids_with_escapes_and_unicode_are_decoded() {
    for (raw, expected) in [
        (r#""press\u002d7""#, "press-7"),
        (r#""a\"b\\c\/d""#, "a\"b\\c/d"),
        (r#""caf\u00e9""#, "café"),
        (r#""\ud83d\ude00 smile""#, "😀 smile"),
        (r#""spaces are fine""#, "spaces are fine"),
        ("\"line\u{2028}sep\"", "line\u{2028}sep"),
    ] {
        let telemetry = accepted(message_with(&[("machine", raw)]), &rules());
        assert_eq!(telemetry.machine, expected, "{raw}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. bad_timestamp
// ---------------------------------------------------------------------------------------

#[test]
fn bad_timestamp_unparseable_texts_are_rejected_and_quoted() {
    for text in [
        "yesterday",
        "",
        "12:00:00",
        "2026-03-01",
        "2026/03/01 11:59:30",
        "01/03/2026 11:59:30",
        "2026-03-01T11:59:30 UTC",
        "2026-03-01T11:59:30+25:00",
        "1772366370",
    ] {
        assert_rejected(message_at(text), &rules(), RejectReason::BadTimestamp, &[&format!("{text:?}")]);
    }
}

#[test]
fn bad_timestamp_impossible_dates_are_rejected() {
    for text in [
        "2026-02-30T11:59:30Z",
        "2026-02-30T11:59:30",
        "2026-02-29T11:59:30Z",
        "2026-13-01T11:59:30Z",
        "2026-00-10T11:59:30Z",
        "2026-04-31T11:59:30+02:00",
        "2026-03-01T25:00:00Z",
        "2026-03-01T11:60:00",
        "2026-03-01T11:59:61Z",
    ] {
        assert_rejected(message_at(text), &rules(), RejectReason::BadTimestamp, &[text]);
    }
    // 2028 is a leap year: Feb 29 exists (far from now, so only parsing is checked).
    let leap = timeless_rules(Tz::UTC, EpochUnit::S);
    assert_eq!(accepted_ts(message_at("2028-02-29T11:59:30Z"), &leap), utc("2028-02-29T11:59:30Z"));
}

#[test]
fn bad_timestamp_local_times_lost_or_repeated_by_dst_are_rejected() {
    let paris = timeless_rules(chrono_tz::Europe::Paris, EpochUnit::S);
    // 2026-03-29: Paris jumps from 02:00 to 03:00.
    for text in ["2026-03-29T02:00:00", "2026-03-29T02:30:00", "2026-03-29 02:59:59.999999"] {
        assert_rejected(
            message_at(text),
            &paris,
            RejectReason::BadTimestamp,
            &["does not exist", "Europe/Paris"],
        );
    }
    // 2026-10-25: Paris goes back from 03:00 to 02:00, so 02:xx happens twice.
    for text in ["2026-10-25T02:00:00", "2026-10-25T02:30:00", "2026-10-25T02:59:59"] {
        assert_rejected(message_at(text), &paris, RejectReason::BadTimestamp, &["ambiguous", "Europe/Paris"]);
    }
    // The same wall times are fine in UTC.
    let utc_rules = timeless_rules(Tz::UTC, EpochUnit::S);
    assert_eq!(accepted_ts(message_at("2026-03-29T02:30:00"), &utc_rules), utc("2026-03-29T02:30:00Z"));
    // New York: 2026-03-08 02:30 does not exist, 2026-11-01 01:30 happens twice.
    let new_york = timeless_rules(chrono_tz::America::New_York, EpochUnit::S);
    assert_rejected(
        message_at("2026-03-08T02:30:00"),
        &new_york,
        RejectReason::BadTimestamp,
        &["does not exist"],
    );
    assert_rejected(message_at("2026-11-01T01:30:00"), &new_york, RejectReason::BadTimestamp, &["ambiguous"]);
}

#[test]
fn bad_timestamp_non_finite_and_out_of_calendar_epochs_are_rejected() {
    let any_time = timeless_rules(Tz::UTC, EpochUnit::S);
    for raw in ["NaN", "Infinity", "-Infinity", "1e999"] {
        assert_rejected(message_with(&[("ts", raw)]), &any_time, RejectReason::BadTimestamp, &["`ts`"]);
    }
    for raw in ["1e300", "-1e300", "253402300800", "-62135596801"] {
        assert_rejected(
            message_with(&[("ts", raw)]),
            &any_time,
            RejectReason::BadTimestamp,
            &["epoch", "9999"],
        );
    }
    // The first and last whole seconds of years 1 to 9999 are fine.
    assert_eq!(accepted_ts(message_with(&[("ts", "-62135596800")]), &any_time), utc("0001-01-01T00:00:00Z"));
    assert_eq!(accepted_ts(message_with(&[("ts", "253402300799")]), &any_time), utc("9999-12-31T23:59:59Z"));
}

// ---------------------------------------------------------------------------------------
// 7. non_finite
// ---------------------------------------------------------------------------------------

#[test]
fn non_finite_python_tokens_and_overflowing_literals_are_rejected() {
    for field in ["load_rate", "mileage"] {
        for (raw, shown) in [
            ("NaN", "NaN"),
            ("Infinity", "inf"),
            ("-Infinity", "-inf"),
            ("1e999", "inf"),
            ("-1e999", "-inf"),
            ("1E400", "inf"),
        ] {
            let with_backticks = format!("`{field}`");
            assert_rejected(
                message_with(&[(field, raw)]),
                &rules(),
                RejectReason::NonFinite,
                &[&with_backticks, shown],
            );
        }
    }
    // What Python's json.dumps writes, spacing included.
    let python = format!(r#"{{"machine": "press-7", "ts": "{RECENT}", "load_rate": NaN, "mileage": 12.0}}"#);
    assert_rejected(python, &rules(), RejectReason::NonFinite, &["`load_rate`"]);
    // A literal that underflows to zero is finite.
    assert_eq!(accepted(message_with(&[("load_rate", "1e-999")]), &rules()).sample.load_rate, 0.0);
}

// ---------------------------------------------------------------------------------------
// 8. out_of_range
// ---------------------------------------------------------------------------------------

#[test]
fn out_of_range_values_are_rejected_with_the_value() {
    for (field, raw) in [
        ("load_rate", "-0.1"),
        ("load_rate", "100.1"),
        ("load_rate", "100.0000001"),
        ("load_rate", "-1"),
        ("load_rate", "1e6"),
        ("mileage", "-1"),
        ("mileage", "-0.001"),
        ("mileage", "-1e300"),
    ] {
        let with_backticks = format!("`{field}`");
        assert_rejected(
            message_with(&[(field, raw)]),
            &rules(),
            RejectReason::OutOfRange,
            &[&with_backticks, &raw.parse::<f64>().unwrap().to_string()],
        );
    }
}

#[test]
fn range_boundaries_are_accepted() {
    for (raw, expected) in [("0", 0.0), ("0.0", 0.0), ("100", 100.0), ("100.0", 100.0), ("1e2", 100.0)] {
        let sample = accepted(message_with(&[("load_rate", raw)]), &rules()).sample;
        assert_eq!(sample.load_rate, expected, "load_rate {raw}");
    }
    for (raw, expected) in [("0", 0.0), ("0.0", 0.0), ("1e300", 1e300)] {
        let sample = accepted(message_with(&[("mileage", raw)]), &rules()).sample;
        assert_eq!(sample.mileage, expected, "mileage {raw}");
    }
}

// ---------------------------------------------------------------------------------------
// 9. future_ts and 10. too_late
// ---------------------------------------------------------------------------------------

#[test]
fn future_ts_beyond_the_tolerance_is_rejected() {
    for text in [
        "2026-03-01T12:00:05.000001Z",
        "2026-03-01T12:00:06Z",
        "2026-03-01T13:00:00Z",
        "2026-03-01T14:00:06+02:00",
        "2027-01-01T00:00:00Z",
    ] {
        let shown = utc(text).to_chrono().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        assert_rejected(message_at(text), &rules(), RejectReason::FutureTs, &[&shown, "5s"]);
    }
}

#[test]
fn future_ts_within_the_tolerance_is_accepted() {
    for text in [
        "2026-03-01T12:00:05Z",
        "2026-03-01T12:00:04.999999Z",
        "2026-03-01T12:00:00Z",
        "2026-03-01T14:00:05+02:00",
    ] {
        assert_eq!(accepted_ts(message_at(text), &rules()), utc(text), "{text}");
    }
    // A wider tolerance moves the limit.
    let mut wide = rules();
    wide.future_tolerance = Some(Duration::from_secs(3600));
    accepted(message_at("2026-03-01T13:00:00Z"), &wide);
    assert_rejected(message_at("2026-03-01T13:00:00.000001Z"), &wide, RejectReason::FutureTs, &[]);
}

#[test]
fn future_ts_check_is_disabled_by_off() {
    let mut off = rules();
    off.future_tolerance = None;
    for text in ["2026-03-01T12:00:06Z", "2026-03-02T12:00:00Z", "2099-12-31T23:59:59Z"] {
        assert_eq!(accepted_ts(message_at(text), &off), utc(text), "{text}");
    }
    // ... but lateness is still checked.
    assert_rejected(message_at("2026-03-01T11:00:00Z"), &off, RejectReason::TooLate, &[]);
}

#[test]
fn too_late_beyond_max_lateness_is_rejected() {
    for text in [
        "2026-03-01T11:49:59.999999Z",
        "2026-03-01T11:49:59Z",
        "2026-03-01T11:00:00Z",
        "2026-03-01T13:49:00+02:00",
        "2020-01-01T00:00:00Z",
    ] {
        let shown = utc(text).to_chrono().to_rfc3339_opts(SecondsFormat::AutoSi, true);
        assert_rejected(message_at(text), &rules(), RejectReason::TooLate, &[&shown, "600s"]);
    }
}

#[test]
fn too_late_just_within_max_lateness_is_accepted() {
    for text in [
        "2026-03-01T11:50:00Z",
        "2026-03-01T11:50:00.000001Z",
        "2026-03-01T11:55:00Z",
        "2026-03-01T13:50:00+02:00",
    ] {
        assert_eq!(accepted_ts(message_at(text), &rules()), utc(text), "{text}");
    }
    let mut strict = rules();
    strict.max_lateness = Duration::from_secs(1);
    accepted(message_at("2026-03-01T11:59:59Z"), &strict);
    assert_rejected(message_at("2026-03-01T11:59:58.999999Z"), &strict, RejectReason::TooLate, &[]);
}
