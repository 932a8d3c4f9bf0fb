//! `mqtt.url` with several brokers: tried in order at start-up and at every reconnect, so
//! an instance whose broker dies moves to the next one that answers; `/readyz` and
//! `/api/status` say which one it is on.
//!
//! Two independent Mosquittos stand in for a clustered broker's nodes: they share no
//! session, so each message is published where the service is connected at the time.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, http_get, publish_samples, service_config, unique, wait_for_exact_rows, Publisher,
    ServiceProcess, TestDatabase,
};
use std::time::Duration;

/// Waits until `/readyz` is 200 and names `broker` as the one the service is on.
async fn ready_on(service: &ServiceProcess, metrics: &PortLease, broker: &MosquittoBroker) {
    let expected = (200, format!("ready\nMQTT broker: {}\n", broker.url()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let answer = http_get(metrics.port(), "/readyz").await;
        if answer == expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz did not say ready on {} within 60 s; the last answer: {answer:?}\nthe log:\n{}",
            broker.url(),
            service.log()
        );
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_rt::test]
async fn an_instance_moves_to_the_next_broker_when_its_own_dies() {
    let (first, second) = (MosquittoBroker::start().await, MosquittoBroker::start().await);
    let db = TestDatabase::create().await;
    let metrics = PortLease::acquire();
    let prefix = unique("broker_failover");
    let urls = format!("[\"{}\", \"{}\"]", first.url(), second.url());
    let toml = service_config(&db.url, &prefix, &unique("fleetagg"), "1s")
        .replace(&format!("\"{}\"", broker_url()), &urls)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", metrics.port()));
    let service = ServiceProcess::start(&toml).await;
    let client = db.client().await;
    ready_on(&service, &metrics, &first).await;

    // Minutes long closed: each is written as soon as it is complete.
    let start = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(8);
    let step = TimeDelta::milliseconds(250);
    let mut sent =
        publish_samples(&Publisher::connect(&first.url()).await, &prefix, 5, start, step, 40).await;
    wait_for_exact_rows(&client, &sent, "rows through the first broker").await;

    // The first broker dies: the service moves to the second, which it has never used.
    first.stop();
    ready_on(&service, &metrics, &second).await;
    let on_second = Publisher::connect(&second.url()).await;
    sent.extend(publish_samples(&on_second, &prefix, 5, start + step * 40, step, 40).await);
    wait_for_exact_rows(&client, &sent, "rows through the second broker").await;

    // The first comes back: nothing breaks, the service stays where it is.
    first.resume().await;
    sent.extend(publish_samples(&on_second, &prefix, 5, start + step * 80, step, 40).await);
    wait_for_exact_rows(&client, &sent, "every row exactly once").await;
    ready_on(&service, &metrics, &second).await;
    let (_, status) = http_get(metrics.port(), "/api/status").await;
    assert!(status.contains(&format!("\"broker\":\"{}\"", second.url())), "{status}");

    let log = service.log();
    let connected: Vec<&str> = log.lines().filter(|line| line.contains("MQTT connected")).collect();
    for broker in [&first, &second] {
        assert!(
            connected.iter().any(|line| line.contains(&broker.url())),
            "the log names each broker connected to ({}): {connected:?}",
            broker.url()
        );
    }
    assert!(service.terminate(Duration::from_secs(30)).await.success());
}
