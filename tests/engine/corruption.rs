//! Damage in a sealed segment or the head index is reported, never skipped or served.

use diskspool::format::head::HEAD_SLOT_OFFSETS;

use diskspool::format::layout::HEAD_FILE_NAME;
use diskspool::{Error, Options, Queue, SyncPolicy};

use crate::util::{frame_offsets, payload_for, push_expected, segment_files, small_segments};

#[test]
fn flipped_byte_in_a_sealed_segment_is_corrupt_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 200);
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() > 3);
    let damaged = &segments[1];
    let frames = frame_offsets(damaged);
    let (offset, damaged_seq) = frames[frames.len() / 2];
    let mut bytes = std::fs::read(damaged).unwrap();
    bytes[offset as usize + 20] ^= 0x01; // inside the enqueue time
    std::fs::write(damaged, &bytes).unwrap();

    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    for seq in 0..damaged_seq {
        let record = queue.pop().unwrap().unwrap();
        assert_eq!(record.seq(), seq);
        assert_eq!(record.payload(), payload_for(seq));
    }
    for _ in 0..2 {
        match queue.pop() {
            Err(Error::Corrupt {
                file, offset: at, ..
            }) => {
                assert_eq!(&file, damaged);
                assert_eq!(at, offset);
            }
            other => panic!("expected Corrupt at {offset}, got {other:?}"),
        }
    }
    assert!(
        matches!(queue.peek(), Err(Error::Corrupt { .. })),
        "peek must not skip it either"
    );
    // pop_batch hands out the good records before damage, then reports it.
    drop(queue);
}

#[test]
fn pop_batch_stops_before_damage() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 100);
    }
    let first = &segment_files(dir.path())[0];
    let (offset, damaged_seq) = frame_offsets(first)[3];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[offset as usize + 9] ^= 0xFF; // inside the sequence number
    std::fs::write(first, &bytes).unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    let records = queue.pop_batch(50).unwrap();
    assert_eq!(records.len() as u64, damaged_seq);
    assert!(matches!(queue.pop_batch(50), Err(Error::Corrupt { .. })));
}

#[test]
fn missing_segment_in_the_middle_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 200);
    }
    let segments = segment_files(dir.path());
    std::fs::remove_file(&segments[2]).unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    let last_good = frame_offsets(&segments[1]).last().unwrap().1;
    let mut popped = 0;
    let error = loop {
        match queue.pop() {
            Ok(Some(_)) => popped += 1,
            Ok(None) => panic!("reached the end: records were skipped"),
            Err(error) => break error,
        }
    };
    assert_eq!(popped, last_good + 1);
    assert!(matches!(error, Error::Corrupt { ref detail, .. } if detail.contains("missing")));
}

/// Pushes records 0–5 of 64 bytes under the default `SyncPolicy::Always` (popping one after the
/// third if `pop_between`), closes the queue, flips a byte inside record 4's frame (valid record
/// 5 follows) and reopens: the records were synced and acknowledged, so this is damage, and
/// `open` refuses with `Error::Corrupt` naming the frame, and changes nothing on disk.
fn damage_before_a_synced_record_is_refused(pop_between: bool) {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), Options::default()).unwrap();
        for seq in 0..6u64 {
            if pop_between && seq == 3 {
                assert_eq!(queue.pop().unwrap().unwrap().seq(), 0);
            }
            assert_eq!(queue.push(&[seq as u8; 64]).unwrap(), seq);
        }
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let (offset, seq) = frame_offsets(&segment)[4];
    assert_eq!(seq, 4);
    let mut bytes = std::fs::read(&segment).unwrap();
    assert_eq!(bytes.len(), 560);
    bytes[offset as usize + 30] ^= 0x01; // inside the payload
    std::fs::write(&segment, &bytes).unwrap();
    let head_before = std::fs::read(dir.path().join(HEAD_FILE_NAME)).unwrap();
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Corrupt {
            file, offset: at, ..
        }) => {
            assert_eq!(file, segment);
            assert_eq!(at, offset);
        }
        Ok(queue) => panic!(
            "open accepted damage to synced records: len {}, {:?}",
            queue.len(),
            queue.recovery_report()
        ),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "nothing is cut");
    assert_eq!(
        std::fs::read(dir.path().join(HEAD_FILE_NAME)).unwrap(),
        head_before
    );
}

#[test]
fn damage_before_a_synced_record_is_refused_under_always() {
    damage_before_a_synced_record_is_refused(false);
}

#[test]
fn damage_before_a_synced_record_is_refused_under_always_after_a_pop() {
    damage_before_a_synced_record_is_refused(true);
}

fn damage_head(dir: &std::path::Path, slot: usize) {
    let path = dir.join(HEAD_FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[HEAD_SLOT_OFFSETS[slot] as usize + 25] ^= 0x04;
    std::fs::write(&path, bytes).unwrap();
}

/// A queue with 10 records of which 3 were popped under `Always`: the two head slots hold the
/// heads after the second and the third pop.
fn queue_with_three_popped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
    push_expected(&queue, 10);
    for _ in 0..3 {
        queue.pop().unwrap().unwrap();
    }
    dir
}

fn newest_slot(dir: &std::path::Path) -> usize {
    let bytes = std::fs::read(dir.join(HEAD_FILE_NAME)).unwrap();
    diskspool::format::head::decode_head_file(&bytes)
        .current
        .unwrap()
}

#[test]
fn damaged_newest_head_slot_falls_back_to_the_previous_one() {
    let dir = queue_with_three_popped();
    damage_head(dir.path(), newest_slot(dir.path()));
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
    // The previous durable head: one record comes back, never a restart from zero.
    assert_eq!(queue.pop().unwrap().unwrap().seq(), 2);
}

#[test]
fn damaged_older_head_slot_changes_nothing() {
    let dir = queue_with_three_popped();
    damage_head(dir.path(), 1 - newest_slot(dir.path()));
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().seq(), 3);
}

#[test]
fn both_head_slots_damaged_is_an_error_naming_the_head_file() {
    let dir = queue_with_three_popped();
    damage_head(dir.path(), 0);
    damage_head(dir.path(), 1);
    match Queue::open(dir.path(), small_segments(SyncPolicy::Always)) {
        Err(Error::Corrupt { file, .. }) => assert_eq!(file, dir.path().join(HEAD_FILE_NAME)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn missing_head_with_segments_present_is_an_error() {
    let dir = queue_with_three_popped();
    std::fs::remove_file(dir.path().join(HEAD_FILE_NAME)).unwrap();
    assert!(matches!(
        Queue::open(dir.path(), small_segments(SyncPolicy::Always)),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn segment_header_of_another_version_is_named() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 3);
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[8] = 9; // version
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment, &bytes).unwrap();
    match Queue::open(dir.path(), small_segments(SyncPolicy::Never)) {
        Err(Error::UnsupportedVersion {
            file,
            found: 9,
            supported: 3,
        }) => assert_eq!(file, segment),
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// Zeros after the last record of a sealed segment (to a 4 KiB boundary) hide nothing: the next
/// segment starts right after that record. `pop`, `verify` and `dump` agree that nothing is
/// wrong. Zeros where records were are missing records for all of them.
#[test]
fn free_space_after_a_sealed_segments_records_is_its_end_for_every_reader() {
    use diskspool::storage::OsStorage;
    for zero_records in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
            push_expected(&queue, 100);
        }
        let sealed = segment_files(dir.path())[0].clone();
        let mut bytes = std::fs::read(&sealed).unwrap();
        let frames = frame_offsets(&sealed);
        let (last_offset, last_seq) = *frames.last().unwrap();
        if zero_records {
            bytes[last_offset as usize..].fill(0);
        }
        bytes.resize(
            bytes.len().div_ceil(4096) * 4096 + 4096 * usize::from(zero_records),
            0,
        );
        std::fs::write(&sealed, &bytes).unwrap();

        let report = diskspool::tools::verify::verify(&OsStorage, dir.path()).unwrap();
        let dumped: Vec<u64> = diskspool::tools::inspect::records(&OsStorage, dir.path(), None)
            .unwrap()
            .map_while(|record| record.ok().map(|record| record.seq))
            .collect();
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
        let mut popped = Vec::new();
        let outcome = loop {
            match queue.pop() {
                Ok(Some(record)) => popped.push(record.seq()),
                Ok(None) => break Ok(()),
                Err(error) => break Err(error),
            }
        };
        if zero_records {
            assert!(!report.is_clean(), "{report:?}");
            assert_eq!(popped, (0..last_seq).collect::<Vec<_>>());
            assert_eq!(dumped, popped);
            match outcome {
                Err(Error::Corrupt { detail, .. }) => {
                    assert!(detail.contains("missing"), "{detail}")
                }
                other => panic!("expected missing records, got {other:?}"),
            }
        } else {
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(popped, (0..100).collect::<Vec<_>>());
            assert_eq!(dumped, popped);
            outcome.unwrap();
        }
    }
}

/// Damage inside a batch of a sealed segment: the batch was synced whole, so `pop` serves its
/// frames up to the damaged one, and the lock-free readers (`spool dump`) show the same records
/// before reporting the same file and offset.
#[test]
fn pop_and_dump_serve_the_same_records_before_damage_inside_a_sealed_batch() {
    use diskspool::storage::OsStorage;
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
        let batch: Vec<Vec<u8>> = (0..8).map(payload_for).collect();
        queue.push_batch(&batch).unwrap();
        push_expected(&queue, 200);
    }
    let sealed = segment_files(dir.path())[0].clone();
    let (offset, damaged_seq) = frame_offsets(&sealed)[5];
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[offset as usize + 26] ^= 0x40;
    std::fs::write(&sealed, &bytes).unwrap();

    let mut dumped = Vec::new();
    let mut dump_error = None;
    for record in diskspool::tools::inspect::records(&OsStorage, dir.path(), None).unwrap() {
        match record {
            Ok(record) => dumped.push(record.seq),
            Err(error) => {
                dump_error = Some(error);
                break;
            }
        }
    }
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
    let mut popped = Vec::new();
    let pop_error = loop {
        match queue.pop() {
            Ok(Some(record)) => popped.push(record.seq()),
            Ok(None) => panic!("the damage was skipped"),
            Err(error) => break error,
        }
    };
    assert_eq!(popped, (0..damaged_seq).collect::<Vec<_>>());
    assert_eq!(dumped, popped, "{dump_error:?}");
    for error in [pop_error, dump_error.expect("dump stops at the damage")] {
        match error {
            Error::Corrupt {
                file, offset: at, ..
            } => assert_eq!((file, at), (sealed.clone(), offset)),
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

/// A sealed segment cut inside its last frame's zero padding still holds every record: `pop`
/// and the lock-free readers both serve them all and go on into the next segment.
#[test]
fn a_sealed_segment_cut_inside_its_padding_is_read_alike_by_pop_and_dump() {
    use diskspool::storage::OsStorage;
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
        push_expected(&queue, 100);
    }
    let sealed = segment_files(dir.path())[0].clone();
    let bytes = std::fs::read(&sealed).unwrap();
    let (last_offset, last_seq) = *frame_offsets(&sealed).last().unwrap();
    let unpadded = last_offset as usize
        + diskspool::format::frame::FRAME_HEADER_LEN
        + payload_for(last_seq).len();
    assert!(unpadded < bytes.len(), "pick a record with padding");
    std::fs::write(&sealed, &bytes[..unpadded]).unwrap();
    let dumped: Vec<u64> = diskspool::tools::inspect::records(&OsStorage, dir.path(), None)
        .unwrap()
        .map(|record| record.unwrap().seq)
        .collect();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Always)).unwrap();
    let mut popped = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        popped.push(record.seq());
    }
    assert_eq!(popped, (0..100).collect::<Vec<_>>());
    assert_eq!(dumped, popped);
}

#[test]
fn stats_counts_the_delayed_records_ahead_of_damage_behind_the_head_in_a_sealed_segment() {
    // The head is past a sealed segment's damaged frame: the records behind it are consumed,
    // and counting the delayed records ahead of the head must not read the segment from its
    // start as if the damage ended it.
    for exclusive in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segments(SyncPolicy::Never).exclusive(exclusive);
        {
            let queue = Queue::open(dir.path(), options.clone()).unwrap();
            // Plain records first, then every third one delayed by an hour.
            for seq in 0..60u64 {
                let payload = payload_for(seq);
                let pushed = match seq > 6 && seq % 3 == 0 {
                    true => queue
                        .push_delayed(&payload, std::time::Duration::from_secs(3600))
                        .unwrap(),
                    false => queue.push(&payload).unwrap(),
                };
                assert_eq!(pushed, seq);
            }
            let segments = segment_files(dir.path());
            assert!(segments.len() > 2, "{segments:?}");
            let in_first = frame_offsets(&segments[0]).len() as u64;
            assert!(in_first > 9, "{in_first} records in the first segment");
            for seq in 0..5 {
                assert_eq!(queue.pop().unwrap().unwrap().seq(), seq);
            }
            // A retry time in the ack log too (counted as delayed from there).
            let delivery = queue.try_recv().unwrap().unwrap();
            assert_eq!(delivery.seq(), 5);
            delivery
                .retry_after(std::time::Duration::from_secs(3600))
                .unwrap();
            queue.sync().unwrap();
        }
        let damaged = &segment_files(dir.path())[0];
        let frames = frame_offsets(damaged);
        // The frame of record 1, header and all.
        let (offset, _) = frames[1];
        let mut bytes = std::fs::read(damaged).unwrap();
        bytes[offset as usize..offset as usize + 40].fill(0xA5);
        std::fs::write(damaged, &bytes).unwrap();
        let queue = Queue::open(dir.path(), options).unwrap();
        let stats = queue.stats().unwrap();
        // Records 5..60 left; delayed: every third from 9 on (17), and record 5's retry.
        assert_eq!(
            (stats.head_seq, stats.len, stats.delayed),
            (5, 55, 18),
            "exclusive {exclusive}: {stats:?}"
        );
    }
}
