//! No password or key passphrase in any log record, at any level, from this
//! crate or from the engine (paho-mqtt and Paho C's trace), nor in errors.

mod support;

use std::sync::Mutex;
use std::time::Duration;

use aiomqtt::{Client, Error, ProtocolVersion, QoS};
use support::*;

static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {} {}", record.level(), record.target(), record.args());
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    fn flush(&self) {}
}

const PASSWORD: &str = "Pa55-w0rd-never-logged";

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
    // Everything, at TRACE, before the first engine client exists (so Paho C's
    // own trace is routed into `log` too).
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

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
                .build()
                .unwrap();
            let err = wrong.connect().await.unwrap_err();
            assert!(matches!(err, Error::Connect(_)), "{err:?}");
            assert!(!format!("{err} {err:?} {wrong:?}").contains(PASSWORD));
        }
    })
    .await;

    let records = RECORDS.lock().unwrap_or_else(|e| e.into_inner());
    // The capture really saw the engine at work (so the search below can fail).
    assert!(
        records.iter().any(|r| r.contains("paho_mqtt")),
        "no engine records captured"
    );
    assert!(records.len() > 50, "only {} records", records.len());
    let forms = secret_forms(PASSWORD);
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
