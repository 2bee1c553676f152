//! Helpers shared by the engine tests.

use std::path::{Path, PathBuf};

use diskspool::{Options, Queue, SyncPolicy};

/// A deterministic payload for `seq`, of varying length (0..=300 bytes), so that a record
/// returned under the wrong sequence number, or with bytes from another record, is detected.
pub fn payload_for(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2_654_435_761) % 301) as usize;
    (0..len)
        .map(|index| (seq as usize).wrapping_mul(31).wrapping_add(index) as u8)
        .collect()
}

/// Options with small segments, so that tests cross many segment boundaries.
pub fn small_segments(policy: SyncPolicy) -> Options {
    Options::default().segment_size(4096).sync(policy)
}

/// Pushes `count` records with `payload_for` payloads; checks the sequence numbers returned.
pub fn push_expected(queue: &Queue, count: u64) {
    for _ in 0..count {
        let expected = queue.stats().unwrap().next_seq;
        assert_eq!(queue.push(&payload_for(expected)).unwrap(), expected);
    }
}

/// Pops everything, checking order and bytes; returns the sequence numbers popped.
pub fn drain_checked(queue: &Queue) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        assert_eq!(
            record.payload(),
            payload_for(record.seq()),
            "seq {}",
            record.seq()
        );
        if let Some(&last) = seqs.last() {
            assert_eq!(record.seq(), last + 1, "records out of order");
        }
        seqs.push(record.seq());
    }
    seqs
}

/// Segment files in `dir`, sorted.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// Byte offsets of the frames in a segment file, with their sequence numbers.
pub fn frame_offsets(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let header = diskspool::format::segment::decode_header(&bytes).unwrap();
    diskspool::format::segment::walk_frames(
        &bytes,
        diskspool::format::segment::SEGMENT_HEADER_LEN,
        header.base_seq,
        header.rules,
    )
    .filter_map(|step| match step {
        diskspool::format::segment::WalkStep::Frame { offset, frame } => {
            Some((offset, frame.header.seq))
        }
        diskspool::format::segment::WalkStep::Bad { .. } => None,
    })
    .collect()
}

/// Copies a queue directory's files (not the lock) into a new temporary directory.
pub fn copy_queue(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != diskspool::format::layout::LOCK_FILE_NAME {
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).unwrap();
        }
    }
    to
}

/// The real filesystem with every file it opens or creates passed through `wrap`: tests use it to
/// inject a fault or hide a feature in the files, without repeating the directory operations.
pub struct WrappedStorage<W> {
    pub wrap: W,
}

type WrapFile = Box<dyn diskspool::storage::StorageFile>;

impl<W> std::fmt::Debug for WrappedStorage<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrappedStorage")
    }
}

impl<W> diskspool::storage::Storage for WrappedStorage<W>
where
    W: Fn(&Path, WrapFile) -> WrapFile + Send + Sync,
{
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        diskspool::storage::OsStorage.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        diskspool::storage::OsStorage.list_dir(dir)
    }
    fn open(&self, path: &Path) -> std::io::Result<WrapFile> {
        Ok((self.wrap)(path, diskspool::storage::OsStorage.open(path)?))
    }
    fn create_new(&self, path: &Path) -> std::io::Result<WrapFile> {
        Ok((self.wrap)(
            path,
            diskspool::storage::OsStorage.create_new(path)?,
        ))
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        diskspool::storage::OsStorage.remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        diskspool::storage::OsStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        diskspool::storage::OsStorage.sync_dir(dir)
    }
    fn lock_dir(
        &self,
        dir: &Path,
    ) -> Result<diskspool::storage::DirLock, diskspool::storage::LockFailure> {
        diskspool::storage::OsStorage.lock_dir(dir)
    }
}

/// Where the data of a segment file written by `push_expected` ends: the end of its last frame.
pub fn data_end(segment: &Path) -> u64 {
    let (last_offset, last_seq) = *frame_offsets(segment)
        .last()
        .expect("the segment holds a record");
    last_offset + diskspool::format::frame::frame_len(payload_for(last_seq).len()) as u64
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// The seed in the environment variable `var`, or one from the clock (never zero).
pub fn seed_from(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(seed) => seed.parse().unwrap(),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    }
}

/// The bases of the segment files in a queue directory, in order.
pub fn segment_bases(dir: &std::path::Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".seg").map(|base| base.parse().unwrap())
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Every file under `dir` this process has open or mapped (Linux): what a closed handle must
/// have let go of by the time its close returned.
pub fn files_held_under(dir: &std::path::Path) -> Vec<String> {
    let mut held: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .map(|target| format!("open {}", target.display()))
        .collect();
    let dir = dir.to_string_lossy();
    held.extend(
        std::fs::read_to_string("/proc/self/maps")
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(&*dir))
            .map(|line| format!("mapped {line}")),
    );
    held
}

/// Segment files of `dir` this process has open, deleted ones too (Linux), for the checks that
/// a queue does not keep them. Only segments: lock files are opened for a moment now and then
/// (a handle looks every second whether it is alone).
pub fn open_segment_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir) && target.to_string_lossy().contains(".seg"))
        .count()
}

/// Mappings of segment files of `dir` this process holds (Linux), for the checks that a queue
/// does not keep one for each segment it merely counted.
pub fn mapped_segment_files(dir: &std::path::Path) -> usize {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let dir = dir.to_string_lossy();
    maps.lines()
        .filter(|line| line.contains(&*dir) && line.contains(".seg"))
        .count()
}
