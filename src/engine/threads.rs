//! The threads a handle starts for itself (a shared handle's solo thread and arrivals bridge):
//! told to end and joined when the handle closes, so that a closed handle has let go of
//! everything (its locks, its slot, its mappings) by the time `close` or `drop` returns.
//!
//! Each such thread holds its handle weakly and only for a moment at a time; without the join,
//! the last strong reference could be the thread's, and the handle would be released on that
//! thread a little later, after a `close` had already returned.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// A handle's own threads.
#[derive(Default)]
pub(crate) struct HandleThreads {
    /// Set by [`end`](HandleThreads::end): a thread that sees it returns.
    ending: AtomicBool,
    running: Mutex<Vec<JoinHandle<()>>>,
}

impl HandleThreads {
    /// Keeps `thread` to join at the end. A thread spawned after the end began is joined at
    /// once (it sees [`is_ending`](HandleThreads::is_ending) at its first look).
    pub(crate) fn keep(&self, thread: JoinHandle<()>) {
        let mut running = lock(&self.running);
        if self.is_ending() {
            drop(running);
            join_unless_current(thread);
            return;
        }
        running.push(thread);
    }

    /// Whether the handle is closing: its threads return at their next look.
    pub(crate) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Tells the threads to end, wakes them (`wake`: whatever they may sleep on), and waits for
    /// them. Called by the handle's close, never by one of these threads (a thread that did
    /// would not wait for itself).
    pub(crate) fn end(&self, wake: impl Fn()) {
        let running = {
            let mut running = lock(&self.running);
            self.ending.store(true, Ordering::Release);
            std::mem::take(&mut *running)
        };
        for thread in running {
            // A thread that looked just before `ending` was set may go to sleep just after this
            // wakes it: woken again until it has ended, rather than left to its sleep's end.
            let mut looks = 0u32;
            while !thread.is_finished() && thread.thread().id() != std::thread::current().id() {
                if looks.is_multiple_of(WAKE_EVERY) {
                    wake();
                }
                looks = looks.wrapping_add(1);
                std::thread::sleep(LOOK_EVERY);
            }
            join_unless_current(thread);
        }
    }
}

/// Locks the list, ignoring poisoning (as `engine::sync::lock` does; this module is a leaf).
fn lock(mutex: &Mutex<Vec<JoinHandle<()>>>) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How often [`HandleThreads::end`] looks whether a thread has ended.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_micros(50);

/// Every how many looks [`HandleThreads::end`] wakes the threads again.
const WAKE_EVERY: u32 = 20;

/// Joins `thread`, unless it is the calling thread (which cannot wait for itself).
fn join_unless_current(thread: JoinHandle<()>) {
    if thread.thread().id() != std::thread::current().id() {
        // A panic in the thread has nothing left to report: the handle is closing.
        let _ = thread.join();
    }
}
