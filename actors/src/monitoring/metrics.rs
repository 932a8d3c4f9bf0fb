//! `/metrics`: the pipeline's counters in the Prometheus (OpenMetrics) text format.
//!
//! The counters live as atomics in [`PipelineStats`]; a collector reads them at scrape
//! time, so the data path never touches the registry.

use crate::logic::RejectReason;
use crate::stats::PipelineStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Renders every metric; the content type is OpenMetrics text 1.0.
pub fn render(stats: &Arc<PipelineStats>) -> String {
    let mut registry = Registry::with_prefix("fleetagg");
    registry.register_collector(Box::new(StatsCollector(stats.clone())));
    registry.register(
        "write_batch_seconds",
        "Duration of one upsert statement",
        stats.latencies.write_batch.clone(),
    );
    registry.register(
        "minute_commit_lag_seconds",
        "Time from a minute's end to the commit of its row",
        stats.latencies.commit_lag.clone(),
    );
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(error = %err, "encoding metrics failed");
    }
    text
}

#[derive(Debug)]
struct StatsCollector(Arc<PipelineStats>);

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let counters: [(&str, &str, u64); 27] = [
            ("messages_received", "Messages received from the broker", get(&s.received)),
            ("samples_accepted", "Samples accepted into a minute", get(&s.accepted)),
            (
                "duplicates",
                "Samples dropped as duplicates: redelivered or resent within max_lateness",
                get(&s.duplicates),
            ),
            (
                "rejections_not_stored",
                "Rejections counted, not stored: over rejects.max_per_second or rejects.max_buffered",
                get(&s.rejects_not_stored),
            ),
            ("samples_lost", "Samples an aggregator could not take (should stay 0)", get(&s.samples_lost)),
            ("minutes_closed", "Minutes handed to the writer", get(&s.minutes_closed)),
            ("rows_written", "Minute rows upserted", get(&s.rows_written)),
            ("samples_written", "Samples in committed minute rows", get(&s.samples_written)),
            ("rejections_written", "Rejected messages stored", get(&s.rejects_written)),
            ("write_batches", "Upsert statements that succeeded", get(&s.write_batches)),
            ("write_failures", "Flushes that failed (rows kept for a retry)", get(&s.write_failures)),
            (
                "db_connects",
                "PostgreSQL connections opened by the writer, the first one included",
                get(&s.db_connects),
            ),
            (
                "copy_conflicts",
                "Batches whose COPY of rows known new met an existing row, then upserted instead",
                get(&s.copy_conflicts),
            ),
            (
                "batches_replayed",
                "Retried batches the ledger recognised as already applied",
                get(&s.batches_replayed),
            ),
            (
                "minutes_refused",
                "Minute rows PostgreSQL refused (stored as db_refused)",
                get(&s.minutes_refused),
            ),
            (
                "rejections_dropped",
                "Rejected messages PostgreSQL refused to store",
                get(&s.rejections_dropped),
            ),
            ("secret_fetches", "Fetches of the database secret by the secret keeper", get(&s.secret_fetches)),
            ("secret_refresh_failures", "Failed fetches of the database secret", get(&s.secret_failures)),
            ("secret_changes", "Times the database secret changed", get(&s.secret_changes)),
            ("mqtt_reconnects", "Reconnections to the MQTT broker", get(&s.mqtt_reconnects)),
            ("journal_appended", "Messages appended to the journal", get(&s.journal_appended)),
            ("journal_replayed", "Messages replayed from the journal at start-up", get(&s.journal_replayed)),
            (
                "cold_index_loads",
                "Runs of older written minutes read back from disk for a late sample",
                get(&s.cold_index_loads),
            ),
            (
                "cold_index_errors",
                "Runs of older written minutes that could not be stored on disk (kept in memory) or read back (dropped)",
                get(&s.cold_index_errors),
            ),
            (
                "journal_replay_already_committed",
                "Replayed samples already in a committed row (not counted again)",
                get(&s.journal_replay_skipped),
            ),
            (
                "journal_damaged_bytes",
                "Bytes of torn or corrupt journal records skipped at start-up",
                get(&s.journal_lost_bytes),
            ),
            (
                "journal_write_errors",
                "Journal appends that failed (each is retried)",
                get(&s.journal_write_errors),
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)?;
        }

        let rejected = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "messages_rejected",
            "Rejected messages by reason",
            None,
            rejected.metric_type(),
        )?;
        for reason in RejectReason::ALL {
            ConstCounter::new(s.rejected(reason))
                .encode(family.encode_family(&[("reason", reason.as_str())])?)?;
        }

        let restarts = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(
            "actor_restarts",
            "Actor restarts by actor",
            None,
            restarts.metric_type(),
        )?;
        ConstCounter::new(get(&s.writer_restarts)).encode(family.encode_family(&[("actor", "writer")])?)?;

        let flag = |value: &AtomicBool| i64::from(value.load(Ordering::Relaxed));
        let seconds = |value: &AtomicI64| value.load(Ordering::Relaxed) as f64 / 1e6;
        let gauges: [(&str, &str, i64); 10] = [
            ("open_minutes", "Minutes held by aggregators", s.open_minutes.load(Ordering::Relaxed)),
            ("rows_buffered", "Minutes held by the writer, not yet written", get(&s.rows_buffered) as i64),
            (
                "rejections_buffered",
                "Rejected messages held by the writer, not yet stored",
                get(&s.rejections_buffered) as i64,
            ),
            (
                "writer_buffer_full",
                "1 while the writer's buffer is full and aggregators wait for room",
                flag(&s.writer_holding),
            ),
            ("mqtt_connected", "1 while connected to the MQTT broker", flag(&s.mqtt_connected)),
            ("mqtt_subscribed", "1 while subscribed", flag(&s.mqtt_subscribed)),
            ("database_healthy", "1 while the last PostgreSQL operation succeeded", flag(&s.db_healthy)),
            ("journal_bytes", "Bytes the journal holds", get(&s.journal_bytes) as i64),
            ("journal_segments", "Segment files the journal holds", get(&s.journal_segments) as i64),
            (
                "cold_index_bytes",
                "Bytes of older written minutes' duplicate index held on disk",
                get(&s.cold_index_bytes) as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        let oldest = s.journal_oldest_pending_micros.load(Ordering::Relaxed);
        let oldest_age =
            if oldest == 0 { 0.0 } else { (s.clock.now().micros() - oldest).max(0) as f64 / 1e6 };
        let timestamps: [(&str, &str, f64); 3] = [
            (
                "last_message_received_timestamp_seconds",
                "When the last message arrived (Unix time)",
                seconds(&s.last_message_micros),
            ),
            (
                "last_database_success_timestamp_seconds",
                "When PostgreSQL last answered (Unix time)",
                seconds(&s.db_last_ok_micros),
            ),
            (
                "journal_oldest_pending_age_seconds",
                "Age of the oldest journal segment with a sample not yet committed (0: none)",
                oldest_age,
            ),
        ];
        for (name, help, value) in timestamps {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::bump;

    #[test]
    fn counters_and_labels_are_rendered() {
        let stats = Arc::new(PipelineStats::default());
        bump(&stats.received, 7);
        stats.count_rejected(RejectReason::TooLate);
        stats.latencies.write_batch.observe(0.002);
        bump(&stats.db_connects, 2);
        bump(&stats.secret_fetches, 3);
        let text = render(&stats);
        // Each series is named after the field it reads.
        assert!(text.contains("fleetagg_db_connects_total 2"), "{text}");
        assert!(text.contains("fleetagg_secret_fetches_total 3"), "{text}");
        assert!(text.contains("fleetagg_messages_received_total 7"), "{text}");
        assert!(text.contains("fleetagg_messages_rejected_total{reason=\"too_late\"} 1"), "{text}");
        assert!(text.contains("fleetagg_actor_restarts_total{actor=\"writer\"} 0"), "{text}");
        assert!(text.contains("fleetagg_write_batch_seconds_count 1"), "{text}");
        assert!(text.contains("fleetagg_open_minutes 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
