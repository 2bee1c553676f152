//! Several processes on one shared queue (`Options::exclusive(false)`): child processes (this
//! test binary re-executed, entry point `multiprocess::child`) push or pop; the parent kills
//! them, at a named crash point (`DISKSPOOL_KILL_AT`, feature `testkit`) or with SIGKILL at a
//! random moment, and checks the contract while its own handles, opened before the kills, go
//! on without reopening.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};

use crate::util::{payload_for, seed_from, Rng};

const MODE_ENV: &str = "DISKSPOOL_MP_CHILD";
const DIR_ENV: &str = "DISKSPOOL_MP_DIR";
const SYNC_ENV: &str = "DISKSPOOL_MP_SYNC";

fn options(sync: &str) -> Options {
    let policy = match sync {
        "always" => SyncPolicy::Always,
        _ => SyncPolicy::Never,
    };
    // Small segments: kills land in rolls too.
    Options::default()
        .exclusive(false)
        .sync(policy)
        .segment_size(16 << 10)
}

/// A record's payload: its producer's id and running number, then bytes derived from them, so
/// that a consumer checks every byte and the order per producer.
fn payload(producer: u64, number: u64) -> Vec<u8> {
    let mut bytes = format!("{producer}:{number}:").into_bytes();
    bytes.extend(payload_for(producer * 1_000_003 + number));
    bytes
}

/// The producer and number a payload carries, after checking its bytes.
fn parse(bytes: &[u8]) -> (u64, u64) {
    let text = String::from_utf8_lossy(bytes);
    let mut parts = text.splitn(3, ':');
    let producer: u64 = parts.next().unwrap().parse().unwrap();
    let number: u64 = parts.next().unwrap().parse().unwrap();
    assert_eq!(bytes, payload(producer, number), "a record's bytes changed");
    (producer, number)
}

/// Not a test: the child process of the tests below. It does nothing unless started by them.
#[test]
#[ignore = "entry point of the child processes that the multi-process tests start"]
fn child() {
    use std::io::Write;
    let (Ok(mode), Ok(dir), Ok(sync)) = (
        std::env::var(MODE_ENV),
        std::env::var(DIR_ENV),
        std::env::var(SYNC_ENV),
    ) else {
        return;
    };
    let queue = Queue::open(&dir, options(&sync)).unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let producer = u64::from(std::process::id());
    match mode.as_str() {
        // "p <seq> <producer> <number>" once the push returned.
        "push" => {
            for number in 0.. {
                let seq = queue.push(&payload(producer, number)).unwrap();
                writeln!(out, "p {seq} {producer} {number}").unwrap();
                out.flush().unwrap();
            }
        }
        // "g <seq> <producer> <number>" once the pop returned the record.
        "pop" => loop {
            if let Some(record) = queue.pop_timeout(Duration::from_millis(50)).unwrap() {
                let (producer, number) = parse(record.payload());
                writeln!(out, "g {} {producer} {number}", record.seq()).unwrap();
                out.flush().unwrap();
            }
        },
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn(mode: &str, dir: &Path, sync: &str, kill_at: Option<&str>) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "multiprocess::child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_ENV, mode)
        .env(DIR_ENV, dir)
        .env(SYNC_ENV, sync)
        .env_remove("DISKSPOOL_KILL_AT")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(point) = kill_at {
        command.env("DISKSPOOL_KILL_AT", point);
    }
    command.spawn().unwrap()
}

/// The complete lines a child printed (a line a kill cut short has no newline: dropped).
fn lines_of(child: &mut Child) -> Vec<String> {
    let mut text = String::new();
    let _ = child.stdout.take().unwrap().read_to_string(&mut text);
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines().map(str::to_owned).collect()
}

/// `(seq, producer, number)` of the lines tagged `tag`.
fn entries(lines: &[String], tag: &str) -> Vec<(u64, u64, u64)> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(tag))
        .map(|rest| {
            let fields: Vec<u64> = rest
                .split(' ')
                .map(|field| field.parse().unwrap())
                .collect();
            (fields[0], fields[1], fields[2])
        })
        .collect()
}

/// A producer process dies at a crash point of the shared push path; the handles opened
/// before go on without reopening: what it committed is there, what it was writing is cut,
/// never read, and the numbering goes on without a gap.
#[test]
fn a_producer_killed_at_each_crash_point_leaves_a_log_the_others_go_on_with() {
    for (point, policies) in [
        ("shared.dirty:40", &["never", "always"][..]),
        ("shared.written:40", &["never", "always"]),
        // Its first push: the committed tail is still the survivor's, whose mapping of the
        // tail the repair cuts.
        ("shared.written:1", &["never", "always"]),
        ("roll.created:1", &["never", "always"]),
        ("roll.created:2", &["never", "always"]),
        // Under Always: the producer dies as the leader of a sync, its batch committed.
        ("shared.sync:40", &["always"]),
    ] {
        for &sync in policies {
            let dir = tempfile::tempdir().unwrap();
            let survivor = Queue::open(dir.path(), options(sync)).unwrap();
            let consumer = Queue::open(dir.path(), options(sync)).unwrap();
            // The survivor writes first: it maps the active segment's tail, which the repair
            // after the kill cuts (it must not store into it afterwards: a SIGBUS).
            let survivor_id = 1u64;
            let mut expected: Vec<(u64, u64, u64)> = Vec::new();
            for number in 0..3 {
                let seq = survivor.push(&payload(survivor_id, number)).unwrap();
                expected.push((seq, survivor_id, number));
            }
            let mut child = spawn("push", dir.path(), sync, Some(point));
            let status = child.wait().unwrap();
            assert!(
                !status.success(),
                "{point}: the child died at its crash point"
            );
            let pushed = entries(&lines_of(&mut child), "p ");
            let first_push = point.ends_with(":1") && point.starts_with("shared.");
            assert_eq!(
                pushed.is_empty(),
                first_push,
                "{point}: the child returned every push before the one it died in"
            );
            // The survivor pushes on; then every record is popped once, in order.
            expected.extend(&pushed);
            if point.starts_with("shared.sync") {
                // Its last push was committed before it died leading the sync: the survivor's
                // sync covers it, and it is read once, after the others (it never returned).
                let &(seq, producer, number) = pushed.last().unwrap();
                expected.push((seq + 1, producer, number + 1));
            }
            for number in 3..203 {
                let seq = survivor.push(&payload(survivor_id, number)).unwrap();
                expected.push((seq, survivor_id, number));
            }
            let mut popped = Vec::new();
            while let Some(record) = consumer.pop().unwrap() {
                let (producer, number) = parse(record.payload());
                popped.push((record.seq(), producer, number));
            }
            assert_eq!(
                popped, expected,
                "{point} {sync}: exactly the returned pushes, in order"
            );
            let seqs: Vec<u64> = popped.iter().map(|entry| entry.0).collect();
            assert_eq!(
                seqs,
                (0..seqs.len() as u64).collect::<Vec<_>>(),
                "{point}: no gap"
            );
            drop((survivor, consumer));
            // With every handle gone, an exclusive open recovers the same queue.
            let alone = Queue::open(dir.path(), Options::default().segment_size(16 << 10)).unwrap();
            assert_eq!(alone.len(), 0, "{point}");
            assert_eq!(alone.push(b"next").unwrap(), seqs.len() as u64, "{point}");
        }
    }
}

fn seed() -> u64 {
    seed_from("DISKSPOOL_MP_SEED")
}

/// Two producer processes and one consumer process, killed with SIGKILL at random moments
/// and restarted, `kills` times; then the parent drains what is left. Every returned push is
/// popped exactly once (or, for the one record a killed consumer may have popped without
/// printing, at most once), never twice, in FIFO order per producer.
fn kill_soak(kills: u64, sync: &str) {
    let seed = seed();
    eprintln!("multi-process kill soak: DISKSPOOL_MP_SEED={seed} ({sync})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut children: Vec<(String, Child)> = ["push", "push", "pop"]
        .iter()
        .map(|mode| (mode.to_string(), spawn(mode, dir.path(), sync, None)))
        .collect();
    let mut lines = Vec::new();
    let mut consumer_kills = 0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_micros(2_000 + rng.below(30_000)));
        let victim = rng.below(children.len() as u64) as usize;
        let (mode, mut child) = children.swap_remove(victim);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        lines.extend(lines_of(&mut child));
        if mode == "pop" {
            consumer_kills += 1;
        }
        children.push((mode.clone(), spawn(&mode, dir.path(), sync, None)));
    }
    for (mode, mut child) in children {
        child.kill().unwrap();
        child.wait().unwrap();
        lines.extend(lines_of(&mut child));
        if mode == "pop" {
            consumer_kills += 1;
        }
    }
    let pushed = entries(&lines, "p ");
    let popped = entries(&lines, "g ");
    let drain = Queue::open(dir.path(), options(sync)).unwrap();
    let mut left = Vec::new();
    while let Some(record) = drain.pop().unwrap() {
        let (producer, number) = parse(record.payload());
        left.push((record.seq(), producer, number));
    }
    let popped_seqs: BTreeSet<u64> = popped.iter().map(|entry| entry.0).collect();
    assert_eq!(
        popped_seqs.len(),
        popped.len(),
        "seed {seed}: a record popped twice"
    );
    let mut seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for &(seq, producer, number) in popped.iter().chain(&left) {
        assert!(
            seen.insert(seq, (producer, number)).is_none(),
            "seed {seed}: record {seq} both popped and left"
        );
    }
    let mut missing = 0;
    for &(seq, producer, number) in &pushed {
        match seen.get(&seq) {
            Some(&found) => assert_eq!(found, (producer, number), "seed {seed}: record {seq}"),
            None => missing += 1,
        }
    }
    assert!(
        missing <= consumer_kills,
        "seed {seed}: {missing} returned pushes lost, more than the {consumer_kills} records \
         killed consumers may have popped without printing"
    );
    // FIFO per producer: in sequence order, each producer's numbers rise.
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for (&seq, &(producer, number)) in &seen {
        if let Some(&before) = last.get(&producer) {
            assert!(number > before, "seed {seed}: record {seq} out of order");
        }
        last.insert(producer, number);
    }
    assert!(
        pushed.len() > 100,
        "seed {seed}: the producers made progress"
    );
}

#[test]
fn producers_and_a_consumer_killed_at_random_keep_the_contract() {
    kill_soak(20, "never");
    kill_soak(10, "always");
}

/// The long run: `DISKSPOOL_MP_KILLS` kills (default 1,000) under `DISKSPOOL_MP_POLICY`
/// (`never`, the default, or `always`), for the docs' figures.
#[test]
#[ignore = "long soak: cargo test --release --test engine long_multiprocess_kill_soak -- --ignored"]
fn long_multiprocess_kill_soak() {
    let kills = std::env::var("DISKSPOOL_MP_KILLS")
        .ok()
        .and_then(|kills| kills.parse().ok())
        .unwrap_or(1_000);
    let policy = std::env::var("DISKSPOOL_MP_POLICY").unwrap_or_else(|_| "never".into());
    kill_soak(kills, &policy);
}
