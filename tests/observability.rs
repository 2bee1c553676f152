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
    for kind in ["tail", "consumer_turn", "lease"] {
        let key = format!("diskspool_takeovers_total{{queue=orders,kind={kind}}}");
        assert_eq!(
            metrics.get(&key),
            Some(&0.0),
            "{key}: one handle, nothing to take over"
        );
    }
    for reason in ["overflow", "purge"] {
        let key = format!("diskspool_discarded_total{{queue=orders,reason={reason}}}");
        assert_eq!(metrics.get(&key), Some(&0.0), "{key}");
    }
    // Nothing else, and nothing without the label.
    assert!(
        metrics.keys().all(|key| key.contains("queue=orders")),
        "{metrics:#?}"
    );
    assert_eq!(metrics.len(), 23, "{metrics:#?}");
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

mod events {
    use std::sync::{Arc, Mutex};

    use diskspool::format::frame;
    use diskspool::storage::sim::{Fault, FaultKind, SimOp};
    use diskspool::{Error, Options, Queue, SimStorage, SyncPolicy, TakeoverKind};
    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::Layer;

    /// One captured event: its level and every field (the message as `message`).
    #[derive(Debug, Clone)]
    struct Captured {
        level: Level,
        fields: Vec<(String, String)>,
    }

    impl Captured {
        fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        }
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Captured>>>);

    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
    }

    impl<S: Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields(Vec::new());
            event.record(&mut fields);
            assert_eq!(event.metadata().target(), "diskspool");
            self.0.lock().unwrap().push(Captured {
                level: *event.metadata().level(),
                fields: fields.0,
            });
        }
    }

    /// Runs `work` with a capturing subscriber as this thread's default; returns the events.
    fn capture(work: impl FnOnce()) -> Vec<Captured> {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, work);
        let events = capture.0.lock().unwrap().clone();
        events
    }

    fn only_segment(dir: &std::path::Path) -> std::path::PathBuf {
        let mut segments: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
            .collect();
        assert_eq!(segments.len(), 1);
        segments.pop().unwrap()
    }

    #[test]
    fn a_cut_tail_is_a_warning_with_file_offset_and_sequence_range() {
        let dir = tempfile::tempdir().unwrap();
        let options = || {
            Options::default()
                .sync(SyncPolicy::Never)
                .metrics_name("jobs")
        };
        let queue = Queue::open(dir.path(), options()).unwrap();
        for payload in [b"a", b"b", b"c"] {
            queue.push(payload).unwrap();
        }
        queue.close().unwrap();
        // A batch of two records (3 and 4) whose last frame never reached the disk.
        let segment = only_segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        let end = bytes.len() as u64;
        frame::encode(&mut bytes, 3, 1, b"torn d", true, 0);
        frame::encode(&mut bytes, 4, 1, b"torn e", true, 0);
        std::fs::write(&segment, &bytes).unwrap();

        let events = capture(|| {
            let queue = Queue::open(dir.path(), options()).unwrap();
            assert_eq!(queue.len(), 3);
        });
        let cut: Vec<_> = events
            .iter()
            .filter(|event| event.field("message") == Some("recovery cut a torn tail"))
            .collect();
        assert_eq!(cut.len(), 1, "{events:#?}");
        let cut = cut[0];
        assert_eq!(cut.level, Level::WARN);
        assert_eq!(cut.field("queue"), Some("jobs"));
        assert_eq!(
            cut.field("file"),
            Some(segment.display().to_string().as_str())
        );
        assert_eq!(cut.field("offset"), Some(end.to_string().as_str()));
        assert_eq!(cut.field("first_lost_seq"), Some("3"));
        assert_eq!(cut.field("last_lost_seq"), Some("4"));
        // A clean open says nothing.
        let events = capture(|| drop(Queue::open(dir.path(), options()).unwrap()));
        assert!(events.is_empty(), "{events:#?}");
    }

    #[test]
    fn refused_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let options = || Options::default().sync(SyncPolicy::Always);
        let queue = Queue::open(dir.path(), options()).unwrap();
        for payload in [b"first", b"again", b"third"] {
            queue.push(payload).unwrap();
        }
        queue.close().unwrap();
        // Damage the first record's payload: valid, synced records follow it.
        let segment = only_segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = diskspool::format::segment::SEGMENT_HEADER_LEN + frame::FRAME_HEADER_LEN;
        bytes[at] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();

        let events = capture(|| {
            let opened = Queue::open(dir.path(), options());
            assert!(matches!(opened, Err(Error::Corrupt { .. })), "{opened:?}");
        });
        assert_eq!(events.len(), 1, "{events:#?}");
        assert_eq!(events[0].level, Level::ERROR);
        assert_eq!(
            events[0].field("message"),
            Some("open refused a damaged queue")
        );
        let error = events[0].field("error").unwrap();
        assert!(error.contains(&segment.display().to_string()), "{error}");
    }

    /// `OnDamage::Quarantine`: every repair step is an error event naming the file and offset.
    #[test]
    fn damage_set_aside_at_open_is_an_error_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let options = || {
            Options::default()
                .sync(SyncPolicy::Always)
                .metrics_name("jobs")
                .on_damage(diskspool::OnDamage::Quarantine)
        };
        let queue = Queue::open(dir.path(), options()).unwrap();
        for payload in [b"first", b"again", b"third"] {
            queue.push(payload).unwrap();
        }
        queue.close().unwrap();
        let segment = only_segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        let frame_at = diskspool::format::segment::SEGMENT_HEADER_LEN;
        bytes[frame_at + frame::FRAME_HEADER_LEN] ^= 0xff;
        std::fs::write(&segment, &bytes).unwrap();

        let events = capture(|| {
            let queue = Queue::open(dir.path(), options()).unwrap();
            assert!(queue.recovery_report().repaired());
        });
        let steps: Vec<_> = events
            .iter()
            .filter(|event| event.field("message") == Some("open set damaged data aside"))
            .collect();
        assert!(!steps.is_empty(), "{events:#?}");
        assert!(steps.iter().all(|step| step.level == Level::ERROR));
        assert_eq!(steps[0].field("queue"), Some("jobs"));
        assert_eq!(
            steps[0].field("file"),
            Some(segment.display().to_string().as_str())
        );
        assert_eq!(steps[0].field("first_seq"), Some("0"));
        assert_eq!(steps[0].field("records_saved"), Some("2"));
        // The second open finds nothing to do, and says nothing.
        let events = capture(|| drop(Queue::open(dir.path(), options()).unwrap()));
        assert!(events.is_empty(), "{events:#?}");
    }

    #[test]
    fn dead_lettering_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path(), Options::default().sync(SyncPolicy::Never)).unwrap();
        queue.push(b"poison pill").unwrap();
        let events = capture(|| {
            let delivery = queue.try_recv().unwrap().unwrap();
            delivery.dead_letter().unwrap();
        });
        let moved: Vec<_> = events
            .iter()
            .filter(|event| event.field("message") == Some("record moved to the dead-letter queue"))
            .collect();
        assert_eq!(moved.len(), 1, "{events:#?}");
        assert_eq!(moved[0].level, Level::WARN);
        assert_eq!(moved[0].field("seq"), Some("0"));
        assert_eq!(moved[0].field("deliveries"), Some("1"));
    }

    #[test]
    fn an_io_error_that_poisons_the_queue_is_an_error_once() {
        let sim = SimStorage::new(7);
        let options = Options::default()
            .sync(SyncPolicy::Always)
            .storage(Arc::new(sim.clone()))
            .metrics_name("payments");
        let queue = Queue::open("/q", options).unwrap();
        queue.push(b"fine").unwrap();
        sim.inject(Fault {
            op: Some(SimOp::SyncData),
            skip: 0,
            kind: FaultKind::Io,
            sticky: true,
        });
        let events = capture(|| {
            assert!(queue.push(b"lost").is_err());
            assert!(matches!(
                queue.push(b"refused"),
                Err(Error::Poisoned { .. })
            ));
        });
        let poisoned: Vec<_> = events
            .iter()
            .filter(|event| event.level == Level::ERROR)
            .collect();
        assert_eq!(poisoned.len(), 1, "{events:#?}");
        assert_eq!(poisoned[0].field("queue"), Some("payments"));
        assert!(poisoned[0].field("error").unwrap().contains("sync"));
    }

    /// The one event of `events` that says `message`, checked to be at `level`.
    fn the_one<'a>(events: &'a [Captured], message: &str, level: Level) -> &'a Captured {
        let said: Vec<&Captured> = events
            .iter()
            .filter(|event| event.field("message") == Some(message))
            .collect();
        assert_eq!(said.len(), 1, "{message}: {events:#?}");
        assert_eq!(said[0].level, level, "{message}");
        said[0]
    }

    /// Runs `work` on a thread of its own in simulated process `process`, killed at its first
    /// call through the storage; returns once it is dead (the thread stays stopped for good).
    fn killed_in(sim: &SimStorage, process: u32, work: impl FnOnce() + Send + 'static) {
        sim.kill_at(process, 0);
        let stopped_for_good = std::thread::spawn(work);
        while sim.kills(process) == 0 {
            assert!(!stopped_for_good.is_finished(), "no call to kill it at");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// What a handle of a shared queue takes over from handles that died or failed is logged:
    /// the tail a producer left, the consumer turn of a process that died in it, the leases of
    /// handles that are gone.
    #[test]
    fn a_shared_queue_logs_what_it_takes_over_from_dead_or_failed_handles() {
        let sim = SimStorage::new(9);
        let on = |process: u32| {
            Options::default()
                .exclusive(false)
                .sync(SyncPolicy::Never)
                .storage(Arc::new(sim.process(process)))
                .metrics_name("jobs")
        };
        let survivor = Queue::open("/q", on(1)).unwrap();

        // A producer fails in a push: it cuts what it left at once (its own reader and
        // compactor must not take a segment it created for the log's), and says so.
        let failing = Queue::open("/q", on(2)).unwrap();
        survivor.push(b"kept").unwrap();
        sim.inject(Fault {
            op: Some(SimOp::Write),
            skip: 0,
            kind: FaultKind::ShortWrite,
            sticky: false,
        });
        let message = "repaired the tail a producer left when it died or failed in a push";
        let events = capture(|| assert!(failing.push(b"never returned").is_err()));
        let repaired = the_one(&events, message, Level::WARN).clone();
        assert_eq!(repaired.field("queue"), Some("jobs"));
        assert_eq!(repaired.field("next_seq"), Some("1"));
        assert_eq!(repaired.field("segments_removed"), Some("0"));
        // The failing write cut its own partial frame back before the repair.
        assert_eq!(repaired.field("bytes_past_tail"), Some("0"));
        // It failed, it did not die.
        assert_eq!(repaired.field("dead_pid"), None);
        let totals = failing.stats().unwrap().totals.unwrap();
        assert_eq!(totals.takeovers(TakeoverKind::Tail), 1);
        // Nothing is left for the survivor's next push to repair.
        let events = capture(|| assert_eq!(survivor.push(b"after it").unwrap(), 1));
        assert!(
            events
                .iter()
                .all(|event| event.field("message") != Some(message)),
            "{events:#?}"
        );
        // The event of the repair that `survivor`'s push of record `seq` makes first.
        let repaired_by_push = |seq: u64| {
            let events = capture(|| assert_eq!(survivor.push(b"repairs").unwrap(), seq));
            the_one(&events, message, Level::WARN).clone()
        };

        // A producer dies in a push (at its first call through the storage after the dirty
        // mark): the survivor takes the tail lock over and names it.
        let dying = Queue::open("/q", on(5)).unwrap();
        killed_in(&sim, 5, move || {
            let _ = dying.push(b"never returned either");
        });
        let repaired = repaired_by_push(2);
        assert_eq!(repaired.field("dead_pid"), Some("5"));
        assert_eq!(repaired.field("next_seq"), Some("2"));

        // A consumer receives record 0, then its process dies: the survivor ends the lease
        // (and drops the delivery it then gets: record 0 is ready again).
        let receiving = Queue::open("/q", on(3)).unwrap();
        let held = receiving.try_recv().unwrap().unwrap();
        assert_eq!(held.seq(), 0);
        sim.kill_process(3);
        // A dead process runs no destructor (a drop would release the lease).
        std::mem::forget(held);
        std::mem::forget(receiving);
        let events = capture(|| assert_eq!(survivor.try_recv().unwrap().unwrap().seq(), 0));
        let message =
            "ended the leases of handles that are gone: their records are delivered again";
        let ended = the_one(&events, message, Level::INFO);
        assert_eq!(ended.field("count"), Some("1"));

        // A consumer dies in its turn (at its first call through the storage, reading the
        // files): the survivor takes the turn over.
        let dying = Queue::open("/q", on(4)).unwrap();
        killed_in(&sim, 4, move || {
            let _ = dying.pop();
        });
        let events = capture(|| assert_eq!(survivor.pop().unwrap().unwrap().seq(), 0));
        let message = "took over the consumer turn of a process that died in it";
        let taken = the_one(&events, message, Level::WARN);
        assert_eq!(taken.field("pid"), Some("4"));

        // The same, counted (`diskspool_takeovers_total{kind}`).
        let totals = survivor.stats().unwrap().totals.unwrap();
        assert_eq!(totals.takeovers(TakeoverKind::Tail), 1);
        assert_eq!(totals.takeovers(TakeoverKind::ConsumerTurn), 1);
        assert_eq!(totals.takeovers(TakeoverKind::Lease), 1);
    }
}
