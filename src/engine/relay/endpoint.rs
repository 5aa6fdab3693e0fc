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

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// `true` if the peer of `stream` (accepted on `local`) is a socket of this process.
pub(crate) fn peer_is_this_process(stream: &TcpStream) -> bool {
    #[cfg(target_os = "linux")]
    {
        let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
            return false;
        };
        match socket_inode(peer, local) {
            Some(inode) => owns_socket(inode),
            None => false,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = stream;
        true
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

/// Whether `socket:[inode]` is one of this process's file descriptors.
#[cfg(target_os = "linux")]
fn owns_socket(inode: u64) -> bool {
    let want = format!("socket:[{inode}]");
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    dir.flatten().any(|entry| {
        std::fs::read_link(entry.path()).is_ok_and(|target| target.as_os_str() == want.as_str())
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
        assert!(peer_is_this_process(&accepted));
        drop(client);
        assert_eq!(
            proc_addr("127.0.0.1:8080".parse().unwrap()),
            format!("{:08X}:1F90", u32::from_ne_bytes([127, 0, 0, 1]))
        );
    }
}
