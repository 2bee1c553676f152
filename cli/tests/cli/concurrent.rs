//! Read-only commands against a queue that another thread pushes to and pops from under
//! automatic compaction with small segments: they must never fail or crash.
//!
//! This is a smoke test of the real thing; it proves nothing about a particular interleaving.
//! Each race it can run into is forced deterministically in `races.rs`. It depends on no timing:
//! it runs a fixed number of rounds, each after the writer has moved the queue on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::*;

/// Rounds of `stat`, `dump`, `verify` and `inspect`.
const ROUNDS: u64 = 100;
/// Records the writer pushes between two rounds (it pops 90% of them).
const PUSHED_PER_ROUND: u64 = 1000;

#[test]
fn stat_dump_and_verify_never_fail_while_the_queue_changes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let options = Options::default()
        .segment_size(SEGMENT_BYTES)
        .sync(SyncPolicy::Never)
        .auto_compact(true);
    let queue = Queue::open(&dir, options).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stop, pushed) = (stop.clone(), pushed.clone());
        std::thread::spawn(move || {
            let mut next = 0u64;
            let mut expected = 0u64;
            while !stop.load(Ordering::Acquire) {
                for _ in 0..20 {
                    assert_eq!(queue.push(&payload_for(next)).unwrap(), next);
                    next += 1;
                }
                for record in queue.pop_batch(18).unwrap() {
                    assert_eq!(record.seq(), expected);
                    assert_eq!(record.payload(), payload_for(expected));
                    expected += 1;
                }
                pushed.store(next, Ordering::Release);
            }
            next
        })
    };
    for round in 1..=ROUNDS {
        // Each round finds the queue moved on (whatever the machine's load), and the writer
        // goes on pushing and compacting while the commands run.
        while pushed.load(Ordering::Acquire) < round * PUSHED_PER_ROUND {
            std::thread::yield_now();
        }
        for command in ["stat", "dump", "verify", "inspect"] {
            let output = spool(&[command, arg(&dir)]).output().unwrap();
            assert_eq!(
                output.status.code(),
                Some(0),
                "{command} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if command == "dump" {
                // Every line is a record, complete and in order, none skipped.
                let text = String::from_utf8(output.stdout).unwrap();
                let seqs: Vec<u64> = text
                    .lines()
                    .map(|line| {
                        let seq: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
                        assert_eq!(line.as_bytes(), payload_for(seq));
                        seq
                    })
                    .collect();
                assert!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1));
            }
        }
    }
    stop.store(true, Ordering::Release);
    assert!(worker.join().unwrap() >= ROUNDS * PUSHED_PER_ROUND);
}
