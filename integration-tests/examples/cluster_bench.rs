//! One against two instances draining the same backlog from a two-node rmqttd cluster
//! (issue 17; results in docs/benchmarks.md, "Scale-out on a clustered broker").
//!
//! ```sh
//! cargo build --release --bin fleetagg
//! cargo run --release -p fleetagg-integration-tests --example cluster_bench
//! ```
//!
//! Per round and instance count: the instances' persistent sessions are made (each on a
//! node of its own, one shared group) and left offline; a backlog of `BENCH_MESSAGES`
//! (default 100,000) from `BENCH_MACHINES` machines (default 1,000) is queued, half of the
//! machines through each node (`fleetagg simulate --backlog`); then the instances start
//! together and the time until PostgreSQL holds every sample is the drain. rmqtt queues a
//! message for an offline group on the publishing node's member when it has one, so with
//! two instances each finds half of the backlog waiting on its node; with one, the node
//! without a member forwards its half to the other. The instances log at warn. Prints one
//! line per drain (rate, the first instance's share, the cores fleetagg and rmqttd used
//! during it, the load average) and the medians. Each instance writes to a database of
//! its own, so the split is visible. Everything runs on this machine: the broker's nodes
//! compete with the instances for the same cores.

use fleetagg_integration_tests::ports::PortLease;
use fleetagg_integration_tests::rmqtt::RmqttCluster;
use fleetagg_integration_tests::{fleetagg_bin, service_config, unique, ServiceProcess, TestDatabase};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The samples `loading_rate` holds.
async fn samples(db: &TestDatabase) -> i64 {
    db.client()
        .await
        .query_one("SELECT coalesce(sum(samples), 0)::bigint FROM loading_rate", &[])
        .await
        .map(|row| row.get(0))
        .unwrap_or(0)
}

/// Queues `count` messages of `machines` machines named `<machine_prefix>NNNN` on `url`.
fn queue(url: &str, topic_prefix: &str, machine_prefix: &str, count: usize, machines: usize) -> f64 {
    let output = Command::new(fleetagg_bin())
        .args(["--log-level", "warn", "simulate", "--url", url, "--topic-prefix", topic_prefix])
        .args(["--machine-prefix", machine_prefix, "--machines", &machines.to_string()])
        .args([
            "--count",
            &count.to_string(),
            "--backlog",
            "--quiet",
            "--ts-start",
            "now-6m",
            "--ts-span",
            "4m",
        ])
        .output()
        .expect("run fleetagg simulate");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "fleetagg simulate failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "… (12345.6 messages/s)"
    text.find(" messages/s)")
        .and_then(|end| text[..end].rfind('(').map(|start| &text[start + 1..end]))
        .and_then(|rate| rate.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |index: usize| fields.get(index).and_then(|field| field.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The rmqttd nodes' CPU seconds so far.
fn broker_cpu(cluster: &RmqttCluster) -> f64 {
    (0..2).filter_map(|node| cluster.pid(node)).map(cpu_seconds).sum()
}

/// One drain with `instances` instances: (seconds, messages/s, share of the first).
async fn drain(
    cluster: &RmqttCluster,
    instances: usize,
    messages: usize,
    machines: usize,
) -> (f64, f64, f64) {
    let (prefix, group) = (unique("bench"), unique("group"));
    let mut dbs = Vec::new();
    let mut configs = Vec::new();
    let mut leases = Vec::new();
    for node in 0..instances {
        let db = TestDatabase::create().await;
        let metrics = PortLease::acquire();
        let config = service_config(&db.url, &prefix, &unique("fleetagg"), "1s")
            .replace(
                &format!("\"{}\"", fleetagg_integration_tests::broker_url()),
                &format!("\"{}\"", cluster.url(node)),
            )
            .replace(
                "max_payload_bytes = 1024",
                &format!("shared_group = \"{group}\"\nmax_payload_bytes = 4096"),
            )
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"127.0.0.1:{}\"", metrics.port()));
        // Its session and subscription made, then left offline for the backlog.
        let mut service = ServiceProcess::start(&config).await;
        service.send_sigterm();
        let status = service.wait_exited(Duration::from_secs(40)).await;
        assert!(status.success(), "the session run exited with {status}");
        configs.push(config);
        dbs.push(db);
        leases.push(metrics);
    }
    let half = messages / 2;
    let publish_rate = (queue(&cluster.url(0), &prefix, "a-", half, machines / 2)
        + queue(&cluster.url(1), &prefix, "b-", messages - half, machines - machines / 2))
        / 2.0;
    let broker_before = broker_cpu(cluster);
    let started = Instant::now();
    // At warn: at info paho's C library traces every call (docs/benchmarks.md), and the
    // tests' services log the actors at debug.
    let running: Vec<ServiceProcess> =
        configs.iter().map(|config| ServiceProcess::spawn_with_rust_log(config, &[], "warn")).collect();
    let total = i64::try_from(messages).expect("fits");
    loop {
        let mut sum = 0;
        for db in &dbs {
            sum += samples(db).await;
        }
        if sum >= total {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "only {sum} of {total} samples after 600 s");
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let service_cpu: f64 = running.iter().map(|service| cpu_seconds(service.pid())).sum();
    let broker = broker_cpu(cluster) - broker_before;
    let first = samples(&dbs[0]).await as f64 / total as f64;
    for service in running {
        let _ = service.terminate(Duration::from_secs(40)).await;
    }
    println!(
        "instances={instances} messages={messages} machines={machines} publish={publish_rate:.0} msg/s \
         drain={seconds:.2} s rate={:.0} msg/s first_instance_share={first:.2} \
         cores: fleetagg={:.2} rmqttd={:.2} loadavg={}",
        messages as f64 / seconds,
        service_cpu / seconds,
        broker / seconds,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().next().unwrap_or("?")
    );
    (seconds, messages as f64 / seconds, first)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[actix_rt::main]
async fn main() {
    let messages = env_usize("BENCH_MESSAGES", 100_000);
    let machines = env_usize("BENCH_MACHINES", 1_000);
    let rounds = env_usize("BENCH_ROUNDS", 3);
    let cluster = RmqttCluster::start().await;
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        one.push(drain(&cluster, 1, messages, machines).await.1);
        two.push(drain(&cluster, 2, messages, machines).await.1);
    }
    let (one, two) = (median(one), median(two));
    println!(
        "median drain: one instance {one:.0} msg/s, two instances {two:.0} msg/s, ratio {:.2}",
        two / one
    );
}
