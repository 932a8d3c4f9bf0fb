//! The text timestamp reader against chrono's RFC 3339 parser: every RFC 3339 text
//! chrono reads (in years 1 to 9999) is read here as chrono's instant, and whatever this
//! reader takes that chrono reads too, it reads the same.

use chrono::DateTime;
use fleetagg_logic::time::parse_text_timestamp;
use fleetagg_logic::EpochUnit;
use fleetagg_logic::TimestampRules;
use proptest::prelude::*;

fn chrono_micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|instant| instant.timestamp_micros())
}

fn ours(text: &str) -> Option<i64> {
    let rules = TimestampRules { default_timezone: chrono_tz::Tz::UTC, epoch_unit: EpochUnit::S };
    parse_text_timestamp(text, &rules).ok().map(|ts| ts.micros())
}

/// Years 1 to 9999 in UTC: chrono reads more (year 0, and offsets past the ends).
fn in_years(micros: i64) -> bool {
    (-62_135_596_800_000_000..=253_402_300_799_999_999).contains(&micros)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn agrees_with_chrono_on_well_formed_timestamps(
        year in 0_i64..=9999,
        month in 1_u32..=12,
        day in 1_u32..=31,
        hour in 0_u32..=23,
        minute in 0_u32..=59,
        second in 0_u32..=60,
        separator in prop::sample::select(vec!['T', 't', ' ']),
        fraction in prop::option::of("[0-9]{1,12}"),
        offset in prop::option::of((any::<bool>(), 0_u32..=23, 0_u32..=59)),
        lower_z in any::<bool>(),
    ) {
        let fraction = fraction.map(|digits| format!(".{digits}")).unwrap_or_default();
        let offset = match offset {
            None if lower_z => "z".to_owned(),
            None => "Z".to_owned(),
            Some((west, hours, minutes)) => format!("{}{hours:02}:{minutes:02}", if west { '-' } else { '+' }),
        };
        let text = format!("{year:04}-{month:02}-{day:02}{separator}{hour:02}:{minute:02}:{second:02}{fraction}{offset}");
        let expected = chrono_micros(&text).filter(|&micros| in_years(micros));
        // Impossible dates (30 February) are refused by both; every other is read alike.
        prop_assert_eq!(ours(&text), expected, "{}", text);
    }

    #[test]
    fn never_contradicts_chrono_on_arbitrary_text(text in "[0-9T:Z+.tz -]{14,34}") {
        let (ours, chrono) = (ours(&text), chrono_micros(&text));
        if let (Some(ours), Some(chrono)) = (ours, chrono) {
            prop_assert_eq!(ours, chrono, "{}", text);
        }
        if let Some(chrono) = chrono.filter(|&micros| in_years(micros)) {
            prop_assert_eq!(ours, Some(chrono), "chrono reads {}", text);
        }
    }
}
