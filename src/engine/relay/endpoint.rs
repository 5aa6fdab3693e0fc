//! The private endpoint Paho connects to: a loopback TCP listener that hands each
//! connection of *this process* to the upstream link armed for it, and closes any other.
//!
//! Why TCP and not a Unix socket: Paho C 1.3.16's Unix-socket path connects in ~1 s and
//! writes ~200 KB per second (its poll loop waits for writability only once a second),
//! its TCP path does neither.
//!
//! Who may connect: on Linux, the peer's socket must be one of this process's file
//! descriptors — the accepted connection's client port is looked up in
//! `/proc/net/tcp{,6}` for its socket inode, which must appear in `/proc/self/fd`.
//! Another user's or another process's connection is closed before a byte is read or
//! written. Elsewhere only the one-connection-per-link rule applies.
//!
//! The same lookup names the descriptor through which Paho holds its end, which the
//! hand-over (`handoff`) replaces.

use std::net::SocketAddr;
use std::os::fd::RawFd;

use tokio::net::TcpStream;

/// This process's socket at the other end of an accepted connection: Paho's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerSocket {
    /// Its inode (0 where unknown).
    pub(crate) inode: u64,
    /// The descriptor through which this process holds it (-1 where unknown).
    pub(crate) fd: RawFd,
}

/// The peer of `stream` if it is a socket of this process; `None` for anyone else's.
pub(crate) fn own_peer(stream: &TcpStream) -> Option<PeerSocket> {
    #[cfg(target_os = "linux")]
    {
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return None;
        };
        let inode = socket_inode(peer, local)?;
        let fd = own_descriptor(inode)?;
        Some(PeerSocket { inode, fd })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        Some(PeerSocket { inode: 0, fd: -1 })
    }
}

/// The inode of the socket whose local address is `client` and remote `server`.
#[cfg(target_os = "linux")]
fn socket_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    let table = match client {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    let want_local = proc_addr(client);
    let want_remote = proc_addr(server);
    text.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        if fields.len() > 9
            && fields[1].eq_ignore_ascii_case(&want_local)
            && fields[2].eq_ignore_ascii_case(&want_remote)
        {
            fields[9].parse().ok()
        } else {
            None
        }
    })
}

/// An address as `/proc/net/tcp` prints it: the IP's 32-bit words in host order, hex.
#[cfg(target_os = "linux")]
fn proc_addr(addr: SocketAddr) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match addr {
        SocketAddr::V4(a) => {
            let _ = write!(out, "{:08X}", u32::from_ne_bytes(a.ip().octets()));
        }
        SocketAddr::V6(a) => {
            for word in a.ip().octets().chunks(4) {
                let word = [word[0], word[1], word[2], word[3]];
                let _ = write!(out, "{:08X}", u32::from_ne_bytes(word));
            }
        }
    }
    let _ = write!(out, ":{:04X}", addr.port());
    out
}

/// The descriptor through which this process holds `socket:[inode]`, if it does.
#[cfg(target_os = "linux")]
fn own_descriptor(inode: u64) -> Option<RawFd> {
    let want = format!("socket:[{inode}]");
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    dir.flatten().find_map(|entry| {
        let target = std::fs::read_link(entry.path()).ok()?;
        if target.as_os_str() != want.as_str() {
            return None;
        }
        entry.file_name().to_str()?.parse().ok()
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_of_this_process_is_recognised() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let peer = own_peer(&accepted).expect("the client is this process's");
        assert_eq!(peer.fd, std::os::fd::AsRawFd::as_raw_fd(&client));
        drop(client);
        assert_eq!(
            proc_addr("127.0.0.1:8080".parse().unwrap()),
            format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]))
        );
    }
}
