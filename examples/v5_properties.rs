//! MQTT 5: properties on CONNECT and PUBLISH, user properties, subscription
//! options, and request/response.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{Client, Properties, ProtocolVersion, QoS, SubscribeOptions};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = common::broker();
    let client = Client::builder(&broker.host)
        .port(broker.port)
        .protocol(ProtocolVersion::V5)
        .properties(Properties::new().session_expiry_interval(0))
        .build()?;
    let conn = client.connect().await?;
    println!("assigned identifier: {}", conn.identifier());

    conn.subscribe("v5/requests")
        .options(
            SubscribeOptions::new()
                .qos(QoS::AtLeastOnce)
                .no_local(false),
        )
        .properties(Properties::new().subscription_identifier(7))
        .await?;
    let mut messages = conn.messages();

    let request = Properties::new()
        .content_type("application/json")
        .response_topic("v5/responses")
        .correlation_data(b"req-1".to_vec())
        .message_expiry_interval(60)
        .user_property("origin", "example");
    conn.publish("v5/requests", r#"{"op":"ping"}"#)
        .qos(QoS::AtLeastOnce)
        .properties(request)
        .await?;

    let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
        .await?
        .ok_or("the connection ended")??;
    let props = message
        .properties
        .as_deref()
        .ok_or("no properties on a v5 message")?;
    println!(
        "content type {:?}, response topic {:?}, user properties {:?}, subscription ids {:?}",
        props.content_type,
        props.response_topic,
        props.user_properties,
        props.subscription_identifiers
    );
    conn.disconnect().await?;
    Ok(())
}
