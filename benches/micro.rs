//! Criterion microbenchmarks of the hot paths: `cargo bench --bench micro`.
//!
//! The comparison with the raw disk and the peers lives in `benches/compare.rs`.

// Benchmark setup unwraps: a failure aborts the run with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use diskspool::format::frame;
use diskspool::{Options, Queue, SyncPolicy};

fn queue(policy: SyncPolicy) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temporary directory");
    let queue = Queue::open(dir.path(), Options::default().sync(policy)).expect("open queue");
    (dir, queue)
}

fn frames(c: &mut Criterion) {
    let payload = vec![7u8; 100];
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode 100 B", |b| {
        b.iter(|| {
            out.clear();
            frame::encode(&mut out, 42, 0, black_box(&payload), false, 0);
        })
    });
    out.clear();
    frame::encode(&mut out, 42, 0, &payload, false, 0);
    group.bench_function("decode 100 B", |b| {
        b.iter(|| frame::decode(black_box(&out), 42, frame::FrameRules::CURRENT))
    });
    group.finish();
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for size in [100usize, 1024] {
        let payload = vec![7u8; size];
        let (_dir, never) = queue(SyncPolicy::Never);
        group.bench_function(format!("push {size} B Never"), |b| {
            b.iter(|| never.push(black_box(&payload)))
        });
        // Pop what the push benchmark left, refilling in batches outside the timing. The setup
        // runs before every iteration (`PerIteration`): with batched setups the queue would run
        // dry inside a batch and empty pops would be timed.
        group.bench_function(format!("pop {size} B"), |b| {
            b.iter_batched(
                || {
                    if never.is_empty() {
                        let batch: Vec<&[u8]> = (0..1024).map(|_| payload.as_slice()).collect();
                        never.push_batch(&batch).expect("refill");
                    }
                },
                |()| never.pop(),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();

    let mut group = c.benchmark_group("batch64");
    group.throughput(Throughput::Elements(64));
    let payload = vec![7u8; 100];
    let batch: Vec<&[u8]> = (0..64).map(|_| payload.as_slice()).collect();
    let (_dir, never) = queue(SyncPolicy::Never);
    group.bench_function("push_batch 64 x 100 B Never", |b| {
        b.iter(|| never.push_batch(black_box(&batch)))
    });
    group.bench_function("pop_batch 64 x 100 B", |b| {
        b.iter_batched(
            || {
                if never.len() < 64 {
                    for _ in 0..16 {
                        never.push_batch(&batch).expect("refill");
                    }
                }
            },
            |()| never.pop_batch(64),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("always");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    let (_dir, always) = queue(SyncPolicy::Always);
    group.bench_function("push 100 B Always", |b| {
        b.iter(|| always.push(black_box(&payload)))
    });
    group.finish();
}

criterion_group!(benches, frames, push_pop);
criterion_main!(benches);
