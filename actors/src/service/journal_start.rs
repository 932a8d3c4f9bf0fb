//! The journal at start-up: opened, its committed batches looked up in the ledger, and
//! what it holds replayed through the pipeline before the source connects.

use super::ServiceError;
use crate::backoff::{self, Retries};
use crate::journal::{self, Journal, JournalError, Recovered, ReplayFilter};
use crate::messages::Credentials;
use crate::source::InboundSink;
use crate::stats::PipelineStats;
use crate::writer::{Connector, DbError};
use fleetagg_config::Config;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// A journal to append to, and what to replay from it before the source starts.
#[derive(Debug)]
pub struct JournalReplay {
    pub journal: Arc<Journal>,
    pub recovered: Recovered,
    pub filter: ReplayFilter,
}

/// Feeds what the journal recovered through the pipeline, as if it had just arrived
/// (the broker skips what committed rows already count).
pub(super) async fn replay(recovered: &Recovered, sink: &InboundSink, stats: &PipelineStats) {
    if recovered.messages == 0 {
        return;
    }
    tracing::info!(messages = recovered.messages, "replaying the journal");
    let mut segments = recovered.messages();
    while let Some(messages) = segments.next_segment() {
        for message in messages {
            if !sink.deliver(message).await {
                return;
            }
            crate::stats::bump(&stats.journal_replayed, 1);
        }
    }
    tracing::info!(
        messages = stats.journal_replayed.load(Ordering::Relaxed),
        already_committed = stats.journal_replay_skipped.load(Ordering::Relaxed),
        "journal replayed"
    );
}

/// Opens `[journal]` when enabled, and works out what its replay must skip: the batches
/// among its intents that PostgreSQL's ledger holds (so a journal with intents needs
/// the database at start-up; without, none is asked).
pub(super) async fn open_journal(
    config: &Config,
    connector: &Connector,
    credentials: Option<&Credentials>,
    stats: &Arc<PipelineStats>,
) -> Result<Option<JournalReplay>, ServiceError> {
    let settings = &config.journal;
    if !settings.enabled {
        return Ok(None);
    }
    let identity = format!("client_id={} database={}", config.mqtt.client_id, connector.database_name());
    let (journal, mut recovered) = Journal::open(settings, &identity, stats.clone())?;
    if settings.sync == fleetagg_config::JournalSync::Fsync {
        journal::spawn_sync_thread(&journal, settings.sync_interval).map_err(|err| {
            JournalError::Directory {
                dir: settings.dir.clone(),
                message: format!("cannot start the sync thread: {err}"),
            }
        })?;
    }
    let ids = recovered.batch_ids();
    let committed = if ids.is_empty() {
        Default::default()
    } else {
        committed_batches(connector, credentials, &ids).await?
    };
    let filter = ReplayFilter::new(
        recovered.last_seq,
        &recovered.minutes_intents,
        &recovered.rejections_intents,
        &committed,
    );
    tracing::info!(
        dir = %settings.dir.display(),
        sync = ?settings.sync,
        messages_to_replay = recovered.messages,
        batches_found = ids.len(),
        batches_committed = committed.len(),
        "journal opened"
    );
    // The filter has what the replay needs from them.
    recovered.minutes_intents = Vec::new();
    recovered.rejections_intents = Vec::new();
    Ok(Some(JournalReplay { journal, recovered, filter }))
}

/// The ledger lookup for the replay.
async fn committed_batches(
    connector: &Connector,
    credentials: Option<&Credentials>,
    ids: &[String],
) -> Result<rustc_hash::FxHashSet<String>, DbError> {
    query_at_startup("cannot ask PostgreSQL which journaled batches it committed", || async {
        connector.connect(credentials).await?.committed_batches(ids).await
    })
    .await
}

/// A start-up query of the database, retried like the other start-up steps while its
/// error is retriable; `what` says what failed in the warning.
pub(super) async fn query_at_startup<T, F, Fut>(what: &'static str, mut query: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbError>>,
{
    let mut retries = Retries::new(backoff::DATABASE_WRITES);
    loop {
        match query().await {
            Ok(answer) => return Ok(answer),
            Err(err) if err.is_retriable() && retries.failures() + 1 < backoff::STARTUP_ATTEMPTS => {
                let wait = retries.failed();
                tracing::warn!(error = %err, ?wait, "{what}; retrying");
                actix_rt::time::sleep(wait).await;
            }
            Err(err) => return Err(err),
        }
    }
}
