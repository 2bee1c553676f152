//! The ack log file of a running queue: appends (deferred under the group commit), the space
//! prepared ahead of its tail, and rewrites. The entry bytes are `format::acklog`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::report::{RecoveryReport, Truncation};
use crate::error::{Error, Result};
use crate::format::acklog::*;
use crate::format::layout::ACK_LOG_FILE_NAME;
use crate::format::segment::PREPARED_SPACE_ALIGN;
use crate::storage::{self, Storage, StorageFile, WritableMapping};

/// The open ack log of a running queue. The file is created on the first append, so a queue
/// used only with `push`/`pop` never has one.
#[derive(Debug)]
pub(crate) struct AckLog {
    path: PathBuf,
    dir: PathBuf,
    file: Option<Arc<dyn StorageFile>>,
    log_id: u64,
    tail: u64,
    /// The file's length: bytes `[tail, prepared_end)` are zeros written ahead of the tail.
    prepared_end: u64,
    entries_in_file: u64,
    /// Entries appended since open, across rewrites: the group-commit ticket.
    appended: u64,
    /// Encoded entries appended but not written yet (see [`AckLog::defer_writes`]).
    pending: Vec<u8>,
    /// True when appends wait in `pending` for [`AckLog::flush`].
    deferred: bool,
    /// Whether appends that are not deferred are stored through a writable mapping of the
    /// file (see [`AckLog::map_writes`]); cleared for good when the storage offers none or
    /// mapping failed (see `map_window`).
    map_writes: bool,
    /// The mapping appends are stored through, while `map_writes`.
    window: Option<AckWindow>,
    /// Failed appends undone by cutting the file (see [`AckLog::flush`]), part of the marker.
    cuts: u64,
    /// Whether appends carry the SYNCED_BEFORE mark: the file is of version 4 or later (older
    /// files are appended to as they are).
    marks: bool,
    /// How far this handle knows the file to be synced: an append that starts here is marked.
    synced_end: u64,
}

/// A writable mapping of the ack log's bytes `[start, end)`: from an offset at or before its
/// tail to the end of the zeros prepared ahead of it.
struct AckWindow {
    map: Box<dyn WritableMapping>,
    start: u64,
    end: u64,
}

impl std::fmt::Debug for AckWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckWindow")
            .field("start", &self.start)
            .field("end", &self.end)
            .finish()
    }
}

/// Below this many entries the log is never rewritten.
const REWRITE_MIN_ENTRIES: u64 = 4096;

/// How far ahead of the tail zeros are written. An append into zeros already in the file does
/// not change its length, so the `fdatasync` that makes it durable writes no inode update: on
/// ext4 an appending sync cost 200–330 µs, a sync of an overwrite 120–220 µs. Small, so that a
/// log that is rarely rewritten stays small too.
const PREPARED_SPACE: u64 = 32 << 10;

impl AckLog {
    /// Opens the ack log in `dir` if there is one, recovers a torn tail, and returns the history
    /// it holds at or beyond `head`. `settle`: sync what was read (at open, and after a process
    /// died mid-turn); a shared queue's consumer that reads again what a live holder left in
    /// the log does not (that holder synced what its policy asks). `live`: other handles of a
    /// shared queue have the file open, and may map it up to where its zeros end, so it is
    /// never made shorter: a torn entry is overwritten with zeros instead of cut, and the
    /// zeros prepared ahead of the tail stay (a cold open cuts both).
    pub(crate) fn open(
        storage: &dyn Storage,
        dir: &Path,
        head: u64,
        appends_synced: bool,
        settle: bool,
        live: bool,
        report: &mut RecoveryReport,
    ) -> Result<(AckLog, JobHistory)> {
        let path = dir.join(ACK_LOG_FILE_NAME);
        let io_error = |operation| {
            let path = path.clone();
            move |error| Error::io(operation, path, error)
        };
        let file = match storage.open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let log = AckLog {
                    path,
                    dir: dir.to_path_buf(),
                    file: None,
                    log_id: 0,
                    tail: 0,
                    prepared_end: 0,
                    entries_in_file: 0,
                    appended: 0,
                    pending: Vec::new(),
                    deferred: false,
                    map_writes: false,
                    window: None,
                    cuts: 0,
                    marks: true,
                    synced_end: 0,
                };
                return Ok((log, JobHistory::default()));
            }
            Err(error) => return Err(Error::io("open ack log", &path, error)),
        };
        let file: Arc<dyn StorageFile> = Arc::from(file);
        let bytes = storage::read_all(&*file).map_err(io_error("read ack log"))?;
        let mut history = JobHistory::default();
        // A missing (zero) entry followed by valid ones is skipped, not refused: unsynced
        // appends may reach the disk in any order, so a power loss can keep a later entry and
        // lose an earlier one. Each entry is a self-contained fact, so the others stay valid.
        // A damaged entry followed by valid ones is refused (see `scan_ack_log`).
        let scan = scan_ack_log(&bytes, &mut |entry| history.apply(entry))
            .map_err(|error| header_error(&path, error))?;
        // A torn append followed by valid ones is what a power loss leaves of appends that no
        // sync separated: skipped (its one fact was not durable), reported, and the log
        // rewritten below so that every reader agrees. The SYNCED_BEFORE marks say which
        // appends were synced before later ones were written (a torn one of those is damage,
        // refused by the scan). A file of version 2 or 3 has none: its appends are taken to
        // have been synced as this open's policy syncs them, one by one under `Always`.
        let mut skipped = false;
        if let Some(damage) = scan.damage {
            let power_loss = damage.skippable && (scan.has_marks || !appends_synced);
            if !power_loss {
                return Err(Error::corrupt(&path, damage.offset, damage.detail));
            }
            report.skipped_ack_entries.extend(&scan.skippable);
            skipped = true;
        }
        let truncations = &mut report.truncated;
        let log_id = scan.log_id;
        let entries_in_file = scan.entries;
        let offset = scan.valid_end as usize;
        let mut prepared_end = offset as u64;
        if live {
            if scan.end == AckLogEnd::TornEntry {
                file.write_all_at(&vec![0; bytes.len() - offset], offset as u64)
                    .map_err(io_error("clear torn ack log tail"))?;
            }
            prepared_end = bytes.len() as u64;
        } else if scan.end != AckLogEnd::Clean {
            file.set_len(offset as u64)
                .map_err(io_error("truncate torn ack log tail"))?;
        }
        if scan.end != AckLogEnd::Clean {
            // Zeros are space prepared ahead of the tail (or appends a power loss took before
            // any byte of them reached the disk): nothing torn to report.
            if scan.end == AckLogEnd::TornEntry {
                truncations.push(Truncation {
                    file: path.clone(),
                    offset: offset as u64,
                    bytes_cut: (bytes.len() - offset) as u64,
                    first_lost_seq: head,
                    last_lost_seq: head,
                    reason: String::from("torn ack log entry"),
                });
            }
        }
        // Not known to be synced unless synced here: the header was (the file was written
        // whole, synced and renamed into place).
        let mut synced_end = ACK_LOG_HEADER_LEN as u64;
        if settle || skipped || scan.end == AckLogEnd::TornEntry {
            file.sync_data().map_err(io_error("sync ack log"))?;
            synced_end = offset as u64;
        }
        history.prune_below(head);
        let mut log = AckLog {
            path,
            dir: dir.to_path_buf(),
            file: Some(file),
            log_id,
            tail: offset as u64,
            prepared_end,
            entries_in_file,
            appended: 0,
            pending: Vec::new(),
            deferred: false,
            map_writes: false,
            window: None,
            cuts: 0,
            marks: scan.has_marks,
            synced_end,
        };
        if skipped {
            log.rewrite(storage, &history.entries())?;
        }
        Ok((log, history))
    }

    /// Appends entries, written at once with one write, or by the next [`flush`](AckLog::flush)
    /// when writes are deferred; returns the ticket that `sync` must cover.
    pub(crate) fn append(&mut self, storage: &dyn Storage, entries: &[AckEntry]) -> Result<u64> {
        if self.file.is_none() {
            self.create(storage)?;
        }
        for entry in entries {
            encode_entry(&mut self.pending, self.log_id, entry);
        }
        if !self.deferred {
            if let Err(error) = self.flush() {
                self.pending.clear();
                return Err(error);
            }
        }
        self.entries_in_file += entries.len() as u64;
        self.appended += entries.len() as u64;
        Ok(self.appended)
    }

    /// Under `SyncPolicy::Always`, appends are kept in memory and written by [`flush`], which
    /// the group-commit leader calls just before its sync: one write for all the operations the
    /// sync covers instead of one per operation, each under the reader lock. Nobody returns
    /// before that write and the sync, so a process kill still loses nothing that returned.
    ///
    /// [`flush`]: AckLog::flush
    pub(crate) fn defer_writes(&mut self, deferred: bool) {
        self.deferred = deferred;
    }

    /// Whether appends that are not deferred are stored through a writable mapping of the file
    /// (`Options::mapped_writes`, where the storage offers mappings) instead of written with
    /// one `pwrite` each: under `Never` and `Interval` an acknowledgement is then a store into
    /// the page cache, which a process kill keeps as it keeps a write, with no system call.
    /// Deferred appends (`Always`) stay one write per group commit: each sync would
    /// write-protect a mapped page, and the next store fault it in again.
    pub(crate) fn map_writes(&mut self, enabled: bool) {
        self.map_writes = enabled;
        if !enabled {
            self.window = None;
        }
    }

    /// Writes the entries appended but not written yet: one store through the mapping, or
    /// one write.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let end = self.tail + self.pending.len() as u64;
        // Decided here, where the entries land, not when they were appended: under `Always`
        // they wait for the group-commit leader, which writes them after the previous sync.
        if self.marks && self.synced_end == self.tail {
            mark_synced_before(&mut self.pending, self.log_id);
        }
        if let Err(error) = self.prepare(&*file, end) {
            // Zeros only (some of them): nothing to undo.
            return Err(Error::io("append to ack log", &self.path, error));
        }
        if let Err(error) = self.store(&*file, end) {
            // Only a write fails here (a store through the mapping cannot): undo what it left,
            // so that no fragment is found between entries, by cutting the file back to the
            // tail (the prepared zeros go too). Not by writing zeros over it: two unsynced
            // writes at one place may both be torn by a power loss, into a damaged entry before
            // a valid one, which an open under `Always` refuses. Other handles of a shared queue
            // may map the file past the cut: the cut is counted in the marker, so that this
            // turn moves the consumer epoch and they take up where the zeros now end before
            // they store again.
            self.window = None;
            self.prepared_end = self.tail;
            self.cuts += 1;
            if let Err(cleanup) = file.set_len(self.tail) {
                return Err(Error::Poisoned {
                    cause: format!(
                        "{}: undoing a failed append failed: {cleanup}",
                        self.path.display()
                    ),
                });
            }
            return Err(Error::io("append to ack log", &self.path, error));
        }
        self.tail = end;
        self.pending.clear();
        Ok(())
    }

    /// Writes the pending entries at the tail, `[tail, end)`, which [`prepare`](Self::prepare)
    /// filled with zeros: through the mapping when appends are mapped, else with one write.
    fn store(&mut self, file: &dyn StorageFile, end: u64) -> std::io::Result<()> {
        if self.map_writes && !self.deferred && self.map_window(file, end) {
            if let Some(window) = self.window.as_mut() {
                let from = (self.tail - window.start) as usize;
                let to = (end - window.start) as usize;
                if let Some(bytes) = window.map.bytes_mut().get_mut(from..to) {
                    bytes.copy_from_slice(&self.pending);
                    window.map.stored(from, to);
                    return Ok(());
                }
            }
        }
        file.write_all_at(&self.pending, self.tail)
    }

    /// Makes sure the mapping covers `[tail, end)`; false when the storage offers no writable
    /// mappings, or mapping failed (the number of mappings a process may have is bounded, for
    /// one): appends are then written, for good, since the mapping only saves system calls.
    fn map_window(&mut self, file: &dyn StorageFile, end: u64) -> bool {
        let covered = self
            .window
            .as_ref()
            .is_some_and(|window| window.start <= self.tail && end <= window.end);
        if covered {
            return true;
        }
        self.window = None;
        // From the tail to the end of the zeros written ahead of it: a store allocates no
        // block (no SIGBUS on a full disk) and lies inside the file, which is cut while the
        // queue is open only by a failed write's undo, which every handle learns of before it
        // stores again (see `flush` and `open`'s `live`).
        let (start, window_end) = (self.tail, self.prepared_end.max(end));
        match file.map_writable(start, window_end - start) {
            Ok(Some(map)) => {
                self.window = Some(AckWindow {
                    map,
                    start,
                    end: window_end,
                });
                true
            }
            Ok(None) | Err(_) => {
                self.map_writes = false;
                false
            }
        }
    }

    /// Writes zeros ahead of the tail, if `end` lies beyond them: up to `PREPARED_SPACE` past
    /// `end`, rounded up to `PREPARED_SPACE_ALIGN`.
    fn prepare(&mut self, file: &dyn StorageFile, end: u64) -> std::io::Result<()> {
        if end <= self.prepared_end {
            return Ok(());
        }
        let prepared_end = (end + PREPARED_SPACE).next_multiple_of(PREPARED_SPACE_ALIGN);
        let zeros_len = usize::try_from(prepared_end - self.prepared_end)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        file.write_all_at(&vec![0; zeros_len], self.prepared_end)?;
        self.prepared_end = prepared_end;
        Ok(())
    }

    /// Creates the file durably (temporary file, sync, rename, directory sync).
    fn create(&mut self, storage: &dyn Storage) -> Result<()> {
        let log_id = 1;
        storage::write_atomically(
            storage,
            &self.dir,
            ACK_LOG_FILE_NAME,
            &encode_header(log_id),
        )
        .map_err(|error| Error::io("create ack log", &self.path, error))?;
        let file: Arc<dyn StorageFile> = Arc::from(
            storage
                .open(&self.path)
                .map_err(|error| Error::io("open ack log", &self.path, error))?,
        );
        self.file = Some(file);
        self.window = None;
        self.log_id = log_id;
        self.tail = ACK_LOG_HEADER_LEN as u64;
        self.prepared_end = self.tail;
        self.entries_in_file = 0;
        self.marks = true;
        self.synced_end = self.tail;
        Ok(())
    }

    /// The file (if it exists yet) and the ticket a sync of it now would cover, once
    /// [`flush`](AckLog::flush) wrote what is pending.
    pub(crate) fn sync_target(&self) -> (Option<Arc<dyn StorageFile>>, u64) {
        (self.file.clone(), self.appended)
    }

    /// How far a sync of the file now would make it durable, once [`flush`](AckLog::flush)
    /// wrote what is pending: for [`synced`](AckLog::synced).
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// Records that a sync of `file` begun when the tail was `tail` succeeded: the next append
    /// at that tail is marked SYNCED_BEFORE. Ignored when this log no longer has `file` open.
    /// (A failed sync poisons the handle, so no append follows it: after a failed `fdatasync`,
    /// one that succeeds would not show that the earlier writes reached the disk.)
    pub(crate) fn synced(&mut self, file: &Arc<dyn StorageFile>, tail: u64) {
        if self.file.as_ref().is_some_and(|own| Arc::ptr_eq(own, file)) {
            self.synced_end = self.synced_end.max(tail);
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the file stands, for a shared queue's control file: `(log_id, tail,
    /// prepared_end)`, with `log_id` 0 while there is no file.
    pub(crate) fn position(&self) -> (u64, u64, u64) {
        match self.file {
            Some(_) => (self.log_id, self.tail, self.prepared_end),
            None => (0, 0, 0),
        }
    }

    /// Reads the entries another process's consumer appended since this handle's tail, given
    /// where that consumer left the file ([`position`](Self::position)). `None` when the file
    /// is not the one this handle has open (created or rewritten since): it must be opened
    /// again.
    pub(crate) fn catch_up(
        &mut self,
        (log_id, tail, prepared_end): (u64, u64, u64),
    ) -> Result<Option<Vec<AckEntry>>> {
        if log_id != self.position().0 || tail < self.tail || !self.pending.is_empty() {
            return Ok(None);
        }
        let Some(file) = self.file.clone() else {
            return Ok(Some(Vec::new()));
        };
        let len = usize::try_from(tail - self.tail)
            .map_err(|_| Error::corrupt(&self.path, self.tail, "ack log tail out of range"))?;
        let from = self.tail;
        // Through this handle's mapping when it covers them (the entries the other handle
        // wrote are in the page cache it maps): no read call.
        let mapped = self.window.as_mut().and_then(|window| {
            let at = usize::try_from(from.checked_sub(window.start)?).ok()?;
            if tail > window.end {
                return None;
            }
            let bytes: &[u8] = window.map.bytes_mut();
            bytes.get(at..at + len)
        });
        let read;
        let bytes = match mapped {
            Some(bytes) => bytes,
            None => {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, from)
                    .map_err(|error| Error::io("read ack log", &self.path, error))?;
                read = buf;
                &read[..]
            }
        };
        let mut entries = Vec::with_capacity(len / ACK_ENTRY_LEN);
        for (index, chunk) in bytes.chunks(ACK_ENTRY_LEN).enumerate() {
            let offset = self.tail + (index * ACK_ENTRY_LEN) as u64;
            match check_entry(chunk, self.log_id) {
                Ok(entry) => entries.push(entry),
                Err(error) => return Err(Error::corrupt(&self.path, offset, error.to_string())),
            }
        }
        self.tail = tail;
        self.prepared_end = prepared_end.max(tail);
        self.entries_in_file += entries.len() as u64;
        Ok(Some(entries))
    }

    /// What tells this log's state apart for a shared queue's consumer turn: the file's
    /// generation, the entries appended through this handle, and the failed appends it cut.
    pub(crate) fn marker(&self) -> (u64, u64, u64) {
        (self.log_id, self.appended, self.cuts)
    }

    /// Continues the group-commit tickets of `previous` (the log this one replaces in a
    /// running consumer), so that a ticket is never one the consumer's sync group has covered.
    pub(crate) fn continue_tickets(&mut self, previous: &AckLog) {
        self.appended = previous.appended;
    }

    /// True when obsolete entries dominate the file.
    pub(crate) fn wants_rewrite(&self, live_entries: usize) -> bool {
        self.entries_in_file > REWRITE_MIN_ENTRIES && self.entries_in_file > 4 * live_entries as u64
    }

    /// Replaces the log with `live` entries. The caller has made the head durable first. Entries
    /// not written yet are dropped: `live` describes what they said that still matters.
    pub(crate) fn rewrite(&mut self, storage: &dyn Storage, live: &[AckEntry]) -> Result<()> {
        let dir = self.dir.clone();
        // Only needs to differ from the old file's id, so that none of its entries validate.
        let log_id = self.log_id.wrapping_add(1);
        let mut bytes = encode_header(log_id).to_vec();
        for entry in live {
            encode_entry(&mut bytes, log_id, entry);
        }
        storage::write_atomically(storage, &dir, ACK_LOG_FILE_NAME, &bytes)
            .map_err(|error| Error::io("rewrite ack log", &self.path, error))?;
        let file = storage
            .open(&self.path)
            .map_err(|error| Error::io("open ack log", &self.path, error))?;
        self.file = Some(Arc::from(file));
        self.window = None;
        self.log_id = log_id;
        self.tail = bytes.len() as u64;
        self.prepared_end = self.tail;
        self.pending.clear();
        self.entries_in_file = live.len() as u64;
        // Written whole and synced before the rename: a new file, of this build's version.
        self.marks = true;
        self.synced_end = self.tail;
        Ok(())
    }
}

/// Records in `seqs` that the ack log in `dir` says were acknowledged (out of order, beyond a
/// head at `seqs.start`), read without a lock: what a handle that does not consume subtracts
/// from its length. Advice: 0 when the file cannot be read; entries a writer is still appending
/// are not counted.
pub(crate) fn acked_in_file(storage: &dyn Storage, dir: &Path, seqs: std::ops::Range<u64>) -> u64 {
    let Ok(file) = storage.open_read(&dir.join(ACK_LOG_FILE_NAME)) else {
        return 0;
    };
    let Ok(bytes) = storage::read_all(&*file) else {
        return 0;
    };
    let mut history = JobHistory::default();
    // A scan that stops at a torn entry or damage keeps what it read before.
    let _ = scan_ack_log(&bytes, &mut |entry| history.apply(entry));
    history.acked_count_in(seqs)
}
