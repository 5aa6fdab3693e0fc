//! In-flight QoS 1 and 2 exchanges across a lost link, a resumed session and a broker
//! restart: what the engine promises for a persistent session (resend with DUP and the
//! same packet id, PUBREL again, the pending call completing `Ok`, incoming QoS 2 exactly
//! once) and for a clean one (pending calls fail at the loss, nothing is sent later).
//!
//! Our client sits behind a [`FaultProxy`], which cuts the link at one chosen packet of an
//! exchange and records the packet trace; the other party (a witness subscriber or a
//! publisher) talks to the broker directly. Each scenario runs on MQTT 3.1.1 and 5, and
//! where it matters in both styles: aiomqtt's loop around `client.connect()` ([`Style::Loop`])
//! and automatic reconnects ([`Style::Auto`]).
//!
//! "Exactly once" is proven without a quiet period: after the resumed exchange is over, a
//! marker is published on the same path, and the copies counted when the marker arrives are
//! all the copies there are (the broker keeps one publisher's messages in order for one
//! subscriber, and a duplicate would come from a resend, which precedes the marker).

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiomqtt::{
    CleanStart, Client, ClientBuilder, Connection, ConnectionEvent, ConnectionEvents, Error,
    Message, Messages, Properties, ProtocolVersion, QoS, ReconnectPolicy,
};
use futures::StreamExt;
use futures::future::{MaybeDone, maybe_done};

use crate::support::mqtt::build;
use crate::support::*;
use crate::within;

/// Bound on every test body.
const BODY: Duration = Duration::from_secs(90);
/// How long one expected event (a delivery, a loss, a reconnect) may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);
/// The clients' timeout: a call pending across a loss must not time out during a test...
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// ...and a call is awaited a little longer, so that a call that never completes shows its
/// own error instead of the test's timeout.
const CALL_WAIT: Duration = Duration::from_secs(15);

use Direction::{BrokerToClient as B2C, ClientToBroker as C2B};
use ProtocolVersion::{V5, V311};
use Style::{Auto, Loop};

// ---------------------------------------------------------------------------------------------
// Clients

/// How our client gets its session back after a loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// aiomqtt's way: the lost `Connection` ends; the test calls `client.connect()` again.
    Loop,
    /// `ReconnectPolicy`: one `Connection` lives on and reports `ConnectionEvent`s.
    Auto,
}

fn client_id(tag: &str) -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

fn builder(port: u16, protocol: ProtocolVersion) -> ClientBuilder {
    Client::builder("127.0.0.1")
        .port(port)
        .protocol(protocol)
        .timeout(CALL_TIMEOUT)
}

/// A persistent session: 3.1.1 Clean Session 0; 5 Clean Start 0 with a Session Expiry
/// Interval; a fixed identifier either way.
fn persistent(port: u16, protocol: ProtocolVersion, tag: &str) -> ClientBuilder {
    let b = builder(port, protocol).identifier(client_id(tag));
    match protocol {
        V5 => b
            .clean_start(CleanStart::Never)
            .properties(Properties::new().session_expiry_interval(300)),
        _ => b.clean_session(false),
    }
}

fn styled(b: ClientBuilder, style: Style) -> ClientBuilder {
    match style {
        Loop => b,
        Auto => b.reconnect(
            ReconnectPolicy::new()
                .initial_delay(Duration::from_millis(50))
                .max_delay(Duration::from_millis(400)),
        ),
    }
}

/// Our client (behind the proxy) in either style; keeps what every stream yielded.
struct Ours {
    client: Client,
    style: Style,
    conn: Connection,
    messages: Messages,
    events: ConnectionEvents,
    /// Every message received, from every `Connection` in order.
    got: Vec<Message>,
}

impl Ours {
    async fn connect(b: ClientBuilder, style: Style) -> Ours {
        let client = build(styled(b, style));
        let conn = within!(WAIT, client.connect()).expect("connect");
        let messages = conn.messages();
        let events = conn.events();
        Ours {
            client,
            style,
            conn,
            messages,
            events,
            got: Vec::new(),
        }
    }

    /// Waits until the client has noticed the loss. Loop style: the lost connection's
    /// stream yields what was queued (kept), then one `Err(Disconnected(ConnectionLost))`,
    /// then `None`. Auto style: a `Lost` event.
    async fn lost(&mut self) {
        match self.style {
            Loop => {
                let (messages, got) = (&mut self.messages, &mut self.got);
                let end = tokio::time::timeout(WAIT, async {
                    loop {
                        match messages.next().await {
                            Some(Ok(m)) => got.push(m),
                            other => return other,
                        }
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("the lost connection's stream did not end in {WAIT:?}"));
                match end {
                    Some(Err(Error::Disconnected(cause))) => assert!(
                        matches!(*cause, Error::ConnectionLost { .. }),
                        "the stream's end: Disconnected({cause:?})"
                    ),
                    other => panic!("expected Err(Disconnected(ConnectionLost)), got {other:?}"),
                }
                let after = within!(WAIT, self.messages.next());
                assert!(
                    after.is_none(),
                    "the stream went on after its Err: {after:?}"
                );
                assert!(!self.conn.is_connected());
            }
            Auto => loop {
                match within!(WAIT, self.events.next()) {
                    Some(ConnectionEvent::Lost { .. }) => break,
                    Some(ConnectionEvent::Connected { .. }) => panic!("Connected before Lost"),
                    Some(_) => {}
                    None => panic!("the connection ended instead of reconnecting"),
                }
            },
        }
    }

    /// Waits for the session to be back (after [`Ours::lost`]); returns Session Present.
    /// Loop style: `client.connect()` once more (one call: the broker is up).
    async fn resumed(&mut self) -> bool {
        match self.style {
            Loop => {
                let conn = within!(WAIT, self.client.connect()).expect("connect() after the loss");
                self.messages = conn.messages();
                self.events = conn.events();
                self.conn = conn;
                self.conn.session_present()
            }
            Auto => loop {
                match within!(WAIT, self.events.next()) {
                    Some(ConnectionEvent::Connected {
                        session_present, ..
                    }) => {
                        assert!(self.conn.is_connected());
                        return session_present;
                    }
                    Some(ConnectionEvent::Lost { cause }) => panic!("lost again: {cause}"),
                    Some(_) => {}
                    None => panic!("the connection ended instead of reconnecting"),
                }
            },
        }
    }

    /// Receives (on the current connection) until `done(&self.got)`; panics after [`WAIT`].
    #[track_caller]
    fn receive_until<'a>(
        &'a mut self,
        what: &'a str,
        done: impl Fn(&[Message]) -> bool + 'a,
    ) -> impl Future<Output = ()> + 'a {
        let loc = std::panic::Location::caller();
        async move {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !done(&self.got) {
                match tokio::time::timeout_at(deadline, self.messages.next()).await {
                    Ok(Some(Ok(m))) => self.got.push(m),
                    Ok(other) => panic!("waiting for {what} at {loc}: got {other:?}"),
                    Err(_) => panic!(
                        "no {what} within {WAIT:?} at {loc}; received: {:?}",
                        summary(&self.got)
                    ),
                }
            }
        }
    }
}

/// A client on the broker itself (no proxy), subscribed at QoS 2: what the broker delivers.
struct Witness {
    _client: Client,
    _conn: Connection,
    messages: Messages,
}

impl Witness {
    async fn start(port: u16, protocol: ProtocolVersion, filter: &str) -> Witness {
        let client = build(builder(port, protocol));
        let conn = within!(WAIT, client.connect()).expect("witness connect");
        let codes = within!(WAIT, conn.subscribe(filter).qos(QoS::ExactlyOnce)).expect("subscribe");
        assert_eq!(codes.len(), 1);
        let messages = conn.messages();
        Witness {
            _client: client,
            _conn: conn,
            messages,
        }
    }

    /// Receives until every number of `0..n` has arrived on `topic` (at least once).
    async fn every_number(&mut self, topic: &str, n: usize, proxy: &FaultProxy) -> Vec<Message> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !missing(&numbers(&got, topic), n).is_empty() {
            match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Ok(Some(Ok(m))) => got.push(m),
                other => panic!(
                    "witness: {other:?}; missing {:?} on {topic}\ntrace:\n{}",
                    missing(&numbers(&got, topic), n),
                    proxy.trace()
                ),
            }
        }
        got
    }

    /// Everything received before the first message on `marker`.
    async fn before_marker(&mut self, marker: &str) -> Vec<Message> {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.messages.next()).await {
                Ok(Some(Ok(m))) if m.topic.as_str() == marker => return got,
                Ok(Some(Ok(m))) => got.push(m),
                Ok(other) => panic!("witness: {other:?}"),
                Err(_) => panic!(
                    "witness: no marker within {WAIT:?}; got {:?}",
                    summary(&got)
                ),
            }
        }
    }
}

/// A client on the broker itself, clean session, for publishing.
async fn direct(port: u16, protocol: ProtocolVersion) -> (Client, Connection) {
    let client = build(builder(port, protocol));
    let conn = within!(WAIT, client.connect()).expect("connect");
    (client, conn)
}

// ---------------------------------------------------------------------------------------------
// Calls, messages, trace

type Call = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

/// Polls every call once — which hands it to the engine, or with automatic reconnects
/// and the link down parks it until the link is back — then drives them all on a task.
/// Results come back in order. (Polling first matters in loop style: a call first polled
/// after the loss would find its connection ended.)
async fn start_all(calls: Vec<Call>) -> tokio::task::JoinHandle<Vec<Result<(), Error>>> {
    let mut calls: Vec<MaybeDone<Call>> = calls.into_iter().map(maybe_done).collect();
    for call in &mut calls {
        let _ = futures::poll!(&mut *call);
    }
    tokio::spawn(futures::future::join_all(calls.into_iter().map(
        |mut call| async move {
            (&mut call).await;
            Pin::new(&mut call).take_output().expect("a result")
        },
    )))
}

/// The results of the calls made before the connection ended. A call is made when first
/// polled, and [`start_all`] polls in order: the broker can acknowledge half a stream
/// before the last calls are polled, and a call made once the connection has ended
/// fails with `NotConnected` (it never reaches the engine). Only a trailing run of
/// `NotConnected` is taken as made after the end.
fn made_before_the_loss(results: &[Result<(), Error>]) -> &[Result<(), Error>] {
    let after = results
        .iter()
        .rev()
        .take_while(|r| matches!(r, Err(Error::NotConnected)))
        .count();
    &results[..results.len() - after]
}

/// Whether `proxy` saw a PUBLISH going `dir` with DUP set on a connection after the first
/// (a resend on a resumed session).
fn resent_with_dup(proxy: &FaultProxy, dir: Direction) -> bool {
    proxy
        .packets(dir, PacketType::Publish)
        .iter()
        .any(|p| p.conn > 1 && p.dup())
}

#[track_caller]
fn all_ok(results: &[Result<(), Error>], trace: &str) {
    let failed: Vec<(usize, &Error)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls failed: {failed:?}\ntrace:\n{trace}",
        failed.len(),
        results.len()
    );
}

fn summary(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            format!(
                "{}={} (qos {}, mid {})",
                m.topic.as_str(),
                String::from_utf8_lossy(&m.payload),
                m.qos.as_u8(),
                m.mid
            )
        })
        .collect()
}

fn count(messages: &[Message], topic: &str, payload: &str) -> usize {
    messages
        .iter()
        .filter(|m| m.topic.as_str() == topic && m.payload == payload.as_bytes())
        .count()
}

/// The messages up to (not including) the first one on `marker`.
fn up_to<'a>(messages: &'a [Message], marker: &str) -> &'a [Message] {
    let end = messages
        .iter()
        .position(|m| m.topic.as_str() == marker)
        .unwrap_or(messages.len());
    &messages[..end]
}

/// How many copies of each number arrived on `topic`.
fn numbers(messages: &[Message], topic: &str) -> BTreeMap<usize, usize> {
    let mut seen = BTreeMap::new();
    for m in messages.iter().filter(|m| m.topic.as_str() == topic) {
        let n: usize = m
            .payload_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a number: {m:?}"));
        *seen.entry(n).or_insert(0) += 1;
    }
    seen
}

/// Numbers of `0..n` that never arrived.
fn missing(seen: &BTreeMap<usize, usize>, n: usize) -> Vec<usize> {
    (0..n).filter(|i| !seen.contains_key(i)).collect()
}

fn publishes(proxy: &FaultProxy, dir: Direction, topic: &str) -> Vec<Packet> {
    proxy
        .packets(dir, PacketType::Publish)
        .into_iter()
        .filter(|p| p.topic().as_deref() == Some(topic))
        .collect()
}

fn with_id(proxy: &FaultProxy, dir: Direction, kind: PacketType, id: u16) -> Vec<Packet> {
    proxy
        .packets(dir, kind)
        .into_iter()
        .filter(|p| p.packet_id() == Some(id))
        .collect()
}

/// The first PUBLISH on `topic` in `dir`: (packet id, connection number).
#[track_caller]
fn original(proxy: &FaultProxy, dir: Direction, topic: &str) -> (u16, usize) {
    let first = publishes(proxy, dir, topic)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no PUBLISH on {topic}; trace:\n{}", proxy.trace()));
    assert!(
        !first.dup(),
        "the first PUBLISH has DUP set:\n{}",
        proxy.trace()
    );
    (first.packet_id().expect("QoS > 0"), first.conn)
}

#[track_caller]
fn wait_fired(proxy: &FaultProxy) -> impl Future<Output = ()> + '_ {
    wait_fired_n(proxy, 1)
}

/// Waits until `cut_on` rules have fired `n` times in all.
#[track_caller]
fn wait_fired_n(proxy: &FaultProxy, n: usize) -> impl Future<Output = ()> + '_ {
    let loc = std::panic::Location::caller();
    async move {
        if !wait_until_async(WAIT, || proxy.rule_fired() >= n).await {
            panic!(
                "the cut rule did not fire within {WAIT:?} (at {loc}); trace:\n{}",
                proxy.trace()
            );
        }
    }
}

/// Waits until the trace has a packet for which `pred` holds (the rest of an exchange may
/// still be on its way when a message is delivered).
#[track_caller]
fn wait_trace<'a>(
    proxy: &'a FaultProxy,
    what: &'a str,
    pred: impl Fn(&Packet) -> bool + 'a,
) -> impl Future<Output = ()> + 'a {
    let loc = std::panic::Location::caller();
    async move {
        if !wait_until_async(WAIT, || proxy.recorded().iter().any(&pred)).await {
            panic!(
                "no {what} in the trace within {WAIT:?} (at {loc}):\n{}",
                proxy.trace()
            );
        }
    }
}

/// Which packet of a QoS 2 exchange the proxy stops (and cuts the link at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Pubrec,
    Pubrel,
    Pubcomp,
}

impl Step {
    /// Our client publishes: PUBREC and PUBCOMP come from the broker, PUBREL from us.
    fn outgoing(self) -> (Direction, PacketType) {
        match self {
            Step::Pubrec => (B2C, PacketType::Pubrec),
            Step::Pubrel => (C2B, PacketType::Pubrel),
            Step::Pubcomp => (B2C, PacketType::Pubcomp),
        }
    }
    /// Our client receives: PUBREC and PUBCOMP come from us, PUBREL from the broker.
    fn incoming(self) -> (Direction, PacketType) {
        match self {
            Step::Pubrec => (C2B, PacketType::Pubrec),
            Step::Pubrel => (B2C, PacketType::Pubrel),
            Step::Pubcomp => (C2B, PacketType::Pubcomp),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Outgoing QoS 2, cut at each step of the exchange

async fn outgoing_qos2(protocol: ProtocolVersion, style: Style, step: Step, mode: CutMode) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("outgoing_qos2");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "out2"), style).await;

    let (dir, kind) = step.outgoing();
    proxy.cut_on(dir, kind, 1, mode);
    let publish = tokio::spawn(
        ours.conn
            .publish(&topic, "m")
            .qos(QoS::ExactlyOnce)
            .into_future(),
    );
    wait_fired(&proxy).await;
    ours.lost().await;
    assert!(ours.resumed().await, "the broker kept the session");

    let result = within!(CALL_WAIT, publish).expect("publish task");
    assert!(
        result.is_ok(),
        "the publish pending at the loss: {result:?}\ntrace:\n{}",
        proxy.trace()
    );
    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::ExactlyOnce)
    )
    .expect("marker");
    let before = witness.before_marker(&marker).await;
    assert_eq!(
        count(&before, &topic, "m"),
        1,
        "copies delivered: {:?}\ntrace:\n{}",
        summary(&before),
        proxy.trace()
    );
    assert_eq!(before.len(), 1, "{:?}", summary(&before));
    assert_eq!(before[0].qos, QoS::ExactlyOnce);

    // The trace: the resumed session finished the same exchange.
    let trace = proxy.trace();
    let (id, first) = original(&proxy, C2B, &topic);
    let later = |p: &Packet| p.conn > first;
    let resent: Vec<Packet> = publishes(&proxy, C2B, &topic)
        .into_iter()
        .filter(later)
        .collect();
    let pubrels = with_id(&proxy, C2B, PacketType::Pubrel, id);
    match step {
        Step::Pubrec => assert!(
            resent.iter().any(|p| p.dup() && p.packet_id() == Some(id)),
            "no PUBLISH with DUP and id {id} after the loss:\n{trace}"
        ),
        Step::Pubrel | Step::Pubcomp => assert!(
            resent.is_empty(),
            "the PUBLISH was sent again after its PUBREC:\n{trace}"
        ),
    }
    assert!(
        pubrels.iter().any(later),
        "no PUBREL {id} after the loss:\n{trace}"
    );
    if step == Step::Pubcomp {
        assert!(
            pubrels.iter().any(|p| p.conn == first),
            "no PUBREL {id} before the loss:\n{trace}"
        );
    }
    assert!(
        with_id(&proxy, B2C, PacketType::Pubcomp, id)
            .iter()
            .any(later),
        "no PUBCOMP {id} after the loss:\n{trace}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Incoming QoS 2 (our client subscribes), cut at each step

async fn incoming_qos2(protocol: ProtocolVersion, style: Style, step: Step) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("incoming_qos2");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "in2"), style).await;
    within!(
        WAIT,
        ours.conn
            .subscribe(format!("{base}/#"))
            .qos(QoS::ExactlyOnce)
    )
    .expect("subscribe");
    let (_publisher, publisher) = direct(broker.port(), protocol).await;

    let (dir, kind) = step.incoming();
    proxy.cut_on(dir, kind, 1, CutMode::Rst);
    within!(WAIT, publisher.publish(&topic, "m").qos(QoS::ExactlyOnce))
        .expect("publish to the broker");
    wait_fired(&proxy).await;
    ours.lost().await;
    assert!(ours.resumed().await, "the broker kept the session");

    ours.receive_until("the message", |got| count(got, &topic, "m") >= 1)
        .await;
    within!(
        WAIT,
        publisher.publish(&marker, "marker").qos(QoS::ExactlyOnce)
    )
    .expect("marker");
    ours.receive_until("the marker", |got| {
        got.iter().any(|m| m.topic.as_str() == marker)
    })
    .await;
    let trace = proxy.trace();
    let before = up_to(&ours.got, &marker);
    assert_eq!(
        count(before, &topic, "m"),
        1,
        "copies delivered: {:?}\ntrace:\n{trace}",
        summary(before)
    );

    let (id, first) = original(&proxy, B2C, &topic);
    let later = |p: &Packet| p.conn > first;
    let delivered = before
        .iter()
        .find(|m| m.topic.as_str() == topic)
        .expect("delivered");
    assert_eq!(delivered.qos, QoS::ExactlyOnce);
    assert_eq!(delivered.mid, id, "Message.mid is the packet id:\n{trace}");
    let pubrels = with_id(&proxy, B2C, PacketType::Pubrel, id);
    match step {
        Step::Pubrec => assert!(
            publishes(&proxy, B2C, &topic)
                .iter()
                .any(|p| later(p) && p.dup() && p.packet_id() == Some(id)),
            "the broker did not resend PUBLISH {id} with DUP:\n{trace}"
        ),
        Step::Pubrel => assert!(
            pubrels.iter().any(later),
            "the broker did not resend PUBREL {id}:\n{trace}"
        ),
        Step::Pubcomp => assert!(
            pubrels.iter().any(|p| p.conn == first) && pubrels.iter().any(later),
            "expected PUBREL {id} before and after the loss:\n{trace}"
        ),
    }
    // Our PUBCOMP follows the broker's PUBREL; on MQTT 5 Paho delivers at the PUBLISH, so
    // it may still be on its way.
    wait_trace(&proxy, "PUBCOMP from us after the loss", |p| {
        p.dir == C2B && p.kind == PacketType::Pubcomp && p.packet_id() == Some(id) && p.conn > first
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. QoS 1 numbered streams with a cut in the middle

const STREAM: usize = 40;

/// Our client publishes 0..STREAM at QoS 1; the broker's PUBACK number STREAM/2 is cut.
async fn qos1_stream_out(protocol: ProtocolVersion, style: Style) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("qos1_stream_out");
    let topic = format!("{base}/n");
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "s1out"), style).await;

    proxy.cut_on(B2C, PacketType::Puback, STREAM / 2, CutMode::Rst);
    let calls = (0..STREAM)
        .map(|i| {
            ours.conn
                .publish(&topic, i.to_string())
                .qos(QoS::AtLeastOnce)
                .into_future()
        })
        .collect();
    let all = start_all(calls).await;
    wait_fired(&proxy).await;
    ours.lost().await;
    assert!(ours.resumed().await, "the broker kept the session");
    let results = within!(CALL_WAIT, all).expect("calls");
    let made = match style {
        // Automatic reconnects: the connection never ends, every call is made.
        Auto => &results[..],
        Loop => made_before_the_loss(&results),
    };
    all_ok(made, &proxy.trace());

    // Every number at least once.
    witness.every_number(&topic, made.len(), &proxy).await;
    let trace = proxy.trace();
    assert!(
        resent_with_dup(&proxy, C2B),
        "no PUBLISH resent with DUP after the cut:\n{trace}"
    );
}

/// Scenario 3's outgoing stream, cut again and again (automatic reconnects): each round
/// hands STREAM QoS 1 publishes to the engine and cuts the link (RST) at the broker's PUBACK
/// number STREAM/2. The PUBACKs forwarded just before the RST free window slots, and Paho's
/// send thread then often writes the next PUBLISH into the link that the RST has already
/// reset. Every call must still complete `Ok` and every number arrive: a write that fails
/// at a loss is an ordinary part of one, and the message stays Paho's to resend.
async fn qos1_stream_out_repeated_cuts(protocol: ProtocolVersion) {
    const ROUNDS: usize = 8;
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("repeated_cuts");
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "cuts"), Auto).await;
    for round in 0..ROUNDS {
        let topic = format!("{base}/round{round}");
        proxy.cut_on(B2C, PacketType::Puback, STREAM / 2, CutMode::Rst);
        let calls = (0..STREAM)
            .map(|i| {
                ours.conn
                    .publish(&topic, i.to_string())
                    .qos(QoS::AtLeastOnce)
                    .into_future()
            })
            .collect();
        let all = start_all(calls).await;
        wait_fired_n(&proxy, round + 1).await;
        ours.lost().await;
        assert!(
            ours.resumed().await,
            "round {round}: the broker kept the session"
        );
        let results = within!(CALL_WAIT, all).expect("calls");
        let failed: Vec<(usize, &Error)> = results
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
            .collect();
        assert!(
            failed.is_empty(),
            "round {round}: {} of {STREAM} calls failed: {failed:?}\ntrace:\n{}",
            failed.len(),
            proxy.trace()
        );
        witness.every_number(&topic, STREAM, &proxy).await;
    }
}

/// A publisher sends 0..STREAM at QoS 1 to our client; our PUBACK number STREAM/2 is cut.
async fn qos1_stream_in(protocol: ProtocolVersion, style: Style) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("qos1_stream_in");
    let topic = format!("{base}/n");
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "s1in"), style).await;
    within!(
        WAIT,
        ours.conn
            .subscribe(format!("{base}/#"))
            .qos(QoS::AtLeastOnce)
    )
    .expect("subscribe");
    let (_publisher, publisher) = direct(broker.port(), protocol).await;

    proxy.cut_on(C2B, PacketType::Puback, STREAM / 2, CutMode::Rst);
    let calls = (0..STREAM)
        .map(|i| {
            publisher
                .publish(&topic, i.to_string())
                .qos(QoS::AtLeastOnce)
                .into_future()
        })
        .collect();
    let all = start_all(calls).await;
    wait_fired(&proxy).await;
    ours.lost().await;
    assert!(ours.resumed().await, "the broker kept the session");
    ours.receive_until("every number", |got| {
        missing(&numbers(got, &topic), STREAM).is_empty()
    })
    .await;
    let results = within!(CALL_WAIT, all).expect("calls");
    all_ok(&results, "(the publisher is not behind the proxy)");
    let trace = proxy.trace();
    assert!(
        resent_with_dup(&proxy, B2C),
        "the broker resent nothing with DUP after the cut:\n{trace}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Broker restart (SIGTERM, persistence) with QoS 1 and 2 streams in flight

async fn broker_restart(protocol: ProtocolVersion) {
    const HALF: usize = 15;
    init_logging();
    let mut broker = Broker::builder().persistence(true).start();
    let pub_proxy = FaultProxy::start(broker.port()).await;
    let sub_proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("broker_restart");
    let (q1, q2, marker) = (
        format!("{base}/q1"),
        format!("{base}/q2"),
        format!("{base}/marker"),
    );
    let mut sub = Ours::connect(persistent(sub_proxy.port(), protocol, "rsub"), Auto).await;
    within!(
        WAIT,
        sub.conn
            .subscribe(format!("{base}/#"))
            .qos(QoS::ExactlyOnce)
    )
    .expect("subscribe");
    let mut publ = Ours::connect(persistent(pub_proxy.port(), protocol, "rpub"), Auto).await;
    let stream = |publ: &Ours, range: std::ops::Range<usize>| -> Vec<Call> {
        range
            .flat_map(|i| {
                [
                    publ.conn
                        .publish(&q1, i.to_string())
                        .qos(QoS::AtLeastOnce)
                        .into_future(),
                    publ.conn
                        .publish(&q2, i.to_string())
                        .qos(QoS::ExactlyOnce)
                        .into_future(),
                ]
            })
            .collect()
    };

    // The first half goes through normally.
    let first = start_all(stream(&publ, 0..HALF)).await;
    all_ok(
        &within!(CALL_WAIT, first).expect("calls"),
        &pub_proxy.trace(),
    );

    // Then the acknowledgements stop (the broker's to the publisher, the subscriber's to the
    // broker), so that the second half is in flight on both sides when the broker stops.
    pub_proxy.blackhole_dir(B2C, true);
    sub_proxy.blackhole_dir(C2B, true);
    let sent = pub_proxy.count(C2B, PacketType::Publish);
    let delivered = sub_proxy.count(B2C, PacketType::Publish);
    let second = start_all(stream(&publ, HALF..2 * HALF)).await;
    pub_proxy
        .wait_for(C2B, PacketType::Publish, sent + 10, WAIT)
        .await;
    sub_proxy
        .wait_for(B2C, PacketType::Publish, delivered + 1, WAIT)
        .await;

    tokio::task::block_in_place(|| broker.stop());
    pub_proxy.cut();
    sub_proxy.cut();
    pub_proxy.blackhole(false);
    sub_proxy.blackhole(false);
    tokio::task::block_in_place(|| broker.start_again());

    publ.lost().await;
    sub.lost().await;
    assert!(
        publ.resumed().await,
        "the restarted broker kept the publisher's session"
    );
    assert!(
        sub.resumed().await,
        "the restarted broker kept the subscriber's session"
    );
    let results = within!(CALL_WAIT, second).expect("calls");
    all_ok(&results, &pub_proxy.trace());
    within!(
        WAIT,
        publ.conn.publish(&marker, "marker").qos(QoS::ExactlyOnce)
    )
    .expect("marker");
    sub.receive_until("the marker", |got| {
        got.iter().any(|m| m.topic.as_str() == marker)
    })
    .await;

    let before = up_to(&sub.got, &marker);
    let (ones, twos) = (numbers(before, &q1), numbers(before, &q2));
    let context = || {
        format!(
            "QoS 1 copies {ones:?}\nQoS 2 copies {twos:?}\npublisher trace:\n{}\nsubscriber trace:\n{}\nbroker log:\n{}",
            pub_proxy.trace(),
            sub_proxy.trace(),
            broker.log()
        )
    };
    assert!(
        missing(&ones, 2 * HALF).is_empty(),
        "QoS 1 gaps {:?}\n{}",
        missing(&ones, 2 * HALF),
        context()
    );
    // The restart met exchanges in flight on both sides: the publisher resent with DUP,
    // and the broker resent to the subscriber with DUP.
    assert!(
        resent_with_dup(&pub_proxy, C2B),
        "the publisher resent nothing after the restart\n{}",
        context()
    );
    assert!(
        resent_with_dup(&sub_proxy, B2C),
        "the broker resent nothing to the subscriber after the restart\n{}",
        context()
    );
    let not_once: Vec<(usize, usize)> = (0..2 * HALF)
        .map(|i| (i, twos.get(&i).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .collect();
    assert!(
        not_once.is_empty(),
        "QoS 2 numbers not delivered exactly once (number, copies): {not_once:?}\n{}",
        context()
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Clean session: pending calls fail at the loss, nothing is sent later

/// What makes a session clean between `connect()` calls.
#[derive(Clone, Copy)]
enum Clean {
    /// Clean Session 1 (3.1.1), Clean Start `Always` (5).
    Flag,
    /// MQTT 5's default, `CleanStart::FirstOnly`, with a Session Expiry Interval: the
    /// broker keeps the session after the loss, but the next `connect()` starts clean.
    ConnectStartsClean,
}

async fn clean_session_loss(protocol: ProtocolVersion, how: Clean) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("clean_session_loss");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let clean = match (protocol, how) {
        (V5, Clean::Flag) => builder(proxy.port(), protocol).clean_start(CleanStart::Always),
        (V5, Clean::ConnectStartsClean) => builder(proxy.port(), protocol)
            .properties(Properties::new().session_expiry_interval(300)),
        (_, Clean::Flag) => builder(proxy.port(), protocol).clean_session(true),
        (_, Clean::ConnectStartsClean) => unreachable!("MQTT 5 only"),
    };
    let mut ours = Ours::connect(clean.identifier(client_id("clean")), Loop).await;

    // The PUBLISH is stopped at the proxy, which cuts the link.
    proxy.cut_on(C2B, PacketType::Publish, 1, CutMode::Rst);
    let publish = tokio::spawn(
        ours.conn
            .publish(&topic, "lost")
            .qos(QoS::AtLeastOnce)
            .into_future(),
    );
    wait_fired(&proxy).await;
    let cut_at = Instant::now();
    // Well before the call's own timeout (CALL_TIMEOUT), which would be Unacknowledged.
    let result = within!(WAIT, publish).expect("publish task");
    let after = cut_at.elapsed();
    match &result {
        Err(e @ Error::ConnectionLost { rc: None, .. }) => {
            assert!(e.is_connection_lost());
        }
        other => panic!("expected ConnectionLost at the loss, got {other:?} after {after:?}"),
    }
    ours.lost().await;
    assert!(!ours.resumed().await, "a clean session is not resumed");

    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::AtLeastOnce)
    )
    .expect("marker");
    let before = witness.before_marker(&marker).await;
    let trace = proxy.trace();
    assert!(
        before.is_empty(),
        "delivered after the loss: {:?}\ntrace:\n{trace}",
        summary(&before)
    );
    assert!(
        publishes(&proxy, C2B, &topic).is_empty(),
        "the lost PUBLISH went out on a later connection:\n{trace}"
    );
}

/// A clean session's QoS 1 stream cut in the middle, in rounds (loop style): every call
/// resolves at the loss, `Ok` (acknowledged, so delivered) or `ConnectionLost`; nothing of
/// a lost connection goes out on a later one; and the process survives the engine's
/// teardown (a PUBLISH whose write failed at the cut must not be freed twice).
async fn clean_session_stream_loss(protocol: ProtocolVersion) {
    const ROUNDS: usize = 4;
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("clean_stream");
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let clean = match protocol {
        V5 => builder(proxy.port(), protocol).clean_start(CleanStart::Always),
        _ => builder(proxy.port(), protocol).clean_session(true),
    };
    let mut ours = Ours::connect(clean.identifier(client_id("cleans")), Loop).await;
    for round in 0..ROUNDS {
        let (topic, marker) = (
            format!("{base}/round{round}"),
            format!("{base}/marker{round}"),
        );
        proxy.cut_on(B2C, PacketType::Puback, STREAM / 2, CutMode::Rst);
        let calls = (0..STREAM)
            .map(|i| {
                ours.conn
                    .publish(&topic, i.to_string())
                    .qos(QoS::AtLeastOnce)
                    .into_future()
            })
            .collect();
        let all = start_all(calls).await;
        wait_fired_n(&proxy, round + 1).await;
        let cut_conn = proxy.connections();
        // At the loss, well before the calls' own timeout.
        let results = within!(WAIT, all).expect("calls");
        let made_before = made_before_the_loss(&results);
        let unexpected: Vec<(usize, &Error)> = made_before
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
            .filter(|(_, e)| !matches!(e, Error::ConnectionLost { rc: None, .. }))
            .collect();
        assert!(
            unexpected.is_empty(),
            "round {round}: calls pending at the loss must fail with ConnectionLost: {unexpected:?}"
        );
        let sent = publishes(&proxy, C2B, &topic).len();
        assert!(
            sent <= made_before.len(),
            "round {round}: {sent} PUBLISHes on the wire for {} calls made before the loss:\n{}",
            made_before.len(),
            proxy.trace()
        );
        ours.lost().await;
        assert!(!ours.resumed().await, "a clean session is not resumed");
        within!(
            WAIT,
            ours.conn.publish(&marker, "marker").qos(QoS::AtLeastOnce)
        )
        .expect("marker");
        let before = witness.before_marker(&marker).await;
        let delivered = numbers(&before, &topic);
        let acknowledged_lost: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(i, r)| r.is_ok() && !delivered.contains_key(i))
            .map(|(i, _)| i)
            .collect();
        assert!(
            acknowledged_lost.is_empty(),
            "round {round}: acknowledged but not delivered: {acknowledged_lost:?}"
        );
        let trace = proxy.trace();
        assert!(
            publishes(&proxy, C2B, &topic)
                .iter()
                .all(|p| p.conn <= cut_conn),
            "round {round}: a PUBLISH of the lost connection went out on a later one:\n{trace}"
        );
    }
}

/// A clean session with automatic reconnects (guarantees.md: QoS 1, clean, automatic: "unacknowledged:
/// fails with `ConnectionLost`"): a QoS 1 PUBLISH reaches the broker, its PUBACK is held at
/// the proxy, and the link is cut. The reconnect starts clean, so the call fails with
/// `ConnectionLost` well before its own timeout (which would be `Unacknowledged`), and the
/// PUBLISH is not sent again (no DUP) on the new connection: the witness gets the one copy
/// the broker had before the cut, and nothing else before a marker published afterwards.
async fn clean_session_auto_loss(protocol: ProtocolVersion) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("clean_auto_loss");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let clean = match protocol {
        V5 => builder(proxy.port(), protocol).clean_start(CleanStart::Always),
        _ => builder(proxy.port(), protocol).clean_session(true),
    };
    let mut ours = Ours::connect(clean.identifier(client_id("cleanauto")), Auto).await;

    proxy.blackhole_dir(B2C, true);
    let before = proxy.count(C2B, PacketType::Publish);
    let publish = tokio::spawn(
        ours.conn
            .publish(&topic, "unacknowledged")
            .qos(QoS::AtLeastOnce)
            .into_future(),
    );
    proxy
        .wait_for(C2B, PacketType::Publish, before + 1, WAIT)
        .await;
    let cut_at = Instant::now();
    proxy.cut();
    proxy.blackhole_dir(B2C, false);
    ours.lost().await;
    assert!(!ours.resumed().await, "a clean session is not resumed");
    let result = within!(CALL_WAIT, publish).expect("publish task");
    let after = cut_at.elapsed();

    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::AtLeastOnce)
    )
    .expect("marker");
    let delivered = witness.before_marker(&marker).await;
    let trace = proxy.trace();
    let (_, first) = original(&proxy, C2B, &topic);
    let resent: Vec<String> = publishes(&proxy, C2B, &topic)
        .iter()
        .filter(|p| p.conn > first || p.dup())
        .map(|p| p.to_string())
        .collect();
    assert!(
        resent.is_empty(),
        "the unacknowledged PUBLISH was sent again after the reconnect: {resent:?}\ntrace:\n{trace}"
    );
    assert_eq!(
        count(&delivered, &topic, "unacknowledged"),
        1,
        "copies delivered before the marker: {:?}\ntrace:\n{trace}",
        summary(&delivered)
    );
    assert_eq!(delivered.len(), 1, "{:?}", summary(&delivered));

    match &result {
        Err(e @ Error::ConnectionLost { .. }) => assert!(e.is_connection_lost()),
        other => panic!("expected ConnectionLost, got {other:?} {after:?} after the cut"),
    }
    assert!(
        after < CALL_TIMEOUT / 2,
        "the call failed {after:?} after the cut: not at the reconnect but near its timeout \
         ({CALL_TIMEOUT:?})"
    );
}

// ---------------------------------------------------------------------------------------------
// 5b. A QoS 0 publish still queued at the loss

/// A QoS 0 publish queued behind a large one that the socket cannot take (the proxy stops
/// reading) when the link is cut: sent after the reconnect with a persistent session or
/// automatic reconnects, then `Ok`; with a clean session and a loop it fails with
/// `ConnectionLost` and is never sent (guarantees.md, the QoS 0 row).
async fn qos0_queued_at_the_loss(protocol: ProtocolVersion, style: Style, keep: bool) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("qos0_queued");
    let (big, topic, marker) = (
        format!("{base}/big"),
        format!("{base}/queued"),
        format!("{base}/marker"),
    );
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let b = if keep {
        persistent(proxy.port(), protocol, "qos0queued")
    } else {
        builder(proxy.port(), protocol).identifier(client_id("qos0queued"))
    };
    let mut ours = Ours::connect(b, style).await;

    // The proxy stops reading: 16 MiB fill the sockets' buffers and the PUBLISH on
    // `topic` waits behind them in the engine's queue.
    proxy.blackhole_dir(C2B, true);
    let calls = start_all(vec![
        Box::pin(ours.conn.publish(&big, vec![0u8; 16 << 20]).into_future()),
        Box::pin(ours.conn.publish(&topic, "queued").into_future()),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !calls.is_finished(),
        "the publishes completed behind a full socket"
    );
    proxy.cut();
    proxy.blackhole_dir(C2B, false);
    ours.lost().await;
    ours.resumed().await;
    let results = within!(CALL_WAIT, calls).expect("the calls' task");
    within!(WAIT, ours.conn.publish(&marker, "marker")).expect("marker");
    let delivered = witness.before_marker(&marker).await;
    let sent_later = publishes(&proxy, C2B, &topic)
        .iter()
        .filter(|p| p.conn > 1)
        .count();
    let trace = proxy.trace();
    if keep || style == Auto {
        assert!(results[1].is_ok(), "the queued publish: {:?}", results[1]);
        assert_eq!(sent_later, 1, "trace:\n{trace}");
        assert_eq!(
            count(&delivered, &topic, "queued"),
            1,
            "{:?}",
            summary(&delivered)
        );
    } else {
        assert!(
            matches!(results[1], Err(Error::ConnectionLost { .. })),
            "the queued publish: {:?}",
            results[1]
        );
        assert_eq!(sent_later, 0, "sent on the next connection:\n{trace}");
        assert_eq!(
            count(&delivered, &topic, "queued"),
            0,
            "{:?}",
            summary(&delivered)
        );
    }
    println!(
        "OBSERVED qos0 queued ({protocol:?}, {style:?}, persistent {keep}): big {:?}, queued {:?}",
        results[0], results[1]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Packet ids after a resume with an id in flight at the broker

async fn packet_ids_after_resume(protocol: ProtocolVersion, style: Style) {
    const NEW: usize = 6;
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("packet_ids");
    let (topic, marker) = (format!("{base}/a"), format!("{base}/marker"));
    let news: Vec<String> = (0..NEW).map(|i| format!("{base}/new{i}")).collect();
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "ids"), style).await;

    // Automatic reconnects wait while the proxy refuses, so that the new publishes are
    // made while the link is down.
    proxy.refuse(true);
    // Our PUBREL is stopped: the broker holds the exchange's id, waiting for it.
    proxy.cut_on(C2B, PacketType::Pubrel, 1, CutMode::Rst);
    let first = tokio::spawn(
        ours.conn
            .publish(&topic, "a")
            .qos(QoS::ExactlyOnce)
            .into_future(),
    );
    wait_fired(&proxy).await;
    ours.lost().await;
    let calls = |conn: &Connection| -> Vec<Call> {
        news.iter()
            .enumerate()
            .map(|(i, t)| {
                let qos = if i % 2 == 0 {
                    QoS::ExactlyOnce
                } else {
                    QoS::AtLeastOnce
                };
                conn.publish(t, "new").qos(qos).into_future()
            })
            .collect()
    };
    let new_calls = match style {
        Loop => {
            proxy.refuse(false);
            assert!(ours.resumed().await, "the broker kept the session");
            start_all(calls(&ours.conn)).await
        }
        Auto => {
            let started = start_all(calls(&ours.conn)).await;
            proxy.refuse(false);
            assert!(ours.resumed().await, "the broker kept the session");
            started
        }
    };
    let first = within!(CALL_WAIT, first).expect("publish task");
    assert!(first.is_ok(), "{first:?}\ntrace:\n{}", proxy.trace());
    all_ok(
        &within!(CALL_WAIT, new_calls).expect("calls"),
        &proxy.trace(),
    );
    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::ExactlyOnce)
    )
    .expect("marker");
    let before = witness.before_marker(&marker).await;
    let trace = proxy.trace();
    assert_eq!(count(&before, &topic, "a"), 1, "{:?}", summary(&before));
    for t in &news {
        assert_eq!(
            count(&before, t, "new"),
            1,
            "{t}: {:?}\ntrace:\n{trace}",
            summary(&before)
        );
    }

    let (id, conn) = original(&proxy, C2B, &topic);
    assert!(
        with_id(&proxy, C2B, PacketType::Pubrel, id)
            .iter()
            .any(|p| p.conn > conn),
        "PUBREL {id} was not resent:\n{trace}"
    );
    let mut new_ids = Vec::new();
    for t in &news {
        let p = publishes(&proxy, C2B, t);
        assert_eq!(p.len(), 1, "{t} sent {} times:\n{trace}", p.len());
        new_ids.push(p[0].packet_id().expect("QoS > 0"));
    }
    assert!(
        !new_ids.contains(&id),
        "a new PUBLISH reused id {id}, which the broker held at the resume: {new_ids:?}\n{trace}"
    );
    let mut distinct = new_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), NEW, "ids {new_ids:?}\n{trace}");
}

// ---------------------------------------------------------------------------------------------
// 7. A persistent-session publish that times out during the outage, delivered later

async fn unacknowledged_then_delivered(protocol: ProtocolVersion, style: Style, qos: QoS) {
    init_logging();
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("unacknowledged");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "unack"), style).await;

    // The outage lasts until the proxy accepts again.
    proxy.refuse(true);
    proxy.cut_on(C2B, PacketType::Publish, 1, CutMode::Rst);
    let publish = tokio::spawn(
        ours.conn
            .publish(&topic, "late")
            .qos(qos)
            .timeout(Duration::from_secs(1))
            .into_future(),
    );
    wait_fired(&proxy).await;
    ours.lost().await;
    let result = within!(WAIT, publish).expect("publish task");
    match &result {
        Err(e @ Error::Unacknowledged) => {
            assert!(e.is_timeout());
            assert_eq!(
                e.to_string(),
                "No acknowledgement within the timeout; the message may still be delivered"
            );
        }
        other => panic!("expected Unacknowledged, got {other:?}"),
    }

    proxy.refuse(false);
    assert!(ours.resumed().await, "the broker kept the session");
    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::ExactlyOnce)
    )
    .expect("marker");
    let before = witness.before_marker(&marker).await;
    let trace = proxy.trace();
    assert_eq!(
        count(&before, &topic, "late"),
        1,
        "{:?}\ntrace:\n{trace}",
        summary(&before)
    );
    assert!(
        publishes(&proxy, C2B, &topic).iter().any(|p| p.dup()),
        "the PUBLISH was not resent with DUP:\n{trace}"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The broker lost the session: the calls still pending fail

/// A persistent session whose broker restarts without persistence while a QoS 1 call waits
/// for its PUBACK (held back at the proxy): the next connection finds no session
/// (`session_present` false), and the call fails then with `ConnectionLost`, not at its
/// timeout as `Unacknowledged` (guarantees.md). The engine drops its unacknowledged state
/// too: the PUBLISH never goes out again. A witness subscribed on the restarted broker
/// before our client reconnects, and a marker our client publishes after it reconnected,
/// show it: the engine resends on the reconnect, before the marker.
async fn broker_lost_the_session(protocol: ProtocolVersion, style: Style) {
    init_logging();
    let mut broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let base = unique_topic("session_lost");
    let (topic, marker) = (format!("{base}/m"), format!("{base}/marker"));
    let mut ours = Ours::connect(persistent(proxy.port(), protocol, "lost"), style).await;

    proxy.blackhole_dir(B2C, true);
    let before = proxy.count(C2B, PacketType::Publish);
    let publish = tokio::spawn(
        ours.conn
            .publish(&topic, "pending")
            .qos(QoS::AtLeastOnce)
            .into_future(),
    );
    proxy
        .wait_for(C2B, PacketType::Publish, before + 1, WAIT)
        .await;
    broker.kill();
    // No reconnect gets through until the witness is subscribed on the restarted broker.
    proxy.refuse(true);
    proxy.cut();
    proxy.blackhole_dir(B2C, false);
    ours.lost().await;
    tokio::task::block_in_place(|| broker.start_again());
    let restarted = Instant::now();
    let mut witness = Witness::start(broker.port(), protocol, &format!("{base}/#")).await;
    proxy.refuse(false);
    assert!(
        !ours.resumed().await,
        "the restarted broker kept no session"
    );
    let result = within!(WAIT, publish).expect("publish task");
    let after = restarted.elapsed();

    // Nothing of the lost session goes out on the new connection: the marker, published
    // after the reconnect, arrives with nothing before it.
    within!(
        WAIT,
        ours.conn.publish(&marker, "marker").qos(QoS::AtLeastOnce)
    )
    .expect("marker");
    let delivered = witness.before_marker(&marker).await;
    let trace = proxy.trace();
    let (_, first) = original(&proxy, C2B, &topic);
    let resent: Vec<String> = publishes(&proxy, C2B, &topic)
        .iter()
        .filter(|p| p.conn > first)
        .map(|p| p.to_string())
        .collect();
    assert!(
        resent.is_empty(),
        "the PUBLISH of the lost session went out again: {resent:?}\ntrace:\n{trace}"
    );
    assert!(
        delivered.is_empty(),
        "delivered before the marker: {:?}\ntrace:\n{trace}",
        summary(&delivered)
    );

    match &result {
        Err(e @ Error::ConnectionLost { .. }) => assert!(e.is_connection_lost()),
        other => panic!("expected ConnectionLost, got {other:?} {after:?} after the restart"),
    }
    assert!(
        after < CALL_TIMEOUT,
        "the call failed {after:?} after the restart: at its timeout, not with the session"
    );
}

// ---------------------------------------------------------------------------------------------
// The tests

/// How long a child process running one test may take.
const CHILD: Duration = Duration::from_secs(120);

/// Every test runs alone in a child process: Paho C 1.3.16 was seen corrupting the heap
/// when a link breaks while its send thread writes a PUBLISH (see
/// `qos1_stream_out_repeated_cuts`), and a crash must fail that test, not the whole binary.
macro_rules! tests {
    ($($(#[$doc:meta])* $name:ident => $body:expr;)*) => {$(
        $(#[$doc])*
        #[test]
        fn $name() {
            if ran_in_child(concat!("inflight::", stringify!($name)), CHILD) {
                return;
            }
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(with_timeout_ctx(BODY, stringify!($name), $body));
        }
    )*};
}

tests! {
    // 1. Outgoing QoS 2: the broker's PUBREC, our PUBREL, the broker's PUBCOMP cut (RST).
    outgoing_qos2_cut_before_pubrec_v311_loop => outgoing_qos2(V311, Loop, Step::Pubrec, CutMode::Rst);
    outgoing_qos2_cut_before_pubrec_v311_auto => outgoing_qos2(V311, Auto, Step::Pubrec, CutMode::Rst);
    outgoing_qos2_cut_before_pubrec_v5_loop => outgoing_qos2(V5, Loop, Step::Pubrec, CutMode::Rst);
    outgoing_qos2_cut_before_pubrec_v5_auto => outgoing_qos2(V5, Auto, Step::Pubrec, CutMode::Rst);
    outgoing_qos2_cut_before_pubrel_v311_loop => outgoing_qos2(V311, Loop, Step::Pubrel, CutMode::Rst);
    outgoing_qos2_cut_before_pubrel_v311_auto => outgoing_qos2(V311, Auto, Step::Pubrel, CutMode::Rst);
    outgoing_qos2_cut_before_pubrel_v5_loop => outgoing_qos2(V5, Loop, Step::Pubrel, CutMode::Rst);
    outgoing_qos2_cut_before_pubrel_v5_auto => outgoing_qos2(V5, Auto, Step::Pubrel, CutMode::Rst);
    outgoing_qos2_cut_before_pubcomp_v311_loop => outgoing_qos2(V311, Loop, Step::Pubcomp, CutMode::Rst);
    outgoing_qos2_cut_before_pubcomp_v311_auto => outgoing_qos2(V311, Auto, Step::Pubcomp, CutMode::Rst);
    outgoing_qos2_cut_before_pubcomp_v5_loop => outgoing_qos2(V5, Loop, Step::Pubcomp, CutMode::Rst);
    outgoing_qos2_cut_before_pubcomp_v5_auto => outgoing_qos2(V5, Auto, Step::Pubcomp, CutMode::Rst);
    /// The same with a FIN instead of an RST.
    outgoing_qos2_fin_before_pubrel_v311_loop => outgoing_qos2(V311, Loop, Step::Pubrel, CutMode::Fin);
    outgoing_qos2_fin_before_pubrel_v5_auto => outgoing_qos2(V5, Auto, Step::Pubrel, CutMode::Fin);

    // 2. Incoming QoS 2: our PUBREC, the broker's PUBREL, our PUBCOMP cut.
    incoming_qos2_cut_before_pubrec_v311_loop => incoming_qos2(V311, Loop, Step::Pubrec);
    incoming_qos2_cut_before_pubrec_v311_auto => incoming_qos2(V311, Auto, Step::Pubrec);
    incoming_qos2_cut_before_pubrec_v5_loop => incoming_qos2(V5, Loop, Step::Pubrec);
    incoming_qos2_cut_before_pubrec_v5_auto => incoming_qos2(V5, Auto, Step::Pubrec);
    incoming_qos2_cut_before_pubrel_v311_loop => incoming_qos2(V311, Loop, Step::Pubrel);
    incoming_qos2_cut_before_pubrel_v311_auto => incoming_qos2(V311, Auto, Step::Pubrel);
    incoming_qos2_cut_before_pubrel_v5_loop => incoming_qos2(V5, Loop, Step::Pubrel);
    incoming_qos2_cut_before_pubrel_v5_auto => incoming_qos2(V5, Auto, Step::Pubrel);
    incoming_qos2_cut_before_pubcomp_v311_loop => incoming_qos2(V311, Loop, Step::Pubcomp);
    incoming_qos2_cut_before_pubcomp_v311_auto => incoming_qos2(V311, Auto, Step::Pubcomp);
    incoming_qos2_cut_before_pubcomp_v5_loop => incoming_qos2(V5, Loop, Step::Pubcomp);
    incoming_qos2_cut_before_pubcomp_v5_auto => incoming_qos2(V5, Auto, Step::Pubcomp);

    // 3. QoS 1 numbered streams, both directions, cut (RST) in the middle.
    qos1_stream_out_v311_loop => qos1_stream_out(V311, Loop);
    qos1_stream_out_v311_auto => qos1_stream_out(V311, Auto);
    qos1_stream_out_v5_loop => qos1_stream_out(V5, Loop);
    qos1_stream_out_v5_auto => qos1_stream_out(V5, Auto);
    /// The outgoing stream cut in eight rounds (see the function).
    qos1_stream_out_repeated_cuts_v311 => qos1_stream_out_repeated_cuts(V311);
    qos1_stream_out_repeated_cuts_v5 => qos1_stream_out_repeated_cuts(V5);
    qos1_stream_in_v311_loop => qos1_stream_in(V311, Loop);
    qos1_stream_in_v311_auto => qos1_stream_in(V311, Auto);
    qos1_stream_in_v5_loop => qos1_stream_in(V5, Loop);
    qos1_stream_in_v5_auto => qos1_stream_in(V5, Auto);

    // 4. Broker restart with persistence (automatic reconnects).
    broker_restart_v311 => broker_restart(V311);
    broker_restart_v5 => broker_restart(V5);

    // 5. Clean session, loop style.
    clean_session_loss_fails_at_once_v311 => clean_session_loss(V311, Clean::Flag);
    clean_session_loss_fails_at_once_v5 => clean_session_loss(V5, Clean::Flag);
    /// MQTT 5's default Clean Start with a Session Expiry Interval: clean in loop style.
    /// Regression: the calls waited for their timeout (`Unacknowledged`), and the engine
    /// was kept as for a session the next `connect()` would resume.
    clean_session_loss_fails_at_once_v5_first_only_with_expiry =>
        clean_session_loss(V5, Clean::ConnectStartsClean);
    /// A QoS 1 stream, cut in four rounds.
    clean_session_stream_loss_v311 => clean_session_stream_loss(V311);
    clean_session_stream_loss_v5 => clean_session_stream_loss(V5);
    /// A clean session with automatic reconnects: the unacknowledged call fails with
    /// `ConnectionLost` at the reconnect, and its PUBLISH is not resent.
    clean_session_auto_loss_v311 => clean_session_auto_loss(V311);
    clean_session_auto_loss_v5 => clean_session_auto_loss(V5);

    // 5b. A QoS 0 publish still queued at the loss.
    qos0_queued_at_the_loss_clean_loop_v311 => qos0_queued_at_the_loss(V311, Loop, false);
    qos0_queued_at_the_loss_clean_loop_v5 => qos0_queued_at_the_loss(V5, Loop, false);
    qos0_queued_at_the_loss_clean_auto_v311 => qos0_queued_at_the_loss(V311, Auto, false);
    qos0_queued_at_the_loss_persistent_loop_v311 => qos0_queued_at_the_loss(V311, Loop, true);
    qos0_queued_at_the_loss_persistent_auto_v5 => qos0_queued_at_the_loss(V5, Auto, true);

    // 6. Packet ids after a resume.
    packet_ids_after_resume_v311_loop => packet_ids_after_resume(V311, Loop);
    packet_ids_after_resume_v311_auto => packet_ids_after_resume(V311, Auto);
    packet_ids_after_resume_v5_loop => packet_ids_after_resume(V5, Loop);
    packet_ids_after_resume_v5_auto => packet_ids_after_resume(V5, Auto);

    // 7. Unacknowledged during the outage, delivered after it.
    unacknowledged_then_delivered_qos1_v311_loop => unacknowledged_then_delivered(V311, Loop, QoS::AtLeastOnce);
    unacknowledged_then_delivered_qos1_v311_auto => unacknowledged_then_delivered(V311, Auto, QoS::AtLeastOnce);
    unacknowledged_then_delivered_qos1_v5_loop => unacknowledged_then_delivered(V5, Loop, QoS::AtLeastOnce);
    unacknowledged_then_delivered_qos1_v5_auto => unacknowledged_then_delivered(V5, Auto, QoS::AtLeastOnce);
    unacknowledged_then_delivered_qos2_v311_loop => unacknowledged_then_delivered(V311, Loop, QoS::ExactlyOnce);
    unacknowledged_then_delivered_qos2_v5_auto => unacknowledged_then_delivered(V5, Auto, QoS::ExactlyOnce);

    // 8. The broker lost the session.
    broker_lost_the_session_v311_loop => broker_lost_the_session(V311, Loop);
    broker_lost_the_session_v311_auto => broker_lost_the_session(V311, Auto);
    broker_lost_the_session_v5_loop => broker_lost_the_session(V5, Loop);
    broker_lost_the_session_v5_auto => broker_lost_the_session(V5, Auto);
}
