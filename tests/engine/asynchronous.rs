//! `recv_async` works with any executor: here, a ten-line one that parks the thread.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use diskspool::{Options, Queue, SyncPolicy};

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `future` to completion, parking the thread between wake-ups (never spinning: a
/// missing wake-up would hang the test, which the harness then reports).
fn block_on<F: Future>(future: F) -> (F::Output, usize) {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    let mut polls = 0;
    loop {
        polls += 1;
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return (output, polls);
        }
        std::thread::park();
    }
}

#[test]
fn recv_async_wakes_when_a_record_is_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let queue =
        Arc::new(Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap());
    let producer = {
        let queue = queue.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            queue.push(b"hello").unwrap();
        })
    };
    let (delivery, polls) = block_on(queue.recv_async());
    let delivery = delivery.unwrap();
    assert_eq!(delivery.payload(), b"hello");
    assert!(
        polls < 100,
        "woken by the push, not by spinning ({polls} polls)"
    );
    delivery.ack().unwrap();
    producer.join().unwrap();
}

#[test]
fn recv_async_wakes_when_a_lease_runs_out() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .sync(SyncPolicy::Never)
        .lease(Duration::from_millis(150));
    let queue = Queue::open(dir.path(), options).unwrap();
    queue.push(b"job").unwrap();
    let started = Instant::now();
    let first = queue.try_recv().unwrap().unwrap();
    // Nothing pushes or releases: only the timer can wake the task.
    let (again, polls) = block_on(queue.recv_async());
    let again = again.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!((again.seq(), again.deliveries()), (0, 2));
    assert!(polls < 100, "{polls} polls");
    again.ack().unwrap();
    drop(first);
}

#[test]
fn recv_async_wakes_when_another_handle_of_a_shared_queue_pushes() {
    let dir = tempfile::tempdir().unwrap();
    let shared = Options::default().exclusive(false).sync(SyncPolicy::Never);
    let consumer = Queue::open(dir.path(), shared.clone()).unwrap();
    // Its own process state knows nothing of the other handle's push: only the control file's
    // arrivals word, through the bridge thread, wakes the future.
    let producer = Queue::open(dir.path(), shared).unwrap();
    std::thread::scope(|scope| {
        let pusher = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            producer.push(b"from elsewhere").unwrap();
        });
        let (delivery, polls) = block_on(consumer.recv_async());
        let delivery = delivery.unwrap();
        assert_eq!(delivery.payload(), b"from elsewhere");
        assert!(polls < 100, "woken, not spinning ({polls} polls)");
        delivery.ack().unwrap();
        pusher.join().unwrap();
    });
}
