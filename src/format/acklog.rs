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
//!      8     2  version     ACK_LOG_FORMAT_VERSION (3; version 2 is read too)
//!     10     2  header_len  32
//!     12     2  entry_len   24
//!     14     2  reserved    zero
//!     16     8  log_id      generation of this file; every entry's checksum covers it
//!     24     4  reserved    zero
//!     28     4  crc32       CRC-32 of bytes 0..28
//!
//! entry (24 bytes), from offset 32
//!      0     4  crc32       CRC-32 of log_id (8 bytes, little-endian) then bytes 4..24
//!      4     1  kind        1 = ACKED, 2 = DELIVERED, 3 = NOT_BEFORE
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
/// (zero in version 2, which reads as "no owner": version 2 files are read, and appended to,
/// as they are).
pub const ACK_LOG_FORMAT_VERSION: u16 = 3;

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

/// Decodes the ack log header and returns the log id.
pub fn decode_header(bytes: &[u8]) -> Result<u64, AckHeaderError> {
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
    Ok(read_u64(header, 16))
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

/// Appends one encoded entry to `out`.
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

/// Decodes one entry of log `log_id`, or says why the bytes are not a valid one. An entry is
/// valid when its checksum matches, its kind is 1–3, its sequence number is below
/// [`SEQ_LIMIT`], and for ACKED, `seq < value <= SEQ_LIMIT`.
pub fn check_entry(bytes: &[u8], log_id: u64) -> Result<AckEntry, EntryError> {
    let bytes = bytes.get(..ACK_ENTRY_LEN).ok_or(EntryError::Truncated)?;
    if bytes.iter().all(|&byte| byte == 0) {
        return Err(EntryError::Zero);
    }
    if read_u32(bytes, 0) != entry_checksum(log_id, &bytes[4..]) {
        return Err(EntryError::Checksum);
    }
    let seq = read_u64(bytes, 8);
    let value = read_u64(bytes, 16);
    if seq >= SEQ_LIMIT {
        return Err(EntryError::Invalid(format!(
            "sequence number {seq} is beyond the largest one, {}",
            SEQ_LIMIT - 1
        )));
    }
    match bytes[4] {
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
    }
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
    /// True when the entry only fails its checksum (a valid entry follows): under
    /// `SyncPolicy::Never` and `Interval`, whose appends are not synced one by one, a power loss
    /// leaves exactly this from a torn append. False for a field out of range under a valid
    /// checksum, which no crash produces.
    pub checksum_only: bool,
    /// What is wrong, and where the valid entry after it is.
    pub detail: String,
}

/// An ack log walked entry by entry; see [`scan_ack_log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckLogScan {
    /// The log id from the header.
    pub log_id: u64,
    /// Valid entries.
    pub entries: u64,
    /// Where the last valid entry ends (the header's end when there is none): the length
    /// `open` keeps.
    pub valid_end: u64,
    /// What follows `valid_end`.
    pub end: AckLogEnd,
    /// The first damaged entry, if any. `open` refuses such a log.
    pub damage: Option<AckLogDamage>,
}

/// Walks the entries of an ack log (`bytes` is the whole file), passes each valid one to
/// `apply`, and classifies what is not valid. The one implementation of the rule, used by
/// `Queue::open` and by the lock-free readers (`inspect`, `verify`):
///
/// - an all-zero entry is *missing*: space prepared ahead of the tail, or an unsynced append a
///   power loss did not write while it kept a later one. It is skipped, whatever follows it.
/// - a non-zero entry that fails its checksum is *torn* when no valid entry follows it (the
///   remains of an interrupted append at the end of the log), and *damaged* when one does:
///   appends are written in order, each one whole at the tail, so a crash leaves the bytes of
///   an append either zero, whole, or torn with nothing written after them.
/// - an entry whose checksum matches but whose fields are out of range is damaged wherever it
///   is: a crash does not produce a matching checksum.
///
/// Every valid entry is applied, also after damage, so that readers can show what the log
/// says; `open` refuses a log with damage.
pub fn scan_ack_log(
    bytes: &[u8],
    apply: &mut dyn FnMut(&AckEntry),
) -> Result<AckLogScan, AckHeaderError> {
    let log_id = decode_header(bytes)?;
    let mut scan = AckLogScan {
        log_id,
        entries: 0,
        valid_end: ACK_LOG_HEADER_LEN as u64,
        end: AckLogEnd::Clean,
        damage: None,
    };
    // The first entry that failed its checksum since the last valid one: damage if a valid
    // entry follows.
    let mut unexplained: Option<u64> = None;
    let mut offset = ACK_LOG_HEADER_LEN;
    while let Some(entry_bytes) = bytes.get(offset..offset + ACK_ENTRY_LEN) {
        let at = offset as u64;
        offset += ACK_ENTRY_LEN;
        match check_entry(entry_bytes, log_id) {
            Ok(entry) => {
                if let (Some(bad), None) = (unexplained.take(), &scan.damage) {
                    scan.damage = Some(AckLogDamage {
                        offset: bad,
                        checksum_only: true,
                        detail: format!(
                            "ack log entry checksum mismatch; a valid entry (at byte offset \
                             {at}) follows, so this is damage rather than an interrupted \
                             append"
                        ),
                    });
                }
                apply(&entry);
                scan.entries += 1;
                scan.valid_end = at + ACK_ENTRY_LEN as u64;
            }
            Err(EntryError::Zero | EntryError::Truncated) => {}
            Err(EntryError::Checksum) => {
                unexplained.get_or_insert(at);
            }
            Err(error @ EntryError::Invalid(_)) => {
                // No crash writes a valid checksum over a bad field: this outranks a torn entry.
                if scan
                    .damage
                    .as_ref()
                    .is_none_or(|damage| damage.checksum_only)
                {
                    scan.damage = Some(AckLogDamage {
                        offset: at,
                        checksum_only: false,
                        detail: error.to_string(),
                    });
                }
            }
        }
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
        header[8..10].copy_from_slice(&4u16.to_le_bytes());
        let crc = crate::format::frame::crc32(&header[..28]);
        header[28..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&header),
            Err(AckHeaderError::UnsupportedVersion(4))
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
