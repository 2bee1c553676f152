//! Exports a queue's metrics in the Prometheus text format (feature `metrics`).
//!
//! ```text
//! cargo run --example prometheus --features metrics
//! ```
//!
//! A service would serve `handle.render()` on its `/metrics` endpoint (or let
//! `metrics-exporter-prometheus` run its own HTTP listener); this example pushes, receives and
//! acknowledges a few jobs and prints one scrape. `docs/METRICS.md` shows the output and lists
//! every metric with its RabbitMQ and SQS equivalents.

use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};
use metrics_exporter_prometheus::PrometheusBuilder;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Install the recorder before opening the queue: the queue registers its metrics at open.
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05])?
        .install_recorder()?;

    let dir = tempfile::tempdir()?;
    let options = Options::default()
        .sync(SyncPolicy::Always)
        .metrics_name("orders")
        .metrics_interval(Duration::from_secs(5));
    let queue = Queue::open(dir.path(), options)?;
    for order in 0..10 {
        queue.push(format!("order {order}").as_bytes())?;
    }
    queue.push_delayed(b"reminder", Duration::from_secs(3600))?;
    for _ in 0..3 {
        if let Some(job) = queue.try_recv()? {
            job.ack()?;
        }
    }
    let _held = queue.try_recv()?;
    if let Some(job) = queue.try_recv()? {
        job.nack()?;
    }
    // The background thread reports every `metrics_interval`; report now for this scrape.
    queue.report_metrics()?;
    print!("{}", handle.render());
    Ok(())
}
