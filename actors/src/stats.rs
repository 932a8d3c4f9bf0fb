//! Counters, gauges and histograms shared by the actors: what came in, what was rejected
//! and why, what was written, and the state health checks look at. Plain atomics (and
//! prometheus-client's lock-free histograms) so that counting never takes a lock on the
//! data path; `/metrics`, `/readyz` and the shutdown summary read them.

use crate::clock::{self, Clock};
use crate::logic::RejectReason;
use crate::recent::Recent;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct PipelineStats {
    /// The clock the timestamps below are read from: every component that counts holds
    /// these stats, so this is how each reads the same "now" (a [`ManualClock`] in tests).
    ///
    /// [`ManualClock`]: crate::clock::ManualClock
    pub clock: StatsClock,
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Rejections over `rejects.max_per_second`, or arriving while `rejects.max_buffered`
    /// wait for the database: counted, not stored.
    pub rejects_not_stored: AtomicU64,
    /// Samples a send to a stopped aggregator could not deliver (should stay 0).
    pub samples_lost: AtomicU64,
    pub minutes_closed: AtomicU64,
    pub rows_written: AtomicU64,
    /// Samples in committed minute rows: once it equals `accepted`, everything accepted so
    /// far is in PostgreSQL (what a drain's end is timed by, without querying the table).
    pub samples_written: AtomicU64,
    pub rejects_written: AtomicU64,
    pub write_batches: AtomicU64,
    pub write_failures: AtomicU64,
    pub db_connects: AtomicU64,
    pub secret_fetches: AtomicU64,
    pub secret_failures: AtomicU64,
    pub secret_changes: AtomicU64,
    /// Batches whose retry the ledger recognised as already applied.
    pub batches_replayed: AtomicU64,
    /// Batches whose `COPY` of rows known new met an existing row and were upserted
    /// instead: a wrong hint (another instance, a failed start-up read), never a loss.
    pub copy_conflicts: AtomicU64,
    /// Minute rows PostgreSQL refused (stored in rejected_message as `db_refused`).
    pub minutes_refused: AtomicU64,
    /// Rejected messages PostgreSQL refused to store.
    pub rejections_dropped: AtomicU64,
    /// Minutes held by the writer, not yet written (a gauge).
    pub rows_buffered: AtomicU64,
    /// Of those, the ones no write attempt has taken yet (a gauge): what closing is paced
    /// by (`AggregatorSettings::writer_backlog_limit`).
    pub rows_waiting: AtomicU64,
    /// Closed minutes on their way to the writer: handed over, the send not yet answered.
    pub rows_to_writer: AtomicU64,
    /// Rejected messages held by the writer, not yet stored (a gauge).
    pub rejections_buffered: AtomicU64,
    /// The writer's buffer is full and aggregators wait for room (back-pressure).
    pub writer_holding: AtomicBool,
    /// The writer's state: an index into [`WRITER_STATES`].
    pub writer_state: AtomicU8,
    /// Messages waiting in the inbound channel when the broker last took a batch.
    pub inbound_queued: AtomicU64,
    /// Times the supervisor restarted the writer after a broken connection.
    pub writer_restarts: AtomicU64,
    /// Minutes held by aggregators (a gauge).
    pub open_minutes: AtomicI64,
    /// `[journal]` is on (the gauges below mean something).
    pub journal_enabled: AtomicBool,
    /// Messages appended to the journal.
    pub journal_appended: AtomicU64,
    /// Bytes and segment files the journal holds (gauges).
    pub journal_bytes: AtomicU64,
    pub journal_segments: AtomicU64,
    /// Messages read back from the journal at start-up, and how many of their samples
    /// were already in committed rows (not counted again).
    pub journal_replayed: AtomicU64,
    pub journal_replay_skipped: AtomicU64,
    /// Bytes of damaged records (torn or corrupt) found at start-up and skipped.
    pub journal_lost_bytes: AtomicU64,
    /// Appends that failed (a full disk); each is retried.
    pub journal_write_errors: AtomicU64,
    /// Bytes the cold part of the duplicate index holds on disk (a gauge).
    pub cold_index_bytes: AtomicU64,
    /// Cold runs read back because a sample reached their minutes.
    pub cold_index_loads: AtomicU64,
    /// Cold runs that could not be stored (kept in memory) or read back (dropped).
    pub cold_index_errors: AtomicU64,
    /// When the oldest segment with unfinished messages was started (µs since the epoch;
    /// 0: none): the oldest sample not yet committed is at most this old.
    pub journal_oldest_pending_micros: AtomicI64,
    /// Why the journal cannot append, while it cannot (for `/readyz`).
    pub journal_problem: std::sync::Mutex<Option<String>>,
    pub mqtt_connected: AtomicBool,
    pub mqtt_subscribed: AtomicBool,
    pub mqtt_reconnects: AtomicU64,
    /// Whether the broker kept the session at the last connect.
    pub mqtt_session_resumed: Known,
    /// The broker URL of the current (or last) connection: with several in `mqtt.url`,
    /// which node this instance is on.
    pub mqtt_broker: std::sync::Mutex<Option<String>>,
    /// Why connecting to the broker fails, while it does (for `/readyz`).
    pub mqtt_problem: std::sync::Mutex<Option<String>>,
    /// When the MQTT connection was last established (µs since the epoch).
    pub mqtt_connected_at_micros: AtomicI64,
    /// When the last message arrived (µs since the epoch; 0: none yet).
    pub last_message_micros: AtomicI64,
    /// Whether the last database operation (write, connect or ping) succeeded, and when
    /// one last did.
    pub db_healthy: AtomicBool,
    pub db_last_ok_micros: AtomicI64,
    /// Whether the writer's current connection is encrypted (TLS).
    pub db_tls: Known,
    /// Set when a secret source is configured; then `/readyz` checks its freshness.
    pub secret_configured: AtomicBool,
    pub secret_last_ok_micros: AtomicI64,
    /// Seconds the secret may go without a successful fetch before it counts as stale.
    pub secret_max_age_seconds: AtomicU64,
    /// When the secret keeper fetches next (µs since the epoch; 0: not scheduled).
    pub secret_next_fetch_micros: AtomicI64,
    pub latencies: Latencies,
    /// The latest rejections, closed minutes and silent machines (the status page).
    pub recent: Recent,
}

/// The writer's states, as `writer_state` counts them (docs/architecture.md).
pub const WRITER_STATES: [&str; 6] =
    ["starting", "disconnected", "connected", "busy", "backing_off", "stopped"];

/// A yes or no that may not be known (yet).
#[derive(Debug, Default)]
pub struct Known(AtomicU8);

impl Known {
    pub fn set(&self, value: Option<bool>) {
        self.0.store(value.map_or(0, |yes| if yes { 2 } else { 1 }), Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            value => Some(value == 2),
        }
    }
}

/// Histograms, in seconds.
#[derive(Debug)]
pub struct Latencies {
    /// One upsert statement.
    pub write_batch: Histogram,
    /// From a minute's end to the commit of its row (grace + close sweep + linger + write).
    pub commit_lag: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            write_batch: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            commit_lag: Histogram::new(exponential_buckets(0.25, 2.0, 14)),
        }
    }
}

/// Stores a component's current problem; true when it changed.
fn replace_problem(slot: &std::sync::Mutex<Option<String>>, problem: Option<String>) -> bool {
    let mut current = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let changed = *current != problem;
    *current = problem;
    changed
}

/// The clock of [`PipelineStats`]: the system's unless a test gives another.
#[derive(Debug, Clone)]
pub struct StatsClock(pub Arc<dyn Clock>);

impl Default for StatsClock {
    fn default() -> Self {
        StatsClock(clock::system())
    }
}

impl std::ops::Deref for StatsClock {
    type Target = dyn Clock;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl PipelineStats {
    /// Stats whose timestamps come from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        PipelineStats { clock: StatsClock(clock), ..PipelineStats::default() }
    }

    /// Records why connecting to the broker fails (`None`: it works); true when that
    /// changed, so a cause is logged when it starts, not at every retry.
    /// Sets or clears the journal's problem; true when it changed (log then).
    pub fn set_journal_problem(&self, problem: Option<String>) -> bool {
        replace_problem(&self.journal_problem, problem)
    }

    pub fn set_mqtt_problem(&self, problem: Option<String>) -> bool {
        replace_problem(&self.mqtt_problem, problem)
    }

    /// Stores "now" (wall clock, µs since the epoch) in a timestamp gauge.
    pub fn mark_now(&self, gauge: &AtomicI64) {
        gauge.store(self.clock.now().micros(), Ordering::Relaxed);
    }

    pub fn count_rejected(&self, reason: RejectReason) {
        self.rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// The writer's state by name ("starting" until it publishes one).
    pub fn writer_state(&self) -> &'static str {
        WRITER_STATES
            .get(usize::from(self.writer_state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or("starting")
    }

    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|reason| self.rejected(*reason)).sum()
    }

    /// One line for the logs: the counters that are not zero.
    pub fn summary(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut parts = vec![
            format!("received={}", get(&self.received)),
            format!("accepted={}", get(&self.accepted)),
            format!("duplicates={}", get(&self.duplicates)),
            format!("rejected={}", self.rejected_total()),
        ];
        for reason in RejectReason::ALL {
            let count = self.rejected(reason);
            if count > 0 {
                parts.push(format!("rejected.{reason}={count}"));
            }
        }
        parts.push(format!("minutes_closed={}", get(&self.minutes_closed)));
        parts.push(format!("rows_written={}", get(&self.rows_written)));
        parts.push(format!("write_failures={}", get(&self.write_failures)));
        parts.join(" ")
    }
}

/// `counter += by`, relaxed: counters order nothing.
pub fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}
