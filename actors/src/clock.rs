//! Where "now" comes from, the only place in the actors that reads a clock: the wall
//! clock ([`Clock::now`]: event time is compared with it, timestamps in metrics and
//! `/readyz` come from it) and the monotonic one ([`Clock::instant`]: timers, back-offs,
//! latencies, immune to a stepped wall clock). Tests swap in a [`ManualClock`], whose
//! wall clock moves only when told, so minute closing is deterministic; its monotonic
//! clock stays real, so timers still fire.

use crate::logic::Timestamp;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Wall-clock time.
    fn now(&self) -> Timestamp;

    /// Monotonic time.
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The clock of a component built without one: the system's.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        // Straight to µs: through chrono's calendar types this was a sixth of a journal
        // append (it is read for every message received).
        let micros = match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |micros| -micros),
        };
        Timestamp::from_micros(micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_agrees_with_chrono() {
        let before = Timestamp::from_chrono(chrono::Utc::now()).micros();
        let now = SystemClock.now().micros();
        let after = Timestamp::from_chrono(chrono::Utc::now()).micros();
        assert!(before <= now && now <= after, "{before} <= {now} <= {after}");
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    micros: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock { micros: AtomicI64::new(start.micros()) }
    }

    pub fn set(&self, now: Timestamp) {
        self.micros.store(now.micros(), Ordering::SeqCst);
    }

    pub fn advance(&self, by: std::time::Duration) {
        let micros = crate::logic::time::duration_micros(by);
        self.micros.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.micros.load(Ordering::SeqCst))
    }
}
