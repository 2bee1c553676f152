//! A queue keeps a file descriptor for its active segment only: unread segments, however many,
//! hold none, so that a long queue never runs into the process's limit on open files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::{mapped_segment_files, open_segment_files, payload_for, segment_files};

/// Set in the child process of [`more_segments_than_the_process_may_open_files`].
const CHILD_ENV: &str = "DISKSPOOL_OPEN_FILES_CHILD";

fn options(exclusive: bool) -> Options {
    Options::default()
        .exclusive(exclusive)
        .sync(SyncPolicy::Never)
        .segment_size(4096)
}

/// Pushes `delayed` records delayed by an hour, then `count` records with `payload_for`
/// payloads; returns the sequence numbers of the latter.
fn fill(queue: &Queue, delayed: u64, count: u64) -> std::ops::Range<u64> {
    for _ in 0..delayed {
        queue
            .push_delayed(b"an hour later", Duration::from_secs(3600))
            .unwrap();
    }
    let first = queue.stats().unwrap().next_seq;
    for seq in first..first + count {
        assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
    }
    first..first + count
}

/// Pops `count` records and checks they are `range`'s next ones, bytes and all.
fn pop_checked(queue: &Queue, range: &mut std::ops::Range<u64>, count: u64) {
    for _ in 0..count {
        let seq = range.next().expect("no more records expected");
        let record = queue.pop().unwrap().expect("a record");
        assert_eq!(
            (record.seq(), record.payload()),
            (seq, &payload_for(seq)[..])
        );
    }
}

#[test]
fn unread_segments_hold_no_open_files_while_written_counted_and_read() {
    for exclusive in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut range = {
            let queue = Queue::open(dir.path(), options(exclusive)).unwrap();
            // Delayed records in the first segments: `stats` counts them segment by segment.
            let mut range = fill(&queue, 100, 6000);
            let segments = segment_files(dir.path()).len();
            assert!(segments > 150, "{segments} segments");
            assert_eq!(open_segment_files(dir.path()), 1, "the active segment only");
            let stats = queue.stats().unwrap();
            assert_eq!((stats.len, stats.delayed), (6100, 100));
            assert_eq!(stats.segments, segments);
            assert_eq!(open_segment_files(dir.path()), 1, "after stats");
            pop_checked(&queue, &mut range, 3000);
            assert_eq!(open_segment_files(dir.path()), 1, "after reading half");
            range
        };
        // Found at open: every sealed segment is checked by `stats` and read by pops.
        let queue = Queue::open(dir.path(), options(exclusive)).unwrap();
        let stats = queue.stats().unwrap();
        assert_eq!((stats.len, stats.delayed), (3100, 100));
        assert_eq!(open_segment_files(dir.path()), 1, "after stats, reopened");
        // `stats` read the delayed records' headers in every unread segment and kept none of
        // its mappings; its peek read past the 3,000 records popped before (acknowledged
        // beyond the delayed head) and kept those of the delayed records only, tracked until
        // they are due (about 4 segments), and the reader's.
        let mapped = mapped_segment_files(dir.path());
        assert!(mapped <= 6, "{mapped} segments mapped after stats");
        pop_checked(&queue, &mut range, 2000);
        // Pushed since the reopening, read across the rolls that sealed them.
        let more = fill(&queue, 0, 1000);
        assert_eq!(open_segment_files(dir.path()), 1, "after more pushes");
        pop_checked(&queue, &mut range, 1000);
        assert_eq!(range, 6100..6100);
        let mut range = more;
        pop_checked(&queue, &mut range, 1000);
        assert!(queue.pop().unwrap().is_none(), "the delayed records wait");
        assert_eq!(queue.stats().unwrap().delayed, 100);
        assert!(open_segment_files(dir.path()) <= 1);
    }
}

/// Records acknowledged far beyond the head: the first open of a bounded shared queue counts
/// the bytes not consumed, reading the headers of every frame up to the last acknowledged
/// record to leave those out, and keeps neither descriptors nor mappings of what it read.
#[test]
fn counting_acknowledged_records_beyond_the_head_keeps_no_segment_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = || {
        options(false)
            .max_bytes(100 << 20)
            .lease(Duration::from_secs(3600))
    };
    {
        let queue = Queue::open(dir.path(), jobs()).unwrap();
        fill(&queue, 0, 6000);
        let mut deliveries = queue.try_recv_batch(6000).unwrap();
        assert_eq!(deliveries.len(), 6000);
        let first = deliveries.remove(0);
        for delivery in deliveries {
            delivery.ack().unwrap();
        }
        // Never acknowledged: the head stays at it, the other acks stay in the ack log.
        drop(first);
    }
    let queue = Queue::open(dir.path(), jobs()).unwrap();
    let mapped = mapped_segment_files(dir.path());
    assert!(mapped <= 2, "{mapped} segments mapped after the open");
    assert_eq!(open_segment_files(dir.path()), 1);
    let stats = queue.stats().unwrap();
    assert_eq!(stats.len, 1);
    assert!(stats.segments > 150, "{} segments", stats.segments);
    let mapped = mapped_segment_files(dir.path());
    assert!(mapped <= 2, "{mapped} segments mapped after stats");
    let record = queue.pop().unwrap().expect("the record never acknowledged");
    assert_eq!((record.seq(), record.payload()), (0, &payload_for(0)[..]));
    drop(record);
    assert!(queue.pop().unwrap().is_none());
    assert!(segment_files(dir.path()).len() <= 2, "compacted");
}

/// One long job keeps the head back while workers receive and acknowledge thousands of records
/// behind it: the segments they read stay on disk (the head is at the long job), but neither
/// open nor mapped (each acknowledged record, tracked until the head passes it, lets go of its
/// segment's mapping).
#[test]
fn a_long_lease_at_the_head_keeps_the_segments_read_behind_it_unmapped() {
    for exclusive in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let options = options(exclusive).lease(Duration::from_secs(3600));
        let queue = Queue::open(dir.path(), options).unwrap();
        let mut range = fill(&queue, 0, 6000);
        let long_job = queue.try_recv().unwrap().unwrap();
        assert_eq!(Some(long_job.seq()), range.next());
        for seq in range {
            let delivery = queue.try_recv().unwrap().unwrap();
            assert_eq!(
                (delivery.seq(), delivery.payload()),
                (seq, &payload_for(seq)[..])
            );
            delivery.ack().unwrap();
        }
        assert!(
            segment_files(dir.path()).len() > 150,
            "kept behind the head"
        );
        let mapped = mapped_segment_files(dir.path());
        assert!(
            mapped <= 3,
            "exclusive {exclusive}: {mapped} segments mapped"
        );
        assert_eq!(open_segment_files(dir.path()), 1);
        long_job.ack().unwrap();
        assert!(
            segment_files(dir.path()).len() <= 2,
            "compacted once the head moved"
        );
    }
}

#[test]
fn a_producer_and_a_consumer_handle_keep_one_open_segment_each() {
    let dir = tempfile::tempdir().unwrap();
    let producer = Queue::open(dir.path(), options(false)).unwrap();
    let consumer = Queue::open(dir.path(), options(false)).unwrap();
    let mut range = fill(&producer, 0, 6000);
    assert!(segment_files(dir.path()).len() > 150);
    assert_eq!(consumer.stats().unwrap().len, 6000);
    pop_checked(&consumer, &mut range, 3000);
    let open = open_segment_files(dir.path());
    assert!(open <= 2, "{open} segment files open");
    pop_checked(&consumer, &mut range, 3000);
    assert!(consumer.pop().unwrap().is_none());
}

/// Not a test: the child process of the test below. It does nothing unless started by it.
#[test]
#[ignore = "entry point of the child process that the open-files test starts"]
fn child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    // Well below the segments written, above what the test harness and a queue need besides.
    let limit = rustix::process::Rlimit {
        current: Some(64),
        maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
    };
    rustix::process::setrlimit(rustix::process::Resource::Nofile, limit).unwrap();
    for exclusive in [true, false] {
        let path = dir.join(if exclusive { "exclusive" } else { "shared" });
        let mut range = {
            let queue = Queue::open(&path, options(exclusive)).unwrap();
            let range = fill(&queue, 10, 10_000);
            assert!(queue.stats().unwrap().segments > 300);
            range
        };
        let queue = Queue::open(&path, options(exclusive)).unwrap();
        assert_eq!(queue.stats().unwrap().len, 10_010);
        pop_checked(&queue, &mut range, 10_000);
        assert!(queue.pop().unwrap().is_none());
    }
    println!("child done");
}

#[test]
fn more_segments_than_the_process_may_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "open_files::child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("child done"),
        "child: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
