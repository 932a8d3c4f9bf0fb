//! No secret in anything the service prints, at the most verbose log level there is.
//!
//! Each test runs the real `fleetagg` with `RUST_LOG=trace` (which also turns on paho's C
//! trace and every dependency's trace events) through one way a secret reaches it: the
//! database password from a file, from an environment variable and from AWS Secrets
//! Manager (moto), each with a refused login and a rotation; the MQTT broker password
//! (a private Mosquitto that checks it), also a wrong one and a rotation; and secrets put where they do
//! not belong, in the file and in the environment. Then it searches standard output and
//! standard error for every secret used, as text and in the forms a `{:?}` of its bytes
//! takes (paho once logged its connect options so).

use chrono::{DurationRound, TimeDelta, Utc};
use fleetagg_integration_tests::cluster::PgCluster;
use fleetagg_integration_tests::mosquitto::MosquittoBroker;
use fleetagg_integration_tests::moto::MotoServer;
use fleetagg_integration_tests::{
    broker_url, connect, eventually, fleetagg_bin, unique, ServiceProcess, TestDatabase,
};
use std::path::PathBuf;
use std::time::Duration;

/// Panics, naming the form found, when `output` contains `secret` in any form we know.
fn assert_absent(output: &str, secret: &str, what: &str) {
    let bytes = secret.as_bytes();
    let decimal = bytes.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
    let hex_list = bytes.iter().map(|byte| format!("{byte:x}")).collect::<Vec<_>>().join(", ");
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    for (form, needle) in
        [("text", secret), ("decimal bytes", &decimal), ("hex bytes", &hex_list), ("hex", &hex)]
    {
        assert!(
            !output.contains(needle),
            "{what}: the output contains a secret ({secret}) as {form}; the lines:\n{}",
            output.lines().filter(|line| line.contains(needle)).collect::<Vec<_>>().join("\n")
        );
    }
}

fn assert_no_secrets(output: &str, secrets: &[&str]) {
    assert!(output.contains("TRACE"), "the output should be at trace level");
    for secret in secrets {
        assert_absent(output, secret, "fleetagg");
    }
}

/// Stops the service and returns everything it printed.
async fn stop(service: ServiceProcess) -> String {
    let log_path = service.log_path.clone();
    let status = service.terminate(Duration::from_secs(60)).await;
    let output = std::fs::read_to_string(&log_path).expect("service output");
    assert!(status.success(), "fleetagg exited with {status}; the end of its output:\n{}", tail(&output));
    output
}

fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A scram cluster with database `fleet` owned by `app_a`.
async fn cluster_with_owner(password: &str) -> PgCluster {
    let cluster = PgCluster::start_scram().await;
    cluster.admin_execute(&format!("CREATE ROLE app_a LOGIN PASSWORD '{password}'")).await;
    cluster.admin_execute("CREATE DATABASE fleet OWNER app_a").await;
    cluster
}

/// Publishes telemetry for one machine on the machine's shared broker.
struct Feed {
    client: paho_mqtt::AsyncClient,
    prefix: String,
    sent: usize,
}

impl Feed {
    async fn connect(url: &str, credentials: Option<(&str, &str)>) -> Feed {
        let client = paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(url)
            .client_id(unique("it_secrets_publisher"))
            .persistence(paho_mqtt::PersistenceType::None)
            .create_client()
            .expect("mqtt client");
        let mut options = paho_mqtt::ConnectOptionsBuilder::new();
        options.clean_session(true);
        if let Some((user, password)) = credentials {
            options.user_name(user).password(password);
        }
        client
            .connect(options.finalize())
            .await
            .unwrap_or_else(|err| panic!("publisher cannot connect to {url}: {err}"));
        Feed { client, prefix: unique("secrets_logs"), sent: 0 }
    }

    /// `count` samples in a minute long closed (they are written at once), each its own.
    async fn publish(&mut self, count: usize) {
        let minute =
            Utc::now().duration_trunc(TimeDelta::minutes(1)).expect("truncate") - TimeDelta::minutes(5);
        for _ in 0..count {
            let ts = minute + TimeDelta::milliseconds(100 * self.sent as i64);
            let payload =
                format!(r#"{{"machine":"m1","ts":"{}","load_rate":1,"mileage":1}}"#, ts.to_rfc3339());
            let topic = format!("{}/m1/telemetry", self.prefix);
            self.client.publish(paho_mqtt::Message::new(topic, payload, 1)).await.expect("publish (QoS 1)");
            self.sent += 1;
        }
    }

    /// Waits until every sample published so far is in `loading_rate`, read through `url`.
    async fn wait_until_written(&self, url: &str, what: &str) {
        let client = connect(url).await;
        let expected = i64::try_from(self.sent).expect("count");
        eventually(Duration::from_secs(60), what, || {
            let client = &client;
            async move {
                let written: Option<i64> = client
                    .query_one("SELECT COALESCE(SUM(samples), 0)::bigint FROM loading_rate", &[])
                    .await
                    .ok()
                    .map(|row| row.get(0));
                written == Some(expected)
            }
        })
        .await;
    }
}

/// A service configuration: its own client id and topics, minutes closed quickly.
fn config(mqtt_url: &str, mqtt_extra: &str, database_url: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{mqtt_url}"
client_id = "{client_id}"
topics = ["{prefix}/+/telemetry"]
{mqtt_extra}

[aggregation]
tick = "100ms"
grace = "1s"

[database]
url = "{database_url}"
flush_interval = "200ms"

[metrics]
listen = "off"
{extra}"#,
        client_id = unique("fleetagg")
    )
}

fn temp_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("fleetagg_secrets_logs"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

fn owner_url(cluster: &PgCluster, password: &str) -> String {
    format!("host=127.0.0.1 port={} user=app_a dbname=fleet password={password}", cluster.port)
}

async fn terminate_service_backends(cluster: &PgCluster) {
    cluster
        .admin_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleetagg'",
        )
        .await;
}

#[actix_rt::test]
async fn database_password_from_a_file_refused_then_rotated() {
    let (wrong, p1, p2) = ("Fw1-wrong-9d3a7e", "Fp1-first-4c81b2", "Fp2-second-e07f55");
    let cluster = cluster_with_owner(p1).await;
    let secret_file = temp_file("db-password", &format!("{wrong}\n"));
    let mut feed = Feed::connect(&broker_url(), None).await;
    let password_section = format!(
        "[database.password]\nsource = \"file\"\npath = \"{}\"\nrefresh_interval = \"1h\"\n",
        secret_file.display()
    );
    let toml = config(&broker_url(), "", &cluster.url_for("app_a", "fleet"), &feed.prefix, &password_section);
    let service = ServiceProcess::spawn_with_rust_log(&toml, &[], "trace");
    service.wait_for_log("fleetagg running", Duration::from_secs(60)).await;

    // A refused login: the file holds a wrong password.
    feed.publish(5).await;
    service.wait_for_log("password authentication failed", Duration::from_secs(30)).await;
    std::fs::write(&secret_file, format!("{p1}\n")).expect("fix the secret");
    feed.wait_until_written(&owner_url(&cluster, p1), "rows once the file is right").await;

    // A rotation: new password on the role and in the file, the old session killed.
    cluster.admin_execute(&format!("ALTER ROLE app_a PASSWORD '{p2}'")).await;
    std::fs::write(&secret_file, format!("{p2}\n")).expect("rotate the secret");
    terminate_service_backends(&cluster).await;
    feed.publish(5).await;
    feed.wait_until_written(&owner_url(&cluster, p2), "rows after the rotation").await;

    let output = stop(service).await;
    assert!(output.contains("database secret changed"), "the rotation should be logged");
    assert_no_secrets(&output, &[wrong, p1, p2]);
}

#[actix_rt::test]
async fn database_password_from_an_environment_variable() {
    let password = "Ev1-env-pw-3b9f0c";
    let cluster = cluster_with_owner(password).await;
    let mut feed = Feed::connect(&broker_url(), None).await;
    let password_section = "[database.password]\nsource = \"env\"\nvar = \"FLEETAGG_IT_DB_PASSWORD\"\n";
    let toml = config(&broker_url(), "", &cluster.url_for("app_a", "fleet"), &feed.prefix, password_section);
    let env = [("FLEETAGG_IT_DB_PASSWORD".to_owned(), password.to_owned())];
    let service = ServiceProcess::spawn_with_rust_log(&toml, &env, "trace");
    service.wait_for_log("fleetagg running", Duration::from_secs(60)).await;
    feed.publish(5).await;
    feed.wait_until_written(&owner_url(&cluster, password), "rows with the password from the environment")
        .await;
    let output = stop(service).await;
    assert_no_secrets(&output, &[password]);
}

#[actix_rt::test]
async fn database_password_from_aws_secrets_manager_refused_then_rotated() {
    let (wrong, p1, p2) = ("Aw1-wrong-71c0de", "Ap1-first-5e2b94", "Ap2-second-a8d613");
    // The AWS secret access key is a secret too (moto accepts any).
    let aws_secret_key = "Ak1-aws-secret-key-0f6c2e";
    let secret_id = "fleetagg/logs-test";
    let rotation_secret = |password: &str| {
        format!(r#"{{"engine":"postgres","host":"127.0.0.1","username":"app_a","password":"{password}"}}"#)
    };
    let cluster = cluster_with_owner(p1).await;
    let moto = MotoServer::start().await;
    moto.create_secret(secret_id, &rotation_secret(wrong)).await;
    let mut feed = Feed::connect(&broker_url(), None).await;
    let password_section = format!(
        "[database.password]\nsource = \"aws-secrets-manager\"\nsecret_id = \"{secret_id}\"\n\
         region = \"us-east-1\"\nendpoint_url = \"{}\"\nrefresh_interval = \"1h\"\n",
        moto.endpoint
    );
    let toml = config(&broker_url(), "", &cluster.url_for("app_a", "fleet"), &feed.prefix, &password_section);
    let env: Vec<(String, String)> = [
        ("AWS_ACCESS_KEY_ID", "fleetagg-logs-test"),
        ("AWS_SECRET_ACCESS_KEY", aws_secret_key),
        ("AWS_REGION", "us-east-1"),
        // The SDK's own switch to log response bodies of sensitive operations
        // (GetSecretValue's): even then, the secret stays out of the log.
        ("LOG_SENSITIVE_BODIES", "true"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    let service = ServiceProcess::spawn_with_rust_log(&toml, &env, "trace");
    service.wait_for_log("fleetagg running", Duration::from_secs(60)).await;

    feed.publish(5).await;
    service.wait_for_log("password authentication failed", Duration::from_secs(30)).await;
    moto.put_secret_value(secret_id, &rotation_secret(p1)).await;
    feed.wait_until_written(&owner_url(&cluster, p1), "rows once the secret is right").await;

    cluster.admin_execute(&format!("ALTER ROLE app_a PASSWORD '{p2}'")).await;
    moto.put_secret_value(secret_id, &rotation_secret(p2)).await;
    terminate_service_backends(&cluster).await;
    feed.publish(5).await;
    feed.wait_until_written(&owner_url(&cluster, p2), "rows after the rotation").await;

    let output = stop(service).await;
    assert!(output.contains("aws_smithy"), "the AWS SDK's trace events should be in the output");
    assert!(output.contains("database secret changed"), "the rotation should be logged");
    assert_no_secrets(&output, &[wrong, p1, p2, aws_secret_key]);
}

#[actix_rt::test]
async fn mqtt_password_right_and_wrong() {
    let (user, password, wrong) = ("fleetagg", "Mq1-broker-pw-6a0e3f", "Mw1-wrong-pw-2d7c91");
    let broker = MosquittoBroker::start_with_password(user, password).await;
    let db = TestDatabase::create().await;
    let mut feed = Feed::connect(&broker.url(), Some((user, password))).await;
    let secret_file = temp_file("mqtt-password", &format!("{password}\n"));
    let mqtt_extra = format!(
        "username = \"{user}\"\n\n[mqtt.password]\nsource = \"file\"\npath = \"{}\"\n",
        secret_file.display()
    );
    let toml = config(&broker.url(), &mqtt_extra, &db.url, &feed.prefix, "");
    let service = ServiceProcess::spawn_with_rust_log(&toml, &[], "trace");
    service.wait_for_log("fleetagg running", Duration::from_secs(60)).await;
    feed.publish(5).await;
    feed.wait_until_written(&db.url, "rows through the password-protected broker").await;
    let output = stop(service).await;
    assert!(output.contains("paho_mqtt"), "paho's events should be in the output");
    assert_no_secrets(&output, &[password]);

    // A wrong password: the broker refuses, the service retries and says so.
    std::fs::write(&secret_file, format!("{wrong}\n")).expect("write the wrong password");
    let service = ServiceProcess::spawn_with_rust_log(&toml, &[], "trace");
    service.wait_for_log("login refused", Duration::from_secs(60)).await;
    actix_rt::time::sleep(Duration::from_secs(2)).await; // a few reconnection attempts
    let output = service.log();
    drop(service); // killed: it would retry forever
    assert_no_secrets(&output, &[wrong, password]);
}

/// Where a rotation test keeps the broker password.
enum BrokerSecret {
    File(PathBuf),
    Aws(MotoServer, &'static str),
}

impl BrokerSecret {
    async fn set(&self, password: &str) {
        match self {
            BrokerSecret::File(path) => {
                std::fs::write(path, format!("{password}\n")).expect("write the secret");
            }
            BrokerSecret::Aws(moto, id) => moto.put_secret_value(id, password).await,
        }
    }

    /// The `[mqtt.password]` section; an hour between refreshes, so that only a refused
    /// login can make the service read the secret again.
    fn section(&self) -> String {
        let source = match self {
            BrokerSecret::File(path) => format!("source = \"file\"\npath = \"{}\"", path.display()),
            BrokerSecret::Aws(moto, id) => format!(
                "source = \"aws-secrets-manager\"\nsecret_id = \"{id}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"",
                moto.endpoint
            ),
        };
        format!("\n[mqtt.password]\n{source}\nrefresh_interval = \"1h\"\n")
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            BrokerSecret::File(_) => Vec::new(),
            BrokerSecret::Aws(moto, _) => moto.aws_env(),
        }
    }
}

/// The broker password rotated without a restart: the broker takes only the new one and
/// drops the connection (a restart), the service is refused, reads its secret again at
/// once, and logs in with the new one when it appears; what the broker acknowledged
/// meanwhile waits in the persistent session, and every sample is written once.
async fn mqtt_password_rotated_without_restart(secret: BrokerSecret, old: &str, new: &str) {
    let user = "fleetagg";
    let broker = MosquittoBroker::start_with_password(user, old).await;
    let db = TestDatabase::create().await;
    let mut feed = Feed::connect(&broker.url(), Some((user, old))).await;
    secret.set(old).await;
    let mqtt_extra = format!("username = \"{user}\"\n{}", secret.section());
    let toml = config(&broker.url(), &mqtt_extra, &db.url, &feed.prefix, "");
    let service = ServiceProcess::spawn_with_rust_log(&toml, &secret.env(), "trace");
    service.wait_for_log("fleetagg running", Duration::from_secs(60)).await;
    feed.publish(5).await;
    feed.wait_until_written(&db.url, "rows with the first password").await;

    // The rotation: from now on the broker takes only the new password.
    broker.stop();
    broker.change_password(user, new);
    broker.resume().await;
    service.wait_for_log("login refused", Duration::from_secs(60)).await;
    // Acknowledged by the broker while the service cannot log in.
    let mut rotated = Feed::connect(&broker.url(), Some((user, new))).await;
    (rotated.prefix, rotated.sent) = (feed.prefix.clone(), feed.sent);
    rotated.publish(5).await;
    secret.set(new).await;
    rotated.wait_until_written(&db.url, "every sample, the ones queued during the rotation too").await;

    let output = stop(service).await;
    assert!(output.contains("MQTT broker password changed at its source"), "the rotation should be logged");
    assert!(output.contains("resumed_session=true"), "the session (and its queue) should be kept");
    assert_no_secrets(&output, &[old, new]);
}

#[actix_rt::test]
async fn mqtt_password_in_a_file_rotated_without_restart() {
    let file = temp_file("mqtt-password-rotated", "");
    mqtt_password_rotated_without_restart(
        BrokerSecret::File(file),
        "Mr1-old-broker-pw-5c2e81",
        "Mr2-new-broker-pw-9d4a17",
    )
    .await;
}

#[actix_rt::test]
async fn mqtt_password_in_aws_secrets_manager_rotated_without_restart() {
    let (id, old) = ("fleetagg/mqtt-rotation", "Ma1-old-broker-pw-3e9b40");
    let moto = MotoServer::start().await;
    moto.create_secret(id, old).await;
    mqtt_password_rotated_without_restart(BrokerSecret::Aws(moto, id), old, "Ma2-new-broker-pw-7f1c28").await;
}

#[actix_rt::test]
async fn misplaced_secrets_in_the_file_and_the_environment() {
    let secret = "Ms1-misplaced-8b4f27";
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let output = std::process::Command::new(fleetagg_bin())
            .args(args)
            .env_clear()
            .env("RUST_LOG", "trace")
            .envs(env.iter().copied())
            .output()
            .expect("run fleetagg");
        let printed =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), printed)
    };
    // (a configuration file's text, the environment, the key the error must name)
    type Case<'a> = (Option<String>, Vec<(&'a str, &'a str)>, &'a str);
    let url_with_password = format!("postgres://app:{secret}@db/fleet");
    let cases: Vec<Case<'_>> = vec![
        (None, vec![("FLEETAGG__DATABASE__PASSWORD", secret)], "database.password"),
        (
            None,
            vec![("FLEETAGG__MQTT__USERNAME", "u"), ("FLEETAGG__MQTT__PASSWORD", secret)],
            "mqtt.password",
        ),
        (None, vec![("FLEETAGG__DATABASE__URL", &url_with_password)], "database.url"),
        (Some(format!("[database]\npassword = \"{secret}\"\n")), vec![], "database.password"),
        (Some(format!("[mqtt]\nusername = \"u\"\npassword = \"{secret}\"\n")), vec![], "mqtt.password"),
        (
            Some(format!("[database.password]\nsource = \"env\"\nvar = \"X\"\npassword = \"{secret}\"\n")),
            vec![],
            "password",
        ),
        // A syntax error on the secret's own line (toml's own message quotes the line).
        (Some(format!("[database]\npassword = \"{secret}\n")), vec![], "line 2"),
    ];
    for (file, env, key) in cases {
        for command in ["check-config", "run", "migrate"] {
            let mut args = vec![command.to_owned()];
            if let Some(text) = &file {
                args.extend(["--config".to_owned(), temp_file("fleetagg.toml", text).display().to_string()]);
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, printed) = run(&args, &env);
            assert_eq!(code, Some(1), "{command} {env:?}: {printed}");
            assert!(printed.contains(key), "{command}: the error names `{key}`: {printed}");
            assert_absent(&printed, secret, command);
        }
    }

    // A valid configuration whose secret source is an environment variable: check-config
    // shows the source, never the value.
    let (code, printed) = run(
        &["check-config"],
        &[
            ("FLEETAGG__DATABASE__PASSWORD__SOURCE", "env"),
            ("FLEETAGG__DATABASE__PASSWORD__VAR", "FLEETAGG_IT_DB_PASSWORD"),
            ("FLEETAGG_IT_DB_PASSWORD", secret),
        ],
    );
    assert_eq!(code, Some(0), "{printed}");
    assert!(printed.contains("FLEETAGG_IT_DB_PASSWORD"), "{printed}");
    assert_absent(&printed, secret, "check-config");
}
