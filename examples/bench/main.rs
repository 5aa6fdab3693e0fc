//! Benchmark suite: this crate (`aiomqtt`) against raw `paho-mqtt`, in one run.
//!
//! ```text
//! cargo run --release --example bench -- [--quick] [--messages N] [--rounds R] [--out DIR]
//! ```
//!
//! Starts its own Mosquitto (`/usr/sbin/mosquitto`, `max_inflight_messages 0`) on a
//! free 127.0.0.1 port, then measures, interleaving the clients in every round:
//! pub/sub throughput (QoS 0/1/2, 64 B and 4 KiB), round-trip latency, and the
//! peak RSS of a subscriber that never reads. Writes `bench-results.md`,
//! `bench-samples.csv` and `bench-throughput.svg` to the output directory and
//! prints the table. See BENCHMARKS.md for the method. Not a test: never run it
//! in CI as one.

mod broker;
mod mem;
mod ours;
mod peer_rumqttc;
mod peers;
mod raw;
mod relay_cost;
mod report;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use report::{Environment, LatencyRun, Results, SweepPoint, ThroughputRun};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Round trips before the measured ones, per latency run.
pub const LATENCY_WARMUP: usize = 50;
/// The QoS levels of the latency runs.
pub const LATENCY_QOS: [u8; 3] = [0, 1, 2];
/// The payload of the latency runs.
pub const LATENCY_PAYLOAD: usize = 64;
/// A throughput run gives up when no message arrived for this long.
const IDLE: Duration = Duration::from_secs(10);
/// Pause between runs, so one run's teardown does not overlap the next.
const SETTLE: Duration = Duration::from_millis(200);
/// Windows tried to tune raw paho.
const SWEEP_WINDOWS: [usize; 3] = [20, 100, 1000];
/// Runs per window and QoS in the sweep.
const SWEEP_REPS: usize = 3;
/// The window when none is swept or given.
const FALLBACK_WINDOW: usize = 100;

pub fn latency_budget(trips: usize) -> Duration {
    Duration::from_secs(60 + trips as u64 / 20)
}

/// The four clients compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    /// This crate with `max_inflight_messages(window)`.
    OursTuned,
    /// Raw paho: `max_inflight(window)`, `max_buffered_messages` lifted.
    RawTuned,
    /// This crate with default options (on 3.1.1: window 100, of which at most 20 QoS 2
    /// publishes).
    OursDefault,
    /// Raw paho with default options (max_inflight 65535, max_buffered 100).
    RawDefault,
    /// A second raw paho tuned, identical to the first: the A/A control (`--only
    /// raw-control`), whose ratios to the first show what the machine's noise alone does
    /// to a ratio.
    RawControl,
}

impl Variant {
    /// The clients of a run unless `--only` says otherwise.
    pub const ALL: [Variant; 4] = [
        Variant::OursTuned,
        Variant::RawTuned,
        Variant::OursDefault,
        Variant::RawDefault,
    ];

    /// Every client `--only` can name.
    pub const EVERY: [Variant; 5] = [
        Variant::OursTuned,
        Variant::RawTuned,
        Variant::OursDefault,
        Variant::RawDefault,
        Variant::RawControl,
    ];

    pub fn tuned(self) -> bool {
        matches!(
            self,
            Variant::OursTuned | Variant::RawTuned | Variant::RawControl
        )
    }

    pub fn ours(self) -> bool {
        matches!(self, Variant::OursTuned | Variant::OursDefault)
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::OursTuned => "aiomqtt tuned",
            Variant::RawTuned => "paho tuned",
            Variant::OursDefault => "aiomqtt default",
            Variant::RawDefault => "paho default",
            Variant::RawControl => "paho tuned (control)",
        }
    }

    pub fn legend(self) -> &'static str {
        match self {
            Variant::OursTuned => "aiomqtt, tuned window",
            Variant::RawTuned => "raw paho-mqtt, tuned window",
            Variant::OursDefault => "aiomqtt, default options",
            Variant::RawDefault => "raw paho-mqtt, default options",
            Variant::RawControl => "raw paho-mqtt, tuned window (A/A control)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Variant::OursTuned => "ours-tuned",
            Variant::RawTuned => "raw-tuned",
            Variant::OursDefault => "ours-default",
            Variant::RawDefault => "raw-default",
            Variant::RawControl => "raw-control",
        }
    }
}

/// One throughput workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Case {
    pub qos: u8,
    pub payload: usize,
}

/// The QoS levels and payloads of the throughput runs, unless narrowed with
/// `--qos` / `--payload`.
pub const QOS_LEVELS: [u8; 3] = [0, 1, 2];
pub const PAYLOADS: [usize; 2] = [64, 4096];

fn cases(payloads: &[usize], qos: &[u8]) -> Vec<Case> {
    payloads
        .iter()
        .flat_map(|&payload| qos.iter().map(move |&qos| Case { qos, payload }))
        .collect()
}

/// One throughput run.
#[derive(Clone, Debug)]
pub struct Sample {
    pub received: usize,
    pub expected: usize,
    /// First publish to the later of "every publish completed" and "the last
    /// message received".
    pub elapsed: Duration,
    /// `try_publish` refusals (raw paho with its default buffer).
    pub refused: u64,
    /// CPU time of this process (both clients' threads) during the run.
    pub cpu: Cpu,
}

/// CPU time of this process by thread kind.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// Paho C's receive thread (`MQTTAsync_rcv`): reads every packet and runs
    /// the message callbacks, under Paho's global mutex.
    pub paho_receive: Duration,
    /// Paho C's send thread (`MQTTAsync_send`).
    pub paho_send: Duration,
    /// Everything else: the tokio workers, the main thread, helpers.
    pub rest: Duration,
}

impl Cpu {
    /// CPU used so far by every live thread of this process, from
    /// `/proc/self/task/*/schedstat` (nanoseconds on CPU, user and system).
    /// The broker is another process and is not counted.
    pub fn now() -> Cpu {
        let mut cpu = Cpu::default();
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return cpu;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let Some(ns) = std::fs::read_to_string(path.join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            else {
                continue;
            };
            let ns = Duration::from_nanos(ns);
            match std::fs::read_to_string(path.join("comm"))
                .as_deref()
                .map(str::trim)
            {
                Ok("MQTTAsync_rcv") => cpu.paho_receive += ns,
                Ok("MQTTAsync_send") => cpu.paho_send += ns,
                _ => cpu.rest += ns,
            }
        }
        cpu
    }

    /// The CPU used since `start` (threads that ended meanwhile are lost,
    /// hence the saturation; none of the measured ones end during a run).
    pub fn since(start: Cpu) -> Cpu {
        let now = Cpu::now();
        Cpu {
            paho_receive: now.paho_receive.saturating_sub(start.paho_receive),
            paho_send: now.paho_send.saturating_sub(start.paho_send),
            rest: now.rest.saturating_sub(start.rest),
        }
    }

    pub fn total(&self) -> Duration {
        self.paho_receive + self.paho_send + self.rest
    }
}

impl Sample {
    fn per_message(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / self.received.max(1) as f64
    }

    /// Client CPU per message received, in µs.
    pub fn cpu_per_message(&self) -> f64 {
        self.per_message(self.cpu.total())
    }

    /// Per message, in µs: (Paho receive thread, Paho send thread, the rest).
    pub fn cpu_split(&self) -> (f64, f64, f64) {
        (
            self.per_message(self.cpu.paho_receive),
            self.per_message(self.cpu.paho_send),
            self.per_message(self.cpu.rest),
        )
    }

    pub fn rate(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }
}

pub struct Config {
    pub messages: usize,
    pub rounds: usize,
    pub trips: usize,
    pub mem_messages: usize,
    pub mem_bound: usize,
    pub window: Option<usize>,
    pub out: PathBuf,
    pub variants: Vec<Variant>,
    pub cases: Vec<Case>,
    pub broker_max_inflight: u32,
    /// Both clients speak MQTT 5 (`--protocol 5`) instead of 3.1.1.
    pub v5: bool,
    /// `--joined`: see [`joined`].
    pub joined: bool,
    /// `--relay-cost`: this crate direct against through its relay, nothing else.
    pub relay_cost: bool,
    /// `--peers`: this crate against raw paho, rumqttc and libmosquitto, nothing else.
    pub peers: bool,
    /// `--separate-processes`: each throughput sample in a child process of its own.
    pub separate: bool,
    pub throughput: bool,
    pub latency: bool,
    pub memory: bool,
    pub command: String,
}

const USAGE: &str = "\
usage: cargo run --release --example bench -- [options]

  --quick              small sizes for a smoke run (under a minute)
  --messages N         messages per throughput run (default 30000; quick 2000)
  --rounds R           rounds, clients interleaved in each (default 8; quick 3)
  --trips N            latency round trips per run (default 2000; quick 300)
  --mem-messages N     messages queued in the memory test (default 1000000; quick 50000)
  --mem-bound N        max_queued_incoming_messages of the bounded case (default 1000)
  --window W           publishes in flight; skips the window sweep
  --only LIST          clients: ours, raw, ours-tuned, raw-tuned, ours-default, raw-default,
                       raw-control (a second raw-tuned: the A/A control)
  --skip LIST          parts to skip: throughput, latency, memory
  --qos LIST           throughput QoS levels (default 0,1,2)
  --payload LIST       throughput payload sizes in bytes (default 64,4096)
  --broker-max-inflight N  Mosquitto's max_inflight_messages (default 0 = unlimited;
                       20 is Mosquitto's own default, for the data-loss demonstration)
  --protocol P         3 (MQTT 3.1.1, the default) or 5, for every client
  --joined             a latency round trip polls the publish and the stream together
                       (join!) instead of awaiting the publish, then the message
  --separate-processes every throughput sample in a child process of its own (its
                       publisher and subscriber, and the CPU counted, are the child's)
  --relay-cost         only this crate over five links: direct, handed (bind_address), TLS by
                       Paho C, TLS handed to Paho C, a WebSocket carried by the relay
                       (its latency also against raw paho-mqtt's own WebSocket);
                       throughput at the --qos/--payload cases and latency (window:
                       --window, or 100)
  --peers              this crate, raw paho-mqtt, rumqttc and libmosquitto's command-line
                       clients in the same rounds: throughput at the --qos/--payload cases,
                       CPU per message, latency (window: --window, or 100)
  --out DIR            where the report, CSV and SVG go (default target/bench)";

fn parse_args(args: &[String]) -> Result<Config, String> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut cfg = Config {
        messages: if quick { 2_000 } else { 30_000 },
        rounds: if quick { 3 } else { 8 },
        trips: if quick { 300 } else { 2_000 },
        mem_messages: if quick { 50_000 } else { 1_000_000 },
        mem_bound: 1_000,
        window: None,
        out: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target/bench")),
        variants: Variant::ALL.to_vec(),
        cases: cases(&PAYLOADS, &QOS_LEVELS),
        broker_max_inflight: 0,
        v5: false,
        joined: false,
        relay_cost: false,
        peers: false,
        separate: false,
        throughput: true,
        latency: true,
        memory: true,
        command: if args.is_empty() {
            "cargo run --release --example bench".to_owned()
        } else {
            format!("cargo run --release --example bench -- {}", args.join(" "))
        },
    };
    let (mut qos, mut payloads) = (QOS_LEVELS.to_vec(), PAYLOADS.to_vec());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |v: String, name: &str| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{name}: not a positive number: {v}"))
        };
        match arg.as_str() {
            "--quick" => {}
            "--relay-cost" => cfg.relay_cost = true,
            "--peers" => cfg.peers = true,
            "--separate-processes" => cfg.separate = true,
            "--messages" => cfg.messages = number(value(arg)?, arg)?,
            "--rounds" => cfg.rounds = number(value(arg)?, arg)?,
            "--trips" => cfg.trips = number(value(arg)?, arg)?,
            "--mem-messages" => cfg.mem_messages = number(value(arg)?, arg)?,
            "--mem-bound" => cfg.mem_bound = number(value(arg)?, arg)?,
            "--window" => {
                let w = number(value(arg)?, arg)?;
                if w > usize::from(u16::MAX) {
                    return Err("--window: at most 65535".to_owned());
                }
                cfg.window = Some(w);
            }
            "--out" => cfg.out = PathBuf::from(value(arg)?),
            "--protocol" => match value(arg)?.as_str() {
                "3" | "3.1.1" => cfg.v5 = false,
                "5" => cfg.v5 = true,
                other => return Err(format!("--protocol: 3 or 5, not {other}")),
            },
            "--joined" => cfg.joined = true,
            "--broker-max-inflight" => {
                let v = value(arg)?;
                cfg.broker_max_inflight =
                    v.parse().map_err(|_| format!("{arg}: not a number: {v}"))?;
            }
            "--qos" => {
                qos = Vec::new();
                for q in value(arg)?.split(',') {
                    match q.parse::<u8>() {
                        Ok(q @ 0..=2) => qos.push(q),
                        _ => return Err(format!("--qos: not 0, 1 or 2: {q}")),
                    }
                }
            }
            "--payload" => {
                payloads = Vec::new();
                for p in value(arg)?.split(',') {
                    payloads.push(number(p.to_owned(), arg)?);
                }
            }
            "--only" => {
                let mut chosen = Vec::new();
                for name in value(arg)?.split(',') {
                    let picked: Vec<Variant> = match name {
                        "ours" => vec![Variant::OursTuned, Variant::OursDefault],
                        "raw" => vec![Variant::RawTuned, Variant::RawDefault],
                        _ => Variant::EVERY
                            .into_iter()
                            .filter(|v| v.key() == name)
                            .collect(),
                    };
                    if picked.is_empty() {
                        return Err(format!("--only: unknown client {name}"));
                    }
                    chosen.extend(picked);
                }
                cfg.variants = Variant::EVERY
                    .into_iter()
                    .filter(|v| chosen.contains(v))
                    .collect();
            }
            "--skip" => {
                for part in value(arg)?.split(',') {
                    match part {
                        "throughput" => cfg.throughput = false,
                        "latency" => cfg.latency = false,
                        "memory" => cfg.memory = false,
                        other => return Err(format!("--skip: unknown part {other}")),
                    }
                }
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    cfg.cases = cases(&payloads, &qos);
    Ok(cfg)
}

pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Whether the clients speak MQTT 5 (set once from `--protocol`, read by both drivers).
static V5: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn v5() -> bool {
    V5.load(Ordering::Relaxed)
}

/// `--joined`: a round trip polls the publish and the stream together (`join!`) instead
/// of awaiting the publish, then the message.
static JOINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn joined() -> bool {
    JOINED.load(Ordering::Relaxed)
}

/// A fresh id per run: topics and client ids never repeat.
fn next_run() -> u64 {
    static RUN: AtomicU64 = AtomicU64::new(0);
    u64::from(std::process::id()) * 100_000 + RUN.fetch_add(1, Ordering::Relaxed)
}

/// Waits for the receiving task; aborts it if nothing arrived for [`IDLE`].
/// Returns the messages received and when the last one came.
pub async fn finish_receiving(
    mut task: tokio::task::JoinHandle<Result<Instant, String>>,
    count: &AtomicUsize,
) -> Result<(usize, Instant), BoxError> {
    let mut last = count.load(Ordering::Relaxed);
    let mut last_change = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_millis(100), &mut task).await {
            Ok(joined) => {
                let end = joined??;
                return Ok((count.load(Ordering::Relaxed), end));
            }
            Err(_) => {
                let now = count.load(Ordering::Relaxed);
                if now != last {
                    last = now;
                    last_change = Instant::now();
                } else if last_change.elapsed() > IDLE {
                    task.abort();
                    return Ok((now, last_change));
                }
            }
        }
    }
}

/// `--separate-processes`: every throughput sample runs in a child process of its own.
static SEPARATE: AtomicBool = AtomicBool::new(false);

const TP_CHILD: &str = "__throughput-child";

/// Runs one throughput sample in a child process (this program again) and reads its
/// `SAMPLE` line: both connections of the run, and all the CPU counted, are the child's.
async fn throughput_in_child(
    port: u16,
    variant: Variant,
    window: usize,
    case: Case,
    n: usize,
) -> Result<Sample, BoxError> {
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg(TP_CHILD)
        .arg(variant.key())
        .args([port, window as u16].map(|v| v.to_string()))
        .args([case.qos as usize, case.payload, n, usize::from(v5())].map(|v| v.to_string()))
        .kill_on_drop(true);
    let out = cmd.output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("SAMPLE "))
        .ok_or_else(|| {
            format!(
                "throughput child: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let [received, expected, elapsed, refused, rcv, snd, rest] = v[..] else {
        return Err(format!("throughput child: bad line {line}").into());
    };
    Ok(Sample {
        received: received as usize,
        expected: expected as usize,
        elapsed: Duration::from_nanos(elapsed),
        refused,
        cpu: Cpu {
            paho_receive: Duration::from_nanos(rcv),
            paho_send: Duration::from_nanos(snd),
            rest: Duration::from_nanos(rest),
        },
    })
}

/// `__throughput-child <variant> <port> <window> <qos> <payload> <n> <v5: 0|1>`
fn throughput_child(args: &[String]) -> Result<(), BoxError> {
    let [variant, port, window, qos, payload, n, v5] = args else {
        return Err(
            "usage: __throughput-child <variant> <port> <window> <qos> <payload> <n> <v5>".into(),
        );
    };
    let variant = Variant::EVERY
        .into_iter()
        .find(|v| v.key() == variant)
        .ok_or_else(|| format!("unknown client {variant}"))?;
    V5.store(v5 == "1", Ordering::Relaxed);
    let (port, window): (u16, usize) = (port.parse()?, window.parse()?);
    let case = Case {
        qos: qos.parse()?,
        payload: payload.parse()?,
    };
    let n: usize = n.parse()?;
    let s = runtime()?.block_on(async {
        let run = next_run();
        if variant.ours() {
            ours::throughput(port, variant, window, case, n, run).await
        } else {
            raw::throughput(port, variant, window, case, n, run).await
        }
    })?;
    let ns = |d: Duration| d.as_nanos() as u64;
    println!(
        "SAMPLE {} {} {} {} {} {} {}",
        s.received,
        s.expected,
        ns(s.elapsed),
        s.refused,
        ns(s.cpu.paho_receive),
        ns(s.cpu.paho_send),
        ns(s.cpu.rest)
    );
    Ok(())
}

async fn throughput(
    port: u16,
    variant: Variant,
    window: usize,
    case: Case,
    n: usize,
) -> Result<Sample, BoxError> {
    let work = async {
        if SEPARATE.load(Ordering::Relaxed) {
            return throughput_in_child(port, variant, window, case, n).await;
        }
        let run = next_run();
        if variant.ours() {
            ours::throughput(port, variant, window, case, n, run).await
        } else {
            raw::throughput(port, variant, window, case, n, run).await
        }
    };
    // A completion that never comes (Paho C can lose the callback of a QoS 0 publish
    // written in parts: paho.mqtt.c issue 1667) fails the run instead of the bench; a
    // child process is killed when its future is dropped.
    let sample = match tokio::time::timeout(RUN_LIMIT, work).await {
        Ok(sample) => sample,
        Err(_) => Err(format!("not finished after {RUN_LIMIT:?}: a completion never came").into()),
    };
    tokio::time::sleep(SETTLE).await;
    sample
}

/// The longest a throughput run may take before it counts as failed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Round trips per turn when the clients of a latency run take turns.
const LATENCY_TURN: usize = 50;

/// The turns of `clients` clients that each make `trips` round trips: (client, round
/// trips), [`LATENCY_TURN`] at a time, the first to go rotating turn by turn.
pub fn turns(clients: usize, trips: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..trips.div_ceil(LATENCY_TURN)).flat_map(move |turn| {
        let n = LATENCY_TURN.min(trips - turn * LATENCY_TURN);
        (0..clients).map(move |k| ((turn + k) % clients, n))
    })
}

/// A latency client of either kind.
pub enum Trips {
    Ours(ours::Trips),
    Raw(raw::Trips),
}

impl Trips {
    async fn open(port: u16, variant: Variant, window: usize, qos: u8) -> Result<Trips, BoxError> {
        let run = next_run();
        Ok(if variant.ours() {
            Trips::Ours(ours::Trips::open(port, variant, window, qos, LATENCY_PAYLOAD, run).await?)
        } else {
            Trips::Raw(raw::Trips::open(port, variant, window, qos, LATENCY_PAYLOAD, run).await?)
        })
    }

    /// The unmeasured round trips.
    pub async fn warm_up(&mut self) -> Result<(), BoxError> {
        for _ in 0..LATENCY_WARMUP {
            self.trip().await?;
        }
        Ok(())
    }

    pub async fn trip(&mut self) -> Result<Duration, BoxError> {
        match self {
            Trips::Ours(t) => t.trip().await,
            Trips::Raw(t) => t.trip().await,
        }
    }

    pub async fn close(self) -> Result<(), BoxError> {
        match self {
            Trips::Ours(t) => t.close().await,
            Trips::Raw(t) => t.close().await,
        }
    }
}

/// `trips` round trips at `qos` on one connection of `variant`, alone: publish, receive
/// the own message.
pub async fn latency_alone(
    port: u16,
    variant: Variant,
    window: usize,
    qos: u8,
    trips: usize,
) -> Result<Vec<Duration>, BoxError> {
    let mut client = Trips::open(port, variant, window, qos).await?;
    let trips_done = async {
        client.warm_up().await?;
        let mut out = Vec::with_capacity(trips);
        for _ in 0..trips {
            out.push(client.trip().await?);
        }
        Ok::<_, BoxError>(out)
    };
    let out = tokio::time::timeout(latency_budget(trips), trips_done)
        .await
        .map_err(|_| "latency run timed out")??;
    client.close().await?;
    Ok(out)
}

/// `trips` round trips at `qos` for each of `variants`, every client connected at once
/// and taking turns of [`LATENCY_TURN`] round trips (the first to go rotates turn by
/// turn), so that the machine's drift within a run reaches every client alike. One
/// result per variant, in order.
async fn latency(
    port: u16,
    variants: &[Variant],
    window: usize,
    qos: u8,
    trips: usize,
) -> Vec<Result<Vec<Duration>, BoxError>> {
    let mut clients = Vec::new();
    for &variant in variants {
        clients.push(Trips::open(port, variant, window, qos).await);
    }
    let mut samples: Vec<Vec<Duration>> = variants.iter().map(|_| Vec::new()).collect();
    let turns = async {
        for client in clients.iter_mut() {
            if let Ok(c) = client {
                if let Err(e) = c.warm_up().await {
                    *client = Err(e);
                }
            }
        }
        for (i, n) in turns(clients.len(), trips) {
            let Ok(c) = &mut clients[i] else { continue };
            for _ in 0..n {
                match c.trip().await {
                    Ok(d) => samples[i].push(d),
                    Err(e) => {
                        clients[i] = Err(e);
                        break;
                    }
                }
            }
        }
    };
    let budget = latency_budget(trips * variants.len().max(1));
    let timed_out = tokio::time::timeout(budget, turns).await.is_err();
    let mut out = Vec::new();
    for (client, samples) in clients.into_iter().zip(samples) {
        out.push(match client {
            Err(e) => Err(e),
            Ok(_) if timed_out => Err("latency run timed out".into()),
            Ok(c) => c.close().await.map(|()| samples),
        });
    }
    tokio::time::sleep(SETTLE).await;
    out
}

fn describe(case: Case) -> String {
    format!(
        "QoS {} {:>5}",
        case.qos,
        report::payload_label(case.payload)
    )
}

/// Tunes raw paho's window: each candidate at QoS 0/1/2, 64 B, half the
/// messages of a run, three times, interleaved. The score of a window is the
/// geometric mean over the QoS levels of its median rate; the best score wins.
async fn sweep(cfg: &Config, port: u16, res: &mut Results) -> usize {
    let n = (cfg.messages / 2).max(500);
    println!("== window sweep (paho tuned, 64 B, {n} messages, {SWEEP_REPS} times)");
    let cases = cases(&[64], &QOS_LEVELS);
    for _rep in 0..SWEEP_REPS {
        for w in SWEEP_WINDOWS {
            for &case in &cases {
                match throughput(port, Variant::RawTuned, w, case, n).await {
                    Ok(s) => {
                        println!(
                            "   window {w:>5} {}: {:>9} msg/s",
                            describe(case),
                            s.rate().round()
                        );
                        res.sweep.push(SweepPoint {
                            window: w,
                            case,
                            rate: s.rate(),
                        });
                    }
                    Err(e) => res
                        .failures
                        .push(format!("sweep window {w} {}: {e}", describe(case))),
                }
            }
        }
    }
    let score = |w: usize| {
        let medians: Vec<f64> = cases
            .iter()
            .filter_map(|&c| {
                let rates = res
                    .sweep
                    .iter()
                    .filter(|p| p.window == w && p.case == c)
                    .map(|p| p.rate)
                    .collect();
                report::median(rates)
            })
            .collect();
        if medians.len() == cases.len() {
            (medians.iter().map(|r| r.ln()).sum::<f64>() / medians.len() as f64).exp()
        } else {
            0.0
        }
    };
    let chosen = SWEEP_WINDOWS
        .into_iter()
        .filter(|&w| score(w) > 0.0)
        .max_by(|a, b| score(*a).total_cmp(&score(*b)))
        .unwrap_or(FALLBACK_WINDOW);
    let scores: Vec<String> = SWEEP_WINDOWS
        .iter()
        .map(|&w| format!("{w} → {:.0}", score(w)))
        .collect();
    res.window_note = format!(
        "the best of a sweep over raw paho at 64 B: geometric mean over QoS 0/1/2 of the median \
         msg/s of {SWEEP_REPS} runs, {}",
        scores.join(", ")
    );
    println!("   chosen window: {chosen} ({})", scores.join(", "));
    chosen
}

async fn run(cfg: &Config, port: u16) -> Results {
    let mut res = Results {
        cases: cfg.cases.clone(),
        load: (report::load_average(), String::new()),
        ..Results::default()
    };

    // Warm-up: first connections, allocator, page faults. Not recorded.
    if cfg.throughput || cfg.latency {
        println!("== warm-up");
        for &v in &cfg.variants {
            let case = Case {
                qos: 1,
                payload: 64,
            };
            let n = (cfg.messages / 5).max(500);
            if let Err(e) = throughput(port, v, FALLBACK_WINDOW, case, n).await {
                res.failures.push(format!("warm-up {}: {e}", v.label()));
            }
        }
    }

    res.window = match cfg.window {
        Some(w) => {
            res.window_note = "given with --window".to_owned();
            w
        }
        None if cfg.throughput && cfg.variants.contains(&Variant::RawTuned) => {
            sweep(cfg, port, &mut res).await
        }
        None => {
            res.window_note = "fallback: no sweep without paho tuned".to_owned();
            FALLBACK_WINDOW
        }
    };
    let window = res.window;

    for round in 1..=cfg.rounds {
        // The clients alternate in every case (A B C D); the starting client
        // rotates from round to round (B C D A, ...), so over a multiple of
        // four rounds every client runs in every position equally often.
        let mut variants = cfg.variants.clone();
        let len = variants.len().max(1);
        variants.rotate_left((round - 1) % len);
        if cfg.throughput {
            println!(
                "== round {round}/{}: throughput, {} messages, window {window}",
                cfg.rounds, cfg.messages
            );
            for &case in &cfg.cases {
                for &variant in &variants {
                    match throughput(port, variant, window, case, cfg.messages).await {
                        Ok(sample) => {
                            let lost = if sample.received < sample.expected {
                                format!("  (received {} of {})", sample.received, sample.expected)
                            } else {
                                String::new()
                            };
                            println!(
                                "   {} {:<16} {:>9} msg/s  CPU/msg {:>5.1} µs (Paho rcv {:.1}, snd {:.1}, rest {:.1}){lost}",
                                describe(case),
                                variant.label(),
                                sample.rate().round(),
                                sample.cpu_per_message(),
                                sample.cpu_split().0,
                                sample.cpu_split().1,
                                sample.cpu_split().2
                            );
                            res.throughput.push(ThroughputRun {
                                round,
                                variant,
                                case,
                                sample,
                            });
                        }
                        Err(e) => {
                            println!("   {} {:<16} FAILED: {e}", describe(case), variant.label());
                            res.failures.push(format!(
                                "round {round} {} {}: {e}",
                                describe(case),
                                variant.label()
                            ));
                        }
                    }
                }
            }
        }
        if cfg.latency {
            println!(
                "== round {round}/{}: latency, {} round trips",
                cfg.rounds, cfg.trips
            );
            for qos in LATENCY_QOS {
                let results = latency(port, &variants, window, qos, cfg.trips).await;
                for (&variant, result) in variants.iter().zip(results) {
                    match result {
                        Ok(mut samples) => {
                            samples.sort();
                            let p50 = report::percentile(&samples, 50.0);
                            let p99 = report::percentile(&samples, 99.0);
                            println!(
                                "   QoS {qos} {:<16} p50 {:>6.1} µs  p99 {:>7.1} µs",
                                variant.label(),
                                p50.as_secs_f64() * 1e6,
                                p99.as_secs_f64() * 1e6
                            );
                            res.latency.push(LatencyRun {
                                round,
                                variant,
                                qos,
                                p50,
                                p99,
                            });
                        }
                        Err(e) => {
                            println!("   QoS {qos} {:<16} FAILED: {e}", variant.label());
                            res.failures.push(format!(
                                "round {round} latency QoS {qos} {}: {e}",
                                variant.label()
                            ));
                        }
                    }
                }
            }
        }
    }

    res.load.1 = report::load_average();
    if cfg.memory {
        println!(
            "== memory: {} messages queued, never read (one child process each)",
            cfg.mem_messages
        );
        let mut cases = Vec::new();
        if cfg.variants.iter().any(|v| v.ours()) {
            cases.push(mem::Subscriber::Ours);
            cases.push(mem::Subscriber::OursBounded(cfg.mem_bound));
        }
        if cfg.variants.iter().any(|v| !v.ours()) {
            cases.push(mem::Subscriber::Raw);
        }
        for subscriber in cases {
            let started = Instant::now();
            match mem::measure(
                port,
                subscriber,
                cfg.mem_messages,
                window.max(100),
                next_run(),
            )
            .await
            {
                Ok(m) => {
                    println!(
                        "   {:<48} queued {:>8}  discarded {:>8}  RSS before {:>7} KiB  peak {:>8} KiB  ({:.0} s)",
                        m.subscriber.label(),
                        m.queued,
                        m.discarded.map_or("-".to_owned(), |d| d.to_string()),
                        m.rss_before_kb,
                        m.peak_kb,
                        started.elapsed().as_secs_f64()
                    );
                    res.memory.push(m);
                }
                Err(e) => {
                    println!("   {} FAILED: {e}", subscriber.label());
                    res.failures
                        .push(format!("memory {}: {e}", subscriber.label()));
                }
            }
            tokio::time::sleep(SETTLE).await;
        }
    }
    res
}

fn first_line(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

/// The version of `name` in Cargo.lock.
fn locked_version(name: &str) -> Option<String> {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{name}\"") {
            let version = lines.next()?;
            return Some(
                version
                    .strip_prefix("version = ")?
                    .trim_matches('"')
                    .to_owned(),
            );
        }
    }
    None
}

fn environment() -> Environment {
    let memory = first_line("/proc/meminfo", "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or("?".to_owned(), |kb| {
            format!("{:.1} GiB", kb / 1024.0 / 1024.0)
        });
    let rustc =
        std::process::Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
            .arg("-V")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "rustc (unknown)".to_owned());
    let sys = locked_version("paho-mqtt-sys").unwrap_or_else(|| "?".to_owned());
    // paho-mqtt-sys 0.11.0 bundles Paho C 1.3.16 (paho.mqtt.c/version.*).
    let paho_c = if sys == "0.11.0" {
        "1.3.16 (bundled by paho-mqtt-sys 0.11.0)".to_owned()
    } else {
        format!("(bundled by paho-mqtt-sys {sys})")
    };
    Environment {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "?".to_owned()),
        memory,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("?".to_owned(), |s| s.trim().to_owned()),
        rustc,
        paho_mqtt: locked_version("paho-mqtt").unwrap_or_else(|| "?".to_owned()),
        paho_c,
        mosquitto: broker::version(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(TP_CHILD) {
        if let Err(e) = throughput_child(&args[1..]) {
            eprintln!("throughput child: {e}");
            std::process::exit(1);
        }
        return;
    }
    if args.first().map(String::as_str) == Some(mem::CHILD_COMMAND) {
        if let Err(e) = mem::child_main(&args[1..]) {
            eprintln!("memory child: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cfg = match parse_args(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}\n");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = main_with(cfg) {
        eprintln!("bench: {e}");
        std::process::exit(1);
    }
}

fn main_with(cfg: Config) -> Result<(), BoxError> {
    if !cfg!(debug_assertions) {
        // Release build: fine.
    } else {
        eprintln!("warning: a debug build; run with --release for meaningful figures");
    }
    V5.store(cfg.v5, Ordering::Relaxed);
    JOINED.store(cfg.joined, Ordering::Relaxed);
    SEPARATE.store(cfg.separate, Ordering::Relaxed);
    let env = environment();
    let broker = broker::Broker::start(cfg.broker_max_inflight, cfg.relay_cost)?;
    println!(
        "aiomqtt bench: {} on 127.0.0.1:{} ({}); clients: {}",
        env.mosquitto,
        broker.port,
        broker::settings(cfg.broker_max_inflight).join(", "),
        cfg.variants
            .iter()
            .map(|v| v.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Paho C runs one send and one receive thread for every client of the
    // process and stops them (up to 1 s) when its last client is destroyed.
    // A client that never connects keeps them running between runs, as any
    // long-lived application does; both clients under test benefit alike.
    let keeper = paho_mqtt::AsyncClient::new(
        paho_mqtt::CreateOptionsBuilder::new()
            .server_uri(format!("tcp://127.0.0.1:{}", broker.port))
            .client_id("bench-keeper")
            .persistence(paho_mqtt::PersistenceType::None)
            .mqtt_version(paho_mqtt::MQTT_VERSION_3_1_1)
            .finalize(),
    )?;
    let started = Instant::now();
    let rt = runtime()?;
    let port = broker.port;
    let cfg = std::sync::Arc::new(cfg);
    let task_cfg = cfg.clone();
    if cfg.relay_cost {
        let window = cfg.window.unwrap_or(FALLBACK_WINDOW);
        if let Some(tls) = broker.tls.clone() {
            relay_cost::set_tls(tls);
        }
        if let Some(ws) = broker.ws {
            relay_cost::set_ws(ws);
        }
        rt.block_on(async move {
            tokio::spawn(async move { relay_cost::run(&task_cfg, port, window).await }).await
        })??;
        drop(rt);
        drop(keeper);
        return Ok(());
    }
    if cfg.peers {
        let window = cfg.window.unwrap_or(FALLBACK_WINDOW);
        rt.block_on(async move {
            tokio::spawn(async move { peers::run(&task_cfg, port, window).await }).await
        })??;
        drop(rt);
        drop(keeper);
        return Ok(());
    }
    let res =
        rt.block_on(async move { tokio::spawn(async move { run(&task_cfg, port).await }).await })?;
    drop(rt);
    drop(keeper);
    drop(broker);

    let markdown = report::markdown(&cfg, &env, &res);
    let subtitle = format!(
        "{} messages per run, median of {} rounds, window {}; {} CPUs, {}",
        cfg.messages, cfg.rounds, res.window, env.cpus, env.cpu_model
    );
    std::fs::create_dir_all(&cfg.out)?;
    std::fs::write(cfg.out.join("bench-results.md"), &markdown)?;
    std::fs::write(cfg.out.join("bench-samples.csv"), report::csv(&res))?;
    if !res.throughput.is_empty() {
        std::fs::write(
            cfg.out.join("bench-throughput.svg"),
            report::svg(
                &res,
                &cfg.variants,
                &subtitle,
                &format!(
                    "{}, max_inflight_messages {}{}; one publisher and one subscriber connection, same QoS; higher is better.",
                    env.mosquitto,
                    cfg.broker_max_inflight,
                    if cfg.broker_max_inflight == 0 {
                        " (unlimited)"
                    } else {
                        ""
                    }
                ),
            ),
        )?;
    }
    println!("\n{markdown}");
    println!(
        "Wrote bench-results.md, bench-samples.csv and bench-throughput.svg to {} ({:.0} s)",
        cfg.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
