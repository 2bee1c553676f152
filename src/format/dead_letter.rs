//! The dead-letter envelope: a record moved to a dead-letter queue carries its payload with where
//! it came from.
//!
//! ```text
//! offset  size  field
//!      0     4  magic          b"DSDL"
//!      4     4  deliveries     u32, how many times it was delivered without an acknowledgement
//!      8     8  original_seq   u64, its sequence number in the queue it came from
//!     16     8  enqueued_at_us u64, when it was first pushed (microseconds since the Unix epoch)
//!     24        payload        the original payload
//! ```
//!
//! Integers are little-endian.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A record in a dead-letter queue: the original payload with where it came from.
///
/// Dead-letter queues are ordinary queues; decode their records with [`DeadLetter::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter<'a> {
    /// The record's sequence number in the queue it came from.
    pub original_seq: u64,
    /// How many times it was delivered without an acknowledgement.
    pub deliveries: u32,
    /// When it was first pushed, in microseconds since the Unix epoch.
    pub enqueued_at_us: u64,
    /// The original payload.
    pub payload: &'a [u8],
}

const DEAD_LETTER_MAGIC: [u8; 4] = *b"DSDL";
const DEAD_LETTER_HEADER_LEN: usize = 24;

impl<'a> DeadLetter<'a> {
    /// Encodes the envelope: `DSDL`, deliveries (u32), original seq (u64), enqueue time (u64),
    /// then the payload; integers little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(DEAD_LETTER_HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&DEAD_LETTER_MAGIC);
        bytes.extend_from_slice(&self.deliveries.to_le_bytes());
        bytes.extend_from_slice(&self.original_seq.to_le_bytes());
        bytes.extend_from_slice(&self.enqueued_at_us.to_le_bytes());
        bytes.extend_from_slice(self.payload);
        bytes
    }

    /// Decodes a dead-letter queue record's payload; `None` if it is not an envelope.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        if bytes.get(..4)? != DEAD_LETTER_MAGIC {
            return None;
        }
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(DeadLetter {
            deliveries: u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?),
            original_seq: word(8)?,
            enqueued_at_us: word(16)?,
            payload: bytes.get(DEAD_LETTER_HEADER_LEN..)?,
        })
    }

    /// When the record was first pushed.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_at_us)
    }
}
