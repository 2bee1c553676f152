//! What a repair (`spool repair`, or an open under
//! [`OnDamage::Quarantine`](crate::OnDamage::Quarantine)) set aside in `DIR/quarantine/`, and
//! the records in it that can be pushed back.
//!
//! [`list`] reads the folder without a lock. The files that hold records cut from the queue are
//! named in its manifest ([`format::quarantine`](crate::format::quarantine)); their readable
//! records ([`readable_records`]) are what `spool quarantine DIR --restore` pushes back, under
//! new sequence numbers, before it moves each file into `quarantine/restored/`
//! ([`mark_restored`]), so that a second restore finds nothing to push. The other files (a
//! damaged segment whose records were all consumed, the old head index, ack log or settings,
//! stray files) are listed but never restored.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use diskspool::{storage::OsStorage, tools::quarantine, Options, Queue};
//!
//! let dir = tempfile::tempdir()?;
//! drop(Queue::open(dir.path(), Options::default())?);
//! let listing = quarantine::list(&OsStorage, dir.path())?;
//! assert!(listing.files.is_empty(), "nothing was ever set aside");
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::frame::{self, DecodedFrame, FrameRules};
use crate::format::layout::{QUARANTINE_DIR_NAME, QUARANTINE_MANIFEST_NAME, RESTORED_DIR_NAME};
use crate::format::quarantine::{self as manifest, CutFile};
use crate::format::segment::{decode_header, find_later_frame, SEGMENT_HEADER_LEN};
use crate::storage::Storage;
use crate::tools::inspect::read_file;

/// One file in `quarantine/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedFile {
    /// Its name in `quarantine/`.
    pub name: String,
    /// Its length in bytes.
    pub bytes: u64,
    /// Where it came from and which records a repair cut with it, when it holds records cut
    /// from the queue (the manifest's line); `None` for files that are not restored.
    pub cut: Option<CutFile>,
    /// Readable records in it that were cut from the queue (0 when `cut` is `None`).
    pub readable: u64,
}

/// What `quarantine/` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineListing {
    /// The quarantine folder (`DIR/quarantine`), which may not exist.
    pub dir: PathBuf,
    /// Its files, by name, without the manifest and the `restored/` folder.
    pub files: Vec<QuarantinedFile>,
    /// Files whose records were pushed back, in `quarantine/restored/`.
    pub restored: Vec<String>,
}

impl QuarantineListing {
    /// Records that [`readable_records`] would give for every file not restored yet.
    pub fn restorable_records(&self) -> u64 {
        self.files.iter().map(|file| file.readable).sum()
    }
}

/// One readable record in a quarantined file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// The sequence number it had in the queue.
    pub seq: u64,
    /// Where its frame starts in the quarantined file.
    pub offset: u64,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Lists `DIR/quarantine/` (see the [module documentation](self)); an empty listing when there
/// is no such folder.
pub fn list(storage: &dyn Storage, dir: &Path) -> Result<QuarantineListing> {
    let quarantine = dir.join(QUARANTINE_DIR_NAME);
    let mut listing = QuarantineListing {
        dir: quarantine.clone(),
        ..QuarantineListing::default()
    };
    let mut names = match storage.list_dir(&quarantine) {
        Ok(names) => names,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(listing),
        Err(error) => return Err(Error::io("list quarantine", &quarantine, error)),
    };
    names.sort();
    let cut_files = read_manifest(storage, &quarantine)?;
    for name in names {
        if name == QUARANTINE_MANIFEST_NAME {
            continue;
        }
        if name == RESTORED_DIR_NAME {
            listing.restored = match storage.list_dir(&quarantine.join(RESTORED_DIR_NAME)) {
                Ok(mut restored) => {
                    restored.sort();
                    restored
                }
                Err(error) => {
                    return Err(Error::io(
                        "list restored quarantine",
                        quarantine.join(RESTORED_DIR_NAME),
                        error,
                    ))
                }
            };
            continue;
        }
        let path = quarantine.join(&name);
        let bytes = storage
            .open_read(&path)
            .and_then(|file| file.len())
            .unwrap_or(0);
        let cut = cut_files.iter().rfind(|cut| cut.saved_as == name).cloned();
        let mut file = QuarantinedFile {
            name,
            bytes,
            cut,
            readable: 0,
        };
        file.readable = readable_records(storage, dir, &file)?.len() as u64;
        listing.files.push(file);
    }
    Ok(listing)
}

/// The readable records of `file` that a repair cut from the queue, in file order: frames
/// that pass every check, with a sequence number among those the manifest says were cut. None
/// for a file the manifest does not list.
pub fn readable_records(
    storage: &dyn Storage,
    dir: &Path,
    file: &QuarantinedFile,
) -> Result<Vec<QuarantinedRecord>> {
    let Some(cut) = &file.cut else {
        return Ok(Vec::new());
    };
    let path = dir.join(QUARANTINE_DIR_NAME).join(&file.name);
    let Some(bytes) = read_file(storage, &path)? else {
        return Ok(Vec::new());
    };
    let start = if cut.is_segment_tail() {
        0
    } else {
        SEGMENT_HEADER_LEN
    };
    // A whole segment's frames are read by its header's format version. A cut tail has no
    // header: its frames are read by the current version's rules, else by version 2's (a
    // version 2 frame of 512 MiB or more does not validate by the current rules, nor does a
    // frame with a TTL by version 2's).
    let rules: Vec<FrameRules> = match decode_header(&bytes) {
        Ok(header) if start != 0 => vec![header.rules],
        _ => vec![FrameRules::CURRENT, FrameRules::V2],
    };
    let decode_at = |at: &[u8]| -> Option<DecodedFrame> {
        rules.iter().find_map(|&rules| {
            let header = frame::peek_header(at, rules)?;
            frame::decode(at, header.seq, rules).ok()
        })
    };
    let mut records: Vec<QuarantinedRecord> = Vec::new();
    let mut offset = start;
    loop {
        let decoded = bytes.get(offset..).and_then(decode_at);
        match decoded {
            Some(found) => {
                let seq = found.header.seq;
                let newer = records.last().is_none_or(|last| seq > last.seq);
                if cut.seqs.contains(&seq) && newer {
                    let payload = bytes
                        .get(offset + found.payload.start..offset + found.payload.end)
                        .unwrap_or(&[])
                        .to_vec();
                    records.push(QuarantinedRecord {
                        seq,
                        offset: offset as u64,
                        payload,
                    });
                }
                offset += found.frame_len;
            }
            // Damaged bytes: the next frame that validates, if any.
            None => match find_later_frame(&bytes, offset, cut.seqs.start, rules[0]) {
                Some((later, _)) => offset = later as usize,
                None => break,
            },
        }
    }
    Ok(records)
}

/// Moves `quarantine/<name>` into `quarantine/restored/`, durably, once its records were
/// pushed back. Returns its new path.
pub fn mark_restored(storage: &dyn Storage, dir: &Path, name: &str) -> Result<PathBuf> {
    let quarantine = dir.join(QUARANTINE_DIR_NAME);
    let restored = quarantine.join(RESTORED_DIR_NAME);
    storage
        .ensure_private_dir(&restored)
        .and_then(|()| storage.sync_dir(&quarantine))
        .map_err(|error| Error::io("create restored folder", &restored, error))?;
    let mut target = restored.join(name);
    let mut suffix = 0u32;
    while storage.open_read(&target).is_ok() {
        suffix += 1;
        target = restored.join(format!("{name}.{suffix}"));
    }
    let from = quarantine.join(name);
    storage
        .rename(&from, &target)
        .and_then(|()| storage.sync_dir(&restored))
        .and_then(|()| storage.sync_dir(&quarantine))
        .map_err(|error| Error::io("move restored file", &from, error))?;
    Ok(target)
}

fn read_manifest(storage: &dyn Storage, quarantine: &Path) -> Result<Vec<CutFile>> {
    let path = quarantine.join(QUARANTINE_MANIFEST_NAME);
    Ok(read_file(storage, &path)?
        .map(|bytes| manifest::decode(&String::from_utf8_lossy(&bytes)))
        .unwrap_or_default())
}
