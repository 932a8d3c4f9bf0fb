//! Opening a journal directory: the lock, the identity check, the scan of what a
//! previous run left, and reading its messages back for the replay.
//!
//! The scan keeps every whole record up to the first damaged one in each segment. A
//! torn tail (the crash cut a write short) is cut off the file; a corrupt record (a bad
//! checksum) loses the rest of its segment. Both are counted and logged, and start-up
//! goes on: a damaged journal never becomes a crash loop.

use super::record::{self, Decoded, MinutesIntent, Record, RejectionsIntent};
use super::{create_segment, segment_path, Active, ActiveFile, Inner, Journal, JournalError, Segment};
use crate::logic::{JournalMark, Timestamp};
use crate::source::InboundMessage;
use crate::stats::PipelineStats;
use fleetagg_config::JournalConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

const LOCK_FILE: &str = "LOCK";
const IDENTITY_FILE: &str = "IDENTITY";

/// What a previous run left in the journal.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Messages to replay (not finished when that run ended, as far as the journal knows).
    pub messages: u64,
    /// The highest sequence the journal holds (in a message or an intent): replayed
    /// messages are at or below it, new ones above.
    pub last_seq: u64,
    pub minutes_intents: Vec<MinutesIntent>,
    pub rejections_intents: Vec<RejectionsIntent>,
    /// Bytes of damaged records skipped (a torn tail, a bad checksum).
    pub lost_bytes: u64,
    /// When the oldest message to replay arrived (µs since the epoch): replayed samples
    /// are validated as of their arrival, so minutes written since then, less
    /// `max_lateness`, are what their resends may repeat.
    pub oldest_received_micros: Option<i64>,
    /// The segments to read again, with how much of each is valid.
    segments: Vec<(u32, u64)>,
    dir: PathBuf,
}

impl Recovered {
    /// The batch ids whose intents were found: the ones to look up in the ledger.
    pub fn batch_ids(&self) -> Vec<String> {
        let minutes = self.minutes_intents.iter().map(|intent| intent.batch.clone());
        minutes.chain(self.rejections_intents.iter().map(|intent| intent.batch.clone())).collect()
    }

    /// The messages, segment by segment, for the replay.
    pub fn messages(&self) -> RecoveredMessages {
        RecoveredMessages { dir: self.dir.clone(), segments: self.segments.clone().into_iter() }
    }
}

/// Reads the recovered messages back one segment at a time, so a large journal (after a
/// long database outage) is never in memory whole.
#[derive(Debug)]
pub struct RecoveredMessages {
    dir: PathBuf,
    segments: std::vec::IntoIter<(u32, u64)>,
}

impl RecoveredMessages {
    /// The next segment's messages; `None` after the last. A segment that cannot be read
    /// any more is skipped with an error log (it was readable at the scan).
    pub fn next_segment(&mut self) -> Option<Vec<InboundMessage>> {
        let (id, valid) = self.segments.next()?;
        let path = segment_path(&self.dir, id);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "cannot read a journal segment again; its messages are not replayed");
                return Some(Vec::new());
            }
        };
        let data = data.get(..valid as usize).unwrap_or(&data);
        let mut messages = Vec::new();
        let mut at = 0;
        while let Decoded::Record(found, next) = record::decode(data, at) {
            if let Record::Message { seq, received, payload_len, topic, payload } = found {
                messages.push(InboundMessage {
                    topic: topic.into_owned(),
                    payload: payload.to_vec(),
                    payload_len: usize::try_from(payload_len).unwrap_or(usize::MAX),
                    mark: JournalMark { seq, segment: id },
                    received_at: Some(Timestamp::from_micros(received)),
                });
            }
            at = next;
        }
        Some(messages)
    }
}

pub(super) fn open(
    config: &JournalConfig,
    identity: &str,
    stats: Arc<PipelineStats>,
) -> Result<(Arc<Journal>, Recovered), JournalError> {
    let dir = config.dir.clone();
    let directory_error = |message: String| JournalError::Directory { dir: dir.clone(), message };
    std::fs::create_dir_all(&dir).map_err(|err| directory_error(format!("cannot create it: {err}")))?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(|err| directory_error(format!("cannot write in it: {err}")))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked { dir }),
        Err(std::fs::TryLockError::Error(err)) => {
            return Err(directory_error(format!("cannot lock it: {err}")))
        }
    }

    let ids = segment_ids(&dir).map_err(|err| directory_error(format!("cannot list it: {err}")))?;
    let mut recovered = Recovered { dir: dir.clone(), ..Recovered::default() };
    let mut segments = BTreeMap::new();
    let mut max_seq = 0;
    for &id in &ids {
        let scan = scan_segment(&dir, id).map_err(|err| directory_error(format!("segment {id}: {err}")))?;
        max_seq = max_seq.max(scan.max_seq);
        recovered.messages += scan.messages;
        recovered.oldest_received_micros = match (recovered.oldest_received_micros, scan.oldest_received) {
            (Some(held), Some(found)) => Some(held.min(found)),
            (held, found) => held.or(found),
        };
        recovered.lost_bytes += scan.lost_bytes;
        recovered.minutes_intents.extend(scan.minutes);
        recovered.rejections_intents.extend(scan.rejections);
        recovered.segments.push((id, scan.valid_len));
        segments.insert(
            id,
            Segment { pending: scan.messages, bytes: scan.valid_len, started_micros: scan.modified_micros },
        );
    }
    recovered.last_seq = max_seq;
    check_identity(&dir, identity, recovered.messages > 0)?;
    if recovered.lost_bytes > 0 {
        tracing::error!(dir = %dir.display(), lost_bytes = recovered.lost_bytes, "journal had damaged records (a torn write or a bad checksum); the valid ones are replayed");
    }

    let active_id = ids.last().map_or(1, |last| last + 1);
    let file = create_segment(&dir, active_id, config.sync)
        .map_err(|err| directory_error(format!("cannot create a segment: {err}")))?;
    segments.insert(active_id, Segment { pending: 0, bytes: 0, started_micros: stats.clock.now().micros() });
    stats.journal_enabled.store(true, Ordering::Relaxed);
    stats.journal_bytes.store(segments.values().map(|segment| segment.bytes).sum(), Ordering::Relaxed);
    stats.journal_lost_bytes.fetch_add(recovered.lost_bytes, Ordering::Relaxed);
    let journal = Arc::new(Journal {
        dir,
        sync: config.sync,
        segment_bytes: config.segment_bytes,
        inner: Mutex::new(Inner {
            active: Active { id: active_id, file: ActiveFile::mapped(file) },
            next_seq: max_seq + 1,
            segments,
            buffer: Vec::new(),
            dirty: false,
        }),
        stats,
        _lock: lock,
    });
    // Segments whose messages were all finished go now (a clean stop leaves its last one).
    {
        let mut inner = journal.lock();
        journal.remove_finished(&mut inner);
    }
    Ok((journal, recovered))
}

fn segment_ids(dir: &Path) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|stem| stem.parse::<u32>().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

#[derive(Debug, Default)]
struct SegmentScan {
    messages: u64,
    max_seq: u64,
    minutes: Vec<MinutesIntent>,
    rejections: Vec<RejectionsIntent>,
    valid_len: u64,
    lost_bytes: u64,
    modified_micros: i64,
    /// When its oldest message arrived (µs since the epoch).
    oldest_received: Option<i64>,
}

fn scan_segment(dir: &Path, id: u32) -> std::io::Result<SegmentScan> {
    let path = segment_path(dir, id);
    let data = std::fs::read(&path)?;
    let mut scan = SegmentScan::default();
    let mut at = 0;
    let damage = loop {
        match record::decode(&data, at) {
            Decoded::Record(found, next) => {
                match found {
                    Record::Message { seq, received, .. } => {
                        scan.messages += 1;
                        scan.max_seq = scan.max_seq.max(seq);
                        scan.oldest_received =
                            Some(scan.oldest_received.map_or(received, |at| at.min(received)));
                    }
                    // A new message must never take a sequence an intent refers to
                    // (its record may be the damaged one), or a replay would skip it.
                    Record::Minutes(intent) => {
                        scan.max_seq = intent.rows.iter().map(|row| row.2).fold(scan.max_seq, u64::max);
                        scan.minutes.push(intent);
                    }
                    Record::Rejections(intent) => {
                        scan.max_seq = intent.seqs.iter().copied().fold(scan.max_seq, u64::max);
                        scan.rejections.push(intent);
                    }
                }
                at = next;
            }
            Decoded::End => break None,
            other => break Some(other),
        }
    };
    scan.valid_len = at as u64;
    // Zeros at the end are reserved space, not lost records.
    let written_end = data.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    scan.lost_bytes = if damage.is_some() { written_end.saturating_sub(at).max(1) as u64 } else { 0 };
    match damage {
        Some(Decoded::Torn) => {
            tracing::warn!(path = %path.display(), bytes = scan.lost_bytes, "journal segment ends in a torn record (a crash during a write); cut off");
            std::fs::OpenOptions::new().write(true).open(&path)?.set_len(scan.valid_len)?;
        }
        Some(_) => {
            tracing::error!(path = %path.display(), offset = at, bytes = scan.lost_bytes, "journal segment has a corrupt record; the rest of the segment is skipped");
        }
        // Space reserved for records that never came (the segment was active when the
        // process stopped): not a loss; cut off so the disk holds only records.
        None if at < data.len() => {
            std::fs::OpenOptions::new().write(true).open(&path)?.set_len(scan.valid_len)?;
        }
        None => {}
    }
    let modified = std::fs::metadata(&path)?.modified()?;
    scan.modified_micros = modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_micros()).unwrap_or(i64::MAX));
    Ok(scan)
}

/// The journal remembers which client id and database it was written for: replaying it
/// into another database would count its samples there, and a second instance with
/// another client id would replay what its own broker session still holds. Refused
/// while the journal has messages; rewritten when it is empty.
fn check_identity(dir: &Path, identity: &str, has_messages: bool) -> Result<(), JournalError> {
    let path = dir.join(IDENTITY_FILE);
    let found = std::fs::read_to_string(&path).ok();
    let found = found.as_deref().map(str::trim_end);
    if found == Some(identity) {
        return Ok(());
    }
    if has_messages {
        if let Some(found) = found {
            return Err(JournalError::ForeignJournal {
                dir: dir.to_owned(),
                found: found.to_owned(),
                expected: identity.to_owned(),
            });
        }
    }
    // Written whole under another name, then renamed: never half an identity.
    let temporary = dir.join(format!("{IDENTITY_FILE}.new"));
    std::fs::write(&temporary, format!("{identity}\n"))
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|err| JournalError::Directory {
            dir: dir.to_owned(),
            message: format!("cannot write {IDENTITY_FILE}: {err}"),
        })
}

#[cfg(test)]
mod tests;
