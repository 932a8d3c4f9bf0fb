//! The least privilege `run` needs: the tables' owner applies the schema once
//! (`fleetagg migrate`), and the service runs as a role that may only read and write rows
//! (docs/operations.md lists the grants). A current schema is only read at connect time,
//! so no CREATE right is needed then.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, expected_rows, fleetagg_bin, loading_rate, publish_samples,
    rejection_reasons, service_config, unique, Publisher, ServiceProcess,
};
use std::time::Duration;

/// The grants docs/operations.md gives for the role `run` uses.
const WRITER_GRANTS: &str = "
    CREATE ROLE fleetagg_writer LOGIN;
    GRANT SELECT, INSERT, UPDATE ON loading_rate TO fleetagg_writer;
    GRANT INSERT ON rejected_message TO fleetagg_writer;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO fleetagg_writer;
    GRANT SELECT, INSERT, DELETE ON fleetagg_applied_batch TO fleetagg_writer;
    GRANT SELECT ON fleetagg_schema_migrations TO fleetagg_writer;";

#[actix_rt::test]
async fn run_works_with_a_role_that_may_only_write_rows() {
    let cluster = PgCluster::start_trust().await;
    cluster.admin_execute("CREATE DATABASE fleet").await;
    let owner_config = std::env::temp_dir().join(unique("fleetagg_migrate.toml"));
    std::fs::write(
        &owner_config,
        format!("[database]\nurl = \"{}\"\n", cluster.url_for("postgres", "fleet")),
    )
    .expect("write the migrate config");
    let migrated = std::process::Command::new(fleetagg_bin())
        .args(["migrate", "--config"])
        .arg(&owner_config)
        .output()
        .expect("run fleetagg migrate");
    assert!(migrated.status.success(), "migrate as the owner: {}", String::from_utf8_lossy(&migrated.stderr));
    let owner = connect(&cluster.url_for("postgres", "fleet")).await;
    owner.batch_execute(WRITER_GRANTS).await.expect("grant the writer role its rights");

    let prefix = unique("grants");
    let config =
        service_config(&cluster.url_for("fleetagg_writer", "fleet"), &prefix, &unique("fleetagg"), "1s");
    let service = ServiceProcess::start(&config).await;
    let publisher = Publisher::connect(&broker_url()).await;
    let start = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(3);
    let sent = publish_samples(&publisher, &prefix, 3, start, TimeDelta::seconds(4), 30).await;
    publisher.publish(&format!("{prefix}/m0/telemetry"), "not json").await;
    let expected = expected_rows(&sent);
    eventually(Duration::from_secs(30), "every row and the rejection, as the limited role", || {
        let (owner, expected) = (&owner, &expected);
        async move { loading_rate(owner).await == *expected && rejection_reasons(owner).await == ["malformed"] }
    })
    .await;
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(!log.contains("permission denied"), "{log}");
    // This private cluster offers no TLS, and the default mode is `prefer`: said once
    // per connection.
    assert!(log.contains("PostgreSQL connection is not encrypted"), "{log}");
}
