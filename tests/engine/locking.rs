//! Only one handle at a time may open a queue directory.

use diskspool::{Error, Options, Queue, SyncPolicy};

#[test]
fn second_open_in_the_same_process_is_locked_and_names_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Locked { dir: locked, pid }) => {
            assert_eq!(locked, dir.path());
            assert_eq!(pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn lock_is_released_when_the_queue_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    Queue::open(dir.path(), Options::default()).unwrap();
}

#[test]
fn another_process_holding_the_queue_locks_it_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = crate::process_kill::spawn_child("hold", dir.path());
    crate::process_kill::wait_for_line(&mut child);
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(child.id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The lock dies with the process: no stale lock file blocks the next open.
    Queue::open(dir.path(), Options::default()).unwrap();
}
