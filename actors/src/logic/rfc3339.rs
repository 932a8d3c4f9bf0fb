//! A fast reader for the timestamp form nearly every machine sends:
//! `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`.
//!
//! Why: chrono's general RFC 3339 parser was a fifth of the time `validate` spends on a
//! message, and the broker validates every message on one thread. Anything outside this
//! exact shape (lower-case or space separators, a leap second, more than nine fraction
//! digits, year 0, an impossible date) gets `None` and goes to chrono, so the result is
//! always the one chrono would give; a property test in `actors/tests/logic` checks that.

const MICROS_PER_SECOND: i64 = 1_000_000;

/// Microseconds since the Unix epoch (finer digits truncated, as chrono's
/// `timestamp_micros` does), or `None` when the text is not in the common shape.
pub fn parse_common_rfc3339(text: &[u8]) -> Option<i64> {
    if text.len() < 20
        || text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
    {
        return None;
    }
    let year = number(text, 0, 4)?;
    let month = number(text, 5, 2)?;
    let day = number(text, 8, 2)?;
    let hour = number(text, 11, 2)?;
    let minute = number(text, 14, 2)?;
    let second = number(text, 17, 2)?;
    let (fraction_micros, mut pos) = fraction(text, 19)?;
    let offset_seconds = match *text.get(pos)? {
        b'Z' => {
            pos += 1;
            0
        }
        sign @ (b'+' | b'-') => {
            if text.get(pos + 3) != Some(&b':') {
                return None;
            }
            let (hours, minutes) = (number(text, pos + 1, 2)?, number(text, pos + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            pos += 6;
            let seconds = hours * 3600 + minutes * 60;
            if sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let valid = pos == text.len()
        && year >= 1
        && (1..=12).contains(&month)
        && day >= 1
        && day <= days_in_month(year, month)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    if !valid {
        return None;
    }
    let seconds =
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    Some(seconds * MICROS_PER_SECOND + fraction_micros)
}

/// `len` ASCII digits at `at` as a number.
fn number(text: &[u8], at: usize, len: usize) -> Option<i64> {
    let digits = text.get(at..at + len)?;
    digits
        .iter()
        .try_fold(0_i64, |value, &byte| byte.is_ascii_digit().then(|| value * 10 + i64::from(byte - b'0')))
}

/// An optional `.` and 1 to 9 digits at `at`: the microseconds they hold (truncated) and
/// the position after them.
fn fraction(text: &[u8], at: usize) -> Option<(i64, usize)> {
    if text.get(at) != Some(&b'.') {
        return Some((0, at));
    }
    let start = at + 1;
    let count = text[start..].iter().take_while(|byte| byte.is_ascii_digit()).count();
    if count == 0 || count > 9 {
        return None;
    }
    let micros = (0..6).fold(0_i64, |value, index| {
        let digit = if index < count { i64::from(text[start + index] - b'0') } else { 0 };
        value * 10 + digit
    });
    Some((micros, start + count))
}

fn days_in_month(year: i64, month: i64) -> i64 {
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
    use super::parse_common_rfc3339 as parse;

    #[test]
    fn reads_the_common_shapes() {
        assert_eq!(parse(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse(b"1970-01-01T00:00:01.5Z"), Some(1_500_000));
        assert_eq!(parse(b"2026-03-01T12:00:20+02:00"), Some(1_772_359_220_000_000));
        assert_eq!(parse(b"1969-12-31T23:59:59.9999999Z"), Some(-1));
    }

    #[test]
    fn leaves_everything_else_to_chrono() {
        for text in [
            "2026-03-01t10:00:00Z",
            "2026-03-01 10:00:00Z",
            "2026-03-01T10:00:60Z",
            "2026-02-29T10:00:00Z",
            "2026-03-01T10:00:00.1234567890Z",
            "2026-03-01T10:00:00.Z",
            "2026-03-01T10:00:00+0200",
            "2026-03-01T10:00:00",
            "0000-01-01T00:00:00Z",
            "2026-03-01T10:00:00Zjunk",
        ] {
            assert_eq!(parse(text.as_bytes()), None, "{text}");
        }
    }
}
