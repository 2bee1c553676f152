//! A segment file: a header followed by record frames, named by its first sequence number.
//!
//! ```text
//! offset  size  field
//!      0     8  magic          b"DSPOOLSG"
//!      8     2  version        FORMAT_VERSION (3); version 2 is read too
//!     10     2  header_len     32
//!     12     4  reserved       zero
//!     16     8  base_seq       sequence number of the first frame
//!     24     4  reserved       zero
//!     28     4  crc32          CRC-32 of bytes 0..28
//!     32        frames, each aligned to 8 bytes (see `frame`)
//! ```

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::frame::{self, BodyPrefix, DecodedFrame, FrameError, FrameRules};

/// The segment format version this build writes. It reads this one and version 2 (frames
/// without a TTL, read by [`FrameRules::V2`]); version 1 (no delayed records, no ack log) was
/// never released and is not read. The head index and the ack log have versions of their own
/// (`head::HEAD_FORMAT_VERSION`, `acklog::ACK_LOG_FORMAT_VERSION`).
pub const FORMAT_VERSION: u16 = 3;
/// The smallest segment size accepted.
pub const SEGMENT_SIZE_MIN: u64 = 4096;
/// The largest segment size accepted.
pub const SEGMENT_SIZE_MAX: u64 = 1 << 32;
/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"DSPOOLSG";
/// Bytes of the segment header; the first frame starts here.
pub const SEGMENT_HEADER_LEN: usize = CRC_OFFSET + 4;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
const HEADER_LEN_OFFSET: usize = VERSION_OFFSET + 2;
const BASE_SEQ_OFFSET: usize = HEADER_LEN_OFFSET + 2 + 4;
const CRC_OFFSET: usize = BASE_SEQ_OFFSET + 8 + 4;

/// Encodes a segment header of the current format version.
pub fn encode_header(base_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    encode_header_for(base_seq, FrameRules::CURRENT)
}

/// Encodes a segment header of the format version whose frame rules are `rules`: for a copy of
/// frames written by an older version (`repair` rebasing a segment), which must be read by the
/// rules they were written by.
pub fn encode_header_for(base_seq: u64, rules: FrameRules) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0; SEGMENT_HEADER_LEN];
    header[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    header[VERSION_OFFSET..HEADER_LEN_OFFSET].copy_from_slice(&rules.version().to_le_bytes());
    header[HEADER_LEN_OFFSET..HEADER_LEN_OFFSET + 2]
        .copy_from_slice(&(SEGMENT_HEADER_LEN as u16).to_le_bytes());
    header[BASE_SEQ_OFFSET..BASE_SEQ_OFFSET + 8].copy_from_slice(&base_seq.to_le_bytes());
    let crc = crate::format::frame::crc32(&header[..CRC_OFFSET]);
    header[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why a segment header is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("segment header cut short: {0} of 32 bytes")]
    Truncated(usize),
    /// The magic bytes are wrong: not a segment file.
    #[error("not a segment file (bad magic bytes)")]
    BadMagic,
    /// The checksum does not match.
    #[error("segment header checksum mismatch")]
    Checksum,
    /// Written by another format version.
    #[error("unsupported segment format version {0}")]
    UnsupportedVersion(u16),
    /// The base sequence number is beyond `frame::SEQ_LIMIT`: never written by diskspool.
    #[error("segment base sequence {0} is beyond the largest sequence number, {max}", max = frame::SEQ_LIMIT - 1)]
    BaseBeyondLimit(u64),
}

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The sequence number of the segment's first frame.
    pub base_seq: u64,
    /// How its frames are read: the rules of the format version that wrote it.
    pub rules: FrameRules,
}

/// Decodes a segment header: its base sequence number and the rules its frames are read by.
pub fn decode_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let header = bytes
        .get(..SEGMENT_HEADER_LEN)
        .ok_or(HeaderError::Truncated(bytes.len()))?;
    if header[MAGIC_OFFSET..VERSION_OFFSET] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let stored = frame::read_u32(header, CRC_OFFSET);
    if stored != crate::format::frame::crc32(&header[..CRC_OFFSET]) {
        return Err(HeaderError::Checksum);
    }
    let version = u16::from_le_bytes([header[VERSION_OFFSET], header[VERSION_OFFSET + 1]]);
    let rules = FrameRules::for_version(version).ok_or(HeaderError::UnsupportedVersion(version))?;
    let base_seq = frame::read_u64(header, BASE_SEQ_OFFSET);
    if base_seq > frame::SEQ_LIMIT {
        return Err(HeaderError::BaseBeyondLimit(base_seq));
    }
    Ok(SegmentHeader { base_seq, rules })
}

/// Converts a header problem into the crate's error for `path`.
pub(crate) fn header_error(path: &Path, error: HeaderError) -> Error {
    match error {
        HeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        },
        other => Error::corrupt(path, 0, other.to_string()),
    }
}

/// One step of a walk over a segment's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalkStep {
    /// A valid frame at `offset`.
    Frame {
        /// Byte offset of the frame in the file.
        offset: u64,
        /// The decoded frame.
        frame: DecodedFrame,
    },
    /// The bytes at `offset` are not the expected frame; the walk stops here.
    Bad {
        /// Byte offset of the first byte that does not decode.
        offset: u64,
        /// The sequence number expected there.
        expected_seq: u64,
        /// Why it does not decode.
        error: FrameError,
    },
}

/// Walks the frames of a segment's bytes from `start` (an offset in `bytes`), expecting
/// `first_seq` there, by the segment's `rules`, and stops after the first bad frame or at the
/// end of `bytes`.
pub fn walk_frames(
    bytes: &[u8],
    start: usize,
    first_seq: u64,
    rules: FrameRules,
) -> impl Iterator<Item = WalkStep> + '_ {
    let mut offset = start;
    let mut expected_seq = first_seq;
    let mut stopped = false;
    std::iter::from_fn(move || {
        if stopped || offset >= bytes.len() {
            return None;
        }
        let rest = bytes.get(offset..)?;
        match frame::decode(rest, expected_seq, rules) {
            Ok(frame) => {
                let step = WalkStep::Frame {
                    offset: offset as u64,
                    frame: frame.clone(),
                };
                offset += frame.frame_len;
                expected_seq += 1;
                Some(step)
            }
            Err(error) => {
                stopped = true;
                Some(WalkStep::Bad {
                    offset: offset as u64,
                    expected_seq,
                    error,
                })
            }
        }
    })
}

/// Where [`locate_seq`] found a record's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    /// Byte offset of the record's frame in the segment; or, when the record is the one after
    /// the segment's last, the offset just past that last frame.
    pub offset: u64,
    /// True when the hint gave the offset: the frames before it were not read.
    pub by_hint: bool,
}

/// Why [`locate_seq`] did not find a record in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocateError {
    /// A frame before the record does not decode.
    BadFrame {
        /// Byte offset of that frame.
        offset: u64,
        /// Why it does not decode.
        error: FrameError,
    },
    /// The segment's frames end before the record: it is not in this segment.
    NotInSegment {
        /// The end of the bytes searched.
        end: u64,
    },
}

/// Finds where record `seq`'s frame starts in a segment whose base is `base` and whose frames
/// are read by `rules` (`bytes`: the segment from its start, up to where its records may end).
/// The one rule for "find the head in
/// a segment", applied by `Queue::open` and by the lock-free readers alike:
/// - the record the segment starts with is right after the header;
/// - `hint` (an offset, the head index's `hint_offset` when its `hint_base` is `base`) is taken
///   when a frame of `seq` decodes there, so consumed records before it are not read and damage
///   among them does not matter;
/// - otherwise the frames are walked from the first: the first one that fails is
///   [`LocateError::BadFrame`], unless free space follows the last frame there
///   ([`is_free_space`], and no later frame); a record just past the last frame is located at
///   that frame's end.
pub fn locate_seq(
    bytes: &[u8],
    base: u64,
    hint: Option<u64>,
    seq: u64,
    rules: FrameRules,
) -> std::result::Result<Located, LocateError> {
    if seq == base {
        return Ok(Located {
            offset: SEGMENT_HEADER_LEN as u64,
            by_hint: false,
        });
    }
    let hinted = hint.filter(|&offset| {
        let at = usize::try_from(offset).ok().and_then(|at| bytes.get(at..));
        offset >= SEGMENT_HEADER_LEN as u64
            && at.is_some_and(|at| frame::decode(at, seq, rules).is_ok())
    });
    if let Some(offset) = hinted {
        return Ok(Located {
            offset,
            by_hint: true,
        });
    }
    let mut last_end = None;
    for step in walk_frames(bytes, SEGMENT_HEADER_LEN, base, rules) {
        match step {
            WalkStep::Frame { offset, frame } if frame.header.seq == seq => {
                return Ok(Located {
                    offset,
                    by_hint: false,
                })
            }
            WalkStep::Frame { offset, frame } => {
                last_end = Some((frame.header.seq, offset + frame.frame_len as u64));
            }
            WalkStep::Bad { offset, error, .. } => {
                // Free space after the last record ends the records, as it ends a sealed
                // segment for the readers: the record may be the one right after them.
                let at = usize::try_from(offset).unwrap_or(usize::MAX);
                if is_free_space(bytes, at, &error, base)
                    && find_later_frame(bytes, at, base, rules).is_none()
                {
                    break;
                }
                return Err(LocateError::BadFrame { offset, error });
            }
        }
    }
    match last_end {
        Some((last, offset)) if last + 1 == seq => Ok(Located {
            offset,
            by_hint: false,
        }),
        _ => Err(LocateError::NotInSegment {
            end: bytes.len() as u64,
        }),
    }
}

/// Why the log's sequence numbers do not run on: a segment does not start where the records
/// before it end (see `acklog::check_next_base`), or the oldest segment starts after the head
/// ([`check_oldest_base`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceBreak {
    /// Sequence numbers between the two segments are missing.
    #[error(
        "records {expected}..{base} are missing: the previous segment ends before {expected} \
         and this one starts at {base}"
    )]
    Missing {
        /// The sequence number after the previous segment's last record.
        expected: u64,
        /// The base of the segment that follows.
        base: u64,
    },
    /// The segment starts at a sequence number the previous one already holds.
    #[error(
        "segment starts at {base} but the previous one already holds records up to {held_up_to}"
    )]
    Overlap {
        /// The base of the segment that follows.
        base: u64,
        /// The previous segment's last record.
        held_up_to: u64,
    },
    /// The oldest segment starts after the head: the records between are missing.
    #[error(
        "records {head_seq}..{base} are missing: the head is at {head_seq} but the oldest \
         segment starts at {base}"
    )]
    AfterHead {
        /// The head index's `head_seq`.
        head_seq: u64,
        /// The base of the oldest segment.
        base: u64,
    },
}

/// The one rule for where the log must start, applied by `Queue::open`, the lock-free readers
/// and `verify` alike: the oldest segment starts at or before the head (the segments before the
/// head's may be compacted; the head's never is).
pub fn check_oldest_base(head_seq: u64, base: u64) -> std::result::Result<(), SequenceBreak> {
    if base > head_seq {
        Err(SequenceBreak::AfterHead { head_seq, base })
    } else {
        Ok(())
    }
}

/// True when every byte of `bytes` from `from` on is zero: no frame can hide there, so a search
/// for later frames can be skipped. (Whether it is free space: see [`is_free_space`].)
pub fn is_zero_tail(bytes: &[u8], from: usize) -> bool {
    bytes
        .get(from..)
        .is_some_and(|tail| tail.iter().all(|&byte| byte == 0))
}

/// Space a writer prepares ahead of its tail ends on a multiple of this many bytes (see
/// `writer`): a run of zeros that ends elsewhere is not prepared space.
pub const PREPARED_SPACE_ALIGN: u64 = 4096;

/// True when what `bytes` holds from `offset` on (where a walk of a segment whose base is
/// `base` stopped with `error`) is free space rather than a torn write:
/// - a stale frame from an older life of a recycled file (valid checksum, sequence number below
///   `base`), or
/// - zeros that run to a multiple of [`PREPARED_SPACE_ALIGN`] (the end of the space a writer
///   prepared), followed by nothing or by such stale bytes.
///
/// Neither ever validates as a frame. The caller must also have found no valid frame of this
/// segment further on ([`find_later_frame`]). Zeros that a power loss left where records were
/// written look the same when they run to such a boundary.
pub fn is_free_space(bytes: &[u8], offset: usize, error: &FrameError, base: u64) -> bool {
    if matches!(error, FrameError::WrongSeq { found, .. } if *found < base) {
        return true;
    }
    let Some(rest) = bytes.get(offset..) else {
        return false;
    };
    let zeros = rest
        .iter()
        .position(|&byte| byte != 0)
        .unwrap_or(rest.len());
    zeros > 0 && ((offset + zeros) as u64).is_multiple_of(PREPARED_SPACE_ALIGN)
}

/// Searches `bytes` after `from` for any frame that validates by `rules` with a sequence number
/// at or above `min_seq`: evidence that damage at `from` is not a torn tail.
pub fn find_later_frame(
    bytes: &[u8],
    from: usize,
    min_seq: u64,
    rules: FrameRules,
) -> Option<(u64, u64)> {
    let mut offset = frame::align_up(from + 1);
    while offset + frame::FRAME_HEADER_LEN <= bytes.len() {
        let rest = &bytes[offset..];
        // Zeros (space prepared ahead of the tail) never validate: skip them without a checksum.
        let zeros = rest
            .get(..frame::FRAME_HEADER_LEN)
            .is_some_and(|header| header.iter().all(|&byte| byte == 0));
        if zeros {
            offset += frame::FRAME_ALIGN;
            continue;
        }
        if let Some(header) = frame::peek_header(rest, rules) {
            // Only plausible sequence numbers are worth a checksum.
            let plausible = header.seq >= min_seq && header.seq - min_seq < (bytes.len() as u64);
            if plausible && frame::decode(rest, header.seq, rules).is_ok() {
                return Some((offset as u64, header.seq));
            }
        }
        offset += frame::FRAME_ALIGN;
    }
    None
}

/// What the bytes at the point where a walk of a segment's frames stopped are, by the one rule
/// that `Queue::open` (for the active segment) and every lock-free reader apply. See
/// [`classify_stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Free space ([`is_free_space`]), and no valid frame of this segment follows: the frames
    /// end here and nothing was lost.
    FreeSpace,
    /// An interrupted write: no valid frame of this segment follows. In the active segment
    /// `Queue::open` cuts it; in a sealed segment (synced whole) it is damage.
    TornWrite,
    /// A valid frame follows, but every record a cut would remove lies at or above `synced_seq`:
    /// writes that were never synced, which a power loss may persist out of order. In the
    /// active segment `Queue::open` cuts them.
    Unsynced {
        /// Where the first valid later frame starts.
        later_offset: u64,
        /// Its sequence number.
        later_seq: u64,
    },
    /// A valid frame follows and records a cut would remove were synced (below `synced_seq`):
    /// damage, which `Queue::open` refuses.
    Damage {
        /// Where the first valid later frame starts.
        later_offset: u64,
        /// Its sequence number.
        later_seq: u64,
    },
}

impl StopKind {
    /// True when the stop is damage: always for [`StopKind::Damage`], and for anything but free
    /// space in a sealed segment, which was synced whole before the next one was created.
    pub fn is_damage(self, sealed: bool) -> bool {
        match self {
            StopKind::Damage { .. } => true,
            StopKind::FreeSpace => false,
            StopKind::TornWrite | StopKind::Unsynced { .. } => sealed,
        }
    }
}

/// Classifies the bytes where a walk stopped: at `offset` (an offset in `bytes`, the segment's
/// bytes from its start), where sequence `expected_seq` was expected and `error` was found, in
/// a segment whose header is `header` (its base, and the rules its frames are read by).
/// `complete_next_seq` is the sequence number after the last
/// complete batch before the stop (what a cut there keeps) and `synced_seq` the head index's
/// `synced_seq` (every record below it was synced; 0 when unknown). Pass `u64::MAX` for a
/// sealed segment, which was synced whole.
///
/// The rule: a valid frame of this segment further on ([`find_later_frame`]) makes the stop
/// [`Damage`](StopKind::Damage) when records the cut would remove were synced
/// (`complete_next_seq < synced_seq`), else [`Unsynced`](StopKind::Unsynced); without one, it
/// is [`FreeSpace`](StopKind::FreeSpace) or a [`TornWrite`](StopKind::TornWrite).
pub fn classify_stop(
    bytes: &[u8],
    header: SegmentHeader,
    offset: u64,
    expected_seq: u64,
    error: &FrameError,
    complete_next_seq: u64,
    synced_seq: u64,
) -> StopKind {
    let SegmentHeader {
        base_seq: base,
        rules,
    } = header;
    let at = usize::try_from(offset).unwrap_or(usize::MAX);
    // An all-zero tail cannot hide a later frame: skip the search.
    let later = if is_zero_tail(bytes, at) {
        None
    } else {
        find_later_frame(bytes, at, expected_seq, rules)
    };
    let free_space = later.is_none() && is_free_space(bytes, at, error, base);
    judge_stop(later, free_space, complete_next_seq, synced_seq)
}

/// The rule of [`classify_stop`] on what was found: `later` is the first valid frame after the
/// stop (`(offset, seq)`, from [`find_later_frame`]), `free_space` whether the stop is
/// [`is_free_space`]. For a reader that has searched already (`inspect::scan_segment`).
pub fn judge_stop(
    later: Option<(u64, u64)>,
    free_space: bool,
    complete_next_seq: u64,
    synced_seq: u64,
) -> StopKind {
    match later {
        Some((later_offset, later_seq)) if complete_next_seq < synced_seq => StopKind::Damage {
            later_offset,
            later_seq,
        },
        Some((later_offset, later_seq)) => StopKind::Unsynced {
            later_offset,
            later_seq,
        },
        None if free_space => StopKind::FreeSpace,
        None => StopKind::TornWrite,
    }
}

/// Walks the frame headers in `bytes` from `offset`, the frame of `first_seq`, by the segment's
/// `rules`, without checking checksums: calls `visit(header, prefix)` (the body prefix: the
/// not-before time and the TTL, 0 where absent) for each frame whose header names the expected
/// sequence number, and stops at the first that does not
/// or does not fit: pass bytes that end where the valid frames end (zeros after them would
/// read as an empty record when the expected sequence number is 0). Returns the sequence number after the last frame visited. For counting
/// (delayed records, for `stats`) over bytes a reader has already validated or will; never to
/// hand out a record.
pub fn walk_headers(
    bytes: &[u8],
    mut offset: usize,
    first_seq: u64,
    rules: FrameRules,
    mut visit: impl FnMut(&frame::FrameHeader, BodyPrefix),
) -> u64 {
    let mut seq = first_seq;
    while let Some(header) = bytes
        .get(offset..)
        .and_then(|at| frame::peek_header(at, rules))
    {
        let body_len = header.payload_len as usize;
        let frame_len = frame::frame_len(body_len);
        if header.seq != seq || bytes.len() - offset < frame_len {
            break;
        }
        let prefix = match header.delayed || header.has_ttl {
            true => frame::peek_prefix(&bytes[offset..], &header),
            false => BodyPrefix::NONE,
        };
        visit(&header, prefix);
        seq += 1;
        offset += frame_len;
    }
    seq
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: u32) -> FrameRules {
        FrameRules::CURRENT.with_payload_len_max(max)
    }

    #[test]
    fn walk_headers_visits_frames_in_order_and_stops_at_a_wrong_number() {
        let mut bytes = vec![0u8; 8];
        frame::encode(&mut bytes, 7, 1, b"now", false, 0);
        frame::encode(&mut bytes, 8, 1, b"", false, 99);
        frame::encode(&mut bytes, 9, 1, b"later", false, 0);
        let ttl = BodyPrefix {
            not_before_us: 0,
            ttl_us: 5,
        };
        let both = BodyPrefix {
            not_before_us: 4,
            ttl_us: 6,
        };
        frame::encode_prefixed(&mut bytes, 10, 1, b"ttl", false, ttl);
        frame::encode_prefixed(&mut bytes, 11, 1, b"both", true, both);
        let valid_end = bytes.len();
        frame::encode(&mut bytes, 42, 1, b"stale", false, 0);
        let mut seen = Vec::new();
        let after = walk_headers(&bytes, 8, 7, FrameRules::CURRENT, |header, prefix| {
            seen.push((header.seq, prefix))
        });
        let delay = BodyPrefix::delay;
        assert_eq!(
            seen,
            [
                (7, delay(0)),
                (8, delay(99)),
                (9, delay(0)),
                (10, ttl),
                (11, both)
            ]
        );
        assert_eq!(after, 12);
        // A cut frame is not visited.
        let mut seen = 0;
        let after = walk_headers(
            &bytes[..valid_end - 1],
            8,
            7,
            FrameRules::CURRENT,
            |_, _| seen += 1,
        );
        assert_eq!((seen, after), (4, 11));
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = encode_header(1234);
        assert_eq!(
            decode_header(&header),
            Ok(SegmentHeader {
                base_seq: 1234,
                rules: FrameRules::CURRENT
            })
        );
        for byte in 0..SEGMENT_HEADER_LEN {
            let mut damaged = header;
            damaged[byte] ^= 0x40;
            assert!(decode_header(&damaged).is_err(), "byte {byte}");
        }
        assert_eq!(
            decode_header(&header[..10]),
            Err(HeaderError::Truncated(10))
        );
    }

    fn header_of_version(version: u16) -> [u8; SEGMENT_HEADER_LEN] {
        let mut header = encode_header(5);
        header[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&version.to_le_bytes());
        let crc = crate::format::frame::crc32(&header[..CRC_OFFSET]);
        header[CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        header
    }

    #[test]
    fn other_versions_are_named() {
        for version in [0, 1, 4, 9, u16::MAX] {
            assert_eq!(
                decode_header(&header_of_version(version)),
                Err(HeaderError::UnsupportedVersion(version))
            );
        }
    }

    /// A version 2 segment is read, by version 2 rules; this build writes version 3.
    #[test]
    fn version_2_segments_are_read_by_their_rules() {
        assert_eq!(FORMAT_VERSION, 3);
        assert_eq!(encode_header(5)[VERSION_OFFSET], 3);
        assert_eq!(
            decode_header(&header_of_version(2)),
            Ok(SegmentHeader {
                base_seq: 5,
                rules: FrameRules::V2
            })
        );
    }

    #[test]
    fn walk_stops_at_first_bad_frame() {
        let mut bytes = encode_header(0).to_vec();
        for seq in 0..3 {
            frame::encode(&mut bytes, seq, 0, b"abc", false, 0);
        }
        let good_end = bytes.len();
        bytes.extend_from_slice(&[0xAB; 40]);
        let steps: Vec<_> = walk_frames(&bytes, SEGMENT_HEADER_LEN, 0, limit(1024)).collect();
        assert_eq!(steps.len(), 4);
        assert!(matches!(
            steps[3],
            WalkStep::Bad { offset, expected_seq: 3, .. } if offset == good_end as u64
        ));
    }

    #[test]
    fn later_frame_is_found_past_damage() {
        let mut bytes = encode_header(0).to_vec();
        for seq in 0..3 {
            frame::encode(&mut bytes, seq, 0, b"abcdefgh", false, 0);
        }
        let second = SEGMENT_HEADER_LEN + frame::frame_len(8);
        bytes[second + 30] ^= 1;
        assert_eq!(
            find_later_frame(&bytes, second, 1, limit(1024)),
            Some(((second + frame::frame_len(8)) as u64, 2))
        );
        assert_eq!(
            find_later_frame(&bytes[..second + 40], second, 1, limit(1024)),
            None
        );
    }

    fn segment_of(base: u64, count: u64) -> Vec<u8> {
        let mut bytes = encode_header(base).to_vec();
        for seq in base..base + count {
            frame::encode(&mut bytes, seq, 0, b"abcdefgh", false, 0);
        }
        bytes
    }

    #[test]
    fn locate_takes_a_valid_hint_without_reading_what_precedes_it() {
        let mut bytes = segment_of(10, 3);
        let third = (SEGMENT_HEADER_LEN + 2 * frame::frame_len(8)) as u64;
        // Damage in a consumed record does not matter when the hint checks out.
        bytes[SEGMENT_HEADER_LEN + 30] ^= 1;
        let found = locate_seq(&bytes, 10, Some(third), 12, FrameRules::CURRENT);
        assert_eq!(
            found,
            Ok(Located {
                offset: third,
                by_hint: true
            })
        );
        // Without the hint, the walk stops at the damage and names its offset.
        assert!(matches!(
            locate_seq(&bytes, 10, None, 12, FrameRules::CURRENT),
            Err(LocateError::BadFrame { offset, .. }) if offset == SEGMENT_HEADER_LEN as u64
        ));
    }

    #[test]
    fn locate_finds_the_record_after_the_last_one_before_free_space() {
        let mut bytes = segment_of(10, 3);
        let end = bytes.len() as u64;
        // Zeros to the page's end follow the records (a sealed segment's free space).
        bytes.resize(4096, 0);
        assert_eq!(
            locate_seq(&bytes, 10, None, 13, FrameRules::CURRENT),
            Ok(Located {
                offset: end,
                by_hint: false
            })
        );
        // Not a record further on.
        assert!(matches!(
            locate_seq(&bytes, 10, None, 14, FrameRules::CURRENT),
            Err(LocateError::NotInSegment { .. })
        ));
        // Zeros that stop short of the page's end, before other bytes, are damage.
        bytes[4000] = 1;
        assert!(matches!(
            locate_seq(&bytes, 10, None, 13, FrameRules::CURRENT),
            Err(LocateError::BadFrame { offset, .. }) if offset == end
        ));
    }

    #[test]
    fn locate_walks_when_the_hint_is_wrong() {
        let bytes = segment_of(10, 3);
        let second = (SEGMENT_HEADER_LEN + frame::frame_len(8)) as u64;
        let end = bytes.len() as u64;
        let third = second + frame::frame_len(8) as u64;
        let walked = Ok(Located {
            offset: second,
            by_hint: false,
        });
        // Inside the header, at another record, past the end: not taken.
        for hint in [None, Some(0), Some(third), Some(end), Some(u64::MAX)] {
            assert_eq!(
                locate_seq(&bytes, 10, hint, 11, FrameRules::CURRENT),
                walked,
                "hint {hint:?}"
            );
        }
        assert_eq!(
            locate_seq(&bytes, 10, Some(second), 11, FrameRules::CURRENT)
                .map(|found| found.by_hint),
            Ok(true)
        );
        // The first record is right after the header; the one after the last at the end.
        assert_eq!(
            locate_seq(
                &bytes[..SEGMENT_HEADER_LEN],
                10,
                None,
                10,
                FrameRules::CURRENT
            )
            .map(|at| at.offset),
            Ok(SEGMENT_HEADER_LEN as u64)
        );
        assert_eq!(
            locate_seq(&bytes, 10, None, 13, FrameRules::CURRENT).map(|at| at.offset),
            Ok(end)
        );
        assert_eq!(
            locate_seq(&bytes, 10, None, 14, FrameRules::CURRENT),
            Err(LocateError::NotInSegment { end })
        );
    }

    #[test]
    fn the_oldest_segment_starts_at_or_before_the_head() {
        assert_eq!(check_oldest_base(10, 10), Ok(()));
        assert_eq!(check_oldest_base(10, 4), Ok(()));
        assert_eq!(
            check_oldest_base(10, 12).map_err(|error| error.to_string()),
            Err(String::from(
                "records 10..12 are missing: the head is at 10 but the oldest segment starts at 12"
            ))
        );
    }
}
