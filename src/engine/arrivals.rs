//! Wake-ups for consumers waiting on an empty queue: a push, a release or a due timer moves the
//! epoch; waiters block on a condition variable or register an async waker.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::engine::sync::lock;

/// Wakes threads (and async tasks) waiting for records. A publisher pays an atomic increment
/// and an atomic load when nobody waits.
#[derive(Default)]
pub(crate) struct Arrivals {
    epoch: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    arrived: Condvar,
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl Arrivals {
    /// A counter that moves on every notification.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with `wait_until` and `register`: either the waiter is counted before
        // this load, or the new epoch is visible to the waiter's check.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            {
                let _guard = lock(&self.lock);
                self.arrived.notify_all();
            }
            let wakers = std::mem::take(&mut *lock(&self.wakers));
            if !wakers.is_empty() {
                // The registered tasks counted as one waiter (see `register`).
                self.waiters.fetch_sub(1, Ordering::SeqCst);
            }
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Registers an async waker, woken at the next notification after `seen`. All registered
    /// wakers together count as one waiter.
    #[cfg(feature = "async")]
    pub(crate) fn register(&self, waker: &std::task::Waker, seen: u64) {
        let mut wakers = lock(&self.wakers);
        if wakers.is_empty() {
            self.waiters.fetch_add(1, Ordering::SeqCst);
        }
        wakers.push(waker.clone());
        drop(wakers);
        if self.epoch() != seen {
            self.notify();
        }
    }

    /// Waits until `ready()` or `deadline`; returns `ready()`'s last answer.
    pub(crate) fn wait_until(&self, deadline: Instant, ready: impl Fn() -> bool) -> bool {
        let mut guard = lock(&self.lock);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            if ready() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = self
                .arrived
                .wait_timeout(guard, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}
