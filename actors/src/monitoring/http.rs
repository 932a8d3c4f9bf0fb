//! A minimal HTTP/1.1 listener for `/metrics`, `/healthz` and `/readyz`: GET only, one
//! request per connection. Small on purpose: it must keep answering when the rest of the
//! service is in trouble, and it must not pull in a web framework.

use super::health::{readiness, ReadinessSettings};
use super::heartbeat::Heartbeats;
use super::metrics::render;
use crate::stats::PipelineStats;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_REQUEST: usize = 8192;

/// What the endpoints look at. Threads are added to `heartbeats` as they start.
#[derive(Debug)]
pub struct MonitorState {
    pub stats: Arc<PipelineStats>,
    pub readiness: ReadinessSettings,
    /// What `/healthz` checks: each actor thread beats.
    pub heartbeats: Heartbeats,
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<MonitorState>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                actix_rt::spawn(answer(stream, state.clone()));
            }
            Err(err) => {
                tracing::warn!(error = %err, "metrics listener cannot accept; retrying");
                actix_rt::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, state: Arc<MonitorState>) {
    let Ok(Some(path)) = tokio::time::timeout(Duration::from_secs(5), read_path(&mut stream)).await else {
        return;
    };
    let (status, content_type, body) = match path.as_str() {
        "/metrics" => {
            (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", render(&state.stats))
        }
        "/healthz" => healthz(&state),
        "/readyz" => {
            let now = state.stats.clock.now().micros();
            match readiness(&state.stats, &state.readiness, now) {
                Ok(()) => (200, "text/plain; charset=utf-8", "ready\n".to_owned()),
                Err(reasons) => (503, "text/plain; charset=utf-8", format!("{}\n", reasons.join("\n"))),
            }
        }
        _ => (404, "text/plain; charset=utf-8", "not found: try /metrics, /healthz or /readyz\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Reads the request head and returns the path of a GET (without the query string).
async fn read_path(stream: &mut TcpStream) -> Option<String> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 || buffer.len() + read > MAX_REQUEST {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let head = std::str::from_utf8(&buffer).ok()?;
    let mut parts = head.lines().next()?.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        return Some(String::from("(not GET)"));
    }
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

/// Alive while every actor thread beats; never looks into a mailbox (see `heartbeat.rs`).
fn healthz(state: &MonitorState) -> (u16, &'static str, String) {
    let stale = state.heartbeats.stale();
    if stale.is_empty() {
        return (200, "text/plain; charset=utf-8", "ok\n".to_owned());
    }
    let stuck: Vec<String> =
        stale.iter().map(|(name, age)| format!("{name} (no heartbeat for {}s)", age.as_secs())).collect();
    (503, "text/plain; charset=utf-8", format!("stuck: {}\n", stuck.join(", ")))
}
