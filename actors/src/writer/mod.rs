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

mod batch;
mod error;
mod flush;
pub mod schema;
mod session;

pub use batch::DB_REFUSED;
pub use error::{DbError, ErrorClass};
pub use session::{Connector, Session};

use crate::logic::{PendingMinutes, RejectedMessage};
use crate::messages::{
    CredentialsChanged, Drain, DrainReport, Ping, RefreshSecret, StoreRejections, WriteMinutes,
};
use crate::secrets::Credentials;
use crate::stats::{bump, mark_now, PipelineStats};
use actix::prelude::*;
use batch::{Batch, BatchIds, Rows};
use flush::{FlushJob, FlushOutcome};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Closed minutes are written this long after the first of them arrives at an idle
/// writer: long enough to collect the burst of minutes every aggregator closes at the same
/// end + grace into one statement, short enough not to matter for latency.
pub const FLUSH_LINGER: Duration = Duration::from_millis(10);
/// An idle connection is pinged this often, so `/readyz` knows the database answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often old ids are removed from the batch ledger.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    /// Minutes held while writes fail; beyond it the writer stops taking more.
    pub max_buffered_rows: usize,
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
    /// Batches cut but not yet written. They keep their ids (and so their rows) until
    /// written, which is what lets the ledger recognise a retry of a lost commit.
    unwritten: VecDeque<Batch>,
    ids: Arc<BatchIds>,
    last_prune: Instant,
    /// The buffer is full: the mailbox is held (`ctx.wait`) until writes make room.
    holding: bool,
    /// When a write, connect or ping last succeeded (pings are due after PING_EVERY).
    last_db_success: Instant,
    settings: WriterSettings,
    stats: Arc<PipelineStats>,
    /// Set while writes fail: when to try again, and for how many attempts it has failed
    /// (so a failure is logged when it starts and when it ends, not at every attempt).
    retry: Option<Retry>,
    /// A flush owns the session and the rows while it runs.
    flushing: bool,
    /// A flush is scheduled [`FLUSH_LINGER`] from now.
    flush_scheduled: bool,
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
            unwritten: VecDeque::new(),
            ids: Arc::new(BatchIds::new()),
            // Prune once soon after start, then every PRUNE_EVERY.
            last_prune: Instant::now().checked_sub(PRUNE_EVERY).unwrap_or_else(Instant::now),
            holding: false,
            last_db_success: Instant::now(),
            settings,
            stats,
            retry: None,
            flushing: false,
            flush_scheduled: false,
        }
    }

    fn take_job(&mut self) -> FlushJob {
        self.flushing = true;
        let mut batches = std::mem::take(&mut self.unwritten);
        let max = self.settings.batch_max_rows;
        batches.extend(self.ids.cut(self.pending.take_all(), max, Rows::Minutes));
        batches.extend(self.ids.cut(std::mem::take(&mut self.rejections), max, Rows::Rejections));
        let prune_ledger = self.last_prune.elapsed() >= PRUNE_EVERY;
        if prune_ledger {
            self.last_prune = Instant::now();
        }
        FlushJob {
            connector: self.connector.clone(),
            credentials: self.credentials.as_ref().map(|credentials| credentials.current.clone()),
            reconnect: self.reconnect,
            session: self.session.take(),
            batches,
            prune_ledger,
            ping: false,
            ids: self.ids.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Minutes held and not yet written.
    fn buffered_minutes(&self) -> usize {
        self.pending.len() + self.unwritten.iter().map(Batch::minutes).sum::<usize>()
    }

    fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.rejections.is_empty() && self.unwritten.is_empty()
    }

    /// Starts a flush unless one is running, there is nothing to do, or a retry is not due.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flushing && self.session.as_ref().is_some_and(Session::is_closed) {
            // The server closed the connection between writes (restart, admin kill):
            // the supervisor restarts the writer, which reconnects.
            tracing::warn!("PostgreSQL connection closed");
            self.session = None;
            ctx.stop();
            return;
        }
        let idle = self.is_idle() && self.session.is_some();
        let waiting = self.retry.is_some_and(|retry| Instant::now() < retry.at);
        let ping_due = self.last_db_success.elapsed() >= PING_EVERY;
        if self.flushing || self.holding || (idle && !self.reconnect && !ping_due) || waiting {
            return;
        }
        let mut job = self.take_job();
        job.ping = idle;
        ctx.wait(job.run().into_actor(self).map(|outcome, writer, ctx| {
            writer.absorb(outcome, ctx, true);
            writer.hold_while_full(ctx);
            // Minutes that arrived while this flush ran go out next, not at the next
            // interval (after a failure, `flush` waits for the retry instead).
            if !writer.pending.is_empty() {
                writer.flush_soon(ctx);
            }
        }));
    }

    /// Schedules a flush [`FLUSH_LINGER`] from now, unless one is already scheduled.
    fn flush_soon(&mut self, ctx: &mut Context<Self>) {
        if self.flush_scheduled {
            return;
        }
        self.flush_scheduled = true;
        ctx.run_later(FLUSH_LINGER, |writer, ctx| {
            writer.flush_scheduled = false;
            writer.flush(ctx);
        });
    }

    /// Back-pressure: while the buffer is full, the mailbox is held (a chain of
    /// `ctx.wait`: wait for the retry, write, check again), so aggregators' sends wait and
    /// the MQTT connection slows down. Nothing is dropped.
    fn hold_while_full(&mut self, ctx: &mut Context<Self>) {
        if self.holding || self.buffered_minutes() < self.settings.max_buffered_rows {
            return;
        }
        self.holding = true;
        tracing::warn!(
            buffered_minutes = self.buffered_minutes(),
            max_buffered_rows = self.settings.max_buffered_rows,
            "writer buffer full: holding back the aggregators until PostgreSQL takes rows"
        );
        self.hold_step(ctx);
    }

    fn hold_step(&mut self, ctx: &mut Context<Self>) {
        let wait =
            self.retry.map_or(Duration::ZERO, |retry| retry.at.saturating_duration_since(Instant::now()));
        ctx.wait(actix_rt::time::sleep(wait).into_actor(self).map(|(), writer, ctx| {
            if writer.flushing {
                // A drain owns the rows: look again after the back-off.
                writer.retry_later();
                writer.hold_step(ctx);
                return;
            }
            let job = writer.take_job();
            ctx.wait(job.run().into_actor(writer).map(|outcome, writer, ctx| {
                writer.absorb(outcome, ctx, false);
                if writer.buffered_minutes() >= writer.settings.max_buffered_rows {
                    writer.hold_step(ctx);
                } else {
                    writer.holding = false;
                    tracing::info!(
                        buffered_minutes = writer.buffered_minutes(),
                        "writer buffer has room again"
                    );
                }
            }));
        }));
    }

    fn retry_later(&mut self) {
        let delay = self.retry.map_or(RETRY_MIN, |retry| retry.delay);
        let failures = self.retry.map_or(0, |retry| retry.failures);
        self.retry = Some(Retry { at: Instant::now() + delay, delay, failures });
    }

    /// Takes back what a flush did not write and updates the retry state. With
    /// `may_restart`, a broken connection stops the actor so that its supervisor restarts
    /// it (keeping every row: a supervised actor keeps its state).
    fn absorb(&mut self, outcome: FlushOutcome, ctx: &mut Context<Self>, may_restart: bool) {
        let FlushOutcome { job, error } = outcome;
        self.flushing = false;
        self.session = job.session;
        self.unwritten = job.batches;
        self.stats.rows_buffered.store(self.buffered_minutes() as u64, Ordering::Relaxed);
        // Cleared only if no newer secret arrived while the flush ran.
        let credentials_unchanged = match (&self.credentials, &job.credentials) {
            (Some(now), Some(used)) => now.current.same_as(used),
            _ => true,
        };
        if !job.reconnect && credentials_unchanged {
            self.reconnect = false;
        }
        if error.is_none() {
            self.last_db_success = Instant::now();
            self.stats.db_healthy.store(true, Ordering::Relaxed);
            mark_now(&self.stats.db_last_ok_micros);
        } else {
            self.stats.db_healthy.store(false, Ordering::Relaxed);
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
                if may_restart && err.broke_connection() {
                    ctx.stop();
                }
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
        let unwritten_rejections = self.rejections.len()
            + self.unwritten.iter().map(|batch| batch.len() - batch.minutes()).sum::<usize>();
        DrainReport { unwritten_minutes: self.buffered_minutes(), unwritten_rejections }
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

impl actix::Supervised for Writer {
    /// Called by the supervisor after the writer stopped on a broken connection. The rows
    /// and the retry state stay (they are this actor's fields); only the connection and
    /// the in-flight bookkeeping are reset. `started` runs again afterwards.
    fn restarting(&mut self, _: &mut Self::Context) {
        bump(&self.stats.writer_restarts, 1);
        self.session = None;
        self.flushing = false;
        self.holding = false;
        // The restart dropped the context and its timers.
        self.flush_scheduled = false;
        tracing::warn!(
            restarts = self.stats.writer_restarts.load(Ordering::Relaxed),
            buffered_minutes = self.buffered_minutes(),
            "writer restarted by its supervisor after a broken connection; rows kept"
        );
    }
}

impl Handler<WriteMinutes> for Writer {
    type Result = ();

    fn handle(&mut self, WriteMinutes(rows): WriteMinutes, ctx: &mut Self::Context) {
        self.pending.extend(rows);
        if self.pending.len() >= self.settings.batch_max_rows {
            self.flush(ctx);
        } else {
            self.flush_soon(ctx);
        }
        self.hold_while_full(ctx);
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

impl Handler<Ping> for Writer {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
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
            writer.absorb(outcome, ctx, false);
            writer.report()
        }))
    }
}
