//! Resident memory per machine, in process: how much of the service's per-machine cost is
//! the open-minute state and how much the actor around it.
//!
//! Each scenario runs in a child process of its own (so that memory freed by one cannot be
//! reused by the next) and reports the growth of VmRSS divided by the number of machines:
//!
//! - `open_minutes`: one `OpenMinutes` per machine holding one sample (the aggregator's
//!   state while a minute is open);
//! - `open_minutes_full`: the same holding a whole minute at 1/s, 60 samples stamped in
//!   µs (every machine's state at the moment its minute closes, live at 1/s);
//! - `open_minutes_boundary`: 65 such samples, a full minute in its grace period and 5
//!   s of the next (every machine's state at a minute boundary, live at 1/s);
//! - `close_wave_ms`, `close_wave_us`: what closing a minute boundary costs, live at 1/s.
//!   Every machine holds a written minute (cooled to a cold index on disk), a full
//!   minute in its grace period and 5 s of the next (ms or µs stamps, and journal marks
//!   as at 100,000 messages/s: a new segment every 3.5 s); then every
//!   machine's due minute closes in turn, in the machines' order (`…_shuffled`: in a
//!   random one), its part waiting in a stand-in for the writer's backlog (the last
//!   15,000 parts, about what the service keeps there). The report gives the level
//!   before the wave, the highest `VmRSS` during it (read every 500 closes) and the
//!   level after: how much of the live peak the wave itself adds;
//! - `steady_ms`: every machine live at 1/s (ms stamps, journal marks as above) for 35
//!   minutes (`STEADY_MINUTES`), each minute closed at its end + grace in the machines'
//!   order and cooled, the index remembering 30 minutes (`max_lateness`): a line a
//!   minute with the lowest and highest `VmRSS` in it and the index's bytes on the heap
//!   and on disk. Whether the level climbs once the window is full;
//! - `pipeline`: the broker and one aggregator actor per machine on one arbiter per core,
//!   fed one message per machine by the fake broker, every minute still open;
//! - `pipeline_wave`: the same pipeline at a minute boundary, live at 1/s: every machine
//!   sends a full minute and 5 s of the next (ms stamps, the wall clock moving with them),
//!   then the clock passes the minute's end + grace and every aggregator closes it,
//!   handing its row to a writer that drops it at once. The level before the wave, its
//!   highest `VmRSS` (read every 20 ms) and the level after: what the actors add to the
//!   close wave beside `close_wave_ms`'s open minutes;
//! - `written_*`: one `OpenMinutes` per machine after ten minutes of samples, all of them
//!   written (closed) and held in the duplicate index (`max_lateness` of 10 minutes), plus
//!   the current minute open with one sample: `written_1s` one sample a second on whole
//!   seconds, `written_1s_ms` and `written_1s_us` the same stamped in milliseconds or
//!   microseconds by a clock a few milliseconds off, `written_10s` ten a second on
//!   100 ms ticks. Each minute closes at its end + grace, as in the service. The
//!   `…_cold` variants also move the older written minutes to a cold index on disk after
//!   each close, as the service does when the journal is on (`ColdIndex::cool`).
//!
//! `cargo bench -p fleetagg-actors --bench memory` (MACHINES=… to change the fleet, 100,000
//! by default). Not a criterion benchmark: it measures bytes, not time.

/// The service's allocator (src/main.rs), so that these numbers are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use actix::prelude::*;
use fleetagg_actors::aggregation::ColdIndex;
use fleetagg_actors::clock::{Clock, ManualClock};
use fleetagg_actors::logic::{JournalMark, Minute, OpenMinutes, Sample, Timestamp};
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

/// `per_minute` samples a second apart per machine from a minute's start (µs stamps a
/// little off the whole second, as a real clock's are): one open minute up to 60, two
/// beyond.
fn open_minutes(scenario: &str, machines: usize, per_minute: i64) {
    let before = rss_kib();
    let minute_start = Timestamp::from_micros(SAMPLE_MICROS).minute().start().micros();
    let held: Vec<OpenMinutes> = (0..machines)
        .map(|machine| {
            let mut open = OpenMinutes::default();
            for second in 0..per_minute {
                let jitter = (machine as i64 * 7_919 + second * 104_729) % 5_000;
                let sample = Sample {
                    ts: Timestamp::from_micros(minute_start + second * 1_000_000 + jitter),
                    load_rate: 42.0,
                    mileage: 1.0,
                    mark: JournalMark::NONE,
                };
                open.accept(&sample);
            }
            open
        })
        .collect();
    report(scenario, machines, before, rss_kib());
    drop(held);
}

/// Ten written minutes and one open minute per machine (see the module comment).
fn written(scenario: &str, machines: usize) {
    let cold_dir = std::env::temp_dir().join(format!("fleetagg-memory-cold-{}", std::process::id()));
    let cold =
        scenario.ends_with("_cold").then(|| ColdIndex::open(&cold_dir).expect("a cold index directory"));
    let (per_second, jitter_unit): (i64, i64) = match scenario.trim_end_matches("_cold") {
        "written_1s" => (1, 0),
        "written_1s_ms" => (1, 1_000),
        "written_1s_us" => (1, 1),
        _ => (10, 0),
    };
    let now = SAMPLE_MICROS + 10 * 60_000_000;
    let sample = |micros: i64| Sample {
        ts: Timestamp::from_micros(micros),
        load_rate: 42.0,
        mileage: 1.0,
        mark: JournalMark::NONE,
    };
    let first_minute = Timestamp::from_micros(SAMPLE_MICROS).minute();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let close = |open: &mut OpenMinutes, now: i64| {
        open.take_closed(Timestamp::from_micros(now), Duration::from_secs(5), first_minute);
        if let Some(cold) = &cold {
            cold.cool(open, first_minute).expect("the cold index stores");
        }
    };
    let before = rss_kib();
    let held: Vec<OpenMinutes> = (0..machines)
        .map(|_| {
            let mut open = OpenMinutes::default();
            let start = first_minute.start().micros();
            for tick in 0..(600 * per_second) {
                // A clock up to 5 ms off, in the scenario's unit.
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let jitter = if jitter_unit == 0 {
                    0
                } else {
                    (state >> 33) as i64 % 5_000 / jitter_unit * jitter_unit
                };
                let ts = start + tick * 1_000_000 / per_second + jitter;
                // The previous minute closes at this minute's grace (5 s), as it would live.
                if (tick % (60 * per_second)) == 5 * per_second && tick > 60 * per_second {
                    close(&mut open, ts);
                }
                open.accept(&sample(ts));
            }
            close(&mut open, now);
            open.accept(&sample(now));
            assert_eq!(open.len(), 1);
            open
        })
        .collect();
    report(scenario, machines, before, rss_kib());
    let index: usize = held.iter().map(|open| open.written().heap_bytes()).sum();
    println!("memory/{scenario:<14} index bytes on the heap: {} per machine", index / machines.max(1));
    if let Some(cold) = &cold {
        println!(
            "memory/{scenario:<14} cold index on disk: {} bytes per machine",
            cold.bytes() / machines.max(1) as u64
        );
        let _ = std::fs::remove_dir_all(&cold_dir);
    }
    drop(held);
}

/// The written minute, the full minute in its grace and 5 s of the next, for every machine,
/// then the close wave (see the module comment).
/// One sample a second per machine from `start` as live traffic brings it: stamps a few
/// ms off the whole second in `jitter_unit` (1 µs or 1,000), journal marks as at 100,000
/// messages/s (a 64 MiB segment every 3.5 s, so a minute's samples span about 18
/// segments: `JournalTally`).
struct LiveSamples {
    start: i64,
    jitter_unit: i64,
    seq: u64,
    state: u64,
}

impl LiveSamples {
    fn new(start: i64, jitter_unit: i64) -> Self {
        LiveSamples { start, jitter_unit, seq: 0, state: 0x2545_f491_4f6c_dd1d }
    }

    /// The next sample of a machine in `second`.
    fn at_second(&mut self, second: i64) -> Sample {
        self.state =
            self.state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let jitter = (self.state >> 33) as i64 % 5_000 / self.jitter_unit * self.jitter_unit;
        let micros = self.start + second * 1_000_000 + jitter;
        self.seq += 1;
        let segment = 1 + u32::try_from((micros - self.start) / 500_000 / 7).unwrap_or(0);
        Sample {
            ts: Timestamp::from_micros(micros),
            load_rate: 42.0,
            mileage: 1.0,
            mark: JournalMark { seq: self.seq, segment },
        }
    }
}

fn close_wave(scenario: &str, machines: usize) {
    let cold_dir = std::env::temp_dir().join(format!("fleetagg-memory-wave-{}", std::process::id()));
    let cold = ColdIndex::open(&cold_dir).expect("a cold index directory");
    let jitter_unit: i64 = if scenario.contains("_us") { 1 } else { 1_000 };
    let first_minute = Timestamp::from_micros(SAMPLE_MICROS).minute();
    let start = first_minute.start().micros();
    let grace = Duration::from_secs(5);
    let mut samples = LiveSamples::new(start, jitter_unit);
    let before = rss_kib();
    // Built second by second across the fleet, as live traffic arrives, so that each
    // machine's allocations interleave with the others' as they do in the service.
    let mut held: Vec<OpenMinutes> = (0..machines).map(|_| OpenMinutes::default()).collect();
    for second in 0..125 {
        for open in &mut held {
            let sample = samples.at_second(second);
            if second == 65 {
                open.take_closed(sample.ts, grace, first_minute);
                cold.cool(open, first_minute).expect("the cold index stores");
            }
            open.accept(&sample);
        }
    }
    let level = rss_kib();
    let now = Timestamp::from_micros(start + 125 * 1_000_000 + 5_000);
    let mut backlog = std::collections::VecDeque::new();
    let mut peak = level;
    // In the machines' order (the order their memory was allocated in), as the shard's
    // timers now close a boundary's minutes, or shuffled, as they did before session 16
    // (their instants differed by microseconds).
    let mut order: Vec<usize> = (0..machines).collect();
    if scenario.ends_with("_shuffled") {
        let mut random = 0x9e37_79b9_7f4a_7c15_u64;
        for at in (1..order.len()).rev() {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            order.swap(at, (random % (at as u64 + 1)) as usize);
        }
    }
    for (closes, &machine) in order.iter().enumerate() {
        let open = &mut held[machine];
        let parts = open.take_closed(now, grace, first_minute);
        assert_eq!(parts.len(), 1, "one minute due per machine");
        cold.cool(open, first_minute).expect("the cold index stores");
        backlog.push_back(parts);
        if backlog.len() > 15_000 {
            backlog.pop_front();
        }
        if closes % 500 == 0 {
            peak = peak.max(rss_kib());
        }
    }
    backlog.clear();
    let after = rss_kib();
    report(scenario, machines, before, level);
    let per_machine = |kib: u64| kib as f64 * 1024.0 / machines as f64;
    println!(
        "memory/{scenario:<14} the wave: peak {peak} KiB ({:+.0} bytes per machine over the level before), \
         after it {after} KiB ({:+.0})",
        per_machine(peak - level),
        per_machine(after) - per_machine(level)
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&cold_dir);
}

/// Every machine live at one sample a second for `STEADY_MINUTES` (35 by default), each
/// minute closed at its end + grace in the machines' order and its older written minutes
/// cooled, the index remembering `max_lateness` (30 minutes): whether the level climbs
/// once the duplicate index spans the whole window, as the 30-minute live runs showed.
fn steady(scenario: &str, machines: usize) {
    let minutes: i64 = std::env::var("STEADY_MINUTES").ok().and_then(|text| text.parse().ok()).unwrap_or(35);
    let cold_dir = std::env::temp_dir().join(format!("fleetagg-memory-steady-{}", std::process::id()));
    let cold = ColdIndex::open(&cold_dir).expect("a cold index directory");
    let jitter_unit: i64 = if scenario.contains("_us") { 1 } else { 1_000 };
    let start = Timestamp::from_micros(SAMPLE_MICROS).minute().start().micros();
    let grace = Duration::from_secs(5);
    let max_lateness_minutes = 30;
    let mut samples = LiveSamples::new(start, jitter_unit);
    let before = rss_kib();
    let mut held: Vec<OpenMinutes> = (0..machines).map(|_| OpenMinutes::default()).collect();
    let mut backlog = std::collections::VecDeque::new();
    let per_machine = |kib: u64| kib.saturating_sub(before) as f64 * 1024.0 / machines as f64;
    let (mut low, mut peak) = (u64::MAX, 0);
    for second in 0..minutes * 60 {
        let closing = second % 60 == 5 && second > 60;
        for (machine, open) in held.iter_mut().enumerate() {
            let sample = samples.at_second(second);
            if closing {
                let remember_since = Minute::from_index(sample.ts.minute().index() - max_lateness_minutes);
                backlog.push_back(open.take_closed(sample.ts, grace, remember_since));
                if backlog.len() > 15_000 {
                    backlog.pop_front();
                }
                cold.cool(open, remember_since).expect("the cold index stores");
                if machine % 500 == 0 {
                    peak = peak.max(rss_kib());
                }
            }
            open.accept(&sample);
        }
        let level = rss_kib();
        (low, peak) = (low.min(level), peak.max(level));
        if second % 60 == 59 {
            let index: usize = held.iter().map(|open| open.written().heap_bytes()).sum();
            println!(
                "memory/{scenario:<14} minute {:>2}: low {:.0} peak {:.0} bytes per machine; index {} on the \
                 heap, {} on disk",
                second / 60 + 1,
                per_machine(low),
                per_machine(peak),
                index / machines,
                cold.bytes() / machines as u64
            );
            (low, peak) = (u64::MAX, 0);
        }
    }
    report(scenario, machines, before, rss_kib());
    drop(held);
    let _ = std::fs::remove_dir_all(&cold_dir);
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

/// The broker and one shard per core, their rows going to a writer that drops them, fed
/// by a fake broker; and `VmRSS` just before they started.
async fn discarding_pipeline(clock: Arc<dyn Clock>) -> (Pipeline, FakeBroker, Arc<PipelineStats>, u64) {
    let stats = Arc::new(PipelineStats::default());
    let discard = Discard.start();
    let outputs = PipelineOutputs { minutes: discard.clone().recipient(), rejections: discard.recipient() };
    let (publisher, source) = FakeBroker::new();
    let settings = PipelineSettings::from_config(&Config::default());
    let before = rss_kib();
    let pipeline = Pipeline::start(settings, Box::new(source), outputs, clock, stats.clone())
        .await
        .expect("the fake source starts");
    (pipeline, publisher, stats, before)
}

fn pipeline(machines: usize) {
    let ts = Timestamp::from_micros(SAMPLE_MICROS)
        .to_chrono()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let system = actix_rt::System::new();
    system.block_on(async move {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(SAMPLE_MICROS + 10_000_000)));
        let (pipeline, publisher, stats, before) = discarding_pipeline(clock).await;
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

/// The pipeline at a minute boundary and its close wave (see the module comment).
fn pipeline_wave(machines: usize) {
    let minute_start = Timestamp::from_micros(SAMPLE_MICROS).minute().start().micros();
    let system = actix_rt::System::new();
    system.block_on(async move {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(minute_start)));
        let (pipeline, publisher, stats, before) = discarding_pipeline(clock.clone()).await;
        let mut sent = 0_u64;
        for second in 0..65_i64 {
            // The wall clock half a second past the samples: none of them is early.
            clock.set(Timestamp::from_micros(minute_start + second * 1_000_000 + 500_000));
            for n in 0..machines as i64 {
                // Each machine a phase of its own within the second, to the millisecond.
                let micros = minute_start + second * 1_000_000 + (n * 7_919 + second * 3) % 500 * 1_000;
                let ts = Timestamp::from_micros(micros)
                    .to_chrono()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let payload = format!(
                    r#"{{"machine":"machine-{n:06}","ts":"{ts}","load_rate":42.17,"mileage":12345.678}}"#
                );
                assert!(publisher.publish("machines/memory/telemetry", payload).await);
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while stats.accepted.load(Ordering::Relaxed) < sent {
            assert!(Instant::now() < deadline, "the samples did not reach the aggregators");
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stats.minutes_closed.load(Ordering::Relaxed), 0, "no minute closed before the wave");
        let level = rss_kib();
        clock.set(Timestamp::from_micros(minute_start + 65_000_000 + 5_000));
        let started = Instant::now();
        let mut peak = level;
        while stats.minutes_closed.load(Ordering::Relaxed) < machines as u64 {
            assert!(Instant::now() < started + Duration::from_secs(300), "the minutes did not close");
            peak = peak.max(rss_kib());
            actix_rt::time::sleep(Duration::from_millis(20)).await;
        }
        let wave = started.elapsed();
        actix_rt::time::sleep(Duration::from_millis(200)).await;
        let after = rss_kib();
        report("pipeline_wave", machines, before, level);
        let per_machine = |kib: i64| kib as f64 * 1024.0 / machines as f64;
        println!(
            "memory/pipeline_wave  the wave ({:.1} s): peak {peak} KiB ({:+.0} bytes per machine over the \
             level before), after it {after} KiB ({:+.0})",
            wave.as_secs_f64(),
            per_machine(peak as i64 - level as i64),
            per_machine(after as i64 - level as i64)
        );
        pipeline.stop().await;
    });
}

fn main() {
    let machines = machines();
    match std::env::var(SCENARIO).as_deref() {
        Ok("open_minutes") => open_minutes("open_minutes", machines, 1),
        Ok("open_minutes_full") => open_minutes("open_minutes_full", machines, 60),
        // 5 s into the next minute: a full minute in its grace period and the next one,
        // what every machine holds at a minute boundary.
        Ok("open_minutes_boundary") => open_minutes("open_minutes_boundary", machines, 65),
        Ok("pipeline") => pipeline(machines),
        Ok("pipeline_wave") => pipeline_wave(machines),
        Ok(scenario) if scenario.starts_with("close_wave_") => close_wave(scenario, machines),
        Ok(scenario) if scenario.starts_with("steady_") => steady(scenario, machines),
        Ok(scenario) if scenario.starts_with("written_") => written(scenario, machines),
        _ => {
            let exe = std::env::current_exe().expect("the path of this benchmark");
            let scenarios = [
                "open_minutes",
                "open_minutes_full",
                "open_minutes_boundary",
                "close_wave_ms",
                "close_wave_ms_shuffled",
                "close_wave_us",
                "close_wave_us_shuffled",
                "steady_ms",
                "written_1s",
                "written_1s_ms",
                "written_1s_us",
                "written_10s",
                "written_1s_cold",
                "written_1s_ms_cold",
                "written_1s_us_cold",
                "written_10s_cold",
                "pipeline",
                "pipeline_wave",
            ];
            for scenario in scenarios {
                // The service returns freed memory at once (src/allocator.rs); mimalloc
                // reads this at start-up, so each child runs with the service's setting
                // unless the caller chose another.
                let purge_delay = std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "0".into());
                let status = Command::new(&exe)
                    .env(SCENARIO, scenario)
                    .env("MIMALLOC_PURGE_DELAY", purge_delay)
                    .status()
                    .expect("a child process");
                assert!(status.success(), "scenario {scenario} failed: {status}");
            }
        }
    }
}
