//! Instants and minutes in UTC, and the reading of telemetry timestamps.
//!
//! Timestamps are kept as microseconds since the Unix epoch: PostgreSQL's `timestamptz`
//! resolution, cheap to compare and hash for duplicate detection, and exact for minute
//! arithmetic.

use crate::rfc3339::TextTimestamp;
use chrono::{DateTime, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

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

    /// Microseconds from the minute's start to `ts`, an instant within the minute; an
    /// instant before it or far after gives `u32::MAX`, an offset no minute holds.
    pub fn offset_of(self, ts: Timestamp) -> u32 {
        u32::try_from(ts.0.saturating_sub(self.start().0)).unwrap_or(u32::MAX)
    }
}

/// Converts a duration to microseconds, saturating.
pub fn duration_micros(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// How a numeric `ts` is read (`aggregation.epoch_unit`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EpochUnit {
    /// Unix epoch seconds, fractions allowed.
    #[default]
    S,
    /// Unix epoch milliseconds, fractions allowed.
    Ms,
}

/// How timestamps without an explicit offset are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimestampRules {
    pub default_timezone: Tz,
    pub epoch_unit: EpochUnit,
}

/// The first and the last microsecond of years 1 to 9999 in UTC: what PostgreSQL's
/// `timestamptz` and chrono both hold, and the bounds of every form of `ts`.
pub const FIRST_MICROS: i64 = -62_135_596_800_000_000;
pub const LAST_MICROS: i64 = 253_402_300_799_999_999;

/// The instant, if it lies in years 1 to 9999 (UTC).
fn within_years(micros: i64) -> Option<Timestamp> {
    (FIRST_MICROS..=LAST_MICROS).contains(&micros).then_some(Timestamp(micros))
}

/// Reads a text timestamp of the forms in [`super::rfc3339`]: with an offset, or a
/// local time in `rules.default_timezone`. Finer digits than the microsecond are dropped.
pub fn parse_text_timestamp(text: &str, rules: &TimestampRules) -> Result<Timestamp, String> {
    let fields = super::rfc3339::read(text.as_bytes()).map_err(|err| format!("{text:?} {err}"))?;
    let micros = match fields.offset_seconds {
        Some(offset) => fields.micros_at_offset(offset),
        None => local_micros(&fields, rules.default_timezone)?,
    };
    within_years(micros).ok_or_else(|| format!("{text:?} is outside years 1 to 9999 once normalised to UTC"))
}

/// A local time in `zone`, refused when a daylight-saving change makes it ambiguous or
/// skips it.
fn local_micros(fields: &TextTimestamp, zone: Tz) -> Result<i64, String> {
    // A leap second is read as second 59 plus one second, so it lands where the next
    // minute starts, as with an offset.
    let leap = i64::from(fields.second == 60) * MICROS_PER_SECOND;
    let naive = NaiveDate::from_ymd_opt(fields.year, fields.month, fields.day)
        .and_then(|date| {
            date.and_hms_micro_opt(fields.hour, fields.minute, fields.second.min(59), fields.micros)
        })
        .ok_or_else(|| format!("{fields:?} is not a date and time"))?;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(instant) => Ok(instant.timestamp_micros() + leap),
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

/// Reads a numeric epoch timestamp in `rules.epoch_unit` from the number's JSON text.
///
/// Exactly, from the decimal digits, and truncated to the microsecond like a text
/// timestamp: the instant is floored, so an epoch lands in the same microsecond and the
/// same minute as the same instant written as text, before 1970 too. Not from the f64:
/// `1796220599.9999999` has no f64 below 1796220600, so no arithmetic on it can tell
/// the last microsecond of a minute from the first of the next.
pub fn parse_epoch(text: &str, rules: &TimestampRules) -> Result<Timestamp, String> {
    let shift = match rules.epoch_unit {
        EpochUnit::S => 6,
        EpochUnit::Ms => 3,
    };
    let micros = match floor_scaled(text, shift) {
        Ok(micros) => Some(micros),
        Err(Epoch::OutOfRange) => None,
        Err(Epoch::NotANumber) => return Err(format!("epoch value {text} is not a decimal number")),
    };
    micros.and_then(within_years).ok_or_else(|| format!("epoch value {text} is outside years 1 to 9999"))
}

/// Why [`floor_scaled`] has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epoch {
    NotANumber,
    /// At least 10^18 in magnitude: far beyond years 1 to 9999 in any unit.
    OutOfRange,
}

/// `floor(value * 10^shift)` for a number in JSON's syntax, computed on its digits.
fn floor_scaled(text: &str, shift: i64) -> Result<i64, Epoch> {
    let is_digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) if is_digits(fraction) => (whole, fraction),
        Some(_) => return Err(Epoch::NotANumber),
        None => (mantissa, ""),
    };
    if !is_digits(whole) {
        return Err(Epoch::NotANumber);
    }
    let exponent = match exponent {
        None => 0,
        Some(exponent) => {
            let (sign, digits) = match exponent.as_bytes().first() {
                Some(b'-') => (-1, &exponent[1..]),
                Some(b'+') => (1, &exponent[1..]),
                _ => (1, exponent),
            };
            if !is_digits(digits) {
                return Err(Epoch::NotANumber);
            }
            // Saturates: an exponent beyond i64 is out of range (or zero) all the same.
            let magnitude = digits
                .bytes()
                .fold(0_i64, |value, byte| value.saturating_mul(10).saturating_add(i64::from(byte - b'0')));
            sign * magnitude
        }
    };
    // The digits of the mantissa, and where the decimal point falls among them once
    // multiplied by 10^(exponent + shift), counted from the first significant digit.
    let digits = whole.as_bytes().iter().chain(fraction.as_bytes()).copied();
    let leading_zeros = digits.clone().take_while(|&digit| digit == b'0').count();
    let mut significant = digits.skip(leading_zeros).peekable();
    if significant.peek().is_none() {
        return Ok(0);
    }
    let as_i64 = |count: usize| i64::try_from(count).unwrap_or(i64::MAX);
    let point = as_i64(whole.len())
        .saturating_add(exponent)
        .saturating_add(shift)
        .saturating_sub(as_i64(leading_zeros));
    if point > 18 {
        return Err(Epoch::OutOfRange);
    }
    // At most 18 digits: below 10^18, no overflow.
    let mut integer = 0_i64;
    for _ in 0..point.max(0) {
        let digit = significant.next().map_or(0, |digit| i64::from(digit - b'0'));
        integer = integer * 10 + digit;
    }
    let finer = significant.any(|digit| digit != b'0');
    // Floor, not truncation toward zero: -0.5 µs is in the microsecond before 0.
    Ok(if negative { -integer - i64::from(finer) } else { integer })
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
            "2026-03-01t10:00z",
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
        assert_eq!(parse_epoch("1767225600.25", &seconds).unwrap(), utc("2026-01-01T00:00:00.25Z"));
        let millis = TimestampRules { epoch_unit: EpochUnit::Ms, ..seconds };
        assert_eq!(parse_epoch("1767225600250.0", &millis).unwrap(), utc("2026-01-01T00:00:00.25Z"));
        assert!(parse_epoch("1e300", &seconds).is_err());
    }

    #[test]
    fn epoch_digits_are_floored_exactly() {
        for (text, shift, expected) in [
            ("0", 6, Ok(0)),
            ("-0", 6, Ok(0)),
            ("0.0000000e99999999999999999999", 6, Ok(0)),
            ("1796220599.9999999", 6, Ok(1_796_220_599_999_999)),
            ("-0.0000001", 6, Ok(-1)),
            ("-1", 6, Ok(-1_000_000)),
            ("12e-7", 6, Ok(1)),
            ("-12E-7", 6, Ok(-2)),
            ("1.5e+2", 3, Ok(150_000)),
            ("999999999999999999e-6", 6, Ok(999_999_999_999_999_999)),
            ("1e11", 6, Ok(100_000_000_000_000_000)),
            ("1e12", 6, Err(Epoch::OutOfRange)),
            ("-1e99999999999999999999999", 6, Err(Epoch::OutOfRange)),
            ("1e-99999999999999999999999", 6, Ok(0)),
            ("-1e-99999999999999999999999", 6, Ok(-1)),
            ("", 6, Err(Epoch::NotANumber)),
            ("1.", 6, Err(Epoch::NotANumber)),
            (".5", 6, Err(Epoch::NotANumber)),
            ("1e", 6, Err(Epoch::NotANumber)),
            ("1e+", 6, Err(Epoch::NotANumber)),
            ("--1", 6, Err(Epoch::NotANumber)),
            ("1x", 6, Err(Epoch::NotANumber)),
        ] {
            assert_eq!(floor_scaled(text, shift), expected, "{text}");
        }
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
