//! `/metrics`, `/healthz` and `/readyz` of a running service: the counters equal what
//! was sent and what the database holds; readiness follows the broker, the database and
//! the "connected but silent" watchdog.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, eventually, http_get, metric, rejection_reasons, service_config, unique, Publisher,
    ServiceProcess, TestDatabase,
};
use std::time::Duration;

fn with_metrics(config: &str, port: u16, idle_alert: &str) -> String {
    config
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
        .replace("max_payload_bytes", &format!("idle_alert = \"{idle_alert}\"\nmax_payload_bytes"))
}

fn payload(machine: &str, ts: chrono::DateTime<Utc>, load_rate: f64) -> String {
    format!(r#"{{"machine":"{machine}","ts":"{}","load_rate":{load_rate},"mileage":1}}"#, ts.to_rfc3339())
}

#[actix_rt::test]
async fn counters_match_what_was_sent_and_what_was_stored() {
    let db = TestDatabase::create().await;
    let prefix = unique("metrics");
    // Held until the service binds it (and beyond): nothing else can take it meanwhile.
    let metrics_port = PortLease::acquire();
    let port = metrics_port.port();
    // Five minutes of grace: the current minute stays open, so duplicates into it are
    // caught and `open_minutes` can be checked; older minutes close at once.
    let config = with_metrics(&service_config(&db.url, &prefix, &unique("fleetagg"), "5m"), port, "off");
    let service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let topic = format!("{prefix}/m/telemetry");
    let current = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate");
    let past = current - TimeDelta::minutes(7);

    let mut sent = 0;
    for n in 0..24 {
        publisher.publish(&topic, payload(&format!("p{}", n % 3), past + TimeDelta::seconds(n), 10.0)).await;
        sent += 1;
    }
    for n in 0..6 {
        let body = payload(&format!("c{}", n % 2), current + TimeDelta::milliseconds(n), 20.0);
        publisher.publish(&topic, body.clone()).await;
        publisher.publish(&topic, body).await; // a redelivery
        sent += 2;
    }
    let invalid = [
        "not json",
        "[1]",
        &payload("p0", current - TimeDelta::hours(2), 1.0),
        &payload("p0", current, 101.0),
    ];
    for body in invalid {
        publisher.publish(&topic, body).await;
        sent += 1;
    }
    let client = db.client().await;
    eventually(Duration::from_secs(30), "the past minutes and the rejections", || {
        let client = &client;
        async move {
            let samples: Option<i64> = client
                .query_one("SELECT sum(samples)::bigint FROM loading_rate", &[])
                .await
                .ok()
                .and_then(|row| row.get(0));
            samples == Some(24) && rejection_reasons(client).await.len() == 4
        }
    })
    .await;

    let (status, text) = http_get(port, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    let value = |series: &str| metric(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(value("fleetagg_messages_received_total"), f64::from(sent));
    assert_eq!(value("fleetagg_samples_accepted_total"), 30.0);
    assert_eq!(value("fleetagg_duplicates_total"), 6.0);
    assert_eq!(value("fleetagg_messages_rejected_total{reason=\"malformed\"}"), 2.0);
    assert_eq!(value("fleetagg_messages_rejected_total{reason=\"too_late\"}"), 1.0);
    assert_eq!(value("fleetagg_messages_rejected_total{reason=\"out_of_range\"}"), 1.0);
    assert_eq!(value("fleetagg_messages_rejected_total{reason=\"bad_type\"}"), 0.0);
    assert_eq!(value("fleetagg_rejections_written_total"), 4.0);
    // Two machines hold the current minute open.
    assert_eq!(value("fleetagg_open_minutes"), 2.0);
    let rows_in_db: i64 =
        client.query_one("SELECT count(*) FROM loading_rate", &[]).await.expect("count").get(0);
    let rows_written = value("fleetagg_rows_written_total");
    assert!(rows_written >= rows_in_db as f64, "{rows_written} row writes for {rows_in_db} rows");
    assert_eq!(value("fleetagg_minute_commit_lag_seconds_count"), rows_written);
    // The 24 samples of the past minutes are in PostgreSQL; the current minute's 6 are open.
    assert_eq!(value("fleetagg_samples_written_total"), 24.0);
    assert!(value("fleetagg_write_batch_seconds_count") >= 1.0);
    assert_eq!(value("fleetagg_mqtt_connected"), 1.0);
    assert_eq!(value("fleetagg_database_healthy"), 1.0);
    assert!(value("fleetagg_last_message_received_timestamp_seconds") > 1.7e9);

    assert_eq!(http_get(port, "/healthz").await, (200, "ok\n".to_owned()));
    // Ready, and on which broker (the last line).
    assert_eq!(http_get(port, "/readyz").await, (200, format!("ready\nMQTT broker: {}\n", broker_url())));
    assert_eq!(http_get(port, "/nope").await.0, 404);

    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", std::fs::read_to_string(log_path).unwrap_or_default());
    let total: i64 =
        client.query_one("SELECT sum(samples)::bigint FROM loading_rate", &[]).await.expect("sum").get(0);
    assert_eq!(total, 30, "the stop flushes the open minute");
}

#[actix_rt::test]
async fn readiness_follows_the_broker_the_database_and_silence() {
    let broker = MosquittoBroker::start().await;
    broker.stop();
    let cluster = PgCluster::start_trust().await;
    cluster.admin_execute("CREATE DATABASE fleet").await;
    let prefix = unique("ready");
    // Held until the service binds it (and beyond): nothing else can take it meanwhile.
    let metrics_port = PortLease::acquire();
    let port = metrics_port.port();
    let config = service_config(&cluster.url_for("postgres", "fleet"), &prefix, &unique("fleetagg"), "1s")
        .replace(&broker_url(), &broker.url());
    let service = ServiceProcess::spawn_unchecked(&with_metrics(&config, port, "3s"), &[]);
    service.wait_for_log("metrics listening", Duration::from_secs(30)).await;

    let readyz = || http_get(port, "/readyz");
    eventually(Duration::from_secs(20), "503 while the broker is unreachable", || async {
        let (status, body) = readyz().await;
        status == 503 && body.contains("not subscribed to the MQTT broker")
    })
    .await;

    broker.resume().await;
    service.wait_for_log("fleetagg running", Duration::from_secs(40)).await;
    let publisher = Publisher::connect(&broker.url()).await;
    let topic = format!("{prefix}/m1/telemetry");
    publisher.publish(&topic, payload("m1", Utc::now(), 5.0)).await;
    eventually(Duration::from_secs(20), "200 once subscribed", || async { readyz().await.0 == 200 }).await;

    // Connected, but nothing arrives for longer than idle_alert (3 s).
    eventually(Duration::from_secs(20), "503 when connected but silent", || async {
        let (status, body) = readyz().await;
        status == 503 && body.contains("connected but no message")
    })
    .await;
    service.wait_for_log("no message arrives", Duration::from_secs(10)).await;
    publisher.publish(&topic, payload("m1", Utc::now(), 6.0)).await;
    eventually(Duration::from_secs(20), "200 when messages flow again", || async { readyz().await.0 == 200 })
        .await;

    // PostgreSQL goes away: 503 until it is back. Messages keep the watchdog quiet.
    cluster.stop();
    let keep_alive = actix_rt::spawn({
        let publisher = Publisher::connect(&broker.url()).await;
        let topic = topic.clone();
        async move {
            loop {
                publisher.publish(&topic, payload("m1", Utc::now(), 7.0)).await;
                actix_rt::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    eventually(Duration::from_secs(40), "503 while PostgreSQL is down", || async {
        let (status, body) = readyz().await;
        status == 503 && body.contains("PostgreSQL")
    })
    .await;
    cluster.start();
    eventually(Duration::from_secs(40), "200 once PostgreSQL is back", || async { readyz().await.0 == 200 })
        .await;
    keep_alive.abort();
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}
