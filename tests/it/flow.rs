//! Outgoing flow control: the in-flight window is what goes on the wire, and a
//! bounded outgoing queue refuses with a clear error instead of growing.

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::mqtt::connect_on;
use crate::support::*;
use aiomqtt::{Client, ClientBuilder, Error, Messages, ProtocolVersion, QoS};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

const T: Duration = Duration::from_secs(30);

/// Publishes `n` messages at `qos` at once through a proxy to a paused broker (3.1.1)
/// and returns how many PUBLISH packets the client put on the wire.
async fn publishes_on_the_wire(window: Option<u16>, qos: QoS, n: usize, expected: usize) -> usize {
    let v311 = ProtocolVersion::V311;
    publishes_on_the_wire_to(Broker::start(), v311, window, qos, n, expected).await
}

/// The same, over `protocol` to `broker`, waiting for `expected` PUBLISH packets.
async fn publishes_on_the_wire_to(
    broker: Broker,
    protocol: ProtocolVersion,
    window: Option<u16>,
    qos: QoS,
    n: usize,
    expected: usize,
) -> usize {
    let configure = with_window(window);
    let (sent, _) =
        publishes_on_the_wire_at(broker, protocol, &configure, &|_| qos, n, expected).await;
    sent
}

/// A builder with `max_inflight_messages(window)` when set.
fn with_window(window: Option<u16>) -> impl Fn(ClientBuilder) -> ClientBuilder {
    move |b| match window {
        Some(window) => b.max_inflight_messages(window),
        None => b,
    }
}

/// The same with a client `configure`d and call `i` at `qos(i)`; also returns the QoS of each
/// PUBLISH on the wire while the broker was paused, in wire order.
async fn publishes_on_the_wire_at(
    mut broker: Broker,
    protocol: ProtocolVersion,
    configure: &dyn Fn(ClientBuilder) -> ClientBuilder,
    qos: &dyn Fn(usize) -> QoS,
    n: usize,
    expected: usize,
) -> (usize, Vec<u8>) {
    let proxy = FaultProxy::start(broker.port()).await;
    let b = Client::builder("127.0.0.1")
        .port(proxy.port())
        .protocol(protocol);
    let conn = configure(b).build().unwrap().connect().await.unwrap();
    broker.pause();
    let topic = unique_topic("window");
    let calls: Vec<_> = (0..n)
        .map(|i| conn.publish(&topic, i).qos(qos(i)).into_future())
        .collect();
    // The calls run in a task of their own, which hands each to the engine when it first
    // polls it; the engine sends as many as its window allows. Wait for the window to be on the wire (an event), then give the
    // rest time to follow: nothing beyond the window may. (A window that were not
    // enforced would send the rest within microseconds; this settling time can only make
    // the test pass wrongly, never fail wrongly.)
    let all = tokio::spawn(futures::future::join_all(calls));
    let sent = publishes_once_settled(&proxy, expected).await;
    let levels = first_publishes(&proxy)
        .iter()
        .take(sent)
        .map(|p| p.qos())
        .collect();
    broker.resume();
    for result in all.await.unwrap() {
        result.unwrap();
    }
    assert_eq!(first_publishes(&proxy).len(), n);
    (sent, levels)
}

/// Waits for `n` PUBLISH packets from the client on the wire, then 300 ms for any that should
/// not follow (a count too high can only appear later, never vanish), and returns the count.
/// Counts first sends only (see [`first_publishes`]).
async fn publishes_once_settled(proxy: &FaultProxy, n: usize) -> usize {
    let arrived = wait_until_async(Duration::from_secs(10), || {
        first_publishes(proxy).len() >= n
    })
    .await;
    assert!(arrived, "{n} PUBLISH packets expected:\n{}", proxy.trace());
    tokio::time::sleep(Duration::from_millis(300)).await;
    first_publishes(proxy).len()
}

/// The client's PUBLISH packets on the wire, resends (DUP) left out: when a session of
/// another test resumes, Paho C resends every connected client's unacknowledged messages
/// (`faults::a_resumed_session_makes_paho_resend_every_clients_messages`).
fn first_publishes(proxy: &FaultProxy) -> Vec<Packet> {
    proxy
        .packets(Direction::ClientToBroker, PacketType::Publish)
        .into_iter()
        .filter(|p| !p.dup())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn inflight_window_is_enforced_on_the_wire() {
    with_timeout(T, async {
        let (qos1, qos2) = (QoS::AtLeastOnce, QoS::ExactlyOnce);
        assert_eq!(publishes_on_the_wire(Some(5), qos1, 30, 5).await, 5);
        assert_eq!(publishes_on_the_wire(Some(5), qos2, 30, 5).await, 5);
        // The default window on 3.1.1: 100, of which 20 QoS 2 publishes (Mosquitto's own
        // default window).
        assert_eq!(publishes_on_the_wire(None, qos1, 150, 100).await, 100);
        assert_eq!(publishes_on_the_wire(None, qos2, 30, 20).await, 20);
    })
    .await;
}

/// On MQTT 3.1.1 the default window keeps the broker's count of QoS 2 exchanges below its
/// window (20) whenever a QoS 1 PUBLISH may reach it: QoS 2 publishes take 19 places while
/// a QoS 1 one is unacknowledged, and a QoS 1 publish waits while 20 QoS 2 ones are; calls
/// leave in call order. With `max_queued_outgoing_messages` set the default is 20 for all.
#[tokio::test(flavor = "multi_thread")]
async fn the_v311_default_window_keeps_a_qos2_place_for_qos1() {
    with_timeout(T, async {
        let (qos1, qos2) = (QoS::AtLeastOnce, QoS::ExactlyOnce);
        let v311 = ProtocolVersion::V311;
        let default = with_window(None);
        // One QoS 1 publish, then QoS 2 ones: 19 of those go.
        let first_qos1 = |i: usize| if i == 0 { qos1 } else { qos2 };
        let (sent, levels) =
            publishes_on_the_wire_at(Broker::start(), v311, &default, &first_qos1, 30, 20).await;
        assert_eq!(sent, 20);
        assert_eq!(levels.iter().filter(|&&q| q == 2).count(), 19, "{levels:?}");
        // 20 QoS 2 publishes, then QoS 1 ones: the QoS 1 ones wait, and so do those behind.
        let last_qos1 = |i: usize| if i < 20 { qos2 } else { qos1 };
        let (sent, levels) =
            publishes_on_the_wire_at(Broker::start(), v311, &default, &last_qos1, 30, 20).await;
        assert_eq!((sent, levels), (20, vec![2; 20]));
        // QoS 1 publishes after 19 QoS 2 ones go up to the window.
        let qos2_first = |i: usize| if i < 19 { qos2 } else { qos1 };
        let (sent, _) =
            publishes_on_the_wire_at(Broker::start(), v311, &default, &qos2_first, 150, 100).await;
        assert_eq!(sent, 100);
        // Without the client's line (the engine's queue bounded by the user), the 3.1.1
        // default is 20 for QoS 1 and 2 together.
        let queue_bounded = |b: ClientBuilder| b.max_queued_outgoing_messages(1_000);
        let (sent, _) =
            publishes_on_the_wire_at(Broker::start(), v311, &queue_bounded, &|_| qos1, 150, 20)
                .await;
        assert_eq!(sent, 20);
    })
    .await;
}

/// On MQTT 3.1.1 the default window (100, QoS 2 publishes kept within the broker's window)
/// is safe against a Mosquitto with its default window (`max_inflight_messages 20`): mixed
/// bursts of 600 calls at once — one QoS 2 call in three, then two in three — are
/// delivered whole, each message once, on one connection, the PUBLISH packets on the wire
/// in call order. A QoS 1 or 2 PUBLISH that found the broker's count of QoS 2 exchanges
/// full would end the connection: Mosquitto 2.0.11 (as Debian ships it) refuses it with
/// reason code 0x97, and with `max_queued_messages 0` also closes the connection. (A
/// default that bounded QoS 2 publishes to 20 without keeping a place for QoS 1 ones lost
/// this connection in every run: call 80, a QoS 1 PUBLISH refused with 0x97.)
#[tokio::test(flavor = "multi_thread")]
async fn the_v311_default_window_survives_a_mixed_burst() {
    with_timeout(T, async {
        let broker = Broker::builder()
            .max_inflight_messages(20)
            .max_queued_messages(0)
            .start();
        let mixes: [fn(usize) -> QoS; 2] = [one_qos2_in_three, two_qos2_in_three];
        for qos in mixes {
            let proxy = a_burst_arrives_whole_in_call_order(&broker, "mixed_burst", 600, qos).await;
            assert_eq!(proxy.connections(), 1, "the broker dropped the connection");
        }
    })
    .await;
}

/// Call `i`'s QoS in a mixed burst: QoS 2 for every third call, QoS 1 for the others.
fn one_qos2_in_three(i: usize) -> QoS {
    if i % 3 == 2 {
        QoS::ExactlyOnce
    } else {
        QoS::AtLeastOnce
    }
}

/// Call `i`'s QoS in a mixed burst: QoS 1 for every third call, QoS 2 for the others.
fn two_qos2_in_three(i: usize) -> QoS {
    if i % 3 == 2 {
        QoS::AtLeastOnce
    } else {
        QoS::ExactlyOnce
    }
}

/// Reads `inbox` until each of the payloads `0..n` has come, then for as long as more come
/// within 300 ms; returns how many times each came.
async fn receive_each(inbox: &mut Messages, n: usize) -> Vec<u32> {
    let mut seen = vec![0u32; n];
    while seen.contains(&0) {
        let message = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .unwrap_or_else(|_| {
                let missing: Vec<usize> = (0..n).filter(|&i| seen[i] == 0).collect();
                panic!("missing {missing:?}")
            })
            .expect("the stream is open")
            .expect("a message");
        let i: usize = message.payload_str().unwrap().parse().unwrap();
        seen[i] += 1;
    }
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(300), inbox.next()).await
    {
        let i: usize = message.payload_str().unwrap().parse().unwrap();
        seen[i] += 1;
    }
    seen
}

/// A PUBLISH packet's payload, as text.
fn payload_text(p: &Packet) -> String {
    String::from_utf8_lossy(p.payload().unwrap_or_default()).into_owned()
}

/// Makes `n` publish calls at once (call `i` at `qos(i)`, its payload `i`) on a connection
/// with default options (MQTT 3.1.1) through a proxy to `broker`, and checks that every call
/// succeeds, that a watcher receives each message once, and that the PUBLISH packets reach
/// the wire in call order. Returns the proxy.
async fn a_burst_arrives_whole_in_call_order(
    broker: &Broker,
    name: &str,
    n: usize,
    qos: impl Fn(usize) -> QoS,
) -> FaultProxy {
    let proxy = FaultProxy::start(broker.port()).await;
    let topic = unique_topic(name);
    let watcher = connect_on(broker.port(), ProtocolVersion::V311).await;
    watcher
        .subscribe((topic.as_str(), QoS::ExactlyOnce))
        .await
        .unwrap();
    let mut inbox = watcher.messages();
    let conn = Client::builder("127.0.0.1")
        .port(proxy.port())
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let calls = (0..n).map(|i| {
        conn.publish(&topic, i.to_string())
            .qos(qos(i))
            .into_future()
    });
    for (i, result) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        result.unwrap_or_else(|e| panic!("call {i} ({:?}): {e}", qos(i)));
    }
    let seen = receive_each(&mut inbox, n).await;
    // Each message once; a QoS 1 one twice only if the client resent it (DUP), which
    // Paho C does when a session of another test of this process resumes.
    let resent: Vec<String> = proxy
        .packets(Direction::ClientToBroker, PacketType::Publish)
        .iter()
        .filter(|p| p.dup() && p.qos() == 1)
        .map(payload_text)
        .collect();
    let twice: Vec<usize> = (0..n)
        .filter(|&i| seen[i] > 1 && !resent.contains(&i.to_string()))
        .collect();
    assert!(twice.is_empty(), "more than once: {twice:?} ({seen:?})");
    let wire: Vec<String> = first_publishes(&proxy).iter().map(payload_text).collect();
    let calls: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(wire, calls, "PUBLISH packets not in call order");
    proxy
}

/// On MQTT 5 the default window is the broker's Receive Maximum, at most 2,000 (Mosquitto
/// announces its `max_inflight_messages`, and none when that is 0: 65,535 then); a window
/// set by the user is kept, beyond 2,000 too, and lowered to the broker's when wider.
#[tokio::test(flavor = "multi_thread")]
async fn the_v5_window_is_the_brokers_receive_maximum_by_default() {
    with_timeout(T, async {
        let announcing = || Broker::builder().max_inflight_messages(50).start();
        let v5 = ProtocolVersion::V5;
        assert_eq!(
            publishes_on_the_wire_to(announcing(), v5, None, QoS::AtLeastOnce, 120, 50).await,
            50
        );
        assert_eq!(
            publishes_on_the_wire_to(announcing(), v5, Some(5), QoS::AtLeastOnce, 30, 5).await,
            5
        );
        assert_eq!(
            publishes_on_the_wire_to(announcing(), v5, Some(80), QoS::AtLeastOnce, 120, 50).await,
            50
        );
        let unlimited = || Broker::builder().max_inflight_messages(0).start();
        assert_eq!(
            publishes_on_the_wire_to(unlimited(), v5, None, QoS::AtLeastOnce, 2_100, 2_000).await,
            2_000
        );
        let wide = Broker::builder().max_inflight_messages(3_000).start();
        assert_eq!(
            publishes_on_the_wire_to(wide, v5, None, QoS::AtLeastOnce, 2_100, 2_000).await,
            2_000
        );
        let asked = Some(2_500);
        assert_eq!(
            publishes_on_the_wire_to(unlimited(), v5, asked, QoS::AtLeastOnce, 2_600, 2_500).await,
            2_500
        );
    })
    .await;
}

/// The calls the engine is handed beyond its window (`ops::admission`).
const SLACK: usize = 32;

/// Publishes 200 QoS 1 messages at once, each with a timeout of 1 s, to a paused broker
/// (through a proxy), and checks that the engine was handed only `window` plus the slack:
/// those calls end `Unacknowledged` (the engine may still send them), the rest, which
/// waited in the facade, `Timeout`. When the broker resumes, exactly the calls handed over
/// reach it, in call order.
async fn a_burst_waits_beyond(mut broker: Broker, protocol: ProtocolVersion, window: usize) {
    let proxy = FaultProxy::start(broker.port()).await;
    let conn = Client::builder("127.0.0.1")
        .port(proxy.port())
        .protocol(protocol)
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap();
    broker.pause();
    let topic = unique_topic("admission");
    const N: usize = 200;
    let calls = (0..N).map(|i| {
        conn.publish(&topic, i.to_string())
            .qos(QoS::AtLeastOnce)
            .into_future()
    });
    let results = futures::future::join_all(calls).await;
    let handed = window + SLACK;
    for (i, result) in results.iter().enumerate() {
        if i < handed {
            assert!(
                matches!(result, Err(Error::Unacknowledged)),
                "call {i}: {result:?}"
            );
        } else {
            assert!(
                matches!(result, Err(Error::Timeout)),
                "call {i}: {result:?}"
            );
        }
    }
    assert_eq!(first_publishes(&proxy).len(), window);
    broker.resume();
    publishes_once_settled(&proxy, handed).await;
    let wire: Vec<String> = first_publishes(&proxy).iter().map(payload_text).collect();
    let expected: Vec<String> = (0..handed).map(|i| i.to_string()).collect();
    assert_eq!(wire, expected);
}

/// A burst far beyond the window waits in the facade, not in the engine (whose queue
/// walk would make it quadratic), with the default window of MQTT 3.1.1 (100) and with the
/// Receive Maximum an MQTT 5 broker announces (10).
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_beyond_the_window_waits_in_the_facade() {
    with_timeout(T, async {
        a_burst_waits_beyond(Broker::start(), ProtocolVersion::V311, 100).await;
        let announcing = Broker::builder().max_inflight_messages(10).start();
        a_burst_waits_beyond(announcing, ProtocolVersion::V5, 10).await;
    })
    .await;
}

/// QoS 0 publishes take no place in the window, but those made while QoS 1 calls wait
/// for one wait behind them: a burst of 300 calls, every third at QoS 0, reaches the
/// wire in call order and is delivered whole.
#[tokio::test(flavor = "multi_thread")]
async fn qos0_calls_keep_their_place_behind_waiting_calls() {
    with_timeout(T, async {
        let qos = |i: usize| {
            if i % 3 == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            }
        };
        a_burst_arrives_whole_in_call_order(&Broker::start(), "admission_order", 300, qos).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_outgoing_queue_refuses_with_a_clear_error() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let conn = Client::builder("127.0.0.1")
            .port(broker.port())
            .max_inflight_messages(1)
            .max_queued_outgoing_messages(40)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        broker.pause();
        let topic = unique_topic("outgoing");
        // Each call is handed to the engine when first polled, in order — with a bound, even
        // beyond the window plus 32, which would otherwise wait in the client: 40 wait in
        // the engine's queue and one more is on the wire (window 1) once the engine's
        // thread has sent it; the rest are refused at once.
        let mut pending = Vec::new();
        let mut results = Vec::new();
        for i in 0..50 {
            let mut call = conn.publish(&topic, i).qos(QoS::AtLeastOnce).into_future();
            match futures::poll!(&mut call) {
                std::task::Poll::Ready(result) => results.push(result),
                std::task::Poll::Pending => pending.push(call),
            }
        }
        let accepted = pending.len();
        assert!((40..=41).contains(&accepted), "accepted: {results:?}");
        broker.resume();
        for call in pending {
            results.push(call.await);
        }
        let (mut ok, mut full) = (0, 0);
        for result in results {
            match result {
                Ok(()) => ok += 1,
                Err(Error::OutgoingQueueFull { limit }) => {
                    assert_eq!(limit, 40);
                    full += 1;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!((ok, full), (accepted, 50 - accepted));
        assert_eq!(
            Error::OutgoingQueueFull { limit: 5 }.to_string(),
            "Outgoing message queue is full (5 messages)"
        );
        // Once drained, publishing works again.
        conn.publish(&topic, "after")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
    })
    .await;
}

/// A large publish moves at link speed (the engine continues a partly written packet only
/// when woken: the facade wakes it while one is pending), and arrives whole. 64 MiB
/// takes about 0.3 s on loopback; without the wake-ups about 13 s, past the 5 s here.
#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_publish_is_not_held_back_by_the_engine() {
    with_timeout(Duration::from_secs(120), async {
        const SIZE: usize = 64 << 20;
        let broker = Broker::start();
        let topic = unique_topic("large");
        let sub = connect_on(broker.port(), ProtocolVersion::V311).await;
        sub.subscribe(&topic).qos(QoS::AtLeastOnce).await.unwrap();
        let mut messages = sub.messages();
        let publisher = connect_on(broker.port(), ProtocolVersion::V311).await;
        let payload: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let (published, received) = tokio::join!(
                publisher
                    .publish(&topic, payload.clone())
                    .qos(qos)
                    .timeout(Duration::from_secs(5)),
                tokio::time::timeout(T, messages.next())
            );
            published.unwrap_or_else(|e| panic!("QoS {}: {e:?}", qos.as_u8()));
            let m = received.expect("the message").expect("a message").unwrap();
            assert!(m.payload == payload, "QoS {}: payload differs", qos.as_u8());
        }
    })
    .await;
}

/// A publish without its own timeout gets the client's plus one second per MiB beyond the
/// first; a call's own timeout is kept as it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_publish_gets_a_longer_default_timeout() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let conn = Client::builder("127.0.0.1")
            .port(broker.port())
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        broker.pause();
        let payload = vec![7u8; 3 << 20];
        let start = tokio::time::Instant::now();
        let own = conn
            .publish("large/own", payload.clone())
            .qos(QoS::AtLeastOnce)
            .timeout(Duration::from_millis(500))
            .await;
        let own_took = start.elapsed();
        assert!(matches!(own, Err(Error::Unacknowledged)), "{own:?}");
        let start = tokio::time::Instant::now();
        let default = conn
            .publish("large/default", payload)
            .qos(QoS::AtLeastOnce)
            .await;
        let default_took = start.elapsed();
        assert!(matches!(default, Err(Error::Unacknowledged)), "{default:?}");
        // 0.5 s + 2 s for the two MiB beyond the first.
        assert!(
            default_took >= Duration::from_millis(2450),
            "{default_took:?}"
        );
        assert!(own_took < Duration::from_millis(2450), "{own_took:?}");
        broker.resume();
    })
    .await;
}

/// A stream of small QoS 0 publishes that fills the socket's buffers (here: the broker
/// stopped for a moment) goes on as soon as the broker reads again. Paho alone continues
/// the partly written packet only when its receive loop wakes, and sends the rest only when
/// its send thread wakes, each at most once a second without incoming packets: each round
/// would then wait for the rest of that second (uniformly up to 1 s; eleven rounds of
/// twelve under 600 ms by chance: about 2 in 100). 48 MiB per round is more than loopback's
/// socket buffers hold (4 MiB to send, up to 32 MiB to receive here); with the facade's
/// wake-ups a round takes the time to move what is left, a few hundred milliseconds (one
/// round may take longer on a loaded machine).
#[tokio::test(flavor = "multi_thread")]
async fn a_qos0_stream_goes_on_when_the_socket_drains() {
    with_timeout(Duration::from_secs(60), async {
        const N: usize = 3072;
        let mut broker = Broker::start();
        let conn = connect_on(broker.port(), ProtocolVersion::V311).await;
        let topic = unique_topic("qos0_stream");
        let payload = vec![1u8; 16 << 10];
        let mut rounds = Vec::new();
        for _ in 0..12 {
            broker.pause();
            let mut calls: FuturesUnordered<_> = (0..N)
                .map(|_| conn.publish(&topic, payload.clone()).into_future())
                .collect();
            // Every call handed over; the socket's buffers fill while the broker sleeps.
            let _ = tokio::time::timeout(Duration::from_millis(300), calls.next()).await;
            broker.resume();
            let resumed = tokio::time::Instant::now();
            while let Some(result) = calls.next().await {
                result.unwrap();
            }
            rounds.push(resumed.elapsed());
        }
        let slow = rounds
            .iter()
            .filter(|&&took| took >= Duration::from_millis(600))
            .count();
        assert!(slow <= 1, "{rounds:?}");
    })
    .await;
}

/// The wake-up pump runs only while a publish needs it: it works while a QoS 0 publish is
/// held behind a stopped broker, and takes no CPU once every publish has completed.
#[tokio::test(flavor = "multi_thread")]
async fn the_pump_parks_when_nothing_is_pending() {
    if ran_in_child(
        "flow::the_pump_parks_when_nothing_is_pending",
        Duration::from_secs(60),
    ) {
        return;
    }
    let mut broker = Broker::start();
    let conn = connect_on(broker.port(), ProtocolVersion::V311).await;
    let topic = unique_topic("pump");
    conn.publish(&topic, "first").await.unwrap();
    let pump = thread_counters("aiomqtt-pump").await;
    let settle = Duration::from_millis(300);

    // Pending: 48 MiB of QoS 0 behind a stopped broker (more than the sockets hold). The
    // calls run in a task of their own, so that every one reaches the engine while this
    // task only watches (a FuturesUnordered polled for 100 ms under load had handed one
    // publish of 3,072 to the engine, and the pump had rightly nothing to do).
    broker.pause();
    let done = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..3072)
        .map(|_| {
            let call = conn.publish(&topic, vec![0u8; 16 << 10]).into_future();
            let done = done.clone();
            async move {
                let result = call.await;
                done.fetch_add(1, Ordering::Relaxed);
                result
            }
        })
        .collect();
    let all = tokio::spawn(futures::future::join_all(calls));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = pump().0;
    tokio::time::sleep(settle).await;
    let busy = pump().0 - before;
    let finished = done.load(Ordering::Relaxed);
    let state = sockets::thread_state("aiomqtt-pump");
    broker.resume();
    for result in all.await.unwrap() {
        result.unwrap();
    }

    // Nothing pending: the pump parks after 20 ms of looks every 5 ms, later on a loaded
    // machine. Once it has not run for 100 ms, it must not run again.
    let mut last = pump().1;
    let mut since = std::time::Instant::now();
    let parked = wait_until_async(Duration::from_secs(3), || {
        let runs = pump().1;
        if runs != last {
            last = runs;
            since = std::time::Instant::now();
        }
        since.elapsed() >= Duration::from_millis(100)
    })
    .await;
    assert!(parked, "the pump kept running with nothing pending");
    let before = pump().0;
    tokio::time::sleep(settle).await;
    let idle = pump().0 - before;
    assert!(
        busy > Duration::ZERO,
        "the pump did not run: {busy:?}, with {finished} of 3072 publishes done; its \
         thread: {state:?}"
    );
    assert_eq!(idle, Duration::ZERO, "the pump ran with nothing pending");
}

/// How a connection holding a large unacknowledged publish ends, for the pump tests.
#[derive(Clone, Copy, Debug)]
enum LinkEnd {
    /// The broker resets it: a loss.
    Lost,
    /// Our DISCONNECT.
    Disconnected,
}

/// A client without a connection writes nothing, so the pump leaves it alone: a large
/// publish of a persistent session that Paho keeps for the next connection does not keep
/// the pump (and Paho's threads, which it wakes) running after the connection ended,
/// whether it was lost or we ended it (then once Paho reports our DISCONNECT).
async fn the_pump_parks_once_the_connection_ended(how: LinkEnd) {
    let fb = FakeBroker::start().await;
    let client = Client::builder("127.0.0.1")
        .port(fb.port())
        .identifier(format!("pump-{how:?}"))
        .clean_session(false)
        .build()
        .unwrap();
    let (conn, mut fc) = fb.connect(&client).await;
    // 1 MiB at QoS 1 that the broker never acknowledges: Paho keeps it for a resumed
    // session once the call has given up.
    let r = conn
        .publish("big", vec![0u8; 1 << 20])
        .qos(QoS::AtLeastOnce)
        .timeout(Duration::from_millis(500))
        .await;
    assert!(r.as_ref().is_err_and(Error::is_timeout), "{r:?}");
    let runs = thread_counters("aiomqtt-pump").await;
    // Connected, the large publish pending: the pump looks every millisecond.
    let before = runs().1;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connected = runs().1 - before;
    match how {
        LinkEnd::Lost => {
            let mut messages = conn.messages();
            fc.close_rst().await;
            let end = with_timeout(Duration::from_secs(5), messages.next()).await;
            assert!(matches!(end, Some(Err(_))), "{end:?}");
        }
        LinkEnd::Disconnected => {
            conn.disconnect().await.unwrap();
            assert!(fc.peer_closed(Duration::from_secs(5)).await);
        }
    }
    // It parks after lingering for 20 ms.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = runs().1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = runs().1 - before;
    assert!(
        connected >= 30,
        "the pump looked {connected} times in 300 ms with a large publish pending"
    );
    assert!(
        after <= 2,
        "the pump ran {after} times in 500 ms after the connection ended ({how:?}; \
         {connected} in 300 ms before)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pump_parks_while_the_connection_is_down() {
    if ran_in_child(
        "flow::the_pump_parks_while_the_connection_is_down",
        Duration::from_secs(60),
    ) {
        return;
    }
    the_pump_parks_once_the_connection_ended(LinkEnd::Lost).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pump_parks_after_our_disconnect() {
    if ran_in_child(
        "flow::the_pump_parks_after_our_disconnect",
        Duration::from_secs(60),
    ) {
        return;
    }
    the_pump_parks_once_the_connection_ended(LinkEnd::Disconnected).await;
}

/// A reader of the scheduler's counters (time on the CPU, times run) of the process's
/// thread `name`, once that thread exists: a thread that the test's first call started
/// names itself only once it runs, which may be after that call completed.
async fn thread_counters(name: &'static str) -> impl Fn() -> (Duration, u64) {
    let appeared = wait_until_async(Duration::from_secs(2), || {
        sockets::thread_schedstat(name).is_some()
    })
    .await;
    assert!(appeared, "no thread named {name}");
    move || sockets::thread_schedstat(name).unwrap_or_else(|| panic!("thread {name} ended"))
}

/// A stream of small QoS 0 publishes that keeps completing needs no wake-up, and the pump
/// looks at it every 5 ms, not every millisecond: each look is a wake-up of its thread,
/// which on a loaded machine takes a core from Paho's threads or the broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_flowing_qos0_stream_is_looked_at_every_few_milliseconds() {
    if ran_in_child(
        "flow::a_flowing_qos0_stream_is_looked_at_every_few_milliseconds",
        Duration::from_secs(60),
    ) {
        return;
    }
    let broker = Broker::start();
    let conn = connect_on(broker.port(), ProtocolVersion::V311).await;
    let topic = unique_topic("looks");
    conn.publish(&topic, "first").await.unwrap();
    let runs = thread_counters("aiomqtt-pump").await;
    let before = runs().1;
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    // A second of QoS 0 publishes, a hundred at a time: the pump never parks meanwhile.
    while started.elapsed() < Duration::from_secs(1) {
        let batch: Vec<_> = (0..100)
            .map(|_| conn.publish(&topic, "x").into_future())
            .collect();
        for result in futures::future::join_all(batch).await {
            result.unwrap();
        }
        sent += 100;
    }
    let took = started.elapsed();
    let looks = runs().1 - before;
    // 200 looks a second, with as many again to spare (a park and unpark should the
    // stream pause for longer than the pump lingers); one look per millisecond: 1,000.
    let allowed = took.as_millis() as u64 * 2 / 5 + 20;
    assert!(
        looks <= allowed,
        "the pump ran {looks} times in {took:?} ({sent} publishes; at most {allowed})"
    );
    assert!(looks > 0, "the pump did not look at the stream at all");
}

/// A call's timeout costs no timer of its own: the expiry thread sleeps until the earliest
/// deadline of any call, so a stream of calls that complete in time wakes it a few times
/// at most (once per timeout of the client's), not once per call; and it still ends a
/// call whose deadline passes.
#[tokio::test(flavor = "multi_thread")]
async fn calls_completing_in_time_leave_the_expiry_thread_asleep() {
    if ran_in_child(
        "flow::calls_completing_in_time_leave_the_expiry_thread_asleep",
        Duration::from_secs(60),
    ) {
        return;
    }
    let mut broker = Broker::start();
    let conn = connect_on(broker.port(), ProtocolVersion::V311).await;
    assert_eq!(conn.timeout(), Duration::from_secs(5));
    let topic = unique_topic("expiry");
    conn.publish(&topic, "first")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    let runs = thread_counters("aiomqtt-expiry").await;
    let before = runs().1;
    let started = std::time::Instant::now();
    let results: Vec<_> = futures::stream::iter(0..6000)
        .map(|i| {
            let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][i % 3];
            conn.publish(&topic, "x").qos(qos).into_future()
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let took = started.elapsed();
    let woken = runs().1 - before;
    assert!(results.iter().all(Result::is_ok));
    // One wake-up per 5 s that the stream lasts, and one to spare.
    let allowed = 1 + took.as_secs() / 5;
    assert!(
        woken <= allowed,
        "the expiry thread ran {woken} times for 6,000 calls in {took:?}"
    );

    broker.pause();
    let started = std::time::Instant::now();
    let late = conn
        .publish(&topic, "late")
        .qos(QoS::AtLeastOnce)
        .timeout(Duration::from_millis(200))
        .await;
    let took = started.elapsed();
    broker.resume();
    assert!(matches!(late, Err(Error::Unacknowledged)), "{late:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

/// A QoS 0 publish that completes at once does not make the pump wake Paho's threads:
/// publishes sent one at a time (a round-trip pattern) leave Paho's receive thread
/// asleep. Waking it for each would put a spurious loop of that thread in the way of
/// the next incoming packet.
#[tokio::test(flavor = "multi_thread")]
async fn a_prompt_qos0_publish_does_not_wake_the_engine() {
    if ran_in_child(
        "flow::a_prompt_qos0_publish_does_not_wake_the_engine",
        Duration::from_secs(60),
    ) {
        return;
    }
    let broker = Broker::start();
    let conn = connect_on(broker.port(), ProtocolVersion::V311).await;
    let topic = unique_topic("prompt");
    conn.publish(&topic, "first").await.unwrap();
    let receiver = thread_counters("MQTTAsync_rcv").await;
    const PUBLISHES: u64 = 150;
    let before = receiver().1;
    for _ in 0..PUBLISHES {
        conn.publish(&topic, "x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let woken = receiver().1 - before;
    assert!(
        woken < PUBLISHES / 4,
        "Paho's receive thread ran {woken} times for {PUBLISHES} publishes that each \
         completed at once"
    );
}

/// Why the 3.1.1 default keeps QoS 2 publishes within 20, and a place free for QoS 1
/// ones: Mosquitto (2.0.11 as Debian ships it, default `max_queued_messages`) holding 20
/// QoS 2 messages of a 3.1.1 client before their PUBREL answers the client's next QoS 2
/// PUBLISH with a PUBREC, and a QoS 1 one with a PUBACK, and drops both messages (its log:
/// reason code 151, quota exceeded, which 3.1.1 cannot carry). Once one exchange completes,
/// the next QoS 1 PUBLISH is delivered. A raw client, so that nothing holds it back.
#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_drops_publishes_while_its_qos2_window_is_full() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    with_timeout(T, async {
        let broker = Broker::builder().max_inflight_messages(20).start();
        let topic = unique_topic("quota");
        let watcher = connect_on(broker.port(), ProtocolVersion::V311).await;
        watcher
            .subscribe((topic.as_str(), QoS::AtLeastOnce))
            .await
            .unwrap();
        let mut inbox = watcher.messages();

        let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", broker.port()))
            .await
            .unwrap();
        let mut connect = Vec::new();
        packets::string(b"MQTT", &mut connect);
        connect.extend_from_slice(&[4, 0x02, 0, 60]);
        packets::string(b"raw-quota", &mut connect);
        let mut reply = [0u8; 4];
        // Sends `packet` and reads its 4-byte reply (CONNACK, PUBREC, PUBACK, PUBCOMP):
        // the reply's first byte and packet id.
        macro_rules! exchange {
            ($packet:expr) => {{
                raw.write_all(&$packet).await.unwrap();
                raw.read_exact(&mut reply).await.unwrap();
                (reply[0], u16::from_be_bytes([reply[2], reply[3]]))
            }};
        }
        let publish = |qos: u8, id: u16| {
            let payload = format!("qos{qos}-{id}");
            packets::publish(
                topic.as_bytes(),
                qos,
                id,
                payload.as_bytes(),
                false,
                false,
                None,
            )
        };
        let pubrel = |id: u16| packets::packet(0x62, &id.to_be_bytes());
        assert_eq!(
            exchange!(packets::packet(0x10, &connect)),
            (0x20, 0),
            "CONNACK"
        );
        for id in 1..=20 {
            assert_eq!(exchange!(publish(2, id)), (0x50, id), "PUBREC");
        }
        // The broker's count of QoS 2 exchanges is full.
        assert_eq!(
            exchange!(publish(2, 21)),
            (0x50, 21),
            "a PUBREC, as if received"
        );
        assert_eq!(
            exchange!(publish(1, 22)),
            (0x40, 22),
            "a PUBACK, as if delivered"
        );
        assert_eq!(exchange!(pubrel(21)), (0x70, 21), "PUBCOMP");
        // One exchange completes: the broker releases that message.
        assert_eq!(exchange!(pubrel(1)), (0x70, 1), "PUBCOMP");
        assert_eq!(exchange!(publish(1, 23)), (0x40, 23), "PUBACK");
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = with_timeout(Duration::from_secs(5), inbox.next())
                .await
                .expect("the stream is open")
                .expect("a message");
            got.push(m.payload_str().unwrap().to_owned());
        }
        assert_eq!(
            got,
            ["qos2-1", "qos1-23"],
            "qos2-21 and qos1-22 were dropped"
        );
        let more = tokio::time::timeout(Duration::from_millis(300), inbox.next()).await;
        assert!(more.is_err(), "{more:?}");
        let log = broker.log();
        assert!(
            log.contains("Sending PUBREC to raw-quota (m21, rc151)"),
            "{log}"
        );
        assert!(
            log.contains("Sending PUBACK to raw-quota (m22, rc151)"),
            "{log}"
        );
    })
    .await;
}

/// The 3.1.1 default window also holds when a reconnect resends what was in flight: a
/// mixed burst of 600 calls (two QoS 2 calls in three) on a persistent session with
/// automatic reconnects, cut with an RST midway, completes whole against a Mosquitto with
/// its default window and queue, and the broker refuses no PUBLISH (no reason code 151 in
/// its log; a refusal loses the message silently there). Runs in a child process: a session
/// resumed with messages in flight makes Paho C resend every connected client's in-flight
/// messages (`faults::a_resumed_session_makes_paho_resend_every_clients_messages`), which
/// would add PUBLISH packets to the wire counts of the tests beside it.
#[tokio::test(flavor = "multi_thread")]
async fn the_v311_default_window_holds_across_a_reconnect() {
    if ran_in_child(
        "flow::the_v311_default_window_holds_across_a_reconnect",
        Duration::from_secs(90),
    ) {
        return;
    }
    with_timeout(Duration::from_secs(60), async {
        let broker = Broker::builder().max_inflight_messages(20).start();
        let proxy = FaultProxy::start(broker.port()).await;
        let topic = unique_topic("window_resend");
        let watcher = connect_on(broker.port(), ProtocolVersion::V311).await;
        watcher
            .subscribe((topic.as_str(), QoS::ExactlyOnce))
            .await
            .unwrap();
        let mut inbox = watcher.messages();
        let conn = Client::builder("127.0.0.1")
            .port(proxy.port())
            .identifier("window-resend")
            .clean_session(false)
            .timeout(Duration::from_secs(30))
            .reconnect(
                aiomqtt::ReconnectPolicy::new()
                    .initial_delay(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(1)),
            )
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        const N: usize = 600;
        let qos = two_qos2_in_three;
        let calls: Vec<_> = (0..N)
            .map(|i| {
                conn.publish(&topic, i.to_string())
                    .qos(qos(i))
                    .into_future()
            })
            .collect();
        let all = tokio::spawn(futures::future::join_all(calls));
        proxy
            .wait_for(
                Direction::ClientToBroker,
                PacketType::Publish,
                N / 3,
                Duration::from_secs(10),
            )
            .await;
        proxy.cut();
        for (i, result) in all.await.unwrap().into_iter().enumerate() {
            result.unwrap_or_else(|e| panic!("call {i} ({:?}): {e}", qos(i)));
        }
        assert!(proxy.connections() >= 2, "the cut made a reconnect");
        // QoS 1 messages may come twice after the resend; each comes at least once.
        let seen = receive_each(&mut inbox, N).await;
        let twice: Vec<usize> = (0..N).filter(|&i| seen[i] > 1).collect();
        assert!(
            twice.iter().all(|&i| qos(i) == QoS::AtLeastOnce),
            "a QoS 2 message came twice: {twice:?}"
        );
        let log = broker.log();
        let refused: Vec<&str> = log.lines().filter(|l| l.contains(", rc151)")).collect();
        assert!(refused.is_empty(), "refused: {refused:?}");
    })
    .await;
}
