//! What recovery did at open, as the queue reports it ([`Queue::recovery_report`](crate::Queue::recovery_report)).

use std::ops::Range;
use std::path::PathBuf;

/// What recovery did while opening a queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Torn tails cut from the active segment: records whose write was interrupted by a crash
    /// (never acknowledged under [`SyncPolicy::Always`](crate::SyncPolicy::Always)).
    ///
    /// Free space after the last record is cut but not reported: zeros the writer prepares
    /// ahead of its tail (they end on a 4 KiB boundary), or the stale frames of a recycled
    /// segment file; see `segment::is_free_space`. Records that a power loss left as zeros up
    /// to such a boundary look the same and are not reported either (under `Always` none of
    /// them was acknowledged).
    pub truncated: Vec<Truncation>,
    /// Files removed because they never held a record: a segment whose creation was cut short,
    /// a temporary file of an interrupted head index creation.
    pub removed_files: Vec<PathBuf>,
    /// Set when the head had moved past the records found on disk (consumed records whose
    /// bytes a power loss took, possible under the weaker sync policies): the sequence number at
    /// which a fresh segment was started so that no sequence number is ever reused.
    pub restarted_at_seq: Option<u64>,
    /// Byte offsets in the ack log (`acks`) of torn entries skipped while valid ones follow:
    /// appends a power loss tore while it kept later ones that no sync separated from them
    /// (the log's SYNCED_BEFORE marks say which; in a log of version 2 or 3, under
    /// `SyncPolicy::Never` or `Interval` only). Each lost one fact (an acknowledgement, a
    /// delivery count or a retry time) that had not been made durable; the log was rewritten
    /// without them.
    pub skipped_ack_entries: Vec<u64>,
    /// What an open with [`OnDamage::Quarantine`](crate::OnDamage::Quarantine) did to damage it
    /// found, in the order it was done: the steps of
    /// [`tools::repair`](crate::tools::repair). Empty when nothing was damaged (and always under
    /// [`OnDamage::Refuse`](crate::OnDamage::Refuse), which refuses a damaged queue instead).
    pub repairs: Vec<RepairStep>,
    /// Sequence numbers the queue no longer serves because of those steps, from the first one
    /// cut to just past the last one ever used (none of them is used again): the records are in
    /// `quarantine/`, readable or not. `None` when no record was cut.
    pub cut_seqs: Option<Range<u64>>,
    /// How many of the cut records are readable in `quarantine/` (`spool quarantine DIR
    /// --restore` pushes them back).
    pub quarantined_records: u64,
}

impl RecoveryReport {
    /// True when the open found damage and set part of the queue aside (see
    /// [`repairs`](RecoveryReport::repairs)).
    pub fn repaired(&self) -> bool {
        !self.repairs.is_empty()
    }
}

/// One step an open with [`OnDamage::Quarantine`](crate::OnDamage::Quarantine) took, as
/// [`tools::repair::RepairAction`](crate::tools::repair::RepairAction) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairStep {
    /// What was done: the stable name of the repair action (`truncate_tail`, `quarantine`,
    /// `rewrite_head`, `rewrite_ack_log`, `continue_after`, ...; see `docs/CLI.md`).
    pub action: &'static str,
    /// The file changed or moved.
    pub file: PathBuf,
    /// For a truncation, the byte offset where the cut starts (the damage, or the start of
    /// the damaged batch); otherwise 0 or the position the action names.
    pub offset: u64,
    /// Sequence numbers of the records the step cut or moved; for `continue_after`, the numbers
    /// retired so that they are never used again.
    pub seqs: Option<Range<u64>>,
    /// Readable records this step saved into `quarantine/` (taken from the queue).
    pub records_saved: u64,
    /// Where the cut bytes or the moved file went, in `quarantine/`.
    pub saved_as: Option<PathBuf>,
    /// Why, in one sentence (what the damage was).
    pub reason: String,
}

impl std::fmt::Display for RepairStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} at byte {}",
            self.action,
            self.file.display(),
            self.offset
        )?;
        if let Some(seqs) = &self.seqs {
            write!(f, " [records {}..{}]", seqs.start, seqs.end)?;
        }
        if let Some(saved_as) = &self.saved_as {
            write!(
                f,
                " -> {} ({} records saved)",
                saved_as.display(),
                self.records_saved
            )?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// One torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub file: PathBuf,
    /// The new length of the file: where the cut bytes started.
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes_cut: u64,
    /// The first sequence number that was not recovered.
    pub first_lost_seq: u64,
    /// The highest sequence number recovery saw in the cut bytes (the last frame of an
    /// incomplete batch, or the first valid frame after a torn one): with `first_lost_seq`, the
    /// range of numbers that were cut, as far as the cut bytes tell. `first_lost_seq` when no
    /// frame in them decoded.
    pub last_lost_seq: u64,
    /// Why the bytes at `offset` did not decode.
    pub reason: String,
}
