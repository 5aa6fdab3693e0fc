//! The same workloads on raw paho-mqtt 0.14, used idiomatically: `AsyncClient`,
//! `get_stream(None)` for the subscriber, `try_publish` tokens kept in flight.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use paho_mqtt as paho;

use crate::{BoxError, Case, Sample, Variant};

/// `MQTTASYNC_MAX_BUFFERED_MESSAGES`: `try_publish` refused, the buffer is full.
const MAX_BUFFERED: i32 = -12;

fn version() -> u32 {
    if crate::v5() {
        paho::MQTT_VERSION_5
    } else {
        paho::MQTT_VERSION_3_1_1
    }
}

/// Create options. Both variants pin the MQTT version (the default 3.1.1-with-
/// fallback is a correctness hazard, ENGINE.md 8) and use no persistence (the
/// builder's default). Tuned also lifts `max_buffered_messages` (default 100,
/// which refuses publishes while connected, ENGINE.md 17) to the value this
/// crate uses; it only counts, so its size costs nothing.
fn create(port: u16, id: &str, variant: Variant) -> paho::CreateOptions {
    create_at(&format!("tcp://127.0.0.1:{port}"), id, variant)
}

/// [`create`] for a server URI of any scheme.
fn create_at(uri: &str, id: &str, variant: Variant) -> paho::CreateOptions {
    let builder = paho::CreateOptionsBuilder::new()
        .server_uri(uri)
        .client_id(id)
        .persistence(paho::PersistenceType::None)
        .mqtt_version(version());
    let builder = if variant.tuned() {
        builder.max_buffered_messages(i32::MAX)
    } else {
        builder
    };
    builder.finalize()
}

/// Connect options: tuned sets `max_inflight` to the window (default 65535).
fn connect_options(variant: Variant, window: usize) -> paho::ConnectOptions {
    let mut builder = paho::ConnectOptionsBuilder::with_mqtt_version(version());
    if crate::v5() {
        builder.clean_start(true);
    } else {
        builder.clean_session(true);
    }
    if variant.tuned() {
        builder.max_inflight(i32::try_from(window).unwrap_or(i32::MAX));
    }
    builder.finalize()
}

async fn connect(
    port: u16,
    id: &str,
    variant: Variant,
    window: usize,
) -> Result<paho::AsyncClient, BoxError> {
    let cli = paho::AsyncClient::new(create(port, id, variant))?;
    cli.connect(connect_options(variant, window)).await?;
    Ok(cli)
}

/// Disconnects and drops the clients off the async workers: the final drop of
/// a Paho client blocks (`MQTTAsync_destroy`).
async fn close(clients: Vec<paho::AsyncClient>) -> Result<(), BoxError> {
    let mut result = Ok(());
    for cli in &clients {
        if cli.is_connected() {
            if let Err(e) = cli.disconnect(None).await {
                result = Err(e.into());
            }
        }
    }
    tokio::task::spawn_blocking(move || drop(clients)).await?;
    result
}

pub async fn throughput(
    port: u16,
    variant: Variant,
    window: usize,
    case: Case,
    n: usize,
    run: u64,
) -> Result<Sample, BoxError> {
    let topic = format!("bench/{run}");
    let q = i32::from(case.qos);
    let mut sub = paho::AsyncClient::new(create(port, &format!("bench-{run}-sub"), variant))?;
    let stream = sub.get_stream(None);
    sub.connect(connect_options(variant, window)).await?;
    sub.subscribe(topic.as_str(), q).await?;
    let publ = connect(port, &format!("bench-{run}-pub"), variant, window).await?;
    let payload = vec![0x5a_u8; case.payload];

    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    let receiver = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match stream.recv().await {
                Ok(Some(_)) => {
                    got += 1;
                    counter.store(got, Ordering::Relaxed);
                }
                Ok(None) => return Err("subscriber disconnected".to_owned()),
                Err(_) => break,
            }
        }
        Ok(Instant::now())
    });

    let cpu_start = crate::Cpu::now();
    let start = Instant::now();
    let publishing = async {
        let mut refused = 0;
        let mut inflight = FuturesUnordered::new();
        for _ in 0..n {
            if inflight.len() >= window {
                if let Some(done) = inflight.next().await {
                    done?;
                }
            }
            let mut msg = paho::Message::new(topic.as_str(), payload.clone(), q);
            loop {
                match publ.try_publish(msg) {
                    Ok(token) => {
                        inflight.push(token);
                        break;
                    }
                    // Default options: Paho C holds at most 100 queued commands
                    // and refuses more. Wait for one pending publish, then retry.
                    Err(paho::Error::Publish(MAX_BUFFERED, back)) => {
                        refused += 1;
                        msg = back;
                        match inflight.next().await {
                            Some(done) => done?,
                            None => tokio::task::yield_now().await,
                        }
                    }
                    Err(e) => return Err(BoxError::from(e)),
                }
            }
        }
        while let Some(done) = inflight.next().await {
            done?;
        }
        Ok(refused)
    };
    // On a failure the pending tokens are dropped first, then the clients are
    // disconnected and destroyed off the async workers, as on success.
    let refused = match publishing.await {
        Ok(refused) => refused,
        Err(e) => {
            receiver.abort();
            let _ = close(vec![publ, sub]).await;
            return Err(e);
        }
    };
    let published = Instant::now();
    let (received, end) = crate::finish_receiving(receiver, &count).await?;
    let elapsed = end.max(published) - start;
    let cpu = crate::Cpu::since(cpu_start);

    close(vec![publ, sub]).await?;
    Ok(Sample {
        received,
        expected: n,
        elapsed,
        refused,
        cpu,
    })
}

/// A connection subscribed to its own topic, for round trips one at a time.
pub struct Trips {
    cli: paho::AsyncClient,
    stream: paho::AsyncReceiver<Option<paho::Message>>,
    topic: String,
    q: i32,
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
        let uri = format!("tcp://127.0.0.1:{port}");
        Trips::open_at(&uri, variant, window, q, payload, run).await
    }

    /// [`Trips::open`] at a server URI of any scheme (`ws://` for Paho C's WebSockets).
    pub async fn open_at(
        uri: &str,
        variant: Variant,
        window: usize,
        q: u8,
        payload: usize,
        run: u64,
    ) -> Result<Trips, BoxError> {
        let topic = format!("bench/{run}");
        let q = i32::from(q);
        let mut cli = paho::AsyncClient::new(create_at(uri, &format!("bench-{run}-lat"), variant))?;
        let stream = cli.get_stream(None);
        cli.connect(connect_options(variant, window)).await?;
        cli.subscribe(topic.as_str(), q).await?;
        Ok(Trips {
            cli,
            stream,
            topic,
            q,
            payload: vec![0x5a_u8; payload],
        })
    }

    /// One round trip in the task that reads the stream: the publish's token awaited,
    /// then the message (with `--joined`, both polled together).
    pub async fn trip(&mut self) -> Result<Duration, BoxError> {
        let t0 = Instant::now();
        let token = self.cli.publish(paho::Message::new(
            self.topic.as_str(),
            self.payload.clone(),
            self.q,
        ));
        let stream = &self.stream;
        let (message, t1) = if crate::joined() {
            let receive = async {
                let message = stream.recv().await;
                (message, Instant::now())
            };
            let (sent, received) = futures::join!(token, receive);
            sent?;
            received
        } else {
            token.await?;
            let message = stream.recv().await;
            (message, Instant::now())
        };
        match message {
            Ok(Some(_)) => Ok(t1 - t0),
            _ => Err(BoxError::from("the message stream ended")),
        }
    }

    pub async fn close(self) -> Result<(), BoxError> {
        close(vec![self.cli]).await
    }
}

/// The memory child's subscriber on raw paho: `get_stream(None)`, never read.
pub async fn idle_subscriber(port: u16, topic: &str, n: usize) -> Result<(), BoxError> {
    let id = format!("bench-mem-{}", std::process::id());
    let mut cli = paho::AsyncClient::new(create(port, &id, Variant::RawTuned))?;
    let stream = cli.get_stream(None);
    cli.connect(connect_options(Variant::RawTuned, 65535))
        .await?;
    cli.subscribe(topic, 0).await?;
    crate::mem::report_ready();
    crate::mem::wait_for_arrivals(|| stream.len() as u64, n as u64).await;
    crate::mem::report_done(stream.len() as u64, None);
    Ok(())
}
