//! Reading records and sizes from the head of a queue without locking it: [`stat`] and
//! [`records`]. A reader holds one segment's bytes at a time and moves segment by segment,
//! starting where the head index's hint says (as the engine does), so that damage among
//! consumed records does not stop it.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    list, read_ack_log, read_file, read_head, scan_segment, AckLogSnapshot, HeadSnapshot,
    HeaderStatus, Listing, SegmentEnd, SegmentScan, SNAPSHOT_ATTEMPTS_MAX, SNAPSHOT_RETRY_PAUSE,
};
use crate::acklog::is_retired_gap;
use crate::error::{Error, Result};
use crate::frame::{self, PAYLOAD_LEN_MAX};
use crate::head::{HeadState, HEAD_FILE_NAME};
use crate::segment::{walk_frames, HeaderError, WalkStep, SEGMENT_HEADER_LEN};
use crate::storage::Storage;

/// Sizes and positions of a queue, read without locking. Field names match the JSON of
/// `spool stat --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStat {
    /// Records in the queue.
    pub len: u64,
    /// Sequence number of the oldest record (the next pop).
    pub head_seq: u64,
    /// Sequence number the next push will get.
    pub next_seq: u64,
    /// Segment files on disk.
    pub segments: usize,
    /// Bytes of frames not yet consumed.
    pub live_bytes: u64,
    /// Bytes of all segment files, the head index, the settings file and the ack log.
    pub disk_bytes: u64,
    /// When the oldest record was pushed, microseconds since the Unix epoch.
    pub oldest_enqueued_us: Option<u64>,
}

impl QueueStat {
    /// How long ago the oldest record was pushed, by this machine's clock.
    pub fn oldest_age(&self, now: SystemTime) -> Option<Duration> {
        let enqueued = UNIX_EPOCH + Duration::from_micros(self.oldest_enqueued_us?);
        Some(now.duration_since(enqueued).unwrap_or(Duration::ZERO))
    }
}

/// Reads a queue's sizes and positions without locking it. Reads the head index, the segment
/// holding the head and the last segment; the others only by their length.
pub fn stat(storage: &dyn Storage, dir: &Path) -> Result<QueueStat> {
    retry_while_changing(|| stat_once(storage, dir))
}

/// Runs a lock-free read again, after a short pause, while it fails: a failure may come from a
/// write or a compaction in flight. Real damage fails every attempt and is returned.
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

fn stat_once(storage: &dyn Storage, dir: &Path) -> Result<QueueStat> {
    let listing = list(storage, dir)?;
    let head = read_head(storage, dir)?;
    let acks = read_ack_log(storage, dir)?;
    if let Some(error) = acks.error(dir) {
        return Err(error);
    }
    let settings_len = match listing.settings_present {
        true => crate::settings::SETTINGS_FILE_LEN as u64,
        false => 0,
    };
    let mut disk_bytes = head.file_len.unwrap_or(0) + acks.file_len.unwrap_or(0) + settings_len;
    let mut lens = Vec::with_capacity(listing.segments.len());
    for (_, name) in &listing.segments {
        let path = dir.join(name);
        let len = match storage.open_read(&path) {
            Ok(file) => file
                .len()
                .map_err(|error| Error::io("stat", &path, error))?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(error) => return Err(Error::io("open", &path, error)),
        };
        disk_bytes += len;
        lens.push(len);
    }
    let mut cursor = Cursor::locate(storage, dir, &listing, &head, &acks, None, OnVanish::Fail)?;
    let mut tail = Tail::read(storage, dir, &listing)?;
    if cursor.loaded.is_some() && cursor.loaded == tail.index {
        // The reader started from the head's hint and may have read past damage before it.
        tail.next_seq = cursor.end_seq;
        tail.valid_end = cursor.valid_end;
    }
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
    let mut oldest = cursor.step(storage, dir, &listing)?;
    while oldest
        .as_ref()
        .is_some_and(|record| acks.is_acked(record.seq))
    {
        oldest = cursor.step(storage, dir, &listing)?;
    }
    let acked = acks.history.acked_count_from(head_seq);
    Ok(QueueStat {
        len: tail.next_seq.saturating_sub(head_seq).saturating_sub(acked),
        head_seq,
        next_seq: tail.next_seq.max(head_seq),
        segments: listing.segments.len(),
        live_bytes,
        disk_bytes,
        oldest_enqueued_us: oldest.map(|record| record.enqueued_us),
    })
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
    fn read(storage: &dyn Storage, dir: &Path, listing: &Listing) -> Result<Tail> {
        for (index, (base, name)) in listing.segments.iter().enumerate().rev() {
            let path = dir.join(name);
            let Some(bytes) = read_file(storage, &path)? else {
                return Err(Error::corrupt(path, 0, "segment deleted while being read"));
            };
            let scan = scan_segment(name, *base, &bytes);
            let is_last = index + 1 == listing.segments.len();
            if is_last && scan.is_unborn() {
                continue;
            }
            check_header(&path, &scan)?;
            return Ok(Tail {
                index: Some(index),
                next_seq: scan.next_seq(),
                valid_end: scan.valid_end,
            });
        }
        Ok(Tail {
            index: None,
            next_seq: 0,
            valid_end: SEGMENT_HEADER_LEN as u64,
        })
    }
}

fn check_header(path: &Path, scan: &SegmentScan) -> Result<()> {
    match &scan.header {
        HeaderStatus::Ok => Ok(()),
        HeaderStatus::Bad(HeaderError::UnsupportedVersion(found)) => {
            Err(Error::UnsupportedVersion {
                file: path.to_path_buf(),
                found: *found,
                supported: crate::segment::FORMAT_VERSION,
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
    /// The payload.
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// When the record was pushed.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_us)
    }
}

/// What a reader does when a segment it needs was deleted after the listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnVanish {
    /// Fail, so that the caller takes a fresh view.
    Fail,
    /// Go on with the next segment: compaction deleted it, so its records were consumed.
    Skip,
}

/// A lock-free read position: one segment's bytes and an offset in them.
#[derive(Debug)]
struct Cursor {
    head_seq: u64,
    /// The ack log's acknowledged ranges: a gap between segments that one of them retired
    /// (see `acklog::is_retired_gap`) is crossed, any other is missing records.
    acked: BTreeMap<u64, u64>,
    on_vanish: OnVanish,
    /// Index into the listing of the segment in `bytes`.
    loaded: Option<usize>,
    bytes: Vec<u8>,
    offset: u64,
    next_seq: u64,
    /// Where the loaded segment stops serving records.
    valid_end: u64,
    /// The sequence number of the record at `valid_end`: just past the last one served.
    end_seq: u64,
    /// Raised when the reader reaches `valid_end` of a damaged sealed segment.
    damage: Option<Error>,
    finished: bool,
}

impl Cursor {
    /// Positions a reader at the first record at or after `from` (the head by default; never
    /// before the head).
    fn locate(
        storage: &dyn Storage,
        dir: &Path,
        listing: &Listing,
        head: &HeadSnapshot,
        acks: &AckLogSnapshot,
        from: Option<u64>,
        on_vanish: OnVanish,
    ) -> Result<Cursor> {
        if let Some((offset, why)) = head.out_of_range() {
            return Err(Error::corrupt(dir.join(HEAD_FILE_NAME), offset, why));
        }
        let head_seq = match head.state() {
            Some(state) => state.head_seq,
            None if head.file_len.is_none() && listing.segments.is_empty() => 0,
            None => {
                return Err(Error::corrupt(
                    dir.join(HEAD_FILE_NAME),
                    0,
                    "the head index is missing or has no valid slot, so which records were \
                     consumed is unknown",
                ))
            }
        };
        let target = from.unwrap_or(head_seq).max(head_seq);
        let mut cursor = Cursor {
            head_seq,
            acked: acks.history.acked.clone(),
            on_vanish,
            loaded: None,
            bytes: Vec::new(),
            offset: SEGMENT_HEADER_LEN as u64,
            next_seq: target,
            valid_end: SEGMENT_HEADER_LEN as u64,
            end_seq: target,
            damage: None,
            finished: true,
        };
        let Some(index) = listing
            .segments
            .iter()
            .rposition(|(base, _)| *base <= target)
        else {
            if let Some((first, name)) = listing.segments.first() {
                return Err(Error::corrupt(
                    dir.join(name),
                    0,
                    format!(
                        "records {head_seq}..{first} are missing: the head is at {head_seq} \
                         but the oldest segment starts at {first}"
                    ),
                ));
            }
            return Ok(cursor);
        };
        cursor.finished = false;
        cursor.enter(storage, dir, listing, index)?;
        if target == head_seq {
            if let Some(state) = head.state() {
                cursor.jump_to_hint(dir, listing, index, state);
            }
        }
        // Skip the records before the target: consumed ones, or those before `from`.
        while !cursor.finished && cursor.next_seq < target {
            if cursor.offset >= cursor.valid_end {
                break;
            }
            cursor.step(storage, dir, listing)?;
        }
        Ok(cursor)
    }

    /// Reads segment `index` of the listing and positions at its first frame; skips segments
    /// that vanished if allowed.
    fn enter(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
        listing: &Listing,
        index: usize,
    ) -> Result<()> {
        let mut index = index;
        loop {
            let Some((base, name)) = listing.segments.get(index) else {
                self.finished = true;
                return Ok(());
            };
            let path = dir.join(name);
            let Some(bytes) = read_file(storage, &path)? else {
                if self.on_vanish == OnVanish::Skip {
                    index += 1;
                    if let Some((next_base, _)) = listing.segments.get(index) {
                        self.next_seq = *next_base;
                    }
                    continue;
                }
                return Err(Error::corrupt(path, 0, "segment deleted while being read"));
            };
            let retired = is_retired_gap(&self.acked, self.next_seq, *base);
            if *base != self.next_seq && self.loaded.is_some() && !retired {
                return Err(Error::corrupt(
                    &path,
                    0,
                    format!(
                        "records {}..{base} are missing: the previous segment ends before {} \
                         and this one starts at {base}",
                        self.next_seq, self.next_seq
                    ),
                ));
            }
            let scan = scan_segment(name, *base, &bytes);
            let is_last = index + 1 == listing.segments.len();
            if is_last && scan.is_unborn() {
                self.finished = true;
                return Ok(());
            }
            check_header(&path, &scan)?;
            self.damage = None;
            if !is_last {
                // A sealed segment was synced whole before the next one was created, so
                // anything but a clean end is damage. The records before it are still served.
                self.damage = match &scan.end {
                    SegmentEnd::Clean => None,
                    SegmentEnd::BadFrame { offset, error, .. } => {
                        Some(Error::corrupt(&path, *offset, error.to_string()))
                    }
                    SegmentEnd::PaddingCut | SegmentEnd::IncompleteBatch { .. } => Some(
                        Error::corrupt(&path, scan.valid_end, "sealed segment ends inside a batch"),
                    ),
                };
            }
            self.loaded = Some(index);
            self.next_seq = *base;
            self.offset = SEGMENT_HEADER_LEN as u64;
            self.valid_end = scan.valid_end.min(bytes.len() as u64);
            self.end_seq = scan.next_seq();
            self.bytes = bytes;
            return Ok(());
        }
    }

    /// Moves to the head's frame when the head index's hint points at it, as the engine does:
    /// consumed records before it are not read, so damage among them does not stop the reader.
    fn jump_to_hint(&mut self, dir: &Path, listing: &Listing, index: usize, state: HeadState) {
        let Some((base, name)) = listing.segments.get(index) else {
            return;
        };
        let hint = usize::try_from(state.hint_offset).unwrap_or(usize::MAX);
        let Some(at) = self.bytes.get(hint..) else {
            return;
        };
        if state.hint_base != *base
            || hint < SEGMENT_HEADER_LEN
            || frame::decode(at, state.head_seq, PAYLOAD_LEN_MAX).is_err()
        {
            return;
        }
        let is_last = index + 1 == listing.segments.len();
        let mut valid_end = state.hint_offset;
        let mut end_seq = state.head_seq;
        let mut damage = None;
        for step in walk_frames(&self.bytes, hint, state.head_seq, PAYLOAD_LEN_MAX) {
            match step {
                WalkStep::Frame { offset, frame } => {
                    if !frame.header.batch_continues {
                        valid_end = offset + frame.frame_len as u64;
                        end_seq = frame.header.seq + 1;
                    }
                }
                WalkStep::Bad { offset, error, .. } if !is_last => {
                    damage = Some(Error::corrupt(dir.join(name), offset, error.to_string()));
                }
                WalkStep::Bad { .. } => {}
            }
        }
        self.offset = state.hint_offset;
        self.next_seq = state.head_seq;
        self.valid_end = valid_end.min(self.bytes.len() as u64);
        self.end_seq = end_seq;
        self.damage = damage;
    }

    /// The next record, or `None` at the end of the log.
    fn step(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
        listing: &Listing,
    ) -> Result<Option<StoredRecord>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if self.offset < self.valid_end {
                return self.decode_here(dir, listing).map(Some);
            }
            if let Some(damage) = self.damage.take() {
                self.finished = true;
                return Err(damage);
            }
            let next = self.loaded.map_or(0, |index| index + 1);
            if next >= listing.segments.len() {
                self.finished = true;
                return Ok(None);
            }
            self.enter(storage, dir, listing, next)?;
        }
    }

    fn decode_here(&mut self, dir: &Path, listing: &Listing) -> Result<StoredRecord> {
        let path = match self.loaded.and_then(|index| listing.segments.get(index)) {
            Some((_, name)) => dir.join(name),
            None => dir.to_path_buf(),
        };
        let start = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let end = usize::try_from(self.valid_end).unwrap_or(usize::MAX);
        let at = self.bytes.get(start..end).unwrap_or(&[]);
        let decoded = frame::decode(at, self.next_seq, PAYLOAD_LEN_MAX).map_err(|error| {
            self.finished = true;
            Error::corrupt(&path, self.offset, error.to_string())
        })?;
        let payload = at.get(decoded.payload.clone()).unwrap_or(&[]).to_vec();
        let record = StoredRecord {
            seq: self.next_seq,
            enqueued_us: decoded.header.enqueued_us,
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
    storage: &'a dyn Storage,
    dir: PathBuf,
    listing: Listing,
    cursor: Cursor,
    /// Records acknowledged out of order (jobs API) are no longer in the queue: skipped.
    acks: AckLogSnapshot,
}

impl Iterator for Records<'_> {
    type Item = Result<StoredRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let step = self.cursor.step(self.storage, &self.dir, &self.listing);
            match step {
                Ok(Some(record)) if self.acks.is_acked(record.seq) => continue,
                other => return other.transpose(),
            }
        }
    }
}

/// Reads the queue's records without removing them, oldest first, starting at the head or at
/// `from` when that is later. Records pushed after the call may or may not be included; a
/// segment compacted while reading is skipped (its records were consumed meanwhile). A damaged
/// frame ends the iteration with [`Error::Corrupt`]; an interrupted write at the very end of
/// the log ends it quietly, as `Queue::open` would cut it.
pub fn records<'a>(storage: &'a dyn Storage, dir: &Path, from: Option<u64>) -> Result<Records<'a>> {
    let (listing, cursor, acks) = retry_while_changing(|| {
        let listing = list(storage, dir)?;
        let head = read_head(storage, dir)?;
        let acks = read_ack_log(storage, dir)?;
        if let Some(error) = acks.error(dir) {
            return Err(error);
        }
        let cursor = Cursor::locate(storage, dir, &listing, &head, &acks, from, OnVanish::Skip)?;
        Ok((listing, cursor, acks))
    })?;
    Ok(Records {
        storage,
        dir: dir.to_path_buf(),
        listing,
        cursor,
        acks,
    })
}
