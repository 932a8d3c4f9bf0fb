//! What operators look at: `/metrics` (Prometheus), `/healthz` (the actor threads beat) and
//! `/readyz` (subscribed, database reachable, secret fresh, messages flowing), served by a
//! small HTTP listener on the System arbiter.

mod health;
mod heartbeat;
mod http;
mod metrics;

pub use health::{readiness, silence as health_silence, ReadinessSettings};
pub use heartbeat::Heartbeats;
pub use http::{serve, MonitorState};
pub use metrics::render;
