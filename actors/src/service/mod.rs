//! Wiring: starts the actors in the right places and stops them in the right order.
//!
//! Start: writer (own arbiter) → aggregator arbiters (one per core) → source → broker.
//! Stop: the broker stops the source and routes what was received, every aggregator hands
//! its open minutes (partial ones included: the upsert merges them later) to the writer,
//! then the writer drains its buffer within the shutdown deadline. `pipeline.rs` holds
//! everything up to the writer's mailbox, `journal_start.rs` the journal's start-up.

mod journal_start;
mod pipeline;
mod written;

use written::WrittenQuery;

pub use journal_start::JournalReplay;
pub use pipeline::{Pipeline, PipelineOutputs, PipelineSettings, Restored};

use journal_start::open_journal;
use pipeline::{name_thread, stop_arbiters};

use crate::clock::Clock;
use crate::journal::{Journal, JournalError};
use crate::messages::{Drain, DrainReport, SubscribeCredentials};
use crate::monitoring::{
    self, Heartbeats, ListenError, MonitorServer, MonitorState, ReadinessSettings, StatusLimits,
};
use crate::secrets::{self, SecretError, SecretKeeper};
use crate::source::{MessageSource, SourceError};
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
    /// Tasks aborted at the stop: the silence watchdog (`mqtt.idle_alert`), and the
    /// reader of the minutes written before this start while the database is away.
    background: Vec<actix_rt::task::JoinHandle<()>>,
    /// Emptied at a stop that wrote everything.
    journal: Option<Arc<Journal>>,
}

/// What `start_actors` hands back: the pipeline, the writer, the background tasks and
/// the journal.
type StartedActors = (Pipeline, Addr<Writer>, Vec<actix_rt::task::JoinHandle<()>>, Option<Arc<Journal>>);

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
        name_thread(&writer_arbiter, "fleetagg-writer".to_owned());
        let started =
            Self::start_actors(config, source, clock, &stats, connector, &writer_arbiter, monitor.as_ref())
                .await;
        match started {
            Ok((pipeline, writer, background, journal)) => {
                Ok(Service { pipeline, writer, writer_arbiter, stats, monitor, background, journal })
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
        let written_query = WrittenQuery::new(
            &connector,
            credentials.as_ref().map(|(_, current)| current),
            clock.now(),
            config.aggregation.max_lateness,
            journal.as_ref().and_then(|replay| replay.recovered.oldest_received_micros),
        );
        let written = written_query.first_attempt().await;
        let read_later = written.is_none().then_some(written_query);
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
        let pipeline = Pipeline::start_restored(
            settings,
            source,
            outputs,
            clock.clone(),
            stats.clone(),
            Restored { journal, written: written.unwrap_or_default() },
        )
        .await?;
        if let Some(monitor) = monitor {
            for (core, shard) in pipeline.shards.iter().enumerate() {
                monitor.state.heartbeats.watch(format!("aggregators-{core}"), &shard.handle());
            }
        }
        let mut background: Vec<_> =
            monitoring::spawn_silence_watchdog(stats.clone(), config.mqtt.idle_alert, clock)
                .into_iter()
                .collect();
        background.extend(read_later.map(|query| query.in_background(pipeline.broker.clone())));
        Ok((pipeline, writer, background, writer_journal_handle))
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
        for task in self.background {
            task.abort();
        }
        ShutdownReport { intake_drained, minutes_left_in_aggregators, writer }
    }
}

/// How long after the deadline the drain's answer may take to arrive (the writer answers
/// at the deadline itself).
const DRAIN_ANSWER_MARGIN: Duration = Duration::from_millis(500);
