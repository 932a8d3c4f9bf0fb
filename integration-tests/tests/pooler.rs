//! fleetagg behind a transaction pooler (a private PgBouncer in `pool_mode = transaction`
//! with several server connections handed out in turn): with `database.statements` =
//! `auto` (it falls back to unnamed statements) and `unnamed`, one and then two instances
//! on a shared subscription, `loading_rate` is exact; with `prepared` the writer says
//! which setting to change instead of restarting in a loop.

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::pgbouncer::PgBouncer;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, publish_samples, service_config, unique, wait_for_exact_rows, Publisher,
    SentSample, ServiceProcess,
};
use std::time::Duration;

/// A service through `bouncer` with `statements`, small batches (many statements, so
/// many server connections), on `prefix`'s topics, optionally in a shared group.
fn config(bouncer: &PgBouncer, prefix: &str, statements: &str, group: Option<&str>) -> String {
    config_with_batches(bouncer, prefix, statements, group, 3)
}

fn config_with_batches(
    bouncer: &PgBouncer,
    prefix: &str,
    statements: &str,
    group: Option<&str>,
    batch_max_rows: usize,
) -> String {
    let mut text = service_config(&bouncer.url_for("fleet"), prefix, &unique("fleetagg"), "1s").replace(
        "flush_interval = \"200ms\"",
        &format!(
            "flush_interval = \"200ms\"\nbatch_max_rows = {batch_max_rows}\nstatements = \"{statements}\""
        ),
    );
    if let Some(group) = group {
        text = text.replace("max_payload_bytes", &format!("shared_group = \"{group}\"\nmax_payload_bytes"));
    }
    text
}

/// Publishes `count` samples of 12 machines over the last three closed minutes.
async fn publish(prefix: &str, count: usize) -> Vec<SentSample> {
    publish_machines(prefix, 12, count).await
}

async fn publish_machines(prefix: &str, machines: usize, count: usize) -> Vec<SentSample> {
    let publisher = Publisher::connect(&broker_url()).await;
    let start = Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(4);
    let step = TimeDelta::milliseconds(180_000 / i64::try_from(count).expect("small"));
    publish_samples(&publisher, prefix, machines, start, step, count).await
}

/// Rows known new go by `COPY` in a transaction with the ledger entry, which a
/// transaction pooler passes whole. Two instances on one shared subscription both see
/// every machine's minutes as new, so one `COPY` meets the other's rows: it is upserted
/// instead, and the rows stay exact.
#[actix_rt::test]
async fn copy_through_the_pooler_with_two_instances_keeps_every_row_exact() {
    for statements in ["auto", "unnamed"] {
        let (cluster, bouncer) = pooled_cluster().await;
        let prefix = unique(&format!("pooler_copy_{statements}"));
        let group = unique("group");
        let first =
            ServiceProcess::start(&config_with_batches(&bouncer, &prefix, statements, Some(&group), 5000))
                .await;
        let second =
            ServiceProcess::start(&config_with_batches(&bouncer, &prefix, statements, Some(&group), 5000))
                .await;
        // An odd number of machines: messages alternate between the instances, so each
        // machine's samples (one every 399 messages) reach both.
        let sent = publish_machines(&prefix, 399, 2394).await;
        assert_rows_exact(&cluster, &sent, &format!("every row, COPY from two instances ({statements})"))
            .await;
        let logs = [stopped_log(first).await, stopped_log(second).await];
        assert_rows_exact(&cluster, &sent, &format!("still exact after both stopped ({statements})")).await;
        assert!(
            logs.iter().any(|log| log.contains(COPY_MET_A_ROW)),
            "one instance's COPY should have met the other's rows ({statements}):\n{}",
            logs.join("\n----\n")
        );
    }
}

/// Logged when a `COPY` of rows known new met an existing one.
const COPY_MET_A_ROW: &str = "rows known new existed already";

async fn stopped_log(service: ServiceProcess) -> String {
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert!(status.success(), "fleetagg exited with {status}; log:\n{log}");
    log
}

async fn pooled_cluster() -> (PgCluster, PgBouncer) {
    let cluster = PgCluster::start_trust().await;
    cluster.admin_execute("CREATE DATABASE fleet").await;
    let bouncer = PgBouncer::start_transaction_pooling(cluster.port, "fleet").await;
    // The pool exists once a client has logged in; then PgBouncer opens its three server
    // connections. Only with several open does each transaction get another one.
    let through_pooler = connect(&bouncer.url_for("fleet")).await;
    through_pooler.simple_query("SELECT 1").await.expect("a query through the pooler");
    let admin = connect(&cluster.admin_url()).await;
    eventually(Duration::from_secs(30), "three server connections from the pooler", || {
        let admin = &admin;
        async move {
            let row = admin
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = 'fleet'", &[])
                .await
                .expect("count the pooler's server connections");
            row.get::<_, i64>(0) >= 3
        }
    })
    .await;
    (cluster, bouncer)
}

async fn assert_rows_exact(cluster: &PgCluster, sent: &[SentSample], what: &str) {
    let client = connect(&cluster.url_for("postgres", "fleet")).await;
    wait_for_exact_rows(&client, sent, what).await;
}

#[actix_rt::test]
async fn auto_falls_back_to_unnamed_statements_and_writes_every_row_exactly() {
    let (cluster, bouncer) = pooled_cluster().await;
    let prefix = unique("pooler_auto");
    let service = ServiceProcess::start(&config(&bouncer, &prefix, "auto", None)).await;
    let sent = publish(&prefix, 240).await;
    assert_rows_exact(&cluster, &sent, "every row through the pooler in auto").await;
    let log = stopped_log(service).await;
    assert!(log.contains("sending statements unnamed from now on"), "auto should have fallen back:\n{log}");
    // One restart (a fresh connection at the switch), no loop.
    assert!(log.matches("writer restarted by its supervisor").count() <= 1, "no restart loop:\n{log}");
}

/// Two instances with `statements` through the pooler on a shared subscription, so their
/// statements meet on the same server connections, names included (tokio-postgres numbers
/// a process's prepared statements `s0`, `s1`, …); returns both logs once `loading_rate`
/// is exact, checked before and after both stopped.
async fn two_instances_share_a_subscription_exactly(statements: &str) -> [String; 2] {
    let (cluster, bouncer) = pooled_cluster().await;
    let prefix = unique(&format!("pooler_two_{statements}"));
    let group = unique("group");
    let first = ServiceProcess::start(&config(&bouncer, &prefix, statements, Some(&group))).await;
    let second = ServiceProcess::start(&config(&bouncer, &prefix, statements, Some(&group))).await;
    let sent = publish(&prefix, 240).await;
    assert_rows_exact(
        &cluster,
        &sent,
        &format!("every row from two instances through the pooler ({statements})"),
    )
    .await;
    let logs = [stopped_log(first).await, stopped_log(second).await];
    assert_rows_exact(&cluster, &sent, &format!("still exact after both stopped ({statements})")).await;
    logs
}

#[actix_rt::test]
async fn two_instances_with_unnamed_statements_share_a_subscription_exactly() {
    for log in two_instances_share_a_subscription_exactly("unnamed").await {
        assert!(!log.contains("database write failed"), "unnamed statements pass any pooler:\n{log}");
    }
}

#[actix_rt::test]
async fn two_instances_in_auto_fall_back_and_share_a_subscription_exactly() {
    let logs = two_instances_share_a_subscription_exactly("auto").await;
    // Which instance meets a refused statement depends on the pooler's turns (one may
    // even find the other's statement of the same name and SQL, and run it), but with
    // three server connections and a dozen batches at least one of them must.
    assert!(
        logs.iter().any(|log| log.contains("sending statements unnamed from now on")),
        "auto should have fallen back in at least one instance:\n{}",
        logs.join("\n----\n")
    );
    for log in &logs {
        assert!(log.matches("writer restarted by its supervisor").count() <= 1, "no restart loop:\n{log}");
    }
}

#[actix_rt::test]
async fn prepared_statements_behind_a_transaction_pooler_name_the_setting_to_change() {
    let (_cluster, bouncer) = pooled_cluster().await;
    let prefix = unique("pooler_prepared");
    let text = config(&bouncer, &prefix, "prepared", None) + "\n[service]\nshutdown_timeout = \"2s\"\n";
    let service = ServiceProcess::start(&text).await;
    publish(&prefix, 60).await;
    service.wait_for_log(r#"set database.statements = "auto" or "unnamed""#, Duration::from_secs(60)).await;
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(3), "the rows could not be written; log:\n{log}");
    assert!(!log.contains("writer restarted by its supervisor"), "a fatal error is no restart loop:\n{log}");
}
