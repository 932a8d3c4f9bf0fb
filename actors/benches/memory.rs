//! Resident memory per machine, in process: how much of the service's per-machine cost is
//! the open-minute state and how much the actor around it.
//!
//! Each scenario runs in a child process of its own (so that memory freed by one cannot be
//! reused by the next) and reports the growth of VmRSS divided by the number of machines:
//!
//! - `open_minutes`: one `OpenMinutes` per machine holding one sample (the aggregator's
//!   state while a minute is open);
//! - `pipeline`: the broker and one aggregator actor per machine on one arbiter per core,
//!   fed one message per machine by the fake broker, every minute still open.
//!
//! `cargo bench -p fleetagg-actors --bench memory` (MACHINES=… to change the fleet, 100,000
//! by default). Not a criterion benchmark: it measures bytes, not time.

/// The service's allocator (src/main.rs), so that these numbers are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use actix::prelude::*;
use fleetagg_actors::clock::{Clock, ManualClock};
use fleetagg_actors::logic::{JournalMark, OpenMinutes, Sample, Timestamp};
use fleetagg_actors::messages::{StoreRejections, WriteMinutes};
use fleetagg_actors::service::PipelineOutputs;
use fleetagg_actors::service::PipelineSettings;
use fleetagg_actors::source::FakeBroker;
use fleetagg_actors::stats::PipelineStats;
use fleetagg_actors::Pipeline;
use fleetagg_config::Config;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 2026-03-01T10:00:10Z: every sample's time; the clock stands 10 s later, so no minute is
/// due while memory is measured.
const SAMPLE_MICROS: i64 = 1_772_359_210_000_000;
const SCENARIO: &str = "FLEETAGG_MEMORY_SCENARIO";

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line")
}

fn machines() -> usize {
    std::env::var("MACHINES").ok().and_then(|text| text.replace('_', "").parse().ok()).unwrap_or(100_000)
}

fn report(scenario: &str, machines: usize, before: u64, after: u64) {
    let per_machine = (after.saturating_sub(before)) as f64 * 1024.0 / machines as f64;
    println!(
        "memory/{scenario:<14} {machines} machines: RSS {before} KiB -> {after} KiB, \
         {per_machine:.0} bytes ({:.2} KiB) per machine",
        per_machine / 1024.0
    );
}

fn open_minutes(machines: usize) {
    let before = rss_kib();
    let sample = Sample {
        ts: Timestamp::from_micros(SAMPLE_MICROS),
        load_rate: 42.0,
        mileage: 1.0,
        mark: JournalMark::NONE,
    };
    let held: Vec<OpenMinutes> = (0..machines)
        .map(|_| {
            let mut open = OpenMinutes::default();
            open.accept(&sample);
            open
        })
        .collect();
    report("open_minutes", machines, before, rss_kib());
    drop(held);
}

struct Discard;

impl Actor for Discard {
    type Context = Context<Self>;
}

impl Handler<WriteMinutes> for Discard {
    type Result = ();

    fn handle(&mut self, _: WriteMinutes, _: &mut Self::Context) {}
}

impl Handler<StoreRejections> for Discard {
    type Result = ();

    fn handle(&mut self, _: StoreRejections, _: &mut Self::Context) {}
}

fn pipeline(machines: usize) {
    let ts = Timestamp::from_micros(SAMPLE_MICROS)
        .to_chrono()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let system = actix_rt::System::new();
    system.block_on(async move {
        let clock: Arc<dyn Clock> =
            Arc::new(ManualClock::new(Timestamp::from_micros(SAMPLE_MICROS + 10_000_000)));
        let stats = Arc::new(PipelineStats::default());
        let discard = Discard.start();
        let outputs =
            PipelineOutputs { minutes: discard.clone().recipient(), rejections: discard.recipient() };
        let (publisher, source) = FakeBroker::new();
        let settings = PipelineSettings::from_config(&Config::default());
        let before = rss_kib();
        let pipeline = Pipeline::start(settings, Box::new(source), outputs, clock, stats.clone())
            .await
            .expect("the fake source starts");
        for n in 1..=machines {
            let payload = format!(
                r#"{{"machine":"machine-{n:06}","ts":"{ts}","load_rate":42.17,"mileage":12345.678}}"#
            );
            assert!(publisher.publish("machines/memory/telemetry", payload).await);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while stats.accepted.load(Ordering::Relaxed) < machines as u64 {
            assert!(Instant::now() < deadline, "the samples did not reach the aggregators");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        report("pipeline", machines, before, rss_kib());
        pipeline.stop().await;
    });
}

fn main() {
    let machines = machines();
    match std::env::var(SCENARIO).as_deref() {
        Ok("open_minutes") => open_minutes(machines),
        Ok("pipeline") => pipeline(machines),
        _ => {
            let exe = std::env::current_exe().expect("the path of this benchmark");
            for scenario in ["open_minutes", "pipeline"] {
                let status = Command::new(&exe).env(SCENARIO, scenario).status().expect("a child process");
                assert!(status.success(), "scenario {scenario} failed: {status}");
            }
        }
    }
}
