//! The ack log file of a running queue: appends (deferred under the group commit), the space
//! prepared ahead of its tail, and rewrites. The entry bytes are `format::acklog`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::report::{RecoveryReport, Truncation};
use crate::error::{Error, Result};
use crate::format::acklog::*;
use crate::format::layout::ACK_LOG_FILE_NAME;
use crate::format::segment::PREPARED_SPACE_ALIGN;
use crate::storage::{self, Storage, StorageFile};

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
    /// the log does not (that holder synced what its policy asks).
    pub(crate) fn open(
        storage: &dyn Storage,
        dir: &Path,
        head: u64,
        appends_synced: bool,
        settle: bool,
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
        // A torn append followed by valid ones is what a power loss leaves when appends are not
        // synced one by one (`Never`, `Interval`): skipped (its one fact was not durable),
        // reported, and the log rewritten below so that every reader agrees. Under `Always`
        // every append was synced before the next was written, so it is damage: refused.
        let mut skipped = false;
        if let Some(damage) = scan.damage {
            if appends_synced || !damage.checksum_only {
                return Err(Error::corrupt(&path, damage.offset, damage.detail));
            }
            report.skipped_ack_entries.push(damage.offset);
            skipped = true;
        }
        let truncations = &mut report.truncated;
        let log_id = scan.log_id;
        let entries_in_file = scan.entries;
        let offset = scan.valid_end as usize;
        if scan.end != AckLogEnd::Clean {
            file.set_len(offset as u64)
                .map_err(io_error("truncate torn ack log tail"))?;
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
        if settle || skipped || scan.end == AckLogEnd::TornEntry {
            file.sync_data().map_err(io_error("sync ack log"))?;
        }
        history.prune_below(head);
        let mut log = AckLog {
            path,
            dir: dir.to_path_buf(),
            file: Some(file),
            log_id,
            tail: offset as u64,
            prepared_end: offset as u64,
            entries_in_file,
            appended: 0,
            pending: Vec::new(),
            deferred: false,
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

    /// Writes the entries appended but not written yet, with one write.
    pub(crate) fn flush(&mut self) -> Result<()> {
        let Some(file) = self.file.clone() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let end = self.tail + self.pending.len() as u64;
        let written = self
            .prepare(&*file, end)
            .and_then(|()| file.write_all_at(&self.pending, self.tail));
        if let Err(error) = written {
            // Undo a partial append so that no fragment is left between entries (the prepared
            // zeros go too).
            self.prepared_end = self.tail;
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
        self.log_id = log_id;
        self.tail = ACK_LOG_HEADER_LEN as u64;
        self.prepared_end = self.tail;
        self.entries_in_file = 0;
        Ok(())
    }

    /// The file (if it exists yet) and the ticket a sync of it now would cover, once
    /// [`flush`](AckLog::flush) wrote what is pending.
    pub(crate) fn sync_target(&self) -> (Option<Arc<dyn StorageFile>>, u64) {
        (self.file.clone(), self.appended)
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
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, self.tail)
            .map_err(|error| Error::io("read ack log", &self.path, error))?;
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
    /// generation and the entries appended through this handle.
    pub(crate) fn marker(&self) -> (u64, u64) {
        (self.log_id, self.appended)
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
        self.log_id = log_id;
        self.tail = bytes.len() as u64;
        self.prepared_end = self.tail;
        self.pending.clear();
        self.entries_in_file = live.len() as u64;
        Ok(())
    }
}
