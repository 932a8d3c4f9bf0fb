//! The broker actor: owns the message source, checks every message and routes accepted
//! samples to the aggregator of their machine.
//!
//! Messages are read from the inbound channel in batches; each batch is validated and
//! grouped by core and machine ([`routes`]), and each core's share goes in one message to
//! the [`Shard`] actor there, which hands each machine's samples to its aggregator.
//!
//! Delivery policy: `try_send`, which costs no reply channel and no wait while the shard
//! keeps up. When a shard's mailbox is full, that delivery is awaited (`send().await`
//! inside `ctx.wait`) and the broker reads no further batch until it is taken: that is
//! where back-pressure turns into a full inbound channel, and then into a blocked MQTT
//! client. Nothing is dropped.
//!
//! A batch smaller than [`BATCH_MESSAGES`] means the broker is ahead of the source; it
//! then lingers for [`BATCH_LINGER`] before reading again, so that at tens of thousands
//! of messages per second it wakes once per batch instead of once per message (each wake
//! is a system call on the delivering thread and on this one).

mod routes;

use crate::aggregation::Shard;
use crate::clock::Clock;
use crate::delivery::Deliveries;
use crate::journal::{Journal, ReplayFilter};
use crate::logic::validate::validate_received;
use crate::logic::{JournalTally, RejectLimiter, RejectedMessage, ValidationRules, WrittenMinute};
use crate::messages::{FlushOpenMinutes, RememberWrittenRows, StopIntake, StoreRejections};
use crate::recent::SILENT_MACHINES;
use crate::source::{InboundMessage, MessageSource};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use futures_util::future::join_all;
use routes::RoutingTable;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::sync::{mpsc, oneshot};

/// Most messages validated and routed per batch.
pub const BATCH_MESSAGES: usize = 1024;
/// How often the machines silent the longest are looked for (status page).
const SILENT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// How long the broker waits after a partial batch before reading the next one.
pub const BATCH_LINGER: std::time::Duration = std::time::Duration::from_millis(1);

#[derive(Debug)]
pub struct Broker {
    source: Box<dyn MessageSource>,
    /// Taken when the actor starts and turned into its stream of batches.
    inbound: Option<mpsc::Receiver<InboundMessage>>,
    rules: ValidationRules,
    limiter: RejectLimiter,
    /// One shard actor per aggregator arbiter (core); a machine always lands on the same.
    shards: Vec<Addr<Shard>>,
    routes: RoutingTable,
    /// Where rejected messages go to be stored (the writer).
    rejections: Recipient<StoreRejections>,
    clock: Arc<dyn Clock>,
    stats: Arc<PipelineStats>,
    /// Who waits for the intake to be drained (see [`StopIntake`]).
    on_drained: Vec<oneshot::Sender<()>>,
    drained: bool,
    /// Where messages finished here (a rejection not stored) are released.
    journal: Option<Arc<Journal>>,
    /// During a replay: what committed rows already count, so it is not counted again.
    replay: Option<ReplayFilter>,
    /// See [`BrokerSettings::panic_after_messages`].
    panic_after_messages: Option<u64>,
    /// Minutes written before this start, routed to their aggregators before anything
    /// else (see [`Broker::with_written`]).
    written: Vec<(String, WrittenMinute)>,
}

/// What a broker needs besides its source and channel.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    pub rules: ValidationRules,
    pub rejects_per_second: u32,
    /// Test-only: panic once this many messages were received (see [`PANIC_SWITCH`]), so
    /// the tests can prove a panic at the worst moment loses nothing. `None` in service.
    pub panic_after_messages: Option<u64>,
}

/// The environment variable that sets [`BrokerSettings::panic_after_messages`]: the
/// durability tests' way to crash the real binary on its data path.
pub const PANIC_SWITCH: &str = "FLEETAGG_TEST_PANIC_AFTER_MESSAGES";

impl Broker {
    /// A broker routing to `shards` (one per aggregator arbiter, started by the service)
    /// and sending rejections to `rejections`.
    pub fn new(
        source: Box<dyn MessageSource>,
        inbound: mpsc::Receiver<InboundMessage>,
        settings: BrokerSettings,
        shards: Vec<Addr<Shard>>,
        rejections: Recipient<StoreRejections>,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Broker {
            source,
            inbound: Some(inbound),
            rules: settings.rules,
            limiter: RejectLimiter::new(settings.rejects_per_second),
            routes: RoutingTable::new(shards.len()),
            shards,
            rejections,
            clock,
            stats,
            on_drained: Vec::new(),
            drained: false,
            journal: None,
            replay: None,
            panic_after_messages: settings.panic_after_messages,
            written: Vec::new(),
        }
    }

    /// Hands each machine's aggregator the minutes it wrote within `max_lateness` before
    /// this start, before the first sample: a resend of one of their samples is then a
    /// duplicate, not a second count.
    pub fn with_written(mut self, written: Vec<(String, WrittenMinute)>) -> Self {
        self.written = written;
        self
    }

    /// Releases what this actor finishes in `journal`, and skips replayed messages that
    /// `replay` says are already committed.
    pub fn with_journal(mut self, journal: Arc<Journal>, replay: ReplayFilter) -> Self {
        self.journal = Some(journal);
        self.replay = Some(replay);
        self
    }

    /// A replayed message's sample whose row is committed already: finished here.
    fn already_committed(&self, machine: &str, sample: &crate::logic::Sample) -> bool {
        let Some(replay) = &self.replay else { return false };
        if !replay.sample_committed(machine, sample.ts.minute().index(), sample.mark.seq) {
            return false;
        }
        bump(&self.stats.journal_replay_skipped, 1);
        self.release(sample.mark);
        true
    }

    fn release(&self, mark: crate::logic::JournalMark) {
        if let Some(journal) = &self.journal {
            journal.release_mark(mark);
        }
    }

    /// Hands minutes written before this start to their aggregators; the broker takes
    /// no batch until they are delivered.
    fn route_written(&mut self, written: Vec<(String, WrittenMinute)>, ctx: &mut Context<Self>) {
        if written.is_empty() {
            return;
        }
        for (machine, minute) in written {
            self.routes.add_written(&machine, minute);
        }
        let delivered = self.deliver_batch().finish(self.stats.clone());
        ctx.wait(delivered.into_actor(self));
    }

    /// Hands each shard its share of the batch (see [`crate::delivery`] for the policy).
    fn deliver_batch(&mut self) -> Deliveries {
        let mut deliveries = Deliveries::default();
        for (shard, batch) in self.routes.take_batch() {
            let samples = batch.deliveries.iter().map(|(_, samples)| samples.len() as u64).sum::<u64>();
            if let Some(address) = self.shards.get(shard) {
                deliveries.deliver(address, batch, samples, &self.stats);
            }
        }
        deliveries
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Waited for before the first batch is taken from the stream below.
        let written = std::mem::take(&mut self.written);
        self.route_written(written, ctx);
        if let Some(receiver) = self.inbound.take() {
            ctx.add_stream(Batches { receiver, max: BATCH_MESSAGES, stats: self.stats.clone() });
        }
        ctx.run_interval(SILENT_EVERY, |broker, _| {
            broker.stats.recent.set_silent(broker.routes.silent_longest(SILENT_MACHINES));
        });
    }
}

impl StreamHandler<Vec<InboundMessage>> for Broker {
    fn handle(&mut self, batch: Vec<InboundMessage>, ctx: &mut Self::Context) {
        let now = self.clock.now();
        bump(&self.stats.received, batch.len() as u64);
        if let Some(limit) = self.panic_after_messages {
            let received = self.stats.received.load(std::sync::atomic::Ordering::Relaxed);
            // What an unexpected bug would do here: the panic hook exits with code 70.
            assert!(received < limit, "injected panic after {received} messages ({PANIC_SWITCH})");
        }
        self.stats.mark_now(&self.stats.last_message_micros);
        self.routes.start_batch(now.micros());
        let lingering = batch.len() < BATCH_MESSAGES;
        let mut rejections = Vec::new();
        for message in batch {
            // On the length as received: a payload over the limit is held cut.
            let mark = message.mark;
            if self.replay.as_ref().is_some_and(|replay| !replay.covers(mark.seq)) {
                // The first message received after the replay (they arrive in order):
                // the filter has done its work, and its memory goes.
                self.replay = None;
            }
            let received = message.received_at.unwrap_or(now);
            match validate_received(&message.payload, message.payload_len, received, &self.rules) {
                Ok(mut telemetry) => {
                    telemetry.sample.mark = mark;
                    if !self.already_committed(&telemetry.machine, &telemetry.sample) {
                        self.routes.add(&telemetry.machine, telemetry.sample);
                    }
                }
                Err(rejection) => {
                    // A replayed rejection that was stored before the crash: neither
                    // counted nor stored again.
                    if self.replay.as_ref().is_some_and(|replay| replay.rejection_committed(mark.seq)) {
                        self.release(mark);
                        continue;
                    }
                    self.stats.count_rejected(rejection.reason);
                    let at = now.micros();
                    let recent = &self.stats.recent;
                    recent.rejected(
                        rejection.reason,
                        at,
                        &message.topic,
                        &rejection.detail,
                        &message.payload,
                    );
                    tracing::debug!(topic = %message.topic, reason = %rejection.reason, detail = %rejection.detail, "message rejected");
                    if self.limiter.allow(now) {
                        let mut row = RejectedMessage::new(
                            message.topic,
                            rejection.reason,
                            rejection.detail,
                            &message.payload,
                        );
                        row.tally = JournalTally::of(mark);
                        rejections.push(row);
                    } else {
                        bump(&self.stats.rejects_not_stored, 1);
                        self.release(mark);
                    }
                }
            }
        }

        let waiting = self.deliver_batch();
        if waiting.is_empty() && rejections.is_empty() && !lingering {
            return;
        }
        let stored = (!rejections.is_empty()).then(|| self.rejections.send(StoreRejections(rejections)));
        let stats = self.stats.clone();
        ctx.wait(
            async move {
                waiting.finish(stats).await;
                if let Some(stored) = stored {
                    if stored.await.is_err() {
                        tracing::error!("writer unavailable; rejected messages not stored");
                    }
                }
                if lingering {
                    actix_rt::time::sleep(BATCH_LINGER).await;
                }
            }
            .into_actor(self),
        );
    }

    /// The source closed the channel: every received message has been routed. Now
    /// every aggregator hands its open minutes to the writer.
    fn finished(&mut self, ctx: &mut Self::Context) {
        let flushes = join_all(self.shards.iter().map(|shard| shard.send(FlushOpenMinutes)));
        ctx.wait(flushes.into_actor(self).map(|results, broker, ctx| {
            let failed = results.iter().filter(|result| result.is_err()).count();
            if failed > 0 {
                tracing::error!(aggregators = failed, "aggregators did not flush their open minutes");
            }
            broker.drained = true;
            for waiter in broker.on_drained.drain(..) {
                let _ = waiter.send(());
            }
            ctx.stop();
        }));
    }
}

impl Handler<RememberWrittenRows> for Broker {
    type Result = ();

    fn handle(&mut self, RememberWrittenRows(written): RememberWrittenRows, ctx: &mut Self::Context) {
        self.route_written(written, ctx);
    }
}

impl Handler<StopIntake> for Broker {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopIntake, _: &mut Self::Context) -> Self::Result {
        let (done, waiting) = oneshot::channel();
        if self.drained {
            let _ = done.send(());
        } else {
            self.on_drained.push(done);
        }
        // Spawned, not awaited: the stream must keep draining while the source
        // disconnects, or a delivery blocked on a full channel would never return.
        actix_rt::spawn(self.source.stop());
        Box::pin(async move {
            let _ = waiting.await;
        })
    }
}

/// The inbound channel as a stream of batches of whatever is ready, up to `max`.
struct Batches {
    receiver: mpsc::Receiver<InboundMessage>,
    max: usize,
    /// Where the channel's fill after each batch is shown (`inbound_queued`).
    stats: Arc<PipelineStats>,
}

impl futures_util::Stream for Batches {
    type Item = Vec<InboundMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut batch = Vec::new();
        match this.receiver.poll_recv_many(cx, &mut batch, this.max) {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => {
                this.stats
                    .inbound_queued
                    .store(this.receiver.len() as u64, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Some(batch))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
