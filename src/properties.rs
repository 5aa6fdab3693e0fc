//! MQTT 5 properties, as our own typed struct.
//!
//! [`Properties`] is what the user attaches to CONNECT (`ClientBuilder::properties`), to the
//! Will, to PUBLISH, SUBSCRIBE and UNSUBSCRIBE, and what the crate hands back for received
//! packets (`Message::properties`, CONNACK, SUBACK, DISCONNECT). Before anything is sent,
//! [`Properties::check`] verifies that every property is one the MQTT 5 specification allows
//! a *client* to put in that packet (table 2-4), that its value is legal, and that the Paho
//! engine can honour it. Only then does the engine translate it.
//!
//! Every fact about a property lives in one row of `properties_table!` below.

use std::fmt;

use crate::{Error, QoS};

/// The largest Subscription Identifier MQTT 5 allows (a Variable Byte Integer, §3.8.2.1.2).
pub(crate) const MAX_SUBSCRIPTION_IDENTIFIER: u32 = 268_435_455;

/// The longest UTF-8 string or binary value a property can hold (a two-byte length, §1.5.4).
pub(crate) const MAX_PROPERTY_LEN: usize = 65_535;

/// The Payload Format Indicator of a message (MQTT 5 §3.3.2.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// `0`: the payload is unspecified bytes (also the meaning when the property is absent).
    Unspecified,
    /// `1`: the payload is UTF-8 encoded character data.
    Utf8,
}

impl PayloadFormat {
    /// The value on the wire.
    pub(crate) const fn to_byte(self) -> u8 {
        match self {
            PayloadFormat::Unspecified => 0,
            PayloadFormat::Utf8 => 1,
        }
    }

    /// The indicator for a byte received on the wire; `None` for a value the specification
    /// does not define.
    pub(crate) const fn from_byte(value: u8) -> Option<Self> {
        match value {
            0 => Some(PayloadFormat::Unspecified),
            1 => Some(PayloadFormat::Utf8),
            _ => None,
        }
    }
}

/// How one field of [`Properties`] holds its values, and how they travel on the wire.
///
/// Each Rust type of a field has one wire type: `Option<u32>` a Four Byte Integer,
/// `Vec<u32>` Variable Byte Integers, `Option<u16>` a Two Byte Integer, `Option<bool>`,
/// `Option<PayloadFormat>` and `Option<QoS>` a Byte, `Option<String>` a UTF-8 string,
/// `Option<Vec<u8>>` binary data, `Vec<(String, String)>` string pairs.
pub(crate) trait Field {
    /// `true` when the property is present.
    fn present(&self) -> bool;
    /// Hands every value to `out`, in order.
    fn wire(&self, out: &mut dyn FnMut(Wire<'_>));
    /// Takes one received value; `false` if it cannot be represented (left out).
    fn absorb(&mut self, value: Wire<'_>) -> bool;
    /// What `Debug` shows of a present field; `secret` shows only the length.
    fn debug<'a>(&'a self, secret: bool) -> Box<dyn fmt::Debug + 'a>;
}

/// One property value as it travels on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// A Byte.
    Byte(u8),
    /// A Two Byte Integer.
    Two(u16),
    /// A Four Byte Integer.
    Four(u32),
    /// A Variable Byte Integer.
    VarInt(u32),
    /// A UTF-8 encoded string.
    Str(&'a str),
    /// Binary data.
    Bin(&'a [u8]),
    /// A UTF-8 string pair.
    Pair(&'a str, &'a str),
}

struct Redacted(usize);
impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted: {} bytes>", self.0)
    }
}

macro_rules! option_field {
    ($ty:ty, $wire:ident, |$v:ident| $to:expr, |$w:ident| $from:expr) => {
        impl Field for Option<$ty> {
            fn present(&self) -> bool {
                self.is_some()
            }
            fn wire(&self, out: &mut dyn FnMut(Wire<'_>)) {
                if let Some($v) = self {
                    out(Wire::$wire($to));
                }
            }
            fn absorb(&mut self, value: Wire<'_>) -> bool {
                let Wire::$wire($w) = value else { return false };
                match $from {
                    Some(v) => {
                        // A repeated property: the first counts, as in Paho C
                        // (`MQTTProperties_getNumericValue`).
                        self.get_or_insert(v);
                        true
                    }
                    None => false,
                }
            }
            fn debug<'a>(&'a self, _secret: bool) -> Box<dyn fmt::Debug + 'a> {
                match self {
                    Some(v) => Box::new(v),
                    None => Box::new(()),
                }
            }
        }
    };
}

option_field!(u32, Four, |v| *v, |w| Some(w));
option_field!(u16, Two, |v| *v, |w| Some(w));
option_field!(bool, Byte, |v| u8::from(*v), |w| match w {
    0 => Some(false),
    1 => Some(true),
    _ => None,
});
option_field!(PayloadFormat, Byte, |v| v.to_byte(), |w| {
    PayloadFormat::from_byte(w)
});
option_field!(QoS, Byte, |v| v.as_u8(), |w| QoS::try_from(w).ok());
option_field!(String, Str, |v| v.as_str(), |w| (!w.contains('\0'))
    .then(|| w.to_owned()));

impl Field for Option<Vec<u8>> {
    fn present(&self) -> bool {
        self.is_some()
    }
    fn wire(&self, out: &mut dyn FnMut(Wire<'_>)) {
        if let Some(v) = self {
            out(Wire::Bin(v));
        }
    }
    fn absorb(&mut self, value: Wire<'_>) -> bool {
        let Wire::Bin(v) = value else { return false };
        self.get_or_insert_with(|| v.to_vec());
        true
    }
    fn debug<'a>(&'a self, secret: bool) -> Box<dyn fmt::Debug + 'a> {
        match self {
            Some(v) if secret => Box::new(Redacted(v.len())),
            Some(v) => Box::new(v),
            None => Box::new(()),
        }
    }
}

impl Field for Vec<u32> {
    fn present(&self) -> bool {
        !self.is_empty()
    }
    fn wire(&self, out: &mut dyn FnMut(Wire<'_>)) {
        self.iter().for_each(|&v| out(Wire::VarInt(v)));
    }
    fn absorb(&mut self, value: Wire<'_>) -> bool {
        let Wire::VarInt(v) = value else { return false };
        self.push(v);
        true
    }
    fn debug<'a>(&'a self, _secret: bool) -> Box<dyn fmt::Debug + 'a> {
        Box::new(self)
    }
}

impl Field for Vec<(String, String)> {
    fn present(&self) -> bool {
        !self.is_empty()
    }
    fn wire(&self, out: &mut dyn FnMut(Wire<'_>)) {
        self.iter().for_each(|(k, v)| out(Wire::Pair(k, v)));
    }
    fn absorb(&mut self, value: Wire<'_>) -> bool {
        let Wire::Pair(k, v) = value else {
            return false;
        };
        if k.contains('\0') || v.contains('\0') {
            return false;
        }
        self.push((k.to_owned(), v.to_owned()));
        true
    }
    fn debug<'a>(&'a self, _secret: bool) -> Box<dyn fmt::Debug + 'a> {
        Box::new(self)
    }
}

/// The one table of MQTT 5 properties (§2.2.2.2). Each row: the field and its type, the
/// identifier, the specification's name, the packets a client may send it in (table 2-4),
/// whether only a server sends it, whether `Debug` hides its value, and its setter.
/// From it come the struct, the setters, `Id` (names, codes, where allowed), `Debug`, and
/// the walk over wire values the engine translates from and to.
macro_rules! properties_table {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident: $ty:ty = $code:literal, $name:literal, Id::$id:ident,
            allowed [$($packet:ident),*], server_only $server:literal, secret $secret:literal,
            setter $($setter:ident($arg:ident: $argty:ty))?;
    )*) => {
        /// The MQTT 5 properties of a packet.
        ///
        #[doc = include_str!("properties_doc.md")]
        #[derive(Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Properties {
            $($(#[doc = $doc])+ pub $field: $ty,)*
        }

        impl Properties {
            $($(
                #[doc = concat!("Sets the ", $name, " property: see [`", stringify!($field), "`](Self::", stringify!($field), ").")]
                #[must_use]
                pub fn $setter(mut self, $arg: $argty) -> Self {
                    set(&mut self.$field, $arg.into());
                    self
                }
            )?)*

            /// The properties that are present, in the order of their identifiers.
            fn present(&self) -> Vec<Id> {
                let mut out = Vec::new();
                $(if self.$field.present() {
                    out.push(Id::$id);
                })*
                out
            }

            /// Hands every present value to `out` with its identifier, in table order.
            pub(crate) fn for_each_wire(&self, out: &mut dyn FnMut(u8, Wire<'_>)) {
                $(self.$field.wire(&mut |w| out($code, w));)*
            }

            /// The specification's name of the property `code`.
            pub(crate) fn name_of(code: u8) -> Option<&'static str> {
                match code {
                    $($code => Some($name),)*
                    _ => None,
                }
            }

            /// Takes one received value; `false` for an unknown identifier or a value that
            /// cannot be represented (the caller leaves it out). Of a property that may
            /// appear once, a repeated value leaves the first in place.
            pub(crate) fn absorb(&mut self, code: u8, value: Wire<'_>) -> bool {
                match code {
                    $($code => self.$field.absorb(value),)*
                    _ => false,
                }
            }
        }

        impl fmt::Debug for Properties {
            /// Lists only the properties that are present; secret values (the bytes of
            /// `authentication_data`) show only their length.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut d = f.debug_struct("Properties");
                $(if self.$field.present() {
                    d.field(stringify!($field), &self.$field.debug($secret));
                })*
                d.finish()
            }
        }

        /// The MQTT 5 properties, for the checks.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Id {
            $($id,)*
        }

        impl Id {
            /// The name the specification uses.
            fn name(self) -> &'static str {
                match self {
                    $(Id::$id => $name,)*
                }
            }

            /// Whether MQTT 5 (table 2-4) lets a client send this property in `packet`.
            fn allowed_in(self, packet: PacketKind) -> bool {
                match self {
                    $(Id::$id => {
                        let allowed: &[PacketKind] = &[$(PacketKind::$packet),*];
                        allowed.contains(&packet)
                    })*
                }
            }

            /// Properties only a server sends (CONNACK and the like).
            fn server_only(self) -> bool {
                match self {
                    $(Id::$id => $server,)*
                }
            }
        }
    };
}

/// Stores a setter's value: `Option` fields are replaced, lists grow.
trait Set<T> {
    fn put(&mut self, value: T);
}
impl<T> Set<T> for Option<T> {
    fn put(&mut self, value: T) {
        *self = Some(value);
    }
}
impl<T> Set<T> for Vec<T> {
    fn put(&mut self, value: T) {
        self.push(value);
    }
}
fn set<F: Set<T>, T>(field: &mut F, value: T) {
    field.put(value);
}

properties_table! {
    /// Payload Format Indicator (PUBLISH, Will): whether the payload is UTF-8 text.
    payload_format_indicator: Option<PayloadFormat> = 0x01, "Payload Format Indicator", Id::PayloadFormatIndicator,
        allowed [Publish, Will], server_only false, secret false, setter payload_format_indicator(format: PayloadFormat);
    /// Message Expiry Interval in seconds (PUBLISH, Will).
    message_expiry_interval: Option<u32> = 0x02, "Message Expiry Interval", Id::MessageExpiryInterval,
        allowed [Publish, Will], server_only false, secret false, setter message_expiry_interval(seconds: u32);
    /// Content Type (PUBLISH, Will): for example a MIME type.
    content_type: Option<String> = 0x03, "Content Type", Id::ContentType,
        allowed [Publish, Will], server_only false, secret false, setter content_type(content_type: impl Into<String>);
    /// Response Topic (PUBLISH, Will): the topic name for a response message.
    response_topic: Option<String> = 0x08, "Response Topic", Id::ResponseTopic,
        allowed [Publish, Will], server_only false, secret false, setter response_topic(topic: impl Into<String>);
    /// Correlation Data (PUBLISH, Will): binary data that links a response to its request.
    correlation_data: Option<Vec<u8>> = 0x09, "Correlation Data", Id::CorrelationData,
        allowed [Publish, Will], server_only false, secret false, setter correlation_data(data: impl Into<Vec<u8>>);
    /// Subscription Identifiers. A SUBSCRIBE carries at most one (1 to 268,435,455); a
    /// received PUBLISH carries one for each matching subscription that had one. The setter
    /// appends one.
    subscription_identifiers: Vec<u32> = 0x0B, "Subscription Identifier", Id::SubscriptionIdentifier,
        allowed [Subscribe], server_only false, secret false, setter subscription_identifier(id: u32);
    /// Session Expiry Interval in seconds (CONNECT, CONNACK, DISCONNECT);
    /// `u32::MAX` means the session never expires.
    session_expiry_interval: Option<u32> = 0x11, "Session Expiry Interval", Id::SessionExpiryInterval,
        allowed [Connect], server_only false, secret false, setter session_expiry_interval(seconds: u32);
    /// Assigned Client Identifier (CONNACK): the identifier the broker chose for the client.
    assigned_client_identifier: Option<String> = 0x12, "Assigned Client Identifier", Id::AssignedClientIdentifier,
        allowed [], server_only true, secret false, setter assigned_client_identifier(id: impl Into<String>);
    /// Server Keep Alive in seconds (CONNACK): the keep alive the broker requires.
    server_keep_alive: Option<u16> = 0x13, "Server Keep Alive", Id::ServerKeepAlive,
        allowed [], server_only true, secret false, setter server_keep_alive(seconds: u16);
    /// Authentication Method (CONNECT, CONNACK, AUTH) of MQTT 5 enhanced authentication.
    /// Not supported on CONNECT by this client (see [`Properties`]).
    authentication_method: Option<String> = 0x15, "Authentication Method", Id::AuthenticationMethod,
        allowed [Connect], server_only false, secret false, setter authentication_method(method: impl Into<String>);
    /// Authentication Data (CONNECT, CONNACK, AUTH) of MQTT 5 enhanced authentication.
    /// Not supported on CONNECT by this client (see [`Properties`]).
    authentication_data: Option<Vec<u8>> = 0x16, "Authentication Data", Id::AuthenticationData,
        allowed [Connect], server_only false, secret true, setter authentication_data(data: impl Into<Vec<u8>>);
    /// Request Problem Information (CONNECT): `false` asks the broker to send Reason
    /// Strings and User Properties only on PUBLISH, CONNACK and DISCONNECT.
    request_problem_information: Option<bool> = 0x17, "Request Problem Information", Id::RequestProblemInformation,
        allowed [Connect], server_only false, secret false, setter request_problem_information(request: bool);
    /// Will Delay Interval in seconds (Will): how long the broker waits after the connection
    /// is lost before it publishes the Will.
    will_delay_interval: Option<u32> = 0x18, "Will Delay Interval", Id::WillDelayInterval,
        allowed [Will], server_only false, secret false, setter will_delay_interval(seconds: u32);
    /// Request Response Information (CONNECT): ask the broker for Response Information.
    request_response_information: Option<bool> = 0x19, "Request Response Information", Id::RequestResponseInformation,
        allowed [Connect], server_only false, secret false, setter request_response_information(request: bool);
    /// Response Information (CONNACK): the basis the broker suggests for response topics.
    response_information: Option<String> = 0x1A, "Response Information", Id::ResponseInformation,
        allowed [], server_only true, secret false, setter response_information(info: impl Into<String>);
    /// Server Reference (CONNACK, DISCONNECT): another server the client may use.
    server_reference: Option<String> = 0x1C, "Server Reference", Id::ServerReference,
        allowed [], server_only true, secret false, setter server_reference(reference: impl Into<String>);
    /// Reason String (acknowledgements, DISCONNECT): a human-readable diagnostic.
    reason_string: Option<String> = 0x1F, "Reason String", Id::ReasonString,
        allowed [], server_only false, secret false, setter reason_string(reason: impl Into<String>);
    /// Receive Maximum (CONNECT, CONNACK): how many QoS 1 and 2 messages the sender is
    /// willing to process at once (1 to 65,535).
    receive_maximum: Option<u16> = 0x21, "Receive Maximum", Id::ReceiveMaximum,
        allowed [Connect], server_only false, secret false, setter receive_maximum(maximum: u16);
    /// Topic Alias Maximum (CONNECT, CONNACK): the highest topic alias the sender accepts.
    /// On CONNECT only 0 is supported by this client (see [`Properties`]).
    topic_alias_maximum: Option<u16> = 0x22, "Topic Alias Maximum", Id::TopicAliasMaximum,
        allowed [Connect], server_only false, secret false, setter topic_alias_maximum(maximum: u16);
    /// Topic Alias (PUBLISH). Not supported on outgoing PUBLISH by this client
    /// (see [`Properties`]).
    topic_alias: Option<u16> = 0x23, "Topic Alias", Id::TopicAlias,
        allowed [Publish], server_only false, secret false, setter topic_alias(alias: u16);
    /// Maximum QoS (CONNACK): the highest QoS the broker supports.
    maximum_qos: Option<QoS> = 0x24, "Maximum QoS", Id::MaximumQos,
        allowed [], server_only true, secret false, setter maximum_qos(qos: QoS);
    /// Retain Available (CONNACK): whether the broker supports retained messages.
    retain_available: Option<bool> = 0x25, "Retain Available", Id::RetainAvailable,
        allowed [], server_only true, secret false, setter retain_available(available: bool);
    /// User Properties (every packet): name/value pairs, in order; a name may repeat.
    user_properties: Vec<(String, String)> = 0x26, "User Property", Id::UserProperty,
        allowed [Connect, Will, Publish, Subscribe, Unsubscribe], server_only false, secret false, setter;
    /// Maximum Packet Size in bytes (CONNECT, CONNACK): the largest packet the sender
    /// accepts (at least 1).
    maximum_packet_size: Option<u32> = 0x27, "Maximum Packet Size", Id::MaximumPacketSize,
        allowed [Connect], server_only false, secret false, setter maximum_packet_size(bytes: u32);
    /// Wildcard Subscription Available (CONNACK).
    wildcard_subscription_available: Option<bool> = 0x28, "Wildcard Subscription Available", Id::WildcardSubscriptionAvailable,
        allowed [], server_only true, secret false, setter wildcard_subscription_available(available: bool);
    /// Subscription Identifiers Available (CONNACK).
    subscription_identifiers_available: Option<bool> = 0x29, "Subscription Identifier Available", Id::SubscriptionIdentifiersAvailable,
        allowed [], server_only true, secret false, setter subscription_identifiers_available(available: bool);
    /// Shared Subscription Available (CONNACK).
    shared_subscription_available: Option<bool> = 0x2A, "Shared Subscription Available", Id::SharedSubscriptionAvailable,
        allowed [], server_only true, secret false, setter shared_subscription_available(available: bool);
}

impl Properties {
    /// Creates an empty set of properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// `true` if no property is present.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The value of the first User Property named `name`, if any.
    pub fn user_property_value(&self, name: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Appends a User Property. Order is kept and a name may repeat.
    #[must_use]
    pub fn user_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((name.into(), value.into()));
        self
    }

    /// Checks that these properties may be sent by a client in `packet`, before anything
    /// reaches the engine.
    ///
    /// * A property MQTT 5 does not allow a client to send in that packet (table 2-4), a
    ///   string containing U+0000 (C strings cannot carry it), a string or
    ///   binary value over 65,535 bytes, a zero Receive Maximum, Maximum Packet Size, Topic
    ///   Alias or Subscription Identifier, a Subscription Identifier above 268,435,455, more
    ///   than one on SUBSCRIBE, or a Response Topic that is empty or has wildcards:
    ///   [`Error::InvalidArgument`] naming the property and the packet.
    /// * A property the Paho engine cannot honour: [`Error::Unsupported`] with option
    ///   `"properties"`.
    pub(crate) fn check(&self, packet: PacketKind) -> Result<(), Error> {
        let present = self.present();

        // 1. Only properties a client may send in this packet.
        if let Some(id) = present.iter().find(|id| !id.allowed_in(packet)) {
            let hint = if id.server_only() {
                "; only a server sends it"
            } else if *id == Id::SubscriptionIdentifier && packet == PacketKind::Publish {
                "; only a server sends it in PUBLISH (set it on SUBSCRIBE)"
            } else {
                ""
            };
            return Err(Error::InvalidArgument(format!(
                "the {} property is not allowed in {} (MQTT 5 table 2-4){hint}",
                id.name(),
                packet.name(),
            )));
        }

        // 2. Legal values.
        let invalid = |id: Id, what: &str| {
            Err(Error::InvalidArgument(format!(
                "the {} property in {} {what}",
                id.name(),
                packet.name()
            )))
        };
        let strings = [
            (Id::ContentType, &self.content_type),
            (Id::ResponseTopic, &self.response_topic),
            (
                Id::AssignedClientIdentifier,
                &self.assigned_client_identifier,
            ),
            (Id::AuthenticationMethod, &self.authentication_method),
            (Id::ResponseInformation, &self.response_information),
            (Id::ServerReference, &self.server_reference),
            (Id::ReasonString, &self.reason_string),
        ];
        for (id, value) in strings {
            if let Some(value) = value {
                if let Err(what) = check_string(value) {
                    return invalid(id, what);
                }
            }
        }
        for (name, value) in &self.user_properties {
            if let Err(what) = check_string(name) {
                return Err(Error::InvalidArgument(format!(
                    "the name of a User Property in {} {what}",
                    packet.name()
                )));
            }
            if let Err(what) = check_string(value) {
                return Err(Error::InvalidArgument(format!(
                    "the User Property {name:?} in {} {what}",
                    packet.name()
                )));
            }
        }
        let binaries = [
            (Id::CorrelationData, &self.correlation_data),
            (Id::AuthenticationData, &self.authentication_data),
        ];
        for (id, value) in binaries {
            if value.as_ref().is_some_and(|v| v.len() > MAX_PROPERTY_LEN) {
                return invalid(id, "is longer than 65,535 bytes");
            }
        }
        if let Some(topic) = &self.response_topic {
            if topic.is_empty() {
                return invalid(Id::ResponseTopic, "is empty (it must be a topic name)");
            }
            if topic.contains(['+', '#']) {
                return invalid(
                    Id::ResponseTopic,
                    "contains a wildcard (it must be a topic name)",
                );
            }
        }
        if self.receive_maximum == Some(0) {
            return invalid(Id::ReceiveMaximum, "is 0 (it must be 1 to 65,535)");
        }
        if self.maximum_packet_size == Some(0) {
            return invalid(Id::MaximumPacketSize, "is 0 (it must be at least 1)");
        }
        if self.topic_alias == Some(0) {
            return invalid(Id::TopicAlias, "is 0 (it must be 1 to 65,535)");
        }
        for &id in &self.subscription_identifiers {
            if !(1..=MAX_SUBSCRIPTION_IDENTIFIER).contains(&id) {
                return invalid(
                    Id::SubscriptionIdentifier,
                    &format!("is {id} (it must be 1 to 268,435,455)"),
                );
            }
        }
        if self.subscription_identifiers.len() > 1 {
            return invalid(
                Id::SubscriptionIdentifier,
                "appears more than once (a SUBSCRIBE carries at most one)",
            );
        }

        // 3. What the engine can do.
        if packet == PacketKind::Connect {
            if self.authentication_method.is_some() || self.authentication_data.is_some() {
                // Paho C 1.3.16 has no enhanced authentication. MQTTPacket_send_connect
                // (MQTTPacketOut.c) writes the CONNECT properties verbatim, but no function
                // ever sends an AUTH packet (there is no MQTTPacket_send_auth, and MQTTAsync.h
                // has no AUTH callback), and MQTTAsync_receiveThread (MQTTAsyncUtils.c)
                // handles only CONNACK, SUBACK, UNSUBACK and DISCONNECT, so a broker's AUTH
                // (0x18 Continue authentication) ends in
                // `Log(LOG_ERROR, -1, "An unexpected packet type %u has been received", ...)`
                // and the connect waits until it times out. (MQTTClient.c's call to its
                // auth_handle is compiled out with `#if 0`, and that is the sync client.)
                return Err(Error::Unsupported {
                    option: "properties",
                    reason: "MQTT 5 enhanced authentication (Authentication Method/Data) \
                             needs the AUTH packet exchange, which the Paho C engine does not \
                             implement: it never sends AUTH and discards an AUTH it receives",
                });
            }
            if self.topic_alias_maximum.is_some_and(|max| max > 0) {
                // No code in Paho C 1.3.16 refers to topic aliases except the property type
                // and name tables in MQTTProperties.c: MQTTProtocol_handlePublishes
                // (MQTTProtocolClient.c) delivers an aliased PUBLISH with its empty topic.
                return Err(Error::Unsupported {
                    option: "properties",
                    reason: "a Topic Alias Maximum above 0 lets the broker replace topic names \
                             by aliases, and the Paho C engine does not resolve aliases in \
                             incoming PUBLISH packets (they would arrive without a topic)",
                });
            }
        }
        if packet == PacketKind::Publish && self.topic_alias.is_some() {
            // Paho C 1.3.16 keeps no topic alias state (the only references are the property
            // tables in MQTTProperties.c): it never checks the alias against the broker's
            // Topic Alias Maximum from CONNACK, and MQTTProtocol_retries (MQTTProtocolClient.c)
            // resends an in-flight PUBLISH with its stored properties on a new connection,
            // where the broker no longer knows the alias. An alias only saves bytes in a
            // PUBLISH with an empty topic name, which `Topic` rejects.
            return Err(Error::Unsupported {
                option: "properties",
                reason: "outgoing topic aliases need per-connection alias state that the Paho \
                         C engine does not keep (no check against the broker's Topic Alias \
                         Maximum, aliased PUBLISH packets resent unchanged after a reconnect), \
                         and every PUBLISH here carries its full topic name",
            });
        }
        Ok(())
    }
}

/// `Err(what is wrong)` for a string that may not go into a property.
fn check_string(value: &str) -> Result<(), &'static str> {
    if value.contains('\0') {
        Err("contains the character U+0000, which MQTT forbids")
    } else if value.len() > MAX_PROPERTY_LEN {
        Err("is longer than 65,535 bytes")
    } else {
        Ok(())
    }
}

/// The packets a client sends properties in, for [`Properties::check`].
#[allow(dead_code)] // built by the connect/will/publish/subscribe/unsubscribe paths
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PacketKind {
    /// CONNECT (the client's connect properties).
    Connect,
    /// The Will properties inside CONNECT.
    Will,
    /// An outgoing PUBLISH.
    Publish,
    /// SUBSCRIBE.
    Subscribe,
    /// UNSUBSCRIBE.
    Unsubscribe,
}

impl PacketKind {
    fn name(self) -> &'static str {
        match self {
            PacketKind::Connect => "CONNECT",
            PacketKind::Will => "the Will properties",
            PacketKind::Publish => "PUBLISH",
            PacketKind::Subscribe => "SUBSCRIBE",
            PacketKind::Unsubscribe => "UNSUBSCRIBE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PacketKind::*;

    const ALL: [PacketKind; 5] = [Connect, Will, Publish, Subscribe, Unsubscribe];

    fn invalid(result: Result<(), Error>) -> String {
        match result {
            Err(Error::InvalidArgument(msg)) => msg,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn unsupported(result: Result<(), Error>) -> &'static str {
        match result {
            Err(Error::Unsupported { option, reason }) => {
                assert_eq!(option, "properties");
                reason
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    /// One `Properties` per property, each with a legal value, with where it may be sent.
    fn singles() -> Vec<(Properties, &'static [PacketKind])> {
        let p = Properties::new;
        vec![
            (
                p().payload_format_indicator(PayloadFormat::Utf8),
                &[Will, Publish],
            ),
            (p().message_expiry_interval(60), &[Will, Publish]),
            (p().content_type("text/plain"), &[Will, Publish]),
            (p().response_topic("replies/1"), &[Will, Publish]),
            (p().correlation_data(vec![0, 1, 255]), &[Will, Publish]),
            (p().subscription_identifier(7), &[Subscribe]),
            (p().session_expiry_interval(u32::MAX), &[Connect]),
            (p().assigned_client_identifier("id"), &[]),
            (p().server_keep_alive(30), &[]),
            (p().request_problem_information(false), &[Connect]),
            (p().will_delay_interval(5), &[Will]),
            (p().request_response_information(true), &[Connect]),
            (p().response_information("resp/"), &[]),
            (p().server_reference("other:1883"), &[]),
            (p().reason_string("why"), &[]),
            (p().receive_maximum(10), &[Connect]),
            (p().topic_alias_maximum(0), &[Connect]),
            (p().maximum_qos(QoS::AtLeastOnce), &[]),
            (p().retain_available(true), &[]),
            (p().wildcard_subscription_available(true), &[]),
            (p().subscription_identifiers_available(true), &[]),
            (p().shared_subscription_available(true), &[]),
            (p().maximum_packet_size(1024), &[Connect]),
            (p().user_property("k", "v"), &ALL),
        ]
    }

    #[test]
    fn table_of_allowed_properties() {
        for (props, allowed) in singles() {
            for packet in ALL {
                let result = props.check(packet);
                if allowed.contains(&packet) {
                    assert!(result.is_ok(), "{props:?} in {packet:?}: {result:?}");
                } else {
                    let msg = invalid(result);
                    assert!(msg.contains("not allowed in"), "{msg}");
                    assert!(msg.contains(packet.name()), "{msg}");
                }
            }
        }
    }

    #[test]
    fn empty_is_allowed_everywhere() {
        for packet in ALL {
            Properties::new().check(packet).unwrap();
        }
    }

    #[test]
    fn connect() {
        let props = Properties::new()
            .session_expiry_interval(3600)
            .receive_maximum(100)
            .maximum_packet_size(1 << 20)
            .topic_alias_maximum(0)
            .request_response_information(true)
            .request_problem_information(true)
            .user_property("a", "1")
            .user_property("a", "2");
        props.check(Connect).unwrap();

        let msg = invalid(Properties::new().receive_maximum(0).check(Connect));
        assert!(msg.contains("Receive Maximum"), "{msg}");
        let msg = invalid(Properties::new().maximum_packet_size(0).check(Connect));
        assert!(msg.contains("Maximum Packet Size"), "{msg}");
        let msg = invalid(Properties::new().will_delay_interval(1).check(Connect));
        assert_eq!(
            msg,
            "the Will Delay Interval property is not allowed in CONNECT (MQTT 5 table 2-4)"
        );
        let msg = invalid(
            Properties::new()
                .maximum_qos(QoS::AtMostOnce)
                .check(Connect),
        );
        assert!(msg.ends_with("only a server sends it"), "{msg}");

        let reason = unsupported(
            Properties::new()
                .authentication_method("SCRAM")
                .check(Connect),
        );
        assert!(reason.contains("AUTH"), "{reason}");
        unsupported(
            Properties::new()
                .authentication_data(vec![1])
                .check(Connect),
        );
        let reason = unsupported(Properties::new().topic_alias_maximum(10).check(Connect));
        assert!(reason.contains("alias"), "{reason}");
    }

    #[test]
    fn will() {
        Properties::new()
            .will_delay_interval(30)
            .payload_format_indicator(PayloadFormat::Unspecified)
            .message_expiry_interval(0)
            .content_type("application/json")
            .response_topic("r/t")
            .correlation_data(Vec::new())
            .user_property("", "")
            .check(Will)
            .unwrap();
        invalid(Properties::new().session_expiry_interval(1).check(Will));
        invalid(Properties::new().topic_alias(1).check(Will));
        invalid(Properties::new().subscription_identifier(1).check(Will));
    }

    #[test]
    fn publish() {
        Properties::new()
            .payload_format_indicator(PayloadFormat::Utf8)
            .message_expiry_interval(u32::MAX)
            .content_type("text/plain")
            .response_topic("replies/me")
            .correlation_data(b"\0\x01".to_vec())
            .user_property("k", "v")
            .check(Publish)
            .unwrap();

        let msg = invalid(Properties::new().subscription_identifier(1).check(Publish));
        assert!(msg.contains("Subscription Identifier"), "{msg}");
        assert!(msg.contains("PUBLISH"), "{msg}");
        invalid(Properties::new().will_delay_interval(1).check(Publish));
        invalid(Properties::new().session_expiry_interval(1).check(Publish));

        let reason = unsupported(Properties::new().topic_alias(1).check(Publish));
        assert!(reason.contains("alias"), "{reason}");
        invalid(Properties::new().topic_alias(0).check(Publish));

        let msg = invalid(Properties::new().response_topic("a/+").check(Publish));
        assert!(
            msg.contains("Response Topic") && msg.contains("wildcard"),
            "{msg}"
        );
        invalid(Properties::new().response_topic("a/#").check(Publish));
        invalid(Properties::new().response_topic("").check(Publish));
    }

    #[test]
    fn subscribe() {
        Properties::new()
            .subscription_identifier(1)
            .user_property("k", "v")
            .check(Subscribe)
            .unwrap();
        Properties::new()
            .subscription_identifier(MAX_SUBSCRIPTION_IDENTIFIER)
            .check(Subscribe)
            .unwrap();

        let msg = invalid(
            Properties::new()
                .subscription_identifier(0)
                .check(Subscribe),
        );
        assert!(msg.contains("is 0"), "{msg}");
        invalid(
            Properties::new()
                .subscription_identifier(MAX_SUBSCRIPTION_IDENTIFIER + 1)
                .check(Subscribe),
        );
        let msg = invalid(
            Properties::new()
                .subscription_identifier(1)
                .subscription_identifier(2)
                .check(Subscribe),
        );
        assert!(msg.contains("more than once"), "{msg}");
        invalid(Properties::new().content_type("x").check(Subscribe));
    }

    #[test]
    fn unsubscribe() {
        Properties::new()
            .user_property("k", "v")
            .user_property("k", "w")
            .check(Unsubscribe)
            .unwrap();
        invalid(
            Properties::new()
                .subscription_identifier(1)
                .check(Unsubscribe),
        );
        invalid(Properties::new().reason_string("x").check(Unsubscribe));
    }

    #[test]
    fn nul_in_any_string_is_invalid() {
        let cases = [
            (Properties::new().content_type("a\0b"), Publish),
            (Properties::new().response_topic("a/\0"), Will),
            (Properties::new().user_property("k\0", "v"), Unsubscribe),
            (Properties::new().user_property("k", "\0"), Subscribe),
            (Properties::new().user_property("k", "v\0"), Connect),
        ];
        for (props, packet) in cases {
            let msg = invalid(props.check(packet));
            assert!(msg.contains("U+0000"), "{msg}");
        }
        // Binary data may contain zero bytes.
        Properties::new()
            .correlation_data(vec![0, 0])
            .check(Publish)
            .unwrap();
    }

    #[test]
    fn overlong_values_are_invalid() {
        let long = "x".repeat(MAX_PROPERTY_LEN + 1);
        let ok = "x".repeat(MAX_PROPERTY_LEN);
        Properties::new()
            .content_type(ok.clone())
            .user_property(ok.clone(), ok.clone())
            .correlation_data(ok.into_bytes())
            .check(Publish)
            .unwrap();
        let msg = invalid(Properties::new().content_type(long.clone()).check(Publish));
        assert!(msg.contains("65,535"), "{msg}");
        invalid(
            Properties::new()
                .user_property(long.clone(), "v")
                .check(Publish),
        );
        invalid(
            Properties::new()
                .correlation_data(long.into_bytes())
                .check(Publish),
        );
    }

    #[test]
    fn not_allowed_comes_before_unsupported() {
        // Authentication Method is not allowed in PUBLISH at all: InvalidArgument, not
        // Unsupported.
        invalid(Properties::new().authentication_method("x").check(Publish));
    }

    #[test]
    fn is_empty_and_user_property_lookup() {
        assert!(Properties::new().is_empty());
        assert!(Properties::default().is_empty());
        assert!(!Properties::new().subscription_identifier(1).is_empty());
        assert!(!Properties::new().retain_available(false).is_empty());
        let props = Properties::new()
            .user_property("a", "1")
            .user_property("a", "2");
        assert_eq!(props.user_property_value("a"), Some("1"));
        assert_eq!(props.user_property_value("b"), None);
    }

    #[test]
    fn debug_shows_present_fields_and_hides_auth_data() {
        assert_eq!(format!("{:?}", Properties::new()), "Properties");
        let props = Properties::new()
            .content_type("text/plain")
            .authentication_data(b"secret-token".to_vec());
        let text = format!("{props:?}");
        assert!(text.contains("content_type: \"text/plain\""), "{text}");
        assert!(text.contains("<redacted: 12 bytes>"), "{text}");
        assert!(!text.contains("115"), "{text}"); // no byte of "secret-token"
        assert!(!text.contains("response_topic"), "{text}");
    }

    #[test]
    fn every_property_survives_the_wire_walk() {
        let mut all = Properties::new()
            .user_property("k", "v")
            .user_property("k", "w");
        for (single, _) in singles() {
            let mut back = Properties::new();
            single.for_each_wire(&mut |code, w| assert!(back.absorb(code, w), "{code:#x}"));
            assert_eq!(back, single);
            single.for_each_wire(&mut |code, w| {
                all.absorb(code, w);
            });
        }
        let codes = {
            let mut codes = Vec::new();
            all.for_each_wire(&mut |code, _| codes.push(code));
            codes
        };
        let mut sorted = codes.clone();
        sorted.sort_unstable();
        assert_eq!(codes, sorted, "walked in identifier order");
        assert_eq!(all.present().len(), 24);
    }

    #[test]
    fn unrepresentable_values_are_left_out() {
        let mut p = Properties::new();
        assert!(!p.absorb(0x01, Wire::Byte(2)), "payload format 2");
        assert!(!p.absorb(0x25, Wire::Byte(7)), "boolean 7");
        assert!(!p.absorb(0x24, Wire::Byte(3)), "maximum QoS 3");
        assert!(!p.absorb(0x03, Wire::Str("a\0b")), "NUL in a string");
        assert!(!p.absorb(0x03, Wire::Four(1)), "wrong wire type");
        assert!(!p.absorb(0x7F, Wire::Byte(1)), "unknown identifier");
        assert!(p.is_empty());
    }

    #[test]
    fn payload_format_bytes() {
        for format in [PayloadFormat::Unspecified, PayloadFormat::Utf8] {
            assert_eq!(PayloadFormat::from_byte(format.to_byte()), Some(format));
        }
        assert_eq!(PayloadFormat::from_byte(2), None);
    }
}
