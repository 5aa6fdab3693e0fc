//! MQTT reason codes (MQTT 5 §2.4), used on every protocol version.

use std::fmt;

/// An MQTT reason code.
///
/// MQTT 5 packets carry these directly. MQTT 3.x return codes are mapped to their
/// MQTT 5 equivalents, as aiomqtt does, so the same failure reads the same on every
/// protocol: a refused 3.1.1 login (return code 5) becomes `[code:135] Not authorized`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(u8);

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $text:literal; )*) => {
        impl ReasonCode {
            $( $(#[$doc])* pub const $name: ReasonCode = ReasonCode($value); )*

            /// The name the MQTT 5 specification gives this code, if it has one.
            fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($text), )*
                    _ => None,
                }
            }
        }
    };
}

reason_codes! {
    /// 0x00: Success (also Normal disconnection and Granted QoS 0).
    SUCCESS = 0x00, "Success";
    /// 0x01: Granted QoS 1.
    GRANTED_QOS_1 = 0x01, "Granted QoS 1";
    /// 0x02: Granted QoS 2.
    GRANTED_QOS_2 = 0x02, "Granted QoS 2";
    /// 0x04: Disconnect with Will Message.
    DISCONNECT_WITH_WILL = 0x04, "Disconnect with will message";
    /// 0x10: No matching subscribers.
    NO_MATCHING_SUBSCRIBERS = 0x10, "No matching subscribers";
    /// 0x11: No subscription existed.
    NO_SUBSCRIPTION_EXISTED = 0x11, "No subscription existed";
    /// 0x18: Continue authentication.
    CONTINUE_AUTHENTICATION = 0x18, "Continue authentication";
    /// 0x19: Re-authenticate.
    RE_AUTHENTICATE = 0x19, "Re-authenticate";
    /// 0x80: Unspecified error.
    UNSPECIFIED_ERROR = 0x80, "Unspecified error";
    /// 0x81: Malformed Packet.
    MALFORMED_PACKET = 0x81, "Malformed packet";
    /// 0x82: Protocol Error.
    PROTOCOL_ERROR = 0x82, "Protocol error";
    /// 0x83: Implementation specific error.
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83, "Implementation specific error";
    /// 0x84: Unsupported Protocol Version.
    UNSUPPORTED_PROTOCOL_VERSION = 0x84, "Unsupported protocol version";
    /// 0x85: Client Identifier not valid.
    CLIENT_IDENTIFIER_NOT_VALID = 0x85, "Client identifier not valid";
    /// 0x86: Bad User Name or Password.
    BAD_USERNAME_OR_PASSWORD = 0x86, "Bad user name or password";
    /// 0x87: Not authorized.
    NOT_AUTHORIZED = 0x87, "Not authorized";
    /// 0x88: Server unavailable.
    SERVER_UNAVAILABLE = 0x88, "Server unavailable";
    /// 0x89: Server busy.
    SERVER_BUSY = 0x89, "Server busy";
    /// 0x8A: Banned.
    BANNED = 0x8A, "Banned";
    /// 0x8B: Server shutting down.
    SERVER_SHUTTING_DOWN = 0x8B, "Server shutting down";
    /// 0x8C: Bad authentication method.
    BAD_AUTHENTICATION_METHOD = 0x8C, "Bad authentication method";
    /// 0x8D: Keep Alive timeout.
    KEEP_ALIVE_TIMEOUT = 0x8D, "Keep alive timeout";
    /// 0x8E: Session taken over.
    SESSION_TAKEN_OVER = 0x8E, "Session taken over";
    /// 0x8F: Topic Filter invalid.
    TOPIC_FILTER_INVALID = 0x8F, "Topic filter invalid";
    /// 0x90: Topic Name invalid.
    TOPIC_NAME_INVALID = 0x90, "Topic name invalid";
    /// 0x91: Packet Identifier in use.
    PACKET_IDENTIFIER_IN_USE = 0x91, "Packet identifier in use";
    /// 0x92: Packet Identifier not found.
    PACKET_IDENTIFIER_NOT_FOUND = 0x92, "Packet identifier not found";
    /// 0x93: Receive Maximum exceeded.
    RECEIVE_MAXIMUM_EXCEEDED = 0x93, "Receive maximum exceeded";
    /// 0x94: Topic Alias invalid.
    TOPIC_ALIAS_INVALID = 0x94, "Topic alias invalid";
    /// 0x95: Packet too large.
    PACKET_TOO_LARGE = 0x95, "Packet too large";
    /// 0x96: Message rate too high.
    MESSAGE_RATE_TOO_HIGH = 0x96, "Message rate too high";
    /// 0x97: Quota exceeded.
    QUOTA_EXCEEDED = 0x97, "Quota exceeded";
    /// 0x98: Administrative action.
    ADMINISTRATIVE_ACTION = 0x98, "Administrative action";
    /// 0x99: Payload format invalid.
    PAYLOAD_FORMAT_INVALID = 0x99, "Payload format invalid";
    /// 0x9A: Retain not supported.
    RETAIN_NOT_SUPPORTED = 0x9A, "Retain not supported";
    /// 0x9B: QoS not supported.
    QOS_NOT_SUPPORTED = 0x9B, "QoS not supported";
    /// 0x9C: Use another server.
    USE_ANOTHER_SERVER = 0x9C, "Use another server";
    /// 0x9D: Server moved.
    SERVER_MOVED = 0x9D, "Server moved";
    /// 0x9E: Shared Subscriptions not supported.
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E, "Shared subscriptions not supported";
    /// 0x9F: Connection rate exceeded.
    CONNECTION_RATE_EXCEEDED = 0x9F, "Connection rate exceeded";
    /// 0xA0: Maximum connect time.
    MAXIMUM_CONNECT_TIME = 0xA0, "Maximum connect time";
    /// 0xA1: Subscription Identifiers not supported.
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1, "Subscription identifiers not supported";
    /// 0xA2: Wildcard Subscriptions not supported.
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2, "Wildcard subscriptions not supported";
}

impl ReasonCode {
    /// The code as it appears on the wire.
    pub const fn value(self) -> u8 {
        self.0
    }

    /// `true` for codes of 0x80 and above, which report a failure.
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// Maps an MQTT 3.x CONNACK return code to its MQTT 5 reason code, as aiomqtt does.
    pub(crate) fn from_v3_connack(rc: u8) -> ReasonCode {
        match rc {
            0 => Self::SUCCESS,
            1 => Self::UNSUPPORTED_PROTOCOL_VERSION,
            2 => Self::CLIENT_IDENTIFIER_NOT_VALID,
            3 => Self::SERVER_UNAVAILABLE,
            4 => Self::BAD_USERNAME_OR_PASSWORD,
            5 => Self::NOT_AUTHORIZED,
            _ => Self::UNSPECIFIED_ERROR,
        }
    }
}

impl From<u8> for ReasonCode {
    fn from(value: u8) -> Self {
        ReasonCode(value)
    }
}

impl From<ReasonCode> for u8 {
    fn from(rc: ReasonCode) -> Self {
        rc.0
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Unknown reason code 0x{:02X}", self.0),
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode(0x{:02X} {})", self.0, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_errors() {
        assert_eq!(ReasonCode::NOT_AUTHORIZED.to_string(), "Not authorized");
        assert_eq!(ReasonCode::NOT_AUTHORIZED.value(), 135);
        assert!(ReasonCode::NOT_AUTHORIZED.is_error());
        assert!(!ReasonCode::GRANTED_QOS_2.is_error());
        assert_eq!(
            ReasonCode::from(0x7F).to_string(),
            "Unknown reason code 0x7F"
        );
    }

    #[test]
    fn v3_connack_mapping() {
        let mapped: Vec<u8> = (1..=5)
            .map(|rc| ReasonCode::from_v3_connack(rc).value())
            .collect();
        assert_eq!(mapped, [0x84, 0x85, 0x88, 0x86, 0x87]);
    }
}
