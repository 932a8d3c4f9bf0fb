//! The close timers of one shard's aggregators: when each wants to look at its open
//! minutes next. One heap per shard, swept by the shard every [`TIMER_RESOLUTION`],
//! instead of an actix timer per aggregator (about 210 bytes each: 100,000 active
//! machines had 21 MB of them).
//!
//! A timer is kept in the slot of [`TIMER_RESOLUTION`] its instant falls in (rounded up,
//! so it never fires early), and the timers of one slot fire in the order of their
//! aggregators' numbers. Why: at a minute boundary every machine's minute is due at the
//! same wall-clock moment, and the instants computed for it differ only by the
//! microseconds between two clock reads, which put the close wave in a random order.
//! The memory a closing minute frees was allocated in the order the machines' samples
//! arrive, which is close to the order they were numbered in (the order they first
//! appeared); freed in a random order, the allocator's pages empty only at the end of
//! the wave and every close's new allocations land on fresh pages meanwhile. At 1
//! sample/s that was 216 bytes a machine at the top of the wave stamped in ms, 507 in
//! µs; in numbering order 14 and 44 (`cargo bench --bench memory`, `close_wave_*`;
//! docs/benchmarks.md, session 16).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How often the shard looks for due close timers: the most a close can be late.
pub(super) const TIMER_RESOLUTION: Duration = Duration::from_millis(5);

/// When each aggregator of a shard wants to look at its open minutes next: a heap of
/// (slot, aggregator number). Shared by reference count between the shard and its
/// aggregators, which all run on the shard's thread (hence `Rc`, not `Arc`); a borrow
/// never outlives one push or one sweep, so they never overlap.
#[derive(Debug)]
pub(super) struct CloseTimers {
    /// Slot 0 starts here; slot `n` at `origin + n × TIMER_RESOLUTION`.
    origin: Instant,
    due: RefCell<BinaryHeap<Reverse<(u64, u32)>>>,
}

impl CloseTimers {
    /// Empty timers whose slots count from `origin`.
    pub(super) fn starting_at(origin: Instant) -> Self {
        CloseTimers { origin, due: RefCell::default() }
    }

    /// When slot 0 starts: the shard's start, from which its schedules count too.
    pub(super) fn origin(&self) -> Instant {
        self.origin
    }

    /// Asks for aggregator `index` to be sent [`CheckOpenMinutes`] at `at`, or up to
    /// [`TIMER_RESOLUTION`] after it.
    ///
    /// [`CheckOpenMinutes`]: crate::messages::CheckOpenMinutes
    pub(super) fn schedule(&self, at: Instant, index: u32) {
        self.due.borrow_mut().push(Reverse((self.slot_at_or_after(at), index)));
    }

    /// Removes the timers due at `now` and returns them (when due, which aggregator),
    /// earliest first and, within a slot, by number: at most `limit` of them, except that
    /// every timer due at or before `overdue` is taken whatever the limit (a look is put
    /// off until then at the latest).
    pub(super) fn take_due(&self, now: Instant, limit: usize, overdue: Instant) -> Vec<(Instant, u32)> {
        let mut due = self.due.borrow_mut();
        let mut taken = Vec::new();
        while let Some(&Reverse((slot, index))) = due.peek() {
            let at = self.start_of(slot);
            if at > now || (taken.len() >= limit && at > overdue) {
                break;
            }
            due.pop();
            taken.push((at, index));
        }
        if due.is_empty() && due.capacity() > 1024 {
            // A burst (every machine closing the same minute) should not pin its peak.
            *due = BinaryHeap::new();
        }
        taken
    }

    /// The first slot starting at or after `at`.
    fn slot_at_or_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        let resolution = TIMER_RESOLUTION.as_nanos();
        u64::try_from(since.div_ceil(resolution)).unwrap_or(u64::MAX)
    }

    fn start_of(&self, slot: u64) -> Instant {
        let resolution = u64::try_from(TIMER_RESOLUTION.as_nanos()).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(resolution.saturating_mul(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_never_fires_before_its_instant() {
        let timers = CloseTimers::starting_at(Instant::now());
        let at = timers.origin + Duration::from_micros(12_345);
        timers.schedule(at, 7);
        assert!(timers.take_due(at - Duration::from_nanos(1), usize::MAX, timers.origin).is_empty());
        let taken = timers.take_due(at + TIMER_RESOLUTION, usize::MAX, timers.origin);
        assert_eq!(taken.len(), 1);
        let (due, index) = taken[0];
        assert_eq!(index, 7);
        assert!(due >= at && due < at + TIMER_RESOLUTION, "due within a resolution after its instant");
    }

    #[test]
    fn timers_due_within_one_slot_fire_in_the_order_of_their_numbers() {
        let timers = CloseTimers::starting_at(Instant::now());
        let boundary = timers.origin + Duration::from_secs(65) + Duration::from_millis(1);
        // What a minute boundary schedules: the same moment, read a few µs apart, by
        // aggregators in no particular order.
        for (index, jitter) in [(5, 3), (1, 9), (4, 0), (2, 7), (3, 1)] {
            timers.schedule(boundary + Duration::from_micros(jitter), index);
        }
        let taken = timers.take_due(boundary + TIMER_RESOLUTION, usize::MAX, timers.origin);
        let order: Vec<u32> = taken.iter().map(|&(_, index)| index).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn earlier_slots_come_first_and_the_limit_holds_until_overdue() {
        let timers = CloseTimers::starting_at(Instant::now());
        let base = timers.origin + Duration::from_secs(1);
        timers.schedule(base + TIMER_RESOLUTION * 3, 1);
        timers.schedule(base, 9);
        timers.schedule(base + TIMER_RESOLUTION, 2);
        let now = base + TIMER_RESOLUTION * 4;
        let first = timers.take_due(now, 2, timers.origin);
        assert_eq!(first.iter().map(|&(_, index)| index).collect::<Vec<_>>(), vec![9, 2]);
        // Over the limit, but overdue: taken anyway.
        let rest = timers.take_due(now, 0, now);
        assert_eq!(rest.iter().map(|&(_, index)| index).collect::<Vec<_>>(), vec![1]);
    }
}
