//! The compactor: deletes segments whose records have all been consumed.
//!
//! Order of durable steps, so that a crash at any point loses nothing live:
//! 1. sync the head index, so the head that justifies the deletion survives any crash;
//! 2. delete each segment that lies wholly behind that durable head;
//! 3. sync the directory, so the deletions are durable.
//!
//! A crash between 2 and 3 can bring a deleted segment back; it is behind the head, so the next
//! compaction deletes it again.

use std::io;
use std::sync::{Arc, PoisonError};

use crate::error::{Error, Result};
use crate::queue::Shared;
use crate::segment::Segment;
use crate::sync::lock;

/// What a compaction freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Bytes those files held.
    pub bytes_freed: u64,
}

pub(crate) fn compact(shared: &Shared) -> Result<CompactReport> {
    let _one_at_a_time = lock(&shared.compact_lock);
    shared.check_poisoned()?;
    let durable_head = {
        let mut reader = lock(&shared.reader);
        let generation = reader.head.sync().map_err(|error| shared.poison(error))?;
        shared.head_sync.mark_durable(generation);
        reader.head.state().head_seq
    };
    let victims: Vec<Arc<Segment>> = {
        let segments = shared
            .segments
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ordered: Vec<&Arc<Segment>> = segments.values().collect();
        ordered
            .windows(2)
            .filter(|pair| pair[1].base_seq <= durable_head)
            .map(|pair| pair[0].clone())
            .collect()
    };
    let mut report = CompactReport::default();
    for segment in victims {
        // Delete only a file whose header proves it is the segment its name says: a damaged or
        // foreign file with a segment's name stays for `spool verify` and `spool repair`.
        if segment.ensure_open(&*shared.storage).is_err() {
            continue;
        }
        let bytes = match segment.file() {
            Some(file) => file.len().unwrap_or(0),
            None => shared
                .storage
                .open(&segment.path)
                .and_then(|file| file.len())
                .unwrap_or(0),
        };
        match shared.storage.remove_file(&segment.path) {
            Ok(()) => {}
            // Deleted before a crash whose directory sync never happened: gone either way.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("delete consumed segment", &segment.path, error)),
        }
        shared
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&segment.base_seq);
        report.segments_removed += 1;
        report.bytes_freed += bytes;
    }
    if report.segments_removed > 0 {
        shared.storage.sync_dir(&shared.dir).map_err(|error| {
            shared.poison(Error::io("sync queue directory", &shared.dir, error))
        })?;
    }
    Ok(report)
}
