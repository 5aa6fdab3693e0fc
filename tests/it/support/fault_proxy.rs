//! A TCP proxy between a client and the broker, controlled by the test: pass through, cut
//! (RST or FIN), blackhole one or both directions, delay, refuse new connections, cut at the
//! n-th packet of a given MQTT type, and record the MQTT packet trace.
//!
//! It runs on its own small tokio runtime (one worker thread), so it keeps forwarding even if
//! the test blocks its own runtime, and works from sync tests too. Dropping the proxy ends
//! every task and closes every socket.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Bytes of each packet's variable header + payload kept in [`Packet::body`].
pub const BODY_CAP: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToBroker,
    BrokerToClient,
}

impl Direction {
    fn idx(self) -> usize {
        match self {
            Direction::ClientToBroker => 0,
            Direction::BrokerToClient => 1,
        }
    }
    fn arrow(self) -> &'static str {
        match self {
            Direction::ClientToBroker => "C->B",
            Direction::BrokerToClient => "B->C",
        }
    }
}

/// MQTT control packet type (high nibble of the first byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    Reserved,
    Connect,
    Connack,
    Publish,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Subscribe,
    Suback,
    Unsubscribe,
    Unsuback,
    Pingreq,
    Pingresp,
    Disconnect,
    Auth,
}

impl PacketType {
    pub fn from_nibble(n: u8) -> PacketType {
        use PacketType::*;
        match n & 0x0f {
            1 => Connect,
            2 => Connack,
            3 => Publish,
            4 => Puback,
            5 => Pubrec,
            6 => Pubrel,
            7 => Pubcomp,
            8 => Subscribe,
            9 => Suback,
            10 => Unsubscribe,
            11 => Unsuback,
            12 => Pingreq,
            13 => Pingresp,
            14 => Disconnect,
            15 => Auth,
            _ => Reserved,
        }
    }
}

/// How connections are cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutMode {
    /// `SO_LINGER 0` then close: both peers get a TCP RST.
    Rst,
    /// Graceful: both peers get a FIN (the proxy then drains and closes).
    Fin,
}

/// One MQTT control packet seen by the proxy (recorded once its last byte has been read,
/// just before that chunk is forwarded; data held by a blackhole is recorded when released,
/// and the packet a `cut_on` rule stops is not recorded).
#[derive(Clone, Debug)]
pub struct Packet {
    /// Order over the proxy's lifetime (all connections, both directions).
    pub seq: u64,
    /// Connection number, from 1, in accept order.
    pub conn: usize,
    pub dir: Direction,
    pub kind: PacketType,
    /// Low nibble of the first byte (PUBLISH: DUP 0x8, QoS 0x6, RETAIN 0x1).
    pub flags: u8,
    pub remaining_len: usize,
    /// Variable header + payload, truncated to [`BODY_CAP`] bytes.
    pub body: Vec<u8>,
    /// Protocol level of this connection's CONNECT (3 = 3.1, 4 = 3.1.1, 5 = 5.0), if seen.
    pub protocol: Option<u8>,
    pub at: Instant,
}

impl Packet {
    pub fn is_v5(&self) -> bool {
        self.protocol == Some(5)
    }
    pub fn dup(&self) -> bool {
        self.kind == PacketType::Publish && self.flags & 0x08 != 0
    }
    pub fn qos(&self) -> u8 {
        if self.kind == PacketType::Publish {
            (self.flags >> 1) & 0x03
        } else {
            0
        }
    }
    pub fn retain(&self) -> bool {
        self.kind == PacketType::Publish && self.flags & 0x01 != 0
    }
    /// PUBLISH topic.
    pub fn topic(&self) -> Option<String> {
        if self.kind != PacketType::Publish {
            return None;
        }
        let n = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize;
        let t = self.body.get(2..2 + n)?;
        Some(String::from_utf8_lossy(t).into_owned())
    }
    /// Packet identifier: PUBLISH with QoS > 0, PUBACK/PUBREC/PUBREL/PUBCOMP,
    /// (UN)SUBSCRIBE and (UN)SUBACK.
    pub fn packet_id(&self) -> Option<u16> {
        use PacketType::*;
        let at = match self.kind {
            Publish if self.qos() > 0 => {
                2 + u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize
            }
            Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback | Unsubscribe | Unsuback => 0,
            _ => return None,
        };
        Some(u16::from_be_bytes([
            *self.body.get(at)?,
            *self.body.get(at + 1)?,
        ]))
    }
    /// PUBLISH payload (after the topic, the packet identifier at QoS > 0 and, on MQTT 5,
    /// the properties), within [`BODY_CAP`].
    pub fn payload(&self) -> Option<&[u8]> {
        if self.kind != PacketType::Publish {
            return None;
        }
        let topic_len = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize;
        let id_len = if self.qos() > 0 { 2 } else { 0 };
        let at = self.skip_props(2 + topic_len + id_len)?;
        self.body.get(at..)
    }
    /// Offset of what follows the v5 properties that start at `at`.
    fn skip_props(&self, at: usize) -> Option<usize> {
        if !self.is_v5() {
            return Some(at);
        }
        let (len, n) = decode_varint(self.body.get(at..)?)?;
        Some(at + n + len)
    }
    /// SUBACK/UNSUBACK reason codes (3.1.1 SUBACK: granted QoS or 0x80; v5: reason codes).
    pub fn reason_codes(&self) -> Vec<u8> {
        match self.kind {
            PacketType::Suback | PacketType::Unsuback => self
                .skip_props(2)
                .and_then(|at| self.body.get(at..))
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }
    /// CONNACK return/reason code; PUBACK/PUBREC/PUBREL/PUBCOMP/DISCONNECT/AUTH reason code
    /// (0 when omitted); SUBACK: first code.
    pub fn reason_code(&self) -> Option<u8> {
        use PacketType::*;
        match self.kind {
            Connack => self.body.get(1).copied(),
            Puback | Pubrec | Pubrel | Pubcomp => Some(self.body.get(2).copied().unwrap_or(0)),
            Disconnect | Auth => Some(self.body.first().copied().unwrap_or(0)),
            Suback | Unsuback => self.reason_codes().first().copied(),
            _ => None,
        }
    }
    /// CONNECT: the client identifier.
    pub fn client_id(&self) -> Option<String> {
        if self.kind != PacketType::Connect {
            return None;
        }
        let name_len = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize;
        // name, level, flags, keepalive(2)
        let at = self.skip_props(2 + name_len + 4)?;
        let n = u16::from_be_bytes([*self.body.get(at)?, *self.body.get(at + 1)?]) as usize;
        Some(String::from_utf8_lossy(self.body.get(at + 2..at + 2 + n)?).into_owned())
    }
    /// CONNECT: keepalive seconds.
    pub fn keepalive(&self) -> Option<u16> {
        if self.kind != PacketType::Connect {
            return None;
        }
        let name_len = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize;
        let at = 2 + name_len + 2;
        Some(u16::from_be_bytes([
            *self.body.get(at)?,
            *self.body.get(at + 1)?,
        ]))
    }
    /// CONNECT: connect flags byte (clean 0x02, will 0x04, will QoS 0x18, will retain 0x20,
    /// password 0x40, username 0x80).
    pub fn connect_flags(&self) -> Option<u8> {
        if self.kind != PacketType::Connect {
            return None;
        }
        let name_len = u16::from_be_bytes([*self.body.first()?, *self.body.get(1)?]) as usize;
        self.body.get(2 + name_len + 1).copied()
    }
}

impl std::fmt::Display for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "#{} conn{} {} {:?} flags={:#x} len={}",
            self.seq,
            self.conn,
            self.dir.arrow(),
            self.kind,
            self.flags,
            self.remaining_len
        )?;
        if let Some(id) = self.packet_id() {
            write!(f, " id={id}")?;
        }
        if let Some(t) = self.topic() {
            write!(f, " topic={t:?} qos={} dup={}", self.qos(), self.dup())?;
        }
        if let Some(c) = self.reason_code() {
            write!(f, " rc={c:#04x}")?;
        }
        Ok(())
    }
}

/// Decodes an MQTT variable byte integer: `(value, bytes used)`, `None` if `b` ends first or
/// the encoding is longer than 4 bytes.
pub fn decode_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0usize;
    let mut mult = 1usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        v += (*byte as usize & 0x7f) * mult;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
        mult *= 128;
    }
    None
}

/// Incremental MQTT fixed-header parser (works across TCP chunk boundaries). Also used by
/// the fake broker (`fake_broker.rs`) to read what the client sends.
#[derive(Default)]
pub struct Parser {
    state: PState,
    first: u8,
    len: usize,
    mult: usize,
    len_bytes: u8,
    remaining: usize,
    body: Vec<u8>,
    broken: bool,
}

#[derive(Default, PartialEq, Eq)]
enum PState {
    #[default]
    Header,
    Len,
    Body,
}

impl Parser {
    /// Feeds bytes. `on_start(kind)` is called at the first byte of each packet; if it
    /// returns true, parsing stops *before* that byte and its offset is returned.
    /// `on_done(first_byte, remaining_len, body)` is called for each complete packet.
    pub fn feed(
        &mut self,
        data: &[u8],
        mut on_start: impl FnMut(PacketType) -> bool,
        mut on_done: impl FnMut(u8, usize, Vec<u8>),
    ) -> Option<usize> {
        let mut i = 0;
        while i < data.len() && !self.broken {
            match self.state {
                PState::Header => {
                    let b = data[i];
                    if on_start(PacketType::from_nibble(b >> 4)) {
                        return Some(i);
                    }
                    self.first = b;
                    self.len = 0;
                    self.mult = 1;
                    self.len_bytes = 0;
                    self.state = PState::Len;
                    i += 1;
                }
                PState::Len => {
                    let b = data[i];
                    i += 1;
                    self.len += (b as usize & 0x7f) * self.mult;
                    self.mult *= 128;
                    self.len_bytes += 1;
                    if b & 0x80 == 0 {
                        self.body.clear();
                        if self.len == 0 {
                            on_done(self.first, 0, Vec::new());
                            self.state = PState::Header;
                        } else {
                            self.remaining = self.len;
                            self.state = PState::Body;
                        }
                    } else if self.len_bytes == 4 {
                        // Malformed remaining length: stop interpreting, keep forwarding.
                        self.broken = true;
                    }
                }
                PState::Body => {
                    let take = self.remaining.min(data.len() - i);
                    let room = BODY_CAP.saturating_sub(self.body.len()).min(take);
                    self.body.extend_from_slice(&data[i..i + room]);
                    self.remaining -= take;
                    i += take;
                    if self.remaining == 0 {
                        on_done(self.first, self.len, std::mem::take(&mut self.body));
                        self.state = PState::Header;
                    }
                }
            }
        }
        None
    }

    /// `true` once a remaining length longer than 4 bytes was seen; nothing after it is
    /// parsed.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

struct CutRule {
    dir: Direction,
    kind: PacketType,
    remaining: usize,
    mode: CutMode,
}

type CutTx = Arc<watch::Sender<Option<CutMode>>>;

struct Shared {
    target: SocketAddr,
    blackhole: [watch::Sender<bool>; 2],
    delay: Mutex<Duration>,
    refuse: AtomicBool,
    accepted: AtomicUsize,
    rejected: AtomicUsize,
    next_id: AtomicUsize,
    conns: Mutex<HashMap<usize, CutTx>>,
    packets: Mutex<Vec<Packet>>,
    seq: AtomicU64,
    rule: Mutex<Option<CutRule>>,
    rule_fired: AtomicUsize,
    /// When a direction's stream ended (EOF or error read from its sender), by connection.
    ends: Mutex<Vec<(usize, Direction, Instant)>>,
}

impl Shared {
    fn cut_all(&self, mode: CutMode) -> usize {
        let conns = self.conns.lock().unwrap();
        for tx in conns.values() {
            tx.send_replace(Some(mode));
        }
        conns.len()
    }
}

struct Unregister(Arc<Shared>, usize);
impl Drop for Unregister {
    fn drop(&mut self) {
        self.0.conns.lock().unwrap().remove(&self.1);
    }
}

/// See the module docs.
pub struct FaultProxy {
    rt: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    port: u16,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to 127.0.0.1:`target_port`.
    pub async fn start(target_port: u16) -> FaultProxy {
        Self::start_blocking(target_port)
    }

    /// Same as [`Self::start`], for sync tests.
    pub fn start_blocking(target_port: u16) -> FaultProxy {
        Self::start_to(SocketAddr::from(([127, 0, 0, 1], target_port)))
    }

    /// Starts a proxy forwarding to `target`.
    pub fn start_to(target: SocketAddr) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("proxy runtime");
        let shared = Arc::new(Shared {
            target,
            blackhole: [watch::channel(false).0, watch::channel(false).0],
            delay: Mutex::new(Duration::ZERO),
            refuse: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            rejected: AtomicUsize::new(0),
            next_id: AtomicUsize::new(1),
            conns: Mutex::new(HashMap::new()),
            packets: Mutex::new(Vec::new()),
            seq: AtomicU64::new(1),
            rule: Mutex::new(None),
            rule_fired: AtomicUsize::new(0),
            ends: Mutex::new(Vec::new()),
        });
        rt.spawn(accept_loop(shared.clone(), listener));
        FaultProxy {
            rt: Some(rt),
            shared,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// Cuts every current connection with a TCP RST to both peers. New connections are
    /// accepted and forwarded as before. Returns how many connections were cut.
    pub fn cut(&self) -> usize {
        self.shared.cut_all(CutMode::Rst)
    }

    /// Cuts every current connection with a FIN to both peers.
    pub fn cut_fin(&self) -> usize {
        self.shared.cut_all(CutMode::Fin)
    }

    /// Stops (true) or resumes (false) forwarding in both directions; sockets stay open and
    /// unread data waits in the kernel (as on a partitioned link that later heals).
    pub fn blackhole(&self, on: bool) {
        for tx in &self.shared.blackhole {
            tx.send_replace(on);
        }
    }

    /// Blackholes one direction only (half-open link).
    pub fn blackhole_dir(&self, dir: Direction, on: bool) {
        self.shared.blackhole[dir.idx()].send_replace(on);
    }

    /// Delays every forwarded chunk by `d` (both directions; `Duration::ZERO` to stop).
    pub fn set_delay(&self, d: Duration) {
        *self.shared.delay.lock().unwrap() = d;
    }

    /// While true, new connections are accepted and immediately reset (broker "down"
    /// behind a reachable address). Existing connections are untouched.
    pub fn refuse(&self, on: bool) {
        self.shared.refuse.store(on, Ordering::SeqCst);
    }

    /// Arms a one-shot rule: when the `nth` (from 1, counted from now, over all
    /// connections) packet of `kind` travelling in `dir` begins, it is NOT forwarded and every
    /// connection is cut with `mode`.
    pub fn cut_on(&self, dir: Direction, kind: PacketType, nth: usize, mode: CutMode) {
        assert!(nth >= 1, "nth counts from 1");
        *self.shared.rule.lock().unwrap() = Some(CutRule {
            dir,
            kind,
            remaining: nth,
            mode,
        });
    }

    /// How many times a [`Self::cut_on`] rule has fired.
    pub fn rule_fired(&self) -> usize {
        self.shared.rule_fired.load(Ordering::SeqCst)
    }

    /// Client connections accepted and connected through to the target so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused ([`Self::refuse`]) or whose upstream connect failed.
    pub fn rejected(&self) -> usize {
        self.shared.rejected.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn active(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// When the proxy read the end (EOF or an error) of `dir`'s stream on connection `conn`
    /// (numbered as [`Packet::conn`]), before passing it on; `None` while it has not ended
    /// that way (a cut by the proxy is not recorded).
    pub fn ended_at(&self, conn: usize, dir: Direction) -> Option<Instant> {
        self.shared
            .ends
            .lock()
            .unwrap()
            .iter()
            .find(|(c, d, _)| *c == conn && *d == dir)
            .map(|(_, _, at)| *at)
    }

    /// The recorded packet trace so far.
    pub fn recorded(&self) -> Vec<Packet> {
        self.shared.packets.lock().unwrap().clone()
    }

    /// Recorded packets of one type in one direction.
    pub fn packets(&self, dir: Direction, kind: PacketType) -> Vec<Packet> {
        self.shared
            .packets
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.dir == dir && p.kind == kind)
            .cloned()
            .collect()
    }

    /// Number of recorded packets of one type in one direction.
    pub fn count(&self, dir: Direction, kind: PacketType) -> usize {
        self.shared
            .packets
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.dir == dir && p.kind == kind)
            .count()
    }

    pub fn clear_recorded(&self) {
        self.shared.packets.lock().unwrap().clear();
    }

    /// The trace as text, one packet a line (for assertion messages).
    pub fn trace(&self) -> String {
        let mut s = String::new();
        for p in self.shared.packets.lock().unwrap().iter() {
            let _ = writeln!(s, "{p}");
        }
        s
    }

    /// Waits until at least `n` packets of `kind` went in `dir`; panics with the trace after
    /// `dur`.
    #[track_caller]
    pub fn wait_for(
        &self,
        dir: Direction,
        kind: PacketType,
        n: usize,
        dur: Duration,
    ) -> impl std::future::Future<Output = ()> + '_ {
        let loc = std::panic::Location::caller();
        async move {
            if !super::util::wait_until_async(dur, || self.count(dir, kind) >= n).await {
                panic!(
                    "proxy: expected {n} {kind:?} {} within {dur:?} (at {loc}), trace:\n{}",
                    dir.arrow(),
                    self.trace()
                );
            }
        }
    }

    /// Blocking version of [`Self::wait_for`].
    #[track_caller]
    pub fn wait_for_blocking(&self, dir: Direction, kind: PacketType, n: usize, dur: Duration) {
        if !super::util::wait_until(dur, || self.count(dir, kind) >= n) {
            panic!(
                "proxy: expected {n} {kind:?} {} within {dur:?}, trace:\n{}",
                dir.arrow(),
                self.trace()
            );
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(sh: Arc<Shared>, listener: std::net::TcpListener) {
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let id = sh.next_id.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(handle(sh.clone(), id, client));
    }
}

async fn wait_cut(rx: &mut watch::Receiver<Option<CutMode>>) -> CutMode {
    loop {
        if let Some(m) = *rx.borrow_and_update() {
            return m;
        }
        if rx.changed().await.is_err() {
            // Sender gone: treat as a cut so nothing lingers.
            return CutMode::Rst;
        }
    }
}

async fn handle(sh: Arc<Shared>, id: usize, client: TcpStream) {
    let (tx, mut rx) = watch::channel(None);
    let tx: CutTx = Arc::new(tx);
    sh.conns.lock().unwrap().insert(id, tx.clone());
    let _unregister = Unregister(sh.clone(), id);

    if sh.refuse.load(Ordering::SeqCst) {
        let _ = client.set_zero_linger();
        sh.rejected.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let upstream = tokio::select! {
        r = TcpStream::connect(sh.target) => r,
        _ = wait_cut(&mut rx) => {
            let _ = client.set_zero_linger();
            return;
        }
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(_) => {
            let _ = client.set_zero_linger();
            sh.rejected.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    sh.accepted.fetch_add(1, Ordering::SeqCst);
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let proto = Arc::new(AtomicU8::new(0));
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let rx2 = tx.subscribe();
    tokio::join!(
        pump(
            sh.clone(),
            id,
            Direction::ClientToBroker,
            cr,
            uw,
            rx,
            tx.clone(),
            proto.clone()
        ),
        pump(
            sh.clone(),
            id,
            Direction::BrokerToClient,
            ur,
            cw,
            rx2,
            tx,
            proto
        ),
    );
}

/// Waits while the direction is blackholed; returns the cut mode if a cut arrives.
async fn wait_open(
    bh: &mut watch::Receiver<bool>,
    cut: &mut watch::Receiver<Option<CutMode>>,
) -> Option<CutMode> {
    loop {
        if let Some(m) = *cut.borrow() {
            return Some(m);
        }
        if !*bh.borrow_and_update() {
            return None;
        }
        tokio::select! {
            r = bh.changed() => if r.is_err() { return Some(CutMode::Rst) },
            m = wait_cut(cut) => return Some(m),
        }
    }
}

async fn finish(mode: CutMode, mut r: OwnedReadHalf, mut w: OwnedWriteHalf) {
    match mode {
        CutMode::Rst => {
            let _ = r.as_ref().set_zero_linger();
            let _ = w.as_ref().set_zero_linger();
            // Dropping an OwnedWriteHalf sends a FIN first (shutdown on drop), which the
            // peer would read as a clean EOF before the RST: forget() skips that.
            w.forget();
        }
        CutMode::Fin => {
            let _ = w.shutdown().await;
            // Drain until the peer closes too, so close() does not turn into an RST.
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump(
    sh: Arc<Shared>,
    conn: usize,
    dir: Direction,
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    mut cut: watch::Receiver<Option<CutMode>>,
    me: CutTx,
    proto: Arc<AtomicU8>,
) {
    let mut bh = sh.blackhole[dir.idx()].subscribe();
    let mut parser = Parser::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(m) = wait_open(&mut bh, &mut cut).await {
            return finish(m, r, w).await;
        }
        let n = tokio::select! {
            res = r.read(&mut buf) => res,
            m = wait_cut(&mut cut) => return finish(m, r, w).await,
        };
        if matches!(n, Ok(0) | Err(_)) {
            sh.ends.lock().unwrap().push((conn, dir, Instant::now()));
        }
        let n = match n {
            Ok(0) => {
                // Peer closed its sending side: pass the FIN on, keep the other direction.
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => {
                me.send_replace(Some(CutMode::Rst));
                return finish(CutMode::Rst, r, w).await;
            }
        };
        // Data read just before a blackhole started is held, not forwarded.
        if let Some(m) = wait_open(&mut bh, &mut cut).await {
            return finish(m, r, w).await;
        }
        let delay = *sh.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                m = wait_cut(&mut cut) => return finish(m, r, w).await,
            }
        }
        let mut fire = None;
        let stop = parser.feed(
            &buf[..n],
            |kind| {
                let mut rule = sh.rule.lock().unwrap();
                if let Some(rl) = rule.as_mut() {
                    if rl.dir == dir && rl.kind == kind {
                        rl.remaining -= 1;
                        if rl.remaining == 0 {
                            fire = Some(rl.mode);
                            *rule = None;
                            return true;
                        }
                    }
                }
                false
            },
            |first, len, body| {
                let kind = PacketType::from_nibble(first >> 4);
                if kind == PacketType::Connect && dir == Direction::ClientToBroker {
                    if let Some(level) = body
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                        .and_then(|nl| body.get(2 + nl))
                    {
                        proto.store(*level, Ordering::SeqCst);
                    }
                }
                let level = proto.load(Ordering::SeqCst);
                let p = Packet {
                    seq: sh.seq.fetch_add(1, Ordering::SeqCst),
                    conn,
                    dir,
                    kind,
                    flags: first & 0x0f,
                    remaining_len: len,
                    body,
                    protocol: (level != 0).then_some(level),
                    at: Instant::now(),
                };
                sh.packets.lock().unwrap().push(p);
            },
        );
        let upto = stop.unwrap_or(n);
        if upto > 0 {
            let res = tokio::select! {
                res = w.write_all(&buf[..upto]) => res,
                m = wait_cut(&mut cut) => return finish(m, r, w).await,
            };
            if res.is_err() {
                me.send_replace(Some(CutMode::Rst));
                return finish(CutMode::Rst, r, w).await;
            }
        }
        if let Some(mode) = fire {
            sh.rule_fired.fetch_add(1, Ordering::SeqCst);
            sh.cut_all(mode);
            return finish(mode, r, w).await;
        }
    }
}
