//! `Queue::recv_async`: a receive future that needs no particular async runtime.
//!
//! A pending future registers its waker with the queue; pushes and releases wake it. Delays and
//! lease expiries have no event of their own, so one timer thread per queue (started on first
//! need) sleeps until the next one runs out and wakes the waiting tasks then.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::engine::jobs::Delivery;
use crate::engine::queue::{now_micros, Queue, Shared};
use crate::engine::sync::lock;
use crate::error::Result;

/// The future returned by [`Queue::recv_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    queue: &'a Queue,
}

impl<'a> Recv<'a> {
    pub(crate) fn new(queue: &'a Queue) -> Self {
        Recv { queue }
    }
}

impl Future for Recv<'_> {
    type Output = Result<Delivery>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.queue.shared();
        let seen = shared.arrivals.epoch();
        match self.queue.try_recv() {
            Ok(Some(delivery)) => return Poll::Ready(Ok(delivery)),
            Err(error) => return Poll::Ready(Err(error)),
            Ok(None) => {}
        }
        shared.arrivals.register(cx.waker(), seen);
        let next_due_us = lock(&shared.reader).jobs.next_due_us();
        if let Some(due_us) = next_due_us {
            shared.timer.wake_at(shared, due_us);
        }
        Poll::Pending
    }
}

/// Wakes waiting tasks when the next delay or lease runs out.
#[derive(Default)]
pub(crate) struct Timer {
    state: Arc<(Mutex<TimerState>, Condvar)>,
}

#[derive(Default)]
struct TimerState {
    due_us: Option<u64>,
    started: bool,
    stopped: bool,
}

impl Timer {
    /// Makes sure waiting tasks are woken at `due_us` (microseconds since the Unix epoch).
    fn wake_at(&self, shared: &Arc<Shared>, due_us: u64) {
        let (state, changed) = &*self.state;
        let mut timer = lock(state);
        if timer.stopped {
            return;
        }
        if timer.due_us.is_none_or(|current| due_us < current) {
            timer.due_us = Some(due_us);
            changed.notify_all();
        }
        if !timer.started {
            let weak = Arc::downgrade(shared);
            let state = self.state.clone();
            let spawned = std::thread::Builder::new()
                .name("diskspool-timer".into())
                .spawn(move || run(&state, &weak));
            // Without the thread, tasks still wake on pushes and releases.
            timer.started = spawned.is_ok();
        }
    }

    /// Ends the timer thread.
    pub(crate) fn stop(&self) {
        let (state, changed) = &*self.state;
        lock(state).stopped = true;
        changed.notify_all();
    }
}

fn run(state: &(Mutex<TimerState>, Condvar), shared: &Weak<Shared>) {
    let (state, changed) = state;
    let mut timer = lock(state);
    loop {
        if timer.stopped {
            return;
        }
        match timer.due_us {
            None => {
                timer = changed.wait(timer).unwrap_or_else(PoisonError::into_inner);
            }
            Some(due_us) => {
                let now_us = now_micros();
                if now_us >= due_us {
                    timer.due_us = None;
                    drop(timer);
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    shared.arrivals.notify();
                    drop(shared);
                    timer = lock(state);
                } else {
                    let wait = Duration::from_micros(due_us - now_us);
                    timer = changed
                        .wait_timeout(timer, wait)
                        .map(|(timer, _)| timer)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
            }
        }
    }
}
