//! The queue's policies on the command line: the flags shared by `spool push` (when it creates
//! or reopens a queue) and `spool config`, `spool config` itself, and `spool purge`.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use diskspool::format::settings::QueueSettings;
use diskspool::storage::queue_dir::read_settings;
use diskspool::storage::OsStorage;
use diskspool::{Options, Overflow, SyncPolicy};
use serde::Serialize;

use crate::{print, require_dir, Failure, EXIT_OK};

/// What a push does when the queue is at its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OverflowArg {
    /// The push fails (exit 6) and writes nothing.
    Reject,
    /// The oldest records are discarded to make room.
    DropOldest,
    /// The push waits until consumers make room.
    Block,
}

/// The policy flags, stored in the queue's settings file; a flag not given keeps the queue's
/// value, and 0 removes a bound.
#[derive(Debug, Args, Default)]
pub struct PolicyArgs {
    /// Records not yet consumed the queue holds at most (0: no bound).
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
    /// Bytes of records not yet consumed the queue holds at most, e.g. 512M (0: no bound).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_bytes: Option<u64>,
    /// What a push does at the bound.
    #[arg(long, value_enum, value_name = "RULE")]
    overflow: Option<OverflowArg>,
    /// Records older than this are never delivered, e.g. 30s, 15m, 2h, 7d (0: no limit).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    max_age: Option<Duration>,
    /// How long a --dedup-id is remembered (default 5m).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    dedup_window: Option<Duration>,
}

impl PolicyArgs {
    /// Whether any policy flag was given.
    pub fn any(&self) -> bool {
        self.max_records.is_some()
            || self.max_bytes.is_some()
            || self.overflow.is_some()
            || self.max_age.is_some()
            || self.dedup_window.is_some()
    }

    /// `options` with the policies given.
    pub fn apply(&self, mut options: Options) -> Options {
        if let Some(records) = self.max_records {
            options = options.max_records(records);
        }
        if let Some(bytes) = self.max_bytes {
            options = options.max_bytes(bytes);
        }
        if let Some(rule) = self.overflow {
            options = options.overflow(match rule {
                OverflowArg::Reject => Overflow::Reject,
                OverflowArg::DropOldest => Overflow::DropOldest,
                OverflowArg::Block => Overflow::Block,
            });
        }
        if let Some(age) = self.max_age {
            options = options.max_age(age);
        }
        if let Some(window) = self.dedup_window {
            options = options.dedup_window(window);
        }
        options
    }
}

/// A size in bytes, with an optional binary suffix: `4096`, `64K`, `512M`, `2G` (also `KiB`...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text} is not a size such as 4096, 64K, 512M or 2G"))?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{text}: unknown size suffix {suffix:?} (use K, M, G or T)"
            ))
        }
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text} is too large"))
}

/// A duration: a number with a unit, `ms`, `s`, `m`, `h` or `d` (`90s`, `15m`); a bare number
/// is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text} is not a duration such as 500ms, 30s, 15m, 2h or 7d"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text} is too long"))
}

/// Options of `spool config`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool config /var/spool/jobs                                 show the settings
  spool config --max-records 100000 --overflow drop-oldest /var/spool/jobs
  spool config --max-age 7d /var/spool/jobs                    records expire after a week
  spool config --max-records 0 /var/spool/jobs                 remove the bound

Without a flag it takes no lock and changes nothing. With flags it needs the queue alone (exit
4 while another process has it open, shared or not: each works by the settings it opened with)
and replaces its settings file atomically; every later open, in any process, uses the new
rules.")]
pub struct ConfigArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    #[command(flatten)]
    policies: PolicyArgs,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The settings as `config --json` and `stat --json` print them.
#[derive(Serialize)]
pub struct PoliciesJson {
    segment_size: u64,
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    overflow: &'static str,
    max_age_ms: Option<u64>,
    dedup_window_ms: u64,
}

impl PoliciesJson {
    pub fn new(settings: &QueueSettings) -> Self {
        PoliciesJson {
            segment_size: settings.segment_size,
            max_records: settings.max_records,
            max_bytes: settings.max_bytes,
            overflow: overflow_name(settings.overflow),
            max_age_ms: settings.max_age_us.map(|us| us / 1000),
            dedup_window_ms: settings
                .dedup_window_us
                .unwrap_or(diskspool::DEDUP_WINDOW_DEFAULT.as_micros() as u64)
                / 1000,
        }
    }
}

fn overflow_name(rule: Overflow) -> &'static str {
    match rule {
        Overflow::Reject => "reject",
        Overflow::DropOldest => "drop-oldest",
        Overflow::Block => "block",
    }
}

/// The policy rows of `stat` and `config`: (label, value).
pub fn policy_rows(settings: &QueueSettings) -> Vec<(String, String)> {
    let none = || String::from("-");
    let duration = |us: u64| print::age(Duration::from_micros(us));
    vec![
        (
            "max records".into(),
            settings.max_records.map_or_else(none, |n| n.to_string()),
        ),
        (
            "max bytes".into(),
            settings.max_bytes.map_or_else(none, print::size),
        ),
        ("overflow".into(), overflow_name(settings.overflow).into()),
        (
            "max age".into(),
            settings.max_age_us.map_or_else(none, duration),
        ),
        (
            "dedup window".into(),
            duration(
                settings
                    .dedup_window_us
                    .unwrap_or(diskspool::DEDUP_WINDOW_DEFAULT.as_micros() as u64),
            ),
        ),
    ]
}

/// The policy rows as a table of their own, after a blank line (for `stat`).
pub fn print_policies(out: &mut impl Write, settings: &QueueSettings) -> io::Result<()> {
    let mut rows = policy_rows(settings).into_iter();
    let Some((label, value)) = rows.next() else {
        return Ok(());
    };
    let mut table = print::Table::new(&[&label, &value]);
    for (label, value) in rows {
        table.row(vec![label, value]);
    }
    writeln!(out)?;
    table.print(out)
}

/// The queue's settings, or the defaults for a queue created before settings files existed.
pub fn stored_settings(dir: &std::path::Path) -> Result<QueueSettings, Failure> {
    Ok(read_settings(&OsStorage, dir)?
        .unwrap_or_else(|| QueueSettings::new(diskspool::SEGMENT_SIZE_DEFAULT)))
}

pub fn config(args: &ConfigArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    if args.policies.any() {
        let options = args
            .policies
            .apply(Options::default().create_if_missing(false));
        crate::open_waiting(&args.dir, &options)?.close()?;
    } else if !diskspool::storage::queue_dir::is_queue(&OsStorage, &args.dir)? {
        return Err(Failure::Queue(diskspool::Error::NotAQueue {
            dir: args.dir.clone(),
        }));
    }
    let settings = stored_settings(&args.dir)?;
    let mut out = print::stdout();
    if args.json {
        serde_json::to_writer(&mut out, &PoliciesJson::new(&settings)).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(EXIT_OK);
    }
    let mut table = print::Table::new(&["segment size", &print::size(settings.segment_size)]);
    for (label, value) in policy_rows(&settings) {
        table.row(vec![label, value]);
    }
    table.print(&mut out)?;
    Ok(EXIT_OK)
}

/// Options of `spool purge`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool purge /var/spool/jobs          asks first (on a terminal)
  spool purge --yes /var/spool/jobs    in scripts

Removes every record not yet consumed, those handed out to workers included, and frees their
segments. All or nothing: after a crash the queue holds every record or none. Prints how many
records were removed. Without --yes and without a terminal to ask on, it refuses (exit 2).
Works beside a service that holds the queue shared, its consumers included (they take turns);
records pushed after the purge stay. Exit 4 while a process keeps the queue to itself.")]
pub struct PurgeArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Do not ask.
    #[arg(long)]
    yes: bool,
}

pub fn purge(args: &PurgeArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    // Beside a live service that only pushes; exit 4 while another handle consumes.
    let queue = crate::open_queue(
        &args.dir,
        None,
        SyncPolicy::Always,
        true,
        false,
        crate::Access::Shared,
    )?;
    if !args.yes {
        if !io::stdin().is_terminal() {
            return Err(Failure::Usage(String::from(
                "purge removes every record: give --yes to confirm (no terminal to ask on)",
            )));
        }
        eprint!(
            "spool: remove all {} record(s) of {}? [y/N] ",
            queue.len(),
            crate::for_stderr(&args.dir.display().to_string())
        );
        let mut answer = String::new();
        io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("spool: nothing removed");
            return Ok(EXIT_OK);
        }
    }
    let purged = queue.purge()?;
    queue.close()?;
    let mut out = print::stdout();
    writeln!(out, "purged {purged} record(s)")?;
    Ok(EXIT_OK)
}
