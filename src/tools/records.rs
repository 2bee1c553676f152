//! Reading records and sizes from the head of a queue without locking it: [`stat`] and
//! [`records`]. Both read through the one consistent view of `view`, holding every segment they
//! need open from the start. A reader holds one segment's bytes at a time and moves segment by
//! segment, starting where the head index's hint says (as the engine does), so that damage among
//! consumed records of a sealed segment does not stop it; the last segment is checked whole, by
//! the rule `Queue::open` applies to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::inspect::{
    read_ack_log, scan_segment, scan_segment_from, AckLogSnapshot, HeaderStatus, SegmentEnd,
    SegmentScan, SNAPSHOT_ATTEMPTS_MAX, SNAPSHOT_RETRY_PAUSE,
};
use super::view::{with_view, Fetched, Held, Step, View};
use crate::error::{Error, Result};
use crate::format::acklog::check_next_base;
use crate::format::frame::{self, BodyPrefix, FrameRules};
use crate::format::segment::{
    check_oldest_base, decode_header, locate_seq, walk_headers, HeaderError, SEGMENT_HEADER_LEN,
};
use crate::stats::Stats;
use crate::storage::Storage;

/// Reads a queue's sizes and positions without locking it: the [`Stats`] that
/// [`Queue::stats`](crate::Queue::stats) reports on the open queue, but for what only that
/// process knows (`leased` is `None`; see the fields). Reads the head index, the segment
/// holding the head and the last segment; the others only by their length.
pub fn stat(storage: &dyn Storage, dir: &Path) -> Result<Stats> {
    retry_while_changing(|| with_view(storage, dir, stat_once))
}

/// Runs a lock-free read again, after a short pause, while it fails: a failure may come from a
/// write in flight. Real damage fails every attempt and is returned.
fn retry_while_changing<T>(mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let mut outcome = attempt();
    for _ in 1..SNAPSHOT_ATTEMPTS_MAX {
        if outcome.is_ok() {
            break;
        }
        std::thread::sleep(SNAPSHOT_RETRY_PAUSE);
        outcome = attempt();
    }
    outcome
}

fn stat_once(mut view: View<'_>) -> Result<Step<Stats>> {
    // Every segment from the head's on is opened before any is read: what follows describes
    // one moment, whatever the running queue pops and compacts meanwhile.
    if let Held::Gone(error) = view.hold(None)? {
        return Ok(Step::Retake(error));
    }
    let acks = read_ack_log(view.storage(), &view.dir)?;
    if let Some(error) = acks.error(&view.dir) {
        return Err(error);
    }
    let settings_len = match view.listing.settings_present {
        true => crate::format::settings::SETTINGS_FILE_LEN as u64,
        false => 0,
    };
    let mut disk_bytes =
        view.head.file_len.unwrap_or(0) + acks.file_len.unwrap_or(0) + settings_len;
    let mut lens = Vec::with_capacity(view.listing.segments.len());
    let mut segments = 0;
    for index in 0..view.listing.segments.len() {
        // A segment before the head's that is gone now was compacted: not on disk any more.
        let len = view.len(index)?;
        segments += usize::from(len.is_some());
        disk_bytes += len.unwrap_or(0);
        lens.push(len.unwrap_or(0));
    }
    let mut cursor = Cursor::locate(&mut view, &acks, None)?;
    let tail = match Tail::read(&mut view)? {
        Step::Done(tail) => tail,
        Step::Retake(error) => return Ok(Step::Retake(error)),
    };
    let live_bytes = match (cursor.loaded, tail.index) {
        (Some(head_index), Some(tail_index)) if head_index == tail_index => {
            tail.valid_end.saturating_sub(cursor.offset)
        }
        (Some(head_index), Some(tail_index)) => {
            let header = SEGMENT_HEADER_LEN as u64;
            let middle: u64 = lens
                .iter()
                .take(tail_index)
                .skip(head_index + 1)
                .map(|len| len.saturating_sub(header))
                .sum();
            cursor.valid_end.saturating_sub(cursor.offset)
                + middle
                + tail.valid_end.saturating_sub(header)
        }
        _ => 0,
    };
    let head_seq = cursor.head_seq;
    let (delayed, oldest_ready_us) = walk_unconsumed(&mut view, &cursor, &tail, &acks)?;
    // Read through the checked path too: damage before the first record not acknowledged is
    // reported as a reader meets it.
    let mut first = cursor.step(&mut view)?;
    while first
        .as_ref()
        .is_some_and(|record| acks.is_acked(record.seq))
    {
        first = cursor.step(&mut view)?;
    }
    let acked = acks.history.acked_count_from(head_seq);
    let len = tail.next_seq.saturating_sub(head_seq).saturating_sub(acked);
    Ok(Step::Done(Stats {
        len,
        head_seq,
        next_seq: tail.next_seq.max(head_seq),
        segments,
        live_bytes,
        disk_bytes,
        oldest_enqueued_at: oldest_ready_us.map(|us| UNIX_EPOCH + Duration::from_micros(us)),
        // Leases live in the memory of the process that holds the queue open.
        leased: None,
        ready: len.saturating_sub(delayed),
        delayed,
        // So do the counters.
        totals: None,
    }))
}

/// Walks the frame headers of every record not consumed (no checksums: the checked read of
/// the first record reports damage): the records that wait for a delay or a retry, and when the
/// oldest of the others was pushed. Reads every segment from the head's on.
fn walk_unconsumed(
    view: &mut View<'_>,
    cursor: &Cursor,
    tail: &Tail,
    acks: &AckLogSnapshot,
) -> Result<(u64, Option<u64>)> {
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
    let mut delayed = 0;
    let mut oldest_ready_us = None;
    let mut visit = |header: &frame::FrameHeader, prefix: BodyPrefix| {
        if header.seq >= tail.next_seq || acks.is_acked(header.seq) {
            return;
        }
        if acks
            .history
            .is_delayed(header.seq, prefix.not_before_us, now_us)
        {
            delayed += 1;
        } else if oldest_ready_us.is_none() {
            oldest_ready_us = Some(header.enqueued_us);
        }
    };
    let Some(loaded) = cursor.loaded else {
        return Ok((0, None));
    };
    let end = match tail.index == Some(loaded) {
        true => tail.valid_end.min(cursor.valid_end),
        false => cursor.valid_end,
    };
    let bytes = cursor.bytes.get(..end as usize).unwrap_or(&[]);
    walk_headers(
        bytes,
        cursor.offset as usize,
        cursor.next_seq,
        cursor.rules,
        &mut visit,
    );
    let Some(last) = tail.index else {
        return Ok((delayed, oldest_ready_us));
    };
    for index in loaded + 1..=last {
        let base = view.listing.segments[index].0;
        let bytes = match view.fetch(index)? {
            Fetched::Bytes(bytes) => bytes,
            Fetched::Consumed => continue,
            Fetched::Gone(error) => return Err(error),
        };
        let end = match tail.index == Some(index) {
            true => tail.valid_end as usize,
            false => bytes.len(),
        };
        let bytes = bytes.get(..end).unwrap_or(&[]);
        let rules = decode_header(bytes).map_or(FrameRules::CURRENT, |header| header.rules);
        walk_headers(bytes, SEGMENT_HEADER_LEN, base, rules, &mut visit);
    }
    Ok((delayed, oldest_ready_us))
}

/// The end of the log: the last segment that `Queue::open` would keep.
struct Tail {
    /// Index into the listing, `None` without segments.
    index: Option<usize>,
    /// The sequence number the next push gets.
    next_seq: u64,
    /// Where the last complete batch ends.
    valid_end: u64,
}

impl Tail {
    /// Reads the last segment (the one before it when its creation was cut short) and checks it
    /// as `Queue::open` does: damage in it stops the reader, an interrupted write is not counted.
    fn read(view: &mut View<'_>) -> Result<Step<Tail>> {
        let synced_seq = view.synced_seq();
        let count = view.listing.segments.len();
        for index in (0..count).rev() {
            let path = view.path(index);
            let bytes = match view.fetch(index)? {
                Fetched::Bytes(bytes) => bytes,
                // The end of the log moved on: the listing is stale.
                Fetched::Consumed => {
                    let error = Error::corrupt(path, 0, "segment compacted while being read");
                    return Ok(Step::Retake(error));
                }
                Fetched::Gone(error) => return Ok(Step::Retake(error)),
            };
            let Some((base, name)) = view.listing.segments.get(index) else {
                break;
            };
            let scan = scan_segment(name, *base, &bytes);
            if index + 1 == count && scan.is_unborn() {
                continue;
            }
            check_header(&path, &scan)?;
            if scan.is_damaged(true, synced_seq) {
                return Err(damage_error(&path, &scan));
            }
            return Ok(Step::Done(Tail {
                index: Some(index),
                next_seq: scan.next_seq(),
                valid_end: scan.valid_end,
            }));
        }
        Ok(Step::Done(Tail {
            index: None,
            next_seq: 0,
            valid_end: SEGMENT_HEADER_LEN as u64,
        }))
    }
}

/// Where a reader stops serving a segment's records, and the sequence number there. In the
/// last segment: the end of the last complete batch (an interrupted batch is cut whole, as
/// `Queue::open` cuts it). In a sealed segment, which was synced whole so that a batch it holds
/// was complete: the first frame that fails, as `pop` reads it.
fn serving_end(scan: &SegmentScan, is_last: bool, file_len: usize) -> (u64, u64) {
    match (&scan.end, is_last) {
        (
            SegmentEnd::BadFrame {
                offset,
                expected_seq,
                ..
            },
            false,
        ) => ((*offset).min(file_len as u64), *expected_seq),
        _ => (scan.valid_end.min(file_len as u64), scan.next_seq()),
    }
}

/// Whether reading the segment ends in an error, as `pop` would end: damage by the rule of
/// [`SegmentScan::is_damaged`], except a sealed segment cut inside its last frame's padding,
/// whose records are all intact (`pop` reads them; `verify` still reports the cut padding,
/// which `repair` restores).
fn serves_damage(scan: &SegmentScan, is_last: bool, synced_seq: u64) -> bool {
    let padding_only = !is_last && scan.end == SegmentEnd::PaddingCut;
    scan.is_damaged(is_last, synced_seq) && !padding_only
}

/// The error for the damage a scan ends with.
fn damage_error(path: &Path, scan: &SegmentScan) -> Error {
    let detail = match &scan.end {
        SegmentEnd::BadFrame {
            error,
            later_frames,
            ..
        } => match later_frames.first() {
            Some((later_offset, later_seq)) => format!(
                "{error}; a valid record (sequence {later_seq} at offset {later_offset}) \
                 follows, so this is damage rather than a torn write"
            ),
            None => error.to_string(),
        },
        SegmentEnd::PaddingCut | SegmentEnd::IncompleteBatch { .. } => {
            String::from("sealed segment ends inside a batch")
        }
        SegmentEnd::Clean => String::from("damaged"),
    };
    Error::corrupt(path, scan.stop_offset(), detail)
}

fn check_header(path: &Path, scan: &SegmentScan) -> Result<()> {
    match &scan.header {
        HeaderStatus::Ok => Ok(()),
        HeaderStatus::Bad(HeaderError::UnsupportedVersion(found)) => {
            Err(Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found: *found,
                supported: crate::format::segment::FORMAT_VERSION,
            })
        }
        HeaderStatus::Bad(error) => Err(Error::corrupt(path, 0, error.to_string())),
        HeaderStatus::WrongBase { found } => Err(Error::corrupt(
            path,
            0,
            format!(
                "header names base sequence {found}, file name {}",
                scan.base_seq
            ),
        )),
    }
}

/// A record copied out of a segment by a lock-free reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The record's sequence number.
    pub seq: u64,
    /// Enqueue time in microseconds since the Unix epoch.
    pub enqueued_us: u64,
    /// For a delayed record, the time before which it is not handed out, in microseconds since
    /// the Unix epoch; 0 if none.
    pub not_before_us: u64,
    /// For a record pushed with a TTL, the TTL in microseconds after `enqueued_us`; 0 if none.
    pub ttl_us: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// When the record was pushed.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_us)
    }

    /// For a record pushed with a TTL: when it expires (its enqueue time plus the TTL), in
    /// microseconds since the Unix epoch. A queue never hands it out after that.
    pub fn expires_at_us(&self) -> Option<u64> {
        frame::expires_at_us(self.enqueued_us, self.ttl_us)
    }
}

/// A lock-free read position: one segment's bytes and an offset in them.
#[derive(Debug)]
struct Cursor {
    head_seq: u64,
    /// The ack log's acknowledged ranges: a gap between segments that one of them retired
    /// (see `acklog::is_retired_gap`) is crossed, any other is missing records.
    acked: BTreeMap<u64, u64>,
    /// Index into the listing of the segment in `bytes`.
    loaded: Option<usize>,
    bytes: Vec<u8>,
    /// How the frames of the segment in `bytes` are read (its header's format version).
    rules: FrameRules,
    offset: u64,
    next_seq: u64,
    /// Where the loaded segment stops serving records.
    valid_end: u64,
    /// The sequence number of the record at `valid_end`: just past the last one served.
    end_seq: u64,
    /// Raised when the reader reaches `valid_end` of a damaged segment.
    damage: Option<Error>,
    finished: bool,
}

impl Cursor {
    /// Positions a reader at the first record at or after `from` (the head by default; never
    /// before the head).
    fn locate(view: &mut View<'_>, acks: &AckLogSnapshot, from: Option<u64>) -> Result<Cursor> {
        let head_seq = view.head_seq()?;
        let target = from.unwrap_or(head_seq).max(head_seq);
        let mut cursor = Cursor {
            head_seq,
            acked: acks.history.acked.clone(),
            loaded: None,
            bytes: Vec::new(),
            rules: FrameRules::CURRENT,
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq: target,
            valid_end: SEGMENT_HEADER_LEN as u64,
            end_seq: target,
            damage: None,
            finished: true,
        };
        let Some(index) = view.holding(target) else {
            if let Some((first, name)) = view.listing.segments.first() {
                if let Err(sequence_break) = check_oldest_base(head_seq, *first) {
                    let path = view.dir.join(name);
                    return Err(Error::corrupt(path, 0, sequence_break.to_string()));
                }
            }
            return Ok(cursor);
        };
        cursor.finished = false;
        cursor.enter(view, index)?;
        if cursor.loaded == Some(index) {
            cursor.move_to(view, index, target);
        }
        // Skip the records before the target (consumed ones, or those before `from`) when it
        // was not located: stepping reports the damage in their way where it serves it.
        while !cursor.finished && cursor.next_seq < target {
            if cursor.offset >= cursor.valid_end {
                break;
            }
            cursor.step(view)?;
        }
        Ok(cursor)
    }

    /// Reads segment `index` of the listing and positions at its first frame. A segment found
    /// consumed (only possible for one the view could not hold open) is skipped: the head
    /// passed its records while they were being read.
    fn enter(&mut self, view: &mut View<'_>, index: usize) -> Result<()> {
        let mut index = index;
        loop {
            let Some((base, name)) = view.listing.segments.get(index).cloned() else {
                self.finished = true;
                return Ok(());
            };
            let path = view.path(index);
            let bytes = match view.fetch(index)? {
                Fetched::Bytes(bytes) => bytes,
                Fetched::Consumed => {
                    index += 1;
                    if let Some((next_base, _)) = view.listing.segments.get(index) {
                        self.next_seq = *next_base;
                    }
                    continue;
                }
                Fetched::Gone(error) => return Err(error),
            };
            if self.loaded.is_some() {
                if let Err(sequence_break) = check_next_base(self.next_seq, base, &self.acked) {
                    return Err(Error::corrupt(&path, 0, sequence_break.to_string()));
                }
            }
            let scan = scan_segment(&name, base, &bytes);
            let is_last = index + 1 == view.listing.segments.len();
            if is_last && scan.is_unborn() {
                self.finished = true;
                return Ok(());
            }
            check_header(&path, &scan)?;
            // The rule `Queue::open` applies: a sealed segment was synced whole, so anything
            // but a clean end is damage; in the last one, damage is told from an interrupted
            // write by the head's `synced_seq`. The records before it are still served.
            self.damage = serves_damage(&scan, is_last, view.synced_seq())
                .then(|| damage_error(&path, &scan));
            self.loaded = Some(index);
            self.rules = scan.rules;
            self.next_seq = base;
            self.offset = SEGMENT_HEADER_LEN as u64;
            (self.valid_end, self.end_seq) = serving_end(&scan, is_last, bytes.len());
            self.bytes = bytes;
            return Ok(());
        }
    }

    /// Moves to record `target` in the loaded segment `index` by the rule `Queue::open` locates
    /// the head with (`segment::locate_seq`). At the head, the head index's hint is taken when it
    /// checks out, as the engine does: in a sealed segment, consumed records before it are not
    /// read, so damage among them does not stop the reader. (The last segment is checked whole,
    /// as `Queue::open` does.) When the record is not located, the reader stays where it is.
    fn move_to(&mut self, view: &View<'_>, index: usize, target: u64) {
        let Some((base, name)) = view.listing.segments.get(index) else {
            return;
        };
        let hint = view
            .head
            .state()
            .filter(|state| state.head_seq == target && state.hint_base == *base)
            .map(|state| state.hint_offset);
        let Ok(found) = locate_seq(&self.bytes, *base, hint, target, self.rules) else {
            return;
        };
        self.offset = found.offset;
        self.next_seq = target;
        // A walk read every frame before the record: the segment's scan from its start holds.
        if !found.by_hint || index + 1 == view.listing.segments.len() {
            return;
        }
        let start = (found.offset, target);
        let scan = scan_segment_from(name, *base, &self.bytes, start, self.rules);
        (self.valid_end, self.end_seq) = serving_end(&scan, false, self.bytes.len());
        self.damage =
            serves_damage(&scan, false, u64::MAX).then(|| damage_error(&view.path(index), &scan));
    }

    /// The next record, or `None` at the end of the log.
    fn step(&mut self, view: &mut View<'_>) -> Result<Option<StoredRecord>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.offset < self.valid_end {
                return self.decode_here(view).map(Some);
            }
            if let Some(damage) = self.damage.take() {
                self.finished = true;
                return Err(damage);
            }
            let next = self.loaded.map_or(0, |index| index + 1);
            if next >= view.listing.segments.len() {
                self.finished = true;
                return Ok(None);
            }
            self.enter(view, next)?;
        }
    }

    fn decode_here(&mut self, view: &View<'_>) -> Result<StoredRecord> {
        let path = match self.loaded {
            Some(index) => view.path(index),
            None => view.dir.clone(),
        };
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(self.valid_end).unwrap_or(usize::MAX);
        let at = self.bytes.get(start..end).unwrap_or(&[]);
        let decoded = frame::decode(at, self.next_seq, self.rules).map_err(|error| {
            self.finished = true;
            Error::corrupt(&path, self.offset, error.to_string())
        })?;
        let payload = at.get(decoded.payload.clone()).unwrap_or(&[]).to_vec();
        let record = StoredRecord {
            seq: self.next_seq,
            enqueued_us: decoded.header.enqueued_us,
            not_before_us: decoded.not_before_us,
            ttl_us: decoded.ttl_us,
            payload,
        };
        self.offset += decoded.frame_len as u64;
        self.next_seq += 1;
        Ok(record)
    }
}

/// Records from the head (or from `from`, if later), read without locking and without removing
/// them. See [`records`].
#[derive(Debug)]
pub struct Records<'a> {
    view: View<'a>,
    cursor: Cursor,
    /// Records acknowledged out of order (jobs API) are no longer in the queue: skipped.
    acks: AckLogSnapshot,
}

impl Iterator for Records<'_> {
    type Item = Result<StoredRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let step = self.cursor.step(&mut self.view);
            match step {
                Ok(Some(record)) if self.acks.is_acked(record.seq) => continue,
                other => return other.transpose(),
            }
        }
    }
}

/// Reads the queue's records without removing them, oldest first, starting at the head or at
/// `from` when that is later. Every segment file from the head's on is opened first, so the
/// records are those in the queue at that moment, in order and without gaps, however far a
/// running queue pops and compacts meanwhile; records pushed after the call may or may not be
/// included. (Past the process's limit of open files, the remaining segments are opened when
/// reached: one compacted by then is skipped, its records consumed meanwhile.) Damage ends the
/// iteration with [`Error::Corrupt`]; an interrupted write at the very end of the log ends it
/// quietly, as `Queue::open` would cut it (see [`SegmentScan::is_damaged`]).
pub fn records<'a>(storage: &'a dyn Storage, dir: &Path, from: Option<u64>) -> Result<Records<'a>> {
    retry_while_changing(|| {
        with_view(storage, dir, |mut view| {
            if let Held::Gone(error) = view.hold(from)? {
                return Ok(Step::Retake(error));
            }
            let acks = read_ack_log(storage, dir)?;
            if let Some(error) = acks.error(dir) {
                return Err(error);
            }
            let cursor = Cursor::locate(&mut view, &acks, from)?;
            Ok(Step::Done(Records { view, cursor, acks }))
        })
    })
}
