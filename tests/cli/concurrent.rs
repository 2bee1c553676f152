//! Read-only commands against a queue that another thread pushes to and pops from under
//! automatic compaction with small segments: they must never fail or crash.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::*;

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
    let worker = {
        let stop = stop.clone();
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
            }
            next
        })
    };
    let started = Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(4) {
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
                // Every line is a record, complete and in order.
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
        runs += 1;
    }
    stop.store(true, Ordering::Release);
    let pushed = worker.join().unwrap();
    assert!(runs >= 3, "only {runs} rounds ran");
    assert!(pushed > 1000, "the writer made progress: {pushed}");
}
