//! Several processes on one queue (`Options::exclusive(false)`), 100 B records: prints a table.
//!
//! `cargo bench --bench multiprocess` (`DISKSPOOL_MP_RECORDS` records per run, default
//! 200,000). Every figure is measured in the same run as what it is compared with: one process
//! pushing then popping an exclusive queue, a shared one alone (solo), one that another
//! handle has open, and one after that handle came and went (solo again); one producer
//! process and one consumer process against one process that pushes and pops the same records,
//! and against yaque's sender and receiver in two processes; four producer processes against
//! one, under `Never` (the four push the one's records between them) and `Always` (as many
//! each), and the raw disk: 4 processes against one, each writing and syncing every record
//! itself; under `Never`, the machine's ceiling for any design with one tail: 4 processes
//! against one appending checksummed frames to one mapped file under a lock word, and 4
//! processes appending to a file each; one producer and two consumer processes taking turns
//! against the pair, and two handles that consume in turn record by record; one process
//! receiving and acknowledging with the ack log mapped and written; the wake-up latency from a push in one process to a
//! `pop_timeout` blocked in another. The child processes are this binary, run again with
//! `DISKSPOOL_MP_ROLE` set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diskspool::{Options, Queue, SyncPolicy};

const ROLE_ENV: &str = "DISKSPOOL_MP_ROLE";
const PAYLOAD: [u8; 100] = [7; 100];
/// The record that ends a consumer of the several-consumers case.
const STOP: &[u8] = b"stop";
/// Consumer processes in the several-consumers case.
const CONSUMERS: u64 = 2;

fn options(sync: SyncPolicy) -> Options {
    Options::default().exclusive(false).sync(sync)
}

fn sync_named(name: &str) -> SyncPolicy {
    match name {
        "always" => SyncPolicy::Always,
        _ => SyncPolicy::Never,
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A child: `role dir count sync`. Prints "ready", waits for a line on stdin, works, prints
/// "done".
fn child(role: &str) {
    let args: Vec<String> = std::env::var(ROLE_ENV)
        .unwrap()
        .split(' ')
        .map(str::to_owned)
        .collect();
    let (dir, count, sync) = (&args[1], args[2].parse::<u64>().unwrap(), &args[3]);
    let mut out = std::io::stdout().lock();
    let mut go = String::new();
    match role {
        "push" => {
            let queue = Queue::open(dir, options(sync_named(sync))).unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            for _ in 0..count {
                queue.push(&PAYLOAD).unwrap();
            }
            // The clock stops here: `stats` below reads every record's header.
            writeln!(out, "pushed").unwrap();
            out.flush().unwrap();
            // The group commit's work, for the parent's records-per-sync figure.
            let totals = queue.stats().unwrap().totals.unwrap_or_default();
            writeln!(
                out,
                "syncs {} {}",
                totals.commit_syncs, totals.commit_records
            )
            .unwrap();
        }
        // The raw disk under `Always`'s promise: each record written with `pwrite` at its own
        // place of one shared file and synced with `fdatasync` by its own process, which lets
        // the kernel merge the syncs of several processes.
        "rawsync" => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(Path::new(dir).join("raw"))
                .unwrap();
            let slot = std::process::id() as u64 % 64;
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            for record in 0..count {
                let at = (slot * count + record) * PAYLOAD.len() as u64;
                std::os::unix::fs::FileExt::write_all_at(&file, &PAYLOAD, at).unwrap();
                file.sync_data().unwrap();
            }
        }
        // What the machine gives any design whose producers append to one tail: a lock word
        // in a shared mapping (taken with a compare-and-swap, a few looks, then a futex
        // sleep), and under it the frame (length, checksum, sequence number, payload) copied
        // into one shared mapped file at the tail. No commit, no publication, no recovery.
        "rawtail" => {
            let RawFiles { control, mut log } = RawFiles::open(Path::new(dir));
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            let (lock, tail) = (control.word32(RAW_LOCK), control.word64(RAW_TAIL));
            for _ in 0..count {
                raw_lock(lock);
                let at = tail.load(Ordering::Relaxed);
                let seq = at / RAW_FRAME_LEN;
                encode_raw_frame(&mut log[at as usize..(at + RAW_FRAME_LEN) as usize], seq);
                tail.store(at + RAW_FRAME_LEN, Ordering::Release);
                raw_unlock(lock);
            }
        }
        // What per-process logs would get: each process appends to a file of its own, its
        // records numbered from one counter in a shared mapping (one total order).
        "rawlanes" => {
            let raw = RawFiles::open(Path::new(dir));
            let mut lane = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(Path::new(dir).join(format!("lane-{}", std::process::id())))
                .unwrap();
            lane.write_all(&vec![0u8; (count * RAW_FRAME_LEN) as usize])
                .unwrap();
            lane.sync_all().unwrap();
            // SAFETY: the file is this process's own; nothing truncates it while mapped.
            let mut log = unsafe { memmap2::MmapMut::map_mut(&lane) }.unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            let counter = raw.control.word64(RAW_TAIL);
            for record in 0..count {
                let seq = counter.fetch_add(1, Ordering::AcqRel);
                let at = (record * RAW_FRAME_LEN) as usize;
                encode_raw_frame(&mut log[at..at + RAW_FRAME_LEN as usize], seq);
            }
        }
        "pop" => {
            let queue = ready_consumer(dir.as_ref(), sync_named(sync), &mut out);
            let mut popped = 0;
            while popped < count {
                if queue
                    .pop_timeout(Duration::from_secs(10))
                    .unwrap()
                    .is_some()
                {
                    popped += 1;
                }
            }
        }
        // One of several consumers: pops until it takes a stop record.
        "pop-until-stop" => {
            let queue = ready_consumer(dir.as_ref(), sync_named(sync), &mut out);
            loop {
                if let Some(record) = queue.pop_timeout(Duration::from_secs(10)).unwrap() {
                    if record.payload() == STOP {
                        break;
                    }
                }
            }
        }
        // Pushes `count` records, then one stop record per consumer (`CONSUMERS`).
        "push-then-stop" => {
            let queue = Queue::open(dir, options(sync_named(sync))).unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            for _ in 0..count {
                queue.push(&PAYLOAD).unwrap();
            }
            for _ in 0..CONSUMERS {
                queue.push(STOP).unwrap();
            }
        }
        "latency" => {
            // Pops stamped records and prints how long each took to arrive, in µs.
            let queue = Queue::open(dir, options(SyncPolicy::Never)).unwrap();
            assert!(
                queue.pop().unwrap().is_none(),
                "reads the consumer files first"
            );
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            for _ in 0..count {
                let record = queue.pop_timeout(Duration::from_secs(10)).unwrap().unwrap();
                let arrived = now_us();
                let sent = u64::from_le_bytes(record.payload()[..8].try_into().unwrap());
                writeln!(out, "{}", arrived.saturating_sub(sent)).unwrap();
            }
            out.flush().unwrap();
        }
        "yaque-send" => {
            let mut sender = yaque::Sender::open(dir).unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            for _ in 0..count {
                sender.try_send(PAYLOAD).unwrap();
            }
        }
        "yaque-recv" => {
            let mut receiver = yaque::Receiver::open(dir).unwrap();
            writeln!(out, "ready").unwrap();
            out.flush().unwrap();
            std::io::stdin().read_line(&mut go).unwrap();
            let mut received = 0;
            while received < count {
                match receiver.try_recv() {
                    Ok(guard) => {
                        guard.commit().unwrap();
                        received += 1;
                    }
                    // Empty for now: yaque's own wait is async; spinning favours it.
                    Err(_) => std::thread::yield_now(),
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
    writeln!(out, "done").unwrap();
    out.flush().unwrap();
}

/// The raw producers' frame: length, checksum, sequence number and 100 B payload, rounded up
/// to 8 bytes (as a diskspool frame of the same payload).
const RAW_FRAME_LEN: u64 = (16 + PAYLOAD.len() as u64 + 7) & !7;
/// The raw producers' words in `raw-control`, on cache lines of their own.
const RAW_LOCK: usize = 0;
const RAW_TAIL: usize = 64;
const RAW_LOCK_WAITERS: u32 = 2;

/// The raw producers' files: `raw-tail` (the log) and `raw-control` (the lock and tail words),
/// both made by the parent ([`RawFiles::create`]).
struct RawFiles {
    control: RawControl,
    log: memmap2::MmapMut,
}

/// The mapping of `raw-control`.
struct RawControl(memmap2::MmapMut);

impl RawFiles {
    /// Zeros written and synced before the clock starts (stores into the holes of a sparse
    /// file cost a block allocation at each page fault; diskspool writes zeros ahead too).
    fn create(dir: &Path, records: u64) {
        let zeros = |name: &str, len: u64| {
            let mut file = std::fs::File::create(dir.join(name)).unwrap();
            let chunk = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let part = left.min(chunk.len() as u64) as usize;
                file.write_all(&chunk[..part]).unwrap();
                left -= part as u64;
            }
            file.sync_all().unwrap();
        };
        zeros("raw-control", 4096);
        zeros("raw-tail", records * RAW_FRAME_LEN);
    }

    fn open(dir: &Path) -> RawFiles {
        let map = |name: &str| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(name))
                .unwrap();
            // SAFETY: the bench's own files, never truncated while the children run.
            unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap()
        };
        RawFiles {
            control: RawControl(map("raw-control")),
            log: map("raw-tail"),
        }
    }
}

impl RawControl {
    fn word32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: in bounds and aligned (the mapping is page-aligned, the offsets multiples of
        // 64); other processes touch the word only atomically.
        unsafe { &*(self.0.as_ptr().add(offset) as *const AtomicU32) }
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as in `word32`.
        unsafe { &*(self.0.as_ptr().add(offset) as *const AtomicU64) }
    }
}

fn encode_raw_frame(frame: &mut [u8], seq: u64) {
    frame[0..4].copy_from_slice(&(PAYLOAD.len() as u32).to_le_bytes());
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    frame[16..16 + PAYLOAD.len()].copy_from_slice(&PAYLOAD);
    let checksum = crc32fast::hash(&frame[8..16 + PAYLOAD.len()]);
    frame[4..8].copy_from_slice(&checksum.to_le_bytes());
}

/// Takes the raw producers' lock: 0 free, 1 held, `RAW_LOCK_WAITERS` held with sleepers.
fn raw_lock(word: &AtomicU32) {
    for _ in 0..40 {
        if word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        std::hint::spin_loop();
    }
    while word.swap(RAW_LOCK_WAITERS, Ordering::Acquire) != 0 {
        // SAFETY: a futex wait on a word of a shared mapping that outlives the call.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                RAW_LOCK_WAITERS,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
}

fn raw_unlock(word: &AtomicU32) {
    if word.swap(0, Ordering::Release) == RAW_LOCK_WAITERS {
        // SAFETY: a futex wake on a word of a shared mapping that outlives the call.
        unsafe {
            libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
        }
    }
}

/// A consumer child's start: opens the queue, takes a first turn (the consumer files are read
/// before the clock starts), says "ready" and waits for the line that starts the run.
fn ready_consumer(dir: &Path, sync: SyncPolicy, out: &mut impl Write) -> Queue {
    let queue = Queue::open(dir, options(sync)).unwrap();
    assert!(
        queue.pop().unwrap().is_none(),
        "reads the consumer files first"
    );
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    std::io::stdin().read_line(&mut String::new()).unwrap();
    queue
}

fn spawn(role: &str, dir: &Path, count: u64, sync: &str) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, format!("{role} {} {count} {sync}", dir.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{role} started");
    child
}

/// Starts the children together and returns the time until each said its work is done
/// ("pushed" or "done"; what a child does after, its `stats`, its close and its exit, is not
/// timed: a producer's `stats` reads the header of every record in the queue, its close syncs
/// the segment, and both grow with the number of processes, not with their pushes).
fn run(children: &mut [Child]) -> Duration {
    let start = Instant::now();
    for child in children.iter_mut() {
        child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    for child in children.iter_mut() {
        let line = read_line_unbuffered(child.stdout.as_mut().unwrap());
        assert!(line == "pushed" || line == "done", "a child said {line:?}");
    }
    let took = start.elapsed();
    for child in children.iter_mut() {
        assert!(child.wait().unwrap().success());
    }
    took
}

/// One line of a child's output, read byte by byte so that nothing after it is taken from the
/// pipe (`group_commits` reads the rest).
fn read_line_unbuffered(stdout: &mut std::process::ChildStdout) -> String {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0];
    while stdout.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// The group-commit syncs the producer children led, and the records those syncs covered
/// (each child prints `syncs <led> <records>` when done).
fn group_commits(children: &mut [Child]) -> (u64, u64) {
    let mut total = (0, 0);
    for child in children {
        let Some(stdout) = child.stdout.take() else {
            continue;
        };
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut words = line.split(' ');
            if words.next() == Some("syncs") {
                let mut next = || words.next().and_then(|word| word.parse::<u64>().ok());
                total.0 += next().unwrap_or(0);
                total.1 += next().unwrap_or(0);
            }
        }
    }
    total
}

/// One process pushes `count` records, then pops them: how long it took.
fn push_then_pop(queue: &Queue, count: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..count {
        queue.push(&PAYLOAD).unwrap();
    }
    for _ in 0..count {
        queue.pop().unwrap().unwrap();
    }
    start.elapsed()
}

fn rate(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64()
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let role = role.split(' ').next().unwrap().to_owned();
        child(&role);
        return;
    }
    let count: u64 = std::env::var("DISKSPOOL_MP_RECORDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(200_000);
    let always_count = (count / 100).max(200);
    let root =
        tempfile::tempdir_in(std::env::var("DISKSPOOL_BENCH_DIR").unwrap_or(".".into())).unwrap();
    // Every case starts on a clean file system: the earlier cases' files removed and the rest
    // written out, so that no case pays for the writeback of another's gigabyte (the four
    // producers under Never ran at half their rate right after the one producer's 256 MB).
    let fresh = |name: &str| {
        for entry in std::fs::read_dir(root.path()).unwrap() {
            std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
        }
        rustix::fs::syncfs(std::fs::File::open(root.path()).unwrap()).unwrap();
        let dir = root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let mut rows: Vec<(String, f64)> = Vec::new();

    // One process pushes, then pops, the same records: an exclusive queue, and a shared one.
    for (name, alone) in [("exclusive", true), ("shared", false)] {
        let dir = fresh(&format!("alone-{name}"));
        let queue = Queue::open(&dir, options(SyncPolicy::Never).exclusive(alone)).unwrap();
        let took = push_then_pop(&queue, count);
        rows.push((
            format!("1 process, {name} queue: push then pop, Never"),
            rate(count, took),
        ));
    }
    // The same on a shared queue that another handle has open (idle): this handle is not
    // solo. Then once that handle closed: solo again.
    for (name, other_stays) in [
        ("another handle open", true),
        ("after another handle came and went", false),
    ] {
        let dir = fresh("alone-visited");
        let queue = Queue::open(&dir, options(SyncPolicy::Never)).unwrap();
        let other = Some(Queue::open(&dir, options(SyncPolicy::Never)).unwrap());
        let other = other.filter(|_| other_stays);
        if other.is_none() {
            diskspool::testkit::enter_solo_if_alone(&queue).unwrap();
            assert!(diskspool::testkit::is_solo(&queue));
        }
        let took = push_then_pop(&queue, count);
        rows.push((
            format!("1 process, shared queue, {name}: push then pop, Never"),
            rate(count, took),
        ));
        drop(other);
    }
    // One process receives and acknowledges records one at a time, on an exclusive queue and
    // a shared one, with the ack log's entries stored through a mapping (the default) and
    // written with a `pwrite` each (`mapped_writes(false)`).
    for (name, alone) in [("exclusive", true), ("shared", false)] {
        for (how, mapped) in [("mapped", true), ("written", false)] {
            let dir = fresh(&format!("jobs-{name}-{how}"));
            let queue = Queue::open(
                &dir,
                options(SyncPolicy::Never)
                    .exclusive(alone)
                    .mapped_writes(mapped),
            )
            .unwrap();
            let jobs = (count / 10).max(1_000);
            for _ in 0..jobs {
                queue.push(&PAYLOAD).unwrap();
            }
            let start = Instant::now();
            for _ in 0..jobs {
                queue.try_recv().unwrap().unwrap().ack().unwrap();
            }
            rows.push((
                format!("1 process, {name} queue: recv + ack, Never, ack log {how}"),
                rate(jobs, start.elapsed()),
            ));
        }
    }
    // Two handles of one process (as two processes would) taking consumer turns one record at
    // a time: each turn follows the other handle's (the head slots, the new ack log entries).
    {
        let dir = fresh("alternate");
        let first = Queue::open(&dir, options(SyncPolicy::Never)).unwrap();
        let second = Queue::open(&dir, options(SyncPolicy::Never)).unwrap();
        let handles = [&first, &second];
        let turns = (count / 10).max(1_000);
        for _ in 0..turns {
            first.push(&PAYLOAD).unwrap();
        }
        let start = Instant::now();
        for turn in 0..turns {
            handles[(turn % 2) as usize].pop().unwrap().unwrap();
        }
        rows.push((
            "2 handles popping in turn, one record each, Never".into(),
            rate(turns, start.elapsed()),
        ));
        for _ in 0..turns {
            first.push(&PAYLOAD).unwrap();
        }
        let start = Instant::now();
        for turn in 0..turns {
            let delivery = handles[(turn % 2) as usize].try_recv().unwrap().unwrap();
            delivery.ack().unwrap();
        }
        rows.push((
            "2 handles receiving and acking in turn, Never".into(),
            rate(turns, start.elapsed()),
        ));
    }
    // One producer process, one consumer process, at the same time.
    {
        let dir = fresh("pair");
        let mut children = [
            spawn("pop", &dir, count, "never"),
            spawn("push", &dir, count, "never"),
        ];
        let took = run(&mut children);
        rows.push((
            "1 producer + 1 consumer process, Never".into(),
            rate(count, took),
        ));
    }
    // One producer process, several consumer processes taking turns.
    {
        let dir = fresh("consumers");
        let mut children: Vec<Child> = (0..CONSUMERS)
            .map(|_| spawn("pop-until-stop", &dir, count, "never"))
            .collect();
        children.push(spawn("push-then-stop", &dir, count, "never"));
        let took = run(&mut children);
        rows.push((
            format!("1 producer + {CONSUMERS} consumer processes, Never"),
            rate(count, took),
        ));
    }
    // yaque: its sender and receiver in two processes.
    {
        let dir = fresh("yaque");
        let mut children = [
            spawn("yaque-recv", &dir, count, "never"),
            spawn("yaque-send", &dir, count, "never"),
        ];
        let took = run(&mut children);
        rows.push(("yaque sender + receiver process".into(), rate(count, took)));
    }
    // Producer processes alone: 1, then 4. Under Never the 4 push the single one's records
    // between them (the same bytes for the page cache and the disk to take); under Always each
    // pushes as many as the single one (a run of a few hundred syncs).
    let mut per_sync = Vec::new();
    for (sync, total) in [("never", count), ("always", always_count)] {
        for producers in [1u64, 4] {
            let per = if sync == "never" {
                total / producers
            } else {
                total
            };
            let dir = fresh(&format!("producers-{sync}-{producers}"));
            let mut children: Vec<Child> = (0..producers)
                .map(|_| spawn("push", &dir, per, sync))
                .collect();
            let took = run(&mut children);
            rows.push((
                format!("{producers} producer process(es), {sync}: aggregate push"),
                rate(per * producers, took),
            ));
            if sync == "always" {
                let (syncs, records) = group_commits(&mut children);
                per_sync.push(format!(
                    "{producers}: {:.2}",
                    records as f64 / syncs.max(1) as f64
                ));
            }
        }
    }
    // The raw disk: 1, then 4 processes writing and syncing each record themselves.
    for processes in [1u64, 4] {
        let dir = fresh(&format!("raw-{processes}"));
        let file = std::fs::File::create(dir.join("raw")).unwrap();
        file.set_len(64 * always_count * PAYLOAD.len() as u64)
            .unwrap();
        file.sync_all().unwrap();
        let mut children: Vec<Child> = (0..processes)
            .map(|_| spawn("rawsync", &dir, always_count, "always"))
            .collect();
        let took = run(&mut children);
        rows.push((
            format!("raw disk, {processes} process(es): pwrite + fdatasync per record"),
            rate(always_count * processes, took),
        ));
    }
    // The machine's own figures for processes that push without syncing: 1, then 4 processes
    // appending to one tail under a lock, the 4 taking the 1's records between them; and 4
    // processes appending to files of their own.
    for (role, processes) in [("rawtail", 1u64), ("rawtail", 4), ("rawlanes", 4)] {
        let dir = fresh(&format!("{role}-{processes}"));
        RawFiles::create(&dir, count);
        let per = count / processes;
        let mut children: Vec<Child> = (0..processes)
            .map(|_| spawn(role, &dir, per, "never"))
            .collect();
        let took = run(&mut children);
        let case = match role {
            "rawtail" => format!(
                "raw tail, {processes} process(es): lock, checksum, copy into one mapped file"
            ),
            _ => format!("raw lanes, {processes} processes: a file each, numbers from one counter"),
        };
        rows.push((case, rate(per * processes, took)));
    }
    // Wake-up latency: a consumer process blocked in pop_timeout, a push every 2 ms here.
    let (median, p99) = {
        let dir = fresh("latency");
        let samples = 500;
        let queue = Queue::open(&dir, options(SyncPolicy::Never)).unwrap();
        let mut waiter = spawn("latency", &dir, samples, "never");
        for _ in 0..samples {
            std::thread::sleep(Duration::from_millis(2));
            let mut payload = PAYLOAD;
            payload[..8].copy_from_slice(&now_us().to_le_bytes());
            queue.push(&payload).unwrap();
        }
        let mut latencies: Vec<u64> = BufReader::new(waiter.stdout.take().unwrap())
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| line.parse().ok())
            .collect();
        assert!(waiter.wait().unwrap().success());
        latencies.sort_unstable();
        let at = |fraction: f64| latencies[((latencies.len() - 1) as f64 * fraction) as usize];
        (at(0.5), at(0.99))
    };

    println!(
        "| case ({count} records of 100 B; Always: {always_count} per producer) | records/s |"
    );
    println!("|---|---:|");
    for (case, value) in &rows {
        println!("| {case} | {value:.0} |");
    }
    let find = |prefix: &str| {
        rows.iter()
            .find(|(case, _)| case.starts_with(prefix))
            .map_or(f64::NAN, |row| row.1)
    };
    println!();
    println!(
        "shared, another handle open / alone: {:.2}; after it came and went / alone: {:.2}",
        find("1 process, shared queue, another") / find("1 process, shared queue: push"),
        find("1 process, shared queue, after") / find("1 process, shared queue: push"),
    );
    println!(
        "pair / one process (exclusive): {:.2}; pair / one process (shared): {:.2}; \
         {CONSUMERS} consumers / pair: {:.2}; pair / yaque: {:.2}; 4 / 1 producers Never: {:.2}; \
         4 / 1 producers Always: {:.2}",
        find("1 producer + 1") / find("1 process, exclusive"),
        find("1 producer + 1") / find("1 process, shared"),
        find(&format!("1 producer + {CONSUMERS}")) / find("1 producer + 1"),
        find("1 producer + 1") / find("yaque"),
        find("4 producer process(es), never") / find("1 producer process(es), never"),
        find("4 producer process(es), always") / find("1 producer process(es), always"),
    );
    println!(
        "raw disk, 4 / 1 processes syncing each record: {:.2}; 1 producer Always / raw disk 1: \
         {:.2}; 4 producers Always / raw disk 4: {:.2}",
        find("raw disk, 4") / find("raw disk, 1"),
        find("1 producer process(es), always") / find("raw disk, 1"),
        find("4 producer process(es), always") / find("raw disk, 4"),
    );
    println!(
        "raw tail, 4 / 1 processes: {:.2}; 4 producers Never / raw tail 4: {:.2}; raw lanes 4 / \
         raw tail 1: {:.2}",
        find("raw tail, 4") / find("raw tail, 1"),
        find("4 producer process(es), never") / find("raw tail, 4"),
        find("raw lanes, 4") / find("raw tail, 1"),
    );
    println!(
        "recv + ack one at a time, ack log mapped / written: exclusive {:.2}, shared {:.2}",
        find("1 process, exclusive queue: recv + ack, Never, ack log mapped")
            / find("1 process, exclusive queue: recv + ack, Never, ack log written"),
        find("1 process, shared queue: recv + ack, Never, ack log mapped")
            / find("1 process, shared queue: recv + ack, Never, ack log written"),
    );
    println!(
        "records per group-commit sync under Always, by producer processes: {}",
        per_sync.join(", ")
    );
    println!("wake-up latency, push in one process to pop_timeout in another: median {median} µs, p99 {p99} µs");
}
