//! The text timestamp forms the contract lists (docs/contract.md, "Input"), one test per
//! form, and the forms it does not list, which are refused: the list is exact.
//!
//! The grammar, as listed:
//!
//! ```text
//! [whitespace] YYYY-MM-DD (T|t|space) HH:MM[:SS[.digits]] [Z|z|±HH:MM] [whitespace]
//! ```

use chrono_tz::Tz;
use fleetagg_logic::{EpochUnit, RejectReason, Timestamp, ValidationRules};

use super::support::{accepted_ts, assert_rejected, message_at, message_with, timeless_rules, utc};

/// Rules that accept any instant, so only the reading of the text is tested.
fn any_time() -> ValidationRules {
    timeless_rules(Tz::UTC, EpochUnit::S)
}

fn read(text: &str) -> Timestamp {
    accepted_ts(message_at(text), &any_time())
}

#[test]
fn form_utc_designator() {
    assert_eq!(read("2026-03-01T11:59:30Z"), utc("2026-03-01T11:59:30Z"));
    assert_eq!(read("2026-03-01T11:59:30z"), utc("2026-03-01T11:59:30Z"));
}

#[test]
fn form_numeric_offset() {
    let expected = utc("2026-03-01T11:59:30Z");
    for text in [
        "2026-03-01T11:59:30+00:00",
        "2026-03-01T11:59:30-00:00",
        "2026-03-01T13:59:30+02:00",
        "2026-03-01T08:29:30-03:30",
        "2026-03-01T17:44:30+05:45",
        "2026-03-02T11:58:30+23:59",
        "2026-02-28T12:00:30-23:59",
    ] {
        assert_eq!(read(text), expected, "{text}");
    }
}

#[test]
fn form_fractional_seconds_of_any_length_truncated_to_the_microsecond() {
    let base = utc("2026-03-01T11:59:30Z").micros();
    for (fraction, micros) in [
        ("5", 500_000),
        ("25", 250_000),
        ("123456", 123_456),
        ("1234569", 123_456),
        ("999999999999", 999_999),
        ("000000999", 0),
    ] {
        for text in [format!("2026-03-01T11:59:30.{fraction}Z"), format!("2026-03-01T11:59:30.{fraction}")] {
            assert_eq!(read(&text).micros(), base + micros, "{text}");
        }
    }
}

#[test]
fn form_separator_t_lowercase_t_or_space() {
    let expected = utc("2026-03-01T11:59:30Z");
    for text in [
        "2026-03-01T11:59:30Z",
        "2026-03-01t11:59:30Z",
        "2026-03-01 11:59:30Z",
        "2026-03-01T11:59:30",
        "2026-03-01t11:59:30",
        "2026-03-01 11:59:30",
    ] {
        assert_eq!(read(text), expected, "{text}");
    }
}

#[test]
fn form_without_seconds() {
    let expected = utc("2026-03-01T11:59:00Z");
    for text in [
        "2026-03-01T11:59",
        "2026-03-01 11:59",
        "2026-03-01T11:59Z",
        "2026-03-01T13:59+02:00",
        "2026-03-01 11:59z",
    ] {
        assert_eq!(read(text), expected, "{text}");
    }
}

#[test]
fn form_local_time_without_offset_in_the_default_zone() {
    let paris = timeless_rules(chrono_tz::Europe::Paris, EpochUnit::S);
    assert_eq!(accepted_ts(message_at("2026-03-01T12:59:30"), &paris), utc("2026-03-01T11:59:30Z"));
    assert_eq!(accepted_ts(message_at("2026-07-01 13:59:30.5"), &paris), utc("2026-07-01T11:59:30.5Z"));
    assert_eq!(accepted_ts(message_at("2026-07-01T13:59"), &paris), utc("2026-07-01T11:59:00Z"));
    // An offset wins over the zone.
    assert_eq!(accepted_ts(message_at("2026-03-01T11:59:30Z"), &paris), utc("2026-03-01T11:59:30Z"));
}

/// RFC 3339 allows second 60 (a leap second); like PostgreSQL, it is read as second 0 of
/// the next minute, since UTC instants here have no leap seconds.
#[test]
fn form_leap_second() {
    assert_eq!(read("2026-03-01T11:59:60Z"), utc("2026-03-01T12:00:00Z"));
    assert_eq!(read("2016-12-31T23:59:60.25Z"), utc("2017-01-01T00:00:00.25Z"));
    assert_eq!(read("2026-03-01T13:59:60+02:00"), utc("2026-03-01T12:00:00Z"));
    assert_eq!(read("2026-03-01T11:59:60"), utc("2026-03-01T12:00:00Z"));
    let paris = timeless_rules(chrono_tz::Europe::Paris, EpochUnit::S);
    assert_eq!(accepted_ts(message_at("2026-03-01T12:59:60.5"), &paris), utc("2026-03-01T12:00:00.5Z"));
    // Just before Paris's spring gap: 01:59:60 local is 02:00 local, which does not exist,
    // but the instant is the one after 01:59:59 (UTC+1), like PostgreSQL reads it.
    assert_eq!(accepted_ts(message_at("2026-03-29T01:59:60"), &paris), utc("2026-03-29T01:00:00Z"));
}

#[test]
fn form_surrounding_whitespace() {
    let expected = utc("2026-03-01T11:59:30Z");
    for text in [
        " 2026-03-01T11:59:30Z",
        "2026-03-01T11:59:30Z ",
        "\t2026-03-01T11:59:30\r\n",
        "  2026-03-01 11:59:30  ",
    ] {
        assert_eq!(
            accepted_ts(
                message_with(&[("ts", &serde_json::to_string(text).expect("a string is valid JSON"))]),
                &any_time()
            ),
            expected,
            "{text:?}"
        );
    }
}

/// Forms chrono's lenient readers let through before issue 10 and the contract never
/// listed: one-digit fields, signed or five-digit years, spaces inside, a comma, a bare
/// dot, offsets without a colon or without minutes, Unicode spaces around.
#[test]
fn unlisted_forms_are_refused() {
    for text in [
        "2026-3-1T1:2:3",
        "2026-03-01T1:02:03",
        "2026-03-01T11:59:3",
        "2026-03-01T11:5",
        "+2026-03-01T11:59:30",
        "+2026-03-01T11:59:30Z",
        "02026-03-01T11:59:30",
        "-2026-03-01T11:59:30",
        "2026-03-01T 11:59:30",
        "2026-03-01T11: 59:30",
        "2026-03-01  11:59:30",
        "2026-03-01_11:59:30",
        "2026-03-01T11:59:30,5Z",
        "2026-03-01T11:59:30.Z",
        "2026-03-01T11:59:30.",
        "2026-03-01T11:59.5",
        "2026-03-01T11:59:30+0200",
        "2026-03-01T11:59:30+02",
        "2026-03-01T11:59:30+02:00:00",
        "2026-03-01T11:59:30 Z",
        "2026-03-01T11:59:30+24:00",
        "2026-03-01T11:59:30+23:60",
        "2026-03-01T11:59:61Z",
        "2026-03-01T11:59:30ZZ",
        "\u{3000}2026-03-01T11:59:30Z",
        "2026-03-01T11:59:30Z\u{a0}",
        "2026-03-01",
        "2026-03-01T",
        "11:59:30",
    ] {
        assert_rejected(
            message_with(&[("ts", &serde_json::to_string(text).expect("a string is valid JSON"))]),
            &any_time(),
            RejectReason::BadTimestamp,
            &["YYYY-MM-DD"],
        );
    }
}
