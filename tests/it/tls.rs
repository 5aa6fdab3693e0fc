//! TLS: verified by default (chain AND hostname), and the failure matrix — each
//! failure a distinct, clear error well within the timeout, never a hang.

use std::time::{Duration, Instant};

use crate::support::*;
use aiomqtt::{Client, ClientBuilder, Error, QoS, TlsErrorKind, TlsParams};

const T: Duration = Duration::from_secs(30);
/// Every failure must be reported well within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);

fn tls_client(port: u16, params: TlsParams) -> ClientBuilder {
    Client::builder("localhost")
        .port(port)
        .timeout(CONNECT_TIMEOUT)
        .tls_params(params)
}

/// Connects, expecting a TLS error of `kind`; returns its Display text.
async fn expect_tls(builder: ClientBuilder, kind: TlsErrorKind) -> String {
    let client = builder.build().unwrap();
    let started = Instant::now();
    let err = client.connect().await.unwrap_err();
    let took = started.elapsed();
    assert!(took < CONNECT_TIMEOUT / 2, "took {took:?} for {err:?}");
    match &err {
        Error::Tls { kind: got, .. } => assert_eq!(*got, kind, "{err}"),
        other => panic!("expected Tls({kind:?}), got {other:?}"),
    }
    assert!(err.is_tls() && err.is_connect());
    // The client stays reusable: the same diagnosis again, not Reentrant.
    let again = client.connect().await.unwrap_err();
    assert!(
        matches!(again, Error::Tls { kind: k, .. } if k == kind),
        "{again:?}"
    );
    err.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn verified_tls_round_trip() {
    with_timeout(T, async {
        let broker = Broker::builder().tls().start();
        let params = TlsParams::new().ca_certs(&broker.certs().ca);
        let conn = tls_client(broker.tls_port(), params)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        let topic = unique_topic("tls");
        conn.subscribe(&topic).qos(QoS::AtLeastOnce).await.unwrap();
        let mut messages = conn.messages();
        conn.publish(&topic, "secure")
            .qos(QoS::ExactlyOnce)
            .await
            .unwrap();
        let m = with_timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(m.payload, b"secure");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ca() {
    with_timeout(T, async {
        let broker = Broker::builder().tls().start();
        // Trust a CA that did not sign the server's certificate.
        let params = TlsParams::new().ca_certs(&broker.certs().other_ca);
        let text = expect_tls(
            tls_client(broker.tls_port(), params),
            TlsErrorKind::UnknownCa,
        )
        .await;
        assert!(text.contains("unknown CA"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_hostname_is_checked_by_default_and_only_tls_insecure_skips_it() {
    with_timeout(T, async {
        let broker = Broker::builder()
            .tls()
            .server_cert(ServerCert::WrongHost)
            .start();
        let params = || TlsParams::new().ca_certs(&broker.certs().ca);
        let text = expect_tls(
            tls_client(broker.tls_port(), params()),
            TlsErrorKind::HostnameMismatch,
        )
        .await;
        assert!(text.contains("hostname"), "{text}");
        // The chain is still verified with tls_insecure: only the hostname is skipped.
        let conn = tls_client(broker.tls_port(), params())
            .tls_insecure(true)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_certificate() {
    with_timeout(T, async {
        let broker = Broker::builder()
            .tls()
            .server_cert(ServerCert::Expired)
            .start();
        let params = TlsParams::new().ca_certs(&broker.certs().ca);
        let text = expect_tls(tls_client(broker.tls_port(), params), TlsErrorKind::Expired).await;
        assert!(text.contains("expired"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_without_a_client_certificate() {
    with_timeout(T, async {
        let broker = Broker::builder().mutual_tls().start();
        let params = TlsParams::new().ca_certs(&broker.certs().ca);
        expect_tls(
            tls_client(broker.mtls_port(), params),
            TlsErrorKind::ClientCertificateRejected,
        )
        .await;
        // With the client certificate (encrypted key + passphrase) it connects.
        let certs = broker.certs();
        let params = TlsParams::new()
            .ca_certs(&certs.ca)
            .certfile(&certs.client_cert)
            .keyfile(&certs.client_key_encrypted)
            .keyfile_password(CLIENT_KEY_PASSPHRASE);
        let conn = tls_client(broker.mtls_port(), params)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap();
        conn.publish("t", "x").qos(QoS::AtLeastOnce).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_key_password_fails_at_build() {
    let certs = Certs::shared();
    let params = |pass: Option<&str>| {
        let p = TlsParams::new()
            .ca_certs(&certs.ca)
            .certfile(&certs.client_cert)
            .keyfile(&certs.client_key_encrypted);
        match pass {
            Some(pass) => p.keyfile_password(pass),
            None => p,
        }
    };
    for pass in [Some("not-the-passphrase"), None] {
        let err = Client::builder("localhost")
            .tls_params(params(pass))
            .build()
            .unwrap_err();
        match &err {
            Error::Tls {
                kind: TlsErrorKind::BadKey,
                detail,
                ..
            } => {
                assert!(detail.contains("client.enc.key"), "{detail}");
                assert!(!detail.contains("not-the-passphrase"), "{detail}");
            }
            other => panic!("expected Tls(BadKey), got {other:?}"),
        }
    }
    assert!(
        Client::builder("localhost")
            .tls_params(params(Some(CLIENT_KEY_PASSPHRASE)))
            .build()
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_client_to_a_plain_port() {
    with_timeout(T, async {
        let broker = Broker::start();
        let params = TlsParams::new().ca_certs(&Certs::shared().ca);
        let text = expect_tls(tls_client(broker.port(), params), TlsErrorKind::NotTls).await;
        assert!(text.contains("does not speak TLS"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_client_to_a_tls_port() {
    with_timeout(T, async {
        let broker = Broker::builder().tls().start();
        let client = Client::builder("localhost")
            .port(broker.tls_port())
            .timeout(CONNECT_TIMEOUT)
            .build()
            .unwrap();
        let started = Instant::now();
        let err = client.connect().await.unwrap_err();
        assert!(
            started.elapsed() < CONNECT_TIMEOUT / 2,
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                Error::Tls {
                    kind: TlsErrorKind::TlsRequired,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("set tls_params"), "{err}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failure_kinds_are_distinct() {
    // Refused, DNS, TLS and timeout are different variants (the engine reports
    // several of them with one code).
    with_timeout(T, async {
        let mut broker = Broker::builder().tls().start();
        let port = broker.tls_port();
        let ca = TlsParams::new().ca_certs(&broker.certs().ca);
        broker.kill();
        let refused = tls_client(port, ca.clone())
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::ConnectionRefused { .. }),
            "{refused:?}"
        );
        let dns = Client::builder("no-such-host.invalid")
            .tls_params(ca)
            .build()
            .unwrap()
            .connect()
            .await
            .unwrap_err();
        assert!(matches!(dns, Error::Dns { .. }), "{dns:?}");
    })
    .await;
}
