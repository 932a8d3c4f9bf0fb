//! What operators look at: `/metrics` (Prometheus), `/healthz` (the actor threads beat),
//! `/readyz` (subscribed, database reachable, secret fresh, messages flowing) and
//! `/api/status` (everything at once, with the last ten minutes of rates) and `/`, the
//! status page that shows it, served by hyper
//! on a thread of its own (`server.rs`), off the actors' threads.

mod health;
mod heartbeat;
mod history;
mod metrics;
mod page;
mod routes;
mod server;
mod status;
mod watchdog;

pub use health::{readiness, silence, ReadinessSettings};
pub use heartbeat::Heartbeats;
pub use metrics::render;
pub use routes::MonitorState;
pub use server::{ListenError, MonitorServer, HEADER_TIMEOUT, MAX_CONNECTIONS};
pub use status::StatusLimits;
pub use watchdog::spawn_silence_watchdog;
