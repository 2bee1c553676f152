//! The queue directory through the seam: the files that the engine and the tools read and
//! write the same way, so that each rule (what makes a directory a queue, how the settings file
//! is read and replaced) has one implementation.

use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::layout::parse_segment_file_name;
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::layout::SETTINGS_FILE_NAME;
use crate::format::settings::{decode_settings, encode_settings, QueueSettings};
use crate::storage::{self, Storage};

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
