//! The one consistent view every lock-free reader takes of a queue directory that a running
//! queue may change under it: [`stat`](super::stat), [`records`](super::records) and
//! [`Snapshot::take`](super::Snapshot::take) (`spool inspect`, `spool verify`) all read through
//! a [`View`].
//!
//! The rules, in this one place:
//! - The directory is listed first, then the head index is read. A running queue deletes (or
//!   moves into its pool) only segments its durable head has passed, and writes that head before
//!   deleting, so the listing holds every segment the head read after it still needs. The
//!   directory is listed again after the head read, because one listing can miss a segment
//!   created while it ran and still show a newer one, and because the head can say records
//!   were synced in a segment created after the first listing (see [`View::take`]).
//! - A listed segment that is gone when it is opened, or that no longer is the segment its name
//!   says (a recycled file), is read as consumed when the head index, read again, has passed all
//!   its records (the next listed segment starts at or before the head). Otherwise something
//!   other than compaction took it: the attempt is retaken from a fresh listing, and if the
//!   segment stays missing the fresh listing shows the gap, which the reader reports.
//! - A reader of records ([`View::hold`]) opens every segment it needs, from the one holding
//!   the head, before it reads any: an open file stays readable after compaction deletes it, so
//!   the records it serves are those of one moment, without gaps, however far the queue moves
//!   meanwhile. When a segment it needs to open turns out consumed, the head has moved: the
//!   reader starts from the new head instead.

use std::io;
use std::path::{Path, PathBuf};

use super::inspect::{list, read_head, HeadSnapshot, Listing};
use crate::error::{Error, Result};
use crate::format::layout::HEAD_FILE_NAME;
use crate::format::segment::{decode_header, SEGMENT_HEADER_LEN};
use crate::storage::{Storage, StorageFile};

/// How many fresh views a reader takes before it reports what kept it from a consistent one. A
/// fresh view is taken only when the directory changed in a way compaction does not explain, or
/// when the queue's head overtook the reader; each of those is progress of the running queue, so
/// no pause is needed between views.
const VIEW_ATTEMPTS_MAX: u32 = 20;

/// How many held files [`View::hold`] lets go when the process runs out of open files, so that
/// the files still to be opened one at a time (the ack log, the segments not held) can be.
const FILES_SPARE: usize = 16;

/// How many times a file that shrinks while it is read is read again.
const READ_ATTEMPTS_MAX: u32 = 5;

/// What an attempt to read through a [`View`] came to.
pub(crate) enum Step<T> {
    /// The reader is done.
    Done(T),
    /// The directory changed under the view: take a fresh one. The error is reported if no view
    /// ever holds still.
    Retake(Error),
}

/// Runs `read` on fresh views of `dir` until it is done; see the [module documentation](self).
pub(crate) fn with_view<'a, T>(
    storage: &'a dyn Storage,
    dir: &Path,
    mut read: impl FnMut(View<'a>) -> Result<Step<T>>,
) -> Result<T> {
    let mut last = None;
    for _ in 0..VIEW_ATTEMPTS_MAX {
        match read(View::take(storage, dir)?)? {
            Step::Done(value) => return Ok(value),
            Step::Retake(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| Error::corrupt(dir, 0, "the queue directory kept changing")))
}

/// A segment's bytes as a [`View`] read them.
pub(crate) enum Fetched {
    /// The whole file, as it was when it was read.
    Bytes(Vec<u8>),
    /// Gone (or recycled) while the head index, read again, has passed every record in it:
    /// compacted, its records consumed.
    Consumed,
    /// Gone while the head index has not passed its records: not compaction's doing. The
    /// reader takes a fresh view.
    Gone(Error),
}

/// What [`View::hold`] came to.
pub(crate) enum Held {
    /// Every segment from the one holding the start is open (or, past the limit of open files,
    /// will be opened when reached).
    Ready,
    /// A segment the reader needs is gone while the head has not passed it.
    Gone(Error),
}

/// A listing of a queue directory, the head index read after it, and the segment files opened
/// so far. See the [module documentation](self).
#[derive(Debug)]
pub(crate) struct View<'a> {
    storage: &'a dyn Storage,
    /// The queue directory.
    pub(crate) dir: PathBuf,
    /// The directory as listed when the view was taken.
    pub(crate) listing: Listing,
    /// The head index: read right after the listing, and read again whenever a listed segment
    /// turns out gone. Every segment read after it was read after this head.
    pub(crate) head: HeadSnapshot,
    /// The head index's `synced_seq` as read before the listing (see [`View::take`]).
    pub(crate) synced_floor: u64,
    /// The head index as first read, between the two listings: the listing holds every segment
    /// with records below its `synced_seq`.
    pub(crate) first_head: HeadSnapshot,
    /// Files opened by [`hold`](View::hold), by listing index.
    held: Vec<Option<Box<dyn StorageFile>>>,
}

impl<'a> View<'a> {
    /// Lists `dir`, then reads the head index, then lists `dir` again to complete the first
    /// listing.
    pub(crate) fn take(storage: &'a dyn Storage, dir: &Path) -> Result<View<'a>> {
        // Read before the listing: the records below it were synced before the listing began,
        // so the log as listed and read holds them (or the head has passed them).
        let synced_floor = read_head(storage, dir)?
            .state()
            .map_or(0, |state| state.synced_seq);
        let mut listing = list(storage, dir)?;
        let head = read_head(storage, dir)?;
        // Listing a directory is not atomic: of two segments created while it runs (a running
        // queue rolls), the older one can be missing while the newer one is listed, which would
        // look like lost records. And a roll between the listing and the head read leaves the
        // head saying that records beyond the listed segments were synced. A second listing,
        // after the head read, holds every segment that existed before it began (unless
        // compacted since: consumed), which includes those older than the newest listed (created
        // before the first listing ended) and those holding records below the head's
        // `synced_seq` (written before the head was): they complete the first listing. Newer
        // ones are left out, since the same could be true of them.
        let synced_seq = head.state().map_or(0, |state| state.synced_seq);
        let newest = listing.segments.last().map_or(0, |(base, _)| *base);
        let again = list(storage, dir)?;
        let known: std::collections::BTreeSet<u64> =
            listing.segments.iter().map(|(base, _)| *base).collect();
        let missed = again
            .segments
            .into_iter()
            .filter(|(base, _)| *base < newest.max(synced_seq) && !known.contains(base));
        listing.segments.extend(missed);
        listing.segments.sort_unstable();
        let held = std::iter::repeat_with(|| None)
            .take(listing.segments.len())
            .collect();
        Ok(View {
            storage,
            dir: dir.to_path_buf(),
            listing,
            first_head: head.clone(),
            head,
            synced_floor,
            held,
        })
    }

    /// The storage the view reads through.
    pub(crate) fn storage(&self) -> &'a dyn Storage {
        self.storage
    }

    /// The head sequence number in force: from the head index, or 0 for a directory without one
    /// and without segments (a queue not created yet). An error when segments exist but no head
    /// slot is valid: which records were consumed is unknown.
    pub(crate) fn head_seq(&self) -> Result<u64> {
        if let Some((offset, why)) = self.head.out_of_range() {
            return Err(Error::corrupt(self.dir.join(HEAD_FILE_NAME), offset, why));
        }
        match self.head.state() {
            Some(state) => Ok(state.head_seq),
            None if self.head.file_len.is_none() && self.listing.segments.is_empty() => Ok(0),
            None => Err(Error::corrupt(
                self.dir.join(HEAD_FILE_NAME),
                0,
                "the head index is missing or has no valid slot, so which records were consumed \
                 is unknown",
            )),
        }
    }

    /// The head index's `synced_seq`: every record below it was synced (0 when unknown).
    pub(crate) fn synced_seq(&self) -> u64 {
        self.head.state().map_or(0, |state| state.synced_seq)
    }

    /// The path of listed segment `index`.
    pub(crate) fn path(&self, index: usize) -> PathBuf {
        match self.listing.segments.get(index) {
            Some((_, name)) => self.dir.join(name),
            None => self.dir.clone(),
        }
    }

    /// The index of the listed segment that holds sequence `seq`: the last one starting at or
    /// before it (`None` when every listed segment starts after it).
    pub(crate) fn holding(&self, seq: u64) -> Option<usize> {
        self.listing
            .segments
            .iter()
            .rposition(|(base, _)| *base <= seq)
    }

    /// True when every record of listed segment `index` lies before `head_seq`: the next listed
    /// segment starts at or before it.
    fn behind(&self, index: usize, head_seq: u64) -> bool {
        self.listing
            .segments
            .get(index + 1)
            .is_some_and(|(next_base, _)| *next_base <= head_seq)
    }

    /// Opens every segment a reader from sequence `from` (the head when `None` or earlier) needs:
    /// from the one holding it to the last listed. When one of them turns out consumed, the head
    /// has moved past it: the start moves to the new head and opening goes on from there.
    pub(crate) fn hold(&mut self, from: Option<u64>) -> Result<Held> {
        'start: loop {
            let target = from.unwrap_or(0).max(self.head_seq()?);
            let first = self.holding(target).unwrap_or(0);
            // Files before the start are not needed any more.
            for file in self.held.iter_mut().take(first) {
                *file = None;
            }
            for index in first..self.listing.segments.len() {
                if self.held[index].is_some() {
                    continue;
                }
                let path = self.path(index);
                match self.storage.open_read(&path) {
                    Ok(file) => self.held[index] = Some(file),
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {
                        match self.vanished(index)? {
                            // The head moved past it (so the start moves at least one segment
                            // on): start again from the new head.
                            None => continue 'start,
                            Some(error) => return Ok(Held::Gone(error)),
                        }
                    }
                    // Past the limit of open files, the rest is opened when it is reached: a
                    // few of the files held are let go, to leave room for that.
                    Err(error) if is_out_of_files(&error) => {
                        for file in self.held[first..index].iter_mut().rev().take(FILES_SPARE) {
                            *file = None;
                        }
                        return Ok(Held::Ready);
                    }
                    Err(error) => return Err(Error::io("open segment", path, error)),
                }
            }
            return Ok(Held::Ready);
        }
    }

    /// The length of listed segment `index`, `None` if it is gone.
    pub(crate) fn len(&self, index: usize) -> Result<Option<u64>> {
        let path = self.path(index);
        let len = match self.held.get(index).and_then(Option::as_ref) {
            Some(file) => file.len(),
            None => match self.storage.open_read(&path) {
                Ok(file) => file.len(),
                Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(error) => Err(error),
            },
        };
        len.map(Some)
            .map_err(|error| Error::io("stat segment", path, error))
    }

    /// Reads listed segment `index` whole: through the file [`hold`](View::hold) opened, or
    /// opened now. A file gone, or recycled into another segment while it was read, is
    /// [`Consumed`](Fetched::Consumed) or [`Gone`](Fetched::Gone) by the head index read again.
    pub(crate) fn fetch(&mut self, index: usize) -> Result<Fetched> {
        let path = self.path(index);
        let Some(&(base, _)) = self.listing.segments.get(index) else {
            return Ok(Fetched::Gone(Error::corrupt(path, 0, "not in the listing")));
        };
        let file = match self.held.get_mut(index).and_then(Option::take) {
            Some(file) => file,
            None => match self.storage.open_read(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return self.vanished_fetch(index)
                }
                Err(error) => return Err(Error::io("open segment", path, error)),
            },
        };
        let bytes = read_whole(&*file, &path)?;
        // A file recycled by a running queue's segment pool gets a new header (and a new name)
        // before anything else: read after the bytes, a header that is not the one they hold,
        // or not this segment's, means the bytes may mix two lives of the file.
        let mut header = [0; SEGMENT_HEADER_LEN];
        let header_now = match file.read_exact_at(&mut header, 0) {
            Ok(()) => Some(header),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(error) => return Err(Error::io("read segment", path, error)),
        };
        let changed = header_now.is_some_and(|now| {
            bytes.get(..SEGMENT_HEADER_LEN) != Some(&now[..])
                || decode_header(&now).is_ok_and(|found| found.base_seq != base)
        });
        if changed {
            return self.vanished_fetch(index);
        }
        Ok(Fetched::Bytes(bytes))
    }

    fn vanished_fetch(&mut self, index: usize) -> Result<Fetched> {
        Ok(match self.vanished(index)? {
            None => Fetched::Consumed,
            Some(error) => Fetched::Gone(error),
        })
    }

    /// Classifies listed segment `index`, found gone: reads the head index again (and keeps
    /// it). `None` when the head has passed every record in the segment (it was compacted), else
    /// the error to report if it stays gone.
    fn vanished(&mut self, index: usize) -> Result<Option<Error>> {
        self.head = read_head(self.storage, &self.dir)?;
        let head_seq = self.head.state().map(|state| state.head_seq);
        if head_seq.is_some_and(|head_seq| self.behind(index, head_seq)) {
            return Ok(None);
        }
        let head = head_seq.map_or_else(|| String::from("unreadable"), |seq| seq.to_string());
        Ok(Some(Error::corrupt(
            self.path(index),
            0,
            format!(
                "segment deleted while being read, and the head index (at {head}) has not \
                 passed its records"
            ),
        )))
    }
}

/// True for the error of an `open` past the process's or the system's limit of open files.
fn is_out_of_files(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Reads a whole open file as it is now: the length is observed once and exactly that many bytes
/// are read; a file that shrinks in between is read again.
fn read_whole(file: &dyn StorageFile, path: &Path) -> Result<Vec<u8>> {
    let mut last_error = None;
    for _ in 0..READ_ATTEMPTS_MAX {
        let len = file
            .len()
            .map_err(|error| Error::io("stat segment", path, error))?;
        let bytes = super::inspect::read_at_len(file, path, len)?;
        match bytes {
            Ok(bytes) => return Ok(bytes),
            Err(error) => last_error = Some(error),
        }
    }
    let error = last_error.unwrap_or_else(|| io::Error::other("file kept changing"));
    Err(Error::io("read segment", path, error))
}
