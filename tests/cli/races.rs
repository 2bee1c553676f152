//! The lock-free readers (`stat`, `records` behind `dump`/`peek`, `Snapshot::take` behind
//! `inspect`/`verify`) racing a running queue, deterministically: a wrapping `Storage` lets the
//! "engine" (a `Queue` open on the same directory) pop and compact at a chosen step of the
//! reader, between its listing, its head read, its opens and its reads.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use diskspool::format::layout::parse_segment_file_name;
use diskspool::storage::{DirLock, LockFailure, Mapping, OsStorage, Storage, StorageFile};
use diskspool::tools::inspect::{self, Snapshot};
use diskspool::tools::verify::{self, ProblemKind};
use diskspool::{Queue, SyncPolicy};

use crate::util::*;

/// What the reader is about to do: list the directory (the base is then 0), or open or read a
/// segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// List the directory.
    List,
    /// Open it (by name).
    Open,
    /// Read bytes from it through a handle opened earlier.
    Read,
}

type Hook = Box<dyn FnMut(u64, Step) + Send>;
type Lister = Box<dyn FnMut() -> Option<u64> + Send>;

/// The real filesystem, calling `hook` with a segment's base before the reader opens it or
/// reads from it, and `lister` (if any) while it lists the directory: the segment whose base
/// it returns is left out of that listing, as a listing that runs while the segment is created
/// may do.
#[derive(Clone)]
struct Racing {
    hook: Arc<Mutex<Hook>>,
    lister: Arc<Mutex<Option<Lister>>>,
    /// Files open now, and how many may be (`EMFILE` past it).
    open_files: Arc<Mutex<(usize, usize)>>,
}

impl fmt::Debug for Racing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Racing")
    }
}

impl Racing {
    fn new(hook: impl FnMut(u64, Step) + Send + 'static) -> Self {
        Racing {
            hook: Arc::new(Mutex::new(Box::new(hook))),
            lister: Arc::new(Mutex::new(None)),
            open_files: Arc::new(Mutex::new((0, usize::MAX))),
        }
    }

    fn with_open_files_max(self, max: usize) -> Self {
        self.open_files.lock().unwrap().1 = max;
        self
    }

    fn with_lister(self, lister: impl FnMut() -> Option<u64> + Send + 'static) -> Self {
        *self.lister.lock().unwrap() = Some(Box::new(lister));
        self
    }

    fn before(&self, path: &Path, step: Step) {
        let base = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_segment_file_name);
        if let Some(base) = base {
            (self.hook.lock().unwrap())(base, step);
        }
    }
}

impl Storage for Racing {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        OsStorage.create_dir_all(dir)
    }
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        (self.hook.lock().unwrap())(0, Step::List);
        let hidden = self
            .lister
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|lister| lister());
        let mut names = OsStorage.list_dir(dir)?;
        names.retain(|name| parse_segment_file_name(name).is_none_or(|base| Some(base) != hidden));
        Ok(names)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.open_read(path)
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.before(path, Step::Open);
        {
            let mut open_files = self.open_files.lock().unwrap();
            if open_files.0 >= open_files.1 {
                return Err(io::Error::from_raw_os_error(libc_emfile()));
            }
            open_files.0 += 1;
        }
        let inner = OsStorage.open_read(path).inspect_err(|_| {
            self.open_files.lock().unwrap().0 -= 1;
        })?;
        Ok(Box::new(RacingFile {
            inner,
            path: path.to_path_buf(),
            storage: self.clone(),
        }))
    }
    fn create_new(&self, _: &Path) -> io::Result<Box<dyn StorageFile>> {
        Err(io::Error::other("readers never create files"))
    }
    fn remove_file(&self, _: &Path) -> io::Result<()> {
        Err(io::Error::other("readers never remove files"))
    }
    fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
        Err(io::Error::other("readers never rename files"))
    }
    fn sync_dir(&self, _: &Path) -> io::Result<()> {
        Err(io::Error::other("readers never sync"))
    }
    fn lock_dir(&self, _: &Path) -> Result<DirLock, LockFailure> {
        Err(LockFailure::Io(io::Error::other("readers never lock")))
    }
}

#[derive(Debug)]
struct RacingFile {
    inner: Box<dyn StorageFile>,
    path: PathBuf,
    storage: Racing,
}

impl Drop for RacingFile {
    fn drop(&mut self) {
        self.storage.open_files.lock().unwrap().0 -= 1;
    }
}

/// `EMFILE` ("too many open files") on Linux.
fn libc_emfile() -> i32 {
    24
}

impl StorageFile for RacingFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Only a read of the frames counts as reading the segment (not a header check).
        if buf.len() > 64 {
            self.storage.before(&self.path, Step::Read);
        }
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("readers never write"))
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::other("readers never truncate"))
    }
    fn sync_data(&self) -> io::Result<()> {
        Err(io::Error::other("readers never sync"))
    }
    fn map(&self, _: u64) -> io::Result<Mapping> {
        Err(io::Error::other("readers never map"))
    }
}

/// A queue of `count` records over many 4 KiB segments, with the first `popped` consumed, open
/// (as a running queue would be) with compaction under the test's control.
fn running_queue(count: u64, popped: u64) -> (tempfile::TempDir, PathBuf, Arc<Queue>) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    let options = options().sync(SyncPolicy::Never).auto_compact(false);
    let queue = Queue::open(&dir, options).unwrap();
    for seq in 0..count {
        assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
    }
    for seq in 0..popped {
        assert_eq!(queue.pop().unwrap().unwrap().seq(), seq);
    }
    queue.compact().unwrap();
    (temp, dir, Arc::new(queue))
}

/// The bases of the segment files in `dir` now.
fn bases(dir: &Path) -> Vec<u64> {
    segments(dir)
        .iter()
        .filter_map(|path| parse_segment_file_name(&name(path)))
        .collect()
}

/// What the running queue does when the hook fires: pops every record before `seq` and compacts,
/// so that every segment wholly before it is deleted (the head index is written first).
fn pop_to(queue: &Queue, seq: u64) {
    while queue.stats().unwrap().head_seq < seq {
        queue.pop().unwrap().unwrap();
    }
    queue.compact().unwrap();
}

/// A storage that, the first time the reader is about to `step` segment `base`, makes the running
/// queue pop to `target` and compact; the flag says whether it fired.
fn pop_once_at(
    queue: &Arc<Queue>,
    base: u64,
    step: Step,
    target: u64,
) -> (Racing, Arc<Mutex<bool>>) {
    let fired = Arc::new(Mutex::new(false));
    let storage = {
        let (queue, fired) = (queue.clone(), fired.clone());
        Racing::new(move |at, now| {
            let mut fired = fired.lock().unwrap();
            if at == base && now == step && !*fired {
                *fired = true;
                pop_to(&queue, target);
            }
        })
    };
    (storage, fired)
}

/// The base of the segment after the one starting at `base`.
fn next_base(dir: &Path, base: u64) -> u64 {
    bases(dir)
        .into_iter()
        .find(|&next| next > base)
        .expect("a later segment")
}

/// `spool stat`'s reader, after each listing, finds that the queue has popped past the segment
/// holding the head and compacted it away just before the reader opens it (six listings in a
/// row: more than it retries). A segment it needs vanishing behind the head is consumption, not
/// damage: it must report the queue as it is once the queue stands still, not "segment deleted
/// while being read".
#[test]
fn stat_treats_the_head_segment_compacted_under_it_as_consumed() {
    let (_temp, dir, queue) = running_queue(1000, 10);
    assert!(bases(&dir).len() > 20);
    let fired = Arc::new(Mutex::new(0));
    let storage = {
        let (queue, dir, fired) = (queue.clone(), dir.clone(), fired.clone());
        let mut listed = false;
        Racing::new(move |base, step| {
            if step == Step::List {
                listed = true;
                return;
            }
            let mut fired = fired.lock().unwrap();
            let head = queue.stats().unwrap().head_seq;
            let holds_head = base <= head && next_base(&dir, base) > head;
            if step == Step::Open && holds_head && listed && *fired < 6 {
                listed = false;
                *fired += 1;
                pop_to(&queue, next_base(&dir, base));
            }
        })
    };
    let stat = inspect::stat(&storage, &dir).unwrap();
    assert!(*fired.lock().unwrap() >= 1, "the race was run");
    let now = queue.stats().unwrap();
    assert_eq!((stat.head_seq, stat.next_seq), (now.head_seq, 1000));
    assert_eq!(stat.len, 1000 - now.head_seq);
    assert_eq!(stat.segments, bases(&dir).len());
}

/// `spool dump`'s reader is serving the head's segment when the queue pops through the next
/// three segments and compacts them away. The records it prints must be those of one moment:
/// every record from the head it started at, in order, none skipped.
#[test]
fn records_stay_consecutive_while_the_queue_compacts_the_segments_ahead() {
    let (_temp, dir, queue) = running_queue(1000, 10);
    let all = bases(&dir);
    let (second, fifth) = (all[1], all[4]);
    let (storage, fired) = pop_once_at(&queue, second, Step::Read, fifth);
    let records: Vec<_> = inspect::records(&storage, &dir, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(*fired.lock().unwrap(), "the race was run");
    assert!(!dir
        .join(name(Path::new(&format!("{second:020}.seg"))))
        .exists());
    let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
    assert_eq!(seqs, (10..1000).collect::<Vec<_>>());
    for record in &records {
        assert_eq!(record.payload, payload_for(record.seq));
    }
}

/// The same reader finds the segments it needs compacted before it could open them: it starts
/// from the new head instead, and what it prints is still consecutive.
#[test]
fn records_start_at_the_new_head_when_the_head_segment_is_compacted_before_it_is_opened() {
    let (_temp, dir, queue) = running_queue(1000, 10);
    let all = bases(&dir);
    let (second, fourth) = (all[1], all[3]);
    let (storage, fired) = pop_once_at(&queue, second, Step::Open, fourth + 3);
    let seqs: Vec<u64> = inspect::records(&storage, &dir, None)
        .unwrap()
        .map(|record| record.unwrap().seq)
        .collect();
    assert!(*fired.lock().unwrap(), "the race was run");
    assert_eq!(seqs, (fourth + 3..1000).collect::<Vec<_>>());
}

/// `spool verify` and `spool inspect` read every segment. After each listing, once the reader
/// has read the second segment on disk, the queue pops through the two after it and compacts:
/// those two vanish between the listing and their read while the segments around them were
/// read. That is consumption (the head index, read again, has passed them), not missing
/// records, on every attempt (five listings in a row: more than verify reads the directory).
#[test]
fn verify_and_inspect_treat_segments_compacted_while_reading_as_consumed() {
    let (_temp, dir, queue) = running_queue(1500, 10);
    let fired = Arc::new(Mutex::new(0));
    let storage = {
        let (queue, dir, fired) = (queue.clone(), dir.clone(), fired.clone());
        let mut listed = false;
        Racing::new(move |base, step| {
            if step == Step::List {
                listed = true;
                return;
            }
            let mut fired = fired.lock().unwrap();
            let on_disk = bases(&dir);
            if step == Step::Read && on_disk.get(1) == Some(&base) && listed && *fired < 5 {
                listed = false;
                *fired += 1;
                pop_to(&queue, on_disk[4]);
            }
        })
    };
    let report = verify::verify(&storage, &dir).unwrap();
    assert!(*fired.lock().unwrap() >= 1, "the race was run");
    assert!(report.is_clean(), "{:?}", report.problems);

    *fired.lock().unwrap() = 4;
    let snapshot = Snapshot::take(&storage, &dir).unwrap();
    assert_eq!(*fired.lock().unwrap(), 5, "the race was run again");
    assert_eq!(snapshot.vanished.len(), 2);
    assert!(verify::check(&snapshot).is_clean());
}

/// While the reader lists the directory, the queue rolls twice, and the listing misses the
/// older of the two new segments while it shows the newer one (a directory listing is not
/// atomic). That is not a gap in the records: every reader still sees them all, on every
/// attempt (eight listings in a row).
#[test]
fn a_segment_created_during_the_listing_and_missed_by_it_is_not_a_gap() {
    let (_temp, dir, queue) = running_queue(500, 10);
    let pushed = Arc::new(Mutex::new(500));
    let rolls = Arc::new(Mutex::new(0));
    let storage = {
        let (queue, dir, pushed, rolls) =
            (queue.clone(), dir.clone(), pushed.clone(), rolls.clone());
        Racing::new(|_, _| {}).with_lister(move || {
            let mut rolls = rolls.lock().unwrap();
            if *rolls >= 8 {
                return None;
            }
            *rolls += 1;
            let mut pushed = pushed.lock().unwrap();
            let before = bases(&dir);
            while bases(&dir).len() < before.len() + 2 {
                assert_eq!(queue.push(&payload_for(*pushed)).unwrap(), *pushed);
                *pushed += 1;
            }
            let now = bases(&dir);
            Some(now[now.len() - 2])
        })
    };
    let report = verify::verify(&storage, &dir).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    // Records pushed while a reader runs may or may not be included; none before it is left
    // out.
    let before = *pushed.lock().unwrap();
    let stat = inspect::stat(&storage, &dir).unwrap();
    let after = *pushed.lock().unwrap();
    assert!((before..=after).contains(&stat.next_seq), "{stat:?}");
    assert_eq!(stat.len, stat.next_seq - 10);
    let before = *pushed.lock().unwrap();
    let seqs: Vec<u64> = inspect::records(&storage, &dir, None)
        .unwrap()
        .map(|record| record.unwrap().seq)
        .collect();
    let after = *pushed.lock().unwrap();
    let end = seqs.last().unwrap() + 1;
    assert!((before..=after).contains(&end), "{before}..={after}: {end}");
    assert_eq!(seqs, (10..end).collect::<Vec<_>>());
    assert_eq!(
        *rolls.lock().unwrap(),
        6,
        "the race was run (twice a reader)"
    );
}

/// With a segment pool, the queue pops past segments the reader holds open, moves them into the
/// pool and reuses two of them for new segments while the reader is still before them. The
/// reader must not take a reused file's new bytes for the old segment (a wrong header, "damage"):
/// its header tells, and those records, consumed meanwhile, are skipped. Every record it returns
/// is right, and none that is still in the queue is left out.
#[test]
fn records_skip_a_held_segment_reused_by_the_pool_instead_of_reporting_it_corrupt() {
    let (_temp, dir, queue) = running_queue(1000, 10);
    let all = bases(&dir);
    let (second, fifth) = (all[1], all[4]);
    let pooled = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|entry| entry.as_ref().unwrap().path().extension() == Some("free".as_ref()))
            .count()
    };
    let queue = Arc::new(Mutex::new(Arc::into_inner(queue)));
    let storage = {
        let (queue, dir) = (queue.clone(), dir.clone());
        Racing::new(move |base, step| {
            let mut queue = queue.lock().unwrap();
            if base != second || step != Step::Read || queue.is_none() {
                return;
            }
            let running = queue.take().unwrap();
            while running.stats().unwrap().head_seq < fifth {
                running.pop().unwrap().unwrap();
            }
            // Opened again with a pool, the queue compacts the four segments before `fifth`
            // into it (nothing maps them now), then reuses two for new segments.
            drop(running);
            let options = options().auto_compact(true).segment_pool(8);
            let running = Queue::open(&dir, options).unwrap();
            assert_eq!(pooled(&dir), 4);
            let mut seq = 1000;
            while pooled(&dir) > 2 {
                assert_eq!(running.push(&payload_for(seq)).unwrap(), seq);
                seq += 1;
            }
            *queue = Some(running);
        })
    };
    let records: Vec<_> = inspect::records(&storage, &dir, None)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let head = queue
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .stats()
        .unwrap()
        .head_seq;
    assert_eq!(head, fifth, "the race was run");
    for record in &records {
        assert_eq!(record.payload, payload_for(record.seq));
    }
    let seqs: Vec<u64> = records.iter().map(|record| record.seq).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in order");
    // (Records pushed meanwhile may or may not be included.)
    let live: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|&seq| (head..1000).contains(&seq))
        .collect();
    assert_eq!(
        live,
        (head..1000).collect::<Vec<_>>(),
        "nothing live skipped"
    );
    assert!(seqs[0] < second, "records held open were served");
}

/// While the reader lists the directory, the queue rolls to a new segment and syncs it, so the
/// head index the reader reads next says records beyond the listed segments were synced. The
/// listing is incomplete, not the log short: the reader completes it with a second listing,
/// taken after the head read, and what it reports reaches as far as the head says was synced
/// (`verify` compares the two).
#[test]
fn a_roll_between_the_listing_and_the_head_read_is_not_a_short_log() {
    let (_temp, dir, queue) = running_queue(500, 10);
    let pushed = Arc::new(Mutex::new(500));
    let fired = Arc::new(Mutex::new(0));
    let synced = Arc::new(Mutex::new(Vec::new()));
    let storage = {
        let (queue, dir, pushed, fired, synced_after) = (
            queue.clone(),
            dir.clone(),
            pushed.clone(),
            fired.clone(),
            synced.clone(),
        );
        Racing::new(|_, _| {}).with_lister(move || {
            let mut fired = fired.lock().unwrap();
            if *fired >= 4 {
                return None;
            }
            *fired += 1;
            let mut pushed = pushed.lock().unwrap();
            let before = bases(&dir).len();
            while bases(&dir).len() == before {
                queue.push(&payload_for(*pushed)).unwrap();
                *pushed += 1;
            }
            queue.sync().unwrap();
            synced_after.lock().unwrap().push(*pushed);
            // This listing was taken just before the roll.
            bases(&dir).last().copied()
        })
    };
    let snapshot = Snapshot::take(&storage, &dir).unwrap();
    let end = snapshot.segments.last().unwrap().next_seq();
    assert!(
        end >= snapshot.synced_seq(),
        "the log read ends at {end}, the head says {} was synced",
        snapshot.synced_seq()
    );
    assert!(verify::check(&snapshot).is_clean());
    assert_eq!(*fired.lock().unwrap(), 2, "the race was run");

    *fired.lock().unwrap() = 2;
    // Its head index was read after the third roll: everything pushed by then was synced.
    let stat = inspect::stat(&storage, &dir).unwrap();
    assert_eq!(*fired.lock().unwrap(), 4, "the race was run again");
    let synced = synced.lock().unwrap()[2];
    assert!(stat.next_seq >= synced, "{stat:?}: {synced}");
}

/// A reader that runs out of open files while it opens the segments it needs (`EMFILE`) opens
/// the rest when it reaches them: every record is still read, and the files it must open on the
/// way (the ack log, those segments) can be.
#[test]
fn records_and_stat_read_everything_past_the_limit_of_open_files() {
    let (_temp, dir, _queue) = running_queue(1000, 10);
    assert!(bases(&dir).len() > 30);
    let storage = Racing::new(|_, _| {}).with_open_files_max(20);
    let seqs: Vec<u64> = inspect::records(&storage, &dir, None)
        .unwrap()
        .map(|record| record.unwrap().seq)
        .collect();
    assert_eq!(seqs, (10..1000).collect::<Vec<_>>());
    let stat = inspect::stat(&storage, &dir).unwrap();
    assert_eq!((stat.len, stat.head_seq, stat.next_seq), (990, 10, 1000));
    assert_eq!(storage.open_files.lock().unwrap().0, 0, "every file closed");
}

/// A segment that vanishes while the head has not passed it was not compacted: the readers
/// report it, with the file, instead of skipping its records.
#[test]
fn a_live_segment_deleted_by_hand_is_still_reported() {
    let (_temp, dir, _queue) = running_queue(1000, 10);
    let all = bases(&dir);
    let (second, tenth) = (all[1], all[9]);
    let victim = dir.join(format!("{tenth:020}.seg"));
    let storage = {
        let victim = victim.clone();
        Racing::new(move |base, _| {
            if base == second {
                let _ = std::fs::remove_file(&victim);
            }
        })
    };
    let report = verify::verify(&storage, &dir).unwrap();
    let missing: Vec<_> = report
        .problems
        .iter()
        .filter(|problem| problem.kind == ProblemKind::MissingRecords)
        .collect();
    assert_eq!(missing.len(), 1, "{:?}", report.problems);
    assert_eq!(missing[0].file, dir.join(format!("{:020}.seg", all[10])));

    let error = inspect::records(&storage, &dir, None)
        .unwrap()
        .find_map(Result::err)
        .expect("the gap is reported");
    assert!(
        error.to_string().contains(&format!("records {tenth}..")),
        "{error}"
    );
}

/// Between `verify`'s listing and its head read, the queue rolls to new segments and pops, so
/// the head it reads knows records synced into segments the listing left out. That is no loss:
/// verify judges the log's end by the `synced_seq` it read before listing.
#[test]
fn verify_is_not_fooled_by_a_roll_between_its_listing_and_its_head_read() {
    let (_temp, dir, queue) = running_queue(100, 10);
    let fired = Arc::new(Mutex::new(0));
    let storage = {
        let (queue, fired) = (queue.clone(), fired.clone());
        let mut listings = 0;
        Racing::new(move |_, step| {
            if step != Step::List {
                return;
            }
            listings += 1;
            // The second listing of every view (verify takes several when it finds a problem):
            // the first one is done, the head not read yet.
            if listings % 2 == 0 && listings <= 12 {
                *fired.lock().unwrap() += 1;
                let next = queue.stats().unwrap().next_seq;
                for seq in next..next + 200 {
                    assert_eq!(queue.push(&payload_for(seq)).unwrap(), seq);
                }
                queue.pop().unwrap().unwrap();
            }
        })
    };
    let report = verify::verify(&storage, &dir).unwrap();
    assert!(*fired.lock().unwrap() >= 1, "the race was run");
    assert!(report.is_clean(), "{:?}", report.problems);
}
