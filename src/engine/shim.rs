//! Paho C internals the facade calls: symbols of the bundled Paho C 1.3.16 that are
//! not in its public API.

/// Sets Paho C's process-wide keep-alive check period (see `keepalive`).
#[allow(unsafe_code)]
pub(crate) fn set_retry_loop_interval(keepalive_secs: u16) {
    unsafe extern "C" {
        /// Non-static in MQTTAsyncUtils.c (Paho C 1.3.16), linked in from the bundled
        /// `libpaho-mqtt3as`.
        fn setRetryLoopInterval(keepalive: std::os::raw::c_int);
    }
    // SAFETY: the function stores an int derived from its argument in a static of
    // Paho C; it takes no pointers and no lock, and is valid at any time.
    unsafe { setRetryLoopInterval(std::os::raw::c_int::from(keepalive_secs)) }
}
