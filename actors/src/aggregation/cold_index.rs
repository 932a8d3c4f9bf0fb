//! The cold part of the duplicate index on disk: each machine's written minutes older
//! than its newest one, moved out of memory ([`crate::logic::written`]).
//!
//! Why: with timestamps in milliseconds or microseconds, ten minutes of a machine's
//! index cost 0.6 to 1.3 KiB, and the service's bound is 2 KiB per machine in all
//! (docs/benchmarks.md). A resend older than the newest written minute is rare, so those
//! minutes can wait on disk, read back (a `pread`, from the page cache as a rule) only
//! when a sample reaches them.
//!
//! A cache, not a record: the index is rebuilt from the rows' `seen` column at every
//! start, so the files are removed at a stop and at start-up (after a kill), and nothing
//! here is ever `fsync`ed.
//! Records are appended to segment files under `<journal.dir>/written-index/`, each
//! `crc32c (LE u32) · bytes`; a segment is removed once the newest minute of every record
//! in it is older than what any machine still remembers (a record naming an older one is
//! cut before that one is read: [`crate::logic::WrittenMinutes::warm`]). Shared by the
//! aggregators of every core behind one mutex: a machine stores a record at most once a
//! minute as a rule (once per close, when its older minutes reach [`COLD_MIN_BYTES`]).

use crate::logic::{ColdRef, Minute, OpenMinutes};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A segment is closed at this size: removal is by whole segment, so this bounds the
/// disk held past `max_lateness`.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// The checksum before every record.
const CRC_BYTES: usize = 4;
/// Written minutes kept in memory per machine: the newest, which a late sample (up to
/// a minute after its minute closed, the usual kind) finds there. An older one is a
/// resend after a reconnect, rare enough for a read from this file.
const HOT_MINUTES: u32 = 1;
/// The least worth a record of its own. A new run names the one cut before it
/// ([`crate::logic::written`]), so memory holds one reference (about 9 bytes) however
/// often a machine's minutes are cooled; below a reference's size a move saves nothing.
/// One a second stamped in ms or µs (65 to 130 bytes a minute) goes out at every close,
/// on whole seconds (about 12) every second close.
const COLD_MIN_BYTES: usize = 16;

/// Why a cold record could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ColdReadError {
    #[error("cold index segment {0} is gone")]
    SegmentGone(u32),
    #[error("cold index read failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("cold index record in segment {segment} at {offset} fails its checksum")]
    Checksum { segment: u32, offset: u64 },
}

#[derive(Debug)]
pub struct ColdIndex {
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// What the segments hold, readable without the lock (a gauge read after every
    /// close).
    bytes: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    /// Every segment on disk, the active (last) one included.
    segments: BTreeMap<u32, Segment>,
    next_id: u32,
}

#[derive(Debug)]
struct Segment {
    file: File,
    /// Where the next record goes: a failed write leaves its bytes past this, and the
    /// next record overwrites them.
    len: u64,
    /// The newest minute any record in it holds.
    newest: i64,
}

impl ColdIndex {
    /// Opens `dir` (created if missing), removing what an earlier run left there.
    pub fn open(dir: &Path) -> std::io::Result<ColdIndex> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|extension| extension == "cold") {
                std::fs::remove_file(&path)?;
            }
        }
        let inner = Mutex::new(Inner { segments: BTreeMap::new(), next_id: 0 });
        Ok(ColdIndex { dir: dir.to_path_buf(), inner, bytes: AtomicU64::new(0) })
    }

    /// Appends `bytes` (a tail whose newest minute is `newest`) and returns where it is.
    /// Also removes the segments holding nothing newer than `forget_before`.
    pub fn store(&self, newest: Minute, bytes: &[u8], forget_before: Minute) -> std::io::Result<ColdRef> {
        let mut inner = self.lock();
        self.remove_forgotten(&mut inner, forget_before);
        let full = inner.segments.last_key_value().is_none_or(|(_, active)| active.len >= SEGMENT_BYTES);
        if full {
            let id = inner.next_id;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(self.segment_path(id))?;
            inner.next_id += 1;
            inner.segments.insert(id, Segment { file, len: 0, newest: newest.index() });
        }
        let Some(mut active) = inner.segments.last_entry() else {
            return Err(std::io::Error::other("no active cold index segment"));
        };
        let segment = *active.key();
        let active = active.get_mut();
        let len = u32::try_from(bytes.len()).map_err(|_| std::io::Error::other("cold record too long"))?;
        let mut record = Vec::with_capacity(CRC_BYTES + bytes.len());
        record.extend_from_slice(&crc32c::crc32c(bytes).to_le_bytes());
        record.extend_from_slice(bytes);
        active.file.write_all_at(&record, active.len)?;
        let at = ColdRef { segment, offset: active.len, len };
        active.len += record.len() as u64;
        self.bytes.fetch_add(record.len() as u64, Ordering::Relaxed);
        active.newest = active.newest.max(newest.index());
        Ok(at)
    }

    /// Moves a machine's written minutes before its newest [`HOT_MINUTES`] here, when
    /// they are worth a record ([`COLD_MIN_BYTES`]). When they cannot be stored (a full
    /// disk), they stay in memory and the error is returned.
    pub fn cool(&self, open: &mut OpenMinutes, forget_before: Minute) -> std::io::Result<()> {
        let Some(tail) = open.cold_tail(HOT_MINUTES, COLD_MIN_BYTES) else { return Ok(()) };
        let at = self.store(tail.newest, &tail.bytes, forget_before)?;
        open.tail_stored(&tail, at);
        Ok(())
    }

    /// Reads back the bytes stored at `at`.
    pub fn load(&self, at: ColdRef) -> Result<Vec<u8>, ColdReadError> {
        let mut record = vec![0; CRC_BYTES + at.len as usize];
        {
            let inner = self.lock();
            let segment = inner.segments.get(&at.segment).ok_or(ColdReadError::SegmentGone(at.segment))?;
            segment.file.read_exact_at(&mut record, at.offset)?;
        }
        let (crc, bytes) = record.split_at(CRC_BYTES);
        if crc != crc32c::crc32c(bytes).to_le_bytes() {
            return Err(ColdReadError::Checksum { segment: at.segment, offset: at.offset });
        }
        Ok(bytes.to_vec())
    }

    /// Bytes on disk (a gauge).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn remove_forgotten(&self, inner: &mut Inner, forget_before: Minute) {
        let active = inner.segments.last_key_value().map(|(&id, _)| id);
        let forgotten: Vec<u32> = inner
            .segments
            .iter()
            .filter(|(&id, segment)| Some(id) != active && segment.newest < forget_before.index())
            .map(|(&id, _)| id)
            .collect();
        for id in forgotten {
            if let Some(segment) = inner.segments.remove(&id) {
                self.bytes.fetch_sub(segment.len, Ordering::Relaxed);
            }
            if let Err(err) = std::fs::remove_file(self.segment_path(id)) {
                tracing::warn!(segment = id, error = %err, "cannot remove a forgotten cold index segment");
            }
        }
    }

    fn segment_path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:010}.cold"))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stop leaves nothing behind: the next start would remove it anyway, and until then
/// it is disk taken for nothing (a kill leaves the files to that next start).
impl Drop for ColdIndex {
    fn drop(&mut self) {
        let ids: Vec<u32> = self.lock().segments.keys().copied().collect();
        for id in ids {
            let _ = std::fs::remove_file(self.segment_path(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleetagg-cold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_come_back_and_damage_is_an_error_not_a_guess() {
        let dir = scratch("records");
        let cold = ColdIndex::open(&dir).expect("open");
        let (first, second) = (b"first tail".to_vec(), vec![7u8; 3000]);
        let a = cold.store(Minute::from_index(10), &first, Minute::from_index(0)).expect("store");
        let b = cold.store(Minute::from_index(11), &second, Minute::from_index(0)).expect("store");
        assert_eq!(cold.load(a).expect("load"), first);
        assert_eq!(cold.load(b).expect("load"), second);
        assert_eq!(cold.bytes(), (first.len() + second.len() + 2 * CRC_BYTES) as u64);
        // A flipped byte on disk: refused by the checksum.
        let path = cold.segment_path(a.segment);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[CRC_BYTES + 2] ^= 0x40;
        std::fs::write(&path, bytes).expect("write");
        assert!(matches!(cold.load(a), Err(ColdReadError::Checksum { .. })));
        assert_eq!(cold.load(b).expect("the other record"), second);
        // A stop removes its files; what a killed run left is removed at the next start.
        drop(cold);
        assert!(!path.exists());
        std::fs::write(&path, b"left by a killed run").expect("write");
        let again = ColdIndex::open(&dir).expect("reopen");
        assert!(!path.exists());
        assert!(matches!(again.load(a), Err(ColdReadError::SegmentGone(0))));
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn full_segments_are_removed_once_forgotten() {
        let dir = scratch("forget");
        let cold = ColdIndex::open(&dir).expect("open");
        let big = vec![1u8; (SEGMENT_BYTES / 2) as usize];
        let old = cold.store(Minute::from_index(5), &big, Minute::from_index(0)).expect("store");
        cold.store(Minute::from_index(6), &big, Minute::from_index(0)).expect("store");
        // The first segment is full; the next record starts a second one.
        let new = cold.store(Minute::from_index(20), b"new", Minute::from_index(0)).expect("store");
        assert_ne!(old.segment, new.segment);
        // Minute 6 forgotten: the first segment goes, the active one stays.
        cold.store(Minute::from_index(21), b"newer", Minute::from_index(7)).expect("store");
        assert!(matches!(cold.load(old), Err(ColdReadError::SegmentGone(_))));
        assert!(!cold.segment_path(old.segment).exists());
        assert_eq!(cold.load(new).expect("load"), b"new");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_failed_store_is_an_error_and_the_next_one_works() {
        let dir = scratch("fail");
        let cold = ColdIndex::open(&dir).expect("open");
        // No directory to start a segment in (what a full or lost disk looks like here).
        std::fs::remove_dir_all(&dir).expect("remove");
        assert!(cold.store(Minute::from_index(1), b"tail", Minute::from_index(0)).is_err());
        std::fs::create_dir_all(&dir).expect("recreate");
        let at = cold.store(Minute::from_index(1), b"tail", Minute::from_index(0)).expect("store");
        assert_eq!(cold.load(at).expect("load"), b"tail");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A machine at 1/s stamped in ms: `minutes` minutes accepted, each closed at its end
    /// + 5 s and cooled, forgetting what is older than 30 minutes.
    fn live_machine(cold: &ColdIndex, minutes: i64) -> OpenMinutes {
        use crate::logic::{JournalMark, Sample, Timestamp};
        let mut open = OpenMinutes::default();
        for second in 0..minutes * 60 {
            let ts = Timestamp::from_micros(second * 1_000_000 + second % 7 * 1_000);
            if second % 60 == 5 && second > 60 {
                let forget_before = Minute::from_index(ts.minute().index() - 30);
                open.take_closed(ts, Duration::from_secs(5), forget_before);
                cold.cool(&mut open, forget_before).expect("cooled");
            }
            open.accept(&Sample { ts, load_rate: 1.0, mileage: 1.0, mark: JournalMark::NONE });
        }
        open
    }

    #[test]
    fn a_machine_cooled_every_minute_holds_one_run_and_gets_its_window_back() {
        use crate::logic::{Accepted, JournalMark, Sample, Timestamp};
        let dir = scratch("chain");
        let cold = ColdIndex::open(&dir).expect("open");
        let mut open = live_machine(&cold, 45);
        // The newest written minute (ms stamps at 1/s: about 65 bytes) and one reference.
        assert!(open.written().heap_bytes() < 100, "{} bytes", open.written().heap_bytes());
        // As `live_machine` stamped it (`moved` ms later: a sample never sent).
        let resend = |second: i64, moved: i64| Sample {
            ts: Timestamp::from_micros(second * 1_000_000 + (second % 7 + moved) * 1_000),
            load_rate: 1.0,
            mileage: 1.0,
            mark: JournalMark::NONE,
        };
        // Minutes from 14 on are remembered.
        let (held, new) = (resend(20 * 60 + 3, 0), resend(20 * 60 + 3, 1));
        assert_eq!(open.accept(&held), Accepted::NeedsCold);
        let since = Minute::from_index(14);
        assert_eq!(open.warm(since, |at| cold.load(at).ok()), 0);
        assert_eq!(open.accept(&held), Accepted::AlreadyWritten);
        assert_eq!(open.accept(&new), Accepted::Added);
        assert_eq!(open.accept(&resend(13 * 60 + 3, 0)), Accepted::Added, "minute 13 is forgotten");
        assert_eq!(open.accept(&resend(14 * 60 + 3, 0)), Accepted::AlreadyWritten);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn a_tail_that_cannot_be_stored_stays_in_memory_and_goes_at_the_next_close() {
        let dir = scratch("unstored");
        let cold = ColdIndex::open(&dir).expect("open");
        let mut open = live_machine(&cold, 4);
        let cooled = open.written().clone();
        // A fourth minute closes into an index with no segment open and no directory to
        // start one in (what a full or lost disk looks like here).
        drop(cold);
        let cold = ColdIndex::open(&dir).expect("reopen");
        std::fs::remove_dir_all(&dir).expect("remove");
        let ts = crate::logic::Timestamp::from_micros(5 * 60_000_000);
        open.take_closed(ts, Duration::from_secs(5), Minute::from_index(0));
        let unstored = open.written().clone();
        assert_ne!(unstored, cooled);
        assert!(cold.cool(&mut open, Minute::from_index(0)).is_err());
        assert_eq!(open.written(), &unstored, "the index is unchanged when the store fails");
        std::fs::create_dir_all(&dir).expect("recreate");
        cold.cool(&mut open, Minute::from_index(0)).expect("cooled once the disk is back");
        assert!(open.written().heap_bytes() < unstored.heap_bytes());
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
