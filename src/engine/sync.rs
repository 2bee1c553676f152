//! Group commit: many threads wait for durability, one of them syncs for all.
//!
//! A sync covers what was written before it started, so the more writers have written when the
//! leader starts, the more one sync covers. Writers announce themselves with
//! [`SyncGroup::enter`] before they write. A leader waits (yielding the processor) while fewer
//! writers wait than are announced, or than the last sync covered (the writers it woke are on
//! their way back with their next write), for at most half as long as the last sync took. A
//! lone writer never waits. Correctness never depends on any of this: nobody returns before a
//! sync that started after its write.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Locks a mutex, ignoring poisoning: the engine's invariants live in its own state checks, and a
/// panic in another thread must not turn every later call into a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The most writers a leader waits for on the strength of the last sync's count.
const GATHER_COVERED_MAX: usize = 64;

/// The longest a leader waits for writers, as a fraction of the last sync's duration (and
/// between the two bounds below): waiting longer would cost more than the sync it shares.
const GATHER_BUDGET_DIVISOR: u32 = 2;
const GATHER_BUDGET_MIN: Duration = Duration::from_micros(20);
const GATHER_BUDGET_MAX: Duration = Duration::from_millis(2);

/// Tracks how far a monotonically growing "ticket" (a sequence number, a generation) is durable.
#[derive(Debug)]
pub(crate) struct SyncGroup {
    state: Mutex<GroupState>,
    done: Condvar,
    /// Writers between [`enter`](SyncGroup::enter) and the end of their operation.
    inside: AtomicUsize,
    /// A copy of `GroupState::durable`, for readers that must not take the lock (a pop asks on
    /// every call). Only grows; written under the lock.
    durable_seen: AtomicU64,
}

#[derive(Debug)]
struct GroupState {
    durable: u64,
    leader_active: bool,
    failure: Option<String>,
    /// The tickets of the threads waiting in `wait` that are not durable yet (the leader's
    /// included): a handful, one per waiting thread.
    pending: Vec<u64>,
    /// How many waiters the last sync covered: what a leader expects to gather again.
    last_covered: usize,
    /// How long the last sync took: bounds how long a leader waits to gather writers.
    last_sync: Duration,
    /// Syncs run by leaders, and the tickets they made durable (the queue's group-commit
    /// figures: for the push group a ticket is a record).
    syncs: u64,
    synced_tickets: u64,
}

/// An announced writer; see [`SyncGroup::enter`].
pub(crate) struct Entered<'a>(&'a AtomicUsize);

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SyncGroup {
    pub(crate) fn new(durable: u64) -> Self {
        SyncGroup {
            state: Mutex::new(GroupState {
                durable,
                leader_active: false,
                failure: None,
                pending: Vec::new(),
                last_covered: 0,
                last_sync: Duration::ZERO,
                syncs: 0,
                synced_tickets: 0,
            }),
            done: Condvar::new(),
            inside: AtomicUsize::new(0),
            durable_seen: AtomicU64::new(durable),
        }
    }

    /// Announces a writer that will soon write and then `wait`: hold the guard from before the
    /// write until the wait returns. Only a hint for the leader; correctness never depends on it.
    pub(crate) fn enter(&self) -> Entered<'_> {
        self.inside.fetch_add(1, Ordering::AcqRel);
        Entered(&self.inside)
    }

    /// Returns once `ticket` is durable. If no sync is running, this thread runs `sync`, which
    /// makes everything written so far durable and returns the ticket it covers; threads that
    /// arrive meanwhile wait for it, or for the next one. A failed sync fails every waiter, now
    /// and later: a failed fsync is never retried.
    pub(crate) fn wait(&self, ticket: u64, mut sync: impl FnMut() -> Result<u64>) -> Result<()> {
        let mut state = lock(&self.state);
        let mut registered = false;
        let outcome = loop {
            if let Some(cause) = &state.failure {
                break Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if state.durable >= ticket {
                break Ok(());
            }
            if !registered {
                state.pending.push(ticket);
                registered = true;
            }
            if state.leader_active {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.leader_active = true;
            state = self.gather(state);
            drop(state);
            let began = Instant::now();
            let outcome = sync();
            let took = began.elapsed();
            state = lock(&self.state);
            state.leader_active = false;
            state.last_sync = took;
            match outcome {
                Ok(covered) => {
                    state.syncs += 1;
                    state.synced_tickets += covered.saturating_sub(state.durable);
                    state.durable = state.durable.max(covered);
                    let durable = state.durable;
                    self.durable_seen.store(durable, Ordering::Release);
                    let before = state.pending.len();
                    state.pending.retain(|&pending| pending > durable);
                    state.last_covered = before - state.pending.len();
                }
                Err(error) => {
                    state.failure = Some(error.to_string());
                    state.pending.clear();
                    self.done.notify_all();
                    return Err(error);
                }
            }
            self.done.notify_all();
        };
        // Normally gone already (covered tickets are dropped when `durable` moves).
        if registered && outcome.is_err() {
            if let Some(index) = state.pending.iter().position(|&pending| pending == ticket) {
                state.pending.swap_remove(index);
            }
        }
        outcome
    }

    /// Lets writers that are not waiting yet write before the leader syncs, so that the sync
    /// covers them too: while fewer wait than are announced (inside an operation), or than the
    /// last sync covered (writers woken by it are on their way back), yields the processor, for
    /// at most half as long as the last sync took. A lone writer never waits.
    fn gather<'a>(&'a self, mut state: MutexGuard<'a, GroupState>) -> MutexGuard<'a, GroupState> {
        let budget =
            (state.last_sync / GATHER_BUDGET_DIVISOR).clamp(GATHER_BUDGET_MIN, GATHER_BUDGET_MAX);
        let started = Instant::now();
        loop {
            let announced = self.inside.load(Ordering::Acquire);
            let expected = announced.max(state.last_covered.min(GATHER_COVERED_MAX));
            if expected <= state.pending.len() || started.elapsed() >= budget {
                break;
            }
            drop(state);
            std::thread::yield_now();
            state = lock(&self.state);
        }
        state
    }

    /// The syncs leaders ran and the tickets they made durable, since the group was made.
    pub(crate) fn commits(&self) -> (u64, u64) {
        let state = lock(&self.state);
        (state.syncs, state.synced_tickets)
    }

    /// The ticket below which everything is known durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable_seen.load(Ordering::Acquire)
    }

    /// Counts a group-commit sync this handle led for producers of several processes (a shared
    /// queue under `Always`), which made `records` more records durable.
    pub(crate) fn count_shared_sync(&self, records: u64) {
        let mut state = lock(&self.state);
        state.syncs += 1;
        state.synced_tickets += records;
    }

    /// Records that a sync outside the group (a roll, the interval flusher) covered `ticket`.
    pub(crate) fn mark_durable(&self, ticket: u64) {
        let mut state = lock(&self.state);
        state.durable = state.durable.max(ticket);
        let durable = state.durable;
        self.durable_seen.store(durable, Ordering::Release);
        state.pending.retain(|&pending| pending > durable);
        self.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Nobody returns before a sync covered their ticket; a failed sync fails every waiter and
    /// every later one, and is never retried.
    #[test]
    fn waiters_return_only_when_covered_and_failures_stick() {
        let group = SyncGroup::new(0);
        let written = AtomicU64::new(0);
        let synced = AtomicU64::new(0);
        let syncs = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        let _entered = group.enter();
                        let ticket = written.fetch_add(1, Ordering::SeqCst) + 1;
                        group
                            .wait(ticket, || {
                                syncs.fetch_add(1, Ordering::SeqCst);
                                let covered = written.load(Ordering::SeqCst);
                                synced.fetch_max(covered, Ordering::SeqCst);
                                Ok(covered)
                            })
                            .unwrap();
                        assert!(synced.load(Ordering::SeqCst) >= ticket);
                    }
                });
            }
        });
        assert!(syncs.load(Ordering::SeqCst) <= 800);
        let (leader_syncs, synced) = group.commits();
        assert_eq!(leader_syncs, syncs.load(Ordering::SeqCst));
        assert_eq!(synced, 800, "every ticket made durable by exactly one sync");
        assert_eq!(group.inside.load(Ordering::SeqCst), 0);
        assert!(lock(&group.state).pending.is_empty());

        let failing = SyncGroup::new(0);
        let attempts = AtomicU64::new(0);
        let fail = || {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err(Error::Poisoned {
                cause: "disk on fire".into(),
            })
        };
        assert!(failing.wait(1, fail).is_err());
        assert!(failing.wait(2, fail).is_err());
        assert_eq!(attempts.load(Ordering::SeqCst), 1, "never retried");
    }
}
