//! A spool of named queues; fanout writes one independent copy per queue, all or nothing.

use diskspool::{Options, Spool, SyncPolicy};

#[test]
fn fanout_copies_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for index in 0..10u64 {
        let message = format!("m{index}");
        let seqs = spool.fanout(message.as_bytes(), &["c", "a", "b"]).unwrap();
        assert_eq!(seqs, [index, index, index]);
    }
    let drained: Vec<Vec<u8>> = spool
        .queue("a")
        .unwrap()
        .pop_batch(100)
        .unwrap()
        .iter()
        .map(|record| record.payload().to_vec())
        .collect();
    assert_eq!(drained.len(), 10);
    for name in ["b", "c"] {
        let queue = spool.queue(name).unwrap();
        assert_eq!(queue.len(), 10, "draining one queue leaves {name} whole");
        for (index, record) in queue.pop_batch(100).unwrap().iter().enumerate() {
            assert_eq!(record.payload(), format!("m{index}").as_bytes());
        }
    }
    assert_eq!(spool.queue_names().unwrap(), ["a", "b", "c"]);
}

#[test]
fn fanout_refuses_bad_or_repeated_names() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    assert!(spool.fanout(b"x", &["a", "a"]).is_err());
    assert!(spool.fanout(b"x", &["a", "../escape"]).is_err());
    assert!(
        spool.queue_names().unwrap().is_empty(),
        "a refused fanout writes nothing"
    );
}

#[test]
fn a_spool_is_locked_like_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(
        Spool::open(dir.path(), Options::default()),
        Err(diskspool::Error::Locked { .. })
    ));
}

/// Spool handles stand for processes here (each opens its own queues shared); a child
/// process killed in a fanout is in `multiprocess.rs`.
#[test]
fn spools_of_shared_queues_fan_out_from_every_handle() {
    for sync in [SyncPolicy::Never, SyncPolicy::Always] {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default().exclusive(false).sync(sync);
        let first = Spool::open(dir.path(), options.clone()).unwrap();
        let second = Spool::open(dir.path(), options.clone()).unwrap();
        assert_eq!(first.fanout(b"one", &["x", "y"]).unwrap(), [0, 0]);
        assert_eq!(second.fanout(b"two", &["z", "y"]).unwrap(), [0, 1]);
        assert_eq!(first.fanout(b"three", &["x", "z"]).unwrap(), [1, 1]);
        // A consumer of one queue, opened on its own beside the spools.
        let y = diskspool::Queue::open(dir.path().join("y"), options.clone()).unwrap();
        assert_eq!(y.pop().unwrap().unwrap().payload(), b"one");
        let pop = |spool: &Spool, name: &str| -> Vec<Vec<u8>> {
            let queue = spool.queue(name).unwrap();
            std::iter::from_fn(|| queue.pop().unwrap())
                .map(|record| record.payload().to_vec())
                .collect()
        };
        assert_eq!(pop(&second, "x"), [b"one".to_vec(), b"three".to_vec()]);
        assert_eq!(pop(&first, "y"), [b"two".to_vec()]);
        assert_eq!(pop(&first, "z"), [b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(first.queue_names().unwrap(), ["x", "y", "z"]);
    }
}

/// A file that fails every write while `on` is set.
#[derive(Debug)]
struct FailingFile {
    inner: Box<dyn diskspool::storage::StorageFile>,
    on: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl diskspool::storage::StorageFile for FailingFile {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.on.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write failure"));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn map(&self, len: u64) -> std::io::Result<diskspool::storage::Mapping> {
        self.inner.map(len)
    }
}

#[test]
fn an_interrupted_fanout_is_completed_when_the_spool_is_reopened() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let on = Arc::new(AtomicBool::new(false));
    let failing_dir = dir.path().join("b");
    let switch = on.clone();
    let storage = Arc::new(crate::util::WrappedStorage {
        wrap: move |path: &std::path::Path, inner| {
            if path.starts_with(&failing_dir) {
                Box::new(FailingFile {
                    inner,
                    on: switch.clone(),
                }) as Box<dyn diskspool::storage::StorageFile>
            } else {
                inner
            }
        },
    });
    let options = Options::default().sync(SyncPolicy::Always).storage(storage);
    {
        let spool = Spool::open(dir.path(), options.clone()).unwrap();
        spool.fanout(b"first", &["a", "b", "c"]).unwrap();
        on.store(true, Ordering::SeqCst);
        // The copy for "a" is written, the one for "b" fails, "c" is never reached.
        assert!(spool.fanout(b"second", &["a", "b", "c"]).is_err());
        on.store(false, Ordering::SeqCst);
    }
    let spool = Spool::open(dir.path(), options).unwrap();
    for name in ["a", "b", "c"] {
        let payloads: Vec<Vec<u8>> = spool
            .queue(name)
            .unwrap()
            .pop_batch(10)
            .unwrap()
            .iter()
            .map(|record| record.payload().to_vec())
            .collect();
        assert_eq!(
            payloads,
            [b"first".to_vec(), b"second".to_vec()],
            "queue {name}"
        );
    }
}

/// A fanout to a queue whose sequence numbers are used up is refused before its intent is
/// written: otherwise every later open of the spool would fail to roll the copy forward.
#[test]
fn a_fanout_to_a_queue_without_sequence_numbers_left_is_refused_whole() {
    use diskspool::format::head::{encode_slot, HeadSlot, HeadState, HEAD_FILE_LEN};
    use diskspool::format::layout::HEAD_FILE_NAME;
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().sync(SyncPolicy::Never);
    drop(Spool::open(dir.path(), options()).unwrap());
    let full = dir.path().join("a");
    std::fs::create_dir(&full).unwrap();
    let last = diskspool::format::frame::SEQ_LIMIT;
    let mut head = vec![0; HEAD_FILE_LEN as usize];
    let slot = encode_slot(&HeadSlot {
        generation: 1,
        state: HeadState {
            head_seq: last,
            hint_base: last,
            hint_offset: diskspool::format::segment::SEGMENT_HEADER_LEN as u64,
            synced_seq: 0,
        },
    });
    head[..slot.len()].copy_from_slice(&slot);
    std::fs::write(full.join(HEAD_FILE_NAME), head).unwrap();
    {
        let spool = Spool::open(dir.path(), options()).unwrap();
        assert!(matches!(
            spool.fanout(b"x", &["a", "b"]),
            Err(diskspool::Error::SeqExhausted { .. })
        ));
        assert!(spool.queue("b").unwrap().is_empty(), "no copy anywhere");
    }
    let spool = Spool::open(dir.path(), options()).unwrap();
    assert!(
        spool.queue("b").unwrap().is_empty(),
        "nothing rolled forward"
    );
    assert_eq!(spool.fanout(b"y", &["b"]).unwrap(), [0]);
}

#[test]
fn a_fanout_to_a_full_bounded_queue_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .sync(SyncPolicy::Never)
        .max_records(1)
        .overflow(diskspool::Overflow::DropOldest);
    let spool = Spool::open(dir.path(), options).unwrap();
    spool.fanout(b"x", &["a", "b"]).unwrap();
    spool.queue("a").unwrap().pop().unwrap().unwrap();
    // "b" is full: a fanout neither drops nor waits, and writes no copy anywhere.
    assert!(matches!(
        spool.fanout(b"y", &["a", "b"]),
        Err(diskspool::Error::Full { .. })
    ));
    assert!(spool.queue("a").unwrap().is_empty());
    assert_eq!(spool.queue("b").unwrap().len(), 1);
}
