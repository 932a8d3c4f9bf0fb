//! What the aggregators of one shard share on the shard's thread: the fleet-wide settings
//! and handles, the shard's close timers, and each aggregator's schedule.
//!
//! Why an aggregator's schedule (its pending look and its late arrivals) lives here and
//! not in the actor: actix runs each actor as a tokio task whose allocation holds the
//! actor inline, and that allocation is about 250 bytes larger once the actor is more
//! than 72 bytes (an empty actor with its address costs 818 bytes resident, one of 80 to
//! 192 bytes 1,070: docs/benchmarks.md, session 14). At 100,000 machines that cliff is
//! 25 MB. Here the schedule costs its own 32 bytes in one `Vec` per shard (its instants
//! held as µs after the shard's start: an `Instant` is 16 bytes, and the schedule held
//! three of them in 56).

use super::cold_index::ColdIndex;
use super::late::{LateArrivals, StreamPace};
use super::timers::CloseTimers;
use crate::clock::Clock;
use crate::journal::Journal;
use crate::logic::time::duration_micros;
use crate::logic::Minute;
use crate::messages::WriteMinutes;
use crate::stats::PipelineStats;
use actix::Recipient;
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Shared by reference count between a shard and its aggregators, which all run on the
/// shard's thread (hence `Rc` for it, and `RefCell`s inside: a borrow never outlives one
/// call, so borrows never overlap).
#[derive(Debug)]
pub(super) struct ShardLocal {
    pub(super) shared: Arc<AggregatorShared>,
    /// Also where the instants of `schedules` count from ([`CloseTimers::origin`]).
    pub(super) timers: CloseTimers,
    /// Indexed by the aggregator's number in the shard.
    schedules: RefCell<Vec<PackedSchedule>>,
    /// How many of them hold reopened minutes (late arrivals with a `first`): a pause of
    /// the stream looks for them only when there are some.
    late_held: Cell<usize>,
    /// The pace of the shard's stream of samples (see [`StreamPace`]).
    pub(super) pace: Cell<StreamPace>,
}

/// When an aggregator looks at its open minutes next, and why.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Schedule {
    /// The earliest look asked of the timers; none while nothing is open. Later requests
    /// may still be pending: a look that finds nothing to do is harmless, and not
    /// cancelling them keeps the timers a plain heap.
    pub(super) check: Option<Instant>,
    /// Set once late samples arrived (see [`LateArrivals`]).
    pub(super) late: Option<LateArrivals>,
}

impl ShardLocal {
    pub(super) fn new(shared: Arc<AggregatorShared>) -> Self {
        ShardLocal {
            shared,
            timers: CloseTimers::starting_at(Instant::now()),
            schedules: RefCell::default(),
            late_held: Cell::new(0),
            pace: Cell::new(StreamPace::new()),
        }
    }

    /// Makes room for one more aggregator; returns its number.
    pub(super) fn add_aggregator(&self) -> u32 {
        let mut schedules = self.schedules.borrow_mut();
        schedules.push(PackedSchedule::default());
        u32::try_from(schedules.len() - 1).unwrap_or(u32::MAX)
    }

    /// Aggregator `index`'s schedule (the default for a number never handed out).
    pub(super) fn schedule(&self, index: u32) -> Schedule {
        let packed = self.schedules.borrow().get(index as usize).copied().unwrap_or_default();
        packed.unpack(self.timers.origin())
    }

    pub(super) fn set_schedule(&self, index: u32, schedule: Schedule) {
        if let Some(held) = self.schedules.borrow_mut().get_mut(index as usize) {
            let packed = PackedSchedule::pack(schedule, self.timers.origin());
            match (held.holds_late(), packed.holds_late()) {
                (false, true) => self.late_held.set(self.late_held.get() + 1),
                (true, false) => self.late_held.set(self.late_held.get().saturating_sub(1)),
                _ => {}
            }
            *held = packed;
        }
    }

    /// The numbers of the aggregators holding reopened minutes, in order.
    pub(super) fn holding_late(&self) -> Vec<u32> {
        if self.late_held.get() == 0 {
            return Vec::new();
        }
        let schedules = self.schedules.borrow();
        (0..schedules.len())
            .filter(|&index| schedules[index].holds_late())
            .filter_map(|index| u32::try_from(index).ok())
            .collect()
    }

    /// Since when the shard's whole stream of samples is paused, if it is (see
    /// [`StreamPace`]).
    pub(super) fn stream_paused_since(&self) -> Option<Instant> {
        self.pace.get().paused_since()
    }
}

/// A [`Schedule`] as the shard holds it: each instant as µs after the shard's origin,
/// plus one (0: none; `late_last` is 0 exactly when there are no late arrivals). 32
/// bytes instead of 56, for every machine. An instant comes back up to 1 µs early, which
/// is harmless: a look that comes early looks again, and a late sample's quiet period
/// is milliseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct PackedSchedule {
    check: u64,
    late_first: u64,
    late_last: u64,
    late_quiet_micros: u32,
}

impl PackedSchedule {
    /// Whether reopened minutes are held (late arrivals with a `first`).
    fn holds_late(&self) -> bool {
        self.late_first != 0
    }

    fn pack(schedule: Schedule, origin: Instant) -> Self {
        let micros = |at: Instant| {
            u64::try_from(at.saturating_duration_since(origin).as_micros()).unwrap_or(u64::MAX - 1) + 1
        };
        let late = schedule.late;
        PackedSchedule {
            check: schedule.check.map_or(0, micros),
            late_first: late.and_then(|late| late.first).map_or(0, micros),
            late_last: late.map_or(0, |late| micros(late.last)),
            late_quiet_micros: late.map_or(0, |late| late.quiet_micros),
        }
    }

    fn unpack(self, origin: Instant) -> Schedule {
        let instant =
            |micros: u64| micros.checked_sub(1).map(|micros| origin + Duration::from_micros(micros));
        Schedule {
            check: instant(self.check),
            late: instant(self.late_last).map(|last| LateArrivals {
                first: instant(self.late_first),
                last,
                quiet_micros: self.late_quiet_micros,
            }),
        }
    }
}

/// The timing of minute closing.
#[derive(Debug, Clone, Copy)]
pub struct AggregatorSettings {
    pub grace: Duration,
    /// The longest the aggregator sleeps between looks at its open minutes. Closing is
    /// timed to end + grace; this only bounds how late a close can be when the wall
    /// clock is stepped forward (or, in tests, moved by hand). It also caps the
    /// late-sample quiet period and its hold (`late::LATE_HOLD`), so a test with a tiny
    /// tick closes late minutes quickly.
    pub tick: Duration,
    /// How long a written minute's timestamps are kept for duplicate detection:
    /// `max_lateness`, beyond which a sample is rejected as too late anyway.
    pub remember_written: Duration,
    /// Due minutes are closed only while fewer rows than this wait for the writer (held
    /// and not yet taken by a write, or on their way to it); a close is put off by at most
    /// `writer_backlog_wait`. Why: when every machine's minute is due at once (each minute boundary at
    /// 100,000 machines, the waves of a drained backlog), closing all of them would move
    /// every open minute into the writer's buffer at once, where a row costs several
    /// times what it did as an open minute (docs/benchmarks.md, session 14). Paced, the
    /// writer still always has the next rows ready, and a minute not yet closed keeps
    /// merging late samples, so there are fewer parts to write.
    pub writer_backlog_limit: usize,
    /// The longest a due close waits for room in the writer's backlog; then it closes
    /// anyway, and the writer's own limit (`max_buffered_rows`, which holds its senders)
    /// applies: while PostgreSQL is down, minutes go on closing into the writer's buffer.
    pub writer_backlog_wait: Duration,
}

/// What every aggregator has in common, held once: at 100,000 machines each byte per
/// aggregator is 100 kB.
#[derive(Debug)]
pub struct AggregatorShared {
    pub settings: AggregatorSettings,
    pub clock: Arc<dyn Clock>,
    /// One sender for every aggregator: each `Recipient` clone allocates its own sender
    /// state (about 100 bytes). Sharing is safe: a send through a sender parked on a full
    /// mailbox goes out through a fresh clone of it (actix's `Request`), so no aggregator
    /// waits for another's wake-up.
    pub writer: Recipient<WriteMinutes>,
    pub stats: Arc<PipelineStats>,
    /// Finishes the journal record of a resend dropped as already written (no row will).
    pub journal: Option<Arc<Journal>>,
    /// Where older written minutes wait; without it (no journal directory to put it
    /// in) the whole index stays in memory.
    pub cold: Option<ColdIndex>,
    /// While the journal is replayed, the arrival time (µs) of its oldest message: its
    /// samples were validated as of then, so written minutes are kept from then on, not
    /// from now. `i64::MAX` otherwise.
    pub replaying_since: AtomicI64,
}

impl AggregatorShared {
    /// How many more aggregators may close their due minutes now (each closes one or
    /// two, rarely more): the writer backlog's room.
    pub(super) fn writer_room(&self) -> usize {
        let stats = &self.stats;
        let backlog =
            stats.rows_waiting.load(Ordering::Relaxed) + stats.rows_to_writer.load(Ordering::Relaxed);
        self.settings.writer_backlog_limit.saturating_sub(usize::try_from(backlog).unwrap_or(usize::MAX))
    }

    /// The oldest minute a sample accepted now can fall in.
    pub(super) fn remember_since(&self) -> Minute {
        let now = self
            .clock
            .now()
            .min(crate::logic::Timestamp::from_micros(self.replaying_since.load(Ordering::Relaxed)));
        now.saturating_add_micros(-duration_micros(self.settings.remember_written)).minute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_held_in_32_bytes_and_comes_back_within_a_microsecond() {
        assert_eq!(std::mem::size_of::<PackedSchedule>(), 32);
        let origin = Instant::now();
        let at =
            |micros: u64, nanos: u64| origin + Duration::from_micros(micros) + Duration::from_nanos(nanos);
        assert_eq!(PackedSchedule::pack(Schedule::default(), origin), PackedSchedule::default());
        let schedules = [
            Schedule { check: Some(at(0, 0)), late: None },
            Schedule {
                check: Some(at(65_000_123, 999)),
                late: Some(LateArrivals {
                    first: Some(at(61_000_000, 1)),
                    last: at(64_000_000, 500),
                    quiet_micros: 150_000,
                }),
            },
            Schedule {
                check: None,
                late: Some(LateArrivals { first: None, last: at(7, 0), quiet_micros: 50_000 }),
            },
        ];
        let close = |back: Instant, sent: Instant| back <= sent && sent - back < Duration::from_micros(1);
        for schedule in schedules {
            let back = PackedSchedule::pack(schedule, origin).unpack(origin);
            assert_eq!(back.check.is_some(), schedule.check.is_some());
            if let (Some(back), Some(sent)) = (back.check, schedule.check) {
                assert!(close(back, sent), "check {back:?} for {sent:?}");
            }
            assert_eq!(back.late.is_some(), schedule.late.is_some());
            if let (Some(back), Some(sent)) = (back.late, schedule.late) {
                assert!(close(back.last, sent.last));
                assert_eq!(back.first.is_some(), sent.first.is_some());
                if let (Some(back), Some(sent)) = (back.first, sent.first) {
                    assert!(close(back, sent));
                }
                assert_eq!(back.quiet_micros, sent.quiet_micros);
            }
        }
    }
}
