//! The writer actor: buffers closed minutes and rejected messages, and writes them to
//! PostgreSQL in batches over one persistent connection with cached prepared statements.
//!
//! A flush takes the whole buffer, writes it in batches of `batch_max_rows`, and gives
//! back whatever it could not write, so a failure never drops a row: the rows wait for
//! the next attempt (after a capped back-off, on a new connection when the old one can no
//! longer be trusted). Flushes run inside `ctx.wait`, so while one is in progress the
//! mailbox fills and senders wait: that is the back-pressure towards the aggregators.
//!
//! The password comes from the secret keeper. A refused login asks it to fetch the secret
//! at once; a changed secret makes the next flush open a new connection with it first.

mod error;
mod flush;
pub mod schema;
mod session;

pub use error::{DbError, ErrorClass};
pub use session::{Connector, Session};

use crate::logic::{PendingMinutes, RejectedMessage};
use crate::messages::{CredentialsChanged, Drain, DrainReport, RefreshSecret, StoreRejections, WriteMinutes};
use crate::secrets::Credentials;
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use flush::{FlushJob, FlushOutcome};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
}

/// How the writer logs in: the current credentials, and whom to ask for fresh ones.
#[derive(Debug, Clone)]
pub struct WriterCredentials {
    pub current: Credentials,
    pub keeper: Recipient<RefreshSecret>,
}

#[derive(Debug)]
pub struct Writer {
    connector: Connector,
    credentials: Option<WriterCredentials>,
    /// The credentials changed since the session was opened.
    reconnect: bool,
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
    pub fn new(
        connector: Connector,
        credentials: Option<WriterCredentials>,
        settings: WriterSettings,
        stats: Arc<PipelineStats>,
    ) -> Self {
        Writer {
            connector,
            credentials,
            reconnect: false,
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
            credentials: self.credentials.as_ref().map(|credentials| credentials.current.clone()),
            reconnect: self.reconnect,
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
        if self.flushing || (idle && !self.reconnect) || waiting {
            return;
        }
        let job = self.take_job();
        ctx.wait(job.run().into_actor(self).map(|outcome, writer, ctx| writer.absorb(outcome, ctx)));
    }

    /// Takes back what a flush did not write and updates the retry state.
    fn absorb(&mut self, outcome: FlushOutcome, ctx: &mut Context<Self>) {
        let FlushOutcome { job, error } = outcome;
        self.flushing = false;
        self.session = job.session;
        self.pending.extend(job.minutes);
        self.rejections.extend(job.rejections);
        // Cleared only if no newer secret arrived while the flush ran.
        let credentials_unchanged = match (&self.credentials, &job.credentials) {
            (Some(now), Some(used)) => now.current.same_as(used),
            _ => true,
        };
        if !job.reconnect && credentials_unchanged {
            self.reconnect = false;
        }
        match (error, self.retry) {
            (None, Some(retry)) => {
                tracing::info!(failed_attempts = retry.failures, "database writes recovered");
                self.retry = None;
            }
            (None, None) => {}
            (Some(err), previous) => {
                bump(&self.stats.write_failures, 1);
                if err.is_auth_failure() {
                    self.request_fresh_secret(ctx);
                }
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
                self.retry = Some(Retry { at: Instant::now() + delay, delay, failures });
            }
        }
    }

    /// A login was refused: the password has probably been rotated.
    fn request_fresh_secret(&mut self, ctx: &mut Context<Self>) {
        if let Some(credentials) = &self.credentials {
            let keeper = credentials.keeper.clone();
            ctx.spawn(
                async move {
                    if keeper.send(RefreshSecret).await.is_err() {
                        tracing::error!("secret keeper unavailable; cannot refresh the database secret");
                    }
                }
                .into_actor(self),
            );
        }
    }

    fn report(&self) -> DrainReport {
        DrainReport { unwritten_minutes: self.pending.len(), unwritten_rejections: self.rejections.len() }
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

impl Handler<CredentialsChanged> for Writer {
    type Result = ();

    fn handle(&mut self, CredentialsChanged(credentials): CredentialsChanged, ctx: &mut Self::Context) {
        if let Some(current) = &mut self.credentials {
            current.current = credentials;
            self.reconnect = true;
            // A failed login waits for exactly this: try again now, not after the back-off.
            if let Some(retry) = &mut self.retry {
                retry.at = Instant::now();
            }
            self.flush(ctx);
        }
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
        Box::pin(drained.into_actor(self).map(|outcome, writer, ctx| {
            writer.absorb(outcome, ctx);
            writer.report()
        }))
    }
}
