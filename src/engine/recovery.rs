//! Opening a queue directory: validate the head, recover the active segment's tail, locate the
//! head's position. Sealed segments are not read here, so open time does not depend on how many
//! there are; they are checked frame by frame when the reader reaches them.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::acklog::AckLog;
use crate::engine::head::HeadIndex;
use crate::engine::report::{RecoveryReport, Truncation};
use crate::engine::segment::{create_segment, Segment, SegmentPath};
use crate::error::{Error, Result};
use crate::format::acklog::JobHistory;
use crate::format::frame::{FrameError, FrameRules, SEQ_LIMIT};
use crate::format::head::HeadState;
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::layout::SETTINGS_FILE_NAME;
use crate::format::layout::{parse_segment_file_name, segment_file_name};
use crate::format::segment::{
    check_oldest_base, classify_stop, decode_header, encode_header, header_error, locate_seq,
    walk_frames, LocateError, SegmentHeader, StopKind, WalkStep, SEGMENT_HEADER_LEN,
};
use crate::format::settings::QueueSettings;
use crate::options::policy_bits;
use crate::options::Options;
use crate::storage::queue_dir::{read_settings, write_settings};
use crate::storage::{Mapping, Storage, StorageFile};

/// The state a queue starts from.
pub(crate) struct Recovered {
    pub(crate) segments: BTreeMap<u64, Arc<Segment>>,
    pub(crate) active: Arc<Segment>,
    pub(crate) active_file: Arc<dyn StorageFile>,
    pub(crate) tail: u64,
    pub(crate) next_seq: u64,
    pub(crate) head: HeadIndex,
    pub(crate) head_segment: Arc<Segment>,
    pub(crate) head_offset: u64,
    pub(crate) acklog: AckLog,
    pub(crate) history: JobHistory,
    pub(crate) report: RecoveryReport,
    /// Segment files kept for reuse, found in the directory (see `pool`).
    pub(crate) pool_files: Vec<String>,
    /// Sequence numbers retired by `repair` (see [`retired_ranges`]).
    pub(crate) retired: BTreeMap<u64, u64>,
}

pub(crate) fn recover(storage: &dyn Storage, dir: &Path, options: &Options) -> Result<Recovered> {
    let io_error = |operation, path: &Path| {
        let path = path.to_path_buf();
        move |error: io::Error| Error::io(operation, path, error)
    };
    // One pass over the names, keeping none but the few pool files: the directory may hold
    // thousands of sealed segments, and a per-name allocation would make open grow with them.
    let mut bases: Vec<u64> = Vec::new();
    let mut pool_files = Vec::new();
    let (mut head_found, mut tmp_found) = (false, false);
    storage
        .visit_dir(dir, &mut |name| {
            if let Some(base) = parse_segment_file_name(name) {
                bases.push(base);
            } else if name == HEAD_FILE_NAME {
                head_found = true;
            } else if name.strip_suffix(".tmp") == Some(HEAD_FILE_NAME) {
                tmp_found = true;
            } else if crate::format::layout::is_pool_file_name(name) {
                pool_files.push(name.to_owned());
            }
        })
        .map_err(io_error("list queue directory", dir))?;
    bases.sort_unstable();
    if let Some(&base) = bases.last().filter(|&&base| base > SEQ_LIMIT) {
        // Never created by diskspool (a push that would reach it is refused): a forged name,
        // which must not be taken for an unborn segment and removed either.
        return Err(Error::corrupt(
            dir.join(segment_file_name(base)),
            0,
            format!(
                "segment base sequence {base} is beyond the largest sequence number, {}",
                SEQ_LIMIT - 1
            ),
        ));
    }
    let mut report = RecoveryReport::default();

    if tmp_found {
        let tmp_path = dir.join(format!("{HEAD_FILE_NAME}.tmp"));
        storage
            .remove_file(&tmp_path)
            .map_err(io_error("remove leftover", &tmp_path))?;
        report.removed_files.push(tmp_path);
    }
    if !head_found {
        if let Some(&base) = bases.first() {
            return Err(Error::corrupt(
                dir.join(HEAD_FILE_NAME),
                0,
                format!(
                    "the head index is missing while segment files exist (first: {}); \
                     refusing to guess which records were consumed",
                    segment_file_name(base)
                ),
            ));
        }
        let state = HeadState {
            head_seq: 0,
            hint_base: 0,
            hint_offset: SEGMENT_HEADER_LEN as u64,
            synced_seq: 0,
        };
        HeadIndex::create(storage, dir, state)?;
    }
    let mut head = HeadIndex::open(storage, dir)?;
    let head_seq = head.state().head_seq;

    // The active segment is the last one, unless its creation was cut short by a crash.
    let mut active = None;
    while let Some(&base) = bases.last() {
        let path = dir.join(segment_file_name(base));
        match recover_active(storage, &path, base, head.state(), &mut report)? {
            Some(found) => {
                active = Some(found);
                break;
            }
            None => {
                storage
                    .remove_file(&path)
                    .map_err(io_error("remove unborn segment", &path))?;
                storage
                    .sync_dir(dir)
                    .map_err(io_error("sync queue directory", dir))?;
                report.removed_files.push(path);
                bases.pop();
            }
        }
    }
    // Records are about to be appended to the active segment: its directory entry must be
    // durable first. A roll whose directory sync failed can leave a segment whose header is
    // synced but whose entry is not, and a crash then makes it the active segment here.
    storage
        .sync_dir(dir)
        .map_err(io_error("sync queue directory", dir))?;

    if let Some(&first) = bases.first() {
        if let Err(sequence_break) = check_oldest_base(head_seq, first) {
            let path = dir.join(segment_file_name(first));
            return Err(Error::corrupt(path, 0, sequence_break.to_string()));
        }
    }

    // Sealed segments stay unopened, their paths unjoined (see `SegmentPath`); `bases` is
    // sorted, so the map is built in one pass rather than by a thousand inserts.
    let shared_dir: Arc<Path> = Arc::from(dir);
    let sealed = bases.split_last().map_or(&[][..], |(_, sealed)| sealed);
    let mut segments: BTreeMap<u64, Arc<Segment>> = sealed
        .iter()
        .map(|&base| {
            let path = SegmentPath::lazy(shared_dir.clone(), base);
            (base, Arc::new(Segment::unopened(base, path)))
        })
        .collect();
    let (mut active, mut active_file, mut tail, mut next_seq) = match active {
        Some((base, file, tail, next_seq, rules)) => {
            let path = dir.join(segment_file_name(base));
            let map_len = options.segment_size.max(tail);
            let segment = Segment::active(base, path, file.clone(), tail, map_len);
            segment.set_rules(rules);
            (Arc::new(segment), file, tail, next_seq)
        }
        None => {
            // No segment at all, while the head knows records were synced: refuse before
            // creating one, so that refusing changes nothing on disk.
            let synced_seq = head.state().synced_seq;
            if head_seq < synced_seq {
                return Err(synced_records_missing(
                    &dir.join(segment_file_name(head_seq)),
                    SEGMENT_HEADER_LEN as u64,
                    head_seq,
                    synced_seq,
                ));
            }
            let (segment, file) = create_segment(storage, dir, head_seq, options.segment_size)?;
            (segment, file, SEGMENT_HEADER_LEN as u64, head_seq)
        }
    };
    segments.insert(active.base_seq, active.clone());

    // The head index knows how far records were synced: a log that ends before that lost
    // records that a crash cannot take (a deleted or truncated newest segment). Going on would
    // hand their sequence numbers out again.
    let synced_seq = head.state().synced_seq;
    if next_seq < synced_seq && head_seq < synced_seq {
        return Err(synced_records_missing(
            &active.path,
            tail,
            next_seq.max(head_seq),
            synced_seq,
        ));
    }

    if head_seq > next_seq {
        // Consumed records are gone from disk (a power loss under a weaker policy took them
        // after the head had moved past them). Start a fresh segment at the head so that no
        // sequence number that was handed out is ever used again.
        let (segment, file) = create_segment(storage, dir, head_seq, options.segment_size)?;
        active.seal(tail);
        segments.insert(segment.base_seq, segment.clone());
        report.restarted_at_seq = Some(head_seq);
        active = segment;
        active_file = file;
        tail = SEGMENT_HEADER_LEN as u64;
        next_seq = head_seq;
    }

    if active.rules() != FrameRules::CURRENT {
        // A segment of an older format version (2) is read by its rules, so nothing of this
        // build's format is appended to it: a frame with a TTL would not read back there.
        if next_seq == active.base_seq {
            // No records yet (recovery cut the file to its header): the header becomes this
            // version's. A torn write of it leaves a header-only file that fails its checksum,
            // which the next open removes as a segment whose creation was cut short.
            active_file
                .write_all_at(&encode_header(active.base_seq), 0)
                .and_then(|()| active_file.sync_data())
                .map_err(io_error("rewrite segment header", &active.path))?;
            active.set_rules(FrameRules::CURRENT);
        } else {
            // Sealed as it is (synced whole above, cut to its records), and a segment of this
            // version starts after it, as at a roll.
            let (segment, file) = create_segment(storage, dir, next_seq, options.segment_size)?;
            active.seal(tail);
            segments.insert(segment.base_seq, segment.clone());
            active = segment;
            active_file = file;
            tail = SEGMENT_HEADER_LEN as u64;
        }
    }

    // Every record below `next_seq` is durable now (sealed segments were synced before the
    // next one was created, and the active one was synced above): the head records it, so that
    // damage to these records is refused after a later crash, never cut as an unsynced write.
    head.settle(next_seq)?;
    let (head_segment, head_offset) = locate_head(storage, &segments, head.state())?;
    let appends_synced = options.sync == crate::options::SyncPolicy::Always;
    // Settled (synced as read), and cut where it ends: no other handle has it open.
    let (settle, live) = (true, false);
    let (mut acklog, mut history) = AckLog::open(
        storage,
        dir,
        head_seq,
        appends_synced,
        settle,
        live,
        &mut report,
    )?;
    // Facts about records that a power loss took (possible only under the weaker policies,
    // where acks can outlive unsynced records). The next pushes use those sequence numbers
    // again, so the facts must go, durably, or they would apply to the new records.
    let pruned = history.prune_from(next_seq);
    // Leases of a shared queue's handles: every one of them is gone (this open recovers a
    // queue nobody has open), so their records are available at once, as an exclusive
    // queue's leases are after a restart. Dropped durably too: a handle that attaches later
    // must not take an owner of an earlier life for a handle of this one.
    let leases_ended = history.end_leases_of_gone(&mut |_| true) > 0;
    if pruned || leases_ended {
        acklog.rewrite(storage, &history.entries())?;
    }
    let retired = retired_ranges(&history, &segments);
    Ok(Recovered {
        segments,
        active,
        active_file,
        tail,
        next_seq,
        head,
        head_segment,
        head_offset,
        acklog,
        history,
        report,
        pool_files,
        retired,
    })
}

/// The gaps between segments that `repair` made on purpose: acknowledged ranges that end where
/// a segment starts. Repair cuts damaged records and starts the log again after every sequence
/// number that was ever used, acknowledging the numbers in between so that none is handed out
/// twice; a reader crosses such a gap, and only such a gap (any other is missing records).
/// They are taken once, at open: acknowledgements made later never end at an existing segment
/// base with nothing read between (see `acklog::is_retired_gap`).
pub(crate) fn retired_ranges(
    history: &JobHistory,
    segments: &BTreeMap<u64, Arc<Segment>>,
) -> BTreeMap<u64, u64> {
    history
        .acked
        .iter()
        .filter(|(_, end)| segments.contains_key(end))
        .map(|(&start, &end)| (start, end))
        .collect()
}

fn bytes_of(view: &Mapping) -> &[u8] {
    (**view).as_ref()
}

/// Recovers the last segment: checks its header, walks its frames (by the rules of its format
/// version), cuts a torn tail. Returns `(base, file, tail, next_seq, rules)`, or `None` for a
/// segment whose creation was cut short (no valid header and no room for records).
///
/// A bad frame followed by valid ones is damage when the bad frame's record had been synced
/// (below `synced_seq`): open refuses. Above it, the writes were never synced, and a power loss
/// may persist a later one without an earlier one: the tail from the bad frame on is cut.
#[allow(clippy::type_complexity)]
fn recover_active(
    storage: &dyn Storage,
    path: &Path,
    base: u64,
    head: HeadState,
    report: &mut RecoveryReport,
) -> Result<Option<(u64, Arc<dyn StorageFile>, u64, u64, FrameRules)>> {
    let synced_seq = head.synced_seq;
    let io_error = |operation| move |error: io::Error| Error::io(operation, path, error);
    let file: Arc<dyn StorageFile> =
        Arc::from(storage.open(path).map_err(io_error("open segment"))?);
    let len = file.len().map_err(io_error("stat segment"))?;
    let view = file.map(len).map_err(io_error("map segment"))?;
    let bytes = bytes_of(&view);
    if (bytes.len() as u64) < len {
        return Err(Error::corrupt(
            path,
            0,
            "segment mapping shorter than the file",
        ));
    }
    let rules = match decode_header(bytes) {
        Ok(found) if found.base_seq == base => found.rules,
        Ok(found) => {
            return Err(Error::corrupt(
                path,
                0,
                format!(
                    "header names base sequence {}, file name {base}",
                    found.base_seq
                ),
            ))
        }
        Err(_) if len <= SEGMENT_HEADER_LEN as u64 => return Ok(None),
        Err(error) => return Err(header_error(path, error)),
    };

    let mut complete_end = SEGMENT_HEADER_LEN as u64;
    let mut complete_next_seq = base;
    let mut stop = None;
    let mut last_frame_seq = base;
    for step in walk_frames(bytes, SEGMENT_HEADER_LEN, base, rules) {
        match step {
            WalkStep::Frame { offset, frame } => {
                last_frame_seq = frame.header.seq;
                if !frame.header.batch_continues {
                    complete_end = offset + frame.frame_len as u64;
                    complete_next_seq = frame.header.seq + 1;
                }
            }
            WalkStep::Bad {
                offset,
                expected_seq,
                error,
            } => stop = Some((offset, expected_seq, error)),
        }
    }
    // A valid frame numbered beyond the limit is never a torn write: refuse it.
    if let Some((offset, _, error @ FrameError::SeqBeyondLimit { .. })) = &stop {
        return Err(Error::corrupt(path, *offset, error.to_string()));
    }
    // What follows the last frame may be free space rather than a torn write: zeros the writer
    // prepared ahead of its tail (see `writer`), or the stale frames of a recycled file (see
    // `pool`). The rule that tells free space, a torn write, unsynced writes persisted out of
    // order and damage apart is shared with the lock-free readers (`classify_stop`).
    let kind = stop.as_ref().map(|(offset, expected_seq, error)| {
        classify_stop(
            bytes,
            SegmentHeader {
                base_seq: base,
                rules,
            },
            *offset,
            *expected_seq,
            error,
            complete_next_seq,
            synced_seq,
        )
    });
    let free_space = kind == Some(StopKind::FreeSpace);
    let mut out_of_order = None;
    if let (Some((offset, _, error)), Some(kind)) = (&stop, kind) {
        match kind {
            StopKind::Unsynced {
                later_offset,
                later_seq,
            } => {
                last_frame_seq = last_frame_seq.max(later_seq);
                out_of_order = Some(format!(
                    "{error}; the valid records after it (from sequence {later_seq} at offset \
                     {later_offset}) are not known to have been synced (the head records syncs \
                     below sequence {synced_seq}), so they are taken for writes a power loss \
                     persisted without the earlier ones"
                ));
            }
            StopKind::Damage {
                later_offset,
                later_seq,
            } => {
                return Err(Error::corrupt(
                    path,
                    *offset,
                    format!(
                        "{error}; a valid record (sequence {later_seq} at offset {later_offset}) \
                         follows, so this is damage rather than a torn write; run `spool repair`"
                    ),
                ));
            }
            StopKind::FreeSpace | StopKind::TornWrite => {}
        }
    }
    drop(view);
    if complete_next_seq.max(head.head_seq) < synced_seq {
        // Synced records not consumed yet are not all here: damage, not a crash. Refused
        // before anything is cut. (Damage only to consumed records is cut: the queue then
        // restarts at its head, as when a power loss took consumed records.)
        return Err(synced_records_missing(
            path,
            complete_end,
            complete_next_seq,
            synced_seq,
        ));
    }
    if complete_end != len {
        // Cut the torn tail (or an incomplete batch), or restore padding a torn write cut off.
        file.set_len(complete_end)
            .map_err(io_error("truncate torn tail"))?;
        // Nothing was lost if all that is cut is free space.
        let data_end = match (&stop, free_space) {
            (Some((offset, _, _)), true) => *offset,
            _ => len,
        };
        if complete_end < data_end {
            let reason = match (stop.filter(|_| !free_space), out_of_order) {
                (_, Some(reason)) => reason,
                (Some((_, _, error)), None) => error.to_string(),
                (None, None) => String::from("the last batch is incomplete"),
            };
            report.truncated.push(Truncation {
                file: path.to_path_buf(),
                offset: complete_end,
                bytes_cut: data_end - complete_end,
                first_lost_seq: complete_next_seq,
                last_lost_seq: last_frame_seq.max(complete_next_seq),
                reason,
            });
        }
    }
    // What recovery read must be durable before anything is built on it.
    file.sync_data().map_err(io_error("sync segment"))?;
    Ok(Some((base, file, complete_end, complete_next_seq, rules)))
}

/// The error for records below the head's `synced_seq` that the log does not hold: a crash
/// cannot take synced records, so they were damaged, cut or deleted.
fn synced_records_missing(path: &Path, offset: u64, from: u64, synced_seq: u64) -> Error {
    Error::corrupt(
        path,
        offset,
        format!(
            "records {from}..{synced_seq} are missing or damaged: the head index says every \
             record below {synced_seq} was synced, but the log ends before {from} (a damaged, \
             cut or lost newest segment); run `spool repair`"
        ),
    )
}

/// Finds the byte position of the head's record in the one segment that holds it, by the rule
/// the lock-free readers share (`segment::locate_seq`): the hint if it checks out, else a walk.
pub(crate) fn locate_head(
    storage: &dyn Storage,
    segments: &BTreeMap<u64, Arc<Segment>>,
    state: HeadState,
) -> Result<(Arc<Segment>, u64)> {
    let head_seq = state.head_seq;
    let Some((_, segment)) = segments.range(..=head_seq).next_back() else {
        return Err(Error::corrupt(
            PathBuf::from(HEAD_FILE_NAME),
            0,
            format!("no segment holds the head at sequence {head_seq}"),
        ));
    };
    let segment = segment.clone();
    segment.ensure_checked(storage)?;
    // What `locate_seq` answers too, without mapping the segment.
    if segment.base_seq == head_seq {
        return Ok((segment, SEGMENT_HEADER_LEN as u64));
    }
    let end = segment.readable_end();
    let view = segment.view(storage, end)?;
    let bytes = bytes_of(&view).get(..end as usize).unwrap_or(&[]);
    let hint = (state.hint_base == segment.base_seq).then_some(state.hint_offset);
    match locate_seq(bytes, segment.base_seq, hint, head_seq, segment.rules()) {
        Ok(found) => Ok((segment.clone(), found.offset)),
        Err(LocateError::BadFrame { offset, error }) => Err(Error::corrupt(
            &segment.path,
            offset,
            format!("{error} (while locating the head at sequence {head_seq})"),
        )),
        Err(LocateError::NotInSegment { end }) => Err(Error::corrupt(
            &segment.path,
            end,
            format!("the head at sequence {head_seq} is not in this segment"),
        )),
    }
}

/// Settles the settings an open uses, with the directory locked: the stored ones, unless the
/// caller set them explicitly, in which case they replace the stored ones. A queue without a
/// settings file (new, or created before settings files existed) gets one.
pub(crate) fn settle_at_open(
    storage: &dyn Storage,
    dir: &Path,
    options: &mut Options,
) -> Result<()> {
    settle(storage, dir, options, true)
}

/// [`settle_at_open`] for a handle that joins a shared queue other processes have open: the
/// stored settings are taken, and never rewritten (the others work by them); explicit ones
/// that differ are refused.
pub(crate) fn settle_attached(
    storage: &dyn Storage,
    dir: &Path,
    options: &mut Options,
) -> Result<()> {
    settle(storage, dir, options, false)
}

fn settle(storage: &dyn Storage, dir: &Path, options: &mut Options, writable: bool) -> Result<()> {
    if !writable {
        let Some(stored) = read_settings(storage, dir)? else {
            return Err(Error::corrupt(
                dir.join(SETTINGS_FILE_NAME),
                0,
                "the settings file of a queue other processes have open is missing",
            ));
        };
        let mut wanted = options.clone();
        apply_stored(&mut wanted, &stored);
        if settings_of(&wanted) != stored {
            return Err(Error::InvalidOptions(format!(
                "{}: other processes have this queue open with other settings (segment size, \
                 limits, expiry); change settings while no other process has it open",
                dir.display()
            )));
        }
        *options = wanted;
        return Ok(());
    }
    // A replacement a crash interrupted: the old file is whole (the rename is atomic).
    let tmp_path = dir.join(format!("{SETTINGS_FILE_NAME}.tmp"));
    match storage.remove_file(&tmp_path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(Error::io("remove leftover", &tmp_path, error)),
    }
    let stored = read_settings(storage, dir)?;
    let Some(stored) = stored else {
        return write_settings(storage, dir, &settings_of(options));
    };
    apply_stored(options, &stored);
    let wanted = settings_of(options);
    if wanted == stored {
        // Also a version 1 file without policies: left as it is, readable by older builds.
        return Ok(());
    }
    write_settings(storage, dir, &wanted)
}

/// Takes the stored settings for every one the caller did not set.
fn apply_stored(options: &mut Options, stored: &QueueSettings) {
    if !options.segment_size_explicit {
        options.segment_size = stored.segment_size;
    }
    // Policies not set by the caller come from the file; set ones replace it.
    let explicit = options.policies_explicit;
    let kept = |bit: u8| explicit & bit == 0;
    if kept(policy_bits::MAX_RECORDS) {
        options.max_records = stored.max_records;
    }
    if kept(policy_bits::MAX_BYTES) {
        options.max_bytes = stored.max_bytes;
    }
    if kept(policy_bits::OVERFLOW) {
        options.overflow = stored.overflow;
    }
    if kept(policy_bits::MAX_AGE) {
        options.max_age = stored.max_age_us.map(Duration::from_micros);
    }
    if kept(policy_bits::DEDUP_WINDOW) {
        options.dedup_window = stored.dedup_window_us.map(Duration::from_micros);
    }
}

/// The settings file's contents for these options.
pub(crate) fn settings_of(options: &Options) -> QueueSettings {
    let micros = |duration: Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    let mut settings = QueueSettings::new(options.segment_size);
    settings.max_records = options.max_records;
    settings.max_bytes = options.max_bytes;
    settings.overflow = options.overflow;
    settings.max_age_us = options.max_age.map(micros);
    settings.dedup_window_us = options.dedup_window.map(micros);
    settings
}
