//! MQTT 5 properties, as our own typed struct.
//!
//! [`Properties`] is what the user attaches to CONNECT (`ClientBuilder::properties`), to the
//! Will, to PUBLISH, SUBSCRIBE and UNSUBSCRIBE, and what the crate hands back for received
//! packets (`Message::properties`, CONNACK, SUBACK, DISCONNECT). Before anything is sent,
//! [`Properties::check`] verifies that every property is one the MQTT 5 specification allows
//! a *client* to put in that packet (table 2-4), that its value is legal, and that the Paho
//! engine can honour it. Only then does `engine::properties::to_paho` translate it.

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

/// The MQTT 5 properties of a packet.
///
/// One public field per property of MQTT 5 (§2.2.2.2); `None` (or an empty `Vec`) means the
/// property is absent. Build one with [`Properties::new`] and the chainable setters named
/// after the fields, or assign the fields directly:
///
/// ```
/// use aiomqtt::Properties;
///
/// let props = Properties::new()
///     .content_type("text/plain")
///     .response_topic("replies/sensor-7")
///     .correlation_data(b"req-42".to_vec())
///     .message_expiry_interval(60)
///     .user_property("origin", "greenhouse")
///     .user_property("origin", "backup"); // duplicates are kept, in order
///
/// assert_eq!(props.content_type.as_deref(), Some("text/plain"));
/// assert_eq!(props.user_property_value("origin"), Some("greenhouse"));
/// assert_eq!(props.user_properties.len(), 2);
/// assert!(!props.is_empty());
/// assert!(Properties::new().is_empty());
/// ```
///
/// Which properties a packet may carry is fixed by the specification. Every operation checks
/// the properties it is given before anything is sent and fails with
/// [`Error::InvalidArgument`] for a property the client may not send in that packet (for
/// example a Subscription Identifier on PUBLISH, or any property only a server sends), for a
/// string containing U+0000, for a string or binary value longer than 65,535 bytes and for
/// the zero values the specification forbids. Properties the Paho engine cannot honour fail
/// with [`Error::Unsupported`]: Authentication Method/Data (enhanced authentication), Topic
/// Alias on PUBLISH, and a Topic Alias Maximum above 0 on CONNECT.
///
/// | packet      | properties a client may send                                               |
/// |-------------|----------------------------------------------------------------------------|
/// | CONNECT     | session expiry interval, receive maximum, maximum packet size, topic alias maximum (0 only), request response information, request problem information, user properties |
/// | Will        | will delay interval, payload format indicator, message expiry interval, content type, response topic, correlation data, user properties |
/// | PUBLISH     | payload format indicator, message expiry interval, content type, response topic, correlation data, user properties |
/// | SUBSCRIBE   | one subscription identifier (1 to 268,435,455), user properties             |
/// | UNSUBSCRIBE | user properties                                                            |
///
/// `Debug` lists only the properties that are present and never shows the bytes of
/// `authentication_data`.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Properties {
    /// Payload Format Indicator (PUBLISH, Will): whether the payload is UTF-8 text.
    pub payload_format_indicator: Option<PayloadFormat>,
    /// Message Expiry Interval in seconds (PUBLISH, Will).
    pub message_expiry_interval: Option<u32>,
    /// Content Type (PUBLISH, Will): for example a MIME type.
    pub content_type: Option<String>,
    /// Response Topic (PUBLISH, Will): the topic name for a response message.
    pub response_topic: Option<String>,
    /// Correlation Data (PUBLISH, Will): binary data that links a response to its request.
    pub correlation_data: Option<Vec<u8>>,
    /// Subscription Identifiers. A SUBSCRIBE carries at most one (1 to 268,435,455); a
    /// received PUBLISH carries one for each matching subscription that had one.
    pub subscription_identifiers: Vec<u32>,
    /// Session Expiry Interval in seconds (CONNECT, CONNACK, DISCONNECT);
    /// `u32::MAX` means the session never expires.
    pub session_expiry_interval: Option<u32>,
    /// Assigned Client Identifier (CONNACK): the identifier the broker chose for the client.
    pub assigned_client_identifier: Option<String>,
    /// Server Keep Alive in seconds (CONNACK): the keep alive the broker requires.
    pub server_keep_alive: Option<u16>,
    /// Authentication Method (CONNECT, CONNACK, AUTH) of MQTT 5 enhanced authentication.
    /// Not supported on CONNECT by this client (see [`Properties`]).
    pub authentication_method: Option<String>,
    /// Authentication Data (CONNECT, CONNACK, AUTH) of MQTT 5 enhanced authentication.
    /// Not supported on CONNECT by this client (see [`Properties`]).
    pub authentication_data: Option<Vec<u8>>,
    /// Request Problem Information (CONNECT): `false` asks the broker to send Reason
    /// Strings and User Properties only on PUBLISH, CONNACK and DISCONNECT.
    pub request_problem_information: Option<bool>,
    /// Will Delay Interval in seconds (Will): how long the broker waits after the connection
    /// is lost before it publishes the Will.
    pub will_delay_interval: Option<u32>,
    /// Request Response Information (CONNECT): ask the broker for Response Information.
    pub request_response_information: Option<bool>,
    /// Response Information (CONNACK): the basis the broker suggests for response topics.
    pub response_information: Option<String>,
    /// Server Reference (CONNACK, DISCONNECT): another server the client may use.
    pub server_reference: Option<String>,
    /// Reason String (acknowledgements, DISCONNECT): a human-readable diagnostic.
    pub reason_string: Option<String>,
    /// Receive Maximum (CONNECT, CONNACK): how many QoS 1 and 2 messages the sender is
    /// willing to process at once (1 to 65,535).
    pub receive_maximum: Option<u16>,
    /// Topic Alias Maximum (CONNECT, CONNACK): the highest topic alias the sender accepts.
    /// On CONNECT only 0 is supported by this client (see [`Properties`]).
    pub topic_alias_maximum: Option<u16>,
    /// Topic Alias (PUBLISH). Not supported on outgoing PUBLISH by this client
    /// (see [`Properties`]).
    pub topic_alias: Option<u16>,
    /// Maximum QoS (CONNACK): the highest QoS the broker supports.
    pub maximum_qos: Option<QoS>,
    /// Retain Available (CONNACK): whether the broker supports retained messages.
    pub retain_available: Option<bool>,
    /// Wildcard Subscription Available (CONNACK).
    pub wildcard_subscription_available: Option<bool>,
    /// Subscription Identifiers Available (CONNACK).
    pub subscription_identifiers_available: Option<bool>,
    /// Shared Subscription Available (CONNACK).
    pub shared_subscription_available: Option<bool>,
    /// Maximum Packet Size in bytes (CONNECT, CONNACK): the largest packet the sender
    /// accepts (at least 1).
    pub maximum_packet_size: Option<u32>,
    /// User Properties (every packet): name/value pairs, in order; a name may repeat.
    pub user_properties: Vec<(String, String)>,
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

    /// Sets the Payload Format Indicator.
    #[must_use]
    pub fn payload_format_indicator(mut self, format: PayloadFormat) -> Self {
        self.payload_format_indicator = Some(format);
        self
    }

    /// Sets the Message Expiry Interval, in seconds.
    #[must_use]
    pub fn message_expiry_interval(mut self, seconds: u32) -> Self {
        self.message_expiry_interval = Some(seconds);
        self
    }

    /// Sets the Content Type.
    #[must_use]
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the Response Topic.
    #[must_use]
    pub fn response_topic(mut self, topic: impl Into<String>) -> Self {
        self.response_topic = Some(topic.into());
        self
    }

    /// Sets the Correlation Data.
    #[must_use]
    pub fn correlation_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.correlation_data = Some(data.into());
        self
    }

    /// Appends a Subscription Identifier (a SUBSCRIBE may carry only one).
    #[must_use]
    pub fn subscription_identifier(mut self, id: u32) -> Self {
        self.subscription_identifiers.push(id);
        self
    }

    /// Sets the Session Expiry Interval, in seconds (`u32::MAX`: never expires).
    #[must_use]
    pub fn session_expiry_interval(mut self, seconds: u32) -> Self {
        self.session_expiry_interval = Some(seconds);
        self
    }

    /// Sets the Assigned Client Identifier (a property only a broker sends).
    #[must_use]
    pub fn assigned_client_identifier(mut self, id: impl Into<String>) -> Self {
        self.assigned_client_identifier = Some(id.into());
        self
    }

    /// Sets the Server Keep Alive, in seconds (a property only a broker sends).
    #[must_use]
    pub fn server_keep_alive(mut self, seconds: u16) -> Self {
        self.server_keep_alive = Some(seconds);
        self
    }

    /// Sets the Authentication Method.
    #[must_use]
    pub fn authentication_method(mut self, method: impl Into<String>) -> Self {
        self.authentication_method = Some(method.into());
        self
    }

    /// Sets the Authentication Data.
    #[must_use]
    pub fn authentication_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.authentication_data = Some(data.into());
        self
    }

    /// Sets Request Problem Information.
    #[must_use]
    pub fn request_problem_information(mut self, request: bool) -> Self {
        self.request_problem_information = Some(request);
        self
    }

    /// Sets the Will Delay Interval, in seconds.
    #[must_use]
    pub fn will_delay_interval(mut self, seconds: u32) -> Self {
        self.will_delay_interval = Some(seconds);
        self
    }

    /// Sets Request Response Information.
    #[must_use]
    pub fn request_response_information(mut self, request: bool) -> Self {
        self.request_response_information = Some(request);
        self
    }

    /// Sets the Response Information (a property only a broker sends).
    #[must_use]
    pub fn response_information(mut self, info: impl Into<String>) -> Self {
        self.response_information = Some(info.into());
        self
    }

    /// Sets the Server Reference (a property only a broker sends).
    #[must_use]
    pub fn server_reference(mut self, reference: impl Into<String>) -> Self {
        self.server_reference = Some(reference.into());
        self
    }

    /// Sets the Reason String (not allowed in the packets a client sends through this crate).
    #[must_use]
    pub fn reason_string(mut self, reason: impl Into<String>) -> Self {
        self.reason_string = Some(reason.into());
        self
    }

    /// Sets the Receive Maximum (1 to 65,535).
    #[must_use]
    pub fn receive_maximum(mut self, maximum: u16) -> Self {
        self.receive_maximum = Some(maximum);
        self
    }

    /// Sets the Topic Alias Maximum.
    #[must_use]
    pub fn topic_alias_maximum(mut self, maximum: u16) -> Self {
        self.topic_alias_maximum = Some(maximum);
        self
    }

    /// Sets the Topic Alias.
    #[must_use]
    pub fn topic_alias(mut self, alias: u16) -> Self {
        self.topic_alias = Some(alias);
        self
    }

    /// Sets the Maximum QoS (a property only a broker sends).
    #[must_use]
    pub fn maximum_qos(mut self, qos: QoS) -> Self {
        self.maximum_qos = Some(qos);
        self
    }

    /// Sets Retain Available (a property only a broker sends).
    #[must_use]
    pub fn retain_available(mut self, available: bool) -> Self {
        self.retain_available = Some(available);
        self
    }

    /// Sets Wildcard Subscription Available (a property only a broker sends).
    #[must_use]
    pub fn wildcard_subscription_available(mut self, available: bool) -> Self {
        self.wildcard_subscription_available = Some(available);
        self
    }

    /// Sets Subscription Identifiers Available (a property only a broker sends).
    #[must_use]
    pub fn subscription_identifiers_available(mut self, available: bool) -> Self {
        self.subscription_identifiers_available = Some(available);
        self
    }

    /// Sets Shared Subscription Available (a property only a broker sends).
    #[must_use]
    pub fn shared_subscription_available(mut self, available: bool) -> Self {
        self.shared_subscription_available = Some(available);
        self
    }

    /// Sets the Maximum Packet Size, in bytes (at least 1).
    #[must_use]
    pub fn maximum_packet_size(mut self, bytes: u32) -> Self {
        self.maximum_packet_size = Some(bytes);
        self
    }

    /// Appends a User Property. Order is kept and a name may repeat.
    #[must_use]
    pub fn user_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((name.into(), value.into()));
        self
    }

    /// The properties that are present, in the order of the specification's identifiers.
    fn present(&self) -> Vec<Id> {
        let candidates = [
            (
                Id::PayloadFormatIndicator,
                self.payload_format_indicator.is_some(),
            ),
            (
                Id::MessageExpiryInterval,
                self.message_expiry_interval.is_some(),
            ),
            (Id::ContentType, self.content_type.is_some()),
            (Id::ResponseTopic, self.response_topic.is_some()),
            (Id::CorrelationData, self.correlation_data.is_some()),
            (
                Id::SubscriptionIdentifier,
                !self.subscription_identifiers.is_empty(),
            ),
            (
                Id::SessionExpiryInterval,
                self.session_expiry_interval.is_some(),
            ),
            (
                Id::AssignedClientIdentifier,
                self.assigned_client_identifier.is_some(),
            ),
            (Id::ServerKeepAlive, self.server_keep_alive.is_some()),
            (
                Id::AuthenticationMethod,
                self.authentication_method.is_some(),
            ),
            (Id::AuthenticationData, self.authentication_data.is_some()),
            (
                Id::RequestProblemInformation,
                self.request_problem_information.is_some(),
            ),
            (Id::WillDelayInterval, self.will_delay_interval.is_some()),
            (
                Id::RequestResponseInformation,
                self.request_response_information.is_some(),
            ),
            (Id::ResponseInformation, self.response_information.is_some()),
            (Id::ServerReference, self.server_reference.is_some()),
            (Id::ReasonString, self.reason_string.is_some()),
            (Id::ReceiveMaximum, self.receive_maximum.is_some()),
            (Id::TopicAliasMaximum, self.topic_alias_maximum.is_some()),
            (Id::TopicAlias, self.topic_alias.is_some()),
            (Id::MaximumQos, self.maximum_qos.is_some()),
            (Id::RetainAvailable, self.retain_available.is_some()),
            (Id::UserProperty, !self.user_properties.is_empty()),
            (Id::MaximumPacketSize, self.maximum_packet_size.is_some()),
            (
                Id::WildcardSubscriptionAvailable,
                self.wildcard_subscription_available.is_some(),
            ),
            (
                Id::SubscriptionIdentifiersAvailable,
                self.subscription_identifiers_available.is_some(),
            ),
            (
                Id::SharedSubscriptionAvailable,
                self.shared_subscription_available.is_some(),
            ),
        ];
        candidates
            .into_iter()
            .filter_map(|(id, present)| present.then_some(id))
            .collect()
    }

    /// Checks that these properties may be sent by a client in `packet`, before anything
    /// reaches the engine.
    ///
    /// * A property MQTT 5 does not allow a client to send in that packet (table 2-4), a
    ///   string containing U+0000 (which would also make paho-mqtt panic), a string or
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

impl fmt::Debug for Properties {
    /// Lists only the properties that are present; the bytes of `authentication_data` are
    /// redacted (it may carry credentials).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted(usize);
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "<redacted: {} bytes>", self.0)
            }
        }

        let mut d = f.debug_struct("Properties");
        macro_rules! opt {
            ($($field:ident),* $(,)?) => {
                $(if let Some(value) = &self.$field {
                    d.field(stringify!($field), value);
                })*
            };
        }
        opt!(
            payload_format_indicator,
            message_expiry_interval,
            content_type,
            response_topic,
            correlation_data,
        );
        if !self.subscription_identifiers.is_empty() {
            d.field("subscription_identifiers", &self.subscription_identifiers);
        }
        opt!(
            session_expiry_interval,
            assigned_client_identifier,
            server_keep_alive,
            authentication_method,
        );
        if let Some(data) = &self.authentication_data {
            d.field("authentication_data", &Redacted(data.len()));
        }
        opt!(
            request_problem_information,
            will_delay_interval,
            request_response_information,
            response_information,
            server_reference,
            reason_string,
            receive_maximum,
            topic_alias_maximum,
            topic_alias,
            maximum_qos,
            retain_available,
            wildcard_subscription_available,
            subscription_identifiers_available,
            shared_subscription_available,
            maximum_packet_size,
        );
        if !self.user_properties.is_empty() {
            d.field("user_properties", &self.user_properties);
        }
        d.finish()
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

/// The MQTT 5 properties, for the checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Id {
    PayloadFormatIndicator,
    MessageExpiryInterval,
    ContentType,
    ResponseTopic,
    CorrelationData,
    SubscriptionIdentifier,
    SessionExpiryInterval,
    AssignedClientIdentifier,
    ServerKeepAlive,
    AuthenticationMethod,
    AuthenticationData,
    RequestProblemInformation,
    WillDelayInterval,
    RequestResponseInformation,
    ResponseInformation,
    ServerReference,
    ReasonString,
    ReceiveMaximum,
    TopicAliasMaximum,
    TopicAlias,
    MaximumQos,
    RetainAvailable,
    UserProperty,
    MaximumPacketSize,
    WildcardSubscriptionAvailable,
    SubscriptionIdentifiersAvailable,
    SharedSubscriptionAvailable,
}

impl Id {
    /// The name the specification uses.
    fn name(self) -> &'static str {
        match self {
            Id::PayloadFormatIndicator => "Payload Format Indicator",
            Id::MessageExpiryInterval => "Message Expiry Interval",
            Id::ContentType => "Content Type",
            Id::ResponseTopic => "Response Topic",
            Id::CorrelationData => "Correlation Data",
            Id::SubscriptionIdentifier => "Subscription Identifier",
            Id::SessionExpiryInterval => "Session Expiry Interval",
            Id::AssignedClientIdentifier => "Assigned Client Identifier",
            Id::ServerKeepAlive => "Server Keep Alive",
            Id::AuthenticationMethod => "Authentication Method",
            Id::AuthenticationData => "Authentication Data",
            Id::RequestProblemInformation => "Request Problem Information",
            Id::WillDelayInterval => "Will Delay Interval",
            Id::RequestResponseInformation => "Request Response Information",
            Id::ResponseInformation => "Response Information",
            Id::ServerReference => "Server Reference",
            Id::ReasonString => "Reason String",
            Id::ReceiveMaximum => "Receive Maximum",
            Id::TopicAliasMaximum => "Topic Alias Maximum",
            Id::TopicAlias => "Topic Alias",
            Id::MaximumQos => "Maximum QoS",
            Id::RetainAvailable => "Retain Available",
            Id::UserProperty => "User Property",
            Id::MaximumPacketSize => "Maximum Packet Size",
            Id::WildcardSubscriptionAvailable => "Wildcard Subscription Available",
            Id::SubscriptionIdentifiersAvailable => "Subscription Identifier Available",
            Id::SharedSubscriptionAvailable => "Shared Subscription Available",
        }
    }

    /// Whether MQTT 5 (table 2-4) lets a client send this property in `packet`.
    fn allowed_in(self, packet: PacketKind) -> bool {
        use PacketKind::*;
        match self {
            Id::PayloadFormatIndicator
            | Id::MessageExpiryInterval
            | Id::ContentType
            | Id::ResponseTopic
            | Id::CorrelationData => matches!(packet, Publish | Will),
            Id::WillDelayInterval => packet == Will,
            // A server adds it to the PUBLISH packets it forwards; a client's PUBLISH
            // containing one is a protocol error [MQTT-3.3.4-6].
            Id::SubscriptionIdentifier => packet == Subscribe,
            Id::TopicAlias => packet == Publish,
            Id::SessionExpiryInterval
            | Id::AuthenticationMethod
            | Id::AuthenticationData
            | Id::RequestProblemInformation
            | Id::RequestResponseInformation
            | Id::ReceiveMaximum
            | Id::TopicAliasMaximum
            | Id::MaximumPacketSize => packet == Connect,
            Id::UserProperty => true,
            // CONNACK, DISCONNECT and acknowledgements: never in what a client sends here.
            Id::AssignedClientIdentifier
            | Id::ServerKeepAlive
            | Id::ResponseInformation
            | Id::ServerReference
            | Id::ReasonString
            | Id::MaximumQos
            | Id::RetainAvailable
            | Id::WildcardSubscriptionAvailable
            | Id::SubscriptionIdentifiersAvailable
            | Id::SharedSubscriptionAvailable => false,
        }
    }

    /// Properties only a server sends (CONNACK and the like).
    fn server_only(self) -> bool {
        matches!(
            self,
            Id::AssignedClientIdentifier
                | Id::ServerKeepAlive
                | Id::ResponseInformation
                | Id::ServerReference
                | Id::MaximumQos
                | Id::RetainAvailable
                | Id::WildcardSubscriptionAvailable
                | Id::SubscriptionIdentifiersAvailable
                | Id::SharedSubscriptionAvailable
        )
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
    fn payload_format_bytes() {
        for format in [PayloadFormat::Unspecified, PayloadFormat::Utf8] {
            assert_eq!(PayloadFormat::from_byte(format.to_byte()), Some(format));
        }
        assert_eq!(PayloadFormat::from_byte(2), None);
    }
}
