//! Errors that name their cause: each situation a user meets (a broker that speaks only
//! MQTT 3.1.1, an identifier MQTT cannot carry, a URL where a host name belongs, …) and
//! the error it must produce, fast. The conformance suite (`conformance.rs`) shows the
//! same situations on real foreign brokers; here the fake broker and Mosquitto make each
//! one happen on purpose.

use std::time::{Duration, Instant};

use aiomqtt::{Client, Error, Properties, ProtocolVersion, QoS, TlsParams, Transport, Will};

use crate::support::*;

/// A refusal the broker states must come back well within the client's timeout.
const FAST: Duration = Duration::from_secs(2);
const BODY: Duration = Duration::from_secs(20);
/// One expected packet or reply.
const EVENT: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(8);

/// An MQTT 3.1.1 client of the fake broker with every other option at its default.
fn v311_client(fb: &FakeBroker) -> Client {
    Client::builder("127.0.0.1")
        .port(fb.port())
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

fn v5_client(fb: &FakeBroker) -> Client {
    Client::builder("127.0.0.1")
        .port(fb.port())
        .protocol(ProtocolVersion::V5)
        .identifier("errors-v5")
        .timeout(TIMEOUT)
        .build()
        .unwrap()
}

/// A broker that answers an MQTT 5 CONNECT with an MQTT 3.1.1 CONNACK, return code 1
/// (NATS does): the error says MQTT 5 is not accepted and keeps the refusal as `source()`.
#[tokio::test(flavor = "multi_thread")]
async fn v3_connack_to_a_v5_connect_is_unsupported_protocol() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = v5_client(&fb);
        let started = Instant::now();
        let (r, _fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            // CONNACK, remaining length 2: no session, return code 1.
            fc.send(&[0x20, 0x02, 0x00, 0x01]).await.unwrap();
            fc.close_fin().await;
            fc
        });
        let err = r.expect_err("refused");
        assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
        assert!(
            matches!(
                &err,
                Error::UnsupportedProtocol {
                    protocol: ProtocolVersion::V5,
                    ..
                }
            ),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("does not accept MQTT 5"), "{text}");
        assert!(text.contains("ProtocolVersion::V311"), "{text}");
        let source = std::error::Error::source(&err).expect("the refusal as source()");
        assert!(source.to_string().contains("protocol version"), "{source}");
    })
    .await;
}

/// The same return code to an MQTT 3.1.1 CONNECT is the broker's refusal as it stands:
/// `Error::Connect` with reason code 0x84 (unsupported protocol version).
#[tokio::test(flavor = "multi_thread")]
async fn unacceptable_protocol_version_to_a_v311_connect_is_a_refused_connack() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = v311_client(&fb);
        let (r, _fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            fc.send(&[0x20, 0x02, 0x00, 0x01]).await.unwrap();
            fc
        });
        let err = r.expect_err("refused");
        assert!(
            matches!(err, Error::Connect(rc) if rc.value() == 0x84),
            "{err:?}"
        );
        assert!(err.is_connect());
    })
    .await;
}

/// A broker that closes on an MQTT 5 CONNECT but answers a 3.1.1 one (RabbitMQ, rumqttd's
/// v4 listener): found by the failure's diagnosis, one bare 3.1.1 CONNECT with an empty
/// identifier (so it can take over no session), without the client's user name, password
/// or Will, and a DISCONNECT after its CONNACK.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_closing_on_v5_but_answering_v311_is_unsupported_protocol() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .identifier("errors-v5")
            .username("probe-user")
            .password("probe-secret")
            .will(Will::new("errors/will", "gone"))
            .timeout(TIMEOUT)
            .build()
            .unwrap();
        let broker = async {
            let first = fb.accept().await;
            assert!(first.v5());
            assert!(first.connect.will, "the client's own CONNECT has its Will");
            first.close_fin().await;
            let mut probe = fb.accept().await;
            assert!(!probe.v5(), "the probe speaks 3.1.1");
            probe.send_connack(false, 0).await.unwrap();
            let disconnect = probe.try_expect(PacketType::Disconnect, EVENT).await;
            (first, probe, disconnect)
        };
        let (r, (_first, probe, disconnect)) = tokio::join!(client.connect(), broker);
        let err = r.expect_err("refused");
        assert!(
            matches!(
                &err,
                Error::UnsupportedProtocol {
                    protocol: ProtocolVersion::V5,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("answers an MQTT 3.1.1 one"),
            "{err}"
        );
        assert_eq!(
            probe.connect.client_id, "",
            "the probe must not reuse the client's identifier"
        );
        let connect = probe.connect.packet.as_ref().expect("the probe's CONNECT");
        // Clean session only: no user name (0x80), password (0x40) or Will (0x04).
        assert_eq!(connect.connect_flags(), Some(0x02), "{connect}");
        assert_eq!(
            connect.remaining_len, 12,
            "a CONNECT of 14 bytes: {connect}"
        );
        assert_eq!(probe.connect.keepalive, 10);
        assert!(
            disconnect.is_some(),
            "no DISCONNECT after the probe's CONNACK"
        );
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    })
    .await;
}

/// A server that closes on CONNECT and then accepts the diagnosis's probes but never
/// answers them: each probe gives up after 500 ms, so `connect()` ends well within its
/// timeout with `ConnectionClosed`; with a timeout shorter than the probes, at the timeout,
/// with the same error (a probe cut short finds nothing; the close was seen). Never a hang.
#[tokio::test(flavor = "multi_thread")]
async fn silent_probes_keep_the_diagnosis_within_the_timeout() {
    with_timeout(BODY, async {
        for (timeout, bound) in [
            (Duration::from_secs(6), Duration::from_millis(2500)),
            (Duration::from_millis(600), Duration::from_millis(900)),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                // The client's CONNECT: read, then the connection closed.
                let (mut first, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let _ = first.read(&mut buf).await;
                drop(first);
                // Every probe held open and never answered.
                let mut held = Vec::new();
                while let Ok((probe, _)) = listener.accept().await {
                    held.push(probe);
                }
            });
            let client = Client::builder("127.0.0.1")
                .port(port)
                .protocol(ProtocolVersion::V5)
                .identifier("errors-silent-probes")
                .timeout(timeout)
                .build()
                .unwrap();
            let started = Instant::now();
            let err = client.connect().await.expect_err("no CONNACK");
            let took = started.elapsed();
            server.abort();
            assert!(took < bound, "timeout {timeout:?}: took {took:?} ({err:?})");
            assert!(
                matches!(err, Error::ConnectionClosed { .. }),
                "timeout {timeout:?}: {err:?}"
            );
        }
    })
    .await;
}

/// The same broker behind TLS (a TLS front relaying to the fake broker): the handshake
/// works, so the diagnosis asks over TLS and names the MQTT version, not TLS. A 3.1.1
/// client closed on its CONNECT gets `ConnectionClosed`.
///
/// Regression: with `tls_params` the diagnosis stopped at its TLS probe, whose handshake
/// succeeded, and reported `Error::Tls { kind: Handshake, .. }`.
#[tokio::test(flavor = "multi_thread")]
async fn closed_on_connect_over_working_tls_is_told_apart_from_tls() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let certs = Certs::shared();
        let front = TlsFront::tls12(certs, "ECDHE-ECDSA-AES128-GCM-SHA256", fb.port());
        for protocol in [ProtocolVersion::V5, ProtocolVersion::V311] {
            let client = Client::builder("localhost")
                .port(front.port)
                .protocol(protocol)
                .identifier("errors-tls")
                .tls_params(TlsParams::new().ca_certs(&certs.ca))
                .timeout(TIMEOUT)
                .build()
                .unwrap();
            let broker = async {
                let first = fb.accept().await;
                first.close_fin().await;
                if protocol == ProtocolVersion::V5 {
                    let probe = fb.accept().await;
                    assert!(!probe.v5(), "the probe speaks 3.1.1");
                    probe.send_connack(false, 0).await.unwrap();
                    Some(probe)
                } else {
                    None
                }
            };
            let (r, _held) = tokio::join!(client.connect(), broker);
            let err = r.expect_err("closed on CONNECT");
            match protocol {
                ProtocolVersion::V5 => assert!(
                    matches!(
                        &err,
                        Error::UnsupportedProtocol {
                            protocol: ProtocolVersion::V5,
                            ..
                        }
                    ),
                    "{err:?}"
                ),
                _ => assert!(matches!(&err, Error::ConnectionClosed { .. }), "{err:?}"),
            }
            assert!(!err.is_tls(), "{err:?}");
        }
    })
    .await;
}

/// Identifiers, user names and passwords are MQTT strings: at most 65,535 bytes.
#[test]
fn strings_longer_than_mqtt_allows_are_refused_by_build() {
    let long = "x".repeat(70_000);
    let builders = [
        ("identifier", Client::builder("localhost").identifier(&long)),
        ("username", Client::builder("localhost").username(&long)),
        (
            "password",
            Client::builder("localhost").username("u").password(&long),
        ),
    ];
    for (name, b) in builders {
        let err = b.build().expect_err(name);
        assert!(matches!(err, Error::InvalidArgument(_)), "{name}: {err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("Invalid argument: {name} is 70000 bytes long")),
            "{text}"
        );
        assert!(text.contains("65,535"), "{text}");
    }
    // The limit itself is fine.
    Client::builder("localhost")
        .identifier("x".repeat(65_535))
        .build()
        .unwrap();
}

/// A persistent session needs an identifier on 3.1.1 (the broker would refuse with
/// CONNACK 2), as paho-python's constructor insists for aiomqtt.
#[test]
fn a_persistent_session_without_an_identifier_is_refused_by_build() {
    for b in [
        Client::builder("localhost").clean_session(false),
        Client::builder("localhost")
            .identifier("")
            .clean_session(false),
    ] {
        let err = b.build().expect_err("refused");
        assert!(
            err.to_string()
                .contains("clean_session(false) needs an identifier"),
            "{err}"
        );
    }
    Client::builder("localhost")
        .identifier("kept")
        .clean_session(false)
        .build()
        .unwrap();
    // MQTT 3.1 gets a generated identifier when none is set.
    Client::builder("localhost")
        .protocol(ProtocolVersion::V31)
        .clean_session(false)
        .build()
        .unwrap();
}

/// A URL or `host:port` where the host name belongs gets a hint, not a DNS error.
#[test]
fn a_url_or_host_port_as_the_hostname_gets_a_hint() {
    let err = Client::builder("tcp://broker.example:1883")
        .build()
        .expect_err("a URL");
    let text = err.to_string();
    assert!(text.contains("is a URL"), "{text}");
    assert!(text.contains(".transport()"), "{text}");

    let err = Client::builder("broker.example:1883")
        .build()
        .expect_err("host:port");
    let text = err.to_string();
    assert!(
        text.contains(r#"Client::builder("broker.example").port(1883)"#),
        "{text}"
    );

    // IPv6 literals and Unix socket paths are not mistaken for either.
    Client::builder("::1").build().unwrap();
    Client::builder("fe80::1:1883").build().unwrap();
    Client::builder("/run/mqtt:1.sock")
        .transport(Transport::Unix)
        .build()
        .unwrap();
}

/// CONNACK properties of a broker with every MQTT 5 limit: Maximum QoS 1, Retain Available
/// 0, Maximum Packet Size 100, no wildcard, subscription identifier or shared
/// subscriptions.
fn limiting_connack_props() -> Vec<u8> {
    let mut p = vec![0x24, 1, 0x25, 0, 0x27];
    p.extend_from_slice(&100u32.to_be_bytes());
    p.extend_from_slice(&[0x28, 0, 0x29, 0, 0x2A, 0]);
    p
}

/// The limits a v5 broker announces in CONNACK refuse a call before anything is sent,
/// each with its own message, and the connection stays up.
#[tokio::test(flavor = "multi_thread")]
async fn v5_connack_limits_are_enforced_before_sending() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = v5_client(&fb);
        let props = limiting_connack_props();
        let (conn, mut fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            fc.send_connack_props(false, 0, &props).await.unwrap();
            fc
        });
        let conn = conn.expect("connected");

        let refusals = [
            (
                conn.publish("t", "x").qos(QoS::ExactlyOnce).await,
                "Maximum QoS is 1",
            ),
            (
                conn.publish("t", "x").retain(true).await,
                "does not support retained messages",
            ),
            (
                conn.publish("t", vec![0u8; 93]).qos(QoS::AtLeastOnce).await,
                "Maximum Packet Size of 100 bytes",
            ),
        ];
        for (r, text) in refusals {
            let err = r.expect_err(text);
            assert!(matches!(err, Error::BrokerLimit(_)), "{err:?}");
            assert!(err.to_string().contains(text), "{err}");
        }
        for (filter, props, text) in [
            ("a/+", None, "wildcard subscriptions"),
            ("$share/g/a", None, "shared subscriptions"),
            (
                "a",
                Some(Properties::new().subscription_identifier(7)),
                "Subscription Identifiers",
            ),
        ] {
            let mut call = conn.subscribe(filter);
            if let Some(p) = props {
                call = call.properties(p);
            }
            let err = call.await.expect_err(text);
            assert!(matches!(err, Error::BrokerLimit(_)), "{err:?}");
            assert!(err.to_string().contains(text), "{err}");
        }
        assert!(
            fc.recv_packet(Duration::from_millis(200)).await.is_none(),
            "nothing may be sent: {}",
            fc.trace()
        );

        // Within the limits: sent, acknowledged, and the connection is still up.
        let (r, _) = tokio::join!(
            conn.publish("t", vec![0u8; 92]).qos(QoS::AtLeastOnce),
            async {
                let p = fc.expect(PacketType::Publish, EVENT).await;
                let id = p.packet_id().unwrap();
                fc.send(&packets::puback(id, Some((0, &[])))).await.unwrap();
            }
        );
        r.expect("a publish within the limits");
        assert!(conn.is_connected());
    })
    .await;
}

/// The first topic filter of a SUBSCRIBE or UNSUBSCRIBE on MQTT 5 (after the packet id and
/// the properties).
fn first_filter(p: &Packet) -> Option<String> {
    let (len, n) = crate::support::fault_proxy::decode_varint(p.body.get(2..)?)?;
    let at = 2 + n + len;
    let l = u16::from_be_bytes([*p.body.get(at)?, *p.body.get(at + 1)?]) as usize;
    Some(String::from_utf8_lossy(p.body.get(at + 2..at + 2 + l)?).into_owned())
}

/// A per-call property MQTT 5 does not allow in the packet, or that the engine cannot
/// honour, is refused before anything reaches the engine (v5_properties.md): a Topic Alias
/// on PUBLISH with `Unsupported` (migrating.md), a Subscription Identifier on PUBLISH, a
/// Message Expiry Interval on SUBSCRIBE and a Content Type on UNSUBSCRIBE with
/// `InvalidArgument` naming the property and the packet. After each refusal a valid call
/// of the same kind is made: the first packet the broker gets after the last one is that
/// call's, so the refused call sent nothing.
#[tokio::test(flavor = "multi_thread")]
async fn v5_per_call_properties_not_allowed_are_refused_before_sending() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = v5_client(&fb);
        let (conn, mut fc) = fb.connect(&client).await;

        #[track_caller]
        fn invalid(r: Result<impl std::fmt::Debug, Error>, property: &str, packet: &str) {
            match r {
                Err(Error::InvalidArgument(msg)) => assert!(
                    msg.contains(&format!(
                        "the {property} property is not allowed in {packet}"
                    )),
                    "{msg}"
                ),
                other => panic!("{property} in {packet}: expected InvalidArgument, got {other:?}"),
            }
        }

        // The first packet the broker gets, answered with `ack(packet id)` if of `kind`.
        async fn first_packet(
            fc: &mut FakeConn,
            kind: PacketType,
            ack: impl FnOnce(u16) -> Vec<u8>,
        ) -> Packet {
            let p = fc.recv_packet(EVENT).await.expect("a packet");
            if p.kind == kind {
                fc.send(&ack(p.packet_id().unwrap())).await.unwrap();
            }
            p
        }

        // PUBLISH: a Topic Alias, then a Subscription Identifier.
        let refused = [
            Properties::new().topic_alias(3),
            Properties::new().subscription_identifier(5),
        ];
        for (i, props) in refused.into_iter().enumerate() {
            let refused = conn
                .publish(format!("p/refused{i}"), "x")
                .qos(QoS::AtLeastOnce)
                .properties(props)
                .await;
            if i == 0 {
                match refused {
                    Err(Error::Unsupported { option, reason }) => {
                        assert_eq!(option, "properties");
                        assert!(reason.contains("topic aliases"), "{reason}");
                    }
                    other => panic!("Topic Alias: expected Unsupported, got {other:?}"),
                }
            } else {
                invalid(refused, "Subscription Identifier", "PUBLISH");
            }
            let ok = format!("p/ok{i}");
            let (r, p) = tokio::join!(
                conn.publish(&ok, "x").qos(QoS::AtLeastOnce),
                first_packet(&mut fc, PacketType::Publish, |id| {
                    packets::puback(id, Some((0, &[])))
                })
            );
            assert_eq!(
                (p.kind, p.topic().as_deref()),
                (PacketType::Publish, Some(ok.as_str())),
                "the first packet after the refusal:\n{}",
                fc.trace()
            );
            r.expect("the valid publish");
        }

        // SUBSCRIBE with a Message Expiry Interval.
        invalid(
            conn.subscribe("s/expiry")
                .properties(Properties::new().message_expiry_interval(60))
                .await,
            "Message Expiry Interval",
            "SUBSCRIBE",
        );
        let (r, p) = tokio::join!(
            conn.subscribe("s/ok"),
            first_packet(&mut fc, PacketType::Subscribe, |id| {
                packets::suback(id, &[0], Some(&[]))
            })
        );
        assert_eq!(
            (p.kind, first_filter(&p).as_deref()),
            (PacketType::Subscribe, Some("s/ok")),
            "the first packet after the refusal:\n{}",
            fc.trace()
        );
        r.expect("the valid subscribe");

        // UNSUBSCRIBE with a Content Type (only User Properties are allowed).
        invalid(
            conn.unsubscribe("s/ok")
                .properties(Properties::new().content_type("text/plain"))
                .await,
            "Content Type",
            "UNSUBSCRIBE",
        );
        let (r, p) = tokio::join!(
            conn.unsubscribe("s/ok"),
            first_packet(&mut fc, PacketType::Unsubscribe, |id| {
                packets::unsuback(id, &[0], Some(&[]))
            })
        );
        assert_eq!(
            (p.kind, first_filter(&p).as_deref()),
            (PacketType::Unsubscribe, Some("s/ok")),
            "the first packet after the refusal:\n{}",
            fc.trace()
        );
        r.expect("the valid unsubscribe");
        assert!(conn.is_connected());
    })
    .await;
}

/// A payload over what MQTT's Remaining Length can carry is refused locally, on any broker.
#[tokio::test(flavor = "multi_thread")]
async fn a_payload_over_the_protocol_maximum_is_refused_locally() {
    with_timeout(BODY, async {
        let broker = Broker::start();
        let client = Client::builder("127.0.0.1")
            .port(broker.port())
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let size = 268_435_456;
        let err = conn
            .publish("big", vec![0u8; size])
            .await
            .expect_err("over MQTT's maximum");
        assert!(
            matches!(err, Error::PayloadTooLarge { size: s, limit } if s == size && limit == 268_435_455 - 5),
            "{err:?}"
        );
        conn.publish("small", "x").qos(QoS::AtLeastOnce).await.unwrap();
    })
    .await;
}

/// A broker without QoS 2 closes the connection on a QoS 2 PUBLISH (NATS does; RabbitMQ's
/// PUBACK ends it too): the call's error says so, as long as no QoS 2 exchange completed on
/// the connection — after one did, a loss is just a loss.
#[tokio::test(flavor = "multi_thread")]
async fn a_qos2_publish_ended_by_the_broker_says_the_broker_may_lack_qos2() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = v311_client(&fb);
        let hint = "a broker without QoS 2";

        // No QoS 2 support: the broker closes on the PUBLISH.
        let (conn, mut fc) = fb.connect(&client).await;
        let (r, _) = tokio::join!(conn.publish("t", "x").qos(QoS::ExactlyOnce), async {
            fc.expect(PacketType::Publish, EVENT).await;
            fc.close_fin().await;
        });
        let err = r.expect_err("the broker closed");
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
        assert!(err.to_string().contains(hint), "{err}");
        drop(conn);

        // QoS 2 works, then the link goes: no hint.
        let (conn, mut fc) = fb.connect(&client).await;
        let (r, _) = tokio::join!(conn.publish("t", "1").qos(QoS::ExactlyOnce), async {
            let p = fc.expect(PacketType::Publish, EVENT).await;
            let id = p.packet_id().unwrap();
            fc.send(&packets::pubrec(id, None)).await.unwrap();
            fc.expect(PacketType::Pubrel, EVENT).await;
            fc.send(&packets::pubcomp(id, None)).await.unwrap();
        });
        r.expect("a QoS 2 exchange");
        let (r, _) = tokio::join!(conn.publish("t", "2").qos(QoS::ExactlyOnce), async {
            fc.expect(PacketType::Publish, EVENT).await;
            fc.close_fin().await;
        });
        let err = r.expect_err("the broker closed");
        assert!(!err.to_string().contains(hint), "{err}");
    })
    .await;
}

/// A relayed connection (here only because of `bind_address`) whose CONNECT goes
/// unanswered is `ConnectionClosed`, and no diagnosis probe bypasses the relay: the server
/// sees exactly one TCP connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_relayed_connection_closed_after_connect_is_not_probed() {
    with_timeout(BODY, async {
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .protocol(ProtocolVersion::V5)
            .bind_address("127.0.0.1")
            .timeout(TIMEOUT)
            .build()
            .unwrap();
        let started = Instant::now();
        let (r, _fc) = tokio::join!(client.connect(), async {
            let fc = fb.accept().await;
            fc.close_fin().await;
            fc
        });
        let err = r.expect_err("closed after CONNECT");
        assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
        assert!(matches!(err, Error::ConnectionClosed { .. }), "{err:?}");
        assert_eq!(fb.accepted(), 1, "a probe reached the server directly");
    })
    .await;
}
