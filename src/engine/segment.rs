//! A live segment of a running queue: its path, its open file and mapping, and the end of the
//! records readers may see. The bytes inside are `format::segment`'s.

use std::ffi::OsStr;
use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::engine::sync::lock;
use crate::error::{Error, Result};
use crate::format::frame::FrameRules;
use crate::format::layout::segment_file_name;
use crate::format::segment::{decode_header, header_error, walk_headers, SEGMENT_HEADER_LEN};
use crate::storage::{Mapping, Storage, StorageFile};

/// A segment file's path. For the sealed segments found at open it is joined from the queue
/// directory and the base on first use (an error message, a deletion): building a path for
/// each of thousands of segments would make open time grow with their number.
pub(crate) enum SegmentPath {
    /// Joined already.
    Joined(PathBuf),
    /// `dir` joined with `segment_file_name(base)`, once needed.
    Lazy {
        dir: Arc<Path>,
        base: u64,
        joined: OnceLock<PathBuf>,
    },
}

impl SegmentPath {
    /// The path of segment `base` in `dir`, joined when first used.
    pub(crate) fn lazy(dir: Arc<Path>, base: u64) -> Self {
        SegmentPath::Lazy {
            dir,
            base,
            joined: OnceLock::new(),
        }
    }
}

impl Deref for SegmentPath {
    type Target = Path;

    fn deref(&self) -> &Path {
        match self {
            SegmentPath::Joined(path) => path,
            SegmentPath::Lazy { dir, base, joined } => {
                joined.get_or_init(|| dir.join(segment_file_name(*base)))
            }
        }
    }
}

impl AsRef<Path> for SegmentPath {
    fn as_ref(&self) -> &Path {
        self
    }
}

/// Lets `&SegmentPath` go where an `impl Into<PathBuf>` is taken (error constructors).
impl AsRef<OsStr> for SegmentPath {
    fn as_ref(&self) -> &OsStr {
        self.as_os_str()
    }
}

impl std::fmt::Debug for SegmentPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Path::fmt(self, f)
    }
}

/// A segment as the running engine holds it. Sealed segments found at open are opened lazily,
/// when the reader reaches them, so that open time does not grow with their number.
///
/// A sealed segment keeps no file descriptor: only the active segment has its file open. A
/// mapping outlives the descriptor it was made from, so a sealed segment being read keeps its
/// mapping and nothing else; one not mapped yet is opened again when it is. Otherwise a queue
/// with more unread segments than the process may open files (often 1,024) would fail every
/// roll, `stats` and read once it reached that many.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base_seq: u64,
    pub(crate) path: SegmentPath,
    /// Bytes `[0, readable_end)` hold frames that readers may hand out.
    readable_end: AtomicU64,
    /// Set once no more frames will be appended; `readable_end` is then final.
    sealed: AtomicBool,
    /// The length to map: the segment size for the active segment, the file length otherwise.
    map_len: AtomicU64,
    inner: Mutex<SegmentFiles>,
    /// Once sealed and counted (see [`Segment::delayed_frames`]).
    delayed: OnceLock<DelayedFrames>,
    /// Whether the segment's header names format version 2, whose frames are read by its rules
    /// (false for a segment this build created; the header's once opened).
    version_2: AtomicBool,
}

/// The delayed frames of a sealed segment, counted once from its frame headers.
#[derive(Debug)]
pub(crate) struct DelayedFrames {
    /// `(seq, not_before_us)` of each delayed frame, in sequence order.
    pub(crate) frames: Vec<(u64, u64)>,
    /// The sequence number after the segment's last frame.
    pub(crate) after: u64,
}

#[derive(Default)]
struct SegmentFiles {
    /// The open file: the active segment's only (see [`Segment`]).
    file: Option<Arc<dyn StorageFile>>,
    view: Option<Mapping>,
    /// The header was checked and `readable_end`, `map_len` and the rules are known: at
    /// creation for a segment this process made or took up active, on first use for one found
    /// on disk sealed.
    checked: bool,
}

impl std::fmt::Debug for SegmentFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFiles")
            .field("open", &self.file.is_some())
            .field("mapped", &self.view.is_some())
            .field("checked", &self.checked)
            .finish()
    }
}

impl Segment {
    /// A sealed segment found on disk, not opened yet.
    pub(crate) fn unopened(base_seq: u64, path: SegmentPath) -> Self {
        Segment {
            base_seq,
            path,
            readable_end: AtomicU64::new(0),
            sealed: AtomicBool::new(true),
            map_len: AtomicU64::new(0),
            inner: Mutex::new(SegmentFiles::default()),
            delayed: OnceLock::new(),
            version_2: AtomicBool::new(false),
        }
    }

    /// The active segment, open for appending, with `readable_end` bytes already readable.
    pub(crate) fn active(
        base_seq: u64,
        path: PathBuf,
        file: Arc<dyn StorageFile>,
        readable_end: u64,
        map_len: u64,
    ) -> Self {
        Segment {
            base_seq,
            path: SegmentPath::Joined(path),
            readable_end: AtomicU64::new(readable_end),
            sealed: AtomicBool::new(false),
            map_len: AtomicU64::new(map_len),
            inner: Mutex::new(SegmentFiles {
                file: Some(file),
                view: None,
                checked: true,
            }),
            delayed: OnceLock::new(),
            version_2: AtomicBool::new(false),
        }
    }

    /// For a sealed segment: its delayed frames as `(seq, not_before_us)` in sequence order, and
    /// the sequence number after its last frame. Counted from the frame headers once (a sealed
    /// segment never changes), so that `stats` does not walk every unread record on each call.
    /// `None` for the active segment.
    pub(crate) fn delayed_frames(&self, storage: &dyn Storage) -> Result<Option<&DelayedFrames>> {
        if !self.is_sealed() {
            return Ok(None);
        }
        if let Some(counted) = self.delayed.get() {
            return Ok(Some(counted));
        }
        let end = self.readable_end();
        // Not kept: `stats` counts every unread segment, and a mapping each could exceed the
        // process's mapping limit (`vm.max_map_count`) on a long queue.
        let view = self.view_for_scan(storage, end)?;
        let bytes = AsRef::<[u8]>::as_ref(&*view);
        let bytes = bytes.get(..end as usize).unwrap_or(&[]);
        let mut delayed = Vec::new();
        let after = walk_headers(
            bytes,
            SEGMENT_HEADER_LEN,
            self.base_seq,
            self.rules(),
            |header, prefix| {
                if prefix.not_before_us != 0 {
                    delayed.push((header.seq, prefix.not_before_us));
                }
            },
        );
        Ok(Some(self.delayed.get_or_init(|| DelayedFrames {
            frames: delayed,
            after,
        })))
    }

    /// How the segment's frames are read (the rules of the format version in its header).
    #[inline]
    pub(crate) fn rules(&self) -> FrameRules {
        if self.version_2.load(Ordering::Relaxed) {
            FrameRules::V2
        } else {
            FrameRules::CURRENT
        }
    }

    /// Records the rules of the format version read from the segment's header (set before
    /// the segment is readable: under the files' lock at open, or before it is shared).
    pub(crate) fn set_rules(&self, rules: FrameRules) {
        self.version_2
            .store(rules.version() == 2, Ordering::Relaxed);
    }

    pub(crate) fn readable_end(&self) -> u64 {
        self.readable_end.load(Ordering::Acquire)
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.sealed.load(Ordering::Acquire)
    }

    /// Makes bytes up to `end` readable (never moves backwards).
    pub(crate) fn publish(&self, end: u64) {
        self.readable_end.fetch_max(end, Ordering::AcqRel);
    }

    /// Makes bytes up to `end` readable, for a caller holding the writer lock under a policy
    /// where only the writer (under that lock) moves the end: a store, not a read-modify-write.
    pub(crate) fn publish_locked(&self, end: u64) {
        debug_assert!(end >= self.readable_end.load(Ordering::Relaxed));
        self.readable_end.store(end, Ordering::Release);
    }

    /// Marks the segment complete at `end` bytes, its file's length, and closes its file (a
    /// reader maps it again from its path when needed; see [`Segment`]).
    pub(crate) fn seal(&self, end: u64) {
        self.map_len.store(end, Ordering::Release);
        self.publish(end);
        self.sealed.store(true, Ordering::Release);
        lock(&self.inner).file = None;
    }

    /// Checks the header of a sealed segment found on disk and learns its length; a no-op once
    /// checked. Keeps no descriptor: [`view`](Segment::view) opens the file again to map it.
    pub(crate) fn ensure_checked(&self, storage: &dyn Storage) -> Result<()> {
        let mut files = lock(&self.inner);
        if files.checked {
            return Ok(());
        }
        let (_file, len, rules) = self.open_checked(storage)?;
        self.set_rules(rules);
        self.map_len.store(len, Ordering::Release);
        self.readable_end.store(len, Ordering::Release);
        files.checked = true;
        Ok(())
    }

    /// Opens the segment's file and checks that its header names this segment. Returns the
    /// file, its length and the rules its header names.
    fn open_checked(
        &self,
        storage: &dyn Storage,
    ) -> Result<(Arc<dyn StorageFile>, u64, FrameRules)> {
        let file = storage
            .open(&self.path)
            .map_err(|error| Error::io("open segment", &self.path, error))?;
        let len = file
            .len()
            .map_err(|error| Error::io("stat segment", &self.path, error))?;
        let mut header = [0; SEGMENT_HEADER_LEN];
        let available = len.min(SEGMENT_HEADER_LEN as u64) as usize;
        file.read_exact_at(&mut header[..available], 0)
            .map_err(|error| Error::io("read segment header", &self.path, error))?;
        let decoded =
            decode_header(&header[..available]).map_err(|e| header_error(&self.path, e))?;
        let base = decoded.base_seq;
        if base != self.base_seq {
            return Err(Error::corrupt(
                &self.path,
                0,
                format!(
                    "header names base sequence {base}, file name {}",
                    self.base_seq
                ),
            ));
        }
        Ok((Arc::from(file), len, decoded.rules))
    }

    /// The segment file's length: for a sealed segment its records' end (sealed files are cut
    /// to their records), for the active one its file's (space made ahead of the tail counts).
    /// A sealed segment found on disk must be checked first
    /// ([`ensure_checked`](Segment::ensure_checked)).
    pub(crate) fn disk_len(&self) -> Result<u64> {
        let file = lock(&self.inner).file.clone();
        match file {
            Some(file) if !self.is_sealed() => file
                .len()
                .map_err(|error| Error::io("stat segment", &self.path, error)),
            _ => Ok(self.readable_end()),
        }
    }

    /// True when no record (or anything else) shares this segment's read mapping: the file may
    /// be reused without changing bytes someone still reads.
    pub(crate) fn mapping_unshared(&self) -> bool {
        lock(&self.inner)
            .view
            .as_ref()
            .is_none_or(|view| Arc::strong_count(view) == 1)
    }

    /// Lets go of the segment's mapping if nothing else holds it (no record, no cursor): the
    /// reader left the segment. A mapping each for the segments between the head and the
    /// reader (a lease that keeps the head back) could exceed the process's mapping limit;
    /// a segment read again is mapped again.
    pub(crate) fn release_view_if_unshared(&self) {
        let mut files = lock(&self.inner);
        if files
            .view
            .as_ref()
            .is_some_and(|view| Arc::strong_count(view) == 1)
        {
            files.view = None;
        }
    }

    /// A mapping that covers at least `[0, end)`, kept for the next read.
    pub(crate) fn view(&self, storage: &dyn Storage, end: u64) -> Result<Mapping> {
        self.map(storage, end, true)
    }

    /// A mapping that covers at least `[0, end)` for a scan that reads ahead of the reader
    /// (`stats`): kept only for the active segment, so that the mappings a scan makes do not
    /// grow with the number of segments it crosses.
    pub(crate) fn view_for_scan(&self, storage: &dyn Storage, end: u64) -> Result<Mapping> {
        self.map(storage, end, !self.is_sealed())
    }

    /// A mapping that covers at least `[0, end)`: the segment's own if it covers, otherwise a
    /// new one, which becomes the segment's own if `keep`.
    fn map(&self, storage: &dyn Storage, end: u64, keep: bool) -> Result<Mapping> {
        let mut files = lock(&self.inner);
        if let Some(view) = &files.view {
            if (*view).as_ref().as_ref().len() as u64 >= end {
                return Ok(view.clone());
            }
        }
        if !files.checked {
            return Err(Error::corrupt(
                &self.path,
                0,
                "segment read before its header was checked",
            ));
        }
        let file = match files.file.clone() {
            Some(file) => file,
            None => {
                // Sealed: its descriptor was closed (see `Segment`). The file must still be
                // the segment and hold every byte readers were told of.
                let (file, len, _) = self.open_checked(storage)?;
                let readable_end = self.readable_end();
                if len < readable_end {
                    return Err(Error::corrupt(
                        &self.path,
                        len,
                        format!(
                            "segment is {len} bytes, shorter than its records' end \
                             {readable_end}: cut since it was written"
                        ),
                    ));
                }
                file
            }
        };
        let map_len = self.map_len.load(Ordering::Acquire).max(end);
        let view = file
            .map(map_len)
            .map_err(|error| Error::io("map segment", &self.path, error))?;
        if (AsRef::<[u8]>::as_ref(&*view).len() as u64) < end {
            return Err(Error::corrupt(
                &self.path,
                end,
                "segment is shorter than the data written to it",
            ));
        }
        // A sealed segment's file, opened again above, closes here; the mapping stays valid.
        if keep {
            files.view = Some(view.clone());
        }
        Ok(view)
    }
}

/// Creates a segment file durably: header written and synced, directory entry synced.
pub(crate) fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    segment_size: u64,
) -> Result<(Arc<Segment>, Arc<dyn StorageFile>)> {
    create_segment_or_clean_up(storage, dir, base, segment_size).map_err(|failure| failure.error)
}

/// Why a segment could not be created, and whether its file may be left behind.
pub(crate) struct CreateFailure {
    pub(crate) error: Error,
    /// The half-created file could not be removed durably. A later roll would trip over it, and
    /// a crash could bring it back with a valid header, making recovery take it for the active
    /// segment and miss records appended to the previous one: the caller must stop writing.
    pub(crate) leftover: bool,
}

/// Like [`create_segment`], and on failure removes the half-created file durably.
pub(crate) fn create_segment_or_clean_up(
    storage: &dyn Storage,
    dir: &Path,
    base: u64,
    segment_size: u64,
) -> Result<(Arc<Segment>, Arc<dyn StorageFile>), CreateFailure> {
    let clean = |error: Error| CreateFailure {
        error,
        leftover: false,
    };
    let path = dir.join(segment_file_name(base));
    let io_error = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |error: io::Error| Error::io(operation, path, error)
    };
    let file: Arc<dyn StorageFile> = Arc::from(
        storage
            .create_new(&path)
            .map_err(io_error("create segment", &path))
            .map_err(clean)?,
    );
    let header = crate::format::segment::encode_header(base);
    let written = file
        .write_all_at(&header, 0)
        .and_then(|()| file.sync_data())
        .and_then(|()| storage.sync_dir(dir));
    if let Err(error) = written {
        // A segment without a durable header holds nothing; its file must go, durably.
        let removed = match storage.remove_file(&path) {
            Err(cleanup) if cleanup.kind() != io::ErrorKind::NotFound => Err(cleanup),
            _ => storage.sync_dir(dir),
        };
        return Err(CreateFailure {
            error: Error::io("create segment", &path, error),
            leftover: removed.is_err(),
        });
    }
    let segment = Segment::active(
        base,
        path,
        file.clone(),
        SEGMENT_HEADER_LEN as u64,
        segment_size,
    );
    Ok((Arc::new(segment), file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_paths_are_the_joined_paths() {
        let dir: Arc<Path> = Arc::from(Path::new("/queue/dir"));
        let lazy = SegmentPath::lazy(dir.clone(), 42);
        assert_eq!(&*lazy, dir.join(segment_file_name(42)).as_path());
        let error = Error::io("open segment", &lazy, std::io::ErrorKind::NotFound.into());
        assert!(error
            .to_string()
            .contains("/queue/dir/00000000000000000042.seg"));
    }
}
