//! The queue's policies (issue 13): the bound with its overflow rule, kept in the settings file.

use std::sync::Arc;
use std::time::Duration;

use diskspool::format::layout::SETTINGS_FILE_NAME;
use diskspool::storage::queue_dir::read_settings;
use diskspool::storage::OsStorage;
use diskspool::{
    DeadLetter, DiscardReason, Error, Options, Overflow, Queue, SimStorage, SyncPolicy,
};

/// The frame of a 100-byte payload: 24 bytes of header, the payload, padding to 8.
const FRAME_100: u64 = 128;

fn bounded(records: u64) -> Options {
    Options::default().segment_size(4096).max_records(records)
}

/// The counters since open.
fn totals(queue: &Queue) -> diskspool::Totals {
    queue.stats().unwrap().totals.unwrap()
}

fn payloads(queue: &Queue) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        out.push(record.payload()[0]);
    }
    out
}

#[test]
fn the_policies_are_stored_and_kept_by_a_reopen_that_does_not_set_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .max_records(10)
        .max_bytes(1 << 20)
        .overflow(Overflow::DropOldest)
        .max_age(Duration::from_secs(60))
        .dedup_window(Duration::from_secs(30));
    drop(Queue::open(dir.path(), options).unwrap());
    let stored = read_settings(&OsStorage, dir.path()).unwrap().unwrap();
    assert_eq!(stored.max_records, Some(10));
    assert_eq!(stored.max_bytes, Some(1 << 20));
    assert_eq!(stored.overflow, Overflow::DropOldest);
    assert_eq!(stored.max_age_us, Some(60_000_000));
    assert_eq!(stored.dedup_window_us, Some(30_000_000));
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    let options = queue.options();
    assert_eq!(options.get_max_records(), Some(10));
    assert_eq!(options.get_max_bytes(), Some(1 << 20));
    assert_eq!(options.get_overflow(), Overflow::DropOldest);
    assert_eq!(options.get_max_age(), Some(Duration::from_secs(60)));
    assert_eq!(options.get_dedup_window(), Duration::from_secs(30));
    drop(queue);
    // Setting one replaces that one only.
    drop(Queue::open(dir.path(), Options::default().max_records(20)).unwrap());
    let stored = read_settings(&OsStorage, dir.path()).unwrap().unwrap();
    assert_eq!(stored.max_records, Some(20));
    assert_eq!(stored.overflow, Overflow::DropOldest);
}

#[test]
fn a_version_1_settings_file_opens_as_a_queue_without_policies_and_stays_version_1() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = [0u8; 64];
    bytes[..8].copy_from_slice(b"DSPOOLQS");
    bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
    bytes[10..12].copy_from_slice(&64u16.to_le_bytes());
    bytes[16..24].copy_from_slice(&8192u64.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..60]);
    bytes[60..].copy_from_slice(&crc.to_le_bytes());
    let path = dir.path().join(SETTINGS_FILE_NAME);
    std::fs::write(&path, bytes).unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(queue.options().get_segment_size(), 8192);
    assert_eq!(queue.options().get_max_records(), None);
    for _ in 0..100 {
        queue.push(b"x").unwrap();
    }
    drop(queue);
    // Nothing changed: the file is left for older builds to read.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn reject_refuses_a_push_beyond_the_record_bound_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(3)).unwrap();
    for value in 0..3u8 {
        queue.push(&[value]).unwrap();
    }
    let refused = queue.push(b"x");
    assert!(
        matches!(
            refused,
            Err(Error::Full {
                records: 3,
                max_records: Some(3),
                batch_records: 1,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(queue.stats().unwrap().next_seq, 3);
    // A batch is all or nothing.
    queue.pop().unwrap().unwrap();
    assert!(matches!(
        queue.push_batch([b"a", b"b"]),
        Err(Error::Full { .. })
    ));
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.push(&[9]).unwrap(), 3);
    assert_eq!(payloads(&queue), [1, 2, 9]);
}

#[test]
fn the_byte_bound_counts_frames_and_a_pop_gives_their_room_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().max_bytes(2 * FRAME_100);
    let queue = Queue::open(dir.path(), options).unwrap();
    queue.push(&[0; 100]).unwrap();
    queue.push(&[1; 100]).unwrap();
    assert!(matches!(
        queue.push(&[2; 100]),
        Err(Error::Full { bytes: 256, .. })
    ));
    // A smaller record does not fit either: the bound is full to the byte.
    assert!(queue.push(b"").is_err());
    queue.pop().unwrap().unwrap();
    queue.push(&[2; 100]).unwrap();
    // A batch larger than the bound never fits, whatever the rule.
    let queue_drop = Queue::open(
        dir.path().join("drop"),
        Options::default()
            .max_bytes(FRAME_100)
            .overflow(Overflow::DropOldest),
    )
    .unwrap();
    assert!(matches!(
        queue_drop.push(&[0; 200]),
        Err(Error::Full { .. })
    ));
    assert!(queue_drop.is_empty());
}

#[test]
fn records_handed_out_count_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(2)).unwrap();
    queue.push(b"a").unwrap();
    queue.push(b"b").unwrap();
    let first = queue.try_recv().unwrap().unwrap();
    let second = queue.try_recv().unwrap().unwrap();
    assert!(queue.push(b"c").is_err());
    // Acknowledged out of order (beyond the head): its room comes back at once.
    second.ack().unwrap();
    queue.push(b"c").unwrap();
    assert!(queue.push(b"d").is_err());
    first.ack().unwrap();
    queue.push(b"d").unwrap();
}

#[test]
fn the_usage_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(3)).unwrap();
    for value in 0..3u8 {
        queue.push(&[value]).unwrap();
    }
    drop(queue);
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(queue.push(b"x"), Err(Error::Full { .. })));
    queue.pop().unwrap().unwrap();
    queue.push(b"x").unwrap();
}

#[test]
fn out_of_order_acks_before_a_reopen_are_not_counted_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(3).max_bytes(3 * 32)).unwrap();
    for value in 0..3u8 {
        queue.push(&[value]).unwrap();
    }
    let _first = queue.try_recv().unwrap().unwrap();
    let second = queue.try_recv().unwrap().unwrap();
    second.ack().unwrap();
    drop(_first);
    drop(queue);
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    // Two records left (0 and 2): the acknowledged one never counts as a record, and its
    // frame counts in the bytes only until the reader passes it.
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.pop().unwrap().unwrap().payload(), [0]);
    queue.push(b"x").unwrap();
    assert!(matches!(
        queue.push(b"y"),
        Err(Error::Full {
            records: 2,
            bytes: 96,
            ..
        })
    ));
    assert_eq!(queue.pop().unwrap().unwrap().payload(), [2]);
    queue.push(b"y").unwrap();
    queue.push(b"z").unwrap();
    assert!(queue.push(b"w").is_err());
    assert_eq!(payloads(&queue), *b"xyz");
}

#[test]
fn drop_oldest_keeps_the_newest_records_and_counts_the_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(3).overflow(Overflow::DropOldest)).unwrap();
    for value in 0..10u8 {
        queue.push(&[value]).unwrap();
    }
    assert_eq!(queue.len(), 3);
    assert_eq!(totals(&queue).discarded(DiscardReason::Overflow), 7);
    assert_eq!(payloads(&queue), [7, 8, 9]);
}

#[test]
fn drop_oldest_skips_records_handed_out_and_fails_when_all_are() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(2).overflow(Overflow::DropOldest)).unwrap();
    queue.push(&[0]).unwrap();
    queue.push(&[1]).unwrap();
    let leased = queue.try_recv().unwrap().unwrap();
    queue.push(&[2]).unwrap();
    assert_eq!(totals(&queue).discarded(DiscardReason::Overflow), 1);
    let also = queue.try_recv().unwrap().unwrap();
    assert_eq!(also.payload(), [2]);
    assert!(matches!(queue.push(&[3]), Err(Error::Full { .. })));
    assert_eq!(leased.payload(), [0]);
}

#[test]
fn dropped_records_go_to_a_configured_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let options = bounded(2)
        .overflow(Overflow::DropOldest)
        .dead_letter_dir("dead");
    let queue = Queue::open(dir.path().join("q"), options).unwrap();
    for value in 0..5u8 {
        queue.push(&[value]).unwrap();
    }
    assert_eq!(totals(&queue).discarded(DiscardReason::Overflow), 3);
    let dead_dir = queue.dead_letter_dir();
    assert_eq!(payloads(&queue), [3, 4]);
    drop(queue);
    let dead = Queue::open(dead_dir, Options::default()).unwrap();
    let mut moved = Vec::new();
    while let Some(record) = dead.pop().unwrap() {
        let envelope = DeadLetter::decode(record.payload()).unwrap();
        assert_eq!(envelope.reason, diskspool::DeadLetterReason::Overflow);
        moved.push((envelope.original_seq, envelope.payload[0]));
    }
    assert_eq!(moved, [(0, 0), (1, 1), (2, 2)]);
}

#[test]
fn block_gives_up_after_its_timeout_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(1).overflow(Overflow::Block)).unwrap();
    queue.push(b"a").unwrap();
    let refused = queue.push_timeout(b"b", Duration::from_millis(1));
    assert!(matches!(refused, Err(Error::Full { .. })), "{refused:?}");
    assert_eq!(queue.len(), 1);
    // With room, push_timeout pushes at once.
    queue.pop().unwrap().unwrap();
    assert_eq!(
        queue.push_timeout(b"b", Duration::from_millis(1)).unwrap(),
        1
    );
}

#[test]
fn block_waits_until_a_consumer_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), bounded(1).overflow(Overflow::Block)).unwrap());
    queue.push(&[0]).unwrap();
    // Whichever comes first, the pop or the wait, the push completes after the pop and the
    // queue holds exactly the new record.
    let pusher = {
        let queue = queue.clone();
        std::thread::spawn(move || queue.push(&[1]).unwrap())
    };
    assert_eq!(queue.pop().unwrap().unwrap().payload(), [0]);
    assert_eq!(pusher.join().unwrap(), 1);
    assert_eq!(payloads(&queue), [1]);
}

#[test]
fn a_dead_letter_queue_does_not_inherit_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let options = bounded(1).overflow(Overflow::Reject);
    let queue = Queue::open(dir.path().join("q"), options).unwrap();
    for _ in 0..3 {
        queue.push(b"a").unwrap();
        queue.try_recv().unwrap().unwrap().dead_letter().unwrap();
    }
    let stored = read_settings(&OsStorage, &queue.dead_letter_dir())
        .unwrap()
        .unwrap();
    assert_eq!(stored.max_records, None);
}

/// Options for a queue on the simulated filesystem `sim`.
fn on_sim(sim: &SimStorage, policy: SyncPolicy) -> Options {
    Options::default()
        .storage(Arc::new(sim.clone()))
        .sync(policy)
}

/// The contract: a rejected push leaves nothing behind after any crash.
#[test]
fn a_rejected_push_leaves_nothing_after_a_power_loss() {
    for seed in 0..20 {
        let sim = SimStorage::new(seed);
        let options = || on_sim(&sim, SyncPolicy::Always);
        let queue = Queue::open("/q", options().max_records(2)).unwrap();
        queue.push(b"a").unwrap();
        queue.push(b"b").unwrap();
        assert!(queue.push(b"c").is_err());
        assert!(queue.push_batch([b"d", b"e"]).is_err());
        sim.power_loss();
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        assert_eq!(queue.stats().unwrap().next_seq, 2, "seed {seed}");
        assert_eq!(payloads(&queue), *b"ab");
    }
}

/// The contract: a record dropped for room is never delivered, also after a power loss (the
/// drop is durable, like a pop, before the push that needed the room is written).
#[test]
fn a_dropped_record_is_never_delivered_after_a_power_loss() {
    for seed in 0..20 {
        let sim = SimStorage::new(seed);
        let options = || on_sim(&sim, SyncPolicy::Always);
        let queue = Queue::open(
            "/q",
            options().max_records(2).overflow(Overflow::DropOldest),
        )
        .unwrap();
        for value in 0..5u8 {
            queue.push(&[value]).unwrap();
        }
        sim.power_loss();
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        assert_eq!(payloads(&queue), [3, 4], "seed {seed}");
    }
}

#[test]
fn purge_removes_every_record_handed_out_ones_included_and_frees_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), bounded(1000)).unwrap();
    for value in 0..200u8 {
        queue.push(&[value; 100]).unwrap();
    }
    let leased = queue.try_recv().unwrap().unwrap();
    queue.try_recv().unwrap().unwrap().ack().unwrap();
    assert!(queue.stats().unwrap().segments > 3);
    assert_eq!(queue.purge().unwrap(), 199);
    assert_eq!(totals(&queue).discarded(DiscardReason::Purge), 199);
    assert!(queue.is_empty());
    assert!(queue.pop().unwrap().is_none());
    assert_eq!(queue.stats().unwrap().segments, 1);
    // A delivery from before settles as a no-op.
    leased.ack().unwrap();
    // The bound's usage starts again from zero; numbering goes on.
    assert_eq!(queue.push(b"next").unwrap(), 200);
    assert_eq!(queue.purge().unwrap(), 1);
    assert_eq!(queue.purge().unwrap(), 0);
    drop(queue);
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(queue.is_empty());
    assert_eq!(queue.push(b"after").unwrap(), 201);
}

/// The contract: a purge is all or nothing across a crash, and durable under `Always` once it
/// returned. Every call of the purge fails in turn, then the power goes.
#[test]
fn purge_is_all_or_nothing_across_a_power_loss() {
    use diskspool::storage::sim::{Fault, FaultKind};
    let mut saw_kept = false;
    let mut saw_purged = false;
    for skip in 0..40 {
        let sim = SimStorage::new(skip);
        let options = || {
            Options::default()
                .segment_size(4096)
                .storage(Arc::new(sim.clone()))
                .sync(SyncPolicy::Always)
        };
        let queue = Queue::open("/q", options()).unwrap();
        for value in 0..100u8 {
            queue.push(&[value; 50]).unwrap();
        }
        queue.pop().unwrap().unwrap();
        let _leased = queue.try_recv().unwrap().unwrap();
        sim.inject(Fault {
            op: None,
            skip,
            kind: FaultKind::Io,
            sticky: false,
        });
        let purged = queue.purge();
        sim.clear_faults();
        sim.power_loss();
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        let len = queue.len();
        assert!(len == 0 || len == 99, "skip {skip}: {len} records left");
        if purged.is_ok() {
            assert_eq!(len, 0, "skip {skip}: a purge that returned is durable");
        }
        saw_kept |= len == 99;
        saw_purged |= len == 0;
        if len == 99 {
            let values: Vec<u8> = queue
                .pop_batch(200)
                .unwrap()
                .iter()
                .map(|record| record.payload()[0])
                .collect();
            assert_eq!(values, (1..100).collect::<Vec<u8>>());
        }
    }
    assert!(saw_kept && saw_purged);
}

/// Waits (without sleeping for a guessed time) until the real-time clock is past `micros`
/// microseconds after `start`: a record pushed before `start` is then older than that.
fn wait_until_older_than(start: std::time::SystemTime, micros: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::SystemTime::now() <= start + Duration::from_micros(micros + 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stands still"
        );
        std::thread::yield_now();
    }
}

#[test]
fn records_older_than_max_age_are_never_delivered_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().max_age(Duration::from_micros(1));
    let queue = Queue::open(dir.path(), options).unwrap();
    for value in 0..5u8 {
        queue.push(&[value]).unwrap();
    }
    // Enqueue times come from the coarse clock, which is never ahead of the precise one.
    wait_until_older_than(std::time::SystemTime::now(), 1);
    assert!(queue.peek().unwrap().is_none());
    assert!(queue.try_recv().unwrap().is_none());
    assert!(queue.pop().unwrap().is_none());
    assert_eq!(totals(&queue).expired, 5);
    assert!(queue.is_empty());
}

#[test]
fn records_younger_than_max_age_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().max_age(Duration::from_secs(3600));
    let queue = Queue::open(dir.path(), options).unwrap();
    queue.push(b"a").unwrap();
    queue.push_delayed(b"b", Duration::ZERO).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"a");
    assert_eq!(queue.try_recv().unwrap().unwrap().payload(), b"b");
    assert_eq!(totals(&queue).expired, 0);
}

#[test]
fn expired_records_free_their_room_and_go_to_a_configured_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .max_records(2)
        .max_age(Duration::from_micros(1))
        .dead_letter_dir("dead");
    let queue = Queue::open(dir.path().join("q"), options).unwrap();
    queue.push(&[0]).unwrap();
    queue.push(&[1]).unwrap();
    wait_until_older_than(std::time::SystemTime::now(), 1);
    assert!(queue.pop().unwrap().is_none());
    // Both expired: their room is back.
    queue.push(&[2]).unwrap();
    queue.push(&[3]).unwrap();
    let dead_dir = queue.dead_letter_dir();
    drop(queue);
    let dead = Queue::open(dead_dir, Options::default()).unwrap();
    let moved: Vec<u64> = dead
        .pop_batch(10)
        .unwrap()
        .iter()
        .map(|record| {
            let envelope = DeadLetter::decode(record.payload()).unwrap();
            assert_eq!(envelope.reason, diskspool::DeadLetterReason::Expired);
            envelope.original_seq
        })
        .collect();
    assert_eq!(moved, [0, 1]);
}

/// The contract: an expired record is never delivered, also after a crash (expiry depends on
/// the enqueue time and the stored `max_age` only, so nothing needs to be written for it).
#[test]
fn an_expired_record_is_never_delivered_after_a_power_loss() {
    for seed in 0..10 {
        let sim = SimStorage::new(seed);
        let options = || on_sim(&sim, SyncPolicy::Always);
        let queue = Queue::open("/q", options().max_age(Duration::from_micros(1))).unwrap();
        for value in 0..3u8 {
            queue.push(&[value]).unwrap();
        }
        wait_until_older_than(std::time::SystemTime::now(), 1);
        if seed % 2 == 0 {
            // Some expired at the head already (nothing written for them).
            assert!(queue.pop().unwrap().is_none());
        }
        sim.power_loss();
        drop(queue);
        // The stored max_age holds without being repeated.
        let queue = Queue::open("/q", options()).unwrap();
        assert!(queue.pop().unwrap().is_none(), "seed {seed}");
        assert!(queue.try_recv().unwrap().is_none(), "seed {seed}");
    }
}

#[test]
fn a_second_push_with_the_same_id_writes_nothing_and_returns_the_first_number() {
    use diskspool::Push;
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    let first = queue.push_with(b"a", Push::new().dedup_id("k1")).unwrap();
    queue.push(b"other").unwrap();
    assert_eq!(
        queue
            .push_with(b"a again", Push::new().dedup_id("k1"))
            .unwrap(),
        first
    );
    // Also after the first was consumed.
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"a");
    assert_eq!(
        queue.push_with(b"a", Push::new().dedup_id("k1")).unwrap(),
        first
    );
    let second = queue.push_with(b"b", Push::new().dedup_id("k2")).unwrap();
    assert_eq!(second, 2);
    assert_eq!(totals(&queue).deduplicated, 2);
    assert_eq!(queue.len(), 2);
    // Ids are 1 to 128 bytes.
    assert!(matches!(
        queue.push_with(b"x", Push::new().dedup_id("")),
        Err(Error::InvalidOptions(_))
    ));
    assert!(matches!(
        queue.push_with(b"x", Push::new().dedup_id([1u8; 129])),
        Err(Error::InvalidOptions(_))
    ));
    drop(queue);
    // After a reopen.
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(
        queue.push_with(b"b", Push::new().dedup_id("k2")).unwrap(),
        second
    );
    assert_eq!(queue.len(), 2);
}

#[test]
fn an_id_outside_the_window_is_pushed_again() {
    use diskspool::Push;
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default().dedup_window(Duration::from_micros(1));
    let queue = Queue::open(dir.path(), options).unwrap();
    let start = std::time::SystemTime::now();
    assert_eq!(queue.push_with(b"a", Push::new().dedup_id("k")).unwrap(), 0);
    wait_until_older_than(std::time::SystemTime::now().max(start), 2);
    assert_eq!(queue.push_with(b"a", Push::new().dedup_id("k")).unwrap(), 1);
    drop(queue);
    // The log keeps only ids in the window: after a reopen it holds none of these.
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    wait_until_older_than(std::time::SystemTime::now(), 2);
    assert_eq!(queue.push_with(b"a", Push::new().dedup_id("k")).unwrap(), 2);
}

#[test]
fn the_deduplication_log_stays_bounded_by_the_window() {
    use diskspool::Push;
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .sync(SyncPolicy::Never)
        .dedup_window(Duration::from_micros(1));
    let queue = Queue::open(dir.path(), options).unwrap();
    for index in 0..20_000u32 {
        queue
            .push_with(b"x", Push::new().dedup_id(index.to_le_bytes()))
            .unwrap();
    }
    let log = std::fs::metadata(dir.path().join("dedup")).unwrap().len();
    // 32 bytes an entry; without the bound it would be 640,000 bytes.
    assert!(log < 32 * 5_000, "dedup log is {log} bytes");
}

/// The contract: the window holds across a crash at any point of a push with an id, under
/// `Always`: after a power loss, a retry of a push that returned finds it, and a retry of one
/// that did not return writes the record exactly once.
#[test]
fn the_dedup_window_holds_across_power_losses_at_every_step() {
    dedup_window_holds_across_crashes(SyncPolicy::Always, |sim| sim.power_loss());
}

/// The same for a process kill (every write the process made survives) under `Never`.
#[test]
fn the_dedup_window_holds_across_process_kills_at_every_step() {
    dedup_window_holds_across_crashes(SyncPolicy::Never, |sim| sim.process_crash());
}

fn dedup_window_holds_across_crashes(policy: SyncPolicy, crash: impl Fn(&SimStorage)) {
    use diskspool::storage::sim::{Fault, FaultKind};
    use diskspool::Push;
    for skip in 0..30 {
        let sim = SimStorage::new(skip);
        let options = || on_sim(&sim, policy);
        let queue = Queue::open("/q", options()).unwrap();
        let kept = queue
            .push_with(b"kept", Push::new().dedup_id("kept"))
            .unwrap();
        queue.pop().unwrap().unwrap();
        sim.inject(Fault {
            op: None,
            skip,
            kind: FaultKind::Io,
            sticky: true,
        });
        let pushed = queue.push_with(b"retried", Push::new().dedup_id("retried"));
        sim.clear_faults();
        crash(&sim);
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        assert_eq!(
            queue
                .push_with(b"kept", Push::new().dedup_id("kept"))
                .unwrap(),
            kept,
            "skip {skip}"
        );
        let retried = queue
            .push_with(b"retried", Push::new().dedup_id("retried"))
            .unwrap();
        if let Ok(seq) = pushed {
            assert_eq!(
                retried, seq,
                "skip {skip}: a push that returned is remembered"
            );
        }
        let records: Vec<Vec<u8>> = queue
            .pop_batch(10)
            .unwrap()
            .iter()
            .map(|record| record.payload().to_vec())
            .collect();
        assert_eq!(records, [b"retried".to_vec()], "skip {skip}");
    }
}

#[test]
fn zero_removes_a_stored_bound() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), bounded(1).max_age(Duration::from_secs(9))).unwrap());
    let options = Options::default().max_records(0).max_age(Duration::ZERO);
    let queue = Queue::open(dir.path(), options).unwrap();
    assert_eq!(queue.options().get_max_records(), None);
    assert_eq!(queue.options().get_max_age(), None);
    queue.push(b"a").unwrap();
    queue.push(b"b").unwrap();
    drop(queue);
    let stored = read_settings(&OsStorage, dir.path()).unwrap().unwrap();
    assert_eq!((stored.max_records, stored.max_age_us), (None, None));
}

/// The simulation's model with purges and pushes with ids: every kind of fault at every step
/// of either, then a power loss or a process kill, under `Always` and `Never`.
#[test]
fn purge_and_dedup_hold_in_the_model_under_every_fault() {
    use diskspool::storage::sim::{Fault, FaultKind, SimOp};
    use diskspool::testkit::{run_ops, Op, Policy};
    let kinds = [
        SimOp::Write,
        SimOp::SyncData,
        SimOp::Open,
        SimOp::CreateNew,
        SimOp::Rename,
        SimOp::SyncDir,
        SimOp::RemoveFile,
        SimOp::Map,
    ];
    for policy in [Policy::Always, Policy::Never] {
        for op in kinds {
            for skip in 0..3 {
                for (index, step) in [Op::Purge, Op::PushDedup { key: 1, len: 300 }]
                    .into_iter()
                    .enumerate()
                {
                    let fault = Fault {
                        op: Some(op),
                        skip,
                        kind: FaultKind::Io,
                        sticky: index == 1,
                    };
                    let mut ops = vec![Op::Reopen { policy }];
                    ops.extend((0..8).map(|_| Op::Push { len: 590 }));
                    ops.push(Op::PushDedup { key: 1, len: 40 });
                    ops.push(Op::RecvNack { count: 2 });
                    ops.push(Op::Fault(fault));
                    ops.push(step);
                    ops.extend([
                        Op::PushDedup { key: 1, len: 40 },
                        Op::PowerLoss { seed: skip, policy },
                        Op::PushDedup { key: 1, len: 40 },
                        Op::Purge,
                        Op::ProcessCrash { policy },
                        Op::PushDedup { key: 2, len: 40 },
                        Op::Pop { max: 8 },
                    ]);
                    if let Err(violation) = run_ops(&ops) {
                        panic!("{violation}\n{ops:#?}");
                    }
                }
            }
        }
    }
}

#[test]
fn expired_records_at_the_head_make_room_for_a_push_also_after_a_reopen() {
    use diskspool::Push;
    let dir = tempfile::tempdir().unwrap();
    let options = || bounded(2).max_age(Duration::from_micros(1));
    let queue = Queue::open(dir.path(), options()).unwrap();
    queue.push(&[0]).unwrap();
    queue.push(&[1]).unwrap();
    wait_until_older_than(std::time::SystemTime::now(), 1);
    // Under Reject too: the expired records are discarded, not the push refused.
    queue.push(&[2]).unwrap();
    drop(queue);
    let queue = Queue::open(dir.path(), options()).unwrap();
    wait_until_older_than(std::time::SystemTime::now(), 1);
    queue.push(&[3]).unwrap();
    queue.push_with(&[4], Push::new().dedup_id("four")).unwrap();
    // Nothing was written for the records expired before the reopen (a peek discarded them,
    // and no pop moved the head since): they expired again, and count again.
    // (`stats`, which reads the counters, peeks too: the two records pushed since may have
    // expired by then as well.)
    let expired = totals(&queue).expired;
    assert!((3..=5).contains(&expired), "{expired} expired");
    assert!(matches!(
        Queue::open(dir.path().join("x"), bounded(1))
            .unwrap()
            .push_batch([b"a", b"b"]),
        Err(Error::Full { .. })
    ));
}
