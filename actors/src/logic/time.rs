//! Instants and minutes in UTC, and the reading of telemetry timestamps.
//!
//! Timestamps are kept as microseconds since the Unix epoch: PostgreSQL's `timestamptz`
//! resolution, cheap to compare and hash for duplicate detection, and exact for minute
//! arithmetic.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use fleetagg_config::EpochUnit;

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;

/// An instant in UTC, to the microsecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The minute `[m, m+60s)` that holds this instant.
    pub const fn minute(self) -> Minute {
        Minute(self.0.div_euclid(MICROS_PER_MINUTE))
    }

    /// Shifts by a signed number of microseconds, saturating at the ends of time.
    pub const fn saturating_add_micros(self, micros: i64) -> Self {
        Timestamp(self.0.saturating_add(micros))
    }

    pub fn from_chrono(instant: DateTime<Utc>) -> Self {
        Timestamp(instant.timestamp_micros())
    }

    pub fn to_chrono(self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.0).unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_chrono().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
    }
}

/// A UTC minute, counted from the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Minute(i64);

impl Minute {
    pub const fn from_index(index: i64) -> Self {
        Minute(index)
    }

    pub const fn index(self) -> i64 {
        self.0
    }

    pub const fn start(self) -> Timestamp {
        Timestamp(self.0.saturating_mul(MICROS_PER_MINUTE))
    }

    /// The first instant after the minute: `start + 60s`.
    pub const fn end(self) -> Timestamp {
        Timestamp(self.0.saturating_add(1).saturating_mul(MICROS_PER_MINUTE))
    }
}

/// Converts a duration to microseconds, saturating.
pub fn duration_micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// How timestamps without an explicit offset are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRules {
    pub default_timezone: Tz,
    pub epoch_unit: EpochUnit,
}

/// Reads an RFC 3339 timestamp with an offset, or a local one in `rules.default_timezone`.
pub fn parse_text_timestamp(text: &str, rules: &TimestampRules) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Some(micros) = super::rfc3339::parse_common_rfc3339(text.as_bytes()) {
        return Ok(Timestamp(micros));
    }
    if let Ok(instant) = DateTime::parse_from_rfc3339(text) {
        return Ok(truncate(instant.with_timezone(&Utc)));
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(|| {
            format!("{text:?} is neither RFC 3339 nor a local date-time YYYY-MM-DDTHH:MM:SS[.frac]")
        })?;
    let zone = rules.default_timezone;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(instant) => Ok(truncate(instant.with_timezone(&Utc))),
        LocalResult::Ambiguous(first, second) => Err(format!(
            "local time {naive} is ambiguous in {zone} (it happens twice: {} and {}); send an offset",
            first.to_rfc3339(),
            second.to_rfc3339()
        )),
        LocalResult::None => {
            Err(format!("local time {naive} does not exist in {zone} (skipped by a daylight-saving change)"))
        }
    }
}

/// Reads a numeric epoch timestamp in `rules.epoch_unit`.
pub fn parse_epoch(value: f64, rules: &TimestampRules) -> Result<Timestamp, String> {
    let micros_per_unit = match rules.epoch_unit {
        EpochUnit::S => 1e6,
        EpochUnit::Ms => 1e3,
    };
    // Truncate to the microsecond, as for text timestamps, except where the product is
    // only below a whole microsecond by floating-point error: `2150918326.981929` is stored
    // as 2150918326.98192882…, and a plain floor would lose the microsecond that was sent.
    let scaled = value * micros_per_unit;
    let nearest = scaled.round();
    let rounding_error = scaled.abs() * 4.0 * f64::EPSILON;
    let micros = if (scaled - nearest).abs() <= rounding_error { nearest } else { scaled.floor() };
    // Bounds of what PostgreSQL's timestamptz and chrono both represent (years 1..9999).
    const MIN: f64 = -62_135_596_800_000_000.0;
    const MAX: f64 = 253_402_300_799_000_000.0;
    if !(MIN..=MAX).contains(&micros) {
        return Err(format!("epoch value {value} is outside years 1 to 9999"));
    }
    // In range by the check above, so the cast cannot saturate.
    #[allow(clippy::cast_possible_truncation)]
    Ok(Timestamp(micros as i64))
}

/// Keeps microseconds: finer digits are dropped, like PostgreSQL rounds them away.
fn truncate(instant: DateTime<Utc>) -> Timestamp {
    Timestamp(instant.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(zone: Tz) -> TimestampRules {
        TimestampRules { default_timezone: zone, epoch_unit: EpochUnit::S }
    }

    fn utc(text: &str) -> Timestamp {
        Timestamp::from_chrono(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc))
    }

    #[test]
    fn offsets_normalise_to_utc() {
        let r = rules(Tz::UTC);
        let expected = utc("2026-03-01T10:00:00Z");
        for text in [
            "2026-03-01T10:00:00Z",
            "2026-03-01T12:00:00+02:00",
            "2026-03-01T15:45:00+05:45",
            "2026-03-01T06:30:00-03:30",
            "2026-03-01T10:00:00.000000Z",
        ] {
            assert_eq!(parse_text_timestamp(text, &r).unwrap(), expected, "{text}");
        }
        assert_eq!(
            parse_text_timestamp("2026-03-01T10:00:00.1234567Z", &r).unwrap().micros(),
            expected.micros() + 123_456
        );
    }

    #[test]
    fn local_times_use_the_default_zone() {
        let paris = rules(chrono_tz::Europe::Paris);
        assert_eq!(parse_text_timestamp("2026-01-15T12:00:00", &paris).unwrap(), utc("2026-01-15T11:00:00Z"));
        assert_eq!(
            parse_text_timestamp("2026-07-15 12:00:00.5", &paris).unwrap(),
            utc("2026-07-15T10:00:00.5Z")
        );
        assert_eq!(
            parse_text_timestamp("2026-07-15T12:00:00", &rules(Tz::UTC)).unwrap(),
            utc("2026-07-15T12:00:00Z")
        );
    }

    #[test]
    fn dst_gaps_and_overlaps_are_refused() {
        let paris = rules(chrono_tz::Europe::Paris);
        // 2026-03-29 02:30 does not exist in Paris; 2026-10-25 02:30 happens twice.
        let missing = parse_text_timestamp("2026-03-29T02:30:00", &paris).unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        let ambiguous = parse_text_timestamp("2026-10-25T02:30:00", &paris).unwrap_err();
        assert!(ambiguous.contains("ambiguous"), "{ambiguous}");
        // With an explicit offset the same wall time is fine.
        assert!(parse_text_timestamp("2026-10-25T02:30:00+01:00", &paris).is_ok());
    }

    #[test]
    fn impossible_dates_are_refused() {
        let r = rules(Tz::UTC);
        for text in ["2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "yesterday", "2026-01-01T25:00:00", ""] {
            assert!(parse_text_timestamp(text, &r).is_err(), "{text}");
        }
    }

    #[test]
    fn epochs_in_seconds_and_milliseconds() {
        let seconds = rules(Tz::UTC);
        assert_eq!(parse_epoch(1_767_225_600.25, &seconds).unwrap(), utc("2026-01-01T00:00:00.25Z"));
        let millis = TimestampRules { epoch_unit: EpochUnit::Ms, ..seconds };
        assert_eq!(parse_epoch(1_767_225_600_250.0, &millis).unwrap(), utc("2026-01-01T00:00:00.25Z"));
        assert!(parse_epoch(1e300, &seconds).is_err());
    }

    #[test]
    fn minutes_bucket_at_their_boundaries() {
        let start = utc("2026-01-01T00:01:00Z");
        assert_eq!(start.minute().start(), start);
        assert_eq!(start.saturating_add_micros(-1).minute().end(), start);
        assert_eq!(start.saturating_add_micros(59_999_999).minute(), start.minute());
        assert_eq!(start.saturating_add_micros(60_000_000).minute().index(), start.minute().index() + 1);
        // Before 1970 the floor still goes down, not toward zero.
        let before_epoch = Timestamp::from_micros(-1);
        assert_eq!(before_epoch.minute().index(), -1);
    }
}
