//! The dead-letter envelope: a record moved to a dead-letter queue carries its payload with where
//! it came from.
//!
//! ```text
//! offset  size  field
//!      0     4  magic          why it was moved: b"DSDL" delivery limit or `Delivery::dead_letter`,
//!                               b"DSDX" expired (`max_age`), b"DSDO" dropped for room
//!                               (`Overflow::DropOldest`)
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
    /// Why it was moved.
    pub reason: DeadLetterReason,
}

/// Why a record was moved to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeadLetterReason {
    /// It used up `max_deliveries`, or a receiver called `Delivery::dead_letter`.
    #[default]
    Deliveries,
    /// It was older than `Options::max_age` when it reached the head.
    Expired,
    /// `Overflow::DropOldest` discarded it to make room for a push.
    Overflow,
}

impl DeadLetterReason {
    fn magic(self) -> [u8; 4] {
        match self {
            DeadLetterReason::Deliveries => DEAD_LETTER_MAGIC,
            DeadLetterReason::Expired => *b"DSDX",
            DeadLetterReason::Overflow => *b"DSDO",
        }
    }

    fn from_magic(magic: &[u8]) -> Option<Self> {
        [
            DeadLetterReason::Deliveries,
            DeadLetterReason::Expired,
            DeadLetterReason::Overflow,
        ]
        .into_iter()
        .find(|reason| reason.magic() == magic)
    }
}

const DEAD_LETTER_MAGIC: [u8; 4] = *b"DSDL";
/// The envelope's bytes before the payload.
pub(crate) const DEAD_LETTER_HEADER_LEN: usize = 24;

impl<'a> DeadLetter<'a> {
    /// Encodes the envelope: the reason's magic (`DSDL`, `DSDX`, `DSDO`), deliveries (u32), original seq (u64), enqueue time (u64),
    /// then the payload; integers little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(DEAD_LETTER_HEADER_LEN + self.payload.len());
        bytes.extend_from_slice(&self.reason.magic());
        bytes.extend_from_slice(&self.deliveries.to_le_bytes());
        bytes.extend_from_slice(&self.original_seq.to_le_bytes());
        bytes.extend_from_slice(&self.enqueued_at_us.to_le_bytes());
        bytes.extend_from_slice(self.payload);
        bytes
    }

    /// Decodes a dead-letter queue record's payload; `None` if it is not an envelope.
    pub fn decode(bytes: &'a [u8]) -> Option<Self> {
        let reason = DeadLetterReason::from_magic(bytes.get(..4)?)?;
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
        };
        Some(DeadLetter {
            deliveries: u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?),
            original_seq: word(8)?,
            enqueued_at_us: word(16)?,
            payload: bytes.get(DEAD_LETTER_HEADER_LEN..)?,
            reason,
        })
    }

    /// When the record was first pushed.
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_at_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_and_the_original_magic_means_deliveries() {
        for reason in [
            DeadLetterReason::Deliveries,
            DeadLetterReason::Expired,
            DeadLetterReason::Overflow,
        ] {
            let letter = DeadLetter {
                original_seq: 7,
                deliveries: 2,
                enqueued_at_us: 99,
                payload: b"job",
                reason,
            };
            assert_eq!(DeadLetter::decode(&letter.encode()), Some(letter));
        }
        let mut old = b"DSDL".to_vec();
        old.extend_from_slice(&[0; 20]);
        assert_eq!(
            DeadLetter::decode(&old).map(|letter| letter.reason),
            Some(DeadLetterReason::Deliveries)
        );
        old[3] = b'Z';
        assert_eq!(DeadLetter::decode(&old), None);
    }
}
