//! The typed layer round-trips values and never loses a payload that fails to decode.

use diskspool::{Codec, Error, Options, Queue, SyncPolicy, TypedQueue};
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
