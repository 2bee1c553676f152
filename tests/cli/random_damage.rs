//! Random damage, replayable from its seed: whatever is done to the files, read-only commands
//! fail cleanly, `repair` leaves a queue that verifies clean, and the library then serves a
//! contiguous run of records, each with its own bytes.

use std::path::Path;

use crate::util::*;

/// A small deterministic generator (SplitMix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// Damages one file of the queue in one of several ways; returns what it did.
fn damage(dir: &Path, rng: &mut Rng) -> String {
    let mut files = segments(dir);
    if dir.join("head").exists() {
        files.push(dir.join("head"));
    }
    let file = files[rng.below(files.len() as u64) as usize].clone();
    let len = std::fs::metadata(&file).unwrap().len();
    let choice = if len == 0 { 4 } else { rng.below(5) };
    match choice {
        0 => {
            let offset = rng.below(len);
            flip_byte(&file, offset);
            format!("flip {} at {offset}", name(&file))
        }
        1 => {
            let cut = rng.below(len);
            truncate(&file, cut);
            format!("truncate {} to {cut}", name(&file))
        }
        2 => {
            let from = rng.below(len);
            zero_from(&file, from);
            format!("zero {} from {from}", name(&file))
        }
        3 => {
            std::fs::remove_file(&file).unwrap();
            format!("delete {}", name(&file))
        }
        _ => {
            std::fs::write(dir.join("stray"), b"junk").unwrap();
            String::from("stray file")
        }
    }
}

#[test]
fn repair_mends_any_random_damage() {
    // DISKSPOOL_DAMAGE_SEEDS=N runs more seeds; DISKSPOOL_DAMAGE_SEED=N replays one.
    let seeds = match std::env::var("DISKSPOOL_DAMAGE_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().unwrap();
            seed..seed + 1
        }
        Err(_) => 0..std::env::var("DISKSPOOL_DAMAGE_SEEDS").map_or(30, |n| n.parse().unwrap()),
    };
    for seed in seeds {
        let mut rng = Rng(seed);
        let count = 40 + rng.below(80);
        let popped = rng.below(count);
        let (_temp, dir) = queue_with(count, popped);
        let done: Vec<String> = (0..1 + rng.below(2))
            .map(|_| damage(&dir, &mut rng))
            .collect();
        let context = format!("seed {seed}: {count} records, {popped} popped, {done:?}");

        for command in ["stat", "dump", "inspect", "verify"] {
            let code = spool(&[command, arg(&dir)]).output().unwrap().status.code();
            assert!(
                matches!(code, Some(0 | 1 | 5)),
                "{command}: {code:?}; {context}"
            );
        }
        let output = spool(&["repair", arg(&dir)]).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "repair: {}{}; {context}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let (report, code) = verify_json(&dir);
        assert_eq!(code, 0, "verify after repair: {report}; {context}");

        let records = drain(&dir);
        for pair in records.windows(2) {
            assert_eq!(pair[1].0, pair[0].0 + 1, "contiguous; {context}");
        }
        for (seq, payload) in &records {
            assert_eq!(payload, &payload_for(*seq), "record {seq}; {context}");
        }
    }
}
