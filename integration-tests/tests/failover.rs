//! Failover to a new primary: `database.url` lists a primary and its streaming standby
//! with `target_session_attrs=read-write`; the primary is stopped mid-stream and the
//! standby promoted. The writer keeps the rows while neither takes writes, reconnects to
//! whichever is the primary now, and `loading_rate` on it ends exact: nothing lost,
//! nothing written twice (a batch whose commit reached the old primary reached the
//! standby too, with its ledger entry, so its retry is recognised).

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, expected_rows, loading_rate, publish_samples, service_config, unique,
    wait_for_exact_rows, Publisher, ServiceProcess,
};
use std::time::Duration;

#[actix_rt::test]
async fn writes_follow_a_promoted_standby_and_stay_exact() {
    let primary = PgCluster::start_trust().await;
    primary.admin_execute("CREATE DATABASE fleet").await;
    let standby = PgCluster::start_standby_of(&primary).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/fleet?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let prefix = unique("failover");
    let config = service_config(&url, &prefix, &unique("fleetagg"), "1s");
    let service = ServiceProcess::start(&config).await;

    let publisher = Publisher::connect(&broker_url()).await;
    let start = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(4);
    let step = TimeDelta::milliseconds(450);
    let mut sent = publish_samples(&publisher, &prefix, 7, start, step, 200).await;
    // Rows are being written to the primary: fail over now, with more to come.
    let primary_client = connect(&primary.url_for("postgres", "fleet")).await;
    eventually(Duration::from_secs(30), "rows on the primary", || async {
        !loading_rate(&primary_client).await.is_empty()
    })
    .await;
    drop(primary_client);
    primary.stop();
    standby.promote();
    sent.extend(publish_samples(&publisher, &prefix, 7, start + step * 200, step, 200).await);

    let client = connect(&standby.url_for("postgres", "fleet")).await;
    wait_for_exact_rows(&client, &sent, "every row on the new primary").await;
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(status.success(), "{status}; log:\n{log}");
    // The failover cost the writer its connection (a write failed on it, or it was found
    // closed between writes), and it connected again, to the new primary.
    assert!(
        log.matches("connected to PostgreSQL").count() >= 2,
        "the writer should have reconnected:\n{log}"
    );
    assert_eq!(loading_rate(&client).await, expected_rows(&sent), "still exact after the stop");
}
