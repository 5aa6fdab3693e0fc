//! Several consumers sharing one connection's queue: each message goes to
//! exactly one of them.

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
    conn.subscribe("work/#").qos(QoS::AtLeastOnce).await?;

    let mut workers = Vec::new();
    for id in 0..3 {
        let mut messages = conn.messages();
        workers.push(tokio::spawn(async move {
            let mut done = 0;
            while let Ok(Some(Ok(message))) =
                tokio::time::timeout(Duration::from_millis(500), messages.next()).await
            {
                println!(
                    "worker {id}: {}",
                    message.payload_str().unwrap_or("<binary>")
                );
                done += 1;
            }
            done
        }));
    }
    for job in 0..9 {
        conn.publish("work/jobs", format!("job {job}"))
            .qos(QoS::AtLeastOnce)
            .await?;
    }
    let mut total = 0;
    for worker in workers {
        total += worker.await?;
    }
    println!("{total} jobs handled");
    conn.disconnect().await?;
    Ok(())
}
