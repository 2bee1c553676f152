//! Group commit under `SyncPolicy::Always`: records/s with 1, 4, 16 and 64 producer threads.
//!
//! `cargo run --release --example always_scaling [seconds] [threads...]`

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use diskspool::{Options, Queue, SyncPolicy};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(1.0);
    let payload = [7u8; 100];
    let mut counts: Vec<usize> = std::env::args()
        .skip(2)
        .filter_map(|text| text.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![1, 4, 16, 64];
    }
    for threads in counts {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always))?;
        let stop = AtomicBool::new(false);
        let pushed = AtomicU64::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut count = 0;
                    while !stop.load(Ordering::Relaxed) {
                        if queue.push(&payload).is_err() {
                            break;
                        }
                        count += 1;
                    }
                    pushed.fetch_add(count, Ordering::Relaxed);
                });
            }
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
        });
        let rate = pushed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        println!("{threads:>3} producers: {rate:>10.0} records/s");
    }
    Ok(())
}
