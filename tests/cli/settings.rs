//! Only `push` makes a queue; every other command on a directory without one exits 2 and
//! creates nothing. A queue remembers the segment size it was created with.

use std::path::Path;

use predicates::prelude::*;

use crate::util::{arg, spool};

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn no_command_but_push_turns_a_directory_into_a_queue() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(dir.join("notes.txt"), "hi\n").unwrap();
    for command in [
        "pop", "peek", "dump", "stat", "inspect", "verify", "compact", "repair",
    ] {
        spool(&[command, arg(dir)])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("is not a queue"));
        assert_eq!(entries(dir), ["notes.txt"], "`spool {command}` wrote files");
        assert_eq!(std::fs::read(dir.join("notes.txt")).unwrap(), b"hi\n");
    }
    spool(&["pop", "--wait", "0.05", arg(dir)])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a queue"));
    assert_eq!(
        entries(dir),
        ["notes.txt"],
        "`spool pop --wait` wrote files"
    );
    // `push` creates the queue beside the stray file.
    spool(&["push", arg(dir), "first"]).assert().code(0);
    assert!(entries(dir).contains(&"settings".to_string()));
    spool(&["pop", arg(dir)]).assert().code(0).stdout("first\n");
}

#[test]
fn a_queue_keeps_the_segment_size_it_was_created_with() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    spool(&["push", "--segment-size", "4096", arg(&dir), "first"])
        .assert()
        .code(0);
    let lines: String = (0..3000).map(|n| format!("{n}\n")).collect();
    spool(&["push", arg(&dir)])
        .write_stdin(lines)
        .assert()
        .code(0);
    let mut segments = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().ends_with(".seg") {
            segments += 1;
            let len = entry.metadata().unwrap().len();
            assert!(len <= 4096, "{:?} is {len} bytes", entry.file_name());
        }
    }
    assert!(
        segments > 10,
        "3001 records in 4 KiB segments, found {segments}"
    );
    // An explicit size changes it for new segments.
    spool(&["push", "--segment-size", "65536", arg(&dir)])
        .write_stdin((0..3000).map(|n| format!("{n}\n")).collect::<String>())
        .assert()
        .code(0);
    let largest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".seg"))
        .map(|entry| entry.metadata().unwrap().len())
        .max()
        .unwrap();
    assert!(
        largest > 4096,
        "the new size was not used: largest segment {largest}"
    );
}

#[test]
fn a_damaged_settings_file_is_reported_and_repaired_from_the_segments() {
    let (_temp, dir) = crate::util::queue_with(100, 10);
    let path = dir.join("settings");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[16] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let (report, code) = crate::util::verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        crate::util::problems(&report),
        [("settings_damaged".to_string(), "settings".to_string(), 0)]
    );
    spool(&["pop", arg(&dir)])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("settings"));
    spool(&["repair", arg(&dir)])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("rewrite settings"))
        .stdout(predicate::str::contains("verify after repair: clean"));
    assert_eq!(crate::util::quarantined(&dir), ["settings"]);
    assert_eq!(
        std::fs::read(dir.join("quarantine/settings")).unwrap(),
        bytes
    );
    let stored = diskspool::storage::queue_dir::read_settings(&diskspool::storage::OsStorage, &dir)
        .unwrap()
        .unwrap();
    assert_eq!(stored.segment_size, crate::util::SEGMENT_BYTES);
    crate::util::assert_records(&crate::util::drain(&dir), 10..100);
}
