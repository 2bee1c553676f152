//! The persisted head index: which records have been consumed.
//!
//! One file, `head`, holding two 64-byte slots, at offsets 0 and 4096 so that they never share a
//! page or a sector:
//!
//! ```text
//! offset  size  field
//!      0     8  magic        b"DSPOOLHD"
//!      8     2  version      HEAD_FORMAT_VERSION (2)
//!     10     2  slot_len     64
//!     12     4  reserved     zero
//!     16     8  generation   incremented on every write; the valid slot with the highest wins
//!     24     8  head_seq     every record below this sequence number is consumed
//!     32     8  hint_base    base sequence of the segment holding head_seq (a hint)
//!     40     8  hint_offset  byte offset of head_seq's frame in that segment (a hint)
//!     48     8  synced_seq   every record below this sequence number was synced (0: unknown)
//!     56     4  reserved     zero
//!     60     4  crc32        CRC-32 of bytes 0..60
//! ```
//!
//! Updates overwrite only the slot that does not hold the newest *durable* generation, so a torn
//! write (power loss mid-update) can only damage a slot whose content was not yet promised to
//! anyone; the other slot still holds the last durable head. The durable slot flips only after a
//! sync that is known to cover the newest write (see `HeadIndex::sync`).

use crate::error::Result;
use crate::format::frame::{read_u32, read_u64, SEQ_LIMIT};

/// The format version of the head index this build reads and writes (its own: a change to
/// the segment format does not change it).
pub const HEAD_FORMAT_VERSION: u16 = 2;
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
const SYNCED_SEQ_OFFSET: usize = HINT_OFFSET_OFFSET + 8;
const CRC_OFFSET: usize = SYNCED_SEQ_OFFSET + 8 + 4;

/// What one slot records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadState {
    /// Every record below this sequence number is consumed.
    pub head_seq: u64,
    /// Base sequence of the segment where `head_seq` lies (a hint, verified on use).
    pub hint_base: u64,
    /// Offset of `head_seq`'s frame in that segment (a hint, verified on use).
    pub hint_offset: u64,
    /// Every record below this sequence number had been synced to stable storage when the slot
    /// was written (0 when not known, as in files written before the field existed). Recovery
    /// uses it to tell unsynced writes that a power loss persisted out of order, which may be
    /// cut, from damage to synced records, which must not be.
    pub synced_seq: u64,
}

/// A decoded slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSlot {
    /// The write counter.
    pub generation: u64,
    /// The recorded state.
    pub state: HeadState,
}

/// Generations are below this bound. A head file is written far fewer than 2^63 times, so a
/// larger generation was never written by diskspool; rejecting it keeps `generation + 1` from
/// overflowing.
pub const GENERATION_LIMIT: u64 = 1 << 63;

impl HeadSlot {
    /// Why a slot whose checksum matches cannot be used: a value no head written by diskspool
    /// holds (a sequence number beyond [`SEQ_LIMIT`], a generation at or beyond
    /// [`GENERATION_LIMIT`]). A torn write never produces a matching checksum, so such a slot
    /// is damage or a forged file, and is refused rather than skipped.
    pub fn out_of_range(&self) -> Option<String> {
        let state = &self.state;
        if state.head_seq > SEQ_LIMIT {
            return Some(format!(
                "head_seq {} is beyond the largest sequence number, {}",
                state.head_seq,
                SEQ_LIMIT - 1
            ));
        }
        if state.synced_seq > SEQ_LIMIT {
            return Some(format!(
                "synced_seq {} is beyond the largest sequence number, {}",
                state.synced_seq,
                SEQ_LIMIT - 1
            ));
        }
        if self.generation >= GENERATION_LIMIT {
            return Some(format!(
                "generation {} is beyond the largest one, {}",
                self.generation,
                GENERATION_LIMIT - 1
            ));
        }
        None
    }
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
    bytes[VERSION_OFFSET..SLOT_LEN_OFFSET].copy_from_slice(&HEAD_FORMAT_VERSION.to_le_bytes());
    bytes[SLOT_LEN_OFFSET..SLOT_LEN_OFFSET + 2]
        .copy_from_slice(&(HEAD_SLOT_LEN as u16).to_le_bytes());
    bytes[GENERATION_OFFSET..HEAD_SEQ_OFFSET].copy_from_slice(&slot.generation.to_le_bytes());
    bytes[HEAD_SEQ_OFFSET..HINT_BASE_OFFSET].copy_from_slice(&slot.state.head_seq.to_le_bytes());
    bytes[HINT_BASE_OFFSET..HINT_OFFSET_OFFSET]
        .copy_from_slice(&slot.state.hint_base.to_le_bytes());
    bytes[HINT_OFFSET_OFFSET..HINT_OFFSET_OFFSET + 8]
        .copy_from_slice(&slot.state.hint_offset.to_le_bytes());
    bytes[SYNCED_SEQ_OFFSET..SYNCED_SEQ_OFFSET + 8]
        .copy_from_slice(&slot.state.synced_seq.to_le_bytes());
    let crc = crate::format::frame::crc32(&bytes[..CRC_OFFSET]);
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
    if read_u32(bytes, CRC_OFFSET) != crate::format::frame::crc32(&bytes[..CRC_OFFSET]) {
        return Err(SlotError::Checksum);
    }
    let version = u16::from_le_bytes([bytes[VERSION_OFFSET], bytes[VERSION_OFFSET + 1]]);
    if version != HEAD_FORMAT_VERSION {
        return Err(SlotError::UnsupportedVersion(version));
    }
    Ok(HeadSlot {
        generation: read_u64(bytes, GENERATION_OFFSET),
        state: HeadState {
            head_seq: read_u64(bytes, HEAD_SEQ_OFFSET),
            hint_base: read_u64(bytes, HINT_BASE_OFFSET),
            hint_offset: read_u64(bytes, HINT_OFFSET_OFFSET),
            synced_seq: read_u64(bytes, SYNCED_SEQ_OFFSET),
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

impl HeadRead {
    /// The slots that are damaged: one that fails its checks, or one that is all zero although
    /// it was written. A new queue writes generation 1 into slot 0 and nothing into slot 1, and
    /// every later write goes into the other slot; so once a valid slot is past generation 1,
    /// both slots have been written, and an all-zero slot was wiped rather than never written.
    pub fn damaged_slots(&self) -> Vec<usize> {
        let newest_generation = self
            .slots
            .iter()
            .filter_map(|slot| slot.as_ref().ok())
            .map(|slot| slot.generation)
            .max()
            .unwrap_or(0);
        (0..self.slots.len())
            .filter(|&index| match &self.slots[index] {
                Ok(_) => false,
                Err(SlotError::Empty) => newest_generation > 1,
                Err(_) => true,
            })
            .collect()
    }
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
                synced_seq: head_seq,
            },
        }
    }

    #[test]
    fn values_out_of_range_are_named() {
        assert_eq!(slot(1, SEQ_LIMIT).out_of_range(), None);
        assert!(slot(1, SEQ_LIMIT + 1).out_of_range().is_some());
        assert!(slot(GENERATION_LIMIT, 1).out_of_range().is_some());
        assert_eq!(slot(GENERATION_LIMIT - 1, 1).out_of_range(), None);
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
