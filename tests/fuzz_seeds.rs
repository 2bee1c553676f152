//! Replays the fuzz seed corpus (`fuzz/seeds/<target>/`) through the same check functions the
//! cargo-fuzz targets run, so that stable `cargo test` covers them. Crashes that fuzzing found
//! are added to the corpus as regression seeds.

use std::path::Path;

use diskspool::testkit;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
    entries.sort();
    assert!(!entries.is_empty(), "no seeds in {}", dir.display());
    for path in entries {
        let data =
            std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        eprintln!("replaying {}", path.display());
        check(&data);
    }
}

#[test]
fn segment_decode_seeds() {
    replay("segment_decode", testkit::check_segment_decode);
}

#[test]
fn head_decode_seeds() {
    replay("head_decode", testkit::check_head_decode);
}

#[test]
fn acklog_decode_seeds() {
    replay("acklog_decode", testkit::check_acklog_decode);
}

#[test]
fn open_dir_seeds() {
    replay("open_dir", testkit::check_open_dir);
}

#[test]
fn ops_model_seeds() {
    replay("ops_model", testkit::check_ops_model);
}

/// Inputs fuzzing found that still fail, kept in `fuzz/known_failures/<target>/` until they are
/// fixed (then they move to `fuzz/seeds/`): `cargo test --test fuzz_seeds -- --ignored` replays
/// them. docs/TESTING.md ("Fuzzing") says what each one shows. None is known now (the folder
/// does not exist).
#[test]
#[ignore = "known failures, not fixed yet: see docs/TESTING.md"]
fn ops_model_known_failures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/known_failures/ops_model");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("no known failures: {} does not exist", dir.display());
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        eprintln!("replaying {}", path.display());
        testkit::check_ops_model(&std::fs::read(&path).unwrap());
    }
}

/// The version 3 seed (written by `fuzz/make_seeds.py` from docs/FORMAT.md) is what it says:
/// five valid records, with the TTLs and the delay it gives them.
#[test]
fn the_version_3_seed_holds_records_with_a_ttl() {
    use diskspool::format::segment::{decode_header, walk_frames, WalkStep, SEGMENT_HEADER_LEN};
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/segment_decode/v3_ttl_records");
    let bytes = std::fs::read(&path).unwrap();
    let header = decode_header(&bytes).unwrap();
    assert_eq!(header.rules.version(), 3);
    let frames: Vec<(u64, u64, Vec<u8>)> =
        walk_frames(&bytes, SEGMENT_HEADER_LEN, header.base_seq, header.rules)
            .map(|step| match step {
                WalkStep::Frame { offset, frame } => {
                    let at = offset as usize;
                    let payload = bytes[at + frame.payload.start..at + frame.payload.end].to_vec();
                    (frame.not_before_us, frame.ttl_us, payload)
                }
                WalkStep::Bad { error, .. } => panic!("{error}"),
            })
            .collect();
    assert_eq!(
        frames,
        [
            (0, 0, b"plain".to_vec()),
            (0, 60_000_000, b"ttl".to_vec()),
            (1_700_000_000_500_000, 5, b"both".to_vec()),
            (0, 7, b"b1".to_vec()),
            (0, 7, b"b2".to_vec()),
        ]
    );
}
