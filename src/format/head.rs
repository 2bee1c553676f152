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
//!     48     8  synced_seq   every record below this sequence number was synced (0: unknown)
//!     56     4  reserved     zero
//!     60     4  crc32        CRC-32 of bytes 0..60
//! ```
//!
//! Updates overwrite only the slot that does not hold the newest *durable* generation, so a torn
//! write (power loss mid-update) can only damage a slot whose content was not yet promised to
//! anyone; the other slot still holds the last durable head. The durable slot flips only after a
//! sync that is known to cover the newest write (see `HeadIndex::sync`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::frame::{read_u32, read_u64, SEQ_LIMIT};
use crate::format::segment::FORMAT_VERSION;
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
    bytes[VERSION_OFFSET..SLOT_LEN_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
    if version != FORMAT_VERSION {
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
    file: Arc<dyn StorageFile>,
    /// A writable mapping of the whole file when the storage offers one: a slot update is then
    /// a 64-byte store instead of a system call (in the kernel at once all the same).
    map: Option<MappedSlots>,
    /// The generation last written (or deferred).
    generation: u64,
    /// The slot that holds the newest durable generation: never overwritten.
    durable_slot: usize,
    /// True when a write has happened since the last sync.
    dirty: bool,
    state: HeadState,
    /// A group-commit sync running outside the lock (see [`HeadIndex::begin_sync`]): the
    /// generation it covers and its epoch. While it runs, the slot it syncs is not written.
    in_flight: Option<(u64, u64)>,
    /// Counts syncs started outside the lock, so a late `end_sync` recognises its own.
    sync_epoch: u64,
    /// True when `state` is newer than both slots: written while a sync was in flight, it is
    /// written into a slot by the next sync (the writer waits for that sync before returning).
    deferred: bool,
    /// The bytes last written into the non-durable slot (restored if a later write fails).
    written: Option<[u8; HEAD_SLOT_LEN]>,
}

/// How a group-commit sync of the head starts; see [`HeadIndex::begin_sync`].
pub(crate) enum SyncStart {
    /// Nothing to sync: this generation is durable already.
    Done(u64),
    /// Sync this file outside the lock, then call [`HeadIndex::end_sync`] with the rest.
    Started {
        /// The head file.
        file: Arc<dyn StorageFile>,
        /// The generation the sync covers.
        generation: u64,
        /// Identifies this sync to `end_sync`.
        epoch: u64,
    },
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
    /// when choosing which slot to overwrite) and returns the state in force. The caller
    /// [`settle`](Self::settle)s it before any other write.
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
        if let Some(why) = slot.out_of_range() {
            return Err(Error::corrupt(&path, HEAD_SLOT_OFFSETS[current], why));
        }
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
            file: Arc::from(file),
            map,
            in_flight: None,
            sync_epoch: 0,
            deferred: false,
            written: None,
            generation: slot.generation,
            durable_slot: current,
            dirty: false,
            state: slot.state,
        })
    }

    /// Writes the state in force into the other slot, durably, with `synced_seq` raised to
    /// `synced_seq` (recovery has made every record below it durable). Called once at open,
    /// before any other write.
    ///
    /// The other slot may hold a write from before a crash that never became durable, with the
    /// generation the next write will use. A torn write over those stale bytes could combine
    /// into a valid slot that was never written as such, so it is overwritten durably now.
    pub(crate) fn settle(&mut self, synced_seq: u64) -> Result<()> {
        let state = HeadState {
            synced_seq,
            ..self.state
        };
        self.write(state)?;
        self.sync()?;
        Ok(())
    }

    pub(crate) fn state(&self) -> HeadState {
        self.state
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes `state` into the non-durable slot and returns its generation. The write reaches the
    /// kernel before this returns, so it survives a process kill; except while a group-commit
    /// sync of that slot is in flight (only under `SyncPolicy::Always`, whose writers wait for a
    /// sync before they return): then the state is kept for the next sync to write.
    ///
    /// `synced_seq` never moves backwards: a record once known to be synced stays so.
    pub(crate) fn write(&mut self, mut state: HeadState) -> Result<u64> {
        state.synced_seq = state.synced_seq.max(self.state.synced_seq);
        let previous = (self.generation, self.state);
        self.generation += 1;
        self.state = state;
        if self.in_flight.is_some() {
            self.deferred = true;
            return Ok(self.generation);
        }
        if let Err(error) = self.write_slot() {
            (self.generation, self.state) = previous;
            return Err(error);
        }
        Ok(self.generation)
    }

    /// Writes the current state into the slot that is not durable.
    fn write_slot(&mut self) -> Result<()> {
        debug_assert!(
            self.in_flight.is_none(),
            "never write the slot being synced"
        );
        let slot = 1 - self.durable_slot;
        let bytes = encode_slot(&HeadSlot {
            generation: self.generation,
            state: self.state,
        });
        debug_assert_eq!(decode_slot(&bytes).map(|slot| slot.state), Ok(self.state));
        let offset = HEAD_SLOT_OFFSETS[slot] as usize;
        let mapped = self
            .map
            .as_mut()
            .and_then(|map| map.0.bytes_mut().get_mut(offset..offset + HEAD_SLOT_LEN));
        match mapped {
            // A store cannot fail half way, so nothing is kept to restore.
            Some(target) => {
                target.copy_from_slice(&bytes);
                if let Some(map) = self.map.as_mut() {
                    map.0.stored(offset, offset + HEAD_SLOT_LEN);
                }
            }
            None => {
                if let Err(error) = self.file.write_all_at(&bytes, HEAD_SLOT_OFFSETS[slot]) {
                    if let Some(previous) = self.written.filter(|_| self.dirty) {
                        // The slot held the newest head, written but not synced yet. A failed
                        // write may have torn it; put it back, so that a reopen after this
                        // failure does not fall back to the older durable head and hand out
                        // records that pops returned. Best effort: the caller poisons the queue
                        // either way.
                        let _ = self.file.write_all_at(&previous, HEAD_SLOT_OFFSETS[slot]);
                    }
                    return Err(Error::io("write head index", &self.path, error));
                }
            }
        }
        if self.map.is_none() {
            self.written = Some(bytes);
        }
        self.dirty = true;
        self.deferred = false;
        Ok(())
    }

    /// Makes the newest write durable and returns its generation, all under the caller's lock
    /// (which serialises writes, so no write slips in between the sync and the slot flip). If a
    /// group-commit sync is in flight, this completes it on the leader's behalf first.
    pub(crate) fn sync(&mut self) -> Result<u64> {
        if self.in_flight.take().is_some() {
            // The in-flight slot was written before its sync started: this sync covers it.
            self.sync_file()?;
            self.durable_slot = 1 - self.durable_slot;
            self.dirty = false;
            self.sync_epoch += 1;
        }
        if self.deferred {
            self.write_slot()?;
        }
        if self.dirty {
            self.sync_file()?;
            self.durable_slot = 1 - self.durable_slot;
            self.dirty = false;
        }
        Ok(self.generation)
    }

    fn sync_file(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|error| Error::io("sync head index", &self.path, error))
    }

    /// Starts a group-commit sync whose `fdatasync` runs outside the caller's lock, so that
    /// pops and acks go on meanwhile (their writes are deferred, see [`write`](Self::write)).
    /// Writes a deferred state first. The caller syncs the returned file without the lock, then
    /// calls [`end_sync`](Self::end_sync) with the lock again.
    pub(crate) fn begin_sync(&mut self) -> Result<SyncStart> {
        if self.in_flight.is_some() {
            // Only one group leader runs at a time; be safe anyway: sync under the lock.
            return self.sync().map(SyncStart::Done);
        }
        if self.deferred {
            self.write_slot()?;
        }
        if !self.dirty {
            return Ok(SyncStart::Done(self.generation));
        }
        self.sync_epoch += 1;
        self.in_flight = Some((self.generation, self.sync_epoch));
        Ok(SyncStart::Started {
            file: self.file.clone(),
            generation: self.generation,
            epoch: self.sync_epoch,
        })
    }

    /// Finishes a sync started by [`begin_sync`](Self::begin_sync): on success the synced slot
    /// becomes the durable one, and `generation` is returned as covered. A sync that
    /// [`sync`](Self::sync) completed meanwhile is only reported.
    pub(crate) fn end_sync(
        &mut self,
        generation: u64,
        epoch: u64,
        outcome: std::io::Result<()>,
    ) -> Result<u64> {
        let ours = self.in_flight == Some((generation, epoch));
        if ours {
            self.in_flight = None;
        }
        outcome.map_err(|error| Error::io("sync head index", &self.path, error))?;
        if ours {
            self.durable_slot = 1 - self.durable_slot;
            // Writes deferred meanwhile are still to be written and synced.
            self.dirty = self.deferred;
        }
        Ok(generation)
    }
}

impl crate::engine::queue::Shared {
    /// Syncs the head for the head's group commit, with the reader lock held only around the
    /// bookkeeping, not during the `fdatasync`.
    pub(crate) fn sync_head(&self) -> Result<u64> {
        let start = crate::engine::sync::lock(&self.reader).head.begin_sync()?;
        match start {
            SyncStart::Done(generation) => Ok(generation),
            SyncStart::Started {
                file,
                generation,
                epoch,
            } => {
                let outcome = file.sync_data();
                crate::engine::sync::lock(&self.reader)
                    .head
                    .end_sync(generation, epoch, outcome)
            }
        }
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
                synced_seq: head_seq,
            },
        }
    }

    fn state(head_seq: u64) -> HeadState {
        HeadState {
            head_seq,
            hint_base: 0,
            hint_offset: 32,
            synced_seq: head_seq,
        }
    }

    fn on_disk(dir: &Path) -> HeadSlot {
        let bytes = std::fs::read(dir.join(HEAD_FILE_NAME)).unwrap();
        let read = decode_head_file(&bytes);
        read.slots[read.current.unwrap()].clone().unwrap()
    }

    /// A write during a sync outside the lock never touches the slot being synced: it is kept
    /// and written by the next sync, and the newest state ends up durable in a valid slot.
    #[test]
    fn writes_during_an_outside_sync_are_deferred_to_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::OsStorage;
        HeadIndex::create(&storage, dir.path(), state(0)).unwrap();
        let mut head = HeadIndex::open(&storage, dir.path()).unwrap();
        head.settle(0).unwrap();
        let first = head.write(state(1)).unwrap();
        let SyncStart::Started {
            file,
            generation,
            epoch,
        } = head.begin_sync().unwrap()
        else {
            panic!("a dirty head starts a sync");
        };
        assert_eq!(generation, first);
        let before = std::fs::read(dir.path().join(HEAD_FILE_NAME)).unwrap();
        let second = head.write(state(2)).unwrap();
        let after = std::fs::read(dir.path().join(HEAD_FILE_NAME)).unwrap();
        assert_eq!(before, after, "the in-flight slot is not rewritten");
        file.sync_data().unwrap();
        assert_eq!(head.end_sync(generation, epoch, Ok(())).unwrap(), first);
        assert_eq!(on_disk(dir.path()).state, state(1));
        assert_eq!(head.sync().unwrap(), second);
        assert_eq!(on_disk(dir.path()).state, state(2));
        assert_eq!(on_disk(dir.path()).generation, second);
    }

    /// A sync under the lock while an outside sync is in flight completes it; the late
    /// `end_sync` only reports, and never flips the durable slot a second time.
    #[test]
    fn a_locked_sync_completes_an_outside_one() {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::storage::OsStorage;
        HeadIndex::create(&storage, dir.path(), state(0)).unwrap();
        let mut head = HeadIndex::open(&storage, dir.path()).unwrap();
        head.settle(0).unwrap();
        head.write(state(1)).unwrap();
        let SyncStart::Started {
            generation, epoch, ..
        } = head.begin_sync().unwrap()
        else {
            panic!("a dirty head starts a sync");
        };
        let newest = head.write(state(2)).unwrap();
        assert_eq!(head.sync().unwrap(), newest);
        assert_eq!(
            head.end_sync(generation, epoch, Ok(())).unwrap(),
            generation
        );
        // Further writes and syncs keep alternating correctly.
        let later = head.write(state(3)).unwrap();
        assert!(matches!(
            head.begin_sync().unwrap(),
            SyncStart::Started { .. }
        ));
        assert_eq!(head.sync().unwrap(), later);
        let bytes = std::fs::read(dir.path().join(HEAD_FILE_NAME)).unwrap();
        let read = decode_head_file(&bytes);
        assert!(read.slots.iter().all(|slot| slot.is_ok()), "{read:?}");
        assert_eq!(on_disk(dir.path()).state, state(3));
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
