//! Only one handle at a time may open a queue directory.

use diskspool::{Error, Options, Queue, SyncPolicy};

#[test]
fn second_open_in_the_same_process_is_locked_and_names_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Locked {
            dir: locked,
            pid,
            shared_by,
        }) => {
            assert_eq!(locked, dir.path());
            assert_eq!(pid, Some(std::process::id()));
            assert!(shared_by.is_empty());
        }
        other => panic!("expected Locked, got {other:?}"),
    }
}

/// An exclusive open, or a repair, refused because shared handles have the queue open names
/// their processes: each once, only those whose handles are still open.
#[test]
fn an_exclusive_open_refused_by_shared_handles_names_their_processes() {
    let sim = diskspool::SimStorage::new(5);
    let on = |process: u32| {
        Options::default()
            .sync(SyncPolicy::Never)
            .storage(std::sync::Arc::new(sim.process(process)))
    };
    let first = Queue::open("/q", on(7).exclusive(false)).unwrap();
    let second = Queue::open("/q", on(9).exclusive(false)).unwrap();
    let again_in_seven = Queue::open("/q", on(7).exclusive(false)).unwrap();
    let refused = |process: u32| match Queue::open("/q", on(process)) {
        Err(error @ Error::Locked { .. }) => error,
        other => panic!("an exclusive open beside shared handles: {other:?}"),
    };
    let error = refused(3);
    assert!(
        matches!(&error, Error::Locked { pid: None, shared_by, .. } if **shared_by == [7, 9]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "queue directory /q is locked by another handle (shared by processes 7, 9)"
    );
    let process = sim.process(3);
    match diskspool::tools::repair::repair(
        &process,
        std::path::Path::new("/q"),
        diskspool::tools::repair::Mode::DryRun,
    ) {
        Err(Error::Locked { shared_by, .. }) => assert_eq!(*shared_by, [7, 9]),
        other => panic!("a repair beside shared handles: {other:?}"),
    }
    drop((first, again_in_seven));
    let error = refused(3);
    assert_eq!(
        error.to_string(),
        "queue directory /q is locked by another handle (shared by process 9)"
    );
    drop(second);
    Queue::open("/q", on(3)).unwrap();
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

/// What a child process forked after the open does with its copy of the handle: every call
/// fails with `Error::Forked` naming the parent, `len` (which cannot fail) counts the records
/// without taking a lock (in a shared queue, those another handle pushed too), and dropping the
/// copy neither waits for the parent's threads nor touches the files. The parent's handle goes
/// on as if there had been no fork: the records pushed before it are popped once, and a reopen
/// finds the files whole.
#[test]
fn a_forked_child_cannot_use_its_copy_of_the_handle_and_its_drop_leaves_the_queue_alone() {
    use std::time::{Duration, Instant};
    let cases = [
        (
            "exclusive, Interval",
            Options::default().sync(SyncPolicy::Interval(Duration::from_millis(5))),
        ),
        ("exclusive, Always", Options::default()),
        (
            "shared, Never",
            Options::default().exclusive(false).sync(SyncPolicy::Never),
        ),
        ("shared, Always", Options::default().exclusive(false)),
    ];
    for (case, options) in cases {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), options.clone()).unwrap();
        queue.push(b"before the fork").unwrap();
        let shared = case.starts_with("shared");
        if shared {
            // Committed by another handle: the child's `len` takes it up from `control`.
            let other = Queue::open(dir.path(), options.clone()).unwrap();
            other.push(b"from another handle").unwrap();
        }
        let expected = if shared { 2 } else { 1 };
        let parent = std::process::id();
        // SAFETY: fork in a test process with other threads; the child runs the queue's
        // refusals (which allocate: glibc's malloc is usable after fork) and `_exit`s, never
        // returning into the test harness.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let in_child = std::panic::AssertUnwindSafe(|| {
                let forked = |result: Result<(), Error>| matches!(result, Err(Error::Forked { opened_by, .. }) if opened_by == parent);
                let refusals = [
                    forked(queue.push(b"from the child").map(drop)),
                    forked(queue.pop().map(drop)),
                    forked(queue.peek().map(drop)),
                    forked(queue.try_recv().map(drop)),
                    forked(queue.sync()),
                    forked(queue.stats().map(drop)),
                    forked(queue.compact().map(drop)),
                    queue.len() == expected,
                ];
                drop(queue);
                // Bit k set: the k-th call was not refused as it should be.
                refusals
                    .iter()
                    .enumerate()
                    .filter(|(_, refused)| !**refused)
                    .fold(0, |failed, (bit, _)| failed | 1 << bit)
            });
            // A panic must not unwind into the test harness's copy in the child.
            let code = std::panic::catch_unwind(in_child).unwrap_or(200);
            // SAFETY: ends the child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        assert!(child > 0, "fork failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, without blocking.
            let reaped = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if reaped == child {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: our own child.
                unsafe { libc::kill(child, libc::SIGKILL) };
                panic!("{case}: the child did not finish in 30 s (its drop waited?)");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(libc::WIFEXITED(status), "{case}: child status {status}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "{case}: bit k set = the k-th call in the child was not refused with Forked (bit 7: \
             len was wrong); 200 = a panic"
        );
        assert_eq!(
            queue.pop().unwrap().unwrap().payload(),
            b"before the fork",
            "{case}"
        );
        if shared {
            assert_eq!(
                queue.pop().unwrap().unwrap().payload(),
                b"from another handle",
                "{case}"
            );
        }
        queue.push(b"after the fork").unwrap();
        assert_eq!(
            queue.pop().unwrap().unwrap().payload(),
            b"after the fork",
            "{case}"
        );
        assert!(queue.pop().unwrap().is_none(), "{case}");
        queue.push(b"kept").unwrap();
        queue.close().unwrap();
        let reopened = Queue::open(dir.path(), options).unwrap();
        let report = reopened.recovery_report();
        assert!(
            report.truncated.is_empty() && report.removed_files.is_empty() && !report.repaired(),
            "{case}: {report:?}"
        );
        assert_eq!(
            reopened.pop().unwrap().unwrap().payload(),
            b"kept",
            "{case}"
        );
        assert!(reopened.pop().unwrap().is_none(), "{case}");
    }
}
