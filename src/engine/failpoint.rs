//! Crash points for the multi-process tests (feature `testkit` only; nothing without it):
//! `DISKSPOOL_KILL_AT=<name>:<n>` aborts the process the `n`-th time it reaches `<name>`, as a
//! `kill -9` at that moment would (no destructor runs; the kernel releases its locks). The
//! simulation of several processes sets a hook for one thread instead
//! ([`on_reached_in_this_thread`]): it kills a simulated process there.

/// Whether a crash point can do anything: [`UNKNOWN`] until the first one reached looks at
/// `DISKSPOOL_KILL_AT`, then [`ARMED`] or [`DISARMED`] (a hook set arms it for good).
#[cfg(feature = "testkit")]
static STATE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(UNKNOWN);
#[cfg(feature = "testkit")]
const UNKNOWN: u8 = 0;
#[cfg(feature = "testkit")]
const ARMED: u8 = 1;
#[cfg(feature = "testkit")]
const DISARMED: u8 = 2;

/// A crash point. One load and a branch when nothing is armed: the benchmarks are built with
/// `testkit` too, and measure the shared queue's hot paths, where these sit.
#[cfg(feature = "testkit")]
#[inline(always)]
pub(crate) fn reached(name: &str) {
    if STATE.load(std::sync::atomic::Ordering::Relaxed) != DISARMED {
        reached_armed(name);
    }
}

#[cfg(feature = "testkit")]
#[cold]
#[inline(never)]
fn reached_armed(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DISKSPOOL_KILL_AT").ok()?;
        let (point, nth) = spec.rsplit_once(':')?;
        Some((point.to_owned(), nth.parse().ok()?))
    });
    if target.is_none() && !HOOKS_SET.load(Ordering::SeqCst) {
        // Fails if a hook was set meanwhile (it stores `ARMED`): then this stays armed.
        let _ = STATE.compare_exchange(UNKNOWN, DISARMED, Ordering::SeqCst, Ordering::SeqCst);
        return;
    }
    if HOOKS_SET.load(Ordering::Relaxed) {
        HOOK.with(|hook| {
            // A hook that calls into a queue reaches crash points itself: those pass.
            if let Ok(mut hook) = hook.try_borrow_mut() {
                if let Some(hook) = hook.as_mut() {
                    hook(name);
                }
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
        HOOKS_SET.store(true, std::sync::atomic::Ordering::SeqCst);
        STATE.store(ARMED, std::sync::atomic::Ordering::SeqCst);
    }
    HOOK.with(|slot| *slot.borrow_mut() = hook);
}

#[cfg(not(feature = "testkit"))]
#[inline(always)]
pub(crate) fn reached(_name: &str) {}
