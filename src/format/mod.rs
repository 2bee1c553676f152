//! The on-disk format: pure codecs over bytes, no I/O.
//!
//! Everything a queue directory holds is encoded and decoded here, once, and used alike by the
//! engine and by the tools: the record frame, the segment header and the walk over a segment's
//! frames, the head index slots, the ack log entries and the job history they rebuild, the
//! settings file, and the names of every file. So are the rules every reader of the log
//! applies: where a record lies in a segment ([`segment::locate_seq`]), which stop of a walk is
//! damage ([`segment::classify_stop`]), whether the log starts at or before the head
//! ([`segment::check_oldest_base`]) and whether the next segment follows on
//! ([`acklog::check_next_base`]). `docs/FORMAT.md` describes the same bytes in
//! prose. Nothing in this module touches a file: callers read bytes through
//! [`Storage`](crate::storage::Storage) and hand them here.

pub mod acklog;
pub mod control;
pub mod dead_letter;
pub mod dedup;
pub mod fanout;
pub mod frame;
pub mod head;
pub mod layout;
pub mod quarantine;
pub mod segment;
pub mod settings;
