//! Keeping secrets out of the engine's log records.
//!
//! paho-mqtt logs its `ConnectOptions` — password and proxy credentials included —
//! with `debug!` in `AsyncClient::connect` (ENGINE.md hazard 15). A facade cannot
//! filter another crate's records, so while that one synchronous call runs, and
//! only when a secret is configured, the global `log` level is capped at INFO:
//! the `debug!` is then never formatted. Other threads lose at most the DEBUG
//! records they emit during those microseconds; that is the least bad choice
//! (the alternative is a password in the logs).
//!
//! Paho C itself traces the HTTP proxy's Basic credentials ("Setting http proxy
//! auth to …" in MQTTProtocolOut.c, and the whole CONNECT request in Proxy.c's
//! `Proxy_connect`), from its own thread, later than that call. For a connect
//! that carries proxy credentials, [`CTraceMute`] lowers only Paho C's trace
//! level until the connect has completed: no other crate's records are touched.

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

use paho_mqtt_sys as ffi;

/// Connects in flight that carry proxy credentials.
static C_TRACE_MUTED: Mutex<usize> = Mutex::new(0);

/// While alive, Paho C traces at most errors (its trace of the proxy's
/// `Proxy-authorization` header is TRACE_PROTOCOL).
pub(crate) struct CTraceMute(());

impl CTraceMute {
    pub(crate) fn new() -> CTraceMute {
        let mut count = C_TRACE_MUTED.lock().unwrap_or_else(|e| e.into_inner());
        if *count == 0 {
            set_c_trace_level(ffi::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_ERROR);
        }
        *count += 1;
        CTraceMute(())
    }
}

impl Drop for CTraceMute {
    fn drop(&mut self) {
        let mut count = C_TRACE_MUTED.lock().unwrap_or_else(|e| e.into_inner());
        *count -= 1;
        if *count == 0 {
            set_c_trace_level(configured_c_trace_level());
        }
    }
}

/// The level paho-mqtt derives from the `paho_mqtt_c` log target
/// (its private `c_trace_level()`), to restore after a mute.
fn configured_c_trace_level() -> ffi::MQTTASYNC_TRACE_LEVELS {
    const TARGET: &str = "paho_mqtt_c";
    if log::log_enabled!(target: TARGET, log::Level::Trace) {
        ffi::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_MAXIMUM
    } else if log::log_enabled!(target: TARGET, log::Level::Info) {
        ffi::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_MEDIUM
    } else if log::log_enabled!(target: TARGET, log::Level::Warn) {
        ffi::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_ERROR
    } else {
        ffi::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_SEVERE
    }
}

#[allow(unsafe_code)]
fn set_c_trace_level(level: ffi::MQTTASYNC_TRACE_LEVELS) {
    // SAFETY: MQTTAsync_setTraceLevel only stores the level in Paho C's global
    // trace settings (MQTTAsync.c -> Log_setTraceLevel); it takes no pointers
    // and is valid at any time, before or after clients exist.
    unsafe { ffi::MQTTAsync_setTraceLevel(level) }
}
