//! Group commit: many threads wait for durability, one of them syncs for all.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::error::{Error, Result};

/// Locks a mutex, ignoring poisoning: the engine's invariants live in its own state checks, and a
/// panic in another thread must not turn every later call into a panic.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tracks how far a monotonically growing "ticket" (a sequence number, a generation) is durable.
#[derive(Debug)]
pub(crate) struct SyncGroup {
    state: Mutex<GroupState>,
    done: Condvar,
}

#[derive(Debug)]
struct GroupState {
    durable: u64,
    leader_active: bool,
    failure: Option<String>,
}

impl SyncGroup {
    pub(crate) fn new(durable: u64) -> Self {
        SyncGroup {
            state: Mutex::new(GroupState {
                durable,
                leader_active: false,
                failure: None,
            }),
            done: Condvar::new(),
        }
    }

    /// Returns once `ticket` is durable. If no sync is running, this thread runs `sync`, which
    /// makes everything written so far durable and returns the ticket it covers; threads that
    /// arrive meanwhile wait for it, or for the next one. A failed sync fails every waiter, now
    /// and later: a failed fsync is never retried.
    pub(crate) fn wait(&self, ticket: u64, mut sync: impl FnMut() -> Result<u64>) -> Result<()> {
        let mut state = lock(&self.state);
        loop {
            if let Some(cause) = &state.failure {
                return Err(Error::Poisoned {
                    cause: cause.clone(),
                });
            }
            if state.durable >= ticket {
                return Ok(());
            }
            if state.leader_active {
                state = self
                    .done
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            state.leader_active = true;
            drop(state);
            let outcome = sync();
            state = lock(&self.state);
            state.leader_active = false;
            match outcome {
                Ok(covered) => state.durable = state.durable.max(covered),
                Err(error) => {
                    let cause = error.to_string();
                    state.failure = Some(cause);
                    self.done.notify_all();
                    return Err(error);
                }
            }
            self.done.notify_all();
        }
    }

    /// The ticket below which everything is durable.
    pub(crate) fn durable(&self) -> u64 {
        lock(&self.state).durable
    }

    /// Records that a sync outside the group (a roll, the interval flusher) covered `ticket`.
    pub(crate) fn mark_durable(&self, ticket: u64) {
        let mut state = lock(&self.state);
        state.durable = state.durable.max(ticket);
        self.done.notify_all();
    }
}
