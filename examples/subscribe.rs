//! Subscribing: wildcards, several filters with their QoS, matching, unsubscribing.

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

    let granted = conn
        .subscribe(vec![
            ("sensors/+/temperature", QoS::AtMostOnce),
            ("sensors/humidity", QoS::AtLeastOnce),
            ("alerts/#", QoS::ExactlyOnce),
        ])
        .await?;
    println!("granted: {granted:?}");

    let mut messages = conn.messages();
    conn.publish("sensors/kitchen/temperature", "21.0").await?;
    conn.publish("alerts/fire", "none")
        .qos(QoS::ExactlyOnce)
        .await?;

    for _ in 0..2 {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            return Err("no message".into());
        };
        let message = message?;
        if message.topic.matches("sensors/+/temperature") {
            println!("temperature {}: {}", message.topic, message.payload_str()?);
        } else if message.topic.matches("alerts/#") {
            println!("alert {}: {}", message.topic, message.payload_str()?);
        }
        println!("messages still queued: {}", messages.len());
    }

    conn.unsubscribe(["sensors/+/temperature", "alerts/#"])
        .await?;
    conn.disconnect().await?;
    Ok(())
}
