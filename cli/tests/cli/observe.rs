//! `spool stat --prometheus`, `spool stat --watch` and `spool top`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use crate::util::{arg, options, queue_with, spool};

/// The Prometheus output parsed by the reference parser (Python's `prometheus_client`), as
/// (name, queue label, value); `None` (with a message) when the parser is not installed.
fn parse_with_prometheus_client(text: &[u8]) -> Option<Vec<(String, String, f64)>> {
    let available = StdCommand::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !available {
        eprintln!(
            "SKIPPED: python3 with prometheus_client is not installed \
             (pip install prometheus_client); the Prometheus output was not parsed"
        );
        return None;
    }
    let script = "\
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.type == 'gauge', family.type
    for sample in family.samples:
        print(sample.name, sample.labels['queue'], repr(sample.value), sep='\\t')
";
    let mut child = StdCommand::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the Prometheus parser rejected the output: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let samples = String::from_utf8(output.stdout).unwrap();
    Some(
        samples
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                (
                    fields[0].to_string(),
                    fields[1].to_string(),
                    fields[2].parse().unwrap(),
                )
            })
            .collect(),
    )
}

#[test]
fn stat_prometheus_parses_with_a_real_parser_and_matches_the_library() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("orders");
    {
        let queue = diskspool::Queue::open(&dir, options()).unwrap();
        for seq in 0..40u64 {
            queue.push(format!("order {seq}").as_bytes()).unwrap();
        }
        queue
            .push_delayed(b"tomorrow", Duration::from_secs(86_400))
            .unwrap();
        queue.pop_batch(10).unwrap();
    }
    let output = spool(&["stat", "--prometheus", arg(&dir)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let stat = diskspool::tools::inspect::stat(&diskspool::storage::OsStorage, &dir).unwrap();
    let Some(samples) = parse_with_prometheus_client(&output.stdout) else {
        return;
    };
    let value = |name: &str| -> f64 {
        let found: Vec<_> = samples.iter().filter(|(n, _, _)| n == name).collect();
        assert_eq!(found.len(), 1, "{name} in {samples:?}");
        assert_eq!(found[0].1, "orders", "the queue label");
        found[0].2
    };
    assert_eq!(value("diskspool_messages"), 31.0);
    assert_eq!(value("diskspool_messages_ready"), 30.0);
    assert_eq!(value("diskspool_messages_delayed"), 1.0);
    assert_eq!(value("diskspool_bytes"), stat.live_bytes as f64);
    assert_eq!(value("diskspool_disk_bytes"), stat.disk_bytes as f64);
    assert_eq!(value("diskspool_segments"), stat.segments as f64);
    assert_eq!(value("diskspool_next_seq"), 41.0);
    let age = value("diskspool_oldest_ready_age_seconds");
    assert!((0.0..3600.0).contains(&age), "{age}");
    assert_eq!(samples.len(), 8);
}

#[test]
fn stat_prometheus_escapes_the_queue_label() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("say \"hi\"");
    diskspool::Queue::open(&dir, options()).unwrap();
    let output = spool(&["stat", "--prometheus", arg(&dir)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains(r#"{queue="say \"hi\""}"#), "{text}");
    if let Some(samples) = parse_with_prometheus_client(text.as_bytes()) {
        assert!(samples.iter().all(|(_, queue, _)| queue == "say \"hi\""));
    }
}

#[test]
fn stat_watch_prints_a_header_and_one_line_per_interval() {
    let (_temp, dir) = queue_with(30, 10);
    let output = spool(&["stat", "--watch", "0.01", "--count", "3", arg(&dir)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("time"), "{text}");
    for (index, line) in lines[1..].iter().enumerate() {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns[1..4],
            ["20", "20", "0"],
            "depth, ready, delayed: {line}"
        );
        // No rate before the second line; nothing pushed or popped after.
        let rates = match index {
            0 => ["-", "-"],
            _ => ["0.0", "0.0"],
        };
        assert_eq!(columns[4..6], rates, "{line}");
    }
}

#[test]
fn stat_watch_rejects_a_zero_interval_and_count_without_watch() {
    let (_temp, dir) = queue_with(3, 0);
    spool(&["stat", "--watch", "0", arg(&dir)]).assert().code(2);
    spool(&["stat", "--count", "2", arg(&dir)]).assert().code(2);
    spool(&["stat", "--json", "--prometheus", arg(&dir)])
        .assert()
        .code(2);
}

/// Ctrl-C (SIGINT) stops a watch cleanly: exit status 0, every line whole. The signal is sent
/// once the first line is out, so no timing is involved.
#[test]
fn stat_watch_stops_cleanly_on_sigint() {
    let (_temp, dir) = queue_with(5, 0);
    let mut child = StdCommand::new(assert_cmd::cargo::cargo_bin("spool"))
        .args(["stat", "--watch", "0.05", arg(&dir)])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    stdout.read_line(&mut header).unwrap();
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(first.ends_with('\n'), "{first:?}");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(rest.is_empty() || rest.ends_with('\n'), "{rest:?}");
}

#[test]
fn top_lists_every_queue_of_a_spool_deepest_first() {
    let temp = tempfile::tempdir().unwrap();
    let spool_dir = temp.path();
    {
        let spool_handle = diskspool::Spool::open(spool_dir, options()).unwrap();
        for (name, count) in [("emails", 3), ("orders", 12), ("audit", 7)] {
            let queue = spool_handle.queue(name).unwrap();
            for seq in 0..count {
                queue.push(format!("{name} {seq}").as_bytes()).unwrap();
            }
        }
    }
    // A stray directory that holds no queue is not listed.
    std::fs::create_dir(spool_dir.join("notes")).unwrap();
    let output = spool(&["top", arg(spool_dir)]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..3], ["QUEUE", "DEPTH", "READY"], "{text}");
    let order: Vec<(&str, &str)> = rows[1..].iter().map(|row| (row[0], row[1])).collect();
    assert_eq!(order, [("orders", "12"), ("audit", "7"), ("emails", "3")]);

    // A queue directory itself, and --watch with a trend column, a table per refresh.
    let orders = spool_dir.join("orders");
    let output = spool(&["top", "--watch", "0.01", "--count", "2", arg(&orders)])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let tables: Vec<&str> = text.split("\n\n").collect();
    assert_eq!(tables.len(), 2, "{text}");
    for (refresh, table) in tables.iter().enumerate() {
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("TREND"), "{table}");
        let trend = lines[1].split_whitespace().last().unwrap();
        assert_eq!(trend.chars().count(), refresh + 1, "one bar per sample");
    }

    // A directory that is neither a queue nor a spool: exit 2.
    spool(&["top", arg(&spool_dir.join("notes"))])
        .assert()
        .code(2);
}
