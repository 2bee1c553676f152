//! `OnDamage::Quarantine`: every damage kind of `corruption.rs` opens, keeps every record before
//! the damage, invents none, reports each step exactly, and a second open finds nothing to do.

use std::path::Path;

use diskspool::format::head::HEAD_SLOT_OFFSETS;
use diskspool::format::layout::{HEAD_FILE_NAME, QUARANTINE_DIR_NAME};
use diskspool::{Error, OnDamage, Options, Queue, RecoveryReport, SyncPolicy};

use crate::util::{drain_checked, frame_offsets, payload_for, push_expected, segment_files};

fn quarantining(policy: SyncPolicy) -> Options {
    Options::default()
        .segment_size(4096)
        .sync(policy)
        .on_damage(OnDamage::Quarantine)
}

/// A closed queue of `count` records in 4 KiB segments.
fn queue_of(count: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    push_expected(&queue, count);
    queue.close().unwrap();
    dir
}

/// The names in `quarantine/`, sorted.
fn quarantined(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir.join(QUARANTINE_DIR_NAME)) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn flip(path: &Path, at: usize, mask: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= mask;
    std::fs::write(path, bytes).unwrap();
}

/// The report's totals agree with its steps, and every step names a file and says why.
fn check_totals(report: &RecoveryReport) {
    let saved: u64 = report.repairs.iter().map(|step| step.records_saved).sum();
    assert_eq!(saved, report.quarantined_records, "{report:#?}");
    for step in &report.repairs {
        assert!(!step.reason.is_empty(), "{step}");
        assert!(step.file.is_absolute(), "{step}");
    }
}

/// Opens again: nothing to repair, nothing new in quarantine, the same records.
fn second_open_finds_nothing(dir: &Path, policy: SyncPolicy, expected: &[u64]) {
    let before = quarantined(dir);
    let queue = Queue::open(dir, quarantining(policy)).unwrap();
    assert!(
        !queue.recovery_report().repaired(),
        "{:#?}",
        queue.recovery_report()
    );
    assert_eq!(queue.recovery_report().cut_seqs, None);
    assert_eq!(quarantined(dir), before);
    let mut seqs = Vec::new();
    while let Some(record) = queue.peek().unwrap() {
        // Peek, then pop: the first open's records must all still be here.
        seqs.push(queue.pop().unwrap().unwrap().seq());
        assert_eq!(record.payload(), payload_for(record.seq()));
    }
    assert_eq!(seqs, expected);
}

/// The next push gets a number above every one a record ever carried.
fn next_push_is_new(queue: &Queue, above: u64) {
    let next = queue.stats().unwrap().next_seq;
    assert!(next >= above, "sequence {next} used again (below {above})");
    assert_eq!(queue.push(&payload_for(next)).unwrap(), next);
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_cuts_there_and_sets_the_rest_aside() {
    let dir = queue_of(200);
    let segments = segment_files(dir.path());
    let damaged = &segments[1];
    let frames = frame_offsets(damaged);
    let (offset, damaged_seq) = frames[frames.len() / 2];
    let last_in_segment = frames.last().unwrap().1;
    flip(damaged, offset as usize + 20, 0x01);

    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    let first = &report.repairs[0];
    assert_eq!(first.action, "truncate_tail");
    assert_eq!(&first.file, damaged);
    assert_eq!(first.offset, offset);
    assert_eq!(first.seqs, Some(damaged_seq..last_in_segment + 1));
    assert_eq!(first.records_saved, last_in_segment - damaged_seq);
    let moved: Vec<_> = report
        .repairs
        .iter()
        .filter(|step| step.action == "quarantine")
        .map(|step| step.file.clone())
        .collect();
    assert_eq!(moved, segments[2..].to_vec());
    let last = report.repairs.last().unwrap();
    assert_eq!(last.action, "continue_after");
    assert_eq!(last.seqs, Some(damaged_seq..200));
    assert_eq!(report.cut_seqs, Some(damaged_seq..200));
    assert_eq!(report.quarantined_records, 200 - damaged_seq - 1);

    let kept: Vec<u64> = (0..damaged_seq).collect();
    assert_eq!(queue.len(), damaged_seq);
    queue.close().unwrap();
    second_open_finds_nothing(dir.path(), SyncPolicy::Never, &kept);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    next_push_is_new(&queue, 200);
}

#[test]
fn a_missing_middle_segment_sets_the_later_ones_aside() {
    let dir = queue_of(200);
    let segments = segment_files(dir.path());
    std::fs::remove_file(&segments[2]).unwrap();
    let last_good = frame_offsets(&segments[1]).last().unwrap().1;
    let gap_end = frame_offsets(&segments[3])[0].1;

    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    let moved: Vec<_> = report
        .repairs
        .iter()
        .filter(|step| step.action == "quarantine")
        .map(|step| step.file.clone())
        .collect();
    assert_eq!(moved, segments[3..].to_vec());
    assert_eq!(report.cut_seqs, Some(last_good + 1..200));
    assert_eq!(report.quarantined_records, 200 - gap_end);
    let kept = drain_checked(&queue);
    assert_eq!(kept, (0..=last_good).collect::<Vec<_>>());
    next_push_is_new(&queue, 200);
    queue.close().unwrap();
    second_open_finds_nothing(dir.path(), SyncPolicy::Never, &[200]);
}

/// The damage `open` refuses under `Refuse` (a synced record damaged while a valid one
/// follows, in the active segment) is cut at the damaged frame; the record after it is saved.
#[test]
fn damage_before_a_synced_record_in_the_active_segment_is_cut_there() {
    for pop_between in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = Queue::open(dir.path(), Options::default()).unwrap();
            for seq in 0..6u64 {
                if pop_between && seq == 3 {
                    assert_eq!(queue.pop().unwrap().unwrap().seq(), 0);
                }
                assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
            }
        }
        let segment = segment_files(dir.path()).pop().unwrap();
        let (offset, seq) = frame_offsets(&segment)[4];
        assert_eq!(seq, 4);
        flip(&segment, offset as usize + 30, 0x01);
        assert!(matches!(
            Queue::open(dir.path(), Options::default()),
            Err(Error::Corrupt { .. })
        ));
        let options = Options::default().on_damage(OnDamage::Quarantine);
        let queue = Queue::open(dir.path(), options.clone()).unwrap();
        let report = queue.recovery_report().clone();
        check_totals(&report);
        let first = &report.repairs[0];
        assert_eq!(
            (first.action, &first.file, first.offset),
            ("truncate_tail", &segment, offset)
        );
        assert_eq!(first.seqs, Some(4..6));
        assert_eq!(report.cut_seqs, Some(4..6));
        assert_eq!(report.quarantined_records, 1, "record 5 is readable");
        let kept: Vec<u64> = (u64::from(pop_between)..4).collect();
        assert_eq!(drain_checked(&queue), kept);
        next_push_is_new(&queue, 6);
        drop(queue);
        let queue = Queue::open(dir.path(), options).unwrap();
        assert!(!queue.recovery_report().repaired());
    }
}

fn damage_head_slot(dir: &Path, slot: usize) {
    flip(
        &dir.join(HEAD_FILE_NAME),
        HEAD_SLOT_OFFSETS[slot] as usize + 25,
        0x04,
    );
}

/// 10 records, 3 popped under `Always`.
fn queue_with_three_popped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
    push_expected(&queue, 10);
    for _ in 0..3 {
        queue.pop().unwrap().unwrap();
    }
    dir
}

/// An unreadable or missing head index: which records were consumed is unknown, so the head
/// moves to the oldest record on disk: consumed records may come again, none is lost.
#[test]
fn an_unreadable_or_missing_head_index_restarts_at_the_oldest_record() {
    for missing in [false, true] {
        let dir = queue_with_three_popped();
        if missing {
            std::fs::remove_file(dir.path().join(HEAD_FILE_NAME)).unwrap();
        } else {
            damage_head_slot(dir.path(), 0);
            damage_head_slot(dir.path(), 1);
        }
        let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
        let report = queue.recovery_report().clone();
        check_totals(&report);
        let steps: Vec<_> = report.repairs.iter().map(|step| step.action).collect();
        assert_eq!(steps, ["rewrite_head"], "{report:#?}");
        assert_eq!(report.repairs[0].file, dir.path().join(HEAD_FILE_NAME));
        assert_eq!(report.cut_seqs, None);
        assert_eq!(report.quarantined_records, 0);
        assert_eq!(
            report.repairs[0].saved_as.is_some(),
            !missing,
            "the old head index is kept"
        );
        drop(queue);
        second_open_finds_nothing(dir.path(), SyncPolicy::Always, &(0..10).collect::<Vec<_>>());
    }
}

/// What `open` handles on its own (one damaged head slot) is not repaired: nothing is moved.
#[test]
fn one_damaged_head_slot_is_left_to_open() {
    let dir = queue_with_three_popped();
    damage_head_slot(dir.path(), 0);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
    assert!(!queue.recovery_report().repaired());
    assert!(quarantined(dir.path()).is_empty());
    assert!(queue.pop().unwrap().unwrap().seq() <= 3);
}

/// A segment of another format version is not damage: open refuses it and moves nothing.
#[test]
fn a_segment_of_another_version_is_still_refused() {
    let dir = queue_of(3);
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[8] = 9; // version
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();
    match Queue::open(dir.path(), quarantining(SyncPolicy::Never)) {
        Err(Error::UnsupportedVersion { file, .. }) => assert_eq!(file, segment),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(quarantined(dir.path()).is_empty());
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}

/// Damage inside a batch of a sealed segment: a batch is served whole or not at all, so the cut
/// starts at the batch; its readable records, those before the damaged frame included, are
/// saved in quarantine.
#[test]
fn damage_inside_a_sealed_batch_cuts_at_the_batch_and_saves_its_readable_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
        push_expected(&queue, 3);
        let batch: Vec<Vec<u8>> = (3..11).map(payload_for).collect();
        queue.push_batch(&batch).unwrap();
        push_expected(&queue, 200);
    }
    let sealed = segment_files(dir.path())[0].clone();
    let frames = frame_offsets(&sealed);
    let (batch_offset, batch_seq) = frames[3];
    assert_eq!(batch_seq, 3);
    let (offset, _) = frames[8];
    flip(&sealed, offset as usize + 26, 0x40);
    let last_in_segment = frames.last().unwrap().1;

    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    let first = &report.repairs[0];
    assert_eq!(
        (first.action, first.offset),
        ("truncate_tail", batch_offset)
    );
    assert_eq!(first.seqs, Some(3..last_in_segment + 1));
    assert_eq!(first.records_saved, last_in_segment + 1 - 3 - 1);
    assert_eq!(report.cut_seqs, Some(3..211));
    assert_eq!(report.quarantined_records, 211 - 3 - 1);
    assert_eq!(drain_checked(&queue), vec![0, 1, 2]);
    next_push_is_new(&queue, 211);
}

/// A closed queue of 100 records in 4 KiB segments whose first segment's last record is
/// zeroed, with zeros to a page past its end; returns that record's number.
fn queue_with_the_last_record_of_its_first_segment_zeroed() -> (tempfile::TempDir, u64) {
    let dir = queue_of(100);
    let sealed = segment_files(dir.path())[0].clone();
    let (last_offset, last_seq) = *frame_offsets(&sealed).last().unwrap();
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[last_offset as usize..].fill(0);
    bytes.resize(bytes.len().div_ceil(4096) * 4096 + 4096, 0);
    std::fs::write(&sealed, &bytes).unwrap();
    (dir, last_seq)
}

/// Records zeroed in a sealed segment: missing records, cut there.
#[test]
fn zeroed_records_in_a_sealed_segment_are_cut() {
    let (dir, last_seq) = queue_with_the_last_record_of_its_first_segment_zeroed();
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    assert!(report.repaired());
    assert_eq!(report.cut_seqs, Some(last_seq..100));
    assert_eq!(drain_checked(&queue), (0..last_seq).collect::<Vec<_>>());
    next_push_is_new(&queue, 100);
    drop(queue);
    second_open_finds_nothing(dir.path(), SyncPolicy::Never, &[100]);
}

/// A damaged ack-log entry followed by valid ones, one of them written after a sync that
/// covered it (so no power loss tore it): the log is rewritten without it. What the entry said
/// is lost, so records it acknowledged may be delivered again; none is lost.
#[test]
fn a_damaged_ack_log_entry_is_dropped_and_its_records_may_come_again() {
    let dir = tempfile::tempdir().unwrap();
    let options = || quarantining(SyncPolicy::Never);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 100);
        let mut deliveries = queue.try_recv_batch(100).unwrap();
        let first = deliveries.remove(0);
        for (index, delivery) in deliveries.into_iter().rev().enumerate() {
            if index == 50 {
                queue.sync().unwrap();
            }
            delivery.ack().unwrap();
        }
        drop(first);
    }
    let acks = dir
        .path()
        .join(diskspool::format::layout::ACK_LOG_FILE_NAME);
    let bytes = std::fs::read(&acks).unwrap();
    let scan = diskspool::format::acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    let damaged = diskspool::format::acklog::ACK_LOG_HEADER_LEN
        + diskspool::format::acklog::ACK_ENTRY_LEN * (scan.entries as usize / 2 + 10);
    flip(&acks, damaged + 10, 0x01);

    let queue = Queue::open(dir.path(), options()).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    let steps: Vec<_> = report.repairs.iter().map(|step| step.action).collect();
    assert_eq!(steps, ["rewrite_ack_log"], "{report:#?}");
    assert!(report.repairs[0]
        .reason
        .contains(&format!("byte {damaged}")));
    assert_eq!(report.cut_seqs, None);
    // Record 0 was never acknowledged; at most one entry's worth comes again.
    let mut delivered = Vec::new();
    while let Some(delivery) = queue.try_recv().unwrap() {
        delivered.push(delivery.seq());
        delivery.ack().unwrap();
    }
    assert_eq!(delivered.first(), Some(&0));
    assert!(delivered.len() <= 2, "{delivered:?}");
    drop(queue);
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(!queue.recovery_report().repaired());
    assert!(queue.try_recv().unwrap().is_none());
}

/// A damaged settings file is rewritten with the segment size the segments show.
#[test]
fn a_damaged_settings_file_is_rewritten() {
    let dir = queue_of(50);
    let settings = dir
        .path()
        .join(diskspool::format::layout::SETTINGS_FILE_NAME);
    flip(&settings, 12, 0x10);
    assert!(Queue::open(dir.path(), Options::default()).is_err());
    let queue = Queue::open(
        dir.path(),
        Options::default().on_damage(OnDamage::Quarantine),
    )
    .unwrap();
    let report = queue.recovery_report().clone();
    let steps: Vec<_> = report.repairs.iter().map(|step| step.action).collect();
    assert_eq!(steps, ["rewrite_settings"], "{report:#?}");
    assert_eq!(queue.options().get_segment_size(), 4096);
    assert_eq!(drain_checked(&queue), (0..50).collect::<Vec<_>>());
}

/// Under `Refuse` (the default) nothing changes: the damage is reported where it is.
#[test]
fn refuse_is_the_default_and_changes_nothing() {
    assert_eq!(Options::default().get_on_damage(), OnDamage::Refuse);
    let dir = queue_with_three_popped();
    damage_head_slot(dir.path(), 0);
    damage_head_slot(dir.path(), 1);
    assert!(Queue::open(dir.path(), Options::default()).is_err());
    assert!(quarantined(dir.path()).is_empty());
}

/// A damaged ack-log header: the log is started again with the entries that still validate
/// under the log id the header names (the damage here is in the magic bytes, so all of them);
/// the queue opens and no record is lost.
#[test]
fn a_damaged_ack_log_header_is_rewritten_with_the_entries_that_validate() {
    let dir = tempfile::tempdir().unwrap();
    let options = || quarantining(SyncPolicy::Always);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 20);
        let mut deliveries = queue.try_recv_batch(20).unwrap();
        let first = deliveries.remove(0);
        for delivery in deliveries.into_iter().skip(5) {
            delivery.ack().unwrap();
        }
        drop(first);
    }
    let acks = dir
        .path()
        .join(diskspool::format::layout::ACK_LOG_FILE_NAME);
    flip(&acks, 2, 0x01); // the magic bytes
    assert!(Queue::open(dir.path(), Options::default()).is_err());
    let queue = Queue::open(dir.path(), options()).unwrap();
    let report = queue.recovery_report().clone();
    let steps: Vec<_> = report.repairs.iter().map(|step| step.action).collect();
    assert_eq!(steps, ["rewrite_ack_log"], "{report:#?}");
    assert!(
        report.repairs[0].reason.contains("bad magic"),
        "{report:#?}"
    );
    // Records 6..20 were acknowledged, and the entries saying so survived.
    let mut delivered = Vec::new();
    while let Some(delivery) = queue.try_recv().unwrap() {
        delivered.push(delivery.seq());
        delivery.ack().unwrap();
    }
    assert_eq!(delivered, (0..6).collect::<Vec<_>>());
    drop(queue);
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(!queue.recovery_report().repaired());
}

/// Damage after an earlier repair: the numbers that repair retired are a gap on purpose, and
/// the records after it (pushed since) are kept.
#[test]
fn a_second_repair_keeps_the_records_after_an_earlier_repairs_gap() {
    let dir = queue_of(200);
    let segments = segment_files(dir.path());
    let (offset, damaged_seq) = frame_offsets(&segments[1])[2];
    flip(&segments[1], offset as usize + 20, 0x01);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.recovery_report().cut_seqs, Some(damaged_seq..200));
    push_expected(&queue, 50);
    queue.close().unwrap();
    // Damage to the head index now: the repair rewrites it, and cuts nothing at the gap.
    let head = dir.path().join(HEAD_FILE_NAME);
    damage_head_slot(dir.path(), 0);
    damage_head_slot(dir.path(), 1);
    assert!(head.exists());
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    let report = queue.recovery_report().clone();
    assert_eq!(report.cut_seqs, None, "{report:#?}");
    let mut seqs = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        assert_eq!(record.payload(), payload_for(record.seq()));
        seqs.push(record.seq());
    }
    let expected: Vec<u64> = (0..damaged_seq).chain(200..250).collect();
    assert_eq!(seqs, expected);
}

/// Damage in the first record of the segment that follows an earlier repair's gap: nothing of
/// that segment is left, so it moves whole (an empty segment there would read as missing
/// records between the two retired ranges), and the queue opens with every record before it.
#[test]
fn damage_right_after_an_earlier_repairs_gap_moves_the_segment_whole() {
    let dir = queue_of(200);
    let segments = segment_files(dir.path());
    let (offset, damaged_seq) = frame_offsets(&segments[1])[2];
    flip(&segments[1], offset as usize + 20, 0x01);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.recovery_report().cut_seqs, Some(damaged_seq..200));
    queue.close().unwrap();
    // Under `Always` a clean close records that the new records were synced: damage to them
    // is damage, not an unsynced write.
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Always)).unwrap();
    push_expected(&queue, 3);
    queue.close().unwrap();
    let after_gap = dir
        .path()
        .join(diskspool::format::layout::segment_file_name(200));
    let (first, seq) = frame_offsets(&after_gap)[0];
    assert_eq!(seq, 200);
    flip(&after_gap, first as usize + 20, 0x01);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    let report = queue.recovery_report().clone();
    check_totals(&report);
    assert_eq!(report.repairs[0].action, "quarantine", "{report:#?}");
    assert_eq!(report.repairs[0].file, after_gap);
    assert_eq!(report.repairs[0].records_saved, 2, "records 201 and 202");
    assert_eq!(report.cut_seqs, Some(200..203));
    let kept: Vec<u64> = (0..damaged_seq).collect();
    assert_eq!(drain_checked(&queue), kept);
    next_push_is_new(&queue, 203);
    drop(queue);
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    assert!(!queue.recovery_report().repaired());
}

/// The numbers a repair retired are no records: `len` leaves them out before the reader reaches
/// them (the ack log says so) and after it crossed them (while the head is still before them).
#[test]
fn the_length_leaves_out_retired_numbers_after_the_reader_crossed_them() {
    let dir = queue_of(200);
    let segments = segment_files(dir.path());
    let frames = frame_offsets(&segments[1]);
    let (offset, damaged_seq) = frames[frames.len() / 2];
    flip(&segments[1], offset as usize + 20, 0x01);

    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.recovery_report().cut_seqs, Some(damaged_seq..200));
    for seq in 0..3 {
        queue.push(format!("after {seq}").as_bytes()).unwrap();
    }
    let expected = damaged_seq + 3;
    assert_eq!(queue.len(), expected, "before the reader crosses the gap");
    // Lease everything (the reader crosses the retired gap) and keep the first lease, so that
    // the head stays before the gap; release the others.
    let mut deliveries = queue.try_recv_batch(1000).unwrap();
    assert_eq!(deliveries.len() as u64, expected);
    let first = deliveries.remove(0);
    drop(deliveries);
    assert_eq!(queue.len(), expected, "after the reader crossed the gap");
    first.nack().unwrap();
    let drained = std::iter::from_fn(|| queue.pop().unwrap()).count() as u64;
    assert_eq!(drained, expected);
    assert_eq!(queue.len(), 0);
}

/// The head recorded right after the last record of a sealed segment that a self-healing open
/// cut (zeros follow it to the page's end): the next open finds the head there, as the readers
/// find the segment's end. Before, it refused the queue as damaged ("checksum mismatch while
/// locating the head"), under `OnDamage::Quarantine` too, once a consumer had popped exactly
/// the records before the cut and closed the queue.
#[test]
fn a_head_right_after_the_records_a_repair_kept_in_a_sealed_segment_reopens() {
    let (dir, last_seq) = queue_with_the_last_record_of_its_first_segment_zeroed();
    {
        let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
        for seq in 0..last_seq {
            assert_eq!(queue.pop().unwrap().unwrap().seq(), seq);
        }
        next_push_is_new(&queue, 100);
    }
    let queue = Queue::open(dir.path(), quarantining(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().seq(), 100);
}
