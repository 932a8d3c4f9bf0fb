//! What operators look at: `/metrics` (Prometheus), `/healthz` (the actor threads beat) and
//! `/readyz` (subscribed, database reachable, secret fresh, messages flowing), served by
//! hyper on a thread of its own (`server.rs`), off the actors' threads.

mod health;
mod heartbeat;
mod metrics;
mod routes;
mod server;
mod watchdog;

pub use health::{readiness, silence, ReadinessSettings};
pub use heartbeat::Heartbeats;
pub use metrics::render;
pub use routes::MonitorState;
pub use server::{ListenError, MonitorServer, HEADER_TIMEOUT, MAX_CONNECTIONS};
pub use watchdog::spawn_silence_watchdog;
