//! Mending a damaged queue directory so that `Queue::open` serves every good record again.
//!
//! [`repair`] takes the directory lock, reads the directory as [`verify`] does,
//! and then, in sequence order, keeps every record up to the first point of damage and cuts the
//! rest. It never deletes a byte: whatever it cuts is copied or moved into `DIR/quarantine/`
//! first and synced there. Concretely:
//!
//! - **Torn tail or damaged frame** in a segment: the bytes from the end of the last good record
//!   (or complete batch) to the end of the file are copied to
//!   `quarantine/<segment>.cut-at-<offset>`, then the segment is truncated there. Every later
//!   segment is moved whole into `quarantine/`: the queue's sequence numbers must be contiguous,
//!   so records after a hole cannot be served.
//! - **Missing records** between two segments, or a segment with a bad header or another format
//!   version: that segment and every later one are moved into `quarantine/`. When every record
//!   before a gap is consumed, the head moves past the missing ones instead and nothing is cut.
//! - **A damaged segment wholly behind the head** (a bad frame or header, every record in it
//!   consumed): moved into `quarantine/`; nothing is cut from the queue.
//! - **Damage before the head inside the head's segment**, when the head index's hint locates
//!   the head's record: the bytes from that record on are copied into a new segment named after
//!   the head's sequence number, and the old segment is moved into `quarantine/`; nothing live
//!   is cut. (Damage in the copied part is then treated as above.)
//! - **File ends inside the padding** of its last record: the zero padding is restored.
//! - **Head index**: one damaged slot is rewritten from the valid one. A head that is missing or
//!   has no valid slot, or that points before the oldest record left, is set to the oldest record
//!   left: records consumed but not yet compacted may then be delivered again, which is the
//!   choice that loses nothing. The old head file is copied into `quarantine/` first.
//! - **Ack log** (jobs API): when records are cut, what it says about their sequence numbers
//!   (acknowledgements, delivery counts, delays) is dropped by rewriting it, the old file copied
//!   into `quarantine/` first; new records will carry those numbers again.
//! - **Unreadable segments**, **stray files** and a segment whose creation was cut short: moved
//!   into `quarantine/`.
//!
//! The [`RepairReport`] says which sequence numbers the queue no longer serves
//! ([`RepairReport::cut_seqs`]) and what each action did. After a repair, [`verify`] is clean
//! and new records continue from the first sequence number cut: numbers that only quarantined
//! records carry are used again.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diskspool::{storage::OsStorage, tools::repair, Options, Queue};
//!
//! let dir = tempfile::tempdir()?;
//! drop(Queue::open(dir.path(), Options::default())?);
//! std::fs::write(dir.path().join("notes.txt"), "not ours")?;
//! let report = repair::repair(&OsStorage, dir.path(), repair::Mode::Repair)?;
//! assert_eq!(report.actions.len(), 1, "the stray file moved to quarantine/");
//! assert!(report.after.expect("verified after repair").is_clean());
//! # Ok(()) }
//! ```
//!
//! [`verify`]: crate::tools::verify::verify

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::acklog::{check_next_base, AckHeaderError, JobHistory};
use crate::format::frame::FrameRules;
use crate::format::head::{encode_slot, HeadSlot, HeadState, HEAD_FILE_LEN, HEAD_SLOT_LEN};
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::layout::QUARANTINE_DIR_NAME;
use crate::format::layout::SETTINGS_FILE_NAME;
use crate::format::layout::{parse_segment_file_name, segment_file_name};
use crate::format::segment::{
    decode_header, encode_header, encode_header_for, locate_seq, SEGMENT_HEADER_LEN,
};
use crate::format::settings::QueueSettings;
use crate::options::{SEGMENT_SIZE_DEFAULT, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
use crate::storage::{self, Storage};
use crate::tools::inspect::{
    read_file, scan_segment, segment_frames, HeaderStatus, SegmentEnd, SegmentScan, Snapshot,
};
use crate::tools::verify::{self, ProblemKind, VerifyReport};

/// Whether [`repair`] changes anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only plan: the report lists what a repair would do.
    DryRun,
    /// Carry the plan out.
    Repair,
}

/// What one step of a repair does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActionKind {
    /// Copy a segment's bytes from `offset` to its end into quarantine, then truncate it there.
    TruncateTail,
    /// Move a whole file into quarantine.
    Quarantine,
    /// Extend a segment whose last record's zero padding was cut off.
    RestorePadding,
    /// Write a new head index (the old one is copied into quarantine first).
    RewriteHead,
    /// Copy a segment's bytes from `offset` (the head's frame) into a new segment that starts
    /// at the head, named in `saved_as`; the old segment is quarantined by the next action.
    RebaseSegment,
    /// Rewrite the jobs API's ack log without what it says about cut sequence numbers (the old
    /// one is copied into quarantine first): new records will carry those numbers again, and
    /// must not inherit acknowledgements or delivery counts of the records cut.
    RewriteAckLog,
    /// Start the log again after every sequence number ever used (the file in `file`, a new
    /// empty segment), and acknowledge the numbers in `seqs` between the records kept and that
    /// segment in the ack log, so that no number a cut or lost record carried is used again.
    ContinueAfter,
    /// Write a settings file whose segment size is taken from the segments on disk (the old,
    /// damaged file is copied into quarantine first).
    RewriteSettings,
}

impl ActionKind {
    /// The stable snake_case name used in JSON output.
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::TruncateTail => "truncate_tail",
            ActionKind::Quarantine => "quarantine",
            ActionKind::RestorePadding => "restore_padding",
            ActionKind::RewriteHead => "rewrite_head",
            ActionKind::RebaseSegment => "rebase_segment",
            ActionKind::RewriteAckLog => "rewrite_ack_log",
            ActionKind::ContinueAfter => "continue_after",
            ActionKind::RewriteSettings => "rewrite_settings",
        }
    }
}

/// One step of a repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairAction {
    /// What it does.
    pub kind: ActionKind,
    /// The file it changes or moves.
    pub file: PathBuf,
    /// For a truncation, where the cut starts; for restored padding, the new length.
    pub offset: u64,
    /// Bytes copied or moved into quarantine.
    pub bytes: u64,
    /// Where the cut bytes or the moved file went.
    pub saved_as: Option<PathBuf>,
    /// Sequence numbers of the valid records in the bytes that were cut or moved.
    pub seqs: Option<Range<u64>>,
    /// Valid records taken from the queue that this step saved into quarantine (readable
    /// copies, which `spool quarantine --restore` pushes back).
    pub records: u64,
    /// Why.
    pub reason: String,
}

impl fmt::Display for RepairAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self.kind {
            ActionKind::TruncateTail => write!(
                f,
                "truncate {name} at byte {} ({} bytes saved)",
                self.offset, self.bytes
            )?,
            ActionKind::Quarantine => write!(f, "move {name} ({} bytes)", self.bytes)?,
            ActionKind::RestorePadding => {
                write!(f, "restore padding of {name} to {} bytes", self.offset)?
            }
            ActionKind::RewriteHead | ActionKind::RewriteAckLog | ActionKind::RewriteSettings => {
                write!(f, "rewrite {name}")?
            }
            ActionKind::RebaseSegment => write!(
                f,
                "copy {name} from byte {} ({} bytes) into a new segment",
                self.offset, self.bytes
            )?,
            ActionKind::ContinueAfter => {
                write!(f, "create {name} and acknowledge the numbers before it")?
            }
        }
        if let Some(saved) = &self.saved_as {
            write!(f, " -> {}", saved.display())?;
        }
        if let Some(seqs) = &self.seqs {
            write!(f, " [records {}..{}]", seqs.start, seqs.end)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// What [`repair`] did, or would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairReport {
    /// The queue directory.
    pub dir: PathBuf,
    /// Whether anything was changed.
    pub mode: Mode,
    /// The steps, in the order they run.
    pub actions: Vec<RepairAction>,
    /// Sequence numbers the queue no longer serves, from the first one cut to just past the
    /// highest one found in the cut data. Empty when only unreadable bytes were cut. `None` when
    /// no record was cut.
    pub cut_seqs: Option<Range<u64>>,
    /// Valid records among the cut ones: readable copies in `quarantine/`.
    pub quarantined_records: u64,
    /// When the head was moved, the sequence number it now points at.
    pub head_reset_to: Option<u64>,
    /// Records between the head and the oldest record left that are gone from disk (a deleted
    /// segment): the head was moved past them.
    pub gone_seqs: Option<Range<u64>>,
    /// The problems found before repairing.
    pub before: VerifyReport,
    /// The check after repairing (`None` for a dry run).
    pub after: Option<VerifyReport>,
}

impl RepairReport {
    /// True when there was nothing to repair.
    pub fn nothing_to_do(&self) -> bool {
        self.actions.is_empty()
    }
}

/// Repairs the queue in `dir` (see the [module documentation](self)). Fails with
/// [`Error::Locked`] while another handle has the queue open.
pub fn repair(storage: &dyn Storage, dir: &Path, mode: Mode) -> Result<RepairReport> {
    // Listing first: locking would create a lock file in a directory that is not a queue, and
    // repairing one would move every file in it (a home directory, say) into quarantine.
    if !crate::storage::queue_dir::is_queue(storage, dir)? {
        return Err(Error::NotAQueue {
            dir: dir.to_path_buf(),
        });
    }
    crate::storage::queue_dir::check_owner(storage, dir)?;
    let _lock = storage
        .lock_dir(dir)
        .map_err(|failure| crate::storage::queue_dir::lock_failure(storage, dir, failure))?;
    let snapshot = Snapshot::take(storage, dir)?;
    repair_snapshot(storage, dir, mode, snapshot)
}

/// Repairs the queue in `dir` when it holds damage that `Queue::open` refuses or that a reader
/// would stop at (see [`is_damage`]), and returns what was done; `None` when there is none.
/// What `Queue::open` runs under [`OnDamage::Quarantine`](crate::OnDamage::Quarantine): the
/// caller holds the directory's lock. A torn tail, a damaged head slot or a stray file alone
/// is left to the open, which handles them as after any crash; a segment of another format
/// version is left alone too (the open refuses it: it is not damage).
pub(crate) fn repair_damage_locked(
    storage: &dyn Storage,
    dir: &Path,
) -> Result<Option<RepairReport>> {
    // A queue being created has nothing to mend (and no files a snapshot could read).
    if !crate::storage::queue_dir::is_queue(storage, dir)? {
        return Ok(None);
    }
    let snapshot = Snapshot::take(storage, dir)?;
    // An I/O error is not damage: the bytes may be fine, and a later open may read them (a
    // transient error, a disk the operator replaces). The open fails with it and nothing is set
    // aside. What is no regular file at all (a folder, a link with a segment's name) is damage
    // that no retry mends, and is set aside. (`spool repair` sets both aside, on an operator's
    // word.)
    for (name, error) in &snapshot.unreadable {
        let path = dir.join(name);
        let not_a_file = matches!(
            storage.open_read(&path),
            Err(error) if error.kind() == std::io::ErrorKind::InvalidInput
        );
        if !not_a_file {
            return Err(Error::io(
                "read segment",
                path,
                std::io::Error::other(error.clone()),
            ));
        }
    }
    let before = verify::check(&snapshot);
    let newer_format = before
        .problems
        .iter()
        .any(|problem| problem.kind == ProblemKind::UnsupportedVersion);
    if newer_format
        || !before
            .problems
            .iter()
            .any(|problem| is_damage(problem.kind))
    {
        return Ok(None);
    }
    repair_snapshot(storage, dir, Mode::Repair, snapshot).map(Some)
}

/// True for the problems that no crash leaves behind: `Queue::open` refuses them, or the
/// reader stops at them. Torn tails, a damaged head slot (the other one is in force) and stray
/// files are not.
pub fn is_damage(kind: ProblemKind) -> bool {
    match kind {
        ProblemKind::DamagedFrame
        | ProblemKind::BadSegmentHeader
        | ProblemKind::UnsupportedVersion
        | ProblemKind::MissingRecords
        | ProblemKind::HeadUnreadable
        | ProblemKind::Unreadable
        | ProblemKind::AckLogDamaged
        | ProblemKind::SettingsDamaged => true,
        ProblemKind::TornTail | ProblemKind::HeadSlotDamaged | ProblemKind::StrayFile => false,
    }
}

/// Plans, and in [`Mode::Repair`] carries out, the repair of a snapshot taken under the lock.
fn repair_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    mode: Mode,
    snapshot: Snapshot,
) -> Result<RepairReport> {
    let before = verify::check(&snapshot);
    let mut planner = Planner::new(storage, &snapshot)?;
    planner.plan_segments()?;
    planner.plan_head();
    planner.plan_ack_log();
    planner.plan_strays();
    planner.plan_continuation();
    planner.plan_settings();
    let mut report = RepairReport {
        dir: dir.to_path_buf(),
        mode,
        actions: planner.actions,
        cut_seqs: planner
            .first_cut_seq
            .map(|first| first..planner.cut_end_seq.max(first)),
        quarantined_records: planner.quarantined_records,
        head_reset_to: planner.new_head.filter(|_| planner.head_moved),
        gone_seqs: planner.gone_seqs,
        before,
        after: None,
    };
    if mode == Mode::Repair {
        if !report.actions.is_empty() {
            execute(
                storage,
                dir,
                &report.actions,
                planner.new_head,
                planner.new_settings,
            )?;
        }
        report.after = Some(verify::check(&Snapshot::take(storage, dir)?));
    }
    Ok(report)
}

/// Builds the list of actions from a snapshot taken under the lock.
struct Planner<'a> {
    storage: &'a dyn Storage,
    snapshot: &'a Snapshot,
    quarantine: PathBuf,
    /// Names taken in quarantine, existing or planned.
    taken: BTreeSet<String>,
    actions: Vec<RepairAction>,
    first_cut_seq: Option<u64>,
    cut_end_seq: u64,
    quarantined_records: u64,
    /// The first sequence number kept, and just past the last one kept.
    kept: Option<Range<u64>>,
    /// The head state to write, when the head is rewritten.
    new_head: Option<u64>,
    head_moved: bool,
    gone_seqs: Option<Range<u64>>,
    /// The settings file to write, when it is rewritten.
    new_settings: Option<QueueSettings>,
    /// What the ack log says, salvaged from behind a damaged header (see `acklog::salvage`).
    acks: JobHistory,
    /// The truncation that leaves nothing of its segment but the header (its index in
    /// `actions`, and the segment's name).
    emptied: Option<(usize, String)>,
}

impl<'a> Planner<'a> {
    fn new(storage: &'a dyn Storage, snapshot: &'a Snapshot) -> Result<Self> {
        let quarantine = snapshot.dir.join(QUARANTINE_DIR_NAME);
        let taken = match storage.list_dir(&quarantine) {
            Ok(names) => names.into_iter().collect(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(error) => return Err(Error::io("list quarantine", &quarantine, error)),
        };
        let mut taken = taken;
        // Names of the quarantine folder's own: never given to a file moved in.
        for own in [
            crate::format::layout::QUARANTINE_MANIFEST_NAME,
            "manifest.tmp",
            crate::format::layout::RESTORED_DIR_NAME,
        ] {
            taken.insert(own.to_string());
        }
        Ok(Planner {
            storage,
            snapshot,
            quarantine,
            taken,
            actions: Vec::new(),
            first_cut_seq: None,
            cut_end_seq: 0,
            quarantined_records: 0,
            kept: None,
            new_head: None,
            head_moved: false,
            gone_seqs: None,
            new_settings: None,
            acks: ack_history(storage, &snapshot.dir, &snapshot.acks)?,
            emptied: None,
        })
    }

    /// A name in quarantine that is not taken yet: `name`, else `name.1`, `name.2`, ...
    fn quarantine_path(&mut self, name: &str) -> PathBuf {
        let mut candidate = name.to_string();
        let mut suffix = 0u32;
        while self.taken.contains(&candidate) {
            suffix += 1;
            candidate = format!("{name}.{suffix}");
        }
        self.taken.insert(candidate.clone());
        self.quarantine.join(candidate)
    }

    fn note_cut(&mut self, first_seq: u64, known: Option<&Range<u64>>) {
        // Records behind the head are consumed: cutting their bytes takes nothing from the queue.
        let first_seq = first_seq.max(self.snapshot.head_seq().unwrap_or(0));
        let first = *self.first_cut_seq.get_or_insert(first_seq);
        let end = known.map_or(first, |known| known.end);
        self.cut_end_seq = self.cut_end_seq.max(end).max(first);
    }

    fn quarantine_segment(&mut self, scan: &SegmentScan, reason: String, cuts_records: bool) {
        let seqs = scan
            .last_seq
            .map(|last| scan.first_seq.unwrap_or(scan.base_seq)..last + 1);
        if cuts_records {
            self.quarantined_records += scan.records;
            self.note_cut(scan.base_seq, seqs.as_ref());
        }
        let saved_as = self.quarantine_path(&scan.name);
        self.actions.push(RepairAction {
            kind: ActionKind::Quarantine,
            file: self.snapshot.dir.join(&scan.name),
            offset: 0,
            bytes: scan.file_len,
            saved_as: Some(saved_as),
            seqs,
            records: if cuts_records { scan.records } else { 0 },
            reason,
        });
    }

    fn plan_segments(&mut self) -> Result<()> {
        let head_seq = self.snapshot.head_seq();
        let all = self.snapshot.segments.as_slice();
        let live = self.snapshot.live_segments();
        if let Some(unborn) = all.get(live.len()) {
            let reason = String::from("segment creation was cut short; it holds no records");
            self.quarantine_segment(unborn, reason, false);
        }
        let mut expected: Option<u64> = None;
        for (index, scan) in live.iter().enumerate() {
            let rest = live.get(index + 1..).unwrap_or(&[]);
            let behind_head = |seq: u64| head_seq.is_some_and(|head| seq <= head);
            if let Some(expected) = expected {
                // The rule every reader steps to the next segment by: a gap an earlier repair
                // retired is crossed, not cut (by what the ack log says, salvaged from behind a
                // damaged header).
                let acked = &self.acks.acked;
                let gap = check_next_base(expected, scan.base_seq, acked).is_err()
                    && !behind_head(scan.base_seq);
                if gap && head_seq.is_some_and(|head| expected <= head) {
                    // Every record before the gap is consumed: the head moves past the missing
                    // ones to this segment (see `plan_head`) and nothing after it is cut.
                    self.kept = None;
                } else if gap {
                    self.note_cut(expected.min(scan.base_seq), None);
                    let reason = format!("records {expected}..{} are missing", scan.base_seq);
                    self.cut_from(scan, rest, reason);
                    return Ok(());
                }
            }
            let next_base = rest.first().map(|next| next.base_seq);
            let wholly_consumed = next_base.is_some_and(behind_head);
            if scan.header != HeaderStatus::Ok && wholly_consumed {
                let reason = String::from("bad header, and every record in it is consumed");
                self.quarantine_segment(scan, reason, false);
                expected = next_base;
                continue;
            }
            if scan.header != HeaderStatus::Ok {
                let reason = match &scan.header {
                    HeaderStatus::Bad(error) => error.to_string(),
                    HeaderStatus::WrongBase { found } => {
                        format!("header names base sequence {found}")
                    }
                    HeaderStatus::Ok => String::new(),
                };
                self.cut_from(scan, rest, reason);
                return Ok(());
            }
            let kept_start = self.kept.as_ref().map_or(scan.base_seq, |kept| kept.start);
            match &scan.end {
                SegmentEnd::Clean => {}
                SegmentEnd::PaddingCut => self.restore_padding(scan),
                SegmentEnd::IncompleteBatch { .. } | SegmentEnd::BadFrame { .. } => {
                    if wholly_consumed {
                        // Every record in this segment is consumed: drop it whole.
                        let reason = String::from("damaged, and every record in it is consumed");
                        self.quarantine_segment(scan, reason, false);
                        expected = next_base;
                        continue;
                    }
                    let path = self.snapshot.dir.join(&scan.name);
                    let bytes = read_file(self.storage, &path)?.unwrap_or_default();
                    let (scan, bytes) = match self.plan_rebase(scan, &bytes, head_seq) {
                        Some(rebased) => rebased,
                        None => (scan.clone(), bytes),
                    };
                    let kept_start = self.kept.as_ref().map_or(scan.base_seq, |kept| kept.start);
                    self.kept = Some(kept_start..scan.next_seq());
                    match scan.end {
                        SegmentEnd::Clean => {
                            expected = Some(scan.next_seq());
                            continue;
                        }
                        SegmentEnd::PaddingCut => {
                            self.restore_padding(&scan);
                            expected = Some(scan.next_seq());
                            continue;
                        }
                        SegmentEnd::IncompleteBatch { .. } | SegmentEnd::BadFrame { .. } => {}
                    }
                    self.truncate_tail(&scan, &bytes);
                    for later in rest {
                        let reason = String::from("follows the damage");
                        self.quarantine_segment(later, reason, true);
                    }
                    return Ok(());
                }
            }
            self.kept = Some(kept_start..scan.next_seq());
            expected = Some(scan.next_seq());
        }
        Ok(())
    }

    /// Moves `scan` and every segment in `rest` into quarantine.
    fn cut_from(&mut self, scan: &SegmentScan, rest: &[SegmentScan], reason: String) {
        self.note_cut(scan.base_seq, None);
        self.quarantine_segment(scan, reason, true);
        for later in rest {
            self.quarantine_segment(later, String::from("follows the damage"), true);
        }
    }

    fn restore_padding(&mut self, scan: &SegmentScan) {
        self.actions.push(RepairAction {
            kind: ActionKind::RestorePadding,
            file: self.snapshot.dir.join(&scan.name),
            offset: scan.valid_end,
            bytes: 0,
            saved_as: None,
            seqs: None,
            records: 0,
            reason: String::from("the file ends inside its last record's padding"),
        });
    }

    /// When the damage in `scan` lies before the head and the head index's hint points at the
    /// head's frame in it, plans a new segment starting at the head with every byte from there
    /// on, and moves the old segment into quarantine: the damaged records were consumed, and
    /// cutting at the damage would cut live records. Returns the new segment's scan and bytes.
    fn plan_rebase(
        &mut self,
        scan: &SegmentScan,
        bytes: &[u8],
        head_seq: Option<u64>,
    ) -> Option<(SegmentScan, Vec<u8>)> {
        let state = self.snapshot.head.state()?;
        let head = head_seq?;
        let damaged_seq = scan.next_seq();
        if head <= damaged_seq || state.hint_base != scan.base_seq {
            return None;
        }
        // The hint alone: a walk from the segment's start stops at the damage.
        let hint = Some(state.hint_offset);
        let found = locate_seq(bytes, scan.base_seq, hint, head, scan.rules).ok()?;
        if !found.by_hint {
            return None;
        }
        let from_head = bytes.get(usize::try_from(found.offset).ok()?..)?;
        // The copied frames keep the format version they were written by.
        let mut rebased = encode_header_for(head, scan.rules).to_vec();
        rebased.extend_from_slice(from_head);
        let name = segment_file_name(head);
        let new_scan = scan_segment(&name, head, &rebased);
        self.actions.push(RepairAction {
            kind: ActionKind::RebaseSegment,
            file: self.snapshot.dir.join(&scan.name),
            offset: state.hint_offset,
            bytes: from_head.len() as u64,
            saved_as: Some(self.snapshot.dir.join(&name)),
            seqs: new_scan.last_seq.map(|last| head..last + 1),
            records: 0,
            reason: format!(
                "the damage (record {damaged_seq}) lies before the head ({head}): the records \
                 from the head on are copied into a new segment"
            ),
        });
        let reason = String::from("damaged before the head; its live records were copied");
        self.quarantine_segment(scan, reason, false);
        Some((new_scan, rebased))
    }

    fn truncate_tail(&mut self, scan: &SegmentScan, bytes: &[u8]) {
        let path = self.snapshot.dir.join(&scan.name);
        // The valid frames past the damage: readable copies in quarantine.
        let readable: Vec<u64> = segment_frames(scan.base_seq, bytes)
            .into_iter()
            .filter(|frame| frame.crc_ok && frame.offset >= scan.valid_end)
            .map(|frame| frame.seq)
            .collect();
        let first_cut = scan.next_seq();
        let known = readable.iter().max().map(|last| first_cut..last + 1);
        self.quarantined_records += readable.len() as u64;
        self.note_cut(first_cut, known.as_ref());
        let saved_as = self.quarantine_path(&format!("{}.cut-at-{}", scan.name, scan.valid_end));
        let reason = match &scan.end {
            SegmentEnd::BadFrame {
                expected_seq,
                error,
                ..
            } if *expected_seq != first_cut => {
                format!("record {expected_seq}: {error} (its batch starts at record {first_cut})")
            }
            SegmentEnd::BadFrame { error, .. } => format!("record {first_cut}: {error}"),
            _ => format!("batch starting at record {first_cut} has no final record"),
        };
        if scan.valid_end <= SEGMENT_HEADER_LEN as u64 {
            self.emptied = Some((self.actions.len(), scan.name.clone()));
        }
        self.actions.push(RepairAction {
            kind: ActionKind::TruncateTail,
            file: path,
            offset: scan.valid_end,
            bytes: scan.file_len.saturating_sub(scan.valid_end),
            saved_as: Some(saved_as),
            seqs: known,
            records: readable.len() as u64,
            reason,
        });
    }

    fn plan_head(&mut self) {
        let head = &self.snapshot.head;
        let state = head.state();
        let oldest_kept = self.kept.as_ref().map(|kept| kept.start);
        let target = match (state, oldest_kept) {
            (None, _) if head.file_len.is_none() && self.snapshot.segments.is_empty() => return,
            (None, oldest) => {
                self.head_moved = true;
                oldest.or(self.first_cut_seq).unwrap_or(0)
            }
            (Some(state), Some(oldest)) if state.head_seq < oldest => {
                self.head_moved = true;
                self.gone_seqs = Some(state.head_seq..oldest);
                oldest
            }
            (Some(state), _) => {
                if head.read.damaged_slots().is_empty() {
                    return;
                }
                state.head_seq
            }
        };
        self.new_head = Some(target);
        let saved_as = head.file_len.map(|_| self.quarantine_path(HEAD_FILE_NAME));
        let reason = if self.head_moved {
            format!(
                "head index unreadable or behind the oldest record; set to {target} (records \
                 consumed but not compacted may be delivered again)"
            )
        } else {
            String::from("a damaged slot is rewritten from the valid one")
        };
        self.actions.push(RepairAction {
            kind: ActionKind::RewriteHead,
            file: self.snapshot.dir.join(HEAD_FILE_NAME),
            offset: 0,
            bytes: head.file_len.unwrap_or(0),
            saved_as,
            seqs: None,
            records: 0,
            reason,
        });
    }

    /// Plans dropping what the ack log says about sequence numbers at or beyond the first cut,
    /// and a damaged entry (the rewrite keeps every valid entry and drops the damaged one).
    fn plan_ack_log(&mut self) {
        let Some(len) = self.snapshot.acks.file_len else {
            return;
        };
        let history = &self.acks;
        let mentions_cut = self.first_cut_seq.is_some_and(|first_cut| {
            history.acked.values().any(|&end| end > first_cut)
                || history.deliveries.range(first_cut..).next().is_some()
                || history.not_before.range(first_cut..).next().is_some()
        });
        let damage = self
            .snapshot
            .acks
            .damage
            .as_ref()
            .map(|damage| damage.offset);
        // A damaged header (another version is not damage: left for open to refuse).
        let header = match &self.snapshot.acks.header_error {
            Some(AckHeaderError::UnsupportedVersion(_)) | None => None,
            Some(error) => Some(error.to_string()),
        };
        if !mentions_cut && damage.is_none() && header.is_none() {
            return;
        }
        let first_cut = self.first_cut_seq.filter(|_| mentions_cut);
        let mut reasons = Vec::new();
        if let Some(error) = header {
            reasons.push(format!(
                "{error}: start it again with the {} entries that still validate (what the \
                 others said is lost: acknowledged records may be delivered again)",
                self.acks.entries().len()
            ));
        }
        if let Some(offset) = damage {
            reasons.push(format!(
                "drop the damaged entry at byte {offset} and keep every valid one (what the \
                 damaged entry said is lost: an acknowledged record may be delivered again)"
            ));
        }
        if let Some(first_cut) = first_cut {
            reasons.push(format!(
                "forget acknowledgements and delivery counts of records from {first_cut} on, \
                 whose sequence numbers new records will carry"
            ));
        }
        let saved_as = self.quarantine_path(crate::format::layout::ACK_LOG_FILE_NAME);
        self.actions.push(RepairAction {
            kind: ActionKind::RewriteAckLog,
            file: self
                .snapshot
                .dir
                .join(crate::format::layout::ACK_LOG_FILE_NAME),
            // The first sequence number to forget; the limit forgets nothing.
            offset: first_cut.unwrap_or(crate::format::frame::SEQ_LIMIT),
            bytes: len,
            saved_as: Some(saved_as),
            seqs: None,
            records: 0,
            reason: reasons.join("; "),
        });
    }

    /// Plans the log's continuation past every sequence number a file or the head index shows
    /// was used: the numbers of cut records, and of synced records a lost segment held.
    fn plan_continuation(&mut self) {
        let kept = match (self.kept.clone(), self.first_cut_seq) {
            (Some(kept), _) => kept,
            // Every segment was cut: the log continues past the numbers they used, as after
            // any cut (a head left at the first cut would point at no record, and the numbers
            // of the cut records, and of synced ones, would be used again).
            (None, Some(first_cut)) => first_cut..first_cut,
            // No segment at all while the head index says records up to its `synced_seq` were
            // synced (every segment deleted): the log continues after them.
            (None, None) if self.snapshot.segments.is_empty() => {
                let Some(state) = self.snapshot.head.state() else {
                    return;
                };
                state.head_seq..state.head_seq
            }
            // Nothing is kept and nothing cut: the head restarts the queue (see `plan_head`).
            (None, None) => return,
        };
        let state = self.snapshot.head.state();
        let synced_seq = state.map_or(0, |state| state.synced_seq);
        let seen_end = self
            .snapshot
            .segments
            .iter()
            .map(SegmentScan::next_seq)
            .max()
            .unwrap_or(0);
        let resume = self.cut_end_seq.max(synced_seq).max(seen_end);
        let log_end = kept.end;
        if resume <= log_end {
            return;
        }
        self.note_cut(log_end, Some(&(log_end..resume)));
        // A segment the cut left empty, where the log ends: it moves whole, for the log
        // continues in the new segment. Left there, it would stand between the numbers an
        // earlier repair retired up to it and those retired now (one acknowledged range across
        // it), and readers would take it for missing records.
        if let Some((index, name)) = self.emptied.take() {
            if parse_segment_file_name(&name) == Some(log_end) {
                let saved_as = self.quarantine_path(&name);
                if let Some(action) = self.actions.get_mut(index) {
                    action.kind = ActionKind::Quarantine;
                    action.bytes += action.offset;
                    action.offset = 0;
                    action.saved_as = Some(saved_as);
                }
            }
        }
        let head = self.new_head.or(self.snapshot.head_seq()).unwrap_or(0);
        if head >= log_end {
            // No record before the gap is left to serve: the head moves to where the log
            // continues (a head inside the gap would point at no record).
            if self.new_head.is_none() {
                let head_file = self.snapshot.dir.join(HEAD_FILE_NAME);
                let saved_as = self
                    .snapshot
                    .head
                    .file_len
                    .map(|_| self.quarantine_path(HEAD_FILE_NAME));
                self.actions.push(RepairAction {
                    kind: ActionKind::RewriteHead,
                    file: head_file,
                    offset: 0,
                    bytes: self.snapshot.head.file_len.unwrap_or(0),
                    saved_as,
                    seqs: None,
                    records: 0,
                    reason: format!(
                        "every record kept is consumed: the head moves to {resume}, where the \
                         log continues"
                    ),
                });
            }
            self.new_head = Some(resume);
        }
        self.actions.push(RepairAction {
            kind: ActionKind::ContinueAfter,
            file: self.snapshot.dir.join(segment_file_name(resume)),
            offset: 0,
            bytes: SEGMENT_HEADER_LEN as u64,
            saved_as: None,
            seqs: Some(log_end..resume),
            records: 0,
            reason: format!(
                "new records start at {resume}: sequence numbers {log_end}..{resume} were used \
                 by records cut or lost, and are never used again"
            ),
        });
    }

    /// Plans a new settings file when the old one does not decode. The segment size is the
    /// smallest power of two that holds the largest sealed segment (a segment is sealed before
    /// it would exceed it), or the default when no segment is sealed.
    fn plan_settings(&mut self) {
        let Some(Err(error)) = &self.snapshot.settings else {
            return;
        };
        let sealed = self.snapshot.segments.len().saturating_sub(1);
        let segment_size = self
            .snapshot
            .segments
            .iter()
            .take(sealed)
            .map(|scan| scan.file_len.next_power_of_two())
            .max()
            .map_or(SEGMENT_SIZE_DEFAULT, |size| {
                size.clamp(SEGMENT_SIZE_MIN, SEGMENT_SIZE_MAX)
            });
        let path = self.snapshot.dir.join(SETTINGS_FILE_NAME);
        let bytes = self
            .storage
            .open_read(&path)
            .and_then(|file| file.len())
            .unwrap_or(0);
        let saved_as = self.quarantine_path(SETTINGS_FILE_NAME);
        self.new_settings = Some(QueueSettings::new(segment_size));
        self.actions.push(RepairAction {
            kind: ActionKind::RewriteSettings,
            file: path,
            offset: 0,
            bytes,
            saved_as: Some(saved_as),
            seqs: None,
            records: 0,
            reason: format!(
                "{error}; rewritten with a segment size of {segment_size} bytes, taken from the \
                 segments on disk"
            ),
        });
    }

    fn plan_strays(&mut self) {
        // An unreadable segment cannot be served; the records it held were cut as missing.
        for (name, error) in &self.snapshot.unreadable {
            let base = crate::format::layout::parse_segment_file_name(name).unwrap_or(0);
            let kept_end = self.kept.as_ref().map_or(0, |kept| kept.end);
            if self.first_cut_seq.is_none() && base >= kept_end {
                // The last segment: what it held is cut, how many is unknown.
                self.note_cut(base, None);
            }
            let saved_as = self.quarantine_path(name);
            self.actions.push(RepairAction {
                kind: ActionKind::Quarantine,
                file: self.snapshot.dir.join(name),
                offset: 0,
                bytes: 0,
                saved_as: Some(saved_as),
                seqs: None,
                records: 0,
                reason: format!("could not be read: {error}"),
            });
        }
        for stray in &self.snapshot.strays {
            let saved_as = self.quarantine_path(stray);
            let file = self.snapshot.dir.join(stray);
            // The size the operator is told is moved; a folder or a file that vanished counts 0.
            let bytes = self
                .storage
                .open_read(&file)
                .and_then(|opened| opened.len())
                .unwrap_or(0);
            self.actions.push(RepairAction {
                kind: ActionKind::Quarantine,
                file,
                offset: 0,
                bytes,
                saved_as: Some(saved_as),
                seqs: None,
                records: 0,
                reason: String::from("not a file diskspool writes"),
            });
        }
    }
}

/// Carries out the actions in order. Every byte that leaves the queue is durable in quarantine
/// before the queue's copy is cut or its directory entry removed.
fn execute(
    storage: &dyn Storage,
    dir: &Path,
    actions: &[RepairAction],
    new_head: Option<u64>,
    new_settings: Option<QueueSettings>,
) -> Result<()> {
    let quarantine = dir.join(QUARANTINE_DIR_NAME);
    // Never through a symlink, nor into someone else's folder: what is cut goes there.
    storage
        .ensure_private_dir(&quarantine)
        .and_then(|()| storage.sync_dir(dir))
        .map_err(|error| Error::io("create quarantine", &quarantine, error))?;
    for action in actions {
        let saved_as = action.saved_as.as_deref();
        // Listed once the cut is done: a crash before leaves a copy `--restore` does not push
        // (the next repair cuts again and lists that copy), never one it pushes twice.
        let restorable = action.records > 0
            && matches!(
                action.kind,
                ActionKind::TruncateTail | ActionKind::Quarantine
            );
        match action.kind {
            ActionKind::TruncateTail => truncate_tail(storage, action, saved_as)?,
            ActionKind::Quarantine => {
                let to = saved_as.unwrap_or(&quarantine);
                storage
                    .rename(&action.file, to)
                    .map_err(|error| Error::io("move into quarantine", &action.file, error))?;
                storage
                    .sync_dir(&quarantine)
                    .and_then(|()| storage.sync_dir(dir))
                    .map_err(|error| Error::io("sync directory", dir, error))?;
            }
            ActionKind::RestorePadding => {
                let file = storage
                    .open(&action.file)
                    .map_err(|error| Error::io("open segment", &action.file, error))?;
                file.set_len(action.offset)
                    .and_then(|()| file.sync_data())
                    .map_err(|error| Error::io("restore padding", &action.file, error))?;
            }
            ActionKind::RewriteHead => {
                rewrite_head(storage, dir, action, saved_as, new_head)?;
            }
            ActionKind::RebaseSegment => rebase_segment(storage, dir, action, saved_as)?,
            ActionKind::RewriteAckLog => rewrite_ack_log(storage, dir, action, saved_as)?,
            ActionKind::ContinueAfter => continue_after(storage, dir, action)?,
            ActionKind::RewriteSettings => {
                if let Some(old) = read_file(storage, &action.file)? {
                    if let Some(saved_as) = saved_as {
                        save_copy(storage, saved_as, &old)?;
                    }
                }
                if let Some(settings) = &new_settings {
                    crate::storage::queue_dir::write_settings(storage, dir, settings)?;
                }
            }
        }
        if restorable {
            note_in_manifest(storage, &quarantine, action)?;
        }
    }
    Ok(())
}

/// Adds a line for `action`'s saved file to the quarantine manifest (see
/// [`format::quarantine`](crate::format::quarantine)).
fn note_in_manifest(storage: &dyn Storage, quarantine: &Path, action: &RepairAction) -> Result<()> {
    use crate::format::layout::QUARANTINE_MANIFEST_NAME;
    use crate::format::quarantine::{encode_line, CutFile};
    let name_of = |path: &Path| {
        path.file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (Some(saved_as), Some(seqs)) = (&action.saved_as, &action.seqs) else {
        return Ok(());
    };
    let path = quarantine.join(QUARANTINE_MANIFEST_NAME);
    let mut bytes = read_file(storage, &path)?.unwrap_or_default();
    let line = encode_line(&CutFile {
        saved_as: name_of(saved_as),
        action: action.kind.name().to_string(),
        source: name_of(&action.file),
        offset: action.offset,
        seqs: seqs.clone(),
        records: action.records,
    });
    bytes.extend_from_slice(line.as_bytes());
    storage::write_atomically(storage, quarantine, QUARANTINE_MANIFEST_NAME, &bytes)
        .map_err(|error| Error::io("write quarantine manifest", &path, error))
}

fn truncate_tail(
    storage: &dyn Storage,
    action: &RepairAction,
    saved_as: Option<&Path>,
) -> Result<()> {
    let path = &action.file;
    let file = storage
        .open(path)
        .map_err(|error| Error::io("open segment", path, error))?;
    let len = file
        .len()
        .map_err(|error| Error::io("stat segment", path, error))?;
    let cut_len = usize::try_from(len.saturating_sub(action.offset)).unwrap_or(0);
    let mut cut = vec![0; cut_len];
    file.read_exact_at(&mut cut, action.offset)
        .map_err(|error| Error::io("read segment tail", path, error))?;
    if let Some(saved_as) = saved_as {
        save_copy(storage, saved_as, &cut)?;
    }
    file.set_len(action.offset)
        .and_then(|()| file.sync_data())
        .map_err(|error| Error::io("truncate segment", path, error))
}

/// Writes a new segment holding the old one's bytes from `action.offset` on, behind a header
/// for the head's sequence number (taken from the new file's name).
fn rebase_segment(
    storage: &dyn Storage,
    dir: &Path,
    action: &RepairAction,
    new_path: Option<&Path>,
) -> Result<()> {
    let Some(new_path) = new_path else {
        return Ok(());
    };
    let name = new_path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(base) = parse_segment_file_name(&name) else {
        return Err(Error::corrupt(new_path, 0, "not a segment file name"));
    };
    let old = storage
        .open(&action.file)
        .map_err(|error| Error::io("open segment", &action.file, error))?;
    // The copied frames keep the format version they were written by (the old header's).
    let mut old_header = [0; SEGMENT_HEADER_LEN];
    old.read_exact_at(&mut old_header, 0)
        .map_err(|error| Error::io("read segment", &action.file, error))?;
    let rules = decode_header(&old_header).map_or(FrameRules::CURRENT, |header| header.rules);
    let mut bytes = encode_header_for(base, rules).to_vec();
    let header_len = bytes.len();
    bytes.resize(header_len + usize::try_from(action.bytes).unwrap_or(0), 0);
    old.read_exact_at(
        bytes.get_mut(header_len..).unwrap_or(&mut []),
        action.offset,
    )
    .map_err(|error| Error::io("read segment", &action.file, error))?;
    // Written under a temporary name and renamed, so that a crash never leaves a half-copied
    // segment under a segment's name (a leftover `.tmp` is a stray the next repair moves away).
    let tmp_path = dir.join(format!("{name}.tmp"));
    save_copy(storage, &tmp_path, &bytes)?;
    storage
        .rename(&tmp_path, new_path)
        .and_then(|()| storage.sync_dir(dir))
        .map_err(|error| Error::io("rename new segment", new_path, error))
}

/// Rewrites the ack log keeping only entries below `action.offset` (the first sequence number
/// cut), under the next log id so that no entry of the old file can validate in the new one.
fn rewrite_ack_log(
    storage: &dyn Storage,
    dir: &Path,
    action: &RepairAction,
    saved_as: Option<&Path>,
) -> Result<()> {
    use crate::format::acklog::{self, AckEntry};
    let Some(old) = read_file(storage, &action.file)? else {
        return Ok(());
    };
    if let Some(saved_as) = saved_as {
        save_copy(storage, saved_as, &old)?;
    }
    let first_cut = action.offset;
    let snapshot = crate::tools::inspect::read_ack_log(storage, dir)?;
    let (old_log_id, history) = match acklog::decode_header(&old) {
        Ok(log_id) => (log_id, snapshot.history),
        Err(_) => acklog::salvage(&old).unwrap_or_default(),
    };
    let log_id = old_log_id.wrapping_add(1);
    let mut bytes = acklog::encode_header(log_id).to_vec();
    for entry in history.entries() {
        let kept = match entry {
            AckEntry::Acked { start, end } if start < first_cut => Some(AckEntry::Acked {
                start,
                end: end.min(first_cut),
            }),
            AckEntry::Acked { .. } => None,
            AckEntry::Delivered { seq, .. } | AckEntry::NotBefore { seq, .. } => {
                (seq < first_cut).then_some(entry)
            }
        };
        if let Some(entry) = kept {
            acklog::encode_entry(&mut bytes, log_id, &entry);
        }
    }
    storage::write_atomically(
        storage,
        dir,
        crate::format::layout::ACK_LOG_FILE_NAME,
        &bytes,
    )
    .map_err(|error| Error::io("rewrite ack log", &action.file, error))
}

/// Acknowledges the retired numbers, then creates the segment the log continues in. In this
/// order a crash between the two leaves acknowledgements past the log's end, which open drops
/// (and then refuses the queue until repair runs again), never a gap nobody explained.
fn continue_after(storage: &dyn Storage, dir: &Path, action: &RepairAction) -> Result<()> {
    use crate::format::acklog::{self, AckEntry};
    let Some(seqs) = action.seqs.clone() else {
        return Ok(());
    };
    let ack_path = dir.join(crate::format::layout::ACK_LOG_FILE_NAME);
    let snapshot = crate::tools::inspect::read_ack_log(storage, dir)?;
    let old_log_id = read_file(storage, &ack_path)?
        .and_then(|old| acklog::decode_header(&old).ok())
        .unwrap_or(0);
    let log_id = old_log_id + 1;
    let mut bytes = acklog::encode_header(log_id).to_vec();
    for entry in snapshot.history.entries() {
        acklog::encode_entry(&mut bytes, log_id, &entry);
    }
    acklog::encode_entry(
        &mut bytes,
        log_id,
        &AckEntry::Acked {
            start: seqs.start,
            end: seqs.end,
        },
    );
    storage::write_atomically(
        storage,
        dir,
        crate::format::layout::ACK_LOG_FILE_NAME,
        &bytes,
    )
    .map_err(|error| Error::io("rewrite ack log", &ack_path, error))?;
    let name = segment_file_name(seqs.end);
    storage::write_atomically(storage, dir, &name, &encode_header(seqs.end))
        .map_err(|error| Error::io("create segment", &action.file, error))
}

/// What the ack log says: read normally, or salvaged from behind a damaged header.
fn ack_history(
    storage: &dyn Storage,
    dir: &Path,
    acks: &crate::tools::inspect::AckLogSnapshot,
) -> Result<JobHistory> {
    if acks.header_error.is_none() {
        return Ok(acks.history.clone());
    }
    let path = dir.join(crate::format::layout::ACK_LOG_FILE_NAME);
    Ok(read_file(storage, &path)?
        .and_then(|bytes| crate::format::acklog::salvage(&bytes))
        .map(|(_, history)| history)
        .unwrap_or_default())
}

/// Writes `bytes` into a new file and makes it durable, directory entry included.
fn save_copy(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> Result<()> {
    let copy = storage
        .create_new(path)
        .map_err(|error| Error::io("create quarantine file", path, error))?;
    copy.write_all_at(bytes, 0)
        .and_then(|()| copy.sync_data())
        .map_err(|error| Error::io("write quarantine file", path, error))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    storage
        .sync_dir(parent)
        .map_err(|error| Error::io("sync directory", parent, error))
}

fn rewrite_head(
    storage: &dyn Storage,
    dir: &Path,
    action: &RepairAction,
    saved_as: Option<&Path>,
    new_head: Option<u64>,
) -> Result<()> {
    let old = read_file(storage, &action.file)?;
    if let (Some(old), Some(saved_as)) = (&old, saved_as) {
        save_copy(storage, saved_as, old)?;
    }
    let generation = old
        .as_deref()
        .map(crate::format::head::decode_head_file)
        .and_then(|read| {
            read.slots
                .iter()
                .filter_map(|slot| slot.as_ref().ok().map(|slot| slot.generation))
                .max()
        })
        // A generation out of range (forged) is not continued: the new file is whole anyway.
        .filter(|&generation| generation < crate::format::head::GENERATION_LIMIT - 2)
        .unwrap_or(0);
    let head_seq = new_head.unwrap_or(0);
    // Keep how far the records were known to be synced (0, unknown, if no slot is readable).
    let synced_seq = old
        .as_deref()
        .map(crate::format::head::decode_head_file)
        .and_then(|read| {
            read.slots
                .iter()
                .filter_map(|slot| slot.as_ref().ok().map(|slot| slot.state.synced_seq))
                .filter(|&synced_seq| synced_seq <= crate::format::frame::SEQ_LIMIT)
                .max()
        })
        .unwrap_or(0);
    let state = HeadState {
        head_seq,
        // Hints are checked before use; a segment start is always a valid frame offset.
        hint_base: head_seq,
        hint_offset: SEGMENT_HEADER_LEN as u64,
        synced_seq,
    };
    // Both slots hold the new head, so neither reads as a lost (zeroed) slot.
    let mut bytes = vec![0; HEAD_FILE_LEN as usize];
    for (index, offset) in crate::format::head::HEAD_SLOT_OFFSETS.iter().enumerate() {
        let slot = encode_slot(&HeadSlot {
            generation: generation + 1 + index as u64,
            state,
        });
        let start = *offset as usize;
        if let Some(target) = bytes.get_mut(start..start + HEAD_SLOT_LEN) {
            target.copy_from_slice(&slot);
        }
    }
    storage::write_atomically(storage, dir, HEAD_FILE_NAME, &bytes)
        .map_err(|error| Error::io("rewrite head index", &action.file, error))
}
