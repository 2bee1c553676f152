//! Crash points for the multi-process tests (feature `testkit` only; nothing without it):
//! `DISKSPOOL_KILL_AT=<name>:<n>` aborts the process the `n`-th time it reaches `<name>`, as a
//! `kill -9` at that moment would (no destructor runs; the kernel releases its locks).

#[cfg(feature = "testkit")]
pub(crate) fn reached(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DISKSPOOL_KILL_AT").ok()?;
        let (point, nth) = spec.rsplit_once(':')?;
        Some((point.to_owned(), nth.parse().ok()?))
    });
    if let Some((point, nth)) = target {
        if point == name && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            std::process::abort();
        }
    }
}

#[cfg(not(feature = "testkit"))]
#[inline(always)]
pub(crate) fn reached(_name: &str) {}
