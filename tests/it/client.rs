//! The client and its connection guard: lifecycle, reentrancy, failures, and
//! every connect option as the broker sees it.

use std::time::Duration;

use crate::support::*;
use aiomqtt::{CleanStart, Client, Error, Properties, ProtocolVersion, QoS, ReasonCode, Will};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(30);

fn client(broker: &Broker) -> aiomqtt::ClientBuilder {
    Client::builder("127.0.0.1").port(broker.port())
}

/// Waits until the broker log has a line containing every needle.
fn wait_log_line(broker: &Broker, needles: &[&str]) {
    let found = wait_until(Duration::from_secs(5), || {
        broker
            .log()
            .lines()
            .any(|l| needles.iter().all(|n| l.contains(n)))
    });
    assert!(found, "no log line with {needles:?}:\n{}", broker.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_and_disconnect_on_every_protocol() {
    with_timeout(T, async {
        let broker = Broker::start();
        for (protocol, p) in [
            (ProtocolVersion::V31, "p1"),
            (ProtocolVersion::V311, "p2"),
            (ProtocolVersion::V5, "p5"),
        ] {
            let id = format!("proto-{p}");
            let c = client(&broker)
                .protocol(protocol)
                .identifier(&id)
                .build()
                .unwrap();
            let conn = c.connect().await.unwrap();
            assert!(conn.is_connected());
            assert_eq!(conn.protocol(), protocol);
            assert_eq!(conn.identifier(), id);
            // The protocol is always explicit on the wire (hazard 8).
            wait_log_line(&broker, &[&format!("as {id} ("), &format!("({p},")]);
            conn.disconnect().await.unwrap();
            wait_log_line(&broker, &[&format!("Client {id} disconnected")]);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identifier_generated_per_protocol() {
    with_timeout(T, async {
        let broker = Broker::start();
        // 3.1: a random 22-character alphanumeric id, as paho-python makes.
        let v31 = client(&broker)
            .protocol(ProtocolVersion::V31)
            .build()
            .unwrap();
        let id = v31.identifier().to_owned();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        let other = client(&broker)
            .protocol(ProtocolVersion::V31)
            .build()
            .unwrap();
        assert_ne!(other.identifier(), id);
        let conn = v31.connect().await.unwrap();
        assert_eq!(conn.identifier(), id);
        wait_log_line(&broker, &[&format!("as {id} (p1")]);
        drop(conn);

        // 3.1.1: empty; the broker assigns one it does not report.
        let v311 = client(&broker).build().unwrap();
        assert_eq!(v311.identifier(), "");
        let conn = v311.connect().await.unwrap();
        assert_eq!(conn.identifier(), "");
        drop(conn);

        // 5: empty, and the broker's Assigned Client Identifier is read back.
        let v5 = client(&broker)
            .protocol(ProtocolVersion::V5)
            .build()
            .unwrap();
        assert_eq!(v5.identifier(), "");
        let conn = v5.connect().await.unwrap();
        assert!(
            conn.identifier().starts_with("auto-"),
            "{}",
            conn.identifier()
        );
        wait_log_line(&broker, &[&format!("as {} (p5", conn.identifier())]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reusable_but_not_reentrant() {
    with_timeout(T, async {
        let broker = Broker::start();
        let c = client(&broker).identifier("reentrant").build().unwrap();
        let conn = c.connect().await.unwrap();

        let err = c.connect().await.unwrap_err();
        assert!(matches!(err, Error::Reentrant), "{err:?}");
        assert_eq!(err.to_string(), "The client is reusable, but not reentrant");
        // Clones are the same client.
        assert!(matches!(c.clone().connect().await, Err(Error::Reentrant)));
        // A clone of the connection keeps it alive.
        let clone = conn.clone();
        drop(conn);
        assert!(matches!(c.connect().await, Err(Error::Reentrant)));

        // Ended by disconnect(): connect() works again at once; stale handles fail.
        clone.clone().disconnect().await.unwrap();
        assert!(!clone.is_connected());
        let err = clone.publish("t", "x").await.unwrap_err();
        assert!(matches!(err, Error::NotConnected), "{err:?}");
        let conn = c.connect().await.unwrap();
        // The stale handle dropping must not end the new connection.
        drop(clone);
        conn.publish("t", "still connected")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();

        // Ended by dropping the last handle: connect() works again.
        drop(conn);
        let conn = c.connect().await.unwrap();
        conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
        conn.disconnect().await.unwrap();

        // Many rounds, alternating disconnect() and drop.
        for round in 0..10 {
            let conn = c.connect().await.unwrap();
            conn.publish("t", round)
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap();
            if round % 2 == 0 {
                conn.disconnect().await.unwrap();
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_connection_frees_the_client() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let c = client(&broker).identifier("lost").build().unwrap();
        let conn = c.connect().await.unwrap();
        let mut messages = conn.messages();
        broker.kill();
        match messages.next().await {
            Some(Err(Error::Disconnected(cause))) => {
                assert!(matches!(*cause, Error::ConnectionLost { .. }), "{cause:?}")
            }
            other => panic!("expected Disconnected, got {other:?}"),
        }
        assert!(messages.next().await.is_none());
        assert!(!conn.is_connected());
        assert!(matches!(
            conn.publish("t", "x").await,
            Err(Error::NotConnected)
        ));
        // Not reentrant any more: the failure is about the broker, not the claim.
        let err = c.connect().await.unwrap_err();
        assert!(matches!(err, Error::ConnectionRefused { .. }), "{err:?}");
        broker.start_again();
        let conn = c.connect().await.unwrap();
        conn.publish("t", "back")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_port_is_connection_refused_and_client_stays_reusable() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let port = broker.port();
        broker.kill();
        let c = Client::builder("127.0.0.1").port(port).build().unwrap();
        for _ in 0..2 {
            let err = c.connect().await.unwrap_err();
            match &err {
                Error::ConnectionRefused {
                    address, detail, ..
                } => {
                    assert_eq!(address, &format!("127.0.0.1:{port}"));
                    assert!(detail.contains("refused"), "{detail}");
                }
                other => panic!("expected ConnectionRefused, got {other:?}"),
            }
            assert!(err.is_connect());
        }
        // The broker comes back on that port: the same client connects.
        broker.start_again();
        let conn = c.connect().await.unwrap();
        conn.disconnect().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_host_is_a_dns_error() {
    with_timeout(T, async {
        let c = Client::new("no-such-host.invalid");
        let err = c.connect().await.unwrap_err();
        match &err {
            Error::Dns { host, .. } => assert_eq!(host, "no-such-host.invalid"),
            other => panic!("expected Dns, got {other:?}"),
        }
        // Still reusable: the same error again, not Reentrant.
        assert!(matches!(c.connect().await, Err(Error::Dns { .. })));
    })
    .await;
}

/// A persistent session's CONNACK that comes after `connect()` gave up: the messages the
/// broker then sends from the session (which the engine acknowledges) are not lost but
/// handed to the next connection first.
///
/// Regression: with no session attached the router dropped them, though the engine had
/// acknowledged them to the broker (PUBACK), which then forgot them.
#[tokio::test(flavor = "multi_thread")]
async fn messages_after_a_late_connack_reach_the_next_connection() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .identifier("late-connack")
            .clean_session(false)
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let (first, mut fc) = tokio::join!(client.connect(), fb.accept());
        assert!(matches!(first, Err(Error::Timeout)), "{first:?}");
        // The session's stored message, right after the late CONNACK.
        let mut burst = packets::connack(true, 0, None);
        burst.extend(packets::publish(
            b"stored/1",
            1,
            7,
            b"kept",
            false,
            false,
            None,
        ));
        fc.send(&burst).await.unwrap();
        let puback = fc
            .try_expect(PacketType::Puback, Duration::from_secs(5))
            .await;
        assert!(
            puback.is_some(),
            "the engine acknowledged it:\n{}",
            fc.trace()
        );
        assert!(
            fc.peer_closed(Duration::from_secs(5)).await,
            "the stray connection closed"
        );

        let (conn, _fc2) = fb.connect(&client).await;
        let mut messages = conn.messages();
        let m = with_timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("the kept message")
            .unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("stored/1", &b"kept"[..])
        );
    })
    .await;
}

/// With no port given the client connects to 1883, MQTT's registered port. The test runs
/// itself again in a private network namespace (`unshare -rn`, loopback brought up), where
/// it may listen on 1883 without touching the machine's own broker there.
#[tokio::test(flavor = "multi_thread")]
async fn the_default_port_is_1883() {
    const NAME: &str = "client::the_default_port_is_1883";
    const IN_NAMESPACE: &str = "AIOMQTT_TEST_IN_NETNS";
    if std::env::var_os(IN_NAMESPACE).is_none() {
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new("unshare");
        child
            .args(["-rn", "sh", "-c", r#"ip link set lo up && exec "$0" "$@""#])
            .arg(exe)
            .args(["--exact", NAME, "--nocapture", "--test-threads", "1"])
            .env(IN_NAMESPACE, "1");
        let out = run_with_timeout(&mut child, Duration::from_secs(60));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    with_timeout(T, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:1883")
            .await
            .unwrap();
        let broker = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut connect = [0u8; 64];
            let n = socket.read(&mut connect).await.unwrap();
            assert_eq!(connect[0], 0x10, "{:?}", &connect[..n]);
            socket.write_all(&[0x20, 0x02, 0x00, 0x00]).await.unwrap();
            socket
        });
        let conn = Client::new("127.0.0.1").connect().await.unwrap();
        let _socket = broker.await.unwrap();
        assert!(conn.is_connected());
    })
    .await;
}

/// A `connect()` dropped after its CONNACK arrived but before it was polled again leaves
/// no connection behind: a persistent session's engine is kept, its connection closed.
/// With `stored`, the broker's stored message comes right behind the CONNACK: the engine
/// acknowledges it before the drop, and it is the next connection's first.
async fn connect_dropped_after_its_connack(id: &str, stored: bool) {
    let fb = FakeBroker::start().await;
    let client = Client::builder("127.0.0.1")
        .port(fb.port())
        .identifier(id)
        .clean_session(false)
        .build()
        .unwrap();
    let mut connect = Box::pin(client.connect());
    let mut fc = tokio::select! {
        r = &mut connect => panic!("connected without a CONNACK: {r:?}"),
        fc = fb.accept() => fc,
    };
    let mut burst = packets::connack(true, 0, None);
    if stored {
        burst.extend(packets::publish(
            b"stored/1",
            1,
            7,
            b"kept",
            false,
            false,
            None,
        ));
    }
    fc.send(&burst).await.unwrap();
    if stored {
        fc.try_expect(PacketType::Puback, Duration::from_secs(5))
            .await
            .expect("the engine acknowledged the stored message");
    } else {
        // The engine reports the CONNACK to the pending connect(), which nobody polls.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(connect);
    assert!(
        fc.peer_closed(Duration::from_secs(5)).await,
        "the connection nobody owns was left open:\n{}",
        fc.trace()
    );
    // The client connects again.
    let (conn, _fc2) = fb.connect(&client).await;
    assert!(conn.is_connected());
    if stored {
        let m = with_timeout(Duration::from_secs(5), conn.messages().next())
            .await
            .expect("the kept message")
            .unwrap();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("stored/1", &b"kept"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_dropped_after_its_connack_closes_the_connection() {
    with_timeout(
        T,
        connect_dropped_after_its_connack("dropped-after-connack", false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connect_dropped_after_its_connack_keeps_the_sessions_messages() {
    with_timeout(
        T,
        connect_dropped_after_its_connack("dropped-with-messages", true),
    )
    .await;
}

/// A persistent session's CONNACK that the client refuses (here a Receive Maximum of 0):
/// the stored messages the broker sent right behind it, which the engine acknowledged,
/// are the next connection's first. (Whether the engine reads the message before the
/// client's close is a race; the scenario is repeated until it does, at most ten times.)
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connack_keeps_the_sessions_messages() {
    with_timeout(T, async {
        for attempt in 1..=10 {
            let fb = FakeBroker::start().await;
            let client = Client::builder("127.0.0.1")
                .port(fb.port())
                .identifier(format!("refused-connack-{attempt}"))
                .protocol(ProtocolVersion::V5)
                .clean_start(CleanStart::Never)
                .properties(Properties::new().session_expiry_interval(60))
                .build()
                .unwrap();
            let (first, mut fc) = tokio::join!(client.connect(), async {
                let fc = fb.accept().await;
                let mut burst = packets::connack(true, 0, Some(b"\x21\x00\x00"));
                burst.extend(packets::publish(
                    b"stored/1",
                    1,
                    7,
                    b"kept",
                    false,
                    false,
                    Some(&[]),
                ));
                fc.send(&burst).await.unwrap();
                fc
            });
            assert!(matches!(first, Err(Error::Protocol(_))), "{first:?}");
            assert!(fc.peer_closed(Duration::from_secs(5)).await);
            let acked = fc
                .received(PacketType::Puback)
                .iter()
                .any(|p| p.packet_id() == Some(7));
            if !acked {
                // Not acknowledged: the broker keeps it; nothing to check this time.
                continue;
            }
            let (conn, _fc2) = fb.connect(&client).await;
            let m = with_timeout(Duration::from_secs(5), conn.messages().next())
                .await
                .expect("the kept message")
                .unwrap();
            assert_eq!(
                (m.topic.as_str(), &m.payload[..]),
                ("stored/1", &b"kept"[..])
            );
            return;
        }
        panic!("in ten attempts the engine never acknowledged the message behind the CONNACK");
    })
    .await;
}

/// Messages that reach the engine after a clean connection ended (before its DISCONNECT
/// went out) are that connection's: the next connection does not get them, whether its
/// `connect()` comes after that DISCONNECT or at once (then it waits for it, its session
/// already in place).
async fn messages_of_an_ended_connection(id: &str, connect_at_once: bool) {
    let fb = FakeBroker::start().await;
    let logger = crate::support::logcap::capture_logger(id);
    let client = Client::builder("127.0.0.1")
        .port(fb.port())
        .identifier(id)
        .max_inflight_messages(1)
        .logger(logger.as_str())
        .build()
        .unwrap();
    let (conn, mut fc) = fb.connect(&client).await;
    // A QoS 1 publish the broker holds fills Paho's window of one; a SUBSCRIBE behind it
    // waits in Paho's queue, and so does every later command of this client
    // (MQTTAsync_processCommand): the DISCONNECT too.
    let held = conn
        .publish("held", "x")
        .qos(QoS::AtLeastOnce)
        .timeout(Duration::from_millis(300))
        .await;
    assert!(held.is_err(), "{held:?}");
    let publish = fc
        .try_expect(PacketType::Publish, Duration::from_secs(5))
        .await
        .expect("the held PUBLISH");
    let packet_id = publish.packet_id().unwrap();
    let sub = conn
        .subscribe("old/#")
        .timeout(Duration::from_millis(300))
        .await;
    assert!(sub.is_err(), "{sub:?}");
    drop(conn);
    let next = connect_at_once.then(|| {
        let client = client.clone();
        tokio::spawn(async move { client.connect().await })
    });
    if next.is_some() {
        // The next connect() has its session in place and waits for the old connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Before the DISCONNECT can go: a message of the ended connection.
    let mut burst = packets::publish(b"old/t", 0, 0, b"stale", false, false, None);
    burst.extend(packets::puback(packet_id, None));
    fc.send(&burst).await.unwrap();
    fc.try_expect(PacketType::Disconnect, Duration::from_secs(5))
        .await
        .expect("the DISCONNECT, once the window freed");
    let (conn, fc2) = match next {
        Some(next) => {
            let fc2 = fb.accept().await;
            fc2.send_connack(false, 0).await.unwrap();
            (next.await.unwrap().unwrap(), fc2)
        }
        None => fb.connect(&client).await,
    };
    let mut messages = conn.messages();
    fc2.send(&packets::publish(
        b"new/t", 0, 0, b"marker", false, false, None,
    ))
    .await
    .unwrap();
    let m = with_timeout(Duration::from_secs(5), messages.next())
        .await
        .expect("a message")
        .unwrap();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("new/t", &b"marker"[..])
    );
    // The stale message is counted, and the next session's attach says so. A connect made
    // at once had attached before the message came: its count waits for a later attach.
    if !connect_at_once {
        let dropped = (
            log::Level::Debug,
            "1 messages arrived after the previous connection ended: dropped".to_owned(),
        );
        let logged = crate::support::logcap::logged(&logger);
        assert!(logged.contains(&dropped), "{logged:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_after_a_connection_ended_do_not_reach_the_next_one() {
    with_timeout(
        T,
        messages_of_an_ended_connection("ended-then-stray", false),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_of_an_ended_connection_do_not_reach_a_connect_made_at_once() {
    with_timeout(
        T,
        messages_of_an_ended_connection("ended-then-at-once", true),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connack_timeout_then_reusable() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        proxy.blackhole(true);
        let c = Client::builder("127.0.0.1")
            .port(proxy.port())
            .identifier("slow-connack")
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = c.connect().await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::Timeout), "{err:?}");
        assert!(err.is_timeout() && !err.is_connect());
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{took:?}"
        );

        // The link works again: the same client connects (on a fresh engine, while
        // Paho finishes the abandoned attempt of the retired one).
        proxy.blackhole(false);
        let conn = c.connect().await.unwrap();
        conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// A persistent session's `connect()` that gave up leaves Paho C's attempt running (Paho
/// cannot cancel one): the engine is kept, and the next `connect()` waits for that attempt
/// to end before it sends its CONNECT (reconnection.md, "How the engine is reused").
/// Paho's attempt is given the timeout rounded up to whole seconds (7 s for 6.5 s) and is
/// ended by a check that runs every 3 s, so it ends 0.5 to 4.5 s after the facade gave
/// up, within the next `connect()`'s own 6.5 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_persistent_connect_that_gave_up_is_waited_for() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .identifier("gave-up")
            .clean_session(false)
            .timeout(Duration::from_millis(6500))
            .build()
            .unwrap();
        let (first, _silent) = tokio::join!(client.connect(), fb.accept());
        assert!(matches!(first, Err(Error::Timeout)), "{first:?}");
        let gave_up = std::time::Instant::now();
        let (second, fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            fc.send_connack(true, 0).await.unwrap();
            fc
        });
        second.expect("the next connect() once the attempt ended");
        let connect_at = fc.connect.packet.as_ref().expect("the CONNECT").at;
        let waited = connect_at.saturating_duration_since(gave_up);
        assert!(
            waited >= Duration::from_millis(400),
            "the second CONNECT came {waited:?} after the first connect() gave up"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelled_connect_leaves_the_client_reusable() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        proxy.blackhole(true);
        let c = Client::builder("127.0.0.1")
            .port(proxy.port())
            .build()
            .unwrap();
        // The caller gives up (drops the future) before CONNACK.
        let abandoned = tokio::time::timeout(Duration::from_millis(300), c.connect()).await;
        assert!(abandoned.is_err());
        proxy.blackhole(false);
        let conn = c.connect().await.unwrap();
        conn.disconnect().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_connack_carries_the_reason_code() {
    with_timeout(T, async {
        let broker = Broker::builder().password_file(&[("user", "pass")]).start();
        let auth = |protocol, password: &str| {
            Client::builder("127.0.0.1")
                .port(broker.auth_port())
                .protocol(protocol)
                .username("user")
                .password(password)
                .build()
                .unwrap()
        };
        for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let c = auth(protocol, "wrong");
            let err = c.connect().await.unwrap_err();
            let Error::Connect(rc) = err else {
                panic!("expected Connect, got {err:?}")
            };
            // Mosquitto refuses a wrong password with 3.1.1 CONNACK 5, mapped to
            // 0x87 as aiomqtt does, and with 0x87 on v5: the same text on both.
            assert_eq!(rc, ReasonCode::NOT_AUTHORIZED, "{protocol:?}");
            assert_eq!(err_text(rc), "[code:135] Not authorized");
            assert_eq!(Error::Connect(rc).to_string(), "[code:135] Not authorized");
            // The client stays reusable: the same refusal again.
            assert!(matches!(c.connect().await, Err(Error::Connect(_))));
            // And with the right password, a new client connects.
            auth(protocol, "pass")
                .connect()
                .await
                .unwrap()
                .disconnect()
                .await
                .unwrap();
        }
    })
    .await;
}

fn err_text(rc: ReasonCode) -> String {
    format!("[code:{}] {}", rc.value(), rc)
}

#[tokio::test(flavor = "multi_thread")]
async fn not_authorized_text_matches_aiomqtt() {
    assert_eq!(
        Error::Connect(ReasonCode::NOT_AUTHORIZED).to_string(),
        "[code:135] Not authorized"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_clean_session_and_clean_start_on_the_wire() {
    with_timeout(T, async {
        let broker = Broker::start();
        let c = client(&broker)
            .identifier("ka-7")
            .keepalive(Duration::from_secs(7))
            .clean_session(false)
            .build()
            .unwrap();
        let conn = c.connect().await.unwrap();
        wait_log_line(&broker, &["as ka-7 (p2, c0, k7)"]);
        drop(conn);

        let c = client(&broker)
            .identifier("v5-never")
            .protocol(ProtocolVersion::V5)
            .clean_start(CleanStart::Never)
            .properties(Properties::new().session_expiry_interval(300))
            .build()
            .unwrap();
        let conn = c.connect().await.unwrap();
        wait_log_line(&broker, &["as v5-never (p5, c0, k60)"]);
        conn.disconnect().await.unwrap();
        // The session survived (expiry 300 s): Session Present on the next connect.
        let conn = c.connect().await.unwrap();
        assert!(conn.session_present());
        conn.disconnect().await.unwrap();

        let c = client(&broker)
            .identifier("v5-never")
            .protocol(ProtocolVersion::V5)
            .clean_start(CleanStart::Always)
            .build()
            .unwrap();
        let conn = c.connect().await.unwrap();
        assert!(!conn.session_present());
        wait_log_line(&broker, &["as v5-never (p5, c1, k60)"]);
        conn.disconnect().await.unwrap();

        // FirstOnly (the default) starts clean on every connect().
        let c = client(&broker)
            .identifier("v5-first")
            .protocol(ProtocolVersion::V5)
            .properties(Properties::new().session_expiry_interval(300))
            .build()
            .unwrap();
        for _ in 0..2 {
            let conn = c.connect().await.unwrap();
            assert!(!conn.session_present());
            conn.disconnect().await.unwrap();
        }
        wait_log_line(&broker, &["as v5-first (p5, c1, k60)"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_session_receives_messages_published_while_away() {
    with_timeout(T, async {
        let broker = Broker::start();
        let topic = unique_topic("persist");
        let c = client(&broker)
            .identifier("persist-1")
            .clean_session(false)
            .build()
            .unwrap();
        let conn = c.connect().await.unwrap();
        conn.subscribe(&topic).qos(QoS::AtLeastOnce).await.unwrap();
        conn.disconnect().await.unwrap();

        let publisher = client(&broker).build().unwrap().connect().await.unwrap();
        publisher
            .publish(&topic, "while away")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();

        let conn = c.connect().await.unwrap();
        assert!(conn.session_present());
        let mut messages = conn.messages();
        let m = with_timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.payload, b"while away");
        assert_eq!(m.qos, QoS::AtLeastOnce);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_connection_disconnects_without_the_will() {
    with_timeout(T, async {
        let broker = Broker::start();
        let will_topic = unique_topic("will-drop");
        let watcher = client(&broker).build().unwrap().connect().await.unwrap();
        watcher.subscribe(&will_topic).await.unwrap();
        let mut wills = watcher.messages();

        let c = client(&broker)
            .identifier("dropper")
            .will(Will::new(&will_topic, "gone").qos(QoS::AtLeastOnce))
            .build()
            .unwrap();
        let conn = c.connect().await.unwrap();
        drop(conn);
        wait_log_line(&broker, &["Client dropper disconnected"]);
        let got = tokio::time::timeout(Duration::from_millis(700), wills.next()).await;
        assert!(got.is_err(), "the Will was published: {got:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn will_is_published_on_abrupt_close() {
    will_on_abrupt_close(false).await;
}

/// The same through the relay (`bind_address`), whose options Paho gets as a copy.
/// Regression: Paho's Will options pointed into that copy's payload, freed once the engine
/// was created, and every CONNECT read the Will payload from freed memory.
#[tokio::test(flavor = "multi_thread")]
async fn will_is_published_on_abrupt_close_through_the_relay() {
    will_on_abrupt_close(true).await;
}

async fn will_on_abrupt_close(relayed: bool) {
    const WILL: &str = "offline: this Will payload is longer than what a free() overwrites";
    with_timeout(T, async {
        let broker = Broker::start();
        let will_topic = unique_topic("will-cut");
        let watcher = client(&broker).build().unwrap().connect().await.unwrap();
        watcher
            .subscribe(&will_topic)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut wills = watcher.messages();

        let proxy = FaultProxy::start(broker.port()).await;
        let builder = Client::builder("127.0.0.1").port(proxy.port()).will(
            Will::new(&will_topic, WILL)
                .qos(QoS::AtLeastOnce)
                .retain(false),
        );
        let builder = if relayed {
            builder.bind_address("127.0.0.1")
        } else {
            builder
        };
        let c = builder.build().unwrap();
        let conn = c.connect().await.unwrap();
        let mut own = conn.messages();
        proxy.cut();
        let will = with_timeout(Duration::from_secs(5), wills.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&will.payload), WILL);
        assert_eq!(will.qos, QoS::AtLeastOnce);
        // Our side learns of the loss too.
        let end = with_timeout(Duration::from_secs(5), own.next()).await;
        assert!(matches!(end, Some(Err(Error::Disconnected(_)))), "{end:?}");
    })
    .await;
}

/// ENGINE.md hazard 5: Mosquitto 2.0.11 with its default window (20) silently
/// loses QoS 2 messages of a 3.1.1 burst beyond it. The default window must not.
#[tokio::test(flavor = "multi_thread")]
async fn default_window_does_not_lose_a_qos2_burst() {
    with_timeout(T, async {
        let broker = Broker::builder().max_inflight_messages(20).start();
        let topic = unique_topic("burst");
        let sub = client(&broker).build().unwrap().connect().await.unwrap();
        sub.subscribe(&topic).qos(QoS::ExactlyOnce).await.unwrap();
        let mut messages = sub.messages();

        let publisher = client(&broker).build().unwrap().connect().await.unwrap();
        const N: usize = 300;
        let mut burst: FuturesUnordered<_> = (0..N)
            .map(|i| {
                publisher
                    .publish(&topic, i)
                    .qos(QoS::ExactlyOnce)
                    .into_future()
            })
            .collect();
        while let Some(result) = burst.next().await {
            result.unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < N {
            let m = with_timeout(Duration::from_secs(10), messages.next())
                .await
                .unwrap()
                .unwrap();
            let i: usize = m.payload_str().unwrap().parse().unwrap();
            assert!(seen.insert(i), "duplicate {i}");
        }
        assert_eq!(seen.len(), N);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn accessors_on_client_and_connection() {
    with_timeout(T, async {
        let broker = Broker::start();
        let c = client(&broker)
            .timeout(Duration::from_secs(4))
            .pending_calls_threshold(3)
            .build()
            .unwrap();
        assert_eq!(c.timeout(), Duration::from_secs(4));
        assert_eq!(c.pending_calls_threshold(), 3);
        let conn = c.connect().await.unwrap();
        assert_eq!(conn.timeout(), Duration::from_secs(4));
        assert_eq!(conn.pending_calls_threshold(), 3);
        assert_eq!(conn.discarded_messages(), 0);
        assert!(conn.connack_properties().is_none());
        let c5 = client(&broker)
            .protocol(ProtocolVersion::V5)
            .build()
            .unwrap();
        let conn5 = c5.connect().await.unwrap();
        let props = conn5.connack_properties().expect("v5 CONNACK properties");
        assert!(props.assigned_client_identifier.is_some());
    })
    .await;
}

use std::future::IntoFuture;

/// Timeouts of any length are accepted: `Duration::MAX` (and anything too long for the
/// clock) means "no deadline" for the client and for one call, and the engine's own
/// connect timer (seconds in a C int) is clamped instead of wrapping.
#[tokio::test(flavor = "multi_thread")]
async fn timeouts_of_any_length_are_accepted() {
    with_timeout(Duration::from_secs(20), async {
        let broker = Broker::start();
        for timeout in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::from_secs(u64::from(u32::MAX) * 1000),
        ] {
            let client = client(&broker).timeout(timeout).build().unwrap();
            assert_eq!(client.timeout(), timeout);
            let conn = client.connect().await.unwrap();
            let t = unique_topic("any_timeout");
            conn.publish(&t, "x")
                .qos(QoS::ExactlyOnce)
                .timeout(Duration::MAX)
                .await
                .unwrap();
            conn.subscribe(&t).timeout(Duration::MAX).await.unwrap();
            conn.disconnect().await.unwrap();
        }
    })
    .await;
}

/// `keepalive(Duration::ZERO)` turns keep-alive off: CONNECT carries 0 and no PINGREQ is
/// sent while the connection is idle for 2.5 s; with 1 s a PINGREQ comes (at most 2 s
/// after the CONNACK: Paho checks at least once a second).
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_zero_sends_no_pings() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        for (secs, pings) in [(0, false), (1, true)] {
            let client = Client::builder("127.0.0.1")
                .port(fb.port())
                .keepalive(Duration::from_secs(secs))
                .build()
                .unwrap();
            let (conn, fc) = fb.connect(&client).await;
            assert_eq!(fc.connect.keepalive, secs as u16);
            let pinged = || !fc.received(PacketType::Pingreq).is_empty();
            let sent = if pings {
                wait_until_async(Duration::from_secs(5), pinged).await
            } else {
                // Absence is what is asserted: 2.5 keep-alives of the 1 s case.
                tokio::time::sleep(Duration::from_millis(2500)).await;
                pinged()
            };
            assert_eq!(sent, pings, "keepalive {secs} s: {}", fc.trace());
            drop(conn);
        }
    })
    .await;
}

/// A broker that lowers the keep-alive (an MQTT 5 CONNACK with a Server Keep Alive of 1 s
/// to a client asking for 60 s): Paho C keeps to 1 s, and its keep-alive checks come
/// often enough for that, so PINGREQs come about a second apart. Runs in a child
/// process: Paho's keep-alive check period is the process's, set by its clients.
///
/// Regression: the check period stayed the one for 60 s (5 s), so Paho's PINGREQs came up
/// to 5 s apart where the broker would close the connection after 1.5 s of silence
/// (Mosquitto's `max_keepalive`, at least 10 s, leaves 5 s of slack, so the fake broker).
#[tokio::test(flavor = "multi_thread")]
async fn a_keep_alive_the_broker_lowers_is_kept() {
    if ran_in_child(
        "client::a_keep_alive_the_broker_lowers_is_kept",
        Duration::from_secs(60),
    ) {
        return;
    }
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .keepalive(Duration::from_secs(60))
            .build()
            .unwrap();
        let (conn, fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            // Server Keep Alive (0x13) = 1 s.
            fc.send_connack_props(false, 0, &[0x13, 0x00, 0x01])
                .await
                .unwrap();
            fc
        });
        let conn = conn.unwrap();
        assert_eq!(
            conn.connack_properties().and_then(|p| p.server_keep_alive),
            Some(1)
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        let pings = fc.received(PacketType::Pingreq).len();
        assert!(pings >= 2, "{pings} PINGREQs in 4 s:\n{}", fc.trace());
        drop(conn);
    })
    .await;
}

/// Keep-alive 0 against Mosquitto 2.0.11: accepted on 3.1.1 with no keep-alive of the
/// broker's own; on MQTT 5 the broker assigns one in the CONNACK (Server Keep Alive, its
/// `max_keepalive`, 65,535 s by default), which Paho C then uses, as the option's doc says.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_zero_on_v5_gets_the_brokers_server_keep_alive() {
    with_timeout(T, async {
        let broker = Broker::start();
        for (protocol, assigned) in [
            (ProtocolVersion::V311, None),
            (ProtocolVersion::V5, Some(65_535)),
        ] {
            let conn = client(&broker)
                .protocol(protocol)
                .keepalive(Duration::ZERO)
                .build()
                .unwrap()
                .connect()
                .await
                .unwrap();
            let server_keep_alive = conn.connack_properties().and_then(|p| p.server_keep_alive);
            assert_eq!(server_keep_alive, assigned, "{protocol:?}");
            conn.disconnect().await.unwrap();
        }
    })
    .await;
}

/// Keep-alive 0 on MQTT 5 with a broker that assigns a Server Keep Alive of 1 s: the client
/// keeps to it (the option's doc), so PINGREQs come about a second apart, even when a client
/// with a 60 s keepalive connects after it (its connect sets Paho's process-wide check period
/// to 5 s; the engine sets it back from the assigned 1 s). Runs in a child process, as
/// `a_keep_alive_the_broker_lowers_is_kept`, so that no other test's client sets the period.
#[tokio::test(flavor = "multi_thread")]
async fn keepalive_zero_on_v5_keeps_to_the_server_keep_alive() {
    if ran_in_child(
        "client::keepalive_zero_on_v5_keeps_to_the_server_keep_alive",
        Duration::from_secs(60),
    ) {
        return;
    }
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .keepalive(Duration::ZERO)
            .build()
            .unwrap();
        let (conn, fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            // Server Keep Alive (0x13) = 1 s.
            fc.send_connack_props(false, 0, &[0x13, 0x00, 0x01])
                .await
                .unwrap();
            fc
        });
        let conn = conn.unwrap();
        assert_eq!(
            fc.connect.keepalive, 0,
            "the CONNECT asks for no keep-alive"
        );
        assert_eq!(
            conn.connack_properties().and_then(|p| p.server_keep_alive),
            Some(1)
        );
        let long = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .keepalive(Duration::from_secs(60))
            .build()
            .unwrap();
        let (long, _long_fc) = fb.connect(&long).await;
        // Three PINGREQs: within 6 s at a 1 s keep-alive; checks every 5 s give two at most.
        let pinged = wait_until_async(Duration::from_secs(6), || {
            fc.received(PacketType::Pingreq).len() >= 3
        })
        .await;
        assert!(
            pinged,
            "not three PINGREQs within 6 s at a Server Keep Alive of 1 s:\n{}",
            fc.trace()
        );
        assert!(conn.is_connected());
        drop((conn, long));
    })
    .await;
}

/// A logger that blocks (a full pipe, its own lock held) stalls no connection: the records
/// made on Paho's threads and on the crate's own reach it from a thread of their own, and
/// arrive once it moves again. Here the warning for each message a full queue discards,
/// made on Paho's receive thread, which every client of the process shares. Runs in a
/// child process: it installs the process's logger.
///
/// Regression: Paho's receive thread called the logger itself and waited in it, holding
/// Paho's mutex, so no client of the process received anything until the logger moved.
#[test]
fn a_blocking_logger_stalls_no_connection() {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    if ran_in_child(
        "client::a_blocking_logger_stalls_no_connection",
        Duration::from_secs(60),
    ) {
        return;
    }
    static GATE: Mutex<()> = Mutex::new(());
    static DISCARDS: AtomicUsize = AtomicUsize::new(0);
    struct Blocking;
    impl log::Log for Blocking {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, record: &log::Record) {
            let _wait = GATE.lock();
            if record.args().to_string().contains("Discarding message") {
                DISCARDS.fetch_add(1, Ordering::SeqCst);
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: Blocking = Blocking;
    log::set_logger(&LOGGER).expect("the child's only logger");
    log::set_max_level(log::LevelFilter::Warn);
    let broker = Broker::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = GATE.lock().unwrap();
    runtime.block_on(with_timeout(T, async {
        let t = unique_topic("blocking_logger");
        let sub = client(&broker)
            .max_queued_incoming_messages(1)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        sub.subscribe(format!("{t}/full"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let publisher = client(&broker).build().unwrap().connect().await.unwrap();
        for i in 0..5 {
            publisher
                .publish(format!("{t}/full"), i.to_string())
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        // The full queue discarded (and warned, on Paho's receive thread).
        assert!(
            wait_until_async(Duration::from_secs(5), || sub.discarded_messages() >= 1).await,
            "the queue discarded nothing"
        );
        // While the logger is stuck, a round trip on another connection still works.
        let other = client(&broker).build().unwrap().connect().await.unwrap();
        other
            .subscribe(format!("{t}/other"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut messages = other.messages();
        other
            .publish(format!("{t}/other"), "through")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = with_timeout(Duration::from_secs(5), messages.next())
            .await
            .expect("a message")
            .unwrap();
        assert_eq!(m.payload, b"through");
    }));
    drop(closed);
    assert!(
        wait_until(Duration::from_secs(5), || DISCARDS.load(Ordering::SeqCst)
            >= 1),
        "the queued warnings reached the logger once it moved"
    );
}
