//! The record frame: how one record is laid out inside a segment. Pure functions, no I/O.
//!
//! ```text
//! offset  size  field
//!      0     4  crc32         CRC-32 (IEEE) of bytes 4..24 and the payload
//!      4     4  len_flags     bits 0..30: body length n; bit 30: DELAYED; bit 31: BATCH_CONTINUES
//!      8     8  seq           the record's sequence number
//!     16     8  enqueued_us   enqueue time, microseconds since the Unix epoch
//!     24     n  body          with DELAYED: 8 bytes not_before_us, then the payload;
//!                             without: the payload
//!   24+n     p  padding       zero bytes up to the next multiple of 8 (not checksummed)
//! ```
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
/// The largest body length a frame can describe.
pub const PAYLOAD_LEN_MAX: u32 = DELAYED - 1;
/// Bytes the not-before time takes at the start of a delayed record's body.
pub const DELAY_PREFIX_LEN: usize = 8;
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
    /// The body's length in bytes (the payload, plus the delay prefix on a delayed record).
    pub payload_len: u32,
    /// Enqueue time in microseconds since the Unix epoch.
    pub enqueued_us: u64,
    /// True on every frame of a batch except its last.
    pub batch_continues: bool,
    /// True when the body starts with a not-before time.
    pub delayed: bool,
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
    /// A delayed frame whose body cannot hold the not-before time.
    #[error("delayed frame with a body of {len} bytes, shorter than its 8-byte delay")]
    ShortDelay {
        /// The body length.
        len: u32,
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

/// The length of a record's frame body: the payload, plus the prefix of a delayed record.
pub fn body_len(payload_len: usize, delayed: bool) -> usize {
    payload_len + if delayed { DELAY_PREFIX_LEN } else { 0 }
}

/// Appends one encoded frame to `out`. A `not_before_us` of 0 means no delay.
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
    let start = out.len();
    let body_len = body_len(payload.len(), not_before_us != 0);
    out.resize(start + frame_len(body_len), 0);
    encode_into(
        &mut out[start..],
        seq,
        enqueued_us,
        payload,
        batch_continues,
        not_before_us,
    );
}

/// Encodes one frame into `out`, which must be exactly as long as the frame
/// ([`frame_len`] of its [`body_len`]); the writer encodes straight into a mapping of the
/// segment this way, without a copy. A `not_before_us` of 0 means no delay.
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
    not_before_us: u64,
) {
    let delayed = not_before_us != 0;
    assert_eq!(
        out.len(),
        frame_len(body_len(payload.len(), delayed)),
        "frame buffer length"
    );
    // The padding (under 8 bytes) is cleared by zeroing the last 8 bytes first, one store
    // instead of a call; the fields and the payload then overwrite what is not padding.
    let frame_end = out.len();
    if let Some(last_word) = frame_end.checked_sub(FRAME_ALIGN) {
        out[last_word..].copy_from_slice(&[0; FRAME_ALIGN]);
    }
    let payload_start = write_fields(
        out,
        seq,
        enqueued_us,
        payload.len(),
        batch_continues,
        not_before_us,
    );
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
            || decode(out, seq, PAYLOAD_LEN_MAX).map(|frame| frame.payload.len())
                == Ok(payload.len()),
        "an encoded frame decodes back",
    );
}

/// The longest header [`encode_header`] writes: the frame header and a delay prefix.
pub const HEADER_WITH_DELAY_LEN: usize = FRAME_HEADER_LEN + DELAY_PREFIX_LEN;

/// Encodes the bytes of a frame that come before its payload (the header, and the delay prefix
/// of a delayed record) into the front of `header`, with the checksum computed over `payload`
/// where it lies; returns how many bytes it wrote. The frame is those bytes, the payload, then
/// [`padding_len`] zeros: a writer that gathers the three into one vectored write never copies
/// the payload. Panics if the body is longer than [`PAYLOAD_LEN_MAX`] (a bug in the caller).
pub fn encode_header(
    header: &mut [u8; HEADER_WITH_DELAY_LEN],
    seq: u64,
    enqueued_us: u64,
    payload: &[u8],
    batch_continues: bool,
    not_before_us: u64,
) -> usize {
    let len = write_fields(
        header,
        seq,
        enqueued_us,
        payload.len(),
        batch_continues,
        not_before_us,
    );
    let mut hasher = crc32_hasher();
    hasher.update(&header[LEN_FLAGS_OFFSET..len]);
    hasher.update(payload);
    header[CRC_OFFSET..LEN_FLAGS_OFFSET].copy_from_slice(&hasher.finalize().to_le_bytes());
    len
}

/// Writes a frame's fields but the checksum (length and flags, sequence number, time, and the
/// delay prefix of a delayed record) into the front of `out`; returns where the payload starts.
fn write_fields(
    out: &mut [u8],
    seq: u64,
    enqueued_us: u64,
    payload_len: usize,
    batch_continues: bool,
    not_before_us: u64,
) -> usize {
    let delayed = not_before_us != 0;
    let body_len_field = u32::try_from(body_len(payload_len, delayed)).unwrap_or(u32::MAX);
    assert!(
        body_len_field <= PAYLOAD_LEN_MAX,
        "payload length checked by the caller"
    );
    let mut flags = 0;
    if batch_continues {
        flags |= BATCH_CONTINUES;
    }
    if delayed {
        flags |= DELAYED;
    }
    out[LEN_FLAGS_OFFSET..SEQ_OFFSET].copy_from_slice(&(body_len_field | flags).to_le_bytes());
    out[SEQ_OFFSET..ENQUEUED_OFFSET].copy_from_slice(&seq.to_le_bytes());
    out[ENQUEUED_OFFSET..PAYLOAD_OFFSET].copy_from_slice(&enqueued_us.to_le_bytes());
    if !delayed {
        return PAYLOAD_OFFSET;
    }
    out[PAYLOAD_OFFSET..HEADER_WITH_DELAY_LEN].copy_from_slice(&not_before_us.to_le_bytes());
    HEADER_WITH_DELAY_LEN
}

/// The zeros after a payload of `payload_len` bytes that end its frame on [`FRAME_ALIGN`].
pub fn padding_len(payload_len: usize, delayed: bool) -> usize {
    let body_len = body_len(payload_len, delayed);
    frame_len(body_len) - FRAME_HEADER_LEN - body_len
}

/// Reads only the header fields, without checking the checksum. For inspection tools that want
/// to describe a damaged frame; never use it to hand out a record.
pub fn peek_header(bytes: &[u8]) -> Option<FrameHeader> {
    let header = bytes.get(..FRAME_HEADER_LEN)?;
    let len_flags = read_u32(header, LEN_FLAGS_OFFSET);
    Some(FrameHeader {
        seq: read_u64(header, SEQ_OFFSET),
        payload_len: len_flags & PAYLOAD_LEN_MAX,
        enqueued_us: read_u64(header, ENQUEUED_OFFSET),
        batch_continues: len_flags & BATCH_CONTINUES != 0,
        delayed: len_flags & DELAYED != 0,
    })
}

/// Decodes the frame at the start of `bytes`, which must hold sequence number `expected_seq` and
/// a payload of at most `payload_len_max` bytes.
///
/// `bytes` runs from the frame's first byte to the end of the readable data; the frame may be
/// followed by more frames.
pub fn decode(
    bytes: &[u8],
    expected_seq: u64,
    payload_len_max: u32,
) -> Result<DecodedFrame, FrameError> {
    let header = peek_header(bytes).ok_or(FrameError::Truncated {
        needed: FRAME_HEADER_LEN,
        available: bytes.len(),
    })?;
    if header.payload_len > payload_len_max {
        return Err(FrameError::TooLong {
            len: header.payload_len,
            max: payload_len_max,
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
    let mut payload_start = FRAME_HEADER_LEN;
    let mut not_before_us = 0;
    if header.delayed {
        if (header.payload_len as usize) < DELAY_PREFIX_LEN {
            return Err(FrameError::ShortDelay {
                len: header.payload_len,
            });
        }
        not_before_us = read_u64(bytes, FRAME_HEADER_LEN);
        payload_start += DELAY_PREFIX_LEN;
    }
    // The padding is not checksummed and may be cut off by a torn write of the last frame:
    // the caller restores it when it truncates the file to the frame's end.
    Ok(DecodedFrame {
        header,
        payload: payload_start..payload_end,
        not_before_us,
        frame_len: frame_len(header.payload_len as usize),
    })
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

    /// A header, the payload and the padding gathered make the same bytes as `encode`, for
    /// every payload length around the alignment, delayed or not, first or continued.
    #[test]
    fn gathered_header_payload_and_padding_equal_the_encoded_frame() {
        for len in [0usize, 1, 7, 8, 9, 100, 4095, 4096, 4097, 70_000] {
            let payload: Vec<u8> = (0..len).map(|index| (index * 7 + 3) as u8).collect();
            for (continues, not_before_us) in [(false, 0), (true, 0), (false, 99), (true, 1)] {
                let mut expected = Vec::new();
                encode(&mut expected, 9, 1234, &payload, continues, not_before_us);
                let mut header = [0; HEADER_WITH_DELAY_LEN];
                let header_len =
                    encode_header(&mut header, 9, 1234, &payload, continues, not_before_us);
                let mut gathered = header[..header_len].to_vec();
                gathered.extend_from_slice(&payload);
                gathered.resize(gathered.len() + padding_len(len, not_before_us != 0), 0);
                assert_eq!(gathered, expected, "len {len}, delay {not_before_us}");
            }
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut out = Vec::new();
        encode(&mut out, 42, 1_700_000_000_000_000, b"hello", true, 0);
        assert_eq!(out.len(), frame_len(5));
        assert_eq!(out.len() % FRAME_ALIGN, 0);
        let frame = decode(&out, 42, 1024).unwrap();
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
            for not_before_us in [0, 77] {
                let mut expected = Vec::new();
                encode(&mut expected, 9, 5, &payload[..len], false, not_before_us);
                let mut reused = vec![0xEE; expected.len()];
                encode_into(&mut reused, 9, 5, &payload[..len], false, not_before_us);
                assert_eq!(reused, expected, "payload of {len} bytes");
                assert!(expected[FRAME_HEADER_LEN..].ends_with(&vec![
                    0;
                    padding_len(
                        len,
                        not_before_us != 0
                    )
                ]));
            }
        }
    }

    #[test]
    fn delayed_frame_keeps_its_time_out_of_the_payload() {
        let mut out = Vec::new();
        encode(&mut out, 9, 5, b"later", false, 123_456);
        assert_eq!(out.len(), frame_len(body_len(5, true)));
        let frame = decode(&out, 9, 1024).unwrap();
        assert!(frame.header.delayed);
        assert_eq!(frame.not_before_us, 123_456);
        assert_eq!(&out[frame.payload.clone()], b"later");
    }

    #[test]
    fn frame_at_another_position_is_rejected() {
        let mut out = Vec::new();
        encode(&mut out, 7, 0, b"x", false, 0);
        assert_eq!(
            decode(&out, 8, 1024),
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
                decode(&zeros, expected, 1024),
                Err(FrameError::Checksum { .. })
            ));
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode(&mut out, 3, 99, b"payload bytes", false, 0);
        let covered = FRAME_HEADER_LEN + 13;
        for byte in 0..covered {
            for bit in 0..8 {
                let mut damaged = out.clone();
                damaged[byte] ^= 1 << bit;
                assert!(decode(&damaged, 3, 1024).is_err(), "byte {byte} bit {bit}");
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
                    decode(&out[..cut], 1, 1024),
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
            decode(&out, 1, 99),
            Err(FrameError::TooLong { len: 100, max: 99 })
        );
    }
}
