//! Client options and the consuming [`ClientBuilder`] that validates them.
//!
//! Builder methods carry aiomqtt's keyword names. `build()` checks every option
//! up front; an option the Paho engine cannot honour is rejected with
//! [`Error::Unsupported`] naming it, never silently ignored.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::properties::PacketKind;
use crate::{Client, Error, Message, Properties, ReconnectPolicy, Topic, Will};

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// MQTT 3.1.
    V31,
    /// MQTT 3.1.1 (the default, as in aiomqtt).
    #[default]
    V311,
    /// MQTT 5.0.
    V5,
}

/// The Clean Start flag policy of MQTT 5 (aiomqtt's `clean_start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CleanStart {
    /// Start clean on every [`Client::connect`], not on reconnects within one connection.
    #[default]
    FirstOnly,
    /// Always start clean.
    Always,
    /// Never start clean: resume the broker's session if it has one.
    Never,
}

/// How the incoming message queue orders messages (aiomqtt's `queue_type`).
#[derive(Clone, Copy, Default)]
pub enum QueueType {
    /// First in, first out (the default).
    #[default]
    Fifo,
    /// Last in, first out.
    Lifo,
    /// Smallest key first; equal keys in arrival order. The key function runs in the
    /// consumer that takes the arrivals, outside the queue's lock: with several consumers,
    /// messages one of them is keying are not yet among those the others take from.
    Priority(fn(&Message) -> i64),
}

impl fmt::Debug for QueueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueType::Fifo => f.write_str("Fifo"),
            QueueType::Lifo => f.write_str("Lifo"),
            QueueType::Priority(_) => f.write_str("Priority(..)"),
        }
    }
}

/// The network transport to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Transport {
    /// MQTT over TCP (or TLS over TCP with [`ClientBuilder::tls_params`]).
    #[default]
    Tcp,
    /// MQTT over WebSockets (or secure WebSockets with TLS).
    WebSockets,
    /// MQTT over a Unix domain socket; the hostname is the socket's path.
    Unix,
}

/// Whether the broker's certificate must be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CertRequirements {
    /// Verify the broker's certificate chain (the default).
    #[default]
    Required,
    /// Accept any certificate: no chain verification. Insecure.
    None,
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// TLS settings from files, as aiomqtt's `TLSParameters`.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct TlsParams {
    /// PEM file of the CA certificates that sign the broker's certificate, the only ones
    /// trusted when set. `None` uses the system's trust store.
    pub ca_certs: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS).
    pub certfile: Option<PathBuf>,
    /// PEM file of the client's private key.
    pub keyfile: Option<PathBuf>,
    /// Passphrase of an encrypted `keyfile`. Never shown by `Debug`.
    pub keyfile_password: Option<String>,
    /// Whether the broker's certificate is verified.
    pub cert_reqs: CertRequirements,
    /// A TLS version to pin.
    pub tls_version: Option<TlsVersion>,
    /// OpenSSL cipher list string.
    pub ciphers: Option<String>,
    /// ALPN protocols to offer.
    pub alpn_protocols: Vec<String>,
}

impl TlsParams {
    /// Default TLS settings: system CAs, certificate and hostname verified.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`ca_certs`](Self::ca_certs).
    pub fn ca_certs(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_certs = Some(path.into());
        self
    }
    /// Sets [`certfile`](Self::certfile).
    pub fn certfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.certfile = Some(path.into());
        self
    }
    /// Sets [`keyfile`](Self::keyfile).
    pub fn keyfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.keyfile = Some(path.into());
        self
    }
    /// Sets [`keyfile_password`](Self::keyfile_password).
    pub fn keyfile_password(mut self, password: impl Into<String>) -> Self {
        self.keyfile_password = Some(password.into());
        self
    }
    /// Sets [`cert_reqs`](Self::cert_reqs).
    pub fn cert_reqs(mut self, reqs: CertRequirements) -> Self {
        self.cert_reqs = reqs;
        self
    }
    /// Sets [`tls_version`](Self::tls_version).
    pub fn tls_version(mut self, version: TlsVersion) -> Self {
        self.tls_version = Some(version);
        self
    }
    /// Sets [`ciphers`](Self::ciphers).
    pub fn ciphers(mut self, ciphers: impl Into<String>) -> Self {
        self.ciphers = Some(ciphers.into());
        self
    }
    /// Sets [`alpn_protocols`](Self::alpn_protocols).
    pub fn alpn_protocols<I, S>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.alpn_protocols = protocols.into_iter().map(Into::into).collect();
        self
    }
}

impl fmt::Debug for TlsParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsParams")
            .field("ca_certs", &self.ca_certs)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field(
                "keyfile_password",
                &self.keyfile_password.as_ref().map(|_| Redacted),
            )
            .field("cert_reqs", &self.cert_reqs)
            .field("tls_version", &self.tls_version)
            .field("ciphers", &self.ciphers)
            .field("alpn_protocols", &self.alpn_protocols)
            .finish()
    }
}

/// The kind of proxy in [`ProxySettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyKind {
    /// An HTTP proxy that supports `CONNECT`.
    Http,
    /// SOCKS 4.
    Socks4,
    /// SOCKS 5.
    Socks5,
}

/// A proxy between the client and the broker (aiomqtt's `ProxySettings`).
#[derive(Clone)]
pub struct ProxySettings {
    pub(crate) kind: ProxyKind,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl ProxySettings {
    /// An HTTP `CONNECT` proxy.
    pub fn http(host: impl Into<String>, port: u16) -> Self {
        Self::new(ProxyKind::Http, host, port)
    }
    /// A SOCKS 4 proxy (4a when the broker is a host name: the proxy resolves it). The
    /// username, if any, is the SOCKS 4 user id; SOCKS 4 has no password.
    pub fn socks4(host: impl Into<String>, port: u16) -> Self {
        Self::new(ProxyKind::Socks4, host, port)
    }
    /// A SOCKS 5 proxy; the proxy resolves the broker's host name. Credentials are
    /// SOCKS 5 username/password authentication.
    pub fn socks5(host: impl Into<String>, port: u16) -> Self {
        Self::new(ProxyKind::Socks5, host, port)
    }
    fn new(kind: ProxyKind, host: impl Into<String>, port: u16) -> Self {
        Self {
            kind,
            host: host.into(),
            port,
            username: None,
            password: None,
        }
    }
    /// Credentials for the proxy (HTTP Basic authentication, SOCKS 5 username/password).
    /// A SOCKS 4 proxy takes a [`user_id`](Self::user_id) instead.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }
    /// The user id of a SOCKS 4 request (SOCKS 4 has no password; `build()` refuses a user
    /// id on other proxies).
    pub fn user_id(mut self, user_id: impl Into<String>) -> Self {
        self.username = Some(user_id.into());
        self.password = None;
        self
    }
    /// The kind of proxy.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxySettings")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .finish()
    }
}

/// A socket option as `setsockopt(level, name, value)` (aiomqtt's `SocketOption`).
///
/// ```
/// use aiomqtt::SocketOption;
///
/// // SO_KEEPALIVE on (Linux values: SOL_SOCKET = 1, SO_KEEPALIVE = 9).
/// let keepalive = SocketOption::int(1, 9, 1);
/// # let _ = keepalive;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOption {
    /// The protocol level, e.g. `SOL_SOCKET`.
    pub level: i32,
    /// The option name, e.g. `SO_KEEPALIVE`.
    pub name: i32,
    /// The value as bytes (an `int` option is its native-endian bytes).
    pub value: Vec<u8>,
}

impl SocketOption {
    /// An option with raw bytes as its value.
    pub fn new(level: i32, name: i32, value: impl Into<Vec<u8>>) -> Self {
        SocketOption {
            level,
            name,
            value: value.into(),
        }
    }
    /// An `int` option (native-endian bytes).
    pub fn int(level: i32, name: i32, value: i32) -> Self {
        Self::new(level, name, value.to_ne_bytes().to_vec())
    }
}

/// Prints as `"<redacted>"`, standing in for secrets in `Debug` output.
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// Every option of a [`Client`], validated.
#[derive(Clone)]
pub(crate) struct Options {
    pub(crate) hostname: String,
    pub(crate) port: u16,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) logger: String,
    pub(crate) identifier: Option<String>,
    pub(crate) queue_type: QueueType,
    pub(crate) protocol: ProtocolVersion,
    pub(crate) will: Option<Will>,
    pub(crate) clean_session: Option<bool>,
    pub(crate) transport: Transport,
    pub(crate) timeout: Duration,
    pub(crate) keepalive: Duration,
    pub(crate) clean_start: CleanStart,
    pub(crate) max_queued_incoming_messages: Option<usize>,
    pub(crate) max_queued_outgoing_messages: Option<usize>,
    /// `None`: [`Options::window`] decides.
    pub(crate) max_inflight_messages: Option<u16>,
    pub(crate) max_concurrent_outgoing_calls: Option<usize>,
    pub(crate) properties: Option<Properties>,
    pub(crate) tls_params: Option<TlsParams>,
    pub(crate) tls_insecure: bool,
    pub(crate) proxy: Option<ProxySettings>,
    pub(crate) websocket_path: Option<String>,
    pub(crate) websocket_headers: Vec<(String, String)>,
    pub(crate) pending_calls_threshold: usize,
    pub(crate) reconnect: Option<ReconnectPolicy>,
    pub(crate) bind_address: Option<String>,
    pub(crate) bind_port: Option<u16>,
    pub(crate) socket_options: Vec<SocketOption>,
    pub(crate) tls_context: Option<TlsContext>,
}

/// A ready OpenSSL context (`ClientBuilder::tls_context`).
#[derive(Clone)]
pub(crate) struct TlsContext(pub(crate) openssl::ssl::SslContext);

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SslContext")
    }
}

/// The window a 3.1.1 broker is taken to keep for QoS 2 exchanges: Mosquitto's own
/// default `max_inflight_messages`. 3.1.1 has no way to announce one, and a QoS 1 or 2
/// PUBLISH that finds it full is lost silently (see [`Admission`](crate::engine::Admission)).
pub(crate) const V311_QOS2_WINDOW: u16 = 20;

/// The default window on MQTT 3.1.1 for QoS 1 and 2 publishes together, QoS 2 ones kept
/// within [`V311_QOS2_WINDOW`]: a broker acknowledges a QoS 1 PUBLISH as it arrives, and
/// Mosquitto does not count it against its window. 100 was raw paho-mqtt's fastest window
/// on loopback (BENCHMARKS.md C8), and lets a link with a 20 ms round trip carry 5,000
/// QoS 1 messages per second.
pub(crate) const DEFAULT_V311_WINDOW: u16 = 100;

/// The widest default window on MQTT 5, where a broker that announces no Receive Maximum
/// allows 65,535. Paho C finds each QoS 1/2 publish's packet identifier by a linear search
/// of its queued commands, messages in flight and pending responses
/// (`MQTTAsync_assignMsgId`), so every call the engine holds costs every publish. Of the
/// ceilings measured (500 to 65,535, round trips of 0, 20 and 100 ms, BENCHMARKS.md C9),
/// 2,000 is the narrowest that beat no ceiling at every round trip; 1,000 was as fast up to
/// 20 ms but caps a 100 ms link at 10,000 messages per second.
pub(crate) const MAX_DEFAULT_V5_WINDOW: u16 = 2_000;

impl Options {
    /// The in-flight window handed to the engine. On MQTT 5 the default is
    /// [`MAX_DEFAULT_V5_WINDOW`]: Paho C lowers it to the Receive Maximum of each CONNACK
    /// (`MQTTAsync_receiveThread`), so a broker announcing less gets its own.
    ///
    /// On 3.1.1 it is [`DEFAULT_V311_WINDOW`], with QoS 2 publishes bounded by the client's
    /// admission line ([`Options::qos2_window`]). With `max_queued_outgoing_messages` set
    /// there is no such line (every call goes to the engine at once), so the window is the
    /// broker's, [`V311_QOS2_WINDOW`], for all.
    pub(crate) fn window(&self) -> u16 {
        self.max_inflight_messages.unwrap_or(match self.protocol {
            crate::ProtocolVersion::V5 => MAX_DEFAULT_V5_WINDOW,
            _ if self.max_queued_outgoing_messages.is_some() => V311_QOS2_WINDOW,
            _ => DEFAULT_V311_WINDOW,
        })
    }

    /// The bound on QoS 2 publishes the admission line keeps: the 3.1.1 default window's.
    /// A window set by the user bounds QoS 1 and 2 together, as in aiomqtt; on MQTT 5 the
    /// broker's Receive Maximum does.
    pub(crate) fn qos2_window(&self) -> Option<u16> {
        let default_v311 = self.protocol != crate::ProtocolVersion::V5
            && self.max_inflight_messages.is_none()
            && self.max_queued_outgoing_messages.is_none();
        default_v311.then_some(V311_QOS2_WINDOW)
    }

    fn new(hostname: String) -> Self {
        Options {
            hostname,
            port: 1883,
            username: None,
            password: None,
            logger: "mqtt".to_owned(),
            identifier: None,
            queue_type: QueueType::Fifo,
            protocol: ProtocolVersion::V311,
            will: None,
            clean_session: None,
            transport: Transport::Tcp,
            timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(60),
            clean_start: CleanStart::FirstOnly,
            max_queued_incoming_messages: None,
            max_queued_outgoing_messages: None,
            max_inflight_messages: None,
            max_concurrent_outgoing_calls: None,
            properties: None,
            tls_params: None,
            tls_insecure: false,
            proxy: None,
            websocket_path: None,
            websocket_headers: Vec::new(),
            pending_calls_threshold: 10,
            reconnect: None,
            bind_address: None,
            bind_port: None,
            socket_options: Vec::new(),
            tls_context: None,
        }
    }
}

impl Options {
    /// Whether Paho keeps the session state when the link is lost: MQTT 3 with
    /// `clean_session(false)`, MQTT 5 with a Session Expiry Interval above 0
    /// (`MQTTAsync_closeSession` cleans otherwise).
    pub(crate) fn keeps_session(&self) -> bool {
        match self.protocol {
            ProtocolVersion::V5 => self
                .properties
                .as_ref()
                .and_then(|p| p.session_expiry_interval)
                .is_some_and(|s| s > 0),
            _ => self.clean_session == Some(false),
        }
    }

    /// Whether the next [`Client::connect`](crate::Client::connect) resumes the session
    /// the engine kept: it keeps one ([`keeps_session`](Self::keeps_session)) and
    /// `connect()` does not start clean. Not so on MQTT 5 with `CleanStart::FirstOnly` or
    /// `Always`, whatever the Session Expiry Interval: a session that only automatic
    /// reconnects resume is, between `connect()` calls, a clean one.
    pub(crate) fn resumes_on_connect(&self) -> bool {
        self.keeps_session() && !self.clean_flag()
    }

    /// The Clean Session (3.x) / Clean Start (5) flag of an automatic reconnect:
    /// `CleanStart::FirstOnly` resumes.
    pub(crate) fn reconnect_clean_flag(&self) -> bool {
        match self.protocol {
            ProtocolVersion::V5 => self.clean_start == CleanStart::Always,
            _ => self.clean_session.unwrap_or(true),
        }
    }

    /// The Clean Session (3.x) / Clean Start (5) flag of a `connect()`.
    pub(crate) fn clean_flag(&self) -> bool {
        match self.protocol {
            ProtocolVersion::V5 => self.clean_start != CleanStart::Never,
            _ => self.clean_session.unwrap_or(true),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("hostname", &redact_userinfo(&self.hostname))
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| Redacted))
            .field("logger", &self.logger)
            .field("identifier", &self.identifier)
            .field("queue_type", &self.queue_type)
            .field("protocol", &self.protocol)
            .field("will", &self.will)
            .field("clean_session", &self.clean_session)
            .field("transport", &self.transport)
            .field("timeout", &self.timeout)
            .field("keepalive", &self.keepalive)
            .field("clean_start", &self.clean_start)
            .field(
                "max_queued_incoming_messages",
                &self.max_queued_incoming_messages,
            )
            .field(
                "max_queued_outgoing_messages",
                &self.max_queued_outgoing_messages,
            )
            .field("max_inflight_messages", &self.max_inflight_messages)
            .field(
                "max_concurrent_outgoing_calls",
                &self.max_concurrent_outgoing_calls,
            )
            .field("properties", &self.properties)
            .field("tls_params", &self.tls_params)
            .field("tls_insecure", &self.tls_insecure)
            .field("proxy", &self.proxy)
            .field("websocket_path", &self.websocket_path)
            // Header values often carry credentials (Authorization, Cookie).
            .field(
                "websocket_headers",
                &self
                    .websocket_headers
                    .iter()
                    .map(|(name, _)| (name.as_str(), Redacted))
                    .collect::<Vec<_>>(),
            )
            .field("pending_calls_threshold", &self.pending_calls_threshold)
            .field("reconnect", &self.reconnect)
            .field("bind_address", &self.bind_address)
            .field("bind_port", &self.bind_port)
            .field("socket_options", &self.socket_options)
            .field("tls_context", &self.tls_context)
            .finish()
    }
}

/// Builds a [`Client`]; every method is named after an aiomqtt keyword.
///
/// ```
/// use std::time::Duration;
/// use aiomqtt::{Client, ProtocolVersion, QoS, Will};
///
/// let client = Client::builder("localhost")
///     .port(1883)
///     .identifier("sensor-7")
///     .protocol(ProtocolVersion::V5)
///     .keepalive(Duration::from_secs(30))
///     .will(Will::new("status/sensor-7", "offline").qos(QoS::AtLeastOnce).retain(true))
///     .build()?;
/// # Ok::<(), aiomqtt::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `build()` is called"]
pub struct ClientBuilder {
    options: Options,
    clean_start_set: bool,
}

impl ClientBuilder {
    pub(crate) fn new(hostname: impl Into<String>) -> Self {
        ClientBuilder {
            options: Options::new(hostname.into()),
            clean_start_set: false,
        }
    }

    pub(crate) fn into_options(self) -> Options {
        self.options
    }

    /// The broker's port (default 1883).
    pub fn port(mut self, port: u16) -> Self {
        self.options.port = port;
        self
    }
    /// The user name sent in CONNECT.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.options.username = Some(username.into());
        self
    }
    /// The password sent in CONNECT. It never appears in `Debug`, errors or this crate's logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.options.password = Some(password.into());
        self
    }
    /// The `log` target this client logs under (default `"mqtt"`), like aiomqtt's `logger`.
    pub fn logger(mut self, target: impl Into<String>) -> Self {
        self.options.logger = target.into();
        self
    }
    /// The client identifier. When absent: a random 22-character id on MQTT 3.1,
    /// empty on 3.1.1 and 5 (the broker assigns one).
    pub fn identifier(mut self, identifier: impl Into<String>) -> Self {
        self.options.identifier = Some(identifier.into());
        self
    }
    /// The order of the incoming message queue.
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.options.queue_type = queue_type;
        self
    }
    /// The MQTT version (default 3.1.1). Always passed explicitly to the engine.
    pub fn protocol(mut self, protocol: ProtocolVersion) -> Self {
        self.options.protocol = protocol;
        self
    }
    /// The Will published by the broker if the connection ends without DISCONNECT.
    pub fn will(mut self, will: Will) -> Self {
        self.options.will = Some(will);
        self
    }
    /// The Clean Session flag of MQTT 3.x (default `true`). Not valid on MQTT 5: use `clean_start`.
    pub fn clean_session(mut self, clean: bool) -> Self {
        self.options.clean_session = Some(clean);
        self
    }
    /// The transport (default TCP).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.options.transport = transport;
        self
    }
    /// The default timeout of every wait on the broker (default 10 s; a large publish
    /// without its own timeout gets more, see [`Publish::timeout`](crate::Publish::timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = timeout;
        self
    }
    /// The keep-alive interval, in whole seconds up to 65,535 (default 60 s). Zero asks
    /// for no keep-alive: on MQTT 3.x no PINGREQ is sent and the broker does not time the
    /// connection out (a dead link is then noticed only when a write fails). On MQTT 5 the
    /// broker may assign its own, as it may for any value, in the CONNACK's Server Keep
    /// Alive ([`Connection::connack_properties`](crate::Connection::connack_properties)),
    /// and that one applies: Mosquitto 2.0 answers 0 with its `max_keepalive`, 65,535 s
    /// by default.
    pub fn keepalive(mut self, keepalive: Duration) -> Self {
        self.options.keepalive = keepalive;
        self
    }
    /// Binds the connection's local side to this IP address (`""` for any). The
    /// connection then goes through the client's relay (see
    /// [the TLS and proxies guide](crate::guide::tls_and_proxies)).
    pub fn bind_address(mut self, address: impl Into<String>) -> Self {
        let address = address.into();
        self.options.bind_address = (!address.is_empty()).then_some(address);
        self
    }
    /// Binds the connection's local side to this port (`0` for any). The connection then
    /// goes through the client's relay.
    pub fn bind_port(mut self, port: u16) -> Self {
        self.options.bind_port = (port != 0).then_some(port);
        self
    }
    /// The Clean Start policy of MQTT 5 (default [`CleanStart::FirstOnly`]).
    pub fn clean_start(mut self, clean_start: CleanStart) -> Self {
        self.options.clean_start = clean_start;
        self.clean_start_set = true;
        self
    }
    /// Bounds the incoming queue; when full, new messages are discarded with a warning
    /// and counted ([`Connection::discarded_messages`](crate::Connection::discarded_messages)).
    /// `0` means unbounded, as in aiomqtt.
    pub fn max_queued_incoming_messages(mut self, max: usize) -> Self {
        self.options.max_queued_incoming_messages = (max > 0).then_some(max);
        self
    }
    /// Bounds the engine's queue of outgoing messages; beyond it `publish` fails with
    /// [`Error::OutgoingQueueFull`]. `0` means unbounded (the default): then calls beyond
    /// the window plus 32 wait in the client for their turn, in call order, instead of in
    /// the engine's queue, whose walk grows with its length (see the
    /// [backpressure guide](crate::guide::backpressure)); with a bound every call is
    /// handed to the engine at once.
    pub fn max_queued_outgoing_messages(mut self, max: usize) -> Self {
        self.options.max_queued_outgoing_messages = (max > 0).then_some(max);
        self
    }
    /// The window of unacknowledged QoS 1/2 messages. By default: on MQTT 5 the broker's
    /// Receive Maximum (the window it announces in CONNACK), at most 2,000; on MQTT 3.1.1,
    /// which announces none, 100, of which at most 20 QoS 2 publishes (Mosquitto's own
    /// default window), and 19 while a QoS 1 publish is unacknowledged too (see the
    /// [backpressure guide](crate::guide::backpressure)). With
    /// `max_queued_outgoing_messages` set, the 3.1.1 default is 20 for both.
    ///
    /// Wider is not always faster: the engine holds up to the window plus 32 calls and
    /// searches them all for each QoS 1/2 publish's packet identifier, so its cost per
    /// publish grows with the window while calls wait (see the
    /// [backpressure guide](crate::guide::backpressure)). The MQTT 5 default of at most
    /// 2,000 lets a link with a 100 ms round trip carry up to 20,000 QoS 1 messages per
    /// second (a window per round trip).
    ///
    /// A window set here bounds QoS 1 and 2 publishes together, as in aiomqtt. On MQTT
    /// 3.1.1 keep it at or below the broker's window: beyond it the broker loses messages
    /// of a burst or drops the connection. On MQTT 5 a value above the broker's Receive
    /// Maximum is lowered to it.
    pub fn max_inflight_messages(mut self, max: u16) -> Self {
        self.options.max_inflight_messages = Some(max);
        self
    }
    /// Bounds how many publish/subscribe/unsubscribe calls run at once; the others wait.
    pub fn max_concurrent_outgoing_calls(mut self, max: usize) -> Self {
        self.options.max_concurrent_outgoing_calls = Some(max);
        self
    }
    /// MQTT 5 CONNECT properties.
    pub fn properties(mut self, properties: Properties) -> Self {
        self.options.properties = Some(properties);
        self
    }
    /// A ready OpenSSL context (certificates in memory, versions, ciphers, verification
    /// as you set them). The host name is sent (SNI) and verified unless `tls_insecure`
    /// or the context does not verify. The connection goes through the client's relay,
    /// which runs the handshake and then gives the session to Paho C: a callback of the
    /// context that OpenSSL calls after the handshake (a new-session callback, for a
    /// session ticket a broker sends late) may then run on a thread of Paho C's that
    /// every client of the process shares, so it must return at once.
    /// Needs the `tls-context` feature (it makes `openssl` part of this crate's API).
    #[cfg(feature = "tls-context")]
    pub fn tls_context(mut self, context: openssl::ssl::SslContext) -> Self {
        self.options.tls_context = Some(TlsContext(context));
        self
    }
    /// TLS from files: CA, client certificate and key, ciphers, ALPN.
    pub fn tls_params(mut self, params: TlsParams) -> Self {
        self.options.tls_params = Some(params);
        self
    }
    /// `true` skips the hostname check of the broker's certificate. Insecure.
    pub fn tls_insecure(mut self, insecure: bool) -> Self {
        self.options.tls_insecure = insecure;
        self
    }
    /// Connects through a proxy.
    pub fn proxy(mut self, proxy: ProxySettings) -> Self {
        self.options.proxy = Some(proxy);
        self
    }
    /// Socket options, set with `setsockopt` on the connection's socket before it
    /// connects. The connection then goes through the client's relay.
    pub fn socket_options<I: IntoIterator<Item = SocketOption>>(mut self, options: I) -> Self {
        self.options.socket_options = options.into_iter().collect();
        self
    }
    /// The WebSocket path (default `/mqtt`).
    pub fn websocket_path(mut self, path: impl Into<String>) -> Self {
        self.options.websocket_path = Some(path.into());
        self
    }
    /// Extra headers of the WebSocket handshake. Their values are treated as secrets:
    /// `Debug` shows only the names, and no log record contains them.
    pub fn websocket_headers<I, K, V>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.options.websocket_headers = headers
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }
    /// Above this many pending calls a warning is logged (default 10).
    pub fn pending_calls_threshold(mut self, threshold: usize) -> Self {
        self.options.pending_calls_threshold = threshold;
        self
    }
    /// Reconnects automatically after a lost connection (off by default: aiomqtt's way
    /// is a loop around [`Client::connect`]). One [`Connection`](crate::Connection) then
    /// outlives losses; see [`ReconnectPolicy`] and
    /// [`Connection::events`](crate::Connection::events).
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.options.reconnect = Some(policy);
        self
    }

    /// Validates every option and returns the client.
    pub fn build(self) -> Result<Client, Error> {
        let o = &self.options;
        let v5 = o.protocol == ProtocolVersion::V5;
        check_text("hostname", &o.hostname)?;
        if o.hostname.is_empty() {
            return Err(invalid("hostname must not be empty"));
        }
        check_hostname(&o.hostname, o.transport)?;
        for (name, value) in [
            ("identifier", &o.identifier),
            ("username", &o.username),
            ("password", &o.password),
        ] {
            if let Some(value) = value {
                check_text(name, value)?;
                // MQTT strings carry a two-byte length (MQTT 3.1.1 §1.5.3, 5.0 §1.5.4).
                if value.len() > usize::from(u16::MAX) {
                    return Err(Error::InvalidArgument(format!(
                        "{name} is {} bytes long; MQTT allows at most 65,535",
                        value.len()
                    )));
                }
            }
        }
        // A broker keeps a session under the client's identifier: without one it assigns
        // a new identifier (or refuses: [code:133] / CONNACK 2) and the session is lost.
        if o.protocol == ProtocolVersion::V311
            && o.clean_session == Some(false)
            && o.identifier.as_deref().is_none_or(str::is_empty)
        {
            return Err(invalid(
                "clean_session(false) needs an identifier: the broker keeps the session \
                 under it (MQTT 3.1.1 §3.1.3.1)",
            ));
        }
        if o.password.is_some() && o.username.is_none() {
            return Err(invalid("a password needs a username (MQTT 3.1.1 §3.1.2.9)"));
        }
        if o.clean_session.is_some() && v5 {
            return Err(invalid(
                "clean_session is not used on MQTT 5; use clean_start",
            ));
        }
        if self.clean_start_set && !v5 {
            return Err(invalid("clean_start needs MQTT 5; use clean_session"));
        }
        if o.properties.is_some() && !v5 {
            return Err(invalid("properties need MQTT 5"));
        }
        if let Some(props) = &o.properties {
            props.check(PacketKind::Connect)?;
        }
        if let Some(will) = &o.will {
            Topic::new(will.topic.clone())?;
            // The Will Payload is Binary Data: a two-byte length (MQTT 3.1.1 §3.1.3.4,
            // 5.0 §3.1.3.4). Paho C writes only the length's low 16 bits.
            let len = will.payload.as_bytes().len();
            if len > usize::from(u16::MAX) {
                return Err(Error::InvalidArgument(format!(
                    "the Will payload is {len} bytes long; MQTT allows at most 65,535"
                )));
            }
            if will.properties.is_some() && !v5 {
                return Err(invalid("Will properties need MQTT 5"));
            }
            if let Some(props) = &will.properties {
                props.check(PacketKind::Will)?;
            }
        }
        let keepalive = o.keepalive;
        if keepalive.subsec_nanos() != 0 || keepalive.as_secs() > u64::from(u16::MAX) {
            return Err(invalid(
                "keepalive must be a whole number of seconds from 0 (off) to 65535",
            ));
        }
        if o.timeout.is_zero() {
            return Err(invalid("timeout must be greater than zero"));
        }
        if let Some(policy) = &o.reconnect {
            policy.check()?;
        }
        if o.max_inflight_messages == Some(0) {
            return Err(invalid("max_inflight_messages must be at least 1"));
        }
        if o.max_concurrent_outgoing_calls == Some(0) {
            return Err(invalid("max_concurrent_outgoing_calls must be at least 1"));
        }
        // tokio's semaphore holds at most this many permits (and panics beyond).
        if o.max_concurrent_outgoing_calls
            .is_some_and(|n| n > tokio::sync::Semaphore::MAX_PERMITS)
        {
            return Err(invalid(&format!(
                "max_concurrent_outgoing_calls must be at most {} (leave it unset for no bound)",
                tokio::sync::Semaphore::MAX_PERMITS
            )));
        }
        if let Some(max) = o.max_queued_outgoing_messages {
            if max > i32::MAX as usize {
                return Err(invalid("max_queued_outgoing_messages is too large"));
            }
        }
        crate::engine::check_transport(o)?;
        Ok(Client::from_options(self.options))
    }
}

fn invalid(text: &str) -> Error {
    Error::InvalidArgument(text.to_owned())
}

/// A URL or `host:port` where a host name belongs gets a hint instead of a DNS error.
fn check_hostname(hostname: &str, transport: Transport) -> Result<(), Error> {
    if transport == Transport::Unix {
        return Ok(());
    }
    let shown = redact_userinfo(hostname);
    if let Some((scheme, _)) = hostname.split_once("://") {
        let hostname = &shown;
        return Err(Error::InvalidArgument(format!(
            "hostname {hostname:?} is a URL: pass the host alone and choose the transport with \
             .transport(), .tls_params() and .port() (scheme {scheme:?})"
        )));
    }
    // No host name holds these, and through an HTTP proxy or WebSockets the name is
    // written into a request line and a `Host:` header as it is.
    if hostname
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!(
            "hostname {shown:?} contains a space or a control character"
        )));
    }
    if hostname.contains('@') {
        return Err(Error::InvalidArgument(format!(
            "hostname {shown:?} carries user information: pass the host alone, and the user \
             name and password with .username() and .password()"
        )));
    }
    // One colon: host:port (an IPv6 literal has at least two).
    if let Some((host, port)) = hostname.split_once(':') {
        if !port.contains(':') && port.parse::<u16>().is_ok() {
            return Err(Error::InvalidArgument(format!(
                "hostname {hostname:?} includes a port: use Client::builder({host:?}).port({port})"
            )));
        }
    }
    Ok(())
}

/// `hostname` with what precedes its last `@` (after any `scheme://`) replaced by `…`: a
/// URL's user information may hold a password, which no error or `Debug` output shows.
fn redact_userinfo(hostname: &str) -> std::borrow::Cow<'_, str> {
    let start = hostname.find("://").map_or(0, |i| i + 3);
    match hostname.rfind('@') {
        Some(at) if at >= start => format!("{}…{}", &hostname[..start], &hostname[at..]).into(),
        _ => hostname.into(),
    }
}

/// Strings handed to the engine must not contain NUL (ENGINE.md hazard 6).
fn check_text(name: &str, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "{name} must not contain a NUL character"
        )));
    }
    Ok(())
}
