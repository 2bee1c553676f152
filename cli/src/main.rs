//! `spool`: the command-line tool for diskspool queues.
//!
//! The binary is thin glue: every subcommand calls the library and prints what it returns.
//! `main` maps outcomes to the documented exit codes and treats a closed standard output (as in
//! `spool dump DIR | head`) as success.

mod admin;
mod demo;
mod observe;
mod policies;
mod print;
mod quarantine;
mod records;

use std::io;
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diskspool::format::layout::CONTROL_FILE_NAME;
use diskspool::{Options, Queue, SyncPolicy};

/// Everything went well (for `verify`: no problem found).
const EXIT_OK: u8 = 0;
/// `verify` or `repair --dry-run` found problems; `repair` could not make the queue clean.
const EXIT_PROBLEMS: u8 = 1;
/// The command line or its input is wrong (clap uses 2 as well).
const EXIT_USAGE: u8 = 2;
/// `pop --wait` ran out of time without a record.
const EXIT_WAIT_EXPIRED: u8 = 3;
/// Another process has the queue open.
const EXIT_LOCKED: u8 = 4;
/// An I/O error or damaged data stopped the command.
const EXIT_FAILURE: u8 = 5;
/// The queue is at its bound (`--max-records`, `--max-bytes`) and the push was refused.
const EXIT_FULL: u8 = 6;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success (verify: no problem found)
  1  problems found (verify, repair --dry-run), or repair could not make the queue clean
  2  usage error: bad arguments or input that does not fit the queue
  3  pop --wait ran out of time
  4  the queue is locked by another process
  5  I/O error or damaged data
  6  the queue is full: push refused at its --max-records/--max-bytes bound";

/// Inspect, verify, repair and script diskspool queues.
///
/// A queue is a directory. Read-only commands (stat, inspect, dump, peek, verify) take no lock
/// and work while another process uses the queue. push, pop, purge and compact work beside a
/// service that holds the queue shared, its consumers included (they take turns); repair, config
/// with flags and quarantine --restore need the queue alone.
#[derive(Debug, Parser)]
#[command(name = "spool", version, about, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Address the queue NAME inside DIR, where DIR is a spool of several queues (see
    /// `diskspool::Spool`): every command then works on DIR/NAME.
    #[arg(long, global = true, value_name = "NAME")]
    queue: Option<String>,
    /// Open the queue shared even on a network filesystem (NFS, SMB, CephFS, FUSE): a promise
    /// that every process that opens it runs on this machine (see
    /// `Options::allow_network_filesystem`). Without it, a command beside a live service there
    /// opens the queue alone, and exits 4 while the service has it.
    #[arg(long, global = true)]
    allow_network_filesystem: bool,
}

/// `--allow-network-filesystem`, set once from the command line before any queue is opened.
static ALLOW_NETWORK_FILESYSTEM: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

impl Command {
    /// The queue directory the command works on (`demo` has none).
    fn dir_mut(&mut self) -> Option<&mut std::path::PathBuf> {
        match self {
            Command::Push(args) => Some(&mut args.dir),
            Command::Pop(args) => Some(&mut args.dir),
            Command::Peek(args) => Some(&mut args.dir),
            Command::Dump(args) => Some(&mut args.dir),
            Command::Stat(args) => Some(&mut args.dir),
            Command::Inspect(args) => Some(&mut args.dir),
            Command::Verify(args) => Some(&mut args.dir),
            Command::Compact(args) => Some(&mut args.dir),
            Command::Repair(args) => Some(&mut args.dir),
            Command::Config(args) => Some(&mut args.dir),
            Command::Purge(args) => Some(&mut args.dir),
            Command::Quarantine(args) => Some(&mut args.dir),
            Command::Demo(_) | Command::Top(_) => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append records: each argument, or each line of standard input, is one record.
    Push(records::PushArgs),
    /// Remove records and print them, oldest first, one a line.
    Pop(records::PopArgs),
    /// Print the oldest records without removing them.
    Peek(records::PeekArgs),
    /// Print records from the head (or from a sequence number) without removing them.
    Dump(records::DumpArgs),
    /// Show the number of records, positions, sizes and the age of the oldest record.
    Stat(admin::StatArgs),
    /// List segment files, or the frames of one segment.
    Inspect(admin::InspectArgs),
    /// Check every frame of every segment and the head index.
    Verify(admin::VerifyArgs),
    /// Delete fully consumed segments and report what was freed.
    Compact(admin::CompactArgs),
    /// Cut damaged data into DIR/quarantine/ so the queue serves every good record again.
    Repair(admin::RepairArgs),
    /// Show or change the queue's policies: bound, overflow rule, maximum age, dedup window.
    Config(policies::ConfigArgs),
    /// Remove every record not yet consumed (asks first on a terminal).
    Purge(policies::PurgeArgs),
    /// List what repair set aside in DIR/quarantine/, or push its readable records back.
    Quarantine(quarantine::QuarantineArgs),
    /// Show every queue of one or more spools (or queues) at once, deepest first.
    Top(observe::TopArgs),
    /// Run producers and workers on a temporary queue and print throughput and stats.
    Demo(demo::DemoArgs),
}

/// Why a command stopped.
#[derive(Debug)]
enum Failure {
    /// The library failed.
    Queue(diskspool::Error),
    /// Reading standard input or writing standard output failed.
    Stream(io::Error),
    /// The arguments or the input are unusable.
    Usage(String),
}

impl From<diskspool::Error> for Failure {
    fn from(error: diskspool::Error) -> Self {
        Failure::Queue(error)
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure::Stream(error)
    }
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    ALLOW_NETWORK_FILESYSTEM.store(
        cli.allow_network_filesystem,
        std::sync::atomic::Ordering::Relaxed,
    );
    if let Some(name) = &cli.queue {
        if let Err(error) = diskspool::validate_queue_name(name) {
            return ExitCode::from(report(Failure::Queue(error)));
        }
        match cli.command.dir_mut() {
            Some(dir) => *dir = dir.join(name),
            None => {
                return ExitCode::from(report(Failure::Usage(
                    "--queue does not apply to demo and top".to_string(),
                )))
            }
        }
    }
    let outcome = match cli.command {
        Command::Push(args) => records::push(&args),
        Command::Pop(args) => records::pop(&args),
        Command::Peek(args) => records::peek(&args),
        Command::Dump(args) => records::dump(&args),
        Command::Stat(args) => admin::stat(&args),
        Command::Inspect(args) => admin::inspect(&args),
        Command::Verify(args) => admin::verify(&args),
        Command::Compact(args) => admin::compact(&args),
        Command::Repair(args) => admin::repair(&args),
        Command::Config(args) => policies::config(&args),
        Command::Purge(args) => policies::purge(&args),
        Command::Quarantine(args) => quarantine::quarantine(&args),
        Command::Top(args) => observe::top(&args),
        Command::Demo(args) => demo::run(&args).map(|_| EXIT_OK).map_err(Failure::Queue),
    };
    ExitCode::from(match outcome {
        Ok(code) => code,
        Err(failure) => report(failure),
    })
}

/// A message for standard error: escaped like standard output when it is a terminal (a file
/// name in it may hold control characters).
fn for_stderr(message: &str) -> String {
    use std::io::IsTerminal;
    match io::stderr().is_terminal() {
        true => print::escape(message.as_bytes(), true),
        false => message.to_string(),
    }
}

/// Prints a failure to standard error and returns its exit code.
fn report(failure: Failure) -> u8 {
    use diskspool::Error;
    match failure {
        // The reader went away (`spool dump | head`): what it wanted, it got.
        Failure::Stream(error) if error.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Failure::Stream(error) => {
            eprintln!("spool: standard input or output failed: {error}");
            EXIT_FAILURE
        }
        Failure::Usage(message) => {
            eprintln!("spool: {message}");
            EXIT_USAGE
        }
        Failure::Queue(error) => {
            eprintln!("spool: {}", for_stderr(&error.to_string()));
            match error {
                Error::Locked { .. } => EXIT_LOCKED,
                // Live handles of another diskspool version coordinate through another
                // layout of `control`: the queue is theirs until they close.
                Error::UnsupportedVersion { file, .. }
                    if file.file_name() == Some(CONTROL_FILE_NAME.as_ref()) =>
                {
                    EXIT_LOCKED
                }
                Error::Full { .. } => EXIT_FULL,
                Error::RecordTooLarge { .. }
                | Error::BatchTooLarge { .. }
                | Error::InvalidOptions(_)
                | Error::NotAQueue { .. } => EXIT_USAGE,
                _ => EXIT_FAILURE,
            }
        }
    }
}

/// Fails unless `dir` exists, so that a mistyped path is not silently made into a new queue.
fn require_dir(dir: &Path) -> Result<(), Failure> {
    match std::fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => Ok(()),
        Ok(_) => Err(Failure::Usage(format!(
            "{} is not a directory",
            dir.display()
        ))),
        Err(error) => Err(Failure::Queue(diskspool::Error::Io {
            operation: "open queue directory",
            path: dir.to_path_buf(),
            source: error,
        })),
    }
}

/// How a command that changes a queue opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Shared with the processes that have it open (`Options::exclusive(false)`), so that it
    /// works beside a live service.
    Shared,
    /// The queue to this process alone (an exclusive open): exit 4 while any other process has
    /// it open, shared or not. The reason, if given, is printed before that exit.
    Alone(Option<&'static str>),
}

/// Opens a queue for a command that changes it. Only `push` creates a queue (`create`); every
/// other command on a directory that holds none fails with `Error::NotAQueue` and creates
/// nothing. A queue remembers its segment size: `segment_size` changes it, `None` keeps it.
fn open_queue(
    dir: &Path,
    segment_size: Option<u64>,
    sync: SyncPolicy,
    auto_compact: bool,
    create: bool,
    access: Access,
) -> Result<Queue, Failure> {
    open_queue_with(
        dir,
        segment_size,
        sync,
        auto_compact,
        create,
        None,
        |options| options,
        access,
    )
}

/// [`open_queue`], with the permission bits a new queue gets and the policies it is given.
#[allow(clippy::too_many_arguments)] // one call site per command, each naming what it wants
fn open_queue_with(
    dir: &Path,
    segment_size: Option<u64>,
    sync: SyncPolicy,
    auto_compact: bool,
    create: bool,
    file_mode: Option<u32>,
    policies: impl FnOnce(Options) -> Options,
    access: Access,
) -> Result<Queue, Failure> {
    let mut options = policies(
        Options::default()
            .sync(sync)
            .auto_compact(auto_compact)
            .create_if_missing(create),
    );
    if let Some(mode) = file_mode {
        options = options.file_mode(mode);
    }
    if let Some(bytes) = segment_size {
        options = options.segment_size(bytes);
    }
    let queue = match access {
        Access::Shared => {
            let allow = ALLOW_NETWORK_FILESYSTEM.load(std::sync::atomic::Ordering::Relaxed);
            let shared = options
                .clone()
                .exclusive(false)
                .allow_network_filesystem(allow);
            match open_waiting(dir, &shared) {
                // The queue refuses to be shared (an option no shared queue takes yet, or a
                // network filesystem): open it alone, as before shared queues existed.
                Err(diskspool::Error::InvalidOptions(why)) => open_alone(dir, options, &why)?,
                opened => opened?,
            }
        }
        Access::Alone(None) => open_waiting(dir, &options)?,
        Access::Alone(Some(why)) => open_alone(dir, options, why)?,
    };
    report_recovery(queue.recovery_report());
    Ok(queue)
}

/// An exclusive open for a command that needs the queue alone for the reason `why`; when
/// another process has it open, says that reason before the exit-4 message.
fn open_alone(dir: &Path, options: Options, why: &str) -> Result<Queue, diskspool::Error> {
    let opened = open_waiting(dir, &options);
    if let Err(diskspool::Error::Locked { .. }) = &opened {
        eprintln!(
            "spool: this command needs the queue alone: {}",
            for_stderr(why)
        );
    }
    opened
}

/// How long a command waits for a queue that is locked against it before it exits 4: a hold
/// of a moment (another `spool` command that needs the queue alone, a process closing it, a
/// process that forked while it had the queue open and has not yet started its new program)
/// is waited out; a service that keeps the queue is reported.
pub(crate) const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// `Queue::open`, tried again every 10 ms while the queue is locked, for up to [`LOCK_GRACE`].
pub(crate) fn open_waiting(dir: &Path, options: &Options) -> Result<Queue, diskspool::Error> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match Queue::open(dir, options.clone()) {
            Err(diskspool::Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            opened => return opened,
        }
    }
}

/// Tells the operator on standard error what opening the queue recovered from a crash.
fn report_recovery(report: &diskspool::RecoveryReport) {
    for cut in &report.truncated {
        eprintln!(
            "spool: recovered {}: cut a torn tail of {} bytes at byte {} (records {}..={} were \
             never complete: {})",
            cut.file.display(),
            cut.bytes_cut,
            cut.offset,
            cut.first_lost_seq,
            cut.last_lost_seq,
            cut.reason
        );
    }
    for removed in &report.removed_files {
        eprintln!(
            "spool: recovered: removed {}, left empty by an interrupted creation",
            removed.display()
        );
    }
    if let Some(seq) = report.restarted_at_seq {
        eprintln!(
            "spool: recovered: consumed records were lost to a power cut; new records start at \
             sequence {seq}"
        );
    }
}
