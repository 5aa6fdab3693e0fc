//! How the client's costs grow with the work, against a private Mosquitto on loopback:
//!
//! 1. **Connections**: 1, 10, 100 and 1,000 clients in one process, connected at once —
//!    the time until all are connected, resident memory (the largest growth over the
//!    rounds: later rounds reuse memory freed by earlier ones), threads and file
//!    descriptors per connection, and the aggregate throughput of all of them publishing QoS 1 messages
//!    to their own topic, each subscribed to it (50,000 messages in all).
//! 2. **Subscriptions**: one connection with 1 and with 1,000 subscriptions — the time to
//!    make them, and the throughput of 20,000 QoS 1 messages spread over the topics.
//! 3. **Payloads**: one publisher and one subscriber, QoS 1, 16 B to 64 MiB — messages and
//!    MiB per second; also drawn as `target/bench/scale-payload.svg`.
//!
//! ```sh
//! cargo run --release --example scale                # everything, 3 rounds, medians
//! cargo run --release --example scale -- --rounds 1  # a quick look
//! ```

#[path = "bench/broker.rs"]
mod broker;

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use aiomqtt::{Client, Connection, QoS};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Publishes in flight per connection.
const WINDOW: usize = 100;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A `/proc/self/status` field in KiB (`VmRSS`, `Threads`, ...).
fn status(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN)
}

fn fds() -> f64 {
    std::fs::read_dir("/proc/self/fd").map_or(f64::NAN, |d| d.count() as f64)
}

fn client(port: u16, id: &str, payload: usize) -> Result<Client, BoxError> {
    let timeout = Duration::from_secs(30) + Duration::from_secs((payload >> 20) as u64);
    Ok(Client::builder("127.0.0.1")
        .port(port)
        .identifier(id)
        .max_inflight_messages(WINDOW as u16)
        .timeout(timeout)
        .build()?)
}

/// Publishes `n` messages of `payload` bytes to `topics` in turn (at most [`WINDOW`] in
/// flight), while `receiver` counts them; returns when both are done.
async fn pump(
    conn: &Connection,
    topics: &[String],
    n: usize,
    payload: &[u8],
) -> Result<(), BoxError> {
    let mut inflight = FuturesUnordered::new();
    for i in 0..n {
        if inflight.len() >= WINDOW {
            if let Some(done) = inflight.next().await {
                done?;
            }
        }
        inflight.push(
            conn.publish(topics[i % topics.len()].as_str(), payload.to_vec())
                .qos(QoS::AtLeastOnce)
                .into_future(),
        );
    }
    while let Some(done) = inflight.next().await {
        done?;
    }
    Ok(())
}

/// Receives `n` messages on `conn`.
async fn receive(conn: &Connection, n: usize) -> Result<(), BoxError> {
    let mut messages = conn.messages();
    for _ in 0..n {
        match messages.next().await {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the message stream ended".into()),
        }
    }
    Ok(())
}

struct ConnRow {
    connect: f64,
    rss_kib: f64,
    threads: f64,
    fds: f64,
    rate: f64,
}

/// `n` clients connected at once, each subscribed to its own topic; then `total`
/// messages in all, each client publishing its share to itself.
async fn connections(port: u16, n: usize, total: usize, run: usize) -> Result<ConnRow, BoxError> {
    let (rss0, threads0, fds0) = (status("VmRSS:"), status("Threads:"), fds());
    let started = Instant::now();
    let connects = (0..n).map(|i| async move {
        let c = client(port, &format!("scale-{run}-{i}"), 0)?;
        let conn = c.connect().await?;
        Ok::<_, BoxError>((c, conn))
    });
    let clients: Vec<(Client, Connection)> = futures::future::try_join_all(connects).await?;
    let connect = started.elapsed().as_secs_f64();
    let topics: Vec<String> = (0..n).map(|i| format!("scale/{run}/{i}")).collect();
    futures::future::try_join_all(clients.iter().zip(&topics).map(|((_, conn), t)| {
        conn.subscribe(t.as_str())
            .qos(QoS::AtLeastOnce)
            .into_future()
    }))
    .await?;
    let (rss, threads, fd) = (status("VmRSS:"), status("Threads:"), fds());
    let share = (total / n).max(1);
    let payload = vec![0x5a_u8; 64];
    let started = Instant::now();
    futures::future::try_join_all(clients.iter().zip(&topics).map(|((_, conn), t)| {
        let topics = std::slice::from_ref(t);
        let payload = &payload;
        async move {
            let (sent, got) =
                futures::join!(pump(conn, topics, share, payload), receive(conn, share));
            sent.and(got)
        }
    }))
    .await?;
    let rate = (share * n) as f64 / started.elapsed().as_secs_f64();
    futures::future::try_join_all(clients.into_iter().map(|(_, conn)| conn.disconnect())).await?;
    Ok(ConnRow {
        connect,
        rss_kib: (rss - rss0) / n as f64,
        threads: threads - threads0,
        fds: (fd - fds0) / n as f64,
        rate,
    })
}

/// One connection with `subs` subscriptions (made one call each, all at once), then
/// `n` messages spread over their topics; (seconds to subscribe, messages per second).
async fn subscriptions(
    port: u16,
    subs: usize,
    n: usize,
    run: usize,
) -> Result<(f64, f64), BoxError> {
    let c = client(port, &format!("scale-subs-{run}-{subs}"), 0)?;
    let conn = c.connect().await?;
    let topics: Vec<String> = (0..subs).map(|i| format!("scale/subs/{run}/{i}")).collect();
    let started = Instant::now();
    futures::future::try_join_all(topics.iter().map(|t| {
        conn.subscribe(t.as_str())
            .qos(QoS::AtLeastOnce)
            .into_future()
    }))
    .await?;
    let subscribe = started.elapsed().as_secs_f64();
    let payload = vec![0x5a_u8; 64];
    let started = Instant::now();
    let (sent, got) = futures::join!(pump(&conn, &topics, n, &payload), receive(&conn, n));
    sent.and(got)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    conn.disconnect().await?;
    Ok((subscribe, rate))
}

/// One publisher, one subscriber: `n` messages of `size` bytes; messages per second.
async fn payload_run(port: u16, size: usize, n: usize, run: usize) -> Result<f64, BoxError> {
    let topic = vec![format!("scale/payload/{run}/{size}")];
    let sub = client(port, &format!("scale-psub-{run}-{size}"), size)?
        .connect()
        .await?;
    sub.subscribe(topic[0].as_str())
        .qos(QoS::AtLeastOnce)
        .await?;
    let publ = client(port, &format!("scale-ppub-{run}-{size}"), size)?
        .connect()
        .await?;
    let payload = vec![0x5a_u8; size];
    let started = Instant::now();
    let (sent, got) = futures::join!(pump(&publ, &topic, n, &payload), receive(&sub, n));
    sent.and(got)?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    publ.disconnect().await?;
    sub.disconnect().await?;
    Ok(rate)
}

const CONNECTIONS: [usize; 4] = [1, 10, 100, 1000];
const PAYLOADS: [usize; 8] = [
    16,
    256,
    4 << 10,
    64 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];

/// Messages per payload run: about 64 MiB of payload, at least 4 and at most 20,000.
fn messages_for(size: usize) -> usize {
    ((64 << 20) / size).clamp(4, 20_000)
}

fn label(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

/// A log-log line chart of MiB/s against the payload size.
fn svg(points: &[(usize, f64)]) -> String {
    let (w, h, l, r, t, b) = (640.0, 380.0, 70.0, 20.0, 40.0, 50.0);
    let xs: Vec<f64> = points.iter().map(|(s, _)| (*s as f64).log10()).collect();
    let ys: Vec<f64> = points.iter().map(|(_, v)| v.max(1e-3).log10()).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::MAX, f64::min),
        xs.iter().copied().fold(f64::MIN, f64::max),
    );
    let (y0, y1) = (
        ys.iter().copied().fold(f64::MAX, f64::min).floor(),
        ys.iter().copied().fold(f64::MIN, f64::max).ceil(),
    );
    let px = |x: f64| l + (x - x0) / (x1 - x0).max(1e-9) * (w - l - r);
    let py = |y: f64| h - b - (y - y0) / (y1 - y0).max(1e-9) * (h - t - b);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{l}\" y=\"22\" font-size=\"14\">aiomqtt: one publisher, one subscriber, QoS 1, Mosquitto on loopback (MiB/s, log scales)</text>\n"
    );
    let mut y = y0;
    while y <= y1 + 1e-9 {
        let (x2, gy, tx, ty, v) = (w - r, py(y), l - 6.0, py(y) + 4.0, 10f64.powf(y));
        out += &format!(
            "<line x1=\"{l}\" x2=\"{x2}\" y1=\"{gy:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{v}</text>\n"
        );
        y += 1.0;
    }
    for ((size, _), x) in points.iter().zip(&xs) {
        out += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n",
            px(*x),
            h - b + 18.0,
            label(*size)
        );
    }
    let path: Vec<String> = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
        .collect();
    out += &format!(
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f4e9c\" stroke-width=\"2\"/>\n",
        path.join(" ")
    );
    for p in &path {
        let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
        out += &format!("<circle cx=\"{x}\" cy=\"{y}\" r=\"3\" fill=\"#1f4e9c\"/>\n");
    }
    out += &format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">payload per message</text>\n</svg>\n",
        (l + w - r) / 2.0,
        h - 12.0
    );
    out
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|r| *r > 0)
                    .ok_or("--rounds needs a positive number")?;
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let broker = broker::Broker::start(0, false)?;
    let port = broker.port;
    println!(
        "aiomqtt scale: {} on 127.0.0.1:{port}, {rounds} rounds",
        broker::version()
    );

    // The process-wide setup (Paho C's threads, the engine's) is not any connection's.
    let first = Instant::now();
    let warm = client(port, "scale-warm-up", 0)?.connect().await?;
    warm.disconnect().await?;
    println!(
        "first connection of the process: {:.3} s",
        first.elapsed().as_secs_f64()
    );

    let mut conn_rows: Vec<Vec<ConnRow>> = CONNECTIONS.iter().map(|_| Vec::new()).collect();
    let mut subs: Vec<Vec<(f64, f64)>> = vec![Vec::new(), Vec::new()];
    let mut sweep: Vec<Vec<f64>> = PAYLOADS.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds {
        println!("== round {}/{rounds}", round + 1);
        for (i, &n) in CONNECTIONS.iter().enumerate() {
            let row = connections(port, n, 50_000, round).await?;
            println!(
                "   {n:>4} connections: connected in {:.3} s, {:.1} KiB RSS / conn, +{} threads, {:.2} fds / conn, {:.0} msg/s",
                row.connect, row.rss_kib, row.threads, row.fds, row.rate
            );
            conn_rows[i].push(row);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for (i, &k) in [1usize, 1000].iter().enumerate() {
            let r = subscriptions(port, k, 20_000, round).await?;
            println!(
                "   {k:>4} subscriptions: made in {:.3} s, {:.0} msg/s",
                r.0, r.1
            );
            subs[i].push(r);
        }
        for (i, &size) in PAYLOADS.iter().enumerate() {
            let n = messages_for(size);
            let rate = payload_run(port, size, n, round).await?;
            println!(
                "   {:>7} x {n:>5}: {rate:>9.1} msg/s {:>8.1} MiB/s",
                label(size),
                rate * size as f64 / (1 << 20) as f64
            );
            sweep[i].push(rate);
        }
    }

    println!("\n### Connections in one process (medians of {rounds} rounds)\n");
    println!(
        "| connections | connect all (s) | RSS growth per connection (KiB, largest) | threads added | fds per connection | aggregate msg/s (QoS 1, 64 B) |"
    );
    println!("|--:|--:|--:|--:|--:|--:|");
    for (n, rows) in CONNECTIONS.iter().zip(&conn_rows) {
        let m = |f: fn(&ConnRow) -> f64| median(rows.iter().map(f).collect());
        println!(
            "| {n} | {:.3} | {:.1} | {:.0} | {:.2} | {:.0} |",
            m(|r| r.connect),
            // Later rounds reuse memory the allocator kept from earlier ones.
            rows.iter().map(|r| r.rss_kib).fold(f64::NAN, f64::max),
            m(|r| r.threads),
            m(|r| r.fds),
            m(|r| r.rate)
        );
    }
    println!("\n### Subscriptions on one connection (medians)\n");
    println!("| subscriptions | subscribe all (s) | msg/s (QoS 1, 64 B, spread over the topics) |");
    println!("|--:|--:|--:|");
    for (k, r) in [1, 1000].iter().zip(&subs) {
        println!(
            "| {k} | {:.3} | {:.0} |",
            median(r.iter().map(|x| x.0).collect()),
            median(r.iter().map(|x| x.1).collect())
        );
    }
    println!("\n### Payload sweep (QoS 1, one publisher, one subscriber, medians)\n");
    println!("| payload | messages per run | msg/s | MiB/s |");
    println!("|--:|--:|--:|--:|");
    let mut points = Vec::new();
    for (size, rates) in PAYLOADS.iter().zip(&sweep) {
        let rate = median(rates.clone());
        let mib = rate * *size as f64 / (1 << 20) as f64;
        points.push((*size, mib));
        println!(
            "| {} | {} | {rate:.1} | {mib:.1} |",
            label(*size),
            messages_for(*size)
        );
    }
    let out = std::path::Path::new("target/bench");
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("scale-payload.svg"), svg(&points))?;
    println!("\nchart: target/bench/scale-payload.svg");
    Ok(())
}
