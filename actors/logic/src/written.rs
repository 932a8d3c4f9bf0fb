//! One machine's duplicate index: the chunks ([`crate::seen`]) of the minutes it handed
//! to the writer within `max_lateness`, newest first.
//!
//! **[`WrittenMinutes`]** is one boxed byte string of items, newest minute first:
//!
//! - a minute held in memory: `varint minute · varint length (≥ 1) · chunks`;
//! - a **cold** run of older minutes moved out of memory: `varint minute · 0 · varint
//!   segment · varint offset · varint length`, where the minute is the newest the run
//!   holds and the rest says where its caller stored it ([`ColdRef`]). A run's bytes are
//!   an index of this form too, ending with the reference of the run cut before it, so
//!   memory holds one reference per machine however long the window.
//!
//! The first item's minute is absolute (zigzag), every later one a gap back from the one
//! before, so the usual look (is this sample's minute written at all?) reads one varint,
//! and forgetting the oldest minutes is a cut at the end.
//!
//! Why cold runs: one sample a second stamped in milliseconds costs about 65 bytes a
//! minute, in microseconds about 130, and ten minutes of that per machine took the
//! service past its memory bound (docs/benchmarks.md). A resend older than a machine's
//! newest written minute is rare, so the aggregator moves older minutes to a file
//! ([`WrittenMinutes::cold_tail`]) and reads them back only when a sample reaches
//! them ([`NeedsCold`], [`WrittenMinutes::warm`]). This crate does no I/O: it hands out
//! and takes back bytes.
//!
//! A question about a minute that a cold run may hold is answered [`NeedsCold`], never
//! guessed: that is what keeps a resend of a cold minute a duplicate.

use crate::seen::{
    check_chunks, chunk_offsets, chunks_contain, encode_chunk, get_varint, put_varint, unzigzag, zigzag,
};
use crate::time::{Minute, Timestamp};

/// A written minute of one machine and its `seen` value, as read back from the database
/// at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenMinute {
    pub minute: Minute,
    pub seen: Box<[u8]>,
}

/// Where the caller stored a cold run ([`WrittenMinutes::tail_stored`]); opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColdRef {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

/// Minutes cut out of an index to be stored elsewhere: `bytes` is a self-contained index
/// of them (the form [`WrittenMinutes::warm`] takes back), `newest` the newest of them:
/// the tail holds every minute of the index up to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColdTail {
    pub newest: Minute,
    pub bytes: Vec<u8>,
}

/// The answer to a question about a minute a cold run may hold: load the cold runs
/// ([`WrittenMinutes::warm`]) and ask again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedsCold;

/// One machine's index of written minutes (see the module comment for the layout).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WrittenMinutes {
    /// Exactly as long as its items: an index changes once a minute, so a boxed slice
    /// (16 bytes, no spare capacity) beats a `Vec`.
    entries: Box<[u8]>,
}

/// What [`WrittenMinutes::put`] does with the chunks already held for the minute.
#[derive(Debug, Clone, Copy)]
enum Held {
    /// Keeps them: the new chunks are another part.
    Add,
    /// Drops them: the new chunks hold the whole minute.
    Replace,
}

/// One item, decoded.
#[derive(Debug, Clone, Copy)]
struct Item<'a> {
    minute: i64,
    what: What<'a>,
}

#[derive(Debug, Clone, Copy)]
enum What<'a> {
    Chunks(&'a [u8]),
    Cold(ColdRef),
}

/// An item owned, for the rare edits that rebuild the whole string.
#[derive(Debug, Clone)]
enum Owned {
    Chunks(Vec<u8>),
    Cold(ColdRef),
}

impl WrittenMinutes {
    /// The newest written minute, in memory or cold, if any.
    pub fn newest(&self) -> Option<Minute> {
        get_varint(&self.entries, 0).map(|(zigzag, _)| Minute::from_index(unzigzag(zigzag)))
    }

    /// The chunks held in memory for `minute` (`None`: no part of it was written, as far
    /// as the index reaches back).
    pub fn find(&self, minute: Minute) -> Result<Option<&[u8]>, NeedsCold> {
        if self.newest().is_none_or(|newest| minute > newest) {
            return Ok(None);
        }
        for item in self.items() {
            if item.minute < minute.index() {
                break;
            }
            match item.what {
                // Its newest minute is at or after this one: it may hold it.
                What::Cold(_) => return Err(NeedsCold),
                What::Chunks(chunks) if item.minute == minute.index() => return Ok(Some(chunks)),
                What::Chunks(_) => {}
            }
        }
        Ok(None)
    }

    /// Whether a sample at `ts` was in a written minute.
    pub fn contains(&self, ts: Timestamp) -> Result<bool, NeedsCold> {
        let minute = ts.minute();
        Ok(self.find(minute)?.is_some_and(|chunks| chunks_contain(chunks, minute.offset_of(ts))))
    }

    /// The offsets of `minute`'s written parts, sorted; empty when none was written.
    pub fn offsets_of(&self, minute: Minute) -> Result<Box<[u32]>, NeedsCold> {
        Ok(self.find(minute)?.and_then(|chunks| chunk_offsets(chunks).ok()).unwrap_or_default().into())
    }

    /// Whether any part of `minute` was written (as far as the index reaches back).
    pub fn has_minute(&self, minute: Minute) -> Result<bool, NeedsCold> {
        Ok(self.find(minute)?.is_some())
    }

    /// Adds a written part's chunks to its minute.
    pub fn remember(&mut self, minute: Minute, chunks: &[u8]) {
        self.put(minute, chunks, Held::Add);
    }

    /// Sets `minute`'s in-memory chunks to `whole`, which holds every offset of the
    /// minute (what its reopened part merged at close, without decoding the held chunk
    /// again). A cold run that also holds the minute keeps it: the union is the same.
    pub fn replace(&mut self, minute: Minute, whole: &[u8]) {
        self.put(minute, whole, Held::Replace);
    }

    fn put(&mut self, minute: Minute, chunks: &[u8], held_then: Held) {
        if chunks.is_empty() {
            return;
        }
        // The usual case, a minute newer than every one held: put it in front, and the
        // old newest item's absolute minute becomes a gap.
        let newest = get_varint(&self.entries, 0).map(|(zigzag, after)| (unzigzag(zigzag), after));
        if newest.is_none_or(|(newest, _)| minute.index() > newest) {
            let mut out = Vec::with_capacity(self.entries.len() + chunks.len() + 16);
            put_varint(&mut out, zigzag(minute.index()));
            put_varint(&mut out, chunks.len() as u64);
            out.extend_from_slice(chunks);
            if let Some((newest, after)) = newest {
                put_varint(&mut out, minute.index().abs_diff(newest));
                out.extend_from_slice(&self.entries[after..]);
            }
            self.entries = out.into_boxed_slice();
            return;
        }
        let mut items = self.owned();
        let held = items.iter_mut().find_map(|(held, what)| match what {
            Owned::Chunks(held_chunks) if *held == minute.index() => Some(held_chunks),
            _ => None,
        });
        match held {
            Some(held) => {
                if let Held::Replace = held_then {
                    held.clear();
                }
                held.extend_from_slice(chunks);
                if let Held::Add = held_then {
                    merge_chunks(held);
                }
            }
            None => items.push((minute.index(), Owned::Chunks(chunks.to_vec()))),
        }
        self.entries = encode_items(items);
    }

    /// The minutes before `keep_since`, to be stored elsewhere, when those held in memory
    /// hold at least `min_bytes`: the caller stores the tail's bytes and calls
    /// [`WrittenMinutes::tail_stored`]; until then (or when it cannot store them) the
    /// index is unchanged. Older cold runs go into the tail as their references, so that
    /// memory holds one reference however many times a machine's minutes were cooled.
    pub fn cold_tail(&self, keep_since: Minute, min_bytes: usize) -> Option<ColdTail> {
        let cut = self.first_before(keep_since)?;
        let in_memory: usize = ItemWalker { bytes: &self.entries, at: cut.at, previous: None }
            .map(|item| if let What::Chunks(chunks) = item.what { chunks.len() } else { 0 })
            .sum();
        if in_memory < min_bytes.max(1) {
            return None;
        }
        // The cut item's minute becomes absolute; every later item is a gap already.
        let mut bytes = Vec::with_capacity(self.entries.len() - cut.at + 8);
        put_varint(&mut bytes, zigzag(cut.minute));
        bytes.extend_from_slice(&self.entries[cut.minute_end..]);
        Some(ColdTail { newest: Minute::from_index(cut.minute), bytes })
    }

    /// Replaces the minutes `tail` held by the reference to where the caller stored them.
    pub fn tail_stored(&mut self, tail: &ColdTail, at: ColdRef) {
        let Some(cut) = self.first_before(Minute::from_index(tail.newest.index().saturating_add(1))) else {
            return;
        };
        let mut out = Vec::with_capacity(cut.at + 20);
        out.extend_from_slice(&self.entries[..cut.at]);
        match cut.previous {
            None => put_varint(&mut out, zigzag(tail.newest.index())),
            Some(previous) => put_varint(&mut out, previous.abs_diff(tail.newest.index())),
        }
        put_cold(&mut out, at);
        self.entries = out.into_boxed_slice();
    }

    /// Replaces every cold run by what `load` returns for it: the bytes of its
    /// [`ColdTail`], of which the minutes before `since` are forgotten (as
    /// [`WrittenMinutes::forget_before`] would have), and so on down the runs it names. A
    /// run `load` cannot return (`None`) is dropped: its minutes, and those of the runs
    /// it named, no longer count as written (the caller reports that). Returns how many
    /// runs were dropped, a run whose bytes do not decode included.
    pub fn warm(&mut self, since: Minute, mut load: impl FnMut(ColdRef) -> Option<Vec<u8>>) -> usize {
        let mut dropped = 0;
        // A run names only runs stored before it (`warm_with` checks), so this ends.
        loop {
            // Runs holding nothing as new as `since` are not worth a read (nor an error
            // when their file was removed already).
            self.forget_before(since);
            let mut loaded = Vec::new();
            for item in self.items() {
                if let What::Cold(at) = item.what {
                    match load(at) {
                        Some(bytes) => loaded.push((at, bytes)),
                        None => dropped += 1,
                    }
                }
            }
            if loaded.is_empty() && !self.has_cold() {
                return dropped;
            }
            let loaded: Vec<(ColdRef, &[u8])> =
                loaded.iter().map(|(at, bytes)| (*at, bytes.as_slice())).collect();
            dropped += self.warm_with(&loaded);
        }
    }

    /// Rebuilds the index from its in-memory minutes and the `tails` loaded from the
    /// cold runs they name, every cold run replaced (dropped when none was loaded for
    /// it). Returns how many tails did not decode.
    fn warm_with(&mut self, tails: &[(ColdRef, &[u8])]) -> usize {
        let mut items: Vec<(i64, Owned)> =
            self.owned().into_iter().filter(|(_, what)| matches!(what, Owned::Chunks(_))).collect();
        let mut malformed = 0;
        for &(from, tail) in tails {
            let tail = WrittenMinutes { entries: tail.into() };
            let decoded = tail.owned();
            let whole = tail.items().last_end() == tail.entries.len();
            let sound = decoded.iter().all(|(_, what)| match what {
                Owned::Chunks(chunks) => check_chunks(chunks).is_ok(),
                // Stored before the run naming it, or a damaged record (or a loop).
                Owned::Cold(older) => (older.segment, older.offset) < (from.segment, from.offset),
            });
            if !whole || !sound {
                malformed += 1;
                continue;
            }
            items.extend(decoded);
        }
        // One item per minute held in memory: parts of one minute from two places merge.
        items.sort_by_key(|(minute, what)| (std::cmp::Reverse(*minute), matches!(what, Owned::Chunks(_))));
        let mut merged: Vec<(i64, Owned)> = Vec::with_capacity(items.len());
        for (minute, what) in items {
            match (merged.last_mut(), what) {
                (Some((last, Owned::Chunks(held))), Owned::Chunks(chunks)) if *last == minute => {
                    held.extend_from_slice(&chunks);
                    merge_chunks(held);
                }
                (_, what) => merged.push((minute, what)),
            }
        }
        self.entries = encode_items(merged);
        malformed
    }

    /// Whether any minute is held cold.
    fn has_cold(&self) -> bool {
        self.items().any(|item| matches!(item.what, What::Cold(_)))
    }

    /// Forgets the minutes before `oldest` (a cold run whose newest minute is before it
    /// holds nothing newer).
    pub fn forget_before(&mut self, oldest: Minute) {
        if let Some(cut) = self.first_before(oldest) {
            self.entries = self.entries[..cut.at].into();
        }
    }

    /// The first item whose minute is before `minute` (items are newest first, so it
    /// and every item after it are).
    fn first_before(&self, minute: Minute) -> Option<Cut> {
        let mut walker = self.items();
        loop {
            let (at, previous) = (walker.at, walker.previous);
            let item = walker.next()?;
            if item.minute < minute.index() {
                let (_, minute_end) = get_varint(&self.entries, at)?;
                return Some(Cut { at, minute: item.minute, minute_end, previous });
            }
        }
    }

    /// Bytes on the heap (for the memory figures).
    pub fn heap_bytes(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn items(&self) -> ItemWalker<'_> {
        ItemWalker { bytes: &self.entries, at: 0, previous: None }
    }

    fn owned(&self) -> Vec<(i64, Owned)> {
        self.items()
            .map(|item| {
                let what = match item.what {
                    What::Chunks(chunks) => Owned::Chunks(chunks.to_vec()),
                    What::Cold(at) => Owned::Cold(at),
                };
                (item.minute, what)
            })
            .collect()
    }
}

/// Re-encodes a minute's concatenated chunks as one: repeats merged, a smaller index.
fn merge_chunks(chunks: &mut Vec<u8>) {
    if let Ok(offsets) = chunk_offsets(chunks) {
        chunks.clear();
        encode_chunk(&offsets, chunks);
    }
}

/// Encodes items newest first; of one minute, a cold run before the chunks held in
/// memory, so that [`WrittenMinutes::find`] meets the run first.
fn encode_items(mut items: Vec<(i64, Owned)>) -> Box<[u8]> {
    items.sort_by_key(|(minute, what)| (std::cmp::Reverse(*minute), matches!(what, Owned::Chunks(_))));
    let mut out = Vec::new();
    let mut previous: Option<i64> = None;
    for (minute, what) in &items {
        match previous {
            None => put_varint(&mut out, zigzag(*minute)),
            Some(previous) => put_varint(&mut out, previous.abs_diff(*minute)),
        }
        match what {
            Owned::Chunks(chunks) => {
                put_varint(&mut out, chunks.len() as u64);
                out.extend_from_slice(chunks);
            }
            Owned::Cold(at) => put_cold(&mut out, *at),
        }
        previous = Some(*minute);
    }
    out.into_boxed_slice()
}

/// A cold item's body: a zero length, then where the run is.
fn put_cold(out: &mut Vec<u8>, at: ColdRef) {
    put_varint(out, 0);
    put_varint(out, u64::from(at.segment));
    put_varint(out, at.offset);
    put_varint(out, u64::from(at.len));
}

/// Where an index is cut before a minute ([`WrittenMinutes::first_before`]).
#[derive(Debug, Clone, Copy)]
struct Cut {
    /// Where the first item before the minute starts.
    at: usize,
    /// Its minute, and where its minute's varint ends.
    minute: i64,
    minute_end: usize,
    /// The minute of the item before it, if any.
    previous: Option<i64>,
}

/// Walks the items newest first; stops at the first byte that does not decode (an index
/// built here never has one; a cold tail read back might).
struct ItemWalker<'a> {
    bytes: &'a [u8],
    at: usize,
    previous: Option<i64>,
}

impl ItemWalker<'_> {
    /// Where the walk stopped: the length of the bytes when every item decoded.
    fn last_end(mut self) -> usize {
        while self.next().is_some() {}
        self.at
    }
}

impl<'a> Iterator for ItemWalker<'a> {
    type Item = Item<'a>;

    fn next(&mut self) -> Option<Item<'a>> {
        let (gap, at) = get_varint(self.bytes, self.at)?;
        let minute = match self.previous {
            None => unzigzag(gap),
            Some(previous) => previous.checked_sub_unsigned(gap)?,
        };
        let (len, at) = get_varint(self.bytes, at)?;
        let (what, end) = if len == 0 {
            let (segment, at) = get_varint(self.bytes, at)?;
            let (offset, at) = get_varint(self.bytes, at)?;
            let (cold_len, at) = get_varint(self.bytes, at)?;
            let at_ref =
                ColdRef { segment: u32::try_from(segment).ok()?, offset, len: u32::try_from(cold_len).ok()? };
            (What::Cold(at_ref), at)
        } else {
            let end = at.checked_add(usize::try_from(len).ok()?)?;
            (What::Chunks(self.bytes.get(at..end)?), end)
        };
        self.at = end;
        self.previous = Some(minute);
        Some(Item { minute, what })
    }
}

#[cfg(test)]
mod tests;
