//! A queue shared by several processes (`Options::exclusive(false)`): who may append, who
//! consumes, and where the committed end of the log lives while they run.
//!
//! - `lock` is held shared by every handle for its life (an exclusive handle holds it
//!   exclusively, so the two kinds exclude each other).
//! - `open.lock` serialises opens: the first handle to open the queue while no other has it
//!   open runs the recovery of an exclusive open and builds `control` (see
//!   `format::control`); later ones attach to it.
//! - The tail lock word is held for one push batch. Its holder catches up with the committed
//!   tail, repairs what a dead writer left (the dirty marker), appends through the usual writer,
//!   and commits the new tail (a double-buffered slot in `control`, published by one store of its
//!   generation). Readers of other processes read up to the committed tail only.
//! - The consumer lock word is held for one *consumer turn*: while any thread of a handle is
//!   in a consumer call (pop, recv, ack, …), and parked by its owner between turns (anyone may
//!   take a parked word). The head index and the ack log are written only under it. A turn
//!   that changed them moves the consumer epoch; the next holder that sees the epoch moved
//!   reads what changed (see `engine::shared`).
//!
//! The lock words name their holder by ticket; a waiter takes a word over from a holder whose
//! `procs/<slot>` file is no longer locked. Every file lock is a `flock`: the kernel releases it
//! when its process dies, which is the only death signal relied on (the locks, the control
//! file's memory and the pid come through `storage::process`, which the simulated filesystem
//! hosts with its own model of processes). docs/ARCHITECTURE.md,
//! "Several processes", has the reasoning and the crash table.

use std::fs::TryLockError;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::control::{
    lease_owner, lease_owner_parts, slot_epoch_at, slot_pid_at, ticket, ticket_parts, ACK_LOG_ID,
    ACK_PREPARED, ACK_TAIL, ARRIVALS, COMMIT_TIMES, CONSUMED_BYTES, CONSUMED_RECORDS,
    CONSUMER_EPOCH, CONSUMER_LOCK, CONSUMER_PID, CONTROL_VERSION, DEDUP_GEN, DEDUP_TAIL, EPOCH_MAX,
    GATHER, HEAD_DURABLE, INSIDE, POISONED, PREPARED_BASE, PREPARED_END, PUBLISHED_GEN,
    PUBLISHED_PUSHED, PUBLISHED_SLOTS, REPAIRS, REVOKE, ROOM, ROOM_SLEEPERS, SLEEPERS, SLOT_COUNT,
    SOLO, SYNCED_NEXT_SEQ, SYNC_BEGAN, SYNC_LOCK, TAIL_DIRTY, TAIL_GEN, TAIL_LOCK, TAIL_PUSHED,
    TAIL_SLOTS, TAIL_SLOT_LEN,
};
use crate::format::layout::{
    slot_file_name, CONTROL_FILE_NAME, LOCK_FILE_NAME, OPEN_LOCK_FILE_NAME, PROCS_DIR_NAME,
};
use crate::storage::process::{
    create_dir_in_queue, process_id, wait_for_change, wake_all, wake_one, AttachFailure,
    ControlMapping, LockFile,
};
use crate::storage::Storage;

/// A committed end of the log: every frame below `tail` in segment `base` (and every frame of
/// the segments before it) is whole, and `next_seq` is the number after the last one.
/// `pushed_bytes`: the frame bytes of every record pushed up to it, counted from where the
/// control file was built (with `next_seq`, what a bounded queue's usage is measured from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommittedTail {
    pub(crate) base: u64,
    pub(crate) tail: u64,
    pub(crate) next_seq: u64,
    pub(crate) pushed_bytes: u64,
}

/// Whether a handle of a shared queue may be solo (see `Coordination::is_solo`): not
/// under `SyncPolicy::Always`, whose group commit goes through `control`, nor with a bound,
/// whose usage totals live there; on the simulated filesystem only where the simulation
/// allows it (`SimStorage::allow_solo`: its processes run one step at a time, and an opener
/// runs the solo handle's answer itself).
pub(crate) fn may_be_solo(options: &crate::options::Options) -> bool {
    options.sync != crate::options::SyncPolicy::Always
        && !options.is_bounded()
        && (!options.storage.replays_runs() || simulated_solo(&*options.storage))
}

/// Whether `storage` is the simulated filesystem and lets handles run solo.
#[cfg(any(test, feature = "sim"))]
fn simulated_solo(storage: &dyn Storage) -> bool {
    storage.as_sim().is_some_and(|sim| sim.allows_solo())
}

#[cfg(not(any(test, feature = "sim")))]
fn simulated_solo(_storage: &dyn Storage) -> bool {
    false
}

/// An open in progress: `open.lock` is held until it is dropped.
pub(crate) struct Opening {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    _open_lock: LockFile,
    attached: LockFile,
    /// No other handle has the queue open: this one recovers and builds `control`.
    pub(crate) first: bool,
}

/// Starts opening `dir` shared: takes `open.lock`, then `lock` (exclusively if nobody holds
/// it: then this handle is the first, else shared).
pub(crate) fn begin_open(storage: Arc<dyn Storage>, dir: &Path) -> Result<Opening> {
    let open_lock_path = dir.join(OPEN_LOCK_FILE_NAME);
    let open_lock = LockFile::open(&*storage, &open_lock_path)
        .map_err(|error| Error::io("open", &open_lock_path, error))?;
    // Held for one open's recovery at most: waiting is right.
    open_lock
        .lock()
        .map_err(|error| Error::io("lock", &open_lock_path, error))?;
    let lock_path = dir.join(LOCK_FILE_NAME);
    let attached = LockFile::open(&*storage, &lock_path)
        .map_err(|error| Error::io("open", &lock_path, error))?;
    // An exclusive lock found held may be a closed handle's, still held by a child process
    // that forked while it was open and has not yet started its new program: tried again for a
    // moment, as an exclusive open does (`MomentaryHold`).
    let hold = crate::storage::MomentaryHold::new();
    let first = loop {
        match attached.try_lock() {
            Ok(()) => break true,
            Err(TryLockError::WouldBlock) => match attached.try_lock_shared() {
                Ok(()) => break false,
                Err(TryLockError::WouldBlock)
                    if attached.may_be_held_for_a_moment() && hold.wait_again() => {}
                // An exclusive handle has the queue.
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        dir: dir.to_path_buf(),
                        pid: attached.holder_pid(),
                        shared_by: Box::default(),
                    })
                }
                Err(TryLockError::Error(error)) => {
                    return Err(Error::io("lock", &lock_path, error))
                }
            },
            Err(TryLockError::Error(error)) => return Err(Error::io("lock", &lock_path, error)),
        }
    };
    Ok(Opening {
        storage,
        dir: dir.to_path_buf(),
        _open_lock: open_lock,
        attached,
        first,
    })
}

impl Opening {
    /// The first opener, after recovery: builds `control` with the recovered tail and the
    /// records and bytes consumed in all up to it (see [`SharedUsage`]), and keeps `lock`
    /// shared from now on.
    ///
    /// With `solo`, the handle has the queue to itself until another opener asks for it
    /// (see [`Coordination::is_solo`]).
    pub(crate) fn build(
        self,
        tail: CommittedTail,
        consumed: (u64, u64),
        solo: bool,
    ) -> Result<Coordination> {
        let path = self.dir.join(CONTROL_FILE_NAME);
        let build_id = crate::engine::clock::now_micros().max(1);
        let control = ControlMapping::build(&*self.storage, &path, build_id)
            .map_err(|error| Error::io("build control file", &path, error))?;
        // Everything an attacher reads is in place before `open.lock` is released (when `new`
        // takes the opening): the committed and published tails (recovery made every record
        // durable), and `lock` held shared.
        for (slots, pushed) in [
            (TAIL_SLOTS, TAIL_PUSHED),
            (PUBLISHED_SLOTS, PUBLISHED_PUSHED),
        ] {
            control
                .word64(pushed)
                .store(tail.pushed_bytes, Ordering::Relaxed);
            control.word64(slots).store(tail.base, Ordering::Relaxed);
            control
                .word64(slots + 8)
                .store(tail.tail, Ordering::Relaxed);
            control
                .word64(slots + 16)
                .store(tail.next_seq, Ordering::Relaxed);
        }
        control
            .word64(CONSUMED_RECORDS)
            .store(consumed.0, Ordering::Relaxed);
        control
            .word64(CONSUMED_BYTES)
            .store(consumed.1, Ordering::Relaxed);
        control
            .word64(SYNCED_NEXT_SEQ)
            .store(tail.next_seq, Ordering::Relaxed);
        control.word64(TAIL_GEN).store(0, Ordering::Release);
        control.word64(PUBLISHED_GEN).store(0, Ordering::Release);
        // The pid an exclusive handle left in `lock` names nobody now: an exclusive open
        // refused beside the shared handles must not name it.
        let lock_path = self.dir.join(LOCK_FILE_NAME);
        self.attached
            .clear()
            .map_err(|error| Error::io("clear", &lock_path, error))?;
        self.attached
            .try_lock_shared()
            .map_err(|error| Error::io("lock", &lock_path, std::io::Error::other(error)))?;
        Coordination::new(self, control, solo)
    }

    /// A later opener: maps the `control` file the first one built. If a handle has the
    /// queue to itself (solo), asks it to write its state into the file first and waits; if
    /// that handle died while solo, this opener is the first after all (`Attached::First`):
    /// nothing in the file is current, and no other handle is attached.
    pub(crate) fn attach(mut self) -> Result<Attached> {
        let path = self.dir.join(CONTROL_FILE_NAME);
        let control =
            ControlMapping::attach(&*self.storage, &path).map_err(|failure| match failure {
                AttachFailure::Io(error) => Error::io("open control file", &path, error),
                // Live processes of another version of this crate: they coordinate through
                // another layout, which this build must not read or write. Once they all
                // closed, the next open builds the file anew.
                AttachFailure::OtherVersion(found) => Error::UnsupportedVersion {
                    file: path.clone(),
                    found: u16::try_from(found).unwrap_or(u16::MAX),
                    supported: CONTROL_VERSION as u16,
                },
                AttachFailure::Invalid(offset, what) => Error::corrupt(
                    &path,
                    offset,
                    format!("{what} (it holds no durable data: close every handle and reopen)"),
                ),
            })?;
        if self.wait_for_solo_to_end(&control) {
            return Coordination::new(self, control, false).map(Attached::Coordination);
        }
        // The solo handle died: its process held `lock` shared, and the kernel released it.
        let lock_path = self.dir.join(LOCK_FILE_NAME);
        let hold = crate::storage::MomentaryHold::new();
        loop {
            match self.attached.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock)
                    if self.attached.may_be_held_for_a_moment() && hold.wait_again() => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        dir: self.dir.clone(),
                        pid: None,
                        shared_by: crate::storage::queue_dir::sharing_processes(
                            &*self.storage,
                            &self.dir,
                        )
                        .into_boxed_slice(),
                    })
                }
                Err(TryLockError::Error(error)) => {
                    return Err(Error::io("lock", &lock_path, error))
                }
            }
        }
        self.first = true;
        Ok(Attached::First(self))
    }

    /// Under `open.lock`, before anything in `control` is read: if a handle is solo, bumps the
    /// revoke word and waits until that handle cleared the solo word (true), or died (false).
    fn wait_for_solo_to_end(&self, control: &ControlMapping) -> bool {
        let solo = control.word32(SOLO);
        let holder = solo.load(Ordering::Acquire);
        if holder == 0 {
            return true;
        }
        let revoke = control.word32(REVOKE);
        revoke.fetch_add(1, Ordering::SeqCst);
        wake_all(revoke);
        let (slot, epoch) = ticket_parts(holder);
        let path = self.dir.join(PROCS_DIR_NAME).join(slot_file_name(slot));
        let probe = LockFile::open(&*self.storage, &path).ok();
        // The simulation starts no solo thread: the opener runs the answer itself (a holder
        // that is dead registered none, or one of a life that ended).
        #[cfg(any(test, feature = "sim"))]
        let mut ask_simulated = self.storage.as_sim();
        loop {
            #[cfg(any(test, feature = "sim"))]
            if let Some(sim) = ask_simulated.take() {
                if !sim.ask_solo(&self.dir, holder) && solo.load(Ordering::Acquire) == holder {
                    // Nobody will answer. Not dead if its slot file is held: then the
                    // opener is refused below, as `Locked`, rather than waiting for good.
                    return false;
                }
            }
            if solo.load(Ordering::Acquire) == 0 {
                return true;
            }
            let current = slot < SLOT_COUNT
                && control.word32(slot_epoch_at(slot)).load(Ordering::Acquire) == epoch;
            // A slot file that cannot be opened: assume its holder lives (waiting is safe).
            let lives = current && probe.as_ref().is_none_or(LockFile::is_held_by_another);
            if !lives && solo.load(Ordering::Acquire) != 0 {
                return false;
            }
            wait_for_change(solo, holder, HOLDER_CHECK);
        }
    }
}

/// What [`Opening::attach`] found.
pub(crate) enum Attached {
    /// Attached to the handles that have the queue open.
    Coordination(Coordination),
    /// The handle that had the queue to itself died: this opener recovers the queue and builds
    /// `control` (`first` is set).
    First(Opening),
}

/// This handle's part in a shared queue.
pub(crate) struct Coordination {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    control: Arc<ControlMapping>,
    /// `lock`, held shared for the handle's life.
    _attached: LockFile,
    /// `procs/<slot>`, held for the handle's life: while it is, the handle lives. Released
    /// first when the handle drops, so that the handles it wakes then find it gone.
    slot_lock: Option<LockFile>,
    /// This handle's ticket (see `format::control`), what the lock words name.
    ticket: u32,
    /// This process's id (written as advice into the control file).
    pid: u32,
    /// The slot files of other handles, opened to see whether their holder lives.
    probes: std::sync::Mutex<std::collections::HashMap<u32, LockFile>>,
    /// The tail generation this handle last caught up with.
    seen_gen: AtomicU64,
    /// The durable tail generation this handle last published to its readers.
    seen_published_gen: AtomicU64,
    /// The process of the dead holder this handle took the tail lock from with the dirty mark
    /// set, and the repairs count then (`repairs << 32 | pid`; 0: none), until the repair that
    /// follows reports it.
    tail_taken_from: AtomicU64,
    /// Whether this handle has the queue to itself (see [`is_solo`](Coordination::is_solo)).
    solo: AtomicBool,
    /// Whether its pushes still run the solo way (see
    /// [`is_solo_writer`](Coordination::is_solo_writer)).
    solo_writer: AtomicBool,
    /// Consumer calls of this handle running the solo way (see
    /// [`enter_solo_call`](Coordination::enter_solo_call)).
    solo_calls: AtomicUsize,
    /// The revoke word when this handle last became solo (see
    /// [`revoke_seen`](Coordination::revoke_seen)).
    revoke_seen: AtomicU32,
}

/// `open.lock`, held by a handle that found itself alone (see
/// [`Coordination::lock_open_if_alone`]): no handle attaches until it drops.
pub(crate) struct AloneGuard {
    open_lock: LockFile,
}

impl Drop for AloneGuard {
    fn drop(&mut self) {
        let _ = self.open_lock.unlock();
    }
}

impl Drop for Coordination {
    fn drop(&mut self) {
        // The other handles' solo threads look whether they are alone now (see
        // `Shared::try_enter_solo`): after the slot is released, which is what they look at.
        drop(self.slot_lock.take());
        wake_all(self.word32(REVOKE));
    }
}

/// Set in a lock word when a handle may be waiting for it.
const WAITERS: u32 = 1;

/// Set in the consumer lock word while its owner is between turns.
const PARKED: u32 = 2;

/// How [`Coordination::lock_consumer`] got the consumer lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConsumerLock {
    /// This handle's own parked word: no other handle had a turn since this one's last.
    Resumed,
    /// Free, or parked by another handle: the consumer epoch says whether the files changed.
    Taken,
    /// From a holder that died in its turn (of the process it names): the files are read in
    /// full.
    TakenFromDead {
        /// The process of the dead holder, as the control file names it (advice).
        pid: u32,
    },
}

/// How long a waiter looks at the arrivals word before it sleeps on it.
const SPIN_BEFORE_SLEEP: std::time::Duration = std::time::Duration::from_micros(20);

/// How many times a waiter for the tail lock looks at the word before it sleeps. A push holds
/// the lock for a few hundred nanoseconds: a waiter that slept at once paid a futex wait, and
/// its holder a wake, for a lock about to be free, and a sleeper often found it taken again
/// when it woke. 40 looks (a microsecond or two) measured best of 16, 40, 100, 250 and 1,000
/// with four producer processes on two cores (docs/PERFORMANCE.md).
const TAIL_LOOKS_BEFORE_SLEEP: u32 = 40;

/// How long a waiter for the tail lock sleeps before it looks whether the holder died.
const HOLDER_CHECK: std::time::Duration = std::time::Duration::from_millis(2);

impl std::fmt::Debug for Coordination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordination")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Where a consumer turn left the head index and the ack log: what the next holder needs to
/// read only what changed (see `Consumer::catch_up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct ConsumerFiles {
    /// The head slot left durable (`None`: not known).
    pub(crate) head_durable_slot: Option<usize>,
    /// The ack log's `(log_id, tail, prepared_end)` (see `AckLog::position`).
    pub(crate) ack_log: (u64, u64, u64),
}

/// A lock word (the tail lock), held: released when dropped.
pub(crate) struct WordGuard<'a> {
    word: &'a AtomicU32,
}

/// A producer counted in `inside` until dropped.
pub(crate) struct Inside<'a> {
    word: &'a AtomicU32,
}

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        // Never below zero: a leader may have cleared the count of a gone handle just as a
        // new one took its slot (a hint, and a wrapped count would hold every leader back).
        let _ = self
            .word
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| {
                count.checked_sub(1)
            });
    }
}

/// The sync lock, held: released when dropped.
pub(crate) struct SyncGuard<'a> {
    word: &'a AtomicU32,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        self.word.store(0, Ordering::Release);
    }
}

impl Drop for WordGuard<'_> {
    fn drop(&mut self) {
        if self.word.swap(0, Ordering::Release) & WAITERS != 0 {
            wake_one(self.word);
        }
    }
}

impl Coordination {
    /// Takes a free slot (under `open.lock`, so no other opener takes it meanwhile).
    fn new(opening: Opening, control: ControlMapping, solo: bool) -> Result<Self> {
        let procs = opening.dir.join(PROCS_DIR_NAME);
        create_dir_in_queue(&*opening.storage, &procs)
            .map_err(|error| Error::io("create directory", &procs, error))?;
        let mut taken = None;
        for slot in 0..SLOT_COUNT {
            let path = procs.join(slot_file_name(slot));
            let file = LockFile::open(&*opening.storage, &path)
                .map_err(|error| Error::io("open", &path, error))?;
            match file.try_lock() {
                Ok(()) => {
                    taken = Some((slot, file));
                    break;
                }
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(error)) => return Err(Error::io("lock", &path, error)),
            }
        }
        let Some((slot, slot_lock)) = taken else {
            return Err(Error::Locked {
                dir: procs,
                pid: None,
                // Every slot is taken: by these processes.
                shared_by: crate::storage::queue_dir::sharing_processes(
                    &*opening.storage,
                    &opening.dir,
                )
                .into_boxed_slice(),
            });
        };
        let control = Arc::new(control);
        let epoch_word = control.word32(slot_epoch_at(slot));
        let epoch = match epoch_word.load(Ordering::Acquire) {
            EPOCH_MAX => 1,
            epoch => epoch + 1,
        };
        let pid = process_id(&*opening.storage);
        control
            .word32(slot_pid_at(slot))
            .store(pid, Ordering::Relaxed);
        // A count a dead handle of this slot left (see `producers_inside`).
        control
            .word32(INSIDE + slot as usize * 4)
            .store(0, Ordering::SeqCst);
        epoch_word.store(epoch, Ordering::Release);
        let ticket = ticket(slot, epoch);
        // Before `open.lock` is released (the opening is dropped at the end of this call):
        // a later opener finds it set.
        control
            .word32(SOLO)
            .store(if solo { ticket } else { 0 }, Ordering::Release);
        let revoke_seen = control.word32(REVOKE).load(Ordering::Acquire);
        Ok(Coordination {
            storage: opening.storage,
            dir: opening.dir,
            control,
            _attached: opening.attached,
            slot_lock: Some(slot_lock),
            ticket,
            pid,
            probes: std::sync::Mutex::new(std::collections::HashMap::new()),
            seen_gen: AtomicU64::new(u64::MAX),
            seen_published_gen: AtomicU64::new(u64::MAX),
            tail_taken_from: AtomicU64::new(0),
            solo: AtomicBool::new(solo),
            solo_writer: AtomicBool::new(solo),
            solo_calls: AtomicUsize::new(0),
            revoke_seen: AtomicU32::new(revoke_seen),
        })
    }

    /// This handle's ticket (see `format::control`): what the solo word names while it is solo.
    #[cfg(any(test, feature = "sim"))]
    pub(crate) fn ticket(&self) -> u32 {
        self.ticket
    }

    /// Whether this handle has the queue to itself: it built `control`, and no other handle
    /// attached since. Its pushes and consumer calls then run as an exclusive queue's do (the
    /// files are written as a shared queue writes them; the words of `control` are left as
    /// they were) until the handle leaves solo (`Shared::leave_solo`) and writes its state
    /// there. See [`is_solo_writer`](Self::is_solo_writer) for pushes and
    /// [`enter_solo_call`](Self::enter_solo_call) for consumer calls.
    #[inline]
    pub(crate) fn is_solo(&self) -> bool {
        self.solo.load(Ordering::Relaxed)
    }

    /// Whether this handle's pushes run the solo way: read under the writer lock, under which
    /// leaving solo commits the writer's tail and clears it at once (`Log::commit_solo_tail`,
    /// with the writer's `publishes_on_write`). Outside the lock, a hint.
    #[inline]
    pub(crate) fn is_solo_writer(&self) -> bool {
        self.solo_writer.load(Ordering::Relaxed)
    }

    /// Leaving solo, under the writer lock, as the writer's tail is committed: pushes take the
    /// tail lock from now on.
    pub(crate) fn stop_solo_writer(&self) {
        self.solo_writer.store(false, Ordering::Relaxed);
    }

    /// Starts a consumer call of a solo handle: counted while it runs (until
    /// [`leave_solo_call`](Self::leave_solo_call)), so that leaving solo waits for it. False
    /// once the handle is not solo (nothing counted): the call takes a consumer turn.
    #[inline]
    pub(crate) fn enter_solo_call(&self) -> bool {
        if !self.solo.load(Ordering::Relaxed) {
            return false;
        }
        // Against `stop_solo`: either this call sees the flag cleared, or that one sees the
        // count raised (both SeqCst).
        self.solo_calls.fetch_add(1, Ordering::SeqCst);
        if self.solo.load(Ordering::SeqCst) {
            return true;
        }
        self.leave_solo_call();
        false
    }

    /// Ends a consumer call that [`enter_solo_call`](Self::enter_solo_call) counted.
    #[inline]
    pub(crate) fn leave_solo_call(&self) {
        self.solo_calls.fetch_sub(1, Ordering::Release);
    }

    /// Leaving solo, once the writer's tail is committed: no consumer call starts the solo way
    /// from now on. Waits for those that did.
    pub(crate) fn stop_solo(&self) {
        self.solo.store(false, Ordering::SeqCst);
        while self.solo_calls.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }

    /// The last step of leaving solo, once this handle's state is in `control`: clears the
    /// solo word and wakes the opener waiting for it.
    pub(crate) fn end_solo(&self) {
        let solo = self.word32(SOLO);
        if solo.load(Ordering::Relaxed) == self.ticket {
            solo.store(0, Ordering::Release);
            wake_all(solo);
        }
    }

    /// How many times openers asked a solo handle to leave solo (the revoke word).
    pub(crate) fn revoke_requests(&self) -> u32 {
        self.word32(REVOKE).load(Ordering::Acquire)
    }

    /// The revoke word as it was when this handle became solo (it built `control`, or found
    /// itself alone), under `open.lock`: every opener since bumped it past this (so that the
    /// solo thread, which looks later, misses none of them).
    pub(crate) fn revoke_seen(&self) -> u32 {
        self.revoke_seen.load(Ordering::Acquire)
    }

    /// Takes `open.lock` if no opener holds it, and keeps it if every other handle that took
    /// a slot since `control` was built is gone (its slot file is not locked: it closed, or
    /// its process died). While the guard lives no handle attaches: this one is alone.
    /// `None`: another handle lives or is opening, or a look failed.
    ///
    /// The files it opens are closed before it returns (`open.lock` when the guard drops): a
    /// look every second must not keep a file open per slot.
    pub(crate) fn lock_open_if_alone(&self) -> Option<AloneGuard> {
        let path = self.dir.join(OPEN_LOCK_FILE_NAME);
        let open_lock = LockFile::open(&*self.storage, &path).ok()?;
        open_lock.try_lock().ok()?;
        let guard = AloneGuard { open_lock };
        let mine = ticket_parts(self.ticket).0;
        let procs = self.dir.join(PROCS_DIR_NAME);
        for slot in (0..SLOT_COUNT).filter(|&slot| slot != mine) {
            // Epoch 0: never taken since `control` was built.
            let epoch = self.word32(slot_epoch_at(slot)).load(Ordering::Acquire);
            if epoch == 0 || !self.is_current(ticket(slot, epoch)) {
                continue;
            }
            let probe = LockFile::open(&*self.storage, &procs.join(slot_file_name(slot))).ok()?;
            if probe.is_held_by_another() {
                return None;
            }
        }
        Some(guard)
    }

    /// A handle that found itself alone (the guard held) becomes solo: its consumer calls
    /// run the solo way from now on, an opener finds the solo word set, and the revoke word
    /// seen from now on is the current one. Its pushes follow under the writer lock
    /// ([`start_solo_writer`](Self::start_solo_writer)).
    pub(crate) fn start_solo(&self, _alone: &AloneGuard) {
        self.revoke_seen.store(
            self.word32(REVOKE).load(Ordering::Acquire),
            Ordering::Release,
        );
        self.solo.store(true, Ordering::SeqCst);
        self.word32(SOLO).store(self.ticket, Ordering::Release);
    }

    /// Becoming solo, under the writer lock, once the writer is at the committed tail: pushes
    /// take the writer lock only from now on.
    pub(crate) fn start_solo_writer(&self) {
        self.solo_writer.store(true, Ordering::Relaxed);
    }

    /// Wakes the threads asleep on the revoke word (this handle's, when it closes).
    pub(crate) fn wake_revoke_waiters(&self) {
        wake_all(self.word32(REVOKE));
    }

    /// Wakes the threads asleep on the arrivals word (this handle's arrivals bridge, when it
    /// closes; other handles' sleepers look and sleep again).
    pub(crate) fn wake_arrival_waiters(&self) {
        wake_all(self.word32(ARRIVALS));
    }

    /// Whether the handle a ticket names is gone: its slot was taken again since, or its slot
    /// file is not locked (the kernel released it when the holder died).
    fn is_gone(&self, holder: u32) -> bool {
        if !self.is_current(holder) {
            return true;
        }
        let slot = ticket_parts(holder).0;
        let mut probes = crate::engine::sync::lock(&self.probes);
        let path = self.dir.join(PROCS_DIR_NAME).join(slot_file_name(slot));
        let probe = match probes.entry(slot) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                match LockFile::open(&*self.storage, &path) {
                    Ok(file) => entry.insert(file),
                    // Cannot look: assume it lives (waiting longer is safe, stealing is not).
                    Err(_) => return false,
                }
            }
        };
        !probe.is_held_by_another()
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        self.control.word64(offset)
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        self.control.word32(offset)
    }

    /// Takes the tail lock for one batch (see [`lock_word`](Self::lock_word)).
    pub(crate) fn lock_tail(&self) -> WordGuard<'_> {
        self.lock_word(TAIL_LOCK)
    }

    /// Takes the consumer lock for a turn. Its owner leaves it *parked* between turns
    /// ([`park_consumer`](Self::park_consumer)) and takes it back with one compare-and-swap if
    /// nobody took it meanwhile (then no other handle had a turn since). Another handle takes a
    /// parked word at once, a free one too; a held one it waits for (futex), and takes over
    /// when its holder is gone.
    pub(crate) fn lock_consumer(&self) -> ConsumerLock {
        let word = self.word32(CONSUMER_LOCK);
        let mine = self.ticket << 2;
        if word
            .compare_exchange(mine | PARKED, mine, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return ConsumerLock::Resumed;
        }
        let mut waited = false;
        loop {
            let current = word.load(Ordering::Relaxed);
            if current == 0 || current & PARKED != 0 {
                // Free, or parked by its owner between turns. After a wait others may wait
                // too: keep the bit, so that the release wakes one.
                let taken = mine | (current & WAITERS) | if waited { WAITERS } else { 0 };
                if word
                    .compare_exchange(current, taken, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    self.word32(CONSUMER_PID).store(self.pid, Ordering::Relaxed);
                    return ConsumerLock::Taken;
                }
                continue;
            }
            waited = true;
            if self.wait_or_take_over(word, current, 2, mine) {
                let pid = self.word32(CONSUMER_PID).swap(self.pid, Ordering::Relaxed);
                return ConsumerLock::TakenFromDead { pid };
            }
        }
    }

    /// Ends a turn: parks the consumer lock, or releases it (and wakes a waiter) when another
    /// handle waits for it.
    pub(crate) fn park_consumer(&self) {
        let word = self.word32(CONSUMER_LOCK);
        let mine = self.ticket << 2;
        if word
            .compare_exchange(mine, mine | PARKED, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            self.unlock_consumer();
        }
    }

    /// Releases the consumer lock (not parked: this handle's next turn reads the epoch).
    pub(crate) fn unlock_consumer(&self) {
        let word = self.word32(CONSUMER_LOCK);
        if word.swap(0, Ordering::Release) & WAITERS != 0 {
            wake_one(word);
        }
    }

    /// The consumer epoch (see `format::control::CONSUMER_EPOCH`); read and written under the
    /// consumer lock.
    pub(crate) fn consumer_epoch(&self) -> u64 {
        self.word64(CONSUMER_EPOCH).load(Ordering::Acquire)
    }

    /// Sets the consumer epoch (under the consumer lock).
    pub(crate) fn set_consumer_epoch(&self, epoch: u64) {
        self.word64(CONSUMER_EPOCH).store(epoch, Ordering::Release);
    }

    /// Where the last consumer turn left the consumer files (read under the consumer lock).
    pub(crate) fn consumer_files(&self) -> ConsumerFiles {
        let head_durable = self.word32(HEAD_DURABLE).load(Ordering::Acquire);
        ConsumerFiles {
            head_durable_slot: head_durable.checked_sub(1).map(|slot| slot as usize),
            ack_log: (
                self.word64(ACK_LOG_ID).load(Ordering::Acquire),
                self.word64(ACK_TAIL).load(Ordering::Acquire),
                self.word64(ACK_PREPARED).load(Ordering::Acquire),
            ),
        }
    }

    /// Records where this turn leaves the consumer files (under the consumer lock).
    pub(crate) fn set_consumer_files(&self, files: ConsumerFiles) {
        let (log_id, tail, prepared) = files.ack_log;
        self.word64(ACK_LOG_ID).store(log_id, Ordering::Release);
        self.word64(ACK_TAIL).store(tail, Ordering::Release);
        self.word64(ACK_PREPARED).store(prepared, Ordering::Release);
        let head_durable = files.head_durable_slot.map_or(0, |slot| slot as u32 + 1);
        self.word32(HEAD_DURABLE)
            .store(head_durable, Ordering::Release);
    }

    /// Takes the lock word at `offset`: a compare-and-swap when it is free; else a few looks at
    /// it (`TAIL_LOOKS_BEFORE_SLEEP`), then a futex wait,
    /// looking every few milliseconds whether its holder died (then the lock is taken over;
    /// what the dead holder left is for the new holder to repair: the tail by `repair_tail`,
    /// the consumer files by a full read of them).
    fn lock_word(&self, offset: usize) -> WordGuard<'_> {
        let word = self.word32(offset);
        let mine = self.ticket << 1;
        if word
            .compare_exchange(0, mine, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return WordGuard { word };
        }
        self.lock_word_held(word, mine)
    }

    /// [`lock_word`](Self::lock_word) once the word was found taken: out of line, so that the
    /// free word's path stays as short as it was.
    #[cold]
    #[inline(never)]
    fn lock_word_held<'a>(&self, word: &'a AtomicU32, mine: u32) -> WordGuard<'a> {
        let mut looks = 0;
        loop {
            let current = word.load(Ordering::Relaxed);
            if current == 0 {
                // Others may wait too: keep the bit, so that the release wakes one.
                if word
                    .compare_exchange(0, mine | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return WordGuard { word };
                }
                continue;
            }
            if looks < TAIL_LOOKS_BEFORE_SLEEP {
                looks += 1;
                std::hint::spin_loop();
                continue;
            }
            looks = 0;
            if self.wait_or_take_over(word, current, 1, mine) {
                // For the repair of the dead holder's dirty mark, if no other handle repairs
                // it first.
                let dead = (current & !WAITERS) >> 1;
                if let Some(pid) = self.pid_of(dead).filter(|_| self.is_dirty()) {
                    let repairs = u64::from(self.repairs());
                    self.tail_taken_from
                        .store(repairs << 32 | u64::from(pid), Ordering::Relaxed);
                }
                return WordGuard { word };
            }
        }
    }

    /// Whether the slot a ticket names is still at the ticket's epoch (not taken again since).
    fn is_current(&self, ticket: u32) -> bool {
        let (slot, epoch) = ticket_parts(ticket);
        slot < SLOT_COUNT && self.word32(slot_epoch_at(slot)).load(Ordering::Acquire) == epoch
    }

    /// The process of the handle a ticket names, if its slot was not taken again since.
    fn pid_of(&self, ticket: u32) -> Option<u32> {
        self.is_current(ticket).then(|| {
            self.word32(slot_pid_at(ticket_parts(ticket).0))
                .load(Ordering::Relaxed)
        })
    }

    /// For a repair of the dirty mark, before it counts itself (under the tail lock): the
    /// process whose handle died with the mark set holding the tail lock that this handle took
    /// over, if no repair happened since (`None`: the writer failed, or another handle repaired
    /// that death).
    pub(crate) fn take_tail_death(&self) -> Option<u32> {
        let taken = self.tail_taken_from.swap(0, Ordering::Relaxed);
        let (repairs, pid) = ((taken >> 32) as u32, taken as u32);
        (pid != 0 && repairs == self.repairs()).then_some(pid)
    }

    /// One wait of a lock word's waiter, `current` the held value it saw: sets the waiters bit,
    /// sleeps on the word for a while, and takes the word over (as `mine`, with the waiters bit)
    /// if it still holds that value and its holder (the ticket `current >> holder_shift`) is
    /// gone. True when it took the word over.
    fn wait_or_take_over(
        &self,
        word: &AtomicU32,
        current: u32,
        holder_shift: u32,
        mine: u32,
    ) -> bool {
        if current & WAITERS == 0
            && word
                .compare_exchange(
                    current,
                    current | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        let held = current | WAITERS;
        wait_for_change(word, held, HOLDER_CHECK);
        word.load(Ordering::Relaxed) == held
            && self.is_gone(held >> holder_shift)
            && word
                .compare_exchange(held, mine | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    fn store_slot(&self, slots: usize, generation: u64, tail: CommittedTail) {
        let slot = slots + (generation % 2) as usize * TAIL_SLOT_LEN;
        self.word64(slot).store(tail.base, Ordering::Relaxed);
        self.word64(slot + 8).store(tail.tail, Ordering::Relaxed);
        self.word64(slot + 16)
            .store(tail.next_seq, Ordering::Relaxed);
        self.word64(pushed_slot(slots, generation))
            .store(tail.pushed_bytes, Ordering::Relaxed);
    }

    /// A tail (committed or durable) and its generation. Lock-free: retried while a commit
    /// overwrote the slot being read (a sequence lock over two slots).
    fn read_tail(&self, generation_at: usize, slots: usize) -> (u64, CommittedTail) {
        read_tail_in(&self.control, generation_at, slots)
    }

    /// The committed tail and its generation.
    pub(crate) fn committed(&self) -> (u64, CommittedTail) {
        self.read_tail(TAIL_GEN, TAIL_SLOTS)
    }

    /// The committed tail if it moved since this handle last looked.
    pub(crate) fn committed_if_moved(&self) -> Option<CommittedTail> {
        self.tail_if_moved(TAIL_GEN, TAIL_SLOTS, &self.seen_gen)
    }

    /// The published tail: what readers read up to; under `SyncPolicy::Always`, every record
    /// below it is synced.
    pub(crate) fn published(&self) -> CommittedTail {
        self.read_tail(PUBLISHED_GEN, PUBLISHED_SLOTS).1
    }

    /// The published tail if it moved since this handle last looked.
    pub(crate) fn published_if_moved(&self) -> Option<CommittedTail> {
        self.tail_if_moved(PUBLISHED_GEN, PUBLISHED_SLOTS, &self.seen_published_gen)
    }

    /// The tail at `slots` if its generation moved past `seen` (one load when it did not).
    fn tail_if_moved(
        &self,
        generation_at: usize,
        slots: usize,
        seen: &AtomicU64,
    ) -> Option<CommittedTail> {
        let generation = self.word64(generation_at).load(Ordering::Acquire);
        if generation == seen.load(Ordering::Relaxed) {
            return None;
        }
        let (generation, tail) = self.read_tail(generation_at, slots);
        seen.store(generation, Ordering::Relaxed);
        Some(tail)
    }

    /// Publishes a tail to the readers of every process, if it is further on: under the tail
    /// lock only (by a push under `Never` or `Interval`, by the sync leader under `Always`).
    pub(crate) fn publish(&self, tail: CommittedTail) {
        if self.store_published(tail) {
            self.announce();
        }
    }

    /// [`publish`](Self::publish) of the tail a push just committed, under the tail lock,
    /// under `Never` or `Interval`: published tails are committed ones, and this one holds
    /// more records than any committed before, so it is further on without reading the
    /// published one back.
    #[inline]
    pub(crate) fn publish_pushed(&self, tail: CommittedTail) {
        let generation = self.word64(PUBLISHED_GEN).load(Ordering::Acquire) + 1;
        self.store_slot(PUBLISHED_SLOTS, generation, tail);
        self.word64(PUBLISHED_GEN)
            .store(generation, Ordering::Release);
        self.announce();
    }

    /// Publishes a tail a sync covered (by the sync leader under `Always`, under the tail
    /// lock): the published tail, then the synced sequence number, then the wake-up, so that
    /// a producer woken by it finds both.
    pub(crate) fn publish_synced(&self, tail: CommittedTail) {
        self.store_published(tail);
        self.word64(SYNCED_NEXT_SEQ)
            .fetch_max(tail.next_seq, Ordering::AcqRel);
        self.announce();
    }

    /// Every record below this sequence number is synced (see `format::control::
    /// SYNCED_NEXT_SEQ`).
    pub(crate) fn synced_next_seq(&self) -> u64 {
        self.word64(SYNCED_NEXT_SEQ).load(Ordering::Acquire)
    }

    /// Stores `tail` as the published one if it is further on; true if it was.
    fn store_published(&self, tail: CommittedTail) -> bool {
        let (generation, durable) = self.read_tail(PUBLISHED_GEN, PUBLISHED_SLOTS);
        if tail.next_seq <= durable.next_seq && tail.base <= durable.base {
            return false;
        }
        self.store_slot(PUBLISHED_SLOTS, generation + 1, tail);
        self.word64(PUBLISHED_GEN)
            .store(generation + 1, Ordering::Release);
        true
    }

    /// Takes the sync lock if it is free or its holder is gone.
    pub(crate) fn try_lock_sync(&self) -> Option<SyncGuard<'_>> {
        let word = self.word32(SYNC_LOCK);
        let current = word.load(Ordering::Relaxed);
        if (current == 0 || self.is_gone(current))
            && word
                .compare_exchange(current, self.ticket, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            return Some(SyncGuard { word });
        }
        None
    }

    /// Marks the queue as failed for every handle: a sync failed, and what is on the disk is
    /// unknown until every handle closed and the next open recovered it.
    pub(crate) fn poison(&self) {
        self.word32(POISONED).store(1, Ordering::Release);
        self.announce();
    }

    /// Whether a handle's sync failed (see [`poison`](Self::poison)).
    pub(crate) fn is_poisoned(&self) -> bool {
        self.word32(POISONED).load(Ordering::Acquire) != 0
    }

    /// Whether a writer died (or failed) while changing the log past the committed tail.
    pub(crate) fn is_dirty(&self) -> bool {
        self.word64(TAIL_DIRTY).load(Ordering::Acquire) != 0
    }

    /// Marks the log as being changed past the committed tail; under `tail.lock` only.
    pub(crate) fn set_dirty(&self) {
        self.word64(TAIL_DIRTY).store(1, Ordering::Release);
    }

    /// Clears the mark after a repair; under the tail lock only.
    pub(crate) fn clear_dirty(&self) {
        self.word64(TAIL_DIRTY).store(0, Ordering::Release);
    }

    /// Where the zeros written ahead of the tail of segment `base` end, if a writer recorded
    /// it (under the tail lock only).
    pub(crate) fn prepared_end(&self, base: u64) -> Option<u64> {
        (self.word64(PREPARED_BASE).load(Ordering::Relaxed) == base)
            .then(|| self.word64(PREPARED_END).load(Ordering::Relaxed))
    }

    /// Records where the zeros written ahead of the tail of segment `base` end (under the
    /// tail lock only).
    pub(crate) fn set_prepared_end(&self, base: u64, end: u64) {
        self.word64(PREPARED_BASE).store(base, Ordering::Relaxed);
        self.word64(PREPARED_END).store(end, Ordering::Relaxed);
    }

    /// Announces a producer on its way to a commit under `Always`, until the guard is dropped:
    /// a sync leader waits a little for it, so that one sync covers both. Counted in this
    /// handle's slot, so that a process killed meanwhile leaves a count the leader can tell
    /// from a live one (see [`producers_inside`](Self::producers_inside)).
    pub(crate) fn enter_push(&self) -> Inside<'_> {
        let word = self.word32(INSIDE + self.slot() * 4);
        word.fetch_add(1, Ordering::SeqCst);
        Inside { word }
    }

    /// Whether a producer of a live handle is between its start and its commit (see
    /// [`enter_push`](Self::enter_push)). A count left by a handle that is gone is cleared:
    /// with one global count, a producer killed inside a push made every later leader wait its
    /// whole gathering time, at every sync.
    pub(crate) fn producers_inside(&self) -> bool {
        let mine = self.slot();
        (0..SLOT_COUNT as usize).any(|slot| {
            let word = self.word32(INSIDE + slot * 4);
            let count = word.load(Ordering::SeqCst);
            if count == 0 || slot == mine {
                return count != 0;
            }
            let epoch = self
                .word32(slot_epoch_at(slot as u32))
                .load(Ordering::Acquire);
            if !self.is_gone(ticket(slot as u32, epoch)) {
                return true;
            }
            // Gone: its count is nobody's (the next handle in the slot starts from zero too).
            let _ = word.compare_exchange(count, 0, Ordering::SeqCst, Ordering::Relaxed);
            false
        })
    }

    /// Records that this handle committed a push under `Always` at `now_us` (a group-commit
    /// hint, see [`producers_to_gather`](Self::producers_to_gather)).
    pub(crate) fn mark_committed(&self, now_us: u64) {
        self.word64(COMMIT_TIMES + self.slot() * 8)
            .store(now_us, Ordering::Relaxed);
        let gather = self.word32(GATHER);
        // SeqCst pairs with `gather`: either the leader's bit is seen here, or the leader
        // sees this commit before it sleeps.
        if gather.load(Ordering::SeqCst) & 1 != 0 {
            gather.fetch_add(2, Ordering::SeqCst);
            wake_all(gather);
        }
    }

    /// The sync leader's wait for producers (see
    /// [`producers_to_gather`](Self::producers_to_gather)): sleeps until `done` holds, or
    /// `until`. Producers that commit meanwhile wake it: no CPU is spent looking, which on a
    /// small machine the producers it waits for need.
    pub(crate) fn gather(&self, until: std::time::Instant, mut done: impl FnMut() -> bool) {
        let word = self.word32(GATHER);
        let mut seen = word.fetch_or(1, Ordering::SeqCst) | 1;
        loop {
            if done() {
                break;
            }
            let now = std::time::Instant::now();
            if now >= until {
                break;
            }
            wait_for_change(word, seen, until - now);
            seen = word.load(Ordering::SeqCst) | 1;
        }
        word.fetch_and(!1, Ordering::SeqCst);
    }

    /// For a sync leader about to sync at `now_us`: how many handles are worth waiting for,
    /// those that committed a push within `window_us` but none since the last sync began.
    /// In a steady stream those are on their way back with their next push: the last sync
    /// released them, and a wake-up and a push take tens of microseconds. Without this wait a
    /// leader started as soon as it could, and each sync covered about two pushes however
    /// many producers there were.
    pub(crate) fn producers_to_gather(&self, now_us: u64, window_us: u64) -> usize {
        let began = self.word64(SYNC_BEGAN).load(Ordering::Acquire);
        let recent = now_us.saturating_sub(window_us);
        (0..SLOT_COUNT as usize)
            .map(|slot| self.word64(COMMIT_TIMES + slot * 8).load(Ordering::Relaxed))
            .filter(|&at| at >= recent && at < began)
            .count()
    }

    /// Under the sync lock, as a sync begins at `now_us` (see
    /// [`producers_to_gather`](Self::producers_to_gather)).
    pub(crate) fn begin_sync(&self, now_us: u64) {
        self.word64(SYNC_BEGAN).store(now_us, Ordering::Release);
    }

    /// This handle as the owner of the leases it writes to the ack log (see
    /// `format::control::lease_owner`).
    pub(crate) fn lease_owner(&self) -> u32 {
        lease_owner(self.ticket)
    }

    /// Whether the handle that wrote leases as `owner` is gone: its slot was taken again
    /// since, or its slot file is unlocked. An owner that names no slot is taken to live (its
    /// lease then ends when it runs out, as before owners were written).
    pub(crate) fn is_lease_owner_gone(&self, owner: u32) -> bool {
        let Some((slot, epoch_low)) = lease_owner_parts(owner) else {
            return false;
        };
        let epoch = self.word32(slot_epoch_at(slot)).load(Ordering::Acquire);
        epoch & 0xffff != epoch_low || self.is_gone(ticket(slot, epoch))
    }

    /// The deduplication log's generation and the end of its valid entries, as the last
    /// holder of the tail lock left them (read and written under the tail lock only).
    pub(crate) fn dedup_log(&self) -> (u64, u64) {
        (
            self.word64(DEDUP_GEN).load(Ordering::Acquire),
            self.word64(DEDUP_TAIL).load(Ordering::Acquire),
        )
    }

    /// Records the deduplication log's generation and end (under the tail lock).
    pub(crate) fn set_dedup_log(&self, generation: u64, tail: u64) {
        self.word64(DEDUP_GEN).store(generation, Ordering::Release);
        self.word64(DEDUP_TAIL).store(tail, Ordering::Release);
    }

    /// This handle's slot.
    fn slot(&self) -> usize {
        ticket_parts(self.ticket).0 as usize
    }

    /// Counts a repair of the tail (under the tail lock): every writer drops its mapping.
    pub(crate) fn count_repair(&self) {
        self.word32(REPAIRS).fetch_add(1, Ordering::AcqRel);
    }

    /// Repairs of the tail so far (see [`count_repair`](Self::count_repair)).
    pub(crate) fn repairs(&self) -> u32 {
        self.word32(REPAIRS).load(Ordering::Acquire)
    }

    /// Commits a new tail (under the tail lock): the slot the current generation does not use,
    /// then the generation, then the dirty mark cleared. Readers wait for [`publish`]
    /// (Self::publish), which wakes them.
    /// Returns the tail's generation.
    pub(crate) fn commit(&self, tail: CommittedTail) -> u64 {
        let generation = self.word64(TAIL_GEN).load(Ordering::Relaxed) + 1;
        self.store_slot(TAIL_SLOTS, generation, tail);
        self.word64(TAIL_GEN).store(generation, Ordering::Release);
        self.seen_gen.store(generation, Ordering::Relaxed);
        self.clear_dirty();
        generation
    }

    /// Whether, under the tail lock, the log is as a writer left it when the committed tail
    /// was at `generation` and `repairs` repairs were done: no handle committed since (a
    /// commit moves the generation), none failed or died past the committed tail (the dirty
    /// mark), and none repaired such a failure (which cuts the file and the zeros ahead,
    /// without a commit).
    #[inline]
    pub(crate) fn is_unchanged_since(&self, generation: u64, repairs: u32) -> bool {
        self.word64(TAIL_GEN).load(Ordering::Acquire) == generation
            && !self.is_dirty()
            && self.repairs() == repairs
    }

    /// Moves the arrivals word and wakes the processes waiting on it.
    pub(crate) fn announce(&self) {
        let arrivals = self.word32(ARRIVALS);
        arrivals.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with `wait_for_arrival`: either the sleeper is counted before this
        // load, or it sees the new arrivals value before it sleeps.
        if self.word32(SLEEPERS).load(Ordering::SeqCst) > 0 {
            wake_all(arrivals);
        }
    }

    /// The arrivals word's value, for [`wait_for_arrival`](Self::wait_for_arrival).
    pub(crate) fn arrivals(&self) -> u32 {
        arrivals_in(&self.control)
    }

    /// Sleeps until a process publishes after `seen` was read, or `timeout`. Looks at the word
    /// for a few microseconds first: a producer that publishes meanwhile then pays no wake-up
    /// system call, and this thread no sleep. Between looks it gives its CPU away: the
    /// producer it waits for may be waiting for that very CPU (a producer and a consumer
    /// process the scheduler put on one core: 0.9–1.1 million records a second with a busy
    /// look, 2.3–2.9 million with this one; on two cores the same).
    pub(crate) fn wait_for_arrival(&self, seen: u32, timeout: std::time::Duration) {
        let spin_until = std::time::Instant::now() + SPIN_BEFORE_SLEEP.min(timeout);
        while std::time::Instant::now() < spin_until {
            if self.arrivals() != seen {
                return;
            }
            std::thread::yield_now();
        }
        wait_for_arrival_in(&self.control, seen, timeout);
    }

    /// Sleeps until a process publishes after `seen` was read, or `timeout`, without looking
    /// first: for producers under `Always` waiting for a sync led by another handle. A sync
    /// takes a hundred microseconds or more, and looking meanwhile takes the CPU that the
    /// producers the leader gathers need (four producer processes on two cores, five
    /// alternating runs: 16,800 records a second with the look, 18,200 without).
    pub(crate) fn sleep_for_arrival(&self, seen: u32, timeout: std::time::Duration) {
        wait_for_arrival_in(&self.control, seen, timeout);
    }

    /// The usage of a bounded queue, for its [`Limits`](crate::engine::limits::Limits).
    pub(crate) fn shared_usage(&self) -> SharedUsage {
        SharedUsage {
            control: self.control.clone(),
        }
    }

    /// The control mapping, for a thread that must not keep the handle alive.
    pub(crate) fn control(&self) -> Arc<ControlMapping> {
        self.control.clone()
    }
}

/// The word of pushed bytes that goes with the tail slot `generation % 2` at `slots`.
fn pushed_slot(slots: usize, generation: u64) -> usize {
    let words = match slots {
        TAIL_SLOTS => TAIL_PUSHED,
        _ => PUBLISHED_PUSHED,
    };
    words + (generation % 2) as usize * 8
}

/// A tail (committed or durable) of a control mapping and its generation: see
/// [`Coordination::committed`].
fn read_tail_in(
    control: &ControlMapping,
    generation_at: usize,
    slots: usize,
) -> (u64, CommittedTail) {
    loop {
        let generation = control.word64(generation_at).load(Ordering::Acquire);
        let slot = slots + (generation % 2) as usize * TAIL_SLOT_LEN;
        let tail = CommittedTail {
            base: control.word64(slot).load(Ordering::Relaxed),
            tail: control.word64(slot + 8).load(Ordering::Relaxed),
            next_seq: control.word64(slot + 16).load(Ordering::Relaxed),
            pushed_bytes: control
                .word64(pushed_slot(slots, generation))
                .load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        if control.word64(generation_at).load(Ordering::Relaxed) == generation {
            return (generation, tail);
        }
        std::hint::spin_loop();
    }
}

/// A bounded shared queue's usage, kept in the control file as totals (see
/// docs/ARCHITECTURE.md, "Bounds across processes"): records and frame bytes pushed in all
/// (the committed tail's `next_seq` and `pushed_bytes`, committed with the tail under the tail
/// lock) minus those consumed in all (two words that consumers raise in their turns, under the
/// consumer lock). A takeover from a dead consumer counts the consumed totals again from the
/// files ([`set_usage`](SharedUsage::set_usage)); nothing a kill leaves drifts further than
/// the next such count. Pushes waiting for room sleep on the `room` futex word, which every
/// giving back of room bumps.
pub(crate) struct SharedUsage {
    control: Arc<ControlMapping>,
}

impl SharedUsage {
    /// Records and bytes not yet consumed: the committed totals minus the consumed ones. Exact
    /// under the tail lock (no push commits meanwhile; consumers only lower it).
    pub(crate) fn usage(&self) -> (u64, u64) {
        let (_, committed) = read_tail_in(&self.control, TAIL_GEN, TAIL_SLOTS);
        let (records, bytes) = self.consumed();
        (
            committed.next_seq.saturating_sub(records),
            committed.pushed_bytes.saturating_sub(bytes),
        )
    }

    /// Whether everything up to the tail `upto` counts as consumed, nothing more.
    pub(crate) fn is_all_consumed_at(&self, upto: CommittedTail) -> bool {
        self.consumed() == (upto.next_seq, upto.pushed_bytes)
    }

    fn consumed(&self) -> (u64, u64) {
        (
            self.control
                .word64(CONSUMED_RECORDS)
                .load(Ordering::Acquire),
            self.control.word64(CONSUMED_BYTES).load(Ordering::Acquire),
        )
    }

    /// Counts consumed records (under the consumer lock) and wakes the pushes waiting for room.
    pub(crate) fn consume(&self, records: u64, bytes: u64) {
        self.control
            .word64(CONSUMED_RECORDS)
            .fetch_add(records, Ordering::AcqRel);
        self.control
            .word64(CONSUMED_BYTES)
            .fetch_add(bytes, Ordering::AcqRel);
        self.announce_room();
    }

    /// Sets the consumed totals so that the usage at the published tail `upto` is `records`
    /// and `bytes` (counted from the files, under the consumer lock).
    pub(crate) fn set_usage(&self, upto: CommittedTail, records: u64, bytes: u64) {
        self.control
            .word64(CONSUMED_RECORDS)
            .store(upto.next_seq.saturating_sub(records), Ordering::Release);
        self.control
            .word64(CONSUMED_BYTES)
            .store(upto.pushed_bytes.saturating_sub(bytes), Ordering::Release);
        self.announce_room();
    }

    /// The published tail: what consumers read up to.
    pub(crate) fn published(&self) -> CommittedTail {
        read_tail_in(&self.control, PUBLISHED_GEN, PUBLISHED_SLOTS).1
    }

    /// The room word's value, read before the usage a waiter looks at.
    pub(crate) fn room(&self) -> u32 {
        self.control.word32(ROOM).load(Ordering::SeqCst)
    }

    fn announce_room(&self) {
        let room = self.control.word32(ROOM);
        room.fetch_add(1, Ordering::SeqCst);
        // SeqCst pairs with `wait_for_room`, as `announce` with `wait_for_arrival`.
        if self.control.word32(ROOM_SLEEPERS).load(Ordering::SeqCst) > 0 {
            wake_all(room);
        }
    }

    /// Sleeps until a consumer of any process gives room back after `seen` was read, or
    /// `timeout`.
    pub(crate) fn wait_for_room(&self, seen: u32, timeout: std::time::Duration) {
        let sleepers = self.control.word32(ROOM_SLEEPERS);
        sleepers.fetch_add(1, Ordering::SeqCst);
        wait_for_change(self.control.word32(ROOM), seen, timeout);
        sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The arrivals word of a control mapping.
pub(crate) fn arrivals_in(control: &ControlMapping) -> u32 {
    control.word32(ARRIVALS).load(Ordering::SeqCst)
}

/// Sleeps until the revoke word of `control` may have moved past `seen`, or `timeout` passes
/// (a solo handle's solo thread, which holds the mapping, not the handle).
pub(crate) fn wait_for_revoke_in(
    control: &ControlMapping,
    seen: u32,
    timeout: std::time::Duration,
) {
    wait_for_change(control.word32(REVOKE), seen, timeout);
}

/// Sleeps until the arrivals word of `control` moves from `seen`, or `timeout`.
pub(crate) fn wait_for_arrival_in(
    control: &ControlMapping,
    seen: u32,
    timeout: std::time::Duration,
) {
    let sleepers = control.word32(SLEEPERS);
    sleepers.fetch_add(1, Ordering::SeqCst);
    crate::storage::process::wait_for_change(control.word32(ARRIVALS), seen, timeout);
    sleepers.fetch_sub(1, Ordering::SeqCst);
}
