//! The queue's figures through the `metrics` facade (feature `metrics`): gauges and counters
//! reported from a snapshot ([`Telemetry::report`], by a background thread every
//! `Options::metrics_interval` and by `Queue::report_metrics`), and the fsync histogram, recorded
//! where the sync happens. Nothing here is on the push or pop path: the counters there are the
//! engine's own (`counters`), reported as absolute values. `docs/METRICS.md` lists every name.

use std::time::{Duration, SystemTime};

use metrics::{Counter, Gauge, Histogram};

use crate::stats::{DiscardReason, Stats, TakeoverKind};

/// The handles of one queue's metrics, each labelled `queue`.
pub(crate) struct Telemetry {
    ready: Gauge,
    in_flight: Gauge,
    delayed: Gauge,
    bytes: Gauge,
    disk_bytes: Gauge,
    segments: Gauge,
    oldest_ready_age: Gauge,
    pushed: Counter,
    delivered: Counter,
    acked: Counter,
    nacked: Counter,
    redelivered: Counter,
    dead_lettered: Counter,
    discarded: Vec<Counter>,
    expired: Counter,
    deduplicated: Counter,
    commit_syncs: Counter,
    commit_records: Counter,
    takeovers: Vec<Counter>,
    fsync: Histogram,
}

impl Telemetry {
    /// Registers the metrics of queue `name` with the recorder installed now (install it before
    /// opening the queue; with none, every handle is a no-op).
    pub(crate) fn register(name: &str) -> Self {
        describe();
        let queue = name.to_owned();
        macro_rules! gauge {
            ($metric:literal) => {
                metrics::gauge!($metric, "queue" => queue.clone())
            };
        }
        macro_rules! counter {
            ($metric:literal) => {
                metrics::counter!($metric, "queue" => queue.clone())
            };
        }
        let discarded = DiscardReason::ALL
            .iter()
            .map(|reason| {
                metrics::counter!(
                    "diskspool_discarded_total",
                    "queue" => queue.clone(),
                    "reason" => reason.as_str()
                )
            })
            .collect();
        let takeovers = TakeoverKind::ALL
            .iter()
            .map(|kind| {
                metrics::counter!(
                    "diskspool_takeovers_total",
                    "queue" => queue.clone(),
                    "kind" => kind.as_str()
                )
            })
            .collect();
        Telemetry {
            ready: gauge!("diskspool_messages_ready"),
            in_flight: gauge!("diskspool_messages_in_flight"),
            delayed: gauge!("diskspool_messages_delayed"),
            bytes: gauge!("diskspool_bytes"),
            disk_bytes: gauge!("diskspool_disk_bytes"),
            segments: gauge!("diskspool_segments"),
            oldest_ready_age: gauge!("diskspool_oldest_ready_age_seconds"),
            pushed: counter!("diskspool_pushed_total"),
            delivered: counter!("diskspool_delivered_total"),
            acked: counter!("diskspool_acked_total"),
            nacked: counter!("diskspool_nacked_total"),
            redelivered: counter!("diskspool_redelivered_total"),
            dead_lettered: counter!("diskspool_dead_lettered_total"),
            discarded,
            expired: counter!("diskspool_expired_total"),
            deduplicated: counter!("diskspool_deduplicated_total"),
            commit_syncs: counter!("diskspool_commit_syncs_total"),
            commit_records: counter!("diskspool_commit_records_total"),
            takeovers,
            fsync: metrics::histogram!("diskspool_fsync_seconds", "queue" => queue.clone()),
        }
    }

    /// Sets every gauge and counter from a snapshot of the open queue.
    pub(crate) fn report(&self, stats: &Stats, now: SystemTime) {
        self.ready.set(stats.ready as f64);
        self.in_flight.set(stats.in_flight().unwrap_or(0) as f64);
        self.delayed.set(stats.delayed as f64);
        self.bytes.set(stats.bytes() as f64);
        self.disk_bytes.set(stats.disk_bytes as f64);
        self.segments.set(stats.segments as f64);
        let age = stats.oldest_ready_age(now).unwrap_or(Duration::ZERO);
        self.oldest_ready_age.set(age.as_secs_f64());
        let Some(totals) = &stats.totals else {
            return;
        };
        self.pushed.absolute(totals.pushed);
        self.delivered.absolute(totals.delivered);
        self.acked.absolute(totals.acked);
        self.nacked.absolute(totals.nacked);
        self.redelivered.absolute(totals.redelivered);
        self.dead_lettered.absolute(totals.dead_lettered);
        for (counter, reason) in self.discarded.iter().zip(DiscardReason::ALL) {
            counter.absolute(totals.discarded(reason));
        }
        self.expired.absolute(totals.expired);
        self.deduplicated.absolute(totals.deduplicated);
        self.commit_syncs.absolute(totals.commit_syncs);
        self.commit_records.absolute(totals.commit_records);
        for (counter, kind) in self.takeovers.iter().zip(TakeoverKind::ALL) {
            counter.absolute(totals.takeovers(kind));
        }
    }

    /// Records how long one sync of the records took.
    pub(crate) fn fsync_took(&self, took: Duration) {
        self.fsync.record(took.as_secs_f64());
    }
}

/// The help text of each metric (Prometheus `# HELP`), as in `docs/METRICS.md`.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!("diskspool_messages_ready", "Records deliverable now");
    describe_gauge!(
        "diskspool_messages_in_flight",
        "Records leased by recv, not acknowledged"
    );
    describe_gauge!(
        "diskspool_messages_delayed",
        "Records waiting for a delay or a retry"
    );
    describe_gauge!(
        "diskspool_bytes",
        Unit::Bytes,
        "Bytes of records not consumed, frames included"
    );
    describe_gauge!(
        "diskspool_disk_bytes",
        Unit::Bytes,
        "Bytes of the queue's files"
    );
    describe_gauge!("diskspool_segments", "Segment files");
    describe_gauge!(
        "diskspool_oldest_ready_age_seconds",
        Unit::Seconds,
        "Age of the oldest ready record (0 when none is ready)"
    );
    describe_counter!("diskspool_pushed_total", "Records pushed since open");
    describe_counter!(
        "diskspool_delivered_total",
        "Records handed out by pop or recv since open"
    );
    describe_counter!(
        "diskspool_acked_total",
        "Deliveries acknowledged since open"
    );
    describe_counter!(
        "diskspool_nacked_total",
        "Deliveries released by their holder since open"
    );
    describe_counter!(
        "diskspool_redelivered_total",
        "Deliveries of a record delivered before"
    );
    describe_counter!(
        "diskspool_dead_lettered_total",
        "Records moved to the dead-letter queue"
    );
    describe_counter!(
        "diskspool_discarded_total",
        "Records discarded undelivered, by reason"
    );
    describe_counter!("diskspool_expired_total", "Records expired undelivered");
    describe_counter!(
        "diskspool_deduplicated_total",
        "Pushes recognised as duplicates"
    );
    describe_counter!(
        "diskspool_commit_syncs_total",
        "Syncs of the push group commit"
    );
    describe_counter!(
        "diskspool_commit_records_total",
        "Records made durable by those syncs"
    );
    describe_counter!(
        "diskspool_takeovers_total",
        "What this handle took over from handles of a shared queue that died or failed, by kind"
    );
    describe_histogram!(
        "diskspool_fsync_seconds",
        Unit::Seconds,
        "Duration of record syncs"
    );
}
