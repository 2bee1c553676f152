//! Jobs: at-least-once delivery with leases, acknowledgements, retries and dead letters.
//!
//! Records between the head and the reader's frontier that have been handed out (or are
//! delayed, or acknowledged out of order) live in a bounded in-memory table. What must survive a
//! crash (delivery counts, out-of-order acks, retry times) goes to the ack log; the head moves
//! over the acknowledged prefix. In a queue of one process leases are not persisted: after a
//! restart every unacknowledged record is available again (the workers holding them are gone
//! too). In a queue shared by several processes a lease is written as a retry time at its end,
//! naming its owner (the handle that holds it), so that another process's consumer leaves the
//! record alone until then, or until the owner is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::engine::record::Record;
use crate::engine::segment::Segment;
use crate::format::acklog::{AckEntry, JobHistory};

/// At most this many records are tracked beyond the head (handed out, delayed, or acknowledged
/// out of order). When the table is full, receives wait until the head moves.
pub const IN_FLIGHT_MAX: usize = 1 << 16;

/// Where a tracked record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Available now.
    Ready,
    /// Available at `due_us` (a delay or a retry).
    Waiting { due_us: u64 },
    /// Handed out; available again at `due_us` unless acknowledged.
    Leased { due_us: u64, token: u64 },
    /// Done; removed once the head passes it.
    Acked,
    /// Being moved to the dead-letter queue.
    DeadLettering,
}

/// A record tracked beyond the head.
pub(crate) struct Job {
    pub(crate) record: Record,
    /// The segment and offset of the record's frame: the head index's hint when it is the head.
    pub(crate) segment: Arc<Segment>,
    pub(crate) offset: u64,
    pub(crate) deliveries: u32,
    pub(crate) state: JobState,
}

/// The table of tracked records.
#[derive(Default)]
pub(crate) struct Jobs {
    entries: BTreeMap<u64, Job>,
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    history: JobHistory,
    next_token: u64,
    /// The owners of other handles' leases among the `Waiting` records (see the module).
    lease_owners: BTreeMap<u64, u32>,
}

impl Jobs {
    pub(crate) fn with_history(history: JobHistory) -> Self {
        Jobs {
            history,
            ..Jobs::default()
        }
    }

    /// Forgets every tracked and remembered record (a purge), keeping the token counter, so
    /// that a delivery handed out before cannot match a later one.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.ready.clear();
        self.timers.clear();
        self.history = JobHistory::default();
        self.lease_owners.clear();
    }

    /// True when nothing beyond the head is tracked or remembered: plain FIFO.
    pub(crate) fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.history.is_empty()
    }

    /// The tracked record `seq`.
    pub(crate) fn get(&self, seq: u64) -> Option<&Job> {
        self.entries.get(&seq)
    }

    /// The tracked record `seq`, to change its delivery count (its state changes through
    /// [`set_state`](Jobs::set_state), which keeps the ready set and the timers in step).
    pub(crate) fn get_mut(&mut self, seq: u64) -> Option<&mut Job> {
        self.entries.get_mut(&seq)
    }

    /// The oldest tracked record: the head while anything is tracked.
    pub(crate) fn first(&self) -> Option<&Job> {
        self.entries.values().next()
    }

    /// How many records are tracked.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// What the ack log remembers of `seq` (acknowledged, delivery count, retry time, the
    /// owner of the lease that time ends), taken out of the history as the record starts
    /// being tracked.
    pub(crate) fn take_history(&mut self, seq: u64) -> (bool, u32, u64, u32) {
        let (acked, deliveries, not_before_us) = self.history.take(seq);
        (
            acked,
            deliveries,
            not_before_us,
            self.history.take_lease_owner(seq),
        )
    }

    /// Records that the `Waiting` record `seq` waits for the end of a lease `owner` holds.
    pub(crate) fn set_lease_owner(&mut self, seq: u64, owner: u32) {
        let waiting = self
            .entries
            .get(&seq)
            .is_some_and(|job| matches!(job.state, JobState::Waiting { .. }));
        if waiting && owner != 0 {
            self.lease_owners.insert(seq, owner);
        }
    }

    /// Whether any record waits for the end of another handle's lease.
    pub(crate) fn waits_for_leases(&self) -> bool {
        !self.lease_owners.is_empty() || !self.history.lease_owners.is_empty()
    }

    /// Ends the leases of other handles that `is_gone` says are gone: their records are
    /// available at once (or when their own delay runs out). Returns how many.
    pub(crate) fn end_leases_of_gone(
        &mut self,
        is_gone: &mut dyn FnMut(u32) -> bool,
        now_us: u64,
    ) -> usize {
        let gone = crate::format::acklog::leases_of_gone(&self.lease_owners, is_gone);
        for &seq in &gone {
            let Some(job) = self.entries.get(&seq) else {
                continue;
            };
            let due_us = job.record.not_before_us();
            let state = match due_us > now_us {
                true => JobState::Waiting { due_us },
                false => JobState::Ready,
            };
            // (Drops the owner too.)
            self.set_state(seq, state);
        }
        gone.len() + self.history.end_leases_of_gone(is_gone)
    }

    /// How many tracked records wait for a delay that has not run out at `now_us`.
    pub(crate) fn delayed(&self, now_us: u64) -> u64 {
        self.entries
            .values()
            .filter(|job| matches!(job.state, JobState::Waiting { due_us } if due_us > now_us))
            .count() as u64
    }

    /// A copy of what the ack log remembers beyond the tracked records (for counting delayed
    /// records outside the reader lock).
    pub(crate) fn history_snapshot(&self) -> JobHistory {
        match self.history.is_empty() {
            true => JobHistory::default(),
            false => self.history.clone(),
        }
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Forgets the tracked and remembered records below `head` (another process's consumer
    /// consumed them), as if the table had been built at that head.
    pub(crate) fn drop_below(&mut self, head: u64) {
        let kept = self.entries.split_off(&head);
        for (seq, job) in std::mem::replace(&mut self.entries, kept) {
            match job.state {
                JobState::Ready => {
                    self.ready.remove(&seq);
                }
                JobState::Waiting { due_us } | JobState::Leased { due_us, .. } => {
                    self.timers.remove(&(due_us, seq));
                }
                JobState::Acked | JobState::DeadLettering => {}
            }
        }
        self.history.prune_below(head);
        self.lease_owners = self.lease_owners.split_off(&head);
    }

    /// Applies an ack log entry another process's consumer wrote: to the tracked record it
    /// names, as reading it from the log would have set it, or to the history beyond them.
    /// A lease of this handle that the entry touches was taken over or settled there.
    pub(crate) fn follow(&mut self, entry: &AckEntry, now_us: u64) {
        match *entry {
            AckEntry::Acked { start, end } => {
                let tracked: Vec<u64> = self.entries.range(start..end).map(|(&s, _)| s).collect();
                for seq in tracked {
                    self.set_state(seq, JobState::Acked);
                }
            }
            AckEntry::Delivered { seq, deliveries } => {
                if let Some(job) = self.entries.get_mut(&seq) {
                    job.deliveries = job.deliveries.max(deliveries);
                    return;
                }
            }
            AckEntry::NotBefore {
                seq,
                at_us,
                lease_owner,
            } => {
                if let Some(job) = self.entries.get(&seq) {
                    if matches!(job.state, JobState::Acked | JobState::DeadLettering) {
                        return;
                    }
                    let due_us = at_us.max(job.record.not_before_us());
                    let state = match due_us > now_us {
                        true => JobState::Waiting { due_us },
                        false => JobState::Ready,
                    };
                    self.set_state(seq, state);
                    self.set_lease_owner(seq, lease_owner);
                    return;
                }
            }
        }
        self.history.apply(entry);
    }

    /// The leases handed out through this table: `(seq, token, deliveries, due_us)`.
    pub(crate) fn leases(&self) -> Vec<(u64, u64, u32, u64)> {
        self.entries
            .iter()
            .filter_map(|(&seq, job)| match job.state {
                JobState::Leased { due_us, token } => Some((seq, token, job.deliveries, due_us)),
                _ => None,
            })
            .collect()
    }

    /// Takes over the token counter and the leases of `previous`, which this table replaces
    /// (a shared queue's consumer that read the files again): a lease stays this handle's if
    /// the record is tracked here, not settled, and was handed out no more times since.
    pub(crate) fn take_over(&mut self, previous: &Jobs) {
        self.next_token = self.next_token.max(previous.next_token);
        for (seq, token, deliveries, due_us) in previous.leases() {
            // The ack log holds the lease as a retry at its end: unchanged, nobody else
            // took or settled the record.
            let still_ours = self.entries.get(&seq).is_some_and(|job| {
                job.deliveries == deliveries && job.state == JobState::Waiting { due_us }
            });
            if still_ours {
                self.set_state(seq, JobState::Leased { due_us, token });
            }
        }
    }

    /// Starts tracking a record.
    pub(crate) fn insert(&mut self, seq: u64, mut job: Job) {
        let state = job.state;
        if state == JobState::Acked {
            job.record.forget_bytes();
        }
        self.entries.insert(seq, job);
        self.enter(seq, state);
    }

    /// Moves a tracked record to `state`, keeping the ready set and the timers in step.
    pub(crate) fn set_state(&mut self, seq: u64, state: JobState) {
        let Some(job) = self.entries.get_mut(&seq) else {
            return;
        };
        let old = std::mem::replace(&mut job.state, state);
        // Its bytes are gone (below): an acknowledged record is never handed out again.
        debug_assert!(old != JobState::Acked || state == JobState::Acked);
        if state == JobState::Acked {
            // Never handed out again: its mapping would only keep its segment mapped.
            job.record.forget_bytes();
        }
        // A new state owes nothing to another handle's lease (`set_lease_owner` says when).
        self.lease_owners.remove(&seq);
        match old {
            JobState::Ready => {
                self.ready.remove(&seq);
            }
            JobState::Waiting { due_us } | JobState::Leased { due_us, .. } => {
                self.timers.remove(&(due_us, seq));
            }
            JobState::Acked | JobState::DeadLettering => {}
        }
        self.enter(seq, state);
    }

    fn enter(&mut self, seq: u64, state: JobState) {
        match state {
            JobState::Ready => {
                self.ready.insert(seq);
            }
            JobState::Waiting { due_us } | JobState::Leased { due_us, .. } => {
                self.timers.insert((due_us, seq));
            }
            JobState::Acked | JobState::DeadLettering => {}
        }
    }

    /// Makes every delay, retry and lease that ran out by `now_us` available.
    pub(crate) fn fire_timers(&mut self, now_us: u64) {
        while let Some(&(due_us, seq)) = self.timers.first() {
            if due_us > now_us {
                break;
            }
            self.set_state(seq, JobState::Ready);
        }
    }

    /// The oldest available record.
    pub(crate) fn first_ready(&self) -> Option<u64> {
        self.ready.first().copied()
    }

    /// When the next delay, retry or lease runs out.
    pub(crate) fn next_due_us(&self) -> Option<u64> {
        self.timers.first().map(|&(due_us, _)| due_us)
    }

    /// The oldest tracked record, which is the head when there is one.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Drops the acknowledged prefix; returns true if anything was dropped.
    pub(crate) fn fold(&mut self) -> bool {
        let mut moved = false;
        while let Some(entry) = self.entries.first_entry() {
            if entry.get().state != JobState::Acked {
                break;
            }
            entry.remove();
            moved = true;
        }
        moved
    }

    /// How many records in `start..end` are tracked.
    pub(crate) fn tracked_between(&self, start: u64, end: u64) -> u64 {
        match start < end {
            true => self.entries.range(start..end).count() as u64,
            false => 0,
        }
    }

    /// Records acknowledged beyond the head, tracked or remembered.
    pub(crate) fn acked_beyond_head(&self, frontier: u64) -> u64 {
        let tracked = self
            .entries
            .values()
            .filter(|job| job.state == JobState::Acked)
            .count() as u64;
        tracked + self.history.acked_count_from(frontier)
    }

    /// The frame bytes of the tracked records acknowledged beyond the head.
    pub(crate) fn acked_frame_bytes(&self) -> u64 {
        self.entries
            .values()
            .filter(|job| job.state == JobState::Acked)
            .map(|job| job.record.frame_len())
            .sum()
    }

    /// What the ack log remembers beyond the tracked records.
    pub(crate) fn history(&self) -> &JobHistory {
        &self.history
    }

    /// Records handed out and not yet settled.
    pub(crate) fn leased(&self) -> u64 {
        self.entries
            .values()
            .filter(|job| matches!(job.state, JobState::Leased { .. }))
            .count() as u64
    }

    /// An upper bound of the entries a rewritten ack log needs.
    pub(crate) fn live_estimate(&self) -> usize {
        self.entries.len()
            + self.history.acked.len()
            + self.history.deliveries.len()
            + self.history.not_before.len()
    }

    /// The ack log entries that describe the tracked and remembered state; with
    /// `lease_owner` (a shared queue's handle), this handle's leases as retry times at their
    /// end naming it (see the module), and other handles' as they were written.
    pub(crate) fn live_entries(&self, lease_owner: Option<u32>) -> Vec<AckEntry> {
        let mut state = self.history.clone();
        for (&seq, job) in &self.entries {
            match job.state {
                JobState::Acked => state.apply(&AckEntry::Acked {
                    start: seq,
                    end: seq + 1,
                }),
                JobState::Waiting { due_us } if due_us > job.record.not_before_us() => {
                    state.apply(&AckEntry::NotBefore {
                        seq,
                        at_us: due_us,
                        lease_owner: self.lease_owners.get(&seq).copied().unwrap_or(0),
                    });
                }
                JobState::Leased { due_us, .. } => {
                    if let Some(owner) = lease_owner {
                        state.apply(&AckEntry::NotBefore {
                            seq,
                            at_us: due_us,
                            lease_owner: owner,
                        });
                    }
                }
                _ => {}
            }
            if job.deliveries > 0 {
                state.apply(&AckEntry::Delivered {
                    seq,
                    deliveries: job.deliveries,
                });
            }
        }
        state.entries()
    }
}
