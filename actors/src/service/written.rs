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

/// How long start-up waits for a connection to read the rows before it goes on without
/// them.
const FIRST_ATTEMPT: Duration = Duration::from_secs(3);

/// Why the rows could not be read.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error("no connection within {0:?}")]
    NoAnswer(Duration),
    #[error(transparent)]
    Database(#[from] DbError),
}

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

    /// Reads the rows, over a connection opened within `connect_within` when given.
    async fn run(&self, connect_within: Option<Duration>) -> Result<Vec<(String, WrittenMinute)>, Failed> {
        let started = std::time::Instant::now();
        let connecting = self.connector.connect(self.credentials.as_ref());
        let mut session = match connect_within {
            Some(limit) => {
                tokio::time::timeout(limit, connecting).await.map_err(|_| Failed::NoAnswer(limit))??
            }
            None => connecting.await?,
        };
        let mut written = session.written_since(self.since.to_chrono()).await?;
        // One machine's minutes together: they then travel to its aggregator in one
        // message (the query leaves the order to the table, which is cheaper to read).
        written.sort_unstable_by(|(left, _), (right, _)| left.cmp(right));
        tracing::info!(
            rows = written.len(),
            since = %self.since.to_chrono(),
            took = ?started.elapsed(),
            "written minutes read back for duplicate detection"
        );
        Ok(written)
    }

    /// The rows, if PostgreSQL takes a connection within [`FIRST_ATTEMPT`] (the read
    /// itself may take longer: about a million rows at 100,000 machines).
    pub(super) async fn first_attempt(&self) -> Option<Vec<(String, WrittenMinute)>> {
        let error = match self.run(Some(FIRST_ATTEMPT)).await {
            Ok(written) => return Some(written),
            Err(err) => err.to_string(),
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
                match self.run(None).await {
                    Ok(written) => {
                        // Control path, once: the broker routes them like a batch.
                        if broker.send(RememberWrittenRows(written)).await.is_err() {
                            tracing::debug!("the broker stopped before the written minutes arrived");
                        }
                        return;
                    }
                    Err(Failed::Database(err)) if err.is_retriable() => {
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
