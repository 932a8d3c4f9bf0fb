//! Write batches with identities.
//!
//! A batch keeps its id and its rows until it is known to be written. Its statement
//! records the id in `fleetagg_applied_batch` atomically with the rows, so retrying a batch
//! whose commit was lost with the connection is a no-op instead of a double count: the
//! upsert merges counts and sums, so it is not idempotent by itself.

use crate::clock::Clock;
use crate::logic::{ClosedMinute, RejectReason, RejectedMessage};
use std::sync::atomic::{AtomicU64, Ordering};

/// The reason stored for a minute PostgreSQL refused (a `CHECK` constraint, a trigger).
pub const DB_REFUSED: &str = "db_refused";

#[derive(Debug, Clone)]
pub(super) enum Rows {
    Minutes(Vec<ClosedMinute>),
    Rejections(Vec<RejectedMessage>),
}

#[derive(Debug, Clone)]
pub(super) struct Batch {
    pub(super) id: String,
    pub(super) rows: Rows,
    /// Its intent is in the journal (appended once, before the first attempt).
    pub(super) intent_journaled: bool,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        match &self.rows {
            Rows::Minutes(rows) => rows.len(),
            Rows::Rejections(rows) => rows.len(),
        }
    }

    pub(super) fn minutes(&self) -> usize {
        match &self.rows {
            Rows::Minutes(rows) => rows.len(),
            Rows::Rejections(_) => 0,
        }
    }

    /// Halves a refused batch to find the refused rows; the halves get new ids, since
    /// neither was applied.
    pub(super) fn split(self) -> (Batch, Batch) {
        let (left, right) = match self.rows {
            Rows::Minutes(mut rows) => {
                let right = rows.split_off(rows.len() / 2);
                (Rows::Minutes(rows), Rows::Minutes(right))
            }
            Rows::Rejections(mut rows) => {
                let right = rows.split_off(rows.len() / 2);
                (Rows::Rejections(rows), Rows::Rejections(right))
            }
        };
        (
            Batch { id: format!("{}.0", self.id), rows: left, intent_journaled: false },
            Batch { id: format!("{}.1", self.id), rows: right, intent_journaled: false },
        )
    }
}

/// Hands out batch ids unique across processes: a per-process nonce and a counter.
#[derive(Debug)]
pub(super) struct BatchIds {
    nonce: String,
    next: AtomicU64,
}

impl BatchIds {
    pub(super) fn new() -> Self {
        // The start time (µs) and the process id: no two processes share both.
        let started = crate::clock::SystemClock.now().micros();
        BatchIds { nonce: format!("{started:x}-{:x}", std::process::id()), next: AtomicU64::new(0) }
    }

    pub(super) fn next(&self) -> String {
        format!("{}-{}", self.nonce, self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Cuts rows into batches of at most `max` rows.
    pub(super) fn cut<T>(
        &self,
        rows: impl IntoIterator<Item = T>,
        max: usize,
        wrap: fn(Vec<T>) -> Rows,
    ) -> Vec<Batch> {
        // Chunks copied out, each allocated to its size. (`split_off` in a loop left every
        // batch holding the capacity of everything after it: 100,000 rows in batches of
        // 5,000 kept about ten times their size resident until written.)
        let max = max.max(1);
        let mut rows = rows.into_iter();
        let mut batches = Vec::with_capacity(rows.size_hint().0.div_ceil(max));
        loop {
            let chunk: Vec<T> = rows.by_ref().take(max).collect();
            if chunk.is_empty() {
                return batches;
            }
            batches.push(Batch { id: self.next(), rows: wrap(chunk), intent_journaled: false });
        }
    }
}

/// A minute PostgreSQL refused, kept as a rejected message with the database's error.
pub(super) fn refused_minute(row: &ClosedMinute, error: &str) -> RejectedMessage {
    let aggregate = &row.aggregate;
    let payload = serde_json::json!({
        "machine": &*row.machine,
        "ts": row.minute.start().to_string(),
        "samples": aggregate.samples,
        "load_rate_sum": aggregate.load_rate_sum,
        "load_rate_min": aggregate.load_rate_min,
        "load_rate_max": aggregate.load_rate_max,
        "mileage_min": aggregate.mileage_min,
        "mileage_max": aggregate.mileage_max,
    });
    // Through `new`, so the database's error text (of any length) is cut like any detail.
    let mut rejection = RejectedMessage::new(
        String::new(),
        RejectReason::DbRefused,
        format!("PostgreSQL refused the minute row: {error}"),
        payload.to_string().as_bytes(),
    );
    // Stored, it finishes the samples' journal records.
    rejection.tally = row.tally.clone();
    rejection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{JournalMark, JournalTally, Minute, MinuteAggregate, Sample, Timestamp};

    fn minute(n: i64) -> ClosedMinute {
        let sample =
            Sample { ts: Timestamp::from_micros(0), load_rate: 1.0, mileage: 1.0, mark: JournalMark::NONE };
        ClosedMinute {
            machine: "m".into(),
            minute: Minute::from_index(n),
            aggregate: MinuteAggregate::of(&sample),
            tally: JournalTally::default(),
            seen: Vec::new(),
            known_new: false,
        }
    }

    #[test]
    fn cutting_and_splitting_keep_every_row_once() {
        let ids = BatchIds::new();
        let batches = ids.cut((0..7).map(minute), 3, Rows::Minutes);
        assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), vec![3, 3, 1]);
        let unique: std::collections::HashSet<_> = batches.iter().map(|b| b.id.clone()).collect();
        assert_eq!(unique.len(), 3);
        let (left, right) = batches[0].clone().split();
        assert_eq!((left.len(), right.len()), (1, 2));
        assert_ne!(left.id, right.id);
        assert!(left.id.starts_with(&batches[0].id));
    }

    #[test]
    fn a_refused_minute_becomes_a_rejection_with_its_values() {
        let rejection = refused_minute(&minute(29_539_320), "ERROR 23514: check constraint");
        assert_eq!(rejection.reason.as_str(), DB_REFUSED);
        let payload: serde_json::Value = serde_json::from_slice(&rejection.payload).unwrap();
        assert_eq!(payload["machine"], "m");
        assert_eq!(payload["ts"], "2026-03-01T10:00:00Z");
        assert!(rejection.detail.contains("23514"));
    }
}
