//! The ack log: job state beyond the head, for at-least-once delivery.
//!
//! The head index records the contiguous prefix of consumed records. With many workers acks
//! arrive out of order, and each delivery must be counted durably (so that a record that crashes
//! its worker over and over still reaches the dead-letter queue). Those facts go into this
//! append-only log, file `acks`:
//!
//! ```text
//! header (32 bytes)
//! offset  size  field
//!      0     8  magic       b"DSPOOLAK"
//!      8     2  version     ACK_LOG_FORMAT_VERSION (4; versions 2 and 3 are read too)
//!     10     2  header_len  32
//!     12     2  entry_len   24
//!     14     2  reserved    zero
//!     16     8  log_id      generation of this file; every entry's checksum covers it
//!     24     4  reserved    zero
//!     28     4  crc32       CRC-32 of bytes 0..28
//!
//! entry (24 bytes), from offset 32
//!      0     4  crc32       CRC-32 of log_id (8 bytes, little-endian) then bytes 4..24
//!      4     1  kind        bits 0..7: 1 = ACKED, 2 = DELIVERED, 3 = NOT_BEFORE;
//!                           bit 7 (version 4): SYNCED_BEFORE, every byte of the file before
//!                           this entry was synced when it was written
//!      5     3  owner       NOT_BEFORE: the lease owner, 24 bits little-endian (0: none, a
//!                           retry time); otherwise zero
//!      8     8  seq         ACKED: first sequence number; otherwise: the record
//!     16     8  value       ACKED: end (exclusive); DELIVERED: delivery count;
//!                           NOT_BEFORE: microseconds since the Unix epoch
//! ```
//!
//! Zeros may follow the last entry: space written ahead of the tail, so that the `fdatasync` of
//! an append does not change the file's length; `open` cuts them without reporting a torn entry.
//!
//! The SYNCED_BEFORE mark is what tells a power loss from damage: appends that no sync
//! separated may reach the disk in any order, so a power loss can tear one and keep a later
//! one, but an entry that was synced before a later one was written cannot be torn by a power
//! loss. The writer marks an entry when the file was synced up to the entry's offset as it
//! wrote it: the first entry written after each sync.
//!
//! Entries for sequence numbers below the head are obsolete. When they dominate, the log is
//! rewritten with only the live state (after the head is synced, so that the head that makes
//! the dropped entries obsolete survives any crash): write `acks.tmp`, sync, rename, sync the
//! directory. The new file gets the next `log_id`, so no entry of an older file can validate
//! in it. Open time therefore depends on the live job state, never on how many records were
//! ever acknowledged.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::frame::{read_u32, read_u64, SEQ_LIMIT};
use crate::format::segment::SequenceBreak;

/// The format version of the ack log this build writes (its own: a change to the segment
/// format does not change it). Version 3 gave `NOT_BEFORE` entries a lease owner in bytes 5..8
/// (zero in version 2, which reads as "no owner"). Version 4 gave entries the SYNCED_BEFORE
/// mark (bit 7 of the kind byte). Files of versions 2 and 3 are read, and appended to, as they
/// are, with no marks; a rewrite makes them version 4.
pub const ACK_LOG_FORMAT_VERSION: u16 = 4;

/// The first ack log format version whose entries carry the SYNCED_BEFORE mark.
pub const ACK_LOG_MARKS_VERSION: u16 = 4;

/// The oldest ack log format version this build reads.
pub const ACK_LOG_FORMAT_VERSION_MIN: u16 = 2;

/// The largest lease owner an entry holds (24 bits).
pub const LEASE_OWNER_MAX: u32 = (1 << 24) - 1;

/// Magic bytes at the start of the ack log.
pub const ACK_LOG_MAGIC: [u8; 8] = *b"DSPOOLAK";
/// Bytes of the ack log header.
pub const ACK_LOG_HEADER_LEN: usize = 32;
/// Bytes of one ack log entry.
pub const ACK_ENTRY_LEN: usize = 24;

const KIND_ACKED: u8 = 1;
const KIND_DELIVERED: u8 = 2;
const KIND_NOT_BEFORE: u8 = 3;
/// Bit 7 of the kind byte (version 4): every byte before the entry was synced when it was
/// written.
const MARK_SYNCED_BEFORE: u8 = 0x80;

/// One fact about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEntry {
    /// Records `start..end` are acknowledged.
    Acked {
        /// First sequence number.
        start: u64,
        /// End, exclusive.
        end: u64,
    },
    /// Record `seq` has been handed out `deliveries` times.
    Delivered {
        /// The record.
        seq: u64,
        /// Its delivery count.
        deliveries: u32,
    },
    /// Record `seq` must not be handed out before `at_us`: a retry time, or the end of a
    /// lease taken in a queue shared by several processes.
    NotBefore {
        /// The record.
        seq: u64,
        /// Microseconds since the Unix epoch.
        at_us: u64,
        /// For a lease, the handle that holds it (a shared queue's `lease owner`, at most
        /// [`LEASE_OWNER_MAX`]): the time no longer holds once that handle is gone. 0: a retry
        /// time, which always holds.
        lease_owner: u32,
    },
}

/// Encodes the ack log header.
pub fn encode_header(log_id: u64) -> [u8; ACK_LOG_HEADER_LEN] {
    let mut header = [0; ACK_LOG_HEADER_LEN];
    header[..8].copy_from_slice(&ACK_LOG_MAGIC);
    header[8..10].copy_from_slice(&ACK_LOG_FORMAT_VERSION.to_le_bytes());
    header[10..12].copy_from_slice(&(ACK_LOG_HEADER_LEN as u16).to_le_bytes());
    header[12..14].copy_from_slice(&(ACK_ENTRY_LEN as u16).to_le_bytes());
    header[16..24].copy_from_slice(&log_id.to_le_bytes());
    let crc = crate::format::frame::crc32(&header[..28]);
    header[28..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Why an ack log header is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckHeaderError {
    /// Shorter than a header.
    #[error("ack log header cut short")]
    Truncated,
    /// Not an ack log.
    #[error("not an ack log (bad magic bytes)")]
    BadMagic,
    /// Checksum mismatch.
    #[error("ack log header checksum mismatch")]
    Checksum,
    /// Another format version.
    #[error("unsupported ack log format version {0}")]
    UnsupportedVersion(u16),
}

/// What an ack log header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckLogHeader {
    /// The generation of the file, covered by every entry's checksum.
    pub log_id: u64,
    /// The format version the file was written with (2 to [`ACK_LOG_FORMAT_VERSION`]).
    pub version: u16,
}

impl AckLogHeader {
    /// Whether the entries carry the SYNCED_BEFORE mark (version 4 on).
    pub fn has_marks(&self) -> bool {
        self.version >= ACK_LOG_MARKS_VERSION
    }
}

/// Decodes the ack log header and returns the log id.
pub fn decode_header(bytes: &[u8]) -> Result<u64, AckHeaderError> {
    read_header(bytes).map(|header| header.log_id)
}

/// Decodes the ack log header.
pub fn read_header(bytes: &[u8]) -> Result<AckLogHeader, AckHeaderError> {
    let header = bytes
        .get(..ACK_LOG_HEADER_LEN)
        .ok_or(AckHeaderError::Truncated)?;
    if header[..8] != ACK_LOG_MAGIC {
        return Err(AckHeaderError::BadMagic);
    }
    if read_u32(header, 28) != crate::format::frame::crc32(&header[..28]) {
        return Err(AckHeaderError::Checksum);
    }
    let version = u16::from_le_bytes([header[8], header[9]]);
    if !(ACK_LOG_FORMAT_VERSION_MIN..=ACK_LOG_FORMAT_VERSION).contains(&version) {
        return Err(AckHeaderError::UnsupportedVersion(version));
    }
    Ok(AckLogHeader {
        log_id: read_u64(header, 16),
        version,
    })
}

/// What can be kept of an ack log whose header is damaged: the log id its header names, read
/// whatever the header's checksum says, and every entry that validates under it (an entry's
/// checksum covers the log id, so a wrong one validates none). `None` when the file is shorter
/// than a header.
pub fn salvage(bytes: &[u8]) -> Option<(u64, JobHistory)> {
    let header = bytes.get(..ACK_LOG_HEADER_LEN)?;
    let log_id = read_u64(header, 16);
    let mut history = JobHistory::default();
    for entry in bytes
        .get(ACK_LOG_HEADER_LEN..)
        .unwrap_or(&[])
        .chunks_exact(ACK_ENTRY_LEN)
        .filter_map(|entry| check_entry(entry, log_id).ok())
    {
        history.apply(&entry);
    }
    Some((log_id, history))
}

/// Appends one encoded entry to `out`, without the SYNCED_BEFORE mark (see
/// [`mark_synced_before`]).
pub fn encode_entry(out: &mut Vec<u8>, log_id: u64, entry: &AckEntry) {
    let (kind, seq, value, owner) = match *entry {
        AckEntry::Acked { start, end } => (KIND_ACKED, start, end, 0),
        AckEntry::Delivered { seq, deliveries } => (KIND_DELIVERED, seq, u64::from(deliveries), 0),
        AckEntry::NotBefore {
            seq,
            at_us,
            lease_owner,
        } => (
            KIND_NOT_BEFORE,
            seq,
            at_us,
            lease_owner.min(LEASE_OWNER_MAX),
        ),
    };
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let [owner_0, owner_1, owner_2, _] = owner.to_le_bytes();
    out.extend_from_slice(&[kind, owner_0, owner_1, owner_2]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    let crc = entry_checksum(log_id, &out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the SYNCED_BEFORE mark on the encoded entry at the start of `entry` (of log `log_id`),
/// and its checksum with it: for a writer that learns where an entry lands only when it writes
/// it. Only a file of version 4 or later may hold the mark, and only on an entry written after
/// every byte of the file before it was synced. Bytes shorter than an entry are left as they
/// are.
pub fn mark_synced_before(entry: &mut [u8], log_id: u64) {
    let Some(entry) = entry.get_mut(..ACK_ENTRY_LEN) else {
        return;
    };
    entry[4] |= MARK_SYNCED_BEFORE;
    let crc = entry_checksum(log_id, &entry[4..]);
    entry[..4].copy_from_slice(&crc.to_le_bytes());
}

fn entry_checksum(log_id: u64, body: &[u8]) -> u32 {
    let mut hasher = crate::format::frame::crc32_hasher();
    hasher.update(&log_id.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// Why 24 bytes are not a valid entry of an ack log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Fewer than 24 bytes.
    #[error("ack log entry cut short")]
    Truncated,
    /// All zero: never written (space prepared ahead of the tail, or an append that a power
    /// loss took before any byte of it reached the disk). Never damage.
    #[error("ack log entry never written (all zero)")]
    Zero,
    /// The checksum does not match: a torn write, or damage.
    #[error("ack log entry checksum mismatch")]
    Checksum,
    /// The checksum matches but a field is out of range: never the result of a crash (the
    /// checksum covers every field), always damage or a bug.
    #[error("ack log entry is invalid: {0}")]
    Invalid(String),
}

/// Decodes one entry of log `log_id` (of the current version), or says why the bytes are not a
/// valid one. An entry is valid when its checksum matches, its kind is 1–3 (bit 7 is the
/// SYNCED_BEFORE mark), its sequence number is below [`SEQ_LIMIT`], and for ACKED,
/// `seq < value <= SEQ_LIMIT`.
pub fn check_entry(bytes: &[u8], log_id: u64) -> Result<AckEntry, EntryError> {
    let header = AckLogHeader {
        log_id,
        version: ACK_LOG_FORMAT_VERSION,
    };
    check_entry_of(bytes, &header).map(|(entry, _)| entry)
}

/// Decodes one entry of the log `header` describes: the entry, and whether it carries the
/// SYNCED_BEFORE mark (never in a file of version 2 or 3, where bit 7 makes the kind unknown).
pub fn check_entry_of(bytes: &[u8], header: &AckLogHeader) -> Result<(AckEntry, bool), EntryError> {
    let log_id = header.log_id;
    let bytes = bytes.get(..ACK_ENTRY_LEN).ok_or(EntryError::Truncated)?;
    if bytes.iter().all(|&byte| byte == 0) {
        return Err(EntryError::Zero);
    }
    if read_u32(bytes, 0) != entry_checksum(log_id, &bytes[4..]) {
        return Err(EntryError::Checksum);
    }
    let seq = read_u64(bytes, 8);
    let value = read_u64(bytes, 16);
    let (kind, synced_before) = if header.has_marks() {
        (
            bytes[4] & !MARK_SYNCED_BEFORE,
            bytes[4] & MARK_SYNCED_BEFORE != 0,
        )
    } else {
        (bytes[4], false)
    };
    if seq >= SEQ_LIMIT {
        return Err(EntryError::Invalid(format!(
            "sequence number {seq} is beyond the largest one, {}",
            SEQ_LIMIT - 1
        )));
    }
    let entry = match kind {
        KIND_ACKED if value <= seq => Err(EntryError::Invalid(format!(
            "acknowledged range {seq}..{value} is empty"
        ))),
        KIND_ACKED if value > SEQ_LIMIT => Err(EntryError::Invalid(format!(
            "acknowledged range {seq}..{value} ends beyond the largest sequence number, {}",
            SEQ_LIMIT - 1
        ))),
        KIND_ACKED => Ok(AckEntry::Acked {
            start: seq,
            end: value,
        }),
        KIND_DELIVERED => Ok(AckEntry::Delivered {
            seq,
            deliveries: u32::try_from(value).unwrap_or(u32::MAX),
        }),
        KIND_NOT_BEFORE => Ok(AckEntry::NotBefore {
            seq,
            at_us: value,
            lease_owner: u32::from_le_bytes([bytes[5], bytes[6], bytes[7], 0]),
        }),
        kind => Err(EntryError::Invalid(format!("unknown kind {kind}"))),
    }?;
    Ok((entry, synced_before))
}

/// Decodes one entry; `None` if the bytes are not a valid entry of log `log_id` (see
/// [`check_entry`]).
pub fn decode_entry(bytes: &[u8], log_id: u64) -> Option<AckEntry> {
    check_entry(bytes, log_id).ok()
}

/// How the entries of an ack log end: what follows the last valid entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLogEnd {
    /// The last valid entry (or the header) ends at the end of the file.
    Clean,
    /// Zeros: space prepared ahead of the tail, or appends a power loss took whole. `open`
    /// cuts them without a report.
    PreparedSpace,
    /// Bytes that are not a valid entry, and no valid entry after them: the remains of an
    /// interrupted append, which `open` cuts and reports.
    TornEntry,
}

/// A damaged entry: checksum mismatch or an invalid field, followed by a valid entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckLogDamage {
    /// Byte offset of the damaged entry in the file.
    pub offset: u64,
    /// True when the entry only fails its checksum and nothing in the file says it was synced
    /// before a later entry was written: what a power loss leaves of an append that no sync
    /// separated from the next. In a file of version 4 no later entry carries the
    /// SYNCED_BEFORE mark. A file of version 2 or 3 has no marks: what its appends were synced
    /// like is the policy the queue ran under, which `open` takes to be its own. False for
    /// damage no crash produces: a field out of range under a valid checksum, or an entry
    /// before a marked one.
    pub skippable: bool,
    /// What is wrong, and where the valid entry after it is.
    pub detail: String,
}

/// An ack log walked entry by entry; see [`scan_ack_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckLogScan {
    /// The log id from the header.
    pub log_id: u64,
    /// Whether the entries carry the SYNCED_BEFORE mark (version 4 on).
    pub has_marks: bool,
    /// Valid entries.
    pub entries: u64,
    /// Where the last valid entry ends (the header's end when there is none): the length
    /// `open` keeps.
    pub valid_end: u64,
    /// What follows `valid_end`.
    pub end: AckLogEnd,
    /// The damaged entry to report, if any: the first one that is not
    /// [`skippable`](AckLogDamage::skippable), else the first skippable one. The lock-free
    /// readers refuse a log with damage; `open` may skip skippable damage (see `skippable`).
    pub damage: Option<AckLogDamage>,
    /// The offsets of every skippable damaged entry, when no damage outranks them.
    pub skippable: Vec<u64>,
}

/// Walks the entries of an ack log (`bytes` is the whole file), passes each valid one to
/// `apply`, and classifies what is not valid. The one implementation of the rule, used by
/// `Queue::open` and by the lock-free readers (`inspect`, `verify`):
///
/// - an all-zero entry is *missing*: space prepared ahead of the tail, or an unsynced append a
///   power loss did not write while it kept a later one. It is skipped, whatever follows it.
/// - a non-zero entry that fails its checksum is *torn* when no valid entry follows it (the
///   remains of an interrupted append at the end of the log), and *damaged* when one does:
///   [`skippable`](AckLogDamage::skippable) damage unless a later entry carries the mark.
/// - an entry whose checksum matches but whose fields are out of range is damaged wherever it
///   is: a crash does not produce a matching checksum.
///
/// Every valid entry is applied, also after damage, so that readers can show what the log
/// says; `open` refuses a log with damage that is not skippable.
pub fn scan_ack_log(
    bytes: &[u8],
    apply: &mut dyn FnMut(&AckEntry),
) -> Result<AckLogScan, AckHeaderError> {
    let header = read_header(bytes)?;
    let mut scan = AckLogScan {
        log_id: header.log_id,
        has_marks: header.has_marks(),
        entries: 0,
        valid_end: ACK_LOG_HEADER_LEN as u64,
        end: AckLogEnd::Clean,
        damage: None,
        skippable: Vec::new(),
    };
    // The first entry that failed its checksum since the last valid one: damage if a valid
    // entry follows.
    let mut unexplained: Option<u64> = None;
    // The first entry since the last marked one that failed its checksum: damage for sure
    // once a marked entry follows.
    let mut before_mark: Option<u64> = None;
    let mut skippable_detail = String::new();
    let mut offset = ACK_LOG_HEADER_LEN;
    while let Some(entry_bytes) = bytes.get(offset..offset + ACK_ENTRY_LEN) {
        let at = offset as u64;
        offset += ACK_ENTRY_LEN;
        match check_entry_of(entry_bytes, &header) {
            Ok((entry, synced_before)) => {
                if let Some(bad) = unexplained.take() {
                    if scan.skippable.is_empty() {
                        skippable_detail = format!(
                            "ack log entry checksum mismatch; a valid entry (at byte offset \
                             {at}) follows, so this is damage rather than an interrupted \
                             append, unless a power loss tore an append that no sync \
                             separated from the next"
                        );
                    }
                    scan.skippable.push(bad);
                }
                if let Some(bad) = before_mark.filter(|_| synced_before) {
                    let damage = AckLogDamage {
                        offset: bad,
                        skippable: false,
                        detail: format!(
                            "ack log entry checksum mismatch; a valid entry (at byte offset {at}) was \
                             written after this one was synced, so this is damage rather than \
                             an interrupted append"
                        ),
                    };
                    scan.damage = Some(outranking(scan.damage.take(), damage));
                    scan.skippable.clear();
                }
                if synced_before {
                    before_mark = None;
                }
                apply(&entry);
                scan.entries += 1;
                scan.valid_end = at + ACK_ENTRY_LEN as u64;
            }
            // Zeros are skipped whatever follows, also before a marked entry: a power loss
            // leaves them where it kept a later append and lost an earlier one, and the open
            // after it syncs them as they are (they say nothing).
            Err(EntryError::Truncated | EntryError::Zero) => {}
            Err(EntryError::Checksum) => {
                unexplained.get_or_insert(at);
                before_mark.get_or_insert(at);
            }
            Err(error @ EntryError::Invalid(_)) => {
                // No crash writes a valid checksum over a bad field: this outranks a torn entry.
                let damage = AckLogDamage {
                    offset: at,
                    skippable: false,
                    detail: error.to_string(),
                };
                scan.damage = Some(outranking(scan.damage.take(), damage));
            }
        }
    }
    if let (None, Some(&first)) = (&scan.damage, scan.skippable.first()) {
        scan.damage = Some(AckLogDamage {
            offset: first,
            skippable: true,
            detail: skippable_detail,
        });
    }
    if scan.damage.as_ref().is_some_and(|damage| !damage.skippable) {
        scan.skippable.clear();
    }
    let rest = bytes.get(scan.valid_end as usize..).unwrap_or(&[]);
    scan.end = if rest.is_empty() {
        AckLogEnd::Clean
    } else if rest.iter().all(|&byte| byte == 0) {
        AckLogEnd::PreparedSpace
    } else {
        AckLogEnd::TornEntry
    };
    Ok(scan)
}

/// The damage to report of `found` and `new`: the first one found, unless it is skippable and
/// the new one is not.
fn outranking(found: Option<AckLogDamage>, new: AckLogDamage) -> AckLogDamage {
    match found {
        Some(found) if !found.skippable || new.skippable => found,
        _ => new,
    }
}

/// What the ack log says about records at or beyond the head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobHistory {
    /// Acknowledged ranges, `start -> end`, merged, disjoint.
    pub acked: BTreeMap<u64, u64>,
    /// Delivery counts.
    pub deliveries: BTreeMap<u64, u32>,
    /// Not-before times from retries and leases.
    pub not_before: BTreeMap<u64, u64>,
    /// The owners of the leases among `not_before` (a record whose last `NOT_BEFORE` entry
    /// named one).
    pub lease_owners: BTreeMap<u64, u32>,
}

/// Whether the sequence numbers from `from` up to a segment that starts at `to` were retired by
/// `repair`: acknowledged in one range (of `acked`, start -> end) that ends exactly at `to`.
/// That is the only gap between segments a reader crosses; any other is missing records.
pub fn is_retired_gap(acked: &BTreeMap<u64, u64>, from: u64, to: u64) -> bool {
    from < to
        && acked
            .range(..=from)
            .next_back()
            .is_some_and(|(_, &end)| end == to)
}

/// The one rule for "step to the next segment", applied by the engine's reader and by the
/// lock-free readers and `verify` alike: the segment after one whose records end before
/// `expected` must start at `expected`, or across a gap that `repair` retired (acknowledged in
/// one range of `acked` ending at `base`; see [`is_retired_gap`]). Any other base is a
/// [`SequenceBreak`].
pub fn check_next_base(
    expected: u64,
    base: u64,
    acked: &BTreeMap<u64, u64>,
) -> std::result::Result<(), SequenceBreak> {
    if base == expected || is_retired_gap(acked, expected, base) {
        Ok(())
    } else if base > expected {
        Err(SequenceBreak::Missing { expected, base })
    } else {
        Err(SequenceBreak::Overlap {
            base,
            held_up_to: expected.saturating_sub(1),
        })
    }
}

impl JobHistory {
    /// Applies one entry.
    pub fn apply(&mut self, entry: &AckEntry) {
        match *entry {
            AckEntry::Acked { start, end } => self.add_acked(start, end),
            AckEntry::Delivered { seq, deliveries } => {
                let count = self.deliveries.entry(seq).or_insert(0);
                *count = (*count).max(deliveries);
            }
            AckEntry::NotBefore {
                seq,
                at_us,
                lease_owner,
            } => {
                self.not_before.insert(seq, at_us);
                match lease_owner {
                    0 => self.lease_owners.remove(&seq),
                    owner => self.lease_owners.insert(seq, owner),
                };
            }
        }
    }

    fn add_acked(&mut self, mut start: u64, mut end: u64) {
        // Merge with every range that touches or overlaps [start, end).
        if let Some((&before_start, &before_end)) = self.acked.range(..=start).next_back() {
            if before_end >= start {
                start = before_start;
                end = end.max(before_end);
                self.acked.remove(&before_start);
            }
        }
        while let Some((&next_start, &next_end)) = self.acked.range(start..).next() {
            if next_start > end {
                break;
            }
            end = end.max(next_end);
            self.acked.remove(&next_start);
        }
        self.acked.insert(start, end);
    }

    /// Forgets everything below `head`.
    pub fn prune_below(&mut self, head: u64) {
        let straddling = self
            .acked
            .range(..head)
            .next_back()
            .map(|(&start, &end)| (start, end));
        self.acked = self.acked.split_off(&head);
        if let Some((_, end)) = straddling {
            if end > head {
                self.acked.insert(head, end);
            }
        }
        self.deliveries = self.deliveries.split_off(&head);
        self.not_before = self.not_before.split_off(&head);
        self.lease_owners = self.lease_owners.split_off(&head);
    }

    /// Forgets everything at or above `end`; returns whether anything was known there.
    pub fn prune_from(&mut self, end: u64) -> bool {
        let mut removed = false;
        let straddling = self
            .acked
            .range(..end)
            .next_back()
            .map(|(&start, &range_end)| (start, range_end));
        if let Some((start, range_end)) = straddling {
            if range_end > end {
                self.acked.insert(start, end);
                removed = true;
            }
        }
        removed |= !self.acked.split_off(&end).is_empty();
        removed |= !self.deliveries.split_off(&end).is_empty();
        removed |= !self.not_before.split_off(&end).is_empty();
        let _ = self.lease_owners.split_off(&end);
        removed
    }

    /// Takes what is known about `seq`: (acknowledged, deliveries, not-before); see
    /// [`take_lease_owner`](Self::take_lease_owner) for the owner of a not-before time.
    pub fn take(&mut self, seq: u64) -> (bool, u32, u64) {
        let acked = self
            .acked
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end > seq);
        let deliveries = self.deliveries.remove(&seq).unwrap_or(0);
        let not_before = self.not_before.remove(&seq).unwrap_or(0);
        (acked, deliveries, not_before)
    }

    /// Takes the lease owner of `seq`'s not-before time (0: none).
    pub fn take_lease_owner(&mut self, seq: u64) -> u32 {
        self.lease_owners.remove(&seq).unwrap_or(0)
    }

    /// Forgets the leases whose owner `is_gone` says is gone: their not-before times no
    /// longer hold. Returns how many.
    pub fn end_leases_of_gone(&mut self, is_gone: &mut dyn FnMut(u32) -> bool) -> usize {
        let gone = leases_of_gone(&self.lease_owners, is_gone);
        for seq in &gone {
            self.lease_owners.remove(seq);
            self.not_before.remove(seq);
        }
        gone.len()
    }

    /// Whether a record not yet handed out, `seq` with the frame's `not_before_us` (0 when not
    /// delayed), waits for a time after `now_us`: its own delay, or a retry's. An acknowledged
    /// record waits for nothing.
    pub fn is_delayed(&self, seq: u64, not_before_us: u64, now_us: u64) -> bool {
        let retry_at_us = self.not_before.get(&seq).copied().unwrap_or(0);
        if not_before_us.max(retry_at_us) <= now_us {
            return false;
        }
        self.acked
            .range(..=seq)
            .next_back()
            .is_none_or(|(_, &end)| end <= seq)
    }

    /// True when nothing is known beyond the head.
    pub fn is_empty(&self) -> bool {
        self.acked.is_empty() && self.deliveries.is_empty() && self.not_before.is_empty()
    }

    /// Acknowledged records at or beyond `from`.
    pub fn acked_count_from(&self, from: u64) -> u64 {
        self.acked_count_in(from..u64::MAX)
    }

    /// Acknowledged records in `seqs`.
    pub fn acked_count_in(&self, seqs: std::ops::Range<u64>) -> u64 {
        self.acked
            .range(..seqs.end)
            .map(|(&start, &end)| end.min(seqs.end).saturating_sub(start.max(seqs.start)))
            .sum()
    }

    /// The entries that describe this history.
    pub fn entries(&self) -> Vec<AckEntry> {
        let mut entries: Vec<AckEntry> = self
            .acked
            .iter()
            .map(|(&start, &end)| AckEntry::Acked { start, end })
            .collect();
        entries.extend(
            self.deliveries
                .iter()
                .map(|(&seq, &deliveries)| AckEntry::Delivered { seq, deliveries }),
        );
        entries.extend(
            self.not_before
                .iter()
                .map(|(&seq, &at_us)| AckEntry::NotBefore {
                    seq,
                    at_us,
                    lease_owner: self.lease_owners.get(&seq).copied().unwrap_or(0),
                }),
        );
        entries
    }
}

/// The records of `owners` (record -> lease owner) whose owner `is_gone` says is gone.
pub fn leases_of_gone(
    owners: &BTreeMap<u64, u32>,
    is_gone: &mut dyn FnMut(u32) -> bool,
) -> Vec<u64> {
    owners
        .iter()
        .filter(|&(_, &owner)| is_gone(owner))
        .map(|(&seq, _)| seq)
        .collect()
}

/// Converts a header problem into the crate's error for `path`.
pub(crate) fn header_error(path: &Path, error: AckHeaderError) -> Error {
    match error {
        AckHeaderError::UnsupportedVersion(found) => Error::UnsupportedVersion {
            file: path.to_path_buf(),
            found,
            supported: ACK_LOG_FORMAT_VERSION,
        },
        other => Error::corrupt(path, 0, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bind_to_their_log() {
        let entries = [
            AckEntry::Acked { start: 5, end: 9 },
            AckEntry::Delivered {
                seq: 7,
                deliveries: 3,
            },
            AckEntry::NotBefore {
                seq: 8,
                at_us: 42,
                lease_owner: 0,
            },
            AckEntry::NotBefore {
                seq: 9,
                at_us: 43,
                lease_owner: LEASE_OWNER_MAX,
            },
        ];
        for entry in entries {
            let mut bytes = Vec::new();
            encode_entry(&mut bytes, 11, &entry);
            assert_eq!(decode_entry(&bytes, 11), Some(entry));
            assert_eq!(decode_entry(&bytes, 12), None, "an entry of another log");
        }
        assert_eq!(decode_entry(&[0; ACK_ENTRY_LEN], 1), None);
    }

    /// Version 2 had zeros where version 3 keeps a lease owner: its files read as they are,
    /// every `NOT_BEFORE` a retry time.
    #[test]
    fn version_2_logs_are_read_with_no_lease_owners() {
        let mut header = encode_header(5);
        header[8..10].copy_from_slice(&2u16.to_le_bytes());
        let crc = crate::format::frame::crc32(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_header(&header), Ok(5));
        header[8..10].copy_from_slice(&5u16.to_le_bytes());
        let crc = crate::format::frame::crc32(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&header),
            Err(AckHeaderError::UnsupportedVersion(5))
        );
    }

    /// A file of `version` with log id 1 holding `parts`.
    fn log_of(version: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        let mut bytes = encode_header(1).to_vec();
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let crc = crate::format::frame::crc32(&bytes[..28]);
        bytes[28..32].copy_from_slice(&crc.to_le_bytes());
        for part in parts {
            bytes.extend_from_slice(part);
        }
        bytes
    }

    /// An ACKED entry of log 1 for `seq`, with the SYNCED_BEFORE mark or not.
    fn acked(seq: u64, synced_before: bool) -> Vec<u8> {
        let mut bytes = Vec::new();
        let entry = AckEntry::Acked {
            start: seq,
            end: seq + 1,
        };
        encode_entry(&mut bytes, 1, &entry);
        if synced_before {
            mark_synced_before(&mut bytes, 1);
        }
        bytes
    }

    fn at(index: usize) -> u64 {
        (ACK_LOG_HEADER_LEN + index * ACK_ENTRY_LEN) as u64
    }

    /// The mark decodes to the same entry, in a file of version 4; in a file of version 3 it
    /// makes the kind unknown, as it does for the builds that read only version 3.
    #[test]
    fn the_synced_before_mark_is_read_only_from_version_4() {
        let marked = acked(7, true);
        let v4 = AckLogHeader {
            log_id: 1,
            version: 4,
        };
        let v3 = AckLogHeader {
            log_id: 1,
            version: 3,
        };
        let entry = AckEntry::Acked { start: 7, end: 8 };
        assert_eq!(check_entry_of(&marked, &v4), Ok((entry, true)));
        assert_eq!(marked[4], 0x80 | 1, "bit 7 of the kind byte");
        assert_eq!(check_entry_of(&acked(7, false), &v4), Ok((entry, false)));
        assert_eq!(check_entry_of(&acked(7, false), &v3), Ok((entry, false)));
        assert!(matches!(
            check_entry_of(&marked, &v3),
            Err(EntryError::Invalid(_))
        ));
        let scan = scan_ack_log(&log_of(3, &[acked(1, false), marked]), &mut |_| {}).unwrap();
        assert!(!scan.has_marks);
        assert_eq!(
            scan.damage.map(|damage| (damage.offset, damage.skippable)),
            Some((at(1), false))
        );
    }

    /// What the marks change: an entry that fails its checksum before a marked one was synced
    /// before that one was written, so a power loss did not tear it: damage, also when
    /// unmarked valid entries lie between. Without a marked entry after it, a torn entry
    /// before valid ones is skippable, each such offset listed. Zeros stay missing entries.
    #[test]
    fn a_torn_entry_before_a_marked_one_is_damage_and_one_after_the_last_mark_is_skippable() {
        let zero = vec![0; ACK_ENTRY_LEN];
        let torn = |seq| {
            let mut bytes = acked(seq, false);
            bytes[12] ^= 1;
            bytes
        };
        let damage = |parts: &[Vec<u8>]| {
            let scan = scan_ack_log(&log_of(4, parts), &mut |_| {}).unwrap();
            let damage = scan.damage.map(|damage| (damage.offset, damage.skippable));
            (damage, scan.skippable)
        };
        // Unmarked valid entries after: a power loss may have torn it.
        assert_eq!(
            damage(&[
                acked(1, true),
                torn(2),
                acked(3, false),
                torn(4),
                acked(5, false)
            ]),
            (Some((at(1), true)), vec![at(1), at(3)])
        );
        // A marked one after, directly or past unmarked ones: damage.
        assert_eq!(
            damage(&[acked(1, false), torn(2), acked(3, true)]),
            (Some((at(1), false)), vec![])
        );
        assert_eq!(
            damage(&[torn(1), acked(2, false), acked(3, false), acked(4, true)]),
            (Some((at(0), false)), vec![])
        );
        // Zeros are missing entries, before a marked entry too: a power loss leaves them, and
        // the open after it syncs them as they are.
        assert_eq!(
            damage(&[acked(1, false), zero.clone(), acked(3, true)]),
            (None, vec![])
        );
        assert_eq!(
            damage(&[acked(1, true), zero.clone(), acked(3, false), zero.clone()]),
            (None, vec![])
        );
        // Damage before a mark outranks a skippable entry found earlier or later.
        assert_eq!(
            damage(&[
                torn(1),
                acked(2, false),
                torn(3),
                acked(4, true),
                torn(5),
                acked(6, false)
            ]),
            (Some((at(0), false)), vec![])
        );
        // A torn entry at the end is the tail, whatever the marks.
        let scan = scan_ack_log(&log_of(4, &[acked(1, true), torn(2)]), &mut |_| {}).unwrap();
        assert_eq!((scan.damage, scan.end), (None, AckLogEnd::TornEntry));
        let detail = scan_ack_log(&log_of(4, &[torn(1), acked(2, true)]), &mut |_| {})
            .unwrap()
            .damage
            .map(|damage| damage.detail);
        assert_eq!(
            detail.as_deref(),
            Some(
                "ack log entry checksum mismatch; a valid entry (at byte offset 56) was written \
                 after this one was synced, so this is damage rather than an interrupted append"
            )
        );
    }

    #[test]
    fn history_keeps_lease_owners_until_a_plain_time_or_their_end() {
        let mut history = JobHistory::default();
        let lease = |seq, lease_owner| AckEntry::NotBefore {
            seq,
            at_us: 1_000,
            lease_owner,
        };
        history.apply(&lease(3, 7));
        history.apply(&lease(4, 8));
        history.apply(&lease(5, 7));
        history.apply(&lease(5, 0));
        assert_eq!(history.entries(), [lease(3, 7), lease(4, 8), lease(5, 0)]);
        assert_eq!(history.end_leases_of_gone(&mut |owner| owner == 7), 1);
        assert_eq!(history.entries(), [lease(4, 8), lease(5, 0)]);
        assert_eq!(history.take_lease_owner(4), 8);
        assert_eq!(history.take(4), (false, 0, 1_000));
        assert!(
            !history.is_delayed(3, 0, 0),
            "the lease of a gone owner ended"
        );
    }

    #[test]
    fn history_merges_ranges_and_prunes_below_the_head() {
        let mut history = JobHistory::default();
        for (start, end) in [(10, 12), (14, 15), (12, 14), (20, 21), (3, 5)] {
            history.apply(&AckEntry::Acked { start, end });
        }
        let ranges: Vec<_> = history.acked.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(ranges, [(3, 5), (10, 15), (20, 21)]);
        history.prune_below(12);
        let ranges: Vec<_> = history.acked.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(ranges, [(12, 15), (20, 21)]);
        assert_eq!(history.acked_count_from(12), 4);
        assert_eq!(history.acked_count_in(12..15), 3);
        assert_eq!(history.acked_count_in(14..21), 2);
        assert_eq!(history.acked_count_in(15..20), 0);
        assert_eq!(history.take(13), (true, 0, 0));
        assert_eq!(history.take(16), (false, 0, 0));
    }

    /// The one rule for what follows an entry that is not valid: a zero entry is skipped
    /// whatever follows; a non-zero one is a torn tail at the end and damage before a valid
    /// entry; a valid checksum over a bad field is damage anywhere.
    #[test]
    fn the_scan_tells_missing_torn_and_damaged_entries_apart() {
        let entry = |seq: u64| {
            let mut bytes = Vec::new();
            encode_entry(
                &mut bytes,
                1,
                &AckEntry::Acked {
                    start: seq,
                    end: seq + 1,
                },
            );
            bytes
        };
        let log = |parts: &[Vec<u8>]| {
            let mut bytes = encode_header(1).to_vec();
            for part in parts {
                bytes.extend_from_slice(part);
            }
            bytes
        };
        let zero = vec![0; ACK_ENTRY_LEN];
        let mut torn = entry(2);
        torn[12] ^= 1;
        let mut applied = 0;
        let missing = scan_ack_log(&log(&[entry(1), zero.clone(), entry(3)]), &mut |_| {
            applied += 1
        })
        .unwrap();
        assert_eq!(
            (missing.damage, missing.end, applied),
            (None, AckLogEnd::Clean, 2)
        );
        let at_end = log(&[entry(1), torn.clone(), zero.clone()]);
        let scan = scan_ack_log(&at_end, &mut |_| {}).unwrap();
        assert_eq!((scan.damage, scan.end), (None, AckLogEnd::TornEntry));
        assert_eq!(scan.valid_end, (ACK_LOG_HEADER_LEN + ACK_ENTRY_LEN) as u64);
        let prepared = scan_ack_log(&log(&[entry(1), zero.clone()]), &mut |_| {}).unwrap();
        assert_eq!(prepared.end, AckLogEnd::PreparedSpace);
        let damaged = log(&[entry(1), torn, zero, entry(3)]);
        let scan = scan_ack_log(&damaged, &mut |_| {}).unwrap();
        let offset = (ACK_LOG_HEADER_LEN + ACK_ENTRY_LEN) as u64;
        assert_eq!(scan.damage.map(|damage| damage.offset), Some(offset));
        assert_eq!(scan.entries, 2, "valid entries after damage are still read");
        let mut beyond = Vec::new();
        encode_entry(
            &mut beyond,
            1,
            &AckEntry::Acked {
                start: 5,
                end: SEQ_LIMIT + 1,
            },
        );
        let scan = scan_ack_log(&log(&[entry(1), beyond]), &mut |_| {}).unwrap();
        assert_eq!(scan.damage.map(|damage| damage.offset), Some(offset));
    }

    #[test]
    fn delivery_counts_only_grow() {
        let mut history = JobHistory::default();
        history.apply(&AckEntry::Delivered {
            seq: 1,
            deliveries: 3,
        });
        history.apply(&AckEntry::Delivered {
            seq: 1,
            deliveries: 2,
        });
        assert_eq!(history.take(1), (false, 3, 0));
    }

    #[test]
    fn next_base_must_continue_or_cross_a_retired_gap() {
        let acked = BTreeMap::from([(3, 5), (20, 30)]);
        assert_eq!(check_next_base(7, 7, &acked), Ok(()));
        assert_eq!(check_next_base(20, 30, &acked), Ok(()));
        assert_eq!(check_next_base(25, 30, &acked), Ok(()));
        assert_eq!(
            check_next_base(20, 31, &acked),
            Err(SequenceBreak::Missing {
                expected: 20,
                base: 31
            })
        );
        assert_eq!(
            check_next_base(7, 9, &acked).map_err(|error| error.to_string()),
            Err(String::from(
                "records 7..9 are missing: the previous segment ends before 7 and this one \
                 starts at 9"
            ))
        );
        assert_eq!(
            check_next_base(9, 7, &acked).map_err(|error| error.to_string()),
            Err(String::from(
                "segment starts at 7 but the previous one already holds records up to 8"
            ))
        );
    }
}
