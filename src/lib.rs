//! diskspool: an embeddable, durable, disk-backed FIFO queue with a write-ahead log.
//!
//! A [`Queue`] lives in one directory. Pushed records are appended to segment files (the log),
//! each framed with its length, sequence number and a CRC-32; a persisted head index records
//! what has been consumed; consumed segments are deleted by the compactor. A `pop` removes the
//! record: it is a queue, not a log with cursors.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diskspool::{Options, Queue, SyncPolicy};
//!
//! let dir = tempfile::tempdir()?;
//! let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Always))?;
//! let seq = queue.push(b"resize image 42")?;
//! let record = queue.pop()?.expect("one record");
//! assert_eq!(record.seq(), seq);
//! assert_eq!(record.payload(), b"resize image 42");
//! assert!(queue.is_empty());
//! # Ok(()) }
//! ```
//!
//! - [`Options`] and [`SyncPolicy`] choose segment size and durability; `docs/DURABILITY.md`
//!   says what survives a process kill and a power loss under each policy.
//! - [`TypedQueue`] stores serde values through a [`Codec`] (bincode by default).
//! - Damaged bytes surface as [`Error::Corrupt`] naming the file and byte offset; the queue
//!   never hands out a damaged record and never skips one silently.
//! - [`tools::inspect`], [`tools::verify`] and [`tools::repair`] read, check and mend a queue directory from outside
//!   the engine; the `spool` tool prints what they return (`docs/CLI.md`).
//! - `docs/FORMAT.md` describes every byte on disk.

#![deny(unsafe_op_in_unsafe_fn)]

mod engine;
mod error;
pub mod format;
mod open;
mod options;
mod spool;
mod stats;
pub mod storage;
#[cfg(feature = "testkit")]
#[doc(hidden)]
pub mod testkit;
pub mod tools;
mod typed;

pub use engine::compactor::CompactReport;
pub use engine::delivery::Delivery;
pub use engine::jobs::IN_FLIGHT_MAX;
pub use engine::queue::Queue;
pub use engine::record::Record;
pub use engine::report::{RecoveryReport, RepairStep, Truncation};
pub use error::{Error, Result};
pub use format::dead_letter::{DeadLetter, DeadLetterReason};
pub use format::layout::{validate_queue_name, QUEUE_NAME_LEN_MAX};
#[cfg(feature = "metrics")]
pub use options::METRICS_INTERVAL_DEFAULT;
pub use options::{
    OnDamage, Options, Overflow, Push, SyncPolicy, DEDUP_ID_LEN_MAX, DEDUP_WINDOW_DEFAULT,
    FILE_MODE_DEFAULT, LEASE_DEFAULT, LEASE_MAX, MAX_RECORD_SIZE_DEFAULT, SEGMENT_SIZE_DEFAULT,
    SEGMENT_SIZE_MAX, SEGMENT_SIZE_MIN,
};
pub use spool::Spool;
pub use stats::{DiscardReason, Stats, TakeoverKind, Totals};
#[cfg(any(test, feature = "sim"))]
pub use storage::sim::SimStorage;
pub use typed::{Bincode, BoxError, Codec, TypedDelivery, TypedQueue, TypedRecvError};

/// The README's examples, compiled as doc tests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
