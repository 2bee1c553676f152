//! `recv_async` works with any executor: here, a ten-line one that parks the thread.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::files_held_under;

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

/// Polls `future` once (with a waker that does nothing): a receive with nothing to receive
/// registers its waker and starts the threads that will wake it.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    struct Nothing;
    impl Wake for Nothing {
        fn wake(self: Arc<Self>) {}
    }
    let waker = Waker::from(Arc::new(Nothing));
    std::pin::pin!(future).poll(&mut Context::from_waker(&waker))
}

#[test]
fn a_handle_has_let_go_of_the_queue_files_when_its_close_returns() {
    // A handle's own threads (a shared handle's solo thread, the bridge that wakes its async
    // receivers on other processes' pushes, the timer of a delayed record) sleep holding the
    // control file's mapping, or take the handle for a moment: close waits for them.
    for exclusive in [true, false] {
        for closing in ["close", "drop"] {
            let dir = tempfile::tempdir().unwrap();
            let options = Options::default()
                .exclusive(exclusive)
                .sync(SyncPolicy::Never);
            let handles: Vec<Queue> = (0..if exclusive { 1 } else { 2 })
                .map(|_| Queue::open(dir.path(), options.clone()).unwrap())
                .collect();
            handles[0]
                .push_delayed(b"later", Duration::from_secs(3600))
                .unwrap();
            for queue in &handles {
                assert!(poll_once(queue.recv_async()).is_pending());
            }
            for queue in handles {
                match closing {
                    "close" => queue.close().unwrap(),
                    _ => drop(queue),
                }
            }
            let held = files_held_under(dir.path());
            assert!(
                held.is_empty(),
                "exclusive {exclusive}, {closing}: still held: {held:#?}"
            );
        }
    }
}
