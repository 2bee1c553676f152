//! Watching queues: `spool stat --prometheus`, `spool stat --watch` and `spool top`. Each reads
//! the queue without locking it (`diskspool::tools::inspect::stat`), so it watches a queue a
//! service has open; the counters since open live in that service and are not on disk.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use diskspool::storage::{queue_dir, OsStorage};
use diskspool::tools::inspect;
use diskspool::Stats;

use crate::print::{self, Table};
use crate::{require_dir, Failure, EXIT_OK};

/// Set by Ctrl-C (SIGINT): a watch stops at the next moment it looks.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Makes Ctrl-C stop a watch cleanly (exit 0) instead of killing the process mid-line.
fn stop_on_interrupt() -> Result<(), Failure> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .map_err(|error| Failure::Stream(io::Error::other(error)))
}

/// Sleeps `duration` in short slices; false when interrupted meanwhile.
fn pause(duration: Duration) -> bool {
    let until = Instant::now() + duration;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// A watch interval in seconds (fractions allowed), as clap parses it.
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|interval| !interval.is_zero())
        .ok_or_else(|| format!("the interval must be more than 0 seconds, not {text}"))
}

/// The name a queue goes by in metrics: its directory's last component.
fn queue_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// A label value in the Prometheus text format: backslash, quote and newline escaped.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The gauges of `stat` in the Prometheus text exposition format, labelled with the queue's
/// name (the names of the library's `metrics` feature; `docs/METRICS.md`). The in-flight
/// count and the counters since open are not on disk and are left out.
pub fn prometheus(dir: &Path, stat: &Stats, out: &mut impl Write) -> io::Result<()> {
    let age = stat
        .oldest_ready_age(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let gauges: [(&str, &str, String); 8] = [
        (
            "diskspool_messages",
            "Records in the queue",
            stat.len.to_string(),
        ),
        (
            "diskspool_messages_ready",
            "Records deliverable now (leased ones included: leases are not on disk)",
            stat.ready.to_string(),
        ),
        (
            "diskspool_messages_delayed",
            "Records waiting for a delay or a retry",
            stat.delayed.to_string(),
        ),
        (
            "diskspool_bytes",
            "Bytes of records not consumed, frames included",
            stat.bytes().to_string(),
        ),
        (
            "diskspool_disk_bytes",
            "Bytes of the queue's files",
            stat.disk_bytes.to_string(),
        ),
        (
            "diskspool_segments",
            "Segment files",
            stat.segments.to_string(),
        ),
        (
            "diskspool_oldest_ready_age_seconds",
            "Age of the oldest ready record (0 when none is ready)",
            format!("{:.6}", age.as_secs_f64()),
        ),
        (
            "diskspool_next_seq",
            "Sequence number the next push gets",
            stat.next_seq.to_string(),
        ),
    ];
    let queue = label_value(&queue_name(dir));
    for (name, help, value) in gauges {
        writeln!(out, "# HELP {name} {help}")?;
        writeln!(out, "# TYPE {name} gauge")?;
        writeln!(out, "{name}{{queue=\"{queue}\"}} {value}")?;
    }
    Ok(())
}

/// One sample of a queue for the rates between two lines.
struct Sample {
    at: Instant,
    stat: Stats,
}

impl Sample {
    fn take(dir: &Path) -> Result<Sample, Failure> {
        Ok(Sample {
            at: Instant::now(),
            stat: inspect::stat(&OsStorage, dir)?,
        })
    }

    /// Records pushed and consumed per second since `before`.
    fn rates(&self, before: &Sample) -> (f64, f64) {
        let secs = self.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let pushed = self.stat.next_seq.saturating_sub(before.stat.next_seq);
        let consumed = |stat: &Stats| stat.next_seq.saturating_sub(stat.len);
        let taken = consumed(&self.stat).saturating_sub(consumed(&before.stat));
        (pushed as f64 / secs, taken as f64 / secs)
    }
}

const WATCH_HEADER: &str =
    "time          depth      ready    delayed       in/s      out/s   oldest ready  disk";

/// `spool stat --watch`: one line per interval, like `vmstat 1`, until `count` lines or Ctrl-C.
pub fn watch(dir: &Path, interval: Duration, count: Option<u64>) -> Result<u8, Failure> {
    require_dir(dir)?;
    stop_on_interrupt()?;
    let mut out = print::stdout();
    writeln!(out, "{WATCH_HEADER}")?;
    let mut before: Option<Sample> = None;
    let mut printed = 0;
    loop {
        let sample = Sample::take(dir)?;
        let (rate_in, rate_out) = match &before {
            Some(before) => {
                let (rate_in, rate_out) = sample.rates(before);
                (format!("{rate_in:.1}"), format!("{rate_out:.1}"))
            }
            None => (String::from("-"), String::from("-")),
        };
        let stat = &sample.stat;
        let oldest = stat
            .oldest_ready_age(SystemTime::now())
            .map_or_else(|| String::from("-"), print::age);
        writeln!(
            out,
            "{}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}  {:>13}  {}",
            clock_time(SystemTime::now()),
            stat.len,
            stat.ready,
            stat.delayed,
            rate_in,
            rate_out,
            oldest,
            print::size(stat.disk_bytes)
        )?;
        out.flush()?;
        printed += 1;
        before = Some(sample);
        if count.is_some_and(|count| printed >= count) || !pause(interval) {
            return Ok(EXIT_OK);
        }
    }
}

/// `HH:MM:SS` in UTC.
fn clock_time(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
        % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Options of `spool top`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool top /var/spool/orders              every queue of a spool, deepest first
  spool top /var/spool/a /var/spool/b      several queues or spools at once
  spool top --watch 1 /var/spool/orders    refresh every second (Ctrl-C stops)

Takes no lock. A DIR is a queue, or a spool whose queues are its subdirectories. With --watch the
DEPTH column's trend is a sparkline of the depth over the last minute.")]
pub struct TopArgs {
    /// Queue or spool directories.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Refresh every SECS seconds until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = parse_interval)]
    watch: Option<Duration>,
    /// With --watch: stop after N refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

/// The queues named by `dirs`: each a queue itself, or a spool of queues.
fn queues_of(dirs: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, Failure> {
    let mut queues = Vec::new();
    for dir in dirs {
        require_dir(dir)?;
        if queue_dir::is_queue(&OsStorage, dir)? {
            queues.push((queue_name(dir), dir.clone()));
            continue;
        }
        let entries = std::fs::read_dir(dir).map_err(|error| diskspool::Error::Io {
            operation: "list spool directory",
            path: dir.clone(),
            source: error,
        })?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if diskspool::validate_queue_name(&name).is_ok()
                && path.is_dir()
                && queue_dir::is_queue(&OsStorage, &path)?
            {
                found.push((name, path));
            }
        }
        if found.is_empty() {
            return Err(diskspool::Error::NotAQueue { dir: dir.clone() }.into());
        }
        queues.extend(found);
    }
    Ok(queues)
}

/// Depths as a sparkline, scaled to the largest.
fn sparkline(depths: &[u64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = depths.iter().copied().max().unwrap_or(0).max(1);
    depths
        .iter()
        .map(|&depth| BARS[(depth * (BARS.len() as u64 - 1)).div_ceil(max) as usize])
        .collect()
}

/// `spool top`: every queue of the given directories, deepest first.
pub fn top(args: &TopArgs) -> Result<u8, Failure> {
    let queues = queues_of(&args.dirs)?;
    let mut history: Vec<Vec<u64>> = vec![Vec::new(); queues.len()];
    if args.watch.is_some() {
        stop_on_interrupt()?;
    }
    let mut out = print::stdout();
    let mut shown = 0;
    loop {
        let now = SystemTime::now();
        let mut rows = Vec::with_capacity(queues.len());
        for (index, (name, dir)) in queues.iter().enumerate() {
            let stat = inspect::stat(&OsStorage, dir)?;
            let depths = &mut history[index];
            depths.push(stat.len);
            if let Some(interval) = args.watch {
                // The last minute of samples.
                let keep = (60.0 / interval.as_secs_f64()).ceil().clamp(2.0, 60.0) as usize;
                let excess = depths.len().saturating_sub(keep);
                depths.drain(..excess);
            }
            rows.push((stat.len, name, stat, index));
        }
        rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut header = vec![
            "QUEUE",
            "DEPTH",
            "READY",
            "DELAYED",
            "OLDEST READY",
            "BYTES",
            "DISK",
        ];
        if args.watch.is_some() {
            header.push("TREND");
        }
        let mut table = Table::new(&header);
        for (_, name, stat, index) in rows {
            let oldest = stat
                .oldest_ready_age(now)
                .map_or_else(|| String::from("-"), print::age);
            let mut cells = vec![
                name.clone(),
                stat.len.to_string(),
                stat.ready.to_string(),
                stat.delayed.to_string(),
                oldest,
                print::size(stat.bytes()),
                print::size(stat.disk_bytes),
            ];
            if args.watch.is_some() {
                cells.push(sparkline(&history[index]));
            }
            table.row(cells);
        }
        if shown > 0 {
            writeln!(out)?;
        }
        table.print(&mut out)?;
        out.flush()?;
        shown += 1;
        let Some(interval) = args.watch else {
            return Ok(EXIT_OK);
        };
        if args.count.is_some_and(|count| shown >= count) || !pause(interval) {
            return Ok(EXIT_OK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparkline_scales_to_the_largest_depth() {
        assert_eq!(sparkline(&[0, 7, 14]), "▁▅█");
        assert_eq!(sparkline(&[0, 0]), "▁▁");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn intervals_must_be_positive_seconds() {
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("-1").is_err());
        assert!(parse_interval("soon").is_err());
    }
}
