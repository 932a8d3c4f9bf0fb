//! The rows the writer stores, and the buffer that merges closed minutes by key.

use crate::minute::MinuteAggregate;
use crate::provenance::JournalTally;
use crate::time::Minute;
use crate::validate::RejectReason;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// Stored payloads, details and topics are cut to this many bytes, so one stored
/// rejection costs the database at most 12 KiB whatever a sender puts in it (a `ts` of
/// 60,000 characters is quoted whole in its detail; an MQTT topic may be 64 KiB).
pub const MAX_STORED_PAYLOAD: usize = 4096;

/// A closed (or partial, at shutdown) minute of one machine, ready to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct ClosedMinute {
    pub machine: Arc<str>,
    pub minute: Minute,
    pub aggregate: MinuteAggregate,
    /// The journal records the row answers for: committed, they are finished.
    pub tally: JournalTally,
    /// Its samples' timestamps ([`crate::seen`] chunks), stored in the row's `seen`
    /// column and read back at start-up so that a resend after a restart is recognised.
    pub seen: Vec<u8>,
    /// The aggregator knows of no earlier row for this (machine, minute): the writer may
    /// insert it with `COPY` instead of the upsert. A hint only: a row that exists after
    /// all (another instance wrote it, or the index was not read back at start-up) makes
    /// the `COPY` fail on the primary key, and the batch is upserted instead.
    pub known_new: bool,
}

/// A rejected message as stored in `rejected_message`. Build it with
/// [`RejectedMessage::new`], which cuts every field to [`MAX_STORED_PAYLOAD`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedMessage {
    /// At most [`MAX_STORED_PAYLOAD`] bytes, cut on a character boundary.
    pub topic: String,
    pub reason: RejectReason,
    /// At most [`MAX_STORED_PAYLOAD`] bytes, cut on a character boundary.
    pub detail: String,
    /// The first [`MAX_STORED_PAYLOAD`] bytes of the payload, less a UTF-8 character the
    /// limit would split.
    pub payload: Vec<u8>,
    /// The journal record of the rejected message (of the samples, for a minute the
    /// database refused).
    pub tally: JournalTally,
}

impl RejectedMessage {
    pub fn new(mut topic: String, reason: RejectReason, mut detail: String, payload: &[u8]) -> Self {
        topic.truncate(stored_len(topic.as_bytes()));
        detail.truncate(stored_len(detail.as_bytes()));
        let payload = payload[..stored_len(payload)].to_vec();
        RejectedMessage { topic, reason, detail, payload, tally: JournalTally::default() }
    }
}

/// How many leading bytes of a field are stored: all of them up to
/// [`MAX_STORED_PAYLOAD`], else the limit, moved back to the start of a well-formed UTF-8
/// character that would straddle it.
///
/// One rule for text and for payloads: on a `str` it always lands on a character
/// boundary (so `String::truncate` cannot panic), and a payload that is text stays
/// readable text (`convert_from(payload, 'UTF8')` works on it), while bytes that are not
/// a character at the limit are cut at exactly the limit.
fn stored_len(bytes: &[u8]) -> usize {
    let limit = MAX_STORED_PAYLOAD;
    if bytes.len() <= limit {
        return bytes.len();
    }
    let is_continuation = |byte: u8| byte & 0xC0 == 0x80;
    // A character is at most 4 bytes, so a lead byte that reaches the limit is at most
    // 3 bytes before it.
    let lead = (limit.saturating_sub(3)..=limit).rev().find(|&at| !is_continuation(bytes[at]));
    match lead {
        Some(at) if at < limit => {
            let width = match bytes[at] {
                0xC2..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF4 => 4,
                _ => 1,
            };
            let straddles = at + width > limit;
            let well_formed =
                bytes.get(at..at + width).is_some_and(|sequence| std::str::from_utf8(sequence).is_ok());
            if straddles && well_formed {
                at
            } else {
                limit
            }
        }
        _ => limit,
    }
}

/// Closed minutes waiting to be written, merged by (machine, minute).
///
/// Merging here matters twice: one upsert statement may not touch the same row twice,
/// and a minute that arrives in parts costs one row write instead of several.
#[derive(Debug, Default)]
pub struct PendingMinutes {
    rows: FxHashMap<(Arc<str>, Minute), PendingRow>,
}

/// A pending row's merged parts: aggregate, journal records, `seen` chunks, and whether
/// all of them were known new.
type PendingRow = (MinuteAggregate, JournalTally, Vec<u8>, bool);

impl PendingMinutes {
    pub fn add(&mut self, row: ClosedMinute) {
        self.rows
            .entry((row.machine, row.minute))
            .and_modify(|(aggregate, tally, seen, known_new)| {
                aggregate.merge(&row.aggregate);
                tally.merge(&row.tally);
                // Chunks concatenate into their union.
                seen.extend_from_slice(&row.seen);
                // Both, to be safe: a later part is never new, and a part put back after a
                // failed write may come after one that followed it.
                *known_new &= row.known_new;
            })
            .or_insert((row.aggregate, row.tally, row.seen, row.known_new));
    }

    pub fn extend(&mut self, rows: impl IntoIterator<Item = ClosedMinute>) {
        for row in rows {
            self.add(row);
        }
    }

    /// Takes every row (each key appears once), as an iterator over the taken map: the
    /// writer cuts it straight into batches, so that 100,000 rows closed at once are
    /// never held a third time in between (docs/benchmarks.md, session 9).
    pub fn take_all(&mut self) -> impl ExactSizeIterator<Item = ClosedMinute> + use<> {
        std::mem::take(&mut self.rows).into_iter().map(
            |((machine, minute), (aggregate, tally, seen, known_new))| ClosedMinute {
                machine,
                minute,
                aggregate,
                tally,
                seen,
                known_new,
            },
        )
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
    use crate::{JournalMark, Sample, Timestamp};

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
                mark: JournalMark::NONE,
            }),
            tally: JournalTally::of(JournalMark { seq: load_rate as u64, segment: 1 }),
            seen: crate::seen::chunk_of(Minute::from_index(7), &[7 * 60_000_000 + load_rate as i64]),
            known_new: true,
        };
        let mut pending = PendingMinutes::default();
        pending.add(part(10.0));
        pending.add(ClosedMinute { known_new: false, ..part(30.0) });
        pending.add(ClosedMinute { minute: Minute::from_index(8), ..part(5.0) });
        assert_eq!(pending.len(), 2);
        let mut rows: Vec<ClosedMinute> = pending.take_all().collect();
        rows.sort_by_key(|row| row.minute);
        assert_eq!(rows[0].aggregate.samples, 2);
        // Known new only if every merged part was.
        assert_eq!((rows[0].known_new, rows[1].known_new), (false, true));
        assert_eq!(rows[0].aggregate.load_rate_sum, 40.0);
        // The merged row answers for both parts' journal records.
        assert_eq!(rows[0].tally.max_seq, 30);
        assert_eq!(rows[0].tally.segments().collect::<Vec<_>>(), vec![(1, 2)]);
        // And its `seen` holds both parts' timestamps.
        assert_eq!(crate::seen::chunk_offsets(&rows[0].seen), Ok(vec![10, 30]));
        assert!(pending.is_empty());
    }

    #[test]
    fn stored_payloads_are_cut() {
        let row = RejectedMessage::new("t".into(), RejectReason::TooLarge, "big".into(), &[7u8; 10_000]);
        assert_eq!(row.payload.len(), MAX_STORED_PAYLOAD);
    }

    #[test]
    fn a_straddling_character_is_dropped_whole() {
        let text = format!("{}é", "a".repeat(MAX_STORED_PAYLOAD - 1));
        assert_eq!(stored_len(text.as_bytes()), MAX_STORED_PAYLOAD - 1);
        // Ending exactly at the limit, it is kept.
        let text = format!("{}éz", "a".repeat(MAX_STORED_PAYLOAD - 2));
        assert_eq!(stored_len(text.as_bytes()), MAX_STORED_PAYLOAD);
        assert_eq!(stored_len(b""), 0);
    }
}
