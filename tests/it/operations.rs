//! Outgoing operations against a real Mosquitto: `publish`, `subscribe` and `unsubscribe` with
//! every keyword, payload conversions, topic validation, refused subscriptions, negative
//! acknowledgements, the concurrency bound and the pending-calls warning, and calls on a
//! connection that has ended.
//!
//! Every test starts its own broker, uses unique topics and is bounded in time.

use std::error::Error as _;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

use crate::support::mqtt::{
    RECV, builder_on as builder, connect_on as connect, recv as next_message,
};
use crate::support::*;
use aiomqtt::{
    Connection, Error, Filters, Message, Messages, PayloadFormat, Properties, ProtocolVersion, QoS,
    ReasonCode, RetainHandling, SubscribeOptions, Topic, Wildcard,
};

/// Bound of every test body.
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Helpers.

fn text(message: &Message) -> &str {
    message.payload_str().expect("UTF-8 payload")
}

fn codes(values: &[u8]) -> Vec<ReasonCode> {
    values.iter().map(|v| ReasonCode::from(*v)).collect()
}

/// A Mosquitto log line count of `needle` for one client id.
fn log_count(broker: &Broker, needle: &str) -> usize {
    broker.log().matches(needle).count()
}

// ---------------------------------------------------------------------------------------------
// publish

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_qos_0_1_2_received_at_that_qos_by_another_client() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("publish_qos");
        let subscriber = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = subscriber.messages();
        assert_eq!(
            subscriber
                .subscribe(format!("{t}/#"))
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[2])
        );
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publisher
                .publish(
                    format!("{t}/q{}", qos.as_u8()),
                    format!("at {}", qos.as_u8()),
                )
                .qos(qos)
                .await
                .unwrap();
        }
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let m = next_message(&mut messages).await;
            assert_eq!(m.topic.as_str(), format!("{t}/q{}", qos.as_u8()));
            assert_eq!(text(&m), format!("at {}", qos.as_u8()));
            assert_eq!(m.qos, qos, "delivered QoS of {m:?}");
            assert!(!m.retain);
        }
        // The subscription's QoS caps delivery: a QoS 2 publish to a QoS 1 subscriber.
        let capped = connect(broker.port(), ProtocolVersion::V311).await;
        let mut capped_messages = capped.messages();
        capped
            .subscribe((format!("{t}/capped").as_str(), QoS::AtLeastOnce))
            .await
            .unwrap();
        publisher
            .publish(format!("{t}/capped"), "x")
            .qos(QoS::ExactlyOnce)
            .await
            .unwrap();
        assert_eq!(
            next_message(&mut capped_messages).await.qos,
            QoS::AtLeastOnce
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_retain_reaches_later_subscriber_and_empty_payload_clears_it() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("publish_retain");
        let topic = format!("{t}/state");
        let marker = format!("{t}/marker");
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        publisher
            .publish(&topic, "on")
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .unwrap();

        // A subscriber that arrives later gets it, flagged as retained.
        let late = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = late.messages();
        late.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(
            (m.topic.as_str(), text(&m), m.retain),
            (topic.as_str(), "on", true)
        );
        // A live copy of a retained publish is not flagged (MQTT 3.1.1 §3.3.1.3).
        publisher
            .publish(&topic, "live")
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!((text(&m), m.retain), ("live", false));

        // An empty retained payload clears it: a new subscriber gets nothing before the
        // marker that is published after its SUBACK.
        publisher
            .publish(&topic, ())
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!((m.payload.len(), m.retain), (0, false));
        let after = connect(broker.port(), ProtocolVersion::V311).await;
        let mut after_messages = after.messages();
        after
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        publisher
            .publish(&marker, "marker")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut after_messages).await;
        assert_eq!(
            m.topic.as_str(),
            marker,
            "retained message not cleared: {m:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_timeout_against_paused_broker_is_unacknowledged() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("publish_timeout");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        assert_eq!(conn.timeout(), Duration::from_secs(5));
        broker.pause();
        let started = Instant::now();
        let result = conn
            .publish(format!("{t}/a"), "x")
            .qos(QoS::AtLeastOnce)
            .timeout(Duration::from_millis(300))
            .await;
        let elapsed = started.elapsed();
        broker.resume();
        // The PUBLISH was handed to the engine: its outcome is unknown, not "never sent".
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::Unacknowledged) && err.is_timeout(),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "No acknowledgement within the timeout; the message may still be delivered"
        );
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "the per-call timeout (300 ms), not the client's (5 s), applies: {elapsed:?}"
        );
        // Subscribe and unsubscribe honour it too.
        // The client's timeout (5 s) would give Error::Timeout as well: the time shows which
        // one ended the call.
        broker.pause();
        let started = Instant::now();
        let sub = conn
            .subscribe(format!("{t}/b"))
            .timeout(Duration::from_millis(200))
            .await;
        let sub_elapsed = started.elapsed();
        let started = Instant::now();
        let unsub = conn
            .unsubscribe(format!("{t}/b"))
            .timeout(Duration::from_millis(200))
            .await;
        let unsub_elapsed = started.elapsed();
        broker.resume();
        assert!(matches!(sub, Err(Error::Timeout)), "{sub:?}");
        assert!(matches!(unsub, Err(Error::Timeout)), "{unsub:?}");
        for (call, elapsed) in [("subscribe", sub_elapsed), ("unsubscribe", unsub_elapsed)] {
            assert!(
                elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
                "{call}: the per-call timeout (200 ms), not the client's (5 s), applies: \
                 {elapsed:?}"
            );
        }
        // The connection survives and works after the broker resumes.
        conn.publish(format!("{t}/a"), "y")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(conn.is_connected());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_properties_on_v5_reach_the_subscriber() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("publish_props");
        let subscriber = connect(broker.port(), ProtocolVersion::V5).await;
        let mut messages = subscriber.messages();
        subscriber
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let publisher = connect(broker.port(), ProtocolVersion::V5).await;
        let props = Properties::new()
            .payload_format_indicator(PayloadFormat::Utf8)
            .message_expiry_interval(3600)
            .content_type("text/plain")
            .response_topic(format!("{t}/reply"))
            .correlation_data(b"\x00corr\xff".to_vec())
            .user_property("k1", "v1")
            .user_property("k1", "v2")
            .user_property("k2", "v3");
        publisher
            .publish(format!("{t}/p"), "with properties")
            .qos(QoS::AtLeastOnce)
            .properties(props)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        let got = m.properties.as_deref().expect("v5 message has properties");
        assert_eq!(got.payload_format_indicator, Some(PayloadFormat::Utf8));
        let expiry = got.message_expiry_interval.expect("expiry forwarded");
        assert!(
            (3590..=3600).contains(&expiry),
            "the broker forwards the remaining lifetime: {expiry}"
        );
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
        assert_eq!(
            got.response_topic.as_deref(),
            Some(format!("{t}/reply").as_str())
        );
        assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00corr\xff"[..]));
        assert_eq!(
            got.user_properties,
            vec![
                ("k1".to_owned(), "v1".to_owned()),
                ("k1".to_owned(), "v2".to_owned()),
                ("k2".to_owned(), "v3".to_owned()),
            ]
        );
        // Without properties, nothing is invented.
        publisher
            .publish(format!("{t}/p"), "plain")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        let got = m.properties.as_deref().expect("v5 message has properties");
        assert!(got.is_empty(), "{got:?}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_on_v311_are_invalid_argument_and_nothing_is_sent() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("props_v311");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let props = Properties::new().user_property("k", "v");

        let err = conn
            .publish(format!("{t}/p"), "x")
            .qos(QoS::AtLeastOnce)
            .properties(props.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Invalid argument: PUBLISH properties need MQTT 5"
        );
        let err = conn
            .subscribe(format!("{t}/other"))
            .properties(props.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Invalid argument: SUBSCRIBE properties need MQTT 5"
        );
        let err = conn
            .unsubscribe(format!("{t}/#"))
            .properties(props)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Invalid argument: UNSUBSCRIBE properties need MQTT 5"
        );

        // Nothing was published nor unsubscribed: the first message is the marker.
        conn.publish(format!("{t}/marker"), "marker")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(text(&m), "marker");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_conversions_on_the_wire() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("payloads");
        let subscriber = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = subscriber.messages();
        subscriber
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let topic = format!("{t}/p");
        let owned = String::from("owned string");
        let bytes: &[u8] = b"\x00\x01\xfe\xff";
        let expected: Vec<&[u8]> = vec![
            b"str slice",
            b"owned string",
            b"\x00\x01\xfe\xff",
            b"\xc3\x28vec",
            b"42",
            b"-7",
            b"255",
            b"65.2",
            b"1",
            b"0.5",
            b"",
        ];
        conn.publish(&topic, "str slice")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, owned)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, bytes)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, b"\xc3\x28vec".to_vec())
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, 42)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, -7_i64)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, 255_u8)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, 65.2)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, 1.0_f64)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, 0.5_f32)
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(&topic, ())
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        for want in expected {
            let m = next_message(&mut messages).await;
            assert_eq!(
                m.payload,
                want,
                "payload {:?} vs {:?}",
                String::from_utf8_lossy(&m.payload),
                String::from_utf8_lossy(want)
            );
        }
        // Raw bytes stay raw: payload_str() refuses invalid UTF-8.
        conn.publish(&topic, &b"\xff"[..]).await.unwrap();
        let m = next_message(&mut messages).await;
        assert!(matches!(m.payload_str(), Err(Error::Utf8(_))));
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Topic and filter validation

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_and_filters_fail_before_reaching_the_engine() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("invalid_topics");
        let id = format!("ops-invalid-{}", std::process::id());
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut messages = conn.messages();

        let bad_topics = [
            (
                format!("{t}/+/x"),
                "must not contain the wildcards '+' or '#'",
            ),
            (
                format!("{t}/#"),
                "must not contain the wildcards '+' or '#'",
            ),
            (
                format!("{t}/a+"),
                "must not contain the wildcards '+' or '#'",
            ),
            (String::new(), "must not be empty"),
            (
                format!("{t}/a\0b"),
                "must not contain the null character U+0000",
            ),
        ];
        for (topic, reason) in &bad_topics {
            let err = conn
                .publish(topic, "never sent")
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap_err();
            match &err {
                Error::InvalidTopic {
                    topic: got,
                    reason: why,
                } => {
                    assert_eq!(got, topic);
                    assert_eq!(why, reason);
                }
                other => panic!("publish to {topic:?}: expected InvalidTopic, got {other:?}"),
            }
            assert_eq!(
                err.to_string(),
                format!("Invalid topic {topic:?}: {reason}")
            );
        }

        let bad_filters = [
            format!("{t}/#/x"),
            format!("{t}/a#"),
            format!("{t}/a+/b"),
            String::new(),
            format!("{t}/\0"),
        ];
        for filter in &bad_filters {
            let err = conn.subscribe(filter.as_str()).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidWildcard { wildcard, .. } if wildcard == filter),
                "subscribe {filter:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("Invalid wildcard {filter:?}: ")),
                "{err}"
            );
            let err = conn.unsubscribe(filter.as_str()).await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidWildcard { wildcard, .. } if wildcard == filter),
                "unsubscribe {filter:?}: {err:?}"
            );
        }
        // One bad filter in a list fails the whole call.
        let err = conn
            .subscribe(vec![format!("{t}/ok"), format!("{t}/#/bad")])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidWildcard { .. }), "{err:?}");
        // A bad Will topic is refused by build().
        let err = builder(broker.port(), ProtocolVersion::V311)
            .will(aiomqtt::Will::new(format!("{t}/+"), "w"))
            .build()
            .unwrap_err();
        assert!(matches!(err, Error::InvalidTopic { .. }), "{err:?}");

        // The connection is still up and usable, and the broker saw none of it.
        assert!(conn.is_connected());
        conn.subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(format!("{t}/ok"), "valid")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(text(&m), "valid");
        let log = broker.log();
        // First sends ("d0"): a resend with DUP is not another publish.
        assert_eq!(
            log_count(&broker, &format!("Received PUBLISH from {id} (d0")),
            1,
            "only the valid publish reached the broker:\n{log}"
        );
        assert_eq!(
            log_count(&broker, &format!("Received SUBSCRIBE from {id}")),
            1,
            "only the valid subscribe reached the broker:\n{log}"
        );
        assert_eq!(
            log_count(&broker, &format!("Received UNSUBSCRIBE from {id}")),
            0,
            "{log}"
        );
        assert!(!log.contains("disconnecting"), "{log}");
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// subscribe

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_accepts_every_filter_form_and_returns_one_code_per_filter() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("subscribe_forms");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let f = |s: &str| format!("{t}/{s}");

        // One filter, each kind; QoS 0 unless asked.
        assert_eq!(
            conn.subscribe(f("str").as_str()).await.unwrap(),
            codes(&[0])
        );
        assert_eq!(conn.subscribe(f("string")).await.unwrap(), codes(&[0]));
        let w = Wildcard::new(f("wild/+")).unwrap();
        assert_eq!(conn.subscribe(&w).await.unwrap(), codes(&[0]));
        assert_eq!(
            conn.subscribe(w).qos(QoS::AtLeastOnce).await.unwrap(),
            codes(&[1])
        );
        let topic = Topic::new(f("topic")).unwrap();
        assert_eq!(
            conn.subscribe(topic).qos(QoS::ExactlyOnce).await.unwrap(),
            codes(&[2])
        );
        assert_eq!(
            conn.subscribe((f("tuple").as_str(), QoS::AtLeastOnce))
                .await
                .unwrap(),
            codes(&[1])
        );
        assert_eq!(
            conn.subscribe((f("opts"), SubscribeOptions::new().qos(QoS::ExactlyOnce)))
                .await
                .unwrap(),
            codes(&[2])
        );
        // `.qos()` applies to plain filters.
        assert_eq!(
            conn.subscribe(f("plain").as_str())
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[2])
        );
        // `.options()` applies to plain filters; `.qos()` overrides its QoS.
        assert_eq!(
            conn.subscribe(f("o1"))
                .options(SubscribeOptions::new().qos(QoS::AtLeastOnce))
                .await
                .unwrap(),
            codes(&[1])
        );
        assert_eq!(
            conn.subscribe(f("o2"))
                .options(SubscribeOptions::new().qos(QoS::AtLeastOnce))
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[2])
        );
        // A filter's own QoS, then its own options, come before the call's.
        assert_eq!(
            conn.subscribe((f("own-qos"), QoS::AtMostOnce))
                .options(SubscribeOptions::new().qos(QoS::ExactlyOnce))
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[0])
        );
        assert_eq!(
            conn.subscribe((f("own-opts"), SubscribeOptions::new().qos(QoS::AtLeastOnce)))
                .options(SubscribeOptions::new().qos(QoS::ExactlyOnce))
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[1])
        );

        // Lists: Vec, array, slice, collected; one code per filter, in order.
        assert_eq!(
            conn.subscribe(vec![
                (f("l/0"), QoS::AtMostOnce),
                (f("l/1"), QoS::AtLeastOnce),
                (f("l/2"), QoS::ExactlyOnce),
            ])
            .await
            .unwrap(),
            codes(&[0, 1, 2])
        );
        assert_eq!(
            conn.subscribe([f("a/1"), f("a/2")])
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap(),
            codes(&[1, 1])
        );
        // A filter's own QoS wins over the call's.
        assert_eq!(
            conn.subscribe([(f("b/1"), QoS::AtMostOnce), (f("b/2"), QoS::AtLeastOnce)])
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[0, 1])
        );
        let slice = [f("s/1"), f("s/2"), f("s/3")];
        assert_eq!(
            conn.subscribe(&slice[..])
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap(),
            codes(&[2, 2, 2])
        );
        let collected: Filters = (0..4)
            .map(|i| (f(&format!("c/{i}")), QoS::AtLeastOnce))
            .collect();
        assert_eq!(conn.subscribe(collected).await.unwrap(), codes(&[1; 4]));
        // An empty list is refused before the engine.
        let err = conn.subscribe(Vec::<String>::new()).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

        // The granted QoS is what the broker delivers with.
        let mut messages = conn.messages();
        for (sub, qos) in [("l/0", 0), ("l/1", 1), ("l/2", 2), ("b/1", 0)] {
            conn.publish(f(sub), sub)
                .qos(QoS::ExactlyOnce)
                .await
                .unwrap();
            let m = next_message(&mut messages).await;
            assert_eq!((text(&m), m.qos.as_u8()), (sub, qos));
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_on_v5_returns_reason_codes_per_filter() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("subscribe_v5_codes");
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let got = conn
            .subscribe(vec![
                (format!("{t}/0"), QoS::AtMostOnce),
                (format!("{t}/1"), QoS::AtLeastOnce),
                (format!("{t}/2"), QoS::ExactlyOnce),
            ])
            .properties(Properties::new().user_property("who", "test"))
            .await
            .unwrap();
        assert_eq!(
            got,
            vec![
                ReasonCode::SUCCESS,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_2
            ]
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_option_no_local_drops_own_messages() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("no_local");
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let mut messages = conn.messages();
        conn.subscribe(vec![
            (
                format!("{t}/local"),
                SubscribeOptions::new().qos(QoS::AtLeastOnce).no_local(true),
            ),
            (
                format!("{t}/echo"),
                SubscribeOptions::new().qos(QoS::AtLeastOnce),
            ),
        ])
        .await
        .unwrap();
        // Own publish on the no_local filter is not delivered; the one after it is.
        conn.publish(format!("{t}/local"), "own")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(format!("{t}/echo"), "echo")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(text(&m), "echo", "own message was delivered: {m:?}");
        // Another client's publish on the no_local filter is delivered.
        let other = connect(broker.port(), ProtocolVersion::V5).await;
        other
            .publish(format!("{t}/local"), "foreign")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(text(&m), "foreign");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_option_retain_as_published_keeps_the_retain_flag() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("rap");
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let mut messages = conn.messages();
        conn.subscribe([
            (
                format!("{t}/kept"),
                SubscribeOptions::new()
                    .qos(QoS::AtLeastOnce)
                    .retain_as_published(true),
            ),
            (
                format!("{t}/cleared"),
                SubscribeOptions::new().qos(QoS::AtLeastOnce),
            ),
        ])
        .await
        .unwrap();
        let publisher = connect(broker.port(), ProtocolVersion::V5).await;
        for sub in ["kept", "cleared"] {
            publisher
                .publish(format!("{t}/{sub}"), sub)
                .qos(QoS::AtLeastOnce)
                .retain(true)
                .await
                .unwrap();
        }
        let kept = next_message(&mut messages).await;
        let cleared = next_message(&mut messages).await;
        assert_eq!((text(&kept), kept.retain), ("kept", true));
        assert_eq!((text(&cleared), cleared.retain), ("cleared", false));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_option_retain_handling() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("retain_handling");
        let publisher = connect(broker.port(), ProtocolVersion::V5).await;
        let retained = format!("{t}/r");
        let marker = format!("{t}/marker");
        publisher
            .publish(&retained, "retained")
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .unwrap();
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let mut messages = conn.messages();
        conn.subscribe(&marker).qos(QoS::AtLeastOnce).await.unwrap();

        // Subscribes to `retained` with `options`, then publishes the marker: returns the
        // texts received up to the marker.
        let mut round = 0;
        let mut check = async |options: SubscribeOptions| {
            round += 1;
            let codes = conn.subscribe((retained.as_str(), options)).await.unwrap();
            assert_eq!(codes, vec![ReasonCode::GRANTED_QOS_1]);
            publisher
                .publish(&marker, format!("marker {round}"))
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap();
            let mut got = Vec::new();
            loop {
                let m = next_message(&mut messages).await;
                if m.topic.as_str() == marker {
                    break got;
                }
                got.push((text(&m).to_owned(), m.retain));
            }
        };
        let base = SubscribeOptions::new().qos(QoS::AtLeastOnce);
        let retained_copy = vec![("retained".to_owned(), true)];
        assert_eq!(
            check(base.retain_handling(RetainHandling::DoNotSend)).await,
            vec![],
            "DoNotSend on a new subscription"
        );
        conn.unsubscribe(&retained).await.unwrap();
        assert_eq!(
            check(base.retain_handling(RetainHandling::SendIfNew)).await,
            retained_copy,
            "SendIfNew on a new subscription"
        );
        assert_eq!(
            check(base.retain_handling(RetainHandling::SendIfNew)).await,
            vec![],
            "SendIfNew on an existing subscription"
        );
        // Control: the default sends it on every subscribe, even an existing one.
        assert_eq!(
            check(base.retain_handling(RetainHandling::SendOnSubscribe)).await,
            retained_copy,
            "SendOnSubscribe on an existing subscription"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_subscribe_options_on_v311_are_invalid_argument() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("v5_opts_on_v311");
        let id = format!("ops-v5opts-{}", std::process::id());
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let expected =
            "Invalid argument: no_local, retain_as_published and retain_handling need MQTT 5";
        let v5_only = [
            SubscribeOptions::new().no_local(true),
            SubscribeOptions::new().retain_as_published(true),
            SubscribeOptions::new().retain_handling(RetainHandling::DoNotSend),
            SubscribeOptions::new().retain_handling(RetainHandling::SendIfNew),
        ];
        for options in v5_only {
            let err = conn
                .subscribe((format!("{t}/a"), options))
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::InvalidArgument(_)),
                "{options:?}: {err:?}"
            );
            assert_eq!(err.to_string(), expected);
            let err = conn
                .subscribe(format!("{t}/a"))
                .options(options)
                .await
                .unwrap_err();
            assert_eq!(err.to_string(), expected);
        }
        // Only the QoS of SubscribeOptions is fine on 3.1.1.
        assert_eq!(
            conn.subscribe((
                format!("{t}/a"),
                SubscribeOptions::new().qos(QoS::AtLeastOnce)
            ))
            .await
            .unwrap(),
            codes(&[1])
        );
        assert_eq!(
            log_count(&broker, &format!("Received SUBSCRIBE from {id}")),
            1,
            "{}",
            broker.log()
        );
    })
    .await
}

/// MQTT 5 §3.8.3.1 makes No Local on a shared subscription a protocol error, for which a
/// broker closes the connection: the call refuses it and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_on_a_shared_subscription_is_refused_before_sending() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("no_local_shared");
        let id = format!("ops-nolocal-share-{}", std::process::id());
        let conn = builder(broker.port(), ProtocolVersion::V5)
            .identifier(&id)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let shared = format!("$share/g/{t}/a");
        let err = conn
            .subscribe((shared.clone(), SubscribeOptions::new().no_local(true)))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains("no_local"), "{err}");
        // One filter of several refuses the whole call.
        let err = conn
            .subscribe(vec![
                (format!("{t}/b"), SubscribeOptions::new()),
                (shared.clone(), SubscribeOptions::new().no_local(true)),
            ])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        // The connection is intact and the same shared filter without No Local works: the
        // broker saw this one SUBSCRIBE only.
        assert_eq!(conn.subscribe(shared).await.unwrap(), codes(&[0]));
        assert_eq!(
            log_count(&broker, &format!("Received SUBSCRIBE from {id}")),
            1,
            "{}",
            broker.log()
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Refused subscriptions (dynamic-security plugin)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_are_returned_codes_on_v311() {
    with_timeout(T, async {
        let t = unique_topic("refused_v311");
        let refused = format!("{t}/refused/#");
        let broker = Broker::builder().dynsec(&[&refused]).start();
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        // A single refused filter: 0x80 as a returned code, not an error.
        let got = conn
            .subscribe(refused.as_str())
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert_eq!(got, vec![ReasonCode::UNSPECIFIED_ERROR]);
        assert!(got[0].is_error());
        assert_eq!(got[0].to_string(), "Unspecified error");
        // In a list, the refused one is 0x80 and the others are granted.
        let got = conn
            .subscribe(vec![
                (format!("{t}/ok/1"), QoS::AtLeastOnce),
                (refused.clone(), QoS::AtLeastOnce),
                (format!("{t}/ok/2"), QoS::ExactlyOnce),
            ])
            .await
            .unwrap();
        assert_eq!(got, codes(&[1, 0x80, 2]));
        // The connection is fine afterwards and the granted ones work.
        let mut messages = conn.messages();
        conn.publish(format!("{t}/refused/x"), "not delivered")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.publish(format!("{t}/ok/2"), "delivered")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut messages).await;
        assert_eq!(text(&m), "delivered");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_are_returned_codes_on_v5() {
    with_timeout(T, async {
        let t = unique_topic("refused_v5");
        let refused = format!("{t}/refused/#");
        let broker = Broker::builder().dynsec(&[&refused]).start();
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let got = conn.subscribe(refused.as_str()).await.unwrap();
        assert_eq!(got, vec![ReasonCode::NOT_AUTHORIZED]);
        assert_eq!(got[0].to_string(), "Not authorized");
        let got = conn
            .subscribe(vec![
                (format!("{t}/ok/1"), QoS::AtLeastOnce),
                (refused.clone(), QoS::AtLeastOnce),
                (format!("{t}/ok/2"), QoS::ExactlyOnce),
            ])
            .await
            .unwrap();
        assert_eq!(got, codes(&[1, 0x87, 2]));
        conn.publish(format!("{t}/x"), "still connected")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// unsubscribe

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_single_and_list_stop_deliveries() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("unsubscribe");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let mut messages = conn.messages();
        let publisher = connect(broker.port(), ProtocolVersion::V311).await;
        let names = ["a", "b", "c", "keep"];
        conn.subscribe(names.map(|n| format!("{t}/{n}")))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        // A topic that stays subscribed: a marker published on it after a message that must
        // not arrive is the next message (one publisher's messages reach one subscriber in
        // order), so that message never came.
        let marker = format!("{t}/marker");
        conn.subscribe(&marker).qos(QoS::AtLeastOnce).await.unwrap();
        // `gone` on `topic` must not arrive: the marker published after it comes first.
        let assert_gone = async |topic: String, messages: &mut Messages, label: &str| {
            for (topic, payload) in [(topic.as_str(), "gone"), (marker.as_str(), label)] {
                publisher
                    .publish(topic, payload)
                    .qos(QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
            let next = next_message(messages).await;
            assert_eq!(
                (next.topic.as_str(), text(&next)),
                (marker.as_str(), label),
                "the next message after the unsubscribe ({label})"
            );
        };
        let publish_all = async |round: &str| {
            for n in names {
                publisher
                    .publish(format!("{t}/{n}"), format!("{round} {n}"))
                    .qos(QoS::AtLeastOnce)
                    .await
                    .unwrap();
            }
        };
        publish_all("before").await;
        for n in names {
            assert_eq!(
                text(&next_message(&mut messages).await),
                format!("before {n}")
            );
        }

        conn.unsubscribe(format!("{t}/a")).await.unwrap();
        conn.unsubscribe(vec![format!("{t}/b"), format!("{t}/c")])
            .await
            .unwrap();
        publish_all("after").await;
        // Published in order a, b, c, keep: only `keep` arrives.
        assert_eq!(text(&next_message(&mut messages).await), "after keep");

        // Unsubscribing a filter that is not subscribed is fine; arrays and v5 too.
        conn.unsubscribe([format!("{t}/never"), format!("{t}/keep")])
            .await
            .unwrap();
        assert_gone(format!("{t}/keep"), &mut messages, "marker").await;

        let v5 = connect(broker.port(), ProtocolVersion::V5).await;
        let mut v5_messages = v5.messages();
        v5.subscribe([format!("{t}/v5"), marker.clone()])
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        v5.unsubscribe(format!("{t}/v5"))
            .properties(Properties::new().user_property("k", "v"))
            .await
            .unwrap();
        assert_gone(format!("{t}/v5"), &mut v5_messages, "v5 marker").await;
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Concurrency bound and the pending-calls warning

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_outgoing_calls_lets_one_call_reach_the_engine_at_a_time() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("max_concurrent");
        let logger = capture_logger("max_concurrent");
        let limited = builder(proxy.port(), ProtocolVersion::V311)
            .identifier("limited")
            .max_concurrent_outgoing_calls(1)
            .pending_calls_threshold(1)
            .logger(&logger)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let control_logger = capture_logger("max_concurrent_control");
        let control = builder(proxy.port(), ProtocolVersion::V311)
            .identifier("control")
            .pending_calls_threshold(1)
            .logger(&control_logger)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let limited_conn = proxy.recorded()[0].conn;

        broker.pause();
        let spawn_three = |conn: &Connection, tag: &str| {
            (0..3)
                .map(|i| {
                    let conn = conn.clone();
                    let topic = format!("{t}/{tag}/{i}");
                    tokio::spawn(
                        async move { conn.publish(topic, "x").qos(QoS::AtLeastOnce).await },
                    )
                })
                .collect::<Vec<_>>()
        };
        let limited_calls = spawn_three(&limited, "limited");
        let control_calls = spawn_three(&control, "control");
        // The control client sends all three at once; the limited one only one.
        let publishes_of = |conn_no: usize| {
            proxy
                .packets(Direction::ClientToBroker, PacketType::Publish)
                .into_iter()
                .filter(|p| p.conn == conn_no)
                .count()
        };
        proxy
            .wait_for(Direction::ClientToBroker, PacketType::Publish, 4, RECV)
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let limited_seen = publishes_of(limited_conn);
        let control_seen =
            proxy.count(Direction::ClientToBroker, PacketType::Publish) - limited_seen;
        broker.resume();
        assert_eq!(
            (limited_seen, control_seen),
            (1, 3),
            "PUBLISHes sent while the broker was paused:\n{}",
            proxy.trace()
        );

        for call in limited_calls.into_iter().chain(control_calls) {
            call.await.unwrap().unwrap();
        }
        // After resuming, the limited client sent each PUBLISH only after the previous PUBACK.
        let trace: Vec<PacketType> = proxy
            .recorded()
            .into_iter()
            .filter(|p| p.conn == limited_conn)
            .filter(|p| matches!(p.kind, PacketType::Publish | PacketType::Puback))
            .map(|p| p.kind)
            .collect();
        assert_eq!(
            trace,
            [PacketType::Publish, PacketType::Puback].repeat(3),
            "{}",
            proxy.trace()
        );
        // With threshold 1 the warning fires only where two calls were pending at once.
        let warnings = |target: &str| {
            logged(target)
                .into_iter()
                .filter(|(_, m)| m.contains("pending publish calls"))
                .count()
        };
        assert_eq!(warnings(&logger), 0, "{:?}", logged(&logger));
        assert_eq!(
            warnings(&control_logger),
            2,
            "{:?}",
            logged(&control_logger)
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_timeout_covers_the_wait_for_a_concurrency_slot() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("slot_timeout");
        let id = format!("ops-slot-timeout-{}", std::process::id());
        let conn = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .max_concurrent_outgoing_calls(1)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        broker.pause();
        let first = {
            let conn = conn.clone();
            let topic = format!("{t}/first");
            tokio::spawn(async move { conn.publish(topic, "1").qos(QoS::AtLeastOnce).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let second = conn
            .publish(format!("{t}/second"), "2")
            .qos(QoS::AtLeastOnce)
            .timeout(Duration::from_millis(300))
            .await;
        let elapsed = started.elapsed();
        broker.resume();
        assert!(matches!(second, Err(Error::Timeout)), "{second:?}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500),
            "{elapsed:?}"
        );
        first.await.unwrap().unwrap();
        // The timed-out call never reached the engine, so never the broker.
        conn.publish(format!("{t}/third"), "3")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let log = broker.log();
        // First sends ("d0"): a resend with DUP is not another publish.
        assert_eq!(
            log_count(&broker, &format!("Received PUBLISH from {id} (d0")),
            2,
            "{log}"
        );
        assert!(!log.contains(&format!("{t}/second")), "{log}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_calls_threshold_warns_under_the_client_logger() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("pending_calls");
        let logger = capture_logger("pending_calls");
        let client = builder(broker.port(), ProtocolVersion::V311)
            .pending_calls_threshold(2)
            .logger(&logger)
            .build()
            .unwrap();
        assert_eq!(client.pending_calls_threshold(), 2);
        let conn = client.connect().await.unwrap();
        assert_eq!(conn.pending_calls_threshold(), 2);

        broker.pause();
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let conn = conn.clone();
                let topic = format!("{t}/{i}");
                tokio::spawn(async move { conn.publish(topic, i).qos(QoS::AtLeastOnce).await })
            })
            .collect();
        let expected = |n: usize| format!("There are {n} pending publish calls.");
        let all_logged = wait_until_async(RECV, || {
            logged(&logger).iter().any(|(_, m)| *m == expected(5))
        })
        .await;
        broker.resume();
        assert!(all_logged, "{:?}", logged(&logger));
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let mut warnings: Vec<_> = logged(&logger)
            .into_iter()
            .filter(|(_, m)| m.contains("pending publish calls"))
            .collect();
        warnings.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(
            warnings,
            vec![
                (log::Level::Warn, expected(3)),
                (log::Level::Warn, expected(4)),
                (log::Level::Warn, expected(5)),
            ]
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Negative acknowledgements

/// Dynamic security that lets anonymous clients do everything except publish below `denied`.
fn dynsec_denying_publish(denied: &str) -> String {
    format!(
        r#"{{
  "defaultACLAccess": {{"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true}},
  "clients": [],
  "groups": [{{"groupname": "anonymous", "roles": [{{"rolename": "nopublish"}}], "clients": []}}],
  "roles": [{{"rolename": "nopublish", "acls": [{{"acltype": "publishClientSend", "topic": "{denied}", "priority": 10, "allow": false}}]}}],
  "anonymousGroup": "anonymous"
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_negative_puback_is_a_code_error() {
    with_timeout(T, async {
        let t = unique_topic("negative_puback");
        let denied = format!("{t}/denied/#");
        let broker = Broker::builder()
            .dynsec_json(&dynsec_denying_publish(&denied))
            .start();
        let conn = connect(broker.port(), ProtocolVersion::V5).await;
        let err = conn
            .publish(format!("{t}/denied/x"), "no")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Code(ReasonCode::NOT_AUTHORIZED)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "[code:135] Not authorized");
        assert_eq!(err.rc(), Some(ReasonCode::NOT_AUTHORIZED));
        // QoS 2: the PUBREC carries it.
        let err = conn
            .publish(format!("{t}/denied/y"), "no")
            .qos(QoS::ExactlyOnce)
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "[code:135] Not authorized");
        let log = broker.log();
        assert!(log.contains("Denied PUBLISH from"), "{log}");
        assert!(
            log.contains("Sending PUBACK to") && log.contains("(m1, rc135)"),
            "{log}"
        );
        assert!(
            log.contains("Sending PUBREC to") && log.contains("(m2, rc135)"),
            "{log}"
        );
        // The connection stays up; allowed topics work.
        conn.publish(format!("{t}/allowed"), "yes")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        assert!(conn.is_connected());

        // MQTT 3.1.1 has no negative PUBACK: the broker drops the message and acknowledges it.
        // A subscriber to everything under the test's topic gets the allowed marker the
        // publisher sends next, and nothing before it.
        let watcher = connect(broker.port(), ProtocolVersion::V311).await;
        let mut seen = watcher.messages();
        watcher
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let v311 = connect(broker.port(), ProtocolVersion::V311).await;
        v311.publish(format!("{t}/denied/z"), "dropped")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        v311.publish(format!("{t}/marker"), "marker")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let first = next_message(&mut seen).await;
        assert_eq!(
            (first.topic.as_str(), text(&first)),
            (format!("{t}/marker").as_str(), "marker"),
            "the denied message was delivered"
        );
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Calls on a connection that has ended

/// Every call on `conn` fails at once with `NotConnected`.
async fn assert_not_connected(conn: &Connection, t: &str) {
    let started = Instant::now();
    let publish = conn
        .publish(format!("{t}/late"), "x")
        .qos(QoS::AtLeastOnce)
        .await;
    let subscribe = conn.subscribe(format!("{t}/late")).await;
    let unsubscribe = conn.unsubscribe(format!("{t}/late")).await;
    let disconnect = conn.clone().disconnect().await;
    let elapsed = started.elapsed();
    assert!(matches!(publish, Err(Error::NotConnected)), "{publish:?}");
    assert!(
        matches!(subscribe, Err(Error::NotConnected)),
        "{subscribe:?}"
    );
    assert!(
        matches!(unsubscribe, Err(Error::NotConnected)),
        "{unsubscribe:?}"
    );
    assert!(
        matches!(disconnect, Err(Error::NotConnected)),
        "{disconnect:?}"
    );
    assert_eq!(publish.unwrap_err().to_string(), "Not connected");
    assert!(
        elapsed < Duration::from_millis(500),
        "not at once: {elapsed:?}"
    );
    assert!(!conn.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_disconnect_on_a_clone_fail_with_not_connected() {
    with_timeout(T, async {
        let broker = Broker::start();
        let t = unique_topic("after_disconnect");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        let clone = conn.clone();
        conn.publish(format!("{t}/a"), "x")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        clone.disconnect().await.unwrap();
        assert_not_connected(&conn, &t).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_broker_killed_fail_with_not_connected() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("after_kill");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        conn.publish(format!("{t}/a"), "x")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        broker.kill();
        assert!(
            wait_until_async(RECV, || !conn.is_connected()).await,
            "the loss was not noticed"
        );
        assert_not_connected(&conn, &t).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_call_fails_when_the_broker_is_killed() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let t = unique_topic("pending_at_kill");
        let conn = connect(broker.port(), ProtocolVersion::V311).await;
        broker.pause();
        let call = {
            let conn = conn.clone();
            let topic = format!("{t}/a");
            tokio::spawn(async move { conn.publish(topic, "x").qos(QoS::AtLeastOnce).await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        broker.kill();
        let result = call.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "not failed as soon as the loss was known: {:?}",
            started.elapsed()
        );
        match &result {
            Err(e @ Error::ConnectionLost { .. }) => {
                assert!(e.is_connection_lost());
                assert!(e.source().is_none());
            }
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    })
    .await
}

/// A publish future dropped after its first poll: once the engine has the message (at
/// once, as here for the first), the drop stops only the wait and the message is
/// delivered; one still waiting for a `max_concurrent_outgoing_calls` slot is never sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_publish_is_delivered_once_the_engine_has_it() {
    use futures::FutureExt;
    with_timeout(T, async {
        let broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("dropped_publish");
        let watcher = connect(broker.port(), ProtocolVersion::V311).await;
        watcher
            .subscribe(format!("{t}/#"))
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let mut seen = watcher.messages();
        let (_client, conn) = crate::support::mqtt::connect(
            builder(proxy.port(), ProtocolVersion::V311).max_concurrent_outgoing_calls(1),
        )
        .await;
        // No PUBACK reaches the client: the first call keeps the only slot.
        proxy.blackhole_dir(Direction::BrokerToClient, true);
        let mut first = conn
            .publish(format!("{t}/first"), "handed over")
            .qos(QoS::AtLeastOnce)
            .into_future();
        assert!(
            futures::poll!(&mut first).is_pending(),
            "the first publish waits for its PUBACK"
        );
        let second = conn
            .publish(format!("{t}/second"), "waiting for a slot")
            .qos(QoS::AtLeastOnce)
            .into_future()
            .now_or_never();
        assert!(second.is_none(), "the second publish waits for the slot");
        drop(first);
        let m = next_message(&mut seen).await;
        assert_eq!(m.topic.as_str(), format!("{t}/first"));
        proxy.blackhole_dir(Direction::BrokerToClient, false);
        conn.publish(format!("{t}/marker"), "marker")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let m = next_message(&mut seen).await;
        assert_eq!(
            m.topic.as_str(),
            format!("{t}/marker"),
            "the dropped call that never had a slot was sent"
        );
    })
    .await
}

/// Calls that Paho still holds in its command queue when the connection is closed (the
/// socket is full: the broker reads nothing) fail at once with the end, not at their
/// timeout: Paho keeps a disconnected client's queued commands, and the engine is not
/// destroyed while calls hold the connection, so only the end can answer them. The
/// engine is retired: none of those commands goes out on the client's next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_in_the_engine_fail_at_once_when_the_connection_is_closed() {
    with_timeout(T, async {
        let mut broker = Broker::start();
        let proxy = FaultProxy::start(broker.port()).await;
        let t = unique_topic("queued_at_close");
        let client = builder(proxy.port(), ProtocolVersion::V5)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        broker.pause();
        // 400 x 64 KiB: far more than the sockets' buffers (the proxy's too) hold.
        let calls: Vec<_> = (0..400)
            .map(|i| {
                let publish =
                    conn.publish(format!("{t}/{i}"), vec![b'x'; 64 * 1024])
                        .qos(if i % 2 == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        });
                tokio::spawn(publish.into_future())
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let closing = tokio::spawn({
            let conn = conn.clone();
            async move { conn.disconnect().await }
        });
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for call in calls {
            let outcome = match call.await.unwrap() {
                Ok(()) => "Ok".to_owned(),
                Err(e) => format!("{e:?}"),
            };
            *outcomes.entry(outcome).or_default() += 1;
        }
        let took = started.elapsed();
        broker.resume();
        let _ = closing.await;
        assert!(
            took < Duration::from_secs(3),
            "the calls resolved {took:?} after the close (timeout 20 s): {outcomes:?}"
        );
        // The 200 QoS 1 calls wait for a PUBACK that never comes; QoS 0 calls complete
        // once written, unless they were still in the engine.
        let failed = outcomes.get("NotConnected").copied().unwrap_or(0);
        assert!(
            failed >= 200,
            "every QoS 1 call fails with the close: {outcomes:?}"
        );
        assert!(
            outcomes.keys().all(|o| o == "Ok" || o == "NotConnected"),
            "{outcomes:?}"
        );

        let next = client.connect().await.unwrap();
        let marker = format!("{t}-marker");
        next.publish(marker.as_str(), "m")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        let later: Vec<String> = proxy
            .packets(Direction::ClientToBroker, PacketType::Publish)
            .into_iter()
            .filter(|p| p.conn > 1)
            .filter_map(|p| p.topic())
            .collect();
        assert_eq!(later, [marker], "PUBLISHes on the next connection");
        next.disconnect().await.unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_refused_unsubscribe_is_a_code_error() {
    with_timeout(T, async {
        let t = unique_topic("refused_unsubscribe");
        let json = format!(
            r#"{{
  "defaultACLAccess": {{"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true}},
  "clients": [],
  "groups": [{{"groupname": "anonymous", "roles": [{{"rolename": "nounsub"}}], "clients": []}}],
  "roles": [{{"rolename": "nounsub", "acls": [{{"acltype": "unsubscribePattern", "topic": "{t}/kept/#", "priority": 10, "allow": false}}]}}],
  "anonymousGroup": "anonymous"
}}
"#
        );
        let broker = Broker::builder().dynsec_json(&json).start();
        let proxy = FaultProxy::start(broker.port()).await;
        let conn = connect(proxy.port(), ProtocolVersion::V5).await;
        conn.subscribe(format!("{t}/kept/x")).await.unwrap();
        let result = conn.unsubscribe(format!("{t}/kept/x")).await;
        // The broker did refuse it: UNSUBACK with 0x87.
        let unsubacks = proxy.packets(Direction::BrokerToClient, PacketType::Unsuback);
        assert_eq!(unsubacks.len(), 1, "{}", proxy.trace());
        assert_eq!(unsubacks[0].reason_codes(), vec![0x87]);
        // Error::Code's contract: "a negative ... UNSUBACK" is that error.
        match result {
            Err(Error::Code(rc)) => {
                assert_eq!(rc, ReasonCode::NOT_AUTHORIZED);
                assert_eq!(Error::Code(rc).to_string(), "[code:135] Not authorized");
            }
            other => panic!("a refused UNSUBSCRIBE reported as {other:?}"),
        }
    })
    .await
}

/// A call pending when the broker sends DISCONNECT fails with the broker's reason code
/// (here 0x95). Paho fails the call and reports the end from one thread, the task sees them
/// in either order: 20 rounds show that the code is never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_call_fails_with_the_broker_disconnect_reason_code() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let mut outcomes = Vec::new();
        for _ in 0..20 {
            let client = aiomqtt::Client::builder("127.0.0.1")
                .port(fb.port())
                .protocol(ProtocolVersion::V5)
                .build()
                .unwrap();
            let (conn, mut fc) = fb.connect(&client).await;
            let (result, _) = tokio::join!(
                conn.publish("t/x", vec![b'x'; 500]).qos(QoS::AtLeastOnce),
                async {
                    fc.expect(PacketType::Publish, Duration::from_secs(5)).await;
                    fc.send(&packets::disconnect_v5(0x95, &[])).await.unwrap();
                }
            );
            outcomes.push(result.map_err(|e| (e.rc(), e.to_string())));
        }
        let wrong: Vec<_> = outcomes
            .iter()
            .filter(|o| !matches!(o, Err((Some(ReasonCode::PACKET_TOO_LARGE), _))))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} of 20 pending publishes did not carry the broker's 0x95: {wrong:?}",
            wrong.len()
        );
    })
    .await
}

/// Runs in a child process: Paho's keep-alive check period is the process's, and another
/// test's client with a short keepalive would make it short enough for this one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_keepalive_pings_in_time_beside_a_client_with_a_long_keepalive() {
    if ran_in_child(
        "operations::short_keepalive_pings_in_time_beside_a_client_with_a_long_keepalive",
        Duration::from_secs(60),
    ) {
        return;
    }
    with_timeout(T, async {
        let broker = Broker::start();
        let id = format!("ops-short-keepalive-{}", std::process::id());
        let short = builder(broker.port(), ProtocolVersion::V311)
            .identifier(&id)
            .keepalive(Duration::from_secs(1))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        // Another client of the same process, with the default 60 s keepalive.
        let _long = connect(broker.port(), ProtocolVersion::V311).await;
        // MQTT 3.1.1 §3.1.2.10: a control packet within each keepalive interval; the broker
        // may disconnect after 1.5 times the interval. Paho pings a second or less after
        // each keepalive (it checks at least once a second): three pings within 8 s, where
        // checks every 5 s (the long keepalive's period) give two at most, and Mosquitto
        // closes the connection first.
        let pinged = wait_until_async(Duration::from_secs(8), || {
            broker
                .log()
                .matches(&format!("Received PINGREQ from {id}"))
                .count()
                >= 3
        })
        .await;
        assert!(
            pinged,
            "not three PINGREQs within 8 s from a client with a 1 s keepalive:\n{}",
            broker.log()
        );
        assert!(short.is_connected());
    })
    .await
}
