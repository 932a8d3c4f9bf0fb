//! One flush: the batches the writer had, moved out of the actor while they are written,
//! and handed back with whatever could not be written.

use super::batch::{refused_minute, Batch, BatchIds, Rows};
use super::error::{DbError, ErrorClass};
use super::session::{Connector, Session};
use crate::journal::Journal;
use crate::messages::Credentials;
use crate::stats::{bump, PipelineStats};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

pub(super) struct FlushJob {
    pub(super) connector: Connector,
    pub(super) credentials: Option<Credentials>,
    /// Open a new connection with `credentials` before writing, even if the current one
    /// works: the secret was rotated, and the old password may stop working any time.
    pub(super) reconnect: bool,
    pub(super) session: Option<Session>,
    /// Batches to write, in order; on return, the ones not written.
    pub(super) batches: VecDeque<Batch>,
    pub(super) prune_ledger: bool,
    /// Nothing to write, but `/readyz` wants to know the database answers.
    pub(super) ping: bool,
    pub(super) ids: Arc<BatchIds>,
    pub(super) stats: Arc<PipelineStats>,
    /// Intents before each batch, releases after it (see `crate::journal`).
    pub(super) journal: Option<Arc<Journal>>,
}

/// A finished flush: the job holds what it did not write, and its session when the
/// connection is still usable.
pub(super) struct FlushOutcome {
    pub(super) job: FlushJob,
    pub(super) error: Option<DbError>,
}

impl FlushJob {
    pub(super) async fn run(mut self) -> FlushOutcome {
        let mut session = match self.session().await {
            Ok(session) => session,
            Err(err) => return FlushOutcome { job: self, error: Some(err) },
        };
        while let Some(mut batch) = self.batches.pop_front() {
            if let Err(err) = self.journal_intent(&mut batch) {
                self.batches.push_front(batch);
                return self.fail(session, err);
            }
            let started = self.stats.clock.instant();
            let written = match &batch.rows {
                Rows::Minutes(rows) => session.write_minutes(&batch.id, rows, &self.stats).await,
                Rows::Rejections(rows) => session.insert_rejections(&batch.id, rows).await,
            };
            match written {
                Ok(applied) => self.count(&batch, applied, started),
                Err(err) if err.class() == ErrorClass::Poison => self.isolate(batch, &err),
                Err(err) => {
                    self.batches.push_front(batch);
                    return self.fail(session, err);
                }
            }
        }
        if self.ping {
            if let Err(err) = session.ping().await {
                return self.fail(session, err);
            }
        }
        if self.prune_ledger {
            match session.prune_ledger(self.ledger_keep_since()).await {
                Ok(pruned) => tracing::debug!(pruned, "old batch ids pruned from the ledger"),
                Err(err) => {
                    tracing::warn!(error = %err, "pruning the batch ledger failed; trying again later");
                }
            }
            self.prune_ledger = false;
        }
        self.session = Some(session);
        FlushOutcome { job: self, error: None }
    }

    /// What the ledger must keep for the journal: everything applied since its oldest
    /// segment was started, less an hour for the clocks of this host and the database's
    /// to differ. Without a journal, nothing beyond the day the ledger keeps anyway.
    fn ledger_keep_since(&self) -> chrono::DateTime<chrono::Utc> {
        let now = self.stats.clock.now().micros();
        let oldest = self.journal.as_ref().and_then(|journal| journal.oldest_segment_started_micros());
        let since = oldest.map_or(now, |started| started.min(now).saturating_sub(3_600_000_000));
        chrono::DateTime::from_timestamp_micros(since).unwrap_or_else(chrono::Utc::now)
    }

    /// Appends the batch's intent to the journal before its first attempt.
    fn journal_intent(&self, batch: &mut Batch) -> Result<(), DbError> {
        let Some(journal) = &self.journal else { return Ok(()) };
        if batch.intent_journaled {
            return Ok(());
        }
        let appended = match &batch.rows {
            Rows::Minutes(rows) => journal.append_minutes_intent(&batch.id, rows),
            Rows::Rejections(rows) => journal.append_rejections_intent(&batch.id, rows),
        };
        appended.map_err(|err| DbError::Journal(err.to_string()))?;
        batch.intent_journaled = true;
        Ok(())
    }

    /// The batch is committed (or was already): its journal records are finished.
    fn release(&self, batch: &Batch) {
        let Some(journal) = &self.journal else { return };
        match &batch.rows {
            Rows::Minutes(rows) => journal.release_all(rows.iter().map(|row| &row.tally)),
            Rows::Rejections(rows) => journal.release_all(rows.iter().map(|row| &row.tally)),
        }
    }

    fn count(&self, batch: &Batch, applied: bool, started: Instant) {
        self.release(batch);
        let stats = &self.stats;
        if let Rows::Minutes(rows) = &batch.rows {
            // Applied either way: by this attempt, or by one whose commit reply was lost.
            bump(&stats.samples_written, rows.iter().map(|row| u64::from(row.aggregate.samples)).sum());
        }
        if !applied {
            // Its commit was lost with a connection; the ledger recognised the retry.
            bump(&stats.batches_replayed, 1);
            tracing::info!(batch = %batch.id, "batch was already applied; retry skipped");
            return;
        }
        match &batch.rows {
            Rows::Minutes(rows) => {
                bump(&stats.rows_written, rows.len() as u64);
                bump(&stats.write_batches, 1);
                stats.latencies.write_batch.observe(started.elapsed().as_secs_f64());
                let now = stats.clock.now().micros();
                for row in rows {
                    let lag = now.saturating_sub(row.minute.end().micros()) as f64 / 1e6;
                    stats.latencies.commit_lag.observe(lag);
                }
                tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "minutes upserted");
            }
            Rows::Rejections(rows) => bump(&stats.rejects_written, rows.len() as u64),
        }
    }

    /// PostgreSQL refused a batch because of its data: halve it until the refused rows
    /// are alone, then store each refused minute as a rejected message with the
    /// database's error. The rest is written as usual.
    fn isolate(&mut self, batch: Batch, err: &DbError) {
        if batch.len() > 1 {
            tracing::warn!(batch = %batch.id, rows = batch.len(), error = %err, "PostgreSQL refused a batch; splitting it");
            let (left, right) = batch.split();
            self.batches.push_front(right);
            self.batches.push_front(left);
            return;
        }
        match batch.rows {
            Rows::Minutes(rows) => {
                let refused: Vec<_> = rows.iter().map(|row| refused_minute(row, &err.to_string())).collect();
                for row in &rows {
                    tracing::error!(machine = %row.machine, minute = %row.minute.start(), error = %err, "minute refused by PostgreSQL; stored in rejected_message");
                }
                bump(&self.stats.minutes_refused, rows.len() as u64);
                self.batches.push_back(Batch {
                    id: self.ids.next(),
                    rows: Rows::Rejections(refused),
                    intent_journaled: false,
                });
            }
            Rows::Rejections(ref rows) => {
                // Not storable: finished all the same (counted in rejections_dropped).
                self.release(&batch);
                bump(&self.stats.rejections_dropped, rows.len() as u64);
                tracing::error!(error = %err, "PostgreSQL refused a rejected message; it cannot be stored");
            }
        }
    }

    /// The session to write on: the current one, or a new connection when there is none,
    /// it has closed, or the credentials changed. A new connection replaces the old one
    /// only once it is open (and its schema checked), so a rotation never leaves the
    /// writer without a working connection.
    async fn session(&mut self) -> Result<Session, DbError> {
        let current = self.session.take().filter(|session| !session.is_closed());
        let current = match current {
            Some(session) if !self.reconnect => return Ok(session),
            other => other,
        };
        match self.connector.connect(self.credentials.as_ref()).await {
            Ok(session) => {
                bump(&self.stats.db_connects, 1);
                self.stats.db_tls.set(session.encrypted());
                tracing::info!(
                    target = self.connector.target(),
                    user = ?self.credentials.as_ref().and_then(|c| c.user.as_deref()),
                    rotated = self.reconnect,
                    "connected to PostgreSQL"
                );
                self.reconnect = false;
                Ok(session)
            }
            Err(err) => match current {
                // The new credentials do not work (yet): keep writing on the old connection.
                Some(old) => {
                    tracing::warn!(error = %err, "cannot connect with the new credentials; keeping the current connection");
                    Ok(old)
                }
                None => Err(err),
            },
        }
    }

    /// Keeps the session only when the error leaves the connection trustworthy.
    fn fail(mut self, session: Session, err: DbError) -> FlushOutcome {
        let keep = matches!(err.class(), ErrorClass::Retriable { reconnect: false } | ErrorClass::Poison);
        self.session = keep.then_some(session);
        FlushOutcome { job: self, error: Some(err) }
    }
}
