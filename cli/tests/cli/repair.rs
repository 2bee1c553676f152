//! `repair`: exactly the damaged range is cut and quarantined, verify is clean afterwards, and
//! every good record before the damage pops with the right bytes.

use predicates::prelude::*;

use crate::util::*;

/// Runs `spool repair --json DIR` and returns the report and exit code.
fn repair_json(dir: &std::path::Path, dry_run: bool) -> (serde_json::Value, i32) {
    let mut args = vec!["repair", "--json"];
    if dry_run {
        args.push("--dry-run");
    }
    args.push(arg(dir));
    let output = spool(&args).output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap();
    (report, output.status.code().unwrap())
}

/// Every file of `dir` with its bytes, for before/after comparisons.
fn contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && name(path) != "lock")
        .map(|path| (name(&path), std::fs::read(&path).unwrap()))
        .collect();
    files.sort();
    files
}

#[test]
fn damage_in_a_sealed_segment_cuts_from_the_bad_frame_and_quarantines_the_rest() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    assert!(files.len() >= 3);
    let (offset, bad_seq) = frames(&files[0])[5];
    let first_len = std::fs::metadata(&files[0]).unwrap().len();
    flip_byte(&files[0], offset + 30);

    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], bad_seq);
    assert_eq!(report["cut_end_seq"], 100);
    // The bad frame is unreadable; the ones after it in the segment and all later segments are
    // readable copies in quarantine.
    assert_eq!(report["quarantined_records"], 100 - bad_seq - 1);
    assert_eq!(report["clean_after"], true);

    let mut expected = vec![format!("{}.cut-at-{offset}", name(&files[0]))];
    expected.extend(files[1..].iter().map(|path| name(path)));
    expected.sort();
    assert_eq!(quarantined(&dir), expected);
    let cut = std::fs::read(
        dir.join("quarantine")
            .join(format!("{}.cut-at-{offset}", name(&files[0]))),
    )
    .unwrap();
    assert_eq!(
        cut.len() as u64,
        first_len - offset,
        "the whole cut tail was saved"
    );
    assert_eq!(std::fs::metadata(&files[0]).unwrap().len(), offset);

    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 0..bad_seq);
}

#[test]
fn a_torn_tail_is_truncated_and_saved() {
    let (_temp, dir) = queue_with_unsynced_tail(80, 10, 5);
    let last = segments(&dir).last().unwrap().clone();
    let tail = frames(&last);
    let (offset, first_lost) = tail[tail.len() - 3];
    zero_from(&last, offset);
    spool(&["repair", arg(&dir)])
        .assert()
        .code(0)
        .stdout(predicate::str::contains(format!(
            "truncate {} at byte {offset}",
            name(&last)
        )))
        .stdout(predicate::str::contains(format!(
            "the queue now ends before sequence {first_lost}"
        )))
        .stdout(predicate::str::contains("verify after repair: clean"));
    assert_eq!(
        quarantined(&dir),
        [format!("{}.cut-at-{offset}", name(&last))]
    );
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 10..first_lost);
}

#[test]
fn a_deleted_middle_segment_quarantines_everything_after_the_gap() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let first_missing = frames(&files[1])[0].1;
    std::fs::remove_file(&files[1]).unwrap();
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], first_missing);
    assert_eq!(report["cut_end_seq"], 100);
    let expected: Vec<String> = files[2..].iter().map(|path| name(path)).collect();
    assert_eq!(quarantined(&dir), expected);
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 0..first_missing);
}

#[test]
fn a_segment_of_another_version_is_quarantined_with_what_follows() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let base = frames(&files[1])[0].1;
    set_segment_version(&files[1], 7);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], base);
    let expected: Vec<String> = files[1..].iter().map(|path| name(path)).collect();
    assert_eq!(quarantined(&dir), expected);
    assert_records(&drain(&dir), 0..base);
}

#[test]
fn a_damaged_consumed_segment_is_quarantined_without_cutting_live_records() {
    let (_temp, dir) = queue_with(100, 60);
    let files = segments(&dir);
    assert!(frames(&files[0]).last().unwrap().1 < 60);
    flip_byte(&files[0], frames(&files[0])[2].0 + 30);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(report["cut_first_seq"].is_null(), "{report}");
    assert_eq!(quarantined(&dir), [name(&files[0])]);
    assert_records(&drain(&dir), 60..100);
}

#[test]
fn one_damaged_head_slot_is_rewritten_and_the_head_kept() {
    let (_temp, dir) = queue_with(30, 12);
    flip_byte(&dir.join("head"), 20);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(report["head_reset_to"].is_null());
    assert_eq!(quarantined(&dir), ["head"]);
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 12..30);
}

#[test]
fn an_unreadable_head_is_reset_to_the_oldest_record_on_disk() {
    // Records consumed but not compacted come back: delivering twice loses nothing.
    let (_temp, dir) = queue_with(30, 12);
    let head = dir.join("head");
    flip_byte(&head, 20);
    flip_byte(&head, 4096 + 20);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["head_reset_to"], 0);
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 0..30);
}

#[test]
fn stray_files_move_to_quarantine() {
    let (_temp, dir) = queue_with(5, 0);
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(quarantined(&dir), ["notes.txt"]);
    let action = &report["actions"][0];
    assert!(action["file"].as_str().unwrap().ends_with("notes.txt"));
    assert_eq!(action["bytes"], 4, "the size moved is the file's");
    assert_eq!(
        std::fs::read(dir.join("quarantine/notes.txt")).unwrap(),
        b"mine"
    );
    assert_records(&drain(&dir), 0..5);
}

#[test]
fn dry_run_changes_nothing_and_exits_1_when_there_is_work() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let (offset, bad_seq) = frames(&files[1])[3];
    flip_byte(&files[1], offset + 30);
    let before = contents(&dir);
    let (report, code) = repair_json(&dir, true);
    assert_eq!(code, 1);
    assert_eq!(report["dry_run"], true);
    assert!(report["clean_after"].is_null());
    assert_eq!(report["cut_first_seq"], bad_seq);
    assert!(!report["actions"].as_array().unwrap().is_empty());
    assert_eq!(contents(&dir), before);
    assert!(!dir.join("quarantine").exists());
    spool(&["repair", "--dry-run", arg(&dir)])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("would cut sequence numbers"));
}

#[test]
fn a_clean_queue_needs_no_repair() {
    let (_temp, dir) = queue_with(40, 5);
    let before = contents(&dir);
    spool(&["repair", arg(&dir)])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("nothing to repair"));
    spool(&["repair", "--dry-run", arg(&dir)]).assert().code(0);
    assert_eq!(contents(&dir), before);
}

#[test]
fn repeated_repairs_never_overwrite_quarantined_files() {
    let (_temp, dir) = queue_with(5, 0);
    std::fs::write(dir.join("stray"), "one").unwrap();
    spool(&["repair", arg(&dir)]).assert().code(0);
    std::fs::write(dir.join("stray"), "two").unwrap();
    spool(&["repair", arg(&dir)]).assert().code(0);
    assert_eq!(quarantined(&dir), ["stray", "stray.1"]);
    assert_eq!(std::fs::read(dir.join("quarantine/stray")).unwrap(), b"one");
    assert_eq!(
        std::fs::read(dir.join("quarantine/stray.1")).unwrap(),
        b"two"
    );
}

#[test]
fn damage_before_the_head_in_its_segment_keeps_every_live_record() {
    // Records 0..10 are consumed; record 3 is damaged in the segment that also holds the
    // head. It is the active segment, which `Queue::open` checks whole: the damage is synced, so
    // open refuses, and the read commands agree (exit 5). Repair copies the records from the
    // head on into a new segment instead of cutting them.
    let (_temp, dir) = queue_with(20, 10);
    let files = segments(&dir);
    assert_eq!(
        files.len(),
        1,
        "one segment holds consumed and live records"
    );
    let (offset, _) = frames(&files[0])[3];
    flip_byte(&files[0], offset + 30);

    assert_eq!(verify_json(&dir).1, 1);
    for command in ["pop", "stat", "dump", "peek"] {
        spool(&[command, arg(&dir)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains(format!(
                "corrupt at byte offset {}",
                offset
            )));
    }

    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(report["cut_first_seq"].is_null(), "{report}");
    assert_eq!(report["actions"][0]["action"], "rebase_segment");
    assert_eq!(quarantined(&dir), [name(&files[0])]);
    let rebased: Vec<String> = segments(&dir).iter().map(|path| name(path)).collect();
    assert_eq!(rebased, ["00000000000000000010.seg"]);
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), 10..20);
}

#[test]
fn damage_inside_a_batch_cuts_the_whole_batch() {
    // Batches are atomic: a batch with a damaged record is cut from its first record on, while
    // verify points at the damaged record itself.
    let (_temp, dir) = queue_with(10, 0);
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        let batch: Vec<Vec<u8>> = (10..15).map(payload_for).collect();
        assert_eq!(queue.push_batch(&batch).unwrap(), 10..15);
        for seq in 15..18 {
            queue.push(&payload_for(seq)).unwrap();
        }
        // Synced: damage in them is damage, not unsynced writes a power loss reordered.
        queue.sync().unwrap();
    }
    let files = segments(&dir);
    assert_eq!(files.len(), 1);
    let (offset, seq) = frames(&files[0])[12];
    assert_eq!(seq, 12);
    let batch_start = frames(&files[0])[10].0;
    flip_byte(&files[0], offset + 30);
    let (report, _) = verify_json(&dir);
    assert_eq!(
        problems(&report),
        [("damaged_frame".to_string(), name(&files[0]), offset)]
    );
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], 10);
    assert_eq!(report["cut_end_seq"], 18);
    assert_eq!(report["actions"][0]["offset"], batch_start);
    assert_records(&drain(&dir), 0..10);
}

#[test]
fn acknowledgements_of_cut_records_do_not_swallow_new_records() {
    // Records 40..50 were acknowledged out of order, then damage at 30 cuts 30.. away. New
    // pushes reuse 30.., so the ack log must forget 40..50, or they would never be delivered.
    let (_temp, dir) = queue_with(60, 0);
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        let deliveries = queue.try_recv_batch(50).unwrap();
        for delivery in deliveries {
            if (40..50).contains(&delivery.seq()) {
                delivery.ack().unwrap();
            }
        }
        queue.sync().unwrap();
    }
    let (path, offset) = segments(&dir)
        .into_iter()
        .find_map(|path| {
            let offset = frames(&path).into_iter().find(|(_, seq)| *seq == 30)?.0;
            Some((path, offset))
        })
        .unwrap();
    flip_byte(&path, offset + 30);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], 30);
    let actions: Vec<&str> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| action["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"rewrite_ack_log"), "{actions:?}");
    assert!(quarantined(&dir).contains(&"acks".to_string()));
    assert!(actions.contains(&"continue_after"), "{actions:?}");
    {
        // New records continue after every number used, and no acknowledgement of a cut
        // record applies to them.
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        for seq in 60..90 {
            assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
        }
    }
    let drained = drain(&dir);
    assert_records(&drained[..30], 0..30);
    assert_records(&drained[30..], 60..90);
}

#[test]
fn a_second_repair_crosses_the_gap_the_first_one_retired() {
    // The first repair cuts 30.. and continues at 60, retiring 30..60. Damage among the records
    // pushed afterwards is cut where it lies: the retired gap is no missing records to repair.
    let (_temp, dir) = queue_with(60, 0);
    let damage_at = |dir: &std::path::Path, seq: u64| {
        let (path, offset) = segments(dir)
            .into_iter()
            .find_map(|path| {
                let offset = frames(&path).into_iter().find(|(_, at)| *at == seq)?.0;
                Some((path, offset))
            })
            .unwrap();
        flip_byte(&path, offset + 30);
    };
    damage_at(&dir, 30);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(
        (code, &report["cut_first_seq"]),
        (0, &serde_json::json!(30)),
        "{report}"
    );
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        for seq in 60..90 {
            assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
        }
    }
    damage_at(&dir, 80);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(
        (code, &report["cut_first_seq"]),
        (0, &serde_json::json!(80)),
        "{report}"
    );
    let drained = drain(&dir);
    assert_records(&drained[..30], 0..30);
    assert_records(&drained[30..], 60..80);
}

#[test]
fn an_unreadable_segment_is_quarantined_with_what_follows() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let first_missing = frames(&files[1])[0].1;
    std::fs::remove_file(&files[1]).unwrap();
    std::fs::create_dir(&files[1]).unwrap();
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["cut_first_seq"], first_missing);
    let mut expected: Vec<String> = files[1..].iter().map(|path| name(path)).collect();
    expected.sort();
    assert_eq!(quarantined(&dir), expected);
    assert_records(&drain(&dir), 0..first_missing);
}

#[test]
fn a_directory_without_a_queue_is_never_repaired() {
    // `spool repair ~` by mistake must not move someone's files into quarantine.
    let temp = tempfile::tempdir().unwrap();
    std::fs::write(temp.path().join("thesis.tex"), "precious").unwrap();
    spool(&["repair", arg(temp.path())])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("is not a queue"));
    assert!(temp.path().join("thesis.tex").exists());
    assert!(!temp.path().join("quarantine").exists());
    assert!(!temp.path().join("lock").exists());
}

#[test]
fn a_consumed_segment_with_a_bad_header_is_quarantined_alone() {
    let (_temp, dir) = queue_with(100, 60);
    let files = segments(&dir);
    assert!(frames(&files[0]).last().unwrap().1 < 60);
    flip_byte(&files[0], 3);
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(
        report["cut_first_seq"].is_null(),
        "no live record is cut: {report}"
    );
    assert_eq!(quarantined(&dir), [name(&files[0])]);
    assert_records(&drain(&dir), 60..100);
}

#[test]
fn a_deleted_segment_holding_the_head_moves_the_head_past_it_and_cuts_nothing_else() {
    // Records before the gap are all consumed: only the missing records are lost.
    let (_temp, dir) = queue_with(100, 40);
    let files = segments(&dir);
    let missing = frames(&files[1]);
    let (first_missing, last_missing) = (missing[0].1, missing.last().unwrap().1);
    assert!(
        first_missing <= 40 && 40 <= last_missing,
        "the head lies in the deleted segment"
    );
    std::fs::remove_file(&files[1]).unwrap();
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(report["cut_first_seq"].is_null(), "{report}");
    assert_eq!(report["gone_first_seq"], 40);
    assert_eq!(report["gone_end_seq"], last_missing + 1);
    assert_eq!(report["head_reset_to"], last_missing + 1);
    assert!(
        quarantined(&dir).iter().all(|name| name == "head"),
        "{:?}",
        quarantined(&dir)
    );
    assert_eq!(verify_json(&dir).1, 0);
    assert_records(&drain(&dir), last_missing + 1..100);
}

#[test]
fn a_damaged_ack_log_entry_is_dropped_and_every_valid_one_kept() {
    // Records 1..30 acknowledged out of order (0 stays, so every ack is in the ack log), with a
    // sync before the last five acks (the first entry after it says that everything before it
    // was synced), then a byte flipped in an entry before that one: open refuses; repair
    // rewrites the log without that entry, the old one saved in quarantine/, and the queue
    // opens again with every other acknowledgement in force.
    let (_temp, dir) = queue_with(40, 0);
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        let mut deliveries = queue.try_recv_batch(30).unwrap();
        let first = deliveries.remove(0);
        let last_five = deliveries.split_off(24);
        for delivery in deliveries {
            delivery.ack().unwrap();
        }
        queue.sync().unwrap();
        for delivery in last_five {
            delivery.ack().unwrap();
        }
        drop(first);
        queue.sync().unwrap();
    }
    let acks = dir.join("acks");
    let bytes = std::fs::read(&acks).unwrap();
    let scan = diskspool::format::acklog::scan_ack_log(&bytes, &mut |_| {}).unwrap();
    let damaged = (diskspool::format::acklog::ACK_LOG_HEADER_LEN
        + diskspool::format::acklog::ACK_ENTRY_LEN * (scan.entries as usize - 8))
        as u64;
    flip_byte(&acks, damaged + 9);
    assert!(diskspool::Queue::open(&dir, options()).is_err());
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    let actions: Vec<&str> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|action| action["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["rewrite_ack_log"]);
    assert!(quarantined(&dir).contains(&"acks".to_string()));
    assert_eq!(verify_json(&dir).1, 0);
    let queue = diskspool::Queue::open(&dir, options()).unwrap();
    let mut left = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        left.push(record.seq());
    }
    // 0, the one record whose ack the damaged entry held, and 30..40.
    assert_eq!(left.len(), 12, "{left:?}");
    assert_eq!(left[0], 0);
    assert_eq!(&left[2..], (30..40).collect::<Vec<_>>());
}

#[test]
fn a_head_beyond_the_largest_sequence_number_is_set_to_the_oldest_record_left() {
    use diskspool::format::head::{encode_slot, HeadSlot, HeadState, HEAD_FILE_LEN};
    let (_temp, dir) = queue_with(10, 3);
    let mut head = vec![0; HEAD_FILE_LEN as usize];
    let slot = encode_slot(&HeadSlot {
        generation: 1,
        state: HeadState {
            head_seq: u64::MAX,
            hint_base: 0,
            hint_offset: 32,
            synced_seq: 0,
        },
    });
    head[..slot.len()].copy_from_slice(&slot);
    std::fs::write(dir.join("head"), head).unwrap();
    assert!(diskspool::Queue::open(&dir, options()).is_err());
    let (report, code) = repair_json(&dir, false);
    assert_eq!(code, 0, "{report}");
    assert!(quarantined(&dir).contains(&"head".to_string()));
    // Nothing lost: the consumed records not compacted yet are delivered again.
    assert_records(&drain(&dir), 0..10);
}
