//! The workloads driven through this crate (`aiomqtt`).

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aiomqtt::{Client, ProtocolVersion, QoS};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::{BoxError, Case, Sample, Variant};

/// "Tuned" sets only the in-flight window (the same as raw tuned); "default" is
/// `Client::builder(host)` with nothing but the port, the identifier and the protocol.
pub fn client(port: u16, id: &str, variant: Variant, window: usize) -> Result<Client, BoxError> {
    let protocol = if crate::v5() {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let builder = Client::builder("127.0.0.1")
        .port(port)
        .identifier(id)
        .protocol(protocol);
    let builder = crate::relay_cost::link(builder);
    let builder = if variant.tuned() {
        builder.max_inflight_messages(u16::try_from(window)?)
    } else {
        builder
    };
    Ok(builder.build()?)
}

pub fn qos(q: u8) -> QoS {
    QoS::try_from(q).expect("QoS is 0, 1 or 2")
}

/// One publisher connection, one subscriber connection, `n` messages; the
/// publisher keeps `window` publishes pending (never awaits each one).
pub async fn throughput(
    port: u16,
    variant: Variant,
    window: usize,
    case: Case,
    n: usize,
    run: u64,
) -> Result<Sample, BoxError> {
    let topic = format!("bench/{run}");
    let q = qos(case.qos);
    let sub_client = client(port, &format!("bench-{run}-sub"), variant, window)?;
    let sub = sub_client.connect().await?;
    sub.subscribe(topic.as_str()).qos(q).await?;
    let mut messages = sub.messages();
    let pub_client = client(port, &format!("bench-{run}-pub"), variant, window)?;
    let publ = pub_client.connect().await?;
    let payload = vec![0x5a_u8; case.payload];

    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match messages.next().await {
                Some(Ok(_)) => {
                    got += 1;
                    counter.store(got, Ordering::Relaxed);
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => break,
            }
        }
        Ok(Instant::now())
    });

    let cpu_start = crate::Cpu::now();
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        if inflight.len() >= window {
            if let Some(done) = inflight.next().await {
                done?;
            }
        }
        inflight.push(
            publ.publish(topic.as_str(), payload.clone())
                .qos(q)
                .into_future(),
        );
    }
    while let Some(done) = inflight.next().await {
        done?;
    }
    let published = Instant::now();
    let (received, end) = crate::finish_receiving(receiver, &count).await?;
    let elapsed = end.max(published) - start;
    let cpu = crate::Cpu::since(cpu_start);

    publ.disconnect().await?;
    sub.disconnect().await?;
    Ok(Sample {
        received,
        expected: n,
        elapsed,
        refused: 0,
        cpu,
    })
}

/// A connection subscribed to its own topic, for round trips one at a time.
pub struct Trips {
    conn: aiomqtt::Connection,
    messages: aiomqtt::Messages,
    topic: String,
    q: QoS,
    payload: Vec<u8>,
}

impl Trips {
    pub async fn open(
        port: u16,
        variant: Variant,
        window: usize,
        q: u8,
        payload: usize,
        run: u64,
    ) -> Result<Trips, BoxError> {
        let topic = format!("bench/{run}");
        let q = qos(q);
        let conn = client(port, &format!("bench-{run}-lat"), variant, window)?
            .connect()
            .await?;
        conn.subscribe(topic.as_str()).qos(q).await?;
        let messages = conn.messages();
        Ok(Trips {
            conn,
            messages,
            topic,
            q,
            payload: vec![0x5a_u8; payload],
        })
    }

    /// One round trip in the task that reads the stream: the publish awaited, then the
    /// message (with `--joined`, both polled together).
    pub async fn trip(&mut self) -> Result<Duration, BoxError> {
        let t0 = Instant::now();
        let publish = self
            .conn
            .publish(self.topic.as_str(), self.payload.clone())
            .qos(self.q)
            .into_future();
        let messages = &mut self.messages;
        let (message, t1) = if crate::joined() {
            let receive = async {
                let message = messages.next().await;
                (message, Instant::now())
            };
            let (sent, received) = futures::join!(publish, receive);
            sent?;
            received
        } else {
            publish.await?;
            let message = messages.next().await;
            (message, Instant::now())
        };
        match message {
            Some(Ok(_)) => Ok(t1 - t0),
            Some(Err(e)) => Err(BoxError::from(e)),
            None => Err("the message stream ended".into()),
        }
    }

    pub async fn close(self) -> Result<(), BoxError> {
        drop(self.messages);
        self.conn.disconnect().await?;
        Ok(())
    }
}

/// The memory child's subscriber: never reads; reports the queue's length.
pub async fn idle_subscriber(
    port: u16,
    topic: &str,
    n: usize,
    bound: Option<usize>,
) -> Result<(), BoxError> {
    let mut builder = Client::builder("127.0.0.1")
        .port(port)
        .identifier(format!("bench-mem-{}", std::process::id()));
    if let Some(bound) = bound {
        builder = builder.max_queued_incoming_messages(bound);
    }
    let conn = builder.build()?.connect().await?;
    conn.subscribe(topic).qos(QoS::AtMostOnce).await?;
    let messages = conn.messages();
    crate::mem::report_ready();
    let arrived = || messages.len() as u64 + conn.discarded_messages();
    crate::mem::wait_for_arrivals(arrived, n as u64).await;
    crate::mem::report_done(messages.len() as u64, Some(conn.discarded_messages()));
    Ok(())
}
