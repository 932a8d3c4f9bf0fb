//! Helpers for tests that run fleetagg against a real Mosquitto and a real PostgreSQL.
//!
//! Each test gets its own database (created on the local server, dropped afterwards) and
//! its own topic prefix and MQTT client id, so tests run in parallel without seeing each
//! other. The services must be running: `scripts/test` starts them. A missing service is
//! a failure with a clear message, never a skipped test.

pub mod black_hole;
pub mod certs;
pub mod cluster;
pub mod mosquitto;
pub mod moto;
pub mod pgbouncer;
pub mod ports;
pub mod rmqtt;
pub mod scripted_broker;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Admin connection used to create and drop test databases.
pub fn admin_url() -> String {
    std::env::var("FLEETAGG_TEST_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The broker the shared tests use.
pub fn broker_url() -> String {
    std::env::var("FLEETAGG_TEST_MQTT_URL").unwrap_or_else(|_| "tcp://127.0.0.1:1883".into())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("{prefix}_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

/// The `fleetagg` binary built next to this test binary (`scripts/test` builds it first).
pub fn fleetagg_bin() -> PathBuf {
    if let Ok(path) = std::env::var("FLEETAGG_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile> directory");
    let bin = profile_dir.join("fleetagg");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin fleetagg` (scripts/test does)",
        bin.display()
    );
    bin
}

/// Runs SQL as the admin role through a short-lived connection.
pub async fn admin_execute(sql: &str) {
    let client = connect(&admin_url()).await;
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|err| panic!("admin SQL {sql:?} failed: {}", describe(&err)));
}

/// The server's message for a database error, the client's otherwise.
pub fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("{err:?}"),
    }
}

/// Connects or fails the test with a message that says what to start.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|err| panic!("PostgreSQL at {url} is not reachable ({err}); scripts/test starts it"));
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test, dropped when the test ends.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> TestDatabase {
        let name = unique("fleetagg_it");
        admin_execute(&format!("CREATE DATABASE {name}")).await;
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(slash) => format!("{}/{name}", &base[..slash]),
            None => panic!("FLEETAGG_TEST_ADMIN_URL must be a URL ending in /database"),
        };
        TestDatabase { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code: psql is simplest, and a failure only leaves a
        // uniquely named database behind.
        let _ = Command::new("psql")
            .arg(admin_url())
            .args(["-q", "-c", &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Every test's service runs with `service.thread_placement = "os"` unless the test's own
/// environment says otherwise: the suite runs many services at once on one machine, where
/// the default split would put every instance's MQTT intake on the same CPU (the case
/// docs/operations.md tells operators to give each instance CPUs of its own, or "os").
pub const THREAD_PLACEMENT_VAR: &str = "FLEETAGG__SERVICE__THREAD_PLACEMENT";

/// The CPUs each thread of process `pid` may run on, by thread name, from `/proc`.
pub fn thread_cpus(pid: u32) -> Vec<(String, Vec<usize>)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads");
    let mut threads: Vec<(String, Vec<usize>)> = tasks
        .filter_map(|task| {
            let path = task.ok()?.path();
            let name = std::fs::read_to_string(path.join("comm")).ok()?.trim().to_owned();
            Some((name, cpus_allowed(&path.join("status"))?))
        })
        .collect();
    threads.sort();
    threads
}

/// The CPUs a `/proc/…/status` file says its process or thread may run on.
pub fn cpus_allowed(status: &Path) -> Option<Vec<usize>> {
    let status = std::fs::read_to_string(status).ok()?;
    let list = status.lines().find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?;
    Some(cpu_list(list.trim()))
}

/// A CPU list as the kernel prints it ("0-3,8,10-11").
fn cpu_list(text: &str) -> Vec<usize> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| {
            let (first, last) = part.split_once('-').unwrap_or((part, part));
            let number = |text: &str| text.trim().parse::<usize>().expect("a CPU number");
            number(first)..=number(last)
        })
        .collect()
}

/// A `fleetagg run` process with its own config file and log.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
}

impl ServiceProcess {
    /// Starts the service and waits until it is subscribed and connected to PostgreSQL.
    pub async fn start(config_toml: &str) -> ServiceProcess {
        Self::start_with_env(config_toml, &[], true).await
    }

    /// Starts the service with extra environment variables; waits until it is subscribed
    /// and, when `wait_for_database`, until it has connected to PostgreSQL.
    pub async fn start_with_env(
        config_toml: &str,
        env: &[(String, String)],
        wait_for_database: bool,
    ) -> ServiceProcess {
        let config_path = write_config(config_toml);
        let log_path = config_path.with_file_name("service.log");
        Self::spawn(&config_path, &log_path, env.to_vec(), wait_for_database).await
    }

    /// Starts again with the same config file and environment, logging to a new file.
    pub async fn restart(&self) -> ServiceProcess {
        let log = self.restart_log_path();
        Self::spawn(&self.config_path, &log, self.env.clone(), true).await
    }

    /// Starts again with the same config file and another environment.
    pub async fn restart_with_env(&self, env: &[(String, String)]) -> ServiceProcess {
        Self::spawn(&self.config_path, &self.restart_log_path(), env.to_vec(), true).await
    }

    /// Starts again with the same config file and environment, without waiting for
    /// anything (a kill may then land during start-up or the journal's replay).
    pub fn restart_unchecked(&self) -> ServiceProcess {
        let log = self.restart_log_path();
        Self::spawn_child(&self.config_path, &log, self.env.clone())
    }

    /// A new log file beside the config for a restart (names do not grow with restarts).
    fn restart_log_path(&self) -> PathBuf {
        self.config_path.with_file_name(format!("{}.log", unique("restart")))
    }

    /// SIGKILL, as an OOM kill or a lost node would end it; waits until it is gone.
    pub fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Spawns `fleetagg run` without waiting for anything (for start-up failures).
    pub fn spawn_unchecked(config_toml: &str, env: &[(String, String)]) -> ServiceProcess {
        let config_path = write_config(config_toml);
        let log_path = config_path.with_file_name("service.log");
        Self::spawn_child(&config_path, &log_path, env.to_vec())
    }

    /// Spawns `fleetagg run` with `RUST_LOG` set to `rust_log` (it wins over
    /// `--log-level`), writing standard output and standard error to the log, without
    /// waiting for anything. For tests that read everything the service prints.
    pub fn spawn_with_rust_log(
        config_toml: &str,
        env: &[(String, String)],
        rust_log: &str,
    ) -> ServiceProcess {
        let config_path = write_config(config_toml);
        let log_path = config_path.with_file_name("service.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(fleetagg_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .current_dir(working_dir(&config_path))
            .env("RUST_LOG", rust_log)
            .env(THREAD_PLACEMENT_VAR, "os")
            .envs(env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log)
            .spawn()
            .expect("spawn fleetagg");
        ServiceProcess { child: Some(child), log_path, config_path, env: env.to_vec() }
    }

    fn spawn_child(config_path: &Path, log_path: &Path, env: Vec<(String, String)>) -> ServiceProcess {
        let log = std::fs::File::create(log_path).expect("log file");
        let child = Command::new(fleetagg_bin())
            .args(["--log-level", "info,fleetagg_actors=debug", "run", "--config"])
            .arg(config_path)
            .current_dir(working_dir(config_path))
            .env_remove("RUST_LOG")
            .env(THREAD_PLACEMENT_VAR, "os")
            .envs(env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn fleetagg");
        ServiceProcess {
            child: Some(child),
            log_path: log_path.to_owned(),
            config_path: config_path.to_owned(),
            env,
        }
    }

    async fn spawn(
        config_path: &Path,
        log_path: &Path,
        env: Vec<(String, String)>,
        wait_for_database: bool,
    ) -> ServiceProcess {
        let service = Self::spawn_child(config_path, log_path, env);
        service.wait_for_log("fleetagg running", Duration::from_secs(30)).await;
        if wait_for_database {
            service.wait_for_log("connected to PostgreSQL", Duration::from_secs(30)).await;
        }
        service
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(mut self, timeout: Duration) -> ExitStatus {
        self.wait_exited(timeout).await
    }

    /// [`ServiceProcess::wait_exit`], keeping the handle (to restart it afterwards).
    pub async fn wait_exited(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("fleetagg did not exit within {timeout:?}; log:\n{}", self.log());
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("service never logged {needle:?}; log:\n{}", self.log());
    }

    /// Sends SIGTERM and waits for the exit.
    pub async fn terminate(self, timeout: Duration) -> ExitStatus {
        self.send_sigterm();
        self.wait_exit(timeout).await
    }

    /// Stops the service with SIGTERM, asserts a clean exit (0 within 40 s) and returns
    /// its log.
    pub async fn stop_ok(self) -> String {
        let log_path = self.log_path.clone();
        let status = self.terminate(Duration::from_secs(40)).await;
        let log = std::fs::read_to_string(log_path).expect("log");
        assert!(status.success(), "fleetagg exited with {status}; log:\n{log}");
        log
    }

    /// Sends SIGTERM without waiting (for what happens between the signal and the exit).
    /// The process id (to look at its open file descriptors, say).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn send_sigterm(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        assert!(sent.success(), "could not signal fleetagg");
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A service runs in its config file's directory, so its journal (`fleetagg-journal`
/// under the working directory by default) is its own, and a restart with the same config
/// finds it again.
fn working_dir(config_path: &Path) -> &Path {
    config_path.parent().unwrap_or(Path::new("."))
}

/// Where a service's journal is, with the default `journal.dir`.
pub fn journal_dir(service: &ServiceProcess) -> PathBuf {
    working_dir(&service.config_path).join("fleetagg-journal")
}

fn write_config(config_toml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("fleetagg_it_run"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config_path = dir.join("fleetagg.toml");
    std::fs::write(&config_path, config_toml).expect("write config");
    config_path
}

/// An MQTT publisher that waits for every PUBACK.
pub struct Publisher {
    client: paho_mqtt::AsyncClient,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher over TLS that logs in with `certs`' client certificate.
    pub async fn connect_tls(url: &str, certs: &certs::TestCertificates) -> Publisher {
        let ssl = paho_mqtt::SslOptionsBuilder::new()
            .trust_store(certs.path("ca.crt"))
            .and_then(|ssl| ssl.key_store(certs.path("client.crt")))
            .and_then(|ssl| ssl.private_key(certs.path("client.key")))
            .expect("the test certificates exist")
            .finalize();
        let options = paho_mqtt::ConnectOptionsBuilder::new().clean_session(true).ssl_options(ssl).finalize();
        Self::connect_with(url, options).await
    }

    /// A publisher that logs in with a user name and password.
    pub async fn connect_with_login(url: &str, user: &str, password: &str) -> Publisher {
        let options = paho_mqtt::ConnectOptionsBuilder::new()
            .clean_session(true)
            .user_name(user)
            .password(password)
            .finalize();
        Self::connect_with(url, options).await
    }

    pub async fn connect(url: &str) -> Publisher {
        Self::connect_with(url, paho_mqtt::ConnectOptionsBuilder::new().clean_session(true).finalize()).await
    }

    async fn connect_with(url: &str, options: paho_mqtt::ConnectOptions) -> Publisher {
        let client = paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(url)
            .client_id(unique("it_publisher"))
            .persistence(paho_mqtt::PersistenceType::None)
            .create_client()
            .expect("mqtt client");
        client.connect(options).await.unwrap_or_else(|err| {
            panic!("MQTT broker at {url} is not reachable ({err}); scripts/test starts it")
        });
        Publisher { client }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        let message = paho_mqtt::Message::new(topic, payload.into(), 1);
        self.client.publish(message).await.expect("publish (QoS 1)");
    }

    /// Publishes until the broker acknowledges, reconnecting while it is away (a broker
    /// restart). A message is published again only when the connection was lost before
    /// its PUBACK, so it may then reach the broker twice (the service drops duplicates
    /// in minutes it still holds); a PUBACK that is only slow (a loaded machine) is
    /// waited for, not answered with a second copy.
    pub async fn publish_until_acked(&self, topic: &str, payload: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "the broker did not take a message within 60 s");
            if !self.client.is_connected() {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.client.reconnect()).await;
                if !self.client.is_connected() {
                    actix_rt::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let mut delivery = self.client.publish(paho_mqtt::Message::new(topic, payload, 1));
            loop {
                assert!(Instant::now() < deadline, "the broker did not take a message within 60 s");
                match tokio::time::timeout(Duration::from_secs(2), &mut delivery).await {
                    Ok(Ok(())) => return,
                    Err(_) if self.client.is_connected() => {}
                    _ => break,
                }
            }
            actix_rt::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A sample as sent: `(machine, ts, load_rate, mileage)`, for [`expected_rows`].
pub type SentSample = (String, chrono::DateTime<chrono::Utc>, f64, f64);

/// Publishes `count` samples of machines `m0`…`m{machines-1}` in turn on `prefix`'s topics,
/// `step` apart from `start`, with varying load rates; returns what was sent.
pub async fn publish_samples(
    publisher: &Publisher,
    prefix: &str,
    machines: usize,
    start: chrono::DateTime<chrono::Utc>,
    step: chrono::TimeDelta,
    count: usize,
) -> Vec<SentSample> {
    let mut sent = Vec::with_capacity(count);
    for n in 0..count {
        let machine = format!("m{}", n % machines.max(1));
        let ts = start + step * i32::try_from(n).expect("a test's sample count fits");
        let (load_rate, mileage) = ((n % 97) as f64, n as f64);
        let payload = format!(
            r#"{{"machine":"{machine}","ts":"{}","load_rate":{load_rate},"mileage":{mileage}}}"#,
            ts.to_rfc3339()
        );
        publisher.publish(&format!("{prefix}/{machine}/telemetry"), payload).await;
        sent.push((machine, ts, load_rate, mileage));
    }
    sent
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A plain HTTP GET; returns the status code and the body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, "connection refused".to_owned());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

/// Sends `request` as it is and returns everything the server sends back until it closes
/// the connection (at most 10 s): for methods and headers `http_get` does not cover.
pub async fn http_raw(port: u16, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server did not close the connection: {}", String::from_utf8_lossy(&response));
    String::from_utf8_lossy(&response).into_owned()
}

/// The value of an unlabelled (`name`) or labelled (`name{label="value"}`) sample in a
/// Prometheus text exposition.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok())
}

/// A `loading_rate` row, compared exactly in tests.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadingRateRow {
    pub machine: String,
    pub ts: chrono::DateTime<chrono::Utc>,
    pub samples: i32,
    pub load_rate_avg: f64,
    pub load_rate_min: f64,
    pub load_rate_max: f64,
    pub load_rate_sum: f64,
    pub mileage_min: f64,
    pub mileage_max: f64,
}

pub async fn loading_rate(client: &tokio_postgres::Client) -> Vec<LoadingRateRow> {
    let rows = client
        .query(
            "SELECT machine, ts, samples, load_rate_avg, load_rate_min, load_rate_max, load_rate_sum,
                    mileage_min, mileage_max
             FROM loading_rate ORDER BY machine, ts",
            &[],
        )
        .await
        .map(Some)
        .or_else(|err| match err.code() {
            // Not created yet: the service creates it on its first connection.
            Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE => Ok(None),
            _ => Err(err),
        })
        .expect("query loading_rate")
        .unwrap_or_default();
    rows.iter()
        .map(|row| LoadingRateRow {
            machine: row.get(0),
            ts: row.get(1),
            samples: row.get(2),
            load_rate_avg: row.get(3),
            load_rate_min: row.get(4),
            load_rate_max: row.get(5),
            load_rate_sum: row.get(6),
            mileage_min: row.get(7),
            mileage_max: row.get(8),
        })
        .collect()
}

/// Reasons in `rejected_message`, sorted.
/// Waits until `loading_rate`, read through `client`, holds exactly the rows of `sent`
/// (every sample once), for up to a minute.
pub async fn wait_for_exact_rows(client: &tokio_postgres::Client, sent: &[SentSample], what: &str) {
    let expected = expected_rows(sent);
    eventually(Duration::from_secs(60), what, || {
        let expected = &expected;
        async move { loading_rate(client).await == *expected }
    })
    .await;
}

pub async fn rejection_reasons(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT reason FROM rejected_message ORDER BY reason", &[])
        .await
        .map(|rows| rows.iter().map(|row| row.get(0)).collect())
        .unwrap_or_default()
}

/// Expected rows computed from the accepted samples, one pass over all of them:
/// `(machine, ts, load_rate, mileage)`.
pub fn expected_rows(samples: &[(String, chrono::DateTime<chrono::Utc>, f64, f64)]) -> Vec<LoadingRateRow> {
    use chrono::{DurationRound, TimeDelta};
    let mut rows: std::collections::BTreeMap<(String, chrono::DateTime<chrono::Utc>), LoadingRateRow> =
        std::collections::BTreeMap::new();
    for (machine, ts, load_rate, mileage) in samples {
        let minute = ts.duration_trunc(TimeDelta::minutes(1)).expect("truncate");
        let row = rows.entry((machine.clone(), minute)).or_insert(LoadingRateRow {
            machine: machine.clone(),
            ts: minute,
            samples: 0,
            load_rate_avg: 0.0,
            load_rate_min: f64::INFINITY,
            load_rate_max: f64::NEG_INFINITY,
            load_rate_sum: 0.0,
            mileage_min: f64::INFINITY,
            mileage_max: f64::NEG_INFINITY,
        });
        row.samples += 1;
        row.load_rate_sum += load_rate;
        row.load_rate_min = row.load_rate_min.min(*load_rate);
        row.load_rate_max = row.load_rate_max.max(*load_rate);
        row.mileage_min = row.mileage_min.min(*mileage);
        row.mileage_max = row.mileage_max.max(*mileage);
        row.load_rate_avg = row.load_rate_sum / f64::from(row.samples);
    }
    rows.into_values().collect()
}

/// A service configuration for one test: its own topics, client id and database; minutes
/// close `grace` after their end.
pub fn service_config(database_url: &str, topic_prefix: &str, client_id: &str, grace: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{broker}"
client_id = "{client_id}"
topics = ["{topic_prefix}/+/telemetry"]
max_payload_bytes = 1024

[aggregation]
tick = "100ms"
grace = "{grace}"
default_timezone = "Europe/Paris"

[database]
url = "{database_url}"
flush_interval = "200ms"

[metrics]
# An ephemeral port: tests run many services at once.
listen = "127.0.0.1:0"
"#,
        broker = broker_url()
    )
}
