//! Properties (proptest): the parser never panics, valid messages round-trip, merging is
//! associative and commutative and equals aggregating everything at once.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use chrono_tz::Tz;
use fleetagg_logic::json::parse_telemetry;
use fleetagg_logic::{
    validate, Accepted, ClosedMinute, EpochUnit, JournalTally, Minute, MinuteAggregate, MinutePart,
    OpenMinutes, PendingMinutes, RejectReason, Rejection, Sample, Telemetry, Timestamp,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::support::{
    accepted_ts, aggregate_all, merged, message_at, message_with, now, object, rules, rules_in, sample, utc,
    MICROS_PER_MINUTE, MICROS_PER_SECOND,
};

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// Multiples of 0.25: sums of a few hundred of them are exact in an f64, so merges can be
/// compared exactly.
fn quarter(max_quarters: u32) -> impl Strategy<Value = f64> {
    (0..=max_quarters).prop_map(|q| f64::from(q) * 0.25)
}

/// A sample with an exact load rate in [0, 100] and an exact mileage.
fn exact_sample() -> impl Strategy<Value = Sample> {
    (0i64..10 * MICROS_PER_MINUTE, quarter(400), quarter(4_000_000))
        .prop_map(|(micros, load_rate, mileage)| sample(micros, load_rate, mileage))
}

fn exact_aggregate() -> impl Strategy<Value = MinuteAggregate> {
    prop::collection::vec(exact_sample(), 1..20)
        .prop_map(|samples| aggregate_all(&samples).expect("at least one sample"))
}

/// A machine id the contract accepts: 1 to 128 characters, none of them control.
fn machine_id() -> impl Strategy<Value = String> {
    // Every non-control character (controls are U+0000..U+001F and U+007F..U+009F),
    // with the ones JSON escapes and a few multi-byte ones made frequent.
    let non_control =
        prop::char::ranges(vec![' '..='~', '\u{a0}'..='\u{d7ff}', '\u{e000}'..='\u{10ffff}'].into());
    let tricky = prop::sample::select(vec!['"', '\\', '/', ' ', 'é', '機', '😀', '\u{2028}']);
    prop::collection::vec(prop_oneof![3 => non_control, 1 => tricky], 1..=128)
        .prop_map(|chars| chars.into_iter().collect())
}

/// A JSON string literal of `text`, either with raw characters or entirely as \u escapes
/// (surrogate pairs beyond the BMP).
fn encode_machine(text: &str, escape_all: bool) -> String {
    if !escape_all {
        return serde_json::to_string(text).expect("a string is valid JSON");
    }
    let mut out = String::from("\"");
    for unit in text.encode_utf16() {
        out.push_str(&format!("\\u{unit:04X}"));
    }
    out.push('"');
    out
}

/// RFC 3339 text for `micros` shown at a fixed offset with `digits` fractional digits
/// (9 digits append random nanoseconds that must be dropped).
fn rfc3339_at_offset(micros: i64, offset_minutes: i32, digits: u8, nanos: u32, use_z: bool) -> String {
    let instant = DateTime::from_timestamp_micros(micros).expect("instant in chrono's range");
    let local = instant.naive_utc() + chrono::Duration::minutes(i64::from(offset_minutes));
    let fraction = i64::from(instant.timestamp_subsec_micros());
    let fraction = match digits {
        0 => String::new(),
        3 => format!(".{:03}", fraction / 1000),
        6 => format!(".{fraction:06}"),
        _ => format!(".{fraction:06}{nanos:03}"),
    };
    let offset = if offset_minutes == 0 && use_z {
        "Z".to_owned()
    } else {
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let abs = offset_minutes.abs();
        format!("{sign}{:02}:{:02}", abs / 60, abs % 60)
    };
    format!("{}{fraction}{offset}", local.format("%Y-%m-%dT%H:%M:%S"))
}

/// A JSON number for `value`, in plain or exponent notation.
fn json_number(value: f64, exponent: bool) -> String {
    if exponent {
        format!("{value:e}")
    } else {
        format!("{value}")
    }
}

/// Byte strings that look like JSON often enough to reach the parser's deeper paths.
fn json_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\\",
            "\\u",
            "d83d",
            "0",
            "1",
            "-",
            ".",
            "e",
            "E",
            "+",
            "NaN",
            "Infinity",
            "-Infinity",
            "null",
            "true",
            "false",
            " ",
            "\"machine\"",
            "\"ts\"",
            "\"load_rate\"",
            "\"mileage\"",
            "\"2026-03-01T11:59:30Z\"",
            "é",
            "\u{0}",
            "\n",
        ]),
        0..64,
    )
    .prop_map(|parts| parts.concat())
}

/// A valid message with one byte changed, dropped or duplicated.
fn mutated_message() -> impl Strategy<Value = Vec<u8>> {
    let valid = message_with(&[]).into_bytes();
    let len = valid.len();
    (0..len, any::<u8>(), 0u8..3).prop_map(move |(at, byte, how)| {
        let mut bytes = valid.clone();
        match how {
            0 => bytes[at] = byte,
            1 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, byte),
        }
        bytes
    })
}

fn rejection_is_well_formed(result: &Result<Telemetry, Rejection>) -> bool {
    match result {
        Ok(telemetry) => {
            let sample = telemetry.sample;
            !telemetry.machine.is_empty()
                && (0.0..=100.0).contains(&sample.load_rate)
                && sample.mileage >= 0.0
                && sample.mileage.is_finite()
        }
        Err(rejection) => {
            RejectReason::ALL.contains(&rejection.reason) && !rejection.detail.trim().is_empty()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    // (a) Merging aggregates.

    #[test]
    fn merge_is_commutative(a in exact_aggregate(), b in exact_aggregate()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in exact_aggregate(), b in exact_aggregate(), c in exact_aggregate()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merging_any_partition_equals_aggregating_all_samples(
        tagged in prop::collection::vec((exact_sample(), 0usize..5), 1..80),
        reverse in any::<bool>(),
    ) {
        let samples: Vec<Sample> = tagged.iter().map(|(sample, _)| *sample).collect();
        let all = aggregate_all(&samples).unwrap();
        // The reference, computed without MinuteAggregate.
        let count = u32::try_from(samples.len()).unwrap();
        let sum: f64 = samples.iter().map(|s| s.load_rate).sum();
        let load_min = samples.iter().map(|s| s.load_rate).fold(f64::INFINITY, f64::min);
        let load_max = samples.iter().map(|s| s.load_rate).fold(f64::NEG_INFINITY, f64::max);
        let mileage_min = samples.iter().map(|s| s.mileage).fold(f64::INFINITY, f64::min);
        let mileage_max = samples.iter().map(|s| s.mileage).fold(f64::NEG_INFINITY, f64::max);
        prop_assert_eq!(all.samples, count);
        prop_assert_eq!(all.load_rate_sum, sum);
        prop_assert_eq!((all.load_rate_min, all.load_rate_max), (load_min, load_max));
        prop_assert_eq!((all.mileage_min, all.mileage_max), (mileage_min, mileage_max));
        prop_assert_eq!(all.load_rate_avg(), sum / f64::from(count));

        // Any grouping, merged in either order, gives the same aggregate.
        let mut parts: Vec<MinuteAggregate> = (0..5)
            .filter_map(|group| {
                let members: Vec<Sample> = tagged
                    .iter()
                    .filter(|(_, tag)| *tag == group)
                    .map(|(sample, _)| *sample)
                    .collect();
                aggregate_all(&members)
            })
            .collect();
        if reverse {
            parts.reverse();
        }
        let mut combined = parts[0];
        for part in &parts[1..] {
            combined.merge(part);
        }
        prop_assert_eq!(combined, all);
    }

    #[test]
    fn merge_of_arbitrary_rates_matches_within_rounding(
        values in prop::collection::vec((0.0f64..=100.0, 0.0f64..1e9), 2..60),
        split in any::<prop::sample::Index>(),
    ) {
        let samples: Vec<Sample> = values
            .iter()
            .map(|&(load_rate, mileage)| sample(0, load_rate, mileage))
            .collect();
        let at = 1 + split.index(samples.len() - 1);
        let mut left = aggregate_all(&samples[..at]).unwrap();
        left.merge(&aggregate_all(&samples[at..]).unwrap());
        let all = aggregate_all(&samples).unwrap();
        prop_assert_eq!(left.samples, all.samples);
        prop_assert!((left.load_rate_sum - all.load_rate_sum).abs() <= 1e-9 * all.load_rate_sum.max(1.0));
        prop_assert_eq!((left.load_rate_min, left.load_rate_max), (all.load_rate_min, all.load_rate_max));
        prop_assert_eq!((left.mileage_min, left.mileage_max), (all.mileage_min, all.mileage_max));
    }

    // (b) Duplicates in open minutes.

    #[test]
    fn open_minutes_flag_exactly_the_repeated_timestamps(
        slots in prop::collection::vec((0i64..480, quarter(400), quarter(4_000)), 1..300),
    ) {
        // Half-second slots over four minutes, so repeats are frequent.
        let base = utc("2026-03-01T11:56:00Z").micros();
        let mut open = OpenMinutes::default();
        let mut seen = HashSet::new();
        let mut first_samples: BTreeMap<i64, Vec<Sample>> = BTreeMap::new();
        for &(slot, load_rate, mileage) in &slots {
            let offered = sample(base + slot * 500_000, load_rate, mileage);
            let expected = if seen.insert(offered.ts) { Accepted::Added } else { Accepted::Duplicate };
            prop_assert_eq!(open.accept(&offered), expected, "slot {}", slot);
            if expected == Accepted::Added {
                first_samples.entry(offered.ts.minute().index()).or_default().push(offered);
            }
        }
        let all = open.take_all();
        prop_assert!(open.is_empty());
        let minutes: Vec<i64> = all.iter().map(|part| part.minute.index()).collect();
        let expected_minutes: Vec<i64> = first_samples.keys().copied().collect();
        prop_assert_eq!(minutes, expected_minutes);
        for MinutePart { minute, aggregate, .. } in &all {
            let firsts = &first_samples[&minute.index()];
            let distinct: BTreeSet<Timestamp> = firsts.iter().map(|s| s.ts).collect();
            prop_assert_eq!(aggregate.samples as usize, distinct.len());
            // Duplicates carry other values here: only the first delivery counts.
            prop_assert_eq!(*aggregate, aggregate_all(firsts).unwrap());
        }
        let total: u32 = all.iter().map(|part| part.aggregate.samples).sum();
        prop_assert_eq!(total as usize, seen.len());
    }

    #[test]
    fn a_timestamp_counts_once_however_its_minutes_close_and_reopen(
        offered in prop::collection::vec((0i64..480, any::<bool>()), 1..300),
        every_microsecond in any::<bool>(),
    ) {
        // Half-second slots over four minutes (or the same with a microsecond added, so
        // the chunks count in µs), with minutes closed at random points in between: a
        // repeat is caught whether its minute is open, closed, or reopened by a late part.
        let base = utc("2026-03-01T11:56:00Z").micros();
        let grace = Duration::from_secs(5);
        let mut open = OpenMinutes::default();
        let mut parts = Vec::new();
        let mut seen = HashSet::new();
        for &(slot, close_after) in &offered {
            let ts = base + slot * 500_000 + i64::from(every_microsecond && slot % 3 == 0);
            let first = seen.insert(ts);
            let accepted = open.accept(&sample(ts, 1.0, 1.0));
            prop_assert_eq!(accepted == Accepted::Added, first, "slot {}", slot);
            if close_after {
                parts.extend(open.take_closed(Timestamp::from_micros(base + 10 * MICROS_PER_MINUTE), grace, Minute::from_index(0)));
            }
        }
        parts.extend(open.take_all());
        let total: u32 = parts.iter().map(|part| part.aggregate.samples).sum();
        prop_assert_eq!(total as usize, seen.len());
        // Each part's `seen` holds exactly its samples.
        let stored: usize = parts.iter().map(|part| fleetagg_logic::seen::chunk_offsets(&part.seen).unwrap().len()).sum();
        prop_assert_eq!(stored, seen.len());
    }

    // (e) Closing minutes.

    #[test]
    fn take_closed_returns_exactly_the_minutes_past_end_plus_grace(
        offsets in prop::collection::vec(0i64..10 * MICROS_PER_MINUTE, 1..100),
        now_offset in -MICROS_PER_MINUTE..12 * MICROS_PER_MINUTE,
        grace_micros in 0u64..3 * 60_000_000,
    ) {
        let base = utc("2026-03-01T11:50:00Z").micros();
        let grace = Duration::from_micros(grace_micros);
        let now = Timestamp::from_micros(base + now_offset);
        let mut open = OpenMinutes::default();
        let mut counts: BTreeMap<Minute, u32> = BTreeMap::new();
        for offset in &offsets {
            let offered = sample(base + offset, 50.0, 1.0);
            if open.accept(&offered) == Accepted::Added {
                *counts.entry(offered.ts.minute()).or_default() += 1;
            }
        }
        let grace_i64 = i64::try_from(grace_micros).unwrap();
        let is_closed = |minute: &Minute| minute.end().micros() + grace_i64 <= now.micros();
        let closed = open.take_closed(now, grace, Minute::from_index(0));
        let closed_minutes: Vec<Minute> = closed.iter().map(|part| part.minute).collect();
        let expected_closed: Vec<Minute> = counts.keys().copied().filter(is_closed).collect();
        prop_assert_eq!(&closed_minutes, &expected_closed);
        for part in &closed {
            prop_assert_eq!(part.aggregate.samples, counts[&part.minute]);
        }
        // What remains is the rest, and closing again at the same instant finds nothing.
        prop_assert!(open.take_closed(now, grace, Minute::from_index(0)).is_empty());
        let rest: Vec<Minute> = open.take_all().iter().map(|part| part.minute).collect();
        let expected_rest: Vec<Minute> = counts.keys().copied().filter(|m| !is_closed(m)).collect();
        prop_assert_eq!(rest, expected_rest);
    }

    // (c) The parser never panics.

    #[test]
    fn validate_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let result = validate(&bytes, now(), &rules());
        prop_assert!(rejection_is_well_formed(&result), "{:?}", result);
        let mut tiny = rules();
        tiny.max_payload_bytes = 8;
        let result = validate(&bytes, now(), &tiny);
        prop_assert!(rejection_is_well_formed(&result), "{:?}", result);
        if bytes.len() > 8 {
            prop_assert_eq!(result.unwrap_err().reason, RejectReason::TooLarge);
        }
    }

    #[test]
    fn validate_never_panics_on_arbitrary_strings(text in any::<String>()) {
        let result = validate(text.as_bytes(), now(), &rules());
        prop_assert!(rejection_is_well_formed(&result), "{:?}", result);
        let _ = parse_telemetry(&text);
    }

    #[test]
    fn validate_never_panics_on_json_like_text(text in json_like()) {
        let result = validate(text.as_bytes(), now(), &rules());
        prop_assert!(rejection_is_well_formed(&result), "{:?}", result);
        // Anything that does not start like an object is malformed.
        if !text.trim_start_matches([' ', '\n']).starts_with('{') {
            prop_assert_eq!(result.unwrap_err().reason, RejectReason::Malformed);
        }
    }

    #[test]
    fn validate_never_panics_on_mutated_messages(bytes in mutated_message()) {
        let result = validate(&bytes, now(), &rules());
        prop_assert!(rejection_is_well_formed(&result), "{:?}", result);
    }

    // (d) Valid messages round-trip.

    #[test]
    fn valid_messages_round_trip(
        machine in machine_id(),
        escape_all in any::<bool>(),
        age_micros in -5 * MICROS_PER_SECOND..=600 * MICROS_PER_SECOND,
        offset_minutes in -1439i32..=1439,
        digits in prop::sample::select(vec![0u8, 3, 6, 9]),
        nanos in 0u32..1000,
        use_z in any::<bool>(),
        load_rate in prop_oneof![0.0f64..=100.0, Just(0.0), Just(100.0)],
        mileage in prop_oneof![0.0f64..1e12, Just(0.0)],
        exponent in any::<bool>(),
        zone in prop::sample::select(vec![Tz::UTC, chrono_tz::Europe::Paris, chrono_tz::America::New_York]),
    ) {
        let micros = now().micros() - age_micros;
        let ts = rfc3339_at_offset(micros, offset_minutes, digits, nanos, use_z);
        let expected_micros = match digits {
            0 => micros - micros.rem_euclid(MICROS_PER_SECOND),
            3 => micros - micros.rem_euclid(1000),
            _ => micros,
        };
        let payload = object(&[
            ("load_rate", json_number(load_rate, exponent)),
            ("machine", encode_machine(&machine, escape_all)),
            ("mileage", json_number(mileage, !exponent)),
            ("ts", format!("\"{ts}\"")),
        ]);
        let telemetry = validate(payload.as_bytes(), now(), &rules_in(zone));
        prop_assert!(telemetry.is_ok(), "{} -> {:?}", payload, telemetry);
        let telemetry = telemetry.unwrap();
        prop_assert_eq!(&telemetry.machine, &machine);
        prop_assert_eq!(telemetry.sample.ts.micros(), expected_micros, "{}", ts);
        prop_assert_eq!(telemetry.sample.load_rate.to_bits(), load_rate.to_bits());
        prop_assert_eq!(telemetry.sample.mileage.to_bits(), mileage.to_bits());
        // The normalised instant is the one chrono reads from the same text.
        let reference = DateTime::parse_from_rfc3339(&ts).unwrap().with_timezone(&Utc);
        prop_assert_eq!(telemetry.sample.ts, Timestamp::from_chrono(reference));
    }

    #[test]
    fn naive_local_times_round_trip_through_the_default_zone(
        age_micros in -5 * MICROS_PER_SECOND..=600 * MICROS_PER_SECOND,
        zone in prop::sample::select(vec![
            Tz::UTC,
            chrono_tz::Europe::Paris,
            chrono_tz::America::New_York,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::America::St_Johns,
        ]),
        space in any::<bool>(),
    ) {
        let micros = now().micros() - age_micros;
        let instant = DateTime::from_timestamp_micros(micros).unwrap();
        let local = instant.with_timezone(&zone).naive_local();
        let separator = if space { " " } else { "T" };
        let text = local.format(&format!("%Y-%m-%d{separator}%H:%M:%S%.6f")).to_string();
        let ts = accepted_ts(message_at(&text), &rules_in(zone));
        prop_assert_eq!(ts.micros(), micros, "{} in {}", text, zone);
    }

    #[test]
    fn epoch_numbers_round_trip(
        age_micros in -5 * MICROS_PER_SECOND..=600 * MICROS_PER_SECOND,
    ) {
        let micros = now().micros() - age_micros;
        let millis_rules = {
            let mut r = rules();
            r.timestamps.epoch_unit = EpochUnit::Ms;
            r
        };
        // Whole milliseconds in ms mode are exact.
        let ms = micros.div_euclid(1000);
        let ts = accepted_ts(message_with(&[("ts", &ms.to_string())]), &millis_rules);
        prop_assert_eq!(ts.micros(), ms * 1000);
        // Seconds with six decimals, in the current era, keep the microsecond.
        let seconds = format!("{}.{:06}", micros.div_euclid(MICROS_PER_SECOND), micros.rem_euclid(MICROS_PER_SECOND));
        let ts = accepted_ts(message_with(&[("ts", &seconds)]), &rules());
        prop_assert_eq!(ts.micros(), micros, "{}", seconds);
    }

    #[test]
    fn every_instant_lies_in_its_minute(micros in -1_000_000_000_000_000i64..1_000_000_000_000_000) {
        let ts = Timestamp::from_micros(micros);
        let minute = ts.minute();
        prop_assert!(minute.start() <= ts && ts < minute.end());
        prop_assert_eq!(minute.end().micros() - minute.start().micros(), MICROS_PER_MINUTE);
        prop_assert_eq!(minute.start().minute(), minute);
        prop_assert_eq!(minute.end().minute().index(), minute.index() + 1);
        prop_assert_eq!(Timestamp::from_micros(minute.start().micros() - 1).minute().index(), minute.index() - 1);
    }

    // 6. Pending rows.

    #[test]
    fn pending_minutes_hold_one_merged_row_per_machine_and_minute(
        rows in prop::collection::vec(
            (prop::sample::select(vec!["a", "b", "c"]), 0i64..4, exact_aggregate()),
            0..40,
        ),
    ) {
        let mut pending = PendingMinutes::default();
        let mut expected: BTreeMap<(String, i64), MinuteAggregate> = BTreeMap::new();
        for (machine, minute, aggregate) in &rows {
            pending.add(ClosedMinute {
                machine: Arc::from(*machine),
                minute: Minute::from_index(*minute),
                aggregate: *aggregate,
                tally: JournalTally::default(),
                seen: Vec::new(),
                known_new: false,
            });
            expected
                .entry(((*machine).to_owned(), *minute))
                .and_modify(|held| held.merge(aggregate))
                .or_insert(*aggregate);
        }
        prop_assert_eq!(pending.len(), expected.len());
        let taken: BTreeMap<(String, i64), MinuteAggregate> = pending
            .take_all()
            .map(|row| ((row.machine.to_string(), row.minute.index()), row.aggregate))
            .collect();
        prop_assert!(pending.is_empty());
        prop_assert_eq!(taken, expected);
    }
}

/// What chrono itself writes for a fixed offset is read back as the same instant.
#[test]
fn chrono_rfc3339_output_is_accepted() {
    let offset = FixedOffset::east_opt(5 * 3600 + 45 * 60).unwrap();
    let instant = offset.with_ymd_and_hms(2026, 3, 1, 17, 44, 30).unwrap();
    assert_eq!(
        Timestamp::from_chrono(instant.with_timezone(&Utc)),
        accepted_ts(message_at(&instant.to_rfc3339()), &rules())
    );
}
