//! The log: the segments on disk and the writer at their tail. A push is checked, numbered and
//! written here under the writer lock; under `SyncPolicy::Always` it then waits for a group
//! commit before readers may see it. A roll seals the active segment (synced, trimmed) and
//! starts the next from the pool or a new file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::engine::clock::{coarse_now_micros, now_micros};
use crate::engine::env::Env;
use crate::engine::pool;
use crate::engine::segment::Segment;
use crate::engine::sync::{lock, SyncGroup};
use crate::engine::writer::Writer;
use crate::error::{Error, Result};
use crate::format::acklog::check_next_base;
use crate::format::frame::{self, BodyPrefix};
use crate::format::segment::SequenceBreak;
use crate::format::segment::SEGMENT_HEADER_LEN;
use crate::options::SyncPolicy;
use crate::storage::Storage;

/// Whether a write is held to the queue's bound (`Options::max_records`, `max_bytes`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A push: refused with `Error::Full` when it does not fit.
    Enforced,
    /// The copy of an accepted fanout rolled forward at open: written and counted regardless.
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
    /// Gaps between segments that `repair` retired (see `recovery::retired_ranges`).
    retired: BTreeMap<u64, u64>,
    /// The next sequence number at open: pushes since open are counted by the distance to it.
    opened_next_seq: u64,
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
            retired,
            opened_next_seq: next_seq,
        }
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
        check_next_base(expected, base, &self.retired)
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

    pub(crate) fn push_batch(
        &self,
        env: &Env,
        payloads: &[&[u8]],
        prefix: BodyPrefix,
    ) -> Result<Range<u64>> {
        let batch_len = self.check_batch(env, payloads, prefix)?;
        let always = env.options.sync == SyncPolicy::Always;
        // Announced to the group commit, so that a leader lets this push join its sync.
        let _entered = always.then(|| self.push_sync.enter());
        let written = {
            let mut writer = self.lock_writer();
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

    /// One `push`. Under the policies that publish while writing, nothing is left to do once
    /// the frame is written, so the write is all there is.
    pub(crate) fn push_one(&self, env: &Env, payload: &[u8]) -> Result<u64> {
        let payloads = std::slice::from_ref(&payload);
        if env.options.sync == SyncPolicy::Always {
            return self
                .push_batch(env, payloads, BodyPrefix::NONE)
                .map(|range| range.start);
        }
        let frame_len = self.check_batch(env, payloads, BodyPrefix::NONE)?;
        let mut writer = self.lock_writer();
        let seq = writer.next_seq;
        self.write_locked(
            env,
            &mut writer,
            payloads,
            BodyPrefix::NONE,
            frame_len,
            Bound::Enforced,
        )?;
        Ok(seq)
    }

    /// Checks a batch against the limits; returns its encoded length.
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
                    limits.release(payloads.len() as u64, batch_len);
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
                limits.release(payloads.len() as u64, batch_len);
            }
            return Err(if failure.poison {
                env.poison(failure.error)
            } else {
                failure.error
            });
        }
        if env.options.sync != SyncPolicy::Always {
            // Under the writer lock, the only place this segment's end and the published
            // sequence number move under these policies (but sealing, also under the lock):
            // plain stores, not read-modify-writes.
            writer.active.publish_locked(writer.tail);
            self.published_next_seq
                .store(writer.next_seq, Ordering::Release);
            env.arrivals.notify();
        }
        Ok(Written {
            segment: (env.options.sync == SyncPolicy::Always).then(|| writer.active.clone()),
            range: first..writer.next_seq,
            end: writer.tail,
        })
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

    /// [`sync_data`](Log::sync_data), timed for the fsync histogram (feature `metrics`).
    pub(crate) fn sync_data_timed(&self, env: &Env) -> Result<u64> {
        #[cfg(feature = "metrics")]
        let began = std::time::Instant::now();
        let covered = self.sync_data();
        #[cfg(feature = "metrics")]
        env.telemetry.fsync_took(began.elapsed());
        #[cfg(not(feature = "metrics"))]
        let _ = env;
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
        self.segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(segment.base_seq, segment.clone());
        writer.active.seal(writer.tail);
        writer.start_segment(segment, file, len);
        Ok(())
    }

    /// Every record below this sequence number is synced.
    pub(crate) fn synced_seq(&self) -> u64 {
        self.push_sync.durable()
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
            max: frame::SEQ_LIMIT - 1,
        });
    }
    Ok(())
}
