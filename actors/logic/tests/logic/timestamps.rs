//! Timestamp forms and time zones, minute bucketing, and exact epoch fractions.

use chrono::{NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use fleetagg_logic::json::{parse_telemetry, JsonValue};
use fleetagg_logic::{EpochUnit, Minute, RejectReason, Timestamp};
use proptest::prelude::*;

use super::support::{
    accepted, accepted_ts, assert_rejected, check, message_at, message_with, object, rules, rules_in,
    timeless_rules, utc, valid_fields, MICROS_PER_MINUTE, MICROS_PER_SECOND,
};

// ---------------------------------------------------------------------------------------
// Time zones and timestamp forms
// ---------------------------------------------------------------------------------------

#[test]
fn rfc3339_offsets_are_normalised_to_utc() {
    let expected = utc("2026-03-01T11:59:30Z");
    for text in [
        "2026-03-01T11:59:30Z",
        "2026-03-01T11:59:30+00:00",
        "2026-03-01T11:59:30-00:00",
        "2026-03-01T13:59:30+02:00",
        "2026-03-01T08:29:30-03:30",
        "2026-03-01T17:44:30+05:45",
        "2026-03-01T17:29:30+05:30",
        "2026-03-02T01:44:30+13:45",
        "2026-02-28T23:59:30-12:00",
        "2026-03-01T11:59:30.000000Z",
    ] {
        let ts = accepted_ts(message_at(text), &rules());
        assert_eq!(ts, expected, "{text}");
        // An offset wins over the default zone.
        assert_eq!(accepted_ts(message_at(text), &rules_in(chrono_tz::Asia::Tokyo)), expected, "{text}");
    }
}

#[test]
fn fractional_seconds_keep_microseconds_and_truncate_nanoseconds() {
    let base = utc("2026-03-01T11:59:30Z").micros();
    for (text, micros) in [
        ("2026-03-01T11:59:30.1Z", 100_000),
        ("2026-03-01T11:59:30.25Z", 250_000),
        ("2026-03-01T11:59:30.123Z", 123_000),
        ("2026-03-01T11:59:30.000001Z", 1),
        ("2026-03-01T11:59:30.123456Z", 123_456),
        ("2026-03-01T11:59:30.1234567Z", 123_456),
        ("2026-03-01T11:59:30.123456789Z", 123_456),
        ("2026-03-01T11:59:30.999999999Z", 999_999),
        ("2026-03-01T11:59:30.0000009Z", 0),
        ("2026-03-01T13:59:30.654321+02:00", 654_321),
        ("2026-03-01T08:29:30.5-03:30", 500_000),
    ] {
        assert_eq!(accepted_ts(message_at(text), &rules()).micros(), base + micros, "{text}");
    }
    // Truncation, not rounding: the last nanosecond of a minute stays in that minute.
    let last = accepted_ts(message_at("2026-03-01T11:59:59.999999999Z"), &rules());
    assert_eq!(last.minute(), utc("2026-03-01T11:59:00Z").minute());
}

#[test]
fn local_times_are_read_in_the_default_zone() {
    let any = |zone: Tz| timeless_rules(zone, EpochUnit::S);
    let paris = chrono_tz::Europe::Paris;
    let new_york = chrono_tz::America::New_York;
    let kathmandu = chrono_tz::Asia::Kathmandu;
    for (zone, local, expected) in [
        (Tz::UTC, "2026-03-01T11:59:30", "2026-03-01T11:59:30Z"),
        (Tz::UTC, "2026-03-01 11:59:30", "2026-03-01T11:59:30Z"),
        (Tz::UTC, "2026-03-01T11:59", "2026-03-01T11:59:00Z"),
        // Paris: UTC+1 in winter, UTC+2 in summer.
        (paris, "2026-01-15T12:00:00", "2026-01-15T11:00:00Z"),
        (paris, "2026-07-15T12:00:00", "2026-07-15T10:00:00Z"),
        (paris, "2026-07-15 12:00:00.25", "2026-07-15T10:00:00.25Z"),
        (paris, "2026-01-01T00:30:00", "2025-12-31T23:30:00Z"),
        // Just around the DST changes.
        (paris, "2026-03-29T01:59:59", "2026-03-29T00:59:59Z"),
        (paris, "2026-03-29T03:00:00", "2026-03-29T01:00:00Z"),
        (paris, "2026-10-25T01:59:59", "2026-10-24T23:59:59Z"),
        (paris, "2026-10-25T03:00:00", "2026-10-25T02:00:00Z"),
        // New York: UTC-5 in winter, UTC-4 in summer.
        (new_york, "2026-01-15T12:00:00", "2026-01-15T17:00:00Z"),
        (new_york, "2026-07-15T12:00:00", "2026-07-15T16:00:00Z"),
        (new_york, "2026-12-31T20:00:00.123456", "2027-01-01T01:00:00.123456Z"),
        // A fractional-hour zone.
        (kathmandu, "2026-03-01T17:44:30", "2026-03-01T11:59:30Z"),
    ] {
        assert_eq!(accepted_ts(message_at(local), &any(zone)), utc(expected), "{local} in {zone}");
    }
}

#[test]
fn local_times_use_the_zone_rules_at_that_date_not_today() {
    // Cross-check against chrono-tz for every hour of a year in Paris: each hour either
    // maps to exactly one instant (and is accepted as that instant) or is refused.
    let paris = chrono_tz::Europe::Paris;
    let rules = timeless_rules(paris, EpochUnit::S);
    let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap().and_hms_opt(0, 30, 0).unwrap();
    let (mut single, mut refused) = (0, 0);
    for hour in 0..(365 * 24) {
        let local = start + chrono::Duration::hours(hour);
        let text = local.format("%Y-%m-%dT%H:%M:%S").to_string();
        match paris.from_local_datetime(&local).single() {
            Some(instant) => {
                single += 1;
                assert_eq!(
                    accepted_ts(message_at(&text), &rules),
                    Timestamp::from_chrono(instant.with_timezone(&Utc)),
                    "{text}"
                );
            }
            None => {
                refused += 1;
                assert_rejected(message_at(&text), &rules, RejectReason::BadTimestamp, &[]);
            }
        }
    }
    // One hour missing in March, one repeated in October.
    assert_eq!(refused, 2);
    assert_eq!(single, 365 * 24 - 2);
}

#[test]
fn epoch_seconds_and_milliseconds_are_read() {
    let expected = utc("2026-03-01T11:59:30Z");
    let seconds = rules();
    let mut millis = rules();
    millis.timestamps.epoch_unit = EpochUnit::Ms;
    let whole = expected.micros() / MICROS_PER_SECOND;
    for (raw, offset_micros) in [
        (whole.to_string(), 0),
        (format!("{whole}.0"), 0),
        (format!("{whole}.25"), 250_000),
        (format!("{whole}.5"), 500_000),
        (format!("{whole}.123456"), 123_456),
        (format!("{}e3", whole / 1000), -(whole % 1000) * MICROS_PER_SECOND),
    ] {
        assert_eq!(
            accepted_ts(message_with(&[("ts", &raw)]), &seconds).micros(),
            expected.micros() + offset_micros,
            "seconds {raw}"
        );
    }
    let whole_ms = expected.micros() / 1000;
    for (raw, offset_micros) in [
        (whole_ms.to_string(), 0),
        (format!("{}", whole_ms + 250), 250_000),
        (format!("{whole_ms}.5"), 500),
        (format!("{whole_ms}.999"), 999),
    ] {
        assert_eq!(
            accepted_ts(message_with(&[("ts", &raw)]), &millis).micros(),
            expected.micros() + offset_micros,
            "milliseconds {raw}"
        );
    }
    // The same number means different instants in the two units.
    let as_seconds = whole_ms.to_string();
    assert_rejected(message_with(&[("ts", &as_seconds)]), &seconds, RejectReason::BadTimestamp, &[]);
    assert_rejected(message_with(&[("ts", &whole.to_string())]), &millis, RejectReason::TooLate, &[]);
}

#[test]
fn epochs_before_1970_and_zero_are_read() {
    let seconds = timeless_rules(Tz::UTC, EpochUnit::S);
    let millis = timeless_rules(Tz::UTC, EpochUnit::Ms);
    for (raw, rules, expected) in [
        ("0", &seconds, "1970-01-01T00:00:00Z"),
        ("-0.5", &seconds, "1969-12-31T23:59:59.5Z"),
        ("-1", &seconds, "1969-12-31T23:59:59Z"),
        ("-86400", &seconds, "1969-12-31T00:00:00Z"),
        ("-1", &millis, "1969-12-31T23:59:59.999Z"),
        ("-1.5", &millis, "1969-12-31T23:59:59.9985Z"),
        ("1000", &millis, "1970-01-01T00:00:01Z"),
    ] {
        assert_eq!(accepted_ts(message_with(&[("ts", raw)]), rules), utc(expected), "{raw}");
    }
}

#[test]
fn unknown_extra_fields_are_ignored_and_order_does_not_matter() {
    let extras = [
        ("site", r#""lyon""#),
        ("temperature", "NaN"),
        ("tags", r#"["a", "b", {"c": [1, 2, {"d": null}]}]"#),
        ("meta", r#"{"machine": 5, "ts": true, "load_rate": "x", "mileage": null}"#),
        ("flag", "false"),
        ("nothing", "null"),
        ("big", "1e999"),
        (r#"escaped \"key\""#, r#""\ud83d\ude00""#),
    ];
    let mut fields: Vec<(&str, String)> = extras.iter().map(|(key, raw)| (*key, (*raw).to_owned())).collect();
    // Telemetry fields last, in reverse order, interleaved with the extras.
    for (i, field) in valid_fields().into_iter().rev().enumerate() {
        fields.insert(i * 2, field);
    }
    let telemetry = accepted(object(&fields), &rules());
    let reference = accepted(message_with(&[]), &rules());
    assert_eq!(telemetry, reference);
    // Compact and pretty-printed forms read the same.
    let compact: String = message_with(&[]).replace(": ", ":").replace(", ", ",");
    assert_eq!(accepted(&compact, &rules()), reference);
    let pretty = message_with(&[]).replace("{", "{\n\t").replace(", ", ",\r\n  ");
    assert_eq!(accepted(&pretty, &rules()), reference);
}

#[test]
fn parse_telemetry_exposes_the_four_fields_only() {
    let fields =
        parse_telemetry(r#"{"machine": "m", "ts": 17.5, "load_rate": NaN, "mileage": -Infinity, "x": 1}"#)
            .unwrap();
    assert_eq!(fields.machine, Some(JsonValue::String("m".into())));
    assert_eq!(fields.ts, Some(JsonValue::Number { value: 17.5, text: "17.5" }));
    assert!(matches!(fields.load_rate, Some(JsonValue::NonFinite(v)) if v.is_nan()));
    assert_eq!(fields.mileage, Some(JsonValue::NonFinite(f64::NEG_INFINITY)));
    let empty = parse_telemetry("{}").unwrap();
    assert_eq!((empty.machine, empty.ts, empty.load_rate, empty.mileage), (None, None, None, None));
    assert!(parse_telemetry("[]").is_err());
}

// ---------------------------------------------------------------------------------------
// Minute bucketing
// ---------------------------------------------------------------------------------------

#[test]
fn a_minute_is_start_inclusive_and_end_exclusive() {
    let start = utc("2026-03-01T11:59:00Z");
    let minute = start.minute();
    assert_eq!(minute.start(), start);
    assert_eq!(minute.end(), utc("2026-03-01T12:00:00Z"));
    assert_eq!(minute.end().micros() - minute.start().micros(), MICROS_PER_MINUTE);
    assert_eq!(utc("2026-03-01T11:59:59.999999Z").minute(), minute);
    assert_eq!(utc("2026-03-01T11:59:30Z").minute(), minute);
    assert_eq!(utc("2026-03-01T12:00:00Z").minute().index(), minute.index() + 1);
    assert_eq!(utc("2026-03-01T11:58:59.999999Z").minute().index(), minute.index() - 1);
    assert_eq!(minute.index() * MICROS_PER_MINUTE, start.micros());
    assert_eq!(Minute::from_index(minute.index()), minute);
}

#[test]
fn validated_timestamps_bucket_at_boundaries() {
    let minute = utc("2026-03-01T11:59:00Z").minute();
    for (text, expected) in [
        ("2026-03-01T11:59:00Z", minute.index()),
        ("2026-03-01T11:59:00.000000Z", minute.index()),
        ("2026-03-01T11:59:59.999999Z", minute.index()),
        ("2026-03-01T11:58:59.999999Z", minute.index() - 1),
        ("2026-03-01T12:00:00Z", minute.index() + 1),
        ("2026-03-01T13:59:00+02:00", minute.index()),
        ("2026-03-01T13:58:59.999999+02:00", minute.index() - 1),
        // Offsets that are not whole hours still land on UTC minutes.
        ("2026-03-01T17:44:00+05:45", minute.index()),
        ("2026-03-01T08:28:59.999999-03:30", minute.index() - 1),
    ] {
        assert_eq!(accepted_ts(message_at(text), &rules()).minute().index(), expected, "{text}");
    }
}

#[test]
fn minutes_before_the_epoch_floor_downwards() {
    for (micros, index) in [
        (0, 0),
        (59_999_999, 0),
        (60_000_000, 1),
        (-1, -1),
        (-59_999_999, -1),
        (-60_000_000, -1),
        (-60_000_001, -2),
        (-120_000_000, -2),
    ] {
        let minute = Timestamp::from_micros(micros).minute();
        assert_eq!(minute.index(), index, "{micros} µs");
        assert!(minute.start().micros() <= micros && micros < minute.end().micros());
    }
    assert_eq!(Minute::from_index(-1).start().micros(), -60_000_000);
    assert_eq!(Minute::from_index(-1).end().micros(), 0);
    // Epoch numbers before 1970 bucket the same way.
    let any = timeless_rules(Tz::UTC, EpochUnit::S);
    for (raw, index) in [("-0.000001", -1), ("-60", -1), ("-60.000001", -2), ("-59.999999", -1)] {
        assert_eq!(accepted_ts(message_with(&[("ts", raw)]), &any).minute().index(), index, "{raw}");
    }
    assert_eq!(accepted_ts(message_at("1969-12-31T23:59:59.999999Z"), &any).minute().index(), -1);
}

#[test]
fn timestamps_display_as_utc_rfc3339() {
    assert_eq!(utc("2026-03-01T13:59:30.5+02:00").to_string(), "2026-03-01T11:59:30.500Z");
    assert_eq!(utc("2026-03-01T11:59:30Z").to_string(), "2026-03-01T11:59:30Z");
    let instant = utc("2026-03-01T11:59:30.123456Z");
    assert_eq!(Timestamp::from_chrono(instant.to_chrono()), instant);
}

// ---------------------------------------------------------------------------------------
// Epoch fractions (a defect found by these tests, now fixed)
// ---------------------------------------------------------------------------------------

/// `parse_epoch` once computed `floor(value * 1e6)` on the f64: when the nearest f64 to a
/// decimal epoch lies just below it, the product floored one microsecond short (about 1
/// input in 100 after 2038). It now reads the number's decimal digits (issue 10).
#[test]
fn epoch_fractions_are_exact_to_the_microsecond() {
    let seconds = timeless_rules(Tz::UTC, EpochUnit::S);
    let millis = timeless_rules(Tz::UTC, EpochUnit::Ms);
    for (raw, rules, expected) in [
        ("2150918326.981929", &seconds, 2_150_918_326_981_929),
        ("1088594442.943528", &seconds, 1_088_594_442_943_528),
        ("2235121607577.279", &millis, 2_235_121_607_577_279),
    ] {
        assert_eq!(accepted_ts(message_with(&[("ts", raw)]), rules).micros(), expected, "{raw}");
    }
}

// ---------------------------------------------------------------------------------------
// Years 1 to 9999 (issue 10): what PostgreSQL and chrono both hold, for every form
// ---------------------------------------------------------------------------------------

/// Text timestamps outside years 1 to 9999 are unreadable, not merely too old or too new:
/// with `future_tolerance = "off"` a year-10000 row would otherwise reach the database.
#[test]
fn text_timestamps_outside_years_1_to_9999_are_bad_timestamp() {
    for text in
        ["0000-06-01T00:00:00Z", "+10000-01-01T00:00:00", "-0001-01-01T00:00:00", "0000-12-31T23:59:59"]
    {
        assert_rejected(message_at(text), &rules(), RejectReason::BadTimestamp, &[]);
        let any = timeless_rules(Tz::UTC, EpochUnit::S);
        assert_rejected(message_at(text), &any, RejectReason::BadTimestamp, &[]);
    }
    // The bounds hold for the instant normalised to UTC, as for epoch numbers.
    let any = timeless_rules(Tz::UTC, EpochUnit::S);
    for text in [
        "0001-01-01T00:00:00+00:01",
        "0001-01-01T00:59:59.999999+01:00",
        "9999-12-31T23:59:59-00:01",
        "9999-12-31T23:30:00-01:00",
        "0000-12-31T23:59:59.9999999Z",
    ] {
        assert_rejected(message_at(text), &any, RejectReason::BadTimestamp, &["1 to 9999"]);
    }
    // A local time read in a zone east of UTC on the first day of year 1 (Paris kept its
    // local mean time, +00:09:21) is before year 1 in UTC.
    let paris = timeless_rules(chrono_tz::Europe::Paris, EpochUnit::S);
    assert_rejected(message_at("0001-01-01T00:05:00"), &paris, RejectReason::BadTimestamp, &["1 to 9999"]);
    // The first and the last microsecond are fine, in every form.
    for (text, rules) in [
        ("0001-01-01T00:00:00Z", &any),
        ("0001-01-01T00:00:00", &any),
        ("0001-01-01T01:00:00+01:00", &any),
        ("0001-01-01T00:09:21", &paris),
        ("9999-12-31T23:59:59.999999Z", &any),
        ("9999-12-31T23:59:59.999999999Z", &any),
        ("9999-12-31T23:59:59.999999", &any),
        ("9999-12-31T22:59:59.999999-01:00", &any),
    ] {
        let expected = accepted_ts(message_at(text), rules);
        assert!(
            (utc("0001-01-01T00:00:00Z")..=utc("9999-12-31T23:59:59.999999Z")).contains(&expected),
            "{text}"
        );
    }
    assert_eq!(accepted_ts(message_at("0001-01-01T00:00:00Z"), &any), utc("0001-01-01T00:00:00Z"));
    assert_eq!(
        accepted_ts(message_at("9999-12-31T23:59:59.9999999Z"), &any),
        utc("9999-12-31T23:59:59.999999Z")
    );
}

/// Epoch numbers obey the same bounds as text, to the microsecond: the whole last second of
/// year 9999 is in, the microsecond before year 1 is out, in seconds and in milliseconds.
#[test]
fn epoch_numbers_outside_years_1_to_9999_are_bad_timestamp() {
    let seconds = timeless_rules(Tz::UTC, EpochUnit::S);
    let millis = timeless_rules(Tz::UTC, EpochUnit::Ms);
    for (raw, rules, expected) in [
        ("253402300799.5", &seconds, "9999-12-31T23:59:59.5Z"),
        ("253402300799.999999", &seconds, "9999-12-31T23:59:59.999999Z"),
        ("253402300799.9999999", &seconds, "9999-12-31T23:59:59.999999Z"),
        ("-62135596800", &seconds, "0001-01-01T00:00:00Z"),
        ("-62135596799.9999999", &seconds, "0001-01-01T00:00:00Z"),
        ("253402300799999.999", &millis, "9999-12-31T23:59:59.999999Z"),
        ("253402300799999.9999", &millis, "9999-12-31T23:59:59.999999Z"),
        ("-62135596800000", &millis, "0001-01-01T00:00:00Z"),
    ] {
        assert_eq!(accepted_ts(message_with(&[("ts", raw)]), rules), utc(expected), "{raw}");
    }
    for (raw, rules) in [
        ("253402300800", &seconds),
        ("2.534023008e11", &seconds),
        ("-62135596800.000001", &seconds),
        ("-62135596800.0000001", &seconds),
        ("253402300800000", &millis),
        ("-62135596800000.001", &millis),
        ("-62135596800000.0001", &millis),
        ("1e19", &seconds),
        ("-1e19", &millis),
        ("1e300", &millis),
    ] {
        assert_rejected(message_with(&[("ts", raw)]), rules, RejectReason::BadTimestamp, &["1 to 9999"]);
    }
}

// ---------------------------------------------------------------------------------------
// Epoch fractions are truncated like text (issue 10)
// ---------------------------------------------------------------------------------------

/// Digits finer than the microsecond are dropped, never rounded up: an epoch number lands
/// in the same microsecond, and so the same minute, as the same instant written as text.
/// `1796220599.9999999` has no f64 below 1796220600, so only the decimal digits can say.
#[test]
fn epoch_fractions_are_truncated_to_the_microsecond_like_text() {
    let seconds = timeless_rules(Tz::UTC, EpochUnit::S);
    let millis = timeless_rules(Tz::UTC, EpochUnit::Ms);
    for (raw, rules, text) in [
        ("1796220599.9999995", &seconds, "2026-12-02T14:09:59.9999995Z"),
        ("1796220599.9999999", &seconds, "2026-12-02T14:09:59.9999999Z"),
        ("1796220599.99999999999999999999", &seconds, "2026-12-02T14:09:59.99999999999Z"),
        ("1796220599.999999", &seconds, "2026-12-02T14:09:59.999999Z"),
        ("1796220599.9999994", &seconds, "2026-12-02T14:09:59.9999994Z"),
        ("1.7962205999999995e9", &seconds, "2026-12-02T14:09:59.9999995Z"),
        ("17962205999999995E-7", &seconds, "2026-12-02T14:09:59.9999995Z"),
        ("0.0000009", &seconds, "1970-01-01T00:00:00.0000009Z"),
        // Before 1970 the instant is still floored, as its text form is.
        ("-0.0000005", &seconds, "1969-12-31T23:59:59.9999995Z"),
        ("-1.9999995", &seconds, "1969-12-31T23:59:58.0000005Z"),
        ("-60.0000001", &seconds, "1969-12-31T23:58:59.9999999Z"),
        ("-0", &seconds, "1970-01-01T00:00:00Z"),
        ("1796220599999.9995", &millis, "2026-12-02T14:09:59.9999995Z"),
        ("1796220599999.9999999", &millis, "2026-12-02T14:09:59.9999999999Z"),
        ("1796220599999.999", &millis, "2026-12-02T14:09:59.999999Z"),
        ("1796220599999999.5e-3", &millis, "2026-12-02T14:09:59.9999995Z"),
        ("-0.0005", &millis, "1969-12-31T23:59:59.9999995Z"),
        ("-1.0000001", &millis, "1969-12-31T23:59:59.9989999999Z"),
    ] {
        let from_number = accepted_ts(message_with(&[("ts", raw)]), rules);
        let from_text = accepted_ts(message_at(text), rules);
        assert_eq!(from_number, from_text, "{raw} against {text}");
        assert_eq!(from_number.minute(), from_text.minute(), "{raw}");
    }
    assert_eq!(
        accepted_ts(message_with(&[("ts", "1796220599.9999995")]), &seconds).minute(),
        utc("2026-12-02T14:09:00Z").minute()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any decimal epoch, with any number of fraction digits, reads as the floor of its
    /// exact value in microseconds (computed here in i128, without floating point), and
    /// a non-negative one as the microsecond its text form reads as.
    #[test]
    fn epoch_digits_truncate_to_the_microsecond(
        negative in any::<bool>(),
        whole in 0_i64..=253_402_300_799,
        fraction in "[0-9]{0,18}",
        millis_unit in any::<bool>(),
    ) {
        // In milliseconds the same digits name an instant 1000 times nearer to 1970.
        let (scale, rules) = if millis_unit {
            (1_000_i128, timeless_rules(Tz::UTC, EpochUnit::Ms))
        } else {
            (1_000_000_i128, timeless_rules(Tz::UTC, EpochUnit::S))
        };
        let sign = if negative { "-" } else { "" };
        let raw = if fraction.is_empty() { format!("{sign}{whole}") } else { format!("{sign}{whole}.{fraction}") };
        let digits = u32::try_from(fraction.len()).expect("at most 18 digits");
        let fraction_value: i128 = if fraction.is_empty() { 0 } else { fraction.parse().expect("digits") };
        let exact = i128::from(whole) * 10_i128.pow(digits) + fraction_value;
        let signed = if negative { -exact } else { exact };
        let micros = (signed * scale).div_euclid(10_i128.pow(digits));
        let in_range = (-62_135_596_800_000_000..=253_402_300_799_999_999).contains(&micros);
        let result = check(message_with(&[("ts", &raw)]), &rules);
        if in_range {
            let ts = result
                .map(|telemetry| telemetry.sample.ts)
                .map_err(|rejection| TestCaseError::fail(format!("{raw}: {rejection:?}")))?;
            prop_assert_eq!(i128::from(ts.micros()), micros, "{}", raw);
            if !negative {
                // The fraction digits past the microsecond: past the 3rd in milliseconds.
                let finer = fraction.get(if millis_unit { 3 } else { 6 }..).unwrap_or("");
                let text = format!("{}{finer}Z", ts.to_chrono().format("%Y-%m-%dT%H:%M:%S%.6f"));
                prop_assert_eq!(ts, accepted_ts(message_at(&text), &rules), "{} against {}", raw, text);
            }
        } else {
            prop_assert_eq!(result.map_err(|rejection| rejection.reason), Err(RejectReason::BadTimestamp), "{}", raw);
        }
    }
}
