//! The paho floor of `scripts/bench`: the smallest consumer built on the service's MQTT
//! client (the same paho-mqtt crate and version, the service's own connect options:
//! persistent session, QoS 1, a message callback) that does nothing but count. Its drain
//! rate is the ceiling for any program on this client; `mosquitto_sub` is the broker's.
//!
//! `paho_floor --url tcp://127.0.0.1:1883 --client-id ID --topic 'bench/+/telemetry'
//! --count N [--timeout-seconds S]` prints one JSON line: messages, the seconds from start
//! and from the first message to the last. `--count 0` only creates the session
//! (connects, subscribes, disconnects), so that a backlog can be queued for it.

use fleetagg_actors::source::service_connect_options;
use fleetagg_config::MqttConfig;
use paho_mqtt as mqtt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

struct Args {
    url: String,
    client_id: String,
    topic: String,
    count: u64,
    timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "tcp://127.0.0.1:1883".into(),
        client_id: "fleetagg-paho-floor".into(),
        topic: "machines/+/telemetry".into(),
        count: 0,
        timeout: Duration::from_secs(600),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--client-id" => args.client_id = value,
            "--topic" => args.topic = value,
            "--count" => args.count = value.parse().map_err(|_| "--count: a number".to_owned())?,
            "--timeout-seconds" => {
                args.timeout =
                    Duration::from_secs(value.parse().map_err(|_| "--timeout-seconds: a number".to_owned())?);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// What the callback records: how many, and when the first and the last arrived.
#[derive(Default)]
struct Tally {
    first: Option<Instant>,
    last: Option<Instant>,
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let started = Instant::now();
    let config = MqttConfig {
        url: vec![args.url.clone()],
        client_id: args.client_id.clone(),
        topics: vec![args.topic.clone()],
        ..MqttConfig::default()
    };
    let client = mqtt::CreateOptionsBuilder::new()
        .server_uri(&args.url)
        .client_id(&args.client_id)
        .persistence(mqtt::PersistenceType::None)
        .create_client()
        .map_err(|err| format!("client: {err}"))?;
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new((Mutex::new(Tally::default()), Condvar::new()));
    let (counted, tally, target) = (received.clone(), done.clone(), args.count);
    client.set_message_callback(move |_, message| {
        if message.is_none() {
            return;
        }
        let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n == target {
            let (times, finished) = &*tally;
            let mut times = times.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if n == 1 {
                times.first = Some(now);
            }
            if n == target {
                times.last = Some(now);
                finished.notify_all();
            }
        }
    });
    let options = service_connect_options(&config, &args.url).map_err(|err| err.to_string())?;
    client.connect(options).wait().map_err(|err| format!("connect: {err}"))?;
    client.subscribe(&args.topic, config.qos).wait().map_err(|err| format!("subscribe: {err}"))?;
    if args.count > 0 {
        let (times, finished) = &*done;
        let guard = times.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = finished
            .wait_timeout_while(guard, args.timeout, |times| times.last.is_none())
            .map_err(|_| "wait".to_owned())?;
    }
    let _ = client.disconnect(None).wait();
    let messages = received.load(Ordering::Relaxed);
    let times = done.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seconds = |from: Instant| times.last.map_or(0.0, |last| last.duration_since(from).as_secs_f64());
    println!(
        "{{\"messages\": {messages}, \"seconds\": {:.6}, \"seconds_first_to_last\": {:.6}}}",
        seconds(started),
        times.first.map_or(0.0, seconds)
    );
    if args.count > 0 && messages < args.count {
        return Err(format!("only {messages} of {} messages within the timeout", args.count));
    }
    Ok(())
}
