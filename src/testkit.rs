//! Check functions shared by the fuzz targets in `fuzz/` and the tests that replay their seed
//! corpus and run the deterministic simulation. Not part of the stable API.
//!
//! Every function takes arbitrary bytes (or operations decoded from them) and panics when the
//! engine breaks a promise: a panic inside the engine, a record with a bad checksum, a record
//! out of order, a record lost or delivered twice against the durability contract.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::format::acklog;
use crate::format::frame::{self, FRAME_ALIGN, FRAME_HEADER_LEN};
use crate::format::head::{decode_head_file, decode_slot, encode_slot};
use crate::format::layout::segment_file_name;
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::segment::{self, walk_frames, WalkStep, SEGMENT_HEADER_LEN};
use crate::storage::sim::{Fault, FaultKind, SimOp, SimRng, SimStats, SimStorage};
use crate::{Error, OnDamage, Options, Push, Queue, SyncPolicy};

pub mod processes;

/// What [`on_crash_points_in_this_thread`] calls at each crash point, with its name.
pub type CrashPointHook = crate::engine::failpoint::Hook;

/// Calls `hook` with the name of every crash point the calling thread reaches from now on
/// (`None`: no more). A hook that calls into a queue passes the crash points of that call.
/// For tests that put another handle's call at an exact moment of one call.
pub fn on_crash_points_in_this_thread(hook: Option<CrashPointHook>) {
    crate::engine::failpoint::on_reached_in_this_thread(hook);
}

/// What an open that finds its lock held for a moment calls, in [`on_momentary_holds_in_this_thread`].
pub type MomentaryHoldHook = Box<dyn FnMut()>;

/// Whether a handle of a shared queue has it to itself (*solo*: it built the control file, or
/// found every other handle gone, and no other handle attached since), running its pushes and
/// pops as an exclusive queue's.
pub fn is_solo(queue: &crate::Queue) -> bool {
    queue
        .shared()
        .env
        .coordination
        .as_ref()
        .is_some_and(|coordination| coordination.is_solo())
}

/// Whether a handle has its consumer side: always for an exclusive queue; for a shared one,
/// once it made a consumer call. Only then does its `sync` record in the head how far the
/// records are synced (docs/DURABILITY.md: a handle that never consumed syncs no consumer
/// file).
pub fn has_consumer(queue: &crate::Queue) -> bool {
    queue.shared().has_consumer()
}

/// Makes a handle of a shared queue solo again if it is alone (every other handle closed or
/// died, none opening), as its solo thread does when woken (a handle that drops wakes it) or
/// every second: for tests that must not wait for that thread. True when this call made it
/// solo.
pub fn enter_solo_if_alone(queue: &crate::Queue) -> crate::Result<bool> {
    queue.shared().try_enter_solo(true)
}

/// An open in the calling thread that finds its lock held, maybe for a moment only (by a child
/// process between fork and exec), tries again for `window` instead of 200 ms, and calls `hook`
/// before each wait (`None`: back to normal). For tests that end such a hold at a known moment
/// of the wait instead of racing the window.
pub fn on_momentary_holds_in_this_thread(hook: Option<(Duration, MomentaryHoldHook)>) {
    crate::storage::momentary_hold_hook::set(hook);
}

/// The payload limit the decoding checks use: large enough for any frame in a fuzz input.
const PAYLOAD_LEN_LIMIT: u32 = 1 << 20;

/// Reads a little-endian u64 from up to 8 leading bytes (missing bytes are zero).
fn u64_prefix(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    let count = bytes.len().min(8);
    word[..count].copy_from_slice(&bytes[..count]);
    u64::from_le_bytes(word)
}

/// Checks that a frame the decoder accepted really is what it claims: CRC over its bytes,
/// the expected sequence number, a payload inside the input.
fn assert_frame_valid(bytes: &[u8], offset: usize, seq: u64, found: &frame::DecodedFrame) {
    assert_eq!(found.header.seq, seq, "frame at {offset} has the wrong seq");
    assert_eq!(found.frame_len % FRAME_ALIGN, 0, "frame length not aligned");
    assert!(
        found.frame_len >= FRAME_HEADER_LEN,
        "frame shorter than a header"
    );
    let end = offset + FRAME_HEADER_LEN + found.header.payload_len as usize;
    assert!(end <= bytes.len(), "frame payload runs past the input");
    let stored = u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ]);
    assert_eq!(
        stored,
        crc32fast::hash(&bytes[offset + 4..end]),
        "frame at {offset} accepted with a bad checksum"
    );
    let prefix_len = found.header.prefix_len();
    assert_eq!(found.payload, FRAME_HEADER_LEN + prefix_len..end - offset);
}

/// Fuzz target `segment_decode`: `data` as a segment file. Decodes the header; walks the frames
/// from the header's base sequence number (or, when the header is invalid, from the one in the
/// first 8 bytes, so that the frame decoder is reached without a valid header, by the rules of
/// the version the low bit of byte 8 picks, 2 or 3); searches for a later frame after damage.
/// No panic, every frame valid, the walk ends.
pub fn check_segment_decode(data: &[u8]) {
    let (base, rules) = match segment::decode_header(data) {
        Ok(header) => (header.base_seq, header.rules),
        Err(_) if data.get(8).is_some_and(|byte| byte & 1 == 0) => {
            (u64_prefix(data), frame::FrameRules::V2)
        }
        Err(_) => (u64_prefix(data), frame::FrameRules::CURRENT),
    };
    let rules = rules.with_payload_len_max(PAYLOAD_LEN_LIMIT);
    let mut expected = base;
    let mut last_end = SEGMENT_HEADER_LEN;
    let mut steps = 0usize;
    for step in walk_frames(data, SEGMENT_HEADER_LEN, base, rules) {
        steps += 1;
        assert!(steps <= data.len() / FRAME_ALIGN + 1, "walk does not end");
        match step {
            WalkStep::Frame { offset, frame } => {
                assert_eq!(offset as usize, last_end, "walk skipped bytes");
                assert_frame_valid(data, offset as usize, expected, &frame);
                expected += 1;
                last_end = offset as usize + frame.frame_len;
            }
            WalkStep::Bad {
                offset,
                expected_seq,
                ..
            } => {
                assert_eq!(offset as usize, last_end);
                assert_eq!(expected_seq, expected);
                if let Some((later, seq)) =
                    segment::find_later_frame(data, offset as usize, expected_seq, rules)
                {
                    assert!(later > offset, "later frame is not later");
                    let at = &data[later as usize..];
                    let found = frame::decode(at, seq, rules);
                    assert!(found.is_ok(), "find_later_frame returned an invalid frame");
                }
            }
        }
    }
}

/// Fuzz target `head_decode`: `data` as a head index file. The slot in force must be valid and
/// the newest valid one; a decoded slot must survive a re-encode.
pub fn check_head_decode(data: &[u8]) {
    let read = decode_head_file(data);
    match read.current {
        None => assert!(read.slots.iter().all(|slot| slot.is_err())),
        Some(current) => {
            let chosen = read.slots[current]
                .clone()
                .unwrap_or_else(|error| panic!("slot in force is invalid: {error}"));
            if let Ok(other) = &read.slots[1 - current] {
                assert!(chosen.generation >= other.generation, "older slot chosen");
            }
            assert_eq!(decode_slot(&encode_slot(&chosen)), Ok(chosen));
        }
    }
    for slot in read.slots.iter().flatten() {
        assert_eq!(decode_slot(&encode_slot(slot)), Ok(*slot));
    }
}

/// Fuzz target `acklog_decode`: `data` as an ack log file. Decodes the header (or, when it is
/// invalid, takes the log id from the first 8 bytes so that entries are reached anyway) and every
/// entry; a decoded entry re-encodes to an entry that decodes the same; the history built from
/// the entries keeps its acknowledged ranges merged and disjoint.
pub fn check_acklog_decode(data: &[u8]) {
    let log_id = acklog::decode_header(data).unwrap_or_else(|_| u64_prefix(data));
    let mut history = acklog::JobHistory::default();
    let mut offset = acklog::ACK_LOG_HEADER_LEN;
    while let Some(bytes) = data.get(offset..offset + acklog::ACK_ENTRY_LEN) {
        if let Some(entry) = acklog::decode_entry(bytes, log_id) {
            let mut encoded = Vec::new();
            acklog::encode_entry(&mut encoded, log_id, &entry);
            assert_eq!(acklog::decode_entry(&encoded, log_id), Some(entry));
            if let acklog::AckEntry::Acked { start, end } = entry {
                assert!(start < end, "empty acknowledged range decoded");
            }
            history.apply(&entry);
        }
        offset += acklog::ACK_ENTRY_LEN;
    }
    let mut previous_end = None;
    for (&start, &end) in &history.acked {
        assert!(start < end, "empty range in the history");
        if let Some(previous_end) = previous_end {
            assert!(start > previous_end, "ranges overlap or touch");
        }
        previous_end = Some(end);
    }
    let head = u64_prefix(data.get(8..).unwrap_or(&[]));
    let before = history.acked_count_from(head);
    history.prune_below(head);
    assert_eq!(history.acked_count_from(head), before, "pruning lost acks");
    assert!(history.acked.keys().all(|&start| start >= head));
    check_acklog_scan(data);
}

/// The scan's classification of the file `data` (see `acklog::scan_ack_log`) is consistent:
/// what it reports lies in the file before the last valid entry; damage that is not
/// skippable leaves no skippable entries; skippable damage is the first skippable entry, and
/// in a file with marks no marked entry follows a skippable one.
fn check_acklog_scan(data: &[u8]) {
    let mut applied = 0;
    let Ok(scan) = acklog::scan_ack_log(data, &mut |_| applied += 1) else {
        return;
    };
    assert_eq!(scan.entries, applied);
    let slots = data.len().saturating_sub(acklog::ACK_LOG_HEADER_LEN) / acklog::ACK_ENTRY_LEN;
    assert!(scan.entries <= slots as u64);
    assert!(scan.valid_end <= data.len() as u64);
    // An entry slot before `end`.
    let entry_at = |offset: u64, end: u64| {
        offset >= acklog::ACK_LOG_HEADER_LEN as u64
            && (offset - acklog::ACK_LOG_HEADER_LEN as u64)
                .is_multiple_of(acklog::ACK_ENTRY_LEN as u64)
            && offset < end
    };
    let before_last_valid = |offset| entry_at(offset, scan.valid_end);
    assert!(scan
        .skippable
        .iter()
        .all(|&offset| before_last_valid(offset)));
    assert!(scan.skippable.windows(2).all(|pair| pair[0] < pair[1]));
    match &scan.damage {
        None => assert!(scan.skippable.is_empty()),
        Some(damage) => {
            // A bad field under a valid checksum is damage wherever it is, also at the end.
            assert!(entry_at(damage.offset, data.len() as u64), "{damage:?}");
            assert!(!damage.skippable || before_last_valid(damage.offset));
            if damage.skippable {
                assert_eq!(scan.skippable.first(), Some(&damage.offset));
            } else {
                assert!(scan.skippable.is_empty());
            }
        }
    }
    let Ok(header) = acklog::read_header(data) else {
        return;
    };
    if let Some(&first) = scan.skippable.first() {
        let marked_after = data
            .get(first as usize..)
            .unwrap_or(&[])
            .chunks_exact(acklog::ACK_ENTRY_LEN)
            .any(|entry| matches!(acklog::check_entry_of(entry, &header), Ok((_, true))));
        assert!(!marked_after, "a skippable entry before a marked one");
    }
}

/// Fuzz target `open_dir`: `data` describes the files of a queue directory (see
/// [`files_from_bytes`]). Opening it, popping everything and pushing must never panic; an open
/// that succeeds hands out only valid records in increasing sequence order and accepts a push.
pub fn check_open_dir(data: &[u8]) {
    let sim = SimStorage::new(u64_prefix(data));
    let dir = Path::new("/fuzz/q");
    for (name, bytes) in files_from_bytes(data) {
        // Writing into the simulated filesystem only fails for unusable names.
        let _ = sim.write_file(&dir.join(name), &bytes);
    }
    let options = Options::default()
        .segment_size(4096)
        .max_record_size(1024)
        .sync(SyncPolicy::Never)
        .storage(Arc::new(sim.clone()));
    let queue = match Queue::open(dir, options) {
        Ok(queue) => queue,
        Err(error) => {
            assert!(
                matches!(
                    error,
                    Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::Io { .. }
                ),
                "unexpected error kind from open: {error:?}"
            );
            return;
        }
    };
    let mut expected: Option<u64> = None;
    for _ in 0..10_000 {
        match queue.pop() {
            Ok(Some(record)) => {
                // Acknowledged records (from the ack log) are skipped, so only the order is fixed.
                if let Some(seq) = expected {
                    assert!(record.seq() >= seq, "records out of order or repeated");
                }
                expected = Some(record.seq() + 1);
            }
            Ok(None) => break,
            Err(Error::Corrupt { .. } | Error::UnsupportedVersion { .. } | Error::Io { .. }) => {
                break
            }
            Err(error) => panic!("unexpected error kind from pop: {error:?}"),
        }
    }
    match queue.push(b"after open") {
        // A head at the very last sequence number leaves none to hand out.
        Ok(_) | Err(Error::SeqExhausted { .. }) => {}
        Err(error) => panic!("a queue that opened refuses a push: {error}"),
    }
}

/// Decodes a directory listing from fuzz bytes: up to 6 files, each a name selector byte, a
/// length byte pair and that many content bytes. Names are the ones the engine looks for
/// (`head`, `head.tmp`, the ack log `acks`, the settings file, the deduplication log `dedup`,
/// segments with small base sequence numbers) and one stray.
pub fn files_from_bytes(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut rest = data.get(8..).unwrap_or(&[]);
    while files.len() < 6 && rest.len() >= 3 {
        let selector = rest[0];
        let len = u16::from_le_bytes([rest[1], rest[2]]) as usize % 8192;
        rest = &rest[3..];
        let take = len.min(rest.len());
        let (content, tail) = rest.split_at(take);
        rest = tail;
        let name = match selector % 8 {
            0 => HEAD_FILE_NAME.to_string(),
            1 => format!("{HEAD_FILE_NAME}.tmp"),
            2 => crate::format::layout::ACK_LOG_FILE_NAME.to_string(),
            3 => String::from("stray.txt"),
            4 => crate::format::layout::SETTINGS_FILE_NAME.to_string(),
            5 => crate::format::layout::DEDUP_FILE_NAME.to_string(),
            _ => segment_file_name(u64::from(selector / 8)),
        };
        files.push((name, content.to_vec()));
    }
    files
}

/// Fuzz target `ops_model`: runs the operations decoded from `data` (see [`ops_from_bytes`])
/// against the model and panics with the violation, if any.
pub fn check_ops_model(data: &[u8]) {
    let ops = ops_from_bytes(data);
    if let Err(violation) = run_ops(&ops) {
        panic!("{violation}\noperations: {ops:#?}");
    }
}

/// The sync policy of a simulated run. `Interval` uses an interval far longer than any run, so
/// that the flusher thread never fires and the run stays deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// [`SyncPolicy::Always`].
    Always,
    /// [`SyncPolicy::Interval`] of an hour.
    Interval,
    /// [`SyncPolicy::Never`].
    Never,
}

impl Policy {
    fn sync_policy(self) -> SyncPolicy {
        match self {
            Policy::Always => SyncPolicy::Always,
            Policy::Interval => SyncPolicy::Interval(Duration::from_secs(3600)),
            Policy::Never => SyncPolicy::Never,
        }
    }

    fn from_byte(byte: u8) -> Policy {
        match byte % 3 {
            0 => Policy::Always,
            1 => Policy::Interval,
            _ => Policy::Never,
        }
    }
}

/// One step of a simulated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Push one record of `len` bytes.
    Push {
        /// Payload length.
        len: u16,
    },
    /// Push `count` records of `len` bytes each in one batch.
    PushBatch {
        /// Records in the batch.
        count: u8,
        /// Payload length of each.
        len: u16,
    },
    /// Pop up to `max` records (`max` 1 uses `pop`).
    Pop {
        /// Most records to pop.
        max: u8,
    },
    /// Peek at the oldest record.
    Peek,
    /// Receive up to `count` records as jobs and release them unacknowledged (`nack`): they are
    /// available again at once, and their delivery counts grow.
    RecvNack {
        /// Most records to receive.
        count: u8,
    },
    /// Receive up to `count` records as jobs and acknowledge them all, in reverse order when
    /// `reverse` (so that acks beyond the head go through the ack log).
    RecvAck {
        /// Most records to receive.
        count: u8,
        /// Acknowledge the newest first.
        reverse: bool,
    },
    /// Run the compactor.
    Compact,
    /// Make everything durable.
    Sync,
    /// Close the queue cleanly and open it again with `policy`.
    Reopen {
        /// The policy to reopen with.
        policy: Policy,
    },
    /// Kill the process and open again with `policy`.
    ProcessCrash {
        /// The policy to reopen with.
        policy: Policy,
    },
    /// Cut the power (the crash's choices drawn from `seed`) and open again with `policy`.
    PowerLoss {
        /// Seed of this crash's choices.
        seed: u64,
        /// The policy to reopen with.
        policy: Policy,
    },
    /// Arm a fault for the next operation.
    Fault(Fault),
    /// Remove every record not yet consumed (`Queue::purge`).
    Purge,
    /// Push one record of `len` bytes with the deduplication id `[key]` (`Queue::push_with`):
    /// a key pushed before is not written again.
    PushDedup {
        /// The id's one byte.
        key: u8,
        /// Payload length.
        len: u16,
    },
    /// Push `count` records of `len` bytes in one batch with a time to live
    /// (`Queue::push_batch_with`) long enough never to run out during a run: records of format
    /// version 3 through every crash and reopen. (Fuzz input only: the simulation's workloads
    /// stay what their seeds made them.)
    PushTtl {
        /// Records in the batch.
        count: u8,
        /// Payload length of each.
        len: u16,
    },
    /// Cut the power (the crash's choices drawn from `seed`), so that everything on disk is
    /// synced data; then damage it as bit rot, a bad sector or an operator would (a flipped
    /// bit, a zeroed range or a lost file, chosen by `seed`); open again with `policy`. The
    /// queue must refuse the damage with a typed error naming the file (changing nothing on
    /// disk), or hand out every record before it and then refuse, or cut only records it never
    /// promised were durable; it must never lose an acknowledged record silently.
    Damage {
        /// Seed of the crash's and the damage's choices.
        seed: u64,
        /// The policy to reopen with.
        policy: Policy,
    },
}

/// Payload lengths go up to this, so that a few records fill a 4 KiB segment.
pub const SIM_RECORD_SIZE_MAX: u16 = 600;
/// Segment size of simulated runs: small, so that runs roll and compact segments often.
pub const SIM_SEGMENT_SIZE: u64 = 4096;
/// Segment size of runs with large records: room for one or two of them.
pub const SIM_LARGE_SEGMENT_SIZE: u64 = 64 << 10;
/// The largest payload of runs with large records: above the size from which batches are
/// written with one gathering write rather than through a mapping (32 KiB).
pub const SIM_LARGE_RECORD_SIZE_MAX: u16 = 40_000;

/// How a simulated run's queue and filesystem are set up. Drawn from the seed
/// ([`config_from_seed`]) and kept while a failing run is shrunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// The queue's segment size.
    pub segment_size: u64,
    /// [`Options::segment_pool`]: consumed segment files kept for reuse.
    pub segment_pool: usize,
    /// Whether the simulated filesystem offers writable mappings
    /// ([`SimStorage::set_writable_mappings`]), so that the engine stores frames and head slots
    /// through them under `Never` and `Interval` as it does on the real filesystem.
    pub writable_mappings: bool,
    /// The largest payload the workload pushes and the queue accepts.
    pub record_size_max: u16,
    /// [`Options::max_records`] with `Overflow::Reject`, if any: a push may then fail with
    /// `Error::Full`, which the run checks is right (the queue holds that many records).
    pub max_records: Option<u64>,
    /// Whether the queue is opened as processes sharing it open it
    /// ([`Options::exclusive`]`(false)`), alone: solo where it may be
    /// ([`SimStorage::allow_solo`]), else on the shared paths. No segment pool then (shared
    /// queues have none).
    pub shared: bool,
}

impl Default for SimConfig {
    /// 4 KiB segments, no pool, no writable mappings, records up to 600 bytes: the setup of
    /// [`run_ops`] and of the `ops_model` fuzz target.
    fn default() -> Self {
        SimConfig {
            segment_size: SIM_SEGMENT_SIZE,
            segment_pool: 0,
            writable_mappings: false,
            record_size_max: SIM_RECORD_SIZE_MAX,
            max_records: None,
            shared: false,
        }
    }
}

/// The setup of seed `seed`'s run: mostly writable mappings (the real filesystem's write path)
/// and a segment pool; a quarter of the runs push large records into 64 KiB segments.
pub fn config_from_seed(seed: u64) -> SimConfig {
    // A generator of its own, so that the workload drawn from the seed stays the same.
    let mut rng = SimRng::new(seed ^ 0xc0f1_6000_5eed);
    let large = rng.chance(1, 4);
    SimConfig {
        segment_size: if large {
            SIM_LARGE_SEGMENT_SIZE
        } else {
            SIM_SEGMENT_SIZE
        },
        segment_pool: [0, 1, 2, 2][rng.below(4) as usize],
        writable_mappings: rng.chance(3, 4),
        record_size_max: if large {
            SIM_LARGE_RECORD_SIZE_MAX
        } else {
            SIM_RECORD_SIZE_MAX
        },
        // Drawn last, so that the setups drawn before stay those of earlier builds.
        max_records: rng.chance(1, 4).then(|| 4 + rng.below(28)),
        // From a generator of its own, for the same reason.
        shared: SimRng::new(seed ^ 0x5AA2_ED00_5EED).chance(1, 3),
    }
}
/// The most operations decoded from one fuzz input.
pub const OPS_MAX: usize = 300;

const FAULT_OPS: [SimOp; 9] = [
    SimOp::Write,
    SimOp::SyncData,
    SimOp::SetLen,
    SimOp::Map,
    SimOp::Open,
    SimOp::CreateNew,
    SimOp::RemoveFile,
    SimOp::SyncDir,
    SimOp::Read,
];

fn fault_from(rng_value: u64) -> Fault {
    let op = match rng_value % 11 {
        9 | 10 => None,
        index => Some(FAULT_OPS[index as usize]),
    };
    let kind = match (rng_value >> 8) % 3 {
        0 => FaultKind::Io,
        1 => FaultKind::NoSpace,
        _ => FaultKind::ShortWrite,
    };
    Fault {
        op,
        skip: (rng_value >> 16) % 6,
        kind,
        sticky: (rng_value >> 24) & 7 == 0,
    }
}

/// Decodes operations from fuzz bytes: one opcode byte and up to two argument bytes each.
pub fn ops_from_bytes(data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    while ops.len() < OPS_MAX {
        let Some(code) = next() else { break };
        let a = next().unwrap_or(0);
        let op = match code % 16 {
            0..=3 => Op::Push {
                len: u16::from_le_bytes([a, next().unwrap_or(0)]) % (SIM_RECORD_SIZE_MAX + 1),
            },
            4 => Op::PushBatch {
                count: 1 + a % 8,
                len: u16::from(next().unwrap_or(0)) * 2,
            },
            5..=7 => Op::Pop { max: 1 + a % 8 },
            8 if a & 3 == 0 => Op::Peek,
            8 if a & 3 == 1 => Op::RecvNack {
                count: 1 + (a >> 2) % 8,
            },
            8 => Op::RecvAck {
                count: 1 + (a >> 1) % 8,
                reverse: a & 2 != 0,
            },
            9 => Op::Compact,
            10 => Op::Sync,
            11 => Op::Reopen {
                policy: Policy::from_byte(a),
            },
            12 => Op::ProcessCrash {
                policy: Policy::from_byte(a),
            },
            13 => Op::PowerLoss {
                seed: u64::from(a) << 8 | u64::from(next().unwrap_or(0)),
                policy: Policy::from_byte(a >> 4),
            },
            15 if a % 16 == 0 => Op::Purge,
            15 if a % 16 == 1 => Op::PushDedup {
                key: (a >> 4) % 8,
                len: u16::from(next().unwrap_or(0)),
            },
            15 if a % 16 == 2 => Op::PushTtl {
                count: 1 + (a >> 4) % 4,
                len: u16::from(next().unwrap_or(0)),
            },
            _ => {
                let b = next().unwrap_or(0);
                let c = next().unwrap_or(0);
                Op::Fault(fault_from(u64::from_le_bytes([a, b, c, a ^ c, 0, 0, 0, 0])))
            }
        };
        ops.push(op);
    }
    ops
}

/// Generates a random workload of `count` operations from `seed`, weighted like a busy queue:
/// mostly pushes and pops, now and then a crash or an injected fault; for `config`, whose large
/// records, when it has them, are one push in ten.
pub fn ops_from_seed_for(seed: u64, count: usize, config: &SimConfig) -> Vec<Op> {
    let mut rng = SimRng::new(seed);
    let mut ops = Vec::with_capacity(count);
    // Each run leans towards one policy, so that runs under Never build up unsynced state.
    let lean = Policy::from_byte(rng.below(3) as u8);
    let policy = |rng: &mut SimRng| {
        if rng.chance(3, 4) {
            lean
        } else {
            Policy::from_byte(rng.below(3) as u8)
        }
    };
    for _ in 0..count {
        let roll = rng.below(100);
        let op = match roll {
            0..=29 if config.record_size_max > SIM_RECORD_SIZE_MAX && rng.chance(1, 10) => {
                // Large enough for the gathered write (32 KiB and more) or just below it.
                let low = u64::from(config.record_size_max) / 2;
                Op::Push {
                    len: (low + rng.below(u64::from(config.record_size_max) - low + 1)) as u16,
                }
            }
            0..=29 => Op::Push {
                len: rng.below(u64::from(SIM_RECORD_SIZE_MAX) + 1) as u16,
            },
            30..=39 if config.record_size_max > SIM_RECORD_SIZE_MAX && rng.chance(1, 8) => {
                // A batch of a few large records: 24–60 KiB, one gathering write.
                Op::PushBatch {
                    count: 2 + rng.below(3) as u8,
                    len: (8_000 + rng.below(7_000)) as u16,
                }
            }
            30..=39 => Op::PushBatch {
                count: 1 + rng.below(6) as u8,
                len: rng.below(300) as u16,
            },
            40..=64 => Op::Pop {
                max: 1 + rng.below(4) as u8,
            },
            65 => Op::Peek,
            66 => Op::RecvNack {
                count: 1 + rng.below(4) as u8,
            },
            67..=69 => Op::RecvAck {
                count: 1 + rng.below(5) as u8,
                reverse: rng.chance(1, 2),
            },
            70..=73 => Op::Compact,
            74..=76 => Op::Sync,
            77..=79 => Op::Reopen {
                policy: policy(&mut rng),
            },
            80..=83 => Op::ProcessCrash {
                policy: policy(&mut rng),
            },
            84..=91 => Op::PowerLoss {
                seed: rng.next_u64(),
                policy: policy(&mut rng),
            },
            92..=93 => Op::Damage {
                seed: rng.next_u64(),
                policy: policy(&mut rng),
            },
            94 if rng.chance(1, 3) => Op::Purge,
            95 => Op::PushDedup {
                key: rng.below(8) as u8,
                len: rng.below(200) as u16,
            },
            _ => {
                let mut fault = fault_from(rng.next_u64());
                if config.writable_mappings && fault.op == Some(SimOp::Map) && rng.chance(1, 2) {
                    fault.op = Some(SimOp::MapWritable);
                }
                Op::Fault(fault)
            }
        };
        ops.push(op);
    }
    // Every workload starts under its leaning policy.
    ops.insert(0, Op::Reopen { policy: lean });
    ops
}

/// [`ops_from_seed_for`] the default [`SimConfig`].
pub fn ops_from_seed(seed: u64, count: usize) -> Vec<Op> {
    ops_from_seed_for(seed, count, &SimConfig::default())
}

/// What the durability contract allows the queue to hold, given what the calls returned.
///
/// `head` and `tail` are what the calls so far say (records `head..tail` are in the queue);
/// `*_durable` is how far each is known to be on stable storage; `*_high` how far a failed call
/// may have moved it. After a process crash the queue must be at `head..=head_high` and
/// `tail..=tail_high`; after a power loss at `head_durable..=head_high` and
/// `tail_durable..=tail_high`.
#[derive(Default)]
struct Model {
    /// Every payload that may sit at each sequence number (more than one after a failed push).
    candidates: BTreeMap<u64, Vec<Vec<u8>>>,
    /// Sequence numbers at which a push call ended: where a recovered queue may end.
    boundaries: BTreeSet<u64>,
    head: u64,
    head_durable: u64,
    head_high: u64,
    tail: u64,
    tail_durable: u64,
    tail_high: u64,
    /// Records acknowledged as jobs, possibly beyond the head: a pop or receive may skip them.
    acked: BTreeMap<u64, AckState>,
    next_payload_id: u64,
    /// Records below this are known synced to the head (its `synced_seq`, see DURABILITY.md,
    /// "What the head knows was synced": written by `sync`, by a pop under `Always`, by open):
    /// damage to them may never cut them, only refuse them. Damage to records above it, synced
    /// or not, may be cut, with a report when they were durable.
    promised: u64,
    /// Jobs behind a recovered head whose acknowledgement (or skip) is durable: skipped if a
    /// later open leaves the head behind them.
    durable_acks: BTreeSet<u64>,
    /// The deduplication ids pushed, by key.
    dedup: BTreeMap<u8, DedupKnown>,
}

/// What the model knows of a deduplication id.
#[derive(Debug, Clone)]
struct DedupKnown {
    /// The numbers its first push may have got (one when `certain`).
    seqs: Vec<u64>,
    /// Whether the queue must remember it (its push returned, and a crash since kept it).
    certain: bool,
}

/// What is known about an acknowledged job.
#[derive(Debug, Clone, Copy)]
struct AckState {
    /// The acknowledgement is on stable storage.
    durable: bool,
    /// The record must never be delivered again (false after a power loss took a non-durable
    /// acknowledgement).
    guaranteed: bool,
}

impl Model {
    /// A payload unique to this push: its id, then `len` bytes derived from it.
    fn payload(&mut self, len: u16) -> Vec<u8> {
        let id = self.next_payload_id;
        self.next_payload_id += 1;
        let mut bytes = id.to_le_bytes().to_vec();
        let fill = (id % 251) as u8;
        bytes.extend((0..len).map(|index| fill.wrapping_add(index as u8)));
        bytes
    }

    fn bounds(&self) -> String {
        format!(
            "model: head {} (durable {}, high {}), tail {} (durable {}, high {})",
            self.head,
            self.head_durable,
            self.head_high,
            self.tail,
            self.tail_durable,
            self.tail_high
        )
    }

    /// Makes everything the calls said durable.
    fn all_durable(&mut self) {
        for seq in self.tail_durable..self.tail {
            if let Some(list) = self.candidates.get_mut(&seq) {
                let last = list.pop();
                list.clear();
                list.extend(last);
            }
        }
        self.candidates.split_off(&self.tail);
        self.boundaries.split_off(&(self.tail + 1));
        self.head_durable = self.head;
        self.head_high = self.head;
        self.tail_durable = self.tail;
        self.tail_high = self.tail;
        self.promised = self.tail;
        // An acknowledgement a power loss may have taken stays uncertain: the sync makes
        // durable whatever the queue holds, which the model does not know.
        for state in self.acked.values_mut() {
            state.durable |= state.guaranteed;
        }
        self.extend_high();
    }

    /// A power loss may take back every acknowledgement that was not durable, and bring back
    /// any record popped since the last durable head, or not (a pop's consumption can persist
    /// in the ack log without the head): such records may be delivered again or skipped.
    fn power_lost(&mut self) {
        for state in self.acked.values_mut() {
            state.guaranteed = state.durable;
        }
        // Ids pushed under `Never` or `Interval` since the last sync may be forgotten.
        for known in self.dedup.values_mut() {
            known.certain &= known.seqs.iter().all(|&seq| seq < self.tail_durable);
        }
        let uncertain = AckState {
            durable: false,
            guaranteed: false,
        };
        for seq in self.head_durable..self.head {
            self.acked.entry(seq).or_insert(uncertain);
        }
    }

    /// The head may move over acknowledged jobs without a pop.
    fn extend_high(&mut self) {
        while self.head_high < self.tail_high && self.acked.contains_key(&self.head_high) {
            self.head_high += 1;
        }
    }

    /// After a failed consumer call under `Never` or `Interval`: the head write may have
    /// failed and torn the slot that held the newest unsynced head, and putting it back may
    /// have failed too (a device that keeps failing), so records popped since the last durable
    /// head may be delivered again after reopening, or not.
    fn unsynced_pops_uncertain(&mut self) {
        let uncertain = AckState {
            durable: false,
            guaranteed: false,
        };
        for seq in self.head_durable..self.head {
            self.acked.entry(seq).or_insert(uncertain);
        }
        // Acks at the head live in that slot too.
        for state in self
            .acked
            .range_mut(self.head_durable..)
            .map(|(_, state)| state)
        {
            state.guaranteed &= state.durable;
        }
        self.head = self.head_durable.min(self.head);
    }

    /// A failed call that takes up to `count` records may have consumed them, also for good
    /// (a pop's consumption of records beyond the head goes into the ack log).
    fn may_have_taken(&mut self, count: usize) {
        let high = self.high_after_taking(count);
        let uncertain = AckState {
            durable: false,
            guaranteed: false,
        };
        for seq in self.head..high {
            self.acked.entry(seq).or_insert(uncertain);
        }
        self.head_high = self.head_high.max(high);
        self.extend_high();
    }

    /// How far the head may move when a call takes up to `count` records: acknowledged jobs
    /// in between are skipped without counting.
    fn high_after_taking(&self, count: usize) -> u64 {
        let mut taken = 0;
        let mut seq = self.head;
        while taken < count && seq < self.tail_high {
            if !self.acked.contains_key(&seq) {
                taken += 1;
            }
            seq += 1;
        }
        seq
    }

    /// The first record at or after `from` that must still be delivered.
    fn first_owed(&self, from: u64) -> Option<u64> {
        (from.max(self.head_high)..self.tail).find(|seq| !self.acked.contains_key(seq))
    }

    /// Checks a recovered queue's bounds and adopts them.
    /// After damage (`damaged`), records that were durable but never promised durable may be
    /// cut, as recovery cuts a torn write; a cut it reports must name where the queue now ends.
    fn recovered(&mut self, queue: &Queue, power_loss: bool, damaged: bool) -> Result<(), String> {
        let stats = queue
            .stats()
            .map_err(|error| format!("stats failed: {error}"))?;
        let (head, tail) = (stats.head_seq, stats.next_seq);
        self.extend_high();
        let head_low = if power_loss {
            self.head_durable
        } else {
            self.head
        };
        let report = queue.recovery_report();
        if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
            eprintln!("   recovered head {head} tail {tail}: {report:?}");
        }
        let exact = |cut: &crate::engine::report::Truncation| {
            cut.first_lost_seq == tail
                || (report.restarted_at_seq == Some(tail) && cut.first_lost_seq <= tail)
        };
        // The ack log's torn entries are reported there too.
        let segment_cut = report
            .truncated
            .iter()
            .rfind(|cut| cut.file.extension().is_some_and(|ext| ext == "seg"));
        // After damage, recovery may cut only records the head did not know were synced, and
        // never silently those that were durable.
        let tail_low = if damaged {
            self.promised.min(self.tail_durable)
        } else if power_loss {
            self.tail_durable
        } else {
            self.tail
        };
        if damaged && tail < self.tail_durable && !segment_cut.is_some_and(exact) {
            return Err(format!(
                "acknowledged records were cut without a report: next_seq {tail} < {} ({})",
                self.tail_durable,
                self.bounds()
            ));
        }
        if damaged {
            if let Some(cut) = segment_cut {
                if !exact(cut) {
                    return Err(format!(
                        "recovery cut damaged data but reports {} as the first lost record, \
                         while the queue now ends at {tail}: {cut:?}",
                        cut.first_lost_seq
                    ));
                }
            }
        }
        // The head index may lag behind jobs acknowledged in the ack log; those are skipped.
        // That holds also for acks behind a head a recovery moved over them without syncing it
        // (a later open that cannot read past them, such as at damage, stays behind them).
        for &seq in self.durable_acks.range(head..head_low.max(head)) {
            let durable = AckState {
                durable: true,
                guaranteed: true,
            };
            self.acked.entry(seq).or_insert(durable);
        }
        let returned =
            (head..head_low).find(|seq| !self.acked.get(seq).is_some_and(|state| state.guaranteed));
        if let Some(returned) = returned {
            return Err(format!(
                "consumed records came back: head {head} < {head_low}, seq {returned} would be delivered again ({})",
                self.bounds()
            ));
        }
        if head > self.head_high {
            return Err(format!(
                "records were consumed that no pop took: head {head} > {} ({})",
                self.head_high,
                self.bounds()
            ));
        }
        if tail > self.tail_high {
            return Err(format!(
                "records appeared that no push wrote: next_seq {tail} > {} ({})",
                self.tail_high,
                self.bounds()
            ));
        }
        // A damaged segment holding only its header is removed as a creation cut short: the
        // queue then restarts at its head just the same.
        // After damage that took the newest segment (removed as a creation cut short, or lost),
        // the queue starts again at its head as it does when a power loss took consumed records:
        // the records lost must still be ones it may lose (below).
        let restarted = report.restarted_at_seq == Some(head) || damaged;
        if damaged && tail < tail_low {
            return Err(format!(
                "acknowledged records were lost to damage: next_seq {tail} < {tail_low} ({})",
                self.bounds()
            ));
        }
        if !(restarted && tail == head) {
            if tail < tail_low {
                return Err(format!(
                    "acknowledged records were lost: next_seq {tail} < {tail_low} ({})",
                    self.bounds()
                ));
            }
            if tail > 0 && !self.boundaries.contains(&tail) {
                return Err(format!(
                    "recovered queue ends inside a batch at {tail} ({})",
                    self.bounds()
                ));
            }
        }
        self.candidates.split_off(&tail);
        self.boundaries.split_off(&(tail + 1));
        self.boundaries.insert(tail);
        self.head = head;
        self.head_durable = head;
        self.head_high = head;
        self.tail = tail;
        self.tail_durable = tail;
        self.tail_high = tail;
        // Open records every record it recovered as synced.
        self.promised = tail;
        let behind = std::mem::take(&mut self.acked);
        for (seq, state) in behind {
            if seq >= tail {
                continue;
            }
            if seq >= head {
                self.acked.insert(seq, state);
            } else {
                // The recovered head passed it: the ack log (which open syncs) or the head
                // (also synced) holds its consumption now.
                self.durable_acks.insert(seq);
            }
        }
        self.durable_acks.split_off(&tail);
        // An id whose record the recovery cut is dropped at open.
        for known in self.dedup.values_mut() {
            known.seqs.retain(|&seq| seq < tail);
        }
        self.dedup.retain(|_, known| !known.seqs.is_empty());
        self.extend_high();
        Ok(())
    }

    /// Checks one record handed out at the head and moves the model's head to it. A failed pop
    /// may have consumed records without handing them out (its error says it may or may not
    /// have taken effect), so the head may have moved up to `head_high`.
    fn take_record(&mut self, seq: u64, payload: &[u8], what: &str) -> Result<(), String> {
        self.check_record(seq, payload, what)?;
        self.skip_to(seq);
        Ok(())
    }

    /// Moves the head to `seq`. The live queue skipped the records before it, so they are
    /// consumed there: a process crash keeps that (a power loss may not, unless durable).
    fn skip_to(&mut self, seq: u64) {
        for skipped in self.head..seq {
            let state = self.acked.entry(skipped).or_insert(AckState {
                durable: false,
                guaranteed: true,
            });
            state.guaranteed = true;
        }
        self.head = self.head.max(seq);
    }

    /// Checks a record seen at the head without taking it.
    fn check_record(&self, seq: u64, payload: &[u8], what: &str) -> Result<(), String> {
        if seq < self.head {
            return Err(format!(
                "{what} returned seq {seq}, below the head {}",
                self.head
            ));
        }
        if self.acked.get(&seq).is_some_and(|state| state.guaranteed) {
            return Err(format!(
                "{what} returned seq {seq}, an acknowledged job, again"
            ));
        }
        // Records before it may be skipped only if a failed call may have consumed them or
        // they were acknowledged as jobs.
        if let Some(skipped) = (self.head_high..seq).find(|seq| !self.acked.contains_key(seq)) {
            return Err(format!(
                "{what} returned seq {seq}, skipping seq {skipped} (head {}, high {})",
                self.head, self.head_high
            ));
        }
        match self.candidates.get(&seq) {
            Some(list) if list.iter().any(|candidate| candidate == payload) => {}
            Some(_) => {
                return Err(format!(
                    "{what} returned seq {seq} with a payload never pushed there"
                ))
            }
            None => return Err(format!("{what} returned seq {seq}, which no push wrote")),
        }
        Ok(())
    }
}

/// Which damage [`Op::Damage`] injects. Damage whose outcome is a known defect of issue 10 is
/// off until that defect is fixed: set the constant to `true`, or name the defect in the
/// environment variable `DISKSPOOL_SIM_DEFECTS` (`DISKSPOOL_SIM_DEFECTS=0,4,7`), to reproduce it
/// (see docs/TESTING.md).
pub mod damage_gates {
    /// Whether damage gated by `constant` (defect `defect` of issue 10) is injected.
    pub(crate) fn on(constant: bool, defect: u32) -> bool {
        constant
            || std::env::var("DISKSPOOL_SIM_DEFECTS").is_ok_and(|list| {
                list.split(',')
                    .any(|item| item.trim().parse() == Ok(defect))
            })
    }

    /// Losing the newest segment file while it holds durable records the head does not know
    /// were synced (records pushed since the head was last written: DURABILITY.md, "After a
    /// crash"). The fix of defect 4 of issue 10 refuses the loss of records the head knows;
    /// of the others nothing on disk shows the loss: the queue ends earlier without a report
    /// and hands their sequence numbers out again, also records pushed under `Always` (seed 7
    /// of the default run). Losing the newest segment when the head knows all is injected.
    pub const LOSE_NEWEST_SEGMENT_THE_HEAD_DOES_NOT_KNOW: bool = false;
    /// Damage to the ack log (defect 7 of issue 10). With its fix merged, seed 20 of the
    /// default run still fails: a flipped byte in the ack log's header after a power loss
    /// under `Interval`, and the queue restarts at the head without saying so in
    /// `RecoveryReport::restarted_at_seq` (not analysed further).
    pub const DAMAGE_ACK_LOG: bool = false;
    /// Zeros written over the active segment from a record to its end (a zeroed sector at
    /// the end of the file) while the head does not know that record was synced: recovery
    /// takes them for space the writer prepared ahead of its tail and cuts them without a
    /// report, so a record pushed under `Always` (acknowledged, synced) is silently gone
    /// (seed 1,043,071 of the long run). Not a numbered defect: `DISKSPOOL_SIM_DEFECTS=0`.
    pub const ZERO_ACTIVE_TAIL_THE_HEAD_DOES_NOT_KNOW: bool = false;
}

/// Damage [`Op::Damage`] put into synced data, until the queue reports it.
#[derive(Debug, Clone)]
struct Damage {
    /// The damaged file.
    path: PathBuf,
    /// Where the replaced bytes start (0 for a lost file).
    offset: u64,
    /// The bytes replaced, or the whole file when it was lost.
    original: Vec<u8>,
    /// The file was lost.
    lost: bool,
    /// The file was the active segment, the head or the ack log: open reads it whole, so the
    /// damage is settled once an open succeeded.
    read_at_open: bool,
}

impl Damage {
    /// Whether `error` is the queue refusing this damage: a typed error naming the damaged file
    /// (for a lost file: a file of the queue), at or before the damage.
    fn reported_by(&self, error: &Error, dir: &Path) -> bool {
        let (file, offset) = match error {
            Error::Corrupt { file, offset, .. } => (file, *offset),
            Error::UnsupportedVersion { file, .. } => (file, 0),
            _ => return false,
        };
        if self.lost {
            return file.parent() == Some(dir);
        }
        *file == self.path && offset <= self.offset + self.original.len() as u64
    }
}

/// One simulated run: the filesystem, the open queue, the model.
struct Run {
    config: SimConfig,
    sim: SimStorage,
    dir: PathBuf,
    queue: Option<Queue>,
    policy: Policy,
    model: Model,
    /// Damage not yet reported by the queue.
    damage: Option<Damage>,
    /// What became of the damage injected so far.
    summary: RunSummary,
    /// Set when a call failed because the queue refused the damage: the damage is repaired
    /// and the queue reopened after the operation.
    damage_reported: std::cell::Cell<bool>,
    /// Opens with [`OnDamage::Quarantine`]: damage must never be refused, only set aside.
    quarantine: bool,
}

impl Run {
    fn options(&self, policy: Policy) -> Options {
        Options::default()
            .exclusive(!self.config.shared)
            .max_records(self.config.max_records.unwrap_or(0))
            .segment_size(self.config.segment_size)
            .max_record_size(usize::from(self.config.record_size_max) + 16)
            .segment_pool(match self.config.shared {
                true => 0,
                false => self.config.segment_pool,
            })
            .sync(policy.sync_policy())
            .storage(Arc::new(self.sim.clone()))
            .on_damage(if self.quarantine {
                OnDamage::Quarantine
            } else {
                OnDamage::Refuse
            })
    }

    /// Opens the queue; an open that an armed fault breaks must fail with a typed error, and the
    /// next open, without faults, must succeed.
    fn open(&mut self, policy: Policy, power_loss: bool) -> Result<(), String> {
        let damaged = self.damage.is_some();
        let mut faulted_before = false;
        let queue = loop {
            let before = self.damage.is_some().then(|| self.files());
            let opened = Queue::open(&self.dir, self.options(policy));
            // A fault armed for this step is spent on the open, not on the checks after it.
            self.sim.clear_faults();
            match opened {
                Ok(queue) => break queue,
                Err(error) if self.quarantine && self.damage_refused(&error) => {
                    return Err(format!("open refused damage under Quarantine: {error}"));
                }
                Err(error) if self.damage_refused(&error) => {
                    self.check_refusal_changed_nothing(before, &error)?;
                    self.repair_damage()?;
                }
                Err(error) => {
                    let faulted = matches!(error, Error::Io { .. }) && self.sim.stats().faults > 0;
                    if !faulted || faulted_before {
                        let after = if faulted_before { " after a fault" } else { "" };
                        return Err(format!("open failed{after}: {error}"));
                    }
                    // Once: the next open, without faults, must succeed (or refuse damage).
                    faulted_before = true;
                }
            }
        };
        if self.quarantine && queue.recovery_report().repaired() {
            return self.quarantined(queue, policy, power_loss);
        }
        // `stats` reads the oldest record: it may reach the damage and refuse it.
        let queue = match queue.stats() {
            Err(error) if self.quarantine && self.damage_refused(&error) => {
                return Err(format!(
                    "damage left in place by an open under Quarantine: {error}"
                ));
            }
            Err(error) if self.damage_refused(&error) => {
                drop(queue);
                self.repair_damage()?;
                Queue::open(&self.dir, self.options(policy)).map_err(|error| {
                    format!("open failed after the damage was repaired: {error}")
                })?
            }
            _ => queue,
        };
        if self
            .damage
            .as_ref()
            .is_some_and(|damage| damage.read_at_open)
        {
            // Open read the damaged file whole and accepted it: what it cut was checked below,
            // and it may write over the damaged bytes from now on.
            self.damage = None;
        }
        if damaged
            && queue
                .recovery_report()
                .truncated
                .iter()
                .any(|cut| cut.file.extension().is_some_and(|ext| ext == "seg"))
        {
            self.summary.cut += 1;
        }
        self.model.recovered(&queue, power_loss, damaged)?;
        self.queue = Some(queue);
        self.policy = policy;
        Ok(())
    }

    /// After `open` refused damage with `error`: the damaged file and the head are as they
    /// were `before` (recovery may have cut a torn tail a power loss left in another file
    /// first).
    fn check_refusal_changed_nothing(
        &self,
        before: Option<BTreeMap<String, Option<Vec<u8>>>>,
        error: &Error,
    ) -> Result<(), String> {
        let after = self.files();
        let damaged_name = self
            .damage
            .as_ref()
            .and_then(|damage| damage.path.file_name())
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .to_string();
        let unchanged = |name: &String| {
            *name != damaged_name && name.as_str() != HEAD_FILE_NAME
                || before.as_ref().and_then(|before| before.get(name)) == after.get(name)
        };
        let changed: Vec<&String> = after
            .keys()
            .chain(before.iter().flat_map(|before| before.keys()))
            .filter(|name| !unchanged(name))
            .collect();
        if changed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "open refused damage ({error}) but changed files on disk: {changed:?}"
            ))
        }
    }

    /// Every file in the queue directory with its bytes; for the head, the head in force
    /// (opening the head index rewrites its spare slot with that state, and open records how
    /// far what it recovered is synced: neither changes the head).
    fn files(&self) -> BTreeMap<String, Option<Vec<u8>>> {
        self.sim
            .file_names(&self.dir)
            .into_iter()
            .map(|name| {
                let mut bytes = self.sim.read_file(&self.dir.join(&name));
                if name == HEAD_FILE_NAME {
                    bytes = bytes.map(|bytes| {
                        let read = decode_head_file(&bytes);
                        // Open may also record how far the records it recovered are synced.
                        let state = read
                            .current
                            .and_then(|current| read.slots[current].as_ref().ok())
                            .map(|slot| (slot.state.head_seq, slot.state.hint_base));
                        format!("{state:?}").into_bytes()
                    });
                }
                (name, bytes)
            })
            .collect()
    }

    /// After an open under [`OnDamage::Quarantine`] repaired damage: checks what the queue now
    /// holds against the model (every record it serves was pushed there; every record before
    /// the cut that the model owes is there; no sequence number is used again), adopts that
    /// state, and checks that a second open finds nothing to do.
    fn quarantined(
        &mut self,
        queue: Queue,
        policy: Policy,
        power_loss: bool,
    ) -> Result<(), String> {
        let report = queue.recovery_report().clone();
        if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
            eprintln!("   quarantined: {report:#?}");
        }
        let stats = queue
            .stats()
            .map_err(|error| format!("stats after a repair failed: {error}"))?;
        let (head, next_seq) = (stats.head_seq, stats.next_seq);
        let mut present = BTreeSet::new();
        let records = crate::tools::inspect::records(&self.sim, &self.dir, None)
            .map_err(|error| format!("reading a repaired queue failed: {error}"))?;
        for record in records {
            let record =
                record.map_err(|error| format!("repaired queue still damaged: {error}"))?;
            let pushed = self
                .model
                .candidates
                .get(&record.seq)
                .is_some_and(|list| list.contains(&record.payload));
            if !pushed {
                return Err(format!(
                    "the repaired queue serves record {} with a payload never pushed there",
                    record.seq
                ));
            }
            present.insert(record.seq);
        }
        let model = &mut self.model;
        let end = present.last().map_or(head, |last| last + 1);
        let steps: Vec<&str> = report.repairs.iter().map(|step| step.action).collect();
        let head_rewritten = steps.contains(&"rewrite_head");
        if let Some(cut) = &report.cut_seqs {
            if present.range(cut.start..).next().is_some() || next_seq < cut.end {
                return Err(format!(
                    "repair cut {cut:?} but the queue serves up to {end} and continues at \
                     {next_seq}"
                ));
            }
        }
        if next_seq < model.tail_durable.min(model.promised) {
            return Err(format!(
                "repair continues at {next_seq}, below durable records ({})",
                model.bounds()
            ));
        }
        if head > model.head_high && !head_rewritten {
            return Err(format!(
                "repair consumed records no pop took: head {head} ({})",
                model.bounds()
            ));
        }
        // Every record the model owes from the head to the cut is served.
        let head_low = if power_loss {
            model.head_durable
        } else {
            model.head
        };
        let cut_start = report.cut_seqs.as_ref().map_or(next_seq, |cut| cut.start);
        let owed_end = cut_start.min(model.promised.min(model.tail_durable));
        for seq in head.max(head_low)..owed_end {
            if !present.contains(&seq) && !model.acked.contains_key(&seq) {
                return Err(format!(
                    "record {seq}, before the cut at {cut_start}, was lost by the repair: \
                     {steps:?} ({})",
                    model.bounds()
                ));
            }
        }
        // The head index may lag behind jobs acknowledged in the ack log (see `recovered`).
        let behind: Vec<u64> = model
            .durable_acks
            .range(head..head_low.max(head))
            .copied()
            .collect();
        for seq in behind {
            model.acked.entry(seq).or_insert(AckState {
                durable: true,
                guaranteed: true,
            });
        }
        let returned = (head..head_low)
            .find(|seq| !model.acked.get(seq).is_some_and(|state| state.guaranteed));
        if let (Some(returned), false) = (returned, head_rewritten) {
            return Err(format!(
                "consumed record {returned} came back without a rewritten head: head {head} ({})",
                model.bounds()
            ));
        }
        // Adopt the repaired state: the numbers between the last record and `next_seq` are
        // retired (never handed out).
        model.candidates.split_off(&end);
        model.acked.split_off(&end);
        // Records consumed before a head moved back over them (a lost head index restarts at
        // the oldest record on disk) may come again, or be skipped where the ack log says so.
        for seq in head..model.head_high.min(end) {
            model.acked.entry(seq).or_insert(AckState {
                durable: false,
                guaranteed: false,
            });
        }
        // Facts of a rewritten head or ack log may be lost: acknowledged jobs may come again.
        if head_rewritten || steps.contains(&"rewrite_ack_log") {
            for state in model.acked.values_mut() {
                *state = AckState {
                    durable: false,
                    guaranteed: false,
                };
            }
        }
        let retired = AckState {
            durable: true,
            guaranteed: true,
        };
        for seq in end..next_seq {
            model.acked.insert(seq, retired);
        }
        model.durable_acks.split_off(&end);
        model.boundaries.split_off(&(next_seq + 1));
        model.boundaries.insert(end);
        model.boundaries.insert(next_seq);
        model.head = head;
        model.head_durable = head;
        model.head_high = head;
        model.tail = next_seq;
        model.tail_durable = next_seq;
        model.tail_high = next_seq;
        model.promised = next_seq;
        model.extend_high();
        self.damage = None;
        self.summary.quarantined += 1;
        drop(queue);
        let again = Queue::open(&self.dir, self.options(policy))
            .map_err(|error| format!("second open after a repair failed: {error}"))?;
        if again.recovery_report().repaired() {
            return Err(format!(
                "a second open repaired again: {:#?}",
                again.recovery_report()
            ));
        }
        self.queue = Some(again);
        self.policy = policy;
        Ok(())
    }

    /// Whether `error` refuses the damage not yet reported.
    fn damage_refused(&self, error: &Error) -> bool {
        self.damage
            .as_ref()
            .is_some_and(|damage| damage.reported_by(error, &self.dir))
    }

    /// Puts the damaged bytes (or the lost file) back, as an operator restoring a backup would.
    fn repair_damage(&mut self) -> Result<(), String> {
        let Some(damage) = self.damage.take() else {
            return Ok(());
        };
        self.summary.refused += 1;
        let repaired = if damage.lost {
            self.sim.write_file(&damage.path, &damage.original)
        } else {
            self.sim
                .overwrite_durably(&damage.path, damage.offset, &damage.original)
                .map(|_| ())
        };
        repaired.map_err(|error| format!("repairing the damage failed: {error}"))
    }

    /// Damages synced data as `seed` says (everything on disk is synced: this follows a power
    /// loss). Returns a description for traces.
    fn damage(&mut self, seed: u64) -> Result<String, String> {
        use damage_gates::*;
        let mut rng = SimRng::new(seed ^ 0xda3a_6e00);
        let names = self.sim.file_names(&self.dir);
        let mut segments: Vec<&String> =
            names.iter().filter(|name| name.ends_with(".seg")).collect();
        segments.sort();
        let newest = segments.last().copied();
        let mut targets: Vec<(&String, bool)> = Vec::new();
        for name in &names {
            let is_newest = Some(name) == newest;
            let wanted = if name.ends_with(".seg") {
                true
            } else if name == crate::format::layout::ACK_LOG_FILE_NAME {
                on(DAMAGE_ACK_LOG, 7)
            } else {
                name == HEAD_FILE_NAME || name.ends_with(crate::format::layout::POOL_SUFFIX)
            };
            if wanted {
                targets.push((name, is_newest));
            }
        }
        let Some(&(name, is_newest)) = targets.get(rng.below(targets.len() as u64) as usize) else {
            return Ok(String::from("nothing to damage"));
        };
        let path = self.dir.join(name);
        let Some(bytes) = self.sim.read_file(&path) else {
            return Ok(String::from("nothing to damage"));
        };
        let is_head = name == HEAD_FILE_NAME;
        let is_pool = name.ends_with(crate::format::layout::POOL_SUFFIX);
        // The head knows every durable record is synced: losing the newest segment must be
        // refused (or lose nothing).
        let head_knows = self.model.promised >= self.model.tail_durable;
        let may_lose =
            !is_newest || head_knows || on(LOSE_NEWEST_SEGMENT_THE_HEAD_DOES_NOT_KNOW, 4);
        let read_at_open = is_newest || !name.ends_with(".seg");
        let roll = rng.below(10);
        let damage = if is_head || (roll >= 8 && may_lose) || bytes.is_empty() {
            if is_head && rng.chance(1, 2) {
                // Both slots zeroed: the head is lost as surely as without its file.
                let zeros = vec![0; bytes.len()];
                let original = self
                    .sim
                    .overwrite_durably(&path, 0, &zeros)
                    .map_err(|error| format!("damage: {error}"))?;
                Damage {
                    path,
                    offset: 0,
                    original,
                    lost: false,
                    read_at_open,
                }
            } else {
                self.sim
                    .delete_file(&path)
                    .map_err(|error| format!("damage: {error}"))?;
                Damage {
                    path,
                    offset: 0,
                    original: bytes,
                    lost: true,
                    read_at_open,
                }
            }
        } else {
            let offset = rng.below(bytes.len() as u64);
            let mut replacement = if roll < 5 {
                vec![bytes[offset as usize] ^ (1 << rng.below(8))]
            } else {
                let len = 1 + rng.below(512.min(bytes.len() as u64 - offset));
                vec![0; len as usize]
            };
            // Zeros from the damage to the end of the active segment look like space the writer
            // prepared: see `ZERO_ACTIVE_TAIL_THE_HEAD_DOES_NOT_KNOW`.
            let zeros_to_the_end = replacement.iter().all(|&byte| byte == 0)
                && bytes[offset as usize + replacement.len()..]
                    .iter()
                    .all(|&byte| byte == 0);
            if is_newest
                && zeros_to_the_end
                && !head_knows
                && !on(ZERO_ACTIVE_TAIL_THE_HEAD_DOES_NOT_KNOW, 0)
            {
                replacement = vec![bytes[offset as usize] ^ 1];
            }
            let original = self
                .sim
                .overwrite_durably(&path, offset, &replacement)
                .map_err(|error| format!("damage: {error}"))?;
            Damage {
                path,
                offset,
                original,
                lost: false,
                read_at_open,
            }
        };
        let description = format!(
            "{} {} at {} ({} bytes)",
            if damage.lost { "lost" } else { "damaged" },
            damage.path.display(),
            damage.offset,
            damage.original.len()
        );
        // Damage to a pool file is to nothing the queue holds: it must go unnoticed.
        if !is_pool {
            self.damage = Some(damage);
            self.summary.damaged += 1;
        }
        Ok(description)
    }

    fn queue(&self) -> Result<&Queue, String> {
        self.queue
            .as_ref()
            .ok_or_else(|| String::from("no open queue"))
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        let faults_before = self.sim.stats().faults;
        let outcome = match op {
            Op::Push { len } => self.push(&[*len]),
            Op::PushBatch { count, len } => self.push(&vec![*len; usize::from(*count)]),
            Op::Pop { max } => self.pop(usize::from(*max), faults_before),
            Op::Peek => self.peek(faults_before),
            Op::RecvNack { count } => self.recv_nack(usize::from(*count), faults_before),
            Op::RecvAck { count, reverse } => {
                self.recv_ack(usize::from(*count), *reverse, faults_before)
            }
            Op::Compact => match self.queue()?.compact() {
                Ok(_) => {
                    self.model.head_durable = self.model.head;
                    Ok(())
                }
                Err(error) => self.expect_fault(error, faults_before),
            },
            Op::Sync => match self.queue()?.sync() {
                Ok(()) => {
                    let promised = self.model.promised;
                    self.model.all_durable();
                    if !has_consumer(self.queue()?) {
                        // Synced, but the head, which this handle does not write, does not
                        // know it: damage there after a crash may be cut, as after any crash.
                        self.model.promised = promised;
                    }
                    Ok(())
                }
                Err(error) => self.expect_fault(error, faults_before),
            },
            Op::Reopen { policy } => {
                self.queue = None;
                self.open(*policy, false)
            }
            Op::ProcessCrash { policy } => {
                self.sim.process_crash();
                self.queue = None;
                self.open(*policy, false)
            }
            Op::PowerLoss { seed, policy } => {
                self.sim.power_loss_seeded(*seed);
                self.queue = None;
                self.model.power_lost();
                self.open(*policy, true)
            }
            Op::Damage { seed, policy } => {
                self.sim.power_loss_seeded(*seed);
                self.queue = None;
                self.model.power_lost();
                // One damage at a time: while one is unreported, this is a plain power loss.
                if self.damage.is_none() {
                    let what = self.damage(*seed)?;
                    if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
                        eprintln!("   {what}");
                    }
                }
                self.open(*policy, true)
            }
            Op::Fault(fault) => {
                self.sim.inject(*fault);
                return Ok(());
            }
            Op::Purge => self.purge(faults_before),
            Op::PushDedup { key, len } => self.push_dedup(*key, *len),
            Op::PushTtl { count, len } => {
                let push = Push::new().ttl(Duration::from_secs(86_400));
                self.push_as(&vec![*len; usize::from(*count)], Some(&push))
            }
        };
        self.sim.clear_faults();
        outcome?;
        if self.damage_reported.get() && self.quarantine {
            return Err(String::from(
                "a read refused damage that the open under Quarantine did not set aside",
            ));
        }
        if self.damage_reported.replace(false) {
            // The queue refused the damage when it reached it: repair it and reopen (the
            // queue may hold the damaged bytes in a mapping).
            self.repair_damage()?;
            self.queue = None;
            self.open(self.policy, false)?;
        }
        Ok(())
    }

    /// An error is acceptable only when a fault was injected during the call, or the queue was
    /// poisoned by an earlier one.
    fn expect_fault(&self, error: Error, faults_before: u64) -> Result<(), String> {
        let injected = self.sim.stats().faults > faults_before;
        if self.damage_refused(&error) {
            self.damage_reported.set(true);
            return Ok(());
        }
        match error {
            Error::Io { .. } if injected => Ok(()),
            Error::Poisoned { .. } => Ok(()),
            other => Err(format!("unexpected error: {other}")),
        }
    }

    fn push(&mut self, lens: &[u16]) -> Result<(), String> {
        self.push_as(lens, None)
    }

    /// A batch of pushes, with the options of `push` (a TTL) when given.
    fn push_as(&mut self, lens: &[u16], push: Option<&Push>) -> Result<(), String> {
        let faults_before = self.sim.stats().faults;
        let payloads: Vec<Vec<u8>> = lens.iter().map(|&len| self.model.payload(len)).collect();
        let result = match push {
            None => self.queue()?.push_batch(&payloads),
            Some(push) => self.queue()?.push_batch_with(&payloads, push),
        };
        let model = &mut self.model;
        match result {
            Ok(range) => {
                if range.start != model.tail || range.end - range.start != lens.len() as u64 {
                    return Err(format!(
                        "push returned {range:?}, expected {}..{}",
                        model.tail,
                        model.tail + lens.len() as u64
                    ));
                }
                // A failed push before this one may have written its bytes in full before
                // they were cut back; a power loss can bring them back while losing these
                // (unless these are durable). The live payload is the last candidate.
                let durable = self.policy == Policy::Always;
                for (seq, payload) in range.clone().zip(payloads) {
                    let list = model.candidates.entry(seq).or_default();
                    if durable {
                        list.clear();
                    }
                    list.push(payload);
                }
                model.tail = range.end;
                model.tail_high = model.tail_high.max(range.end);
                model.boundaries.insert(range.end);
                if self.policy == Policy::Always {
                    model.tail_durable = range.end;
                }
                self.check_bound()
            }
            Err(Error::BatchTooLarge { .. } | Error::RecordTooLarge { .. }) => Ok(()),
            Err(Error::Full { .. }) => self.check_full(lens.len()),
            Err(error) => {
                if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
                    eprintln!("   push error: {error}");
                }
                // The records may have landed; they may surface after a crash.
                for (seq, payload) in (model.tail..).zip(payloads) {
                    model.candidates.entry(seq).or_default().insert(0, payload);
                }
                let end = model.tail + lens.len() as u64;
                model.tail_high = model.tail_high.max(end);
                model.boundaries.insert(end);
                self.expect_fault(error, faults_before)
            }
        }
    }

    /// `Queue::purge`: every record up to the tail is consumed, durably under `Always`; a
    /// failed purge may have consumed them all, or none.
    fn purge(&mut self, faults_before: u64) -> Result<(), String> {
        let result = self.queue()?.purge();
        let model = &mut self.model;
        match result {
            Ok(count) => {
                let most = model.tail_high.saturating_sub(model.head);
                if count > most {
                    return Err(format!(
                        "purge removed {count} records, more than the {most} there may be"
                    ));
                }
                // As a pop of every record: the head moves to the tail.
                model.head = model.head.max(model.tail);
                model.head_high = model.head_high.max(model.head);
                model.extend_high();
                if self.policy == Policy::Always {
                    model.head_durable = model.head;
                    model.promised = model.tail_durable;
                }
                if let Some(owed) = model.first_owed(model.head) {
                    return Err(format!("seq {owed} is owed after a purge"));
                }
                Ok(())
            }
            Err(error) => {
                model.may_have_taken(usize::MAX);
                if self.policy != Policy::Always {
                    model.unsynced_pops_uncertain();
                }
                self.expect_fault(error, faults_before)
            }
        }
    }

    /// A push with a deduplication id. The model remembers which key got which number: a key
    /// remembered for sure must be deduplicated; one a crash or a failure may have taken
    /// (`certain` false) may be either; a new record is checked like a push.
    fn push_dedup(&mut self, key: u8, len: u16) -> Result<(), String> {
        let faults_before = self.sim.stats().faults;
        let payload = self.model.payload(len);
        let result = self
            .queue()?
            .push_with(&payload, Push::new().dedup_id([key]));
        let known = self.model.dedup.get(&key).cloned();
        let model = &mut self.model;
        match result {
            Ok(seq) => {
                if let Some(known) = &known {
                    if known.seqs.contains(&seq) && seq < model.tail {
                        return Ok(());
                    }
                    if known.certain {
                        return Err(format!(
                            "push with id {key} returned {seq}, but the id names {:?} (tail {})",
                            known.seqs, model.tail
                        ));
                    }
                }
                if seq != model.tail {
                    return Err(format!(
                        "push with a new id {key} returned {seq}, expected {}",
                        model.tail
                    ));
                }
                let durable = self.policy == Policy::Always;
                let list = model.candidates.entry(seq).or_default();
                if durable {
                    list.clear();
                }
                list.push(payload);
                model.tail = seq + 1;
                model.tail_high = model.tail_high.max(seq + 1);
                model.boundaries.insert(seq + 1);
                if durable {
                    model.tail_durable = seq + 1;
                }
                // Remembered for sure: a process kill keeps every write, and a power loss
                // makes it uncertain unless it was synced (`power_lost`).
                model.dedup.insert(
                    key,
                    DedupKnown {
                        seqs: vec![seq],
                        certain: true,
                    },
                );
                self.check_bound()
            }
            Err(Error::Full { .. }) => self.check_full(1),
            Err(error) if known.as_ref().is_some_and(|known| known.certain) => {
                // A remembered id is looked up before anything is written: the failure (a
                // poisoned queue) wrote nothing, and the id stays as it was.
                self.expect_fault(error, faults_before)
            }
            Err(error) => {
                // The entry and the record may have landed (and surface after a crash).
                let seq = model.tail;
                model.candidates.entry(seq).or_default().insert(0, payload);
                model.tail_high = model.tail_high.max(seq + 1);
                model.boundaries.insert(seq + 1);
                let mut seqs = known.map(|known| known.seqs).unwrap_or_default();
                seqs.push(seq);
                model.dedup.insert(
                    key,
                    DedupKnown {
                        seqs,
                        certain: false,
                    },
                );
                self.expect_fault(error, faults_before)
            }
        }
    }

    /// A push of `count` records was refused with `Error::Full`: right only under a bound the
    /// queue's records leave no room under. (Nothing was written, so the model stays.)
    fn check_full(&self, count: usize) -> Result<(), String> {
        let Some(bound) = self.config.max_records else {
            return Err(String::from("Error::Full from an unbounded queue"));
        };
        // A fault armed for the push must not fail the count (a shared handle that has not
        // consumed reads the head file, and counts 0 when it cannot).
        self.sim.clear_faults();
        let len = self.queue()?.len();
        if len + count as u64 <= bound {
            return Err(format!(
                "a push of {count} was refused as full with {len} records under a bound of {bound}"
            ));
        }
        Ok(())
    }

    /// After a push returned: the queue holds no more than its bound.
    fn check_bound(&self) -> Result<(), String> {
        if let Some(bound) = self.config.max_records {
            // As in `check_full`: not with the push's faults armed.
            self.sim.clear_faults();
            let len = self.queue()?.len();
            if len > bound {
                return Err(format!("{len} records in a queue bounded at {bound}"));
            }
        }
        Ok(())
    }

    fn pop(&mut self, max: usize, faults_before: u64) -> Result<(), String> {
        let result = if max == 1 {
            self.queue()?
                .pop()
                .map(|record| record.into_iter().collect())
        } else {
            self.queue()?.pop_batch(max)
        };
        let records = match result {
            Ok(records) => records,
            Err(error) => {
                let model = &mut self.model;
                model.may_have_taken(max);
                if self.policy != Policy::Always {
                    model.unsynced_pops_uncertain();
                }
                return self.expect_fault(error, faults_before);
            }
        };
        let first = records.first().map(|record| record.seq());
        if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
            let seqs: Vec<u64> = records.iter().map(|record| record.seq()).collect();
            eprintln!("   popped {seqs:?}");
        }
        for record in &records {
            self.model
                .take_record(record.seq(), record.payload(), "pop")?;
            self.model.head += 1;
            self.model.head_high = self.model.head_high.max(self.model.head);
            self.model.extend_high();
        }
        let faulted = self.sim.stats().faults > faults_before;
        if !faulted && records.len() < max {
            // Fewer than asked: nothing may be owed after the last record handed out, unless the
            // batch stopped before damage, which the next read must then refuse.
            let from = records
                .last()
                .map_or(self.model.head, |record| record.seq() + 1);
            let stopped_at_damage = self.damage.is_some()
                && matches!(self.queue()?.peek(), Err(error) if self.damage_refused(&error));
            if stopped_at_damage {
                self.damage_reported.set(true);
            } else if let Some(owed) = self.model.first_owed(from) {
                return Err(format!(
                    "pop of up to {max} returned {} records (first {first:?}) while seq {owed} \
                     is owed",
                    records.len()
                ));
            }
        }
        if self.policy == Policy::Always && !records.is_empty() {
            self.model.head_durable = self.model.head;
            // The pop's synced head records the group commit's sync mark: every push that
            // returned.
            self.model.promised = self.model.tail_durable;
        }
        Ok(())
    }

    /// Receives up to `count` jobs and releases them: nothing is consumed.
    fn recv_nack(&mut self, count: usize, faults_before: u64) -> Result<(), String> {
        let deliveries = match self.queue()?.try_recv_batch(count) {
            Ok(deliveries) => deliveries,
            Err(error) => {
                let model = &mut self.model;
                model.head_high = model.head_high.max(model.high_after_taking(count));
                model.extend_high();
                return self.expect_fault(error, faults_before);
            }
        };
        // Each delivery follows the one before; nothing moves the model's head for good.
        let saved = (self.model.head, self.model.head_high);
        for delivery in &deliveries {
            let checked = self
                .model
                .check_record(delivery.seq(), delivery.payload(), "recv");
            self.model.head = delivery.seq() + 1;
            self.model.head_high = self.model.head_high.max(self.model.head);
            if let Err(violation) = checked {
                (self.model.head, self.model.head_high) = saved;
                return Err(violation);
            }
        }
        (self.model.head, self.model.head_high) = saved;
        for delivery in deliveries {
            // Releasing is in memory only, except in a shared queue, which writes it into
            // the ack log for the other processes (synced under `Always`): a fault may fail it
            // there, and poisons the queue.
            match delivery.nack() {
                Ok(()) => {}
                Err(error) if self.config.shared => return self.expect_fault(error, faults_before),
                Err(error) => return Err(format!("nack failed: {error}")),
            }
        }
        Ok(())
    }

    /// Receives up to `count` jobs and acknowledges all of them.
    fn recv_ack(&mut self, count: usize, reverse: bool, faults_before: u64) -> Result<(), String> {
        let mut deliveries = match self.queue()?.try_recv_batch(count) {
            Ok(deliveries) => deliveries,
            Err(error) => {
                // Receiving consumes nothing; a failure may leave records leased until reopen.
                let model = &mut self.model;
                model.head_high = model.head_high.max(model.high_after_taking(count));
                model.extend_high();
                if self.policy != Policy::Always {
                    model.unsynced_pops_uncertain();
                }
                return self.expect_fault(error, faults_before);
            }
        };
        if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
            let seqs: Vec<u64> = deliveries.iter().map(|delivery| delivery.seq()).collect();
            eprintln!("   received {seqs:?}");
        }
        let mut lowest_unacked = None;
        for delivery in &deliveries {
            let seq = delivery.seq();
            self.model.check_record(seq, delivery.payload(), "recv")?;
            lowest_unacked.get_or_insert(seq);
            self.model.head_high = self.model.head_high.max(seq + 1);
        }
        if let Some(seq) = lowest_unacked {
            self.model.skip_to(seq);
        }
        if reverse {
            deliveries.reverse();
        }
        let mut failed = Vec::new();
        for delivery in deliveries {
            let seq = delivery.seq();
            let acked = delivery.ack();
            if std::env::var_os("DISKSPOOL_SIM_TRACE").is_some() {
                eprintln!("   ack {seq}: {acked:?}");
            }
            match acked {
                Ok(()) => {
                    let durable = self.policy == Policy::Always;
                    let state = AckState {
                        durable,
                        guaranteed: true,
                    };
                    self.model.acked.insert(seq, state);
                }
                Err(error) => {
                    // A failed ack may or may not have taken effect.
                    failed.push(seq);
                    let state = AckState {
                        durable: false,
                        guaranteed: false,
                    };
                    self.model.acked.insert(seq, state);
                    self.expect_fault(error, faults_before)?;
                }
            }
        }
        // Records whose ack failed may be delivered again; the rest are done.
        let model = &mut self.model;
        match failed.iter().min() {
            Some(&lowest) => {
                model.head = model.head.min(lowest);
                if self.policy != Policy::Always {
                    model.unsynced_pops_uncertain();
                }
            }
            None => {
                // The head passes acknowledged jobs; uncertain ones may be back in the queue.
                while model.head < model.head_high
                    && model
                        .acked
                        .get(&model.head)
                        .is_some_and(|state| state.guaranteed)
                {
                    model.head += 1;
                }
                if self.policy == Policy::Always {
                    // The head index may lag (an ack at the head is made durable in the ack log,
                    // and the head file is synced lazily), but under `Always` whatever the queue
                    // consumed below its head is durable, in the head or in the ack log (which
                    // `open` syncs): acknowledged and skipped records never come back.
                    for state in model.acked.range_mut(..model.head).map(|(_, state)| state) {
                        state.durable |= state.guaranteed;
                    }
                    model.head_durable = model.head_durable.max(model.head);
                }
            }
        }
        model.extend_high();
        Ok(())
    }

    fn peek(&mut self, faults_before: u64) -> Result<(), String> {
        match self.queue()?.peek() {
            Ok(Some(record)) => self
                .model
                .check_record(record.seq(), record.payload(), "peek"),
            Ok(None) => {
                let faulted = self.sim.stats().faults > faults_before;
                if let (false, Some(owed)) = (faulted, self.model.first_owed(self.model.head)) {
                    return Err(format!("peek found nothing while seq {owed} is owed"));
                }
                Ok(())
            }
            Err(error) => self.expect_fault(error, faults_before),
        }
    }

    /// Drains the queue after a clean reopen and checks it matches the model exactly.
    fn finish(&mut self) -> Result<(), String> {
        self.sim.clear_faults();
        self.queue = None;
        self.open(self.policy, false)?;
        loop {
            let batch = match self.queue()?.pop_batch(64) {
                Ok(batch) => batch,
                Err(error) if self.damage_refused(&error) => {
                    self.repair_damage()?;
                    self.queue = None;
                    self.open(self.policy, false)?;
                    continue;
                }
                Err(error) => return Err(format!("final drain failed: {error}")),
            };
            if batch.is_empty() {
                break;
            }
            for record in &batch {
                self.model
                    .take_record(record.seq(), record.payload(), "final drain")?;
                self.model.head += 1;
                self.model.head_high = self.model.head_high.max(self.model.head);
            }
        }
        if let Some(owed) = self.model.first_owed(self.model.head) {
            return Err(format!(
                "final drain stopped at {} while seq {owed} is owed",
                self.model.head
            ));
        }
        let seq = self
            .queue()?
            .push(b"still works")
            .map_err(|error| format!("push after the run failed: {error}"))?;
        let back = self
            .queue()?
            .pop()
            .map_err(|error| format!("pop after the run failed: {error}"))?;
        match back {
            Some(record) if record.seq() == seq && record.payload() == b"still works" => Ok(()),
            other => Err(format!("pop after the run returned {other:?}")),
        }
    }
}

/// Runs `ops` against a fresh simulated filesystem and the model of the durability contract,
/// with the default [`SimConfig`]; returns the first violation, naming the operation index.
pub fn run_ops(ops: &[Op]) -> Result<(), String> {
    run_ops_with(&SimConfig::default(), ops).map(|_| ())
}

/// What a run exercised: the simulated filesystem's counters and what became of the damage
/// [`Op::Damage`] injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// The filesystem's counters.
    pub stats: SimStats,
    /// Files damaged or lost (not counting pool files, which hold nothing of the queue).
    pub damaged: u64,
    /// Damage the queue refused with a typed error naming the file: at open, or when a read
    /// reached it.
    pub refused: u64,
    /// Damage recovery cut, reporting what it cut (records never promised durable).
    pub cut: u64,
    /// Damage an open under [`OnDamage::Quarantine`] set aside ([`run_ops_quarantining`]).
    pub quarantined: u64,
}

/// [`run_ops`] with the queue and filesystem set up as `config` says; returns what the run
/// exercised.
pub fn run_ops_with(config: &SimConfig, ops: &[Op]) -> Result<RunSummary, String> {
    run(config, ops, false)
}

/// [`run_ops_with`], every open under [`OnDamage::Quarantine`]: damage must never be refused;
/// each open that repairs is checked against the model (nothing served that was not pushed,
/// nothing owed before the cut lost, no sequence number used again) and followed by a second
/// open that must find nothing to do.
pub fn run_ops_quarantining(config: &SimConfig, ops: &[Op]) -> Result<RunSummary, String> {
    run(config, ops, true)
}

fn run(config: &SimConfig, ops: &[Op], quarantine: bool) -> Result<RunSummary, String> {
    let sim = SimStorage::new(0x5eed);
    sim.set_writable_mappings(config.writable_mappings);
    if config.shared {
        sim.allow_solo();
    }
    let mut run = Run {
        config: *config,
        sim,
        dir: PathBuf::from("/sim/queue"),
        queue: None,
        policy: Policy::Always,
        model: Model::default(),
        damage: None,
        damage_reported: std::cell::Cell::new(false),
        summary: RunSummary::default(),
        quarantine,
    };
    run.model.boundaries.insert(0);
    run.open(Policy::Always, false)
        .map_err(|error| format!("initial open: {error}"))?;
    let trace = std::env::var_os("DISKSPOOL_SIM_TRACE").is_some();
    for (index, op) in ops.iter().enumerate() {
        let outcome = run.step(op);
        if trace {
            let model = run.model.bounds();
            eprintln!(
                "{index}: {op:?} -> {outcome:?}; {model}; acked {:?}",
                run.model.acked
            );
            eprintln!("   files {:?}", run.sim.file_names(&run.dir));
        }
        outcome.map_err(|error| format!("operation {index} ({op:?}): {error}"))?;
    }
    run.finish()
        .map_err(|error| format!("after the last operation: {error}"))?;
    Ok(RunSummary {
        stats: run.sim.stats(),
        ..run.summary
    })
}
