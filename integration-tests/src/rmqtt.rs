//! A private two-node rmqttd cluster for the scale-out tests: a clustered MQTT broker whose
//! shared subscriptions keep each topic (each machine) on one subscriber (`hash_topic`).
//!
//! rmqttd 0.24 (crates.io `rmqttd`) is built once by `scripts/ensure-services.sh` into
//! `~/.cache/fleetagg/rmqttd-0.24.0`; `$FLEETAGG_RMQTTD` names the executable (scripts/test
//! sets it). A missing executable fails the test with how to build it, never skips it.
//!
//! What each node's configuration settles, learned the hard way (issue 17):
//! - each node runs in a directory of its own with its configuration passed by `-f`:
//!   rmqttd also reads `./rmqtt.toml`, `/etc/rmqtt*` and `RMQTT_*` variables (the node's
//!   directory holds no `rmqtt.toml`, its environment loses those variables, and
//!   `/etc/rmqtt*` must not exist);
//! - `rmqtt-http-api` (started by default) is off: every node would bind 0.0.0.0:6060;
//!   so is `rmqtt-acl` (also started by default): the tests need no access rules;
//! - `rmqtt-cluster-broadcast`, not raft (two raft nodes split-brain), with a 1 s gRPC
//!   timeout and a circuit breaker that opens after two failed calls in 10 s: otherwise
//!   every publish on the surviving node waits for the dead peer (60 s by default);
//! - `rmqtt-shared-subscription` with `strategy = "hash_topic"`: a topic's messages go to
//!   one member of a group while it is online, to a random online one otherwise;
//! - anonymous clients allowed (refused by default); queues long enough for a backlog
//!   (`max_mqueue_len`, default 1000); no busy check: by default a node refuses every
//!   CONNECT ("server unavailable") while the CPU load is above 90 %, which two cores
//!   busy with a test suite reach.
//!
//! Every port is leased ([`crate::ports`]) and held for the cluster's life, so a killed
//! node restarts on its own ports. The cluster is ready when a `$share` subscription on
//! each node receives a message published on the other (about 3 s after start here; 2 to 7 s in issue 17's trials).

use crate::ports::PortLease;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The executable: `$FLEETAGG_RMQTTD`, else where `scripts/ensure-services.sh` builds it.
pub fn rmqttd_executable() -> PathBuf {
    let path = std::env::var_os("FLEETAGG_RMQTTD").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
        cache.join("fleetagg/rmqttd-0.24.0/bin/rmqttd")
    });
    assert!(
        path.is_file(),
        "rmqttd is missing at {} ($FLEETAGG_RMQTTD): scripts/ensure-services.sh --with-moto \
         builds it once (`cargo install --locked rmqttd --version 0.24.0 --root \
         ~/.cache/fleetagg/rmqttd-0.24.0`, about 22 minutes on 2 cores, needs protobuf-compiler)",
        path.display()
    );
    path
}

/// One rmqttd node: its ports, directory and process.
#[derive(Debug)]
struct Node {
    id: u64,
    mqtt: PortLease,
    grpc: PortLease,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Node {
    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.mqtt.port())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rmqttd.log")).unwrap_or_default()
    }

    fn is_running(&self) -> bool {
        self.child.lock().expect("node lock").is_some()
    }

    /// Spawns the node and waits until it accepts TCP connections on its MQTT port.
    async fn launch(&self) {
        self.mqtt.assert_bindable("an rmqttd node's MQTT listener");
        self.grpc.assert_bindable("an rmqttd node's gRPC listener");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rmqttd.log"))
            .expect("rmqttd log");
        let mut command = Command::new(rmqttd_executable());
        command
            .arg("-f")
            .arg(self.dir.join("node.toml"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().to_ascii_lowercase().starts_with("rmqtt") {
                command.env_remove(key);
            }
        }
        let child = command.spawn().unwrap_or_else(|err| panic!("cannot run rmqttd: {err}"));
        // In place before any wait, so Drop kills it if the wait fails the test.
        *self.child.lock().expect("node lock") = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.mqtt.port())).is_err() {
            let exited = self
                .child
                .lock()
                .expect("node lock")
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!(
                    "rmqttd node {} exited ({status}) instead of listening; its log:\n{}",
                    self.id,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rmqttd node {} did not listen on {} within 30 s; its log:\n{}",
                self.id,
                self.mqtt.port(),
                self.log()
            );
            actix_rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("node lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A two-node rmqttd cluster of a test's own. Dropping it kills both nodes and removes
/// their directories.
#[derive(Debug)]
pub struct RmqttCluster {
    nodes: Vec<Node>,
}

impl RmqttCluster {
    /// Starts both nodes and returns once each routes a shared subscription's message
    /// published on the other.
    pub async fn start() -> RmqttCluster {
        rmqttd_executable();
        let nodes: Vec<Node> = (1..=2)
            .map(|id| Node {
                id,
                mqtt: PortLease::acquire(),
                grpc: PortLease::acquire(),
                dir: std::env::temp_dir().join(crate::unique(&format!("fleetagg_rmqtt{id}"))),
                child: Mutex::new(None),
            })
            .collect();
        let grpc_addrs: Vec<String> =
            nodes.iter().map(|node| format!("\"{}@127.0.0.1:{}\"", node.id, node.grpc.port())).collect();
        for node in &nodes {
            write_config(node, &grpc_addrs.join(", "));
        }
        let cluster = RmqttCluster { nodes };
        for node in &cluster.nodes {
            node.launch().await;
        }
        cluster.wait_until_routed().await;
        cluster
    }

    /// `tcp://127.0.0.1:<port>` of node `node` (0 or 1).
    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    /// Node `node`'s process id while it runs (to read its CPU time, say).
    pub fn pid(&self, node: usize) -> Option<u32> {
        self.nodes[node].child.lock().expect("node lock").as_ref().map(Child::id)
    }

    /// Node `node`'s log so far, for failure messages.
    pub fn log(&self, node: usize) -> String {
        self.nodes[node].log()
    }

    /// SIGKILL, as a lost machine would end it; returns once it is gone. Its sessions,
    /// subscriptions and queued messages die with it (the cluster replicates none).
    pub fn kill_node(&self, node: usize) {
        self.nodes[node].kill();
    }

    /// Starts a killed node again on its ports, empty; returns once both nodes route
    /// each other's shared-subscription messages again.
    pub async fn restart_node(&self, node: usize) {
        assert!(!self.nodes[node].is_running(), "node {node} is running: kill it first");
        self.nodes[node].launch().await;
        self.wait_until_routed().await;
    }

    /// Waits until a `$share` subscriber on each node gets a message published on the
    /// other.
    async fn wait_until_routed(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (subscriber, publisher) in [(0, 1), (1, 0)] {
            loop {
                if probe(&self.url(subscriber), &self.url(publisher)).await {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the rmqttd nodes did not route shared subscriptions to each other within 60 s; \
                     node 1's log:\n{}\nnode 2's log:\n{}",
                    self.log(0),
                    self.log(1)
                );
                actix_rt::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

impl Drop for RmqttCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.kill();
            let _ = std::fs::remove_dir_all(&node.dir);
        }
    }
}

fn write_config(node: &Node, grpc_addrs: &str) {
    let plugins = node.dir.join("plugins");
    std::fs::create_dir_all(&plugins)
        .unwrap_or_else(|err| panic!("cannot create {}: {err}", plugins.display()));
    let config = format!(
        r#"[node]
id = {id}

[node.busy]
check_enable = false

[rpc]
server_addr = "127.0.0.1:{grpc}"

[log]
to = "console"
level = "info"

[plugins]
dir = "{plugins}"
default_startups = ["rmqtt-cluster-broadcast", "rmqtt-shared-subscription"]
disabled_default_startups = ["rmqtt-http-api", "rmqtt-acl"]

[circuit_breaker]
minimum_number_of_calls = 2
sliding_window_duration = "10s"
failure_rate_threshold = 0.5
wait_duration_in_open = "10s"

[listener.tcp.external]
addr = "127.0.0.1:{mqtt}"
allow_anonymous = true
max_inflight = 128
max_mqueue_len = 10000000
session_expiry_interval = "2h"
message_expiry_interval = "1h"
"#,
        id = node.id,
        grpc = node.grpc.port(),
        mqtt = node.mqtt.port(),
        plugins = plugins.display(),
    );
    write(&node.dir.join("node.toml"), &config);
    write(
        &plugins.join("rmqtt-cluster-broadcast.toml"),
        &format!("node_grpc_addrs = [{grpc_addrs}]\nnode_grpc_client_timeout = \"1s\"\n"),
    );
    write(&plugins.join("rmqtt-shared-subscription.toml"), "strategy = \"hash_topic\"\n");
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}

/// One round trip: a `$share` subscriber on `subscriber_url`, a QoS 1 message published on
/// `publisher_url`; true when it arrives within 2 s.
async fn probe(subscriber_url: &str, publisher_url: &str) -> bool {
    let tag = crate::unique("probe");
    let topic = format!("fleetagg-probe/{tag}");
    let step = Duration::from_secs(2);
    let Some(mut subscriber) = probe_client(subscriber_url).await else { return false };
    let receiver = subscriber.get_stream(16);
    let subscribed =
        tokio::time::timeout(step, subscriber.subscribe(format!("$share/{tag}/{topic}"), 1)).await;
    let arrived = match (subscribed, probe_client(publisher_url).await) {
        (Ok(Ok(_)), Some(publisher)) => {
            let sent =
                tokio::time::timeout(step, publisher.publish(paho_mqtt::Message::new(&topic, "probe", 1)))
                    .await;
            let arrived = matches!(sent, Ok(Ok(())))
                && matches!(tokio::time::timeout(step, receiver.recv()).await, Ok(Ok(Some(_))));
            let _ = tokio::time::timeout(step, publisher.disconnect(None)).await;
            keep_for_good(publisher);
            arrived
        }
        _ => false,
    };
    let _ = tokio::time::timeout(step, subscriber.disconnect(None)).await;
    keep_for_good(subscriber);
    arrived
}

/// Never drops a probe client. A token that timed out still holds a clone of its client;
/// when it completes later on paho's own thread and drops the last clone there, paho's
/// `MQTTAsync_destroy` waits for the lock that thread already holds: a deadlock (seen: two
/// tests stuck in `MQTTAsync_createWithOptions` behind `MQTTAsync_destroy` on
/// `MQTTAsync_send`). A handful of probe clients kept until the test process exits cost
/// nothing.
fn keep_for_good(client: paho_mqtt::AsyncClient) {
    static KEPT: std::sync::Mutex<Vec<paho_mqtt::AsyncClient>> = std::sync::Mutex::new(Vec::new());
    KEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(client);
}

async fn probe_client(url: &str) -> Option<paho_mqtt::AsyncClient> {
    let client = paho_mqtt::CreateOptionsBuilder::new()
        .server_uri(url)
        .client_id(crate::unique("probe"))
        .persistence(paho_mqtt::PersistenceType::None)
        .create_client()
        .ok()?;
    let options = paho_mqtt::ConnectOptionsBuilder::new()
        .clean_session(true)
        .connect_timeout(Duration::from_secs(2))
        .finalize();
    match tokio::time::timeout(Duration::from_secs(3), client.connect(options)).await {
        Ok(Ok(_)) => Some(client),
        _ => {
            keep_for_good(client);
            None
        }
    }
}
