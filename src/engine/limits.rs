//! The queue's bound ([`Options::max_records`], [`Options::max_bytes`]): how many records and
//! bytes are not yet consumed, kept as two counters that pushes raise (under the writer lock)
//! and consumers lower, and the wake-up of pushes that wait for room (`Overflow::Block`).
//! A queue shared by several processes keeps them in the control file instead, as totals
//! pushed and consumed ([`SharedUsage`]): every handle checks the same usage.
//!
//! Only a bounded queue has one: an unbounded queue's push pays a single predictable branch.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::engine::coordination::SharedUsage;
use crate::engine::sync::lock;
use crate::error::{Error, Result};
use crate::options::{Options, Overflow};

/// The bound and the usage it is checked against.
pub(crate) struct Limits {
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    pub(crate) overflow: Overflow,
    /// Records not yet consumed (handed out ones included).
    records: AtomicU64,
    /// Bytes of their frames.
    bytes: AtomicU64,
    /// Pushes waiting for room; consumers notify only when there are some.
    waiting: AtomicUsize,
    room: Mutex<()>,
    room_made: Condvar,
    /// A shared queue: the usage in the control file (the two counters above are unused).
    shared: Option<SharedUsage>,
}

/// How long a push waiting for room in a shared queue sleeps at most before it looks at the
/// usage again (a wake-up is never lost; this only bounds a wait across a missed one).
const SHARED_ROOM_SLICE: std::time::Duration = std::time::Duration::from_millis(100);

impl Limits {
    /// The limits of a queue opened with `options`; `None` when it is not bounded. `shared`:
    /// the usage in the control file of a queue shared by several processes.
    pub(crate) fn new(options: &Options, shared: Option<SharedUsage>) -> Option<Self> {
        options.is_bounded().then(|| Limits {
            max_records: options.max_records,
            max_bytes: options.max_bytes,
            overflow: options.overflow,
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            room: Mutex::new(()),
            room_made: Condvar::new(),
            shared,
        })
    }

    /// The usage in the control file, for a queue shared by several processes.
    pub(crate) fn shared(&self) -> Option<&SharedUsage> {
        self.shared.as_ref()
    }

    /// Sets the usage found at open (or after a purge). A shared queue's is set through
    /// [`shared`](Limits::shared) ([`SharedUsage::set_usage`]), which needs the tail it was
    /// counted up to.
    pub(crate) fn set_usage(&self, records: u64, bytes: u64) {
        if self.shared.is_some() {
            return;
        }
        self.records.store(records, Ordering::SeqCst);
        self.bytes.store(bytes, Ordering::SeqCst);
        self.notify();
    }

    /// Records and bytes not yet consumed.
    pub(crate) fn usage(&self) -> (u64, u64) {
        if let Some(shared) = &self.shared {
            return shared.usage();
        }
        (
            self.records.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }

    /// Whether a batch of `records` and `bytes` could never fit, however much is consumed.
    pub(crate) fn never_fits(&self, records: u64, bytes: u64) -> bool {
        self.max_records.is_some_and(|max| records > max)
            || self.max_bytes.is_some_and(|max| bytes > max)
    }

    /// The error for a batch that does not fit now.
    pub(crate) fn full(&self, records: u64, bytes: u64) -> Error {
        let (used_records, used_bytes) = self.usage();
        Error::Full {
            records: used_records,
            bytes: used_bytes,
            max_records: self.max_records,
            max_bytes: self.max_bytes,
            batch_records: records,
            batch_bytes: bytes,
        }
    }

    /// Fails with [`Error::Full`] if a batch does not fit now; takes nothing.
    pub(crate) fn check(&self, records: u64, bytes: u64) -> Result<()> {
        let (used_records, used_bytes) = self.usage();
        let over_records = self
            .max_records
            .is_some_and(|max| used_records.saturating_add(records) > max);
        let over_bytes = self
            .max_bytes
            .is_some_and(|max| used_bytes.saturating_add(bytes) > max);
        if over_records || over_bytes {
            return Err(self.full(records, bytes));
        }
        Ok(())
    }

    /// Counts a batch written whatever the bound (a fanout's copy rolled forward at open: the
    /// fanout was accepted, so its copies must all be written).
    pub(crate) fn add_past_bound(&self, records: u64, bytes: u64) {
        if self.shared.is_some() {
            // Counted by the commit of the tail (its pushed bytes and `next_seq`).
            return;
        }
        self.records.fetch_add(records, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
    }

    /// Takes room for a batch, or fails with [`Error::Full`]. Called with the writer lock held:
    /// only pushes raise the counters, so nothing else can take the room between the check and
    /// the addition (consumers only lower them). In a shared queue, called under the tail
    /// lock, whose commit counts the batch.
    pub(crate) fn reserve(&self, records: u64, bytes: u64) -> Result<()> {
        self.check(records, bytes)?;
        self.add_past_bound(records, bytes);
        Ok(())
    }

    /// How many of the oldest records must go before a batch of `records` fits the record
    /// bound (at least one when it does not fit the byte bound either).
    pub(crate) fn records_to_drop(&self, records: u64) -> u64 {
        let (used_records, _) = self.usage();
        let excess = self.max_records.map_or(0, |max| {
            used_records.saturating_add(records).saturating_sub(max)
        });
        excess.max(1)
    }

    /// Gives back the room a write that failed had taken (in a shared queue it took none:
    /// only its commit would have counted it).
    pub(crate) fn unreserve(&self, records: u64, bytes: u64) {
        if self.shared.is_none() {
            self.release(records, bytes);
        }
    }

    /// Gives back the room of consumed records. In a shared queue, under the consumer lock:
    /// counted as consumed in the control file, which wakes the pushes of every process that
    /// wait for room.
    pub(crate) fn release(&self, records: u64, bytes: u64) {
        if let Some(shared) = &self.shared {
            shared.consume(records, bytes);
            return;
        }
        let sub = |counter: &AtomicU64, amount: u64| {
            let _ = counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |value| {
                Some(value.saturating_sub(amount))
            });
        };
        sub(&self.records, records);
        sub(&self.bytes, bytes);
        self.notify();
    }

    fn notify(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _guard = lock(&self.room);
            self.room_made.notify_all();
        }
    }

    /// Waits until consumers give back room (or `deadline` passes: false). Wakes on any
    /// release; the caller retries its push.
    pub(crate) fn wait_for_room(&self, before: (u64, u64), deadline: Option<Instant>) -> bool {
        if let Some(shared) = &self.shared {
            return wait_for_shared_room(shared, before, deadline);
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock(&self.room);
        let woken = loop {
            // Checked under the mutex that `notify` takes: a release after this check wakes us.
            if self.usage() != before {
                break true;
            }
            match deadline {
                None => {
                    guard = self
                        .room_made
                        .wait(guard)
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        break false;
                    }
                    guard = self
                        .room_made
                        .wait_timeout(guard, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        };
        drop(guard);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        woken
    }
}

/// [`Limits::wait_for_room`] in a shared queue: sleeps on the control file's room word, which a
/// consumer of any process bumps when it gives room back, until the usage moved from `before`.
fn wait_for_shared_room(
    shared: &SharedUsage,
    before: (u64, u64),
    deadline: Option<Instant>,
) -> bool {
    loop {
        // Read before the usage: a release after the usage was read moves it, so the sleep
        // below returns at once.
        let seen = shared.room();
        if shared.usage() != before {
            return true;
        }
        let slice = match deadline {
            None => SHARED_ROOM_SLICE,
            Some(deadline) => {
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                (deadline - now).min(SHARED_ROOM_SLICE)
            }
        };
        shared.wait_for_room(seen, slice);
    }
}
