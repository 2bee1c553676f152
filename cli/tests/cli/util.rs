//! Helpers for the `spool` tests: queues made by the library, damage done by hand, and a way to
//! run the binary.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use diskspool::format::segment::{walk_frames, WalkStep, SEGMENT_HEADER_LEN};
use diskspool::{Options, Queue, SyncPolicy};

/// Segment size of the fixtures: small, so a few dozen records span several segments.
pub const SEGMENT_BYTES: u64 = 4096;

/// The `spool` binary, with `args`.
pub fn spool(args: &[&str]) -> Command {
    let mut command = Command::cargo_bin("spool").unwrap();
    command.args(args);
    command
}

/// `dir` as a string argument.
pub fn arg(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

/// The payload of record `seq` in fixtures: printable, of varying length (20..=219 bytes), and
/// different for every record, so that a record under the wrong number is detected.
pub fn payload_for(seq: u64) -> Vec<u8> {
    let len = 20 + (seq * 37 % 200) as usize;
    let mut payload = format!("record {seq} ").into_bytes();
    payload.resize(len, b'a' + (seq % 26) as u8);
    payload
}

/// Options of the fixtures: small segments, no automatic compaction (so consumed segments stay
/// on disk for the tests that need them).
pub fn options() -> Options {
    Options::default()
        .segment_size(SEGMENT_BYTES)
        .sync(SyncPolicy::Never)
        .auto_compact(false)
}

/// A queue in a new temporary directory holding records `0..count`, of which the first
/// `popped` are consumed; closed again.
pub fn queue_with(count: u64, popped: u64) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    {
        let queue = Queue::open(&dir, options()).unwrap();
        for seq in 0..count {
            assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
        }
        for seq in 0..popped {
            assert_eq!(queue.pop().unwrap().unwrap().seq(), seq);
        }
        queue.sync().unwrap();
    }
    (temp, dir)
}

/// Like [`queue_with`], but the last `unsynced` records are pushed after the last sync, so the
/// head index does not know they reached the disk: damage to them looks like an interrupted
/// write (a torn tail), which open cuts. Damage to synced records is refused instead.
pub fn queue_with_unsynced_tail(
    count: u64,
    popped: u64,
    unsynced: u64,
) -> (tempfile::TempDir, PathBuf) {
    let synced = count - unsynced;
    let (temp, dir) = queue_with(synced, popped);
    let queue = Queue::open(&dir, options()).unwrap();
    for seq in synced..count {
        assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
    }
    drop(queue);
    (temp, dir)
}

/// Segment files of `dir`, sorted by name (that is, by sequence number).
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    files.sort();
    files
}

/// The frames of a segment file as `(offset, seq)`.
pub fn frames(path: &Path) -> Vec<(u64, u64)> {
    let bytes = std::fs::read(path).unwrap();
    let header = diskspool::format::segment::decode_header(&bytes).unwrap();
    walk_frames(&bytes, SEGMENT_HEADER_LEN, header.base_seq, header.rules)
        .filter_map(|step| match step {
            WalkStep::Frame { offset, frame } => Some((offset, frame.header.seq)),
            WalkStep::Bad { .. } => None,
        })
        .collect()
}

/// Flips one bit of the byte at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Overwrites the file from `offset` to its end with zeros.
pub fn zero_from(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    for byte in &mut bytes[offset as usize..] {
        *byte = 0;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Cuts the file to `len` bytes.
pub fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_len(len).unwrap();
}

/// Rewrites a segment's header as format version `version`, with a valid checksum.
pub fn set_segment_version(path: &Path, version: u16) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[8..10].copy_from_slice(&version.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Pops everything through the library and returns the records as `(seq, payload)`.
pub fn drain(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let queue = Queue::open(dir, options()).unwrap();
    let mut records = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        records.push((record.seq(), record.payload().to_vec()));
    }
    records
}

/// Asserts that `records` are exactly the fixture records `seqs`, bytes included.
pub fn assert_records(records: &[(u64, Vec<u8>)], seqs: std::ops::Range<u64>) {
    let got: Vec<u64> = records.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(got, seqs.collect::<Vec<_>>());
    for (seq, payload) in records {
        assert_eq!(payload, &payload_for(*seq), "payload of record {seq}");
    }
}

/// Names of the files a repair set aside in `dir/quarantine` (not its manifest), sorted.
pub fn quarantined(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("quarantine"))
        .map(|entries| {
            entries
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                // The quarantine's own list of what it holds.
                .filter(|name| name != "manifest")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Runs `spool verify --json DIR` and returns the parsed report and the exit code.
pub fn verify_json(dir: &Path) -> (serde_json::Value, i32) {
    let output = spool(&["verify", "--json", arg(dir)]).output().unwrap();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "verify --json printed no report ({error}); exit {:?}, stderr: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (report, output.status.code().unwrap())
}

/// The problem kinds of a `verify --json` report, with their file names and offsets.
pub fn problems(report: &serde_json::Value) -> Vec<(String, String, u64)> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|problem| {
            let file = PathBuf::from(problem["file"].as_str().unwrap());
            (
                problem["kind"].as_str().unwrap().to_string(),
                file.file_name().unwrap().to_string_lossy().into_owned(),
                problem["offset"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The file name of `path`.
pub fn name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// The JSON of `spool stat --json`, which must succeed.
pub fn stat_json(dir: &std::path::Path) -> serde_json::Value {
    let output = spool(&["stat", "--json", arg(dir)]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}
