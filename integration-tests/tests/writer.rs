//! The writer actor against a real PostgreSQL: batches of the configured size, exact
//! merging of minute parts by the upsert, and no lost rows when its connection is killed.

use actix::prelude::*;
use fleetagg_actors::logic::{ClosedMinute, Minute, MinuteAggregate, RejectReason, RejectedMessage};
use fleetagg_actors::messages::{Drain, StoreRejections, WriteMinutes};
use fleetagg_actors::stats::PipelineStats;
use fleetagg_actors::writer::{Connector, Writer, WriterSettings};
use fleetagg_integration_tests::{admin_execute, loading_rate, TestDatabase};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 2026-03-01T10:00:00Z as a minute index.
const MINUTE: i64 = 29_539_320;

fn part(machine: &str, minute: i64, samples: u32, sum: f64, min: f64, max: f64) -> ClosedMinute {
    ClosedMinute {
        machine: machine.into(),
        minute: Minute::from_index(minute),
        aggregate: MinuteAggregate {
            samples,
            load_rate_sum: sum,
            load_rate_min: min,
            load_rate_max: max,
            mileage_min: min * 10.0,
            mileage_max: max * 10.0,
        },
    }
}

/// A writer that only writes when drained, so each test controls its batches.
fn start_writer(db: &TestDatabase, batch_max_rows: usize) -> (Addr<Writer>, Arc<PipelineStats>) {
    let stats = Arc::new(PipelineStats::default());
    let connector = Connector::new(&db.url).expect("test database URL");
    let settings = WriterSettings {
        batch_max_rows,
        flush_interval: Duration::from_secs(3600),
        max_buffered_rows: 1_000_000,
    };
    // Supervised, as in the service: a writer that finds its connection closed stops so
    // that its supervisor restarts it with a new one (and the rows it held).
    let writer_stats = stats.clone();
    let writer = Supervisor::start(move |_| Writer::new(connector, None, settings, writer_stats));
    (writer, stats)
}

async fn drain(writer: &Addr<Writer>) {
    let report = writer
        .send(Drain { deadline: Instant::now() + Duration::from_secs(20) })
        .await
        .expect("writer answers Drain");
    assert!(report.is_complete(), "rows left unwritten: {report:?}");
}

#[actix_rt::test]
async fn batches_respect_batch_max_rows_and_parts_merge() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 1000);
    let machines: Vec<String> = (0..2500).map(|n| format!("machine-{n:05}")).collect();
    let first: Vec<ClosedMinute> = machines.iter().map(|m| part(m, MINUTE, 2, 30.0, 10.0, 20.0)).collect();
    let second: Vec<ClosedMinute> = machines.iter().map(|m| part(m, MINUTE, 1, 5.0, 5.0, 5.0)).collect();
    writer.send(WriteMinutes(first)).await.unwrap();
    writer.send(WriteMinutes(second)).await.unwrap();
    drain(&writer).await;

    // Each 2500-row part exceeds batch_max_rows, so it is written at once, in
    // ceil(2500 / 1000) = 3 statements; the upsert merges the second part into the rows.
    assert_eq!(stats.write_batches.load(Ordering::SeqCst), 6);
    assert_eq!(stats.rows_written.load(Ordering::SeqCst), 5000);
    let rows = loading_rate(&db.client().await).await;
    assert_eq!(rows.len(), 2500);
    for row in &rows {
        assert_eq!((row.samples, row.load_rate_sum, row.load_rate_avg), (3, 35.0, 35.0 / 3.0), "{row:?}");
        assert_eq!((row.load_rate_min, row.load_rate_max), (5.0, 20.0));
        assert_eq!((row.mileage_min, row.mileage_max), (50.0, 200.0));
    }
}

#[actix_rt::test]
async fn parts_buffered_together_are_merged_before_writing() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 1000);
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 1, 10.0, 10.0, 10.0)])).await.unwrap();
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 2, 50.0, 20.0, 30.0)])).await.unwrap();
    drain(&writer).await;
    assert_eq!(
        (stats.write_batches.load(Ordering::SeqCst), stats.rows_written.load(Ordering::SeqCst)),
        (1, 1)
    );
    let rows = loading_rate(&db.client().await).await;
    assert_eq!((rows[0].samples, rows[0].load_rate_min, rows[0].load_rate_max), (3, 10.0, 30.0));
}

#[actix_rt::test]
async fn a_part_written_later_merges_into_its_row() {
    let db = TestDatabase::create().await;
    let (writer, _) = start_writer(&db, 5000);
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 4, 100.0, 10.0, 40.0)])).await.unwrap();
    drain(&writer).await;
    writer
        .send(WriteMinutes(vec![
            part("m1", MINUTE, 1, 90.0, 90.0, 90.0),
            part("m1", MINUTE + 1, 1, 1.0, 1.0, 1.0),
        ]))
        .await
        .unwrap();
    drain(&writer).await;
    let rows = loading_rate(&db.client().await).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].ts.timestamp(), MINUTE * 60);
    assert_eq!(
        (
            rows[0].samples,
            rows[0].load_rate_sum,
            rows[0].load_rate_avg,
            rows[0].load_rate_min,
            rows[0].load_rate_max
        ),
        (5, 190.0, 38.0, 10.0, 90.0)
    );
    assert_eq!(rows[1].samples, 1);
}

#[actix_rt::test]
async fn rows_survive_a_killed_connection() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 5000);
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 1, 10.0, 10.0, 10.0)])).await.unwrap();
    drain(&writer).await;
    admin_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = '{}' AND application_name = 'fleetagg'",
        db.name
    ))
    .await;
    // Give the client time to see the connection end, then let the writer's own flush
    // (10 ms after rows arrive) find it closed: the writer stops, its supervisor restarts
    // it, and the row it held must survive the restart.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 1, 20.0, 20.0, 20.0)])).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    drain(&writer).await;

    assert_eq!(
        stats.writer_restarts.load(Ordering::SeqCst),
        1,
        "the supervisor should have restarted the writer"
    );
    assert_eq!(stats.db_connects.load(Ordering::SeqCst), 2, "the writer should have reconnected once");
    let rows = loading_rate(&db.client().await).await;
    assert_eq!((rows.len(), rows[0].samples, rows[0].load_rate_sum), (1, 2, 30.0));
}

#[actix_rt::test]
async fn rejections_are_stored_with_reason_detail_and_payload() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 5000);
    let rejection = RejectedMessage::new(
        "machines/m1/telemetry".into(),
        RejectReason::NonFinite,
        "`load_rate` is NaN".into(),
        br#"{"load_rate": NaN}"#,
    );
    writer.send(StoreRejections(vec![rejection.clone()])).await.unwrap();
    drain(&writer).await;
    assert_eq!(stats.rejects_written.load(Ordering::SeqCst), 1);
    let row = db
        .client()
        .await
        .query_one("SELECT topic, reason, detail, payload FROM rejected_message", &[])
        .await
        .unwrap();
    let stored: (String, String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(stored, (rejection.topic, "non_finite".to_owned(), rejection.detail, rejection.payload));
}
