//! Publishing: text, bytes, numbers, QoS, retain, a per-call timeout.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{Client, QoS};

#[tokio::main]
async fn main() -> Result<(), aiomqtt::Error> {
    let broker = common::broker();
    let client = Client::builder(&broker.host).port(broker.port).build()?;
    let conn = client.connect().await?;

    conn.publish("sensors/temperature", "23.5").await?; // text
    conn.publish("sensors/image", &b"\x89PNG..."[..]).await?; // bytes
    conn.publish("sensors/humidity", 65.2).await?; // numbers are sent as decimal text
    conn.publish("status/online", "connected")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .await?;
    conn.publish("slow/topic", "data")
        .qos(QoS::ExactlyOnce)
        .timeout(Duration::from_secs(10))
        .await?;
    conn.publish("status/online", ()).retain(true).await?; // clear the retained message

    conn.disconnect().await?;
    println!("published");
    Ok(())
}
