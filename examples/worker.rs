//! A pool of workers on a durable job queue: retries with a delay, workers that crash, and a
//! dead-letter queue for the jobs that keep failing.
//!
//! Run it with `cargo run --example worker`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diskspool::{DeadLetter, Delivery, Options, Queue, SyncPolicy};

const JOBS: u64 = 24;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let options = Options::default()
        .sync(SyncPolicy::Always)
        .lease(Duration::from_secs(5))
        .max_deliveries(3)
        .dead_letter_dir("jobs.dead");
    let queue = Arc::new(Queue::open(root.path().join("jobs"), options.clone())?);
    for job in 0..JOBS {
        queue.push(format!("resize image {job}").as_bytes())?;
    }
    println!(
        "pushed {JOBS} jobs into {}",
        root.path().join("jobs").display()
    );
    // Silence the default panic message: the crashes below are on purpose.
    std::panic::set_hook(Box::new(|_| {}));

    let done = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let (queue, done) = (queue.clone(), done.clone());
            scope.spawn(move || work(worker, &queue, &done));
        }
    });

    let stats = queue.stats()?;
    println!(
        "\n{} jobs done, {} left in the queue",
        done.load(Ordering::SeqCst),
        stats.len
    );
    drop(queue); // closes the dead-letter queue, which the job queue holds open
    let dead = Queue::open(root.path().join("jobs.dead"), options)?;
    while let Some(record) = dead.pop()? {
        if let Some(letter) = DeadLetter::decode(record.payload()) {
            println!(
                "dead letter: job {} ({:?}) after {} deliveries",
                letter.original_seq,
                String::from_utf8_lossy(letter.payload),
                letter.deliveries
            );
        }
    }
    Ok(())
}

/// Takes jobs until none is left for a while.
fn work(worker: u32, queue: &Queue, done: &AtomicU64) {
    loop {
        let delivery = match queue.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(delivery)) => delivery,
            Ok(None) => return,
            Err(error) => {
                eprintln!("worker {worker}: {error}");
                return;
            }
        };
        let (seq, attempt) = (delivery.seq(), delivery.deliveries());
        // A panic inside the job drops the delivery during unwinding, which releases it:
        // another worker gets the job again, with its delivery count one higher.
        let outcome = catch_unwind(AssertUnwindSafe(|| run_job(worker, delivery)));
        match outcome {
            Ok(true) => {
                done.fetch_add(1, Ordering::SeqCst);
            }
            Ok(false) => {}
            Err(_) => println!("worker {worker}: job {seq} attempt {attempt}: worker crashed"),
        }
    }
}

/// Does the job; returns true when it is done.
fn run_job(worker: u32, delivery: Delivery) -> bool {
    let (seq, attempt) = (delivery.seq(), delivery.deliveries());
    std::thread::sleep(Duration::from_millis(5)); // the work
    if seq % 11 == 7 {
        panic!("job {seq} crashes its worker every time");
    }
    if seq % 4 == 1 && attempt == 1 {
        println!("worker {worker}: job {seq} attempt {attempt}: transient error, retry in 50 ms");
        if let Err(error) = delivery.retry_after(Duration::from_millis(50)) {
            eprintln!("worker {worker}: {error}");
        }
        return false;
    }
    match delivery.ack() {
        Ok(()) => {
            println!("worker {worker}: job {seq} attempt {attempt}: done");
            true
        }
        Err(error) => {
            eprintln!("worker {worker}: job {seq}: {error}");
            false
        }
    }
}
