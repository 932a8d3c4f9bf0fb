//! Faults while a known stream flows: PostgreSQL restarted or away for 20 s, the broker
//! restarted, the writer's connection killed every second, a row PostgreSQL refuses, a
//! full writer buffer, a stop during an outage, a stop during start-up, two instances
//! sharing a subscription, and the MQTT intake's CPU across a broker restart.
//! Each test ends by comparing `loading_rate` exactly with what was published.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::{
    broker_url, connect, cpus_allowed, eventually, expected_rows, loading_rate, rejection_reasons,
    service_config, thread_cpus, unique, LoadingRateRow, Publisher, ServiceProcess, TestDatabase,
    THREAD_PLACEMENT_VAR,
};
use std::path::Path;
use std::time::{Duration, Instant};

type Sample = (String, DateTime<Utc>, f64, f64);

/// A stream of samples over `minutes` past minutes (so every tick closes parts of them and
/// the writer writes while the fault happens), each with its own timestamp.
struct Stream {
    prefix: String,
    start: DateTime<Utc>,
    span: TimeDelta,
    count: usize,
    sent: Vec<Sample>,
}

impl Stream {
    fn new(count: usize, minutes: i64) -> Stream {
        let now_minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate");
        Stream {
            prefix: unique("faults"),
            start: now_minute - TimeDelta::minutes(minutes + 1),
            span: TimeDelta::minutes(minutes),
            count,
            sent: Vec::new(),
        }
    }

    /// The next sample's topic and payload, recorded as sent.
    fn next(&mut self, machine: &str) -> (String, String) {
        let n = self.sent.len() as i64;
        let ts = self.start + self.span * (n as i32) / (self.count as i32);
        let load_rate = (n % 101) as f64;
        let mileage = n as f64 / 4.0;
        self.sent.push((machine.to_owned(), ts, load_rate, mileage));
        let payload = format!(
            r#"{{"machine":"{machine}","ts":"{}","load_rate":{load_rate},"mileage":{mileage}}}"#,
            ts.to_rfc3339()
        );
        (format!("{}/{machine}/telemetry", self.prefix), payload)
    }

    /// Publishes the whole stream at `rate` messages/s over 5 machines, calling `fault`
    /// with the time elapsed after each message.
    async fn publish_with(&mut self, publisher: &Publisher, rate: f64, mut fault: impl FnMut(Duration)) {
        let started = Instant::now();
        for n in 0..self.count {
            let (topic, payload) = self.next(&format!("m{}", n % 5));
            publisher.publish_until_acked(&topic, &payload).await;
            fault(started.elapsed());
            let due = started + Duration::from_secs_f64((n + 1) as f64 / rate);
            actix_rt::time::sleep_until(due.into()).await;
        }
    }

    fn expected(&self) -> Vec<LoadingRateRow> {
        expected_rows(&self.sent)
    }
}

fn config(database_url: &str, stream: &Stream, grace: &str, extra_database: &str) -> String {
    service_config(database_url, &stream.prefix, &unique("fleetagg"), grace)
        .replace("flush_interval = \"200ms\"", &format!("flush_interval = \"200ms\"\n{extra_database}"))
}

async fn wait_for_rows(url: &str, expected: &[LoadingRateRow], what: &str) {
    let client = connect(url).await;
    eventually(Duration::from_secs(60), what, || {
        let client = &client;
        async move { loading_rate(client).await == expected }
    })
    .await;
}

async fn fleet_database(cluster: &PgCluster) -> String {
    cluster.admin_execute("CREATE DATABASE fleet").await;
    cluster.url_for("postgres", "fleet")
}

#[actix_rt::test]
async fn postgres_restarted_mid_stream() {
    let cluster = PgCluster::start_trust().await;
    let url = fleet_database(&cluster).await;
    let mut stream = Stream::new(500, 3);
    let service = ServiceProcess::start(&config(&url, &stream, "1s", "")).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let mut restarted = false;
    stream
        .publish_with(&publisher, 100.0, |elapsed| {
            if !restarted && elapsed > Duration::from_secs(2) {
                restarted = true;
                cluster.stop();
                cluster.start();
            }
        })
        .await;
    assert!(restarted);
    wait_for_rows(&url, &stream.expected(), "every sample after the restart").await;
    let log = service.stop_ok().await;
    assert!(log.matches("connected to PostgreSQL").count() >= 2, "the writer should have reconnected");
    wait_for_rows(&url, &stream.expected(), "every sample exactly once").await;
}

#[actix_rt::test]
async fn postgres_unreachable_for_20_seconds() {
    let cluster = PgCluster::start_trust().await;
    let url = fleet_database(&cluster).await;
    let mut stream = Stream::new(1500, 3);
    let service = ServiceProcess::start(&config(&url, &stream, "1s", "")).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let (mut stopped_at, mut resumed) = (None, false);
    stream
        .publish_with(&publisher, 60.0, |elapsed| {
            if stopped_at.is_none() && elapsed > Duration::from_secs(1) {
                cluster.stop();
                stopped_at = Some(elapsed);
            }
            if let Some(at) = stopped_at {
                if !resumed && elapsed > at + Duration::from_secs(20) {
                    cluster.start();
                    resumed = true;
                }
            }
        })
        .await;
    assert!(resumed, "the stream should outlast the outage");
    wait_for_rows(&url, &stream.expected(), "every sample after the outage").await;
    let log = service.stop_ok().await;
    assert!(log.contains("database writes recovered"), "recovery should be logged");
}

#[actix_rt::test]
async fn broker_restarted_mid_stream() {
    let broker = std::rc::Rc::new(MosquittoBroker::start().await);
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(400, 2);
    // Minutes stay open (5 min of grace) so that redeliveries after the restart are
    // recognised as duplicates; the stop flushes them.
    let text = config(&db.url, &stream, "5m", "").replace(&broker_url(), &broker.url());
    let service = ServiceProcess::start(&text).await;
    let publisher = Publisher::connect(&broker.url()).await;
    let restarter = actix_rt::spawn({
        let broker = broker.clone();
        async move {
            actix_rt::time::sleep(Duration::from_secs(2)).await;
            broker.stop();
            actix_rt::time::sleep(Duration::from_secs(2)).await;
            broker.resume().await;
        }
    });
    stream.publish_with(&publisher, 80.0, |_| {}).await;
    restarter.await.expect("restarter task");
    let (topic, sentinel) = (format!("{}/sentinel/telemetry", stream.prefix), "sentinel: not JSON");
    publisher.publish_until_acked(&topic, sentinel).await;
    let client = db.client().await;
    eventually(Duration::from_secs(60), "the sentinel after the broker restart", || {
        let client = &client;
        async move { !rejection_reasons(client).await.is_empty() }
    })
    .await;
    let log = service.stop_ok().await;
    assert!(log.contains("connection to the MQTT broker lost"), "the loss should be logged");
    assert_eq!(loading_rate(&client).await, stream.expected());
}

/// `service.thread_placement = "split"` (the default): paho's receive thread on the
/// highest CPU the process may use, the actors on the others with one aggregator shard
/// each, and so still after a reconnect (paho keeps its threads across reconnects; any it
/// started anew would come from the connecting thread). On a one-CPU machine, or under a
/// CPU quota, nothing is split.
#[actix_rt::test]
async fn the_mqtt_intake_keeps_a_cpu_of_its_own_across_a_broker_restart() {
    let broker = MosquittoBroker::start().await;
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(60, 2);
    let text = config(&db.url, &stream, "1s", "").replace(&broker_url(), &broker.url());
    let split = [(THREAD_PLACEMENT_VAR.to_owned(), "split".to_owned())];
    let service = ServiceProcess::start_with_env(&text, &split, true).await;

    let allowed = cpus_allowed(Path::new("/proc/self/status")).expect("the test's own CPUs");
    let usable = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let (intake, actors) = match allowed.split_last() {
        Some((last, rest)) if !rest.is_empty() && usable >= allowed.len() => (vec![*last], rest.to_vec()),
        _ => (allowed.clone(), allowed.clone()),
    };
    let check = |when: &str| {
        let threads = thread_cpus(service.pid());
        let on = |name: &str| -> Vec<&Vec<usize>> {
            threads.iter().filter(|(thread, _)| thread.starts_with(name)).map(|(_, cpus)| cpus).collect()
        };
        assert_eq!(on("MQTTAsync_rcv"), vec![&intake], "{when}: paho's receive thread; threads {threads:?}");
        let actor_threads: Vec<&(String, Vec<usize>)> = threads
            .iter()
            .filter(|(name, _)| name.starts_with("fleetagg") && name != "fleetagg-mqtt-c")
            .collect();
        assert!(actor_threads.len() >= 3, "{when}: the broker, a shard and the writer at least: {threads:?}");
        for (name, cpus) in actor_threads {
            assert_eq!(cpus, &actors, "{when}: {name}; threads {threads:?}");
        }
        assert_eq!(on("fleetagg-aggr-").len(), actors.len(), "{when}: one shard per actor CPU: {threads:?}");
    };
    check("at start");
    if intake != actors {
        assert!(service.log().contains("threads placed"), "the split is logged");
    }

    broker.stop();
    actix_rt::time::sleep(Duration::from_secs(1)).await;
    broker.resume().await;
    let publisher = Publisher::connect(&broker.url()).await;
    stream.publish_with(&publisher, 200.0, |_| {}).await;
    wait_for_rows(&db.url, &stream.expected(), "the stream after the restart").await;
    assert!(service.log().contains("connection to the MQTT broker lost"), "the restart was seen");
    check("after the reconnect");
    service.stop_ok().await;
}

#[actix_rt::test]
async fn writer_connection_killed_every_second() {
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(1000, 3);
    let service = ServiceProcess::start(&config(&db.url, &stream, "1s", "")).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let killer_db = db.name.clone();
    let killer = actix_rt::spawn(async move {
        for _ in 0..10 {
            actix_rt::time::sleep(Duration::from_secs(1)).await;
            fleetagg_integration_tests::admin_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{killer_db}' AND application_name = 'fleetagg'"
            ))
            .await;
        }
    });
    stream.publish_with(&publisher, 100.0, |_| {}).await;
    killer.await.expect("killer task");
    wait_for_rows(&db.url, &stream.expected(), "every sample despite the kills").await;
    let log = service.stop_ok().await;
    assert!(log.contains("writer restarted by its supervisor"), "the supervisor should restart the writer");
    wait_for_rows(&db.url, &stream.expected(), "every sample exactly once").await;
}

#[actix_rt::test]
async fn a_row_postgres_refuses_is_isolated_and_the_rest_written() {
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(60, 2);
    let service = ServiceProcess::start(&config(&db.url, &stream, "1s", "")).await;
    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE loading_rate ADD CONSTRAINT no_poison CHECK (machine <> 'poison')")
        .await
        .expect("add constraint");
    let publisher = Publisher::connect(&broker_url()).await;
    let mut poison = Vec::new();
    for n in 0..stream.count {
        let machine = if n % 6 == 5 { "poison" } else { "m1" };
        let (topic, payload) = stream.next(machine);
        publisher.publish(&topic, payload).await;
        if machine == "poison" {
            poison.push(stream.sent.pop().expect("just sent"));
        }
    }
    wait_for_rows(&db.url, &stream.expected(), "the good rows").await;
    eventually(Duration::from_secs(30), "the refused minutes in rejected_message", || {
        let (client, poison) = (&client, &poison);
        async move {
            let rows = client
                .query("SELECT convert_from(payload, 'UTF8')::json ->> 'samples', detail FROM rejected_message WHERE reason = 'db_refused'", &[])
                .await
                .unwrap_or_default();
            let samples: usize =
                rows.iter().map(|row| row.get::<_, Option<String>>(0).and_then(|s| s.parse().ok()).unwrap_or(0)).sum();
            rows.iter().all(|row| row.get::<_, String>(1).contains("no_poison")) && samples == poison.len()
        }
    })
    .await;
    service.stop_ok().await;
}

#[actix_rt::test]
async fn a_full_buffer_holds_back_instead_of_dropping() {
    let cluster = PgCluster::start_trust().await;
    let url = fleet_database(&cluster).await;
    let mut stream = Stream::new(300, 2);
    let text = config(&url, &stream, "1s", "batch_max_rows = 10\nmax_buffered_rows = 10");
    let service = ServiceProcess::start(&text).await;
    cluster.stop();
    let publisher = Publisher::connect(&broker_url()).await;
    // 300 machines, one row each: thirty times what the writer may hold.
    for n in 0..stream.count {
        let (topic, payload) = stream.next(&format!("machine-{n:03}"));
        publisher.publish(&topic, payload).await;
    }
    service.wait_for_log("writer buffer full", Duration::from_secs(30)).await;
    cluster.start();
    wait_for_rows(&url, &stream.expected(), "every row once PostgreSQL is back").await;
    let log = service.stop_ok().await;
    assert!(log.contains("writer buffer has room again"), "the end of the hold should be logged");
}

#[actix_rt::test]
async fn sigterm_during_an_outage_reports_unwritten_rows() {
    let cluster = PgCluster::start_trust().await;
    let url = fleet_database(&cluster).await;
    let mut stream = Stream::new(50, 1);
    let text = format!("{}\n[service]\nshutdown_timeout = \"3s\"\n", config(&url, &stream, "1s", ""));
    let service = ServiceProcess::start(&text).await;
    cluster.stop();
    let publisher = Publisher::connect(&broker_url()).await;
    for _ in 0..stream.count {
        let (topic, payload) = stream.next("m1");
        publisher.publish(&topic, payload).await;
    }
    service.wait_for_log("database write failed", Duration::from_secs(30)).await;
    let log_path = service.log_path.clone();
    let started = Instant::now();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).expect("log");
    assert_eq!(status.code(), Some(3), "exit code 3 says rows were not written; log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(15), "the shutdown deadline should apply");
    assert!(log.contains("stopped with rows not written"), "{log}");
}

#[actix_rt::test]
async fn two_instances_share_a_subscription_and_merge_exactly() {
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(400, 2);
    let group = unique("group");
    let shared = |config: String| {
        config.replace("max_payload_bytes", &format!("shared_group = \"{group}\"\nmax_payload_bytes"))
    };
    let first = ServiceProcess::start(&shared(config(&db.url, &stream, "1s", ""))).await;
    let second = ServiceProcess::start(&shared(config(&db.url, &stream, "1s", ""))).await;
    let publisher = Publisher::connect(&broker_url()).await;
    stream.publish_with(&publisher, 200.0, |_| {}).await;
    wait_for_rows(&db.url, &stream.expected(), "rows merged from both instances").await;
    let (log_one, log_two) = (first.stop_ok().await, second.stop_ok().await);
    for log in [&log_one, &log_two] {
        assert!(log.contains("minutes upserted"), "each instance should have written a share");
    }
    wait_for_rows(&db.url, &stream.expected(), "every sample exactly once").await;
}

#[actix_rt::test]
async fn sigterm_during_start_up_still_writes_what_arrives() {
    let broker = MosquittoBroker::start().await;
    let db = TestDatabase::create().await;
    let mut stream = Stream::new(100, 2);
    let text = config(&db.url, &stream, "5s", "").replace(&broker_url(), &broker.url());
    // A first run creates the persistent session; the stream is queued for it meanwhile.
    ServiceProcess::start(&text).await.stop_ok().await;
    let publisher = Publisher::connect(&broker.url()).await;
    stream.publish_with(&publisher, 500.0, |_| {}).await;
    drop(publisher);
    broker.stop();

    // Start-up hangs on the unreachable broker; the signal arrives during it. When the
    // broker comes back the queued stream arrives, and must be written, not dropped.
    let service = ServiceProcess::spawn_unchecked(&text, &[]);
    service.wait_for_log("MQTT broker unreachable", Duration::from_secs(30)).await;
    service.send_sigterm();
    service.wait_for_log("signal during start-up", Duration::from_secs(10)).await;
    broker.resume().await;
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(log_path).expect("log");
    assert!(status.success(), "fleetagg exited with {status}; log:\n{log}");
    assert!(log.contains("resumed_session=true"), "the queued session should be resumed:\n{log}");
    assert_eq!(loading_rate(&db.client().await).await, stream.expected());
}
