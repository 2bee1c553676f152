//! A second reader written from docs/FORMAT.md alone ("Reading a queue", steps 1–8), compared
//! with what `spool dump` and `spool stat` read (`inspect::records`, `inspect::stat`) on queues
//! that cross segments, hold batches, delayed records, out-of-order acks and retries, a head at
//! a segment boundary, a torn tail and free space. The second reader uses no decoding code of
//! the crate (the test uses some only to check that its scenario is what it says): if the
//! document leaves a rule out or states it wrongly, the two readers disagree.

// Test code unwraps: a failure is a test failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use diskspool::storage::OsStorage;
use diskspool::tools::inspect;
use diskspool::{Options, Push, Queue, SyncPolicy};

/// What a reader shows of a queue: its records (seq, enqueue time, TTL, payload), head and end.
#[derive(Debug, PartialEq, Eq)]
struct Shown {
    head_seq: u64,
    next_seq: u64,
    len: u64,
    records: Vec<(u64, u64, u64, Vec<u8>)>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Check H, items 1–4 (`Some(base)`), without the comparison with the name.
fn header_base(bytes: &[u8]) -> Option<u64> {
    if bytes.len() < 32 || &bytes[..8] != b"DSPOOLSG" {
        return None;
    }
    let version = u16_at(bytes, 8);
    if crc32fast::hash(&bytes[..28]) != u32_at(bytes, 28) || !(2..=3).contains(&version) {
        return None;
    }
    Some(u64_at(bytes, 16))
}

/// Check F at `o` expecting `s`, in the segment `bytes` (from its header, whose version says
/// which bits are flags): (frame length, batch continues, enqueued, TTL, payload range).
type Checked = (usize, bool, u64, u64, usize, usize);
fn frame_at(bytes: &[u8], o: usize, s: u64) -> Result<Checked, String> {
    let version_3 = u16_at(bytes, 8) == 3;
    let rest = bytes.get(o..).unwrap_or(&[]);
    if rest.len() < 24 {
        return Err(format!("cut short at {o}"));
    }
    let len_flags = u32_at(rest, 4);
    let n = (len_flags & if version_3 { 0x1FFF_FFFF } else { 0x3FFF_FFFF }) as usize;
    if rest.len() < 24 + n {
        return Err(format!("cut short at {o}"));
    }
    if crc32fast::hash(&rest[4..24 + n]) != u32_at(rest, 0) {
        return Err(format!("checksum at {o}"));
    }
    if u64_at(rest, 8) != s {
        return Err(format!("wrong seq at {o}: {}", u64_at(rest, 8)));
    }
    let delayed = len_flags & (1 << 30) != 0;
    let has_ttl = version_3 && len_flags & (1 << 29) != 0;
    let prefix = 8 * usize::from(delayed) + 8 * usize::from(has_ttl);
    if n < prefix {
        return Err(format!("short prefix at {o}"));
    }
    let ttl = if has_ttl {
        u64_at(rest, 24 + prefix - 8)
    } else {
        0
    };
    let frame_len = (24 + n).div_ceil(8) * 8;
    Ok((
        frame_len,
        len_flags & (1 << 31) != 0,
        u64_at(rest, 16),
        ttl,
        o + 24 + prefix,
        o + 24 + n,
    ))
}

/// Step 4: the end of the log, `(E, N)`; an error for damage below `synced_seq`.
fn end_of_log(bytes: &[u8], base: u64, synced_seq: u64) -> Result<(usize, u64), String> {
    let (mut o, mut s) = (32, base);
    let (mut e, mut n) = (32, base);
    let failed = loop {
        if o >= bytes.len() {
            break None;
        }
        match frame_at(bytes, o, s) {
            Ok((frame_len, continues, ..)) => {
                o += frame_len;
                s += 1;
                if !continues {
                    (e, n) = (o, s);
                }
            }
            Err(_) => break Some(o),
        }
    };
    let Some(f) = failed else { return Ok((e, n)) };
    let mut at = f + 8;
    while at + 24 <= bytes.len() {
        let x = u64_at(bytes, at + 8);
        let zero = bytes[at..at + 24].iter().all(|&b| b == 0);
        if !zero && x >= s && x - s < bytes.len() as u64 && frame_at(bytes, at, x).is_ok() {
            if n < synced_seq {
                return Err(format!("damage at {f}"));
            }
            return Ok((e, n));
        }
        at += 8;
    }
    // Free space or a torn tail: either way the log ends at E.
    Ok((e, n))
}

/// Steps 1–8 of "Reading a queue".
fn read_queue(dir: &Path) -> Result<Shown, String> {
    // Step 3's listing first: step 1 needs to know whether segments exist.
    let mut segments: Vec<(u64, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(digits) = name.strip_suffix(".seg") else {
            continue;
        };
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(base) = digits.parse::<u64>() else {
            continue;
        };
        segments.push((base, std::fs::read(dir.join(&name)).unwrap()));
    }
    segments.sort_by_key(|(base, _)| *base);
    // Step 1.
    let Ok(head) = std::fs::read(dir.join("head")) else {
        if segments.is_empty() {
            return Ok(Shown {
                head_seq: 0,
                next_seq: 0,
                len: 0,
                records: Vec::new(),
            });
        }
        return Err(String::from("head missing"));
    };
    // Step 2.
    let slot = |at: usize| -> Option<[u64; 5]> {
        let b = head.get(at..at + 64)?;
        if b.iter().all(|&x| x == 0) || &b[..8] != b"DSPOOLHD" {
            return None;
        }
        if crc32fast::hash(&b[..60]) != u32_at(b, 60) || u16_at(b, 8) != 2 {
            return None;
        }
        Some([16, 24, 32, 40, 48].map(|field| u64_at(b, field)))
    };
    let [_, head_seq, hint_base, hint_offset, synced_seq] = match (slot(0), slot(4096)) {
        (Some(a), Some(b)) => {
            if b[0] > a[0] {
                b
            } else {
                a
            }
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => return Err(String::from("no valid slot")),
    };
    // Step 3: unborn last segment, gap before the head.
    while let Some((_, last)) = segments.last() {
        if last.len() <= 32 && header_base(last).is_none() {
            segments.pop();
        } else {
            break;
        }
    }
    if segments.first().is_some_and(|(base, _)| *base > head_seq) {
        return Err(String::from("gap before the head"));
    }
    for (base, bytes) in &segments {
        if header_base(bytes) != Some(*base) {
            return Err(format!("bad header in {base}"));
        }
    }
    // Step 4.
    let (e, n) = match segments.last() {
        Some((base, bytes)) => end_of_log(bytes, *base, synced_seq)?,
        None => (32, head_seq),
    };
    let next_seq = n.max(head_seq);
    // Step 7 (the ack log), needed to filter step 6's records.
    let mut acked: Vec<(u64, u64)> = Vec::new();
    if let Ok(log) = std::fs::read(dir.join("acks")) {
        let header_ok = log.len() >= 32
            && &log[..8] == b"DSPOOLAK"
            && crc32fast::hash(&log[..28]) == u32_at(&log, 28)
            && (2..=4).contains(&u16_at(&log, 8));
        if !header_ok {
            return Err(String::from("bad ack log header"));
        }
        // Version 4: bit 7 of the kind byte is the SYNCED_BEFORE mark.
        let kind_mask = if u16_at(&log, 8) >= 4 { 0x7F } else { 0xFF };
        let log_id = u64_at(&log, 16).to_le_bytes();
        let mut entries = Vec::new();
        let mut at = 32;
        while at + 24 <= log.len() {
            let entry = &log[at..at + 24];
            let mut hasher = crc32fast::Hasher::new();
            hasher.update(&log_id);
            hasher.update(&entry[4..]);
            let (seq, value) = (u64_at(entry, 8), u64_at(entry, 16));
            let kind = entry[4] & kind_mask;
            let valid = hasher.finalize() == u32_at(entry, 0)
                && matches!(kind, 1..=3)
                && (kind != 1 || value > seq);
            entries.push((at, valid, entry.iter().all(|&b| b == 0), kind, seq, value));
            at += 24;
        }
        let last_valid = entries.iter().rposition(|entry| entry.1);
        for (index, &(at, valid, zero, kind, seq, value)) in entries.iter().enumerate() {
            if Some(index) > last_valid {
                break;
            }
            if !valid && !zero {
                return Err(format!("damaged ack log entry at {at}"));
            }
            if valid && kind == 1 {
                acked.push((seq.max(head_seq), value.min(next_seq)));
            }
        }
    }
    let is_acked = |seq: u64| acked.iter().any(|&(start, end)| start <= seq && seq < end);
    // Steps 5 and 6.
    let mut records = Vec::new();
    if head_seq < n {
        let index = segments
            .iter()
            .rposition(|(base, _)| *base <= head_seq)
            .unwrap();
        let (base, bytes) = &segments[index];
        let limit = |i: usize| {
            if i + 1 == segments.len() {
                e
            } else {
                segments[i].1.len()
            }
        };
        let mut o = 32;
        let mut s = *base;
        if *base != head_seq {
            let hint_ok = hint_base == *base
                && hint_offset >= 32
                && (hint_offset as usize) < limit(index)
                && frame_at(&bytes[..limit(index)], hint_offset as usize, head_seq).is_ok();
            if hint_ok {
                (o, s) = (hint_offset as usize, head_seq);
            }
        }
        for (i, (base, bytes)) in segments.iter().enumerate().skip(index) {
            if i > index {
                if *base != s {
                    return Err(format!("gap before {base}"));
                }
                o = 32;
            }
            let end = limit(i);
            let mut batch = Vec::new();
            while o < end {
                let (frame_len, continues, enqueued, ttl, start, stop) =
                    frame_at(&bytes[..end], o, s)?;
                batch.push((s, enqueued, ttl, bytes[start..stop].to_vec()));
                if !continues {
                    records.append(&mut batch);
                }
                o += frame_len;
                s += 1;
            }
            if !batch.is_empty() || o != end {
                return Err(format!("sealed segment {base} ends inside a batch"));
            }
        }
    }
    records.retain(|(seq, ..)| *seq >= head_seq && !is_acked(*seq));
    let acked_count = (head_seq..next_seq).filter(|&seq| is_acked(seq)).count() as u64;
    Ok(Shown {
        head_seq,
        next_seq,
        len: next_seq - head_seq - acked_count,
        records,
    })
}

/// What `spool dump` and `spool stat` show.
fn dumped(dir: &Path) -> Shown {
    let stat = inspect::stat(&OsStorage, dir).unwrap();
    let records = inspect::records(&OsStorage, dir, None)
        .unwrap()
        .map(|record| {
            let record = record.unwrap();
            (
                record.seq,
                record.enqueued_us,
                record.ttl_us,
                record.payload,
            )
        })
        .collect();
    Shown {
        head_seq: stat.head_seq,
        next_seq: stat.next_seq,
        len: stat.len,
        records,
    }
}

fn options() -> Options {
    Options::default()
        .segment_size(4096)
        .sync(SyncPolicy::Never)
        .auto_compact(false)
}

fn payload(seq: u64) -> Vec<u8> {
    vec![seq as u8; (seq * 37 % 200) as usize]
}

fn assert_same(dir: &Path) -> Shown {
    let second = read_queue(dir).expect("the second reader reads the queue");
    let first = dumped(dir);
    assert_eq!(second, first, "FORMAT.md's reader and spool dump disagree");
    second
}

#[test]
fn a_reader_written_from_the_format_document_reads_what_dump_reads() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        for seq in 0..120 {
            match seq % 10 {
                3 => {
                    let batch: Vec<Vec<u8>> = (0..4).map(|i| payload(seq + i)).collect();
                    queue.push_batch(&batch).unwrap();
                }
                7 => {
                    queue
                        .push_delayed(&payload(seq), Duration::from_secs(3600))
                        .unwrap();
                }
                // Records with a TTL (version 3), one of them delayed too.
                5 | 9 => {
                    let mut push = Push::new().ttl(Duration::from_secs(7200 + seq));
                    if seq % 10 == 9 {
                        push = push.delay(Duration::from_secs(60));
                    }
                    queue.push_with(&payload(seq), push).unwrap();
                }
                _ => {
                    queue.push(&payload(seq)).unwrap();
                }
            }
        }
        for _ in 0..23 {
            queue.pop().unwrap().unwrap();
        }
        // Out-of-order acks, a retry and an outstanding lease: the ack log.
        let mut deliveries = queue.try_recv_batch(9).unwrap();
        let retried = deliveries.remove(4);
        retried.retry_after(Duration::from_secs(3600)).unwrap();
        for (index, delivery) in deliveries.into_iter().enumerate() {
            if index % 2 == 1 {
                delivery.ack().unwrap();
            }
        }
    }
    let shown = assert_same(dir.path());
    assert!(
        shown.len > 0 && shown.len < shown.next_seq - shown.head_seq,
        "{shown:?}"
    );

    // A torn tail: bytes that are neither a frame nor free space after the last record.
    let segments = segment_names(dir.path());
    let active = dir.path().join(segments.last().unwrap());
    let mut bytes = std::fs::read(&active).unwrap();
    let intact = bytes.len();
    bytes.extend_from_slice(&[0x5A; 20]);
    std::fs::write(&active, &bytes).unwrap();
    assert_same(dir.path());

    // Free space: zeros to a 4 KiB boundary after the last record.
    bytes.truncate(intact);
    bytes.resize(intact.next_multiple_of(4096), 0);
    std::fs::write(&active, &bytes).unwrap();
    assert_same(dir.path());
}

#[test]
fn a_head_at_a_segment_boundary_is_read_alike() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        for seq in 0..100 {
            queue.push(&payload(seq)).unwrap();
        }
    }
    let names = segment_names(dir.path());
    let second_base: u64 = names[1].trim_end_matches(".seg").parse().unwrap();
    {
        let queue = Queue::open(dir.path(), options()).unwrap();
        for _ in 0..second_base {
            queue.pop().unwrap().unwrap();
        }
    }
    let shown = assert_same(dir.path());
    assert_eq!(shown.head_seq, second_base);
    // The scenario is the boundary case of step 5: the hint names the end of the first
    // segment, while the head is at offset 32 of the second.
    let head = std::fs::read(dir.path().join("head")).unwrap();
    let read = diskspool::format::head::decode_head_file(&head);
    let state = read.slots[read.current.unwrap()].clone().unwrap().state;
    let first_len = std::fs::metadata(dir.path().join(&names[0])).unwrap().len();
    assert_eq!(
        (state.hint_base, state.hint_offset),
        (0, first_len),
        "{state:?}"
    );
    {
        // Every record consumed: the head at the end of the active segment.
        let queue = Queue::open(dir.path(), options()).unwrap();
        while queue.pop().unwrap().is_some() {}
    }
    let shown = assert_same(dir.path());
    assert_eq!((shown.len, shown.head_seq), (0, 100));
}

fn segment_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".seg"))
        .collect();
    names.sort();
    names
}
