//! A stop ends within `service.shutdown_timeout` + 1 s in every state the writer can be
//! in, with exit code 3 and the count of what was not written when rows are left:
//! backing off against a database that refuses connections with a full buffer (the
//! aggregators held back), busy with an attempt that hangs on a black-holed server, a
//! second signal, and a signal during start-up (one deadline for start-up and stop).
//! `/healthz` stays 200 through back-pressure; `/readyz` says why it is not ready.
//! (Connected and idle: every other test's clean stop. Backing off with rows but room:
//! `faults::sigterm_during_an_outage_reports_unwritten_rows`.)

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::black_hole::BlackHole;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, eventually, http_get, metric, service_config, unique, Publisher, ServiceProcess,
};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
/// What a stop may take beyond the deadline: the issue's contract.
const STOP_SLACK: Duration = Duration::from_secs(1);

/// A database address where nothing listens: every connection attempt is refused at once.
fn refusing_database(lease: &PortLease) -> String {
    format!("postgres://postgres@127.0.0.1:{}/fleet", lease.port())
}

fn config(database_url: &str, prefix: &str, metrics: &PortLease, extra_database: &str) -> String {
    service_config(database_url, prefix, &unique("fleetagg"), "1s")
        .replace("flush_interval = \"200ms\"", &format!("flush_interval = \"200ms\"\n{extra_database}"))
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", metrics.port()))
        + &format!("\n[service]\nshutdown_timeout = \"{}s\"\n", SHUTDOWN_TIMEOUT.as_secs())
}

/// Publishes one sample for each of `machines` in a minute that is already closed.
async fn publish_closed_minutes(url: &str, prefix: &str, machines: usize) {
    let publisher = Publisher::connect(url).await;
    let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(2);
    for n in 0..machines {
        let payload =
            format!(r#"{{"machine":"m{n}","ts":"{}","load_rate":5,"mileage":1}}"#, minute.to_rfc3339());
        publisher.publish(&format!("{prefix}/m{n}/telemetry"), payload).await;
    }
}

/// Waits until `/metrics` says the writer holds `minutes` minutes.
async fn wait_until_writer_holds(metrics: &PortLease, minutes: u32) {
    eventually(Duration::from_secs(30), &format!("{minutes} minutes held by the writer"), || async {
        let (_, text) = http_get(metrics.port(), "/metrics").await;
        metric(&text, "fleetagg_rows_buffered") == Some(f64::from(minutes))
    })
    .await;
}

/// SIGTERM, then the exit status, the time from the signal to the exit, and the log.
async fn stop(service: ServiceProcess) -> (ExitStatus, Duration, String) {
    let log_path = service.log_path.clone();
    let signalled = Instant::now();
    let status = service.terminate(Duration::from_secs(60)).await;
    (status, signalled.elapsed(), std::fs::read_to_string(log_path).unwrap_or_default())
}

fn assert_in_time(took: Duration, log: &str) {
    assert!(took <= SHUTDOWN_TIMEOUT + STOP_SLACK, "the stop took {took:?}; log:\n{log}");
}

/// The value of `key=` in the line of the log that contains `line`.
fn logged_number(log: &str, line: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|text| text.contains(line))?;
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[actix_rt::test]
async fn a_full_buffer_during_an_outage_stays_alive_and_stops_in_time() {
    let (database, metrics) = (PortLease::acquire(), PortLease::acquire());
    let prefix = unique("stop_full");
    let text =
        config(&refusing_database(&database), &prefix, &metrics, "batch_max_rows = 1\nmax_buffered_rows = 1");
    let service = ServiceProcess::start_with_env(&text, &[], false).await;
    publish_closed_minutes(&broker_url(), &prefix, 5).await;
    service.wait_for_log("writer buffer full", Duration::from_secs(30)).await;

    // Liveness is not readiness: the process is alive (a restart would lose the buffer),
    // it is not ready, and says why.
    let (health, body) = http_get(metrics.port(), "/healthz").await;
    assert_eq!((health, body.as_str()), (200, "ok\n"), "/healthz during back-pressure");
    let (ready, reasons) = http_get(metrics.port(), "/readyz").await;
    assert_eq!(ready, 503);
    assert!(reasons.contains("writer buffer full"), "{reasons}");

    let (status, took, log) = stop(service).await;
    assert_eq!(status.code(), Some(3), "rows were not written; log:\n{log}");
    assert_in_time(took, &log);
    let unwritten = logged_number(&log, "stopped with rows not written", "unwritten_minutes")
        .expect("the count of unwritten minutes is logged");
    assert!(unwritten >= 1, "{log}");
}

#[actix_rt::test]
async fn an_attempt_hanging_on_a_black_holed_server_is_cut_at_the_deadline() {
    let (hole, metrics) = (BlackHole::start(), PortLease::acquire());
    let prefix = unique("stop_busy");
    let text = config(&hole.database_url(), &prefix, &metrics, "");
    let service = ServiceProcess::start_with_env(&text, &[], false).await;
    publish_closed_minutes(&broker_url(), &prefix, 3).await;
    // The writer's first attempt (connect) hangs; the minutes close and wait behind it.
    wait_until_writer_holds(&metrics, 3).await;
    let (status, took, log) = stop(service).await;
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    assert_in_time(took, &log);
    assert!(log.contains("shutdown deadline reached") && log.contains("state=\"busy\""), "{log}");
    assert_eq!(logged_number(&log, "stopped with rows not written", "unwritten_minutes"), Some(3), "{log}");
}

#[actix_rt::test]
async fn a_second_signal_exits_at_once() {
    let (hole, metrics) = (BlackHole::start(), PortLease::acquire());
    let prefix = unique("stop_twice");
    let text = config(&hole.database_url(), &prefix, &metrics, "").replace(
        &format!("shutdown_timeout = \"{}s\"", SHUTDOWN_TIMEOUT.as_secs()),
        "shutdown_timeout = \"60s\"",
    );
    let service = ServiceProcess::start_with_env(&text, &[], false).await;
    publish_closed_minutes(&broker_url(), &prefix, 2).await;
    wait_until_writer_holds(&metrics, 2).await;
    service.send_sigterm();
    service.wait_for_log("stopping: flushing open minutes", Duration::from_secs(10)).await;
    let log_path = service.log_path.clone();
    let signalled = Instant::now();
    service.send_sigterm();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(signalled.elapsed() < STOP_SLACK * 2, "a second signal should end the stop at once; log:\n{log}");
    assert_eq!(status.code(), Some(3), "log:\n{log}");
    assert!(log.contains("second signal"), "{log}");
    assert_eq!(logged_number(&log, "stopped with rows not written", "unwritten_minutes"), Some(2), "{log}");
}

#[actix_rt::test]
async fn a_signal_during_start_up_gives_start_up_and_stop_one_deadline() {
    let broker = MosquittoBroker::start().await;
    let (hole, metrics) = (BlackHole::start(), PortLease::acquire());
    let prefix = unique("stop_starting");
    // Start-up ends about 3 s into it, leaving room for a loaded machine; a stop that got
    // a deadline of its own after start-up would end after 3 + 8 s, past 8 + 1 s.
    let timeout = Duration::from_secs(8);
    let text = config(&hole.database_url(), &prefix, &metrics, "")
        .replace(&broker_url(), &broker.url())
        .replace("shutdown_timeout = \"3s\"", "shutdown_timeout = \"8s\"");
    // A first run creates the persistent session; three closed minutes queue for it.
    let (status, _, log) = stop(ServiceProcess::start_with_env(&text, &[], false).await).await;
    assert!(status.success(), "nothing to write: {status}; log:\n{log}");
    publish_closed_minutes(&broker.url(), &prefix, 3).await;
    broker.stop();

    let service = ServiceProcess::spawn_unchecked(&text, &[]);
    service.wait_for_log("MQTT broker unreachable", Duration::from_secs(30)).await;
    let signalled = Instant::now();
    service.send_sigterm();
    service.wait_for_log("signal during start-up", Duration::from_secs(10)).await;
    // paho retries 1 s and 3 s after its first attempt: back before the second retry,
    // start-up ends about 3 s into the 8 s deadline. The backlog then waits for a
    // black-holed database: the stop must end at the deadline counted from the signal,
    // not 8 s after start-up.
    actix_rt::time::sleep_until((signalled + Duration::from_millis(1500)).into()).await;
    broker.resume().await;
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(60)).await;
    let took = signalled.elapsed();
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(log.contains("fleetagg running"), "start-up should have finished:\n{log}");
    assert!(took <= timeout + STOP_SLACK, "the stop took {took:?}; log:\n{log}");
    assert_eq!(status.code(), Some(3), "the backlog could not be written; log:\n{log}");
    assert_eq!(logged_number(&log, "stopped with rows not written", "unwritten_minutes"), Some(3), "{log}");
}
