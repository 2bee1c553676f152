//! `spool demo`: producers and workers sharing one queue under `SyncPolicy::Always`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use diskspool::{Options, Queue, SyncPolicy};

/// Options of `spool demo`.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  spool demo --records 20000 --producers 4 --workers 2")]
pub struct DemoArgs {
    /// Records to push in total.
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Producer threads.
    #[arg(long, default_value_t = 4)]
    producers: u64,
    /// Worker (consumer) threads.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 100)]
    payload_size: usize,
    /// Records per push_batch call (1: one push per record).
    #[arg(long, default_value_t = 1)]
    batch: u64,
}

pub fn run(args: &DemoArgs) -> Result<ExitCode, diskspool::Error> {
    let dir = tempfile::tempdir().map_err(|source| diskspool::Error::Io {
        operation: "create temporary directory",
        path: std::env::temp_dir(),
        source,
    })?;
    let options = Options::default()
        .segment_size(4 << 20)
        .sync(SyncPolicy::Always);
    let queue = Arc::new(Queue::open(dir.path(), options)?);
    println!(
        "demo queue in {} (SyncPolicy::Always, 4 MiB segments)",
        dir.path().display()
    );
    println!(
        "{} producers push {} records of {} B (batches of {}); {} workers pop them",
        args.producers, args.records, args.payload_size, args.batch, args.workers
    );

    let producers = args.producers.max(1);
    let batch = args.batch.max(1);
    let popped = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let push_elapsed = std::thread::scope(|scope| -> Result<Duration, diskspool::Error> {
        let mut producer_handles = Vec::new();
        for producer in 0..producers {
            let queue = queue.clone();
            let count = args.records / producers + u64::from(producer < args.records % producers);
            let payload = vec![b'a' + (producer % 26) as u8; args.payload_size];
            producer_handles.push(scope.spawn(move || -> Result<(), diskspool::Error> {
                let mut left = count;
                while left > 0 {
                    let take = left.min(batch);
                    queue.push_batch((0..take).map(|_| &payload[..]))?;
                    left -= take;
                }
                Ok(())
            }));
        }
        let mut worker_handles = Vec::new();
        for _ in 0..args.workers.max(1) {
            let queue = queue.clone();
            let popped = popped.clone();
            let total = args.records;
            worker_handles.push(scope.spawn(move || -> Result<(), diskspool::Error> {
                while popped.load(Ordering::Acquire) < total {
                    let records = queue.pop_batch(64)?;
                    if records.is_empty() {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    popped.fetch_add(records.len() as u64, Ordering::AcqRel);
                }
                Ok(())
            }));
        }
        for handle in producer_handles {
            handle.join().unwrap_or(Ok(()))?;
        }
        let push_elapsed = started.elapsed();
        for handle in worker_handles {
            handle.join().unwrap_or(Ok(()))?;
        }
        Ok(push_elapsed)
    })?;
    let total_elapsed = started.elapsed();
    let stats = queue.stats()?;

    let rate = |count: u64, elapsed: Duration| count as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "pushed {} records in {:.2?}: {:.0} records/s ({:.1} MB/s of payload)",
        args.records,
        push_elapsed,
        rate(args.records, push_elapsed),
        rate(args.records, push_elapsed) * args.payload_size as f64 / 1e6
    );
    println!(
        "popped {} records; all done in {:.2?}: {:.0} records/s end to end",
        popped.load(Ordering::Acquire),
        total_elapsed,
        rate(args.records, total_elapsed)
    );
    println!(
        "stats: len {}, head_seq {}, next_seq {}, segments {}, live {} B, on disk {} B",
        stats.len,
        stats.head_seq,
        stats.next_seq,
        stats.segments,
        stats.live_bytes,
        stats.disk_bytes
    );
    Ok(ExitCode::SUCCESS)
}
