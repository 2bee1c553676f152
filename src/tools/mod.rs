//! Tools for a queue directory from outside the engine: lock-free inspection, a full check, and
//! repair. The `spool` command prints what these return.
//!
//! They read the files through [`format`](crate::format) and [`storage`](crate::storage) alone,
//! never through the engine's state, so they work on a queue another process has open (inspect,
//! records, stat, verify) or on one nobody has open (repair, which takes the directory's lock).

pub mod inspect;
pub mod quarantine;
mod records;
pub mod repair;
pub mod verify;
mod view;
