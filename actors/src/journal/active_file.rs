//! The active segment's file, and how a record gets into it cheaply.
//!
//! Why not one `write` per record: on paho's receive thread, the thread that bounds the
//! drain, the system call was nearly all of an append's 1.4 µs (docs/benchmarks.md, "The
//! journal"). Instead the segment reserves disk space ahead of its records
//! (`fallocate`, [`RESERVE_STEP`] at a time) and maps that reserved part
//! ([`MappedWindow`]); an append is a copy into the map. The copy lands in the page
//! cache, as a `write` would, so a record survives a crash of the process the moment
//! the copy is done; `fdatasync` of the file (the sync thread, `sync = "fsync"`) writes
//! the mapped pages like written ones.
//!
//! Space is reserved before it is mapped, so a full disk is an error of `fallocate`
//! (intake waits and retries, as with `write`), never a `SIGBUS` on a page with no block
//! behind it. The reserved bytes past the last record are zeros, which recovery reads as
//! the end of the segment; a finished segment is cut back to its records when the next
//! one starts. Where the filesystem cannot reserve or map, the segment is written with
//! one positioned `write` per record instead ([`ActiveFile::written`]).

use memmap2::{MmapMut, MmapOptions};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// How much space one reservation adds, and so the most a mapped window covers beyond
/// one record. Small, because the touched pages of the mapped window count in the
/// process's resident set (as file pages) until the window moves on.
pub(super) const RESERVE_STEP: u64 = 1024 * 1024;

#[derive(Debug)]
pub(super) struct ActiveFile {
    /// Shared with the sync thread, which `fdatasync`s it without the journal's mutex.
    pub(super) file: Arc<File>,
    /// Bytes of whole records; where the next one goes.
    pub(super) len: u64,
    /// `None` when the segment is written record by record (see the module's comment).
    window: Option<MappedWindow>,
    /// Bytes reserved (the file's size while mapped).
    reserved: u64,
    mapping: bool,
}

/// The map of the file from a page boundary at or before `len` to `reserved`.
#[derive(Debug)]
struct MappedWindow {
    start: u64,
    map: MmapMut,
}

impl ActiveFile {
    /// A new, empty segment file, appended through a map where the filesystem allows it.
    pub(super) fn mapped(file: File) -> ActiveFile {
        ActiveFile { file: Arc::new(file), len: 0, window: None, reserved: 0, mapping: true }
    }

    /// A new, empty segment file written with one `write` per record.
    pub(super) fn written(file: File) -> ActiveFile {
        ActiveFile { file: Arc::new(file), len: 0, window: None, reserved: 0, mapping: false }
    }

    pub(super) fn is_mapped(&self) -> bool {
        self.mapping
    }

    /// Appends whole records. On an error nothing of them counts: `len` stays, and what
    /// was copied or written past it is zeros to recovery or is cut off.
    pub(super) fn append(&mut self, encoded: &[u8]) -> io::Result<()> {
        let end = self.len + encoded.len() as u64;
        if self.mapping && end > self.reserved {
            self.reserve(end)?;
        }
        match &mut self.window {
            Some(window) if self.mapping => {
                let at = usize::try_from(self.len - window.start).map_err(io::Error::other)?;
                window.map[at..at + encoded.len()].copy_from_slice(encoded);
            }
            _ => {
                if let Err(err) = self.file.write_all_at(encoded, self.len) {
                    // No torn record may stay between good ones; recovery would skip it
                    // and everything after it in the segment.
                    let _ = self.file.set_len(self.len);
                    return Err(err);
                }
            }
        }
        self.len = end;
        Ok(())
    }

    /// Reserves space up to at least `end` and maps it. Falls back to writing when the
    /// filesystem supports neither `fallocate` nor shared maps.
    fn reserve(&mut self, end: u64) -> io::Result<()> {
        let page = rustix::param::page_size() as u64;
        let wanted = round_up(end.max(self.reserved + RESERVE_STEP), page);
        match self.allocate(wanted) {
            Ok(()) => {}
            // On a nearly full disk take what this record needs, page by page, so the
            // journal fills the disk as far as `write` would before it waits.
            Err(err) if is_no_space(&err) && round_up(end, page) < wanted => {
                self.allocate(round_up(end, page))?;
            }
            Err(err) if is_unsupported(&err) => return self.fall_back_to_writing(&err),
            Err(err) => return Err(err),
        }
        let start = self.len - self.len % page;
        self.window = None;
        match map_window(&self.file, start, self.reserved - start) {
            Ok(map) => {
                self.window = Some(MappedWindow { start, map });
                Ok(())
            }
            Err(err) => self.fall_back_to_writing(&err),
        }
    }

    fn allocate(&mut self, wanted: u64) -> io::Result<()> {
        rustix::fs::fallocate(
            &*self.file,
            rustix::fs::FallocateFlags::empty(),
            self.reserved,
            wanted - self.reserved,
        )?;
        self.reserved = wanted;
        Ok(())
    }

    fn fall_back_to_writing(&mut self, why: &io::Error) -> io::Result<()> {
        tracing::warn!(error = %why, "the journal's filesystem cannot reserve and map segment space; appending with one write per record");
        self.mapping = false;
        self.window = None;
        // Writes go at `len`: reserved zeros past it would only be cut at the rotation.
        self.file.set_len(self.len)?;
        self.reserved = self.len;
        Ok(())
    }

    /// Stops mapping and cuts the file back to its records: called when the next
    /// segment takes over. A failure leaves zeros at the end, which recovery skips.
    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.window = None;
        if self.reserved > self.len {
            self.file.set_len(self.len)?;
            self.reserved = self.len;
        }
        Ok(())
    }
}

/// Maps `len` bytes of `file` from `start` (a page boundary) for writing.
///
/// Safety: the map stays valid while nobody shrinks the file under it, and its bytes
/// are only written while nothing else writes them. The file is this process's own
/// active segment: the journal directory's lock keeps other fleetagg instances out,
/// recovery never touches the active segment, and this module cuts the file only after
/// dropping the map. An outside process truncating the file would end the service with
/// `SIGBUS`, and the next start would recover the segment's valid records.
#[allow(unsafe_code)]
fn map_window(file: &File, start: u64, len: u64) -> io::Result<MmapMut> {
    let len = usize::try_from(len).map_err(io::Error::other)?;
    // SAFETY: see the function's comment.
    unsafe { MmapOptions::new().offset(start).len(len).map_mut(file) }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

fn is_no_space(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::FBIG.raw_os_error())
}

fn is_unsupported(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(code) if code == rustix::io::Errno::OPNOTSUPP.raw_os_error() || code == rustix::io::Errno::NOSYS.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("fleetagg-active-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join("segment");
        let file =
            std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).expect("file");
        (path, file)
    }

    #[test]
    fn mapped_and_written_segments_hold_the_same_bytes_across_windows() {
        let record: Vec<u8> = (0..=250u8).collect();
        let (mapped_path, file) = scratch("mapped");
        let mut mapped = ActiveFile::mapped(file);
        let (written_path, file) = scratch("written");
        let mut written = ActiveFile::written(file);
        // Crosses several reservations, and one record larger than a step.
        let big = vec![7u8; RESERVE_STEP as usize + 10];
        for round in 0..10_000 {
            let bytes: &[u8] = if round == 5_000 { &big } else { &record };
            mapped.append(bytes).expect("mapped append");
            written.append(bytes).expect("written append");
        }
        assert!(mapped.is_mapped(), "this filesystem maps");
        let on_disk = std::fs::read(&mapped_path).expect("read mapped");
        assert!(on_disk.len() as u64 > mapped.len, "space is reserved ahead");
        assert!(on_disk[mapped.len as usize..].iter().all(|&byte| byte == 0), "reserved space is zeros");
        mapped.finish().expect("finish");
        assert_eq!(std::fs::read(&mapped_path).expect("read"), std::fs::read(&written_path).expect("read"));
    }

    #[test]
    fn falling_back_to_writing_midway_keeps_every_record_in_place() {
        let (path, file) = scratch("fallback");
        let mut active = ActiveFile::mapped(file);
        active.append(b"mapped,").expect("append");
        active.fall_back_to_writing(&io::Error::other("test")).expect("fall back");
        active.append(b"written").expect("append");
        assert!(!active.is_mapped());
        assert_eq!(std::fs::read(&path).expect("read"), b"mapped,written");
    }

    #[test]
    fn a_mapped_record_survives_without_the_map_being_flushed_or_dropped() {
        let (path, file) = scratch("crash");
        let mut active = ActiveFile::mapped(file);
        active.append(b"first record").expect("append");
        // What another process (the next start after a kill -9) reads: the page cache.
        let seen = std::fs::read(&path).expect("read");
        assert_eq!(&seen[..12], b"first record");
        assert!(active.is_mapped());
    }
}
