//! What a PUBREC-time admission would cost on Paho C (BENCHMARKS.md, C12 and C16).
//!
//! On MQTT 3.1.1 Paho C tells the application nothing when a PUBREC arrives. The PUBREL
//! it answers with shows in two places only:
//! - a `put` into a client persistence store (`MQTTPacket_send`, key `sc-<id>`). A client
//!   with a store, though, hands Paho every QoS 1/2 publish to keep, and Paho reads the
//!   payload back before writing it;
//! - Paho's trace at its protocol level (`MQTTPacket_send_pubrel`, message 16, "-> PUBREL"),
//!   which is process-wide and formats a record of every packet every client sends or
//!   receives, under one global mutex (`Log` in `Log.c`).
//!
//! This program times raw paho-mqtt without a hook, with such a store (in memory, a hash
//! map that counts the `sc-` puts), and with the trace (a callback that counts the PUBREL
//! records, the least a hook could do with them): QoS 2 at windows of 20 and 100, and QoS
//! 1 at 100, in interleaved rounds.
//!
//! ```sh
//! cargo run --release --example pubrel_hook                 # 100,000 messages, 6 rounds
//! cargo run --release --example pubrel_hook -- --messages 20000 --rounds 1
//! ```

#[path = "bench/broker.rs"]
mod broker;

use std::collections::{HashMap, VecDeque};
use std::ffi::{CStr, c_char};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use paho_mqtt as paho;
use paho_mqtt_sys as sys;

/// How a sample learns of the PUBRELs its publisher writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    None,
    Store,
    Trace,
}

impl Hook {
    fn name(self) -> &'static str {
        match self {
            Hook::None => "none",
            Hook::Store => "store",
            Hook::Trace => "trace",
        }
    }
}

/// PUBRELs seen in Paho's trace (every client of the process: the subscriber sends none).
static TRACED_PUBRELS: AtomicU64 = AtomicU64::new(0);

unsafe extern "C" fn on_trace(_level: sys::MQTTASYNC_TRACE_LEVELS, message: *mut c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: Paho passes a NUL-terminated record, valid for the call.
    let record = unsafe { CStr::from_ptr(message) }.to_bytes();
    if record.windows(9).any(|w| w == b"-> PUBREL") {
        TRACED_PUBRELS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Paho's process-wide trace: at its protocol level into [`on_trace`], or errors only.
fn trace(on: bool) {
    // SAFETY: both calls only store a process-wide setting.
    unsafe {
        sys::MQTTAsync_setTraceCallback(Some(on_trace));
        sys::MQTTAsync_setTraceLevel(if on {
            sys::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_PROTOCOL
        } else {
            sys::MQTTASYNC_TRACE_LEVELS_MQTTASYNC_TRACE_ERROR
        });
    }
}

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

/// One sample: (msg/s, PUBRELs the hook saw).
fn sample(
    port: u16,
    qos: i32,
    window: i32,
    hook: Hook,
    n: usize,
    run: usize,
) -> Result<(f64, u64), BoxError> {
    let store = hook == Hook::Store;
    TRACED_PUBRELS.store(0, Ordering::Relaxed);
    trace(hook == Hook::Trace);
    let result = timed(port, qos, window, store, n, run);
    trace(false);
    let (rate, put) = result?;
    let seen = match hook {
        Hook::None => 0,
        Hook::Store => put,
        Hook::Trace => TRACED_PUBRELS.load(Ordering::Relaxed),
    };
    Ok((rate, seen))
}

/// Times `n` messages: (msg/s, PUBRELs put into the store).
fn timed(
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
    // QoS 2 at the default's window and at raw paho's; QoS 1, which a hook would slow too.
    let cases = [
        (2, 20, Hook::None),
        (2, 20, Hook::Store),
        (2, 100, Hook::None),
        (2, 100, Hook::Store),
        (1, 100, Hook::None),
        (1, 100, Hook::Store),
        (2, 20, Hook::Trace),
        (2, 100, Hook::Trace),
        (1, 100, Hook::Trace),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut run = 0;
    for round in 1..=rounds {
        for (i, &(qos, window, hook)) in cases.iter().enumerate() {
            run += 1;
            let (rate, pubrels) = sample(broker.port, qos, window, hook, n, run)?;
            println!(
                "round {round}: QoS {qos}, window {window:3}, hook {:5}: {rate:8.0} msg/s, PUBRELs seen {pubrels}",
                hook.name()
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
    println!(
        "paired, QoS 2: the trace at the same window {:.2} (20), {:.2} (100); 100 with the \
         trace over 20 without it {:.2}",
        paired(6, 0),
        paired(7, 2),
        paired(7, 0)
    );
    println!("paired, QoS 1 (window 100): the trace {:.2}", paired(8, 4));
    Ok(())
}
