//! `verify` on clean queues and on every kind of damage: each problem named with its file and
//! byte offset, exit 1; never a crash.

use predicates::prelude::*;

use crate::util::*;

#[test]
fn a_clean_queue_verifies_with_exit_0() {
    let (_temp, dir) = queue_with(80, 30);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 0);
    assert_eq!(report["clean"], true);
    assert_eq!(report["records"], 80);
    assert_eq!(report["head_seq"], 30);
    assert_eq!(report["segments"], segments(&dir).len());
    spool(&["verify", arg(&dir)])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("clean: no problems found"));
}

#[test]
fn a_new_empty_directory_is_not_a_queue() {
    let temp = tempfile::tempdir().unwrap();
    spool(&["verify", arg(temp.path())])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a queue"));
}

#[test]
fn a_flipped_byte_in_a_sealed_segment_is_a_damaged_frame_at_its_offset() {
    let (_temp, dir) = queue_with(80, 0);
    let first = &segments(&dir)[0];
    let (offset, seq) = frames(first)[4];
    flip_byte(first, offset + 26);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(report["clean"], false);
    assert_eq!(
        problems(&report),
        [("damaged_frame".to_string(), name(first), offset)]
    );
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(detail.contains(&format!("record {seq}")), "{detail}");
    spool(&["verify", arg(&dir)])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("damaged_frame"))
        .stdout(predicate::str::contains(offset.to_string()));
}

#[test]
fn a_sealed_segment_truncated_mid_frame_is_reported() {
    let (_temp, dir) = queue_with(80, 0);
    let first = &segments(&dir)[0];
    let (offset, _) = *frames(first).last().unwrap();
    truncate(first, offset + 10);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("damaged_frame".to_string(), name(first), offset)]
    );
}

#[test]
fn a_zeroed_tail_of_the_last_segment_is_a_torn_tail() {
    let (_temp, dir) = queue_with_unsynced_tail(80, 0, 2);
    let last = segments(&dir).last().unwrap().clone();
    let tail_frames = frames(&last);
    let (offset, _) = tail_frames[tail_frames.len() - 2];
    zero_from(&last, offset);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("torn_tail".to_string(), name(&last), offset)]
    );
}

#[test]
fn a_zeroed_tail_of_synced_records_is_missing_records_not_a_torn_tail() {
    let (_temp, dir) = queue_with(80, 0);
    let last = segments(&dir).last().unwrap().clone();
    let tail_frames = frames(&last);
    let (offset, seq) = tail_frames[tail_frames.len() - 2];
    zero_from(&last, offset);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    let found = problems(&report);
    assert!(
        found.contains(&("missing_records".to_string(), name(&last), offset)),
        "{found:?}"
    );
    assert!(report
        .to_string()
        .contains(&format!("records {seq}..80 are missing")));
    // Open refuses it, naming the file and offset, and cuts nothing.
    let len = std::fs::metadata(&last).unwrap().len();
    spool(&["pop", arg(&dir)])
        .assert()
        .code(5)
        .stderr(predicate::str::contains(format!(
            "corrupt at byte offset {offset}"
        )));
    assert_eq!(std::fs::metadata(&last).unwrap().len(), len);
}

#[test]
fn a_deleted_segment_in_the_middle_is_missing_records() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    assert!(files.len() >= 3);
    let first_missing = frames(&files[1])[0].1;
    let after = frames(&files[2])[0].1;
    std::fs::remove_file(&files[1]).unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("missing_records".to_string(), name(&files[2]), 0)]
    );
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("{first_missing}..{after}")),
        "{detail}"
    );
}

#[test]
fn a_deleted_consumed_segment_is_not_a_problem() {
    // Compaction deletes consumed segments; a gap wholly behind the head loses nothing.
    let (_temp, dir) = queue_with(100, 70);
    let files = segments(&dir);
    assert!(frames(&files[1]).last().unwrap().1 < 70);
    std::fs::remove_file(&files[1]).unwrap();
    assert_eq!(verify_json(&dir).1, 0);
}

#[test]
fn one_damaged_head_slot_is_reported_both_are_head_unreadable() {
    let (_temp, dir) = queue_with(10, 3);
    let head = dir.join("head");
    flip_byte(&head, 20);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("head_slot_damaged".to_string(), "head".to_string(), 0)]
    );
    flip_byte(&head, 4096 + 20);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("head_unreadable".to_string(), "head".to_string(), 0)]
    );
    assert!(report["head_seq"].is_null());
}

#[test]
fn a_zeroed_head_slot_is_told_apart_from_one_never_written() {
    // A new queue has written only slot 0: its empty slot 1 is no problem.
    let (_temp, fresh) = queue_with(3, 0);
    assert_eq!(verify_json(&fresh).1, 0);
    // After pops both slots were written: zeroing one loses a head, which verify reports.
    let (_temp, dir) = queue_with(10, 3);
    let head = dir.join("head");
    let mut bytes = std::fs::read(&head).unwrap();
    let newest = diskspool::format::head::decode_head_file(&bytes)
        .current
        .unwrap();
    let offset = diskspool::format::head::HEAD_SLOT_OFFSETS[1 - newest] as usize;
    bytes[offset..offset + diskspool::format::head::HEAD_SLOT_LEN].fill(0);
    std::fs::write(&head, bytes).unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [(
            "head_slot_damaged".to_string(),
            "head".to_string(),
            offset as u64
        )]
    );
}

#[test]
fn a_missing_head_with_segments_is_head_unreadable() {
    let (_temp, dir) = queue_with(10, 0);
    std::fs::remove_file(dir.join("head")).unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(problems(&report)[0].0, "head_unreadable");
}

#[test]
fn stray_and_empty_files_are_reported_not_a_crash() {
    let (_temp, dir) = queue_with(10, 0);
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    std::fs::write(dir.join("empty"), "").unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [
            ("stray_file".to_string(), "empty".to_string(), 0),
            ("stray_file".to_string(), "notes.txt".to_string(), 0),
        ]
    );
}

#[test]
fn an_empty_segment_file_is_a_bad_header() {
    let (_temp, dir) = queue_with(80, 0);
    let files = segments(&dir);
    // In the middle: records after it cannot be reached.
    std::fs::write(&files[1], "").unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    let found = problems(&report);
    assert!(
        found.contains(&("bad_segment_header".to_string(), name(&files[1]), 0)),
        "{found:?}"
    );
}

#[test]
fn a_segment_of_another_format_version_is_named() {
    let (_temp, dir) = queue_with(80, 0);
    let files = segments(&dir);
    set_segment_version(&files[1], 9);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report)[0],
        ("unsupported_version".to_string(), name(&files[1]), 0)
    );
    let detail = report["problems"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("version 9"), "{detail}");
}

#[test]
fn a_truncated_segment_header_is_a_bad_header() {
    let (_temp, dir) = queue_with(80, 0);
    let files = segments(&dir);
    truncate(&files[1], 20);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert!(problems(&report).contains(&("bad_segment_header".to_string(), name(&files[1]), 0)));
}

#[test]
fn damaged_queues_make_read_commands_fail_cleanly_never_crash() {
    // Every fixture, every read-only command: exit 0, 1 or 5 with a message, never a signal.
    type Damage = fn(&std::path::Path);
    let damage: [(&str, Damage); 6] = [
        ("flipped", |dir| {
            let first = &segments(dir)[0];
            flip_byte(first, frames(first)[1].0 + 30);
        }),
        ("truncated", |dir| truncate(&segments(dir)[0], 100)),
        ("header", |dir| truncate(&segments(dir)[1], 7)),
        ("head", |dir| {
            std::fs::write(dir.join("head"), [1u8; 9000]).unwrap()
        }),
        ("version", |dir| set_segment_version(&segments(dir)[0], 99)),
        ("zeroed", |dir| zero_from(&segments(dir)[0], 32)),
    ];
    for (what, damage) in damage {
        let (_temp, dir) = queue_with(80, 0);
        damage(&dir);
        for command in ["stat", "dump", "peek", "inspect", "verify"] {
            let output = spool(&[command, arg(&dir)]).output().unwrap();
            let code = output.status.code();
            assert!(
                matches!(code, Some(0 | 1 | 5)),
                "{command} on {what}: {code:?} {}",
                String::from_utf8_lossy(&output.stderr)
            );
            if code == Some(5) {
                let stderr = String::from_utf8_lossy(&output.stderr);
                assert!(
                    stderr.starts_with("spool: "),
                    "{command} on {what}: {stderr}"
                );
                assert!(stderr.contains(arg(&dir)), "names the file: {stderr}");
            }
        }
        assert_eq!(verify_json(&dir).1, 1, "verify finds the {what} damage");
    }
}

#[test]
fn an_unreadable_segment_is_reported_and_the_rest_still_checked() {
    // A folder with a segment's name cannot be read, like a file on a failing sector.
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::create_dir(&files[1]).unwrap();
    flip_byte(&files[2], frames(&files[2])[1].0 + 30);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    let found = problems(&report);
    assert!(
        found.contains(&("unreadable".to_string(), name(&files[1]), 0)),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|(kind, file, _)| kind == "damaged_frame" && *file == name(&files[2])),
        "later segments are still checked: {found:?}"
    );
}

/// A jobs queue whose ack log holds many acknowledgements beyond the head, `sync` called
/// halfway through them, then `acks_after_sync` more acknowledged. Returns the directory's
/// temporary parent, the directory, and the ack log's entries.
fn queue_with_acks(sync_after: usize) -> (tempfile::TempDir, std::path::PathBuf, u64) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        for seq in 0..60 {
            queue.push(&payload_for(seq)).unwrap();
        }
        let mut deliveries = queue.try_recv_batch(60).unwrap();
        let first = deliveries.remove(0);
        for (index, delivery) in deliveries.into_iter().rev().enumerate() {
            if index == sync_after {
                queue.sync().unwrap();
            }
            delivery.ack().unwrap();
        }
        drop(first);
        queue.sync().unwrap();
    }
    assert_eq!(verify_json(&dir).1, 0, "clean before the damage");
    let bytes = std::fs::read(dir.join("acks")).unwrap();
    let scan = diskspool::format::acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    (temp, dir, scan.entries)
}

fn entry_offset(index: u64) -> u64 {
    (diskspool::format::acklog::ACK_LOG_HEADER_LEN
        + diskspool::format::acklog::ACK_ENTRY_LEN * index as usize) as u64
}

/// A byte flipped in an ack log entry with valid entries after it, one of them written after a
/// sync that covered the damaged one (so no power loss tore it): `verify` reports the entry
/// with its offset and exits 1; `stat` and `dump` refuse (exit 5) rather than show acknowledged
/// records as still in the queue.
#[test]
fn a_damaged_ack_log_entry_is_reported_and_read_commands_stop_with_exit_5() {
    let (_temp, dir, entries) = queue_with_acks(30);
    let damaged = entry_offset(entries / 3);
    flip_byte(&dir.join("acks"), damaged + 12);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("ack_log_damaged".to_string(), "acks".to_string(), damaged)]
    );
    spool(&["verify", arg(&dir)])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("ack_log_damaged"));
    for command in ["stat", "dump"] {
        spool(&[command, arg(&dir)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains("acks"))
            .stderr(predicate::str::contains(damaged.to_string()));
    }
}

/// A byte flipped in an ack log entry with valid entries after it, none written after a sync
/// that covered it: what a power loss leaves of appends that no sync separated. `verify`
/// reports it as `torn_tail` (exit 1), not as damage; `stat` and `dump` show the queue as
/// `Queue::open` will, without the torn entry's acknowledgement.
#[test]
fn an_ack_log_entry_torn_by_a_power_loss_is_a_torn_tail_and_read_commands_leave_it_out() {
    let (_temp, dir, entries) = queue_with_acks(usize::MAX);
    let torn = entry_offset(entries - 10);
    flip_byte(&dir.join("acks"), torn + 12);
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("torn_tail".to_string(), "acks".to_string(), torn)]
    );
    // Record 0 is held, one record's acknowledgement was torn: two records in the queue.
    let stat = stat_json(&dir);
    assert_eq!(stat["len"], 2, "{stat}");
    spool(&["dump", arg(&dir)]).assert().code(0);
    let queue = diskspool::Queue::open(&dir, options()).unwrap();
    assert_eq!(queue.recovery_report().skipped_ack_entries, [torn]);
    assert_eq!(queue.len(), 2);
}

/// A head slot with a valid checksum and `head_seq = u64::MAX` (beyond the largest sequence
/// number): `stat` and `dump` refuse with exit 5 naming the head, `verify` reports it (exit 1),
/// where they used to say 0 records and clean.
#[test]
fn a_head_beyond_the_largest_sequence_number_is_reported_and_refused() {
    use diskspool::format::head::{encode_slot, HeadSlot, HeadState, HEAD_FILE_LEN};
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    std::fs::create_dir(&dir).unwrap();
    let mut head = vec![0; HEAD_FILE_LEN as usize];
    let slot = encode_slot(&HeadSlot {
        generation: 1,
        state: HeadState {
            head_seq: u64::MAX,
            hint_base: u64::MAX,
            hint_offset: 32,
            synced_seq: 0,
        },
    });
    head[..slot.len()].copy_from_slice(&slot);
    std::fs::write(dir.join("head"), head).unwrap();
    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("head_unreadable".to_string(), "head".to_string(), 0)]
    );
    for command in ["stat", "dump"] {
        spool(&[command, arg(&dir)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains("head"))
            .stderr(predicate::str::contains(
                "beyond the largest sequence number",
            ));
    }
}
