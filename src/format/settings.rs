//! The queue's settings file (`settings`): what a queue was created with, so that every open, in
//! any process, and every `spool` command use the same rules. Its presence also marks a
//! directory as a queue (with `head`, for queues created before it existed).
//!
//! ```text
//! offset size field
//!      0    8  magic          "DSPOOLQS"
//!      8    2  version        SETTINGS_VERSION
//!     10    2  len            SETTINGS_FILE_LEN
//!     12    4  reserved       zero
//!     16    8  segment_size   bytes; new segments are rolled at this size
//!     24   36  reserved       zero
//!     60    4  crc32          CRC-32 of bytes 0..60
//! ```
//!
//! The file is replaced whole (`settings.tmp`, sync, rename, directory sync), never edited in
//! place, so a crash leaves the old or the new settings, never a mix.

use std::io;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::head::HEAD_FILE_NAME;
use crate::format::segment::parse_segment_file_name;
use crate::options::{Options, SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
use crate::storage::{self, Storage};

/// The settings file's name inside a queue directory.
pub const SETTINGS_FILE_NAME: &str = "settings";
/// The settings file's magic bytes.
pub const SETTINGS_MAGIC: [u8; 8] = *b"DSPOOLQS";
/// The settings file layout this build reads and writes.
pub const SETTINGS_VERSION: u16 = 1;
/// The settings file's length in bytes.
pub const SETTINGS_FILE_LEN: usize = CRC_OFFSET + 4;

const VERSION_OFFSET: usize = 8;
const LEN_OFFSET: usize = VERSION_OFFSET + 2;
const SEGMENT_SIZE_OFFSET: usize = LEN_OFFSET + 2 + 4;
const CRC_OFFSET: usize = SEGMENT_SIZE_OFFSET + 8 + 36;

/// What a queue was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Segments are rolled before they would exceed this many bytes.
    pub segment_size: u64,
}

impl QueueSettings {
    /// Settings with the given segment size.
    pub fn new(segment_size: u64) -> Self {
        QueueSettings { segment_size }
    }
}

/// Why the bytes of a settings file do not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// Fewer bytes than the layout needs.
    #[error("settings file is {0} bytes, expected {SETTINGS_FILE_LEN}")]
    Length(usize),
    /// The magic bytes are wrong.
    #[error("bad magic (not a diskspool settings file)")]
    Magic,
    /// The checksum does not match.
    #[error("settings checksum mismatch")]
    Checksum,
    /// Another layout version.
    #[error("settings version {0} is not supported (this build reads {SETTINGS_VERSION})")]
    Version(u16),
    /// A field holds a value no writer produces.
    #[error("{0}")]
    Field(String),
}

/// Encodes settings into the file's bytes.
pub fn encode_settings(settings: &QueueSettings) -> [u8; SETTINGS_FILE_LEN] {
    let mut bytes = [0; SETTINGS_FILE_LEN];
    bytes[..VERSION_OFFSET].copy_from_slice(&SETTINGS_MAGIC);
    bytes[VERSION_OFFSET..LEN_OFFSET].copy_from_slice(&SETTINGS_VERSION.to_le_bytes());
    bytes[LEN_OFFSET..LEN_OFFSET + 2].copy_from_slice(&(SETTINGS_FILE_LEN as u16).to_le_bytes());
    bytes[SEGMENT_SIZE_OFFSET..SEGMENT_SIZE_OFFSET + 8]
        .copy_from_slice(&settings.segment_size.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
    bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut field = [0; 2];
    field.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(field)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(field)
}

/// Decodes a settings file. Checks, in order: length, magic, checksum, version, the length
/// field, the reserved bytes and the segment size's range.
pub fn decode_settings(bytes: &[u8]) -> Result<QueueSettings, SettingsError> {
    if bytes.len() != SETTINGS_FILE_LEN {
        return Err(SettingsError::Length(bytes.len()));
    }
    if bytes[..VERSION_OFFSET] != SETTINGS_MAGIC {
        return Err(SettingsError::Magic);
    }
    let stored = u32::from_le_bytes([
        bytes[CRC_OFFSET],
        bytes[CRC_OFFSET + 1],
        bytes[CRC_OFFSET + 2],
        bytes[CRC_OFFSET + 3],
    ]);
    if crc32fast::hash(&bytes[..CRC_OFFSET]) != stored {
        return Err(SettingsError::Checksum);
    }
    let version = read_u16(bytes, VERSION_OFFSET);
    if version != SETTINGS_VERSION {
        return Err(SettingsError::Version(version));
    }
    let len = read_u16(bytes, LEN_OFFSET);
    if usize::from(len) != SETTINGS_FILE_LEN {
        return Err(SettingsError::Field(format!(
            "length field {len}, expected {SETTINGS_FILE_LEN}"
        )));
    }
    let reserved_zero = bytes[LEN_OFFSET + 2..SEGMENT_SIZE_OFFSET]
        .iter()
        .chain(&bytes[SEGMENT_SIZE_OFFSET + 8..CRC_OFFSET])
        .all(|&byte| byte == 0);
    if !reserved_zero {
        return Err(SettingsError::Field(String::from(
            "reserved bytes are not zero",
        )));
    }
    let segment_size = read_u64(bytes, SEGMENT_SIZE_OFFSET);
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&segment_size) {
        return Err(SettingsError::Field(format!(
            "segment_size {segment_size} is outside {SEGMENT_SIZE_MIN}..={SEGMENT_SIZE_MAX}"
        )));
    }
    Ok(QueueSettings { segment_size })
}

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
pub(crate) fn write_settings(
    storage: &dyn Storage,
    dir: &Path,
    settings: &QueueSettings,
) -> Result<()> {
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
pub(crate) fn is_new_queue(storage: &dyn Storage, dir: &Path) -> Result<bool> {
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

/// Settles the settings an open uses, with the directory locked: the stored ones, unless the
/// caller set them explicitly, in which case they replace the stored ones. A queue without a
/// settings file (new, or created before settings files existed) gets one.
pub(crate) fn settle_at_open(
    storage: &dyn Storage,
    dir: &Path,
    options: &mut Options,
) -> Result<()> {
    // A replacement a crash interrupted: the old file is whole (the rename is atomic).
    let tmp_path = dir.join(format!("{SETTINGS_FILE_NAME}.tmp"));
    match storage.remove_file(&tmp_path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::io("remove leftover", &tmp_path, error)),
    }
    let stored = read_settings(storage, dir)?;
    match stored {
        Some(stored) if !options.segment_size_explicit => {
            options.segment_size = stored.segment_size;
            Ok(())
        }
        Some(stored) if stored.segment_size == options.segment_size => Ok(()),
        _ => write_settings(storage, dir, &QueueSettings::new(options.segment_size)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let settings = QueueSettings::new(1 << 20);
        assert_eq!(decode_settings(&encode_settings(&settings)), Ok(settings));
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encode_settings(&QueueSettings::new(4096));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes;
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode_settings(&damaged).is_err(),
                "bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn short_and_zeroed_files_are_refused() {
        let bytes = encode_settings(&QueueSettings::new(4096));
        assert_eq!(
            decode_settings(&bytes[..10]),
            Err(SettingsError::Length(10))
        );
        assert_eq!(
            decode_settings(&[0; SETTINGS_FILE_LEN]),
            Err(SettingsError::Magic)
        );
    }

    #[test]
    fn a_segment_size_out_of_range_is_refused_even_with_a_valid_checksum() {
        let mut bytes = encode_settings(&QueueSettings::new(4096));
        bytes[SEGMENT_SIZE_OFFSET..SEGMENT_SIZE_OFFSET + 8].copy_from_slice(&1u64.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_settings(&bytes),
            Err(SettingsError::Field(_))
        ));
    }
}
