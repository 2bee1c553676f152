//! The queue: ties the segments, the head index and the compactor together.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::clock::now_micros;
use crate::engine::compactor::{self, CompactReport};
use crate::engine::coordination::{self, Attached, CommittedTail, Coordination};
use crate::engine::dedup::Dedup;
use crate::engine::delivery::{try_recv_batch, Delivery};
use crate::engine::env::Env;
use crate::engine::flusher::Flusher;
use crate::engine::log::{open_committed_active, segment_bases, Bound, Log};
use crate::engine::pool;
use crate::engine::reader::Reader;
use crate::engine::record::Record;
use crate::engine::recovery;
use crate::engine::report::RecoveryReport;
use crate::engine::segment::{Segment, SegmentPath};
use crate::engine::shared::{DeadLetterQueue, Shared};
use crate::engine::writer::Writer;
use crate::error::{Error, Result};
use crate::format::frame::BodyPrefix;
use crate::format::head::HEAD_FILE_LEN;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::format::settings::SETTINGS_FILE_LEN;
use crate::options::{OnDamage, Options, SyncPolicy};
use crate::stats::Stats;
use crate::storage::queue_dir::{self, check_owner, create_and_lock_with_mode};
use crate::storage::{DirLock, Storage};

/// A durable, disk-backed FIFO queue. See the crate documentation for an overview.
///
/// `Queue` is `Send + Sync`: share it between producer and consumer threads with an `Arc`.
///
/// # Which calls block
///
/// The names follow std's channels and `VecDeque`:
/// - `recv` blocks until a record is available, `recv_timeout` and `pop_timeout` wait at most
///   their timeout, and `recv_async` returns a future that resolves when one is.
/// - `try_recv`, `try_recv_batch`, `pop`, `pop_batch` and `peek` never wait for a record: on an
///   empty queue they return `None` (or an empty `Vec`) at once. `pop` is `VecDeque::pop_front`
///   on disk.
///
/// (Under [`SyncPolicy::Always`] every change also waits for its sync; that is durability, not
/// waiting for a record.) A thread that waits on a queue it alone pushes to waits forever: use
/// the non-blocking calls there.
///
/// Dropping a queue closes it, ignoring errors; [`close`](Queue::close) returns them.
pub struct Queue {
    shared: Arc<Shared>,
    flusher: Option<Flusher>,
    /// Reports to the `metrics` recorder every `Options::metrics_interval`.
    #[cfg(feature = "metrics")]
    reporter: Option<Flusher>,
    /// Set by [`Queue::close`], so that the drop after it does not close again.
    closed: bool,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.shared.env.dir)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// `Queue::open` (see `crate::open`, above the tools): `mend` is the repair an open under
    /// [`OnDamage::Quarantine`] runs, passed down because the engine does not reach the tools.
    pub(crate) fn open_mending(dir: &Path, options: Options, mend: Mend) -> Result<Queue> {
        let opened = Self::open_at(dir, options, mend);
        #[cfg(feature = "tracing")]
        if let Err(error) = &opened {
            crate::engine::events::open_failed(dir, error);
        }
        opened
    }

    fn open_at(dir: &Path, mut options: Options, mend: Mend) -> Result<Queue> {
        options.validate()?;
        let dir = dir.to_path_buf();
        let storage = options.storage.clone();
        if !options.create_if_missing && !queue_dir::is_queue(&*storage, &dir)? {
            return Err(Error::NotAQueue { dir });
        }
        check_owner(&*storage, &dir)?;
        if !options.exclusive {
            return Self::open_shared(dir, options, mend);
        }
        let dir_lock = create_and_lock_with_mode(&*storage, &dir, Some(options.dir_mode()))?;
        let (log, reader, report) = Self::recover_locked(&dir, &mut options, mend)?;
        Self::assemble(
            dir,
            options,
            mend,
            log,
            Some(reader),
            report,
            Some(dir_lock),
            None,
        )
    }

    /// Opens a queue shared with other processes (`Options::exclusive(false)`): the first
    /// handle recovers it as an exclusive open does and builds the control file; the others
    /// attach to the tail it committed, without touching the files.
    fn open_shared(dir: PathBuf, mut options: Options, mend: Mend) -> Result<Queue> {
        let storage = options.storage.clone();
        queue_dir::create_with_mode(&*storage, &dir, Some(options.dir_mode()))?;
        refuse_network_filesystem(&*storage, &dir, &options)?;
        let mut opening = coordination::begin_open(storage.clone(), &dir)?;
        if !opening.first {
            recovery::settle_attached(&*storage, &dir, &mut options)?;
            options.validate()?;
            match opening.attach()? {
                Attached::Coordination(coordination) => {
                    let (_, committed) = coordination.committed();
                    let log = Self::attach_log(&*storage, &dir, &options, committed)?;
                    return Self::assemble(
                        dir,
                        options,
                        mend,
                        log,
                        None,
                        RecoveryReport::default(),
                        None,
                        Some(coordination),
                    );
                }
                // The handle that had the queue to itself died: recover as the first.
                Attached::First(first) => opening = first,
            }
        }
        let (log, reader, report) = Self::recover_locked(&dir, &mut options, mend)?;
        let solo = crate::engine::coordination::may_be_solo(&options);
        let mut committed = {
            let mut writer = log.lock_writer();
            let (tail, next_seq) = (writer.tail, writer.next_seq);
            writer.adopt(tail, next_seq);
            // A shared writer shows its batches to its readers once committed; a solo one, at
            // once (never under `Always`).
            writer.publishes_on_write = solo;
            CommittedTail {
                base: writer.active.base_seq,
                tail,
                next_seq,
                pushed_bytes: 0,
            }
        };
        // A bounded queue's usage: the totals pushed start at what is not yet consumed,
        // so that nothing counts as consumed in bytes yet.
        let (records, bytes) = match options.is_bounded() {
            true => reader.unconsumed(&*options.storage, &log, committed)?,
            false => (0, 0),
        };
        committed.pushed_bytes = bytes;
        let consumed = (committed.next_seq - records.min(committed.next_seq), 0);
        // Entries of records a crash took name numbers at or past the recovered end: they
        // go now, before a plain push takes those numbers and they would name its record.
        crate::engine::dedup::settle_shared(&*storage, &dir, committed.next_seq)?;
        let coordination = opening.build(committed, consumed, solo)?;
        Self::assemble(
            dir,
            options,
            mend,
            log,
            Some(reader),
            report,
            None,
            Some(coordination),
        )
    }

    /// The log as a shared queue's later opener finds it: the segments on disk up to the
    /// committed active one, and a writer at the committed tail.
    fn attach_log(
        storage: &dyn Storage,
        dir: &Path,
        options: &Options,
        committed: CommittedTail,
    ) -> Result<Log> {
        let shared_dir: Arc<Path> = Arc::from(dir);
        let mut segments: BTreeMap<u64, Arc<Segment>> = segment_bases(storage, dir)?
            .range(..committed.base)
            .map(|&base| {
                let path = SegmentPath::lazy(shared_dir.clone(), base);
                (base, Arc::new(Segment::unopened(base, path)))
            })
            .collect();
        // Readable up to the published tail, which the first consumer call takes up.
        let (active, file) = open_committed_active(storage, dir, options.segment_size, committed)?;
        segments.insert(committed.base, active.clone());
        let mut writer = Writer::new(
            active,
            file,
            committed.tail,
            committed.next_seq,
            options.mapped_writes,
            options.sync == SyncPolicy::Always,
        );
        writer.adopt(committed.tail, committed.next_seq);
        writer.publishes_on_write = false;
        Ok(Log::new(segments, writer, Vec::new(), BTreeMap::new()).nothing_known_synced())
    }

    /// Recovery with the queue to this handle alone (an exclusive open, or a shared queue's
    /// first opener): the repair under `OnDamage::Quarantine`, the settings, then the log and
    /// the reader as the files hold them.
    fn recover_locked(
        dir: &Path,
        options: &mut Options,
        mend: Mend,
    ) -> Result<(Log, Reader, RecoveryReport)> {
        let storage = options.storage.clone();
        let dir = dir.to_path_buf();
        // Under the lock, before recovery reads anything: what the repair cuts is then never
        // seen by recovery, which opens the mended queue as after any crash.
        let mut repaired = RecoveryReport::default();
        if options.on_damage == OnDamage::Quarantine {
            mend(&*storage, &dir, &mut repaired)?;
        }
        recovery::settle_at_open(&*storage, &dir, options)?;
        // Checked again: limits that depend on the segment size now see the queue's own.
        options.validate()?;
        // Ids before the records that recovery makes durable (see `Dedup::sync_existing`).
        Dedup::sync_existing(&*storage, &dir)?;
        let mut recovered = recovery::recover(&*storage, &dir, options)?;
        recovered.report.repairs = repaired.repairs;
        recovered.report.cut_seqs = repaired.cut_seqs;
        recovered.report.quarantined_records = repaired.quarantined_records;
        #[cfg(feature = "tracing")]
        crate::engine::events::recovered(&options.name_for(&dir), &recovered.report);
        let pool_files = std::mem::take(&mut recovered.pool_files);
        let pool = pool::adopt(&*storage, &dir, pool_files, options.segment_pool)?;
        // Under `Always` every ack log append waits for a group-commit sync: its leader writes
        // them all at once.
        recovered
            .acklog
            .defer_writes(options.sync == SyncPolicy::Always);
        recovered.acklog.map_writes(options.mapped_writes);
        let writer = Writer::new(
            recovered.active,
            recovered.active_file,
            recovered.tail,
            recovered.next_seq,
            options.mapped_writes,
            options.sync == SyncPolicy::Always,
        );
        let reader = Reader::new(
            recovered.head_segment,
            recovered.head_offset,
            recovered.head,
            recovered.acklog,
            recovered.history,
            recovered.retired.clone(),
        );
        let log = Log::new(
            recovered.segments,
            writer,
            pool,
            std::mem::take(&mut recovered.retired),
        );
        Ok((log, reader, recovered.report))
    }

    /// The queue around a recovered (or attached) log: the environment, the shared state and
    /// the background threads.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        dir: PathBuf,
        options: Options,
        mend: Mend,
        log: Log,
        reader: Option<Reader>,
        report: RecoveryReport,
        dir_lock: Option<DirLock>,
        coordination: Option<Coordination>,
    ) -> Result<Queue> {
        let storage = options.storage.clone();
        let next_seq = log.published_next_seq();
        let window_us = u64::try_from(options.get_dedup_window().as_micros()).unwrap_or(u64::MAX);
        let dedup = match &coordination {
            // Read under the tail lock, at the first push with an id (see `Log::push_shared`).
            Some(_) => Dedup::unloaded(&dir, window_us),
            None => Dedup::open(&*storage, &dir, window_us, next_seq, now_micros())?,
        };
        let env = Env::new(dir, options, storage, coordination);
        let shared = Arc::new(Shared::new(
            env,
            log,
            reader,
            report,
            dir_lock,
            // The dead-letter queue is opened with the same repair at hand.
            Box::new(move |dir: PathBuf, options: Options| {
                let queue: Arc<dyn DeadLetterQueue> =
                    Arc::new(Queue::open_mending(&dir, options, mend)?);
                Ok(queue)
            }),
            dedup,
        ));
        shared.start_solo_thread()?;
        let env = &shared.env;
        if env.options.auto_compact {
            if let Some(consumer) = shared.consumer_if_held() {
                compactor::compact(env, &shared.log, consumer)?;
            }
        }
        let flusher = match env.options.sync {
            SyncPolicy::Interval(interval) => Some(
                Flusher::start(&shared, interval)
                    .map_err(|error| Error::io("start flusher thread", &env.dir, error))?,
            ),
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        #[cfg(feature = "metrics")]
        let reporter = match env.options.metrics_interval {
            interval if interval.is_zero() => None,
            interval => Some(
                // A failure to report now is met again by the next call on the queue.
                Flusher::every(&shared, interval, "diskspool-metrics", |shared| {
                    let _ = report_metrics(shared);
                })
                .map_err(|error| Error::io("start metrics thread", &env.dir, error))?,
            ),
        };
        let queue = Queue {
            shared,
            flusher,
            #[cfg(feature = "metrics")]
            reporter,
            closed: false,
        };
        if let Some(limits) = &queue.shared.env.limits {
            if limits.shared().is_none() {
                // The usage the bound starts from: what is on disk and not yet consumed (a
                // shared queue's first opener counted it into the control file it built).
                let (records, bytes) = usage_at_open(&queue.shared)?;
                limits.set_usage(records, bytes);
            }
        }
        Ok(queue)
    }

    /// Appends one record and returns its sequence number.
    ///
    /// Under [`SyncPolicy::Always`] the record is durable when this returns. Under every policy
    /// its bytes are in the kernel, so a process kill cannot lose it.
    pub fn push(&self, payload: &[u8]) -> Result<u64> {
        self.shared.push_one(payload)
    }

    /// Like [`push`](Queue::push), but under [`Overflow::Block`](crate::Overflow::Block) waits
    /// at most `timeout` for room, then fails with [`Error::Full`] (having written nothing).
    /// Under the other overflow rules it is `push`.
    ///
    /// A thread that blocks here waits for *other* threads (or, on a queue shared by several
    /// processes, other processes) to consume: a thread that both pushes and pops a full
    /// `Block` queue must use this with a timeout (or `Reject`), else its `push` waits forever.
    pub fn push_timeout(&self, payload: &[u8], timeout: Duration) -> Result<u64> {
        let deadline = Instant::now().checked_add(timeout);
        self.shared
            .push_batch_until(std::slice::from_ref(&payload), BodyPrefix::NONE, deadline)
            .map(|range| range.start)
    }

    /// Appends one record with the options of `push` (a delay, a time to live, a deduplication
    /// id) and returns its sequence number; see [`Push`](crate::Push).
    ///
    /// A record with a TTL is never handed out once its enqueue time plus the TTL has passed
    /// (also after a reopen or a crash: the TTL is in its frame); it is discarded when it
    /// reaches the head, like a record older than [`Options::max_age`](crate::Options::max_age),
    /// and counted in [`Totals::expired`](crate::Totals). A delay as long as the TTL or longer
    /// would make a record that is never delivered: such a push is refused with
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions) and writes nothing.
    ///
    /// With a deduplication id, a push with the same id made within
    /// [`Options::dedup_window`](crate::Options::dedup_window) writes nothing and returns the
    /// first push's sequence number (counted in [`Totals::deduplicated`](crate::Totals)), also after that record was consumed, after a
    /// reopen, and after a crash of the process (and a power loss under
    /// [`SyncPolicy::Always`]). Such a push costs one more write (and, under `Always`, one more
    /// sync, made while pushes wait), and pushes with ids are made one at a time.
    pub fn push_with(&self, payload: &[u8], push: crate::Push) -> Result<u64> {
        let prefix = push.body_prefix(now_micros)?;
        match (&push.dedup_id, prefix.is_empty()) {
            (Some(id), _) => self.shared.push_dedup(payload, prefix, id, Bound::Enforced),
            (None, true) => self.push(payload),
            (None, false) => self
                .shared
                .push_batch(std::slice::from_ref(&payload), prefix)
                .map(|range| range.start),
        }
    }

    /// Appends one record that is not handed out (by `pop`, `peek` or `recv`) before `delay`
    /// has passed. The delay is stored in the record, so it holds across restarts. Records
    /// pushed after it are not held up by it.
    pub fn push_delayed(&self, payload: &[u8], delay: Duration) -> Result<u64> {
        let delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        let not_before_us = now_micros().saturating_add(delay_us).max(1);
        self.shared
            .push_batch(
                std::slice::from_ref(&payload),
                BodyPrefix::delay(not_before_us),
            )
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
        self.shared.push_batch(&slices, BodyPrefix::NONE)
    }

    /// Appends records atomically, like [`push_batch`](Queue::push_batch), each with the delay
    /// and the TTL of `push` (see [`Push`](crate::Push)). A deduplication id names one record:
    /// a batch with one is refused with [`Error::InvalidOptions`], as is a delay that would
    /// outlast the TTL; nothing is written then.
    pub fn push_batch_with<I, P>(&self, payloads: I, push: &crate::Push) -> Result<Range<u64>>
    where
        I: IntoIterator<Item = P>,
        P: AsRef<[u8]>,
    {
        if push.dedup_id.is_some() {
            return Err(Error::InvalidOptions(String::from(
                "a deduplication id names one record: use push_with, not push_batch_with",
            )));
        }
        let prefix = push.body_prefix(now_micros)?;
        let payloads: Vec<P> = payloads.into_iter().collect();
        let slices: Vec<&[u8]> = payloads.iter().map(AsRef::as_ref).collect();
        self.shared.push_batch(&slices, prefix)
    }

    /// Removes every record not yet consumed, those handed out by `recv` included (as SQS's
    /// `PurgeQueue` does), and returns how many. Durable like a pop under the queue's
    /// [`SyncPolicy`]: under `Always` nothing purged comes back after any crash. It is all or
    /// nothing (one head write): after a crash the queue holds every record or none of them.
    /// The segments it empties are deleted (or pooled) at once unless
    /// [`Options::auto_compact`] is off. Deliveries handed out before settle as no-ops.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use diskspool::{Options, Queue};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let queue = Queue::open(dir.path(), Options::default())?;
    /// queue.push_batch([b"a", b"b", b"c"])?;
    /// let _handed_out = queue.try_recv()?;
    /// assert_eq!(queue.purge()?, 3);
    /// assert!(queue.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn purge(&self) -> Result<u64> {
        self.shared.purge()
    }

    /// Removes and returns the oldest record, or `None` at once when the queue is empty (it
    /// never waits for a record; [`pop_timeout`](Queue::pop_timeout) does).
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
            let seen = self.shared.arrivals_epoch();
            if let Some(record) = self.pop()? {
                return Ok(Some(record));
            }
            // Woken early with nothing changed (a delay or a lease ran out): look again.
            if !self.shared.wait_for_change(seen, deadline) && Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Hands out the oldest record that is not leased, under a lease of
    /// [`Options::lease`](crate::Options::lease): at-least-once delivery. Acknowledge it with
    /// [`Delivery::ack`] when the job is done; if the lease runs out first, or the delivery is
    /// dropped or released, the record is handed out again.
    ///
    /// **Blocks** the calling thread until a record is available: pushed, released, or its
    /// delay or lease run out (it waits without spinning). A thread that waits here on a queue
    /// only it pushes to waits forever: use [`try_recv`](Queue::try_recv) or
    /// [`recv_timeout`](Queue::recv_timeout) there. See [which calls block](Queue#which-calls-block).
    ///
    /// Use `recv` when losing a job to a crashed worker is not acceptable; [`pop`](Queue::pop)
    /// is the at-most-once fast path.
    pub fn recv(&self) -> Result<Delivery> {
        loop {
            // Waits in long slices rather than to one far-off `Instant`, which could overflow.
            let deadline = Instant::now() + Duration::from_secs(3600);
            if let Some(delivery) = self.recv_until(deadline)? {
                return Ok(delivery);
            }
        }
    }

    /// Like [`recv`](Queue::recv), but never blocks: returns `None` at once when no record is
    /// available.
    pub fn try_recv(&self) -> Result<Option<Delivery>> {
        Ok(try_recv_batch(&self.shared, 1)?.pop())
    }

    /// Like [`try_recv`](Queue::try_recv) for up to `max` records, each under its own lease,
    /// with one ack-log write. Never blocks: returns an empty `Vec` when no record is
    /// available.
    pub fn try_recv_batch(&self, max: usize) -> Result<Vec<Delivery>> {
        try_recv_batch(&self.shared, max)
    }

    /// Like [`recv`](Queue::recv), but waits at most `timeout` for a record to become
    /// available; returns `None` if none did in time.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Delivery>> {
        self.recv_until(Instant::now() + timeout)
    }

    fn recv_until(&self, deadline: Instant) -> Result<Option<Delivery>> {
        loop {
            let seen = self.shared.arrivals_epoch();
            if let Some(delivery) = self.try_recv()? {
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
        crate::engine::asynchronous::Recv::new(&self.shared)
    }

    /// Removes and returns up to `max` of the oldest records, with one head update for all.
    /// Never waits: returns an empty `Vec` when the queue is empty.
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

    /// Returns the oldest record without removing it, or `None` at once when there is none.
    pub fn peek(&self) -> Result<Option<Record>> {
        self.shared.peek()
    }

    /// The number of records in the queue: from the head to the end of the log, less the
    /// records acknowledged out of order (jobs API), as [`Stats::len`](crate::Stats::len).
    ///
    /// A shared handle that has not consumed yet, and a child forked after the open (where every
    /// other call fails with [`Error::Forked`]), count from the files without taking a lock:
    /// from the head in the `head` file to the published tail (a shared queue's, read from
    /// `control`; an exclusive queue's, as it was at the fork), less what the ack log says was
    /// acknowledged in between, as `spool stat` does. This count cannot report an I/O error:
    /// if those files cannot be read, it leaves out what they would say (no head read: 0; no
    /// ack log read: nothing acknowledged). [`stats`](Queue::stats) returns the error instead.
    pub fn len(&self) -> u64 {
        self.shared.len()
    }

    /// True when the queue holds no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sizes, positions and the counters since open; see [`Stats`] and `docs/METRICS.md`.
    /// Counts the delayed records not read yet from their frame headers: each sealed segment is
    /// counted once and remembered (it never changes), so a call reads only the active segment's
    /// headers beyond the reader, and the first call after open reads every unread segment's.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::{Duration, SystemTime};
    /// use diskspool::{Options, Queue};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let queue = Queue::open(dir.path(), Options::default())?;
    /// queue.push(b"now")?;
    /// queue.push(b"soon")?;
    /// queue.push_delayed(b"later", Duration::from_secs(60))?;
    /// let job = queue.try_recv()?.expect("a ready record");
    /// let stats = queue.stats()?;
    /// assert_eq!((stats.ready, stats.in_flight(), stats.delayed), (1, Some(1), 1));
    /// assert!(stats.oldest_ready_age(SystemTime::now()).is_some()); // "soon"
    /// job.ack()?;
    /// let totals = queue.stats()?.totals.expect("the open queue counts");
    /// assert_eq!((totals.pushed, totals.delivered, totals.acked), (3, 1, 1));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Result<Stats> {
        self.shared.env.check_forked()?;
        stats_of(&self.shared)
    }

    /// Reports the gauges and counters to the `metrics` recorder now (the background thread
    /// does it every [`Options::metrics_interval`]). Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn report_metrics(&self) -> Result<()> {
        report_metrics(&self.shared)
    }

    /// Makes every push and pop so far durable, whatever the sync policy, and the records
    /// moved to the dead-letter queue ([`Options::max_deliveries`]) before the
    /// acknowledgements that removed them here.
    ///
    /// In a queue shared by several processes ([`Options::exclusive`]`(false)`): every push any
    /// process committed, and every pop, acknowledgement and release of any process once this
    /// handle has made a consumer call since it opened the queue (a handle that never consumed
    /// syncs no consumer file).
    pub fn sync(&self) -> Result<()> {
        self.shared.sync_all()
    }

    /// Deletes every segment whose records have all been consumed, and the files kept for reuse
    /// ([`Options::segment_pool`]). Runs automatically unless [`Options::auto_compact`] is off;
    /// the automatic runs keep the pool.
    pub fn compact(&self) -> Result<CompactReport> {
        let consumer = self.shared.consumer()?;
        compactor::compact_and_release_pool(&self.shared.env, &self.shared.log, &consumer)
    }

    /// What recovery found and did when this queue was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.shared.recovery
    }

    /// The queue's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.env.dir
    }

    /// The options the queue was opened with.
    pub fn options(&self) -> &Options {
        &self.shared.env.options
    }

    /// The directory of this queue's dead-letter queue (see
    /// [`Options::dead_letter_dir`]), which exists once a record has been dead-lettered.
    pub fn dead_letter_dir(&self) -> PathBuf {
        let env = &self.shared.env;
        env.options.dead_letter_path(&env.dir)
    }

    /// Closes the queue: the final sync its policy calls for, then the head records how far
    /// the records are synced. Returns the first error, where dropping the queue (which does
    /// the same) can only ignore it. The directory's lock is released either way.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use diskspool::{Options, Queue};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let queue = Queue::open(dir.path(), Options::default())?;
    /// queue.push(b"kept")?;
    /// queue.close()?;
    /// # Ok(()) }
    /// ```
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        if self.shared.env.is_forked() {
            self.leave_to_parent();
            return self.shared.env.check_forked();
        }
        self.shut_down()
    }

    /// In a child forked after the open: drops nothing that would write or wait. The files
    /// and the lock words are the parent's, and so are the threads the flusher and the
    /// reporter would join; the memory is leaked. The child let go of the lock files' `flock`s
    /// at the fork (see `storage::forks`).
    fn leave_to_parent(&mut self) {
        #[cfg(feature = "metrics")]
        std::mem::forget(self.reporter.take());
        std::mem::forget(self.flusher.take());
        // The last reference would drop the log, the reader and the lock guards.
        std::mem::forget(Arc::clone(&self.shared));
    }

    /// What closing does, shared by [`close`](Queue::close) and `Drop`.
    fn shut_down(&mut self) -> Result<()> {
        #[cfg(feature = "metrics")]
        if let Some(reporter) = self.reporter.take() {
            reporter.stop();
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.stop();
        }
        self.shared.close()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Drops a handle whose simulated process was killed (`SimStorage::kill_process`) as the
    /// kill left it: its background threads stop (they sleep between their rounds, so they
    /// stop without doing anything), and nothing of its close runs: a killed process does
    /// not release the lock words or write the files its close would. Its memory is leaked.
    #[cfg(feature = "testkit")]
    pub(crate) fn abandon(mut self) {
        #[cfg(feature = "metrics")]
        if let Some(reporter) = self.reporter.take() {
            reporter.stop();
        }
        if let Some(flusher) = self.flusher.take() {
            flusher.stop();
        }
        std::mem::forget(self);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        if self.shared.env.is_forked() {
            self.leave_to_parent();
            return;
        }
        if !self.closed {
            // `close` returns what this can only ignore.
            let _ = self.shut_down();
        }
    }
}

/// The dead-letter queue of a queue is a queue (see [`DeadLetterQueue`]).
impl DeadLetterQueue for Queue {
    fn push(&self, payload: &[u8]) -> Result<u64> {
        Queue::push(self, payload)
    }

    fn sync(&self) -> Result<()> {
        Queue::sync(self)
    }
}

/// The repair an open under [`OnDamage::Quarantine`] runs with the directory locked, before
/// recovery: it mends damage in the queue directory (the storage and path given) and records
/// what it did in the report's `repairs`, `cut_seqs` and `quarantined_records`. It is
/// `tools::repair`, which sits above the engine and is handed down by `Queue::open`.
pub(crate) type Mend = fn(&dyn Storage, &Path, &mut RecoveryReport) -> Result<()>;

/// Refuses a shared open of a directory on a network filesystem, unless the options say that
/// every process runs on this machine: processes elsewhere would not see this machine's
/// mapping of the control file, nor its futexes, and would write over each other's records.
fn refuse_network_filesystem(storage: &dyn Storage, dir: &Path, options: &Options) -> Result<()> {
    if options.allow_network_filesystem {
        return Ok(());
    }
    let kind = storage
        .network_filesystem(dir)
        .map_err(|error| Error::io("statfs queue directory", dir, error))?;
    match kind {
        None => Ok(()),
        Some(kind) => Err(Error::InvalidOptions(format!(
            "{} is on a network filesystem ({kind}): a queue shared by several processes \
             coordinates through a shared mapping and futexes, which processes on other \
             machines do not see; open it with exclusive(true), or with \
             allow_network_filesystem(true) if every process that opens it runs on this machine",
            dir.display()
        ))),
    }
}

/// Computes [`Stats`] from the log and the consumer.
fn stats_of(shared: &Shared) -> Result<Stats> {
    // A consumer turn in a shared queue: the stats describe the files as every consumer left
    // them (the counts are this handle's).
    let consumer = shared.consumer()?;
    let next_seq = shared.log.published_next_seq();
    let position = consumer.position(&shared.env, &shared.log, next_seq)?;
    let (head_base, head_offset) = (position.head_base, position.head_offset);
    let segments = shared.log.segments();
    let mut live_bytes = 0;
    let mut disk_bytes = HEAD_FILE_LEN + SETTINGS_FILE_LEN as u64 + consumer.acklog_len();
    for segment in &segments {
        segment.ensure_checked(&*shared.env.storage)?;
        disk_bytes += segment.disk_len()?;
        if segment.base_seq == head_base {
            live_bytes += segment.readable_end().saturating_sub(head_offset);
        } else if segment.base_seq > head_base {
            live_bytes += segment
                .readable_end()
                .saturating_sub(SEGMENT_HEADER_LEN as u64);
        }
    }
    let oldest_enqueued_at = shared.peek()?.map(|record| record.enqueued_at());
    let (commit_syncs, commit_records) = shared.log.commits();
    let totals = shared.env.counters.totals(
        shared.log.pushed_since_open(),
        position.counts,
        commit_syncs,
        commit_records,
    );
    Ok(Stats {
        len: position.len,
        head_seq: position.head_seq,
        next_seq,
        segments: segments.len(),
        live_bytes,
        disk_bytes,
        oldest_enqueued_at,
        leased: Some(position.leased),
        ready: position
            .len
            .saturating_sub(position.leased)
            .saturating_sub(position.delayed),
        delayed: position.delayed,
        totals: Some(totals),
    })
}

/// Reports a snapshot to the `metrics` recorder.
#[cfg(feature = "metrics")]
fn report_metrics(shared: &Shared) -> Result<()> {
    let stats = stats_of(shared)?;
    shared
        .env
        .telemetry
        .report(&stats, std::time::SystemTime::now());
    Ok(())
}

/// Records and bytes of frames not yet consumed, as a bounded queue counts them at open (the
/// bytes as in [`Stats::live_bytes`]). Reads no record, so that none expires while they are
/// counted: an expired record is released when the reader reaches it.
fn usage_at_open(shared: &Shared) -> Result<(u64, u64)> {
    let Some(consumer) = shared.consumer_if_held() else {
        return Ok((0, 0));
    };
    let position = consumer.position(&shared.env, &shared.log, shared.log.published_next_seq())?;
    let mut bytes = 0;
    for segment in shared.log.segments() {
        segment.ensure_checked(&*shared.env.storage)?;
        if segment.base_seq == position.head_base {
            bytes += segment.readable_end().saturating_sub(position.head_offset);
        } else if segment.base_seq > position.head_base {
            bytes += segment
                .readable_end()
                .saturating_sub(SEGMENT_HEADER_LEN as u64);
        }
    }
    Ok((position.len, bytes))
}

/// What the simulation reads of a handle beside the public API (`testkit::processes`).
#[cfg(feature = "testkit")]
impl Queue {
    /// A bounded queue's usage (records, bytes) as every push checks it against the bound.
    pub(crate) fn bound_usage(&self) -> Option<(u64, u64)> {
        self.shared.env.limits.as_ref().map(|limits| limits.usage())
    }

    /// The records (seq, payload) this handle discarded to make room since the last call; the
    /// first call starts keeping them.
    pub(crate) fn take_dropped(&self) -> Vec<(u64, Vec<u8>)> {
        crate::engine::sync::lock(&self.shared.dropped)
            .get_or_insert_with(Vec::new)
            .drain(..)
            .collect()
    }

    /// Records this handle discarded to make room (`Overflow::DropOldest`).
    pub(crate) fn overflow_discards(&self) -> u64 {
        self.shared
            .env
            .counters
            .discarded_for(crate::stats::DiscardReason::Overflow)
    }
}
