//! The deduplication log (`dedup`): the ids of recent pushes made with a deduplication id
//! (`Push::dedup_id`), each with the sequence number its first push got and when, so that a
//! second push with the same id inside the window (`Options::dedup_window`) writes nothing,
//! also after a reopen or a crash.
//!
//! ```text
//! header (16 bytes)
//! offset size field
//!      0    8  magic        "DSPOOLDD"
//!      8    2  version      DEDUP_VERSION (1)
//!     10    6  reserved     zero
//! entry (24 + id_len bytes, then zeros up to a multiple of 8)
//!      0    4  crc32        CRC-32 of bytes 4..24 + id_len of the entry
//!      4    2  id_len       1..=128
//!      6    2  reserved     zero
//!      8    8  seq          the sequence number of the first push with this id
//!     16    8  at_us        when it was pushed, microseconds since the Unix epoch
//!     24    n  id           the id's bytes
//! ```
//!
//! Entries are appended; the first one that does not validate ends the log (a torn append).
//! The file is rewritten whole (`dedup.tmp`, sync, rename) with the ids still in the window.

/// The deduplication log's magic bytes.
pub const DEDUP_MAGIC: [u8; 8] = *b"DSPOOLDD";
/// The layout version this build reads and writes.
pub const DEDUP_VERSION: u16 = 1;
/// The header's length.
pub const DEDUP_HEADER_LEN: usize = 16;
/// Bytes of an entry before its id.
pub const DEDUP_ENTRY_FIXED_LEN: usize = 24;
/// The longest id an entry holds.
pub const DEDUP_ID_MAX: usize = 128;

/// One remembered id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupEntry {
    /// The id.
    pub id: Vec<u8>,
    /// The sequence number of the first push with it.
    pub seq: u64,
    /// When that push was made, microseconds since the Unix epoch.
    pub at_us: u64,
}

/// The header's bytes.
pub fn encode_dedup_header() -> [u8; DEDUP_HEADER_LEN] {
    let mut bytes = [0; DEDUP_HEADER_LEN];
    bytes[..8].copy_from_slice(&DEDUP_MAGIC);
    bytes[8..10].copy_from_slice(&DEDUP_VERSION.to_le_bytes());
    bytes
}

/// Whether `bytes` start with a header this build reads.
pub fn dedup_header_ok(bytes: &[u8]) -> bool {
    bytes.len() >= DEDUP_HEADER_LEN
        && bytes[..8] == DEDUP_MAGIC
        && bytes[8..10] == DEDUP_VERSION.to_le_bytes()
        && bytes[10..16].iter().all(|&byte| byte == 0)
}

/// The length of an entry with an id of `id_len` bytes, padding included.
pub fn dedup_entry_len(id_len: usize) -> usize {
    (DEDUP_ENTRY_FIXED_LEN + id_len).div_ceil(8) * 8
}

/// Appends one entry's bytes to `out`. The id must be 1..=[`DEDUP_ID_MAX`] bytes (the caller
/// checks).
pub fn encode_dedup_entry(out: &mut Vec<u8>, entry: &DedupEntry) {
    let start = out.len();
    let id_len = entry.id.len().min(DEDUP_ID_MAX);
    out.resize(start + dedup_entry_len(id_len), 0);
    let bytes = &mut out[start..];
    bytes[4..6].copy_from_slice(&(id_len as u16).to_le_bytes());
    bytes[8..16].copy_from_slice(&entry.seq.to_le_bytes());
    bytes[16..24].copy_from_slice(&entry.at_us.to_le_bytes());
    bytes[24..24 + id_len].copy_from_slice(&entry.id[..id_len]);
    let crc = crc32fast::hash(&bytes[4..24 + id_len]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the entries after the header, up to the first that does not validate; returns them
/// with the offset where the valid log ends.
pub fn decode_dedup_entries(bytes: &[u8]) -> (Vec<DedupEntry>, usize) {
    decode_dedup_entries_from(bytes, DEDUP_HEADER_LEN)
}

/// Decodes the entries of `bytes` from `offset` on, as [`decode_dedup_entries`] does from the
/// header's end (`bytes` may be a part of the log that starts at an entry: `offset` 0).
pub fn decode_dedup_entries_from(bytes: &[u8], offset: usize) -> (Vec<DedupEntry>, usize) {
    let mut entries = Vec::new();
    let mut offset = offset;
    while let Some(entry) = decode_entry_at(bytes, offset) {
        offset += dedup_entry_len(entry.id.len());
        entries.push(entry);
    }
    (entries, offset)
}

fn decode_entry_at(bytes: &[u8], offset: usize) -> Option<DedupEntry> {
    let fixed = bytes.get(offset..offset.checked_add(DEDUP_ENTRY_FIXED_LEN)?)?;
    let id_len = usize::from(u16::from_le_bytes([fixed[4], fixed[5]]));
    if id_len == 0 || id_len > DEDUP_ID_MAX || fixed[6..8] != [0, 0] {
        return None;
    }
    let end = offset + DEDUP_ENTRY_FIXED_LEN + id_len;
    // The padding too: an entry cut short in it is torn, or the next append would start
    // inside it and be lost at the next open.
    bytes.get(offset..offset + dedup_entry_len(id_len))?;
    let body = bytes.get(offset + 4..end)?;
    let stored = u32::from_le_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    if crc32fast::hash(body) != stored {
        return None;
    }
    let word = |at: usize| {
        let mut field = [0; 8];
        field.copy_from_slice(&fixed[at..at + 8]);
        u64::from_le_bytes(field)
    };
    Some(DedupEntry {
        id: bytes[offset + DEDUP_ENTRY_FIXED_LEN..end].to_vec(),
        seq: word(8),
        at_us: word(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_a_torn_one_ends_the_log() {
        let mut bytes = encode_dedup_header().to_vec();
        let first = DedupEntry {
            id: b"order-17".to_vec(),
            seq: 5,
            at_us: 1_000,
        };
        let second = DedupEntry {
            id: vec![7; DEDUP_ID_MAX],
            seq: 6,
            at_us: 2_000,
        };
        encode_dedup_entry(&mut bytes, &first);
        encode_dedup_entry(&mut bytes, &second);
        assert!(dedup_header_ok(&bytes));
        assert_eq!(bytes.len(), 16 + 32 + dedup_entry_len(128));
        let (entries, end) = decode_dedup_entries(&bytes);
        assert_eq!(entries, [first.clone(), second]);
        assert_eq!(end, bytes.len());
        // Torn: the second entry lost its last bytes.
        let torn = &bytes[..bytes.len() - 9];
        let (entries, end) = decode_dedup_entries(torn);
        assert_eq!(entries, std::slice::from_ref(&first));
        assert_eq!(end, 16 + 32);
        // Torn in the padding only (a one-byte id fills 25 of its entry's 32 bytes): its checksum
        // holds, but the log ends before it, or the next append would start inside the entry.
        let mut short = encode_dedup_header().to_vec();
        encode_dedup_entry(&mut short, &first);
        let third = DedupEntry {
            id: vec![5],
            seq: 7,
            at_us: 3_000,
        };
        encode_dedup_entry(&mut short, &third);
        let cut = &short[..short.len() - 5];
        let (entries, end) = decode_dedup_entries(cut);
        assert_eq!(entries, [first]);
        assert_eq!(end, 16 + 32);
        // Zeros (prepared or never written space) end the log too.
        let mut zeros = encode_dedup_header().to_vec();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(decode_dedup_entries(&zeros).0, []);
    }
}
