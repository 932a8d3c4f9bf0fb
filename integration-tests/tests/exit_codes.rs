//! Start-up failures exit with a code that tells a process manager whether to try again:
//! 75 when a later start may succeed without a change (the secret is not there yet), 1
//! for a configuration error.

use fleetagg_integration_tests::{service_config, unique, ServiceProcess, TestDatabase};
use std::time::Duration;

#[actix_rt::test]
async fn a_secret_that_cannot_be_fetched_at_start_up_exits_75() {
    let db = TestDatabase::create().await;
    let missing = std::env::temp_dir().join(unique("no_such_secret"));
    let config = service_config(&db.url, &unique("exit"), &unique("fleetagg"), "1s")
        + &format!("\n[database.password]\nsource = \"file\"\npath = \"{}\"\n", missing.display());
    let service = ServiceProcess::spawn_unchecked(&config, &[]);
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(75), "log:\n{log}");
    assert!(log.contains("start-up failed; a later start may succeed"), "{log}");
}

#[actix_rt::test]
async fn a_configuration_error_exits_1() {
    let config =
        service_config("postgres://fleetagg@127.0.0.1:5432/x", &unique("exit"), &unique("fleetagg"), "1s")
            .replace("max_payload_bytes = 1024", "max_payload_bytes = \"many\"");
    let service = ServiceProcess::spawn_unchecked(&config, &[]);
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(1));
}
