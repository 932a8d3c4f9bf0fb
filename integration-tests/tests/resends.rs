//! Resends after their minute was written (a field gateway flushing its buffer after a
//! reconnect), against the real binary, Mosquitto and PostgreSQL: within
//! `max_lateness` they are duplicates after the write, after a clean restart and after a
//! SIGKILL, and the rows never change; a sample that is new to a written minute still
//! counts; minutes moved to the cold index on disk stay duplicates. A start while
//! PostgreSQL is away reads the written minutes once it is back.

use chrono::{TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, expected_rows, http_get, loading_rate, metric, publish_samples,
    service_config, unique, wait_for_exact_rows, Publisher, ServiceProcess, TestDatabase,
};
use std::time::Duration;

const MACHINES: usize = 20;
const SAMPLES: usize = 600;
const COLD_MACHINES: usize = 2;
const COLD_SAMPLES: usize = 1_434;

async fn duplicates(port: u16) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    metric(&body, "fleetagg_duplicates_total").expect("fleetagg_duplicates_total")
}

/// Sends `send` (`samples` samples) again and waits until the service on `port` has
/// dropped every one of them as a duplicate.
async fn resend_all<F, Fut>(port: u16, send: F, samples: usize, what: &str)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future,
{
    // A replay after a SIGKILL may have dropped earlier resends already.
    let before = duplicates(port).await;
    send().await;
    let expected = before + samples as f64;
    eventually(Duration::from_secs(60), what, || async move { duplicates(port).await == expected }).await;
}

async fn counter(port: u16, name: &str) -> f64 {
    let (_, body) = http_get(port, "/metrics").await;
    metric(&body, name).unwrap_or_else(|| panic!("{name} in /metrics"))
}

/// A test's service configuration for `database_url`, its metrics on a leased port (the
/// lease is held as long as the test needs the port).
fn config_with_metrics(database_url: &str, prefix: &str) -> (String, PortLease) {
    let metrics = PortLease::acquire();
    let config = service_config(database_url, prefix, &unique("fleetagg"), "1s")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", metrics.port()));
    (config, metrics)
}

/// A field gateway that sends, and resends, the same buffer.
struct Gateway {
    publisher: Publisher,
    prefix: String,
    start: chrono::DateTime<Utc>,
    machines: usize,
    samples: usize,
    step: TimeDelta,
}

impl Gateway {
    /// 600 samples of 20 machines over two minutes that ended a minute before the test
    /// began. Each minute is written within about a second (grace 1 s), well within
    /// max_lateness (10 min).
    async fn connect(prefix: &str) -> Gateway {
        Gateway::with(prefix, MACHINES, SAMPLES, TimeDelta::milliseconds(200), TimeDelta::minutes(3)).await
    }

    /// Six minutes of two machines, a sample every ~0.5 s stamped in microseconds,
    /// ending two minutes before the test began: once written, each machine's minutes
    /// older than its newest hold well over the 16 bytes worth a record, so they go to
    /// the cold index on disk.
    async fn cold(prefix: &str) -> Gateway {
        let step = TimeDelta::milliseconds(251);
        Gateway::with(prefix, COLD_MACHINES, COLD_SAMPLES, step, TimeDelta::minutes(8)).await
    }

    async fn with(prefix: &str, machines: usize, samples: usize, step: TimeDelta, ago: TimeDelta) -> Gateway {
        let publisher = Publisher::connect(&broker_url()).await;
        Gateway { publisher, prefix: prefix.to_owned(), start: Utc::now() - ago, machines, samples, step }
    }

    async fn send(&self) -> Vec<fleetagg_integration_tests::SentSample> {
        publish_samples(&self.publisher, &self.prefix, self.machines, self.start, self.step, self.samples)
            .await
    }

    /// Sends the buffer, waits for its rows and for the older minutes to reach the cold
    /// index; returns what was sent.
    async fn send_until_cold(
        &self,
        client: &tokio_postgres::Client,
        port: u16,
    ) -> Vec<fleetagg_integration_tests::SentSample> {
        let sent = self.send().await;
        wait_for_exact_rows(client, &sent, "the buffer written").await;
        eventually(Duration::from_secs(30), "older minutes moved to the cold index", || async move {
            counter(port, "fleetagg_cold_index_bytes").await > 0.0
        })
        .await;
        sent
    }
}

#[actix_rt::test]
async fn resends_after_the_write_and_after_restarts_are_duplicates_and_rows_stay_exact() {
    let db = TestDatabase::create().await;
    let prefix = unique("resend");
    let (config, metrics) = config_with_metrics(&db.url, &prefix);
    let port = metrics.port();
    let service = ServiceProcess::start(&config).await;
    let gateway = Gateway::connect(&prefix).await;
    let client = connect(&db.url).await;
    let send = || gateway.send();
    let start = gateway.start;
    let publisher = &gateway.publisher;
    let sent = send().await;
    wait_for_exact_rows(&client, &sent, "the first delivery written").await;
    let written = loading_rate(&client).await;

    // The gateway resends everything: all of it is already written.
    resend_all(port, send, SAMPLES, "600 duplicates after the write").await;
    assert_eq!(loading_rate(&client).await, written, "a resend after the write changed rows");

    // After a clean restart (the index is read back from the database).
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    let mut service = ServiceProcess::start(&config).await;
    resend_all(port, send, SAMPLES, "600 duplicates after a restart").await;
    assert_eq!(loading_rate(&client).await, written, "a resend after a restart changed rows");

    // After a SIGKILL, and with one sample that is new to a written minute.
    service.kill_9();
    let service = service.restart().await;
    resend_all(port, send, SAMPLES, "600 duplicates after a SIGKILL").await;
    let late = (format!("m{}", MACHINES - 1), start + TimeDelta::milliseconds(100), 42.0, 4242.0);
    publisher
        .publish(
            &format!("{prefix}/{}/telemetry", late.0),
            format!(
                r#"{{"machine":"{}","ts":"{}","load_rate":{},"mileage":{}}}"#,
                late.0,
                late.1.to_rfc3339(),
                late.2,
                late.3
            ),
        )
        .await;
    let mut with_late = sent.clone();
    with_late.push(late);
    wait_for_exact_rows(&client, &with_late, "the new sample merged into its written minute").await;
    assert_eq!(loading_rate(&client).await, expected_rows(&with_late));
    service.stop_ok().await;
}

/// Resent, every sample of the cold minutes is still a duplicate (the runs are read
/// back), also after a SIGKILL (the index is read back from the database and moved out
/// again); a clean stop removes the files.
#[actix_rt::test]
async fn resends_of_minutes_moved_to_the_cold_index_are_still_duplicates() {
    let db = TestDatabase::create().await;
    let prefix = unique("resend_cold");
    let (config, metrics) = config_with_metrics(&db.url, &prefix);
    let port = metrics.port();
    let service = ServiceProcess::start(&config).await;
    let gateway = Gateway::cold(&prefix).await;
    let client = connect(&db.url).await;
    gateway.send_until_cold(&client, port).await;
    let written = loading_rate(&client).await;
    assert_eq!(counter(port, "fleetagg_cold_index_loads_total").await, 0.0);

    resend_all(port, || gateway.send(), COLD_SAMPLES, "every sample of the cold minutes a duplicate").await;
    assert_eq!(loading_rate(&client).await, written, "a resend of cold minutes changed rows");
    assert!(counter(port, "fleetagg_cold_index_loads_total").await >= COLD_MACHINES as f64);
    assert_eq!(counter(port, "fleetagg_cold_index_errors_total").await, 0.0);

    let mut service = service;
    service.kill_9();
    let service = service.restart().await;
    eventually(Duration::from_secs(30), "the read-back index moved out again", || async move {
        counter(port, "fleetagg_cold_index_bytes").await > 0.0
    })
    .await;
    resend_all(port, || gateway.send(), COLD_SAMPLES, "every sample a duplicate after a SIGKILL").await;
    assert_eq!(loading_rate(&client).await, written, "a resend after a SIGKILL changed rows");
    // A clean stop leaves no cold index file behind.
    let index = fleetagg_integration_tests::journal_dir(&service).join("written-index");
    service.stop_ok().await;
    let left: Vec<_> = std::fs::read_dir(&index).expect("the cold index directory").collect();
    assert!(left.is_empty(), "files left in {}: {left:?}", index.display());
}

/// The cold index's files damaged under the running service (a failing disk): the runs
/// fail their checksum when a resend reaches them, are dropped, counted and logged, and
/// the resent samples of their minutes are counted again (the cost docs/operations.md
/// states), and so are those of the older runs each damaged run named. A minute still in
/// memory (the newest) still catches its duplicates. Nothing resent is lost:
/// each sample is either a duplicate or counted again, a whole minute at a time, and
/// the service goes on.
#[actix_rt::test]
async fn a_damaged_cold_index_costs_only_the_duplicate_check_of_its_minutes() {
    let db = TestDatabase::create().await;
    let prefix = unique("resend_cold_bad");
    let (config, metrics) = config_with_metrics(&db.url, &prefix);
    let port = metrics.port();
    let service = ServiceProcess::start(&config).await;
    let gateway = Gateway::cold(&prefix).await;
    let client = connect(&db.url).await;
    let sent = gateway.send_until_cold(&client, port).await;
    let written = loading_rate(&client).await;

    let index = fleetagg_integration_tests::journal_dir(&service).join("written-index");
    let mut damaged = 0;
    for entry in std::fs::read_dir(&index).expect("the cold index directory") {
        let path = entry.expect("an entry").path();
        let bytes = std::fs::read(&path).expect("a cold index file");
        // Same length, every byte flipped: what the service reads back fails its checksum.
        std::fs::write(&path, bytes.iter().map(|byte| !byte).collect::<Vec<u8>>()).expect("damage it");
        damaged += 1;
    }
    assert!(damaged > 0, "no cold index file in {}", index.display());

    let before = duplicates(port).await;
    gateway.send().await;
    // Every resent sample accounted for: dropped as a duplicate, or in a row again.
    let total = sent.len() as f64;
    eventually(Duration::from_secs(60), "every resent sample a duplicate or counted", || {
        let client = &client;
        async move {
            let stored: i64 = loading_rate(client).await.iter().map(|row| i64::from(row.samples)).sum();
            (stored as f64 - total) + (duplicates(port).await - before) == total
        }
    })
    .await;
    let again = loading_rate(&client).await;
    assert_eq!(again.len(), written.len());
    let mut doubled = std::collections::BTreeSet::new();
    for (after, first) in again.iter().zip(&written) {
        assert_eq!((&after.machine, after.ts), (&first.machine, first.ts));
        let twice = after.samples == 2 * first.samples && after.load_rate_sum == 2.0 * first.load_rate_sum;
        assert!(
            after.samples == first.samples || twice,
            "{after:?} against {first:?}: neither once nor twice"
        );
        assert_eq!((after.load_rate_min, after.mileage_max), (first.load_rate_min, first.mileage_max));
        if twice {
            doubled.insert((after.machine.clone(), after.ts));
        }
    }
    // The newest minute of each machine is in memory; its oldest was on disk.
    for machine in ["m0", "m1"] {
        let minutes: Vec<_> = written.iter().filter(|row| row.machine == machine).map(|row| row.ts).collect();
        let (oldest, newest) = (minutes.iter().min().expect("rows"), minutes.iter().max().expect("rows"));
        assert!(
            doubled.contains(&(machine.to_owned(), *oldest)),
            "{machine}'s oldest minute not counted again"
        );
        assert!(!doubled.contains(&(machine.to_owned(), *newest)), "{machine}'s newest minute counted again");
    }
    assert!(counter(port, "fleetagg_cold_index_errors_total").await >= COLD_MACHINES as f64);
    service.wait_for_log("cold part of the duplicate index lost", Duration::from_secs(10)).await;
    service.stop_ok().await;
}

#[actix_rt::test]
async fn a_start_without_the_database_reads_the_written_minutes_once_it_is_back() {
    let cluster = PgCluster::start_trust().await;
    cluster.admin_execute("CREATE DATABASE fleet").await;
    let url = cluster.url_for("postgres", "fleet");
    let prefix = unique("resend_later");
    let (config, metrics) = config_with_metrics(&url, &prefix);
    let port = metrics.port();
    let service = ServiceProcess::start(&config).await;
    let gateway = Gateway::connect(&prefix).await;
    let send = || gateway.send();
    let sent = send().await;
    let client = connect(&url).await;
    wait_for_exact_rows(&client, &sent, "the first delivery written").await;
    let written = loading_rate(&client).await;
    service.stop_ok().await;

    cluster.stop();
    let service = ServiceProcess::start_with_env(&config, &[], false).await;
    service.wait_for_log("starting without them", Duration::from_secs(30)).await;
    cluster.start();
    service.wait_for_log("written minutes read back", Duration::from_secs(60)).await;
    resend_all(port, send, SAMPLES, "600 duplicates once the database is back").await;
    let client = connect(&url).await;
    assert_eq!(
        loading_rate(&client).await,
        written,
        "a resend after a start without the database changed rows"
    );
    service.stop_ok().await;
}

#[actix_rt::test]
async fn a_malformed_seen_value_costs_only_the_duplicate_check_of_its_rows() {
    let db = TestDatabase::create().await;
    let prefix = unique("resend_bad");
    let (config, metrics) = config_with_metrics(&db.url, &prefix);
    let port = metrics.port();
    let service = ServiceProcess::start(&config).await;
    let gateway = Gateway::connect(&prefix).await;
    let client = connect(&db.url).await;
    let send = || gateway.send();
    let sent = send().await;
    wait_for_exact_rows(&client, &sent, "the first delivery written").await;
    service.stop_ok().await;

    // Someone with write access damages m0's rows: an unknown unit code.
    let damaged = client
        .execute("UPDATE loading_rate SET seen = '\\x0701ff'::bytea WHERE machine = 'm0'", &[])
        .await
        .expect("damage m0's seen");
    assert!(damaged > 0);
    let service = ServiceProcess::start(&config).await;
    service.wait_for_log("malformed `seen` value", Duration::from_secs(10)).await;
    send().await;
    // m0's 30 samples are counted again (their minutes' index was lost); the rest are
    // duplicates, and the service goes on.
    let m0_samples = sent.iter().filter(|sample| sample.0 == "m0").count();
    let expected = (SAMPLES - m0_samples) as f64;
    eventually(Duration::from_secs(60), "the other machines' resends dropped", || async move {
        duplicates(port).await == expected
    })
    .await;
    let mut twice = sent.clone();
    twice.extend(sent.iter().filter(|sample| sample.0 == "m0").cloned());
    wait_for_exact_rows(&client, &twice, "m0 counted again, every other row unchanged").await;
    service.stop_ok().await;
}
