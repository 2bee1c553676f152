//! A spool: a directory of named queues, and fanout of one message to several of them.
//!
//! It is a queue, not a log: to give N consumer groups the same message, [`Spool::fanout`]
//! writes N physical copies, one into each group's queue, and each group drains its own.
//!
//! Fanout is all-or-nothing. Before writing any copy it records an *intent* in `fanout.log`
//! (the payload and the sequence number each copy will get, known because the writers of all
//! the target queues are held), then writes the copies, then marks the intent done. When the
//! spool is opened, an intent without its mark is rolled forward: every copy whose queue has
//! not reached the recorded sequence number is written. The intent is synced under
//! [`SyncPolicy::Always`], so the guarantee holds across power loss there, and across process
//! kills under every policy.
//!
//! ```text
//! fanout.log entry (little-endian):
//! offset  size  field
//!      0     4  crc32      CRC-32 of bytes 4..len
//!      4     4  len        length of the whole entry
//!      8     1  kind       1 = INTENT, 2 = DONE
//!      9     7  reserved   zero
//!     16     8  id         the fanout's number
//! INTENT continues:
//!     24     4  targets    count, then per target: name length (u16), name, sequence (u64)
//!      …     4  payload    length, then the payload
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::engine::log::Bound;
use crate::engine::queue::Queue;
use crate::engine::sync::lock;
use crate::error::{Error, Result};
use crate::format::fanout::{decode_entry, encode_header, encode_intent, Entry, Intent, KIND_DONE};
use crate::format::frame::BodyPrefix;
use crate::format::layout::{validate_queue_name, FANOUT_LOCK_FILE_NAME, FANOUT_LOG_FILE_NAME};
use crate::options::{Options, SyncPolicy};
use crate::storage::{DirLock, Storage, StorageFile};

/// Once all intents are done, a log longer than this is truncated.
const LOG_TRUNCATE_BYTES: u64 = 1 << 20;

/// A directory of named queues.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diskspool::{Options, Spool};
///
/// let dir = tempfile::tempdir()?;
/// let spool = Spool::open(dir.path(), Options::default())?;
/// spool.fanout(b"order 7 shipped", &["billing", "email"])?;
/// assert_eq!(spool.queue("billing")?.pop()?.unwrap().payload(), b"order 7 shipped");
/// assert_eq!(spool.queue("email")?.len(), 1, "each group has its own copy");
/// # Ok(()) }
/// ```
pub struct Spool {
    dir: PathBuf,
    options: Options,
    queues: Mutex<BTreeMap<String, Arc<Queue>>>,
    fanout_log: Mutex<FanoutLog>,
    /// An exclusive spool's directory lock; a spool of shared queues has none (see
    /// [`Spool::open`]).
    _lock: Option<DirLock>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

struct FanoutLog {
    path: PathBuf,
    file: Box<dyn StorageFile>,
    tail: u64,
    next_id: u64,
    pending: BTreeSet<u64>,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, and completes any fanout that a crash
    /// interrupted. Every queue of the spool is opened with `options`.
    ///
    /// With `options.exclusive(false)` the spool is shared by several processes, as its
    /// queues are: each process opens it, and a fanout from any of them reaches the queues'
    /// consumers in every process. A fanout then holds `fanout.lock` (a `flock`), records its
    /// intent, and pushes each copy with a deduplication id naming the fanout, so that the
    /// roll-forward of a fanout whose process died (by the next fanout or open in any process)
    /// pushes the copies that did not make it and finds the others. A copy rolled forward after
    /// the queues' deduplication window (`Options::dedup_window`, 5 minutes by default) may be
    /// pushed twice: all or nothing holds, exactly once only within the window.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Spool> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let storage = options.storage.clone();
        crate::storage::queue_dir::check_owner(&*storage, &dir)?;
        let (dir_lock, fanouts) = match options.get_exclusive() {
            true => (
                Some(crate::storage::queue_dir::create_and_lock(&*storage, &dir)?),
                None,
            ),
            false => {
                crate::storage::queue_dir::create_with_mode(&*storage, &dir, None)?;
                (None, Some(lock_fanouts(&*storage, &dir)?))
            }
        };
        let (fanout_log, intents) = FanoutLog::open(&*storage, &dir)?;
        let spool = Spool {
            dir,
            options,
            queues: Mutex::new(BTreeMap::new()),
            fanout_log: Mutex::new(fanout_log),
            _lock: dir_lock,
        };
        if let Some(fanouts) = fanouts {
            let mut log = lock(&spool.fanout_log);
            spool.roll_forward_shared(&mut log, &intents)?;
            drop((log, fanouts));
            return Ok(spool);
        }
        for intent in &intents {
            spool.roll_forward(intent)?;
        }
        let mut log = lock(&spool.fanout_log);
        log.pending.clear();
        log.truncate()?;
        drop(log);
        Ok(spool)
    }

    /// The queue named `name`, opened (and created) on first use.
    pub fn queue(&self, name: &str) -> Result<Arc<Queue>> {
        validate_queue_name(name)?;
        let mut queues = lock(&self.queues);
        if let Some(queue) = queues.get(name) {
            return Ok(queue.clone());
        }
        let queue = Arc::new(Queue::open(self.dir.join(name), self.options.clone())?);
        queues.insert(name.to_string(), queue.clone());
        Ok(queue)
    }

    /// The names of the queues in the spool (directories holding a queue), sorted.
    pub fn queue_names(&self) -> Result<Vec<String>> {
        let storage = &*self.options.storage;
        let names = storage
            .list_dir(&self.dir)
            .map_err(|error| Error::io("list spool directory", &self.dir, error))?;
        let mut queues: Vec<String> = names
            .into_iter()
            .filter(|name| validate_queue_name(name).is_ok())
            .filter(|name| {
                storage
                    .list_dir(&self.dir.join(name))
                    .is_ok_and(|entries| entries.iter().any(|entry| entry == "head"))
            })
            .collect();
        queues.sort();
        Ok(queues)
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one copy of `payload` into each named queue, all or nothing, and returns each
    /// copy's sequence number in the order of `names`.
    ///
    /// If this returns an error after the intent was recorded, the copies not yet written are
    /// written when the spool is next opened.
    pub fn fanout(&self, payload: &[u8], names: &[&str]) -> Result<Vec<u64>> {
        let mut sorted: Vec<&str> = names.to_vec();
        sorted.sort_unstable();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Error::InvalidOptions(
                "fanout names a queue twice".to_string(),
            ));
        }
        let queues = sorted
            .iter()
            .map(|name| self.queue(name))
            .collect::<Result<Vec<_>>>()?;
        if self._lock.is_none() {
            return self.fanout_shared(payload, names, &sorted, &queues);
        }
        let payloads = [payload];
        let mut batch_lens = Vec::with_capacity(queues.len());
        for queue in &queues {
            batch_lens.push(queue.shared().check_batch(&payloads, BodyPrefix::NONE)?);
        }

        let mut log = lock(&self.fanout_log);
        // Holding every target's writer fixes the sequence number each copy will get.
        let mut writers: Vec<_> = queues
            .iter()
            .map(|queue| queue.shared().lock_writer())
            .collect();
        // A copy that cannot be numbered must be refused before the intent is written, or
        // every later open would fail to roll it forward.
        for writer in &writers {
            crate::engine::log::check_room(writer, payloads.len())?;
        }
        // A bounded target that is full refuses the whole fanout (whatever its overflow rule:
        // a fanout neither drops nor waits), before the intent; the writers held keep the room.
        for (queue, batch_len) in queues.iter().zip(&batch_lens) {
            queue
                .shared()
                .check_bound(payloads.len() as u64, *batch_len)?;
        }
        let intent = Intent {
            id: log.next_id,
            targets: sorted
                .iter()
                .zip(&writers)
                .map(|(name, writer)| (name.to_string(), writer.next_seq))
                .collect(),
            payload: payload.to_vec(),
        };
        log.append_intent(&intent, self.options.sync == SyncPolicy::Always)?;
        let mut written = Vec::with_capacity(queues.len());
        for ((queue, writer), batch_len) in queues.iter().zip(&mut writers).zip(&batch_lens) {
            written.push(queue.shared().write_locked(
                writer,
                &payloads,
                BodyPrefix::NONE,
                *batch_len,
                Bound::Enforced,
            )?);
        }
        drop(writers);
        let mut seqs_by_name = BTreeMap::new();
        for ((queue, written), name) in queues.iter().zip(written).zip(&sorted) {
            let range = queue.shared().complete(written)?;
            seqs_by_name.insert(*name, range.start);
        }
        finish_fanout(&mut log, intent.id, names, &seqs_by_name)
    }

    /// [`fanout`](Spool::fanout) in a spool of shared queues (see [`Spool::open`]): under
    /// `fanout.lock`, finishes the fanouts a dead process left, records the intent, pushes
    /// each copy with the fanout's deduplication id, and marks it done.
    fn fanout_shared(
        &self,
        payload: &[u8],
        names: &[&str],
        sorted: &[&str],
        queues: &[Arc<Queue>],
    ) -> Result<Vec<u64>> {
        let payloads = [payload];
        // This process's threads, then the other processes.
        let mut local = lock(&self.fanout_log);
        let _fanouts = lock_fanouts(&*self.options.storage, &self.dir)?;
        let (mut log, intents) = FanoutLog::open(&*self.options.storage, &self.dir)?;
        self.roll_forward_shared(&mut log, &intents)?;
        // A target that cannot take the copy refuses the whole fanout before its intent, as in
        // one process. Once the intent is recorded the fanout is accepted: its copies are
        // written whatever the bound (another process may fill a bounded queue meanwhile).
        for queue in queues {
            let batch_len = queue.shared().check_batch(&payloads, BodyPrefix::NONE)?;
            queue.shared().check_bound(1, batch_len)?;
        }
        let intent = Intent {
            // Never a number an earlier fanout had, even if the log was removed: copies are
            // told apart by it.
            id: log.next_id.max(crate::engine::clock::now_micros()),
            targets: sorted.iter().map(|name| (name.to_string(), 0)).collect(),
            payload: payload.to_vec(),
        };
        log.append_intent(&intent, self.options.sync == SyncPolicy::Always)?;
        let mut seqs_by_name = BTreeMap::new();
        for (queue, name) in queues.iter().zip(sorted) {
            let seq = push_copy(queue, payload, intent.id)?;
            crate::engine::failpoint::reached("spool.copy");
            seqs_by_name.insert(*name, seq);
        }
        let seqs = finish_fanout(&mut log, intent.id, names, &seqs_by_name);
        *local = log;
        seqs
    }

    /// In a spool of shared queues, under `fanout.lock`: pushes the copies of `intents` (left
    /// by a process that died in a fanout) with their fanout's deduplication id, so that those
    /// that made it are found rather than pushed again, and marks each done.
    fn roll_forward_shared(&self, log: &mut FanoutLog, intents: &[Intent]) -> Result<()> {
        for intent in intents {
            for (name, _) in &intent.targets {
                push_copy(&*self.queue(name)?, &intent.payload, intent.id)?;
            }
            log.append_done(intent.id)?;
        }
        if !intents.is_empty() {
            log.truncate()?;
        }
        Ok(())
    }

    /// Writes the copies of an interrupted fanout that did not make it.
    fn roll_forward(&self, intent: &Intent) -> Result<()> {
        for (name, seq) in &intent.targets {
            let queue = self.queue(name)?;
            let shared = queue.shared();
            let payloads = [&intent.payload[..]];
            let batch_len = shared.check_batch(&payloads, BodyPrefix::NONE)?;
            let written = {
                let mut writer = shared.lock_writer();
                // Past `seq`: the copy is there. At or before it: it never made it (before:
                // a power loss also took records ahead of it).
                if writer.next_seq > *seq {
                    continue;
                }
                // Accepted before the crash: written even past the bound.
                shared.write_locked(
                    &mut writer,
                    &payloads,
                    BodyPrefix::NONE,
                    batch_len,
                    Bound::Waived,
                )?
            };
            shared.complete(written)?;
        }
        Ok(())
    }
}

/// Marks fanout `id` done (truncating the log once nothing is pending and it grew long), and
/// returns its copies' sequence numbers in the order of `names`.
fn finish_fanout(
    log: &mut FanoutLog,
    id: u64,
    names: &[&str],
    seqs_by_name: &BTreeMap<&str, u64>,
) -> Result<Vec<u64>> {
    // A lost DONE mark costs only a roll-forward that finds every copy in place.
    log.append_done(id)?;
    if log.pending.is_empty() && log.tail > LOG_TRUNCATE_BYTES {
        log.truncate()?;
    }
    Ok(names
        .iter()
        .filter_map(|name| seqs_by_name.get(name).copied())
        .collect())
}

/// Pushes a fanout's copy into a shared queue: its deduplication id names the fanout (a copy
/// that made it is found, not pushed again), and the queue's bound is waived (the fanout was
/// accepted before its intent was recorded, as in one process: a copy refused at the bound
/// would fail every later fanout's roll-forward until the queue drained).
fn push_copy(queue: &Queue, payload: &[u8], fanout_id: u64) -> Result<u64> {
    let id = format!("fanout/{fanout_id}");
    queue
        .shared()
        .push_dedup(payload, BodyPrefix::NONE, id.as_bytes(), Bound::Waived)
}

/// Takes `fanout.lock` in `dir` (a `flock`, released when the returned file is dropped, or when
/// the process dies), waiting for another process's fanout.
fn lock_fanouts(storage: &dyn Storage, dir: &Path) -> Result<crate::storage::process::LockFile> {
    let path = dir.join(FANOUT_LOCK_FILE_NAME);
    let file = crate::storage::process::LockFile::open(storage, &path)
        .map_err(|error| Error::io("open", &path, error))?;
    file.lock()
        .map_err(|error| Error::io("lock", &path, error))?;
    Ok(file)
}

impl FanoutLog {
    fn open(storage: &dyn Storage, dir: &Path) -> Result<(FanoutLog, Vec<Intent>)> {
        let path = dir.join(FANOUT_LOG_FILE_NAME);
        let file = match storage.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let file = storage
                    .create_new(&path)
                    .map_err(|error| Error::io("create fanout log", &path, error))?;
                storage
                    .sync_dir(dir)
                    .map_err(|error| Error::io("sync spool directory", dir, error))?;
                file
            }
            Err(error) => return Err(Error::io("open fanout log", &path, error)),
        };
        let bytes = crate::storage::read_all(&*file)
            .map_err(|error| Error::io("read fanout log", &path, error))?;
        let mut intents = BTreeMap::new();
        let mut next_id = 0;
        let mut offset = 0;
        // A torn last entry is an intent whose fanout never started, or a lost DONE mark.
        while let Some((entry, len)) = decode_entry(bytes.get(offset..).unwrap_or(&[])) {
            match entry {
                Entry::Intent(intent) => {
                    next_id = next_id.max(intent.id.saturating_add(1));
                    intents.insert(intent.id, intent);
                }
                Entry::Done(id) => {
                    next_id = next_id.max(id.saturating_add(1));
                    intents.remove(&id);
                }
            }
            offset += len;
        }
        let log = FanoutLog {
            path,
            file,
            tail: offset as u64,
            next_id,
            pending: intents.keys().copied().collect(),
        };
        Ok((log, intents.into_values().collect()))
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        if let Err(error) = self.file.write_all_at(bytes, self.tail) {
            let _ = self.file.set_len(self.tail);
            return Err(Error::io("append to fanout log", &self.path, error));
        }
        self.tail += bytes.len() as u64;
        Ok(())
    }

    fn append_intent(&mut self, intent: &Intent, sync: bool) -> Result<()> {
        self.append(&encode_intent(intent))?;
        self.next_id = intent.id.saturating_add(1);
        self.pending.insert(intent.id);
        if sync {
            self.file
                .sync_data()
                .map_err(|error| Error::io("sync fanout log", &self.path, error))?;
        }
        Ok(())
    }

    fn append_done(&mut self, id: u64) -> Result<()> {
        self.append(&encode_header(KIND_DONE, id, &[]))?;
        self.pending.remove(&id);
        Ok(())
    }

    /// Empties the log once no intent is pending.
    fn truncate(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            return Ok(());
        }
        self.file
            .set_len(0)
            .and_then(|()| self.file.sync_data())
            .map_err(|error| Error::io("truncate fanout log", &self.path, error))?;
        self.tail = 0;
        Ok(())
    }
}
