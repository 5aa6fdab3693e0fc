//! Quick start: connect, subscribe, publish, receive your own message.
//!
//! `cargo run --example quickstart` (uses `MQTT_HOST`/`MQTT_PORT`, or starts a
//! local Mosquitto).

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{Client, QoS};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker();
    let client = Client::builder(&broker.host).port(broker.port).build()?;

    let conn = client.connect().await?;
    println!("connected to {}:{}", broker.host, broker.port);

    conn.subscribe("quickstart/#").qos(QoS::AtLeastOnce).await?;
    let mut messages = conn.messages();
    conn.publish("quickstart/temperature", 23.5)
        .qos(QoS::AtLeastOnce)
        .await?;

    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await?
        .ok_or("the connection ended")??;
    println!("received {} = {}", message.topic, message.payload_str()?);
    assert_eq!(message.payload, b"23.5");

    conn.disconnect().await?;
    println!("round trip OK");
    Ok(())
}
