//! The consumer side of a queue: reading frames at the frontier, `pop`, `peek`, and the jobs
//! operations (`recv`, `ack`, release, dead letters), with the head index and the ack log.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use crate::engine::acklog::AckLog;
use crate::engine::compactor;
use crate::engine::head::HeadIndex;
use crate::engine::jobs::{DeadLetter, Delivery, Job, JobState, Jobs};
use crate::engine::queue::{now_micros, Queue, Record, Shared};
use crate::engine::segment::Segment;
use crate::engine::sync::lock;
use crate::error::{Error, Result};
use crate::format::acklog::{check_next_base, AckEntry};
use crate::format::frame::{self, PAYLOAD_LEN_MAX};
use crate::format::head::HeadState;
use crate::format::segment::{find_later_frame, is_free_space, SEGMENT_HEADER_LEN};
use crate::options::SyncPolicy;
use crate::storage::Mapping;

/// A read position: the next frame to read.
#[derive(Clone)]
pub(crate) struct Cursor {
    pub(crate) segment: Arc<Segment>,
    pub(crate) offset: u64,
    pub(crate) next_seq: u64,
    /// The segment's mapping as last seen, so that a read does not take the segment's lock
    /// while the mapping covers what it reads.
    pub(crate) view: Option<Mapping>,
}

impl Cursor {
    pub(crate) fn new(segment: Arc<Segment>, offset: u64, next_seq: u64) -> Self {
        Cursor {
            segment,
            offset,
            next_seq,
            view: None,
        }
    }

    /// A mapping of the cursor's segment at least `end` bytes long.
    fn view(&mut self, end: u64) -> Result<Mapping> {
        let covered = self
            .view
            .as_ref()
            .is_some_and(|view| (**view).as_ref().len() as u64 >= end);
        if !covered {
            self.view = Some(self.segment.view(end)?);
        }
        match &self.view {
            Some(view) => Ok(view.clone()),
            None => Err(Error::corrupt(&self.segment.path, 0, "segment not mapped")),
        }
    }

    /// Moves the cursor back to `seq`, whose frame starts at `offset` of the cursor's segment.
    fn rewind(&mut self, offset: u64, seq: u64) {
        self.offset = offset;
        self.next_seq = seq;
    }
}

/// Everything on the consumer side, under one lock.
pub(crate) struct Reader {
    /// The frontier: the first record never read in this process's life.
    pub(crate) cursor: Cursor,
    pub(crate) head: HeadIndex,
    /// Records tracked between the head and the frontier.
    pub(crate) jobs: Jobs,
    pub(crate) acklog: AckLog,
}

/// A record read at the frontier, with where its frame starts in the cursor's segment.
pub(crate) struct Found {
    pub(crate) record: Record,
    pub(crate) offset: u64,
}

impl Reader {
    /// Every record below this sequence number is consumed.
    pub(crate) fn head_seq(&self) -> u64 {
        self.jobs.first_seq().unwrap_or(self.cursor.next_seq)
    }

    /// The head as it should be written; `synced_seq` is how far the records are synced.
    fn head_state(&self, synced_seq: u64) -> HeadState {
        match self.jobs.entries.values().next() {
            Some(job) => HeadState {
                head_seq: job.record.seq(),
                hint_base: job.segment.base_seq,
                hint_offset: job.offset,
                synced_seq,
            },
            None => HeadState {
                head_seq: self.cursor.next_seq,
                hint_base: self.cursor.segment.base_seq,
                hint_offset: self.cursor.offset,
                synced_seq,
            },
        }
    }

    fn head_segment_base(&self) -> u64 {
        self.head_state(0).hint_base
    }

    /// Writes the head if it moved; returns the generation to sync.
    fn write_head_if_moved(&mut self, synced_seq: u64) -> Result<Option<u64>> {
        let state = self.head_state(synced_seq);
        if state.head_seq == self.head.state().head_seq {
            return Ok(None);
        }
        self.head.write(state).map(Some)
    }

    /// Records in the queue, given the highest published sequence number.
    pub(crate) fn len(&self, published_next_seq: u64) -> u64 {
        published_next_seq
            .saturating_sub(self.head_seq())
            .saturating_sub(self.jobs.acked_beyond_head(self.cursor.next_seq))
    }
}

/// The time, read at most once per operation and only when needed.
#[derive(Default)]
pub(crate) struct Clock(Option<u64>);

impl Clock {
    pub(crate) fn now_us(&mut self) -> u64 {
        *self.0.get_or_insert_with(now_micros)
    }
}

/// Where popped values go: a `Vec` for a batch, an `Option` for a single pop (no allocation).
pub(crate) trait Popped<T> {
    fn put(&mut self, value: T);
    fn count(&self) -> usize;
}

impl<T> Popped<T> for Vec<T> {
    fn put(&mut self, value: T) {
        self.push(value);
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl<T> Popped<T> for Option<T> {
    fn put(&mut self, value: T) {
        *self = Some(value);
    }
    fn count(&self) -> usize {
        usize::from(self.is_some())
    }
}

/// The outcome of one pop attempt.
enum Step<T> {
    Value(T),
    /// Nothing taken, but the state changed: try again.
    Again,
    End,
}

/// What a consumer operation must make durable before it returns.
#[derive(Default)]
struct Pending {
    head_generation: Option<u64>,
    ack_ticket: Option<u64>,
    head_segment_moved: bool,
    dead_letters: Vec<(u64, Record, u32)>,
}

/// Whether a frame that fails at `offset` of a sealed segment is only the end of its records:
/// free space follows (zeros to a 4 KiB boundary, or stale frames of a recycled file, which
/// never validate) and no valid frame of the segment lies beyond. The lock-free readers apply the
/// same rule (`inspect::scan_segment`); that the next segment starts right after the last
/// record is checked when the reader steps to it, so no record can be skipped.
fn sealed_segment_ends_here(
    segment: &Segment,
    bytes: &[u8],
    offset: usize,
    error: &frame::FrameError,
) -> bool {
    segment.is_sealed()
        && is_free_space(bytes, offset, error, segment.base_seq)
        && find_later_frame(bytes, offset, segment.base_seq, PAYLOAD_LEN_MAX).is_none()
}

impl Shared {
    /// Reads the record at `cursor` and advances it; `None` at the end of the queue.
    pub(crate) fn read_next(&self, cursor: &mut Cursor) -> Result<Option<Found>> {
        loop {
            let end = cursor.segment.readable_end();
            if cursor.offset < end {
                let (offset, next_seq) = (cursor.offset, cursor.next_seq);
                let view = cursor.view(end)?;
                let bytes = (*view).as_ref();
                let start = offset as usize;
                let at = bytes.get(start..end as usize).unwrap_or(&[]);
                let frame = match frame::decode(at, next_seq, PAYLOAD_LEN_MAX) {
                    Ok(frame) => frame,
                    Err(error) => {
                        let bytes = bytes.get(..end as usize).unwrap_or(&[]);
                        if sealed_segment_ends_here(&cursor.segment, bytes, start, &error) {
                            // Nothing but free space follows the last record: the next
                            // segment (checked below to start right after it) goes on.
                            cursor.offset = end;
                            continue;
                        }
                        return Err(Error::corrupt(
                            &cursor.segment.path,
                            offset,
                            error.to_string(),
                        ));
                    }
                };
                let record = Record::new(
                    next_seq,
                    frame.header.enqueued_us,
                    frame.not_before_us,
                    view,
                    start + frame.payload.start..start + frame.payload.end,
                );
                let found = Found { record, offset };
                cursor.offset += frame.frame_len as u64;
                cursor.next_seq += 1;
                return Ok(Some(found));
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
            if let Err(sequence_break) =
                check_next_base(cursor.next_seq, next.base_seq, &self.retired)
            {
                return Err(Error::corrupt(&next.path, 0, sequence_break.to_string()));
            }
            *cursor = Cursor::new(next.clone(), SEGMENT_HEADER_LEN as u64, next.base_seq);
        }
    }

    /// The oldest available tracked record, reading more from the frontier as needed.
    fn next_available(&self, reader: &mut Reader, now_us: u64) -> Result<Option<u64>> {
        reader.jobs.fire_timers(now_us);
        loop {
            if let Some(seq) = reader.jobs.first_ready() {
                return Ok(Some(seq));
            }
            if reader.jobs.entries.len() >= crate::engine::jobs::IN_FLIGHT_MAX {
                return Ok(None);
            }
            let Some(found) = self.read_next(&mut reader.cursor)? else {
                return Ok(None);
            };
            self.track(reader, found, now_us);
            reader.jobs.fold();
        }
    }

    /// Starts tracking a record just read at the frontier (so in the cursor's segment), with
    /// what the ack log remembers of it.
    fn track(&self, reader: &mut Reader, found: Found, now_us: u64) {
        let seq = found.record.seq();
        let (acked, deliveries, retry_at_us) = reader.jobs.history.take(seq);
        let not_before_us = found.record.not_before_us().max(retry_at_us);
        let state = if acked {
            JobState::Acked
        } else if not_before_us > now_us {
            JobState::Waiting {
                due_us: not_before_us,
            }
        } else {
            JobState::Ready
        };
        let job = Job {
            record: found.record,
            segment: reader.cursor.segment.clone(),
            offset: found.offset,
            deliveries,
            state,
        };
        reader.jobs.insert(seq, job);
    }

    /// Diverts `seq` to the dead-letter queue if it has used up `max_deliveries`: it is marked
    /// as being moved and queued in `pending` for the move. Returns true if it was diverted.
    fn divert_if_spent(&self, reader: &mut Reader, seq: u64, pending: &mut Pending) -> bool {
        let Some(limit) = self.options.max_deliveries else {
            return false;
        };
        let Some(job) = reader.jobs.entries.get(&seq) else {
            return false;
        };
        if job.deliveries < limit {
            return false;
        }
        pending
            .dead_letters
            .push((seq, job.record.clone(), job.deliveries));
        reader.jobs.set_state(seq, JobState::DeadLettering);
        true
    }

    /// Removes up to `max` records through `convert` into `out`. A record that `convert`
    /// rejects stays in the queue and its error is returned if nothing was removed before it.
    pub(crate) fn pop_with<T, O: Popped<T>>(
        &self,
        max: usize,
        mut convert: impl FnMut(Record) -> Result<T>,
        mut out: O,
    ) -> Result<O> {
        self.check_poisoned()?;
        let mut clock = Clock::default();
        let mut pending = Pending::default();
        let mut failure = None;
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            let head_segment_before = reader.head_segment_base();
            let mut acked = Vec::new();
            while out.count() < max {
                let step = if reader.jobs.is_idle() {
                    self.pop_plain(reader, &mut clock, &mut convert)
                } else {
                    let now_us = clock.now_us();
                    self.pop_tracked(reader, now_us, &mut convert, &mut acked, &mut pending)
                };
                match step {
                    Ok(Step::Value(value)) => out.put(value),
                    Ok(Step::Again) => {}
                    Ok(Step::End) => break,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            reader.jobs.fold();
            pending.head_generation = reader
                .write_head_if_moved(self.synced_seq())
                .map_err(|error| self.poison(error))?;
            if !acked.is_empty() {
                pending.ack_ticket = Some(
                    reader
                        .acklog
                        .append(&*self.storage, &acked)
                        .map_err(|e| self.poison(e))?,
                );
            }
            pending.head_segment_moved = reader.head_segment_base() != head_segment_before;
        }
        self.finish(pending)?;
        match failure {
            Some(error) if out.count() == 0 => Err(error),
            _ => Ok(out),
        }
    }

    /// One `pop`: the plain FIFO path, taken while nothing is tracked (no leases, acks beyond
    /// the head or delays) without the batch machinery of [`pop_with`](Shared::pop_with), which
    /// handles every other case.
    pub(crate) fn pop_one(&self) -> Result<Option<Record>> {
        self.check_poisoned()?;
        let (record, head_generation, head_segment_moved) = {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            if !reader.jobs.is_idle() {
                drop(guard);
                return self.pop_with(1, Ok, None);
            }
            let segment_before = reader.cursor.segment.base_seq;
            let Some(found) = self.read_next(&mut reader.cursor)? else {
                return Ok(None);
            };
            if found.record.not_before_us() != 0 {
                // A delayed record: the general path decides whether it is due.
                reader.cursor.rewind(found.offset, found.record.seq());
                drop(guard);
                return self.pop_with(1, Ok, None);
            }
            let generation = reader
                .write_head_if_moved(self.synced_seq())
                .map_err(|error| self.poison(error))?;
            let moved = reader.cursor.segment.base_seq != segment_before;
            (found.record, generation, moved)
        };
        self.finish(Pending {
            head_generation,
            head_segment_moved,
            ..Pending::default()
        })?;
        Ok(Some(record))
    }

    /// One plain FIFO pop at the frontier, while nothing is tracked.
    fn pop_plain<T>(
        &self,
        reader: &mut Reader,
        clock: &mut Clock,
        convert: &mut impl FnMut(Record) -> Result<T>,
    ) -> Result<Step<T>> {
        let Some(found) = self.read_next(&mut reader.cursor)? else {
            return Ok(Step::End);
        };
        // Only a delayed record needs the time (reading the clock costs as much as the rest of
        // a pop).
        if found.record.not_before_us() != 0 {
            let now_us = clock.now_us();
            if found.record.not_before_us() > now_us {
                // A delayed record: track it, and let the tracked path find what comes after it.
                self.track(reader, found, now_us);
                return Ok(Step::Again);
            }
        }
        let (offset, seq) = (found.offset, found.record.seq());
        match convert(found.record) {
            Ok(value) => Ok(Step::Value(value)),
            Err(error) => {
                // The record stays: it is in the cursor's segment, so rewinding is enough.
                reader.cursor.rewind(offset, seq);
                Err(error)
            }
        }
    }

    /// One pop among tracked records: at-most-once, like an immediate acknowledgement.
    fn pop_tracked<T>(
        &self,
        reader: &mut Reader,
        now_us: u64,
        convert: &mut impl FnMut(Record) -> Result<T>,
        acked: &mut Vec<AckEntry>,
        pending: &mut Pending,
    ) -> Result<Step<T>> {
        loop {
            let Some(seq) = self.next_available(reader, now_us)? else {
                return Ok(Step::End);
            };
            if self.divert_if_spent(reader, seq, pending) {
                continue;
            }
            let Some(job) = reader.jobs.entries.get(&seq) else {
                return Ok(Step::End);
            };
            let value = convert(job.record.clone())?;
            let at_head = reader.jobs.first_seq() == Some(seq);
            reader.jobs.set_state(seq, JobState::Acked);
            if !at_head {
                acked.push(AckEntry::Acked {
                    start: seq,
                    end: seq + 1,
                });
            }
            return Ok(Step::Value(value));
        }
    }

    /// The oldest record that a pop would return, not removed.
    pub(crate) fn peek(&self) -> Result<Option<Record>> {
        let now_us = now_micros();
        let mut guard = lock(&self.reader);
        let reader = &mut *guard;
        if reader.jobs.is_idle() {
            match self.read_next(&mut reader.cursor)? {
                None => return Ok(None),
                Some(found) if found.record.not_before_us() <= now_us => {
                    // Not taken: the next read starts at this record again.
                    reader.cursor.rewind(found.offset, found.record.seq());
                    return Ok(Some(found.record));
                }
                Some(found) => self.track(reader, found, now_us),
            }
        }
        let Some(seq) = self.next_available(reader, now_us)? else {
            return Ok(None);
        };
        Ok(reader.jobs.entries.get(&seq).map(|job| job.record.clone()))
    }

    /// Hands out up to `max` records under a lease.
    pub(crate) fn recv_batch(self: &Arc<Self>, max: usize) -> Result<Vec<Delivery>> {
        self.check_poisoned()?;
        let now_us = now_micros();
        let lease_us = u64::try_from(self.options.lease.as_micros()).unwrap_or(u64::MAX);
        let mut deliveries = Vec::new();
        let mut pending = Pending::default();
        let mut failure = None;
        // Announced to the ack log's group commit (held until `finish` returns), so that a
        // leader lets this receive join its sync.
        let _entered = self.announce_to_ack_sync();
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            let mut log = Vec::new();
            while deliveries.len() < max {
                let seq = match self.next_available(reader, now_us) {
                    Ok(Some(seq)) => seq,
                    Ok(None) => break,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
                if self.divert_if_spent(reader, seq, &mut pending) {
                    continue;
                }
                let token = reader.jobs.token();
                let Some(job) = reader.jobs.entries.get_mut(&seq) else {
                    break;
                };
                // Saturating: the count may come from the ack log at `u32::MAX`.
                job.deliveries = job.deliveries.saturating_add(1);
                let record = job.record.clone();
                let count = job.deliveries;
                reader.jobs.set_state(
                    seq,
                    JobState::Leased {
                        due_us: now_us.saturating_add(lease_us),
                        token,
                    },
                );
                log.push(AckEntry::Delivered {
                    seq,
                    deliveries: count,
                });
                deliveries.push((record, count, token));
            }
            if !log.is_empty() {
                match reader.acklog.append(&*self.storage, &log) {
                    Ok(ticket) => pending.ack_ticket = Some(ticket),
                    Err(error) => {
                        // Nothing is handed out: undo the leases.
                        for (record, _, _) in &deliveries {
                            if let Some(job) = reader.jobs.entries.get_mut(&record.seq()) {
                                job.deliveries = job.deliveries.saturating_sub(1);
                            }
                            reader.jobs.set_state(record.seq(), JobState::Ready);
                        }
                        return Err(error);
                    }
                }
                self.maybe_rewrite_acklog(reader)?;
            }
        }
        let deliveries: Vec<Delivery> = deliveries
            .into_iter()
            .map(|(record, count, token)| Delivery::new(self, record, count, token))
            .collect();
        self.finish_handing_out(pending, deliveries, failure)
    }

    /// Finishes an operation that handed out `out`. A failure met after something was handed
    /// out is not reported now: the next call meets it again, before handing out anything.
    fn finish_handing_out<T>(
        &self,
        pending: Pending,
        out: Vec<T>,
        failure: Option<Error>,
    ) -> Result<Vec<T>> {
        self.finish(pending)?;
        match failure {
            Some(error) if out.is_empty() => Err(error),
            _ => Ok(out),
        }
    }

    /// Marks `seq` done.
    pub(crate) fn ack(&self, seq: u64) -> Result<()> {
        self.check_poisoned()?;
        let mut pending = Pending::default();
        // Under `Always` every ack waits on the ack log's group (see `settle_acked`).
        let _entered = self.announce_to_ack_sync();
        {
            let mut reader = lock(&self.reader);
            let head_segment_before = reader.head_segment_base();
            self.settle_acked(&mut reader, seq, &mut pending)?;
            pending.head_segment_moved = reader.head_segment_base() != head_segment_before;
        }
        self.finish(pending)
    }

    fn settle_acked(&self, reader: &mut Reader, seq: u64, pending: &mut Pending) -> Result<()> {
        let Some(job) = reader.jobs.entries.get(&seq) else {
            // No longer tracked: the head already passed it.
            return Ok(());
        };
        if job.state == JobState::Acked {
            return Ok(());
        }
        let at_head = reader.jobs.first_seq() == Some(seq);
        reader.jobs.set_state(seq, JobState::Acked);
        if at_head {
            reader.jobs.fold();
            let generation = reader
                .write_head_if_moved(self.synced_seq())
                .map_err(|error| self.poison(error))?;
            if self.options.sync != SyncPolicy::Always {
                // Nothing waits for a sync: the head write covers a process kill.
                pending.head_generation = generation;
                return Ok(());
            }
            // Under `Always` an ack at the head is made durable by an ACKED entry in the ack
            // log, like an ack beyond it, not by a sync of the head: every receive and every
            // ack then wait on one group commit of one file, so one `fdatasync` covers more of
            // them. The head slot written above still moves the head (for a process kill and
            // for the ack log rewrite); it is synced lazily (by compaction, the ack log
            // rewrite, a pop, `Queue::sync`), and until then recovery skips the record because
            // the ack log says it is acknowledged.
        }
        let entry = AckEntry::Acked {
            start: seq,
            end: seq + 1,
        };
        pending.ack_ticket = Some(
            reader
                .acklog
                .append(&*self.storage, &[entry])
                .map_err(|error| self.poison(error))?,
        );
        self.maybe_rewrite_acklog(reader)?;
        Ok(())
    }

    /// Releases a leased record, now or after `delay`. A release by a receiver whose lease ran
    /// out (and whose record may be with someone else now) changes nothing.
    pub(crate) fn release(&self, seq: u64, token: u64, delay: Option<Duration>) -> Result<()> {
        let now_us = now_micros();
        let mut pending = Pending::default();
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            let Some(job) = reader.jobs.entries.get(&seq) else {
                return Ok(());
            };
            if !matches!(job.state, JobState::Leased { token: held, .. } if held == token) {
                return Ok(());
            }
            if !self.divert_if_spent(reader, seq, &mut pending) {
                match delay {
                    Some(delay) if !delay.is_zero() => {
                        let delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
                        let due_us = now_us.saturating_add(delay_us);
                        reader.jobs.set_state(seq, JobState::Waiting { due_us });
                        self.check_poisoned()?;
                        let entry = AckEntry::NotBefore { seq, at_us: due_us };
                        pending.ack_ticket = Some(
                            reader
                                .acklog
                                .append(&*self.storage, &[entry])
                                .map_err(|error| self.poison(error))?,
                        );
                    }
                    _ => reader.jobs.set_state(seq, JobState::Ready),
                }
            }
        }
        self.arrivals.notify();
        self.finish(pending)
    }

    /// Extends a lease to `lease` from now.
    pub(crate) fn extend(&self, seq: u64, token: u64, lease: Duration) -> Result<()> {
        let now_us = now_micros();
        let mut reader = lock(&self.reader);
        let held = reader.jobs.entries.get(&seq).is_some_and(
            |job| matches!(job.state, JobState::Leased { token: held, .. } if held == token),
        );
        if !held {
            return Err(Error::LeaseExpired { seq });
        }
        let lease_us = u64::try_from(lease.as_micros()).unwrap_or(u64::MAX);
        let due_us = now_us.saturating_add(lease_us);
        reader
            .jobs
            .set_state(seq, JobState::Leased { due_us, token });
        Ok(())
    }

    /// Rewrites the ack log when obsolete entries dominate it. The head is synced first, so
    /// that the head that makes the dropped entries obsolete survives any crash.
    fn maybe_rewrite_acklog(&self, reader: &mut Reader) -> Result<()> {
        if !reader.acklog.wants_rewrite(reader.jobs.live_estimate()) {
            return Ok(());
        }
        let generation = reader.head.sync().map_err(|error| self.poison(error))?;
        self.head_sync.mark_durable(generation);
        let live = reader.jobs.live_entries();
        reader
            .acklog
            .rewrite(&*self.storage, &live)
            .map_err(|error| self.poison(error))
    }

    /// Makes durable what the policy asks for, moves dead letters, compacts.
    fn finish(&self, pending: Pending) -> Result<()> {
        if self.options.sync == SyncPolicy::Always {
            if let Some(generation) = pending.head_generation {
                self.head_sync
                    .wait(generation, || self.sync_head())
                    .map_err(|error| self.poison(error))?;
            }
            if let Some(ticket) = pending.ack_ticket {
                self.ack_sync
                    .wait(ticket, || self.sync_acklog())
                    .map_err(|error| self.poison(error))?;
            }
        }
        // Checked first: building and dropping the iterator of an empty vector costs a pop
        // about 26 instructions (callgrind), 3 % of it.
        if !pending.dead_letters.is_empty() {
            for (seq, record, deliveries) in pending.dead_letters {
                self.move_to_dead_letters(seq, &record, deliveries)?;
            }
        }
        if pending.head_segment_moved && self.options.auto_compact {
            // The records are already consumed; a failed compaction is retried by the next one,
            // and an I/O failure in it poisons the queue, so the caller learns of it next call.
            let _ = compactor::compact(self);
        }
        Ok(())
    }

    /// Announces a receive or an ack to the ack log's group commit under `Always` (a hint for
    /// its leader; see `SyncGroup::enter`): hold it from before the write until `finish` returns.
    fn announce_to_ack_sync(&self) -> Option<crate::engine::sync::Entered<'_>> {
        (self.options.sync == SyncPolicy::Always).then(|| self.ack_sync.enter())
    }

    /// Writes the ack log's pending entries and syncs it; returns the ticket covered.
    pub(crate) fn sync_acklog(&self) -> Result<u64> {
        let (file, ticket, path) = {
            let mut reader = lock(&self.reader);
            reader.acklog.flush()?;
            let (file, ticket) = reader.acklog.sync_target();
            (file, ticket, reader.acklog.path().to_path_buf())
        };
        if let Some(file) = file {
            file.sync_data()
                .map_err(|error| Error::io("sync ack log", path, error))?;
        }
        Ok(ticket)
    }

    /// Pushes a record into the dead-letter queue, then marks it done here. A crash between the
    /// two leaves it in both (it is moved again, so the dead-letter queue may hold it twice);
    /// never in neither.
    fn move_to_dead_letters(&self, seq: u64, record: &Record, deliveries: u32) -> Result<()> {
        let pushed = self.dead_letter_queue().and_then(|queue| {
            let envelope = DeadLetter {
                original_seq: seq,
                deliveries,
                enqueued_at_us: record.enqueued_at_micros(),
                payload: record.payload(),
            };
            queue.push(&envelope.encode())
        });
        if let Err(error) = pushed {
            lock(&self.reader).jobs.set_state(seq, JobState::Ready);
            return Err(error);
        }
        self.ack(seq)
    }

    fn dead_letter_queue(&self) -> Result<Arc<Queue>> {
        let mut slot = lock(&self.dead_letters);
        if let Some(queue) = &*slot {
            return Ok(queue.clone());
        }
        let path = self.options.dead_letter_path(&self.dir);
        // Only a queue, an empty folder or a new one: never someone's files.
        let usable = match self.storage.list_dir(&path) {
            Ok(names) => {
                names.is_empty() || crate::storage::queue_dir::is_queue(&*self.storage, &path)?
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
        let mut options = self.options.clone();
        options.max_deliveries = None;
        options.dead_letter_dir = None;
        let queue = Arc::new(Queue::open(path, options)?);
        *slot = Some(queue.clone());
        Ok(queue)
    }
}
