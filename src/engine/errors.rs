//! Paho C's return codes and failures, mapped to our [`Error`].

use super::registry::Failure;
use crate::{Error, ReasonCode};

/// `MQTTASYNC_DISCONNECTED`.
pub(crate) const DISCONNECTED: i32 = -3;
/// `MQTTASYNC_OPERATION_INCOMPLETE`: the command was discarded (its session was cleaned,
/// or the client destroyed) before it completed.
pub(crate) const OPERATION_INCOMPLETE: i32 = -11;
/// `MQTTASYNC_MAX_BUFFERED_MESSAGES`.
pub(crate) const MAX_BUFFERED: i32 = -12;
/// `MQTTASYNC_COMMAND_IGNORED`: a CONNECT while the same client's DISCONNECT is queued
/// (`MQTTAsync_addCommand`), or the reverse.
pub(crate) const COMMAND_IGNORED: i32 = -18;
/// Not Paho's: the facade's code for a publish whose write failed as the link broke,
/// on a session that ends with the link.
pub(crate) const WRITE_FAILED: i32 = -1001;
/// `MQTT_BAD_SUBSCRIBE`: a refused filter in an MQTT 3 SUBACK.
pub(crate) const BAD_SUBSCRIBE: i32 = 0x80;

/// Paho C's description of a return code (`MQTTAsync_strerror` is not thread-safe for
/// unknown codes, so the texts are ours).
pub(crate) fn describe(code: i32) -> &'static str {
    match code {
        -1 => "failure",
        -2 => "persistence error",
        -3 => "not connected",
        -4 => "too many messages in flight",
        -5 => "a string is not valid UTF-8",
        -6 => "a NULL parameter",
        -7 => "a topic containing NUL was truncated",
        -8 => "bad structure",
        -9 => "QoS must be 0, 1 or 2",
        -10 => "no more packet identifiers",
        -11 => "the operation was discarded before it completed",
        -12 => "no more messages can be buffered",
        -13 => "TLS is not supported",
        -14 => "invalid protocol scheme",
        -15 => "an option of the wrong MQTT version",
        -16 => "client created for another MQTT version",
        -17 => "zero-length Will topic",
        -18 => "command ignored",
        -19 => "max_buffered must be at least 1",
        -99 => "out of memory",
        _ => "engine error",
    }
}

/// Maps a return code of a call that Paho refused at once.
pub(crate) fn from_rc(code: i32, outgoing_limit: Option<usize>) -> Error {
    match code {
        DISCONNECTED => Error::NotConnected,
        MAX_BUFFERED => Error::OutgoingQueueFull {
            limit: outgoing_limit.unwrap_or(usize::MAX),
        },
        -5 => Error::InvalidArgument("a string is not valid UTF-8".to_owned()),
        -9 => Error::InvalidArgument("QoS must be 0, 1 or 2".to_owned()),
        code => Error::Engine {
            code,
            message: describe(code).to_owned(),
        },
    }
}

/// Maps a failed acknowledgement of a publish, subscribe or unsubscribe.
pub(crate) fn from_failure(f: Failure) -> Error {
    if let Some(reason) = f.reason {
        return Error::Code(ReasonCode::from(reason));
    }
    match f.code {
        OPERATION_INCOMPLETE => Error::ConnectionLost {
            rc: None,
            detail: "the session ended before the broker acknowledged the operation".to_owned(),
        },
        // A command accepted while connected, failed as the link went before it was
        // written (Paho's MQTTASYNC_DISCONNECTED).
        DISCONNECTED => Error::ConnectionLost {
            rc: None,
            detail: "the connection was lost before the command was sent".to_owned(),
        },
        WRITE_FAILED => Error::ConnectionLost {
            rc: None,
            detail: "the connection broke while the PUBLISH was being written".to_owned(),
        },
        code => Error::Engine {
            code,
            message: f.message.unwrap_or_else(|| describe(code).to_owned()),
        },
    }
}

/// Paho C 1.3.16's report of an error on a socket its receive thread found
/// (`MQTTAsync_receiveThread`'s `nextOrClose`).
pub(crate) const SOCKET_ERROR_REPORT: &str = "socket error";

/// Whether a failed connect may be another connection's failure charged to this one.
///
/// Paho C 1.3.16 (MQTTAsyncUtils.c): when `MQTTAsync_cycle` fails a connect on the
/// receive thread — in `MQTTAsync_connecting` (a TLS setup or handshake failure: "TCP/TLS
/// connect failure") or itself (the server closed the connection before its CONNACK:
/// "TCP connect completion failure") — it closes that client's socket, reports the
/// failure, and still returns the closed socket's number with `SOCKET_ERROR`. `MQTTAsync_receiveThread` releases the
/// global mutex between the two, then looks the client up by that number and fails it
/// with "socket error". If the send thread has meanwhile opened a socket for another
/// client's connect, the kernel gave it the lowest free number — the one just closed —
/// and that connect fails instead. Seen in CI; measured: 6 failures in 174 runs of a test
/// whose TLS connect failed while another client's connect waited for the mutex, beside a
/// load opening and closing loopback connections; the test
/// `tls::a_failed_tls_connect_does_not_fail_another_clients_connect` holds the window open.
///
/// For a client of this crate (one server URI, an explicit MQTT version, no automatic
/// reconnect in Paho) a connect failed with "socket error" has no other source than a
/// partly written CONNECT whose write failed; trying that again costs one more attempt.
pub(crate) fn is_misattributed_connect_failure(e: &Error) -> bool {
    matches!(e, Error::Engine { code: -1, message } if message == SOCKET_ERROR_REPORT)
}

/// Maps a failed CONNECT: a refusal by CONNACK is [`Error::Connect`]; anything else is
/// the engine's own failure, which the caller diagnoses further.
pub(crate) fn from_connect_failure(f: Failure) -> Error {
    if let Some(what) = f.violation {
        return Error::Protocol(what);
    }
    if let Some(reason) = f.reason {
        return Error::Connect(ReasonCode::from(reason));
    }
    // An MQTT 3 CONNACK to an MQTT 5 CONNECT: 1 is "unacceptable protocol version".
    match f.v3_return_code {
        Some(1) => {
            return Error::UnsupportedProtocol {
                protocol: crate::ProtocolVersion::V5,
                detail: "it answered CONNACK with the MQTT 3.1.1 return code 1, unacceptable \
                         protocol version"
                    .to_owned(),
                engine: Some(Box::new(Error::Connect(ReasonCode::from_v3_connack(1)))),
            };
        }
        Some(code) => return Error::Connect(ReasonCode::from_v3_connack(code)),
        None => {}
    }
    match f.code {
        code @ 1..=5 => Error::Connect(ReasonCode::from_v3_connack(code as u8)),
        code => Error::Engine {
            code,
            message: f.message.unwrap_or_else(|| describe(code).to_owned()),
        },
    }
}
