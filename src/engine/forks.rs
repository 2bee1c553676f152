//! Handles carried into a child by `fork`.
//!
//! A child forked after an open gets a copy of the handle's memory: its view of the tail, its
//! consumer's head, its place in the lock words (in a shared queue, the same ticket as the
//! parent's handle, so both would take the same turn), and its flocks, shared with the parent.
//! It gets none of its threads (the flusher, the group commit's waits, the writeback), and a
//! lock another thread held at the fork stays held in it for good. A push or a pop from such a
//! copy would write where the parent writes and hand out what the parent hands out; closing it
//! would cut the segment under the parent's mapping. So a child's copy refuses every call with
//! [`Error::Forked`](crate::Error::Forked), and its drop leaves the files alone.
//!
//! The test is one load: a handler registered with `pthread_atfork` counts forks in the child;
//! a handle remembers the count at its open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks this process's memory went through (counted in each child).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Runs in the child of every `fork` (not of `posix_spawn` or `vfork`, which share or replace
/// the parent's memory).
extern "C" fn count_in_child() {
    // An atomic add only: what a handler in the child of a multi-threaded process may do.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The current count, for a handle being opened; registers the handler once per process.
pub(crate) fn generation() -> u64 {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler is a plain function that only adds to an atomic, which is
        // async-signal-safe, as a handler run in a forked child must be. On failure (ENOMEM)
        // forks go uncounted, as before this check existed.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(count_in_child)) };
    });
    FORKS.load(Ordering::Relaxed)
}

/// Whether this process is a child forked after `generation` was read.
#[inline(always)]
pub(crate) fn forked_since(generation: u64) -> bool {
    FORKS.load(Ordering::Relaxed) != generation
}
