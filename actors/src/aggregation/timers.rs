//! The close timers of one shard's aggregators: when each wants to look at its open
//! minutes next. One heap per shard, swept by the shard every [`TIMER_RESOLUTION`],
//! instead of an actix timer per aggregator (about 210 bytes each: 100,000 active
//! machines had 21 MB of them).

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// How often the shard looks for due close timers: the most a close can be late.
pub(super) const TIMER_RESOLUTION: Duration = Duration::from_millis(5);

/// When each aggregator of a shard wants to look at its open minutes next: a heap of
/// (instant, aggregator number). Shared by reference count between the shard and its
/// aggregators, which all run on the shard's thread (hence `Rc`, not `Arc`); a borrow
/// never outlives one push or one sweep, so they never overlap.
#[derive(Debug, Default)]
pub(super) struct CloseTimers {
    due: RefCell<BinaryHeap<Reverse<(Instant, u32)>>>,
}

impl CloseTimers {
    /// Asks for aggregator `index` to be sent [`CheckOpenMinutes`] at `at`.
    pub(super) fn schedule(&self, at: Instant, index: u32) {
        self.due.borrow_mut().push(Reverse((at, index)));
    }

    /// Removes the timers due at `now` and returns them (when due, which aggregator),
    /// earliest first: at most `limit` of them, except that every timer due at or before
    /// `overdue` is taken whatever the limit (a look is put off until then at the latest).
    pub(super) fn take_due(&self, now: Instant, limit: usize, overdue: Instant) -> Vec<(Instant, u32)> {
        let mut due = self.due.borrow_mut();
        let mut taken = Vec::new();
        while let Some(&Reverse((at, index))) = due.peek() {
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
}
