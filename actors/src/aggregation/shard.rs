//! The shard actor: one per aggregator arbiter (one per core). It starts the aggregators
//! of the machines the broker assigns to its core and hands each its samples.
//!
//! Why it exists: a message to an actor on another thread costs a wake-up of that thread
//! (a lock and often a system call), one to an actor on the same thread almost nothing.
//! With thousands of machines, a batch of 1,024 messages touches nearly as many machines,
//! and the broker's single thread spent most of its time waking aggregators. Now the
//! broker sends one [`RouteSamples`] per core per batch and this actor, on the
//! aggregators' own thread, does the per-machine delivery.
//!
//! It also keeps the close timers of its aggregators
//! ([`CloseTimers`](super::timers::CloseTimers)): one heap per shard, swept every
//! [`TIMER_RESOLUTION`], instead of a timer per aggregator (an actix timer future with a
//! tokio `Sleep` is about 210 bytes; 100,000 active machines had 21 MB of them). A sweep
//! sends only as many due looks as the writer's backlog has room for
//! (`AggregatorSettings::writer_backlog_limit`). The sweep also notices when the shard's
//! whole stream of samples pauses, and then sets a look, due at once, for every
//! aggregator holding reopened minutes, which need not wait for their machines' next late
//! samples any more ([`StreamPace`](super::late::StreamPace)).
//!
//! Delivery policy ([`crate::delivery`]), as in the broker: a delivery refused because
//! that aggregator's mailbox is full is awaited inside `ctx.wait`, so this shard takes no
//! further batch until it is taken and the broker's send to it waits in turn.

use super::aggregator::Aggregator;
use super::local::{AggregatorShared, ShardLocal};
use super::timers::TIMER_RESOLUTION;
use crate::delivery::{count_lost, Deliveries};
use crate::messages::{AcceptSamples, CheckOpenMinutes, FlushOpenMinutes, RememberWritten, RouteSamples};
use actix::dev::SendError;
use actix::prelude::*;
use futures_util::future::join_all;
use std::rc::Rc;
use std::sync::Arc;

/// The most aggregators a stop asks to flush at once (each answer waits in a future).
const MAX_FLUSHES_AT_ONCE: usize = 1_000;
/// The longest a stop waits for room in the writer's backlog (or `writer_backlog_wait`,
/// `aggregation.tick`, if shorter) before it hands the rest over at once: a writer that
/// takes nothing for this long is not writing (PostgreSQL away), and every second spent
/// here is one fewer for it to write the rows within `service.shutdown_timeout`.
const STOP_PACING_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug)]
pub struct Shard {
    /// Indexed by the number the broker gave each machine of this shard.
    aggregators: Vec<Addr<Aggregator>>,
    /// What this shard's aggregators share on its thread, their timers among it.
    local: Rc<ShardLocal>,
}

impl Shard {
    pub fn new(shared: Arc<AggregatorShared>) -> Self {
        Shard { aggregators: Vec::new(), local: Rc::new(ShardLocal::new(shared)) }
    }

    /// Tells each aggregator whose timer is due to look at its minutes, as many as the
    /// writer's backlog has room for (`AggregatorSettings::writer_backlog_limit`; the
    /// others stay due, earliest first, at most `writer_backlog_wait`). The aggregators
    /// check the room again, exactly, as they close (`Aggregator::close_due`): this only
    /// spares waking those that could not. One whose mailbox is full is busy anyway; its
    /// look is put off by one sweep, never dropped.
    fn fire_due_timers(&mut self, _: &mut Context<Self>) {
        let shared = &self.local.shared;
        let now = shared.clock.instant();
        let overdue = now.checked_sub(shared.settings.writer_backlog_wait).unwrap_or(now);
        let mut pace = self.local.pace.get();
        let paused = pace.swept(now);
        self.local.pace.set(pace);
        if paused {
            // Nothing more is coming for now: the reopened minutes need not wait for
            // their machines' next late samples (`late::StreamPace`). Their looks go
            // through the timers, paced by the writer's room like any other: at a
            // drained backlog's end that is every machine at once.
            for index in self.local.holding_late() {
                self.local.timers.schedule(now, index);
            }
        }
        for (due, index) in self.local.timers.take_due(now, shared.writer_room(), overdue) {
            let Some(aggregator) = self.aggregators.get(index as usize) else { continue };
            if let Err(SendError::Full(_)) = aggregator.try_send(CheckOpenMinutes { due }) {
                // Still due: taken again at the next sweep, its wait for room still
                // counted from `due`.
                self.local.timers.schedule(due, index);
            }
        }
    }
}

impl Actor for Shard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(TIMER_RESOLUTION, Self::fire_due_timers);
    }
}

impl Handler<RouteSamples> for Shard {
    type Result = ();

    fn handle(
        &mut self,
        RouteSamples { new_machines, deliveries, written }: RouteSamples,
        ctx: &mut Self::Context,
    ) {
        for machine in new_machines {
            // Numbered in the order of `aggregators`, which is the broker's numbering.
            self.aggregators.push(Aggregator::new(machine, self.local.clone()).start());
        }
        let shared = &self.local.shared;
        if !deliveries.is_empty() {
            let mut pace = self.local.pace.get();
            pace.batch_arrived(shared.clock.instant());
            self.local.pace.set(pace);
        }
        let mut waiting = Deliveries::default();
        // Before the samples: a mailbox is first in, first out.
        for (index, minutes) in written {
            if let Some(aggregator) = self.aggregators.get(index as usize) {
                waiting.deliver(aggregator, RememberWritten(minutes), 0, &shared.stats);
            }
        }
        for (index, samples) in deliveries {
            let count = samples.len() as u64;
            match self.aggregators.get(index as usize) {
                Some(aggregator) => {
                    waiting.deliver(aggregator, AcceptSamples(samples), count, &shared.stats);
                }
                // The broker numbers machines in the order it announces them: a gap is a
                // bug, and the samples must not vanish without a trace.
                None => count_lost(&shared.stats, count),
            }
        }
        if !waiting.is_empty() {
            ctx.wait(waiting.finish(shared.stats.clone()).into_actor(self));
        }
    }
}

impl Handler<FlushOpenMinutes> for Shard {
    type Result = ResponseActFuture<Self, ()>;

    /// Every aggregator of the shard hands its open minutes to the writer; answers when
    /// all of them have. Paced like the closes, as the writer's backlog has room
    /// ([`AggregatorShared::writer_room`]): at a stop every machine's open minutes go at
    /// once, and 100,000 machines' rows and their sends, all waiting together, took the
    /// service from 1.7 to 2.5 KiB a machine (docs/benchmarks.md, session 17). Once the
    /// writer has taken nothing for [`STOP_PACING_WAIT`] (PostgreSQL away), the rest go
    /// without pacing, as before: the journal holds them either way.
    fn handle(&mut self, _: FlushOpenMinutes, _: &mut Self::Context) -> Self::Result {
        // No sample is routed after the flush (the source has closed), and the timers
        // of an aggregator taken here find nothing: it hands over everything it holds.
        let aggregators = std::mem::take(&mut self.aggregators);
        let shared = self.local.shared.clone();
        let flush = async move {
            let (mut failed, mut paced, mut next) = (0, true, 0);
            while next < aggregators.len() {
                let mut batch = MAX_FLUSHES_AT_ONCE;
                if paced {
                    let waited_since = std::time::Instant::now();
                    let mut room = shared.writer_room();
                    let longest = shared.settings.writer_backlog_wait.min(STOP_PACING_WAIT);
                    while room == 0 && waited_since.elapsed() < longest {
                        actix_rt::time::sleep(TIMER_RESOLUTION).await;
                        room = shared.writer_room();
                    }
                    if room > 0 {
                        batch = batch.min(room);
                    } else {
                        paced = false;
                    }
                }
                let end = aggregators.len().min(next + batch);
                let flushes = join_all(
                    aggregators[next..end].iter().map(|aggregator| aggregator.send(FlushOpenMinutes)),
                );
                failed += flushes.await.iter().filter(|result| result.is_err()).count();
                next = end;
            }
            if failed > 0 {
                tracing::error!(aggregators = failed, "aggregators did not flush their open minutes");
            }
            aggregators
        };
        Box::pin(flush.into_actor(self).map(|aggregators, shard, _| shard.aggregators = aggregators))
    }
}
