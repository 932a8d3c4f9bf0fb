//! The writer actor against a real PostgreSQL: batches of the configured size, exact
//! merging of minute parts by the upsert, and no lost rows when its connection is killed.

use actix::prelude::*;
use fleetagg_actors::logic::{ClosedMinute, Minute, MinuteAggregate, RejectReason, RejectedMessage};
use fleetagg_actors::messages::{Drain, StoreRejections, WriteMinutes};
use fleetagg_actors::stats::PipelineStats;
use fleetagg_actors::writer::{Connector, Writer, WriterSettings};
use fleetagg_integration_tests::black_hole::BlackHole;
use fleetagg_integration_tests::ports::PortLease;
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
        tally: Default::default(),
        seen: Vec::new(),
        known_new: false,
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
        max_buffered_rejections: 10,
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
    drain(&writer).await;
    writer.send(WriteMinutes(second)).await.unwrap();
    drain(&writer).await;

    // Each 2500-row part is written in ceil(2500 / 1000) = 3 statements; the upsert
    // merges the second part into the rows the first one wrote.
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

#[actix_rt::test]
async fn rejections_beyond_their_bound_are_counted_not_stored() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 5000);
    let rejection = |n: usize| {
        RejectedMessage::new(
            format!("machines/m{n}/telemetry"),
            RejectReason::Malformed,
            "not JSON".into(),
            b"x",
        )
    };
    // The bound is 10 (start_writer): one hand-over of 25 keeps 10 and counts 15.
    writer.send(StoreRejections((0..25).map(rejection).collect())).await.expect("writer takes rejections");
    assert_eq!(stats.rejects_not_stored.load(Ordering::SeqCst), 15);
    drain(&writer).await;
    assert_eq!(stats.rejects_written.load(Ordering::SeqCst), 10);
    let stored: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM rejected_message", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(stored, 10);
}

/// A writer whose connection attempts all fail: the database at `url` refuses them or
/// never answers.
fn failing_writer(url: &str, max_buffered_rows: usize) -> (Addr<Writer>, Arc<PipelineStats>) {
    let stats = Arc::new(PipelineStats::default());
    let connector = Connector::new(url).expect("URL");
    let settings = WriterSettings {
        batch_max_rows: 1,
        flush_interval: Duration::from_millis(50),
        max_buffered_rows,
        max_buffered_rejections: 10,
    };
    let writer_stats = stats.clone();
    let writer = Supervisor::start(move |_| Writer::new(connector, None, settings, writer_stats));
    (writer, stats)
}

#[actix_rt::test]
async fn a_full_buffer_holds_the_reply_but_not_the_mailbox() {
    // Nothing listens on the leased port: every connection attempt is refused.
    let database = PortLease::acquire();
    let (writer, stats) =
        failing_writer(&format!("postgres://postgres@127.0.0.1:{}/none", database.port()), 2);
    let rows = (0..3).map(|n| part(&format!("m{n}"), MINUTE, 1, 1.0, 1.0, 1.0)).collect();
    let held = writer.send(WriteMinutes(rows));
    tokio::pin!(held);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut held).await.is_err(),
        "the sender of minutes beyond max_buffered_rows waits for room"
    );
    assert!(stats.writer_holding.load(Ordering::SeqCst), "the gauge shows the hold");
    // The mailbox is not held: a drain is answered, at its deadline, with the rows it
    // could not write, and releases the held sender.
    let started = Instant::now();
    let report = writer
        .send(Drain { deadline: Instant::now() + Duration::from_millis(300) })
        .await
        .expect("writer answers Drain while holding");
    assert!(started.elapsed() < Duration::from_secs(2), "the drain ends at its deadline");
    assert_eq!(report.unwritten_minutes, 3);
    tokio::time::timeout(Duration::from_secs(1), held)
        .await
        .expect("a drain releases held senders")
        .expect("writer replied");
}

#[actix_rt::test]
async fn an_earlier_drain_does_not_cut_a_later_one_short() {
    // Attempts hang, so a drain with rows can only end at a deadline.
    let hole = BlackHole::start();
    let (writer, _stats) = failing_writer(&hole.database_url(), 1000);
    // Nothing to write: answered at once, long before its deadline.
    let first = Drain { deadline: Instant::now() + Duration::from_secs(1) };
    assert!(writer.send(first).await.expect("drain answered").is_complete());
    writer.send(WriteMinutes(vec![part("m1", MINUTE, 1, 1.0, 1.0, 1.0)])).await.expect("rows taken");
    let started = Instant::now();
    let report = writer
        .send(Drain { deadline: Instant::now() + Duration::from_secs(3) })
        .await
        .expect("drain answered");
    assert_eq!(report.unwritten_minutes, 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "the first drain's deadline ended the second after {took:?}"
    );
}

#[actix_rt::test]
async fn the_ledger_keeps_what_a_journal_may_still_ask_for() {
    let db = TestDatabase::create().await;
    let connector = Connector::new(&db.url).expect("test database URL");
    let mut session = connector.connect(None).await.expect("connect");
    let client = db.client().await;
    for (id, age) in [("two-days", "2 days"), ("thirty-hours", "30 hours"), ("fresh", "1 minute")] {
        client
            .execute(
                &format!(
                    "INSERT INTO fleetagg_applied_batch (id, applied_at) VALUES ($1, now() - interval '{age}')"
                ),
                &[&id],
            )
            .await
            .expect("ledger row");
    }
    // A journal whose oldest segment started 40 hours ago: its intents may name batches
    // applied since then, so only the two-day-old one may go.
    let keep_since = chrono::Utc::now() - chrono::TimeDelta::hours(40);
    assert_eq!(session.prune_ledger(keep_since).await.expect("prune"), 1);
    let ids = vec!["two-days".to_owned(), "thirty-hours".to_owned(), "fresh".to_owned()];
    let left = session.committed_batches(&ids).await.expect("lookup");
    assert!(left.contains("thirty-hours") && left.contains("fresh") && !left.contains("two-days"));
    // Without a journal (keep since now), the day the ledger always keeps is the limit.
    assert_eq!(session.prune_ledger(chrono::Utc::now()).await.expect("prune"), 1);
    let left = session.committed_batches(&ids).await.expect("lookup");
    assert_eq!(left.into_iter().collect::<Vec<_>>(), vec!["fresh".to_owned()]);
}

#[actix_rt::test]
async fn rows_known_new_are_copied_and_a_wrong_guess_is_upserted_exactly() {
    let db = TestDatabase::create().await;
    let (writer, stats) = start_writer(&db, 5000);
    let client = db.client().await;
    let machines: Vec<String> = (0..500).map(|n| format!("machine-{n:05}")).collect();
    let new_part = |machine: &str, minute: i64, samples: u32, sum: f64, min: f64, max: f64| ClosedMinute {
        known_new: true,
        seen: vec![1, 2, 3],
        ..part(machine, minute, samples, sum, min, max)
    };

    // All known new: one COPY.
    let first = machines.iter().map(|m| new_part(m, MINUTE, 2, 30.0, 10.0, 20.0)).collect();
    writer.send(WriteMinutes(first)).await.unwrap();
    drain(&writer).await;
    // Mixed: the new minute copied, the written one upserted, in one transaction (the
    // upsert under the batch's second ledger id).
    let mut mixed: Vec<ClosedMinute> =
        machines.iter().map(|m| new_part(m, MINUTE + 1, 1, 7.0, 7.0, 7.0)).collect();
    mixed.extend(machines.iter().map(|m| part(m, MINUTE, 1, 5.0, 5.0, 5.0)));
    writer.send(WriteMinutes(mixed)).await.unwrap();
    drain(&writer).await;
    let second_ids: i64 = client
        .query_one("SELECT count(*) FROM fleetagg_applied_batch WHERE id LIKE '%+upsert'", &[])
        .await
        .expect("ledger")
        .get(0);
    assert_eq!(second_ids, 1, "the mixed batch went through the COPY transaction");
    // A wrong guess: rows said to be new exist. The COPY fails on the key; the batch is
    // upserted instead, merged exactly, and nothing is refused.
    let wrong = machines.iter().map(|m| new_part(m, MINUTE, 1, 1.0, 1.0, 1.0)).collect();
    writer.send(WriteMinutes(wrong)).await.unwrap();
    drain(&writer).await;

    assert_eq!(stats.rows_written.load(Ordering::SeqCst), 2000);
    assert_eq!(stats.samples_written.load(Ordering::SeqCst), 500 * (2 + 1 + 1 + 1));
    assert_eq!(stats.copy_conflicts.load(Ordering::SeqCst), 1, "the wrong guess, and only it");
    let rejected: i64 =
        client.query_one("SELECT count(*) FROM rejected_message", &[]).await.expect("count").get(0);
    assert_eq!(rejected, 0);
    let rows = loading_rate(&client).await;
    assert_eq!(rows.len(), 1000);
    for row in &rows {
        if row.ts.timestamp() == MINUTE * 60 {
            assert_eq!((row.samples, row.load_rate_sum, row.load_rate_avg), (4, 36.0, 9.0), "{row:?}");
            assert_eq!(
                (row.load_rate_min, row.load_rate_max, row.mileage_min, row.mileage_max),
                (1.0, 20.0, 10.0, 200.0)
            );
        } else {
            assert_eq!(
                (row.samples, row.load_rate_sum, row.load_rate_avg, row.load_rate_min),
                (1, 7.0, 7.0, 7.0)
            );
        }
    }
    // `seen` as sent: copied once, then the upserted parts' (empty here) and the wrong
    // guess's appended.
    let seen: Vec<u8> = client
        .query_one(
            "SELECT seen FROM loading_rate WHERE machine = 'machine-00000' AND ts = to_timestamp($1)",
            &[&((MINUTE * 60) as f64)],
        )
        .await
        .expect("seen")
        .get(0);
    assert_eq!(seen, vec![1, 2, 3, 1, 2, 3]);
}
