//! How wide an in-flight window pays on the Paho engine: `n` QoS 1 (or 2) publishes made at
//! once and awaited together on one MQTT 5 connection, to a private Mosquitto that
//! announces no Receive Maximum (`max_inflight_messages 0`: a client may keep 65,535
//! unacknowledged), directly on loopback and through a delay line (a local proxy that
//! holds each chunk for a set time each way: a link with that round trip).
//!
//! Raw paho-mqtt runs with each window of `--windows` (65,535 is its default), and this
//! crate with its default options, in the same interleaved rounds. A wider window covers
//! a longer round trip, but Paho C finds each QoS 1/2 publish's packet identifier by a
//! linear search of every queued command, every message in flight and every pending
//! response (`MQTTAsync_assignMsgId`): the cost of a publish grows with what is in flight.
//!
//! ```sh
//! cargo run --release --example window                     # 3 rounds, medians
//! cargo run --release --example window -- --rtt 0,2,20,100 --windows 20,100,1000,65535
//! cargo run --release --example window -- --qos 2 --ours-windows 1000,65535
//! ```

#[path = "bench/at_once.rs"]
mod at_once;
#[path = "bench/broker.rs"]
mod broker;
#[path = "bench/delay.rs"]
mod delay;

use std::future::IntoFuture;
use std::time::Duration;

use aiomqtt::{Client, ProtocolVersion, QoS};
use paho_mqtt as paho;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Long enough for the slowest run.
const TIMEOUT: Duration = Duration::from_secs(900);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn list(what: &str, value: Option<String>) -> Result<Vec<u64>, BoxError> {
    let value = value.ok_or_else(|| format!("{what} needs a comma-separated list"))?;
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("{what}: bad number {v}").into())
        })
        .collect()
}

/// This crate, default options (or the window given): `n` publishes made at once, awaited
/// together; msg/s.
async fn ours(port: u16, n: usize, qos: QoS, window: Option<u16>) -> Result<f64, BoxError> {
    let mut builder = Client::builder("127.0.0.1")
        .port(port)
        .protocol(ProtocolVersion::V5)
        .identifier("window-ours")
        .timeout(TIMEOUT);
    if let Some(window) = window {
        builder = builder.max_inflight_messages(window);
    }
    let conn = builder.build()?.connect().await?;
    let payload = vec![7u8; 64];
    let rate = at_once::rate(
        n,
        std::iter::repeat_with(|| {
            conn.publish("window/ours", payload.clone())
                .qos(qos)
                .into_future()
        }),
    )
    .await?;
    conn.disconnect().await?;
    Ok(rate)
}

/// Raw paho-mqtt with the window given (and its buffer limit lifted, as this crate does);
/// msg/s.
async fn raw(port: u16, n: usize, qos: QoS, window: u16) -> Result<f64, BoxError> {
    let create = paho::CreateOptionsBuilder::new()
        .server_uri(format!("tcp://127.0.0.1:{port}"))
        .client_id("window-raw")
        .persistence(paho::PersistenceType::None)
        .mqtt_version(paho::MQTT_VERSION_5)
        .max_buffered_messages(i32::MAX)
        .finalize();
    let client = paho::AsyncClient::new(create)?;
    let connect = paho::ConnectOptionsBuilder::new_v5()
        .max_inflight(i32::from(window))
        .finalize();
    client.connect(connect).await?;
    let payload = vec![7u8; 64];
    let rate = at_once::rate(
        n,
        std::iter::repeat_with(|| {
            client.publish(paho::Message::new(
                "window/raw",
                payload.clone(),
                i32::from(qos.as_u8()),
            ))
        }),
    )
    .await?;
    client.disconnect(None).await?;
    Ok(rate)
}

/// A client of one run.
#[derive(Clone, Copy)]
enum Who {
    Ours(Option<u16>),
    Raw(u16),
}

impl Who {
    fn name(self) -> String {
        match self {
            Who::Ours(None) => "aiomqtt default".to_owned(),
            Who::Ours(Some(w)) => format!("aiomqtt {w}"),
            Who::Raw(w) => format!("paho {w}"),
        }
    }

    async fn run(self, port: u16, n: usize, qos: QoS) -> Result<f64, BoxError> {
        match self {
            Who::Ours(w) => ours(port, n, qos, w).await,
            Who::Raw(w) => raw(port, n, qos, w).await,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut rounds = 3;
    let mut n = 20_000;
    let mut rtts = vec![0, 2, 20];
    let mut windows = vec![20, 100, 1_000, 65_535];
    let mut ours_windows = Vec::new();
    let mut qos = QoS::AtLeastOnce;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = list("--rounds", args.next())?[0] as usize,
            "--messages" => n = list("--messages", args.next())?[0] as usize,
            "--rtt" => rtts = list("--rtt", args.next())?,
            "--windows" => windows = list("--windows", args.next())?,
            "--ours-windows" => ours_windows = list("--ours-windows", args.next())?,
            "--qos" => {
                qos = match list("--qos", args.next())?[0] {
                    1 => QoS::AtLeastOnce,
                    2 => QoS::ExactlyOnce,
                    _ => return Err("--qos is 1 or 2".into()),
                }
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if rounds == 0 || n == 0 || rtts.is_empty() {
        return Err("--rounds and --messages must be positive".into());
    }
    let window = |w: u64| u16::try_from(w).map_err(|_| format!("window {w} > 65535"));
    let mut clients = vec![Who::Ours(None)];
    for &w in &ours_windows {
        clients.push(Who::Ours(Some(window(w)?)));
    }
    for &w in &windows {
        clients.push(Who::Raw(window(w)?));
    }
    let broker = broker::Broker::start(0, false)?;
    println!(
        "aiomqtt window: {} on 127.0.0.1:{} (max_inflight_messages 0), MQTT 5, QoS {}, 64 B, \
         {n} publishes at once, {rounds} rounds",
        broker::version(),
        broker.port,
        qos.as_u8()
    );
    // Per round trip, the port to dial (directly, or a delay line's).
    let mut ports = Vec::new();
    for &rtt in &rtts {
        ports.push(if rtt == 0 {
            broker.port
        } else {
            delay::start(broker.port, Duration::from_micros(rtt * 500)).await?
        });
    }
    // Warm-up: Paho C's threads and the engine's start with the first client.
    ours(broker.port, 100, qos, None).await?;
    raw(broker.port, 100, qos, 20).await?;
    // rates[rtt][client]: one rate per round.
    let mut rates = vec![vec![Vec::new(); clients.len()]; rtts.len()];
    for round in 0..rounds {
        println!("== round {}/{rounds}", round + 1);
        for (r, (&rtt, &port)) in rtts.iter().zip(&ports).enumerate() {
            // Each round in another order: first to last, then last to first.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..clients.len()).collect()
            } else {
                (0..clients.len()).rev().collect()
            };
            for c in order {
                let rate = clients[c].run(port, n, qos).await?;
                println!(
                    "   rtt {rtt:>3} ms  {:<16} {rate:>8.0} msg/s",
                    clients[c].name()
                );
                rates[r][c].push(rate);
            }
        }
    }
    println!();
    print!("| round trip |");
    for c in &clients {
        print!(" {} |", c.name());
    }
    println!();
    println!("|--:|{}", "--:|".repeat(clients.len()));
    for (r, rtt) in rtts.iter().enumerate() {
        print!("| {rtt} ms |");
        for runs in &rates[r] {
            print!(" {:.0} |", median(runs.clone()));
        }
        println!();
    }
    Ok(())
}
