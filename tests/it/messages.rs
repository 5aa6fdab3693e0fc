//! The incoming side against a real Mosquitto: the one queue shared by every `Messages`
//! handle, `len()`, queue ordering, the bounded queue with its discards and warning, the end of
//! iteration when the connection ends, the fields of a `Message`, and how `Messages` keeps a
//! connection open.
//!
//! Every test starts its own broker, uses unique topics and is bounded in time.

use std::collections::BTreeSet;
use std::error::Error as _;
use std::time::{Duration, Instant};

use crate::support::mqtt::{
    RECV, builder_on as builder, connect_on as connect, recv as next_message,
};
use crate::support::*;
use aiomqtt::{
    Connection, Error, Message, Messages, Properties, ProtocolVersion, QoS, QueueType, Will,
};
use futures::StreamExt;

/// Bound of every test body.
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// The next item of the stream, which must come within [`RECV`].
#[track_caller]
fn next_item(
    messages: &mut Messages,
) -> impl std::future::Future<Output = Option<Result<Message, Error>>> + '_ {
    let loc = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(RECV, messages.next()).await {
            Ok(item) => item,
            Err(_) => panic!("the stream yielded nothing within {RECV:?} at {loc}"),
        }
    }
}

fn text(message: &Message) -> String {
    message.payload_str().expect("UTF-8 payload").to_owned()
}

/// Publishes `payloads` in order on `topic` at QoS 1 (each acknowledged before the next).
async fn publish_all<P: AsRef<str>>(conn: &Connection, topic: &str, payloads: &[P]) {
    for p in payloads {
        conn.publish(topic, p.as_ref())
            .qos(QoS::AtLeastOnce)
            .await
            .expect("publish");
    }
}

/// Waits until `messages.len() == n`.
#[track_caller]
fn wait_len(messages: &Messages, n: usize) -> impl std::future::Future<Output = ()> + '_ {
    let loc = std::panic::Location::caller();
    async move {
        if !wait_until_async(RECV, || messages.len() == n).await {
            panic!(
                "len() is {} not {n} after {RECV:?} at {loc}",
                messages.len()
            );
        }
    }
}

/// The cause inside `Error::Disconnected`, asserting the wrapper's shape: its text, and that
/// `source()` reads as that cause.
#[track_caller]
fn disconnected_cause(item: Option<Result<Message, Error>>) -> Error {
    match item {
        Some(Err(err @ Error::Disconnected(_))) => {
            assert_eq!(err.to_string(), "Disconnected during message iteration");
            assert!(err.is_connection_lost());
            // (That the source downcasts to `aiomqtt::Error` is checked by
            // `disconnected_source_downcasts_to_the_cause`.)
            let source_text = err.source().expect("Disconnected has a source").to_string();
            let Error::Disconnected(cause) = err else {
                unreachable!()
            };
            assert_eq!(source_text, cause.to_string());
            *cause
        }
        other => panic!("expected Err(Disconnected), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// One shared queue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_handles_share_one_queue_each_message_delivered_once() {
    with_timeout(T, async {
        const N: usize = 300;
        let broker = Broker::start();
        let t = unique_topic("shared_queue");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let consumers: Vec<_> = (0..3)
            .map(|id| {
                let mut messages = conn.messages();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut ending = None;
                    while let Some(item) = messages.next().await {
                        match item {
                            Ok(m) => {
                                let _ = tx.send((id, text(&m)));
                                // Work on it: a consumer busy with one message leaves the
                                // next to the others (under a loaded machine, one task
                                // that is never descheduled could otherwise take all).
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            Err(e) => ending = Some(e),
                        }
                    }
                    ending
                })
            })
            .collect();
        drop(tx);

        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let publishes = (0..N).map(|i| {
            publisher
                .publish(format!("{t}/{}", i % 7), i)
                .qos(QoS::AtLeastOnce)
                .into_future()
        });
        for result in futures::future::join_all(publishes).await {
            result.unwrap();
        }

        let mut received = Vec::new();
        let mut per_consumer = [0usize; 3];
        while received.len() < N {
            let (id, payload) = tokio::time::timeout(RECV, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {N} received", received.len()))
                .expect("consumers alive");
            per_consumer[id] += 1;
            received.push(payload.parse::<usize>().unwrap());
        }
        // Nothing more comes: no duplicates were produced late either.
        let extra = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(extra.is_err(), "extra delivery: {extra:?}");
        let unique: BTreeSet<usize> = received.iter().copied().collect();
        assert_eq!(unique.len(), N, "duplicates among {received:?}");
        assert_eq!(unique, (0..N).collect::<BTreeSet<_>>(), "lost messages");
        eprintln!("messages per consumer: {per_consumer:?}");
        assert!(
            per_consumer.iter().filter(|n| **n > 0).count() >= 2,
            "the handles in several tasks did not share the work: {per_consumer:?}"
        );

        // When the connection ends, exactly one consumer sees the error; all finish.
        conn.disconnect().await.unwrap();
        let mut endings = Vec::new();
        for c in consumers {
            endings.push(tokio::time::timeout(RECV, c).await.unwrap().unwrap());
        }
        let errors: Vec<_> = endings.into_iter().flatten().collect();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(&errors[0], Error::Disconnected(c) if matches!(**c, Error::Closed)));
    })
    .await
}

/// A handle that asked for a message and then stopped polling (a `select!` branch that
/// lost, an expired `timeout`) keeps no message from another handle that waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_that_stopped_polling_does_not_hold_back_a_waiting_one() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("abandoned_wait");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        conn.subscribe(format!("{t}/#")).await.unwrap();
        let mut a = conn.messages();
        let mut b = conn.messages();
        // `a` waits first, in a task of its own, then that task stops polling it and
        // waits for something else, keeping the handle.
        let (polled_tx, polled) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            {
                let next = a.next();
                futures::pin_mut!(next);
                assert!(futures::poll!(next).is_pending());
            }
            polled_tx.send(()).unwrap();
            let _ = released.await;
            a
        });
        polled.await.unwrap();
        let next_b = b.next();
        futures::pin_mut!(next_b);
        assert!(futures::poll!(next_b.as_mut()).is_pending());
        // Published from another task, so that only the wake-up can bring this one back.
        let publisher = conn.clone();
        let topic = format!("{t}/x");
        tokio::spawn(async move { publisher.publish(topic, "one").await.unwrap() });
        // (Not `timeout`: at its deadline it polls the stream once more, and would find
        // the message a missed wake-up left in the queue.)
        let m = tokio::select! {
            biased;
            _ = tokio::time::sleep(RECV) => panic!("the waiting handle was not woken"),
            m = next_b => m.unwrap().unwrap(),
        };
        assert_eq!(text(&m), "one");
        release.send(()).unwrap();
        let mut a = task.await.unwrap();
        // And `a` still works.
        conn.publish(format!("{t}/x"), "two").await.unwrap();
        assert_eq!(text(&next_message(&mut a).await), "two");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_polled_in_turn_split_the_queue() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("round_robin");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut handles = [conn.messages(), conn.messages(), conn.messages()];
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let payloads: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        publish_all(&conn, &format!("{t}/x"), &payloads).await;
        wait_len(&handles[0], 9).await;
        let mut got = Vec::new();
        for round in 0..3 {
            for (h, handle) in handles.iter_mut().enumerate() {
                let m = next_message(handle).await;
                got.push(text(&m));
                // Every handle sees the one queue shrink.
                assert_eq!(handle.len(), 9 - (round * 3 + h + 1));
            }
        }
        assert_eq!(
            got, payloads,
            "each handle takes the next message of the one queue"
        );
        assert!(handles.iter().all(Messages::is_empty));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn len_counts_queued_messages() {
    with_timeout(T, async {
        const N: usize = 10;
        let broker = Broker::start();
        let t = unique_topic("len");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        assert_eq!(messages.len(), 0);
        assert!(messages.is_empty());
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let payloads: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
        publish_all(&publisher, &format!("{t}/x"), &payloads).await;
        wait_len(&messages, N).await;
        // Stable: nothing more is counted.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(messages.len(), N);
        assert_eq!(conn.messages().len(), N, "a new handle sees the same queue");
        assert!(!messages.is_empty());
        assert_eq!(text(&next_message(&mut messages).await), "m0");
        assert_eq!(messages.len(), N - 1);
        for _ in 1..N {
            next_message(&mut messages).await;
        }
        assert_eq!(messages.len(), 0);
        assert!(messages.is_empty());
        assert_eq!(conn.discarded_messages(), 0);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Queue ordering

/// Queues `payloads` (published in order) on a client with `queue_type`, then drains them.
async fn drain_in_queue_order(name: &str, queue_type: QueueType, payloads: &[&str]) -> Vec<String> {
    let broker = Broker::start();
    let t = unique_topic(name);
    let conn = builder(broker.port(), ProtocolVersion::V311)
        .queue_type(queue_type)
        .build()
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut messages = conn.messages();
    conn.subscribe(format!("{t}/#"))
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap();
    let publisher = connect(broker.port(), ProtocolVersion::V311).await;
    publish_all(&publisher, &format!("{t}/x"), payloads).await;
    wait_len(&messages, payloads.len()).await;
    let mut out = Vec::new();
    for _ in payloads {
        out.push(text(&next_message(&mut messages).await));
    }
    out
}

const ORDER_INPUT: [&str; 7] = ["3:a", "1:b", "2:c", "1:d", "-5:e", "3:f", "0:g"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_queue_yields_in_arrival_order() {
    with_timeout(T, async {
        let got = drain_in_queue_order("fifo", QueueType::Fifo, &ORDER_INPUT).await;
        assert_eq!(got, ORDER_INPUT);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifo_queue_yields_newest_first() {
    with_timeout(T, async {
        let got = drain_in_queue_order("lifo", QueueType::Lifo, &ORDER_INPUT).await;
        let mut expected = ORDER_INPUT.to_vec();
        expected.reverse();
        assert_eq!(got, expected);
    })
    .await
}

/// The priority key: the number before the ':' of the payload.
fn key_before_colon(message: &Message) -> i64 {
    let text = message.payload_str().unwrap_or("");
    text.split(':')
        .next()
        .unwrap_or("")
        .parse()
        .unwrap_or(i64::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_yields_smallest_key_first_ties_by_arrival() {
    with_timeout(T, async {
        let got = drain_in_queue_order(
            "priority",
            QueueType::Priority(key_before_colon),
            &ORDER_INPUT,
        )
        .await;
        assert_eq!(got, ["-5:e", "0:g", "1:b", "1:d", "2:c", "3:a", "3:f"]);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Bounded queue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_discards_counts_and_warns_without_blocking_the_engine() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("queue_full");
        let logger = capture_logger("queue_full");
        let id = format!("queue-full-{}", std::process::id());
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .max_queued_incoming_messages(5)
            .logger(&logger)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let payloads: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        publish_all(&publisher, &format!("{t}/x"), &payloads).await;

        assert!(
            wait_until_async(RECV, || conn.discarded_messages() == 15).await,
            "discarded {}",
            conn.discarded_messages()
        );
        assert_eq!(messages.len(), 5);
        // Made on Paho's receive thread, the warnings reach the logger a moment later.
        let full = || {
            logged(&logger)
                .iter()
                .filter(|(_, m)| m.contains("queue is full"))
                .count()
        };
        wait_until_async(RECV, || full() >= 15).await;
        let warnings: Vec<_> = logged(&logger)
            .into_iter()
            .filter(|(_, m)| m.contains("queue is full"))
            .collect();
        assert_eq!(
            warnings,
            vec![
                (
                    log::Level::Warn,
                    "Message queue is full. Discarding message.".to_owned()
                );
                15
            ]
        );

        // Paho's thread was never blocked: it acknowledged every message, the discarded ones
        // included, and while the queue is full it still reads the PUBACK of our publish and
        // acknowledges our own message coming back (discarded as well).
        conn.publish(format!("{t}/x"), "while full")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let acks = format!("Received PUBACK from {id} ");
        assert!(
            wait_until_async(RECV, || broker.log().matches(&acks).count() == 21).await,
            "the client did not acknowledge all 21 deliveries:\n{}",
            broker.log()
        );
        assert!(
            wait_until_async(RECV, || conn.discarded_messages() == 16).await,
            "our own message is discarded too: {}",
            conn.discarded_messages()
        );
        assert!(conn.is_connected());

        // The five kept are the oldest; new messages are queued again once there is room.
        for want in ["0", "1", "2", "3", "4"] {
            assert_eq!(text(&next_message(&mut messages).await), want);
        }
        publisher
            .publish(format!("{t}/x"), "after")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(text(&next_message(&mut messages).await), "after");
        assert_eq!(conn.discarded_messages(), 16);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The end of iteration

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_disconnect_yields_queued_messages_then_one_error_then_none() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("disconnect_iteration");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        publish_all(&conn, &format!("{t}/x"), &["a", "b", "c"]).await;
        wait_len(&messages, 3).await;

        conn.disconnect().await.unwrap();
        for want in ["a", "b", "c"] {
            assert_eq!(text(&next_message(&mut messages).await), want);
        }
        let cause = disconnected_cause(next_item(&mut messages).await);
        assert!(matches!(cause, Error::Closed), "{cause:?}");
        assert_eq!(cause.to_string(), "The connection was closed by the client");
        for _ in 0..3 {
            assert!(next_item(&mut messages).await.is_none());
        }
        assert_eq!(messages.len(), 0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_kill_yields_queued_messages_then_connection_lost_and_reconnect_works() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("kill_iteration");
        let client = builder(broker.port(), ProtocolVersion::V311)
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        publish_all(&conn, &format!("{t}/x"), &["a", "b"]).await;
        wait_len(&messages, 2).await;

        broker.kill();
        for want in ["a", "b"] {
            assert_eq!(text(&next_message(&mut messages).await), want);
        }
        let cause = disconnected_cause(next_item(&mut messages).await);
        assert!(
            matches!(cause, Error::ConnectionLost { rc: None, .. }),
            "{cause:?}"
        );
        assert!(cause.is_connection_lost());
        assert!(next_item(&mut messages).await.is_none());
        assert!(next_item(&mut messages).await.is_none());
        assert!(!conn.is_connected());

        // The same client connects again, while the old handles still exist.
        broker.start_again();
        let again = client.connect().await.expect("connect after the loss");
        let mut fresh = again.messages();
        again
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        again
            .publish(format!("{t}/x"), "again")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(text(&next_message(&mut fresh).await), "again");
        // The old stream stays finished.
        assert!(next_item(&mut messages).await.is_none());
        drop(conn);
    })
    .await
}

/// The broker's DISCONNECT (here 0x95, as Mosquitto sends for a packet over its limit):
/// the pending publish fails with the loss, queued messages are still yielded, then one
/// `Disconnected` carrying the reason code, then the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_disconnect_on_v5_ends_iteration_with_its_reason_code() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let client = aiomqtt::Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .build()
            .unwrap();
        let (conn, mut fc) = fb.connect(&client).await;
        let mut messages = conn.messages();
        fc.send(&packets::publish(
            b"t/x",
            0,
            0,
            b"queued",
            false,
            false,
            Some(&[]),
        ))
        .await
        .unwrap();
        wait_len(&messages, 1).await;

        let (result, _) = tokio::join!(
            conn.publish("t/x", vec![b'x'; 500]).qos(QoS::AtLeastOnce),
            async {
                fc.expect(PacketType::Publish, Duration::from_secs(5)).await;
                fc.send(&packets::disconnect_v5(0x95, &[])).await.unwrap();
            }
        );
        assert!(
            matches!(result, Err(Error::ConnectionLost { .. })),
            "the pending publish: {result:?}"
        );

        assert_eq!(text(&next_message(&mut messages).await), "queued");
        let err = next_item(&mut messages).await;
        if let Some(Err(e)) = &err {
            assert_eq!(e.rc(), Some(aiomqtt::ReasonCode::PACKET_TOO_LARGE));
        }
        let cause = disconnected_cause(err);
        assert!(
            matches!(
                cause,
                Error::ConnectionLost {
                    rc: Some(aiomqtt::ReasonCode::PACKET_TOO_LARGE),
                    ..
                }
            ),
            "{cause:?}"
        );
        assert_eq!(cause.to_string(), "[code:149] Packet too large");
        assert!(next_item(&mut messages).await.is_none());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_handles_one_gets_the_error_the_others_none() {
    with_timeout(T, async {
        let broker = Broker::start();
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let mut messages = conn.messages();
                tokio::spawn(async move {
                    let first = messages.next().await;
                    let second = messages.next().await;
                    (first, second)
                })
            })
            .collect();
        // Let all three block on the empty queue.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        conn.disconnect().await.unwrap();

        let mut errors = 0;
        let mut nones = 0;
        for w in waiters {
            let (first, second) = tokio::time::timeout(RECV, w).await.unwrap().unwrap();
            match first {
                Some(Err(Error::Disconnected(cause))) => {
                    assert!(matches!(*cause, Error::Closed), "{cause:?}");
                    errors += 1;
                }
                None => nones += 1,
                other => panic!("unexpected {other:?}"),
            }
            assert!(second.is_none(), "after the end only None: {second:?}");
        }
        assert_eq!((errors, nones), (1, 2));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Message fields

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_fields_on_v311() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("fields_v311");
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        publisher
            .publish(format!("{t}/retained"), "kept")
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .unwrap();
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::ExactlyOnce)
            .await
            .unwrap();

        let m = next_message(&mut messages).await;
        assert_eq!(m.topic.as_str(), format!("{t}/retained"));
        assert_eq!(m.payload, b"kept");
        assert_eq!(m.qos, QoS::AtLeastOnce);
        assert!(m.retain);
        assert_ne!(m.mid, 0, "a QoS 1 message carries its packet identifier");
        assert!(m.properties.is_none());

        publisher
            .publish(format!("{t}/live"), &b"\x00bin\xff"[..])
            .qos(QoS::ExactlyOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(m.topic.as_str(), format!("{t}/live"));
        assert!(m.topic.matches(format!("{t}/+")));
        assert_eq!(m.payload, b"\x00bin\xff");
        assert!(m.payload_str().is_err());
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert!(!m.retain);
        assert_ne!(m.mid, 0, "a QoS 2 message carries its packet identifier");
        assert!(m.properties.is_none());

        publisher.publish(format!("{t}/q0"), "zero").await.unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!((m.qos, m.retain, m.mid), (QoS::AtMostOnce, false, 0));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_fields_on_v5_carry_properties() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("fields_v5");
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .properties(Properties::new().subscription_identifier(7))
            .await
            .unwrap();
        conn.publish(format!("{t}/a"), "hello")
            .qos(QoS::AtLeastOnce)
            .properties(
                Properties::new()
                    .content_type("text/plain")
                    .user_property("k", "v"),
            )
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(m.topic.as_str(), format!("{t}/a"));
        assert_eq!(m.payload_str().unwrap(), "hello");
        assert_eq!((m.qos, m.retain), (QoS::AtLeastOnce, false));
        assert_ne!(m.mid, 0, "a QoS 1 message carries its packet identifier");
        let props = m.properties.as_deref().expect("Some on v5");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        assert_eq!(props.user_property_value("k"), Some("v"));
        assert_eq!(props.subscription_identifiers, vec![7]);

        conn.publish(format!("{t}/b"), "bare").await.unwrap();
        let m = next_message(&mut messages).await;
        let props = m
            .properties
            .as_deref()
            .expect("Some on v5, even when empty");
        assert!(props.user_properties.is_empty());
        assert_eq!(props.content_type, None);
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Messages keeps the connection open

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_keeps_the_connection_and_dropping_the_last_handle_disconnects_without_will() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("drop_handles");
        let will_topic = format!("{t}/will");
        let id = format!("drop-handles-{}", std::process::id());

        let watcher = connect(broker.port(), ProtocolVersion::V311).await;
        let mut watched = watcher.messages();
        watcher
            .subscribe(&will_topic)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();

        let client = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .will(Will::new(&will_topic, "will").qos(QoS::AtLeastOnce))
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        conn.subscribe(format!("{t}/data"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut messages = conn.messages();
        let clone = conn.clone();
        drop(conn);
        drop(clone);

        // Still connected: messages arrive and the client is still held.
        watcher
            .publish(format!("{t}/data"), "still here")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(text(&next_message(&mut messages).await), "still here");
        assert!(matches!(client.connect().await, Err(Error::Reentrant)));
        let disconnected = format!("Client {id} disconnected");
        assert!(!broker.log().contains(&disconnected), "{}", broker.log());

        // Dropping the last handle sends DISCONNECT.
        drop(messages);
        broker.wait_for_log(&format!("Received DISCONNECT from {id}"), RECV);
        broker.wait_for_log(&disconnected, RECV);
        // No Will: the first message on its topic is a marker published afterwards.
        watcher
            .publish(&will_topic, "marker")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(text(&next_message(&mut watched).await), "marker");
        // The client is free again.
        let again = client.connect().await.expect("connect after the drop");
        again.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnected_source_downcasts_to_the_cause() {
    with_timeout(T, async {
        let broker = Broker::start();
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        conn.disconnect().await.unwrap();
        let err = match next_item(&mut messages).await {
            Some(Err(err)) => err,
            other => panic!("expected Err(Disconnected), got {other:?}"),
        };
        let source = err.source().expect("Disconnected has a source");
        // Walking the chain the usual way must find the cause as an aiomqtt::Error.
        let cause = source.downcast_ref::<Error>();
        assert!(
            matches!(cause, Some(Error::Closed)),
            "source() of {err:?} does not downcast to aiomqtt::Error (is Box<Error>: {})",
            source.downcast_ref::<Box<Error>>().is_some()
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The priority key is user code: it runs on the consumer's task, never on the engine's thread

/// Panics for the payload "boom"; records the thread it ran on otherwise.
fn key_that_panics_on_boom(message: &Message) -> i64 {
    if message.payload == b"boom" {
        panic!("the key function panicked");
    }
    KEY_THREADS
        .lock()
        .unwrap()
        .push(std::thread::current().name().map(str::to_owned));
    0
}

static KEY_THREADS: std::sync::Mutex<Vec<Option<String>>> = std::sync::Mutex::new(Vec::new());

/// A panicking key function panics in the consumer's task (which the runtime reports as a
/// panicked task), not on Paho's thread, where a panic aborts the process; the engine and
/// other connections go on. Run alone in a child process, so an abort fails this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_key_runs_on_the_consumer_and_a_panic_stays_there() {
    if ran_in_child(
        "messages::priority_key_runs_on_the_consumer_and_a_panic_stays_there",
        Duration::from_secs(60),
    ) {
        return;
    }
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("priority_panic");
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .queue_type(QueueType::Priority(key_that_panics_on_boom))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.subscribe(&t).qos(QoS::AtLeastOnce).await.unwrap();
        publisher
            .publish(&t, "fine")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut messages = conn.messages();
        assert_eq!(next_message(&mut messages).await.payload, b"fine");
        let threads = KEY_THREADS.lock().unwrap().clone();
        // The consumer's threads are Rust threads with names (the test's, the runtime's);
        // Paho's threads are unnamed to Rust.
        assert!(
            !threads.is_empty()
                && threads
                    .iter()
                    .all(|n| n.as_deref().is_some_and(|n| n != "aiomqtt-engine")),
            "the key ran on {threads:?}"
        );
        publisher
            .publish(&t, "boom")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let consumer =
            tokio::spawn(async move { messages.next().await.map(|m| m.map(|m| m.payload)) });
        let joined = consumer.await;
        assert!(
            joined.as_ref().is_err_and(|e| e.is_panic()),
            "the consumer task panicked: {joined:?}"
        );
        // The process, the engine and the connection are fine.
        publisher
            .publish(&t, "after")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut messages = conn.messages();
        assert_eq!(next_message(&mut messages).await.payload, b"after");
    })
    .await
}

static SLOW_KEY_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sleeps 3 s on the payload "slow", saying so while it does.
fn slow_key(message: &Message) -> i64 {
    if message.payload == b"slow" {
        SLOW_KEY_RUNNING.store(true, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_secs(3));
        SLOW_KEY_RUNNING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
    0
}

/// A slow key function holds only its consumer: meanwhile another connection of the same
/// process completes QoS 1 round trips, which would wait if the key ran under Paho's mutex.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_priority_key_does_not_stall_the_engine() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("priority_slow");
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .queue_type(QueueType::Priority(slow_key))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.subscribe(&t).qos(QoS::AtLeastOnce).await.unwrap();
        let mut messages = conn.messages();
        publisher
            .publish(&t, "slow")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let consumer = tokio::spawn(async move { messages.next().await });
        // While the key sleeps on a consumer worker, the engine keeps working.
        let running = || SLOW_KEY_RUNNING.load(std::sync::atomic::Ordering::SeqCst);
        assert!(wait_until_async(Duration::from_secs(5), running).await);
        let started = Instant::now();
        for i in 0..5 {
            publisher
                .publish(format!("{t}/other/{i}"), "x")
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap();
        }
        let took = started.elapsed();
        assert!(running(), "the key was still running");
        // Under Paho's mutex the first would wait out the key's 3 s.
        assert!(
            took < Duration::from_millis(1500),
            "5 round trips took {took:?}"
        );
        let m = consumer.await.unwrap().unwrap().unwrap();
        assert_eq!(m.payload, b"slow");
    })
    .await
}
