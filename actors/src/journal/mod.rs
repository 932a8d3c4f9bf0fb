//! The journal: every message paho hands over is appended here before it is processed,
//! and replayed at start-up until the rows it fed are committed.
//!
//! Why: paho acknowledges a QoS 1 message to the broker when it arrives, so the broker
//! never resends what the service held in memory when it died (open minutes of the
//! whole fleet, the writer's buffer). The journal makes a crash cost a replay instead.
//!
//! The log is a directory of segment files (`NNNNNNNNNN.seg`) of CRC32C-checked records
//! ([`record`]), written by one thread at a time under a mutex: paho's callback thread
//! appends messages, the writer appends, before each batch, what the batch commits
//! ([`record::MinutesIntent`]). Each segment counts the messages it holds that are not
//! finished yet; a row's [`JournalTally`] says how many of each segment it answers for,
//! and [`Journal::release`] counts them down when the row is committed (or a message is
//! finished otherwise: rejected and stored, dropped by a limit). Segments are removed
//! from the oldest while they have nothing left, never out of order: a segment's intents
//! may describe samples of older ones.
//!
//! [`recovery`] opens the directory (lock, identity, scan) and replays it.

mod active_file;
mod recovery;
pub mod record;
mod replay_filter;

pub use recovery::{Recovered, RecoveredMessages};
pub use replay_filter::ReplayFilter;

use crate::logic::{ClosedMinute, JournalMark, JournalTally, RejectedMessage, Timestamp};
use crate::stats::{bump, PipelineStats};
use active_file::ActiveFile;
use fleetagg_config::{JournalConfig, JournalSync};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Errors of the journal. A failed append is retriable (the disk may get space again);
/// a journal that cannot be opened, or belongs to another database, is fatal for the
/// start-up.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal directory {dir}: {message}")]
    Directory { dir: PathBuf, message: String },
    #[error("journal directory {dir} is in use by another fleetagg (its lock is held); one instance per directory")]
    Locked { dir: PathBuf },
    #[error("journal in {dir} was written for {found}, but this configuration is for {expected}; it was not replayed. Point journal.dir elsewhere, or start once with the configuration that wrote it so it can be written out")]
    ForeignJournal { dir: PathBuf, found: String, expected: String },
    #[error("cannot append to the journal {path}: {source}")]
    Append { path: PathBuf, source: std::io::Error },
}

impl JournalError {
    /// Whether waiting may help (a full disk); the rest needs the operator.
    pub fn is_retriable(&self) -> bool {
        matches!(self, JournalError::Append { .. } | JournalError::Locked { .. })
    }
}

/// A message's record, as [`Journal::append_message`] wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub mark: JournalMark,
    /// The arrival time in the record. The first pass checks the message as of this
    /// time too, not as of when the broker gets to it: a replay checks it as of the
    /// record's time, and both must decide alike (`too_late`, `future_ts`) however long
    /// the message waited in the inbound channel.
    pub received: Timestamp,
}

/// The open journal, shared by the source (appends), the broker and the writer
/// (releases, intents) and the sync thread.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    sync: JournalSync,
    segment_bytes: u64,
    inner: Mutex<Inner>,
    stats: Arc<PipelineStats>,
    /// Held for the journal's life: the lock that keeps a second instance out.
    _lock: File,
}

#[derive(Debug)]
struct Inner {
    active: Active,
    next_seq: u64,
    /// Every segment on disk, oldest first, the active one last.
    segments: BTreeMap<u32, Segment>,
    /// The encoding buffer, reused so that an append allocates nothing.
    buffer: Vec<u8>,
    /// Appended since the last `fdatasync` (with `sync = "fsync"`).
    dirty: bool,
}

#[derive(Debug)]
struct Active {
    id: u32,
    file: ActiveFile,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Messages in it not finished yet.
    pending: u64,
    bytes: u64,
    /// When its first record was appended (µs since the epoch): the oldest unfinished
    /// message is at most this old.
    started_micros: i64,
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}.seg"))
}

impl Journal {
    /// Opens (or creates) the journal in `config.dir` for `identity` (the client id and
    /// database it feeds), and reads what a previous run left: see [`recovery`].
    pub fn open(
        config: &JournalConfig,
        identity: &str,
        stats: Arc<PipelineStats>,
    ) -> Result<(Arc<Journal>, Recovered), JournalError> {
        recovery::open(config, identity, stats)
    }

    /// Appends one received message and returns its place and the arrival time its
    /// record keeps. In the page cache (copied into the mapped segment, see
    /// [`active_file`]) before it returns, so a crash of the process after this cannot
    /// lose it. A failed append leaves no partial record behind.
    pub fn append_message(
        &self,
        topic: &str,
        payload: &[u8],
        payload_len: usize,
    ) -> Result<Appended, JournalError> {
        let mut inner = self.lock();
        let seq = inner.next_seq;
        let mut buffer = std::mem::take(&mut inner.buffer);
        buffer.clear();
        let received = self.stats.clock.now();
        record::encode_message(
            &mut buffer,
            &record::MessageFields { seq, received: received.micros(), topic, payload, payload_len },
        );
        let written = self.write(&mut inner, &buffer);
        inner.buffer = buffer;
        written?;
        inner.next_seq += 1;
        let segment = inner.active.id;
        if let Some(held) = inner.segments.get_mut(&segment) {
            held.pending += 1;
        }
        bump(&self.stats.journal_appended, 1);
        let mark = JournalMark { seq, segment };
        if inner.active.file.len >= self.segment_bytes {
            self.rotate(&mut inner)?;
        }
        Ok(Appended { mark, received })
    }

    /// Records, before a batch of minutes is sent, its id and each row's highest
    /// sequence (see [`record::MinutesIntent`]). With `sync = "fsync"` it is on disk when
    /// this returns: a batch PostgreSQL committed must never be missing its intent.
    pub fn append_minutes_intent(&self, batch: &str, rows: &[ClosedMinute]) -> Result<(), JournalError> {
        let journaled = rows.iter().filter(|row| row.tally.max_seq > 0);
        let entries: Vec<(&str, i64, u64)> =
            journaled.map(|row| (&*row.machine, row.minute.index(), row.tally.max_seq)).collect();
        if entries.is_empty() {
            return Ok(());
        }
        let mut buffer = Vec::new();
        record::encode_minutes(&mut buffer, batch, entries.into_iter());
        self.append_intent(&buffer)
    }

    /// [`Journal::append_minutes_intent`] for a batch of rejected messages.
    pub fn append_rejections_intent(
        &self,
        batch: &str,
        rows: &[RejectedMessage],
    ) -> Result<(), JournalError> {
        let seqs: Vec<u64> = rows.iter().map(|row| row.tally.max_seq).filter(|&seq| seq > 0).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let mut buffer = Vec::new();
        record::encode_rejections(&mut buffer, batch, seqs.into_iter());
        self.append_intent(&buffer)
    }

    fn append_intent(&self, encoded: &[u8]) -> Result<(), JournalError> {
        let file = {
            let mut inner = self.lock();
            self.write(&mut inner, encoded)?;
            inner.active.file.file.clone()
        };
        if self.sync == JournalSync::Fsync {
            file.sync_data().map_err(|source| self.append_error(source))?;
        }
        Ok(())
    }

    /// Counts down the messages a committed (or otherwise finished) row answers for, and
    /// removes the oldest segments once nothing in them is pending.
    pub fn release(&self, tally: &JournalTally) {
        self.release_all(std::iter::once(tally));
    }

    /// [`Journal::release`] for a whole batch's rows, under one lock: the mutex is shared
    /// with paho's thread, which appends every message.
    pub fn release_all<'a>(&self, tallies: impl IntoIterator<Item = &'a JournalTally>) {
        let mut tallies = tallies.into_iter().filter(|tally| !tally.is_empty()).peekable();
        if tallies.peek().is_none() {
            return;
        }
        let mut inner = self.lock();
        for tally in tallies {
            for (segment, records) in tally.segments() {
                if let Some(held) = inner.segments.get_mut(&segment) {
                    held.pending = held.pending.saturating_sub(u64::from(records));
                }
            }
        }
        self.remove_finished(&mut inner);
    }

    /// [`Journal::release`] for one message.
    pub fn release_mark(&self, mark: JournalMark) {
        self.release(&JournalTally::of(mark));
    }

    /// `fdatasync`s what was appended since the last call (the sync thread, with
    /// `sync = "fsync"`). The mutex is not held meanwhile: appends go on.
    pub fn sync_appended(&self) -> Result<(), JournalError> {
        let file = {
            let mut inner = self.lock();
            if !std::mem::take(&mut inner.dirty) {
                return Ok(());
            }
            inner.active.file.file.clone()
        };
        file.sync_data().map_err(|source| self.append_error(source))
    }

    /// At a stop that wrote everything: removes every segment, the active one included,
    /// when no message is pending, so the next start has nothing to replay. False (and
    /// nothing removed) when something is still pending.
    pub fn close_if_finished(&self) -> bool {
        let mut inner = self.lock();
        if inner.segments.values().any(|segment| segment.pending > 0) {
            return false;
        }
        // Not synced: a removal a power loss undoes brings back segments whose intents
        // let the replay skip every committed row.
        for &id in inner.segments.keys() {
            if let Err(err) = std::fs::remove_file(segment_path(&self.dir, id)) {
                tracing::warn!(segment = id, error = %err, "cannot remove a finished journal segment");
            }
        }
        inner.segments.clear();
        self.stats.journal_bytes.store(0, Ordering::Relaxed);
        self.publish_gauges(&inner);
        true
    }

    /// When the oldest segment on disk was started (µs since the epoch): its intents may
    /// name batches committed since then, which the ledger must keep.
    pub fn oldest_segment_started_micros(&self) -> Option<i64> {
        self.lock().segments.values().next().map(|segment| segment.started_micros)
    }

    pub fn sync_mode(&self) -> JournalSync {
        self.sync
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends whole records (see [`active_file`]); on failure (a full disk) nothing of
    /// them counts, so no torn record stays between good ones.
    fn write(&self, inner: &mut Inner, encoded: &[u8]) -> Result<(), JournalError> {
        if let Err(err) = inner.active.file.append(encoded) {
            bump(&self.stats.journal_write_errors, 1);
            return Err(self.append_error(err));
        }
        let written = encoded.len() as u64;
        inner.dirty = true;
        if let Some(held) = inner.segments.get_mut(&inner.active.id) {
            held.bytes += written;
        }
        bump(&self.stats.journal_bytes, written);
        Ok(())
    }

    fn append_error(&self, source: std::io::Error) -> JournalError {
        JournalError::Append { path: self.dir.clone(), source }
    }

    /// Closes the active segment and starts the next.
    fn rotate(&self, inner: &mut Inner) -> Result<(), JournalError> {
        if self.sync == JournalSync::Fsync {
            // The power-loss window must not grow across a segment boundary.
            inner.active.file.file.sync_data().map_err(|source| self.append_error(source))?;
        }
        let id = inner.active.id + 1;
        let file = create_segment(&self.dir, id, self.sync).map_err(|source| self.append_error(source))?;
        let mapped = inner.active.file.is_mapped();
        let previous = std::mem::replace(
            &mut inner.active,
            Active { id, file: if mapped { ActiveFile::mapped(file) } else { ActiveFile::written(file) } },
        );
        let mut previous = previous.file;
        if let Err(err) = previous.finish() {
            tracing::warn!(segment = id - 1, error = %err, "cannot cut a finished journal segment back to its records; recovery skips its zeros");
        }
        let started_micros = self.stats.clock.now().micros();
        inner.segments.insert(id, Segment { pending: 0, bytes: 0, started_micros });
        self.remove_finished(inner);
        Ok(())
    }

    fn remove_finished(&self, inner: &mut Inner) {
        while let Some((&id, segment)) = inner.segments.first_key_value() {
            if id == inner.active.id || segment.pending > 0 {
                break;
            }
            let bytes = segment.bytes;
            if let Err(err) = std::fs::remove_file(segment_path(&self.dir, id)) {
                // Left for the next start, whose replay finds every row committed.
                tracing::warn!(segment = id, error = %err, "cannot remove a finished journal segment");
            }
            inner.segments.remove(&id);
            let _ = self
                .stats
                .journal_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(bytes)));
        }
        self.publish_gauges(inner);
    }

    fn publish_gauges(&self, inner: &Inner) {
        let stats = &self.stats;
        stats.journal_segments.store(inner.segments.len() as u64, Ordering::Relaxed);
        let oldest = inner.segments.values().find(|segment| segment.pending > 0);
        stats
            .journal_oldest_pending_micros
            .store(oldest.map_or(0, |segment| segment.started_micros), Ordering::Relaxed);
    }
}

/// A new, empty segment file. With `sync = "fsync"` the directory entry is synced too,
/// or a power loss could lose the file with its synced contents.
fn create_segment(dir: &Path, id: u32, sync: JournalSync) -> std::io::Result<File> {
    // Read and write, not append: the file is mapped, and records go at the segment's
    // length, not the file's (which includes reserved space).
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(segment_path(dir, id))?;
    if sync == JournalSync::Fsync {
        File::open(dir)?.sync_all()?;
    }
    Ok(file)
}

/// Runs [`Journal::sync_appended`] every `interval` on a thread of its own, until the
/// journal is dropped everywhere else.
pub fn spawn_sync_thread(journal: &Arc<Journal>, interval: std::time::Duration) -> std::io::Result<()> {
    let weak = Arc::downgrade(journal);
    std::thread::Builder::new().name("fleetagg-journal-sync".into()).spawn(move || {
        let mut failing = false;
        loop {
            std::thread::sleep(interval);
            let Some(journal) = weak.upgrade() else { return };
            match journal.sync_appended() {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("journal fdatasync works again");
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    failing = true;
                    tracing::error!(error = %err, "journal fdatasync failed; retrying");
                }
                Err(_) => {}
            }
        }
    })?;
    Ok(())
}
