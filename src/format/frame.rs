//! The record frame: how one record is laid out inside a segment. Pure functions, no I/O.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32         CRC-32 (IEEE) of bytes 4..24 and the payload
//!      4     4  len_flags     bits 0..29: body length n; bit 29: TTL; bit 30: DELAYED;
//!                             bit 31: BATCH_CONTINUES
//!      8     8  seq           the record's sequence number
//!     16     8  enqueued_us   enqueue time, microseconds since the Unix epoch
//!     24     n  body          with DELAYED: 8 bytes not_before_us; then with TTL: 8 bytes
//!                             ttl_us; then the payload
//!   24+n     p  padding       zero bytes up to the next multiple of 8 (not checksummed)
//! ```
//!
//! That is segment version 3 ([`FrameRules::V3`]; format version 4 in `docs/FORMAT.md`). In
//! segment version 2 ([`FrameRules::V2`]) bit 29 is part of the body length (bits 0..30) and
//! there is no TTL: a segment's frames are read by the rules of the version in its header, so a
//! version 2 frame with a body of 512 MiB or more never reads as a TTL.
//!
//! All integers are little-endian. The checksum covers the sequence number, so a frame only
//! validates at the position it was written for: stale bytes from an older life of a file, or a
//! zeroed tail, never read as a record (a frame of zeros fails the checksum, which
//! the unit test `zeroed_frame_never_validates` checks).

use std::ops::Range;
use std::sync::OnceLock;

/// Bytes of the frame header that precedes each payload.
pub const FRAME_HEADER_LEN: usize = PAYLOAD_OFFSET;
/// Every frame starts at a multiple of this many bytes from the start of the segment.
pub const FRAME_ALIGN: usize = 8;
/// Set in `len_flags` on every frame of a batch but the last: a batch whose last frame is missing
/// was torn by a crash and is discarded whole.
pub const BATCH_CONTINUES: u32 = 1 << 31;
/// Set in `len_flags` on a record that must not be handed out before the time in the first 8
/// bytes of its body (`push_delayed`).
pub const DELAYED: u32 = 1 << 30;
/// Set in `len_flags` (segment version 3 on) on a record with a time to live: the 8 bytes after
/// the delay prefix (or at the start of the body, on a record that is not delayed) hold it in
/// microseconds, counted from the frame's `enqueued_us` (`Push::ttl`).
pub const TTL: u32 = 1 << 29;
/// The largest body length a frame of the current format can describe.
pub const PAYLOAD_LEN_MAX: u32 = TTL - 1;
/// The largest body length a frame of format version 2 could describe (bit 29 was length).
pub const PAYLOAD_LEN_MAX_V2: u32 = DELAYED - 1;
/// Bytes the not-before time takes at the start of a delayed record's body.
pub const DELAY_PREFIX_LEN: usize = 8;
/// Bytes the time to live takes in the body of a record that has one.
pub const TTL_PREFIX_LEN: usize = 8;
/// The longest payload a frame of the current format can carry with both prefixes.
pub const RECORD_LEN_MAX: u32 = PAYLOAD_LEN_MAX - (DELAY_PREFIX_LEN + TTL_PREFIX_LEN) as u32;

/// How the frames of one segment are read: the rules of the format version in its header
/// (which bits of `len_flags` are flags), and the longest body accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRules {
    /// The bits of `len_flags` that hold the body length; a version whose mask leaves out bit 29
    /// reads it as [`TTL`]. (Two words, so that the rules pass in one register.)
    len_mask: u32,
    payload_len_max: u32,
}

impl FrameRules {
    /// Segment version 2: bits 0..30 are the body length; no TTL.
    pub const V2: FrameRules = FrameRules {
        len_mask: PAYLOAD_LEN_MAX_V2,
        payload_len_max: PAYLOAD_LEN_MAX_V2,
    };
    /// Segment version 3: bits 0..29 are the body length; bit 29 is [`TTL`].
    pub const V3: FrameRules = FrameRules {
        len_mask: PAYLOAD_LEN_MAX,
        payload_len_max: PAYLOAD_LEN_MAX,
    };
    /// The rules of the version this build writes.
    pub const CURRENT: FrameRules = FrameRules::V3;

    /// The rules of segment format `version`; `None` for a version this build does not read.
    pub fn for_version(version: u16) -> Option<FrameRules> {
        match version {
            2 => Some(FrameRules::V2),
            3 => Some(FrameRules::V3),
            _ => None,
        }
    }

    /// The format version these rules belong to.
    pub fn version(self) -> u16 {
        if self.len_mask == PAYLOAD_LEN_MAX_V2 {
            2
        } else {
            3
        }
    }

    /// The `TTL` flag as these rules read it: none in version 2.
    #[inline]
    fn ttl_flag(self) -> u32 {
        TTL & !self.len_mask
    }

    /// The same rules, accepting bodies of at most `max` bytes (never more than the format
    /// can describe).
    pub fn with_payload_len_max(self, max: u32) -> FrameRules {
        FrameRules {
            payload_len_max: max.min(self.len_mask),
            ..self
        }
    }

    /// The longest body accepted.
    pub fn payload_len_max(self) -> u32 {
        self.payload_len_max
    }
}

/// The optional fields at the start of a record's body, before its payload; 0 means absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BodyPrefix {
    /// Microseconds since the Unix epoch before which the record is not handed out (DELAYED).
    pub not_before_us: u64,
    /// Microseconds after `enqueued_us` past which the record is never handed out (TTL).
    pub ttl_us: u64,
}

impl BodyPrefix {
    /// No prefix: a plain record.
    pub const NONE: BodyPrefix = BodyPrefix {
        not_before_us: 0,
        ttl_us: 0,
    };

    /// A delay only (`not_before_us` 0: none).
    pub fn delay(not_before_us: u64) -> BodyPrefix {
        BodyPrefix {
            not_before_us,
            ttl_us: 0,
        }
    }

    /// The bytes the prefix takes in the body.
    #[inline]
    pub fn len(self) -> usize {
        if self.is_empty() {
            return 0;
        }
        usize::from(self.not_before_us != 0) * DELAY_PREFIX_LEN
            + usize::from(self.ttl_us != 0) * TTL_PREFIX_LEN
    }

    /// True when there is no prefix.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.not_before_us | self.ttl_us == 0
    }
}

/// When a record enqueued at `enqueued_us` with a time to live of `ttl_us` expires, in
/// microseconds since the Unix epoch; `None` when it has no TTL (`ttl_us` 0).
pub fn expires_at_us(enqueued_us: u64, ttl_us: u64) -> Option<u64> {
    (ttl_us != 0).then(|| enqueued_us.saturating_add(ttl_us))
}
/// Every record's sequence number is below this bound: the largest usable sequence number is
/// `SEQ_LIMIT - 1` (2^63 - 1). Positions (a head, a segment's base, the next sequence number, a
/// `synced_seq`, the end of an acknowledged range) are at most `SEQ_LIMIT`. A push that would
/// cross it is refused with [`Error::SeqExhausted`](crate::Error::SeqExhausted), and a file that
/// names a larger number is corrupt. The bound leaves room for any count added to a sequence
/// number (a batch in memory, the frames of a file, both below 2^63), so that sequence
/// arithmetic can never overflow a `u64`.
pub const SEQ_LIMIT: u64 = 1 << 63;

const CRC_OFFSET: usize = 0;
/// Payloads up to this long are checksummed from the encoded frame in one pass.
const SINGLE_PASS_CHECKSUM_MAX: usize = 4096;
const LEN_FLAGS_OFFSET: usize = CRC_OFFSET + 4;
const SEQ_OFFSET: usize = LEN_FLAGS_OFFSET + 4;
const ENQUEUED_OFFSET: usize = SEQ_OFFSET + 8;
const PAYLOAD_OFFSET: usize = ENQUEUED_OFFSET + 8;

/// The fields of a frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The record's sequence number.
    pub seq: u64,
    /// The body's length in bytes (the payload, plus the prefixes of a delayed record or of a
    /// record with a TTL).
    pub payload_len: u32,
    /// Enqueue time in microseconds since the Unix epoch.
    pub enqueued_us: u64,
    /// True on every frame of a batch except its last.
    pub batch_continues: bool,
    /// True when the body starts with a not-before time.
    pub delayed: bool,
    /// True when the body holds a time to live (after the not-before time, if any).
    pub has_ttl: bool,
}

/// A frame that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    /// The header fields.
    pub header: FrameHeader,
    /// Where the payload lies, relative to the start of the frame.
    pub payload: Range<usize>,
    /// Microseconds since the Unix epoch before which the record is not handed out; 0 if none.
    pub not_before_us: u64,
    /// The time to live in microseconds after `enqueued_us`; 0 if none.
    pub ttl_us: u64,
    /// The whole frame's length including padding: the distance to the next frame.
    pub frame_len: usize,
}

/// Why bytes do not decode as the expected frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes remain than the frame needs.
    #[error("frame cut short: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// The length field exceeds the configured limit.
    #[error("payload length {len} exceeds the limit of {max} bytes")]
    TooLong {
        /// The length field.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The frame belongs to another position.
    #[error("expected sequence number {expected}, found {found}")]
    WrongSeq {
        /// The sequence number this position must hold.
        expected: u64,
        /// The sequence number written in the frame.
        found: u64,
    },
    /// A valid frame whose sequence number is not below [`SEQ_LIMIT`]: never written by
    /// diskspool (a push that would reach it is refused), so damage or a forged file.
    #[error("sequence number {seq} is beyond the largest one, {}", SEQ_LIMIT - 1)]
    SeqBeyondLimit {
        /// The sequence number in the frame.
        seq: u64,
    },
    /// A frame whose body cannot hold the prefix its flags announce (a not-before time, a time
    /// to live).
    #[error("frame with a body of {len} bytes, shorter than its {prefix_len}-byte prefix")]
    ShortPrefix {
        /// The body length.
        len: u32,
        /// The bytes the flags announce before the payload.
        prefix_len: u32,
    },
    /// The checksum does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum in the frame.
        stored: u32,
        /// The checksum of the bytes as they are.
        computed: u32,
    },
}

/// The length of a whole frame (header, payload, padding) for a payload of `payload_len` bytes.
pub fn frame_len(payload_len: usize) -> usize {
    align_up(FRAME_HEADER_LEN + payload_len)
}

/// Rounds `len` up to the frame alignment.
pub fn align_up(len: usize) -> usize {
    len.div_ceil(FRAME_ALIGN) * FRAME_ALIGN
}

/// The length of a record's frame body: the payload, plus its prefix.
#[inline]
pub fn body_len(payload_len: usize, prefix: BodyPrefix) -> usize {
    payload_len + prefix.len()
}

/// Appends one encoded frame to `out`. A `not_before_us` of 0 means no delay. (For a frame with
/// a TTL: [`encode_prefixed`].)
///
/// The caller checks the payload against its limits first; a body longer than
/// [`PAYLOAD_LEN_MAX`] is a bug in the caller.
pub fn encode(
    out: &mut Vec<u8>,
    seq: u64,
    enqueued_us: u64,
    payload: &[u8],
    batch_continues: bool,
    not_before_us: u64,
) {
    let prefix = BodyPrefix::delay(not_before_us);
    encode_prefixed(out, seq, enqueued_us, payload, batch_continues, prefix);
}

/// Appends one encoded frame with the body prefix `prefix` to `out`, like [`encode`].
pub fn encode_prefixed(
    out: &mut Vec<u8>,
    seq: u64,
    enqueued_us: u64,
    payload: &[u8],
    batch_continues: bool,
    prefix: BodyPrefix,
) {
    let start = out.len();
    let body_len = body_len(payload.len(), prefix);
    out.resize(start + frame_len(body_len), 0);
    encode_into(
        &mut out[start..],
        seq,
        enqueued_us,
        payload,
        batch_continues,
        prefix,
    );
}

/// Encodes one frame into `out`, which must be exactly as long as the frame
/// ([`frame_len`] of its [`body_len`]); the writer encodes straight into a mapping of the
/// segment this way, without a copy.
///
/// Every byte of `out` is written, padding included, so stale bytes in reused space never
/// survive inside a frame. Panics if `out` has the wrong length or the body is longer than
/// [`PAYLOAD_LEN_MAX`]: both are bugs in the caller.
pub fn encode_into(
    out: &mut [u8],
    seq: u64,
    enqueued_us: u64,
    payload: &[u8],
    batch_continues: bool,
    prefix: BodyPrefix,
) {
    let body_len = body_len(payload.len(), prefix);
    assert_eq!(out.len(), frame_len(body_len), "frame buffer length");
    // The padding (under 8 bytes) is cleared by zeroing the last 8 bytes first, one store
    // instead of a call; the fields and the payload then overwrite what is not padding.
    let frame_end = out.len();
    if let Some(last_word) = frame_end.checked_sub(FRAME_ALIGN) {
        out[last_word..].copy_from_slice(&[0; FRAME_ALIGN]);
    }
    let payload_start = write_fields(out, seq, enqueued_us, body_len, batch_continues, prefix);
    let body_end = payload_start + payload.len();
    out[payload_start..body_end].copy_from_slice(payload);
    let crc = if payload.len() <= SINGLE_PASS_CHECKSUM_MAX {
        // Just written, so in the cache: one pass over the frame is cheaper than two calls.
        crc32(&out[LEN_FLAGS_OFFSET..body_end])
    } else {
        // Computed from the caller's payload, not read back from `out`: `out` may be a shared
        // mapping, and reading a large payload back would cost a second pass over memory.
        let mut hasher = crc32_hasher();
        hasher.update(&out[LEN_FLAGS_OFFSET..payload_start]);
        hasher.update(payload);
        hasher.finalize()
    };
    out[CRC_OFFSET..LEN_FLAGS_OFFSET].copy_from_slice(&crc.to_le_bytes());
    // (Tests forge frames past the limit, which never decode.)
    debug_assert!(
        seq >= SEQ_LIMIT
            || decode(out, seq, FrameRules::CURRENT).map(|frame| frame.payload.len())
                == Ok(payload.len()),
        "an encoded frame decodes back",
    );
}

/// The longest header [`encode_header`] writes: the frame header and both prefixes.
pub const HEADER_WITH_PREFIX_LEN_MAX: usize = FRAME_HEADER_LEN + DELAY_PREFIX_LEN + TTL_PREFIX_LEN;

/// Encodes the bytes of a frame that come before its payload (the header, and the body prefix)
/// into the front of `header`, with the checksum computed over `payload`
/// where it lies; returns how many bytes it wrote. The frame is those bytes, the payload, then
/// [`padding_len`] zeros: a writer that gathers the three into one vectored write never copies
/// the payload. Panics if the body is longer than [`PAYLOAD_LEN_MAX`] (a bug in the caller).
pub fn encode_header(
    header: &mut [u8; HEADER_WITH_PREFIX_LEN_MAX],
    seq: u64,
    enqueued_us: u64,
    payload: &[u8],
    batch_continues: bool,
    prefix: BodyPrefix,
) -> usize {
    let body_len = body_len(payload.len(), prefix);
    let len = write_fields(header, seq, enqueued_us, body_len, batch_continues, prefix);
    let mut hasher = crc32_hasher();
    hasher.update(&header[LEN_FLAGS_OFFSET..len]);
    hasher.update(payload);
    header[CRC_OFFSET..LEN_FLAGS_OFFSET].copy_from_slice(&hasher.finalize().to_le_bytes());
    len
}

/// Writes a frame's fields but the checksum (length and flags, sequence number, time, and the
/// body prefix) into the front of `out`, for a body of `body_len` bytes (payload and prefix);
/// returns where the payload starts. Always by the current format's rules. A frame without a
/// prefix (the common, hot case) costs one test more than before there were prefixes.
#[inline]
fn write_fields(
    out: &mut [u8],
    seq: u64,
    enqueued_us: u64,
    body_len: usize,
    batch_continues: bool,
    prefix: BodyPrefix,
) -> usize {
    let body_len_field = u32::try_from(body_len).unwrap_or(u32::MAX);
    assert!(
        body_len_field <= PAYLOAD_LEN_MAX,
        "payload length checked by the caller"
    );
    let mut len_flags = body_len_field;
    if batch_continues {
        len_flags |= BATCH_CONTINUES;
    }
    let plain = prefix.is_empty();
    if !plain {
        len_flags |= prefix_flags(prefix);
    }
    out[LEN_FLAGS_OFFSET..SEQ_OFFSET].copy_from_slice(&len_flags.to_le_bytes());
    out[SEQ_OFFSET..ENQUEUED_OFFSET].copy_from_slice(&seq.to_le_bytes());
    out[ENQUEUED_OFFSET..PAYLOAD_OFFSET].copy_from_slice(&enqueued_us.to_le_bytes());
    if plain {
        return PAYLOAD_OFFSET;
    }
    write_prefix(out, prefix)
}

/// The flags of a body prefix.
fn prefix_flags(prefix: BodyPrefix) -> u32 {
    let mut flags = 0;
    if prefix.not_before_us != 0 {
        flags |= DELAYED;
    }
    if prefix.ttl_us != 0 {
        flags |= TTL;
    }
    flags
}

/// Writes the body prefix after the header; returns where the payload starts.
fn write_prefix(out: &mut [u8], prefix: BodyPrefix) -> usize {
    let mut at = PAYLOAD_OFFSET;
    for value in [prefix.not_before_us, prefix.ttl_us] {
        if value != 0 {
            out[at..at + 8].copy_from_slice(&value.to_le_bytes());
            at += 8;
        }
    }
    at
}

/// The zeros after a payload of `payload_len` bytes that end its frame on [`FRAME_ALIGN`].
pub fn padding_len(payload_len: usize, prefix: BodyPrefix) -> usize {
    let body_len = body_len(payload_len, prefix);
    frame_len(body_len) - FRAME_HEADER_LEN - body_len
}

/// Reads only the header fields by `rules`, without checking the checksum. For inspection tools
/// that want to describe a damaged frame; never use it to hand out a record.
#[inline]
pub fn peek_header(bytes: &[u8], rules: FrameRules) -> Option<FrameHeader> {
    let header = bytes.get(..FRAME_HEADER_LEN)?;
    let len_flags = read_u32(header, LEN_FLAGS_OFFSET);
    Some(FrameHeader {
        seq: read_u64(header, SEQ_OFFSET),
        payload_len: len_flags & rules.len_mask,
        enqueued_us: read_u64(header, ENQUEUED_OFFSET),
        batch_continues: len_flags & BATCH_CONTINUES != 0,
        delayed: len_flags & DELAYED != 0,
        has_ttl: len_flags & rules.ttl_flag() != 0,
    })
}

impl FrameHeader {
    /// The bytes the header's flags announce at the start of the body.
    pub fn prefix_len(&self) -> usize {
        (if self.delayed { DELAY_PREFIX_LEN } else { 0 })
            + if self.has_ttl { TTL_PREFIX_LEN } else { 0 }
    }
}

/// Reads the body prefix of the frame that starts at `bytes` and whose header is `header`,
/// without checking anything: absent fields (and fields cut off) read as 0. For counting over
/// bytes a reader validates when it hands a record out ([`walk_headers`](crate::format::segment::walk_headers)).
pub fn peek_prefix(bytes: &[u8], header: &FrameHeader) -> BodyPrefix {
    let field = |at: usize| bytes.get(at..at + 8).map_or(0, |word| read_u64(word, 0));
    let mut at = FRAME_HEADER_LEN;
    let mut prefix = BodyPrefix::NONE;
    if header.delayed {
        prefix.not_before_us = field(at);
        at += DELAY_PREFIX_LEN;
    }
    if header.has_ttl {
        prefix.ttl_us = field(at);
    }
    prefix
}

/// Decodes the frame at the start of `bytes` by `rules` (those of its segment's format version),
/// which must hold sequence number `expected_seq` and a body of at most
/// `rules.payload_len_max()` bytes.
///
/// `bytes` runs from the frame's first byte to the end of the readable data; the frame may be
/// followed by more frames.
pub fn decode(
    bytes: &[u8],
    expected_seq: u64,
    rules: FrameRules,
) -> Result<DecodedFrame, FrameError> {
    let header = peek_header(bytes, rules).ok_or(FrameError::Truncated {
        needed: FRAME_HEADER_LEN,
        available: bytes.len(),
    })?;
    if header.payload_len > rules.payload_len_max {
        return Err(FrameError::TooLong {
            len: header.payload_len,
            max: rules.payload_len_max,
        });
    }
    let payload_end = FRAME_HEADER_LEN + header.payload_len as usize;
    let Some(covered) = bytes.get(LEN_FLAGS_OFFSET..payload_end) else {
        return Err(FrameError::Truncated {
            needed: payload_end,
            available: bytes.len(),
        });
    };
    let stored = read_u32(bytes, CRC_OFFSET);
    let computed = checksum(covered);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    // Checked after the checksum: a frame from another position that happens to validate is the
    // more precise diagnosis.
    if header.seq != expected_seq {
        return Err(FrameError::WrongSeq {
            expected: expected_seq,
            found: header.seq,
        });
    }
    if header.seq >= SEQ_LIMIT {
        return Err(FrameError::SeqBeyondLimit { seq: header.seq });
    }
    let (prefix, payload_start) = if header.delayed | header.has_ttl {
        decode_prefix(bytes, &header)?
    } else {
        (BodyPrefix::NONE, FRAME_HEADER_LEN)
    };
    // The padding is not checksummed and may be cut off by a torn write of the last frame:
    // the caller restores it when it truncates the file to the frame's end.
    Ok(DecodedFrame {
        header,
        payload: payload_start..payload_end,
        not_before_us: prefix.not_before_us,
        ttl_us: prefix.ttl_us,
        frame_len: frame_len(header.payload_len as usize),
    })
}

/// The body prefix of a checked frame that has one, and where its payload starts. Out of line:
/// most frames have none, and their decoding stays as short as before prefixes existed.
#[inline(never)]
fn decode_prefix(bytes: &[u8], header: &FrameHeader) -> Result<(BodyPrefix, usize), FrameError> {
    let prefix_len = header.prefix_len();
    if (header.payload_len as usize) < prefix_len {
        return Err(FrameError::ShortPrefix {
            len: header.payload_len,
            prefix_len: prefix_len as u32,
        });
    }
    Ok((peek_prefix(bytes, header), FRAME_HEADER_LEN + prefix_len))
}

fn checksum(bytes: &[u8]) -> u32 {
    crc32(bytes)
}

/// A fresh CRC-32 hasher. `crc32fast::Hasher::new` detects the processor's features on every
/// call, which costs a third of checksumming a 100 B record; cloning one made once does not.
pub(crate) fn crc32_hasher() -> crc32fast::Hasher {
    static PROTOTYPE: OnceLock<crc32fast::Hasher> = OnceLock::new();
    PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone()
}

/// The CRC-32 of `bytes` (the same as `crc32fast::hash`, without the feature detection).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut hasher = crc32_hasher();
    hasher.update(bytes);
    hasher.finalize()
}

pub(crate) fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(word)
}

pub(crate) fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The current rules, accepting bodies of at most `max` bytes.
    fn limit(max: u32) -> FrameRules {
        FrameRules::CURRENT.with_payload_len_max(max)
    }

    /// Every combination of the prefixes, the batch flag among them.
    const PREFIXES: [(bool, BodyPrefix); 6] = [
        (false, BodyPrefix::NONE),
        (true, BodyPrefix::NONE),
        (
            false,
            BodyPrefix {
                not_before_us: 99,
                ttl_us: 0,
            },
        ),
        (
            true,
            BodyPrefix {
                not_before_us: 1,
                ttl_us: 0,
            },
        ),
        (
            false,
            BodyPrefix {
                not_before_us: 0,
                ttl_us: 5_000,
            },
        ),
        (
            true,
            BodyPrefix {
                not_before_us: 77,
                ttl_us: u64::MAX,
            },
        ),
    ];

    /// A header, the payload and the padding gathered make the same bytes as `encode`, for
    /// every payload length around the alignment, with every prefix, first or continued.
    #[test]
    fn gathered_header_payload_and_padding_equal_the_encoded_frame() {
        for len in [0usize, 1, 7, 8, 9, 100, 4095, 4096, 4097, 70_000] {
            let payload: Vec<u8> = (0..len).map(|index| (index * 7 + 3) as u8).collect();
            for (continues, prefix) in PREFIXES {
                let mut expected = Vec::new();
                encode_prefixed(&mut expected, 9, 1234, &payload, continues, prefix);
                let mut header = [0; HEADER_WITH_PREFIX_LEN_MAX];
                let header_len = encode_header(&mut header, 9, 1234, &payload, continues, prefix);
                assert_eq!(header_len, FRAME_HEADER_LEN + prefix.len());
                let mut gathered = header[..header_len].to_vec();
                gathered.extend_from_slice(&payload);
                gathered.resize(gathered.len() + padding_len(len, prefix), 0);
                assert_eq!(gathered, expected, "len {len}, prefix {prefix:?}");
            }
        }
    }

    /// Every flag combination round-trips: the prefixes come back, out of the payload, and the
    /// batch flag with them.
    #[test]
    fn every_prefix_and_flag_combination_round_trips() {
        for (continues, prefix) in PREFIXES {
            for payload in [&b""[..], b"x", b"a payload of some length"] {
                let mut out = Vec::new();
                encode_prefixed(&mut out, 5, 1_000, payload, continues, prefix);
                assert_eq!(out.len(), frame_len(body_len(payload.len(), prefix)));
                let frame = decode(&out, 5, FrameRules::CURRENT).unwrap();
                assert_eq!(frame.header.batch_continues, continues);
                assert_eq!(frame.header.delayed, prefix.not_before_us != 0);
                assert_eq!(frame.header.has_ttl, prefix.ttl_us != 0);
                assert_eq!(frame.not_before_us, prefix.not_before_us);
                assert_eq!(frame.ttl_us, prefix.ttl_us);
                assert_eq!(&out[frame.payload.clone()], payload, "{prefix:?}");
                assert_eq!(frame.frame_len, out.len());
                let header = peek_header(&out, FrameRules::CURRENT).unwrap();
                assert_eq!(peek_prefix(&out, &header), prefix);
            }
        }
        assert_eq!(expires_at_us(1_000, 0), None);
        assert_eq!(expires_at_us(1_000, 5), Some(1_005));
        assert_eq!(expires_at_us(1_000, u64::MAX), Some(u64::MAX));
    }

    /// A frame as format version 2 wrote it: bits 0..30 the body length, no TTL.
    fn v2_frame(seq: u64, body: &[u8], delayed: bool) -> Vec<u8> {
        let mut out = vec![0; frame_len(body.len())];
        let len_flags = body.len() as u32 | if delayed { DELAYED } else { 0 };
        v2_header(&mut out, seq, len_flags);
        out[PAYLOAD_OFFSET..PAYLOAD_OFFSET + body.len()].copy_from_slice(body);
        let crc = crc32(&out[LEN_FLAGS_OFFSET..PAYLOAD_OFFSET + body.len()]);
        out[..LEN_FLAGS_OFFSET].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn v2_header(out: &mut [u8], seq: u64, len_flags: u32) {
        out[LEN_FLAGS_OFFSET..SEQ_OFFSET].copy_from_slice(&len_flags.to_le_bytes());
        out[SEQ_OFFSET..ENQUEUED_OFFSET].copy_from_slice(&seq.to_le_bytes());
        out[ENQUEUED_OFFSET..PAYLOAD_OFFSET].copy_from_slice(&7u64.to_le_bytes());
    }

    /// A version 2 frame whose body is 512 MiB or more has bit 29 set as part of its length:
    /// read by version 2 rules it is that long record, never a TTL (its header alone shows it,
    /// without allocating the record). Frames below that size read the same by both rules, and
    /// a frame this build writes without a TTL is byte for byte a version 2 frame.
    #[test]
    fn version_2_frames_read_by_version_2_rules() {
        let long_body = TTL + 24;
        let mut header = [0u8; FRAME_HEADER_LEN + 16];
        v2_header(&mut header, 3, long_body);
        let as_v2 = peek_header(&header, FrameRules::V2).unwrap();
        assert_eq!((as_v2.payload_len, as_v2.has_ttl), (long_body, false));
        assert_eq!(
            decode(&header, 3, FrameRules::V2),
            Err(FrameError::Truncated {
                needed: FRAME_HEADER_LEN + long_body as usize,
                available: header.len()
            })
        );
        // The same bits by version 3 rules: a 24-byte body with a TTL.
        let as_v3 = peek_header(&header, FrameRules::V3).unwrap();
        assert_eq!((as_v3.payload_len, as_v3.has_ttl), (24, true));
        for delayed in [false, true] {
            let small = v2_frame(4, b"0123456789abcdef", delayed);
            let as_v2 = decode(&small, 4, FrameRules::V2).unwrap();
            assert_eq!(decode(&small, 4, FrameRules::V3), Ok(as_v2.clone()));
            assert_eq!(as_v2.header.delayed, delayed);
            assert_eq!(as_v2.ttl_us, 0);
            // What this build writes without a TTL is byte for byte a version 2 frame.
            let mut encoded = Vec::new();
            let not_before_us = if delayed {
                read_u64(&small, FRAME_HEADER_LEN)
            } else {
                0
            };
            let payload = &small[as_v2.payload.clone()];
            encode(&mut encoded, 4, 7, payload, false, not_before_us);
            assert_eq!(encoded, small);
        }
        assert_eq!(FrameRules::for_version(2), Some(FrameRules::V2));
        assert_eq!(FrameRules::for_version(3), Some(FrameRules::CURRENT));
        assert_eq!(FrameRules::for_version(1), None);
        assert_eq!(FrameRules::for_version(4), None);
        assert_eq!(
            FrameRules::V2
                .with_payload_len_max(u32::MAX)
                .payload_len_max(),
            PAYLOAD_LEN_MAX_V2
        );
    }

    /// The example frame of docs/FORMAT.md ("Record frame"), byte for byte.
    #[test]
    fn the_documented_ttl_frame_is_what_encode_writes() {
        let documented = "11 b6 e8 2b 0a 00 00 20 05 00 00 00 00 00 00 00 00 40 1e 18 24 0a 06 00 \
                          00 87 93 03 00 00 00 00 68 69 00 00 00 00 00 00";
        let expected: Vec<u8> = documented
            .split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).unwrap())
            .collect();
        let mut out = Vec::new();
        let prefix = BodyPrefix {
            not_before_us: 0,
            ttl_us: 60_000_000,
        };
        encode_prefixed(&mut out, 5, 1_700_000_000_000_000, b"hi", false, prefix);
        assert_eq!(out, expected);
    }

    /// A TTL flag on a body too short for its prefix is refused, not read past.
    #[test]
    fn a_prefix_longer_than_the_body_is_refused() {
        let mut out = Vec::new();
        encode_prefixed(
            &mut out,
            2,
            0,
            b"",
            false,
            BodyPrefix {
                not_before_us: 9,
                ttl_us: 0,
            },
        );
        // Claim a TTL as well: the 8-byte body cannot hold 16 bytes of prefix.
        let len_flags = read_u32(&out, LEN_FLAGS_OFFSET) | TTL;
        out[LEN_FLAGS_OFFSET..SEQ_OFFSET].copy_from_slice(&len_flags.to_le_bytes());
        let crc = crc32(&out[LEN_FLAGS_OFFSET..FRAME_HEADER_LEN + 8]);
        out[..LEN_FLAGS_OFFSET].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&out, 2, FrameRules::CURRENT),
            Err(FrameError::ShortPrefix {
                len: 8,
                prefix_len: 16
            })
        );
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut out = Vec::new();
        encode(&mut out, 42, 1_700_000_000_000_000, b"hello", true, 0);
        assert_eq!(out.len(), frame_len(5));
        assert_eq!(out.len() % FRAME_ALIGN, 0);
        let frame = decode(&out, 42, limit(1024)).unwrap();
        assert_eq!(frame.header.seq, 42);
        assert_eq!(frame.header.enqueued_us, 1_700_000_000_000_000);
        assert!(frame.header.batch_continues);
        assert_eq!(&out[frame.payload.clone()], b"hello");
        assert_eq!(frame.frame_len, out.len());
    }

    #[test]
    fn encode_into_overwrites_stale_bytes() {
        // Reused space (a recycled or preallocated segment) holds old bytes; the frame written
        // over them, padding included, must be exactly what `encode` produces.
        // Every padding length, and the frames with no payload at all.
        let payload: Vec<u8> = (1..=17).collect();
        for len in 0..=payload.len() {
            for (_, prefix) in PREFIXES {
                let mut expected = Vec::new();
                encode_prefixed(&mut expected, 9, 5, &payload[..len], false, prefix);
                let mut reused = vec![0xEE; expected.len()];
                encode_into(&mut reused, 9, 5, &payload[..len], false, prefix);
                assert_eq!(reused, expected, "payload of {len} bytes");
                assert!(expected[FRAME_HEADER_LEN..].ends_with(&vec![0; padding_len(len, prefix)]));
            }
        }
    }

    #[test]
    fn delayed_frame_keeps_its_time_out_of_the_payload() {
        let mut out = Vec::new();
        encode(&mut out, 9, 5, b"later", false, 123_456);
        assert_eq!(
            out.len(),
            frame_len(body_len(5, BodyPrefix::delay(123_456)))
        );
        let frame = decode(&out, 9, limit(1024)).unwrap();
        assert!(frame.header.delayed);
        assert_eq!(frame.not_before_us, 123_456);
        assert_eq!(&out[frame.payload.clone()], b"later");
    }

    #[test]
    fn frame_at_another_position_is_rejected() {
        let mut out = Vec::new();
        encode(&mut out, 7, 0, b"x", false, 0);
        assert_eq!(
            decode(&out, 8, limit(1024)),
            Err(FrameError::WrongSeq {
                expected: 8,
                found: 7
            })
        );
    }

    #[test]
    fn zeroed_frame_never_validates() {
        // Zeroed preallocated space or a zero-filled tail after a power loss: every possible
        // expected sequence number fails, because the checksum of zeros is not zero.
        let zeros = [0u8; 64];
        for expected in [0, 1, u64::MAX] {
            assert!(matches!(
                decode(&zeros, expected, limit(1024)),
                Err(FrameError::Checksum { .. })
            ));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        for (_, prefix) in PREFIXES {
            let mut out = Vec::new();
            encode_prefixed(&mut out, 3, 99, b"payload bytes", false, prefix);
            let covered = FRAME_HEADER_LEN + prefix.len() + 13;
            for byte in 0..covered {
                for bit in 0..8 {
                    let mut damaged = out.clone();
                    damaged[byte] ^= 1 << bit;
                    assert!(
                        decode(&damaged, 3, limit(1024)).is_err(),
                        "byte {byte} bit {bit}"
                    );
                }
            }
        }
    }

    #[test]
    fn cut_frames_are_truncated_errors() {
        let mut out = Vec::new();
        encode(&mut out, 1, 0, &[7; 40], false, 0);
        for cut in 0..FRAME_HEADER_LEN + 40 {
            assert!(
                matches!(
                    decode(&out[..cut], 1, limit(1024)),
                    Err(FrameError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn length_over_limit_is_rejected_before_reading() {
        let mut out = Vec::new();
        encode(&mut out, 1, 0, &[1; 100], false, 0);
        assert_eq!(
            decode(&out, 1, limit(99)),
            Err(FrameError::TooLong { len: 100, max: 99 })
        );
    }
}
