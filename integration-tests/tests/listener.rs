//! The monitoring listener under abuse and at the edges of HTTP: a thousand idle
//! connections neither lock `/healthz` out nor take the descriptors the MQTT and database
//! reconnects need; other methods get `405` with `Allow`; `HEAD` gets the headers only;
//! an idle connection is closed after the header timeout.

use fleetagg_actors::monitoring::{HEADER_TIMEOUT, MAX_CONNECTIONS};
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::{
    admin_execute, broker_url, eventually, http_get, http_raw, metric, service_config, unique,
    ServiceProcess, TestDatabase,
};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn with_port(config: &str, port: u16) -> String {
    config.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{port}\""))
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

async fn metric_value(port: u16, series: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics").await;
    metric(&text, series).unwrap_or(-1.0)
}

#[actix_rt::test]
async fn a_thousand_idle_connections_neither_lock_out_healthz_nor_stop_reconnects() {
    let broker = MosquittoBroker::start().await;
    let db = TestDatabase::create().await;
    let lease = PortLease::acquire();
    let port = lease.port();
    let config = service_config(&db.url, &unique("flood"), &unique("fleetagg"), "1s")
        .replace(&broker_url(), &broker.url());
    let service = ServiceProcess::start(&with_port(&config, port)).await;
    let before = open_descriptors(service.pid());
    assert!(before > 0, "cannot read /proc/{}/fd", service.pid());

    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.expect("connect"));
    }
    // Every one of them is still open on this side; the probe comes on top.
    let asked = Instant::now();
    assert_eq!(http_get(port, "/healthz").await, (200, "ok\n".to_owned()));
    assert!(asked.elapsed() < Duration::from_secs(2), "/healthz took {:?}", asked.elapsed());
    let during = open_descriptors(service.pid());
    assert!(
        during <= before + MAX_CONNECTIONS + 2,
        "{during} descriptors open during the flood, {before} before: the cap ({MAX_CONNECTIONS}) does not hold"
    );

    // The broker restarts and the writer's connection is killed while the flood is held:
    // both come back.
    broker.stop();
    eventually(Duration::from_secs(20), "the service notices the broker is gone", || async {
        metric_value(port, "fleetagg_mqtt_connected").await == 0.0
    })
    .await;
    broker.resume().await;
    let connects = metric_value(port, "fleetagg_db_connects_total").await;
    admin_execute(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ))
    .await;
    eventually(Duration::from_secs(40), "MQTT and PostgreSQL reconnected, and ready", || async {
        metric_value(port, "fleetagg_mqtt_subscribed").await == 1.0
            && metric_value(port, "fleetagg_db_connects_total").await > connects
            && http_get(port, "/readyz").await.0 == 200
    })
    .await;
    drop(idle);
    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}

#[actix_rt::test]
async fn only_get_and_head_are_served_and_idle_connections_are_closed() {
    let db = TestDatabase::create().await;
    let lease = PortLease::acquire();
    let port = lease.port();
    let config = service_config(&db.url, &unique("methods"), &unique("fleetagg"), "1s");
    let service = ServiceProcess::start(&with_port(&config, port)).await;

    for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let response = http_raw(
            port,
            &format!(
                "{method} /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 405 "), "{method}: {response}");
        assert!(response.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{method}: {response}");
    }

    let get = http_raw(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    let head = http_raw(port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(get.starts_with("HTTP/1.1 200 ") && get.ends_with("\r\n\r\nok\n"), "{get}");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\ncontent-length: 3\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD must carry no body: {head:?}");

    // Keep-alive: two requests on one connection, then silence until the server closes it.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let opened = Instant::now();
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(HEADER_TIMEOUT + Duration::from_secs(5), stream.read_to_end(&mut received))
            .await;
    assert!(read.is_ok(), "an idle connection stayed open past {HEADER_TIMEOUT:?}");
    let text = String::from_utf8_lossy(&received);
    assert_eq!(text.matches("HTTP/1.1 200 ").count(), 2, "{text}");
    assert!(
        opened.elapsed() >= HEADER_TIMEOUT - Duration::from_secs(1),
        "closed after {:?}",
        opened.elapsed()
    );

    let status = service.terminate(Duration::from_secs(30)).await;
    assert!(status.success());
}
