//! Handles carried into a child by `fork`.
//!
//! A child forked after an open gets a copy of the handle's memory: its view of the tail, its
//! consumer's head, its place in the lock words (in a shared queue, the same ticket as the
//! parent's handle, so both would take the same turn), and its descriptors. It gets none of its
//! threads (the flusher, the group commit's waits, the writeback), and a lock another thread
//! held at the fork stays held in it for good. A push or a pop from such a copy would write
//! where the parent writes and hand out what the parent hands out; closing it would cut the
//! segment under the parent's mapping. So a child's copy refuses every call with
//! [`Error::Forked`](crate::Error::Forked), and its drop leaves the files alone.
//!
//! Two things happen in the child of every `fork`, in a handler registered with
//! `pthread_atfork` (not run by `posix_spawn` or `vfork`, which share or replace the parent's
//! memory):
//! - The fork is counted with one atomic add; a handle remembers the count at its open, so that
//!   its check is one load.
//! - Every descriptor that holds a lock file's `flock` ([`HeldLock`]) is pointed at
//!   `/dev/null`. An `flock` belongs to the open file description, which the child would
//!   otherwise share with the parent: the lock would stay held after the parent closed its
//!   queue or died, for as long as the child lives (a closed exclusive queue could not be
//!   opened again; a dead process of a shared one would look alive, and the lock words and
//!   leases it held would wait that long). Unlocking instead would take the lock from the
//!   parent. The descriptor number stays open (now `/dev/null`), so the child's copy of the
//!   `File` still owns it.
//!
//! The registry of those descriptors is a list of fixed chunks of atomic slots, never freed:
//! the handler walks it with loads only (no lock, no allocation, as a handler in the child of
//! a multi-threaded process must). When a lock file closes, its descriptor is first pointed at
//! `/dev/null` (which lets go of the lock, as the close would), then its slot is cleared, then
//! it is closed: a fork at any moment of that finds the lock either registered or already let
//! go of, and the handler never touches a number that another file may have reused. A fork
//! that lands between a lock file's open and its registration leaves that one descriptor in
//! the child, as before.

use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};
use std::sync::Once;

/// Forks this process's memory went through (counted in each child).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// Descriptors that hold a lock file's `flock`: `FREE`, or a descriptor number.
const FREE: i32 = -1;
/// Slots per chunk of the registry.
const CHUNK_SLOTS: usize = 64;

struct Chunk {
    slots: [AtomicI32; CHUNK_SLOTS],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk {
            slots: [const { AtomicI32::new(FREE) }; CHUNK_SLOTS],
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }
}

/// The first chunk; more are appended (and leaked) when every slot is taken.
static HELD: Chunk = Chunk::new();

/// Points `fd` at `/dev/null`, keeping it open and close-on-exec; false if that failed.
///
/// Async-signal-safe: `open`, `dup2`, `fcntl` and `close` only.
fn point_at_null(fd: RawFd, null: &mut RawFd) -> bool {
    if *null == FREE {
        // SAFETY: `open` is async-signal-safe, as calls in a handler run in the child of a
        // multi-threaded process must be; the path is a static C string.
        *null = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if *null < 0 {
            *null = FREE;
            return false;
        }
    }
    // SAFETY: `fd` is open (see the callers); `dup2` replaces what it refers to and the number
    // stays open. `dup2` clears close-on-exec: `fcntl` sets it again, as the lock file's
    // descriptor had it.
    unsafe {
        if libc::dup2(*null, fd) != fd {
            return false;
        }
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    true
}

/// Closes the `/dev/null` descriptor [`point_at_null`] opened, if it did.
fn close_null(null: RawFd) {
    if null != FREE {
        // SAFETY: opened by `point_at_null` and not used after this.
        unsafe { libc::close(null) };
    }
}

/// Runs in the child of every `fork`: counts it, and lets go of every registered lock.
extern "C" fn in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
    // Opened at the first descriptor found: a process holding no lock pays nothing more.
    let mut null = FREE;
    let mut chunk: *const Chunk = &HELD;
    while !chunk.is_null() {
        // SAFETY: chunks are never freed: `HELD` is static and the others are leaked boxes.
        let current = unsafe { &*chunk };
        for slot in &current.slots {
            // A set slot holds a descriptor that was open at the fork (see the module).
            let fd = slot.load(Ordering::Acquire);
            if fd != FREE && !point_at_null(fd, &mut null) && null == FREE {
                return;
            }
        }
        chunk = current.next.load(Ordering::Acquire);
    }
    close_null(null);
}

/// Registers the handler once per process.
fn register_handler() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: the handler only adds to an atomic, reads the registry's atomics and makes
        // async-signal-safe calls, as a handler run in a forked child must. On failure (ENOMEM)
        // forks go uncounted and locks stay shared with children, as before this existed.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(in_child)) };
    });
}

/// The current count, for a handle being opened; registers the handler once per process.
pub(crate) fn generation() -> u64 {
    register_handler();
    FORKS.load(Ordering::Relaxed)
}

/// Whether this process is a child forked after `generation` was read.
#[inline(always)]
pub(crate) fn forked_since(generation: u64) -> bool {
    FORKS.load(Ordering::Relaxed) != generation
}

/// A descriptor holding a lock file's `flock`, registered so that a forked child lets go of it
/// (see the module). Declared before the `File` it names in the owning struct, so that it is
/// dropped (and the slot cleared) before the file is closed.
pub(crate) struct HeldLock {
    slot: &'static AtomicI32,
    fd: RawFd,
}

impl HeldLock {
    /// Registers `fd`, an open descriptor of a lock file.
    pub(crate) fn register(fd: RawFd) -> HeldLock {
        register_handler();
        let mut chunk: &'static Chunk = &HELD;
        loop {
            for slot in &chunk.slots {
                if slot
                    .compare_exchange(FREE, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    return HeldLock { slot, fd };
                }
            }
            let next = chunk.next.load(Ordering::Acquire);
            if let Some(next) = ptr::NonNull::new(next) {
                // SAFETY: chunks are leaked boxes, never freed.
                chunk = unsafe { next.as_ref() };
                continue;
            }
            let fresh = Box::into_raw(Box::new(Chunk::new()));
            chunk = match chunk.next.compare_exchange(
                ptr::null_mut(),
                fresh,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                // SAFETY: `fresh` is now the registry's, leaked for the process's life.
                Ok(_) => unsafe { &*fresh },
                Err(appended) => {
                    // SAFETY: `fresh` was never shared: freed here; `appended` is another
                    // thread's leaked chunk.
                    unsafe {
                        drop(Box::from_raw(fresh));
                        &*appended
                    }
                }
            };
        }
    }
}

impl Drop for HeldLock {
    /// Lets go of the lock before the slot is cleared (see the module); the file's close
    /// follows.
    fn drop(&mut self) {
        let mut null = FREE;
        point_at_null(self.fd, &mut null);
        close_null(null);
        self.slot.store(FREE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Every registration gets a slot of its own, past the first chunk too, and a dropped one
    /// frees its slot.
    #[test]
    fn registrations_take_distinct_slots_and_give_them_back() {
        let files: Vec<std::fs::File> = (0..3 * CHUNK_SLOTS)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let held: Vec<HeldLock> = files
            .iter()
            .map(|file| HeldLock::register(file.as_raw_fd()))
            .collect();
        let mut slots: Vec<*const AtomicI32> = held.iter().map(|h| h.slot as *const _).collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), held.len());
        for (h, file) in held.iter().zip(&files) {
            assert_eq!(h.slot.load(Ordering::Relaxed), file.as_raw_fd());
        }
        let first: &'static AtomicI32 = held[0].slot;
        drop(held);
        // Free (or another test's since: never this number, which `files` still holds).
        assert_ne!(first.load(Ordering::Relaxed), files[0].as_raw_fd());
    }

    /// Dropping the registration lets go of the lock at once, before the file closes: another
    /// open of the file takes it while the first is still open.
    #[test]
    fn a_dropped_registration_lets_go_of_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let file = std::fs::File::create(&path).unwrap();
        file.try_lock().unwrap();
        let other = std::fs::File::open(&path).unwrap();
        assert!(other.try_lock().is_err(), "held by the first open");
        let held = HeldLock::register(file.as_raw_fd());
        assert!(other.try_lock().is_err(), "registering keeps the lock");
        drop(held);
        other.try_lock().unwrap();
        drop(file);
    }
}
