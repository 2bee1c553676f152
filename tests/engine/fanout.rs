//! A spool of named queues; fanout writes one independent copy per queue, all or nothing.

use diskspool::{Options, Spool, SyncPolicy};

#[test]
fn fanout_copies_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    for index in 0..10u64 {
        let message = format!("m{index}");
        let seqs = spool.fanout(message.as_bytes(), &["c", "a", "b"]).unwrap();
        assert_eq!(seqs, [index, index, index]);
    }
    let drained: Vec<Vec<u8>> = spool
        .queue("a")
        .unwrap()
        .pop_batch(100)
        .unwrap()
        .iter()
        .map(|record| record.payload().to_vec())
        .collect();
    assert_eq!(drained.len(), 10);
    for name in ["b", "c"] {
        let queue = spool.queue(name).unwrap();
        assert_eq!(queue.len(), 10, "draining one queue leaves {name} whole");
        for (index, record) in queue.pop_batch(100).unwrap().iter().enumerate() {
            assert_eq!(record.payload(), format!("m{index}").as_bytes());
        }
    }
    assert_eq!(spool.queue_names().unwrap(), ["a", "b", "c"]);
}

#[test]
fn fanout_refuses_bad_or_repeated_names() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
    assert!(spool.fanout(b"x", &["a", "a"]).is_err());
    assert!(spool.fanout(b"x", &["a", "../escape"]).is_err());
    assert!(
        spool.queue_names().unwrap().is_empty(),
        "a refused fanout writes nothing"
    );
}

#[test]
fn a_spool_is_locked_like_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let _spool = Spool::open(dir.path(), Options::default()).unwrap();
    assert!(matches!(
        Spool::open(dir.path(), Options::default()),
        Err(diskspool::Error::Locked { .. })
    ));
}

mod failing {
    //! A filesystem that fails writes to files under one directory while a switch is on.

    use std::io;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use diskspool::storage::{DirLock, LockFailure, Mapping, OsStorage, Storage, StorageFile};

    #[derive(Debug)]
    pub struct FailWrites {
        pub under: PathBuf,
        pub on: Arc<AtomicBool>,
    }

    #[derive(Debug)]
    struct File {
        inner: Box<dyn StorageFile>,
        fail: bool,
        on: Arc<AtomicBool>,
    }

    impl FailWrites {
        fn wrap(&self, path: &Path, inner: Box<dyn StorageFile>) -> Box<dyn StorageFile> {
            Box::new(File {
                inner,
                fail: path.starts_with(&self.under),
                on: self.on.clone(),
            })
        }
    }

    impl Storage for FailWrites {
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            OsStorage.create_dir_all(dir)
        }
        fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
            OsStorage.list_dir(dir)
        }
        fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            Ok(self.wrap(path, OsStorage.open(path)?))
        }
        fn create_new(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
            Ok(self.wrap(path, OsStorage.create_new(path)?))
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            OsStorage.remove_file(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            OsStorage.rename(from, to)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            OsStorage.sync_dir(dir)
        }
        fn lock_dir(&self, dir: &Path) -> Result<DirLock, LockFailure> {
            OsStorage.lock_dir(dir)
        }
    }

    impl StorageFile for File {
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.inner.read_exact_at(buf, offset)
        }
        fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if self.fail && self.on.load(Ordering::SeqCst) {
                return Err(io::Error::other("injected write failure"));
            }
            self.inner.write_all_at(buf, offset)
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.inner.sync_data()
        }
        fn map(&self, len: u64) -> io::Result<Mapping> {
            self.inner.map(len)
        }
    }
}

#[test]
fn an_interrupted_fanout_is_completed_when_the_spool_is_reopened() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let on = Arc::new(AtomicBool::new(false));
    let storage = Arc::new(failing::FailWrites {
        under: dir.path().join("b"),
        on: on.clone(),
    });
    let options = Options::default().sync(SyncPolicy::Always).storage(storage);
    {
        let spool = Spool::open(dir.path(), options.clone()).unwrap();
        spool.fanout(b"first", &["a", "b", "c"]).unwrap();
        on.store(true, Ordering::SeqCst);
        // The copy for "a" is written, the one for "b" fails, "c" is never reached.
        assert!(spool.fanout(b"second", &["a", "b", "c"]).is_err());
        on.store(false, Ordering::SeqCst);
    }
    let spool = Spool::open(dir.path(), options).unwrap();
    for name in ["a", "b", "c"] {
        let payloads: Vec<Vec<u8>> = spool
            .queue(name)
            .unwrap()
            .pop_batch(10)
            .unwrap()
            .iter()
            .map(|record| record.payload().to_vec())
            .collect();
        assert_eq!(
            payloads,
            [b"first".to_vec(), b"second".to_vec()],
            "queue {name}"
        );
    }
}
