//! Telling failures apart that the engine reports alike.
//!
//! Paho answers a DNS failure with a bare `Failure`, and a refused TCP connection,
//! a TLS failure and a failed WebSocket upgrade all with `TcpTlsConnectFailure`
//! (ENGINE.md). The facade resolves the host itself before CONNECT (a clear DNS
//! error, and a warm resolver cache for Paho, whose own lookup holds its global
//! mutex: hazard 11), and after a connect failure dials the address itself to
//! say which it was.

use tokio::net::TcpStream;
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

/// After the engine failed to connect: was the first hop refusing, did the
/// proxy refuse the tunnel, or did the TLS or WebSocket handshake fail?
pub(crate) async fn diagnose(o: &Options, deadline: Instant) -> Error {
    if o.transport == Transport::Unix {
        let detail = match tokio::net::UnixStream::connect(&o.hostname).await {
            Err(e) => e.to_string(),
            Ok(_) => "the engine could not connect to the socket".to_owned(),
        };
        return Error::ConnectionRefused {
            address: o.hostname.clone(),
            detail,
        };
    }
    let (host, port) = first_hop(o);
    let address = format!("{host}:{port}");
    let stream = match timeout_at(deadline, TcpStream::connect((host.as_str(), port))).await {
        Err(_) => return Error::Timeout,
        Ok(Err(e)) => {
            return Error::ConnectionRefused {
                address,
                detail: e.to_string(),
            };
        }
        Ok(Ok(stream)) => stream,
    };
    let stream = match &o.proxy {
        Some(_) => match proxy_tunnel(o, stream, deadline).await {
            Ok(stream) => stream,
            Err(e) => return e,
        },
        None => stream,
    };
    // The probe is blocking: tokio hands sockets over in non-blocking mode.
    let stream = match stream
        .into_std()
        .and_then(|s| s.set_nonblocking(false).map(|()| s))
    {
        Ok(stream) => stream,
        Err(e) => return Error::Io(e),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let o = o.clone();
    let probe = tokio::task::spawn_blocking(move || tls::probe(&o, stream, remaining));
    match timeout_at(deadline, probe).await {
        Ok(Ok(error)) => error,
        Ok(Err(e)) => Error::Io(std::io::Error::other(e)),
        Err(_) => Error::Timeout,
    }
}

/// Asks the HTTP proxy for a tunnel, as Paho did, to report its answer.
async fn proxy_tunnel(
    o: &Options,
    mut stream: TcpStream,
    deadline: Instant,
) -> Result<TcpStream, Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(proxy) = &o.proxy else {
        return Ok(stream);
    };
    let target = format!("{}:{}", o.hostname, o.port);
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let (Some(user), Some(pass)) = (&proxy.username, &proxy.password) {
        let token = openssl::base64::encode_block(format!("{user}:{pass}").as_bytes());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let address = format!("{}:{}", proxy.host, proxy.port);
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(answer)
    };
    let answer = match timeout_at(deadline, exchange).await {
        Err(_) => return Err(Error::Timeout),
        Ok(Err(e)) => {
            return Err(Error::ConnectionRefused {
                address,
                detail: format!("the proxy closed the connection: {e}"),
            });
        }
        Ok(Ok(answer)) => answer,
    };
    let status = String::from_utf8_lossy(&answer);
    let status = status.lines().next().unwrap_or("").trim().to_owned();
    if status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'))
    {
        return Ok(stream);
    }
    let detail = if status.is_empty() {
        "the proxy closed the connection without answering".to_owned()
    } else {
        format!("the proxy refused the tunnel to {target}: {status}")
    };
    Err(Error::ConnectionRefused { address, detail })
}

/// The blocking TLS probe.
mod tls {
    use std::net::TcpStream;
    use std::time::Duration;

    use openssl::ssl::{ErrorCode, HandshakeError, SslConnector, SslMethod, SslVerifyMode};

    use crate::options::{CertRequirements, Options};
    use crate::{Error, TlsErrorKind, Transport};

    fn tls_error(kind: TlsErrorKind, detail: impl Into<String>) -> Error {
        Error::Tls {
            kind,
            detail: detail.into(),
        }
    }

    /// Whether the peer answers a TLS ClientHello like a TLS server.
    fn speaks_tls(stream: TcpStream) -> bool {
        let Ok(mut b) = SslConnector::builder(SslMethod::tls_client()) else {
            return false;
        };
        b.set_verify(SslVerifyMode::NONE);
        let connector = b.build();
        let Ok(config) = connector.configure() else {
            return false;
        };
        match config.verify_hostname(false).connect("probe", stream) {
            Ok(_) => true,
            // A certificate arrived: only a TLS server sends one.
            Err(HandshakeError::Failure(mid)) => mid.ssl().peer_certificate().is_some(),
            Err(_) => false,
        }
    }

    pub(super) fn probe(o: &Options, stream: TcpStream, time: Duration) -> Error {
        let time = time.max(Duration::from_millis(100));
        let _ = stream.set_read_timeout(Some(time));
        let _ = stream.set_write_timeout(Some(time));
        let address = format!("{}:{}", o.hostname, o.port);
        let Some(params) = &o.tls_params else {
            if speaks_tls(stream) {
                return tls_error(
                    TlsErrorKind::TlsRequired,
                    format!("{address} expects TLS: set tls_params"),
                );
            }
            let detail = match o.transport {
                Transport::WebSockets => "the WebSocket handshake failed",
                _ => "the engine's connection attempt failed",
            };
            return Error::ConnectionRefused {
                address,
                detail: detail.to_owned(),
            };
        };
        let connector = match super::super::tls_config::connector(params) {
            Ok(connector) => connector,
            Err(e) => return e,
        };
        let verify_host = params.cert_reqs == CertRequirements::Required && !o.tls_insecure;
        let config = match connector.configure() {
            Ok(config) => config.verify_hostname(verify_host),
            Err(e) => return tls_error(TlsErrorKind::Handshake, e.to_string()),
        };
        let host = o.hostname.trim_start_matches('[').trim_end_matches(']');
        match config.connect(host, stream) {
            Err(HandshakeError::Failure(mid)) => {
                let verify = mid.ssl().verify_result();
                if verify.as_raw() != 0 {
                    return tls_error(verify_kind(verify.as_raw()), verify.error_string());
                }
                let detail = mid.error().to_string();
                if mid.ssl().peer_certificate().is_some() {
                    // The server showed its certificate, then refused us: our certificate.
                    return tls_error(alert_kind(&detail), detail);
                }
                if detail.to_ascii_lowercase().contains("alert") {
                    // A TLS server refused the hello itself: versions or ciphers.
                    return tls_error(TlsErrorKind::Handshake, detail);
                }
                // No certificate and no alert: the peer is not a TLS server.
                tls_error(
                    TlsErrorKind::NotTls,
                    format!("{address} did not answer the TLS handshake: {detail}"),
                )
            }
            Err(HandshakeError::WouldBlock(_)) => Error::Timeout,
            Err(HandshakeError::SetupFailure(e)) => {
                tls_error(TlsErrorKind::Handshake, e.to_string())
            }
            Ok(mut tls) => {
                // TLS 1.3 servers judge the client certificate after the handshake:
                // a rejection is an alert, or the connection closed, on the first
                // read. A server that accepted us waits for CONNECT instead.
                let _ = tls.get_ref().set_read_timeout(Some(POST_HANDSHAKE_WAIT));
                let mut buf = [0u8; 1];
                let rejected = match tls.ssl_read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => match e.code() {
                        ErrorCode::SSL | ErrorCode::ZERO_RETURN => true,
                        ErrorCode::SYSCALL => e.io_error().is_none_or(|io| {
                            !matches!(
                                io.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            )
                        }),
                        // WANT_READ: the read timed out, the server is waiting for CONNECT.
                        _ => false,
                    },
                };
                if rejected {
                    tls_error(
                        TlsErrorKind::ClientCertificateRejected,
                        format!("{address} ended the connection right after the handshake"),
                    )
                } else {
                    tls_error(
                        TlsErrorKind::Handshake,
                        format!(
                            "the engine's TLS connection to {address} failed, though a probe handshake succeeded"
                        ),
                    )
                }
            }
        }
    }

    /// How long the probe waits for a post-handshake rejection.
    const POST_HANDSHAKE_WAIT: Duration = Duration::from_millis(500);

    /// OpenSSL's X509_V_ERR_* codes (stable values of its ABI).
    fn verify_kind(code: i32) -> TlsErrorKind {
        match code {
            2 | 18 | 19 | 20 | 21 => TlsErrorKind::UnknownCa,
            9 | 10 => TlsErrorKind::Expired,
            62 | 64 => TlsErrorKind::HostnameMismatch,
            _ => TlsErrorKind::Certificate,
        }
    }

    fn alert_kind(detail: &str) -> TlsErrorKind {
        let d = detail.to_ascii_lowercase();
        if d.contains("certificate required")
            || d.contains("bad certificate")
            || d.contains("unknown ca")
            || d.contains("handshake failure")
        {
            TlsErrorKind::ClientCertificateRejected
        } else if d.contains("wrong version number")
            || d.contains("packet length too long")
            || d.contains("unexpected eof")
        {
            TlsErrorKind::NotTls
        } else {
            TlsErrorKind::Handshake
        }
    }
}
