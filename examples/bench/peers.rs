//! `--peers`: this crate against the other clients in the same interleaved rounds — raw
//! paho-mqtt (its own engine), rumqttc (pure Rust), and libmosquitto through Mosquitto's
//! own command-line clients (`mosquitto_pub -l` fed N lines, `mosquitto_sub -C N`), all
//! with the same window where the client has one. Throughput at the configured cases, CPU
//! per message, and latency at QoS 0/1/2 (not for the command-line clients, which cannot
//! time a round trip).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Cell, median, percentile};
use crate::{BoxError, Case, Config, Cpu, Sample, Variant, ours, peer_rumqttc, raw};

const PUB: &str = "/usr/bin/mosquitto_pub";
/// How long mosquitto_sub may take to receive the rest once mosquitto_pub has exited.
const SUB_GRACE: Duration = Duration::from_secs(5);
const SUB: &str = "/usr/bin/mosquitto_sub";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    Ours,
    Paho,
    Rumqttc,
    Mosquitto,
}

impl Peer {
    fn label(self) -> &'static str {
        match self {
            Peer::Ours => "aiomqtt",
            Peer::Paho => "raw paho-mqtt",
            Peer::Rumqttc => "rumqttc",
            Peer::Mosquitto => "libmosquitto (CLI)",
        }
    }
}

const PEERS: [Peer; 4] = [Peer::Ours, Peer::Paho, Peer::Rumqttc, Peer::Mosquitto];

async fn throughput(
    peer: Peer,
    port: u16,
    window: usize,
    case: Case,
    n: usize,
) -> Result<Sample, BoxError> {
    let run = crate::next_run();
    let work = async {
        match peer {
            Peer::Ours => ours::throughput(port, Variant::OursTuned, window, case, n, run).await,
            Peer::Paho => raw::throughput(port, Variant::RawTuned, window, case, n, run).await,
            Peer::Rumqttc => peer_rumqttc::throughput(port, window, case, n, run).await,
            Peer::Mosquitto => mosquitto_cli(port, case, n, run).await,
        }
    };
    let sample = tokio::time::timeout(crate::RUN_LIMIT, work)
        .await
        .map_err(|_| format!("not finished after {:?}", crate::RUN_LIMIT))?;
    tokio::time::sleep(crate::SETTLE).await;
    sample
}

/// `mosquitto_sub -C n` subscribed first, then `mosquitto_pub -l` publishing `n` lines of
/// `case.payload` bytes (a line is a message; its end of line is not sent). Timed from
/// the start of `mosquitto_pub` to the exit of `mosquitto_sub`; the CPU is both
/// processes' (the children reaped meanwhile). libmosquitto's window is its default, 20.
async fn mosquitto_cli(port: u16, case: Case, n: usize, run: u64) -> Result<Sample, BoxError> {
    let topic = format!("bench/{run}");
    let port = port.to_string();
    let qos = case.qos.to_string();
    let common = |cmd: &mut Command, id: &str| {
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-t",
            &topic,
            "-q",
            &qos,
            "-i",
            id,
        ]);
    };
    let mut sub = Command::new(SUB);
    common(&mut sub, &format!("bench-{run}-msub"));
    sub.args(["-C", &n.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut sub = sub.spawn().map_err(|e| format!("{SUB}: {e}"))?;
    // mosquitto_sub says nothing when it has subscribed: give it time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let line = vec![b'Z'; case.payload];
    let mut input = Vec::with_capacity((case.payload + 1) * n);
    for _ in 0..n {
        input.extend_from_slice(&line);
        input.push(b'\n');
    }
    let cpu_before = children_cpu();
    let start = Instant::now();
    let mut publ = Command::new(PUB);
    common(&mut publ, &format!("bench-{run}-mpub"));
    publ.arg("-l")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut publ = publ.spawn().map_err(|e| format!("{PUB}: {e}"))?;
    let mut stdin = publ.stdin.take().ok_or("mosquitto_pub's stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    // Timed to mosquitto_sub's exit. Once mosquitto_pub has exited, what it sent arrives
    // within moments: libmosquitto 2.0.11's line mode exits early at QoS 1 and 2 with
    // 100,000 lines of 64 B (34,467 delivered, with 50,000 all), so the sample fails then
    // instead of waiting for the run's limit.
    let waited = tokio::task::spawn_blocking(move || {
        let io = |e: std::io::Error| e.to_string();
        let mut published: Option<(std::process::ExitStatus, Instant)> = None;
        loop {
            if let Some(status) = sub.try_wait().map_err(io)? {
                let end = Instant::now();
                let published = match published {
                    Some((status, _)) => status,
                    None => publ.wait().map_err(io)?,
                };
                return Ok((status, published, end));
            }
            if published.is_none() {
                published = publ
                    .try_wait()
                    .map_err(io)?
                    .map(|status| (status, Instant::now()));
            }
            if published.is_some_and(|(_, at)| at.elapsed() > SUB_GRACE) {
                let _ = sub.kill();
                let _ = sub.wait();
                return Err(format!(
                    "mosquitto_sub had not received {n} messages {SUB_GRACE:?} after \
                     mosquitto_pub exited"
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let (sub_status, pub_status, end) = tokio::time::timeout(crate::RUN_LIMIT, waited)
        .await
        .map_err(|_| "mosquitto_sub did not receive everything")??
        .map_err(|e| -> BoxError { e.into() })?;
    let _ = writer.join();
    if !sub_status.success() || !pub_status.success() {
        return Err("mosquitto_pub or mosquitto_sub failed".into());
    }
    let cpu = children_cpu() - cpu_before;
    Ok(Sample {
        received: n,
        expected: n,
        elapsed: end - start,
        refused: 0,
        cpu: Cpu {
            rest: cpu,
            ..Cpu::default()
        },
    })
}

/// User and system CPU of the reaped children of this process.
#[allow(unsafe_code)]
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into `usage`, which is valid for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

async fn latency(
    peer: Peer,
    port: u16,
    window: usize,
    qos: u8,
    trips: usize,
) -> Result<Vec<Duration>, BoxError> {
    let run = crate::next_run();
    let p = crate::LATENCY_PAYLOAD;
    let samples = match peer {
        Peer::Ours => crate::latency_alone(port, Variant::OursTuned, window, qos, trips).await,
        Peer::Paho => crate::latency_alone(port, Variant::RawTuned, window, qos, trips).await,
        Peer::Rumqttc => tokio::time::timeout(
            crate::latency_budget(trips),
            peer_rumqttc::latency(port, window, qos, p, trips, run),
        )
        .await
        .map_err(|_| "latency run timed out")?,
        Peer::Mosquitto => Err("no latency for the command-line clients".into()),
    };
    tokio::time::sleep(crate::SETTLE).await;
    samples
}

pub async fn run(cfg: &Config, port: u16, window: usize) -> Result<(), BoxError> {
    for tool in [PUB, SUB] {
        if !std::path::Path::new(tool).exists() {
            return Err(format!("{tool} not found (apt-get install mosquitto-clients)").into());
        }
    }
    let cases = &cfg.cases;
    let mut tp: Vec<[Cell; 4]> = cases.iter().map(|_| Default::default()).collect();
    let mut lat: Vec<[Cell; 4]> = crate::LATENCY_QOS
        .iter()
        .map(|_| Default::default())
        .collect();
    for round in 1..=cfg.rounds {
        // Rotate who goes first.
        let order: Vec<usize> = (0..PEERS.len())
            .map(|i| (i + round - 1) % PEERS.len())
            .collect();
        println!("== peers, round {round}/{}", cfg.rounds);
        for (i, &case) in cases.iter().enumerate() {
            for &p in &order {
                let peer = PEERS[p];
                let c = &mut tp[i][p];
                match throughput(peer, port, window, case, cfg.messages).await {
                    Ok(s) if s.received >= s.expected => {
                        println!(
                            "   QoS {} {:>5} {:<19} {:>9.0} msg/s  CPU/msg {:>5.1} µs",
                            case.qos,
                            crate::report::payload_label(case.payload),
                            peer.label(),
                            s.rate(),
                            s.cpu_per_message()
                        );
                        c.rate.push(s.rate());
                        c.cpu.push(s.cpu_per_message());
                    }
                    Ok(s) => {
                        println!(
                            "   {} received {} of {}",
                            peer.label(),
                            s.received,
                            s.expected
                        );
                        c.failed += 1;
                    }
                    Err(e) => {
                        println!("   {} failed: {e}", peer.label());
                        c.failed += 1;
                    }
                }
            }
        }
        for (i, &qos) in crate::LATENCY_QOS.iter().enumerate() {
            for &p in order.iter().filter(|&&p| PEERS[p] != Peer::Mosquitto) {
                let c = &mut lat[i][p];
                match latency(PEERS[p], port, window, qos, cfg.trips).await {
                    Ok(mut samples) => {
                        samples.sort();
                        let us = |d: Duration| d.as_secs_f64() * 1e6;
                        c.p50.push(us(percentile(&samples, 50.0)));
                        c.p99.push(us(percentile(&samples, 99.0)));
                    }
                    Err(e) => {
                        println!("   latency {} QoS {qos} failed: {e}", PEERS[p].label());
                        c.failed += 1;
                    }
                }
            }
        }
    }

    let m = |v: &[f64]| median(v.to_vec()).unwrap_or(f64::NAN);
    println!(
        "\n### Peers (window {window}, {} messages per run, medians of {} rounds)\n",
        cfg.messages, cfg.rounds
    );
    println!("Command: `{}`\n", cfg.command);
    print!("| QoS | payload |");
    for p in PEERS {
        print!(" {} msg/s (× aiomqtt) |", p.label());
    }
    println!();
    println!("|---|---|--:|--:|--:|--:|");
    for (i, case) in cases.iter().enumerate() {
        let base = m(&tp[i][0].rate);
        print!(
            "| {} | {} |",
            case.qos,
            crate::report::payload_label(case.payload)
        );
        for (p, cell) in tp[i].iter().enumerate() {
            let fails = if cell.failed > 0 {
                format!(" ({} failed)", cell.failed)
            } else {
                String::new()
            };
            if p == 0 {
                print!(" {:.0}{fails} |", m(&cell.rate));
            } else {
                print!(
                    " {:.0} ({:.2}){fails} |",
                    m(&cell.rate),
                    m(&cell.rate) / base
                );
            }
        }
        println!();
    }
    print!("\n| QoS | payload |");
    for p in PEERS {
        print!(" {} CPU/msg µs |", p.label());
    }
    println!();
    println!("|---|---|--:|--:|--:|--:|");
    for (i, case) in cases.iter().enumerate() {
        print!(
            "| {} | {} |",
            case.qos,
            crate::report::payload_label(case.payload)
        );
        for cell in &tp[i] {
            print!(" {:.1} |", m(&cell.cpu));
        }
        println!();
    }
    println!(
        "\n| QoS | aiomqtt p50 / p99 µs | raw paho-mqtt p50 / p99 µs | rumqttc p50 / p99 µs |"
    );
    println!("|---|--:|--:|--:|");
    for (i, qos) in crate::LATENCY_QOS.iter().enumerate() {
        print!("| {qos} |");
        for cell in &lat[i][..3] {
            print!(" {:.0} / {:.0} |", m(&cell.p50), m(&cell.p99));
        }
        println!();
    }
    Ok(())
}
