//! The log: the segments on disk and the writer at their tail. A push is checked, numbered and
//! written here under the writer lock; under `SyncPolicy::Always` it then waits for a group
//! commit before readers may see it. A roll seals the active segment (synced, trimmed) and
//! starts the next from the pool or a new file.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::engine::clock::{coarse_now_micros, now_micros};
use crate::engine::coordination::{CommittedTail, Coordination};
use crate::engine::env::Env;
use crate::engine::failpoint;
use crate::engine::pool;
use crate::engine::segment::{Segment, SegmentPath};
use crate::engine::sync::{lock, SyncGroup};
use crate::engine::writer::Writer;
use crate::error::{Error, Result};
use crate::format::acklog::check_next_base;
use crate::format::frame::{self, BodyPrefix};
use crate::format::layout::{parse_segment_file_name, segment_file_name};
use crate::format::segment::SequenceBreak;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::options::SyncPolicy;
use crate::storage::{Storage, StorageFile};

/// Whether a write is held to the queue's bound (`Options::max_records`, `max_bytes`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A push: refused with `Error::Full` when it does not fit.
    Enforced,
    /// The copy of an accepted fanout (its intent recorded after the bound was checked), also
    /// rolled forward: written and counted regardless.
    Waived,
}

/// A batch written at the tail, not yet complete.
pub(crate) struct Written {
    /// The segment to publish `end` in once durable: only under `SyncPolicy::Always` (the
    /// other policies publish while writing, and skip the reference count).
    segment: Option<Arc<Segment>>,
    range: Range<u64>,
    end: u64,
}

/// The segments and the writer.
pub(crate) struct Log {
    /// Every segment on disk that may hold unconsumed records, by base sequence number.
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    writer: Mutex<Writer>,
    push_sync: SyncGroup,
    /// The sequence number after the last record readers may see.
    published_next_seq: AtomicU64,
    /// Consumed segment files kept for reuse (see `pool`), at most `Options::segment_pool`.
    pool: Mutex<Vec<PathBuf>>,
    /// Held by a compaction, so that one runs at a time.
    compact_lock: Mutex<()>,
    /// Gaps between segments that `repair` retired (see `recovery::retired_ranges`). Set
    /// again when a shared queue's consumer reads the consumer files in full.
    retired: RwLock<BTreeMap<u64, u64>>,
    /// The next sequence number at open: pushes since open are counted by the distance to it.
    opened_next_seq: u64,
    /// How long the last sync this handle led for a shared queue took, in µs.
    last_shared_sync_us: AtomicU64,
}

impl Log {
    pub(crate) fn new(
        segments: BTreeMap<u64, Arc<Segment>>,
        writer: Writer,
        pool: Vec<PathBuf>,
        retired: BTreeMap<u64, u64>,
    ) -> Self {
        let next_seq = writer.next_seq;
        Log {
            segments: RwLock::new(segments),
            writer: Mutex::new(writer),
            push_sync: SyncGroup::new(next_seq),
            published_next_seq: AtomicU64::new(next_seq),
            pool: Mutex::new(pool),
            compact_lock: Mutex::new(()),
            retired: RwLock::new(retired),
            opened_next_seq: next_seq,
            last_shared_sync_us: AtomicU64::new(0),
        }
    }

    /// For a shared queue's later opener: no record counts as synced until this handle saw a
    /// sync cover it (a roll, a sync it led or asked for). The committed tail it attached at
    /// may hold records other processes pushed and nobody synced; the head's `synced_seq`,
    /// which this handle's consumer turns write, must not claim them, or a power loss that
    /// kept a later one of their writes and lost an earlier one would be refused at the next
    /// open as damage to synced records.
    pub(crate) fn nothing_known_synced(mut self) -> Self {
        self.push_sync = SyncGroup::new(0);
        self
    }

    /// Records pushed since open and visible to readers (the push path counts nothing: the
    /// sequence numbers do).
    pub(crate) fn pushed_since_open(&self) -> u64 {
        self.published_next_seq()
            .saturating_sub(self.opened_next_seq)
    }

    /// The push group commit's syncs and the records they made durable.
    pub(crate) fn commits(&self) -> (u64, u64) {
        self.push_sync.commits()
    }

    /// The sequence number after the last record readers may see.
    pub(crate) fn published_next_seq(&self) -> u64 {
        self.published_next_seq.load(Ordering::Acquire)
    }

    /// The segment starting at `base`, as the map holds it now.
    pub(crate) fn segment_at(&self, base: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&base)
            .cloned()
    }

    /// The segment after `base`, if there is one.
    pub(crate) fn segment_after(&self, base: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .range(base + 1..)
            .next()
            .map(|(_, segment)| segment.clone())
    }

    /// Every segment, in order.
    pub(crate) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Whether a segment based at `base` may follow one whose records end before `expected`:
    /// it continues it, or the numbers between were retired by `repair`.
    pub(crate) fn check_next_base(
        &self,
        expected: u64,
        base: u64,
    ) -> std::result::Result<(), SequenceBreak> {
        let retired = self.retired.read().unwrap_or_else(PoisonError::into_inner);
        check_next_base(expected, base, &retired)
    }

    /// Taken by a compaction, so that one runs at a time.
    pub(crate) fn lock_compaction(&self) -> MutexGuard<'_, ()> {
        lock(&self.compact_lock)
    }

    /// The segments wholly behind `durable_head`: those that start at or before it, but the
    /// last of them (the next one starts at or before the head). Only they are visited, so
    /// that compacting (at every open) does not walk every sealed segment.
    pub(crate) fn consumed_segments(&self, durable_head: u64) -> Vec<Arc<Segment>> {
        let segments = self.segments.read().unwrap_or_else(PoisonError::into_inner);
        let mut behind: Vec<Arc<Segment>> = segments
            .range(..=durable_head)
            .map(|(_, segment)| segment.clone())
            .collect();
        behind.pop();
        behind
    }

    /// Drops a consumed segment from the log (its file is deleted or pooled by the caller).
    pub(crate) fn forget_segment(&self, base: u64) {
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&base);
    }

    /// How many more files the pool takes, at most `max` in all.
    pub(crate) fn pool_room(&self, max: usize) -> usize {
        max.saturating_sub(lock(&self.pool).len())
    }

    /// Hands files, renamed durably into the pool, to later rolls.
    pub(crate) fn add_to_pool(&self, files: Vec<PathBuf>) {
        lock(&self.pool).extend(files);
    }

    /// Deletes the pooled files; returns how many and their bytes.
    pub(crate) fn release_pool(&self, storage: &dyn Storage) -> Result<(usize, u64)> {
        pool::release(storage, &mut lock(&self.pool))
    }

    /// Trims the zeros after the active segment's data (at a clean close).
    pub(crate) fn trim(&self) -> std::io::Result<()> {
        lock(&self.writer).trim()
    }

    /// Marks everything below `seq` durable for the push group commit.
    pub(crate) fn mark_durable(&self, seq: u64) {
        self.push_sync.mark_durable(seq);
    }

    /// Replaces the retired gaps (a shared queue's new consumer read them from the ack log).
    pub(crate) fn set_retired(&self, retired: BTreeMap<u64, u64>) {
        *self.retired.write().unwrap_or_else(PoisonError::into_inner) = retired;
    }

    pub(crate) fn push_batch(
        &self,
        env: &Env,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
    ) -> Result<Range<u64>> {
        if let Some(coordination) = &env.coordination {
            if !coordination.is_solo_writer() {
                return self.push_batch_shared(env, coordination, payloads, prefix);
            }
        }
        let batch_len = self.check_batch(env, payloads, prefix)?;
        let always = env.options.sync == SyncPolicy::Always;
        // Announced to the group commit, so that a leader lets this push join its sync.
        let _entered = always.then(|| self.push_sync.enter());
        let written = {
            let mut writer = self.lock_writer();
            if let Some(coordination) = &env.coordination {
                if !coordination.is_solo_writer() {
                    // The handle left solo while this push waited for the writer.
                    drop(writer);
                    return self.push_batch_shared(env, coordination, payloads, prefix);
                }
            }
            if payloads.is_empty() {
                return Ok(writer.next_seq..writer.next_seq);
            }
            self.write_locked(
                env,
                &mut writer,
                payloads,
                prefix,
                batch_len,
                Bound::Enforced,
            )?
        };
        self.complete(env, written)
    }

    /// [`push_batch`](Log::push_batch) of a shared queue (not solo).
    #[inline(never)]
    fn push_batch_shared(
        &self,
        env: &Env,
        coordination: &Coordination,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
    ) -> Result<Range<u64>> {
        let pushed = self.push_shared(env, coordination, payloads, prefix, None, Bound::Enforced);
        if let Err(Error::Full { .. }) = pushed {
            self.publish_committed(env, coordination)?;
        }
        pushed
    }

    /// One push with a deduplication id into a shared queue (see
    /// [`push_shared`](Log::push_shared)); as [`push_batch`](Log::push_batch), a push refused
    /// at the bound publishes what is committed first.
    pub(crate) fn push_dedup_shared(
        &self,
        env: &Env,
        coordination: &Coordination,
        payload: &[u8],
        prefix: BodyPrefix,
        step: &mut DedupStep<'_>,
        bound: Bound,
    ) -> Result<u64> {
        let payloads = std::slice::from_ref(&payload);
        let pushed = self.push_shared(env, coordination, payloads, prefix, Some(step), bound);
        if let Err(Error::Full { .. }) = pushed {
            self.publish_committed(env, coordination)?;
        }
        pushed.map(|range| range.start)
    }

    /// One `push`. Under the policies that publish while writing, nothing is left to do once
    /// the frame is written, so the write is all there is.
    pub(crate) fn push_one(&self, env: &Env, payload: &[u8]) -> Result<u64> {
        let payloads = std::slice::from_ref(&payload);
        if let Some(coordination) = &env.coordination {
            if coordination.is_solo_writer() {
                return self.push_one_solo(env, coordination, payloads);
            }
            return self.push_one_shared(env, coordination, payloads);
        }
        if env.options.sync == SyncPolicy::Always {
            return self
                .push_batch(env, payloads, BodyPrefix::NONE)
                .map(|range| range.start);
        }
        let frame_len = self.check_batch(env, payloads, BodyPrefix::NONE)?;
        let mut writer = self.lock_writer();
        self.write_one(env, &mut writer, payloads, frame_len)
    }

    /// The write of one plain record with the writer held; returns its sequence number.
    #[inline(always)]
    fn write_one(
        &self,
        env: &Env,
        writer: &mut Writer,
        payloads: &[&[u8]],
        frame_len: u64,
    ) -> Result<u64> {
        let seq = writer.next_seq;
        self.write_locked(
            env,
            writer,
            payloads,
            BodyPrefix::NONE,
            frame_len,
            Bound::Enforced,
        )?;
        Ok(seq)
    }

    /// [`push_one`](Log::push_one) of a solo handle (never under `Always`): as an exclusive
    /// queue's, unless the handle left solo before this push took the writer.
    #[inline(always)]
    fn push_one_solo(
        &self,
        env: &Env,
        coordination: &Coordination,
        payloads: &[&[u8]],
    ) -> Result<u64> {
        let frame_len = self.check_batch(env, payloads, BodyPrefix::NONE)?;
        let mut writer = self.lock_writer();
        // Settled under the writer lock.
        if !coordination.is_solo_writer() {
            drop(writer);
            return self.push_one_shared(env, coordination, payloads);
        }
        self.write_one(env, &mut writer, payloads, frame_len)
    }

    /// [`push_one`](Log::push_one) of a shared queue, not solo:
    /// [`push_batch`](Log::push_batch)'s shared branch, without the batch's range passed up
    /// through it.
    #[inline(never)]
    fn push_one_shared(
        &self,
        env: &Env,
        coordination: &Coordination,
        payloads: &[&[u8]],
    ) -> Result<u64> {
        match self.push_shared(
            env,
            coordination,
            payloads,
            BodyPrefix::NONE,
            None,
            Bound::Enforced,
        ) {
            Ok(range) => Ok(range.start),
            Err(error) => {
                if let Error::Full { .. } = error {
                    self.publish_committed(env, coordination)?;
                }
                Err(error)
            }
        }
    }

    /// Checks a batch against the limits; returns its encoded length.
    #[inline(always)]
    pub(crate) fn check_batch(
        &self,
        env: &Env,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
    ) -> Result<u64> {
        env.check_poisoned()?;
        let max = env.options.get_max_record_size();
        let mut batch_len = 0u64;
        for payload in payloads {
            if payload.len() > max {
                return Err(Error::RecordTooLarge {
                    len: payload.len(),
                    max,
                });
            }
            let body_len = frame::body_len(payload.len(), prefix);
            batch_len += frame::frame_len(body_len) as u64;
        }
        if batch_len > env.options.segment_room() {
            return Err(Error::BatchTooLarge {
                len: batch_len,
                max: env.options.segment_room(),
            });
        }
        Ok(batch_len)
    }

    /// The writer, locked: while it is held no other push can take a sequence number.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Writes a checked, non-empty batch at the tail. Under every policy the bytes are in the
    /// kernel when this returns; [`complete`](Log::complete) makes them durable and visible.
    pub(crate) fn write_locked(
        &self,
        env: &Env,
        writer: &mut Writer,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
        batch_len: u64,
        bound: Bound,
    ) -> Result<Written> {
        debug_assert!(!payloads.is_empty());
        check_room(writer, payloads.len())?;
        // The only cost of the bound to an unbounded queue: this branch.
        if let Some(limits) = &env.limits {
            match bound {
                Bound::Enforced => limits.reserve(payloads.len() as u64, batch_len)?,
                Bound::Waived => limits.add_past_bound(payloads.len() as u64, batch_len),
            }
        }
        let enqueued_us = if env.options.precise_timestamps {
            now_micros()
        } else {
            coarse_now_micros()
        };
        let has_records = writer.tail > SEGMENT_HEADER_LEN as u64;
        if has_records && writer.tail + batch_len > env.options.segment_size {
            if let Err(error) = self.roll(env, writer) {
                if let Some(limits) = &env.limits {
                    limits.unreserve(payloads.len() as u64, batch_len);
                }
                return Err(error);
            }
        }
        let first = writer.next_seq;
        let appended = writer.append(
            payloads,
            batch_len,
            enqueued_us,
            prefix,
            env.options.segment_size,
        );
        if let Err(failure) = appended {
            if let Some(limits) = &env.limits {
                limits.unreserve(payloads.len() as u64, batch_len);
            }
            return Err(if failure.poison {
                env.poison(failure.error)
            } else {
                failure.error
            });
        }
        if writer.publishes_on_write {
            // Not under `Always`, nor in a shared queue but by a solo handle: a shared queue's
            // readers see the batch once it is committed (`push_shared`).
            self.publish_written(env, writer);
        }
        Ok(Written {
            segment: (env.options.sync == SyncPolicy::Always).then(|| writer.active.clone()),
            range: first..writer.next_seq,
            end: writer.tail,
        })
    }

    /// Shows this handle's readers everything the writer wrote, under the policies that do not
    /// wait for a sync. Under the writer lock, the only place this segment's end and the
    /// published sequence number move under these policies (but sealing, also under the lock):
    /// plain stores, not read-modify-writes.
    #[inline]
    fn publish_written(&self, env: &Env, writer: &Writer) {
        writer.active.publish_locked(writer.tail);
        self.published_next_seq
            .store(writer.next_seq, Ordering::Release);
        env.arrivals.notify();
    }

    /// Finishes a write: under [`SyncPolicy::Always`], waits until it is durable (sharing the
    /// sync with concurrent writers) and only then shows it to readers.
    pub(crate) fn complete(&self, env: &Env, written: Written) -> Result<Range<u64>> {
        if env.options.sync == SyncPolicy::Always {
            self.push_sync
                .wait(written.range.end, || self.sync_data_timed(env))
                .map_err(|error| env.poison(error))?;
            // Readers see a record only once it is durable.
            if let Some(segment) = &written.segment {
                segment.publish(written.end);
            }
            self.published_next_seq
                .fetch_max(written.range.end, Ordering::SeqCst);
            env.arrivals.notify();
        }
        Ok(written.range)
    }

    /// [`sync_data`](Log::sync_data) (in a shared queue, of the committed tail), timed for the
    /// fsync histogram (feature `metrics`).
    pub(crate) fn sync_data_timed(&self, env: &Env) -> Result<u64> {
        #[cfg(feature = "metrics")]
        let began = std::time::Instant::now();
        // A shared queue's tail may be in a segment other processes started since this
        // handle's last push: sync what was committed, not what this writer last wrote.
        let covered = match &env.coordination {
            // A solo handle's `control` is not current: its writer's tail is the log's.
            Some(coordination) if !coordination.is_solo_writer() => self
                .sync_committed(env, coordination)
                .map(|committed| committed.next_seq),
            _ => self.sync_data(),
        };
        #[cfg(feature = "metrics")]
        env.telemetry.fsync_took(began.elapsed());
        covered
    }

    /// Syncs the active segment; returns the sequence number below which all is durable.
    pub(crate) fn sync_data(&self) -> Result<u64> {
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
    fn roll(&self, env: &Env, writer: &mut Writer) -> Result<()> {
        // Sealed segments are always durable, so damage in one is never a torn write; their
        // length is their data's (the zeros ahead of the tail are cut first).
        if let Err(error) = writer.trim().and_then(|()| writer.file.sync_data()) {
            let error = Error::io("sync segment", &writer.active.path, error);
            return Err(env.poison(error));
        }
        self.push_sync.mark_durable(writer.next_seq);
        let pooled = lock(&self.pool).pop();
        let reused = match pooled {
            Some(pooled) => match pool::reuse(
                &*env.storage,
                &env.dir,
                &pooled,
                writer.next_seq,
                env.options.segment_size,
            ) {
                Ok(reused) => Some(reused),
                // A file that may still carry the new segment's name: the state is unknown.
                Err(failure) if failure.leftover => return Err(env.poison(failure.error)),
                // The pool file is gone: make a fresh segment instead.
                Err(_) => None,
            },
            None => None,
        };
        let (segment, file, len) = match reused {
            Some(reused) => reused,
            None => {
                let (segment, file) = crate::engine::segment::create_segment_or_clean_up(
                    &*env.storage,
                    &env.dir,
                    writer.next_seq,
                    env.options.segment_size,
                )
                .map_err(|failure| match failure.leftover {
                    true => env.poison(failure.error),
                    false => failure.error,
                })?;
                (segment, file, SEGMENT_HEADER_LEN as u64)
            }
        };
        failpoint::reached("roll.created");
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment.base_seq, segment.clone());
        writer.active.seal(writer.tail);
        writer.start_segment(segment, file, len);
        // Readers of this handle may now find the new segment in the map (a race the tests
        // force here).
        failpoint::reached("roll.switched");
        Ok(())
    }

    /// A push into a queue shared by several processes: under `tail.lock`, catch up with the
    /// committed tail (repairing what a dead writer left), write as an exclusive queue does,
    /// then commit. Under `Always` the batch is synced before it is committed, so that no
    /// process reads a record that is not durable.
    ///
    /// With `dedup` (one record with a deduplication id), the id is looked up under the lock,
    /// after the dirty mark (a death while the deduplication log is read, settled or rewritten
    /// is repaired like one in the middle of a push): if a push with it was committed, nothing
    /// is written and its number is returned (`DedupStep::found`); otherwise its entry is
    /// written before the record.
    pub(crate) fn push_shared(
        &self,
        env: &Env,
        coordination: &Coordination,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
        mut dedup: Option<&mut DedupStep<'_>>,
        bound: Bound,
    ) -> Result<Range<u64>> {
        let batch_len = self.check_batch(env, payloads, prefix)?;
        if coordination.is_poisoned() {
            return Err(shared_poison());
        }
        let always = env.options.sync == SyncPolicy::Always;
        let range = {
            // Counted until the commit: a sync leader waits a little for this batch.
            let _inside = always.then(|| coordination.enter_push());
            let mut writer = self.lock_writer();
            let _tail = coordination.lock_tail();
            let committed = match Self::caught_up_tail(coordination, &writer) {
                Some(committed) => committed,
                None => self.take_up_tail(env, coordination, &mut writer)?,
            };
            if payloads.is_empty() {
                return Ok(writer.next_seq..writer.next_seq);
            }
            if let Some(step) = dedup.as_deref_mut() {
                if let Some(seq) = self.dedup_find(env, coordination, &writer, step)? {
                    drop((_tail, writer, _inside));
                    if always {
                        // Its record may wait for the sync that covers it.
                        self.wait_durable(env, coordination, seq + 1)?;
                    }
                    return Ok(seq..seq + 1);
                }
            }
            if let (Some(limits), Bound::Enforced) = (&env.limits, bound) {
                // A refused push leaves nothing to repair.
                limits.check(payloads.len() as u64, batch_len)?;
            }
            // From here until the commit, a death leaves the log past the committed tail: the
            // next writer cuts it (`repair_tail`).
            coordination.set_dirty();
            failpoint::reached("shared.dirty");
            if let Some(step) = dedup {
                self.dedup_remember(env, coordination, &writer, step)?;
            }
            let base_before = writer.active.base_seq;
            let written =
                match self.write_locked(env, &mut writer, payloads, prefix, batch_len, bound) {
                    Ok(written) => written,
                    Err(error) => {
                        // Cut at once what the failed write left past the committed tail (a
                        // roll's new segment, which this handle's map holds, and the segment
                        // it sealed, which stays the committed one), as the next writer
                        // would: until then this handle's reader and compactor would take the
                        // new segment for the log's. A repair that fails poisons the handle.
                        let _ = self.take_up_tail(env, coordination, &mut writer);
                        return Err(error);
                    }
                };
            failpoint::reached("shared.written");
            let committed = CommittedTail {
                base: writer.active.base_seq,
                tail: writer.tail,
                next_seq: writer.next_seq,
                // The tail taken up above: a bounded queue's usage counts from these totals.
                pushed_bytes: committed.pushed_bytes + batch_len,
            };
            coordination.set_prepared_end(writer.active.base_seq, writer.prepared_end());
            let generation = coordination.commit(committed);
            writer.caught_up = Some((generation, committed));
            if !always {
                // Readers of every process read up to the published tail: under the policies
                // that do not sync each push, that is the committed one. This handle's too:
                // not before the commit, or a consumer could take a record that a kill before
                // the commit leaves to be cut, and its number to be given to another.
                coordination.publish_pushed(committed);
                self.publish_written(env, &writer);
            }
            if writer.active.base_seq != base_before {
                // Segments the consumer (another process) deleted stay in this handle's map,
                // with their files open, until it looks: once per roll. Housekeeping only: a
                // failure is met again at the next roll.
                let _ = self.forget_deleted_segments(env);
            }
            written.range
        };
        if always {
            failpoint::reached("shared.committed");
            // Out of `inside` by now: a leader woken by this mark sees this push done.
            coordination.mark_committed(now_micros());
            // Committed, not yet durable: readers see it once a sync covered it, by whichever
            // process leads the next one (a group commit across processes).
            self.wait_durable(env, coordination, range.end)?;
        }
        Ok(range)
    }

    /// A solo handle leaving solo (`Shared::leave_solo`), with the writer held: commits and
    /// publishes the tail it wrote, with the zeros prepared ahead of it, and ends the writer's
    /// solo, as a push commits
    /// (the bytes pushed in all are left as the tail in `control` gives them: a queue with a
    /// bound, which counts them, is never solo).
    pub(crate) fn commit_solo_tail(&self, coordination: &Coordination, writer: &mut Writer) {
        let _tail = coordination.lock_tail();
        let (_, known) = coordination.committed();
        let committed = CommittedTail {
            base: writer.active.base_seq,
            tail: writer.tail,
            next_seq: writer.next_seq,
            pushed_bytes: known.pushed_bytes,
        };
        coordination.set_prepared_end(writer.active.base_seq, writer.prepared_end());
        let generation = coordination.commit(committed);
        writer.caught_up = Some((generation, committed));
        coordination.publish_pushed(committed);
        // From now on its batches are shown once committed, as every shared writer's, and
        // its pushes take the tail lock: both settled here, under the writer lock.
        writer.publishes_on_write = false;
        coordination.stop_solo_writer();
    }

    /// Under the tail lock: the committed tail, if the writer is at it (no other handle
    /// committed, failed or repaired since this writer last committed or caught up: nothing is
    /// read). `None`: the writer must [`take_up_tail`](Log::take_up_tail).
    #[inline(always)]
    fn caught_up_tail(coordination: &Coordination, writer: &Writer) -> Option<CommittedTail> {
        writer
            .caught_up
            .filter(|&(generation, _)| {
                coordination.is_unchanged_since(generation, writer.seen_repairs)
            })
            .map(|(_, committed)| committed)
    }

    /// A handle becoming solo again (`Shared::try_enter_solo`), alone, first step: under the
    /// tail lock, brings the writer up to the committed tail (repairing what a writer that
    /// died left past it) and shows every committed record, to every process and to this
    /// handle's readers. Changes no flag: a failure leaves the handle as it was.
    pub(crate) fn take_up_for_solo(&self, env: &Env, coordination: &Coordination) -> Result<()> {
        let mut writer = self.lock_writer();
        let _tail = coordination.lock_tail();
        let committed = match Self::caught_up_tail(coordination, &writer) {
            Some(committed) => committed,
            None => self.take_up_tail(env, coordination, &mut writer)?,
        };
        // A writer that died between its commit and its publication left records unshown.
        coordination.publish(committed);
        self.publish_tail(env, coordination.published());
        Ok(())
    }

    /// A handle becoming solo again, last step, with the writer held: its pushes run the solo
    /// way from now on (shown to this handle's readers as written, committed in `control`
    /// when it leaves solo: [`commit_solo_tail`](Log::commit_solo_tail)). The writer is at
    /// the committed tail: no other handle lives, and this one's own pushes since
    /// [`take_up_for_solo`](Log::take_up_for_solo) committed.
    pub(crate) fn start_solo_writer(&self, coordination: &Coordination, writer: &mut Writer) {
        writer.publishes_on_write = true;
        coordination.start_solo_writer();
    }

    /// The first step of [`push_shared`](Log::push_shared) when another handle may have
    /// changed the log, under the tail lock: repairs what a writer that died or failed left,
    /// and brings this writer up to the committed tail. Returns that tail.
    #[inline(never)]
    fn take_up_tail(
        &self,
        env: &Env,
        coordination: &Coordination,
        writer: &mut Writer,
    ) -> Result<CommittedTail> {
        writer.caught_up = None;
        if coordination.is_dirty() {
            self.repair_tail(env, coordination)?;
        }
        let (generation, committed) = coordination.committed();
        let repairs = coordination.repairs();
        if writer.seen_repairs != repairs {
            // A repair may have cut the file under this writer's mapping of it (a store
            // there would be a SIGBUS): start again from the committed tail.
            writer.seen_repairs = repairs;
            writer.forget_mapping();
        }
        self.catch_up(env, writer, committed)?;
        if let Some(end) = coordination.prepared_end(writer.active.base_seq) {
            writer.adopt_prepared(end);
        }
        writer.caught_up = Some((generation, committed));
        Ok(committed)
    }

    /// The first deduplication step of [`push_shared`](Log::push_shared), under the tail
    /// lock: catches up with the log (settled first if no handle did since `control` was
    /// built; a rewrite by rename, so a death in it leaves the old log or the new one) and
    /// looks the id up. Returns the number of the push with it, if one was committed.
    fn dedup_find(
        &self,
        env: &Env,
        coordination: &Coordination,
        writer: &Writer,
        step: &mut DedupStep<'_>,
    ) -> Result<Option<u64>> {
        let storage = &*env.storage;
        let (mut generation, mut tail) = coordination.dedup_log();
        if generation == 0 {
            // An earlier life of the queue may have left entries past its records.
            tail = crate::engine::dedup::settle_shared(storage, &env.dir, writer.next_seq)?
                .unwrap_or(0);
            generation = 1;
            coordination.set_dedup_log(generation, tail);
        }
        step.dedup
            .catch_up_shared(storage, generation, tail, step.now_us)?;
        step.found = step.dedup.lookup(step.id, step.now_us);
        Ok(step.found)
    }

    /// The second deduplication step, under the dirty mark (a death from here on is repaired,
    /// and the repair settles the log): writes the id's entry for the record
    /// `writer.next_seq` (synced under `Always`), and records where the log now ends.
    fn dedup_remember(
        &self,
        env: &Env,
        coordination: &Coordination,
        writer: &Writer,
        step: &mut DedupStep<'_>,
    ) -> Result<()> {
        check_room(writer, 1)?;
        let (mut generation, _) = coordination.dedup_log();
        let rewritten =
            step.dedup
                .remember(&*env.storage, step.id, writer.next_seq, step.now_us)?;
        if env.options.sync == SyncPolicy::Always {
            step.dedup.sync()?;
        }
        if rewritten {
            generation += 1;
            step.dedup.set_generation(generation);
        }
        coordination.set_dedup_log(generation, step.dedup.position().1);
        failpoint::reached("shared.dedup");
        Ok(())
    }

    /// Under `Always`, in a shared queue: returns once every record below `end` is synced.
    /// Whoever gets the sync lock syncs the active segment for every producer waiting, and
    /// publishes the tail it covered; the others sleep on the arrivals word until it moved far
    /// enough (or its holder is gone: then one of them leads).
    fn wait_durable(&self, env: &Env, coordination: &Coordination, end: u64) -> Result<()> {
        loop {
            if coordination.is_poisoned() {
                return Err(shared_poison());
            }
            let seen = coordination.arrivals();
            // The synced sequence number, not the published tail: a handle under another
            // policy publishes what it commits, with the records before it that no sync
            // covered yet.
            if coordination.synced_next_seq() >= end {
                self.publish_tail(env, coordination.published());
                return Ok(());
            }
            if let Some(_leading) = coordination.try_lock_sync() {
                let synced_before = coordination.synced_next_seq();
                if synced_before >= end {
                    self.publish_tail(env, coordination.published());
                    return Ok(());
                }
                failpoint::reached("shared.sync");
                // Gather: producers on their way to a commit are worth waiting for, up to a
                // sync's time (the sync costs more than the wait): those inside a push, and
                // those that pushed recently, on their way back.
                let bound = self.gather_bound();
                let gather_until = std::time::Instant::now() + bound;
                let window_us = 4 * u64::try_from(bound.as_micros()).unwrap_or(u64::MAX);
                coordination.gather(gather_until, || {
                    !coordination.producers_inside()
                        && coordination.producers_to_gather(now_micros(), window_us) == 0
                });
                coordination.begin_sync(now_micros());
                let began = std::time::Instant::now();
                let synced = self.sync_committed(env, coordination);
                self.last_shared_sync_us.store(
                    u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX),
                    Ordering::Relaxed,
                );
                let covered = match synced {
                    Ok(covered) => {
                        self.push_sync
                            .count_shared_sync(covered.next_seq.saturating_sub(synced_before));
                        self.push_sync.mark_durable(covered.next_seq);
                        covered
                    }
                    Err(error) => {
                        coordination.poison();
                        return Err(env.poison(error));
                    }
                };
                // Publishers are serialised by the tail lock (a push publishes under it too).
                let _tail = coordination.lock_tail();
                coordination.publish_synced(covered);
                continue;
            }
            coordination.sleep_for_arrival(seen, SYNC_WAIT);
        }
    }

    /// After a push of a bounded shared queue was refused: publishes what is committed and not
    /// yet published (synced first under `Always`). Such records are left by a producer that
    /// died between its commit and the publication (or the sync) that would have shown them;
    /// the next push would publish them, but at the bound no push commits, while the usage
    /// counts them: consumers must see them to make room.
    #[cold]
    fn publish_committed(&self, env: &Env, coordination: &Coordination) -> Result<()> {
        let (_, committed) = coordination.committed();
        if committed.next_seq <= coordination.published().next_seq {
            return Ok(());
        }
        if env.options.sync == SyncPolicy::Always {
            return self.wait_durable(env, coordination, committed.next_seq);
        }
        let tail = coordination.lock_tail();
        let (_, committed) = coordination.committed();
        coordination.publish(committed);
        drop(tail);
        self.take_up_published(env, coordination, committed)
    }

    /// How long a sync leader waits for producers still on their way to a commit: as long as
    /// the last sync this handle led (waiting costs less than the sync it saves), at most
    /// `GATHER_MAX`.
    fn gather_bound(&self) -> std::time::Duration {
        let last_sync_us = self.last_shared_sync_us.load(Ordering::Relaxed);
        std::time::Duration::from_micros(last_sync_us).min(GATHER_MAX)
    }

    /// Syncs the segment the committed tail is in; returns that tail (all below it durable:
    /// the segments before it were synced when they were sealed).
    fn sync_committed(&self, env: &Env, coordination: &Coordination) -> Result<CommittedTail> {
        let (file, path, committed) = {
            let mut writer = self.lock_writer();
            let (_, committed) = coordination.committed();
            if committed.next_seq > writer.next_seq || committed.base > writer.active.base_seq {
                self.catch_up(env, &mut writer, committed)?;
            }
            (
                writer.file.clone(),
                writer.active.path.to_path_buf(),
                committed,
            )
        };
        file.sync_data()
            .map_err(|error| Error::io("sync segment", path, error))?;
        Ok(committed)
    }

    /// Shows readers of this handle the records up to a tail published in `control` (under
    /// `Always`, synced; under the other policies, only written).
    fn publish_tail(&self, env: &Env, durable: CommittedTail) {
        let segment = self
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&durable.base)
            .cloned();
        if let Some(segment) = segment {
            segment.publish(durable.tail);
        }
        // Not marked durable here: a handle under `Never` publishes what no sync covered. Only
        // the syncs this handle ran or saw (`sync_committed`, rolls) say what the head may
        // record as synced.
        self.published_next_seq
            .fetch_max(durable.next_seq, Ordering::SeqCst);
        env.arrivals.notify();
    }

    /// Cuts what a writer that died (or failed) under `tail.lock` left past the committed
    /// tail: segments it created after the committed one, and bytes after the committed tail.
    /// Nothing there was committed, so no reader has seen it and no push that wrote it
    /// returned.
    fn repair_tail(&self, env: &Env, coordination: &Coordination) -> Result<()> {
        let (_, committed) = coordination.committed();
        let storage = &*env.storage;
        let mut segments_removed = 0;
        for base in segment_bases(storage, &env.dir)?.range(committed.base + 1..) {
            let path = env.dir.join(segment_file_name(*base));
            storage
                .remove_file(&path)
                .map_err(|error| env.poison(Error::io("remove unborn segment", &path, error)))?;
            self.forget_segment(*base);
            segments_removed += 1;
        }
        // Also when this repair removed nothing: a repairer that died before it synced the
        // directory may have removed the unborn segment, whose durable entry a power loss would
        // bring back beside the records appended to the committed segment from now on.
        storage
            .sync_dir(&env.dir)
            .map_err(|error| env.poison(Error::io("sync queue directory", &env.dir, error)))?;
        let path = env.dir.join(segment_file_name(committed.base));
        let file = storage
            .open(&path)
            .map_err(|error| Error::io("open segment", &path, error))?;
        let len = file
            .len()
            .map_err(|error| Error::io("stat segment", &path, error))?;
        let bytes_cut = len.saturating_sub(committed.tail);
        if bytes_cut > 0 {
            file.set_len(committed.tail)
                .map_err(|error| env.poison(Error::io("cut torn tail", &path, error)))?;
        }
        // The cut durable before anything is written over it: a sync (of any handle) may have
        // made the dead writer's frames durable, and a power loss that kept the frames written
        // over the first of them but not the cut would bring the others back, a part of a push
        // that never returned. Also when nothing was cut here: a repairer that died before
        // this sync may have cut them.
        file.sync_data()
            .map_err(|error| env.poison(Error::io("sync cut segment", &path, error)))?;
        // The zeros ahead went with the cut.
        coordination.set_prepared_end(committed.base, committed.tail);
        // The dead writer may have written a deduplication entry for a record it never
        // committed, or died rewriting the log: settled, and every handle reads it again.
        let dedup_tail = crate::engine::dedup::settle_shared(storage, &env.dir, committed.next_seq)
            .map_err(|error| env.poison(error))?;
        if let Some(dedup_tail) = dedup_tail {
            let (generation, _) = coordination.dedup_log();
            coordination.set_dedup_log(generation + 1, dedup_tail);
        }
        let dead_pid = coordination.take_tail_death();
        coordination.count_repair();
        coordination.clear_dirty();
        env.counters.took_over(crate::stats::TakeoverKind::Tail, 1);
        #[cfg(feature = "tracing")]
        crate::engine::events::tail_repaired(
            &env.options.name_for(&env.dir),
            dead_pid,
            committed.next_seq,
            segments_removed,
            bytes_cut,
        );
        #[cfg(not(feature = "tracing"))]
        let _ = (dead_pid, segments_removed, bytes_cut);
        Ok(())
    }

    /// Brings this handle's writer and segments up to a tail committed by any process: the
    /// same segment further on, or segments other processes started.
    fn catch_up(&self, env: &Env, writer: &mut Writer, committed: CommittedTail) -> Result<()> {
        // Set again by the caller that knows the tail's generation.
        writer.caught_up = None;
        // Readers see only the published tail (`publish_tail`), which a push under `Always`
        // moves once a sync covered it: nothing is published here.
        if committed.base == writer.active.base_seq {
            if committed.tail != writer.tail || committed.next_seq != writer.next_seq {
                writer.adopt(committed.tail, committed.next_seq);
            }
        } else {
            let (segment, file) = self.adopt_segments(env, committed)?;
            let previous = std::mem::replace(&mut writer.active, segment.clone());
            if previous.base_seq < committed.base && !previous.is_sealed() {
                // Rolled by another process: cut to its records and synced before the next
                // segment was created, so its length is its end.
                let len = writer
                    .file
                    .len()
                    .map_err(|error| Error::io("stat segment", &previous.path, error))?;
                previous.seal(len);
            }
            writer.start_segment(segment.clone(), file, committed.tail);
            writer.adopt(committed.tail, committed.next_seq);
        }
        Ok(())
    }

    /// The segments other processes created up to the committed active one, added to this
    /// handle's map (sealed ones unopened, as at open); returns the active one and its file.
    fn adopt_segments(
        &self,
        env: &Env,
        committed: CommittedTail,
    ) -> Result<(Arc<Segment>, Arc<dyn StorageFile>)> {
        let on_disk = segment_bases(&*env.storage, &env.dir)?;
        let (active, file) =
            open_committed_active(&*env.storage, &env.dir, env.options.segment_size, committed)?;
        let shared_dir: Arc<Path> = Arc::from(env.dir.as_path());
        let mut segments = self
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let newest_known = segments.keys().next_back().copied().unwrap_or(0);
        let unknown = on_disk
            .iter()
            .filter(|&&base| base > newest_known && base < committed.base);
        for &base in unknown {
            let path = SegmentPath::lazy(shared_dir.clone(), base);
            segments.insert(base, Arc::new(Segment::unopened(base, path)));
        }
        // Consumed segments the consumer deleted: their files are closed with them.
        segments.retain(|base, _| on_disk.contains(base) || *base >= committed.base);
        let active = match segments.get(&committed.base) {
            // Already known (a reader of this handle adopted it first).
            Some(known) if !known.is_sealed() => known.clone(),
            known => {
                // Known and sealed: this handle rolled past it, and that push failed. What it
                // showed this handle's readers stays shown (a reader at the end of the sealed
                // object goes on in this one).
                if let Some(known) = known {
                    active.publish(known.readable_end());
                }
                segments.insert(committed.base, active.clone());
                active
            }
        };
        Ok((active, file))
    }

    /// Drops the segments whose files are gone (a shared queue's earlier consumer compacted
    /// them) from this handle's map. A segment newer than every file listed stays: a consumer
    /// calls this without the writer lock, and this handle's writer may have created it after
    /// the listing (compaction never deletes the newest segment).
    pub(crate) fn forget_deleted_segments(&self, env: &Env) -> Result<()> {
        let on_disk = segment_bases(&*env.storage, &env.dir)?;
        failpoint::reached("segments.listed");
        let newest_listed = on_disk.iter().next_back().copied().unwrap_or(0);
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|base, _| on_disk.contains(base) || *base > newest_listed);
        Ok(())
    }

    /// For a reader of a shared queue: takes up what other processes committed since this
    /// handle last looked (one load when nothing moved).
    pub(crate) fn refresh(&self, env: &Env) -> Result<()> {
        let Some(coordination) = &env.coordination else {
            return Ok(());
        };
        if let Some(committed) = coordination.committed_if_moved() {
            let mut writer = self.lock_writer();
            // Not this handle's own pushes, committed since the load above.
            if committed.next_seq > writer.next_seq || committed.base > writer.active.base_seq {
                self.catch_up(env, &mut writer, committed)?;
            }
        }
        if let Some(published) = coordination.published_if_moved() {
            self.take_up_published(env, coordination, published)?;
        }
        Ok(())
    }

    /// Shows this handle's readers the records up to a tail published in `control`.
    pub(crate) fn take_up_published(
        &self,
        env: &Env,
        coordination: &Coordination,
        published: CommittedTail,
    ) -> Result<()> {
        let known = self
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&published.base);
        if !known {
            // Published into a segment rolled after the committed tail read above: the
            // committed tail, never behind the published one, is taken up first, so that
            // the segments before are sealed and this one is there to publish into.
            let (_, committed) = coordination.committed();
            let mut writer = self.lock_writer();
            if committed.next_seq > writer.next_seq || committed.base > writer.active.base_seq {
                self.catch_up(env, &mut writer, committed)?;
            }
        }
        self.publish_tail(env, published);
        Ok(())
    }

    /// Every record below this sequence number is synced.
    pub(crate) fn synced_seq(&self) -> u64 {
        self.push_sync.durable()
    }
}

/// How long a producer waiting for another process's sync sleeps before it looks whether
/// that process is gone (then it syncs itself).
const SYNC_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// A push with a deduplication id into a shared queue (see [`Log::push_shared`]).
pub(crate) struct DedupStep<'a> {
    /// This handle's map of the ids.
    pub(crate) dedup: &'a mut crate::engine::dedup::Dedup,
    /// The push's id.
    pub(crate) id: &'a [u8],
    /// When the push was made.
    pub(crate) now_us: u64,
    /// The number of the push with the same id that was found: nothing was written.
    pub(crate) found: Option<u64>,
}

/// The longest a sync leader of a shared queue waits for producers on their way to a commit.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_millis(1);

/// The error of a shared queue whose sync failed in some handle.
fn shared_poison() -> Error {
    Error::Poisoned {
        cause: "a sync failed in a process sharing this queue; close every handle and reopen \
                it (recovery finds what is on the disk)"
            .into(),
    }
}

/// The bases of the segment files in a queue directory.
pub(crate) fn segment_bases(storage: &dyn Storage, dir: &Path) -> Result<BTreeSet<u64>> {
    let names = storage
        .list_dir(dir)
        .map_err(|error| Error::io("list queue directory", dir, error))?;
    Ok(names
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .collect())
}

/// A shared queue's committed active segment, opened by a handle that did not create it:
/// readable from its header on, up to the published tail once it is taken up.
pub(crate) fn open_committed_active(
    storage: &dyn Storage,
    dir: &Path,
    segment_size: u64,
    committed: CommittedTail,
) -> Result<(Arc<Segment>, Arc<dyn StorageFile>)> {
    let path = dir.join(segment_file_name(committed.base));
    let file: Arc<dyn StorageFile> = Arc::from(
        storage
            .open(&path)
            .map_err(|error| Error::io("open segment", &path, error))?,
    );
    let segment = Segment::active(
        committed.base,
        path,
        file.clone(),
        SEGMENT_HEADER_LEN as u64,
        segment_size.max(committed.tail),
    );
    Ok((Arc::new(segment), file))
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
            max: frame::SEQ_LIMIT - 1,
        });
    }
    Ok(())
}
