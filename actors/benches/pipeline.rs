//! The whole in-process actor pipeline (broker → aggregators on one arbiter per core),
//! fed by the fake broker from a thread of its own (as paho's callback thread feeds the
//! real one), with a counting actor on an arbiter of its own in place of the writer.
//!
//! One iteration publishes `MESSAGES_PER_ITERATION` valid messages spread over the fleet
//! and ends when every one of them has been accumulated by its aggregator (the
//! `accepted` counter); minutes close on the pipeline's own timers meanwhile, as in
//! production. At the end the pipeline is stopped and the counting actor must hold every
//! sample exactly once. Reported as messages/s (criterion `Throughput::Elements`).
//!
//! Two kinds of traffic ([`Traffic`]):
//! - `backlog`: what `scripts/bench`'s drain queues, a backlog whose timestamps are spread
//!   over four minutes that are all closable (the clock stands two minutes past them), so
//!   every sample is late and its minute closes once the machine's late samples settle;
//!   each iteration is the next four minutes. 1,000 machines is one sample per 1.2 s each.
//! - `one_dense_minute`: every sample of the whole run in one past minute, thousands a
//!   second per machine, so that minute reopens again and again with its written part
//!   growing to tens of thousands of timestamps and more: the worst case of the duplicate index.
//!
//! `cargo bench -p fleetagg-actors --bench pipeline`; docs/benchmarks.md has the results.

/// The service's allocator (src/main.rs), so that these numbers are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fleetagg_actors::clock::{Clock, ManualClock};
use fleetagg_actors::logic::Timestamp;
use fleetagg_actors::messages::{StoreRejections, WriteMinutes};
use fleetagg_actors::service::PipelineOutputs;
use fleetagg_actors::service::PipelineSettings;
use fleetagg_actors::source::FakeBroker;
use fleetagg_actors::stats::PipelineStats;
use fleetagg_actors::Pipeline;
use fleetagg_config::Config;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES_PER_ITERATION: u64 = 200_000;
const TOPIC: &str = "machines/bench/telemetry";
/// 2026-03-01T10:00:00Z: the first sample; the (manual) clock stands 5 minutes later, so
/// every minute is already due and nothing is too late or in the future.
const BASE_MICROS: i64 = 1_772_359_200_000_000;
const CLOCK_AHEAD_MICROS: i64 = 300_000_000;
/// `backlog`: an iteration's timestamps span four minutes (as `scripts/bench` spreads its
/// backlogs), and the clock stands two minutes past the last one.
const BACKLOG_SPAN_MICROS: i64 = 240_000_000;
const BACKLOG_CLOCK_AFTER_MICROS: i64 = 120_000_000;

/// The traffic an iteration publishes (see the module comment).
#[derive(Debug, Clone, Copy)]
enum Traffic {
    Backlog,
    OneDenseMinute,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Traffic::Backlog => "backlog",
            Traffic::OneDenseMinute => "one_dense_minute",
        }
    }

    /// The gap between consecutive messages' timestamps (each goes to the next machine).
    fn step_micros(self) -> i64 {
        match self {
            Traffic::Backlog => BACKLOG_SPAN_MICROS / MESSAGES_PER_ITERATION as i64,
            Traffic::OneDenseMinute => 1,
        }
    }
}

/// The writer's stand-in: counts the samples in the closed minutes it is handed.
#[derive(Debug, Default)]
struct Counter {
    samples: Arc<AtomicU64>,
    rejections: Arc<AtomicU64>,
}

impl Actor for Counter {
    type Context = Context<Self>;
}

impl Handler<WriteMinutes> for Counter {
    type Result = ();

    fn handle(&mut self, WriteMinutes(rows): WriteMinutes, _: &mut Self::Context) {
        let samples: u64 = rows.iter().map(|row| u64::from(row.aggregate.samples)).sum();
        self.samples.fetch_add(samples, Ordering::Relaxed);
    }
}

impl Handler<StoreRejections> for Counter {
    type Result = ();

    fn handle(&mut self, StoreRejections(rows): StoreRejections, _: &mut Self::Context) {
        self.rejections.fetch_add(rows.len() as u64, Ordering::Relaxed);
    }
}

/// A running pipeline and what a measurement needs around it.
struct Bench {
    machines: Vec<String>,
    publisher: FakeBroker,
    pipeline: Pipeline,
    stats: Arc<PipelineStats>,
    samples: Arc<AtomicU64>,
    rejections: Arc<AtomicU64>,
    counter_arbiter: Arbiter,
    clock: Arc<ManualClock>,
    traffic: Traffic,
    /// Messages generated so far: message `n` goes to machine `n % machines` with the
    /// timestamp BASE + n steps, so one machine's timestamps never repeat.
    next: u64,
}

impl Bench {
    async fn start(machines: usize, traffic: Traffic) -> Bench {
        let settings = PipelineSettings::from_config(&Config::default());
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(BASE_MICROS + CLOCK_AHEAD_MICROS)));
        let stats = Arc::new(PipelineStats::default());
        let (samples, rejections) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counter_arbiter = Arbiter::new();
        let counter = {
            let (samples, rejections) = (samples.clone(), rejections.clone());
            Counter::start_in_arbiter(&counter_arbiter.handle(), move |_| Counter { samples, rejections })
        };
        let outputs =
            PipelineOutputs { minutes: counter.clone().recipient(), rejections: counter.recipient() };
        let (publisher, source) = FakeBroker::new();
        let pipeline_clock: Arc<dyn Clock> = clock.clone();
        let pipeline = Pipeline::start(settings, Box::new(source), outputs, pipeline_clock, stats.clone())
            .await
            .expect("the fake source starts");
        Bench {
            machines: (1..=machines).map(|n| format!("machine-{n:04}")).collect(),
            publisher,
            pipeline,
            stats,
            samples,
            rejections,
            counter_arbiter,
            clock,
            traffic,
            next: 0,
        }
    }

    /// The next `count` payloads, as `fleetagg simulate` formats them; for `backlog`, the
    /// clock moves to two minutes past them.
    fn payloads(&mut self, count: u64) -> Vec<Vec<u8>> {
        let first = self.next;
        self.next += count;
        let step = self.traffic.step_micros();
        let ts_of = |n: u64| BASE_MICROS + i64::try_from(n).expect("n fits i64") * step;
        if let Traffic::Backlog = self.traffic {
            self.clock.set(Timestamp::from_micros(ts_of(self.next) + BACKLOG_CLOCK_AFTER_MICROS));
        }
        (first..first + count)
            .map(|n| {
                let machine = &self.machines[(n % self.machines.len() as u64) as usize];
                let ts = Timestamp::from_micros(ts_of(n))
                    .to_chrono()
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
                let load_rate = (n % 10_000) as f64 / 100.0;
                let mileage = 10_000.0 + n as f64 / 1_000.0;
                format!(r#"{{"machine":"{machine}","ts":"{ts}","load_rate":{load_rate:.2},"mileage":{mileage:.3}}}"#)
                    .into_bytes()
            })
            .collect()
    }

    fn routed(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed) + self.stats.duplicates.load(Ordering::Relaxed)
    }

    /// Publishes `payloads` from a thread of its own and waits until all are accumulated.
    async fn run(&self, payloads: Vec<Vec<u8>>) -> Duration {
        let target = self.routed() + payloads.len() as u64;
        let publisher = self.publisher.clone();
        let started = Instant::now();
        let feeding = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
            runtime.block_on(async move {
                for payload in payloads {
                    assert!(publisher.publish(TOPIC, payload).await, "the pipeline refused a message");
                }
            });
        });
        // Polled every millisecond (tokio's timer resolution): at most 1 ms of an
        // iteration of ~100 ms or more.
        while self.routed() < target {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        feeding.join().expect("the publishing thread");
        elapsed
    }

    /// Stops the pipeline and checks that every sample reached the counting actor once.
    async fn finish(self) {
        let sent = self.next;
        self.pipeline.stop().await;
        self.counter_arbiter.stop();
        let _ = self.counter_arbiter.join();
        assert_eq!(self.stats.received.load(Ordering::Relaxed), sent, "received");
        assert_eq!(self.stats.accepted.load(Ordering::Relaxed), sent, "accepted");
        assert_eq!(self.samples.load(Ordering::Relaxed), sent, "samples handed to the writer");
        assert_eq!(self.rejections.load(Ordering::Relaxed), 0, "rejections");
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let system = actix_rt::System::new();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(MESSAGES_PER_ITERATION));
    for (traffic, machines) in [
        (Traffic::Backlog, 100),
        (Traffic::Backlog, 1_000),
        (Traffic::Backlog, 10_000),
        (Traffic::OneDenseMinute, 100),
        (Traffic::OneDenseMinute, 1_000),
        (Traffic::OneDenseMinute, 10_000),
    ] {
        let mut bench = system.block_on(Bench::start(machines, traffic));
        group.bench_function(BenchmarkId::new(traffic.name(), format!("{machines}_machines")), |b| {
            b.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    let payloads = bench.payloads(MESSAGES_PER_ITERATION);
                    total += system.block_on(bench.run(payloads));
                }
                total
            });
        });
        system.block_on(bench.finish());
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_pipeline
}
criterion_main!(benches);
