//! `socket_options`: raw `setsockopt(level, name, value)` on the relay's socket to the
//! broker, as aiomqtt passes them, before it connects.

use std::os::fd::AsRawFd;

use tokio::net::TcpSocket;

use crate::{Error, SocketOption};

/// Applies one option; an option the kernel refuses is an error naming it.
#[allow(unsafe_code)]
pub(crate) fn set(socket: &TcpSocket, opt: &SocketOption) -> Result<(), Error> {
    let len = libc::socklen_t::try_from(opt.value.len())
        .map_err(|_| Error::InvalidArgument("a socket option value is too long".to_owned()))?;
    // SAFETY: the fd is the live socket `socket` owns; `value` points to `len` readable
    // bytes for the call; setsockopt copies them and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            opt.level,
            opt.name,
            opt.value.as_ptr().cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(Error::InvalidArgument(format!(
            "socket option (level {}, name {}) refused: {}",
            opt.level,
            opt.name,
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
