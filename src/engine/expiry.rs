//! Ends the waits of commands whose deadline has passed: one thread for the process.
//!
//! A call's timeout used to be a tokio timer of its own, registered and cancelled around
//! every call: with a thousand calls in flight that was a tenth of the facade's cost per
//! QoS 0 message (BENCHMARKS.md C5). The deadline now rides in the command's registry
//! entry, and this thread sleeps until the earliest deadline of any entry, then answers
//! those due with [`Reply::Expired`](super::Reply::Expired). Calls made with the
//! client's timeout have deadlines in the order they were made, so a registration
//! rarely moves the earliest one: it costs one atomic load, and the thread wakes about
//! once per timeout while calls keep completing.
//!
//! Deadlines are `std::time::Instant`s: the thread is the process's, not a runtime's (so
//! it outlives any one runtime), and the real clock is the network's.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::registry;

/// The earliest deadline the thread must look at, in nanoseconds after [`base`];
/// `u64::MAX`: none.
static EARLIEST: AtomicU64 = AtomicU64::new(u64::MAX);
static THREAD: OnceLock<Option<Thread>> = OnceLock::new();

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `at` in nanoseconds after [`base`] (0 for anything before it; `u64::MAX - 1` at most,
/// about 584 years): what [`watch`] takes.
pub(crate) fn nanos(at: Instant) -> u64 {
    let since = at.saturating_duration_since(base()).as_nanos();
    u64::try_from(since)
        .unwrap_or(u64::MAX - 1)
        .min(u64::MAX - 1)
}

/// Starts the thread if it is not running; `false` if it cannot be started.
pub(crate) fn start() -> bool {
    THREAD
        .get_or_init(|| {
            base();
            std::thread::Builder::new()
                .name("aiomqtt-expiry".to_owned())
                .spawn(run)
                .map(|handle| handle.thread().clone())
                .map_err(|e| crate::logging::log_error!(target: "aiomqtt::engine", "no expiry thread: {e}"))
                .ok()
        })
        .is_some()
}

/// A command with a deadline `at` ([`nanos`], computed before the lock) was registered.
/// Called under the registry shard's lock that holds the entry: the thread clears
/// [`EARLIEST`] before it locks each shard to look, so either it finds the entry, or this
/// sees the cleared value and lowers it.
pub(crate) fn watch(at: u64) {
    if at < EARLIEST.load(Ordering::Acquire) && at < EARLIEST.fetch_min(at, Ordering::AcqRel) {
        if let Some(Some(thread)) = THREAD.get() {
            thread.unpark();
        }
    }
}

fn run() {
    crate::logging::defer_on_this_thread();
    loop {
        let earliest = EARLIEST.load(Ordering::Acquire);
        let now = nanos(Instant::now());
        if earliest == u64::MAX {
            std::thread::park();
            continue;
        }
        if earliest > now {
            std::thread::park_timeout(Duration::from_nanos(earliest - now));
            continue;
        }
        EARLIEST.store(u64::MAX, Ordering::Release);
        if let Some(next) = registry::expire(Instant::now()) {
            EARLIEST.fetch_min(nanos(next), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_map_to_nanoseconds_in_order_and_saturate() {
        let now = Instant::now();
        assert!(nanos(now) < nanos(now + Duration::from_millis(1)));
        assert_eq!(nanos(base()), 0);
        if let Some(before) = base().checked_sub(Duration::from_secs(1)) {
            assert_eq!(nanos(before), 0);
        }
        let far = now + Duration::from_secs(1000 * 365 * 24 * 3600);
        assert_eq!(nanos(far), u64::MAX - 1);
    }
}
