//! The writer actor: buffers closed minutes and rejected messages, and writes them to
//! PostgreSQL in batches over one persistent connection with cached prepared statements.
//!
//! An attempt takes the whole buffer, writes it in batches of `batch_max_rows`, and gives
//! back whatever it could not write, so a failure never drops a row: the rows wait for
//! the next attempt (after a capped back-off, on a new connection when the old one can no
//! longer be trusted). The writer is a small state machine (`state.rs`); no state blocks
//! its mailbox, so a stop, a rotated secret or a health check is handled at once even
//! while PostgreSQL is unreachable and the buffer is full. Back-pressure towards the
//! aggregators is a held reply: while the buffer is full, a `WriteMinutes` is answered
//! only once writes have made room, and its sender waits for that answer.
//!
//! The password comes from the secret keeper. A refused login asks it to fetch the secret
//! at once; a changed secret makes the next flush open a new connection with it first.

mod batch;
mod error;
mod flush;
pub mod schema;
mod session;
mod state;
mod statements;
mod tls;

pub use batch::DB_REFUSED;
pub use error::{DbError, ErrorClass};
pub use session::{Connector, Session};

use crate::backoff::Retries;
use crate::journal::Journal;
use crate::logic::{PendingMinutes, RejectedMessage};
use crate::messages::Credentials;
use crate::messages::{CredentialsChanged, Drain, DrainReport, RefreshSecret, StoreRejections, WriteMinutes};
use crate::stats::{bump, PipelineStats};
use actix::prelude::*;
use batch::{Batch, BatchIds};
use state::{DrainRequest, State, PRUNE_EVERY};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Closed minutes are written this long after the first of them arrives at an idle
/// writer: long enough to collect the burst of minutes every aggregator closes at the same
/// end + grace into one statement, short enough not to matter for latency.
pub const FLUSH_LINGER: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    pub batch_max_rows: usize,
    pub flush_interval: Duration,
    /// Minutes held while writes fail; at this many, replies to `WriteMinutes` are held
    /// (back-pressure) until writes make room.
    pub max_buffered_rows: usize,
    /// Rejected messages held while writes fail; beyond it they are counted in
    /// `rejects_not_stored` and dropped, so a flood of hostile messages during an outage
    /// cannot exhaust memory (each can hold up to 12 KiB: topic, detail, payload).
    pub max_buffered_rejections: usize,
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
    state: State,
    /// The credentials changed since the session was opened: the next attempt reconnects.
    reconnect: bool,
    pending: PendingMinutes,
    rejections: Vec<RejectedMessage>,
    /// Batches cut but not yet written. They keep their ids (and so their rows) until
    /// written, which is what lets the ledger recognise a retry of a lost commit.
    unwritten: VecDeque<Batch>,
    ids: Arc<BatchIds>,
    last_prune: Instant,
    /// When a write, connect or ping last succeeded (pings are due a few seconds after).
    last_db_success: Instant,
    settings: WriterSettings,
    stats: Arc<PipelineStats>,
    /// Set while attempts fail: the back-off of the current run of failures.
    failures: Option<Retries>,
    /// Replies to `WriteMinutes` held while the buffer is full: each one is a sender
    /// (an aggregator) waiting, which is the back-pressure.
    held_replies: Vec<oneshot::Sender<()>>,
    /// A `Drain` in progress.
    drain: Option<DrainRequest>,
    /// The linger timer after rows reached an idle writer, so one burst is one attempt.
    linger: Option<SpawnHandle>,
    /// Where batch intents go before a write and releases after it.
    journal: Option<Arc<Journal>>,
}

impl Writer {
    pub fn new(
        connector: Connector,
        credentials: Option<WriterCredentials>,
        settings: WriterSettings,
        stats: Arc<PipelineStats>,
    ) -> Self {
        let now = stats.clock.instant();
        Writer {
            connector,
            credentials,
            state: State::Disconnected,
            reconnect: false,
            pending: PendingMinutes::default(),
            rejections: Vec::new(),
            unwritten: VecDeque::new(),
            ids: Arc::new(BatchIds::new()),
            // Prune once soon after start, then every PRUNE_EVERY.
            last_prune: now.checked_sub(PRUNE_EVERY).unwrap_or(now),
            last_db_success: now,
            settings,
            stats,
            failures: None,
            held_replies: Vec::new(),
            drain: None,
            linger: None,
            journal: None,
        }
    }

    /// Journals each batch's intent before writing it and releases its rows' records once
    /// committed (see [`crate::journal`]).
    pub fn with_journal(mut self, journal: Option<Arc<Journal>>) -> Self {
        self.journal = journal;
        self
    }

    fn is_full(&self) -> bool {
        self.buffered_minutes() >= self.settings.max_buffered_rows
    }

    /// Back-pressure: the reply to this `WriteMinutes` waits until writes make room.
    /// The rows themselves are taken (they are already in memory, in the message), so
    /// the buffer can exceed `max_buffered_rows` by one hand-over per sender at most:
    /// each aggregator waits for its reply before it sends again.
    fn hold_reply(&mut self) -> oneshot::Receiver<()> {
        if self.held_replies.is_empty() {
            tracing::warn!(
                buffered_minutes = self.buffered_minutes(),
                max_buffered_rows = self.settings.max_buffered_rows,
                state = self.state.name(),
                "writer buffer full: holding back the aggregators until PostgreSQL takes rows"
            );
        }
        let (reply, held) = oneshot::channel();
        self.held_replies.push(reply);
        held
    }

    fn release_replies_if_room(&mut self) {
        if !self.held_replies.is_empty() && !self.is_full() {
            tracing::info!(buffered_minutes = self.buffered_minutes(), "writer buffer has room again");
            self.release_replies();
        }
    }

    /// Releases every held sender (their rows are already here): when there is room, and
    /// at a drain, which no sender should wait for.
    fn release_replies(&mut self) {
        for reply in self.held_replies.drain(..) {
            let _ = reply.send(());
        }
        self.publish_state();
    }

    /// Steps after [`FLUSH_LINGER`], unless a linger is already running.
    fn step_after_linger(&mut self, ctx: &mut Context<Self>) {
        if self.linger.is_none() {
            self.linger = Some(ctx.run_later(FLUSH_LINGER, |writer, ctx| {
                writer.linger = None;
                writer.step(ctx);
            }));
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
}

impl Actor for Writer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Connect (and migrate) right away, so a bad configuration shows at start-up.
        self.step(ctx);
        ctx.run_interval(self.settings.flush_interval, Self::step);
        if let State::BackingOff { until, .. } = &self.state {
            // After a supervised restart: the old context's back-off timer is gone.
            ctx.run_later(until.saturating_duration_since(self.stats.clock.instant()), Self::step);
        }
    }
}

impl actix::Supervised for Writer {
    /// Called by the supervisor after the writer stopped on a broken connection. The rows,
    /// the held replies and the back-off stay (they are this actor's fields); only the
    /// connection and the timers (dropped with the old context) are reset. `started` runs
    /// again afterwards.
    fn restarting(&mut self, _: &mut Self::Context) {
        bump(&self.stats.writer_restarts, 1);
        self.state = match std::mem::replace(&mut self.state, State::Disconnected) {
            State::BackingOff { until, .. } => State::BackingOff { session: None, until },
            _ => State::Disconnected,
        };
        self.linger = None;
        tracing::warn!(
            restarts = self.stats.writer_restarts.load(Ordering::Relaxed),
            buffered_minutes = self.buffered_minutes(),
            "writer restarted by its supervisor after a broken connection; rows kept"
        );
    }
}

impl Handler<WriteMinutes> for Writer {
    type Result = Response<()>;

    fn handle(&mut self, WriteMinutes(rows): WriteMinutes, ctx: &mut Self::Context) -> Self::Result {
        self.stats.recent.minutes_closed(rows.iter().map(|row| (&row.machine, row.minute, &row.aggregate)));
        self.pending.extend(rows);
        if self.pending.len() >= self.settings.batch_max_rows {
            self.step(ctx);
        } else {
            self.step_after_linger(ctx);
        }
        // Nobody is held once a drain began or ended in Stopped: nothing would release them.
        let holding = self.drain.is_none() && !matches!(self.state, State::Stopped);
        let response = if holding && self.is_full() {
            let held = self.hold_reply();
            Response::fut(async move {
                // An error means the writer is gone: nothing to wait for any more.
                let _ = held.await;
            })
        } else {
            Response::reply(())
        };
        self.publish_state();
        response
    }
}

impl Handler<StoreRejections> for Writer {
    type Result = ();

    fn handle(&mut self, StoreRejections(rows): StoreRejections, _: &mut Self::Context) {
        let room = self.settings.max_buffered_rejections.saturating_sub(self.buffered_rejections());
        let refused = rows.len().saturating_sub(room);
        if refused > 0 {
            bump(&self.stats.rejects_not_stored, refused as u64);
            tracing::debug!(refused, "rejection buffer full: rejections counted, not stored");
        }
        let mut rows = rows.into_iter();
        self.rejections.extend(rows.by_ref().take(room));
        if let Some(journal) = &self.journal {
            // Finished by the limit: counted, never stored, nothing to replay.
            let refused: Vec<RejectedMessage> = rows.collect();
            journal.release_all(refused.iter().map(|row| &row.tally));
        }
        self.publish_state();
    }
}

impl Handler<CredentialsChanged> for Writer {
    type Result = ();

    fn handle(&mut self, CredentialsChanged(credentials): CredentialsChanged, ctx: &mut Self::Context) {
        if let Some(current) = &mut self.credentials {
            current.current = credentials;
            self.reconnect = true;
            // A failed login waits for exactly this: try again now, not after the back-off.
            if let State::BackingOff { until, .. } = &mut self.state {
                *until = self.stats.clock.instant();
            }
            self.step(ctx);
        }
    }
}

impl Handler<Drain> for Writer {
    type Result = Response<DrainReport>;

    /// Writes everything buffered, retrying until `deadline`; an attempt still in flight
    /// then is cancelled. Answers with what was not written.
    fn handle(&mut self, Drain { deadline }: Drain, ctx: &mut Self::Context) -> Self::Result {
        let (reply, report) = oneshot::channel();
        let timer = ctx
            .run_later(deadline.saturating_duration_since(self.stats.clock.instant()), Self::drain_deadline);
        if let Some(previous) = self.drain.replace(DrainRequest { deadline, reply, timer }) {
            // A second drain supersedes the first, which is answered with what is held now.
            ctx.cancel_future(previous.timer);
            let _ = previous.reply.send(self.report());
        }
        // Everything the aggregators had is here: nobody needs to wait any more.
        self.release_replies();
        if let State::BackingOff { until, .. } = &mut self.state {
            // A drain does not wait out a long back-off: one more attempt now.
            *until = self.stats.clock.instant();
        }
        self.step(ctx);
        let stats = self.stats.clone();
        // An error: the writer went away without answering; the gauges say what it held.
        Response::fut(async move { report.await.unwrap_or_else(|_| DrainReport::from_gauges(&stats)) })
    }
}
