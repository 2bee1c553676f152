//! Records borrow the segment's memory mapping; these tests check the rules that keep a mapped
//! page from vanishing under a reader (which would raise SIGBUS) on the real filesystem.

// Test code unwraps: a failure is a test failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use diskspool::{Options, Queue, SyncPolicy};

fn options() -> Options {
    Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never)
}

/// A record popped from a segment that compaction then deletes stays readable: deleting a file
/// unlinks its name, the mapping keeps the inode alive.
#[test]
fn records_stay_readable_after_their_segment_is_compacted_away() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    for seq in 0..40u64 {
        queue.push(&[seq as u8; 300]).unwrap();
    }
    let first = queue.pop().unwrap().unwrap();
    let rest = queue.pop_batch(30).unwrap();
    queue.compact().unwrap();
    let first_segment = dir
        .path()
        .join(diskspool::format::layout::segment_file_name(0));
    assert!(
        !first_segment.exists(),
        "the first segment was not compacted away"
    );
    assert_eq!(first.payload(), &[0u8; 300][..]);
    for record in &rest {
        assert_eq!(record.payload(), &[record.seq() as u8; 300][..]);
    }
}

/// A record handed out from the active segment stays intact while the segment grows, is sealed
/// and a new one is mapped.
#[test]
fn records_stay_readable_while_the_active_segment_grows_and_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    queue.push(b"first").unwrap();
    let held = queue.pop().unwrap().unwrap();
    for seq in 0..100u64 {
        queue.push(&[seq as u8; 200]).unwrap();
        if seq % 10 == 0 {
            assert!(queue.pop().unwrap().is_some());
        }
    }
    assert_eq!(held.payload(), b"first");
}
