//! The queue: ties the segments, the head index and the compactor together.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::compactor::{self, CompactReport};
use crate::error::{Error, Result};
use crate::frame::{self, PAYLOAD_LEN_MAX};
use crate::head::{HeadIndex, HeadState};
use crate::options::{Options, SyncPolicy};
use crate::recovery::{self, RecoveryReport};
use crate::segment::{Segment, SEGMENT_HEADER_LEN};
use crate::storage::{DirLock, LockFailure, Mapping, Storage};
use crate::sync::{lock, SyncGroup};
use crate::writer::Writer;

/// The lock file's name inside the queue directory.
pub const LOCK_FILE_NAME: &str = "lock";

/// A record handed out by the queue.
///
/// The payload is not copied out of the segment: it borrows the segment's memory mapping, which
/// stays valid while any record from it is alive (also after the segment is compacted away).
#[derive(Clone)]
pub struct Record {
    seq: u64,
    enqueued_us: u64,
    bytes: Mapping,
    payload: Range<usize>,
}

impl Record {
    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        (*self.bytes)
            .as_ref()
            .get(self.payload.clone())
            .unwrap_or(&[])
    }

    /// When the record was pushed, by the pushing machine's clock.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_us)
    }

    /// When the record was pushed, in microseconds since the Unix epoch.
    pub fn enqueued_at_micros(&self) -> u64 {
        self.enqueued_us
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("seq", &self.seq)
            .field("enqueued_us", &self.enqueued_us)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// A snapshot of a queue's size and position.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Records in the queue.
    pub len: u64,
    /// Sequence number of the oldest record (the next `pop`), or `next_seq` when empty.
    pub head_seq: u64,
    /// Sequence number the next `push` will get.
    pub next_seq: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Bytes of frames not yet consumed.
    pub live_bytes: u64,
    /// Bytes of all segment files and the head index.
    pub disk_bytes: u64,
    /// When the oldest record was pushed.
    pub oldest_enqueued_at: Option<SystemTime>,
}

/// A durable, disk-backed FIFO queue. See the crate documentation for an overview.
///
/// `Queue` is `Send + Sync`: share it between producer and consumer threads with an `Arc`.
pub struct Queue {
    shared: Arc<Shared>,
    flusher: Option<Flusher>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    pub(crate) reader: Mutex<Reader>,
    push_sync: SyncGroup,
    /// Pushers under `SyncPolicy::Always` inside `push_batch`, and the sequence number after
    /// the last record appended: a group-commit leader lets pushers that have not appended yet
    /// do so before it syncs, so that one sync covers them (see `gather_pushers`).
    pushers_inside: AtomicUsize,
    appended_next_seq: AtomicU64,
    pub(crate) head_sync: SyncGroup,
    published_next_seq: AtomicU64,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    pub(crate) compact_lock: Mutex<()>,
    arrivals: Arrivals,
    recovery: RecoveryReport,
    _lock: DirLock,
}

/// A read position.
#[derive(Clone)]
pub(crate) struct Cursor {
    pub(crate) segment: Arc<Segment>,
    pub(crate) offset: u64,
    pub(crate) next_seq: u64,
}

pub(crate) struct Reader {
    pub(crate) cursor: Cursor,
    pub(crate) head: HeadIndex,
}

impl Queue {
    /// Opens the queue in `dir`, creating the directory and an empty queue if needed, and
    /// recovering from a crash if the last process did not close it.
    ///
    /// Takes an exclusive lock on the directory: a second `open` of it, from this process or
    /// another, fails with [`Error::Locked`].
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Queue> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let storage = options.storage.clone();
        storage
            .create_dir_all(&dir)
            .map_err(|error| Error::io("create queue directory", &dir, error))?;
        let dir_lock = storage.lock_dir(&dir).map_err(|failure| match failure {
            LockFailure::Held { pid } => Error::Locked {
                dir: dir.clone(),
                pid,
            },
            LockFailure::Io(error) => Error::io("lock", dir.join(LOCK_FILE_NAME), error),
        })?;
        let recovered = recovery::recover(&*storage, &dir, &options)?;
        let head_generation = recovered.head.generation();
        let shared = Arc::new(Shared {
            dir,
            storage,
            segments: RwLock::new(recovered.segments),
            writer: Mutex::new(Writer::new(
                recovered.active,
                recovered.active_file,
                recovered.tail,
                recovered.next_seq,
            )),
            reader: Mutex::new(Reader {
                cursor: Cursor {
                    segment: recovered.head_segment,
                    offset: recovered.head_offset,
                    next_seq: recovered.head.state().head_seq,
                },
                head: recovered.head,
            }),
            push_sync: SyncGroup::new(recovered.next_seq),
            pushers_inside: AtomicUsize::new(0),
            appended_next_seq: AtomicU64::new(recovered.next_seq),
            head_sync: SyncGroup::new(head_generation),
            published_next_seq: AtomicU64::new(recovered.next_seq),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            compact_lock: Mutex::new(()),
            arrivals: Arrivals::default(),
            recovery: recovered.report,
            _lock: dir_lock,
            options,
        });
        if shared.options.auto_compact {
            compactor::compact(&shared)?;
        }
        let flusher = match shared.options.sync {
            SyncPolicy::Interval(interval) => Some(
                Flusher::start(&shared, interval)
                    .map_err(|error| Error::io("start flusher thread", &shared.dir, error))?,
            ),
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        Ok(Queue { shared, flusher })
    }

    /// Appends one record and returns its sequence number.
    ///
    /// Under [`SyncPolicy::Always`] the record is durable when this returns. Under every policy
    /// its bytes are in the kernel, so a process kill cannot lose it.
    pub fn push(&self, payload: &[u8]) -> Result<u64> {
        self.shared
            .push_batch(std::slice::from_ref(&payload))
            .map(|range| range.start)
    }

    /// Appends records atomically: after any crash either all of them are in the queue or none.
    /// Returns their sequence numbers. The batch must fit in one segment.
    pub fn push_batch<I, P>(&self, payloads: I) -> Result<Range<u64>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        let payloads: Vec<P> = payloads.into_iter().collect();
        let slices: Vec<&[u8]> = payloads.iter().map(AsRef::as_ref).collect();
        self.shared.push_batch(&slices)
    }

    /// Removes and returns the oldest record, or `None` when the queue is empty.
    ///
    /// Under [`SyncPolicy::Always`] the removal is durable when this returns: the record will
    /// never be returned again, whatever crash follows.
    pub fn pop(&self) -> Result<Option<Record>> {
        Ok(self.pop_batch(1)?.pop())
    }

    /// Like [`pop`](Queue::pop), but when the queue is empty waits up to `timeout` for a record
    /// to arrive (without spinning). Returns `None` if none arrived in time.
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(record) = self.pop()? {
                return Ok(Some(record));
            }
            if !self.shared.wait_for_records(deadline) {
                return Ok(None);
            }
        }
    }

    /// Removes and returns up to `max` of the oldest records, with one head update for all.
    pub fn pop_batch(&self, max: usize) -> Result<Vec<Record>> {
        self.shared.pop_with(max, Ok)
    }

    /// Removes records one at a time through `convert`; a record that `convert` rejects stays in
    /// the queue and its error is returned (used by the typed layer, so that a payload that does
    /// not decode is not lost).
    pub(crate) fn pop_with<T>(
        &self,
        max: usize,
        convert: impl FnMut(Record) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.shared.pop_with(max, convert)
    }

    /// Returns the oldest record without removing it.
    pub fn peek(&self) -> Result<Option<Record>> {
        self.shared.peek()
    }

    /// The number of records in the queue.
    pub fn len(&self) -> u64 {
        let head = lock(&self.shared.reader).cursor.next_seq;
        self.shared
            .published_next_seq
            .load(Ordering::Acquire)
            .saturating_sub(head)
    }

    /// True when the queue holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes and positions; see [`Stats`].
    pub fn stats(&self) -> Result<Stats> {
        self.shared.stats()
    }

    /// Makes every push and pop so far durable, whatever the sync policy.
    pub fn sync(&self) -> Result<()> {
        self.shared.sync_all()
    }

    /// Deletes every segment whose records have all been consumed. Runs automatically unless
    /// [`Options::auto_compact`] is off.
    pub fn compact(&self) -> Result<CompactReport> {
        compactor::compact(&self.shared)
    }

    /// What recovery found and did when this queue was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The options the queue was opened with.
    pub fn options(&self) -> &Options {
        &self.shared.options
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // A cleanly closed queue holds no zeros after its data; if this fails, recovery treats
        // the zeros as free space anyway.
        let _ = lock(&self.shared.writer).trim();
        if let Some(flusher) = self.flusher.take() {
            flusher.stop();
            // A clean close under Interval leaves nothing to a later power loss.
            let _ = self.shared.sync_all();
        }
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Shared {
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let cause = lock(&self.poison_cause).clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    /// Records a failure after which the state on disk is unknown; later changes are refused.
    pub(crate) fn poison(&self, error: Error) -> Error {
        let mut cause = lock(&self.poison_cause);
        if cause.is_none() {
            *cause = Some(error.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
        error
    }

    fn push_batch(&self, payloads: &[&[u8]]) -> Result<Range<u64>> {
        self.check_poisoned()?;
        let max = self.options.max_record_size_bytes();
        let mut batch_len = 0u64;
        for payload in payloads {
            if payload.len() > max {
                return Err(Error::RecordTooLarge {
                    len: payload.len(),
                    max,
                });
            }
            batch_len += frame::frame_len(payload.len()) as u64;
        }
        if batch_len > self.options.segment_room() {
            return Err(Error::BatchTooLarge {
                len: batch_len,
                max: self.options.segment_room(),
            });
        }
        let enqueued_us = now_micros();
        let always = self.options.sync == SyncPolicy::Always;
        let _inside = always.then(|| Inside::enter(&self.pushers_inside));
        let (segment, range, end) = {
            let mut writer = lock(&self.writer);
            if payloads.is_empty() {
                return Ok(writer.next_seq..writer.next_seq);
            }
            let has_records = writer.tail > SEGMENT_HEADER_LEN as u64;
            if has_records && writer.tail + batch_len > self.options.segment_size {
                self.roll(&mut writer)?;
            }
            let first = writer.next_seq;
            let appended =
                writer.append(payloads, batch_len, enqueued_us, self.options.segment_size);
            if let Err(failure) = appended {
                return Err(if failure.poison {
                    self.poison(failure.error)
                } else {
                    failure.error
                });
            }
            if always {
                self.appended_next_seq
                    .fetch_max(writer.next_seq, Ordering::AcqRel);
            } else {
                writer.active.publish(writer.tail);
                self.published_next_seq
                    .fetch_max(writer.next_seq, Ordering::SeqCst);
                self.arrivals.notify();
            }
            (writer.active.clone(), first..writer.next_seq, writer.tail)
        };
        if always {
            self.push_sync
                .wait(range.end, || {
                    self.gather_pushers();
                    self.sync_data()
                })
                .map_err(|error| self.poison(error))?;
            // Readers see a record only once it is durable.
            segment.publish(end);
            self.published_next_seq
                .fetch_max(range.end, Ordering::SeqCst);
            self.arrivals.notify();
        }
        Ok(range)
    }

    /// Lets pushers that are about to append do so before the group's sync, so that it covers
    /// them instead of leaving them to the next one: while more pushers are inside `push_batch`
    /// than records wait for the sync, some pusher has yet to append (or is on its way out after
    /// the previous sync, and may be back at once), so the leader yields the processor, a
    /// bounded number of times. A lone pusher never yields.
    fn gather_pushers(&self) {
        let durable = self.push_sync.durable();
        for _ in 0..GATHER_YIELDS_MAX {
            let pending = self
                .appended_next_seq
                .load(Ordering::Acquire)
                .saturating_sub(durable);
            if self.pushers_inside.load(Ordering::Acquire) as u64 <= pending {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Syncs the active segment; returns the sequence number below which all is durable.
    fn sync_data(&self) -> Result<u64> {
        let (file, path, target) = {
            let writer = lock(&self.writer);
            (
                writer.file.clone(),
                writer.active.path.clone(),
                writer.next_seq,
            )
        };
        file.sync_data()
            .map_err(|error| Error::io("sync segment", path, error))?;
        Ok(target)
    }

    /// Seals the active segment and starts a new one at the next sequence number.
    fn roll(&self, writer: &mut Writer) -> Result<()> {
        // Sealed segments are always durable, so damage in one is never a torn write; their
        // length is their data's (the zeros ahead of the tail are cut first).
        if let Err(error) = writer.trim().and_then(|()| writer.file.sync_data()) {
            let error = Error::io("sync segment", &writer.active.path, error);
            return Err(self.poison(error));
        }
        self.push_sync.mark_durable(writer.next_seq);
        let (segment, file) = recovery::create_segment(
            &*self.storage,
            &self.dir,
            writer.next_seq,
            self.options.segment_size,
        )?;
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment.base_seq, segment.clone());
        writer.active.seal(writer.tail);
        writer.start_segment(segment, file);
        Ok(())
    }

    fn pop_with<T>(
        &self,
        max: usize,
        mut convert: impl FnMut(Record) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.check_poisoned()?;
        let mut out = Vec::new();
        let (generation, crossed) = {
            let mut reader = lock(&self.reader);
            let mut cursor = reader.cursor.clone();
            let mut crossed = false;
            while out.len() < max {
                let mut next = cursor.clone();
                let step = self
                    .read_next(&mut next)
                    .and_then(|record| record.map(&mut convert).transpose());
                match step {
                    Ok(Some(value)) => {
                        crossed |= !Arc::ptr_eq(&next.segment, &cursor.segment);
                        out.push(value);
                        cursor = next;
                    }
                    Ok(None) => break,
                    // Hand out what was read before the problem; the next call meets it again.
                    Err(_) if !out.is_empty() => break,
                    Err(error) => return Err(error),
                }
            }
            if out.is_empty() {
                return Ok(out);
            }
            let state = HeadState {
                head_seq: cursor.next_seq,
                hint_base: cursor.segment.base_seq,
                hint_offset: cursor.offset,
            };
            let generation = reader
                .head
                .write(state)
                .map_err(|error| self.poison(error))?;
            reader.cursor = cursor;
            (generation, crossed)
        };
        if self.options.sync == SyncPolicy::Always {
            self.head_sync
                .wait(generation, || lock(&self.reader).head.sync())
                .map_err(|error| self.poison(error))?;
        }
        if crossed && self.options.auto_compact {
            // The records are already consumed; a failed compaction is retried by the next one
            // and an I/O failure in it poisons the queue, so the caller learns of it next call.
            let _ = compactor::compact(self);
        }
        Ok(out)
    }

    /// Reads the record at `cursor` and advances it; `None` at the end of the queue.
    fn read_next(&self, cursor: &mut Cursor) -> Result<Option<Record>> {
        loop {
            let end = cursor.segment.readable_end();
            if cursor.offset < end {
                let view = cursor.segment.view(end)?;
                let bytes = (*view).as_ref();
                let start = cursor.offset as usize;
                let at = bytes.get(start..end as usize).unwrap_or(&[]);
                let frame =
                    frame::decode(at, cursor.next_seq, PAYLOAD_LEN_MAX).map_err(|error| {
                        Error::corrupt(&cursor.segment.path, cursor.offset, error.to_string())
                    })?;
                let record = Record {
                    seq: cursor.next_seq,
                    enqueued_us: frame.header.enqueued_us,
                    bytes: view.clone(),
                    payload: start + frame.payload.start..start + frame.payload.end,
                };
                cursor.offset += frame.frame_len as u64;
                cursor.next_seq += 1;
                return Ok(Some(record));
            }
            if !cursor.segment.is_sealed() || cursor.offset < cursor.segment.readable_end() {
                // Not sealed: this is the end. Sealed meanwhile: read the rest first.
                if cursor.segment.is_sealed() {
                    continue;
                }
                return Ok(None);
            }
            let next = self
                .segments
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .range(cursor.segment.base_seq + 1..)
                .next()
                .map(|(_, segment)| segment.clone());
            let Some(next) = next else {
                return Ok(None);
            };
            next.ensure_open(&*self.storage)?;
            if next.base_seq != cursor.next_seq {
                return Err(Error::corrupt(
                    &next.path,
                    0,
                    format!(
                        "records {}..{} are missing: the previous segment ends before {} and \
                         this one starts at {}",
                        cursor.next_seq, next.base_seq, cursor.next_seq, next.base_seq
                    ),
                ));
            }
            cursor.segment = next;
            cursor.offset = SEGMENT_HEADER_LEN as u64;
        }
    }

    /// Blocks until a record may be available or `deadline` passes; false when it passed.
    pub(crate) fn wait_for_records(&self, deadline: Instant) -> bool {
        let head = lock(&self.reader).cursor.next_seq;
        self.arrivals.wait_until(deadline, || {
            self.published_next_seq.load(Ordering::SeqCst) > head
        })
    }

    fn peek(&self) -> Result<Option<Record>> {
        let mut cursor = lock(&self.reader).cursor.clone();
        self.read_next(&mut cursor)
    }

    fn stats(&self) -> Result<Stats> {
        let cursor = lock(&self.reader).cursor.clone();
        let next_seq = self.published_next_seq.load(Ordering::Acquire);
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut live_bytes = 0;
        let mut disk_bytes = crate::head::HEAD_FILE_LEN;
        for segment in &segments {
            segment.ensure_open(&*self.storage)?;
            let len = match segment.file() {
                Some(file) => file
                    .len()
                    .map_err(|error| Error::io("stat segment", &segment.path, error))?,
                None => 0,
            };
            disk_bytes += len;
            if segment.base_seq == cursor.segment.base_seq {
                live_bytes += segment.readable_end().saturating_sub(cursor.offset);
            } else if segment.base_seq > cursor.segment.base_seq {
                live_bytes += segment
                    .readable_end()
                    .saturating_sub(SEGMENT_HEADER_LEN as u64);
            }
        }
        let oldest_enqueued_at = self.peek()?.map(|record| record.enqueued_at());
        Ok(Stats {
            len: next_seq.saturating_sub(cursor.next_seq),
            head_seq: cursor.next_seq,
            next_seq,
            segments: segments.len(),
            live_bytes,
            disk_bytes,
            oldest_enqueued_at,
        })
    }

    pub(crate) fn sync_all(&self) -> Result<()> {
        self.check_poisoned()?;
        let covered = self.sync_data().map_err(|error| self.poison(error))?;
        self.push_sync.mark_durable(covered);
        let generation = lock(&self.reader)
            .head
            .sync()
            .map_err(|error| self.poison(error))?;
        self.head_sync.mark_durable(generation);
        Ok(())
    }
}

/// The most times a group-commit leader yields to pushers about to append before it syncs.
const GATHER_YIELDS_MAX: usize = 64;

/// Counts a pusher as inside `push_batch` for as long as it lives.
struct Inside<'a>(&'a AtomicUsize);

impl<'a> Inside<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Inside(counter)
    }
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wakes threads waiting for records. Publishers pay only an atomic load when nobody waits.
#[derive(Default)]
struct Arrivals {
    waiters: AtomicUsize,
    lock: Mutex<()>,
    arrived: Condvar,
}

impl Arrivals {
    fn notify(&self) {
        // SeqCst pairs with `wait_until`: either the waiter is counted before this load, or the
        // publication is visible to the waiter's check.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.lock);
            self.arrived.notify_all();
        }
    }

    /// Waits until `ready()` or `deadline`; returns `ready()`'s last answer.
    fn wait_until(&self, deadline: Instant, ready: impl Fn() -> bool) -> bool {
        let mut guard = lock(&self.lock);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let outcome = loop {
            if ready() {
                break true;
            }
            let now = Instant::now();
            if now >= deadline {
                break false;
            }
            guard = self
                .arrived
                .wait_timeout(guard, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

/// The background thread of [`SyncPolicy::Interval`].
struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(shared: &Arc<Shared>, interval: Duration) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("diskspool-flusher".into())
            .spawn(move || loop {
                let (stopped, wake) = &*signal;
                let guard = lock(stopped);
                let (guard, _) = wake
                    .wait_timeout_while(guard, interval, |stopped| !*stopped)
                    .unwrap_or_else(PoisonError::into_inner);
                if *guard {
                    return;
                }
                drop(guard);
                let Some(shared) = weak.upgrade() else { return };
                // A failure poisons the queue; the next call on it reports the error.
                let _ = shared.sync_all();
            })?;
        Ok(Flusher {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
