//! A broker connection that fails says why, in the log (once, when the cause starts) and
//! in `/readyz`: a refused login is not "unreachable", a closed port is.

use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    broker_url, eventually, http_get, service_config, unique, ServiceProcess, TestDatabase,
};
use std::time::Duration;

fn config(db: &TestDatabase, broker: &str, metrics: &PortLease, extra_mqtt: &str) -> String {
    service_config(&db.url, &unique("broker_errors"), &unique("fleetagg"), "1s")
        .replace(&broker_url(), broker)
        .replace("max_payload_bytes", &format!("{extra_mqtt}max_payload_bytes"))
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", metrics.port()))
}

async fn says_why(service: &ServiceProcess, metrics: &PortLease, cause: &str) {
    service.wait_for_log(cause, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(20), "/readyz with the cause", || async {
        let (status, body) = http_get(metrics.port(), "/readyz").await;
        status == 503 && body.contains(&format!("not subscribed to the MQTT broker: {cause}"))
    })
    .await;
}

#[actix_rt::test]
async fn a_refused_login_is_named_as_such_once() {
    let broker = MosquittoBroker::start_with_password("fleet", "right-password").await;
    let db = TestDatabase::create().await;
    let metrics = PortLease::acquire();
    let mqtt =
        "username = \"fleet\"\npassword = { source = \"env\", var = \"FLEETAGG_TEST_MQTT_PASSWORD\" }\n";
    let env = [("FLEETAGG_TEST_MQTT_PASSWORD".to_owned(), "wrong-password".to_owned())];
    let service = ServiceProcess::spawn_unchecked(&config(&db, &broker.url(), &metrics, mqtt), &env);
    // Mosquitto answers a wrong password with "not authorized" (CONNACK 5).
    says_why(&service, &metrics, "login refused: not authorized").await;
    // paho retries at 1 s and 3 s: both refused again, logged once.
    actix_rt::time::sleep(Duration::from_secs(4)).await;
    let log = service.log();
    assert_eq!(log.matches("the MQTT broker refused the connection").count(), 1, "{log}");
    assert!(!log.contains("unreachable") && !log.contains("(0)"), "{log}");
}

#[actix_rt::test]
async fn a_closed_port_is_named_unreachable() {
    let db = TestDatabase::create().await;
    let (closed, metrics) = (PortLease::acquire(), PortLease::acquire());
    let url = format!("tcp://127.0.0.1:{}", closed.port());
    let service = ServiceProcess::spawn_unchecked(&config(&db, &url, &metrics, ""), &[]);
    says_why(&service, &metrics, &format!("connection refused by 127.0.0.1:{}", closed.port())).await;
    assert!(service.log().contains("MQTT broker unreachable; retrying with back-off"), "{}", service.log());
}
