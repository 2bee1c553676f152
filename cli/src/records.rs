//! `spool push`, `pop`, `peek` and `dump`: records in and out.

use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use diskspool::format::frame::frame_len;
use diskspool::storage::OsStorage;
use diskspool::tools::inspect::{self, StoredRecord};
use diskspool::{Queue, Record, SyncPolicy};

use crate::{open_queue, print, require_dir, Access, Failure, EXIT_OK, EXIT_WAIT_EXPIRED};

/// Bytes of records sent in one atomic `push_batch`: large enough to share one sync among many
/// lines, small enough to fit any segment size.
const PUSH_BATCH_BYTES_MAX: u64 = 1 << 20;
/// Records removed per `pop_batch` with `--all` or a large `-n`: at most this many are lost if
/// standard output fails after they were removed.
const POP_BATCH_RECORDS_MAX: usize = 256;
/// How often `pop --wait` looks for a record while it waits without holding the lock.
const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// When `push` makes records durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncArg {
    /// Every batch is synced before `push` goes on (fdatasync).
    Always,
    /// A background thread syncs every second, and once more before `push` exits.
    Interval,
    /// No sync: the records are in the operating system's cache when `push` exits; a process
    /// crash cannot lose them, a power loss can.
    Never,
}

/// Options of `spool push`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool push /var/spool/jobs 'resize 42' 'resize 43'   two records
  seq 1000 | spool push /var/spool/jobs                one record per line
  spool push --raw /var/spool/jobs < image.png         the whole input as one record
  spool push --segment-size 1048576 ./q hello          a new queue with 1 MiB segments
  spool push --file-mode 640 ./q hello                 a new queue the owner's group may read
  spool push --max-records 1000 --overflow drop-oldest ./q hello
                                                       a bounded queue keeping the newest 1000
  spool push --dedup-id order-17 ./q 'order 17'        pushed once however often it is retried
  spool push --ttl 15m ./q 'quote 42'                  never delivered after 15 minutes

Policy flags (--max-records, --max-bytes, --overflow, --max-age, --dedup-window) are stored in
the queue's settings: every later open, in any process, keeps them (see `spool config`). A push
refused at the bound exits with 6; records of earlier batches stay pushed.

Records from standard input are pushed in atomic batches of up to 1 MiB: after a crash, each
batch is either wholly in the queue or not at all. Exit status 0 means every record was accepted
under the --sync policy.

push works beside a service that holds the queue shared, bounded or not. --segment-size, the
policy flags, --dedup-id, and a queue whose settings set a dedup window need the queue alone
(exit 4 while another process has it open).")]
pub struct PushArgs {
    /// The queue directory; created when it does not exist.
    pub(crate) dir: PathBuf,
    /// Records to push, one per argument. Without any, standard input is read.
    payloads: Vec<String>,
    /// Push all of standard input as one record instead of one record per line.
    #[arg(long, conflicts_with = "payloads")]
    raw: bool,
    /// When records are made durable.
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    sync: SyncArg,
    /// Segment size in bytes (default 64 MiB). A queue remembers the size it was created
    /// with; giving it for an existing queue changes it for new segments.
    #[arg(long, value_name = "BYTES")]
    segment_size: Option<u64>,
    /// Permission bits, in octal, of a queue that does not exist yet (default 600: private to
    /// its owner; 640 lets the owner's group read it). An existing queue keeps its own.
    #[arg(long, value_name = "OCTAL", value_parser = parse_file_mode)]
    file_mode: Option<u32>,
    #[command(flatten)]
    policies: crate::policies::PolicyArgs,
    /// Deduplication id of the one record pushed: a push with the same id within the dedup
    /// window writes nothing (and prints nothing); exit 0 either way.
    #[arg(long, value_name = "KEY")]
    dedup_id: Option<String>,
    /// Time to live of every record pushed (`500ms`, `30s`, `15m`, `2h`, `7d`; a bare number is
    /// seconds), counted from its enqueue time: after it, the record is never delivered. Stored
    /// in each record, so it holds across restarts.
    #[arg(long, value_name = "DUR", value_parser = crate::policies::parse_duration)]
    ttl: Option<Duration>,
}

fn parse_file_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{text} is not an octal mode such as 600 or 640"))
}

/// Options of `spool pop`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool pop /var/spool/jobs                  remove and print the oldest record
  spool pop -n 10 /var/spool/jobs            up to 10 records
  spool pop --all --json /var/spool/jobs     everything, as JSON lines
  spool pop --wait 30 /var/spool/jobs        wait up to 30 s for a record (exit 3 if none)

pop works beside a service that holds the queue shared, its consumers included: each record
goes to one of them. pop --wait waits woken by the pushes of every process; on a queue that must
be opened alone (bounds, dedup window) it waits without the lock, polling, so other processes
can push.

Removal is durable before a record is printed; if standard output fails, the records of the
batch being printed (at most 256) are lost. An empty queue prints nothing and exits 0.

JSON lines: {\"seq\":7,\"enqueued_at\":\"2026-11-26T04:43:21.123456Z\",\"encoding\":\"utf8\",
\"payload\":\"resize 42\"}; \"encoding\" is \"base64\" when the payload is not UTF-8.")]
pub struct PopArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Remove up to this many records.
    #[arg(
        short = 'n',
        long = "count",
        value_name = "N",
        default_value_t = 1,
        conflicts_with = "all"
    )]
    count: usize,
    /// Remove every record in the queue.
    #[arg(long)]
    all: bool,
    /// When the queue is empty, wait up to SECS seconds for the first record.
    #[arg(long, value_name = "SECS")]
    wait: Option<f64>,
    /// One JSON object per record instead of the bare payload.
    #[arg(long)]
    json: bool,
}

/// Options of `spool peek`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool peek /var/spool/jobs            the oldest record
  spool peek -n 5 --json /var/spool/jobs

Takes no lock: works while another process uses the queue. Output as for `spool pop`.")]
pub struct PeekArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Show up to this many records.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 1)]
    count: usize,
    /// One JSON object per record instead of the bare payload.
    #[arg(long)]
    json: bool,
}

/// Options of `spool dump`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool dump /var/spool/jobs                    every record, oldest first
  spool dump --from 1200 --limit 10 /var/spool/jobs
  spool dump --json /var/spool/jobs | jq .seq

Takes no lock: works while another process uses the queue. --from before the head starts at
the head (consumed records are not shown). Output as for `spool pop`.")]
pub struct DumpArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Start at this sequence number instead of the head.
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    /// Show at most this many records.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// One JSON object per record instead of the bare payload.
    #[arg(long)]
    json: bool,
}

pub fn push(args: &PushArgs) -> Result<u8, Failure> {
    let sync = match args.sync {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Interval => SyncPolicy::Interval(Duration::from_secs(1)),
        SyncArg::Never => SyncPolicy::Never,
    };
    // Settings change only while no other process has the queue open (each works by the ones
    // it opened with).
    let access = if args.policies.any() || args.segment_size.is_some() {
        Access::Alone(Some(
            "--segment-size and the policy flags change the queue's settings",
        ))
    } else {
        Access::Shared
    };
    let queue = crate::open_queue_with(
        &args.dir,
        args.segment_size,
        sync,
        true,
        true,
        args.file_mode,
        |options| args.policies.apply(options),
        access,
    )?;
    let mut push_options = diskspool::Push::new();
    if let Some(ttl) = args.ttl {
        push_options = push_options.ttl(ttl);
    }
    if let Some(id) = &args.dedup_id {
        let payload = match (args.raw, args.payloads.as_slice()) {
            (true, _) => {
                let mut payload = Vec::new();
                io::stdin().lock().read_to_end(&mut payload)?;
                payload
            }
            (false, [one]) => one.as_bytes().to_vec(),
            _ => {
                return Err(Failure::Usage(String::from(
                    "--dedup-id names one record: give exactly one payload argument, or --raw",
                )))
            }
        };
        queue.push_with(&payload, push_options.dedup_id(id))?;
        if args.sync == SyncArg::Interval {
            queue.sync()?;
        }
        return Ok(EXIT_OK);
    }
    // An eighth of a segment: a batch that does not fit starts a new segment, so segments stay
    // at least seven eighths full.
    let batch_bytes_max = (queue.options().get_segment_size() / 8).min(PUSH_BATCH_BYTES_MAX);
    if args.raw {
        let mut payload = Vec::new();
        io::stdin().lock().read_to_end(&mut payload)?;
        queue.push_with(&payload, push_options)?;
    } else if !args.payloads.is_empty() {
        let payloads = args.payloads.iter().map(String::as_bytes);
        let payloads = payloads.map(|p| Ok(p.to_vec()));
        push_in_batches(&queue, payloads, batch_bytes_max, &push_options)?;
    } else {
        let lines = io::stdin().lock().split(b'\n').map(|line| {
            line.map(|mut line| {
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                line
            })
        });
        push_in_batches(&queue, lines, batch_bytes_max, &push_options)?;
    }
    if args.sync == SyncArg::Interval {
        // Dropping the queue syncs too, but cannot report a failure.
        queue.sync()?;
    }
    Ok(EXIT_OK)
}

fn push_in_batches(
    queue: &Queue,
    payloads: impl Iterator<Item = io::Result<Vec<u8>>>,
    batch_bytes_max: u64,
    push: &diskspool::Push,
) -> Result<(), Failure> {
    // Every record of the batch carries the TTL's 8 bytes.
    let prefix_len = if push.get_ttl().is_some() {
        diskspool::format::frame::TTL_PREFIX_LEN
    } else {
        0
    };
    let mut batch: Vec<Vec<u8>> = Vec::new();
    let mut batch_bytes = 0u64;
    for payload in payloads {
        let payload = payload?;
        let bytes = frame_len(payload.len() + prefix_len) as u64;
        if !batch.is_empty() && batch_bytes + bytes > batch_bytes_max {
            queue.push_batch_with(&batch, push)?;
            batch.clear();
            batch_bytes = 0;
        }
        batch_bytes += bytes;
        batch.push(payload);
    }
    if !batch.is_empty() {
        queue.push_batch_with(&batch, push)?;
    }
    Ok(())
}

pub fn pop(args: &PopArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    let wait = match args.wait {
        Some(secs) if !(0.0..=1e9).contains(&secs) => {
            return Err(Failure::Usage(format!(
                "--wait {secs} is not a number of seconds between 0 and 1e9"
            )))
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let mut left = if args.all { usize::MAX } else { args.count };
    if left == 0 {
        return Ok(EXIT_OK);
    }
    let mut out = print::stdout();
    let queue = match wait {
        Some(wait) => {
            let Some((queue, first)) = wait_for_record(&args.dir, wait)? else {
                return Ok(EXIT_WAIT_EXPIRED);
            };
            write_record(&mut out, &stored(&first), args.json)?;
            left -= 1;
            queue
        }
        None => open_queue(
            &args.dir,
            None,
            SyncPolicy::Always,
            true,
            false,
            Access::Shared,
        )?,
    };
    while left > 0 {
        let batch = queue.pop_batch(left.min(POP_BATCH_RECORDS_MAX))?;
        if batch.is_empty() {
            break;
        }
        left = left.saturating_sub(batch.len());
        for record in &batch {
            write_record(&mut out, &stored(record), args.json)?;
        }
        out.flush()?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}

fn stored(record: &Record) -> StoredRecord {
    StoredRecord {
        seq: record.seq(),
        enqueued_us: record.enqueued_at_us(),
        not_before_us: record.not_before_us(),
        ttl_us: record
            .ttl()
            .map_or(0, |ttl| u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX)),
        payload: record.payload().to_vec(),
    }
}

/// Waits until the queue holds a record and pops it; `None` when `wait` ran out first.
///
/// The queue is opened shared and waited on in `pop_timeout`: producers in every process go on
/// pushing, and each of their pushes wakes it.
///
/// A queue opened alone (one that refuses to be shared) polls instead, with short
/// `pop_timeout`s. An exclusive handle of another process that keeps the queue for a moment is
/// waited out: the open is tried again until the deadline.
fn wait_for_record(dir: &Path, wait: Duration) -> Result<Option<(Queue, Record)>, Failure> {
    let deadline = Instant::now() + wait;
    loop {
        let queue = match open_queue(dir, None, SyncPolicy::Always, true, false, Access::Shared) {
            Ok(queue) => Some(queue),
            // Another process has it alone for a moment: try again until the deadline.
            Err(Failure::Queue(diskspool::Error::Locked { .. })) if Instant::now() < deadline => {
                None
            }
            Err(failure) => return Err(failure),
        };
        if let Some(queue) = queue {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !queue.options().get_exclusive() {
                // Woken by every process's pushes: one wait to the deadline.
                let record = queue.pop_timeout(remaining)?;
                return Ok(record.map(|record| (queue, record)));
            }
            if let Some(record) = queue.pop_timeout(remaining.min(WAIT_POLL_INTERVAL))? {
                return Ok(Some((queue, record)));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(WAIT_POLL_INTERVAL.min(deadline - now));
    }
}

pub fn peek(args: &PeekArgs) -> Result<u8, Failure> {
    print_records(&args.dir, None, args.count as u64, args.json)
}

pub fn dump(args: &DumpArgs) -> Result<u8, Failure> {
    print_records(
        &args.dir,
        args.from,
        args.limit.unwrap_or(u64::MAX),
        args.json,
    )
}

fn print_records(dir: &Path, from: Option<u64>, limit: u64, json: bool) -> Result<u8, Failure> {
    require_dir(dir)?;
    let mut out = print::buffered_stdout();
    let records = inspect::records(&OsStorage, dir, from)?;
    for record in records.take(usize::try_from(limit).unwrap_or(usize::MAX)) {
        write_record(&mut out, &record?, json)?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// One record: the bare payload and a newline, or one JSON object on a line.
fn write_record<W: Write>(
    out: &mut print::Output<W>,
    record: &StoredRecord,
    json: bool,
) -> io::Result<()> {
    if !json {
        out.write_payload(&record.payload)?;
        return out.write_all(b"\n");
    }
    let (encoding, payload) = match std::str::from_utf8(&record.payload) {
        Ok(text) => ("utf8", text.to_string()),
        Err(_) => ("base64", print::base64(&record.payload)),
    };
    let line = JsonRecord {
        seq: record.seq,
        enqueued_at: print::timestamp(record.enqueued_us),
        expires_at: record.expires_at_us().map(print::timestamp),
        encoding,
        payload,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

/// The JSON form of a record; fields in this order, documented in docs/CLI.md.
#[derive(serde::Serialize)]
struct JsonRecord {
    seq: u64,
    enqueued_at: String,
    /// Only for a record pushed with a TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    encoding: &'static str,
    payload: String,
}
