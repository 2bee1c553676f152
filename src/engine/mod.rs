//! The live queue: the writer, the reader, jobs, the head index and ack log files, recovery at
//! open, the compactor and the segment pool, the group commit, and the background threads.
//!
//! Built on [`format`](crate::format) and [`storage`](crate::storage) only; the tools never reach
//! in here. `docs/ARCHITECTURE.md` walks a push, a pop, a recv/ack and an open through these
//! files.

pub(crate) mod acklog;
#[cfg(feature = "async")]
pub(crate) mod asynchronous;
pub(crate) mod compactor;
pub(crate) mod head;
pub(crate) mod jobs;
pub(crate) mod pool;
pub(crate) mod queue;
pub(crate) mod reader;
pub(crate) mod recovery;
pub(crate) mod report;
pub(crate) mod segment;
pub(crate) mod sync;
pub(crate) mod writeback;
pub(crate) mod writer;
