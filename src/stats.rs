//! One description of a queue's size and position, for the live queue and the tools alike, and
//! the counters of what happened since the queue was opened.
//!
//! The names follow what operators already graph (SQS, RabbitMQ): `ready` records can be
//! delivered now, `in_flight` ones are leased and not acknowledged, `delayed` ones wait for their
//! time; `docs/METRICS.md` maps each figure to its RabbitMQ and SQS CloudWatch equivalent.

use std::time::{Duration, SystemTime};

/// A snapshot of a queue's size and position: what [`Queue::stats`](crate::Queue::stats)
/// reports from the open queue, and what [`tools::inspect::stat`](crate::tools::inspect::stat)
/// reads from the directory without locking it (`spool stat`). Both count the same way; a
/// lock-free reader cannot know what only lives in the memory of the process that holds the
/// queue open, and says so with `None` (see [`leased`](Stats::leased) and
/// [`totals`](Stats::totals)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records in the queue: from the head to the end of the log, less those acknowledged out
    /// of order (jobs API). Leased records are still in the queue.
    pub len: u64,
    /// Sequence number of the oldest record (the next `pop`), or `next_seq` when empty.
    pub head_seq: u64,
    /// Sequence number the next `push` will get.
    pub next_seq: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Bytes of frames not yet consumed.
    pub live_bytes: u64,
    /// Bytes of all segment files, the head index, the settings file and the ack log.
    pub disk_bytes: u64,
    /// When the oldest ready record was pushed; `None` when there is none. Delayed records
    /// (pushed with a delay, or held back by a `retry_after`) are left out by both sources; the
    /// open queue also leaves out leased records (it reports the record the next `pop` or
    /// `recv` would take), which a lock-free reader cannot see.
    pub oldest_enqueued_at: Option<SystemTime>,
    /// Records handed out by `recv` and not yet acknowledged or released. `Some` from the open
    /// queue; `None` from a lock-free reader: leases live in the memory of the process that
    /// holds the queue open and are never written to disk (a lease that process's crash ends
    /// was never recorded), so no reader of the directory can count them. `None` rather than
    /// `Some(0)`, which would claim that nothing is leased.
    pub leased: Option<u64>,
    /// Records that a `pop` or `recv` could take now: [`len`](Stats::len) less the leased and
    /// the delayed ones (SQS `ApproximateNumberOfMessagesVisible`, RabbitMQ `messages_ready`).
    /// A lock-free reader cannot see leases and counts leased records as ready.
    pub ready: u64,
    /// Records not to be handed out before a time still ahead: pushed with a delay, or retried
    /// with `retry_after` (SQS `ApproximateNumberOfMessagesDelayed`).
    pub delayed: u64,
    /// What happened since the queue was opened. `Some` from the open queue; `None` from a
    /// lock-free reader: the counters live in the memory of the process that holds the queue
    /// open and are not written to disk.
    pub totals: Option<Totals>,
}

/// What a handle of a queue shared by several processes took over from a handle that died or
/// failed (`takeovers_total{kind}`; each is also a `tracing` event, docs/METRICS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TakeoverKind {
    /// The tail a producer left when it died or failed in a push: cut past the committed tail.
    Tail,
    /// The consumer turn of a handle that died in it: the head index and the ack log read in
    /// full.
    ConsumerTurn,
    /// A lease of a handle that is gone, ended: its record is delivered again.
    Lease,
}

impl TakeoverKind {
    /// Every kind, in the order of [`Totals::takeovers`].
    pub const ALL: [TakeoverKind; 3] = [
        TakeoverKind::Tail,
        TakeoverKind::ConsumerTurn,
        TakeoverKind::Lease,
    ];

    /// The kind as a metric label value: `tail`, `consumer_turn`, `lease`.
    pub fn as_str(self) -> &'static str {
        match self {
            TakeoverKind::Tail => "tail",
            TakeoverKind::ConsumerTurn => "consumer_turn",
            TakeoverKind::Lease => "lease",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            TakeoverKind::Tail => 0,
            TakeoverKind::ConsumerTurn => 1,
            TakeoverKind::Lease => 2,
        }
    }
}

/// Why records were discarded without being delivered (`discarded_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscardReason {
    /// Dropped to make room in a bounded queue (`Overflow::DropOldest`).
    Overflow,
    /// Removed by a purge.
    Purge,
}

impl DiscardReason {
    /// Every reason, in the order of [`Totals::discarded`].
    pub const ALL: [DiscardReason; 2] = [DiscardReason::Overflow, DiscardReason::Purge];

    /// The reason as a metric label value: `overflow`, `purge`.
    pub fn as_str(self) -> &'static str {
        match self {
            DiscardReason::Overflow => "overflow",
            DiscardReason::Purge => "purge",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            DiscardReason::Overflow => 0,
            DiscardReason::Purge => 1,
        }
    }
}

/// The counters of an open queue since it was opened (each `_total` in `docs/METRICS.md`).
/// They start at zero at every open: they count what this process saw, not what the queue
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Totals {
    /// Records appended (`push`, `push_batch`, `push_delayed`, fanout copies).
    pub pushed: u64,
    /// Records handed out, by `pop` (and its batch and typed forms) or `recv` (each delivery).
    pub delivered: u64,
    /// Deliveries acknowledged ([`Delivery::ack`](crate::Delivery::ack)).
    pub acked: u64,
    /// Deliveries released by their holder: `nack`, `retry_after`, or dropped undecided.
    pub nacked: u64,
    /// Deliveries of a record that had been delivered before (after a nack, a lease that ran
    /// out, or a restart).
    pub redelivered: u64,
    /// Records moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Records discarded without delivery, by [`DiscardReason`] (see [`Totals::discarded`]).
    pub(crate) discarded: [u64; DiscardReason::ALL.len()],
    /// Records that expired before they were delivered.
    pub expired: u64,
    /// Pushes recognised as duplicates, which wrote nothing.
    pub deduplicated: u64,
    /// Syncs of the push group commit (under [`SyncPolicy::Always`](crate::SyncPolicy::Always);
    /// zero under the other policies, whose pushes never wait for a sync). In a queue shared by
    /// several processes: the syncs this handle led, each for the producers of every process.
    pub commit_syncs: u64,
    /// Records those syncs made durable: divided by `commit_syncs`, the records per sync.
    pub commit_records: u64,
    /// What this handle took over from handles of a shared queue that died or failed, by
    /// [`TakeoverKind`] (see [`Totals::takeovers`]); zero for an exclusive queue.
    pub(crate) takeovers: [u64; TakeoverKind::ALL.len()],
}

impl Totals {
    /// Records discarded for `reason`.
    pub fn discarded(&self, reason: DiscardReason) -> u64 {
        self.discarded[reason.index()]
    }

    /// Records discarded for any reason.
    pub fn discarded_total(&self) -> u64 {
        self.discarded.iter().sum()
    }

    /// What this handle took over of `kind` from handles that died or failed (a queue shared
    /// by several processes).
    pub fn takeovers(&self, kind: TakeoverKind) -> u64 {
        self.takeovers[kind.index()]
    }

    /// Records per group-commit sync; `None` before the first.
    pub fn records_per_sync(&self) -> Option<f64> {
        (self.commit_syncs > 0).then(|| self.commit_records as f64 / self.commit_syncs as f64)
    }
}

impl Stats {
    /// How long ago the oldest record was pushed, by `now`; zero when the clock stands before
    /// it (clocks of several machines, or a clock set back).
    pub fn oldest_age(&self, now: SystemTime) -> Option<Duration> {
        let enqueued = self.oldest_enqueued_at?;
        Some(now.duration_since(enqueued).unwrap_or(Duration::ZERO))
    }

    /// How long the oldest ready record has waited, by `now`: the same as
    /// [`oldest_age`](Stats::oldest_age), under the name operators graph (SQS
    /// `ApproximateAgeOfOldestMessage`). Delayed records and, from the open queue, leased ones
    /// are left out: a queue whose only records wait for their time is not backing up.
    pub fn oldest_ready_age(&self, now: SystemTime) -> Option<Duration> {
        self.oldest_age(now)
    }

    /// Records handed out by `recv` and not yet acknowledged: [`leased`](Stats::leased), under
    /// the name operators graph (SQS `ApproximateNumberOfMessagesNotVisible`, RabbitMQ
    /// `messages_unacknowledged`).
    pub fn in_flight(&self) -> Option<u64> {
        self.leased
    }

    /// Bytes of records not yet consumed, frames included: [`live_bytes`](Stats::live_bytes).
    pub fn bytes(&self) -> u64 {
        self.live_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_age_is_measured_from_the_oldest_record_and_never_negative() {
        let pushed = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let stats = Stats {
            len: 1,
            head_seq: 0,
            next_seq: 1,
            segments: 1,
            live_bytes: 64,
            disk_bytes: 4096,
            oldest_enqueued_at: Some(pushed),
            leased: None,
            ready: 1,
            delayed: 0,
            totals: None,
        };
        let later = pushed + Duration::from_millis(1_500);
        assert_eq!(stats.oldest_age(later), Some(Duration::from_millis(1_500)));
        assert_eq!(
            stats.oldest_age(pushed - Duration::from_secs(1)),
            Some(Duration::ZERO)
        );
        let empty = Stats {
            oldest_enqueued_at: None,
            ..stats
        };
        assert_eq!(empty.oldest_age(later), None);
        assert_eq!(empty.oldest_ready_age(later), None);
    }
}
