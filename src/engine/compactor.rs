//! The compactor: deletes segments whose records have all been consumed.
//!
//! Order of durable steps, so that a crash at any point loses nothing live:
//! 1. sync the head index, so the head that justifies the deletion survives any crash;
//! 2. delete each segment that lies wholly behind that durable head;
//! 3. sync the directory, so the deletions are durable.
//!
//! A crash between 2 and 3 can bring a deleted segment back; it is behind the head, so the next
//! compaction deletes it again.
//!
//! With a segment pool ([`Options::segment_pool`](crate::Options::segment_pool)), step 2
//! renames a consumed segment into the pool instead of deleting it, when the pool has room and
//! nothing maps the file any more; the pool gets the file only after step 3 (see `pool`).

use std::io;

use crate::engine::env::Env;
use crate::engine::log::Log;
use crate::engine::reader::Consumer;
use crate::error::{Error, Result};

/// What a compaction freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Bytes those files held.
    pub bytes_freed: u64,
    /// Consumed segment files kept for reuse instead of deleted.
    pub segments_recycled: usize,
}

/// Compacts, then deletes the files kept for reuse: what [`Queue::compact`](crate::Queue::compact)
/// does, so that a drained queue can give all its space back.
pub(crate) fn compact_and_release_pool(
    env: &Env,
    log: &Log,
    consumer: &Consumer,
) -> Result<CompactReport> {
    let mut report = compact(env, log, consumer)?;
    let _one_at_a_time = log.lock_compaction();
    let (count, bytes) = log.release_pool(&*env.storage)?;
    if count > 0 {
        env.storage
            .sync_dir(&env.dir)
            .map_err(|error| env.poison(Error::io("sync queue directory", &env.dir, error)))?;
    }
    report.segments_removed += count;
    report.bytes_freed += bytes;
    Ok(report)
}

pub(crate) fn compact(env: &Env, log: &Log, consumer: &Consumer) -> Result<CompactReport> {
    let _one_at_a_time = log.lock_compaction();
    env.check_poisoned()?;
    let durable_head = consumer.sync_head_now(env)?;
    let mut victims = log.consumed_segments(durable_head);
    // A shared queue's log ends at the committed tail: a segment at or past its segment is
    // one a push created and has not committed (it fails, and the segment it sealed is taken
    // up again), never behind the head. (A solo handle leaves that tail as it was.)
    if let Some(coordination) = env.coordination.as_ref().filter(|c| !c.is_solo()) {
        let (_, committed) = coordination.committed();
        victims.retain(|segment| segment.base_seq < committed.base);
    }
    let mut report = CompactReport::default();
    let pool_room = log.pool_room(env.options.segment_pool);
    let mut recycled = Vec::new();
    for segment in victims {
        // Delete only a file whose header proves it is the segment its name says: a damaged or
        // foreign file with a segment's name stays for `spool verify` and `spool repair`.
        if segment.ensure_checked(&*env.storage).is_err() {
            continue;
        }
        if recycled.len() < pool_room {
            log.forget_segment(segment.base_seq);
            if crate::engine::pool::reusable(&segment) {
                // If the rename fails, the segment is deleted below like any consumed one.
                if let Ok(path) = crate::engine::pool::put(&*env.storage, &env.dir, &segment) {
                    recycled.push(path);
                    continue;
                }
            }
        }
        let bytes = segment.disk_len().unwrap_or(0);
        match env.storage.remove_file(&segment.path) {
            Ok(()) => {}
            // Deleted before a crash whose directory sync never happened: gone either way.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("delete consumed segment", &segment.path, error)),
        }
        log.forget_segment(segment.base_seq);
        report.segments_removed += 1;
        report.bytes_freed += bytes;
    }
    if report.segments_removed > 0 || !recycled.is_empty() {
        env.storage
            .sync_dir(&env.dir)
            .map_err(|error| env.poison(Error::io("sync queue directory", &env.dir, error)))?;
    }
    // Only now, with the renames durable, may the files be reused.
    report.segments_recycled = recycled.len();
    log.add_to_pool(recycled);
    Ok(report)
}
