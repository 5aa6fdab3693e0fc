//! This process's sockets, file descriptors and threads, as Linux shows them in `/proc`:
//! for tests that look at the relay's sockets from the outside (socket options on the
//! dialled socket, the private endpoint, leaks over many connections). Whole-process
//! counts are only meaningful in a child process of its own ([`super::isolated`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;

/// `st` of `/proc/net/tcp`.
pub const ESTABLISHED: u8 = 0x01;
pub const LISTEN: u8 = 0x0A;

/// One line of `/proc/net/tcp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpEntry {
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    pub state: u8,
    /// 0 for sockets no process holds (TIME_WAIT and the like).
    pub inode: u64,
}

/// `0100007F:1F90` (the address's 32-bit word in host order, the port) → 127.0.0.1:8080.
fn parse_addr(field: &str) -> Option<SocketAddrV4> {
    let (ip, port) = field.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(ip.to_ne_bytes()), port))
}

/// Every IPv4 TCP socket of the network namespace.
pub fn tcp_table() -> Vec<TcpEntry> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpEntry {
                local: parse_addr(f.get(1)?)?,
                remote: parse_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every socket file descriptor of this process, with its socket's inode.
fn socket_descriptors() -> Vec<(u64, RawFd)> {
    descriptors_in("/proc/self/fd")
}

/// Whether process `pid` holds the socket listening on 127.0.0.1:`port` (or any address's
/// `port`): a port that accepts connections may belong to another process.
pub fn process_listens_on(pid: u32, port: u16) -> bool {
    let held: Vec<u64> = descriptors_in(&format!("/proc/{pid}/fd"))
        .into_iter()
        .map(|(inode, _)| inode)
        .collect();
    tcp_table()
        .iter()
        .any(|e| e.state == LISTEN && e.local.port() == port && held.contains(&e.inode))
}

/// The socket descriptors in a `/proc/<pid>/fd` directory, with their sockets' inodes.
fn descriptors_in(dir: &str) -> Vec<(u64, RawFd)> {
    let Ok(dir) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_string_lossy().parse::<RawFd>().ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let inode = target
                .to_string_lossy()
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((inode, fd))
        })
        .collect()
}

/// This process's socket file descriptors by socket inode (one per socket).
pub fn socket_fds() -> HashMap<u64, RawFd> {
    socket_descriptors().into_iter().collect()
}

/// Every descriptor through which this process holds the socket `inode`.
pub fn descriptors_of(inode: u64) -> Vec<RawFd> {
    socket_descriptors()
        .into_iter()
        .filter(|&(i, _)| i == inode)
        .map(|(_, fd)| fd)
        .collect()
}

/// This process's IPv4 TCP sockets, with their file descriptors.
pub fn own_tcp() -> Vec<(RawFd, TcpEntry)> {
    let fds = socket_fds();
    tcp_table()
        .into_iter()
        .filter(|e| e.inode != 0)
        .filter_map(|e| fds.get(&e.inode).map(|fd| (*fd, e)))
        .collect()
}

/// This process's sockets connected to 127.0.0.1:`port` (its end of connections to it).
pub fn own_connections_to(port: u16) -> Vec<(RawFd, TcpEntry)> {
    own_tcp()
        .into_iter()
        .filter(|(_, e)| e.remote.port() == port && e.state != LISTEN)
        .collect()
}

/// This process's listening sockets.
pub fn own_listeners() -> Vec<(RawFd, TcpEntry)> {
    own_tcp()
        .into_iter()
        .filter(|(_, e)| e.state == LISTEN)
        .collect()
}

/// This process's sockets of any state whose local or remote port is `port`.
pub fn own_sockets_on(port: u16) -> Vec<(RawFd, TcpEntry)> {
    own_tcp()
        .into_iter()
        .filter(|(_, e)| e.local.port() == port || e.remote.port() == port)
        .collect()
}

/// An `int` socket option of one of this process's sockets.
#[allow(unsafe_code)]
pub fn int_option(fd: RawFd, level: i32, name: i32) -> std::io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes given; getsockopt writes at
    // most `len` bytes into `value`. The fd may have been closed meanwhile: then the call
    // fails (EBADF) or reads another socket's option, which the caller's checks catch.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

/// How many file descriptors this process has open.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// How many threads this process has.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The names of this process's threads (for failure messages).
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .flatten()
        .map(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_owned()
        })
        .collect();
    names.sort();
    names
}

/// What this process's file descriptors point to (for failure messages).
pub fn fd_targets() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path())
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{} -> {target}", e.file_name().to_string_lossy())
        })
        .collect();
    out.sort();
    out
}

/// What the scheduler counted so far for this process's thread named `name`
/// (`/proc/self/task/*/{comm,schedstat}`): its time on a CPU, and how many times it ran.
pub fn thread_schedstat(name: &str) -> Option<(std::time::Duration, u64)> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let mut fields = stat.split_whitespace();
            let ns: u64 = fields.next()?.parse().ok()?;
            let runs: u64 = fields.nth(1)?.parse().ok()?;
            return Some((std::time::Duration::from_nanos(ns), runs));
        }
    }
    None
}

/// The state and wait channel of this process's thread named `name`
/// (`/proc/self/task/*/{stat,wchan}`), for failure messages.
pub fn thread_state(name: &str) -> Option<String> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let state = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .next()?
                .to_owned();
            let wchan = std::fs::read_to_string(task.path().join("wchan")).unwrap_or_default();
            return Some(format!("state {state}, waiting in {wchan:?}"));
        }
    }
    None
}
