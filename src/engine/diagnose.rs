//! Telling failures apart that the engine reports alike.
//!
//! Paho answers a DNS failure with a bare `Failure`, and a refused TCP connection,
//! a TLS failure and a failed WebSocket upgrade all with `TcpTlsConnectFailure`
//! (ENGINE.md). The facade resolves the host itself before CONNECT (a clear DNS
//! error, and a warm resolver cache for Paho, whose own lookup holds its global
//! mutex: hazard 11), and after a connect failure dials the address itself to
//! say which it was.

use tokio::time::{Instant, timeout_at};

use crate::options::Options;
use crate::{Error, Transport};

/// The host and port the engine dials first (the proxy, if there is one).
fn first_hop(o: &Options) -> (String, u16) {
    match &o.proxy {
        Some(p) => (p.host.clone(), p.port),
        None => (
            o.hostname
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            o.port,
        ),
    }
}

/// Resolves the first hop, or checks the Unix socket exists.
pub(crate) async fn preflight(o: &Options, deadline: Instant) -> Result<(), Error> {
    if o.transport == Transport::Unix {
        return match std::fs::metadata(&o.hostname) {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::ConnectionRefused {
                address: o.hostname.clone(),
                detail: e.to_string(),
            }),
        };
    }
    let (host, port) = first_hop(o);
    let found = {
        let lookup = timeout_at(deadline, tokio::net::lookup_host((host.as_str(), port))).await;
        match lookup {
            Err(_) => return Err(Error::Timeout),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(mut addrs)) => Ok(addrs.next().is_some()),
        }
    };
    match found {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::Dns {
            host,
            detail: "no addresses found".to_owned(),
        }),
        Err(detail) => Err(Error::Dns { host, detail }),
    }
}

/// After the engine failed to connect: was the first hop refusing, or did the
/// TLS or WebSocket handshake fail on an open port?
pub(crate) async fn diagnose(o: &Options, deadline: Instant) -> Error {
    if o.transport == Transport::Unix {
        return match tokio::net::UnixStream::connect(&o.hostname).await {
            Err(e) => Error::ConnectionRefused {
                address: o.hostname.clone(),
                detail: e.to_string(),
            },
            Ok(_) => Error::ConnectionRefused {
                address: o.hostname.clone(),
                detail: "the engine could not connect to the socket".to_owned(),
            },
        };
    }
    let (host, port) = first_hop(o);
    let address = format!("{host}:{port}");
    match timeout_at(
        deadline,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Err(_) => Error::Timeout,
        Ok(Err(e)) => Error::ConnectionRefused {
            address,
            detail: e.to_string(),
        },
        Ok(Ok(_)) if o.proxy.is_some() => Error::ConnectionRefused {
            address,
            detail: "the proxy did not open a tunnel to the broker".to_owned(),
        },
        Ok(Ok(_)) if o.tls_params.is_some() => {
            Error::Tls(format!("the TLS handshake with {address} failed"))
        }
        Ok(Ok(_)) if o.transport == Transport::WebSockets => Error::ConnectionRefused {
            address,
            detail: "the WebSocket handshake failed".to_owned(),
        },
        Ok(Ok(_)) => Error::ConnectionRefused {
            address,
            detail: "the engine's connection attempt failed".to_owned(),
        },
    }
}
