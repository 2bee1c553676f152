//! ENOSPC on a real filesystem: a small tmpfs mounted by the test. Mounting needs root (or
//! CAP_SYS_ADMIN); where it is not allowed the test says so and returns, and
//! `faults::full_disk_fails_the_push_loses_nothing_and_recovers_when_space_is_freed` covers the
//! same behaviour on the simulated filesystem.

// Test code unwraps: a failure is a test failure, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use diskspool::{Error, Options, Queue, SyncPolicy};

/// Unmounts the tmpfs when the test ends, also when it fails.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Option<Mounted> {
    let status = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "diskspool-test",
        ])
        .arg(dir)
        .output();
    match status {
        Ok(output) if output.status.success() => Some(Mounted(dir.to_path_buf())),
        Ok(output) => {
            eprintln!(
                "skipped: cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&output.stderr).trim()
            );
            None
        }
        Err(error) => {
            eprintln!("skipped: cannot run mount ({error})");
            None
        }
    }
}

/// On a full tmpfs the push that does not fit fails with ENOSPC and a message that says so;
/// every record accepted before survives a reopen; after space is freed, the same queue accepts
/// pushes again.
#[test]
fn full_tmpfs_fails_the_push_loses_nothing_and_recovers_when_space_is_freed() {
    let mount_point = tempfile::tempdir().unwrap();
    let Some(_mounted) = mount_tmpfs(mount_point.path(), "512k") else {
        return;
    };
    let ballast = mount_point.path().join("ballast");
    std::fs::write(&ballast, vec![0u8; 128 << 10]).unwrap();
    let dir = mount_point.path().join("queue");
    let options = || {
        Options::default()
            .segment_size(64 << 10)
            .sync(SyncPolicy::Always)
    };
    let queue = Queue::open(&dir, options()).unwrap();
    let mut accepted = Vec::new();
    let error = loop {
        let payload = vec![(accepted.len() % 251) as u8; 1000];
        match queue.push(&payload) {
            Ok(seq) => accepted.push((seq, payload)),
            Err(error) => break error,
        }
        assert!(accepted.len() < 1000, "a 512 KiB tmpfs never filled");
    };
    match &error {
        Error::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{error}")
        }
        other => panic!("expected ENOSPC, got {other:?}"),
    }
    assert!(error.to_string().contains("No space left"), "{error}");
    assert!(accepted.len() > 100, "only {} pushes fit", accepted.len());
    assert_eq!(queue.len(), accepted.len() as u64);

    std::fs::remove_file(&ballast).unwrap();
    let seq = queue.push(b"after freeing space").unwrap();
    assert_eq!(seq, accepted.len() as u64);
    accepted.push((seq, b"after freeing space".to_vec()));
    drop(queue);

    let queue = Queue::open(&dir, options()).unwrap();
    let mut drained = Vec::new();
    while let Some(record) = queue.pop().unwrap() {
        drained.push((record.seq(), record.payload().to_vec()));
    }
    assert_eq!(drained.len(), accepted.len());
    assert!(drained == accepted, "records differ after the reopen");
    drop(queue);
}
