//! The write path: appends frames at the tail of the active segment.
//!
//! Two ways to put frames in the file, with the same guarantee (a returned push is in the
//! kernel, so a process kill cannot lose it):
//! - **mapped** (the real filesystem): the writer keeps zeros written a window ahead of the tail
//!   and a shared writable mapping of that window, and encodes frames straight into it. A push
//!   is then a checksum and a copy, with no system call; the zeros were written first, so a
//!   store never needs new disk space (a full disk is an error from the zero write, not a
//!   SIGBUS), and under `SyncPolicy::Always` each `fdatasync` overwrites blocks that already
//!   exist instead of growing the file, which is cheaper.
//! - **written** (storage without writable mappings, such as the simulated filesystem): frames
//!   are encoded into a scratch buffer and written with one `write_all_at` per batch.
//!
//! The zeros beyond the tail never validate as a frame (the checksum of zeros is not zero), so
//! recovery treats a zero tail as free space, not as a torn write. The active segment is cut back
//! to its tail when it is sealed and when the queue is closed, so sealed segments and a cleanly
//! closed queue hold no zeros.

use std::sync::Arc;

use crate::engine::coordination::CommittedTail;
use crate::engine::segment::Segment;
use crate::error::{Error, Result};
use crate::format::frame::{self, BodyPrefix};
use crate::format::segment::{PREPARED_SPACE_ALIGN, SEGMENT_HEADER_LEN};
use crate::storage::{StorageFile, WritableMapping};

/// How far ahead of the tail zeros are written and mapped, in bytes.
pub(crate) const WRITE_WINDOW_BYTES: u64 = 1 << 20;

/// Batches at least this long are written with `write_all_at` even when mapping works: for them
/// the system call costs little per byte, and writing zeros first and then the frames would copy
/// every byte into the page cache twice (measured: 64 KiB records 20–25 % slower mapped).
pub(crate) const MAPPED_BATCH_BYTES_MAX: u64 = 32 << 10;

/// Under the policies that do not sync each push, every time this many bytes were appended the
/// writer has them written out early, by another thread (see `writeback.rs`): the sync that
/// seals a segment then finds them written instead of writing the whole segment while the
/// pushing thread waits.
pub(crate) const WRITEBACK_BYTES: u64 = 1 << 20;

// The write window is one writeback block (see `Writer::mapped`).
const _: () = assert!(WRITE_WINDOW_BYTES == WRITEBACK_BYTES);

/// The most frames written with one gathering write (up to three parts each, below the
/// system's limit of 1,024); larger batches of small records are encoded into one buffer.
const GATHERED_FRAMES_MAX: usize = 256;

/// Zeros for the zero fill, written in chunks of this size.
static ZEROS: [u8; 256 << 10] = [0; 256 << 10];

/// Why an append failed.
pub(crate) struct AppendFailure {
    pub(crate) error: Error,
    /// True when the file may now hold a fragment of the batch that could not be removed: the
    /// state on disk is unknown and the queue must refuse further changes.
    pub(crate) poison: bool,
}

/// The writer's state, guarded by the queue's writer lock.
pub(crate) struct Writer {
    /// The segment being appended to.
    pub(crate) active: Arc<Segment>,
    /// Its file.
    pub(crate) file: Arc<dyn StorageFile>,
    /// Where the next frame goes.
    pub(crate) tail: u64,
    /// The sequence number of the next record.
    pub(crate) next_seq: u64,
    /// Bytes `[tail, written_end)` of the file are zeros written by this writer.
    written_end: u64,
    /// A shared queue: the count of tail repairs this writer has taken into account (see
    /// `Coordination::repairs`).
    pub(crate) seen_repairs: u32,
    /// A shared queue: the generation of the committed tail this writer's state is, and that
    /// tail, as this writer last committed or caught up with it (`None`: not known). While the
    /// generation, the repairs count and the dirty mark are unchanged, no other handle changed
    /// the log, and a push skips reading the tail back (see `Log::push_shared`).
    pub(crate) caught_up: Option<(u64, CommittedTail)>,
    /// Set when the writer took up a tail another process committed: the file's length is not
    /// known, so the next trim cuts it to the tail whatever it holds.
    len_unknown: bool,
    /// The file may be this long (zeros, or the stale bytes of a recycled file, after the tail).
    len_max: u64,
    /// The writable mapping of `[start, end)` of the active file, if any.
    window: Option<Window>,
    /// False once the storage declined a writable mapping: use `write_all_at` from then on.
    mapping_enabled: bool,
    /// True once the storage showed that it offers writable mappings (asked before the first
    /// zeros are written, so that storage without them never gets any).
    mapping_probed: bool,
    /// Under `SyncPolicy::Always`: zeros are prepared ahead, but frames are written with
    /// `write_all_at` rather than stored through a mapping.
    sync_always: bool,
    /// Whether a write shows its frames to this handle's readers at once (`Log::write_locked`):
    /// under the policies that do not wait for a sync, in an exclusive queue or a solo handle.
    /// A shared queue's writer shows them once they are committed (`Log::push_shared`).
    pub(crate) publishes_on_write: bool,
    /// Encoding buffer of the written path, reused across batches.
    scratch: Vec<u8>,
}

struct Window {
    start: u64,
    end: u64,
    map: Box<dyn WritableMapping>,
}

impl Writer {
    /// A writer appending to `file` (whose bytes end at `tail`) from `next_seq` on, through
    /// writable mappings if `mapped_writes` and the storage offers them.
    pub(crate) fn new(
        active: Arc<Segment>,
        file: Arc<dyn StorageFile>,
        tail: u64,
        next_seq: u64,
        mapped_writes: bool,
        sync_always: bool,
    ) -> Self {
        Writer {
            active,
            file,
            tail,
            next_seq,
            written_end: tail,
            seen_repairs: 0,
            caught_up: None,
            len_unknown: false,
            len_max: tail,
            window: None,
            mapping_enabled: mapped_writes,
            mapping_probed: false,
            sync_always,
            publishes_on_write: !sync_always,
            scratch: Vec::new(),
        }
    }

    /// Appends the frames of `payloads` (whose frames total `batch_len` bytes, which fit below
    /// `segment_size`) at the tail, numbered from `next_seq`, and advances the tail and
    /// `next_seq`. Nothing is published to readers here.
    pub(crate) fn append(
        &mut self,
        payloads: &[&[u8]],
        batch_len: u64,
        enqueued_us: u64,
        prefix: BodyPrefix,
        segment_size: u64,
    ) -> std::result::Result<(), AppendFailure> {
        debug_assert!(!payloads.is_empty());
        let end = self.tail + batch_len;
        let first_seq = self.next_seq;
        // The common case first: the batch fits in the mapped window.
        if let Some(window) = self.window.as_mut() {
            if window.start <= self.tail && end <= window.end {
                let from = (self.tail - window.start) as usize;
                let to = (end - window.start) as usize;
                if let Some(bytes) = window.map.bytes_mut().get_mut(from..to) {
                    match payloads {
                        [payload] => {
                            frame::encode_into(
                                bytes,
                                first_seq,
                                enqueued_us,
                                payload,
                                false,
                                prefix,
                            );
                        }
                        _ => encode_batch(bytes, first_seq, enqueued_us, prefix, payloads),
                    }
                    window.map.stored(from, to);
                    self.advance(end, payloads.len());
                    return Ok(());
                }
            }
        }
        let small = batch_len < MAPPED_BATCH_BYTES_MAX;
        let mut small_enough = small;
        if let Err(error) = self.mapped(end, segment_size, small).map(|_| ()) {
            let full = matches!(&error, Error::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull);
            if !full {
                return Err(AppendFailure {
                    error,
                    poison: false,
                });
            }
            // No room for a window of zeros: cut what was prepared and write this batch, which
            // may still fit, without a mapping.
            let _ = self.trim();
            small_enough = false;
        }
        let mapped = if small_enough {
            self.mapped(end, segment_size, small)
                .map_err(|error| AppendFailure {
                    error,
                    poison: false,
                })?
        } else {
            None
        };
        if let Some(bytes) = mapped {
            encode_batch(bytes, first_seq, enqueued_us, prefix, payloads);
            if let Some(window) = self.window.as_mut() {
                let from = (self.tail - window.start) as usize;
                window.map.stored(from, from + batch_len as usize);
            }
        } else {
            // A recycled file holds stale bytes after the tail: keep zeros ahead of the tail on
            // this path too, so that recovery finds free space, not a torn frame, after it.
            if self.len_max > self.written_end.max(end) {
                let zeros_end = self
                    .len_max
                    .min(end.max(self.tail + WRITE_WINDOW_BYTES))
                    .next_multiple_of(PREPARED_SPACE_ALIGN);
                self.zero_fill(zeros_end).map_err(|error| AppendFailure {
                    error,
                    poison: false,
                })?;
            }
            let written =
                if batch_len >= MAPPED_BATCH_BYTES_MAX && payloads.len() <= GATHERED_FRAMES_MAX {
                    self.write_gathered(payloads, enqueued_us, prefix)
                } else {
                    self.scratch.clear();
                    self.scratch.reserve(batch_len as usize);
                    let last = payloads.len() - 1;
                    for (index, payload) in payloads.iter().enumerate() {
                        let seq = self.next_seq + index as u64;
                        frame::encode_prefixed(
                            &mut self.scratch,
                            seq,
                            enqueued_us,
                            payload,
                            index < last,
                            prefix,
                        );
                    }
                    debug_assert_eq!(self.scratch.len() as u64, batch_len);
                    self.file.write_all_at(&self.scratch, self.tail)
                };
            if let Err(error) = written {
                // Remove whatever part was written, so no fragment can later read as data.
                let error = Error::io("write segment", &self.active.path, error);
                return Err(match self.file.set_len(self.tail) {
                    Ok(()) => {
                        self.written_end = self.tail;
                        self.len_max = self.tail;
                        AppendFailure {
                            error,
                            poison: false,
                        }
                    }
                    Err(cleanup) => AppendFailure {
                        error: Error::io("truncate after failed write", &self.active.path, cleanup),
                        poison: true,
                    },
                });
            }
        }
        self.advance(end, payloads.len());
        Ok(())
    }

    /// Writes the frames of `payloads` at the tail with one gathering write: headers from the
    /// scratch buffer, payloads from where the caller has them, zeros for the padding.
    fn write_gathered(
        &mut self,
        payloads: &[&[u8]],
        enqueued_us: u64,
        prefix: BodyPrefix,
    ) -> std::io::Result<()> {
        let last = payloads.len() - 1;
        // Every frame of a batch has the same delay and TTL, so the same header length.
        let header_len = frame::FRAME_HEADER_LEN + prefix.len();
        self.scratch.clear();
        for (index, payload) in payloads.iter().enumerate() {
            let mut header = [0; frame::HEADER_WITH_PREFIX_LEN_MAX];
            let len = frame::encode_header(
                &mut header,
                self.next_seq + index as u64,
                enqueued_us,
                payload,
                index < last,
                prefix,
            );
            debug_assert_eq!(len, header_len);
            self.scratch.extend_from_slice(&header[..header_len]);
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(payloads.len() * 3);
        for (payload, header) in payloads.iter().zip(self.scratch.chunks_exact(header_len)) {
            parts.push(header);
            parts.push(payload);
            let padding = frame::padding_len(payload.len(), prefix);
            if padding > 0 {
                parts.push(&ZEROS[..padding]);
            }
        }
        self.file.write_all_gathered_at(&parts, self.tail)
    }

    /// Moves the tail to `end` past `records` records just written.
    fn advance(&mut self, end: u64, records: usize) {
        let start = self.tail;
        self.tail = end;
        self.written_end = self.written_end.max(end);
        self.len_max = self.len_max.max(end);
        self.next_seq += records as u64;
        // The batch that ends a `WRITEBACK_BYTES` block of the file hands the block before it
        // to writeback (a block late: by then every writer still pushing has its window in a
        // later block, see `mapped`): by position, not by what this writer appended, so that
        // in a queue shared by several processes each block is handed over once, by whichever
        // process finished the next (when each writer counted its own appends, every process
        // handed every block over again: a quarter of a producer's time with four of them).
        let from = (start - start % WRITEBACK_BYTES).saturating_sub(WRITEBACK_BYTES);
        let until = (end - end % WRITEBACK_BYTES).saturating_sub(WRITEBACK_BYTES);
        if !self.sync_always && until > from {
            crate::engine::writeback::start(&self.file, from, until - from);
        }
    }

    /// The mapped bytes `[tail, end)`, mapping a new window (after writing zeros up to its end)
    /// when the current one does not cover them and the batch is `small`; `None` when the batch
    /// is to be written with `write_all_at`.
    fn mapped(&mut self, end: u64, segment_size: u64, small: bool) -> Result<Option<&mut [u8]>> {
        if !self.mapping_enabled {
            return Ok(None);
        }
        let covered = self
            .window
            .as_ref()
            .is_some_and(|window| window.start <= self.tail && end <= window.end);
        if !covered && !small {
            // A large batch outside the window is written directly (see MAPPED_BATCH_BYTES_MAX).
            return Ok(None);
        }
        if !covered && !self.mapping_probed {
            // Map the header (always in the file) to learn whether mappings are offered at all.
            let probe = self
                .file
                .map_writable(0, SEGMENT_HEADER_LEN as u64)
                .map_err(|error| Error::io("map segment for writing", &self.active.path, error))?;
            if probe.is_none() {
                self.mapping_enabled = false;
                return Ok(None);
            }
            self.mapping_probed = true;
        }
        if !covered {
            // Unmap first: at most one window is mapped, which bounds the writer's memory.
            self.window = None;
            // The window is the writeback block the tail is in (and the rest of a frame that
            // crosses its end): once the tail is in the next block, no process maps this one,
            // and its writeback (a block later, see `advance`) write-protects no page of ours.
            // A page still mapped there would cost a TLB shootdown each, an interrupt of every
            // CPU running a process that maps it (a fifth of the time of two producer
            // processes went to them).
            let start = self.tail - self.tail % WRITEBACK_BYTES;
            // Prepared space ends on an aligned boundary (possibly past the segment size, by
            // less than the alignment): how recovery tells it from zeros a crash left.
            let window_end = end
                .max(segment_size.min(start + WRITE_WINDOW_BYTES))
                .next_multiple_of(PREPARED_SPACE_ALIGN);
            // The whole window must be zeros this writer wrote (inside the file, no stale
            // bytes): `written_end` may lie anywhere before or after `end` (the written path
            // prepares zeros for a recycled file up to an aligned boundary of its own), so
            // compare with the window's end, not the batch's.
            self.zero_fill(window_end)?;
            debug_assert!(self.written_end >= window_end);
            if self.sync_always {
                // Every push waits for an fdatasync anyway: a pwrite costs little beside it,
                // and a mapped page would be write-protected by each sync and faulted in again
                // by the next store. The zeros still spare the syncs block allocation.
                return Ok(None);
            }
            // From the block's start: the frames before the tail are in the file, and no store
            // goes there.
            let map = self
                .file
                .map_writable(start, window_end - start)
                .map_err(|error| Error::io("map segment for writing", &self.active.path, error))?;
            let Some(map) = map else {
                self.mapping_enabled = false;
                return Ok(None);
            };
            self.window = Some(Window {
                start,
                end: window_end,
                map,
            });
        }
        let Some(window) = self.window.as_mut() else {
            return Ok(None);
        };
        let from = (self.tail - window.start) as usize;
        let to = (end - window.start) as usize;
        match window.map.bytes_mut().get_mut(from..to) {
            Some(bytes) => Ok(Some(bytes)),
            None => Err(Error::corrupt(
                &self.active.path,
                self.tail,
                "writable mapping shorter than requested",
            )),
        }
    }

    /// Writes zeros from `written_end` up to `end`.
    fn zero_fill(&mut self, end: u64) -> Result<()> {
        while self.written_end < end {
            let chunk = (end - self.written_end).min(ZEROS.len() as u64) as usize;
            // A failed write may still have grown the file: `trim` must cut that too.
            self.len_max = self.len_max.max(self.written_end + chunk as u64);
            self.file
                .write_all_at(&ZEROS[..chunk], self.written_end)
                .map_err(|error| Error::io("preallocate segment", &self.active.path, error))?;
            self.written_end += chunk as u64;
        }
        Ok(())
    }

    /// Cuts the zeros after the tail and unmaps the window: before the segment is sealed (a
    /// sealed segment's length is its data's length) and when the queue closes.
    pub(crate) fn trim(&mut self) -> std::io::Result<()> {
        self.window = None;
        if self.len_max > self.tail || self.len_unknown {
            self.file.set_len(self.tail)?;
            self.written_end = self.tail;
            self.len_max = self.tail;
            self.len_unknown = false;
        }
        Ok(())
    }

    /// Takes up the tail another process committed in the active segment (a shared queue):
    /// nothing of this writer's own is beyond it. What lies past it is zeros (this writer's,
    /// or another's: only a dead writer leaves anything else, and the repair that cuts it calls
    /// [`forget_mapping`](Writer::forget_mapping)), so the mapping is kept when it covers the
    /// tail. The file's length is not known, so the next trim cuts it to the tail whatever it
    /// holds.
    pub(crate) fn adopt(&mut self, tail: u64, next_seq: u64) {
        let covered = self
            .window
            .as_ref()
            .is_some_and(|window| window.start <= tail && tail < window.end);
        if !covered {
            self.window = None;
        }
        self.tail = tail;
        self.next_seq = next_seq;
        self.written_end = self.written_end.max(tail);
        self.len_max = self.len_max.max(tail);
        self.len_unknown = true;
    }

    /// Drops the mapping and what this writer knew of the bytes past its tail: a repair may
    /// have cut the file there (a store into the old mapping would be a SIGBUS).
    pub(crate) fn forget_mapping(&mut self) {
        self.window = None;
        self.written_end = self.tail;
        self.len_max = self.tail;
        self.len_unknown = true;
    }

    /// Where the zeros written ahead of the tail end (a shared queue records it in `control`,
    /// so that the next writer does not write them again).
    pub(crate) fn prepared_end(&self) -> u64 {
        self.written_end.max(self.tail)
    }

    /// Takes up zeros another process wrote ahead of this writer's tail, up to `end` (after
    /// [`adopt`](Writer::adopt); the file is at least that long).
    pub(crate) fn adopt_prepared(&mut self, end: u64) {
        if end > self.written_end {
            self.written_end = end;
            self.len_max = self.len_max.max(end);
        }
    }

    /// Switches to a new segment whose file is `len` bytes long: its header, then nothing (a
    /// fresh file) or the stale bytes of a recycled one, which are overwritten with zeros a
    /// window at a time ahead of the tail and cut off when the segment is sealed.
    pub(crate) fn start_segment(
        &mut self,
        segment: Arc<Segment>,
        file: Arc<dyn StorageFile>,
        len: u64,
    ) {
        self.window = None;
        self.active = segment;
        self.file = file;
        self.tail = SEGMENT_HEADER_LEN as u64;
        self.written_end = self.tail;
        self.len_max = len.max(self.tail);
        self.len_unknown = false;
    }
}

/// Encodes a batch into `bytes`, which is exactly as long as its frames.
fn encode_batch(
    bytes: &mut [u8],
    first_seq: u64,
    enqueued_us: u64,
    prefix: BodyPrefix,
    payloads: &[&[u8]],
) {
    let last = payloads.len() - 1;
    let mut rest = bytes;
    for (index, payload) in payloads.iter().enumerate() {
        let body_len = frame::body_len(payload.len(), prefix);
        let (frame_bytes, after) = rest.split_at_mut(frame::frame_len(body_len));
        frame::encode_into(
            frame_bytes,
            first_seq + index as u64,
            enqueued_us,
            payload,
            index < last,
            prefix,
        );
        rest = after;
    }
    debug_assert!(rest.is_empty(), "batch length matches its frames");
}
