//! A scripted fake broker for hostile-input tests: a TCP listener on a free 127.0.0.1 port
//! that the test drives step by step, sending what a real broker never would (invalid
//! topics, truncated packets, bad remaining lengths, acks for unknown packet ids, …).
//!
//! ```ignore
//! let fb = FakeBroker::start().await;
//! let client = Client::builder("127.0.0.1").port(fb.port()).build()?;
//! let (conn, mut fc) = tokio::join!(client.connect(), async {
//!     let mut fc = fb.accept().await;          // reads and parses the client's CONNECT
//!     fc.send_connack(false, 0).await.unwrap(); // v3 or v5 encoding, from the CONNECT
//!     fc
//! });
//! fc.send(&packets::publish(b"a/\xC3\x28", 0, 0, b"x", false, false, fc.no_props()))
//!     .await
//!     .unwrap();
//! ```
//!
//! It runs on the test's own tokio runtime (tests using it are async). Each accepted
//! connection gets a reader task that parses the client's packets with the fault proxy's
//! [`Parser`] into [`Packet`]s and, while [`FakeConn::answer_pings`] is on (the default),
//! answers PINGREQ itself. Dropping the [`FakeBroker`] closes the listener; dropping a
//! [`FakeConn`] ends its reader and closes the socket.
//!
//! [`packets`] has byte-exact MQTT 3.1.1 / 5.0 encoders, including malformed packets.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::fault_proxy::{Direction, Packet, PacketType, Parser};

/// How long [`FakeBroker::accept`] waits for a client and its CONNECT.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The fake broker's listener. See the module docs.
///
/// A background task accepts every connection and reads its first packet: a CONNECT
/// with the MQTT protocol name queues the connection for [`Self::accept`]; anything else
/// (the crate's TLS probe after a failed connect, a port scan) is closed at once and
/// counted in [`Self::rejected`], as a real broker would.
pub struct FakeBroker {
    port: u16,
    queue: tokio::sync::Mutex<mpsc::UnboundedReceiver<FakeConn>>,
    counts: Arc<Counts>,
    acceptor: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    rejected: AtomicUsize,
}

impl FakeBroker {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake broker: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let counts = Arc::new(Counts::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let acceptor = tokio::spawn(accept_loop(listener, counts.clone(), tx));
        FakeBroker {
            port,
            queue: tokio::sync::Mutex::new(rx),
            counts,
            acceptor,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// TCP connections accepted so far (MQTT or not).
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed because their first packet was not an MQTT CONNECT.
    pub fn rejected(&self) -> usize {
        self.counts.rejected.load(Ordering::SeqCst)
    }

    /// The next client that connected and sent a CONNECT; panics if none within
    /// [`ACCEPT_TIMEOUT`].
    #[track_caller]
    pub fn accept(&self) -> impl std::future::Future<Output = FakeConn> + '_ {
        let loc = std::panic::Location::caller();
        async move {
            match self.try_accept(ACCEPT_TIMEOUT).await {
                Some(c) => c,
                None => panic!(
                    "fake broker: no client connected and sent CONNECT within {ACCEPT_TIMEOUT:?} \
                     (at {loc}; {} TCP connections, {} rejected)",
                    self.accepted(),
                    self.rejected()
                ),
            }
        }
    }

    /// Connects `client`, answering its CONNECT with CONNACK 0 (no session present).
    pub async fn connect(&self, client: &aiomqtt::Client) -> (aiomqtt::Connection, FakeConn) {
        let (conn, fc) = tokio::join!(client.connect(), async {
            let fc = self.accept().await;
            fc.send_connack(false, 0).await.expect("send CONNACK");
            fc
        });
        (conn.expect("connect to the fake broker"), fc)
    }

    /// Like [`Self::accept`], `None` if no client connects and sends a CONNECT within `dur`.
    pub async fn try_accept(&self, dur: Duration) -> Option<FakeConn> {
        let mut queue = self.queue.lock().await;
        tokio::time::timeout(dur, queue.recv()).await.ok().flatten()
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        // Closes the listener and every connection not handed out yet.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    counts: Arc<Counts>,
    tx: mpsc::UnboundedSender<FakeConn>,
) {
    let mut greeting = tokio::task::JoinSet::new();
    let mut id = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                id += 1;
                counts.accepted.fetch_add(1, Ordering::SeqCst);
                let (tx, counts) = (tx.clone(), counts.clone());
                greeting.spawn(async move {
                    let mut conn = FakeConn::spawn(id, stream);
                    match conn.recv_packet(ACCEPT_TIMEOUT).await {
                        Some(p) if is_mqtt_connect(&p) => {
                            conn.connect = ConnectInfo::parse(p);
                            let _ = tx.send(conn);
                        }
                        // Dropped: the socket closes.
                        _ => {
                            counts.rejected.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
            Some(_) = greeting.join_next(), if !greeting.is_empty() => {}
        }
    }
}

/// A CONNECT whose protocol name is `MQTT` (3.1.1, 5) or `MQIsdp` (3.1).
fn is_mqtt_connect(p: &Packet) -> bool {
    p.kind == PacketType::Connect
        && (p.body.starts_with(b"\x00\x04MQTT") || p.body.starts_with(b"\x00\x06MQIsdp"))
}

/// What the client's CONNECT said.
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// Protocol level: 3 (3.1), 4 (3.1.1) or 5.
    pub level: u8,
    pub client_id: String,
    /// Clean session (3.x) / clean start (5).
    pub clean: bool,
    pub keepalive: u16,
    pub will: bool,
    /// The CONNECT itself.
    pub packet: Option<Packet>,
}

impl ConnectInfo {
    fn parse(p: Packet) -> ConnectInfo {
        let flags = p.connect_flags().unwrap_or(0);
        ConnectInfo {
            level: p.protocol.unwrap_or(0),
            client_id: p.client_id().unwrap_or_default(),
            clean: flags & 0x02 != 0,
            keepalive: p.keepalive().unwrap_or(0),
            will: flags & 0x04 != 0,
            packet: Some(p),
        }
    }
}

/// What the reader task reports.
#[derive(Debug)]
pub enum Event {
    /// A complete packet from the client (auto-answered PINGREQs are only in the log).
    Packet(Packet),
    /// The client closed its side (FIN).
    Closed,
    /// The socket failed (e.g. the client reset it).
    Error(io::ErrorKind),
    /// The client sent a remaining length longer than 4 bytes.
    Malformed,
}

struct ConnShared {
    answer_pings: AtomicBool,
    log: Mutex<Vec<Packet>>,
    seq: AtomicU64,
}

type Writer = Arc<tokio::sync::Mutex<Option<OwnedWriteHalf>>>;

/// One accepted client connection. See the module docs.
pub struct FakeConn {
    /// Connection number on its [`FakeBroker`], from 1.
    pub id: usize,
    /// The client's CONNECT.
    pub connect: ConnectInfo,
    writer: Writer,
    events: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<Packet>,
    ended: Option<Event>,
    shared: Arc<ConnShared>,
    reader: Option<JoinHandle<()>>,
}

impl FakeConn {
    fn spawn(id: usize, stream: tokio::net::TcpStream) -> FakeConn {
        let (r, w) = stream.into_split();
        let writer: Writer = Arc::new(tokio::sync::Mutex::new(Some(w)));
        let shared = Arc::new(ConnShared {
            answer_pings: AtomicBool::new(true),
            log: Mutex::new(Vec::new()),
            seq: AtomicU64::new(1),
        });
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(id, r, writer.clone(), shared.clone(), tx));
        FakeConn {
            id,
            connect: ConnectInfo {
                level: 0,
                client_id: String::new(),
                clean: false,
                keepalive: 0,
                will: false,
                packet: None,
            },
            writer,
            events,
            pending: VecDeque::new(),
            ended: None,
            shared,
            reader: Some(reader),
        }
    }

    /// `true` if the client's CONNECT asked for MQTT 5.
    pub fn v5(&self) -> bool {
        self.connect.level == 5
    }

    /// The `v5_props` argument of the [`packets`] encoders for a packet without properties:
    /// `None` on 3.x, `Some(&[])` on 5.
    pub fn no_props(&self) -> Option<&'static [u8]> {
        self.v5().then_some(&[][..])
    }

    /// The `v5` argument of the ack encoders for a successful ack: `None` on 3.x,
    /// `Some((0x00, &[]))` on 5.
    pub fn ack_ok(&self) -> Option<(u8, &'static [u8])> {
        self.v5().then_some((0x00, &[][..]))
    }

    /// Writes raw bytes.
    pub async fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut w = self.writer.lock().await;
        match w.as_mut() {
            Some(w) => {
                w.write_all(bytes).await?;
                w.flush().await
            }
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "fake conn closed",
            )),
        }
    }

    /// Sends CONNACK, encoded for the CONNECT's protocol level (v5 without properties).
    pub async fn send_connack(&self, session_present: bool, code: u8) -> io::Result<()> {
        self.send(&packets::connack(session_present, code, self.no_props()))
            .await
    }

    /// Sends a v5 CONNACK with these property bytes (see the `prop_*` encoders).
    pub async fn send_connack_props(
        &self,
        session_present: bool,
        code: u8,
        props: &[u8],
    ) -> io::Result<()> {
        assert!(self.v5(), "CONNACK properties need MQTT 5");
        self.send(&packets::connack(session_present, code, Some(props)))
            .await
    }

    /// Whether the reader answers PINGREQ with PINGRESP by itself (default on).
    pub fn answer_pings(&self, on: bool) {
        self.shared.answer_pings.store(on, Ordering::SeqCst);
    }

    /// The next event (a buffered packet first), `None` if nothing happens within `dur`.
    /// After the connection ended, returns that end again at once.
    pub async fn next_event(&mut self, dur: Duration) -> Option<Event> {
        if let Some(p) = self.pending.pop_front() {
            return Some(Event::Packet(p));
        }
        if let Some(end) = &self.ended {
            return Some(clone_end(end));
        }
        match tokio::time::timeout(dur, self.events.recv()).await {
            Ok(Some(Event::Packet(p))) => Some(Event::Packet(p)),
            Ok(Some(end)) => {
                self.ended = Some(clone_end(&end));
                Some(end)
            }
            // The reader is gone without reporting: treat as closed.
            Ok(None) => {
                self.ended = Some(Event::Closed);
                Some(Event::Closed)
            }
            Err(_) => None,
        }
    }

    /// The next packet from the client, `None` if none arrives within `dur` or the
    /// connection ended.
    pub async fn recv_packet(&mut self, dur: Duration) -> Option<Packet> {
        match self.next_event(dur).await? {
            Event::Packet(p) => Some(p),
            _ => None,
        }
    }

    /// Waits for the next packet of `kind`; packets of other kinds that arrive first stay
    /// buffered for later calls. Panics (with the packet log) if none arrives within `dur`.
    #[track_caller]
    pub fn expect(
        &mut self,
        kind: PacketType,
        dur: Duration,
    ) -> impl std::future::Future<Output = Packet> + '_ {
        let loc = std::panic::Location::caller();
        async move {
            match self.try_expect(kind, dur).await {
                Some(p) => p,
                None => panic!(
                    "fake broker: expected {kind:?} from the client within {dur:?} (at {loc}); \
                     connection end: {:?}; packets received:\n{}",
                    self.ended,
                    self.trace()
                ),
            }
        }
    }

    /// Like [`Self::expect`], `None` instead of a panic.
    pub async fn try_expect(&mut self, kind: PacketType, dur: Duration) -> Option<Packet> {
        if let Some(i) = self.pending.iter().position(|p| p.kind == kind) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + dur;
        let mut skipped = Vec::new();
        let found = loop {
            if self.ended.is_some() {
                break None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(Event::Packet(p))) if p.kind == kind => break Some(p),
                Ok(Some(Event::Packet(p))) => skipped.push(p),
                Ok(Some(end)) => self.ended = Some(end),
                Ok(None) => self.ended = Some(Event::Closed),
                Err(_) => break None,
            }
        };
        self.pending.extend(skipped);
        found
    }

    /// Waits until the client closes the connection (FIN or error); `false` if it is still
    /// open after `dur`. Packets that arrive meanwhile stay buffered.
    pub async fn peer_closed(&mut self, dur: Duration) -> bool {
        let deadline = Instant::now() + dur;
        while self.ended.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(Event::Packet(p))) => self.pending.push_back(p),
                Ok(Some(end)) => self.ended = Some(end),
                Ok(None) => self.ended = Some(Event::Closed),
                Err(_) => return false,
            }
        }
        true
    }

    /// How the connection ended, if the reader saw it end.
    pub fn ended(&self) -> Option<&Event> {
        self.ended.as_ref()
    }

    /// Sends a FIN (shuts down the write side); the reader keeps reading.
    pub async fn close_fin(&self) {
        if let Some(w) = self.writer.lock().await.as_mut() {
            let _ = w.shutdown().await;
        }
    }

    /// Closes with `SO_LINGER 0`: the client gets a TCP RST.
    pub async fn close_rst(&mut self) {
        if let Some(w) = self.writer.lock().await.take() {
            let _ = w.as_ref().set_zero_linger();
            // Dropping a write half would send a FIN first: forget() does not.
            w.forget();
        }
        if let Some(reader) = self.reader.take() {
            reader.abort();
            // Returns once the task (and its read half, the socket's last owner) is dropped.
            let _ = reader.await;
        }
        if self.ended.is_none() {
            self.ended = Some(Event::Error(io::ErrorKind::ConnectionReset));
        }
    }

    /// Every packet received from the client so far (including auto-answered PINGREQs).
    pub fn log(&self) -> Vec<Packet> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Received packets of one kind.
    pub fn received(&self, kind: PacketType) -> Vec<Packet> {
        self.log().into_iter().filter(|p| p.kind == kind).collect()
    }

    /// The log as text, one packet a line (for assertion messages).
    pub fn trace(&self) -> String {
        let mut s = String::new();
        for p in self.shared.log.lock().unwrap().iter() {
            let _ = writeln!(s, "{p}");
        }
        s
    }
}

impl Drop for FakeConn {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

fn clone_end(e: &Event) -> Event {
    match e {
        Event::Packet(p) => Event::Packet(p.clone()),
        Event::Closed => Event::Closed,
        Event::Error(k) => Event::Error(*k),
        Event::Malformed => Event::Malformed,
    }
}

async fn read_loop(
    conn: usize,
    mut r: OwnedReadHalf,
    writer: Writer,
    shared: Arc<ConnShared>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut parser = Parser::default();
    let mut level = 0u8;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(Event::Closed);
                return;
            }
            Ok(n) => n,
            Err(e) => {
                let _ = tx.send(Event::Error(e.kind()));
                return;
            }
        };
        let mut done = Vec::new();
        parser.feed(
            &buf[..n],
            |_| false,
            |first, len, body| done.push((first, len, body)),
        );
        for (first, len, body) in done {
            let kind = PacketType::from_nibble(first >> 4);
            if kind == PacketType::Connect {
                if let Some(l) = body
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                    .and_then(|nl| body.get(2 + nl))
                {
                    level = *l;
                }
            }
            let p = Packet {
                seq: shared.seq.fetch_add(1, Ordering::SeqCst),
                conn,
                dir: Direction::ClientToBroker,
                kind,
                flags: first & 0x0f,
                remaining_len: len,
                body,
                protocol: (level != 0).then_some(level),
                at: Instant::now(),
            };
            shared.log.lock().unwrap().push(p.clone());
            if kind == PacketType::Pingreq && shared.answer_pings.load(Ordering::SeqCst) {
                if let Some(w) = writer.lock().await.as_mut() {
                    let _ = w.write_all(&packets::pingresp()).await;
                }
                continue;
            }
            let _ = tx.send(Event::Packet(p));
        }
        if parser.is_broken() {
            let _ = tx.send(Event::Malformed);
            return;
        }
    }
}

/// Byte-exact MQTT 3.1.1 and 5.0 encoders, well-formed and malformed.
///
/// `v5_props` / `v5` arguments: `None` encodes the 3.1.1 form; `Some(..)` the 5.0 form with
/// those property bytes (`Some(&[])` for none). Build properties with the `prop_*` functions.
pub mod packets {
    /// Appends `n` as an MQTT variable byte integer (1–4 bytes). Panics above 268 435 455.
    pub fn varint(mut n: usize, out: &mut Vec<u8>) {
        assert!(n <= 268_435_455, "variable byte integer too large: {n}");
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    /// Appends a length-prefixed string (or binary data). Panics above 65 535 bytes.
    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        let len = u16::try_from(s.len()).expect("string longer than 65535 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(s);
    }

    /// A packet: first byte, remaining length, `body`.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![first];
        varint(body.len(), &mut p);
        p.extend_from_slice(body);
        p
    }

    fn props(v5_props: Option<&[u8]>, out: &mut Vec<u8>) {
        if let Some(props) = v5_props {
            varint(props.len(), out);
            out.extend_from_slice(props);
        }
    }

    /// CONNACK: session present flag and return code (3.1.1) / reason code (5).
    pub fn connack(session_present: bool, code: u8, v5_props: Option<&[u8]>) -> Vec<u8> {
        let mut b = vec![u8::from(session_present), code];
        props(v5_props, &mut b);
        packet(0x20, &b)
    }

    /// PUBLISH. `packet_id` is written only for `qos` > 0 (any `qos` value is encoded as
    /// given, so 3 makes a malformed packet).
    pub fn publish(
        topic: &[u8],
        qos: u8,
        packet_id: u16,
        payload: &[u8],
        dup: bool,
        retain: bool,
        v5_props: Option<&[u8]>,
    ) -> Vec<u8> {
        let first = 0x30 | (u8::from(dup) << 3) | ((qos & 0x03) << 1) | u8::from(retain);
        let mut b = Vec::new();
        string(topic, &mut b);
        if qos > 0 {
            b.extend_from_slice(&packet_id.to_be_bytes());
        }
        props(v5_props, &mut b);
        b.extend_from_slice(payload);
        packet(first, &b)
    }

    fn ack(first: u8, packet_id: u16, v5: Option<(u8, &[u8])>) -> Vec<u8> {
        let mut b = packet_id.to_be_bytes().to_vec();
        if let Some((reason, p)) = v5 {
            b.push(reason);
            props(Some(p), &mut b);
        }
        packet(first, &b)
    }

    /// PUBACK; on 5 always with reason code and property length.
    pub fn puback(packet_id: u16, v5: Option<(u8, &[u8])>) -> Vec<u8> {
        ack(0x40, packet_id, v5)
    }

    /// PUBREC.
    pub fn pubrec(packet_id: u16, v5: Option<(u8, &[u8])>) -> Vec<u8> {
        ack(0x50, packet_id, v5)
    }

    /// PUBREL (fixed-header flags 0b0010).
    pub fn pubrel(packet_id: u16, v5: Option<(u8, &[u8])>) -> Vec<u8> {
        ack(0x62, packet_id, v5)
    }

    /// PUBCOMP.
    pub fn pubcomp(packet_id: u16, v5: Option<(u8, &[u8])>) -> Vec<u8> {
        ack(0x70, packet_id, v5)
    }

    /// SUBACK with one code per filter (granted QoS / 0x80 on 3.1.1, reason codes on 5).
    pub fn suback(packet_id: u16, codes: &[u8], v5_props: Option<&[u8]>) -> Vec<u8> {
        let mut b = packet_id.to_be_bytes().to_vec();
        props(v5_props, &mut b);
        b.extend_from_slice(codes);
        packet(0x90, &b)
    }

    /// UNSUBACK. On 3.1.1 (`v5_props` `None`) it has no codes: `codes` must be empty.
    pub fn unsuback(packet_id: u16, codes: &[u8], v5_props: Option<&[u8]>) -> Vec<u8> {
        assert!(
            v5_props.is_some() || codes.is_empty(),
            "a 3.1.1 UNSUBACK carries no reason codes"
        );
        let mut b = packet_id.to_be_bytes().to_vec();
        props(v5_props, &mut b);
        b.extend_from_slice(codes);
        packet(0xB0, &b)
    }

    /// An MQTT 5 DISCONNECT with a reason code and property bytes.
    pub fn disconnect_v5(reason: u8, props_bytes: &[u8]) -> Vec<u8> {
        let mut b = vec![reason];
        props(Some(props_bytes), &mut b);
        packet(0xE0, &b)
    }

    /// PINGRESP.
    pub fn pingresp() -> Vec<u8> {
        vec![0xD0, 0x00]
    }

    /// Property 0x1F, Reason String.
    pub fn prop_reason_string(s: &str) -> Vec<u8> {
        let mut b = vec![0x1F];
        string(s.as_bytes(), &mut b);
        b
    }

    /// Property 0x26, User Property (a key/value string pair).
    pub fn prop_user(key: &str, value: &str) -> Vec<u8> {
        let mut b = vec![0x26];
        string(key.as_bytes(), &mut b);
        string(value.as_bytes(), &mut b);
        b
    }

    /// Property 0x1C, Server Reference.
    pub fn prop_server_reference(s: &str) -> Vec<u8> {
        let mut b = vec![0x1C];
        string(s.as_bytes(), &mut b);
        b
    }

    /// Property 0x23, Topic Alias.
    pub fn prop_topic_alias(alias: u16) -> Vec<u8> {
        let mut b = vec![0x23];
        b.extend_from_slice(&alias.to_be_bytes());
        b
    }

    // ---- Malformed ------------------------------------------------------------------------

    /// A packet whose remaining length promises `promised` bytes but which carries only
    /// `sent` (send it, then close with a FIN).
    pub fn truncated(first: u8, promised: usize, sent: &[u8]) -> Vec<u8> {
        assert!(sent.len() < promised, "not truncated");
        let mut p = vec![first];
        varint(promised, &mut p);
        p.extend_from_slice(sent);
        p
    }

    /// `first` followed by a remaining length of 5 bytes (`FF FF FF FF 7F`; MQTT allows at
    /// most 4).
    pub fn bad_remaining_length(first: u8) -> Vec<u8> {
        vec![first, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]
    }

    /// A packet of a reserved type: `first` is 0x00 (reserved in every version) or 0xF0
    /// (reserved in 3.1.1, AUTH in 5), with a remaining length of 0.
    pub fn unknown_type(first: u8) -> Vec<u8> {
        vec![first, 0x00]
    }

    /// Garbage where a CONNACK belongs: what a web server answers. Its first byte, 0x48,
    /// reads as a PUBACK with reserved flags 0b1000 (malformed), then a remaining length
    /// of 0x54 = 84 bytes that never all arrive.
    pub const GARBAGE: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
}
