//! Dialling the broker the way the options ask, before Paho is involved, so that every
//! failure is reported precisely: a bind failure, a refused port, a proxy's or a SOCKS
//! server's refusal, a TLS verification failure, a refused WebSocket upgrade.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use openssl::ssl::{Ssl, SslConnector, SslContext, SslMethod, SslRef, SslVerifyMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpSocket, TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;

use super::tls_link::TlsLink;
use crate::options::{CertRequirements, Options, ProxyKind, TlsParams};
use crate::{Error, TlsErrorKind, TlsVersion, Transport};

/// A byte stream to the broker.
pub(crate) trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

/// The link to the broker, ready for MQTT.
pub(crate) enum Upstream {
    /// A bare socket carrying MQTT bytes as they are: Paho can take it over.
    Socket(Socket),
    /// TLS on a bare socket, established on its descriptor: Paho can take both over.
    Tls(TlsLink),
    /// A link only the relay can carry.
    Stream(Stream),
}

/// A link through a layer of ours.
pub(crate) enum Stream {
    /// MQTT bytes as they are (through TLS, or after a proxy's answer).
    Bytes(Box<dyn ByteStream>),
    /// MQTT bytes in binary WebSocket messages.
    Ws(Box<WebSocketStream<Box<dyn ByteStream>>>),
}

/// A connected socket with nothing of ours above it.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn boxed(self) -> Box<dyn ByteStream> {
        match self {
            Socket::Tcp(s) => Box::new(s),
            Socket::Unix(s) => Box::new(s),
        }
    }

    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Waits until the socket may be ready for `interest`.
    pub(crate) async fn ready(&self, interest: Interest) -> std::io::Result<()> {
        match self {
            Socket::Tcp(s) => s.ready(interest).await.map(drop),
            Socket::Unix(s) => s.ready(interest).await.map(drop),
        }
    }

    /// Runs `f`, a system call on the socket; readiness for `interest` is cleared when
    /// it fails with `WouldBlock`.
    pub(crate) fn try_io<R>(
        &self,
        interest: Interest,
        f: impl FnOnce() -> std::io::Result<R>,
    ) -> std::io::Result<R> {
        match self {
            Socket::Tcp(s) => s.try_io(interest, f),
            Socket::Unix(s) => s.try_io(interest, f),
        }
    }
}

impl From<Socket> for Stream {
    fn from(socket: Socket) -> Stream {
        Stream::Bytes(socket.boxed())
    }
}

/// Dials the broker: TCP (bound, with socket options) or a Unix socket, through a proxy
/// if there is one, then TLS and the WebSocket upgrade as configured.
pub(crate) async fn dial(o: &Options) -> Result<Upstream, Error> {
    let host = o
        .hostname
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let link: Result<Socket, Box<dyn ByteStream>> = if o.transport == Transport::Unix {
        let s = UnixStream::connect(&o.hostname)
            .await
            .map_err(|e| Error::refused(o.hostname.clone(), e.to_string()))?;
        Ok(Socket::Unix(s))
    } else {
        match &o.proxy {
            None => Ok(Socket::Tcp(tcp(o, &host, o.port).await?)),
            Some(proxy) => {
                let first = tcp(o, &proxy.host, proxy.port).await?;
                let name = format!("{}:{}", proxy.host, proxy.port);
                match proxy.kind {
                    ProxyKind::Http => {
                        let tunnel =
                            http_connect(first, &name, &host, o.port, proxy_credentials(o)).await?;
                        // Bytes of the broker's that came with the proxy's answer stay
                        // ours to deliver first (MQTT brokers do not speak first).
                        if tunnel.prefix.is_empty() {
                            Ok(Socket::Tcp(tunnel.inner))
                        } else {
                            Err(Box::new(tunnel))
                        }
                    }
                    ProxyKind::Socks5 => {
                        Ok(Socket::Tcp(socks5(first, &name, &host, o.port, o).await?))
                    }
                    ProxyKind::Socks4 => {
                        Ok(Socket::Tcp(socks4(first, &name, &host, o.port, o).await?))
                    }
                }
            }
        }
    };
    let with_tls = o.tls_params.is_some() || o.tls_context.is_some();
    let layered = with_tls || o.transport == Transport::WebSockets;
    let stream = match link {
        Ok(socket) if !layered => return Ok(Upstream::Socket(socket)),
        // TLS on the socket itself, for the engine to take over with it.
        Ok(socket)
            if with_tls
                && o.transport != Transport::WebSockets
                && super::handoff::tls_available() =>
        {
            return tls_on_socket(o, &host, socket).await.map(Upstream::Tls);
        }
        Ok(socket) => socket.boxed(),
        Err(stream) => stream,
    };
    let stream = if with_tls {
        Box::new(tls(o, &host, stream).await?) as Box<dyn ByteStream>
    } else {
        stream
    };
    if o.transport == Transport::WebSockets {
        return websocket(o, &host, stream).await;
    }
    Ok(Upstream::Stream(Stream::Bytes(stream)))
}

fn proxy_credentials(o: &Options) -> Option<(&str, &str)> {
    let p = o.proxy.as_ref()?;
    Some((p.username.as_deref()?, p.password.as_deref()?))
}

/// The local address to bind, if any (`bind_address`, `bind_port`), for `family`.
fn local_addr(o: &Options, target: &SocketAddr) -> Result<Option<SocketAddr>, Error> {
    if o.bind_address.is_none() && o.bind_port.is_none() {
        return Ok(None);
    }
    let ip = match &o.bind_address {
        Some(a) => a.parse::<IpAddr>().map_err(|_| {
            Error::InvalidArgument(format!("bind_address {a:?} is not an IP address"))
        })?,
        None if target.is_ipv4() => IpAddr::from([0, 0, 0, 0]),
        None => IpAddr::from([0u16; 8]),
    };
    Ok(Some(SocketAddr::new(ip, o.bind_port.unwrap_or(0))))
}

/// A TCP connection to `host:port`, bound and with the socket options applied.
async fn tcp(o: &Options, host: &str, port: u16) -> Result<TcpStream, Error> {
    let address = format!("{host}:{port}");
    let targets: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::Dns {
            host: host.to_owned(),
            detail: e.to_string(),
        })?
        .collect();
    if targets.is_empty() {
        return Err(Error::Dns {
            host: host.to_owned(),
            detail: "no addresses found".to_owned(),
        });
    }
    let mut last = None;
    for target in targets {
        let local = local_addr(o, &target)?;
        if local.is_some_and(|l| l.is_ipv4() != target.is_ipv4()) {
            continue;
        }
        let socket = if target.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(Error::Io)?;
        if let Some(local) = local {
            if o.bind_port.is_some() {
                socket.set_reuseaddr(true).map_err(Error::Io)?;
            }
            socket.bind(local).map_err(|e| Error::Bind {
                address: local.to_string(),
                detail: e.to_string(),
            })?;
        }
        // TCP_NODELAY as Paho sets it on its own connections, before the user's
        // socket_options: an explicit TCP_NODELAY among them wins (in aiomqtt too the
        // user's options are applied last).
        let _ = socket.set_nodelay(true);
        for opt in &o.socket_options {
            super::sockopt::set(&socket, opt)?;
        }
        match socket.connect(target).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                last = Some(match local {
                    // With a fixed local port, connect() fails so when that address
                    // already has a connection to this target: one still in TIME_WAIT
                    // after a close, for a minute. The bind is what cannot be honoured.
                    Some(local)
                        if o.bind_port.is_some()
                            && e.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
                    {
                        Error::Bind {
                            address: local.to_string(),
                            detail: format!(
                                "{e}: it already has a connection to {target} (perhaps one \
                                 still in TIME_WAIT after an earlier close)"
                            ),
                        }
                    }
                    _ => Error::refused(address.clone(), e.to_string()),
                });
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::refused(address, "no address of the family of bind_address")))
}

/// Room for every header an HTTP answer read so far can hold (one per line, at most
/// `MAX_HEAD` bytes of them): a valid answer is never refused for having many.
fn header_lines(head: &[u8]) -> usize {
    head.windows(2).filter(|w| w == b"\r\n").count().max(1)
}

/// A stream whose first bytes were already read (after a proxy's answer).
struct Prefixed<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The largest proxy answer head we read.
const MAX_HEAD: usize = 16 * 1024;

/// Opens a tunnel through an HTTP proxy (`CONNECT`, Basic credentials).
async fn http_connect(
    mut stream: TcpStream,
    proxy: &str,
    host: &str,
    port: u16,
    credentials: Option<(&str, &str)>,
) -> Result<Prefixed<TcpStream>, Error> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = credentials {
        let token = openssl::base64::encode_block(format!("{user}:{pass}").as_bytes());
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    let refused = |detail: String| Error::Proxy {
        proxy: proxy.to_owned(),
        detail,
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| refused(format!("the proxy closed the connection: {e}")))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| refused(format!("the proxy closed the connection: {e}")))?;
        if n == 0 {
            return Err(refused(
                "the proxy closed the connection without answering".to_owned(),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = vec![httparse::EMPTY_HEADER; header_lines(&head)];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if (200..300).contains(&code) {
                    return Ok(Prefixed {
                        prefix: head[len..].to_vec(),
                        inner: stream,
                    });
                }
                return Err(refused(format!(
                    "the proxy refused the tunnel to {target}: HTTP {code} {}",
                    response.reason.unwrap_or("")
                )));
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(refused("the proxy's answer is too long".to_owned()));
            }
            Err(e) => return Err(refused(format!("the proxy's answer is not HTTP: {e}"))),
        }
    }
}

/// The proxy's refusal, in words that say who refused what (tokio-socks names SOCKS 4's
/// one refusal code "General SOCKS server failure", and a refused password by its code).
fn socks_error(proxy: &str, version: u8, e: tokio_socks::Error) -> Error {
    use tokio_socks::Error as E;
    let detail = match e {
        E::PasswordAuthFailure(status) => format!(
            "SOCKS {version}: the proxy refused the username and password (status {status})"
        ),
        E::NoAcceptableAuthMethods => format!(
            "SOCKS {version}: the proxy accepts none of the offered authentication methods \
             (it may need a username and password)"
        ),
        E::GeneralSocksServerFailure if version == 4 => {
            "SOCKS 4: the proxy rejected the request or could not connect to the broker \
             (code 91)"
                .to_owned()
        }
        other => format!("SOCKS {version}: {other}"),
    };
    Error::Proxy {
        proxy: proxy.to_owned(),
        detail,
    }
}

/// A tunnel through a SOCKS 5 proxy; a host name is resolved by the proxy.
async fn socks5(
    stream: TcpStream,
    proxy: &str,
    host: &str,
    port: u16,
    o: &Options,
) -> Result<TcpStream, Error> {
    let target = (host, port);
    let s = match proxy_credentials(o) {
        Some((user, pass)) => {
            tokio_socks::tcp::Socks5Stream::connect_with_password_and_socket(
                stream, target, user, pass,
            )
            .await
        }
        None => tokio_socks::tcp::Socks5Stream::connect_with_socket(stream, target).await,
    };
    s.map(tokio_socks::tcp::Socks5Stream::into_inner)
        .map_err(|e| socks_error(proxy, 5, e))
}

/// A tunnel through a SOCKS 4 proxy (4a for a host name: the proxy resolves it); the
/// proxy username, if any, is the SOCKS 4 user id.
async fn socks4(
    stream: TcpStream,
    proxy: &str,
    host: &str,
    port: u16,
    o: &Options,
) -> Result<TcpStream, Error> {
    let target = (host, port);
    let s = match o.proxy.as_ref().and_then(|p| p.username.as_deref()) {
        Some(user) => {
            tokio_socks::tcp::Socks4Stream::connect_with_userid_and_socket(stream, target, user)
                .await
        }
        None => tokio_socks::tcp::Socks4Stream::connect_with_socket(stream, target).await,
    };
    s.map(tokio_socks::tcp::Socks4Stream::into_inner)
        .map_err(|e| socks_error(proxy, 4, e))
}

fn tls_setup(e: openssl::error::ErrorStack) -> Error {
    Error::tls(TlsErrorKind::Handshake, e.to_string())
}

/// An OpenSSL context from `TlsParams` (files), as Paho would build it, plus the TLS
/// version bound Paho cannot apply.
fn context_from_params(params: &TlsParams) -> Result<SslContext, Error> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(tls_setup)?;
    if let Some(ca) = &params.ca_certs {
        super::super::tls_config::trust_only(&mut b, ca).map_err(tls_setup)?;
    }
    if params.cert_reqs == CertRequirements::None {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some(cert) = &params.certfile {
        b.set_certificate_chain_file(cert).map_err(tls_setup)?;
    }
    if let Some(key) = super::super::tls_config::load_key(params)? {
        b.set_private_key(&key).map_err(tls_setup)?;
    }
    if let Some(ciphers) = &params.ciphers {
        b.set_cipher_list(ciphers).map_err(tls_setup)?;
    }
    if !params.alpn_protocols.is_empty() {
        let mut wire = Vec::new();
        for p in &params.alpn_protocols {
            wire.push(p.len() as u8); // 1..=255, checked by build()
            wire.extend_from_slice(p.as_bytes());
        }
        b.set_alpn_protos(&wire).map_err(tls_setup)?;
    }
    if let Some(version) = params.tls_version {
        let v = match version {
            TlsVersion::Tls12 => openssl::ssl::SslVersion::TLS1_2,
            TlsVersion::Tls13 => openssl::ssl::SslVersion::TLS1_3,
        };
        b.set_min_proto_version(Some(v)).map_err(tls_setup)?;
        b.set_max_proto_version(Some(v)).map_err(tls_setup)?;
    }
    Ok(b.build().into_context())
}

/// The TLS handshake over `stream`: the user's context, or one built from `tls_params`;
/// the host name is sent (SNI) and verified unless `tls_insecure` or verification is off.
async fn tls(
    o: &Options,
    host: &str,
    stream: Box<dyn ByteStream>,
) -> Result<tokio_openssl::SslStream<Box<dyn ByteStream>>, Error> {
    let ssl = session(o, host)?;
    let mut tls = tokio_openssl::SslStream::new(ssl, stream).map_err(tls_setup)?;
    if let Err(e) = Pin::new(&mut tls).connect().await {
        let codes: Vec<u64> = e
            .ssl_error()
            .map(|s| s.errors().iter().map(|e| e.code()).collect())
            .unwrap_or_default();
        return Err(handshake_error(o, host, tls.ssl(), &codes, &e.to_string()));
    }
    Ok(tls)
}

/// The TLS handshake on `socket` itself (see `tls_link`).
async fn tls_on_socket(o: &Options, host: &str, socket: Socket) -> Result<TlsLink, Error> {
    let ssl = session(o, host)?;
    TlsLink::connect(socket, ssl)
        .await
        .map_err(|(ssl, failure)| handshake_error(o, host, &ssl, &failure.codes, &failure.detail))
}

/// A client session of the configured context, for `host` (SNI, and the name or address
/// the certificate must match when verifying).
fn session(o: &Options, host: &str) -> Result<Ssl, Error> {
    let context = match (&o.tls_context, &o.tls_params) {
        (Some(ctx), _) => ctx.0.clone(),
        (None, Some(params)) => context_from_params(params)?,
        (None, None) => return Err(Error::InvalidArgument("no TLS settings".to_owned())),
    };
    let verify = context.verify_mode() != SslVerifyMode::NONE;
    let mut ssl = Ssl::new(&context).map_err(tls_setup)?;
    if host.parse::<IpAddr>().is_err() {
        ssl.set_hostname(host).map_err(tls_setup)?;
    }
    if verify && !o.tls_insecure {
        let param = ssl.param_mut();
        match host.parse::<IpAddr>() {
            Ok(ip) => param.set_ip(ip).map_err(tls_setup)?,
            Err(_) => param.set_host(host).map_err(tls_setup)?,
        }
    }
    Ok(ssl)
}

/// The error of a failed handshake: a failed verification by its result, otherwise by
/// OpenSSL's error `codes`; a failure after the server saw our certificate without a
/// code that says more is the server's refusal of it.
fn handshake_error(o: &Options, host: &str, ssl: &SslRef, codes: &[u64], detail: &str) -> Error {
    let addr = format!("{host}:{}", o.port);
    let verify = ssl.verify_result();
    if verify.as_raw() != 0 {
        return Error::tls(
            super::super::diagnose::verify_kind(verify.as_raw()),
            format!("{addr}: {}", verify.error_string()),
        );
    }
    let kind = codes
        .iter()
        .find_map(|&c| super::super::diagnose::kind_of(c))
        .unwrap_or(if ssl.peer_certificate().is_some() {
            TlsErrorKind::ClientCertificateRejected
        } else {
            TlsErrorKind::NotTls
        });
    Error::tls(kind, format!("{addr}: {detail}"))
}

/// The WebSocket upgrade (subprotocol `mqtt`, the configured path and headers).
///
/// The handshake is written here and its answer parsed with `httparse`; the WebSocket
/// crate only frames afterwards. Its own handshake logs the whole request at TRACE,
/// header values included, and `websocket_headers` often carry credentials.
async fn websocket(
    o: &Options,
    host: &str,
    mut stream: Box<dyn ByteStream>,
) -> Result<Upstream, Error> {
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    let authority = if host.contains(':') {
        format!("[{host}]:{}", o.port)
    } else {
        format!("{host}:{}", o.port)
    };
    let path = o.websocket_path.as_deref().unwrap_or("/mqtt");
    let failed = |status: Option<u16>, detail: String| Error::WebSocket { status, detail };
    let mut nonce = [0u8; 16];
    openssl::rand::rand_bytes(&mut nonce).map_err(|e| failed(None, e.to_string()))?;
    let key = openssl::base64::encode_block(&nonce);
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n"
    );
    for (name, value) in &o.websocket_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| failed(None, format!("the server closed the connection: {e}")))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let leftover = loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| failed(None, format!("the server closed the connection: {e}")))?;
        if n == 0 {
            return Err(failed(
                None,
                "the server closed the connection without answering the upgrade".to_owned(),
            ));
        }
        head.extend_from_slice(&buf[..n]);
        let mut headers = vec![httparse::EMPTY_HEADER; header_lines(&head)];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                if code != 101 {
                    return Err(failed(Some(code), response.reason.unwrap_or("").to_owned()));
                }
                let accept = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("Sec-WebSocket-Accept"))
                    .map(|h| h.value.to_vec());
                let expected = accept_key(&key);
                if accept.as_deref() != Some(expected.as_bytes()) {
                    return Err(failed(
                        Some(code),
                        "the server's Sec-WebSocket-Accept does not match the key".to_owned(),
                    ));
                }
                break head[len..].to_vec();
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(failed(None, "the upgrade answer is too long".to_owned()));
            }
            Err(e) => return Err(failed(None, format!("the upgrade answer is not HTTP: {e}"))),
        }
    };
    let stream: Box<dyn ByteStream> = if leftover.is_empty() {
        stream
    } else {
        Box::new(Prefixed {
            prefix: leftover,
            inner: stream,
        })
    };
    // MQTT does not care where a frame ends, and brokers that send a packet per frame
    // send frames as large as their packets: up to MQTT's largest packet (tungstenite's
    // default bounds, 16 MiB a frame and 64 MiB a message, would end the connection on a
    // larger message, which a persistent session would resend after every reconnect).
    let largest = crate::limits::MAX_REMAINING_LENGTH + 5;
    let config = WebSocketConfig::default()
        .max_frame_size(Some(largest))
        .max_message_size(Some(largest));
    let ws = WebSocketStream::from_raw_socket(stream, Role::Client, Some(config)).await;
    Ok(Upstream::Stream(Stream::Ws(Box::new(ws))))
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
fn accept_key(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let digest = openssl::sha::sha1(format!("{key}{GUID}").as_bytes());
    openssl::base64::encode_block(&digest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_of_rfc_6455() {
        // The example of RFC 6455 §1.3.
        assert_eq!(
            super::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
