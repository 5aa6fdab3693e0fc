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
    fn aiomqtt_can_take_over_sockets() -> std::os::raw::c_int;
    fn aiomqtt_take_over_socket(
        paho_fd: std::os::raw::c_int,
        inode: std::os::raw::c_ulonglong,
        fd: std::os::raw::c_int,
        old_fd: *mut std::os::raw::c_int,
    ) -> std::os::raw::c_int;
    fn aiomqtt_can_take_over_tls() -> std::os::raw::c_int;
    fn aiomqtt_take_over_tls(
        paho_fd: std::os::raw::c_int,
        inode: std::os::raw::c_ulonglong,
        fd: std::os::raw::c_int,
        ssl: *mut openssl_sys::SSL,
        old_fd: *mut std::os::raw::c_int,
    ) -> std::os::raw::c_int;
}

/// `true` when the linked Paho C is the one the shim was written for.
fn known_engine() -> bool {
    static KNOWN: OnceLock<bool> = OnceLock::new();
    *KNOWN.get_or_init(|| {
        let version = super::paho_version();
        let known = version == Some(KNOWN_PAHO);
        if !known {
            crate::logging::log_warn!(
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

/// `true` when [`take_over_socket`] can work: the known engine, with its symbols.
#[allow(unsafe_code)]
pub(crate) fn can_take_over_sockets() -> bool {
    // SAFETY: reads the addresses and values of statically initialised pointers.
    known_engine() && unsafe { aiomqtt_can_take_over_sockets() != 0 }
}

/// What [`take_over_socket`] did.
#[derive(Debug)]
pub(crate) enum TakeOver {
    /// Paho's descriptor now refers to the given connection; this is a descriptor of the
    /// one it replaced.
    Done(std::os::fd::OwnedFd),
    /// Paho has a partly written packet on its socket: try again once it is drained.
    WritePending,
    /// Paho's descriptor is not that socket any more: Paho closed it.
    Gone,
    /// Not on this engine (another Paho C version, or a symbol is missing).
    Unavailable,
    /// `dup2` failed.
    Failed(std::io::Error),
    /// No single client of Paho's without a TLS session holds the socket (TLS only).
    NoClient,
}

/// Makes Paho's socket descriptor `paho_fd`, which must be the socket with inode
/// `inode`, refer to the connection `fd` refers to (close-on-exec), under Paho's socket
/// mutexes (see `csrc/paho_shim.c`). Blocks while another thread holds Paho's global mutex: never
/// call it from an async task's thread or with a lock of ours held.
#[allow(unsafe_code)]
pub(crate) fn take_over_socket(
    paho_fd: std::os::fd::RawFd,
    inode: u64,
    fd: std::os::fd::BorrowedFd<'_>,
) -> TakeOver {
    use std::os::fd::AsRawFd;
    if !can_take_over_sockets() {
        return TakeOver::Unavailable;
    }
    use std::os::fd::FromRawFd;
    let mut old: std::os::raw::c_int = -1;
    // SAFETY: the shim takes Paho's two mutexes in Paho's order and releases both before
    // it returns; under them it checks that `paho_fd` still is the socket `inode` (so it
    // cannot replace a descriptor Paho closed and something else reused), duplicates it
    // and replaces it with `dup3`, which is atomic. `fd` is borrowed, so open for the
    // call; `old` is valid for a write.
    match unsafe { aiomqtt_take_over_socket(paho_fd, inode, fd.as_raw_fd(), &mut old) } {
        // SAFETY: on success `old` is a new descriptor that nothing else owns.
        1 if old >= 0 => TakeOver::Done(unsafe { std::os::fd::OwnedFd::from_raw_fd(old) }),
        0 => TakeOver::WritePending,
        -1 => TakeOver::Gone,
        -3 => TakeOver::Failed(std::io::Error::last_os_error()),
        _ => TakeOver::Unavailable,
    }
}

/// `true` when [`take_over_tls`] can work: the known engine, with its symbols.
#[allow(unsafe_code)]
pub(crate) fn can_take_over_tls() -> bool {
    // SAFETY: reads the addresses and values of statically initialised pointers and
    // Paho's version string.
    can_take_over_sockets() && unsafe { aiomqtt_can_take_over_tls() != 0 }
}

/// As [`take_over_socket`], and `ssl` — a TLS session established on `fd`, none of whose
/// application data has been read — becomes the TLS session through which Paho reads and
/// writes the connection (see `csrc/paho_shim.c`). Paho frees the session when it closes
/// the connection; if it is not taken over, it is dropped here. Blocks as
/// [`take_over_socket`] does.
#[allow(unsafe_code)]
pub(crate) fn take_over_tls(
    paho_fd: std::os::fd::RawFd,
    inode: u64,
    fd: std::os::fd::BorrowedFd<'_>,
    ssl: openssl::ssl::Ssl,
) -> TakeOver {
    use foreign_types::ForeignType;
    use std::os::fd::{AsRawFd, FromRawFd};
    if !can_take_over_tls() {
        return TakeOver::Unavailable;
    }
    let ssl = std::mem::ManuallyDrop::new(ssl);
    let mut old: std::os::raw::c_int = -1;
    // SAFETY: as for `take_over_socket`; in addition the shim finds the client whose
    // socket `paho_fd` is in Paho's list (under the mutex that guards it), checks it has
    // no TLS session, points the session's I/O at `paho_fd` and stores the pointer in
    // the client. `ssl` is a live session we own one reference to.
    let rc =
        unsafe { aiomqtt_take_over_tls(paho_fd, inode, fd.as_raw_fd(), ssl.as_ptr(), &mut old) };
    // Before anything else can change errno (freeing the session below).
    let os_error = std::io::Error::last_os_error();
    if rc != 1 {
        // Not taken over: our reference is ours to release.
        drop(std::mem::ManuallyDrop::into_inner(ssl));
    }
    match rc {
        // SAFETY: on success `old` is a new descriptor that nothing else owns.
        1 if old >= 0 => TakeOver::Done(unsafe { std::os::fd::OwnedFd::from_raw_fd(old) }),
        0 => TakeOver::WritePending,
        -1 => TakeOver::Gone,
        -3 => TakeOver::Failed(os_error),
        -4 => TakeOver::NoClient,
        _ => TakeOver::Unavailable,
    }
}

/// Makes the writing end of Paho C's interrupt socket pair non-blocking; `true` if done.
///
/// Why: Paho wakes its receive thread by sending one byte on a blocking Unix socket pair
/// (`Socket_interrupt`, called for every socket it opens or closes, and by the [pump])
/// and drains it one byte per poll cycle, after taking its global mutex. Some 270
/// unread bytes fill the pair's buffer; the next `send` then blocks — in Paho's send
/// thread, holding that mutex, while the receive thread waits for the mutex before it
/// reads another byte: every client of the process hangs for ever (seen with 1,000
/// clients connecting at once). Non-blocking, a byte that does not fit is dropped,
/// which loses nothing: the receive thread has hundreds of wake-ups waiting.
///
/// Found without Paho's (static) descriptor numbers: of this process's blocking Unix
/// stream sockets, the one whose send queue grows by a `Socket_interrupt`. Called once,
/// right after Paho C's initialisation, before any client connects: no thread reads the
/// pair yet. Where that does not single out one socket, nothing is changed.
///
/// [pump]: super::pump
#[allow(unsafe_code)]
pub(crate) fn unblock_interrupts() -> bool {
    use std::os::fd::RawFd;
    if !known_engine() {
        return false;
    }
    use super::socket::{int_option, send_queue};
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    let candidates: Vec<(RawFd, libc::c_int)> = dir
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .filter_map(|e| e.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            // SAFETY: F_GETFL reads a descriptor's flags.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
            flags >= 0
                && flags & libc::O_NONBLOCK == 0
                && int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) == Some(libc::AF_UNIX)
                && int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        })
        .filter_map(|fd| Some((fd, send_queue(fd).ok()?)))
        .collect();
    if !socket_interrupt() {
        return false;
    }
    let grown: Vec<RawFd> = candidates
        .into_iter()
        .filter(|&(fd, before)| send_queue(fd).is_ok_and(|now| now > before))
        .map(|(fd, _)| fd)
        .collect();
    let [fd] = grown[..] else {
        crate::logging::log_warn!(
            target: "aiomqtt::engine",
            "could not single out Paho C's interrupt socket ({} candidates): with hundreds of \
             sockets opened or closed at once Paho C may hang",
            grown.len()
        );
        return false;
    };
    // SAFETY: F_GETFL/F_SETFL on an open descriptor; only O_NONBLOCK is added.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
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
        assert!(
            super::super::paho::interrupts_unblocked(),
            "Paho C's interrupt socket is still blocking"
        );
    }
}
