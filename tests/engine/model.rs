//! Property test: random operations against a `VecDeque` model.

use std::collections::VecDeque;

use diskspool::{Queue, SyncPolicy};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Push(Vec<u8>),
    PushBatch(Vec<Vec<u8>>),
    Pop,
    PopBatch(usize),
    Peek,
    Reopen,
    Compact,
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 64..900),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => payload().prop_map(Op::Push),
        2 => prop::collection::vec(payload(), 0..6).prop_map(Op::PushBatch),
        4 => Just(Op::Pop),
        2 => (0usize..8).prop_map(Op::PopBatch),
        1 => Just(Op::Peek),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

fn options(auto_compact: bool) -> diskspool::Options {
    diskspool::Options::default()
        .segment_size(4096)
        .auto_compact(auto_compact)
        .sync(SyncPolicy::Never)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn queue_behaves_like_a_vecdeque(ops in prop::collection::vec(op(), 1..120), auto in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let mut queue = Some(Queue::open(dir.path(), options(auto)).unwrap());
        let mut model: VecDeque<(u64, Vec<u8>)> = VecDeque::new();
        let mut next_seq = 0u64;
        for op in ops {
            let q = queue.as_ref().unwrap();
            match op {
                Op::Push(payload) => {
                    prop_assert_eq!(q.push(&payload).unwrap(), next_seq);
                    model.push_back((next_seq, payload));
                    next_seq += 1;
                }
                Op::PushBatch(payloads) => {
                    let range = q.push_batch(&payloads).unwrap();
                    prop_assert_eq!(range.clone(), next_seq..next_seq + payloads.len() as u64);
                    for payload in payloads {
                        model.push_back((next_seq, payload));
                        next_seq += 1;
                    }
                }
                Op::Pop => {
                    let got = q.pop().unwrap().map(|r| (r.seq(), r.payload().to_vec()));
                    prop_assert_eq!(got, model.pop_front());
                }
                Op::PopBatch(max) => {
                    let got: Vec<_> = q.pop_batch(max).unwrap().iter()
                        .map(|r| (r.seq(), r.payload().to_vec())).collect();
                    let want: Vec<_> = (0..max.min(model.len())).filter_map(|_| model.pop_front()).collect();
                    prop_assert_eq!(got, want);
                }
                Op::Peek => {
                    let got = q.peek().unwrap().map(|r| (r.seq(), r.payload().to_vec()));
                    prop_assert_eq!(got, model.front().cloned());
                }
                Op::Reopen => {
                    drop(queue.take());
                    queue = Some(Queue::open(dir.path(), options(auto)).unwrap());
                    prop_assert!(queue.as_ref().unwrap().recovery_report().truncated.is_empty());
                }
                Op::Compact => {
                    q.compact().unwrap();
                }
            }
            let q = queue.as_ref().unwrap();
            prop_assert_eq!(q.len(), model.len() as u64);
            let stats = q.stats().unwrap();
            prop_assert_eq!(stats.next_seq, next_seq);
            prop_assert_eq!(stats.head_seq, model.front().map_or(next_seq, |(seq, _)| *seq));
        }
    }
}
