//! The head index file of a running queue: its mapped slots, the write that never touches the
//! durable slot, and the sync that flips it. The slot bytes are `format::head`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::head::*;
use crate::format::layout::HEAD_FILE_NAME;
use crate::storage::{self, Storage, StorageFile, WritableMapping};

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

    /// The slot that holds the newest durable generation (see `durable_slot`).
    pub(crate) fn durable_slot(&self) -> usize {
        self.durable_slot
    }

    /// Reads the slots again after another process's consumer wrote them (a shared queue's
    /// consumer turn), with `durable_slot` the slot that process left durable: the newest slot
    /// is in force, and the next write goes over the other one as ever, so no sync is needed
    /// here. The caller holds the consumer lock, so no write or sync is in flight.
    pub(crate) fn reload(&mut self, durable_slot: usize) -> Result<()> {
        let mut bytes = [0u8; HEAD_FILE_LEN as usize];
        match self.map.as_mut() {
            Some(map) => match map.0.bytes_mut().get(..bytes.len()) {
                Some(mapped) => bytes.copy_from_slice(mapped),
                None => return Err(Error::corrupt(&self.path, 0, "head mapping too short")),
            },
            None => self
                .file
                .read_exact_at(&mut bytes, 0)
                .map_err(|error| Error::io("read head index", &self.path, error))?,
        }
        let read = decode_head_file(&bytes);
        let durable_valid = read.slots.get(durable_slot).is_some_and(Result::is_ok);
        let (Some(current), true) = (read.current, durable_valid) else {
            return Err(Error::corrupt(
                &self.path,
                HEAD_SLOT_OFFSETS[durable_slot.min(1)],
                "the head slot another consumer left durable does not validate",
            ));
        };
        let slot = read.slots[current].clone().map_err(|error| {
            Error::corrupt(&self.path, HEAD_SLOT_OFFSETS[current], error.to_string())
        })?;
        if let Some(why) = slot.out_of_range() {
            return Err(Error::corrupt(&self.path, HEAD_SLOT_OFFSETS[current], why));
        }
        self.generation = slot.generation;
        self.state = slot.state;
        self.durable_slot = durable_slot;
        self.dirty = current != durable_slot;
        self.in_flight = None;
        self.deferred = false;
        self.written = None;
        Ok(())
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

/// The head sequence number in the `head` file as it is now (page cache included), for a
/// handle of a shared queue that does not consume; `None` if it cannot be read.
pub(crate) fn head_seq_in_file(storage: &dyn Storage, dir: &Path) -> Option<u64> {
    let path = dir.join(HEAD_FILE_NAME);
    let file = storage.open_read(&path).ok()?;
    let bytes = storage::read_all(&*file).ok()?;
    let read = decode_head_file(&bytes);
    let current = read.current?;
    read.slots[current]
        .as_ref()
        .ok()
        .map(|slot| slot.state.head_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
