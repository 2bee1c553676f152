//! Crash points for the multi-process tests (feature `testkit` only; nothing without it):
//! `DISKSPOOL_KILL_AT=<name>:<n>` aborts the process the `n`-th time it reaches `<name>`, as a
//! `kill -9` at that moment would (no destructor runs; the kernel releases its locks). The
//! simulation of several processes sets a hook for one thread instead
//! ([`on_reached_in_this_thread`]): it kills a simulated process there.

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
    // One load when no thread ever set a hook (the benchmarks, built with `testkit` too).
    if HOOKS_SET.load(Ordering::Relaxed) {
        HOOK.with(|hook| {
            if let Some(hook) = hook.borrow_mut().as_mut() {
                hook(name);
            }
        });
    }
    if let Some((point, nth)) = target {
        if point == name && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            std::process::abort();
        }
    }
}

/// What a thread calls at each crash point it reaches (see [`on_reached_in_this_thread`]).
#[cfg(feature = "testkit")]
pub(crate) type Hook = Box<dyn FnMut(&str)>;

/// Whether any thread set a hook.
#[cfg(feature = "testkit")]
static HOOKS_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(feature = "testkit")]
thread_local! {
    static HOOK: std::cell::RefCell<Option<Hook>> = const { std::cell::RefCell::new(None) };
}

/// Calls `hook` with the name of every crash point the calling thread reaches from now on
/// (`None`: no more). A hook that does not return stops the thread right there.
#[cfg(feature = "testkit")]
pub(crate) fn on_reached_in_this_thread(hook: Option<Hook>) {
    if hook.is_some() {
        HOOKS_SET.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    HOOK.with(|slot| *slot.borrow_mut() = hook);
}

#[cfg(not(feature = "testkit"))]
#[inline(always)]
pub(crate) fn reached(_name: &str) {}
