//! Unit tests of the facade's own state machines — the claim and release of a client,
//! the end of a connection, the operations runner (timeouts, concurrency slots, the
//! pending-calls warning), the incoming queue and its consumers — against the fake
//! engine, with tokio's clock paused: no broker, no sleeps, no timing windows.

use std::future::IntoFuture;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;

use crate::engine::fake::{Command, FakeEngine};
use crate::engine::{Failure, Loss, Reply, Response};
use crate::{Client, ClientBuilder, Error, Message, QoS, QueueType, ReasonCode, Topic};

fn builder() -> ClientBuilder {
    Client::builder("127.0.0.1").timeout(Duration::from_secs(5))
}

fn message(topic: &str, payload: &str) -> Message {
    Message {
        topic: Topic::new(topic).unwrap(),
        payload: payload.as_bytes().to_vec(),
        qos: QoS::AtMostOnce,
        retain: false,
        mid: 0,
        properties: None,
    }
}

fn done() -> Reply {
    Reply::Done(Response::default())
}

/// Log records of this test binary, for the pending-calls warning.
static RECORDS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

struct Capture;
impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS
            .lock()
            .unwrap()
            .push((record.target().to_owned(), record.args().to_string()));
    }
    fn flush(&self) {}
}

/// The records captured for `target` (installs the capture once).
pub(crate) fn logged(target: &str) -> Vec<String> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = log::set_logger(&Capture);
        log::set_max_level(log::LevelFilter::Trace);
    });
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| t == target)
        .map(|(_, m)| m.clone())
        .collect()
}

/// Whoever sees the end of a connection — the stream's error — can connect again at
/// once: the client was released before the end became visible. 50 rounds.
#[tokio::test(start_paused = true)]
async fn a_loss_frees_the_client_before_anyone_sees_it() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    for _ in 0..50 {
        let conn = client.connect().await.unwrap();
        let mut messages = conn.messages();
        fake.lose(Loss::Network(None));
        let end = messages.next().await;
        assert!(matches!(end, Some(Err(Error::Disconnected(_)))), "{end:?}");
        assert!(
            client.connect().await.is_ok(),
            "the client was still claimed"
        );
    }
    // Besides connecting, only the live connections dropped by the asserts were closed.
    assert_eq!(
        fake.count(|c| !matches!(c, Command::Connect { .. } | Command::Disconnect)),
        0
    );
    assert_eq!(fake.count(|c| *c == Command::Disconnect), 50);
}

/// Reusable, not reentrant: a second connect while the first connection lives.
#[tokio::test(start_paused = true)]
async fn a_second_connect_while_connected_is_reentrant() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    assert!(matches!(client.connect().await, Err(Error::Reentrant)));
    let disconnect = tokio::spawn(conn.disconnect());
    tokio::task::yield_now().await;
    fake.reply(done());
    disconnect.await.unwrap().unwrap();
    assert!(client.connect().await.is_ok());
}

/// A failed connect leaves the client free.
#[tokio::test(start_paused = true)]
async fn a_failed_connect_leaves_the_client_free() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    fake.fail_next_connect(Error::Connect(ReasonCode::NOT_AUTHORIZED));
    let err = client.connect().await.unwrap_err();
    assert_eq!(err.to_string(), "[code:135] Not authorized");
    client.connect().await.unwrap();
}

/// A client that never connects makes no call, even when dropped (aiomqtt's
/// `test_aexit_without_prior_aenter`).
#[tokio::test(start_paused = true)]
async fn a_client_that_never_connects_makes_no_call() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    drop(client.clone());
    drop(client);
    assert!(fake.commands().is_empty());
}

/// Exactly one DISCONNECT: for an explicit `disconnect()` followed by another (which fails
/// with `NotConnected`), and for the last of several handles dropped.
#[tokio::test(start_paused = true)]
async fn one_disconnect_per_connection() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    let again = conn.clone();
    let first = tokio::spawn(conn.disconnect());
    tokio::task::yield_now().await;
    fake.reply(done());
    first.await.unwrap().unwrap();
    assert!(matches!(again.disconnect().await, Err(Error::NotConnected)));
    assert_eq!(fake.count(|c| *c == Command::Disconnect), 1);

    let conn = client.connect().await.unwrap();
    let (clone, messages) = (conn.clone(), conn.messages());
    drop(conn);
    drop(clone);
    assert_eq!(
        fake.count(|c| *c == Command::Disconnect),
        1,
        "a Messages keeps it open"
    );
    drop(messages);
    assert_eq!(fake.count(|c| *c == Command::Disconnect), 2);
}

/// A publish the engine took but the broker never acknowledged: `Unacknowledged` at its
/// timeout, not before. A subscribe: `Timeout`.
#[tokio::test(start_paused = true)]
async fn a_call_unanswered_ends_at_its_timeout() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    let started = tokio::time::Instant::now();
    let err = conn
        .publish("a/b", "x")
        .qos(QoS::AtLeastOnce)
        .timeout(Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unacknowledged), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let err = conn.subscribe("a/#").await.unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(8),
        "the client's 5 s"
    );
}

/// `max_concurrent_outgoing_calls`: calls beyond the bound wait for a slot before they
/// reach the engine, and a call's timeout covers that wait (then it was never sent).
#[tokio::test(start_paused = true)]
async fn concurrency_slots_bound_calls_and_the_timeout_covers_the_wait() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder().max_concurrent_outgoing_calls(2), &fake);
    let conn = client.connect().await.unwrap();
    let publishes = |n| fake.count(|c| matches!(c, Command::Publish { .. })) == n;
    let calls: Vec<_> = (0..3)
        .map(|i| tokio::spawn(conn.publish("a", i).qos(QoS::AtLeastOnce).into_future()))
        .collect();
    tokio::task::yield_now().await;
    assert!(publishes(2), "{:?}", fake.commands());
    let late = conn
        .publish("a", "late")
        .qos(QoS::AtLeastOnce)
        .timeout(Duration::from_secs(1))
        .await;
    assert!(matches!(late, Err(Error::Timeout)), "never sent: {late:?}");
    assert!(publishes(2));
    fake.reply(done());
    tokio::task::yield_now().await;
    assert!(publishes(3), "a slot freed");
    fake.reply(done());
    fake.reply(done());
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

/// aiomqtt's warning, once per call above the threshold; calls waiting for a slot do
/// not count.
#[tokio::test(start_paused = true)]
async fn pending_calls_above_the_threshold_warn() {
    let fake = FakeEngine::new();
    let target = "aiomqtt-unit.pending";
    assert!(logged(target).is_empty(), "installs the capture first");
    let client =
        Client::with_fake_engine(builder().logger(target).pending_calls_threshold(2), &fake);
    let conn = client.connect().await.unwrap();
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(conn.publish("a", i).qos(QoS::AtLeastOnce).into_future()))
        .collect();
    tokio::task::yield_now().await;
    let warnings: Vec<String> = logged(target)
        .into_iter()
        .filter(|m| m.contains("pending publish calls"))
        .collect();
    assert_eq!(
        warnings,
        [
            "There are 3 pending publish calls.",
            "There are 4 pending publish calls."
        ]
    );
    for _ in 0..4 {
        fake.reply(done());
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
}

/// A clean session without reconnects: a call waiting for the broker fails as soon as
/// the link is lost. A persistent one: the call stays pending (the engine resends it).
#[tokio::test(start_paused = true)]
async fn at_a_loss_clean_calls_fail_and_persistent_ones_stay_pending() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    let call = tokio::spawn(conn.publish("a", "x").qos(QoS::AtLeastOnce).into_future());
    tokio::task::yield_now().await;
    fake.lose(Loss::Network(None));
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");

    let fake = FakeEngine::new();
    let client =
        Client::with_fake_engine(builder().identifier("keeps").clean_session(false), &fake);
    let conn = client.connect().await.unwrap();
    let call = tokio::spawn(conn.publish("a", "x").qos(QoS::AtLeastOnce).into_future());
    tokio::task::yield_now().await;
    fake.lose(Loss::Network(None));
    tokio::task::yield_now().await;
    assert!(!call.is_finished(), "stays pending across the loss");
    // The next connection's resumed session acknowledges it.
    let _next = client.connect().await.unwrap();
    fake.reply(done());
    call.await.unwrap().unwrap();
}

/// A negative acknowledgement is the broker's reason code.
#[tokio::test(start_paused = true)]
async fn a_negative_ack_is_its_reason_code() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    let call = tokio::spawn(conn.publish("a", "x").qos(QoS::AtLeastOnce).into_future());
    tokio::task::yield_now().await;
    fake.reply(Reply::Failed(Failure {
        code: -1,
        reason: Some(0x87),
        ..Failure::default()
    }));
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.rc(), Some(ReasonCode::NOT_AUTHORIZED));
}

/// Several consumers share the queue: each message goes to exactly one of them, a
/// waiting consumer is woken per message, and after the end each gets the error once
/// between them, then `None`.
#[tokio::test(start_paused = true)]
async fn consumers_share_the_queue_and_see_the_end_once() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder(), &fake);
    let conn = client.connect().await.unwrap();
    let consumer = |mut m: crate::Messages| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let mut errors = 0;
            while let Some(item) = m.next().await {
                match item {
                    Ok(message) => got.push(message.payload),
                    Err(_) => errors += 1,
                }
            }
            (got, errors)
        })
    };
    let (a, b) = (consumer(conn.messages()), consumer(conn.messages()));
    tokio::task::yield_now().await;
    for i in 0..100 {
        fake.deliver(message("t", &i.to_string()));
        if i % 7 == 0 {
            tokio::task::yield_now().await;
        }
    }
    fake.lose(Loss::Network(None));
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(a.1 + b.1, 1, "one error between them");
    let mut all: Vec<u32> =
        a.0.iter()
            .chain(&b.0)
            .map(|p| String::from_utf8_lossy(p).parse().unwrap())
            .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..100).collect::<Vec<u32>>(),
        "each message exactly once"
    );
    drop(conn);
}

/// The bound: new messages are discarded and counted; nothing blocks the engine.
#[tokio::test(start_paused = true)]
async fn a_full_queue_discards_and_counts() {
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder().max_queued_incoming_messages(3), &fake);
    let conn = client.connect().await.unwrap();
    let messages = conn.messages();
    for i in 0..10 {
        fake.deliver(message("t", &i.to_string()));
    }
    assert_eq!(messages.len(), 3);
    assert_eq!(conn.discarded_messages(), 7);
}

/// Priority queues key arrivals on the consumer's side: smallest key first, ties in
/// arrival order.
#[tokio::test(start_paused = true)]
async fn priority_queue_orders_by_key_then_arrival() {
    fn key(m: &Message) -> i64 {
        m.payload_str()
            .unwrap()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
    let fake = FakeEngine::new();
    let client = Client::with_fake_engine(builder().queue_type(QueueType::Priority(key)), &fake);
    let conn = client.connect().await.unwrap();
    let mut messages = conn.messages();
    for p in ["3:a", "1:b", "2:c", "1:d", "-5:e"] {
        fake.deliver(message("t", p));
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(
            messages
                .next()
                .await
                .unwrap()
                .unwrap()
                .payload_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(got, ["-5:e", "1:b", "1:d", "2:c", "3:a"]);
}

/// What a connection's events say, in a word each.
fn event_names(events: &[crate::ConnectionEvent]) -> Vec<String> {
    use crate::ConnectionEvent as E;
    events
        .iter()
        .map(|e| match e {
            E::Lost { .. } => "Lost".to_owned(),
            E::Reconnecting { attempt, .. } => format!("Reconnecting {attempt}"),
            E::ReconnectFailed { attempt, .. } => format!("ReconnectFailed {attempt}"),
            E::Connected { .. } => "Connected".to_owned(),
        })
        .collect()
}

/// A link lost between its CONNACK and the moment the client marks it up was never
/// reported connected: that reconnect attempt fails with the loss (no second `Lost`), and
/// the next attempt connects.
#[tokio::test(start_paused = true)]
async fn a_loss_before_the_link_is_up_fails_that_reconnect_attempt() {
    let fake = FakeEngine::new();
    let policy = crate::ReconnectPolicy::new()
        .initial_delay(Duration::from_millis(10))
        .max_delay(Duration::from_millis(10));
    let client = Client::with_fake_engine(builder().reconnect(policy), &fake);
    let conn = client.connect().await.unwrap();
    let mut events = conn.events();
    fake.lose_next_connection();
    fake.lose(Loss::Network(None));
    let mut seen = Vec::new();
    while seen.len() < 5 {
        seen.push(events.next().await.expect("an event"));
    }
    assert_eq!(
        event_names(&seen),
        [
            "Lost",
            "Reconnecting 1",
            "ReconnectFailed 1",
            "Reconnecting 2",
            "Connected"
        ]
    );
    assert!(
        matches!(&seen[2], crate::ConnectionEvent::ReconnectFailed { cause, .. }
            if matches!(**cause, Error::ConnectionLost { .. })),
        "{:?}",
        seen[2]
    );
    assert!(conn.is_connected());
}
