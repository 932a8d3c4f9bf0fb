//! The writer's states and the two places that move between them: [`Writer::step`]
//! (decide what to do next) and [`Writer::finish_attempt`] (take an attempt's outcome).
//!
//! ```text
//!                 ┌────────── success ───────────┐
//!                 ▼                              │
//!  Disconnected ─step─► Busy(attempt) ──────────┤
//!  Connected    ─step─►   │  failure             │
//!  BackingOff(due)─step─► │                      │
//!                 ▲       ▼                      │
//!                 └── BackingOff { until } ◄─────┘ (failure)
//!
//!  any state ── drain deadline ──► Stopped (an attempt in flight is cancelled)
//! ```
//!
//! No state blocks the mailbox: an attempt runs as a spawned future, so `Drain`,
//! `CredentialsChanged` and new rows are handled while it is in flight. Back-pressure is
//! held by delaying the *replies* to `WriteMinutes` while the buffer is full (see
//! `Writer::hold_reply`), not by stopping the mailbox.

use super::batch::{Batch, Rows};
use super::error::ErrorClass;
use super::flush::{FlushJob, FlushOutcome};
use super::session::Session;
use super::Writer;
use crate::backoff::{self, Retries};
use crate::messages::DrainReport;
use crate::stats::{bump, WRITER_STATES};
use actix::prelude::*;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// An idle connection is pinged this often, so `/readyz` knows the database answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often old ids are removed from the batch ledger.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where the writer is. Exactly one of these at a time; see the module docs.
#[derive(Debug)]
pub(super) enum State {
    /// No connection and nothing in flight: the next attempt opens one.
    Disconnected,
    /// A connection is open and nothing is in flight.
    Connected(Session),
    /// An attempt (connect, write, ping) is in flight. It owns the session and the rows
    /// it took; their counts are kept here for back-pressure and for a drain's report.
    Busy(Attempt),
    /// The last attempt failed; the next one is due at `until`. The session is kept when
    /// the error left it trustworthy.
    BackingOff { session: Option<Session>, until: Instant },
    /// A drain ran out of time: nothing more is attempted (the service is exiting).
    Stopped,
}

impl State {
    /// A short name for logs and the `writer_state` metric.
    pub(super) fn name(&self) -> &'static str {
        match self {
            State::Disconnected => "disconnected",
            State::Connected(_) => "connected",
            State::Busy(_) => "busy",
            State::BackingOff { .. } => "backing_off",
            State::Stopped => "stopped",
        }
    }
}

#[derive(Debug)]
pub(super) struct Attempt {
    handle: SpawnHandle,
    pub(super) minutes: usize,
    pub(super) rejections: usize,
}

/// A `Drain` in progress.
#[derive(Debug)]
pub(super) struct DrainRequest {
    pub(super) deadline: Instant,
    pub(super) reply: tokio::sync::oneshot::Sender<DrainReport>,
    /// The timer at `deadline`, cancelled when the drain answers earlier (a later drain
    /// must not be cut short by it).
    pub(super) timer: SpawnHandle,
}

impl Writer {
    /// Decides what to do next, and starts it. Called whenever something changed: rows
    /// arrived (after the linger), an attempt finished, a back-off or the flush interval
    /// elapsed, the credentials changed, a drain began.
    pub(super) fn step(&mut self, ctx: &mut Context<Self>) {
        let now = self.stats.clock.instant();
        if self.drain.is_some() && self.is_empty() && self.in_flight() == (0, 0) {
            // Nothing left to write: a connect or ping in flight need not be waited for.
            self.finish_drain(ctx, true);
            return;
        }
        match &self.state {
            State::Busy(_) | State::Stopped => return,
            State::BackingOff { until, .. } if now < *until => {
                // Another attempt cannot start before the deadline: report now.
                if self.drain.as_ref().is_some_and(|drain| *until >= drain.deadline) {
                    self.finish_drain(ctx, false);
                }
                return;
            }
            State::Connected(session) if session.is_closed() && self.drain.is_none() => {
                // The server closed the connection between writes (restart, admin kill):
                // stop, so that the supervisor restarts the writer, which reconnects.
                tracing::warn!("PostgreSQL connection closed");
                self.state = State::Disconnected;
                ctx.stop();
                return;
            }
            _ => {}
        }
        let has_session =
            matches!(&self.state, State::Connected(_) | State::BackingOff { session: Some(_), .. });
        let ping_due = self.last_db_success.elapsed() >= PING_EVERY;
        if self.is_empty() && has_session && !self.reconnect && !ping_due {
            return;
        }
        self.start_attempt(ctx, self.is_empty());
    }

    fn start_attempt(&mut self, ctx: &mut Context<Self>, ping: bool) {
        let session = match std::mem::replace(&mut self.state, State::Disconnected) {
            State::Connected(session) => Some(session),
            State::BackingOff { session, .. } => session,
            _ => None,
        };
        let job = self.take_job(session, ping);
        let minutes = job.batches.iter().map(Batch::minutes).sum();
        let rejections = job.batches.iter().map(|batch| batch.len() - batch.minutes()).sum();
        let handle = ctx.spawn(
            job.run().into_actor(self).map(|outcome, writer, ctx| writer.finish_attempt(outcome, ctx)),
        );
        self.state = State::Busy(Attempt { handle, minutes, rejections });
        self.publish_state();
    }

    fn take_job(&mut self, session: Option<Session>, ping: bool) -> FlushJob {
        let mut batches = std::mem::take(&mut self.unwritten);
        let max = self.settings.batch_max_rows;
        batches.extend(self.ids.cut(self.pending.take_all(), max, Rows::Minutes));
        batches.extend(self.ids.cut(std::mem::take(&mut self.rejections), max, Rows::Rejections));
        let prune_ledger = self.last_prune.elapsed() >= PRUNE_EVERY;
        if prune_ledger {
            self.last_prune = self.stats.clock.instant();
        }
        FlushJob {
            connector: self.connector.clone(),
            credentials: self.credentials.as_ref().map(|credentials| credentials.current.clone()),
            reconnect: self.reconnect,
            session,
            batches,
            prune_ledger,
            ping,
            ids: self.ids.clone(),
            stats: self.stats.clone(),
            journal: self.journal.clone(),
        }
    }

    /// Takes back what an attempt did not write and moves to the next state.
    pub(super) fn finish_attempt(&mut self, outcome: FlushOutcome, ctx: &mut Context<Self>) {
        let FlushOutcome { job, error } = outcome;
        // Rows that arrived meanwhile are in `pending`; the job's leftovers go first.
        self.unwritten = job.batches;
        // Cleared only if no newer secret arrived while the attempt ran.
        let credentials_unchanged = match (&self.credentials, &job.credentials) {
            (Some(now), Some(used)) => now.current.same_as(used),
            _ => true,
        };
        if !job.reconnect && credentials_unchanged {
            self.reconnect = false;
        }
        let Some(err) = error else {
            self.last_db_success = self.stats.clock.instant();
            self.stats.db_healthy.store(true, Ordering::Relaxed);
            self.stats.mark_now(&self.stats.db_last_ok_micros);
            if let Some(retries) = self.failures.take() {
                tracing::info!(failed_attempts = retries.failures(), "database writes recovered");
            }
            self.state = job.session.map_or(State::Disconnected, State::Connected);
            self.after_change(ctx);
            return;
        };
        self.stats.db_healthy.store(false, Ordering::Relaxed);
        bump(&self.stats.write_failures, 1);
        if err.is_auth_failure() {
            self.request_fresh_secret(ctx);
        }
        // Logged when a run of failures starts and when it ends, not at every attempt.
        let buffered_minutes = self.buffered_minutes();
        let retries = self.failures.get_or_insert_with(|| {
            tracing::warn!(
                error = %err, class = ?err.class(), buffered_minutes,
                "database write failed; rows kept, retrying with back-off"
            );
            Retries::new(backoff::DATABASE_WRITES)
        });
        let mut delay = retries.failed();
        if err.class() == ErrorClass::Fatal {
            // Retrying cannot help until an operator acts (an unusable URL is refused at
            // start-up, so this is defence in depth): say so at every attempt, and retry
            // only at the slowest pace, keeping the rows.
            tracing::error!(error = %err, "database configuration error; rows kept until it is fixed");
            delay = backoff::DATABASE_WRITES.max;
        } else if retries.failures() > 1 {
            tracing::debug!(error = %err, failures = retries.failures(), "database write failed again");
        }
        self.state = State::BackingOff { session: job.session, until: self.stats.clock.instant() + delay };
        ctx.run_later(delay, Self::step);
        if err.broke_connection() && self.drain.is_none() {
            // The supervisor restarts the writer with its rows (a supervised actor keeps
            // its state); `started` steps again once the back-off has passed.
            ctx.stop();
            return;
        }
        self.after_change(ctx);
    }

    /// After an attempt: gauges, held replies, and the next step.
    fn after_change(&mut self, ctx: &mut Context<Self>) {
        self.publish_state();
        self.release_replies_if_room();
        self.step(ctx);
    }

    /// The drain's deadline: cancel what is in flight and report.
    pub(super) fn drain_deadline(&mut self, ctx: &mut Context<Self>) {
        if self.drain.is_some() {
            let DrainReport { unwritten_minutes, unwritten_rejections } = self.report();
            tracing::error!(
                state = self.state.name(),
                unwritten_minutes,
                unwritten_rejections,
                "shutdown deadline reached with rows still unwritten"
            );
            self.finish_drain(ctx, false);
        }
    }

    /// Answers the drain. When not `complete` (the deadline), the writer stops for good:
    /// an attempt in flight is cancelled and its rows are reported as not written (its
    /// commit may still happen; the ledger would recognise a retry, but nothing retries).
    fn finish_drain(&mut self, ctx: &mut Context<Self>, complete: bool) {
        let Some(drain) = self.drain.take() else { return };
        ctx.cancel_future(drain.timer);
        let report = self.report();
        if !complete {
            if let State::Busy(attempt) = &self.state {
                ctx.cancel_future(attempt.handle);
            }
            self.state = State::Stopped;
        }
        let _ = drain.reply.send(report);
        self.release_replies();
        self.publish_state();
    }

    /// What is not (known to be) written: buffered, and in flight.
    pub(super) fn report(&self) -> DrainReport {
        DrainReport {
            unwritten_minutes: self.buffered_minutes(),
            unwritten_rejections: self.buffered_rejections(),
        }
    }

    /// Minutes held and not yet written, including those an attempt has in flight.
    pub(super) fn buffered_minutes(&self) -> usize {
        self.waiting_minutes() + self.in_flight().0
    }

    /// Minutes held that no attempt has taken yet.
    fn waiting_minutes(&self) -> usize {
        self.pending.len() + self.unwritten.iter().map(Batch::minutes).sum::<usize>()
    }

    /// Rejected messages held and not yet stored, including those in flight.
    pub(super) fn buffered_rejections(&self) -> usize {
        let unwritten = self.unwritten.iter().map(|batch| batch.len() - batch.minutes()).sum::<usize>();
        self.rejections.len() + unwritten + self.in_flight().1
    }

    /// (minutes, rejections) an attempt has in flight.
    fn in_flight(&self) -> (usize, usize) {
        match &self.state {
            State::Busy(attempt) => (attempt.minutes, attempt.rejections),
            _ => (0, 0),
        }
    }

    /// Nothing to write (in flight or not).
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.rejections.is_empty() && self.unwritten.is_empty()
    }

    pub(super) fn publish_state(&self) {
        let stats = &self.stats;
        stats.rows_buffered.store(self.buffered_minutes() as u64, Ordering::Relaxed);
        stats.rows_waiting.store(self.waiting_minutes() as u64, Ordering::Relaxed);
        stats.rejections_buffered.store(self.buffered_rejections() as u64, Ordering::Relaxed);
        stats.writer_holding.store(!self.held_replies.is_empty(), Ordering::Relaxed);
        let state = WRITER_STATES.iter().position(|name| *name == self.state.name()).unwrap_or(0);
        stats.writer_state.store(u8::try_from(state).unwrap_or(0), Ordering::Relaxed);
    }
}
