//! Size limits and option validation give clear errors.

use diskspool::{Error, Options, Queue, SyncPolicy};

#[test]
fn record_above_max_record_size_is_refused_and_the_limit_itself_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .max_record_size(1000)
        .sync(SyncPolicy::Never);
    let queue = Queue::open(dir.path(), options).unwrap();
    assert_eq!(queue.push(&[1; 1000]).unwrap(), 0);
    match queue.push(&[1; 1001]) {
        Err(Error::RecordTooLarge {
            len: 1001,
            max: 1000,
        }) => {}
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert!(matches!(
        queue.push_batch([&[1u8; 10][..], &[1; 1001]]),
        Err(Error::RecordTooLarge { .. })
    ));
    assert_eq!(queue.len(), 1, "a refused batch pushes nothing");
}

#[test]
fn default_record_limit_fits_small_segments() {
    let options = Options::default().segment_size(4096);
    assert!(options.get_max_record_size() < 4096);
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options.clone().sync(SyncPolicy::Never)).unwrap();
    let largest = vec![9u8; options.get_max_record_size()];
    let seq = queue.push(&largest).unwrap();
    assert_eq!(queue.pop().unwrap().unwrap().payload(), &largest[..]);
    assert_eq!(seq, 0);
}

#[test]
fn inconsistent_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for options in [
        Options::default().segment_size(100),
        Options::default().segment_size(4096).max_record_size(5000),
        Options::default().sync(SyncPolicy::Interval(std::time::Duration::ZERO)),
    ] {
        assert!(matches!(
            Queue::open(dir.path(), options),
            Err(Error::InvalidOptions(_))
        ));
    }
}

mod sequence_limit {
    use std::path::Path;

    use diskspool::format::frame::{self, SEQ_LIMIT};
    use diskspool::format::head::{encode_slot, HeadSlot, HeadState, HEAD_FILE_LEN};
    use diskspool::format::layout::segment_file_name;
    use diskspool::format::layout::HEAD_FILE_NAME;
    use diskspool::format::segment::{encode_header, SEGMENT_HEADER_LEN};
    use diskspool::storage::OsStorage;
    use diskspool::tools::{inspect, verify};
    use diskspool::{Error, Options, Queue, SyncPolicy};

    fn options() -> Options {
        Options::default()
            .segment_size(4096)
            .sync(SyncPolicy::Never)
    }

    /// Writes a head file whose only slot says `head_seq`, with a valid checksum.
    fn write_head(dir: &Path, head_seq: u64) {
        let mut bytes = vec![0; HEAD_FILE_LEN as usize];
        let slot = encode_slot(&HeadSlot {
            generation: 1,
            state: HeadState {
                head_seq,
                hint_base: head_seq,
                hint_offset: SEGMENT_HEADER_LEN as u64,
                synced_seq: 0,
            },
        });
        bytes[..slot.len()].copy_from_slice(&slot);
        std::fs::write(dir.join(HEAD_FILE_NAME), bytes).unwrap();
    }

    /// Open and every lock-free reader refuse the directory with `Error::Corrupt` naming one of
    /// `files` (verify: not clean, naming it).
    fn refused_everywhere(dir: &Path, files: &[&Path]) {
        match Queue::open(dir, options()) {
            Err(Error::Corrupt { file, .. }) => assert!(files.contains(&&*file), "{file:?}"),
            other => panic!("open: expected Corrupt, got {other:?}"),
        }
        match inspect::stat(&OsStorage, dir) {
            Err(Error::Corrupt { file, .. }) => assert!(files.contains(&&*file), "{file:?}"),
            other => panic!("stat: expected Corrupt, got {other:?}"),
        }
        let records = inspect::records(&OsStorage, dir, None)
            .and_then(|mut records| records.try_fold(0, |count, record| record.map(|_| count + 1)));
        match records {
            Err(Error::Corrupt { file, .. }) => assert!(files.contains(&&*file), "{file:?}"),
            other => panic!("records: expected Corrupt, got {other:?}"),
        }
        let report = verify::verify(&OsStorage, dir).unwrap();
        assert!(!report.is_clean(), "verify says clean");
        assert!(
            report
                .problems
                .iter()
                .any(|problem| files.contains(&&*problem.file)),
            "{:?}",
            report.problems
        );
    }

    /// A head with a valid checksum and `head_seq = u64::MAX` used to open, take a push at
    /// `u64::MAX` and then fail every open with "File exists", while `stat` said 0 records and
    /// `verify` said clean.
    #[test]
    fn a_head_beyond_the_largest_sequence_number_is_refused_everywhere() {
        for head_seq in [u64::MAX, SEQ_LIMIT + 1] {
            let dir = tempfile::tempdir().unwrap();
            write_head(dir.path(), head_seq);
            refused_everywhere(dir.path(), &[&dir.path().join(HEAD_FILE_NAME)]);
        }
    }

    /// A segment based at `u64::MAX - 2`, with valid frames: refused, never opened or pushed to.
    #[test]
    fn a_segment_beyond_the_largest_sequence_number_is_refused_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let base = u64::MAX - 2;
        write_head(dir.path(), base);
        let mut segment = encode_header(base).to_vec();
        for seq in base..base + 2 {
            frame::encode(&mut segment, seq, 0, b"forged", false, 0);
        }
        let path = dir.path().join(segment_file_name(base));
        std::fs::write(&path, &segment).unwrap();
        refused_everywhere(dir.path(), &[&dir.path().join(HEAD_FILE_NAME), &path]);
        // With a head below it, the segment alone is refused.
        write_head(dir.path(), 0);
        let error = Queue::open(dir.path(), options()).unwrap_err();
        assert!(
            matches!(&error, Error::Corrupt { file, .. } if *file == path),
            "{error:?}"
        );
        assert!(!verify::verify(&OsStorage, dir.path()).unwrap().is_clean());
    }

    /// Frames numbered past the limit in a segment based just below it are refused by open,
    /// never served (serving one would write a head beyond the limit).
    #[test]
    fn frames_numbered_past_the_limit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let base = SEQ_LIMIT - 1;
        write_head(dir.path(), base);
        let mut segment = encode_header(base).to_vec();
        for seq in base..base + 3 {
            frame::encode(&mut segment, seq, 0, b"forged", false, 0);
        }
        let path = dir.path().join(segment_file_name(base));
        std::fs::write(&path, &segment).unwrap();
        match Queue::open(dir.path(), options()) {
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file, path);
                assert_eq!(offset, (SEGMENT_HEADER_LEN + frame::frame_len(6)) as u64);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(!verify::verify(&OsStorage, dir.path()).unwrap().is_clean());
    }

    /// Near the limit, pushes that fit get the last numbers; one that would cross it is refused
    /// with `Error::SeqExhausted` and writes nothing; the queue keeps opening and serving.
    #[test]
    fn a_push_that_would_pass_the_largest_sequence_number_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_head(dir.path(), SEQ_LIMIT - 3);
        {
            let queue = Queue::open(dir.path(), options()).unwrap();
            assert_eq!(queue.push(b"a").unwrap(), SEQ_LIMIT - 3);
            match queue.push_batch([&b"b"[..], b"c", b"d"]) {
                Err(Error::SeqExhausted {
                    next_seq, count, ..
                }) => {
                    assert_eq!((next_seq, count), (SEQ_LIMIT - 2, 3));
                }
                other => panic!("expected SeqExhausted, got {other:?}"),
            }
            assert_eq!(
                queue.push_batch([&b"b"[..], b"c"]).unwrap(),
                SEQ_LIMIT - 2..SEQ_LIMIT
            );
            assert!(matches!(queue.push(b"e"), Err(Error::SeqExhausted { .. })));
            assert_eq!(queue.len(), 3);
        }
        let stat = inspect::stat(&OsStorage, dir.path()).unwrap();
        assert_eq!((stat.len, stat.next_seq), (3, SEQ_LIMIT));
        assert!(verify::verify(&OsStorage, dir.path()).unwrap().is_clean());
        {
            let queue = Queue::open(dir.path(), options()).unwrap();
            let seqs: Vec<u64> = queue
                .pop_batch(10)
                .unwrap()
                .iter()
                .map(|record| record.seq())
                .collect();
            assert_eq!(seqs, [SEQ_LIMIT - 3, SEQ_LIMIT - 2, SEQ_LIMIT - 1]);
            assert!(matches!(queue.push(b"e"), Err(Error::SeqExhausted { .. })));
        }
        // Every number consumed: the queue still opens, empty, and still refuses pushes.
        let queue = Queue::open(dir.path(), options()).unwrap();
        assert!(queue.is_empty());
        assert!(matches!(queue.push(b"e"), Err(Error::SeqExhausted { .. })));
    }
}
