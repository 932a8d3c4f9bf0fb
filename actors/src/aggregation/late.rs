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
