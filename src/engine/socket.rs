//! Plain queries of a socket by descriptor, for the engine's dealings with sockets Paho
//! holds (its wake-up pair, a socket handed to it).

use std::os::fd::RawFd;

/// An `int` option of the socket `fd` (`getsockopt`).
#[allow(unsafe_code)]
pub(crate) fn int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// The bytes written to the socket `fd` that its peer has not taken yet (`SIOCOUTQ`):
/// for TCP not yet acknowledged, for a Unix socket not yet read.
#[allow(unsafe_code)]
pub(crate) fn send_queue(fd: RawFd) -> std::io::Result<libc::c_int> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int, to `n`.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) } == 0 {
        Ok(n)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
