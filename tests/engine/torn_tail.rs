//! A torn or zeroed tail of the active segment recovers to the last whole record.

use diskspool::format::frame::FRAME_HEADER_LEN;
use diskspool::{Queue, SyncPolicy};

use crate::util::{
    copy_queue, drain_checked, frame_offsets, payload_for, push_expected, segment_files,
};

const RECORDS: u64 = 6;

fn options() -> diskspool::Options {
    diskspool::Options::default().sync(SyncPolicy::Never)
}

/// A closed queue with `RECORDS` records in one segment; returns the dir and the segment path.
/// All but the last are synced, so that damage to them is damage, not writes a power loss
/// lost; the last one is not, so that a crash may have torn it.
fn queue_with_records() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, RECORDS - 1);
        queue.sync().unwrap();
        push_expected(&queue, 1);
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    (dir, segment)
}

#[test]
fn last_frame_cut_at_every_byte_recovers_to_the_last_whole_record() {
    let (dir, segment) = queue_with_records();
    let full = std::fs::read(&segment).unwrap();
    let last_offset = frame_offsets(&segment).last().unwrap().0 as usize;
    let last_payload_end = last_offset + FRAME_HEADER_LEN + payload_for(RECORDS - 1).len();
    for cut in last_offset..full.len() {
        let copy = copy_queue(dir.path());
        let copied_segment = copy.path().join(segment.file_name().unwrap());
        std::fs::write(&copied_segment, &full[..cut]).unwrap();
        let queue = Queue::open(copy.path(), options()).unwrap();
        let whole = cut >= last_payload_end;
        let report = queue.recovery_report();
        if whole || cut == last_offset {
            assert!(
                report.truncated.is_empty(),
                "cut {cut}: nothing to truncate"
            );
        } else {
            assert_eq!(report.truncated.len(), 1, "cut {cut}");
            assert_eq!(report.truncated[0].offset, last_offset as u64);
            assert_eq!(report.truncated[0].first_lost_seq, RECORDS - 1);
        }
        let expected = if whole { RECORDS } else { RECORDS - 1 };
        assert_eq!(queue.len(), expected, "cut {cut}");
        // The queue keeps working: the next push continues right after the last whole record.
        assert_eq!(queue.push(&payload_for(expected)).unwrap(), expected);
        assert_eq!(
            drain_checked(&queue),
            (0..=expected).collect::<Vec<_>>(),
            "cut {cut}"
        );
    }
}

#[test]
fn zeroed_tail_after_the_last_record_is_cut_and_nothing_is_lost() {
    let (dir, segment) = queue_with_records();
    let mut bytes = std::fs::read(&segment).unwrap();
    let len = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 8192]);
    std::fs::write(&segment, &bytes).unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    let report = queue.recovery_report();
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(report.truncated[0].offset, len);
    assert_eq!(report.truncated[0].bytes_cut, 8192);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), len);
    assert_eq!(drain_checked(&queue), (0..RECORDS).collect::<Vec<_>>());
}

#[test]
fn a_cut_or_zeroed_synced_record_is_refused_not_dropped() {
    let (dir, segment) = queue_with_records();
    let full = std::fs::read(&segment).unwrap();
    let (offset, _) = frame_offsets(&segment)[RECORDS as usize - 2];
    let mut zeroed = full.clone();
    zeroed[offset as usize..].fill(0);
    for bytes in [
        &full[..offset as usize + 5],
        &full[..offset as usize],
        &zeroed[..],
    ] {
        std::fs::write(&segment, bytes).unwrap();
        match Queue::open(dir.path(), options()) {
            Err(diskspool::Error::Corrupt {
                file,
                offset: at,
                detail,
            }) => {
                assert_eq!(file, segment);
                assert_eq!(at, offset);
                assert!(detail.contains("are missing or damaged"), "{detail}");
            }
            Err(other) => panic!("expected Corrupt, got {other}"),
            Ok(queue) => panic!("open succeeded with {} records", queue.len()),
        }
        assert_eq!(
            std::fs::read(&segment).unwrap(),
            bytes,
            "open changed the file"
        );
    }
}

#[test]
fn zeroed_last_frame_is_dropped() {
    let (dir, segment) = queue_with_records();
    let mut bytes = std::fs::read(&segment).unwrap();
    let last_offset = frame_offsets(&segment).last().unwrap().0 as usize;
    bytes[last_offset..].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert_eq!(drain_checked(&queue), (0..RECORDS - 1).collect::<Vec<_>>());
}

#[test]
fn damage_followed_by_valid_records_is_not_mistaken_for_a_torn_tail() {
    let (dir, segment) = queue_with_records();
    let mut bytes = std::fs::read(&segment).unwrap();
    let (offset, _) = frame_offsets(&segment)[2];
    bytes[offset as usize + FRAME_HEADER_LEN - 1] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    match Queue::open(dir.path(), options()) {
        Err(diskspool::Error::Corrupt {
            file, offset: at, ..
        }) => {
            assert_eq!(file, segment);
            assert_eq!(at, offset);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Refusing to open must not have cut anything.
    assert_eq!(std::fs::read(&segment).unwrap(), bytes);
}
