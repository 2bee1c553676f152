//! The background thread of [`SyncPolicy::Interval`](crate::SyncPolicy::Interval): syncs the
//! queue every interval until the queue closes.

use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::engine::shared::Shared;
use crate::engine::sync::lock;

/// The background thread of [`SyncPolicy::Interval`].
pub(crate) struct Flusher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(shared: &Arc<Shared>, interval: Duration) -> std::io::Result<Self> {
        // A failure poisons the queue; the next call on it reports the error.
        Self::every(shared, interval, "diskspool-flusher", |shared| {
            let _ = shared.sync_all();
        })
    }

    /// Runs `work` on the queue every `interval` from a background thread, until stopped or the
    /// queue is gone (also the metrics reporter's thread, feature `metrics`).
    pub(crate) fn every(
        shared: &Arc<Shared>,
        interval: Duration,
        name: &str,
        work: fn(&Shared),
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let weak: Weak<Shared> = Arc::downgrade(shared);
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || loop {
                let (stopped, wake) = &*signal;
                let guard = lock(stopped);
                let (guard, _) = wake
                    .wait_timeout_while(guard, interval, |stopped| !*stopped)
                    .unwrap_or_else(PoisonError::into_inner);
                if *guard {
                    return;
                }
                drop(guard);
                let Some(shared) = weak.upgrade() else { return };
                work(&shared);
            })?;
        Ok(Flusher {
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn stop(mut self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
