//! The settings file: a queue remembers how it was created; a directory without a queue is
//! opened only when the caller allows creating one.

use diskspool::format::layout::SETTINGS_FILE_NAME;
use diskspool::storage::queue_dir::read_settings;
use diskspool::storage::OsStorage;
use diskspool::{Error, Options, Queue, SyncPolicy};

#[test]
fn a_reopen_without_a_segment_size_keeps_the_queues_own() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default().segment_size(4096)).unwrap());
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(queue.options().get_segment_size(), 4096);
    drop(queue);
    // An explicit size replaces it, durably.
    drop(Queue::open(dir.path(), Options::default().segment_size(8192)).unwrap());
    let stored = read_settings(&OsStorage, dir.path()).unwrap().unwrap();
    assert_eq!(stored.segment_size, 8192);
    let queue = Queue::open(dir.path(), Options::default()).unwrap();
    assert_eq!(queue.options().get_segment_size(), 8192);
}

#[test]
fn the_remembered_size_is_the_one_segments_roll_at() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default().segment_size(4096)).unwrap());
    let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for _ in 0..200 {
        queue.push(&[7; 100]).unwrap();
    }
    drop(queue);
    let mut segments = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().ends_with(".seg") {
            segments += 1;
            assert!(entry.metadata().unwrap().len() <= 4096);
        }
    }
    assert!(segments >= 5, "{segments} segments");
}

#[test]
fn create_if_missing_false_creates_nothing() {
    let temp = tempfile::tempdir().unwrap();
    let absent = temp.path().join("absent");
    let options = || Options::default().create_if_missing(false);
    assert!(matches!(
        Queue::open(&absent, options()),
        Err(Error::NotAQueue { dir }) if dir == absent
    ));
    assert!(!absent.exists(), "the directory was created");
    let stray = temp.path().join("stray");
    std::fs::create_dir(&stray).unwrap();
    std::fs::write(stray.join("notes.txt"), "hi").unwrap();
    assert!(matches!(
        Queue::open(&stray, options()),
        Err(Error::NotAQueue { .. })
    ));
    assert_eq!(
        std::fs::read_dir(&stray).unwrap().count(),
        1,
        "files were created"
    );
    // A queue opens without creating.
    let queue_dir = temp.path().join("q");
    Queue::open(&queue_dir, Options::default())
        .unwrap()
        .push(b"a")
        .unwrap();
    let queue = Queue::open(&queue_dir, options()).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), b"a");
}

#[test]
fn a_queue_from_before_settings_files_gets_one_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), Options::default().segment_size(4096)).unwrap();
        for n in 0..100u8 {
            queue.push(&[n; 64]).unwrap();
        }
    }
    std::fs::remove_file(dir.path().join(SETTINGS_FILE_NAME)).unwrap();
    let queue = Queue::open(dir.path(), Options::default().create_if_missing(false)).unwrap();
    assert_eq!(queue.len(), 100);
    assert!(read_settings(&OsStorage, dir.path()).unwrap().is_some());
    for n in 0..100u8 {
        assert_eq!(queue.pop().unwrap().unwrap().payload(), [n; 64]);
    }
}

#[test]
fn a_damaged_settings_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    let path = dir.path().join(SETTINGS_FILE_NAME);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[17] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    match Queue::open(dir.path(), Options::default()) {
        Err(Error::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path);
            assert_eq!(offset, 0);
        }
        other => panic!("expected a corrupt settings file, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
}

#[test]
fn a_leftover_temporary_settings_file_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    let tmp = dir.path().join(format!("{SETTINGS_FILE_NAME}.tmp"));
    std::fs::write(&tmp, b"half").unwrap();
    drop(Queue::open(dir.path(), Options::default()).unwrap());
    assert!(!tmp.exists());
}
