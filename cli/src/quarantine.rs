//! `spool quarantine`: what a repair set aside, and pushing its readable records back.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use diskspool::storage::queue_dir::is_queue;
use diskspool::storage::OsStorage;
use diskspool::tools::quarantine::{self, QuarantineListing, QuarantinedFile};
use diskspool::SyncPolicy;
use serde::Serialize;

use crate::print::{self, Table};
use crate::{open_queue, require_dir, Access, Failure, EXIT_OK};

/// Options of `spool quarantine`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  spool quarantine /var/spool/jobs              what repair or a self-healing open set aside
  spool quarantine --restore /var/spool/jobs    push the readable records back

Without --restore: takes no lock and changes nothing. Lists each file in DIR/quarantine/, where
it came from (file and byte offset), the sequence numbers cut with it and how many of its
records are readable. Only files holding records cut from the queue are restorable; the old
head index, ack log or settings, a damaged segment whose records were all consumed and stray
files are listed but never pushed back.

With --restore: needs the queue alone (exit 4 while another process has it open, shared or
not: two restores side by side would push the same file twice), pushes every
readable record of each restorable file as a new record (a new sequence number, at the end of
the queue), prints where each came from, syncs, then moves the file into
DIR/quarantine/restored/. A second --restore finds nothing to push. If it is interrupted, the
file being restored stays and is pushed whole again next time (its records may then be in the
queue twice: at least once, never lost).")]
pub struct QuarantineArgs {
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// Push the readable quarantined records back into the queue.
    #[arg(long)]
    restore: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct FileJson<'a> {
    name: &'a str,
    bytes: u64,
    from_file: Option<&'a str>,
    from_offset: Option<u64>,
    action: Option<&'a str>,
    first_seq: Option<u64>,
    end_seq: Option<u64>,
    restorable_records: u64,
}

#[derive(Serialize)]
struct ListingJson<'a> {
    dir: String,
    files: Vec<FileJson<'a>>,
    restorable_records: u64,
    restored: &'a [String],
}

#[derive(Serialize)]
struct RestoredJson {
    file: String,
    from_seq: u64,
    seq: u64,
}

#[derive(Serialize)]
struct RestoreJson {
    records: Vec<RestoredJson>,
    files: Vec<String>,
}

pub fn quarantine(args: &QuarantineArgs) -> Result<u8, Failure> {
    require_dir(&args.dir)?;
    if !is_queue(&OsStorage, &args.dir)? {
        return Err(diskspool::Error::NotAQueue {
            dir: args.dir.clone(),
        }
        .into());
    }
    if args.restore {
        return restore(args);
    }
    let listing = quarantine::list(&OsStorage, &args.dir)?;
    let mut out = print::stdout();
    if args.json {
        serde_json::to_writer(&mut out, &listing_json(&listing)).map_err(io::Error::from)?;
        writeln!(out)?;
        return Ok(EXIT_OK);
    }
    if listing.files.is_empty() && listing.restored.is_empty() {
        writeln!(out, "nothing in {}", listing.dir.display())?;
        return Ok(EXIT_OK);
    }
    let mut table = Table::new(&["FILE", "SIZE", "FROM", "CUT", "RESTORABLE"]);
    let files = if listing.files.is_empty() {
        &[][..]
    } else {
        &listing.files[..]
    };
    for file in files {
        let (from, cut) = match &file.cut {
            Some(cut) => (
                format!("{} at byte {}", cut.source, cut.offset),
                format!("{}..{}", cut.seqs.start, cut.seqs.end),
            ),
            None => (String::from("-"), String::from("-")),
        };
        table.row(vec![
            file.name.clone(),
            print::size(file.bytes),
            from,
            cut,
            file.readable.to_string(),
        ]);
    }
    if !files.is_empty() {
        table.print(&mut out)?;
    }
    writeln!(
        out,
        "{} readable records can be pushed back (spool quarantine --restore {})",
        listing.restorable_records(),
        args.dir.display()
    )?;
    if !listing.restored.is_empty() {
        writeln!(
            out,
            "{} files already restored, in {}",
            listing.restored.len(),
            listing.dir.join("restored").display()
        )?;
    }
    Ok(EXIT_OK)
}

fn listing_json(listing: &QuarantineListing) -> ListingJson<'_> {
    ListingJson {
        dir: listing.dir.display().to_string(),
        files: listing
            .files
            .iter()
            .map(|file| FileJson {
                name: &file.name,
                bytes: file.bytes,
                from_file: file.cut.as_ref().map(|cut| cut.source.as_str()),
                from_offset: file.cut.as_ref().map(|cut| cut.offset),
                action: file.cut.as_ref().map(|cut| cut.action.as_str()),
                first_seq: file.cut.as_ref().map(|cut| cut.seqs.start),
                end_seq: file.cut.as_ref().map(|cut| cut.seqs.end),
                restorable_records: file.readable,
            })
            .collect(),
        restorable_records: listing.restorable_records(),
        restored: &listing.restored,
    }
}

/// Pushes the readable records of every restorable file, then moves the file aside.
fn restore(args: &QuarantineArgs) -> Result<u8, Failure> {
    // Alone: two restores beside each other would push the same file twice.
    let queue = open_queue(
        &args.dir,
        None,
        SyncPolicy::Never,
        true,
        false,
        Access::Alone(None),
    )?;
    // Listed under the lock: no repair can add files meanwhile.
    let listing = quarantine::list(&OsStorage, &args.dir)?;
    let restorable: Vec<&QuarantinedFile> = listing
        .files
        .iter()
        .filter(|file| file.cut.is_some())
        .collect();
    let mut out = print::stdout();
    let mut json = RestoreJson {
        records: Vec::new(),
        files: Vec::new(),
    };
    for file in restorable {
        let records = quarantine::readable_records(&OsStorage, &args.dir, file)?;
        let mut lines = Vec::with_capacity(records.len());
        for record in &records {
            let seq = queue.push(&record.payload)?;
            if args.json {
                json.records.push(RestoredJson {
                    file: file.name.clone(),
                    from_seq: record.seq,
                    seq,
                });
            } else {
                lines.push(format!(
                    "restored record {} from quarantine/{} (byte {}) as record {seq}",
                    record.seq, file.name, record.offset
                ));
            }
        }
        // Durable before the file moves: a crash in between pushes it again, never loses it.
        queue.sync()?;
        let moved = quarantine::mark_restored(&OsStorage, &args.dir, &file.name)?;
        // Printed once the file is done: a closed output (`| head`) stops between files,
        // never between pushing a file's records and moving it aside.
        for line in lines {
            writeln!(out, "{line}")?;
        }
        if args.json {
            json.files.push(file.name.clone());
        } else {
            writeln!(
                out,
                "moved quarantine/{} to {} ({} records pushed back)",
                file.name,
                moved.display(),
                records.len()
            )?;
        }
    }
    queue.close()?;
    if args.json {
        serde_json::to_writer(&mut out, &json).map_err(io::Error::from)?;
        writeln!(out)?;
    } else if nothing_restorable(&listing) {
        writeln!(out, "nothing to restore in {}", listing.dir.display())?;
    }
    Ok(EXIT_OK)
}

/// One line for `stat` and `inspect` when the queue has a quarantine: how many files, how
/// many restorable records. `None` when `quarantine/` is absent or empty.
pub fn summary(listing: &QuarantineListing) -> Option<String> {
    if listing.files.is_empty() && listing.restored.is_empty() {
        return None;
    }
    Some(format!(
        "{} files, {} restorable records, {} restored (spool quarantine)",
        listing.files.len(),
        listing.restorable_records(),
        listing.restored.len()
    ))
}

/// True when no file in the listing holds restorable records.
fn nothing_restorable(listing: &QuarantineListing) -> bool {
    listing.files.iter().all(|file| file.cut.is_none())
}
