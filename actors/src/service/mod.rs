//! Wiring: starts the actors in the right places and stops them in the right order.
//!
//! Start: writer (own arbiter) → aggregator arbiters (one per core) → source → broker.
//! Stop: the broker stops the source and routes what was received, every aggregator hands
//! its open minutes (partial ones included: the upsert merges them later) to the writer,
//! then the writer drains its buffer within the shutdown deadline.

use crate::aggregation::{AggregatorSettings, AggregatorShared, Shard};
use crate::backoff::{self, Retries};
use crate::broker::{Broker, BrokerSettings};
use crate::clock::Clock;
use crate::journal::{self, Journal, JournalError, Recovered, ReplayFilter};
use crate::logic::{EpochUnit, TimestampRules, ValidationRules};
use crate::messages::Credentials;
use crate::messages::{Drain, DrainReport, StopIntake, StoreRejections, SubscribeCredentials, WriteMinutes};
use crate::monitoring::{
    self, Heartbeats, ListenError, MonitorServer, MonitorState, ReadinessSettings, StatusLimits,
};
use crate::secrets::{self, SecretError, SecretKeeper};
use crate::source::{InboundSink, MessageSource, SourceError};
use crate::stats::PipelineStats;
use crate::writer::{Connector, DbError, Writer, WriterCredentials, WriterSettings};
use actix::prelude::*;
use fleetagg_config::Config;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Database(#[from] DbError),
    #[error("the database password could not be fetched at start-up: {0}")]
    Secret(#[from] SecretError),
    #[error("metrics listener: {0}")]
    Monitor(#[from] ListenError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl ServiceError {
    /// Whether a later start may succeed without a change of configuration (the binary
    /// exits 75 then, 1 otherwise).
    pub fn is_retriable(&self) -> bool {
        match self {
            ServiceError::Source(err) => err.is_retriable(),
            ServiceError::Database(err) => err.is_retriable(),
            ServiceError::Secret(_) => true,
            ServiceError::Monitor(_) => false,
            ServiceError::Journal(err) => err.is_retriable(),
        }
    }
}

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
            aggregator: AggregatorSettings { grace: aggregation.grace, tick: aggregation.tick },
            inbound_capacity: config.mqtt.inbound_capacity,
            shards: std::thread::available_parallelism().map_or(1, |cores| cores.get()),
        }
    }
}

/// Where the pipeline hands over what leaves it (in the service: the writer).
#[derive(Debug, Clone)]
pub struct PipelineOutputs {
    /// Closed minutes, from the aggregators.
    pub minutes: Recipient<WriteMinutes>,
    /// Rejected messages, from the broker.
    pub rejections: Recipient<StoreRejections>,
}

/// A journal to append to, and what to replay from it before the source starts.
#[derive(Debug)]
pub struct JournalReplay {
    pub journal: Arc<Journal>,
    pub recovered: Recovered,
    pub filter: ReplayFilter,
}

/// Source, broker and aggregators: everything up to the writer's mailbox.
#[derive(Debug)]
pub struct Pipeline {
    pub(crate) broker: Addr<Broker>,
    /// One arbiter per core for the aggregators.
    shards: Vec<Arbiter>,
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
        Self::start_journaled(settings, source, outputs, clock, stats, None).await
    }

    /// [`Pipeline::start`] with a journal: every message is appended to it before it is
    /// processed, and what it recovered is replayed before the source connects.
    pub async fn start_journaled(
        settings: PipelineSettings,
        mut source: Box<dyn MessageSource>,
        outputs: PipelineOutputs,
        clock: Arc<dyn Clock>,
        stats: Arc<PipelineStats>,
        journal: Option<JournalReplay>,
    ) -> Result<Pipeline, SourceError> {
        let shards: Vec<Arbiter> = (0..settings.shards.max(1)).map(|_| Arbiter::new()).collect();
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
        );
        let (broker, recovered) = match journal {
            Some(JournalReplay { journal, recovered, filter }) => {
                (broker.with_journal(journal, filter).start(), Some(recovered))
            }
            None => (broker.start(), None),
        };
        if let Some(recovered) = recovered {
            replay(&recovered, &sink, &stats).await;
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

/// Feeds what the journal recovered through the pipeline, as if it had just arrived
/// (the broker skips what committed rows already count).
async fn replay(recovered: &Recovered, sink: &InboundSink, stats: &PipelineStats) {
    if recovered.messages == 0 {
        return;
    }
    tracing::info!(messages = recovered.messages, "replaying the journal");
    let mut segments = recovered.messages();
    while let Some(messages) = segments.next_segment() {
        for message in messages {
            if !sink.deliver(message).await {
                return;
            }
            crate::stats::bump(&stats.journal_replayed, 1);
        }
    }
    tracing::info!(
        messages = stats.journal_replayed.load(Ordering::Relaxed),
        already_committed = stats.journal_replay_skipped.load(Ordering::Relaxed),
        "journal replayed"
    );
}

fn stop_arbiters(arbiters: Vec<Arbiter>) {
    for arbiter in arbiters {
        arbiter.stop();
        let _ = arbiter.join();
    }
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// False when the intake did not drain before the deadline.
    pub intake_drained: bool,
    /// Minutes the aggregators still held when the intake was cut off (0 when drained).
    pub minutes_left_in_aggregators: u64,
    pub writer: DrainReport,
}

impl ShutdownReport {
    /// True when everything accepted was written.
    pub fn is_complete(&self) -> bool {
        self.intake_drained && self.writer.is_complete()
    }

    /// What a stop that cannot wait any longer (a second signal) knows from the gauges.
    pub fn from_gauges(stats: &PipelineStats) -> Self {
        ShutdownReport {
            intake_drained: false,
            minutes_left_in_aggregators: u64::try_from(stats.open_minutes.load(Ordering::Relaxed))
                .unwrap_or(0),
            writer: DrainReport::from_gauges(stats),
        }
    }
}

/// The whole service: pipeline plus writer.
#[derive(Debug)]
pub struct Service {
    pipeline: Pipeline,
    writer: Addr<Writer>,
    writer_arbiter: Arbiter,
    stats: Arc<PipelineStats>,
    monitor: Option<Monitor>,
    /// Warns when connected but silent (`mqtt.idle_alert`).
    watchdog: Option<actix_rt::task::JoinHandle<()>>,
    /// Emptied at a stop that wrote everything.
    journal: Option<Arc<Journal>>,
}

/// What `start_actors` hands back: the pipeline, the writer, the silence watchdog and
/// the journal.
type StartedActors = (Pipeline, Addr<Writer>, Option<actix_rt::task::JoinHandle<()>>, Option<Arc<Journal>>);

/// The HTTP listener.
#[derive(Debug)]
struct Monitor {
    /// What it reads; actor threads add their heartbeats as they start.
    state: Arc<MonitorState>,
    server: MonitorServer,
}

fn start_monitor(config: &Config, stats: &Arc<PipelineStats>) -> Result<Option<Monitor>, ServiceError> {
    let Some(address) = config.metrics.address() else {
        return Ok(None);
    };
    let limits = StatusLimits {
        inbound_capacity: config.mqtt.inbound_capacity,
        max_buffered_rows: config.database.max_buffered_rows,
        max_buffered_rejections: config.rejects.max_buffered,
    };
    let state = Arc::new(MonitorState::new(
        stats.clone(),
        ReadinessSettings { idle_alert: config.mqtt.idle_alert },
        limits,
        Heartbeats::default(),
    ));
    // The System arbiter runs the broker; the listener has a thread of its own.
    state.heartbeats.watch("broker", &Arbiter::current());
    let server = MonitorServer::start(address, state.clone())?;
    tracing::info!(address = %server.address(), "metrics listening (status page at /; /api/status, /metrics, /healthz, /readyz)");
    Ok(Some(Monitor { state, server }))
}

fn stop_monitor(monitor: Option<Monitor>) {
    if let Some(monitor) = monitor {
        monitor.server.stop();
    }
}

impl Service {
    pub async fn start(
        config: &Config,
        source: Box<dyn MessageSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Service, ServiceError> {
        let stats = Arc::new(PipelineStats::default());
        let connector = Connector::new(&config.database.url)?
            .with_statements(config.database.statements)
            .with_tls(config.database.tls.clone());
        // First, so that /readyz can say what start-up is waiting for.
        let monitor = start_monitor(config, &stats)?;
        let writer_arbiter = Arbiter::new();
        let started =
            Self::start_actors(config, source, clock, &stats, connector, &writer_arbiter, monitor.as_ref())
                .await;
        match started {
            Ok((pipeline, writer, watchdog, journal)) => {
                Ok(Service { pipeline, writer, writer_arbiter, stats, monitor, watchdog, journal })
            }
            Err(err) => {
                stop_arbiters(vec![writer_arbiter]);
                stop_monitor(monitor);
                Err(err)
            }
        }
    }

    /// The secret keeper and the writer on `writer_arbiter`, then the pipeline; the
    /// caller cleans up when this fails.
    async fn start_actors(
        config: &Config,
        source: Box<dyn MessageSource>,
        clock: Arc<dyn Clock>,
        stats: &Arc<PipelineStats>,
        connector: Connector,
        writer_arbiter: &Arbiter,
        monitor: Option<&Monitor>,
    ) -> Result<StartedActors, ServiceError> {
        let settings = WriterSettings {
            batch_max_rows: config.database.batch_max_rows,
            flush_interval: config.database.flush_interval,
            max_buffered_rows: config.database.max_buffered_rows,
            max_buffered_rejections: config.rejects.max_buffered,
        };
        let credentials = match &config.database.password {
            Some(password) => {
                let source = secrets::build_source(password).await;
                let current = secrets::fetch_at_start(source.as_ref()).await?;
                tracing::info!(source = %source.describe(), user = ?current.user, "database secret fetched");
                stats.secret_configured.store(true, Ordering::Relaxed);
                stats.mark_now(&stats.secret_last_ok_micros);
                // Stale after two missed refreshes (failed fetches retry faster meanwhile).
                let max_age = password.refresh_interval.as_secs().saturating_mul(2).saturating_add(60);
                stats.secret_max_age_seconds.store(max_age, Ordering::Relaxed);
                let (refresh, keeper_stats, initial) =
                    (password.refresh_interval, stats.clone(), current.clone());
                let keeper = SecretKeeper::start_in_arbiter(&writer_arbiter.handle(), move |_| {
                    SecretKeeper::new(source, initial, refresh, keeper_stats)
                });
                Some((keeper, current))
            }
            None => None,
        };
        let journal =
            open_journal(config, &connector, credentials.as_ref().map(|(_, current)| current), stats).await?;
        let writer_journal = journal.as_ref().map(|replay| replay.journal.clone());
        let writer_journal_handle = writer_journal.clone();
        let writer_stats = stats.clone();
        let writer_credentials = credentials.as_ref().map(|(keeper, current)| WriterCredentials {
            current: current.clone(),
            keeper: keeper.clone().recipient(),
        });
        // Supervised: a writer that stops on a broken connection is restarted with its
        // state (the buffered rows) and its mailbox intact.
        let writer = Supervisor::start_in_arbiter(&writer_arbiter.handle(), move |_| {
            Writer::new(connector, writer_credentials, settings, writer_stats).with_journal(writer_journal)
        });
        if let Some((keeper, _)) = &credentials {
            // Control path, once at start-up.
            let _ = keeper.send(SubscribeCredentials(writer.clone().recipient())).await;
        }
        if let Some(monitor) = monitor {
            monitor.state.heartbeats.watch("writer", &writer_arbiter.handle());
        }
        let outputs =
            PipelineOutputs { minutes: writer.clone().recipient(), rejections: writer.clone().recipient() };
        let settings = PipelineSettings::from_config(config);
        let pipeline =
            Pipeline::start_journaled(settings, source, outputs, clock.clone(), stats.clone(), journal)
                .await?;
        if let Some(monitor) = monitor {
            for (core, shard) in pipeline.shards.iter().enumerate() {
                monitor.state.heartbeats.watch(format!("aggregators-{core}"), &shard.handle());
            }
        }
        let watchdog = monitoring::spawn_silence_watchdog(stats.clone(), config.mqtt.idle_alert, clock);
        Ok((pipeline, writer, watchdog, writer_journal_handle))
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, when enabled.
    pub fn monitor_address(&self) -> Option<std::net::SocketAddr> {
        self.monitor.as_ref().map(|monitor| monitor.server.address())
    }

    pub fn stats(&self) -> Arc<PipelineStats> {
        self.stats.clone()
    }

    /// Stops intake, flushes every open minute and drains the writer, by `deadline`,
    /// whatever state the writer is in: its drain cancels an attempt still in flight at
    /// the deadline, and a writer that does not answer at all is read from the gauges.
    pub async fn shutdown(self, deadline: Instant) -> ShutdownReport {
        let intake_drained = self.pipeline.stop_by(Some(deadline)).await;
        let minutes_left_in_aggregators = if intake_drained {
            0
        } else {
            u64::try_from(self.stats.open_minutes.load(Ordering::Relaxed)).unwrap_or(0)
        };
        tracing::debug!(intake_drained, "draining the writer");
        let answer = tokio::time::timeout_at(
            (deadline + DRAIN_ANSWER_MARGIN).into(),
            self.writer.send(Drain { deadline }),
        );
        let writer = match answer.await {
            Ok(Ok(report)) => report,
            _ => {
                tracing::error!("the writer did not answer the drain; reporting what it last held");
                DrainReport::from_gauges(&self.stats)
            }
        };
        tracing::debug!(?writer, "writer drained");
        if let Some(journal) = &self.journal {
            if intake_drained && writer.is_complete() && journal.close_if_finished() {
                tracing::info!(dir = %journal.dir().display(), "journal emptied: everything it held is committed");
            }
        }
        stop_arbiters(vec![self.writer_arbiter]);
        stop_monitor(self.monitor);
        if let Some(watchdog) = self.watchdog {
            watchdog.abort();
        }
        ShutdownReport { intake_drained, minutes_left_in_aggregators, writer }
    }
}

/// Opens `[journal]` when enabled, and works out what its replay must skip: the batches
/// among its intents that PostgreSQL's ledger holds (so a journal with intents needs
/// the database at start-up; without, none is asked).
async fn open_journal(
    config: &Config,
    connector: &Connector,
    credentials: Option<&Credentials>,
    stats: &Arc<PipelineStats>,
) -> Result<Option<JournalReplay>, ServiceError> {
    let settings = &config.journal;
    if !settings.enabled {
        return Ok(None);
    }
    let identity = format!("client_id={} database={}", config.mqtt.client_id, connector.database_name());
    let (journal, mut recovered) = Journal::open(settings, &identity, stats.clone())?;
    if settings.sync == fleetagg_config::JournalSync::Fsync {
        journal::spawn_sync_thread(&journal, settings.sync_interval).map_err(|err| {
            JournalError::Directory {
                dir: settings.dir.clone(),
                message: format!("cannot start the sync thread: {err}"),
            }
        })?;
    }
    let ids = recovered.batch_ids();
    let committed = if ids.is_empty() {
        Default::default()
    } else {
        committed_batches(connector, credentials, &ids).await?
    };
    let filter = ReplayFilter::new(
        recovered.last_seq,
        &recovered.minutes_intents,
        &recovered.rejections_intents,
        &committed,
    );
    tracing::info!(
        dir = %settings.dir.display(),
        sync = ?settings.sync,
        messages_to_replay = recovered.messages,
        batches_found = ids.len(),
        batches_committed = committed.len(),
        "journal opened"
    );
    // The filter has what the replay needs from them.
    recovered.minutes_intents = Vec::new();
    recovered.rejections_intents = Vec::new();
    Ok(Some(JournalReplay { journal, recovered, filter }))
}

/// The ledger lookup for the replay, retried like the other start-up steps.
async fn committed_batches(
    connector: &Connector,
    credentials: Option<&Credentials>,
    ids: &[String],
) -> Result<rustc_hash::FxHashSet<String>, DbError> {
    let mut retries = Retries::new(backoff::DATABASE_WRITES);
    loop {
        let looked_up = async {
            let mut session = connector.connect(credentials).await?;
            session.committed_batches(ids).await
        };
        match looked_up.await {
            Ok(committed) => return Ok(committed),
            Err(err) if err.is_retriable() && retries.failures() + 1 < backoff::STARTUP_ATTEMPTS => {
                let wait = retries.failed();
                tracing::warn!(error = %err, ?wait, "cannot ask PostgreSQL which journaled batches it committed; retrying");
                actix_rt::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How long after the deadline the drain's answer may take to arrive (the writer answers
/// at the deadline itself).
const DRAIN_ANSWER_MARGIN: Duration = Duration::from_millis(500);
