//! A persistent session: the broker keeps the subscription and queues QoS 1/2 messages
//! while the client is away, and the client's engine keeps its unacknowledged messages,
//! which it sends again (with DUP) when it reconnects.
//!
//! MQTT 3.1.1: `clean_session(false)` and a fixed identifier. MQTT 5: `CleanStart::Never`
//! with a Session Expiry Interval, as here.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{CleanStart, Client, Properties, ProtocolVersion, QoS};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), aiomqtt::Error> {
    let broker = common::broker();
    let client = Client::builder(&broker.host)
        .port(broker.port)
        .protocol(ProtocolVersion::V5)
        .identifier("persistent-session-example")
        .clean_start(CleanStart::Never)
        .properties(Properties::new().session_expiry_interval(300))
        .build()?;

    // First visit: subscribe, then leave.
    let conn = client.connect().await?;
    conn.subscribe("persistent/#").qos(QoS::AtLeastOnce).await?;
    conn.disconnect().await?;

    // While we are away, someone publishes.
    let other = Client::builder(&broker.host).port(broker.port).build()?;
    let sender = other.connect().await?;
    sender
        .publish("persistent/news", "published while you were away")
        .qos(QoS::AtLeastOnce)
        .await?;
    sender.disconnect().await?;

    // Second visit: the broker kept the session and hands the message over.
    let conn = client.connect().await?;
    println!("session present: {}", conn.session_present());
    let mut messages = conn.messages();
    if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let message = message?;
        println!("{}: {}", message.topic, message.payload_str()?);
    }
    conn.disconnect().await
}
