//! TLS to PostgreSQL against a private cluster that accepts only TLS (`hostssl`), with
//! certificates made by `openssl` at test time: `verify-full` with the right CA writes
//! every row; another CA or a certificate for another host is refused with a message
//! that says which, and writes nothing; `require` without a CA writes; a client
//! certificate logs in where `pg_hba.conf` asks for one.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::certs::TestCertificates;
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, expected_rows, loading_rate, publish_samples, service_config, unique,
    Publisher, ServiceProcess,
};
use std::time::Duration;

const LOCAL_NAMES: &str = "IP:127.0.0.1,DNS:localhost";

async fn tls_cluster(certs: &TestCertificates, host_auth: &str) -> PgCluster {
    let cluster = PgCluster::start_tls_only(certs, host_auth).await;
    cluster.admin_execute("CREATE DATABASE fleet").await;
    cluster
}

/// A service writing to `cluster`'s `fleet` with `[database.tls]` set to `tls`.
fn config(cluster: &PgCluster, prefix: &str, tls: &str) -> String {
    format!(
        "{}\n[database.tls]\n{tls}\n",
        service_config(&cluster.url_for("postgres", "fleet"), prefix, &unique("fleetagg"), "1s")
    )
}

/// Publishes a few samples in a closed minute; returns the rows they make.
async fn publish(prefix: &str) -> Vec<fleetagg_integration_tests::LoadingRateRow> {
    let publisher = Publisher::connect(&broker_url()).await;
    let minute = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(2);
    expected_rows(&publish_samples(&publisher, prefix, 1, minute, TimeDelta::seconds(7), 6).await)
}

async fn fleet_rows(cluster: &PgCluster) -> Vec<fleetagg_integration_tests::LoadingRateRow> {
    let client = connect(&cluster.admin_url().replace("dbname=postgres", "dbname=fleet")).await;
    loading_rate(&client).await
}

async fn writes_every_row(cluster: &PgCluster, tls: &str) {
    let prefix = unique("pg_tls");
    let service = ServiceProcess::start(&config(cluster, &prefix, tls)).await;
    let expected = publish(&prefix).await;
    eventually(Duration::from_secs(30), "every row over TLS", || async {
        fleet_rows(cluster).await == expected
    })
    .await;
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(!log.contains("not encrypted"), "{log}");
}

async fn refused_with(cluster: &PgCluster, tls: &str, message: &str) {
    let prefix = unique("pg_tls_refused");
    let before = fleet_rows(cluster).await;
    let service = ServiceProcess::start_with_env(&config(cluster, &prefix, tls), &[], false).await;
    publish(&prefix).await;
    service.wait_for_log(message, Duration::from_secs(30)).await;
    assert_eq!(fleet_rows(cluster).await, before, "nothing is written to a server refused");
    assert!(!service.log().contains("connected to PostgreSQL"), "{}", service.log());
}

#[actix_rt::test]
async fn verify_full_with_the_right_ca_writes_every_row() {
    let certs = TestCertificates::make(LOCAL_NAMES, "postgres");
    let cluster = tls_cluster(&certs, "trust").await;
    let ca = certs.path("ca.crt");
    writes_every_row(&cluster, &format!("mode = \"verify-full\"\nca_file = \"{}\"", ca.display())).await;
}

#[actix_rt::test]
async fn a_certificate_from_another_ca_is_refused() {
    let certs = TestCertificates::make(LOCAL_NAMES, "postgres");
    let cluster = tls_cluster(&certs, "trust").await;
    let other = certs.path("other-ca.crt");
    let tls = format!("mode = \"verify-ca\"\nca_file = \"{}\"", other.display());
    refused_with(&cluster, &tls, "server certificate not trusted: unknown CA").await;
}

#[actix_rt::test]
async fn a_certificate_for_another_host_is_refused_by_verify_full() {
    let certs = TestCertificates::make("DNS:db.example.net", "postgres");
    let cluster = tls_cluster(&certs, "trust").await;
    let ca = certs.path("ca.crt");
    let tls = format!("mode = \"verify-full\"\nca_file = \"{}\"", ca.display());
    refused_with(&cluster, &tls, "server certificate not trusted: hostname mismatch").await;
}

#[actix_rt::test]
async fn require_without_a_ca_writes_and_disable_is_refused_by_a_tls_only_server() {
    let certs = TestCertificates::make(LOCAL_NAMES, "postgres");
    let cluster = tls_cluster(&certs, "trust").await;
    writes_every_row(&cluster, "mode = \"require\"").await;
    refused_with(&cluster, "mode = \"disable\"", "no encryption").await;
}

#[actix_rt::test]
async fn a_client_certificate_logs_in_where_pg_hba_asks_for_one() {
    let certs = TestCertificates::make(LOCAL_NAMES, "postgres");
    let cluster = tls_cluster(&certs, "cert").await;
    let tls = format!(
        "mode = \"verify-full\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"",
        certs.path("ca.crt").display(),
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );
    writes_every_row(&cluster, &tls).await;
}

#[actix_rt::test]
async fn certificate_files_are_read_again_at_each_connection() {
    let certs = TestCertificates::make(LOCAL_NAMES, "postgres");
    let cluster = tls_cluster(&certs, "trust").await;
    // The configured CA file holds the wrong CA at first: refused.
    let rotated = certs.path("rotated-ca.crt");
    std::fs::copy(certs.path("other-ca.crt"), &rotated).expect("the wrong CA in place");
    let prefix = unique("pg_tls_rotation");
    let tls = format!("mode = \"verify-full\"\nca_file = \"{}\"", rotated.display());
    let service = ServiceProcess::start_with_env(&config(&cluster, &prefix, &tls), &[], false).await;
    let expected = publish(&prefix).await;
    service.wait_for_log("server certificate not trusted: unknown CA", Duration::from_secs(30)).await;
    // The operator puts the right CA in place; no restart.
    std::fs::copy(certs.path("ca.crt"), &rotated).expect("the right CA in place");
    eventually(Duration::from_secs(30), "every row once the CA file is right", || async {
        fleet_rows(&cluster).await == expected
    })
    .await;
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}
