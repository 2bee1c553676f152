//! The queue directory is hostile ground: links, FIFOs and foreign folders where queue files
//! belong are refused; new queues are private whatever the umask; root does not leave files the
//! queue's owner cannot use, and another user does not change a queue that is not theirs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use predicates::prelude::*;

use crate::util::{arg, flip_byte, frames, queue_with, segments, spool};

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn entries(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    paths.sort();
    paths
}

#[test]
fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
    let (temp, dir) = queue_with(5, 0);
    let precious = temp.path().join("precious");
    std::fs::write(&precious, "precious").unwrap();
    std::fs::remove_file(dir.join("lock")).unwrap();
    std::os::unix::fs::symlink(&precious, dir.join("lock")).unwrap();
    for command in ["pop", "push", "compact", "repair"] {
        spool(&[command, arg(&dir)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains("lock"))
            .stderr(predicate::str::contains("symbolic link"));
        assert_eq!(std::fs::read(&precious).unwrap(), b"precious", "{command}");
    }
    let error = diskspool::Queue::open(&dir, diskspool::Options::default()).unwrap_err();
    assert!(error.to_string().contains("symbolic link"), "{error}");
    assert_eq!(std::fs::read(&precious).unwrap(), b"precious");
}

#[test]
fn a_symlink_where_a_segment_or_the_head_belongs_is_refused_naming_it() {
    let (temp, dir) = queue_with(5, 0);
    let outside = temp.path().join("outside");
    let segment = segments(&dir)[0].clone();
    std::fs::rename(&segment, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &segment).unwrap();
    for command in ["pop", "stat", "dump"] {
        spool(&[command, arg(&dir)])
            .assert()
            .code(5)
            .stderr(predicate::str::contains(
                segment.file_name().unwrap().to_str().unwrap(),
            ))
            .stderr(predicate::str::contains("symbolic link"));
    }
}

#[test]
fn a_fifo_where_the_head_belongs_is_refused_without_hanging() {
    let (_temp, dir) = queue_with(5, 0);
    std::fs::remove_file(dir.join("head")).unwrap();
    let made = Command::new("mkfifo")
        .arg(dir.join("head"))
        .status()
        .unwrap();
    assert!(made.success());
    for command in ["stat", "dump", "verify", "pop"] {
        spool(&[command, arg(&dir)])
            .timeout(Duration::from_secs(20))
            .assert()
            .code(5)
            .stderr(predicate::str::contains("FIFO"));
    }
}

#[test]
fn a_symlinked_quarantine_is_never_written_through() {
    let (temp, dir) = queue_with(100, 0);
    let files = segments(&dir);
    let (offset, _) = frames(&files[1])[3];
    flip_byte(&files[1], offset + 30);
    let elsewhere = temp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("quarantine")).unwrap();
    let before: Vec<_> = entries(&dir);
    spool(&["repair", arg(&dir)])
        .assert()
        .code(5)
        .stderr(predicate::str::contains("quarantine"))
        .stderr(predicate::str::contains("symbolic link"));
    assert!(entries(&elsewhere).is_empty(), "written through the link");
    assert_eq!(entries(&dir), before, "the queue was changed");
}

/// Runs `spool ARGS` through `sh` with the given umask.
fn spool_with_umask(umask: &str, args: &[&str]) -> std::process::Output {
    let spool = assert_cmd::cargo::cargo_bin("spool");
    let mut line = format!("umask {umask}; exec '{}'", spool.display());
    for arg in args {
        line.push_str(&format!(" '{arg}'"));
    }
    Command::new("sh").args(["-c", &line]).output().unwrap()
}

#[test]
fn new_queues_are_private_whatever_the_umask_unless_widened_on_purpose() {
    let temp = tempfile::tempdir().unwrap();
    for umask in ["000", "022", "077"] {
        let dir = temp.path().join(format!("private-{umask}"));
        let output = spool_with_umask(umask, &["push", arg(&dir), "secret token"]);
        assert!(output.status.success(), "{output:?}");
        assert_eq!(mode_of(&dir), 0o700, "umask {umask}");
        for file in entries(&dir) {
            // Folders (a shared queue's `procs/`) get the directory's bits, files its read and
            // write bits.
            let expected = if file.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode_of(&file), expected, "umask {umask}: {file:?}");
        }
    }
    let shared = temp.path().join("shared");
    let output = spool_with_umask("077", &["push", "--file-mode", "640", arg(&shared), "x"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(mode_of(&shared), 0o750);
    for file in entries(&shared) {
        let expected = if file.is_dir() { 0o750 } else { 0o640 };
        assert_eq!(mode_of(&file), expected, "{file:?}");
    }
    // An existing queue keeps its mode: new segments copy the directory's, not the option's.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    let lines: String = (0..400).map(|n| format!("{n:0>100}\n")).collect();
    spool(&[
        "push",
        "--segment-size",
        "4096",
        "--file-mode",
        "600",
        arg(&shared),
    ])
    .write_stdin(lines)
    .assert()
    .code(0);
    let new_segments: Vec<_> = segments(&shared);
    assert!(new_segments.len() > 3);
    for segment in &new_segments[1..] {
        assert_eq!(mode_of(segment), 0o660, "{segment:?}");
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `spool ARGS` run as user `nobody`, through util-linux `runuser`, from a copy of the binary
/// in `shared` (`nobody` may not be able to reach the build directory).
fn spool_as_nobody(shared: &Path, args: &[&str]) -> std::process::Output {
    let spool = shared.join("spool-binary");
    if !spool.exists() {
        std::fs::copy(assert_cmd::cargo::cargo_bin("spool"), &spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(spool)
        .args(args)
        .output()
        .unwrap()
}

/// A folder every user may enter, for queues of different owners.
fn shared_parent() -> tempfile::TempDir {
    let temp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    temp
}

#[test]
fn root_gives_what_it_creates_to_the_queues_owner() {
    if !is_root() {
        eprintln!("skipped: needs root to act as two users (runs in CI, which is root)");
        return;
    }
    let temp = shared_parent();
    let dir = temp.path().join("q");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let created = spool_as_nobody(
        temp.path(),
        &["push", "--segment-size", "4096", arg(&dir), "first"],
    );
    assert!(created.status.success(), "{created:?}");
    let nobody = std::fs::metadata(&dir).unwrap().uid();
    assert_ne!(nobody, 0);
    // Root pushes enough for new segments, and repairs (quarantine/ is created).
    let lines: String = (0..400).map(|n| format!("{n:0>100}\n")).collect();
    spool(&["push", arg(&dir)])
        .write_stdin(lines)
        .assert()
        .code(0);
    std::fs::write(dir.join("stray"), "x").unwrap();
    std::os::unix::fs::chown(dir.join("stray"), Some(nobody), None).unwrap();
    spool(&["repair", arg(&dir)]).assert().code(0);
    for path in entries(&dir)
        .into_iter()
        .chain(entries(&dir.join("quarantine")))
    {
        assert_eq!(std::fs::metadata(&path).unwrap().uid(), nobody, "{path:?}");
    }
    // The owner goes on using its queue.
    let popped = spool_as_nobody(temp.path(), &["pop", "--all", arg(&dir)]);
    assert!(popped.status.success(), "{popped:?}");
    assert_eq!(String::from_utf8_lossy(&popped.stdout).lines().count(), 401);
    let pushed = spool_as_nobody(temp.path(), &["push", arg(&dir), "after"]);
    assert!(pushed.status.success(), "{pushed:?}");
}

#[test]
fn another_user_may_read_but_not_change_a_queue_that_is_not_theirs() {
    if !is_root() {
        eprintln!("skipped: needs root to act as two users (runs in CI, which is root)");
        return;
    }
    let temp = shared_parent();
    let dir = temp.path().join("q");
    spool(&["push", "--file-mode", "644", arg(&dir), "root's record"])
        .assert()
        .code(0);
    let before: Vec<_> = entries(&dir);
    for command in ["push", "pop", "compact", "repair"] {
        let output = spool_as_nobody(temp.path(), &[command, arg(&dir)]);
        assert_eq!(output.status.code(), Some(5), "{command}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("belongs to user 0"), "{command}: {stderr}");
        assert!(stderr.contains("sudo -u"), "{command}: {stderr}");
        assert_eq!(entries(&dir), before, "{command} changed the queue");
    }
    let stat = spool_as_nobody(temp.path(), &["dump", arg(&dir)]);
    assert!(stat.status.success(), "{stat:?}");
    assert_eq!(stat.stdout, b"root's record\n");
}
