//! The `metrics` and `tracing` features, checked with a capturing recorder and a capturing
//! subscriber (`cargo test --features metrics,tracing --test observability`; CI runs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use diskspool::{Options, Queue, SyncPolicy};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

const LONG: Duration = Duration::from_secs(3600);

/// Every metric as `name{label=value,...}` -> value (a histogram as its sample count).
fn scrape(recorder: &DebuggingRecorder) -> BTreeMap<String, f64> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let name = format!("{}{{{}}}", key.name(), labels.join(","));
            let value = match value {
                DebugValue::Counter(count) => count as f64,
                DebugValue::Gauge(gauge) => gauge.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            (name, value)
        })
        .collect()
}

#[test]
fn metrics_report_the_scripted_workload_under_the_queues_name() {
    let recorder = DebuggingRecorder::new();
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default()
        .sync(SyncPolicy::Always)
        .lease(LONG)
        .metrics_name("orders")
        // Reported on demand only: the test decides when.
        .metrics_interval(Duration::ZERO);
    let queue =
        metrics::with_local_recorder(&recorder, || Queue::open(dir.path(), options)).unwrap();
    for payload in [b"a", b"b", b"c"] {
        queue.push(payload).unwrap();
    }
    queue.push_delayed(b"later", LONG).unwrap();
    queue.pop().unwrap().unwrap();
    let b = queue.try_recv().unwrap().unwrap();
    b.nack().unwrap();
    let b = queue.try_recv().unwrap().unwrap();
    b.ack().unwrap();
    let _c = queue.try_recv().unwrap().unwrap();
    queue.report_metrics().unwrap();

    let metrics = scrape(&recorder);
    let get = |name: &str| -> f64 {
        *metrics
            .get(&format!("{name}{{queue=orders}}"))
            .unwrap_or_else(|| panic!("{name} missing from {metrics:#?}"))
    };
    assert_eq!(
        get("diskspool_messages_ready"),
        0.0,
        "c leased, the last delayed"
    );
    assert_eq!(get("diskspool_messages_in_flight"), 1.0);
    assert_eq!(get("diskspool_messages_delayed"), 1.0);
    assert!(get("diskspool_bytes") > 0.0);
    assert!(get("diskspool_disk_bytes") >= get("diskspool_bytes"));
    assert_eq!(get("diskspool_segments"), 1.0);
    assert_eq!(get("diskspool_oldest_ready_age_seconds"), 0.0, "none ready");
    assert_eq!(get("diskspool_pushed_total"), 4.0);
    assert_eq!(
        get("diskspool_delivered_total"),
        4.0,
        "a pop and three receives"
    );
    assert_eq!(get("diskspool_acked_total"), 1.0);
    assert_eq!(get("diskspool_nacked_total"), 1.0);
    assert_eq!(get("diskspool_redelivered_total"), 1.0);
    assert_eq!(get("diskspool_dead_lettered_total"), 0.0);
    assert_eq!(get("diskspool_expired_total"), 0.0);
    assert_eq!(get("diskspool_deduplicated_total"), 0.0);
    assert_eq!(
        get("diskspool_commit_syncs_total"),
        4.0,
        "one per push, alone"
    );
    assert_eq!(get("diskspool_commit_records_total"), 4.0);
    assert!(get("diskspool_fsync_seconds") >= 4.0, "one sample per sync");
    for reason in ["overflow", "purge"] {
        let key = format!("diskspool_discarded_total{{queue=orders,reason={reason}}}");
        assert_eq!(metrics.get(&key), Some(&0.0), "{key}");
    }
    // Nothing else, and nothing without the label.
    assert!(
        metrics.keys().all(|key| key.contains("queue=orders")),
        "{metrics:#?}"
    );
    assert_eq!(metrics.len(), 20, "{metrics:#?}");
}

#[test]
fn the_queue_label_defaults_to_the_directory_name_and_the_thread_reports() {
    let recorder = DebuggingRecorder::new();
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("emails");
    let options = Options::default()
        .sync(SyncPolicy::Never)
        .metrics_interval(Duration::from_millis(1));
    let queue = metrics::with_local_recorder(&recorder, || Queue::open(&dir, options)).unwrap();
    queue.push(b"x").unwrap();
    // The background thread reports on its own: wait for the push to show (bounded at a minute,
    // which only a thread that never reports reaches).
    let key = "diskspool_pushed_total{queue=emails}";
    let mut seen = None;
    for _ in 0..60_000 {
        seen = scrape(&recorder).get(key).copied();
        if seen == Some(1.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(seen, Some(1.0));
    queue.close().unwrap();
}
