//! `ClientBuilder::build()` validates every option: an invalid value or combination is
//! rejected naming the option, never ignored.

use std::time::Duration;

use aiomqtt::{
    CertRequirements, CleanStart, Client, Error, Properties, ProtocolVersion, ProxySettings,
    SocketOption, TlsParams, TlsVersion, Transport, Will,
};

fn invalid(result: Result<Client, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(text)) => text,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// `InvalidArgument` whose text names `option`.
fn refused(result: Result<Client, Error>, option: &str) {
    let text = invalid(result);
    assert!(text.contains(option), "{option:?} not named in {text:?}");
}

/// The options Paho C has no hook for are carried by the relay and accepted; combinations
/// that cannot work are refused naming both options.
#[test]
fn relay_options_are_accepted_and_impossible_combinations_named() {
    let b = || Client::builder("localhost");
    b().bind_address("127.0.0.1").build().unwrap();
    b().bind_port(5000).build().unwrap();
    b().socket_options([SocketOption::int(1, 9, 1)])
        .build()
        .unwrap();
    b().proxy(ProxySettings::socks5("p", 1080)).build().unwrap();
    b().proxy(ProxySettings::socks4("p", 1080)).build().unwrap();
    b().tls_params(TlsParams::new().tls_version(TlsVersion::Tls13))
        .build()
        .unwrap();
    // 0 turns keep-alive off (tested on the wire in client.rs).
    b().keepalive(Duration::ZERO).build().unwrap();

    let unix = || b().transport(Transport::Unix);
    let msg = invalid(unix().bind_port(5000).build());
    assert!(msg.contains("bind_port") && msg.contains("Unix"), "{msg}");
    let msg = invalid(unix().socket_options([SocketOption::int(1, 9, 1)]).build());
    assert!(
        msg.contains("socket_options") && msg.contains("Unix"),
        "{msg}"
    );
    let msg = invalid(unix().proxy(ProxySettings::http("p", 3128)).build());
    assert!(msg.contains("proxy") && msg.contains("Unix"), "{msg}");
    let msg = invalid(b().bind_address("not-an-ip").build());
    assert!(msg.contains("bind_address"), "{msg}");
    let msg = invalid(
        b().proxy(ProxySettings::socks4("p", 1080).credentials("user", "password"))
            .build(),
    );
    assert!(msg.contains("SOCKS 4") && msg.contains("password"), "{msg}");
    b().proxy(ProxySettings::socks4("p", 1080).user_id("user"))
        .build()
        .unwrap();
    let msg = invalid(
        b().proxy(ProxySettings::socks5("p", 1080).user_id("user"))
            .build(),
    );
    assert!(msg.contains("user_id is for SOCKS 4"), "{msg}");
    refused(b().tls_insecure(true).build(), "tls_insecure");
}

/// `tls_context` with `tls_params` is refused naming both.
#[cfg(feature = "tls-context")]
#[test]
fn tls_context_and_tls_params_together_are_refused() {
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls())
        .unwrap()
        .build();
    let msg = invalid(
        Client::builder("localhost")
            .tls_context(ctx)
            .tls_params(TlsParams::new())
            .build(),
    );
    assert!(
        msg.contains("tls_params") && msg.contains("tls_context"),
        "{msg}"
    );
}

#[test]
fn protocol_specific_options_are_checked() {
    let b = || Client::builder("localhost");
    assert!(
        invalid(
            b().protocol(ProtocolVersion::V5)
                .clean_session(true)
                .build()
        )
        .contains("clean_start")
    );
    assert!(invalid(b().clean_start(CleanStart::Never).build()).contains("MQTT 5"));
    let props = Properties::new().session_expiry_interval(10);
    assert!(invalid(b().properties(props.clone()).build()).contains("MQTT 5"));
    assert!(
        b().protocol(ProtocolVersion::V5)
            .properties(props)
            .build()
            .is_ok()
    );
    let will = Will::new("w", "x").properties(Properties::new().will_delay_interval(5));
    assert!(invalid(b().will(will.clone()).build()).contains("MQTT 5"));
    assert!(b().protocol(ProtocolVersion::V5).will(will).build().is_ok());
    // A property not allowed in CONNECT.
    let bad = Properties::new().content_type("text/plain");
    refused(
        b().protocol(ProtocolVersion::V5).properties(bad).build(),
        "Content Type property is not allowed in CONNECT",
    );
}

#[test]
fn values_are_validated() {
    let b = || Client::builder("localhost");
    assert!(invalid(b().password("p").build()).contains("username"));
    assert!(invalid(b().identifier("a\0b").build()).contains("NUL"));
    assert!(invalid(b().username("a\0b").build()).contains("NUL"));
    refused(
        b().keepalive(Duration::from_millis(1500)).build(),
        "keepalive",
    );
    refused(
        b().keepalive(Duration::from_secs(65_536)).build(),
        "keepalive",
    );
    refused(b().timeout(Duration::ZERO).build(), "timeout");
    refused(
        b().max_inflight_messages(0).build(),
        "max_inflight_messages",
    );
    refused(
        b().max_concurrent_outgoing_calls(0).build(),
        "max_concurrent_outgoing_calls",
    );
    // Beyond what tokio's semaphore holds: refused, not a panic in connect().
    assert!(invalid(b().max_concurrent_outgoing_calls(usize::MAX).build()).contains("at most"));
    assert!(
        b().max_concurrent_outgoing_calls(usize::MAX >> 3)
            .build()
            .is_ok()
    );
    refused(Client::builder("").build(), "hostname");
    // Nothing a host name can hold; through an HTTP proxy or WebSockets the name would be
    // written into the request as it is.
    for host in [
        "broker\r\nX-Injected: 1",
        "bro ker",
        "broker\t",
        "bro\u{7f}ker",
    ] {
        refused(Client::builder(host).build(), "control character");
    }
    assert!(Client::builder("fe80::1%eth0").build().is_ok());
    // The Will payload has a two-byte length, as the strings do.
    let payload = vec![b'x'; 65_536];
    let text = invalid(b().will(Will::new("w", payload.clone())).build());
    assert!(text.contains("Will payload is 65536 bytes"), "{text}");
    assert!(b().will(Will::new("w", &payload[1..])).build().is_ok());
    // A URL's user information is refused, and its password shown nowhere.
    for host in ["mqtt://user:s3cret@broker", "user:s3cret@broker"] {
        let b = Client::builder(host);
        assert!(!format!("{b:?}").contains("s3cret"), "{b:?}");
        let text = invalid(b.build());
        assert!(
            !text.contains("s3cret") && text.contains("…@broker"),
            "{text}"
        );
    }
    // The Will's topic is validated by build(), Will::new itself is infallible.
    assert!(matches!(
        b().will(Will::new("a/+/b", "x")).build(),
        Err(Error::InvalidTopic { .. })
    ));
    assert!(matches!(
        b().will(Will::new("", "x")).build(),
        Err(Error::InvalidTopic { .. })
    ));
}

#[test]
fn transport_options_are_checked() {
    let b = || Client::builder("localhost");
    assert!(invalid(b().websocket_path("/mqtt").build()).contains("WebSockets"));
    assert!(invalid(b().websocket_headers([("X-A", "1")]).build()).contains("WebSockets"));
    let ws = || b().transport(Transport::WebSockets);
    refused(ws().websocket_path("mqtt").build(), "websocket_path");
    refused(
        ws().websocket_headers([("Bad Header", "1")]).build(),
        "websocket header \"Bad Header\"",
    );
    refused(
        ws().websocket_headers([("X-A", "a\r\nInjected: 1")])
            .build(),
        "websocket header \"X-A\"",
    );
    assert!(
        ws().websocket_path("/ws")
            .websocket_headers([("X-A", "1")])
            .build()
            .is_ok()
    );
    assert!(invalid(b().tls_insecure(true).build()).contains("tls_params"));
    let missing = TlsParams::new().ca_certs("/no/such/ca.pem");
    assert!(invalid(b().tls_params(missing).build()).contains("does not exist"));
    let unix = || Client::builder("/tmp/x.sock").transport(Transport::Unix);
    refused(unix().tls_params(TlsParams::new()).build(), "tls_params");
    refused(
        unix().proxy(ProxySettings::http("p", 3128)).build(),
        "proxy",
    );
    assert!(
        b().tls_params(TlsParams::new().cert_reqs(CertRequirements::None))
            .build()
            .is_ok()
    );
    // Paho C would hand OpenSSL the list's full length past a NUL.
    let alpn = |p: &str| b().tls_params(TlsParams::new().alpn_protocols([p])).build();
    assert!(invalid(alpn("mq\0tt")).contains("NUL"));
    assert!(alpn("mqtt").is_ok());
}

#[test]
fn debug_never_shows_secrets() {
    let client = Client::builder("localhost")
        .username("alice")
        .password("hunter2-secret")
        .tls_params(TlsParams::new().keyfile_password("key-secret-pass"))
        .proxy(ProxySettings::http("proxy", 3128).credentials("bob", "proxy-secret-pw"))
        .build();
    // keyfile_password without keyfile is refused; the error must not leak it either.
    let err = client.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("key-secret-pass"), "{shown}");

    let builder = Client::builder("localhost")
        .username("alice")
        .password("hunter2-secret")
        .proxy(ProxySettings::http("proxy", 3128).credentials("bob", "proxy-secret-pw"));
    let builder_debug = format!("{builder:?}");
    let client = builder.build().unwrap();
    let client_debug = format!("{client:?} {client:#?}");
    for text in [&builder_debug, &client_debug] {
        assert!(text.contains("alice"), "{text}");
        for secret in ["hunter2-secret", "proxy-secret-pw"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert!(text.contains("<redacted>"), "{text}");
    }
}
