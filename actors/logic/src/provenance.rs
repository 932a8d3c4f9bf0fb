//! Where samples came from in the journal, and what a row answers for.
//!
//! Every message the service accepts is first appended to its journal and gets a
//! sequence number there. A [`JournalMark`] travels with the sample; a row (a minute, or a
//! stored rejection) gathers its samples' marks into a [`JournalTally`]: the highest
//! sequence it contains, which a replay compares with to know what the row already
//! counts, and how many records of each journal segment it answers for, which the
//! journal counts down when the row is committed so that a segment can be removed.
//! Plain numbers here; the journal itself lives in the actors crate.

use crate::seen::{get_varint, put_varint, unzigzag, zigzag};

/// A message's place in the journal. `NONE` when the service runs without a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct JournalMark {
    /// The record's sequence number: increasing in arrival order, never 0.
    pub seq: u64,
    /// The segment file holding the record.
    pub segment: u32,
}

impl JournalMark {
    pub const NONE: JournalMark = JournalMark { seq: 0, segment: 0 };

    pub fn is_none(&self) -> bool {
        self.seq == 0
    }
}

/// The journal records one row answers for.
///
/// Holds the segment being noted inline, and the earlier ones as varints. Why: at
/// 100,000 messages/s a 64 MiB segment fills every 3.5 s, so a live minute's samples span
/// about 18 segments. As `(u32, u32)` pairs in a `Vec` they grew to 128 bytes in every
/// open minute, through blocks of 32 and 64 that, freed, stayed resident beside other
/// machines' memory: in process a minute boundary held 940 bytes a machine with the
/// journal's marks, 579 with these varints, at most 64 bytes a minute
/// (`cargo bench --bench memory`, `close_wave_ms`; docs/benchmarks.md, session 16). A
/// minute's records arrive in journal order, so noting one touches only the inline
/// segment, or moves it into the varints when the journal has moved on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalTally {
    /// The highest sequence among the records; 0 when there are none.
    pub max_seq: u64,
    /// (segment, records) for the segment noted last; records 0 when there are none.
    current: (u32, u32),
    /// The other segments, in the order they were left: pairs of varints (the segment's
    /// zigzag difference from the pair before, 0 before the first; its records).
    earlier: Vec<u8>,
}

impl JournalTally {
    pub fn of(mark: JournalMark) -> Self {
        let mut tally = JournalTally::default();
        tally.note(mark);
        tally
    }

    /// Counts one more record (a sample added, or a duplicate dropped: either way the row
    /// is what finishes it).
    pub fn note(&mut self, mark: JournalMark) {
        if mark.is_none() {
            return;
        }
        self.max_seq = self.max_seq.max(mark.seq);
        self.add_records(mark.segment, 1);
    }

    /// Adds another row's records (two parts of one minute merged).
    pub fn merge(&mut self, other: &JournalTally) {
        self.max_seq = self.max_seq.max(other.max_seq);
        for (segment, records) in other.segments() {
            self.add_records(segment, records);
        }
    }

    fn add_records(&mut self, segment: u32, records: u32) {
        if records == 0 {
            return;
        }
        if self.current.1 == 0 || self.current.0 == segment {
            self.current = (segment, self.current.1.saturating_add(records));
            return;
        }
        let (mut found, mut last) = (false, 0);
        for (held, _) in EarlierPairs::new(&self.earlier) {
            found |= held == segment;
            last = held;
        }
        if found {
            // A part merged out of journal order: rare, so rebuilt whole.
            let mut rebuilt: Vec<(u32, u32)> = EarlierPairs::new(&self.earlier).collect();
            for pair in &mut rebuilt {
                if pair.0 == segment {
                    pair.1 = pair.1.saturating_add(records);
                }
            }
            self.earlier.clear();
            let mut previous = 0;
            for (held, count) in rebuilt {
                push_pair(&mut self.earlier, &mut previous, held, count);
            }
            return;
        }
        let (left, count) = self.current;
        push_pair(&mut self.earlier, &mut last, left, count);
        self.current = (segment, records);
    }

    /// (segment, records) pairs; empty without a journal.
    pub fn segments(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        EarlierPairs::new(&self.earlier).chain((self.current.1 > 0).then_some(self.current))
    }

    pub fn is_empty(&self) -> bool {
        self.current.1 == 0
    }
}

fn push_pair(out: &mut Vec<u8>, previous: &mut u32, segment: u32, records: u32) {
    put_varint(out, zigzag(i64::from(segment) - i64::from(*previous)));
    put_varint(out, u64::from(records));
    *previous = segment;
}

/// Decodes [`JournalTally::earlier`]. Only this module writes it, so a pair that does
/// not decode ends the walk (it cannot happen).
struct EarlierPairs<'a> {
    bytes: &'a [u8],
    at: usize,
    previous: u32,
}

impl<'a> EarlierPairs<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        EarlierPairs { bytes, at: 0, previous: 0 }
    }
}

impl Iterator for EarlierPairs<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        let (difference, at) = get_varint(self.bytes, self.at)?;
        let (records, at) = get_varint(self.bytes, at)?;
        self.at = at;
        let segment = i64::from(self.previous) + unzigzag(difference);
        self.previous = u32::try_from(segment).ok()?;
        Some((self.previous, u32::try_from(records).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(seq: u64, segment: u32) -> JournalMark {
        JournalMark { seq, segment }
    }

    #[test]
    fn a_tally_counts_records_per_segment_and_keeps_the_highest_sequence() {
        let mut tally = JournalTally::of(mark(5, 1));
        tally.note(mark(9, 1));
        tally.note(mark(7, 2));
        tally.note(JournalMark::NONE);
        assert_eq!(tally.max_seq, 9);
        assert_eq!(tally.segments().collect::<Vec<_>>(), vec![(1, 2), (2, 1)]);

        let mut other = JournalTally::of(mark(12, 2));
        other.note(mark(13, 3));
        tally.merge(&other);
        assert_eq!(tally.max_seq, 13);
        assert_eq!(tally.segments().collect::<Vec<_>>(), vec![(1, 2), (2, 2), (3, 1)]);
    }

    #[test]
    fn without_a_journal_a_tally_stays_empty() {
        let mut tally = JournalTally::default();
        tally.note(JournalMark::NONE);
        tally.merge(&JournalTally::default());
        assert!(tally.is_empty());
        assert_eq!((tally.max_seq, tally.segments().count()), (0, 0));
        // One-segment tallies allocate nothing.
        let tally = JournalTally::of(mark(1, 4));
        assert_eq!(tally.earlier.capacity(), 0);
    }

    #[test]
    fn a_live_minute_across_seventeen_segments_holds_them_in_64_bytes() {
        // 60 samples at 1/s while the journal starts a segment every 3.5 s.
        let mut tally = JournalTally::default();
        for second in 0..60_u32 {
            tally.note(mark(u64::from(second) * 100_000 + 7, 1_000 + second * 2 / 7));
        }
        assert_eq!(tally.segments().count(), 17);
        assert_eq!(tally.segments().map(|(_, records)| records).sum::<u32>(), 60);
        assert!(tally.earlier.capacity() <= 64, "{} bytes", tally.earlier.capacity());
    }

    proptest::proptest! {
        /// Whatever the order of marks and merges, a tally counts what a map of segment
        /// to records counts.
        #[test]
        fn counts_as_a_map_does(
            marks in proptest::collection::vec((0..40_u32, 1..4_u64), 0..120),
            split in 0..120_usize,
        ) {
            let mut model = std::collections::BTreeMap::new();
            let (mut first, mut second) = (JournalTally::default(), JournalTally::default());
            for (n, &(segment, seq)) in marks.iter().enumerate() {
                // Segments far apart too: the varint differences go both ways.
                let segment = segment * 1_000_003 % 4_000_000_000;
                *model.entry(segment).or_insert(0_u32) += 1;
                let tally = if n < split { &mut first } else { &mut second };
                tally.note(mark(seq, segment));
            }
            first.merge(&second);
            let mut counted = std::collections::BTreeMap::new();
            for (segment, records) in first.segments() {
                proptest::prop_assert!(counted.insert(segment, records).is_none(), "segment {} twice", segment);
            }
            proptest::prop_assert_eq!(counted, model);
        }
    }
}
