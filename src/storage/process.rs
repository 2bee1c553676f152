//! What processes sharing a queue coordinate through, beside its files: `flock`ed lock files,
//! the mapped control file (`format::control`), the process id written as advice, and futex
//! wake-ups. On the real filesystem these are the kernel's; on the simulated one
//! ([`Storage::as_sim`], feature `sim`) its model of processes: a lock table, one shared page
//! per control file, a process number per handle (see `storage::sim`). Every other storage
//! refuses shared queues (`Storage::shares_between_processes`).
//!
//! The lock words stay plain atomics in memory either way: a [`ControlMapping`] is a base
//! pointer plus the owner that keeps the memory alive (the `mmap`, or the simulated page), so
//! that a push or a pop pays no dispatch per access. Futex waits work on any address of the
//! process, which is where the simulated processes (threads of one process) share their page.

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use crate::format::control::{check_header, encode_header, other_layout_version, CONTROL_LEN};
use crate::storage::forks::{open_lock_file, RegisteredFile};
use crate::storage::Storage;

/// A lock file of a shared queue (`lock`, `open.lock`, `procs/NNN`), opened and created if
/// missing. Its locks belong to this open file, so two handles in one process exclude each
/// other like two processes do, and they end with the process that holds them.
pub(crate) struct LockFile {
    inner: LockInner,
}

enum LockInner {
    /// A real lock file, registered so that a forked child lets go of it (`storage::forks`).
    Os(RegisteredFile),
    #[cfg(any(test, feature = "sim"))]
    Sim(super::sim::SimLockFile),
}

impl LockFile {
    /// Opens the lock file at `path` (never through a symbolic link on the real filesystem),
    /// creating it if missing.
    pub(crate) fn open(storage: &dyn Storage, path: &Path) -> io::Result<LockFile> {
        #[cfg(any(test, feature = "sim"))]
        if let Some(sim) = storage.as_sim() {
            return Ok(LockFile {
                inner: LockInner::Sim(sim.open_lock_file(path)?),
            });
        }
        let _ = storage;
        Ok(LockFile {
            inner: LockInner::Os(open_lock_file(|| super::open_or_create_regular(path))?),
        })
    }

    /// Takes the lock exclusively, or says it is held.
    pub(crate) fn try_lock(&self) -> Result<(), TryLockError> {
        match &self.inner {
            LockInner::Os(file) => file.try_lock(),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(file) => file.try_lock(true),
        }
    }

    /// Takes the lock shared, or says another holds it exclusively.
    pub(crate) fn try_lock_shared(&self) -> Result<(), TryLockError> {
        match &self.inner {
            LockInner::Os(file) => file.try_lock_shared(),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(file) => file.try_lock(false),
        }
    }

    /// Whether another holder has the lock exclusively (a slot file's live handle): looks by
    /// taking it shared for a moment. `false` when it is free; `true` also when the look
    /// fails (waiting longer is safe, taking a live holder's place is not).
    pub(crate) fn is_held_by_another(&self) -> bool {
        match self.try_lock_shared() {
            Ok(()) => {
                let _ = self.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// Whether a lock found held may be held for a moment only, and is worth trying again
    /// (see `MomentaryHold`): a child process shares its parent's lock between fork and
    /// exec. Not on the simulated filesystem, whose runs replay the same calls whatever the
    /// time, and whose processes do not fork.
    pub(crate) fn may_be_held_for_a_moment(&self) -> bool {
        matches!(self.inner, LockInner::Os(_))
    }

    /// Takes the lock exclusively, waiting for its holders.
    pub(crate) fn lock(&self) -> io::Result<()> {
        match &self.inner {
            LockInner::Os(file) => file.lock(),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(file) => file.lock(),
        }
    }

    /// Releases the lock.
    pub(crate) fn unlock(&self) -> io::Result<()> {
        match &self.inner {
            LockInner::Os(file) => file.unlock(),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(file) => file.unlock(),
        }
    }

    /// The pid an exclusive handle wrote into the lock file (advice for error messages); on
    /// the simulated filesystem the number of the process that holds it exclusively.
    pub(crate) fn holder_pid(&self) -> Option<u32> {
        match &self.inner {
            LockInner::Os(file) => super::read_pid(file),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(file) => file.exclusive_holder(),
        }
    }

    /// Empties the file (the pid an exclusive handle left in it).
    pub(crate) fn clear(&self) -> io::Result<()> {
        match &self.inner {
            LockInner::Os(file) => file.set_len(0),
            #[cfg(any(test, feature = "sim"))]
            LockInner::Sim(_) => Ok(()),
        }
    }
}

/// The id of this process as other processes see it (written as advice into the control
/// file): the real one, or the simulated process's number.
pub(crate) fn process_id(storage: &dyn Storage) -> u32 {
    #[cfg(any(test, feature = "sim"))]
    if let Some(sim) = storage.as_sim() {
        return sim.process_number();
    }
    let _ = storage;
    std::process::id()
}

/// Creates a folder of the queue directory (`procs/`): see `create_dir_like_parent`.
pub(crate) fn create_dir_in_queue(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    #[cfg(any(test, feature = "sim"))]
    if storage.as_sim().is_some() {
        return storage.create_dir_all(dir);
    }
    let _ = storage;
    super::create_dir_like_parent(dir)
}

/// The control file, mapped shared: `base` points at its `CONTROL_LEN` bytes, which `_owner`
/// keeps alive (the `mmap`, or the simulated filesystem's page of the file).
pub(crate) struct ControlMapping {
    base: std::ptr::NonNull<u8>,
    _owner: Box<dyn std::any::Any + Send + Sync>,
    path: PathBuf,
}

// SAFETY: `base` points into memory `_owner` keeps alive and in place (a mapping, or a boxed
// page that is never moved), and every access through it is atomic (`word32`, `word64`).
unsafe impl Send for ControlMapping {}
// SAFETY: as above: shared access is by atomics only.
unsafe impl Sync for ControlMapping {}

impl std::fmt::Debug for ControlMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlMapping")
            .field("path", &self.path)
            .finish()
    }
}

/// Why the control file could not be attached.
pub(crate) enum AttachFailure {
    Io(io::Error),
    /// Built by processes of another control layout version (this one).
    OtherVersion(u32),
    /// Its header does not check out: `(offset, what)`.
    Invalid(u64, String),
}

impl ControlMapping {
    /// Writes a new control file at `path` (zeros, then the header naming `build_id`) and maps
    /// it. Only the first process to open a queue calls this, while no other has it open.
    pub(crate) fn build(storage: &dyn Storage, path: &Path, build_id: u64) -> io::Result<Self> {
        #[cfg(any(test, feature = "sim"))]
        if let Some(sim) = storage.as_sim() {
            let page = sim.build_control(path, &encode_header(build_id), CONTROL_LEN)?;
            return Ok(Self::of_sim_page(page, path));
        }
        let _ = storage;
        let file = super::open_or_create_regular(path)?;
        let in_file =
            |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        // Every byte written, never a hole: a store into a hole of a full disk is a SIGBUS.
        file.write_all_at(&[0u8; CONTROL_LEN as usize], 0)
            .map_err(in_file)?;
        file.write_all_at(&encode_header(build_id), 0)
            .map_err(in_file)?;
        Self::of_mmap(Self::map_file(&file)?, path)
    }

    /// Maps the control file another process built; checks its header.
    pub(crate) fn attach(storage: &dyn Storage, path: &Path) -> Result<Self, AttachFailure> {
        #[cfg(any(test, feature = "sim"))]
        if let Some(sim) = storage.as_sim() {
            let page = sim
                .attach_control(path, CONTROL_LEN)
                .map_err(AttachFailure::Io)?;
            let mapping = Self::of_sim_page(page, path);
            mapping.check()?;
            return Ok(mapping);
        }
        let _ = storage;
        let file = super::open_or_create_regular(path).map_err(AttachFailure::Io)?;
        let len = file.metadata().map_err(AttachFailure::Io)?.len();
        if len < CONTROL_LEN {
            return Err(AttachFailure::Invalid(
                len,
                format!("control file is {len} bytes, expected {CONTROL_LEN}"),
            ));
        }
        let map = Self::map_file(&file).map_err(AttachFailure::Io)?;
        if let Some(version) = other_layout_version(&map) {
            return Err(AttachFailure::OtherVersion(version));
        }
        check_header(&map).map_err(|(offset, what)| AttachFailure::Invalid(offset, what))?;
        Self::of_mmap(map, path).map_err(AttachFailure::Io)
    }

    /// Checks the header of a simulated page (read word by word: others may store into it).
    #[cfg(any(test, feature = "sim"))]
    fn check(&self) -> Result<(), AttachFailure> {
        let mut header = vec![0u8; CONTROL_LEN as usize];
        for (index, chunk) in header.chunks_exact_mut(8).enumerate() {
            let word = self
                .word64(index * 8)
                .load(std::sync::atomic::Ordering::Acquire);
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        if let Some(version) = other_layout_version(&header) {
            return Err(AttachFailure::OtherVersion(version));
        }
        check_header(&header)
            .map(|_| ())
            .map_err(|(offset, what)| AttachFailure::Invalid(offset, what))
    }

    #[cfg(any(test, feature = "sim"))]
    fn of_sim_page(page: std::sync::Arc<super::sim::SharedPage>, path: &Path) -> Self {
        ControlMapping {
            base: page.base(),
            _owner: Box::new(page),
            path: path.to_path_buf(),
        }
    }

    fn map_file(file: &File) -> io::Result<memmap2::MmapMut> {
        // SAFETY: the control file is never shortened while a queue maps it (it is only ever
        // written whole, at its full length, by a first opener while nobody has it mapped), and
        // every access to the mapping goes through atomics (`word32`, `word64`), so concurrent
        // stores by other processes are no data race in this one.
        unsafe {
            memmap2::MmapOptions::new()
                .len(CONTROL_LEN as usize)
                .map_mut(file)
        }
    }

    fn of_mmap(mut map: memmap2::MmapMut, path: &Path) -> io::Result<Self> {
        let base = std::ptr::NonNull::new(map.as_mut_ptr())
            .ok_or_else(|| io::Error::other("control file mapped at address zero"))?;
        Ok(ControlMapping {
            base,
            // The mapping's memory does not move when the `MmapMut` does.
            _owner: Box::new(map),
            path: path.to_path_buf(),
        })
    }

    /// The 8-byte word at `offset` (a `format::control` constant: aligned, inside the page).
    #[inline]
    pub(crate) fn word64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(
            offset.is_multiple_of(8) && offset + 8 <= CONTROL_LEN as usize,
            "control offset {offset}"
        );
        // One AND instead of a check on every access (a push makes about twenty): whatever
        // `offset` is, the word is inside the page and aligned.
        let offset = offset & (CONTROL_LEN as usize - 8);
        // SAFETY: `offset` is a multiple of 8 below `CONTROL_LEN - 7` (the mask above), the
        // memory is `CONTROL_LEN` bytes long and 8-byte aligned, it lives as long as `self`, and
        // every access to these bytes is atomic.
        unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// The 4-byte word at `offset` (a `format::control` constant: aligned, inside the page).
    #[inline]
    pub(crate) fn word32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(
            offset.is_multiple_of(4) && offset + 4 <= CONTROL_LEN as usize,
            "control offset {offset}"
        );
        let offset = offset & (CONTROL_LEN as usize - 4);
        // SAFETY: `offset` is a multiple of 4 below `CONTROL_LEN - 3` (the mask above), the
        // memory is `CONTROL_LEN` bytes long and 8-byte aligned, it lives as long as `self`, and
        // every access to these bytes is atomic.
        unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU32) }
    }
}

/// Sleeps until `word` may no longer hold `seen`, another process wakes it, or `timeout`
/// passes (spurious wake-ups are possible: callers check again).
pub(crate) fn wait_for_change(word: &AtomicU32, seen: u32, timeout: Duration) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let timeout = rustix::thread::futex::Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // Not FUTEX_PRIVATE: the word is in a mapping shared with other processes.
        let _ = rustix::thread::futex::wait(
            word,
            rustix::thread::futex::Flags::empty(),
            seen,
            Some(&timeout),
        );
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        // No futex: look again after at most a millisecond (memory, not the disk).
        let _ = (word, seen);
        std::thread::sleep(timeout.min(Duration::from_millis(1)));
    }
}

/// The largest count `FUTEX_WAKE` takes: every sleeper.
#[cfg(any(target_os = "linux", target_os = "android"))]
const WAKE_ALL: u32 = i32::MAX as u32;

/// Wakes every process sleeping in [`wait_for_change`] on `word`; returns how many it woke
/// (where the system says).
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // The kernel reads the count as an `int`: `u32::MAX` would be -1, which wakes one.
        rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), WAKE_ALL)
            .unwrap_or(0)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = word;
        0
    }
}

/// Wakes one process sleeping in [`wait_for_change`] on `word`.
pub(crate) fn wake_one(word: &AtomicU32) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = rustix::thread::futex::wake(word, rustix::thread::futex::Flags::empty(), 1);
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = word;
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::{mpsc, Arc};

    /// Whether thread `tid` of this process is asleep (state `S` in its `stat`).
    fn asleep(tid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
            .ok()
            .and_then(|stat| {
                let after_name = stat.rfind(')')?;
                stat[after_name + 1..].trim_start().chars().next()
            })
            == Some('S')
    }

    #[test]
    fn wake_all_wakes_every_sleeper_at_once() {
        const SLEEPERS: usize = 4;
        let word = Arc::new(AtomicU32::new(0));
        let (tids, started) = mpsc::channel();
        let threads: Vec<_> = (0..SLEEPERS)
            .map(|_| {
                let (word, tids) = (word.clone(), tids.clone());
                std::thread::spawn(move || {
                    tids.send(rustix::thread::gettid().as_raw_nonzero().get())
                        .unwrap();
                    while word.load(Ordering::SeqCst) == 0 {
                        wait_for_change(&word, 0, Duration::from_secs(60));
                    }
                })
            })
            .collect();
        let tids: Vec<i32> = (0..SLEEPERS).map(|_| started.recv().unwrap()).collect();
        // Nothing else puts these threads to sleep: once all are asleep, all are in the wait.
        while !tids.iter().all(|&tid| asleep(tid)) {
            std::thread::yield_now();
        }
        let woken = wake_all(&word);
        word.store(1, Ordering::SeqCst);
        while threads.iter().any(|thread| !thread.is_finished()) {
            wake_all(&word);
            std::thread::yield_now();
        }
        // Before the fix the count was `u32::MAX`, which the kernel reads as -1: one woken.
        assert_eq!(woken, SLEEPERS, "one wake-up for every sleeper");
    }
}
