//! What a queue holds survives closing and reopening; sequence numbers are never reused.

use std::time::{Duration, SystemTime};

use diskspool::{Queue, SyncPolicy};

use crate::util::{drain_checked, payload_for, push_expected, small_segments};

#[test]
fn records_survive_reopen_under_every_policy() {
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Interval(Duration::from_millis(5)),
        SyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        {
            let queue = Queue::open(dir.path(), small_segments(policy)).unwrap();
            push_expected(&queue, 150);
            for seq in 0..40 {
                assert_eq!(queue.pop().unwrap().unwrap().seq(), seq);
            }
        }
        let queue = Queue::open(dir.path(), small_segments(policy)).unwrap();
        assert_eq!(queue.len(), 110, "{policy:?}");
        assert_eq!(
            drain_checked(&queue),
            (40..150).collect::<Vec<_>>(),
            "{policy:?}"
        );
    }
}

#[test]
fn sequence_numbers_continue_after_a_drained_queue_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 300);
        drain_checked(&queue);
    }
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    assert!(queue.is_empty());
    assert_eq!(queue.push(&payload_for(300)).unwrap(), 300);
}

#[test]
fn reopening_with_other_options_reads_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 100);
    }
    // Bigger segments and a smaller record limit: existing records are still read whole.
    let options = diskspool::Options::default()
        .segment_size(1 << 20)
        .max_record_size(10)
        .sync(SyncPolicy::Always);
    let queue = Queue::open(dir.path(), options).unwrap();
    assert_eq!(drain_checked(&queue), (0..100).collect::<Vec<_>>());
}

#[test]
fn stats_describe_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let before = SystemTime::now();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    let empty = queue.stats().unwrap();
    assert_eq!((empty.len, empty.head_seq, empty.next_seq), (0, 0, 0));
    assert_eq!(empty.oldest_enqueued_at, None);
    assert_eq!(empty.live_bytes, 0);
    push_expected(&queue, 100);
    queue.pop().unwrap();
    let stats = queue.stats().unwrap();
    assert_eq!((stats.len, stats.head_seq, stats.next_seq), (99, 1, 100));
    let live: u64 = (1..100)
        .map(|seq| diskspool::format::frame::frame_len(payload_for(seq).len()) as u64)
        .sum();
    assert_eq!(stats.live_bytes, live);
    assert!(stats.segments > 1);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name() != diskspool::format::layout::LOCK_FILE_NAME)
        .map(|entry| entry.metadata().unwrap().len())
        .sum();
    assert_eq!(stats.disk_bytes, on_disk);
    let oldest = stats.oldest_enqueued_at.unwrap();
    // The coarse clock (the default) is the time of the latest kernel tick: up to 10 ms early.
    assert!(oldest >= before - Duration::from_millis(20) && oldest <= SystemTime::now());
}

#[test]
fn enqueue_times_follow_the_clock_at_its_resolution() {
    for precise in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segments(SyncPolicy::Never).precise_timestamps(precise);
        let queue = Queue::open(dir.path(), options).unwrap();
        let mut previous = 0;
        for _ in 0..3 {
            let before = SystemTime::now();
            queue.push(b"timed").unwrap();
            let after = SystemTime::now();
            let record = queue.pop().unwrap().unwrap();
            // The precise clock brackets the push (to the microsecond it is cut to); the coarse
            // one may be a tick (1-10 ms) early.
            let early = Duration::from_micros(if precise { 1 } else { 20_000 });
            let enqueued = record.enqueued_at();
            assert!(
                enqueued >= before - early && enqueued <= after,
                "precise: {precise}"
            );
            assert!(record.enqueued_at_us() >= previous, "never backwards");
            previous = record.enqueued_at_us();
            std::thread::sleep(Duration::from_millis(15));
        }
        if precise {
            // Microseconds, not ticks: pushes 200 µs apart, 4 ms in all, get 20 different
            // times, where a clock that moves once per kernel tick (1-10 ms) gives a handful.
            for _ in 0..20 {
                queue.push(b"tick").unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
            let mut times: Vec<u64> = std::iter::from_fn(|| queue.pop().unwrap())
                .map(|record| record.enqueued_at_us())
                .collect();
            times.dedup();
            assert_eq!(times.len(), 20, "{times:?}");
        }
    }
}
