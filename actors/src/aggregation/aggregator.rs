//! The aggregator actor: one per machine, holding that machine's open minutes.
//!
//! It accumulates the samples the broker routes to it, drops redelivered duplicates, and
//! hands each minute to the writer at its end + grace: it asks its shard's
//! [`CloseTimers`](super::timers::CloseTimers) to wake it at exactly that moment (give or
//! take the shard's 5 ms resolution, and as the writer's backlog leaves room), and only
//! while the machine has open minutes, so an idle machine costs no wake-ups. Handing over
//! is an awaited send inside `ctx.wait`, so while the writer is full this actor takes no
//! new samples and the broker, in turn, slows down.
//!
//! A sample for a minute that is already due (a late message, or a backlog drained after an
//! outage) reopens that minute. It is not closed at once, which would make every late
//! message a row of its own: it closes once no late sample has arrived for a quiet period,
//! or [`LATE_HOLD`](super::late::LATE_HOLD) after the first one, whichever comes first. The
//! quiet period follows the machine's own pace: three times the last gap between its late
//! arrivals, within [`LATE_QUIET_MIN`](super::late::LATE_QUIET_MIN) and
//! [`LATE_QUIET_MAX`](super::late::LATE_QUIET_MAX). A backlog of 1,000 machines brings a
//! machine's messages about 20 ms apart, one of 10,000 machines 0.2 s apart, one of 100,000
//! machines about 1.5 s apart: a fixed 50 ms made the second nearly a row update per
//! message, a fixed 500 ms added half a second to the end of the first, and a cap of 500 ms
//! made the third a row update per message (docs/benchmarks.md, session 13). When the
//! shard's whole stream pauses (a drained backlog's end), a reopened minute closes at
//! once instead: nothing more is coming for any machine, and at 100,000 machines each
//! last minute would otherwise wait up to 4.5 s ([`StreamPace`](super::late::StreamPace)).

use super::late::LateArrivals;
use super::local::{AggregatorShared, Schedule, ShardLocal};
use crate::logic::time::duration_micros;
use crate::logic::{Accepted, ClosedMinute, MinutePart, OpenMinutes};
use crate::messages::{AcceptSamples, CheckOpenMinutes, FlushOpenMinutes, RememberWritten, WriteMinutes};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most 72 bytes: one byte more costs every machine about 250 (see `local`'s module
/// comment), so what is not needed on every message lives in the shard (`local::Schedule`).
#[derive(Debug)]
pub struct Aggregator {
    /// Shared with every row this actor emits, so a closed minute costs no string copy.
    machine: Arc<str>,
    open: OpenMinutes,
    /// The shard's timers and this aggregator's schedule, and what all aggregators share.
    local: Rc<ShardLocal>,
    /// This aggregator's number in its shard (what a timer names).
    index: u32,
}

impl Aggregator {
    /// A new aggregator in the shard of `local`.
    pub(super) fn new(machine: Arc<str>, local: Rc<ShardLocal>) -> Self {
        let index = local.add_aggregator();
        Aggregator { machine, open: OpenMinutes::default(), local, index }
    }

    fn shared(&self) -> &AggregatorShared {
        &self.local.shared
    }

    fn schedule(&self) -> Schedule {
        self.local.schedule(self.index)
    }

    fn set_schedule(&self, schedule: Schedule) {
        self.local.set_schedule(self.index, schedule);
    }

    /// When late samples have settled, if reopened minutes are held: at the latest when
    /// the shard's whole stream paused, if it has.
    fn late_settled(&self, late: Option<LateArrivals>) -> Option<Instant> {
        let settled = late.and_then(|late| late.settled(self.shared().settings.tick))?;
        Some(self.local.stream_paused_since().map_or(settled, |paused| settled.min(paused)))
    }

    /// When the open minutes next need a look: when late samples have settled, or when
    /// the oldest minute is due (capped by `tick`); `None` when nothing is open.
    fn next_check(&self, now: Instant, late: Option<LateArrivals>) -> Option<Instant> {
        let due = self.open.earliest_due(self.shared().settings.grace)?;
        if let Some(settled) = self.late_settled(late) {
            return Some(settled);
        }
        let wait =
            u64::try_from(due.micros().saturating_sub(self.shared().clock.now().micros())).unwrap_or(0);
        Some(now + Duration::from_micros(wait).min(self.shared().settings.tick))
    }

    /// Makes sure a look is scheduled no later than [`Aggregator::next_check`]. A look
    /// that comes too early is harmless (it looks and schedules again), so an earlier one
    /// is kept: late samples arriving one batch after another cost no timer each.
    fn schedule_check(&self, now: Instant) {
        let mut schedule = self.schedule();
        let Some(at) = self.next_check(now, schedule.late) else {
            if schedule.check.is_some() {
                self.set_schedule(Schedule { check: None, ..schedule });
            }
            return;
        };
        if schedule.check.is_some_and(|pending| pending <= at) {
            return;
        }
        self.local.timers.schedule(at, self.index);
        schedule.check = Some(at);
        self.set_schedule(schedule);
    }

    /// Closes the minutes that are due, if the writer's backlog has room; `due` is when
    /// this look was due.
    fn close_due(&mut self, ctx: &mut Context<Self>, due: Instant) {
        let now = self.shared().clock.instant();
        let mut schedule = self.schedule();
        let settled = self.late_settled(schedule.late);
        if settled.is_some_and(|settled| now < settled) {
            self.schedule_check(now);
            return;
        }
        if self.must_wait_for_room(now, due) {
            // Back into the shard's timers as it was: it keeps its place and its bound.
            self.local.timers.schedule(due, self.index);
            self.set_schedule(Schedule { check: Some(due), ..schedule });
            return;
        }
        if settled.is_some() {
            if let Some(late) = &mut schedule.late {
                late.first = None;
            }
            self.set_schedule(schedule);
        }
        let before = self.open.len();
        let shared = &self.local.shared;
        let closed =
            self.open.take_closed(shared.clock.now(), shared.settings.grace, shared.remember_since());
        self.track_open_minutes(before);
        if !closed.is_empty() {
            self.cool_written();
            ctx.wait(self.hand_over(closed).into_actor(self));
        }
        self.schedule_check(now);
    }

    /// A minute is due but the writer's backlog is full (another aggregator took the room
    /// since the shard sent this look), and the look, due at `due`, has not waited
    /// `writer_backlog_wait` yet (`AggregatorSettings::writer_backlog_limit`).
    fn must_wait_for_room(&self, now: Instant, due: Instant) -> bool {
        let shared = self.shared();
        let closing =
            self.open.earliest_due(shared.settings.grace).is_some_and(|at| at <= shared.clock.now());
        let waited_enough =
            due.checked_add(shared.settings.writer_backlog_wait).is_none_or(|until| now >= until);
        closing && !waited_enough && shared.writer_room() == 0
    }

    /// Moves older written minutes to the cold index ([`ColdIndex::cool`]). When it
    /// cannot store them (a full disk), they stay in memory.
    fn cool_written(&mut self) {
        let shared = &self.local.shared;
        let Some(cold) = &shared.cold else { return };
        match cold.cool(&mut self.open, shared.remember_since()) {
            Ok(()) => shared.stats.cold_index_bytes.store(cold.bytes(), Ordering::Relaxed),
            Err(err) => {
                let failures = shared.stats.cold_index_errors.fetch_add(1, Ordering::Relaxed);
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
        let shared = &self.local.shared;
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
            self.shared().stats.open_minutes.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
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
        let shared = self.local.shared.clone();
        let machine = self.machine.clone();
        // Counted from now, so the shard's next sweep sees them, until the send is answered
        // or given up (the guard's drop).
        let on_their_way = RowsToWriter::count(shared.stats.clone(), rows.len() as u64);
        async move {
            let _on_their_way = on_their_way;
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

/// Rows handed to the writer whose send is not answered yet, in
/// [`PipelineStats::rows_to_writer`](crate::stats::PipelineStats) until dropped.
struct RowsToWriter {
    stats: Arc<PipelineStats>,
    rows: u64,
}

impl RowsToWriter {
    fn count(stats: Arc<PipelineStats>, rows: u64) -> Self {
        stats.rows_to_writer.fetch_add(rows, Ordering::Relaxed);
        RowsToWriter { stats, rows }
    }
}

impl Drop for RowsToWriter {
    fn drop(&mut self) {
        self.stats.rows_to_writer.fetch_sub(self.rows, Ordering::Relaxed);
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
        let now = self.shared().clock.now();
        let grace = duration_micros(self.shared().settings.grace);
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
                    bump(&self.shared().stats.samples_lost, 1);
                    tracing::error!(machine = %self.machine, "a sample still needed the cold index after it was loaded");
                }
                Accepted::Duplicate => duplicates += 1,
                Accepted::AlreadyWritten => {
                    duplicates += 1;
                    if let Some(journal) = &self.shared().journal {
                        journal.release_mark(sample.mark);
                    }
                }
            }
            late |= sample.ts.minute().end().saturating_add_micros(grace) <= now;
        }
        let arrived = self.shared().clock.instant();
        if late {
            let schedule = self.schedule();
            self.set_schedule(Schedule {
                late: Some(LateArrivals::arrived(schedule.late, arrived)),
                ..schedule
            });
        }
        self.track_open_minutes(before);
        bump(&self.shared().stats.accepted, samples.len() as u64 - duplicates - refused);
        bump(&self.shared().stats.duplicates, duplicates);
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

    fn handle(&mut self, CheckOpenMinutes { due }: CheckOpenMinutes, ctx: &mut Self::Context) {
        let now = self.shared().clock.instant();
        let schedule = self.schedule();
        if schedule.check.is_some_and(|at| at <= now) {
            self.set_schedule(Schedule { check: None, ..schedule });
        }
        self.close_due(ctx, due);
    }
}

impl Handler<FlushOpenMinutes> for Aggregator {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushOpenMinutes, _: &mut Self::Context) -> Self::Result {
        self.set_schedule(Schedule::default());
        let before = self.open.len();
        let open = self.open.take_all();
        self.track_open_minutes(before);
        Box::pin(self.hand_over(open))
    }
}

#[cfg(test)]
mod tests {
    /// The tokio task actix runs an actor in holds it inline, and is about 250 bytes
    /// larger for an actor of more than 72 bytes (`local`'s module comment).
    #[test]
    fn an_aggregator_fits_the_smaller_actor_allocation() {
        let size = std::mem::size_of::<super::Aggregator>();
        assert!(size <= 72, "an Aggregator is {size} bytes: every machine would cost about 250 bytes more");
    }
}
