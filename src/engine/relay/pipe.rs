//! Copying between Paho's side (a Unix socket pair swapped in for its connection to the
//! private endpoint, or that connection itself) and the link to the broker, both ways,
//! and recording how the link ended: the broker's close and reset are passed on to Paho
//! as a close and (on TCP) a reset, Paho's close (its keep-alive timeout, or a
//! DISCONNECT) to the broker as a close.
//!
//! Once one direction has ended the other gets [`GRACE`] to end too, then the link is
//! dropped: a peer that never answers a close (the broker behind a partition) must not
//! hold the relay's sockets and task until TCP gives up on it, many minutes later.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};

pub(crate) use super::dial::Stream;
use crate::TlsErrorKind;

/// How a relayed link ended, first cause first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkEnd {
    /// The broker (or something on the path) closed the connection.
    PeerClosed,
    /// The broker or something on the path closed or reset the connection; which of the
    /// two is not known (a connection handed to the engine, see `handoff`).
    PeerEnded,
    /// The connection to the broker was reset or failed.
    Failed(Failure),
    /// The engine closed its side first: a keep-alive timeout, or a DISCONNECT.
    EngineClosed,
}

/// Why the connection to the broker failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The operating system's or the TLS library's message.
    pub(crate) detail: String,
    /// The kind of a failure of the TLS layer: an alert from the broker, such as its
    /// refusal of the client certificate, which TLS 1.3 sends only after the handshake,
    /// at the first read.
    pub(crate) tls: Option<TlsErrorKind>,
}

impl Failure {
    fn of_io(e: &std::io::Error) -> Failure {
        // OpenSSL's errors reach us wrapped in an io::Error (tokio-openssl); their packed
        // codes say what failed.
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<openssl::ssl::Error>())
            .and_then(openssl::ssl::Error::ssl_error)
            .and_then(|stack| {
                stack
                    .errors()
                    .iter()
                    .find_map(|e| super::super::diagnose::kind_of(e.code()))
            });
        Failure {
            detail: e.to_string(),
            tls,
        }
    }

    fn of_ws(e: &WsError) -> Failure {
        match e {
            WsError::Io(io) => Failure::of_io(io),
            other => Failure {
                detail: other.to_string(),
                tls: None,
            },
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Where a link records its end (one per link).
pub(crate) type EndSlot = Arc<Mutex<Option<LinkEnd>>>;

pub(crate) fn record(slot: &EndSlot, end: LinkEnd) {
    let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
    if s.is_none() {
        *s = Some(end);
    }
}

/// Buffer per direction.
const CHUNK: usize = 64 * 1024;

/// How long one direction may go on once the other has ended: a live peer answers a
/// close within milliseconds, a dead one never does.
const GRACE: Duration = Duration::from_secs(2);

/// How the broker-to-engine direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Closed (or it could not write to Paho any more).
    Closed,
    /// The link to the broker failed: Paho's connection must be reset, now.
    Reset,
}

/// Paho's side of a carried link.
pub(crate) enum EngineSide {
    /// Its connection to the private endpoint.
    Tcp(TcpStream),
    /// One end of a Unix socket pair Paho holds the other of, with what Paho had written
    /// to the endpoint before (see `handoff::pair`).
    Unix(UnixStream, Vec<u8>),
}

/// The writing half of Paho's side.
trait EngineWrite: AsyncWrite + Unpin {
    /// Ends Paho's connection as a failure: a reset where the socket has one.
    fn reset(self) -> Ended;
}

impl EngineWrite for OwnedWriteHalf {
    /// Zero linger, and the write half given up without the shutdown (a FIN) its drop
    /// would send: the socket closes, with an RST, when its read half is dropped.
    fn reset(self) -> Ended {
        let _ = self.as_ref().set_zero_linger();
        self.forget();
        Ended::Reset
    }
}

impl EngineWrite for tokio::net::unix::OwnedWriteHalf {
    /// A Unix socket has no reset: Paho reads the end of the stream, a loss all the same.
    fn reset(self) -> Ended {
        Ended::Reset
    }
}

/// Relays until both directions are done, or one is and the other's grace has passed.
pub(crate) async fn run(paho: EngineSide, upstream: Stream, end: EndSlot) {
    match paho {
        EngineSide::Tcp(paho) => {
            let _ = paho.set_nodelay(true);
            let (read, write) = paho.into_split();
            carry(read, write, upstream, end).await;
        }
        EngineSide::Unix(paho, early) => {
            let (read, write) = paho.into_split();
            carry(
                std::io::Cursor::new(early).chain(read),
                write,
                upstream,
                end,
            )
            .await;
        }
    }
}

async fn carry(
    paho_read: impl AsyncRead + Unpin,
    paho_write: impl EngineWrite,
    upstream: Stream,
    end: EndSlot,
) {
    match upstream {
        Stream::Bytes(stream) => {
            let (up_read, up_write) = tokio::io::split(stream);
            both(
                engine_to_broker(paho_read, up_write, &end),
                broker_to_engine(up_read, paho_write, &end),
                &end,
            )
            .await;
        }
        Stream::Ws(ws) => {
            let (sink, stream) = (*ws).split();
            both(
                engine_to_ws(paho_read, sink, &end),
                ws_to_engine(stream, paho_write, &end),
                &end,
            )
            .await;
        }
    }
}

/// Runs the two directions. When one ends the other gets [`GRACE`]; a reset ends both at
/// once, so that Paho's socket, whose read half `to_broker` owns, is closed now and with
/// the zero linger `to_engine` set on it: a reset, not a close.
///
/// A failed write to the broker is recorded only if the other direction recorded nothing:
/// the broker's reason is in what is left to read. (A TLS 1.3 broker refuses a client
/// certificate with an alert after the handshake and then closes; the CONNECT written
/// meanwhile meets a reset, while the alert waits in the receive buffer.)
async fn both(
    to_broker: impl Future<Output = Option<Failure>>,
    to_engine: impl Future<Output = Ended>,
    end: &EndSlot,
) {
    tokio::pin!(to_broker, to_engine);
    let write_failed = tokio::select! {
        failed = &mut to_broker => {
            let _ = tokio::time::timeout(GRACE, to_engine).await;
            failed
        }
        ended = &mut to_engine => match ended {
            Ended::Closed => tokio::time::timeout(GRACE, to_broker).await.ok().flatten(),
            Ended::Reset => None,
        },
    };
    if let Some(failure) = write_failed {
        record(end, LinkEnd::Failed(failure));
    }
}

/// Paho to the broker. Returns how writing to the broker failed, if it did; see [`both`].
async fn engine_to_broker(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    end: &EndSlot,
) -> Option<Failure> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record(end, LinkEnd::EngineClosed);
                let _ = to.shutdown().await;
                return None;
            }
            Ok(n) => {
                if let Err(e) = to.write_all(&buf[..n]).await {
                    return Some(Failure::of_io(&e));
                }
            }
        }
    }
}

async fn broker_to_engine(
    mut from: impl AsyncRead + Unpin,
    mut to: impl EngineWrite,
    end: &EndSlot,
) -> Ended {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                record(end, LinkEnd::PeerClosed);
                let _ = to.shutdown().await;
                return Ended::Closed;
            }
            Err(e) => {
                record(end, LinkEnd::Failed(Failure::of_io(&e)));
                return to.reset();
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    record(end, LinkEnd::EngineClosed);
                    return Ended::Closed;
                }
            }
        }
    }
}

/// Paho to the broker over a WebSocket; returns as [`engine_to_broker`] does.
async fn engine_to_ws<S>(
    mut from: impl AsyncRead + Unpin,
    mut to: S,
    end: &EndSlot,
) -> Option<Failure>
where
    S: futures_util::Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                record(end, LinkEnd::EngineClosed);
                let _ = to.send(WsMessage::Close(None)).await;
                let _ = to.close().await;
                return None;
            }
            Ok(n) => {
                let frame = WsMessage::Binary(buf[..n].to_vec().into());
                if let Err(e) = to.send(frame).await {
                    return Some(Failure::of_ws(&e));
                }
            }
        }
    }
}

/// The broker to Paho over a WebSocket. Mosquitto sends every MQTT packet as a frame of
/// its own; the frames already in (in the WebSocket layer's buffer, or readable without
/// waiting) are written to Paho together, about [`CHUNK`] bytes at most: one write, and one
/// wake-up of Paho's receive thread, for a run of small messages instead of one each. A
/// lone frame is written at once. Over plain TCP the look for more costs no system call
/// when the socket has nothing more: tokio clears a socket's readiness after a short read
/// (`PollEvented::poll_read`). Over TLS it may cost a read that finds nothing.
async fn ws_to_engine<S>(mut from: S, mut to: impl EngineWrite, end: &EndSlot) -> Ended
where
    S: futures_util::Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let mut batch: Vec<u8> = Vec::new();
    let mut next = from.next().await;
    loop {
        let step = match next {
            None => Step::Closed,
            Some(item) => take(item, &mut batch),
        };
        // (Not a let chain: those need Rust 1.88, and the crate's MSRV is 1.85.)
        if matches!(step, Step::More) && batch.len() < CHUNK {
            let more = std::future::poll_fn(|cx| Poll::Ready(from.poll_next_unpin(cx))).await;
            if let Poll::Ready(item) = more {
                next = item;
                continue;
            }
        }
        if let Step::Failed(failure) = &step {
            record(end, LinkEnd::Failed(failure.clone()));
        }
        let whole = match &step {
            Step::Whole(data) => &data[..],
            _ => &[],
        };
        for bytes in [&batch[..], whole] {
            if !bytes.is_empty() && to.write_all(bytes).await.is_err() {
                record(end, LinkEnd::EngineClosed);
                return Ended::Closed;
            }
        }
        batch.clear();
        match step {
            Step::More | Step::Whole(_) => next = from.next().await,
            Step::Closed => break,
            Step::Failed(_) => return to.reset(),
        }
    }
    record(end, LinkEnd::PeerClosed);
    let _ = to.shutdown().await;
    Ended::Closed
}

/// What one item of the broker's WebSocket stream means for the link.
enum Step {
    /// Go on reading (a message's bytes, if any, were added to the batch).
    More,
    /// A message of [`CHUNK`] bytes or more: written as it is (after the batch before
    /// it), without a copy; the batch stays under twice `CHUNK`.
    Whole(tokio_tungstenite::tungstenite::Bytes),
    /// The broker closed the WebSocket (or the TCP connection under it).
    Closed,
    /// The link failed.
    Failed(Failure),
}

/// Adds a binary message's bytes to `batch` (or hands a large one on as it is), and
/// says how the link goes on.
fn take(item: Result<WsMessage, WsError>, batch: &mut Vec<u8>) -> Step {
    match item {
        Ok(WsMessage::Binary(data)) if data.len() >= CHUNK => Step::Whole(data),
        Ok(WsMessage::Binary(data)) => {
            batch.extend_from_slice(&data);
            Step::More
        }
        Ok(WsMessage::Close(_)) => Step::Closed,
        // Pings are answered by the WebSocket layer; text frames carry no MQTT.
        Ok(_) => Step::More,
        // The TCP connection was closed without a Close frame: a close, as on a plain
        // link (tungstenite calls it a reset, but no RST was received).
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Step::Closed,
        Err(e) => Step::Failed(Failure::of_ws(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair of TCP streams on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (far, _) = listener.accept().await.unwrap();
        (near, far)
    }

    /// A relayed link: (Paho's end, the broker's end, the relay's task, its end slot).
    async fn link() -> (TcpStream, TcpStream, tokio::task::JoinHandle<()>, EndSlot) {
        let (paho, relay_paho) = pair().await;
        let (relay_up, broker) = pair().await;
        let end = EndSlot::default();
        let task = tokio::spawn(run(
            EngineSide::Tcp(relay_paho),
            Stream::Bytes(Box::new(relay_up)),
            end.clone(),
        ));
        (paho, broker, task, end)
    }

    fn end_of(slot: &EndSlot) -> Option<LinkEnd> {
        slot.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_broker_reset_reaches_paho_as_a_reset() {
        let (mut paho, broker, task, end) = link().await;
        broker.set_zero_linger().unwrap();
        drop(broker);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), paho.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(end_of(&end), Some(LinkEnd::Failed(Failure { ref detail, tls: None })) if detail.contains("reset")),
            "{:?}",
            end_of(&end)
        );
    }

    #[tokio::test]
    async fn a_broker_close_reaches_paho_as_a_close() {
        let (mut paho, broker, task, end) = link().await;
        drop(broker);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), paho.read(&mut buf))
            .await
            .unwrap();
        assert_eq!(read.unwrap(), 0);
        drop(paho);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(end_of(&end), Some(LinkEnd::PeerClosed));
    }

    /// Paho closes; the broker reads the close but never closes its side (as behind a
    /// partition): the relay lets go of the link after the grace.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_close_is_dropped_after_the_grace() {
        let (paho, mut broker, task, end) = link().await;
        drop(paho);
        let mut buf = [0u8; 16];
        assert_eq!(broker.read(&mut buf).await.unwrap(), 0);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(GRACE * 2, task)
            .await
            .expect("the relay held the link beyond its grace")
            .unwrap();
        assert!(started.elapsed() >= GRACE);
        assert_eq!(end_of(&end), Some(LinkEnd::EngineClosed));
        // The relay's socket is closed: the broker's next read ends.
        let read = tokio::time::timeout(Duration::from_secs(5), broker.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    }

    /// Paho's side for [`ws_to_engine`]: records every write it is given.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.0.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl EngineWrite for Recorder {
        fn reset(self) -> Ended {
            Ended::Reset
        }
    }

    fn binary(bytes: &[u8]) -> Result<WsMessage, WsError> {
        Ok(WsMessage::Binary(bytes.to_vec().into()))
    }

    /// A hundred small messages already in reach Paho in one write, in order.
    #[tokio::test]
    async fn ws_messages_already_in_reach_paho_in_one_write() {
        let messages: Vec<_> = (0..100u8).map(|i| binary(&[i; 64])).collect();
        let paho = Recorder::default();
        let end = EndSlot::default();
        let ended = ws_to_engine(futures_util::stream::iter(messages), paho.clone(), &end).await;
        assert_eq!(ended, Ended::Closed);
        assert_eq!(end_of(&end), Some(LinkEnd::PeerClosed));
        let writes = paho.writes();
        assert_eq!(writes.len(), 1);
        let expected: Vec<u8> = (0..100u8).flat_map(|i| [i; 64]).collect();
        assert_eq!(writes[0], expected);
    }

    /// A message alone is written at once, without waiting for another.
    #[tokio::test]
    async fn a_lone_ws_message_is_written_at_once() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let from = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let paho = Recorder::default();
        let end = EndSlot::default();
        let relay = tokio::spawn({
            let (paho, end) = (paho.clone(), end.clone());
            async move { ws_to_engine(from, paho, &end).await }
        });
        tx.send(binary(b"first")).unwrap();
        let written = async {
            while paho.writes().is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), written)
            .await
            .expect("the message waited for another");
        assert_eq!(paho.writes(), vec![b"first".to_vec()]);
        drop(tx);
        assert_eq!(relay.await.unwrap(), Ended::Closed);
    }

    /// A batch ends with the message that takes it to [`CHUNK`] or past it, a message of
    /// `CHUNK` or more goes as it is after the batch before it, and every byte arrives in
    /// order.
    #[tokio::test]
    async fn large_ws_messages_and_batches_keep_the_bytes_in_order() {
        let sizes = [100, CHUNK - 10, 3 * CHUNK, 7, CHUNK, 1];
        let messages: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let paho = Recorder::default();
        let end = EndSlot::default();
        let from = futures_util::stream::iter(messages.iter().map(|m| binary(m)));
        ws_to_engine(from, paho.clone(), &end).await;
        let writes = paho.writes();
        let lens: Vec<usize> = writes.iter().map(Vec::len).collect();
        // 100 + (CHUNK - 10) passes CHUNK; 3 * CHUNK as it is; 7, then CHUNK as it is;
        // 1 is the last.
        assert_eq!(lens, [CHUNK + 90, 3 * CHUNK, 7, CHUNK, 1]);
        assert_eq!(writes.concat(), messages.concat());
    }

    /// What came before a failure of the link reaches Paho; the failure is recorded, and
    /// Paho's side is reset after those bytes.
    #[tokio::test]
    async fn ws_bytes_before_a_failure_reach_paho_then_the_failure() {
        let failure = WsError::Io(std::io::Error::other("link broke"));
        let messages = vec![binary(b"one"), binary(b"two"), Err(failure)];
        let paho = Recorder::default();
        let end = EndSlot::default();
        let ended = ws_to_engine(futures_util::stream::iter(messages), paho.clone(), &end).await;
        assert_eq!(ended, Ended::Reset);
        assert_eq!(paho.writes(), vec![b"onetwo".to_vec()]);
        assert!(
            matches!(end_of(&end), Some(LinkEnd::Failed(Failure { ref detail, .. })) if detail.contains("link broke")),
            "{:?}",
            end_of(&end)
        );
    }
}
