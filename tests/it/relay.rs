//! The relay (`src/engine/relay`), proven over the wire (GitHub issue 9): for the options
//! Paho C cannot dial itself the facade dials the broker and joins Paho to that link
//! through a private loopback endpoint. Each test here fails without the feature it names:
//!
//! - `bind_address`/`bind_port`: the source address and port the broker sees; bind
//!   failures are `Error::Bind` at once.
//! - `socket_options`: read back with `getsockopt` on the relay's own socket to the broker.
//! - SOCKS: real servers (Dante: SOCKS 4 and 5; microsocks: SOCKS 5 with username and
//!   password, and remote DNS in a private mount namespace) and a scripted server for
//!   SOCKS 4a and the requests as sent.
//! - TLS the relay does itself: `tls_context` with an in-memory CA and client certificate
//!   (feature `tls-context`), version bounds and pinned versions, verification failures.
//! - A refused WebSocket upgrade; the time a Unix-socket connect takes.
//! - The private endpoint: one connection, of this process only, gone with the link.
//! - Lifecycle: resets and closes both ways, keep-alive through the relay, and no leaked
//!   sockets or threads over 100 connections.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::socks::{
    Dante, MicroSocks, MicroSocksConfig, ScriptedSocks, SocksRequest, SocksTarget,
};
use crate::support::*;
use aiomqtt::{
    Client, ClientBuilder, Connection, Error, ProxySettings, QoS, SocketOption, TlsErrorKind,
    TlsParams, TlsVersion, Transport,
};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bound of every test.
const TEST: Duration = Duration::from_secs(40);
/// The bound of a test run in a child process.
const CHILD: Duration = Duration::from_secs(60);
/// The bound of 100 connections and their checks (a WebSocket upgrade alone takes
/// Mosquitto 2.0.11 100-200 ms: its libwebsockets service loop).
const CYCLES_BOUND: Duration = Duration::from_secs(55);
/// The client's timeout: every failure the relay detects itself must come back well
/// within it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// "At once": a failure known from one exchange on loopback, on a loaded 2-core machine.
const FAST: Duration = Duration::from_secs(2);
/// The bound of one wait for a message or an event.
const EVENT: Duration = Duration::from_secs(5);

/// A second loopback address (Linux routes all of 127/8 to `lo`): the source the broker
/// sees when the relay binds to it.
const LOCAL_2: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Where microsocks dials out from, so the broker's log shows its tunnels.
const MICROSOCKS_OUT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
/// Where Dante dials out from.
const DANTE_OUT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Connects, subscribes, publishes one QoS 1 message, receives it, disconnects.
async fn round_trip(client: &Client, label: &str) {
    let conn = with_timeout_ctx(EVENT * 2, format!("[{label}] connect"), client.connect())
        .await
        .unwrap_or_else(|e| panic!("[{label}] connect: {e} ({e:?})"));
    exchange(&conn, label).await;
    conn.disconnect()
        .await
        .unwrap_or_else(|e| panic!("[{label}] disconnect: {e}"));
}

/// One QoS 1 message to itself over `conn`.
async fn exchange(conn: &Connection, label: &str) {
    let topic = unique_topic(label);
    conn.subscribe((topic.as_str(), QoS::AtLeastOnce))
        .await
        .unwrap_or_else(|e| panic!("[{label}] subscribe: {e}"));
    let mut messages = conn.messages();
    conn.publish(&topic, format!("via the relay: {label}"))
        .qos(QoS::AtLeastOnce)
        .await
        .unwrap_or_else(|e| panic!("[{label}] publish: {e}"));
    let message = with_timeout_ctx(EVENT, format!("[{label}] message"), messages.next())
        .await
        .expect("the message stream ended")
        .unwrap_or_else(|e| panic!("[{label}] message: {e}"));
    assert_eq!(message.topic.as_str(), topic);
    assert_eq!(
        message.payload_str().unwrap(),
        format!("via the relay: {label}")
    );
}

/// `connect()` fails as a connect error, and fast; returns the error.
async fn connect_fails_fast(client: &Client) -> Error {
    let started = Instant::now();
    let result = with_timeout(CLIENT_TIMEOUT * 2, client.connect()).await;
    let took = started.elapsed();
    let err = match result {
        Ok(_) => panic!("connect() succeeded"),
        Err(e) => e,
    };
    assert!(
        took < FAST,
        "took {took:?} (client timeout {CLIENT_TIMEOUT:?}): {err}"
    );
    assert!(err.is_connect(), "{err:?}");
    err
}

/// The `address:port` each client came from, in the order the broker logged them.
fn client_sources(broker: &Broker) -> Vec<String> {
    broker
        .log()
        .lines()
        .filter_map(|l| l.split("New client connected from ").nth(1))
        .filter_map(|rest| rest.split(" as ").next())
        .map(str::to_owned)
        .collect()
}

/// A port of `ip` nothing holds now.
fn free_port_on(ip: Ipv4Addr) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .expect("bind")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// The detail of the loss a `Messages` stream reports, after checking its shape.
fn loss_detail(err: &Error) -> String {
    match err {
        Error::Disconnected(cause) => match &**cause {
            Error::ConnectionLost { detail, .. } => detail.clone(),
            other => panic!("expected ConnectionLost as the cause, got {other:?}"),
        },
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

/// Waits (bounded) until this process has no socket connected to `port`.
async fn upstream_closes(port: u16, within: Duration) {
    let closed = wait_until_async(within, || sockets::own_connections_to(port).is_empty()).await;
    assert!(
        closed,
        "a socket to port {port} is still open {within:?} later: {:?}",
        sockets::own_connections_to(port)
    );
}

// ---------------------------------------------------------------------------------------------
// 1. bind_address / bind_port.

#[tokio::test(flavor = "multi_thread")]
async fn bind_address_and_port_are_the_source_the_broker_sees() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let builder = || {
            Client::builder("127.0.0.1")
                .port(broker.port())
                .timeout(CLIENT_TIMEOUT)
        };

        let port = free_port_on(LOCAL_2);
        let both = builder()
            .bind_address(LOCAL_2.to_string())
            .bind_port(port)
            .build()
            .unwrap();
        round_trip(&both, "bind_both").await;
        assert_eq!(client_sources(&broker), [format!("{LOCAL_2}:{port}")]);

        let address_only = builder().bind_address(LOCAL_2.to_string()).build().unwrap();
        round_trip(&address_only, "bind_address").await;
        let sources = client_sources(&broker);
        assert!(
            sources[1].starts_with(&format!("{LOCAL_2}:")),
            "{sources:?}"
        );

        let port = free_port();
        let port_only = builder().bind_port(port).build().unwrap();
        round_trip(&port_only, "bind_port").await;
        let sources = client_sources(&broker);
        assert_eq!(sources[2..], [format!("127.0.0.1:{port}")], "{sources:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bind_failures_are_bind_errors_at_once() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let builder = || {
            Client::builder("127.0.0.1")
                .port(broker.port())
                .timeout(CLIENT_TIMEOUT)
        };

        // The address and port are taken (by a listener: SO_REUSEADDR does not share it).
        let holder = std::net::TcpListener::bind((LOCAL_2, 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let client = builder()
            .bind_address(LOCAL_2.to_string())
            .bind_port(port)
            .build()
            .unwrap();
        for _ in 0..2 {
            // The same diagnosis twice: the client stays usable after it.
            match connect_fails_fast(&client).await {
                Error::Bind {
                    address, detail, ..
                } => {
                    assert_eq!(address, format!("{LOCAL_2}:{port}"));
                    assert!(detail.contains("in use"), "{detail}");
                }
                other => panic!("expected Error::Bind, got {other:?}"),
            }
        }

        // The address and port already have a connection to the broker: SO_REUSEADDR lets
        // the bind through, the connect cannot reuse the connection's addresses. (What a
        // reconnect with a bind_port meets while its last connection is in TIME_WAIT.)
        let port = free_port_on(LOCAL_2);
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind((LOCAL_2, port).into()).unwrap();
        let _held = socket
            .connect(([127, 0, 0, 1], broker.port()).into())
            .await
            .unwrap();
        let client = builder()
            .bind_address(LOCAL_2.to_string())
            .bind_port(port)
            .build()
            .unwrap();
        match connect_fails_fast(&client).await {
            Error::Bind {
                address, detail, ..
            } => {
                assert_eq!(address, format!("{LOCAL_2}:{port}"));
                assert!(
                    detail.contains(&format!(
                        "already has a connection to 127.0.0.1:{}",
                        broker.port()
                    )),
                    "{detail}"
                );
            }
            other => panic!("expected Error::Bind, got {other:?}"),
        }

        // An address of no local interface (TEST-NET-1).
        let client = builder().bind_address("192.0.2.1").build().unwrap();
        let err = connect_fails_fast(&client).await;
        assert_eq!(
            err.to_string(),
            "Could not bind the local address 192.0.2.1:0: Cannot assign requested address \
             (os error 99)"
        );
        assert!(matches!(err, Error::Bind { .. }), "{err:?}");
        assert!(client_sources(&broker).is_empty(), "{}", broker.log());

        // An IPv6 address to bind, and only an IPv4 address for the broker.
        let client = builder().bind_address("::1").build().unwrap();
        let err = connect_fails_fast(&client).await;
        assert!(matches!(err, Error::ConnectionRefused { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("no address of the family of bind_address"),
            "{err}"
        );
        assert!(client_sources(&broker).is_empty(), "{}", broker.log());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. socket_options.

/// The options of this process's one socket to the broker: (SO_KEEPALIVE, TCP_NODELAY,
/// SO_RCVBUF).
fn upstream_options(broker_port: u16) -> (i32, i32, i32) {
    let socks = sockets::own_connections_to(broker_port);
    assert_eq!(socks.len(), 1, "one relay socket to the broker: {socks:?}");
    let fd = socks[0].0;
    let get = |level, name| sockets::int_option(fd, level, name).expect("getsockopt");
    (
        get(libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        get(libc::IPPROTO_TCP, libc::TCP_NODELAY),
        get(libc::SOL_SOCKET, libc::SO_RCVBUF),
    )
}

/// Runs in a child process: it reads options of its own sockets by their descriptors, and
/// no other test's socket may come and go meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn socket_options_are_set_on_the_dialled_socket() {
    if ran_in_child("relay::socket_options_are_set_on_the_dialled_socket", CHILD) {
        return;
    }
    with_timeout(TEST, async {
        let broker = Broker::start();
        let builder = || {
            Client::builder("127.0.0.1")
                .port(broker.port())
                .timeout(CLIENT_TIMEOUT)
        };
        const RCVBUF: i32 = 48 * 1024;

        // Through the relay without options: the kernel's defaults, and TCP_NODELAY as Paho
        // sets it on its own sockets.
        let plain = builder().bind_address("127.0.0.1").build().unwrap();
        let conn = plain.connect().await.unwrap();
        let (keepalive, nodelay, rcvbuf) = upstream_options(broker.port());
        assert_eq!((keepalive, nodelay), (0, 1));
        assert_ne!(rcvbuf, 2 * RCVBUF);
        conn.disconnect().await.unwrap();
        upstream_closes(broker.port(), EVENT).await;

        let with = |options: Vec<SocketOption>| builder().socket_options(options).build().unwrap();
        let client = with(vec![
            SocketOption::int(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
            SocketOption::int(libc::IPPROTO_TCP, libc::TCP_NODELAY, 0),
            SocketOption::int(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF),
        ]);
        let conn = client.connect().await.unwrap();
        // Linux doubles SO_RCVBUF for its bookkeeping (socket(7)).
        assert_eq!(upstream_options(broker.port()), (1, 0, 2 * RCVBUF));
        exchange(&conn, "socket_options").await;
        conn.disconnect().await.unwrap();
        upstream_closes(broker.port(), EVENT).await;

        // An option the kernel refuses is named, before anything is sent.
        let refused = with(vec![SocketOption::int(libc::SOL_SOCKET, 9999, 1)]);
        match connect_fails_fast_any(&refused).await {
            Error::InvalidArgument(text) => {
                assert!(
                    text.contains("socket option (level 1, name 9999) refused"),
                    "{text}"
                )
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
        assert_eq!(client_sources(&broker).len(), 2, "{}", broker.log());

        // With a proxy, the bound address and the options are the socket to the proxy's.
        let proxy = HttpProxy::start(&[broker.port()]);
        let client = builder()
            .proxy(ProxySettings::http("127.0.0.1", proxy.port()))
            .bind_address(LOCAL_2.to_string())
            .socket_options(vec![
                SocketOption::int(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
                SocketOption::int(libc::SOL_SOCKET, libc::SO_RCVBUF, RCVBUF),
            ])
            .build()
            .unwrap();
        let conn = client.connect().await.unwrap();
        let to_proxy = sockets::own_connections_to(proxy.port());
        assert_eq!(to_proxy.len(), 1, "one socket to the proxy: {to_proxy:?}");
        assert_eq!(*to_proxy[0].1.local.ip(), LOCAL_2, "{to_proxy:?}");
        let (keepalive, _, rcvbuf) = upstream_options(proxy.port());
        assert_eq!((keepalive, rcvbuf), (1, 2 * RCVBUF));
        exchange(&conn, "socket_options via a proxy").await;
        conn.disconnect().await.unwrap();
    })
    .await;
}

/// `connect()` fails fast, with any error.
async fn connect_fails_fast_any(client: &Client) -> Error {
    let started = Instant::now();
    let err = match with_timeout(CLIENT_TIMEOUT * 2, client.connect()).await {
        Ok(_) => panic!("connect() succeeded"),
        Err(e) => e,
    };
    assert!(started.elapsed() < FAST, "{:?}: {err}", started.elapsed());
    err
}

// ---------------------------------------------------------------------------------------------
// 3. SOCKS.

fn socks_client(broker: &Broker, host: &str, proxy: ProxySettings) -> Client {
    Client::builder(host)
        .port(broker.port())
        .timeout(CLIENT_TIMEOUT)
        .proxy(proxy)
        .build()
        .unwrap()
}

/// `Error::Proxy` naming the proxy; returns its detail.
fn proxy_detail(err: Error, proxy_port: u16) -> String {
    match err {
        Error::Proxy { proxy, detail, .. } => {
            assert_eq!(proxy, format!("127.0.0.1:{proxy_port}"));
            detail
        }
        other => panic!("expected Error::Proxy, got {other:?} ({other})"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socks5_through_dante() {
    with_timeout(TEST, async {
        let broker = Broker::builder().wss().start();
        let [closed_port, blocked_port] = free_ports(2)[..] else {
            unreachable!()
        };
        let dante = Dante::start(DANTE_OUT, &[blocked_port]);
        let proxy = || ProxySettings::socks5("127.0.0.1", dante.port());

        round_trip(&socks_client(&broker, "127.0.0.1", proxy()), "socks5_dante").await;
        // TLS and the WebSocket upgrade over the tunnel.
        let wss = Client::builder("localhost")
            .port(broker.wss_port())
            .transport(Transport::WebSockets)
            .tls_params(TlsParams::new().ca_certs(&broker.certs().ca))
            .timeout(CLIENT_TIMEOUT)
            .proxy(proxy())
            .build()
            .unwrap();
        round_trip(&wss, "socks5_dante_wss").await;

        let sources = client_sources(&broker);
        assert_eq!(sources.len(), 2, "{sources:?}");
        for s in &sources {
            assert!(s.starts_with(&format!("{DANTE_OUT}:")), "{sources:?}");
        }
        let log = dante.log();
        assert!(
            log.contains(&format!("127.0.0.1.{}", broker.port())),
            "{log}"
        );

        // Dante's refusals, by name.
        for (port, expected) in [
            (closed_port, "Connection refused"),
            (blocked_port, "not allowed by ruleset"),
        ] {
            let client = Client::builder("127.0.0.1")
                .port(port)
                .timeout(CLIENT_TIMEOUT)
                .proxy(proxy())
                .build()
                .unwrap();
            let detail = proxy_detail(connect_fails_fast(&client).await, dante.port());
            assert!(detail.contains(expected), "{detail}");
        }
        assert!(dante.log().contains("block(1)"), "{}", dante.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn socks5_with_username_and_password_through_microsocks() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let socks = MicroSocks::start(MicroSocksConfig {
            credentials: Some(("relayuser".to_owned(), "relay-Pass:1".to_owned())),
            bind: Some(MICROSOCKS_OUT),
            ..Default::default()
        });
        let proxy = || ProxySettings::socks5("127.0.0.1", socks.port());

        let good = socks_client(
            &broker,
            "127.0.0.1",
            proxy().credentials("relayuser", "relay-Pass:1"),
        );
        round_trip(&good, "socks5_credentials").await;
        let sources = client_sources(&broker);
        assert_eq!(sources.len(), 1, "{sources:?}");
        assert!(
            sources[0].starts_with(&format!("{MICROSOCKS_OUT}:")),
            "{sources:?}"
        );

        let wrong = socks_client(
            &broker,
            "127.0.0.1",
            proxy().credentials("relayuser", "not-the-Pass"),
        );
        let detail = proxy_detail(connect_fails_fast(&wrong).await, socks.port());
        assert!(
            detail.contains("refused the username and password"),
            "{detail}"
        );
        assert!(!detail.contains("not-the-Pass"), "{detail}");

        let anonymous = socks_client(&broker, "127.0.0.1", proxy());
        let detail = proxy_detail(connect_fails_fast(&anonymous).await, socks.port());
        assert!(detail.contains("authentication"), "{detail}");
        assert_eq!(client_sources(&broker).len(), 1, "{}", broker.log());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn socks4_through_dante() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let dante = Dante::start(DANTE_OUT, &[]);
        let client = socks_client(
            &broker,
            "127.0.0.1",
            ProxySettings::socks4("127.0.0.1", dante.port()),
        );
        round_trip(&client, "socks4_dante").await;
        let sources = client_sources(&broker);
        assert_eq!(sources.len(), 1, "{sources:?}");
        assert!(
            sources[0].starts_with(&format!("{DANTE_OUT}:")),
            "{sources:?}"
        );

        // A refused target: SOCKS 4 has one code for every failure.
        let closed = Client::builder("127.0.0.1")
            .port(free_port())
            .timeout(CLIENT_TIMEOUT)
            .proxy(ProxySettings::socks4("127.0.0.1", dante.port()))
            .build()
            .unwrap();
        let detail = proxy_detail(connect_fails_fast(&closed).await, dante.port());
        assert!(detail.contains("rejected"), "{detail}");
    })
    .await;
}

/// Dante 1.4 reads a SOCKS 4a request's marker address 0.0.0.1 as the target, so 4a is
/// checked against the scripted server, which also shows what went over the wire.
#[tokio::test(flavor = "multi_thread")]
async fn socks4a_sends_the_host_name_and_socks4_the_address() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let socks = ScriptedSocks::start();
        let proxy = || ProxySettings::socks4("127.0.0.1", socks.port());
        round_trip(&socks_client(&broker, "localhost", proxy()), "socks4a").await;
        round_trip(
            &socks_client(&broker, "127.0.0.1", proxy().user_id("relay-user")),
            "socks4",
        )
        .await;
        assert_eq!(
            socks.requests(),
            [
                SocksRequest {
                    version: 4,
                    socks4a: true,
                    target: SocksTarget::Name("localhost".to_owned()),
                    port: broker.port(),
                    user_id: None,
                },
                SocksRequest {
                    version: 4,
                    socks4a: false,
                    target: SocksTarget::Ip("127.0.0.1".parse().unwrap()),
                    port: broker.port(),
                    user_id: Some("relay-user".to_owned()),
                },
            ]
        );
    })
    .await;
}

/// A host name goes to a SOCKS 5 proxy as a name (`DOMAINNAME`), for the proxy to resolve:
/// seen on the wire by the scripted server, and proven with a real one by a name only the
/// proxy can resolve (microsocks in a private mount namespace with its own /etc/hosts).
#[tokio::test(flavor = "multi_thread")]
async fn socks5_resolves_host_names_at_the_proxy() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let scripted = ScriptedSocks::start();
        let proxy = ProxySettings::socks5("127.0.0.1", scripted.port());
        round_trip(
            &socks_client(&broker, "localhost", proxy.clone()),
            "socks5_name",
        )
        .await;
        round_trip(&socks_client(&broker, "127.0.0.1", proxy), "socks5_ip").await;
        let targets: Vec<(u8, SocksTarget)> = scripted
            .requests()
            .into_iter()
            .map(|r| (r.version, r.target))
            .collect();
        assert_eq!(
            targets,
            [
                (5, SocksTarget::Name("localhost".to_owned())),
                (5, SocksTarget::Ip("127.0.0.1".parse().unwrap())),
            ]
        );

        const PROXY_ONLY: &str = "broker.relay-test.invalid";
        let direct = Client::builder(PROXY_ONLY)
            .port(broker.port())
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let err = with_timeout(CLIENT_TIMEOUT * 2, direct.connect())
            .await
            .unwrap_err();
        // (A timeout where no DNS server answers: the name did not resolve either.)
        assert!(
            matches!(err, Error::Dns { .. } | Error::Timeout),
            "this process must not resolve {PROXY_ONLY}: {err:?}"
        );
        let socks = MicroSocks::start(MicroSocksConfig {
            bind: Some(MICROSOCKS_OUT),
            private_hosts: vec![(PROXY_ONLY.to_owned(), Ipv4Addr::LOCALHOST)],
            ..Default::default()
        });
        let client = socks_client(
            &broker,
            PROXY_ONLY,
            ProxySettings::socks5("127.0.0.1", socks.port()),
        );
        round_trip(&client, "socks5_remote_dns").await;
        let sources = client_sources(&broker);
        assert!(
            sources
                .last()
                .is_some_and(|s| s.starts_with(&format!("{MICROSOCKS_OUT}:"))),
            "{sources:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. TLS done by the relay.

/// TLS through the relay: the test CA, TLS 1.3 pinned.
fn pinned_tls13() -> TlsParams {
    TlsParams::new()
        .ca_certs(&Certs::shared().ca)
        .tls_version(TlsVersion::Tls13)
}

fn tls_builder(port: u16) -> ClientBuilder {
    Client::builder("localhost")
        .port(port)
        .timeout(CLIENT_TIMEOUT)
}

/// `Error::Tls` of `kind`; returns its detail.
fn tls_detail(err: Error, kind: TlsErrorKind) -> String {
    match err {
        Error::Tls {
            kind: got, detail, ..
        } => {
            assert_eq!(got, kind, "{detail}");
            detail
        }
        other => panic!("expected Error::Tls({kind:?}), got {other:?} ({other})"),
    }
}

/// `tls_params` with a pinned version against a TLS-1.2-only and a TLS-1.3-only
/// Mosquitto: the matching pin connects, the other is a TLS error at once. Unpinned, the
/// client connects to both: each failure is the pin's doing.
#[tokio::test(flavor = "multi_thread")]
async fn pinned_tls_version_against_tls12_and_tls13_only_listeners() {
    with_timeout(TEST, async {
        let tls12 = Broker::builder().tls().tls12_only().start();
        let tls13 = Broker::builder().tls().tls_version("tlsv1.3").start();
        let params = |version: Option<TlsVersion>| {
            let p = TlsParams::new().ca_certs(&Certs::shared().ca);
            match version {
                Some(v) => p.tls_version(v),
                None => p,
            }
        };
        for (broker, good, bad, label) in [
            (&tls12, TlsVersion::Tls12, TlsVersion::Tls13, "tls12_only"),
            (&tls13, TlsVersion::Tls13, TlsVersion::Tls12, "tls13_only"),
        ] {
            let port = broker.tls_port();
            round_trip(
                &tls_builder(port).tls_params(params(None)).build().unwrap(),
                &format!("{label}_unpinned"),
            )
            .await;
            round_trip(
                &tls_builder(port)
                    .tls_params(params(Some(good)))
                    .build()
                    .unwrap(),
                &format!("{label}_pinned_{good:?}"),
            )
            .await;
            let client = tls_builder(port)
                .tls_params(params(Some(bad)))
                .build()
                .unwrap();
            let detail = tls_detail(connect_fails_fast(&client).await, TlsErrorKind::Handshake);
            assert!(detail.contains("protocol version"), "{label}: {detail}");
            assert_eq!(client_sources(broker).len(), 2, "{}", broker.log());
        }
    })
    .await;
}

/// A verification failure in the relay's own handshake is a typed TLS error, through a
/// proxy as well.
#[tokio::test(flavor = "multi_thread")]
async fn tls_verification_failures_through_the_relay_are_typed() {
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let dante = Dante::start(DANTE_OUT, &[]);
        let wrong_ca = || TlsParams::new().ca_certs(&Certs::shared().other_ca);
        let pinned = tls_builder(broker.tls_port())
            .tls_params(wrong_ca().tls_version(TlsVersion::Tls13))
            .build()
            .unwrap();
        let detail = tls_detail(connect_fails_fast(&pinned).await, TlsErrorKind::UnknownCa);
        assert!(detail.contains("certificate"), "{detail}");
        let proxied = tls_builder(broker.tls_port())
            .tls_params(wrong_ca())
            .proxy(ProxySettings::socks5("127.0.0.1", dante.port()))
            .build()
            .unwrap();
        tls_detail(connect_fails_fast(&proxied).await, TlsErrorKind::UnknownCa);
        assert!(client_sources(&broker).is_empty());
    })
    .await;
}

/// A TLS 1.3 server that asked for a client certificate judges it only after the
/// handshake, so the relay waits for the server's first record before it writes the
/// CONNECT. A server that then sends nothing (no session tickets; here one that takes a
/// client without a certificate) costs that wait — twice the handshake's duration and
/// 50 ms — not the connect's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_tls13_server_that_asked_for_a_certificate_costs_a_bounded_wait() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let front = TlsFront::tls13_asking_for_a_certificate_without_tickets(
            Certs::shared(),
            broker.port(),
        );
        let client = tls_builder(front.port)
            .tls_params(pinned_tls13())
            .build()
            .unwrap();
        let started = Instant::now();
        let conn = with_timeout(CLIENT_TIMEOUT * 2, client.connect())
            .await
            .unwrap_or_else(|e| panic!("connect: {e} ({e:?})"));
        let took = started.elapsed();
        // The wait's floor is its slack (nothing arrives to end it); its ceiling is far
        // below the client's timeout of 10 s: half of it, as the handshakes it is made of
        // (the OpenSSL server runs in this process) slow down on a loaded machine.
        assert!(
            took >= Duration::from_millis(50) && took < CLIENT_TIMEOUT / 2,
            "connect took {took:?}"
        );
        exchange(&conn, "silent_tls13").await;
        conn.disconnect().await.unwrap();
        assert_eq!(
            front.handshakes(),
            [Ok(Handshake {
                suite: "TLS_AES_256_GCM_SHA384".to_owned(),
                client_certificate: false,
            })]
        );
    })
    .await;
}

#[cfg(feature = "tls-context")]
mod tls_context {
    use super::*;
    use crate::support::certs::{ca_in_memory, client_cert_in_memory, untrusted_ca_in_memory};
    use openssl::pkey::{PKey, Private};
    use openssl::ssl::{SslConnector, SslContext, SslMethod, SslVersion};
    use openssl::x509::X509;

    /// A client context made in memory: trusts `ca`, presents `identity` if given.
    fn context(
        ca: &X509,
        identity: Option<&(X509, PKey<Private>)>,
        min_version: Option<SslVersion>,
    ) -> SslContext {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.cert_store_mut().add_cert(ca.clone()).unwrap();
        if let Some((cert, key)) = identity {
            b.set_certificate(cert).unwrap();
            b.set_private_key(key).unwrap();
        }
        b.set_min_proto_version(min_version).unwrap();
        b.build().into_context()
    }

    /// Mutual TLS with a CA and a client certificate that exist only in memory: the broker
    /// (`use_identity_as_username`) logs the certificate's name as the client's user name.
    #[tokio::test(flavor = "multi_thread")]
    async fn tls_context_in_memory_mutual_tls() {
        with_timeout(TEST, async {
            let broker = Broker::builder()
                .mutual_tls()
                .extra_listener_config("use_identity_as_username true")
                .start();
            let ca = ca_in_memory();
            const CN: &str = "aiomqtt-in-memory-client";
            let identity = client_cert_in_memory(CN, &ca);
            let client = |ctx| {
                tls_builder(broker.mtls_port())
                    .tls_context(ctx)
                    .build()
                    .unwrap()
            };

            round_trip(
                &client(context(&ca.0, Some(&identity), None)),
                "tls_context_mtls",
            )
            .await;
            assert!(
                broker.log().contains(&format!("u'{CN}'")),
                "{}",
                broker.log()
            );

            // No client certificate, or one from a CA the broker does not trust.
            let err = connect_fails_fast(&client(context(&ca.0, None, None))).await;
            tls_detail(err, TlsErrorKind::ClientCertificateRejected);
            let stranger = client_cert_in_memory(CN, &untrusted_ca_in_memory());
            let err = connect_fails_fast(&client(context(&ca.0, Some(&stranger), None))).await;
            tls_detail(err, TlsErrorKind::ClientCertificateRejected);
            // A context that trusts another CA: the relay's verification says which.
            let other = untrusted_ca_in_memory();
            let err = connect_fails_fast(&client(context(&other.0, Some(&identity), None))).await;
            let detail = tls_detail(err, TlsErrorKind::UnknownCa);
            assert!(detail.contains("certificate"), "{detail}");
            assert_eq!(client_sources(&broker).len(), 1, "{}", broker.log());
        })
        .await;
    }

    /// With a context the host name is still verified (the context verifies), and
    /// `tls_insecure` skips only that check.
    #[tokio::test(flavor = "multi_thread")]
    async fn tls_context_checks_the_host_name_unless_tls_insecure() {
        with_timeout(TEST, async {
            let broker = Broker::builder()
                .tls()
                .server_cert(ServerCert::WrongHost)
                .start();
            let ca = ca_in_memory();
            let builder = || tls_builder(broker.tls_port()).tls_context(context(&ca.0, None, None));
            let detail = tls_detail(
                connect_fails_fast(&builder().build().unwrap()).await,
                TlsErrorKind::HostnameMismatch,
            );
            assert!(detail.contains("hostname"), "{detail}");
            round_trip(
                &builder().tls_insecure(true).build().unwrap(),
                "tls_context_insecure",
            )
            .await;
        })
        .await;
    }

    /// A context bounded to TLS 1.3 and up against a TLS-1.2-only Mosquitto fails as a TLS
    /// error at once; the same context without the bound connects.
    #[tokio::test(flavor = "multi_thread")]
    async fn tls_context_tls13_minimum_against_a_tls12_only_listener() {
        with_timeout(TEST, async {
            let broker = Broker::builder().tls().tls12_only().start();
            let ca = ca_in_memory();
            let client = |min| {
                tls_builder(broker.tls_port())
                    .tls_context(context(&ca.0, None, min))
                    .build()
                    .unwrap()
            };
            round_trip(&client(None), "tls_context_unbounded").await;
            let detail = tls_detail(
                connect_fails_fast(&client(Some(SslVersion::TLS1_3))).await,
                TlsErrorKind::Handshake,
            );
            assert!(detail.contains("protocol version"), "{detail}");
            assert_eq!(client_sources(&broker).len(), 1);
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------------
// 5. A refused WebSocket upgrade.

/// An HTTP server that answers every request with `status` and then keeps the connection
/// open: only the status can end the client's wait. Records each request head.
struct HttpRefuser {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl HttpRefuser {
    async fn start(status: &'static str) -> HttpRefuser {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requests.clone();
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                held.push(stream);
            }
        });
        HttpRefuser {
            port,
            requests,
            accept,
        }
    }
}

impl Drop for HttpRefuser {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_websocket_upgrade_is_a_websocket_error_at_once() {
    with_timeout(TEST, async {
        let server = HttpRefuser::start("403 Forbidden").await;
        let client = Client::builder("127.0.0.1")
            .port(server.port)
            .transport(Transport::WebSockets)
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let started = Instant::now();
        let err = client.connect().await.unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}: {err}");
        match &err {
            Error::WebSocket { status, detail, .. } => {
                assert_eq!(*status, Some(403));
                assert_eq!(detail, "Forbidden");
            }
            other => panic!("expected Error::WebSocket, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "WebSocket upgrade refused with HTTP 403: Forbidden"
        );
        let requests = server.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "{requests:?}");
        assert!(
            requests[0].starts_with("GET /mqtt HTTP/1.1\r\n"),
            "{requests:?}"
        );
        assert!(requests[0].contains("Upgrade: websocket"), "{requests:?}");
        eprintln!("refused WebSocket upgrade reported in {took:?}");
    })
    .await;
}

/// An HTTP proxy whose 200 answers carry 40 headers (more than a fixed 32-slot parse
/// held): the tunnel is accepted and carries MQTT.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_proxy_answer_with_many_headers_is_accepted() {
    with_timeout(TEST, async {
        let broker = Broker::start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_port = listener.local_addr().unwrap().port();
        let broker_port = broker.port();
        let proxy = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    // The CONNECT request, up to its blank line.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let mut answer = b"HTTP/1.1 200 Connection established\r\n".to_vec();
                    for i in 0..40 {
                        answer.extend(format!("X-Header-{i}: {i}\r\n").as_bytes());
                    }
                    answer.extend(b"\r\n");
                    client.write_all(&answer).await.unwrap();
                    let mut upstream = tokio::net::TcpStream::connect(("127.0.0.1", broker_port))
                        .await
                        .unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        let client = Client::builder("127.0.0.1")
            .port(broker.port())
            .timeout(CLIENT_TIMEOUT)
            .proxy(ProxySettings::http("127.0.0.1", proxy_port))
            .build()
            .unwrap();
        round_trip(&client, "many_proxy_headers").await;
        proxy.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. Unix sockets.

/// Paho C's own Unix-socket connect takes ~1 s (ENGINE.md 26); through the relay it takes
/// milliseconds: the median of five under 200 ms, and none near Paho's second.
#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_connects_in_milliseconds() {
    with_timeout(TEST, async {
        let broker = Broker::builder().unix_socket().start();
        let client = Client::builder(broker.unix_path().to_str().unwrap())
            .transport(Transport::Unix)
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        let mut times = Vec::new();
        for i in 0..5 {
            let started = Instant::now();
            let conn = client.connect().await.unwrap();
            times.push(started.elapsed());
            if i == 0 {
                exchange(&conn, "unix").await;
            }
            conn.disconnect().await.unwrap();
        }
        eprintln!("Unix-socket connect times: {times:?}");
        let mut sorted = times.clone();
        sorted.sort();
        assert!(sorted[2] < Duration::from_millis(200), "{times:?}");
        assert!(sorted[4] < Duration::from_millis(800), "{times:?}");
    })
    .await;
}

/// A link with nothing of ours above it (here: TCP bound with `bind_address`) is handed to
/// the engine once dialled: the process then holds one socket to the broker and none to
/// a private endpoint, and 2,000 QoS 1 round trips run without the relay's thread (a
/// carried link wakes it at least once per packet and direction).
#[tokio::test(flavor = "multi_thread")]
async fn a_bare_link_is_handed_to_the_engine() {
    if ran_in_child("relay::a_bare_link_is_handed_to_the_engine", CHILD) {
        return;
    }
    with_timeout(TEST, async {
        let broker = Broker::start();
        let client = Client::builder("127.0.0.1")
            .port(broker.port())
            .bind_address("127.0.0.1")
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        runs_without_the_relay(&client, broker.port(), "handed").await;
    })
    .await;
}

/// TLS the relay does itself (here: a pinned TLS version) on a bare socket is handed to
/// the engine with the socket once established: as for a bare link, one socket to the
/// broker, no private endpoint, and no relay thread per packet; the messages go through
/// the TLS session (the broker's listener speaks nothing else).
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_link_is_handed_to_the_engine() {
    if ran_in_child("relay::a_tls_link_is_handed_to_the_engine", CHILD) {
        return;
    }
    with_timeout(TEST, async {
        let broker = Broker::builder().tls().start();
        let client = tls_builder(broker.tls_port())
            .tls_params(pinned_tls13())
            .build()
            .unwrap();
        runs_without_the_relay(&client, broker.tls_port(), "handed-tls").await;
    })
    .await;
}

/// Connects `client` (whose broker listens on `port`), checks that the link was handed to
/// the engine and that 2,000 QoS 1 round trips run without the relay's thread.
async fn runs_without_the_relay(client: &Client, port: u16, label: &str) {
    {
        let conn = client.connect().await.unwrap();
        exchange(&conn, label).await;
        let own = sockets::own_tcp();
        let to_broker: Vec<_> = own
            .iter()
            .filter(|(_, e)| e.remote.port() == port)
            .collect();
        assert_eq!(to_broker.len(), 1, "{own:?}");
        // Every descriptor of it (Paho's and the relay's) is close-on-exec: a child
        // process started later does not hold the broker's connection open.
        let descriptors = sockets::descriptors_of(to_broker[0].1.inode);
        assert_eq!(
            descriptors.len(),
            2,
            "Paho's and the relay's: {descriptors:?}"
        );
        for fd in descriptors {
            // SAFETY: F_GETFD reads a descriptor's flags; `fd` is open.
            #[allow(unsafe_code)]
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(
                flags >= 0 && flags & libc::FD_CLOEXEC != 0,
                "fd {fd}: {flags}"
            );
        }
        // Every other TCP socket of this process: none may be a connection between two of
        // its own sockets (Paho's end of a private endpoint and the relay's).
        let ports: Vec<u16> = own.iter().map(|(_, e)| e.local.port()).collect();
        let internal: Vec<_> = own
            .iter()
            .filter(|(_, e)| e.state != sockets::LISTEN && ports.contains(&e.remote.port()))
            .collect();
        assert!(internal.is_empty(), "{internal:?}");

        let topic = unique_topic(&format!("{label}-burst"));
        conn.subscribe((topic.as_str(), QoS::AtLeastOnce))
            .await
            .unwrap();
        let mut messages = conn.messages();
        let runs = || {
            sockets::thread_schedstat("aiomqtt-relay")
                .expect("the relay thread")
                .1
        };
        let before = runs();
        const ROUND_TRIPS: usize = 2000;
        for i in 0..ROUND_TRIPS {
            conn.publish(&topic, i.to_string())
                .qos(QoS::AtLeastOnce)
                .await
                .unwrap();
            with_timeout_ctx(EVENT, "a message", messages.next())
                .await
                .expect("the message stream ended")
                .unwrap();
        }
        let woken = runs() - before;
        eprintln!("relay thread ran {woken} times over {ROUND_TRIPS} round trips");
        assert!(woken < 100, "the relay thread ran {woken} times");
        conn.disconnect().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// 7. The private endpoint.

/// The MQTT CONNECT a foreign process sends to the endpoint (3.1.1, clean, keepalive 60,
/// empty client id).
const PROBE_CONNECT: &str = r"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";

/// Connects to 127.0.0.1:`port` from another process (through `prefix`, e.g. `setpriv`
/// for another user), sends a CONNECT and reports how many bytes came back before the
/// connection ended (a relayed broker answers with a CONNACK and keeps it open).
fn probe_from_another_process(prefix: &[&str], port: u16) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} || {{ echo connect-failed; exit 0; }}; \
         printf '{PROBE_CONNECT}' >&3 2>/dev/null; \
         n=$(timeout 5 cat <&3 2>/dev/null | wc -c); echo \"received=$n\""
    );
    let mut cmd = Command::new(prefix.first().copied().unwrap_or("bash"));
    if prefix.is_empty() {
        cmd.args(["-c", &script]);
    } else {
        cmd.args(&prefix[1..]).args(["bash", "-c", &script]);
    }
    let out = run_with_timeout(&mut cmd, Duration::from_secs(10));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// How many of this process's descriptors are open on the file `path` (by any name).
fn opened(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(path) else {
        return 0;
    };
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::metadata(e.path())
                        .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
                })
                .count()
        })
        .unwrap_or(0)
}

/// Holds Paho back: a FIFO in place of a CA file, which Paho reads under its global
/// mutex. Held read-write here, the FIFO lets Paho's open() through and blocks its
/// read() until this descriptor is closed: on [`Stall::release`], or on drop (a failing
/// test must not leave Paho's threads blocked, or the process could not end).
struct Stall {
    /// The CA file's path, a FIFO while held.
    path: PathBuf,
    /// The CA file's content, put back on release.
    content: Vec<u8>,
    holder: Option<std::fs::File>,
}

impl Stall {
    /// Replaces the file `ca` (already validated by `build()`) with a held FIFO.
    fn replace(ca: &Path) -> Stall {
        let content = std::fs::read(ca).unwrap();
        let fifo = ca.with_extension("fifo");
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo");
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        std::fs::rename(&fifo, ca).unwrap();
        Stall {
            path: ca.to_owned(),
            content,
            holder: Some(holder),
        }
    }

    /// Whether Paho has opened the FIFO (besides this holder).
    fn reached(&self) -> bool {
        opened(&self.path) >= 2
    }

    /// The path becomes the CA file again (for whoever opens it next: the facade's
    /// diagnosis of the failed connect reads it), then Paho's read of the FIFO ends.
    fn release(&mut self) {
        if let Some(holder) = self.holder.take() {
            let file = self.path.with_extension("again");
            let _ = std::fs::write(&file, &self.content);
            let _ = std::fs::rename(&file, &self.path);
            drop(holder);
        }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.release();
    }
}

/// The endpoint exists from the end of the relay's dial until Paho connects to it, which
/// on loopback is a millisecond or so. To look at it, the test holds Paho back: a TLS
/// client without the relay connects, and Paho loads its CA file while it holds its
/// process-wide mutex (as it resolves host names, ENGINE.md 11); that file is a FIFO the
/// test holds. Every Paho call of the process waits meanwhile, and the relayed client's
/// endpoint listens. Then:
/// - other processes (as root, and as `nobody`) connect to the endpoint and send a
///   CONNECT: they get no byte back, the relay logs each refusal, the broker sees nothing,
///   and the endpoint goes on listening for Paho;
/// - the FIFO is released: Paho connects to the endpoint and the connection works;
/// - the endpoint no longer accepts (a second connection, even from this process, is
///   refused), and after the disconnect nothing of this process is left on its port.
///
/// Runs in a child process: Paho's mutex is held for the whole process.
#[tokio::test(flavor = "multi_thread")]
async fn the_private_endpoint_is_private() {
    if ran_in_child("relay::the_private_endpoint_is_private", CHILD) {
        return;
    }
    with_timeout(TEST, endpoint_case()).await;
}

async fn endpoint_case() {
    init_logging();
    let broker = Broker::builder().tls().start();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::copy(&broker.certs().ca, &ca).unwrap();
    let direct = tls_builder(broker.tls_port())
        .tls_params(TlsParams::new().ca_certs(&ca))
        .build()
        .unwrap();

    // The relayed client connects once first: its engine exists then (creating one takes
    // Paho's mutex too).
    let relayed_client = Client::builder("127.0.0.1")
        .port(broker.port())
        .bind_address("127.0.0.1")
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    relayed_client
        .connect()
        .await
        .unwrap()
        .disconnect()
        .await
        .unwrap();
    assert!(
        wait_until_async(EVENT, || sockets::own_tcp().is_empty()).await,
        "{:?}",
        sockets::own_tcp()
    );
    let clients_before = client_sources(&broker).len();

    let mut stall = Stall::replace(&ca);
    let stalled = tokio::spawn(async move { direct.connect().await.map(drop) });
    assert!(
        wait_until_async(EVENT, || stall.reached()).await,
        "Paho never opened the CA file: {:?}",
        sockets::fd_targets()
    );

    let relayed = tokio::spawn(async move { relayed_client.connect().await });
    let mut endpoint = None;
    let found = wait_until_async(EVENT, || {
        let listening: Vec<u16> = sockets::own_listeners()
            .into_iter()
            .map(|(_, e)| e.local.port())
            .collect();
        endpoint = listening.first().copied();
        listening.len() == 1
    })
    .await;
    assert!(found, "no endpoint: {:?}", sockets::own_tcp());
    let endpoint = endpoint.unwrap();
    assert!(!relayed.is_finished(), "Paho was not held back");

    // Other processes: the same user, and another.
    for (who, prefix) in [
        ("root", vec![]),
        (
            "nobody",
            vec![
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
            ],
        ),
    ] {
        let outcome = probe_from_another_process(&prefix, endpoint);
        assert_eq!(outcome, "received=0", "{who}");
    }
    let refusals = || {
        all_records()
            .iter()
            .filter(|r| r.contains("refused a connection to a private relay endpoint"))
            .count()
    };
    assert!(
        wait_until_async(EVENT, || refusals() == 2).await,
        "{:#?}",
        all_records()
    );
    assert!(
        sockets::own_listeners()
            .iter()
            .any(|(_, e)| e.local.port() == endpoint),
        "the endpoint stopped listening after the refusals"
    );
    assert!(!relayed.is_finished(), "Paho was not held back");
    assert_eq!(
        client_sources(&broker).len(),
        clients_before,
        "{}",
        broker.log()
    );

    stall.release();
    let conn = with_timeout(CLIENT_TIMEOUT, relayed)
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            panic!(
                "the relayed client connects once Paho may: {e:?}\n{:#?}\n{}",
                all_records(),
                broker.log()
            )
        });
    exchange(&conn, "endpoint").await;
    assert_eq!(
        client_sources(&broker).len(),
        clients_before + 1,
        "{}",
        broker.log()
    );

    // The endpoint took its one connection and is gone: even this process is refused.
    let second = std::net::TcpStream::connect(("127.0.0.1", endpoint));
    assert!(
        second
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{second:?}\nlistening on the port: {:?} (this process's: {})\n{:#?}",
        sockets::tcp_table()
            .into_iter()
            .filter(|e| e.state == sockets::LISTEN && e.local.port() == endpoint)
            .collect::<Vec<_>>(),
        sockets::process_listens_on(std::process::id(), endpoint),
        all_records()
    );
    conn.disconnect().await.unwrap();
    assert!(
        wait_until_async(EVENT, || sockets::own_sockets_on(endpoint).is_empty()).await,
        "{:?}",
        sockets::own_sockets_on(endpoint)
    );
    // The direct client read an empty CA file: whatever it says, it ends.
    let _ = with_timeout(CLIENT_TIMEOUT * 2, stalled).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Lifecycle.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    /// Plain TCP dialled by the relay (here: because of `bind_address`) and handed to the
    /// engine.
    Tcp,
    /// TLS done by the relay (here: because of a pinned version) and handed to the engine
    /// with the socket.
    Tls,
    /// A WebSocket.
    Ws,
}

impl Link {
    /// Handed to the engine, not carried by the relay.
    fn handed(self) -> bool {
        matches!(self, Link::Tcp | Link::Tls)
    }
}

/// A broker, a fault proxy in front of the listener `link` needs, and a client through the
/// relay to the proxy.
async fn behind_fault_proxy(
    link: Link,
    keepalive: Duration,
    id: &str,
) -> (Broker, FaultProxy, Client) {
    let broker = match link {
        Link::Tcp => Broker::start(),
        Link::Tls => Broker::builder().tls().start(),
        Link::Ws => Broker::builder().websockets().start(),
    };
    let target = match link {
        Link::Tcp => broker.port(),
        Link::Tls => broker.tls_port(),
        Link::Ws => broker.ws_port(),
    };
    let proxy = FaultProxy::start(target).await;
    // The broker's certificate names localhost.
    let host = if link == Link::Tls {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let b = Client::builder(host)
        .port(proxy.port())
        .identifier(id)
        .keepalive(keepalive)
        .timeout(CLIENT_TIMEOUT);
    let client = match link {
        Link::Tcp => b.bind_address("127.0.0.1"),
        Link::Tls => b.tls_params(pinned_tls13()),
        Link::Ws => b.transport(Transport::WebSockets),
    }
    .build()
    .unwrap();
    (broker, proxy, client)
}

/// The broker resets (or closes) the link: the client hears of it at once, by its right
/// name, and the relay's socket is gone.
async fn broker_side_end(link: Link, reset: bool) {
    let id = format!("relay-end-{link:?}-{reset}-{}", std::process::id());
    let (_broker, proxy, client) = behind_fault_proxy(link, Duration::from_secs(60), &id).await;
    let conn = client.connect().await.unwrap();
    let mut messages = conn.messages();
    let started = Instant::now();
    let cut = if reset { proxy.cut() } else { proxy.cut_fin() };
    assert_eq!(cut, 1);
    let err = with_timeout_ctx(FAST, "the loss", messages.next())
        .await
        .expect("an error before the end")
        .unwrap_err();
    let took = started.elapsed();
    let detail = loss_detail(&err);
    // A handed-over link: the socket's state after Paho's close says the broker or the
    // network ended it, not always which way (see `handoff::Held::end`); a carried one
    // (WebSocket) says exactly.
    let ended_by_peer = "the broker or the network ended the connection (closed or reset)";
    if reset {
        assert!(
            (detail.starts_with("the connection to the broker failed:")
                && detail.contains("reset"))
                || (link.handed() && detail == ended_by_peer),
            "{link:?}: {detail}"
        );
    } else {
        assert!(
            detail == "the broker closed the connection"
                || (link.handed() && detail == ended_by_peer),
            "{link:?}: {detail}"
        );
    }
    eprintln!(
        "{link:?} link, broker side {}: loss seen after {took:?}",
        if reset { "reset" } else { "close" }
    );
    upstream_closes(proxy.port(), FAST).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_reset_reaches_the_client_at_once_tcp() {
    with_timeout(TEST, broker_side_end(Link::Tcp, true)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_reset_reaches_the_client_at_once_tls() {
    with_timeout(TEST, broker_side_end(Link::Tls, true)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_reset_reaches_the_client_at_once_websocket() {
    with_timeout(TEST, broker_side_end(Link::Ws, true)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_close_reaches_the_client_at_once_tcp() {
    with_timeout(TEST, broker_side_end(Link::Tcp, false)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_close_reaches_the_client_at_once_tls() {
    with_timeout(TEST, broker_side_end(Link::Tls, false)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_close_reaches_the_client_at_once_websocket() {
    with_timeout(TEST, broker_side_end(Link::Ws, false)).await;
}

/// The client's close goes upstream as a close, after its DISCONNECT: the broker reads the
/// DISCONNECT (no Will), and the relay's sockets are gone.
async fn client_side_close(link: Link) {
    let id = format!("relay-close-{link:?}-{}", std::process::id());
    let (broker, proxy, client) = behind_fault_proxy(link, Duration::from_secs(60), &id).await;
    let conn = client.connect().await.unwrap();
    exchange(&conn, "client_close").await;
    conn.disconnect().await.unwrap();
    broker.wait_for_log(&format!("Client {id} disconnected."), EVENT);
    upstream_closes(proxy.port(), FAST).await;
    assert!(
        wait_until_async(FAST, || proxy.active() == 0).await,
        "the proxy still carries {} connection(s)",
        proxy.active()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_close_closes_the_upstream_tcp() {
    with_timeout(TEST, client_side_close(Link::Tcp)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_close_closes_the_upstream_tls() {
    with_timeout(TEST, client_side_close(Link::Tls)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_close_closes_the_upstream_websocket() {
    with_timeout(TEST, client_side_close(Link::Ws)).await;
}

/// Keep-alive through the relay: pings cross it (the broker logs them), and a partition
/// behind it (both directions blackholed at the fault proxy) is detected by the engine
/// within [`loss_detection_bound`]. The relay then lets go of its socket to the dead peer too,
/// though the peer never answers its close (the broker is stopped as well: it cannot
/// time the client out and close its side).
async fn keepalive_partition(link: Link) {
    const KEEPALIVE: Duration = Duration::from_secs(2);
    let id = format!("relay-keepalive-{link:?}-{}", std::process::id());
    let (mut broker, proxy, client) = behind_fault_proxy(link, KEEPALIVE, &id).await;
    let conn = client.connect().await.unwrap();
    let mut messages = conn.messages();
    let pings = || {
        broker
            .log()
            .matches(&format!("Received PINGREQ from {id}"))
            .count()
    };
    // A ping at most a second after each keepalive (Paho checks at least once a second),
    // and a second for load.
    assert!(
        wait_until_async(
            (KEEPALIVE + Duration::from_secs(1)) * 2 + Duration::from_secs(2),
            || { pings() >= 2 }
        )
        .await,
        "{}",
        broker.log()
    );
    broker.pause();
    proxy.blackhole(true);
    let started = Instant::now();
    let bound = loss_detection_bound(KEEPALIVE);
    let err = with_timeout_ctx(bound + Duration::from_secs(2), "the loss", messages.next())
        .await
        .expect("an error before the end")
        .unwrap_err();
    let took = started.elapsed();
    let detail = loss_detail(&err);
    assert!(detail.contains("keep-alive"), "{detail}");
    eprintln!("{link:?} link, keepalive {KEEPALIVE:?}: partition detected after {took:?}");
    assert!(
        took <= bound,
        "detected after {took:?} (keepalive {KEEPALIVE:?}, bound {bound:?})"
    );
    // The peer never answers the relay's close: the relay gives up on it, bounded.
    upstream_closes(proxy.port(), EVENT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_detects_a_partition_behind_the_relay_tcp() {
    with_timeout(TEST, keepalive_partition(Link::Tcp)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_detects_a_partition_behind_the_relay_tls() {
    with_timeout(TEST, keepalive_partition(Link::Tls)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn keepalive_detects_a_partition_behind_the_relay_websocket() {
    with_timeout(TEST, keepalive_partition(Link::Ws)).await;
}

/// Passes the child's counts on to this test's output.
fn report_counts(child: &ChildRun) {
    for line in child.stderr().lines().filter(|l| l.contains(" cycles in ")) {
        eprintln!("{line}");
    }
}

/// 100 connect/disconnect cycles leave the process with the descriptors and threads it
/// had after the first few (the relay's thread, Paho's, the engine's).
async fn no_leaks_over_cycles(client: &Client, broker: &Broker, label: &str) {
    const WARM_UP: usize = 3;
    const CYCLES: usize = 100;
    for _ in 0..WARM_UP {
        client.connect().await.unwrap().disconnect().await.unwrap();
    }
    // At rest this process has no TCP socket at all (the broker and the proxy are other
    // processes): counts are taken then.
    let at_rest = || async { wait_until_async(EVENT, || sockets::own_tcp().is_empty()).await };
    assert!(at_rest().await, "{:?}", sockets::own_tcp());
    let (fds, threads) = (sockets::fd_count(), sockets::thread_count());
    let (fd_list, thread_list) = (sockets::fd_targets(), sockets::thread_names());
    let started = Instant::now();
    for i in 0..CYCLES {
        let conn = client
            .connect()
            .await
            .unwrap_or_else(|e| panic!("[{label}] cycle {i}: {e}"));
        conn.disconnect().await.unwrap();
    }
    let took = started.elapsed();
    let rested = at_rest().await;
    let (fds_after, threads_after) = (sockets::fd_count(), sockets::thread_count());
    eprintln!(
        "[{label}] {CYCLES} cycles in {took:?}: fds {fds} -> {fds_after}, threads {threads} -> \
         {threads_after}"
    );
    assert!(
        rested && fds_after == fds && threads_after == threads,
        "[{label}] sockets {:?}, fds {fds} -> {fds_after}, threads {threads} -> {threads_after}\n\
         before: {fd_list:#?} {thread_list:?}\nafter: {:#?} {:?}",
        sockets::own_tcp(),
        sockets::fd_targets(),
        sockets::thread_names()
    );
    assert_eq!(
        client_sources(broker).len(),
        WARM_UP + CYCLES,
        "{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_leaks_over_100_websocket_connections() {
    if let Some(child) = isolated("relay::no_leaks_over_100_websocket_connections", CHILD) {
        child.assert_passed();
        report_counts(&child);
        return;
    }
    with_timeout(CYCLES_BOUND, async {
        let broker = Broker::builder().websockets().start();
        let client = Client::builder("127.0.0.1")
            .port(broker.ws_port())
            .transport(Transport::WebSockets)
            .timeout(CLIENT_TIMEOUT)
            .build()
            .unwrap();
        no_leaks_over_cycles(&client, &broker, "websocket").await;
    })
    .await;
}

/// TLS sessions handed to the engine: each is freed by Paho C when it closes the
/// connection, and nothing of the relay's outlives it.
#[tokio::test(flavor = "multi_thread")]
async fn no_leaks_over_100_tls_connections() {
    if let Some(child) = isolated("relay::no_leaks_over_100_tls_connections", CHILD) {
        child.assert_passed();
        report_counts(&child);
        return;
    }
    with_timeout(CYCLES_BOUND, async {
        let broker = Broker::builder().tls().start();
        let client = tls_builder(broker.tls_port())
            .tls_params(pinned_tls13())
            .build()
            .unwrap();
        no_leaks_over_cycles(&client, &broker, "tls").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_leaks_over_100_socks_connections() {
    if let Some(child) = isolated("relay::no_leaks_over_100_socks_connections", CHILD) {
        child.assert_passed();
        report_counts(&child);
        return;
    }
    with_timeout(CYCLES_BOUND, async {
        let broker = Broker::start();
        let dante = Dante::start(DANTE_OUT, &[]);
        let client = socks_client(
            &broker,
            "127.0.0.1",
            ProxySettings::socks5("127.0.0.1", dante.port()),
        );
        no_leaks_over_cycles(&client, &broker, "socks5").await;
    })
    .await;
}

/// A WebSocket server that sends a packet per frame (as some brokers do) may send a frame
/// as large as MQTT's largest packet: a 17 MiB PUBLISH in one frame is delivered, where
/// tungstenite's default bound (16 MiB a frame) would end the connection.
#[tokio::test(flavor = "multi_thread")]
// tungstenite's handshake callback returns its error response by value.
#[allow(clippy::result_large_err)]
async fn a_websocket_frame_larger_than_16_mib_is_delivered() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    with_timeout(TEST, async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let payload = vec![0x5a; 17 << 20];
        let frame = packets::publish(b"big/one", 0, 0, &payload, false, false, None);
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let answer = |_: &Request, mut response: Response| {
                response
                    .headers_mut()
                    .insert("Sec-WebSocket-Protocol", "mqtt".parse().unwrap());
                Ok(response)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(tcp, answer)
                .await
                .unwrap();
            let connect = ws.next().await.unwrap().unwrap();
            assert!(connect.is_binary(), "{connect:?}");
            ws.send(WsMessage::Binary(packets::connack(false, 0, None).into()))
                .await
                .unwrap();
            ws.send(WsMessage::Binary(frame.into())).await.unwrap();
            // Open until the client has the message.
            let _ = finished.await;
        });
        let conn = Client::builder("127.0.0.1")
            .port(port)
            .transport(Transport::WebSockets)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let m = with_timeout(Duration::from_secs(20), conn.messages().next())
            .await
            .expect("a message")
            .expect("the 17 MiB message");
        assert_eq!(m.topic.as_str(), "big/one");
        assert_eq!(m.payload.len(), 17 << 20);
        assert!(m.payload.iter().all(|&b| b == 0x5a));
        let _ = done.send(());
        server.await.unwrap();
    })
    .await;
}

/// A connect cancelled while the relay dials (here: a proxy that never answers) ends the
/// dial: its connection to the proxy closes at once, not at the connect's deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_connect_closes_the_relays_dial() {
    with_timeout(TEST, async {
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = proxy.local_addr().unwrap().port();
        let client = Client::builder("broker.invalid")
            .proxy(ProxySettings::http("127.0.0.1", port))
            .timeout(Duration::from_secs(3600))
            .build()
            .unwrap();
        let (cancelled, accepted) = tokio::join!(
            tokio::time::timeout(Duration::from_millis(300), client.connect()),
            proxy.accept()
        );
        assert!(cancelled.is_err(), "{cancelled:?}");
        let (mut socket, _) = accepted.unwrap();
        // The CONNECT request, then the end of the connection.
        let mut request = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut request)).await;
        assert!(
            matches!(read, Ok(Ok(_))),
            "the dial went on after its connect was cancelled: {read:?}, {:?}",
            String::from_utf8_lossy(&request)
        );
        assert!(request.starts_with(b"CONNECT broker.invalid:1883 "));
    })
    .await;
}
