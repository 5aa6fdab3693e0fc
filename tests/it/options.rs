//! `ClientBuilder::build()` validates every option: an option the engine cannot
//! honour is rejected with `Error::Unsupported` naming it, never ignored.

use std::time::Duration;

use aiomqtt::{
    CertRequirements, CleanStart, Client, Error, Properties, ProtocolVersion, ProxySettings,
    SocketOption, TlsParams, TlsVersion, Transport, Will,
};

fn unsupported(result: Result<Client, Error>) -> (&'static str, &'static str) {
    match result {
        Err(Error::Unsupported { option, reason }) => (option, reason),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn invalid(result: Result<Client, Error>) -> String {
    match result {
        Err(Error::InvalidArgument(text)) => text,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn engine_limits_are_rejected_by_name() {
    let b = || Client::builder("localhost");
    let (option, reason) = unsupported(b().bind_address("127.0.0.1").build());
    assert_eq!(option, "bind_address");
    assert!(reason.contains("Socket_new"), "{reason}");
    assert_eq!(unsupported(b().bind_port(5000).build()).0, "bind_port");
    let opt = SocketOption {
        level: 1,
        name: 9,
        value: 1i32.to_ne_bytes().to_vec(),
    };
    assert_eq!(
        unsupported(b().socket_options([opt]).build()).0,
        "socket_options"
    );
    let ctx = openssl::ssl::SslContext::builder(openssl::ssl::SslMethod::tls())
        .unwrap()
        .build();
    assert_eq!(unsupported(b().tls_context(ctx).build()).0, "tls_context");
    assert_eq!(
        unsupported(b().proxy(ProxySettings::socks5("p", 1080)).build()).0,
        "proxy"
    );
    assert_eq!(
        unsupported(b().proxy(ProxySettings::socks4("p", 1080)).build()).0,
        "proxy"
    );
    let tls = TlsParams::new().tls_version(TlsVersion::Tls13);
    assert_eq!(
        unsupported(b().tls_params(tls).build()).0,
        "tls_params.tls_version"
    );
    assert_eq!(
        unsupported(b().keepalive(Duration::ZERO).build()).0,
        "keepalive"
    );
    // The message names the option.
    let err = b().bind_port(1).build().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("The `bind_port` option is not supported: "),
        "{err}"
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
    invalid(b().protocol(ProtocolVersion::V5).properties(bad).build());
}

#[test]
fn values_are_validated() {
    let b = || Client::builder("localhost");
    assert!(invalid(b().password("p").build()).contains("username"));
    assert!(invalid(b().identifier("a\0b").build()).contains("NUL"));
    assert!(invalid(b().username("a\0b").build()).contains("NUL"));
    invalid(b().keepalive(Duration::from_millis(1500)).build());
    invalid(b().keepalive(Duration::from_secs(65_536)).build());
    invalid(b().timeout(Duration::ZERO).build());
    invalid(b().max_inflight_messages(0).build());
    invalid(b().max_concurrent_outgoing_calls(0).build());
    invalid(Client::builder("").build());
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
    invalid(ws().websocket_path("mqtt").build());
    invalid(ws().websocket_headers([("Bad Header", "1")]).build());
    invalid(
        ws().websocket_headers([("X-A", "a\r\nInjected: 1")])
            .build(),
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
    invalid(unix().tls_params(TlsParams::new()).build());
    invalid(unix().proxy(ProxySettings::http("p", 3128)).build());
    assert!(
        b().tls_params(TlsParams::new().cert_reqs(CertRequirements::None))
            .build()
            .is_ok()
    );
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
