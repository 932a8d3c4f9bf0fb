//! Readiness: the service is ready when it is subscribed to the broker, its last
//! database operation succeeded recently, its secret is fresh, its journal can write, and
//! messages flow. Each
//! failed condition gives a short reason for the 503 body.

use crate::stats::PipelineStats;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The writer pings an idle connection every few seconds; a success older than this
/// means the database has not answered for a while.
const DB_FRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub struct ReadinessSettings {
    /// `mqtt.idle_alert`.
    pub idle_alert: Option<Duration>,
}

/// Ok when ready, else the reasons it is not. `now_micros`: µs since the epoch.
pub fn readiness(
    stats: &PipelineStats,
    settings: &ReadinessSettings,
    now_micros: i64,
) -> Result<(), Vec<String>> {
    let age = |at: i64| Duration::from_micros(u64::try_from(now_micros.saturating_sub(at)).unwrap_or(0));
    let mut reasons = Vec::new();
    if !stats.mqtt_subscribed.load(Ordering::Relaxed) {
        let problem = stats.mqtt_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        reasons.push(match problem {
            Some(problem) => format!("not subscribed to the MQTT broker: {problem}"),
            None => "not subscribed to the MQTT broker".to_owned(),
        });
    }
    let db_ok_at = stats.db_last_ok_micros.load(Ordering::Relaxed);
    if db_ok_at == 0 {
        reasons.push("PostgreSQL has not answered yet".to_owned());
    } else if !stats.db_healthy.load(Ordering::Relaxed) {
        reasons.push(format!("PostgreSQL operations failing for {}s", age(db_ok_at).as_secs()));
    } else if age(db_ok_at) > DB_FRESH {
        reasons.push(format!("no PostgreSQL success for {}s", age(db_ok_at).as_secs()));
    }
    if stats.writer_holding.load(Ordering::Relaxed) {
        reasons.push(format!(
            "writer buffer full ({} minutes held): aggregators wait for PostgreSQL to take rows",
            stats.rows_buffered.load(Ordering::Relaxed)
        ));
    }
    if stats.secret_configured.load(Ordering::Relaxed) {
        let max_age = Duration::from_secs(stats.secret_max_age_seconds.load(Ordering::Relaxed));
        let fetched = age(stats.secret_last_ok_micros.load(Ordering::Relaxed));
        if fetched > max_age {
            reasons.push(format!("database secret not refreshed for {}s", fetched.as_secs()));
        }
    }
    let journal = stats.journal_problem.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if let Some(problem) = journal {
        reasons.push(format!("journal cannot write, intake waits: {problem}"));
    }
    if let Some(silent) = silence(stats, settings, now_micros) {
        reasons.push(format!("connected but no message for {}s", silent.as_secs()));
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons)
    }
}

/// How long the service has been connected without a message, when that exceeds
/// `idle_alert` (the "connected but silently stopped" failure).
pub fn silence(stats: &PipelineStats, settings: &ReadinessSettings, now_micros: i64) -> Option<Duration> {
    let limit = settings.idle_alert?;
    if !stats.mqtt_connected.load(Ordering::Relaxed) {
        return None;
    }
    let since = stats
        .last_message_micros
        .load(Ordering::Relaxed)
        .max(stats.mqtt_connected_at_micros.load(Ordering::Relaxed));
    let silent = Duration::from_micros(u64::try_from(now_micros.saturating_sub(since)).unwrap_or(0));
    (silent > limit).then_some(silent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;
    const SECOND: i64 = 1_000_000;

    fn healthy() -> PipelineStats {
        let stats = PipelineStats::default();
        stats.mqtt_subscribed.store(true, Ordering::Relaxed);
        stats.mqtt_connected.store(true, Ordering::Relaxed);
        stats.mqtt_connected_at_micros.store(NOW - 3600 * SECOND, Ordering::Relaxed);
        stats.last_message_micros.store(NOW - SECOND, Ordering::Relaxed);
        stats.db_healthy.store(true, Ordering::Relaxed);
        stats.db_last_ok_micros.store(NOW - SECOND, Ordering::Relaxed);
        stats
    }

    fn settings() -> ReadinessSettings {
        ReadinessSettings { idle_alert: Some(Duration::from_secs(300)) }
    }

    #[test]
    fn each_condition_has_its_reason() {
        assert_eq!(readiness(&healthy(), &settings(), NOW), Ok(()));

        let stats = healthy();
        stats.mqtt_subscribed.store(false, Ordering::Relaxed);
        assert_eq!(
            readiness(&stats, &settings(), NOW),
            Err(vec!["not subscribed to the MQTT broker".to_owned()])
        );

        let stats = healthy();
        stats.db_healthy.store(false, Ordering::Relaxed);
        let reasons = readiness(&stats, &settings(), NOW).unwrap_err();
        assert!(reasons[0].starts_with("PostgreSQL operations failing"), "{reasons:?}");

        let stats = healthy();
        stats.db_last_ok_micros.store(NOW - 31 * SECOND, Ordering::Relaxed);
        assert!(readiness(&stats, &settings(), NOW).unwrap_err()[0].starts_with("no PostgreSQL success"));

        let stats = healthy();
        stats.writer_holding.store(true, Ordering::Relaxed);
        stats.rows_buffered.store(42, Ordering::Relaxed);
        let reasons = readiness(&stats, &settings(), NOW).unwrap_err();
        assert_eq!(
            reasons,
            vec!["writer buffer full (42 minutes held): aggregators wait for PostgreSQL to take rows"
                .to_owned()]
        );

        let stats = healthy();
        stats.secret_configured.store(true, Ordering::Relaxed);
        stats.secret_max_age_seconds.store(60, Ordering::Relaxed);
        stats.secret_last_ok_micros.store(NOW - 61 * SECOND, Ordering::Relaxed);
        assert!(readiness(&stats, &settings(), NOW).unwrap_err()[0].contains("secret"));

        let stats = healthy();
        stats.set_journal_problem(Some("cannot append to the journal j: No space left on device".into()));
        assert_eq!(
            readiness(&stats, &settings(), NOW),
            Err(vec![
                "journal cannot write, intake waits: cannot append to the journal j: No space left on device"
                    .to_owned()
            ])
        );
    }

    #[test]
    fn silence_while_connected_is_reported_unless_disabled() {
        let stats = healthy();
        stats.last_message_micros.store(NOW - 301 * SECOND, Ordering::Relaxed);
        let reasons = readiness(&stats, &settings(), NOW).unwrap_err();
        assert_eq!(reasons, vec!["connected but no message for 301s".to_owned()]);
        assert_eq!(readiness(&stats, &ReadinessSettings { idle_alert: None }, NOW), Ok(()));
        // A fresh connection starts the clock anew.
        stats.mqtt_connected_at_micros.store(NOW - 10 * SECOND, Ordering::Relaxed);
        assert_eq!(readiness(&stats, &settings(), NOW), Ok(()));
    }
}
