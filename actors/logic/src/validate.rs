//! The checks every message goes through, in the contract's order: the first failing
//! check names the reason, and every reason carries a detail a person can act on.

use crate::json::{parse_telemetry, JsonValue};
use crate::provenance::JournalMark;
use crate::time::{duration_micros, parse_epoch, parse_text_timestamp, Timestamp, TimestampRules};
use std::time::Duration;

/// Longest machine id, in characters.
pub const MAX_MACHINE_CHARS: usize = 128;

/// Why a message was rejected. The string forms are stored in `rejected_message.reason`
/// and used as metric labels: they are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    TooLarge,
    Malformed,
    MissingField,
    BadType,
    BadMachine,
    BadTimestamp,
    NonFinite,
    OutOfRange,
    FutureTs,
    TooLate,
    /// Not a validation reason: PostgreSQL refused the minute row itself (for example a
    /// `CHECK` constraint added by an operator). Stored so the row is not lost silently.
    DbRefused,
}

impl RejectReason {
    pub const ALL: [RejectReason; 11] = [
        RejectReason::TooLarge,
        RejectReason::Malformed,
        RejectReason::MissingField,
        RejectReason::BadType,
        RejectReason::BadMachine,
        RejectReason::BadTimestamp,
        RejectReason::NonFinite,
        RejectReason::OutOfRange,
        RejectReason::FutureTs,
        RejectReason::TooLate,
        RejectReason::DbRefused,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::Malformed => "malformed",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadType => "bad_type",
            RejectReason::BadMachine => "bad_machine",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::NonFinite => "non_finite",
            RejectReason::OutOfRange => "out_of_range",
            RejectReason::FutureTs => "future_ts",
            RejectReason::TooLate => "too_late",
            RejectReason::DbRefused => "db_refused",
        }
    }

    /// Position in [`RejectReason::ALL`], for counters indexed by reason.
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message's reason and a human-readable detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub detail: String,
}

impl Rejection {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Rejection { reason, detail: detail.into() }
    }
}

/// One accepted measurement of one machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub ts: Timestamp,
    pub load_rate: f64,
    pub mileage: f64,
    /// Its message's record in the journal (`JournalMark::NONE` until the broker sets it).
    pub mark: JournalMark,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    pub machine: String,
    pub sample: Sample,
}

/// The settings the checks depend on.
#[derive(Debug, Clone, Copy)]
pub struct ValidationRules {
    pub max_payload_bytes: usize,
    pub timestamps: TimestampRules,
    /// `None` disables the `future_ts` check.
    pub future_tolerance: Option<Duration>,
    pub max_lateness: Duration,
}

/// Checks one payload received at wall-clock time `now`.
pub fn validate(payload: &[u8], now: Timestamp, rules: &ValidationRules) -> Result<Telemetry, Rejection> {
    validate_received(payload, payload.len(), now, rules)
}

/// [`validate`] for a payload of which only the start may have been kept (see
/// `InboundMessage::received`): `received_len`, its length as received, decides
/// `too_large` and is the length the rejection reports.
pub fn validate_received(
    payload: &[u8],
    received_len: usize,
    now: Timestamp,
    rules: &ValidationRules,
) -> Result<Telemetry, Rejection> {
    use RejectReason::*;
    if received_len > rules.max_payload_bytes {
        return Err(Rejection::new(
            TooLarge,
            format!("payload is {received_len} bytes, the limit is {}", rules.max_payload_bytes),
        ));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|err| Rejection::new(Malformed, format!("payload is not UTF-8: {err}")))?;
    let fields = parse_telemetry(text)
        .map_err(|err| Rejection::new(Malformed, format!("payload is not a JSON object: {err}")))?;

    let machine = present("machine", fields.machine)?;
    let ts = present("ts", fields.ts)?;
    let load_rate = present("load_rate", fields.load_rate)?;
    let mileage = present("mileage", fields.mileage)?;

    let machine = match machine {
        JsonValue::String(machine) => machine,
        other => return Err(wrong_type("machine", "a string", &other)),
    };
    if !matches!(ts, JsonValue::String(_) | JsonValue::Number { .. } | JsonValue::NonFinite(_)) {
        return Err(wrong_type("ts", "a string or a number", &ts));
    }
    // `+ 0.0` turns a JSON `-0` into 0, so no row ever shows a negative zero.
    let load_rate = number("load_rate", &load_rate)? + 0.0;
    let mileage = number("mileage", &mileage)? + 0.0;

    check_machine(&machine)?;
    let ts = match ts {
        JsonValue::String(text) => parse_text_timestamp(&text, &rules.timestamps),
        JsonValue::Number { text, .. } => parse_epoch(text, &rules.timestamps),
        _ => Err("`ts` is not a finite number".to_owned()),
    }
    .map_err(|detail| Rejection::new(BadTimestamp, detail))?;

    for (name, value) in [("load_rate", load_rate), ("mileage", mileage)] {
        if !value.is_finite() {
            return Err(Rejection::new(NonFinite, format!("`{name}` is {value}")));
        }
    }
    if !(0.0..=100.0).contains(&load_rate) {
        return Err(Rejection::new(OutOfRange, format!("`load_rate` {load_rate} is outside [0, 100]")));
    }
    if mileage < 0.0 {
        return Err(Rejection::new(OutOfRange, format!("`mileage` {mileage} is negative")));
    }
    if let Some(tolerance) = rules.future_tolerance {
        let limit = now.saturating_add_micros(duration_micros(tolerance));
        if ts > limit {
            return Err(Rejection::new(
                FutureTs,
                format!("ts {ts} is later than now + {} ({limit})", humanize(tolerance)),
            ));
        }
    }
    let oldest = now.saturating_add_micros(-duration_micros(rules.max_lateness));
    if ts < oldest {
        return Err(Rejection::new(
            TooLate,
            format!("ts {ts} is earlier than now - {} ({oldest})", humanize(rules.max_lateness)),
        ));
    }
    Ok(Telemetry {
        machine: machine.into_owned(),
        sample: Sample { ts, load_rate, mileage, mark: JournalMark::NONE },
    })
}

fn present<'a>(name: &str, value: Option<JsonValue<'a>>) -> Result<JsonValue<'a>, Rejection> {
    match value {
        None | Some(JsonValue::Null) => {
            Err(Rejection::new(RejectReason::MissingField, format!("field `{name}` is absent or null")))
        }
        Some(value) => Ok(value),
    }
}

fn wrong_type(name: &str, expected: &str, found: &JsonValue<'_>) -> Rejection {
    Rejection::new(RejectReason::BadType, format!("`{name}` must be {expected}, found {}", found.type_name()))
}

fn number(name: &str, value: &JsonValue<'_>) -> Result<f64, Rejection> {
    match value {
        JsonValue::Number { value, .. } | JsonValue::NonFinite(value) => Ok(*value),
        other => Err(wrong_type(name, "a number", other)),
    }
}

fn check_machine(machine: &str) -> Result<(), Rejection> {
    let reject = |detail: String| Err(Rejection::new(RejectReason::BadMachine, detail));
    if machine.is_empty() {
        return reject("`machine` is empty".into());
    }
    let chars = machine.chars().count();
    if chars > MAX_MACHINE_CHARS {
        return reject(format!("`machine` has {chars} characters, the limit is {MAX_MACHINE_CHARS}"));
    }
    if let Some(control) = machine.chars().find(|c| c.is_control()) {
        return reject(format!("`machine` contains the control character U+{:04X}", u32::from(control)));
    }
    Ok(())
}

fn humanize(duration: Duration) -> String {
    let whole = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    format!("{whole:?}")
}
