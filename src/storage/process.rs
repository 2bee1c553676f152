//! What processes sharing a queue coordinate through, beside its files: `flock`ed lock files,
//! the mapped control file (`format::control`) and futex wake-ups. The real filesystem only
//! (see `Storage::shares_between_processes`).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use crate::format::control::{check_header, encode_header, CONTROL_LEN};

/// A lock file, opened (never through a symbolic link) and created if missing. Its `flock`s are
/// taken and released with `File::lock` and friends; they belong to this open file, so two
/// handles in one process exclude each other like two processes do.
pub(crate) fn open_lock_file(path: &Path) -> io::Result<File> {
    super::open_or_create_regular(path)
}

/// The pid an exclusive handle wrote into the lock file (advice for error messages).
pub(crate) fn holder_pid(file: &File) -> Option<u32> {
    super::read_pid(file)
}

/// Creates a folder of the queue directory (`procs/`): see `create_dir_like_parent`.
pub(crate) fn create_dir_in_queue(dir: &Path) -> io::Result<()> {
    super::create_dir_like_parent(dir)
}

/// The control file, mapped shared.
pub(crate) struct ControlMapping {
    map: memmap2::MmapMut,
    path: PathBuf,
}

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
    /// Its header does not check out: `(offset, what)`.
    Invalid(u64, String),
}

impl ControlMapping {
    /// Writes a new control file at `path` (zeros, then the header naming `build_id`) and maps
    /// it. Only the first process to open a queue calls this, while no other has it open.
    pub(crate) fn build(path: &Path, build_id: u64) -> io::Result<Self> {
        let file = open_lock_file(path)?;
        let in_file =
            |error: io::Error| io::Error::new(error.kind(), format!("{}: {error}", path.display()));
        // Every byte written, never a hole: a store into a hole of a full disk is a SIGBUS.
        file.write_all_at(&[0u8; CONTROL_LEN as usize], 0)
            .map_err(in_file)?;
        file.write_all_at(&encode_header(build_id), 0)
            .map_err(in_file)?;
        Self::map(file, path)
    }

    /// Maps the control file another process built; checks its header.
    pub(crate) fn attach(path: &Path) -> Result<Self, AttachFailure> {
        let file = open_lock_file(path).map_err(AttachFailure::Io)?;
        let len = file.metadata().map_err(AttachFailure::Io)?.len();
        if len < CONTROL_LEN {
            return Err(AttachFailure::Invalid(
                len,
                format!("control file is {len} bytes, expected {CONTROL_LEN}"),
            ));
        }
        let mapping = Self::map(file, path).map_err(AttachFailure::Io)?;
        check_header(&mapping.map)
            .map_err(|(offset, what)| AttachFailure::Invalid(offset, what))?;
        Ok(mapping)
    }

    fn map(file: File, path: &Path) -> io::Result<Self> {
        // SAFETY: the control file is never shortened while a queue maps it (it is only ever
        // written whole, at its full length, by a first opener while nobody has it mapped), and
        // every access to the mapping goes through atomics (`word32`, `word64`), so concurrent
        // stores by other processes are no data race in this one.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(CONTROL_LEN as usize)
                .map_mut(&file)?
        };
        Ok(ControlMapping {
            map,
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
        // mapping is `CONTROL_LEN` bytes long and page aligned, it lives as long as `self`, and
        // every access to these bytes is atomic.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
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
        // mapping is `CONTROL_LEN` bytes long and page aligned, it lives as long as `self`, and
        // every access to these bytes is atomic.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU32) }
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
