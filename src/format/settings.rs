//! The queue's settings file (`settings`): what a queue was created with, so that every open, in
//! any process, and every `spool` command use the same rules (the segment size and the queue's
//! policies: bounds, overflow rule, maximum age, deduplication window). Its presence also marks
//! a directory as a queue (with `head`, for queues created before it existed).
//!
//! ```text
//! offset size field
//!      0    8  magic          "DSPOOLQS"
//!      8    2  version        SETTINGS_VERSION (2; version 1 files are read too)
//!     10    2  len            SETTINGS_FILE_LEN
//!     12    4  reserved       zero
//!     16    8  segment_size   bytes; new segments are rolled at this size
//!     24    8  max_records    0: no bound                      (version 2; zero in version 1)
//!     32    8  max_bytes      0: no bound                      (version 2; zero in version 1)
//!     40    8  max_age_us     microseconds; 0: records never expire     (version 2)
//!     48    8  dedup_window_us microseconds; 0: the default, 5 minutes  (version 2)
//!     56    1  overflow       0 reject, 1 drop oldest, 2 block          (version 2)
//!     57    3  reserved       zero
//!     60    4  crc32          CRC-32 of bytes 0..60
//! ```
//!
//! The file is replaced whole (`settings.tmp`, sync, rename, directory sync), never edited in
//! place, so a crash leaves the old or the new settings, never a mix.

use crate::error::Result;
use crate::format::segment::{SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};

/// The settings file's magic bytes.
pub const SETTINGS_MAGIC: [u8; 8] = *b"DSPOOLQS";
/// The settings file layout this build writes. It also reads version 1 (no policies).
pub const SETTINGS_VERSION: u16 = 2;
/// The first settings layout: the segment size only, the policy bytes reserved (zero).
pub const SETTINGS_VERSION_1: u16 = 1;
/// The settings file's length in bytes (the same in both versions).
pub const SETTINGS_FILE_LEN: usize = CRC_OFFSET + 4;

const VERSION_OFFSET: usize = 8;
const LEN_OFFSET: usize = VERSION_OFFSET + 2;
const SEGMENT_SIZE_OFFSET: usize = LEN_OFFSET + 2 + 4;
const MAX_RECORDS_OFFSET: usize = SEGMENT_SIZE_OFFSET + 8;
const MAX_BYTES_OFFSET: usize = MAX_RECORDS_OFFSET + 8;
const MAX_AGE_OFFSET: usize = MAX_BYTES_OFFSET + 8;
const DEDUP_WINDOW_OFFSET: usize = MAX_AGE_OFFSET + 8;
const OVERFLOW_OFFSET: usize = DEDUP_WINDOW_OFFSET + 8;
const CRC_OFFSET: usize = OVERFLOW_OFFSET + 4;

/// What a push does when the queue is at its bound
/// ([`Options::max_records`](crate::Options::max_records),
/// [`Options::max_bytes`](crate::Options::max_bytes)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// The push fails with [`Error::Full`](crate::Error::Full) and writes nothing (a batch is
    /// all or nothing). The default.
    #[default]
    Reject,
    /// The oldest ready records are discarded to make room (counted as discarded).
    DropOldest,
    /// The push waits until consumers make room;
    /// [`Queue::push_timeout`](crate::Queue::push_timeout) gives up with
    /// [`Error::Full`](crate::Error::Full).
    Block,
}

impl Overflow {
    /// The byte stored in the settings file.
    pub fn code(self) -> u8 {
        match self {
            Overflow::Reject => 0,
            Overflow::DropOldest => 1,
            Overflow::Block => 2,
        }
    }

    /// The rule a settings byte names, if any.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Overflow::Reject),
            1 => Some(Overflow::DropOldest),
            2 => Some(Overflow::Block),
            _ => None,
        }
    }
}

/// What a queue was created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSettings {
    /// Segments are rolled before they would exceed this many bytes.
    pub segment_size: u64,
    /// At most this many records not yet consumed; `None`: no bound.
    pub max_records: Option<u64>,
    /// At most this many bytes of frames not yet consumed; `None`: no bound.
    pub max_bytes: Option<u64>,
    /// What a push does at the bound.
    pub overflow: Overflow,
    /// Records older than this (microseconds) are never delivered; `None`: no limit.
    pub max_age_us: Option<u64>,
    /// How long a deduplication id is remembered (microseconds); `None`: the default.
    pub dedup_window_us: Option<u64>,
}

impl QueueSettings {
    /// Settings with the given segment size and no policies.
    pub fn new(segment_size: u64) -> Self {
        QueueSettings {
            segment_size,
            max_records: None,
            max_bytes: None,
            overflow: Overflow::Reject,
            max_age_us: None,
            dedup_window_us: None,
        }
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
    #[error("settings version {0} is not supported (this build reads 1 and {SETTINGS_VERSION})")]
    Version(u16),
    /// A field holds a value no writer produces.
    #[error("{0}")]
    Field(String),
}

/// Encodes settings into the file's bytes (always the current version).
pub fn encode_settings(settings: &QueueSettings) -> [u8; SETTINGS_FILE_LEN] {
    let mut bytes = [0; SETTINGS_FILE_LEN];
    bytes[..VERSION_OFFSET].copy_from_slice(&SETTINGS_MAGIC);
    bytes[VERSION_OFFSET..LEN_OFFSET].copy_from_slice(&SETTINGS_VERSION.to_le_bytes());
    bytes[LEN_OFFSET..LEN_OFFSET + 2].copy_from_slice(&(SETTINGS_FILE_LEN as u16).to_le_bytes());
    let mut put = |at: usize, value: u64| bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
    put(SEGMENT_SIZE_OFFSET, settings.segment_size);
    put(MAX_RECORDS_OFFSET, settings.max_records.unwrap_or(0));
    put(MAX_BYTES_OFFSET, settings.max_bytes.unwrap_or(0));
    put(MAX_AGE_OFFSET, settings.max_age_us.unwrap_or(0));
    put(DEDUP_WINDOW_OFFSET, settings.dedup_window_us.unwrap_or(0));
    bytes[OVERFLOW_OFFSET] = settings.overflow.code();
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

/// Decodes a settings file of version 1 or 2. Checks, in order: length, magic, checksum,
/// version, the length field, the reserved bytes (in version 1 every byte after the segment
/// size), the segment size's range and the overflow code.
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
    if version != SETTINGS_VERSION && version != SETTINGS_VERSION_1 {
        return Err(SettingsError::Version(version));
    }
    let len = read_u16(bytes, LEN_OFFSET);
    if usize::from(len) != SETTINGS_FILE_LEN {
        return Err(SettingsError::Field(format!(
            "length field {len}, expected {SETTINGS_FILE_LEN}"
        )));
    }
    // Version 1 reserved everything after the segment size.
    let reserved_from = match version {
        SETTINGS_VERSION_1 => MAX_RECORDS_OFFSET,
        _ => OVERFLOW_OFFSET + 1,
    };
    let reserved_zero = bytes[LEN_OFFSET + 2..SEGMENT_SIZE_OFFSET]
        .iter()
        .chain(&bytes[reserved_from..CRC_OFFSET])
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
    let overflow = Overflow::from_code(bytes[OVERFLOW_OFFSET]).ok_or_else(|| {
        SettingsError::Field(format!(
            "overflow code {} is not 0 (reject), 1 (drop oldest) or 2 (block)",
            bytes[OVERFLOW_OFFSET]
        ))
    })?;
    let optional = |at: usize| Some(read_u64(bytes, at)).filter(|&value| value != 0);
    Ok(QueueSettings {
        segment_size,
        max_records: optional(MAX_RECORDS_OFFSET),
        max_bytes: optional(MAX_BYTES_OFFSET),
        overflow,
        max_age_us: optional(MAX_AGE_OFFSET),
        dedup_window_us: optional(DEDUP_WINDOW_OFFSET),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let settings = QueueSettings::new(1 << 20);
        assert_eq!(decode_settings(&encode_settings(&settings)), Ok(settings));
        let policies = QueueSettings {
            max_records: Some(10),
            max_bytes: Some(1 << 20),
            overflow: Overflow::DropOldest,
            max_age_us: Some(60_000_000),
            dedup_window_us: Some(300_000_000),
            ..QueueSettings::new(4096)
        };
        assert_eq!(decode_settings(&encode_settings(&policies)), Ok(policies));
    }

    /// A version 1 file, byte by byte as the first layout wrote it.
    fn version_1_file(segment_size: u64) -> [u8; SETTINGS_FILE_LEN] {
        let mut bytes = [0; SETTINGS_FILE_LEN];
        bytes[..8].copy_from_slice(b"DSPOOLQS");
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        bytes[10..12].copy_from_slice(&64u16.to_le_bytes());
        bytes[16..24].copy_from_slice(&segment_size.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..60]);
        bytes[60..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn version_1_files_are_read_as_queues_without_policies() {
        assert_eq!(
            decode_settings(&version_1_file(8192)),
            Ok(QueueSettings::new(8192))
        );
        // Version 1 reserved the policy bytes: a non-zero one there is damage.
        let mut bytes = version_1_file(8192);
        bytes[MAX_RECORDS_OFFSET] = 1;
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_settings(&bytes),
            Err(SettingsError::Field(_))
        ));
    }

    #[test]
    fn the_documented_offsets_hold() {
        let settings = QueueSettings {
            max_records: Some(0x0101),
            max_bytes: Some(0x0202),
            overflow: Overflow::Block,
            max_age_us: Some(0x0303),
            dedup_window_us: Some(0x0404),
            ..QueueSettings::new(4096)
        };
        let bytes = encode_settings(&settings);
        assert_eq!(read_u16(&bytes, 8), 2);
        assert_eq!(read_u64(&bytes, 16), 4096);
        assert_eq!(read_u64(&bytes, 24), 0x0101);
        assert_eq!(read_u64(&bytes, 32), 0x0202);
        assert_eq!(read_u64(&bytes, 40), 0x0303);
        assert_eq!(read_u64(&bytes, 48), 0x0404);
        assert_eq!(bytes[56], 2);
        assert_eq!(&bytes[57..60], &[0, 0, 0]);
        assert_eq!(CRC_OFFSET, 60);
    }

    #[test]
    fn an_unknown_overflow_code_is_refused() {
        let mut bytes = encode_settings(&QueueSettings::new(4096));
        bytes[OVERFLOW_OFFSET] = 3;
        let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
        bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            decode_settings(&bytes),
            Err(SettingsError::Field(_))
        ));
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
