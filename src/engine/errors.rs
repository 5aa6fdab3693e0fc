//! Engine errors mapped to ours.

use paho_mqtt as paho;

use crate::{Error, ReasonCode};

/// Maps a failure of any operation.
pub(crate) fn map_error(e: paho::Error) -> Error {
    match e {
        paho::Error::ReasonCode(rc, _) => Error::Code(ReasonCode::from(rc as u8)),
        paho::Error::ConnectReturn(rc) => Error::Connect(ReasonCode::from_v3_connack(rc as u8)),
        paho::Error::Disconnected => Error::NotConnected,
        paho::Error::OperationIncomplete => Error::ConnectionLost {
            rc: None,
            detail: "the session ended before the operation completed".to_owned(),
        },
        paho::Error::Timeout | paho::Error::TcpConnectTimeout => Error::Timeout,
        paho::Error::BadUtf8String => {
            Error::InvalidArgument("a string is not valid UTF-8".to_owned())
        }
        paho::Error::BadQos => Error::InvalidArgument("QoS must be 0, 1 or 2".to_owned()),
        paho::Error::Nul(_) => {
            Error::InvalidArgument("a string contains a NUL character".to_owned())
        }
        other => Error::Engine {
            code: paho_code(&other),
            message: other.to_string(),
        },
    }
}

/// Maps a failure of CONNECT: refusals by CONNACK become [`Error::Connect`].
pub(crate) fn map_connect_error(e: paho::Error) -> Error {
    match e {
        paho::Error::ReasonCode(rc, _) => Error::Connect(ReasonCode::from(rc as u8)),
        paho::Error::TcpTlsConnectFailure => Error::ConnectionRefused {
            address: String::new(),
            detail: "TCP/TLS connect failure".to_owned(),
        },
        other => map_error(other),
    }
}

/// Maps an immediate failure of `try_publish`.
pub(crate) fn map_publish_error(e: paho::Error, limit: Option<usize>) -> Error {
    let e = match e {
        paho::Error::Publish(rc, _) => paho::Error::from_return_code(rc),
        other => other,
    };
    match e {
        paho::Error::MaxBufferedMessages => Error::OutgoingQueueFull {
            limit: limit.unwrap_or(usize::MAX),
        },
        other => map_error(other),
    }
}

/// Paho C's return code for an error (MQTTAsync.h), for [`Error::Engine`].
fn paho_code(e: &paho::Error) -> i32 {
    match e {
        paho::Error::Failure => -1,
        paho::Error::PersistenceError => -2,
        paho::Error::MaxMessagesInflight => -4,
        paho::Error::NullParameter => -6,
        paho::Error::TopicNameTruncated => -7,
        paho::Error::BadStructure => -8,
        paho::Error::NoMoreMsgIds => -10,
        paho::Error::SslNotSupported => -13,
        paho::Error::BadProtocol => -14,
        paho::Error::BadMqttOption => -15,
        paho::Error::WrongMqttVersion => -16,
        paho::Error::ZeroLenWillTopic => -17,
        paho::Error::CommandIgnored => -18,
        paho::Error::MaxBufferedZero => -19,
        paho::Error::SocketError(rc) => *rc,
        _ => -1,
    }
}
