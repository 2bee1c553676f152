//! The quarantine manifest (`quarantine/manifest`): one line for each file in `quarantine/`
//! that holds records a repair cut from the queue, so that `spool quarantine --restore` knows
//! which records may be pushed back (and never pushes back consumed records that a repair set
//! aside with a damaged segment).
//!
//! Each line is text, its fields separated by tabs:
//! `<file in quarantine>\t<action>\t<file it came from>\t<byte offset>\t<first seq>\t<end seq>\t<records>`.
//! The action is the repair action's name (`truncate_tail`: the file holds the bytes of the
//! segment from the offset on, without a segment header; `quarantine`: a whole segment file).
//! The sequence numbers `first..end` are those the repair cut with this file; `records` how many
//! of them were readable. Lines that do not parse are ignored (a line a crash cut short).

use std::ops::Range;

/// One line of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutFile {
    /// The file's name in `quarantine/`.
    pub saved_as: String,
    /// The repair action that put it there (`truncate_tail` or `quarantine`).
    pub action: String,
    /// The name of the queue file it came from.
    pub source: String,
    /// Where in the source file its bytes started (0 for a whole file).
    pub offset: u64,
    /// The sequence numbers cut with it.
    pub seqs: Range<u64>,
    /// How many of them were readable.
    pub records: u64,
}

impl CutFile {
    /// True when the file is the tail of a segment (no segment header: frames from byte 0).
    pub fn is_segment_tail(&self) -> bool {
        self.action == "truncate_tail"
    }
}

/// One manifest line, newline included. Names holding a tab or a line break are not written
/// by a repair (segment names never do).
pub fn encode_line(entry: &CutFile) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
        entry.saved_as,
        entry.action,
        entry.source,
        entry.offset,
        entry.seqs.start,
        entry.seqs.end,
        entry.records
    )
}

/// Every line of a manifest that parses, in order.
pub fn decode(text: &str) -> Vec<CutFile> {
    text.lines().filter_map(decode_line).collect()
}

fn decode_line(line: &str) -> Option<CutFile> {
    let mut fields = line.split('\t');
    let mut next = || fields.next();
    let saved_as = next()?.to_string();
    let action = next()?.to_string();
    let source = next()?.to_string();
    let offset = next()?.parse().ok()?;
    let start = next()?.parse().ok()?;
    let end = next()?.parse().ok()?;
    let records = next()?.parse().ok()?;
    if next().is_some() || saved_as.is_empty() || start > end {
        return None;
    }
    Some(CutFile {
        saved_as,
        action,
        source,
        offset,
        seqs: start..end,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_bad_ones_are_skipped() {
        let entry = CutFile {
            saved_as: String::from("00000000000000000042.seg.cut-at-96"),
            action: String::from("truncate_tail"),
            source: String::from("00000000000000000042.seg"),
            offset: 96,
            seqs: 44..50,
            records: 5,
        };
        let mut text = encode_line(&entry);
        text.push_str("cut short\t");
        text.push('\n');
        text.push_str(&encode_line(&entry));
        assert_eq!(decode(&text), vec![entry.clone(), entry.clone()]);
        assert!(entry.is_segment_tail());
        assert!(
            decode("a\tb\tc\t1\t9\t2\t0\n").is_empty(),
            "start after end"
        );
    }
}
