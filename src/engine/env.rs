//! What every part of a live queue shares: its directory, options and storage, the poison flag
//! that stops all changes after a failure that left the disk's state unknown, and the wake-ups of
//! waiting consumers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::arrivals::Arrivals;
use crate::engine::coordination::Coordination;
use crate::engine::counters::Counters;
use crate::engine::limits::Limits;
use crate::engine::sync::lock;
#[cfg(feature = "metrics")]
use crate::engine::telemetry::Telemetry;
use crate::error::{Error, Result};
use crate::options::Options;
use crate::stats::DiscardReason;
use crate::storage::Storage;

/// The queue's fixed surroundings and its health, passed to the writer, the reader and the
/// compactor. Only the poison flag and the arrivals change after open.
pub(crate) struct Env {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) arrivals: Arrivals,
    /// `Options::max_age` in microseconds, if set.
    pub(crate) max_age_us: Option<u64>,
    /// Set once a record with a TTL was pushed or read since open: from then on a full queue
    /// looks for expired records at its head before it refuses, drops or waits (as with a
    /// `max_age`).
    ttl_seen: AtomicBool,
    /// The bound and its usage, for a bounded queue only.
    pub(crate) limits: Option<Limits>,
    /// What happened since open, beyond the push and pop paths (see `counters`).
    pub(crate) counters: Counters,
    /// For a queue shared by several processes (`Options::exclusive(false)`): this handle's
    /// part in it. `None` for an exclusive queue.
    pub(crate) coordination: Option<Coordination>,
    /// The queue's metrics handles (feature `metrics`).
    #[cfg(feature = "metrics")]
    pub(crate) telemetry: Telemetry,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    /// The fork count when this handle was opened, and the process that opened it (see
    /// `forks`).
    fork_generation: u64,
    opened_by: u32,
}

impl Env {
    pub(crate) fn new(
        dir: PathBuf,
        options: Options,
        storage: Arc<dyn Storage>,
        coordination: Option<Coordination>,
    ) -> Self {
        let limits = Limits::new(
            &options,
            coordination.as_ref().map(Coordination::shared_usage),
        );
        let max_age_us = options
            .max_age
            .map(|age| u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
        #[cfg(feature = "metrics")]
        let telemetry = Telemetry::register(&options.name_for(&dir));
        Env {
            #[cfg(feature = "metrics")]
            telemetry,
            dir,
            options,
            storage,
            arrivals: Arrivals::default(),
            limits,
            max_age_us,
            ttl_seen: AtomicBool::new(false),
            counters: Counters::default(),
            coordination,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            fork_generation: crate::storage::forks::generation(),
            opened_by: std::process::id(),
        }
    }

    /// Notes that a record with a TTL was pushed or read (see `ttl_seen`).
    #[inline]
    pub(crate) fn saw_ttl(&self) {
        if !self.ttl_seen.load(Ordering::Relaxed) {
            self.ttl_seen.store(true, Ordering::Relaxed);
        }
    }

    /// Whether expired records may sit at the head: the queue has a `max_age`, or a record with
    /// a TTL was pushed or read since open.
    pub(crate) fn may_hold_expiring(&self) -> bool {
        self.max_age_us.is_some() || self.ttl_seen.load(Ordering::Relaxed)
    }

    /// Fails once a change failed in a way that leaves the disk unknown (see [`poison`]
    /// (Self::poison)), and in a child forked after the open (see [`check_forked`]
    /// (Self::check_forked)).
    #[inline]
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        // One branch on the hot paths (a second one kept `check_batch` from being inlined).
        if self.poisoned.load(Ordering::Acquire) | self.is_forked() {
            return Err(self.refusal());
        }
        Ok(())
    }

    #[cold]
    fn refusal(&self) -> Error {
        // Forked first: the cause's lock may be held for good in a forked child.
        match self.is_forked() {
            true => self.forked_error(),
            false => self.poisoned_error(),
        }
    }

    /// Fails with `Error::Forked` in a child process forked after this handle was opened:
    /// first in every call that takes a lock (one the parent's threads held at the fork stays
    /// held in the child).
    #[inline(always)]
    pub(crate) fn check_forked(&self) -> Result<()> {
        if self.is_forked() {
            return Err(self.forked_error());
        }
        Ok(())
    }

    /// Whether this process is a child forked after the handle was opened.
    #[inline(always)]
    pub(crate) fn is_forked(&self) -> bool {
        crate::storage::forks::forked_since(self.fork_generation)
    }

    #[cold]
    fn forked_error(&self) -> Error {
        Error::Forked {
            dir: self.dir.clone(),
            opened_by: self.opened_by,
        }
    }

    #[cold]
    fn poisoned_error(&self) -> Error {
        let cause = lock(&self.poison_cause).clone().unwrap_or_default();
        Error::Poisoned { cause }
    }

    /// `count` records were discarded for `reason` (queue policies: overflow, purge): counted,
    /// and a `tracing` event (feature `tracing`).
    pub(crate) fn discarded(&self, reason: DiscardReason, count: u64) {
        self.counters.discarded(reason, count);
        #[cfg(feature = "tracing")]
        crate::engine::events::discarded(&self.options.name_for(&self.dir), reason, count);
    }

    /// `count` records expired before delivery (queue policies): counted, and a `tracing` event
    /// (feature `tracing`).
    pub(crate) fn expired(&self, count: u64) {
        self.counters.expired(count);
        #[cfg(feature = "tracing")]
        crate::engine::events::expired(&self.options.name_for(&self.dir), count);
    }

    /// Records a failure after which the state on disk is unknown; later changes are refused.
    pub(crate) fn poison(&self, error: Error) -> Error {
        let mut cause = lock(&self.poison_cause);
        if cause.is_none() {
            *cause = Some(error.to_string());
            #[cfg(feature = "tracing")]
            crate::engine::events::poisoned(&self.options.name_for(&self.dir), &error);
        }
        self.poisoned.store(true, Ordering::Release);
        error
    }
}
