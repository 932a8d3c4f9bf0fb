//! The journal's cost per message on the delivering thread: one `append_message` (encode,
//! CRC32C, a copy into the mapped segment) of a typical telemetry message, with `sync = "os"` and with
//! `sync = "fsync"` (the sync thread running beside, as in the service). Every segment
//! is released as it fills, so the directory stays small, as it does in service.
//!
//! `cargo bench -p fleetagg-actors --bench journal`; docs/benchmarks.md has the results.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fleetagg_actors::journal::{self, Journal};
use fleetagg_actors::stats::PipelineStats;
use fleetagg_config::{JournalConfig, JournalSync};
use std::sync::Arc;
use std::time::Duration;

const TOPIC: &str = "plant/m1234/telemetry";
const PAYLOAD: &[u8] =
    br#"{"machine":"m1234","ts":"2026-12-02T10:00:00.123456Z","load_rate":42.5,"mileage":12345.6}"#;

fn bench_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_append");
    group.throughput(Throughput::Elements(1));
    for sync in [JournalSync::Os, JournalSync::Fsync] {
        let dir =
            std::env::temp_dir().join(format!("fleetagg-bench-journal-{}-{sync:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = JournalConfig { dir: dir.clone(), sync, ..JournalConfig::default() };
        let stats = Arc::new(PipelineStats::default());
        let (journal, _) = Journal::open(&config, "bench", stats).expect("journal opens");
        if sync == JournalSync::Fsync {
            journal::spawn_sync_thread(&journal, config.sync_interval).expect("sync thread");
        }
        group.bench_function(BenchmarkId::from_parameter(format!("{sync:?}")), |b| {
            b.iter(|| {
                let mark = journal.append_message(TOPIC, PAYLOAD, PAYLOAD.len()).expect("append").mark;
                // Finished at once: segments are removed as they fill.
                journal.release_mark(mark);
            });
        });
        drop(journal);
        let _ = std::fs::remove_dir_all(&dir);
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = bench_append
}
criterion_main!(benches);
