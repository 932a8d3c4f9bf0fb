//! What operators look at: `/metrics` (Prometheus), `/healthz` (the actors answer) and
//! `/readyz` (subscribed, database reachable, secret fresh, messages flowing), served by a
//! small HTTP listener on the System arbiter.

mod health;
mod http;
mod metrics;

pub use health::{readiness, silence as health_silence, ReadinessSettings};
pub use http::{serve, MonitorState};
pub use metrics::render;
