//! The quiet period of a reopened minute: how long an aggregator waits for more late
//! samples before it closes a minute that was already due (see `aggregator`'s module
//! comment for why, and docs/benchmarks.md, sessions 6 and 13, for the figures behind
//! the bounds).

use std::time::{Duration, Instant};

/// The shortest wait of a reopened (late) minute for more late samples before it closes.
pub(super) const LATE_QUIET_MIN: Duration = Duration::from_millis(50);
/// The longest such wait (a machine whose late samples come far apart).
pub(super) const LATE_QUIET_MAX: Duration = Duration::from_secs(5);
/// The longest a reopened minute is held while late samples keep coming.
pub(super) const LATE_HOLD: Duration = Duration::from_secs(5);

/// Late samples arriving for already-due minutes (see the module comment). Kept after
/// the reopened minutes close, so the next late arrival knows the machine's pace.
#[derive(Debug, Clone, Copy)]
pub(super) struct LateArrivals {
    /// The first late arrival of the reopened minutes still held; `None` once they closed.
    pub(super) first: Option<Instant>,
    pub(super) last: Instant,
    /// The quiet period, in µs (a `u32`: this is per machine).
    pub(super) quiet_micros: u32,
}

impl LateArrivals {
    /// When the reopened minutes may close; `None` while none is held.
    /// Both waits are capped by `tick` (`AggregatorSettings::tick`), so a test with a
    /// tiny tick closes late minutes quickly.
    pub(super) fn settled(&self, tick: Duration) -> Option<Instant> {
        let quiet = Duration::from_micros(u64::from(self.quiet_micros)).min(tick);
        self.first.map(|first| (self.last + quiet).min(first + LATE_HOLD.min(tick)))
    }

    /// Notes a late arrival at `at`, after `previous` (the machine's last one, if any).
    pub(super) fn arrived(previous: Option<LateArrivals>, at: Instant) -> LateArrivals {
        let quiet = match previous {
            Some(previous) => {
                (at.saturating_duration_since(previous.last) * 3).clamp(LATE_QUIET_MIN, LATE_QUIET_MAX)
            }
            None => LATE_QUIET_MIN,
        };
        LateArrivals {
            first: Some(previous.and_then(|previous| previous.first).unwrap_or(at)),
            last: at,
            quiet_micros: u32::try_from(quiet.as_micros()).unwrap_or(u32::MAX),
        }
    }
}

/// The pace of a shard's whole stream of samples, so that a pause of all of it settles
/// every reopened minute of the shard at once. Why: a reopened minute waits three of its
/// machine's gaps for more late samples, and a machine of a backlog from 100,000
/// machines has gaps of about 1.5 s. When the backlog is drained, nothing more is coming
/// for any machine, yet each of their last minutes would wait up to 4.5 s more; the
/// stream as a whole, a batch every few milliseconds, shows the end within 50 ms. A
/// machine resending late samples while the others go on sending keeps its own wait.
#[derive(Debug, Clone, Copy)]
pub(super) struct StreamPace {
    /// When the shard last took a batch with samples; `None` before the first.
    last_batch: Option<Instant>,
    /// The usual gap between two batches, in µs (a moving average over about 8, from the
    /// first gap on).
    gap_micros: u64,
    /// The last gap between two batches, in µs.
    last_gap_micros: u64,
    /// When the shard last swept its timers: a sweep much later than that means its
    /// thread did not run (a stall), not that no samples came.
    last_sweep: Option<Instant>,
    /// Since when the stream is paused: set once it has been quiet for
    /// [`StreamPace::quiet`], cleared by the next batch.
    paused_since: Option<Instant>,
}

/// A sweep this much later than the one before it means the shard's thread was held up:
/// the silence since the last batch is not counted towards a pause (a backlog may wait
/// in the shard's mailbox).
const STALLED_SWEEP: Duration = Duration::from_millis(20);

impl StreamPace {
    pub(super) const fn new() -> Self {
        StreamPace {
            last_batch: None,
            gap_micros: 0,
            last_gap_micros: 0,
            last_sweep: None,
            paused_since: None,
        }
    }

    /// Notes a batch of samples taken at `at`.
    pub(super) fn batch_arrived(&mut self, at: Instant) {
        if let Some(last) = self.last_batch {
            let gap = u64::try_from(at.saturating_duration_since(last).as_micros()).unwrap_or(u64::MAX);
            self.gap_micros = match self.last_gap_micros {
                0 => gap,
                _ => self.gap_micros - self.gap_micros / 8 + gap / 8,
            };
            self.last_gap_micros = gap.max(1);
        }
        self.last_batch = Some(at);
        self.paused_since = None;
    }

    /// How long the stream must be quiet to count as paused: three of its usual gaps or
    /// of its last one, whichever is longer, within the bounds of a machine's own quiet
    /// period. The last gap too: when one machine's late samples are all the stream, the
    /// pause is never shorter than that machine's own wait.
    pub(super) fn quiet(&self) -> Duration {
        let gap = self.gap_micros.max(self.last_gap_micros);
        (Duration::from_micros(gap) * 3).clamp(LATE_QUIET_MIN, LATE_QUIET_MAX)
    }

    /// Notes the shard's sweep at `now`; true exactly once per pause, when it begins.
    pub(super) fn swept(&mut self, now: Instant) -> bool {
        let stalled = self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) > STALLED_SWEEP);
        self.last_sweep = Some(now);
        let Some(last_batch) = self.last_batch else { return false };
        if stalled {
            // Counted afresh from now: whatever came meanwhile is still to be taken.
            self.last_batch = Some(now.max(last_batch));
            return false;
        }
        if self.paused_since.is_some() || now.saturating_duration_since(last_batch) < self.quiet() {
            return false;
        }
        self.paused_since = Some(now);
        true
    }

    /// Since when the stream is paused, if it is (see [`StreamPace::swept`]).
    pub(super) fn paused_since(&self) -> Option<Instant> {
        self.paused_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pace of batches `gap` apart, `count` of them from `start`, swept on time after
    /// each; returns the instant of the last batch.
    fn batches(pace: &mut StreamPace, start: Instant, gap: Duration, count: u32) -> Instant {
        let mut at = start;
        for n in 0..count {
            at = start + gap * n;
            pace.batch_arrived(at);
            assert!(!pace.swept(at), "a stream taking batches is not paused");
        }
        at
    }

    /// Sweeps every 5 ms from `from` until the pace says the stream paused; returns when.
    fn sweep_until_paused(pace: &mut StreamPace, from: Instant, within: Duration) -> Option<Duration> {
        let mut at = from;
        while at <= from + within {
            at += Duration::from_millis(5);
            if pace.swept(at) {
                return Some(at - from);
            }
        }
        None
    }

    #[test]
    fn a_stream_is_paused_after_three_of_its_gaps_and_once_per_pause() {
        let mut pace = StreamPace::new();
        let start = Instant::now();
        let last = batches(&mut pace, start, Duration::from_millis(40), 200);
        let paused = sweep_until_paused(&mut pace, last, Duration::from_secs(1)).expect("paused");
        assert!(
            paused >= Duration::from_millis(115) && paused <= Duration::from_millis(125),
            "after {paused:?}"
        );
        assert_eq!(pace.paused_since(), Some(last + paused));
        assert!(!pace.swept(last + Duration::from_secs(2)), "announced once, not at every sweep");
        pace.batch_arrived(last + Duration::from_secs(2));
        assert_eq!(pace.paused_since(), None, "a batch ends the pause");
    }

    #[test]
    fn a_fast_stream_pauses_after_the_shortest_quiet_period_and_a_slow_one_within_the_longest() {
        let mut fast = StreamPace::new();
        let start = Instant::now();
        let last = batches(&mut fast, start, Duration::from_micros(300), 500);
        let paused = sweep_until_paused(&mut fast, last, Duration::from_secs(1)).expect("paused");
        assert!(
            paused >= LATE_QUIET_MIN && paused < LATE_QUIET_MIN + Duration::from_millis(10),
            "after {paused:?}"
        );

        let mut slow = StreamPace::new();
        let last = batches(&mut slow, start, Duration::from_secs(4), 60);
        let paused = sweep_until_paused(&mut slow, last, Duration::from_secs(10)).expect("paused");
        assert!(
            paused >= LATE_QUIET_MAX && paused < LATE_QUIET_MAX + Duration::from_millis(10),
            "after {paused:?}"
        );
    }

    #[test]
    fn a_stream_of_one_machine_is_not_paused_before_its_own_wait() {
        // A machine resending late samples 150 ms apart, alone: its own quiet period is
        // 450 ms after each, and the stream's pause must not come sooner.
        let mut pace = StreamPace::new();
        let start = Instant::now();
        let last = batches(&mut pace, start, Duration::from_millis(150), 2);
        let paused = sweep_until_paused(&mut pace, last, Duration::from_secs(1)).expect("paused");
        assert!(paused >= Duration::from_millis(450), "after {paused:?}");
        // Gaps that grow (10, 20, 30, then 300 ms): the last one counts.
        let mut pace = StreamPace::new();
        for at in [0, 10, 30, 60, 360] {
            pace.batch_arrived(start + Duration::from_millis(at));
        }
        let last = start + Duration::from_millis(360);
        let paused = sweep_until_paused(&mut pace, last, Duration::from_secs(2)).expect("paused");
        assert!(paused >= Duration::from_millis(900), "after {paused:?}");
    }

    #[test]
    fn the_wait_before_the_first_batch_does_not_count_as_a_gap() {
        let mut pace = StreamPace::new();
        let start = Instant::now();
        assert!(!pace.swept(start), "no stream yet, nothing paused");
        // The first batch an hour after the shard started, then a fast stream.
        let last = batches(&mut pace, start + Duration::from_secs(3_600), Duration::from_millis(1), 20);
        let paused = sweep_until_paused(&mut pace, last, Duration::from_secs(1)).expect("paused");
        assert!(paused < LATE_QUIET_MIN + Duration::from_millis(10), "after {paused:?}");
    }

    #[test]
    fn a_stalled_shard_thread_is_not_a_pause_of_the_stream() {
        let mut pace = StreamPace::new();
        let start = Instant::now();
        let last = batches(&mut pace, start, Duration::from_millis(2), 100);
        // The thread held up for 300 ms (batches may be waiting in its mailbox): its
        // first sweep after that does not find the stream paused, nor do the next ones
        // until the quiet period has passed again from then.
        let resumed = last + Duration::from_millis(300);
        assert!(!pace.swept(resumed));
        let paused = sweep_until_paused(&mut pace, resumed, Duration::from_secs(1)).expect("paused");
        assert!(paused >= LATE_QUIET_MIN, "paused {paused:?} after the stall: too soon");
    }
}
