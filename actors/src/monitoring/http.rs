//! A minimal HTTP/1.1 listener for `/metrics`, `/healthz` and `/readyz`: GET only, one
//! request per connection. Small on purpose: it must keep answering when the rest of the
//! service is in trouble, and it must not pull in a web framework.

use super::health::{readiness, ReadinessSettings};
use super::metrics::render;
use crate::messages::Ping;
use crate::stats::PipelineStats;
use actix::Recipient;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long `/healthz` waits for each actor's answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_REQUEST: usize = 8192;

/// What the endpoints look at. Actors are added as they start.
#[derive(Debug)]
pub struct MonitorState {
    pub stats: Arc<PipelineStats>,
    pub readiness: ReadinessSettings,
    /// (name, address) of each actor `/healthz` pings.
    pub actors: Mutex<Vec<(&'static str, Recipient<Ping>)>>,
}

impl MonitorState {
    pub fn add_actor(&self, name: &'static str, actor: Recipient<Ping>) {
        self.actors.lock().unwrap_or_else(PoisonError::into_inner).push((name, actor));
    }
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
        "/healthz" => healthz(&state).await,
        "/readyz" => {
            let now = chrono::Utc::now().timestamp_micros();
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

async fn healthz(state: &MonitorState) -> (u16, &'static str, String) {
    let actors = state.actors.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let mut silent = Vec::new();
    for (name, actor) in actors {
        if !matches!(tokio::time::timeout(PING_TIMEOUT, actor.send(Ping)).await, Ok(Ok(()))) {
            silent.push(name);
        }
    }
    if silent.is_empty() {
        (200, "text/plain; charset=utf-8", "ok\n".to_owned())
    } else {
        (503, "text/plain; charset=utf-8", format!("not answering: {}\n", silent.join(", ")))
    }
}
