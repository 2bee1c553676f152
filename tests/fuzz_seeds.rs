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
