//! What recovery did at open, as the queue reports it ([`Queue::recovery_report`](crate::Queue::recovery_report)).

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
    /// appends a power loss tore under `SyncPolicy::Never` or `Interval` (whose appends are
    /// not synced one by one). Each lost one fact (an acknowledgement, a delivery count or a
    /// retry time) that had not been made durable; the log was rewritten without them.
    pub skipped_ack_entries: Vec<u64>,
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
