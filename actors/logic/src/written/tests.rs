use super::*;
use crate::seen::chunk_of;
use std::collections::{BTreeSet, HashMap};

fn ts(minute: i64, second: i64) -> Timestamp {
    Timestamp::from_micros(minute * 60_000_000 + second * 1_000_000)
}

fn remember_seconds(written: &mut WrittenMinutes, minute: i64, seconds: &[i64]) {
    let minute = Minute::from_index(minute);
    let timestamps: Vec<i64> = seconds.iter().map(|second| ts(minute.index(), *second).micros()).collect();
    written.remember(minute, &chunk_of(minute, &timestamps));
}

#[test]
fn written_minutes_remember_merge_and_forget() {
    let mut written = WrittenMinutes::default();
    assert_eq!(written.contains(ts(5, 1)), Ok(false));
    assert!(written.newest().is_none());
    for minute in [5, 7, 6] {
        remember_seconds(&mut written, minute, &[1]);
    }
    assert_eq!(written.newest(), Some(Minute::from_index(7)));
    for (minute, second, held) in
        [(5, 1, true), (6, 1, true), (7, 1, true), (6, 2, false), (8, 1, false), (4, 1, false)]
    {
        assert_eq!(written.contains(ts(minute, second)), Ok(held), "{minute}:{second}");
    }
    // A late part of minute 6.
    remember_seconds(&mut written, 6, &[2]);
    assert_eq!((written.contains(ts(6, 2)), written.contains(ts(6, 1))), (Ok(true), Ok(true)));
    written.forget_before(Minute::from_index(6));
    assert_eq!(written.contains(ts(5, 1)), Ok(false));
    assert_eq!((written.contains(ts(6, 1)), written.contains(ts(7, 1))), (Ok(true), Ok(true)));
    written.forget_before(Minute::from_index(8));
    assert!(written.is_empty());
}

#[test]
fn minutes_before_1970_and_far_apart_are_kept_apart() {
    let mut written = WrittenMinutes::default();
    let (old, new) = (Minute::from_index(-1_000_000), Minute::from_index(30_000_000));
    let old_ts = old.start().micros() + 7_000_000;
    let new_ts = new.start().micros() + 7_000_000;
    written.remember(old, &chunk_of(old, &[old_ts]));
    written.remember(new, &chunk_of(new, &[new_ts]));
    assert_eq!(written.contains(Timestamp::from_micros(old_ts)), Ok(true));
    assert_eq!(written.contains(Timestamp::from_micros(new_ts)), Ok(true));
    assert_eq!(written.contains(Timestamp::from_micros(new_ts + 1)), Ok(false));
}

#[test]
fn a_cold_minute_is_never_guessed_and_comes_back_whole() {
    let mut written = WrittenMinutes::default();
    for minute in 10..16 {
        remember_seconds(&mut written, minute, &[1, 2, 3]);
    }
    let in_memory = written.heap_bytes();
    // Too small to be worth a file: nothing cut.
    assert_eq!(written.cold_tail(Minute::from_index(14), 1_000), None);
    let tail = written.cold_tail(Minute::from_index(14), 1).expect("minutes 10 to 13 cut");
    assert_eq!(tail.newest, Minute::from_index(13));
    assert_eq!(written.heap_bytes(), in_memory, "nothing leaves memory before it is stored");
    let at = ColdRef { segment: 3, offset: 1 << 40, len: tail.bytes.len() as u32 };
    written.tail_stored(&tail, at);
    assert!(written.heap_bytes() < in_memory && written.has_cold());
    // Minutes in memory answer; a minute at or before the run's newest needs it.
    assert_eq!(written.contains(ts(15, 2)), Ok(true));
    assert_eq!(written.contains(ts(14, 9)), Ok(false));
    assert_eq!(written.contains(ts(13, 2)), Err(NeedsCold));
    assert_eq!(written.has_minute(Minute::from_index(10)), Err(NeedsCold));
    assert_eq!(written.newest(), Some(Minute::from_index(15)));
    // A part of a cold minute remembered meanwhile (a start-up read coming back late).
    remember_seconds(&mut written, 12, &[4]);
    assert_eq!(written.contains(ts(12, 4)), Err(NeedsCold));
    let dropped = written.warm(Minute::from_index(0), |asked| (asked == at).then(|| tail.bytes.clone()));
    assert_eq!(dropped, 0);
    assert!(!written.has_cold());
    assert_eq!(
        written.offsets_of(Minute::from_index(12)),
        Ok(vec![1_000_000, 2_000_000, 3_000_000, 4_000_000].into())
    );
    assert_eq!(written.contains(ts(10, 3)), Ok(true));
}

#[test]
fn a_run_that_cannot_be_read_or_stored_is_reported_not_invented() {
    let mut written = WrittenMinutes::default();
    for minute in 10..14 {
        remember_seconds(&mut written, minute, &[1]);
    }
    let first = written.cold_tail(Minute::from_index(11), 1).expect("minute 10");
    let at = ColdRef { segment: 0, offset: 0, len: 1 };
    written.tail_stored(&first, at);
    // A tail that could not be stored: the index keeps its minutes and the earlier run.
    let unstored = written.clone();
    let second = written.cold_tail(Minute::from_index(13), 1).expect("minutes 11, 12 and the run");
    assert_eq!(written, unstored);
    assert_eq!(second.newest, Minute::from_index(12));
    assert_eq!(written.contains(ts(12, 1)), Ok(true));
    assert_eq!(written.contains(ts(10, 1)), Err(NeedsCold));
    // Lost (the file damaged): dropped and counted; garbage bytes likewise.
    assert_eq!(written.clone().warm(Minute::from_index(0), |_| None), 1);
    assert_eq!(written.clone().warm(Minute::from_index(0), |_| Some(vec![0x02, 0x05, 0x07])), 1);
    written.warm(Minute::from_index(0), |_| None);
    assert_eq!(written.contains(ts(10, 1)), Ok(false));
    assert_eq!(written.contains(ts(13, 1)), Ok(true));
}

#[test]
fn cooled_every_minute_for_an_hour_memory_holds_one_reference() {
    let mut written = WrittenMinutes::default();
    let mut store: HashMap<u64, Vec<u8>> = HashMap::new();
    for minute in 100..160 {
        remember_seconds(&mut written, minute, &[1, 7, 30]);
        if let Some(tail) = written.cold_tail(Minute::from_index(minute), 1) {
            let at = ColdRef { segment: 0, offset: minute as u64 * 100, len: tail.bytes.len() as u32 };
            store.insert(at.offset, tail.bytes.clone());
            written.tail_stored(&tail, at);
        }
        let cold = written.items().filter(|item| matches!(item.what, What::Cold(_))).count();
        assert_eq!(cold, usize::from(minute > 100), "minute {minute}");
    }
    // The newest minute's chunk and one reference, not sixty minutes' worth.
    let one_minute = chunk_of(Minute::from_index(0), &[1_000_000]).len() + 2;
    assert!(written.heap_bytes() <= one_minute + 16, "{} bytes", written.heap_bytes());
    assert_eq!(written.contains(ts(130, 7)), Err(NeedsCold));
    // Loaded back down the chain as far as `since` reaches, and no further.
    let mut reads = 0;
    let dropped = written.warm(Minute::from_index(130), |at| {
        reads += 1;
        store.get(&at.offset).cloned()
    });
    // Minutes 130 to 158, one run each (159 is in memory).
    assert_eq!((dropped, reads), (0, 29));
    assert!(!written.has_cold());
    for minute in 130..160 {
        assert_eq!(written.contains(ts(minute, 30)), Ok(true), "minute {minute}");
        assert_eq!(written.contains(ts(minute, 31)), Ok(false), "minute {minute}");
    }
    assert_eq!(written.contains(ts(129, 30)), Ok(false));
}

#[test]
fn a_run_naming_itself_or_a_later_run_is_dropped_not_followed() {
    let at = ColdRef { segment: 0, offset: 500, len: 9 };
    for named in [at, ColdRef { offset: 900, ..at }, ColdRef { segment: 1, offset: 0, ..at }] {
        // The record at `at`: minute 9 and a reference to `named` for minute 8.
        let mut record = WrittenMinutes::default();
        remember_seconds(&mut record, 8, &[1]);
        remember_seconds(&mut record, 9, &[1]);
        record.tail_stored(&record.cold_tail(Minute::from_index(9), 1).expect("minute 8"), named);
        let mut written = WrittenMinutes::default();
        remember_seconds(&mut written, 9, &[1]);
        remember_seconds(&mut written, 10, &[1]);
        written.tail_stored(&written.cold_tail(Minute::from_index(10), 1).expect("minute 9"), at);
        let mut reads = 0;
        let dropped = written.warm(Minute::from_index(0), |_| {
            reads += 1;
            Some(record.entries.to_vec())
        });
        assert_eq!((dropped, reads), (1, 1), "naming {named:?}");
        assert_eq!(written.contains(ts(9, 1)), Ok(false));
        assert_eq!(written.contains(ts(10, 1)), Ok(true));
    }
}

proptest::proptest! {
    #[test]
    fn written_minutes_hold_what_was_remembered_in_any_order(
        parts in proptest::collection::vec((0i64..12, proptest::collection::btree_set(0i64..60, 1..5)), 1..40),
        forget in 0i64..14,
        probes in proptest::collection::vec((0i64..12, 0i64..60), 30),
    ) {
        let base = 29_539_320;
        let mut written = WrittenMinutes::default();
        let mut model = BTreeSet::new();
        for (minute, seconds) in &parts {
            remember_seconds(&mut written, base + minute, &seconds.iter().copied().collect::<Vec<_>>());
            model.extend(seconds.iter().map(|second| ts(base + minute, *second).micros()));
        }
        proptest::prop_assert!(agrees(&written, &model, base, &probes, false));
        written.forget_before(Minute::from_index(base + forget));
        model.retain(|&micros| Timestamp::from_micros(micros).minute().index() >= base + forget);
        proptest::prop_assert!(agrees(&written, &model, base, &probes, false));
    }

    /// Parts remembered, tails moved cold, runs forgotten and loaded back, in any order:
    /// the index never answers wrong (a minute a run may hold is `NeedsCold`), and after
    /// a warm-up it answers everything exactly.
    #[test]
    fn cold_runs_never_change_an_answer(
        steps in proptest::collection::vec((0u8..5, 0i64..12, proptest::collection::btree_set(0i64..60, 1..4)), 1..60),
        probes in proptest::collection::vec((0i64..12, 0i64..60), 30),
    ) {
        let base = 29_539_320;
        let mut written = WrittenMinutes::default();
        let mut model = BTreeSet::new();
        let mut store: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut forgotten = Minute::from_index(i64::MIN / 2);
        for (action, minute, seconds) in steps {
            match action {
                0 | 1 if base + minute >= forgotten.index() => {
                    remember_seconds(&mut written, base + minute, &seconds.iter().copied().collect::<Vec<_>>());
                    model.extend(seconds.iter().map(|second| ts(base + minute, *second).micros()));
                }
                2 => {
                    if let Some(tail) = written.cold_tail(Minute::from_index(base + minute), 1) {
                        let segment = store.len() as u32;
                        let at = ColdRef { segment, offset: 0, len: tail.bytes.len() as u32 };
                        store.insert(segment, tail.bytes.clone());
                        written.tail_stored(&tail, at);
                    }
                }
                0 | 1 => {}
                3 => {
                    written.forget_before(Minute::from_index(base + minute));
                    forgotten = forgotten.max(Minute::from_index(base + minute));
                    model.retain(|&micros| Timestamp::from_micros(micros).minute().index() >= base + minute);
                }
                _ => {
                    let dropped = written.warm(forgotten, |at| store.get(&at.segment).cloned());
                    proptest::prop_assert_eq!(dropped, 0);
                }
            }
            proptest::prop_assert!(agrees(&written, &model, base, &probes, true));
        }
        written.warm(forgotten, |at| store.get(&at.segment).cloned());
        proptest::prop_assert!(!written.has_cold());
        proptest::prop_assert!(agrees(&written, &model, base, &probes, false));
    }
}

/// Whether `written` answers as `model` does for every probe and every minute's offsets;
/// with `cold_allowed`, `NeedsCold` passes too.
fn agrees(
    written: &WrittenMinutes,
    model: &BTreeSet<i64>,
    base: i64,
    probes: &[(i64, i64)],
    cold_allowed: bool,
) -> bool {
    let fits = |answer: Result<bool, NeedsCold>, expected: bool| match answer {
        Ok(held) => held == expected,
        Err(NeedsCold) => cold_allowed,
    };
    let held = probes.iter().all(|(minute, second)| {
        let at = ts(base + minute, *second);
        fits(written.contains(at), model.contains(&at.micros()))
    });
    let decoded = (0..12).all(|minute| {
        let minute = Minute::from_index(base + minute);
        let expected: Vec<u32> = model
            .iter()
            .filter(|&&micros| Timestamp::from_micros(micros).minute() == minute)
            .map(|&micros| minute.offset_of(Timestamp::from_micros(micros)))
            .collect();
        match written.offsets_of(minute) {
            Ok(offsets) => *offsets == *expected,
            Err(NeedsCold) => cold_allowed,
        }
    });
    held && decoded
}
