//! The two write paths: frames stored through a writable mapping of zeros written ahead of the
//! tail (the real filesystem), and frames written with `write_all_at` (storage without writable
//! mappings). Both must leave files that recover exactly.

use std::io;
use std::path::Path;
use std::sync::Arc;

use diskspool::format::frame;
use diskspool::storage::{Mapping, StorageFile};
use diskspool::{Options, Queue, SyncPolicy};

use crate::util::{
    copy_queue, data_end, drain_checked, payload_for, push_expected, segment_files, WrappedStorage,
};

/// A snapshot of a running queue (as a process kill leaves it) has zeros after the last record;
/// recovery cuts them, reports nothing lost and returns every record.
#[test]
fn zero_tail_of_a_running_queue_recovers_without_a_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    push_expected(&queue, 50);
    let segment = segment_files(dir.path()).pop().unwrap();
    let data_end = queue.stats().unwrap().live_bytes + 32;
    let on_disk = std::fs::metadata(&segment).unwrap().len();
    assert!(on_disk > data_end, "zeros are prepared ahead of the tail");
    let bytes = std::fs::read(&segment).unwrap();
    assert!(bytes[data_end as usize..].iter().all(|&byte| byte == 0));

    let snapshot = copy_queue(dir.path());
    let recovered = Queue::open(snapshot.path(), Options::default()).unwrap();
    assert!(recovered.recovery_report().truncated.is_empty());
    let copied = segment_files(snapshot.path()).pop().unwrap();
    assert_eq!(std::fs::metadata(&copied).unwrap().len(), data_end);
    assert_eq!(drain_checked(&recovered), (0..50).collect::<Vec<_>>());
}

/// A torn frame followed by zeros is a torn write: cut and reported, earlier records kept.
#[test]
fn torn_frame_before_the_zero_tail_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    push_expected(&queue, 10);
    let data_end = queue.stats().unwrap().live_bytes + 32;
    let snapshot = copy_queue(dir.path());
    let segment = segment_files(snapshot.path()).pop().unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut torn = Vec::new();
    frame::encode(&mut torn, 10, 0, &payload_for(10), false, 0);
    torn.truncate(torn.len() / 2);
    bytes[data_end as usize..data_end as usize + torn.len()].copy_from_slice(&torn);
    std::fs::write(&segment, &bytes).unwrap();

    let recovered = Queue::open(snapshot.path(), Options::default()).unwrap();
    let report = recovered.recovery_report();
    assert_eq!(report.truncated.len(), 1, "{report:?}");
    assert_eq!(report.truncated[0].offset, data_end);
    assert_eq!(report.truncated[0].first_lost_seq, 10);
    assert_eq!(drain_checked(&recovered), (0..10).collect::<Vec<_>>());
}

/// Sealed segments and a cleanly closed queue hold no zeros: every file ends at its data.
#[test]
fn sealed_segments_and_closed_queues_end_at_their_data() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), Options::default().segment_size(8192)).unwrap();
        push_expected(&queue, 200);
    }
    let segments = segment_files(dir.path());
    assert!(segments.len() > 3);
    for segment in &segments {
        let len = std::fs::metadata(segment).unwrap().len();
        assert_eq!(len, data_end(segment), "{}", segment.display());
    }
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert!(queue.recovery_report().truncated.is_empty());
    assert_eq!(drain_checked(&queue), (0..200).collect::<Vec<_>>());
}

/// A file of the real filesystem with a feature taken away: without writable mappings (the
/// engine must fall back to plain writes), or with zero fills (large all-zero writes) failing
/// with ENOSPC, as on a disk too full for a window of prepared space.
#[derive(Debug)]
struct AlteredFile {
    inner: Box<dyn StorageFile>,
    writable_mappings: bool,
    room_for_zeros: bool,
}

impl AlteredFile {
    fn without_writable_mappings(inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(AlteredFile {
            inner,
            writable_mappings: false,
            room_for_zeros: true,
        })
    }

    fn without_room_for_zeros(inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
        Box::new(AlteredFile {
            inner,
            writable_mappings: true,
            room_for_zeros: false,
        })
    }
}

impl StorageFile for AlteredFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.room_for_zeros && buf.len() >= 4096 && buf.iter().all(|&byte| byte == 0) {
            // Half of it lands, as a real short write on a full disk may.
            self.inner.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no room"));
        }
        self.inner.write_all_at(buf, offset)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn map(&self, len: u64) -> io::Result<Mapping> {
        self.inner.map(len)
    }
    fn map_writable(
        &self,
        offset: u64,
        len: u64,
    ) -> io::Result<Option<Box<dyn diskspool::storage::WritableMapping>>> {
        if !self.writable_mappings {
            return Ok(None);
        }
        self.inner.map_writable(offset, len)
    }
}

#[test]
fn storage_without_writable_mappings_uses_plain_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .segment_size(8192)
            .sync(SyncPolicy::Always)
            .storage(Arc::new(WrappedStorage {
                wrap: |_: &Path, file| AlteredFile::without_writable_mappings(file),
            }))
    };
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 100);
        // No zeros are written ahead on this path: the active file ends at its data.
        let segment = segment_files(dir.path()).pop().unwrap();
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            data_end(&segment)
        );
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert_eq!(drain_checked(&queue), (0..100).collect::<Vec<_>>());
}

/// `Options::mapped_writes(false)` keeps the real filesystem on plain writes: no zeros ahead.
#[test]
fn mapped_writes_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .sync(SyncPolicy::Never)
            .mapped_writes(false)
    };
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 20);
        let segment = segment_files(dir.path()).pop().unwrap();
        let data_end = queue.stats().unwrap().live_bytes + 32;
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), data_end);
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert_eq!(drain_checked(&queue), (0..20).collect::<Vec<_>>());
}

/// Large batches (written with `write_all_at`) and small ones (stored through the mapping)
/// interleave at the same tail: every record comes back, from the running queue, from a
/// snapshot of it (zeros after the tail) and after a clean close.
#[test]
fn large_and_small_records_interleave_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .segment_size(1 << 20)
            .sync(SyncPolicy::Never)
    };
    let payload = |index: u64| -> Vec<u8> {
        let len = if index.is_multiple_of(3) {
            40 << 10
        } else {
            100
        };
        (0..len).map(|byte| (byte as u64 + index) as u8).collect()
    };
    let queue = Queue::open(dir.path(), options()).unwrap();
    for index in 0..200 {
        assert_eq!(queue.push(&payload(index)).unwrap(), index);
    }
    let check = |queue: &Queue| {
        for index in 0..200 {
            let record = queue.pop().unwrap().unwrap();
            assert_eq!(record.seq(), index);
            assert_eq!(record.payload(), payload(index), "record {index}");
        }
        assert!(queue.pop().unwrap().is_none());
    };
    let snapshot = copy_queue(dir.path());
    let recovered = Queue::open(snapshot.path(), options()).unwrap();
    assert!(recovered.recovery_report().truncated.is_empty());
    check(&recovered);
    drop(queue);
    let reopened = Queue::open(dir.path(), options()).unwrap();
    check(&reopened);
}

/// Without room for a window of zeros, pushes that fit are still accepted (written without a
/// mapping), and no partial zeros are left behind.
#[test]
fn no_room_for_prepared_space_falls_back_to_plain_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::default()
            .sync(SyncPolicy::Always)
            .storage(Arc::new(WrappedStorage {
                wrap: |_: &Path, file| AlteredFile::without_room_for_zeros(file),
            }))
    };
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        push_expected(&queue, 30);
        let segment = segment_files(dir.path()).pop().unwrap();
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            data_end(&segment)
        );
    }
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(queue.recovery_report().truncated.is_empty());
    assert_eq!(drain_checked(&queue), (0..30).collect::<Vec<_>>());
}

/// The head's group commit syncs outside the reader lock and defers head writes made during a
/// sync: with pops racing on four threads under `Always`, a power loss after they return never
/// brings a popped record back, on the simulated filesystem, over many seeds.
#[test]
fn concurrent_pops_under_always_survive_a_power_loss() {
    for seed in 0..10 {
        let sim = diskspool::SimStorage::new(seed);
        let options = || {
            Options::default()
                .segment_size(8192)
                .sync(SyncPolicy::Always)
                .storage(Arc::new(sim.clone()))
        };
        let queue = Queue::open("/q", options()).unwrap();
        let batch: Vec<Vec<u8>> = (0..400).map(payload_for).collect();
        for chunk in batch.chunks(20) {
            queue.push_batch(chunk).unwrap();
        }
        let popped = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..60 {
                        let record = queue.pop().unwrap().unwrap();
                        assert_eq!(record.payload(), payload_for(record.seq()));
                        popped.lock().unwrap().push(record.seq());
                    }
                });
            }
        });
        sim.power_loss_seeded(seed);
        drop(queue);
        let queue = Queue::open("/q", options()).unwrap();
        let mut popped = popped.into_inner().unwrap();
        popped.sort_unstable();
        assert_eq!(popped, (0..240).collect::<Vec<_>>(), "seed {seed}");
        assert_eq!(
            drain_checked(&queue),
            (240..400).collect::<Vec<_>>(),
            "seed {seed}"
        );
    }
}

/// Batches of large records go out in one gathering write (header, payload and padding from
/// where they are): every frame, delayed or not, reads back, also after a reopen.
#[test]
fn gathered_batches_of_large_records_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::default().sync(SyncPolicy::Never);
    let payload = |index: usize| -> Vec<u8> {
        (0..(33 << 10) + index * 3)
            .map(|byte| (byte * 31 + index) as u8)
            .collect()
    };
    let payloads: Vec<Vec<u8>> = (0..5).map(payload).collect();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        assert_eq!(queue.push_batch(&payloads).unwrap(), 0..5);
        queue
            .push_delayed(&payload(5), std::time::Duration::from_millis(1))
            .unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    let queue = Queue::open(dir.path(), options()).unwrap();
    assert!(queue.recovery_report().truncated.is_empty());
    for index in 0..6 {
        let record = queue.pop().unwrap().unwrap();
        assert_eq!(record.seq(), index as u64);
        assert_eq!(record.payload(), payload(index), "record {index}");
    }
    assert!(queue.pop().unwrap().is_none());
}
