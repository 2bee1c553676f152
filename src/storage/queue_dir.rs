//! The queue directory through the seam: the files that the engine and the tools read and
//! write the same way, so that each rule (what makes a directory a queue, how the settings file
//! is read and replaced) has one implementation.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::format::control::{slot_pid_at, SLOT_COUNT};
use crate::format::layout::parse_segment_file_name;
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::layout::LOCK_FILE_NAME;
use crate::format::layout::SETTINGS_FILE_NAME;
use crate::format::layout::{slot_file_name, CONTROL_FILE_NAME, PROCS_DIR_NAME};
use crate::format::settings::{decode_settings, encode_settings, QueueSettings};
use crate::storage::process::{ControlMapping, LockFile};
use crate::storage::{self, DirLock, LockFailure, Storage};

/// Reads a queue's settings file: `None` when there is none (a queue created before settings
/// files existed, or no queue at all), a corrupt error naming the file when it does not decode.
pub fn read_settings(storage: &dyn Storage, dir: &Path) -> Result<Option<QueueSettings>> {
    let path = dir.join(SETTINGS_FILE_NAME);
    let file = match storage.open_read(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("open settings", &path, error)),
    };
    let bytes =
        storage::read_all(&*file).map_err(|error| Error::io("read settings", &path, error))?;
    decode_settings(&bytes)
        .map(Some)
        .map_err(|error| Error::corrupt(&path, 0, error.to_string()))
}

/// Replaces a queue's settings file durably (write a temporary file, sync, rename, sync the
/// directory).
pub fn write_settings(storage: &dyn Storage, dir: &Path, settings: &QueueSettings) -> Result<()> {
    storage::write_atomically(storage, dir, SETTINGS_FILE_NAME, &encode_settings(settings))
        .map_err(|error| Error::io("write settings", dir.join(SETTINGS_FILE_NAME), error))
}

fn exists(storage: &dyn Storage, path: &Path) -> Result<bool> {
    match storage.open_read(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(Error::io("open", path, error)),
    }
}

/// Whether the queue in `dir` is still to be created: neither a settings file nor a head index.
pub fn is_new_queue(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    Ok(!exists(storage, &dir.join(SETTINGS_FILE_NAME))?
        && !exists(storage, &dir.join(HEAD_FILE_NAME))?)
}

/// Whether `dir` holds a queue: a settings file, a head index or a segment file. A directory
/// that does not exist holds none.
pub fn is_queue(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    let mut found = false;
    let visited = storage.visit_dir(dir, &mut |name| {
        found |= name == SETTINGS_FILE_NAME
            || name == HEAD_FILE_NAME
            || parse_segment_file_name(name).is_some();
    });
    match visited {
        Ok(()) => Ok(found),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(Error::io("list queue directory", dir, error)),
    }
}

/// Refuses to change another user's queue unless the process is root (see [`Error::NotOwner`]).
/// A directory that does not exist yet will be this process's own.
pub fn check_owner(storage: &dyn Storage, dir: &Path) -> Result<()> {
    match storage.dir_owner(dir) {
        Ok(Some(owner)) if !owner.is_process && !owner.process_is_root => Err(Error::NotOwner {
            dir: dir.to_path_buf(),
            owner: owner.uid,
        }),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io("stat queue directory", dir, error)),
    }
}

/// Creates `dir` if needed and takes its exclusive lock.
pub fn create_and_lock(storage: &dyn Storage, dir: &Path) -> Result<DirLock> {
    create_and_lock_with_mode(storage, dir, None)
}

/// Like [`create_and_lock`]; when `new_dir_mode` is given and the directory holds no queue yet
/// (no settings file, no head), its mode is set first, so that every file in it, the lock file
/// included, gets its read and write bits.
pub fn create_and_lock_with_mode(
    storage: &dyn Storage,
    dir: &Path,
    new_dir_mode: Option<u32>,
) -> Result<DirLock> {
    create_with_mode(storage, dir, new_dir_mode)?;
    storage
        .lock_dir(dir)
        .map_err(|failure| lock_failure(storage, dir, failure))
}

/// The error for a failure to take `dir`'s exclusive lock: [`Error::Locked`] naming the
/// exclusive holder, or else the processes of the shared handles that have the queue open.
pub(crate) fn lock_failure(storage: &dyn Storage, dir: &Path, failure: LockFailure) -> Error {
    match failure {
        LockFailure::Held { pid } => Error::Locked {
            dir: dir.to_path_buf(),
            pid,
            shared_by: match pid {
                Some(_) => Box::default(),
                None => sharing_processes(storage, dir).into_boxed_slice(),
            },
        },
        LockFailure::Io(error) => Error::io("lock", dir.join(LOCK_FILE_NAME), error),
    }
}

/// The ids of the processes whose shared handles have the queue in `dir` open, each once: the
/// slots of its control file that name a process and whose slot file (`procs/<slot>`) is
/// locked. Advice (a handle may open or close meanwhile), for messages and `spool stat`; empty
/// when the queue has no control file, or one this version does not read.
pub fn sharing_processes(storage: &dyn Storage, dir: &Path) -> Vec<u32> {
    let path = dir.join(CONTROL_FILE_NAME);
    // Looked for first: attaching would create it.
    if storage.open_read(&path).is_err() {
        return Vec::new();
    }
    // Read through a mapping, as the handles store into it.
    let Ok(control) = ControlMapping::attach(storage, &path) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = Vec::new();
    for slot in 0..SLOT_COUNT {
        let pid = control.word32(slot_pid_at(slot)).load(Ordering::Acquire);
        if pid == 0 || pids.contains(&pid) {
            continue;
        }
        let path = dir.join(PROCS_DIR_NAME).join(slot_file_name(slot));
        // Opening creates a missing file, but a slot names a pid only once its handle
        // created its file.
        let Ok(slot_file) = LockFile::open(storage, &path) else {
            continue;
        };
        // Free when its last handle closed or died.
        if slot_file.is_held_by_another() {
            pids.push(pid);
        }
    }
    pids
}

/// Creates a queue directory if missing; a new one (holding nothing yet) gets `new_dir_mode`.
pub fn create_with_mode(
    storage: &dyn Storage,
    dir: &Path,
    new_dir_mode: Option<u32>,
) -> Result<()> {
    storage
        .create_dir_all(dir)
        .map_err(|error| Error::io("create directory", dir, error))?;
    if let Some(mode) = new_dir_mode {
        if is_new_queue(storage, dir)? {
            storage
                .set_dir_mode(dir, mode)
                .map_err(|error| Error::io("set queue directory mode", dir, error))?;
        }
    }
    Ok(())
}
