//! Proves the fake broker (`support/fake_broker.rs`) works, without trusting it or the
//! crate's client: a raw `std::net::TcpStream` sends hand-encoded packets, and the encoders
//! are checked against byte vectors written by hand from the MQTT 3.1.1 and 5.0 specs.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const T: Duration = Duration::from_secs(20);
const STEP: Duration = Duration::from_secs(5);

// ---- Encoders: byte vectors from the specs ---------------------------------------------------

#[test]
fn varint_matches_the_spec_table() {
    // MQTT 3.1.1 §2.2.3 / 5.0 §1.5.5: the boundaries of 1, 2, 3 and 4 bytes.
    let vectors: &[(usize, &[u8])] = &[
        (0, &[0x00]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];
    for (n, want) in vectors {
        let mut out = Vec::new();
        packets::varint(*n, &mut out);
        assert_eq!(&out, want, "varint({n})");
        assert_eq!(
            fault_proxy::decode_varint(want),
            Some((*n, want.len())),
            "decode {want:02x?}"
        );
    }
}

#[test]
fn publish_encodings_are_byte_exact() {
    // 3.1.1, QoS 1, id 10: 0x32, len 9, topic "a/b", id, payload "hi".
    assert_eq!(
        packets::publish(b"a/b", 1, 10, b"hi", false, false, None),
        [
            0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, b'h', b'i'
        ]
    );
    // QoS 0 carries no packet id, whatever is passed.
    assert_eq!(
        packets::publish(b"t", 0, 99, b"", false, false, None),
        [0x30, 0x03, 0x00, 0x01, b't']
    );
    // DUP + QoS 2 + RETAIN: 0x30 | 0x08 | 0x04 | 0x01.
    assert_eq!(
        packets::publish(b"t", 2, 0x0102, b"x", true, true, None),
        [0x3D, 0x06, 0x00, 0x01, b't', 0x01, 0x02, b'x']
    );
    // 5.0 without properties: a zero property length after the topic.
    assert_eq!(
        packets::publish(b"a/b", 0, 0, b"hi", false, false, Some(&[])),
        [0x30, 0x08, 0x00, 0x03, b'a', b'/', b'b', 0x00, b'h', b'i']
    );
    // 5.0 with a topic alias (0x23, 2 bytes) and an empty topic.
    assert_eq!(
        packets::publish(
            b"",
            1,
            1,
            b"",
            false,
            false,
            Some(&packets::prop_topic_alias(7))
        ),
        [0x32, 0x08, 0x00, 0x00, 0x00, 0x01, 0x03, 0x23, 0x00, 0x07]
    );
    // Remaining length 203 takes two bytes: 0xCB 0x01.
    let big = packets::publish(b"t", 0, 0, &[0xAA; 200], false, false, None);
    assert_eq!(&big[..5], [0x30, 0xCB, 0x01, 0x00, 0x01]);
    assert_eq!(big.len(), 3 + 203);
    // Topic bytes are written as given, invalid UTF-8 and NUL included.
    assert_eq!(
        packets::publish(b"a\0\xC3\x28", 0, 0, b"", false, false, None),
        [0x30, 0x06, 0x00, 0x04, b'a', 0x00, 0xC3, 0x28]
    );
}

#[test]
fn ack_encodings_are_byte_exact() {
    assert_eq!(packets::puback(7, None), [0x40, 0x02, 0x00, 0x07]);
    assert_eq!(packets::pubrec(7, None), [0x50, 0x02, 0x00, 0x07]);
    assert_eq!(packets::pubrel(7, None), [0x62, 0x02, 0x00, 0x07]);
    assert_eq!(packets::pubcomp(0x1234, None), [0x70, 0x02, 0x12, 0x34]);
    // 5.0: reason code then property length.
    assert_eq!(
        packets::puback(7, Some((0x10, &[]))),
        [0x40, 0x04, 0x00, 0x07, 0x10, 0x00]
    );
    let rs = packets::prop_reason_string("no");
    assert_eq!(
        packets::pubrec(1, Some((0x80, &rs))),
        [
            0x50, 0x09, 0x00, 0x01, 0x80, 0x05, 0x1F, 0x00, 0x02, b'n', b'o'
        ]
    );
    assert_eq!(
        packets::suback(1, &[0x00, 0x01, 0x80], None),
        [0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80]
    );
    assert_eq!(
        packets::suback(1, &[0x00, 0x01, 0x80], Some(&[])),
        [0x90, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, 0x80]
    );
    assert_eq!(packets::unsuback(2, &[], None), [0xB0, 0x02, 0x00, 0x02]);
    assert_eq!(
        packets::unsuback(2, &[0x00, 0x11], Some(&[])),
        [0xB0, 0x05, 0x00, 0x02, 0x00, 0x00, 0x11]
    );
    assert_eq!(packets::pingresp(), [0xD0, 0x00]);
}

#[test]
fn connack_disconnect_and_property_encodings_are_byte_exact() {
    assert_eq!(packets::connack(false, 0, None), [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(packets::connack(true, 5, None), [0x20, 0x02, 0x01, 0x05]);
    assert_eq!(
        packets::connack(true, 0x87, Some(&[])),
        [0x20, 0x03, 0x01, 0x87, 0x00]
    );
    assert_eq!(
        packets::prop_reason_string("kicked"),
        [0x1F, 0x00, 0x06, b'k', b'i', b'c', b'k', b'e', b'd']
    );
    assert_eq!(
        packets::prop_user("k", "v"),
        [0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v']
    );
    assert_eq!(
        packets::prop_server_reference("s:1"),
        [0x1C, 0x00, 0x03, b's', b':', b'1']
    );
    assert_eq!(packets::prop_topic_alias(0x0102), [0x23, 0x01, 0x02]);
    // DISCONNECT 0x8E with a reason string: remaining length 1 + 1 + 9.
    assert_eq!(
        packets::disconnect_v5(0x8E, &packets::prop_reason_string("kicked")),
        [
            0xE0, 0x0B, 0x8E, 0x09, 0x1F, 0x00, 0x06, b'k', b'i', b'c', b'k', b'e', b'd'
        ]
    );
}

#[test]
fn malformed_encodings_are_byte_exact() {
    let t = packets::truncated(0x30, 100, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(t, [0x30, 0x64, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(
        packets::bad_remaining_length(0x30),
        [0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]
    );
    assert_eq!(
        fault_proxy::decode_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
        None
    );
    assert_eq!(packets::unknown_type(0x00), [0x00, 0x00]);
    assert_eq!(packets::unknown_type(0xF0), [0xF0, 0x00]);
    assert_eq!(packets::GARBAGE[0], 0x48);
}

// ---- The server side, against a raw client -------------------------------------------------

/// CONNECT 3.1.1, clean session, keepalive 60, client id "abc", no will: written by hand.
const CONNECT_311: [u8; 17] = [
    0x10, 0x0F, // CONNECT, remaining length 15
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x04, // level 4
    0x02, // clean session
    0x00, 0x3C, // keepalive 60
    0x00, 0x03, b'a', b'b', b'c', // client id
];

/// CONNECT 5.0, clean start + will (QoS 0), keepalive 10, client id "v5", will topic "w",
/// will payload "x", no properties.
const CONNECT_5: [u8; 24] = [
    0x10, 0x16, // CONNECT, remaining length 22
    0x00, 0x04, b'M', b'Q', b'T', b'T', // protocol name
    0x05, // level 5
    0x06, // clean start + will flag
    0x00, 0x0A, // keepalive 10
    0x00, // properties
    0x00, 0x02, b'v', b'5', // client id
    0x00, // will properties
    0x00, 0x01, b'w', // will topic
    0x00, 0x01, b'x', // will payload
];

fn raw_client(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the fake broker");
    s.set_read_timeout(Some(STEP)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn read_exact_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).expect("read from the fake broker");
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn parses_connect_and_answers_connack_311() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let port = fb.port();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = raw_client(port);
            s.write_all(&CONNECT_311).unwrap();
            read_exact_n(&mut s, 4)
        });
        let fc = fb.accept().await;
        assert_eq!(fc.connect.level, 4);
        assert_eq!(fc.connect.client_id, "abc");
        assert!(fc.connect.clean);
        assert_eq!(fc.connect.keepalive, 60);
        assert!(!fc.connect.will);
        assert!(!fc.v5());
        assert_eq!(fb.accepted(), 1);
        fc.send_connack(false, 0).await.unwrap();
        assert_eq!(client.await.unwrap(), [0x20, 0x02, 0x00, 0x00]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn parses_connect_and_answers_connack_5() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let port = fb.port();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = raw_client(port);
            s.write_all(&CONNECT_5).unwrap();
            let plain = read_exact_n(&mut s, 5);
            let with_props = read_exact_n(&mut s, 2 + 1 + 1 + 1 + 7);
            (plain, with_props)
        });
        let fc = fb.accept().await;
        assert_eq!(fc.connect.level, 5);
        assert_eq!(fc.connect.client_id, "v5");
        assert!(fc.connect.clean);
        assert_eq!(fc.connect.keepalive, 10);
        assert!(fc.connect.will);
        assert!(fc.v5());
        fc.send_connack(true, 0x00).await.unwrap();
        fc.send_connack_props(false, 0x87, &packets::prop_user("k", "v"))
            .await
            .unwrap();
        let (plain, with_props) = client.await.unwrap();
        assert_eq!(plain, [0x20, 0x03, 0x01, 0x00, 0x00]);
        assert_eq!(
            with_props,
            [
                0x20, 0x0A, 0x00, 0x87, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v'
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receives_packets_split_across_writes_and_answers_pings() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let port = fb.port();
        // SUBSCRIBE id 0x0102 to "a/#" QoS 1, then PINGREQ, written a byte at a time.
        let subscribe = [0x82, 0x08, 0x01, 0x02, 0x00, 0x03, b'a', b'/', b'#', 0x01];
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = raw_client(port);
            s.write_all(&CONNECT_311).unwrap();
            assert_eq!(read_exact_n(&mut s, 4), [0x20, 0x02, 0x00, 0x00]);
            for b in subscribe.iter().chain(&[0xC0, 0x00]) {
                s.write_all(&[*b]).unwrap();
            }
            let pong = read_exact_n(&mut s, 2);
            go_rx.recv_timeout(STEP).expect("go");
            drop(s);
            pong
        });
        let mut fc = fb.accept().await;
        fc.send_connack(false, 0).await.unwrap();
        let sub = fc.expect(PacketType::Subscribe, STEP).await;
        assert_eq!(sub.packet_id(), Some(0x0102));
        assert_eq!(sub.flags, 0x2);
        assert_eq!(sub.body, &subscribe[2..]);
        assert_eq!(sub.protocol, Some(4));
        // The PINGREQ was answered by the reader and is only in the log.
        assert!(
            wait_until_async(STEP, || !fc.received(PacketType::Pingreq).is_empty()).await,
            "no PINGREQ logged:\n{}",
            fc.trace()
        );
        go_tx.send(()).unwrap();
        assert_eq!(client.await.unwrap(), [0xD0, 0x00]);
        assert!(
            fc.peer_closed(STEP).await,
            "the raw client closed its socket"
        );
        assert!(matches!(fc.ended(), Some(Event::Closed)));
        assert!(fc.recv_packet(Duration::from_millis(1)).await.is_none());
        let kinds: Vec<_> = fc.log().iter().map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                PacketType::Connect,
                PacketType::Subscribe,
                PacketType::Pingreq
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_keeps_other_packets_for_later() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let port = fb.port();
        let client = tokio::task::spawn_blocking(move || {
            let mut s = raw_client(port);
            s.write_all(&CONNECT_311).unwrap();
            // PUBLISH QoS 1 id 5, then UNSUBSCRIBE id 6 "a", in one write.
            let mut w = packets::publish(b"t", 1, 5, b"p", false, false, None);
            w.extend_from_slice(&[0xA2, 0x05, 0x00, 0x06, 0x00, 0x01, b'a']);
            s.write_all(&w).unwrap();
            s
        });
        let mut fc = fb.accept().await;
        let unsub = fc.expect(PacketType::Unsubscribe, STEP).await;
        assert_eq!(unsub.packet_id(), Some(6));
        let publish = fc.recv_packet(STEP).await.expect("the skipped PUBLISH");
        assert_eq!(publish.kind, PacketType::Publish);
        assert_eq!(publish.packet_id(), Some(5));
        assert_eq!(publish.topic().as_deref(), Some("t"));
        drop(client.await.unwrap());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn close_fin_and_close_rst_reach_the_client() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        let port = fb.port();
        for rst in [false, true] {
            let client = tokio::task::spawn_blocking(move || {
                let mut s = raw_client(port);
                s.write_all(&CONNECT_311).unwrap();
                let mut b = [0u8; 16];
                s.read(&mut b).map_err(|e| e.kind())
            });
            let mut fc = fb.accept().await;
            if rst {
                fc.close_rst().await;
                assert_eq!(
                    client.await.unwrap(),
                    Err(std::io::ErrorKind::ConnectionReset)
                );
            } else {
                fc.close_fin().await;
                assert_eq!(client.await.unwrap(), Ok(0), "a FIN reads as EOF");
                // The client's own close after our FIN is seen too.
                assert!(fc.peer_closed(STEP).await);
            }
            assert!(
                fc.send(&packets::pingresp()).await.is_err(),
                "a closed side takes no writes"
            );
        }
        assert_eq!(fb.accepted(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_without_an_mqtt_connect_are_closed_and_counted() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        assert!(fb.try_accept(Duration::from_millis(100)).await.is_none());
        let port = fb.port();
        let closed_on = tokio::task::spawn_blocking(move || {
            // Connects and closes without a word.
            drop(raw_client(port));
            // Starts a TLS ClientHello (0x16 reads as a CONNECT type, but not "MQTT"),
            // then waits for the fake broker to hang up.
            let mut s = raw_client(port);
            s.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
                .unwrap();
            let mut b = [0u8; 8];
            let eof = s.read(&mut b).map_err(|e| e.kind());
            // A real client after them is handed out.
            let mut s = raw_client(port);
            s.write_all(&CONNECT_311).unwrap();
            (eof, s)
        });
        let fc = fb.accept().await;
        assert_eq!(fc.connect.client_id, "abc");
        let (eof, _s) = closed_on.await.unwrap();
        assert_eq!(eof, Ok(0), "the non-MQTT connection is closed with a FIN");
        assert_eq!(fb.accepted(), 3);
        assert!(
            wait_until_async(STEP, || fb.rejected() == 2).await,
            "rejected: {}",
            fb.rejected()
        );
        assert_eq!(fc.id, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crate_client_connects_to_it_on_both_protocols() {
    with_timeout(T, async {
        let fb = FakeBroker::start().await;
        for (protocol, level) in [
            (aiomqtt::ProtocolVersion::V311, 4),
            (aiomqtt::ProtocolVersion::V5, 5),
        ] {
            let client = aiomqtt::Client::builder("127.0.0.1")
                .port(fb.port())
                .protocol(protocol)
                .identifier("selftest")
                .timeout(STEP)
                .build()
                .unwrap();
            let (conn, mut fc) = tokio::join!(client.connect(), async {
                let fc = fb.accept().await;
                fc.send_connack(false, 0).await.unwrap();
                fc
            });
            let conn = conn.expect("connect to the fake broker");
            assert_eq!(fc.connect.level, level);
            assert_eq!(fc.connect.client_id, "selftest");
            let (r, ()) = tokio::join!(conn.disconnect(), async {
                let d = fc.expect(PacketType::Disconnect, STEP).await;
                assert_eq!(d.protocol, Some(level));
            });
            r.unwrap();
            assert!(fc.peer_closed(STEP).await);
        }
    })
    .await;
}
