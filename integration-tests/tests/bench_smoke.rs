//! The end-to-end benchmark command runs: `scripts/bench --tiny` (its own Mosquitto on a
//! free port, its own database on the local PostgreSQL, tiny sizes) exits 0 and prints its
//! results table with a number in every row. Benchmarks are not timed tests: the numbers
//! themselves are not checked (docs/benchmarks.md).
//!
//! The script is given the binary the other integration tests run (`FLEETAGG_BIN`, the
//! debug build `scripts/test` makes), so it never invokes cargo from inside `cargo test`.

use fleetagg_integration_tests::fleetagg_bin;
use std::path::Path;
use std::process::Command;

/// Rows every tiny run prints, by the start of their label.
const ROWS: &[&str] = &[
    "paho floor drain, N=",
    "mosquitto_sub drain, N=",
    "fleetagg drain, N=",
    "drain / paho floor, N=",
    "drain / mosquitto_sub, N=",
    "writer upsert, R=",
    "writer COPY, R=",
    "upsert/COPY ratio",
    "writer COPY into a staging table, then upsert, R=",
    "writer statement without ON CONFLICT (new rows only), R=",
    "writer, rows known new: COPY + ledger insert per batch, R=",
    "writer (rows known new)/COPY ratio",
    "backfill drain, N=",
    "backfill / usual drain",
    "peak RSS, ",
    "RSS per machine (peak - idle)",
    "RSS per machine (peak / machines)",
    "writer, prepared statements, batches of ",
    "writer, unnamed statements, batches of ",
    "writer, unnamed/prepared, batches of ",
    "fleetagg start-up hangs",
];

/// Rows a tiny drain with `BENCH_JOURNAL=compare` adds, by the start of their label.
const COMPARE_ROWS: &[&str] = &[
    "fleetagg drain, journal off, N=",
    "journal on / off, N=",
    "fleetagg CPU per message, journal on, N=",
    "fleetagg CPU per message, journal off, N=",
    "paho receive thread CPU per message, journal on, N=",
    "paho receive thread CPU per message, journal off, N=",
    "paho receive thread minor faults per 1,000 messages, journal on, N=",
    "paho receive thread voluntary switches per 1,000 messages, journal off, N=",
];

/// Runs `scripts/bench --tiny` with `env` and returns its standard output followed by its
/// log (standard error), after checking that it succeeded and printed a number in each of
/// `rows`.
fn run_tiny_bench(env: &[(&str, &str)], rows: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    let output = Command::new(root.join("scripts/bench"))
        .arg("--tiny")
        .env("FLEETAGG_BIN", fleetagg_bin())
        .env_remove("BENCH_SIZE")
        .env_remove("BENCH_JOURNAL")
        .env_remove("BENCH_PHASES")
        .envs(env.iter().copied())
        .current_dir(root)
        .output()
        .expect("scripts/bench could not be started");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/bench --tiny failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(
        stdout.contains("| measurement | value | unit | target | verdict |"),
        "no results table header:\n{stdout}"
    );
    for label in rows {
        let value = row_value(&stdout, label);
        assert!(value.is_some_and(f64::is_finite), "row {label:?} has no number:\n{stdout}");
    }
    format!("{stdout}{stderr}")
}

fn row_value(stdout: &str, label: &str) -> Option<f64> {
    let row = stdout.lines().find(|line| line.starts_with(&format!("| {label}")))?;
    row.split('|').nth(2).map(|cell| cell.trim().replace(',', ""))?.parse().ok()
}

#[test]
fn a_paired_journal_comparison_prints_its_ratio_and_both_arms() {
    let stdout = run_tiny_bench(&[("BENCH_JOURNAL", "compare"), ("BENCH_PHASES", "drain")], COMPARE_ROWS);
    let ratio = row_value(&stdout, "journal on / off, N=").unwrap_or_default();
    assert!(ratio > 0.0, "the paired ratio is not a ratio of two drains: {ratio}\n{stdout}");
    let off = row_value(&stdout, "fleetagg drain, journal off, N=").unwrap_or_default();
    assert!(off > 0.0, "the journal-off arm did not drain:\n{stdout}");
    assert!(stdout.contains("median of 1 paired round |"), "not one pair per round:\n{stdout}");
}

#[test]
fn the_benchmark_command_runs_on_a_tiny_size_and_prints_its_table() {
    let stdout = run_tiny_bench(&[], ROWS);
    // The drain's timing from the first message received, and the service's CPU per thread
    // (paho's receive thread among them).
    let timed = stdout.lines().find(|line| line.contains("from it to the last row")).unwrap_or_default();
    assert!(
        timed.contains("first message received after") && !timed.contains("after 0.00s, from"),
        "no first-message timing:\n{stdout}"
    );
    let threads = stdout.lines().find(|line| line.contains("fleetagg CPU per thread")).unwrap_or_default();
    assert!(
        threads.contains("fleetagg-aggr-0") && threads.contains("MQTTAsync_rcv"),
        "no per-thread CPU:\n{stdout}"
    );
}

#[test]
fn a_short_live_run_delivers_every_published_message_and_traces_memory() {
    // Two publishers at QoS 1: each must see every PUBACK, or the bench fails.
    let stdout = run_tiny_bench(
        &[
            ("BENCH_PHASES", "latency"),
            ("BENCH_LATENCY_SECONDS", "3"),
            ("BENCH_LATENCY_MACHINES", "100"),
            ("BENCH_LATENCY_RATE", "200"),
            ("BENCH_LATENCY_PUBLISHERS", "2"),
        ],
        &["RSS per machine live, 100 machines (peak - idle)"],
    );
    let live = stdout.lines().find(|line| line.contains(" live: ")).unwrap_or_default();
    assert!(live.contains("live: 600 of 600 messages received"), "not every message arrived:\n{stdout}");
    assert!(stdout.contains("at the sampled peak ("), "no memory trace:\n{stdout}");
}
