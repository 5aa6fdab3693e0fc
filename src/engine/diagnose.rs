//! Telling apart the failures the engine reports alike, adding information and costing
//! nothing when nothing failed.
//!
//! Paho C reports a refused TCP connection, a failed TLS handshake and a refused
//! WebSocket upgrade with one message ("TCP/TLS connect failure"), and a connection the
//! server closed after CONNECT without a CONNACK with another ("TCP connect completion
//! failure" or "socket error"). What the diagnosis uses, in this order:
//!
//! 1. What the engine already said: its failure message, and the OpenSSL error codes of
//!    the attempt (Paho hands OpenSSL's error queue to our `ssl_error_cb`; the packed
//!    code in each line gives library and reason, read as numbers, not as English).
//! 2. Only where that is ambiguous, a probe, which never repeats authentication (no
//!    username, password, client certificate or proxy credentials):
//!    - a TCP connect to the host, with nothing sent, to tell a refused port;
//!    - with TLS configured, a handshake without a client certificate to read the X509
//!      verification result (unknown CA, expired, wrong host name) or to see whether the
//!      server asks for a certificate;
//!    - without TLS, when the server closed the connection after CONNECT: a TLS
//!      ClientHello (does it expect TLS?), and on MQTT 5 a bare MQTT 3.1.1 CONNECT without
//!      credentials (does it accept only 3.1.1?). A plain port is never sent a TLS
//!      ClientHello otherwise.
//!
//! Connections carried by the relay (proxies, WebSockets, Unix sockets, bound addresses,
//! socket options, `tls_context`) are never probed: the relay's own dial already named
//! its failures, and a probe would bypass the proxy, the bound address and the socket
//! options. The engine's own report stays the classified error's `source()`.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

use crate::options::{CertRequirements, Options};
use crate::{Error, ProtocolVersion, TlsErrorKind, Transport};

/// Paho C 1.3.16's failure messages (`nextOrClose` in MQTTAsyncUtils.c), by stage.
const AFTER_CONNECT: [&str; 2] = [
    "TCP connect completion failure",
    super::errors::SOCKET_ERROR_REPORT,
];

/// The host and port the engine dials.
fn address(o: &Options) -> (String, u16) {
    (
        o.hostname
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        o.port,
    )
}

/// Resolves the host before CONNECT (a clear DNS error; an IP literal needs no lookup),
/// or checks that the Unix socket exists.
pub(crate) async fn preflight(o: &Options, deadline: Instant) -> Result<(), Error> {
    if o.transport == Transport::Unix {
        return match std::fs::metadata(&o.hostname) {
            Ok(_) => Ok(()),
            Err(e) => Err(Error::refused(o.hostname.clone(), e.to_string())),
        };
    }
    let host = match &o.proxy {
        Some(p) => p.host.clone(),
        None => address(o).0,
    };
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let found = match timeout_at(deadline, tokio::net::lookup_host((host.as_str(), 0))).await {
        Err(_) => return Err(Error::Timeout),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(mut addrs)) => Ok(addrs.next().is_some()),
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

/// What the engine reported about a failed connect.
pub(crate) struct Report {
    /// The engine's error (`Error::Engine`).
    pub(crate) error: Error,
    /// OpenSSL's error lines of the attempt.
    pub(crate) tls_lines: Vec<String>,
}

impl Report {
    fn message(&self) -> &str {
        match &self.error {
            Error::Engine { message, .. } => message,
            _ => "",
        }
    }
}

/// Classifies a failed connect.
pub(crate) async fn diagnose(o: &Options, report: Report, deadline: Instant) -> Error {
    let error = classify(o, &report, deadline).await;
    error.with_engine(Some(report.error))
}

async fn classify(o: &Options, report: &Report, deadline: Instant) -> Error {
    let (host, port) = address(o);
    if super::relay::needed(o) {
        // The relay reached the broker (its own failures are precise errors already) and
        // the engine's CONNECT went unanswered. No probe: one would bypass the proxy, the
        // bound address and the socket options, or speak raw MQTT to a WebSocket port.
        return Error::ConnectionClosed {
            address: if o.transport == Transport::Unix {
                o.hostname.clone()
            } else {
                format!("{host}:{port}")
            },
            detail: "no CONNACK came (is it an MQTT broker, and does it accept this \
                     protocol version?)"
                .to_owned(),
            engine: None,
        };
    }
    let addr = format!("{host}:{port}");
    // 1. The OpenSSL error codes the engine reported.
    let codes = tls_codes(&report.tls_lines);
    if let Some(kind) = codes.iter().find_map(|&c| kind_of(c)) {
        if kind != TlsErrorKind::Certificate {
            return Error::tls(kind, tls_detail(&addr, &report.tls_lines));
        }
    }
    // 2. A TCP connect, nothing sent: is the port refused?
    let stream = match timeout_at(deadline, TcpStream::connect((host.as_str(), port))).await {
        Err(_) => return Error::Timeout,
        Ok(Err(e)) => return Error::refused(addr, e.to_string()),
        Ok(Ok(stream)) => stream,
    };
    drop(stream);
    let message = report.message();
    if o.tls_params.is_some() {
        // 3. A handshake without a client certificate: the verification result, or
        //    whether the server asks for a certificate; when TLS works and the server
        //    closed after CONNECT, steps 5 and 6 over TLS.
        let closed_after_connect = AFTER_CONNECT.contains(&message);
        return probe(deadline, {
            let o = o.clone();
            move |time| tls_probe(&o, &host, port, time, closed_after_connect)
        })
        .await;
    }
    if AFTER_CONNECT.contains(&message) {
        // 4. The server closed the connection after CONNECT: TLS expected?
        let speaks_tls = probe(deadline, {
            let host = host.clone();
            move |time| Ok::<bool, Error>(speaks_tls(&host, port, time))
        })
        .await;
        if speaks_tls.unwrap_or(false) {
            return Error::tls(
                TlsErrorKind::TlsRequired,
                format!("{addr} expects TLS: set tls_params"),
            );
        }
        // 5. On MQTT 5: does it answer an MQTT 3.1.1 CONNECT?
        if o.protocol == ProtocolVersion::V5 {
            let v3 = probe(deadline, {
                let host = host.clone();
                move |time| Ok::<bool, Error>(answers_v311(&host, port, time))
            })
            .await;
            if v3.unwrap_or(false) {
                return Error::UnsupportedProtocol {
                    protocol: ProtocolVersion::V5,
                    detail: format!(
                        "{addr} closed the connection on an MQTT 5 CONNECT and answers an MQTT \
                         3.1.1 one"
                    ),
                    engine: None,
                };
            }
        }
        return Error::ConnectionClosed {
            address: addr,
            detail: "no CONNACK came (is it an MQTT broker, on this port?)".to_owned(),
            engine: None,
        };
    }
    Error::refused(addr, "the engine's connection attempt failed")
}

/// How long one probe may take at most: a server that answers at all does so in
/// milliseconds.
const PROBE: Duration = Duration::from_millis(500);

/// Runs a blocking probe within `deadline` (and [`PROBE`]) on a blocking thread.
async fn probe<T>(deadline: Instant, f: impl FnOnce(Duration) -> T + Send + 'static) -> T
where
    T: From<Error> + Send + 'static,
{
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .min(PROBE);
    let task = tokio::task::spawn_blocking(move || f(remaining.max(Duration::from_millis(100))));
    match timeout_at(deadline, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => T::from(Error::Io(std::io::Error::other(e))),
        Err(_) => T::from(Error::Timeout),
    }
}

impl From<Error> for Result<bool, Error> {
    fn from(e: Error) -> Self {
        Err(e)
    }
}

fn connect_blocking(host: &str, port: u16, time: Duration) -> std::io::Result<StdTcpStream> {
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let stream = StdTcpStream::connect_timeout(&addr, time)?;
    stream.set_read_timeout(Some(time))?;
    stream.set_write_timeout(Some(time))?;
    Ok(stream)
}

/// Whether the server answers a TLS ClientHello like a TLS server (it sends a
/// certificate). No certificate of ours is offered.
fn speaks_tls(host: &str, port: u16, time: Duration) -> bool {
    use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};
    let Ok(stream) = connect_blocking(host, port, time) else {
        return false;
    };
    let Ok(mut b) = SslConnector::builder(SslMethod::tls_client()) else {
        return false;
    };
    b.set_verify(SslVerifyMode::NONE);
    let Ok(config) = b.build().configure() else {
        return false;
    };
    match config.verify_hostname(false).connect(host, stream) {
        Ok(_) => true,
        Err(HandshakeError::Failure(mid)) => mid.ssl().peer_certificate().is_some(),
        Err(_) => false,
    }
}

/// Whether the server answers a bare MQTT 3.1.1 CONNECT (empty client id, clean session,
/// no credentials) with a CONNACK, whatever its code.
fn answers_v311(host: &str, port: u16, time: Duration) -> bool {
    let Ok(mut stream) = connect_blocking(host, port, time) else {
        return false;
    };
    answers_v311_on(&mut stream)
}

/// Step 5 on an open stream (plain, or TLS the probe set up).
fn answers_v311_on(stream: &mut (impl Read + Write)) -> bool {
    // CONNECT: protocol "MQTT" level 4, flags clean session, keepalive 10, client id "".
    let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 0];
    if stream.write_all(&connect).is_err() {
        return false;
    }
    let mut connack = [0u8; 4];
    let answered = stream.read_exact(&mut connack).is_ok() && connack[0] == 0x20 && connack[1] == 2;
    if answered && connack[3] == 0 {
        // Accepted: leave cleanly.
        let _ = stream.write_all(&[0xE0, 0]);
    }
    answered
}

/// The TLS probe: the handshake as the engine configures it, without a client
/// certificate (never repeated): the verification result, or the server asking for a
/// certificate, or a server that does not speak TLS.
fn tls_probe(
    o: &Options,
    host: &str,
    port: u16,
    time: Duration,
    closed_after_connect: bool,
) -> Error {
    use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslVerifyMode};
    let addr = format!("{host}:{port}");
    let Some(params) = &o.tls_params else {
        return Error::refused(addr, "the engine's connection attempt failed");
    };
    let setup = |e: openssl::error::ErrorStack| Error::tls(TlsErrorKind::Handshake, e.to_string());
    let stream = match connect_blocking(host, port, time) {
        Ok(s) => s,
        Err(e) => return Error::refused(addr, e.to_string()),
    };
    let mut b = match SslConnector::builder(SslMethod::tls_client()) {
        Ok(b) => b,
        Err(e) => return setup(e),
    };
    if let Some(ca) = &params.ca_certs {
        if let Err(e) = super::tls_config::trust_only(&mut b, ca) {
            return setup(e);
        }
    }
    let verify = params.cert_reqs == CertRequirements::Required;
    if !verify {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some(ciphers) = &params.ciphers {
        if let Err(e) = b.set_cipher_list(ciphers) {
            return setup(e);
        }
    }
    let config = match b.build().configure() {
        Ok(c) => c.verify_hostname(verify && !o.tls_insecure),
        Err(e) => return setup(e),
    };
    match config.connect(host, stream) {
        Err(HandshakeError::Failure(mid)) => {
            let verify = mid.ssl().verify_result().as_raw();
            if verify != 0 {
                return Error::tls(
                    verify_kind(verify),
                    format!("{addr}: {}", mid.ssl().verify_result().error_string()),
                );
            }
            let codes: Vec<u64> = mid
                .error()
                .ssl_error()
                .map(|stack| stack.errors().iter().map(|e| e.code()).collect())
                .unwrap_or_default();
            let detail = format!("{addr}: {}", mid.error());
            match codes.iter().find_map(|&c| kind_of(c)) {
                Some(kind) => Error::tls(kind, detail),
                None if mid.ssl().peer_certificate().is_some() => {
                    // The server showed its certificate, then refused: it wants ours.
                    Error::tls(TlsErrorKind::ClientCertificateRejected, detail)
                }
                None => Error::tls(
                    TlsErrorKind::NotTls,
                    format!("{addr} did not answer the TLS handshake: {}", mid.error()),
                ),
            }
        }
        Err(HandshakeError::WouldBlock(_)) => Error::Timeout,
        Err(HandshakeError::SetupFailure(e)) => setup(e),
        Ok(mut tls) => {
            // The handshake works without our certificate. A TLS 1.3 server judges the
            // client certificate after the handshake: a refusal shows on the first read.
            let _ = tls.get_ref().set_read_timeout(Some(POST_HANDSHAKE_WAIT));
            let mut buf = [0u8; 1];
            match tls.ssl_read(&mut buf) {
                Err(e) => {
                    let codes: Vec<u64> = e
                        .ssl_error()
                        .map(|s| s.errors().iter().map(|e| e.code()).collect())
                        .unwrap_or_default();
                    if let Some(kind) = codes.iter().find_map(|&c| kind_of(c)) {
                        return Error::tls(kind, format!("{addr}: {e}"));
                    }
                    let silent = e.io_error().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        )
                    });
                    if silent && closed_after_connect {
                        // TLS works, and the server ended the engine's connection after
                        // its CONNECT: an MQTT matter, asked over TLS as without it.
                        let _ = tls.get_ref().set_read_timeout(Some(time));
                        let _ = tls.get_ref().set_write_timeout(Some(time));
                        return after_connect_over_tls(o, &addr, &mut tls);
                    }
                    Error::tls(
                        TlsErrorKind::Handshake,
                        format!("{addr}: the engine's TLS connection failed ({e})"),
                    )
                }
                Ok(_) => Error::tls(
                    TlsErrorKind::Handshake,
                    format!(
                        "the engine's TLS connection to {addr} failed, though a handshake \
                         without a client certificate succeeded"
                    ),
                ),
            }
        }
    }
}

/// Steps 5 and 6 over a TLS connection the probe set up: on MQTT 5, whether the server
/// answers an MQTT 3.1.1 CONNECT; otherwise, or if it does not, the server closed on
/// CONNECT without a CONNACK.
fn after_connect_over_tls(o: &Options, addr: &str, tls: &mut (impl Read + Write)) -> Error {
    if o.protocol == ProtocolVersion::V5 && answers_v311_on(tls) {
        return Error::UnsupportedProtocol {
            protocol: ProtocolVersion::V5,
            detail: format!(
                "{addr} closed the connection on an MQTT 5 CONNECT and answers an MQTT 3.1.1 \
                 one (over TLS)"
            ),
            engine: None,
        };
    }
    Error::ConnectionClosed {
        address: addr.to_owned(),
        detail: "no CONNACK came over TLS, which works (is it an MQTT broker, on this port?)"
            .to_owned(),
        engine: None,
    }
}

/// How long the probe waits for a post-handshake refusal.
const POST_HANDSHAKE_WAIT: Duration = Duration::from_millis(500);

/// OpenSSL's library code of SSL errors (`ERR_LIB_SSL`).
const LIB_SSL: u64 = 20;

/// Reason codes of OpenSSL's SSL library (sslerr.h, stable across OpenSSL 3).
mod reason {
    pub(super) const CERTIFICATE_VERIFY_FAILED: u64 = 134;
    pub(super) const HTTP_REQUEST: u64 = 156;
    pub(super) const PACKET_LENGTH_TOO_LONG: u64 = 198;
    pub(super) const WRONG_VERSION_NUMBER: u64 = 267;
    pub(super) const ALERT_HANDSHAKE_FAILURE: u64 = 1040;
    pub(super) const ALERT_BAD_CERTIFICATE: u64 = 1042;
    pub(super) const ALERT_CERTIFICATE_REVOKED: u64 = 1044;
    pub(super) const ALERT_CERTIFICATE_EXPIRED: u64 = 1045;
    pub(super) const ALERT_CERTIFICATE_UNKNOWN: u64 = 1046;
    pub(super) const ALERT_UNKNOWN_CA: u64 = 1048;
    pub(super) const ALERT_ACCESS_DENIED: u64 = 1049;
    pub(super) const ALERT_PROTOCOL_VERSION: u64 = 1070;
    pub(super) const ALERT_CERTIFICATE_REQUIRED: u64 = 1116;
}

/// The kind of a TLS failure from a packed OpenSSL error code (`ERR_GET_LIB`,
/// `ERR_GET_REASON` of OpenSSL 3: library in bits 23..31, reason in bits 0..23).
pub(super) fn kind_of(code: u64) -> Option<TlsErrorKind> {
    if (code >> 23) & 0xFF != LIB_SSL {
        return None;
    }
    Some(match code & 0x7F_FFFF {
        reason::CERTIFICATE_VERIFY_FAILED => TlsErrorKind::Certificate,
        reason::WRONG_VERSION_NUMBER | reason::PACKET_LENGTH_TOO_LONG | reason::HTTP_REQUEST => {
            TlsErrorKind::NotTls
        }
        // Alerts the server sent about our certificate.
        reason::ALERT_CERTIFICATE_REQUIRED
        | reason::ALERT_BAD_CERTIFICATE
        | reason::ALERT_CERTIFICATE_UNKNOWN
        | reason::ALERT_CERTIFICATE_EXPIRED
        | reason::ALERT_CERTIFICATE_REVOKED
        | reason::ALERT_UNKNOWN_CA
        | reason::ALERT_ACCESS_DENIED => TlsErrorKind::ClientCertificateRejected,
        reason::ALERT_HANDSHAKE_FAILURE | reason::ALERT_PROTOCOL_VERSION => TlsErrorKind::Handshake,
        _ => return None,
    })
}

/// The packed error codes in OpenSSL's printed error lines (`...:error:0A000086:...`).
fn tls_codes(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find(":error:")? + ":error:".len()..];
            u64::from_str_radix(rest.split(':').next()?, 16).ok()
        })
        .collect()
}

fn tls_detail(addr: &str, lines: &[String]) -> String {
    // The reason text is the 5th field of a line: `<thread>:error:<code>:<lib>:<func>:<reason>:`.
    let reasons: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|r| !r.is_empty())
        .collect();
    if reasons.is_empty() {
        format!("{addr}: the TLS handshake failed")
    } else {
        format!("{addr}: {}", reasons.join("; "))
    }
}

/// The kind of an X509 verification failure (OpenSSL's `X509_V_ERR_*`, stable values).
pub(super) fn verify_kind(code: i32) -> TlsErrorKind {
    match code {
        // unable to get issuer (locally), self-signed leaf or in chain, cannot verify leaf
        2 | 18 | 19 | 20 | 21 => TlsErrorKind::UnknownCa,
        // not yet valid, expired
        9 | 10 => TlsErrorKind::Expired,
        // host name or IP address mismatch
        62 | 64 => TlsErrorKind::HostnameMismatch,
        _ => TlsErrorKind::Certificate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_error_lines_are_read_by_their_codes() {
        let lines = vec![
            "40A7C1F1E27F0000:error:0A000086:SSL routines:tls_post_process_server_certificate:certificate verify failed:../ssl/statem/statem_clnt.c:1889:".to_owned(),
            "40A7C1F1E27F0000:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:../ssl/record/ssl3_record.c:354:".to_owned(),
            "40A7C1F1E27F0000:error:0A00045C:SSL routines:ssl3_read_bytes:tlsv13 alert certificate required:../ssl/record/rec_layer_s3.c:1605:SSL alert number 116".to_owned(),
            "garbage".to_owned(),
        ];
        let codes = tls_codes(&lines);
        assert_eq!(codes, [0x0A00_0086, 0x0A00_010B, 0x0A00_045C]);
        let kinds: Vec<_> = codes.iter().map(|&c| kind_of(c)).collect();
        assert_eq!(
            kinds,
            [
                Some(TlsErrorKind::Certificate),
                Some(TlsErrorKind::NotTls),
                Some(TlsErrorKind::ClientCertificateRejected)
            ]
        );
        // A system error (ERR_LIB_SYS, with the system flag) is not a TLS reason.
        assert_eq!(kind_of(0x8000_0068), None);
        assert_eq!(
            tls_detail("h:1", &lines[..1]),
            "h:1: certificate verify failed"
        );
    }
}
