//! Early writeback, off the pushing thread.
//!
//! Under the policies that do not sync every push, a segment's bytes sit dirty in the page cache
//! until the sync that seals it, which would then write the whole segment (64 MiB by default)
//! while the pushing thread waits. The writer instead hands each appended mebibyte to one
//! process-wide thread that asks the kernel to start writing it out
//! ([`StorageFile::start_writeback`]); the seal's sync finds most of the segment written. The
//! thread, not the writer, pays the system call and the kernel's work of starting the I/O (a
//! few hundred nanoseconds per page). It makes nothing durable: only the syncs do.

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, OnceLock};

use crate::storage::StorageFile;

/// A range of a file to start writing out.
struct Request {
    file: Arc<dyn StorageFile>,
    offset: u64,
    len: u64,
}

/// The channel to the writeback thread, started on first use; `None` if it could not be started.
fn worker() -> Option<&'static Sender<Request>> {
    // A `Sender` is `Sync`: every writer sends through the one shared sender.
    static WORKER: OnceLock<Option<Sender<Request>>> = OnceLock::new();
    WORKER
        .get_or_init(|| {
            let (sender, receiver) = mpsc::channel::<Request>();
            std::thread::Builder::new()
                .name("diskspool-writeback".into())
                .spawn(move || {
                    for request in receiver {
                        request.file.start_writeback(request.offset, request.len);
                    }
                })
                .ok()
                .map(|_| sender)
        })
        .as_ref()
}

/// Asks for `[offset, offset + len)` of `file` to be written out soon. A hint: if the thread
/// cannot be started, the range is left to the kernel's own writeback.
pub(crate) fn start(file: &Arc<dyn StorageFile>, offset: u64, len: u64) {
    if let Some(worker) = worker() {
        let request = Request {
            file: file.clone(),
            offset,
            len,
        };
        // A send fails only if the thread is gone; the hint is then dropped.
        let _ = worker.send(request);
    }
}
