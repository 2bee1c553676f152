//! The typed layer round-trips values and never loses a payload that fails to decode.

use std::time::Duration;

use diskspool::{Codec, DeadLetter, Error, Options, Queue, SyncPolicy, TypedQueue, TypedRecvError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    tags: Vec<String>,
    deadline: Option<u32>,
}

fn job(id: u64) -> Job {
    Job {
        id,
        name: format!("job-{id}"),
        tags: (0..id % 4).map(|tag| format!("t{tag}")).collect(),
        deadline: id.is_multiple_of(2).then_some(id as u32 * 10),
    }
}

#[test]
fn values_round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never);
    {
        let jobs: TypedQueue<Job> = TypedQueue::open(dir.path(), options.clone()).unwrap();
        for id in 0..50 {
            assert_eq!(jobs.push(&job(id)).unwrap(), id);
        }
        let batch: Vec<Job> = (50..60).map(job).collect();
        assert_eq!(jobs.push_batch(&batch).unwrap(), 50..60);
        assert_eq!(jobs.pop().unwrap(), Some((0, job(0))));
    }
    let jobs: TypedQueue<Job> = TypedQueue::open(dir.path(), options).unwrap();
    assert_eq!(jobs.peek().unwrap(), Some((1, job(1))));
    let rest = jobs.pop_batch(100).unwrap();
    assert_eq!(rest, (1..60).map(|id| (id, job(id))).collect::<Vec<_>>());
    assert!(jobs.is_empty());
}

#[test]
fn a_payload_that_does_not_decode_stays_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let jobs: TypedQueue<Job> =
        TypedQueue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    jobs.inner().push(&[0xFF, 0xFF, 0xFF]).unwrap();
    jobs.push(&job(1)).unwrap();
    match jobs.pop() {
        Err(Error::Codec { seq: Some(0), .. }) => {}
        other => panic!("expected a codec error for seq 0, got {other:?}"),
    }
    assert_eq!(jobs.len(), 2, "the undecodable record was not consumed");
    // The operator can drain it through the byte queue, then the typed queue moves on.
    assert_eq!(jobs.inner().pop().unwrap().unwrap().payload(), [0xFF; 3]);
    assert_eq!(jobs.pop().unwrap(), Some((1, job(1))));
}

/// A codec of its own: plain UTF-8 strings.
struct Utf8;

impl Codec<String> for Utf8 {
    fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), diskspool::BoxError> {
        out.extend_from_slice(value.as_bytes());
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, diskspool::BoxError> {
        Ok(String::from_utf8(bytes.to_vec())?)
    }
}

#[test]
fn a_custom_codec_plugs_in() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    let words = TypedQueue::with_codec(queue, Utf8);
    words.push(&"héllo".to_string()).unwrap();
    assert_eq!(
        words.inner().peek().unwrap().unwrap().payload(),
        "héllo".as_bytes()
    );
    assert_eq!(words.pop().unwrap(), Some((0, "héllo".to_string())));
}

#[test]
fn typed_deliveries_decode_and_settle_like_byte_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let jobs: TypedQueue<Job> =
        TypedQueue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    assert!(format!("{jobs:?}").starts_with("TypedQueue { dir: "));
    jobs.push_batch(&[job(1), job(2)]).unwrap();
    let first = jobs.try_recv().unwrap().unwrap();
    assert_eq!(
        (first.seq(), first.value(), first.deliveries()),
        (0, &job(1), 1)
    );
    first.nack().unwrap();
    let again = jobs.recv().unwrap();
    assert_eq!((again.seq(), again.deliveries()), (0, 2));
    again.extend(Duration::from_secs(60)).unwrap();
    again.ack().unwrap();
    let second = jobs.recv_timeout(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(second.value(), &job(2));
    second.retry_after(Duration::from_secs(3600)).unwrap();
    assert!(
        jobs.try_recv().unwrap().is_none(),
        "the retry is not due yet"
    );
    assert_eq!(jobs.len(), 1);
    jobs.close().unwrap();
    let jobs: TypedQueue<Job> = TypedQueue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(jobs.len(), 1, "the unacknowledged value survives the close");
}

/// The way past an undecodable record without `inner()`: a receive hands it over leased, and
/// the caller dead-letters it (or acknowledges it to drop it); the values behind it flow again.
#[test]
fn an_undecodable_record_is_taken_out_through_the_typed_receive() {
    let dir = tempfile::tempdir().unwrap();
    let queue_dir = dir.path().join("jobs");
    let jobs: TypedQueue<Job> =
        TypedQueue::open(&queue_dir, Options::default().sync(SyncPolicy::Never)).unwrap();
    jobs.inner().push(&[0xFF, 0xFF, 0xFF]).unwrap();
    jobs.inner().push(&[0xFE]).unwrap();
    jobs.push(&job(2)).unwrap();
    assert!(matches!(jobs.pop(), Err(Error::Codec { seq: Some(0), .. })));
    match jobs.try_recv() {
        Err(TypedRecvError::Undecodable { delivery, error }) => {
            assert_eq!(delivery.seq(), 0);
            assert!(matches!(error, Error::Codec { seq: Some(0), .. }));
            delivery.dead_letter().unwrap();
        }
        other => panic!("expected an undecodable record, got {other:?}"),
    }
    match jobs.try_recv() {
        Err(TypedRecvError::Undecodable { delivery, .. }) => delivery.ack().unwrap(),
        other => panic!("expected an undecodable record, got {other:?}"),
    }
    assert_eq!(jobs.pop().unwrap(), Some((2, job(2))));
    assert!(jobs.is_empty());
    drop(jobs); // It holds the dead-letter queue open.
    let dead = Queue::open(dir.path().join("jobs.dead"), Options::default()).unwrap();
    let record = dead.pop().unwrap().expect("the dead-lettered record");
    let letter = DeadLetter::decode(record.payload()).unwrap();
    assert_eq!((letter.original_seq, letter.payload), (0, &[0xFF; 3][..]));
    assert!(
        dead.pop().unwrap().is_none(),
        "the acknowledged one is gone"
    );
}

#[test]
fn codec_errors_read_as_sentences_and_chain_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let numbers: TypedQueue<u32> =
        TypedQueue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    numbers.inner().push(&[0xFF, 0xFF, 0xFF]).unwrap();
    let error = numbers.pop().unwrap_err();
    let source = std::error::Error::source(&error).expect("the codec's error");
    assert_eq!(
        error.to_string(),
        format!("could not decode record 0: {source}")
    );
    let error = numbers.try_recv().unwrap_err();
    assert!(error.to_string().starts_with("could not decode record 0: "));
    assert!(std::error::Error::source(&error).is_some());
}

/// Handles of one process stand for processes here (each takes its own locks and slot, as in
/// `shared.rs`): typed values pushed in one handle come out of the others, each once.
#[test]
fn typed_queues_of_several_handles_share_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .exclusive(false)
        .sync(SyncPolicy::Never)
        .segment_size(4096)
        .lease(Duration::from_secs(3600));
    let producer: TypedQueue<Job> = TypedQueue::open(dir.path(), options.clone()).unwrap();
    let first: TypedQueue<Job> = TypedQueue::open(dir.path(), options.clone()).unwrap();
    let second: TypedQueue<Job> = TypedQueue::open(dir.path(), options).unwrap();
    for id in 0..40 {
        assert_eq!(producer.push(&job(id)).unwrap(), id);
    }
    // Pops and leases in both consumers, alternating: every value once, in order.
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for turn in 0..40u64 {
        let consumer = if turn % 2 == 0 { &first } else { &second };
        if turn % 3 == 0 {
            let delivery = consumer.try_recv().unwrap().expect("a value");
            seen.push((delivery.seq(), delivery.value().clone()));
            held.push(delivery);
        } else {
            seen.push(consumer.pop().unwrap().expect("a value"));
        }
    }
    assert_eq!(seen, (0..40).map(|id| (id, job(id))).collect::<Vec<_>>());
    // Leased values are nobody else's until acknowledged.
    assert!(first.try_recv().unwrap().is_none());
    assert_eq!(second.len(), held.len() as u64);
    for delivery in held {
        delivery.ack().unwrap();
    }
    assert!(producer.is_empty());
}
