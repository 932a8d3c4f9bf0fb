//! The `fleetagg` binary against the local Mosquitto and PostgreSQL: a known mix of
//! messages ends up exactly as expected in `loading_rate` and `rejected_message`; a
//! SIGTERM flushes the open partial minute; messages queued while the service is down
//! are consumed after a restart (persistent session).

use chrono::{DateTime, DurationRound, FixedOffset, TimeDelta, Utc};
use fleetagg_integration_tests::{
    broker_url, eventually, expected_rows, loading_rate, rejection_reasons, service_config, unique,
    Publisher, ServiceProcess, TestDatabase,
};
use std::time::Duration;

type Sample = (String, DateTime<Utc>, f64, f64);

fn payload(machine: &str, ts: &str, load_rate: f64, mileage: f64) -> String {
    format!(r#"{{"machine":"{machine}","ts":"{ts}","load_rate":{load_rate},"mileage":{mileage}}}"#)
}

fn in_zone(ts: DateTime<Utc>, offset_seconds: i32) -> String {
    let zone = FixedOffset::east_opt(offset_seconds).expect("offset");
    ts.with_timezone(&zone).to_rfc3339()
}

fn current_minute() -> DateTime<Utc> {
    Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate")
}

struct Fixture {
    db: TestDatabase,
    prefix: String,
    publisher: Publisher,
}

impl Fixture {
    async fn new() -> Fixture {
        Fixture {
            db: TestDatabase::create().await,
            prefix: unique("it"),
            publisher: Publisher::connect(&broker_url()).await,
        }
    }

    fn config(&self, client_id: &str, grace: &str) -> String {
        service_config(&self.db.url, &self.prefix, client_id, grace)
    }

    async fn publish(&self, machine: &str, payload: impl Into<Vec<u8>>) {
        self.publisher.publish(&format!("{}/{machine}/telemetry", self.prefix), payload).await;
    }

    /// Publishes an invalid message and waits until it is stored: MQTT keeps the order of
    /// one client's messages, so everything published before it has been received.
    async fn sentinel(&self, expected_rejections: usize) {
        self.publish("sentinel", "sentinel: not JSON").await;
        let client = self.db.client().await;
        eventually(Duration::from_secs(20), "the sentinel rejection", || {
            let client = &client;
            async move { rejection_reasons(client).await.len() >= expected_rejections }
        })
        .await;
    }
}

#[actix_rt::test]
async fn a_known_mix_lands_exactly_in_postgres() {
    let f = Fixture::new().await;
    let service = ServiceProcess::start(&f.config(&unique("fleetagg"), "2m")).await;
    let client = f.db.client().await;

    // Minutes A and B are long past end + grace: they close as soon as samples arrive.
    let current = current_minute();
    let a = current - TimeDelta::minutes(5);
    let b = current - TimeDelta::minutes(4);
    let seconds = |base: DateTime<Utc>, s: f64| base + TimeDelta::microseconds((s * 1e6) as i64);
    let paris_local = |ts: DateTime<Utc>| {
        ts.with_timezone(&chrono_tz::Europe::Paris).naive_local().format("%Y-%m-%dT%H:%M:%S%.f").to_string()
    };
    let mut accepted: Vec<Sample> = Vec::new();
    let mut send = |machine: &str, ts: DateTime<Utc>, load: f64, mileage: f64, written: String| {
        accepted.push((machine.to_owned(), ts, load, mileage));
        (machine.to_owned(), payload(machine, &written, load, mileage))
    };
    let past = [
        send("m1", seconds(a, 5.0), 10.0, 100.0, in_zone(seconds(a, 5.0), 2 * 3600)),
        send("m1", seconds(a, 15.25), 20.5, 100.5, in_zone(seconds(a, 15.25), -(5 * 3600 + 1800))),
        send("m1", seconds(a, 25.0), 30.0, 101.0, in_zone(seconds(a, 25.0), 5 * 3600 + 45 * 60)),
        send("m1", seconds(a, 35.0), 40.0, 101.5, paris_local(seconds(a, 35.0))),
        send("m2", seconds(a, 10.0), 0.0, 0.0, seconds(a, 10.0).to_rfc3339()),
        send("m2", b, 100.0, 5.0, b.to_rfc3339()),
        send("m2", seconds(b, 59.999_999), 60.5, 6.0, seconds(b, 59.999_999).to_rfc3339()),
    ];
    // Epoch seconds, fractional, as a JSON number.
    let epoch_ts = seconds(a, 45.5);
    let epoch = format!(r#"{{"machine":"m1","ts":{}.5,"load_rate":50,"mileage":102}}"#, epoch_ts.timestamp());
    // The current minute stays open (grace 2m): redeliveries into it are caught.
    let open = [
        send("m1", seconds(current, 1.0), 70.0, 200.0, seconds(current, 1.0).to_rfc3339()),
        send("m3", seconds(current, 2.0), 80.0, 300.0, seconds(current, 2.0).to_rfc3339()),
    ];
    accepted.push(("m1".into(), epoch_ts, 50.0, 102.0));
    let duplicates = [
        payload("m1", &seconds(current, 1.0).to_rfc3339(), 1.0, 1.0),
        payload("m3", &in_zone(seconds(current, 2.0), 3600), 2.0, 2.0),
    ];
    let now = Utc::now();
    let invalid = [
        format!(
            r#"{{"machine":"m1","ts":"{}","load_rate":1,"mileage":1,"pad":"{}"}}"#,
            now.to_rfc3339(),
            "x".repeat(1100)
        ),
        r#"{"machine": "#.to_owned(),
        format!(r#"{{"machine":"m1","ts":"{}","load_rate":1}}"#, now.to_rfc3339()),
        format!(r#"{{"machine":"m1","ts":"{}","load_rate":"42","mileage":1}}"#, now.to_rfc3339()),
        format!(r#"{{"machine":"bad\u0000id","ts":"{}","load_rate":1,"mileage":1}}"#, now.to_rfc3339()),
        payload("m1", "2026-02-30T00:00:00Z", 1.0, 1.0),
        format!(r#"{{"machine":"m1","ts":"{}","load_rate":NaN,"mileage":1}}"#, now.to_rfc3339()),
        payload("m1", &now.to_rfc3339(), 1.0, -1.0),
        payload("m1", &(now + TimeDelta::hours(1)).to_rfc3339(), 1.0, 1.0),
        payload("m1", &(now - TimeDelta::hours(1)).to_rfc3339(), 1.0, 1.0),
    ];

    for (machine, body) in past.iter().chain(open.iter()) {
        f.publish(machine, body.clone()).await;
    }
    f.publish("m1", epoch).await;
    for body in &duplicates {
        f.publish("dup", body.clone()).await;
    }
    for body in &invalid {
        f.publish("bad", body.clone()).await;
    }
    f.sentinel(invalid.len() + 1).await;

    // The past minutes are written without waiting for a stop.
    let past_samples: Vec<Sample> = accepted.iter().filter(|s| s.1 < current).cloned().collect();
    let expected_past = expected_rows(&past_samples);
    eventually(Duration::from_secs(20), "rows of the past minutes", || {
        let (client, expected) = (&client, &expected_past);
        async move { loading_rate(client).await == *expected }
    })
    .await;

    // A late message (within max_lateness) for minute A, already written: merged, not lost.
    let late_ts = seconds(a, 50.0);
    accepted.push(("m1".into(), late_ts, 90.0, 103.0));
    f.publish("m1", payload("m1", &late_ts.to_rfc3339(), 90.0, 103.0)).await;
    let with_late: Vec<Sample> = accepted.iter().filter(|s| s.1 < current).cloned().collect();
    let expected_with_late = expected_rows(&with_late);
    eventually(Duration::from_secs(20), "the late sample merged into minute A", || {
        let (client, expected) = (&client, &expected_with_late);
        async move { loading_rate(client).await == *expected }
    })
    .await;

    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "fleetagg exited with {status}");
    assert_eq!(loading_rate(&client).await, expected_rows(&accepted));
    let m1_a = loading_rate(&client).await.into_iter().find(|row| row.machine == "m1" && row.ts == a);
    assert_eq!(m1_a.map(|row| (row.samples, row.load_rate_sum)), Some((6, 240.5)));

    let mut expected_reasons: Vec<String> = [
        "too_large",
        "malformed",
        "missing_field",
        "bad_type",
        "bad_machine",
        "bad_timestamp",
        "non_finite",
        "out_of_range",
        "future_ts",
        "too_late",
        "malformed", // the sentinel
    ]
    .map(String::from)
    .to_vec();
    expected_reasons.sort();
    assert_eq!(rejection_reasons(&client).await, expected_reasons);

    let stored = client
        .query_one("SELECT topic, detail, payload FROM rejected_message WHERE reason = 'too_large'", &[])
        .await
        .expect("too_large row");
    let (topic, detail, stored_payload): (String, String, Vec<u8>) =
        (stored.get(0), stored.get(1), stored.get(2));
    assert_eq!(topic, format!("{}/bad/telemetry", f.prefix));
    assert!(detail.contains("1024"), "detail should name the limit: {detail}");
    assert_eq!(stored_payload, invalid[0].as_bytes(), "payloads under 4 KiB are stored whole");
}

#[actix_rt::test]
async fn sigterm_mid_minute_writes_the_partial_minute() {
    let f = Fixture::new().await;
    // With an hour of grace, only the shutdown flush can write the minute.
    let service = ServiceProcess::start(&f.config(&unique("fleetagg"), "1h")).await;
    let client = f.db.client().await;
    let base = Utc::now() - TimeDelta::seconds(2);
    let samples: Vec<Sample> = (0..5)
        .map(|n| ("m1".to_owned(), base + TimeDelta::milliseconds(100 * n), 10.0 * n as f64, 1.0))
        .collect();
    for (machine, ts, load, mileage) in &samples {
        f.publish(machine, payload(machine, &ts.to_rfc3339(), *load, *mileage)).await;
    }
    f.sentinel(1).await;
    assert!(loading_rate(&client).await.is_empty(), "nothing is written before the minute closes");

    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "fleetagg exited with {status}");
    assert_eq!(loading_rate(&client).await, expected_rows(&samples));
}

#[actix_rt::test]
async fn messages_queued_while_stopped_are_consumed_after_restart() {
    let f = Fixture::new().await;
    let client_id = unique("fleetagg");
    // A backlog far larger than the inbound channel: start-up must not wait for a SUBACK
    // that paho cannot read while it is blocked delivering the backlog.
    let config =
        f.config(&client_id, "2m").replace("max_payload_bytes", "inbound_capacity = 4\nmax_payload_bytes");
    let first = ServiceProcess::start(&config).await;
    let status = first.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "first run exited with {status}");

    // The service is down; its persistent session makes the broker queue these.
    let a = current_minute() - TimeDelta::minutes(5);
    let samples: Vec<Sample> = (0..200)
        .map(|n| ("m7".to_owned(), a + TimeDelta::milliseconds(250 * n), (n % 101) as f64, 50.0 + n as f64))
        .collect();
    for (machine, ts, load, mileage) in &samples {
        f.publish(machine, payload(machine, &ts.to_rfc3339(), *load, *mileage)).await;
    }

    let second = ServiceProcess::start(&config).await;
    let client = f.db.client().await;
    let expected = expected_rows(&samples);
    eventually(Duration::from_secs(30), "queued messages written after restart", || {
        let (client, expected) = (&client, &expected);
        async move { loading_rate(client).await == *expected }
    })
    .await;
    assert!(second.log().contains("resumed_session=true"), "the broker should resume the session");
    let status = second.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "second run exited with {status}");
}
