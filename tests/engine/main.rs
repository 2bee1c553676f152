//! Integration tests of the engine, one module per behaviour.

// Test code unwraps: a failure is a test failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod security;
mod segment_pool;
mod util;
mod write_paths;

mod asynchronous;
mod batches;
mod compaction;
mod corruption;
mod fanout;
mod fifo;
mod jobs;
mod limits;
mod locking;
mod lost_records;
mod model;
mod multiprocess;
mod observe;
mod open_files;
mod persistence;
mod policies;
mod process_kill;
mod quarantine;
mod settings;
mod shared;
mod torn_tail;
mod ttl;
mod typed;
