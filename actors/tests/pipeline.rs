//! The actor pipeline (broker, aggregators) fed by the fake broker, with a recording
//! writer in place of PostgreSQL and a manual clock: deterministic tests with known
//! results for good and bad messages, duplicates, out-of-order and late messages,
//! shutdown flushing and back-pressure.

// Test support code: a panic here is a test failure with its location.
#![allow(clippy::unwrap_used)]

use actix::prelude::*;
use chrono::{DateTime, Utc};
use fleetagg_actors::clock::{Clock, ManualClock};
use fleetagg_actors::logic::rows::MAX_STORED_PAYLOAD;
use fleetagg_actors::logic::seen::chunk_of;
use fleetagg_actors::logic::{
    ClosedMinute, MinuteAggregate, RejectReason, RejectedMessage, Timestamp, WrittenMinute,
};
use fleetagg_actors::messages::{StoreRejections, WriteMinutes};
use fleetagg_actors::service::PipelineOutputs;
use fleetagg_actors::service::{PipelineSettings, Restored};
use fleetagg_actors::source::{FakeBroker, InboundMessage};
use fleetagg_actors::stats::PipelineStats;
use fleetagg_actors::Pipeline;
use fleetagg_config::Config;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

const TOPIC: &str = "machines/x/telemetry";

/// Stands in for the writer: records every part it is handed. Its gate, when closed,
/// makes `WriteMinutes` wait like a stalled database would.
#[derive(Clone, Default)]
struct Recorder {
    parts: Arc<Mutex<Vec<ClosedMinute>>>,
    rejections: Arc<Mutex<Vec<RejectedMessage>>>,
    gate: Option<Arc<Semaphore>>,
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

impl Handler<WriteMinutes> for Recorder {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, WriteMinutes(rows): WriteMinutes, _: &mut Self::Context) -> Self::Result {
        let parts = self.parts.clone();
        let gate = self.gate.clone();
        Box::pin(async move {
            if let Some(gate) = gate {
                let _permit = gate.acquire().await;
            }
            parts.lock().unwrap().extend(rows);
        })
    }
}

impl Handler<StoreRejections> for Recorder {
    type Result = ();

    fn handle(&mut self, StoreRejections(rows): StoreRejections, _: &mut Self::Context) {
        self.rejections.lock().unwrap().extend(rows);
    }
}

type Rows = BTreeMap<(String, DateTime<Utc>), MinuteAggregate>;

impl Recorder {
    fn part_count(&self) -> usize {
        self.parts.lock().unwrap().len()
    }

    /// Parts merged by (machine, minute start), as the database upsert would.
    fn rows(&self) -> Rows {
        let mut rows = Rows::new();
        for part in self.parts.lock().unwrap().iter() {
            let key = (part.machine.to_string(), part.minute.start().to_chrono());
            rows.entry(key).and_modify(|row| row.merge(&part.aggregate)).or_insert(part.aggregate);
        }
        rows
    }

    fn reasons(&self) -> Vec<RejectReason> {
        self.rejections.lock().unwrap().iter().map(|row| row.reason).collect()
    }
}

struct Harness {
    publisher: FakeBroker,
    recorder: Recorder,
    clock: Arc<ManualClock>,
    stats: Arc<PipelineStats>,
    pipeline: Pipeline,
}

fn at(text: &str) -> Timestamp {
    Timestamp::from_chrono(DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc))
}

fn utc(text: &str) -> DateTime<Utc> {
    at(text).to_chrono()
}

fn message(machine: &str, ts: &str, load_rate: f64, mileage: f64) -> String {
    format!(r#"{{"machine":"{machine}","ts":"{ts}","load_rate":{load_rate},"mileage":{mileage}}}"#)
}

fn key(machine: &str, minute: &str) -> (String, DateTime<Utc>) {
    (machine.to_owned(), utc(minute))
}

async fn start(now: &str, configure: impl FnOnce(&mut Config), recorder: Recorder) -> Harness {
    start_after(now, configure, recorder, Vec::new()).await
}

/// [`start`], after a run that wrote `written`.
async fn start_after(
    now: &str,
    configure: impl FnOnce(&mut Config),
    recorder: Recorder,
    written: Vec<(String, WrittenMinute)>,
) -> Harness {
    start_tuned(now, configure, |_| {}, recorder, written).await
}

/// [`start_after`], with `tune` given the settings made of the configuration.
async fn start_tuned(
    now: &str,
    configure: impl FnOnce(&mut Config),
    tune: impl FnOnce(&mut PipelineSettings),
    recorder: Recorder,
    written: Vec<(String, WrittenMinute)>,
) -> Harness {
    let mut config = Config::default();
    config.aggregation.tick = Duration::from_millis(5);
    config.mqtt.inbound_capacity = 4;
    configure(&mut config);
    let mut settings = PipelineSettings::from_config(&config);
    settings.shards = 2;
    tune(&mut settings);
    let clock = Arc::new(ManualClock::new(at(now)));
    let stats = Arc::new(PipelineStats::default());
    let (publisher, source) = FakeBroker::new();
    let address = recorder.clone().start();
    let outputs = PipelineOutputs { minutes: address.clone().recipient(), rejections: address.recipient() };
    let shared_clock: Arc<dyn Clock> = clock.clone();
    let restored = Restored { journal: None, written };
    let pipeline =
        Pipeline::start_restored(settings, Box::new(source), outputs, shared_clock, stats.clone(), restored)
            .await
            .unwrap();
    Harness { publisher, recorder, clock, stats, pipeline }
}

impl Harness {
    async fn publish(&self, payload: impl Into<Vec<u8>>) {
        assert!(self.publisher.publish(TOPIC, payload).await, "pipeline refused a message");
    }

    /// Waits (bounded) until the recorder holds `parts` parts.
    async fn wait_for_parts(&self, parts: usize) {
        for _ in 0..400 {
            if self.recorder.part_count() >= parts {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("expected {parts} parts, have {}", self.recorder.part_count());
    }

    /// Waits (bounded) until at least `rows` closed minutes are on their way to the
    /// writer, then a little longer, so that a close that should not happen would have.
    async fn rows_on_their_way_after(&self, rows: u64) -> u64 {
        for _ in 0..400 {
            if self.stats.rows_to_writer.load(Ordering::SeqCst) >= rows {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        self.stats.rows_to_writer.load(Ordering::SeqCst)
    }

    async fn wait_until_routed(&self, samples: u64) {
        for _ in 0..400 {
            let seen =
                self.stats.accepted.load(Ordering::SeqCst) + self.stats.duplicates.load(Ordering::SeqCst);
            if seen >= samples {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("samples did not reach the aggregators");
    }

    /// Waits until the broker took `messages` messages (and so checked them, as of the
    /// clock's time then).
    async fn wait_until_received(&self, messages: u64) {
        for _ in 0..400 {
            if self.stats.received.load(Ordering::SeqCst) >= messages {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("messages did not reach the broker");
    }
}

fn aggregate(samples: u32, sum: f64, load: (f64, f64), mileage: (f64, f64)) -> MinuteAggregate {
    MinuteAggregate {
        samples,
        load_rate_sum: sum,
        load_rate_min: load.0,
        load_rate_max: load.1,
        mileage_min: mileage.0,
        mileage_max: mileage.1,
    }
}

#[actix_rt::test]
async fn a_known_mix_gives_known_rows_and_reasons() {
    // Minutes stay open while the messages arrive (a grace of 10 minutes), so the
    // redelivery always meets its minute still held; with minutes already due, the close
    // could run between the original and the redelivery (it did, on a loaded machine),
    // and a redelivery into a minute already handed over is not a duplicate by contract.
    let grace = Duration::from_secs(600);
    let h =
        start("2026-03-01T10:02:30Z", |config| config.aggregation.grace = grace, Recorder::default()).await;
    let epoch_10_00_40 = utc("2026-03-01T10:00:40Z").timestamp();
    let good = [
        message("m1", "2026-03-01T10:00:10Z", 10.0, 100.0),
        message("m1", "2026-03-01T12:00:20+02:00", 20.0, 101.0),
        message("m1", "2026-03-01T04:30:30-05:30", 30.0, 102.0),
        format!(r#"{{"machine":"m1","ts":{epoch_10_00_40},"load_rate":40,"mileage":103,"extra":[1]}}"#),
        message("m1", "2026-03-01T10:00:20Z", 99.0, 999.0), // redelivery of 10:00:20
        message("m1", "2026-03-01T10:01:05Z", 50.0, 104.0),
        message("m2", "2026-03-01T15:45:50+05:45", 60.0, 7.0),
        message("m2", "2026-03-01T10:01:59.999999", 70.0, 8.0),
    ];
    let bad = [
        "{not json".to_owned(),
        r#"{"machine":"m1","ts":"2026-03-01T10:00:00Z","load_rate":5}"#.to_owned(),
        message("m1", "2026-03-01T10:00:11Z", 100.5, 1.0),
        message("m1", "2026-03-01T10:03:00Z", 1.0, 1.0),
        message("m1", "2026-03-01T09:50:00Z", 1.0, 1.0),
    ];
    for payload in good.iter().chain(bad.iter()) {
        h.publish(payload.clone()).await;
    }
    h.wait_until_routed(good.len() as u64).await;
    // Every message checked at 10:02:30 before the clock moves on.
    h.wait_until_received((good.len() + bad.len()) as u64).await;
    assert_eq!(h.recorder.part_count(), 0, "no minute closes before its end + grace");
    // Past end + grace of both minutes: the next look (5 ms tick here) closes them.
    h.clock.set(at("2026-03-01T10:12:00Z"));
    h.wait_for_parts(4).await;
    h.pipeline.stop().await;

    let expected = Rows::from([
        (key("m1", "2026-03-01T10:00:00Z"), aggregate(4, 100.0, (10.0, 40.0), (100.0, 103.0))),
        (key("m1", "2026-03-01T10:01:00Z"), aggregate(1, 50.0, (50.0, 50.0), (104.0, 104.0))),
        (key("m2", "2026-03-01T10:00:00Z"), aggregate(1, 60.0, (60.0, 60.0), (7.0, 7.0))),
        (key("m2", "2026-03-01T10:01:00Z"), aggregate(1, 70.0, (70.0, 70.0), (8.0, 8.0))),
    ]);
    assert_eq!(h.recorder.rows(), expected);
    let mut reasons = h.recorder.reasons();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            RejectReason::Malformed,
            RejectReason::MissingField,
            RejectReason::OutOfRange,
            RejectReason::FutureTs,
            RejectReason::TooLate
        ]
    );
    assert_eq!(h.stats.received.load(Ordering::SeqCst), 13);
    assert_eq!(h.stats.accepted.load(Ordering::SeqCst), 7);
    assert_eq!(h.stats.duplicates.load(Ordering::SeqCst), 1);
    assert_eq!(h.stats.rejected_total(), 5);
    assert_eq!(h.stats.rejected(RejectReason::TooLate), 1);
}

#[actix_rt::test]
async fn minutes_close_at_end_plus_grace_whatever_the_arrival_order() {
    let h = start("2026-03-01T10:01:02Z", |_| {}, Recorder::default()).await;
    h.publish(message("m1", "2026-03-01T10:01:01Z", 80.0, 3.0)).await;
    h.publish(message("m1", "2026-03-01T10:00:30Z", 20.0, 1.0)).await;
    h.publish(message("m1", "2026-03-01T10:00:59.5Z", 40.0, 2.0)).await;
    h.wait_until_routed(3).await;
    // 10:01:04.9: the 10:00 minute's grace has not run out yet.
    h.clock.set(at("2026-03-01T10:01:04.9Z"));
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(h.recorder.part_count(), 0, "closed before end + grace");

    h.clock.set(at("2026-03-01T10:01:05Z"));
    h.wait_for_parts(1).await;
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let rows = h.recorder.rows();
    assert_eq!(rows.len(), 1, "only the 10:00 minute is due: {rows:?}");
    assert_eq!(rows[&key("m1", "2026-03-01T10:00:00Z")], aggregate(2, 60.0, (20.0, 40.0), (1.0, 2.0)));

    // The 10:01 minute closes on time too, although m1 sends nothing more.
    h.clock.set(at("2026-03-01T10:02:05Z"));
    h.wait_for_parts(2).await;
    let rows = h.recorder.rows();
    assert_eq!(rows[&key("m1", "2026-03-01T10:01:00Z")], aggregate(1, 80.0, (80.0, 80.0), (3.0, 3.0)));
    h.pipeline.stop().await;
}

#[actix_rt::test]
async fn a_late_message_for_a_written_minute_is_merged_not_lost() {
    let h = start("2026-03-01T10:05:00Z", |_| {}, Recorder::default()).await;
    h.publish(message("m1", "2026-03-01T10:00:10Z", 10.0, 5.0)).await;
    h.wait_for_parts(1).await;
    // Within max_lateness (10m) but after its minute was handed to the writer.
    h.publish(message("m1", "2026-03-01T10:00:50Z", 30.0, 6.0)).await;
    h.wait_for_parts(2).await;
    h.pipeline.stop().await;
    assert_eq!(h.recorder.part_count(), 2, "the late sample travels as a second part");
    assert_eq!(
        h.recorder.rows(),
        Rows::from([(key("m1", "2026-03-01T10:00:00Z"), aggregate(2, 40.0, (10.0, 30.0), (5.0, 6.0)))])
    );
}

#[actix_rt::test]
async fn a_resend_after_its_minute_was_written_is_a_duplicate() {
    let h = start("2026-03-01T10:05:00Z", |_| {}, Recorder::default()).await;
    h.publish(message("m1", "2026-03-01T10:00:10Z", 10.0, 5.0)).await;
    h.wait_for_parts(1).await;
    // A gateway resending its buffer: the written sample again, and one that is new.
    h.publish(message("m1", "2026-03-01T10:00:10Z", 10.0, 5.0)).await;
    h.publish(message("m1", "2026-03-01T10:00:50Z", 30.0, 6.0)).await;
    h.wait_for_parts(2).await;
    // And the late part once more, after it was written too.
    h.publish(message("m1", "2026-03-01T10:00:50Z", 30.0, 6.0)).await;
    h.wait_until_routed(4).await;
    h.pipeline.stop().await;
    assert_eq!(h.stats.duplicates.load(Ordering::SeqCst), 2);
    assert_eq!(h.recorder.part_count(), 2);
    assert_eq!(
        h.recorder.rows(),
        Rows::from([(key("m1", "2026-03-01T10:00:00Z"), aggregate(2, 40.0, (10.0, 30.0), (5.0, 6.0)))])
    );
}

#[actix_rt::test]
async fn minutes_written_before_the_start_catch_resends_after_it() {
    let minute = at("2026-03-01T10:00:00Z").minute();
    let written = vec![(
        "m1".to_owned(),
        WrittenMinute {
            minute,
            seen: chunk_of(minute, &[at("2026-03-01T10:00:10Z").micros()]).into_boxed_slice(),
        },
    )];
    let h = start_after("2026-03-01T10:05:00Z", |_| {}, Recorder::default(), written).await;
    h.publish(message("m1", "2026-03-01T10:00:10Z", 10.0, 5.0)).await;
    h.publish(message("m1", "2026-03-01T10:00:20Z", 20.0, 6.0)).await;
    // Another machine's sample at the same instant is its own.
    h.publish(message("m2", "2026-03-01T10:00:10Z", 10.0, 5.0)).await;
    h.wait_until_routed(3).await;
    h.pipeline.stop().await;
    assert_eq!(h.stats.duplicates.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.recorder.rows(),
        Rows::from([
            (key("m1", "2026-03-01T10:00:00Z"), aggregate(1, 20.0, (20.0, 20.0), (6.0, 6.0))),
            (key("m2", "2026-03-01T10:00:00Z"), aggregate(1, 10.0, (10.0, 10.0), (5.0, 5.0))),
        ])
    );
}

#[actix_rt::test]
async fn stopping_flushes_open_partial_minutes() {
    let h = start("2026-03-01T10:00:30Z", |_| {}, Recorder::default()).await;
    for (second, load_rate) in [(1, 10.0), (2, 20.0), (2, 20.0)] {
        h.publish(message("m9", &format!("2026-03-01T10:00:0{second}Z"), load_rate, 1.0)).await;
    }
    h.pipeline.stop().await;
    assert_eq!(
        h.recorder.rows(),
        Rows::from([(key("m9", "2026-03-01T10:00:00Z"), aggregate(2, 30.0, (10.0, 20.0), (1.0, 1.0)))])
    );
    assert_eq!(h.stats.duplicates.load(Ordering::SeqCst), 1);
    assert!(!h.publisher.publish(TOPIC, "late").await, "intake must be closed after stop");
}

#[actix_rt::test]
async fn stored_rejections_are_capped_per_second_but_all_counted() {
    let h =
        start("2026-03-01T10:00:30Z", |config| config.rejects.max_per_second = 2, Recorder::default()).await;
    for _ in 0..5 {
        h.publish("garbage").await;
    }
    h.pipeline.stop().await;
    assert_eq!(h.recorder.reasons(), vec![RejectReason::Malformed; 2]);
    assert_eq!(h.stats.rejected(RejectReason::Malformed), 5);
    assert_eq!(h.stats.rejects_not_stored.load(Ordering::SeqCst), 3);
}

/// A payload far over the limit, cut as the MQTT source cuts it: held at the limit + 1
/// byte, still rejected as `too_large`, with the length it had on the wire.
#[actix_rt::test]
async fn a_huge_payload_is_held_cut_and_rejected_with_its_true_length() {
    let h = start("2026-03-01T10:00:30Z", |_| {}, Recorder::default()).await;
    let limit = Config::default().mqtt.max_payload_bytes;
    let huge = vec![b'{'; 10 * 1024 * 1024];
    let message = InboundMessage::received(TOPIC, &huge, limit);
    assert_eq!(message.payload.len(), limit + 1, "the queued copy is cut");
    assert!(h.publisher.deliver(message).await, "pipeline refused a message");
    h.pipeline.stop().await;

    let rejections = h.recorder.rejections.lock().unwrap().clone();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reason, RejectReason::TooLarge);
    let detail = &rejections[0].detail;
    assert!(detail.contains(&format!("{} bytes", huge.len())), "the true length: {detail}");
    assert!(detail.contains(&limit.to_string()), "the limit: {detail}");
    assert_eq!(rejections[0].payload, huge[..MAX_STORED_PAYLOAD], "the stored start is unchanged");
    assert_eq!(h.stats.rejected(RejectReason::TooLarge), 1);
}

#[actix_rt::test]
async fn a_stalled_writer_stalls_the_publisher_instead_of_dropping() {
    let gate = Arc::new(Semaphore::new(0));
    let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
    let h = start("2026-03-01T10:09:30Z", |_| {}, recorder).await;
    // Every message lands in a different, already due minute: each is handed to the
    // (stalled) writer at its next look, so the aggregator stops taking samples.
    let payloads: Vec<String> = (0..400)
        .map(|n| {
            let ts = at("2026-03-01T10:00:00Z").saturating_add_micros(n * 1_000_000);
            message("m1", &ts.to_string(), 50.0, 1.0)
        })
        .collect();
    let publisher = h.publisher.clone();
    let sending = actix_rt::spawn(async move {
        for payload in payloads {
            assert!(publisher.publish(TOPIC, payload).await);
        }
    });
    actix_rt::time::sleep(Duration::from_millis(300)).await;
    assert!(!sending.is_finished(), "publishing finished although the writer never took a row");
    let routed_while_stalled = h.stats.accepted.load(Ordering::SeqCst);
    assert!(routed_while_stalled < 400, "everything was taken while the writer was stalled");

    gate.add_permits(1_000_000);
    sending.await.unwrap();
    h.pipeline.stop().await;
    let samples: u32 = h.recorder.rows().values().map(|row| row.samples).sum();
    assert_eq!(samples, 400, "no sample may be lost under back-pressure");
    assert_eq!(h.stats.samples_lost.load(Ordering::SeqCst), 0);
}

/// Publishes a late sample (minute 10:00, long due) for `machine` every `gap`, `count`
/// times, with distinct timestamps.
async fn stream_late_samples(h: &Harness, machine: &str, count: i64, gap: Duration) {
    for n in 0..count {
        let ts = at("2026-03-01T10:00:00Z").saturating_add_micros(n * 1_000);
        h.publish(message(machine, &ts.to_string(), 10.0, 1.0)).await;
        actix_rt::time::sleep(gap).await;
    }
}

/// Streams `count` late samples `gap` apart under an `aggregation.tick` of `tick` (which
/// caps the late-sample quiet period and the hold), waits `settle` after the first part,
/// and returns how many parts the aggregator had handed over by then. Checks that the
/// stop delivers every sample, however they were split.
async fn parts_of_a_late_stream(tick: Duration, count: i64, gap: Duration, settle: Duration) -> usize {
    let h = start("2026-03-01T10:05:00Z", |config| config.aggregation.tick = tick, Recorder::default()).await;
    stream_late_samples(&h, "m1", count, gap).await;
    h.wait_for_parts(1).await;
    actix_rt::time::sleep(settle).await;
    let parts = h.recorder.part_count();
    h.pipeline.stop().await;
    let samples: u32 = h.recorder.rows().values().map(|row| row.samples).sum();
    assert_eq!(i64::from(samples), count, "every late sample is written");
    parts
}

#[actix_rt::test]
async fn a_stream_of_late_samples_becomes_one_part_not_one_per_message() {
    // A tick of 2 s caps the late-sample quiet period (50 ms to 5 s) and the hold at 2 s.
    let parts = parts_of_a_late_stream(
        Duration::from_secs(2),
        20,
        Duration::from_millis(5),
        Duration::from_millis(400),
    )
    .await;
    // One part when the machine is not starved of CPU for 50 ms between two messages;
    // a loaded test machine may split the stream a few times, never per message.
    assert!((1..=5).contains(&parts), "20 late samples became {parts} parts");
}

#[actix_rt::test]
async fn late_samples_far_apart_still_gather_into_few_parts() {
    // A machine of a large drained backlog: its late samples come 150 ms apart, three
    // times a fixed 50 ms quiet period. The quiet period follows the pace (450 ms here).
    let parts = parts_of_a_late_stream(
        Duration::from_secs(2),
        8,
        Duration::from_millis(150),
        Duration::from_millis(700),
    )
    .await;
    // The first sample alone (its pace unknown yet), then the rest together; a loaded
    // machine may split once more. A fixed 50 ms made 8 parts.
    assert!((1..=3).contains(&parts), "8 late samples 150 ms apart became {parts} parts");
}

#[actix_rt::test]
async fn late_samples_a_second_apart_gather_into_few_parts() {
    // A machine of a backlog from 100,000 machines drained at 64,000 msg/s: its late
    // samples come about 1.5 s apart. A quiet period capped at 500 ms made each of them a
    // row update of its own, and the writer's buffer of them the drain's memory peak
    // (docs/benchmarks.md, session 13). A tick of 10 s leaves the cap (5 s) and the hold.
    let parts =
        parts_of_a_late_stream(Duration::from_secs(10), 7, Duration::from_secs(1), Duration::from_secs(3))
            .await;
    // The first sample alone (its pace unknown yet), then the rest within the 5 s hold
    // (two parts), or three on a loaded machine; 7 with the old 500 ms cap.
    assert!((1..=4).contains(&parts), "7 late samples 1 s apart became {parts} parts");
}

#[actix_rt::test]
async fn a_reopened_minute_is_not_held_longer_than_the_hold_while_late_samples_keep_coming() {
    // A tick of 300 ms caps the hold and the quiet period at 300 ms.
    let h = start(
        "2026-03-01T10:05:00Z",
        |config| config.aggregation.tick = Duration::from_millis(300),
        Recorder::default(),
    )
    .await;
    // 50 samples 20 ms apart: never 300 ms of quiet.
    let streaming = stream_late_samples(&h, "m1", 50, Duration::from_millis(20));
    let watching = async {
        actix_rt::time::sleep(Duration::from_millis(800)).await;
        h.recorder.part_count()
    };
    let ((), parts_while_streaming) = futures_util::join!(streaming, watching);
    assert!(parts_while_streaming >= 1, "the minute was held for the whole stream");
    h.pipeline.stop().await;
    let samples: u32 = h.recorder.rows().values().map(|row| row.samples).sum();
    assert_eq!(samples, 50);
}

/// Sends a sample of `machine` in the open minute (10:05) every 10 ms until the flag is
/// cleared; the task answers how many it sent.
fn keep_sending(
    h: &Harness,
    machine: &'static str,
) -> (Arc<std::sync::atomic::AtomicBool>, actix_rt::task::JoinHandle<i64>) {
    let streaming = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = h.publisher.clone();
    let keep_going = streaming.clone();
    let sending = actix_rt::spawn(async move {
        let mut n = 0;
        while keep_going.load(Ordering::SeqCst) {
            let ts = at("2026-03-01T10:05:00Z").saturating_add_micros(n * 1_000);
            assert!(publisher.publish(TOPIC, message(machine, &ts.to_string(), 5.0, 1.0)).await);
            n += 1;
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        n
    });
    (streaming, sending)
}

/// Samples of `machine` written so far.
fn samples_of(recorder: &Recorder, machine: &str) -> u32 {
    recorder.rows().iter().filter(|((name, _), _)| name == machine).map(|(_, row)| row.samples).sum()
}

#[actix_rt::test]
async fn a_reopened_minute_keeps_its_wait_while_others_send_and_closes_once_the_whole_stream_pauses() {
    // One shard, so both machines make one stream; a tick of 10 s leaves the quiet
    // period's cap (5 s) and the hold (5 s).
    let h = start_tuned(
        "2026-03-01T10:05:00Z",
        |config| config.aggregation.tick = Duration::from_secs(10),
        |settings| settings.shards = 1,
        Recorder::default(),
        Vec::new(),
    )
    .await;
    let (streaming, other) = keep_sending(&h, "m2");
    // m1 resends three samples of minute 10:00 (long due), 1.5 s apart: the first closes
    // alone (its pace unknown), the next two wait three of their gaps (4.5 s), or the
    // hold, 5 s after the second: 3.5 s after the third.
    stream_late_samples(&h, "m1", 3, Duration::from_millis(1_500)).await;
    // The stream_late_samples helper slept 1.5 s after the third: while m2 went on
    // sending, m1's reopened minute was held.
    assert_eq!(samples_of(&h.recorder, "m1"), 1, "m1's later samples closed while the stream went on");
    streaming.store(false, Ordering::SeqCst);
    let paused_at = std::time::Instant::now();
    let sent_by_m2 = other.await.unwrap();
    while samples_of(&h.recorder, "m1") < 3 && paused_at.elapsed() < Duration::from_secs(5) {
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    let closed_after = paused_at.elapsed();
    assert_eq!(samples_of(&h.recorder, "m1"), 3);
    // At the earliest 2 s after the pause without it (the hold); a stream 10 ms a batch
    // is paused after 50 ms, and the close follows within a sweep.
    assert!(
        closed_after < Duration::from_secs(1),
        "m1's minute closed {closed_after:?} after the stream paused"
    );
    h.pipeline.stop().await;
    assert_eq!(i64::from(samples_of(&h.recorder, "m2")), sent_by_m2, "every sample of m2 is written");
}

#[actix_rt::test]
async fn reopened_minutes_closed_by_a_pause_wait_for_room_in_the_writers_backlog() {
    let h = start_tuned(
        "2026-03-01T10:05:00Z",
        |config| {
            config.aggregation.tick = Duration::from_secs(10);
            config.database.batch_max_rows = 5;
        },
        |settings| {
            settings.shards = 1;
            settings.aggregator.writer_backlog_wait = Duration::from_secs(60);
        },
        Recorder::default(),
        Vec::new(),
    )
    .await;
    let (streaming, live) = keep_sending(&h, "live");
    // 40 machines resend a sample of minute 10:00 each, twice 1 s apart: the first
    // closes alone (the pace unknown), the second waits three of its gaps (3 s).
    let resend = |second: &'static str| {
        let h = &h;
        async move {
            for n in 0..40 {
                h.publish(message(&format!("m{n}"), &format!("2026-03-01T10:00:{second}Z"), 10.0, 1.0)).await;
            }
        }
    };
    resend("10").await;
    h.wait_for_parts(40).await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    resend("20").await;
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.recorder.part_count(), 40, "the second samples closed before their wait");
    // The writer's backlog is full when the stream pauses: nothing closes into it.
    h.stats.rows_waiting.store(10, Ordering::SeqCst);
    streaming.store(false, Ordering::SeqCst);
    let sent_live = live.await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.recorder.part_count(), 40, "a pause closed minutes into a full backlog");
    assert_eq!(h.stats.open_minutes.load(Ordering::SeqCst), 41);
    // Room again: the held minutes close at once, not at the end of their wait (2.5 s on).
    h.stats.rows_waiting.store(0, Ordering::SeqCst);
    let room_at = std::time::Instant::now();
    h.wait_for_parts(80).await;
    assert!(
        room_at.elapsed() < Duration::from_millis(1_500),
        "closed {:?} after the room came",
        room_at.elapsed()
    );
    h.pipeline.stop().await;
    let rows = h.recorder.rows();
    assert!((0..40).all(|n| samples_of(&h.recorder, &format!("m{n}")) == 2));
    assert_eq!(i64::from(samples_of(&h.recorder, "live")), sent_live);
    assert_eq!(rows.len(), 41);
}

/// 40 machines with one sample each in minute 10:00, routed; the writer's backlog limit
/// is 10 rows (`batch_max_rows` 5) and a due close waits for room at most `wait`.
async fn forty_open_minutes(recorder: Recorder, wait: Duration) -> Harness {
    let h = start_tuned(
        "2026-03-01T10:00:30Z",
        |config| config.database.batch_max_rows = 5,
        |settings| settings.aggregator.writer_backlog_wait = wait,
        recorder,
        Vec::new(),
    )
    .await;
    for n in 0..40 {
        h.publish(message(&format!("m{n}"), "2026-03-01T10:00:10Z", 10.0, 1.0)).await;
    }
    h.wait_until_routed(40).await;
    h
}

#[actix_rt::test]
async fn due_minutes_close_only_as_fast_as_the_writer_makes_room() {
    let gate = Arc::new(Semaphore::new(0));
    let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
    let h = forty_open_minutes(recorder, Duration::from_secs(60)).await;
    // The writer's backlog is full: nothing closes, however long the minutes are due.
    h.stats.rows_waiting.store(10, Ordering::SeqCst);
    h.clock.set(at("2026-03-01T10:02:00Z"));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.stats.rows_to_writer.load(Ordering::SeqCst), 0, "a minute closed into a full backlog");
    assert_eq!(h.stats.open_minutes.load(Ordering::SeqCst), 40);
    // Room for 4: each of the two shards closes at most that many, and the (stalled)
    // writer's unanswered sends count against the room until answered.
    h.stats.rows_waiting.store(6, Ordering::SeqCst);
    let on_their_way = h.rows_on_their_way_after(4).await;
    assert!((4..=8).contains(&on_their_way), "{on_their_way} minutes closed into a room of 4");
    assert_eq!(h.stats.open_minutes.load(Ordering::SeqCst), 40 - on_their_way as i64);
    // The writer catches up: the rest close, and every sample is written once.
    h.stats.rows_waiting.store(0, Ordering::SeqCst);
    gate.add_permits(1_000);
    h.wait_for_parts(40).await;
    assert_eq!(h.stats.rows_to_writer.load(Ordering::SeqCst), 0);
    h.pipeline.stop().await;
    assert_eq!(h.recorder.rows().len(), 40);
    assert!(h.recorder.rows().values().all(|row| row.samples == 1));
}

#[actix_rt::test]
async fn a_due_minute_waits_for_the_writer_only_so_long() {
    let wait = Duration::from_millis(1_000);
    let h = forty_open_minutes(Recorder::default(), wait).await;
    // A backlog that never clears (PostgreSQL down): the minutes close all the same once
    // due for `wait`, into the writer's own buffer and its own limit.
    h.stats.rows_waiting.store(1_000, Ordering::SeqCst);
    h.clock.set(at("2026-03-01T10:02:00Z"));
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.recorder.part_count(), 0, "closed before the wait was over");
    h.wait_for_parts(40).await;
    h.pipeline.stop().await;
    assert_eq!(h.recorder.rows().len(), 40);
}

#[actix_rt::test]
async fn each_aggregator_checks_the_room_again_before_it_closes() {
    // One shard, ten machines with two due minutes each: the shard's sweep sends looks to
    // as many aggregators as there is room for rows (4), but each closes two rows, so
    // without its own check the room would be overrun twice over.
    let gate = Arc::new(Semaphore::new(0));
    let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
    let h = start_tuned(
        "2026-03-01T10:00:30Z",
        |config| {
            config.database.batch_max_rows = 5;
            // The second minute's samples are 40 s ahead of the clock; neither minute is
            // due until the clock is moved.
            config.aggregation.future_tolerance = Some(Duration::from_secs(120));
        },
        |settings| {
            settings.shards = 1;
            settings.aggregator.writer_backlog_wait = Duration::from_secs(60);
        },
        recorder,
        Vec::new(),
    )
    .await;
    for n in 0..10 {
        h.publish(message(&format!("m{n}"), "2026-03-01T10:00:10Z", 10.0, 1.0)).await;
        h.publish(message(&format!("m{n}"), "2026-03-01T10:01:10Z", 10.0, 1.0)).await;
    }
    h.wait_until_routed(20).await;
    h.stats.rows_waiting.store(6, Ordering::SeqCst);
    h.clock.set(at("2026-03-01T10:03:00Z"));
    let on_their_way = h.rows_on_their_way_after(4).await;
    assert!((4..=5).contains(&on_their_way), "{on_their_way} rows closed into a room of 4");
    h.stats.rows_waiting.store(0, Ordering::SeqCst);
    gate.add_permits(1_000);
    h.wait_for_parts(20).await;
    h.pipeline.stop().await;
    assert_eq!(h.recorder.rows().len(), 20);
}

#[actix_rt::test]
async fn a_stop_hands_open_minutes_over_only_as_fast_as_the_writer_makes_room() {
    let gate = Arc::new(Semaphore::new(0));
    let recorder = Recorder { gate: Some(gate.clone()), ..Recorder::default() };
    let Harness { pipeline, stats, recorder, .. } =
        forty_open_minutes(recorder, Duration::from_secs(60)).await;
    // Room for 4 rows: each of the two shards hands over at most that many at once,
    // not its 20 machines' minutes together.
    stats.rows_waiting.store(6, Ordering::SeqCst);
    let stopped = actix_rt::spawn(pipeline.stop());
    for _ in 0..400 {
        if stats.rows_to_writer.load(Ordering::SeqCst) >= 4 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let on_their_way = stats.rows_to_writer.load(Ordering::SeqCst);
    assert!((4..=8).contains(&on_their_way), "{on_their_way} minutes handed over into a room of 4");
    // The writer catches up: the stop ends with every minute written once.
    stats.rows_waiting.store(0, Ordering::SeqCst);
    gate.add_permits(1_000);
    stopped.await.expect("the stop");
    assert_eq!(recorder.rows().len(), 40);
    assert!(recorder.rows().values().all(|row| row.samples == 1));
}

#[actix_rt::test]
async fn a_stop_with_the_writer_stuck_hands_everything_over_after_one_wait() {
    let wait = Duration::from_millis(500);
    let Harness { pipeline, stats, recorder, .. } = forty_open_minutes(Recorder::default(), wait).await;
    // A backlog that never clears (PostgreSQL down): one wait, then the rest go at once
    // into the writer's own buffer, not one machine per wait.
    stats.rows_waiting.store(1_000, Ordering::SeqCst);
    let started = std::time::Instant::now();
    pipeline.stop().await;
    let took = started.elapsed();
    assert_eq!(recorder.rows().len(), 40);
    assert!(took >= wait, "handed over before the wait was over ({took:?})");
    assert!(took < 4 * wait, "the stop took {took:?}: paced one machine per wait");
}
