//! Damage in the active (last) segment: the read commands tell damage from an interrupted write
//! by the rule `Queue::open` applies (the head index's `synced_seq`), so `dump`, `peek`, `stat`,
//! `verify` and `pop` always agree.

use diskspool::{Queue, SyncPolicy};
use predicates::prelude::*;

use crate::util::*;

/// A flipped byte in a synced record of the active segment, with valid records after it, is
/// damage: `Queue::open` refuses it, so `pop` exits 5, `verify` reports `damaged_frame`, and
/// `dump`, `peek` and `stat` stop at it with exit 5 naming the file and offset (dump prints the
/// records before it first).
#[test]
fn synced_damage_in_the_active_segment_stops_every_reader() {
    let (_temp, dir) = queue_with(30, 2);
    let files = segments(&dir);
    let active = files.last().unwrap();
    let active_frames = frames(active);
    assert!(active_frames.len() >= 3, "{active_frames:?}");
    let (offset, damaged_seq) = active_frames[1];
    flip_byte(active, offset + 30);
    let at = format!("{}: corrupt at byte offset {offset}", active.display());

    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("damaged_frame".to_string(), name(active), offset)]
    );
    spool(&["pop", arg(&dir)])
        .assert()
        .code(5)
        .stderr(predicate::str::contains(at.as_str()));
    // (`peek` reads as far as it shows: 100 records reach the damage.)
    for command in [&["stat"][..], &["peek", "-n", "100"], &["dump"]] {
        spool(&[command, &[arg(&dir)]].concat())
            .assert()
            .code(5)
            .stderr(predicate::str::contains(at.as_str()));
    }
    let dumped = spool(&["dump", "--json", arg(&dir)]).output().unwrap();
    let seqs: Vec<u64> = String::from_utf8(dumped.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"].as_u64())
        .map(Option::unwrap)
        .collect();
    assert_eq!(seqs, (2..damaged_seq).collect::<Vec<_>>());
}

/// The same bytes above `synced_seq` are an interrupted write that a power loss persisted out of
/// order (records pushed under `Never` and never synced): `Queue::open` cuts them, so the read
/// commands stop before them with exit 0 and `verify` calls them a `torn_tail`.
#[test]
fn an_unsynced_tail_after_a_bad_frame_is_cut_by_every_reader() {
    let (_temp, dir) = queue_with(5, 0);
    {
        let options = options().sync(SyncPolicy::Never);
        let queue = Queue::open(&dir, options).unwrap();
        for seq in 5..10 {
            assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
        }
        // Closed without a sync: the head index says records from 5 on were never synced.
    }
    let files = segments(&dir);
    assert_eq!(files.len(), 1);
    let (offset, seq) = frames(&files[0])[7];
    assert_eq!(seq, 7);
    flip_byte(&files[0], offset + 30);

    let (report, code) = verify_json(&dir);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        [("torn_tail".to_string(), name(&files[0]), offset)]
    );
    let stat = stat_json(&dir);
    assert_eq!(
        (stat["len"].as_u64(), stat["next_seq"].as_u64()),
        (Some(7), Some(7))
    );
    let expected: String = (0..7)
        .map(|seq| format!("{}\n", String::from_utf8(payload_for(seq)).unwrap()))
        .collect();
    spool(&["dump", arg(&dir)])
        .assert()
        .code(0)
        .stdout(expected);
    spool(&["peek", arg(&dir)]).assert().code(0);
    // The engine agrees: it cuts the tail at open and serves the records before it.
    assert_records(&drain(&dir), 0..7);
}
