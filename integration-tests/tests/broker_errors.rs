//! A broker connection that fails says why, in the log (once, when the cause starts) and
//! in `/readyz`: a refused login is not "unreachable", a closed port is, and a refused
//! subscription is named with its filter, at start-up and after a reconnect.

use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::scripted_broker::ScriptedBroker;
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

/// A SUBACK that refuses the filter at start-up fails start-up (exit 75: an ACL can be
/// fixed, a restart may then work), naming the filter.
#[actix_rt::test]
async fn a_subscription_refused_at_start_up_fails_it_naming_the_filter() {
    let broker = ScriptedBroker::start(true);
    let db = TestDatabase::create().await;
    let metrics = PortLease::acquire();
    let service = ServiceProcess::spawn_unchecked(&config(&db, &broker.url(), &metrics, ""), &[]);
    let log_path = service.log_path.clone();
    let status = service.wait_exit(Duration::from_secs(60)).await;
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    assert_eq!(status.code(), Some(75), "{log}");
    assert!(log.contains("cannot subscribe to") && log.contains("(code 0x80)"), "{log}");
    assert_eq!(broker.subscriptions(), (0, 1));
}

/// After a reconnect the subscription is made again and its SUBACK checked: a refusal is
/// logged once and shown in `/readyz`, the service stays connected and subscribes again
/// with back-off, and recovers when the broker grants it.
#[actix_rt::test]
async fn a_subscription_refused_after_a_reconnect_is_reported_and_retried() {
    let broker = ScriptedBroker::start(false);
    let db = TestDatabase::create().await;
    let metrics = PortLease::acquire();
    let service = ServiceProcess::spawn_unchecked(&config(&db, &broker.url(), &metrics, ""), &[]);
    service.wait_for_log("fleetagg running", Duration::from_secs(30)).await;
    assert_eq!(broker.subscriptions(), (1, 0));

    broker.refuse_subscriptions(true);
    broker.drop_connections();
    service.wait_for_log("did not grant the subscription", Duration::from_secs(30)).await;
    eventually(Duration::from_secs(20), "/readyz naming the refused filter", || async {
        let (status, body) = http_get(metrics.port(), "/readyz").await;
        status == 503
            && body.contains("not subscribed to the MQTT broker: subscription to")
            && body.contains("/+/telemetry (code 0x80)")
    })
    .await;
    // Refused again at the retries (1 s, 2 s), logged once.
    eventually(Duration::from_secs(20), "a second refused SUBSCRIBE", || async {
        broker.subscriptions().1 >= 2
    })
    .await;
    assert_eq!(service.log().matches("did not grant the subscription").count(), 1, "{}", service.log());

    broker.refuse_subscriptions(false);
    service.wait_for_log("the MQTT subscription works again", Duration::from_secs(40)).await;
    eventually(Duration::from_secs(10), "/readyz without the cause", || async {
        !http_get(metrics.port(), "/readyz").await.1.contains("not subscribed")
    })
    .await;
    assert_eq!(broker.subscriptions().0, 2, "granted at start-up and after the refusals");
    assert!(service.log().contains("connection to the MQTT broker lost"), "{}", service.log());
}
