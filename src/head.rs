//! The persisted head index: which records have been consumed.
//!
//! One file, `head`, holding two 64-byte slots, at offsets 0 and 4096 so that they never share a
//! page or a sector:
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"DSPOOLHD"
//!      8     2  version      FORMAT_VERSION
//!     10     2  slot_len     64
//!     12     4  reserved     zero
//!     16     8  generation   incremented on every write; the valid slot with the highest wins
//!     24     8  head_seq     every record below this sequence number is consumed
//!     32     8  hint_base    base sequence of the segment holding head_seq (a hint)
//!     40     8  hint_offset  byte offset of head_seq's frame in that segment (a hint)
//!     48    12  reserved     zero
//!     60     4  crc32        CRC-32 of bytes 0..60
//! ```
//!
//! Updates overwrite only the slot that does not hold the newest *durable* generation, so a torn
//! write (power loss mid-update) can only damage a slot whose content was not yet promised to
//! anyone; the other slot still holds the last durable head. The durable slot flips only after a
//! sync that is known to cover the newest write (see [`HeadIndex::sync`]).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::frame::{read_u32, read_u64};
use crate::segment::FORMAT_VERSION;
use crate::storage::{self, Storage, StorageFile, WritableMapping};

/// The head index's file name inside the queue directory.
pub const HEAD_FILE_NAME: &str = "head";
/// Magic bytes at the start of each head slot.
pub const HEAD_MAGIC: [u8; 8] = *b"DSPOOLHD";
/// Bytes of one slot.
pub const HEAD_SLOT_LEN: usize = CRC_OFFSET + 4;
/// File offsets of the two slots.
pub const HEAD_SLOT_OFFSETS: [u64; 2] = [0, 4096];
/// The length of a head file.
pub const HEAD_FILE_LEN: u64 = HEAD_SLOT_OFFSETS[1] + HEAD_SLOT_LEN as u64;

const VERSION_OFFSET: usize = 8;
const SLOT_LEN_OFFSET: usize = VERSION_OFFSET + 2;
const GENERATION_OFFSET: usize = SLOT_LEN_OFFSET + 2 + 4;
const HEAD_SEQ_OFFSET: usize = GENERATION_OFFSET + 8;
const HINT_BASE_OFFSET: usize = HEAD_SEQ_OFFSET + 8;
const HINT_OFFSET_OFFSET: usize = HINT_BASE_OFFSET + 8;
const CRC_OFFSET: usize = HINT_OFFSET_OFFSET + 8 + 12;

/// What one slot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadState {
    /// Every record below this sequence number is consumed.
    pub head_seq: u64,
    /// Base sequence of the segment where `head_seq` lies (a hint, verified on use).
    pub hint_base: u64,
    /// Offset of `head_seq`'s frame in that segment (a hint, verified on use).
    pub hint_offset: u64,
}

/// A decoded slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSlot {
    /// The write counter.
    pub generation: u64,
    /// The recorded state.
    pub state: HeadState,
}

/// Why a slot is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Fewer bytes than a slot.
    #[error("head slot cut short")]
    Truncated,
    /// All zero: never written.
    #[error("head slot never written")]
    Empty,
    /// Wrong magic bytes.
    #[error("head slot has bad magic bytes")]
    BadMagic,
    /// Checksum mismatch.
    #[error("head slot checksum mismatch")]
    Checksum,
    /// Written by another format version.
    #[error("head slot has unsupported format version {0}")]
    UnsupportedVersion(u16),
}

/// Encodes one slot.
pub fn encode_slot(slot: &HeadSlot) -> [u8; HEAD_SLOT_LEN] {
    let mut bytes = [0; HEAD_SLOT_LEN];
    bytes[..VERSION_OFFSET].copy_from_slice(&HEAD_MAGIC);
    bytes[VERSION_OFFSET..SLOT_LEN_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes[SLOT_LEN_OFFSET..SLOT_LEN_OFFSET + 2]
        .copy_from_slice(&(HEAD_SLOT_LEN as u16).to_le_bytes());
    bytes[GENERATION_OFFSET..HEAD_SEQ_OFFSET].copy_from_slice(&slot.generation.to_le_bytes());
    bytes[HEAD_SEQ_OFFSET..HINT_BASE_OFFSET].copy_from_slice(&slot.state.head_seq.to_le_bytes());
    bytes[HINT_BASE_OFFSET..HINT_OFFSET_OFFSET]
        .copy_from_slice(&slot.state.hint_base.to_le_bytes());
    bytes[HINT_OFFSET_OFFSET..HINT_OFFSET_OFFSET + 8]
        .copy_from_slice(&slot.state.hint_offset.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..CRC_OFFSET]);
    bytes[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// Decodes one slot.
pub fn decode_slot(bytes: &[u8]) -> Result<HeadSlot, SlotError> {
    let bytes = bytes.get(..HEAD_SLOT_LEN).ok_or(SlotError::Truncated)?;
    if bytes.iter().all(|&byte| byte == 0) {
        return Err(SlotError::Empty);
    }
    if bytes[..VERSION_OFFSET] != HEAD_MAGIC {
        return Err(SlotError::BadMagic);
    }
    if read_u32(bytes, CRC_OFFSET) != crc32fast::hash(&bytes[..CRC_OFFSET]) {
        return Err(SlotError::Checksum);
    }
    let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
    if version != FORMAT_VERSION {
        return Err(SlotError::UnsupportedVersion(version));
    }
    Ok(HeadSlot {
        generation: read_u64(bytes, GENERATION_OFFSET),
        state: HeadState {
            head_seq: read_u64(bytes, HEAD_SEQ_OFFSET),
            hint_base: read_u64(bytes, HINT_BASE_OFFSET),
            hint_offset: read_u64(bytes, HINT_OFFSET_OFFSET),
        },
    })
}

/// The result of reading both slots of a head file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRead {
    /// Each slot, decoded or with why it was rejected.
    pub slots: [Result<HeadSlot, SlotError>; 2],
    /// Index of the slot in force: the valid one with the highest generation.
    pub current: Option<usize>,
}

/// Decodes a whole head file's bytes.
pub fn decode_head_file(bytes: &[u8]) -> HeadRead {
    let slot_at = |offset: u64| -> Result<HeadSlot, SlotError> {
        let start = usize::try_from(offset).map_err(|_| SlotError::Truncated)?;
        decode_slot(bytes.get(start..).unwrap_or(&[]))
    };
    let slots = [slot_at(HEAD_SLOT_OFFSETS[0]), slot_at(HEAD_SLOT_OFFSETS[1])];
    let current = match (&slots[0], &slots[1]) {
        (Ok(a), Ok(b)) => Some(if b.generation > a.generation { 1 } else { 0 }),
        (Ok(_), Err(_)) => Some(0),
        (Err(_), Ok(_)) => Some(1),
        (Err(_), Err(_)) => None,
    };
    HeadRead { slots, current }
}

/// The open head index of a running queue.
struct MappedSlots(Box<dyn WritableMapping>);

impl std::fmt::Debug for MappedSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MappedSlots")
    }
}

#[derive(Debug)]
pub(crate) struct HeadIndex {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    /// A writable mapping of the whole file when the storage offers one: a slot update is then
    /// a 64-byte store instead of a system call (in the kernel at once all the same).
    map: Option<MappedSlots>,
    /// The generation last written.
    generation: u64,
    /// The slot that holds the newest durable generation: never overwritten.
    durable_slot: usize,
    /// True when a write has happened since the last sync.
    dirty: bool,
    state: HeadState,
}

impl HeadIndex {
    /// Creates a new head file with `state` in slot 0, atomically and durably.
    pub(crate) fn create(storage: &dyn Storage, dir: &Path, state: HeadState) -> Result<()> {
        let mut bytes = vec![0; HEAD_FILE_LEN as usize];
        let slot = encode_slot(&HeadSlot {
            generation: 1,
            state,
        });
        bytes[..HEAD_SLOT_LEN].copy_from_slice(&slot);
        storage::write_atomically(storage, dir, HEAD_FILE_NAME, &bytes)
            .map_err(|error| Error::io("create head index", dir.join(HEAD_FILE_NAME), error))
    }

    /// Opens the head file, syncs it (so that what is read is durable and may be relied on
    /// when choosing which slot to overwrite) and returns the state in force.
    pub(crate) fn open(storage: &dyn Storage, dir: &Path) -> Result<Self> {
        let path = dir.join(HEAD_FILE_NAME);
        let file = storage
            .open(&path)
            .map_err(|error| Error::io("open head index", &path, error))?;
        let bytes = storage::read_all(&*file)
            .map_err(|error| Error::io("read head index", &path, error))?;
        let read = decode_head_file(&bytes);
        let Some(current) = read.current else {
            let why = |slot: &Result<HeadSlot, SlotError>| match slot {
                Ok(_) => String::from("valid"),
                Err(error) => error.to_string(),
            };
            return Err(Error::corrupt(
                &path,
                0,
                format!(
                    "neither head slot is valid (slot 0: {}; slot 1: {}); refusing to restart \
                     from the beginning, which would deliver consumed records again",
                    why(&read.slots[0]),
                    why(&read.slots[1])
                ),
            ));
        };
        let slot = read.slots[current].clone().map_err(|error| {
            Error::corrupt(&path, HEAD_SLOT_OFFSETS[current], error.to_string())
        })?;
        file.sync_data()
            .map_err(|error| Error::io("sync head index", &path, error))?;
        // Both slots lie inside the file, which was written whole when it was created: stores
        // into the mapping need no new blocks. Without a mapping, slots are written with
        // `write_all_at`.
        let map = match file.len() {
            Ok(len) if len >= HEAD_FILE_LEN => file
                .map_writable(0, HEAD_FILE_LEN)
                .ok()
                .flatten()
                .map(MappedSlots),
            _ => None,
        };
        Ok(HeadIndex {
            path,
            file,
            map,
            generation: slot.generation,
            durable_slot: current,
            dirty: false,
            state: slot.state,
        })
    }

    pub(crate) fn state(&self) -> HeadState {
        self.state
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes `state` into the non-durable slot and returns its generation. The write reaches the
    /// kernel before this returns, so it survives a process kill.
    pub(crate) fn write(&mut self, state: HeadState) -> Result<u64> {
        let generation = self.generation + 1;
        let slot = 1 - self.durable_slot;
        let bytes = encode_slot(&HeadSlot { generation, state });
        debug_assert_eq!(decode_slot(&bytes).map(|slot| slot.state), Ok(state));
        let offset = HEAD_SLOT_OFFSETS[slot] as usize;
        let mapped = self
            .map
            .as_mut()
            .and_then(|map| map.0.bytes_mut().get_mut(offset..offset + HEAD_SLOT_LEN));
        match mapped {
            Some(target) => target.copy_from_slice(&bytes),
            None => self
                .file
                .write_all_at(&bytes, HEAD_SLOT_OFFSETS[slot])
                .map_err(|error| Error::io("write head index", &self.path, error))?,
        }
        self.generation = generation;
        self.state = state;
        self.dirty = true;
        Ok(generation)
    }

    /// Makes the newest write durable and returns its generation. The caller holds the lock
    /// that serialises writes, so no write can slip in between the sync and the slot flip.
    pub(crate) fn sync(&mut self) -> Result<u64> {
        if self.dirty {
            self.file
                .sync_data()
                .map_err(|error| Error::io("sync head index", &self.path, error))?;
            self.durable_slot = 1 - self.durable_slot;
            self.dirty = false;
        }
        Ok(self.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(generation: u64, head_seq: u64) -> HeadSlot {
        HeadSlot {
            generation,
            state: HeadState {
                head_seq,
                hint_base: 0,
                hint_offset: 32,
            },
        }
    }

    #[test]
    fn slot_round_trips() {
        let original = slot(7, 99);
        assert_eq!(decode_slot(&encode_slot(&original)), Ok(original));
    }

    #[test]
    fn newest_valid_slot_wins_and_damage_falls_back() {
        let mut file = vec![0; HEAD_FILE_LEN as usize];
        file[..HEAD_SLOT_LEN].copy_from_slice(&encode_slot(&slot(4, 10)));
        file[4096..].copy_from_slice(&encode_slot(&slot(5, 11)));
        assert_eq!(decode_head_file(&file).current, Some(1));
        file[4096 + 30] ^= 1;
        let read = decode_head_file(&file);
        assert_eq!(read.current, Some(0));
        assert_eq!(read.slots[1], Err(SlotError::Checksum));
    }

    #[test]
    fn zeroed_or_short_file_has_no_head() {
        assert_eq!(decode_head_file(&[0; 5000]).current, None);
        assert_eq!(decode_head_file(&[]).current, None);
        let short = encode_slot(&slot(1, 1));
        assert_eq!(decode_head_file(&short[..HEAD_SLOT_LEN - 1]).current, None);
    }
}
