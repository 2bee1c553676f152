//! The counters of one open queue since it was opened: what happened, not what is there (the
//! gauges are computed from the log and the consumer when asked, see `Queue::stats`).
//!
//! Each event is counted where it happens, as cheaply as the path allows: the consumer's counts
//! are plain integers in the reader, under the lock every consumer operation holds anyway; pushes
//! are not counted at all (the writer's next sequence number less the one at open is the count);
//! the rarer events (dead letters, discards, expiries, deduplicated pushes) are relaxed atomics
//! here, shared through the queue's environment.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::stats::{DiscardReason, TakeoverKind, Totals};

/// The consumer's counts, kept in the reader under its lock (no atomics on the pop path).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConsumerCounts {
    /// Records handed out by `pop` or `recv` (each delivery of a record once).
    pub(crate) delivered: u64,
    /// Deliveries acknowledged.
    pub(crate) acked: u64,
    /// Deliveries released by their holder (`nack`, `retry_after`, dropped undecided).
    pub(crate) nacked: u64,
    /// Deliveries of a record handed out before (by this process or an earlier one).
    pub(crate) redelivered: u64,
}

/// The counters that are not on the push or pop path: relaxed atomics, as no ordering with
/// other memory is promised (a snapshot may be a moment behind the queue).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    dead_lettered: AtomicU64,
    discarded: [AtomicU64; DiscardReason::ALL.len()],
    expired: AtomicU64,
    deduplicated: AtomicU64,
    takeovers: [AtomicU64; TakeoverKind::ALL.len()],
}

impl Counters {
    /// A record was moved to the dead-letter queue.
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` records were discarded for `reason` (queue policies).
    pub(crate) fn discarded(&self, reason: DiscardReason, count: u64) {
        self.discarded[reason.index()].fetch_add(count, Ordering::Relaxed);
    }

    /// Records discarded for `reason` so far.
    #[cfg(feature = "testkit")]
    pub(crate) fn discarded_for(&self, reason: DiscardReason) -> u64 {
        self.discarded[reason.index()].load(Ordering::Relaxed)
    }

    /// `count` records expired before they were delivered (queue policies).
    pub(crate) fn expired(&self, count: u64) {
        self.expired.fetch_add(count, Ordering::Relaxed);
    }

    /// A push was recognised as a duplicate and wrote nothing (queue policies).
    pub(crate) fn deduplicated(&self) {
        self.deduplicated.fetch_add(1, Ordering::Relaxed);
    }

    /// This handle took over `count` of `kind` from handles of a shared queue that died or
    /// failed.
    pub(crate) fn took_over(&self, kind: TakeoverKind, count: u64) {
        self.takeovers[kind.index()].fetch_add(count, Ordering::Relaxed);
    }

    /// The totals, with the figures kept elsewhere: pushes, the consumer's counts and the push
    /// group commit's (`syncs` leader syncs that made `synced_records` records durable).
    pub(crate) fn totals(
        &self,
        pushed: u64,
        consumer: ConsumerCounts,
        syncs: u64,
        synced_records: u64,
    ) -> Totals {
        let mut discarded = [0; DiscardReason::ALL.len()];
        for (total, counter) in discarded.iter_mut().zip(&self.discarded) {
            *total = counter.load(Ordering::Relaxed);
        }
        let mut takeovers = [0; TakeoverKind::ALL.len()];
        for (total, counter) in takeovers.iter_mut().zip(&self.takeovers) {
            *total = counter.load(Ordering::Relaxed);
        }
        Totals {
            pushed,
            delivered: consumer.delivered,
            acked: consumer.acked,
            nacked: consumer.nacked,
            redelivered: consumer.redelivered,
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            discarded,
            expired: self.expired.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            commit_syncs: syncs,
            commit_records: synced_records,
            takeovers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_counter_lands_in_its_own_total() {
        let counters = Counters::default();
        counters.dead_lettered();
        counters.discarded(DiscardReason::Overflow, 3);
        counters.discarded(DiscardReason::Purge, 2);
        counters.expired(4);
        counters.deduplicated();
        counters.deduplicated();
        counters.took_over(TakeoverKind::Tail, 1);
        counters.took_over(TakeoverKind::Lease, 3);
        let consumer = ConsumerCounts {
            delivered: 7,
            acked: 5,
            nacked: 1,
            redelivered: 2,
        };
        let totals = counters.totals(9, consumer, 6, 12);
        assert_eq!(totals.pushed, 9);
        assert_eq!(totals.delivered, 7);
        assert_eq!(totals.acked, 5);
        assert_eq!(totals.nacked, 1);
        assert_eq!(totals.redelivered, 2);
        assert_eq!(totals.dead_lettered, 1);
        assert_eq!(totals.discarded(DiscardReason::Overflow), 3);
        assert_eq!(totals.discarded(DiscardReason::Purge), 2);
        assert_eq!(totals.discarded_total(), 5);
        assert_eq!(totals.expired, 4);
        assert_eq!(totals.deduplicated, 2);
        assert_eq!(totals.takeovers(TakeoverKind::Tail), 1);
        assert_eq!(totals.takeovers(TakeoverKind::ConsumerTurn), 0);
        assert_eq!(totals.takeovers(TakeoverKind::Lease), 3);
        assert_eq!(totals.records_per_sync(), Some(2.0));
    }
}
