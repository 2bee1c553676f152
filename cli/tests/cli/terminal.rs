//! Payloads and file names reach a terminal escaped, and a pipe as they are.

use std::path::Path;
use std::process::Command;

use crate::util::{arg, spool};

/// A payload that would retitle the window, clear the screen and forge a hyperlink.
const HOSTILE: &[u8] =
    b"job \x1b]0;owned\x07\x1b[2J\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\\nsecond line";

/// Runs `spool ARGS` with standard output (and error) on a pseudo-terminal, through util-linux
/// `script`, and returns what the terminal received.
fn on_a_terminal(args: &[&str]) -> Vec<u8> {
    let spool = assert_cmd::cargo::cargo_bin("spool");
    let mut line = shell_quote(&spool.to_string_lossy());
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(arg));
    }
    let output = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .output()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    output.stdout
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn has_escape_byte(bytes: &[u8]) -> bool {
    bytes.iter().any(|&byte| byte == 0x1b || byte == 0x07)
}

fn queue_with_hostile_payload(dir: &Path) {
    let queue = diskspool::Queue::open(dir, diskspool::Options::default()).unwrap();
    queue.push(HOSTILE).unwrap();
}

#[test]
fn peek_dump_and_pop_escape_payloads_on_a_terminal_only() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    queue_with_hostile_payload(&dir);
    for command in ["peek", "dump"] {
        let shown = on_a_terminal(&[command, arg(&dir)]);
        assert!(!has_escape_byte(&shown), "{command}: {shown:?}");
        let text = String::from_utf8_lossy(&shown);
        assert!(
            text.contains(r"job \x1b]0;owned\x07\x1b[2J\x1b]8;;http://evil.example\x1b\\link"),
            "{command}: {text}"
        );
        assert!(text.contains(r"\nsecond line"), "{command}: {text}");
        // Into a pipe, the bytes are the payload's.
        let piped = spool(&[command, arg(&dir)]).output().unwrap().stdout;
        assert_eq!(piped, [HOSTILE, b"\n"].concat(), "{command}");
    }
    let shown = on_a_terminal(&["pop", arg(&dir)]);
    assert!(!has_escape_byte(&shown), "pop: {shown:?}");
    assert!(String::from_utf8_lossy(&shown).contains(r"\x1b]0;owned"));
}

#[test]
fn file_names_in_verify_inspect_and_repair_are_escaped_on_a_terminal() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("q");
    queue_with_hostile_payload(&dir);
    std::fs::write(dir.join("evil\x1b]0;owned\x07name"), b"x").unwrap();
    for command in ["verify", "inspect", "repair"] {
        let shown = on_a_terminal(&[command, arg(&dir)]);
        assert!(!has_escape_byte(&shown), "{command}: {shown:?}");
        if command != "inspect" {
            let text = String::from_utf8_lossy(&shown);
            assert!(
                text.contains(r"evil\x1b]0;owned\x07name"),
                "{command}: {text}"
            );
        }
    }
}
