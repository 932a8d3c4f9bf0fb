//! The journal's record format.
//!
//! ```text
//! record  = length: u32 LE | crc32c(body): u32 LE | body (length bytes)
//! body    = kind: u8 | fields
//! message = seq: u64 | received: i64 (µs) | payload_len: u64 | topic_len: u32 | topic | payload
//! minutes = batch_len: u16 | batch | rows: u32 | (machine_len: u16 | machine | minute: i64 | max_seq: u64)*
//! rejects = batch_len: u16 | batch | count: u32 | seq: u64*
//! ```
//!
//! A *message* is what paho handed over. *minutes* and *rejects* are written by the writer
//! before it sends a batch to PostgreSQL: the batch's id (which PostgreSQL records in its
//! ledger in the same statement as the rows) and, per row, the highest journal sequence
//! the row contains. A replay that finds the id in the ledger knows those rows are
//! committed and which records they already count. Every body is covered by a CRC32C, so
//! a torn write at a crash or a flipped bit on disk is recognised, never replayed.

use std::borrow::Cow;

/// Length and checksum, before each body.
pub(super) const HEADER: usize = 8;
/// No body is longer: a length beyond it is corruption, not an allocation to attempt.
/// (An MQTT message is at most 256 MiB, but the source keeps at most
/// `mqtt.max_payload_bytes` + 1 bytes of it; a batch intent is at most a few MiB.)
pub(super) const MAX_BODY: usize = 64 * 1024 * 1024;

const KIND_MESSAGE: u8 = 1;
const KIND_MINUTES: u8 = 2;
const KIND_REJECTIONS: u8 = 3;

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Record<'a> {
    /// `received`: when it arrived (µs since the epoch): a replay validates it as of
    /// then, so `too_late` decides the same way as the first time.
    Message {
        seq: u64,
        received: i64,
        payload_len: u64,
        topic: Cow<'a, str>,
        payload: &'a [u8],
    },
    Minutes(MinutesIntent),
    Rejections(RejectionsIntent),
}

/// A batch of minute rows about to be written: `(machine, minute index, max_seq)` per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinutesIntent {
    pub batch: String,
    pub rows: Vec<(String, i64, u64)>,
}

/// A batch of rejected messages about to be stored: their journal sequences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectionsIntent {
    pub batch: String,
    pub seqs: Vec<u64>,
}

/// What [`decode`] found at an offset.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded<'a> {
    Record(Record<'a>, usize),
    /// Clean end of the data.
    End,
    /// The data ends inside a record: a write the crash cut short.
    Torn,
    /// Checksum, length or structure wrong.
    Corrupt,
}

pub(super) struct MessageFields<'a> {
    pub(super) seq: u64,
    pub(super) received: i64,
    pub(super) topic: &'a str,
    pub(super) payload: &'a [u8],
    pub(super) payload_len: usize,
}

pub(super) fn encode_message(out: &mut Vec<u8>, message: &MessageFields<'_>) {
    let MessageFields { seq, received, topic, payload, payload_len } = *message;
    let start = begin(out, KIND_MESSAGE);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received.to_le_bytes());
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    out.extend_from_slice(&(topic.len() as u32).to_le_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(payload);
    finish(out, start);
}

/// Machine names longer than `u16::MAX` bytes cannot occur (validation caps them far
/// lower); one would be cut, which only weakens the replay filter for that row.
pub(super) fn encode_minutes<'a>(
    out: &mut Vec<u8>,
    batch: &str,
    rows: impl ExactSizeIterator<Item = (&'a str, i64, u64)>,
) {
    let start = begin(out, KIND_MINUTES);
    put_short_str(out, batch);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for (machine, minute, max_seq) in rows {
        put_short_str(out, machine);
        out.extend_from_slice(&minute.to_le_bytes());
        out.extend_from_slice(&max_seq.to_le_bytes());
    }
    finish(out, start);
}

pub(super) fn encode_rejections(out: &mut Vec<u8>, batch: &str, seqs: impl ExactSizeIterator<Item = u64>) {
    let start = begin(out, KIND_REJECTIONS);
    put_short_str(out, batch);
    out.extend_from_slice(&(seqs.len() as u32).to_le_bytes());
    for seq in seqs {
        out.extend_from_slice(&seq.to_le_bytes());
    }
    finish(out, start);
}

fn begin(out: &mut Vec<u8>, kind: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    out.push(kind);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + HEADER..];
    let (length, crc) = (body.len() as u32, crc32c::crc32c(body));
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn put_short_str(out: &mut Vec<u8>, text: &str) {
    let mut cut = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&(cut as u16).to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..cut]);
}

/// Decodes the record at `at` in `data`; on success, also where the next one starts.
pub(super) fn decode(data: &[u8], at: usize) -> Decoded<'_> {
    let Some(rest) = data.get(at..) else { return Decoded::Torn };
    if rest.is_empty() {
        return Decoded::End;
    }
    if rest.len() < HEADER {
        return Decoded::Torn;
    }
    let length = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if length == 0 && rest.iter().all(|&byte| byte == 0) {
        // Space reserved past the last record (`active_file`): the segment ends here.
        return Decoded::End;
    }
    if length == 0 || length > MAX_BODY {
        return Decoded::Corrupt;
    }
    let Some(body) = rest.get(HEADER..HEADER + length) else { return Decoded::Torn };
    if crc32c::crc32c(body) != crc {
        // Nothing written after it: the last record, cut short by a crash while it was
        // copied into reserved (zeroed) space. Anything after it means damage.
        let after = &rest[HEADER + length..];
        return if after.iter().all(|&byte| byte == 0) { Decoded::Torn } else { Decoded::Corrupt };
    }
    match parse_body(body) {
        Some(record) => Decoded::Record(record, at + HEADER + length),
        None => Decoded::Corrupt,
    }
}

fn parse_body(body: &[u8]) -> Option<Record<'_>> {
    let mut reader = Reader { data: body.get(1..)? };
    let record = match body[0] {
        KIND_MESSAGE => {
            let seq = reader.u64()?;
            let received = reader.i64()?;
            let payload_len = reader.u64()?;
            let topic_len = reader.u32()? as usize;
            let topic = String::from_utf8_lossy(reader.bytes(topic_len)?);
            Record::Message { seq, received, payload_len, topic, payload: std::mem::take(&mut reader.data) }
        }
        KIND_MINUTES => {
            let batch = reader.short_str()?;
            let count = reader.u32()? as usize;
            // Each row is at least 18 bytes: a count beyond that is corruption.
            let mut rows = Vec::with_capacity(count.min(reader.data.len() / 18));
            for _ in 0..count {
                rows.push((reader.short_str()?, reader.i64()?, reader.u64()?));
            }
            Record::Minutes(MinutesIntent { batch, rows })
        }
        KIND_REJECTIONS => {
            let batch = reader.short_str()?;
            let count = reader.u32()? as usize;
            let mut seqs = Vec::with_capacity(count.min(reader.data.len() / 8));
            for _ in 0..count {
                seqs.push(reader.u64()?);
            }
            Record::Rejections(RejectionsIntent { batch, seqs })
        }
        _ => return None,
    };
    Some(record)
}

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.data.len() < count {
            return None;
        }
        let (head, tail) = self.data.split_at(count);
        self.data = tail;
        Some(head)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Option<i64> {
        self.array().map(i64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    fn short_str(&mut self) -> Option<String> {
        let length = usize::from(u16::from_le_bytes(self.array()?));
        String::from_utf8(self.bytes(length)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_log() -> Vec<u8> {
        let mut log = Vec::new();
        let message = |seq, topic, payload: &'static [u8]| MessageFields {
            seq,
            received: 1_000 + seq as i64,
            topic,
            payload,
            payload_len: payload.len(),
        };
        encode_message(&mut log, &message(1, "plant/m1/telemetry", br#"{"machine":"m1"}"#));
        encode_minutes(&mut log, "b-1", [("m1", 29_539_320, 1), ("m2", 29_539_321, 7)].into_iter());
        encode_rejections(&mut log, "b-2", [3, 4].into_iter());
        encode_message(&mut log, &message(2, "t", b""));
        log
    }

    fn records(log: &[u8]) -> (Vec<Record<'_>>, Decoded<'_>) {
        let mut found = Vec::new();
        let mut at = 0;
        loop {
            match decode(log, at) {
                Decoded::Record(record, next) => {
                    found.push(record);
                    at = next;
                }
                end => return (found, end),
            }
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let log = sample_log();
        let (found, end) = records(&log);
        assert_eq!(end, Decoded::End);
        assert_eq!(found.len(), 4);
        assert_eq!(
            found[0],
            Record::Message {
                seq: 1,
                received: 1_001,
                payload_len: 16,
                topic: "plant/m1/telemetry".into(),
                payload: br#"{"machine":"m1"}"#
            }
        );
        let Record::Minutes(intent) = &found[1] else { panic!("minutes intent expected") };
        assert_eq!(intent.batch, "b-1");
        assert_eq!(intent.rows, vec![("m1".into(), 29_539_320, 1), ("m2".into(), 29_539_321, 7)]);
        assert_eq!(found[2], Record::Rejections(RejectionsIntent { batch: "b-2".into(), seqs: vec![3, 4] }));
    }

    #[test]
    fn a_log_cut_anywhere_keeps_every_whole_record_before_the_cut() {
        let log = sample_log();
        let (all, _) = records(&log);
        let mut boundaries = vec![0];
        let mut at = 0;
        while let Decoded::Record(_, next) = decode(&log, at) {
            boundaries.push(next);
            at = next;
        }
        for cut in 0..log.len() {
            let (found, end) = records(&log[..cut]);
            let whole = boundaries.iter().filter(|&&boundary| boundary <= cut).count() - 1;
            assert_eq!(found, all[..whole], "cut at {cut}");
            let expected = if boundaries.contains(&cut) { Decoded::End } else { Decoded::Torn };
            assert_eq!(end, expected, "cut at {cut}");
        }
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let log = sample_log();
        for byte in 0..log.len() {
            for bit in 0..8 {
                let mut damaged = log.clone();
                damaged[byte] ^= 1 << bit;
                let (found, end) = records(&damaged);
                // Never a wrong record: a prefix of the true ones, then the damage noticed
                // (a flipped length bit can also look like a torn tail).
                let (all, _) = records(&log);
                assert!(found.len() < all.len() && found[..] == all[..found.len()], "byte {byte} bit {bit}");
                assert!(matches!(end, Decoded::Corrupt | Decoded::Torn), "byte {byte} bit {bit}: {end:?}");
            }
        }
    }

    #[test]
    fn a_huge_length_is_corruption_not_an_allocation() {
        let mut log = vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0];
        log.extend_from_slice(&[0; 32]);
        assert_eq!(decode(&log, 0), Decoded::Corrupt);
        // A record count far beyond the body's bytes fails cleanly too.
        let mut log = Vec::new();
        let start = begin(&mut log, KIND_REJECTIONS);
        put_short_str(&mut log, "b");
        log.extend_from_slice(&u32::MAX.to_le_bytes());
        finish(&mut log, start);
        assert_eq!(decode(&log, 0), Decoded::Corrupt);
    }
}
