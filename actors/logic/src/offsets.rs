//! The sample offsets of a minute while it is open: a sorted set of µs offsets from the
//! minute's start, held in the coarsest of three units that divides them all (1 s, 1 ms,
//! 1 µs) and so in 1, 2 or 4 bytes each.
//!
//! Why: at each minute boundary every machine holds a whole minute of offsets (the
//! minute in its grace period, 60 of them at 1/s) and 100,000 machines hold them at
//! once. As `u32`s that was 256 bytes a machine whatever the stamps; stamped in
//! milliseconds, as most devices stamp, it is now 128, in whole seconds 64
//! (docs/benchmarks.md, session 16). A set that meets a finer stamp than its unit is
//! rewritten in the finer one, once.
//!
//! The closed minute's chunk ([`crate::seen`]) is far smaller still, but it is a varint
//! stream: a sample arriving in the middle of it would rewrite it, and most samples of an
//! open minute arrive at its end, where this set appends in place.

use crate::seen::MINUTE_MICROS;

/// The units, coarsest first, and the bytes a value takes in each: a minute is 60 s,
/// 60,000 ms (16 bits), 60,000,000 µs (32 bits).
const UNITS: [(u32, usize); 3] = [(1_000_000, 1), (1_000, 2), (1, 4)];

/// A sorted set of offsets (µs from a minute's start, each below [`MINUTE_MICROS`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MinuteOffsets {
    /// Empty for an empty set; else the unit's index in [`UNITS`], then the offsets in
    /// that unit, little-endian, in ascending order. One `Vec` of bytes rather than an
    /// enum of three `Vec`s: an open minute's entry must stay 128 bytes
    /// ([`crate::minute`]), and an enum's tag would make it 136.
    bytes: Vec<u8>,
}

impl MinuteOffsets {
    /// A set holding `offset`.
    pub fn of(offset: u32) -> Self {
        let mut offsets = MinuteOffsets::default();
        offsets.insert(offset);
        offsets
    }

    pub fn len(&self) -> usize {
        match self.bytes.first() {
            Some(&code) => (self.bytes.len() - 1) / UNITS[usize::from(code)].1,
            None => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Adds `offset`; `false` when it was held already.
    pub fn insert(&mut self, offset: u32) -> bool {
        debug_assert!(offset < MINUTE_MICROS, "an offset within a minute");
        let fits = unit_code_of(offset);
        let code = match self.bytes.first() {
            None => {
                self.bytes.push(fits);
                self.push(fits, offset);
                return true;
            }
            Some(&held) if fits > held => {
                self.refine(fits);
                fits
            }
            Some(&held) => held,
        };
        let width = UNITS[usize::from(code)].1;
        let value = in_unit(offset, code);
        let len = (self.bytes.len() - 1) / width;
        // Samples arrive mostly in time order: one comparison, then an append.
        if self.value(len - 1, width) < value {
            self.push(code, offset);
            return true;
        }
        let (mut low, mut high) = (0, len);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.value(middle, width).cmp(&value) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return false,
            }
        }
        let at = 1 + low * width;
        let end = self.bytes.len();
        self.bytes.resize(end + width, 0);
        self.bytes.copy_within(at..end, at + width);
        self.bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
        true
    }

    /// The offsets in µs, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (code, values) = match self.bytes.split_first() {
            Some((&code, values)) => (code, values),
            None => (0, &[][..]),
        };
        let (unit, width) = UNITS[usize::from(code)];
        values.chunks_exact(width).map(move |value| {
            let mut le = [0; 4];
            le[..width].copy_from_slice(value);
            u32::from_le_bytes(le) * unit
        })
    }

    /// The offsets in µs, ascending, as the chunk encoder takes them.
    pub fn to_vec(&self) -> Vec<u32> {
        let mut offsets = Vec::with_capacity(self.len());
        offsets.extend(self.iter());
        offsets
    }

    /// Bytes allocated.
    pub fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }

    fn value(&self, index: usize, width: usize) -> u32 {
        let at = 1 + index * width;
        match width {
            1 => u32::from(self.bytes[at]),
            2 => u32::from(u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])),
            _ => u32::from_le_bytes([
                self.bytes[at],
                self.bytes[at + 1],
                self.bytes[at + 2],
                self.bytes[at + 3],
            ]),
        }
    }

    /// Appends `offset` (above every held one) in unit `code`.
    fn push(&mut self, code: u8, offset: u32) {
        let width = UNITS[usize::from(code)].1;
        self.bytes.extend_from_slice(&in_unit(offset, code).to_le_bytes()[..width]);
    }

    /// Rewrites the set in the finer unit `code`.
    fn refine(&mut self, code: u8) {
        let offsets = self.to_vec();
        // A power of two, as `Vec`'s own doubling would have reached: what it grows to
        // from there is then each time a size class of the allocator, not a byte beyond
        // one.
        let needed = 1 + (offsets.len() + 1) * UNITS[usize::from(code)].1;
        let mut bytes = Vec::with_capacity(needed.next_power_of_two().max(8));
        bytes.push(code);
        self.bytes = bytes;
        for offset in offsets {
            self.push(code, offset);
        }
    }
}

/// The index in [`UNITS`] of the coarsest unit dividing `offset`.
fn unit_code_of(offset: u32) -> u8 {
    if offset.is_multiple_of(1_000_000) {
        0
    } else if offset.is_multiple_of(1_000) {
        1
    } else {
        2
    }
}

/// `offset` in unit `code` (which divides it). Each arm divides by a constant, which the
/// compiler turns into a multiplication.
fn in_unit(offset: u32, code: u8) -> u32 {
    match code {
        0 => offset / 1_000_000,
        1 => offset / 1_000,
        _ => offset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn whole_seconds_take_a_byte_each_milliseconds_two_microseconds_four() {
        let full_minute = |step_micros: u32, jitter: u32| {
            let mut offsets = MinuteOffsets::default();
            for second in 0..60 {
                assert!(offsets.insert(second * 1_000_000 + jitter * (second % 7) * step_micros));
            }
            offsets
        };
        // One header byte, then 60 values: 61, 121, 241 bytes in a doubled `Vec`.
        assert_eq!(full_minute(0, 0).heap_bytes(), 64);
        assert_eq!(full_minute(1_000, 3).heap_bytes(), 128);
        assert_eq!(full_minute(1, 3).heap_bytes(), 256);
    }

    #[test]
    fn a_finer_stamp_rewrites_the_set_in_its_unit() {
        let mut offsets = MinuteOffsets::default();
        assert!(offsets.insert(2_000_000));
        assert!(offsets.insert(59_000_000));
        assert!(offsets.insert(3_500_000));
        assert!(offsets.insert(3_500_001));
        assert!(!offsets.insert(59_000_000));
        assert!(!offsets.insert(3_500_000));
        assert_eq!(offsets.to_vec(), vec![2_000_000, 3_500_000, 3_500_001, 59_000_000]);
        assert_eq!(offsets.len(), 4);
    }

    #[test]
    fn the_largest_offset_of_each_unit_round_trips() {
        for offset in [59_000_000, 59_999_000, MINUTE_MICROS - 1, 0] {
            let offsets = MinuteOffsets::of(offset);
            assert_eq!(offsets.to_vec(), vec![offset]);
        }
    }

    fn offset_in_some_unit() -> impl Strategy<Value = u32> {
        prop_oneof![
            (0..60_u32).prop_map(|seconds| seconds * 1_000_000),
            (0..60_000_u32).prop_map(|millis| millis * 1_000),
            0..MINUTE_MICROS,
        ]
    }

    proptest! {
        /// Whatever the order and the units of the offsets, the set answers as a
        /// `BTreeSet` does.
        #[test]
        fn behaves_as_a_sorted_set(inserted in proptest::collection::vec(offset_in_some_unit(), 0..200)) {
            let mut offsets = MinuteOffsets::default();
            let mut model = BTreeSet::new();
            for offset in inserted {
                prop_assert_eq!(offsets.insert(offset), model.insert(offset));
                prop_assert_eq!(offsets.len(), model.len());
            }
            prop_assert_eq!(offsets.to_vec(), model.into_iter().collect::<Vec<_>>());
        }
    }
}
