//! Wall-clock and CPU time of the hot paths, for A/B comparisons of engine changes on a busy
//! machine (CPU time is less disturbed by other processes than wall time).
//!
//! `cargo run --release --example hot_paths [records] [sizes]`
//!
//! `sizes` is a comma-separated list of record sizes (default `100,65536`). With
//! `DISKSPOOL_SHARED=1` the queue is opened shared (`Options::exclusive(false)`): what a queue
//! that other processes could join costs one process alone (solo). With `DISKSPOOL_SHARED=2` a
//! second handle opens the queue too, so the first pushes and pops as a handle that shares it.

use std::time::Instant;

use diskspool::{Options, Queue, SyncPolicy};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the struct passed to it.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn measure(label: &str, count: u64, work: impl FnOnce() -> diskspool::Result<()>) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    if let Err(error) = work() {
        eprintln!("{label}: {error}");
        return;
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu;
    println!(
        "{label:<24} {:>8.0} ns/record wall {:>8.0} ns/record cpu",
        wall * 1e9 / count as f64,
        cpu * 1e9 / count as f64
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let sizes: Vec<usize> = std::env::args()
        .nth(2)
        .map(|list| {
            list.split(',')
                .filter_map(|size| size.parse().ok())
                .collect()
        })
        .unwrap_or_else(|| vec![100, 65536]);
    for size in sizes {
        let count = if size == 100 { records } else { records / 500 };
        let payload = vec![7u8; size];
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let shared = std::env::var_os("DISKSPOOL_SHARED").is_some();
        let options = Options::default()
            .sync(SyncPolicy::Never)
            .exclusive(!shared);
        let queue = Queue::open(dir.path(), options.clone())?;
        // A second handle ends the first one's solo: what a push and a pop cost a handle that
        // shares the queue with another.
        let _second = match std::env::var("DISKSPOOL_SHARED").as_deref() {
            Ok("2") => Some(Queue::open(dir.path(), options)?),
            _ => None,
        };
        measure(&format!("push {size} B"), count, || {
            for _ in 0..count {
                queue.push(&payload)?;
            }
            Ok(())
        });
        measure(&format!("pop {size} B"), count, || {
            for _ in 0..count {
                std::hint::black_box(queue.pop()?);
            }
            Ok(())
        });
    }
    Ok(())
}
