//! `fleetagg status --url http://127.0.0.1:9464`: the status page's summary in the
//! terminal, for SSH sessions. Reads `/api/status` of a running service with hyper's
//! client (already in the binary for the AWS SDK) and prints it as plain lines.
//!
//! Exit 0 when the service is alive and ready, 2 when it answers but is not (so scripts
//! can test it), 1 when it cannot be asked.

use anyhow::{bail, Context as _};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// How long the whole request may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Exit code when the service answers but is not alive and ready.
const EXIT_NOT_READY: u8 = 2;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Where the service listens (`metrics.listen`): `http://host:port`.
    #[arg(long, default_value = "http://127.0.0.1:9464")]
    url: String,
}

pub(crate) fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let (authority, base) = parse_url(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let body = runtime
        .block_on(async { tokio::time::timeout(TIMEOUT, fetch(&authority, "/api/status")).await })
        .with_context(|| format!("{base}/api/status did not answer within {TIMEOUT:?}"))?
        .with_context(|| format!("asking {base}/api/status"))?;
    let status: Value =
        serde_json::from_slice(&body).with_context(|| format!("{base}/api/status is not JSON"))?;
    print!("{}", summary(&status, &base));
    let healthy = status["alive"] == true && status["ready"] == true;
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_READY) })
}

/// `http://host:port[/…]` → (`host:port`, `http://host:port`). Only plain HTTP: the
/// listener serves nothing else.
fn parse_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    if rest.contains("://") {
        bail!("{url}: only http:// URLs are served by fleetagg's listener");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        bail!("{url}: no host in the URL");
    }
    let authority = if authority.contains(':') { authority.to_owned() } else { format!("{authority}:80") };
    Ok((authority.clone(), format!("http://{authority}")))
}

async fn fetch(authority: &str, path: &str) -> anyhow::Result<Bytes> {
    let stream = tokio::net::TcpStream::connect(authority).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request =
        hyper::Request::get(path).header(hyper::header::HOST, authority).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    Ok(body)
}

/// The summary, one part per line or block.
fn summary(s: &Value, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleetagg {} at {base}, up {}",
        text(&s["version"]),
        age(seconds_between(&s["started_at"], &s["now"]))
    );
    let _ = writeln!(out, "alive: {}   ready: {}", yes_no(&s["alive"]), yes_no(&s["ready"]));
    for reason in list(&s["not_ready"]).iter().chain(list(&s["stuck"]).iter()) {
        let _ = writeln!(out, "  - {}", text(reason));
    }
    let m = &s["mqtt"];
    let _ = writeln!(
        out,
        "MQTT        broker: {}, connected: {}, subscribed: {}, session resumed: {}, reconnects: {}, last message: {}",
        if m["broker"].is_null() { "none yet".to_owned() } else { text(&m["broker"]) },
        yes_no(&m["connected"]),
        yes_no(&m["subscribed"]),
        yes_no(&m["session_resumed"]),
        m["reconnects"],
        ago(&m["last_message_at"], &s["now"]),
    );
    if !m["problem"].is_null() {
        let _ = writeln!(out, "            problem: {}", text(&m["problem"]));
    }
    let p = &s["postgres"];
    let _ = writeln!(
        out,
        "PostgreSQL  healthy: {}, last success: {}, TLS: {}, connections: {}, failed flushes: {}",
        yes_no(&p["healthy"]),
        ago(&p["last_success_at"], &s["now"]),
        yes_no(&p["tls"]),
        p["connects"],
        p["write_failures"],
    );
    let secret = &s["secret"];
    if secret.is_null() {
        let _ = writeln!(out, "Secret      none configured");
    } else {
        let _ = writeln!(
            out,
            "Secret      age {}, next refresh in {}, fetches {}, failures {}, changes {}",
            age(secret["age_seconds"].as_f64()),
            age(secret["next_refresh_in_seconds"].as_f64()),
            secret["fetches"],
            secret["failures"],
            secret["changes"],
        );
    }
    if !s["journal"].is_null() {
        let _ = writeln!(out, "Journal     {}", text(&s["journal"]));
    }
    let points = list(&s["rates"]["points"]);
    let rate = |key: &str| {
        let values: Vec<f64> = points.iter().filter_map(|point| point[key].as_f64()).collect();
        let last = values.last().copied().unwrap_or(0.0);
        let average = if values.is_empty() { 0.0 } else { values.iter().sum::<f64>() / values.len() as f64 };
        format!("{key} {last:.1} ({average:.1})")
    };
    let _ = writeln!(
        out,
        "Rates/s     {}  {}  {}  {}   (last 5 s, and the average over {} s)",
        rate("received"),
        rate("accepted"),
        rate("rejected"),
        rate("rows_written"),
        points.len() as u64 * s["rates"]["every_seconds"].as_u64().unwrap_or(5),
    );
    let c = &s["counters"];
    let _ = writeln!(
        out,
        "Counters    received {}  accepted {}  duplicates {}  rejected {}  minutes closed {}  rows written {}",
        c["received"], c["accepted"], c["duplicates"], c["rejected"], c["minutes_closed"], c["rows_written"],
    );
    let b = &s["buffers"];
    let _ = writeln!(
        out,
        "Buffers     inbound {}/{}  rows {}/{}  rejections {}/{}  open minutes {}  writer {}  back-pressure {}",
        b["inbound_queued"],
        b["inbound_capacity"],
        b["rows_buffered"],
        b["max_buffered_rows"],
        b["rejections_buffered"],
        b["max_buffered_rejections"],
        b["open_minutes"],
        text(&b["writer_state"]),
        yes_no(&b["writer_buffer_full"]),
    );
    section(&mut out, "Rejections", &list(&s["rejections"]), |out, r| {
        let _ = writeln!(out, "  {:<14} {:>8}", text(&r["reason"]), r["count"].as_u64().unwrap_or(0));
        let latest = &r["latest"];
        if !latest.is_null() {
            let _ = writeln!(
                out,
                "      latest {} on {}: {}",
                ago(&latest["at"], &s["now"]),
                text(&latest["topic"]),
                text(&latest["detail"])
            );
            let cut = if latest["payload_cut"] == true { " …" } else { "" };
            let _ = writeln!(out, "      payload: {}{cut}", text(&latest["payload"]));
        }
    });
    section(&mut out, "Recent minutes", &list(&s["recent_minutes"]), |out, m| {
        let minute = text(&m["minute"]);
        let _ = writeln!(
            out,
            "  {}  {} UTC  samples {}  avg {:.1}  min {:.1}  max {:.1}",
            text(&m["machine"]),
            minute.get(..16).unwrap_or(&minute).replace('T', " "),
            m["samples"],
            m["load_rate_avg"].as_f64().unwrap_or(f64::NAN),
            m["load_rate_min"].as_f64().unwrap_or(f64::NAN),
            m["load_rate_max"].as_f64().unwrap_or(f64::NAN),
        );
    });
    section(&mut out, "Silent longest", &list(&s["silent_machines"]), |out, m| {
        let _ = writeln!(out, "  {}  silent {}", text(&m["machine"]), age(m["silent_seconds"].as_f64()));
    });
    out
}

fn section(out: &mut String, title: &str, items: &[Value], mut line: impl FnMut(&mut String, &Value)) {
    let _ = writeln!(out, "{title}{}", if items.is_empty() { ": none" } else { "" });
    for item in items {
        line(out, item);
    }
}

fn list(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

/// A string for the terminal. Topics, machine names and payloads come from whoever can
/// publish: control characters (an escape sequence could rewrite the screen) are shown
/// escaped, never sent to the terminal.
fn text(value: &Value) -> String {
    let raw = match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    raw.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn yes_no(value: &Value) -> &'static str {
    match value.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn seconds_between(from: &Value, to: &Value) -> Option<f64> {
    let parse = |value: &Value| chrono::DateTime::parse_from_rfc3339(value.as_str()?).ok();
    Some((parse(to)? - parse(from)?).num_milliseconds() as f64 / 1000.0)
}

/// "12 s ago", or "never".
fn ago(at: &Value, now: &Value) -> String {
    match seconds_between(at, now) {
        Some(seconds) => format!("{} ago", age(Some(seconds))),
        None => "never".to_owned(),
    }
}

fn age(seconds: Option<f64>) -> String {
    let Some(seconds) = seconds else { return "unknown".to_owned() };
    let whole = seconds.max(0.0).round() as u64;
    match whole {
        0..=59 => format!("{whole} s"),
        60..=3599 => format!("{} min {} s", whole / 60, whole % 60),
        _ => format!("{} h {} min", whole / 3600, whole % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_and_port() {
        assert_eq!(
            parse_url("http://127.0.0.1:9464/").expect("url"),
            ("127.0.0.1:9464".to_owned(), "http://127.0.0.1:9464".to_owned())
        );
        assert_eq!(parse_url("fleet.local").expect("url").0, "fleet.local:80");
        assert!(parse_url("https://x:1").is_err());
        assert!(parse_url("http://").is_err());
    }

    #[test]
    fn the_summary_shows_each_part_and_escapes_control_characters() {
        let status = serde_json::json!({
            "version": "0.1.0", "now": "2026-01-01T00:10:00.000Z", "started_at": "2026-01-01T00:00:00.000Z",
            "alive": true, "stuck": [], "ready": false, "not_ready": ["not subscribed to the MQTT broker"],
            "mqtt": {"connected": false, "subscribed": false, "session_resumed": null, "reconnects": 2,
                     "problem": "login refused", "last_message_at": "2026-01-01T00:09:58.000Z"},
            "postgres": {"healthy": true, "last_success_at": "2026-01-01T00:09:59.000Z", "tls": true,
                         "connects": 1, "write_failures": 0},
            "secret": null, "journal": null,
            "counters": {"received": 14, "accepted": 12, "duplicates": 0, "rejected": 2, "minutes_closed": 2, "rows_written": 2},
            "rates": {"every_seconds": 5, "points": [{"received": 2.0, "accepted": 1.0, "rejected": 1.0, "rows_written": 0.0}]},
            "buffers": {"inbound_queued": 0, "inbound_capacity": 8192, "rows_buffered": 0, "max_buffered_rows": 100,
                        "rejections_buffered": 0, "max_buffered_rejections": 10, "open_minutes": 1,
                        "writer_state": "connected", "writer_buffer_full": false},
            "rejections": [{"reason": "malformed", "count": 2, "latest": {"at": "2026-01-01T00:09:00.000Z",
                "topic": "t/\u{1b}[2J", "detail": "bad", "payload": "not json", "payload_cut": false}}],
            "recent_minutes": [{"machine": "m1", "minute": "2026-01-01T00:05:00.000Z", "samples": 6,
                "load_rate_avg": 15.0, "load_rate_min": 10.0, "load_rate_max": 20.0}],
            "silent_machines": []
        });
        let text = summary(&status, "http://127.0.0.1:9464");
        for expected in [
            "up 10 min 0 s",
            "ready: no",
            "  - not subscribed to the MQTT broker",
            "session resumed: unknown",
            "problem: login refused",
            "TLS: yes",
            "Secret      none configured",
            "received 14  accepted 12",
            "received 2.0 (2.0)",
            "malformed             2",
            "latest 1 min 0 s ago on t/\\u{1b}[2J: bad",
            "payload: not json",
            "m1  2026-01-01 00:05 UTC  samples 6  avg 15.0  min 10.0  max 20.0",
            "Silent longest: none",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
        assert!(!text.contains('\u{1b}'), "an escape character reached the terminal:\n{text}");
    }
}
