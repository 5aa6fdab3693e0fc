//! What a relay thread costs per crossing, outside MQTT: a 64-byte ping-pong with an echo
//! thread, directly over loopback TCP and through a thread that copies between a Unix
//! socket pair and the TCP connection (the shape of the client's WebSocket relay, without
//! the framing) — once as two blocking threads, one per direction, once as one
//! current-thread tokio runtime, as the client's relay runs. Prints the median round trip of
//! each, per round.
//!
//! Run it as it is and confined to one CPU: the difference between the two says how much of
//! a relay's cost is the relay's work and how much is waking a thread on another CPU
//! (BENCHMARKS.md, D2).
//!
//! ```sh
//! cargo run --release --example wakeup
//! taskset -c 0 cargo run --release --example wakeup
//! ```

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SIZE: usize = 64;
const TRIPS: usize = 20_000;
const ROUNDS: usize = 6;

fn main() -> io::Result<()> {
    let port = echo_server()?;
    for round in 1..=ROUNDS {
        let direct = TcpStream::connect(("127.0.0.1", port))?;
        direct.set_nodelay(true)?;
        let direct = median_trip(direct)?;
        let blocking = median_trip(blocking_relay(port)?)?;
        let tokio = median_trip(tokio_relay(port)?)?;
        println!(
            "round {round}: p50 direct {direct:.1} µs, blocking relay {blocking:.1} µs \
             ({:+.1}), tokio relay {tokio:.1} µs ({:+.1})",
            blocking - direct,
            tokio - direct
        );
    }
    Ok(())
}

/// An echo server on loopback, a thread per connection.
fn echo_server() -> io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let (mut from, mut to) = (&stream, &stream);
                let mut buf = [0u8; SIZE];
                while from.read_exact(&mut buf).is_ok() && to.write_all(&buf).is_ok() {}
            });
        }
    });
    Ok(port)
}

/// The median of [`TRIPS`] sequential round trips over `link`, in µs.
fn median_trip(mut link: impl Read + Write) -> io::Result<f64> {
    let mut buf = [7u8; SIZE];
    let mut trips = Vec::with_capacity(TRIPS);
    for _ in 0..TRIPS {
        let start = Instant::now();
        link.write_all(&buf)?;
        link.read_exact(&mut buf)?;
        trips.push(start.elapsed());
    }
    trips.sort();
    Ok(trips[TRIPS / 2].as_secs_f64() * 1e6)
}

/// Our end of a Unix socket pair whose other end two blocking threads copy to and from a
/// TCP connection to the echo server.
fn blocking_relay(port: u16) -> io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    let upstream = TcpStream::connect(("127.0.0.1", port))?;
    upstream.set_nodelay(true)?;
    let (near_in, near_out) = (theirs.try_clone()?, theirs);
    let (far_in, far_out) = (upstream.try_clone()?, upstream);
    std::thread::spawn(move || copy(near_in, far_out));
    std::thread::spawn(move || copy(far_in, near_out));
    Ok(ours)
}

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// The same relay as one task pair on a current-thread tokio runtime of its own thread.
fn tokio_relay(port: u16) -> io::Result<UnixStream> {
    let (ours, theirs) = UnixStream::pair()?;
    theirs.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let near = tokio::net::UnixStream::from_std(theirs)?;
            let far = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            far.set_nodelay(true)?;
            let (near_in, near_out) = near.into_split();
            let (far_in, far_out) = far.into_split();
            tokio::join!(copy_async(near_in, far_out), copy_async(far_in, near_out));
            Ok::<_, io::Error>(())
        })
    });
    Ok(ours)
}

async fn copy_async(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
