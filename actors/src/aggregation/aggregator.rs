//! The aggregator actor: one per machine, holding that machine's open minutes.
//!
//! It accumulates the samples the broker routes to it, drops redelivered duplicates, and
//! hands each minute to the writer at its end + grace: it asks its shard's
//! [`CloseTimers`] to wake it at exactly that moment (give or take the shard's 5 ms
//! resolution), and only while the machine has open minutes, so an idle machine costs
//! no wake-ups. Handing over is an awaited send inside `ctx.wait`, so while the writer is
//! full this actor takes no new samples and the broker, in turn, slows down.
//!
//! A sample for a minute that is already due (a late message, or a backlog drained after
//! an outage) reopens that minute. It is not closed at once, which would make every late
//! message a row of its own: it closes once no late sample has arrived for a quiet
//! period, or [`LATE_HOLD`] after the first one, whichever comes first. The quiet period
//! follows the machine's own pace: three times the last gap between its late arrivals,
//! within [`LATE_QUIET_MIN`] and [`LATE_QUIET_MAX`]. A backlog of 1,000 machines brings a
//! machine's messages about 20 ms apart, one of 10,000 machines 0.2 s apart, one of
//! 100,000 machines about 1.5 s apart: a fixed 50 ms made the second nearly a row update
//! per message, a fixed 500 ms added half a second to the end of the first, and a cap of
//! 500 ms made the third a row update per message (docs/benchmarks.md, session 13).

use super::cold_index::ColdIndex;
use super::timers::CloseTimers;
use crate::clock::Clock;
use crate::journal::Journal;
use crate::logic::time::duration_micros;
use crate::logic::{Accepted, ClosedMinute, Minute, MinutePart, OpenMinutes};
use crate::messages::{AcceptSamples, CheckOpenMinutes, FlushOpenMinutes, RememberWritten, WriteMinutes};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The shortest wait of a reopened (late) minute for more late samples before it closes.
pub(super) const LATE_QUIET_MIN: Duration = Duration::from_millis(50);
/// The longest such wait (a machine whose late samples come far apart).
pub(super) const LATE_QUIET_MAX: Duration = Duration::from_secs(5);
/// The longest a reopened minute is held while late samples keep coming.
pub(super) const LATE_HOLD: Duration = Duration::from_secs(5);

/// The timing of minute closing.
#[derive(Debug, Clone, Copy)]
pub struct AggregatorSettings {
    pub grace: Duration,
    /// The longest the aggregator sleeps between looks at its open minutes. Closing is
    /// timed to end + grace; this only bounds how late a close can be when the wall
    /// clock is stepped forward (or, in tests, moved by hand). It also caps
    /// the late-sample quiet period and [`LATE_HOLD`], so a test with a tiny tick closes
    /// late minutes quickly.
    pub tick: Duration,
    /// How long a written minute's timestamps are kept for duplicate detection:
    /// `max_lateness`, beyond which a sample is rejected as too late anyway.
    pub remember_written: Duration,
}

impl AggregatorSettings {
    fn late_hold(&self) -> Duration {
        LATE_HOLD.min(self.tick)
    }
}

/// Late samples arriving for already-due minutes (see the module comment). Kept after
/// the reopened minutes close, so the next late arrival knows the machine's pace.
#[derive(Debug, Clone, Copy)]
struct LateArrivals {
    /// The first late arrival of the reopened minutes still held; `None` once they closed.
    first: Option<Instant>,
    last: Instant,
    /// The quiet period, in µs (a `u32`: this is per machine).
    quiet_micros: u32,
}

impl LateArrivals {
    /// When the reopened minutes may close; `None` while none is held.
    fn settled(&self, settings: &AggregatorSettings) -> Option<Instant> {
        let quiet = Duration::from_micros(u64::from(self.quiet_micros)).min(settings.tick);
        self.first.map(|first| (self.last + quiet).min(first + settings.late_hold()))
    }

    /// Notes a late arrival at `at`, after `previous` (the machine's last one, if any).
    fn arrived(previous: Option<LateArrivals>, at: Instant) -> LateArrivals {
        let quiet = match previous {
            Some(previous) => {
                (at.saturating_duration_since(previous.last) * 3).clamp(LATE_QUIET_MIN, LATE_QUIET_MAX)
            }
            None => LATE_QUIET_MIN,
        };
        LateArrivals {
            first: Some(previous.and_then(|previous| previous.first).unwrap_or(at)),
            last: at,
            quiet_micros: u32::try_from(quiet.as_micros()).unwrap_or(u32::MAX),
        }
    }
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
    /// The oldest minute a sample accepted now can fall in.
    fn remember_since(&self) -> Minute {
        let now = self
            .clock
            .now()
            .min(crate::logic::Timestamp::from_micros(self.replaying_since.load(Ordering::Relaxed)));
        now.saturating_add_micros(-duration_micros(self.settings.remember_written)).minute()
    }
}

#[derive(Debug)]
pub struct Aggregator {
    /// Shared with every row this actor emits, so a closed minute costs no string copy.
    machine: Arc<str>,
    open: OpenMinutes,
    shared: Arc<AggregatorShared>,
    /// The shard's timers, and this aggregator's number there (what a timer names).
    timers: Rc<CloseTimers>,
    index: u32,
    /// The earliest look at the open minutes asked of the timers; none while nothing is
    /// open. Later requests may still be pending: a look that finds nothing to do is
    /// harmless, and not cancelling them keeps the timers a plain heap.
    check: Option<Instant>,
    /// Set while reopened minutes wait for the late samples to settle.
    late: Option<LateArrivals>,
}

impl Aggregator {
    pub fn new(
        machine: Arc<str>,
        index: u32,
        shared: Arc<AggregatorShared>,
        timers: Rc<CloseTimers>,
    ) -> Self {
        Aggregator { machine, open: OpenMinutes::default(), shared, timers, index, check: None, late: None }
    }

    /// When the open minutes next need a look: when late samples have settled, or when
    /// the oldest minute is due (capped by `tick`); `None` when nothing is open.
    fn next_check(&self, now: Instant) -> Option<Instant> {
        let due = self.open.earliest_due(self.shared.settings.grace)?;
        if let Some(settled) = self.late.and_then(|late| late.settled(&self.shared.settings)) {
            return Some(settled);
        }
        let wait = u64::try_from(due.micros().saturating_sub(self.shared.clock.now().micros())).unwrap_or(0);
        Some(now + Duration::from_micros(wait).min(self.shared.settings.tick))
    }

    /// Makes sure a look is scheduled no later than [`Aggregator::next_check`]. A look
    /// that comes too early is harmless (it looks and schedules again), so an earlier one
    /// is kept: late samples arriving one batch after another cost no timer each.
    fn schedule_check(&mut self, now: Instant) {
        let Some(at) = self.next_check(now) else {
            self.check = None;
            return;
        };
        if self.check.is_some_and(|pending| pending <= at) {
            return;
        }
        self.timers.schedule(at, self.index);
        self.check = Some(at);
    }

    fn close_due(&mut self, ctx: &mut Context<Self>) {
        let now = self.shared.clock.instant();
        if let Some(settled) = self.late.and_then(|late| late.settled(&self.shared.settings)) {
            if now < settled {
                self.schedule_check(now);
                return;
            }
            if let Some(late) = &mut self.late {
                late.first = None;
            }
        }
        let before = self.open.len();
        let closed = self.open.take_closed(
            self.shared.clock.now(),
            self.shared.settings.grace,
            self.shared.remember_since(),
        );
        self.track_open_minutes(before);
        if !closed.is_empty() {
            self.cool_written();
            ctx.wait(self.hand_over(closed).into_actor(self));
        }
        self.schedule_check(now);
    }

    /// Moves older written minutes to the cold index ([`ColdIndex::cool`]). When it
    /// cannot store them (a full disk), they stay in memory.
    fn cool_written(&mut self) {
        let Some(cold) = &self.shared.cold else { return };
        match cold.cool(&mut self.open, self.shared.remember_since()) {
            Ok(()) => self.shared.stats.cold_index_bytes.store(cold.bytes(), Ordering::Relaxed),
            Err(err) => {
                let failures = self.shared.stats.cold_index_errors.fetch_add(1, Ordering::Relaxed);
                // Once per power of two: a full disk fails for every machine at once.
                if failures.is_power_of_two() || failures == 0 {
                    tracing::warn!(machine = %self.machine, error = %err, failures = failures + 1, "cannot move written minutes to the cold index; they stay in memory");
                }
            }
        }
    }

    /// Loads this machine's cold runs back into memory. A run that cannot be read is
    /// dropped, loudly: a resend of its minutes would be counted again.
    fn warm_written(&mut self) {
        let shared = &self.shared;
        let machine = &self.machine;
        let lost = self.open.warm(shared.remember_since(), |at| {
            bump(&shared.stats.cold_index_loads, 1);
            match shared.cold.as_ref().map(|cold| cold.load(at)) {
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(err)) => {
                    tracing::error!(machine = %machine, error = %err, "cold part of the duplicate index lost: resends of its minutes would count again");
                    None
                }
                None => None,
            }
        });
        bump(&shared.stats.cold_index_errors, lost as u64);
    }

    /// Keeps the fleet-wide open-minutes gauge in step with this machine's minutes.
    fn track_open_minutes(&self, before: usize) {
        let delta = self.open.len() as i64 - before as i64;
        if delta != 0 {
            self.shared.stats.open_minutes.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn hand_over(&self, minutes: Vec<MinutePart>) -> impl Future<Output = ()> + 'static {
        let rows: Vec<ClosedMinute> = minutes
            .into_iter()
            .map(|part| ClosedMinute {
                machine: self.machine.clone(),
                minute: part.minute,
                aggregate: part.aggregate,
                tally: part.tally,
                seen: part.seen,
                known_new: part.known_new,
            })
            .collect();
        let shared = self.shared.clone();
        let machine = self.machine.clone();
        async move {
            let count = rows.len() as u64;
            match shared.writer.send(WriteMinutes(rows)).await {
                Ok(()) => bump(&shared.stats.minutes_closed, count),
                Err(err) => {
                    // Still in the journal, when there is one: the next start replays them.
                    tracing::error!(machine = %machine, minutes = count, error = %err, "writer unavailable; closed minutes not handed over");
                }
            }
        }
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;
}

impl Handler<AcceptSamples> for Aggregator {
    type Result = ();

    fn handle(&mut self, AcceptSamples(samples): AcceptSamples, _: &mut Self::Context) {
        let (mut duplicates, mut refused) = (0, 0);
        let mut late = false;
        let before = self.open.len();
        let now = self.shared.clock.now();
        let grace = duration_micros(self.shared.settings.grace);
        for sample in &samples {
            let mut accepted = self.open.accept(sample);
            if accepted == Accepted::NeedsCold {
                self.warm_written();
                accepted = self.open.accept(sample);
            }
            match accepted {
                Accepted::Added => {}
                // Not after a warm-up, which leaves no cold run; counted, should it ever.
                Accepted::NeedsCold => {
                    refused += 1;
                    bump(&self.shared.stats.samples_lost, 1);
                    tracing::error!(machine = %self.machine, "a sample still needed the cold index after it was loaded");
                }
                Accepted::Duplicate => duplicates += 1,
                Accepted::AlreadyWritten => {
                    duplicates += 1;
                    if let Some(journal) = &self.shared.journal {
                        journal.release_mark(sample.mark);
                    }
                }
            }
            late |= sample.ts.minute().end().saturating_add_micros(grace) <= now;
        }
        let arrived = self.shared.clock.instant();
        if late {
            self.late = Some(LateArrivals::arrived(self.late, arrived));
        }
        self.track_open_minutes(before);
        bump(&self.shared.stats.accepted, samples.len() as u64 - duplicates - refused);
        bump(&self.shared.stats.duplicates, duplicates);
        self.schedule_check(arrived);
    }
}

impl Handler<RememberWritten> for Aggregator {
    type Result = ();

    fn handle(&mut self, RememberWritten(minutes): RememberWritten, _: &mut Self::Context) {
        for written in minutes {
            self.open.remember_written(written.minute, &written.seen);
        }
        self.cool_written();
    }
}

impl Handler<CheckOpenMinutes> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: CheckOpenMinutes, ctx: &mut Self::Context) {
        let now = self.shared.clock.instant();
        if self.check.is_some_and(|at| at <= now) {
            self.check = None;
        }
        self.close_due(ctx);
    }
}

impl Handler<FlushOpenMinutes> for Aggregator {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushOpenMinutes, _: &mut Self::Context) -> Self::Result {
        self.check = None;
        self.late = None;
        let before = self.open.len();
        let open = self.open.take_all();
        self.track_open_minutes(before);
        Box::pin(self.hand_over(open))
    }
}
