//! What a replay must not count again.
//!
//! Built at start-up from the intents the journal holds and the batch ids PostgreSQL's
//! ledger says were committed: for each committed minute row, the highest journal
//! sequence it contains. Per machine and minute, samples reach the aggregator in
//! sequence order and leave it in parts that the writer commits in order, so a committed
//! row with highest sequence `h` contains every sample of that machine and minute with a
//! sequence up to `h`, and none above it. A replayed sample is therefore skipped exactly
//! when its sequence is at most its row's `h`; a rejected message, when its sequence is
//! among a committed rejections batch's.

use super::record::{MinutesIntent, RejectionsIntent};
use rustc_hash::{FxHashMap, FxHashSet};

#[derive(Debug, Default)]
pub struct ReplayFilter {
    /// Messages with a sequence above this were not replayed: the filter does not apply.
    last_seq: u64,
    minutes: FxHashMap<(String, i64), u64>,
    rejections: FxHashSet<u64>,
}

impl ReplayFilter {
    pub fn new(
        last_seq: u64,
        minutes: &[MinutesIntent],
        rejections: &[RejectionsIntent],
        committed: &FxHashSet<String>,
    ) -> Self {
        let mut filter = ReplayFilter { last_seq, ..ReplayFilter::default() };
        for intent in minutes.iter().filter(|intent| committed.contains(&intent.batch)) {
            for (machine, minute, max_seq) in &intent.rows {
                let held = filter.minutes.entry((machine.clone(), *minute)).or_default();
                *held = (*held).max(*max_seq);
            }
        }
        for intent in rejections.iter().filter(|intent| committed.contains(&intent.batch)) {
            filter.rejections.extend(intent.seqs.iter().copied());
        }
        filter
    }

    /// Whether a replayed sample (`seq`) of `machine` in `minute` is already in a
    /// committed row.
    pub fn sample_committed(&self, machine: &str, minute: i64, seq: u64) -> bool {
        if !self.covers(seq) {
            return false;
        }
        // A lookup key without allocating would need a borrowed tuple; replays are rare
        // and short, so the copy is fine.
        self.minutes.get(&(machine.to_owned(), minute)).is_some_and(|&committed| seq <= committed)
    }

    /// Whether a replayed rejected message (`seq`) is already stored.
    pub fn rejection_committed(&self, seq: u64) -> bool {
        self.covers(seq) && self.rejections.contains(&seq)
    }

    /// Whether `seq` is a replayed message's (a new message's is above every replayed
    /// one; 0 is "no journal").
    pub fn covers(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.last_seq
    }

    /// Committed rows the filter knows about (for the start-up log).
    pub fn committed_rows(&self) -> usize {
        self.minutes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_committed_batches_filter_and_only_up_to_their_sequence() {
        let minutes = vec![
            MinutesIntent { batch: "a".into(), rows: vec![("m1".into(), 10, 5), ("m2".into(), 10, 7)] },
            MinutesIntent { batch: "b".into(), rows: vec![("m1".into(), 10, 9)] },
            MinutesIntent { batch: "lost".into(), rows: vec![("m3".into(), 10, 8)] },
        ];
        let rejections = vec![
            RejectionsIntent { batch: "r".into(), seqs: vec![4, 6] },
            RejectionsIntent { batch: "r-lost".into(), seqs: vec![11] },
        ];
        let committed: FxHashSet<String> = ["a", "b", "r"].iter().map(|id| (*id).to_owned()).collect();
        let filter = ReplayFilter::new(12, &minutes, &rejections, &committed);
        // m1's minute 10 was committed twice; the later part counts up to 9.
        assert!(filter.sample_committed("m1", 10, 9));
        assert!(!filter.sample_committed("m1", 10, 10));
        assert!(filter.sample_committed("m2", 10, 7) && !filter.sample_committed("m2", 10, 8));
        // Another minute of the same machine, and a batch whose commit never happened.
        assert!(!filter.sample_committed("m1", 11, 1));
        assert!(!filter.sample_committed("m3", 10, 8));
        assert!(filter.rejection_committed(4) && !filter.rejection_committed(5));
        assert!(!filter.rejection_committed(11));
        // Beyond the replay, nothing is filtered; sequence 0 is "no journal".
        let filter = ReplayFilter::new(8, &minutes, &rejections, &committed);
        assert!(!filter.sample_committed("m1", 10, 9));
        assert!(!filter.sample_committed("m1", 10, 0));
        assert!(filter.covers(8) && !filter.covers(9) && !filter.covers(0));
    }
}
