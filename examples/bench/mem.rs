//! Peak memory of a subscriber that never reads while `n` messages pile up in
//! its incoming queue. Each case runs in a child process (this program again,
//! with the hidden `__mem-child` subcommand) so that its peak RSS (`VmHWM`) is
//! its own; the parent publishes.

use std::future::IntoFuture;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::{BoxError, Variant};

pub const CHILD_COMMAND: &str = "__mem-child";

/// Payload of the memory workload (QoS 0).
pub const PAYLOAD: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subscriber {
    /// This crate, unbounded incoming queue (the default).
    Ours,
    /// This crate with `max_queued_incoming_messages(bound)`.
    OursBounded(usize),
    /// Raw paho-mqtt, `get_stream(None)` (unbounded).
    Raw,
}

impl Subscriber {
    pub fn label(self) -> String {
        match self {
            Subscriber::Ours => "aiomqtt (default: unbounded)".to_owned(),
            Subscriber::OursBounded(n) => format!("aiomqtt `max_queued_incoming_messages({n})`"),
            Subscriber::Raw => "paho-mqtt `get_stream(None)`".to_owned(),
        }
    }
    fn args(self) -> (&'static str, usize) {
        match self {
            Subscriber::Ours => ("ours", 0),
            Subscriber::OursBounded(n) => ("ours", n),
            Subscriber::Raw => ("raw", 0),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MemResult {
    pub subscriber: Subscriber,
    pub published: usize,
    pub queued: u64,
    pub discarded: Option<u64>,
    pub rss_before_kb: u64,
    pub peak_kb: u64,
}

/// `VmHWM` and `VmRSS` of this process, in kB.
fn vm_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub fn report_ready() {
    let (_, rss) = vm_kb();
    println!("READY {rss}");
    let _ = std::io::stdout().flush();
}

pub fn report_done(queued: u64, discarded: Option<u64>) {
    let (hwm, _) = vm_kb();
    let discarded = discarded.map_or_else(|| "-".to_owned(), |d| d.to_string());
    println!("DONE {queued} {discarded} {hwm}");
    let _ = std::io::stdout().flush();
}

/// Polls `arrived` until it reaches `n`, or nothing arrived for a while.
pub async fn wait_for_arrivals(arrived: impl Fn() -> u64, n: u64) {
    let mut last = 0;
    let mut since = Instant::now();
    loop {
        let now = arrived();
        if now >= n {
            return;
        }
        if now != last {
            last = now;
            since = Instant::now();
        }
        // Generous before the first message (the parent is still connecting).
        let idle = if now == 0 { 120 } else { 15 };
        if since.elapsed() > Duration::from_secs(idle) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `__mem-child <ours|raw> <port> <topic> <n> <bound, 0 = none>`
pub fn child_main(args: &[String]) -> Result<(), BoxError> {
    let [kind, port, topic, n, bound] = args else {
        return Err("usage: __mem-child <ours|raw> <port> <topic> <n> <bound>".into());
    };
    let port: u16 = port.parse()?;
    let n: usize = n.parse()?;
    let bound: usize = bound.parse()?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        match kind.as_str() {
            "ours" => {
                crate::ours::idle_subscriber(port, topic, n, (bound > 0).then_some(bound)).await
            }
            "raw" => crate::raw::idle_subscriber(port, topic, n).await,
            other => Err(format!("unknown subscriber {other}").into()),
        }
    })?;
    // Exit without tearing a million queued messages down.
    std::process::exit(0);
}

/// Kills the child if the measurement is abandoned.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
    wait: Duration,
) -> Result<Vec<String>, BoxError> {
    match tokio::time::timeout(wait, lines.recv()).await {
        Ok(Some(line)) => Ok(line.split_whitespace().map(str::to_owned).collect()),
        Ok(None) => Err(format!("the memory child exited before {what}").into()),
        Err(_) => Err(format!("the memory child did not report {what}").into()),
    }
}

/// Runs one case: starts the child, publishes `n` QoS 0 messages of
/// [`PAYLOAD`] bytes with this crate (tuned, `window` in flight), reads the
/// child's report.
pub async fn measure(
    port: u16,
    subscriber: Subscriber,
    n: usize,
    window: usize,
    run: u64,
) -> Result<MemResult, BoxError> {
    let topic = format!("bench/mem/{run}");
    let (kind, bound) = subscriber.args();
    let mut child = ChildGuard(
        Command::new(std::env::current_exe()?)
            .args([CHILD_COMMAND, kind])
            .arg(port.to_string())
            .arg(&topic)
            .arg(n.to_string())
            .arg(bound.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let stdout = child.0.stdout.take().ok_or("no child stdout")?;
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = next_line(&mut lines, "READY", Duration::from_secs(30)).await?;
    let rss_before_kb = match ready.as_slice() {
        [tag, rss] if tag == "READY" => rss.parse()?,
        other => return Err(format!("unexpected child output {other:?}").into()),
    };

    let conn = crate::ours::client(
        port,
        &format!("bench-{run}-mempub"),
        Variant::OursTuned,
        window,
    )?
    .connect()
    .await?;
    let payload = vec![0x5a_u8; PAYLOAD];
    let mut inflight = FuturesUnordered::new();
    for _ in 0..n {
        if inflight.len() >= window {
            if let Some(done) = inflight.next().await {
                done?;
            }
        }
        inflight.push(conn.publish(topic.as_str(), payload.clone()).into_future());
    }
    while let Some(done) = inflight.next().await {
        done?;
    }
    conn.disconnect().await?;

    let done = next_line(&mut lines, "DONE", Duration::from_secs(600)).await?;
    let result = match done.as_slice() {
        [tag, queued, discarded, hwm] if tag == "DONE" => MemResult {
            subscriber,
            published: n,
            queued: queued.parse()?,
            discarded: discarded.parse().ok(),
            rss_before_kb,
            peak_kb: hwm.parse()?,
        },
        other => return Err(format!("unexpected child output {other:?}").into()),
    };
    let _ = child.0.wait();
    Ok(result)
}
