//! What every part of a live queue shares: its directory, options and storage, the poison flag
//! that stops all changes after a failure that left the disk's state unknown, and the wake-ups of
//! waiting consumers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::arrivals::Arrivals;
use crate::engine::limits::Limits;
use crate::engine::sync::lock;
use crate::error::{Error, Result};
use crate::options::Options;
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
    /// The bound and its usage, for a bounded queue only.
    pub(crate) limits: Option<Limits>,
    /// What the policies did since open (named as issue 14's metrics will name them).
    pub(crate) counters: PolicyCounters,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
}

impl Env {
    pub(crate) fn new(dir: PathBuf, options: Options, storage: Arc<dyn Storage>) -> Self {
        let limits = Limits::new(&options);
        let max_age_us = options
            .max_age
            .map(|age| u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
        Env {
            dir,
            options,
            storage,
            arrivals: Arrivals::default(),
            limits,
            max_age_us,
            counters: PolicyCounters::default(),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
        }
    }

    #[inline]
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(self.poisoned_error());
        }
        Ok(())
    }

    #[cold]
    fn poisoned_error(&self) -> Error {
        let cause = lock(&self.poison_cause).clone().unwrap_or_default();
        Error::Poisoned { cause }
    }

    /// Records a failure after which the state on disk is unknown; later changes are refused.
    pub(crate) fn poison(&self, error: Error) -> Error {
        let mut cause = lock(&self.poison_cause);
        if cause.is_none() {
            *cause = Some(error.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
        error
    }
}

/// Counts of what the queue's policies did since it was opened.
#[derive(Default)]
pub(crate) struct PolicyCounters {
    /// Records older than `max_age` (or their ttl), discarded at the head.
    pub(crate) expired_total: AtomicU64,
    /// Records discarded by `Overflow::DropOldest`.
    pub(crate) discarded_total: AtomicU64,
    /// Pushes that wrote nothing because their dedup id was in the window.
    pub(crate) deduplicated_total: AtomicU64,
}

impl PolicyCounters {
    pub(crate) fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }
}
