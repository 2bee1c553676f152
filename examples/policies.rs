//! Figures of the queue policies (issue 13), for docs/PERFORMANCE.md:
//!
//! `cargo run --release --example policies [records]`
//!
//! - the cost of a 100 B push (`Never`) on an unbounded queue, a bounded one (the bound never
//!   reached), and with a deduplication id (every id new);
//! - the memory (resident set) and the deduplication log of 1,000,000 ids in the window;
//! - a `DropOldest` queue bounded at 1 MiB in steady state: disk use while 10 times the bound is
//!   pushed.
//!
//! Run one part under callgrind with `policies [records] push|bounded|dedup`.

use std::time::{Duration, Instant};

use diskspool::{Options, Overflow, Push, Queue, SyncPolicy};

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

/// Resident memory in bytes (Linux: /proc/self/statm).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
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
        "{label:<36} {:>8.0} ns/push wall {:>8.0} ns/push cpu",
        wall * 1e9 / count as f64,
        cpu * 1e9 / count as f64
    );
}

fn open(dir: &std::path::Path, options: Options) -> diskspool::Result<Queue> {
    Queue::open(dir, options.sync(SyncPolicy::Never))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records: u64 = std::env::args()
        .nth(1)
        .and_then(|text| text.parse().ok())
        .unwrap_or(1_000_000);
    let only = std::env::args().nth(2);
    let wants = |part: &str| only.as_deref().is_none_or(|only| only == part);
    let payload = [7u8; 100];
    let ids: Vec<[u8; 16]> = (0..records)
        .map(|index| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&index.to_le_bytes());
            id[8..].copy_from_slice(b"order-id");
            id
        })
        .collect();
    if wants("push") {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let queue = open(dir.path(), Options::default())?;
        measure("push 100 B, unbounded", records, || {
            for _ in 0..records {
                queue.push(&payload)?;
            }
            Ok(())
        });
    }
    if wants("bounded") {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let queue = open(dir.path(), Options::default().max_records(u64::MAX))?;
        measure("push 100 B, bounded (not reached)", records, || {
            for _ in 0..records {
                queue.push(&payload)?;
            }
            Ok(())
        });
    }
    if wants("dedup") {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let options = Options::default().dedup_window(Duration::from_secs(3600));
        let queue = open(dir.path(), options)?;
        let before = resident_bytes();
        measure("push_with 100 B + 16 B dedup id", records, || {
            for id in &ids {
                queue.push_with(&payload, Push::new().dedup_id(id))?;
            }
            Ok(())
        });
        let grown = resident_bytes().saturating_sub(before);
        let log = std::fs::metadata(dir.path().join("dedup"))?.len();
        println!(
            "{records} ids in the window: resident memory +{:.1} MiB ({:.0} B/id), dedup log {:.1} MiB ({:.0} B/id)",
            grown as f64 / 1048576.0,
            grown as f64 / records as f64,
            log as f64 / 1048576.0,
            log as f64 / records as f64
        );
        measure("push_with, the id seen (deduplicated)", records, || {
            for id in &ids {
                queue.push_with(&payload, Push::new().dedup_id(id))?;
            }
            Ok(())
        });
    }
    if wants("drop") {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR"))?;
        let bound = 1u64 << 20;
        let options = Options::default()
            .segment_size(64 << 10)
            .max_bytes(bound)
            .overflow(Overflow::DropOldest);
        let queue = open(dir.path(), options)?;
        let per_bound = bound / 128;
        let total = 10 * per_bound;
        let (mut low, mut high) = (u64::MAX, 0);
        let mut live_high = 0;
        let start = Instant::now();
        for index in 0..total {
            queue.push(&payload)?;
            if index >= per_bound && index % 256 == 0 {
                let stats = queue.stats()?;
                low = low.min(stats.disk_bytes);
                high = high.max(stats.disk_bytes);
                live_high = live_high.max(stats.live_bytes);
            }
        }
        println!(
            "DropOldest, max_bytes 1 MiB, 64 KiB segments, {total} pushes of 100 B (10x the bound): \
             disk {:.2}..{:.2} MiB after the first bound, live at most {:.2} MiB, discarded {}, {:.0} ns/push",
            low as f64 / 1048576.0,
            high as f64 / 1048576.0,
            live_high as f64 / 1048576.0,
            queue.stats()?.totals.map_or(0, |totals| totals.discarded_total()),
            start.elapsed().as_secs_f64() * 1e9 / total as f64
        );
    }
    Ok(())
}
