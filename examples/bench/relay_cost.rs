//! `--relay-cost`: what the relay costs. The same client (this crate, tuned window) runs
//! direct and through the relay, interleaved in every round; the relay is selected with
//! `bind_address("127.0.0.1")`, which changes nothing else on loopback. Throughput at the
//! configured cases, CPU per message (the relay's thread counts in "rest"), and latency.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::report::{median, percentile};
use crate::{BoxError, Config, Variant, ours};

/// Read by [`ours::client`]: route this crate's connections through the relay.
static RELAY: AtomicBool = AtomicBool::new(false);

pub fn relayed() -> bool {
    RELAY.load(Ordering::Relaxed)
}

#[derive(Default)]
struct Cell {
    rate: Vec<f64>,
    cpu: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
}

pub async fn run(cfg: &Config, port: u16, window: usize) -> Result<(), BoxError> {
    let cases = &cfg.cases;
    // [case][direct, relay]; latency per QoS.
    let mut tp: Vec<[Cell; 2]> = cases.iter().map(|_| Default::default()).collect();
    let mut lat: Vec<[Cell; 2]> = crate::LATENCY_QOS
        .iter()
        .map(|_| Default::default())
        .collect();
    for round in 1..=cfg.rounds {
        // Alternate which goes first.
        let order = if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        };
        println!("== relay cost, round {round}/{}", cfg.rounds);
        for (i, &case) in cases.iter().enumerate() {
            for relay in order {
                RELAY.store(relay, Ordering::Relaxed);
                let run = crate::next_run();
                let s = ours::throughput(port, Variant::OursTuned, window, case, cfg.messages, run)
                    .await?;
                tokio::time::sleep(crate::SETTLE).await;
                if s.received < s.expected {
                    return Err(format!("received {} of {}", s.received, s.expected).into());
                }
                println!(
                    "   QoS {} {:>5} {:<7} {:>9.0} msg/s  CPU/msg {:>5.1} µs",
                    case.qos,
                    crate::report::payload_label(case.payload),
                    if relay { "relay" } else { "direct" },
                    s.rate(),
                    s.cpu_per_message()
                );
                let c = &mut tp[i][usize::from(relay)];
                c.rate.push(s.rate());
                c.cpu.push(s.cpu_per_message());
            }
        }
        for (i, &qos) in crate::LATENCY_QOS.iter().enumerate() {
            for relay in order {
                RELAY.store(relay, Ordering::Relaxed);
                let run = crate::next_run();
                let mut samples = ours::latency(
                    port,
                    Variant::OursTuned,
                    window,
                    qos,
                    crate::LATENCY_PAYLOAD,
                    cfg.trips,
                    run,
                )
                .await?;
                tokio::time::sleep(crate::SETTLE).await;
                samples.sort();
                let us = |d: Duration| d.as_secs_f64() * 1e6;
                let c = &mut lat[i][usize::from(relay)];
                c.p50.push(us(percentile(&samples, 50.0)));
                c.p99.push(us(percentile(&samples, 99.0)));
            }
        }
    }
    RELAY.store(false, Ordering::Relaxed);

    let m = |v: &[f64]| median(v.to_vec()).unwrap_or(f64::NAN);
    println!(
        "\n### Relay cost (this crate, window {window}, {} messages per run, medians of {} rounds)\n",
        cfg.messages, cfg.rounds
    );
    println!("Command: `{}`\n", cfg.command);
    println!(
        "| QoS | payload | direct msg/s | relay msg/s | ratio (≥ 0.90) | direct CPU/msg µs | relay CPU/msg µs |"
    );
    println!("|---|---|--:|--:|:-:|--:|--:|");
    for (i, case) in cases.iter().enumerate() {
        let [d, r] = &tp[i];
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} |",
            case.qos,
            crate::report::payload_label(case.payload),
            m(&d.rate),
            m(&r.rate),
            m(&r.rate) / m(&d.rate),
            m(&d.cpu),
            m(&r.cpu)
        );
    }
    println!("\n| QoS | direct p50 / p99 µs | relay p50 / p99 µs | p50 difference µs (≤ +50) |");
    println!("|---|--:|--:|--:|");
    for (i, qos) in crate::LATENCY_QOS.iter().enumerate() {
        let [d, r] = &lat[i];
        println!(
            "| {qos} | {:.0} / {:.0} | {:.0} / {:.0} | {:+.0} |",
            m(&d.p50),
            m(&d.p99),
            m(&r.p50),
            m(&r.p99),
            m(&r.p50) - m(&d.p50)
        );
    }
    Ok(())
}
