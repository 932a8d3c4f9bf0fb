//! One flush: everything the writer had buffered, moved out of the actor while it is
//! written, and handed back with whatever could not be written.

use super::error::{DbError, ErrorClass};
use super::session::{Connector, Session};
use crate::logic::{ClosedMinute, RejectedMessage};
use crate::secrets::Credentials;
use crate::stats::{bump, PipelineStats};
use std::sync::Arc;
use std::time::Instant;

pub(super) struct FlushJob {
    pub(super) connector: Connector,
    pub(super) credentials: Option<Credentials>,
    /// Open a new connection with `credentials` before writing, even if the current one
    /// works: the secret was rotated, and the old password may stop working any time.
    pub(super) reconnect: bool,
    pub(super) session: Option<Session>,
    pub(super) minutes: Vec<ClosedMinute>,
    pub(super) rejections: Vec<RejectedMessage>,
    pub(super) batch_max_rows: usize,
    pub(super) stats: Arc<PipelineStats>,
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
        FlushOutcome { job: self, error: None }
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
                _ => Err(err),
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
