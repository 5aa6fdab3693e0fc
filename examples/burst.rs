//! Bursts far wider than the in-flight window: `n` QoS 1 publishes made at once and
//! awaited together, on one MQTT 3.1.1 connection with the default window (100), to a
//! private Mosquitto on loopback, for `n` = 1,000 to 64,000 — this crate against raw
//! paho-mqtt with the same window, in the same rounds.
//!
//! Paho C's send thread walks its whole command queue, past every command of a client whose
//! window is full, after each packet it sends: with the commands beyond the window queued
//! in Paho, a burst costs time quadratic in its length. This crate hands Paho at most the
//! window plus 32 calls (`engine::admission`); the rest wait in call order in the client.
//! The figure of merit is how the rate holds up as `n` grows: the ratio of the rate at
//! each `n` to the rate at 1,000 (1.0 and above: linear or better).
//!
//! Paho C's queue and its walk are the process's, not the client's: while each burst runs,
//! a bystander — another connection of this crate in the same process — publishes QoS 1
//! messages one at a time, and the table gives the median and the longest of its calls.
//!
//! ```sh
//! cargo run --release --example burst                 # 3 rounds, medians
//! cargo run --release --example burst -- --rounds 1 --max 16000
//! ```

#[path = "bench/at_once.rs"]
mod at_once;
#[path = "bench/broker.rs"]
mod broker;

use std::future::IntoFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aiomqtt::{Client, QoS};
use paho_mqtt as paho;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SIZES: [usize; 4] = [1_000, 4_000, 16_000, 64_000];
/// The default window of this crate on MQTT 3.1.1; raw paho is given the same.
const WINDOW: i32 = 100;
/// Long enough for the slowest burst of raw paho.
const TIMEOUT: Duration = Duration::from_secs(600);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// This crate, default options: `n` publishes made at once, awaited together.
async fn ours(port: u16, n: usize) -> Result<f64, BoxError> {
    let conn = Client::builder("127.0.0.1")
        .port(port)
        .identifier("burst-ours")
        .timeout(TIMEOUT)
        .build()?
        .connect()
        .await?;
    let payload = vec![7u8; 64];
    let rate = at_once::rate(
        n,
        std::iter::repeat_with(|| {
            conn.publish("burst/ours", payload.clone())
                .qos(QoS::AtLeastOnce)
                .into_future()
        }),
    )
    .await?;
    conn.disconnect().await?;
    Ok(rate)
}

/// Raw paho-mqtt with the same window (and its buffer limit lifted, as this crate does):
/// `n` publishes made at once, their tokens awaited together.
async fn raw(port: u16, n: usize) -> Result<f64, BoxError> {
    let create = paho::CreateOptionsBuilder::new()
        .server_uri(format!("tcp://127.0.0.1:{port}"))
        .client_id("burst-raw")
        .persistence(paho::PersistenceType::None)
        .mqtt_version(paho::MQTT_VERSION_3_1_1)
        .max_buffered_messages(i32::MAX)
        .finalize();
    let client = paho::AsyncClient::new(create)?;
    let connect = paho::ConnectOptionsBuilder::with_mqtt_version(paho::MQTT_VERSION_3_1_1)
        .max_inflight(WINDOW)
        .finalize();
    client.connect(connect).await?;
    let payload = vec![7u8; 64];
    let rate = at_once::rate(
        n,
        std::iter::repeat_with(|| {
            client.publish(paho::Message::new("burst/raw", payload.clone(), 1))
        }),
    )
    .await?;
    client.disconnect(None).await?;
    Ok(rate)
}

/// Another connection publishing QoS 1 messages one at a time until told to stop; yields
/// the duration of each call, in µs.
struct Bystander {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<Vec<f64>, aiomqtt::Error>>,
}

impl Bystander {
    async fn start(port: u16) -> Result<Bystander, BoxError> {
        let conn = Client::builder("127.0.0.1")
            .port(port)
            .identifier("burst-bystander")
            .timeout(TIMEOUT)
            .build()?
            .connect()
            .await?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut took = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let start = Instant::now();
                conn.publish("burst/bystander", "x")
                    .qos(QoS::AtLeastOnce)
                    .await?;
                took.push(start.elapsed().as_secs_f64() * 1e6);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            conn.disconnect().await?;
            Ok(took)
        });
        Ok(Bystander { stop, task })
    }

    /// Median and longest call, µs.
    async fn stop(self) -> Result<(f64, f64), BoxError> {
        self.stop.store(true, Ordering::Relaxed);
        let took = self.task.await??;
        let max = took.iter().copied().fold(f64::NAN, f64::max);
        Ok((median(took), max))
    }
}

/// Runs `burst` with a bystander: the burst's rate, and the bystander's median and longest
/// call.
async fn with_bystander(
    port: u16,
    burst: impl std::future::Future<Output = Result<f64, BoxError>>,
) -> Result<(f64, f64, f64), BoxError> {
    let bystander = Bystander::start(port).await?;
    let rate = burst.await?;
    let (p50, max) = bystander.stop().await?;
    Ok((rate, p50, max))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut rounds = 3;
    let mut max = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> Result<usize, BoxError> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| format!("{what} needs a positive number").into())
        };
        match a.as_str() {
            "--rounds" => rounds = number("--rounds")?,
            "--max" => max = number("--max")?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let sizes: Vec<usize> = SIZES.into_iter().filter(|&n| n <= max).collect();
    let broker = broker::Broker::start(0, false)?;
    let port = broker.port;
    println!(
        "aiomqtt burst: {} on 127.0.0.1:{port} (max_inflight_messages 0), window {WINDOW}, \
         {rounds} rounds",
        broker::version()
    );
    // Warm-up: Paho C's threads and the engine's start with the first client.
    ours(port, 100).await?;
    raw(port, 100).await?;
    // Per size: (rate, bystander p50, bystander max) of this crate, then of raw paho.
    type Runs = Vec<(f64, f64, f64)>;
    let mut runs: Vec<(Runs, Runs)> = vec![(Vec::new(), Vec::new()); sizes.len()];
    for round in 0..rounds {
        println!("== round {}/{rounds}", round + 1);
        for (i, &n) in sizes.iter().enumerate() {
            // Alternate which client goes first.
            let (a, b) = if (round + i) % 2 == 0 {
                let a = with_bystander(port, ours(port, n)).await?;
                (a, with_bystander(port, raw(port, n)).await?)
            } else {
                let b = with_bystander(port, raw(port, n)).await?;
                (with_bystander(port, ours(port, n)).await?, b)
            };
            println!(
                "   n = {n:>6}: aiomqtt {:>8.0} msg/s (bystander p50 {:.0} µs, max {:.0} µs), \
                 paho {:>8.0} msg/s (bystander p50 {:.0} µs, max {:.0} µs)",
                a.0, a.1, a.2, b.0, b.1, b.2
            );
            runs[i].0.push(a);
            runs[i].1.push(b);
        }
    }
    let medians = |v: &Runs| {
        (
            median(v.iter().map(|r| r.0).collect()),
            median(v.iter().map(|r| r.1).collect()),
            median(v.iter().map(|r| r.2).collect()),
        )
    };
    let rows: Vec<_> = runs.iter().map(|(a, b)| (medians(a), medians(b))).collect();
    let (base_a, base_b) = (rows[0].0.0, rows[0].1.0);
    println!();
    println!(
        "| burst (QoS 1, 64 B) | aiomqtt msg/s | paho msg/s | aiomqtt / paho | aiomqtt vs n = {0} | paho vs n = {0} | bystander during aiomqtt's burst: p50 / max µs | during paho's |",
        sizes[0]
    );
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (&n, &(a, b)) in sizes.iter().zip(&rows) {
        println!(
            "| {n} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |",
            a.0,
            b.0,
            a.0 / b.0,
            a.0 / base_a,
            b.0 / base_b,
            a.1,
            a.2,
            b.1,
            b.2
        );
    }
    Ok(())
}
