//! The test infrastructure itself: a private PostgreSQL cluster really checks SCRAM
//! passwords (unlike the machine's trusting server) and survives stop/start, and the local
//! moto Secrets Manager stores and rotates secret values. The secret-rotation tests rely
//! on both; if these fail, fix the helpers before reading anything into those. Ports are
//! leased so that a stopped server gets its port back.

use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::moto::MotoServer;
use fleetagg_integration_tests::ports::PortLease;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tokio_postgres::error::SqlState;

/// Connects with `url` and, if given, `password`; the connection task runs on actix_rt.
async fn try_connect(
    url: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = url.parse().expect("cluster URL parses");
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    actix_rt::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn current_user(client: &tokio_postgres::Client) -> String {
    client.query_one("SELECT current_user::text", &[]).await.expect("SELECT current_user").get(0)
}

fn port_is_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(500)).is_ok()
}

#[actix_rt::test]
async fn scram_cluster_checks_passwords_and_restarts() {
    let cluster = PgCluster::start_scram().await;
    cluster.admin_execute("CREATE ROLE app LOGIN PASSWORD 'p1'").await;

    // Stored as a SCRAM verifier, not md5 or plain text.
    let admin = fleetagg_integration_tests::connect(&cluster.admin_url()).await;
    let stored: String = admin
        .query_one("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'", &[])
        .await
        .expect("read the stored password")
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "stored as {stored:?}");
    drop(admin);

    let url = cluster.url_for("app", "postgres");
    assert_eq!(url, format!("postgres://app@127.0.0.1:{}/postgres", cluster.port));

    // No password: the server asks for one, so the client cannot even answer.
    let err = try_connect(&url, None).await.expect_err("a login without password must be refused");
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(cause.as_deref(), Some("password missing"), "unexpected error without password: {err:?}");

    // Wrong password: refused by the server with invalid_password (28P01).
    let err =
        try_connect(&url, Some("wrong")).await.expect_err("a login with a wrong password must be refused");
    assert_eq!(
        err.code(),
        Some(&SqlState::INVALID_PASSWORD),
        "unexpected error with a wrong password: {err}"
    );
    assert!(
        cluster.log().contains("password authentication failed for user \"app\""),
        "server log:\n{}",
        cluster.log()
    );

    // Right password: accepted.
    let client = try_connect(&url, Some("p1")).await.expect("the right password is accepted");
    assert_eq!(current_user(&client).await, "app");

    // stop() ends sessions and closes the port; start() brings it back on the same port.
    cluster.stop();
    assert!(client.query_one("SELECT 1", &[]).await.is_err(), "the session survived stop()");
    assert!(!port_is_open(cluster.port), "port open after stop()");
    assert!(try_connect(&url, Some("p1")).await.is_err());
    cluster.start();
    let client = try_connect(&url, Some("p1")).await.expect("the right password is accepted after a restart");
    assert_eq!(current_user(&client).await, "app");
    drop(client);

    // Drop stops the server: nothing keeps listening.
    let port = cluster.port;
    drop(cluster);
    assert!(!port_is_open(port), "the cluster still runs after drop");
}

#[actix_rt::test]
async fn moto_stores_and_rotates_secret_values() {
    let moto = MotoServer::start().await;
    let name = "fleetagg/test/db";
    moto.create_secret(name, "p1").await;

    let client = moto.client().await;
    let read = |client: aws_sdk_secretsmanager::Client| async move {
        client
            .get_secret_value()
            .secret_id(name)
            .send()
            .await
            .expect("GetSecretValue")
            .secret_string()
            .map(str::to_owned)
    };
    assert_eq!(read(client.clone()).await.as_deref(), Some("p1"));

    moto.put_secret_value(name, r#"{"username":"app","password":"p2"}"#).await;
    assert_eq!(read(client.clone()).await.as_deref(), Some(r#"{"username":"app","password":"p2"}"#));

    // The previous value is still there as AWSPREVIOUS, as after an AWS rotation.
    let previous = client
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSPREVIOUS")
        .send()
        .await
        .expect("GetSecretValue AWSPREVIOUS");
    assert_eq!(previous.secret_string(), Some("p1"));

    let env = moto.aws_env();
    for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"] {
        assert!(env.iter().any(|(k, _)| k == key), "{key} missing: {env:?}");
    }

    // Drop kills the server.
    let port: u16 = moto
        .endpoint
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("endpoint ends with the port");
    drop(moto);
    assert!(!port_is_open(port), "moto still runs after drop");
}

#[test]
fn leased_ports_are_never_handed_out_as_ephemeral_ones() {
    let leases: Vec<PortLease> = (0..20).map(|_| PortLease::acquire()).collect();
    let mut leased: Vec<u16> = leases.iter().map(PortLease::port).collect();
    leased.sort_unstable();
    leased.dedup();
    assert_eq!(leased.len(), leases.len(), "each lease is a port of its own");
    // What took a stopped broker's port in CI: a listener on port 0. Ask for many.
    let listeners: Vec<std::net::TcpListener> = (0..2000)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    for listener in &listeners {
        let port = listener.local_addr().expect("local address").port();
        assert!(!leased.contains(&port), "the kernel handed out leased port {port}");
    }
}

#[test]
fn a_taken_port_is_reported_as_taken() {
    let lease = PortLease::acquire();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", lease.port())).expect("bind the leased port");
    let failure = std::panic::catch_unwind(|| lease.assert_bindable("a test server"))
        .expect_err("a port someone listens on is not bindable");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains(&format!("port {} for a test server was taken", lease.port())), "{message}");
    drop(squatter);
    lease.assert_bindable("a test server");
}

#[actix_rt::test]
async fn a_stopped_broker_gets_its_port_back_while_ephemeral_ports_are_taken() {
    let broker = MosquittoBroker::start().await;
    broker.stop();
    assert!(!port_is_open(broker.port), "the broker stopped");
    let listeners: Vec<std::net::TcpListener> = (0..2000)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    broker.resume().await;
    assert!(port_is_open(broker.port), "the broker listens on its port again");
    drop(listeners);
}
