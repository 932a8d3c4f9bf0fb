//! The reader of text timestamps: exactly the forms the contract lists, and no other.
//!
//! ```text
//! [whitespace] YYYY-MM-DD (T|t|space) HH:MM[:SS[.digits]] [Z|z|±HH:MM] [whitespace]
//! ```
//!
//! That is RFC 3339 (lower-case `t` and `z` and a space separator are its own options),
//! plus seconds that may be left out and a missing offset, which makes a local time.
//! Whitespace is ASCII (space, tab, CR, LF, form feed). Years are four digits, 0001 to
//! 9999; second 60 (a leap second) is allowed, as RFC 3339 allows it.
//!
//! Why not chrono's readers: its RFC 3339 parser was a fifth of the time `validate`
//! spends on a message (the broker validates every message on one thread), and its
//! `strftime`-style reader of local times accepted far more than was ever documented
//! (`2026-3-1T1:2:3`, `+2026-…`, five-digit years, spaces inside). One strict grammar
//! is what the contract can list and the tests can hold; a property test in
//! `actors/tests/logic` checks that every RFC 3339 text chrono reads gives chrono's
//! instant here.

const MICROS_PER_SECOND: i64 = 1_000_000;

/// What the accepted forms look like, for error details.
pub const FORMS: &str = "YYYY-MM-DD(T| )HH:MM[:SS[.fraction]] with Z, ±HH:MM or no offset (local time)";

/// A timestamp text read field by field and checked against the calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimestamp {
    /// 1 to 9999.
    pub year: i32,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    /// 0 to 60: 60 is a leap second, which counts as second 0 of the next minute.
    pub second: u32,
    /// The fraction of the second in microseconds; finer digits are dropped.
    pub micros: u32,
    /// The offset east of UTC in seconds, or `None` for a local time.
    pub offset_seconds: Option<i32>,
}

/// Why a text is not a timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Not of the accepted forms.
    Shape,
    /// A field of the right shape but beyond its range: `"month"`, `"hour"` ...
    OutOfRange(&'static str),
    /// A day the month does not have (30 February).
    NoSuchDay,
    /// Year 0000.
    YearZero,
}

impl std::fmt::Display for TextError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextError::Shape => write!(f, "is not a timestamp of the form {FORMS}"),
            TextError::OutOfRange(field) => {
                write!(f, "is not a timestamp: its {field} is out of range (form {FORMS})")
            }
            TextError::NoSuchDay => write!(f, "is not a date: that month has no such day"),
            TextError::YearZero => write!(f, "is outside years 1 to 9999"),
        }
    }
}

/// Reads a text timestamp of the accepted forms.
pub fn read(text: &[u8]) -> Result<TextTimestamp, TextError> {
    let text = text.trim_ascii();
    let mut cursor = Cursor { text, at: 0 };
    let year = cursor.digits(4)?;
    cursor.byte(b'-')?;
    let month = cursor.digits(2)?;
    cursor.byte(b'-')?;
    let day = cursor.digits(2)?;
    match cursor.peek() {
        Some(b'T' | b't' | b' ') => cursor.at += 1,
        _ => return Err(TextError::Shape),
    }
    let hour = cursor.digits(2)?;
    cursor.byte(b':')?;
    let minute = cursor.digits(2)?;
    let (second, micros) = if cursor.peek() == Some(b':') {
        cursor.at += 1;
        (cursor.digits(2)?, cursor.fraction()?)
    } else {
        (0, 0)
    };
    let offset = match cursor.peek() {
        None => None,
        Some(b'Z' | b'z') => {
            cursor.at += 1;
            Some((1, 0, 0))
        }
        Some(sign @ (b'+' | b'-')) => {
            cursor.at += 1;
            let hours = cursor.digits(2)?;
            cursor.byte(b':')?;
            let minutes = cursor.digits(2)?;
            Some((if sign == b'-' { -1 } else { 1 }, hours, minutes))
        }
        Some(_) => return Err(TextError::Shape),
    };
    if cursor.at != text.len() {
        return Err(TextError::Shape);
    }

    let in_range =
        |value: u32, max: u32, field| if value <= max { Ok(()) } else { Err(TextError::OutOfRange(field)) };
    if year == 0 {
        return Err(TextError::YearZero);
    }
    if month == 0 {
        return Err(TextError::OutOfRange("month"));
    }
    in_range(month, 12, "month")?;
    in_range(hour, 23, "hour")?;
    in_range(minute, 59, "minute")?;
    in_range(second, 60, "second")?;
    let offset_seconds = match offset {
        None => None,
        Some((sign, hours, minutes)) => {
            in_range(hours, 23, "offset")?;
            in_range(minutes, 59, "offset")?;
            // At most 23:59, so the cast cannot wrap.
            #[allow(clippy::cast_possible_wrap)]
            Some(sign * (hours * 3600 + minutes * 60) as i32)
        }
    };
    // Four digits: at most 9999, so the cast cannot wrap.
    #[allow(clippy::cast_possible_wrap)]
    let year = year as i32;
    if day == 0 || day > days_in_month(year, month) {
        return Err(TextError::NoSuchDay);
    }
    Ok(TextTimestamp { year, month, day, hour, minute, second, micros, offset_seconds })
}

impl TextTimestamp {
    /// Microseconds since the Unix epoch of these fields read at `offset_seconds` east of
    /// UTC. A leap second is second 0 of the next minute.
    pub fn micros_at_offset(&self, offset_seconds: i32) -> i64 {
        let days = days_from_civil(i64::from(self.year), i64::from(self.month), i64::from(self.day));
        let seconds = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - i64::from(offset_seconds);
        seconds * MICROS_PER_SECOND + i64::from(self.micros)
    }
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn byte(&mut self, expected: u8) -> Result<(), TextError> {
        if self.peek() == Some(expected) {
            self.at += 1;
            Ok(())
        } else {
            Err(TextError::Shape)
        }
    }

    /// Exactly `count` ASCII digits, as a number.
    fn digits(&mut self, count: usize) -> Result<u32, TextError> {
        let digits = self.text.get(self.at..self.at + count).ok_or(TextError::Shape)?;
        let value = digits
            .iter()
            .try_fold(0_u32, |value, &byte| {
                byte.is_ascii_digit().then(|| value * 10 + u32::from(byte - b'0'))
            })
            .ok_or(TextError::Shape)?;
        self.at += count;
        Ok(value)
    }

    /// An optional `.` and at least one digit: the microseconds they hold, truncated.
    fn fraction(&mut self) -> Result<u32, TextError> {
        if self.peek() != Some(b'.') {
            return Ok(0);
        }
        self.at += 1;
        let start = self.at;
        while self.peek().is_some_and(|byte| byte.is_ascii_digit()) {
            self.at += 1;
        }
        let digits = &self.text[start..self.at];
        if digits.is_empty() {
            return Err(TextError::Shape);
        }
        let micros = (0..6).fold(0_u32, |value, index| {
            let digit = digits.get(index).map_or(0, |byte| u32::from(byte - b'0'));
            value * 10 + digit
        });
        Ok(micros)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc_micros(text: &str) -> Option<i64> {
        let fields = read(text.as_bytes()).ok()?;
        Some(fields.micros_at_offset(fields.offset_seconds?))
    }

    #[test]
    fn reads_the_offset_forms() {
        assert_eq!(utc_micros("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(utc_micros("1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(utc_micros("2026-03-01T12:00:20+02:00"), Some(1_772_359_220_000_000));
        assert_eq!(utc_micros("1969-12-31T23:59:59.9999999Z"), Some(-1));
        assert_eq!(utc_micros("1970-01-01 00:01z"), Some(60_000_000));
        assert_eq!(utc_micros(" 1970-01-01t00:00:59.000001-00:00\n"), Some(59_000_001));
        assert_eq!(utc_micros("1970-01-01T00:00:60Z"), Some(60_000_000));
    }

    #[test]
    fn reads_local_forms_without_an_offset() {
        let fields = read(b"2026-03-01 10:15").expect("a local time");
        assert_eq!(
            fields,
            TextTimestamp {
                year: 2026,
                month: 3,
                day: 1,
                hour: 10,
                minute: 15,
                second: 0,
                micros: 0,
                offset_seconds: None
            }
        );
    }

    #[test]
    fn names_what_is_wrong() {
        for (text, error) in [
            ("2026-03-01T10:00:00.Z", TextError::Shape),
            ("2026-3-01T10:00:00Z", TextError::Shape),
            ("2026-03-01T10:00:00+0200", TextError::Shape),
            ("2026-03-01T10:00:00Zjunk", TextError::Shape),
            ("2026-03-01T10:00.5", TextError::Shape),
            ("2026-13-01T10:00:00Z", TextError::OutOfRange("month")),
            ("2026-00-01T10:00:00Z", TextError::OutOfRange("month")),
            ("2026-03-01T24:00:00Z", TextError::OutOfRange("hour")),
            ("2026-03-01T10:60:00Z", TextError::OutOfRange("minute")),
            ("2026-03-01T10:00:61Z", TextError::OutOfRange("second")),
            ("2026-03-01T10:00:00+24:00", TextError::OutOfRange("offset")),
            ("2026-02-29T10:00:00Z", TextError::NoSuchDay),
            ("2026-04-00T10:00:00", TextError::NoSuchDay),
            ("0000-01-01T00:00:00Z", TextError::YearZero),
        ] {
            assert_eq!(read(text.as_bytes()), Err(error), "{text}");
        }
        assert_eq!(read(b"2028-02-29T10:00:00Z").map(|fields| fields.day), Ok(29));
    }
}
