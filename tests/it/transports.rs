//! One core round-trip suite run over every transport (tcp, tls, mutual tls, ws, wss, unix,
//! and through an HTTP proxy), like redis-rs runs one suite over tcp/tls/unix; then what is
//! special to each transport: WebSocket path and headers seen by the server side, the TLS
//! hostname check and `tls_insecure`, `CertRequirements::None`, ALPN and cipher lists.
//!
//! Every test starts its own Mosquitto (and, where needed, tinyproxy or an in-test relay) on
//! free loopback ports, uses unique topics and is bounded by a timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use aiomqtt::{
    CertRequirements, Client, ClientBuilder, Error, ProtocolVersion, ProxySettings, QoS,
    ReasonCode, TlsErrorKind, TlsParams, Transport,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bound of every test.
const TEST: Duration = Duration::from_secs(40);
/// The bound of one wait for a message.
const RECV: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The core suite.

/// Connect, subscribe, publish QoS 0/1/2 (and one 66 kB message), receive each, unsubscribe,
/// prove the unsubscribed filter no longer delivers, disconnect. `label` names the transport in
/// the topics and in every failure message.
async fn round_trip(builder: ClientBuilder, protocol: ProtocolVersion, label: &str) {
    let client = builder
        .protocol(protocol)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("[{label}] build: {e}"));
    let conn = with_timeout_ctx(RECV, format!("[{label}] connect"), client.connect())
        .await
        .unwrap_or_else(|e| panic!("[{label}] connect: {e} ({e:?})"));
    assert_eq!(conn.protocol(), protocol, "[{label}]");
    assert!(conn.is_connected(), "[{label}]");

    let base = unique_topic(label);
    let data = format!("{base}/data/#");
    let marker = format!("{base}/marker");
    let codes = conn
        .subscribe([
            (data.as_str(), QoS::ExactlyOnce),
            (marker.as_str(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap_or_else(|e| panic!("[{label}] subscribe: {e}"));
    assert_eq!(
        codes,
        vec![ReasonCode::GRANTED_QOS_2, ReasonCode::GRANTED_QOS_1],
        "[{label}] SUBACK"
    );

    let mut messages = conn.messages();
    // Over 65,535 bytes: the WebSocket frame needs its 64-bit length, and several TLS records.
    // (Mosquitto 2.0.11 sends WebSocket clients 4 kB every 100 ms, so keep it modest.)
    let big: Vec<u8> = (0..66_000u32).map(|i| (i % 251) as u8).collect();
    let cases: [(QoS, Vec<u8>); 4] = [
        (QoS::AtMostOnce, format!("{label} qos0").into_bytes()),
        (QoS::AtLeastOnce, format!("{label} qos1").into_bytes()),
        (QoS::ExactlyOnce, format!("{label} qos2").into_bytes()),
        (QoS::AtLeastOnce, big),
    ];
    for (i, (qos, payload)) in cases.iter().enumerate() {
        let topic = format!("{base}/data/{i}");
        conn.publish(&topic, payload.clone())
            .qos(*qos)
            .await
            .unwrap_or_else(|e| panic!("[{label}] publish {qos:?}: {e}"));
        let message = with_timeout_ctx(
            RECV,
            format!("[{label}] message {i} ({qos:?})"),
            messages.next(),
        )
        .await
        .unwrap_or_else(|| panic!("[{label}] message stream ended"))
        .unwrap_or_else(|e| panic!("[{label}] message {i}: {e}"));
        assert_eq!(message.topic.as_str(), topic, "[{label}]");
        assert_eq!(message.payload.len(), payload.len(), "[{label}] length");
        assert!(message.payload == *payload, "[{label}] payload {i} differs");
        assert_eq!(message.qos, *qos, "[{label}] delivered QoS");
        assert!(!message.retain, "[{label}]");
        assert_eq!(
            message.properties.is_some(),
            protocol == ProtocolVersion::V5,
            "[{label}] properties on v5 only"
        );
    }

    conn.unsubscribe(data.as_str())
        .await
        .unwrap_or_else(|e| panic!("[{label}] unsubscribe: {e}"));
    // Same connection, same QoS: the broker delivers in order, so the marker arriving first
    // proves the unsubscribed message was not delivered.
    conn.publish(format!("{base}/data/after"), "must not arrive")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("[{label}] publish after unsubscribe: {e}"));
    conn.publish(&marker, "marker")
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("[{label}] publish marker: {e}"));
    let message = with_timeout_ctx(RECV, format!("[{label}] marker"), messages.next())
        .await
        .unwrap_or_else(|| panic!("[{label}] message stream ended"))
        .unwrap_or_else(|e| panic!("[{label}] marker: {e}"));
    assert_eq!(
        message.topic.as_str(),
        marker,
        "[{label}] a message arrived after unsubscribe"
    );
    assert_eq!(messages.len(), 0, "[{label}]");

    let probe = conn.clone();
    conn.disconnect()
        .await
        .unwrap_or_else(|e| panic!("[{label}] disconnect: {e}"));
    assert!(!probe.is_connected(), "[{label}]");
    let err = probe.publish(&marker, "late").await.unwrap_err();
    assert!(matches!(err, Error::NotConnected), "[{label}] {err:?}");
}

fn tls_params(broker: &Broker) -> TlsParams {
    TlsParams::new().ca_certs(&broker.certs().ca)
}

fn tls_builder(broker: &Broker) -> ClientBuilder {
    Client::builder("localhost")
        .port(broker.tls_port())
        .tls_params(tls_params(broker))
}

fn mtls_builder(broker: &Broker) -> ClientBuilder {
    let certs = broker.certs();
    Client::builder("localhost")
        .port(broker.mtls_port())
        .tls_params(
            tls_params(broker)
                .certfile(&certs.client_cert)
                .keyfile(&certs.client_key),
        )
}

fn ws_builder(broker: &Broker) -> ClientBuilder {
    Client::builder("127.0.0.1")
        .port(broker.ws_port())
        .transport(Transport::WebSockets)
}

fn wss_builder(broker: &Broker) -> ClientBuilder {
    Client::builder("localhost")
        .port(broker.wss_port())
        .transport(Transport::WebSockets)
        .tls_params(tls_params(broker))
}

fn unix_builder(broker: &Broker) -> ClientBuilder {
    let path = broker.unix_path().to_str().expect("UTF-8 socket path");
    Client::builder(path).transport(Transport::Unix)
}

/// The tinyproxy log line of a CONNECT to `target`.
fn proxy_connects(proxy: &HttpProxy, target: &str) -> usize {
    proxy
        .log()
        .matches(&format!("CONNECT {target} HTTP/1.1"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tcp_v311() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let b = Client::builder("127.0.0.1").port(broker.port());
        round_trip(b, ProtocolVersion::V311, "tcp_v311").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tcp_v5() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let b = Client::builder("127.0.0.1").port(broker.port());
        round_trip(b, ProtocolVersion::V5, "tcp_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tls_v311() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        round_trip(tls_builder(&broker), ProtocolVersion::V311, "tls_v311").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tls_v5() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        round_trip(tls_builder(&broker), ProtocolVersion::V5, "tls_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_mutual_tls_v311() {
    with_timeout(TEST, async {
        let broker = Broker::builder().mutual_tls().start();
        round_trip(mtls_builder(&broker), ProtocolVersion::V311, "mtls_v311").await;
        // The broker really demanded the certificate: without one the same listener refuses.
        let err = Client::builder("localhost")
            .port(broker.mtls_port())
            .tls_params(tls_params(&broker))
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_mutual_tls_v5() {
    with_timeout(TEST, async {
        let broker = Broker::builder().mutual_tls().start();
        round_trip(mtls_builder(&broker), ProtocolVersion::V5, "mtls_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_mutual_tls_encrypted_key() {
    with_timeout(TEST, async {
        let broker = Broker::builder().mutual_tls().start();
        let certs = broker.certs();
        let b = Client::builder("localhost")
            .port(broker.mtls_port())
            .tls_params(
                tls_params(&broker)
                    .certfile(&certs.client_cert)
                    .keyfile(&certs.client_key_encrypted)
                    .keyfile_password(CLIENT_KEY_PASSPHRASE),
            );
        round_trip(b, ProtocolVersion::V311, "mtls_encrypted_key").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_ws_v311() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        round_trip(ws_builder(&broker), ProtocolVersion::V311, "ws_v311").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_ws_v5() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        round_trip(ws_builder(&broker), ProtocolVersion::V5, "ws_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_wss_v311() {
    with_timeout(TEST, async {
        let broker = Broker::builder().wss().start();
        round_trip(wss_builder(&broker), ProtocolVersion::V311, "wss_v311").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_wss_v5() {
    with_timeout(TEST, async {
        let broker = Broker::builder().wss().start();
        round_trip(wss_builder(&broker), ProtocolVersion::V5, "wss_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_unix_v311() {
    with_timeout(TEST, async {
        let broker = Broker::builder().unix_socket().start();
        round_trip(unix_builder(&broker), ProtocolVersion::V311, "unix_v311").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_unix_v5() {
    with_timeout(TEST, async {
        let broker = Broker::builder().unix_socket().start();
        round_trip(unix_builder(&broker), ProtocolVersion::V5, "unix_v5").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tcp_through_http_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let proxy = HttpProxy::start(&[broker.port()]);
        let target = format!("127.0.0.1:{}", broker.port());
        assert_eq!(proxy_connects(&proxy, &target), 0);
        let b = Client::builder("127.0.0.1")
            .port(broker.port())
            .proxy(ProxySettings::http("127.0.0.1", proxy.port()));
        round_trip(b, ProtocolVersion::V311, "tcp_via_proxy").await;
        assert_eq!(proxy_connects(&proxy, &target), 1, "{}", proxy.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tls_through_http_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let proxy = HttpProxy::start(&[broker.tls_port()]);
        let target = format!("localhost:{}", broker.tls_port());
        let b = tls_builder(&broker).proxy(ProxySettings::http("127.0.0.1", proxy.port()));
        round_trip(b, ProtocolVersion::V311, "tls_via_proxy").await;
        assert_eq!(proxy_connects(&proxy, &target), 1, "{}", proxy.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_tls_v5_through_http_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let proxy = HttpProxy::start(&[broker.tls_port()]);
        let target = format!("localhost:{}", broker.tls_port());
        let b = tls_builder(&broker).proxy(ProxySettings::http("127.0.0.1", proxy.port()));
        round_trip(b, ProtocolVersion::V5, "tls_v5_via_proxy").await;
        assert_eq!(proxy_connects(&proxy, &target), 1, "{}", proxy.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_ws_through_http_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let proxy = HttpProxy::start(&[broker.ws_port()]);
        let target = format!("127.0.0.1:{}", broker.ws_port());
        let b = ws_builder(&broker).proxy(ProxySettings::http("127.0.0.1", proxy.port()));
        round_trip(b, ProtocolVersion::V311, "ws_via_proxy").await;
        assert_eq!(proxy_connects(&proxy, &target), 1, "{}", proxy.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_wss_through_http_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::builder().wss().start();
        let proxy = HttpProxy::start(&[broker.wss_port()]);
        let target = format!("localhost:{}", broker.wss_port());
        let b = wss_builder(&broker).proxy(ProxySettings::http("127.0.0.1", proxy.port()));
        round_trip(b, ProtocolVersion::V311, "wss_via_proxy").await;
        assert_eq!(proxy_connects(&proxy, &target), 1, "{}", proxy.log());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// A recording relay: what the server side sees.

/// The first bytes of one relayed connection, each way.
#[derive(Clone, Debug, Default)]
struct Recorded {
    to_server: Vec<u8>,
    to_client: Vec<u8>,
}

/// How much of each direction is recorded (the WebSocket upgrade, the TLS hellos).
const RECORD_LIMIT: usize = 64 * 1024;

/// A TCP relay in front of a broker port. It records the first bytes of every connection in
/// both directions (the HTTP upgrade request, the TLS ClientHello/ServerHello) and forwards
/// everything unchanged.
struct RecordingRelay {
    port: u16,
    conns: Arc<Mutex<Vec<Recorded>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl RecordingRelay {
    async fn start(target_port: u16) -> RecordingRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let all = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                else {
                    continue;
                };
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Recorded::default());
                    all.len() - 1
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, all.clone(), index, true));
                tokio::spawn(pump(sr, cw, all.clone(), index, false));
            }
        });
        RecordingRelay {
            port,
            conns,
            accept,
        }
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn recorded(&self) -> Vec<Recorded> {
        self.conns.lock().unwrap().clone()
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    conns: Arc<Mutex<Vec<Recorded>>>,
    index: usize,
    to_server: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut all = conns.lock().unwrap();
            let rec = &mut all[index];
            let sink = if to_server {
                &mut rec.to_server
            } else {
                &mut rec.to_client
            };
            let room = RECORD_LIMIT.saturating_sub(sink.len()).min(n);
            sink.extend_from_slice(&buf[..room]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The request line and headers of the HTTP request at the start of `bytes`.
fn http_request(bytes: &[u8]) -> (String, Vec<(String, String)>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete HTTP request in {:?}",
                String::from_utf8_lossy(bytes)
            )
        });
    let head = std::str::from_utf8(&bytes[..end]).expect("ASCII request head");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    (request_line, headers)
}

/// The values of header `name` (case-insensitive), in order.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// WebSockets: path and headers, as the server side sees them.

#[tokio::test(flavor = "multi_thread")]
async fn websocket_path_and_headers_reach_the_server() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let relay = RecordingRelay::start(broker.ws_port()).await;
        let b = Client::builder("127.0.0.1")
            .port(relay.port())
            .transport(Transport::WebSockets)
            .websocket_path("/custom/mqtt-over-ws")
            .websocket_headers([
                ("X-Aiomqtt-Test", "hello-123"),
                ("Authorization", "Bearer t0k3n"),
            ]);
        round_trip(b, ProtocolVersion::V311, "ws_path_headers").await;

        let recorded = relay.recorded();
        assert_eq!(recorded.len(), 1, "one connection through the relay");
        let (request_line, headers) = http_request(&recorded[0].to_server);
        assert_eq!(request_line, "GET /custom/mqtt-over-ws HTTP/1.1");
        assert_eq!(
            header(&headers, "X-Aiomqtt-Test"),
            ["hello-123"],
            "{headers:?}"
        );
        assert_eq!(
            header(&headers, "Authorization"),
            ["Bearer t0k3n"],
            "{headers:?}"
        );
        assert_eq!(header(&headers, "Upgrade"), ["websocket"], "{headers:?}");
        assert_eq!(
            header(&headers, "Sec-WebSocket-Protocol"),
            ["mqtt"],
            "{headers:?}"
        );
        // Mosquitto accepted the upgrade on that path.
        let answer = String::from_utf8_lossy(&recorded[0].to_client);
        assert!(answer.starts_with("HTTP/1.1 101"), "{answer:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_default_path_is_mqtt_without_extra_headers() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let relay = RecordingRelay::start(broker.ws_port()).await;
        let client = Client::builder("127.0.0.1")
            .port(relay.port())
            .transport(Transport::WebSockets)
            .build()
            .unwrap();
        let conn = client.connect().await.expect("connect");
        conn.disconnect().await.expect("disconnect");

        let recorded = relay.recorded();
        assert_eq!(recorded.len(), 1);
        let (request_line, headers) = http_request(&recorded[0].to_server);
        assert_eq!(request_line, "GET /mqtt HTTP/1.1");
        assert!(header(&headers, "X-Aiomqtt-Test").is_empty(), "{headers:?}");
        assert!(header(&headers, "Authorization").is_empty(), "{headers:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_over_tls_with_path_and_headers() {
    with_timeout(TEST, async {
        let broker = Broker::builder().wss().start();
        let relay = RecordingRelay::start(broker.wss_port()).await;
        let b = Client::builder("localhost")
            .port(relay.port())
            .transport(Transport::WebSockets)
            .tls_params(tls_params(&broker))
            .websocket_path("/secure/path")
            .websocket_headers([("X-Aiomqtt-Test", "over-tls")]);
        round_trip(b, ProtocolVersion::V311, "wss_path_headers").await;
        // It was TLS on the wire (a ClientHello, not a readable HTTP request): the header and
        // the path travel inside the encrypted stream.
        let recorded = relay.recorded();
        assert_eq!(recorded.len(), 1);
        let hello = client_hello(&recorded[0].to_server).expect("a TLS ClientHello");
        assert_eq!(hello.server_name.as_deref(), Some("localhost"));
        let wire = &recorded[0].to_server;
        assert!(
            !wire.windows(8).any(|w| w == b"over-tls"),
            "header sent in clear"
        );
    })
    .await;
}

/// Two connections subscribed to the same filter, each publishing 20 messages of 0 to 19 kB:
/// each must receive all 40.
async fn exchange(conns: Vec<aiomqtt::Connection>, base: &str) {
    for conn in &conns {
        conn.subscribe((format!("{base}/#").as_str(), QoS::AtLeastOnce))
            .await
            .expect("subscribe");
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, conn)| {
            let base = base.to_owned();
            tokio::spawn(async move {
                let mut messages = conn.messages();
                for i in 0..20 {
                    conn.publish(format!("{base}/{n}"), vec![n as u8; 1000 * i])
                        .qos(QoS::AtLeastOnce)
                        .timeout(Duration::from_secs(5))
                        .await
                        .map_err(|e| format!("connection {n} publish {i}: {e}"))?;
                }
                for i in 0..40 {
                    match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
                        Ok(Some(Ok(_))) => {}
                        other => return Err(format!("connection {n} message {i}: {other:?}")),
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

/// The control for the next test: one WebSocket and one TCP connection at once are fine.
#[tokio::test(flavor = "multi_thread")]
async fn one_websocket_and_one_tcp_connection_at_once() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let ws = ws_builder(&broker).build().unwrap();
        let tcp = Client::builder("127.0.0.1")
            .port(broker.port())
            .build()
            .unwrap();
        let conns = vec![
            ws.connect().await.expect("ws connect"),
            tcp.connect().await.expect("tcp connect"),
        ];
        exchange(conns, &unique_topic("ws_and_tcp")).await;
    })
    .await;
}

/// A payload that says where it came from: connection `n`, message `i`, `len` bytes of a
/// pattern of both, so any corruption or mix-up of frames shows.
fn stamped(n: usize, i: usize, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len + 8);
    p.extend_from_slice(&(n as u32).to_be_bytes());
    p.extend_from_slice(&(i as u32).to_be_bytes());
    p.extend((0..len).map(|j| (n * 31 + i * 7 + j) as u8));
    p
}

/// Paho C keeps WebSocket frame state in process-wide statics, so two of its WebSocket
/// connections at once corrupt each other within a few messages; through the relay each
/// connection has its own. Four at once, every one publishing several-kB messages that
/// all four receive interleaved: every message arrives exactly as sent.
#[tokio::test(flavor = "multi_thread")]
async fn several_websocket_connections_at_once_keep_their_frames_intact() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let base = unique_topic("ws_many");
        const CONNS: usize = 4;
        const MSGS: usize = 25;
        let mut conns = Vec::new();
        for _ in 0..CONNS {
            let conn = ws_builder(&broker)
                .build()
                .unwrap()
                .connect()
                .await
                .unwrap();
            conn.subscribe((format!("{base}/#").as_str(), QoS::AtLeastOnce))
                .await
                .unwrap();
            conns.push(conn);
        }
        let tasks: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(n, conn)| {
                let base = base.clone();
                tokio::spawn(async move {
                    let mut messages = conn.messages();
                    let publishing = {
                        let conn = conn.clone();
                        let base = base.clone();
                        tokio::spawn(async move {
                            for i in 0..MSGS {
                                conn.publish(format!("{base}/{n}"), stamped(n, i, 2000 + 173 * i))
                                    .qos(QoS::AtLeastOnce)
                                    .await
                                    .map_err(|e| format!("connection {n} publish {i}: {e}"))?;
                            }
                            Ok::<_, String>(())
                        })
                    };
                    let mut seen = std::collections::BTreeSet::new();
                    while seen.len() < CONNS * MSGS {
                        let m = match tokio::time::timeout(Duration::from_secs(15), messages.next())
                            .await
                        {
                            Ok(Some(Ok(m))) => m,
                            other => {
                                return Err(format!(
                                    "connection {n} after {}: {other:?}",
                                    seen.len()
                                ));
                            }
                        };
                        let from = u32::from_be_bytes(m.payload[..4].try_into().unwrap()) as usize;
                        let i = u32::from_be_bytes(m.payload[4..8].try_into().unwrap()) as usize;
                        if m.payload != stamped(from, i, 2000 + 173 * i)
                            || m.topic.as_str() != format!("{base}/{from}")
                        {
                            return Err(format!("connection {n}: message {from}/{i} corrupted"));
                        }
                        if !seen.insert((from, i)) {
                            return Err(format!("connection {n}: message {from}/{i} twice"));
                        }
                    }
                    publishing.await.unwrap()?;
                    conn.disconnect().await.map_err(|e| e.to_string())
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
    })
    .await;
}

/// Mosquitto 2.0.11's WebSocket listener writes a frame longer than about 4 KiB in pieces,
/// one per pass of its service loop, which waits up to 100 ms when nothing else happens
/// (strace: a `sendto` of 4,116 bytes, an `epoll_wait` of 100 ms, the next piece). A 64 KiB
/// message therefore reaches a WebSocket subscriber only after a second or more, through
/// this crate's relay and through Paho C's own WebSocket client alike, where over TCP it
/// takes milliseconds. The guide's WebSockets section warns of it; this test fails when the
/// broker stops doing it (or when the relay's delay stops matching Paho C's).
#[tokio::test(flavor = "multi_thread")]
async fn mosquittos_websocket_listener_delivers_large_frames_slowly_to_any_client() {
    with_timeout(TEST, async {
        let broker = Broker::builder().websockets().start();
        let topic = unique_topic("ws_large_frame");
        let publisher = Client::builder("127.0.0.1")
            .port(broker.port())
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let payload = vec![0x5a_u8; 64 * 1024];
        // One subscriber at a time, so that no other client's traffic wakes the broker.
        let mut took = Vec::new();
        for subscriber in [
            ws_builder(&broker),
            Client::builder("127.0.0.1").port(broker.port()),
        ] {
            let conn = subscriber.build().unwrap().connect().await.unwrap();
            conn.subscribe(topic.as_str()).await.unwrap();
            let mut messages = conn.messages();
            let start = Instant::now();
            publisher.publish(&topic, payload.clone()).await.unwrap();
            let m = tokio::time::timeout(RECV, messages.next()).await;
            assert!(matches!(&m, Ok(Some(Ok(m))) if m.payload.len() == payload.len()));
            took.push(start.elapsed());
            conn.disconnect().await.unwrap();
        }
        let paho = paho_websocket_receive(broker.ws_port(), &topic, &publisher, &payload).await;
        let (relay, tcp) = (took[0], took[1]);
        println!("OBSERVED 64 KiB: relay {relay:?}, Paho C's WebSocket {paho:?}, TCP {tcp:?}");
        assert!(tcp < Duration::from_millis(300), "{tcp:?}");
        let slow = Duration::from_millis(800);
        assert!(
            relay > slow && paho > slow,
            "relay {relay:?}, paho {paho:?}"
        );
        assert!(
            relay < paho * 2 && paho < relay * 2,
            "relay {relay:?}, paho {paho:?}"
        );
    })
    .await;
}

/// How long a message of `payload` published by `publisher` takes to reach raw paho-mqtt
/// subscribed over Paho C's own WebSocket (the only Paho C WebSocket of this process:
/// nothing else here uses Paho C's WebSockets).
async fn paho_websocket_receive(
    ws_port: u16,
    topic: &str,
    publisher: &aiomqtt::Connection,
    payload: &[u8],
) -> Duration {
    let mut paho = paho_mqtt::AsyncClient::new(
        paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(format!("ws://127.0.0.1:{ws_port}/mqtt"))
            .client_id(unique_topic("paho_ws").replace('/', "_"))
            .persistence(None)
            .finalize(),
    )
    .unwrap();
    let mut stream = std::pin::pin!(paho.get_stream(4));
    let options =
        paho_mqtt::ConnectOptionsBuilder::with_mqtt_version(paho_mqtt::MQTT_VERSION_3_1_1)
            .finalize();
    paho.connect(options).await.unwrap();
    paho.subscribe(topic, 0).await.unwrap();
    let start = Instant::now();
    publisher.publish(topic, payload.to_vec()).await.unwrap();
    let m = tokio::time::timeout(RECV, stream.next()).await;
    assert!(matches!(&m, Ok(Some(Some(m))) if m.payload().len() == payload.len()));
    let took = start.elapsed();
    paho.disconnect(None).await.unwrap();
    took
}

// ---------------------------------------------------------------------------------------------
// Unix sockets.

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_hostname_is_the_path_and_port_is_ignored() {
    with_timeout(TEST, async {
        let broker = Broker::builder().unix_socket().start();
        // A port that nothing listens on: only the path matters.
        let b = unix_builder(&broker).port(free_port());
        round_trip(b, ProtocolVersion::V311, "unix_port_ignored").await;
        assert!(
            broker.log().contains("on port 0"),
            "Mosquitto saw no connection on its Unix listener:\n{}",
            broker.log()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_missing_is_refused_at_once() {
    with_timeout(TEST, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-broker.sock");
        let client = Client::builder(path.to_str().unwrap())
            .transport(Transport::Unix)
            .build()
            .unwrap();
        let started = Instant::now();
        let err = client.connect().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        match &err {
            Error::ConnectionRefused { address, .. } => {
                assert_eq!(address, path.to_str().unwrap(), "{err}")
            }
            other => panic!("expected ConnectionRefused, got {other:?}"),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// TLS: hostname check, tls_insecure, cert_reqs.

fn quick_client(b: ClientBuilder) -> Client {
    b.timeout(Duration::from_secs(10)).build().expect("build")
}

/// `connect()` must fail, quickly (well within the client's 10 s timeout).
async fn connect_err(client: &Client) -> Error {
    let started = Instant::now();
    let result = client.connect().await;
    let elapsed = started.elapsed();
    let err = match result {
        Ok(_) => panic!("connect() succeeded, expected a failure"),
        Err(e) => e,
    };
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: {err}");
    err
}

fn assert_tls_kind(err: &Error, kind: TlsErrorKind) {
    match err {
        Error::Tls { kind: k, .. } if *k == kind => {}
        other => panic!("expected Error::Tls {{ kind: {kind:?} }}, got {other:?} ({other})"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_good_certificate_verifies_by_name_and_by_ip_san() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        // The harness' server certificate names `localhost` and IP 127.0.0.1: both pass the
        // hostname check (so the mismatch below needs the wrong-host certificate).
        for host in ["localhost", "127.0.0.1"] {
            let client = quick_client(
                Client::builder(host)
                    .port(broker.tls_port())
                    .tls_params(tls_params(&broker)),
            );
            let conn = client
                .connect()
                .await
                .unwrap_or_else(|e| panic!("{host}: {e}"));
            conn.disconnect().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_hostname_mismatch_fails_unless_tls_insecure() {
    with_timeout(TEST, async {
        let broker = Broker::builder()
            .tls()
            .server_cert(ServerCert::WrongHost)
            .start();
        let verified = quick_client(tls_builder(&broker));
        let err = connect_err(&verified).await;
        assert_tls_kind(&err, TlsErrorKind::HostnameMismatch);
        assert!(err.is_tls() && err.is_connect());

        // tls_insecure(true) is the one switch that skips the hostname check.
        let b = tls_builder(&broker).tls_insecure(true);
        round_trip(b, ProtocolVersion::V311, "tls_insecure").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_insecure_still_verifies_the_chain() {
    with_timeout(TEST, async {
        let broker = Broker::builder()
            .tls()
            .server_cert(ServerCert::WrongHost)
            .start();
        let client = quick_client(
            Client::builder("localhost")
                .port(broker.tls_port())
                .tls_params(TlsParams::new().ca_certs(&broker.certs().other_ca))
                .tls_insecure(true),
        );
        let err = connect_err(&client).await;
        assert_tls_kind(&err, TlsErrorKind::UnknownCa);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_reqs_none_accepts_an_unknown_ca() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let untrusting = TlsParams::new().ca_certs(&broker.certs().other_ca);
        let required = quick_client(
            Client::builder("localhost")
                .port(broker.tls_port())
                .tls_params(untrusting.clone()),
        );
        assert_tls_kind(&connect_err(&required).await, TlsErrorKind::UnknownCa);

        let b = Client::builder("localhost")
            .port(broker.tls_port())
            .tls_params(untrusting.cert_reqs(CertRequirements::None));
        round_trip(b, ProtocolVersion::V311, "cert_reqs_none").await;

        // No CA file at all (the system store does not know the test CA) works too.
        let client = quick_client(
            Client::builder("localhost")
                .port(broker.tls_port())
                .tls_params(TlsParams::new().cert_reqs(CertRequirements::None)),
        );
        client
            .connect()
            .await
            .expect("no CA file")
            .disconnect()
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cert_reqs_none_skips_the_hostname_check_too() {
    with_timeout(TEST, async {
        let broker = Broker::builder()
            .tls()
            .server_cert(ServerCert::WrongHost)
            .start();
        let client = quick_client(
            Client::builder("localhost")
                .port(broker.tls_port())
                .tls_params(tls_params(&broker).cert_reqs(CertRequirements::None)),
        );
        client
            .connect()
            .await
            .expect("connect")
            .disconnect()
            .await
            .unwrap();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// TLS hellos, as seen on the wire.

/// What the tests need from a ClientHello or ServerHello.
#[derive(Debug)]
struct Hello {
    /// Offered (ClientHello) or selected (ServerHello) cipher suites.
    cipher_suites: Vec<u16>,
    /// ALPN protocol names, if the extension is present.
    alpn: Option<Vec<String>>,
    /// The SNI host name, if present.
    server_name: Option<String>,
    /// The `supported_versions` extension of a ServerHello (0x0304 = TLS 1.3).
    selected_version: Option<u16>,
}

const TLS_1_3: u16 = 0x0304;
/// TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256.
const TLS13_SUITES: [u16; 3] = [0x1301, 0x1302, 0x1303];
/// ECDHE-ECDSA-AES128-GCM-SHA256 / ECDHE-ECDSA-AES256-GCM-SHA384.
const ECDHE_ECDSA_AES128_GCM: u16 = 0xC02B;
const ECDHE_ECDSA_AES256_GCM: u16 = 0xC02C;

fn client_hello(bytes: &[u8]) -> Option<Hello> {
    parse_hello(bytes, 1)
}

fn server_hello(bytes: &[u8]) -> Option<Hello> {
    parse_hello(bytes, 2)
}

/// Parses the first handshake message of the first TLS record (enough for hellos).
fn parse_hello(bytes: &[u8], handshake_type: u8) -> Option<Hello> {
    let u16_at = |b: &[u8], i: usize| Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]));
    if *bytes.first()? != 0x16 {
        return None;
    }
    let record_len = usize::from(u16_at(bytes, 3)?);
    let record = bytes.get(5..5 + record_len)?;
    if *record.first()? != handshake_type {
        return None;
    }
    let len = usize::from(record[1]) << 16 | usize::from(record[2]) << 8 | usize::from(record[3]);
    let h = record.get(4..4 + len)?;
    let mut p = 2 + 32; // version, random
    p += 1 + usize::from(*h.get(p)?); // session id
    let mut cipher_suites = Vec::new();
    if handshake_type == 1 {
        let n = usize::from(u16_at(h, p)?);
        for i in (0..n).step_by(2) {
            cipher_suites.push(u16_at(h, p + 2 + i)?);
        }
        p += 2 + n;
        p += 1 + usize::from(*h.get(p)?); // compression methods
    } else {
        cipher_suites.push(u16_at(h, p)?);
        p += 3; // suite, compression
    }
    let mut hello = Hello {
        cipher_suites,
        alpn: None,
        server_name: None,
        selected_version: None,
    };
    let end = p + 2 + usize::from(u16_at(h, p)?);
    p += 2;
    while p + 4 <= end {
        let kind = u16_at(h, p)?;
        let n = usize::from(u16_at(h, p + 2)?);
        let data = h.get(p + 4..p + 4 + n)?;
        match kind {
            0x0000 if data.len() > 5 => {
                hello.server_name = Some(String::from_utf8_lossy(&data[5..]).into_owned());
            }
            0x0010 => {
                let mut names = Vec::new();
                let mut i = 2;
                while i < data.len() {
                    let l = usize::from(data[i]);
                    names.push(String::from_utf8_lossy(data.get(i + 1..i + 1 + l)?).into_owned());
                    i += 1 + l;
                }
                hello.alpn = Some(names);
            }
            0x002b if handshake_type == 2 => hello.selected_version = u16_at(data, 0),
            _ => {}
        }
        p += 4 + n;
    }
    Some(hello)
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_protocols_are_offered_and_mosquitto_still_connects() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let relay = RecordingRelay::start(broker.tls_port()).await;
        let through_relay = |params: TlsParams| {
            Client::builder("localhost")
                .port(relay.port())
                .tls_params(params)
        };

        // Mosquitto 2.0.11 has no ALPN option for listeners (mosquitto.conf(5) only knows
        // `bridge_alpn`), so it cannot require it: offering it must simply not break anything.
        let b = through_relay(tls_params(&broker).alpn_protocols(["mqtt"]));
        round_trip(b, ProtocolVersion::V311, "alpn").await;
        let b = through_relay(tls_params(&broker).alpn_protocols(["mqtt", "x-aiomqtt"]));
        let client = quick_client(b);
        client
            .connect()
            .await
            .expect("two protocols")
            .disconnect()
            .await
            .unwrap();
        let client = quick_client(through_relay(tls_params(&broker)));
        client
            .connect()
            .await
            .expect("no ALPN")
            .disconnect()
            .await
            .unwrap();

        let recorded = relay.recorded();
        assert_eq!(recorded.len(), 3, "three connections through the relay");
        let hellos: Vec<Hello> = recorded
            .iter()
            .map(|r| client_hello(&r.to_server).expect("a ClientHello"))
            .collect();
        assert_eq!(hellos[0].alpn, Some(vec!["mqtt".to_owned()]));
        assert_eq!(
            hellos[1].alpn,
            Some(vec!["mqtt".to_owned(), "x-aiomqtt".to_owned()])
        );
        assert_eq!(
            hellos[2].alpn, None,
            "ALPN offered though none was configured"
        );
        for hello in &hellos {
            assert_eq!(hello.server_name.as_deref(), Some("localhost"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cipher_list_restricts_tls12_suites_but_not_tls13() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let relay = RecordingRelay::start(broker.tls_port()).await;
        let with_ciphers = |ciphers: &str| {
            Client::builder("localhost")
                .port(relay.port())
                .tls_params(tls_params(&broker).ciphers(ciphers))
        };
        // A suite the server supports (its key is ECDSA P-256).
        round_trip(
            with_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256"),
            ProtocolVersion::V311,
            "cipher_shared",
        )
        .await;
        // An RSA-authenticated suite, unusable with the server's ECDSA key: Mosquitto still
        // accepts, because both sides speak TLS 1.3, whose suites the cipher list (OpenSSL's
        // SSL_CTX_set_cipher_list, all Paho sets) does not control.
        let client = quick_client(with_ciphers("ECDHE-RSA-AES128-GCM-SHA256"));
        client
            .connect()
            .await
            .expect("TLS 1.3 despite an unshared TLS 1.2 list")
            .disconnect()
            .await
            .unwrap();

        let recorded = relay.recorded();
        assert_eq!(recorded.len(), 2);
        let offered = client_hello(&recorded[0].to_server).expect("ClientHello");
        assert!(offered.cipher_suites.contains(&ECDHE_ECDSA_AES128_GCM));
        assert!(
            !offered.cipher_suites.contains(&ECDHE_ECDSA_AES256_GCM),
            "{offered:?}"
        );
        let tls12: Vec<u16> = offered
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| !TLS13_SUITES.contains(s) && *s != 0x00FF)
            .collect();
        assert_eq!(
            tls12,
            [ECDHE_ECDSA_AES128_GCM],
            "only the listed TLS 1.2 suite"
        );
        for (i, r) in recorded.iter().enumerate() {
            let offered = client_hello(&r.to_server).expect("ClientHello");
            for suite in TLS13_SUITES {
                assert!(offered.cipher_suites.contains(&suite), "{i}: {offered:?}");
            }
            let chosen = server_hello(&r.to_client).expect("ServerHello");
            assert_eq!(chosen.selected_version, Some(TLS_1_3), "{i}: {chosen:?}");
            assert!(
                TLS13_SUITES.contains(&chosen.cipher_suites[0]),
                "{i}: {chosen:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cipher_list_against_a_tls12_only_server() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let certs = Certs::shared();
        let front = TlsFront::tls12(certs, "ECDHE-ECDSA-AES128-GCM-SHA256", broker.port());
        let with_ciphers = |ciphers: &str| {
            Client::builder("localhost")
                .port(front.port)
                .tls_params(TlsParams::new().ca_certs(&certs.ca).ciphers(ciphers))
        };
        // Shared suite: the MQTT round trip works over it, and it is the suite in use.
        round_trip(
            with_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256"),
            ProtocolVersion::V311,
            "tls12_shared_cipher",
        )
        .await;
        assert_eq!(
            front.handshakes(),
            [Ok(Handshake {
                suite: "ECDHE-ECDSA-AES128-GCM-SHA256".to_owned(),
                client_certificate: false,
            })]
        );

        // No shared suite: a TLS error, at once.
        let client = quick_client(with_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384"));
        let err = connect_err(&client).await;
        match &err {
            Error::Tls { detail, .. } => assert!(detail.contains("handshake failure"), "{err}"),
            other => panic!("expected Error::Tls, got {other:?}"),
        }
        let handshakes = front.handshakes();
        assert!(handshakes.len() >= 2, "{handshakes:?}");
        assert!(
            handshakes[1..]
                .iter()
                .all(|h| h.as_ref().is_err_and(|e| e.contains("no shared cipher"))),
            "{handshakes:?}"
        );
    })
    .await;
}

/// A cipher-suite mismatch is reported as a client-certificate problem, though no client
/// certificate is configured and the server never asked for one.
#[tokio::test(flavor = "multi_thread")]
async fn cipher_mismatch_is_not_a_client_certificate_error() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let certs = Certs::shared();
        let front = TlsFront::tls12(certs, "ECDHE-ECDSA-AES128-GCM-SHA256", broker.port());
        let client = quick_client(
            Client::builder("localhost").port(front.port).tls_params(
                TlsParams::new()
                    .ca_certs(&certs.ca)
                    .ciphers("ECDHE-ECDSA-AES256-GCM-SHA384"),
            ),
        );
        let err = connect_err(&client).await;
        assert_tls_kind(&err, TlsErrorKind::Handshake);
    })
    .await;
}
