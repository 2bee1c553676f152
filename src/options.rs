//! How a queue is opened: segment size, durability, limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::frame::{frame_len, BodyPrefix, RECORD_LEN_MAX};
use crate::format::segment::SEGMENT_HEADER_LEN;
pub use crate::format::segment::{SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN};
pub use crate::format::settings::Overflow;
use crate::storage::{OsStorage, Storage};

/// The default segment size: 64 MiB.
pub const SEGMENT_SIZE_DEFAULT: u64 = 64 << 20;
/// The permission bits of a new queue's files: private to the owner.
pub const FILE_MODE_DEFAULT: u32 = 0o600;

/// The default lease (visibility timeout) of a delivery: 30 s, as in SQS.
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// The longest lease accepted: 12 h, as in SQS.
pub const LEASE_MAX: Duration = Duration::from_secs(12 * 3600);

/// The default of [`Options::max_record_size`] (16 MiB), lowered to what a segment can hold when
/// segments are smaller.
pub const MAX_RECORD_SIZE_DEFAULT: usize = 16 << 20;

/// The deduplication window when none is set: 5 minutes, as SQS FIFO's.
pub const DEDUP_WINDOW_DEFAULT: Duration = Duration::from_secs(300);

/// Which of the queue's policies an `Options` sets explicitly (the others come from the queue's
/// settings file at open), one bit each.
pub(crate) mod policy_bits {
    pub(crate) const MAX_RECORDS: u8 = 1;
    pub(crate) const MAX_BYTES: u8 = 2;
    pub(crate) const OVERFLOW: u8 = 4;
    pub(crate) const MAX_AGE: u8 = 8;
    pub(crate) const DEDUP_WINDOW: u8 = 16;
}

/// When changes reach stable storage. See `docs/DURABILITY.md` for what survives each crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `push` and `pop` return only after their change is durable (`fdatasync`). Concurrent
    /// callers share one sync (group commit).
    Always,
    /// A background thread syncs at this interval; a power loss loses at most about one interval
    /// of changes. A process kill loses nothing.
    Interval(Duration),
    /// The engine never syncs records on its own (the operating system writes them back when it
    /// chooses); [`Queue::sync`](crate::Queue::sync) syncs on demand. A process kill loses
    /// nothing; a power loss may lose recent changes.
    Never,
}

/// What [`Queue::open`](crate::Queue::open) does with a damaged queue: damage that no crash
/// explains (a bad frame or header in a sealed segment, a missing segment, an unreadable head
/// index, a damaged ack log or settings file). See `docs/DURABILITY.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnDamage {
    /// Refuse to open with [`Error::Corrupt`](crate::Error::Corrupt) naming the file and byte
    /// offset, changing nothing: an operator runs `spool repair` (the default). Damage in a
    /// sealed segment is found when the reader reaches it, and `pop` reports it there.
    #[default]
    Refuse,
    /// Check every file at open (reading the whole queue, so open takes time in proportion to
    /// its size), and when something is damaged, carry out the plan of
    /// [`tools::repair`](crate::tools::repair) before opening: every record before the damage
    /// is kept, whatever is cut is moved into the queue's `quarantine/` folder with its readable
    /// records (`spool quarantine --restore` pushes them back), and sequence numbers are never
    /// used twice. [`Queue::recovery_report`](crate::Queue::recovery_report) lists every step.
    /// A segment written by a newer format version is not damage: open still refuses it.
    Quarantine,
}

/// Options for [`Queue::open`](crate::Queue::open), built from [`Options::default`] with
/// consuming setters. Each setter has a getter named `get_` and the setter's name (as clap's
/// builders do): [`Queue::options`](crate::Queue::options) shows the values an open queue uses.
///
/// ```
/// use diskspool::{Options, SyncPolicy};
/// let options = Options::default().segment_size(1 << 20).sync(SyncPolicy::Always);
/// assert_eq!(options.get_segment_size(), 1 << 20);
/// assert_eq!(options.get_sync(), SyncPolicy::Always);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) segment_size: u64,
    /// Set by [`Options::segment_size`]: the size then replaces the one the queue was created
    /// with. Otherwise an existing queue keeps its own.
    pub(crate) segment_size_explicit: bool,
    pub(crate) create_if_missing: bool,
    pub(crate) file_mode: u32,
    pub(crate) sync: SyncPolicy,
    pub(crate) max_record_size: Option<usize>,
    pub(crate) auto_compact: bool,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) lease: Duration,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) dead_letter_dir: Option<PathBuf>,
    pub(crate) mapped_writes: bool,
    pub(crate) segment_pool: usize,
    pub(crate) precise_timestamps: bool,
    pub(crate) max_records: Option<u64>,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) overflow: Overflow,
    pub(crate) max_age: Option<Duration>,
    pub(crate) dedup_window: Option<Duration>,
    /// The policies set by their setters (see [`policy_bits`]): they replace the queue's
    /// stored ones at open; the others are taken from the settings file.
    pub(crate) policies_explicit: u8,
    pub(crate) on_damage: OnDamage,
    pub(crate) exclusive: bool,
    pub(crate) allow_network_filesystem: bool,
    pub(crate) metrics_name: Option<String>,
    #[cfg(feature = "metrics")]
    pub(crate) metrics_interval: Duration,
}

/// How often an open queue reports its gauges and counters to the `metrics` recorder by default
/// (feature `metrics`): 5 s, under the usual 15 s scrape interval.
#[cfg(feature = "metrics")]
pub const METRICS_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_size: SEGMENT_SIZE_DEFAULT,
            segment_size_explicit: false,
            create_if_missing: true,
            file_mode: FILE_MODE_DEFAULT,
            sync: SyncPolicy::Always,
            max_record_size: None,
            auto_compact: true,
            storage: Arc::new(OsStorage),
            lease: LEASE_DEFAULT,
            max_deliveries: None,
            dead_letter_dir: None,
            mapped_writes: true,
            segment_pool: 0,
            precise_timestamps: false,
            max_records: None,
            max_bytes: None,
            overflow: Overflow::Reject,
            max_age: None,
            dedup_window: None,
            policies_explicit: 0,
            on_damage: OnDamage::Refuse,
            exclusive: true,
            allow_network_filesystem: false,
            metrics_name: None,
            #[cfg(feature = "metrics")]
            metrics_interval: METRICS_INTERVAL_DEFAULT,
        }
    }
}

impl Options {
    /// Bytes after which a segment is sealed and a new one started (default 64 MiB).
    ///
    /// A queue remembers the size it was created with (in its `settings` file), and every open
    /// that does not call this setter uses the remembered size. Setting it changes the queue's
    /// size for segments created from then on, and the settings file with it.
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self.segment_size_explicit = true;
        self
    }

    /// The permission bits of a **new** queue's files (default `0o600`: only the owner reads
    /// them, whatever the umask). Its directory gets the same bits plus search (`x`) where
    /// they allow reading: `0o640` makes a `0o750` directory, for a consumer in the owner's
    /// group that reads the queue. Only read and write bits are accepted, and the owner's must
    /// be set. An existing queue keeps the mode of its directory: files created later get its
    /// read and write bits, so `chmod` on the directory changes what new files get.
    pub fn file_mode(mut self, mode: u32) -> Self {
        self.file_mode = mode;
        self
    }

    /// The permission bits of a new queue's directory, derived from
    /// [`file_mode`](Options::file_mode).
    pub(crate) fn dir_mode(&self) -> u32 {
        self.file_mode | ((self.file_mode & 0o444) >> 2)
    }

    /// Whether [`Queue::open`](crate::Queue::open) may create a queue (default `true`). When
    /// `false`, opening a directory that holds no queue fails with
    /// [`Error::NotAQueue`](crate::Error::NotAQueue) and creates nothing, not even the
    /// directory: what a tool that inspects or drains existing queues wants.
    pub fn create_if_missing(mut self, enabled: bool) -> Self {
        self.create_if_missing = enabled;
        self
    }

    /// The durability policy (default [`SyncPolicy::Always`]).
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// The largest payload accepted; larger ones fail with
    /// [`Error::RecordTooLarge`](crate::Error::RecordTooLarge). Default: 16 MiB, or what one
    /// segment holds if that is less.
    pub fn max_record_size(mut self, bytes: usize) -> Self {
        self.max_record_size = Some(bytes);
        self
    }

    /// Whether consumed segments are deleted automatically when the writer or the reader moves
    /// to a new segment (default on). [`Queue::compact`](crate::Queue::compact) always works.
    pub fn auto_compact(mut self, enabled: bool) -> Self {
        self.auto_compact = enabled;
        self
    }

    /// Runs the queue on another filesystem implementation, such as a simulated one in tests.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = storage;
        self
    }

    /// Whether pushes store frames through a writable mapping of the active segment, and (under
    /// [`SyncPolicy::Never`] and [`SyncPolicy::Interval`]) `recv`, `ack` and the other job
    /// calls store their ack log entries through one of the ack log (default on, where the
    /// storage offers mappings): no system call per push or acknowledgement. Space is written
    /// with zeros before it is mapped, so on filesystems that overwrite in place (ext4, XFS
    /// without reflinks) a full disk is an error from the call. On copy-on-write filesystems
    /// (btrfs, ZFS) overwriting needs new space too, and a full disk could raise SIGBUS at a
    /// store: turn this off there, and each call uses one `pwrite` instead.
    pub fn mapped_writes(mut self, enabled: bool) -> Self {
        self.mapped_writes = enabled;
        self
    }

    /// The queue's name in its metrics (the `queue` label, feature `metrics`) and in its
    /// `tracing` events (feature `tracing`). Default: the last component of its directory.
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.metrics_name = Some(name.into());
        self
    }

    /// The queue's name in metrics and events: [`metrics_name`](Options::metrics_name), or the
    /// last component of `dir`.
    pub(crate) fn name_for(&self, dir: &Path) -> String {
        match &self.metrics_name {
            Some(name) => name.clone(),
            None => dir.file_name().map_or_else(
                || dir.display().to_string(),
                |name| name.to_string_lossy().into(),
            ),
        }
    }

    /// How often the open queue reports its gauges and counters to the `metrics` recorder
    /// (default [`METRICS_INTERVAL_DEFAULT`](crate::METRICS_INTERVAL_DEFAULT)), from a
    /// background thread; [`Queue::report_metrics`](crate::Queue::report_metrics) reports at
    /// once. Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = interval;
        self
    }

    /// Whether each record's enqueue time ([`Record::enqueued_at`](crate::Record::enqueued_at))
    /// comes from the precise real-time clock (microseconds) instead of the coarse one (default
    /// off). The coarse clock, where the platform has one (Linux, FreeBSD), gives the time of
    /// the latest kernel tick, so an enqueue time may be up to a tick (1–10 ms) early; reading
    /// it costs a quarter of the precise clock, which is a fifth of a small push. Delays,
    /// leases and retries always use the precise clock.
    pub fn precise_timestamps(mut self, enabled: bool) -> Self {
        self.precise_timestamps = enabled;
        self
    }

    /// What open does with a damaged queue (default [`OnDamage::Refuse`]): refuse it, or, with
    /// [`OnDamage::Quarantine`], set the damaged part aside and open (what a service restarted
    /// by a supervisor wants, rather than failing until someone repairs the queue).
    ///
    /// ```
    /// use diskspool::{OnDamage, Options};
    /// let options = Options::default().on_damage(OnDamage::Quarantine);
    /// assert_eq!(options.get_on_damage(), OnDamage::Quarantine);
    /// ```
    pub fn on_damage(mut self, policy: OnDamage) -> Self {
        self.on_damage = policy;
        self
    }

    /// Whether this handle keeps the queue to itself (default `true`): a second handle, in this
    /// process or another, then gets [`Error::Locked`](crate::Error::Locked).
    ///
    /// With `false` the queue is **shared**: any number of processes open it at once (each with
    /// `exclusive(false)`), and each of them pushes and consumes. Every record gets one
    /// sequence number in one FIFO order; a `pop` hands a record to one handle only; a record
    /// received under a lease (`recv`) is left alone by the other processes until its lease
    /// ends, is acknowledged, or is released (the leases of a process that dies end when they
    /// run out); delivery counts and dead letters count every process's deliveries. Consumer
    /// calls take turns: each runs under a lock word in the shared control file, and a handle
    /// reads the head index and the ack log again when another handle's turn changed them (one
    /// `fdatasync` of the head file when it moved), so consumers that alternate record by
    /// record pay more than one that drains many in a row. A consumer that blocks in
    /// `pop_timeout`, `recv_timeout` or `recv_async` is woken by the pushes and releases of
    /// every process; under [`SyncPolicy::Always`] producers in different processes share their
    /// `fdatasync`s. `stats` count what this handle did, over the queue as all consumers left
    /// it. A bound ([`max_records`](Options::max_records), [`max_bytes`](Options::max_bytes))
    /// counts the records of every process, as in one, and so does a deduplication window
    /// ([`Push::dedup_id`](crate::Push::dedup_id)), and a [`Spool`](crate::Spool)'s fanout
    /// reaches the queues from any process. A handle alone on a shared queue costs what an
    /// exclusive one does: the first handle of an unbounded queue not under `Always` runs the
    /// exclusive paths (*solo*) until another opens the queue, whose open then waits until a
    /// thread of the first handle has written its state into the control file. What a shared
    /// queue does not do yet: the segment
    /// pool and storage other than the real filesystem and the simulated one
    /// (`SimStorage::process`, feature `sim`, models processes) are refused with
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions), and so is a directory on a
    /// network filesystem unless every process runs on one machine
    /// ([`allow_network_filesystem`](Options::allow_network_filesystem)). Open the queue
    /// after a `fork`, not before: a handle copied into a child refuses every call there
    /// ([`Error::Forked`](crate::Error::Forked)), and the child lets go of the parent's locks
    /// at the fork (so that the parent's close or death shows while the child lives).
    /// docs/ARCHITECTURE.md ("Several processes") has the design and docs/DURABILITY.md the
    /// contract across processes.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use diskspool::{Options, Queue, SyncPolicy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let shared = Options::default().exclusive(false).sync(SyncPolicy::Never);
    /// let producer = Queue::open(dir.path(), shared.clone())?;
    /// let consumer = Queue::open(dir.path(), shared)?; // another process would do the same
    /// producer.push(b"first")?;
    /// producer.push(b"second")?;
    /// assert_eq!(consumer.pop()?.map(|record| record.seq()), Some(0));
    /// // Every handle consumes, from where the others left the head.
    /// assert_eq!(producer.pop()?.map(|record| record.seq()), Some(1));
    /// assert!(consumer.pop()?.is_none());
    /// # Ok(()) }
    /// ```
    pub fn exclusive(mut self, alone: bool) -> Self {
        self.exclusive = alone;
        self
    }

    /// Whether the handle keeps the queue to itself (see [`exclusive`](Options::exclusive)).
    pub fn get_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Whether a queue shared by several processes ([`exclusive`](Options::exclusive)`(false)`)
    /// may lie on a network or cluster filesystem (default `false`).
    ///
    /// The processes of a shared queue coordinate through a shared mapping of its control file
    /// and futexes in it. Both work between processes of one machine only: two machines that
    /// mount the same NFS, SMB, CephFS or FUSE directory each see their own copy, so their
    /// producers would write over each other's records. A shared open therefore refuses a
    /// directory on such a filesystem ([`Storage::network_filesystem`] names it) with
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions). Set `true` if every process
    /// that opens the queue runs on this machine (a home directory on NFS, say). An exclusive
    /// open needs no such promise: its `flock` is seen across machines where the filesystem
    /// supports it (NFS, CephFS), and one process reads and writes the files.
    ///
    /// ```
    /// use diskspool::Options;
    ///
    /// let one_machine = Options::default().exclusive(false).allow_network_filesystem(true);
    /// assert!(one_machine.get_allow_network_filesystem());
    /// ```
    pub fn allow_network_filesystem(mut self, allow: bool) -> Self {
        self.allow_network_filesystem = allow;
        self
    }

    /// Whether a shared queue may lie on a network filesystem (see
    /// [`allow_network_filesystem`](Options::allow_network_filesystem)).
    pub fn get_allow_network_filesystem(&self) -> bool {
        self.allow_network_filesystem
    }

    /// How many consumed segment files are kept for reuse instead of deleted (default 0: none).
    /// A new segment written into a recycled file overwrites blocks that exist, often in pages
    /// still cached, instead of allocating both; the pool costs up to this many segments of disk
    /// space after the queue drains, which [`Queue::compact`](crate::Queue::compact) releases.
    pub fn segment_pool(mut self, files: usize) -> Self {
        self.segment_pool = files;
        self
    }

    /// How long a [`Delivery`](crate::Delivery) is leased to its receiver (SQS's visibility
    /// timeout; default 30 s, at most 12 h). A delivery neither acknowledged nor extended in
    /// time is handed out again.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// After this many deliveries without an acknowledgement, a record moves to the dead-letter
    /// queue instead of being delivered again (default: no limit).
    pub fn max_deliveries(mut self, deliveries: u32) -> Self {
        self.max_deliveries = Some(deliveries);
        self
    }

    /// The dead-letter queue's directory. A relative path is taken from the queue directory's
    /// parent, so a plain name makes a sibling, and may not climb out of that parent (`..` is
    /// refused by [`Queue::open`](crate::Queue::open)). An absolute path is accepted. Whichever
    /// it is, the directory must hold a queue, be empty or not exist yet when the first record
    /// is dead-lettered (else that fails with `Error::InvalidOptions` and nothing is written
    /// there): a mistyped path never turns someone's folder into a queue. Default: a sibling
    /// named `<queue>.dead`.
    pub fn dead_letter_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dead_letter_dir = Some(dir.into());
        self
    }

    /// Bounds the queue to this many records not yet consumed (records handed out by `recv`
    /// count until acknowledged); a push beyond it follows [`overflow`](Options::overflow).
    /// Like every policy, it is stored in the queue's settings file: every later open, in any
    /// process, and the `spool` commands keep it unless they set it again. `0` removes the
    /// bound (as it reads in the settings file). Default: no bound.
    pub fn max_records(mut self, records: u64) -> Self {
        self.max_records = Some(records).filter(|&records| records != 0);
        self.policies_explicit |= policy_bits::MAX_RECORDS;
        self
    }

    /// Bounds the queue to this many bytes of records not yet consumed, counted as frames on
    /// disk (a record of `n` bytes takes `n` + 24 rounded up to a multiple of 8; see
    /// `docs/FORMAT.md`); records handed out count until acknowledged. A push beyond it follows
    /// [`overflow`](Options::overflow). Stored like [`max_records`](Options::max_records);
    /// `0` removes the bound. Default: no bound.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = Some(bytes).filter(|&bytes| bytes != 0);
        self.policies_explicit |= policy_bits::MAX_BYTES;
        self
    }

    /// What a push does when the queue is at [`max_records`](Options::max_records) or
    /// [`max_bytes`](Options::max_bytes) (default [`Overflow::Reject`]). Stored like them.
    pub fn overflow(mut self, rule: Overflow) -> Self {
        self.overflow = rule;
        self.policies_explicit |= policy_bits::OVERFLOW;
        self
    }

    /// Records older than this (by their enqueue time) are never delivered: they are discarded
    /// when they reach the head, and counted as expired. Stored like
    /// [`max_records`](Options::max_records); `Duration::ZERO` removes it. Measured on the
    /// wall clock against each record's enqueue time. Default: records never expire.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age).filter(|age| !age.is_zero());
        self.policies_explicit |= policy_bits::MAX_AGE;
        self
    }

    /// How long a deduplication id is remembered (default 5 minutes, as SQS FIFO) by
    /// [`Queue::push_with`](crate::Queue::push_with). Stored like
    /// [`max_records`](Options::max_records); `Duration::ZERO` restores the default.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.dedup_window = Some(window).filter(|window| !window.is_zero());
        self.policies_explicit |= policy_bits::DEDUP_WINDOW;
        self
    }

    /// The bound on records not yet consumed, if any.
    pub fn get_max_records(&self) -> Option<u64> {
        self.max_records
    }

    /// The bound on bytes of records not yet consumed, if any.
    pub fn get_max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// What a push does at the bound.
    pub fn get_overflow(&self) -> Overflow {
        self.overflow
    }

    /// The age after which records are never delivered, if any.
    pub fn get_max_age(&self) -> Option<Duration> {
        self.max_age
    }

    /// How long a deduplication id is remembered.
    pub fn get_dedup_window(&self) -> Duration {
        self.dedup_window.unwrap_or(DEDUP_WINDOW_DEFAULT)
    }

    /// Whether a push may find the queue full.
    pub(crate) fn is_bounded(&self) -> bool {
        self.max_records.is_some() || self.max_bytes.is_some()
    }

    /// The segment size in bytes: the configured one, or, for the options of an open queue
    /// ([`Queue::options`](crate::Queue::options)), the one in force.
    pub fn get_segment_size(&self) -> u64 {
        self.segment_size
    }

    /// The permission bits of a new queue's files.
    pub fn get_file_mode(&self) -> u32 {
        self.file_mode
    }

    /// Whether opening may create a queue.
    pub fn get_create_if_missing(&self) -> bool {
        self.create_if_missing
    }

    /// The durability policy.
    pub fn get_sync(&self) -> SyncPolicy {
        self.sync
    }

    /// The largest payload accepted, in bytes: the configured limit, or the default fitted to
    /// the segment size.
    pub fn get_max_record_size(&self) -> usize {
        let fits = self.segment_room() - frame_len(0) as u64;
        match self.max_record_size {
            Some(bytes) => bytes,
            None => (MAX_RECORD_SIZE_DEFAULT as u64).min(fits) as usize,
        }
    }

    /// Whether consumed segments are deleted automatically.
    pub fn get_auto_compact(&self) -> bool {
        self.auto_compact
    }

    /// The filesystem implementation.
    pub fn get_storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Whether pushes store frames through a writable mapping.
    pub fn get_mapped_writes(&self) -> bool {
        self.mapped_writes
    }

    /// The name set for metrics and `tracing` events, if any (see
    /// [`metrics_name`](Options::metrics_name)).
    pub fn get_metrics_name(&self) -> Option<&str> {
        self.metrics_name.as_deref()
    }

    /// How often the open queue reports to the `metrics` recorder. Feature `metrics`.
    #[cfg(feature = "metrics")]
    pub fn get_metrics_interval(&self) -> Duration {
        self.metrics_interval
    }

    /// Whether enqueue times come from the precise clock.
    pub fn get_precise_timestamps(&self) -> bool {
        self.precise_timestamps
    }

    /// What open does with a damaged queue.
    pub fn get_on_damage(&self) -> OnDamage {
        self.on_damage
    }

    /// How many consumed segment files are kept for reuse.
    pub fn get_segment_pool(&self) -> usize {
        self.segment_pool
    }

    /// The lease of a delivery.
    pub fn get_lease(&self) -> Duration {
        self.lease
    }

    /// The delivery limit, if any.
    pub fn get_max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The configured dead-letter directory, as given (`None`: the default sibling
    /// `<queue>.dead`). [`Queue::dead_letter_dir`](crate::Queue::dead_letter_dir) gives the
    /// directory a queue uses.
    pub fn get_dead_letter_dir(&self) -> Option<&Path> {
        self.dead_letter_dir.as_deref()
    }

    /// The dead-letter directory for a queue in `queue_dir`.
    pub(crate) fn dead_letter_path(&self, queue_dir: &Path) -> PathBuf {
        let parent = queue_dir.parent().unwrap_or(Path::new("."));
        match &self.dead_letter_dir {
            Some(dir) if dir.is_absolute() => dir.clone(),
            Some(dir) => parent.join(dir),
            None => {
                let name = queue_dir
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_else(|| String::from("queue"));
                parent.join(format!("{name}.dead"))
            }
        }
    }

    /// These options for a dead-letter queue of a queue opened with them: a record of the
    /// largest size the queue accepts must fit there with its envelope before it, in a
    /// segment of a new dead-letter queue too.
    pub(crate) fn fitted_to_envelopes(mut self) -> Self {
        let largest = self
            .get_max_record_size()
            .saturating_add(crate::format::dead_letter::DEAD_LETTER_HEADER_LEN)
            .min(RECORD_LEN_MAX as usize);
        self.max_record_size = Some(largest);
        let needed = (frame_len(largest) as u64).saturating_add(SEGMENT_HEADER_LEN as u64);
        self.segment_size = self.segment_size.max(needed.min(SEGMENT_SIZE_MAX));
        self
    }

    /// Bytes of a segment available to frames.
    pub(crate) fn segment_room(&self) -> u64 {
        self.segment_size.saturating_sub(SEGMENT_HEADER_LEN as u64)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.exclusive {
            let refused = if self.segment_pool > 0 {
                Some("segment_pool")
            } else if !self.storage.shares_between_processes() {
                Some("this storage (the real filesystem and the simulated one only)")
            } else {
                None
            };
            if let Some(refused) = refused {
                return Err(Error::InvalidOptions(format!(
                    "a queue shared by several processes (exclusive(false)) does not support \
                     {refused} yet; open it with exclusive(true)"
                )));
            }
        }
        if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&self.segment_size) {
            return Err(Error::InvalidOptions(format!(
                "segment_size {} is outside {SEGMENT_SIZE_MIN}..={SEGMENT_SIZE_MAX}",
                self.segment_size
            )));
        }
        let max_record = self.get_max_record_size();
        if max_record as u64 > RECORD_LEN_MAX as u64 {
            // With room for a delay and a TTL in the same frame.
            return Err(Error::InvalidOptions(format!(
                "max_record_size {max_record} exceeds the format's limit of {RECORD_LEN_MAX}"
            )));
        }
        if frame_len(max_record) as u64 > self.segment_room() {
            return Err(Error::InvalidOptions(format!(
                "max_record_size {max_record} does not fit in a segment of {} bytes",
                self.segment_size
            )));
        }
        if let Some(dir) = self
            .dead_letter_dir
            .as_deref()
            .filter(|dir| dir.is_relative())
        {
            let climbs = dir
                .components()
                .any(|part| matches!(part, std::path::Component::ParentDir));
            if climbs || dir.as_os_str().is_empty() {
                return Err(Error::InvalidOptions(format!(
                    "dead_letter_dir {} must stay inside the queue's parent directory (no `..`)",
                    dir.display()
                )));
            }
        }
        if self.file_mode & !0o666 != 0 || self.file_mode & 0o600 != 0o600 {
            return Err(Error::InvalidOptions(format!(
                "file_mode {:#o} must hold read and write bits only, the owner's included",
                self.file_mode
            )));
        }
        if self.lease.is_zero() || self.lease > LEASE_MAX {
            return Err(Error::InvalidOptions(format!(
                "lease {:?} is outside (0 s, 12 h]",
                self.lease
            )));
        }
        if self.max_deliveries == Some(0) {
            return Err(Error::InvalidOptions(
                "max_deliveries must be at least 1".into(),
            ));
        }
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        if self.max_age.is_some_and(|age| micros(age) == 0)
            || self.dedup_window.is_some_and(|window| micros(window) == 0)
        {
            // Below a microsecond: the settings file would read it as "none".
            return Err(Error::InvalidOptions(
                "max_age and dedup_window must be at least 1 µs".into(),
            ));
        }
        if let SyncPolicy::Interval(interval) = self.sync {
            if interval.is_zero() {
                return Err(Error::InvalidOptions(
                    "SyncPolicy::Interval needs a non-zero interval".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Options of one push, for [`Queue::push_with`](crate::Queue::push_with), built from
/// [`Push::new`] with consuming setters.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use diskspool::{Options, Push, Queue};
///
/// let dir = tempfile::tempdir()?;
/// let queue = Queue::open(dir.path(), Options::default())?;
/// let first = queue.push_with(b"order 17", Push::new().dedup_id("order-17"))?;
/// // A retry with the same id inside the window writes nothing and returns the first's number.
/// let again = queue.push_with(b"order 17", Push::new().dedup_id("order-17"))?;
/// assert_eq!(first, again);
/// assert_eq!(queue.len(), 1);
/// queue.push_with(b"later", Push::new().delay(Duration::from_secs(60)))?;
/// // Delivered within 15 minutes of its push, or never.
/// let quote = Push::new().ttl(Duration::from_secs(900)).dedup_id("quote-4");
/// queue.push_with(b"quote 4", quote)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    pub(crate) delay: Option<Duration>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) dedup_id: Option<Vec<u8>>,
}

/// The longest deduplication id accepted, in bytes (SQS allows 128 characters).
pub const DEDUP_ID_LEN_MAX: usize = crate::format::dedup::DEDUP_ID_MAX;

impl Push {
    /// A plain push: no delay, no TTL, no deduplication id.
    pub fn new() -> Self {
        Push::default()
    }

    /// The record is not handed out before `delay` has passed (as
    /// [`Queue::push_delayed`](crate::Queue::push_delayed)).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// A time to live: the record is never handed out (by `pop`, `recv`, `peek`, typed queues
    /// or spools) once `ttl` has passed since its enqueue time, also after a reopen or a crash
    /// (the TTL is stored in the record). It is discarded when it reaches the head, or moved to
    /// the dead-letter queue with the reason `Expired` when one is configured, and counted as
    /// expired, like a record older than [`Options::max_age`]; with both, the earlier expiry
    /// wins. The TTL counts from the enqueue time, not from the end of a [`delay`](Push::delay):
    /// a push whose delay is as long as its TTL or longer is refused with
    /// [`Error::InvalidOptions`]. A zero TTL means none (as a zero `max_age`).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use diskspool::{Options, Push, Queue};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let queue = Queue::open(dir.path(), Options::default())?;
    /// queue.push_with(b"quote", Push::new().ttl(Duration::from_secs(30)))?;
    /// let record = queue.pop()?.expect("delivered within its TTL");
    /// assert_eq!(record.ttl(), Some(Duration::from_secs(30)));
    /// # Ok(()) }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl).filter(|ttl| !ttl.is_zero());
        self
    }

    /// A deduplication id (1 to [`DEDUP_ID_LEN_MAX`] bytes): a second push with the same id
    /// within [`Options::dedup_window`] writes nothing and returns the first push's sequence
    /// number, also after the first was consumed, after a reopen and after a crash (see
    /// `docs/DURABILITY.md`).
    pub fn dedup_id(mut self, id: impl AsRef<[u8]>) -> Self {
        self.dedup_id = Some(id.as_ref().to_vec());
        self
    }

    /// The delay, if any.
    pub fn get_delay(&self) -> Option<Duration> {
        self.delay
    }

    /// The deduplication id, if any.
    pub fn get_dedup_id(&self) -> Option<&[u8]> {
        self.dedup_id.as_deref()
    }

    /// The time to live, if any.
    pub fn get_ttl(&self) -> Option<Duration> {
        self.ttl
    }

    /// The record's body prefix: its not-before time (from `now_us()`, read only for a delay)
    /// and its TTL. Refuses a delay that would outlast the TTL.
    pub(crate) fn body_prefix(&self, now_us: impl FnOnce() -> u64) -> Result<BodyPrefix> {
        let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        if let (Some(delay), Some(ttl)) = (self.delay, self.ttl) {
            if delay >= ttl {
                return Err(Error::InvalidOptions(format!(
                    "a delay of {delay:?} is not shorter than the TTL of {ttl:?}: the record \
                     would expire before it could be delivered"
                )));
            }
        }
        let not_before_us = match self.delay {
            Some(delay) => now_us().saturating_add(micros(delay)).max(1),
            None => 0,
        };
        Ok(BodyPrefix {
            not_before_us,
            ttl_us: self.ttl.map_or(0, micros),
        })
    }
}
