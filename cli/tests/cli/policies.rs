//! The queue's policies from the command line (issue 13): bound and overflow flags on `push`,
//! `config`, `purge`, `--dedup-id`, exit code 6, and the limits in `stat`.

use predicates::prelude::*;

use crate::util::{arg, spool};

fn dump(dir: &std::path::Path) -> String {
    let output = spool(&["dump", arg(dir)]).assert().success();
    String::from_utf8(output.get_output().stdout.clone()).unwrap()
}

#[test]
fn push_creates_a_bounded_queue_and_a_refused_push_exits_6() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", "--max-records", "2", arg(&dir), "a", "b"])
        .assert()
        .success();
    // The bound is stored: a later push without the flag is held to it.
    spool(&["push", arg(&dir), "c"])
        .assert()
        .code(6)
        .stderr(predicate::str::contains("queue is full"));
    assert_eq!(dump(&dir), "a\nb\n");
    spool(&["pop", arg(&dir)]).assert().success();
    spool(&["push", arg(&dir), "c"]).assert().success();
    assert_eq!(dump(&dir), "b\nc\n");
}

#[test]
fn drop_oldest_keeps_the_newest_records() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&[
        "push",
        "--max-records",
        "3",
        "--overflow",
        "drop-oldest",
        arg(&dir),
        "seed",
    ])
    .assert()
    .success();
    spool(&["push", arg(&dir)])
        .write_stdin("1\n2\n3\n4\n5\n")
        .assert()
        .code(6);
    // A batch larger than the bound never fits; one at a time they do.
    for value in ["1", "2", "3", "4", "5"] {
        spool(&["push", arg(&dir), value]).assert().success();
    }
    assert_eq!(dump(&dir), "3\n4\n5\n");
}

#[test]
fn config_shows_and_changes_the_settings() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", arg(&dir), "a"]).assert().success();
    spool(&["config", "--json", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            r#""max_records":null,"max_bytes":null,"overflow":"reject","max_age_ms":null,"dedup_window_ms":300000"#,
        ));
    spool(&[
        "config",
        "--max-bytes",
        "1M",
        "--max-age",
        "7d",
        "--overflow",
        "block",
        arg(&dir),
    ])
    .assert()
    .success()
    .stdout(predicate::str::contains("overflow      block"));
    spool(&["stat", "--json", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            r#""max_bytes":1048576,"overflow":"block","max_age_ms":604800000"#,
        ));
    spool(&["stat", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains("max bytes     1.0 MiB"));
    // 0 removes a bound.
    spool(&["config", "--max-bytes", "0", "--json", arg(&dir)])
        .assert()
        .success()
        .stdout(predicate::str::contains(r#""max_bytes":null"#));
    // Not a queue: exit 2, nothing created.
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    spool(&["config", arg(&empty)]).assert().code(2);
    spool(&["config", "--max-records", "5", arg(&empty)])
        .assert()
        .code(2);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    // Bad values are usage errors.
    spool(&["config", "--max-age", "7 weeks", arg(&dir)])
        .assert()
        .code(2);
    spool(&["config", "--max-bytes", "12Q", arg(&dir)])
        .assert()
        .code(2);
}

#[test]
fn purge_asks_for_yes_in_scripts_and_removes_everything() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", arg(&dir), "a", "b", "c"])
        .assert()
        .success();
    spool(&["purge", arg(&dir)])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--yes"));
    assert_eq!(dump(&dir), "a\nb\nc\n");
    spool(&["purge", "--yes", arg(&dir)])
        .assert()
        .success()
        .stdout("purged 3 record(s)\n");
    assert_eq!(dump(&dir), "");
    spool(&["push", arg(&dir), "d"]).assert().success();
    assert_eq!(dump(&dir), "d\n");
}

#[test]
fn a_push_with_a_dedup_id_is_written_once() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    for _ in 0..3 {
        spool(&["push", "--dedup-id", "order-17", arg(&dir), "order 17"])
            .assert()
            .success();
    }
    spool(&["pop", arg(&dir)]).assert().success();
    // Remembered after the record was consumed.
    spool(&["push", "--dedup-id", "order-17", arg(&dir), "order 17"])
        .assert()
        .success();
    assert_eq!(dump(&dir), "");
    spool(&["push", "--dedup-id", "k", arg(&dir), "a", "b"])
        .assert()
        .code(2);
}

/// `push --ttl`: the TTL is stored in each record; `dump --json` shows when it expires, and a
/// record past it is never popped.
#[test]
fn push_with_a_ttl_shows_its_expiry_and_is_not_popped_after_it() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", "--ttl", "2h", arg(&dir), "kept"])
        .assert()
        .success();
    spool(&["push", "--ttl", "1ms", arg(&dir)])
        .write_stdin("gone 1\ngone 2\n")
        .assert()
        .success();
    let pushed = std::time::SystemTime::now();
    spool(&["push", arg(&dir), "plain"]).assert().success();
    let output = spool(&["dump", "--json", arg(&dir)]).assert().success();
    let lines: Vec<serde_json::Value> = String::from_utf8(output.get_output().stdout.clone())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    let expires = |line: &serde_json::Value| {
        line.get("expires_at")
            .and_then(|at| at.as_str().map(String::from))
    };
    let enqueued = lines[0]["enqueued_at"].as_str().unwrap();
    let kept_expiry = expires(&lines[0]).unwrap();
    // Later, in the same (sortable) format.
    assert_eq!(kept_expiry.len(), enqueued.len());
    assert!(kept_expiry.as_str() > enqueued, "{kept_expiry} {enqueued}");
    assert!(expires(&lines[1]).is_some() && expires(&lines[2]).is_some());
    assert_eq!(
        expires(&lines[3]),
        None,
        "a record without a TTL has no expiry"
    );
    // Once the clock is past the short TTL, only the other records are popped.
    while std::time::SystemTime::now() <= pushed + std::time::Duration::from_millis(2) {
        std::thread::yield_now();
    }
    spool(&["pop", "--all", arg(&dir)])
        .assert()
        .success()
        .stdout("kept\nplain\n");
    spool(&["push", "--ttl", "soon", arg(&dir), "x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("soon"));
}
