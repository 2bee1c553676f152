//! The timer thread of async receives: wakes waiting tasks when the next delay or lease runs
//! out, so that a future waiting on a delayed record resolves without a push.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use crate::engine::clock::now_micros;
use crate::engine::sync::lock;

/// Wakes waiting tasks when the next delay or lease runs out.
#[derive(Default)]
pub(crate) struct Timer {
    state: Arc<(Mutex<TimerState>, Condvar)>,
    /// The thread, once started: joined by [`stop`](Timer::stop), so that it holds its queue
    /// (which `notify` takes for a moment) no longer than the queue's close.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct TimerState {
    due_us: Option<u64>,
    started: bool,
    stopped: bool,
}

impl Timer {
    /// Makes sure waiting tasks are woken at `due_us` (microseconds since the Unix epoch).
    /// `notify` wakes the waiting tasks; it returns false once the queue is gone, which ends the
    /// thread. The thread is started on the first call, with that call's `notify`.
    pub(crate) fn wake_at(&self, due_us: u64, notify: impl Fn() -> bool + Send + 'static) {
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
            let state = self.state.clone();
            let spawned = std::thread::Builder::new()
                .name("diskspool-timer".into())
                .spawn(move || run(&state, &notify));
            // Without the thread, tasks still wake on pushes and releases.
            timer.started = spawned.is_ok();
            if let Ok(thread) = spawned {
                *lock(&self.thread) = Some(thread);
            }
        }
    }

    /// Ends the timer thread and waits for it (unless called on it).
    pub(crate) fn stop(&self) {
        let (state, changed) = &*self.state;
        lock(state).stopped = true;
        changed.notify_all();
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                // A panic in the thread has nothing left to report: the queue is closing.
                let _ = thread.join();
            }
        }
    }
}

fn run(state: &(Mutex<TimerState>, Condvar), notify: &dyn Fn() -> bool) {
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
                    if !notify() {
                        return;
                    }
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
