//! `tracing` events (feature `tracing`): what recovery did at open, damage an open refused,
//! dead-lettering, the I/O errors that poison a queue, and what a handle of a shared queue
//! takes over from handles that died or failed. Cold paths only; the library never prints
//! otherwise. `docs/METRICS.md` lists the events and their fields.

use std::path::Path;

use crate::engine::report::RecoveryReport;
use crate::error::Error;
use crate::stats::DiscardReason;

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
    // `OnDamage::Quarantine`: each step the repair took, at error level (data left the queue).
    for step in &report.repairs {
        tracing::error!(
            target: "diskspool",
            queue,
            action = step.action,
            file = %step.file.display(),
            offset = step.offset,
            first_seq = step.seqs.as_ref().map(|seqs| seqs.start),
            end_seq = step.seqs.as_ref().map(|seqs| seqs.end),
            records_saved = step.records_saved,
            saved_as = step.saved_as.as_ref().map(|path| path.display().to_string()),
            reason = %step.reason,
            "open set damaged data aside"
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

/// `count` records were discarded undelivered for `reason`: an overflow drop is a warning (the
/// queue is full and loses records by its policy), a purge is information (asked for).
pub(crate) fn discarded(queue: &str, reason: DiscardReason, count: u64) {
    let reason_label = reason.as_str();
    match reason {
        DiscardReason::Overflow => tracing::warn!(
            target: "diskspool",
            queue,
            reason = reason_label,
            count,
            "records discarded: the queue is full"
        ),
        DiscardReason::Purge => tracing::info!(
            target: "diskspool",
            queue,
            reason = reason_label,
            count,
            "records discarded by a purge"
        ),
    }
}

/// `count` records reached their maximum age undelivered.
pub(crate) fn expired(queue: &str, count: u64) {
    tracing::info!(
        target: "diskspool",
        queue,
        count,
        "records expired undelivered"
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

/// A producer of a shared queue died (its process `dead_pid`, when this handle took the tail
/// lock over from it) or failed in a push, after it marked the log dirty: this
/// handle cut what it left past the committed tail: `segments_removed` segment files it had
/// started, and `bytes_past_tail` bytes of the committed segment (its frames, and the zeros
/// prepared ahead of the tail). No push that wrote them returned.
pub(crate) fn tail_repaired(
    queue: &str,
    dead_pid: Option<u32>,
    next_seq: u64,
    segments_removed: usize,
    bytes_past_tail: u64,
) {
    tracing::warn!(
        target: "diskspool",
        queue,
        dead_pid,
        next_seq,
        segments_removed,
        bytes_past_tail,
        "repaired the tail a producer left when it died or failed in a push"
    );
}

/// The handle of process `pid` died in a consumer turn of a shared queue, and this handle took
/// the turn over: it reads the head index and the ack log in full.
pub(crate) fn consumer_turn_taken_over(queue: &str, pid: u32) {
    tracing::warn!(
        target: "diskspool",
        queue,
        pid,
        "took over the consumer turn of a process that died in it"
    );
}

/// `count` leases of shared handles that are gone ended: their records are delivered again.
pub(crate) fn leases_of_gone_ended(queue: &str, count: usize) {
    tracing::info!(
        target: "diskspool",
        queue,
        count,
        "ended the leases of handles that are gone: their records are delivered again"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    use crate::engine::env::Env;
    use crate::options::Options;
    use crate::stats::DiscardReason;
    use crate::storage::OsStorage;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(Level, String)>>>);

    struct Line(String);

    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push_str(&format!("{}={value:?} ", field.name()));
        }
    }

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut line = Line(String::new());
            event.record(&mut line);
            let level = *event.metadata().level();
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((level, line.0));
        }
    }

    /// The hooks the queue policies call count and tell: an overflow drop warns, a purge and
    /// an expiry inform.
    #[test]
    fn discards_and_expiries_are_counted_and_told() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        let env = Env::new(
            "/var/spool/orders".into(),
            Options::default(),
            Arc::new(OsStorage),
            None,
        );
        tracing::subscriber::with_default(subscriber, || {
            env.discarded(DiscardReason::Overflow, 3);
            env.discarded(DiscardReason::Purge, 5);
            env.expired(2);
        });
        let totals = env.counters.totals(0, Default::default(), 0, 0);
        assert_eq!(totals.discarded(DiscardReason::Overflow), 3);
        assert_eq!(totals.discarded(DiscardReason::Purge), 5);
        assert_eq!(totals.expired, 2);
        let events = capture.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let levels: Vec<Level> = events.iter().map(|(level, _)| *level).collect();
        assert_eq!(levels, [Level::WARN, Level::INFO, Level::INFO]);
        assert!(events[0].1.contains("queue=\"orders\""), "{events:?}");
        assert!(
            events[0].1.contains("reason=\"overflow\" count=3"),
            "{events:?}"
        );
        assert!(events[2].1.contains("count=2"), "{events:?}");
    }
}
