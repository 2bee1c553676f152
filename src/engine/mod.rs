//! The live queue: the writer, the reader, jobs, the head index and ack log files, recovery at
//! open, the compactor and the segment pool, the group commit, and the background threads.
//!
//! Built on [`format`](crate::format) and [`storage`](crate::storage) only; the tools never reach
//! in here. `docs/ARCHITECTURE.md` walks a push, a pop, a recv/ack and an open through these
//! files. The modules are grouped bottom-up: a module imports from the groups above it and from
//! its own group, never from a group below (`tests/architecture.rs` checks there is no cycle).

// Leaves: no other engine module.
pub(crate) mod clock;
pub(crate) mod counters;
#[cfg(feature = "tracing")]
pub(crate) mod events;
pub(crate) mod failpoint;
pub(crate) mod report;
pub(crate) mod sync;
#[cfg(feature = "metrics")]
pub(crate) mod telemetry;
pub(crate) mod threads;
pub(crate) mod writeback;
// The bound of a bounded queue.
pub(crate) mod limits;
// The shared environment and the live files.
pub(crate) mod acklog;
pub(crate) mod arrivals;
pub(crate) mod coordination;
pub(crate) mod dedup;
pub(crate) mod env;
pub(crate) mod head;
pub(crate) mod pool;
pub(crate) mod record;
pub(crate) mod segment;
pub(crate) mod writer;
// Opening a directory.
pub(crate) mod recovery;
// The writer side, the reader side, and what joins them.
pub(crate) mod compactor;
pub(crate) mod jobs;
pub(crate) mod log;
pub(crate) mod reader;
pub(crate) mod shared;
#[cfg(feature = "async")]
pub(crate) mod timer;
// What a user holds.
#[cfg(feature = "async")]
pub(crate) mod asynchronous;
pub(crate) mod delivery;
pub(crate) mod flusher;
pub(crate) mod queue;
