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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The broker refused the connection (CONNACK with a failure code).
    #[error("[code:{}] {}", .0.value(), .0)]
    Connect(ReasonCode),

    /// The broker answered an operation with a failure reason code
    /// (a negative PUBACK/PUBREC/PUBCOMP, SUBACK or UNSUBACK).
    #[error("[code:{}] {}", .0.value(), .0)]
    Code(ReasonCode),

    /// `connect()` was called while a connection from the same client is alive.
    #[error("The client is reusable, but not reentrant")]
    Reentrant,

    /// The operation did not complete within its timeout.
    #[error("Operation timed out")]
    Timeout,

    /// The operation needs a live connection and this one has ended.
    #[error("Not connected")]
    NotConnected,

    /// The connection ended while an operation was waiting for the broker.
    /// `rc` is the reason code of a DISCONNECT sent by the broker (MQTT 5), if any.
    #[error("{}", lost_text(.rc, .detail))]
    ConnectionLost {
        /// The broker's DISCONNECT reason code, when it sent one.
        rc: Option<ReasonCode>,
        /// What the engine reported.
        detail: String,
    },

    /// The connection was closed by this client (`disconnect()`, or its last
    /// handle dropped): the cause inside [`Error::Disconnected`].
    #[error("The connection was closed by the client")]
    Closed,

    /// The connection ended while iterating over messages. The cause is the
    /// [`source`](std::error::Error::source).
    #[error("Disconnected during message iteration")]
    Disconnected(#[source] Box<Error>),

    /// A topic name failed validation.
    #[error("Invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic.
        topic: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// A topic filter failed validation.
    #[error("Invalid wildcard {wildcard:?}: {reason}")]
    InvalidWildcard {
        /// The rejected filter.
        wildcard: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// An argument or option value is invalid.
    #[error("Invalid argument: {0}")]
    InvalidArgument(String),

    /// The option is not supported by this client (or not yet).
    #[error("The `{option}` option is not supported: {reason}")]
    Unsupported {
        /// The builder method that was used.
        option: &'static str,
        /// Why it cannot work.
        reason: &'static str,
    },

    /// The broker's host name could not be resolved.
    #[error("Could not resolve host {host:?}: {detail}")]
    Dns {
        /// The host name.
        host: String,
        /// The resolver's message.
        detail: String,
    },

    /// The TCP connection to the broker was refused or could not be made.
    #[error("Could not connect to {address}: {detail}")]
    ConnectionRefused {
        /// `host:port` (or socket path) that was dialled.
        address: String,
        /// The operating system's message.
        detail: String,
    },

    /// The TLS handshake or certificate verification failed; `kind` says why.
    #[error("TLS error ({kind}): {detail}")]
    Tls {
        /// What went wrong.
        kind: TlsErrorKind,
        /// Details from OpenSSL.
        detail: String,
    },

    /// The engine's outgoing queue is full (`max_queued_outgoing_messages`).
    #[error("Outgoing message queue is full ({limit} messages)")]
    OutgoingQueueFull {
        /// The configured limit.
        limit: usize,
    },

    /// A payload was not valid UTF-8 where text was asked for.
    #[error("Payload is not valid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),

    /// An I/O error of the facade itself.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// Any other failure reported by the Paho engine.
    #[error("MQTT engine error {code}: {message}")]
    Engine {
        /// Paho's return code.
        code: i32,
        /// Paho's description.
        message: String,
    },
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
        Some(rc) => format!("[code:{}] {}", rc.value(), rc),
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

    /// `true` if an operation timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout)
    }

    /// `true` if the error means the connection is gone (lost, ended, or never there).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. }
                | Error::Disconnected(_)
                | Error::NotConnected
                | Error::Closed
        )
    }

    /// `true` for TLS handshake and certificate failures.
    pub fn is_tls(&self) -> bool {
        matches!(self, Error::Tls { .. })
    }

    /// `true` for errors of `connect()` that happened before a CONNACK arrived
    /// (DNS, refused TCP connection, TLS).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Error::Dns { .. }
                | Error::ConnectionRefused { .. }
                | Error::Tls { .. }
                | Error::Connect(_)
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
        assert!(std::error::Error::source(&wrapped).is_some());
    }
}
