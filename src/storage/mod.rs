//! The I/O seam: every file operation the engine performs goes through [`Storage`].
//!
//! The engine never calls `std::fs` directly. [`OsStorage`] is the real filesystem; tests swap in a
//! simulated one that models what survives a power loss. The trait is deliberately small: the
//! fewer operations the engine depends on, the fewer behaviours a simulation has to get right.
//!
//! Contract that every implementation must keep, and that the engine relies on:
//! - `write_at` either writes every byte or returns an error; a failed write may leave any prefix
//!   of the bytes behind.
//! - `sync_data` makes every byte written to the file so far durable, including its length.
//! - `sync_dir` makes every create, rename and remove in the directory durable.
//! - A [`Mapping`] shows the file's bytes as they are when they are read. Callers read only bytes
//!   they know to be inside the file, so a mapping longer than the file is never touched past its
//!   end.
//! - A [`WritableMapping`] (optional: [`StorageFile::map_writable`] may return `None`) is a
//!   shared view of a range of the file: a store into it is a write to the file, in the kernel
//!   at once (so it survives a process kill) and made durable by `sync_data` like any write. The
//!   engine maps only bytes that are inside the file and already written (it writes zeros first),
//!   so no store needs new disk space: a store that did could only fail by a signal. After each
//!   store the engine calls [`WritableMapping::stored`], so that an implementation whose mapping
//!   is not the file's memory (the simulated filesystem) can apply it at that point.

pub(crate) mod forks;
pub(crate) mod process;
pub mod queue_dir;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A read-only view of a file's bytes, shared by every record that borrows from it.
pub type Mapping = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// A writable, shared view of a range of a file; see [`StorageFile::map_writable`].
pub trait WritableMapping: Send + Sync {
    /// The mapped bytes: index 0 is the file offset the mapping was made at.
    fn bytes_mut(&mut self) -> &mut [u8];

    /// Says that `bytes_mut()[from..to]` was just stored into. The engine calls it after every
    /// store, before the call that made the store returns. A real mapping needs nothing (the
    /// stores are in the kernel already; the default does nothing); a simulated one applies the
    /// bytes to the file here, as an unsynced write that a power loss may lose or tear.
    fn stored(&mut self, from: usize, to: usize) {
        let _ = (from, to);
    }
}

/// A handle that holds an exclusive lock on a queue directory until dropped.
pub type DirLock = Box<dyn Send + Sync>;

/// Why a directory lock could not be taken.
#[derive(Debug)]
pub enum LockFailure {
    /// Another handle holds the lock; `pid` is the holder's process id when it is known.
    Held {
        /// The process id written into the lock file by the holder.
        pid: Option<u32>,
    },
    /// The lock file could not be created or read.
    Io(io::Error),
}

/// Who owns a queue directory, as seen by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirOwner {
    /// The owner's user id.
    pub uid: u32,
    /// True when this process runs as the owner.
    pub is_process: bool,
    /// True when this process runs as root (which writes anyone's queue, and gives what it
    /// creates to the directory's owner).
    pub process_is_root: bool,
}

/// A filesystem as the engine sees it.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Whether this storage replays runs from a seed (the simulated filesystem): the engine then
    /// leaves the wall clock out of which calls it makes, so that a seed replays the same calls
    /// however fast the machine runs (a consumer looks whether the owners of the leases it
    /// waits for are gone at every turn, instead of at most every 10 ms). The default: no.
    fn replays_runs(&self) -> bool {
        false
    }

    /// Creates `dir` and any missing parents (private: `0700` on a real filesystem).
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes sure `dir` is a directory the queue may write into: creates it (one level,
    /// private) unless it exists, and refuses an existing entry that is a symlink or not a
    /// directory, or that belongs to another user than its parent directory. The default
    /// creates it with [`create_dir_all`](Storage::create_dir_all).
    fn ensure_private_dir(&self, dir: &Path) -> io::Result<()> {
        self.create_dir_all(dir)
    }
    /// The user id that owns `dir`, and whether this process may write in another user's
    /// queue directory anyway (it is root, and gives what it creates to the owner). `None`
    /// when the storage has no owners (the default).
    fn dir_owner(&self, dir: &Path) -> io::Result<Option<DirOwner>> {
        let _ = dir;
        Ok(None)
    }
    /// Sets the permission bits of a directory. Files created in a directory get its read and
    /// write bits (see [`OsStorage`]), so this decides theirs too. The default does nothing.
    fn set_dir_mode(&self, dir: &Path, mode: u32) -> io::Result<()> {
        let _ = (dir, mode);
        Ok(())
    }
    /// The names of the entries in `dir` (files and folders), in no particular order.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Calls `visit` with the name of each entry in `dir`, like [`list_dir`](Storage::list_dir)
    /// but without collecting the names: opening a queue lists a directory that may hold
    /// thousands of segments, and needs no name kept. The default visits `list_dir`'s names.
    fn visit_dir(&self, dir: &Path, visit: &mut dyn FnMut(&str)) -> io::Result<()> {
        for name in self.list_dir(dir)? {
            visit(&name);
        }
        Ok(())
    }
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for reading only, for tools that inspect a queue another process
    /// may be writing. Writes through the returned handle fail. The default opens it like
    /// [`open`](Storage::open), for implementations that make no difference.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open(path)
    }
    /// Creates a new, empty file; fails if it already exists.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir` that is released when the returned handle is dropped or
    /// the process dies.
    fn lock_dir(&self, dir: &Path) -> Result<DirLock, LockFailure>;

    /// Whether a queue on this storage may be shared by several processes
    /// (`Options::exclusive(false)`): the real filesystem, whose `flock`s and shared mappings
    /// the processes coordinate through, and the simulated one, which models them
    /// (`SimStorage::process`). The default is `false`.
    fn shares_between_processes(&self) -> bool {
        false
    }

    /// The kind of network or cluster filesystem `dir` lies on (`"nfs"`, `"cifs"`, `"ceph"`,
    /// `"fuse"`, ...), or `None` for a local one. Processes on other machines that open a queue
    /// there see neither this machine's shared mappings nor its futexes, so a queue shared by
    /// several processes refuses such a directory unless told that every process that opens it
    /// runs on one machine
    /// ([`Options::allow_network_filesystem`](crate::Options::allow_network_filesystem)). The
    /// default: `None`.
    fn network_filesystem(&self, dir: &Path) -> io::Result<Option<&'static str>> {
        let _ = dir;
        Ok(None)
    }

    /// The simulated filesystem behind this storage, if it is one: a queue shared by several
    /// processes then coordinates through its model of processes (lock files, the control
    /// file's shared page, process numbers; see `storage::process`) instead of the kernel's.
    /// Crate-internal: the default is `None`.
    #[cfg(any(test, feature = "sim"))]
    #[doc(hidden)]
    fn as_sim(&self) -> Option<&sim::SimStorage> {
        None
    }
}

/// An open file.
#[allow(clippy::len_without_is_empty)] // a fallible length; emptiness is never asked
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; fails if the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Writes all of `parts`, one after the other, at `offset`: one gathering write where the
    /// implementation has one, so a large payload is copied once, into the file. The default
    /// joins the parts and calls [`write_all_at`](StorageFile::write_all_at).
    fn write_all_gathered_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        self.write_all_at(&parts.concat(), offset)
    }
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data and length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Maps `len` bytes from the start of the file for reading. `len` may exceed the file's
    /// current length (the file may grow into it); an implementation may return a shorter view,
    /// in which case the caller maps again when it needs more.
    fn map(&self, len: u64) -> io::Result<Mapping>;
    /// Maps `[offset, offset + len)` for writing, shared with the file. The range must lie
    /// inside the file and be written already (the engine writes zeros first), so that no store
    /// into it needs new disk space. `offset` need not be page aligned.
    ///
    /// Returns `None` when the implementation has no writable mappings (the default): the engine
    /// then writes with [`write_all_at`](StorageFile::write_all_at) only.
    fn map_writable(&self, offset: u64, len: u64) -> io::Result<Option<Box<dyn WritableMapping>>> {
        let _ = (offset, len);
        Ok(None)
    }

    /// A hint: starts writing `[offset, offset + len)` to the device without waiting, so that a
    /// later [`sync_data`](StorageFile::sync_data) has less left to do. Makes nothing durable.
    /// The default does nothing.
    fn start_writeback(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }
}

/// A lock found held that may be held for a moment only: a `flock` belongs to the open file
/// description, which a child process shares between fork and exec, so a program that closes
/// and reopens a queue while another thread spawns a process can find its own released lock
/// still held. `lock_dir` and a shared queue's open try again for 200 ms before they report
/// the directory as locked.
pub(crate) struct MomentaryHold {
    deadline: std::time::Instant,
}

/// How long [`MomentaryHold`] tries again.
const MOMENTARY_HOLD_WINDOW: std::time::Duration = std::time::Duration::from_millis(200);

impl MomentaryHold {
    /// The window starts now.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "testkit")]
        let window = momentary_hold_hook::window().unwrap_or(MOMENTARY_HOLD_WINDOW);
        #[cfg(not(feature = "testkit"))]
        let window = MOMENTARY_HOLD_WINDOW;
        MomentaryHold {
            deadline: std::time::Instant::now() + window,
        }
    }

    /// Whether to try again: waits 2 ms and says yes while the window lasts.
    pub(crate) fn wait_again(&self) -> bool {
        let again = std::time::Instant::now() < self.deadline;
        if again {
            #[cfg(feature = "testkit")]
            momentary_hold_hook::call();
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        again
    }
}

/// A test's hold on [`MomentaryHold`] in one thread (`testkit::on_momentary_holds_in_this_thread`):
/// a window of its own, and a call at each wait, so that a test ends the hold at a known moment
/// of the wait instead of racing a timer.
#[cfg(feature = "testkit")]
pub(crate) mod momentary_hold_hook {
    use std::cell::RefCell;
    use std::time::Duration;

    /// A window, and what each wait in it calls.
    pub(crate) type Hook = (Duration, Box<dyn FnMut()>);

    thread_local! {
        static IN_THIS_THREAD: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Sets (or with `None` removes) the calling thread's hook.
    pub(crate) fn set(hook: Option<Hook>) {
        IN_THIS_THREAD.with(|slot| *slot.borrow_mut() = hook);
    }

    pub(super) fn window() -> Option<Duration> {
        IN_THIS_THREAD.with(|slot| slot.borrow().as_ref().map(|(window, _)| *window))
    }

    pub(super) fn call() {
        let taken = IN_THIS_THREAD.with(|slot| slot.borrow_mut().take());
        if let Some((window, mut call)) = taken {
            call();
            IN_THIS_THREAD.with(|slot| *slot.borrow_mut() = Some((window, call)));
        }
    }
}

/// The real filesystem.
///
/// Inside a queue directory it never follows a symbolic link and never opens anything but a
/// regular file (a FIFO, a device or a link where a queue file belongs is refused, naming it).
/// Files it creates get the read and write bits of their directory, exactly (the umask does not
/// apply), and directories it creates are `0700`; when the process is root, both are given the
/// owner and group of the directory they are created in. See `docs/SECURITY.md`.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;

impl Storage for OsStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if std::fs::symlink_metadata(dir).is_ok() {
            // It exists (the queue directory may be reached through a symlink on purpose).
            return std::fs::create_dir_all(dir);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Exactly private whatever the umask, and the parent's owner's when root made it.
        let created = File::open(dir)?;
        rustix::fs::fchmod(&created, rustix::fs::Mode::from_raw_mode(0o700))?;
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            give_to_owner_of(&created, parent)?;
        }
        Ok(())
    }

    fn dir_owner(&self, dir: &Path) -> io::Result<Option<DirOwner>> {
        let uid = std::fs::metadata(dir)?.uid();
        let process = rustix::process::geteuid();
        Ok(Some(DirOwner {
            uid,
            is_process: process.as_raw() == uid,
            process_is_root: process.is_root(),
        }))
    }

    fn set_dir_mode(&self, dir: &Path, mode: u32) -> io::Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
    }

    fn ensure_private_dir(&self, dir: &Path) -> io::Result<()> {
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {
                let created = File::open(dir)?;
                rustix::fs::fchmod(&created, rustix::fs::Mode::from_raw_mode(0o700))?;
                if let Some(parent) = dir.parent() {
                    give_to_owner_of(&created, parent)?;
                }
                return Ok(());
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        let found = std::fs::symlink_metadata(dir)?;
        if !found.file_type().is_dir() {
            return Err(refused(describe(found.file_type()), "a directory"));
        }
        let parent = dir.parent().map(std::fs::metadata).transpose()?;
        if parent.is_some_and(|parent| parent.uid() != found.uid()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "is owned by user {}, not by the owner of the directory it is in; \
                     refusing to write into it",
                    found.uid()
                ),
            ));
        }
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            // Names that are not UTF-8 cannot be ours; they are reported as strays by the caller.
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }

    fn visit_dir(&self, dir: &Path, visit: &mut dyn FnMut(&str)) -> io::Result<()> {
        // `std::fs::read_dir` allocates twice per entry (the entry and the name it hands out);
        // rustix's `Dir` once, and lends the name.
        let directory = File::open(dir)?;
        for entry in rustix::fs::Dir::read_from(&directory)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if matches!(name, b"." | b"..") {
                continue;
            }
            match std::str::from_utf8(name) {
                Ok(name) => visit(name),
                // Like `list_dir`: such a name cannot be ours; the caller sees it as a stray.
                Err(_) => visit(&String::from_utf8_lossy(name)),
            }
        }
        Ok(())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = open_regular(path, OpenOptions::new().read(true).write(true))?;
        Ok(Box::new(OsFile { file }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = open_regular(path, OpenOptions::new().read(true))?;
        Ok(Box::new(OsFile { file }))
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(OsFile {
            file: create_like_parent(path)?,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn shares_between_processes(&self) -> bool {
        true
    }

    fn network_filesystem(&self, dir: &Path) -> io::Result<Option<&'static str>> {
        let stat = rustix::fs::statfs(dir)?;
        // `f_type` is a word of the platform's width, signed on some; the magic numbers are
        // 32 bits.
        Ok(network_filesystem_named(stat.f_type as u32))
    }

    fn lock_dir(&self, dir: &Path) -> Result<DirLock, LockFailure> {
        let path = dir.join(crate::format::layout::LOCK_FILE_NAME);
        // Never through a symlink: the lock file is truncated and written below, and a link to
        // another file (run as root: any file) would have that file emptied.
        let file =
            forks::open_lock_file(|| open_or_create_regular(&path)).map_err(LockFailure::Io)?;
        // Held for a moment only, maybe (see `MomentaryHold`).
        let hold = MomentaryHold::new();
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if hold.wait_again() => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(LockFailure::Held {
                        pid: read_pid(&file),
                    })
                }
                Err(TryLockError::Error(error)) => return Err(LockFailure::Io(error)),
            }
        }
        // The pid is advice for the error message of the next opener, nothing depends on it.
        let pid = std::process::id().to_string();
        file.set_len(0).map_err(LockFailure::Io)?;
        file.write_all_at(pid.as_bytes(), 0)
            .map_err(LockFailure::Io)?;
        Ok(Box::new(LockedFile { _file: file }))
    }
}

/// Creates a folder inside a queue directory with the queue directory's permission bits,
/// owned (when the process is root) by its owner and group, as the files there are; an existing
/// one must be a real folder owned by the queue directory's owner. Never through a symbolic
/// link. The error names the path.
pub(crate) fn create_dir_like_parent(dir: &Path) -> io::Result<()> {
    let parent = dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent_meta = std::fs::metadata(parent).map_err(|error| in_file(parent, error))?;
    let mode = parent_meta.mode() & 0o777;
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {
            let created = File::open(dir).map_err(|error| in_file(dir, error))?;
            rustix::fs::fchmod(&created, rustix::fs::Mode::from_raw_mode(mode))
                .map_err(|error| in_file(dir, error.into()))?;
            give_to_owner_of(&created, parent).map_err(|error| in_file(dir, error))?;
            return Ok(());
        }
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(in_file(dir, error)),
    }
    let found = std::fs::symlink_metadata(dir).map_err(|error| in_file(dir, error))?;
    if !found.file_type().is_dir() {
        return Err(in_file(
            dir,
            refused(describe(found.file_type()), "a directory"),
        ));
    }
    if found.uid() != parent_meta.uid() {
        return Err(in_file(
            dir,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "is owned by user {}, not by the owner of the directory it is in; refusing \
                     to use it",
                    found.uid()
                ),
            ),
        ));
    }
    Ok(())
}

/// The network and cluster filesystems, by the magic number `statfs` gives (Linux's
/// `linux/magic.h` and the filesystems' own sources). FUSE is among them: sshfs, s3fs and
/// virtiofs are FUSE filesystems, and FUSE does not say where its files live.
const NETWORK_FILESYSTEMS: [(u32, &str); 17] = [
    (0x0000_6969, "nfs"),
    (0x0000_517B, "smb"),
    (0xFF53_4D42, "cifs"),
    (0xFE53_4D42, "smb2"),
    (0x00C3_6400, "ceph"),
    (0x6573_5546, "fuse"),
    (0x0102_1997, "9p"),
    (0x5346_414F, "afs"),
    (0x6B41_4653, "kafs"),
    (0x7375_7245, "coda"),
    (0x0000_564C, "ncp"),
    (0x7461_636F, "ocfs2"),
    (0x0116_1970, "gfs2"),
    (0x0BD0_0BD0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x786F_4256, "vboxsf"),
    (0x2003_0528, "orangefs"),
];

/// The name of the network or cluster filesystem whose `statfs` magic number is `magic`;
/// `None` for any other (a local filesystem, or one this list does not know).
fn network_filesystem_named(magic: u32) -> Option<&'static str> {
    NETWORK_FILESYSTEMS
        .iter()
        .find(|(known, _)| *known == magic)
        .map(|&(_, name)| name)
}

/// Opens a regular file for reading and writing, creating it (with its directory's permissions)
/// when it does not exist; never through a symbolic link. The error names the path.
pub(crate) fn open_or_create_regular(path: &Path) -> io::Result<File> {
    match open_regular(path, OpenOptions::new().read(true).write(true)) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => match create_like_parent(path) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                open_regular(path, OpenOptions::new().read(true).write(true))
            }
            created => created,
        },
        opened => opened,
    }
    .map_err(|error| in_file(path, error))
}

/// The kind of a file that is not a regular one, for error messages.
fn describe(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn refused(found: &str, wanted: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("is {found} where diskspool keeps {wanted}; refusing to use it"),
    )
}

/// Names the file in an error that does not (the lock file's errors are shown alone).
fn in_file(path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

/// Opens a file inside a queue directory: never through a symbolic link (`O_NOFOLLOW`), never
/// blocking on a FIFO (`O_NONBLOCK`, which does nothing to a regular file), and only when it is
/// a regular file. Whoever can write the directory could otherwise point a name the engine
/// writes at any file the process may write, or make it hang on a FIFO.
fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|error| match error.raw_os_error() {
            Some(libc::ELOOP) => refused("a symbolic link", "a file"),
            _ => error,
        })?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(refused(describe(kind), "a file"));
    }
    Ok(file)
}

/// Creates a new file (never through a symlink: `O_EXCL` fails on any existing name) with the
/// read and write permissions its directory has for each class (a private 0700 directory makes
/// 0600 files, whatever the umask), owned, when the process is root, by the directory's owner
/// and group: root must not leave files the queue's owner cannot open.
fn create_like_parent(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mode = std::fs::metadata(parent)?.mode() & 0o666;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(path)?;
    rustix::fs::fchmod(&file, rustix::fs::Mode::from_raw_mode(mode))?;
    give_to_owner_of(&file, parent)?;
    Ok(file)
}

/// When the process is root, gives `file` the owner and group of `dir`.
fn give_to_owner_of(file: &File, dir: &Path) -> io::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let owner = std::fs::metadata(dir)?;
    if owner.uid() == 0 && owner.gid() == 0 {
        return Ok(());
    }
    rustix::fs::fchown(
        file,
        Some(rustix::process::Uid::from_raw(owner.uid())),
        Some(rustix::process::Gid::from_raw(owner.gid())),
    )?;
    Ok(())
}

pub(crate) fn read_pid(mut file: &File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Keeps the lock file open: the `flock` lives as long as the open file description.
struct LockedFile {
    /// Registered so that a forked child lets go of the lock (`storage::forks`).
    _file: forks::RegisteredFile,
}

#[derive(Debug)]
struct OsFile {
    file: File,
}

impl StorageFile for OsFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.file, buf, offset)
    }

    fn write_all_gathered_at(&self, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> =
            parts.iter().map(|part| io::IoSlice::new(part)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match rustix::io::pwritev(&self.file, rest, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    offset += written as u64;
                    io::IoSlice::advance_slices(&mut rest, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        if len == 0 {
            return Ok(Arc::new(Vec::<u8>::new()));
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))?;
        // SAFETY: the mapping is read-only. The engine holds the directory lock, never truncates
        // a file below bytes it has handed out, and reads only bytes inside the file, so no page
        // it touches can vanish under it (which would raise SIGBUS). Other writers to the bytes
        // are excluded by the lock; the read-only CLI commands validate every frame they read.
        let mmap = unsafe { memmap2::MmapOptions::new().len(len).map(&self.file)? };
        Ok(Arc::new(mmap))
    }

    fn map_writable(&self, offset: u64, len: u64) -> io::Result<Option<Box<dyn WritableMapping>>> {
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mapping too large"))?;
        let file_len = self.file.metadata()?.len();
        if offset.saturating_add(len as u64) > file_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "writable mapping past the end of the file",
            ));
        }
        // SAFETY: the range lies inside the file (checked above), and the engine never makes a
        // file shorter under a byte it then stores into through a mapping, so no access can
        // fault past the end: a segment is cut only under the directory lock (exclusive) or by
        // a repair that makes every writer drop its mapping (shared), and the ack log only by
        // a failed write's undo, which moves the consumer epoch so that every handle takes up
        // where the zeros written ahead of its tail end before it stores below them again.
        // Those blocks were written before the stores, so stores need no allocation (no SIGBUS
        // on a full disk). One handle stores into a mapping, under its
        // writer or reader lock, and only into bytes no reader has been given yet.
        let mmap = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(len)
                .map_mut(&self.file)?
        };
        Ok(Some(Box::new(OsWritableMapping { mmap })))
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: a system call on a descriptor this struct owns (open for the whole call) that
        // reads and writes no memory of the process. A failure only means no early writeback.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
}

struct OsWritableMapping {
    mmap: memmap2::MmapMut,
}

impl WritableMapping for OsWritableMapping {
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mmap
    }
}

/// A path joined from a queue directory, kept for error messages.
pub(crate) fn join(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

/// Reads a whole small file (used for the head index).
pub(crate) fn read_all(file: &dyn StorageFile) -> io::Result<Vec<u8>> {
    let len = file.len()?;
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))?;
    let mut buf = vec![0; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

/// Writes a whole file through the engine's atomic-replace recipe:
/// write a temporary file, sync it, rename it over `path`, sync the directory.
pub(crate) fn write_atomically(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let tmp_path = join(dir, &format!("{name}.tmp"));
    // A leftover from a crash during an earlier attempt is garbage by construction.
    match storage.remove_file(&tmp_path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let tmp = storage.create_new(&tmp_path)?;
    tmp.write_all_at(bytes, 0)?;
    tmp.sync_data()?;
    drop(tmp);
    storage.rename(&tmp_path, &join(dir, name))?;
    storage.sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visit_dir_sees_what_list_dir_lists() {
        let temp = tempfile::tempdir().unwrap();
        for name in ["00000000000000000000.seg", "head", "head.tmp", "x.free"] {
            std::fs::write(temp.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(temp.path().join("folder")).unwrap();
        // A name that is not UTF-8 is visited lossily, as `list_dir` lists it.
        use std::os::unix::ffi::OsStrExt;
        let odd = std::ffi::OsStr::from_bytes(b"odd\xff");
        std::fs::write(temp.path().join(odd), b"").unwrap();
        let mut listed = OsStorage.list_dir(temp.path()).unwrap();
        let mut visited = Vec::new();
        OsStorage
            .visit_dir(temp.path(), &mut |name| visited.push(name.to_owned()))
            .unwrap();
        listed.sort();
        visited.sort();
        assert_eq!(visited, listed);
        assert_eq!(visited.len(), 6);
        let missing = OsStorage.visit_dir(&temp.path().join("missing"), &mut |_| {});
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn network_filesystems_are_told_from_local_ones_by_their_magic_number() {
        assert_eq!(network_filesystem_named(0x6969), Some("nfs"));
        assert_eq!(network_filesystem_named(0x6573_5546), Some("fuse"));
        assert_eq!(network_filesystem_named(0x00C3_6400), Some("ceph"));
        // CIFS's number has its top bit set: a signed 64-bit `f_type` holds it sign-extended
        // on some platforms, and the cast keeps its low 32 bits.
        let cifs_as_signed_word = 0xFF53_4D42_u32 as i32 as i64;
        assert_eq!(
            network_filesystem_named(cifs_as_signed_word as u32),
            Some("cifs")
        );
        // Local ones, tmpfs next to 9p's number among them.
        for local in [0xEF53, 0x0102_1994, 0x9123_683E, 0x5846_5342, 0x794C_7630] {
            assert_eq!(network_filesystem_named(local), None, "{local:#x}");
        }
        let mut names: Vec<_> = NETWORK_FILESYSTEMS.iter().map(|(_, name)| name).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            NETWORK_FILESYSTEMS.len(),
            "one name per filesystem"
        );
        let temp = tempfile::tempdir().unwrap();
        assert!(OsStorage.network_filesystem(temp.path()).is_ok());
        let missing = OsStorage.network_filesystem(&temp.path().join("missing"));
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
