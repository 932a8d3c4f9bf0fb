//! The per-message hot paths, without actors: parsing and validating one payload, adding
//! one sample to a machine's minute accumulator, and a written minute's reopen and close.
//!
//! `cargo bench -p fleetagg-logic --bench logic`; docs/benchmarks.md has the results.

/// The service's allocator (src/main.rs), so that these numbers are the service's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use chrono_tz::Tz;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use fleetagg_logic::{
    validate, EpochUnit, Minute, MinuteAggregate, OpenMinutes, Sample, Timestamp, TimestampRules,
    ValidationRules,
};
use std::time::Duration;

/// 2026-03-01T10:00:00Z.
const BASE_MICROS: i64 = 1_772_359_200_000_000;

/// The service's defaults (config/fleetagg.example.toml).
fn rules() -> ValidationRules {
    ValidationRules {
        max_payload_bytes: 65_536,
        timestamps: TimestampRules { default_timezone: Tz::UTC, epoch_unit: EpochUnit::S },
        future_tolerance: Some(Duration::from_secs(5)),
        max_lateness: Duration::from_secs(600),
    }
}

fn now() -> Timestamp {
    Timestamp::from_micros(BASE_MICROS + 90_000_000)
}

fn bench_validate(c: &mut Criterion) {
    let rules = rules();
    let now = now();
    let epoch_seconds = BASE_MICROS / 1_000_000 + 10;
    // What `fleetagg simulate` publishes, and the other accepted timestamp forms.
    let payloads: [(&str, String); 4] = [
        (
            "rfc3339_utc",
            r#"{"machine":"machine-0042","ts":"2026-03-01T10:00:10.123Z","load_rate":42.17,"mileage":12345.678}"#
                .to_owned(),
        ),
        (
            "rfc3339_offset",
            r#"{"machine":"machine-0042","ts":"2026-03-01T11:00:10.123456+01:00","load_rate":42.17,"mileage":12345.678}"#
                .to_owned(),
        ),
        (
            "epoch_seconds",
            format!(r#"{{"machine":"machine-0042","ts":{epoch_seconds},"load_rate":42.17,"mileage":12345.678}}"#),
        ),
        ("rejected_malformed", r#"{"machine":"machine-0042","ts":"2026-03-01T10:00:10Z","load_rate":4"#.to_owned()),
    ];
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    for (name, payload) in &payloads {
        let payload = payload.as_bytes();
        // Sanity: the accepted forms are accepted, the broken one is not.
        assert_eq!(validate(payload, now, &rules).is_ok(), !name.starts_with("rejected"), "{name}");
        group.bench_function(*name, |b| b.iter(|| validate(black_box(payload), now, &rules)));
    }
    group.finish();
}

/// `count` samples of one machine, one per `step_micros`, from BASE.
fn samples(count: usize, step_micros: i64) -> Vec<Sample> {
    (0..count)
        .map(|n| {
            let n = i64::try_from(n).expect("sample index fits i64");
            Sample {
                ts: Timestamp::from_micros(BASE_MICROS + n * step_micros),
                load_rate: (n % 100) as f64,
                mileage: 1_000.0 + n as f64 * 0.01,
                mark: fleetagg_logic::JournalMark::NONE,
            }
        })
        .collect()
}

fn bench_accumulate(c: &mut Criterion) {
    let mut group = c.benchmark_group("accumulate");

    let sample = samples(1, 1)[0];
    let mut aggregate = MinuteAggregate::of(&sample);
    group.throughput(Throughput::Elements(1));
    group.bench_function("minute_aggregate_add", |b| b.iter(|| aggregate.add(black_box(&sample))));

    // What an aggregator does per sample: find the open minute, check for a duplicate,
    // add. 1,000 samples a second apart: about 17 minutes, 60 samples each.
    const SAMPLES: usize = 1_000;
    let stream = samples(SAMPLES, 1_000_000);
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.bench_function("open_minutes_accept", |b| {
        b.iter_batched_ref(
            OpenMinutes::default,
            |open| {
                for sample in &stream {
                    black_box(open.accept(sample));
                }
            },
            BatchSize::SmallInput,
        );
    });
    // The same, then every minute closed (the tick's work), as in steady state.
    group.bench_function("open_minutes_accept_then_close", |b| {
        let end = Timestamp::from_micros(BASE_MICROS + 3_600_000_000);
        b.iter_batched_ref(
            OpenMinutes::default,
            |open| {
                for sample in &stream {
                    black_box(open.accept(sample));
                }
                black_box(open.take_closed(end, Duration::from_secs(5), Minute::from_index(0)))
            },
            BatchSize::SmallInput,
        );
    });

    // A written minute reopened by a burst of late samples and closed again, the cycle a
    // gateway resending into a busy minute repeats: 6,000 samples written (100 a second),
    // then 20 late ones accepted (the reopen decodes the written part) and closed (the
    // index takes the union).
    let written = samples(6_000, 10_000);
    let late: Vec<Sample> = samples(20, 10_000)
        .into_iter()
        .map(|sample| Sample { ts: Timestamp::from_micros(sample.ts.micros() + 5_000), ..sample })
        .collect();
    let end = Timestamp::from_micros(BASE_MICROS + 3_600_000_000);
    group.throughput(Throughput::Elements(late.len() as u64));
    group.bench_function("written_minute_reopen_then_close", |b| {
        b.iter_batched_ref(
            || {
                let mut open = OpenMinutes::default();
                for sample in &written {
                    open.accept(sample);
                }
                open.take_closed(end, Duration::from_secs(5), Minute::from_index(0));
                open
            },
            |open| {
                for sample in &late {
                    black_box(open.accept(sample));
                }
                black_box(open.take_closed(end, Duration::from_secs(5), Minute::from_index(0)))
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_validate, bench_accumulate
}
criterion_main!(benches);
