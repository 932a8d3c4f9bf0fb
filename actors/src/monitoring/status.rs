//! `/api/status`: everything the status page shows, as one JSON document (its fields are
//! documented in docs/operations.md). Built from what the counters already hold, the
//! history of rates and the recent samples; reading it takes no lock the data path waits
//! on for longer than a copy.

use super::health::readiness;
use super::history::{SAMPLE_EVERY, WINDOW};
use super::routes::MonitorState;
use crate::logic::RejectReason;
use crate::stats::PipelineStats;
use chrono::{DateTime, SecondsFormat};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// Limits from the configuration that the page shows next to the gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusLimits {
    pub inbound_capacity: usize,
    pub max_buffered_rows: usize,
    pub max_buffered_rejections: usize,
}

#[derive(Debug, Serialize)]
pub(super) struct Status {
    version: &'static str,
    now: Option<String>,
    started_at: Option<String>,
    alive: bool,
    stuck: Vec<String>,
    ready: bool,
    not_ready: Vec<String>,
    mqtt: Mqtt,
    postgres: Postgres,
    secret: Option<Secret>,
    /// `[journal]`; `null` when it is off.
    journal: Option<Journal>,
    counters: Counters,
    rates: RateHistory,
    buffers: Buffers,
    rejections: Vec<Rejections>,
    recent_minutes: Vec<RecentMinute>,
    silent_machines: Vec<SilentMachine>,
}

#[derive(Debug, Serialize)]
struct Mqtt {
    /// The broker URL of the current (or last) connection.
    broker: Option<String>,
    connected: bool,
    subscribed: bool,
    session_resumed: Option<bool>,
    connected_since: Option<String>,
    reconnects: u64,
    problem: Option<String>,
    last_message_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct Journal {
    /// Why appends fail (a full disk), while they do: intake waits meanwhile.
    problem: Option<String>,
    bytes: u64,
    segments: u64,
    /// The oldest sample not yet committed is at most this old (`null`: none pending).
    oldest_pending_age_seconds: Option<f64>,
    appended: u64,
    replayed: u64,
    replay_already_committed: u64,
    damaged_bytes: u64,
    write_errors: u64,
}

#[derive(Debug, Serialize)]
struct Postgres {
    healthy: bool,
    last_success_at: Option<String>,
    last_success_age_seconds: Option<f64>,
    tls: Option<bool>,
    connects: u64,
    write_failures: u64,
    writer_restarts: u64,
}

#[derive(Debug, Serialize)]
struct Secret {
    age_seconds: f64,
    next_refresh_in_seconds: Option<f64>,
    stale_after_seconds: u64,
    fetches: u64,
    failures: u64,
    changes: u64,
}

#[derive(Debug, Serialize)]
struct Counters {
    received: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    rejections_written: u64,
    rejections_not_stored: u64,
    samples_lost: u64,
    minutes_closed: u64,
    rows_written: u64,
    write_batches: u64,
}

#[derive(Debug, Serialize)]
struct RateHistory {
    every_seconds: u64,
    window_seconds: u64,
    points: Vec<RatePoint>,
}

#[derive(Debug, Serialize)]
struct RatePoint {
    at: Option<String>,
    received: f64,
    accepted: f64,
    rejected: f64,
    rows_written: f64,
}

#[derive(Debug, Serialize)]
struct Buffers {
    inbound_queued: u64,
    inbound_capacity: usize,
    open_minutes: i64,
    rows_buffered: u64,
    max_buffered_rows: usize,
    rejections_buffered: u64,
    max_buffered_rejections: usize,
    writer_state: &'static str,
    writer_buffer_full: bool,
}

#[derive(Debug, Serialize)]
struct Rejections {
    reason: &'static str,
    count: u64,
    latest: Option<RejectionExample>,
}

#[derive(Debug, Serialize)]
struct RejectionExample {
    at: Option<String>,
    topic: String,
    detail: String,
    payload: String,
    payload_cut: bool,
}

#[derive(Debug, Serialize)]
struct RecentMinute {
    machine: String,
    minute: Option<String>,
    samples: u32,
    load_rate_avg: f64,
    load_rate_min: f64,
    load_rate_max: f64,
}

#[derive(Debug, Serialize)]
struct SilentMachine {
    machine: String,
    last_seen_at: Option<String>,
    silent_seconds: f64,
}

/// The document for `now_micros` (µs since the epoch).
pub(super) fn status(state: &MonitorState, now_micros: i64) -> Status {
    let stats = &state.stats;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let age = |at: i64| (now_micros.saturating_sub(at) as f64 / 1e6).max(0.0);
    let stale = state.heartbeats.stale();
    let not_ready = readiness(stats, &state.readiness, now_micros).err().unwrap_or_default();
    let db_ok = stats.db_last_ok_micros.load(Ordering::Relaxed);
    Status {
        version: env!("CARGO_PKG_VERSION"),
        now: timestamp(now_micros),
        started_at: timestamp(state.started_micros),
        alive: stale.is_empty(),
        stuck: stale
            .iter()
            .map(|(name, age)| format!("{name} (no heartbeat for {}s)", age.as_secs()))
            .collect(),
        ready: not_ready.is_empty(),
        not_ready,
        mqtt: Mqtt {
            broker: stats.mqtt_broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            connected: stats.mqtt_connected.load(Ordering::Relaxed),
            subscribed: stats.mqtt_subscribed.load(Ordering::Relaxed),
            session_resumed: stats.mqtt_session_resumed.get(),
            connected_since: timestamp(stats.mqtt_connected_at_micros.load(Ordering::Relaxed))
                .filter(|_| stats.mqtt_connected.load(Ordering::Relaxed)),
            reconnects: get(&stats.mqtt_reconnects),
            problem: stats.mqtt_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
            last_message_at: timestamp(stats.last_message_micros.load(Ordering::Relaxed)),
        },
        postgres: Postgres {
            healthy: stats.db_healthy.load(Ordering::Relaxed),
            last_success_at: timestamp(db_ok),
            last_success_age_seconds: (db_ok > 0).then(|| age(db_ok)),
            tls: stats.db_tls.get(),
            connects: get(&stats.db_connects),
            write_failures: get(&stats.write_failures),
            writer_restarts: get(&stats.writer_restarts),
        },
        secret: secret(stats, now_micros),
        journal: journal(stats, now_micros),
        counters: Counters {
            received: get(&stats.received),
            accepted: get(&stats.accepted),
            duplicates: get(&stats.duplicates),
            rejected: stats.rejected_total(),
            rejections_written: get(&stats.rejects_written),
            rejections_not_stored: get(&stats.rejects_not_stored),
            samples_lost: get(&stats.samples_lost),
            minutes_closed: get(&stats.minutes_closed),
            rows_written: get(&stats.rows_written),
            write_batches: get(&stats.write_batches),
        },
        rates: RateHistory {
            every_seconds: SAMPLE_EVERY.as_secs(),
            window_seconds: WINDOW.as_secs(),
            points: state
                .history
                .rates()
                .into_iter()
                .map(|rates| RatePoint {
                    at: timestamp(rates.at_micros),
                    received: rates.received,
                    accepted: rates.accepted,
                    rejected: rates.rejected,
                    rows_written: rates.rows_written,
                })
                .collect(),
        },
        buffers: Buffers {
            inbound_queued: get(&stats.inbound_queued),
            inbound_capacity: state.limits.inbound_capacity,
            open_minutes: stats.open_minutes.load(Ordering::Relaxed),
            rows_buffered: get(&stats.rows_buffered),
            max_buffered_rows: state.limits.max_buffered_rows,
            rejections_buffered: get(&stats.rejections_buffered),
            max_buffered_rejections: state.limits.max_buffered_rejections,
            writer_state: stats.writer_state(),
            writer_buffer_full: stats.writer_holding.load(Ordering::Relaxed),
        },
        rejections: rejections(stats),
        recent_minutes: stats
            .recent
            .minutes()
            .into_iter()
            .map(|minute| RecentMinute {
                machine: minute.machine.to_string(),
                minute: timestamp(minute.minute_micros),
                samples: minute.samples,
                load_rate_avg: minute.load_rate_avg,
                load_rate_min: minute.load_rate_min,
                load_rate_max: minute.load_rate_max,
            })
            .collect(),
        silent_machines: stats
            .recent
            .silent()
            .into_iter()
            .map(|silent| SilentMachine {
                machine: silent.machine.to_string(),
                last_seen_at: timestamp(silent.last_seen_micros),
                silent_seconds: age(silent.last_seen_micros),
            })
            .collect(),
    }
}

fn journal(stats: &PipelineStats, now_micros: i64) -> Option<Journal> {
    if !stats.journal_enabled.load(Ordering::Relaxed) {
        return None;
    }
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let oldest = stats.journal_oldest_pending_micros.load(Ordering::Relaxed);
    Some(Journal {
        problem: stats.journal_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        bytes: get(&stats.journal_bytes),
        segments: get(&stats.journal_segments),
        oldest_pending_age_seconds: (oldest > 0)
            .then(|| (now_micros.saturating_sub(oldest) as f64 / 1e6).max(0.0)),
        appended: get(&stats.journal_appended),
        replayed: get(&stats.journal_replayed),
        replay_already_committed: get(&stats.journal_replay_skipped),
        damaged_bytes: get(&stats.journal_lost_bytes),
        write_errors: get(&stats.journal_write_errors),
    })
}

fn secret(stats: &PipelineStats, now_micros: i64) -> Option<Secret> {
    if !stats.secret_configured.load(Ordering::Relaxed) {
        return None;
    }
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let next = stats.secret_next_fetch_micros.load(Ordering::Relaxed);
    Some(Secret {
        age_seconds: (now_micros.saturating_sub(stats.secret_last_ok_micros.load(Ordering::Relaxed)) as f64
            / 1e6)
            .max(0.0),
        next_refresh_in_seconds: (next > 0).then(|| (next.saturating_sub(now_micros) as f64 / 1e6).max(0.0)),
        stale_after_seconds: get(&stats.secret_max_age_seconds),
        fetches: get(&stats.secret_fetches),
        failures: get(&stats.secret_failures),
        changes: get(&stats.secret_changes),
    })
}

/// Every reason counted so far, the most frequent first, with its latest example.
fn rejections(stats: &PipelineStats) -> Vec<Rejections> {
    let mut examples = stats.recent.rejection_examples();
    let mut rejections: Vec<Rejections> = RejectReason::ALL
        .iter()
        .filter(|reason| stats.rejected(**reason) > 0)
        .map(|reason| Rejections {
            reason: reason.as_str(),
            count: stats.rejected(*reason),
            latest: examples.iter().position(|(r, _)| r == reason).map(|at| examples.swap_remove(at).1).map(
                |example| RejectionExample {
                    at: timestamp(example.at_micros),
                    topic: example.topic,
                    detail: example.detail,
                    payload: example.payload,
                    payload_cut: example.payload_cut,
                },
            ),
        })
        .collect();
    rejections.sort_by_key(|rejections| std::cmp::Reverse(rejections.count));
    rejections
}

/// RFC 3339 in UTC to the millisecond; `None` for 0 ("never").
fn timestamp(micros: i64) -> Option<String> {
    if micros <= 0 {
        return None;
    }
    DateTime::from_timestamp_micros(micros).map(|at| at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The document as JSON safe to embed anywhere: `<`, `>`, `&` and the two JavaScript line
/// separators are written as `\u` escapes. They occur only inside strings, where the escape
/// means the same character, so a payload like `</script>` never appears as markup even to
/// a client that sniffs or embeds the response.
pub(super) fn to_json(status: &Status) -> String {
    let json = serde_json::to_string(status).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"));
    let mut safe = String::with_capacity(json.len() + 64);
    for character in json.chars() {
        match character {
            '<' => safe.push_str("\\u003c"),
            '>' => safe.push_str("\\u003e"),
            '&' => safe.push_str("\\u0026"),
            '\u{2028}' => safe.push_str("\\u2028"),
            '\u{2029}' => safe.push_str("\\u2029"),
            other => safe.push(other),
        }
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitoring::{Heartbeats, ReadinessSettings};
    use std::sync::Arc;

    #[test]
    fn a_hostile_payload_is_escaped_and_the_json_still_reads_back() {
        let stats = Arc::new(PipelineStats::default());
        stats.count_rejected(RejectReason::Malformed);
        let hostile = "<script>alert('x')</script> & \u{2028}";
        stats.recent.rejected(
            RejectReason::Malformed,
            1_800_000_000_000_000,
            "t/<b>",
            "bad <json>",
            hostile.as_bytes(),
        );
        let state = MonitorState::new(
            stats,
            ReadinessSettings { idle_alert: None },
            StatusLimits::default(),
            Heartbeats::default(),
        );
        let json = to_json(&status(&state, 1_800_000_001_000_000));
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'), "{json}");
        assert!(json.contains("\\u003cscript\\u003e"), "{json}");
        let read: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        let example = &read["rejections"][0]["latest"];
        assert_eq!(example["payload"], hostile);
        assert_eq!(example["topic"], "t/<b>");
        assert_eq!(read["rejections"][0]["reason"], "malformed");
        assert_eq!(read["journal"], serde_json::Value::Null, "no journal configured");
        assert_eq!(read["ready"], false);
    }
}

#[cfg(test)]
mod journal_tests {
    use super::*;
    use crate::monitoring::{Heartbeats, ReadinessSettings};
    use std::sync::Arc;

    #[test]
    fn the_journal_part_reports_its_gauges_and_problem() {
        const NOW: i64 = 1_800_000_000_000_000;
        let stats = Arc::new(PipelineStats::default());
        stats.journal_enabled.store(true, Ordering::Relaxed);
        stats.journal_bytes.store(4096, Ordering::Relaxed);
        stats.journal_segments.store(2, Ordering::Relaxed);
        stats.journal_oldest_pending_micros.store(NOW - 90_000_000, Ordering::Relaxed);
        stats.journal_replay_skipped.store(7, Ordering::Relaxed);
        stats.set_journal_problem(Some("cannot append: No space left on device".into()));
        let state = MonitorState::new(
            stats,
            ReadinessSettings { idle_alert: None },
            StatusLimits::default(),
            Heartbeats::default(),
        );
        let read: serde_json::Value = serde_json::from_str(&to_json(&status(&state, NOW))).expect("JSON");
        let journal = &read["journal"];
        assert_eq!((journal["bytes"].as_u64(), journal["segments"].as_u64()), (Some(4096), Some(2)));
        assert_eq!(journal["oldest_pending_age_seconds"].as_f64(), Some(90.0));
        assert_eq!(journal["replay_already_committed"].as_u64(), Some(7));
        assert_eq!(journal["problem"], "cannot append: No space left on device");
        let reasons = read["not_ready"].as_array().expect("reasons");
        assert!(reasons
            .iter()
            .any(|reason| reason.as_str().is_some_and(|r| r.starts_with("journal cannot write"))));
    }
}
