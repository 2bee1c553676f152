//! One description of a queue's size and position, for the live queue and the tools alike.

use std::time::{Duration, SystemTime};

/// A snapshot of a queue's size and position: what [`Queue::stats`](crate::Queue::stats)
/// reports from the open queue, and what [`tools::inspect::stat`](crate::tools::inspect::stat)
/// reads from the directory without locking it (`spool stat`). Both count the same way; a
/// lock-free reader cannot know what only lives in the memory of the process that holds the
/// queue open, and says so with `None` (see [`leased`](Stats::leased)).
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
    /// When the oldest record was pushed; `None` when there is none. The two sources differ
    /// here while records are leased or delayed: the open queue reports the record the next
    /// `pop` or `recv` would take (leased records and those a `retry_after` delays left out;
    /// `None` when every record is leased or delayed), a lock-free reader the oldest record not
    /// acknowledged, as it cannot see leases.
    pub oldest_enqueued_at: Option<SystemTime>,
    /// Records handed out by `recv` and not yet acknowledged or released. `Some` from the open
    /// queue; `None` from a lock-free reader: leases live in the memory of the process that
    /// holds the queue open and are never written to disk (a lease that process's crash ends
    /// was never recorded), so no reader of the directory can count them. `None` rather than
    /// `Some(0)`, which would claim that nothing is leased.
    pub leased: Option<u64>,
}

impl Stats {
    /// How long ago the oldest record was pushed, by `now`; zero when the clock stands before
    /// it (clocks of several machines, or a clock set back).
    pub fn oldest_age(&self, now: SystemTime) -> Option<Duration> {
        let enqueued = self.oldest_enqueued_at?;
        Some(now.duration_since(enqueued).unwrap_or(Duration::ZERO))
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
    }
}
