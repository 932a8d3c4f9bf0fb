//! Liveness for `/healthz`: every thread the actors run on stamps a heartbeat each
//! second, and the service is alive while every stamp is recent.
//!
//! A heartbeat goes through no actor's mailbox on purpose. A mailbox is full whenever
//! there is back-pressure (a database outage with a full buffer), and a liveness probe
//! that failed then would have the orchestrator restart the service and throw away
//! everything it holds in memory. A thread that stops beating is stuck (a blocking call,
//! a busy loop, a deadlock): that is what a restart can cure. "Can it do its job" is
//! `/readyz`'s question.

use crate::clock::{Clock, SystemClock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often each thread beats.
pub(super) const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A thread whose last beat is older than this is reported stuck.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(10);

/// The heartbeats of the actor threads, on a monotonic clock (a wall-clock step must not
/// look like a stuck thread).
#[derive(Debug)]
pub struct Heartbeats {
    origin: Instant,
    beats: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats { origin: SystemClock.instant(), beats: Mutex::new(Vec::new()) }
    }
}

impl Heartbeats {
    /// Starts a heartbeat on the thread of `arbiter`, named `name` in `/healthz`.
    pub fn watch(&self, name: impl Into<String>, arbiter: &actix::ArbiterHandle) {
        let beat = Arc::new(AtomicU64::new(self.now_millis()));
        self.beats.lock().unwrap_or_else(PoisonError::into_inner).push((name.into(), beat.clone()));
        let origin = self.origin;
        arbiter.spawn(async move {
            loop {
                beat.store(millis_since(origin), Ordering::Relaxed);
                actix_rt::time::sleep(BEAT_EVERY).await;
            }
        });
    }

    /// The threads whose last beat is older than [`STALE_AFTER`], with its age.
    pub fn stale(&self) -> Vec<(String, Duration)> {
        let now = self.now_millis();
        self.beats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|(name, beat)| {
                let age = Duration::from_millis(now.saturating_sub(beat.load(Ordering::Relaxed)));
                (age > STALE_AFTER).then(|| (name.clone(), age))
            })
            .collect()
    }

    fn now_millis(&self) -> u64 {
        millis_since(self.origin)
    }
}

fn millis_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn a_thread_that_stops_beating_is_reported() {
        let heartbeats = Heartbeats::default();
        let arbiter = actix::Arbiter::new();
        heartbeats.watch("worker", &arbiter.handle());
        assert!(heartbeats.stale().is_empty(), "a fresh heartbeat is not stale");
        // A stuck thread: block the arbiter's thread past STALE_AFTER.
        arbiter.spawn(async { std::thread::sleep(STALE_AFTER + Duration::from_secs(2)) });
        actix_rt::time::sleep(STALE_AFTER + Duration::from_secs(1)).await;
        let stale = heartbeats.stale();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].0, "worker");
        assert!(stale[0].1 > STALE_AFTER);
        arbiter.stop();
    }
}
