//! A record handed out under a lease ([`Queue::recv`](crate::Queue::recv)): settling it acks,
//! releases or extends it through the queue's consumer.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::engine::reader::Leased;
use crate::engine::record::Record;
use crate::engine::shared::Shared;
use crate::error::{Error, Result};

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
    pub(crate) fn new(shared: &Arc<Shared>, leased: Leased) -> Self {
        Delivery {
            shared: Arc::downgrade(shared),
            record: leased.record,
            deliveries: leased.deliveries,
            token: leased.token,
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
                // Releasing never fails for a reason the caller could act on (a shared queue
                // writes it for the other processes: if that fails, the lease runs out).
                let _ = shared.release(self.record.seq(), self.token, None);
            }
        }
    }
}

/// Hands out up to `max` records of `shared` under a lease, without waiting.
pub(crate) fn try_recv_batch(shared: &Arc<Shared>, max: usize) -> Result<Vec<Delivery>> {
    Ok(shared
        .recv_batch(max)?
        .into_iter()
        .map(|leased| Delivery::new(shared, leased))
        .collect())
}
