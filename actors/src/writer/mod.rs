//! The writer actor: buffers closed minutes and rejected messages, and writes them to
//! PostgreSQL in batches over one persistent connection with cached prepared statements.
//!
//! A flush takes the whole buffer, writes it in batches of `batch_max_rows`, and gives
//! back whatever it could not write, so a failure never drops a row: the rows wait for
//! the next attempt (after a capped back-off, on a new connection when the old one can no
//! longer be trusted). Flushes run inside `ctx.wait`, so while one is in progress the
//! mailbox fills and senders wait: that is the back-pressure towards the aggregators.

mod error;
pub mod schema;
mod session;

pub use error::{DbError, ErrorClass};
pub use session::{Connector, Session};

use crate::logic::{ClosedMinute, PendingMinutes, RejectedMessage};
use crate::messages::{Drain, DrainReport, StoreRejections, WriteMinutes};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
}

#[derive(Debug)]
pub struct Writer {
    connector: Connector,
    /// `None` until connected, and while a flush has it.
    session: Option<Session>,
    pending: PendingMinutes,
    rejections: Vec<RejectedMessage>,
    settings: WriterSettings,
    stats: Arc<PipelineStats>,
    /// Set while writes fail: when to try again, and for how many attempts it has failed
    /// (so a failure is logged when it starts and when it ends, not at every attempt).
    retry: Option<Retry>,
    /// A flush owns the session and the rows while it runs.
    flushing: bool,
}

#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    delay: Duration,
    failures: u32,
}

impl Writer {
    pub fn new(connector: Connector, settings: WriterSettings, stats: Arc<PipelineStats>) -> Self {
        Writer {
            connector,
            session: None,
            pending: PendingMinutes::default(),
            rejections: Vec::new(),
            settings,
            stats,
            retry: None,
            flushing: false,
        }
    }

    fn take_job(&mut self) -> FlushJob {
        self.flushing = true;
        FlushJob {
            connector: self.connector.clone(),
            session: self.session.take(),
            minutes: self.pending.take_all(),
            rejections: std::mem::take(&mut self.rejections),
            batch_max_rows: self.settings.batch_max_rows,
            stats: self.stats.clone(),
        }
    }

    /// Starts a flush unless one is running, there is nothing to do, or a retry is not due.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let idle = self.pending.is_empty() && self.rejections.is_empty() && self.session.is_some();
        let waiting = self.retry.is_some_and(|retry| Instant::now() < retry.at);
        if self.flushing || idle || waiting {
            return;
        }
        let job = self.take_job();
        ctx.wait(
            job.run()
                .into_actor(self)
                .map(|outcome, writer, _| writer.absorb(outcome)),
        );
    }

    /// Takes back what a flush did not write and updates the retry state.
    fn absorb(&mut self, outcome: FlushOutcome) {
        self.flushing = false;
        self.session = outcome.job.session;
        self.pending.extend(outcome.job.minutes);
        self.rejections.extend(outcome.job.rejections);
        match (outcome.error, self.retry) {
            (None, Some(retry)) => {
                tracing::info!(
                    failed_attempts = retry.failures,
                    "database writes recovered"
                );
                self.retry = None;
            }
            (None, None) => {}
            (Some(err), previous) => {
                bump(&self.stats.write_failures, 1);
                let delay = previous.map_or(RETRY_MIN, |retry| (retry.delay * 2).min(RETRY_MAX));
                let failures = previous.map_or(1, |retry| retry.failures + 1);
                if previous.is_none() {
                    tracing::warn!(
                        error = %err, class = ?err.class(), buffered_minutes = self.pending.len(),
                        "database write failed; rows kept, retrying with back-off"
                    );
                } else {
                    tracing::debug!(error = %err, failures, "database write failed again");
                }
                self.retry = Some(Retry {
                    at: Instant::now() + delay,
                    delay,
                    failures,
                });
            }
        }
    }

    fn report(&self) -> DrainReport {
        DrainReport {
            unwritten_minutes: self.pending.len(),
            unwritten_rejections: self.rejections.len(),
        }
    }
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connect (and migrate) right away, so a bad configuration shows at start-up.
        self.flush(ctx);
        ctx.run_interval(self.settings.flush_interval, Self::flush);
    }
}

impl Handler<WriteMinutes> for Writer {
    type Result = ();

    fn handle(&mut self, WriteMinutes(rows): WriteMinutes, ctx: &mut Self::Context) {
        self.pending.extend(rows);
        if self.pending.len() >= self.settings.batch_max_rows {
            self.flush(ctx);
        }
    }
}

impl Handler<StoreRejections> for Writer {
    type Result = ();

    fn handle(&mut self, StoreRejections(rows): StoreRejections, _: &mut Self::Context) {
        self.rejections.extend(rows);
    }
}

impl Handler<Drain> for Writer {
    type Result = ResponseActFuture<Self, DrainReport>;

    fn handle(&mut self, Drain { deadline }: Drain, _: &mut Self::Context) -> Self::Result {
        let job = self.take_job();
        let drained = async move {
            let mut outcome = job.run().await;
            let mut delay = RETRY_MIN;
            while let Some(err) = &outcome.error {
                let now = Instant::now();
                if now >= deadline {
                    tracing::error!(error = %err, "shutdown deadline reached with rows still unwritten");
                    break;
                }
                tracing::warn!(error = %err, "write failed while draining; retrying until the deadline");
                actix_rt::time::sleep(delay.min(deadline - now)).await;
                delay = (delay * 2).min(RETRY_MAX);
                outcome = outcome.job.run().await;
            }
            outcome
        };
        Box::pin(drained.into_actor(self).map(|outcome, writer, _| {
            writer.absorb(outcome);
            writer.report()
        }))
    }
}

/// Everything one flush needs, moved out of the actor while it runs.
struct FlushJob {
    connector: Connector,
    session: Option<Session>,
    minutes: Vec<ClosedMinute>,
    rejections: Vec<RejectedMessage>,
    batch_max_rows: usize,
    stats: Arc<PipelineStats>,
}

/// A finished flush: the job holds whatever it did not write, and its session when the
/// connection is still usable.
struct FlushOutcome {
    job: FlushJob,
    error: Option<DbError>,
}

impl FlushJob {
    async fn run(mut self) -> FlushOutcome {
        let session = match self.session.take().filter(|session| !session.is_closed()) {
            Some(session) => Ok(session),
            None => {
                let connected = self.connector.connect().await;
                if connected.is_ok() {
                    bump(&self.stats.db_connects, 1);
                    tracing::info!(target = self.connector.target(), "connected to PostgreSQL");
                }
                connected
            }
        };
        let mut session = match session {
            Ok(session) => session,
            Err(err) => {
                return FlushOutcome {
                    job: self,
                    error: Some(err),
                }
            }
        };
        let step = self.batch_max_rows.max(1);
        while !self.minutes.is_empty() {
            let rest = self.minutes.split_off(step.min(self.minutes.len()));
            let batch = std::mem::replace(&mut self.minutes, rest);
            let started = Instant::now();
            match session.upsert_minutes(&batch).await {
                Ok(_) => {
                    bump(&self.stats.rows_written, batch.len() as u64);
                    bump(&self.stats.write_batches, 1);
                    tracing::debug!(rows = batch.len(), elapsed = ?started.elapsed(), "minutes upserted");
                }
                Err(err) => {
                    self.minutes.extend(batch);
                    return self.fail(session, err);
                }
            }
        }
        while !self.rejections.is_empty() {
            let rest = self.rejections.split_off(step.min(self.rejections.len()));
            let batch = std::mem::replace(&mut self.rejections, rest);
            match session.insert_rejections(&batch).await {
                Ok(_) => bump(&self.stats.rejects_written, batch.len() as u64),
                Err(err) => {
                    self.rejections.extend(batch);
                    return self.fail(session, err);
                }
            }
        }
        self.session = Some(session);
        FlushOutcome {
            job: self,
            error: None,
        }
    }

    /// Keeps the session only when the error leaves the connection trustworthy.
    fn fail(mut self, session: Session, err: DbError) -> FlushOutcome {
        let keep = matches!(
            err.class(),
            ErrorClass::Retriable { reconnect: false } | ErrorClass::Poison
        );
        self.session = keep.then_some(session);
        FlushOutcome {
            job: self,
            error: Some(err),
        }
    }
}
