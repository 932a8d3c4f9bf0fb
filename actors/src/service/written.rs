//! The minutes written within `max_lateness` before this start, read back from
//! PostgreSQL for the duplicate index ([`crate::logic::seen`]): without them a gateway
//! resending its buffer right after a restart of the service would be counted twice.
//!
//! Start-up does not wait for an unreachable database (the service takes messages and
//! buffers them through an outage): one attempt, bounded by [`FIRST_ATTEMPT`]; when it
//! fails, the rows are read in the background, retried with back-off, and handed to the
//! aggregators when they come. Until then a resend of a sample written before this start
//! is not recognised: the one window docs/architecture.md names.

use crate::backoff::{self, Retries};
use crate::broker::Broker;
use crate::logic::time::duration_micros;
use crate::logic::{Timestamp, WrittenMinute};
use crate::messages::{Credentials, RememberWrittenRows};
use crate::writer::{Connector, DbError};
use actix::Addr;
use std::time::Duration;

/// How long start-up waits for the rows before it goes on without them.
const FIRST_ATTEMPT: Duration = Duration::from_secs(3);

/// What to read: from the oldest minute a sample accepted now (or replayed: it is
/// validated as of its arrival, `oldest_replayed`) may fall in.
#[derive(Debug, Clone)]
pub(super) struct WrittenQuery {
    connector: Connector,
    credentials: Option<Credentials>,
    since: Timestamp,
}

impl WrittenQuery {
    pub(super) fn new(
        connector: &Connector,
        credentials: Option<&Credentials>,
        now: Timestamp,
        max_lateness: Duration,
        oldest_replayed: Option<i64>,
    ) -> Self {
        let from = oldest_replayed.map_or(now, |at| now.min(Timestamp::from_micros(at)));
        let since = from.saturating_add_micros(-duration_micros(max_lateness)).minute().start();
        WrittenQuery { connector: connector.clone(), credentials: credentials.cloned(), since }
    }

    async fn run(&self) -> Result<Vec<(String, WrittenMinute)>, DbError> {
        let started = std::time::Instant::now();
        let mut session = self.connector.connect(self.credentials.as_ref()).await?;
        let written = session.written_since(self.since.to_chrono()).await?;
        tracing::info!(
            rows = written.len(),
            since = %self.since.to_chrono(),
            took = ?started.elapsed(),
            "written minutes read back for duplicate detection"
        );
        Ok(written)
    }

    /// The rows, if PostgreSQL answers within [`FIRST_ATTEMPT`].
    pub(super) async fn first_attempt(&self) -> Option<Vec<(String, WrittenMinute)>> {
        let error = match tokio::time::timeout(FIRST_ATTEMPT, self.run()).await {
            Ok(Ok(written)) => return Some(written),
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {FIRST_ATTEMPT:?}"),
        };
        tracing::warn!(
            error = %error,
            "cannot read the minutes written before this start; starting without them and reading \
             them in the background (until then a resend of their samples is counted again)"
        );
        None
    }

    /// Reads the rows in the background until it succeeds, then hands them to `broker`.
    pub(super) fn in_background(self, broker: Addr<Broker>) -> actix_rt::task::JoinHandle<()> {
        actix_rt::spawn(async move {
            let mut retries = Retries::new(backoff::DATABASE_WRITES);
            loop {
                actix_rt::time::sleep(retries.failed()).await;
                match self.run().await {
                    Ok(written) => {
                        // Control path, once: the broker routes them like a batch.
                        if broker.send(RememberWrittenRows(written)).await.is_err() {
                            tracing::debug!("the broker stopped before the written minutes arrived");
                        }
                        return;
                    }
                    Err(err) if err.is_retriable() => {
                        tracing::debug!(error = %err, "still cannot read the minutes written before this start");
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "cannot read the minutes written before this start; resends of their samples are counted again");
                        return;
                    }
                }
            }
        })
    }
}
