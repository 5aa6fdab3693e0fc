//! What a PUBREC-time admission would cost on Paho C (BENCHMARKS.md, C12).
//!
//! On MQTT 3.1.1 Paho C tells the application nothing when a PUBREC arrives; the only
//! trace of the PUBREL it answers with is a `put` into a client persistence store
//! (`MQTTPacket_send`, key `sc-<id>`). A client with a store, though, hands Paho every
//! QoS 1/2 publish to keep, and Paho reads the payload back before writing it. This
//! program times raw paho-mqtt with and without such a store (in memory, a hash map that
//! counts the `sc-` puts): QoS 2 at windows of 20 and 100, and QoS 1 at 100, in
//! interleaved rounds.
//!
//! ```sh
//! cargo run --release --example pubrel_hook                 # 100,000 messages, 6 rounds
//! cargo run --release --example pubrel_hook -- --messages 20000 --rounds 1
//! ```

#[path = "bench/broker.rs"]
mod broker;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use paho_mqtt as paho;

/// Publishes each publisher keeps pending, as the bench's publishers do.
const PENDING: usize = 100;

/// An in-memory store: what Paho puts, it can get back. Counts the PUBRELs put.
struct Store {
    entries: HashMap<String, Vec<u8>>,
    pubrels: Arc<AtomicU64>,
}

impl paho::ClientPersistence for Store {
    fn open(&mut self, _client_id: &str, _server_uri: &str) -> paho::Result<()> {
        Ok(())
    }
    fn close(&mut self) -> paho::Result<()> {
        Ok(())
    }
    fn put(&mut self, key: &str, buffers: Vec<&[u8]>) -> paho::Result<()> {
        if key.starts_with("sc-") {
            self.pubrels.fetch_add(1, Ordering::Relaxed);
        }
        self.entries.insert(key.to_owned(), buffers.concat());
        Ok(())
    }
    fn get(&mut self, key: &str) -> paho::Result<Vec<u8>> {
        self.entries
            .get(key)
            .cloned()
            .ok_or(paho::Error::PersistenceError)
    }
    fn remove(&mut self, key: &str) -> paho::Result<()> {
        self.entries.remove(key);
        Ok(())
    }
    fn keys(&mut self) -> paho::Result<Vec<String>> {
        Ok(self.entries.keys().cloned().collect())
    }
    fn clear(&mut self) -> paho::Result<()> {
        self.entries.clear();
        Ok(())
    }
    fn contains_key(&mut self, key: &str) -> bool {
        self.entries.contains_key(key)
    }
}

type BoxError = Box<dyn std::error::Error>;

/// One sample: (msg/s, PUBRELs put into the store).
fn sample(
    port: u16,
    qos: i32,
    window: i32,
    store: bool,
    n: usize,
    run: usize,
) -> Result<(f64, u64), BoxError> {
    let uri = format!("tcp://127.0.0.1:{port}");
    let pubrels = Arc::new(AtomicU64::new(0));
    let create = |id: String, store: bool| {
        let b = paho::CreateOptionsBuilder::new()
            .server_uri(&uri)
            .client_id(id)
            .max_buffered_messages(i32::MAX);
        let b = if store {
            b.user_persistence(Store {
                entries: HashMap::new(),
                pubrels: pubrels.clone(),
            })
            .persist_qos0(false)
        } else {
            b.persistence(paho::PersistenceType::None)
        };
        paho::AsyncClient::new(b.finalize())
    };
    let topic = format!("pubrel-hook/{run}");
    let mut sub = create(format!("hook-{run}-sub"), false)?;
    let publ = create(format!("hook-{run}-pub"), store)?;
    let options = paho::ConnectOptionsBuilder::new_v3()
        .max_inflight(window)
        .finalize();
    futures::executor::block_on(async {
        let stream = sub.get_stream(None);
        sub.connect(options.clone()).await?;
        sub.subscribe(&topic, qos).await?;
        publ.connect(options).await?;
        let start = Instant::now();
        let mut pending: VecDeque<paho::DeliveryToken> = VecDeque::new();
        for _ in 0..n {
            if pending.len() >= PENDING {
                if let Some(token) = pending.pop_front() {
                    token.await?;
                }
            }
            pending.push_back(publ.publish(paho::Message::new(&topic, vec![0x5a; 64], qos)));
        }
        for token in pending {
            token.await?;
        }
        let mut received = 0;
        while received < n {
            match stream.recv().await {
                Ok(Some(_)) => received += 1,
                _ => return Err("the subscriber's stream ended".into()),
            }
        }
        let rate = n as f64 / start.elapsed().as_secs_f64();
        publ.disconnect(None).await?;
        sub.disconnect(None).await?;
        Ok((rate, pubrels.load(Ordering::Relaxed)))
    })
}

fn main() -> Result<(), BoxError> {
    let (mut n, mut rounds) = (100_000_usize, 6_usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .ok_or(format!("{flag} needs a value"))?
            .parse()?;
        match flag.as_str() {
            "--messages" => n = value,
            "--rounds" => rounds = value,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if n == 0 || rounds == 0 {
        return Err("--messages and --rounds must be at least 1".into());
    }
    // The bench's broker: no limit of its own on messages in flight.
    let broker = broker::Broker::start(0, false)?;
    println!(
        "64 B, {n} messages, {PENDING} pending, {rounds} rounds; {}",
        broker::version()
    );
    // QoS 2 at the default's window and at raw paho's; QoS 1, which a store would slow too.
    let cases = [
        (2, 20, false),
        (2, 20, true),
        (2, 100, false),
        (2, 100, true),
        (1, 100, false),
        (1, 100, true),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut run = 0;
    for round in 1..=rounds {
        for (i, &(qos, window, store)) in cases.iter().enumerate() {
            run += 1;
            let (rate, pubrels) = sample(broker.port, qos, window, store, n, run)?;
            println!(
                "round {round}: QoS {qos}, window {window:3}, store {store:5}: {rate:8.0} msg/s, PUBRELs put {pubrels}"
            );
            rates[i].push(rate);
        }
    }
    // Medians of the per-round ratios: a round the machine slows counts against both.
    let paired = |a: usize, b: usize| {
        let mut r: Vec<f64> = (0..rounds).map(|i| rates[a][i] / rates[b][i]).collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    println!(
        "paired, QoS 2: the store at the same window {:.2} (20), {:.2} (100); window 100 over \
         20 without it {:.2}; 100 with the store over 20 without it {:.2}",
        paired(1, 0),
        paired(3, 2),
        paired(2, 0),
        paired(3, 0)
    );
    println!("paired, QoS 1 (window 100): the store {:.2}", paired(5, 4));
    Ok(())
}
