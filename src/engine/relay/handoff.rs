//! Handing a dialled socket to Paho. When the link is a bare socket — TCP, bound or with
//! socket options or through a proxy's tunnel, or a Unix socket — nothing of ours needs to
//! stand between Paho and the broker once the dial is done. Paho connects to the private
//! endpoint as usual; then, under Paho's socket mutexes, the descriptor through which Paho
//! holds that connection is made to refer to the dialled one (`dup2`, see
//! `csrc/paho_shim.c`), and Paho reads and writes the broker's socket itself: no copies
//! and no thread wake-ups of ours per packet.
//!
//! TLS the relay established on the dialled socket goes over with it (`run_tls`): Paho C
//! chooses TLS or plain reads and writes per call from its connection's TLS session
//! (WebSocket.c: `WebSocket_putdatas`, `WebSocket_getch`, `WebSocket_getdata` test
//! `net->ssl`), so the session is set there under the same locks, and Paho frees it when
//! it closes the connection.
//!
//! What Paho wrote to the endpoint before the swap — its CONNECT at most: it sends nothing
//! else before the CONNACK, which cannot come before the CONNECT has reached the broker —
//! is read once the endpoint has acknowledged all of it, and sent on first. The swap
//! waits while Paho has a packet half written to the endpoint.
//!
//! The relay keeps a descriptor of its own ([`Held`]) until the connection ends, to say
//! how it ended: while it is held, the socket outlives Paho's close, and its state at the
//! loss tells whether the engine gave up on it (a keep-alive timeout) or the broker or
//! the network ended it ([`Held::end`]). It is closed then, or when the engine
//! disconnects.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use super::dial::Socket;
use super::endpoint::PeerSocket;
use super::pipe::{self, EndSlot, Failure, LinkEnd};
use super::tls_link::{SslFailure, TlsLink};
use crate::engine::shim::{self, TakeOver};
use crate::engine::socket;

/// The pause before another try while Paho finishes a partly written packet.
const RETRY: Duration = Duration::from_millis(1);

/// `true` when sockets can be handed to this engine.
pub(crate) fn available() -> bool {
    cfg!(target_os = "linux") && shim::can_take_over_sockets()
}

/// `true` when TLS sessions can be handed to this engine with their sockets.
pub(crate) fn tls_available() -> bool {
    available() && shim::can_take_over_tls()
}

/// The relay's own descriptor of a connection handed to Paho.
#[derive(Debug)]
pub(crate) struct Held {
    fd: OwnedFd,
    tcp: bool,
}

/// Makes Paho's end of `paho` (the connection it opened to the private endpoint) the
/// dialled `upstream`, gives the relay's descriptor of it to `keep` as soon as Paho has
/// it, then sends on what Paho had written to the endpoint. The error says why it could
/// not; Paho's connect fails then.
pub(crate) async fn run(
    paho: TcpStream,
    peer: PeerSocket,
    upstream: Socket,
    deadline: Instant,
    keep: impl FnOnce(Held),
) -> Result<(), String> {
    let (fd, tcp) = descriptor(upstream)?;
    let swapped = swap(paho, peer, &fd, deadline).await?;
    let sender = fd.try_clone().map_err(|e| e.to_string());
    keep(Held { fd, tcp });
    let sender = sender?;
    let early = swapped.early(deadline).await?;
    send_all(&sender, &early, deadline).await
}

/// As [`run`], for TLS established on the dialled socket: Paho's CONNECT, read whole from
/// the endpoint, is written through the session first (Paho writes nothing else before
/// the CONNACK); then Paho's descriptor becomes the dialled socket and the session Paho's
/// (`shim::take_over_tls`). The relay reads no application data: the broker's answer is
/// Paho's to read. A failure of the TLS layer (the broker's refusal of the client's
/// certificate, a failed write) is recorded in `end` while Paho's connection to the
/// endpoint is still open: the connect's error, made when Paho sees it close, names it.
pub(crate) async fn run_tls(
    mut paho: TcpStream,
    peer: PeerSocket,
    mut link: TlsLink,
    deadline: Instant,
    end: &EndSlot,
    keep: impl FnOnce(Held),
) -> Result<(), Handover> {
    let connect = tokio::time::timeout_at(deadline, first_packet(&mut paho))
        .await
        .map_err(|_| Handover::Other("the engine's CONNECT did not arrive in time".to_owned()))?
        .map_err(Handover::Other)?;
    let failed = |failure: SslFailure| {
        let tls = failure
            .codes
            .iter()
            .find_map(|&c| crate::engine::diagnose::kind_of(c));
        pipe::record(
            end,
            LinkEnd::Failed(Failure {
                detail: failure.detail,
                tls,
            }),
        );
        Handover::Tls
    };
    link.await_verdict(deadline).await.map_err(failed)?;
    tokio::time::timeout_at(deadline, link.write_all(&connect))
        .await
        .map_err(|_| Handover::Other("the CONNECT could not be written in time".to_owned()))?
        .map_err(failed)?;
    let (socket, ssl) = link.into_parts();
    let (fd, tcp) = descriptor(socket).map_err(Handover::Other)?;
    let ours = fd.try_clone().map_err(|e| Handover::Other(e.to_string()))?;
    let took =
        on_engine_thread(move || shim::take_over_tls(peer.fd, peer.inode, ours.as_fd(), ssl))
            .await
            .map_err(Handover::Other)?;
    // The whole CONNECT was read: nothing of Paho's can be pending (`WritePending`).
    let replaced = replaced(took).map_err(Handover::Other)?;
    shim::socket_interrupt();
    drop(replaced);
    // Paho writes nothing after its CONNECT until the CONNACK. Had it, those bytes would
    // be lost: the connection is failed instead.
    let mut rest = Vec::new();
    let drained = paho
        .into_std()
        .map_err(|e| e.to_string())
        .and_then(|paho| drain_available(&paho, &mut rest));
    let outcome = match drained {
        Ok(()) if rest.is_empty() => Ok(()),
        Ok(()) => Err(format!(
            "the engine wrote {} bytes after its CONNECT",
            rest.len()
        )),
        Err(e) => Err(e),
    };
    if outcome.is_err() {
        // SAFETY: shuts down the open socket `fd`; Paho sees its connection fail.
        #[allow(unsafe_code)]
        unsafe {
            libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR);
        }
    }
    keep(Held { fd, tcp });
    outcome.map_err(Handover::Other)
}

/// Why a link could not be handed over.
#[derive(Debug)]
pub(crate) enum Handover {
    /// The TLS layer failed (the broker's verdict on the handshake, or writing the
    /// CONNECT); recorded as the link's end.
    Tls,
    /// Anything else, said in words.
    Other(String),
}

/// Reads one whole MQTT packet (the CONNECT) from `paho`.
async fn first_packet(paho: &mut TcpStream) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut packet = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(len) = packet_len(&packet)? {
            if packet.len() >= len {
                if packet.len() > len {
                    return Err("the engine wrote more than its CONNECT".to_owned());
                }
                return Ok(packet);
            }
        }
        match paho.read(&mut buf).await {
            Ok(0) => return Err("the engine closed its connection first".to_owned()),
            Ok(n) => packet.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the engine's CONNECT: {e}")),
        }
    }
}

/// The length of the MQTT packet `bytes` begins with, once its fixed header is complete.
fn packet_len(bytes: &[u8]) -> Result<Option<usize>, String> {
    let mut remaining = 0usize;
    for (i, &b) in bytes.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(1 + (i + 1) + remaining));
        }
    }
    if bytes.len() > 4 {
        return Err("the engine's first packet has a malformed length".to_owned());
    }
    Ok(None)
}

/// For a link the relay carries: makes Paho's end of `paho` one end of a new Unix socket
/// pair, and returns the other with what Paho had written to the endpoint before. A Unix
/// socket costs the relay's copies less than loopback TCP (no TCP stack, no
/// acknowledgements).
pub(crate) async fn pair(
    paho: TcpStream,
    peer: PeerSocket,
    deadline: Instant,
) -> Result<(UnixStream, Vec<u8>), String> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| e.to_string())?;
    let theirs: OwnedFd = theirs.into_std().map_err(|e| e.to_string())?.into();
    let swapped = swap(paho, peer, &theirs, deadline).await?;
    // Paho holds its own descriptor of `theirs` now.
    drop(theirs);
    Ok((ours, swapped.early(deadline).await?))
}

/// The descriptor of a dialled socket, and whether it is TCP. tokio hands the socket back
/// non-blocking, as Paho's own sockets are.
fn descriptor(socket: Socket) -> Result<(OwnedFd, bool), String> {
    Ok(match socket {
        Socket::Tcp(s) => (s.into_std().map_err(|e| e.to_string())?.into(), true),
        Socket::Unix(s) => (s.into_std().map_err(|e| e.to_string())?.into(), false),
    })
}

/// Runs a take-over on the engine thread: it blocks while another thread holds Paho's
/// global mutex (a connect resolving a host name), and the engine thread is made for
/// blocking calls into Paho (never the relay's, which carries other links meanwhile).
async fn on_engine_thread(
    take_over: impl FnOnce() -> TakeOver + Send + 'static,
) -> Result<TakeOver, String> {
    crate::engine::thread::submit(take_over)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|_| "the engine thread has stopped".to_owned())
}

/// The descriptor of the connection a take-over replaced, or why there is none.
fn replaced(took: TakeOver) -> Result<OwnedFd, String> {
    match took {
        TakeOver::Done(replaced) => Ok(replaced),
        TakeOver::WritePending => Err("the engine is still writing to the endpoint".to_owned()),
        TakeOver::Gone => Err("the engine closed its connection first".to_owned()),
        TakeOver::NoClient => {
            Err("no client of the engine without a TLS session holds the connection".to_owned())
        }
        TakeOver::Unavailable => Err("this engine cannot take over the connection".to_owned()),
        TakeOver::Failed(e) => Err(format!("dup: {e}")),
    }
}

/// A swap done: the replaced connection, and what was read of it meanwhile.
struct Swapped {
    replaced: OwnedFd,
    paho: std::net::TcpStream,
    early: Vec<u8>,
}

/// Replaces the descriptor through which Paho holds `paho`'s peer with one of `fd`.
async fn swap(
    paho: TcpStream,
    peer: PeerSocket,
    fd: &OwnedFd,
    deadline: Instant,
) -> Result<Swapped, String> {
    // Read with plain system calls from here on: tokio's readiness of this socket may lag
    // behind what has arrived. tokio leaves it non-blocking.
    let paho = paho.into_std().map_err(|e| e.to_string())?;
    let mut early = Vec::new();
    let replaced = loop {
        let ours = fd.try_clone().map_err(|e| e.to_string())?;
        let took =
            on_engine_thread(move || shim::take_over_socket(peer.fd, peer.inode, ours.as_fd()))
                .await?;
        if !matches!(took, TakeOver::WritePending) {
            break replaced(took)?;
        }
        // Room for the rest of the packet.
        drain_available(&paho, &mut early)?;
        if Instant::now() >= deadline {
            return Err("the engine's first packet was not written in time".to_owned());
        }
        tokio::time::sleep(RETRY).await;
    };
    // Paho's receive thread may sleep in poll() on the replaced connection: wake it, so
    // that it polls the new one.
    shim::socket_interrupt();
    Ok(Swapped {
        replaced,
        paho,
        early,
    })
}

impl Swapped {
    /// Everything Paho wrote to the replaced connection. It has all reached the endpoint
    /// once the endpoint has acknowledged it all. (Not at its close: child processes
    /// started since may hold Paho's descriptors, which are not close-on-exec, and keep
    /// it open.)
    async fn early(mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        loop {
            match socket::send_queue(self.replaced.as_raw_fd()) {
                Ok(0) => break,
                Ok(_) if Instant::now() < deadline => tokio::time::sleep(RETRY).await,
                Ok(n) => {
                    return Err(format!(
                        "{n} bytes of the engine's first packet did not arrive"
                    ));
                }
                Err(e) => return Err(format!("SIOCOUTQ: {e}")),
            }
        }
        drain_available(&self.paho, &mut self.early)?;
        Ok(self.early)
    }
}

/// Appends what `paho` (non-blocking) has to read now to `early`.
fn drain_available(mut paho: &std::net::TcpStream, early: &mut Vec<u8>) -> Result<(), String> {
    use std::io::Read;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match paho.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => early.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading the engine's first packet: {e}")),
        }
    }
}

/// Writes `bytes` to the non-blocking socket `fd` (which Paho shares: it writes nothing
/// meanwhile, waiting for the CONNACK these bytes ask for).
#[allow(unsafe_code)]
async fn send_all(fd: &OwnedFd, mut bytes: &[u8], deadline: Instant) -> Result<(), String> {
    while !bytes.is_empty() {
        // SAFETY: `fd` is open for the call and `bytes` is valid for its length.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            bytes = &bytes[n.unsigned_abs()..];
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock if Instant::now() < deadline => {
                tokio::time::sleep(RETRY).await;
            }
            std::io::ErrorKind::Interrupted => {}
            _ => return Err(format!("sending the engine's first packet: {e}")),
        }
    }
    Ok(())
}

impl Held {
    /// How the connection ended, from its state once Paho has let go of it. Paho shuts
    /// down its writing side and closes its descriptor; the relay's keeps the socket, so
    /// its state remains: still waiting for the peer's answer to that close (or open) —
    /// the engine ended it (a keep-alive timeout); half closed by the peer — the broker
    /// closed it; closed with an error not yet read — that error. A socket closed without
    /// one was reset, or closed by the broker and then reset when Paho's DISCONNECT
    /// reached a socket the broker had already closed (what Mosquitto's close leads to):
    /// the two cannot be told apart afterwards.
    pub(crate) fn end(&self) -> LinkEnd {
        let failed = |detail: String| LinkEnd::Failed(Failure { detail, tls: None });
        if self.tcp {
            return match tcp_state(&self.fd) {
                Some(TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2) | None => {
                    LinkEnd::EngineClosed
                }
                Some(TCP_CLOSE_WAIT | TCP_LAST_ACK) => LinkEnd::PeerClosed,
                Some(_) => match pending_error(&self.fd) {
                    Some(e) => failed(e.to_string()),
                    None => LinkEnd::PeerEnded,
                },
            };
        }
        // A Unix socket: the peer's close is seen as the end of what there is to read.
        if let Some(e) = pending_error(&self.fd) {
            return failed(e.to_string());
        }
        match peek(&self.fd) {
            Ok(0) => LinkEnd::PeerClosed,
            Ok(_) => LinkEnd::EngineClosed,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => LinkEnd::EngineClosed,
            Err(e) => failed(e.to_string()),
        }
    }
}

/// TCP states of Linux's `tcp_states.h`.
const TCP_ESTABLISHED: u8 = 1;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;

/// The socket's pending error (`SO_ERROR`), which reading it clears.
fn pending_error(fd: &OwnedFd) -> Option<std::io::Error> {
    socket::int_option(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ERROR)
        .filter(|&e| e != 0)
        .map(std::io::Error::from_raw_os_error)
}

/// The TCP state (`TCP_INFO`), on Linux.
#[allow(unsafe_code)]
fn tcp_state(fd: &OwnedFd) -> Option<u8> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: tcp_info is plain data; all zeroes is a valid value.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: `info` and `len` are valid for writes of the sizes given.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(info.tcpi_state)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// Peeks at the socket without waiting: 0 means the peer closed it.
#[allow(unsafe_code)]
fn peek(fd: &OwnedFd) -> std::io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: `byte` is valid for a write of one byte.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::packet_len;

    #[test]
    fn the_first_packet_length_comes_from_its_fixed_header() {
        assert_eq!(packet_len(&[]), Ok(None));
        assert_eq!(packet_len(&[0x10]), Ok(None));
        // One length byte: 2 bytes of header and 12 of the rest.
        assert_eq!(packet_len(&[0x10, 0x0c]), Ok(Some(14)));
        // 200 = 0xC8: two length bytes (0x48 | 0x80, 0x01).
        assert_eq!(packet_len(&[0x10, 0xC8, 0x01]), Ok(Some(203)));
        assert_eq!(packet_len(&[0x10, 0xC8]), Ok(None));
        // Four length bytes, all saying more follows: malformed.
        assert!(packet_len(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF]).is_err());
    }
}
