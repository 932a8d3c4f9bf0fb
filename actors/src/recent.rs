//! Small, bounded samples of what just happened, for the status page (`/api/status`):
//! the latest rejected message of each reason, the last minutes handed to the writer, and
//! the machines silent the longest.
//!
//! Each is kept by one actor thread (the broker, the writer) behind a mutex that only the
//! status request contends for, and each is a few dozen entries whatever the fleet's size:
//! strings are cut to a few hundred bytes, since a payload or a topic is whatever a sender
//! chose to put there.

use crate::logic::{Minute, MinuteAggregate, RejectReason};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

/// Closed minutes remembered.
pub const RECENT_MINUTES: usize = 12;
/// Silent machines remembered.
pub const SILENT_MACHINES: usize = 10;
/// Characters kept of a rejected payload, its detail and its topic.
pub const EXCERPT_CHARS: usize = 300;

#[derive(Debug, Default)]
pub struct Recent {
    rejections: Mutex<[Option<RejectionExample>; RejectReason::ALL.len()]>,
    minutes: Mutex<VecDeque<RecentMinute>>,
    silent: Mutex<Vec<SilentMachine>>,
}

/// The latest rejected message of one reason, cut to excerpts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionExample {
    /// µs since the epoch.
    pub at_micros: i64,
    pub topic: String,
    pub detail: String,
    /// The payload's first [`EXCERPT_CHARS`] characters, invalid UTF-8 replaced.
    pub payload: String,
    /// Whether `payload` is shorter than what was received.
    pub payload_cut: bool,
}

/// A minute handed to the writer.
#[derive(Debug, Clone, PartialEq)]
pub struct RecentMinute {
    pub machine: Arc<str>,
    /// The minute's start, µs since the epoch.
    pub minute_micros: i64,
    pub samples: u32,
    pub load_rate_avg: f64,
    pub load_rate_min: f64,
    pub load_rate_max: f64,
}

/// A machine and when its last message arrived (µs since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentMachine {
    pub machine: Arc<str>,
    pub last_seen_micros: i64,
}

impl Recent {
    /// The broker rejected a message.
    pub fn rejected(&self, reason: RejectReason, at_micros: i64, topic: &str, detail: &str, payload: &[u8]) {
        // A character is at most 4 bytes: no need to look further than this.
        let head = &payload[..payload.len().min(EXCERPT_CHARS * 4)];
        let text = String::from_utf8_lossy(head);
        let payload_excerpt = excerpt(&text);
        let example = RejectionExample {
            at_micros,
            topic: excerpt(topic),
            detail: excerpt(detail),
            payload_cut: head.len() < payload.len() || payload_excerpt.len() < text.len(),
            payload: payload_excerpt,
        };
        lock(&self.rejections)[reason.index()] = Some(example);
    }

    /// The writer took closed minutes (machine, minute, aggregate); the last of them are
    /// remembered.
    pub fn minutes_closed<'a>(
        &self,
        minutes: impl ExactSizeIterator<Item = (&'a Arc<str>, Minute, &'a MinuteAggregate)>,
    ) {
        let skip = minutes.len().saturating_sub(RECENT_MINUTES);
        let mut recent = lock(&self.minutes);
        for (machine, minute, aggregate) in minutes.skip(skip) {
            if recent.len() == RECENT_MINUTES {
                recent.pop_front();
            }
            recent.push_back(RecentMinute {
                machine: machine.clone(),
                minute_micros: minute.start().micros(),
                samples: aggregate.samples,
                load_rate_avg: aggregate.load_rate_sum / f64::from(aggregate.samples.max(1)),
                load_rate_min: aggregate.load_rate_min,
                load_rate_max: aggregate.load_rate_max,
            });
        }
    }

    /// The broker's periodic look at its machines: the ones silent the longest.
    pub fn set_silent(&self, machines: Vec<SilentMachine>) {
        *lock(&self.silent) = machines;
    }

    /// (reason, latest example) for every reason that has one.
    pub fn rejection_examples(&self) -> Vec<(RejectReason, RejectionExample)> {
        let examples = lock(&self.rejections);
        RejectReason::ALL
            .iter()
            .filter_map(|reason| examples[reason.index()].clone().map(|example| (*reason, example)))
            .collect()
    }

    /// The last minutes handed to the writer, newest first.
    pub fn minutes(&self) -> Vec<RecentMinute> {
        lock(&self.minutes).iter().rev().cloned().collect()
    }

    /// The machines silent the longest, longest first.
    pub fn silent(&self) -> Vec<SilentMachine> {
        lock(&self.silent).clone()
    }
}

/// The first [`EXCERPT_CHARS`] characters of `text`.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_keeps_the_latest_example_cut_to_an_excerpt() {
        let recent = Recent::default();
        recent.rejected(RejectReason::Malformed, 1, "t", "first", b"{");
        let long = "é".repeat(EXCERPT_CHARS + 5);
        recent.rejected(RejectReason::Malformed, 2, "t", "second", long.as_bytes());
        let examples = recent.rejection_examples();
        assert_eq!(examples.len(), 1);
        let (reason, example) = &examples[0];
        assert_eq!(*reason, RejectReason::Malformed);
        assert_eq!((example.at_micros, example.detail.as_str()), (2, "second"));
        assert_eq!(example.payload.chars().count(), EXCERPT_CHARS);
        assert!(example.payload_cut);
        // Bytes that are not UTF-8 are shown replaced, never dropped silently.
        recent.rejected(RejectReason::TooLarge, 3, "t", "d", &[0xff, b'a']);
        let examples = recent.rejection_examples();
        assert_eq!(examples.len(), 2);
        assert_eq!(
            examples.iter().find(|(r, _)| *r == RejectReason::TooLarge).map(|(_, e)| e.payload.as_str()),
            Some("\u{fffd}a")
        );
    }

    #[test]
    fn only_the_last_minutes_are_kept_newest_first() {
        let recent = Recent::default();
        let aggregate = MinuteAggregate {
            samples: 2,
            load_rate_sum: 30.0,
            load_rate_min: 10.0,
            load_rate_max: 20.0,
            mileage_min: 0.0,
            mileage_max: 1.0,
        };
        let machines: Vec<Arc<str>> = (0..30).map(|n| format!("m{n}").into()).collect();
        let closed = |range: std::ops::Range<usize>| {
            machines[range.clone()]
                .iter()
                .zip(range)
                .map(|(machine, n)| (machine, Minute::from_index(n as i64), &aggregate))
        };
        recent.minutes_closed(closed(0..5));
        recent.minutes_closed(closed(5..30));
        let kept = recent.minutes();
        assert_eq!(kept.len(), RECENT_MINUTES);
        assert_eq!(&*kept[0].machine, "m29");
        assert_eq!(&*kept[RECENT_MINUTES - 1].machine, format!("m{}", 30 - RECENT_MINUTES));
        assert_eq!(kept[0].load_rate_avg, 15.0);
    }
}
