//! Checking a queue directory: every frame of every segment, the sequence numbers between
//! segments, the head index, and files that do not belong.
//!
//! [`verify`] takes no lock and writes nothing, so it can run while another process uses the
//! queue. A problem that disappears when the directory is read again (a write or a compaction in
//! flight) is not reported; one that stays is, with its file and byte offset.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diskspool::{storage::OsStorage, tools::verify, Options, Queue};
//!
//! let dir = tempfile::tempdir()?;
//! let queue = Queue::open(dir.path(), Options::default())?;
//! queue.push(b"checked")?;
//! let report = verify::verify(&OsStorage, dir.path())?;
//! assert!(report.is_clean(), "{:?}", report.problems);
//! assert_eq!(report.records, 1);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::Result;
use crate::format::acklog::check_next_base;
use crate::format::head::{SlotError, HEAD_SLOT_OFFSETS};
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::segment::{check_oldest_base, HeaderError};
use crate::storage::Storage;
use crate::tools::inspect::{HeaderStatus, ScanProgress, SegmentEnd, SegmentScan, Snapshot};

/// How many times verify reads the directory again before it believes a problem.
const VERIFY_ATTEMPTS_MAX: u32 = 4;
/// The pause between those reads: long enough for a write or compaction in flight to finish.
const VERIFY_RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What kind of problem was found. The names are stable: they appear in `spool verify --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A frame fails its checks (checksum, sequence number, length) while valid records follow
    /// it, in the same segment or a later one: damage, not an interrupted write.
    DamagedFrame,
    /// The last segment (or the ack log) ends in bytes that do not form a complete record or
    /// batch (entry): the remains of an interrupted write, which `Queue::open` cuts on its own;
    /// or an ack log entry that a power loss tore while it kept later ones, which
    /// `Queue::open` skips (see `AckLogSnapshot::torn_entries`).
    TornTail,
    /// A segment's header is cut short, has bad magic bytes or checksum, or names another base
    /// sequence number than the file name.
    BadSegmentHeader,
    /// A segment written by a format version this build does not read.
    UnsupportedVersion,
    /// Sequence numbers are missing between two segments or between the head and the oldest
    /// segment (a deleted or truncated segment), or two segments overlap.
    MissingRecords,
    /// One head slot is damaged; the other one is in force.
    HeadSlotDamaged,
    /// The head index is missing while segments exist, neither slot is valid, or the slot in
    /// force holds a value out of range (a sequence number beyond the largest one): which
    /// records were consumed is unknown, and `Queue::open` refuses to guess.
    HeadUnreadable,
    /// A segment file could not be read (an I/O error, or a folder with a segment's name).
    Unreadable,
    /// The ack log of the jobs API has a bad header, or a damaged entry (bad checksum or a
    /// field out of range) followed by a valid one: acknowledgements beyond the head are
    /// unknown, and `Queue::open` refuses the queue. `repair` rewrites the log without a
    /// damaged entry; it does not mend a bad header.
    AckLogDamaged,
    /// The settings file does not decode: `Queue::open` refuses the queue until `repair`
    /// rewrites it.
    SettingsDamaged,
    /// A file or folder that diskspool did not write.
    StrayFile,
}

impl ProblemKind {
    /// The stable snake_case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::DamagedFrame => "damaged_frame",
            ProblemKind::TornTail => "torn_tail",
            ProblemKind::BadSegmentHeader => "bad_segment_header",
            ProblemKind::UnsupportedVersion => "unsupported_version",
            ProblemKind::MissingRecords => "missing_records",
            ProblemKind::HeadSlotDamaged => "head_slot_damaged",
            ProblemKind::HeadUnreadable => "head_unreadable",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::AckLogDamaged => "ack_log_damaged",
            ProblemKind::SettingsDamaged => "settings_damaged",
            ProblemKind::StrayFile => "stray_file",
        }
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The file involved, relative to nothing: the full path.
    pub file: PathBuf,
    /// Where in the file the problem starts.
    pub offset: u64,
    /// One sentence saying what is wrong.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at byte {}: {} ({})",
            self.file.display(),
            self.offset,
            self.detail,
            self.kind
        )
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The queue directory.
    pub dir: PathBuf,
    /// Segment files checked.
    pub segments: usize,
    /// Valid records found, consumed or not.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// The head sequence number in force, when the head index is readable.
    pub head_seq: Option<u64>,
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the queue in `dir`. See the [module documentation](self).
pub fn verify(storage: &dyn Storage, dir: &std::path::Path) -> Result<VerifyReport> {
    verify_with_progress(storage, dir, &mut |_| {})
}

/// Like [`verify`], reporting progress of the first full read after each segment.
pub fn verify_with_progress(
    storage: &dyn Storage,
    dir: &std::path::Path,
    progress: &mut dyn FnMut(ScanProgress),
) -> Result<VerifyReport> {
    let mut snapshot = Snapshot::take_with_progress(storage, dir, progress)?;
    let mut report = check(&snapshot);
    for _ in 1..VERIFY_ATTEMPTS_MAX {
        if report.is_clean() {
            break;
        }
        std::thread::sleep(VERIFY_RETRY_PAUSE);
        snapshot = Snapshot::take(storage, dir)?;
        report = check(&snapshot);
    }
    Ok(report)
}

/// Lists the problems of a snapshot. Pure.
pub fn check(snapshot: &Snapshot) -> VerifyReport {
    let mut report = VerifyReport {
        dir: snapshot.dir.clone(),
        segments: snapshot.segments.len(),
        records: snapshot.segments.iter().map(|scan| scan.records).sum(),
        bytes: snapshot.segments.iter().map(|scan| scan.file_len).sum(),
        head_seq: snapshot.head_seq(),
        problems: Vec::new(),
    };
    check_head(snapshot, &mut report.problems);
    check_segments(snapshot, &mut report.problems);
    check_synced_end(snapshot, &mut report.problems);
    for (name, error) in &snapshot.unreadable {
        report.problems.push(Problem {
            kind: ProblemKind::Unreadable,
            file: snapshot.dir.join(name),
            offset: 0,
            detail: format!("could not be read: {error}"),
        });
    }
    check_ack_log(snapshot, &mut report.problems);
    if let Some(Err(error)) = &snapshot.settings {
        report.problems.push(Problem {
            kind: ProblemKind::SettingsDamaged,
            file: snapshot.dir.join(crate::format::layout::SETTINGS_FILE_NAME),
            offset: 0,
            detail: error.to_string(),
        });
    }
    for stray in &snapshot.strays {
        report.problems.push(Problem {
            kind: ProblemKind::StrayFile,
            file: snapshot.dir.join(stray),
            offset: 0,
            detail: String::from("not a file diskspool writes (repair moves it to quarantine/)"),
        });
    }
    report
}

/// The head index knows how far records were synced: a log that ends before that lost records
/// no crash can take (`Queue::open` refuses it).
fn check_synced_end(snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let Some(state) = snapshot.head.state() else {
        return;
    };
    let Some(last) = snapshot.segments.last() else {
        // No segment at all: records the head index says were synced are gone.
        let synced_seq = snapshot.synced_floor;
        if state.head_seq < synced_seq && snapshot.unreadable.is_empty() {
            problems.push(Problem {
                kind: ProblemKind::MissingRecords,
                file: snapshot.dir.join(HEAD_FILE_NAME),
                offset: 0,
                detail: format!(
                    "records {}..{synced_seq} are missing: the head index says every record \
                     below {synced_seq} was synced, but no segment file is left",
                    state.head_seq
                ),
            });
        }
        return;
    };
    let log_end = last.next_seq();
    let file = snapshot.dir.join(&last.name);
    // Damage found in the segment already explains where its records end.
    let damaged = problems
        .iter()
        .any(|problem| problem.kind == ProblemKind::DamagedFrame && problem.file == file);
    // The synced mark read before the listing: a running queue may have synced more since.
    let synced_seq = snapshot.synced_floor;
    if log_end < synced_seq && state.head_seq < synced_seq && !damaged {
        let from = log_end.max(state.head_seq);
        problems.push(Problem {
            kind: ProblemKind::MissingRecords,
            file,
            offset: last.valid_end,
            detail: format!(
                "records {from}..{synced_seq} are missing: the head index says every record \
                 below {synced_seq} was synced, but the log ends before {log_end} (a lost or cut \
                 newest segment)"
            ),
        });
    }
}

/// The ack log: its header, and every entry (see `acklog::scan_ack_log`).
fn check_ack_log(snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let acks = &snapshot.acks;
    let file = snapshot.dir.join(crate::format::layout::ACK_LOG_FILE_NAME);
    if let Some(error) = &acks.header_error {
        problems.push(Problem {
            kind: ProblemKind::AckLogDamaged,
            file: file.clone(),
            offset: 0,
            detail: error.to_string(),
        });
    }
    if let Some(damage) = &acks.damage {
        problems.push(Problem {
            kind: ProblemKind::AckLogDamaged,
            file: file.clone(),
            offset: damage.offset,
            detail: damage.detail.clone(),
        });
    }
    for &offset in &acks.torn_entries {
        problems.push(Problem {
            kind: ProblemKind::TornTail,
            file: file.clone(),
            offset,
            detail: String::from(
                "an ack log entry that fails its checksum before valid ones, none of them \
                 written after a sync that covered it: an append a power loss tore while it \
                 kept later ones, which `Queue::open` skips",
            ),
        });
    }
    if let (Some(offset), Some(len)) = (acks.bad_entry_offset, acks.file_len) {
        problems.push(Problem {
            kind: ProblemKind::TornTail,
            file,
            offset,
            detail: format!(
                "{} bytes after the last valid ack log entry hold no valid entry: an \
                 interrupted append, which `Queue::open` cuts",
                len.saturating_sub(offset)
            ),
        });
    }
}

fn check_head(snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let path = snapshot.dir.join(HEAD_FILE_NAME);
    let head = &snapshot.head;
    if head.file_len.is_none() {
        if let Some(first) = snapshot.segments.first() {
            problems.push(Problem {
                kind: ProblemKind::HeadUnreadable,
                file: path,
                offset: 0,
                detail: format!(
                    "the head index is missing while segment files exist (first: {})",
                    first.name
                ),
            });
        }
        return;
    }
    if head.read.current.is_none() {
        problems.push(Problem {
            kind: ProblemKind::HeadUnreadable,
            file: path,
            offset: 0,
            detail: format!(
                "neither head slot is valid (slot 0: {}; slot 1: {})",
                slot_text(&head.read.slots[0]),
                slot_text(&head.read.slots[1])
            ),
        });
        return;
    }
    if let Some((offset, why)) = head.out_of_range() {
        problems.push(Problem {
            kind: ProblemKind::HeadUnreadable,
            file: path.clone(),
            offset,
            detail: format!("the head slot in force is unusable: {why}"),
        });
    }
    for index in head.read.damaged_slots() {
        let detail = match &head.read.slots[index] {
            Err(SlotError::Empty) => format!(
                "head slot {index} is all zero although both slots were written; the other slot \
                 is in force"
            ),
            Err(error) => format!("head slot {index}: {error}; the other slot is in force"),
            Ok(_) => continue,
        };
        problems.push(Problem {
            kind: ProblemKind::HeadSlotDamaged,
            file: path.clone(),
            offset: HEAD_SLOT_OFFSETS[index],
            detail,
        });
    }
}

fn slot_text(slot: &std::result::Result<crate::format::head::HeadSlot, SlotError>) -> String {
    match slot {
        Ok(_) => String::from("valid"),
        Err(error) => error.to_string(),
    }
}

fn check_segments(snapshot: &Snapshot, problems: &mut Vec<Problem>) {
    let head_seq = snapshot.head_seq();
    let segments = snapshot.live_segments();
    let last_index = segments.len().checked_sub(1);
    // The sequence number the next segment must start with, when known.
    let mut expected: Option<u64> = None;
    for (index, scan) in segments.iter().enumerate() {
        let path = snapshot.dir.join(&scan.name);
        let is_last = Some(index) == last_index;
        if let Some(expected) = expected {
            // Gaps wholly behind the head are consumed records: nothing is lost. So are gaps
            // left by segments compacted while the snapshot was taken (the head read again
            // then had passed them), though the snapshot's head is older.
            let compacted =
                vanished_bases(snapshot).any(|base| (expected..scan.base_seq).contains(&base));
            let matters = head_seq.is_none_or(|head| scan.base_seq > head) && !compacted;
            // The rule every reader applies when it steps to the next segment; a gap repair
            // retired on purpose (see `acklog::is_retired_gap`) is no loss.
            let acked = &snapshot.acks.history.acked;
            match check_next_base(expected, scan.base_seq, acked) {
                Err(sequence_break) if matters => problems.push(Problem {
                    kind: ProblemKind::MissingRecords,
                    file: path.clone(),
                    offset: 0,
                    detail: sequence_break.to_string(),
                }),
                _ => {}
            }
        } else if let (0, Some(head)) = (index, head_seq) {
            // A segment at or before the head that vanished while the snapshot was taken was
            // deleted by a running queue's compactor, which deletes only segments its durable
            // head has passed: the head read earlier is stale, and the gap is consumed records.
            let compacted_meanwhile = vanished_bases(snapshot).any(|base| base <= head);
            match check_oldest_base(head, scan.base_seq) {
                Err(sequence_break) if !compacted_meanwhile => problems.push(Problem {
                    kind: ProblemKind::MissingRecords,
                    file: path.clone(),
                    offset: 0,
                    detail: sequence_break.to_string(),
                }),
                _ => {}
            }
        }
        if let Some(problem) = header_problem(&path, scan) {
            problems.push(problem);
            expected = None;
            continue;
        }
        // Where a damaged segment really ends is unknown: the next one is not compared with it.
        let end = end_problem(path, scan, is_last, snapshot.synced_seq());
        expected = match scan.end {
            SegmentEnd::Clean | SegmentEnd::PaddingCut => Some(scan.next_seq()),
            SegmentEnd::IncompleteBatch { .. } | SegmentEnd::BadFrame { .. } => None,
        };
        problems.extend(end);
    }
    // An unborn last segment is removed by `Queue::open`; it holds nothing.
    if let Some(unborn) = snapshot.segments.get(segments.len()) {
        problems.push(Problem {
            kind: ProblemKind::BadSegmentHeader,
            file: snapshot.dir.join(&unborn.name),
            offset: 0,
            detail: format!(
                "segment of {} bytes was never completed (no valid header); it holds no records",
                unborn.file_len
            ),
        });
    }
}

/// The bases of the segments compacted while the snapshot was taken.
fn vanished_bases(snapshot: &Snapshot) -> impl Iterator<Item = u64> + '_ {
    snapshot
        .vanished
        .iter()
        .filter_map(|name| crate::format::layout::parse_segment_file_name(name))
}

fn header_problem(path: &std::path::Path, scan: &SegmentScan) -> Option<Problem> {
    let (kind, detail) = match &scan.header {
        HeaderStatus::Ok => return None,
        HeaderStatus::Bad(HeaderError::UnsupportedVersion(version)) => (
            ProblemKind::UnsupportedVersion,
            format!(
                "segment written by format version {version}; this build reads versions 2 to {}",
                crate::format::segment::FORMAT_VERSION
            ),
        ),
        HeaderStatus::Bad(error) => (ProblemKind::BadSegmentHeader, error.to_string()),
        HeaderStatus::WrongBase { found } => (
            ProblemKind::BadSegmentHeader,
            format!(
                "header names base sequence {found}, file name {}",
                scan.base_seq
            ),
        ),
    };
    Some(Problem {
        kind,
        file: path.to_path_buf(),
        offset: 0,
        detail,
    })
}

/// The problem a segment's end is, if any: damage or an interrupted write, told apart by the
/// rule `Queue::open` applies ([`SegmentScan::is_damaged`]).
fn end_problem(
    path: PathBuf,
    scan: &SegmentScan,
    is_last: bool,
    synced_seq: u64,
) -> Option<Problem> {
    let kind = if scan.is_damaged(is_last, synced_seq) {
        ProblemKind::DamagedFrame
    } else {
        ProblemKind::TornTail
    };
    let (offset, detail) = match &scan.end {
        SegmentEnd::Clean => return None,
        SegmentEnd::PaddingCut => (
            scan.file_len,
            format!(
                "file ends inside the padding of its last record (length {}, expected {})",
                scan.file_len, scan.valid_end
            ),
        ),
        SegmentEnd::IncompleteBatch { offset, first_seq } => (
            *offset,
            format!("batch starting at sequence {first_seq} has no final record"),
        ),
        SegmentEnd::BadFrame {
            offset,
            expected_seq,
            error,
            later_frames,
        } => match later_frames.first() {
            Some((later_offset, later_seq)) if kind == ProblemKind::DamagedFrame => (
                *offset,
                format!(
                    "record {expected_seq}: {error}; a valid record (sequence {later_seq} at \
                     byte {later_offset}) follows"
                ),
            ),
            Some((later_offset, later_seq)) => (
                *offset,
                format!(
                    "record {expected_seq}: {error}; the valid records after it (from sequence \
                     {later_seq} at byte {later_offset}) were never synced (the head index \
                     records sequences below {synced_seq} as synced), so a power loss could \
                     persist them without the earlier writes: `Queue::open` cuts them"
                ),
            ),
            None if is_last => (
                *offset,
                format!(
                    "record {expected_seq}: {error}; {} bytes from here to the end of the file \
                     hold no valid record",
                    scan.file_len.saturating_sub(*offset)
                ),
            ),
            None => (
                *offset,
                format!("record {expected_seq}: {error}; later segments follow"),
            ),
        },
    };
    Some(Problem {
        kind,
        file: path,
        offset,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::OsStorage;
    use crate::{Options, Queue, SyncPolicy};

    /// A snapshot taken while a running queue compacts can find the segment that held the head
    /// gone (listed, then deleted before it was read): that gap is consumed records, not
    /// missing ones. The same gap with nothing vanished is damage.
    #[test]
    fn a_segment_compacted_during_the_snapshot_is_not_missing_records() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options::default()
            .segment_size(4096)
            .sync(SyncPolicy::Never)
            .auto_compact(false);
        let queue = Queue::open(dir.path(), options).unwrap();
        for _ in 0..100 {
            queue.push(&[7; 100]).unwrap();
        }
        // The head ends inside the second segment.
        for _ in 0..40 {
            queue.pop().unwrap().unwrap();
        }
        queue.sync().unwrap();
        let snapshot = Snapshot::take(&OsStorage, dir.path()).unwrap();
        assert!(check(&snapshot).is_clean());
        let head = snapshot.head_seq().unwrap();
        let holding_head = snapshot
            .segments
            .iter()
            .rposition(|scan| scan.base_seq <= head)
            .unwrap();
        assert!(holding_head > 0, "the head is past the first segment");

        let mut compacted = snapshot.clone();
        for scan in compacted.segments.drain(..=holding_head) {
            compacted.vanished.push(scan.name);
        }
        assert!(check(&compacted).is_clean(), "{:?}", check(&compacted));

        let mut damaged = snapshot.clone();
        damaged.segments.drain(..=holding_head);
        let report = check(&damaged);
        assert!(report
            .problems
            .iter()
            .any(|problem| problem.kind == ProblemKind::MissingRecords));
    }
}
