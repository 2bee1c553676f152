//! `Queue::recv_async`: a receive future that needs no particular async runtime.
//!
//! A pending future registers its waker with the queue; pushes and releases wake it. Delays and
//! lease expiries have no event of their own, so one timer thread per queue (started on first
//! need) sleeps until the next one runs out and wakes the waiting tasks then.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use crate::engine::delivery::{try_recv_batch, Delivery};
use crate::engine::shared::Shared;
use crate::error::Result;

/// The future returned by [`Queue::recv_async`].
#[must_use = "futures do nothing unless polled"]
pub struct Recv<'a> {
    shared: &'a Arc<Shared>,
}

impl<'a> Recv<'a> {
    pub(crate) fn new(shared: &'a Arc<Shared>) -> Self {
        Recv { shared }
    }
}

impl Future for Recv<'_> {
    type Output = Result<Delivery>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.shared;
        let arrivals = &shared.env.arrivals;
        let seen = arrivals.epoch();
        match try_recv_batch(shared, 1) {
            Ok(mut deliveries) => {
                if let Some(delivery) = deliveries.pop() {
                    return Poll::Ready(Ok(delivery));
                }
            }
            Err(error) => return Poll::Ready(Err(error)),
        }
        shared.ensure_arrivals_bridge();
        arrivals.register(cx.waker(), seen);
        if let Some(due_us) = shared.consumer_if_held().and_then(|c| c.next_due_us()) {
            let weak: Weak<Shared> = Arc::downgrade(shared);
            shared.timer.wake_at(due_us, move || match weak.upgrade() {
                Some(shared) => {
                    shared.env.arrivals.notify();
                    true
                }
                None => false,
            });
        }
        Poll::Pending
    }
}
