//! What operators look at: `/metrics` (Prometheus), `/healthz` (the actor threads beat) and
//! `/readyz` (subscribed, database reachable, secret fresh, messages flowing), served by a
//! small HTTP listener on the System arbiter.

mod health;
mod heartbeat;
mod http;
mod metrics;
mod watchdog;

pub use health::{readiness, silence, ReadinessSettings};
pub use heartbeat::Heartbeats;
pub use http::{serve, MonitorState};
pub use metrics::render;
pub use watchdog::spawn_silence_watchdog;
