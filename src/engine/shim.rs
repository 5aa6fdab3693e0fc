//! Paho C internals the facade calls, through `csrc/paho_shim.c` (weak references, so a
//! Paho C without them still links). They are called only on the Paho C version they
//! were read from; on another, the facade warns once and does without.

use std::sync::OnceLock;

/// The Paho C whose internals the shim knows.
pub(crate) const KNOWN_PAHO: &str = "1.3.16";

#[allow(unsafe_code)]
unsafe extern "C" {
    fn aiomqtt_set_retry_loop_interval(keepalive: std::os::raw::c_int) -> std::os::raw::c_int;
    fn aiomqtt_socket_interrupt() -> std::os::raw::c_int;
    fn aiomqtt_wake_sender() -> std::os::raw::c_int;
    fn aiomqtt_detach_last_publication(payloadlen: std::os::raw::c_int) -> std::os::raw::c_int;
}

/// `true` when the linked Paho C is the one the shim was written for.
fn known_engine() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        let version = super::paho_version();
        let known = version == Some(KNOWN_PAHO);
        if !known {
            log::warn!(
                target: "aiomqtt::engine",
                "Paho C {} is linked, not {KNOWN_PAHO}: its internal keep-alive and \
                 wake-up calls are not used (a client with a short keepalive may miss its \
                 pings beside one with a long keepalive)",
                version.unwrap_or("(unknown version)")
            );
        }
        known
    })
}

/// Sets Paho C's process-wide keep-alive check period (see `keepalive`). `false` when
/// the engine is not the known one or lacks the function.
#[allow(unsafe_code)]
pub(crate) fn set_retry_loop_interval(keepalive_secs: u16) -> bool {
    if !known_engine() {
        return false;
    }
    // SAFETY: the shim calls `setRetryLoopInterval(int)` of Paho C 1.3.16 (checked
    // above), which stores a value derived from its argument in a static of Paho C; it
    // takes no pointers and no lock and is valid at any time. Without the symbol the
    // shim returns 0 and calls nothing.
    unsafe { aiomqtt_set_retry_loop_interval(std::os::raw::c_int::from(keepalive_secs)) != 0 }
}

/// Wakes Paho C's receive thread out of its poll (`Socket_interrupt`). `false` when the
/// engine is not the known one or lacks the function.
#[allow(unsafe_code)]
pub(crate) fn socket_interrupt() -> bool {
    if !known_engine() {
        return false;
    }
    // SAFETY: `Socket_interrupt(void)` of Paho C 1.3.16 (checked above) sends one byte
    // on a socket pair Paho created at its initialisation and never closes (the facade
    // keeps Paho initialised for the life of the process; callers run only once a client
    // exists); `send` is thread-safe and the function takes no lock. Without the symbol
    // the shim returns 0.
    unsafe { aiomqtt_socket_interrupt() != 0 }
}

/// Wakes Paho C's send thread out of its wait for commands (`Thread_signal_evt` on
/// `send_evt`). `false` when the engine is not the known one or lacks the symbols.
#[allow(unsafe_code)]
pub(crate) fn wake_sender() -> bool {
    if !known_engine() {
        return false;
    }
    // SAFETY: `send_evt` of Paho C 1.3.16 (checked above) is a statically initialised
    // condition variable and mutex, valid for the whole process; `Thread_signal_evt`
    // locks that mutex (a leaf: no Paho thread holds it while waiting on anything
    // else), sets the flag and signals. Without the symbols the shim returns 0.
    unsafe { aiomqtt_wake_sender() != 0 }
}

/// What [`detach_last_publication`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detach {
    /// The stored publication now owns copies of its topic and payload.
    Done,
    /// The last stored publication was not the expected one (or memory ran out).
    NotFound,
    /// Not on this engine (another Paho C version, or the symbol is missing).
    Unavailable,
}

/// Repairs the publication Paho C stored for a QoS 1/2 PUBLISH whose write just failed,
/// before Paho frees the buffers it shares with its command (see `csrc/paho_shim.c`).
///
/// # Safety
/// Only from a publish's failure callback that Paho C's `MQTTAsync_processCommand` made
/// for a failed write (failure code -1, token 0): Paho's send thread, holding Paho's
/// global mutex, with the command's buffers not yet freed.
#[allow(unsafe_code)]
pub(crate) unsafe fn detach_last_publication(payload_len: usize) -> Detach {
    if !known_engine() {
        return Detach::Unavailable;
    }
    let Ok(len) = std::os::raw::c_int::try_from(payload_len) else {
        return Detach::NotFound;
    };
    // SAFETY: per the contract, Paho's list of publications is not changing under us and
    // its last element was stored by the failed command; the shim checks the length and
    // reference count before it replaces two pointers with its own copies.
    match unsafe { aiomqtt_detach_last_publication(len) } {
        1 => Detach::Done,
        0 => Detach::NotFound,
        _ => Detach::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    /// The bundled engine is the known one and the shim finds its internals.
    #[test]
    fn the_bundled_engine_has_the_internals() {
        super::super::paho::init();
        assert_eq!(super::super::paho_version(), Some(super::KNOWN_PAHO));
        assert!(super::set_retry_loop_interval(60));
    }
}
