//! The journal on a real directory: what a restart finds, damage, the lock, the identity
//! and the removal of finished segments.

use super::super::{Journal, JournalError};
use crate::logic::{ClosedMinute, JournalTally, Minute, MinuteAggregate, Sample, Timestamp};
use crate::stats::PipelineStats;
use fleetagg_config::JournalConfig;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const IDENTITY: &str = "client_id=c database=d";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fleetagg-journal-test-{name}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn config(dir: &Path) -> JournalConfig {
    JournalConfig { dir: dir.to_owned(), ..JournalConfig::default() }
}

fn open(dir: &Path) -> (Arc<Journal>, super::Recovered, Arc<PipelineStats>) {
    let stats = Arc::new(PipelineStats::default());
    let (journal, recovered) = Journal::open(&config(dir), IDENTITY, stats.clone()).expect("journal opens");
    (journal, recovered, stats)
}

fn replayed(recovered: &super::Recovered) -> Vec<(u64, String)> {
    let mut found = Vec::new();
    let mut segments = recovered.messages();
    while let Some(messages) = segments.next_segment() {
        found.extend(
            messages.into_iter().map(|message| {
                (message.mark.seq, String::from_utf8(message.payload).expect("utf-8 payload"))
            }),
        );
    }
    found
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

#[test]
fn a_restart_replays_what_was_not_finished_and_continues_the_sequence() {
    let dir = temp_dir("restart");
    let (journal, recovered, _) = open(&dir);
    assert_eq!(recovered.messages, 0);
    let first = journal.append_message("t", b"one", 3).expect("append").mark;
    let second = journal.append_message("t", b"two", 3).expect("append").mark;
    assert_eq!((first.seq, second.seq), (1, 2));
    journal.release_mark(first);
    drop(journal);

    // The segment is kept while one of its messages is pending: both are read back (the
    // release of the first is in no file; the replay filter is what skips committed
    // samples, tested with the ledger).
    let segment = segment_files(&dir).pop().expect("a segment");
    let reserved = std::fs::metadata(&segment).expect("metadata").len();
    let (journal, recovered, _) = open(&dir);
    assert_eq!(replayed(&recovered), vec![(1, "one".to_owned()), (2, "two".to_owned())]);
    // The segment was active at the stop: space reserved past its records is neither a
    // loss nor kept.
    assert_eq!(recovered.lost_bytes, 0);
    let records = std::fs::metadata(&segment).expect("metadata").len();
    assert!(records < reserved && records > 0, "cut from {reserved} to {records} bytes");
    assert_eq!(recovered.last_seq, 2);
    let third = journal.append_message("t", b"three", 5).expect("append").mark;
    assert_eq!(third.seq, 3, "sequences continue across restarts");
    assert_ne!(third.segment, first.segment, "a restart writes to a new segment");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn intents_are_read_back_with_their_batch_ids() {
    let dir = temp_dir("intents");
    let (journal, _, _) = open(&dir);
    let mark = journal.append_message("t", b"{}", 2).expect("append").mark;
    let sample = Sample { ts: Timestamp::from_micros(0), load_rate: 1.0, mileage: 1.0, mark };
    let row = ClosedMinute {
        machine: "m1".into(),
        minute: Minute::from_index(42),
        aggregate: MinuteAggregate::of(&sample),
        tally: JournalTally::of(mark),
        seen: Vec::new(),
        known_new: true,
    };
    journal.append_minutes_intent("batch-7", &[row]).expect("intent");
    drop(journal);
    let (_, recovered, _) = open(&dir);
    assert_eq!(recovered.batch_ids(), vec!["batch-7".to_owned()]);
    assert_eq!(recovered.minutes_intents[0].rows, vec![("m1".to_owned(), 42, mark.seq)]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_torn_tail_is_cut_off_and_counted_and_the_rest_replays() {
    // How a crash cuts the last record short: in a mapped segment its copy stops, and
    // the reserved zeros follow; in a written one (or a journal of an earlier version)
    // the file ends early.
    for copy_stopped in [true, false] {
        let dir = temp_dir("torn");
        let (journal, _, _) = open(&dir);
        journal.append_message("t", b"whole", 5).expect("append");
        journal.append_message("t", b"torn at the crash", 17).expect("append");
        drop(journal);
        let file = segment_files(&dir).pop().expect("a segment");
        let mut data = std::fs::read(&file).expect("read");
        let written_end = data.iter().rposition(|&byte| byte != 0).expect("records") + 1;
        if copy_stopped {
            data[written_end - 3..written_end].fill(0);
        } else {
            data.truncate(written_end - 3);
        }
        std::fs::write(&file, &data).expect("damage");
        torn_tail_recovers(&dir);
    }
}

fn torn_tail_recovers(dir: &Path) {
    let (_, recovered, stats) = open(dir);
    assert_eq!(replayed(&recovered), vec![(1, "whole".to_owned())]);
    assert!(recovered.lost_bytes > 0);
    assert_eq!(stats.journal_lost_bytes.load(Ordering::Relaxed), recovered.lost_bytes);
    // Cut off the file: the next start finds nothing damaged.
    drop(recovered);
    let (_, recovered, _) = open(dir);
    assert_eq!(recovered.lost_bytes, 0);
    assert_eq!(recovered.messages, 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_corrupt_record_loses_the_rest_of_its_segment_only() {
    let dir = temp_dir("corrupt");
    let (journal, _, _) = open(&dir);
    journal.append_message("t", b"good", 4).expect("append");
    journal.append_message("t", b"flipped", 7).expect("append");
    journal.append_message("t", b"after", 5).expect("append");
    drop(journal);
    let file = segment_files(&dir).pop().expect("a segment");
    let mut data = std::fs::read(&file).expect("read");
    let flipped = data.windows(7).position(|window| window == b"flipped").expect("payload on disk");
    data[flipped] ^= 0x20;
    std::fs::write(&file, &data).expect("write");

    // Started twice: a damaged journal is reported, never a crash loop.
    let (journal, recovered, _) = open(&dir);
    assert_eq!(replayed(&recovered), vec![(1, "good".to_owned())]);
    assert!(recovered.lost_bytes > 0);
    journal.append_message("t", b"new", 3).expect("appends go on");
    drop((journal, recovered));
    let (_, recovered, _) = open(&dir);
    let found = replayed(&recovered);
    assert_eq!(found.iter().map(|(_, payload)| payload.as_str()).collect::<Vec<_>>(), ["good", "new"]);
    assert!(recovered.lost_bytes > 0, "still reported while the segment is kept");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_second_instance_on_the_same_directory_is_refused() {
    let dir = temp_dir("lock");
    let (_journal, _, _) = open(&dir);
    let second = Journal::open(&config(&dir), IDENTITY, Arc::new(PipelineStats::default()));
    assert!(matches!(second, Err(JournalError::Locked { .. })), "{second:?}");
    let message = second.expect_err("locked").to_string();
    assert!(
        message.contains(&dir.display().to_string()) && message.contains("another fleetagg"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_journal_for_another_database_or_client_is_never_replayed() {
    let dir = temp_dir("identity");
    let (journal, _, _) = open(&dir);
    journal.append_message("t", b"for d", 5).expect("append");
    drop(journal);
    let other =
        Journal::open(&config(&dir), "client_id=c database=other", Arc::new(PipelineStats::default()));
    let message = other.expect_err("foreign journal refused").to_string();
    assert!(message.contains("database=d") && message.contains("database=other"), "{message}");
    // Its own configuration still replays it.
    let (_, recovered, _) = open(&dir);
    assert_eq!(recovered.messages, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_empty_journal_takes_the_new_identity() {
    let dir = temp_dir("rebind");
    drop(open(&dir));
    let stats = Arc::new(PipelineStats::default());
    let reopened = Journal::open(&config(&dir), "client_id=c database=new", stats);
    assert!(reopened.is_ok(), "nothing to replay, nothing to protect");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_directory_that_cannot_be_created_is_named() {
    let parent = temp_dir("not-a-dir");
    std::fs::write(&parent, b"a file").expect("file");
    let dir = parent.join("journal");
    let opened = Journal::open(&config(&dir), IDENTITY, Arc::new(PipelineStats::default()));
    let message = opened.expect_err("cannot create").to_string();
    assert!(message.contains(&dir.display().to_string()), "{message}");
    let _ = std::fs::remove_file(&parent);
}

#[test]
fn finished_segments_are_removed_oldest_first() {
    let dir = temp_dir("removal");
    let stats = Arc::new(PipelineStats::default());
    let small = JournalConfig { segment_bytes: 200, ..config(&dir) };
    let (journal, _) = Journal::open(&small, IDENTITY, stats.clone()).expect("open");
    let payload = [b'x'; 250];
    let marks: Vec<_> =
        (0..4).map(|_| journal.append_message("t", &payload, 250).expect("append").mark).collect();
    assert!(segment_files(&dir).len() >= 4, "one record per segment at this size");
    // Each segment the next one took over is cut back to its records: no reserved space.
    let files = segment_files(&dir);
    for finished in &files[..files.len() - 1] {
        let len = std::fs::metadata(finished).expect("metadata").len();
        assert!(len > 250 && len < 400, "{} holds {len} bytes", finished.display());
    }
    // Finishing a newer segment first removes nothing: an older one is still pending.
    journal.release_mark(marks[1]);
    assert!(segment_files(&dir).len() >= 4);
    journal.release_mark(marks[0]);
    let left = segment_files(&dir);
    assert_eq!(
        left.first().map(|path| path.file_name()),
        Some(Some(std::ffi::OsStr::new(&format!("{:010}.seg", marks[2].segment))))
    );
    assert_eq!(stats.journal_segments.load(Ordering::Relaxed), left.len() as u64);
    journal.release_mark(marks[2]);
    journal.release_mark(marks[3]);
    assert_eq!(segment_files(&dir).len(), 1, "only the active segment stays");
    assert_eq!(stats.journal_oldest_pending_micros.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_message_carries_its_records_arrival_time_on_the_first_pass_as_on_a_replay() {
    let dir = temp_dir("arrival");
    let arrived = Timestamp::from_micros(1_700_000_000_123_456);
    let clock = Arc::new(crate::clock::ManualClock::new(arrived));
    let stats = Arc::new(PipelineStats::with_clock(clock.clone()));
    let (journal, _) = Journal::open(&config(&dir), IDENTITY, stats.clone()).expect("journal opens");
    let (sink, mut inbound) = crate::source::InboundSink::channel(4, Some(journal.clone()), stats);
    let message = crate::source::InboundMessage::received("t", b"{}", 1_024);
    assert!(sink.blocking_deliver(message));
    // The broker gets to it an hour later (a long back-pressure): it must still check it
    // as of its arrival, as a replay will.
    clock.advance(std::time::Duration::from_secs(3_600));
    let first_pass = inbound.try_recv().expect("delivered");
    assert_eq!(first_pass.received_at, Some(arrived));
    drop((sink, inbound, journal));

    let (_journal, recovered, _) = open(&dir);
    let mut segments = recovered.messages();
    let replay = segments.next_segment().expect("a segment").pop().expect("the message");
    assert_eq!((replay.mark, replay.received_at), (first_pass.mark, first_pass.received_at));
    let _ = std::fs::remove_dir_all(&dir);
}
