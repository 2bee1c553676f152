//! What the engine refuses in a hostile directory, and where dead letters may go.

use std::time::Duration;

use diskspool::{DeadLetter, Error, Options, Queue, Spool, SyncPolicy};

#[test]
fn a_symlinked_fanout_log_is_refused_and_its_target_untouched() {
    let temp = tempfile::tempdir().unwrap();
    let spool_dir = temp.path().join("spool");
    drop(Spool::open(&spool_dir, Options::default()).unwrap());
    let precious = temp.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    let log = spool_dir.join(diskspool::format::layout::FANOUT_LOG_FILE_NAME);
    std::fs::remove_file(&log).unwrap();
    std::os::unix::fs::symlink(&precious, &log).unwrap();
    let error = Spool::open(&spool_dir, Options::default()).unwrap_err();
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert!(error.to_string().contains("fanout.log"), "{error}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
}

#[test]
fn a_dead_letter_dir_may_not_climb_out_of_the_queues_parent() {
    let temp = tempfile::tempdir().unwrap();
    for dir in ["../dead", "a/../../dead", ""] {
        let options = Options::default().dead_letter_dir(dir);
        match Queue::open(temp.path().join("q"), options) {
            Err(Error::InvalidOptions(detail)) => assert!(detail.contains("dead_letter_dir")),
            other => panic!("{dir:?}: expected InvalidOptions, got {other:?}"),
        }
    }
    assert!(
        !temp.path().join("q").exists(),
        "nothing is created for invalid options"
    );
    // Inside the parent is fine.
    Queue::open(
        temp.path().join("q"),
        Options::default().dead_letter_dir("dead/letters"),
    )
    .unwrap();
}

fn dead_letter_one(queue: &Queue) -> diskspool::Result<()> {
    queue.push(b"poison")?;
    loop {
        let delivery = queue.try_recv()?.expect("the record is there");
        delivery.nack()?;
        if queue.is_empty() {
            return Ok(());
        }
    }
}

#[test]
fn dead_letters_go_only_to_a_queue_an_empty_folder_or_a_new_one() {
    let temp = tempfile::tempdir().unwrap();
    let options = |dead: &std::path::Path| {
        Options::default()
            .sync(SyncPolicy::Never)
            .lease(Duration::from_secs(60))
            .max_deliveries(2)
            .dead_letter_dir(dead)
    };
    // Someone's folder: refused, nothing written, the record stays in the queue.
    let folder = temp.path().join("home");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("thesis.tex"), "precious").unwrap();
    let queue = Queue::open(temp.path().join("q1"), options(&folder)).unwrap();
    match dead_letter_one(&queue) {
        Err(Error::InvalidOptions(detail)) => assert!(detail.contains("holds no queue")),
        other => panic!("expected InvalidOptions, got {other:?}"),
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), 1);
    assert_eq!(queue.len(), 1, "the record stays");
    // A new absolute path, then the same one again (now a queue), and an empty folder.
    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for dead in [
        temp.path().join("new-dead"),
        temp.path().join("new-dead"),
        empty,
    ] {
        let source = tempfile::tempdir().unwrap();
        let queue = Queue::open(source.path().join("jobs"), options(&dead)).unwrap();
        dead_letter_one(&queue).unwrap();
        drop(queue);
        let dead_queue = Queue::open(&dead, Options::default()).unwrap();
        let letter = dead_queue.pop().unwrap().unwrap();
        assert_eq!(
            DeadLetter::decode(letter.payload()).unwrap().payload,
            b"poison"
        );
    }
}

#[test]
fn a_file_mode_beyond_read_and_write_or_without_the_owners_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    for mode in [0o700, 0o4600, 0o060, 0o400] {
        let options = Options::default().file_mode(mode);
        assert!(
            matches!(
                Queue::open(temp.path().join("q"), options),
                Err(Error::InvalidOptions(_))
            ),
            "{mode:o}"
        );
    }
}
