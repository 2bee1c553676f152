//! push_batch is atomic; pop_batch returns records in order.

use diskspool::{Error, Queue, SyncPolicy};

use crate::util::{copy_queue, payload_for, segment_files, small_segments};

#[test]
fn batch_gets_consecutive_sequence_numbers_and_pops_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    queue.push(b"first").unwrap();
    let range = queue.push_batch((1..=10).map(payload_for)).unwrap();
    assert_eq!(range, 1..11);
    let records = queue.pop_batch(100).unwrap();
    assert_eq!(records.len(), 11);
    for (record, seq) in records.iter().skip(1).zip(1..) {
        assert_eq!(record.seq(), seq);
        assert_eq!(record.payload(), payload_for(seq));
    }
}

#[test]
fn empty_batch_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.push_batch(Vec::<Vec<u8>>::new()).unwrap(), 0..0);
    assert!(queue.is_empty());
}

#[test]
fn a_batch_cut_anywhere_by_a_crash_is_all_or_nothing() {
    // A torn write of a batch leaves a prefix of its frames on disk; recovery must drop the
    // whole batch, never hand out part of it.
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        queue.push(b"before").unwrap();
        queue.push_batch((1..=5).map(payload_for)).unwrap();
    }
    let segment = segment_files(dir.path()).pop().unwrap();
    let full = std::fs::read(&segment).unwrap();
    let offsets = crate::util::frame_offsets(&segment);
    let batch_start = offsets[1].0 as usize;
    let last_payload_end =
        offsets[5].0 as usize + diskspool::format::frame::FRAME_HEADER_LEN + payload_for(5).len();
    for cut in batch_start..full.len() {
        let copy = copy_queue(dir.path());
        let name = segment.file_name().unwrap();
        std::fs::write(copy.path().join(name), &full[..cut]).unwrap();
        let queue = Queue::open(copy.path(), small_segments(SyncPolicy::Never)).unwrap();
        let records = queue.pop_batch(100).unwrap();
        // Only a cut inside the last frame's padding (not checksummed) leaves the whole batch.
        let expected = if cut >= last_payload_end { 6 } else { 1 };
        assert_eq!(records.len(), expected, "cut at {cut}");
        assert_eq!(records[0].payload(), b"before");
    }
}

#[test]
fn batch_larger_than_a_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    let big = vec![vec![7u8; 1000]; 5];
    assert!(matches!(
        queue.push_batch(&big),
        Err(Error::BatchTooLarge { .. })
    ));
    assert!(queue.is_empty(), "nothing of a refused batch is pushed");
}
