//! The queue: ties the segments, the head index and the compactor together.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::engine::compactor::{self, CompactReport};
use crate::engine::head::SyncStart;
use crate::engine::jobs::{Delivery, Jobs};
use crate::engine::pool;
use crate::engine::reader::{Cursor, Reader};
use crate::engine::recovery::{self};
use crate::engine::report::RecoveryReport;
use crate::engine::segment::Segment;
use crate::engine::sync::{lock, SyncGroup};
use crate::engine::writer::Writer;
use crate::error::{Error, Result};
use crate::format::frame;
use crate::format::head::HeadState;
use crate::format::layout::LOCK_FILE_NAME;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::options::{Options, SyncPolicy};
use crate::stats::Stats;
use crate::storage::queue_dir;
use crate::storage::{DirLock, LockFailure, Mapping, Storage};

/// A record handed out by the queue.
///
/// The payload is not copied out of the segment: it borrows the segment's memory mapping, which
/// stays valid while any record from it is alive (also after the segment is compacted away).
#[derive(Clone)]
pub struct Record {
    seq: u64,
    enqueued_us: u64,
    not_before_us: u64,
    bytes: Mapping,
    payload: Range<usize>,
}

impl Record {
    pub(crate) fn new(
        seq: u64,
        enqueued_us: u64,
        not_before_us: u64,
        bytes: Mapping,
        payload: Range<usize>,
    ) -> Self {
        Record {
            seq,
            enqueued_us,
            not_before_us,
            bytes,
            payload,
        }
    }

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

    /// When the record was pushed, by the pushing machine's clock: its coarse clock (the latest
    /// kernel tick, up to 1–10 ms early) unless the queue was opened with
    /// [`Options::precise_timestamps`].
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_us)
    }

    /// When the record was pushed, in microseconds since the Unix epoch.
    pub fn enqueued_at_micros(&self) -> u64 {
        self.enqueued_us
    }

    /// For a record pushed with [`Queue::push_delayed`]: the time before which it is not
    /// handed out.
    pub fn not_before(&self) -> Option<SystemTime> {
        (self.not_before_us != 0).then(|| UNIX_EPOCH + Duration::from_micros(self.not_before_us))
    }

    /// The not-before time in microseconds since the Unix epoch; 0 when the record has none.
    pub fn not_before_us(&self) -> u64 {
        self.not_before_us
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
    /// Gaps between segments that `repair` retired (see `recovery::retired_ranges`).
    pub(crate) retired: BTreeMap<u64, u64>,
    pub(crate) options: Options,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    pub(crate) reader: Mutex<Reader>,
    push_sync: SyncGroup,
    pub(crate) head_sync: SyncGroup,
    pub(crate) ack_sync: SyncGroup,
    published_next_seq: AtomicU64,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    pub(crate) compact_lock: Mutex<()>,
    /// Consumed segment files kept for reuse (see `pool`), at most `Options::segment_pool`.
    pub(crate) pool: Mutex<Vec<PathBuf>>,
    pub(crate) arrivals: Arrivals,
    pub(crate) dead_letters: Mutex<Option<Arc<Queue>>>,
    #[cfg(feature = "async")]
    pub(crate) timer: crate::engine::asynchronous::Timer,
    recovery: RecoveryReport,
    _lock: DirLock,
}

/// A batch written at the tail, not yet complete.
pub(crate) struct Written {
    /// The segment to publish `end` in once durable: only under `SyncPolicy::Always` (the
    /// other policies publish while writing, and skip the reference count).
    segment: Option<Arc<Segment>>,
    range: Range<u64>,
    end: u64,
}

impl Queue {
    /// Opens the queue in `dir`, creating the directory and an empty queue if needed, and
    /// recovering from a crash if the last process did not close it.
    ///
    /// Takes an exclusive lock on the directory: a second `open` of it, from this process or
    /// another, fails with [`Error::Locked`].
    pub fn open(dir: impl AsRef<Path>, mut options: Options) -> Result<Queue> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let storage = options.storage.clone();
        if !options.create_if_missing && !queue_dir::is_queue(&*storage, &dir)? {
            return Err(Error::NotAQueue { dir });
        }
        check_owner(&*storage, &dir)?;
        let dir_lock = create_and_lock_with_mode(&*storage, &dir, Some(options.dir_mode()))?;
        recovery::settle_at_open(&*storage, &dir, &mut options)?;
        // Checked again: limits that depend on the segment size now see the queue's own.
        options.validate()?;
        let mut recovered = recovery::recover(&*storage, &dir, &options)?;
        let pool_files = std::mem::take(&mut recovered.pool_files);
        let pool = pool::adopt(&*storage, &dir, pool_files, options.segment_pool)?;
        let head_generation = recovered.head.generation();
        // Under `Always` every ack log append waits for a group-commit sync: its leader writes
        // them all at once.
        recovered
            .acklog
            .defer_writes(options.sync == SyncPolicy::Always);
        let shared = Arc::new(Shared {
            dir,
            retired: std::mem::take(&mut recovered.retired),
            storage,
            segments: RwLock::new(recovered.segments),
            writer: Mutex::new(Writer::new(
                recovered.active,
                recovered.active_file,
                recovered.tail,
                recovered.next_seq,
                options.mapped_writes,
                options.sync == SyncPolicy::Always,
            )),
            reader: Mutex::new(Reader {
                cursor: Cursor::new(
                    recovered.head_segment,
                    recovered.head_offset,
                    recovered.head.state().head_seq,
                ),
                head: recovered.head,
                jobs: Jobs::with_history(recovered.history),
                acklog: recovered.acklog,
            }),
            push_sync: SyncGroup::new(recovered.next_seq),
            head_sync: SyncGroup::new(head_generation),
            ack_sync: SyncGroup::new(0),
            published_next_seq: AtomicU64::new(recovered.next_seq),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            compact_lock: Mutex::new(()),
            pool: Mutex::new(pool),
            arrivals: Arrivals::default(),
            dead_letters: Mutex::new(None),
            #[cfg(feature = "async")]
            timer: crate::engine::asynchronous::Timer::default(),
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
        self.shared.push_one(payload)
    }

    /// Appends one record that is not handed out (by `pop`, `peek` or `recv`) before `delay`
    /// has passed. The delay is stored in the record, so it holds across restarts. Records
    /// pushed after it are not held up by it.
    pub fn push_delayed(&self, payload: &[u8], delay: Duration) -> Result<u64> {
        let delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let not_before_us = now_micros().saturating_add(delay_us).max(1);
        self.shared
            .push_batch(std::slice::from_ref(&payload), not_before_us)
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
        self.shared.push_batch(&slices, 0)
    }

    /// Removes and returns the oldest record, or `None` when the queue is empty.
    ///
    /// Under [`SyncPolicy::Always`] the removal is durable when this returns: the record will
    /// never be returned again, whatever crash follows.
    pub fn pop(&self) -> Result<Option<Record>> {
        self.shared.pop_one()
    }

    /// Like [`pop`](Queue::pop), but when the queue is empty waits up to `timeout` for a record
    /// to arrive (without spinning). Returns `None` if none arrived in time.
    pub fn pop_timeout(&self, timeout: Duration) -> Result<Option<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.arrivals.epoch();
            if let Some(record) = self.pop()? {
                return Ok(Some(record));
            }
            if !self.shared.wait_for_change(seen, deadline) {
                return Ok(None);
            }
        }
    }

    /// Hands out the oldest record that is not leased, under a lease of
    /// [`Options::lease`](crate::Options::lease): at-least-once delivery. Acknowledge it with
    /// [`Delivery::ack`] when the job is done; if the lease runs out first, or the delivery is
    /// dropped or released, the record is handed out again. Returns `None` when no record is
    /// available.
    ///
    /// Use `recv` when losing a job to a crashed worker is not acceptable; [`pop`](Queue::pop)
    /// is the at-most-once fast path.
    pub fn recv(&self) -> Result<Option<Delivery>> {
        Ok(self.shared.recv_batch(1)?.pop())
    }

    /// Hands out up to `max` records, each under its own lease, with one ack-log write.
    pub fn recv_batch(&self, max: usize) -> Result<Vec<Delivery>> {
        self.shared.recv_batch(max)
    }

    /// Like [`recv`](Queue::recv), but waits up to `timeout` for a record to become available:
    /// pushed, released, or its delay or lease run out. Waits without spinning.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.shared.arrivals.epoch();
            if let Some(delivery) = self.recv()? {
                return Ok(Some(delivery));
            }
            if !self.shared.wait_for_change(seen, deadline) && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Receives asynchronously: resolves when a record is handed out. Works with any executor
    /// (it needs no runtime): a waiting future is woken by pushes and releases, and by a small
    /// timer thread for delays and lease expiries.
    #[cfg(feature = "async")]
    pub fn recv_async(&self) -> crate::engine::asynchronous::Recv<'_> {
        crate::engine::asynchronous::Recv::new(self)
    }

    /// Removes and returns up to `max` of the oldest records, with one head update for all.
    pub fn pop_batch(&self, max: usize) -> Result<Vec<Record>> {
        self.shared.pop_with(max, Ok, Vec::new())
    }

    /// Removes records one at a time through `convert`; a record that `convert` rejects stays in
    /// the queue and its error is returned (used by the typed layer, so that a payload that does
    /// not decode is not lost).
    pub(crate) fn pop_with<T>(
        &self,
        max: usize,
        convert: impl FnMut(Record) -> Result<T>,
    ) -> Result<Vec<T>> {
        self.shared.pop_with(max, convert, Vec::new())
    }

    /// Like [`pop_with`](Queue::pop_with) for one record, without allocating.
    pub(crate) fn pop_one_with<T>(
        &self,
        convert: impl FnMut(Record) -> Result<T>,
    ) -> Result<Option<T>> {
        self.shared.pop_with(1, convert, None)
    }

    /// Returns the oldest record without removing it.
    pub fn peek(&self) -> Result<Option<Record>> {
        self.shared.peek()
    }

    /// The number of records in the queue.
    pub fn len(&self) -> u64 {
        let published = self.shared.published_next_seq.load(Ordering::Acquire);
        lock(&self.shared.reader).len(published)
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

    /// Deletes every segment whose records have all been consumed, and the files kept for reuse
    /// ([`Options::segment_pool`]). Runs automatically unless [`Options::auto_compact`] is off;
    /// the automatic runs keep the pool.
    pub fn compact(&self) -> Result<CompactReport> {
        compactor::compact_and_release_pool(&self.shared)
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

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // A cleanly closed queue holds no zeros after its data; if this fails, recovery treats
        // the zeros as free space anyway.
        let _ = lock(&self.shared.writer).trim();
        #[cfg(feature = "async")]
        self.shared.timer.stop();
        if let Some(flusher) = self.flusher.take() {
            flusher.stop();
        }
        // The head records how far the records are synced, so that damage to them found at the
        // next open is refused rather than cut as unsynced writes. Under Always and Interval a
        // clean close syncs everything first (under Interval it then leaves nothing to a later
        // power loss; under Always every push is synced already, and the head is synced lazily);
        // Never syncs only when asked, so it records what earlier syncs covered.
        let _ = match self.shared.options.sync {
            SyncPolicy::Always | SyncPolicy::Interval(_) => self.shared.sync_all(),
            SyncPolicy::Never => self.shared.record_synced_seq(),
        };
    }
}

/// Refuses to change another user's queue unless the process is root (see [`Error::NotOwner`]).
/// A directory that does not exist yet will be this process's own.
pub(crate) fn check_owner(storage: &dyn Storage, dir: &Path) -> Result<()> {
    match storage.dir_owner(dir) {
        Ok(Some(owner)) if !owner.is_process && !owner.process_is_root => Err(Error::NotOwner {
            dir: dir.to_path_buf(),
            owner: owner.uid,
        }),
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::io("stat queue directory", dir, error)),
    }
}

/// Refuses to number `count` more records from the writer's next sequence number when that would
/// reach `frame::SEQ_LIMIT`: sequence numbers are never reused, so none is handed out twice
/// and none wraps around.
pub(crate) fn check_room(writer: &Writer, count: usize) -> Result<()> {
    let count = count as u64;
    if count > frame::SEQ_LIMIT.saturating_sub(writer.next_seq) {
        return Err(Error::SeqExhausted {
            next_seq: writer.next_seq,
            count,
        });
    }
    Ok(())
}

/// Creates `dir` if needed and takes its exclusive lock.
pub(crate) fn create_and_lock(storage: &dyn Storage, dir: &Path) -> Result<DirLock> {
    create_and_lock_with_mode(storage, dir, None)
}

/// Like [`create_and_lock`]; when `new_dir_mode` is given and the directory holds no queue yet
/// (no settings file, no head), its mode is set first, so that every file in it, the lock file
/// included, gets its read and write bits.
pub(crate) fn create_and_lock_with_mode(
    storage: &dyn Storage,
    dir: &Path,
    new_dir_mode: Option<u32>,
) -> Result<DirLock> {
    storage
        .create_dir_all(dir)
        .map_err(|error| Error::io("create directory", dir, error))?;
    if let Some(mode) = new_dir_mode {
        if queue_dir::is_new_queue(storage, dir)? {
            storage
                .set_dir_mode(dir, mode)
                .map_err(|error| Error::io("set queue directory mode", dir, error))?;
        }
    }
    storage.lock_dir(dir).map_err(|failure| match failure {
        LockFailure::Held { pid } => Error::Locked {
            dir: dir.to_path_buf(),
            pid,
        },
        LockFailure::Io(error) => Error::io("lock", dir.join(LOCK_FILE_NAME), error),
    })
}

/// Microseconds since the Unix epoch, from the precise real-time clock.
pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch from the coarse real-time clock: the time of the latest
/// kernel tick (1–10 ms ago), read in a quarter of the time of the precise clock (measured
/// here: 7 ns against 28 ns, on a push that costs well under 100 ns).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
pub(crate) fn coarse_now_micros() -> u64 {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let seconds = u64::try_from(time.tv_sec).unwrap_or(0);
    let micros = u64::try_from(time.tv_nsec).unwrap_or(0) / 1000;
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

/// Where there is no coarse clock, the precise one.
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
pub(crate) fn coarse_now_micros() -> u64 {
    now_micros()
}

impl Shared {
    #[inline]
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(self.poisoned_error());
        }
        Ok(())
    }

    #[cold]
    fn poisoned_error(&self) -> Error {
        let cause = lock(&self.poison_cause).clone().unwrap_or_default();
        Error::Poisoned { cause }
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

    fn push_batch(&self, payloads: &[&[u8]], not_before_us: u64) -> Result<Range<u64>> {
        let batch_len = self.check_batch(payloads, not_before_us)?;
        let always = self.options.sync == SyncPolicy::Always;
        // Announced to the group commit, so that a leader lets this push join its sync.
        let _entered = always.then(|| self.push_sync.enter());
        let written = {
            let mut writer = self.lock_writer();
            if payloads.is_empty() {
                return Ok(writer.next_seq..writer.next_seq);
            }
            self.write_locked(&mut writer, payloads, not_before_us, batch_len)?
        };
        self.complete(written)
    }

    /// One `push`. Under the policies that publish while writing, nothing is left to do once
    /// the frame is written, so the write is all there is.
    fn push_one(&self, payload: &[u8]) -> Result<u64> {
        let payloads = std::slice::from_ref(&payload);
        if self.options.sync == SyncPolicy::Always {
            return self.push_batch(payloads, 0).map(|range| range.start);
        }
        let frame_len = self.check_batch(payloads, 0)?;
        let mut writer = self.lock_writer();
        let seq = writer.next_seq;
        self.write_locked(&mut writer, payloads, 0, frame_len)?;
        Ok(seq)
    }

    /// Checks a batch against the limits; returns its encoded length.
    pub(crate) fn check_batch(&self, payloads: &[&[u8]], not_before_us: u64) -> Result<u64> {
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
            let body_len = frame::body_len(payload.len(), not_before_us != 0);
            batch_len += frame::frame_len(body_len) as u64;
        }
        if batch_len > self.options.segment_room() {
            return Err(Error::BatchTooLarge {
                len: batch_len,
                max: self.options.segment_room(),
            });
        }
        Ok(batch_len)
    }

    /// The writer, locked: while it is held no other push can take a sequence number.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Writes a checked, non-empty batch at the tail. Under every policy the bytes are in the
    /// kernel when this returns; [`complete`](Shared::complete) makes them durable and visible.
    pub(crate) fn write_locked(
        &self,
        writer: &mut Writer,
        payloads: &[&[u8]],
        not_before_us: u64,
        batch_len: u64,
    ) -> Result<Written> {
        debug_assert!(!payloads.is_empty());
        check_room(writer, payloads.len())?;
        let enqueued_us = if self.options.precise_timestamps {
            now_micros()
        } else {
            coarse_now_micros()
        };
        let has_records = writer.tail > SEGMENT_HEADER_LEN as u64;
        if has_records && writer.tail + batch_len > self.options.segment_size {
            self.roll(writer)?;
        }
        let first = writer.next_seq;
        let appended = writer.append(
            payloads,
            batch_len,
            enqueued_us,
            not_before_us,
            self.options.segment_size,
        );
        if let Err(failure) = appended {
            return Err(if failure.poison {
                self.poison(failure.error)
            } else {
                failure.error
            });
        }
        if self.options.sync != SyncPolicy::Always {
            // Under the writer lock, the only place this segment's end and the published
            // sequence number move under these policies (but sealing, also under the lock):
            // plain stores, not read-modify-writes.
            writer.active.publish_locked(writer.tail);
            self.published_next_seq
                .store(writer.next_seq, Ordering::Release);
            self.arrivals.notify();
        }
        Ok(Written {
            segment: (self.options.sync == SyncPolicy::Always).then(|| writer.active.clone()),
            range: first..writer.next_seq,
            end: writer.tail,
        })
    }

    /// Finishes a write: under [`SyncPolicy::Always`], waits until it is durable (sharing the
    /// sync with concurrent writers) and only then shows it to readers.
    pub(crate) fn complete(&self, written: Written) -> Result<Range<u64>> {
        if self.options.sync == SyncPolicy::Always {
            self.push_sync
                .wait(written.range.end, || self.sync_data())
                .map_err(|error| self.poison(error))?;
            // Readers see a record only once it is durable.
            if let Some(segment) = &written.segment {
                segment.publish(written.end);
            }
            self.published_next_seq
                .fetch_max(written.range.end, Ordering::SeqCst);
            self.arrivals.notify();
        }
        Ok(written.range)
    }

    /// Syncs the active segment; returns the sequence number below which all is durable.
    fn sync_data(&self) -> Result<u64> {
        let (file, path, target) = {
            let writer = lock(&self.writer);
            (
                writer.file.clone(),
                writer.active.path.to_path_buf(),
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
        let pooled = lock(&self.pool).pop();
        let reused = match pooled {
            Some(pooled) => match pool::reuse(
                &*self.storage,
                &self.dir,
                &pooled,
                writer.next_seq,
                self.options.segment_size,
            ) {
                Ok(reused) => Some(reused),
                // A file that may still carry the new segment's name: the state is unknown.
                Err(failure) if failure.leftover => return Err(self.poison(failure.error)),
                // The pool file is gone: make a fresh segment instead.
                Err(_) => None,
            },
            None => None,
        };
        let (segment, file, len) = match reused {
            Some(reused) => reused,
            None => {
                let (segment, file) = crate::engine::segment::create_segment_or_clean_up(
                    &*self.storage,
                    &self.dir,
                    writer.next_seq,
                    self.options.segment_size,
                )
                .map_err(|failure| match failure.leftover {
                    true => self.poison(failure.error),
                    false => failure.error,
                })?;
                (segment, file, SEGMENT_HEADER_LEN as u64)
            }
        };
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment.base_seq, segment.clone());
        writer.active.seal(writer.tail);
        writer.start_segment(segment, file, len);
        Ok(())
    }

    /// Blocks until the arrivals epoch moves past `seen`, a delay or lease runs out, or
    /// `deadline` passes; false when nothing changed.
    pub(crate) fn wait_for_change(&self, seen: u64, deadline: Instant) -> bool {
        let next_due_us = lock(&self.reader).jobs.next_due_us();
        let wake = match next_due_us {
            Some(due_us) => {
                let wait = Duration::from_micros(due_us.saturating_sub(now_micros()));
                deadline.min(Instant::now() + wait)
            }
            None => deadline,
        };
        self.arrivals
            .wait_until(wake, || self.arrivals.epoch() != seen)
    }

    fn stats(&self) -> Result<Stats> {
        let next_seq = self.published_next_seq.load(Ordering::Acquire);
        let (head_seq, head_base, head_offset, len, leased) = {
            let reader = lock(&self.reader);
            let head = reader.head_seq();
            let (base, offset) = match reader.jobs.entries.values().next() {
                Some(job) => (job.segment.base_seq, job.offset),
                None => (reader.cursor.segment.base_seq, reader.cursor.offset),
            };
            (
                head,
                base,
                offset,
                reader.len(next_seq),
                reader.jobs.leased(),
            )
        };
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let mut live_bytes = 0;
        let mut disk_bytes = crate::format::head::HEAD_FILE_LEN
            + crate::format::settings::SETTINGS_FILE_LEN as u64
            + self.acklog_len();
        for segment in &segments {
            segment.ensure_open(&*self.storage)?;
            let len = match segment.file() {
                Some(file) => file
                    .len()
                    .map_err(|error| Error::io("stat segment", &segment.path, error))?,
                None => 0,
            };
            disk_bytes += len;
            if segment.base_seq == head_base {
                live_bytes += segment.readable_end().saturating_sub(head_offset);
            } else if segment.base_seq > head_base {
                live_bytes += segment
                    .readable_end()
                    .saturating_sub(SEGMENT_HEADER_LEN as u64);
            }
        }
        let oldest_enqueued_at = self.peek()?.map(|record| record.enqueued_at());
        Ok(Stats {
            len,
            head_seq,
            next_seq,
            segments: segments.len(),
            live_bytes,
            disk_bytes,
            oldest_enqueued_at,
            leased: Some(leased),
        })
    }

    /// Every record below this sequence number is synced.
    pub(crate) fn synced_seq(&self) -> u64 {
        self.push_sync.durable()
    }

    pub(crate) fn sync_all(&self) -> Result<()> {
        self.check_poisoned()?;
        let covered = self.sync_data().map_err(|error| self.poison(error))?;
        self.push_sync.mark_durable(covered);
        let mut reader = lock(&self.reader);
        let mut generation = reader.head.sync().map_err(|error| self.poison(error))?;
        // Written after the sync above, so that it goes over the older slot: a failed write
        // cannot take the newest head with it.
        if self.record_synced_seq_in(&mut reader, covered)? {
            generation = reader.head.sync().map_err(|error| self.poison(error))?;
        }
        drop(reader);
        self.head_sync.mark_durable(generation);
        let ticket = self.sync_acklog().map_err(|error| self.poison(error))?;
        self.ack_sync.mark_durable(ticket);
        Ok(())
    }

    /// Writes into the head how far the records are known to be synced (by rolls and earlier
    /// syncs), without a sync: for a close under `SyncPolicy::Never`.
    fn record_synced_seq(&self) -> Result<()> {
        self.check_poisoned()?;
        let covered = self.synced_seq();
        let mut reader = lock(&self.reader);
        self.record_synced_seq_in(&mut reader, covered)?;
        Ok(())
    }

    /// Writes `covered` into the head as how far the records are synced, unless it knows as
    /// much already (it never goes back), so that recovery can tell writes a power loss
    /// persisted out of order (cut) from damage to synced records (refused). Returns whether
    /// the head was written; the caller syncs it if it must.
    fn record_synced_seq_in(&self, reader: &mut Reader, covered: u64) -> Result<bool> {
        let state = reader.head.state();
        if state.synced_seq >= covered {
            return Ok(false);
        }
        let updated = HeadState {
            synced_seq: covered,
            ..state
        };
        reader
            .head
            .write(updated)
            .map_err(|error| self.poison(error))?;
        Ok(true)
    }

    fn acklog_len(&self) -> u64 {
        let (file, _) = lock(&self.reader).acklog.sync_target();
        file.and_then(|file| file.len().ok()).unwrap_or(0)
    }
}

impl Shared {
    /// Syncs the head for the head's group commit, with the reader lock held only around the
    /// bookkeeping, not during the `fdatasync`.
    pub(crate) fn sync_head(&self) -> Result<u64> {
        let start = lock(&self.reader).head.begin_sync()?;
        match start {
            SyncStart::Done(generation) => Ok(generation),
            SyncStart::Started {
                file,
                generation,
                epoch,
            } => {
                let outcome = file.sync_data();
                lock(&self.reader).head.end_sync(generation, epoch, outcome)
            }
        }
    }
}

/// Wakes threads (and async tasks) waiting for records. A publisher pays an atomic increment
/// and an atomic load when nobody waits.
#[derive(Default)]
pub(crate) struct Arrivals {
    epoch: AtomicU64,
    waiters: AtomicUsize,
    lock: Mutex<()>,
    arrived: Condvar,
    wakers: Mutex<Vec<std::task::Waker>>,
}

impl Arrivals {
    /// A counter that moves on every notification.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn notify(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with `wait_until` and `register`: either the waiter is counted before
        // this load, or the new epoch is visible to the waiter's check.
        if self.waiters.load(Ordering::SeqCst) > 0 {
            {
                let _guard = lock(&self.lock);
                self.arrived.notify_all();
            }
            let wakers = std::mem::take(&mut *lock(&self.wakers));
            if !wakers.is_empty() {
                // The registered tasks counted as one waiter (see `register`).
                self.waiters.fetch_sub(1, Ordering::SeqCst);
            }
            for waker in wakers {
                waker.wake();
            }
        }
    }

    /// Registers an async waker, woken at the next notification after `seen`. All registered
    /// wakers together count as one waiter.
    #[cfg(feature = "async")]
    pub(crate) fn register(&self, waker: &std::task::Waker, seen: u64) {
        let mut wakers = lock(&self.wakers);
        if wakers.is_empty() {
            self.waiters.fetch_add(1, Ordering::SeqCst);
        }
        wakers.push(waker.clone());
        drop(wakers);
        if self.epoch() != seen {
            self.notify();
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
