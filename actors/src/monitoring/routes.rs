//! What each path answers: `/` (the status page), `/api/status`, `/metrics`, `/healthz`,
//! `/readyz`. GET and HEAD only (hyper
//! leaves the body out of a HEAD response and keeps its length); any other method is
//! `405` with `Allow: GET, HEAD`, since nothing here takes a request body.

use super::health::{readiness, ReadinessSettings};
use super::heartbeat::Heartbeats;
use super::history::History;
use super::metrics::render;
use super::page::{content_security_policy, PAGE};
use super::status::{status, to_json, StatusLimits};
use crate::stats::PipelineStats;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{
    HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use std::sync::Arc;

const TEXT: &str = "text/plain; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// What the endpoints look at. Threads are added to `heartbeats` as they start.
#[derive(Debug)]
pub struct MonitorState {
    pub stats: Arc<PipelineStats>,
    pub readiness: ReadinessSettings,
    /// What `/healthz` checks: each actor thread beats.
    pub heartbeats: Heartbeats,
    /// Configured limits shown beside the gauges.
    pub limits: StatusLimits,
    /// The last ten minutes of counters, sampled on the listener's thread.
    pub history: History,
    /// When the service started (µs since the epoch).
    pub started_micros: i64,
}

impl MonitorState {
    pub fn new(
        stats: Arc<PipelineStats>,
        readiness: ReadinessSettings,
        limits: StatusLimits,
        heartbeats: Heartbeats,
    ) -> Self {
        let started_micros = stats.clock.now().micros();
        MonitorState { stats, readiness, heartbeats, limits, history: History::default(), started_micros }
    }
}

pub(super) fn respond<B>(state: &MonitorState, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD are served\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" => {
            let mut response = reply(StatusCode::OK, HTML, PAGE);
            let headers = response.headers_mut();
            if let Ok(policy) = HeaderValue::from_str(content_security_policy()) {
                headers.insert(CONTENT_SECURITY_POLICY, policy);
            }
            headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
            response
        }
        "/metrics" => reply(StatusCode::OK, OPENMETRICS, render(&state.stats)),
        "/healthz" => healthz(state),
        "/readyz" => {
            let now = state.stats.clock.now().micros();
            // Which broker this instance is on (with several in `mqtt.url`), as a last
            // line: monitors read the status code.
            let broker =
                state.stats.mqtt_broker.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            let on = broker.map(|url| format!("MQTT broker: {url}\n")).unwrap_or_default();
            match readiness(&state.stats, &state.readiness, now) {
                Ok(()) => reply(StatusCode::OK, TEXT, format!("ready\n{on}")),
                Err(reasons) => {
                    reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{}\n{on}", reasons.join("\n")))
                }
            }
        }
        "/api/status" => {
            let now = state.stats.clock.now().micros();
            reply(StatusCode::OK, JSON, to_json(&status(state, now)))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /, /api/status, /metrics, /healthz or /readyz\n",
        ),
    }
}

/// Alive while every actor thread beats; never looks into a mailbox (see `heartbeat.rs`).
fn healthz(state: &MonitorState) -> Response<Full<Bytes>> {
    let stale = state.heartbeats.stale();
    if stale.is_empty() {
        return reply(StatusCode::OK, TEXT, "ok\n");
    }
    let stuck: Vec<String> =
        stale.iter().map(|(name, age)| format!("{name} (no heartbeat for {}s)", age.as_secs())).collect();
    reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("stuck: {}\n", stuck.join(", ")))
}

/// A response whose body is `body`; never cached (every answer is the state of now).
fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MonitorState {
        MonitorState::new(
            Arc::new(PipelineStats::default()),
            ReadinessSettings { idle_alert: None },
            StatusLimits::default(),
            Heartbeats::default(),
        )
    }

    fn request(method: Method, path: &str) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = path.parse().unwrap_or_default();
        request
    }

    #[test]
    fn other_methods_are_not_allowed_anywhere() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            for path in ["/metrics", "/healthz", "/nope"] {
                let response = respond(&state(), &request(method.clone(), path));
                assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert_eq!(response.headers().get(ALLOW), Some(&HeaderValue::from_static("GET, HEAD")));
            }
        }
    }

    #[test]
    fn paths_keep_their_meanings() {
        let state = state();
        assert_eq!(respond(&state, &request(Method::GET, "/healthz")).status(), StatusCode::OK);
        assert_eq!(respond(&state, &request(Method::HEAD, "/metrics")).status(), StatusCode::OK);
        // Nothing has connected yet: not ready.
        assert_eq!(
            respond(&state, &request(Method::GET, "/readyz")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(&state, &request(Method::GET, "/readyz?verbose")).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(respond(&state, &request(Method::GET, "/nope")).status(), StatusCode::NOT_FOUND);
        let api = respond(&state, &request(Method::GET, "/api/status"));
        assert_eq!(api.status(), StatusCode::OK);
        assert_eq!(api.headers().get(CONTENT_TYPE), Some(&HeaderValue::from_static(JSON)));
        let page = respond(&state, &request(Method::GET, "/"));
        assert_eq!(page.headers().get(CONTENT_TYPE), Some(&HeaderValue::from_static(HTML)));
        assert!(page.headers().get(CONTENT_SECURITY_POLICY).is_some());
    }
}
