//! The broker over TLS with client-certificate login (Mosquitto's `require_certificate`
//! with `use_identity_as_username`), certificates made by `openssl` at test time: the
//! right CA and certificate write every row; a broker certificate from another CA is
//! named as a TLS failure, not as an unreachable broker; the certificate files are read
//! again at every reconnect.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::certs::TestCertificates;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::{
    broker_url, eventually, publish_samples, service_config, unique, wait_for_exact_rows, Publisher,
    ServiceProcess, TestDatabase,
};
use std::time::Duration;

fn config(
    db: &TestDatabase,
    broker: &MosquittoBroker,
    prefix: &str,
    certs: &TestCertificates,
    ca: &str,
) -> String {
    let tls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.path(ca).display(),
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );
    service_config(&db.url, prefix, &unique("fleetagg"), "1s")
        .replace(&broker_url(), &broker.url())
        .replace("max_payload_bytes", &format!("{tls}max_payload_bytes"))
}

/// Publishes 8 samples of one machine through the TLS broker (with the client
/// certificate) and waits until `loading_rate` holds exactly their rows.
async fn publish_over_tls_and_expect_every_row(
    broker: &MosquittoBroker,
    certs: &TestCertificates,
    db: &TestDatabase,
    prefix: &str,
    what: &str,
) {
    let publisher = Publisher::connect_tls(&broker.url(), certs).await;
    let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(2);
    let sent = publish_samples(&publisher, prefix, 1, minute, TimeDelta::seconds(5), 8).await;
    wait_for_exact_rows(&db.client().await, &sent, what).await;
}

#[actix_rt::test]
async fn a_client_certificate_login_over_tls_writes_every_row() {
    let certs = TestCertificates::make("IP:127.0.0.1,DNS:localhost", "fleetagg-test-client");
    let broker = MosquittoBroker::start_tls_with_client_certificates(&certs).await;
    let db = TestDatabase::create().await;
    let prefix = unique("broker_tls");
    let service = ServiceProcess::start(&config(&db, &broker, &prefix, &certs, "ca.crt")).await;
    publish_over_tls_and_expect_every_row(&broker, &certs, &db, &prefix, "every row through the TLS broker")
        .await;
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}

#[actix_rt::test]
async fn a_broker_certificate_from_another_ca_is_named_a_tls_failure() {
    let certs = TestCertificates::make("IP:127.0.0.1,DNS:localhost", "fleetagg-test-client");
    let broker = MosquittoBroker::start_tls_with_client_certificates(&certs).await;
    let db = TestDatabase::create().await;
    let service = ServiceProcess::spawn_unchecked(
        &config(&db, &broker, &unique("tls_bad"), &certs, "other-ca.crt"),
        &[],
    );
    service.wait_for_log("TLS with the MQTT broker failed", Duration::from_secs(30)).await;
    assert!(!service.log().contains("MQTT broker unreachable"), "{}", service.log());
    assert!(service.log().contains("broker certificate not trusted: unknown CA"), "{}", service.log());
}

#[actix_rt::test]
async fn an_expired_broker_certificate_is_named_expired() {
    let names = "IP:127.0.0.1,DNS:localhost";
    let certs = TestCertificates::make(names, "fleetagg-test-client").with_expired_server(names);
    let broker = MosquittoBroker::start_tls_serving(&certs, "expired-server").await;
    let db = TestDatabase::create().await;
    let service =
        ServiceProcess::spawn_unchecked(&config(&db, &broker, &unique("tls_expired"), &certs, "ca.crt"), &[]);
    service.wait_for_log("TLS with the MQTT broker failed", Duration::from_secs(30)).await;
    assert!(
        service.log().contains("broker certificate not trusted: expired (certificate has expired)"),
        "{}",
        service.log()
    );
}

#[actix_rt::test]
async fn a_broker_certificate_for_another_host_is_refused() {
    let certs = TestCertificates::make("DNS:broker.example.net", "fleetagg-test-client");
    let broker = MosquittoBroker::start_tls_with_client_certificates(&certs).await;
    let db = TestDatabase::create().await;
    let service =
        ServiceProcess::spawn_unchecked(&config(&db, &broker, &unique("tls_host"), &certs, "ca.crt"), &[]);
    service.wait_for_log("TLS with the MQTT broker failed", Duration::from_secs(30)).await;
    assert!(!service.log().contains("MQTT connected"), "{}", service.log());
    assert!(service.log().contains("broker certificate not trusted: hostname mismatch"), "{}", service.log());
}

/// How many times the service has (re)connected to the broker, from its log.
fn connections(service: &ServiceProcess) -> usize {
    service.log().matches("MQTT connected; subscribing").count()
}

#[actix_rt::test]
async fn certificate_files_are_read_again_at_every_reconnect() {
    let certs = TestCertificates::make("IP:127.0.0.1,DNS:localhost", "fleetagg-test-client");
    let broker = MosquittoBroker::start_tls_with_client_certificates(&certs).await;
    let db = TestDatabase::create().await;
    let prefix = unique("tls_rotate");
    // The service trusts whatever is at `trusted`: the operator's file to rotate.
    let trusted = certs.path("trusted.crt");
    std::fs::copy(certs.path("ca.crt"), &trusted).expect("copy the CA");
    let service_config = config(&db, &broker, &prefix, &certs, "trusted.crt");
    let service = ServiceProcess::start(&service_config).await;
    assert_eq!(connections(&service), 1);

    // A CA that did not sign the broker's certificate replaces the file; the broker
    // restarts. A reconnect that read the file again cannot get through.
    std::fs::copy(certs.path("other-ca.crt"), &trusted).expect("replace the CA");
    broker.stop();
    broker.resume().await;
    actix_rt::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(connections(&service), 1, "reconnected with the old CA still in memory:\n{}", service.log());

    // The right CA back: the next retry connects, and messages flow.
    std::fs::copy(certs.path("ca.crt"), &trusted).expect("restore the CA");
    eventually(Duration::from_secs(40), "a reconnect with the restored CA", || {
        let reconnected = connections(&service) >= 2;
        async move { reconnected }
    })
    .await;
    publish_over_tls_and_expect_every_row(&broker, &certs, &db, &prefix, "every row after the CA came back")
        .await;
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}
