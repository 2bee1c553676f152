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
//! go of, and the handler never touches a number that another file may have reused.
//!
//! A lock file is opened and registered with no fork in between ([`open_lock_file`]): the
//! opens in flight are counted, and a handler that runs in the forking thread before the fork
//! waits until none is (and holds new ones back until the fork is done). Otherwise a fork
//! between the open and the registration would leave that descriptor in the child, sharing
//! the lock its parent takes on it later. The wait is bounded (a second): a fork from a signal
//! handler that interrupted an open in the same thread would otherwise wait for good.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

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

/// Lock files being opened and not yet registered, plus [`FORKING`] while a fork waits for
/// them or is under way.
static OPENING: AtomicU32 = AtomicU32::new(0);
/// Set in [`OPENING`] by the fork in progress.
const FORKING: u32 = 1 << 31;
/// How long a fork waits for the lock-file opens in flight.
const OPENS_WAIT_MAX: Duration = Duration::from_secs(1);

/// A lock-file open in flight, counted in [`OPENING`] until dropped.
struct Opening;

impl Opening {
    /// Waits while a fork is under way, then counts this open.
    fn enter() -> Opening {
        change_when_no_fork(|opening| opening + 1);
        Opening
    }
}

/// Waits until no fork is under way in [`OPENING`], then changes it with `change` (in one
/// compare-and-swap with that wait's last look).
fn change_when_no_fork(change: impl Fn(u32) -> u32) {
    loop {
        let current = OPENING.load(Ordering::Acquire);
        if current & FORKING == 0
            && OPENING
                .compare_exchange_weak(
                    current,
                    change(current),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return;
        }
        std::thread::yield_now();
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::Release);
    }
}

/// Runs in the forking thread before every `fork`: holds new lock-file opens back and waits
/// (at most [`OPENS_WAIT_MAX`]) for those in flight to be registered.
extern "C" fn before_fork() {
    // One fork at a time sets the bit; another thread's fork waits for it to clear.
    change_when_no_fork(|opening| opening | FORKING);
    let deadline = Instant::now() + OPENS_WAIT_MAX;
    while OPENING.load(Ordering::Acquire) & !FORKING != 0 && Instant::now() < deadline {
        #[cfg(test)]
        tests::FORKS_WAITING_FOR_OPENS.fetch_add(1, Ordering::Relaxed);
        std::thread::yield_now();
    }
}

/// Runs in the parent after every `fork`: lets lock-file opens go on.
extern "C" fn after_fork_in_parent() {
    OPENING.fetch_and(!FORKING, Ordering::Release);
}

/// Runs in the child of every `fork`: counts it, and lets go of every registered lock.
extern "C" fn in_child() {
    // The opens in flight were other threads', which the child does not have.
    OPENING.store(0, Ordering::Relaxed);
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
        // SAFETY: the child's handler only writes atomics, reads the registry's atomics and
        // makes async-signal-safe calls, as a handler run in a forked child must; the others
        // run in the parent, with atomics and yields only. On failure (ENOMEM) forks go
        // uncounted and locks stay shared with children, as before this existed.
        let _ = unsafe {
            libc::pthread_atfork(
                Some(before_fork),
                Some(after_fork_in_parent),
                Some(in_child),
            )
        };
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
/// (see the module). Declared before the `File` it names in [`RegisteredFile`], so that it is
/// dropped (and the slot cleared) before the file is closed.
struct HeldLock {
    slot: &'static AtomicI32,
    fd: RawFd,
}

/// A lock file's descriptor, registered (see the module). Its registration is dropped, and
/// the lock let go of, before the file closes: one value, so that no binding order can close
/// the file first (the registration would then point a number another file may have reused
/// at `/dev/null`).
pub(crate) struct RegisteredFile {
    _held: HeldLock,
    file: File,
}

impl std::ops::Deref for RegisteredFile {
    type Target = File;

    fn deref(&self) -> &File {
        &self.file
    }
}

/// Opens a lock file with `open` and registers its descriptor, with no fork in between (see
/// the module).
pub(crate) fn open_lock_file(
    open: impl FnOnce() -> io::Result<File>,
) -> io::Result<RegisteredFile> {
    open_lock_file_then(open, |_| {})
}

/// [`open_lock_file`], calling `before_registering` between the open and the registration.
fn open_lock_file_then(
    open: impl FnOnce() -> io::Result<File>,
    before_registering: impl FnOnce(&File),
) -> io::Result<RegisteredFile> {
    register_handler();
    let _opening = Opening::enter();
    let file = open()?;
    before_registering(&file);
    Ok(RegisteredFile {
        _held: HeldLock::register(file.as_raw_fd()),
        file,
    })
}

impl HeldLock {
    /// Registers `fd`, an open descriptor of a lock file.
    fn register(fd: RawFd) -> HeldLock {
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

    /// Rounds in which a fork waited for a lock-file open in flight.
    pub(super) static FORKS_WAITING_FOR_OPENS: AtomicU64 = AtomicU64::new(0);

    /// A fork while a lock file is being opened waits until it is registered: its child lets
    /// go of the lock the parent takes on that file afterwards. The fork starts once the open
    /// is between its open and its registration, and the open stays there until the fork
    /// waits for it, or (were there no wait) until the fork returned: either way the fork
    /// lands in that window, with no timer.
    #[test]
    fn a_fork_waits_for_a_lock_file_being_opened_and_its_child_lets_go_of_the_lock() {
        /// The child, killed and reaped when dropped (also when an assert fails).
        struct Child(libc::pid_t);
        impl Drop for Child {
            fn drop(&mut self) {
                let mut status = 0;
                // SAFETY: kills and waits for our own child.
                unsafe {
                    libc::kill(self.0, libc::SIGKILL);
                    libc::waitpid(self.0, &mut status, 0);
                }
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        File::create(&path).unwrap();
        let waiting_before = FORKS_WAITING_FOR_OPENS.load(Ordering::Relaxed);
        let in_window = std::sync::atomic::AtomicBool::new(false);
        let fork_returned = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let opener = scope.spawn(|| {
                let open = || File::options().read(true).write(true).open(&path);
                open_lock_file_then(open, |_| {
                    in_window.store(true, Ordering::Relaxed);
                    while FORKS_WAITING_FOR_OPENS.load(Ordering::Relaxed) == waiting_before
                        && !fork_returned.load(Ordering::Relaxed)
                    {
                        std::thread::yield_now();
                    }
                })
                .unwrap()
            });
            while !in_window.load(Ordering::Relaxed) {
                std::thread::yield_now();
            }
            let mut ready = [0; 2];
            // SAFETY: `ready` has room for the two descriptors.
            assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
            // SAFETY: the child calls only async-signal-safe functions (write, pause) until
            // killed.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: as above; one byte from a static.
                unsafe { libc::write(ready[1], b"r".as_ptr().cast(), 1) };
                loop {
                    // SAFETY: as above.
                    unsafe { libc::pause() };
                }
            }
            assert!(pid > 0, "fork failed");
            let _child = Child(pid);
            fork_returned.store(true, Ordering::Relaxed);
            let file = opener.join().unwrap();
            // The child's handler has run once the child is past its fork.
            let mut byte = 0u8;
            // SAFETY: reads one byte into `byte` from the pipe made above.
            let read = unsafe { libc::read(ready[0], (&raw mut byte).cast(), 1) };
            assert_eq!(read, 1, "the child said it runs");
            assert_ne!(
                FORKS_WAITING_FOR_OPENS.load(Ordering::Relaxed),
                waiting_before,
                "the fork did not wait for the open"
            );
            file.try_lock().unwrap();
            drop(file);
            let other = File::open(&path).unwrap();
            other
                .try_lock()
                .expect("the child forked during the open still shares its lock");
            // SAFETY: the pipe's descriptors, not used after this.
            unsafe {
                libc::close(ready[0]);
                libc::close(ready[1]);
            }
        });
    }

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
