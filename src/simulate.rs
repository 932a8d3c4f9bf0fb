//! `fleetagg simulate`: a fleet of machines publishing telemetry, for demos and load
//! tests. Each machine's load wanders like a real one and its mileage only grows.
//!
//! With `--backlog` it queues a fixed number of messages for a persistent session as fast
//! as the broker acknowledges them (QoS 1 or 2, every PUBACK awaited), optionally with
//! timestamps spread over a fixed past window, so that a consumer can later be timed on
//! draining the queue (`scripts/bench`).

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use paho_mqtt as mqtt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Publishes not yet acknowledged before the simulator waits for the oldest.
const IN_FLIGHT: usize = 512;

#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// Broker URL (tcp://, mqtt://, ssl://).
    #[arg(long, default_value = "tcp://127.0.0.1:1883")]
    url: String,
    /// Number of machines.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    machines: u32,
    /// Messages per second over the whole fleet; 0 publishes as fast as the broker takes
    /// them. Ignored with --backlog.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// How long to publish ("90s", "5m"). Ignored when --count is given.
    #[arg(long, default_value = "60s", value_parser = humantime_duration)]
    duration: Duration,
    /// Publish exactly this many messages (required with --backlog).
    #[arg(long)]
    count: Option<u64>,
    /// Backlog mode: queue exactly --count messages for a persistent session, as fast as
    /// the broker acknowledges them (--rate and --duration are ignored; QoS must be 1 or 2,
    /// and the command returns once every message is acknowledged). Timestamps have
    /// microseconds; see --ts-start and --ts-span.
    #[arg(long, requires = "count")]
    backlog: bool,
    /// With --backlog: the first message's timestamp, as RFC 3339
    /// ("2026-03-01T10:00:00Z") or relative to now ("now-6m"). The timestamps are then
    /// spread evenly over --ts-span, so every minute of the window is already closable when
    /// the backlog is consumed (keep start within the consumer's max_lateness). Without
    /// it, each message carries the time it is published.
    #[arg(long, requires = "backlog", value_parser = parse_ts_start, value_name = "TIME")]
    ts_start: Option<DateTime<Utc>>,
    /// With --backlog and --ts-start: the span the timestamps are spread over ("4m").
    #[arg(long, requires = "ts_start", default_value = "4m", value_parser = humantime_duration)]
    ts_span: Duration,
    /// Topics are PREFIX/<machine>/telemetry.
    #[arg(long, default_value = "machines")]
    topic_prefix: String,
    /// Machine ids are PREFIX0001, PREFIX0002, ...
    #[arg(long, default_value = "machine-")]
    machine_prefix: String,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(0..=2))]
    qos: i32,
    /// Make every Nth message invalid (cycling through the kinds of bad input); 0: never.
    #[arg(long, default_value_t = 0)]
    bad_every: u64,
    /// Seed of the random walk, for repeatable runs.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// RFC 3339, or `now-<duration>`.
fn parse_ts_start(text: &str) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Some(ago) = text.strip_prefix("now-") {
        let ago = humantime_duration(ago)?;
        let ago = TimeDelta::from_std(ago).map_err(|err| format!("{text:?}: {err}"))?;
        return Ok(Utc::now() - ago);
    }
    if text == "now" {
        return Ok(Utc::now());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|instant| instant.with_timezone(&Utc))
        .map_err(|err| format!("{text:?}: expected RFC 3339 or now-<duration> ({err})"))
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text.trim()).map_err(|err| format!("{text:?}: {err}"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

struct Machine {
    id: String,
    topic: String,
    load_rate: f64,
    mileage: f64,
}

/// Payloads a real fleet sends by mistake, one of each reject reason the demo can show.
const BAD_PAYLOADS: &[&str] = &[
    "not json at all",
    r#"{"machine": "broken-1", "load_rate": 10, "mileage": 1}"#,
    r#"{"machine": "broken-1", "ts": "2026-01-01T00:00:00Z", "load_rate": "42", "mileage": 1}"#,
    r#"{"machine": "broken-1", "ts": "yesterday", "load_rate": 10, "mileage": 1}"#,
    r#"{"machine": "broken-1", "ts": "NOW", "load_rate": NaN, "mileage": 1}"#,
    r#"{"machine": "broken-1", "ts": "NOW", "load_rate": 140, "mileage": 1}"#,
    r#"{"machine": "broken-1", "ts": "2001-01-01T00:00:00Z", "load_rate": 10, "mileage": 1}"#,
];

pub(crate) fn simulate(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(publish(args))
}

/// Where message timestamps come from.
enum Timestamps {
    /// The time of publishing, to the millisecond (live mode).
    Now,
    /// The time of publishing, to the microsecond (a backlog published without a window).
    NowMicros,
    /// Evenly spread over `[start, start + span)`: message `n` of `count` gets
    /// `start + span * n / count`.
    Window { start: DateTime<Utc>, span_micros: i64, count: u64 },
}

impl Timestamps {
    fn of(args: &SimulateArgs) -> anyhow::Result<Timestamps> {
        if !args.backlog {
            return Ok(Timestamps::Now);
        }
        anyhow::ensure!(
            args.qos >= 1,
            "--backlog needs --qos 1 or 2: the broker does not queue QoS 0 messages for an offline session"
        );
        let Some(start) = args.ts_start else { return Ok(Timestamps::NowMicros) };
        let count = args.count.unwrap_or(0);
        let span_micros = i64::try_from(args.ts_span.as_micros()).context("--ts-span is too long")?;
        // One machine's consecutive messages are `machines` messages apart; their
        // timestamps must differ, or the consumer drops them as duplicates.
        let step = i128::from(span_micros) * i128::from(args.machines) / i128::from(count.max(1));
        anyhow::ensure!(
            step >= 1,
            "--ts-span {} is too short for {count} messages from {} machines: one machine's \
             timestamps would repeat (need span × machines ≥ count microseconds)",
            humantime::format_duration(args.ts_span),
            args.machines
        );
        Ok(Timestamps::Window { start, span_micros, count })
    }

    fn text(&self, n: u64) -> String {
        match self {
            Timestamps::Now => Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            Timestamps::NowMicros => Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
            Timestamps::Window { start, span_micros, count } => {
                let offset = i128::from(*span_micros) * i128::from(n) / i128::from((*count).max(1));
                let offset = TimeDelta::microseconds(i64::try_from(offset).unwrap_or(i64::MAX));
                (*start + offset).to_rfc3339_opts(SecondsFormat::Micros, true)
            }
        }
    }
}

async fn publish(args: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let timestamps = Timestamps::of(args)?;
    // A backlog goes as fast as the broker acknowledges.
    let rate = if args.backlog { 0.0 } else { args.rate };
    let url = args.url.replacen("mqtt://", "tcp://", 1).replacen("mqtts://", "ssl://", 1);
    let client = mqtt::CreateOptionsBuilder::new()
        .server_uri(&url)
        .client_id(format!("fleetagg-simulator-{}", std::process::id()))
        .persistence(mqtt::PersistenceType::None)
        // paho refuses a publish while more than this many wait in its command queue
        // (default 100), connected or not; the window below bounds them anyway.
        .max_buffered_messages(i32::try_from(2 * IN_FLIGHT).unwrap_or(i32::MAX))
        .create_client()
        .context("creating the MQTT client")?;
    let options = mqtt::ConnectOptionsBuilder::new().clean_session(true).max_inflight(1024).finalize();
    client.connect(options).await.with_context(|| format!("connecting to {url}"))?;

    let mut rng = SmallRng::seed_from_u64(args.seed);
    let mut fleet: Vec<Machine> = (1..=args.machines)
        .map(|n| {
            let id = format!("{}{n:04}", args.machine_prefix);
            Machine {
                topic: format!("{}/{id}/telemetry", args.topic_prefix),
                id,
                load_rate: rng.random_range(10.0..90.0),
                mileage: rng.random_range(0.0..50_000.0),
            }
        })
        .collect();

    let total =
        args.count.or_else(|| (rate > 0.0).then(|| (rate * args.duration.as_secs_f64()).round() as u64));
    let progress = progress_bar(total, args.quiet);
    let started = Instant::now();
    let mut in_flight: VecDeque<mqtt::DeliveryToken> = VecDeque::with_capacity(IN_FLIGHT);
    let mut sent: u64 = 0;
    loop {
        if total.is_some_and(|total| sent >= total) || (total.is_none() && started.elapsed() >= args.duration)
        {
            break;
        }
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let index = (sent % u64::from(args.machines)) as usize;
        let machine = &mut fleet[index];
        let payload = if args.bad_every > 0 && (sent + 1).is_multiple_of(args.bad_every) {
            let bad = BAD_PAYLOADS[((sent + 1) / args.bad_every) as usize % BAD_PAYLOADS.len()];
            bad.replace("NOW", &timestamps.text(sent))
        } else {
            machine.load_rate = (machine.load_rate + rng.random_range(-5.0..5.0)).clamp(0.0, 100.0);
            machine.mileage += rng.random_range(0.0..0.5);
            format!(
                r#"{{"machine":"{}","ts":"{}","load_rate":{:.2},"mileage":{:.3}}}"#,
                machine.id,
                timestamps.text(sent),
                machine.load_rate,
                machine.mileage
            )
        };
        let message = mqtt::Message::new(&machine.topic, payload, args.qos);
        if in_flight.len() >= IN_FLIGHT {
            if let Some(token) = in_flight.pop_front() {
                token.await.context("publishing")?;
            }
        }
        in_flight.push_back(client.publish(message));
        sent += 1;
        progress.inc(1);
    }
    for token in in_flight {
        token.await.context("publishing")?;
    }
    client.disconnect(None).await.context("disconnecting")?;
    progress.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let verb = if args.backlog { "queued (all acknowledged)" } else { "published" };
    println!(
        "{verb} {sent} messages from {} machines in {elapsed:.2}s ({:.0} messages/s)",
        args.machines,
        sent as f64 / elapsed.max(1e-9)
    );
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(total: Option<u64>, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(total) => ProgressBar::new(total),
        None => ProgressBar::new_spinner(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} messages ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar
}
