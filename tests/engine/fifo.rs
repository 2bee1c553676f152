//! FIFO order, across many segment rolls and concurrent threads.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use diskspool::{Options, Push, Queue, SyncPolicy};

use crate::util::{drain_checked, payload_for, push_expected, small_segments};

#[test]
fn records_come_out_in_push_order_across_many_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    push_expected(&queue, 2_000);
    assert!(
        queue.stats().unwrap().segments > 50,
        "the test must cross many segments"
    );
    let seqs = drain_checked(&queue);
    assert_eq!(seqs, (0..2_000).collect::<Vec<_>>());
}

#[test]
fn interleaved_push_and_pop_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    let mut next_pop = 0;
    for round in 0..200u64 {
        push_expected(&queue, round % 7 + 1);
        for _ in 0..(round % 5) {
            if let Some(record) = queue.pop().unwrap() {
                assert_eq!(record.seq(), next_pop);
                assert_eq!(record.payload(), payload_for(next_pop));
                next_pop += 1;
            }
        }
    }
    let rest = drain_checked(&queue);
    assert_eq!(rest.first().copied(), Some(next_pop));
}

#[test]
fn peek_returns_the_head_without_removing_it() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap();
    assert!(queue.peek().unwrap().is_none());
    push_expected(&queue, 3);
    assert_eq!(queue.peek().unwrap().unwrap().seq(), 0);
    assert_eq!(queue.peek().unwrap().unwrap().seq(), 0);
    assert_eq!(queue.len(), 3);
    assert_eq!(queue.pop().unwrap().unwrap().seq(), 0);
    assert_eq!(queue.peek().unwrap().unwrap().seq(), 1);
}

#[test]
fn concurrent_producers_and_consumers_lose_and_duplicate_nothing() {
    for policy in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let options = small_segments(policy).segment_size(64 << 10);
        let queue = Arc::new(Queue::open(dir.path(), options).unwrap());
        let per_producer = if policy == SyncPolicy::Always {
            200
        } else {
            3_000
        };
        let producers = 4;
        let total = per_producer * producers;
        let popped = std::thread::scope(|scope| {
            for producer in 0..producers {
                let queue = queue.clone();
                scope.spawn(move || {
                    for index in 0..per_producer {
                        let payload = format!("{producer}:{index}");
                        queue.push(payload.as_bytes()).unwrap();
                    }
                });
            }
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    let queue = queue.clone();
                    scope.spawn(move || {
                        let mut mine = Vec::new();
                        let mut idle = 0;
                        while idle < 200 {
                            match queue.pop_timeout(Duration::from_millis(5)).unwrap() {
                                Some(record) => {
                                    idle = 0;
                                    let text = String::from_utf8(record.payload().to_vec());
                                    mine.push((record.seq(), text.unwrap()));
                                }
                                None => idle += 1,
                            }
                        }
                        mine
                    })
                })
                .collect();
            consumers
                .into_iter()
                .flat_map(|handle| handle.join().unwrap())
                .collect::<Vec<_>>()
        });
        assert_eq!(popped.len(), total, "{policy:?}: every record popped once");
        let seqs: HashSet<u64> = popped.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs.len(), total, "{policy:?}: no sequence number twice");
        let payloads: HashSet<&String> = popped.iter().map(|(_, payload)| payload).collect();
        assert_eq!(payloads.len(), total, "{policy:?}: no payload twice");
        // Each producer's records come out in the order it pushed them.
        let mut sorted = popped.clone();
        sorted.sort();
        for producer in 0..producers {
            let order: Vec<usize> = sorted
                .iter()
                .filter_map(|(_, payload)| {
                    let (who, index) = payload.split_once(':')?;
                    (who == producer.to_string()).then(|| index.parse().unwrap())
                })
                .collect();
            assert_eq!(order, (0..per_producer).collect::<Vec<_>>());
        }
        assert!(queue.is_empty());
    }
}

#[test]
fn pop_timeout_returns_a_delayed_record_that_comes_due_before_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    queue
        .push_with(b"later", Push::default().delay(Duration::from_millis(50)))
        .unwrap();
    // Woken at the delay's end with no push since: it looks again rather than give up
    // (it returned `None` there, 29.95 s early).
    let record = queue.pop_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(record.expect("due before the timeout").payload(), b"later");
}

#[test]
fn pop_timeout_wakes_when_a_record_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Arc::new(Queue::open(dir.path(), small_segments(SyncPolicy::Never)).unwrap());
    assert!(queue
        .pop_timeout(Duration::from_millis(20))
        .unwrap()
        .is_none());
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            queue.push(b"late").unwrap();
        })
    };
    let record = queue.pop_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(record.unwrap().payload(), b"late");
    producer.join().unwrap();
}
