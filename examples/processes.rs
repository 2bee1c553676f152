//! Several processes on one job queue: two producer processes (a web app's workers, say) push
//! jobs, and worker processes receive and acknowledge them. One worker is killed with SIGKILL
//! in the middle of its work and a new one takes its place: the jobs it had received and not
//! acknowledged are delivered again, and no acknowledged job runs twice.
//!
//! Run it with `cargo run --release --example processes`. The program starts copies of itself
//! as the producer and worker processes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};

const PRODUCERS: u64 = 2;
const JOBS_PER_PRODUCER: u64 = 2_000;
/// Acknowledged jobs the first worker reports before it is killed.
const ACKED_BEFORE_THE_KILL: usize = 300;

fn options() -> Options {
    Options::default()
        .exclusive(false)
        .sync(SyncPolicy::Always)
        .lease(Duration::from_secs(30))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("producer") => produce(Path::new(&args[2]), args[3].parse()?),
        Some("worker") => work(Path::new(&args[2])),
        _ => run(),
    }
}

/// Pushes this producer's jobs, `"<producer>:<job>"`.
fn produce(dir: &Path, producer: u64) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::open(dir, options())?;
    for job in 0..JOBS_PER_PRODUCER {
        queue.push(format!("{producer}:{job}").as_bytes())?;
    }
    Ok(())
}

/// Receives jobs until the queue stays empty for a while; prints each job it acknowledged.
fn work(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::open(dir, options())?;
    while let Some(job) = queue.recv_timeout(Duration::from_secs(2))? {
        // The work itself would go here.
        let done = String::from_utf8_lossy(job.payload()).into_owned();
        job.ack()?;
        println!("{done}");
    }
    Ok(())
}

fn spawn(args: &[&str]) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
}

/// Counts the acknowledged jobs a worker prints into `acked`, `limit` of them at most.
fn collect(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    acked: &mut BTreeMap<String, u32>,
    limit: usize,
) -> usize {
    let mut count = 0;
    while count < limit {
        let Some(Ok(line)) = lines.next() else { break };
        *acked.entry(line).or_default() += 1;
        count += 1;
    }
    count
}

fn lines_of(child: &mut Child) -> Result<std::io::Lines<BufReader<ChildStdout>>, &'static str> {
    Ok(BufReader::new(child.stdout.take().ok_or("no stdout")?).lines())
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let root = tempfile::tempdir()?;
    let dir = root.path().join("jobs");
    let dir_arg = dir.to_str().ok_or("a temporary path that is not UTF-8")?;
    // The queue is created once here, shared: each process then opens it for itself.
    drop(Queue::open(&dir, options())?);

    let producers: Vec<Child> = (0..PRODUCERS)
        .map(|producer| spawn(&["producer", dir_arg, &producer.to_string()]))
        .collect::<Result<_, _>>()?;
    let mut doomed = spawn(&["worker", dir_arg])?;
    let mut steady = spawn(&["worker", dir_arg])?;
    let mut acked = BTreeMap::new();

    // The first worker reports some jobs, then dies in the middle of its work.
    let mut doomed_lines = lines_of(&mut doomed)?;
    collect(&mut doomed_lines, &mut acked, ACKED_BEFORE_THE_KILL);
    doomed.kill()?;
    doomed.wait()?;
    // What it printed before it died, still in the pipe.
    let by_the_doomed = ACKED_BEFORE_THE_KILL + collect(&mut doomed_lines, &mut acked, usize::MAX);
    println!(
        "killed worker {} (SIGKILL) after {by_the_doomed} jobs",
        doomed.id()
    );
    let mut replacement = spawn(&["worker", dir_arg])?;

    for mut producer in producers {
        if !producer.wait()?.success() {
            return Err("a producer failed".into());
        }
    }
    for worker in [&mut steady, &mut replacement] {
        collect(&mut lines_of(worker)?, &mut acked, usize::MAX);
        if !worker.wait()?.success() {
            return Err("a worker failed".into());
        }
    }

    let jobs = PRODUCERS * JOBS_PER_PRODUCER;
    let twice = acked.values().filter(|&&count| count > 1).count();
    let queue = Queue::open(&dir, options())?;
    println!(
        "{jobs} jobs pushed by {PRODUCERS} processes, {} left in the queue; {} reported \
         acknowledged, {twice} of them twice",
        queue.len(),
        acked.len()
    );
    // The killed worker may have died between an ack and its line: one job unreported at most.
    if !queue.is_empty() || twice != 0 || (acked.len() as u64) + 1 < jobs {
        return Err("a job was lost or ran twice".into());
    }
    Ok(())
}
