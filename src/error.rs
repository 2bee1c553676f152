//! The crate's error type. Every error says which file and, for damaged data, which byte offset.

use std::io;
use std::path::PathBuf;

/// Results of the crate's operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem call failed.
    #[error("{operation} {}: {source}", path.display())]
    Io {
        /// What the engine was doing, e.g. "write segment".
        operation: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another handle, in this process or another, has the queue open.
    #[error("queue directory {} is locked by another handle{}", dir.display(), holders(*pid, shared_by))]
    Locked {
        /// The queue directory.
        dir: PathBuf,
        /// The holder's process id, when the lock file names it (an exclusive handle).
        pid: Option<u32>,
        /// When shared handles hold it (see [`Options::exclusive`](crate::Options::exclusive)):
        /// the ids of their processes, each once, as the control file names them and their
        /// slot files' locks show alive. Advice for the message: a handle may open or close
        /// meanwhile.
        /// (Boxed: this variant is then no larger than the others, and every `Result` of the
        /// crate stays as small as it was.)
        shared_by: Box<[u32]>,
    },
    /// The handle was opened by another process, of which this one is a child forked after the
    /// open: a copy of a handle shares the parent's place in the queue but none of its
    /// threads, and using it would hand out what the parent hands out. Nothing was done; open
    /// the queue again in the child (see [`Options::exclusive`](crate::Options::exclusive) for
    /// several processes on one queue).
    #[error(
        "{}: this handle was opened by process {opened_by}, and this process is a child forked \
         from it: open the queue again in the child",
        dir.display()
    )]
    Forked {
        /// The queue directory.
        dir: PathBuf,
        /// The process that opened the handle.
        opened_by: u32,
    },
    /// Bytes on disk are damaged or inconsistent. Nothing is skipped: the queue stops at the
    /// damage until it is repaired (see `spool repair`).
    #[error("{}: corrupt at byte offset {offset}: {detail}", file.display())]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// The directory holds no queue (no `settings`, `head` or segment file), and the caller
    /// asked not to create one ([`Options::create_if_missing`](crate::Options::create_if_missing),
    /// and every `spool` command but `push`).
    #[error("{} is not a queue (it holds no settings, head or segment file); `spool push` or \
             `Queue::open` creates one", dir.display())]
    NotAQueue {
        /// The directory.
        dir: PathBuf,
    },
    /// The queue directory belongs to another user, and this process is not root: changing it
    /// would leave files its owner cannot use. Run as the owner (`sudo -u '#UID' spool ...`).
    #[error("{} belongs to user {owner}; changing it as another user would leave files the \
             owner cannot use: run as that user (e.g. `sudo -u '#{owner}' spool ...`)",
             dir.display())]
    NotOwner {
        /// The queue directory.
        dir: PathBuf,
        /// The owner's user id.
        owner: u32,
    },
    /// A file was written by a format version this build does not read.
    #[error("{}: format version {found} is not supported (this build reads version {supported})",
        file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version in the file.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
    /// The queue has used up its sequence numbers: the records would be numbered from
    /// `next_seq` on, and no record may carry `frame::SEQ_LIMIT` (2^63) or more. Nothing was
    /// written; the queue stays readable. (At a million pushes a second this takes 290,000
    /// years; in practice it means a head or segment written with a forged number.)
    #[error("sequence numbers exhausted: {count} record(s) from sequence {next_seq} would pass the largest sequence number, {max}")]
    SeqExhausted {
        /// The sequence number the next record would get.
        next_seq: u64,
        /// How many records the refused push had.
        count: u64,
        /// The largest sequence number a record may carry (`format::frame::SEQ_LIMIT` - 1).
        max: u64,
    },
    /// A payload is larger than `Options::max_record_size`.
    #[error("record of {len} bytes exceeds max_record_size of {max} bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A batch is larger than one segment can hold; batches are atomic only within a segment.
    #[error("batch of {len} bytes does not fit in a segment of {max} bytes; split it or raise segment_size")]
    BatchTooLarge {
        /// The encoded batch's length.
        len: u64,
        /// The room a segment has for records.
        max: u64,
    },
    /// The queue is at its bound ([`Options::max_records`](crate::Options::max_records),
    /// [`Options::max_bytes`](crate::Options::max_bytes)) and the push was refused
    /// ([`Overflow::Reject`](crate::Overflow::Reject)), timed out
    /// ([`Overflow::Block`](crate::Overflow::Block) with `push_timeout`), or could not make
    /// room ([`Overflow::DropOldest`](crate::Overflow::DropOldest) when every record is handed
    /// out or delayed, or the batch alone exceeds the bound). Nothing was written. `spool`
    /// exits with 6.
    #[error("queue is full: {records} record(s), {bytes} byte(s) not yet consumed (bounds: {}, {}); the push of {batch_records} record(s), {batch_bytes} byte(s) was refused",
        match max_records { Some(max) => format!("{max} records"), None => String::from("no record bound") },
        match max_bytes { Some(max) => format!("{max} bytes"), None => String::from("no byte bound") })]
    Full {
        /// Records not yet consumed when the push was refused.
        records: u64,
        /// Bytes of frames not yet consumed when the push was refused.
        bytes: u64,
        /// The record bound.
        max_records: Option<u64>,
        /// The byte bound.
        max_bytes: Option<u64>,
        /// Records in the refused push.
        batch_records: u64,
        /// Bytes of frames the refused push would have taken.
        batch_bytes: u64,
    },
    /// An option is out of range or inconsistent with another.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// An earlier write or sync failed, so what is on disk is no longer known; the queue refuses
    /// further changes until it is reopened (which recovers from what is on disk).
    #[error("queue refuses changes after an earlier I/O failure ({cause}); reopen it")]
    Poisoned {
        /// The first failure.
        cause: String,
    },
    /// The lease of a delivery ran out and the record may have been handed to another receiver,
    /// so the lease can no longer be extended.
    #[error("the lease on record {seq} has expired")]
    LeaseExpired {
        /// The record.
        seq: u64,
    },
    /// The queue of a delivery was closed (dropped) before the delivery was settled; the record
    /// is delivered again after the queue is reopened.
    #[error("the queue of record {seq} was closed before it was settled")]
    Closed {
        /// The record.
        seq: u64,
    },
    /// A typed payload could not be encoded (`seq` is `None`) or decoded.
    #[error("{}: {source}", match seq {
        Some(seq) => format!("could not decode record {seq}"),
        None => String::from("could not encode value"),
    })]
    Codec {
        /// The record's sequence number, when decoding.
        seq: Option<u64>,
        /// The codec's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(operation: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        detail: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            file: file.into(),
            offset,
            detail: detail.into(),
        }
    }
}

/// The holders an [`Error::Locked`] message names.
fn holders(pid: Option<u32>, shared_by: &[u32]) -> String {
    match (pid, shared_by) {
        (Some(pid), _) => format!(" (process {pid})"),
        (None, []) => String::new(),
        (None, [only]) => format!(" (shared by process {only})"),
        (None, several) => {
            let listed: Vec<String> = several.iter().map(u32::to_string).collect();
            format!(" (shared by processes {})", listed.join(", "))
        }
    }
}
