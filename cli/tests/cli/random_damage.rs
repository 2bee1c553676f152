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

/// The seeds to run: `DISKSPOOL_DAMAGE_SEEDS=N` runs more (30 by default),
/// `DISKSPOOL_DAMAGE_SEED=N` replays one.
fn damage_seeds() -> std::ops::Range<u64> {
    match std::env::var("DISKSPOOL_DAMAGE_SEED") {
        Ok(seed) => {
            let seed: u64 = seed.parse().unwrap();
            seed..seed + 1
        }
        Err(_) => 0..std::env::var("DISKSPOOL_DAMAGE_SEEDS").map_or(30, |n| n.parse().unwrap()),
    }
}

/// A queue of random length, partly popped, with one or two random damages.
struct Damaged {
    _temp: tempfile::TempDir,
    dir: std::path::PathBuf,
    count: u64,
    popped: u64,
    /// What was done to it.
    done: Vec<String>,
    /// A line that describes it, for failure messages.
    context: String,
}

/// The damaged queue `seed` says.
fn damaged_queue(seed: u64) -> Damaged {
    let mut rng = Rng(seed);
    let count = 40 + rng.below(80);
    let popped = rng.below(count);
    let (temp, dir) = queue_with(count, popped);
    let done: Vec<String> = (0..1 + rng.below(2))
        .map(|_| damage(&dir, &mut rng))
        .collect();
    let context = format!("seed {seed}: {count} records, {popped} popped, {done:?}");
    Damaged {
        _temp: temp,
        dir,
        count,
        popped,
        done,
        context,
    }
}

#[test]
fn repair_mends_any_random_damage() {
    for seed in damage_seeds() {
        let damaged = damaged_queue(seed);
        let (dir, count, popped, done) = (
            damaged.dir.clone(),
            damaged.count,
            damaged.popped,
            &damaged.done,
        );
        let context = damaged.context.as_str();
        // Shown when the test fails: the last line names the failing seed.
        eprintln!("{context}");

        for command in ["stat", "dump", "inspect", "verify"] {
            let code = spool(&[command, arg(&dir)]).output().unwrap().status.code();
            assert!(
                matches!(code, Some(0 | 1 | 5)),
                "{command}: {code:?}; {context}"
            );
        }
        let output = spool(&["repair", "--json", arg(&dir)]).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "repair: {}{}; {context}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let repair: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let (report, code) = verify_json(&dir);
        assert_eq!(code, 0, "verify after repair: {report}; {context}");

        // Exactly the records from the head up to the first one cut. The head may have gone
        // back (a damaged head slot falls back to the older one; repair may reset it), so
        // consumed records may come again, but no record that was not consumed is skipped.
        let stat = spool(&["stat", "--json", arg(&dir)]).output().unwrap();
        let stat: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
        let start = stat["head_seq"].as_u64().unwrap();
        match repair["gone_end_seq"].as_u64() {
            // Records destroyed with a deleted segment: the head moved just past them.
            Some(gone_end) => assert_eq!(start, gone_end, "{repair}; {context}"),
            // Every record left before the cut was consumed: the head moved to where the log
            // continues, past every number a cut record carried (never reused).
            None if start > popped => {
                let cut_first = repair["cut_first_seq"].as_u64();
                assert!(
                    cut_first.is_some_and(|first| first <= popped),
                    "head {start} skips records; {repair}; {context}"
                );
                assert_eq!(
                    repair["cut_end_seq"].as_u64(),
                    Some(start),
                    "{repair}; {context}"
                );
            }
            None => assert!(
                start <= popped,
                "head {start} skips records; {repair}; {context}"
            ),
        }
        // Without a cut, the log ends where the files end: a deleted last segment, or one cut
        // at a record boundary, leaves no trace to find.
        let on_disk = stat["next_seq"].as_u64().unwrap();
        let end = repair["cut_first_seq"]
            .as_u64()
            .unwrap_or(on_disk)
            .max(start);
        let untraceable = done
            .iter()
            .any(|what| what.starts_with("delete") || what.starts_with("truncate"));
        if repair["cut_first_seq"].is_null() && !untraceable {
            assert_eq!(
                on_disk, count,
                "nothing cut, nothing lost; {repair}; {context}"
            );
        }
        assert_records(&drain(&dir), start..end);
    }
}

/// Copies the flat queue directory `from` into a new temporary directory.
fn copy_queue(from: &Path) -> (tempfile::TempDir, std::path::PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let to = temp.path().join("q");
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    (temp, to)
}

/// The same random damage, opened by the library with `OnDamage::Quarantine` instead of
/// repaired by `spool repair`: the open succeeds, serves what the repaired queue serves (from
/// the same or an older head: a damaged head slot that `open` falls back from is not repaired),
/// each record with its own bytes, reports the cut `repair` reports, and a second open finds
/// nothing to do.
#[test]
fn an_open_with_quarantine_serves_what_repair_serves() {
    use diskspool::{OnDamage, Queue};
    for seed in damage_seeds() {
        let damaged = damaged_queue(seed);
        let (dir, count) = (damaged.dir.clone(), damaged.count);
        let context = damaged.context.as_str();
        eprintln!("{context}");
        let (_copy, healed) = copy_queue(&dir);

        let output = spool(&["repair", "--json", arg(&dir)]).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "repair; {context}");
        let repair: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let repaired = drain(&dir);

        let quarantining = || options().on_damage(OnDamage::Quarantine);
        let queue = Queue::open(&healed, quarantining())
            .unwrap_or_else(|error| panic!("open refused: {error}; {context}"));
        let report = queue.recovery_report().clone();
        if report.repaired() {
            let cut = repair["cut_first_seq"]
                .as_u64()
                .zip(repair["cut_end_seq"].as_u64())
                .map(|(first, end)| first..end);
            assert_eq!(report.cut_seqs, cut, "{report:#?}; {repair}; {context}");
            assert_eq!(
                Some(report.quarantined_records),
                repair["quarantined_records"].as_u64(),
                "{context}"
            );
        }
        let mut served = Vec::new();
        while let Some(record) = queue.pop().unwrap() {
            served.push((record.seq(), record.payload().to_vec()));
        }
        drop(queue);
        for (seq, payload) in &served {
            assert!(*seq < count, "record {seq} invented; {context}");
            assert_eq!(payload, &payload_for(*seq), "record {seq}; {context}");
        }
        let seqs: Vec<u64> = served.iter().map(|(seq, _)| *seq).collect();
        let expected: Vec<u64> = repaired.iter().map(|(seq, _)| *seq).collect();
        assert!(
            seqs.ends_with(&expected) && seqs.windows(2).all(|pair| pair[1] == pair[0] + 1),
            "served {seqs:?}, repair serves {expected:?}; {report:#?}; {context}"
        );
        let queue = Queue::open(&healed, quarantining()).unwrap();
        assert!(
            !queue.recovery_report().repaired(),
            "second open: {:#?}; {context}",
            queue.recovery_report()
        );
    }
}
