//! `push`, `pop`, `peek`, `dump`: records in and out, and what each exit code means.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use predicates::prelude::*;

use crate::util::*;

#[test]
fn push_arguments_then_pop_returns_them_in_order() {
    // Each argument is one record; pop prints one payload a line, oldest first.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("new");
    spool(&["push", arg(&dir), "first", "second", "third"])
        .assert()
        .success()
        .stdout("");
    spool(&["pop", "-n", "2", arg(&dir)])
        .assert()
        .success()
        .stdout("first\nsecond\n");
    spool(&["pop", "--all", arg(&dir)])
        .assert()
        .success()
        .stdout("third\n");
}

#[test]
fn push_reads_one_record_per_line_of_standard_input() {
    // Lines become records without their line ending; an empty line is an empty record.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", arg(&dir)])
        .write_stdin("alpha\r\n\nbeta\ngamma")
        .assert()
        .success();
    let records = drain(&dir);
    let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
    assert_eq!(payloads, [&b"alpha"[..], b"", b"beta", b"gamma"]);
}

#[test]
fn push_of_many_lines_crosses_segments_and_keeps_every_record() {
    // 2000 lines in 4 KiB segments: batches are split to fit, nothing is lost or reordered.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let input: String = (0..2000).map(|n| format!("line {n}\n")).collect();
    spool(&[
        "push",
        "--segment-size",
        "4096",
        "--sync",
        "never",
        arg(&dir),
    ])
    .write_stdin(input)
    .assert()
    .success();
    assert!(segments(&dir).len() > 10, "small segments were used");
    let records = drain(&dir);
    assert_eq!(records.len(), 2000);
    for (index, (seq, payload)) in records.iter().enumerate() {
        assert_eq!(*seq, index as u64);
        assert_eq!(payload, format!("line {index}").as_bytes());
    }
}

#[test]
fn push_raw_is_one_record_and_json_shows_binary_as_base64() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", "--raw", arg(&dir)])
        .write_stdin(vec![0xff, 0x00, b'\n', 0x80])
        .assert()
        .success();
    spool(&["push", arg(&dir), "plain text"]).assert().success();
    let output = spool(&["pop", "--all", "--json", arg(&dir)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<serde_json::Value> = output
        .stdout
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["seq"], 0);
    assert_eq!(lines[0]["encoding"], "base64");
    assert_eq!(lines[0]["payload"], "/wAKgA==");
    assert_eq!(lines[1]["seq"], 1);
    assert_eq!(lines[1]["encoding"], "utf8");
    assert_eq!(lines[1]["payload"], "plain text");
    let enqueued_at = lines[1]["enqueued_at"].as_str().unwrap();
    assert!(
        enqueued_at.len() == 27 && enqueued_at.ends_with('Z') && enqueued_at.contains('T'),
        "RFC 3339 UTC with microseconds: {enqueued_at}"
    );
}

#[test]
fn pop_on_an_empty_queue_prints_nothing_and_succeeds() {
    let (_temp, dir) = queue_with(0, 0);
    spool(&["pop", arg(&dir)]).assert().code(0).stdout("");
}

#[test]
fn pop_wait_runs_out_with_exit_3() {
    let (_temp, dir) = queue_with(0, 0);
    let started = Instant::now();
    spool(&["pop", "--wait", "0.3", arg(&dir)])
        .assert()
        .code(3)
        .stdout("");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn pop_wait_receives_a_record_pushed_by_another_process_meanwhile() {
    // pop --wait must not hold the lock while it waits, or no producer could push.
    let (_temp, dir) = queue_with(0, 0);
    let pusher_dir = dir.clone();
    let pusher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        spool(&["push", arg(&pusher_dir), "late arrival"])
            .assert()
            .success();
    });
    spool(&["pop", "--wait", "10", arg(&dir)])
        .assert()
        .success()
        .stdout("late arrival\n");
    pusher.join().unwrap();
}

#[test]
fn peek_and_dump_show_records_without_removing_them() {
    let (_temp, dir) = queue_with(30, 5);
    let expected = |seqs: std::ops::Range<u64>| -> Vec<u8> {
        seqs.flat_map(|seq| [payload_for(seq), b"\n".to_vec()].concat())
            .collect()
    };
    spool(&["peek", arg(&dir)])
        .assert()
        .success()
        .stdout(expected(5..6));
    spool(&["peek", "-n", "3", arg(&dir)])
        .assert()
        .success()
        .stdout(expected(5..8));
    spool(&["dump", arg(&dir)])
        .assert()
        .success()
        .stdout(expected(5..30));
    spool(&["dump", "--from", "20", "--limit", "4", arg(&dir)])
        .assert()
        .success()
        .stdout(expected(20..24));
    // Before the head means from the head: consumed records are not shown.
    spool(&["dump", "--from", "0", "--limit", "1", arg(&dir)])
        .assert()
        .success()
        .stdout(expected(5..6));
    assert_records(&drain(&dir), 5..30);
}

#[test]
fn dump_into_a_closed_pipe_is_success() {
    // `spool dump DIR | head -1`: the reader leaves early; that is not an error.
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    {
        let queue = diskspool::Queue::open(&dir, options().segment_size(1 << 20)).unwrap();
        let payload = vec![b'x'; 200];
        queue
            .push_batch((0..3000).map(|_| payload.as_slice()))
            .unwrap();
    }
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("spool"))
        .args(["dump", arg(&dir)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn push_of_a_record_larger_than_a_segment_is_a_usage_error() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let big = "x".repeat(5000);
    spool(&["push", "--segment-size", "4096", arg(&dir), &big])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("exceeds max_record_size"));
}

#[test]
fn push_keeps_the_segment_size_of_an_existing_queue() {
    // The queue does not record its segment size; spool infers it from sealed segments.
    let (_temp, dir) = queue_with(100, 0);
    let input: String = (0..200).map(|n| format!("more {n}\n")).collect();
    spool(&["push", arg(&dir)])
        .write_stdin(input)
        .assert()
        .success();
    for segment in segments(&dir) {
        let len = std::fs::metadata(&segment).unwrap().len();
        assert!(len <= SEGMENT_BYTES, "{} has {len} bytes", name(&segment));
    }
    assert_eq!(drain(&dir).len(), 300);
}

#[test]
fn push_under_each_sync_policy_keeps_every_record() {
    for policy in ["always", "interval", "never"] {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("q");
        spool(&["push", "--sync", policy, arg(&dir), "one", "two"])
            .assert()
            .success();
        let records = drain(&dir);
        let payloads: Vec<&[u8]> = records.iter().map(|(_, p)| p.as_slice()).collect();
        assert_eq!(payloads, [&b"one"[..], b"two"], "--sync {policy}");
    }
    spool(&["push", "--sync", "sometimes", "q", "x"])
        .assert()
        .code(2);
}

#[test]
fn a_torn_tail_cut_when_opening_is_reported_on_stderr() {
    // Mutating commands open the queue, which cuts a torn tail; the operator is told.
    let (_temp, dir) = queue_with_unsynced_tail(20, 0, 1);
    let last = segments(&dir).last().unwrap().clone();
    let (offset, seq) = *frames(&last).last().unwrap();
    zero_from(&last, offset);
    let torn_bytes = std::fs::metadata(&last).unwrap().len() - offset;
    spool(&["push", arg(&dir), "after the crash"])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "cut a torn tail of {torn_bytes} bytes at byte {offset} (records {seq}..={seq} were"
        )));
    let records = drain(&dir);
    assert_eq!(records.len(), 20, "19 old records and the new one");
    assert_eq!(records[19], (19, b"after the crash".to_vec()));
}

#[test]
fn pop_stops_at_damage_with_exit_5_naming_the_file_and_offset() {
    // Records before the damage are handed out; then the error, never a skip.
    let (_temp, dir) = queue_with(80, 0);
    let files = segments(&dir);
    let (offset, seq) = frames(&files[1])[2];
    flip_byte(&files[1], offset + 30);
    let output = spool(&["pop", "--all", arg(&dir)]).output().unwrap();
    assert_eq!(output.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&name(&files[1])), "{stderr}");
    assert!(stderr.contains(&format!("offset {offset}")), "{stderr}");
    let expected: Vec<u8> = (0..seq)
        .flat_map(|seq| [payload_for(seq), b"\n".to_vec()].concat())
        .collect();
    assert_eq!(output.stdout, expected);
}
