//! Jobs: at-least-once delivery with leases, acknowledgements, retries and dead letters.
//!
//! Records between the head and the reader's frontier that have been handed out (or are
//! delayed, or acknowledged out of order) live in a bounded in-memory table. What must survive a
//! crash (delivery counts, out-of-order acks, retry times) goes to the ack log; the head moves
//! over the acknowledged prefix. Leases themselves are not persisted: after a restart every
//! unacknowledged record is available again (the workers holding them are gone too).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::queue::{Record, Shared};
use crate::engine::segment::Segment;
use crate::error::{Error, Result};
use crate::format::acklog::{AckEntry, JobHistory};

/// At most this many records are tracked beyond the head (handed out, delayed, or acknowledged
/// out of order). When the table is full, receives wait until the head moves.
pub const IN_FLIGHT_MAX: usize = 1 << 16;

/// Where a tracked record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobState {
    /// Available now.
    Ready,
    /// Available at `due_us` (a delay or a retry).
    Waiting { due_us: u64 },
    /// Handed out; available again at `due_us` unless acknowledged.
    Leased { due_us: u64, token: u64 },
    /// Done; removed once the head passes it.
    Acked,
    /// Being moved to the dead-letter queue.
    DeadLettering,
}

/// A record tracked beyond the head.
pub(crate) struct Job {
    pub(crate) record: Record,
    /// The segment and offset of the record's frame: the head index's hint when it is the head.
    pub(crate) segment: Arc<Segment>,
    pub(crate) offset: u64,
    pub(crate) deliveries: u32,
    pub(crate) state: JobState,
}

/// The table of tracked records.
#[derive(Default)]
pub(crate) struct Jobs {
    pub(crate) entries: BTreeMap<u64, Job>,
    ready: BTreeSet<u64>,
    timers: BTreeSet<(u64, u64)>,
    pub(crate) history: JobHistory,
    next_token: u64,
}

impl Jobs {
    pub(crate) fn with_history(history: JobHistory) -> Self {
        Jobs {
            history,
            ..Jobs::default()
        }
    }

    /// True when nothing beyond the head is tracked or remembered: plain FIFO.
    pub(crate) fn is_idle(&self) -> bool {
        self.entries.is_empty() && self.history.is_empty()
    }

    pub(crate) fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Starts tracking a record.
    pub(crate) fn insert(&mut self, seq: u64, job: Job) {
        let state = job.state;
        self.entries.insert(seq, job);
        self.enter(seq, state);
    }

    /// Moves a tracked record to `state`, keeping the ready set and the timers in step.
    pub(crate) fn set_state(&mut self, seq: u64, state: JobState) {
        let Some(job) = self.entries.get_mut(&seq) else {
            return;
        };
        let old = std::mem::replace(&mut job.state, state);
        match old {
            JobState::Ready => {
                self.ready.remove(&seq);
            }
            JobState::Waiting { due_us } | JobState::Leased { due_us, .. } => {
                self.timers.remove(&(due_us, seq));
            }
            JobState::Acked | JobState::DeadLettering => {}
        }
        self.enter(seq, state);
    }

    fn enter(&mut self, seq: u64, state: JobState) {
        match state {
            JobState::Ready => {
                self.ready.insert(seq);
            }
            JobState::Waiting { due_us } | JobState::Leased { due_us, .. } => {
                self.timers.insert((due_us, seq));
            }
            JobState::Acked | JobState::DeadLettering => {}
        }
    }

    /// Makes every delay, retry and lease that ran out by `now_us` available.
    pub(crate) fn fire_timers(&mut self, now_us: u64) {
        while let Some(&(due_us, seq)) = self.timers.first() {
            if due_us > now_us {
                break;
            }
            self.set_state(seq, JobState::Ready);
        }
    }

    /// The oldest available record.
    pub(crate) fn first_ready(&self) -> Option<u64> {
        self.ready.first().copied()
    }

    /// When the next delay, retry or lease runs out.
    pub(crate) fn next_due_us(&self) -> Option<u64> {
        self.timers.first().map(|&(due_us, _)| due_us)
    }

    /// The oldest tracked record, which is the head when there is one.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.entries.keys().next().copied()
    }

    /// Drops the acknowledged prefix; returns true if anything was dropped.
    pub(crate) fn fold(&mut self) -> bool {
        let mut moved = false;
        while let Some(entry) = self.entries.first_entry() {
            if entry.get().state != JobState::Acked {
                break;
            }
            entry.remove();
            moved = true;
        }
        moved
    }

    /// Records acknowledged beyond the head, tracked or remembered.
    pub(crate) fn acked_beyond_head(&self, frontier: u64) -> u64 {
        let tracked = self
            .entries
            .values()
            .filter(|job| job.state == JobState::Acked)
            .count() as u64;
        tracked + self.history.acked_count_from(frontier)
    }

    /// Records handed out and not yet settled.
    pub(crate) fn leased(&self) -> u64 {
        self.entries
            .values()
            .filter(|job| matches!(job.state, JobState::Leased { .. }))
            .count() as u64
    }

    /// An upper bound of the entries a rewritten ack log needs.
    pub(crate) fn live_estimate(&self) -> usize {
        self.entries.len()
            + self.history.acked.len()
            + self.history.deliveries.len()
            + self.history.not_before.len()
    }

    /// The ack log entries that describe the tracked and remembered state.
    pub(crate) fn live_entries(&self) -> Vec<AckEntry> {
        let mut state = self.history.clone();
        for (&seq, job) in &self.entries {
            match job.state {
                JobState::Acked => state.apply(&AckEntry::Acked {
                    start: seq,
                    end: seq + 1,
                }),
                JobState::Waiting { due_us } if due_us > job.record.not_before_us() => {
                    state.apply(&AckEntry::NotBefore { seq, at_us: due_us });
                }
                _ => {}
            }
            if job.deliveries > 0 {
                state.apply(&AckEntry::Delivered {
                    seq,
                    deliveries: job.deliveries,
                });
            }
        }
        state.entries()
    }
}

/// A record handed out by [`Queue::recv`](crate::Queue::recv), leased to its receiver until it
/// is acknowledged, released, or its lease runs out.
///
/// Dropping a `Delivery` without settling it releases it at once, like [`Delivery::nack`].
/// A delivery does not keep its queue open: once the [`Queue`](crate::Queue) is dropped, settling
/// fails with [`Error::Closed`](crate::Error::Closed) and the record is delivered again after
/// the queue is reopened.
pub struct Delivery {
    shared: Weak<Shared>,
    record: Record,
    deliveries: u32,
    token: u64,
    settled: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("seq", &self.record.seq())
            .field("deliveries", &self.deliveries)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(shared: &Arc<Shared>, record: Record, deliveries: u32, token: u64) -> Self {
        Delivery {
            shared: Arc::downgrade(shared),
            record,
            deliveries,
            token,
            settled: false,
        }
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.record.seq()
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        self.record.payload()
    }

    /// The record itself.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// How many times this record has been handed out, this time included (across restarts).
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// The job is done: the record is never delivered again, also after any crash (under
    /// [`SyncPolicy::Always`](crate::SyncPolicy::Always) once this returns).
    pub fn ack(mut self) -> Result<()> {
        self.settled = true;
        self.queue()?.ack(self.record.seq())
    }

    /// Releases the record: it is available to the next receive at once.
    pub fn nack(mut self) -> Result<()> {
        self.settled = true;
        self.queue()?.release(self.record.seq(), self.token, None)
    }

    /// Releases the record, to be delivered again after `delay` (which survives a restart).
    pub fn retry_after(mut self, delay: Duration) -> Result<()> {
        self.settled = true;
        self.queue()?
            .release(self.record.seq(), self.token, Some(delay))
    }

    /// Moves the record to the dead-letter queue now (see
    /// [`Options::dead_letter_dir`](crate::Options::dead_letter_dir)), whatever its delivery
    /// count: for a job that can never succeed, such as a payload that does not decode. Fails
    /// with [`Error::LeaseExpired`] if the lease already ran out. If the move fails, the record
    /// stays in this queue and is delivered again.
    pub fn dead_letter(mut self) -> Result<()> {
        self.settled = true;
        self.queue()?.dead_letter(self.record.seq(), self.token)
    }

    fn queue(&self) -> Result<Arc<Shared>> {
        self.shared.upgrade().ok_or(Error::Closed {
            seq: self.record.seq(),
        })
    }

    /// Extends the lease to `lease` from now, for a long job. Fails with
    /// [`Error::LeaseExpired`] if the lease already ran out and the record may have been handed
    /// to someone else.
    pub fn extend(&self, lease: Duration) -> Result<()> {
        self.queue()?.extend(self.record.seq(), self.token, lease)
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(shared) = self.shared.upgrade() {
                // In-memory only: releasing never fails for a reason the caller could act on.
                let _ = shared.release(self.record.seq(), self.token, None);
            }
        }
    }
}

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
