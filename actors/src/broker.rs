//! The broker actor: owns the message source, checks every message and routes accepted
//! samples to the aggregator of their machine.
//!
//! Messages are read from the inbound channel in batches; each batch is validated,
//! grouped by machine and delivered with awaited sends inside `ctx.wait`, so the next
//! batch is read only once the aggregators took the previous one. That is where
//! back-pressure turns into a full inbound channel, and then into a blocked MQTT client.

use crate::aggregator::{Aggregator, AggregatorSettings};
use crate::clock::Clock;
use crate::logic::{validate, RejectLimiter, RejectedMessage, Sample, ValidationRules};
use crate::messages::Ping;
use crate::messages::{AcceptSamples, FlushOpenMinutes, StopIntake, StoreRejections, WriteMinutes};
use crate::monitoring::health_silence as silence;
use crate::monitoring::ReadinessSettings;
use crate::source::{InboundMessage, MessageSource};
use crate::stats::{bump, mark_now, PipelineStats};
use actix::prelude::*;
use futures_util::future::join_all;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use tokio::sync::{mpsc, oneshot};

/// Most messages validated and routed per batch.
const BATCH_MESSAGES: usize = 1024;

/// Where the broker sends what it does not keep.
#[derive(Debug, Clone)]
pub struct BrokerOutputs {
    pub minutes: Recipient<WriteMinutes>,
    pub rejections: Recipient<StoreRejections>,
}

#[derive(Debug)]
pub struct Broker {
    source: Box<dyn MessageSource>,
    /// Taken when the actor starts and turned into its stream of batches.
    inbound: Option<mpsc::Receiver<InboundMessage>>,
    rules: ValidationRules,
    limiter: RejectLimiter,
    aggregator_settings: AggregatorSettings,
    /// One arbiter per core; a machine always lands on the same one.
    shards: Vec<ArbiterHandle>,
    aggregators: FxHashMap<Arc<str>, Addr<Aggregator>>,
    outputs: BrokerOutputs,
    clock: Arc<dyn Clock>,
    stats: Arc<PipelineStats>,
    /// Who waits for the intake to be drained (see [`StopIntake`]).
    on_drained: Vec<oneshot::Sender<()>>,
    drained: bool,
    idle_alert: Option<std::time::Duration>,
    /// The watchdog warned about silence; it says so again when messages resume.
    silence_reported: bool,
}

/// What a broker needs besides its source and channel.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    pub rules: ValidationRules,
    pub rejects_per_second: u32,
    pub aggregator: AggregatorSettings,
    /// `mqtt.idle_alert`: warn when connected but silent for this long.
    pub idle_alert: Option<std::time::Duration>,
}

impl Broker {
    pub fn new(
        source: Box<dyn MessageSource>,
        inbound: mpsc::Receiver<InboundMessage>,
        settings: BrokerSettings,
        shards: Vec<ArbiterHandle>,
        outputs: BrokerOutputs,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Broker {
            source,
            inbound: Some(inbound),
            rules: settings.rules,
            limiter: RejectLimiter::new(settings.rejects_per_second),
            aggregator_settings: settings.aggregator,
            shards,
            aggregators: FxHashMap::default(),
            outputs,
            clock,
            stats,
            on_drained: Vec::new(),
            drained: false,
            idle_alert: settings.idle_alert,
            silence_reported: false,
        }
    }

    /// The "connected but silently stopped" failure: warn once when it starts, and once
    /// when messages flow again (`/readyz` reports it too).
    fn watch_silence(&mut self) {
        let settings = ReadinessSettings { idle_alert: self.idle_alert };
        let now = chrono::Utc::now().timestamp_micros();
        match (silence(&self.stats, &settings, now), self.silence_reported) {
            (Some(silent), false) => {
                self.silence_reported = true;
                tracing::warn!(silent_for = ?silent, "connected to the MQTT broker but no message arrives");
            }
            (None, true) => {
                self.silence_reported = false;
                tracing::info!("messages arrive again");
            }
            _ => {}
        }
    }

    fn aggregator_for(&mut self, machine: String) -> Addr<Aggregator> {
        if let Some(address) = self.aggregators.get(machine.as_str()) {
            return address.clone();
        }
        let machine: Arc<str> = machine.into();
        let shard = FxBuildHasher.hash_one(&machine) as usize % self.shards.len().max(1);
        let (settings, clock, writer, stats, name) = (
            self.aggregator_settings,
            self.clock.clone(),
            self.outputs.minutes.clone(),
            self.stats.clone(),
            machine.clone(),
        );
        let create = move |_: &mut Context<Aggregator>| Aggregator::new(name, settings, clock, writer, stats);
        let address = match self.shards.get(shard) {
            Some(arbiter) => Aggregator::start_in_arbiter(arbiter, create),
            None => Aggregator::create(create),
        };
        self.aggregators.insert(machine, address.clone());
        address
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(receiver) = self.inbound.take() {
            ctx.add_stream(Batches { receiver, max: BATCH_MESSAGES });
        }
        if let Some(limit) = self.idle_alert {
            let every =
                (limit / 4).clamp(std::time::Duration::from_millis(100), std::time::Duration::from_secs(15));
            ctx.run_interval(every, |broker, _| broker.watch_silence());
        }
    }
}

impl StreamHandler<Vec<InboundMessage>> for Broker {
    fn handle(&mut self, batch: Vec<InboundMessage>, ctx: &mut Self::Context) {
        let now = self.clock.now();
        bump(&self.stats.received, batch.len() as u64);
        mark_now(&self.stats.last_message_micros);
        let mut by_machine: FxHashMap<String, Vec<Sample>> = FxHashMap::default();
        let mut rejections = Vec::new();
        for message in batch {
            match validate(&message.payload, now, &self.rules) {
                Ok(telemetry) => by_machine.entry(telemetry.machine).or_default().push(telemetry.sample),
                Err(rejection) => {
                    self.stats.count_rejected(rejection.reason);
                    tracing::debug!(topic = %message.topic, reason = %rejection.reason, detail = %rejection.detail, "message rejected");
                    if self.limiter.allow(now) {
                        rejections.push(RejectedMessage::new(
                            message.topic,
                            rejection.reason,
                            rejection.detail,
                            &message.payload,
                        ));
                    } else {
                        bump(&self.stats.rejects_not_stored, 1);
                    }
                }
            }
        }

        let deliveries: Vec<_> = by_machine
            .into_iter()
            .map(|(machine, samples)| {
                let aggregator = self.aggregator_for(machine);
                let count = samples.len() as u64;
                async move { aggregator.send(AcceptSamples(samples)).await.map_err(|_| count) }
            })
            .collect();
        let stored =
            (!rejections.is_empty()).then(|| self.outputs.rejections.send(StoreRejections(rejections)));
        let stats = self.stats.clone();
        ctx.wait(
            async move {
                for lost in join_all(deliveries).await.into_iter().filter_map(Result::err) {
                    bump(&stats.samples_lost, lost);
                    tracing::error!(samples = lost, "aggregator unavailable; samples lost");
                }
                if let Some(stored) = stored {
                    if stored.await.is_err() {
                        tracing::error!("writer unavailable; rejected messages not stored");
                    }
                }
            }
            .into_actor(self),
        );
    }

    /// The source closed the channel: every received message has been routed. Now
    /// every aggregator hands its open minutes to the writer.
    fn finished(&mut self, ctx: &mut Self::Context) {
        let flushes = join_all(self.aggregators.values().map(|aggregator| aggregator.send(FlushOpenMinutes)));
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

impl Handler<Ping> for Broker {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

/// The inbound channel as a stream of batches of whatever is ready, up to `max`.
struct Batches {
    receiver: mpsc::Receiver<InboundMessage>,
    max: usize,
}

impl futures_util::Stream for Batches {
    type Item = Vec<InboundMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let mut batch = Vec::new();
        match this.receiver.poll_recv_many(cx, &mut batch, this.max) {
            Poll::Ready(0) => Poll::Ready(None),
            Poll::Ready(_) => Poll::Ready(Some(batch)),
            Poll::Pending => Poll::Pending,
        }
    }
}
