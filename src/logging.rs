//! Log records, kept off the threads that must never wait on user code.
//!
//! The `log` backend is the application's code: it may block (a full pipe, its own lock,
//! even a call back into this crate). Paho C runs our callbacks on its receive and send
//! threads, some under its process-wide mutex, and the crate's own engine, pump and
//! expiry threads serve every client of the process: a logger that blocks one of them
//! would stall every connection. So on those threads a record is formatted and queued,
//! and the `aiomqtt-log` thread hands it to the logger; the queue is bounded, and a
//! record that finds it full is dropped and counted (reported with the next one written).
//! Everywhere else records go to the logger at once, as `log`'s macros do.
//!
//! Only `log::max_level()` is consulted before queueing (a static, not the logger's
//! `enabled`, which is user code too).

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Records waiting for the logger at most; more are dropped and counted.
const QUEUE: usize = 4096;

thread_local! {
    static DEFERRED: Cell<bool> = const { Cell::new(false) };
}

static SENDER: OnceLock<Option<SyncSender<Deferred>>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

struct Deferred {
    level: log::Level,
    target: String,
    message: String,
}

/// Marks the current thread, while the guard lives, as one whose records are queued.
pub(crate) struct DeferOnThisThread(bool);

impl DeferOnThisThread {
    pub(crate) fn new() -> DeferOnThisThread {
        DeferOnThisThread(DEFERRED.with(|d| d.replace(true)))
    }
}

impl Drop for DeferOnThisThread {
    fn drop(&mut self) {
        DEFERRED.with(|d| d.set(self.0));
    }
}

/// Marks the current thread for good (the crate's own threads, at their start). The first
/// call starts the log thread, so that it comes with the engine's, once for the process,
/// not at some later record.
pub(crate) fn defer_on_this_thread() {
    SENDER.get_or_init(start);
    DEFERRED.with(|d| d.set(true));
}

/// Writes a record now, or queues it on a deferred thread. Used by the crate's logging
/// macros ([`log_error!`], [`log_warn!`], [`log_info!`], [`log_debug!`]).
pub(crate) fn emit(level: log::Level, target: &str, args: fmt::Arguments<'_>) {
    if level > log::max_level() {
        return;
    }
    if !DEFERRED.with(Cell::get) {
        log::log!(target: target, level, "{args}");
        return;
    }
    let Some(sender) = SENDER.get_or_init(start).as_ref() else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    };
    enqueue(
        sender,
        Deferred {
            level,
            target: target.to_owned(),
            message: args.to_string(),
        },
    );
}

/// Queues `record` without waiting; a full queue drops it and counts it.
fn enqueue(sender: &SyncSender<Deferred>, record: Deferred) {
    match sender.try_send(record) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Hands a queued record to the logger, after a record of how many were dropped since
/// the last one written.
fn write(record: Deferred) {
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        log::warn!(
            target: "aiomqtt",
            "{dropped} log records were dropped: the logger did not keep up"
        );
    }
    log::log!(target: &record.target, record.level, "{}", record.message);
}

fn start() -> Option<SyncSender<Deferred>> {
    let (tx, rx) = sync_channel::<Deferred>(QUEUE);
    std::thread::Builder::new()
        .name("aiomqtt-log".to_owned())
        .spawn(move || {
            for record in rx {
                write(record);
            }
        })
        .ok()
        .map(|_| tx)
}

macro_rules! log_error {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Error, $target, format_args!($($arg)+))
    };
    ($($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Error, module_path!(), format_args!($($arg)+))
    };
}
macro_rules! log_warn {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Warn, $target, format_args!($($arg)+))
    };
    ($($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Warn, module_path!(), format_args!($($arg)+))
    };
}
macro_rules! log_info {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Info, $target, format_args!($($arg)+))
    };
    ($($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Info, module_path!(), format_args!($($arg)+))
    };
}
macro_rules! log_debug {
    (target: $target:expr, $($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Debug, $target, format_args!($($arg)+))
    };
    ($($arg:tt)+) => {
        $crate::logging::emit(::log::Level::Debug, module_path!(), format_args!($($arg)+))
    };
}
pub(crate) use {log_debug, log_error, log_info, log_warn};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_restores_the_threads_mark() {
        assert!(!DEFERRED.with(Cell::get));
        {
            let _outer = DeferOnThisThread::new();
            assert!(DEFERRED.with(Cell::get));
            {
                let _inner = DeferOnThisThread::new();
            }
            assert!(
                DEFERRED.with(Cell::get),
                "an inner guard keeps the outer mark"
            );
        }
        assert!(!DEFERRED.with(Cell::get));
    }

    /// A record that finds the queue full is dropped and counted, and the count is
    /// written before the next record that gets through.
    #[test]
    fn a_full_queue_drops_and_counts_and_the_next_record_reports_it() {
        let record = |message: &str| Deferred {
            level: log::Level::Warn,
            target: "aiomqtt-logging-test".to_owned(),
            message: message.to_owned(),
        };
        let (tx, rx) = sync_channel::<Deferred>(1);
        enqueue(&tx, record("kept"));
        enqueue(&tx, record("dropped"));
        assert_eq!(DROPPED.load(Ordering::Relaxed), 1);
        write(rx.try_recv().expect("the kept record"));
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        assert!(rx.try_recv().is_err(), "only one record was queued");
        assert_eq!(
            crate::facade_tests::logged("aiomqtt"),
            ["1 log records were dropped: the logger did not keep up"]
        );
        assert_eq!(
            crate::facade_tests::logged("aiomqtt-logging-test"),
            ["kept"]
        );
    }
}
