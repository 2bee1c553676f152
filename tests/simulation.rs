//! Deterministic simulation: one seed drives a random workload (pushes, batches, pops, peeks,
//! compactions, syncs, reopens, process crashes, power losses, injected I/O faults, every sync
//! policy) against a model of the durability contract on the simulated filesystem. A failure
//! prints the seed and the shortest operation list found that still fails.
//!
//! - `cargo test --test simulation` runs 500 seeds.
//! - `DISKSPOOL_SIM_SEEDS=100000 cargo test --release --test simulation -- --ignored` runs many
//!   (`DISKSPOOL_SIM_START` picks the first seed).
//! - `DISKSPOOL_SIM_SEED=1234 cargo test --test simulation one_seed -- --ignored` replays one.

use diskspool::fuzzing::{ops_from_seed, run_ops, Op};

/// Operations per seed: enough for several segments, crashes and faults per run.
const OPS_PER_SEED: usize = 150;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

/// Removes operations while the run still fails (delta debugging: chunks, then single ops).
fn shrink(mut ops: Vec<Op>) -> (Vec<Op>, String) {
    let mut failure = run_ops(&ops).err().unwrap_or_default();
    let mut chunk = ops.len() / 2;
    while chunk >= 1 {
        let mut start = 0;
        let mut removed_any = false;
        while start < ops.len() {
            let end = (start + chunk).min(ops.len());
            let mut candidate = ops.clone();
            candidate.drain(start..end);
            match run_ops(&candidate) {
                Err(error) => {
                    ops = candidate;
                    failure = error;
                    removed_any = true;
                }
                Ok(()) => start += chunk,
            }
        }
        if !removed_any {
            chunk /= 2;
        }
    }
    (ops, failure)
}

fn check_seed(seed: u64) {
    let ops = ops_from_seed(seed, OPS_PER_SEED);
    if let Err(first) = run_ops(&ops) {
        let (shortest, failure) = shrink(ops);
        panic!(
            "simulation seed {seed} failed: {first}\n\nshortest failing run ({} operations): \
             {failure}\n{shortest:#?}\n\nreplay: DISKSPOOL_SIM_SEED={seed} cargo test --test \
             simulation one_seed -- --ignored",
            shortest.len()
        );
    }
}

fn run_seeds(first: u64, count: u64) {
    let started = std::time::Instant::now();
    for seed in first..first + count {
        check_seed(seed);
    }
    eprintln!(
        "simulation: seeds {first}..{} passed in {:.1} s",
        first + count,
        started.elapsed().as_secs_f64()
    );
}

/// The contract holds for 500 seeded workloads.
#[test]
fn contract_holds_for_500_seeds() {
    run_seeds(0, 500);
}

/// The long run: `DISKSPOOL_SIM_SEEDS` seeds (default 100,000) from `DISKSPOOL_SIM_START`.
#[test]
#[ignore = "long; run with --ignored, see docs/TESTING.md"]
fn contract_holds_for_many_seeds() {
    let first = env_u64("DISKSPOOL_SIM_START").unwrap_or(1_000_000);
    let count = env_u64("DISKSPOOL_SIM_SEEDS").unwrap_or(100_000);
    run_seeds(first, count);
}

/// Replays the seed in `DISKSPOOL_SIM_SEED`.
#[test]
#[ignore = "replays DISKSPOOL_SIM_SEED"]
fn one_seed() {
    let seed = env_u64("DISKSPOOL_SIM_SEED").unwrap_or(0);
    check_seed(seed);
}

/// The shrinker keeps a failing run failing: a workload the model rejects stays rejected.
#[test]
fn workloads_replay_identically() {
    let ops = ops_from_seed(42, OPS_PER_SEED);
    assert_eq!(ops, ops_from_seed(42, OPS_PER_SEED));
    assert_eq!(run_ops(&ops), run_ops(&ops));
}
