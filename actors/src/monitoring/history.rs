//! The last ten minutes of the main counters, for the status page's charts: a sample every
//! [`SAMPLE_EVERY`] taken on the listener's thread (the data path only ever bumps its
//! atomics), kept in a ring of [`SAMPLES`].

use crate::stats::PipelineStats;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How often the counters are sampled.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// How far back the charts reach.
pub(super) const WINDOW: Duration = Duration::from_secs(600);
/// Samples kept: one more than the intervals in the window.
const SAMPLES: usize = (WINDOW.as_secs() / SAMPLE_EVERY.as_secs()) as usize + 1;

/// The counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    at_micros: i64,
    received: u64,
    accepted: u64,
    rejected: u64,
    rows_written: u64,
}

/// Per-second rates over one interval, ending at `at_micros`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub at_micros: i64,
    pub received: f64,
    pub accepted: f64,
    pub rejected: f64,
    pub rows_written: f64,
}

#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    /// Takes a sample of `stats` now.
    pub fn record(&self, stats: &PipelineStats) {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let sample = Sample {
            at_micros: stats.clock.now().micros(),
            received: get(&stats.received),
            accepted: get(&stats.accepted),
            rejected: stats.rejected_total(),
            rows_written: get(&stats.rows_written),
        };
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The rates between consecutive samples, oldest first.
    pub fn rates(&self) -> Vec<Rates> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter_map(|(before, after)| {
                let seconds = (after.at_micros - before.at_micros) as f64 / 1e6;
                // A clock stepped back gives no rate rather than a negative one.
                (seconds > 0.0).then(|| {
                    let rate = |from: u64, to: u64| to.saturating_sub(from) as f64 / seconds;
                    Rates {
                        at_micros: after.at_micros,
                        received: rate(before.received, after.received),
                        accepted: rate(before.accepted, after.accepted),
                        rejected: rate(before.rejected, after.rejected),
                        rows_written: rate(before.rows_written, after.rows_written),
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::logic::Timestamp;
    use crate::stats::bump;
    use std::sync::Arc;

    #[test]
    fn rates_are_per_second_between_samples_and_the_window_is_bounded() {
        let clock = Arc::new(ManualClock::new(Timestamp::from_micros(1_800_000_000_000_000)));
        let stats = PipelineStats::with_clock(clock.clone());
        let history = History::default();
        history.record(&stats);
        assert!(history.rates().is_empty(), "one sample gives no rate yet");
        bump(&stats.received, 50);
        bump(&stats.rows_written, 5);
        clock.advance(SAMPLE_EVERY);
        history.record(&stats);
        let rates = history.rates();
        assert_eq!(rates.len(), 1);
        assert_eq!((rates[0].received, rates[0].rows_written, rates[0].accepted), (10.0, 1.0, 0.0));
        assert_eq!(rates[0].at_micros, clock.now().micros());
        for _ in 0..SAMPLES * 2 {
            clock.advance(SAMPLE_EVERY);
            history.record(&stats);
        }
        assert_eq!(history.rates().len(), SAMPLES - 1);
    }
}
