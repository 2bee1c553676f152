//! The state of one open queue, shared by its `Queue` handle, its deliveries and its background
//! threads: the environment, the log (writer side), the consumer (reader side), and what joins
//! them (dead letters, compaction after a pop, syncing everything).
//!
//! Each concern keeps its state and methods in its own module; `Shared` only routes a call to
//! the part that owns it, handing it the parts it may use.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::engine::acklog::AckLog;
use crate::engine::clock::now_micros;
use crate::engine::compactor;
use crate::engine::coordination::{ConsumerLock, Coordination};
use crate::engine::dedup::Dedup;
use crate::engine::env::Env;
use crate::engine::head::HeadIndex;
use crate::engine::limits::Limits;
use crate::engine::log::{segment_bases, Bound, DedupStep, Log, Written};
use crate::engine::reader::{AfterConsume, Consumer, Leased, Popped, Reader, TurnMarker};
use crate::engine::record::Record;
use crate::engine::recovery::{locate_head, retired_ranges};
use crate::engine::report::RecoveryReport;
use crate::engine::segment::Segment;
use crate::engine::sync::lock;
use crate::engine::threads::HandleThreads;
#[cfg(feature = "async")]
use crate::engine::timer::Timer;
use crate::engine::writer::Writer;
use crate::error::{Error, Result};
use crate::format::dead_letter::{DeadLetter, DeadLetterReason};
use crate::format::frame::BodyPrefix;
use crate::format::layout::{classify_entry, segment_file_name, EntryKind};
use crate::options::{Options, Overflow, SyncPolicy};
use crate::stats::DiscardReason;
use crate::storage::queue_dir::is_queue;
use crate::storage::DirLock;

/// Where dead letters go: a queue opened on first use. A trait, so that the engine's core does
/// not depend on the `Queue` facade built on it (which implements it).
pub(crate) trait DeadLetterQueue: Send + Sync {
    /// Appends one record.
    fn push(&self, payload: &[u8]) -> Result<u64>;

    /// Makes every record appended so far durable.
    fn sync(&self) -> Result<()>;
}

/// Opens the dead-letter queue in a directory with the given options.
pub(crate) type OpenDeadLetterQueue =
    Box<dyn Fn(PathBuf, Options) -> Result<Arc<dyn DeadLetterQueue>> + Send + Sync>;

/// Whether a consumer turn takes up the records other processes pushed since this handle last
/// looked (see [`Shared::pop_one`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TakeUp {
    /// At the start of the turn: every consumer call but the first look of a pop or a receive
    /// of one record.
    First,
    /// Only if another handle had a turn since this one's last: a pop looks in what this
    /// handle knows first.
    Later,
}

/// A shared queue's consumer turns in one handle (see [`Shared::begin_turn`]).
#[derive(Default)]
struct Turns {
    /// Threads of this handle inside a consumer call.
    active: usize,
    /// The consumer epoch the handle's reader matches (`None`: it has none, or must read the
    /// files again).
    seen: Option<u64>,
    /// The consumer's [`turn_marker`](Consumer::turn_marker) when the current turn began (and
    /// between turns, where the last one left it).
    marker: TurnMarker,
    /// Whether the current turn must record where it leaves the consumer files even if it
    /// changes nothing (it read them again).
    must_publish: bool,
    /// When the consumer may next look for the leases of gone handles (µs since the epoch).
    next_lease_check_us: u64,
}

/// The consumer side, for one consumer call: for a shared queue, a consumer turn, which ends
/// when the last such guard of the handle drops.
pub(crate) struct Turn<'a> {
    consumer: &'a Consumer,
    kind: TurnKind<'a>,
}

/// What a [`Turn`] ends when it drops.
enum TurnKind<'a> {
    /// An exclusive queue's call: nothing.
    Alone,
    /// A shared queue's consumer turn.
    Shared(&'a Shared),
    /// A solo handle's call, counted until it ends (see `Coordination::is_solo`).
    Solo(&'a Coordination),
}

impl std::ops::Deref for Turn<'_> {
    type Target = Consumer;

    fn deref(&self) -> &Consumer {
        self.consumer
    }
}

impl Drop for Turn<'_> {
    #[inline]
    fn drop(&mut self) {
        match self.kind {
            TurnKind::Alone => {}
            TurnKind::Shared(shared) => shared.end_turn(),
            TurnKind::Solo(coordination) => coordination.leave_solo_call(),
        }
    }
}

/// A record discarded to make room, as the simulation reads it: `(seq, payload)`.
#[cfg(feature = "testkit")]
pub(crate) type DroppedRecord = (u64, Vec<u8>);

pub(crate) struct Shared {
    pub(crate) env: Env,
    pub(crate) log: Log,
    /// The consumer side. Set at open for an exclusive queue; for a shared one, at this
    /// handle's first consumer turn (see [`consumer`](Shared::consumer)).
    consumer: OnceLock<Consumer>,
    /// Held while the handle leaves solo (see [`leave_solo`](Shared::leave_solo)) or becomes
    /// solo again ([`try_enter_solo`](Shared::try_enter_solo)).
    leaving_solo: Mutex<()>,
    /// Calls running that solo does not cover (see [`bar_solo`](Shared::bar_solo)); a closed
    /// handle keeps one for good.
    solo_bars: AtomicUsize,
    /// A shared queue's first opener: the reader its recovery built, used at its first turn if
    /// no other handle's turn changed the files since.
    spare_reader: Mutex<Option<Reader>>,
    /// A shared queue: this handle's consumer turns.
    turns: Mutex<Turns>,
    /// A shared queue: whether this handle's consumer waits for other handles' leases (see
    /// [`end_leases_of_gone`](Shared::end_leases_of_gone)).
    watch_leases: AtomicBool,
    /// A shared queue: the thread that turns other processes' pushes into wake-ups of this
    /// handle's async receivers, once one waited.
    #[cfg(feature = "async")]
    bridge: OnceLock<()>,
    /// The solo thread and the arrivals bridge: ended and joined by [`close`](Shared::close).
    threads: HandleThreads,
    dead_letters: Mutex<Option<Arc<dyn DeadLetterQueue>>>,
    /// The ids of recent pushes with a deduplication id; held by such a push until it is
    /// complete, so that a second push with the same id finds the first durable.
    dedup: Mutex<Dedup>,
    open_dead_letters: OpenDeadLetterQueue,
    #[cfg(feature = "async")]
    pub(crate) timer: Timer,
    pub(crate) recovery: RecoveryReport,
    /// An exclusive queue's directory lock (a shared one's locks are in `env.coordination`).
    _lock: Option<DirLock>,
    /// The records this handle discarded to make room (`Overflow::DropOldest`), as
    /// `(seq, payload)`, until the simulation takes them (`testkit::processes`); kept only once
    /// it has looked (`Some`), so that other users of the feature keep nothing.
    #[cfg(feature = "testkit")]
    pub(crate) dropped: Mutex<Option<Vec<DroppedRecord>>>,
}

impl Shared {
    /// `reader`: an exclusive queue's reader, or a shared queue first opener's (kept aside
    /// for its first consumer turn).
    pub(crate) fn new(
        env: Env,
        log: Log,
        reader: Option<Reader>,
        recovery: RecoveryReport,
        dir_lock: Option<DirLock>,
        open_dead_letters: OpenDeadLetterQueue,
        dedup: Dedup,
    ) -> Self {
        let consumer_cell = OnceLock::new();
        let mut spare_reader = None;
        let mut turns = Turns::default();
        match (reader, &env.coordination) {
            (Some(reader), None) => {
                let _ = consumer_cell.set(Consumer::new(reader));
            }
            (Some(reader), Some(coordination)) if coordination.is_solo() => {
                // Alone: the consumer is this handle's from the start, as an exclusive
                // queue's. Every lease the files name is of a handle that is gone (this one
                // built `control`: no other was attached), so none is waited for.
                let consumer = Consumer::new(reader);
                consumer.end_leases_of_gone(coordination, now_micros());
                let _ = consumer_cell.set(consumer);
                turns.seen = Some(0);
            }
            (Some(reader), Some(_)) => {
                // The first opener's reader matches the files as the control file it built
                // found them: consumer epoch 0. Not the epoch read now: `open.lock` is released,
                // and another handle may have had a turn since.
                spare_reader = Some(reader);
                turns.seen = Some(0);
            }
            (None, _) => {}
        }
        Shared {
            env,
            log,
            consumer: consumer_cell,
            leaving_solo: Mutex::new(()),
            solo_bars: AtomicUsize::new(0),
            spare_reader: Mutex::new(spare_reader),
            turns: Mutex::new(turns),
            watch_leases: AtomicBool::new(false),
            #[cfg(feature = "testkit")]
            dropped: Mutex::new(None),
            #[cfg(feature = "async")]
            bridge: OnceLock::new(),
            threads: HandleThreads::default(),
            dead_letters: Mutex::new(None),
            dedup: Mutex::new(dedup),
            open_dead_letters,
            #[cfg(feature = "async")]
            timer: Timer::default(),
            recovery,
            _lock: dir_lock,
        }
    }

    /// Whether the consumer side is set (see [`consumer`](Shared::consumer)).
    #[cfg(feature = "testkit")]
    pub(crate) fn has_consumer(&self) -> bool {
        self.consumer.get().is_some()
    }

    /// The consumer side: always there for an exclusive queue; for a shared one, a consumer
    /// turn (see [`begin_turn`](Shared::begin_turn)), held until the returned guard drops.
    #[inline]
    pub(crate) fn consumer(&self) -> Result<Turn<'_>> {
        self.consumer_taking_up(TakeUp::First)
    }

    /// [`consumer`](Shared::consumer), with the turn of a shared queue taking up the records of
    /// other processes as `take_up` says.
    #[inline]
    fn consumer_taking_up(&self, take_up: TakeUp) -> Result<Turn<'_>> {
        self.env.check_forked()?;
        if let Some(coordination) = &self.env.coordination {
            return self.solo_call_or_turn(coordination, take_up);
        }
        match self.consumer.get() {
            Some(consumer) => Ok(Turn {
                consumer,
                kind: TurnKind::Alone,
            }),
            None => Err(self.no_consumer()),
        }
    }

    /// [`consumer_taking_up`](Shared::consumer_taking_up) of a shared queue: a solo handle's
    /// call (no turn: a solo handle always has its consumer), or a consumer turn.
    #[inline]
    fn solo_call_or_turn<'a>(
        &'a self,
        coordination: &'a Coordination,
        take_up: TakeUp,
    ) -> Result<Turn<'a>> {
        if coordination.enter_solo_call() {
            match self.consumer.get() {
                Some(consumer) => {
                    return Ok(Turn {
                        consumer,
                        kind: TurnKind::Solo(coordination),
                    })
                }
                None => coordination.leave_solo_call(),
            }
        }
        self.begin_turn(take_up)
    }

    /// The error of a consumer call on a handle without a consumer side: out of line, so that
    /// the consumer calls it guards stay small enough to inline (callgrind: 27 instructions a
    /// pop when it was built in place).
    #[cold]
    #[inline(never)]
    fn no_consumer(&self) -> Error {
        Error::Locked {
            dir: self.env.dir.clone(),
            pid: None,
            shared_by: Box::default(),
        }
    }

    /// The consumer side if this handle has it (background work that only a consumer does).
    pub(crate) fn consumer_if_held(&self) -> Option<&Consumer> {
        self.consumer.get()
    }

    /// Starts a consumer turn of a shared queue, or joins the one another thread of this handle
    /// is in. The first thread takes the consumer lock word and catches up: if it took the word
    /// back from its own parked state, no other handle had a turn since, and nothing is read;
    /// else, if the consumer epoch moved since this handle's reader last matched the files,
    /// another handle's turn changed the head index or the ack log, and the reader reads what
    /// changed (in full, settling torn writes, when the word was taken over from a holder that
    /// died in its turn, or the epoch is odd: a turn failed to leave the files in order).
    #[inline(never)]
    fn begin_turn(&self, take_up: TakeUp) -> Result<Turn<'_>> {
        let Some(coordination) = &self.env.coordination else {
            return Err(self.no_consumer());
        };
        let mut turns = lock(&self.turns);
        if turns.active == 0 {
            let how = coordination.lock_consumer();
            // Resumed: no other handle had a turn since this handle's last one.
            let resumed = how == ConsumerLock::Resumed && turns.seen.is_some();
            if let Err(error) = self.catch_up(coordination, &mut turns, how, take_up) {
                turns.seen = None;
                coordination.unlock_consumer();
                return Err(error);
            }
            self.end_leases_of_gone(coordination, &mut turns, resumed);
        }
        turns.active += 1;
        drop(turns);
        match self.consumer.get() {
            Some(consumer) => Ok(Turn {
                consumer,
                kind: TurnKind::Shared(self),
            }),
            None => {
                self.end_turn();
                Err(self.no_consumer())
            }
        }
    }

    /// The first step of a turn, under the consumer lock: see [`begin_turn`](Shared::begin_turn).
    fn catch_up(
        &self,
        coordination: &Coordination,
        turns: &mut Turns,
        how: ConsumerLock,
        take_up: TakeUp,
    ) -> Result<()> {
        let resumed =
            how == ConsumerLock::Resumed && turns.seen.is_some() && self.consumer.get().is_some();
        if !resumed || take_up == TakeUp::First {
            self.log.refresh(&self.env)?;
        }
        if resumed {
            turns.must_publish = false;
            crate::engine::failpoint::reached("consumer.begun");
            return Ok(());
        }
        let epoch = coordination.consumer_epoch();
        // A holder died in its turn, or one could not leave the files in order: they may
        // hold a torn write.
        let in_full = matches!(how, ConsumerLock::TakenFromDead { .. }) || epoch % 2 == 1;
        if let ConsumerLock::TakenFromDead { pid } = how {
            self.env
                .counters
                .took_over(crate::stats::TakeoverKind::ConsumerTurn, 1);
            #[cfg(feature = "tracing")]
            crate::engine::events::consumer_turn_taken_over(
                &self.env.options.name_for(&self.env.dir),
                pid,
            );
            #[cfg(not(feature = "tracing"))]
            let _ = pid;
        }
        // After a death the epoch moves whatever this turn does: the dead holder may have
        // written the files without moving it, and every other handle must read them again.
        let base = match in_full {
            true => (epoch | 1) + 1,
            false => epoch,
        };
        let current = turns.seen == Some(epoch) && !in_full;
        let first = self.consumer.get().is_none();
        // The head slot the other handles take for the durable one (see the marker below).
        let recorded_durable = coordination.consumer_files().head_durable_slot;
        let caught_up = match (self.consumer.get(), current, in_full) {
            (Some(_), true, _) => true,
            // Another handle's turn, ended: read only what it changed (unless this handle's
            // own last attempt failed half way: `seen` is then unknown).
            (Some(consumer), false, false) if turns.seen.is_some() => {
                consumer.catch_up(&self.env, &self.log, coordination.consumer_files())?
            }
            _ => false,
        };
        if !caught_up {
            let spare = lock(&self.spare_reader).take();
            let reader = match spare {
                Some(reader) if current => reader,
                _ => recover_consumer(&self.env, &self.log, in_full)?,
            };
            match self.consumer.get() {
                Some(consumer) => consumer.replace_reader(&self.env, &self.log, reader)?,
                None => {
                    let _ = self.consumer.set(Consumer::new(reader));
                }
            }
        }
        if !current || first {
            // Otherwise the marker is where this handle's last turn left it.
            turns.marker = match self.consumer.get() {
                Some(consumer) => {
                    let (head, acklog) = consumer.turn_marker();
                    match recorded_durable {
                        // A reader built again synced the head as it read it: the newest slot
                        // may now be the durable one, where the other handles still take the
                        // other one for it and would write over it. Marked as changed, so that
                        // the end of the turn records the durable slot and moves the epoch.
                        Some(slot) if !caught_up && slot as u64 != head & 1 => (head ^ 1, acklog),
                        _ => (head, acklog),
                    }
                }
                None => Default::default(),
            };
        }
        // Read again, maybe from files a dead holder left other than the control file says:
        // recorded at the end of the turn in any case.
        turns.must_publish = !current || first;
        if epoch != base {
            coordination.set_consumer_epoch(base);
        }
        turns.seen = Some(base);
        if in_full {
            self.recount_bound(coordination)?;
        }
        crate::engine::failpoint::reached("consumer.begun");
        Ok(())
    }

    /// Ends the leases of other handles that are gone (their process died, or they closed):
    /// the records are available at once rather than when the leases run out. Looks while
    /// the consumer waits for other handles' leases, at most every `LEASE_OWNER_CHECK_US` (a
    /// look costs a `flock` probe per owner). A resumed turn adds no lease to wait for: only
    /// another handle's turn writes them.
    fn end_leases_of_gone(&self, coordination: &Coordination, turns: &mut Turns, resumed: bool) {
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        if !resumed {
            self.watch_leases
                .store(consumer.waits_for_leases(), Ordering::Relaxed);
        }
        if !self.watch_leases.load(Ordering::Relaxed) {
            return;
        }
        let now_us = now_micros();
        if now_us < turns.next_lease_check_us && !self.env.storage.replays_runs() {
            return;
        }
        turns.next_lease_check_us = now_us.saturating_add(LEASE_OWNER_CHECK_US);
        self.end_leases_of_gone_now(coordination, consumer, now_us);
    }

    /// Ends the leases of other handles that are gone, now: the records are available again
    /// (waiters woken), and the takeovers counted.
    fn end_leases_of_gone_now(
        &self,
        coordination: &Coordination,
        consumer: &Consumer,
        now_us: u64,
    ) {
        let (ended, still_waiting) = consumer.end_leases_of_gone(coordination, now_us);
        self.watch_leases.store(still_waiting, Ordering::Relaxed);
        if ended > 0 {
            self.env.arrivals.notify();
            self.env
                .counters
                .took_over(crate::stats::TakeoverKind::Lease, ended as u64);
            #[cfg(feature = "tracing")]
            crate::engine::events::leases_of_gone_ended(
                &self.env.options.name_for(&self.env.dir),
                ended,
            );
        }
    }

    /// A bounded shared queue, in a consumer turn: counts the usage again from the files as
    /// this handle's reader now sees them (a dead consumer may have counted consumed records
    /// that the files do not show consumed, or not counted those they do).
    #[cold]
    fn recount_bound(&self, coordination: &Coordination) -> Result<()> {
        let Some(usage) = self.env.limits.as_ref().and_then(Limits::shared) else {
            return Ok(());
        };
        let Some(consumer) = self.consumer.get() else {
            return Ok(());
        };
        let upto = coordination.published();
        self.log.take_up_published(&self.env, coordination, upto)?;
        let (records, bytes) = consumer.unconsumed(&self.env, &self.log, upto)?;
        usage.set_usage(upto, records, bytes);
        Ok(())
    }

    /// A bounded shared queue, at the end of a turn: when this handle's reader consumed
    /// everything up to the published tail, the usage there is nothing, whatever the totals
    /// say (a record expired beyond the head in one handle is given back again by the next
    /// handle that reaches it, which writes nothing about it: this settles such counts).
    #[inline]
    fn settle_bound_if_drained(&self) {
        if self.env.limits.is_some() {
            self.settle_drained_bound();
        }
    }

    #[cold]
    fn settle_drained_bound(&self) {
        let Some(usage) = self.env.limits.as_ref().and_then(Limits::shared) else {
            return;
        };
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        let upto = usage.published();
        if consumer.is_drained_at(upto) && !usage.is_all_consumed_at(upto) {
            usage.set_usage(upto, 0, 0);
        }
    }

    /// Leaves a consumer turn; the last thread of the handle to leave ends it: the ack log's
    /// held-back entries are written; if the turn changed the head or the ack log, where it
    /// left them is recorded in the control file and the epoch moved on; other processes'
    /// waiters are woken if a release made a record available; the lock word is parked. If
    /// the entries cannot be written, the epoch is made odd and the word released, so that the
    /// next turn (this handle's too) reads the files in full.
    fn end_turn(&self) {
        let Some(coordination) = &self.env.coordination else {
            return;
        };
        let mut turns = lock(&self.turns);
        turns.active = turns.active.saturating_sub(1);
        if turns.active > 0 {
            return;
        }
        crate::engine::failpoint::reached("consumer.ending");
        let ended = self
            .consumer
            .get()
            .and_then(|consumer| consumer.end_turn(&self.env).ok());
        let (Some(end), Some(base)) = (ended, turns.seen) else {
            let epoch = coordination.consumer_epoch();
            coordination.set_consumer_epoch(epoch | 1);
            turns.seen = None;
            coordination.unlock_consumer();
            return;
        };
        if end.marker != turns.marker || turns.must_publish {
            coordination.set_consumer_files(end.files);
        }
        if end.marker != turns.marker {
            let epoch = base + 2;
            coordination.set_consumer_epoch(epoch);
            turns.seen = Some(epoch);
            turns.marker = end.marker;
        }
        if end.released {
            // A record is available before its lease's end: other processes' waiters (who
            // wait for that end) look again.
            coordination.announce();
        }
        self.settle_bound_if_drained();
        coordination.park_consumer();
    }

    /// Makes a solo handle one of several (see `Coordination::is_solo`): no push or consumer
    /// call starts the solo way from now on; once those that did ended, the tail this handle
    /// wrote is committed and published in `control`, and where its consumer left the head
    /// and the ack log is recorded there (the consumer epoch moved, so that every other
    /// handle reads them), as at the end of a consumer turn; then the solo word is cleared,
    /// which lets the waiting opener attach. This handle's waiters wake, to wait on the
    /// shared word from then on. Nothing when the handle is not solo.
    ///
    /// Run by the handle's solo thread when an opener asks, and before every call that
    /// solo does not cover (a push with an id, a purge, a fanout, a close).
    pub(crate) fn leave_solo(&self) {
        let Some(coordination) = &self.env.coordination else {
            return;
        };
        if !coordination.is_solo() {
            return;
        }
        let _leaving = lock(&self.leaving_solo);
        if !coordination.is_solo() {
            return;
        }
        {
            // At once: a push that does not run the solo way takes up the committed tail.
            let mut writer = self.log.lock_writer();
            self.log.commit_solo_tail(coordination, &mut writer);
        }
        crate::engine::failpoint::reached("solo.committed");
        // Consumer calls running the solo way read what this handle's pushes published to
        // it, whichever way they ran.
        coordination.stop_solo();
        crate::engine::failpoint::reached("solo.stopped");
        // A turn that began since (the handle is no longer solo) ends first: its end records
        // the files too.
        let mut turns = loop {
            let turns = lock(&self.turns);
            if turns.active == 0 {
                break turns;
            }
            drop(turns);
            std::thread::sleep(Duration::from_micros(50));
        };
        self.end_solo_turn(coordination, &mut turns);
        drop(turns);
        crate::engine::failpoint::reached("solo.consumer");
        coordination.end_solo();
        crate::engine::failpoint::reached("solo.ended");
        // This handle's solo thread sleeps on the revoke word again (if it is not the caller).
        coordination.wake_revoke_waiters();
        self.env.arrivals.notify();
    }

    /// Makes the handle leave solo, and keeps it from becoming solo again until the guard
    /// drops: for calls that solo does not cover (a push with an id, a purge, a fanout's
    /// writer lock).
    pub(crate) fn bar_solo(&self) -> SoloBar<'_> {
        // Counted, then the lock that `try_enter_solo` looks at the count under is taken and
        // let go: an entry that looked before is done by then (and this leaves what it
        // entered), a later one sees the count.
        self.solo_bars.fetch_add(1, Ordering::SeqCst);
        let bar = SoloBar {
            count: &self.solo_bars,
        };
        drop(lock(&self.leaving_solo));
        self.leave_solo();
        bar
    }

    /// A handle that left solo (or was never solo) becomes solo again if it finds itself
    /// alone: every other handle closed or died, and none is opening (`open.lock` is held
    /// throughout, so none attaches meanwhile). Its writer takes up the committed tail, its
    /// consumer has one turn (which reads what the others left, and ends their leases: they
    /// are gone), then its consumer calls and its pushes run the solo way, and the solo word
    /// names it for the next opener, who asks it to leave solo as it asks a first opener.
    /// True when it became solo. Nothing (false) when the handle is solo, may not be
    /// (`coordination::may_be_solo`), is closed or in a call that solo does not cover, or failed.
    ///
    /// `wait`: wait for a leave or an entry in progress (the solo thread does not wait; a test
    /// that asks for an entry does, to see its outcome).
    pub(crate) fn try_enter_solo(&self, wait: bool) -> Result<bool> {
        let Some(coordination) = &self.env.coordination else {
            return Ok(false);
        };
        if coordination.is_solo()
            || coordination.is_poisoned()
            || !crate::engine::coordination::may_be_solo(&self.env.options)
        {
            return Ok(false);
        }
        let _entering = match wait {
            true => lock(&self.leaving_solo),
            false => match self.leaving_solo.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(false),
            },
        };
        if coordination.is_solo() {
            return Ok(false);
        }
        if self.solo_bars.load(Ordering::SeqCst) != 0 {
            return Ok(false);
        }
        let Some(alone) = coordination.lock_open_if_alone() else {
            return Ok(false);
        };
        self.log.take_up_for_solo(&self.env, coordination)?;
        {
            // Ends with the consumer word parked by this handle, which no other can take now.
            let turn = self.begin_turn(TakeUp::First)?;
            // Every one (not only every `LEASE_OWNER_CHECK_US`, as a turn does): a solo
            // handle's calls take no turn that would look later.
            self.end_leases_of_gone_now(coordination, &turn, now_micros());
        }
        crate::engine::failpoint::reached("solo.entering");
        // Consumer calls first: they see what pushes show this handle's readers either way.
        coordination.start_solo(&alone);
        {
            let mut writer = self.log.lock_writer();
            self.log.start_solo_writer(coordination, &mut writer);
        }
        crate::engine::failpoint::reached("solo.entered");
        Ok(true)
    }

    /// [`leave_solo`](Shared::leave_solo)'s consumer part: the end of a consumer turn that
    /// lasted since the handle opened (the consumer lock is free, or parked by this handle if
    /// a turn ran since it stopped being solo).
    fn end_solo_turn(&self, coordination: &Coordination, turns: &mut Turns) {
        let _ = coordination.lock_consumer();
        let epoch = coordination.consumer_epoch();
        let ended = self
            .consumer
            .get()
            .map(|consumer| consumer.end_turn(&self.env));
        match ended {
            Some(Ok(end)) => {
                coordination.set_consumer_files(end.files);
                // Even, and moved: every other handle reads the files again.
                let epoch = (epoch | 1) + 1;
                coordination.set_consumer_epoch(epoch);
                turns.seen = Some(epoch);
                turns.marker = end.marker;
                turns.must_publish = false;
                coordination.park_consumer();
            }
            // No consumer (none is made solo without one), or its held-back entries could
            // not be written: the next turn, of any handle, reads the files in full.
            _ => {
                coordination.set_consumer_epoch(epoch | 1);
                turns.seen = None;
                coordination.unlock_consumer();
            }
        }
    }

    /// Starts the handle's solo thread (see [`watch_solo`]) if it may be solo: it answers an
    /// opener asking a solo handle to leave solo (an idle handle must answer too), and makes
    /// the handle solo again when it finds itself alone. It holds the handle weakly, and ends
    /// once the handle is gone.
    pub(crate) fn start_solo_thread(self: &Arc<Self>) -> Result<()> {
        let Some(coordination) = &self.env.coordination else {
            return Ok(());
        };
        if !crate::engine::coordination::may_be_solo(&self.env.options) {
            return Ok(());
        }
        crate::engine::failpoint::reached("solo.starting");
        let weak = Arc::downgrade(self);
        // The simulation starts no thread: an opener runs the answer (`SimStorage::allow_solo`).
        #[cfg(any(test, feature = "sim"))]
        if let Some(sim) = self.env.storage.as_sim() {
            #[cfg(feature = "testkit")]
            let process = sim.clone();
            let answer = move || {
                if let Some(shared) = weak.upgrade() {
                    // A kill armed in the answer (`SimStorage::kill_in_answer_at`) stops it
                    // at that crash point, as a kill of the solo thread's process would.
                    #[cfg(feature = "testkit")]
                    {
                        let process = process.clone();
                        crate::engine::failpoint::on_reached_in_this_thread(Some(Box::new(
                            move |point| {
                                if process.answer_reached(point) {
                                    loop {
                                        std::thread::park();
                                    }
                                }
                            },
                        )));
                    }
                    shared.leave_solo();
                }
            };
            sim.on_solo_asked(&self.env.dir, coordination.ticket(), Arc::new(answer));
            return Ok(());
        }
        let spawned = std::thread::Builder::new()
            .name("diskspool-solo".into())
            .spawn(move || watch_solo(weak));
        match spawned {
            Ok(thread) => self.threads.keep(thread),
            // Without the thread nobody could answer: not solo, then (and never again).
            Err(_) if coordination.is_solo() => std::mem::forget(self.bar_solo()),
            Err(_) => {}
        }
        Ok(())
    }

    /// One `push`.
    #[inline]
    pub(crate) fn push_one(&self, payload: &[u8]) -> Result<u64> {
        // One predictable branch for an unbounded queue: matching the result here instead
        // would copy it (callgrind: 26 instructions, 4.5 % of a 100 B push).
        if self.env.limits.is_some() {
            return self.push_one_bounded(payload);
        }
        self.log.push_one(&self.env, payload)
    }

    /// [`push_one`](Shared::push_one) on a bounded queue.
    #[inline(never)]
    fn push_one_bounded(&self, payload: &[u8]) -> Result<u64> {
        match self.log.push_one(&self.env, payload) {
            Err(Error::Full { .. }) if self.makes_room() => self
                .push_making_room(std::slice::from_ref(&payload), BodyPrefix::NONE, None)
                .map(|range| range.start),
            pushed => pushed,
        }
    }

    /// A batch of pushes, all or nothing; `prefix` the delay and TTL of every record
    /// ([`BodyPrefix::NONE`] for plain records).
    pub(crate) fn push_batch(&self, payloads: &[&[u8]], prefix: BodyPrefix) -> Result<Range<u64>> {
        self.push_batch_until(payloads, prefix, None)
    }

    /// Like [`push_batch`](Shared::push_batch); under `Overflow::Block` waits for room until
    /// `deadline` at most (`None`: for as long as it takes).
    pub(crate) fn push_batch_until(
        &self,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
        deadline: Option<Instant>,
    ) -> Result<Range<u64>> {
        if prefix.ttl_us != 0 {
            self.env.saw_ttl();
        }
        match self.log.push_batch(&self.env, payloads, prefix) {
            Err(Error::Full { .. }) if self.makes_room() => {
                self.push_making_room(payloads, prefix, deadline)
            }
            pushed => pushed,
        }
    }

    /// One push with a deduplication id: if a push with the same id was made within the
    /// window, nothing is written and its sequence number is returned. Otherwise the id's
    /// entry is written (and synced under `Always`) before the record, under the writer lock
    /// (a shared queue's: the tail lock, see `Log::push_shared`), so that after any crash the
    /// record never exists without its id (a retry then finds it); an entry whose record a
    /// crash took is dropped at the next open (a shared queue's: by the next writer).
    pub(crate) fn push_dedup(
        &self,
        payload: &[u8],
        prefix: BodyPrefix,
        id: &[u8],
        bound: Bound,
    ) -> Result<u64> {
        // The deduplication log's place lives in `control` (see `Log::push_shared`).
        let _not_solo = self.bar_solo();
        let env = &self.env;
        if id.is_empty() || id.len() > crate::options::DEDUP_ID_LEN_MAX {
            return Err(Error::InvalidOptions(format!(
                "a deduplication id is 1 to {} bytes, not {}",
                crate::options::DEDUP_ID_LEN_MAX,
                id.len()
            )));
        }
        if prefix.ttl_us != 0 {
            env.saw_ttl();
        }
        let payloads = std::slice::from_ref(&payload);
        let batch_len = self.log.check_batch(env, payloads, prefix)?;
        let mut dedup = lock(&self.dedup);
        let mut expiry_tried = false;
        loop {
            let now_us = now_micros();
            let before = env.limits.as_ref().map(|limits| limits.usage());
            let attempt = match &env.coordination {
                Some(coordination) => {
                    let mut step = DedupStep {
                        dedup: &mut dedup,
                        id,
                        now_us,
                        found: None,
                    };
                    let pushed = self.log.push_dedup_shared(
                        env,
                        coordination,
                        payload,
                        prefix,
                        &mut step,
                        bound,
                    );
                    let found = step.found;
                    match pushed {
                        Ok(seq) => {
                            if found.is_some() {
                                env.counters.deduplicated();
                            }
                            return Ok(seq);
                        }
                        Err(error) => {
                            if found.is_none() {
                                // Its entry may be in the map, for a record that is not there
                                // (the next writer settles the log).
                                dedup.forget(id);
                            }
                            Err(error)
                        }
                    }
                }
                None => {
                    if let Some(seq) = dedup.lookup(id, now_us) {
                        env.counters.deduplicated();
                        return Ok(seq);
                    }
                    let mut writer = self.log.lock_writer();
                    let fits = match bound {
                        Bound::Enforced => self.check_bound(1, batch_len),
                        Bound::Waived => Ok(()),
                    };
                    fits.and_then(|()| {
                        crate::engine::log::check_room(&writer, 1)?;
                        let seq = writer.next_seq;
                        dedup
                            .remember(&*env.storage, id, seq, now_us)
                            .map_err(|error| env.poison(error))?;
                        if env.options.sync == SyncPolicy::Always {
                            dedup.sync().map_err(|error| env.poison(error))?;
                        }
                        self.log
                            .write_locked(env, &mut writer, payloads, prefix, batch_len, bound)
                            .map_err(|error| {
                                // The entry names a number the next push would take: refuse
                                // changes until a reopen drops it (its record is not there).
                                dedup.forget(id);
                                env.poison(error)
                            })
                    })
                }
            };
            match attempt {
                Ok(written) => return self.log.complete(env, written).map(|range| range.start),
                Err(Error::Full { .. }) if self.makes_room() => {
                    let before = before.unwrap_or_default();
                    self.make_room_for_one(batch_len, before, &mut expiry_tried)?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A push of one record (`batch_len` bytes) with a deduplication id found the queue full
    /// (`before`: the usage it saw): makes room as the overflow rule says, or refuses.
    fn make_room_for_one(
        &self,
        batch_len: u64,
        before: (u64, u64),
        expiry_tried: &mut bool,
    ) -> Result<()> {
        let Some(limits) = &self.env.limits else {
            return Ok(());
        };
        if limits.never_fits(1, batch_len) {
            return Err(limits.full(1, batch_len));
        }
        if self.env.may_hold_expiring() && !*expiry_tried {
            // As in `push_making_room`: expired records at the head go first.
            *expiry_tried = true;
            self.peek()?;
            if limits.usage() != before {
                return Ok(());
            }
        }
        match limits.overflow {
            Overflow::Reject => Err(limits.full(1, batch_len)),
            Overflow::DropOldest => {
                if self.drop_oldest(limits.records_to_drop(1) as usize)? == 0 {
                    return Err(limits.full(1, batch_len));
                }
                Ok(())
            }
            Overflow::Block => {
                limits.wait_for_room(before, None);
                Ok(())
            }
        }
    }

    /// Whether a full queue may make room for a push (drops, waits, or discards expired
    /// records at the head) rather than refusing it at once. Called once a push found the
    /// queue full: without a `max_age`, and without a record with a TTL pushed or read since
    /// open, the record at the reader's frontier is read (and put back) first, so that records
    /// with a TTL pushed before the open are found there too.
    fn makes_room(&self) -> bool {
        let Some(limits) = &self.env.limits else {
            return false;
        };
        if !self.env.may_hold_expiring() {
            // A read error here is met again by the consumer that reaches the record. In a
            // shared queue, in a consumer turn (if this handle consumes at all).
            if self.consumer.get().is_some() {
                if let Ok(consumer) = self.consumer() {
                    let _ = consumer.read_frontier(&self.env, &self.log);
                }
            }
        }
        limits.overflow != Overflow::Reject || self.env.may_hold_expiring()
    }

    /// A push that found the queue full under `Overflow::DropOldest` or `Overflow::Block`:
    /// makes room (discards the oldest ready records, or waits for consumers) and tries again.
    #[cold]
    fn push_making_room(
        &self,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
        deadline: Option<Instant>,
    ) -> Result<Range<u64>> {
        let Some(limits) = &self.env.limits else {
            return self.log.push_batch(&self.env, payloads, prefix);
        };
        let records = payloads.len() as u64;
        let bytes = self.log.check_batch(&self.env, payloads, prefix)?;
        if limits.never_fits(records, bytes) {
            return Err(limits.full(records, bytes));
        }
        let mut expiry_tried = false;
        loop {
            let before = limits.usage();
            match self.log.push_batch(&self.env, payloads, prefix) {
                Err(Error::Full { .. }) => {}
                pushed => return pushed,
            }
            if self.env.may_hold_expiring() && !expiry_tried {
                // Expired records at the head (past `max_age` or their TTL) still count until
                // the reader reaches them: a peek discards them (and gives their room back)
                // without taking anything.
                expiry_tried = true;
                self.peek()?;
                if limits.usage() != before {
                    continue;
                }
            }
            match limits.overflow {
                Overflow::Reject => return Err(limits.full(records, bytes)),
                Overflow::DropOldest => {
                    let wanted = usize::try_from(limits.records_to_drop(records))
                        .unwrap_or(usize::MAX)
                        .min(crate::engine::jobs::IN_FLIGHT_MAX);
                    if self.drop_oldest(wanted)? == 0 {
                        // Everything left is handed out or delayed: nothing may be dropped.
                        return Err(limits.full(records, bytes));
                    }
                }
                Overflow::Block => {
                    if !limits.wait_for_room(before, deadline) {
                        return Err(limits.full(records, bytes));
                    }
                }
            }
        }
    }

    /// Discards up to `max` of the oldest ready records, durably like a pop; to the dead-letter
    /// queue when one is configured (`Options::dead_letter_dir`): pushed there first, then
    /// acknowledged here, like a record that used up its deliveries. Returns how many went.
    fn drop_oldest(&self, max: usize) -> Result<u64> {
        let dropped = if self.env.options.dead_letter_dir.is_some() {
            let leased = self.recv_batch(max)?;
            for leased in &leased {
                self.note_dropped(&leased.record);
                self.move_to_dead_letters(
                    leased.record.seq(),
                    &leased.record,
                    leased.deliveries,
                    DeadLetterReason::Overflow,
                )?;
            }
            leased.len() as u64
        } else {
            self.pop_with(
                max,
                |record| {
                    self.note_dropped(&record);
                    Ok(())
                },
                Vec::new(),
            )?
            .len() as u64
        };
        self.env
            .counters
            .discarded(DiscardReason::Overflow, dropped);
        Ok(dropped)
    }

    /// Keeps a record discarded to make room for the simulation to see.
    #[cfg(feature = "testkit")]
    fn note_dropped(&self, record: &Record) {
        if let Some(dropped) = lock(&self.dropped).as_mut() {
            dropped.push((record.seq(), record.payload().to_vec()));
        }
    }

    #[cfg(not(feature = "testkit"))]
    #[inline]
    fn note_dropped(&self, _record: &Record) {}

    /// Checks a batch against the limits; returns its encoded length (for fanout).
    pub(crate) fn check_batch(&self, payloads: &[&[u8]], prefix: BodyPrefix) -> Result<u64> {
        self.log.check_batch(&self.env, payloads, prefix)
    }

    /// The writer, locked (for fanout, which numbers copies in several queues at once).
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        let _not_solo = self.bar_solo();
        // Once held, the writer keeps the handle from becoming solo again.
        self.log.lock_writer()
    }

    /// Writes a checked batch with the writer held (for fanout).
    pub(crate) fn write_locked(
        &self,
        writer: &mut Writer,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
        batch_len: u64,
        bound: Bound,
    ) -> Result<Written> {
        self.log
            .write_locked(&self.env, writer, payloads, prefix, batch_len, bound)
    }

    /// Fails with `Error::Full` if a batch of `records` and `bytes` does not fit the bound now
    /// (for fanout, which checks every target before it writes its intent).
    pub(crate) fn check_bound(&self, records: u64, bytes: u64) -> Result<()> {
        match &self.env.limits {
            Some(limits) => limits.check(records, bytes),
            None => Ok(()),
        }
    }

    /// Makes a written batch durable and visible (for fanout).
    pub(crate) fn complete(&self, written: Written) -> Result<Range<u64>> {
        self.log.complete(&self.env, written)
    }

    /// One `pop`.
    #[inline]
    pub(crate) fn pop_one(&self) -> Result<Option<Record>> {
        if let Some(coordination) = &self.env.coordination {
            return self.pop_one_coordinated(coordination);
        }
        self.consumer()?.pop_one(&self.env, &self.log, self)
    }

    /// [`pop_one`](Shared::pop_one) of a shared queue: a solo handle pops as an exclusive
    /// queue does, in a solo call; another, in consumer turns.
    #[inline(always)]
    fn pop_one_coordinated(&self, coordination: &Coordination) -> Result<Option<Record>> {
        if coordination.enter_solo_call() {
            self.env.check_forked()?;
            if let Some(consumer) = self.consumer.get() {
                let call = Turn {
                    consumer,
                    kind: TurnKind::Solo(coordination),
                };
                return call.pop_one(&self.env, &self.log, self);
            }
            coordination.leave_solo_call();
        }
        self.pop_one_shared()
    }

    /// [`pop_one`](Shared::pop_one) of a shared queue. It looks in the records this handle
    /// already took up first: the oldest of them is older than any it has not, and the look
    /// reads nothing other processes write at every push (with a producer on the other core,
    /// that costs a cache miss or two a pop). Only if they hold nothing are the others' pushes
    /// taken up.
    #[inline(never)]
    fn pop_one_shared(&self) -> Result<Option<Record>> {
        self.env.check_forked()?;
        let known = self.begin_turn(TakeUp::Later)?;
        let popped = known.pop_one(&self.env, &self.log, self);
        if !matches!(popped, Ok(None)) {
            return popped;
        }
        drop(known);
        self.begin_turn(TakeUp::First)?
            .pop_one(&self.env, &self.log, self)
    }

    /// Removes up to `max` records through `convert` into `out`.
    pub(crate) fn pop_with<T, O: Popped<T>>(
        &self,
        max: usize,
        convert: impl FnMut(Record) -> Result<T>,
        out: O,
    ) -> Result<O> {
        self.consumer()?
            .pop_with(&self.env, &self.log, self, max, convert, out)
    }

    /// The oldest record a pop would return, not removed.
    pub(crate) fn peek(&self) -> Result<Option<Record>> {
        self.consumer()?.peek(&self.env, &self.log)
    }

    /// Hands out up to `max` records under a lease.
    pub(crate) fn recv_batch(&self, max: usize) -> Result<Vec<Leased>> {
        if max == 1 && self.env.coordination.as_ref().is_some_and(|c| !c.is_solo()) {
            // One record: as `pop_one_shared`, what this handle knows first. A batch takes up
            // everything first, so that it is as full as the queue allows.
            let leased = self
                .begin_turn(TakeUp::Later)?
                .recv_batch(&self.env, &self.log, self, max)?;
            if !leased.is_empty() {
                return Ok(leased);
            }
        }
        self.consumer()?.recv_batch(&self.env, &self.log, self, max)
    }

    /// Acknowledges `seq`.
    pub(crate) fn ack(&self, seq: u64) -> Result<()> {
        self.consumer()?.ack(&self.env, &self.log, self, seq)
    }

    /// Releases a leased record, now or after `delay`.
    pub(crate) fn release(&self, seq: u64, token: u64, delay: Option<Duration>) -> Result<()> {
        self.consumer()?.release(&self.env, self, seq, token, delay)
    }

    /// Extends a lease to `lease` from now.
    pub(crate) fn extend(&self, seq: u64, token: u64, lease: Duration) -> Result<()> {
        self.consumer()?.extend(&self.env, seq, token, lease)
    }

    /// Moves a leased record to the dead-letter queue now, whatever its delivery count.
    pub(crate) fn dead_letter(&self, seq: u64, token: u64) -> Result<()> {
        // One turn throughout: the record is being moved only in this handle's memory.
        let turn = self.consumer()?;
        let (record, deliveries) = turn.take_for_dead_letter(&self.env, seq, token)?;
        self.move_to_dead_letters(seq, &record, deliveries, DeadLetterReason::Deliveries)
    }

    /// Removes every record not yet consumed, handed out ones included; returns how many.
    pub(crate) fn purge(&self) -> Result<u64> {
        // It holds the writer through a consumer call, which leaving solo would wait for
        // while it holds the writer.
        let _not_solo = self.bar_solo();
        let consumer = self.consumer()?;
        let purged = {
            // Held throughout: no push takes a number or room until the head has moved.
            let writer = self.log.lock_writer();
            let purged = consumer.purge(
                &self.env,
                writer.active.clone(),
                writer.tail,
                writer.next_seq,
                self.log.synced_seq(),
            )?;
            if let Some(limits) = &self.env.limits {
                limits.set_usage(0, 0);
            }
            purged
        };
        if let Some(coordination) = &self.env.coordination {
            // A shared queue's usage is counted where the purge left the head (producers of
            // other processes may have pushed past this handle's tail meanwhile).
            self.recount_bound(coordination)?;
        }
        self.env.discarded(DiscardReason::Purge, purged);
        self.env.arrivals.notify();
        if self.env.options.auto_compact {
            self.compact();
        }
        self.env.check_poisoned()?;
        Ok(purged)
    }

    /// Records in the queue.
    pub(crate) fn len(&self) -> u64 {
        if self.consumer.get().is_none() {
            return self.len_without_consumer();
        }
        // A failure to look is met again by the next call that can report it.
        match self.consumer() {
            Ok(consumer) => consumer.len(self.log.published_next_seq()),
            Err(_) => self.len_without_consumer(),
        }
    }

    /// A shared queue's length seen from a handle that does not consume (or from a copy in a
    /// forked child): the records between the head in the `head` file and the published tail,
    /// less those the ack log says were acknowledged out of order beyond the head (as `spool
    /// stat` counts).
    #[cold]
    fn len_without_consumer(&self) -> u64 {
        let next_seq = if self.env.is_forked() {
            // A child's copy takes no lock, which a parent thread may have held at the fork:
            // the published tail straight from `control` (an exclusive copy's is the fork's).
            match &self.env.coordination {
                Some(coordination) => coordination.published().next_seq,
                None => self.log.published_next_seq(),
            }
        } else {
            let _ = self.log.refresh(&self.env);
            self.log.published_next_seq()
        };
        let storage = &*self.env.storage;
        let head_seq =
            crate::engine::head::head_seq_in_file(storage, &self.env.dir).unwrap_or(next_seq);
        let acked =
            crate::engine::acklog::acked_in_file(storage, &self.env.dir, head_seq..next_seq);
        next_seq.saturating_sub(head_seq).saturating_sub(acked)
    }

    /// The arrivals epoch a waiter reads before it looks for records, and hands to
    /// [`wait_for_change`](Shared::wait_for_change): for a shared queue, the control file's
    /// arrivals word in the high half, so that a commit by another process after this read is
    /// never missed.
    pub(crate) fn arrivals_epoch(&self) -> u64 {
        let local = self.env.arrivals.epoch();
        match &self.env.coordination {
            // A solo handle's pushes are this process's: they move the local epoch only.
            Some(coordination) if !coordination.is_solo() => {
                (u64::from(coordination.arrivals()) << 32) | (local & u64::from(u32::MAX))
            }
            _ => local,
        }
    }

    /// Blocks until the arrivals epoch moves past `seen`, a delay or lease runs out, or
    /// `deadline` passes; false when nothing changed.
    pub(crate) fn wait_for_change(&self, seen: u64, deadline: Instant) -> bool {
        let mut wake = match self.consumer.get().and_then(Consumer::next_due_us) {
            Some(due_us) => {
                let wait = Duration::from_micros(due_us.saturating_sub(now_micros()));
                deadline.min(Instant::now() + wait)
            }
            None => deadline,
        };
        if self.watch_leases.load(Ordering::Relaxed) {
            // The next turn looks whether the holders of those leases are gone.
            wake = wake.min(Instant::now() + Duration::from_micros(LEASE_OWNER_CHECK_US));
        }
        let arrivals = &self.env.arrivals;
        let coordination = match &self.env.coordination {
            Some(coordination) if !coordination.is_solo() => coordination,
            // A solo handle leaving solo notifies the local epoch: its waiters wake, and wait
            // on the shared word from then on (`seen` then misses the high half, so the next
            // wait returns at once and the caller reads the epoch again).
            _ => return arrivals.wait_until(wake, || arrivals.epoch() != seen),
        };
        // A shared queue: woken by any process's commit through the control file's futex
        // word; what only this process announces (a release, a due timer) is seen within a
        // slice. `seen` holds both (see `arrivals_epoch`).
        let committed = (seen >> 32) as u32;
        let local_seen = seen & u64::from(u32::MAX);
        loop {
            if arrivals.epoch() & u64::from(u32::MAX) != local_seen
                || coordination.arrivals() != committed
            {
                return true;
            }
            let now = Instant::now();
            if now >= wake {
                return false;
            }
            let slice = (wake - now).min(SHARED_WAIT_SLICE);
            coordination.wait_for_arrival(committed, slice);
        }
    }

    /// A shared queue: starts, once, the thread that wakes this handle's async receivers when
    /// another process pushes.
    #[cfg(feature = "async")]
    pub(crate) fn ensure_arrivals_bridge(self: &Arc<Self>) {
        if self.env.coordination.is_none() || self.bridge.get().is_some() {
            return;
        }
        let _ = self.bridge.get_or_init(|| {
            let weak = Arc::downgrade(self);
            // Best effort: without the thread, async receivers still wake on this process's
            // own events and timers.
            if let Ok(thread) = std::thread::Builder::new()
                .name("diskspool-arrivals".into())
                .spawn(move || bridge_arrivals(weak))
            {
                self.threads.keep(thread);
            }
        });
    }

    /// Makes every push and pop so far durable, whatever the sync policy.
    pub(crate) fn sync_all(&self) -> Result<()> {
        self.env.check_poisoned()?;
        // The records moved to the dead-letter queue before the acknowledgements that removed
        // them here, as a move orders them: else a power loss after this sync could take a
        // record from both queues. Also moves this handle did not make (another process's, or
        // an earlier life's, whose acknowledgements this sync makes durable too).
        let opened = lock(&self.dead_letters).clone();
        match opened {
            Some(queue) => queue.sync()?,
            None => self.sync_dead_letter_files()?,
        }
        // Ids before their records, as a push with an id orders them. A shared queue's log is
        // the one in the directory: this handle may have opened none, or one since replaced.
        match &self.env.coordination {
            Some(_) => Dedup::sync_existing(&*self.env.storage, &self.env.dir),
            None => lock(&self.dedup).sync(),
        }
        .map_err(|error| self.env.poison(error))?;
        let covered = self
            .log
            .sync_data_timed(&self.env)
            .map_err(|error| self.env.poison(error))?;
        self.log.mark_durable(covered);
        match self.consumer.get() {
            Some(_) => self.consumer()?.sync_all(&self.env, covered),
            None => Ok(()),
        }
    }

    /// [`sync_all`](Shared::sync_all) of a dead-letter queue this handle has not opened: its
    /// last segment and its directory, synced through the files, without opening it (another
    /// handle may hold it, a worker draining it; and a queue without one needs none). The
    /// segments before the last were synced when they were sealed.
    fn sync_dead_letter_files(&self) -> Result<()> {
        let storage = &*self.env.storage;
        let dir = self.env.options.dead_letter_path(&self.env.dir);
        if !is_queue(storage, &dir)? {
            return Ok(());
        }
        if let Some(base) = segment_bases(storage, &dir)?.last() {
            let path = dir.join(segment_file_name(*base));
            storage
                .open(&path)
                .and_then(|file| file.sync_data())
                .map_err(|error| Error::io("sync dead-letter segment", &path, error))?;
        }
        storage
            .sync_dir(&dir)
            .map_err(|error| Error::io("sync dead-letter directory", &dir, error))
    }

    /// Writes into the head how far the records are known to be synced (by rolls and earlier
    /// syncs), without a sync: for a close under `SyncPolicy::Never`.
    pub(crate) fn record_synced_seq(&self) -> Result<()> {
        self.env.check_poisoned()?;
        match self.consumer.get() {
            Some(_) => self
                .consumer()?
                .record_synced_seq(&self.env, self.log.synced_seq()),
            None => Ok(()),
        }
    }

    /// The steps of a clean close: the zeros after the data trimmed (if this fails, recovery
    /// treats them as free space anyway), then what the policy syncs.
    pub(crate) fn close(&self) -> Result<()> {
        // An opener may wait for this handle's state; the next after the last close builds
        // `control` anew anyway. Closed, the handle never becomes solo again: the bar is
        // kept.
        std::mem::forget(self.bar_solo());
        if let Some(coordination) = &self.env.coordination {
            self.threads.end(|| {
                coordination.wake_revoke_waiters();
                coordination.wake_arrival_waiters();
            });
        }
        if self.env.coordination.is_none() {
            // A shared queue's writer may be behind the tail other processes committed, and
            // its segments hold no zeros to cut.
            let _ = self.log.trim();
        }
        #[cfg(feature = "async")]
        self.timer.stop();
        // The head records how far the records are synced, so that damage to them found at the
        // next open is refused rather than cut as unsynced writes. Under Always and Interval a
        // clean close syncs everything first (under Interval it then leaves nothing to a later
        // power loss; under Always every push is synced already, and the head is synced lazily);
        // Never syncs only when asked, so it records what earlier syncs covered.
        match self.env.options.sync {
            SyncPolicy::Always | SyncPolicy::Interval(_) => self.sync_all(),
            SyncPolicy::Never => self.record_synced_seq(),
        }
    }

    fn dead_letter_queue(&self) -> Result<Arc<dyn DeadLetterQueue>> {
        let mut slot = lock(&self.dead_letters);
        if let Some(queue) = &*slot {
            return Ok(queue.clone());
        }
        let env = &self.env;
        let path = env.options.dead_letter_path(&env.dir);
        // Only a queue, an empty folder or a new one (or one whose creation a kill cut: the
        // lock files and settings of an open, nothing else): never someone's files.
        let usable = match env.storage.list_dir(&path) {
            Ok(names) => {
                names.iter().all(|name| {
                    matches!(classify_entry(name), EntryKind::Lock | EntryKind::Settings)
                }) || is_queue(&*env.storage, &path)?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
            Err(error) => return Err(Error::io("list dead-letter directory", &path, error)),
        };
        if !usable {
            return Err(Error::InvalidOptions(format!(
                "dead_letter_dir {} exists and holds no queue; refusing to write into it",
                path.display()
            )));
        }
        let mut options = env.options.clone().fitted_to_envelopes();
        options.metrics_name = Some(format!("{}-dead-letters", options.name_for(&env.dir)));
        options.max_deliveries = None;
        options.dead_letter_dir = None;
        // A dead-letter queue keeps its own policies (none unless set on it): a bound or an
        // expiry here must not discard dead letters there.
        options.max_records = None;
        options.max_bytes = None;
        options.overflow = Overflow::Reject;
        options.max_age = None;
        options.dedup_window = None;
        options.policies_explicit = 0;
        let queue = (self.open_dead_letters)(path, options)?;
        *slot = Some(queue.clone());
        Ok(queue)
    }
}

/// The reader of a shared queue's handle at a turn after another handle's turn changed the
/// files: built from the head index and the ack log as that consumer left them, over the
/// segments this handle knows, which are listed again first (it may have compacted some).
/// `holder_died`: it died in its turn, at any step; the files are then read as an open after a
/// process kill reads them, settling what it may have torn.
fn recover_consumer(env: &Env, log: &Log, holder_died: bool) -> Result<Reader> {
    let storage = &*env.storage;
    let dir = &env.dir;
    if holder_died {
        // As an open after a kill does: the dead consumer may have renamed a new ack log into
        // place and died before it synced the directory; the entries this handle syncs into
        // that file would vanish with its name at a power loss.
        storage
            .sync_dir(dir)
            .map_err(|error| Error::io("sync queue directory", dir, error))?;
    }
    log.forget_deleted_segments(env)?;
    // Synced as read: the slot this handle writes next is the other one.
    let mut head = HeadIndex::open(storage, dir)?;
    if holder_died {
        // The other slot may hold a write the dead consumer tore: overwritten durably now.
        head.settle(head.state().synced_seq)?;
    }
    let head_seq = head.state().head_seq;
    let segments: BTreeMap<u64, Arc<Segment>> = log
        .segments()
        .into_iter()
        .map(|segment| (segment.base_seq, segment))
        .collect();
    let (head_segment, head_offset) = locate_head(storage, &segments, head.state())?;
    let mut report = RecoveryReport::default();
    let appends_synced = env.options.sync == crate::options::SyncPolicy::Always;
    // Other handles have the ack log open, and may map it: it is not cut.
    let live = true;
    let (mut acklog, history) = AckLog::open(
        storage,
        dir,
        head_seq,
        appends_synced,
        holder_died,
        live,
        &mut report,
    )?;
    acklog.defer_writes(appends_synced);
    acklog.map_writes(env.options.mapped_writes);
    let retired = retired_ranges(&history, &segments);
    log.set_retired(retired.clone());
    Ok(Reader::new(
        head_segment,
        head_offset,
        head,
        acklog,
        history,
        retired,
    ))
}

/// How often a shared queue's consumer looks whether the handles whose leases it waits for
/// are gone (µs).
const LEASE_OWNER_CHECK_US: u64 = 10_000;

/// How long a shared queue's waiter sleeps at most before it looks at this process's own
/// wake-ups again (see `Shared::wait_for_change`).
const SHARED_WAIT_SLICE: Duration = Duration::from_millis(10);

/// The solo thread of a handle that may be solo (see [`Shared::start_solo_thread`]). While the
/// handle is solo, it sleeps on the revoke word and makes the handle leave solo when an opener
/// bumps it. Otherwise it sleeps on the same word, which every handle that drops wakes, and
/// looks whether the handle is alone (`Shared::try_enter_solo`); every `ALONE_CHECK` too,
/// for handles whose process died.
fn watch_solo(weak: std::sync::Weak<Shared>) {
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let Some(coordination) = &shared.env.coordination else {
            return;
        };
        if shared.threads.is_ending() {
            return;
        }
        let (seen, timeout) = if coordination.is_solo() {
            let seen = coordination.revoke_seen();
            if coordination.revoke_requests() != seen {
                shared.leave_solo();
                continue;
            }
            (seen, REVOKE_CHECK)
        } else {
            // A handle that drops wakes this thread without moving the word: a wake between
            // the look below and the sleep is missed, and the look after `ALONE_CHECK` finds
            // it alone.
            let seen = coordination.revoke_requests();
            // A failure leaves the handle as it was; the next look tries again.
            if let Ok(true) = shared.try_enter_solo(false) {
                continue;
            }
            (seen, ALONE_CHECK)
        };
        let coordination_words = coordination.control();
        drop(shared);
        // Not holding the handle while asleep: a handle dropped meanwhile closes. The
        // mapping stays for the word.
        crate::engine::coordination::wait_for_revoke_in(&coordination_words, seen, timeout);
    }
}

/// How long the solo thread of a solo handle sleeps before it looks whether its handle is
/// still there.
const REVOKE_CHECK: Duration = Duration::from_millis(100);

/// How long the solo thread of a handle that is not solo sleeps before it looks whether the
/// handle is alone (a handle that closes wakes it at once; one whose process died does not).
const ALONE_CHECK: Duration = Duration::from_secs(1);

/// A call that solo does not cover, running (see [`Shared::bar_solo`]).
pub(crate) struct SoloBar<'a> {
    count: &'a AtomicUsize,
}

impl Drop for SoloBar<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The arrivals bridge of a shared queue: sleeps on the control file's futex word and wakes
/// the handle's local waiters when it moves; ends once the handle is gone.
#[cfg(feature = "async")]
fn bridge_arrivals(weak: std::sync::Weak<Shared>) {
    use crate::engine::coordination::{arrivals_in, wait_for_arrival_in};
    // The mapping, not the handle: sleeping here must not keep a closed queue open.
    let control = match weak.upgrade() {
        Some(shared) => match &shared.env.coordination {
            Some(coordination) => coordination.control(),
            None => return,
        },
        None => return,
    };
    // Carried across turns: a commit after the value was read is always seen as a change.
    let mut seen = arrivals_in(&control);
    loop {
        wait_for_arrival_in(&control, seen, SHARED_WAIT_SLICE * 10);
        let Some(shared) = weak.upgrade() else {
            return;
        };
        if shared.threads.is_ending() {
            return;
        }
        let now = arrivals_in(&control);
        if now != seen {
            seen = now;
            shared.env.arrivals.notify();
        }
    }
}

impl AfterConsume for Shared {
    /// Pushes a record into the dead-letter queue, then marks it done here. A crash between the
    /// two leaves it in both (it is moved again, so the dead-letter queue may hold it twice);
    /// never in neither.
    fn move_to_dead_letters(
        &self,
        seq: u64,
        record: &Record,
        deliveries: u32,
        reason: DeadLetterReason,
    ) -> Result<()> {
        let pushed = self.dead_letter_queue().and_then(|queue| {
            let envelope = DeadLetter {
                original_seq: seq,
                deliveries,
                enqueued_at_us: record.enqueued_at_us(),
                payload: record.payload(),
                reason,
            };
            queue.push(&envelope.encode())
        });
        if let Err(error) = pushed {
            if let Some(consumer) = self.consumer.get() {
                consumer.return_to_ready(seq);
            }
            return Err(error);
        }
        self.env.counters.dead_lettered();
        #[cfg(feature = "tracing")]
        crate::engine::events::dead_lettered(
            &self.env.options.name_for(&self.env.dir),
            seq,
            deliveries,
        );
        self.ack(seq)
    }

    fn compact(&self) {
        // The records are already consumed; a failed compaction is retried by the next one,
        // and an I/O failure in it poisons the queue, so the caller learns of it next call.
        if let Some(consumer) = self.consumer.get() {
            let _ = compactor::compact(&self.env, &self.log, consumer);
        }
    }
}
