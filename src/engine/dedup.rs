//! The ids of recent pushes with a deduplication id (`Push::dedup_id`), in memory and in the
//! deduplication log (`format::dedup`), bounded by the window.
//!
//! Memory: one hash map entry per id pushed within the window (the id's bytes, its sequence
//! number and time); ids older than the window are swept out whenever the map has doubled
//! since the last sweep, so it holds at most about twice the ids of one window. Disk: one
//! entry of 24 bytes plus the id (rounded up to 8) per push; the log is rewritten with the
//! live ids when it holds more than twice as many entries as the map (and at open).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::dedup::{
    decode_dedup_entries, decode_dedup_entries_from, dedup_header_ok, encode_dedup_entry,
    encode_dedup_header, DedupEntry,
};
use crate::format::layout::DEDUP_FILE_NAME;
use crate::storage::{self, Storage, StorageFile};

/// The sweep and rewrite thresholds never go below this many ids.
const SWEEP_MIN: usize = 1024;

/// What is remembered of an id.
#[derive(Clone, Copy)]
struct Remembered {
    seq: u64,
    at_us: u64,
}

/// The remembered ids and their log.
pub(crate) struct Dedup {
    dir: PathBuf,
    path: PathBuf,
    window_us: u64,
    ids: HashMap<Box<[u8]>, Remembered>,
    /// The log, once it exists (created by the first push with an id).
    file: Option<Arc<dyn StorageFile>>,
    tail: u64,
    entries_in_file: usize,
    /// The map's size after the last sweep.
    swept_len: usize,
    /// A shared queue's handle: the generation of the log (`control`) that the map and `tail`
    /// match; `None` until the first push with an id loads it.
    generation: Option<u64>,
}

impl Dedup {
    /// Loads the log of the queue in `dir`, if there is one: keeps the ids pushed within the
    /// window before `now_us` whose record exists (below `next_seq`: an entry is written before
    /// its record, so a crash between the two leaves an entry for a record that never was), and
    /// rewrites the log when it dropped any or found a torn tail.
    pub(crate) fn open(
        storage: &dyn Storage,
        dir: &Path,
        window_us: u64,
        next_seq: u64,
        now_us: u64,
    ) -> Result<Dedup> {
        let mut dedup = Dedup::unloaded(dir, window_us);
        let Some((file, bytes)) = read_log(storage, &dedup.path)? else {
            return Ok(dedup);
        };
        if !dedup_header_ok(&bytes) {
            // Only a torn creation leaves a file without its header (it is written whole,
            // atomically, otherwise); the ids it held are lost, which may let a retry through.
            dedup.rewrite(storage)?;
            return Ok(dedup);
        }
        let (entries, end) = decode_dedup_entries(&bytes);
        let total = entries.len();
        for entry in entries {
            if entry.seq < next_seq && dedup.in_window(entry.at_us, now_us) {
                dedup.ids.insert(
                    entry.id.into_boxed_slice(),
                    Remembered {
                        seq: entry.seq,
                        at_us: entry.at_us,
                    },
                );
            }
        }
        dedup.swept_len = dedup.ids.len();
        if dedup.ids.len() != total || end != bytes.len() {
            dedup.rewrite(storage)?;
        } else {
            dedup.file = Some(Arc::from(file));
            dedup.tail = end as u64;
            dedup.entries_in_file = total;
        }
        Ok(dedup)
    }

    /// Syncs the log of the queue in `dir`, if there is one: called at open before recovery
    /// syncs the records, so that a record made durable there never outlives its id in a later
    /// power loss (under `Never` and `Interval` the entries of the last run may be unsynced).
    pub(crate) fn sync_existing(storage: &dyn Storage, dir: &Path) -> Result<()> {
        let path = dir.join(DEDUP_FILE_NAME);
        match storage.open(&path) {
            Ok(file) => file
                .sync_data()
                .map_err(|error| Error::io("sync deduplication log", &path, error)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::io("open deduplication log", &path, error)),
        }
    }

    /// A shared queue's handle: nothing loaded yet. The log is read under the tail lock, at the
    /// first push with an id (`catch_up_shared`): read or rewritten at open, it could race with
    /// another process's push.
    pub(crate) fn unloaded(dir: &Path, window_us: u64) -> Dedup {
        Dedup {
            dir: dir.to_path_buf(),
            path: dir.join(DEDUP_FILE_NAME),
            window_us,
            ids: HashMap::new(),
            file: None,
            tail: 0,
            entries_in_file: 0,
            swept_len: 0,
            generation: None,
        }
    }

    /// A shared queue, under the tail lock: brings the map up to the log as `control` names it
    /// (`generation`, and `tail`, where its entries end): the entries other handles appended
    /// since this one looked, or the whole log when it was rewritten or settled since.
    pub(crate) fn catch_up_shared(
        &mut self,
        storage: &dyn Storage,
        generation: u64,
        tail: u64,
        now_us: u64,
    ) -> Result<()> {
        if self.generation == Some(generation) {
            if tail > self.tail {
                let Some(file) = &self.file else {
                    return self.load(storage, generation, tail, now_us);
                };
                let mut bytes = vec![0; usize::try_from(tail - self.tail).unwrap_or(0)];
                file.read_exact_at(&mut bytes, self.tail)
                    .map_err(|error| Error::io("read deduplication log", &self.path, error))?;
                let (entries, _) = decode_dedup_entries_from(&bytes, 0);
                self.entries_in_file += entries.len();
                for entry in entries {
                    self.insert(entry, now_us);
                }
                self.tail = tail;
            }
            return Ok(());
        }
        self.load(storage, generation, tail, now_us)
    }

    /// Reads the whole log up to `tail` (a shared queue's, under the tail lock).
    fn load(
        &mut self,
        storage: &dyn Storage,
        generation: u64,
        tail: u64,
        now_us: u64,
    ) -> Result<()> {
        self.ids.clear();
        self.file = None;
        self.tail = 0;
        self.entries_in_file = 0;
        if let Some((file, bytes)) = read_log(storage, &self.path)? {
            let end = usize::try_from(tail).unwrap_or(usize::MAX).min(bytes.len());
            let (entries, _) = decode_dedup_entries(&bytes[..end]);
            self.entries_in_file = entries.len();
            for entry in entries {
                self.insert(entry, now_us);
            }
            self.file = Some(Arc::from(file));
            self.tail = tail;
        }
        self.swept_len = self.ids.len();
        self.generation = Some(generation);
        Ok(())
    }

    fn insert(&mut self, entry: DedupEntry, now_us: u64) {
        if self.in_window(entry.at_us, now_us) {
            self.ids.insert(
                entry.id.into_boxed_slice(),
                Remembered {
                    seq: entry.seq,
                    at_us: entry.at_us,
                },
            );
        }
    }

    /// Where this handle's view of the log ends, and the generation it matches (a shared
    /// queue's handle records both in `control` after an append).
    pub(crate) fn position(&self) -> (Option<u64>, u64) {
        (self.generation, self.tail)
    }

    /// A shared queue: the log became generation `generation` (this handle rewrote it).
    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = Some(generation);
    }

    fn in_window(&self, at_us: u64, now_us: u64) -> bool {
        at_us.saturating_add(self.window_us) >= now_us
    }

    /// The sequence number of the first push with `id` within the window, if any.
    pub(crate) fn lookup(&self, id: &[u8], now_us: u64) -> Option<u64> {
        self.ids
            .get(id)
            .filter(|remembered| self.in_window(remembered.at_us, now_us))
            .map(|remembered| remembered.seq)
    }

    /// Remembers `id` for the record `seq` pushed at `at_us`: its entry reaches the kernel
    /// (not synced: see [`sync`](Dedup::sync)) before this returns. True when the log was
    /// rewritten for it (a new file).
    pub(crate) fn remember(
        &mut self,
        storage: &dyn Storage,
        id: &[u8],
        seq: u64,
        at_us: u64,
    ) -> Result<bool> {
        if self.ids.len() >= (2 * self.swept_len).max(SWEEP_MIN) {
            self.ids
                .retain(|_, remembered| remembered.at_us.saturating_add(self.window_us) >= at_us);
            self.swept_len = self.ids.len();
        }
        self.ids.insert(Box::from(id), Remembered { seq, at_us });
        if self.file.is_none() || self.entries_in_file > (2 * self.ids.len()).max(SWEEP_MIN) {
            // The new id is in the map, so the rewrite writes it.
            return self.rewrite(storage).map(|()| true);
        }
        let mut bytes = Vec::new();
        encode_dedup_entry(
            &mut bytes,
            &DedupEntry {
                id: id.to_vec(),
                seq,
                at_us,
            },
        );
        if let Some(file) = &self.file {
            file.write_all_at(&bytes, self.tail)
                .map_err(|error| Error::io("write deduplication log", &self.path, error))?;
        }
        self.tail += bytes.len() as u64;
        self.entries_in_file += 1;
        Ok(false)
    }

    /// Forgets `id` (its push failed before its record was written).
    pub(crate) fn forget(&mut self, id: &[u8]) {
        self.ids.remove(id);
    }

    /// Makes the entries written so far durable.
    pub(crate) fn sync(&self) -> Result<()> {
        match &self.file {
            Some(file) => file
                .sync_data()
                .map_err(|error| Error::io("sync deduplication log", &self.path, error)),
            None => Ok(()),
        }
    }

    /// Replaces the log with the remembered ids, durably (temporary file, sync, rename).
    fn rewrite(&mut self, storage: &dyn Storage) -> Result<()> {
        let mut bytes = encode_dedup_header().to_vec();
        for (id, remembered) in &self.ids {
            encode_dedup_entry(
                &mut bytes,
                &DedupEntry {
                    id: id.to_vec(),
                    seq: remembered.seq,
                    at_us: remembered.at_us,
                },
            );
        }
        storage::write_atomically(storage, &self.dir, DEDUP_FILE_NAME, &bytes)
            .map_err(|error| Error::io("rewrite deduplication log", &self.path, error))?;
        let file = storage
            .open(&self.path)
            .map_err(|error| Error::io("open deduplication log", &self.path, error))?;
        self.file = Some(Arc::from(file));
        self.tail = bytes.len() as u64;
        self.entries_in_file = self.ids.len();
        Ok(())
    }
}

/// A log file, opened, and its bytes.
type ReadLog = (Box<dyn StorageFile>, Vec<u8>);

/// The deduplication log at `path`, opened, and its bytes; `None` when there is none.
fn read_log(storage: &dyn Storage, path: &Path) -> Result<Option<ReadLog>> {
    let file = match storage.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("open deduplication log", path, error)),
    };
    let bytes = storage::read_all(&*file)
        .map_err(|error| Error::io("read deduplication log", path, error))?;
    Ok(Some((file, bytes)))
}

/// A shared queue, under the tail lock: settles the deduplication log of the queue in `dir`
/// after a producer died holding the lock (or when `control` was built): keeps the entries of
/// records below `next_seq` (an entry is written before its record, so a producer that died
/// between the two left an entry for a record that never was, and whose number the next push
/// takes), and rewrites the log when it dropped any or found a torn tail (a new file: every
/// handle reads it again). Returns where its entries end; `None` when there is no log.
pub(crate) fn settle_shared(
    storage: &dyn Storage,
    dir: &Path,
    next_seq: u64,
) -> Result<Option<u64>> {
    let path = dir.join(DEDUP_FILE_NAME);
    let Some((_, bytes)) = read_log(storage, &path)? else {
        return Ok(None);
    };
    let (entries, end) = match dedup_header_ok(&bytes) {
        true => decode_dedup_entries(&bytes),
        false => (Vec::new(), 0),
    };
    let total = entries.len();
    let kept: Vec<DedupEntry> = entries
        .into_iter()
        .filter(|entry| entry.seq < next_seq)
        .collect();
    if kept.len() == total && end == bytes.len() {
        return Ok(Some(end as u64));
    }
    let mut settled = encode_dedup_header().to_vec();
    for entry in &kept {
        encode_dedup_entry(&mut settled, entry);
    }
    storage::write_atomically(storage, dir, DEDUP_FILE_NAME, &settled)
        .map_err(|error| Error::io("rewrite deduplication log", &path, error))?;
    Ok(Some(settled.len() as u64))
}
