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

use crate::error::Result;
use crate::format::segment::{SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};

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
