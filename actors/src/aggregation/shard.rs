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
//! (`AggregatorSettings::writer_backlog_limit`).
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
    type Result = ResponseFuture<()>;

    /// Every aggregator of the shard hands its open minutes to the writer; answers when
    /// all of them have.
    fn handle(&mut self, _: FlushOpenMinutes, _: &mut Self::Context) -> Self::Result {
        let flushes = join_all(self.aggregators.iter().map(|aggregator| aggregator.send(FlushOpenMinutes)));
        Box::pin(async move {
            let failed = flushes.await.iter().filter(|result| result.is_err()).count();
            if failed > 0 {
                tracing::error!(aggregators = failed, "aggregators did not flush their open minutes");
            }
        })
    }
}
