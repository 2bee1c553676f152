//! A simulated filesystem with power-loss semantics and fault injection, for crash testing.
//!
//! [`SimStorage`] implements [`Storage`] in memory. Plug it in with
//! [`Options::storage`](crate::Options::storage), run a workload, then pull the plug with
//! [`SimStorage::power_loss`] or kill the "process" with [`SimStorage::process_crash`], reopen
//! the queue on the same `SimStorage` and check what survived. Every decision is drawn from a
//! seeded generator, so a failing run replays exactly from its seed.
//!
//! Behind the `sim` cargo feature, so that production builds carry none of it: crash tests turn
//! it on as a dev-dependency, `diskspool = { version = "…", features = ["sim"] }`.
//!
//! ```
//! # fn main() -> Result<(), diskspool::Error> {
//! use std::sync::Arc;
//! use diskspool::{Options, Queue, SimStorage, SyncPolicy};
//!
//! let sim = SimStorage::new(7);
//! let options = || Options::default().sync(SyncPolicy::Always).storage(Arc::new(sim.clone()));
//! let queue = Queue::open("/q", options())?;
//! queue.push(b"survives")?;
//! sim.power_loss(); // the queue handle is now dead: every call on it fails
//! drop(queue);
//! let queue = Queue::open("/q", options())?;
//! assert_eq!(queue.pop()?.expect("durable record").payload(), b"survives");
//! # Ok(()) }
//! ```
//!
//! # What a power loss keeps
//!
//! Each file has *durable* content (what the last `sync_data` covered) and the list of writes and
//! truncations since then. A power loss keeps the durable content and, of the unsynced changes,
//! for each file independently one of: none of them; all of them; a prefix of them whose last
//! write may be torn at any byte; or, when [`SimStorage::set_reordering`] is on (the default),
//! an arbitrary subset of them, so that a later write survives while an earlier one is lost, as
//! page writeback in any order can do. Bytes that no surviving write covered read as zeros.
//!
//! Each directory has durable entries (what the last [`sync_dir`](Storage::sync_dir) covered)
//! and the list of creates, removes and renames since then. A power loss keeps a prefix of that
//! list (possibly empty): metadata operations reach the disk in order, as on a journaling
//! filesystem. A file whose entry did not survive is gone, whatever was synced in it.
//! Directories themselves are durable as soon as they are created.
//!
//! A process crash keeps everything written (the kernel's page cache survives it) and only
//! releases the locks and invalidates the open handles.
//!
//! # Processes
//!
//! A queue shared by several processes (`Options::exclusive(false)`) runs here too: each handle
//! opened through [`SimStorage::process`]`(n)` acts as simulated process `n`. The processes
//! coordinate as on the real filesystem, through the storage seam (`storage::process`): file
//! locks are entries in a lock table (owned by one open lock file, as a `flock` is), the
//! `control` file's shared mapping is one page of atomics per file that every process attaches
//! to (kept while the file exists, like the page cache; a power loss drops it, and the first
//! opener after it builds a new one), and the process number stands for the pid. The
//! processes are threads of the test's process, so the engine's futex waits and wakes work on
//! that page unchanged.
//!
//! [`SimStorage::kill_process`] kills one process between two calls: its files, mappings and
//! lock files are dead from then on, its locks are released, and everything it wrote and
//! stored into the control page stays as it left it (a lock word it held stays held, for the
//! survivors to take over from a dead holder). [`SimStorage::kill_at`] kills one in the middle
//! of what it does, at its `n`-th call: the thread that made the call stops there for good.
//! [`process_crash`](SimStorage::process_crash) and [`power_loss`](SimStorage::power_loss)
//! kill every process. Two things a copy cannot do as a real mapping does are modelled where
//! the engine needs them: once a second process is used, a writable mapping takes up what
//! other processes wrote to its range before the engine reads or stores into it, and a read
//! mapping of a shared queue's active segment ends at the committed tail (what a dead writer
//! left past it is cut and written over by the next writer; a copy that showed it would show
//! it for good).
//!
//! # Writable mappings
//!
//! With [`SimStorage::set_writable_mappings`] on, files offer writable mappings as the real
//! filesystem does, so that the engine takes its mapped write path (segments and head slots
//! stored through mappings under every policy but `Always`, whose frames are written). A
//! store goes into the mapping's own buffer; the engine reports every store before the call
//! that made it returns, and from then on it is an unsynced write of the file like any other:
//! visible to reads, kept by a process crash, lost, kept, torn or reordered by a power loss. A
//! mapping past the end of the file is refused, as on Linux.
//!
//! # Faults
//!
//! [`SimStorage::inject`] arms a [`Fault`]: the chosen call, counted from now among calls of a
//! chosen [`SimOp`] kind (or of any kind), fails with EIO or ENOSPC, or writes only a prefix of
//! its bytes. [`SimStorage::set_capacity`] bounds the bytes all files may hold: a write past it
//! writes what fits and fails with ENOSPC. A failed `sync_data` may, like Linux after an
//! `fsync` error, mark the unsynced pages clean without writing them: a later sync then does not
//! make them durable.
//!
//! # Relation to other simulators
//!
//! turmoil's `unstable-fs` models durability inside turmoil's async network simulation and
//! RocksDB's `FaultInjectionTestFS` drops unsynced data of a C++ `FileSystem`; neither plugs into
//! this crate's synchronous [`Storage`] seam, tears or reorders individual writes, or loses
//! directory operations in order, so this module implements the model directly.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::storage::{DirLock, LockFailure, Mapping, Storage, StorageFile, WritableMapping};

/// A small, fast, seeded pseudo-random generator (SplitMix64). Deterministic across platforms.
#[derive(Debug, Clone)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        self.next_u64() % bound
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

/// The kinds of calls a [`Fault`] can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimOp {
    /// [`Storage::create_dir_all`].
    CreateDirAll,
    /// [`Storage::list_dir`].
    ListDir,
    /// [`Storage::open`].
    Open,
    /// [`Storage::create_new`].
    CreateNew,
    /// [`Storage::remove_file`].
    RemoveFile,
    /// [`Storage::rename`].
    Rename,
    /// [`Storage::sync_dir`].
    SyncDir,
    /// [`Storage::lock_dir`].
    LockDir,
    /// [`StorageFile::len`].
    Len,
    /// [`StorageFile::read_exact_at`].
    Read,
    /// [`StorageFile::write_all_at`].
    Write,
    /// [`StorageFile::set_len`].
    SetLen,
    /// [`StorageFile::sync_data`].
    SyncData,
    /// [`StorageFile::map`].
    Map,
    /// [`StorageFile::map_writable`] (only when writable mappings are on, see
    /// [`SimStorage::set_writable_mappings`]).
    MapWritable,
    /// Taking or releasing a lock on a lock file of a queue shared by several processes
    /// (`Options::exclusive(false)`).
    Lock,
}

/// How an injected fault fails its call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// EIO. A failed write may have written any prefix of its bytes.
    Io,
    /// ENOSPC. A failed write may have written any prefix of its bytes.
    NoSpace,
    /// A write that stops after a non-empty strict prefix of its bytes and reports
    /// [`io::ErrorKind::WriteZero`], as `write_all` does when the device stops accepting bytes.
    /// On calls other than writes it acts as [`FaultKind::Io`].
    ShortWrite,
}

/// A fault to inject: the `skip + 1`-th call from now of kind `op` (any kind when `None`) fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The kind of call to fail, or any call.
    pub op: Option<SimOp>,
    /// How many matching calls to let through first.
    pub skip: u64,
    /// How the call fails.
    pub kind: FaultKind,
    /// Whether every matching call after the first failing one fails too (a dead device).
    pub sticky: bool,
}

impl Fault {
    /// Fails the next call of kind `op` with `kind`, once.
    pub fn next(op: SimOp, kind: FaultKind) -> Self {
        Fault {
            op: Some(op),
            skip: 0,
            kind,
            sticky: false,
        }
    }
}

/// Counters of what a [`SimStorage`] has done, for test reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Calls made through the storage and its files.
    pub calls: u64,
    /// Calls failed by injected faults or by the capacity limit.
    pub faults: u64,
    /// Simulated power losses.
    pub power_losses: u64,
    /// Simulated process crashes.
    pub process_crashes: u64,
    /// Stores through writable mappings that reached a file
    /// ([`SimStorage::set_writable_mappings`]).
    pub mapped_stores: u64,
    /// Kills of one simulated process ([`SimStorage::kill_process`], or a kill point armed with
    /// [`SimStorage::kill_at`] that was reached).
    pub process_kills: u64,
    /// Answers of solo handles run by openers ([`SimStorage::allow_solo`]).
    pub solo_answers: u64,
}

/// An in-memory filesystem that models what survives a power loss; see the
/// [module documentation](self).
///
/// Clones share the same filesystem, like two handles on one disk, and act as the same
/// simulated process; [`process`](SimStorage::process) gives a clone acting as another one.
#[derive(Clone)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
    /// The simulated process this clone acts as (0 unless made by `process`).
    process: u32,
}

impl fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("SimStorage")
            .field("files", &state.inodes.len())
            .field("epoch", &state.epoch)
            .field("stats", &state.stats)
            .finish()
    }
}

/// One unsynced change to a file's content.
#[derive(Debug, Clone)]
enum FileChange {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl FileChange {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            FileChange::Write { offset, bytes } => {
                let start = *offset as usize;
                let end = start + bytes.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[start..end].copy_from_slice(bytes);
            }
            FileChange::SetLen(len) => content.resize(*len as usize, 0),
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<FileChange>,
    /// How far a read mapping shows the file (see [`Inode::wrote`]).
    view_end: u64,
    /// Bumped by every change of `live`: a writable mapping of another process sees it moved
    /// and takes up the file's bytes (see `SimWritableMapping::bytes_mut`).
    version: u64,
    /// The memory every process maps of this file when it is a shared queue's `control` file,
    /// kept while the file exists (the page cache); a power loss drops it.
    page: Option<Arc<SharedPage>>,
}

impl Inode {
    /// Keeps `view_end` for a write of `bytes` at `offset` by the running process. A read
    /// mapping here is a copy, not the file's memory: it cannot show a later write the way a
    /// real mapping does. So it ends where the process wrote zeros (space prepared ahead of a
    /// tail, which records are written into later); the engine maps again when it needs bytes
    /// past a view's end. Data written at or before that point moves it on.
    fn wrote(&mut self, offset: u64, bytes: &[u8]) {
        let end = offset + bytes.len() as u64;
        if bytes.iter().all(|&byte| byte == 0) {
            if end > offset {
                self.view_end = self.view_end.min(offset);
            }
        } else if offset <= self.view_end {
            self.view_end = self.view_end.max(end);
        }
    }
}

/// One unsynced change to a directory's entries.
#[derive(Debug, Clone)]
enum DirChange {
    Create(String, u64),
    Remove(String),
    Rename(String, String),
}

impl DirChange {
    fn apply(&self, entries: &mut BTreeMap<String, u64>) {
        match self {
            DirChange::Create(name, inode) => {
                entries.insert(name.clone(), *inode);
            }
            DirChange::Remove(name) => {
                entries.remove(name);
            }
            DirChange::Rename(from, to) => {
                if let Some(inode) = entries.remove(from) {
                    entries.insert(to.clone(), inode);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    unsynced: Vec<DirChange>,
}

#[derive(Debug)]
struct ArmedFault {
    fault: Fault,
    remaining_skip: u64,
    fired: bool,
}

/// A file lock held in the simulated lock table (a `flock`: owned by one open lock file).
#[derive(Debug, Clone, Copy)]
struct Flock {
    /// The open lock file that holds it.
    id: u64,
    process: u32,
    exclusive: bool,
}

/// What a process's next calls do when a kill point is armed for it (see
/// [`SimStorage::kill_at`]).
#[derive(Debug, Clone, Copy)]
struct KillPoint {
    /// Calls still let through before the one that is killed.
    remaining: u64,
}

/// What a solo handle does when an opener asks it to leave solo (see
/// [`SimStorage::allow_solo`]).
pub(crate) type SoloAnswer = Arc<dyn Fn() + Send + Sync>;

/// A solo handle's answer, registered by its process (see [`SimStorage::on_solo_asked`]).
struct SoloAnswerer {
    process: u32,
    /// The incarnation of `process` that registered it: a killed process answers nothing.
    life: u64,
    dir: PathBuf,
    ticket: u32,
    answer: SoloAnswer,
}

impl fmt::Debug for SoloAnswerer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoloAnswerer")
            .field("process", &self.process)
            .field("life", &self.life)
            .field("dir", &self.dir)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct SimState {
    rng: SimRng,
    /// The incarnation of each simulated process that is alive: a handle (file, mapping, lock
    /// file) opened by an earlier one is dead. A crash or power loss clears it, a kill removes
    /// one process; the next call of a process starts a new incarnation.
    lives: BTreeMap<u32, u64>,
    next_life: u64,
    /// Whether processes other than 0 have been used: only then does a read mapping of a
    /// shared queue's active segment end at the committed tail (`committed_view_end`).
    several_processes: bool,
    /// The file lock table, by lock file path.
    flocks: BTreeMap<PathBuf, Vec<Flock>>,
    next_flock: u64,
    /// Kill points armed per process.
    kill_points: BTreeMap<u32, KillPoint>,
    /// Kills per process so far.
    kill_counts: BTreeMap<u32, u64>,
    /// Whether shared handles may run solo here (see [`SimStorage::allow_solo`]).
    solo_allowed: bool,
    /// Kills armed at a crash point of a solo handle's answer, per process (see
    /// [`SimStorage::kill_in_answer_at`]).
    answer_kill_points: BTreeMap<u32, &'static str>,
    /// The answers of the handles that may be solo.
    solo_answerers: Vec<SoloAnswerer>,

    dirs: BTreeMap<PathBuf, Dir>,
    inodes: BTreeMap<u64, Inode>,
    next_inode: u64,
    /// Bumped by every crash; handles from an older epoch are dead.
    epoch: u64,
    faults: Vec<ArmedFault>,
    capacity_bytes: Option<u64>,
    reordering: bool,
    writable_mappings: bool,
    network_filesystem: Option<&'static str>,
    stats: SimStats,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("EIO (simulated): {what}"))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

fn dead_handle() -> io::Error {
    io::Error::other("handle from before a simulated crash: the process that owned it is dead")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file (simulated)", path.display()),
    )
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Ok((parent, name.to_string()))
}

impl SimState {
    /// Counts a call and fails it if an armed fault says so.
    fn call(&mut self, op: SimOp) -> Result<(), FaultKind> {
        self.stats.calls += 1;
        let mut outcome = Ok(());
        for armed in &mut self.faults {
            if armed.fault.op.is_some_and(|target| target != op) {
                continue;
            }
            if armed.fired && !armed.fault.sticky {
                continue;
            }
            if armed.remaining_skip > 0 {
                armed.remaining_skip -= 1;
                continue;
            }
            armed.fired = true;
            if outcome.is_ok() {
                outcome = Err(armed.fault.kind);
            }
        }
        self.faults
            .retain(|armed| !armed.fired || armed.fault.sticky);
        if outcome.is_err() {
            self.stats.faults += 1;
        }
        outcome
    }

    fn fail(kind: FaultKind, what: &str) -> io::Error {
        match kind {
            FaultKind::NoSpace => enospc(),
            FaultKind::Io | FaultKind::ShortWrite => eio(what),
        }
    }

    fn dir(&self, dir: &Path) -> io::Result<&Dir> {
        self.dirs.get(dir).ok_or_else(|| not_found(dir))
    }

    fn dir_mut(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (parent, name) = split(path)?;
        self.dir(&parent)?
            .live
            .get(&name)
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn used_bytes(&self) -> u64 {
        let mut used = 0;
        for dir in self.dirs.values() {
            for inode in dir.live.values() {
                used += self
                    .inodes
                    .get(inode)
                    .map_or(0, |inode| inode.live.len() as u64);
            }
        }
        used
    }

    fn create_dirs(&mut self, dir: &Path) {
        for ancestor in dir.ancestors() {
            self.dirs.entry(ancestor.to_path_buf()).or_default();
        }
    }

    fn create_file(&mut self, path: &Path, durable: bool) -> io::Result<u64> {
        let (parent, name) = split(path)?;
        let inode = self.next_inode;
        let dir = self.dir_mut(&parent)?;
        if dir.live.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{}: file exists (simulated)", path.display()),
            ));
        }
        dir.live.insert(name.clone(), inode);
        if durable {
            dir.durable.insert(name, inode);
        } else {
            dir.unsynced.push(DirChange::Create(name, inode));
        }
        self.next_inode += 1;
        self.inodes.insert(inode, Inode::default());
        Ok(inode)
    }

    /// What one file keeps of its unsynced changes at a power loss.
    fn surviving_changes(&mut self, changes: &[FileChange]) -> Vec<FileChange> {
        let count = changes.len() as u64;
        if count == 0 {
            return Vec::new();
        }
        let choice = self.rng.below(if self.reordering { 4 } else { 3 });
        let mut kept: Vec<FileChange> = match choice {
            0 => return Vec::new(),
            1 => return changes.to_vec(),
            2 => changes[..=self.rng.below(count) as usize].to_vec(),
            _ => changes
                .iter()
                .filter(|_| self.rng.chance(1, 2))
                .cloned()
                .collect(),
        };
        // Tear the last surviving write at any byte.
        if self.rng.chance(1, 2) {
            if let Some(FileChange::Write { bytes, .. }) = kept.last_mut() {
                let keep = self.rng.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(keep);
            }
        }
        kept
    }

    /// A new process (or queue instance) starts with the files as they are: read mappings
    /// show them whole (see [`Inode::wrote`]), in `dir` or everywhere.
    fn settle_views(&mut self, dir: Option<&Path>) {
        let numbers: Vec<u64> = match dir.and_then(|dir| self.dirs.get(dir)) {
            Some(dir) => dir.live.values().copied().collect(),
            None if dir.is_none() => self.inodes.keys().copied().collect(),
            None => Vec::new(),
        };
        for number in numbers {
            if let Some(inode) = self.inodes.get_mut(&number) {
                inode.view_end = inode.live.len() as u64;
            }
        }
    }

    /// The live incarnation of `process`, started if it has none.
    fn life(&mut self, process: u32) -> u64 {
        if let Some(&life) = self.lives.get(&process) {
            return life;
        }
        self.next_life += 1;
        self.lives.insert(process, self.next_life);
        self.next_life
    }

    fn alive(&self, process: u32, life: u64) -> bool {
        self.lives.get(&process) == Some(&life)
    }

    /// How far a read mapping may show the segment at `path` while a shared queue's
    /// processes write it: up to the committed tail when it is the active segment (unless a
    /// handle is solo). A copy cannot show what is written after it was made, as a real
    /// mapping does; the engine reads
    /// only up to the published tail, below the committed one, where nothing changes again.
    /// Past it, a writer's frames may still be cut by the repair of the next writer (after a
    /// kill) and written over: a copy that showed them would show them for good.
    fn committed_view_end(&self, path: &Path) -> Option<u64> {
        if !self.several_processes {
            return None;
        }
        let (dir, name) = split(path).ok()?;
        let base = crate::format::layout::parse_segment_file_name(&name)?;
        let control = self
            .lookup(&dir.join(crate::format::layout::CONTROL_FILE_NAME))
            .ok()?;
        let page = self.inodes.get(&control)?.page.as_ref()?;
        // A solo handle writes as an exclusive one and leaves the committed tail as it was:
        // it alone writes, and what it wrote is committed before another writer comes, so
        // its frames are shown as an exclusive queue's are.
        if page.solo_holder() != 0 {
            return None;
        }
        let (committed_base, committed_tail) = page.committed_tail();
        (base == committed_base).then_some(committed_tail)
    }

    fn new_flock_id(&mut self) -> u64 {
        self.next_flock += 1;
        self.next_flock
    }

    /// Takes the lock on `path` for the open lock file `id` (exclusive or shared, converting
    /// a lock it holds, as `flock` does), unless another open lock file's lock conflicts.
    fn try_flock(&mut self, path: &Path, id: u64, process: u32, exclusive: bool) -> bool {
        let holders = self.flocks.entry(path.to_path_buf()).or_default();
        if holders
            .iter()
            .any(|flock| flock.id != id && (exclusive || flock.exclusive))
        {
            return false;
        }
        holders.retain(|flock| flock.id != id);
        holders.push(Flock {
            id,
            process,
            exclusive,
        });
        if exclusive && path.file_name() == Some(crate::format::layout::LOCK_FILE_NAME.as_ref()) {
            // A queue instance alone with the queue: the ones before it write nothing any more,
            // and the control page of the processes before it describes nothing (the first
            // opener of a shared queue builds a new one after its recovery).
            if let Some(dir) = path.parent() {
                let dir = dir.to_path_buf();
                self.settle_views(Some(&dir));
                if let Ok(control) =
                    self.lookup(&dir.join(crate::format::layout::CONTROL_FILE_NAME))
                {
                    if let Some(inode) = self.inodes.get_mut(&control) {
                        inode.page = None;
                    }
                }
            }
        }
        true
    }

    /// Releases the lock the open lock file `id` holds on `path`, if any.
    fn unflock(&mut self, path: &Path, id: u64) {
        if let Some(holders) = self.flocks.get_mut(path) {
            holders.retain(|flock| flock.id != id);
            if holders.is_empty() {
                self.flocks.remove(path);
            }
        }
    }

    /// Kills one process: its handles die, its file locks are released. Its writes stay (the
    /// page cache), and so does whatever it stored into shared memory.
    fn kill(&mut self, process: u32) {
        self.lives.remove(&process);
        self.kill_points.remove(&process);
        *self.kill_counts.entry(process).or_default() += 1;
        for holders in self.flocks.values_mut() {
            holders.retain(|flock| flock.process != process);
        }
        self.flocks.retain(|_, holders| !holders.is_empty());
        self.stats.process_kills += 1;
    }

    /// Counts a call of `process` against its kill point: true when this call is the one
    /// killed (the process is then dead, and the caller stops its thread).
    fn reaches_kill_point(&mut self, process: u32) -> bool {
        let Some(point) = self.kill_points.get_mut(&process) else {
            return false;
        };
        if point.remaining > 0 {
            point.remaining -= 1;
            return false;
        }
        self.kill(process);
        true
    }

    fn crash(&mut self, power_loss: bool) {
        self.epoch += 1;
        self.lives.clear();
        self.flocks.clear();
        self.kill_points.clear();
        self.faults.clear();
        if !power_loss {
            self.stats.process_crashes += 1;
            self.settle_views(None);
            return;
        }
        self.stats.power_losses += 1;
        let dirs: Vec<PathBuf> = self.dirs.keys().cloned().collect();
        for path in &dirs {
            let unsynced = match self.dirs.get_mut(path) {
                Some(dir) => std::mem::take(&mut dir.unsynced),
                None => continue,
            };
            let keep = self.rng.below(unsynced.len() as u64 + 1) as usize;
            if let Some(dir) = self.dirs.get_mut(path) {
                for change in &unsynced[..keep] {
                    change.apply(&mut dir.durable);
                }
                dir.live = dir.durable.clone();
            }
        }
        let reachable: Vec<u64> = self
            .dirs
            .values()
            .flat_map(|dir| dir.durable.values().copied())
            .collect();
        let mut survivors = BTreeMap::new();
        for number in reachable {
            let Some(mut inode) = self.inodes.remove(&number) else {
                continue;
            };
            let changes = std::mem::take(&mut inode.unsynced);
            for change in self.surviving_changes(&changes) {
                change.apply(&mut inode.durable);
            }
            inode.live = inode.durable.clone();
            inode.view_end = inode.live.len() as u64;
            inode.version += 1;
            // Memory does not survive the power: a mapping reads the file again.
            inode.page = None;
            survivors.insert(number, inode);
        }
        self.inodes = survivors;
    }
}

impl SimStorage {
    /// An empty filesystem whose crash and fault decisions are drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        SimStorage {
            state: Arc::new(Mutex::new(SimState {
                rng: SimRng::new(seed),
                lives: BTreeMap::new(),
                next_life: 0,
                several_processes: false,
                flocks: BTreeMap::new(),
                next_flock: 0,
                kill_points: BTreeMap::new(),
                kill_counts: BTreeMap::new(),
                solo_allowed: false,
                answer_kill_points: BTreeMap::new(),
                solo_answerers: Vec::new(),
                dirs: BTreeMap::new(),
                inodes: BTreeMap::new(),
                next_inode: 1,
                epoch: 0,
                faults: Vec::new(),
                capacity_bytes: None,
                reordering: true,
                writable_mappings: false,
                network_filesystem: None,
                stats: SimStats::default(),
            })),
            process: 0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cuts the power: unsynced changes are lost, kept, kept in part, torn or reordered as the
    /// [module documentation](self) describes. Every handle opened before is dead afterwards,
    /// every lock released and every armed fault disarmed.
    pub fn power_loss(&self) {
        self.lock().crash(true);
    }

    /// Like [`power_loss`](Self::power_loss), with this crash's decisions drawn from `seed`
    /// instead of the filesystem's generator (so that one crash replays on its own).
    pub fn power_loss_seeded(&self, seed: u64) {
        let mut state = self.lock();
        let saved = std::mem::replace(&mut state.rng, SimRng::new(seed));
        state.crash(true);
        state.rng = saved;
    }

    /// This filesystem as seen by simulated process `process` (0 is the one every
    /// `SimStorage` starts as): a clone whose handles and file locks belong to that process,
    /// so that several queue handles opened with `Options::exclusive(false)` act as several
    /// processes sharing one queue. [`kill_process`](Self::kill_process) kills one of them.
    pub fn process(&self, process: u32) -> SimStorage {
        self.lock().several_processes = true;
        SimStorage {
            state: self.state.clone(),
            process,
        }
    }

    /// Lets the handles of queues shared by several simulated processes have the queue to
    /// themselves while they are alone (*solo*, see `Options::exclusive`), as on a real
    /// filesystem; without it they never do. On a real filesystem a solo handle answers an
    /// opener from a thread of its own; here no thread is started, so that a seed replays the
    /// same calls: the opener runs the solo handle's answer itself, on its own thread, as the
    /// solo handle's process would (its calls are that process's). A handle never becomes solo
    /// again by itself either: the simulation asks it to (`testkit::enter_solo_if_alone`).
    pub fn allow_solo(&self) {
        self.lock().solo_allowed = true;
    }

    /// Whether [`allow_solo`](Self::allow_solo) was called.
    pub(crate) fn allows_solo(&self) -> bool {
        self.lock().solo_allowed
    }

    /// Registers what the handle with `ticket` on the queue in `dir`, of this clone's process,
    /// does when an opener asks it to leave solo (in place of its solo thread).
    pub(crate) fn on_solo_asked(&self, dir: &Path, ticket: u32, answer: SoloAnswer) {
        let mut state = self.lock();
        let life = state.life(self.process);
        let SimState {
            lives,
            solo_answerers,
            ..
        } = &mut *state;
        solo_answerers.retain(|known| {
            lives.get(&known.process) == Some(&known.life)
                && (known.dir.as_path(), known.ticket) != (dir, ticket)
        });
        solo_answerers.push(SoloAnswerer {
            process: self.process,
            life,
            dir: dir.to_path_buf(),
            ticket,
            answer,
        });
    }

    /// Runs the answer of the handle with `ticket` on the queue in `dir`, if its process is
    /// alive and registered one, and waits until it returned or its process was killed in it
    /// (a kill armed with [`kill_at`](Self::kill_at) or `kill_in_answer_at` stops the answer's
    /// thread for good, as the solo thread of a process killed while it answers): true when it
    /// ran.
    pub(crate) fn ask_solo(&self, dir: &Path, ticket: u32) -> bool {
        let found = {
            let mut state = self.lock();
            let found = state
                .solo_answerers
                .iter()
                .find(|known| {
                    known.dir == dir
                        && known.ticket == ticket
                        && state.alive(known.process, known.life)
                })
                .map(|known| (known.answer.clone(), known.process, known.life));
            state.stats.solo_answers += u64::from(found.is_some());
            found
        };
        let Some((answer, process, life)) = found else {
            return false;
        };
        // On a thread of its own, as the solo thread's: the asker waits while it runs (one at
        // a time, so a seed still replays), and goes on if a kill stops it. Not under the
        // state's lock: the answer calls the storage.
        let Ok(answering) = std::thread::Builder::new()
            .name("sim-solo-answer".into())
            .spawn(move || answer())
        else {
            return false;
        };
        loop {
            if answering.is_finished() {
                // The answer does not panic; if it did, the asker sees the solo word still set.
                let _ = answering.join();
                return true;
            }
            if !self.lock().alive(process, life) {
                // Killed in its answer: the thread stays where the kill stopped it.
                return true;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// The simulated process this clone acts as (see [`process`](Self::process)).
    pub fn process_number(&self) -> u32 {
        self.process
    }

    /// Kills simulated process `process` (`kill -9`): its open files, mappings and lock files
    /// are dead from now on (every call fails; a store through a mapping is dropped), and
    /// every file lock it held is released. Everything it wrote stays (the page cache), and so
    /// does what it stored into a shared queue's control file: the other processes find its
    /// lock words held by a dead holder, as after a real kill. The queue handle it had must
    /// not be used or dropped afterwards (a drop would run its close, which a killed process
    /// does not): leak it with `std::mem::forget`. The next call through a clone of
    /// `process` starts it again, as a new process.
    pub fn kill_process(&self, process: u32) {
        self.lock().kill(process);
    }

    /// Arms a kill of simulated process `process` in the middle of what it does: its
    /// `calls + 1`-th call from now (through the storage, its files, its writable mappings'
    /// stores, its lock files) kills it as [`kill_process`](Self::kill_process) does, and the
    /// thread that made the call stops right there for good: it does nothing more (no
    /// destructor, no store) and sleeps until the test's process ends. Run the work that may
    /// be killed on a thread of its own, and watch [`kills`](Self::kills); each reached kill
    /// point leaves a sleeping thread behind, so a long run spreads over several processes.
    /// Replaces an armed kill point of the same process; a crash disarms them all.
    pub fn kill_at(&self, process: u32, calls: u64) {
        self.lock()
            .kill_points
            .insert(process, KillPoint { remaining: calls });
    }

    /// Disarms the kill point of `process`, if one is armed and not reached (and the kill
    /// armed with [`kill_in_answer_at`](Self::kill_in_answer_at)).
    pub fn disarm_kill(&self, process: u32) {
        let mut state = self.lock();
        state.kill_points.remove(&process);
        state.answer_kill_points.remove(&process);
    }

    /// Arms a kill of simulated process `process` at the crash point named `point` (see
    /// `engine::failpoint`) of a solo handle's answer to an opener (see
    /// [`allow_solo`](Self::allow_solo)): most answers make no storage call, so
    /// [`kill_at`](Self::kill_at) cannot reach inside them. The answer's thread stops there
    /// for good; the process is dead. (Feature `testkit`: the crash points' hooks.)
    #[cfg(feature = "testkit")]
    pub fn kill_in_answer_at(&self, process: u32, point: &'static str) {
        self.lock().answer_kill_points.insert(process, point);
    }

    /// Called by a solo handle's answer at each crash point it reaches, through a clone of
    /// its process: true when a kill was armed there, which it carries out.
    #[cfg(feature = "testkit")]
    pub(crate) fn answer_reached(&self, point: &str) -> bool {
        let mut state = self.lock();
        if state.answer_kill_points.get(&self.process) != Some(&point) {
            return false;
        }
        state.answer_kill_points.remove(&self.process);
        state.kill(self.process);
        true
    }

    /// How many times `process` was killed so far ([`kill_process`](Self::kill_process), or
    /// its kill point reached): a thread running work that may be killed compares it with the
    /// count before.
    pub fn kills(&self, process: u32) -> u64 {
        self.lock().kill_counts.get(&process).copied().unwrap_or(0)
    }

    /// Kills the "process": every write survives (the page cache outlives the process), every
    /// handle opened before is dead, every lock released and every armed fault disarmed.
    pub fn process_crash(&self) {
        self.lock().crash(false);
    }

    /// Arms a fault; several may be armed at once.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(ArmedFault {
            fault,
            remaining_skip: fault.skip,
            fired: false,
        });
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Limits the bytes all files together may hold (`None`: no limit). Writes past the limit
    /// write what fits and fail with ENOSPC.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity_bytes = bytes;
    }

    /// The bytes all files hold now.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Whether a power loss may keep a later unsynced write of a file and lose an earlier one
    /// (default on).
    pub fn set_reordering(&self, enabled: bool) {
        self.lock().reordering = enabled;
    }

    /// Whether files offer writable mappings ([`StorageFile::map_writable`]), as the real
    /// filesystem does (default off: the engine then writes with `write_all_at` only). A store
    /// into a simulated mapping goes into a buffer of the mapping's own; the engine reports each
    /// store ([`WritableMapping::stored`]) before the call that made it returns, and the bytes
    /// become an unsynced write of the file at that point: visible to reads, kept by a process
    /// crash, lost, kept, torn or reordered by a power loss like any other write. A mapping must
    /// lie inside the file, as on Linux.
    pub fn set_writable_mappings(&self, enabled: bool) {
        self.lock().writable_mappings = enabled;
    }

    /// The network filesystem the simulated files lie on, as [`Storage::network_filesystem`]
    /// reports it for every directory (default `None`: a local one).
    pub fn set_network_filesystem(&self, name: Option<&'static str>) {
        self.lock().network_filesystem = name;
    }

    /// Counters of calls, faults and crashes so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Writes a whole file durably (entry and content), creating its directories: for building
    /// test fixtures, such as a damaged queue directory.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.lock();
        let (parent, _) = split(path)?;
        state.create_dirs(&parent);
        let inode = match state.lookup(path) {
            Ok(inode) => inode,
            Err(_) => state.create_file(path, true)?,
        };
        let file = state.inodes.entry(inode).or_default();
        file.live = bytes.to_vec();
        file.durable = bytes.to_vec();
        file.view_end = bytes.len() as u64;
        file.version += 1;
        file.unsynced.clear();
        Ok(())
    }

    /// A file's current (not necessarily durable) content, or `None` if it does not exist.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let inode = state.lookup(path).ok()?;
        state.inodes.get(&inode).map(|inode| inode.live.clone())
    }

    /// Removes a file durably, bypassing fault injection: for freeing space in tests.
    pub fn delete_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.lock();
        let (parent, name) = split(path)?;
        let dir = state.dir_mut(&parent)?;
        dir.live.remove(&name).ok_or_else(|| not_found(path))?;
        dir.unsynced.push(DirChange::Remove(name.clone()));
        let unsynced = std::mem::take(&mut dir.unsynced);
        for change in &unsynced {
            change.apply(&mut dir.durable);
        }
        Ok(())
    }

    /// Writes `bytes` over `[offset, offset + bytes.len())` of a file's durable and current
    /// content at once, without a call through the storage: damage that is not a crash (bit
    /// rot, a bad sector, an operator's mistake), or putting such damage right again. The range
    /// must lie inside the file. Returns the bytes it replaced.
    pub fn overwrite_durably(&self, path: &Path, offset: u64, bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut state = self.lock();
        let inode = state.lookup(path)?;
        let file = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| not_found(path))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let range = start..start.saturating_add(bytes.len());
        let inside = |content: &Vec<u8>| range.end <= content.len();
        if !inside(&file.live) || !inside(&file.durable) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "damage past the end of the file",
            ));
        }
        let replaced = file.live[range.clone()].to_vec();
        file.version += 1;
        file.live[range.clone()].copy_from_slice(bytes);
        file.durable[range].copy_from_slice(bytes);
        Ok(replaced)
    }

    /// The names in a directory, sorted.
    pub fn file_names(&self, dir: &Path) -> Vec<String> {
        self.lock()
            .dirs
            .get(dir)
            .map(|dir| dir.live.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn open_handle(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.enter_call();
        let op = if create {
            SimOp::CreateNew
        } else {
            SimOp::Open
        };
        if let Err(kind) = state.call(op) {
            return Err(SimState::fail(kind, "open"));
        }
        let inode = if create {
            state.create_file(path, false)?
        } else {
            state.lookup(path)?
        };
        Ok(Box::new(SimFile {
            state: self.state.clone(),
            path: path.to_path_buf(),
            inode,
            epoch: state.epoch,
            process: self.process,
            life: state.life(self.process),
        }))
    }

    /// Locks the state for a call of this clone's process: stops the calling thread for good
    /// when the call reaches the process's kill point (see [`kill_at`](Self::kill_at)).
    fn enter_call(&self) -> MutexGuard<'_, SimState> {
        let mut state = self.lock();
        if state.reaches_kill_point(self.process) {
            drop(state);
            stop_killed_thread();
        }
        state
    }
}

/// What a thread of a killed process does from its kill point on: nothing, ever, as if the
/// process had vanished at that instant (no destructor runs, no lock is released, no store is
/// made). It sleeps until the test's process ends: letting it unwind would run the
/// destructors a kill skips, and some of them wait for work the dead process will never do.
fn stop_killed_thread() -> ! {
    loop {
        std::thread::park();
    }
}

impl Storage for SimStorage {
    fn replays_runs(&self) -> bool {
        true
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::CreateDirAll) {
            return Err(SimState::fail(kind, "create_dir_all"));
        }
        state.create_dirs(dir);
        Ok(())
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::ListDir) {
            return Err(SimState::fail(kind, "list_dir"));
        }
        let mut names: Vec<String> = state.dir(dir)?.live.keys().cloned().collect();
        for path in state.dirs.keys() {
            if path.parent() == Some(dir) {
                if let Some(name) = path.file_name().and_then(|name| name.to_str()) {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open_handle(path, false)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open_handle(path, true)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::RemoveFile) {
            return Err(SimState::fail(kind, "remove_file"));
        }
        let (parent, name) = split(path)?;
        let dir = state.dir_mut(&parent)?;
        dir.live.remove(&name).ok_or_else(|| not_found(path))?;
        dir.unsynced.push(DirChange::Remove(name));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::Rename) {
            return Err(SimState::fail(kind, "rename"));
        }
        let (from_dir, from_name) = split(from)?;
        let (to_dir, to_name) = split(to)?;
        state.dir(&to_dir)?;
        let dir = state.dir_mut(&from_dir)?;
        let inode = dir.live.remove(&from_name).ok_or_else(|| not_found(from))?;
        if from_dir == to_dir {
            dir.live.insert(to_name.clone(), inode);
            dir.unsynced.push(DirChange::Rename(from_name, to_name));
        } else {
            dir.unsynced.push(DirChange::Remove(from_name));
            let target = state.dir_mut(&to_dir)?;
            target.live.insert(to_name.clone(), inode);
            target.unsynced.push(DirChange::Create(to_name, inode));
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::SyncDir) {
            return Err(SimState::fail(kind, "sync_dir"));
        }
        let dir = state.dir_mut(dir)?;
        dir.durable = dir.live.clone();
        dir.unsynced.clear();
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> Result<DirLock, LockFailure> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::LockDir) {
            return Err(LockFailure::Io(SimState::fail(kind, "lock_dir")));
        }
        // The lock file's lock, as on the real filesystem: a shared queue's handles hold it
        // shared, so the two kinds of handle exclude each other.
        let path = dir.join(crate::format::layout::LOCK_FILE_NAME);
        let id = state.new_flock_id();
        if !state.try_flock(&path, id, self.process, true) {
            return Err(LockFailure::Held { pid: None });
        }
        Ok(Box::new(SimLock {
            state: self.state.clone(),
            path,
            id,
        }))
    }

    fn shares_between_processes(&self) -> bool {
        true
    }

    fn network_filesystem(&self, _dir: &Path) -> io::Result<Option<&'static str>> {
        Ok(self.lock().network_filesystem)
    }

    fn as_sim(&self) -> Option<&SimStorage> {
        Some(self)
    }
}

/// A lock that dies with its "process": a kill or a crash releases it, and dropping a dead one
/// is a no-op.
struct SimLock {
    state: Arc<Mutex<SimState>>,
    path: PathBuf,
    id: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.unflock(&self.path, self.id);
    }
}

/// An open simulated file.
struct SimFile {
    state: Arc<Mutex<SimState>>,
    /// The path it was opened at (a segment of a shared queue is shown up to its committed
    /// tail, see `SimState::committed_view_end`).
    path: PathBuf,
    inode: u64,
    epoch: u64,
    process: u32,
    life: u64,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("inode", &self.inode)
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl SimFile {
    /// Locks the state, counts the call, checks the handle is alive and applies faults.
    fn enter(&self, op: SimOp) -> io::Result<(MutexGuard<'_, SimState>, Option<FaultKind>)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.reaches_kill_point(self.process) {
            drop(state);
            stop_killed_thread();
        }
        let fault = state.call(op).err();
        if !state.alive(self.process, self.life) {
            return Err(dead_handle());
        }
        if !state.inodes.contains_key(&self.inode) {
            return Err(eio("inode vanished"));
        }
        Ok((state, fault))
    }
}

impl StorageFile for SimFile {
    fn len(&self) -> io::Result<u64> {
        let (state, fault) = self.enter(SimOp::Len)?;
        if let Some(kind) = fault {
            return Err(SimState::fail(kind, "len"));
        }
        Ok(state
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.live.len() as u64))
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let (state, fault) = self.enter(SimOp::Read)?;
        if let Some(kind) = fault {
            return Err(SimState::fail(kind, "read"));
        }
        let live = state
            .inodes
            .get(&self.inode)
            .map_or(&[][..], |i| &i.live[..]);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let source = start
            .checked_add(buf.len())
            .and_then(|end| live.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past end"))?;
        buf.copy_from_slice(source);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let (mut state, fault) = self.enter(SimOp::Write)?;
        let len = state
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.live.len() as u64);
        // How many bytes get written, and the error that stops the rest.
        let (mut count, mut error) = match fault {
            None => (buf.len(), None),
            Some(FaultKind::ShortWrite) if buf.len() > 1 => {
                let count = 1 + state.rng.below(buf.len() as u64 - 1) as usize;
                let short = io::Error::new(io::ErrorKind::WriteZero, "short write (simulated)");
                (count, Some(short))
            }
            Some(kind) => {
                let count = state.rng.below(buf.len() as u64 + 1) as usize;
                (count, Some(SimState::fail(kind, "write")))
            }
        };
        if let Some(capacity) = state.capacity_bytes {
            let room = capacity.saturating_sub(state.used_bytes());
            let fits = (len + room).saturating_sub(offset) as usize;
            if count > fits {
                count = fits;
                error = Some(enospc());
                state.stats.faults += 1;
            }
        }
        if count > 0 {
            let change = FileChange::Write {
                offset,
                bytes: buf[..count].to_vec(),
            };
            if let Some(inode) = state.inodes.get_mut(&self.inode) {
                change.apply(&mut inode.live);
                inode.version += 1;
                inode.wrote(offset, &buf[..count]);
                inode.unsynced.push(change);
            }
        }
        match error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let (mut state, fault) = self.enter(SimOp::SetLen)?;
        if let Some(kind) = fault {
            return Err(SimState::fail(kind, "set_len"));
        }
        let current = state
            .inodes
            .get(&self.inode)
            .map_or(0, |i| i.live.len() as u64);
        if let Some(capacity) = state.capacity_bytes {
            if len > current && state.used_bytes() + (len - current) > capacity {
                state.stats.faults += 1;
                return Err(enospc());
            }
        }
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            // Growing a file the views show whole keeps it whole (recovery completes a frame's
            // padding this way); the writer prepares space with written zeros, not this.
            inode.view_end = if inode.view_end >= current {
                len
            } else {
                inode.view_end.min(len)
            };
            let change = FileChange::SetLen(len);
            change.apply(&mut inode.live);
            inode.version += 1;
            inode.unsynced.push(change);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let (mut state, fault) = self.enter(SimOp::SyncData)?;
        if let Some(kind) = fault {
            // Like Linux after a failed fsync: the dirty pages may be marked clean unwritten.
            if state.rng.chance(1, 2) {
                if let Some(inode) = state.inodes.get_mut(&self.inode) {
                    inode.unsynced.clear();
                }
            }
            return Err(SimState::fail(kind, "sync_data"));
        }
        if let Some(inode) = state.inodes.get_mut(&self.inode) {
            inode.durable = inode.live.clone();
            inode.unsynced.clear();
        }
        Ok(())
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        let (state, fault) = self.enter(SimOp::Map)?;
        if let Some(kind) = fault {
            return Err(SimState::fail(kind, "map"));
        }
        // A snapshot of the bytes that exist now: the contract allows a shorter view than asked,
        // and the engine maps again when it needs bytes written later.
        let live = state
            .inodes
            .get(&self.inode)
            .map_or(&[][..], |i| &i.live[..]);
        let view_end = state.inodes.get(&self.inode).map_or(0, |i| i.view_end);
        let view_end = match state.committed_view_end(&self.path) {
            Some(committed) => view_end.min(committed),
            None => view_end,
        };
        let end = usize::try_from(len.min(view_end))
            .unwrap_or(usize::MAX)
            .min(live.len());
        Ok(Arc::new(live[..end].to_vec()))
    }

    fn map_writable(&self, offset: u64, len: u64) -> io::Result<Option<Box<dyn WritableMapping>>> {
        if !self
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .writable_mappings
        {
            return Ok(None);
        }
        let (state, fault) = self.enter(SimOp::MapWritable)?;
        if let Some(kind) = fault {
            return Err(SimState::fail(kind, "map_writable"));
        }
        let live = state
            .inodes
            .get(&self.inode)
            .map_or(&[][..], |i| &i.live[..]);
        // Like `OsFile::map_writable`: the range must lie inside the file (a store past its end
        // would raise SIGBUS).
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(len).ok())
            .and_then(|(start, len)| live.get(start..start.checked_add(len)?))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "writable mapping past the end of the file",
                )
            })?;
        let bytes = bytes.to_vec();
        let seen_version = state.inodes.get(&self.inode).map_or(0, |i| i.version);
        Ok(Some(Box::new(SimWritableMapping {
            state: self.state.clone(),
            inode: self.inode,
            process: self.process,
            life: self.life,
            offset,
            bytes,
            seen_version,
        })))
    }
}

/// A simulated writable mapping: stores go into its own buffer and reach the file when the
/// engine reports them ([`WritableMapping::stored`]).
struct SimWritableMapping {
    state: Arc<Mutex<SimState>>,
    inode: u64,
    process: u32,
    life: u64,
    offset: u64,
    bytes: Vec<u8>,
    /// The file's version the buffer shows (see `Inode::version`).
    seen_version: u64,
}

impl WritableMapping for SimWritableMapping {
    fn bytes_mut(&mut self) -> &mut [u8] {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        // A real mapping shows what was written to the file since by other means (another
        // process, another handle, a write call): take it up (the engine stores into the
        // buffer and reports the store before it asks again, so no store of its own is lost;
        // its own stores keep `seen_version` current, so they cost no copy).
        if let Some(inode) = state.inodes.get(&self.inode) {
            if inode.version != self.seen_version {
                let start = (self.offset as usize).min(inode.live.len());
                let end = (start + self.bytes.len()).min(inode.live.len());
                self.bytes[..end - start].copy_from_slice(&inode.live[start..end]);
                self.seen_version = inode.version;
            }
        }
        drop(state);
        &mut self.bytes
    }

    fn stored(&mut self, from: usize, to: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.reaches_kill_point(self.process) {
            drop(state);
            stop_killed_thread();
        }
        if !state.alive(self.process, self.life) {
            // The process that mapped the file is dead: it stores nothing any more.
            return;
        }
        let Some(bytes) = self.bytes.get(from..to) else {
            return;
        };
        let offset = self.offset + from as u64;
        let Some(inode) = state.inodes.get_mut(&self.inode) else {
            return;
        };
        // On a real mapping a store past the end of the file (the engine cut the file under
        // its own mapping) raises SIGBUS: that is an engine bug, never a simulated outcome.
        assert!(
            offset + bytes.len() as u64 <= inode.live.len() as u64,
            "store through a writable mapping past the end of the file (SIGBUS on a real \
             mapping): {}..{} of {} bytes",
            offset,
            offset + bytes.len() as u64,
            inode.live.len()
        );
        let change = FileChange::Write {
            offset,
            bytes: bytes.to_vec(),
        };
        change.apply(&mut inode.live);
        // The buffer shows this store; it shows the rest of the file if it did before.
        if inode.version == self.seen_version {
            self.seen_version += 1;
        }
        inode.version += 1;
        inode.wrote(offset, bytes);
        inode.unsynced.push(change);
        state.stats.mapped_stores += 1;
    }
}

/// The memory of a shared queue's `control` file that every simulated process maps: words
/// stored by one are seen by the others at once, as through a shared mapping of the page cache.
#[derive(Debug)]
pub(crate) struct SharedPage {
    words: Box<[std::sync::atomic::AtomicU64]>,
}

impl SharedPage {
    /// A page holding `bytes` (zeros past them), `len` bytes long (a multiple of 8).
    fn new(bytes: &[u8], len: u64) -> SharedPage {
        let words = (0..len as usize / 8)
            .map(|index| {
                let mut word = [0u8; 8];
                for (at, byte) in word.iter_mut().enumerate() {
                    *byte = bytes.get(index * 8 + at).copied().unwrap_or(0);
                }
                std::sync::atomic::AtomicU64::new(u64::from_ne_bytes(word))
            })
            .collect();
        SharedPage { words }
    }

    /// The committed tail's segment base and offset (a sequence lock over two slots, as
    /// `Coordination::committed` reads it).
    fn committed_tail(&self) -> (u64, u64) {
        use crate::format::control::{TAIL_GEN, TAIL_SLOTS, TAIL_SLOT_LEN};
        use std::sync::atomic::Ordering;
        let word = |offset: usize| self.words[offset / 8].load(Ordering::Acquire);
        loop {
            let generation = word(TAIL_GEN);
            let slot = TAIL_SLOTS + (generation % 2) as usize * TAIL_SLOT_LEN;
            let tail = (word(slot), word(slot + 8));
            if word(TAIL_GEN) == generation {
                return tail;
            }
            std::hint::spin_loop();
        }
    }

    /// The solo word: the ticket of the handle that has the queue to itself, 0 when none.
    fn solo_holder(&self) -> u32 {
        use crate::format::control::SOLO;
        use std::sync::atomic::Ordering;
        let word = self.words[SOLO / 8].load(Ordering::Acquire).to_ne_bytes();
        let at = SOLO % 8;
        u32::from_ne_bytes([word[at], word[at + 1], word[at + 2], word[at + 3]])
    }

    /// Where the page starts: 8-byte aligned, never moved while the page lives.
    pub(crate) fn base(&self) -> std::ptr::NonNull<u8> {
        std::ptr::NonNull::from(&self.words[..]).cast()
    }
}

impl SimStorage {
    /// Opens (creating it if missing) a lock file for this clone's process.
    pub(crate) fn open_lock_file(&self, path: &Path) -> io::Result<SimLockFile> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::Open) {
            return Err(SimState::fail(kind, "open lock file"));
        }
        if state.lookup(path).is_err() {
            state.create_file(path, false)?;
        }
        let id = state.new_flock_id();
        let life = state.life(self.process);
        Ok(SimLockFile {
            storage: SimStorage {
                state: self.state.clone(),
                process: self.process,
            },
            path: path.to_path_buf(),
            id,
            life,
        })
    }

    /// Writes a new control file at `path` (`len` zeros, then `header`) and gives it a fresh
    /// shared page with those bytes: only a first opener builds, while no process maps it.
    pub(crate) fn build_control(
        &self,
        path: &Path,
        header: &[u8],
        len: u64,
    ) -> io::Result<Arc<SharedPage>> {
        let file = self.open_handle(path, false).or_else(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                self.open_handle(path, true)
            } else {
                Err(error)
            }
        })?;
        file.write_all_at(&vec![0u8; len as usize], 0)?;
        file.write_all_at(header, 0)?;
        let mut state = self.enter_call();
        let inode = state.lookup(path)?;
        let file = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| not_found(path))?;
        let page = Arc::new(SharedPage::new(&file.live, len));
        file.page = Some(page.clone());
        Ok(page)
    }

    /// The shared page of the control file at `path`: the one the processes map already, or
    /// (after a power loss) one read from the file.
    pub(crate) fn attach_control(&self, path: &Path, len: u64) -> io::Result<Arc<SharedPage>> {
        let mut state = self.enter_call();
        if let Err(kind) = state.call(SimOp::Map) {
            return Err(SimState::fail(kind, "map control file"));
        }
        let inode = state.lookup(path)?;
        let file = state
            .inodes
            .get_mut(&inode)
            .ok_or_else(|| not_found(path))?;
        Ok(file
            .page
            .get_or_insert_with(|| Arc::new(SharedPage::new(&file.live, len)))
            .clone())
    }
}

/// A lock file opened by one simulated process; its lock (in the simulated lock table) ends
/// when it is dropped or its process is killed.
pub(crate) struct SimLockFile {
    storage: SimStorage,
    path: PathBuf,
    id: u64,
    life: u64,
}

impl SimLockFile {
    /// A lock call: the process's kill point, a fault, a dead handle.
    fn enter(&self) -> io::Result<MutexGuard<'_, SimState>> {
        let mut state = self.storage.enter_call();
        if let Err(kind) = state.call(SimOp::Lock) {
            return Err(SimState::fail(kind, "lock"));
        }
        if !state.alive(self.storage.process, self.life) {
            return Err(dead_handle());
        }
        Ok(state)
    }

    /// Takes the lock (exclusive or shared), or says another open lock file holds it.
    pub(crate) fn try_lock(&self, exclusive: bool) -> Result<(), std::fs::TryLockError> {
        let mut state = self.enter().map_err(std::fs::TryLockError::Error)?;
        match state.try_flock(&self.path, self.id, self.storage.process, exclusive) {
            true => Ok(()),
            false => Err(std::fs::TryLockError::WouldBlock),
        }
    }

    /// Takes the lock exclusively, waiting for its holders (a polling wait: only `open.lock`
    /// is waited for, held for one open).
    pub(crate) fn lock(&self) -> io::Result<()> {
        loop {
            match self.try_lock(true) {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(error),
            }
        }
    }

    /// Releases the lock.
    pub(crate) fn unlock(&self) -> io::Result<()> {
        let mut state = self.enter()?;
        state.unflock(&self.path, self.id);
        Ok(())
    }

    /// The process that holds the lock exclusively, if one does.
    pub(crate) fn exclusive_holder(&self) -> Option<u32> {
        let state = self.storage.lock();
        state
            .flocks
            .get(&self.path)?
            .iter()
            .find(|flock| flock.exclusive)
            .map(|flock| flock.process)
    }
}

impl Drop for SimLockFile {
    fn drop(&mut self) {
        self.storage.lock().unflock(&self.path, self.id);
    }
}
