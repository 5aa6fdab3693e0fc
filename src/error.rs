//! The crate's one error type.

use crate::ReasonCode;

/// Everything that can go wrong, mapped from aiomqtt's exceptions.
///
/// | aiomqtt                    | here                                              |
/// |----------------------------|---------------------------------------------------|
/// | `MqttError`                | any `Error`                                       |
/// | `MqttCodeError`            | any variant for which [`Error::rc`] is `Some`     |
/// | `MqttConnectError`         | [`Error::Connect`]                                |
/// | `MqttReentrantError`       | [`Error::Reentrant`]                              |
/// | "Operation timed out"      | [`Error::Timeout`]                                |
/// | "Disconnected during message iteration" | [`Error::Disconnected`]              |
///
/// Coded errors display as `[code:N] <reason>`, as aiomqtt's do. No variant ever
/// carries a password or a key passphrase.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused the connection (CONNACK with a failure code).
    Connect(ReasonCode),

    /// The broker answered an operation with a failure reason code: an MQTT 5
    /// PUBACK/PUBREC/PUBCOMP, or an UNSUBACK refusing a filter. (A SUBACK's refusals are
    /// the codes `subscribe` returns, not an error.)
    Code(ReasonCode),

    /// `connect()` was called while a connection from the same client is alive.
    Reentrant,

    /// The operation did not complete within its timeout.
    Timeout,

    /// The operation needs a live connection and this one has ended.
    NotConnected,

    /// The connection ended while an operation was waiting for the broker.
    /// `rc` is the reason code of a DISCONNECT sent by the broker (MQTT 5), if any.
    ConnectionLost {
        /// The broker's DISCONNECT reason code, when it sent one.
        rc: Option<ReasonCode>,
        /// What the engine reported.
        detail: String,
    },

    /// The connection was closed by this client (`disconnect()`, or its last
    /// handle dropped): the cause inside [`Error::Disconnected`].
    Closed,

    /// The connection ended while iterating over messages. The cause is the
    /// [`source`](std::error::Error::source).
    Disconnected(Box<Error>),

    /// A topic name failed validation.
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// A topic filter failed validation.
    InvalidWildcard {
        /// The rejected filter.
        wildcard: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// An argument or option value is invalid.
    InvalidArgument(String),

    /// The option is not supported by this client (or not yet).
    Unsupported {
        /// The builder method that was used.
        option: &'static str,
        /// Why it cannot work.
        reason: &'static str,
    },

    /// The broker's host name could not be resolved.
    Dns {
        /// The host name.
        host: String,
        /// The resolver's message.
        detail: String,
    },

    /// The TCP connection to the broker was refused or could not be made.
    #[non_exhaustive]
    ConnectionRefused {
        /// `host:port` (or socket path) that was dialled.
        address: String,
        /// The operating system's message.
        detail: String,
        /// The engine's own report, when there was one (also [`source`](std::error::Error::source)).
        engine: Option<Box<Error>>,
    },

    /// The TLS handshake or certificate verification failed; `kind` says why.
    #[non_exhaustive]
    Tls {
        /// What went wrong.
        kind: TlsErrorKind,
        /// Details from OpenSSL.
        detail: String,
        /// The engine's own report, when there was one (also [`source`](std::error::Error::source)).
        engine: Option<Box<Error>>,
    },

    /// The broker does not accept MQTT 5: it answered an MQTT 5 CONNECT with MQTT 3's
    /// "unacceptable protocol version", or closed the connection on it while it accepts
    /// an MQTT 3.1.1 CONNECT. (That return code to an MQTT 3.x CONNECT is
    /// [`Error::Connect`] with reason code 0x84.)
    #[non_exhaustive]
    UnsupportedProtocol {
        /// The version that was refused.
        protocol: crate::ProtocolVersion,
        /// What the broker did.
        detail: String,
        /// The engine's own report, when there was one (also [`source`](std::error::Error::source)).
        engine: Option<Box<Error>>,
    },

    /// The server accepted the network connection but closed it before it answered
    /// CONNECT with CONNACK (it may not be an MQTT broker, or may not accept the CONNECT).
    #[non_exhaustive]
    ConnectionClosed {
        /// `host:port` (or socket path) that was dialled.
        address: String,
        /// What is known about why.
        detail: String,
        /// The engine's own report, when there was one (also [`source`](std::error::Error::source)).
        engine: Option<Box<Error>>,
    },

    /// The proxy refused or failed to open the tunnel to the broker (HTTP `CONNECT`
    /// status, SOCKS reply).
    #[non_exhaustive]
    Proxy {
        /// `host:port` of the proxy.
        proxy: String,
        /// The proxy's answer.
        detail: String,
    },

    /// The local address or port could not be bound (`bind_address`, `bind_port`).
    #[non_exhaustive]
    Bind {
        /// The local address that was asked for.
        address: String,
        /// The operating system's message.
        detail: String,
    },

    /// The WebSocket upgrade was refused.
    #[non_exhaustive]
    WebSocket {
        /// The HTTP status the server answered with, if it answered.
        status: Option<u16>,
        /// What the server said.
        detail: String,
    },

    /// The call exceeds a limit the broker announced in its CONNACK (MQTT 5: Maximum QoS,
    /// Retain Available, Maximum Packet Size). Nothing was sent; the connection stays up.
    BrokerLimit(String),

    /// The engine's outgoing queue is full (`max_queued_outgoing_messages`).
    OutgoingQueueFull {
        /// The configured limit.
        limit: usize,
    },

    /// A publish was handed to the session, but its acknowledgement did not arrive
    /// within the timeout. The outcome is unknown: the message may still be delivered
    /// (the engine keeps it, and on a persistent session resends it after a reconnect).
    /// Do not publish it again if duplicates matter. [`Error::is_timeout`] is `true`.
    Unacknowledged,

    /// The broker broke the MQTT protocol (for example a PUBLISH whose topic is not
    /// valid UTF-8, or on MQTT 5 a property given twice or a CONNACK's Receive Maximum
    /// of 0); the client closed the connection.
    Protocol(String),

    /// A payload too large to send.
    PayloadTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The largest allowed.
        limit: usize,
    },

    /// A payload was not valid UTF-8 where text was asked for.
    Utf8(std::str::Utf8Error),

    /// An I/O error of the facade itself.
    Io(std::io::Error),

    /// Any other failure reported by the Paho engine.
    Engine {
        /// Paho's return code.
        code: i32,
        /// Paho's description.
        message: String,
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(rc) | Error::Code(rc) => write!(f, "[code:{}] {rc}", rc.value()),
            Error::Reentrant => f.write_str("The client is reusable, but not reentrant"),
            Error::Timeout => f.write_str("Operation timed out"),
            Error::NotConnected => f.write_str("Not connected"),
            Error::ConnectionLost { rc, detail } => f.write_str(&lost_text(rc, detail)),
            Error::Closed => f.write_str("The connection was closed by the client"),
            Error::Disconnected(_) => f.write_str("Disconnected during message iteration"),
            Error::InvalidTopic { topic, reason } => write!(f, "Invalid topic {topic:?}: {reason}"),
            Error::InvalidWildcard { wildcard, reason } => {
                write!(f, "Invalid wildcard {wildcard:?}: {reason}")
            }
            Error::InvalidArgument(text) => write!(f, "Invalid argument: {text}"),
            Error::Unsupported { option, reason } => {
                write!(f, "The `{option}` option is not supported: {reason}")
            }
            Error::Dns { host, detail } => write!(f, "Could not resolve host {host:?}: {detail}"),
            Error::ConnectionRefused {
                address, detail, ..
            } => write!(f, "Could not connect to {address}: {detail}"),
            Error::Tls { kind, detail, .. } => write!(f, "TLS error ({kind}): {detail}"),
            Error::UnsupportedProtocol {
                protocol, detail, ..
            } => {
                let name = match protocol {
                    crate::ProtocolVersion::V31 => "MQTT 3.1",
                    crate::ProtocolVersion::V311 => "MQTT 3.1.1",
                    crate::ProtocolVersion::V5 => "MQTT 5",
                };
                write!(f, "The broker does not accept {name} ({detail})")?;
                if *protocol == crate::ProtocolVersion::V5 {
                    f.write_str("; connect with ProtocolVersion::V311")?;
                }
                Ok(())
            }
            Error::ConnectionClosed {
                address, detail, ..
            } => write!(
                f,
                "{address} closed the connection before answering CONNECT: {detail}"
            ),
            Error::BrokerLimit(what) => write!(f, "Over the broker's limit: {what}"),
            Error::Proxy { proxy, detail } => write!(f, "Proxy {proxy}: {detail}"),
            Error::Bind { address, detail } => {
                write!(f, "Could not bind the local address {address}: {detail}")
            }
            Error::WebSocket { status, detail } => match status {
                Some(status) => write!(f, "WebSocket upgrade refused with HTTP {status}: {detail}"),
                None => write!(f, "WebSocket upgrade failed: {detail}"),
            },
            Error::OutgoingQueueFull { limit } => {
                write!(f, "Outgoing message queue is full ({limit} messages)")
            }
            Error::Unacknowledged => f.write_str(
                "No acknowledgement within the timeout; the message may still be delivered",
            ),
            Error::Protocol(what) => write!(f, "Protocol error: {what}"),
            Error::PayloadTooLarge { size, limit } => {
                write!(
                    f,
                    "Payload of {size} bytes is over the limit of {limit} bytes"
                )
            }
            Error::Utf8(e) => write!(f, "Payload is not valid UTF-8: {e}"),
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Engine { code, message } => write!(f, "MQTT engine error {code}: {message}"),
        }
    }
}

/// Written by hand: a derived `source()` would return the `Box` around the
/// cause, which does not downcast to `Error`; this returns the cause itself.
impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Disconnected(cause) => Some(cause.as_ref()),
            Error::ConnectionRefused { engine, .. }
            | Error::Tls { engine, .. }
            | Error::UnsupportedProtocol { engine, .. }
            | Error::ConnectionClosed { engine, .. } => engine
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Error::Utf8(e) => Some(e),
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(e: std::str::Utf8Error) -> Self {
        Error::Utf8(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl Error {
    pub(crate) fn refused(address: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::ConnectionRefused {
            address: address.into(),
            detail: detail.into(),
            engine: None,
        }
    }

    pub(crate) fn tls(kind: TlsErrorKind, detail: impl Into<String>) -> Error {
        Error::Tls {
            kind,
            detail: detail.into(),
            engine: None,
        }
    }

    /// Keeps `engine` (the engine's own report) as the source of a classified failure.
    pub(crate) fn with_engine(mut self, engine: Option<Error>) -> Error {
        if let Error::ConnectionRefused { engine: slot, .. }
        | Error::Tls { engine: slot, .. }
        | Error::UnsupportedProtocol { engine: slot, .. }
        | Error::ConnectionClosed { engine: slot, .. } = &mut self
        {
            *slot = engine.map(Box::new);
        }
        self
    }
}

/// Why a TLS connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// The broker's certificate is not signed by a trusted CA.
    UnknownCa,
    /// The certificate does not name the host that was dialled.
    HostnameMismatch,
    /// The certificate has expired (or is not valid yet).
    Expired,
    /// Another certificate verification failure.
    Certificate,
    /// The broker requires a client certificate and none (or one it rejects) was sent.
    ClientCertificateRejected,
    /// The client key could not be read: wrong `keyfile_password`, or not a key.
    BadKey,
    /// The peer does not speak TLS (a plain port).
    NotTls,
    /// The peer expects TLS, and the client was not configured for it.
    TlsRequired,
    /// Any other handshake failure.
    Handshake,
}

impl std::fmt::Display for TlsErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsErrorKind::UnknownCa => "certificate signed by an unknown CA",
            TlsErrorKind::HostnameMismatch => "certificate does not match the hostname",
            TlsErrorKind::Expired => "certificate expired or not yet valid",
            TlsErrorKind::Certificate => "certificate verification failed",
            TlsErrorKind::ClientCertificateRejected => "client certificate missing or rejected",
            TlsErrorKind::BadKey => "client key cannot be read",
            TlsErrorKind::NotTls => "the server does not speak TLS",
            TlsErrorKind::TlsRequired => "the server expects TLS",
            TlsErrorKind::Handshake => "handshake failed",
        })
    }
}

fn lost_text(rc: &Option<ReasonCode>, detail: &str) -> String {
    match rc {
        Some(rc) if detail.is_empty() => format!("[code:{}] {}", rc.value(), rc),
        // The broker's Reason String says why.
        Some(rc) => format!("[code:{}] {}: {detail}", rc.value(), rc),
        None if detail.is_empty() => "Connection lost".to_owned(),
        None => format!("Connection lost: {detail}"),
    }
}

impl Error {
    /// The reason code of a coded error (aiomqtt's `MqttCodeError.rc`).
    pub fn rc(&self) -> Option<ReasonCode> {
        match self {
            Error::Connect(rc) | Error::Code(rc) => Some(*rc),
            Error::ConnectionLost { rc, .. } => *rc,
            Error::Disconnected(cause) => cause.rc(),
            _ => None,
        }
    }

    /// `true` if an operation timed out ([`Error::Timeout`], or a publish whose
    /// acknowledgement did not come in time: [`Error::Unacknowledged`]).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout | Error::Unacknowledged)
    }

    /// `true` if the error means the connection is gone (lost, ended, or never there).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. }
                | Error::Disconnected(_)
                | Error::NotConnected
                | Error::Closed
                | Error::Protocol(_)
        )
    }

    /// `true` for TLS handshake and certificate failures.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls { .. })
    }

    /// `true` for errors of `connect()`: a refused CONNACK, or a failure before one
    /// arrived (DNS, refused TCP connection, TLS, a protocol version the broker does not
    /// accept, a connection closed before CONNACK). A CONNACK that does not come within
    /// the timeout is [`Error::Timeout`], for which this is `false` and
    /// [`is_timeout`](Self::is_timeout) `true`.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Dns { .. }
                | Error::ConnectionRefused { .. }
                | Error::Tls { .. }
                | Error::Connect(_)
                | Error::UnsupportedProtocol { .. }
                | Error::ConnectionClosed { .. }
                | Error::Proxy { .. }
                | Error::Bind { .. }
                | Error::WebSocket { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coded_display_matches_aiomqtt() {
        assert_eq!(
            Error::Connect(ReasonCode::NOT_AUTHORIZED).to_string(),
            "[code:135] Not authorized"
        );
        assert_eq!(
            Error::Code(ReasonCode::QUOTA_EXCEEDED).to_string(),
            "[code:151] Quota exceeded"
        );
        let lost = Error::ConnectionLost {
            rc: Some(ReasonCode::SESSION_TAKEN_OVER),
            detail: String::new(),
        };
        assert_eq!(lost.to_string(), "[code:142] Session taken over");
        let wrapped = Error::Disconnected(Box::new(lost));
        assert_eq!(wrapped.to_string(), "Disconnected during message iteration");
        assert_eq!(wrapped.rc(), Some(ReasonCode::SESSION_TAKEN_OVER));
        let source = std::error::Error::source(&wrapped).expect("a source");
        assert!(matches!(
            source.downcast_ref::<Error>(),
            Some(Error::ConnectionLost { .. })
        ));
    }
}
