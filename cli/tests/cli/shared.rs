//! `spool` beside a live service that holds its queue shared (`Options::exclusive(false)`):
//! the service is a `Queue` open in this test process, the commands are child processes.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use diskspool::format::control::{CONSUMER_PID, CONTROL_VERSION, SLEEPERS};
use diskspool::format::layout::CONTROL_FILE_NAME;
use diskspool::{Options, Queue};
use predicates::prelude::*;

use crate::util::*;

/// The options of the live service: the fixtures' ones, shared.
fn shared() -> Options {
    options().exclusive(false)
}

/// A new queue held open shared, as a service would: (temp dir, queue dir, handle).
fn live_queue() -> (tempfile::TempDir, PathBuf, Queue) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let queue = Queue::open(&dir, shared()).unwrap();
    (temp, dir, queue)
}

/// Runs `spool ARGS` and returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let output = spool(args).output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// The fixture records `seqs` as `spool pop` prints them, one a line.
fn lines(seqs: std::ops::Range<u64>) -> Vec<u8> {
    seqs.flat_map(|seq| [payload_for(seq), b"\n".to_vec()].concat())
        .collect()
}

#[test]
fn records_pushed_by_spool_reach_the_live_consumer_in_order() {
    let (_temp, dir, service) = live_queue();
    service.push(b"from the service").unwrap();
    spool(&["push", arg(&dir), "one", "two"]).assert().code(0);
    spool(&["push", arg(&dir)])
        .write_stdin("three\nfour\n")
        .assert()
        .code(0);
    spool(&["push", "--raw", arg(&dir)])
        .write_stdin("five\nlines")
        .assert()
        .code(0);
    spool(&["push", "--sync", "interval", arg(&dir), "six"])
        .assert()
        .code(0);
    let expected: [&[u8]; 7] = [
        b"from the service",
        b"one",
        b"two",
        b"three",
        b"four",
        b"five\nlines",
        b"six",
    ];
    for (seq, payload) in expected.iter().enumerate() {
        let record = service.pop().unwrap().expect("a record pushed by spool");
        assert_eq!(record.seq(), seq as u64);
        assert_eq!(record.payload(), *payload);
    }
    assert!(service.pop().unwrap().is_none());
    // The service consumes: spool still pushes.
    spool(&["push", arg(&dir), "seven"]).assert().code(0);
    assert_eq!(service.pop().unwrap().unwrap().payload(), b"seven");
}

/// `--allow-network-filesystem` (a promise that every process runs on this machine) is taken
/// before or after the command, and the command still joins the live service (the refusal
/// itself, on a network filesystem, is the engine test
/// `a_shared_queue_on_a_network_filesystem_is_refused_unless_every_process_is_on_one_machine`).
#[test]
fn the_one_machine_promise_still_opens_beside_the_live_service() {
    let (_temp, dir, service) = live_queue();
    spool(&["--allow-network-filesystem", "push", arg(&dir), "promised"])
        .assert()
        .code(0);
    assert_eq!(service.pop().unwrap().unwrap().payload(), b"promised");
    service.push(b"back").unwrap();
    spool(&["pop", arg(&dir), "--allow-network-filesystem"])
        .assert()
        .code(0)
        .stdout("back\n");
}

#[test]
fn spool_pops_what_a_live_producer_pushed() {
    let (_temp, dir, service) = live_queue();
    for seq in 0..20 {
        assert_eq!(service.push(&payload_for(seq)).unwrap(), seq);
    }
    // The lock-free readers see what the live producer committed.
    let (code, out, _) = run(&["stat", "--json", arg(&dir)]);
    assert_eq!(code, 0);
    let stat: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stat["len"], 20);
    // The service is this test process; `stat` itself opens nothing.
    assert_eq!(stat["shared_by"], serde_json::json!([std::process::id()]));
    let (code, out, _) = run(&["stat", arg(&dir)]);
    assert_eq!(code, 0);
    let row = out.lines().find(|line| line.starts_with("shared by"));
    let named = format!(" process {}", std::process::id());
    assert!(row.is_some_and(|row| row.ends_with(&named)), "{out}");
    let (code, out, _) = run(&["peek", "-n", "2", arg(&dir)]);
    assert_eq!(code, 0);
    assert_eq!(out.as_bytes(), lines(0..2));
    // pop takes consumer turns beside the live producer.
    let (code, out, err) = run(&["pop", "-n", "3", arg(&dir)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.as_bytes(), lines(0..3));
    let (code, out, err) = run(&["pop", "--all", "--json", arg(&dir)]);
    assert_eq!(code, 0, "{err}");
    let seqs: Vec<u64> = out
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            record["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, (3..20).collect::<Vec<_>>());
    // Nothing is left for the service's first consumer turn: no record was popped twice.
    assert!(service.pop().unwrap().is_none());
    service.push(b"later").unwrap();
    assert_eq!(service.pop().unwrap().unwrap().seq(), 20);
}

/// The seqs `spool pop --json` printed, one record a line.
fn popped_seqs(out: &str) -> Vec<u64> {
    out.lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let seq = record["seq"].as_u64().unwrap();
            let payload = record["payload"].as_str().unwrap();
            assert_eq!(payload.as_bytes(), payload_for(seq), "record {seq}: {line}");
            seq
        })
        .collect()
}

#[test]
fn spool_pop_beside_a_live_consumer_takes_each_record_once() {
    let (_temp, dir, service) = live_queue();
    const RECORDS: u64 = 400;
    for seq in 0..RECORDS {
        assert_eq!(service.push(&payload_for(seq)).unwrap(), seq);
    }
    // The service pops in a thread while `spool pop` runs in other processes: consumer
    // turns, not a role, so neither is refused. They race for the records; each is taken
    // by exactly one of them.
    // To make sure that both take some, the service waits after each pop until a spool
    // process took a consumer turn (the control file names the last taker: none while the
    // service has the queue alone, solo, before the first spool process opens it), or spool
    // is done.
    let service = std::sync::Arc::new(service);
    let spool_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let popper = {
        let service = std::sync::Arc::clone(&service);
        let spool_done = std::sync::Arc::clone(&spool_done);
        let dir = dir.clone();
        std::thread::spawn(move || {
            let mut seqs = Vec::new();
            while let Some(record) = service.pop().unwrap() {
                assert_eq!(record.payload(), payload_for(record.seq()));
                seqs.push(record.seq());
                while [0, std::process::id()].contains(&control_word(&dir, CONSUMER_PID))
                    && !spool_done.load(std::sync::atomic::Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            seqs
        })
    };
    let mut by_spool = Vec::new();
    loop {
        let (code, out, err) = run(&["pop", "-n", "7", "--json", arg(&dir)]);
        assert_eq!(code, 0, "{err}");
        let seqs = popped_seqs(&out);
        if seqs.is_empty() {
            break;
        }
        // One spool pop's records leave in queue order.
        assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "{seqs:?}");
        by_spool.extend(seqs);
    }
    spool_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let by_service = popper.join().unwrap();
    // The service pops again only after a spool turn, which pops while records are left.
    assert!(!by_spool.is_empty(), "spool popped some");
    assert!(
        by_service.windows(2).all(|pair| pair[0] < pair[1]),
        "the service's pops leave in queue order"
    );
    let mut all: Vec<u64> = by_spool.iter().chain(&by_service).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..RECORDS).collect::<Vec<_>>(),
        "every record popped by exactly one of them (spool {}, service {})",
        by_spool.len(),
        by_service.len()
    );
    assert_eq!(service.len(), 0);
    // `spool pop --wait` beside the consumer: returns what the service pushed.
    service.push(b"waited for").unwrap();
    spool(&["pop", "--wait", "60", arg(&dir)])
        .assert()
        .code(0)
        .stdout("waited for\n");
    assert!(service.pop().unwrap().is_none(), "popped once, by spool");
    // `spool purge --yes` and `spool compact` beside it: the service, which consumed in the
    // meantime, finds the queue as they left it.
    for seq in RECORDS + 1..RECORDS + 11 {
        assert_eq!(service.push(&payload_for(seq)).unwrap(), seq);
    }
    assert_eq!(service.pop().unwrap().unwrap().seq(), RECORDS + 1);
    spool(&["purge", "--yes", arg(&dir)])
        .assert()
        .code(0)
        .stdout("purged 9 record(s)\n");
    assert_eq!(service.len(), 0, "the service sees the purge");
    assert!(
        service.pop().unwrap().is_none(),
        "nothing purged comes back"
    );
    let (code, out, err) = run(&["compact", arg(&dir)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed "), "{out}");
    assert_eq!(service.push(b"after").unwrap(), RECORDS + 11);
    let record = service.pop().unwrap().unwrap();
    assert_eq!(
        (record.seq(), record.payload()),
        (RECORDS + 11, &b"after"[..])
    );
    // The last consumer turn was the service's: the control file names it.
    assert_eq!(control_word(&dir, CONSUMER_PID), std::process::id());
}

#[test]
fn purge_and_compact_run_beside_a_live_producer() {
    let (_temp, dir, service) = live_queue();
    for seq in 0..200 {
        service.push(&payload_for(seq)).unwrap();
    }
    {
        // Another consumer, gone again: its consumed segments stay until compacted.
        let consumer = Queue::open(&dir, shared()).unwrap();
        assert_eq!(consumer.pop_batch(150).unwrap().len(), 150);
    }
    let segments_before = segments(&dir).len();
    let (code, out, err) = run(&["compact", arg(&dir)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("removed "), "{out}");
    assert!(segments(&dir).len() < segments_before, "{out}");
    spool(&["purge", "--yes", arg(&dir)])
        .assert()
        .code(0)
        .stdout("purged 50 record(s)\n");
    assert_eq!(service.push(b"after the purge").unwrap(), 200);
    assert_eq!(
        service.pop().unwrap().unwrap().payload(),
        b"after the purge"
    );
}

#[test]
fn commands_that_need_the_queue_alone_exit_4_beside_a_shared_handle() {
    let (_temp, dir, service) = live_queue();
    service.push(b"only").unwrap();
    for args in [
        vec!["repair", arg(&dir)],
        vec!["repair", "--dry-run", arg(&dir)],
        vec!["config", "--max-records", "5", arg(&dir)],
        vec!["quarantine", "--restore", arg(&dir)],
        vec!["push", "--max-records", "5", arg(&dir), "x"],
        vec!["push", "--max-age", "1h", arg(&dir), "x"],
        vec!["push", "--segment-size", "8192", arg(&dir), "x"],
    ] {
        let (code, out, err) = run(&args);
        assert_eq!(code, 4, "spool {args:?}: {out}{err}");
        assert!(err.contains("locked"), "spool {args:?}: {err}");
        // The service is this test process: the message names it.
        let holder = format!("shared by process {}", std::process::id());
        assert!(err.contains(&holder), "spool {args:?}: {err}");
        if args[0] == "push" {
            assert!(err.contains("needs the queue alone"), "{err}");
        }
    }
    // Nothing changed: no setting, no record.
    let (code, out, _) = run(&["config", "--json", arg(&dir)]);
    assert_eq!(code, 0);
    let settings: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(settings["max_records"], serde_json::Value::Null);
    assert_eq!(settings["max_age_ms"], serde_json::Value::Null);
    assert_eq!(settings["segment_size"], SEGMENT_BYTES);
    assert_eq!(service.pop().unwrap().unwrap().payload(), b"only");
    assert!(service.pop().unwrap().is_none());
    // Alone once the service is gone.
    drop(service);
    let (code, out, _) = run(&["stat", "--json", arg(&dir)]);
    assert_eq!(code, 0);
    let stat: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stat["shared_by"], serde_json::json!([]));
    spool(&["repair", arg(&dir)]).assert().code(0);
    spool(&["push", "--dedup-id", "k", arg(&dir), "x"])
        .assert()
        .code(0);
}

#[test]
fn read_only_commands_find_a_live_shared_queue_clean() {
    let (_temp, dir, service) = live_queue();
    // Across several segments, some consumed; spool's own push and pop join in.
    for seq in 0..100 {
        service.push(&payload_for(seq)).unwrap();
    }
    spool(&["pop", "-n", "30", arg(&dir)]).assert().code(0);
    spool(&["push", arg(&dir), "from spool"]).assert().code(0);
    for name in [CONTROL_FILE_NAME, "open.lock", "procs", "lock"] {
        assert!(dir.join(name).exists(), "{name} is there to be checked");
    }
    let check = |dir: &Path, len: u64| {
        let (report, code) = verify_json(dir);
        assert_eq!(code, 0, "{report}");
        assert_eq!(report["clean"], true, "{report}");
        spool(&["verify", arg(dir)])
            .assert()
            .code(0)
            .stdout(predicate::str::contains("clean: no problems found"));
        let (code, out, err) = run(&["stat", "--json", arg(dir)]);
        assert_eq!(code, 0, "{err}");
        let stat: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(stat["len"], len, "{stat}");
        assert_eq!(stat["head_seq"], 30, "{stat}");
        assert_eq!(stat["next_seq"], 101, "{stat}");
        let (code, out, err) = run(&["inspect", "--json", arg(dir)]);
        assert_eq!(code, 0, "{err}");
        let inspect: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(inspect["strays"], serde_json::json!([]), "{inspect}");
        let (code, out, err) = run(&["inspect", arg(dir)]);
        assert_eq!(code, 0, "{err}");
        assert!(!out.contains("stray"), "{out}");
        let (code, out, _) = run(&["dump", arg(dir)]);
        assert_eq!(code, 0);
        assert_eq!(out.lines().count() as u64, len);
        assert_eq!(out.lines().last(), Some("from spool"));
    };
    check(&dir, 71);
    // The same once the service is gone and its coordination files stay behind.
    drop(service);
    check(&dir, 71);
}

/// Reads a 32-bit word of the queue's control file (zero while there is none).
fn control_word(dir: &Path, offset: usize) -> u32 {
    match std::fs::read(dir.join(CONTROL_FILE_NAME)) {
        Ok(bytes) if bytes.len() >= offset + 4 => {
            u32::from_ne_bytes(bytes[offset..offset + 4].try_into().unwrap())
        }
        _ => 0,
    }
}

#[test]
fn pop_wait_is_woken_by_a_push_of_a_live_producer() {
    let (_temp, dir, service) = live_queue();
    // The record is there first: the pop returns it at once.
    service.push(b"early").unwrap();
    spool(&["pop", "--wait", "60", arg(&dir)])
        .assert()
        .code(0)
        .stdout("early\n");
    // The pop waits first: it took a consumer turn (the control file names the last taker)
    // and sleeps on the control file's futex word before the service pushes. Its own 60 s is the failure guard: exit 3 if not woken.
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("spool"))
        .args(["pop", "--wait", "60", arg(&dir)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Instant::now() + Duration::from_secs(60);
    while control_word(&dir, CONSUMER_PID) != child.id() || control_word(&dir, SLEEPERS) == 0 {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "pop --wait ended before the push ({status}): {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(Instant::now() < guard, "pop --wait never started waiting");
        std::thread::sleep(Duration::from_millis(1));
    }
    service.push(b"wake").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, b"wake\n");
    // Whatever the order, every record was popped once.
    assert!(service.pop().unwrap().is_none());
}

#[test]
fn a_deduplicating_queue_is_shared_and_its_ids_count_across_processes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let service = Queue::open(&dir, shared().dedup_window(Duration::from_secs(3600))).unwrap();
    let with_id = |id: &str| diskspool::Push::new().dedup_id(id);
    assert_eq!(
        service
            .push_with(b"from the service", with_id("a"))
            .unwrap(),
        0
    );
    // `spool push --dedup-id` beside it: a retry of the service's id writes nothing, a new id
    // is pushed, and the service sees it as a push made before.
    for (id, payload) in [("a", "retried"), ("b", "from spool"), ("b", "retried")] {
        spool(&["push", "--dedup-id", id, arg(&dir), payload])
            .assert()
            .code(0);
    }
    assert_eq!(service.push_with(b"retried", with_id("b")).unwrap(), 1);
    assert_eq!(service.len(), 2);
    spool(&["pop", "-n", "2", arg(&dir)])
        .assert()
        .code(0)
        .stdout("from the service\nfrom spool\n");
    assert!(
        dir.join(CONTROL_FILE_NAME).exists(),
        "opened shared beside the service"
    );
}

#[test]
fn a_bounded_queue_is_shared_and_its_bound_counts_every_process() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let service = Queue::open(&dir, shared().max_records(3)).unwrap();
    service.push(b"a").unwrap();
    spool(&["push", arg(&dir), "b", "c"]).assert().code(0);
    // Full: the push beside the service is refused at the bound (exit 6), not for the lock.
    let (code, _, err) = run(&["push", arg(&dir), "d"]);
    assert_eq!(code, 6, "{err}");
    assert_eq!(service.pop().unwrap().unwrap().payload(), b"a");
    spool(&["push", arg(&dir), "d"]).assert().code(0);
    spool(&["pop", arg(&dir)]).assert().code(0).stdout("b\n");
    assert!(dir.join(CONTROL_FILE_NAME).exists(), "opened shared");
    service.push(b"e").unwrap();
    assert_eq!(service.len(), 3);
    assert_eq!(run(&["push", arg(&dir), "f"]).0, 6);
}

/// A `spool` of another diskspool version beside a live service (here: the service's control
/// file says layout version 3): the commands that join the service's handles (`push`, `pop`)
/// exit 4, naming the control file and both versions, since the queue is the service's until
/// it closes; `stat` and `peek`, which read the files alone, still work.
#[test]
fn spool_of_another_control_layout_beside_a_live_service_exits_4_naming_both_versions() {
    use std::os::unix::fs::FileExt;
    let (_temp, dir, service) = live_queue();
    service.push(b"kept").unwrap();
    let control = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(CONTROL_FILE_NAME))
        .unwrap();
    control.write_all_at(&3u32.to_ne_bytes(), 8).unwrap();
    for args in [&["push", arg(&dir), "x"][..], &["pop", arg(&dir)][..]] {
        let (code, _, stderr) = run(args);
        assert_eq!(code, 4, "{args:?}: {stderr}");
        assert!(
            stderr.contains("control")
                && stderr.contains("version 3")
                && stderr.contains(&format!("version {CONTROL_VERSION}")),
            "{args:?}: {stderr}"
        );
    }
    let (code, _, stderr) = run(&["stat", arg(&dir)]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = run(&["peek", arg(&dir)]);
    assert_eq!((code, stdout.as_str()), (0, "kept\n"), "{stderr}");
    drop(service);
    let (code, stdout, stderr) = run(&["pop", arg(&dir)]);
    assert_eq!((code, stdout.as_str()), (0, "kept\n"), "{stderr}");
}
