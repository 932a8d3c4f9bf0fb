//! One back-off for every retry loop (writer, secret keeper, secret at start-up, MQTT
//! connection and its reconnects, journal appends): exponential from `initial` by `factor` up to `max`, each
//! delay spread by ±`jitter` so that many instances restarted together (a plant's
//! power cut) do not retry in lockstep against the database or the broker.

use std::time::Duration;

/// How a retry loop waits. The policies are the constants below, in one place.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: u32,
    pub max: Duration,
    /// Each delay is multiplied by a factor drawn from `1 ± jitter` (0 ≤ jitter < 1).
    pub jitter: f64,
}

/// Database writes: quick first retries (a restart takes seconds), at most 10 s apart.
pub const DATABASE_WRITES: Backoff =
    Backoff { initial: Duration::from_millis(100), factor: 2, max: Duration::from_secs(10), jitter: 0.1 };
/// The secret keeper's refreshes after a failure (never later than the next refresh).
pub const SECRET_REFRESH: Backoff =
    Backoff { initial: Duration::from_millis(500), factor: 2, max: Duration::from_secs(60), jitter: 0.1 };
/// A secret fetched at start-up: a service that cannot log in should say so soon.
pub const SECRET_AT_START: Backoff =
    Backoff { initial: Duration::from_millis(250), factor: 2, max: Duration::from_secs(4), jitter: 0.1 };
/// Connecting to the MQTT broker, at start-up and at every reconnect, and subscribing
/// again after a refused SUBACK (the source's connection thread).
pub const MQTT_CONNECT: Backoff =
    Backoff { initial: Duration::from_secs(1), factor: 2, max: Duration::from_secs(30), jitter: 0.1 };

/// A journal append that failed (a full disk): the delivering thread waits, so the
/// broker queues meanwhile; at most 2 s between tries, so intake resumes soon after space
/// returns.
pub const JOURNAL_APPEND: Backoff =
    Backoff { initial: Duration::from_millis(50), factor: 2, max: Duration::from_secs(2), jitter: 0.1 };

/// How many times a secret is fetched at start-up (service, migrate, MQTT password)
/// before start-up fails with the error.
pub const STARTUP_ATTEMPTS: u32 = 5;

/// A run of failed attempts under one [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retries {
    policy: Backoff,
    failures: u32,
    /// The delay before jitter that the next failure waits.
    next: Duration,
}

impl Retries {
    pub fn new(policy: Backoff) -> Self {
        Retries { policy, failures: 0, next: policy.initial }
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let delay = self.next;
        self.next = delay.saturating_mul(self.policy.factor).min(self.policy.max);
        let spread = 1.0 + self.policy.jitter * (2.0 * rand::random::<f64>() - 1.0);
        delay.mul_f64(spread.max(0.0))
    }

    /// Failures so far in this run.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap_within_the_jitter() {
        let policy = Backoff {
            initial: Duration::from_millis(100),
            factor: 2,
            max: Duration::from_millis(700),
            jitter: 0.1,
        };
        let mut retries = Retries::new(policy);
        for expected in [100, 200, 400, 700, 700] {
            let delay = retries.failed().as_secs_f64() * 1000.0;
            let expected = f64::from(expected);
            assert!(
                (expected * 0.9..=expected * 1.1).contains(&delay),
                "{delay} ms, expected {expected} ± 10%"
            );
        }
        assert_eq!(retries.failures(), 5);
    }

    #[test]
    fn without_jitter_the_delays_are_exact() {
        let policy = Backoff { jitter: 0.0, ..DATABASE_WRITES };
        let mut retries = Retries::new(policy);
        let delays: Vec<u128> = (0..8).map(|_| retries.failed().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 6400, 10_000]);
    }
}
