//! Every name a queue directory holds, and the rules for recognising them.
//!
//! A queue directory holds segment files (`<base_seq:020>.seg`), the head index (`head`), the
//! settings file (`settings`), the lock file (`lock`), the ack log (`acks`) when the jobs API is
//! used, the deduplication log (`dedup`) when pushes carry a deduplication id, consumed segment files kept for reuse (`<base:020>.free`), temporary files of an
//! atomic replacement (`<name>.tmp`), and the `quarantine` folder that `repair` writes. A spool
//! directory holds one queue directory per name and the fanout intent log (`fanout.log`), and, for
//! a spool of shared queues, the lock file of its fanouts (`fanout.lock`).

/// The lock file's name inside the queue directory.
pub const LOCK_FILE_NAME: &str = "lock";

/// Held by a process that opens or closes a queue shared with other processes, while it does.
pub const OPEN_LOCK_FILE_NAME: &str = "open.lock";

/// The folder of a shared queue's handle slots: `procs/000` to `procs/127`, each locked by
/// the handle that holds the slot (see [`control`](crate::format::control)).
pub const PROCS_DIR_NAME: &str = "procs";

/// The name of slot `slot`'s file inside [`PROCS_DIR_NAME`]: `000` to `127`.
pub fn slot_file_name(slot: u32) -> String {
    format!("{slot:03}")
}

/// The control file of a queue shared by several processes (see
/// [`control`](crate::format::control)).
pub const CONTROL_FILE_NAME: &str = "control";

/// The head index's file name inside the queue directory.
pub const HEAD_FILE_NAME: &str = "head";

/// The ack log's file name inside the queue directory.
pub const ACK_LOG_FILE_NAME: &str = "acks";

/// The settings file's name inside a queue directory.
pub const SETTINGS_FILE_NAME: &str = "settings";

/// The deduplication log's file name inside the queue directory (`Push::dedup_id`).
pub const DEDUP_FILE_NAME: &str = "dedup";

/// The fanout intent log's file name inside the spool directory.
pub const FANOUT_LOG_FILE_NAME: &str = "fanout.log";

/// The file a spool of shared queues locks (`flock`) for one fanout, inside the spool directory.
pub const FANOUT_LOCK_FILE_NAME: &str = "fanout.lock";

/// The folder inside a queue directory where `repair` moves data it cuts.
pub const QUARANTINE_DIR_NAME: &str = "quarantine";

/// The file in the quarantine folder that lists the files holding records cut from the queue
/// (see [`quarantine`](crate::format::quarantine)).
pub const QUARANTINE_MANIFEST_NAME: &str = "manifest";

/// The folder inside the quarantine folder where `spool quarantine --restore` moves the files
/// whose records it pushed back.
pub const RESTORED_DIR_NAME: &str = "restored";

/// The file name suffix of segments.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// The file name of the segment whose first record is `base_seq`: 20 digits, so names sort.
pub fn segment_file_name(base_seq: u64) -> String {
    format!("{base_seq:020}{SEGMENT_SUFFIX}")
}

/// The base sequence number in a segment file name, or `None` for any other name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The file name suffix of consumed segment files kept for reuse.
pub const POOL_SUFFIX: &str = ".free";

/// The pool file name for a segment whose base was `base`.
pub fn pool_file_name(base: u64) -> String {
    format!("{base:020}{POOL_SUFFIX}")
}

/// True for the name of a pool file.
pub fn is_pool_file_name(name: &str) -> bool {
    name.strip_suffix(POOL_SUFFIX)
        .is_some_and(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// What an entry of a queue directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A segment file, with the base sequence number its name carries.
    Segment(u64),
    /// The head index.
    Head,
    /// A temporary head index left by an interrupted creation; `Queue::open` removes it.
    HeadTemporary,
    /// The lock file, or a file that processes sharing the queue coordinate through (lock files,
    /// `control`): none holds data.
    Lock,
    /// The queue's settings file, or its temporary file while it is replaced.
    Settings,
    /// A consumed segment file kept for reuse (`Options::segment_pool`), named `<20 digits>.free`.
    PoolFile,
    /// The ack log of the jobs API (`acks`), or its temporary file during a rewrite.
    AckLog,
    /// The quarantine folder written by `repair`.
    Quarantine,
    /// The deduplication log (`dedup`), or its temporary file during a rewrite.
    DedupLog,
    /// Anything else: not written by diskspool.
    Stray,
}

/// Classifies a name found in a queue directory.
pub fn classify_entry(name: &str) -> EntryKind {
    if let Some(base) = parse_segment_file_name(name) {
        return EntryKind::Segment(base);
    }
    match name {
        HEAD_FILE_NAME => EntryKind::Head,
        LOCK_FILE_NAME | OPEN_LOCK_FILE_NAME | CONTROL_FILE_NAME | PROCS_DIR_NAME => {
            EntryKind::Lock
        }
        QUARANTINE_DIR_NAME => EntryKind::Quarantine,
        ACK_LOG_FILE_NAME => EntryKind::AckLog,
        SETTINGS_FILE_NAME => EntryKind::Settings,
        DEDUP_FILE_NAME => EntryKind::DedupLog,
        _ if is_pool_file_name(name) => EntryKind::PoolFile,
        _ if name == format!("{SETTINGS_FILE_NAME}.tmp") => EntryKind::Settings,
        _ if name == format!("{ACK_LOG_FILE_NAME}.tmp") => EntryKind::AckLog,
        _ if name == format!("{DEDUP_FILE_NAME}.tmp") => EntryKind::DedupLog,
        _ if name == format!("{HEAD_FILE_NAME}.tmp") => EntryKind::HeadTemporary,
        _ => EntryKind::Stray,
    }
}

/// The longest queue name.
pub const QUEUE_NAME_LEN_MAX: usize = 128;

/// Checks a queue name: 1 to 128 characters of `A-Z a-z 0-9 _ - .`, not starting with a dot,
/// and not a name the spool uses for its own files.
pub fn validate_queue_name(name: &str) -> crate::error::Result<()> {
    if name == FANOUT_LOG_FILE_NAME || name == FANOUT_LOCK_FILE_NAME || name == LOCK_FILE_NAME {
        return Err(crate::error::Error::InvalidOptions(format!(
            "queue name {name:?} is reserved"
        )));
    }
    let valid_chars = name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-' | b'.'));
    if name.is_empty() || name.len() > QUEUE_NAME_LEN_MAX || !valid_chars || name.starts_with('.') {
        return Err(crate::error::Error::InvalidOptions(format!(
            "queue name {name:?} must be 1 to {QUEUE_NAME_LEN_MAX} characters of A-Z a-z 0-9 _ - . \
             and not start with a dot"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_parse_back() {
        let small = segment_file_name(9);
        let large = segment_file_name(10);
        assert!(small < large);
        assert_eq!(parse_segment_file_name(&large), Some(10));
        assert_eq!(parse_segment_file_name("10.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000001x.seg"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn queue_names_are_checked() {
        for good in ["a", "billing", "Q_1", "x.y-z"] {
            assert!(validate_queue_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "lock",
            "fanout.log",
            "fanout.lock",
            &"x".repeat(129),
        ] {
            assert!(validate_queue_name(bad).is_err(), "{bad:?}");
        }
    }
}
