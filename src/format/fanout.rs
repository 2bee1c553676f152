//! The fanout intent log of a spool (`fanout.log`): before a fanout writes its copies, an INTENT
//! entry names every target queue with the sequence number its copy gets, and the payload; a
//! DONE entry follows once every copy is written. `Spool::open` rolls unfinished intents
//! forward.
//!
//! ```text
//! entry:   crc32 u32 (of the rest) · len u32 (whole entry) · kind u8 · 7 zero bytes · id u64 · body
//! INTENT:  count u32, then per target: name_len u16 · name · seq u64; then payload_len u32 · payload
//! DONE:    no body
//! ```
//!
//! Integers are little-endian. A torn or damaged entry ends the log.

use crate::format::frame::{crc32, read_u32, read_u64};
use crate::format::layout::validate_queue_name;

pub(crate) const KIND_INTENT: u8 = 1;
pub(crate) const KIND_DONE: u8 = 2;
pub(crate) const ENTRY_HEADER_LEN: usize = 24;

/// One recorded fanout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Intent {
    pub(crate) id: u64,
    pub(crate) targets: Vec<(String, u64)>,
    pub(crate) payload: Vec<u8>,
}

pub(crate) enum Entry {
    Intent(Intent),
    Done(u64),
}

pub(crate) fn encode_header(kind: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let len = ENTRY_HEADER_LEN + body.len();
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&[0; 4]);
    bytes.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    bytes.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend_from_slice(&id.to_le_bytes());
    bytes.extend_from_slice(body);
    let crc = crc32(&bytes[4..]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

pub(crate) fn encode_intent(intent: &Intent) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(intent.targets.len() as u32).to_le_bytes());
    for (name, seq) in &intent.targets {
        body.extend_from_slice(&(name.len() as u16).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&seq.to_le_bytes());
    }
    body.extend_from_slice(&(intent.payload.len() as u32).to_le_bytes());
    body.extend_from_slice(&intent.payload);
    encode_header(KIND_INTENT, intent.id, &body)
}

/// Decodes the entry at the start of `bytes` and its length; `None` for a torn or damaged one.
pub(crate) fn decode_entry(bytes: &[u8]) -> Option<(Entry, usize)> {
    let header = bytes.get(..ENTRY_HEADER_LEN)?;
    let len = read_u32(header, 4) as usize;
    // A length below the header's would not move the reader forward (a crafted file could make
    // `Spool::open` loop for ever): no writer produces one.
    if len < ENTRY_HEADER_LEN {
        return None;
    }
    let entry = bytes.get(..len)?;
    if read_u32(entry, 0) != crc32(&entry[4..]) {
        return None;
    }
    let id = read_u64(entry, 16);
    match entry[8] {
        KIND_DONE => Some((Entry::Done(id), len)),
        KIND_INTENT => {
            let mut body = Reader(&entry[ENTRY_HEADER_LEN..]);
            let count = body.u32()?;
            let mut targets = Vec::new();
            for _ in 0..count {
                let name_len = body.u16()?;
                let name = String::from_utf8(body.take(usize::from(name_len))?.to_vec()).ok()?;
                validate_queue_name(&name).ok()?;
                targets.push((name, body.u64()?));
            }
            let payload_len = body.u32()? as usize;
            let payload = body.take(payload_len)?.to_vec();
            Some((
                Entry::Intent(Intent {
                    id,
                    targets,
                    payload,
                }),
                len,
            ))
        }
        _ => None,
    }
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let taken = self.0.get(..len)?;
        self.0 = self.0.get(len..)?;
        Some(taken)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_round_trip_and_damage_is_rejected() {
        let intent = Intent {
            id: 3,
            targets: vec![("a".into(), 10), ("b-2".into(), 0)],
            payload: b"hello".to_vec(),
        };
        let bytes = encode_intent(&intent);
        match decode_entry(&bytes) {
            Some((Entry::Intent(decoded), len)) => {
                assert_eq!(decoded, intent);
                assert_eq!(len, bytes.len());
            }
            _ => panic!("intent did not decode"),
        }
        for cut in 0..bytes.len() {
            assert!(decode_entry(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut damaged = bytes.clone();
        damaged[30] ^= 1;
        assert!(decode_entry(&damaged).is_none());
    }

    #[test]
    fn an_entry_shorter_than_its_header_is_refused_even_with_a_valid_checksum() {
        for len in [0u32, 8, 23] {
            let mut entry = encode_header(KIND_DONE, 7, &[]);
            entry[4..8].copy_from_slice(&len.to_le_bytes());
            let crc = crate::format::frame::crc32(&entry[4..]);
            entry[..4].copy_from_slice(&crc.to_le_bytes());
            assert!(decode_entry(&entry).is_none(), "length {len}");
        }
    }
}
