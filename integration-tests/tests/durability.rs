//! The journal against a real binary, Mosquitto and PostgreSQL: SIGKILL at random
//! moments (during start-up, the replay, a write) loses nothing and counts nothing twice;
//! one journal directory admits one instance; a journal that cannot be written stops
//! start-up with its name.

use chrono::{TimeDelta, Utc};
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, connect, expected_rows, http_get, journal_dir, loading_rate, metric, service_config, unique,
    Publisher, SentSample, ServiceProcess, TestDatabase,
};
use rand::Rng;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const MACHINES: usize = 20;

/// What a stream published: the valid samples, and how many invalid messages (each is
/// rejected and stored in `rejected_message`).
#[derive(Debug, Default)]
struct Published {
    samples: Vec<SentSample>,
    invalid: i64,
}

/// Publishes `count` samples at about `rate` per second, and after every 25th an invalid
/// message. Even machines send live samples (their minutes stay open in memory), odd
/// ones samples 90 s old (their minute is reopened and written every few hundred
/// milliseconds, so kills fall between writes and commits too).
async fn publish_stream(
    publisher: Publisher,
    prefix: String,
    count: usize,
    rate: f64,
    sent: Rc<RefCell<Published>>,
) {
    let started = tokio::time::Instant::now();
    for n in 0..count {
        let machine_number = n % MACHINES;
        let machine = format!("m{machine_number}");
        let now = Utc::now();
        let ts = if machine_number.is_multiple_of(2) { now } else { now - TimeDelta::seconds(90) };
        let (load_rate, mileage) = ((n % 97) as f64, n as f64);
        let payload = format!(
            r#"{{"machine":"{machine}","ts":"{}","load_rate":{load_rate},"mileage":{mileage}}}"#,
            ts.to_rfc3339()
        );
        let topic = format!("{prefix}/{machine}/telemetry");
        publisher.publish_until_acked(&topic, &payload).await;
        sent.borrow_mut().samples.push((machine, ts, load_rate, mileage));
        if n % 25 == 24 {
            publisher.publish_until_acked(&topic, &format!("not json {n}")).await;
            sent.borrow_mut().invalid += 1;
        }
        tokio::time::sleep_until(started + Duration::from_secs_f64((n + 1) as f64 / rate)).await;
    }
}

/// How often `needle` occurs in the journal's segment files (a topic prefix: once per
/// message record).
fn count_in_segments(dir: &std::path::Path, needle: &[u8]) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "seg"))
        .filter_map(|entry| std::fs::read(entry.path()).ok())
        .map(|data| data.windows(needle.len()).filter(|window| *window == needle).count())
        .sum()
}

/// Sums `key=N` over the lines of `log` that contain `line`.
fn sum_logged(log: &str, line: &str, key: &str) -> u64 {
    log.lines()
        .filter(|text| text.contains(line))
        .filter_map(|text| text.split_whitespace().find_map(|field| field.strip_prefix(&format!("{key}="))))
        .filter_map(|value| value.parse::<u64>().ok())
        .sum()
}

#[actix_rt::test]
async fn sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    let db = TestDatabase::create().await;
    let prefix = unique("chaos");
    let config = service_config(&db.url, &prefix, &unique("fleetagg"), "2s");
    let mut service = ServiceProcess::start(&config).await;

    let sent = Rc::new(RefCell::new(Published::default()));
    let publisher = Publisher::connect(&broker_url()).await;
    let stream = actix_rt::spawn(publish_stream(publisher, prefix, 3_000, 200.0, sent.clone()));

    let mut rng = rand::rng();
    let mut logs = Vec::new();
    for _ in 0..20 {
        // From 20 ms (still starting, or replaying) to 1.5 s (running, writing).
        let uptime = Duration::from_millis(rng.random_range(20..1_500));
        actix_rt::time::sleep(uptime).await;
        service.kill_9();
        logs.push(service.log());
        service = service.restart_unchecked();
    }
    service.kill_9();
    let service = service.restart().await;
    stream.await.expect("the stream was published");
    // Everything received is journaled; a stop writes the open minutes out.
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let log_before_stop = service.log();
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "stop: {status:?}");
    logs.push(log_before_stop);

    let client = connect(&db.url).await;
    let expected = expected_rows(&sent.borrow().samples);
    assert_eq!(sent.borrow().samples.len(), 3_000);
    let rows = loading_rate(&client).await;
    let total: i64 = rows.iter().map(|row| i64::from(row.samples)).sum();
    assert_eq!(total, 3_000, "every sample counted once ({} rows)", rows.len());
    assert_eq!(rows, expected);
    // Rejections too: each stored once, none lost, none stored again by a replay.
    assert_eq!(stored_rejections(&client).await, sent.borrow().invalid);

    // The test proves something only if kills left work for the replay, and the replay
    // met rows committed before a kill.
    let all = logs.join("\n");
    let replayed = sum_logged(&all, "journal replayed", "messages");
    let skipped = sum_logged(&all, "journal replayed", "already_committed");
    assert!(replayed > 0 && skipped > 0, "replayed {replayed}, already committed {skipped}");
    // What was killed is the mapped journal (records copied into reserved space), not
    // the fallback that writes each record.
    assert!(!all.contains(MAPPING_FALLBACK), "the journal fell back to writing");
}

/// Logged when a journal segment cannot be reserved and mapped.
const MAPPING_FALLBACK: &str = "cannot reserve and map segment space";

#[actix_rt::test]
async fn a_panic_on_the_data_path_exits_70_and_the_restart_writes_exact_rows() {
    let db = TestDatabase::create().await;
    let prefix = unique("panic");
    let config = service_config(&db.url, &prefix, &unique("fleetagg"), "2s");
    // Panics once 1,500 of the 2,000 messages were received, with minutes open, rows in
    // the writer and messages in the channel.
    let panicking = [("FLEETAGG_TEST_PANIC_AFTER_MESSAGES".to_owned(), "1500".to_owned())];
    let mut service = ServiceProcess::start_with_env(&config, &panicking, true).await;
    let sent = Rc::new(RefCell::new(Published::default()));
    let publisher = Publisher::connect(&broker_url()).await;
    publish_stream(publisher, prefix, 2_000, 2_000.0, sent.clone()).await;
    let status = service.wait_exited(Duration::from_secs(30)).await;
    let log = service.log();
    assert_eq!(status.code(), Some(70), "{log}");
    assert!(log.contains("injected panic"), "{log}");

    // What systemd's Restart=on-failure does, without the switch.
    let restarted = service.restart_with_env(&[]).await;
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    let replay_log = restarted.log();
    let status = restarted.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(sum_logged(&replay_log, "journal replayed", "messages") > 0, "{replay_log}");
    let client = connect(&db.url).await;
    assert_eq!(loading_rate(&client).await, expected_rows(&sent.borrow().samples));
    assert_eq!(stored_rejections(&client).await, sent.borrow().invalid);
}

async fn stored_rejections(client: &tokio_postgres::Client) -> i64 {
    client.query_one("SELECT count(*) FROM rejected_message", &[]).await.expect("count rejections").get(0)
}

#[actix_rt::test]
async fn a_second_instance_on_the_same_journal_directory_refuses_to_start() {
    let db = TestDatabase::create().await;
    let prefix = unique("lock");
    let dir = std::env::temp_dir().join(unique("fleetagg-shared-journal"));
    let config = format!(
        "{}\n[journal]\ndir = \"{}\"\n",
        service_config(&db.url, &prefix, &unique("fleetagg"), "2s"),
        dir.display()
    );
    let first = ServiceProcess::start(&config).await;
    let second = ServiceProcess::spawn_unchecked(&config, &[]);
    let second_log = second.log_path.clone();
    let status = second.wait_exit(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    // A lock may be released (the other instance stopping): a later start may work.
    assert_eq!(status.code(), Some(75), "{log}");
    assert!(log.contains("in use by another fleetagg") && log.contains(&dir.display().to_string()), "{log}");
    let status = first.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn a_journal_directory_that_cannot_be_created_stops_start_up_naming_it() {
    let db = TestDatabase::create().await;
    // Nothing can be created under /proc, not even by root.
    let config = format!(
        "{}\n[journal]\ndir = \"/proc/fleetagg-journal\"\n",
        service_config(&db.url, &unique("nodir"), &unique("fleetagg"), "2s")
    );
    let service = ServiceProcess::spawn_unchecked(&config, &[]);
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "a configuration to fix, not a retry: {log}");
    assert!(log.contains("/proc/fleetagg-journal"), "{log}");
}

#[actix_rt::test]
async fn a_clean_stop_leaves_only_an_empty_journal() {
    let db = TestDatabase::create().await;
    let prefix = unique("clean");
    let (config, metrics_port) =
        with_metrics_port(&service_config(&db.url, &prefix, &unique("fleetagg"), "2s"));
    let service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let start = Utc::now() - TimeDelta::seconds(30);
    let sent = fleetagg_integration_tests::publish_samples(
        &publisher,
        &prefix,
        5,
        start,
        TimeDelta::milliseconds(10),
        200,
    )
    .await;
    // Stopped once all arrived: a stop right after publishing leaves the rest queued in
    // Mosquitto for the session (not lost, but not in the rows compared here); under load
    // that happened (117 of 200 received).
    wait_until_received(metrics_port.port(), sent.len()).await;
    let dir = journal_dir(&service);
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
    let client = connect(&db.url).await;
    assert_eq!(loading_rate(&client).await, expected_rows(&sent));
    // Every row committed: no segment is left, so the next start has nothing to replay.
    let segments: Vec<_> = std::fs::read_dir(&dir)
        .expect("journal dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    assert!(segments.is_empty(), "{segments:?}");
}

/// A tmpfs of a given size, mounted for one test (the suite runs as root, as CI does);
/// unmounted when dropped.
struct SmallFilesystem {
    path: std::path::PathBuf,
}

impl SmallFilesystem {
    fn mount(size: &str) -> SmallFilesystem {
        let path = std::env::temp_dir().join(unique("fleetagg-small-fs"));
        std::fs::create_dir_all(&path).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mounting a tmpfs needs root (scripts/test runs as root)");
        SmallFilesystem { path }
    }

    fn grow(&self, size: &str) {
        let grown = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(grown.success());
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[actix_rt::test]
async fn a_full_disk_holds_intake_back_loses_nothing_and_resumes_when_space_returns() {
    let disk = SmallFilesystem::mount("256k");
    let db = TestDatabase::create().await;
    let prefix = unique("full");
    let (config, metrics_port) = with_metrics_port(&format!(
        "{}\n[journal]\ndir = \"{}\"\n",
        service_config(&db.url, &prefix, &unique("fleetagg"), "2s"),
        disk.path.join("journal").display()
    ));
    let service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    // About 160 bytes a record: the disk fills after ~1,600 messages; the rest (fewer
    // than Mosquitto's 1,000 queued messages per session) wait at the broker.
    let start = Utc::now() - TimeDelta::minutes(5);
    let sent = fleetagg_integration_tests::publish_samples(
        &publisher,
        &prefix,
        10,
        start,
        TimeDelta::milliseconds(100),
        2_000,
    )
    .await;
    service.wait_for_log("cannot append to the journal", Duration::from_secs(30)).await;
    let client = connect(&db.url).await;
    let written_while_full: i64 = loading_rate(&client).await.iter().map(|row| i64::from(row.samples)).sum();
    assert!(written_while_full < 2_000, "intake held back while the disk is full");

    disk.grow("64m");
    service.wait_for_log("journal appends work again", Duration::from_secs(30)).await;
    wait_until_received(metrics_port.port(), sent.len()).await;
    // The full disk met the mapped journal's reservation, page by page at the end.
    let log = service.log();
    assert!(!log.contains(MAPPING_FALLBACK), "{log}");
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(loading_rate(&client).await, expected_rows(&sent));
}

#[actix_rt::test]
async fn a_replay_checks_messages_as_of_their_arrival_not_the_restart() {
    let db = TestDatabase::create().await;
    let prefix = unique("asof");
    // Accepted up to 5 s late; minutes held 30 s after their end, so nothing is written
    // before the kill.
    let config = service_config(&db.url, &prefix, &unique("fleetagg"), "30s")
        .replace("[aggregation]\n", "[aggregation]\nmax_lateness = \"5s\"\n");
    let mut service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let start = Utc::now() - TimeDelta::seconds(3);
    let sent = fleetagg_integration_tests::publish_samples(
        &publisher,
        &prefix,
        4,
        start,
        TimeDelta::milliseconds(1),
        200,
    )
    .await;
    let client = connect(&db.url).await;
    let dir = journal_dir(&service);
    fleetagg_integration_tests::eventually(Duration::from_secs(10), "all 200 journaled", || {
        let journaled = count_in_segments(&dir, prefix.as_bytes());
        async move { journaled == 200 }
    })
    .await;
    service.kill_9();
    // By now every sample is older than max_lateness.
    actix_rt::time::sleep(Duration::from_secs(6)).await;
    let restarted = service.restart().await;
    let status = restarted.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert_eq!(loading_rate(&client).await, expected_rows(&sent));
    let rejected: i64 = client
        .query_one("SELECT count(*) FROM rejected_message", &[])
        .await
        .expect("count rejections")
        .get(0);
    assert_eq!(rejected, 0, "replayed samples were judged by the restart's clock");
}

/// `config` with its metrics on a port of its own, held by the lease.
fn with_metrics_port(config: &str) -> (String, PortLease) {
    let lease = PortLease::acquire();
    let config =
        config.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", lease.port()));
    (config, lease)
}

/// Waits until the service on metrics port `port` has received `messages` messages.
async fn wait_until_received(port: u16, messages: usize) {
    for _ in 0..300 {
        let (_, text) = http_get(port, "/metrics").await;
        if metric(&text, "fleetagg_messages_received_total")
            .is_some_and(|received| received >= messages as f64)
        {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the service did not receive {messages} messages within 30 s");
}
