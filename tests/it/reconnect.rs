//! Automatic reconnection (`ClientBuilder::reconnect`): one `Connection` outlives losses.
//!
//! Each test goes through a `FaultProxy` that cuts the link or refuses new connections, and
//! observes `Connection::events()`, the message stream, the calls, and the packets on the
//! wire. The aiomqtt way (a loop around `client.connect()`) is covered elsewhere and must
//! keep working unchanged.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use aiomqtt::{
    CleanStart, Client, ClientBuilder, Connection, ConnectionEvent, ConnectionEvents, Error,
    Properties, ProtocolVersion, QoS, ReasonCode, ReconnectPolicy,
};
use futures::StreamExt;

use crate::support::mqtt::{RECV, recv};
use crate::support::*;

const T: Duration = Duration::from_secs(40);

fn fast() -> ReconnectPolicy {
    ReconnectPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .max_delay(Duration::from_millis(400))
        .jitter(0.0)
}

fn via(proxy: &FaultProxy, protocol: ProtocolVersion) -> ClientBuilder {
    Client::builder("127.0.0.1")
        .port(proxy.port())
        .protocol(protocol)
        .timeout(Duration::from_secs(5))
}

/// The next event, which must come within [`RECV`].
async fn next_event(events: &mut ConnectionEvents) -> ConnectionEvent {
    match tokio::time::timeout(RECV, events.next()).await {
        Ok(Some(e)) => e,
        Ok(None) => panic!("the event stream ended"),
        Err(_) => panic!("no connection event within {RECV:?}"),
    }
}

/// Events until `Connected`, which is returned with everything seen before it.
async fn until_connected(events: &mut ConnectionEvents) -> (Vec<ConnectionEvent>, bool, usize) {
    let mut seen = Vec::new();
    loop {
        match next_event(events).await {
            ConnectionEvent::Connected {
                session_present,
                resubscribed,
            } => return (seen, session_present, resubscribed),
            other => seen.push(other),
        }
    }
}

async fn direct(broker: &Broker) -> Connection {
    Client::builder("127.0.0.1")
        .port(broker.port())
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn reconnects_and_the_stream_goes_on(protocol: ProtocolVersion) {
    let broker = Broker::start();
    let proxy = FaultProxy::start(broker.port()).await;
    let t = unique_topic("reconnect_stream");
    let client = via(&proxy, protocol).reconnect(fast()).build().unwrap();
    let conn = client.connect().await.unwrap();
    let mut events = conn.events();
    let mut messages = conn.messages();
    conn.subscribe(format!("{t}/#"))
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    // Unsubscribed before the loss: not made again.
    let gone = format!("{t}-gone");
    conn.subscribe(gone.as_str()).await.unwrap();
    conn.unsubscribe(gone.as_str()).await.unwrap();
    let publisher = direct(&broker).await;
    publisher
        .publish(format!("{t}/1"), "before")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(recv(&mut messages).await.payload, b"before");

    assert_eq!(proxy.cut(), 1);
    match next_event(&mut events).await {
        ConnectionEvent::Lost { cause } => {
            assert!(cause.is_connection_lost(), "{cause:?}")
        }
        other => panic!("expected Lost, got {other:?}"),
    }
    let (seen, session_present, resubscribed) = until_connected(&mut events).await;
    assert!(
        matches!(
            seen.first(),
            Some(ConnectionEvent::Reconnecting { attempt: 1, .. })
        ),
        "{seen:?}"
    );
    // A clean session: the broker kept nothing, so the subscription was made again, and
    // only the one still in force.
    assert!(!session_present);
    assert_eq!(resubscribed, 1);
    assert!(conn.is_connected());
    assert_eq!(proxy.connections(), 2);

    publisher
        .publish(gone.as_str(), "unsubscribed")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    publisher
        .publish(format!("{t}/2"), "after")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    let m = recv(&mut messages).await;
    assert_eq!(m.payload, b"after", "the same stream, after the reconnect");
    // The connection's own calls work again.
    conn.publish(format!("{t}/3"), "mine")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    assert_eq!(recv(&mut messages).await.payload, b"mine");
    conn.disconnect().await.unwrap();
    // The event stream ends with the connection.
    assert!(
        tokio::time::timeout(RECV, events.next())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_and_the_stream_goes_on_v311() {
    with_timeout(T, reconnects_and_the_stream_goes_on(ProtocolVersion::V311)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_and_the_stream_goes_on_v5() {
    with_timeout(T, reconnects_and_the_stream_goes_on(ProtocolVersion::V5)).await;
}

/// `CleanStart::FirstOnly`: Clean Start on `connect()`, not on the automatic reconnects,
/// so with a Session Expiry Interval the broker keeps the session (no resubscribe).
#[tokio::test(flavor = "multi_thread")]
async fn clean_start_first_only_resumes_on_reconnects() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("first_only");
        let client = via(&proxy, ProtocolVersion::V5)
            .identifier(format!("first-only-{}", std::process::id()))
            .clean_start(CleanStart::FirstOnly)
            .properties(Properties::new().session_expiry_interval(60))
            .reconnect(fast())
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut events = conn.events();
        let mut messages = conn.messages();
        conn.subscribe(&t).qos(QoS::AtLeastOnce).await.unwrap();
        proxy.cut();
        let (_, session_present, resubscribed) = until_connected(&mut events).await;
        assert!(session_present, "the broker kept the session");
        assert_eq!(resubscribed, 0);
        let connects = proxy.packets(Direction::ClientToBroker, PacketType::Connect);
        let clean: Vec<bool> = connects
            .iter()
            .map(|p| p.connect_flags().unwrap() & 0x02 != 0)
            .collect();
        assert_eq!(clean, [true, false], "{}", proxy.trace());
        direct(&broker)
            .await
            .publish(&t, "kept")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(recv(&mut messages).await.payload, b"kept");
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// `CleanStart::Always`: Clean Start on the automatic reconnects too, so the broker keeps
/// nothing of the session whatever its expiry, and the subscription is made again.
#[tokio::test(flavor = "multi_thread")]
async fn clean_start_always_starts_clean_on_reconnects() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("always");
        let client = via(&proxy, ProtocolVersion::V5)
            .identifier(format!("always-{}", std::process::id()))
            .clean_start(CleanStart::Always)
            .properties(Properties::new().session_expiry_interval(60))
            .reconnect(fast())
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut events = conn.events();
        conn.subscribe(&t).qos(QoS::AtLeastOnce).await.unwrap();
        proxy.cut();
        let (_, session_present, resubscribed) = until_connected(&mut events).await;
        assert!(!session_present, "a clean start finds no session");
        assert_eq!(resubscribed, 1);
        let clean: Vec<bool> = proxy
            .packets(Direction::ClientToBroker, PacketType::Connect)
            .iter()
            .map(|p| p.connect_flags().unwrap() & 0x02 != 0)
            .collect();
        assert_eq!(clean, [true, true], "{}", proxy.trace());
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// Without a policy a connection ends at its first loss, and its event stream reports
/// nothing: it ends with the connection.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_policy_the_events_report_nothing() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let conn = via(&proxy, ProtocolVersion::V311)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut events = conn.events();
        proxy.cut();
        let next = tokio::time::timeout(RECV, events.next()).await;
        assert!(matches!(next, Ok(None)), "{next:?}");
    })
    .await;
}

/// A reader of the events more than 64 behind skips the oldest: 25 losses and reconnects
/// (75 events) unread, then at most 64 are read, the last of them the latest `Connected`.
#[tokio::test(flavor = "multi_thread")]
async fn a_reader_far_behind_skips_the_oldest_events() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let client = via(&proxy, ProtocolVersion::V311)
            .reconnect(fast().initial_delay(Duration::from_millis(10)))
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut behind = conn.events();
        let mut watcher = conn.events();
        for _ in 0..25 {
            assert!(proxy.cut() >= 1);
            until_connected(&mut watcher).await;
        }
        let mut read = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), behind.next()).await
        {
            read.push(event);
        }
        assert!(
            !read.is_empty() && read.len() <= 64,
            "{} events read of 75",
            read.len()
        );
        assert!(
            matches!(read.last(), Some(ConnectionEvent::Connected { .. })),
            "{:?}",
            read.last()
        );
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// While the broker refuses, attempts follow the policy: attempt n waits
/// `initial × multiplierⁿ⁻¹` capped at `max_delay`, shortened by at most `jitter`, and
/// really waits that long. The fake broker refuses each attempt in its CONNACK and notes
/// when: the next attempt's CONNECT cannot arrive sooner than its reported delay after
/// that (the client learns of the refusal after it, then reports the delay, then sleeps).
///
/// Jitter: each delay is `base × (1 − 0.25 r)` with `r` uniform in [0, 1); the test asks
/// that at least one of the ATTEMPTS delays is shorter than `base × 0.975` (r > 0.1). All
/// of them at r ≤ 0.1 has the probability 0.1⁸ = 10⁻⁸.
#[tokio::test(flavor = "multi_thread")]
async fn backoff_grows_with_jitter_and_is_capped() {
    const ATTEMPTS: usize = 8;
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let policy = ReconnectPolicy::new()
            .initial_delay(Duration::from_millis(40))
            .max_delay(Duration::from_millis(200))
            .multiplier(2.0)
            .jitter(0.25);
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .timeout(Duration::from_secs(2))
            .reconnect(policy)
            .build()
            .unwrap();
        let (conn, mut fc) = fb.connect(&client).await;
        let mut events = conn.events();

        // The loss, then ATTEMPTS refusals (CONNACK 3, Server unavailable): for each
        // attempt, how long after the previous failure its CONNECT arrived.
        let mut failed_at = Instant::now();
        fc.close_rst().await;
        let mut waits = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..ATTEMPTS {
            let fc = fb.accept().await;
            let connect_at = fc.connect.packet.as_ref().expect("the CONNECT").at;
            waits.push(connect_at - failed_at);
            failed_at = Instant::now();
            fc.send_connack(false, 3).await.unwrap();
            refused.push(fc);
        }
        let fc = fb.accept().await;
        fc.send_connack(false, 0).await.unwrap();

        let mut delays = Vec::new();
        loop {
            match next_event(&mut events).await {
                ConnectionEvent::Reconnecting { attempt, delay } => {
                    assert_eq!(attempt as usize, delays.len() + 1);
                    delays.push(delay);
                }
                ConnectionEvent::ReconnectFailed { cause, .. } => {
                    assert!(!matches!(*cause, Error::Reentrant), "{cause:?}")
                }
                ConnectionEvent::Lost { .. } => {}
                ConnectionEvent::Connected { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays.len(), ATTEMPTS + 1, "{delays:?}");
        assert!(conn.is_connected());
        let ms = |d: &Duration| d.as_millis();
        let base = |i: usize| (40u128 << i.min(10)).min(200);
        for (i, d) in delays.iter().enumerate() {
            assert!(
                ms(d) <= base(i) && ms(d) >= base(i) * 3 / 4,
                "attempt {}: {d:?} not within [0.75, 1] x {} ms ({delays:?})",
                i + 1,
                base(i)
            );
        }
        for (i, (wait, delay)) in waits.iter().zip(&delays).enumerate() {
            assert!(
                *wait + Duration::from_millis(1) >= *delay,
                "attempt {}: its CONNECT came {wait:?} after the previous failure, \
                 less than its delay {delay:?}\nwaits {waits:?}\ndelays {delays:?}",
                i + 1
            );
        }
        assert!(
            delays
                .iter()
                .enumerate()
                .any(|(i, d)| d.as_secs_f64() * 1000.0 < base(i) as f64 * 0.975),
            "no delay shortened by more than 2.5%: no jitter? {delays:?}"
        );
        drop(refused);
    })
    .await;
}

/// While the link is down: publishes are handed to the engine at once, which queues them
/// in order, bounded by `max_queued_outgoing_messages` (beyond it, `OutgoingQueueFull` at
/// once), and sends them after the reconnect; a subscribe waits for the link. Every call
/// waits within its own timeout.
#[tokio::test(flavor = "multi_thread")]
async fn calls_while_reconnecting_are_queued_in_order_and_bounded() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("while_reconnecting");
        let client = via(&proxy, ProtocolVersion::V311)
            .max_queued_outgoing_messages(2)
            .reconnect(fast())
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut events = conn.events();
        let watcher = direct(&broker).await;
        watcher.subscribe(&t).qos(QoS::AtLeastOnce).await.unwrap();
        let mut seen = watcher.messages();

        proxy.refuse(true);
        proxy.cut();
        let lost = next_event(&mut events).await;
        assert!(matches!(lost, ConnectionEvent::Lost { .. }), "{lost:?}");
        // Each call is polled once, in order: the first two are queued, the third refused.
        let mut first = conn.publish(&t, "1").qos(QoS::AtLeastOnce).into_future();
        let mut second = conn.publish(&t, "2").qos(QoS::AtLeastOnce).into_future();
        let mut subscribe = conn.subscribe(format!("{t}/sub")).into_future();
        assert!(futures::poll!(&mut first).is_pending());
        assert!(futures::poll!(&mut second).is_pending());
        assert!(futures::poll!(&mut subscribe).is_pending());
        let third = conn.publish(&t, "3").qos(QoS::AtLeastOnce).await;
        assert!(
            matches!(third, Err(Error::OutgoingQueueFull { limit: 2 })),
            "{third:?}"
        );
        // A subscribe whose timeout ends during the outage never reached the engine.
        let short = conn
            .subscribe(format!("{t}/short"))
            .timeout(Duration::from_millis(100))
            .await;
        assert!(matches!(short, Err(Error::Timeout)), "{short:?}");
        proxy.refuse(false);
        let (first, second, subscribed) = tokio::join!(first, second, subscribe);
        first.unwrap();
        second.unwrap();
        assert_eq!(
            subscribed.unwrap(),
            [ReasonCode::from(0)],
            "the subscribe made while down completes"
        );
        let got: Vec<Vec<u8>> = vec![recv(&mut seen).await.payload, recv(&mut seen).await.payload];
        assert_eq!(got, [b"1".to_vec(), b"2".to_vec()], "sent in order");
        until_connected(&mut events).await;
    })
    .await;
}

/// MQTT 5: a DISCONNECT with Session taken over (0x8E) ends the connection instead of
/// reconnecting, which would take the session back and start a fight. (Mosquitto 2.0.11
/// closes the old connection without that DISCONNECT, even on MQTT 5: there the backoff of
/// the next test applies; the fake broker here sends what the specification asks for.)
#[tokio::test(flavor = "multi_thread")]
async fn session_taken_over_on_v5_ends_the_connection() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .identifier("taken-over")
            .reconnect(fast())
            .build()
            .unwrap();
        let (conn, fc) = fb.connect(&client).await;
        let mut events = conn.events();
        let mut messages = conn.messages();
        fc.send(&packets::disconnect_v5(0x8E, &[])).await.unwrap();
        let err = match tokio::time::timeout(RECV, messages.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected the end of the stream, got {other:?}"),
        };
        assert_eq!(err.rc(), Some(ReasonCode::SESSION_TAKEN_OVER), "{err:?}");
        // No reconnect: the event stream ends without an attempt, and nobody dials.
        while let Some(event) = tokio::time::timeout(RECV, events.next()).await.unwrap() {
            assert!(
                !matches!(event, ConnectionEvent::Reconnecting { .. }),
                "{event:?}"
            );
        }
        assert!(!conn.is_connected());
        assert!(fb.try_accept(Duration::from_millis(500)).await.is_none());
    })
    .await;
}

/// MQTT 3.1.1 has no takeover reason (and Mosquitto 2.0.11 sends none on 5 either): two
/// clients with one identifier keep closing each other's connections. Connections that
/// never stay up for `stable_after` do not reset the attempt count, so each client slows
/// down to `max_delay` instead of flapping.
///
/// Client A goes through a proxy, which notes when the broker closed each of A's
/// connections and when A's next CONNECT came: A reports its delay after the loss and
/// sleeps it before dialling, so the gap is at least the delay.
#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_fight_on_v311_slows_down_to_max_delay() {
    const DELAYS: usize = 6;
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let id = format!("fight-{}", std::process::id());
        let policy = ReconnectPolicy::new()
            .initial_delay(Duration::from_millis(20))
            .max_delay(Duration::from_millis(320))
            .jitter(0.0)
            .stable_after(Duration::from_secs(30));
        let client = |port: u16| {
            Client::builder("127.0.0.1")
                .port(port)
                .identifier(&id)
                .reconnect(policy.clone())
                .build()
                .unwrap()
        };
        let (a, b) = (client(proxy.port()), client(broker.port()));
        let conn_a = a.connect().await.unwrap();
        // Before B's connect takes A's session: every Reconnecting of A is read.
        let mut events = conn_a.events();
        let conn_b = b.connect().await.unwrap();
        let mut delays = Vec::new();
        while delays.len() < DELAYS {
            if let ConnectionEvent::Reconnecting { delay, .. } = next_event(&mut events).await {
                delays.push(delay);
            }
        }
        assert_eq!(
            delays.last(),
            Some(&Duration::from_millis(320)),
            "the delays grow to the cap: {delays:?}"
        );
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");

        // A's CONNECTs (its first connect, then one per attempt), and the real waits.
        let connects = || -> Vec<Packet> {
            proxy
                .packets(Direction::ClientToBroker, PacketType::Connect)
                .into_iter()
                .filter(|p| p.client_id().as_deref() == Some(id.as_str()))
                .collect()
        };
        assert!(
            wait_until_async(RECV, || connects().len() > DELAYS).await,
            "fewer than {} CONNECTs from A:\n{}",
            DELAYS + 1,
            proxy.trace()
        );
        let connects = connects();
        for (i, delay) in delays.iter().enumerate() {
            let (lost, next) = (&connects[i], &connects[i + 1]);
            let closed = proxy
                .ended_at(lost.conn, Direction::BrokerToClient)
                .unwrap_or_else(|| {
                    panic!(
                        "the broker did not close A's connection {} before attempt {}:\n{}",
                        lost.conn,
                        i + 1,
                        proxy.trace()
                    )
                });
            let wait = next.at.saturating_duration_since(closed);
            assert!(
                wait + Duration::from_millis(1) >= *delay,
                "attempt {}: A's CONNECT came {wait:?} after the broker closed its previous \
                 connection, less than the delay {delay:?} ({delays:?})\n{}",
                i + 1,
                proxy.trace()
            );
        }
        drop((conn_a, conn_b));
    })
    .await;
}

/// A connection that stayed up for `stable_after` starts the attempt count again at its
/// loss, and `max_attempts` counts attempts in a row: a connection that reconnects at the
/// second attempt after each of three losses never gives up with `max_attempts(2)`.
///
/// Regression: the supervisor read how long the link had been up just after it came up
/// (about zero), not at the loss, so the count never started again: the second loss here
/// began at attempt 3 and ended the connection at once ("gave up reconnecting after 2
/// attempts").
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_stayed_up_starts_counting_attempts_again() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let stable = Duration::from_millis(600);
        let client = via(&proxy, ProtocolVersion::V311)
            // The second attempt comes a second after the first failed: time enough to
            // stop refusing on a loaded machine.
            .reconnect(
                fast()
                    .initial_delay(Duration::from_millis(500))
                    .max_delay(Duration::from_secs(1))
                    .stable_after(stable)
                    .max_attempts(Some(2)),
            )
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut events = conn.events();
        for loss in 1..=3 {
            tokio::time::sleep(stable + Duration::from_millis(400)).await;
            // The first attempt is refused, the second goes through.
            proxy.refuse(true);
            assert!(proxy.cut() >= 1, "loss {loss}: no link to cut");
            let mut attempts = Vec::new();
            loop {
                match next_event(&mut events).await {
                    ConnectionEvent::Reconnecting { attempt, .. } => attempts.push(attempt),
                    ConnectionEvent::ReconnectFailed { attempt, .. } => {
                        assert_eq!(attempt, 1, "loss {loss}: {attempts:?}");
                        proxy.refuse(false);
                    }
                    ConnectionEvent::Connected { .. } => break,
                    _ => {}
                }
            }
            assert_eq!(
                attempts,
                [1, 2],
                "loss {loss}: after {stable:?} up the count starts again"
            );
        }
        assert!(conn.is_connected());
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// `max_attempts` counts failed attempts in a row: on a link that drops again before
/// `stable_after` but reconnects at the first attempt each time, the attempt number (and
/// the delay) grows and the connection never gives up.
///
/// Regression: `max_attempts` bounded the attempt number, so the third quick loss here ended
/// the connection ("gave up reconnecting after 2 attempts") though no attempt had failed.
#[tokio::test(flavor = "multi_thread")]
async fn max_attempts_counts_only_failed_attempts() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let client = via(&proxy, ProtocolVersion::V311)
            .reconnect(
                fast()
                    .stable_after(Duration::from_secs(30))
                    .max_attempts(Some(2)),
            )
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut events = conn.events();
        let mut attempts = Vec::new();
        for loss in 1..=4 {
            assert!(proxy.cut() >= 1, "loss {loss}: no link to cut");
            let (seen, _, _) = until_connected(&mut events).await;
            for event in seen {
                match event {
                    ConnectionEvent::Reconnecting { attempt, .. } => attempts.push(attempt),
                    ConnectionEvent::ReconnectFailed { .. } => {
                        panic!("loss {loss}: an attempt failed")
                    }
                    _ => {}
                }
            }
        }
        assert_eq!(
            attempts,
            [1, 2, 3, 4],
            "one attempt a loss, the count not restarted"
        );
        assert!(conn.is_connected());
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// `max_attempts`: after that many failed attempts in a row the connection ends, with an
/// error that says so.
#[tokio::test(flavor = "multi_thread")]
async fn max_attempts_gives_up_and_ends_the_connection() {
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let client = via(&proxy, ProtocolVersion::V311)
            .timeout(Duration::from_secs(2))
            .reconnect(fast().max_attempts(Some(2)))
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut messages = conn.messages();
        proxy.refuse(true);
        proxy.cut();
        let err = match tokio::time::timeout(Duration::from_secs(15), messages.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("expected the end of the stream, got {other:?}"),
        };
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(
            cause.contains("gave up reconnecting after 2 attempts"),
            "{cause}"
        );
        let late = conn.publish("t", "x").await;
        assert!(matches!(late, Err(Error::NotConnected)), "{late:?}");
        proxy.refuse(false);
        // The client is free for the next connect().
        client.connect().await.unwrap();
    })
    .await;
}

/// The policy's values are checked by `build()`.
#[test]
fn bad_policies_are_refused_by_build() {
    let err = Client::builder("localhost")
        .reconnect(ReconnectPolicy::new().jitter(2.0))
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert!(err.to_string().contains("jitter"), "{err}");
}
