//! Per-minute accumulation for one machine.
//!
//! A [`MinuteAggregate`] holds what merges exactly: count, sum, minima and maxima. So a
//! minute may be written in parts (a late message after the minute was closed, two
//! instances behind a shared subscription) and the database upsert combines the parts
//! into the same row one pass over all samples would give.

use crate::offsets::MinuteOffsets;
use crate::provenance::JournalTally;
use crate::seen::{chunk_offsets, chunks_contain, encode_chunk};
use crate::time::{duration_micros, Minute, Timestamp};
use crate::validate::Sample;
use crate::written::{ColdRef, ColdTail, NeedsCold, WrittenMinutes};
use std::time::Duration;

/// Count, sum, minimum and maximum of one machine's samples in one minute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteAggregate {
    pub samples: u32,
    pub load_rate_sum: f64,
    pub load_rate_min: f64,
    pub load_rate_max: f64,
    pub mileage_min: f64,
    pub mileage_max: f64,
}

impl MinuteAggregate {
    pub fn of(sample: &Sample) -> Self {
        MinuteAggregate {
            samples: 1,
            load_rate_sum: sample.load_rate,
            load_rate_min: sample.load_rate,
            load_rate_max: sample.load_rate,
            mileage_min: sample.mileage,
            mileage_max: sample.mileage,
        }
    }

    pub fn add(&mut self, sample: &Sample) {
        self.merge(&MinuteAggregate::of(sample));
    }

    /// Combines two parts of the same minute; associative and commutative (the sum up to
    /// floating-point rounding).
    pub fn merge(&mut self, other: &MinuteAggregate) {
        self.samples = self.samples.saturating_add(other.samples);
        self.load_rate_sum += other.load_rate_sum;
        self.load_rate_min = self.load_rate_min.min(other.load_rate_min);
        self.load_rate_max = self.load_rate_max.max(other.load_rate_max);
        self.mileage_min = self.mileage_min.min(other.mileage_min);
        self.mileage_max = self.mileage_max.max(other.mileage_max);
    }

    pub fn load_rate_avg(&self) -> f64 {
        self.load_rate_sum / f64::from(self.samples.max(1))
    }
}

/// What happened to a sample offered to [`OpenMinutes::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    Added,
    /// Same timestamp as a sample held in an open minute: a QoS 1 redelivery, dropped.
    /// Its journal record is finished with that minute.
    Duplicate,
    /// Same timestamp as a sample of a minute already handed to the writer (a resend
    /// after its minute was written), dropped. Nothing holds its journal record: the
    /// caller finishes it.
    AlreadyWritten,
    /// Not taken: its minute may be in a cold run of the written index. Load the runs
    /// ([`OpenMinutes::warm`]) and offer it again.
    NeedsCold,
}

#[derive(Debug)]
struct OpenMinute {
    aggregate: MinuteAggregate,
    /// The offsets (µs from the minute's start) of the samples accepted into this
    /// minute, for duplicate detection. A sorted array rather than a hash set: a minute
    /// holds tens of samples that arrive mostly in order (so an insert is an append after
    /// one comparison). Offsets rather than timestamps, in the coarsest unit the stamps
    /// allow ([`MinuteOffsets`]): a full minute at 1/s stamped in ms holds 128 bytes (256
    /// as `u32`s, 512 as timestamps), and every machine holds one at each minute's close.
    seen: MinuteOffsets,
    /// The journal records this minute answers for, duplicates included.
    tally: JournalTally,
    /// When the minute was reopened (parts of it were written already): those parts'
    /// offsets, decoded and sorted. Why: a machine bursting thousands of late samples
    /// into a written minute would otherwise walk the index's encoded chunk for every
    /// one of them, a cost growing with the minute (docs/benchmarks.md, session 8).
    /// `None` for a minute seen for the first time.
    written: Option<WrittenOffsets>,
}

/// A reopened minute's written offsets, sorted, behind one thin pointer: 8 bytes in every
/// open minute instead of a boxed slice's 16 keeps an open minute's entry (120 bytes
/// before this field) in mimalloc's 128-byte size class instead of its 160-byte one.
#[derive(Debug)]
struct WrittenOffsets(Box<Box<[u32]>>);

impl WrittenOffsets {
    fn of(offsets: Box<[u32]>) -> Option<Self> {
        (!offsets.is_empty()).then(|| WrittenOffsets(Box::new(offsets)))
    }

    fn contains(&self, offset: u32) -> bool {
        self.0.binary_search(&offset).is_ok()
    }

    /// The chunk of these offsets and `offsets` (sorted, none of them written:
    /// [`OpenMinute::add`] refused those).
    fn chunk_with(&self, offsets: &[u32]) -> Vec<u8> {
        let mut written = self.0.iter().copied().peekable();
        let mut whole = Vec::with_capacity(self.0.len() + offsets.len());
        for &offset in offsets {
            while let Some(before) = written.next_if(|&held| held < offset) {
                whole.push(before);
            }
            whole.push(offset);
        }
        whole.extend(written);
        let mut chunk = Vec::new();
        encode_chunk(&whole, &mut chunk);
        chunk
    }
}

impl OpenMinute {
    fn of(sample: &Sample, offset: u32, written: Option<WrittenOffsets>) -> Self {
        OpenMinute {
            aggregate: MinuteAggregate::of(sample),
            seen: MinuteOffsets::of(offset),
            tally: JournalTally::of(sample.mark),
            written,
        }
    }

    /// Adds the sample unless its timestamp is already held, here or in a written part.
    fn add(&mut self, sample: &Sample, offset: u32) -> Accepted {
        if self.written.as_ref().is_some_and(|written| written.contains(offset)) {
            return Accepted::AlreadyWritten;
        }
        // A duplicate's record is finished when this minute is committed, like a sample's.
        self.tally.note(sample.mark);
        if !self.seen.insert(offset) {
            return Accepted::Duplicate;
        }
        self.aggregate.add(sample);
        Accepted::Added
    }
}

/// A minute taken out of [`OpenMinutes`]: closed, or partial at shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct MinutePart {
    pub minute: Minute,
    pub aggregate: MinuteAggregate,
    pub tally: JournalTally,
    /// The part's sample timestamps, encoded ([`crate::seen`]): stored with the row.
    pub seen: Vec<u8>,
    /// No part of this minute was written before, as far as this machine's written index
    /// knows: see [`crate::ClosedMinute::known_new`].
    pub known_new: bool,
}

impl MinutePart {
    fn of(minute: Minute, open: OpenMinute) -> Self {
        let mut seen = Vec::new();
        encode_chunk(&open.seen.to_vec(), &mut seen);
        MinutePart { minute, aggregate: open.aggregate, tally: open.tally, seen, known_new: false }
    }
}

/// The minutes of one machine that are still open, oldest first, and the index of the
/// ones it handed over within `max_lateness`.
///
/// A sorted `Vec`, not a map: a machine has one or two open minutes (the current one,
/// and the previous one during its grace period), so a linear scan from the newest end
/// is the fastest lookup, and an empty or one-entry `Vec` is what keeps the memory per
/// machine small (a `BTreeMap` allocates a whole 11-slot leaf for its first entry).
#[derive(Debug, Default)]
pub struct OpenMinutes {
    minutes: Vec<(Minute, OpenMinute)>,
    /// What the closed minutes counted, so a resend after its minute was written is
    /// still a duplicate ([`crate::seen`]).
    written: WrittenMinutes,
}

impl OpenMinutes {
    pub fn accept(&mut self, sample: &Sample) -> Accepted {
        let minute = sample.ts.minute();
        // Newest first: samples arrive mostly in time order.
        let offset = minute.offset_of(sample.ts);
        let index = match self.minutes.iter().rposition(|(held, _)| *held <= minute) {
            Some(index) if self.minutes[index].0 == minute => {
                return self.minutes[index].1.add(sample, offset);
            }
            Some(index) => index + 1,
            None => 0,
        };
        // One varint read while samples are newer than every written minute; one walk
        // of the minute's chunk when it reopens, whose offsets the open minute keeps.
        let written = match self.written.find(minute) {
            Err(NeedsCold) => return Accepted::NeedsCold,
            Ok(None) => None,
            Ok(Some(chunks)) if chunks_contain(chunks, offset) => {
                return Accepted::AlreadyWritten;
            }
            Ok(Some(chunks)) => {
                chunk_offsets(chunks).ok().and_then(|offsets| WrittenOffsets::of(offsets.into()))
            }
        };
        // Grow one entry at a time: `Vec`'s doubling would start at four entries for what
        // is one minute most of the time.
        self.minutes.reserve_exact(1);
        self.minutes.insert(index, (minute, OpenMinute::of(sample, offset, written)));
        Accepted::Added
    }

    /// When the oldest open minute is due: its end + `grace`.
    pub fn earliest_due(&self, grace: Duration) -> Option<Timestamp> {
        self.minutes.first().map(|(minute, _)| minute.end().saturating_add_micros(duration_micros(grace)))
    }

    /// Removes and returns the minutes whose end + `grace` is at or before `now`; they
    /// join the written index, which forgets the minutes before `remember_since`.
    pub fn take_closed(
        &mut self,
        now: Timestamp,
        grace: Duration,
        remember_since: Minute,
    ) -> Vec<MinutePart> {
        let grace = duration_micros(grace);
        let due =
            self.minutes.partition_point(|(minute, _)| minute.end().saturating_add_micros(grace) <= now);
        let mut closed = Vec::with_capacity(due);
        for (minute, mut open) in self.minutes.drain(..due) {
            // Reopened: the index gets the union of its decoded written offsets and this
            // part's, so the held chunk is not decoded again (a machine bursting late
            // samples into one minute closes such a part again and again).
            let whole = open.written.take().map(|written| written.chunk_with(&open.seen.to_vec()));
            let mut part = MinutePart::of(minute, open);
            match whole {
                Some(whole) => {
                    part.known_new = false;
                    self.written.replace(minute, &whole);
                }
                None => {
                    part.known_new = self.written.has_minute(minute) == Ok(false);
                    self.written.remember(minute, &part.seen);
                }
            }
            closed.push(part);
        }
        if self.minutes.is_empty() {
            // A machine that went quiet keeps no allocation.
            self.minutes = Vec::new();
        } else if due > 0 {
            // The minute that opened during the closed one's grace stays: give back the
            // slot the closed one held. Kept, it was 128 bytes a machine from the first
            // minute boundary on (12.5 MB at 100,000 machines), for a second minute each
            // machine holds only for its grace period. Moved to a new allocation, not
            // `shrink_to_fit`: mimalloc's `realloc` leaves a block shrunk to half its size
            // or more where it is, at its old size (docs/benchmarks.md, session 16).
            let mut kept = Vec::with_capacity(self.minutes.len());
            kept.append(&mut self.minutes);
            self.minutes = kept;
        }
        self.written.forget_before(remember_since);
        closed
    }

    /// Adds a minute written before this start (read back from the database).
    pub fn remember_written(&mut self, minute: Minute, seen: &[u8]) {
        self.written.remember(minute, seen);
        // Samples may have reopened this minute before the start-up read came back. An
        // open minute is never in a cold run (see `cold_tail`), so this finds it.
        if let Some((_, open)) = self.minutes.iter_mut().find(|(held, _)| *held == minute) {
            open.written = self.written.offsets_of(minute).ok().and_then(WrittenOffsets::of);
        }
    }

    /// The written minutes before the newest `keep_minutes`, to be moved out of memory,
    /// when they hold at least `min_bytes` ([`WrittenMinutes::cold_tail`]); never an open
    /// minute's, so that closing one never writes into a cold run.
    pub fn cold_tail(&self, keep_minutes: u32, min_bytes: usize) -> Option<ColdTail> {
        let newest = self.written.newest()?;
        let mut keep_since = newest.index().saturating_sub(i64::from(keep_minutes.max(1)) - 1);
        if let Some((oldest_open, _)) = self.minutes.first() {
            keep_since = keep_since.min(oldest_open.index());
        }
        self.written.cold_tail(Minute::from_index(keep_since), min_bytes)
    }

    /// Notes where a tail from [`OpenMinutes::cold_tail`] was stored: its minutes leave
    /// memory.
    pub fn tail_stored(&mut self, tail: &ColdTail, at: ColdRef) {
        self.written.tail_stored(tail, at);
    }

    /// Loads every cold run back ([`WrittenMinutes::warm`]); returns how many were lost.
    pub fn warm(&mut self, since: Minute, load: impl FnMut(ColdRef) -> Option<Vec<u8>>) -> usize {
        self.written.warm(since, load)
    }

    /// The written index (for memory figures and tests).
    pub fn written(&self) -> &WrittenMinutes {
        &self.written
    }

    /// Removes and returns every open minute (shutdown: partial minutes merge later).
    pub fn take_all(&mut self) -> Vec<MinutePart> {
        std::mem::take(&mut self.minutes)
            .into_iter()
            .map(|(minute, open)| MinutePart {
                known_new: self.written.has_minute(minute) == Ok(false),
                ..MinutePart::of(minute, open)
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.minutes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::JournalMark;

    fn sample(seconds: i64, load_rate: f64, mileage: f64) -> Sample {
        Sample {
            ts: Timestamp::from_micros(seconds * 1_000_000),
            load_rate,
            mileage,
            mark: JournalMark::NONE,
        }
    }

    #[test]
    fn accumulates_and_detects_duplicates() {
        let mut open = OpenMinutes::default();
        assert_eq!(open.accept(&sample(60, 10.0, 5.0)), Accepted::Added);
        assert_eq!(open.accept(&sample(90, 30.0, 7.0)), Accepted::Added);
        assert_eq!(open.accept(&sample(90, 99.0, 9.0)), Accepted::Duplicate);
        assert_eq!(open.accept(&sample(125, 50.0, 8.0)), Accepted::Added);
        let closed = open.take_closed(
            Timestamp::from_micros(125_000_000),
            Duration::from_secs(5),
            Minute::from_index(0),
        );
        assert_eq!(closed.len(), 1);
        let MinutePart { minute, aggregate, .. } = closed[0].clone();
        assert_eq!(minute.index(), 1);
        assert_eq!(aggregate.samples, 2);
        assert_eq!(aggregate.load_rate_avg(), 20.0);
        assert_eq!((aggregate.mileage_min, aggregate.mileage_max), (5.0, 7.0));
        assert_eq!(open.len(), 1);
    }

    #[test]
    fn a_minute_closes_exactly_at_end_plus_grace() {
        let mut open = OpenMinutes::default();
        open.accept(&sample(0, 1.0, 1.0));
        let grace = Duration::from_secs(5);
        let just_before = Timestamp::from_micros(65_000_000 - 1);
        assert!(open.take_closed(just_before, grace, Minute::from_index(0)).is_empty());
        assert_eq!(
            open.take_closed(Timestamp::from_micros(65_000_000), grace, Minute::from_index(0)).len(),
            1
        );
        assert!(open.is_empty());
    }

    #[test]
    fn the_next_minute_keeps_no_room_for_the_one_that_closed() {
        let mut open = OpenMinutes::default();
        let grace = Duration::from_secs(5);
        for seconds in [10, 50, 61] {
            open.accept(&sample(seconds, 1.0, 1.0));
        }
        assert_eq!(open.minutes.capacity(), 2, "both minutes open during the first one's grace");
        let held_at = open.minutes.as_ptr();
        let closed = open.take_closed(Timestamp::from_micros(65_000_000), grace, Minute::from_index(0));
        assert_eq!(closed.len(), 1);
        assert_eq!((open.len(), open.minutes.capacity()), (1, 1));
        // A new allocation: shrunk in place, the old one would keep its size class.
        assert_ne!(open.minutes.as_ptr(), held_at, "the remaining minute moved out of the two-slot block");
    }

    #[test]
    fn a_resend_after_its_minute_closed_is_already_written_until_forgotten() {
        let mut open = OpenMinutes::default();
        let grace = Duration::from_secs(5);
        open.accept(&sample(61, 1.0, 1.0));
        open.accept(&sample(62, 2.0, 2.0));
        let closed = open.take_closed(Timestamp::from_micros(130_000_000), grace, Minute::from_index(0));
        assert_eq!(closed.len(), 1);
        assert_eq!(crate::seen::chunk_offsets(&closed[0].seen), Ok(vec![1_000_000, 2_000_000]));
        assert!(closed[0].known_new, "its first part: no row yet");
        // The resend, and a late sample of the same minute that is new.
        assert_eq!(open.accept(&sample(61, 1.0, 1.0)), Accepted::AlreadyWritten);
        assert_eq!(open.accept(&sample(63, 3.0, 3.0)), Accepted::Added);
        assert_eq!(open.accept(&sample(63, 3.0, 3.0)), Accepted::Duplicate);
        // The late part joins the index when it closes; both parts' samples are known.
        let late = open.take_closed(Timestamp::from_micros(130_000_000), grace, Minute::from_index(0));
        assert_eq!(late.len(), 1);
        assert!(!late[0].known_new, "a later part merges into the row the first one wrote");
        assert_eq!(open.accept(&sample(63, 3.0, 3.0)), Accepted::AlreadyWritten);
        assert_eq!(open.accept(&sample(62, 3.0, 3.0)), Accepted::AlreadyWritten);
        // Forgotten once before `remember_since`: then it is a new part again.
        open.take_closed(Timestamp::from_micros(130_000_000), grace, Minute::from_index(2));
        assert_eq!(open.accept(&sample(61, 1.0, 1.0)), Accepted::Added);
        // Forgotten, the index cannot tell: the part counts as new (a hint only: the
        // writer's `COPY` fails on the existing row and it upserts instead).
        assert!(open.take_all().iter().all(|part| part.known_new));
    }

    #[test]
    fn a_reopened_minute_knows_its_written_parts_and_a_start_up_read_arriving_late() {
        let mut open = OpenMinutes::default();
        let (grace, now) = (Duration::from_secs(5), Timestamp::from_micros(130_000_000));
        for second in 60..90 {
            assert_eq!(open.accept(&sample(second, 1.0, 1.0)), Accepted::Added);
        }
        assert_eq!(open.take_closed(now, grace, Minute::from_index(0)).len(), 1);
        // Reopened: the written samples are told apart from the open minute's own copy.
        assert_eq!(open.accept(&sample(119, 2.0, 2.0)), Accepted::Added);
        for second in 60..90 {
            assert_eq!(open.accept(&sample(second, 1.0, 1.0)), Accepted::AlreadyWritten, "second {second}");
        }
        assert_eq!(open.accept(&sample(119, 2.0, 2.0)), Accepted::Duplicate);
        // The start-up read comes back after the minute reopened: its samples count too.
        let read_back = crate::seen::chunk_of(Minute::from_index(1), &[100_000_000]);
        open.remember_written(Minute::from_index(1), &read_back);
        assert_eq!(open.accept(&sample(100, 3.0, 3.0)), Accepted::AlreadyWritten);
        assert_eq!(open.accept(&sample(101, 3.0, 3.0)), Accepted::Added);
        // The late part holds its own samples only.
        let late = open.take_closed(now, grace, Minute::from_index(0));
        assert_eq!(late[0].aggregate.samples, 2);
        assert_eq!(crate::seen::chunk_offsets(&late[0].seen), Ok(vec![41_000_000, 59_000_000]));
    }

    proptest::proptest! {
        /// Closing a reopened minute merges its written offsets with the part's own; the
        /// index must be what remembering every closed part in turn gives, and every
        /// sample offered is counted once (added, or refused as a repeat).
        #[test]
        fn closing_reopened_minutes_indexes_every_part_once(
            steps in proptest::collection::vec((0i64..3 * 60_000_000, proptest::bool::ANY), 1..300),
        ) {
            let (grace, mut now) = (Duration::from_secs(5), 0i64);
            let mut open = OpenMinutes::default();
            let mut model = WrittenMinutes::default();
            let mut distinct = std::collections::BTreeSet::new();
            let mut counted = 0u64;
            for (micros, close) in steps {
                let offered = Sample { ts: Timestamp::from_micros(micros), ..sample(0, 1.0, 1.0) };
                match open.accept(&offered) {
                    Accepted::Added => counted += 1,
                    Accepted::Duplicate | Accepted::AlreadyWritten => {
                        proptest::prop_assert!(distinct.contains(&micros), "refused a new sample");
                    }
                    Accepted::NeedsCold => proptest::prop_assert!(false, "no cold run was made"),
                }
                distinct.insert(micros);
                if close {
                    // The clock only moves on, past every sample so far: every open
                    // minute closes, and the next sample in one of them reopens it.
                    now = now.max(micros) + 1;
                    let forget = Minute::from_index(-1);
                    for part in open.take_closed(Timestamp::from_micros(now + 65_000_000), grace, forget) {
                        proptest::prop_assert_eq!(part.known_new, model.has_minute(part.minute) == Ok(false));
                        model.remember(part.minute, &part.seen);
                    }
                    proptest::prop_assert_eq!(open.written(), &model);
                }
            }
            proptest::prop_assert_eq!(counted, distinct.len() as u64);
        }
    }

    proptest::proptest! {
        /// Written minutes moved to cold runs and loaded back whenever a sample reaches
        /// them: every sample offered is still counted exactly once.
        #[test]
        fn cold_runs_count_every_sample_once(
            steps in proptest::collection::vec((0i64..4 * 60_000_000, 0u8..3), 1..300),
        ) {
            let (grace, mut now) = (Duration::from_secs(5), 0i64);
            let mut open = OpenMinutes::default();
            let mut store: Vec<Vec<u8>> = Vec::new();
            let (mut distinct, mut counted) = (std::collections::BTreeSet::new(), 0u64);
            let since = Minute::from_index(-1);
            for (micros, then) in steps {
                let offered = Sample { ts: Timestamp::from_micros(micros), ..sample(0, 1.0, 1.0) };
                let mut accepted = open.accept(&offered);
                if accepted == Accepted::NeedsCold {
                    proptest::prop_assert_eq!(open.warm(since, |at| store.get(at.segment as usize).cloned()), 0);
                    accepted = open.accept(&offered);
                }
                match accepted {
                    Accepted::Added => counted += 1,
                    Accepted::Duplicate | Accepted::AlreadyWritten => {
                        proptest::prop_assert!(distinct.contains(&micros), "refused a new sample");
                    }
                    Accepted::NeedsCold => proptest::prop_assert!(false, "cold after a warm-up"),
                }
                distinct.insert(micros);
                if then > 0 {
                    now = now.max(micros) + 1;
                    open.take_closed(Timestamp::from_micros(now + 65_000_000), grace, since);
                }
                if then == 2 {
                    if let Some(tail) = open.cold_tail(1, 1) {
                        let at = ColdRef { segment: store.len() as u32, offset: 0, len: tail.bytes.len() as u32 };
                        store.push(tail.bytes.clone());
                        open.tail_stored(&tail, at);
                    }
                }
            }
            proptest::prop_assert_eq!(counted, distinct.len() as u64);
        }
    }

    #[test]
    fn an_offset_outside_its_minute_is_held_by_none() {
        let minute = Minute::from_index(2);
        assert_eq!(minute.offset_of(Timestamp::from_micros(120_000_001)), 1);
        assert_eq!(minute.offset_of(Timestamp::from_micros(119_999_999)), u32::MAX);
        assert_eq!(minute.offset_of(Timestamp::from_micros(i64::MAX)), u32::MAX);
    }
}
