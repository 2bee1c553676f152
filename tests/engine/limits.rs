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
    assert!(options.max_record_size_bytes() < 4096);
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path(), options.clone().sync(SyncPolicy::Never)).unwrap();
    let largest = vec![9u8; options.max_record_size_bytes()];
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
