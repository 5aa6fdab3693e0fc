//! Reconnecting: the client is reusable, so a loop around `connect()` reconnects
//! after the connection is lost.
//!
//! Stop the broker while this runs to see it reconnect; it gives up after a few
//! rounds so that it terminates on its own.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use aiomqtt::{Client, Error};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), aiomqtt::Error> {
    let broker = common::broker();
    let client = Client::builder(&broker.host)
        .port(broker.port)
        .timeout(Duration::from_secs(3))
        .build()?;

    for round in 1..=3 {
        match listen(&client, round).await {
            Ok(()) => println!("round {round}: done"),
            Err(Error::Disconnected(cause)) => {
                println!("round {round}: lost ({cause}); reconnecting")
            }
            Err(e) => println!("round {round}: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

async fn listen(client: &Client, round: u32) -> Result<(), Error> {
    let conn = client.connect().await?;
    conn.subscribe("reconnect/#").await?;
    let mut messages = conn.messages();
    conn.publish("reconnect/round", round).await?;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        println!("got {} = {}", message?.topic, round);
    }
    conn.disconnect().await
}
