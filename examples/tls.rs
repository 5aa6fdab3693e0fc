//! MQTT over TLS: verify the broker against a CA file and, for mutual TLS, present a
//! client certificate.
//!
//! ```text
//! MQTT_HOST=broker.example.com MQTT_PORT=8883 MQTT_CA=ca.pem \
//!     cargo run --example tls
//!
//! # mutual TLS (MQTT_KEY_PASSWORD only if the key is encrypted)
//! MQTT_HOST=broker.example.com MQTT_PORT=8884 MQTT_CA=ca.pem \
//!     MQTT_CERT=client.pem MQTT_KEY=client.key MQTT_KEY_PASSWORD=secret \
//!     cargo run --example tls
//! ```
//!
//! `MQTT_HOST` must be a name (or IP address) that the broker's certificate carries: the
//! certificate chain *and* the host name are verified. `MQTT_PORT` defaults to 8883.
//! A matching Mosquitto listener:
//!
//! ```text
//! listener 8883
//! cafile   /etc/mosquitto/ca.pem
//! certfile /etc/mosquitto/server.pem
//! keyfile  /etc/mosquitto/server.key
//! # require_certificate true      (for mutual TLS)
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aiomqtt::{Client, Error, QoS, TlsErrorKind, TlsParams};
use futures::StreamExt;

/// What the environment asks for.
struct Config {
    host: String,
    port: u16,
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    key_password: Option<String>,
}

fn config() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(host), Some(ca)) = (var("MQTT_HOST"), var("MQTT_CA")) else {
        return Err(
            "no broker configured: set MQTT_HOST and MQTT_CA (the CA certificate \
                    file that signed the broker's certificate), optionally MQTT_PORT \
                    (default 8883), MQTT_CERT + MQTT_KEY (+ MQTT_KEY_PASSWORD) for mutual TLS"
                .to_owned(),
        );
    };
    let port = match var("MQTT_PORT") {
        Some(p) => p
            .parse()
            .map_err(|_| format!("MQTT_PORT must be a port number, not {p:?}"))?,
        None => 8883,
    };
    let (cert, key) = (var("MQTT_CERT"), var("MQTT_KEY"));
    if key.is_some() && cert.is_none() {
        return Err("MQTT_KEY is set but MQTT_CERT is not".to_owned());
    }
    Ok(Config {
        host,
        port,
        ca: ca.into(),
        cert: cert.map(PathBuf::from),
        key: key.map(PathBuf::from),
        key_password: var("MQTT_KEY_PASSWORD"),
    })
}

async fn run(config: &Config) -> Result<(), Error> {
    let mut tls = TlsParams::new().ca_certs(&config.ca);
    if let Some(cert) = &config.cert {
        tls = tls.certfile(cert);
        // Without MQTT_KEY the key is read from the certificate file.
        if let Some(key) = &config.key {
            tls = tls.keyfile(key);
        }
        if let Some(password) = &config.key_password {
            tls = tls.keyfile_password(password);
        }
    }
    let client = Client::builder(&config.host)
        .port(config.port)
        .tls_params(tls)
        .timeout(Duration::from_secs(10))
        .build()?;

    let conn = client.connect().await?;
    println!("connected over TLS; the broker's certificate and host name were verified");

    let topic = format!("aiomqtt-example/tls/{}", std::process::id());
    conn.subscribe((topic.as_str(), QoS::AtLeastOnce)).await?;
    println!("subscribed to {topic}");
    let mut messages = conn.messages();
    conn.publish(&topic, "hello over TLS")
        .qos(QoS::AtLeastOnce)
        .await?;
    println!("published to {topic}");

    match tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        Ok(Some(message)) => {
            let message = message?;
            println!("received {} = {}", message.topic, message.payload_str()?);
        }
        Ok(None) => println!("the connection ended before the message came back"),
        Err(_) => println!("no message within 5 s (does the broker's ACL allow {topic}?)"),
    }
    conn.disconnect().await?;
    println!("disconnected");
    Ok(())
}

/// A hint for the TLS failures people run into first.
fn hint(error: &Error) -> Option<&'static str> {
    let Error::Tls { kind, .. } = error else {
        return None;
    };
    Some(match kind {
        TlsErrorKind::UnknownCa => {
            "MQTT_CA does not hold the CA that signed the broker's certificate"
        }
        TlsErrorKind::HostnameMismatch => {
            "MQTT_HOST is not a name in the broker's certificate (use the name it was issued for)"
        }
        TlsErrorKind::Expired => "the broker's certificate has expired (or is not valid yet)",
        TlsErrorKind::ClientCertificateRejected => {
            "the broker wants a client certificate it trusts: set MQTT_CERT and MQTT_KEY"
        }
        TlsErrorKind::BadKey => "MQTT_KEY cannot be read: wrong or missing MQTT_KEY_PASSWORD?",
        TlsErrorKind::NotTls => "that port does not speak TLS (1883 is usually plain MQTT)",
        _ => return None,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!(
        "connecting to {}:{} with TLS (CA file {}{})",
        config.host,
        config.port,
        config.ca.display(),
        match &config.cert {
            Some(cert) => format!(", client certificate {}", cert.display()),
            None => String::new(),
        }
    );
    match run(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if let Some(hint) = hint(&error) {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}
