//! A record handed out by the queue: its sequence number, times, and a payload that borrows the
//! segment's mapping.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::frame::{self, BodyPrefix};
use crate::storage::Mapping;

/// A record handed out by the queue.
///
/// The payload is not copied out of the segment: it borrows the segment's memory mapping, which
/// stays valid while any record from it is alive (also after the segment is compacted away).
#[derive(Clone)]
pub struct Record {
    seq: u64,
    enqueued_us: u64,
    not_before_us: u64,
    ttl_us: u64,
    bytes: Mapping,
    payload: Range<usize>,
}

impl Record {
    pub(crate) fn new(
        seq: u64,
        enqueued_us: u64,
        prefix: BodyPrefix,
        bytes: Mapping,
        payload: Range<usize>,
    ) -> Self {
        Record {
            seq,
            enqueued_us,
            not_before_us: prefix.not_before_us,
            ttl_us: prefix.ttl_us,
            bytes,
            payload,
        }
    }

    /// Lets go of the record's mapping, keeping what it says of the frame (its number, times
    /// and [`frame_len`](Record::frame_len)); its payload reads as empty from then on. For a
    /// record acknowledged beyond the head, which is tracked until the head passes it and
    /// never read again: otherwise each such record would keep its segment mapped.
    pub(crate) fn forget_bytes(&mut self) {
        static EMPTY: std::sync::OnceLock<Mapping> = std::sync::OnceLock::new();
        self.bytes = EMPTY
            .get_or_init(|| std::sync::Arc::new(Vec::<u8>::new()))
            .clone();
    }

    /// The length of the record's frame on disk (what it counts against `max_bytes`).
    pub(crate) fn frame_len(&self) -> u64 {
        let prefix = BodyPrefix {
            not_before_us: self.not_before_us,
            ttl_us: self.ttl_us,
        };
        frame::frame_len(frame::body_len(self.payload.len(), prefix)) as u64
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        (*self.bytes)
            .as_ref()
            .get(self.payload.clone())
            .unwrap_or(&[])
    }

    /// When the record was pushed, by the pushing machine's clock: its coarse clock (the latest
    /// kernel tick, up to 1–10 ms early) unless the queue was opened with
    /// [`Options::precise_timestamps`](crate::Options::precise_timestamps).
    pub fn enqueued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.enqueued_us)
    }

    /// When the record was pushed, in microseconds since the Unix epoch.
    pub fn enqueued_at_us(&self) -> u64 {
        self.enqueued_us
    }

    /// For a record pushed with [`Queue::push_delayed`](crate::Queue::push_delayed): the time before which it is not
    /// handed out.
    pub fn not_before(&self) -> Option<SystemTime> {
        (self.not_before_us != 0).then(|| UNIX_EPOCH + Duration::from_micros(self.not_before_us))
    }

    /// The not-before time in microseconds since the Unix epoch; 0 when the record has none.
    pub fn not_before_us(&self) -> u64 {
        self.not_before_us
    }

    /// For a record pushed with a TTL ([`Push::ttl`](crate::Push::ttl)): the time after which
    /// it is never handed out (its enqueue time plus the TTL).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at_us()
            .map(|expires_us| UNIX_EPOCH + Duration::from_micros(expires_us))
    }

    /// The expiry time in microseconds since the Unix epoch; `None` when the record has no TTL.
    #[inline]
    pub fn expires_at_us(&self) -> Option<u64> {
        frame::expires_at_us(self.enqueued_us, self.ttl_us)
    }

    /// The time to live the record was pushed with ([`Push::ttl`](crate::Push::ttl)), if any.
    pub fn ttl(&self) -> Option<Duration> {
        (self.ttl_us != 0).then(|| Duration::from_micros(self.ttl_us))
    }

    /// True when the record carries a TTL.
    #[inline]
    pub(crate) fn has_ttl(&self) -> bool {
        self.ttl_us != 0
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("seq", &self.seq)
            .field("enqueued_us", &self.enqueued_us)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}
