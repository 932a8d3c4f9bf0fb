//! Fixtures and helpers shared by the logic tests.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use fleetagg_logic::{
    validate, EpochUnit, JournalMark, MinuteAggregate, RejectReason, Rejection, Sample, Telemetry, Timestamp,
    TimestampRules, ValidationRules,
};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub(crate) const MICROS_PER_SECOND: i64 = 1_000_000;
pub(crate) const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;

/// The wall clock every validation test runs at.
pub(crate) const NOW: &str = "2026-03-01T12:00:00Z";
/// A timestamp 30 s before [`NOW`]: inside every window.
pub(crate) const RECENT: &str = "2026-03-01T11:59:30Z";

/// An instant parsed by chrono, independently of the code under test.
pub(crate) fn utc(text: &str) -> Timestamp {
    let instant = DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|err| panic!("test fixture {text:?} is not RFC 3339: {err}"));
    Timestamp::from_chrono(instant.with_timezone(&Utc))
}

pub(crate) fn now() -> Timestamp {
    utc(NOW)
}

/// The contract's defaults: 64 KiB payloads, UTC, epoch seconds, 5 s of future
/// tolerance, 10 min of lateness.
pub(crate) fn rules() -> ValidationRules {
    ValidationRules {
        max_payload_bytes: 65_536,
        timestamps: TimestampRules { default_timezone: Tz::UTC, epoch_unit: EpochUnit::S },
        future_tolerance: Some(Duration::from_secs(5)),
        max_lateness: Duration::from_secs(600),
    }
}

/// The defaults with another zone for local times.
pub(crate) fn rules_in(zone: Tz) -> ValidationRules {
    let mut rules = rules();
    rules.timestamps.default_timezone = zone;
    rules
}

/// Rules that accept any instant, to test timestamp reading far from [`NOW`].
pub(crate) fn timeless_rules(zone: Tz, epoch_unit: EpochUnit) -> ValidationRules {
    ValidationRules {
        max_payload_bytes: 65_536,
        timestamps: TimestampRules { default_timezone: zone, epoch_unit },
        future_tolerance: None,
        max_lateness: Duration::MAX,
    }
}

/// The fields of a valid message, as raw JSON fragments.
pub(crate) fn valid_fields() -> Vec<(&'static str, String)> {
    vec![
        ("machine", r#""press-7""#.to_owned()),
        ("ts", format!("\"{RECENT}\"")),
        ("load_rate", "42.5".to_owned()),
        ("mileage", "1234.5".to_owned()),
    ]
}

/// Writes a JSON object from (key, raw JSON value) pairs.
pub(crate) fn object(fields: &[(&str, String)]) -> String {
    let members: Vec<String> = fields.iter().map(|(key, raw)| format!("\"{key}\": {raw}")).collect();
    format!("{{{}}}", members.join(", "))
}

/// A valid message with some fields replaced by raw JSON fragments.
pub(crate) fn message_with(changes: &[(&str, &str)]) -> String {
    let mut fields = valid_fields();
    for (key, raw) in changes {
        match fields.iter_mut().find(|(name, _)| name == key) {
            Some(field) => field.1 = (*raw).to_owned(),
            None => panic!("unknown field {key}"),
        }
    }
    object(&fields)
}

/// A valid message without the given fields.
pub(crate) fn message_without(missing: &[&str]) -> String {
    let fields: Vec<(&str, String)> =
        valid_fields().into_iter().filter(|(name, _)| !missing.contains(name)).collect();
    object(&fields)
}

/// A valid message whose `ts` is the given JSON string.
pub(crate) fn message_at(ts: &str) -> String {
    message_with(&[("ts", &format!("\"{ts}\""))])
}

/// `text` followed by spaces up to `len` bytes: still the same JSON object.
pub(crate) fn pad_to(text: &str, len: usize) -> String {
    format!("{text}{}", " ".repeat(len - text.len()))
}

pub(crate) fn check(payload: impl AsRef<[u8]>, rules: &ValidationRules) -> Result<Telemetry, Rejection> {
    validate(payload.as_ref(), now(), rules)
}

/// Validates a payload that must be accepted.
pub(crate) fn accepted(payload: impl AsRef<[u8]>, rules: &ValidationRules) -> Telemetry {
    let payload = payload.as_ref();
    match check(payload, rules) {
        Ok(telemetry) => telemetry,
        Err(rejection) => panic!(
            "expected {:?} to be accepted, got {} ({})",
            String::from_utf8_lossy(payload),
            rejection.reason,
            rejection.detail
        ),
    }
}

/// Validates a payload that must be rejected for `reason`, with a detail that contains
/// every one of `detail_mentions`.
pub(crate) fn assert_rejected(
    payload: impl AsRef<[u8]>,
    rules: &ValidationRules,
    reason: RejectReason,
    detail_mentions: &[&str],
) -> Rejection {
    let payload = payload.as_ref();
    let shown = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
    let rejection = match check(payload, rules) {
        Ok(telemetry) => panic!("expected {shown:?} to be rejected as {reason}, got {telemetry:?}"),
        Err(rejection) => rejection,
    };
    assert_eq!(rejection.reason, reason, "payload {shown:?}: detail {:?}", rejection.detail);
    assert!(!rejection.detail.trim().is_empty(), "payload {shown:?}: empty detail");
    for mention in detail_mentions {
        assert!(
            rejection.detail.contains(mention),
            "payload {shown:?}: detail {:?} does not mention {mention:?}",
            rejection.detail
        );
    }
    rejection
}

/// The timestamp of a message that must be accepted.
pub(crate) fn accepted_ts(payload: impl AsRef<[u8]>, rules: &ValidationRules) -> Timestamp {
    accepted(payload, rules).sample.ts
}

pub(crate) fn sample(micros: i64, load_rate: f64, mileage: f64) -> Sample {
    Sample { ts: Timestamp::from_micros(micros), load_rate, mileage, mark: JournalMark::NONE }
}

/// Aggregates samples one by one, the reference every merge is compared with.
pub(crate) fn aggregate_all(samples: &[Sample]) -> Option<MinuteAggregate> {
    let (first, rest) = samples.split_first()?;
    let mut aggregate = MinuteAggregate::of(first);
    for sample in rest {
        aggregate.add(sample);
    }
    Some(aggregate)
}

pub(crate) fn merged(left: &MinuteAggregate, right: &MinuteAggregate) -> MinuteAggregate {
    let mut out = *left;
    out.merge(right);
    out
}
