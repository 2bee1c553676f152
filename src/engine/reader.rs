//! The consumer side of a queue: reading frames at the frontier, `pop`, `peek`, and the jobs
//! operations (`recv`, `ack`, release, dead letters), with the head index and the ack log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::acklog::AckLog;
use crate::engine::clock::{now_micros, Clock};
use crate::engine::coordination::{CommittedTail, ConsumerFiles, Coordination};
use crate::engine::counters::ConsumerCounts;
use crate::engine::env::Env;
use crate::engine::head::{HeadIndex, SyncStart};
use crate::engine::jobs::{Job, JobState, Jobs};
use crate::engine::log::Log;
use crate::engine::record::Record;
use crate::engine::recovery::locate_head;
use crate::engine::segment::Segment;
use crate::engine::sync::{lock, SyncGroup};
use crate::error::{Error, Result};
use crate::format::acklog::{AckEntry, JobHistory};
use crate::format::dead_letter::DeadLetterReason;
use crate::format::frame;
use crate::format::head::HeadState;
use crate::format::segment::{find_later_frame, is_free_space, walk_headers, SEGMENT_HEADER_LEN};
use crate::options::SyncPolicy;
use crate::storage::{Mapping, Storage};

/// A read position: the next frame to read.
#[derive(Clone)]
pub(crate) struct Cursor {
    pub(crate) segment: Arc<Segment>,
    pub(crate) offset: u64,
    pub(crate) next_seq: u64,
    /// The segment's mapping as last seen, so that a read does not take the segment's lock
    /// while the mapping covers what it reads.
    pub(crate) view: Option<Mapping>,
    /// How the segment's frames are read, taken from it once (it never changes once open).
    rules: frame::FrameRules,
}

impl Cursor {
    /// A cursor at `offset` of `segment`, whose header was checked
    /// (`Segment::ensure_checked`), so that its format version is known.
    pub(crate) fn new(segment: Arc<Segment>, offset: u64, next_seq: u64) -> Self {
        let rules = segment.rules();
        Cursor {
            segment,
            offset,
            next_seq,
            view: None,
            rules,
        }
    }

    /// A mapping of the cursor's segment at least `end` bytes long.
    /// `env` rather than its storage: the storage is needed only when the cursor's mapping
    /// does not cover `end`, and loading it on every read costs a pop instructions (callgrind).
    #[inline]
    fn view(&mut self, env: &Env, end: u64) -> Result<Mapping> {
        let covered = self
            .view
            .as_ref()
            .is_some_and(|view| (**view).as_ref().len() as u64 >= end);
        if !covered {
            self.map_again(env, end)?;
        }
        match &self.view {
            Some(view) => Ok(view.clone()),
            None => Err(Error::corrupt(&self.segment.path, 0, "segment not mapped")),
        }
    }

    /// Takes the segment's mapping again, to cover `end`.
    #[cold]
    #[inline(never)]
    fn map_again(&mut self, env: &Env, end: u64) -> Result<()> {
        self.view = Some(self.segment.view(&*env.storage, end)?);
        Ok(())
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
    /// Expired records to move to the dead-letter queue (marked `DeadLettering`), taken by the
    /// next operation that can move them.
    pub(crate) expired_letters: Vec<(u64, Record, u32, DeadLetterReason)>,
    /// What the consumer did since open (see `counters`).
    pub(crate) counts: ConsumerCounts,
    /// The numbers `repair` retired between segments (see `recovery::retired_ranges`), as
    /// `start -> end`: no records, so never counted in the queue's length.
    pub(crate) retired: BTreeMap<u64, u64>,
}

/// A record read at the frontier, with where its frame starts in the cursor's segment.
pub(crate) struct Found {
    pub(crate) record: Record,
    pub(crate) offset: u64,
}

impl Reader {
    /// A reader at the head `head` names, which lies at `head_offset` of `head_segment`, with
    /// what the ack log remembers.
    pub(crate) fn new(
        head_segment: Arc<Segment>,
        head_offset: u64,
        head: HeadIndex,
        acklog: AckLog,
        history: JobHistory,
        retired: BTreeMap<u64, u64>,
    ) -> Self {
        let head_seq = head.state().head_seq;
        Reader {
            cursor: Cursor::new(head_segment, head_offset, head_seq),
            head,
            jobs: Jobs::with_history(history),
            acklog,
            expired_letters: Vec::new(),
            counts: ConsumerCounts::default(),
            retired,
        }
    }

    /// Every record below this sequence number is consumed.
    pub(crate) fn head_seq(&self) -> u64 {
        self.jobs.first_seq().unwrap_or(self.cursor.next_seq)
    }

    /// The head as it should be written; `synced_seq` is how far the records are synced.
    fn head_state(&self, synced_seq: u64) -> HeadState {
        match self.jobs.first() {
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

    /// The segment of the head index as last written. Compaction follows it, not the head in
    /// memory: a receive moves the head in memory into the next segment as it takes its first
    /// record (the head is then that lease), and the ack that follows moves the written head
    /// there but not the head in memory. Compared with the head in memory, a consumer that
    /// receives and acknowledges in order never compacted.
    fn written_head_segment(&self) -> u64 {
        self.head.state().hint_base
    }

    /// Writes the head if it moved; returns the generation to sync.
    fn write_head_if_moved(&mut self, synced_seq: u64) -> Result<Option<u64>> {
        let state = self.head_state(synced_seq);
        if state.head_seq == self.head.state().head_seq {
            return Ok(None);
        }
        self.head.write(state).map(Some)
    }

    /// Starts tracking a record just read at the frontier (so in the cursor's segment), with
    /// what the ack log remembers of it.
    fn track(&mut self, env: &Env, found: Found, now_us: u64) {
        let seq = found.record.seq();
        let (acked, deliveries, retry_at_us, lease_owner) = self.jobs.take_history(seq);
        if acked && env.coordination.is_none() {
            // Acknowledged before the queue was opened: not counted as a record at open, but
            // its frame was counted in the bytes. (A shared queue's count leaves such frames
            // out: see `Reader::unconsumed`.)
            release_room(env, 0, &found.record);
        }
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
        let expired = !acked && is_expired(env, &found.record, now_us);
        let job = Job {
            record: found.record,
            segment: self.cursor.segment.clone(),
            offset: found.offset,
            deliveries,
            state,
        };
        self.jobs.insert(seq, job);
        self.jobs.set_lease_owner(seq, lease_owner);
        if expired {
            self.expire(env, seq);
        }
    }

    /// Consumes a tracked record older than `max_age` or past its TTL without handing it out:
    /// counted as expired, and moved to the dead-letter queue when one is configured. Nothing is
    /// written for a discarded one: expiry depends only on its enqueue time and TTL (both in its
    /// frame) and the stored `max_age`, so after a crash it is expired again.
    fn expire(&mut self, env: &Env, seq: u64) {
        let Some(job) = self.jobs.get(seq) else {
            return;
        };
        env.expired(1);
        if env.options.dead_letter_dir.is_some() {
            // Its room comes back when the move acknowledges it.
            self.expired_letters.push((
                seq,
                job.record.clone(),
                job.deliveries,
                DeadLetterReason::Expired,
            ));
            self.jobs.set_state(seq, JobState::DeadLettering);
        } else {
            release_room(env, 1, &job.record);
            self.jobs.set_state(seq, JobState::Acked);
        }
    }

    /// See [`Consumer::turn_marker`]: the head's generation and which slot is durable (a sync
    /// moves it, and the next writer of another handle must know), and the ack log's marker.
    fn turn_marker(&self) -> TurnMarker {
        let head = (self.head.generation() << 1) | self.head.durable_slot() as u64;
        (head, self.acklog.marker())
    }

    /// Reads and tracks records from the frontier up to `seq` (while the table has room): a
    /// shared queue's consumer whose reader was built again learns where a record it handed
    /// out stands.
    fn track_through(&mut self, env: &Env, log: &Log, seq: u64) -> Result<()> {
        let now_us = now_micros();
        while self.cursor.next_seq <= seq && self.jobs.len() < crate::engine::jobs::IN_FLIGHT_MAX {
            let Some(found) = read_next(env, log, &mut self.cursor)? else {
                break;
            };
            self.track(env, found, now_us);
        }
        Ok(())
    }

    /// Follows what another process's consumer did, as read from the files: the head it left
    /// (`head`, just reloaded) and the ack log entries it appended. Records below the head are
    /// dropped and the frontier moves up to it; the entries apply to the tracked records.
    fn follow(
        &mut self,
        env: &Env,
        log: &Log,
        head: HeadState,
        entries: &[AckEntry],
    ) -> Result<()> {
        let head_seq = head.head_seq;
        let head_segment_before = self.head_state(0).hint_base;
        self.jobs.drop_below(head_seq);
        if head_seq > self.cursor.next_seq {
            if head.hint_base != head_segment_before {
                // The head left a segment, which that consumer may have compacted.
                log.forget_deleted_segments(env)?;
            }
            let segments: BTreeMap<u64, Arc<Segment>> = log
                .segments()
                .into_iter()
                .map(|segment| (segment.base_seq, segment))
                .collect();
            let (segment, offset) = locate_head(&*env.storage, &segments, head)?;
            self.cursor = Cursor::new(segment, offset, head_seq);
        }
        let now_us = now_micros();
        for entry in entries {
            self.jobs.follow(entry, now_us);
        }
        self.jobs.fold();
        Ok(())
    }

    /// Records in the queue, given the highest published sequence number.
    pub(crate) fn len(&self, published_next_seq: u64) -> u64 {
        // A consumer reads up to the committed tail, which runs ahead of the published one
        // while a producer that committed has not published yet, or died before it did (the
        // next push publishes both): records the cursor passed, and records another handle
        // acknowledged, are in the log, and those acknowledged are subtracted below. Without
        // this, a lease held before records another handle consumed there counted as 0 (the
        // simulation of several processes, seed 1,302,275).
        let acked_end = self
            .jobs
            .history()
            .acked
            .last_key_value()
            .map_or(0, |(_, &end)| end);
        published_next_seq
            .max(self.cursor.next_seq)
            .max(acked_end)
            .saturating_sub(self.head_seq())
            .saturating_sub(self.jobs.acked_beyond_head(self.cursor.next_seq))
            .saturating_sub(self.retired_between(self.head_seq(), self.cursor.next_seq))
    }

    /// What a shared queue's bound counts as not yet consumed up to the published tail `upto`
    /// (which the log has taken up): the records [`len`](Reader::len) counts, and the frame
    /// bytes from the head to `upto` but those of records acknowledged beyond the head (tracked,
    /// or remembered from the ack log: their frames are read up to the last one).
    pub(crate) fn unconsumed(
        &self,
        storage: &dyn Storage,
        log: &Log,
        upto: CommittedTail,
    ) -> Result<(u64, u64)> {
        let records = self.len(upto.next_seq);
        let head = self.head_state(0);
        let mut bytes = 0u64;
        for segment in log.segments() {
            if segment.base_seq < head.hint_base || segment.base_seq > upto.base {
                continue;
            }
            let end = match segment.base_seq == upto.base {
                true => upto.tail,
                false => {
                    segment.ensure_checked(storage)?;
                    segment.readable_end()
                }
            };
            let start = match segment.base_seq == head.hint_base {
                true => head.hint_offset,
                false => SEGMENT_HEADER_LEN as u64,
            };
            bytes += end.saturating_sub(start);
        }
        let acked = self.jobs.acked_frame_bytes()
            + acked_bytes_unread(
                storage,
                log,
                &self.cursor,
                upto.next_seq,
                self.jobs.history(),
            )?;
        Ok((records, bytes.saturating_sub(acked)))
    }

    /// Whether every record up to the published tail `upto` is consumed, as far as this reader
    /// knows: nothing tracked or remembered beyond the head, which is at `upto`.
    pub(crate) fn is_drained_at(&self, upto: CommittedTail) -> bool {
        self.jobs.is_idle()
            && self.cursor.next_seq == upto.next_seq
            && self.cursor.segment.base_seq == upto.base
            && self.cursor.offset == upto.tail
    }

    /// How many retired numbers lie in `from..to`. Beyond the frontier the ack log's history
    /// counts them (`acked_beyond_head`); once the reader crossed a retired gap, only this does.
    fn retired_between(&self, from: u64, to: u64) -> u64 {
        if self.retired.is_empty() {
            return 0;
        }
        // A range is taken for retired when an acknowledged range ends where a segment
        // starts, which out-of-order acks do too: its numbers that are records, tracked here,
        // are counted as acknowledged, not as retired.
        self.retired
            .iter()
            .map(|(&start, &end)| {
                let (start, end) = (start.max(from), end.min(to));
                end.saturating_sub(start)
                    .saturating_sub(self.jobs.tracked_between(start, end))
            })
            .sum()
    }
}

/// Whether a record has expired at `now_us`: it is older than the queue's `max_age`, or its
/// own TTL has run out (`Push::ttl`); whichever comes first.
#[inline]
fn is_expired(env: &Env, record: &Record, now_us: u64) -> bool {
    let too_old = env
        .max_age_us
        .is_some_and(|max_age_us| record.enqueued_at_us().saturating_add(max_age_us) < now_us);
    too_old
        || record
            .expires_at_us()
            .is_some_and(|expires_us| expires_us < now_us)
}

/// Whether a record can expire at all (so whether the clock must be read for it): the queue
/// has a `max_age`, or the record a TTL.
#[inline]
fn may_expire(env: &Env, record: &Record) -> bool {
    env.max_age_us.is_some() || record.has_ttl()
}

/// Gives a consumed record's room back to a bounded queue (see `limits`).
#[inline]
fn release_room(env: &Env, records: u64, record: &Record) {
    if let Some(limits) = &env.limits {
        limits.release(records, record.frame_len());
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
    dead_letters: Vec<(u64, Record, u32, DeadLetterReason)>,
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
        && find_later_frame(bytes, offset, segment.base_seq, segment.rules()).is_none()
}

/// Counts the records from `cursor` to `end_seq` that wait for a delay or a retry, walking frame
/// headers segment by segment (the reader has not read them yet; it checks them when it does).
fn count_delayed_unread(
    env: &Env,
    log: &Log,
    cursor: Cursor,
    end_seq: u64,
    history: &JobHistory,
    now_us: u64,
) -> Result<u64> {
    let (mut segment, mut offset, mut next_seq) = (cursor.segment, cursor.offset, cursor.next_seq);
    let mut delayed = 0;
    while next_seq < end_seq {
        match segment.delayed_frames(&*env.storage)? {
            // The count walks a sealed segment from its start, and stops at damage: damage
            // behind the frontier (consumed records, which nothing reads again) stops it
            // before `next_seq`. The segment is then walked from the frontier, as the active
            // one is.
            Some(counted) if counted.after >= next_seq => {
                let range = next_seq..end_seq.min(counted.after);
                delayed += count_delayed_in(&counted.frames, range, history, now_us);
                next_seq = counted.after;
            }
            _ => {
                let end = segment.readable_end();
                if offset < end {
                    let view = segment.view_for_scan(&*env.storage, end)?;
                    let bytes = (*view).as_ref();
                    let bytes = bytes.get(..end as usize).unwrap_or(&[]);
                    let rules = segment.rules();
                    next_seq =
                        walk_headers(bytes, offset as usize, next_seq, rules, |header, prefix| {
                            let seq = header.seq;
                            if seq < end_seq
                                && history.is_delayed(seq, prefix.not_before_us, now_us)
                            {
                                delayed += 1;
                            }
                        });
                }
            }
        }
        if !segment.is_sealed() {
            break;
        }
        let Some(next) = log.segment_after(segment.base_seq) else {
            break;
        };
        next.ensure_checked(&*env.storage)?;
        next_seq = next.base_seq.max(next_seq);
        segment = next;
        offset = SEGMENT_HEADER_LEN as u64;
    }
    Ok(delayed)
}

/// The frame bytes of the records from the frontier `cursor` up to `end_seq` that the ack log
/// remembers as acknowledged: headers only, up to the last such record.
fn acked_bytes_unread(
    storage: &dyn Storage,
    log: &Log,
    cursor: &Cursor,
    end_seq: u64,
    history: &JobHistory,
) -> Result<u64> {
    let Some(last_acked) = history.acked.values().next_back().copied() else {
        return Ok(0);
    };
    let end_seq = end_seq.min(last_acked);
    let is_acked = |seq: u64| {
        history
            .acked
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| seq < end)
    };
    let (mut segment, mut offset, mut next_seq) =
        (cursor.segment.clone(), cursor.offset, cursor.next_seq);
    let mut acked = 0;
    while next_seq < end_seq {
        let end = segment.readable_end();
        if offset < end {
            let view = segment.view_for_scan(storage, end)?;
            let bytes = (*view).as_ref();
            let bytes = bytes.get(..end as usize).unwrap_or(&[]);
            next_seq = walk_headers(
                bytes,
                offset as usize,
                next_seq,
                segment.rules(),
                |header, _| {
                    if header.seq < end_seq && is_acked(header.seq) {
                        acked += frame::frame_len(header.payload_len as usize) as u64;
                    }
                },
            );
        }
        if !segment.is_sealed() {
            break;
        }
        let Some(next) = log.segment_after(segment.base_seq) else {
            break;
        };
        next.ensure_checked(storage)?;
        next_seq = next.base_seq.max(next_seq);
        segment = next;
        offset = SEGMENT_HEADER_LEN as u64;
    }
    Ok(acked)
}

/// The delayed records among `range` of a sealed segment whose delayed frames are `frames`:
/// those frames whose delay has not run out, and records with a retry time in the ack log.
fn count_delayed_in(
    frames: &[(u64, u64)],
    range: std::ops::Range<u64>,
    history: &JobHistory,
    now_us: u64,
) -> u64 {
    let from = frames.partition_point(|&(seq, _)| seq < range.start);
    let in_range = frames[from..]
        .iter()
        .take_while(|&&(seq, _)| seq < range.end);
    let by_frame = in_range
        .filter(|&&(seq, not_before_us)| history.is_delayed(seq, not_before_us, now_us))
        .count() as u64;
    let by_retry = history
        .not_before
        .range(range)
        .filter(|&(&seq, _)| frames.binary_search_by_key(&seq, |&(seq, _)| seq).is_err())
        .filter(|&(&seq, _)| history.is_delayed(seq, 0, now_us))
        .count() as u64;
    by_frame + by_retry
}

/// Reads the record at `cursor` and advances it; `None` at the end of the queue.
pub(crate) fn read_next(env: &Env, log: &Log, cursor: &mut Cursor) -> Result<Option<Found>> {
    loop {
        let end = cursor.segment.readable_end();
        if cursor.offset < end {
            let (offset, next_seq) = (cursor.offset, cursor.next_seq);
            let view = cursor.view(env, end)?;
            let bytes = (*view).as_ref();
            let start = offset as usize;
            let at = bytes.get(start..end as usize).unwrap_or(&[]);
            let frame = match frame::decode(at, next_seq, cursor.rules) {
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
            let prefix = frame::BodyPrefix {
                not_before_us: frame.not_before_us,
                ttl_us: frame.ttl_us,
            };
            if prefix.ttl_us != 0 {
                env.saw_ttl();
            }
            let record = Record::new(
                next_seq,
                frame.header.enqueued_us,
                prefix,
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
        // A shared queue's push that rolled and then failed left the segment it sealed as
        // the committed one, and the next push took it up again as a new segment object for
        // the same file (`Log::adopt_segments`): the records go on there.
        if let Some(current) = log.segment_at(cursor.segment.base_seq) {
            if !Arc::ptr_eq(&current, &cursor.segment) {
                *cursor = Cursor::new(current, cursor.offset, cursor.next_seq);
                continue;
            }
        }
        let next = log.segment_after(cursor.segment.base_seq);
        let Some(next) = next else {
            return Ok(None);
        };
        next.ensure_checked(&*env.storage)?;
        if let Err(sequence_break) = log.check_next_base(cursor.next_seq, next.base_seq) {
            return Err(Error::corrupt(&next.path, 0, sequence_break.to_string()));
        }
        if next.base_seq == cursor.next_seq
            && !next.is_sealed()
            && next.readable_end() <= SEGMENT_HEADER_LEN as u64
        {
            // The active segment, nothing in it shown yet, right after this one: the reader
            // waits at the end of this one. A shared push that rolled to it may still fail,
            // and the segment then be cut. (After numbers a repair retired, it goes on:
            // the head it leaves names the next segment, not a number that was cut.)
            return Ok(None);
        }
        let left = std::mem::replace(
            cursor,
            Cursor::new(next.clone(), SEGMENT_HEADER_LEN as u64, next.base_seq),
        );
        let Cursor { segment, view, .. } = left;
        drop(view);
        segment.release_view_if_unshared();
    }
}

/// What tells the consumer files' state apart for a shared queue's consumer turn: the head's
/// generation and durable slot, and the ack log's marker (see [`Consumer::turn_marker`]).
pub(crate) type TurnMarker = (u64, (u64, u64, u64));

/// How a shared queue's consumer turn ended (see [`Consumer::end_turn`]).
pub(crate) struct TurnEnd {
    /// The [`turn_marker`](Consumer::turn_marker) at the end.
    pub(crate) marker: TurnMarker,
    /// Where the consumer files stand.
    pub(crate) files: ConsumerFiles,
    /// Whether a release made a record available during the turn.
    pub(crate) released: bool,
}

/// The consumer side: the reader state under its lock, and the group commits of the head
/// index and the ack log.
pub(crate) struct Consumer {
    reader: Mutex<Reader>,
    /// A shared queue: a release since the turn began made a record available before its
    /// lease's end, which other processes' waiters must hear of (see `Shared::end_turn`).
    released: std::sync::atomic::AtomicBool,
    head_sync: SyncGroup,
    ack_sync: SyncGroup,
}

/// What a consumer operation leaves to the queue around the reader (see `Shared`): moving a
/// record that used up its deliveries to the dead-letter queue, and compacting once the head
/// left a segment. A trait, so that the reader does not depend on the queue built on it.
pub(crate) trait AfterConsume {
    /// Pushes `record` into the dead-letter queue, then acknowledges it here.
    fn move_to_dead_letters(
        &self,
        seq: u64,
        record: &Record,
        deliveries: u32,
        reason: DeadLetterReason,
    ) -> Result<()>;
    /// Deletes or recycles the segments the head has passed. Failures poison the queue.
    fn compact(&self);
}

/// Where the head is, for `stats` (see [`Consumer::position`]).
pub(crate) struct Position {
    pub(crate) head_seq: u64,
    pub(crate) head_base: u64,
    pub(crate) head_offset: u64,
    pub(crate) len: u64,
    pub(crate) leased: u64,
    /// Records waiting for a delay or a retry, read or not.
    pub(crate) delayed: u64,
    pub(crate) counts: ConsumerCounts,
}

/// A record handed out under a lease, before it is wrapped in a `Delivery`.
pub(crate) struct Leased {
    pub(crate) record: Record,
    pub(crate) deliveries: u32,
    pub(crate) token: u64,
}

impl Consumer {
    pub(crate) fn new(reader: Reader) -> Self {
        let generation = reader.head.generation();
        Consumer {
            reader: Mutex::new(reader),
            released: std::sync::atomic::AtomicBool::new(false),
            head_sync: SyncGroup::new(generation),
            ack_sync: SyncGroup::new(0),
        }
    }

    /// Records in the queue, given the highest published sequence number.
    pub(crate) fn len(&self, published_next_seq: u64) -> u64 {
        lock(&self.reader).len(published_next_seq)
    }

    /// See [`Reader::unconsumed`].
    pub(crate) fn unconsumed(
        &self,
        env: &Env,
        log: &Log,
        upto: CommittedTail,
    ) -> Result<(u64, u64)> {
        lock(&self.reader).unconsumed(&*env.storage, log, upto)
    }

    /// See [`Reader::is_drained_at`].
    pub(crate) fn is_drained_at(&self, upto: CommittedTail) -> bool {
        lock(&self.reader).is_drained_at(upto)
    }

    /// When the next delay or lease runs out, if any does.
    pub(crate) fn next_due_us(&self) -> Option<u64> {
        lock(&self.reader).jobs.next_due_us()
    }

    /// Where the head is, for `stats`: its sequence number, the segment and offset of its frame,
    /// the number of records, and how many are leased.
    /// The delayed records among those not read yet are counted from their frame headers
    /// (no checksums), after the reader lock is released.
    pub(crate) fn position(
        &self,
        env: &Env,
        log: &Log,
        published_next_seq: u64,
    ) -> Result<Position> {
        let now_us = now_micros();
        let reader = lock(&self.reader);
        let state = reader.head_state(0);
        let tracked_delayed = reader.jobs.delayed(now_us);
        let position = Position {
            head_seq: reader.head_seq(),
            head_base: state.hint_base,
            head_offset: state.hint_offset,
            len: reader.len(published_next_seq),
            leased: reader.jobs.leased(),
            delayed: tracked_delayed,
            counts: reader.counts,
        };
        let frontier = reader.cursor.clone();
        let history = reader.jobs.history_snapshot();
        drop(reader);
        let unread =
            count_delayed_unread(env, log, frontier, published_next_seq, &history, now_us)?;
        Ok(Position {
            delayed: position.delayed + unread,
            ..position
        })
    }

    /// Syncs the head index and returns the head it made durable: what the compactor may
    /// delete behind.
    pub(crate) fn sync_head_now(&self, env: &Env) -> Result<u64> {
        let mut reader = lock(&self.reader);
        let generation = reader.head.sync().map_err(|error| env.poison(error))?;
        self.head_sync.mark_durable(generation);
        Ok(reader.head.state().head_seq)
    }

    /// Makes the head and the ack log durable, with `covered` (how far the records are synced)
    /// written into the head.
    pub(crate) fn sync_all(&self, env: &Env, covered: u64) -> Result<()> {
        let mut reader = lock(&self.reader);
        let mut generation = reader.head.sync().map_err(|error| env.poison(error))?;
        // Written after the sync above, so that it goes over the older slot: a failed write
        // cannot take the newest head with it.
        if self.record_synced_seq_in(env, &mut reader, covered)? {
            generation = reader.head.sync().map_err(|error| env.poison(error))?;
        }
        drop(reader);
        self.head_sync.mark_durable(generation);
        let ticket = self.sync_acklog().map_err(|error| env.poison(error))?;
        self.ack_sync.mark_durable(ticket);
        Ok(())
    }

    /// Writes `covered` into the head as how far the records are synced, without a sync: for a
    /// close under `SyncPolicy::Never`.
    pub(crate) fn record_synced_seq(&self, env: &Env, covered: u64) -> Result<()> {
        let mut reader = lock(&self.reader);
        self.record_synced_seq_in(env, &mut reader, covered)?;
        Ok(())
    }

    /// Consumes every record below `next_seq` at once (a purge), handed out ones included: the
    /// head moves to `next_seq`, whose frame would start at `tail` of `active`, in one slot
    /// write (so a crash leaves the old head or the new one), synced under `Always` like a
    /// pop. The caller holds the writer, so that no push moves the tail meanwhile. Returns how
    /// many records were removed.
    pub(crate) fn purge(
        &self,
        env: &Env,
        active: Arc<Segment>,
        tail: u64,
        next_seq: u64,
        synced_seq: u64,
    ) -> Result<u64> {
        env.check_poisoned()?;
        let mut reader = lock(&self.reader);
        let purged = reader.len(next_seq);
        reader.jobs.clear();
        reader.cursor = Cursor::new(active, tail, next_seq);
        // A failure poisons the queue (its state in memory no longer matches the disk); the
        // reopen finds the old head or the new one.
        let written = reader
            .write_head_if_moved(synced_seq)
            .map_err(|error| env.poison(error))?;
        if written.is_some() && env.options.sync == SyncPolicy::Always {
            let generation = reader.head.sync().map_err(|error| env.poison(error))?;
            self.head_sync.mark_durable(generation);
        }
        Ok(purged)
    }

    /// Makes `seq` available again after its move to the dead-letter queue failed.
    pub(crate) fn return_to_ready(&self, seq: u64) {
        lock(&self.reader).jobs.set_state(seq, JobState::Ready);
    }
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

    /// Writes `covered` into the head as how far the records are synced, unless it knows as
    /// much already (it never goes back), so that recovery can tell writes a power loss
    /// persisted out of order (cut) from damage to synced records (refused). Returns whether
    /// the head was written; the caller syncs it if it must.
    pub(crate) fn record_synced_seq_in(
        &self,
        env: &Env,
        reader: &mut Reader,
        covered: u64,
    ) -> Result<bool> {
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
            .map_err(|error| env.poison(error))?;
        Ok(true)
    }

    /// What tells the consumer files' state apart, for a shared queue's consumer turn: the
    /// head's generation and durable slot, and the ack log's marker. A turn that leaves it
    /// unchanged wrote nothing another process must read again.
    pub(crate) fn turn_marker(&self) -> TurnMarker {
        let reader = lock(&self.reader);
        reader.turn_marker()
    }

    /// Ends a shared queue's consumer turn: writes the ack log entries still held back for a
    /// group commit, so that the next holder reads them.
    pub(crate) fn end_turn(&self, env: &Env) -> Result<TurnEnd> {
        let mut reader = lock(&self.reader);
        reader.acklog.flush().map_err(|error| env.poison(error))?;
        Ok(TurnEnd {
            marker: reader.turn_marker(),
            files: ConsumerFiles {
                head_durable_slot: Some(reader.head.durable_slot()),
                ack_log: reader.acklog.position(),
            },
            released: self
                .released
                .swap(false, std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Whether any record waits for the end of another handle's lease.
    pub(crate) fn waits_for_leases(&self) -> bool {
        lock(&self.reader).jobs.waits_for_leases()
    }

    /// Ends the leases of other handles that are gone (see `Jobs::end_leases_of_gone`), one
    /// look per owner; returns how many ended, and whether any record still waits for
    /// another handle's lease.
    pub(crate) fn end_leases_of_gone(
        &self,
        coordination: &Coordination,
        now_us: u64,
    ) -> (usize, bool) {
        let mut reader = lock(&self.reader);
        let mut looked: Vec<(u32, bool)> = Vec::new();
        let mut is_gone = |owner: u32| match looked.iter().find(|(seen, _)| *seen == owner) {
            Some(&(_, gone)) => gone,
            None => {
                let gone = coordination.is_lease_owner_gone(owner);
                looked.push((owner, gone));
                gone
            }
        };
        let ended = reader.jobs.end_leases_of_gone(&mut is_gone, now_us);
        (ended, reader.jobs.waits_for_leases())
    }

    /// Catches up in place with what another handle's consumer turn changed, given where it
    /// left the files: reads the head slots and the ack log entries appended since this
    /// handle's tail. False when that cannot be done (the ack log was created or rewritten,
    /// where the head is durable is not known): the reader must be built again.
    pub(crate) fn catch_up(&self, env: &Env, log: &Log, files: ConsumerFiles) -> Result<bool> {
        let Some(durable_slot) = files.head_durable_slot else {
            return Ok(false);
        };
        let mut guard = lock(&self.reader);
        let reader = &mut *guard;
        let Some(entries) = reader.acklog.catch_up(files.ack_log)? else {
            return Ok(false);
        };
        reader.head.reload(durable_slot)?;
        let head = reader.head.state();
        reader.follow(env, log, head, &entries).map(|()| true)
    }

    /// Replaces the reader with `fresh`, built from the files another process's consumer turn
    /// changed: this handle's leases still standing there, its counts and its group-commit
    /// tickets carry over.
    pub(crate) fn replace_reader(&self, env: &Env, log: &Log, mut fresh: Reader) -> Result<()> {
        let mut reader = lock(&self.reader);
        let leases = reader.jobs.leases();
        if let Some(last) = leases.iter().map(|lease| lease.0).max() {
            // Tracked up to the last lease, so that each one's state is known here.
            fresh.track_through(env, log, last)?;
        }
        fresh.jobs.take_over(&reader.jobs);
        fresh.jobs.fold();
        fresh.acklog.continue_tickets(&reader.acklog);
        fresh
            .acklog
            .defer_writes(env.options.sync == SyncPolicy::Always);
        fresh.acklog.map_writes(env.options.mapped_writes);
        fresh.counts = reader.counts;
        *reader = fresh;
        Ok(())
    }

    pub(crate) fn acklog_len(&self) -> u64 {
        let (file, _) = lock(&self.reader).acklog.sync_target();
        file.and_then(|file| file.len().ok()).unwrap_or(0)
    }

    /// The oldest available tracked record, reading more from the frontier as needed.
    fn next_available(
        env: &Env,
        log: &Log,
        reader: &mut Reader,
        now_us: u64,
    ) -> Result<Option<u64>> {
        reader.jobs.fire_timers(now_us);
        loop {
            if let Some(seq) = reader.jobs.first_ready() {
                let expired = reader.jobs.get(seq).is_some_and(|job| {
                    may_expire(env, &job.record) && is_expired(env, &job.record, now_us)
                });
                if expired {
                    reader.expire(env, seq);
                    reader.jobs.fold();
                    continue;
                }
                return Ok(Some(seq));
            }
            if reader.jobs.len() >= crate::engine::jobs::IN_FLIGHT_MAX {
                return Ok(None);
            }
            let Some(found) = read_next(env, log, &mut reader.cursor)? else {
                return Ok(None);
            };
            reader.track(env, found, now_us);
            reader.jobs.fold();
        }
    }

    /// Diverts `seq` to the dead-letter queue if it has used up `max_deliveries`: it is marked
    /// as being moved and queued in `pending` for the move. Returns true if it was diverted.
    fn divert_if_spent(env: &Env, reader: &mut Reader, seq: u64, pending: &mut Pending) -> bool {
        let Some(limit) = env.options.max_deliveries else {
            return false;
        };
        let Some(job) = reader.jobs.get(seq) else {
            return false;
        };
        if job.deliveries < limit {
            return false;
        }
        pending.dead_letters.push((
            seq,
            job.record.clone(),
            job.deliveries,
            DeadLetterReason::Deliveries,
        ));
        reader.jobs.set_state(seq, JobState::DeadLettering);
        true
    }

    /// Removes up to `max` records through `convert` into `out`. A record that `convert`
    /// rejects stays in the queue and its error is returned if nothing was removed before it.
    pub(crate) fn pop_with<T, O: Popped<T>>(
        &self,
        env: &Env,
        log: &Log,
        up: &impl AfterConsume,
        max: usize,
        mut convert: impl FnMut(Record) -> Result<T>,
        mut out: O,
    ) -> Result<O> {
        env.check_poisoned()?;
        let mut clock = Clock::default();
        let mut pending = Pending::default();
        let mut failure = None;
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            let head_segment_before = reader.written_head_segment();
            let mut acked = Vec::new();
            while out.count() < max {
                let step = if reader.jobs.is_idle() {
                    Self::pop_plain(env, log, reader, &mut clock, &mut convert)
                } else {
                    let now_us = clock.now_us();
                    Self::pop_tracked(
                        env,
                        log,
                        reader,
                        now_us,
                        &mut convert,
                        &mut acked,
                        &mut pending,
                    )
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
            pending.dead_letters.append(&mut reader.expired_letters);
            reader.counts.delivered += out.count() as u64;
            pending.head_generation = reader
                .write_head_if_moved(log.synced_seq())
                .map_err(|error| env.poison(error))?;
            if !acked.is_empty() {
                pending.ack_ticket = Some(
                    reader
                        .acklog
                        .append(&*env.storage, &acked)
                        .map_err(|e| env.poison(e))?,
                );
            }
            pending.head_segment_moved = reader.written_head_segment() != head_segment_before;
        }
        self.finish(env, up, pending)?;
        match failure {
            Some(error) if out.count() == 0 => Err(error),
            _ => Ok(out),
        }
    }

    /// One `pop`: the plain FIFO path, taken while nothing is tracked (no leases, acks beyond
    /// the head or delays) without the batch machinery of [`pop_with`](Shared::pop_with), which
    /// handles every other case.
    // Inlined into `Queue::pop`, as it was before the engine was split: without it a pop costs
    // about 4 % more instructions (callgrind, `examples/hot_paths`). Always: with the two calls
    // of a shared queue's pop beside it, `#[inline]` was not enough.
    #[inline(always)]
    pub(crate) fn pop_one(
        &self,
        env: &Env,
        log: &Log,
        up: &impl AfterConsume,
    ) -> Result<Option<Record>> {
        env.check_poisoned()?;
        let (record, head_generation, head_segment_moved) = {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            if !reader.jobs.is_idle() {
                drop(guard);
                return self.pop_with(env, log, up, 1, Ok, None);
            }
            let segment_before = reader.cursor.segment.base_seq;
            let Some(found) = read_next(env, log, &mut reader.cursor)? else {
                return Ok(None);
            };
            let expired = may_expire(env, &found.record)
                && is_expired(env, &found.record, Clock::default().now_us());
            if found.record.not_before_us() != 0 || expired {
                // A delayed or expired record: the general path decides whether it is due,
                // or discards it.
                reader.cursor.rewind(found.offset, found.record.seq());
                drop(guard);
                return self.pop_with(env, log, up, 1, Ok, None);
            }
            release_room(env, 1, &found.record);
            let generation = reader
                .write_head_if_moved(log.synced_seq())
                .map_err(|error| env.poison(error))?;
            let moved = reader.cursor.segment.base_seq != segment_before;
            reader.counts.delivered += 1;
            (found.record, generation, moved)
        };
        self.finish(
            env,
            up,
            Pending {
                head_generation,
                head_segment_moved,
                ..Pending::default()
            },
        )?;
        Ok(Some(record))
    }

    /// One plain FIFO pop at the frontier, while nothing is tracked.
    fn pop_plain<T>(
        env: &Env,
        log: &Log,
        reader: &mut Reader,
        clock: &mut Clock,
        convert: &mut impl FnMut(Record) -> Result<T>,
    ) -> Result<Step<T>> {
        let Some(found) = read_next(env, log, &mut reader.cursor)? else {
            return Ok(Step::End);
        };
        if may_expire(env, &found.record) {
            let now_us = clock.now_us();
            if is_expired(env, &found.record, now_us) {
                // Tracked as expired (consumed), and the tracked path goes on after it.
                reader.track(env, found, now_us);
                reader.jobs.fold();
                return Ok(Step::Again);
            }
        }
        // Only a delayed record needs the time (reading the clock costs as much as the rest of
        // a pop).
        if found.record.not_before_us() != 0 {
            let now_us = clock.now_us();
            if found.record.not_before_us() > now_us {
                // A delayed record: track it, and let the tracked path find what comes after it.
                reader.track(env, found, now_us);
                return Ok(Step::Again);
            }
        }
        let (offset, seq) = (found.offset, found.record.seq());
        let frame_len = found.record.frame_len();
        match convert(found.record) {
            Ok(value) => {
                if let Some(limits) = &env.limits {
                    limits.release(1, frame_len);
                }
                Ok(Step::Value(value))
            }
            Err(error) => {
                // The record stays: it is in the cursor's segment, so rewinding is enough.
                reader.cursor.rewind(offset, seq);
                Err(error)
            }
        }
    }

    /// One pop among tracked records: at-most-once, like an immediate acknowledgement.
    fn pop_tracked<T>(
        env: &Env,
        log: &Log,
        reader: &mut Reader,
        now_us: u64,
        convert: &mut impl FnMut(Record) -> Result<T>,
        acked: &mut Vec<AckEntry>,
        pending: &mut Pending,
    ) -> Result<Step<T>> {
        loop {
            let Some(seq) = Self::next_available(env, log, reader, now_us)? else {
                return Ok(Step::End);
            };
            if Self::divert_if_spent(env, reader, seq, pending) {
                continue;
            }
            let Some(job) = reader.jobs.get(seq) else {
                return Ok(Step::End);
            };
            let value = convert(job.record.clone())?;
            release_room(env, 1, &job.record);
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

    /// Reads the record at the frontier and puts it back, while nothing is tracked: nothing
    /// changes but that reading a record with a TTL is noted (`Env::saw_ttl`). For a full
    /// queue deciding whether expired records may sit at its head.
    pub(crate) fn read_frontier(&self, env: &Env, log: &Log) -> Result<()> {
        let mut guard = lock(&self.reader);
        let reader = &mut *guard;
        if reader.jobs.is_idle() {
            if let Some(found) = read_next(env, log, &mut reader.cursor)? {
                reader.cursor.rewind(found.offset, found.record.seq());
            }
        }
        Ok(())
    }

    /// The oldest record that a pop would return, not removed.
    pub(crate) fn peek(&self, env: &Env, log: &Log) -> Result<Option<Record>> {
        let now_us = now_micros();
        let mut guard = lock(&self.reader);
        let reader = &mut *guard;
        if reader.jobs.is_idle() {
            match read_next(env, log, &mut reader.cursor)? {
                None => return Ok(None),
                Some(found)
                    if found.record.not_before_us() <= now_us
                        && !is_expired(env, &found.record, now_us) =>
                {
                    // Not taken: the next read starts at this record again.
                    reader.cursor.rewind(found.offset, found.record.seq());
                    return Ok(Some(found.record));
                }
                Some(found) => reader.track(env, found, now_us),
            }
        }
        let Some(seq) = Self::next_available(env, log, reader, now_us)? else {
            return Ok(None);
        };
        Ok(reader.jobs.get(seq).map(|job| job.record.clone()))
    }

    /// Hands out up to `max` records under a lease.
    pub(crate) fn recv_batch(
        &self,
        env: &Env,
        log: &Log,
        up: &impl AfterConsume,
        max: usize,
    ) -> Result<Vec<Leased>> {
        env.check_poisoned()?;
        let now_us = now_micros();
        let lease_us = u64::try_from(env.options.lease.as_micros()).unwrap_or(u64::MAX);
        let mut deliveries = Vec::new();
        let mut pending = Pending::default();
        let mut failure = None;
        // Announced to the ack log's group commit (held until `finish` returns), so that a
        // leader lets this receive join its sync.
        let _entered = self.announce_to_ack_sync(env);
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            // Expired and spent records at the head are consumed on the way.
            let head_segment_before = reader.written_head_segment();
            let mut entries = Vec::new();
            while deliveries.len() < max {
                let seq = match Self::next_available(env, log, reader, now_us) {
                    Ok(Some(seq)) => seq,
                    Ok(None) => break,
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                };
                if Self::divert_if_spent(env, reader, seq, &mut pending) {
                    continue;
                }
                let token = reader.jobs.token();
                let Some(job) = reader.jobs.get_mut(seq) else {
                    break;
                };
                // Saturating: the count may come from the ack log at `u32::MAX`.
                job.deliveries = job.deliveries.saturating_add(1);
                let record = job.record.clone();
                let count = job.deliveries;
                reader.counts.redelivered += u64::from(count > 1);
                let due_us = now_us.saturating_add(lease_us);
                reader
                    .jobs
                    .set_state(seq, JobState::Leased { due_us, token });
                entries.push(AckEntry::Delivered {
                    seq,
                    deliveries: count,
                });
                if let Some(coordination) = &env.coordination {
                    // Other processes' consumers leave it alone until the lease ends, or
                    // this handle is gone.
                    entries.push(AckEntry::NotBefore {
                        seq,
                        at_us: due_us,
                        lease_owner: coordination.lease_owner(),
                    });
                }
                deliveries.push((record, count, token));
            }
            pending.dead_letters.append(&mut reader.expired_letters);
            if !entries.is_empty() {
                match reader.acklog.append(&*env.storage, &entries) {
                    Ok(ticket) => pending.ack_ticket = Some(ticket),
                    Err(error) => {
                        // Nothing is handed out: undo the leases.
                        for (record, _, _) in &deliveries {
                            if let Some(job) = reader.jobs.get_mut(record.seq()) {
                                job.deliveries = job.deliveries.saturating_sub(1);
                            }
                            reader.jobs.set_state(record.seq(), JobState::Ready);
                        }
                        return Err(error);
                    }
                }
                self.maybe_rewrite_acklog(env, reader)?;
                reader.counts.delivered += deliveries.len() as u64;
            }
            pending.head_segment_moved = reader.written_head_segment() != head_segment_before;
        }
        let deliveries: Vec<Leased> = deliveries
            .into_iter()
            .map(|(record, deliveries, token)| Leased {
                record,
                deliveries,
                token,
            })
            .collect();
        self.finish_handing_out(env, up, pending, deliveries, failure)
    }

    /// Finishes an operation that handed out `out`. A failure met after something was handed
    /// out is not reported now: the next call meets it again, before handing out anything.
    fn finish_handing_out<T>(
        &self,
        env: &Env,
        up: &impl AfterConsume,
        pending: Pending,
        out: Vec<T>,
        failure: Option<Error>,
    ) -> Result<Vec<T>> {
        self.finish(env, up, pending)?;
        match failure {
            Some(error) if out.is_empty() => Err(error),
            _ => Ok(out),
        }
    }

    /// Marks `seq` done.
    pub(crate) fn ack(&self, env: &Env, log: &Log, up: &impl AfterConsume, seq: u64) -> Result<()> {
        env.check_poisoned()?;
        let mut pending = Pending::default();
        // Under `Always` every ack waits on the ack log's group (see `settle_acked`).
        let _entered = self.announce_to_ack_sync(env);
        {
            let mut reader = lock(&self.reader);
            let head_segment_before = reader.written_head_segment();
            self.settle_acked(env, log, &mut reader, seq, &mut pending)?;
            pending.head_segment_moved = reader.written_head_segment() != head_segment_before;
        }
        self.finish(env, up, pending)
    }

    fn settle_acked(
        &self,
        env: &Env,
        log: &Log,
        reader: &mut Reader,
        seq: u64,
        pending: &mut Pending,
    ) -> Result<()> {
        if env.coordination.is_some() && seq >= reader.cursor.next_seq {
            // A shared queue's reader built again since the record was handed out. The
            // records read on the way that others acknowledged are folded, so that an ack of
            // what is then the head moves the head rather than writing an entry.
            reader.track_through(env, log, seq)?;
            reader.jobs.fold();
        }
        let Some(job) = reader.jobs.get(seq) else {
            // No longer tracked: the head already passed it.
            return Ok(());
        };
        if job.state == JobState::Acked {
            return Ok(());
        }
        release_room(env, 1, &job.record);
        // A record moved to the dead-letter queue is settled here too, but not acknowledged.
        reader.counts.acked += u64::from(job.state != JobState::DeadLettering);
        let at_head = reader.jobs.first_seq() == Some(seq);
        reader.jobs.set_state(seq, JobState::Acked);
        if at_head {
            reader.jobs.fold();
            let generation = reader
                .write_head_if_moved(log.synced_seq())
                .map_err(|error| env.poison(error))?;
            if env.options.sync != SyncPolicy::Always {
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
                .append(&*env.storage, &[entry])
                .map_err(|error| env.poison(error))?,
        );
        self.maybe_rewrite_acklog(env, reader)?;
        Ok(())
    }

    /// Releases a leased record, now or after `delay`. A release by a receiver whose lease ran
    /// out (and whose record may be with someone else now) changes nothing.
    pub(crate) fn release(
        &self,
        env: &Env,
        up: &impl AfterConsume,
        seq: u64,
        token: u64,
        delay: Option<Duration>,
    ) -> Result<()> {
        let now_us = now_micros();
        let mut pending = Pending::default();
        {
            let mut guard = lock(&self.reader);
            let reader = &mut *guard;
            let Some(job) = reader.jobs.get(seq) else {
                return Ok(());
            };
            if !matches!(job.state, JobState::Leased { token: held, .. } if held == token) {
                return Ok(());
            }
            reader.counts.nacked += 1;
            if !Self::divert_if_spent(env, reader, seq, &mut pending) {
                let (state, not_before_us) = match delay {
                    Some(delay) if !delay.is_zero() => {
                        let delay_us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
                        let due_us = now_us.saturating_add(delay_us);
                        (JobState::Waiting { due_us }, Some(due_us))
                    }
                    // In a shared queue a release now ends the lease written for other
                    // processes' consumers.
                    _ => (
                        JobState::Ready,
                        env.coordination.is_some().then_some(now_us),
                    ),
                };
                reader.jobs.set_state(seq, state);
                if let Some(at_us) = not_before_us {
                    env.check_poisoned()?;
                    // A retry time: it holds whoever wrote it.
                    let entry = AckEntry::NotBefore {
                        seq,
                        at_us,
                        lease_owner: 0,
                    };
                    pending.ack_ticket = Some(
                        reader
                            .acklog
                            .append(&*env.storage, &[entry])
                            .map_err(|error| env.poison(error))?,
                    );
                }
            }
        }
        env.arrivals.notify();
        if env.coordination.is_some() {
            self.released
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.finish(env, up, pending)
    }

    /// Extends a lease to `lease` from now.
    pub(crate) fn extend(&self, env: &Env, seq: u64, token: u64, lease: Duration) -> Result<()> {
        let now_us = now_micros();
        let mut reader = lock(&self.reader);
        let held = reader.jobs.get(seq).is_some_and(
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
        if let Some(coordination) = &env.coordination {
            // Written for other processes' consumers (a crash that loses it ends the lease
            // sooner: the record is delivered again, never lost).
            env.check_poisoned()?;
            let entry = AckEntry::NotBefore {
                seq,
                at_us: due_us,
                lease_owner: coordination.lease_owner(),
            };
            reader
                .acklog
                .append(&*env.storage, &[entry])
                .map_err(|error| env.poison(error))?;
        }
        Ok(())
    }

    /// Takes a leased record out of the reader for an immediate move to the dead-letter queue,
    /// whatever its delivery count: returns it with its count. Fails with
    /// [`Error::LeaseExpired`] if the lease ran out and the record may be with someone else.
    pub(crate) fn take_for_dead_letter(
        &self,
        env: &Env,
        seq: u64,
        token: u64,
    ) -> Result<(Record, u32)> {
        env.check_poisoned()?;
        let mut reader = lock(&self.reader);
        let job = reader.jobs.get(seq).filter(
            |job| matches!(job.state, JobState::Leased { token: held, .. } if held == token),
        );
        let Some(job) = job else {
            return Err(Error::LeaseExpired { seq });
        };
        let taken = (job.record.clone(), job.deliveries);
        reader.jobs.set_state(seq, JobState::DeadLettering);
        Ok(taken)
    }

    /// Rewrites the ack log when obsolete entries dominate it. The head is synced first, so
    /// that the head that makes the dropped entries obsolete survives any crash.
    fn maybe_rewrite_acklog(&self, env: &Env, reader: &mut Reader) -> Result<()> {
        if !reader.acklog.wants_rewrite(reader.jobs.live_estimate()) {
            return Ok(());
        }
        // The head in memory may be past the one in the file: a shared queue's consumer folds
        // the records other handles acknowledged out of order when it catches up, without a
        // write. Written first: the rewrite drops the facts of every record behind it.
        let synced_seq = reader.head.state().synced_seq;
        reader
            .write_head_if_moved(synced_seq)
            .map_err(|error| env.poison(error))?;
        let generation = reader.head.sync().map_err(|error| env.poison(error))?;
        self.head_sync.mark_durable(generation);
        let live = reader.jobs.live_entries(
            env.coordination
                .as_ref()
                .map(|coordination| coordination.lease_owner()),
        );
        reader
            .acklog
            .rewrite(&*env.storage, &live)
            .map_err(|error| env.poison(error))
    }

    /// Makes durable what the policy asks for, moves dead letters, compacts.
    fn finish(&self, env: &Env, up: &impl AfterConsume, pending: Pending) -> Result<()> {
        if env.options.sync == SyncPolicy::Always {
            if let Some(generation) = pending.head_generation {
                self.head_sync
                    .wait(generation, || self.sync_head())
                    .map_err(|error| env.poison(error))?;
            }
            if let Some(ticket) = pending.ack_ticket {
                self.ack_sync
                    .wait(ticket, || self.sync_acklog())
                    .map_err(|error| env.poison(error))?;
            }
        }
        // Checked first: building and dropping the iterator of an empty vector costs a pop
        // about 26 instructions (callgrind), 3 % of it.
        if !pending.dead_letters.is_empty() {
            for (seq, record, deliveries, reason) in pending.dead_letters {
                up.move_to_dead_letters(seq, &record, deliveries, reason)?;
            }
        }
        if pending.head_segment_moved && env.options.auto_compact {
            // The records are already consumed; a failed compaction is retried by the next one,
            // and an I/O failure in it poisons the queue, so the caller learns of it next call.
            up.compact();
        }
        Ok(())
    }

    /// Announces a receive or an ack to the ack log's group commit under `Always` (a hint for
    /// its leader; see `SyncGroup::enter`): hold it from before the write until `finish` returns.
    fn announce_to_ack_sync(&self, env: &Env) -> Option<crate::engine::sync::Entered<'_>> {
        (env.options.sync == SyncPolicy::Always).then(|| self.ack_sync.enter())
    }

    /// Writes the ack log's pending entries and syncs it; returns the ticket covered.
    pub(crate) fn sync_acklog(&self) -> Result<u64> {
        let (file, ticket, path, tail) = {
            let mut reader = lock(&self.reader);
            reader.acklog.flush()?;
            let (file, ticket) = reader.acklog.sync_target();
            let tail = reader.acklog.tail();
            (file, ticket, reader.acklog.path().to_path_buf(), tail)
        };
        if let Some(file) = file {
            file.sync_data()
                .map_err(|error| Error::io("sync ack log", path, error))?;
            lock(&self.reader).acklog.synced(&file, tail);
        }
        Ok(ticket)
    }
}
