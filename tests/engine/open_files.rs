//! A queue keeps a file descriptor for its active segment only: unread segments, however many,
//! hold none, so that a long queue never runs into the process's limit on open files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::{open_segment_files, payload_for, segment_files};

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
