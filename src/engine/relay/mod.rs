//! The relay: for the transports and options Paho C cannot do well or at all, the facade
//! owns the socket. It dials the broker itself — bound to `bind_address`/`bind_port`, with
//! `socket_options`, through an HTTP or SOCKS proxy, over a Unix socket, with its own
//! OpenSSL context (`tls_context`, a pinned `tls_version`), as a WebSocket — and Paho
//! speaks plain MQTT to a private endpoint of this process that the relay joins to that
//! link, both ways.
//!
//! In play when any of these is used: WebSockets (Paho C keeps WebSocket frame state in
//! process-wide statics, so two connections corrupt each other), a proxy (Paho's
//! `Proxy_connect` sleeps under its global mutex), a Unix socket (Paho connects in ~1 s),
//! `bind_address`, `bind_port`, `socket_options`, `tls_context`, `tls_version`. Plain TCP
//! and TLS without them go direct.
//!
//! A link that is a bare socket (no TLS or WebSocket layer of ours) is handed to Paho
//! once it is dialled (`handoff`): Paho then reads and writes the broker's socket itself,
//! at the cost of a direct connection. So is TLS of ours on a bare socket, established on
//! the socket's descriptor (`tls_link`): Paho gets the TLS session with the socket. The
//! others (WebSockets, and TLS over an HTTP proxy that sent the broker's first bytes with
//! its answer) are carried by the relay's thread (`pipe`), both ways.
//!
//! Every failure of the dial is reported before Paho is involved, precisely; how the link
//! ended is known exactly (the broker closed it, it was reset, or the engine closed it:
//! a keep-alive timeout).

mod dial;
mod endpoint;
mod handoff;
mod pipe;
mod runtime;
mod sockopt;
mod tls_link;

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::time::Instant;

pub(crate) use pipe::LinkEnd;

use super::on_drop::OnDrop;
use crate::options::Options;
use crate::{Error, Transport};

/// Whether `o` needs the relay.
pub(crate) fn needed(o: &Options) -> bool {
    o.transport != Transport::Tcp
        || o.proxy.is_some()
        || o.bind_address.is_some()
        || o.bind_port.is_some()
        || !o.socket_options.is_empty()
        || o.tls_context.is_some()
        || o.tls_params
            .as_ref()
            .is_some_and(|t| t.tls_version.is_some())
}

/// The options Paho sees when the relay carries the link: plain MQTT over TCP to the
/// private endpoint (everything else is the relay's job).
pub(crate) fn engine_view(o: &Options) -> Options {
    let mut view = o.clone();
    view.transport = Transport::Tcp;
    view.tls_params = None;
    view.tls_context = None;
    view.tls_insecure = false;
    view.proxy = None;
    view.websocket_headers.clear();
    view.websocket_path = None;
    view.bind_address = None;
    view.bind_port = None;
    view.socket_options.clear();
    view
}

/// One engine's relay. Each link gets its own private endpoint: a loopback port that
/// joins exactly one connection — the engine's, from this process — to the link, refuses
/// any other, and closes as soon as it has joined it (or when the connect's deadline
/// passes without it).
#[derive(Default)]
pub(crate) struct Relay {
    /// The current (or last) link.
    current: Mutex<Option<Link>>,
}

/// What the relay keeps of a link.
#[derive(Clone)]
struct Link {
    /// What was dialled (`host:port`, or the socket path), for error messages.
    address: String,
    /// How it ended, when the relay carries it.
    end: pipe::EndSlot,
    /// The relay's descriptor of it, when it was handed to Paho.
    handed: HandedSlot,
    /// Told when the connect the link was dialled for has failed: an endpoint still
    /// listening closes then, with the dialled link, instead of at the connect's deadline.
    over: Arc<tokio::sync::Notify>,
}

/// A link handed to Paho.
#[derive(Debug, Default)]
enum Handed {
    /// Not (yet) handed over.
    #[default]
    No,
    /// Handed over; the relay's descriptor tells how it ends.
    Held(handoff::Held),
    /// Handed over, and the relay's descriptor closed.
    Released,
}

type HandedSlot = Arc<Mutex<Handed>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    pub(crate) fn new() -> Relay {
        Relay::default()
    }

    /// Dials the broker within `deadline` and opens the link's private endpoint; returns
    /// the URI the engine connects to.
    pub(crate) async fn dial(
        &self,
        options: Arc<Options>,
        deadline: Instant,
    ) -> Result<String, Error> {
        let address = match options.transport {
            Transport::Unix => options.hostname.clone(),
            _ => format!("{}:{}", options.hostname, options.port),
        };
        // Until the link is the current one, nothing else can end its endpoint: dropped
        // before that (the connect cancelled), this ends it at once, not at `deadline`.
        let over = Arc::new(tokio::sync::Notify::new());
        let unclaimed = {
            let over = over.clone();
            // A permit: `serve_once` returns at its next look, even if not yet waiting.
            OnDrop::new(move || over.notify_one())
        };
        let opened = runtime::run(async move {
            let upstream = match tokio::time::timeout_at(deadline, dial::dial(&options)).await {
                Ok(result) => result?,
                Err(_) => return Err(Error::Timeout),
            };
            let listener = TcpListener::bind("127.0.0.1:0").await.map_err(Error::Io)?;
            let port = listener.local_addr().map_err(Error::Io)?.port();
            let link = Link {
                address,
                end: pipe::EndSlot::default(),
                handed: HandedSlot::default(),
                over,
            };
            tokio::spawn(serve_once(listener, upstream, link.clone(), deadline));
            Ok((port, link))
        });
        let (port, link) = match tokio::time::timeout_at(deadline, opened).await {
            Ok(result) => result??,
            Err(_) => return Err(Error::Timeout),
        };
        // The last link's descriptor, if still held, closes with it.
        *lock(&self.current) = Some(link);
        unclaimed.disarm();
        Ok(format!("tcp://127.0.0.1:{port}"))
    }

    /// The error of a connect whose link failed after the dial, before the CONNACK. The
    /// engine only saw its connection to the endpoint close; the relay saw why. A failure
    /// of the TLS layer is that TLS error: TLS 1.3 servers refuse a client certificate
    /// after the handshake, with an alert the relay reads at its first read. (The
    /// facade's diagnosis would probe the broker directly, without the relay's TLS
    /// context or proxy, and misname it.) Anything else stays the engine's report.
    pub(crate) fn explain(&self, engine: Error) -> Error {
        if !matches!(engine, Error::Engine { .. }) {
            return engine;
        }
        let Some(link) = lock(&self.current).clone() else {
            return engine;
        };
        let end = link.end.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match end {
            Some(LinkEnd::Failed(pipe::Failure {
                tls: Some(kind),
                detail,
            })) => {
                Error::tls(kind, format!("{}: {detail}", link.address)).with_engine(Some(engine))
            }
            _ => engine,
        }
    }

    /// How the current link ended, once the engine has lost it. A link the relay carries
    /// and whose end it has not recorded was closed by the engine (the relay records the
    /// broker's close or reset before passing it on). A handed-over link's state says
    /// how it ended; the relay's descriptor of it is closed then. `None`: not known.
    ///
    /// Called from Paho's callback: takes leaf locks, makes non-blocking system calls.
    pub(crate) fn loss_cause(&self) -> Option<LinkEnd> {
        let link = lock(&self.current).clone()?;
        let mut handed = lock(&link.handed);
        match std::mem::replace(&mut *handed, Handed::Released) {
            Handed::No => {
                *handed = Handed::No;
                drop(handed);
                Some(lock(&link.end).clone().unwrap_or(LinkEnd::EngineClosed))
            }
            // Read, then closed (on drop), outside the lock.
            Handed::Held(held) => {
                drop(handed);
                Some(held.end())
            }
            Handed::Released => None,
        }
    }

    /// The connect the current link was dialled for failed: its endpoint stops listening
    /// if it still does (the connect failed before Paho reached it), with the dialled
    /// connection, instead of at the connect's deadline. Then as [`Relay::release`].
    pub(crate) fn abandon(&self) {
        if let Some(link) = lock(&self.current).as_ref() {
            link.over.notify_one();
        }
        self.release();
    }

    /// Closes the relay's descriptor of a handed-over link (the engine is closing the
    /// connection, or its connect failed): Paho's close is then the connection's.
    pub(crate) fn release(&self) {
        let Some(link) = lock(&self.current).clone() else {
            return;
        };
        let mut handed = lock(&link.handed);
        if matches!(*handed, Handed::Held(_)) {
            let held = std::mem::replace(&mut *handed, Handed::Released);
            drop(handed);
            drop(held);
        }
    }
}

/// Serves one link: the first connection of this process gets `upstream`, handed over
/// or carried; the endpoint closes then, or at `deadline`.
async fn serve_once(
    listener: TcpListener,
    upstream: dial::Upstream,
    link: Link,
    deadline: Instant,
) {
    loop {
        let accepted = tokio::select! {
            // A connection queued after the connect failed is not Paho's to have.
            biased;
            () = link.over.notified() => return,
            accepted = listener.accept() => accepted,
            _ = tokio::time::sleep_until(deadline) => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let Some(paho) = endpoint::own_peer(&stream) else {
            crate::logging::log_warn!(
                target: "aiomqtt::engine",
                "refused a connection to a private relay endpoint from {peer}: not this process"
            );
            continue;
        };
        drop(listener);
        // Where a handed-over link's descriptor goes once Paho has the link.
        let keep = |held| *lock(&link.handed) = Handed::Held(held);
        let carried = match upstream {
            dial::Upstream::Socket(socket) if handoff::available() => {
                if let Err(detail) = handoff::run(stream, paho, socket, deadline, keep).await {
                    crate::logging::log_warn!(
                        target: "aiomqtt::engine",
                        "could not hand the link to {} to the engine: {detail}",
                        link.address
                    );
                }
                return;
            }
            dial::Upstream::Tls(tls) => {
                match handoff::run_tls(stream, paho, tls, deadline, &link.end, keep).await {
                    // The connect's error says it.
                    Ok(()) | Err(handoff::Handover::Tls) => {}
                    Err(handoff::Handover::Other(detail)) => {
                        crate::logging::log_warn!(
                            target: "aiomqtt::engine",
                            "could not hand the TLS link to {} to the engine: {detail}",
                            link.address
                        );
                    }
                }
                return;
            }
            dial::Upstream::Socket(socket) => pipe::Stream::from(socket),
            dial::Upstream::Stream(stream) => stream,
        };
        let paho = if handoff::available() {
            match handoff::pair(stream, paho, deadline).await {
                Ok((end, early)) => pipe::EngineSide::Unix(end, early),
                Err(detail) => {
                    crate::logging::log_warn!(
                        target: "aiomqtt::engine",
                        "could not give the engine a socket pair for the link to {}: \
                         {detail}",
                        link.address
                    );
                    return;
                }
            }
        } else {
            pipe::EngineSide::Tcp(stream)
        };
        pipe::run(paho, carried, link.end).await;
        return;
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A link whose connect failed before Paho connected to its endpoint (another
    /// client's failure charged to it, then a new link for the next try) stops listening
    /// at once and lets go of the dialled connection, not at the connect's deadline.
    #[tokio::test]
    async fn an_abandoned_link_closes_its_endpoint_and_upstream_at_once() {
        let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let options = crate::Client::builder("127.0.0.1")
            .port(broker.local_addr().unwrap().port())
            .bind_address("127.0.0.1")
            .into_options();
        let relay = Relay::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        let uri = relay.dial(Arc::new(options), deadline).await.unwrap();
        let endpoint = uri.trim_start_matches("tcp://").to_owned();
        let (mut upstream, _) = broker.accept().unwrap();

        relay.abandon();
        let gone = Instant::now() + std::time::Duration::from_secs(5);
        while std::net::TcpStream::connect(&endpoint).is_ok() {
            assert!(
                Instant::now() < gone,
                "the endpoint {endpoint} still listens"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // The broker's side of the dialled connection sees it closed.
        upstream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let read = std::io::Read::read(&mut upstream, &mut [0u8; 1]);
        assert!(matches!(read, Ok(0)), "{read:?}");
    }
}
