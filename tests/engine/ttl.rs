//! The per-record time to live (issue 13): `Push::ttl`, stored in the record's frame (segment
//! format version 3), and segments of version 2 next to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use diskspool::format::layout::segment_file_name;
use diskspool::format::segment::{decode_header, SEGMENT_HEADER_LEN};
use diskspool::{
    DeadLetter, DeadLetterReason, Error, Options, Push, Queue, SimStorage, SyncPolicy,
};

fn expired(queue: &Queue) -> u64 {
    queue.stats().unwrap().totals.unwrap().expired
}

/// Waits until the real clock is more than `micros` past `start` (a record pushed before
/// `start` with that TTL has then expired). Enqueue times come from the coarse clock, which is
/// never ahead of the precise one.
fn wait_until_older_than(start: SystemTime, micros: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while SystemTime::now() <= start + Duration::from_micros(micros + 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        std::thread::yield_now();
    }
}

/// A TTL that has run out once `wait_until_older_than(now, 1)` returns.
fn short() -> Push {
    Push::new().ttl(Duration::from_micros(1))
}

fn long() -> Push {
    Push::new().ttl(Duration::from_secs(3600))
}

#[test]
fn a_record_past_its_ttl_is_never_delivered_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    queue.push_with(b"a", short()).unwrap();
    queue.push(b"b").unwrap();
    queue.push_with(b"c", short()).unwrap();
    queue.push_with(b"d", long()).unwrap();
    queue.push_with(b"e", short()).unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    // peek, pop, pop_batch: the expired records are skipped, the others delivered in order.
    assert_eq!(queue.peek().unwrap().unwrap().payload(), b"b");
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"b");
    let rest: Vec<Vec<u8>> = queue
        .pop_batch(10)
        .unwrap()
        .iter()
        .map(|record| record.payload().to_vec())
        .collect();
    assert_eq!(rest, [b"d".to_vec()]);
    assert!(queue.pop().unwrap().is_none());
    assert_eq!(expired(&queue), 3);
    assert!(queue.is_empty());
}

#[test]
fn recv_skips_a_record_past_its_ttl_behind_a_leased_one() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    queue.push_with(b"x", long()).unwrap();
    queue.push_with(b"y", short()).unwrap();
    queue.push(b"z").unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    // "x" leased: the records after it are tracked, and the expired one is discarded there.
    let first = queue.try_recv().unwrap().unwrap();
    assert_eq!(first.payload(), b"x");
    let second = queue.try_recv().unwrap().unwrap();
    assert_eq!(second.payload(), b"z");
    assert!(queue.try_recv().unwrap().is_none());
    assert_eq!(expired(&queue), 1);
    first.ack().unwrap();
    second.ack().unwrap();
    assert!(queue.is_empty());
}

#[test]
fn a_record_within_its_ttl_is_delivered_with_its_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    queue.push_with(b"a", long()).unwrap();
    queue.push(b"b").unwrap();
    let record = queue.pop().unwrap().unwrap();
    assert_eq!(record.payload(), b"a");
    assert_eq!(record.ttl(), Some(Duration::from_secs(3600)));
    assert_eq!(
        record.expires_at_us(),
        Some(record.enqueued_at_us() + 3_600_000_000)
    );
    let plain = queue.pop().unwrap().unwrap();
    assert_eq!((plain.ttl(), plain.expires_at()), (None, None));
    // A zero TTL is none, as a zero max_age.
    queue
        .push_with(b"c", Push::new().ttl(Duration::ZERO))
        .unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().ttl(), None);
    assert_eq!(expired(&queue), 0);
}

#[test]
fn with_max_age_the_earlier_expiry_wins() {
    for (max_age, ttl) in [
        (Duration::from_secs(3600), Duration::from_micros(1)),
        (Duration::from_micros(1), Duration::from_secs(3600)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), Options::default().max_age(max_age)).unwrap();
        queue.push_with(b"a", Push::new().ttl(ttl)).unwrap();
        wait_until_older_than(SystemTime::now(), 1);
        assert!(queue.pop().unwrap().is_none(), "{max_age:?} {ttl:?}");
        assert_eq!(expired(&queue), 1);
    }
}

#[test]
fn a_delay_not_shorter_than_the_ttl_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    for delay in [Duration::from_secs(60), Duration::from_secs(61)] {
        let push = Push::new()
            .delay(delay)
            .ttl(Duration::from_secs(60))
            .dedup_id("k");
        assert!(matches!(
            queue.push_with(b"never", push),
            Err(Error::InvalidOptions(_))
        ));
    }
    assert_eq!(queue.len(), 0);
    // A shorter delay is kept with the TTL, which counts from the enqueue time.
    let push = Push::new()
        .delay(Duration::from_secs(30))
        .ttl(Duration::from_secs(60));
    queue.push_with(b"later", push).unwrap();
    assert_eq!(queue.len(), 1);
    assert!(queue.pop().unwrap().is_none(), "not due yet");
    let stored: Vec<_> =
        diskspool::tools::inspect::records(&diskspool::storage::OsStorage, dir.path(), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].ttl_us, 60_000_000);
    assert!(stored[0].not_before_us >= stored[0].enqueued_us + 30_000_000 - 20_000);
}

#[test]
fn a_batch_takes_the_ttl_of_its_push_options() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    queue.push_batch_with([b"a", b"b"], &short()).unwrap();
    queue.push_batch_with([b"c"], &long()).unwrap();
    assert!(matches!(
        queue.push_batch_with([b"d"], &Push::new().dedup_id("k")),
        Err(Error::InvalidOptions(_))
    ));
    wait_until_older_than(SystemTime::now(), 1);
    let popped = queue.pop_batch(10).unwrap();
    assert_eq!(popped.len(), 1);
    assert_eq!(popped[0].payload(), b"c");
    assert_eq!(expired(&queue), 2);
}

#[test]
fn an_expired_record_goes_to_the_dead_letter_queue_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().dead_letter_dir("dead");
    let queue = Queue::open(dir.path().join("q"), options).unwrap();
    queue.push_with(b"gone", short()).unwrap();
    queue.push(b"kept").unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"kept");
    let dead_dir = queue.dead_letter_dir();
    drop(queue);
    let dead = Queue::open(dead_dir, Options::default()).unwrap();
    let letters = dead.pop_batch(10).unwrap();
    assert_eq!(letters.len(), 1);
    let envelope = DeadLetter::decode(letters[0].payload()).unwrap();
    assert_eq!(envelope.reason, DeadLetterReason::Expired);
    assert_eq!(envelope.original_seq, 0);
}

#[test]
fn the_ttl_is_kept_by_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), Options::default()).unwrap();
        queue.push_with(b"short", short()).unwrap();
        queue.push_with(b"long", long()).unwrap();
    }
    wait_until_older_than(SystemTime::now(), 1);
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    let record = queue.pop().unwrap().unwrap();
    assert_eq!(record.payload(), b"long");
    assert_eq!(record.ttl(), Some(Duration::from_secs(3600)));
    assert_eq!(expired(&queue), 1);
}

/// A full queue under `Overflow::Reject` discards records past their TTL at its head to make
/// room, as it does for records past `max_age`.
#[test]
fn expired_records_at_the_head_make_room_for_a_push() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(
        dir.path(),
        Options::default().segment_size(4096).max_records(2),
    )
    .unwrap();
    queue.push_with(&[0], short()).unwrap();
    queue.push_with(&[1], short()).unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    queue.push(&[2]).unwrap();
    assert_eq!(expired(&queue), 2);
    assert_eq!(queue.pop().unwrap().unwrap().payload(), [2]);
}

/// The contract (docs/DURABILITY.md): a record pushed with a TTL is never delivered after it
/// expired, also after a crash (its TTL and enqueue time are in its frame, so nothing needs to
/// be written when it expires).
#[test]
fn a_record_past_its_ttl_is_never_delivered_after_a_power_loss() {
    for seed in 0..10 {
        let sim = SimStorage::new(seed);
        let options = || {
            Options::default()
                .storage(Arc::new(sim.clone()))
                .sync(SyncPolicy::Always)
        };
        let queue = Queue::open("/q", options()).unwrap();
        for value in 0..3u8 {
            queue.push_with(&[value], short()).unwrap();
        }
        queue.push_with(&[9], long()).unwrap();
        wait_until_older_than(SystemTime::now(), 1);
        if seed % 2 == 0 {
            // Some expired at the head already (nothing written for them).
            assert!(queue.peek().unwrap().is_some());
        }
        sim.power_loss();
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        let delivery = queue.try_recv().unwrap().unwrap();
        assert_eq!(delivery.payload(), [9], "seed {seed}");
        assert_eq!(delivery.record().ttl(), Some(Duration::from_secs(3600)));
        assert!(queue.try_recv().unwrap().is_none(), "seed {seed}");
        assert!(queue.pop().unwrap().is_none(), "seed {seed}");
    }
}

/// Rewrites a segment file's header to format version 2. Frames without a TTL are byte for
/// byte what version 2 wrote, so this makes the queue one that version 2 could have written.
fn make_version_2(path: &std::path::Path) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[8..10].copy_from_slice(&2u16.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, &bytes).unwrap();
}

fn header_version(path: &std::path::Path) -> u16 {
    let bytes = std::fs::read(path).unwrap();
    decode_header(&bytes[..SEGMENT_HEADER_LEN])
        .unwrap()
        .rules
        .version()
}

/// A queue written by format version 2 opens and reads: its segments keep their version and
/// are read by its rules; the active one is sealed (nothing of version 3 is appended to it),
/// and records pushed since, with a TTL among them, go to a segment of version 3.
#[test]
fn segments_of_format_version_2_are_read_and_never_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().segment_size(4096);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        for value in 0..60u8 {
            queue.push(&[value; 100]).unwrap();
        }
        queue
            .push_delayed(&[60; 100], Duration::from_micros(1))
            .unwrap();
    }
    let segments = crate::util::segment_files(dir.path());
    assert!(segments.len() >= 2, "{segments:?}");
    for segment in &segments {
        make_version_2(segment);
    }
    let last_v2 = segments.last().unwrap().clone();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        queue.push_with(&[61; 100], long()).unwrap();
        assert_eq!(queue.len(), 62);
    }
    assert_eq!(
        header_version(&last_v2),
        2,
        "an old segment keeps its version"
    );
    let after = crate::util::segment_files(dir.path());
    assert_eq!(after.len(), segments.len() + 1);
    assert_eq!(header_version(after.last().unwrap()), 3);
    // Lock-free readers and the queue read every record, by the rules of each segment.
    let stored: Vec<_> =
        diskspool::tools::inspect::records(&diskspool::storage::OsStorage, dir.path(), None)
            .unwrap()
            .map(Result::unwrap)
            .collect();
    assert_eq!(stored.len(), 62);
    assert_eq!(stored[61].ttl_us, 3_600_000_000);
    let report =
        diskspool::tools::verify::verify(&diskspool::storage::OsStorage, dir.path()).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let queue = Queue::open(dir.path(), options()).unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    for value in 0..62u8 {
        let record = queue.pop().unwrap().unwrap();
        assert_eq!(record.payload(), [value; 100]);
    }
    assert!(queue.pop().unwrap().is_none());
}

/// An active segment of version 2 that holds no record yet gets this version's header in
/// place (a new segment cannot take its name).
#[test]
fn an_empty_active_segment_of_version_2_becomes_version_3() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    let segment = dir.path().join(segment_file_name(0));
    make_version_2(&segment);
    {
        let queue = Queue::open(dir.path(), Options::default()).unwrap();
        assert_eq!(header_version(&segment), 3);
        queue.push_with(b"a", long()).unwrap();
    }
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"a");
    assert_eq!(crate::util::segment_files(dir.path()).len(), 1);
}

/// Also after a reopen, before any consumer read a record: the full queue finds the record with
/// a TTL at its head (as `spool push`, a new process each time, needs).
#[test]
fn expired_records_at_the_head_make_room_also_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().segment_size(4096).max_records(2);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        queue.push_with(&[0], short()).unwrap();
        queue.push_with(&[1], short()).unwrap();
    }
    wait_until_older_than(SystemTime::now(), 1);
    let queue = Queue::open(dir.path(), options()).unwrap();
    queue.push(&[2]).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), [2]);
    // Without expired records the bound holds.
    queue.push(&[3]).unwrap();
    queue.push(&[4]).unwrap();
    assert!(matches!(queue.push(&[5]), Err(Error::Full { .. })));
}

#[test]
fn a_typed_queue_never_hands_out_a_value_past_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let queue: diskspool::TypedQueue<u64> =
        diskspool::TypedQueue::open(dir.path(), Options::default()).unwrap();
    queue.push_with(&1, short()).unwrap();
    queue.push_with(&2, long()).unwrap();
    wait_until_older_than(SystemTime::now(), 1);
    assert_eq!(queue.pop().unwrap(), Some((1, 2)));
    assert_eq!(queue.pop().unwrap(), None);
    assert_eq!(queue.inner().stats().unwrap().totals.unwrap().expired, 1);
}
