//! The aggregator actor: one per machine, holding that machine's open minutes.
//!
//! It accumulates the samples the broker routes to it, drops redelivered duplicates, and
//! at each tick hands the minutes whose end + grace has passed to the writer. Handing
//! over is an awaited send inside `ctx.wait`, so while the writer is full this actor
//! takes no new samples and the broker, in turn, slows down.

use crate::clock::Clock;
use crate::logic::{Accepted, ClosedMinute, Minute, MinuteAggregate, OpenMinutes};
use crate::messages::{AcceptSamples, FlushOpenMinutes, WriteMinutes};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The timing of minute closing.
#[derive(Debug, Clone, Copy)]
pub struct AggregatorSettings {
    pub grace: Duration,
    pub tick: Duration,
}

#[derive(Debug)]
pub struct Aggregator {
    /// Shared with every row this actor emits, so a closed minute costs no string copy.
    machine: Arc<str>,
    open: OpenMinutes,
    settings: AggregatorSettings,
    clock: Arc<dyn Clock>,
    writer: Recipient<WriteMinutes>,
    stats: Arc<PipelineStats>,
}

impl Aggregator {
    pub fn new(
        machine: Arc<str>,
        settings: AggregatorSettings,
        clock: Arc<dyn Clock>,
        writer: Recipient<WriteMinutes>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Aggregator { machine, open: OpenMinutes::default(), settings, clock, writer, stats }
    }

    fn close_due(&mut self, ctx: &mut Context<Self>) {
        if self.open.is_empty() {
            return;
        }
        let before = self.open.len();
        let closed = self.open.take_closed(self.clock.now(), self.settings.grace);
        self.track_open_minutes(before);
        if !closed.is_empty() {
            ctx.wait(self.hand_over(closed).into_actor(self));
        }
    }

    /// Keeps the fleet-wide open-minutes gauge in step with this machine's minutes.
    fn track_open_minutes(&self, before: usize) {
        let delta = self.open.len() as i64 - before as i64;
        if delta != 0 {
            self.stats.open_minutes.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn hand_over(&self, minutes: Vec<(Minute, MinuteAggregate)>) -> impl Future<Output = ()> + 'static {
        let rows: Vec<ClosedMinute> = minutes
            .into_iter()
            .map(|(minute, aggregate)| ClosedMinute { machine: self.machine.clone(), minute, aggregate })
            .collect();
        let writer = self.writer.clone();
        let stats = self.stats.clone();
        let machine = self.machine.clone();
        async move {
            let count = rows.len() as u64;
            match writer.send(WriteMinutes(rows)).await {
                Ok(()) => bump(&stats.minutes_closed, count),
                Err(err) => {
                    tracing::error!(machine = %machine, minutes = count, error = %err, "writer unavailable; closed minutes lost");
                }
            }
        }
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.settings.tick, Self::close_due);
    }
}

impl Handler<AcceptSamples> for Aggregator {
    type Result = ();

    fn handle(&mut self, AcceptSamples(samples): AcceptSamples, _: &mut Self::Context) {
        let mut duplicates = 0;
        let before = self.open.len();
        for sample in &samples {
            if self.open.accept(sample) == Accepted::Duplicate {
                duplicates += 1;
            }
        }
        self.track_open_minutes(before);
        bump(&self.stats.accepted, samples.len() as u64 - duplicates);
        bump(&self.stats.duplicates, duplicates);
    }
}

impl Handler<FlushOpenMinutes> for Aggregator {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: FlushOpenMinutes, _: &mut Self::Context) -> Self::Result {
        let before = self.open.len();
        let open = self.open.take_all();
        self.track_open_minutes(before);
        Box::pin(self.hand_over(open))
    }
}
