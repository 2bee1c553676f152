//! Consumed segments are deleted, automatically and on demand; live ones never.

use diskspool::{Queue, SyncPolicy};

use crate::util::{drain_checked, push_expected, segment_files, small_segments};

fn files_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_drained_queue_keeps_only_the_active_segment_head_settings_and_lock() {
    for policy in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), small_segments(policy)).unwrap();
        push_expected(&queue, 300);
        assert!(segment_files(dir.path()).len() > 10);
        drain_checked(&queue);
        let names = files_in(dir.path());
        assert_eq!(names.len(), 4, "{policy:?}: {names:?}");
        for name in ["head", "lock", "settings"] {
            assert!(names.contains(&name.to_string()), "{policy:?}: {names:?}");
        }
        assert_eq!(queue.stats().unwrap().segments, 1);
    }
}

#[test]
fn manual_compaction_frees_consumed_segments_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_segments(SyncPolicy::Never).auto_compact(false);
    let queue = Queue::open(dir.path(), options).unwrap();
    push_expected(&queue, 300);
    let before = segment_files(dir.path());
    let sizes: Vec<u64> = before
        .iter()
        .map(|path| path.metadata().unwrap().len())
        .collect();
    for _ in 0..150 {
        queue.pop().unwrap().unwrap();
    }
    assert_eq!(
        segment_files(dir.path()),
        before,
        "no automatic compaction when off"
    );
    let report = queue.compact().unwrap();
    let after = segment_files(dir.path());
    assert!(report.segments_removed > 0);
    assert_eq!(after.len() + report.segments_removed, before.len());
    let freed: u64 = before
        .iter()
        .zip(&sizes)
        .filter(|(path, _)| !after.contains(path))
        .map(|(_, size)| size)
        .sum();
    assert_eq!(report.bytes_freed, freed);
    // Only segments wholly behind the head went: the oldest remaining one holds record 150.
    let first_kept = crate::util::frame_offsets(&after[0]);
    assert!(first_kept.first().unwrap().1 <= 150 && first_kept.last().unwrap().1 >= 150);
    // Every remaining record is still served.
    let rest = drain_checked(&queue);
    assert_eq!(rest, (150..300).collect::<Vec<_>>());
    assert_eq!(queue.compact().unwrap().segments_removed, after.len() - 1);
}

#[test]
fn compaction_at_open_removes_segments_a_crash_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    {
        let options = small_segments(SyncPolicy::Never).auto_compact(false);
        let queue = Queue::open(dir.path(), options).unwrap();
        push_expected(&queue, 300);
        drain_checked(&queue);
        queue.sync().unwrap();
        assert!(segment_files(dir.path()).len() > 10);
    }
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1);
    assert!(queue.is_empty());
}

#[test]
fn compaction_leaves_a_foreign_file_with_a_segment_name_for_repair() {
    // Found by the CLI's tests: the compactor deleted a file it had never validated.
    let dir = tempfile::tempdir().unwrap();
    {
        let options = small_segments(SyncPolicy::Never).auto_compact(false);
        let queue = Queue::open(dir.path(), options).unwrap();
        push_expected(&queue, 300);
        for _ in 0..200 {
            queue.pop().unwrap().unwrap();
        }
    }
    let segments = segment_files(dir.path());
    let first_base = diskspool::format::layout::parse_segment_file_name(
        segments[0].file_name().unwrap().to_str().unwrap(),
    )
    .unwrap();
    let foreign = dir
        .path()
        .join(diskspool::format::layout::segment_file_name(first_base + 1));
    std::fs::write(&foreign, b"not a segment").unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    assert!(!segments[0].exists(), "a consumed segment is deleted");
    assert!(
        foreign.exists(),
        "a file that is not a valid segment is kept"
    );
    assert_eq!(drain_checked(&queue), (200..300).collect::<Vec<_>>());
}

/// A consumer that receives and acknowledges (one at a time, in batches, or out of order within
/// a batch) frees the segments behind it as it goes, as a popping one does. Before, only an
/// ack that moved the head across a segment boundary in memory compacted, which receiving and
/// acknowledging in order never does: such a consumer never freed a byte.
#[test]
fn a_consumer_that_receives_and_acknowledges_frees_the_segments_behind_it() {
    for (exclusive, batch) in [(true, 1), (false, 1), (true, 7), (false, 7)] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segments(SyncPolicy::Never).exclusive(exclusive);
        let queue = Queue::open(dir.path(), options).unwrap();
        push_expected(&queue, 3000);
        let written = segment_files(dir.path()).len();
        assert!(written > 60, "{written} segments");
        let mut most = 0;
        let mut next = 0;
        while next < 3000 {
            let mut deliveries = queue.try_recv_batch(batch).unwrap();
            assert!(!deliveries.is_empty());
            // The last of each batch first: out of order within the batch.
            deliveries.reverse();
            for delivery in deliveries {
                let seq = delivery.seq();
                assert_eq!(delivery.payload(), crate::util::payload_for(seq));
                delivery.ack().unwrap();
            }
            next += batch as u64;
            let left = segment_files(dir.path()).len();
            let consumed_segments = written * next.min(3000) as usize / 3000;
            // Within two segments of what is left (rounding, the segment being read).
            assert!(
                left <= written - consumed_segments + 2,
                "exclusive {exclusive}, batch {batch}: {left} of {written} segments left \
                 after {next} records"
            );
            most = most.max(left);
        }
        assert!(queue.try_recv().unwrap().is_none());
        assert!(segment_files(dir.path()).len() <= 2, "{most}");
    }
}
