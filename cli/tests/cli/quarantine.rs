//! `spool quarantine`: listing what a repair set aside, and `--restore`.

use std::path::Path;

use diskspool::{OnDamage, Queue};

use crate::util::*;

fn quarantine_json(dir: &Path, restore: bool) -> (serde_json::Value, i32) {
    let mut args = vec!["quarantine", "--json", arg(dir)];
    if restore {
        args.insert(1, "--restore");
    }
    let output = spool(&args).output().unwrap();
    let code = output.status.code().unwrap();
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (json, code)
}

/// 100 records, damage in the middle of the second segment, repaired: the queue keeps the
/// records before the damage; the rest is in quarantine. Returns the first record cut.
fn repaired_queue(dir: &Path) -> u64 {
    let files = segments(dir);
    let frames_of_second = frames(&files[1]);
    let (offset, damaged_seq) = frames_of_second[frames_of_second.len() / 2];
    flip_byte(&files[1], offset + 30);
    let output = spool(&["repair", arg(dir)]).output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    damaged_seq
}

#[test]
fn the_listing_names_each_file_its_origin_and_its_readable_records() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let damaged_seq = repaired_queue(&dir);
    let (listing, code) = quarantine_json(&dir, false);
    assert_eq!(code, 0, "{listing}");
    let entries = listing["files"].as_array().unwrap();
    assert_eq!(entries.len(), files.len() - 1, "{listing}");
    let tail = &entries[0];
    assert_eq!(tail["from_file"], name(&files[1]));
    assert_eq!(tail["action"], "truncate_tail");
    assert_eq!(tail["first_seq"], damaged_seq);
    let first_of_third = frames(&dir.join("quarantine").join(name(&files[2])))[0].1;
    assert_eq!(tail["end_seq"], first_of_third);
    assert_eq!(
        tail["restorable_records"],
        first_of_third - damaged_seq - 1,
        "every record of the cut tail but the damaged one"
    );
    assert_eq!(listing["restorable_records"], 100 - damaged_seq - 1);
    assert_eq!(listing["restored"].as_array().unwrap().len(), 0);

    let text = spool(&["quarantine", arg(&dir)]).output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("{} at byte", name(&files[1]))),
        "{text}"
    );
    assert!(
        text.contains(&format!("{} readable records", 100 - damaged_seq - 1)),
        "{text}"
    );
    // stat and inspect say there is a quarantine.
    let stat = spool(&["stat", "--json", arg(&dir)]).output().unwrap();
    let stat: serde_json::Value = serde_json::from_slice(&stat.stdout).unwrap();
    assert_eq!(stat["quarantine_files"], entries.len());
    assert_eq!(stat["quarantine_records"], 100 - damaged_seq - 1);
    let inspect = spool(&["inspect", arg(&dir)]).output().unwrap();
    assert!(String::from_utf8(inspect.stdout)
        .unwrap()
        .contains("quarantine: "));
}

#[test]
fn restore_pushes_the_readable_records_back_once() {
    let (_temp, dir) = queue_with(100, 0);
    let damaged_seq = repaired_queue(&dir);
    let (restored, code) = quarantine_json(&dir, true);
    assert_eq!(code, 0, "{restored}");
    let records = restored["records"].as_array().unwrap();
    let from: Vec<u64> = records
        .iter()
        .map(|record| record["from_seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (damaged_seq + 1..100).collect();
    assert_eq!(from, expected, "every readable record, in order");
    // New sequence numbers, after every number the queue ever used.
    let new: Vec<u64> = records
        .iter()
        .map(|record| record["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(new, (100..100 + expected.len() as u64).collect::<Vec<_>>());

    // The queue holds the records before the damage, then the restored ones, bytes intact.
    let drained = drain(&dir);
    assert_eq!(drained.len() as u64, damaged_seq + expected.len() as u64);
    for (index, (seq, payload)) in drained.iter().enumerate() {
        let original = if *seq < damaged_seq {
            *seq
        } else {
            from[index - damaged_seq as usize]
        };
        assert_eq!(payload, &payload_for(original), "record {seq}");
    }

    // A second restore pushes nothing; the files are in quarantine/restored/.
    let (again, code) = quarantine_json(&dir, true);
    assert_eq!(code, 0);
    assert_eq!(again["records"].as_array().unwrap().len(), 0, "{again}");
    let (listing, _) = quarantine_json(&dir, false);
    assert_eq!(listing["restorable_records"], 0);
    assert_eq!(
        listing["restored"].as_array().unwrap().len(),
        restored["files"].as_array().unwrap().len()
    );
    assert!(drain(&dir).is_empty());
}

/// A damaged segment whose records were all consumed is set aside, but its records are not
/// the queue's: restore never pushes them back.
#[test]
fn consumed_records_set_aside_are_not_restored() {
    let (_temp, dir) = queue_with(100, 60);
    let files = segments(&dir);
    flip_byte(&files[0], frames(&files[0])[2].0 + 30);
    assert_eq!(
        spool(&["repair", arg(&dir)])
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
    let (listing, _) = quarantine_json(&dir, false);
    assert_eq!(listing["files"][0]["name"], name(&files[0]));
    assert!(listing["files"][0]["from_file"].is_null(), "{listing}");
    assert_eq!(listing["restorable_records"], 0);
    let (restored, code) = quarantine_json(&dir, true);
    assert_eq!(code, 0);
    assert_eq!(restored["records"].as_array().unwrap().len(), 0);
    assert_records(&drain(&dir), 60..100);
}

/// What an open under `OnDamage::Quarantine` set aside is listed and restored alike.
#[test]
fn what_a_self_healing_open_set_aside_is_restored() {
    let (_temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let (offset, damaged_seq) = frames(&files[1])[1];
    flip_byte(&files[1], offset + 30);
    {
        let queue = Queue::open(&dir, options().on_damage(OnDamage::Quarantine)).unwrap();
        let report = queue.recovery_report();
        assert_eq!(report.cut_seqs.as_ref().unwrap().start, damaged_seq);
        assert_eq!(report.quarantined_records, 100 - damaged_seq - 1);
    }
    let (listing, _) = quarantine_json(&dir, false);
    assert_eq!(listing["restorable_records"], 100 - damaged_seq - 1);
    let output = spool(&["quarantine", "--restore", arg(&dir)])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "restored record {} from quarantine/",
            damaged_seq + 1
        )),
        "{text}"
    );
    assert_eq!(drain(&dir).len() as u64, 99);
}

#[test]
fn usage_lock_and_empty_quarantine() {
    let (_temp, dir) = queue_with(3, 0);
    let (listing, code) = quarantine_json(&dir, false);
    assert_eq!(code, 0);
    assert_eq!(listing["files"].as_array().unwrap().len(), 0);
    let text = spool(&["quarantine", arg(&dir)]).output().unwrap();
    assert!(String::from_utf8(text.stdout)
        .unwrap()
        .starts_with("nothing in "));
    // Not a queue: exit 2, nothing created.
    let empty = tempfile::tempdir().unwrap();
    let code = spool(&["quarantine", arg(empty.path())])
        .output()
        .unwrap()
        .status
        .code();
    assert_eq!(code, Some(2));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    // Restore locks the queue: exit 4 while it is open.
    let queue = Queue::open(&dir, options()).unwrap();
    let code = spool(&["quarantine", "--restore", arg(&dir)])
        .output()
        .unwrap()
        .status
        .code();
    assert_eq!(code, Some(4));
    drop(queue);
}
