//! The rows the writer stores, and the buffer that merges closed minutes by key.

use super::minute::MinuteAggregate;
use super::time::Minute;
use super::validate::RejectReason;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Stored payloads are cut to this many bytes.
pub const MAX_STORED_PAYLOAD: usize = 4096;

/// A closed (or partial, at shutdown) minute of one machine, ready to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedMinute {
    pub machine: Arc<str>,
    pub minute: Minute,
    pub aggregate: MinuteAggregate,
}

/// A rejected message as stored in `rejected_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedMessage {
    pub topic: String,
    pub reason: RejectReason,
    pub detail: String,
    /// The first [`MAX_STORED_PAYLOAD`] bytes of the payload.
    pub payload: Vec<u8>,
}

impl RejectedMessage {
    pub fn new(topic: String, reason: RejectReason, detail: String, payload: &[u8]) -> Self {
        let kept = &payload[..payload.len().min(MAX_STORED_PAYLOAD)];
        RejectedMessage { topic, reason, detail, payload: kept.to_vec() }
    }
}

/// Closed minutes waiting to be written, merged by (machine, minute).
///
/// Merging here matters twice: one upsert statement may not touch the same row twice,
/// and a minute that arrives in parts costs one row write instead of several.
#[derive(Debug, Default)]
pub struct PendingMinutes {
    rows: FxHashMap<(Arc<str>, Minute), MinuteAggregate>,
}

impl PendingMinutes {
    pub fn add(&mut self, row: ClosedMinute) {
        self.rows
            .entry((row.machine, row.minute))
            .and_modify(|held| held.merge(&row.aggregate))
            .or_insert(row.aggregate);
    }

    pub fn extend(&mut self, rows: impl IntoIterator<Item = ClosedMinute>) {
        for row in rows {
            self.add(row);
        }
    }

    /// Takes every row; each key appears once.
    pub fn take_all(&mut self) -> Vec<ClosedMinute> {
        std::mem::take(&mut self.rows)
            .into_iter()
            .map(|((machine, minute), aggregate)| ClosedMinute { machine, minute, aggregate })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{Sample, Timestamp};

    #[test]
    fn rows_of_the_same_minute_merge() {
        let machine: Arc<str> = "m".into();
        let part = |load_rate: f64| ClosedMinute {
            machine: machine.clone(),
            minute: Minute::from_index(7),
            aggregate: MinuteAggregate::of(&Sample {
                ts: Timestamp::from_micros(0),
                load_rate,
                mileage: 1.0,
            }),
        };
        let mut pending = PendingMinutes::default();
        pending.add(part(10.0));
        pending.add(part(30.0));
        pending.add(ClosedMinute { minute: Minute::from_index(8), ..part(5.0) });
        assert_eq!(pending.len(), 2);
        let mut rows = pending.take_all();
        rows.sort_by_key(|row| row.minute);
        assert_eq!(rows[0].aggregate.samples, 2);
        assert_eq!(rows[0].aggregate.load_rate_sum, 40.0);
        assert!(pending.is_empty());
    }

    #[test]
    fn stored_payloads_are_cut() {
        let row = RejectedMessage::new("t".into(), RejectReason::TooLarge, "big".into(), &[7u8; 10_000]);
        assert_eq!(row.payload.len(), MAX_STORED_PAYLOAD);
    }
}
