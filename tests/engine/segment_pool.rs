//! The segment pool: consumed segment files reused for new segments (`Options::segment_pool`).

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::{copy_queue, drain_checked, payload_for, push_expected, segment_files};

fn pool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".free")
        })
        .count()
}

fn pooled(policy: SyncPolicy, segment_size: u64) -> Options {
    Options::default()
        .segment_size(segment_size)
        .sync(policy)
        .segment_pool(2)
}

/// Records written into recycled files come back exactly, in order, across many segments, on
/// both write paths; the pool never holds more than its bound.
#[test]
fn recycled_segments_hold_records_exactly() {
    for mapped in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(
            dir.path(),
            pooled(SyncPolicy::Never, 8192).mapped_writes(mapped),
        )
        .unwrap();
        let mut next = 0;
        for _ in 0..20 {
            push_expected(&queue, 150);
            let drained = drain_checked(&queue);
            assert_eq!(drained, (next..next + 150).collect::<Vec<_>>());
            next += 150;
            assert!(pool_files(dir.path()) <= 2);
        }
        assert!(
            pool_files(dir.path()) > 0,
            "consumed segments went to the pool"
        );
        // Compaction on demand gives the pool's space back.
        let report = queue.compact().unwrap();
        assert!(report.segments_removed > 0);
        assert_eq!(pool_files(dir.path()), 0);
    }
}

/// A recycled active segment as a process kill leaves it: new frames, zeros, then the stale
/// frames of its older life. Recovery keeps every record and reports no torn write.
#[test]
fn recycled_segment_with_stale_tail_recovers_without_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB segments of 1 KiB records: the writer zeroes 1 MiB ahead, stale bytes lie beyond.
    let options = || pooled(SyncPolicy::Never, 4 << 20);
    let queue = Queue::open(dir.path(), options()).unwrap();
    let payload = vec![5u8; 1024];
    let per_segment = (4 << 20) / 1056;
    for _ in 0..per_segment * 2 {
        queue.push(&payload).unwrap();
    }
    while queue.pop().unwrap().is_some() {}
    // The next segments are recycled files; write a few records into the active one.
    for _ in 0..per_segment + 10 {
        queue.push(&payload).unwrap();
    }
    let pushed = queue.stats().unwrap().next_seq;
    let snapshot = copy_queue(dir.path());
    let active = segment_files(snapshot.path()).pop().unwrap();
    let len = std::fs::metadata(&active).unwrap().len();
    assert!(
        len > (2 << 20),
        "the active file is a recycled, full-length one"
    );
    let recovered = Queue::open(snapshot.path(), options()).unwrap();
    assert!(
        recovered.recovery_report().truncated.is_empty(),
        "{:?}",
        recovered.recovery_report()
    );
    assert_eq!(recovered.stats().unwrap().next_seq, pushed);
    let mut count = 0;
    while let Some(record) = recovered.pop().unwrap() {
        assert_eq!(record.payload(), &payload[..]);
        count += 1;
    }
    assert_eq!(count, per_segment + 10);
}

/// A crash right after a pool file became the new segment (header written, no record yet):
/// stale frames follow the header; they belong to lower sequence numbers and never validate.
#[test]
fn stale_frames_right_after_the_header_are_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let options = || pooled(SyncPolicy::Always, 8192);
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 100);
        assert_eq!(drain_checked(&queue).len(), 100);
    }
    // Simulate the reuse step by hand: the consumed active segment's frames (sequence numbers
    // below 100) under the header and name of the next segment, base 100.
    let old = segment_files(dir.path()).pop().unwrap();
    let bytes = std::fs::read(&old).unwrap();
    assert!(!crate::util::frame_offsets(&old).is_empty());
    let base = 100;
    let mut reused = diskspool::format::segment::encode_header(base).to_vec();
    reused.extend_from_slice(&bytes[reused.len()..]);
    let active = dir
        .path()
        .join(diskspool::format::layout::segment_file_name(base));
    std::fs::write(&active, &reused).unwrap();
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(queue.recovery_report().truncated.is_empty());
    assert!(queue.is_empty());
    let seq = queue.push(&payload_for(base)).unwrap();
    assert_eq!(seq, base);
    assert_eq!(drain_checked(&queue), vec![base]);
}

/// A record still held by the caller borrows its segment's mapping: that file must not be
/// recycled (its bytes would change under the record); it is deleted instead, and the record
/// keeps reading its own bytes.
#[test]
fn a_segment_with_a_live_record_is_never_recycled() {
    let dir = tempfile::tempdir().unwrap();
    // A pool of one: a wrongly recycled file would be the very next one reused.
    let options = pooled(SyncPolicy::Never, 8192).segment_pool(1);
    let queue = Queue::open(dir.path(), options).unwrap();
    push_expected(&queue, 20);
    queue.pop().unwrap().unwrap();
    let held = queue.pop().unwrap().unwrap();
    assert!(!held.payload().is_empty());
    assert_eq!(held.payload(), payload_for(1));
    let mut next = 2;
    for _ in 0..10 {
        push_expected(&queue, 150);
        let drained = drain_checked(&queue);
        assert_eq!(drained.first(), Some(&next));
        next += drained.len() as u64;
        assert_eq!(
            held.payload(),
            payload_for(1),
            "the held record's bytes never change"
        );
    }
}

/// The pool's renames and reuses under simulated power losses (unsynced writes, creates and
/// renames may vanish): under `Always` every acknowledged push is there after each loss and no
/// acknowledged pop comes back, across many recycled segments and many seeds.
#[test]
fn recycling_survives_power_losses_on_the_simulated_filesystem() {
    use std::sync::Arc;
    for seed in 0..20 {
        let sim = diskspool::SimStorage::new(seed);
        let options = || {
            Options::default()
                .segment_size(4096)
                .sync(SyncPolicy::Always)
                .segment_pool(2)
                .storage(Arc::new(sim.clone()))
        };
        let mut next_push = 0u64;
        let mut next_pop = 0u64;
        let mut saw_pool = false;
        for round in 0..12 {
            let queue = Queue::open("/q", options()).unwrap();
            assert_eq!(
                queue.stats().unwrap().head_seq,
                next_pop,
                "seed {seed} round {round}"
            );
            for _ in 0..40 {
                assert_eq!(queue.push(&payload_for(next_push)).unwrap(), next_push);
                next_push += 1;
            }
            for _ in 0..35 {
                let record = queue.pop().unwrap().unwrap();
                assert_eq!(record.seq(), next_pop, "seed {seed} round {round}");
                assert_eq!(record.payload(), payload_for(next_pop));
                next_pop += 1;
            }
            drop(queue);
            let names = diskspool::storage::Storage::list_dir(&sim, std::path::Path::new("/q"));
            saw_pool |= names.unwrap().iter().any(|name| name.ends_with(".free"));
            sim.power_loss_seeded(seed * 100 + round);
        }
        assert!(saw_pool, "seed {seed}: consumed segments went to the pool");
        let queue = Queue::open("/q", options()).unwrap();
        let mut seq = next_pop;
        while let Some(record) = queue.pop().unwrap() {
            assert_eq!(record.seq(), seq, "seed {seed}");
            assert_eq!(record.payload(), payload_for(seq));
            seq += 1;
        }
        assert_eq!(
            seq, next_push,
            "seed {seed}: every acknowledged push is there"
        );
    }
}

/// Under `Never` a power loss may lose recent changes, but a queue with a pool must still open
/// without error and hand out records in order with their own payloads.
#[test]
fn recycling_under_never_opens_cleanly_after_power_losses() {
    use std::sync::Arc;
    for seed in 0..20 {
        let sim = diskspool::SimStorage::new(seed);
        let options = || {
            Options::default()
                .segment_size(4096)
                .sync(SyncPolicy::Never)
                .segment_pool(2)
                .storage(Arc::new(sim.clone()))
        };
        for round in 0..8 {
            let queue = Queue::open("/q", options()).unwrap();
            let first = queue.stats().unwrap().next_seq;
            for seq in first..first + 40 {
                assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
            }
            let mut last = None;
            for _ in 0..35 {
                let Some(record) = queue.pop().unwrap() else {
                    break;
                };
                assert_eq!(record.payload(), payload_for(record.seq()), "seed {seed}");
                if let Some(last) = last {
                    assert_eq!(record.seq(), last + 1, "seed {seed} round {round}");
                }
                last = Some(record.seq());
            }
            drop(queue);
            sim.power_loss_seeded(seed * 100 + round);
        }
    }
}

/// Small records after a large one written into a recycled file (defect 3 of issue 10): the
/// written path prepares zeros for a recycled file up to an aligned boundary of its own, past
/// the large record's end; the next small push must still zero (and map) the whole window, not
/// skip the zeros because its own end lies before that boundary. Before the fix, push #101
/// failed with "writable mapping past the end of the file", and so did every later small push.
#[test]
fn small_pushes_after_a_large_one_in_a_recycled_segment_keep_working() {
    for segment_size in [64 << 10, 4 << 20] {
        for policy in [
            SyncPolicy::Never,
            SyncPolicy::Interval(std::time::Duration::from_secs(3600)),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let options = || pooled(policy, segment_size).mapped_writes(true);
            let queue = Queue::open(dir.path(), options()).unwrap();
            let payload = |index: u64| {
                let len = if index % 10 == 9 { 40_000 } else { 100 };
                vec![index as u8; len]
            };
            // 4 MiB segments need more records before files are recycled.
            let count = if segment_size > 1 << 20 { 3_000 } else { 300 };
            let mut next_pop = 0;
            for index in 0..count {
                let seq = queue.push(&payload(index)).unwrap_or_else(|error| {
                    panic!("{segment_size}-byte segments, {policy:?}, push #{index}: {error}")
                });
                assert_eq!(seq, index);
                if index % 3 == 0 {
                    while let Some(record) = queue.pop().unwrap() {
                        assert_eq!(record.seq(), next_pop);
                        assert_eq!(record.payload(), payload(next_pop));
                        next_pop += 1;
                    }
                }
            }
            assert!(
                pool_files(dir.path()) > 0 || segment_files(dir.path()).len() > 1,
                "the run recycled segments"
            );
            // What is on disk recovers exactly, as a kill leaves it and after a clean close.
            let snapshot = copy_queue(dir.path());
            drop(queue);
            for path in [snapshot.path(), dir.path()] {
                let queue = Queue::open(path, options()).unwrap();
                assert!(queue.recovery_report().truncated.is_empty());
                let mut seq = next_pop;
                while let Some(record) = queue.pop().unwrap() {
                    assert_eq!(record.seq(), seq);
                    assert_eq!(record.payload(), payload(seq));
                    seq += 1;
                }
                assert_eq!(seq, count);
            }
        }
    }
}

/// Pool files are the queue's own: verify does not call them strays, repair leaves them.
#[test]
fn pool_files_are_neither_strays_nor_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), pooled(SyncPolicy::Never, 8192)).unwrap();
        push_expected(&queue, 300);
        drain_checked(&queue);
        push_expected(&queue, 10);
    }
    let pooled_before = pool_files(dir.path());
    assert!(pooled_before > 0);
    let storage = diskspool::storage::OsStorage;
    let report = diskspool::tools::verify::verify(&storage, dir.path()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let repaired = diskspool::tools::repair::repair(
        &storage,
        dir.path(),
        diskspool::tools::repair::Mode::Repair,
    )
    .unwrap();
    assert!(repaired.nothing_to_do(), "{repaired:?}");
    assert_eq!(pool_files(dir.path()), pooled_before);
}
