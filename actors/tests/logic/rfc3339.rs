//! The fast RFC 3339 reader against chrono's: whenever the fast one answers, it must give
//! chrono's instant; and it must answer for the shapes machines send, or it is no faster.

use chrono::DateTime;
use fleetagg_actors::logic::rfc3339::parse_common_rfc3339;
use proptest::prelude::*;

fn chrono_micros(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|instant| instant.timestamp_micros())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn agrees_with_chrono_on_well_formed_timestamps(
        year in 1_i64..=9999,
        month in 1_u32..=12,
        day in 1_u32..=31,
        hour in 0_u32..=23,
        minute in 0_u32..=59,
        second in 0_u32..=59,
        fraction in prop::option::of("[0-9]{1,9}"),
        offset in prop::option::of((any::<bool>(), 0_u32..=23, 0_u32..=59)),
    ) {
        let fraction = fraction.map(|digits| format!(".{digits}")).unwrap_or_default();
        let offset = match offset {
            None => "Z".to_owned(),
            Some((west, hours, minutes)) => format!("{}{hours:02}:{minutes:02}", if west { '-' } else { '+' }),
        };
        let text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}{offset}");
        let fast = parse_common_rfc3339(text.as_bytes());
        let expected = chrono_micros(&text);
        // Impossible dates (30 February) are chrono's to refuse; every valid one is ours.
        prop_assert_eq!(fast, expected, "{}", text);
    }

    #[test]
    fn never_contradicts_chrono_on_arbitrary_text(text in "[0-9T:Z+.tz -]{18,34}") {
        if let Some(micros) = parse_common_rfc3339(text.as_bytes()) {
            prop_assert_eq!(Some(micros), chrono_micros(&text), "{}", text);
        }
    }
}
