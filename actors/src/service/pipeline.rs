//! The pipeline: source, broker and aggregators, everything up to the writer's mailbox,
//! started in the right places and stopped in the right order.

use super::journal_start::{replay, JournalReplay};
use crate::aggregation::{AggregatorSettings, AggregatorShared, ColdIndex, Shard};
use crate::broker::{Broker, BrokerSettings};
use crate::clock::Clock;
use crate::journal::Journal;
use crate::logic::{EpochUnit, TimestampRules, ValidationRules, WrittenMinute};
use crate::messages::{StopIntake, StoreRejections, WriteMinutes};
use crate::source::{InboundSink, MessageSource, SourceError};
use crate::stats::PipelineStats;
use actix::prelude::*;
use fleetagg_config::Config;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the pipeline needs from the configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub broker: BrokerSettings,
    pub aggregator: AggregatorSettings,
    pub inbound_capacity: usize,
    /// Arbiters the aggregators are spread over.
    pub shards: usize,
}

impl PipelineSettings {
    pub fn from_config(config: &Config) -> Self {
        let aggregation = &config.aggregation;
        let rules = ValidationRules {
            max_payload_bytes: config.mqtt.max_payload_bytes,
            timestamps: TimestampRules {
                default_timezone: aggregation.default_timezone,
                epoch_unit: match aggregation.epoch_unit {
                    fleetagg_config::EpochUnit::S => EpochUnit::S,
                    fleetagg_config::EpochUnit::Ms => EpochUnit::Ms,
                },
            },
            future_tolerance: aggregation.future_tolerance,
            max_lateness: aggregation.max_lateness,
        };
        PipelineSettings {
            broker: BrokerSettings {
                rules,
                rejects_per_second: config.rejects.max_per_second,
                panic_after_messages: std::env::var(crate::broker::PANIC_SWITCH)
                    .ok()
                    .and_then(|value| value.parse().ok()),
            },
            aggregator: AggregatorSettings {
                grace: aggregation.grace,
                tick: aggregation.tick,
                remember_written: aggregation.max_lateness,
                writer_backlog_limit: 2 * config.database.batch_max_rows,
                writer_backlog_wait: aggregation.tick,
            },
            inbound_capacity: config.mqtt.inbound_capacity,
            // The CPUs this thread may use: with the threads split (`crate::placement`),
            // the actors' CPUs, the intake's being taken.
            shards: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        }
    }
}

/// What an earlier run left for this one.
#[derive(Debug, Default)]
pub struct Restored {
    /// The journal to append to, and what to replay from it.
    pub journal: Option<JournalReplay>,
    /// Minutes written within `max_lateness` before this start (see
    /// [`crate::logic::seen`]), per machine.
    pub written: Vec<(String, WrittenMinute)>,
}

/// Where the pipeline hands over what leaves it (in the service: the writer).
#[derive(Debug, Clone)]
pub struct PipelineOutputs {
    /// Closed minutes, from the aggregators.
    pub minutes: Recipient<WriteMinutes>,
    /// Rejected messages, from the broker.
    pub rejections: Recipient<StoreRejections>,
}

/// Source, broker and aggregators: everything up to the writer's mailbox.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) broker: Addr<Broker>,
    /// One arbiter per core for the aggregators.
    pub(super) shards: Vec<Arbiter>,
}

impl Pipeline {
    /// Starts the source and the actors; fails only if the source cannot start.
    pub async fn start(
        settings: PipelineSettings,
        source: Box<dyn MessageSource>,
        outputs: PipelineOutputs,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
    ) -> Result<Pipeline, SourceError> {
        Self::start_restored(settings, source, outputs, clock, stats, Restored::default()).await
    }

    /// [`Pipeline::start`] with what an earlier run left: with a journal, every message
    /// is appended to it before it is processed, and what it recovered is replayed before
    /// the source connects; the minutes written within `max_lateness` go to their
    /// aggregators first.
    pub async fn start_restored(
        settings: PipelineSettings,
        mut source: Box<dyn MessageSource>,
        outputs: PipelineOutputs,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
        Restored { journal, written }: Restored,
    ) -> Result<Pipeline, SourceError> {
        let shards: Vec<Arbiter> = (0..settings.shards.max(1)).map(|_| Arbiter::new()).collect();
        for (core, shard) in shards.iter().enumerate() {
            name_thread(shard, format!("fleetagg-aggr-{core}"));
        }
        let handles: Vec<ArbiterHandle> = shards.iter().map(Arbiter::handle).collect();
        let appender = journal.as_ref().map(|replay| replay.journal.clone());
        let (sink, inbound) = InboundSink::channel(settings.inbound_capacity, appender, stats.clone());
        // Creates the client and its callbacks; it connects only when awaited, after the
        // replay.
        let starting = source.start(sink.clone(), stats.clone());
        // The broker (the channel's consumer) starts before the source has connected: a
        // persistent session's backlog arrives right after CONNACK, and with nobody
        // draining the channel paho's receive thread would block on it before reading the
        // SUBACK that `starting` waits for.
        let shared = Arc::new(AggregatorShared {
            settings: settings.aggregator,
            clock: clock.clone(),
            writer: outputs.minutes,
            stats: stats.clone(),
            journal: journal.as_ref().map(|replay| replay.journal.clone()),
            cold: journal.as_ref().and_then(|replay| open_cold_index(&replay.journal)),
            replaying_since: AtomicI64::new(i64::MAX),
        });
        let shard_addresses = handles
            .iter()
            .map(|arbiter| {
                let shared = shared.clone();
                Shard::start_in_arbiter(arbiter, move |_| Shard::new(shared))
            })
            .collect();
        let broker = Broker::new(
            source,
            inbound,
            settings.broker,
            shard_addresses,
            outputs.rejections,
            clock,
            stats.clone(),
        )
        .with_written(written);
        let (broker, recovered) = match journal {
            Some(JournalReplay { journal, recovered, filter }) => {
                (broker.with_journal(journal, filter).start(), Some(recovered))
            }
            None => (broker.start(), None),
        };
        if let Some(recovered) = recovered {
            let since = recovered.oldest_received_micros.unwrap_or(i64::MAX);
            shared.replaying_since.store(since, Ordering::Relaxed);
            replay(&recovered, &sink, &stats).await;
            shared.replaying_since.store(i64::MAX, Ordering::Relaxed);
        }
        if let Err(err) = starting.await {
            let _ = broker.send(StopIntake).await;
            stop_arbiters(shards);
            return Err(err);
        }
        Ok(Pipeline { broker, shards })
    }

    /// Stops taking messages and hands everything received to the writer.
    pub async fn stop(self) {
        self.stop_by(None).await;
    }

    /// [`Pipeline::stop`], giving up at `deadline`. False when the deadline came first
    /// (the writer did not make room in time); the aggregator threads are stopped either
    /// way.
    pub async fn stop_by(self, deadline: Option<Instant>) -> bool {
        // An error means the broker already stopped after draining: nothing is left.
        let intake = self.broker.send(StopIntake);
        let drained = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline.into(), intake).await.is_ok(),
            None => {
                let _ = intake.await;
                true
            }
        };
        tracing::debug!(drained, "intake stopped; stopping the aggregator arbiters");
        stop_arbiters(self.shards);
        drained
    }
}

/// Names an arbiter's thread (what `top -H`, `pidstat -t` and the benchmark's per-thread
/// CPU show; actix names them all `actix-rt|system…`, cut to 15 bytes). Linux only:
/// elsewhere the write fails and the name stays.
pub(super) fn name_thread(arbiter: &Arbiter, name: String) {
    arbiter.spawn_fn(move || {
        let _ = std::fs::write("/proc/thread-self/comm", name);
    });
}

pub(super) fn stop_arbiters(arbiters: Vec<Arbiter>) {
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
}

/// The cold part of the duplicate index, beside the journal (whose lock keeps a second
/// instance out of both). Without it the index stays in memory: correct, only larger.
fn open_cold_index(journal: &Journal) -> Option<ColdIndex> {
    let dir = journal.dir().join("written-index");
    match ColdIndex::open(&dir) {
        Ok(cold) => Some(cold),
        Err(err) => {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot open the cold index; the duplicate index stays in memory");
            None
        }
    }
}
