//! `fleetagg run` and `fleetagg migrate`: the actor system's lifetime and the signals
//! that end it.

use anyhow::Context as _;
use fleetagg_actors::clock::SystemClock;
use fleetagg_actors::placement::Split;
use fleetagg_actors::secrets;
use fleetagg_actors::source::MqttSource;
use fleetagg_actors::writer::Connector;
use fleetagg_actors::{Service, ServiceError, ShutdownReport};
use fleetagg_config::Config;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Exit code when a stop could not write everything it had accepted.
const EXIT_ROWS_UNWRITTEN: u8 = 3;
/// Exit code when start-up failed on something that may heal by itself (the secret could
/// not be fetched, say): BSD's EX_TEMPFAIL. A configuration error exits 1, so systemd
/// can restart on this one and not on that (`RestartPreventExitStatus=1`).
const EXIT_START_UP_MAY_HEAL: u8 = 75;
/// How often the counters are logged.
const STATS_EVERY: Duration = Duration::from_secs(60);

pub(crate) fn run(config: Config) -> anyhow::Result<ExitCode> {
    // Before the actor system starts a thread: they all inherit the actors' CPUs. Refused
    // (logged), nothing is pinned: the intake alone on a CPU helped nothing.
    let split = Split::for_this_process(config.service.thread_placement).filter(Split::pin_actors_here);
    if let Some(split) = &split {
        tracing::info!(intake_cpus = ?split.intake, actor_cpus = ?split.actors, "threads placed: the MQTT intake on a CPU of its own");
    }
    actix_rt::System::new().block_on(async move {
        let source = Box::new(MqttSource::new(&config.mqtt).placed(split));
        let starting = Service::start(&config, source, Arc::new(SystemClock));
        tokio::pin!(starting);
        let timeout = config.service.shutdown_timeout;
        let (service, early_stop) = tokio::select! {
            started = &mut starting => match started {
                Ok(service) => (service, None),
                Err(err) => return start_up_failed(err),
            },
            signal = shutdown_signal() => {
                // Not dropped on the spot: once connected, paho acknowledges what it
                // hands to the inbound channel, so a start-up cut short would lose it.
                // Start-up finishes, then a normal stop writes everything, all within one
                // shutdown deadline counted from the signal.
                let signal = signal?;
                let deadline = Instant::now() + timeout;
                tracing::info!(signal, "signal during start-up: finishing start-up, then stopping");
                match tokio::time::timeout_at(deadline.into(), &mut starting).await {
                    Ok(Ok(service)) => (service, Some((signal, deadline))),
                    Ok(Err(err)) => return start_up_failed(err),
                    Err(_) => {
                        // Still connecting after the deadline: nothing was received.
                        tracing::warn!(signal, "start-up did not finish before the deadline; stopped");
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
        };
        tracing::info!(topics = ?config.mqtt.topics, "fleetagg running");
        let stats = service.stats();
        let stats_logger = actix_rt::spawn({
            let stats = stats.clone();
            async move {
                let mut every = actix_rt::time::interval(STATS_EVERY);
                every.tick().await;
                loop {
                    every.tick().await;
                    tracing::info!(counters = %stats.summary(), "progress");
                }
            }
        });

        let (signal, deadline) = match early_stop {
            Some(stop) => stop,
            None => {
                let signal = shutdown_signal().await?;
                (signal, Instant::now() + timeout)
            }
        };
        tracing::info!(signal, ?timeout, "stopping: flushing open minutes");
        let report = tokio::select! {
            report = service.shutdown(deadline) => report,
            second = shutdown_signal() => {
                tracing::warn!(signal = second?, "second signal: exiting now, without waiting for the drain");
                ShutdownReport::from_gauges(&stats)
            }
        };
        stats_logger.abort();
        tracing::info!(counters = %stats.summary(), "final counters");
        if report.is_complete() {
            tracing::info!("stopped; everything accepted was written");
            Ok(ExitCode::SUCCESS)
        } else {
            tracing::error!(
                intake_drained = report.intake_drained,
                minutes_left_in_aggregators = report.minutes_left_in_aggregators,
                unwritten_minutes = report.writer.unwritten_minutes,
                unwritten_rejections = report.writer.unwritten_rejections,
                "stopped with rows not written"
            );
            Ok(ExitCode::from(EXIT_ROWS_UNWRITTEN))
        }
    })
}

/// A start-up that failed: exit 75 when trying again later may work, else the error
/// (exit 1).
fn start_up_failed(err: ServiceError) -> anyhow::Result<ExitCode> {
    if err.is_retriable() {
        tracing::error!(error = %err, "start-up failed; a later start may succeed");
        eprintln!("fleetagg: {err}");
        Ok(ExitCode::from(EXIT_START_UP_MAY_HEAL))
    } else {
        Err(err.into())
    }
}

pub(crate) fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    actix_rt::System::new().block_on(async {
        let connector = Connector::new(&config.database.url)?
            .with_statements(config.database.statements)
            .with_tls(config.database.tls.clone());
        let credentials = match &config.database.password {
            Some(password) => {
                let source = secrets::build_source(password).await;
                Some(secrets::fetch_at_start(source.as_ref()).await?)
            }
            None => None,
        };
        let applied = connector
            .migrate(credentials.as_ref())
            .await
            .with_context(|| format!("migrating {}", connector.target()))?;
        if applied.is_empty() {
            println!("schema of {} is up to date", connector.target());
        } else {
            println!("applied migrations {applied:?} to {}", connector.target());
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}
