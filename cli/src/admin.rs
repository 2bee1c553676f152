//! `spool stat`, `inspect`, `verify`, `compact` and `repair`: looking after a queue.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;
use diskspool::format::layout::parse_segment_file_name;
use diskspool::storage::OsStorage;
use diskspool::tools::inspect::{self, FrameInfo, Snapshot};
use diskspool::tools::repair::{self, Mode, RepairReport};
use diskspool::tools::verify::{self, VerifyReport};
use diskspool::SyncPolicy;
use serde::Serialize;

use crate::print::{self, Table};
use crate::{open_queue, require_dir, Access, Failure, EXIT_OK, EXIT_PROBLEMS};

/// Scans shorter than this finish before a progress bar would help.
const PROGRESS_BAR_BYTES_MIN: u64 = 256 << 20;

/// Options of `spool stat`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool stat /var/spool/jobs
  spool stat --json /var/spool/jobs | jq .len
  spool stat --prometheus /var/spool/jobs > /var/lib/node_exporter/jobs.prom
  spool stat --watch 1 /var/spool/jobs      one line a second (Ctrl-C stops)

Takes no lock. JSON fields: len, head_seq, next_seq, segments, live_bytes, disk_bytes,
oldest_age_ms (of the oldest ready record; null when there is none), ready, delayed, policies
(segment_size, max_records, max_bytes, overflow, max_age_ms, dedup_window_ms: the settings;
null when not set). Counts of expired, discarded and deduplicated records are counters of the
process that has the queue open (`Stats::totals`, docs/METRICS.md).")]
pub struct StatArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Print one JSON object.
    #[arg(long, conflicts_with_all = ["prometheus", "watch"])]
    json: bool,
    /// Print the gauges in the Prometheus text format (for node_exporter's textfile collector).
    #[arg(long, conflicts_with = "watch")]
    prometheus: bool,
    /// Print one line every SECS seconds (depth, ready, delayed, in/s, out/s, oldest ready age,
    /// disk) until Ctrl-C.
    #[arg(long, value_name = "SECS", value_parser = crate::observe::parse_interval)]
    watch: Option<std::time::Duration>,
    /// With --watch: stop after N lines.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u64>,
}

/// Options of `spool inspect`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool inspect /var/spool/jobs                                  one row per segment
  spool inspect /var/spool/jobs 00000000000000001200.seg         one row per frame
  spool inspect --json /var/spool/jobs

Takes no lock. STATE is consumed (every record popped; compaction deletes it), live or active
(being appended to). CHECKSUMS is ok, torn_tail, damaged, bad_header or unsupported_version.")]
pub struct InspectArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// One segment file (its name in DIR) to list frame by frame.
    segment: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `spool verify`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool verify /var/spool/jobs && echo clean
  spool verify --json /var/spool/jobs

Takes no lock. Exit status 0 when clean, 1 when any problem is found; each problem names its
file and byte offset. Problem kinds: damaged_frame, torn_tail, bad_segment_header,
unsupported_version, missing_records, head_slot_damaged, head_unreadable, stray_file.")]
pub struct VerifyArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Options of `spool compact`.
#[derive(Debug, Args)]
#[command(after_help = "\
Example:
  spool compact /var/spool/jobs

Works beside a service that holds the queue shared, its consumers included (they take turns);
exit 4 while a process keeps the queue to itself.")]
pub struct CompactArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Options of `spool repair`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool repair --dry-run /var/spool/jobs      what would be cut, changing nothing
  spool repair /var/spool/jobs

Needs the queue alone (exit 4 while another process has it open, shared or not, --dry-run too).
Keeps every record up to the first damage; copies or moves everything after it
into DIR/quarantine/ (never deletes data), prints the sequence numbers cut, then verifies.
Exit status: 0 when the queue is clean afterwards (or was clean), 1 when --dry-run found
something to repair or the queue is still not clean. docs/CLI.md describes every step.")]
pub struct RepairArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Only print what would be done.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `spool stat --json`; field names fixed by the CLI's contract.
#[derive(Serialize)]
struct StatJson {
    len: u64,
    head_seq: u64,
    next_seq: u64,
    segments: usize,
    live_bytes: u64,
    disk_bytes: u64,
    oldest_age_ms: Option<u64>,
    policies: crate::policies::PoliciesJson,
    ready: u64,
    delayed: u64,
    quarantine_files: usize,
    quarantine_records: u64,
    /// The processes whose shared handles have the queue open (empty: none, or an exclusive
    /// handle's queue).
    shared_by: Vec<u32>,
}

pub fn stat(args: &StatArgs) -> Result<u8, Failure> {
    if let Some(interval) = args.watch {
        return crate::observe::watch(&args.dir, interval, args.count);
    }
    require_dir(&args.dir)?;
    let stat = inspect::stat(&OsStorage, &args.dir)?;
    // The policies, from the settings file (issue 13).
    let settings = crate::policies::stored_settings(&args.dir)?;
    let age = stat.oldest_age(SystemTime::now());
    let quarantined = diskspool::tools::quarantine::list(&OsStorage, &args.dir)?;
    let shared_by = diskspool::storage::queue_dir::sharing_processes(&OsStorage, &args.dir);
    let mut out = print::stdout();
    if args.prometheus {
        crate::observe::prometheus(&args.dir, &stat, &mut out)?;
        return Ok(EXIT_OK);
    }
    if args.json {
        let json = StatJson {
            len: stat.len,
            head_seq: stat.head_seq,
            next_seq: stat.next_seq,
            segments: stat.segments,
            live_bytes: stat.live_bytes,
            disk_bytes: stat.disk_bytes,
            oldest_age_ms: age.map(|age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            policies: crate::policies::PoliciesJson::new(&settings),
            ready: stat.ready,
            delayed: stat.delayed,
            quarantine_files: quarantined.files.len(),
            quarantine_records: quarantined.restorable_records(),
            shared_by,
        };
        serde_json::to_writer(&mut out, &json).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new(&["records", &stat.len.to_string()]);
    table.row(vec!["ready".into(), stat.ready.to_string()]);
    table.row(vec!["delayed".into(), stat.delayed.to_string()]);
    table.row(vec!["head seq".into(), stat.head_seq.to_string()]);
    table.row(vec!["next seq".into(), stat.next_seq.to_string()]);
    table.row(vec!["segments".into(), stat.segments.to_string()]);
    table.row(vec!["live bytes".into(), print::size(stat.live_bytes)]);
    table.row(vec!["disk bytes".into(), print::size(stat.disk_bytes)]);
    let oldest = age.map_or_else(|| String::from("-"), print::age);
    table.row(vec!["oldest ready age".into(), oldest]);
    if let Some(summary) = crate::quarantine::summary(&quarantined) {
        table.row(vec!["quarantine".into(), summary]);
    }
    if !shared_by.is_empty() {
        let pids: Vec<String> = shared_by.iter().map(u32::to_string).collect();
        let noun = if pids.len() == 1 {
            "process"
        } else {
            "processes"
        };
        table.row(vec![
            "shared by".into(),
            format!("{noun} {}", pids.join(", ")),
        ]);
    }
    table.print(&mut out)?;
    crate::policies::print_policies(&mut out, &settings)?;
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct SegmentJson<'a> {
    name: &'a str,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    records: u64,
    bytes: u64,
    state: &'static str,
    checksums: &'static str,
}

#[derive(Serialize)]
struct InspectJson<'a> {
    head_seq: Option<u64>,
    segments: Vec<SegmentJson<'a>>,
    strays: &'a [String],
    quarantine: Vec<String>,
}

#[derive(Serialize)]
struct FrameJson {
    offset: u64,
    seq: u64,
    len: u32,
    enqueued_at: String,
    /// Only for a record pushed with a TTL.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
    batch_continues: bool,
    crc_ok: bool,
    error: Option<String>,
}

pub fn inspect(args: &InspectArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    match &args.segment {
        Some(segment) => inspect_segment(&args.dir, segment, args.json),
        None => inspect_dir(&args.dir, args.json),
    }
}

fn inspect_dir(dir: &Path, json: bool) -> Result<u8, Failure> {
    let snapshot = Snapshot::take(&OsStorage, dir)?;
    let quarantined = diskspool::tools::quarantine::list(&OsStorage, dir)?;
    let rows: Vec<SegmentJson> = snapshot
        .segments
        .iter()
        .enumerate()
        .map(|(index, scan)| SegmentJson {
            name: &scan.name,
            first_seq: scan.first_seq,
            last_seq: scan.last_seq,
            records: scan.records,
            bytes: scan.file_len,
            state: snapshot.segment_state(index).name(),
            checksums: snapshot
                .segment_health(index)
                .map_or("unknown", |health| health.name()),
        })
        .collect();
    let mut out = print::stdout();
    if json {
        let json = InspectJson {
            head_seq: snapshot.head_seq(),
            segments: rows,
            strays: &snapshot.strays,
            quarantine: quarantined
                .files
                .iter()
                .map(|file| file.name.clone())
                .collect(),
        };
        serde_json::to_writer(&mut out, &json).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(EXIT_OK);
    }
    let text = |value: Option<u64>| value.map_or_else(|| String::from("-"), |v| v.to_string());
    let mut table = Table::new(&[
        "SEGMENT",
        "FIRST",
        "LAST",
        "RECORDS",
        "SIZE",
        "STATE",
        "CHECKSUMS",
    ]);
    for row in &rows {
        table.row(vec![
            row.name.to_string(),
            text(row.first_seq),
            text(row.last_seq),
            row.records.to_string(),
            print::size(row.bytes),
            row.state.to_string(),
            row.checksums.to_string(),
        ]);
    }
    table.print(&mut out)?;
    match snapshot.head_seq() {
        Some(head) => writeln!(out, "head at sequence {head}")?,
        None => writeln!(out, "head index unreadable (run `spool verify`)")?,
    }
    for stray in &snapshot.strays {
        writeln!(out, "stray file: {stray}")?;
    }
    if let Some(summary) = crate::quarantine::summary(&quarantined) {
        writeln!(out, "quarantine: {summary}")?;
    }
    Ok(EXIT_OK)
}

fn inspect_segment(dir: &Path, segment: &str, json: bool) -> Result<u8, Failure> {
    // Accept a path too: the name is what identifies the segment.
    let name = Path::new(segment)
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(base) = parse_segment_file_name(&name) else {
        return Err(Failure::Usage(format!(
            "{segment} is not a segment file name (20 digits and .seg)"
        )));
    };
    let path = dir.join(&name);
    let Some(bytes) = inspect::read_file(&OsStorage, &path)? else {
        return Err(Failure::Queue(diskspool::Error::Io {
            operation: "open segment",
            path,
            source: io::Error::from(io::ErrorKind::NotFound),
        }));
    };
    let frames = inspect::segment_frames(base, &bytes);
    let scan = inspect::scan_segment(&name, base, &bytes);
    let mut out = print::buffered_stdout();
    if json {
        let frames: Vec<FrameJson> = frames.iter().map(frame_json).collect();
        serde_json::to_writer(&mut out, &frames).map_err(io::Error::from)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new(&["OFFSET", "SEQ", "LENGTH", "ENQUEUED", "CRC"]);
    for frame in &frames {
        let crc = match &frame.error {
            None => String::from("ok"),
            Some(error) => format!("BAD: {error}"),
        };
        table.row(vec![
            frame.offset.to_string(),
            frame.seq.to_string(),
            frame.payload_len.to_string(),
            print::timestamp(frame.enqueued_us),
            crc,
        ]);
    }
    table.print(&mut out)?;
    if let inspect::HeaderStatus::Bad(error) = &scan.header {
        writeln!(out, "header: {error}")?;
    }
    out.flush()?;
    Ok(EXIT_OK)
}

fn frame_json(frame: &FrameInfo) -> FrameJson {
    FrameJson {
        offset: frame.offset,
        seq: frame.seq,
        len: frame.payload_len,
        enqueued_at: print::timestamp(frame.enqueued_us),
        expires_at: diskspool::format::frame::expires_at_us(frame.enqueued_us, frame.ttl_us)
            .map(print::timestamp),
        batch_continues: frame.batch_continues,
        crc_ok: frame.crc_ok,
        error: frame.error.clone(),
    }
}

#[derive(Serialize)]
struct ProblemJson {
    kind: &'static str,
    file: String,
    offset: u64,
    detail: String,
}

#[derive(Serialize)]
struct VerifyJson {
    clean: bool,
    segments: usize,
    records: u64,
    bytes: u64,
    head_seq: Option<u64>,
    problems: Vec<ProblemJson>,
}

fn verify_json(report: &VerifyReport) -> VerifyJson {
    VerifyJson {
        clean: report.is_clean(),
        segments: report.segments,
        records: report.records,
        bytes: report.bytes,
        head_seq: report.head_seq,
        problems: report
            .problems
            .iter()
            .map(|problem| ProblemJson {
                kind: problem.kind.name(),
                file: problem.file.display().to_string(),
                offset: problem.offset,
                detail: problem.detail.clone(),
            })
            .collect(),
    }
}

pub fn verify(args: &VerifyArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    let mut bar: Option<indicatif::ProgressBar> = None;
    let on_terminal = io::stderr().is_terminal();
    let mut progress = |done: inspect::ScanProgress| {
        if !on_terminal || done.bytes_total < PROGRESS_BAR_BYTES_MIN {
            return;
        }
        let bar = bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(done.bytes_total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "verify {bar:40} {binary_bytes}/{binary_total_bytes} {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        });
        bar.set_position(done.bytes_done);
    };
    let report = verify::verify_with_progress(&OsStorage, &args.dir, &mut progress)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut out = print::stdout();
    if args.json {
        serde_json::to_writer(&mut out, &verify_json(&report)).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        print_verify(&mut out, &report)?;
    }
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    })
}

fn print_verify(out: &mut impl Write, report: &VerifyReport) -> io::Result<()> {
    let head = report
        .head_seq
        .map_or_else(|| String::from("unknown"), |head| head.to_string());
    writeln!(
        out,
        "checked {} segments, {} records, {}; head at {head}",
        report.segments,
        report.records,
        print::size(report.bytes)
    )?;
    if report.is_clean() {
        return writeln!(out, "clean: no problems found");
    }
    let mut table = Table::new(&["PROBLEM", "FILE", "OFFSET", "DETAIL"]);
    for problem in &report.problems {
        let file = problem
            .file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        table.row(vec![
            problem.kind.name().to_string(),
            file,
            problem.offset.to_string(),
            problem.detail.clone(),
        ]);
    }
    table.print(out)?;
    let count = report.problems.len();
    writeln!(
        out,
        "{count} problem{} found; `spool repair --dry-run` shows how it would be mended",
        if count == 1 { "" } else { "s" }
    )
}

#[derive(Serialize)]
struct CompactJson {
    segments_removed: usize,
    bytes_freed: u64,
}

pub fn compact(args: &CompactArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    // Opening with automatic compaction would compact before the report could count it.
    let queue = open_queue(
        &args.dir,
        None,
        SyncPolicy::Always,
        false,
        false,
        Access::Shared,
    )?;
    let report = queue.compact()?;
    let mut out = print::stdout();
    if args.json {
        let json = CompactJson {
            segments_removed: report.segments_removed,
            bytes_freed: report.bytes_freed,
        };
        serde_json::to_writer(&mut out, &json).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "removed {} consumed segment{}, freed {}",
            report.segments_removed,
            if report.segments_removed == 1 {
                ""
            } else {
                "s"
            },
            print::size(report.bytes_freed)
        )?;
    }
    Ok(EXIT_OK)
}

#[derive(Serialize)]
struct ActionJson {
    action: &'static str,
    file: String,
    offset: u64,
    bytes: u64,
    saved_as: Option<String>,
    first_seq: Option<u64>,
    end_seq: Option<u64>,
    reason: String,
}

#[derive(Serialize)]
struct RepairJson {
    dry_run: bool,
    actions: Vec<ActionJson>,
    cut_first_seq: Option<u64>,
    cut_end_seq: Option<u64>,
    quarantined_records: u64,
    head_reset_to: Option<u64>,
    gone_first_seq: Option<u64>,
    gone_end_seq: Option<u64>,
    problems_before: Vec<ProblemJson>,
    clean_after: Option<bool>,
    problems_after: Option<Vec<ProblemJson>>,
}

pub fn repair(args: &RepairArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    let mode = if args.dry_run {
        Mode::DryRun
    } else {
        Mode::Repair
    };
    let report = repair::repair(&OsStorage, &args.dir, mode)?;
    let mut out = print::stdout();
    if args.json {
        serde_json::to_writer(&mut out, &repair_json(&report)).map_err(io::Error::from)?;
        writeln!(out)?;
    } else {
        print_repair(&mut out, &report)?;
    }
    let clean_after = report.after.as_ref().is_none_or(VerifyReport::is_clean);
    let ok = match mode {
        Mode::DryRun => report.nothing_to_do() && report.before.is_clean(),
        Mode::Repair => clean_after,
    };
    Ok(if ok { EXIT_OK } else { EXIT_PROBLEMS })
}

fn repair_json(report: &RepairReport) -> RepairJson {
    RepairJson {
        dry_run: report.mode == Mode::DryRun,
        actions: report
            .actions
            .iter()
            .map(|action| ActionJson {
                action: action.kind.name(),
                file: action.file.display().to_string(),
                offset: action.offset,
                bytes: action.bytes,
                saved_as: action.saved_as.as_ref().map(|p| p.display().to_string()),
                first_seq: action.seqs.as_ref().map(|seqs| seqs.start),
                end_seq: action.seqs.as_ref().map(|seqs| seqs.end),
                reason: action.reason.clone(),
            })
            .collect(),
        cut_first_seq: report.cut_seqs.as_ref().map(|seqs| seqs.start),
        cut_end_seq: report.cut_seqs.as_ref().map(|seqs| seqs.end),
        quarantined_records: report.quarantined_records,
        head_reset_to: report.head_reset_to,
        gone_first_seq: report.gone_seqs.as_ref().map(|seqs| seqs.start),
        gone_end_seq: report.gone_seqs.as_ref().map(|seqs| seqs.end),
        problems_before: verify_json(&report.before).problems,
        clean_after: report.after.as_ref().map(VerifyReport::is_clean),
        problems_after: report
            .after
            .as_ref()
            .map(|after| verify_json(after).problems),
    }
}

fn print_repair(out: &mut impl Write, report: &RepairReport) -> io::Result<()> {
    let dry = report.mode == Mode::DryRun;
    if report.nothing_to_do() {
        writeln!(out, "nothing to repair in {}", report.dir.display())?;
    } else {
        let verb = if dry { "would do" } else { "did" };
        writeln!(out, "repair of {} {verb}:", report.dir.display())?;
        for action in &report.actions {
            writeln!(out, "  {action}")?;
        }
    }
    match &report.cut_seqs {
        Some(seqs) if seqs.is_empty() => writeln!(
            out,
            "the queue now ends before sequence {}; only unreadable bytes were cut",
            seqs.start
        )?,
        Some(seqs) => writeln!(
            out,
            "{} sequence numbers {}..{} ({} records; {} readable copies in quarantine/)",
            if dry { "would cut" } else { "cut" },
            seqs.start,
            seqs.end,
            seqs.end - seqs.start,
            report.quarantined_records
        )?,
        None if !report.nothing_to_do() => writeln!(out, "no record was cut")?,
        None => {}
    }
    if let Some(gone) = &report.gone_seqs {
        writeln!(
            out,
            "records {}..{} are gone from disk (before the oldest segment left)",
            gone.start, gone.end
        )?;
    }
    if let Some(head) = report.head_reset_to {
        writeln!(out, "head set to sequence {head}")?;
    }
    if let Some(after) = &report.after {
        if after.is_clean() {
            writeln!(out, "verify after repair: clean")?;
        } else {
            writeln!(out, "verify after repair still finds problems:")?;
            print_verify(out, after)?;
        }
    }
    Ok(())
}
