//! `stat`, `inspect`, `compact`, help texts, usage errors and the lock.

use predicates::prelude::*;

use crate::util::*;

#[test]
fn stat_json_has_the_documented_fields_and_values() {
    let (_temp, dir) = queue_with(40, 10);
    let output = spool(&["stat", "--json", arg(&dir)]).output().unwrap();
    assert!(output.status.success());
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut fields: Vec<&str> = stat
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "delayed",
            "disk_bytes",
            "head_seq",
            "len",
            "live_bytes",
            "next_seq",
            "oldest_age_ms",
            "policies",
            "quarantine_files",
            "quarantine_records",
            "ready",
            "segments",
            "shared_by"
        ]
    );
    assert_eq!(stat["quarantine_files"], 0);
    // An exclusive queue, closed: nobody shares it.
    assert_eq!(stat["shared_by"], serde_json::json!([]));
    assert_eq!(stat["len"], 30);
    assert_eq!(
        (stat["ready"].as_u64(), stat["delayed"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(stat["head_seq"], 10);
    assert_eq!(stat["next_seq"], 40);
    let files = segments(&dir);
    assert_eq!(stat["segments"], files.len());
    let disk: u64 = files
        .iter()
        .chain([dir.join("head"), dir.join("settings")].iter())
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    assert_eq!(stat["disk_bytes"], disk);
    let live: u64 = (10..40)
        .map(|seq| diskspool::format::frame::frame_len(payload_for(seq).len()) as u64)
        .sum();
    assert_eq!(stat["live_bytes"], live);
    assert!(stat["oldest_age_ms"].as_u64().unwrap() < 60_000);
}

#[test]
fn stat_agrees_with_the_library_while_the_queue_is_open() {
    // No lock is taken: stat works while the library holds the queue, and reads the same.
    let temp = tempfile::tempdir().unwrap();
    let queue = diskspool::Queue::open(temp.path(), options()).unwrap();
    for seq in 0..50 {
        queue.push(&payload_for(seq)).unwrap();
    }
    queue.pop_batch(7).unwrap();
    let engine = queue.stats().unwrap();
    let output = spool(&["stat", "--json", arg(temp.path())])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stat["len"], engine.len);
    assert_eq!(stat["head_seq"], engine.head_seq);
    assert_eq!(stat["next_seq"], engine.next_seq);
    assert_eq!(stat["segments"], engine.segments);
    assert_eq!(stat["live_bytes"], engine.live_bytes);
    assert_eq!(stat["ready"], engine.ready);
    assert_eq!(stat["delayed"], engine.delayed);
}

#[test]
fn stat_of_an_empty_queue_has_no_oldest_age() {
    let (_temp, dir) = queue_with(3, 3);
    let output = spool(&["stat", "--json", arg(&dir)]).output().unwrap();
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stat["len"], 0);
    assert!(stat["oldest_age_ms"].is_null());
    spool(&["stat", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"records +0\n").unwrap())
        .stdout(predicate::str::contains("KiB"));
}

#[test]
fn inspect_lists_segments_with_their_state() {
    let (_temp, dir) = queue_with(100, 40);
    let files = segments(&dir);
    assert!(files.len() >= 3);
    let output = spool(&["inspect", "--json", arg(&dir)]).output().unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["head_seq"], 40);
    let rows = report["segments"].as_array().unwrap();
    assert_eq!(rows.len(), files.len());
    let mut next = 0;
    for (index, row) in rows.iter().enumerate() {
        assert_eq!(row["name"], name(&files[index]));
        assert_eq!(row["first_seq"], next);
        let last = row["last_seq"].as_u64().unwrap();
        assert_eq!(row["records"], last - next + 1);
        assert_eq!(row["checksums"], "ok");
        let expected_state = if index + 1 == rows.len() {
            "active"
        } else if last < 40 {
            "consumed"
        } else {
            "live"
        };
        assert_eq!(row["state"], expected_state, "row {index}");
        next = last + 1;
    }
    assert_eq!(next, 100);
    spool(&["inspect", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains("SEGMENT"))
        .stdout(predicate::str::contains("consumed"))
        .stdout(predicate::str::contains("head at sequence 40"));
}

#[test]
fn inspect_of_one_segment_lists_every_frame() {
    let (_temp, dir) = queue_with(60, 0);
    let second = &segments(&dir)[1];
    let expected = frames(second);
    let output = spool(&["inspect", "--json", arg(&dir), &name(second)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), expected.len());
    for (row, (offset, seq)) in rows.iter().zip(&expected) {
        assert_eq!(row["offset"], *offset);
        assert_eq!(row["seq"], *seq);
        assert_eq!(row["len"], payload_for(*seq).len());
        assert_eq!(row["crc_ok"], true);
    }
    // A damaged frame shows up with crc_ok false at its offset.
    let (offset, seq) = expected[2];
    flip_byte(second, offset + 30);
    let output = spool(&["inspect", "--json", arg(&dir), &name(second)])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows[2]["offset"], offset);
    assert_eq!(rows[2]["seq"], seq);
    assert_eq!(rows[2]["crc_ok"], false);
    assert_eq!(
        rows[3]["crc_ok"], true,
        "frames after the damage are still listed"
    );
    spool(&["inspect", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains("damaged"));
}

#[test]
fn inspect_of_a_name_that_is_not_a_segment_is_a_usage_error() {
    let (_temp, dir) = queue_with(1, 0);
    spool(&["inspect", arg(&dir), "head"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not a segment file name"));
}

#[test]
fn compact_deletes_consumed_segments_and_reports_the_bytes() {
    let (_temp, dir) = queue_with(100, 60);
    let files = segments(&dir);
    let consumed: Vec<_> = files
        .iter()
        .filter(|path| frames(path).last().unwrap().1 < 60)
        .collect();
    assert!(!consumed.is_empty());
    let freed: u64 = consumed
        .iter()
        .map(|path| std::fs::metadata(path).unwrap().len())
        .sum();
    let output = spool(&["compact", "--json", arg(&dir)]).output().unwrap();
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["segments_removed"], consumed.len());
    assert_eq!(report["bytes_freed"], freed);
    for path in consumed {
        assert!(!path.exists(), "{} deleted", name(path));
    }
    spool(&["compact", arg(&dir)])
        .assert()
        .success()
        .stdout("removed 0 consumed segments, freed 0 B\n");
    assert_records(&drain(&dir), 60..100);
}

#[test]
fn commands_that_change_the_queue_report_the_lock_holder_with_exit_4() {
    let (_temp, dir) = queue_with(5, 0);
    let _held = diskspool::Queue::open(&dir, options()).unwrap();
    let pid = std::process::id().to_string();
    for args in [
        vec!["push", arg(&dir), "x"],
        vec!["pop", arg(&dir)],
        vec!["compact", arg(&dir)],
        vec!["repair", arg(&dir)],
    ] {
        spool(&args)
            .assert()
            .code(4)
            .stderr(predicate::str::contains("locked"))
            .stderr(predicate::str::contains(pid.as_str()));
    }
    // Read-only commands take no lock.
    for command in ["stat", "peek", "dump", "inspect", "verify"] {
        spool(&[command, arg(&dir)]).assert().code(0);
    }
}

/// A queue locked for a moment (here: held alone by this process for 200 ms after the command
/// started, less than `LOCK_GRACE`) is waited out, not reported: the push lands once the
/// holder closes.
#[test]
fn a_command_waits_out_a_lock_held_for_a_moment() {
    let (_temp, dir) = queue_with(5, 0);
    let held = diskspool::Queue::open(&dir, options()).unwrap();
    let child = std::process::Command::new(spool(&[]).get_program())
        .args(["push", arg(&dir), "after the hold"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(held);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records = drain(&dir);
    assert_eq!(records.len(), 6);
    assert_eq!(records[5].1, b"after the hold");
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for command in [
        "push", "pop", "peek", "dump", "stat", "inspect", "verify", "compact", "repair", "demo",
    ] {
        spool(&[command, "--help"])
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"));
    }
    spool(&["--help"])
        .assert()
        .success()
        .stdout(predicate::str::contains("4  the queue is locked"));
}

#[test]
fn bad_arguments_exit_with_2() {
    spool(&["pop", "--bogus", "x"]).assert().code(2);
    spool(&["stat"]).assert().code(2);
    spool(&["pop", "-n", "3", "--all", "x"]).assert().code(2);
}

#[test]
fn a_missing_directory_is_an_error_naming_it_not_a_new_queue() {
    let temp = tempfile::tempdir().unwrap();
    let missing = temp.path().join("missing");
    for command in ["stat", "dump", "verify", "pop", "compact", "repair"] {
        spool(&[command, arg(&missing)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains(arg(&missing)));
    }
    assert!(!missing.exists());
}

#[test]
fn demo_still_runs() {
    spool(&[
        "demo",
        "--records",
        "200",
        "--producers",
        "2",
        "--workers",
        "1",
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains("popped 200 records"));
}

#[test]
fn records_acknowledged_out_of_order_are_not_counted_or_shown() {
    // The jobs API acknowledges records beyond the head; its ack log is the queue's own file
    // (not a stray) and read commands leave those records out, like the engine does.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let queue = diskspool::Queue::open(dir, options()).unwrap();
    for seq in 0..10 {
        queue.push(&payload_for(seq)).unwrap();
    }
    let mut deliveries = queue.try_recv_batch(3).unwrap();
    let third = deliveries.pop().unwrap();
    let second = deliveries.pop().unwrap();
    assert_eq!((second.seq(), third.seq()), (1, 2));
    second.ack().unwrap();
    third.ack().unwrap();
    queue.sync().unwrap();
    let engine = queue.stats().unwrap();
    assert!(dir.join("acks").exists());

    let output = spool(&["stat", "--json", arg(dir)]).output().unwrap();
    let stat: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stat["len"], engine.len);
    assert_eq!(stat["len"], 8);
    assert_eq!(stat["disk_bytes"], engine.disk_bytes);
    let dumped = spool(&["dump", "--json", arg(dir)]).output().unwrap();
    let seqs: Vec<u64> = String::from_utf8(dumped.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [0, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(verify_json(dir).1, 0, "the ack log is not a stray file");
    drop(deliveries);
}
