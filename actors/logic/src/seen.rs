//! The duplicate index over `max_lateness`: which sample timestamps the minutes a machine
//! already handed to the writer count.
//!
//! Why: a field gateway that reconnects resends its buffer. While a minute is open its
//! aggregator sees the repeat ([`crate::minute`]); once the minute was written, only this
//! index does. It is kept for `max_lateness` (older samples are rejected as `too_late`
//! anyway), written into the row's `seen` column in the same statement as the row, and
//! read back from there at start-up, so a restart forgets nothing the database holds.
//!
//! **A chunk** holds the timestamps of one part of one minute: offsets from the minute's
//! start, in the coarsest unit that divides them all (1 s down to 1 µs), as a bitmap, a
//! list of varint gaps, or a list of the gaps' changes, whichever is shortest ([`Form`]).
//! Whole-second samples at 1/s cost 10 bytes a minute; ten a second on 100 ms ticks, 77;
//! one a second stamped in microseconds with a clock jittering by milliseconds, about
//! two bytes a sample. Chunks delimit themselves, so the chunks of a minute's parts
//! concatenate into a valid value: the database merges a late part's `seen` into its row
//! with `||`.
//!
//! `header (unit code | form << 4) · varint payload length · payload`
//!
//! One machine's index of these chunks is [`crate::written`].

use crate::time::Minute;

/// Microseconds in a minute: every offset is below it.
pub const MINUTE_MICROS: u32 = 60_000_000;

/// The units a chunk can count in, coarsest first; a chunk's header holds the index.
const UNITS: [u32; 7] = [1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];
/// Header bits 4-5: how the payload lists the slots (see [`Form`]).
const FORM_SHIFT: u8 = 4;

/// How a chunk's payload lists its slots (offset / unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Bit `slot` set: compact when the slots are dense (10/s on 100 ms ticks).
    Bitmap = 0,
    /// The first slot, then each gap to the next, as varints.
    Gaps = 1,
    /// The first slot and the first gap, then each change of the gap (zigzag varints):
    /// periodic samples with a jittery clock (1/s stamped in µs) cost a byte or two each
    /// instead of three.
    GapChanges = 2,
}

/// A `seen` value that is not a sequence of well-formed chunks (read from the database,
/// where anyone with write access could have put anything).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed seen value at byte {at}: {what}")]
pub struct MalformedSeen {
    pub at: usize,
    pub what: &'static str,
}

/// Appends a chunk holding `offsets` (µs from the minute's start, sorted, distinct, each
/// below [`MINUTE_MICROS`]) to `out`; nothing for no offsets.
pub fn encode_chunk(offsets: &[u32], out: &mut Vec<u8>) {
    let Some(&last) = offsets.last() else { return };
    // The coarsest unit dividing every offset; divisions by constants (see `per_unit`),
    // which the compiler turns into multiplications: a minute closes per machine per
    // minute, and a division per sample per pass showed in the benchmarks.
    let mut code = 0;
    for &offset in offsets {
        while code < UNITS.len() - 1 && per_unit(offset, code).1 != 0 {
            code += 1;
        }
    }
    // Divided once, with the unit a constant in each loop: a minute reopened by a burst
    // of late samples re-encodes its whole written part at every close.
    let slots = slots_in(offsets, code);
    let slots = || slots.iter().map(|&slot| u64::from(slot));
    let bitmap_len = (u64::from(per_unit(last, code).0) / 8 + 1) as usize;
    // Sized first, so that only the chosen form is written.
    let (mut gaps_len, mut changes_len) = (0, 0);
    walk_list(slots(), Form::Gaps, |value| gaps_len += varint_len(value));
    walk_list(slots(), Form::GapChanges, |value| changes_len += varint_len(value));
    let form = if bitmap_len <= gaps_len.min(changes_len) {
        Form::Bitmap
    } else if gaps_len <= changes_len {
        Form::Gaps
    } else {
        Form::GapChanges
    };
    out.push(code as u8 | (form as u8) << FORM_SHIFT);
    match form {
        Form::Bitmap => {
            put_varint(out, bitmap_len as u64);
            let start = out.len();
            out.resize(start + bitmap_len, 0);
            for slot in slots() {
                out[start + (slot / 8) as usize] |= 1 << (slot % 8);
            }
        }
        list => {
            put_varint(out, (if list == Form::Gaps { gaps_len } else { changes_len }) as u64);
            walk_list(slots(), list, |value| put_varint(out, value));
        }
    }
}

/// Hands `emit` the varints of `slots` (sorted, distinct) in one of the list forms.
fn walk_list(slots: impl Iterator<Item = u64>, form: Form, mut emit: impl FnMut(u64)) {
    let (mut previous, mut previous_gap) = (None::<u64>, None::<u64>);
    for slot in slots {
        match (previous, previous_gap) {
            (None, _) => emit(slot),
            (Some(before), None) => {
                emit(slot - before);
                previous_gap = Some(slot - before);
            }
            (Some(before), Some(gap_before)) => {
                let gap = slot - before;
                match form {
                    Form::GapChanges => emit(zigzag(gap as i64 - gap_before as i64)),
                    _ => emit(gap),
                }
                previous_gap = Some(gap);
            }
        }
        previous = Some(slot);
    }
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// The chunk of a minute's sample timestamps (µs since the epoch, sorted, distinct, all
/// in `minute`).
pub fn chunk_of(minute: Minute, timestamps: &[i64]) -> Vec<u8> {
    let start = minute.start().micros();
    let offsets: Vec<u32> = timestamps
        .iter()
        .filter_map(|&ts| u32::try_from(ts - start).ok().filter(|&offset| offset < MINUTE_MICROS))
        .collect();
    let mut chunk = Vec::new();
    encode_chunk(&offsets, &mut chunk);
    chunk
}

/// Whether the chunks in `chunks` hold `offset`; malformed bytes hold nothing.
pub fn chunks_contain(chunks: &[u8], offset: u32) -> bool {
    Chunks { bytes: chunks, at: 0 }.any(|chunk| chunk.is_ok_and(|chunk| chunk.contains(offset)))
}

/// Every offset the chunks hold, sorted and distinct.
pub fn chunk_offsets(chunks: &[u8]) -> Result<Vec<u32>, MalformedSeen> {
    let mut offsets = Vec::new();
    for chunk in (Chunks { bytes: chunks, at: 0 }) {
        chunk?.offsets(&mut offsets)?;
    }
    offsets.sort_unstable();
    offsets.dedup();
    Ok(offsets)
}

/// One decoded chunk: its unit and its payload.
#[derive(Debug, Clone, Copy)]
struct Chunk<'a> {
    unit: u32,
    form: Form,
    payload: &'a [u8],
    /// Where the payload starts in the whole value (for error positions).
    at: usize,
}

impl Chunk<'_> {
    fn contains(&self, offset: u32) -> bool {
        if !offset.is_multiple_of(self.unit) {
            return false;
        }
        let slot = u64::from(offset / self.unit);
        if self.form == Form::Bitmap {
            let byte = self.payload.get((slot / 8) as usize).copied().unwrap_or(0);
            return byte & (1 << (slot % 8)) != 0;
        }
        for listed in self.listed() {
            match listed {
                Ok((held, _)) if held >= slot => return held == slot,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// The slots of a list form, each with where its varint starts; an error ends it.
    fn listed(&self) -> impl Iterator<Item = Result<(u64, usize), &'static str>> + '_ {
        let (mut at, mut previous, mut gap) = (0, None::<u64>, None::<u64>);
        std::iter::from_fn(move || {
            if at >= self.payload.len() {
                return None;
            }
            let started = at;
            let Some((value, next)) = get_varint(self.payload, at) else {
                at = self.payload.len();
                return Some(Err("cut varint"));
            };
            at = next;
            let slot = match (previous, gap) {
                (None, _) => Some(value),
                (Some(before), None) => {
                    gap = Some(value);
                    before.checked_add(value).filter(|_| value > 0)
                }
                (Some(before), Some(gap_before)) => {
                    let next_gap = match self.form {
                        Form::GapChanges => u64::try_from(gap_before as i64 + unzigzag(value)).ok(),
                        _ => Some(value),
                    };
                    gap = next_gap;
                    next_gap.filter(|&gap| gap > 0).and_then(|gap| before.checked_add(gap))
                }
            };
            let Some(slot) = slot else {
                at = self.payload.len();
                return Some(Err("list not increasing"));
            };
            previous = Some(slot);
            Some(Ok((slot, started)))
        })
    }

    fn offsets(&self, out: &mut Vec<u32>) -> Result<(), MalformedSeen> {
        let slots = u64::from(MINUTE_MICROS / self.unit);
        let fail = |at: usize, what| MalformedSeen { at: self.at + at, what };
        if self.form == Form::Bitmap {
            for (index, byte) in self.payload.iter().enumerate() {
                for bit in (0..8).filter(|bit| byte & (1 << bit) != 0) {
                    let slot = index as u64 * 8 + bit;
                    if slot >= slots {
                        return Err(fail(index, "bitmap beyond the minute"));
                    }
                    out.push(slot as u32 * self.unit);
                }
            }
            return Ok(());
        }
        for listed in self.listed() {
            let (slot, at) = listed.map_err(|what| fail(self.payload.len(), what))?;
            if slot >= slots {
                return Err(fail(at, "offset beyond the minute"));
            }
            out.push(slot as u32 * self.unit);
        }
        Ok(())
    }
}

/// The chunks of a value, in order; an error ends it.
struct Chunks<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = Result<Chunk<'a>, MalformedSeen>;

    fn next(&mut self) -> Option<Self::Item> {
        let at = self.at;
        let &header = self.bytes.get(at)?;
        let mut fail = |at, what| {
            self.at = self.bytes.len();
            Some(Err(MalformedSeen { at, what }))
        };
        let code = usize::from(header & 0x0F);
        let form = match header >> FORM_SHIFT {
            0 => Form::Bitmap,
            1 => Form::Gaps,
            2 => Form::GapChanges,
            _ => return fail(at, "unknown form"),
        };
        if code >= UNITS.len() {
            return fail(at, "unknown unit");
        }
        let Some((len, start)) = get_varint(self.bytes, at + 1) else { return fail(at + 1, "cut length") };
        let end = usize::try_from(len).ok().and_then(|len| start.checked_add(len));
        let Some(payload) = end.and_then(|end| self.bytes.get(start..end)) else {
            return fail(start, "payload longer than the value");
        };
        self.at = start + payload.len();
        Some(Ok(Chunk { unit: UNITS[code], form, payload, at: start }))
    }
}

/// Checks a value read from the database: every chunk well-formed.
pub fn check_chunks(chunks: &[u8]) -> Result<(), MalformedSeen> {
    chunk_offsets(chunks).map(|_| ())
}

/// `offsets` in the unit [`UNITS`]`[code]`, which divides them all.
fn slots_in(offsets: &[u32], code: usize) -> Vec<u32> {
    fn divided<const UNIT: u32>(offsets: &[u32]) -> Vec<u32> {
        offsets.iter().map(|&offset| offset / UNIT).collect()
    }
    match code {
        0 => divided::<{ UNITS[0] }>(offsets),
        1 => divided::<{ UNITS[1] }>(offsets),
        2 => divided::<{ UNITS[2] }>(offsets),
        3 => divided::<{ UNITS[3] }>(offsets),
        4 => divided::<{ UNITS[4] }>(offsets),
        5 => divided::<{ UNITS[5] }>(offsets),
        _ => offsets.to_vec(),
    }
}

/// `offset` in the unit [`UNITS`]`[code]`: quotient and remainder.
#[inline]
fn per_unit(offset: u32, code: usize) -> (u32, u32) {
    match code {
        0 => (offset / 1_000_000, offset % 1_000_000),
        1 => (offset / 100_000, offset % 100_000),
        2 => (offset / 10_000, offset % 10_000),
        3 => (offset / 1_000, offset % 1_000),
        4 => (offset / 100, offset % 100),
        5 => (offset / 10, offset % 10),
        _ => (offset, 0),
    }
}

pub(crate) fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub(crate) fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// The varint at `at` and the position after it; `None` when cut or longer than 10 bytes.
pub(crate) fn get_varint(bytes: &[u8], mut at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(at)?;
        at += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some((value, at));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(offsets: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_chunk(offsets, &mut out);
        out
    }

    #[test]
    fn whole_seconds_at_one_a_second_take_ten_bytes_a_minute() {
        let offsets: Vec<u32> = (0..60).map(|second| second * 1_000_000).collect();
        let chunk = encoded(&offsets);
        assert_eq!(chunk.len(), 10);
        assert_eq!(chunk_offsets(&chunk), Ok(offsets.clone()));
        assert!(offsets.iter().all(|&offset| chunks_contain(&chunk, offset)));
        assert!(!chunks_contain(&chunk, 500_000) && !chunks_contain(&chunk, 1_000_001));
    }

    #[test]
    fn ten_a_second_on_100_ms_ticks_take_77_bytes_and_sparse_ones_a_list() {
        let ticks: Vec<u32> = (0..600).map(|tick| tick * 100_000).collect();
        assert_eq!(encoded(&ticks).len(), 77);
        // Three samples with microsecond timestamps: a list of gaps, not a 7.5 MB bitmap.
        let sparse = [1, 20_000_003, 59_999_999];
        let chunk = encoded(&sparse);
        assert!(chunk.len() < 16, "{} bytes", chunk.len());
        assert_eq!(chunk_offsets(&chunk), Ok(sparse.to_vec()));
        assert!(chunks_contain(&chunk, 20_000_003) && !chunks_contain(&chunk, 20_000_002));
    }

    #[test]
    fn periodic_samples_with_a_jittery_clock_cost_about_two_bytes_each() {
        // One a second, stamped in µs, each a few milliseconds off its tick.
        let jitter = [0, 1_700, 2_900, 450, 3_333];
        let offsets: Vec<u32> =
            (0..60u32).map(|second| second * 1_000_000 + jitter[second as usize % 5]).collect();
        let chunk = encoded(&offsets);
        assert_eq!(chunk[0] >> FORM_SHIFT, Form::GapChanges as u8);
        assert!(chunk.len() <= 2 + 4 + 3 + 58 * 2, "{} bytes", chunk.len());
        assert_eq!(chunk_offsets(&chunk), Ok(offsets.clone()));
        assert!(offsets.iter().all(|&offset| chunks_contain(&chunk, offset)));
        assert!(offsets.iter().all(|&offset| !chunks_contain(&chunk, offset + 1)));
    }

    proptest::proptest! {
        #[test]
        fn any_set_round_trips_and_holds_exactly_its_offsets(
            raw in proptest::collection::btree_set(0u32..MINUTE_MICROS, 1..200),
            coarse in 0usize..7,
            probes in proptest::collection::vec(0u32..MINUTE_MICROS, 20),
        ) {
            // Rounded to a unit, so every form and unit is met.
            let unit = UNITS[coarse];
            let offsets: Vec<u32> = raw.iter().map(|offset| offset / unit * unit).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let chunk = encoded(&offsets);
            proptest::prop_assert_eq!(chunk_offsets(&chunk), Ok(offsets.clone()));
            for probe in probes.iter().chain(&offsets) {
                proptest::prop_assert_eq!(chunks_contain(&chunk, *probe), offsets.binary_search(probe).is_ok());
            }
        }
    }

    #[test]
    fn chunks_concatenate_into_their_union() {
        let mut value = encoded(&[0, 2_000_000]);
        value.extend(encoded(&[1_500, 2_000_000]));
        assert_eq!(chunk_offsets(&value), Ok(vec![0, 1_500, 2_000_000]));
        assert!(chunks_contain(&value, 1_500) && chunks_contain(&value, 0));
    }

    #[test]
    fn malformed_values_are_refused_and_hold_nothing() {
        for bad in [
            &[0x07, 0x01, 0x01][..],
            &[0x00, 0x05, 0x01],
            &[0x10, 0x01, 0x80],
            &[0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF],
        ] {
            assert!(check_chunks(bad).is_err(), "{bad:?}");
        }
        // A list that does not increase, and one beyond the minute (1 s unit, slot 60).
        assert!(check_chunks(&[0x10, 0x02, 0x01, 0x00]).is_err());
        assert!(check_chunks(&[0x10, 0x01, 60]).is_err());
        // A change of gap that makes it 0 or negative, and an unknown form.
        assert!(check_chunks(&[0x20, 0x03, 0x01, 0x02, 0x03]).is_err());
        assert!(check_chunks(&[0x30, 0x01, 0x01]).is_err());
        assert!(!chunks_contain(&[0x07, 0x01, 0x01], 0));
        assert_eq!(check_chunks(&[]), Ok(()));
    }
}
