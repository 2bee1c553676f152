//! The stats snapshot and the counters since open, checked against a scripted workload.

use std::time::Duration;

use diskspool::storage::OsStorage;
use diskspool::tools::inspect;
use diskspool::{DiscardReason, Options, Queue, Stats, SyncPolicy, TakeoverKind, Totals};

const LONG: Duration = Duration::from_secs(3600);

fn totals(queue: &Queue) -> Totals {
    queue
        .stats()
        .unwrap()
        .totals
        .expect("the open queue counts")
}

/// The gauges that a lock-free reader computes too.
fn gauges(stats: &Stats) -> (u64, u64, u64, u64, Option<std::time::SystemTime>) {
    (
        stats.len,
        stats.delayed,
        stats.bytes(),
        stats.segments as u64,
        stats.oldest_enqueued_at,
    )
}

#[test]
fn every_counter_and_gauge_follows_a_scripted_workload() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never)
        .lease(LONG)
        .max_deliveries(3);
    let queue = Queue::open(dir.path(), options).unwrap();
    let start = queue.stats().unwrap();
    assert_eq!(start.totals, Some(Totals::default()), "all zero at open");
    assert_eq!(
        (start.ready, start.delayed, start.in_flight()),
        (0, 0, Some(0))
    );

    for payload in [b"a", b"b", b"c", b"d"] {
        queue.push(payload).unwrap();
    }
    queue.push_delayed(b"e", LONG).unwrap();
    let stats = queue.stats().unwrap();
    assert_eq!((stats.len, stats.ready, stats.delayed), (5, 4, 1));
    assert_eq!(stats.totals.unwrap().pushed, 5);

    // a: popped (at most once).
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"a");
    // b: received, so in flight; the oldest ready record is then c.
    let b = queue.try_recv().unwrap().unwrap();
    let stats = queue.stats().unwrap();
    assert_eq!((stats.len, stats.ready, stats.delayed), (4, 2, 1));
    assert_eq!(stats.in_flight(), Some(1));
    let c_enqueued = queue.peek().unwrap().unwrap().enqueued_at();
    assert_eq!(stats.oldest_enqueued_at, Some(c_enqueued));
    let lock_free = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!((lock_free.in_flight(), lock_free.totals), (None, None));
    assert_eq!(
        lock_free.ready, 3,
        "a lock-free reader counts the leased b as ready"
    );
    assert_eq!(lock_free.delayed, 1);

    // b: nacked, received again (a redelivery), then retried later (a nack, and delayed).
    b.nack().unwrap();
    let b = queue.try_recv().unwrap().unwrap();
    assert_eq!(b.deliveries(), 2);
    b.retry_after(LONG).unwrap();
    let t = totals(&queue);
    assert_eq!((t.delivered, t.nacked, t.redelivered), (3, 2, 1));
    let stats = queue.stats().unwrap();
    assert_eq!((stats.len, stats.ready, stats.delayed), (4, 2, 2));

    // c: received and acknowledged; d: received and dead-lettered.
    queue.try_recv().unwrap().unwrap().ack().unwrap();
    queue.try_recv().unwrap().unwrap().dead_letter().unwrap();
    let stats = queue.stats().unwrap();
    let t = stats.totals.unwrap();
    assert_eq!(t.pushed, 5);
    assert_eq!(t.delivered, 5, "one pop and four receives");
    assert_eq!((t.acked, t.nacked, t.redelivered), (1, 2, 1));
    assert_eq!(t.dead_lettered, 1, "dead-lettered, not acknowledged");
    assert_eq!(t.discarded_total(), 0);
    assert_eq!(t.discarded(DiscardReason::Overflow), 0);
    assert_eq!((t.expired, t.deduplicated), (0, 0));
    assert_eq!((t.commit_syncs, t.records_per_sync()), (0, None), "Never");
    for kind in TakeoverKind::ALL {
        assert_eq!(
            t.takeovers(kind),
            0,
            "an exclusive queue takes nothing over"
        );
    }
    // Only b (retried) and e (pushed delayed) are left, both delayed: nothing is ready, so
    // there is no oldest ready record, however old they are.
    assert_eq!((stats.len, stats.ready, stats.delayed), (2, 0, 2));
    assert_eq!(stats.oldest_enqueued_at, None);
    assert_eq!(stats.oldest_ready_age(std::time::SystemTime::now()), None);

    // The lock-free reader computes the same gauges from the files.
    let lock_free = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!(gauges(&lock_free), gauges(&stats));
    assert_eq!(lock_free.ready, 0);

    drop(queue);
    let reopened = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    assert_eq!(
        totals(&reopened),
        Totals::default(),
        "counters start at each open"
    );
}

#[test]
fn delayed_records_not_read_yet_are_counted_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never);
    let queue = Queue::open(dir.path(), options).unwrap();
    for round in 0..200u64 {
        if round % 4 == 0 {
            queue.push_delayed(&[7; 40], LONG).unwrap();
        } else {
            queue.push(&[1; 40]).unwrap();
        }
    }
    let stats = queue.stats().unwrap();
    assert!(stats.segments > 2, "the records span segments");
    assert_eq!((stats.len, stats.delayed, stats.ready), (200, 50, 150));
    let lock_free = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!(gauges(&lock_free), gauges(&stats));
    // Popping reads ahead of delayed records, which the reader then tracks: still counted.
    for _ in 0..10 {
        queue.pop().unwrap().unwrap();
    }
    let stats = queue.stats().unwrap();
    assert_eq!((stats.len, stats.delayed, stats.ready), (190, 50, 140));
    let lock_free = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!(gauges(&lock_free), gauges(&stats));
}

#[test]
fn group_commit_counts_its_syncs_and_the_records_they_cover() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always)).unwrap();
    for _ in 0..5 {
        queue.push(b"durable").unwrap();
    }
    queue.push_batch([b"x", b"y", b"z"]).unwrap();
    let t = totals(&queue);
    assert_eq!(t.pushed, 8);
    // One thread: one sync per call, covering what that call wrote.
    assert_eq!((t.commit_syncs, t.commit_records), (6, 8));
    assert_eq!(t.records_per_sync(), Some(8.0 / 6.0));
}

/// The delayed count of sealed segments is taken once per segment and reused: it must follow
/// retry times that the ack log holds for records not read since a reopen, and delays that run
/// out between two calls.
#[test]
fn delayed_counts_of_sealed_segments_follow_retries_and_running_out() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .segment_size(4096)
            .sync(SyncPolicy::Never)
    };
    let short = Duration::from_millis(300);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        for round in 0..240u64 {
            match round % 6 {
                0 => queue.push_delayed(&[7; 40], LONG).unwrap(),
                1 => queue.push_delayed(&[8; 40], short).unwrap(),
                _ => queue.push(&[1; 40]).unwrap(),
            };
        }
        // Two records of the first segment go back with a retry time in the ack log.
        for _ in 0..2 {
            let delivery = queue.try_recv().unwrap().expect("a ready record");
            delivery.retry_after(LONG).unwrap();
        }
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    let first = queue.stats().unwrap();
    assert!(first.segments > 2, "the records span segments");
    assert_eq!((first.len, first.delayed), (240, 40 + 40 + 2));
    let again = queue.stats().unwrap();
    assert_eq!(
        again.delayed, first.delayed,
        "a second count agrees with the first"
    );
    let lock_free = inspect::stat(&OsStorage, dir.path()).unwrap();
    assert_eq!(lock_free.delayed, first.delayed);
    // The short delays run out: only the long ones and the retries stay delayed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let stats = queue.stats().unwrap();
        if stats.delayed == 40 + 2 || std::time::Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((settled.delayed, settled.ready), (42, 198));
}
