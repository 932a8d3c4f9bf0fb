//! Where samples came from in the journal, and what a row answers for.
//!
//! Every message the service accepts is first appended to its journal and gets a
//! sequence number there. A [`JournalMark`] travels with the sample; a row (a minute, or a
//! stored rejection) gathers its samples' marks into a [`JournalTally`]: the highest
//! sequence it contains, which a replay compares with to know what the row already
//! counts, and how many records of each journal segment it answers for, which the
//! journal counts down when the row is committed so that a segment can be removed.
//! Plain numbers here; the journal itself lives in the actors crate.

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
/// Holds the first segment inline: a minute's samples nearly always come from one
/// segment (tens of megabytes of messages), so the common tally costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalTally {
    /// The highest sequence among the records; 0 when there are none.
    pub max_seq: u64,
    /// (segment, records) for the first segment seen; records 0 when there are none.
    first: (u32, u32),
    /// Further segments, in the rare row that spans a segment boundary.
    more: Vec<(u32, u32)>,
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
        if self.first.1 == 0 || self.first.0 == segment {
            self.first = (segment, self.first.1.saturating_add(records));
        } else if let Some(entry) = self.more.iter_mut().find(|(held, _)| *held == segment) {
            entry.1 = entry.1.saturating_add(records);
        } else {
            self.more.push((segment, records));
        }
    }

    /// (segment, records) pairs; empty without a journal.
    pub fn segments(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        (self.first.1 > 0).then_some(self.first).into_iter().chain(self.more.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.first.1 == 0
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
        assert_eq!(tally.more.capacity(), 0);
    }
}
