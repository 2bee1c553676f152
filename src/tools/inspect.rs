//! Read-only, lock-free views of a queue directory, for tools such as `spool`.
//!
//! Nothing here takes the directory lock or writes a byte, so every function works while another
//! process has the queue open and is pushing and popping. Files are read with positioned reads
//! into buffers (never mapped), up to the length observed when they were read: a segment that
//! grows meanwhile is read as it was, one that is deleted meanwhile (compacted) stays readable
//! through the open handle or is read as consumed (see `inspect/view.rs`, the one place that
//! takes a consistent view for every reader), and nothing can raise `SIGBUS`.
//!
//! - [`Snapshot::take`] lists and checks every segment (used by `spool inspect` and by
//!   [`verify`](crate::tools::verify::verify)).
//! - [`stat`] reads only the head index, the segment holding the head and the last segment.
//! - [`records`] iterates over the records from the head without removing them.
//! - [`segment_frames`] lists every frame of one segment file.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diskspool::{storage::OsStorage, tools::inspect, Options, Queue};
//!
//! let dir = tempfile::tempdir()?;
//! let queue = Queue::open(dir.path(), Options::default())?;
//! queue.push(b"a")?;
//! queue.push(b"b")?;
//! // Another process could do this while `queue` stays open.
//! let stat = inspect::stat(&OsStorage, dir.path())?;
//! assert_eq!(stat.len, 2);
//! let first = inspect::records(&OsStorage, dir.path(), None)?.next().expect("a record")?;
//! assert_eq!(first.payload, b"a");
//! assert_eq!(queue.len(), 2, "nothing was removed");
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::view;
use crate::error::{Error, Result};
use crate::format::acklog::{self, AckHeaderError, AckLogDamage, AckLogEnd, JobHistory};
use crate::format::frame::{self, FrameError, FrameRules};
use crate::format::head::{decode_head_file, HeadRead, HeadState};
use crate::format::layout::ACK_LOG_FILE_NAME;
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::layout::SETTINGS_FILE_NAME;
use crate::format::layout::{classify_entry, EntryKind};
use crate::format::segment::{
    decode_header, find_later_frame, judge_stop, walk_frames, HeaderError, StopKind, WalkStep,
    SEGMENT_HEADER_LEN,
};
use crate::format::settings::{decode_settings, QueueSettings, SettingsError};
use crate::storage::{Storage, StorageFile};

pub use super::records::{records, stat, Records, StoredRecord};

/// How many times a lock-free reader retakes its view when the files changed under it.
pub(crate) const SNAPSHOT_ATTEMPTS_MAX: u32 = 5;
/// How long a reader waits before retaking a view that looked inconsistent.
pub(crate) const SNAPSHOT_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The entries of a queue directory, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Segment files as `(base_seq, file name)`, in sequence order.
    pub segments: Vec<(u64, String)>,
    /// True when the head index file exists.
    pub head_present: bool,
    /// True when the settings file exists.
    pub settings_present: bool,
    /// Names that diskspool did not write, sorted.
    pub strays: Vec<String>,
}

/// Lists a queue directory. A directory that does not exist is an error, and so is one that
/// holds no queue ([`Error::NotAQueue`]: no settings file, head index or segment).
pub fn list(storage: &dyn Storage, dir: &Path) -> Result<Listing> {
    let names = storage
        .list_dir(dir)
        .map_err(|error| Error::io("list queue directory", dir, error))?;
    let mut listing = Listing::default();
    for name in names {
        match classify_entry(&name) {
            EntryKind::Segment(base) => listing.segments.push((base, name)),
            EntryKind::Head => listing.head_present = true,
            EntryKind::Settings if name == SETTINGS_FILE_NAME => listing.settings_present = true,
            EntryKind::Stray => listing.strays.push(name),
            EntryKind::HeadTemporary
            | EntryKind::Settings
            | EntryKind::PoolFile
            | EntryKind::Lock
            | EntryKind::Quarantine
            | EntryKind::AckLog
            | EntryKind::DedupLog => {}
        }
    }
    if !listing.head_present && !listing.settings_present && listing.segments.is_empty() {
        return Err(Error::NotAQueue {
            dir: dir.to_path_buf(),
        });
    }
    listing.segments.sort_unstable();
    listing.strays.sort_unstable();
    Ok(listing)
}

/// Reads a whole file as it is now, or `None` when it does not exist (any more).
///
/// The length is observed once and exactly that many bytes are read; a file that shrinks in
/// between (a recovering writer cutting a torn tail) is read again.
pub fn read_file(storage: &dyn Storage, path: &Path) -> Result<Option<Vec<u8>>> {
    let mut last_error = None;
    for _ in 0..SNAPSHOT_ATTEMPTS_MAX {
        let file = match storage.open_read(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(Error::io("open", path, error)),
        };
        let len = file.len().map_err(|error| Error::io("stat", path, error))?;
        match read_at_len(&*file, path, len)? {
            Ok(bytes) => return Ok(Some(bytes)),
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::other("file kept changing"));
    Err(Error::io("read", path, error))
}

/// Reads the first `len` bytes of `file`; the inner error is the end of the file coming first
/// (it shrank since its length was observed).
pub(crate) fn read_at_len(
    file: &dyn StorageFile,
    path: &Path,
    len: u64,
) -> Result<std::result::Result<Vec<u8>, io::Error>> {
    if len > crate::SEGMENT_SIZE_MAX {
        // No file diskspool writes is this large: do not try to hold it in memory.
        return Err(Error::corrupt(
            path,
            crate::SEGMENT_SIZE_MAX,
            format!("file of {len} bytes is larger than any segment can be"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| {
        Error::io(
            "read",
            path,
            io::Error::new(io::ErrorKind::OutOfMemory, "file too large to read"),
        )
    })?;
    let mut bytes = vec![0; len];
    match file.read_exact_at(&mut bytes, 0) {
        Ok(()) => Ok(Ok(bytes)),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(Err(error)),
        Err(error) => Err(Error::io("read", path, error)),
    }
}

/// The state of a segment's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderStatus {
    /// Valid, and it names the same base sequence as the file name.
    Ok,
    /// Rejected.
    Bad(HeaderError),
    /// Valid, but it names another base sequence than the file name.
    WrongBase {
        /// The base sequence in the header.
        found: u64,
    },
}

/// How a segment's frames end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// The last frame ends exactly at the end of the file (or the header is bad and no frame
    /// was read).
    Clean,
    /// The file ends inside the padding of its last frame: every record is intact, a few zero
    /// bytes are missing.
    PaddingCut,
    /// The last frames belong to a batch whose final frame is missing.
    IncompleteBatch {
        /// Where the incomplete batch starts.
        offset: u64,
        /// Its first sequence number.
        first_seq: u64,
    },
    /// Bytes that do not decode as the expected frame.
    BadFrame {
        /// Where the bad bytes start.
        offset: u64,
        /// The sequence number expected there.
        expected_seq: u64,
        /// Why they do not decode.
        error: FrameError,
        /// The valid frames found further on in the same file, as `(offset, seq)`: evidence
        /// that this is damage rather than an interrupted write.
        later_frames: Vec<(u64, u64)>,
    },
}

/// One segment file, checked frame by frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The file name.
    pub name: String,
    /// The base sequence number its name carries.
    pub base_seq: u64,
    /// The file's length when it was read.
    pub file_len: u64,
    /// The header's state; frames are only read behind a valid header.
    pub header: HeaderStatus,
    /// How its frames are read: the rules of the format version in its header (the current
    /// one when the header is not valid).
    pub rules: FrameRules,
    /// Records in complete batches.
    pub records: u64,
    /// The first record's sequence number.
    pub first_seq: Option<u64>,
    /// The last record's sequence number.
    pub last_seq: Option<u64>,
    /// Where the last complete batch ends: the length `Queue::open` would keep.
    pub valid_end: u64,
    /// How the frames end.
    pub end: SegmentEnd,
}

impl SegmentScan {
    /// A scan of a segment with a valid header, before any frame from offset `start` is read;
    /// `last_seq` is the record just before it, if any.
    fn before_frames(
        name: &str,
        base_seq: u64,
        bytes: &[u8],
        start: u64,
        last_seq: Option<u64>,
        rules: FrameRules,
    ) -> SegmentScan {
        SegmentScan {
            name: name.to_string(),
            base_seq,
            file_len: bytes.len() as u64,
            header: HeaderStatus::Ok,
            rules,
            records: 0,
            first_seq: None,
            last_seq,
            valid_end: start,
            end: SegmentEnd::Clean,
        }
    }

    /// The sequence number the next segment must start with.
    pub fn next_seq(&self) -> u64 {
        self.last_seq.map_or(self.base_seq, |last| last + 1)
    }

    /// True when the header and every frame are intact and the file ends where they do.
    pub fn is_intact(&self) -> bool {
        self.header == HeaderStatus::Ok && self.end == SegmentEnd::Clean
    }

    /// How the frames stop, by the rule `Queue::open` applies to the active segment
    /// ([`classify_stop`](crate::format::segment::classify_stop)): `None` when they end cleanly.
    /// `synced_seq` is the head index's (every record below it was synced); pass `u64::MAX` for
    /// a sealed segment, which was synced whole.
    pub fn stop_kind(&self, synced_seq: u64) -> Option<StopKind> {
        match &self.end {
            SegmentEnd::Clean => None,
            SegmentEnd::PaddingCut | SegmentEnd::IncompleteBatch { .. } => {
                Some(StopKind::TornWrite)
            }
            SegmentEnd::BadFrame { later_frames, .. } => Some(judge_stop(
                later_frames.first().copied(),
                false,
                self.next_seq(),
                synced_seq,
            )),
        }
    }

    /// True when the frames stop at damage rather than at an interrupted write: always in a
    /// sealed segment, and in the last (active) segment by the rule `Queue::open` applies
    /// (see [`stop_kind`](SegmentScan::stop_kind)), so that every reader agrees with the
    /// engine. The header is not considered.
    pub fn is_damaged(&self, is_last: bool, synced_seq: u64) -> bool {
        let synced_seq = if is_last { synced_seq } else { u64::MAX };
        self.stop_kind(synced_seq)
            .is_some_and(|kind| kind.is_damage(!is_last))
    }

    /// Where the damage or interrupted write that ends the frames starts.
    pub fn stop_offset(&self) -> u64 {
        match &self.end {
            SegmentEnd::BadFrame { offset, .. } | SegmentEnd::IncompleteBatch { offset, .. } => {
                *offset
            }
            SegmentEnd::Clean | SegmentEnd::PaddingCut => self.valid_end,
        }
    }

    /// The segment's health; `is_last` tells whether it is the last segment, where an
    /// interrupted write is expected after a crash, and `synced_seq` is the head index's (see
    /// [`is_damaged`](SegmentScan::is_damaged)).
    pub fn health(&self, is_last: bool, synced_seq: u64) -> SegmentHealth {
        match &self.header {
            HeaderStatus::Bad(HeaderError::UnsupportedVersion(_)) => {
                SegmentHealth::UnsupportedVersion
            }
            HeaderStatus::Bad(_) | HeaderStatus::WrongBase { .. } => SegmentHealth::BadHeader,
            HeaderStatus::Ok if self.end == SegmentEnd::Clean => SegmentHealth::Ok,
            HeaderStatus::Ok if self.is_damaged(is_last, synced_seq) => SegmentHealth::Damaged,
            HeaderStatus::Ok => SegmentHealth::TornTail,
        }
    }

    /// True for a segment whose creation was cut short: no valid header and no room for a
    /// record. `Queue::open` removes such a file when it is the last segment.
    pub fn is_unborn(&self) -> bool {
        self.header != HeaderStatus::Ok && self.file_len <= SEGMENT_HEADER_LEN as u64
    }
}

/// A segment's health in one word, as `spool inspect` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentHealth {
    /// Header and every frame intact.
    Ok,
    /// The last segment ends in an interrupted write (`Queue::open` cuts it).
    TornTail,
    /// A frame or batch is damaged while data follows it.
    Damaged,
    /// The header is unreadable or names another base sequence.
    BadHeader,
    /// Written by another format version.
    UnsupportedVersion,
}

impl SegmentHealth {
    /// The stable snake_case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            SegmentHealth::Ok => "ok",
            SegmentHealth::TornTail => "torn_tail",
            SegmentHealth::Damaged => "damaged",
            SegmentHealth::BadHeader => "bad_header",
            SegmentHealth::UnsupportedVersion => "unsupported_version",
        }
    }
}

/// Whether a segment's records are still to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// Every record is behind the head; compaction deletes the file.
    Consumed,
    /// Holds records not consumed yet; no longer written to.
    Live,
    /// The last segment: new records are appended to it.
    Active,
}

impl SegmentState {
    /// The stable name used in output: `consumed`, `live` or `active`.
    pub fn name(self) -> &'static str {
        match self {
            SegmentState::Consumed => "consumed",
            SegmentState::Live => "live",
            SegmentState::Active => "active",
        }
    }
}

/// One frame of a segment, as listed by [`segment_frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameInfo {
    /// Byte offset of the frame in the file.
    pub offset: u64,
    /// The sequence number in the frame header (unchecked when `crc_ok` is false).
    pub seq: u64,
    /// The payload length in the frame header.
    pub payload_len: u32,
    /// The enqueue time in the frame header, microseconds since the Unix epoch.
    pub enqueued_us: u64,
    /// True on every frame of a batch but the last.
    pub batch_continues: bool,
    /// The not-before time of a delayed record, microseconds since the Unix epoch; 0 if none
    /// (unchecked when `crc_ok` is false).
    pub not_before_us: u64,
    /// The time to live of a record pushed with one, in microseconds after `enqueued_us`; 0 if
    /// none (unchecked when `crc_ok` is false).
    pub ttl_us: u64,
    /// True when the frame passed every check (checksum, sequence number, length).
    pub crc_ok: bool,
    /// Why the frame was rejected.
    pub error: Option<String>,
}

/// Checks a segment file's bytes. Pure: `bytes` is the whole file as read.
pub fn scan_segment(name: &str, base_seq: u64, bytes: &[u8]) -> SegmentScan {
    let start = SEGMENT_HEADER_LEN as u64;
    let mut scan =
        SegmentScan::before_frames(name, base_seq, bytes, start, None, FrameRules::CURRENT);
    match decode_header(bytes) {
        Ok(found) if found.base_seq == base_seq => scan.rules = found.rules,
        Ok(found) => {
            scan.header = HeaderStatus::WrongBase {
                found: found.base_seq,
            };
            return scan;
        }
        Err(error) => {
            scan.header = HeaderStatus::Bad(error);
            return scan;
        }
    }
    scan_frames(&mut scan, bytes, SEGMENT_HEADER_LEN, base_seq);
    scan
}

/// Like [`scan_segment`], for a segment whose header was checked already, walking from the
/// frame at `start` (expected to be sequence `start_seq`): what a reader that starts at the
/// head index's hint sees, so that damage among consumed records before it does not count.
/// `first_seq` and `records` count from `start_seq`; `rules` are those of its header.
pub(crate) fn scan_segment_from(
    name: &str,
    base_seq: u64,
    bytes: &[u8],
    (start, start_seq): (u64, u64),
    rules: FrameRules,
) -> SegmentScan {
    let last_seq = start_seq.checked_sub(1);
    let mut scan = SegmentScan::before_frames(name, base_seq, bytes, start, last_seq, rules);
    scan_frames(
        &mut scan,
        bytes,
        usize::try_from(start).unwrap_or(usize::MAX),
        start_seq,
    );
    scan
}

/// Walks the frames of `bytes` from `start`, expecting `start_seq` there, into `scan`.
fn scan_frames(scan: &mut SegmentScan, bytes: &[u8], start: usize, start_seq: u64) {
    let (base_seq, rules) = (scan.base_seq, scan.rules);
    let mut batch_start = None;
    let mut walk_end = start as u64;
    for step in walk_frames(bytes, start, start_seq, rules) {
        match step {
            WalkStep::Frame { offset, frame } => {
                walk_end = offset + frame.frame_len as u64;
                if frame.header.batch_continues {
                    batch_start.get_or_insert((offset, frame.header.seq));
                    continue;
                }
                batch_start = None;
                scan.valid_end = walk_end;
                scan.first_seq.get_or_insert(start_seq);
                scan.last_seq = Some(frame.header.seq);
                scan.records = frame.header.seq - start_seq + 1;
            }
            WalkStep::Bad {
                offset,
                expected_seq,
                error,
            } => {
                let later_frames = later_frames(bytes, offset, expected_seq, rules);
                // Zeros a writer prepared ahead of its tail, or stale frames of a recycled
                // file: the segment ends here, nothing is damaged.
                let free = later_frames.is_empty()
                    && crate::format::segment::is_free_space(
                        bytes,
                        offset as usize,
                        &error,
                        base_seq,
                    );
                if free {
                    break;
                }
                // `valid_end` stays at the start of the damaged frame's batch: a batch is
                // served whole or not at all. The problem is located at the frame itself.
                scan.end = SegmentEnd::BadFrame {
                    offset,
                    expected_seq,
                    error,
                    later_frames,
                };
                return;
            }
        }
    }
    scan.end = match batch_start {
        Some((offset, first_seq)) => SegmentEnd::IncompleteBatch { offset, first_seq },
        None if walk_end > scan.file_len => SegmentEnd::PaddingCut,
        None => SegmentEnd::Clean,
    };
}

/// Every frame after `from` that validates, with a sequence number at or above `min_seq`.
fn later_frames(bytes: &[u8], from: u64, min_seq: u64, rules: FrameRules) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    let mut at = from as usize;
    while let Some((offset, seq)) = find_later_frame(bytes, at, min_seq, rules) {
        found.push((offset, seq));
        at = offset as usize;
    }
    found
}

/// Lists every frame of a segment's bytes: the valid ones, then the first rejected one (whose
/// header fields are shown unchecked), then any valid frames found past the damage.
pub fn segment_frames(base_seq: u64, bytes: &[u8]) -> Vec<FrameInfo> {
    let mut frames = Vec::new();
    let rules = match decode_header(bytes) {
        Ok(header) if header.base_seq == base_seq => header.rules,
        _ => return frames,
    };
    let info = |offset: u64, crc_ok: bool, error: Option<String>| {
        let at = bytes.get(offset as usize..).unwrap_or(&[]);
        frame::peek_header(at, rules).map(|header| {
            let prefix = frame::peek_prefix(at, &header);
            FrameInfo {
                offset,
                seq: header.seq,
                payload_len: header.payload_len,
                enqueued_us: header.enqueued_us,
                batch_continues: header.batch_continues,
                not_before_us: prefix.not_before_us,
                ttl_us: prefix.ttl_us,
                crc_ok,
                error,
            }
        })
    };
    for step in walk_frames(bytes, SEGMENT_HEADER_LEN, base_seq, rules) {
        match step {
            WalkStep::Frame { offset, .. } => frames.extend(info(offset, true, None)),
            WalkStep::Bad {
                offset,
                expected_seq,
                error,
            } => {
                let detail = Some(error.to_string());
                let bad = info(offset, false, detail.clone()).unwrap_or(FrameInfo {
                    offset,
                    seq: expected_seq,
                    payload_len: 0,
                    enqueued_us: 0,
                    batch_continues: false,
                    not_before_us: 0,
                    ttl_us: 0,
                    crc_ok: false,
                    error: detail,
                });
                frames.push(bad);
                for (later, _) in later_frames(bytes, offset, expected_seq, rules) {
                    frames.extend(info(later, true, None));
                }
            }
        }
    }
    frames
}

/// The head index as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadSnapshot {
    /// The file's length, or `None` when the file does not exist.
    pub file_len: Option<u64>,
    /// Both slots and the one in force.
    pub read: HeadRead,
}

impl HeadSnapshot {
    /// When the slot in force holds a value out of range (see `HeadSlot::out_of_range`, which
    /// makes `Queue::open` refuse the queue): the slot's offset in the file and why.
    pub fn out_of_range(&self) -> Option<(u64, String)> {
        let current = self.read.current?;
        let slot = self.read.slots.get(current)?.as_ref().ok()?;
        let why = slot.out_of_range()?;
        Some((crate::format::head::HEAD_SLOT_OFFSETS[current], why))
    }

    /// The state in force: the valid slot with the highest generation; `None` also when that
    /// slot holds a value out of range (see [`out_of_range`](Self::out_of_range)), which no
    /// reader may use.
    pub fn state(&self) -> Option<HeadState> {
        let current = self.read.current?;
        self.read
            .slots
            .get(current)?
            .as_ref()
            .ok()
            .filter(|slot| slot.out_of_range().is_none())
            .map(|slot| slot.state)
    }
}

/// Reads the head index without locking.
pub fn read_head(storage: &dyn Storage, dir: &Path) -> Result<HeadSnapshot> {
    let bytes = read_file(storage, &dir.join(HEAD_FILE_NAME))?;
    Ok(HeadSnapshot {
        file_len: bytes.as_ref().map(|bytes| bytes.len() as u64),
        read: decode_head_file(bytes.as_deref().unwrap_or(&[])),
    })
}

/// The ack log of the jobs API as read from disk: which records beyond the head were
/// acknowledged out of order (they are no longer in the queue).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckLogSnapshot {
    /// The file's length, or `None` when there is no ack log (a queue used only with
    /// `push`/`pop` never has one).
    pub file_len: Option<u64>,
    /// Why the header was rejected, if it was.
    pub header_error: Option<AckHeaderError>,
    /// What the valid entries say.
    pub history: JobHistory,
    /// Where the bytes after the last valid entry start, when they are the remains of an
    /// interrupted append (expected after a crash; `Queue::open` cuts them), if any.
    pub bad_entry_offset: Option<u64>,
    /// A damaged entry followed by a valid one (`Queue::open` refuses the queue), if any.
    pub damage: Option<AckLogDamage>,
    /// Entries that fail their checksum before valid ones where the file (version 4) shows
    /// that no sync came between them and a later entry: appends a power loss tore while it
    /// kept later ones. Their facts were not durable; `Queue::open` skips them (and rewrites
    /// the log), and the readers leave them out as it does.
    pub torn_entries: Vec<u64>,
}

impl AckLogSnapshot {
    /// True when record `seq` was acknowledged out of order.
    pub fn is_acked(&self, seq: u64) -> bool {
        self.history
            .acked
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end > seq)
    }

    /// The error `Queue::open` would refuse this ack log with (a bad header or a damaged
    /// entry), for the readers that must not show a queue without the acknowledgements it
    /// holds. `dir` is the queue directory.
    pub fn error(&self, dir: &Path) -> Option<Error> {
        let path = dir.join(ACK_LOG_FILE_NAME);
        if let Some(error) = &self.header_error {
            return Some(acklog::header_error(&path, error.clone()));
        }
        let damage = self.damage.as_ref()?;
        Some(Error::corrupt(path, damage.offset, damage.detail.clone()))
    }
}

/// Reads the ack log without locking.
pub fn read_ack_log(storage: &dyn Storage, dir: &Path) -> Result<AckLogSnapshot> {
    let Some(bytes) = read_file(storage, &dir.join(ACK_LOG_FILE_NAME))? else {
        return Ok(AckLogSnapshot::default());
    };
    let mut snapshot = AckLogSnapshot {
        file_len: Some(bytes.len() as u64),
        ..AckLogSnapshot::default()
    };
    let history = &mut snapshot.history;
    match acklog::scan_ack_log(&bytes, &mut |entry| history.apply(entry)) {
        Ok(scan) => {
            // Zeros after the last entry are space the running queue prepared ahead of its tail.
            if scan.end == AckLogEnd::TornEntry {
                snapshot.bad_entry_offset = Some(scan.valid_end);
            }
            // What `open` skips under every policy. In a log of version 2 or 3 that depends on
            // the policy the queue runs under, which a reader does not know: damage.
            match scan.damage {
                Some(damage) if damage.skippable && scan.has_marks => {
                    snapshot.torn_entries = scan.skippable;
                }
                damage => snapshot.damage = damage,
            }
        }
        Err(error) => snapshot.header_error = Some(error),
    }
    Ok(snapshot)
}

/// How far a scan has got, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanProgress {
    /// Bytes read so far.
    pub bytes_done: u64,
    /// Bytes to read in total, as listed when the scan started.
    pub bytes_total: u64,
}

/// Every segment of a queue directory, checked frame by frame, and its head index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The queue directory.
    pub dir: PathBuf,
    /// The head index, read after the directory was listed, so it is at least as new as the
    /// listing: no segment it still needs can be missing from the listing because of compaction,
    /// and none holding records below its `synced_seq` either (the directory is listed again
    /// after it).
    pub head: HeadSnapshot,
    /// The segments that could be read, in sequence order.
    pub segments: Vec<SegmentScan>,
    /// Segments that were listed but deleted before they could be read: compacted meanwhile
    /// (the head index, read again then, had passed their records).
    pub vanished: Vec<String>,
    /// Segments that could not be read (an I/O error, or a folder with a segment's name), with
    /// the error. They are left out of `segments`, so the records they hold count as missing.
    pub unreadable: Vec<(String, String)>,
    /// Names diskspool did not write.
    pub strays: Vec<String>,
    /// The ack log of the jobs API.
    pub acks: AckLogSnapshot,
    /// The settings file: `None` when there is none (a queue from before settings files, which
    /// the next open gives one), else what decoding it gave.
    pub settings: Option<std::result::Result<QueueSettings, SettingsError>>,
    /// The head index's `synced_seq` as read before the directory was listed: every record below
    /// it is in the log as listed and read, or consumed. (The `synced_seq` of [`head`], read
    /// later, may cover records a running queue wrote after the listing.)
    ///
    /// [`head`]: Snapshot::head
    pub synced_floor: u64,
}

impl Snapshot {
    /// Lists and reads the whole directory once, through the one consistent view every
    /// lock-free reader takes (see `inspect::view`): a segment compacted while it is read is
    /// listed in [`vanished`](Snapshot::vanished).
    pub fn take(storage: &dyn Storage, dir: &Path) -> Result<Snapshot> {
        Self::take_with_progress(storage, dir, &mut |_| {})
    }

    /// Like [`take`](Snapshot::take), reporting progress after each segment.
    pub fn take_with_progress(
        storage: &dyn Storage,
        dir: &Path,
        progress: &mut dyn FnMut(ScanProgress),
    ) -> Result<Snapshot> {
        view::with_view(storage, dir, |mut view| {
            let acks = read_ack_log(storage, dir)?;
            let settings = read_file(storage, &dir.join(SETTINGS_FILE_NAME))?
                .map(|bytes| decode_settings(&bytes));
            let count = view.listing.segments.len();
            let mut sizes = Vec::with_capacity(count);
            for index in 0..count {
                // A segment that cannot even be opened is reported by the read below.
                sizes.push(view.len(index).ok().flatten().unwrap_or(0));
            }
            let mut done = ScanProgress {
                bytes_done: 0,
                bytes_total: sizes.iter().sum(),
            };
            let mut segments = Vec::with_capacity(count);
            let mut vanished = Vec::new();
            let mut unreadable = Vec::new();
            // The listing may grow while it is read (see `View::append_synced`).
            let mut index = 0;
            while let Some((base, name)) = view.listing.segments.get(index).cloned() {
                match view.fetch(index) {
                    Ok(view::Fetched::Bytes(bytes)) => {
                        segments.push(scan_segment(&name, base, &bytes))
                    }
                    Ok(view::Fetched::Consumed) => vanished.push(name),
                    Ok(view::Fetched::Gone(error)) => return Ok(view::Step::Retake(error)),
                    // One bad file (a failing disk sector) must not hide the state of the others.
                    Err(error @ Error::Io { .. }) => unreadable.push((name, error.to_string())),
                    Err(error) => return Err(error),
                }
                done.bytes_done += sizes.get(index).copied().unwrap_or(0);
                done.bytes_total = done.bytes_total.max(done.bytes_done);
                progress(done);
                index += 1;
            }
            Ok(view::Step::Done(Snapshot {
                dir: dir.to_path_buf(),
                // The head the listing is complete for; segments found gone were classified
                // by the head read again (`vanished`).
                head: view.first_head,
                segments,
                vanished,
                unreadable,
                strays: view.listing.strays,
                acks,
                settings,
                synced_floor: view.synced_floor,
            }))
        })
    }

    /// The head index's `synced_seq`: every record below it was synced (0 when unknown).
    pub fn synced_seq(&self) -> u64 {
        self.head.state().map_or(0, |state| state.synced_seq)
    }

    /// The health of segment `index` of [`segments`](Snapshot::segments), by the rules
    /// `Queue::open` applies (see [`SegmentScan::health`]): the last segment it would use is the
    /// active one.
    pub fn segment_health(&self, index: usize) -> Option<SegmentHealth> {
        let scan = self.segments.get(index)?;
        let is_last = index + 1 >= self.live_segments().len();
        Some(scan.health(is_last, self.synced_seq()))
    }

    /// The head sequence number in force: from the head index, or 0 for a directory without
    /// one and without segments (a queue not created yet).
    pub fn head_seq(&self) -> Option<u64> {
        match self.head.state() {
            Some(state) => Some(state.head_seq),
            None if self.head.file_len.is_none() && self.segments.is_empty() => Some(0),
            None => None,
        }
    }

    /// Whether segment `index` of [`segments`](Snapshot::segments) is consumed, live or active.
    pub fn segment_state(&self, index: usize) -> SegmentState {
        if index + 1 >= self.segments.len() {
            return SegmentState::Active;
        }
        let consumed = match (self.segments.get(index), self.head_seq()) {
            (Some(scan), Some(head)) => scan.next_seq() <= head,
            _ => false,
        };
        if consumed {
            SegmentState::Consumed
        } else {
            SegmentState::Live
        }
    }

    /// The segments `Queue::open` would use: without an unborn last segment.
    pub fn live_segments(&self) -> &[SegmentScan] {
        match self.segments.split_last() {
            Some((last, rest)) if last.is_unborn() => rest,
            _ => &self.segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::segment::encode_header;

    fn segment(base: u64, records: &[(&[u8], bool)]) -> Vec<u8> {
        let mut bytes = encode_header(base).to_vec();
        for (index, (payload, batch_continues)) in records.iter().enumerate() {
            frame::encode(
                &mut bytes,
                base + index as u64,
                7,
                payload,
                *batch_continues,
                0,
            );
        }
        bytes
    }

    #[test]
    fn intact_segment_scans_clean() {
        let bytes = segment(10, &[(b"a", false), (b"bb", false)]);
        let scan = scan_segment("x.seg", 10, &bytes);
        assert!(scan.is_intact());
        assert_eq!(
            (scan.first_seq, scan.last_seq, scan.records),
            (Some(10), Some(11), 2)
        );
        assert_eq!(scan.valid_end, bytes.len() as u64);
        assert_eq!(scan.health(true, 0), SegmentHealth::Ok);
    }

    #[test]
    fn incomplete_batch_is_not_counted_and_is_a_torn_tail_only_at_the_end() {
        let bytes = segment(0, &[(b"a", false), (b"b", true), (b"c", true)]);
        let scan = scan_segment("x.seg", 0, &bytes);
        assert_eq!(scan.records, 1);
        assert_eq!(
            scan.valid_end,
            (SEGMENT_HEADER_LEN + frame::frame_len(1)) as u64
        );
        assert!(matches!(
            scan.end,
            SegmentEnd::IncompleteBatch { first_seq: 1, .. }
        ));
        assert_eq!(scan.health(true, u64::MAX), SegmentHealth::TornTail);
        assert_eq!(scan.health(false, 0), SegmentHealth::Damaged);
    }

    #[test]
    fn damage_keeps_the_batch_start_as_the_end_and_names_the_frame() {
        let mut bytes = segment(
            0,
            &[(b"a", false), (b"b", true), (b"c", false), (b"d", false)],
        );
        let third = SEGMENT_HEADER_LEN + 2 * frame::frame_len(1);
        bytes[third + 24] ^= 1;
        let scan = scan_segment("x.seg", 0, &bytes);
        assert_eq!(
            scan.valid_end,
            (SEGMENT_HEADER_LEN + frame::frame_len(1)) as u64
        );
        match &scan.end {
            SegmentEnd::BadFrame {
                offset,
                expected_seq,
                later_frames,
                ..
            } => {
                assert_eq!(*offset, third as u64);
                assert_eq!(*expected_seq, 2);
                assert_eq!(
                    later_frames.as_slice(),
                    &[((third + frame::frame_len(1)) as u64, 3)]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(scan.health(true, u64::MAX), SegmentHealth::Damaged);
        // Above `synced_seq` the same bytes are unsynced writes persisted out of order.
        assert_eq!(scan.health(true, 1), SegmentHealth::TornTail);
        assert_eq!(scan.health(false, 1), SegmentHealth::Damaged);
    }

    #[test]
    fn cut_padding_and_wrong_base_are_told_apart() {
        let bytes = segment(5, &[(b"abc", false)]);
        let scan = scan_segment("x.seg", 5, &bytes[..bytes.len() - 2]);
        assert_eq!(scan.end, SegmentEnd::PaddingCut);
        assert_eq!(scan.records, 1);
        let scan = scan_segment("x.seg", 6, &bytes);
        assert_eq!(scan.header, HeaderStatus::WrongBase { found: 5 });
        let scan = scan_segment("x.seg", 5, &bytes[..10]);
        assert!(scan.is_unborn());
        assert_eq!(scan.health(true, 0), SegmentHealth::BadHeader);
    }

    #[test]
    fn entries_are_classified() {
        assert_eq!(
            classify_entry("00000000000000000042.seg"),
            EntryKind::Segment(42)
        );
        assert_eq!(classify_entry("head"), EntryKind::Head);
        assert_eq!(classify_entry("head.tmp"), EntryKind::HeadTemporary);
        assert_eq!(classify_entry("acks"), EntryKind::AckLog);
        assert_eq!(classify_entry("quarantine"), EntryKind::Quarantine);
        assert_eq!(classify_entry("42.seg"), EntryKind::Stray);
    }
}
