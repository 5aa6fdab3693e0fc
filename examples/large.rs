//! Large messages: how fast one big PUBLISH crosses a private Mosquitto on loopback,
//! sent by this crate and by `mosquitto_pub` (the C reference) in interleaved rounds,
//! received by one subscriber of this crate.
//!
//! ```sh
//! cargo run --release --example large                       # 64 MiB, QoS 0 and 1, 5 rounds
//! cargo run --release --example large -- --mib 16 --rounds 3 --qos 1
//! ```
//!
//! Each sample is the time from the start of the publish (for `mosquitto_pub`, the
//! start of the process) to the subscriber holding the whole message. The publish runs
//! under the client's default timeout: a large payload needs no hand-set one.

#[path = "bench/broker.rs"]
mod broker;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aiomqtt::{Client, QoS};
use futures::StreamExt;

struct Args {
    mib: usize,
    rounds: usize,
    qos: Vec<QoS>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        mib: 64,
        rounds: 5,
        qos: vec![QoS::AtMostOnce, QoS::AtLeastOnce],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--mib" => a.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--rounds" => a.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--qos" => {
                a.qos = value()?
                    .split(',')
                    .map(|q| match q {
                        "0" => Ok(QoS::AtMostOnce),
                        "1" => Ok(QoS::AtLeastOnce),
                        "2" => Ok(QoS::ExactlyOnce),
                        other => Err(format!("--qos: {other} is not 0, 1 or 2")),
                    })
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let broker = broker::Broker::start(0, false)?;
    let size = args.mib << 20;
    let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let file = std::env::temp_dir().join(format!("aiomqtt-large-{}.bin", std::process::id()));
    std::fs::write(&file, &payload)?;
    let has_mosquitto_pub = Command::new("mosquitto_pub")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();

    let sub = Client::builder("127.0.0.1")
        .port(broker.port)
        .build()?
        .connect()
        .await?;
    sub.subscribe("large/#").qos(QoS::AtLeastOnce).await?;
    let mut messages = sub.messages();
    let publisher = Client::builder("127.0.0.1")
        .port(broker.port)
        .build()?
        .connect()
        .await?;

    println!(
        "{} MiB, {} rounds, {}; MiB/s from the start of the publish to the subscriber",
        args.mib,
        args.rounds,
        broker::version()
    );
    for &qos in &args.qos {
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for round in 0..args.rounds {
            let t0 = Instant::now();
            let (published, received) = tokio::join!(
                publisher
                    .publish(format!("large/ours/{round}"), payload.clone())
                    .qos(qos),
                messages.next()
            );
            let elapsed = t0.elapsed();
            published?;
            let m = received.ok_or("the subscriber's connection ended")??;
            if m.payload.len() != size {
                return Err(format!("received {} bytes of {size}", m.payload.len()).into());
            }
            ours.push(elapsed.as_secs_f64());

            if has_mosquitto_pub {
                let t0 = Instant::now();
                let mut child = Command::new("mosquitto_pub")
                    .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
                    .args(["-q", &qos.as_u8().to_string()])
                    .args(["-t", &format!("large/ref/{round}")])
                    .arg("-f")
                    .arg(&file)
                    .spawn()?;
                let m = tokio::time::timeout(Duration::from_secs(120), messages.next())
                    .await?
                    .ok_or("the subscriber's connection ended")??;
                reference.push(t0.elapsed().as_secs_f64());
                child.wait()?;
                if m.payload.len() != size {
                    return Err(format!("received {} bytes of {size}", m.payload.len()).into());
                }
            }
        }
        let mibs = |s: f64| args.mib as f64 / s;
        let o = median(ours.clone());
        print!(
            "QoS {}: aiomqtt {:.0} MiB/s (median of {:?} s)",
            qos.as_u8(),
            mibs(o),
            ours.iter()
                .map(|s| (s * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        if !reference.is_empty() {
            let r = median(reference.clone());
            print!(
                "; mosquitto_pub {:.0} MiB/s; aiomqtt takes {:.2}x mosquitto_pub's time",
                mibs(r),
                o / r
            );
        }
        println!();
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}
