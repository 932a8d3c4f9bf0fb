//! The "connected but silently stopped" watchdog: a warning when the service has been
//! connected to the broker without a message for longer than `mqtt.idle_alert`, and a
//! note when messages flow again. `/readyz` reports the same condition
//! ([`super::health::silence`]).

use super::health::{silence, ReadinessSettings};
use crate::clock::Clock;
use crate::stats::PipelineStats;
use std::sync::Arc;
use std::time::Duration;

/// Watches until the task is dropped; does nothing when `idle_alert` is off.
pub fn spawn_silence_watchdog(
    stats: Arc<PipelineStats>,
    idle_alert: Option<Duration>,
    clock: Arc<dyn Clock>,
) -> Option<actix_rt::task::JoinHandle<()>> {
    let limit = idle_alert?;
    let every = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(15));
    let settings = ReadinessSettings { idle_alert };
    Some(actix_rt::spawn(async move {
        let mut reported = false;
        let mut ticks = actix_rt::time::interval(every);
        loop {
            ticks.tick().await;
            match (silence(&stats, &settings, clock.now().micros()), reported) {
                (Some(silent), false) => {
                    reported = true;
                    tracing::warn!(silent_for = ?silent, "connected to the MQTT broker but no message arrives");
                }
                (None, true) => {
                    reported = false;
                    tracing::info!("messages arrive again");
                }
                _ => {}
            }
        }
    }))
}
