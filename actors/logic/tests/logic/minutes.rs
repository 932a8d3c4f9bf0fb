//! Aggregation, duplicate detection, closing of minutes, and the writer's pending rows.

use fleetagg_logic::{
    Accepted, ClosedMinute, JournalTally, Minute, MinuteAggregate, OpenMinutes, PendingMinutes, Timestamp,
};
use std::sync::Arc;
use std::time::Duration;

use super::support::{aggregate_all, sample, MICROS_PER_MINUTE};

// ---------------------------------------------------------------------------------------
// Aggregation, duplicates, closing, pending rows
// ---------------------------------------------------------------------------------------

#[test]
fn an_aggregate_holds_count_sum_minima_and_maxima() {
    let samples = [sample(0, 10.0, 5.0), sample(1, 30.0, 7.0), sample(2, 20.0, 6.0)];
    let aggregate = aggregate_all(&samples).unwrap();
    assert_eq!(aggregate.samples, 3);
    assert_eq!(aggregate.load_rate_sum, 60.0);
    assert_eq!(aggregate.load_rate_avg(), 20.0);
    assert_eq!((aggregate.load_rate_min, aggregate.load_rate_max), (10.0, 30.0));
    assert_eq!((aggregate.mileage_min, aggregate.mileage_max), (5.0, 7.0));
    let single = MinuteAggregate::of(&samples[1]);
    assert_eq!(single.samples, 1);
    assert_eq!(single.load_rate_avg(), 30.0);
    assert_eq!((single.mileage_min, single.mileage_max), (7.0, 7.0));
}

#[test]
fn open_minutes_drop_duplicates_of_every_held_minute() {
    let mut open = OpenMinutes::default();
    assert!(open.is_empty());
    assert_eq!(open.accept(&sample(60_000_000, 10.0, 1.0)), Accepted::Added);
    assert_eq!(open.accept(&sample(60_000_001, 20.0, 2.0)), Accepted::Added);
    assert_eq!(open.accept(&sample(120_000_000, 30.0, 3.0)), Accepted::Added);
    // Redeliveries, with other values: dropped, whatever minute they are in.
    assert_eq!(open.accept(&sample(60_000_000, 99.0, 9.0)), Accepted::Duplicate);
    assert_eq!(open.accept(&sample(120_000_000, 99.0, 9.0)), Accepted::Duplicate);
    assert_eq!(open.len(), 2);
    let all = open.take_all();
    assert!(open.is_empty());
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].minute.index(), 1);
    assert_eq!(all[0].aggregate.samples, 2);
    assert_eq!(all[0].aggregate.load_rate_max, 20.0);
    assert_eq!(all[1].minute.index(), 2);
    assert_eq!(all[1].aggregate.samples, 1);
    assert_eq!(all[1].aggregate.load_rate_sum, 30.0);
}

#[test]
fn take_closed_closes_at_end_plus_grace_and_keeps_later_minutes() {
    let grace = Duration::from_secs(5);
    let mut open = OpenMinutes::default();
    open.accept(&sample(0, 1.0, 1.0));
    open.accept(&sample(61_000_000, 2.0, 2.0));
    open.accept(&sample(125_000_000, 3.0, 3.0));
    assert!(open.take_closed(Timestamp::from_micros(64_999_999), grace, Minute::from_index(0)).is_empty());
    let closed = open.take_closed(Timestamp::from_micros(65_000_000), grace, Minute::from_index(0));
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].minute, Minute::from_index(0));
    assert_eq!(open.len(), 2);
    // A redelivery of a still-held minute is caught; minute 1 is still held.
    assert_eq!(open.accept(&sample(61_000_000, 9.0, 9.0)), Accepted::Duplicate);
    let closed = open.take_closed(Timestamp::from_micros(185_000_000), grace, Minute::from_index(0));
    let indexes: Vec<i64> = closed.iter().map(|part| part.minute.index()).collect();
    assert_eq!(indexes, [1, 2]);
    assert!(open.is_empty());
    // Zero grace closes exactly at the end.
    open.accept(&sample(200_000_000, 1.0, 1.0));
    assert!(open
        .take_closed(Timestamp::from_micros(239_999_999), Duration::ZERO, Minute::from_index(0))
        .is_empty());
    assert_eq!(
        open.take_closed(Timestamp::from_micros(240_000_000), Duration::ZERO, Minute::from_index(0)).len(),
        1
    );
}

#[test]
fn pending_minutes_merge_rows_with_the_same_machine_and_minute() {
    let row = |machine: &str, minute: i64, load_rate: f64, mileage: f64| ClosedMinute {
        machine: Arc::from(machine),
        minute: Minute::from_index(minute),
        aggregate: MinuteAggregate::of(&sample(minute * MICROS_PER_MINUTE, load_rate, mileage)),
        tally: JournalTally::default(),
        seen: Vec::new(),
        known_new: false,
    };
    let mut pending = PendingMinutes::default();
    assert!(pending.is_empty());
    pending.add(row("a", 7, 10.0, 100.0));
    pending.add(row("a", 7, 30.0, 90.0));
    pending.add(row("a", 8, 50.0, 110.0));
    pending.extend([row("b", 7, 70.0, 5.0), row("a", 7, 20.0, 95.0)]);
    assert_eq!(pending.len(), 3);
    let mut rows: Vec<_> = pending.take_all().collect();
    assert!(pending.is_empty());
    rows.sort_by(|x, y| (&x.machine, x.minute).cmp(&(&y.machine, y.minute)));
    let keys: Vec<(&str, i64)> = rows.iter().map(|r| (&*r.machine, r.minute.index())).collect();
    assert_eq!(keys, [("a", 7), ("a", 8), ("b", 7)]);
    let a7 = rows[0].aggregate;
    assert_eq!(a7.samples, 3);
    assert_eq!(a7.load_rate_sum, 60.0);
    assert_eq!((a7.load_rate_min, a7.load_rate_max), (10.0, 30.0));
    assert_eq!((a7.mileage_min, a7.mileage_max), (90.0, 100.0));
    assert_eq!(rows[1].aggregate.samples, 1);
    assert_eq!(rows[2].aggregate.load_rate_sum, 70.0);
    assert_eq!(pending.take_all().len(), 0);
}
