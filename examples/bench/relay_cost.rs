//! `--relay-cost`: what a link the facade dials itself costs. The same client (this crate,
//! tuned window) runs over five links, interleaved in every round:
//!
//! - `direct`: plain TCP, dialled by Paho C;
//! - `handed`: plain TCP dialled by the facade (selected with `bind_address("127.0.0.1")`,
//!   which changes nothing else on loopback) and handed to Paho C;
//! - `tls direct`: TLS done by Paho C (the broker's self-signed certificate);
//! - `tls handed`: TLS done by the facade (selected by pinning TLS 1.3, the version both
//!   negotiate anyway) on the socket it dials, handed to Paho C with the socket;
//! - `ws relay`: a WebSocket, which the relay's thread carries (Paho C's own WebSockets
//!   cannot serve two connections of a process).
//!
//! Throughput at the configured cases, CPU per message (the relay's thread counts in
//! "rest"), and latency; `handed` is compared with `direct`, `tls handed` with `tls direct`,
//! `ws relay` with `direct` (the broker's WebSocket listener counts in it too). For latency
//! only, `ws paho`: raw paho-mqtt with Paho C's own WebSockets, which one connection of the
//! process may use (a throughput run needs two), compared with `ws relay`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use aiomqtt::{ClientBuilder, TlsParams, TlsVersion};

use crate::report::{Cell, median, percentile};
use crate::{BoxError, Case, Config, Variant, ours};

/// The links, in the order of the tables.
const LINKS: [Link; 5] = [
    Link::Direct,
    Link::Handed,
    Link::TlsDirect,
    Link::TlsHanded,
    Link::WsRelay,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Direct,
    Handed,
    TlsDirect,
    TlsHanded,
    WsRelay,
}

impl Link {
    fn label(self) -> &'static str {
        match self {
            Link::Direct => "direct",
            Link::Handed => "handed",
            Link::TlsDirect => "tls direct",
            Link::TlsHanded => "tls handed",
            Link::WsRelay => "ws relay",
        }
    }
}

/// The largest payload the `ws relay` throughput runs use. Mosquitto 2.0.11's WebSocket
/// listener writes a frame longer than 4,116 bytes in pieces, one per pass of its service
/// loop, which waits up to 100 ms when nothing else happens (strace: a `sendto` of 4,116
/// bytes, then of 5, each after an `epoll_wait` of 100 ms). A backlog of 4 KiB messages
/// then drains at about five a second (to Paho C's own WebSocket client as well: test
/// `transports::mosquittos_websocket_listener_delivers_large_frames_slowly_to_any_client`);
/// in the run that found it the subscriber's connection was lost after 2.5 minutes. Such a
/// run measures the broker.
const WS_MAX_PAYLOAD: usize = 4_000;

fn measured(link: Link, case: Case) -> bool {
    link != Link::WsRelay || case.payload <= WS_MAX_PAYLOAD
}

/// Read by [`ours::client`] through [`link`]: the link of this crate's connections.
static LINK: AtomicU8 = AtomicU8::new(0);
/// The broker's TLS port and its certificate.
static TLS: OnceLock<(u16, PathBuf)> = OnceLock::new();

pub fn set_tls(tls: (u16, PathBuf)) {
    let _ = TLS.set(tls);
}

/// The broker's WebSocket port.
static WS: OnceLock<u16> = OnceLock::new();

/// Where `ws paho`'s latency goes, after the links'.
const WS_PAHO: usize = LINKS.len();

pub fn set_ws(port: u16) {
    let _ = WS.set(port);
}

fn current() -> Link {
    LINKS[usize::from(LINK.load(Ordering::Relaxed))]
}

/// `b` set up for the current link (plain `direct` outside `--relay-cost`).
pub fn link(b: ClientBuilder) -> ClientBuilder {
    let tls = |b: ClientBuilder, pin: bool| match TLS.get() {
        Some((port, ca)) => {
            let params = TlsParams::new().ca_certs(ca);
            let params = if pin {
                params.tls_version(TlsVersion::Tls13)
            } else {
                params
            };
            b.port(*port).tls_params(params)
        }
        None => b,
    };
    match current() {
        Link::Direct => b,
        Link::Handed => b.bind_address("127.0.0.1"),
        Link::TlsDirect => tls(b, false),
        Link::TlsHanded => tls(b, true),
        Link::WsRelay => match WS.get() {
            Some(port) => b.port(*port).transport(aiomqtt::Transport::WebSockets),
            None => b,
        },
    }
}

pub async fn run(cfg: &Config, port: u16, window: usize) -> Result<(), BoxError> {
    if TLS.get().is_none() || WS.get().is_none() {
        return Err("the benchmark's broker has no TLS or WebSocket listener".into());
    }
    let cases = &cfg.cases;
    // [case][link]; latency per QoS.
    let mut tp: Vec<[Cell; 5]> = cases.iter().map(|_| Default::default()).collect();
    // The five links and `ws paho` (latency only).
    let mut lat: Vec<[Cell; 6]> = crate::LATENCY_QOS
        .iter()
        .map(|_| Default::default())
        .collect();
    for round in 1..=cfg.rounds {
        // Alternate which of each pair goes first (and where the WebSocket runs).
        let order: [usize; 5] = if round % 2 == 1 {
            [0, 1, 2, 3, 4]
        } else {
            [4, 1, 0, 3, 2]
        };
        println!("== relay cost, round {round}/{}", cfg.rounds);
        for (i, &case) in cases.iter().enumerate() {
            for l in order {
                if !measured(LINKS[l], case) {
                    continue;
                }
                LINK.store(l as u8, Ordering::Relaxed);
                let run = crate::next_run();
                let s = ours::throughput(port, Variant::OursTuned, window, case, cfg.messages, run)
                    .await?;
                tokio::time::sleep(crate::SETTLE).await;
                if s.received < s.expected {
                    return Err(format!("received {} of {}", s.received, s.expected).into());
                }
                println!(
                    "   QoS {} {:>5} {:<10} {:>9.0} msg/s  CPU/msg {:>5.1} µs",
                    case.qos,
                    crate::report::payload_label(case.payload),
                    LINKS[l].label(),
                    s.rate(),
                    s.cpu_per_message()
                );
                let c = &mut tp[i][l];
                c.rate.push(s.rate());
                c.cpu.push(s.cpu_per_message());
            }
        }
        for (i, &qos) in crate::LATENCY_QOS.iter().enumerate() {
            // The links connected at once, taking turns (as in the main latency runs).
            let mut clients = Vec::new();
            for l in order {
                LINK.store(l as u8, Ordering::Relaxed);
                let run = crate::next_run();
                let t = ours::Trips::open(
                    port,
                    Variant::OursTuned,
                    window,
                    qos,
                    crate::LATENCY_PAYLOAD,
                    run,
                )
                .await?;
                clients.push((l, crate::Trips::Ours(t)));
            }
            if let Some(ws) = WS.get() {
                let t = crate::raw::Trips::open_at(
                    &format!("ws://127.0.0.1:{ws}/mqtt"),
                    Variant::RawTuned,
                    window,
                    qos,
                    crate::LATENCY_PAYLOAD,
                    crate::next_run(),
                )
                .await?;
                clients.push((WS_PAHO, crate::Trips::Raw(t)));
            }
            let mut samples: Vec<Vec<Duration>> = (0..=WS_PAHO).map(|_| Vec::new()).collect();
            let budget = crate::latency_budget(cfg.trips * clients.len());
            let turns = async {
                for (_, c) in clients.iter_mut() {
                    c.warm_up().await?;
                }
                for (i, n) in crate::turns(clients.len(), cfg.trips) {
                    let (l, c) = &mut clients[i];
                    for _ in 0..n {
                        samples[*l].push(c.trip().await?);
                    }
                }
                Ok::<_, BoxError>(())
            };
            tokio::time::timeout(budget, turns)
                .await
                .map_err(|_| "latency run timed out")??;
            for (_, c) in clients {
                c.close().await?;
            }
            tokio::time::sleep(crate::SETTLE).await;
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            for (l, mut s) in samples.into_iter().enumerate() {
                if s.is_empty() {
                    continue;
                }
                s.sort();
                let c = &mut lat[i][l];
                c.p50.push(us(percentile(&s, 50.0)));
                c.p99.push(us(percentile(&s, 99.0)));
            }
        }
    }
    LINK.store(0, Ordering::Relaxed);

    let m = |v: &[f64]| median(v.to_vec()).unwrap_or(f64::NAN);
    println!(
        "\n### Relay cost (this crate, window {window}, {} messages per run, medians of {} rounds)\n",
        cfg.messages, cfg.rounds
    );
    println!("Command: `{}`\n", cfg.command);
    for (base, other) in [(0, 1), (2, 3), (0, 4)] {
        let (b, o) = (LINKS[base].label(), LINKS[other].label());
        println!(
            "| QoS | payload | {b} msg/s | {o} msg/s | ratio (≥ 0.90) | {b} CPU/msg µs | {o} CPU/msg µs |"
        );
        println!("|---|---|--:|--:|:-:|--:|--:|");
        for (i, case) in cases.iter().enumerate() {
            let (d, r) = (&tp[i][base], &tp[i][other]);
            // The cells of `other`: its rate, the ratio, its CPU per message.
            let (rate, ratio, cpu) = if measured(LINKS[other], *case) {
                (
                    format!("{:.0}", m(&r.rate)),
                    format!("{:.2}", m(&r.rate) / m(&d.rate)),
                    format!("{:.1}", m(&r.cpu)),
                )
            } else {
                (
                    format!(
                        "not run (payload over {WS_MAX_PAYLOAD} B: Mosquitto's WebSocket \
                         listener sends the frame in pieces 100 ms apart)"
                    ),
                    String::new(),
                    String::new(),
                )
            };
            println!(
                "| {} | {} | {:.0} | {rate} | {ratio} | {:.1} | {cpu} |",
                case.qos,
                crate::report::payload_label(case.payload),
                m(&d.rate),
                m(&d.cpu),
            );
        }
        println!();
        latency_table(&lat, (b, base), (o, other), " (≤ +50)");
    }
    let ws = LINKS.len() - 1;
    latency_table(&lat, ("ws paho", WS_PAHO), (LINKS[ws].label(), ws), "");
    Ok(())
}

/// Prints the p50 / p99 table of `other` against `base` (label, index in `lat`).
fn latency_table(lat: &[[Cell; 6]], base: (&str, usize), other: (&str, usize), bound: &str) {
    let m = |v: &[f64]| median(v.to_vec()).unwrap_or(f64::NAN);
    let ((b, base), (o, other)) = (base, other);
    println!("| QoS | {b} p50 / p99 µs | {o} p50 / p99 µs | p50 difference µs{bound} |");
    println!("|---|--:|--:|--:|");
    for (i, qos) in crate::LATENCY_QOS.iter().enumerate() {
        let (d, r) = (&lat[i][base], &lat[i][other]);
        println!(
            "| {qos} | {:.0} / {:.0} | {:.0} / {:.0} | {:+.0} |",
            m(&d.p50),
            m(&d.p99),
            m(&r.p50),
            m(&r.p99),
            m(&r.p50) - m(&d.p50)
        );
    }
    println!();
}
