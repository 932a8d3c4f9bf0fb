//! Database credentials from secret sources, rotated while the service runs.
//!
//! The machine's own PostgreSQL trusts every local login, so these tests run a private
//! cluster with `scram-sha-256` authentication and a local AWS Secrets Manager (moto).
//! Every test ends by comparing `loading_rate` exactly with what was published, and checks
//! that no password ever reached the service's log (written at debug level).

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::moto::MotoServer;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, expected_rows, loading_rate, service_config, unique, Publisher,
    ServiceProcess,
};
use std::time::Duration;

type Sample = (String, DateTime<Utc>, f64, f64);

const SECRET_ID: &str = "fleetagg/database";

/// A scram cluster with database `fleet` owned by `app_a`; `app_b` may write as well
/// (AWS's alternating-users rotation switches between two such users).
async fn cluster_with_roles(password_a: &str, password_b: &str) -> PgCluster {
    let cluster = PgCluster::start_scram().await;
    cluster
        .admin_execute(&format!(
            "CREATE ROLE app_a LOGIN PASSWORD '{password_a}';
             CREATE ROLE app_b LOGIN PASSWORD '{password_b}' IN ROLE app_a;"
        ))
        .await;
    // CREATE DATABASE cannot share a transaction with other statements.
    cluster.admin_execute("CREATE DATABASE fleet OWNER app_a").await;
    cluster
}

struct Feed {
    publisher: Publisher,
    prefix: String,
    sent: Vec<Sample>,
    /// Samples go into this minute (long past end + grace, so it closes at once) and each
    /// gets its own second, so every sample must appear exactly once.
    minute: DateTime<Utc>,
}

impl Feed {
    async fn new() -> Feed {
        let minute =
            Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(5);
        Feed {
            publisher: Publisher::connect(&broker_url()).await,
            prefix: unique("secrets"),
            sent: Vec::new(),
            minute,
        }
    }

    async fn publish(&mut self, machine: &str, count: usize) {
        for _ in 0..count {
            let ts = self.minute + TimeDelta::milliseconds(100 * self.sent.len() as i64);
            let load_rate = (self.sent.len() % 100) as f64;
            let payload = format!(
                r#"{{"machine":"{machine}","ts":"{}","load_rate":{load_rate},"mileage":1}}"#,
                ts.to_rfc3339()
            );
            self.publisher.publish(&format!("{}/{machine}/telemetry", self.prefix), payload).await;
            self.sent.push((machine.to_owned(), ts, load_rate, 1.0));
        }
    }

    async fn wait_until_written(&self, url: &str, password: &str, what: &str) {
        let expected = expected_rows(&self.sent);
        let client = connect(&format!("{url} password={password}")).await;
        eventually(Duration::from_secs(40), what, || {
            let (client, expected) = (&client, &expected);
            async move { loading_rate(client).await == *expected }
        })
        .await;
    }
}

/// The owner's key/value connection string (passwords cannot go in fleetagg's URL, but
/// the test's own checks may use them).
fn owner_url(cluster: &PgCluster) -> String {
    format!("host=127.0.0.1 port={} user=app_a dbname=fleet", cluster.port)
}

fn aws_config(cluster: &PgCluster, moto: &MotoServer, feed: &Feed, refresh: &str) -> String {
    format!(
        "{}\n[database.password]\nsource = \"aws-secrets-manager\"\nsecret_id = \"{SECRET_ID}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nrefresh_interval = \"{refresh}\"\n",
        service_config(&cluster.url_for("app_a", "fleet"), &feed.prefix, &unique("fleetagg"), "1s"),
        moto.endpoint
    )
}

async fn terminate_service_backends(cluster: &PgCluster) {
    cluster
        .admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleetagg'",
        )
        .await;
}

/// Stops the service, checks it exited 0, and that its whole log (at debug level) never
/// contains any of the passwords.
async fn stop_and_check_log(service: ServiceProcess, passwords: &[&str]) -> String {
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(&log_path).expect("service log");
    assert!(status.success(), "fleetagg exited with {status}; log:\n{log}");
    assert!(log.contains("DEBUG"), "the log should be at debug level for this check");
    for password in passwords {
        assert!(!log.contains(password), "the log contains a password ({password})");
    }
    log
}

#[actix_rt::test]
async fn single_user_rotation_keeps_every_row_exactly_once() {
    let (p1, p2) = ("rot-P1-7c4f2a", "rot-P2-91be0d");
    let cluster = cluster_with_roles(p1, "unused-b-3f").await;
    let moto = MotoServer::start().await;
    moto.create_secret(SECRET_ID, p1).await;
    let mut feed = Feed::new().await;
    // An hour between refreshes: only the refused login can make the service notice.
    let config = aws_config(&cluster, &moto, &feed, "1h");
    let service = ServiceProcess::start_with_env(&config, &moto.aws_env(), true).await;

    feed.publish("m1", 20).await;
    feed.wait_until_written(&owner_url(&cluster), p1, "rows before the rotation").await;

    // The rotation: new password on the role and in the secret, old session killed.
    cluster.admin_execute(&format!("ALTER ROLE app_a PASSWORD '{p2}'")).await;
    moto.put_secret_value(SECRET_ID, p2).await;
    feed.publish("m1", 20).await;
    terminate_service_backends(&cluster).await;
    feed.publish("m2", 20).await;
    feed.wait_until_written(&owner_url(&cluster), p2, "rows during and after the rotation").await;

    let log = stop_and_check_log(service, &[p1, p2]).await;
    assert!(log.contains("database secret changed"), "the rotation should be logged");
    feed.wait_until_written(&owner_url(&cluster), p2, "all rows, exactly once").await;
}

#[actix_rt::test]
async fn alternating_users_are_followed_without_restart() {
    let (pa, pb) = ("alt-A-5d1e88", "alt-B-0a9c34");
    let cluster = cluster_with_roles(pa, pb).await;
    let moto = MotoServer::start().await;
    let secret = |user: &str, password: &str| {
        format!(
            r#"{{"engine":"postgres","host":"127.0.0.1","username":"{user}","password":"{password}","dbname":"fleet"}}"#
        )
    };
    moto.create_secret(SECRET_ID, &secret("app_a", pa)).await;
    let mut feed = Feed::new().await;
    let config = aws_config(&cluster, &moto, &feed, "1s");
    let service = ServiceProcess::start_with_env(&config, &moto.aws_env(), true).await;
    feed.publish("m1", 10).await;
    feed.wait_until_written(&owner_url(&cluster), pa, "rows written as app_a").await;

    // AWS's alternating-users rotation: the secret now names the other user; both work.
    moto.put_secret_value(SECRET_ID, &secret("app_b", pb)).await;
    let admin = connect(&cluster.admin_url()).await;
    eventually(Duration::from_secs(30), "the service's connection to switch to app_b", || {
        let admin = &admin;
        async move {
            let users: Vec<String> = admin
                .query("SELECT usename::text FROM pg_stat_activity WHERE application_name = 'fleetagg'", &[])
                .await
                .map(|rows| rows.iter().map(|row| row.get(0)).collect())
                .unwrap_or_default();
            users == vec!["app_b".to_owned()]
        }
    })
    .await;
    feed.publish("m2", 10).await;
    feed.wait_until_written(&owner_url(&cluster), pa, "rows written as app_b").await;
    let log = stop_and_check_log(service, &[pa, pb]).await;
    assert!(log.contains("app_b"), "the new user should be logged");
}

#[actix_rt::test]
async fn a_wrong_secret_is_reported_and_rows_wait_until_it_is_fixed() {
    let (right, wrong) = ("fix-right-6b20f1", "fix-wrong-e3c9a7");
    let cluster = cluster_with_roles(right, "unused-b-77").await;
    let moto = MotoServer::start().await;
    moto.create_secret(SECRET_ID, wrong).await;
    let mut feed = Feed::new().await;
    let config = aws_config(&cluster, &moto, &feed, "1h");
    let service = ServiceProcess::start_with_env(&config, &moto.aws_env(), false).await;
    feed.publish("m1", 15).await;
    service.wait_for_log("password authentication failed", Duration::from_secs(20)).await;
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    let owner = connect(&format!("{} password={right}", owner_url(&cluster))).await;
    assert!(loading_rate(&owner).await.is_empty(), "nothing can be written with a wrong password");
    let warnings = service.log().matches("database write failed; rows kept").count();
    assert_eq!(warnings, 1, "a failing state is logged once, not at every attempt");

    moto.put_secret_value(SECRET_ID, right).await;
    feed.wait_until_written(&owner_url(&cluster), right, "rows once the secret is fixed").await;
    let log = stop_and_check_log(service, &[right, wrong]).await;
    assert!(log.contains("database writes recovered"), "recovery should be logged");
}

#[actix_rt::test]
async fn start_up_fails_clearly_when_the_secret_cannot_be_read() {
    let cluster = cluster_with_roles("never-used-1", "never-used-2").await;
    let moto = MotoServer::start().await;
    let feed = Feed::new().await;
    let config = aws_config(&cluster, &moto, &feed, "1h"); // the secret was never created
    let service = ServiceProcess::spawn_unchecked(&config, &moto.aws_env());
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(60)).await;
    assert!(!status.success(), "start-up must fail without a secret");
    let log = std::fs::read_to_string(log_path).expect("log");
    assert!(log.contains("database password could not be fetched"), "{log}");
    assert!(log.contains(SECRET_ID), "the error should name the secret: {log}");
}

#[actix_rt::test]
async fn a_rewritten_secret_file_is_followed() {
    let (p1, p2) = ("file-P1-44aa10", "file-P2-8e7d3b");
    let cluster = cluster_with_roles(p1, "unused-b-5c").await;
    let dir = std::env::temp_dir().join(unique("fleetagg_secret_file"));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("db-password");
    std::fs::write(&path, format!("{p1}\n")).expect("write secret");
    let mut feed = Feed::new().await;
    let config = format!(
        "{}\n[database.password]\nsource = \"file\"\npath = \"{}\"\nrefresh_interval = \"1h\"\n",
        service_config(&cluster.url_for("app_a", "fleet"), &feed.prefix, &unique("fleetagg"), "1s"),
        path.display()
    );
    let service = ServiceProcess::start_with_env(&config, &[], true).await;
    feed.publish("m1", 10).await;
    feed.wait_until_written(&owner_url(&cluster), p1, "rows with the first password").await;

    cluster.admin_execute(&format!("ALTER ROLE app_a PASSWORD '{p2}'")).await;
    std::fs::write(&path, format!("{p2}\n")).expect("rewrite secret");
    terminate_service_backends(&cluster).await;
    feed.publish("m1", 10).await;
    feed.wait_until_written(&owner_url(&cluster), p2, "rows after the file was rewritten").await;
    stop_and_check_log(service, &[p1, p2]).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[actix_rt::test]
async fn check_config_never_prints_a_secret() {
    let output = std::process::Command::new(fleetagg_integration_tests::fleetagg_bin())
        .arg("check-config")
        .env("FLEETAGG__DATABASE__PASSWORD__SOURCE", "env")
        .env("FLEETAGG__DATABASE__PASSWORD__VAR", "FLEETAGG_TEST_DB_PASSWORD")
        .env("FLEETAGG_TEST_DB_PASSWORD", "env-secret-0f1e2d")
        .output()
        .expect("run check-config");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("FLEETAGG_TEST_DB_PASSWORD"), "the source should be shown: {printed}");
    assert!(!printed.contains("env-secret-0f1e2d"), "check-config printed the password");
}
