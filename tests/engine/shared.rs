//! A queue shared by several handles (`Options::exclusive(false)`): in one process here, each
//! handle with its own locks as another process would have; `multiprocess.rs` runs the same
//! with child processes and kills.

use std::time::Duration;

use diskspool::format::control::CONTROL_VERSION;
use diskspool::{testkit, Error, Options, Queue, SyncPolicy};

use crate::util::{open_segment_files, payload_for};

fn shared(sync: SyncPolicy) -> Options {
    Options::default()
        .exclusive(false)
        .sync(sync)
        .segment_size(16 << 10)
}

#[test]
fn producers_in_several_handles_and_one_consumer_see_one_fifo() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let first = Queue::open(dir.path(), shared(sync)).unwrap();
        let second = Queue::open(dir.path(), shared(sync)).unwrap();
        let consumer = Queue::open(dir.path(), shared(sync)).unwrap();
        // Interleaved pushes across segment rolls (16 KiB segments).
        for seq in 0..600u64 {
            let handle = if seq % 3 == 0 { &first } else { &second };
            assert_eq!(handle.push(&payload_for(seq)).unwrap(), seq);
        }
        let batch: Vec<Vec<u8>> = (600..650).map(payload_for).collect();
        assert_eq!(first.push_batch(&batch).unwrap(), 600..650);
        assert_eq!(consumer.len(), 650);
        for seq in 0..650u64 {
            let record = consumer.pop().unwrap().expect("a record");
            assert_eq!(record.seq(), seq);
            assert_eq!(record.payload(), payload_for(seq));
        }
        assert!(consumer.pop().unwrap().is_none());
        // Any handle consumes, where the others left the head.
        assert!(first.pop().unwrap().is_none());
        second.push(b"after").unwrap();
        assert_eq!(first.pop().unwrap().unwrap().payload(), b"after");
        assert!(consumer.pop().unwrap().is_none());
    }
}

/// Under `Always` the sync leader of one handle syncs for the producers of every handle; each
/// handle counts the syncs it led and the records they made durable, so that over all handles
/// every record is counted once.
#[test]
fn group_commit_syncs_are_counted_by_the_handle_that_led_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().exclusive(false).sync(SyncPolicy::Always);
    let handles = [
        Queue::open(dir.path(), options.clone()).unwrap(),
        Queue::open(dir.path(), options).unwrap(),
    ];
    for _ in 0..5 {
        handles[0].push(b"alone").unwrap();
    }
    let alone = handles[0].stats().unwrap().totals.unwrap();
    // One producer: a sync per push, each covering that push.
    assert_eq!((alone.commit_syncs, alone.commit_records), (5, 5));
    std::thread::scope(|scope| {
        for handle in &handles {
            for _ in 0..2 {
                scope.spawn(move || {
                    for _ in 0..50 {
                        handle.push(b"together").unwrap();
                    }
                });
            }
        }
    });
    let (syncs, records) = handles.iter().fold((0, 0), |(syncs, records), handle| {
        let stats = handle.stats().unwrap().totals.unwrap();
        (syncs + stats.commit_syncs, records + stats.commit_records)
    });
    assert_eq!(
        records, 205,
        "every record made durable by exactly one counted sync"
    );
    assert!((1..=205).contains(&syncs), "{syncs} syncs");
}

/// A pop looks in the records its handle already took up before it reads what other handles
/// pushed since: the order stays one FIFO across that boundary, under both kinds of policy
/// (`Always` shows records once a sync covered them), and a pop that finds nothing it knew
/// still returns what another handle pushed before it began. The same for a receive.
#[test]
fn a_pop_hands_out_what_its_handle_knew_then_what_others_pushed_since_in_order() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let consumer = Queue::open(dir.path(), shared(sync)).unwrap();
        let producer = Queue::open(dir.path(), shared(sync)).unwrap();
        for seq in 0..3u64 {
            producer.push(&payload_for(seq)).unwrap();
        }
        // Takes up records 0..3.
        assert_eq!(consumer.pop().unwrap().unwrap().seq(), 0);
        // Unknown to the consumer until it looks again; one of them in a segment of its own.
        for seq in 3..300u64 {
            producer.push(&payload_for(seq)).unwrap();
        }
        consumer.push(&payload_for(300)).unwrap();
        for seq in 1..=300u64 {
            let record = consumer.pop().unwrap().expect("a record");
            assert_eq!(
                (record.seq(), record.payload()),
                (seq, &payload_for(seq)[..])
            );
        }
        assert!(consumer.pop().unwrap().is_none());
        producer.push(b"last").unwrap();
        assert_eq!(consumer.pop().unwrap().unwrap().payload(), b"last");
        // A receive of one record likewise.
        producer.push(b"job").unwrap();
        let job = consumer.try_recv().unwrap().expect("the job");
        assert_eq!(job.payload(), b"job");
        job.ack().unwrap();
        assert!(consumer.try_recv().unwrap().is_none());
    }
}

#[test]
fn the_consumer_role_moves_to_the_next_handle_with_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let producer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    for seq in 0..100u64 {
        producer.push(&payload_for(seq)).unwrap();
    }
    let consumer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    for seq in 0..40u64 {
        assert_eq!(consumer.pop().unwrap().unwrap().seq(), seq);
    }
    let job = consumer.try_recv().unwrap().unwrap();
    assert_eq!(job.seq(), 40);
    drop(job);
    drop(consumer);
    // The producer takes the role: it goes on after the 40 pops (the released job 40 first).
    for seq in 40..100u64 {
        assert_eq!(producer.pop().unwrap().unwrap().seq(), seq);
    }
    assert!(producer.pop().unwrap().is_none());
}

#[test]
fn an_exclusive_handle_and_a_shared_one_exclude_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let alone = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(
        Queue::open(dir.path(), shared(SyncPolicy::Never)),
        Err(Error::Locked { .. })
    ));
    drop(alone);
    let joined = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    assert!(matches!(
        Queue::open(dir.path(), Options::default()),
        Err(Error::Locked { .. })
    ));
    drop(joined);
    Queue::open(dir.path(), Options::default()).unwrap();
}

/// A child process started while a handle had the queue open, by a call that runs no
/// `pthread_atfork` handler (`posix_spawn`, which `std::process` uses, is one), shares the
/// handle's lock until it starts its new program or exits: an open right after the handle
/// closed waits that moment out, shared or exclusive, instead of reporting the queue locked by
/// this very process. (A child of `fork` lets go of the lock at once: see `multiprocess`.)
///
/// The child waits until it is killed, and the open's first wait kills it: the open must
/// then take the lock at its next try. The window is a minute here, not 200 ms, so that no
/// timer races the child's death on a loaded machine.
#[test]
fn an_open_waits_out_a_lock_a_forked_child_holds_for_a_moment() {
    let forked_child_holding_the_lock = || {
        // A raw `clone` with a copy of the memory and the descriptors, as `fork` makes, but
        // without the handlers `fork` runs.
        // SAFETY: the child calls only an async-signal-safe function (pause) until killed.
        match unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as libc::pid_t } {
            0 => unsafe {
                loop {
                    libc::pause();
                }
            },
            pid => {
                assert!(pid > 0, "fork failed");
                pid
            }
        }
    };
    /// The child, killed and reaped when it is taken or dropped (also when an assert fails:
    /// a child left alive would keep the test's output open).
    struct Child(std::cell::Cell<Option<libc::pid_t>>);
    impl Child {
        fn kill(&self) {
            if let Some(pid) = self.0.take() {
                let mut status = 0;
                // SAFETY: kills and waits for our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
                }
            }
        }
    }
    impl Drop for Child {
        fn drop(&mut self) {
            self.kill();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (first, then) in [
        (Options::default(), shared(SyncPolicy::Never)),
        (shared(SyncPolicy::Never), Options::default()),
    ] {
        let handle = Queue::open(dir.path(), first).unwrap();
        handle.push(b"x").unwrap();
        let child = std::rc::Rc::new(Child(Some(forked_child_holding_the_lock()).into()));
        drop(handle);
        let waits = std::rc::Rc::new(std::cell::Cell::new(0));
        let (counted, killed) = (waits.clone(), child.clone());
        testkit::on_momentary_holds_in_this_thread(Some((
            Duration::from_secs(60),
            Box::new(move || {
                killed.kill();
                counted.set(counted.get() + 1);
            }),
        )));
        let opened = Queue::open(dir.path(), then);
        testkit::on_momentary_holds_in_this_thread(None);
        child.kill();
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert_eq!(
            waits.get(),
            1,
            "the open found the child's lock and waited once"
        );
        assert_eq!(opened.unwrap().pop().unwrap().unwrap().payload(), b"x");
    }
}

#[test]
fn a_blocked_consumer_wakes_on_another_handles_push() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let consumer = Queue::open(dir.path(), shared(sync)).unwrap();
        assert!(consumer.pop().unwrap().is_none()); // takes the role
        let producer = Queue::open(dir.path(), shared(sync)).unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| consumer.pop_timeout(Duration::from_secs(30)).unwrap());
            // Whether the push lands before or after the waiter sleeps, the pop returns it.
            producer.push(b"wake").unwrap();
            let record = waiter.join().unwrap().expect("woken by the push");
            assert_eq!(record.payload(), b"wake");
        });
    }
}

#[test]
fn shared_queues_refuse_what_they_cannot_share_yet() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Queue::open(dir.path(), shared(SyncPolicy::Never).segment_pool(2)),
        Err(Error::InvalidOptions(_))
    ));
}

/// Two machines that mount one network directory each map their own copy of the control file:
/// a shared open there is refused, before it creates anything but the directory, unless the
/// caller promises that every process runs on one machine. An exclusive open is not refused.
#[test]
fn a_shared_queue_on_a_network_filesystem_is_refused_unless_every_process_is_on_one_machine() {
    let sim = diskspool::SimStorage::new(7);
    sim.set_network_filesystem(Some("nfs"));
    let on =
        |process: u32| shared(SyncPolicy::Never).storage(std::sync::Arc::new(sim.process(process)));
    match Queue::open("/q", on(1)) {
        Err(Error::InvalidOptions(why)) => {
            assert!(why.contains("/q is on a network filesystem (nfs)"), "{why}");
            assert!(why.contains("allow_network_filesystem(true)"), "{why}");
        }
        other => panic!("a shared open on NFS: {other:?}"),
    }
    assert_eq!(
        sim.file_names(std::path::Path::new("/q")),
        Vec::<String>::new()
    );

    let first = Queue::open("/q", on(1).allow_network_filesystem(true)).unwrap();
    let second = Queue::open("/q", on(2).allow_network_filesystem(true)).unwrap();
    first.push(b"one machine").unwrap();
    assert_eq!(second.pop().unwrap().unwrap().payload(), b"one machine");
    drop((first, second));

    let alone = Options::default()
        .sync(SyncPolicy::Never)
        .storage(std::sync::Arc::new(sim.process(3)));
    let queue = Queue::open("/q", alone).unwrap();
    queue.push(b"alone").unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"alone");
}

/// A push skips reading the committed tail back while no other handle changed the log since
/// its handle's last commit (one load of the tail's generation). A failed push leaves the log
/// dirty without a commit, and a repair of it cuts the active segment (with the zeros a mapping
/// handle stores into) without one: the next push of the mapping handle must see both. Without
/// the repairs count in that check, its store lands past the cut end of the file.
#[test]
fn a_push_sees_a_failed_push_and_a_repair_that_committed_nothing() {
    use diskspool::storage::sim::{Fault, FaultKind, SimOp};
    let sim = diskspool::SimStorage::new(13);
    sim.set_writable_mappings(true);
    let on = |process: u32, mapped: bool| {
        shared(SyncPolicy::Never)
            .mapped_writes(mapped)
            .storage(std::sync::Arc::new(sim.process(process)))
    };
    let mapping = Queue::open("/q", on(1, true)).unwrap();
    let failing = Queue::open("/q", on(2, false)).unwrap();
    let repairing = Queue::open("/q", on(3, false)).unwrap();
    for round in 0..2u64 {
        let first = round * 30;
        // The mapping handle maps the active segment's tail and the zeros ahead of it.
        mapping
            .push_batch((first..first + 20).map(payload_for))
            .unwrap();
        sim.inject(Fault {
            op: Some(SimOp::Write),
            skip: 0,
            kind: FaultKind::ShortWrite,
            sticky: false,
        });
        assert!(
            failing.push(b"never returned").is_err(),
            "the injected write failure"
        );
        if round == 0 {
            // Repairs and commits nothing: an empty batch.
            assert_eq!(repairing.push_batch(Vec::<Vec<u8>>::new()).unwrap(), 20..20);
        }
        // Round 0: after the repair; round 1: the mapping handle repairs.
        assert_eq!(
            mapping
                .push_batch((first + 20..first + 30).map(payload_for))
                .unwrap(),
            first + 20..first + 30
        );
    }
    drop((mapping, failing, repairing));
    let reopened = Queue::open("/q", on(4, true)).unwrap();
    for seq in 0..60u64 {
        let record = reopened.pop().unwrap().expect("every returned push");
        assert_eq!(
            (record.seq(), record.payload()),
            (seq, &payload_for(seq)[..])
        );
    }
    assert!(reopened.pop().unwrap().is_none());
}

#[test]
fn a_producer_does_not_keep_the_segments_the_consumer_deleted_open() {
    let dir = tempfile::tempdir().unwrap();
    let producer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    let consumer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    let mut counted = Vec::new();
    for round in 0..4u64 {
        // About 50 segments of 16 KiB a round, all consumed and compacted.
        for seq in round * 3000..(round + 1) * 3000 {
            producer.push(&payload_for(seq)).unwrap();
            assert_eq!(consumer.pop().unwrap().unwrap().seq(), seq);
        }
        counted.push(open_segment_files(dir.path()));
    }
    assert!(counted[0] > 0, "the queue's files are seen");
    assert!(
        counted[3] <= counted[0],
        "open files grow with the segments written: {counted:?}"
    );
}

#[test]
fn shared_segments_stay_within_their_size_whoever_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = shared(SyncPolicy::Never).segment_size(4096);
    let handles = [
        Queue::open(dir.path(), options.clone()).unwrap(),
        Queue::open(dir.path(), options).unwrap(),
    ];
    // Alternating: each push takes up the tail the other committed.
    for seq in 0..100u64 {
        handles[seq as usize % 2].push(&payload_for(seq)).unwrap();
    }
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name.ends_with(".seg") {
            let len = entry.metadata().unwrap().len();
            assert!(len <= 4096 + 400, "{name} is {len} bytes");
        }
    }
}

#[test]
fn an_exclusive_open_refused_beside_shared_handles_names_no_stale_process() {
    let dir = tempfile::tempdir().unwrap();
    // An exclusive handle writes its pid into `lock`, and leaves it there when it closes.
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    let _shared = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, None, "no stale pid"),
        other => panic!("expected Locked, got {other:?}"),
    }
}

#[test]
fn a_symlink_planted_where_a_shared_queue_keeps_its_control_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("precious");
    std::fs::write(&target, b"not yours").unwrap();
    let queue_dir = dir.path().join("q");
    drop(Queue::open(&queue_dir, Options::default()).unwrap());
    for name in ["control", "procs", "open.lock"] {
        let link = queue_dir.join(name);
        // What an earlier round created in its place goes first.
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let opened = Queue::open(&queue_dir, shared(SyncPolicy::Never))
            .and_then(|queue| queue.pop().map(|_| queue));
        assert!(opened.is_err(), "{name}: a symlink is refused");
        assert_eq!(std::fs::read(&target).unwrap(), b"not yours", "{name}");
        std::fs::remove_file(&link).unwrap();
    }
}

/// A rolling upgrade: a handle of a build with another control layout (here: the version word
/// of the live handles' control file says 3) cannot join them, and says so with the file and
/// both versions, not as damage. Once they closed, the next open builds the control file anew
/// and finds every record.
#[test]
fn a_build_with_another_control_layout_cannot_join_live_handles_and_can_once_they_closed() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let live = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    for seq in 0..5u64 {
        live.push(&payload_for(seq)).unwrap();
    }
    let control = dir.path().join("control");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&control)
        .unwrap();
    file.write_all_at(&3u32.to_ne_bytes(), 8).unwrap();
    match Queue::open(dir.path(), shared(SyncPolicy::Never)) {
        Err(Error::UnsupportedVersion {
            file,
            found,
            supported,
        }) => {
            assert_eq!(file, control);
            assert_eq!((found, u32::from(supported)), (3, CONTROL_VERSION));
        }
        other => panic!("expected UnsupportedVersion naming the control file, got {other:?}"),
    }
    drop(live);
    let next = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    for seq in 0..5u64 {
        assert_eq!(next.pop().unwrap().unwrap().payload(), payload_for(seq));
    }
}

#[test]
fn handles_opening_a_new_queue_at_once_all_join_it() {
    for _ in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let queue_dir = dir.path().join("q");
        let pushed: Vec<u64> = std::thread::scope(|scope| {
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let queue = Queue::open(&queue_dir, shared(SyncPolicy::Never)).unwrap();
                        queue.push(b"hello").unwrap()
                    })
                })
                .collect();
            openers
                .into_iter()
                .map(|opener| opener.join().unwrap())
                .collect()
        });
        let mut sorted = pushed.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, vec![0, 1, 2, 3], "{pushed:?}");
    }
}

#[test]
fn a_consumer_records_as_synced_only_what_a_sync_covered() {
    let dir = tempfile::tempdir().unwrap();
    let producer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    let consumer = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    for seq in 0..10u64 {
        producer.push(&payload_for(seq)).unwrap();
    }
    for _ in 0..10 {
        consumer.pop().unwrap().unwrap();
    }
    // A clean close under Never records in the head how far the records are synced: nothing
    // was, since the open.
    consumer.close().unwrap();
    let bytes = std::fs::read(dir.path().join("head")).unwrap();
    let read = diskspool::format::head::decode_head_file(&bytes);
    let slot = read.slots[read.current.unwrap()].clone().unwrap();
    assert_eq!(slot.state.head_seq, 10);
    assert_eq!(
        slot.state.synced_seq, 0,
        "published under Never is not synced"
    );
}

#[test]
fn a_handle_that_does_not_consume_counts_the_records_and_sees_the_consumers_head() {
    let dir = tempfile::tempdir().unwrap();
    let producer = Queue::open(
        dir.path(),
        shared(SyncPolicy::Interval(Duration::from_millis(5))),
    )
    .unwrap();
    let consumer = Queue::open(
        dir.path(),
        shared(SyncPolicy::Interval(Duration::from_millis(5))),
    )
    .unwrap();
    for seq in 0..10u64 {
        producer.push(&payload_for(seq)).unwrap();
    }
    assert_eq!(consumer.pop().unwrap().unwrap().seq(), 0);
    consumer.sync().unwrap(); // the head on disk, where the producer reads it
    assert_eq!(producer.len(), 9);
    // Stats read the consumer files in a turn: the head the consumer left, the producer's
    // own counts.
    let stats = producer.stats().unwrap();
    assert_eq!((stats.len, stats.head_seq, stats.next_seq), (9, 1, 10));
    assert_eq!(consumer.stats().unwrap().len, 9);
    assert_eq!(consumer.pop().unwrap().unwrap().seq(), 1);
    assert_eq!(producer.pop().unwrap().unwrap().seq(), 2);
    assert_eq!(consumer.len(), 7);
}

/// A handle that never consumed counts as `spool stat` does: records acknowledged out of order
/// beyond the head (a lease held before them keeps the head back) are not in the queue.
#[test]
fn a_handle_that_does_not_consume_leaves_out_what_was_acknowledged_beyond_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = shared_jobs(SyncPolicy::Never, Duration::from_secs(3600));
    let consumer = Queue::open(dir.path(), jobs.clone()).unwrap();
    for seq in 0..5u64 {
        consumer.push(&payload_for(seq)).unwrap();
    }
    let held = consumer.try_recv().unwrap().unwrap();
    for seq in 1..3u64 {
        let delivery = consumer.try_recv().unwrap().unwrap();
        assert_eq!(delivery.seq(), seq);
        delivery.ack().unwrap();
    }
    // Record 0 held, 1 and 2 acknowledged, 3 and 4 ready: 3 records in the queue.
    assert_eq!(consumer.len(), 3);
    let watching = Queue::open(dir.path(), jobs).unwrap();
    assert_eq!(watching.len(), 3, "the head is still at 0");
    held.ack().unwrap();
    consumer.sync().unwrap();
    assert_eq!(watching.len(), 2);
    assert_eq!(consumer.len(), 2);
}

/// A consuming handle's length counts its own lease, what other handles consumed beyond it
/// (not), and what they pushed since.
#[test]
fn a_consumer_counts_what_another_handle_pushed_and_consumed_beyond_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = shared_jobs(SyncPolicy::Never, Duration::from_secs(3600));
    let first = Queue::open(dir.path(), jobs.clone()).unwrap();
    let second = Queue::open(dir.path(), jobs).unwrap();
    for seq in 0..2u64 {
        first.push(&payload_for(seq)).unwrap();
    }
    let held = first.try_recv().unwrap().unwrap();
    assert_eq!(held.seq(), 0);
    second.push(&payload_for(2)).unwrap();
    for seq in 1..3u64 {
        assert_eq!(second.pop().unwrap().map(|record| record.seq()), Some(seq));
    }
    assert!(
        first.pop().unwrap().is_none(),
        "0 is held, 1 and 2 are consumed"
    );
    assert_eq!(first.len(), 1, "the held record is in the queue");
    assert_eq!(second.len(), 1);
    second.push(&payload_for(3)).unwrap();
    assert_eq!(first.len(), 2, "and the record pushed since");
    held.ack().unwrap();
    assert_eq!(first.len(), 1);
}

#[test]
fn a_129th_handle_is_refused_and_a_closed_handles_slot_is_taken_again() {
    // 128 handles keep about 400 files open (measured): room under a soft limit of 1,024 with
    // the other tests' files, and more where the hard limit allows.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut handles: Vec<Queue> = (0..128)
        .map(|_| Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap())
        .collect();
    match Queue::open(dir.path(), shared(SyncPolicy::Never)) {
        Err(Error::Locked {
            dir: refused,
            shared_by,
            ..
        }) => {
            assert!(refused.ends_with("procs"));
            assert_eq!(*shared_by, [std::process::id()]);
        }
        other => panic!("expected Locked naming procs, got {other:?}"),
    }
    handles.pop();
    let again = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    again.push(b"from the reused slot").unwrap();
    assert_eq!(
        handles[0].pop().unwrap().unwrap().payload(),
        b"from the reused slot"
    );
}

fn shared_jobs(sync: SyncPolicy, lease: Duration) -> Options {
    shared(sync).lease(lease)
}

#[test]
fn consumers_in_several_handles_pop_each_record_once() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let producers: Vec<Queue> = (0..2)
            .map(|_| Queue::open(dir.path(), shared(sync)).unwrap())
            .collect();
        let consumers: Vec<Queue> = (0..3)
            .map(|_| Queue::open(dir.path(), shared(sync)).unwrap())
            .collect();
        const PER_PRODUCER: u64 = 400;
        let done = std::sync::atomic::AtomicUsize::new(0);
        let popped: Vec<Vec<u64>> = std::thread::scope(|scope| {
            for (id, producer) in producers.iter().enumerate() {
                let done = &done;
                scope.spawn(move || {
                    for number in 0..PER_PRODUCER {
                        producer
                            .push(&payload_for(id as u64 * 1_000_000 + number))
                            .unwrap();
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
            let handles: Vec<_> = consumers
                .iter()
                .enumerate()
                .map(|(index, consumer)| {
                    let done = &done;
                    scope.spawn(move || {
                        let mut got = Vec::new();
                        loop {
                            let finished = done.load(std::sync::atomic::Ordering::SeqCst) == 2;
                            // Single pops and batches, so that both paths take turns.
                            let records = if index == 0 {
                                consumer.pop_batch(7).unwrap()
                            } else {
                                consumer.pop().unwrap().into_iter().collect()
                            };
                            if records.is_empty() && finished {
                                return got;
                            }
                            got.extend(records.iter().map(|record| record.seq()));
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = popped.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..2 * PER_PRODUCER).collect::<Vec<_>>(), "{sync:?}");
        for got in &popped {
            assert!(
                got.windows(2).all(|pair| pair[0] < pair[1]),
                "FIFO per consumer"
            );
        }
        for consumer in &consumers {
            assert_eq!(consumer.len(), 0);
        }
    }
}

#[test]
fn a_lease_in_one_handle_keeps_the_record_from_the_others_until_it_is_settled() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let options = shared_jobs(sync, Duration::from_secs(3600));
        let first = Queue::open(dir.path(), options.clone()).unwrap();
        let second = Queue::open(dir.path(), options).unwrap();
        for seq in 0..4u64 {
            first.push(&payload_for(seq)).unwrap();
        }
        let zero = first.try_recv().unwrap().unwrap();
        assert_eq!((zero.seq(), zero.deliveries()), (0, 1));
        // The other handle skips the leased record.
        let one = second.try_recv().unwrap().unwrap();
        assert_eq!((one.seq(), one.deliveries()), (1, 1));
        assert_eq!(second.pop().unwrap().unwrap().seq(), 2);
        // A release in the first hands it to the second, counted as a second delivery.
        zero.nack().unwrap();
        let again = second.try_recv().unwrap().unwrap();
        assert_eq!((again.seq(), again.deliveries()), (0, 2));
        // An ack in the second and one in the first (of the record the second received
        // first): neither comes back, and the head moves past both.
        again.ack().unwrap();
        let three = first.try_recv().unwrap().unwrap();
        assert_eq!(three.seq(), 3);
        assert!(second.try_recv().unwrap().is_none());
        one.ack().unwrap();
        three.ack().unwrap();
        assert!(first.try_recv().unwrap().is_none());
        assert!(second.pop().unwrap().is_none());
        assert_eq!(first.len(), 0);
        assert_eq!(second.stats().unwrap().head_seq, 4);
        // What they settled holds for a handle opened afterwards.
        drop((first, second));
        let reopened = Queue::open(dir.path(), shared(sync)).unwrap();
        assert!(reopened.try_recv().unwrap().is_none());
    }
}

#[test]
fn the_lease_of_a_handle_that_never_settles_ends_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let short = shared_jobs(SyncPolicy::Never, Duration::from_millis(100));
    let holder = Queue::open(dir.path(), short.clone()).unwrap();
    let other = Queue::open(dir.path(), short).unwrap();
    holder.push(b"job").unwrap();
    let delivery = holder.try_recv().unwrap().unwrap();
    // Its worker hangs (or its process died): nothing releases the lease.
    std::mem::forget(delivery);
    let again = other
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .expect("delivered again once the lease ran out");
    assert_eq!((again.seq(), again.deliveries()), (0, 2));
    again.ack().unwrap();
    assert!(holder.try_recv().unwrap().is_none());
}

#[test]
fn an_extended_lease_holds_for_the_other_handles_too() {
    let dir = tempfile::tempdir().unwrap();
    let short = shared_jobs(SyncPolicy::Never, Duration::from_millis(50));
    let holder = Queue::open(dir.path(), short.clone()).unwrap();
    let other = Queue::open(dir.path(), short).unwrap();
    holder.push(b"long job").unwrap();
    let delivery = holder.try_recv().unwrap().unwrap();
    delivery.extend(Duration::from_secs(3600)).unwrap();
    // Well past the first lease: the extension, written for the other handles, holds.
    std::thread::sleep(Duration::from_millis(200));
    assert!(other.try_recv().unwrap().is_none());
    assert!(other.pop().unwrap().is_none());
    // Another handle's turn since: the holder still settles it with its token.
    delivery.extend(Duration::from_secs(3600)).unwrap();
    delivery.ack().unwrap();
    assert_eq!(other.len(), 0);
}

#[test]
fn delivery_counts_add_up_across_handles_to_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let options = shared_jobs(SyncPolicy::Never, Duration::from_secs(3600))
        .max_deliveries(3)
        .dead_letter_dir(dir.path().join("dead"));
    let queue_dir = dir.path().join("q");
    let handles: Vec<Queue> = (0..3)
        .map(|_| Queue::open(&queue_dir, options.clone()).unwrap())
        .collect();
    handles[0].push(b"poison").unwrap();
    for (turn, handle) in handles.iter().enumerate() {
        let delivery = handle.try_recv().unwrap().unwrap();
        assert_eq!(delivery.deliveries(), turn as u32 + 1);
        delivery.nack().unwrap();
    }
    for handle in &handles {
        assert!(handle.try_recv().unwrap().is_none());
    }
    drop(handles);
    let dead = Queue::open(dir.path().join("dead"), Options::default()).unwrap();
    assert_eq!(dead.len(), 1, "dead-lettered once");
}

#[test]
fn a_handle_acks_what_it_received_before_others_moved_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let options = shared_jobs(SyncPolicy::Always, Duration::from_secs(3600));
    let first = Queue::open(dir.path(), options.clone()).unwrap();
    let second = Queue::open(dir.path(), options).unwrap();
    for seq in 0..6u64 {
        first.push(&payload_for(seq)).unwrap();
    }
    let early: Vec<_> = first.try_recv_batch(2).unwrap();
    assert_eq!(early.iter().map(|d| d.seq()).collect::<Vec<_>>(), [0, 1]);
    // The second handle acks out of order and pops around the leases.
    let two = second.try_recv().unwrap().unwrap();
    assert_eq!(second.pop().unwrap().unwrap().seq(), 3);
    two.ack().unwrap();
    // The first handle's reader is built again from the files at its next turn; its leases
    // stay its own.
    for delivery in early {
        delivery.ack().unwrap();
    }
    assert_eq!(first.pop().unwrap().unwrap().seq(), 4);
    assert_eq!(second.pop().unwrap().unwrap().seq(), 5);
    assert_eq!(first.stats().unwrap().head_seq, 6);
    drop((first, second));
    let reopened = Queue::open(dir.path(), shared(SyncPolicy::Always)).unwrap();
    assert_eq!(reopened.len(), 0);
    assert!(reopened.pop().unwrap().is_none());
}

#[test]
fn a_handle_follows_what_another_did_to_records_it_had_read() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let options = shared_jobs(sync, Duration::from_secs(3600));
        let first = Queue::open(dir.path(), options.clone()).unwrap();
        let second = Queue::open(dir.path(), options).unwrap();
        for seq in 0..5u64 {
            first.push(&payload_for(seq)).unwrap();
        }
        // The first handle holds 0 and has read 1 (tracked, ready) behind it.
        let zero = first.try_recv().unwrap().unwrap();
        assert_eq!(first.peek().unwrap().unwrap().seq(), 1);
        // The second leases 1 and releases it: the first sees its delivery count.
        let one = second.try_recv().unwrap().unwrap();
        assert_eq!(one.seq(), 1);
        one.nack().unwrap();
        let one = first.try_recv().unwrap().unwrap();
        assert_eq!((one.seq(), one.deliveries()), (1, 2));
        one.nack().unwrap();
        // The second leases 1 again: the first, which had it ready, leaves it alone.
        let one = second.try_recv().unwrap().unwrap();
        assert_eq!((one.seq(), one.deliveries()), (1, 3));
        assert_eq!(first.peek().unwrap().unwrap().seq(), 2);
        // The second acks 1 (beyond the head, held by 0): the first never pops it.
        one.ack().unwrap();
        assert_eq!(first.pop().unwrap().unwrap().seq(), 2);
        // The first acks 0: the head moves over 0 to 2, in both.
        zero.ack().unwrap();
        assert_eq!(second.stats().unwrap().head_seq, 3);
        assert_eq!(second.pop().unwrap().unwrap().seq(), 3);
        assert_eq!(first.pop().unwrap().unwrap().seq(), 4);
        assert_eq!((first.len(), second.len()), (0, 0));
    }
}

/// Bounds across handles (`max_records`, `max_bytes` on a shared queue): every handle checks
/// the one usage in the control file, as processes do.
mod bounds {
    use std::sync::mpsc;
    use std::time::Duration;

    use diskspool::format::control::ROOM_SLEEPERS;
    use diskspool::format::frame::frame_len;
    use diskspool::format::layout::CONTROL_FILE_NAME;
    use diskspool::{Error, Options, Overflow, Queue, SyncPolicy};

    use super::shared;

    /// Records of 10 bytes: 10 fit the byte bound of `bounded`.
    const RECORD: &[u8] = b"0123456789";

    fn bounded(overflow: Overflow, sync: SyncPolicy) -> Options {
        shared(sync)
            .max_records(5)
            .max_bytes(10 * frame_len(RECORD.len()) as u64)
            .overflow(overflow)
    }

    /// The usage a handle checks pushes against (records, bytes): what a batch that can never
    /// fit is refused with (nothing is written).
    fn usage(queue: &Queue) -> (u64, u64) {
        let batch = vec![RECORD; 6];
        match queue.push_batch(&batch) {
            Err(Error::Full { records, bytes, .. }) => (records, bytes),
            other => panic!("expected Full, got {other:?}"),
        }
    }

    fn bytes_of(records: u64) -> u64 {
        records * frame_len(RECORD.len()) as u64
    }

    #[test]
    fn a_push_in_one_handle_is_refused_when_another_filled_the_queue() {
        for sync in [SyncPolicy::Never, SyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let a = Queue::open(dir.path(), bounded(Overflow::Reject, sync)).unwrap();
            let b = Queue::open(dir.path(), bounded(Overflow::Reject, sync)).unwrap();
            let c = Queue::open(dir.path(), bounded(Overflow::Reject, sync)).unwrap();
            for _ in 0..5 {
                a.push(RECORD).unwrap();
            }
            match b.push(RECORD) {
                Err(Error::Full {
                    records: 5,
                    max_records: Some(5),
                    batch_records: 1,
                    ..
                }) => {}
                other => panic!("expected Full, got {other:?}"),
            }
            assert_eq!(c.pop().unwrap().unwrap().seq(), 0);
            assert_eq!(b.push(RECORD).unwrap(), 5);
            assert!(matches!(a.push(RECORD), Err(Error::Full { .. })));
            // A record handed out still counts; its ack gives the room back.
            let delivery = c.try_recv().unwrap().unwrap();
            assert!(matches!(b.push(RECORD), Err(Error::Full { .. })));
            delivery.ack().unwrap();
            assert_eq!(a.push(RECORD).unwrap(), 6);
            // Every handle sees the same usage, and it agrees with `len` and `stats`.
            for handle in [&a, &b, &c] {
                assert_eq!(usage(handle), (5, bytes_of(5)));
                assert_eq!(handle.len(), 5);
                let stats = handle.stats().unwrap();
                assert_eq!((stats.len, stats.live_bytes), (5, bytes_of(5)));
            }
            // Out of order: the bound counts what is not consumed, wherever the head is.
            let first = c.try_recv().unwrap().unwrap();
            let second = a.try_recv().unwrap().unwrap();
            second.ack().unwrap();
            assert_eq!(usage(&b), (4, bytes_of(4)));
            b.push(RECORD).unwrap();
            assert!(matches!(c.push(RECORD), Err(Error::Full { .. })));
            first.ack().unwrap();
            assert_eq!(usage(&c), (4, bytes_of(4)));
            while b.pop().unwrap().is_some() {}
            for handle in [&a, &b, &c] {
                assert_eq!(usage(handle), (0, 0), "{sync:?}");
                assert_eq!(handle.len(), 0);
            }
        }
    }

    #[test]
    fn the_byte_bound_holds_across_handles() {
        let dir = tempfile::tempdir().unwrap();
        let options = shared(SyncPolicy::Never).max_bytes(3 * frame_len(100) as u64);
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        let b = Queue::open(dir.path(), options).unwrap();
        a.push(&[1; 100]).unwrap();
        a.push(&[2; 150]).unwrap();
        match b.push(&[3; 100]) {
            Err(Error::Full { bytes, .. }) => {
                assert_eq!(bytes, (frame_len(100) + frame_len(150)) as u64)
            }
            other => panic!("expected Full, got {other:?}"),
        }
        b.push(&[3; 40]).unwrap();
        assert_eq!(a.pop().unwrap().unwrap().payload(), &[1; 100]);
        b.push(&[4; 100]).unwrap();
    }

    #[test]
    fn drop_oldest_drops_through_any_handle() {
        let dir = tempfile::tempdir().unwrap();
        let options = bounded(Overflow::DropOldest, SyncPolicy::Never);
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        let b = Queue::open(dir.path(), options.clone()).unwrap();
        let c = Queue::open(dir.path(), options).unwrap();
        for _ in 0..5 {
            a.push(RECORD).unwrap();
        }
        // C consumed once: its reader is behind what B drops.
        assert_eq!(c.pop().unwrap().unwrap().seq(), 0);
        a.push(RECORD).unwrap();
        // Full: B's pushes drop 1 and 2.
        assert_eq!(b.push(RECORD).unwrap(), 6);
        assert_eq!(b.push(RECORD).unwrap(), 7);
        for handle in [&a, &b, &c] {
            assert_eq!(handle.len(), 5);
            assert_eq!(usage(handle), (5, bytes_of(5)));
        }
        let left: Vec<u64> = std::iter::from_fn(|| c.pop().unwrap().map(|r| r.seq())).collect();
        assert_eq!(left, vec![3, 4, 5, 6, 7]);
        assert_eq!(
            b.stats()
                .unwrap()
                .totals
                .unwrap()
                .discarded(diskspool::DiscardReason::Overflow),
            2
        );
    }

    /// The processes waiting for room (`room_sleepers` in the control file).
    fn room_sleepers(dir: &std::path::Path) -> u32 {
        let bytes = std::fs::read(dir.join(CONTROL_FILE_NAME)).unwrap();
        u32::from_ne_bytes(bytes[ROOM_SLEEPERS..ROOM_SLEEPERS + 4].try_into().unwrap())
    }

    #[test]
    fn a_blocked_push_is_woken_by_a_pop_in_another_handle() {
        for sync in [SyncPolicy::Never, SyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let a = Queue::open(dir.path(), bounded(Overflow::Block, sync)).unwrap();
            let b = Queue::open(dir.path(), bounded(Overflow::Block, sync)).unwrap();
            let c = Queue::open(dir.path(), bounded(Overflow::Block, sync)).unwrap();
            for _ in 0..5 {
                a.push(RECORD).unwrap();
            }
            // Nobody consumes: a wait with a deadline gives up, having written nothing.
            assert!(matches!(
                b.push_timeout(RECORD, Duration::from_millis(20)),
                Err(Error::Full { records: 5, .. })
            ));
            let (pushed, returned) = mpsc::channel();
            std::thread::scope(|scope| {
                let blocked = scope.spawn(|| {
                    let seq = b.push(b"waited").unwrap();
                    pushed.send(seq).unwrap();
                });
                // It sleeps on the room word (not a timed guess: the count in the control file).
                while room_sleepers(dir.path()) == 0 {
                    assert!(!blocked.is_finished(), "the push returned without room");
                    std::thread::yield_now();
                }
                assert!(returned.try_recv().is_err(), "the push waits for room");
                assert_eq!(c.pop().unwrap().unwrap().seq(), 0);
                assert_eq!(returned.recv().unwrap(), 5);
            });
            assert_eq!(usage(&a), (5, bytes_of(4) + frame_len(6) as u64));
            let last: Vec<Vec<u8>> =
                std::iter::from_fn(|| a.pop().unwrap().map(|r| r.payload().to_vec())).collect();
            assert_eq!(last.last().unwrap(), b"waited");
        }
    }

    #[test]
    fn the_usage_survives_handles_closing_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let options = bounded(Overflow::Reject, SyncPolicy::Never);
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        for _ in 0..4 {
            a.push(RECORD).unwrap();
        }
        {
            let b = Queue::open(dir.path(), options.clone()).unwrap();
            let delivery = b.try_recv().unwrap().unwrap();
            assert_eq!(delivery.seq(), 0);
            assert_eq!(b.try_recv().unwrap().unwrap().seq(), 1);
            delivery.ack().unwrap();
            // B closes holding 1 leased: it still counts.
        }
        assert_eq!(usage(&a), (3, bytes_of(3)));
        drop(a);
        // Every handle gone: the first opener counts from the files (1 acknowledged beyond
        // nothing, 3 left, the lease gone with its process's handle but still unconsumed).
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        let b = Queue::open(dir.path(), options).unwrap();
        assert_eq!(usage(&b), (3, bytes_of(3)));
        a.push(RECORD).unwrap();
        a.push(RECORD).unwrap();
        assert!(matches!(b.push(RECORD), Err(Error::Full { .. })));
        assert_eq!(b.purge().unwrap(), 5);
        assert_eq!(usage(&a), (0, 0));
        for _ in 0..5 {
            b.push(RECORD).unwrap();
        }
        assert!(matches!(a.push(RECORD), Err(Error::Full { .. })));
    }

    #[test]
    fn a_reopen_counts_records_acknowledged_out_of_order_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let options = bounded(Overflow::Reject, SyncPolicy::Never).lease(Duration::from_secs(60));
        {
            let a = Queue::open(dir.path(), options.clone()).unwrap();
            for _ in 0..5 {
                a.push(RECORD).unwrap();
            }
            let held = a.try_recv().unwrap().unwrap();
            let later = a.try_recv().unwrap().unwrap();
            later.ack().unwrap();
            assert_eq!(usage(&a), (4, bytes_of(4)));
            drop(held);
        }
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        let b = Queue::open(dir.path(), options).unwrap();
        for handle in [&a, &b] {
            assert_eq!(usage(handle), (4, bytes_of(4)));
        }
        // Reading across the acknowledged record gives nothing back twice.
        let seqs: Vec<u64> = std::iter::from_fn(|| b.pop().unwrap().map(|r| r.seq())).collect();
        assert_eq!(seqs, vec![0, 2, 3, 4]);
        assert_eq!(usage(&a), (0, 0));
        for _ in 0..5 {
            a.push(RECORD).unwrap();
        }
        assert!(matches!(b.push(RECORD), Err(Error::Full { .. })));
    }

    #[test]
    fn a_record_expired_in_two_handles_is_counted_once_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let options = bounded(Overflow::Reject, SyncPolicy::Never).lease(Duration::from_secs(60));
        let a = Queue::open(dir.path(), options.clone()).unwrap();
        let b = Queue::open(dir.path(), options).unwrap();
        a.push(RECORD).unwrap();
        let short = diskspool::Push::new().ttl(Duration::from_micros(1));
        a.push_with(RECORD, short).unwrap();
        a.push(RECORD).unwrap();
        // Longer than the TTL: the monotonic wait makes the record expired, whatever the load.
        std::thread::sleep(Duration::from_millis(2));
        // A discards the expired record behind its lease (beyond the head, nothing written);
        // B reaches it too, and discards it again.
        let held = a.try_recv().unwrap().unwrap();
        let second = a.try_recv().unwrap().unwrap();
        assert_eq!((held.seq(), second.seq()), (0, 2));
        assert!(b.try_recv().unwrap().is_none());
        held.ack().unwrap();
        second.ack().unwrap();
        // Drained: the usage is nothing, in every handle, and the bound takes exactly 5 again.
        for handle in [&a, &b] {
            assert_eq!(usage(handle), (0, 0));
        }
        for _ in 0..5 {
            b.push(RECORD).unwrap();
        }
        assert!(matches!(
            a.push(RECORD),
            Err(Error::Full { records: 5, .. })
        ));
    }
}

mod dedup {
    use std::time::Duration;

    use diskspool::{Push, Queue, SyncPolicy};

    use super::shared;

    fn with_id(id: &str) -> Push {
        Push::new().dedup_id(id)
    }

    #[test]
    fn an_id_pushed_in_one_handle_is_deduplicated_in_the_others() {
        for sync in [SyncPolicy::Never, SyncPolicy::Always] {
            let dir = tempfile::tempdir().unwrap();
            let options = shared(sync).dedup_window(Duration::from_secs(3600));
            let first = Queue::open(dir.path(), options.clone()).unwrap();
            let second = Queue::open(dir.path(), options.clone()).unwrap();
            assert_eq!(first.push_with(b"order 1", with_id("o1")).unwrap(), 0);
            // A retry from another process finds the first push: nothing written.
            assert_eq!(second.push_with(b"order 1", with_id("o1")).unwrap(), 0);
            assert_eq!(second.push_with(b"order 2", with_id("o2")).unwrap(), 1);
            assert_eq!(first.push_with(b"order 2", with_id("o2")).unwrap(), 1);
            first.push(b"plain").unwrap();
            assert_eq!(first.len(), 3, "{sync:?}");
            assert_eq!(second.stats().unwrap().totals.unwrap().deduplicated, 1);
            // Consumed, still remembered within the window, by a handle opened later too.
            assert_eq!(second.pop().unwrap().unwrap().payload(), b"order 1");
            let third = Queue::open(dir.path(), options).unwrap();
            assert_eq!(third.push_with(b"order 1", with_id("o1")).unwrap(), 0);
            assert_eq!(third.push_with(b"order 3", with_id("o3")).unwrap(), 3);
            assert_eq!(first.push_with(b"order 3", with_id("o3")).unwrap(), 3);
            assert_eq!(first.len(), 3, "{sync:?}");
        }
    }

    /// Many ids through two handles, the window short enough that the log is rewritten (a new
    /// file, by one handle) again and again: the other handle reads the new file, and every id
    /// still in the window is deduplicated whichever handle pushed it.
    #[test]
    fn handles_follow_each_others_rewrites_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let options = shared(SyncPolicy::Never).dedup_window(Duration::from_millis(1));
        let first = Queue::open(dir.path(), options.clone()).unwrap();
        let second = Queue::open(dir.path(), options).unwrap();
        let handles = [&first, &second];
        let mut expected = 0u64;
        for round in 0..3000u64 {
            let id = format!("id-{round}");
            let pushed = handles[(round % 2) as usize]
                .push_with(b"x", with_id(&id))
                .unwrap();
            assert_eq!(pushed, expected);
            // At once, from the other handle: deduplicated, unless this machine was slow
            // enough for the 1 ms window to lapse in between (then pushed again, once).
            let again = handles[((round + 1) % 2) as usize]
                .push_with(b"x", with_id(&id))
                .unwrap();
            assert!(
                again == expected || again == expected + 1,
                "{round}: {again}"
            );
            expected = again + 1;
        }
        assert_eq!(first.len(), expected);
        let log_len = std::fs::metadata(dir.path().join("dedup")).unwrap().len();
        assert!(
            log_len < 3000 * 32,
            "the log was rewritten: {log_len} bytes"
        );
    }
}

/// A record is handed out only once its push committed it, also by the handle writing it:
/// else a consumer could pop a record that a producer killed before its commit leaves
/// uncommitted, which the next writer cuts and whose number it gives to another record (that
/// one then counts as popped: lost), and another handle's consumer would find the head past
/// the tail it knows ("the head ... is not in this segment").
#[test]
fn a_record_is_not_handed_out_before_its_push_committed_it_even_by_its_own_handle() {
    let dir = tempfile::tempdir().unwrap();
    let queue = std::sync::Arc::new(Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap());
    let other = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    // Both handles caught up with the tail: the pops below need no writer (the stopped
    // producer holds its handle's).
    queue.push(b"before").unwrap();
    assert_eq!(other.pop().unwrap().unwrap().payload(), b"before");
    assert!(queue.pop().unwrap().is_none());
    let (written, on_written) = std::sync::mpsc::channel();
    let (resume, on_resume) = std::sync::mpsc::channel::<()>();
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            // Stopped between the write and the commit (a kill there cuts the record).
            testkit::on_crash_points_in_this_thread(Some(Box::new(move |point: &str| {
                if point == "shared.written" {
                    written.send(()).unwrap();
                    on_resume.recv().unwrap();
                }
            })));
            queue.push(b"job").unwrap()
        })
    };
    on_written.recv().unwrap();
    assert!(queue.pop().unwrap().is_none(), "popped before its commit");
    assert!(queue.peek().unwrap().is_none(), "seen before its commit");
    assert!(other.pop().unwrap().is_none());
    resume.send(()).unwrap();
    assert_eq!(producer.join().unwrap(), 1);
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"job");
    assert_eq!(other.len(), 0);
}

/// The first handle of a shared queue has it to itself (solo) until another opens it: then
/// what it did alone (pushes across segments, pops, leases, an acknowledgement out of order)
/// is what the other handle finds, and both go on as one queue.
#[test]
fn a_handle_alone_is_solo_until_another_opens_and_hands_over_what_it_did() {
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let first = Queue::open(dir.path(), shared(sync).lease(hour)).unwrap();
        assert!(testkit::is_solo(&first), "{sync:?}");
        // 16 KiB segments: these records fill several.
        let count = 400;
        for n in 0..count {
            assert_eq!(first.push(&payload_for(n)).unwrap(), n);
        }
        for n in 0..3 {
            assert_eq!(first.pop().unwrap().unwrap().seq(), n);
        }
        let held = first.try_recv().unwrap().unwrap();
        let acked = first.try_recv().unwrap().unwrap();
        assert_eq!((held.seq(), acked.seq()), (3, 4));
        acked.ack().unwrap();
        assert!(testkit::is_solo(&first));

        let second = Queue::open(dir.path(), shared(sync).lease(hour)).unwrap();
        assert!(!testkit::is_solo(&first) && !testkit::is_solo(&second));
        // 3 popped, 4 acknowledged; 3 leased, still counted.
        assert_eq!(second.len(), count - 4);
        assert_eq!(first.len(), count - 4);
        // The lease taken alone holds for the other handle.
        let next = second.try_recv().unwrap().unwrap();
        assert_eq!(next.seq(), 5);
        assert_eq!(next.payload(), payload_for(5));
        next.ack().unwrap();
        held.ack().unwrap();
        assert_eq!(first.push(b"after").unwrap(), count);
        assert_eq!(second.push(b"and after").unwrap(), count + 1);
        let mut seqs = Vec::new();
        loop {
            let popped = match seqs.len() % 2 {
                0 => first.pop().unwrap(),
                _ => second.pop().unwrap(),
            };
            let Some(record) = popped.or_else(|| second.pop().unwrap()) else {
                break;
            };
            if record.seq() < count {
                assert_eq!(record.payload(), payload_for(record.seq()));
            }
            seqs.push(record.seq());
        }
        assert_eq!(seqs, (6..count + 2).collect::<Vec<_>>(), "{sync:?}");
        assert_eq!((first.len(), second.len()), (0, 0));
    }
}

/// A handle stays solo only while alone: the second handle of a process, a handle under
/// `Always` or with a bound, and every handle after the first are not.
#[test]
fn only_the_first_handle_of_an_unbounded_queue_not_under_always_is_solo() {
    let dir = tempfile::tempdir().unwrap();
    let always = Queue::open(dir.path(), shared(SyncPolicy::Always)).unwrap();
    assert!(!testkit::is_solo(&always));
    let never = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    assert!(!testkit::is_solo(&never));
    drop((always, never));
    // A bound is a setting of the queue: another directory.
    let bounded_dir = tempfile::tempdir().unwrap();
    let bounded = Queue::open(
        bounded_dir.path(),
        shared(SyncPolicy::Never).max_records(10),
    )
    .unwrap();
    assert!(!testkit::is_solo(&bounded));
    let alone = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    assert!(testkit::is_solo(&alone));
    // A push with a deduplication id keeps its log's place in the control file: it leaves
    // solo; alone, the handle becomes solo again after it, and the id is still known.
    let once = || diskspool::Push::new().dedup_id("id");
    let seq = alone.push_with(b"once", once()).unwrap();
    testkit::enter_solo_if_alone(&alone).unwrap();
    assert!(testkit::is_solo(&alone));
    assert_eq!(alone.push_with(b"once", once()).unwrap(), seq);
    assert_eq!(alone.len(), 1);
    // A handle under `Always`, left alone, does not become solo.
    let always = Queue::open(dir.path(), shared(SyncPolicy::Always)).unwrap();
    assert!(!testkit::is_solo(&alone));
    drop(alone);
    assert!(!testkit::enter_solo_if_alone(&always).unwrap());
    assert!(!testkit::is_solo(&always));
    assert_eq!(always.pop().unwrap().unwrap().payload(), b"once");
}

/// A handle that left solo becomes solo again once every other handle is gone: it takes up
/// what they pushed and consumed, ends the leases they left, and hands over to the next
/// opener as a first opener does.
#[test]
fn a_handle_left_alone_becomes_solo_again_and_hands_over_again() {
    for sync in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_millis(5)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = || shared(sync).lease(Duration::from_secs(3600));
        let first = Queue::open(dir.path(), options()).unwrap();
        let second = Queue::open(dir.path(), options()).unwrap();
        assert!(!testkit::is_solo(&first));
        assert!(!testkit::enter_solo_if_alone(&first).unwrap(), "{sync:?}");
        // 16 KiB segments: these records fill several.
        let count = 300;
        for n in 0..count {
            let queue = if n % 2 == 0 { &first } else { &second };
            assert_eq!(queue.push(&payload_for(n)).unwrap(), n);
        }
        for n in 0..3 {
            assert_eq!(first.pop().unwrap().unwrap().seq(), n);
        }
        for n in 3..5 {
            assert_eq!(second.pop().unwrap().unwrap().seq(), n);
        }
        // A lease the second handle takes with it, and one the first keeps throughout.
        let left = second.try_recv().unwrap().unwrap();
        assert_eq!(left.seq(), 5);
        std::mem::forget(left);
        let kept = first.try_recv().unwrap().unwrap();
        assert_eq!(kept.seq(), 6);
        drop(second);
        // Solo again: by this call, or by its solo thread (which the drop woke).
        testkit::enter_solo_if_alone(&first).unwrap();
        assert!(testkit::is_solo(&first), "{sync:?}");
        // The gone handle's lease ended: its record is handed out again.
        let back = first.try_recv().unwrap().unwrap();
        assert_eq!((back.seq(), back.deliveries()), (5, 2), "{sync:?}");
        let totals = first.stats().unwrap().totals.unwrap();
        assert_eq!(
            totals.takeovers(diskspool::TakeoverKind::Lease),
            1,
            "{sync:?}: the lease taken over is counted"
        );
        assert_eq!(back.payload(), payload_for(5));
        back.ack().unwrap();
        for n in 7..10 {
            assert_eq!(first.pop().unwrap().unwrap().seq(), n);
        }
        assert_eq!(first.push(b"solo again").unwrap(), count);
        assert!(testkit::is_solo(&first));
        // The next opener finds what the solo handle did.
        let third = Queue::open(dir.path(), options()).unwrap();
        assert!(!testkit::is_solo(&first) && !testkit::is_solo(&third));
        // 9 consumed (0..5 and 7..10 popped, 5 acknowledged); 6 leased, still counted.
        assert_eq!(third.len(), count + 1 - 9, "{sync:?}");
        let next = third.try_recv().unwrap().unwrap();
        assert_eq!(next.seq(), 10, "{sync:?}: the kept lease holds");
        next.ack().unwrap();
        kept.ack().unwrap();
        let mut seqs = Vec::new();
        while let Some(record) = third.pop().unwrap() {
            if record.seq() < count {
                assert_eq!(record.payload(), payload_for(record.seq()));
            }
            seqs.push(record.seq());
        }
        assert_eq!(seqs, (11..=count).collect::<Vec<_>>(), "{sync:?}");
        assert_eq!((first.len(), third.len()), (0, 0));
    }
}

/// A handle whose threads push and pop while other handles come and go, again and again:
/// it leaves solo for each and becomes solo again after each, and every record is popped
/// once, by one of them, each popper seeing them in order.
#[test]
fn a_busy_handle_solo_again_and_again_loses_and_repeats_no_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let first = Arc::new(Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap());
    let count = 100_000u64;
    let producer = {
        let first = first.clone();
        std::thread::spawn(move || {
            for n in 0..count {
                assert_eq!(first.push(&n.to_le_bytes()).unwrap(), n);
            }
        })
    };
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (first, done) = (first.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                match first.pop().unwrap() {
                    Some(record) => {
                        assert_eq!(record.payload(), record.seq().to_le_bytes());
                        seqs.push(record.seq());
                    }
                    None if finished => return seqs,
                    None => std::thread::yield_now(),
                }
            }
        })
    };
    let mut theirs = Vec::new();
    let mut solo_again = 0;
    while !producer.is_finished() {
        let other = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
        assert!(!testkit::is_solo(&first));
        let mut seqs = Vec::new();
        for _ in 0..20 {
            if let Some(record) = other.pop().unwrap() {
                assert_eq!(record.payload(), record.seq().to_le_bytes());
                seqs.push(record.seq());
            }
        }
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
        theirs.extend(seqs);
        drop(other);
        testkit::enter_solo_if_alone(&first).unwrap();
        solo_again += usize::from(testkit::is_solo(&first));
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.join().unwrap();
    done.store(true, Ordering::SeqCst);
    let mine = consumer.join().unwrap();
    assert!(mine.windows(2).all(|pair| pair[0] < pair[1]));
    assert!(solo_again > 0);
    let mut all: Vec<u64> = mine.into_iter().chain(theirs).collect();
    all.sort_unstable();
    assert_eq!(all, (0..count).collect::<Vec<_>>());
}

/// A handle's solo thread makes it solo again by itself once the other handle closes.
#[test]
fn a_handle_becomes_solo_again_by_itself_when_the_other_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    let second = Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap();
    assert!(!testkit::is_solo(&first));
    second.push(b"from the second").unwrap();
    drop(second);
    // The drop wakes the first handle's solo thread at once; its fallback look comes every
    // second. The deadline is far beyond both.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !testkit::is_solo(&first) {
        assert!(std::time::Instant::now() < deadline, "never became solo");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(first.pop().unwrap().unwrap().payload(), b"from the second");
}

/// A solo handle whose threads push and pop while another handle opens: every record is
/// popped once, by one of the two, and each popper sees them in order.
#[test]
fn a_solo_handle_busy_in_several_threads_hands_over_without_losing_or_repeating_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let first = std::sync::Arc::new(Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap());
    assert!(testkit::is_solo(&first));
    let count = 20_000u64;
    let (started, on_start) = std::sync::mpsc::channel();
    let producer = {
        let first = first.clone();
        std::thread::spawn(move || {
            for n in 0..count {
                assert_eq!(first.push(&n.to_le_bytes()).unwrap(), n);
                if n == 1_000 {
                    started.send(()).unwrap();
                }
            }
        })
    };
    let pops = |queue: std::sync::Arc<Queue>,
                done: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                match queue.pop().unwrap() {
                    Some(record) => {
                        assert_eq!(record.payload(), record.seq().to_le_bytes());
                        seqs.push(record.seq());
                    }
                    None if finished => return seqs,
                    None => std::thread::yield_now(),
                }
            }
        })
    };
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let consumer = pops(first.clone(), done.clone());
    on_start.recv().unwrap();
    let second = std::sync::Arc::new(Queue::open(dir.path(), shared(SyncPolicy::Never)).unwrap());
    assert!(!testkit::is_solo(&first));
    let other = pops(second.clone(), done.clone());
    producer.join().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mine, theirs) = (consumer.join().unwrap(), other.join().unwrap());
    for seqs in [&mine, &theirs] {
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "out of order"
        );
    }
    let mut all: Vec<u64> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..count).collect::<Vec<_>>());
    assert_eq!((first.len(), second.len()), (0, 0));
}

/// An opener that comes between the moment the first handle built the control file (solo)
/// and the start of that handle's revoke thread is answered all the same: the thread starts
/// from the revoke word as it was at the build, not as it finds it.
#[test]
fn an_opener_that_comes_before_the_revoke_thread_started_is_answered() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let (opened, on_opened) = mpsc::channel();
    let revoke_word = |path: &std::path::Path| {
        let bytes = std::fs::read(path.join("control")).unwrap();
        let at = diskspool::format::control::REVOKE;
        u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap())
    };
    let hook_path = path.clone();
    testkit::on_crash_points_in_this_thread(Some(Box::new(move |point: &str| {
        if point != "solo.starting" {
            return;
        }
        let before = revoke_word(&hook_path);
        let (dir, opened) = (hook_path.clone(), opened.clone());
        std::thread::spawn(move || {
            let queue = Queue::open(&dir, shared(SyncPolicy::Never));
            // Kept open (sent along): the first handle, alone again, would become solo.
            let _ = opened.send(queue.map(|queue| (queue.len(), queue)));
        });
        // Until the other opener asked (it then waits for this handle).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while revoke_word(&hook_path) == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the opener never asked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    })));
    let first = Queue::open(&path, shared(SyncPolicy::Never));
    testkit::on_crash_points_in_this_thread(None);
    let first = first.unwrap();
    let (len, _second) = on_opened
        .recv_timeout(Duration::from_secs(30))
        .expect("the opener was never answered")
        .unwrap();
    assert_eq!(len, 0);
    assert!(!testkit::is_solo(&first));
    first.push(b"after").unwrap();
    assert_eq!(first.pop().unwrap().unwrap().payload(), b"after");
}
