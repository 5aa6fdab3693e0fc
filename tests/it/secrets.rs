//! No password, key passphrase, proxy password or WebSocket header value in any log
//! record, at any level, from this crate or from the engine (Paho C's trace), nor in
//! errors or `Debug` output.

use std::time::Duration;

use crate::support::socks::{MicroSocks, MicroSocksConfig};
use crate::support::*;
use aiomqtt::{Client, Error, ProtocolVersion, ProxySettings, QoS, TlsParams};

const PASSWORD: &str = "Pa55-w0rd-never-logged";
const PROXY_PASSWORD: &str = "Pr0xy-pa55-never-logged";
const HEADER_SECRET: &str = "Bearer t0ken-never-logged";

/// Every way a secret shows up in a log line: as text, as `Debug` of its bytes
/// (paho-mqtt keeps the password as `Vec<u8>`), in base64 (HTTP Basic auth) and hex.
fn secret_forms(secret: &str) -> Vec<String> {
    let bytes = secret.as_bytes();
    let debug = format!("{bytes:?}");
    vec![
        secret.to_owned(),
        debug.trim_matches(['[', ']']).to_owned(),
        openssl::base64::encode_block(bytes),
        bytes.iter().map(|b| format!("{b:02x}")).collect(),
        bytes.iter().map(|b| format!("{b:02X}")).collect(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn password_never_reaches_any_log_record() {
    // Alone in a child process, so every record of the process is this test's.
    if ran_in_child(
        "secrets::password_never_reaches_any_log_record",
        Duration::from_secs(60),
    ) {
        return;
    }
    // Everything, at TRACE, before the first engine client exists.
    crate::support::logcap::install();

    with_timeout(Duration::from_secs(30), async {
        let broker = Broker::builder()
            .password_file(&[("user", PASSWORD)])
            .start();
        for protocol in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let client = Client::builder("127.0.0.1")
                .port(broker.auth_port())
                .protocol(protocol)
                .username("user")
                .password(PASSWORD)
                .logger("secrets-test")
                .build()
                .unwrap();
            let conn = client.connect().await.unwrap();
            conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
            conn.disconnect().await.unwrap();

            // A refused login: the error carries no secret either.
            let wrong = Client::builder("127.0.0.1")
                .port(broker.auth_port())
                .protocol(protocol)
                .username("user")
                .password(format!("{PASSWORD}-wrong"))
                .logger("secrets-test")
                .build()
                .unwrap();
            let err = wrong.connect().await.unwrap_err();
            assert!(matches!(err, Error::Connect(_)), "{err:?}");
            assert!(!format!("{err} {err:?} {wrong:?}").contains(PASSWORD));
        }

        // The key passphrase: mutual TLS with the encrypted client key.
        let tls_broker = Broker::builder().mutual_tls().start();
        let certs = tls_broker.certs();
        let client = Client::builder("localhost")
            .port(tls_broker.mtls_port())
            .tls_params(
                TlsParams::new()
                    .ca_certs(&certs.ca)
                    .certfile(&certs.client_cert)
                    .keyfile(&certs.client_key_encrypted)
                    .keyfile_password(CLIENT_KEY_PASSPHRASE),
            )
            .logger("secrets-test")
            .build()
            .unwrap();
        assert!(!format!("{client:?}").contains(CLIENT_KEY_PASSPHRASE));
        let conn = client.connect().await.unwrap();
        conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
        conn.disconnect().await.unwrap();

        // The proxy password: through tinyproxy with Basic authentication.
        let proxy = HttpProxy::start_with_auth(&[broker.port()], "proxyuser", PROXY_PASSWORD);
        let client = Client::builder("127.0.0.1")
            .port(broker.port())
            .proxy(
                ProxySettings::http("127.0.0.1", proxy.port())
                    .credentials("proxyuser", PROXY_PASSWORD),
            )
            .logger("secrets-test")
            .build()
            .unwrap();
        assert!(!format!("{client:?}").contains(PROXY_PASSWORD));
        let conn = client.connect().await.unwrap();
        conn.publish("t", "via proxy")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        // Wrong proxy credentials: the error names the proxy's answer, not the secret.
        let wrong = Client::builder("127.0.0.1")
            .port(broker.port())
            .timeout(Duration::from_secs(5))
            .proxy(
                ProxySettings::http("127.0.0.1", proxy.port())
                    .credentials("proxyuser", format!("{PROXY_PASSWORD}!")),
            )
            .logger("secrets-test")
            .build()
            .unwrap();
        let err = wrong.connect().await.unwrap_err();
        assert!(
            !format!("{err} {err:?}").contains(PROXY_PASSWORD),
            "{err:?}"
        );

        // The SOCKS 5 password: through microsocks with username/password authentication.
        let socks = MicroSocks::start(MicroSocksConfig {
            credentials: Some(("proxyuser".to_owned(), PROXY_PASSWORD.to_owned())),
            ..Default::default()
        });
        let socks_client = |password: &str| {
            Client::builder("127.0.0.1")
                .port(broker.port())
                .timeout(Duration::from_secs(5))
                .proxy(
                    ProxySettings::socks5("127.0.0.1", socks.port())
                        .credentials("proxyuser", password),
                )
                .logger("secrets-test")
                .build()
                .unwrap()
        };
        let client = socks_client(PROXY_PASSWORD);
        assert!(!format!("{client:?}").contains(PROXY_PASSWORD));
        let conn = client.connect().await.unwrap();
        conn.publish("t", "via socks")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
        let err = socks_client(&format!("{PROXY_PASSWORD}!"))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::Proxy { .. })
                && !format!("{err} {err:?}").contains(PROXY_PASSWORD),
            "{err:?}"
        );

        // Paho's own error trace, from a client that holds the password: a fake broker
        // sends a PINGREQ (which only a client sends) after CONNACK, which Paho C logs at
        // error level ("An unexpected packet type 12 has been received") and drops. This
        // record shows the search below covers what the engine logs while at work, not
        // only the banner Paho writes once when its trace starts.
        let fb = FakeBroker::start().await;
        let client = Client::builder("127.0.0.1")
            .port(fb.port())
            .username("user")
            .password(PASSWORD)
            .logger("secrets-test")
            .build()
            .unwrap();
        let (conn, mut fc) = fb.connect(&client).await;
        let flags = fc.connect.packet.as_ref().and_then(|p| p.connect_flags());
        assert_eq!(
            flags.map(|f| f & 0xC0),
            Some(0xC0),
            "username and password sent"
        );
        fc.send(&[0xC0, 0x00]).await.unwrap();
        // Paho reads packets in order: the PUBACK after it completes the publish only
        // once the PINGREQ was read (and traced).
        let (published, _) = tokio::join!(conn.publish("t", "x").qos(QoS::AtLeastOnce), async {
            let p = fc.expect(PacketType::Publish, Duration::from_secs(5)).await;
            fc.send(&packets::puback(p.packet_id().unwrap(), None))
                .await
                .unwrap();
        });
        published.unwrap();
        conn.disconnect().await.unwrap();

        // A WebSocket header value (credentials in Authorization or Cookie).
        let ws_broker = Broker::builder().websockets().start();
        let client = Client::builder("127.0.0.1")
            .port(ws_broker.ws_port())
            .transport(aiomqtt::Transport::WebSockets)
            .websocket_headers([("Authorization", HEADER_SECRET)])
            .logger("secrets-test")
            .build()
            .unwrap();
        let debug = format!("{client:?}");
        assert!(
            debug.contains("Authorization") && !debug.contains(HEADER_SECRET),
            "{debug}"
        );
        let conn = client.connect().await.unwrap();
        conn.publish("t", "over ws")
            .qos(QoS::AtLeastOnce)
            .await
            .unwrap();
        conn.disconnect().await.unwrap();
    })
    .await;

    let records = crate::support::logcap::settled_records().await;
    assert!(
        !records
            .iter()
            .any(|r| r.contains("log records were dropped")),
        "records were dropped, so the search below could miss a leak"
    );
    // The capture really saw every client at work (so the search below can fail).
    let connects = records
        .iter()
        .filter(|r| r.contains("secrets-test") && r.contains("Connecting to"))
        .count();
    assert!(connects >= 5, "{connects} connect records: {records:#?}");
    // ...and the engine's records (Paho C's trace) reach the capture too.
    let paho: Vec<&String> = records
        .iter()
        .filter(|r| r.contains(" paho_mqtt_c "))
        .collect();
    assert!(
        paho.iter()
            .any(|r| r.contains("An unexpected packet type 12 has been received")),
        "no record of Paho C's error trace: {paho:#?}"
    );
    // Basic auth carries `user:password`: its base64 is what a trace would show.
    let mut forms = secret_forms(PASSWORD);
    forms.extend(secret_forms(PROXY_PASSWORD));
    forms.extend(secret_forms(CLIENT_KEY_PASSPHRASE));
    forms.extend(secret_forms(HEADER_SECRET));
    forms.push(openssl::base64::encode_block(
        format!("proxyuser:{PROXY_PASSWORD}").as_bytes(),
    ));
    let leaks: Vec<&String> = records
        .iter()
        .filter(|r| forms.iter().any(|f| r.contains(f.as_str())))
        .collect();
    assert!(
        leaks.is_empty(),
        "{} record(s) leak the password: {leaks:#?}",
        leaks.len()
    );
    // The level the user set is restored after the connect.
    assert_eq!(log::max_level(), log::LevelFilter::Trace);
}
