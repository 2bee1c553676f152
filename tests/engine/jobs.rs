//! At-least-once delivery: recv, ack, nack, retries, leases, dead letters, delays.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use diskspool::{DeadLetter, Error, Options, Queue, SyncPolicy};

use crate::util::{payload_for, push_expected};

fn options() -> Options {
    Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never)
}

/// One stats type: read without the lock, a queue shows what the open queue reports, except
/// the leases, which only the process holding the queue knows.
#[test]
fn stat_without_the_lock_reports_the_open_queues_stats_but_not_its_leases() {
    use diskspool::storage::OsStorage;
    use diskspool::tools::inspect;

    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options().sync(SyncPolicy::Always)).unwrap();
    push_expected(&queue, 60);
    queue.pop_batch(5).unwrap();
    let engine = queue.stats().unwrap();
    let outside = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert!(engine.segments > 1, "the numbers span segments");
    assert!(engine.oldest_enqueued_at.is_some());
    assert_eq!(engine.leased, Some(0));
    assert_eq!(
        outside.leased, None,
        "a lock-free reader cannot know the leases"
    );
    let numbers = |stats: &diskspool::Stats| {
        let positions = (stats.len, stats.head_seq, stats.next_seq, stats.segments);
        (positions, stats.live_bytes, stats.disk_bytes)
    };
    assert_eq!(numbers(&outside), numbers(&engine));
    assert_eq!(outside.oldest_enqueued_at, engine.oldest_enqueued_at);

    // Leased records are still in the queue, for both.
    let leased = [
        queue.try_recv().unwrap().unwrap(),
        queue.try_recv().unwrap().unwrap(),
    ];
    let engine = queue.stats().unwrap();
    let outside = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!((engine.leased, outside.leased), (Some(2), None));
    assert_eq!(numbers(&outside), numbers(&engine));
    drop(leased);
}

#[test]
fn recv_hands_out_in_order_and_ack_removes_for_good() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 3);
        let first = queue.try_recv().unwrap().unwrap();
        assert_eq!((first.seq(), first.deliveries()), (0, 1));
        assert_eq!(first.payload(), payload_for(0));
        let second = queue.try_recv().unwrap().unwrap();
        assert_eq!(second.seq(), 1, "a leased record is not handed out again");
        assert_eq!(queue.len(), 3, "leased records are still in the queue");
        assert_eq!(queue.stats().unwrap().leased, Some(2));
        second.ack().unwrap();
        first.ack().unwrap();
        assert_eq!(queue.len(), 1);
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    let third = queue.try_recv().unwrap().unwrap();
    assert_eq!((third.seq(), third.deliveries()), (2, 1));
    third.ack().unwrap();
    assert!(queue.try_recv().unwrap().is_none());
    assert!(queue.is_empty());
}

#[test]
fn nack_and_drop_make_the_record_available_at_once_with_a_higher_count() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    push_expected(&queue, 2);
    queue.try_recv().unwrap().unwrap().nack().unwrap();
    let again = queue.try_recv().unwrap().unwrap();
    assert_eq!((again.seq(), again.deliveries()), (0, 2));
    drop(again);
    let third = queue.try_recv().unwrap().unwrap();
    assert_eq!((third.seq(), third.deliveries()), (0, 3));
    third.ack().unwrap();
    assert_eq!(queue.try_recv().unwrap().unwrap().seq(), 1);
}

#[test]
fn retry_after_holds_the_record_back_for_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    push_expected(&queue, 2);
    let released_at = Instant::now();
    queue
        .try_recv()
        .unwrap()
        .unwrap()
        .retry_after(Duration::from_millis(300))
        .unwrap();
    let next = queue.try_recv().unwrap().unwrap();
    assert_eq!(
        next.seq(),
        1,
        "the retried record waits; the next one does not"
    );
    next.ack().unwrap();
    let retried = queue
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!((retried.seq(), retried.deliveries()), (0, 2));
    assert!(released_at.elapsed() >= Duration::from_millis(300));
}

#[test]
fn an_expired_lease_hands_the_record_to_the_next_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options().lease(Duration::from_millis(200))).unwrap();
    push_expected(&queue, 1);
    let leased_at = Instant::now();
    let slow = queue.try_recv().unwrap().unwrap();
    assert!(queue.try_recv().unwrap().is_none());
    let again = queue
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert!(leased_at.elapsed() >= Duration::from_millis(200));
    assert_eq!((again.seq(), again.deliveries()), (0, 2));
    assert!(matches!(
        slow.extend(Duration::from_secs(1)),
        Err(Error::LeaseExpired { seq: 0 })
    ));
    // The first receiver's late release changes nothing; the new receiver's ack counts.
    slow.nack().unwrap();
    assert!(queue.try_recv().unwrap().is_none());
    again.ack().unwrap();
    assert!(queue.is_empty());
}

#[test]
fn extend_keeps_a_long_job_leased() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options().lease(Duration::from_millis(150))).unwrap();
    push_expected(&queue, 1);
    let long_job = queue.try_recv().unwrap().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        long_job.extend(Duration::from_millis(150)).unwrap();
        assert!(
            queue.try_recv().unwrap().is_none(),
            "an extended lease holds"
        );
        std::thread::sleep(Duration::from_millis(40));
    }
    long_job.ack().unwrap();
    assert!(queue
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());
}

#[test]
fn max_deliveries_moves_the_record_to_the_dead_letter_queue_intact() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("jobs");
    let queue = Queue::open(&dir, options().max_deliveries(3)).unwrap();
    push_expected(&queue, 2);
    for round in 1..=3 {
        let delivery = queue.try_recv().unwrap().unwrap();
        assert_eq!((delivery.seq(), delivery.deliveries()), (0, round));
        delivery.nack().unwrap();
    }
    // Record 0 went to the dead-letter queue on its third release; record 1 is next.
    let next = queue.try_recv().unwrap().unwrap();
    assert_eq!(next.seq(), 1);
    next.ack().unwrap();
    assert!(queue.try_recv().unwrap().is_none());
    assert!(queue.is_empty());
    drop(queue);

    let dead = Queue::open(root.path().join("jobs.dead"), options()).unwrap();
    let record = dead.pop().unwrap().unwrap();
    let letter = DeadLetter::decode(record.payload()).unwrap();
    assert_eq!(letter.reason, diskspool::DeadLetterReason::Deliveries);
    assert_eq!(letter.original_seq, 0);
    assert_eq!(letter.deliveries, 3);
    assert_eq!(letter.payload, payload_for(0));
    assert!(dead.pop().unwrap().is_none());
}

/// Found by the simulation of several processes (seed 2 of its dead-letter runs): the
/// dead-letter queue took the queue's `max_record_size`, which the envelope (24 bytes before the
/// payload) overran, so a record of the largest size accepted could never be moved: every
/// release that used up its deliveries failed, and it stayed in the queue for good.
#[test]
fn a_record_of_the_largest_size_accepted_moves_to_the_dead_letter_queue() {
    // An explicit limit, and the default one (what the segment holds).
    for limit in [Some(100), None] {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("jobs");
        let mut queue_options = options().max_deliveries(1);
        if let Some(limit) = limit {
            queue_options = queue_options.max_record_size(limit);
        }
        let largest = queue_options.get_max_record_size();
        let queue = Queue::open(&dir, queue_options).unwrap();
        let payload = vec![7u8; largest];
        queue.push(&payload).unwrap();
        queue.try_recv().unwrap().unwrap().nack().unwrap();
        assert!(queue.is_empty(), "limit {limit:?}");
        drop(queue);

        let dead = Queue::open(root.path().join("jobs.dead"), options()).unwrap();
        let record = dead.pop().unwrap().unwrap();
        let letter = DeadLetter::decode(record.payload()).unwrap();
        assert_eq!(letter.payload, &payload[..], "limit {limit:?}");
    }
}

/// Found by the simulation of several processes (seed 89 of its dead-letter runs): a process
/// killed while it created the dead-letter queue left the lock files of an open in its
/// directory and no settings yet; every later move then refused the directory ("holds no
/// queue"), and every receive that reached a record with its deliveries used up failed, in
/// every process, for good. What an open killed that early leaves is a queue being created.
#[test]
fn a_dead_letter_queue_whose_creation_was_cut_by_a_kill_is_used() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("jobs");
    let letters = root.path().join("jobs.dead");
    std::fs::create_dir(&letters).unwrap();
    for name in ["lock", "open.lock"] {
        std::fs::write(letters.join(name), b"").unwrap();
    }
    let queue = Queue::open(&dir, options().max_deliveries(1)).unwrap();
    queue.push(b"spent").unwrap();
    queue.try_recv().unwrap().unwrap().nack().unwrap();
    assert!(queue.is_empty());
    drop(queue);

    let dead = Queue::open(&letters, options()).unwrap();
    let record = dead.pop().unwrap().unwrap();
    assert_eq!(
        DeadLetter::decode(record.payload()).unwrap().payload,
        b"spent"
    );
}

#[test]
fn expired_leases_count_towards_max_deliveries() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("q");
    let options = options()
        .lease(Duration::from_millis(50))
        .max_deliveries(2)
        .dead_letter_dir("poison");
    let queue = Queue::open(&dir, options.clone()).unwrap();
    queue.push(b"crashes every worker").unwrap();
    for _ in 0..2 {
        let delivery = queue
            .recv_timeout(Duration::from_secs(30))
            .unwrap()
            .unwrap();
        std::mem::forget(delivery); // a worker that dies without releasing
    }
    assert!(queue
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());
    assert!(queue.is_empty());
    drop(queue); // closes the dead-letter queue it holds open
    assert!(!root.path().join("q.dead").exists());
    let dead = Queue::open(root.path().join("poison"), options).unwrap();
    let record = dead.pop().unwrap().unwrap();
    assert_eq!(
        DeadLetter::decode(record.payload()).unwrap().payload,
        b"crashes every worker"
    );
}

#[test]
fn delays_are_honoured_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pushed_at = SystemTime::now();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        queue
            .push_delayed(b"later", Duration::from_millis(400))
            .unwrap();
        queue.push(b"now").unwrap();
        assert_eq!(
            queue.pop().unwrap().unwrap().payload(),
            b"now",
            "not held up"
        );
        assert!(queue.pop().unwrap().is_none());
        assert!(queue.peek().unwrap().is_none());
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(
        queue.try_recv().unwrap().is_none(),
        "still delayed after the restart"
    );
    let delivery = queue
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(delivery.payload(), b"later");
    let not_before = delivery.record().not_before().unwrap();
    assert!(not_before >= pushed_at + Duration::from_millis(400));
    assert!(SystemTime::now() >= not_before);
    delivery.ack().unwrap();
    assert!(queue.is_empty());
}

#[test]
fn out_of_order_acks_and_delivery_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 10);
        let deliveries = queue.try_recv_batch(10).unwrap();
        assert_eq!(deliveries.len(), 10);
        for delivery in deliveries {
            if delivery.seq() % 2 == 1 {
                delivery.ack().unwrap();
            } else {
                std::mem::forget(delivery); // the process dies holding it
            }
        }
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert_eq!(queue.len(), 5);
    let again = queue.try_recv_batch(100).unwrap();
    let seqs: Vec<u64> = again.iter().map(|delivery| delivery.seq()).collect();
    assert_eq!(
        seqs,
        [0, 2, 4, 6, 8],
        "acked records are never delivered again"
    );
    assert!(again.iter().all(|delivery| delivery.deliveries() == 2));
    for delivery in again {
        assert_eq!(delivery.payload(), payload_for(delivery.seq()));
        delivery.ack().unwrap();
    }
    assert!(queue.is_empty());
}

#[test]
fn pop_and_recv_share_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    push_expected(&queue, 4);
    let leased = queue.try_recv().unwrap().unwrap();
    assert_eq!(queue.peek().unwrap().unwrap().seq(), 1);
    assert_eq!(
        queue.pop().unwrap().unwrap().seq(),
        1,
        "pop skips the leased record"
    );
    leased.nack().unwrap();
    assert_eq!(
        queue.pop().unwrap().unwrap().seq(),
        0,
        "a released record comes first"
    );
    assert_eq!(queue.pop_batch(10).unwrap().len(), 2);
    assert!(queue.is_empty());
}

#[test]
fn the_ack_log_stays_small_however_many_records_are_acked() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options().segment_size(1 << 20)).unwrap();
    let total = 30_000u64;
    queue.push_batch((0..total).map(|_| [1u8; 8])).unwrap();
    let mut acked = 0;
    while acked < total {
        // Ack each batch backwards: every ack but the last is out of order.
        let mut batch = queue.try_recv_batch(64).unwrap();
        acked += batch.len() as u64;
        while let Some(delivery) = batch.pop() {
            delivery.ack().unwrap();
        }
    }
    assert!(queue.is_empty());
    let acks = std::fs::metadata(dir.path().join("acks")).unwrap().len();
    // Each record left a delivery and an ack entry: 60,000 entries of 24 bytes if never
    // rewritten. The rewrite keeps the file at a few thousand entries.
    assert!(acks < 24 * 8_000, "ack log is {acks} bytes");
    drop(queue);
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(queue.try_recv().unwrap().is_none());
}

/// Under `Always` an ack at the head goes into the ack log too (the head is synced lazily): the
/// rewrite, which syncs the head first, keeps the log small all the same, and a power loss after
/// it brings no acknowledged job back. The zeros prepared ahead of the log's tail are cut at open
/// without being reported as a torn entry.
#[test]
fn the_ack_log_stays_small_under_always_with_acks_at_the_head() {
    let sim = diskspool::SimStorage::new(1);
    let options = || {
        Options::default()
            .segment_size(1 << 20)
            .sync(SyncPolicy::Always)
            .storage(Arc::new(sim.clone()))
    };
    let queue = Queue::open("/q", options()).unwrap();
    let total = 20_000u64;
    queue.push_batch((0..total).map(|_| [1u8; 8])).unwrap();
    for _ in 0..total {
        queue.try_recv().unwrap().unwrap().ack().unwrap();
    }
    assert!(queue.is_empty());
    let acks = sim
        .read_file(std::path::Path::new("/q/acks"))
        .unwrap()
        .len();
    assert!(acks < 24 * 8_000, "ack log is {acks} bytes");
    sim.power_loss();
    drop(queue);
    let queue = Queue::open("/q", options()).unwrap();
    assert_eq!(queue.recovery_report().truncated, []);
    assert!(queue.try_recv().unwrap().is_none());
}

#[test]
fn many_workers_ack_out_of_order_and_every_job_is_done_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), options()).unwrap());
    let total = 2_000u64;
    push_expected(&queue, total);
    let done: Vec<u64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let queue = queue.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while let Some(delivery) =
                        queue.recv_timeout(Duration::from_millis(50)).unwrap()
                    {
                        assert_eq!(delivery.payload(), payload_for(delivery.seq()));
                        if (delivery.seq() + worker) % 5 == 0 && delivery.deliveries() == 1 {
                            delivery.nack().unwrap(); // fails once, retried by someone
                        } else {
                            mine.push(delivery.seq());
                            delivery.ack().unwrap();
                        }
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap())
            .collect()
    });
    let unique: BTreeSet<u64> = done.iter().copied().collect();
    assert_eq!(done.len() as u64, total, "every job acked exactly once");
    assert_eq!(unique, (0..total).collect());
    assert!(queue.is_empty());
}

/// Acknowledges records 1..100 out of order (0 stays leased, so the head stays at 0 and every
/// A closed queue whose records 1..100 were acknowledged out of order (record 0 stays, so every
/// ack is in the ack log), with a bit flipped in an entry past the middle of `acks`: valid
/// entries follow it. Returns the directory, the ack log's path, its bytes now, and the damaged
/// entry's offset.
fn acks_with_a_damaged_entry(
    options: Options,
) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options).unwrap();
        push_expected(&queue, 100);
        let mut deliveries = queue.try_recv_batch(100).unwrap();
        assert_eq!(deliveries.len(), 100);
        let first = deliveries.remove(0);
        for delivery in deliveries.into_iter().rev() {
            delivery.ack().unwrap();
        }
        drop(first);
    }
    let acks = dir
        .path()
        .join(diskspool::format::layout::ACK_LOG_FILE_NAME);
    let mut bytes = std::fs::read(&acks).unwrap();
    let scan = diskspool::format::acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    assert!(scan.entries > 100, "{scan:?}");
    let damaged = diskspool::format::acklog::ACK_LOG_HEADER_LEN
        + diskspool::format::acklog::ACK_ENTRY_LEN * (scan.entries as usize / 2 + 10);
    bytes[damaged + 10] ^= 0x01; // inside the sequence number
    std::fs::write(&acks, &bytes).unwrap();
    (dir, acks, bytes, damaged)
}

/// ack is in the ack log), closes, and flips a byte in an entry in the middle of `acks`, valid
/// entries after it. Under `Always` each ack was synced before the next was written, and the
/// entries say so (the SYNCED_BEFORE mark, ack log version 4): `open` refuses with
/// `Error::Corrupt` naming the file and the entry's offset, and changes nothing, whatever the
/// policy it opens with. Skipping the entry would make an acknowledged job deliverable again.
#[test]
fn a_damaged_ack_log_entry_followed_by_valid_ones_is_refused_not_skipped() {
    let options = || Options::default().segment_size(4096);
    let (dir, acks, bytes, damaged) = acks_with_a_damaged_entry(options());
    for policy in [
        SyncPolicy::Always,
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_secs(60)),
    ] {
        match Queue::open(dir.path(), options().sync(policy)) {
            Err(Error::Corrupt {
                file,
                offset,
                detail,
            }) => {
                assert_eq!(file, acks);
                assert_eq!(offset, damaged as u64);
                assert!(
                    detail.contains("written after this one was synced"),
                    "{detail}"
                );
            }
            Ok(queue) => panic!(
                "open under {policy:?} skipped a damaged ack log entry: {} records deliverable",
                queue.len()
            ),
            Err(other) => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(std::fs::read(&acks).unwrap(), bytes, "nothing is cut");
    }
}

/// The same bytes written under `Never` or `Interval`: their ack-log appends are not synced one
/// by one, so a power loss can tear one and keep a later one (the simulation's seed 3,070,686).
/// Open must not refuse a queue a crash left (a service would crash-loop): it skips the torn
/// entry, whose one fact was not durable, reports it, applies every other entry, and rewrites
/// the log so that the lock-free readers agree afterwards. Whatever the policy it opens with:
/// an open under `Always` refused it before the entries said how they were synced (`ops_model`
/// found it: `fuzz/seeds/ops_model/power_loss_reopened_under_always_skips_an_interval_ack_log_tear`).
#[test]
fn a_torn_ack_log_entry_before_valid_ones_written_under_the_weaker_policies_is_skipped() {
    for written_under in [
        SyncPolicy::Never,
        SyncPolicy::Interval(Duration::from_secs(60)),
    ] {
        for opened_under in [written_under, SyncPolicy::Always] {
            let case = format!("written under {written_under:?}, opened under {opened_under:?}");
            let options = |policy| Options::default().segment_size(4096).sync(policy);
            let (dir, _, _, damaged) = acks_with_a_damaged_entry(options(written_under));
            let queue = Queue::open(dir.path(), options(opened_under)).unwrap();
            assert_eq!(
                queue.recovery_report().skipped_ack_entries,
                [damaged as u64],
                "{case}"
            );
            // At most the one acknowledgement the torn entry held comes back; every other holds.
            let mut delivered = Vec::new();
            while let Some(delivery) = queue.try_recv().unwrap() {
                delivered.push(delivery.seq());
                delivery.ack().unwrap();
            }
            assert!(delivered.contains(&0), "{case}: {delivered:?}");
            assert!(delivered.len() <= 2, "{case}: {delivered:?}");
            drop(queue);
            let report =
                diskspool::tools::verify::verify(&diskspool::storage::OsStorage, dir.path())
                    .unwrap();
            assert!(report.is_clean(), "{case}: {report:?}");
        }
    }
}

/// Under `Always` every group commit's first entry carries the SYNCED_BEFORE mark, also when
/// threads receive and acknowledge at once (their entries wait for the leader, which writes
/// them after the previous sync): each thread has one entry in flight at most, so a log of `E`
/// entries written by `T` threads holds at least `E / T` marks. A damaged entry in the middle
/// is then refused by an open under `Never` too.
#[test]
fn under_always_the_first_entry_of_every_group_commit_says_it_follows_a_sync() {
    use diskspool::format::acklog;
    const THREADS: usize = 4;
    let options = |policy| Options::default().segment_size(4096).sync(policy);
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Arc::new(Queue::open(dir.path(), options(SyncPolicy::Always)).unwrap());
        push_expected(&queue, 401);
        // Record 0 stays, so that every ack is beyond the head.
        let held = queue.try_recv().unwrap().unwrap();
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    while let Some(delivery) = queue.try_recv().unwrap() {
                        delivery.ack().unwrap();
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        drop(held);
    }
    let acks = dir
        .path()
        .join(diskspool::format::layout::ACK_LOG_FILE_NAME);
    let mut bytes = std::fs::read(&acks).unwrap();
    let scan = acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    let entries = &bytes[acklog::ACK_LOG_HEADER_LEN..scan.valid_end as usize];
    let marked = entries
        .chunks_exact(acklog::ACK_ENTRY_LEN)
        .filter(|entry| entry[4] & 0x80 != 0)
        .count();
    assert!(scan.entries >= 800, "{scan:?}");
    assert!(
        marked * THREADS >= scan.entries as usize,
        "{marked} marks in {} entries",
        scan.entries
    );
    let damaged = acklog::ACK_LOG_HEADER_LEN + acklog::ACK_ENTRY_LEN * (scan.entries as usize / 2);
    bytes[damaged + 10] ^= 0x01;
    std::fs::write(&acks, &bytes).unwrap();
    match Queue::open(dir.path(), options(SyncPolicy::Never)) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, damaged as u64),
        other => panic!("expected Corrupt, got {:?}", other.map(|queue| queue.len())),
    }
}

/// An ack log of version 3 (before the SYNCED_BEFORE mark) does not say how its appends were
/// synced: `open` judges a torn entry before valid ones by its own policy, as builds of version
/// 3 did (refused under `Always`, skipped under `Never`), appends to it without marks, and a
/// rewrite makes it version 4.
#[test]
fn a_version_3_ack_log_is_judged_by_the_policy_of_the_open() {
    use diskspool::format::acklog::{self, AckEntry};
    let options = |policy| {
        Options::default()
            .segment_size(4096)
            .sync(policy)
            .auto_compact(false)
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options(SyncPolicy::Never)).unwrap();
        push_expected(&queue, 10);
    }
    let acks = dir
        .path()
        .join(diskspool::format::layout::ACK_LOG_FILE_NAME);
    let mut bytes = acklog::encode_header(1).to_vec();
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    for seq in [3, 5, 7] {
        let entry = AckEntry::Acked {
            start: seq,
            end: seq + 1,
        };
        acklog::encode_entry(&mut bytes, 1, &entry);
    }
    std::fs::write(&acks, &bytes).unwrap();
    // Appended to as it is: still version 3, no entry marked.
    {
        let queue = Queue::open(dir.path(), options(SyncPolicy::Always)).unwrap();
        assert_eq!(queue.pop().unwrap().unwrap().seq(), 0);
        // 3 is acknowledged in the log.
        for seq in [1, 2, 4] {
            let delivery = queue.try_recv().unwrap().unwrap();
            assert_eq!(delivery.seq(), seq);
            delivery.ack().unwrap();
        }
    }
    let bytes = std::fs::read(&acks).unwrap();
    let scan = acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    assert_eq!(acklog::read_header(&bytes).unwrap().version, 3);
    assert!(!scan.has_marks);
    assert!(scan.entries > 3, "{scan:?}");
    let kinds = bytes[acklog::ACK_LOG_HEADER_LEN..].chunks_exact(acklog::ACK_ENTRY_LEN);
    assert!(kinds.clone().all(|entry| entry[4] < 0x80), "no marks");
    // Entry 1 (record 5's ack) torn, valid ones after it.
    let mut bytes = bytes;
    let torn = acklog::ACK_LOG_HEADER_LEN + acklog::ACK_ENTRY_LEN;
    bytes[torn + 10] ^= 0x01;
    std::fs::write(&acks, &bytes).unwrap();
    match Queue::open(dir.path(), options(SyncPolicy::Always)) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, torn as u64),
        other => panic!("expected Corrupt, got {:?}", other.map(|queue| queue.len())),
    }
    assert_eq!(std::fs::read(&acks).unwrap(), bytes, "nothing is cut");
    let queue = Queue::open(dir.path(), options(SyncPolicy::Never)).unwrap();
    assert_eq!(queue.recovery_report().skipped_ack_entries, [torn as u64]);
    // The open rewrote the log without the entry: version 4.
    let rewritten = std::fs::read(&acks).unwrap();
    assert_eq!(
        acklog::read_header(&rewritten).unwrap().version,
        acklog::ACK_LOG_FORMAT_VERSION
    );
    let left: Vec<u64> = std::iter::from_fn(|| queue.pop().unwrap().map(|r| r.seq())).collect();
    assert_eq!(
        left,
        [5, 6, 8, 9],
        "5 is back: its acknowledgement was torn"
    );
}

#[test]
fn recv_blocks_until_another_thread_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), options()).unwrap());
    assert!(queue.try_recv().unwrap().is_none(), "try_recv never waits");
    let receiver = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            let delivery = queue.recv().unwrap();
            let seq = delivery.seq();
            delivery.ack().unwrap();
            seq
        })
    };
    // Whether the receiver is already waiting or not yet, it must get this record.
    let seq = queue.push(b"wake up").unwrap();
    assert_eq!(receiver.join().unwrap(), seq);
    assert!(queue.is_empty());
}

#[test]
fn recv_waits_out_a_delay_and_try_recv_batch_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    let pushed_at = Instant::now();
    let seq = queue
        .push_delayed(b"later", Duration::from_millis(100))
        .unwrap();
    assert!(queue.try_recv_batch(5).unwrap().is_empty());
    let delivery = queue.recv().unwrap();
    assert_eq!(delivery.seq(), seq);
    assert!(pushed_at.elapsed() >= Duration::from_millis(100));
}

#[test]
fn dead_letter_moves_a_delivery_at_once_and_refuses_an_expired_lease() {
    let dir = tempfile::tempdir().unwrap();
    let lease = Duration::from_millis(50);
    let queue = Queue::open(dir.path().join("jobs"), options().lease(lease)).unwrap();
    assert_eq!(queue.dead_letter_dir(), dir.path().join("jobs.dead"));
    assert_eq!(queue.options().get_lease(), lease);
    push_expected(&queue, 2);
    queue.try_recv().unwrap().unwrap().dead_letter().unwrap();
    let stale = queue.try_recv().unwrap().unwrap();
    std::thread::sleep(lease + Duration::from_millis(10));
    let current = queue.try_recv().unwrap().expect("the lease ran out");
    assert_eq!((current.seq(), current.deliveries()), (1, 2));
    assert!(matches!(
        stale.dead_letter(),
        Err(Error::LeaseExpired { seq: 1 })
    ));
    current.ack().unwrap();
    assert!(queue.is_empty());
    drop(queue);
    let dead = Queue::open(dir.path().join("jobs.dead"), options()).unwrap();
    let letters = dead.pop_batch(10).unwrap();
    assert_eq!(letters.len(), 1, "only the dead-lettered record");
    let letter = DeadLetter::decode(letters[0].payload()).unwrap();
    assert_eq!((letter.original_seq, letter.deliveries), (0, 1));
    assert_eq!(letter.payload, payload_for(0));
}

/// An out-of-order ack whose record is the last before a segment starts looks, after a reopen,
/// like a gap `repair` retired (an acknowledged range ending at a segment's base): it must be
/// counted once in the length, as acknowledged, not also as retired.
#[test]
fn len_counts_an_ack_ending_at_a_segment_boundary_once_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size(16 << 10)
        .lease(Duration::from_secs(3600));
    const RECORDS: u64 = 400;
    let boundary = {
        let queue = Queue::open(dir.path(), options.clone()).unwrap();
        for seq in 0..RECORDS {
            queue.push(&payload_for(seq)).unwrap();
        }
        let bases = crate::util::segment_bases(dir.path());
        let boundary = bases[1];
        for _ in 0..boundary - 2 {
            queue.pop().unwrap().unwrap();
        }
        let held = queue.try_recv().unwrap().unwrap();
        let last = queue.try_recv().unwrap().unwrap();
        assert_eq!((held.seq(), last.seq()), (boundary - 2, boundary - 1));
        last.ack().unwrap();
        boundary
    };
    let queue = Queue::open(dir.path(), options).unwrap();
    assert_eq!(queue.len(), RECORDS - boundary + 1);
    let held = queue.try_recv().unwrap().unwrap();
    assert_eq!(held.seq(), boundary - 2);
    assert_eq!(queue.pop().unwrap().unwrap().seq(), boundary);
    // Left: the leased record and those after the boundary's.
    assert_eq!(queue.len(), RECORDS - boundary);
    held.ack().unwrap();
    assert_eq!(queue.len(), RECORDS - boundary - 1);
}

/// `Queue::sync` syncs the dead-letter queue's files without opening it: a worker draining it
/// may hold it (it is an exclusive queue), and the sync still succeeds.
#[test]
fn a_sync_beside_a_worker_holding_the_dead_letter_queue_succeeds() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("jobs");
    let queue = Queue::open(&dir, options().max_deliveries(1)).unwrap();
    queue.push(b"job").unwrap();
    queue.try_recv().unwrap().unwrap().nack().unwrap();
    drop(queue);
    let queue = Queue::open(&dir, options().max_deliveries(1)).unwrap();
    let worker = Queue::open(root.path().join("jobs.dead"), options()).unwrap();
    queue.sync().unwrap();
    assert_eq!(worker.len(), 1);
}

/// Under `Never` an acknowledgement is stored through a writable mapping of the ack log: no
/// call into the storage each (zeros are written ahead of the tail every 32 KiB of entries, and
/// mapped), where `mapped_writes(false)` writes each one. A process crash keeps the stores as it
/// keeps a write: acknowledgements that only the ack log knows (the first record is still
/// leased, so the head cannot pass them) are not delivered again.
#[test]
fn acks_under_never_are_stored_through_a_mapping_and_a_crash_keeps_them() {
    for mapped in [true, false] {
        let sim = diskspool::SimStorage::new(5);
        sim.set_writable_mappings(true);
        let options = || {
            Options::default()
                .segment_size(1 << 20)
                .sync(SyncPolicy::Never)
                .mapped_writes(mapped)
                .storage(Arc::new(sim.clone()))
        };
        let queue = Queue::open("/q", options()).unwrap();
        let pairs = 2_000u64;
        queue.push_batch((0..pairs + 3).map(payload_for)).unwrap();
        let first = queue.try_recv().unwrap().unwrap();
        queue.try_recv().unwrap().unwrap().ack().unwrap();
        let before = sim.stats();
        for _ in 0..pairs {
            queue.try_recv().unwrap().unwrap().ack().unwrap();
        }
        let after = sim.stats();
        let calls = after.calls - before.calls;
        let stores = after.mapped_stores - before.mapped_stores;
        if mapped {
            assert!(
                calls < pairs / 20,
                "{calls} storage calls for {pairs} receives and acks"
            );
            assert!(stores >= pairs, "{stores} mapped stores");
        } else {
            assert!(
                calls >= pairs,
                "{calls} storage calls for {pairs} written receives and acks"
            );
        }
        sim.process_crash();
        drop((first, queue));
        let queue = Queue::open("/q", options()).unwrap();
        let mut received = BTreeSet::new();
        while let Some(delivery) = queue.try_recv().unwrap() {
            received.insert(delivery.seq());
            delivery.ack().unwrap();
        }
        // Record 0 when its lease is over; never one of the acknowledged 1..=2001.
        assert!(
            received.contains(&(pairs + 2)),
            "mapped {mapped}: {received:?}"
        );
        assert!(
            received.iter().all(|&seq| seq == 0 || seq == pairs + 2),
            "mapped {mapped}: delivered again after their acks: {received:?}"
        );
    }
}

/// A handle of a shared queue stores its ack log entries through a mapping that reaches the end
/// of the zeros written ahead of the tail. Another handle that reads the files in full (its
/// first consumer turn) must leave those zeros: cutting them would put the first handle's next
/// store past the end of the file, a SIGBUS on a real mapping (the simulated filesystem
/// panics), since a turn that writes nothing does not tell the other handles to read again.
#[test]
fn a_handle_reading_the_ack_log_in_full_leaves_the_zeros_others_store_into() {
    let sim = diskspool::SimStorage::new(9);
    sim.set_writable_mappings(true);
    let on = |process: u32| {
        Options::default()
            .exclusive(false)
            .sync(SyncPolicy::Never)
            .storage(Arc::new(sim.process(process)))
    };
    let first = Queue::open("/q", on(1)).unwrap();
    first.push_batch((0..10).map(payload_for)).unwrap();
    // A lease keeps the head at 0, so the ack log holds what follows.
    let held = first.try_recv().unwrap().unwrap();
    first.try_recv().unwrap().unwrap().ack().unwrap();
    let second = Queue::open("/q", on(2)).unwrap();
    assert_eq!(second.peek().unwrap().map(|record| record.seq()), Some(2));
    receive_and_ack_in_order(&first, 2..6);
    held.ack().unwrap();
    assert_eq!(second.try_recv().unwrap().unwrap().seq(), 6);
}

/// Receives the records `seqs` one by one from `queue`, checking their order, and acks each.
fn receive_and_ack_in_order(queue: &Queue, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let delivery = queue.try_recv().unwrap().unwrap();
        assert_eq!(delivery.seq(), seq);
        delivery.ack().unwrap();
    }
}

/// A handle whose ack log write fails cuts the file back to its tail. Another handle of the
/// shared queue that stores its entries through a mapping of the zeros that were there must
/// learn of the cut before it stores again (the cut moves the consumer epoch): a store past
/// the new end would be a SIGBUS on a real mapping (the simulated filesystem panics).
#[test]
fn an_append_cut_back_by_one_handle_is_seen_by_a_handle_that_maps_the_ack_log() {
    use diskspool::storage::sim::{Fault, FaultKind, SimOp};
    let sim = diskspool::SimStorage::new(11);
    sim.set_writable_mappings(true);
    let on = |process: u32, mapped: bool| {
        Options::default()
            .exclusive(false)
            .sync(SyncPolicy::Never)
            .mapped_writes(mapped)
            .storage(Arc::new(sim.process(process)))
    };
    let mapping = Queue::open("/q", on(1, true)).unwrap();
    let writing = Queue::open("/q", on(2, false)).unwrap();
    mapping.push_batch((0..20).map(payload_for)).unwrap();
    // A lease keeps the head at 0, so that acks go to the ack log.
    let held = mapping.try_recv().unwrap().unwrap();
    mapping.try_recv().unwrap().unwrap().ack().unwrap();
    let delivery = writing.try_recv().unwrap().unwrap();
    assert_eq!(delivery.seq(), 2);
    sim.inject(Fault {
        op: Some(SimOp::Write),
        skip: 0,
        kind: FaultKind::Io,
        sticky: false,
    });
    assert!(delivery.ack().is_err(), "the injected write failure");
    receive_and_ack_in_order(&mapping, 3..8);
    held.ack().unwrap();
    // Record 2 stays leased to the handle whose ack failed (and which refuses changes now).
    assert_eq!(mapping.try_recv().unwrap().unwrap().seq(), 8);
    assert!(matches!(writing.try_recv(), Err(Error::Poisoned { .. })));
}
