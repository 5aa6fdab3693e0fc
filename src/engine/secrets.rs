//! Keeping secrets out of the engine's log records.
//!
//! paho-mqtt logs its `ConnectOptions` — password and proxy credentials included —
//! with `debug!` in `AsyncClient::connect` (ENGINE.md hazard 15). A facade cannot
//! filter another crate's records, so while that one synchronous call runs, and
//! only when a secret is configured, the global `log` level is capped at INFO:
//! the `debug!` is then never formatted. Other threads lose at most the DEBUG
//! records they emit during those microseconds; that is the least bad choice
//! (the alternative is a password in the logs).

use std::sync::Mutex;

static CAP: Mutex<()> = Mutex::new(());

/// Runs `f` with DEBUG and TRACE records suppressed if `secret` is set.
pub(crate) fn muted_if<T>(secret: bool, f: impl FnOnce() -> T) -> T {
    if !secret || log::max_level() < log::LevelFilter::Debug {
        return f();
    }
    // Serialise, so concurrent connects restore the level the user set.
    let _guard = CAP.lock().unwrap_or_else(|e| e.into_inner());
    let before = log::max_level();
    log::set_max_level(log::LevelFilter::Info);
    let out = f();
    log::set_max_level(before);
    out
}
