//! MQTT over WebSockets, with a custom path and an extra header in the HTTP upgrade
//! request (e.g. a token a reverse proxy checks).
//!
//! ```text
//! MQTT_HOST=localhost MQTT_PORT=8080 cargo run --example websockets
//!
//! # another path, a bearer token, and WebSockets over TLS (wss) with a CA file
//! MQTT_HOST=broker.example.com MQTT_PORT=443 MQTT_WS_PATH=/ws/mqtt \
//!     MQTT_WS_TOKEN=abc123 MQTT_CA=ca.pem cargo run --example websockets
//! ```
//!
//! `MQTT_PORT` defaults to 8080 (8081 with `MQTT_CA`), `MQTT_WS_PATH` to `/mqtt`.
//! A matching Mosquitto listener:
//!
//! ```text
//! listener 8080
//! protocol websockets
//! ```
//!
//! Several WebSocket connections may be open at once: the client carries each through its
//! relay, with framing of its own. Mosquitto 2.0.11's WebSocket listener is slow for
//! messages over about 4 KiB (see the guide, "TLS, WebSockets, Unix sockets and proxies").

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aiomqtt::{Client, Error, QoS, TlsParams, Transport};
use futures::StreamExt;

/// What the environment asks for.
struct Config {
    host: String,
    port: u16,
    path: String,
    token: Option<String>,
    ca: Option<PathBuf>,
}

fn config() -> Result<Config, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let Some(host) = var("MQTT_HOST") else {
        return Err(
            "no broker configured: set MQTT_HOST to a broker with a WebSockets \
                    listener, optionally MQTT_PORT (default 8080, or 8081 with MQTT_CA), \
                    MQTT_WS_PATH (default /mqtt), MQTT_WS_TOKEN, and MQTT_CA for wss://"
                .to_owned(),
        );
    };
    let ca = var("MQTT_CA").map(PathBuf::from);
    let port = match var("MQTT_PORT") {
        Some(p) => p
            .parse()
            .map_err(|_| format!("MQTT_PORT must be a port number, not {p:?}"))?,
        None if ca.is_some() => 8081,
        None => 8080,
    };
    let path = var("MQTT_WS_PATH").unwrap_or_else(|| "/mqtt".to_owned());
    Ok(Config {
        host,
        port,
        path,
        token: var("MQTT_WS_TOKEN"),
        ca,
    })
}

async fn run(config: &Config) -> Result<(), Error> {
    let mut headers = vec![(
        "X-Client".to_owned(),
        "aiomqtt-websockets-example".to_owned(),
    )];
    if let Some(token) = &config.token {
        headers.push(("Authorization".to_owned(), format!("Bearer {token}")));
    }
    let mut builder = Client::builder(&config.host)
        .port(config.port)
        .transport(Transport::WebSockets)
        .websocket_path(&config.path)
        .websocket_headers(headers)
        .timeout(Duration::from_secs(10));
    if let Some(ca) = &config.ca {
        builder = builder.tls_params(TlsParams::new().ca_certs(ca));
    }
    let client = builder.build()?;

    let conn = client.connect().await?;
    println!("connected; the broker accepted the WebSocket upgrade");

    let topic = format!("aiomqtt-example/websockets/{}", std::process::id());
    conn.subscribe((topic.as_str(), QoS::AtLeastOnce)).await?;
    println!("subscribed to {topic}");
    let mut messages = conn.messages();
    conn.publish(&topic, "hello over WebSockets")
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

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let scheme = if config.ca.is_some() { "wss" } else { "ws" };
    println!(
        "connecting to {scheme}://{}:{}{} with header X-Client{}",
        config.host,
        config.port,
        config.path,
        if config.token.is_some() {
            " and an Authorization bearer token"
        } else {
            ""
        }
    );
    match run(&config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            if matches!(error, Error::ConnectionRefused { .. }) {
                eprintln!(
                    "hint: is {}:{} a WebSockets listener (`protocol websockets` in \
                     mosquitto.conf), and is {} its path?",
                    config.host, config.port, config.path
                );
            }
            ExitCode::FAILURE
        }
    }
}
