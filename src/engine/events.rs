//! `tracing` events (feature `tracing`): what recovery did at open, damage an open refused,
//! dead-lettering, and the I/O errors that poison a queue. Cold paths only; the library never
//! prints otherwise. `docs/METRICS.md` lists the events and their fields.

use std::path::Path;

use crate::engine::report::RecoveryReport;
use crate::error::Error;

/// What recovery cut, skipped or removed at the open of queue `queue`.
pub(crate) fn recovered(queue: &str, report: &RecoveryReport) {
    for cut in &report.truncated {
        tracing::warn!(
            target: "diskspool",
            queue,
            file = %cut.file.display(),
            offset = cut.offset,
            bytes_cut = cut.bytes_cut,
            first_lost_seq = cut.first_lost_seq,
            last_lost_seq = cut.last_lost_seq,
            reason = %cut.reason,
            "recovery cut a torn tail"
        );
    }
    if !report.skipped_ack_entries.is_empty() {
        tracing::warn!(
            target: "diskspool",
            queue,
            offsets = ?report.skipped_ack_entries,
            "recovery skipped torn ack log entries"
        );
    }
    if let Some(seq) = report.restarted_at_seq {
        tracing::warn!(
            target: "diskspool",
            queue,
            seq,
            "recovery restarted the numbering: the head was past the records on disk"
        );
    }
    if !report.removed_files.is_empty() {
        tracing::info!(
            target: "diskspool",
            queue,
            files = ?report.removed_files,
            "recovery removed files that never held a record"
        );
    }
}

/// An open of `dir` failed with `error`: damage it refused is an error event (other failures,
/// such as a locked directory, are the caller's to report).
pub(crate) fn open_failed(dir: &Path, error: &Error) {
    if matches!(
        error,
        Error::Corrupt { .. } | Error::UnsupportedVersion { .. }
    ) {
        tracing::error!(
            target: "diskspool",
            dir = %dir.display(),
            error = %error,
            "open refused a damaged queue"
        );
    }
}

/// Record `seq` was moved to the dead-letter queue after `deliveries` deliveries.
pub(crate) fn dead_lettered(queue: &str, seq: u64, deliveries: u32) {
    tracing::warn!(
        target: "diskspool",
        queue,
        seq,
        deliveries,
        "record moved to the dead-letter queue"
    );
}

/// `error` poisoned the queue: every later change is refused.
pub(crate) fn poisoned(queue: &str, error: &Error) {
    tracing::error!(
        target: "diskspool",
        queue,
        error = %error,
        "I/O error poisoned the queue; later changes are refused until it is reopened"
    );
}
