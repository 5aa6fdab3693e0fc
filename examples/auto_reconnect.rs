//! Automatic reconnection: one `Connection` outlives lost links. The client reconnects
//! with backoff, subscribes again when the broker kept no session, and reports what
//! happens on `Connection::events()`; the message stream simply goes on.
//!
//! Restart the broker while this runs to see the events; it ends on its own after a
//! few seconds.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{Client, ConnectionEvent, QoS, ReconnectPolicy};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), aiomqtt::Error> {
    let broker = common::broker();
    let client = Client::builder(&broker.host)
        .port(broker.port)
        .timeout(Duration::from_secs(3))
        .reconnect(
            ReconnectPolicy::new()
                .initial_delay(Duration::from_millis(500))
                .max_delay(Duration::from_secs(10)),
        )
        .build()?;
    let conn = client.connect().await?;

    // Report the connection's ups and downs from a task of their own.
    let mut events = conn.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                ConnectionEvent::Lost { cause } => println!("lost: {cause}"),
                ConnectionEvent::Reconnecting { attempt, delay } => {
                    println!("reconnect attempt {attempt} in {delay:?}")
                }
                ConnectionEvent::ReconnectFailed { attempt, cause } => {
                    println!("attempt {attempt} failed: {cause}")
                }
                ConnectionEvent::Connected {
                    session_present,
                    resubscribed,
                } => println!(
                    "connected again (session present: {session_present}, \
                     subscriptions made again: {resubscribed})"
                ),
                other => println!("{other:?}"),
            }
        }
    });

    conn.subscribe("auto-reconnect/#")
        .qos(QoS::AtLeastOnce)
        .await?;
    let mut messages = conn.messages();
    for n in 0..5 {
        // While the link is down this waits (within the timeout) for the reconnect.
        conn.publish("auto-reconnect/tick", n)
            .qos(QoS::AtLeastOnce)
            .await?;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(2), messages.next()).await
        {
            let message = message?;
            println!("got {} = {}", message.topic, message.payload_str()?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    conn.disconnect().await
}
