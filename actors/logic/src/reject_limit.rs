//! How many rejected messages may be stored per second.
//!
//! A fixed one-second window: simple to reason about, and the contract only asks that a
//! flood of garbage cannot turn into a flood of database writes.

use crate::time::Timestamp;

#[derive(Debug)]
pub struct RejectLimiter {
    max_per_second: u32,
    window_second: i64,
    used: u32,
}

impl RejectLimiter {
    pub fn new(max_per_second: u32) -> Self {
        RejectLimiter { max_per_second, window_second: i64::MIN, used: 0 }
    }

    /// True when one more rejected message may be stored at `now`.
    pub fn allow(&mut self, now: Timestamp) -> bool {
        let second = now.micros().div_euclid(1_000_000);
        if second != self.window_second {
            self.window_second = second;
            self.used = 0;
        }
        if self.used < self.max_per_second {
            self.used += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_each_second_and_resets() {
        let mut limiter = RejectLimiter::new(2);
        let t0 = Timestamp::from_micros(10_000_000);
        assert!(limiter.allow(t0));
        assert!(limiter.allow(t0.saturating_add_micros(1)));
        assert!(!limiter.allow(t0.saturating_add_micros(999_999)));
        assert!(limiter.allow(t0.saturating_add_micros(1_000_000)));
        assert!(!RejectLimiter::new(0).allow(t0));
    }
}
