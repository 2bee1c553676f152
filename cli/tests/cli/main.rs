//! Black-box tests of the `spool` binary, one module per area. Queues are made by the library;
//! damage is done by hand to files the library wrote.

// Test code unwraps: a failure is a test failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod active_segment;
mod commands;
mod concurrent;
mod observe;
mod policies;
mod quarantine;
mod races;
mod random_damage;
mod records;
mod repair;
mod security;
mod settings;
mod shared;
mod spool_queues;
mod terminal;
mod verify;
