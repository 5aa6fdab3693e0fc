//! Translation between our [`Properties`] and `paho_mqtt::Properties`.
//!
//! Outgoing: call `Properties::check` for the packet first, then [`to_paho`]. `to_paho` never
//! panics: it re-checks the one input that would make paho-mqtt panic (U+0000 in a string,
//! `CString::new(..).unwrap()` in `Property::new_string` and `new_string_pair`) and handles
//! the `Result` of every paho-mqtt `push_*`.
//!
//! Incoming: [`from_paho`] reads whatever the broker sent (message, CONNACK, SUBACK,
//! UNSUBACK, DISCONNECT). Values that cannot be represented (an undefined Payload Format
//! Indicator or boolean byte, a string that is not UTF-8 or has U+0000, a Maximum QoS above
//! 2) are left out rather than guessed; nothing there panics.

use paho_mqtt::{PropertyCode as Code, Result as PahoResult};

use crate::properties::{MAX_PROPERTY_LEN, MAX_SUBSCRIPTION_IDENTIFIER, PayloadFormat, Properties};
use crate::{Error, QoS};

/// Builds the paho-mqtt property list for `props`.
///
/// Call it after `props.check(kind)` succeeded for the packet. It never panics: a property
/// paho-mqtt cannot take (a string with U+0000, which `CString::new(..).unwrap()` in
/// paho-mqtt would panic on; a value too long for its two-byte length; a Subscription
/// Identifier above 268,435,455) or a failure of paho-mqtt's `push_*` (which return
/// `Result`) leaves that one property out and logs an error. After a successful `check()`
/// none of this can happen; [`try_to_paho`] reports it as an [`Error`] instead.
pub(crate) fn to_paho(props: &Properties) -> paho_mqtt::Properties {
    let (out, errors) = encode(props);
    for error in errors {
        log::error!("MQTT 5 property left out of the packet: {error}");
    }
    out
}

/// [`to_paho`] that fails instead of leaving a property out: [`Error::InvalidArgument`] for a
/// value paho-mqtt cannot take, [`Error::Engine`] for a failure inside paho-mqtt.
#[allow(dead_code)] // for callers that prefer an error to a log line
pub(crate) fn try_to_paho(props: &Properties) -> Result<paho_mqtt::Properties, Error> {
    let (out, mut errors) = encode(props);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors.swap_remove(0))
    }
}

/// Encodes every property it can; the others are reported, in order.
fn encode(props: &Properties) -> (paho_mqtt::Properties, Vec<Error>) {
    let mut e = Encoder {
        out: paho_mqtt::Properties::new(),
        errors: Vec::new(),
    };

    if let Some(format) = props.payload_format_indicator {
        e.byte(Code::PayloadFormatIndicator, Some(format.to_byte()));
    }
    e.four_byte(Code::MessageExpiryInterval, props.message_expiry_interval);
    e.string(Code::ContentType, &props.content_type);
    e.string(Code::ResponseTopic, &props.response_topic);
    e.binary(Code::CorrelationData, &props.correlation_data);
    for &id in &props.subscription_identifiers {
        // A Variable Byte Integer: paho-mqtt's `push_u32` accepts only Four Byte Integer
        // codes, `push_int` takes both.
        match i32::try_from(id) {
            Ok(value) if id <= MAX_SUBSCRIPTION_IDENTIFIER => {
                e.push(Code::SubscriptionIdentifier, |out, code| {
                    out.push_int(code, value)
                });
            }
            _ => e.errors.push(Error::InvalidArgument(format!(
                "the Subscription Identifier {id} is above 268,435,455"
            ))),
        }
    }
    e.four_byte(Code::SessionExpiryInterval, props.session_expiry_interval);
    e.string(
        Code::AssignedClientIdentifer,
        &props.assigned_client_identifier,
    );
    e.two_byte(Code::ServerKeepAlive, props.server_keep_alive);
    e.string(Code::AuthenticationMethod, &props.authentication_method);
    e.binary(Code::AuthenticationData, &props.authentication_data);
    e.boolean(
        Code::RequestProblemInformation,
        props.request_problem_information,
    );
    e.four_byte(Code::WillDelayInterval, props.will_delay_interval);
    e.boolean(
        Code::RequestResponseInformation,
        props.request_response_information,
    );
    e.string(Code::ResponseInformation, &props.response_information);
    e.string(Code::ServerReference, &props.server_reference);
    e.string(Code::ReasonString, &props.reason_string);
    e.two_byte(Code::ReceiveMaximum, props.receive_maximum);
    e.two_byte(Code::TopicAliasMaximum, props.topic_alias_maximum);
    e.two_byte(Code::TopicAlias, props.topic_alias);
    e.byte(Code::MaximumQos, props.maximum_qos.map(QoS::as_u8));
    e.boolean(Code::RetainAvailable, props.retain_available);
    for (name, value) in &props.user_properties {
        if let Err(error) = check_c_string(Code::UserProperty, name)
            .and_then(|()| check_c_string(Code::UserProperty, value))
        {
            e.errors.push(error);
            continue;
        }
        e.push(Code::UserProperty, |out, code| {
            out.push_string_pair(code, name, value)
        });
    }
    e.four_byte(Code::MaximumPacketSize, props.maximum_packet_size);
    e.boolean(
        Code::WildcardSubscriptionAvailable,
        props.wildcard_subscription_available,
    );
    e.boolean(
        Code::SubscriptionIdentifiersAvailable,
        props.subscription_identifiers_available,
    );
    e.boolean(
        Code::SharedSubscriptionAvailable,
        props.shared_subscription_available,
    );
    (e.out, e.errors)
}

/// Reads the properties of a received packet.
///
/// Repeated properties (User Property, Subscription Identifier) keep their order. A value
/// paho-mqtt or we cannot represent is skipped, never a panic. It only calls Paho C's pure
/// property-list helpers (`MQTTProperties_getPropertyAt`, `MQTTProperty_getType`), which
/// take no lock, so it is safe inside Paho callbacks (ENGINE.md hazard 2).
pub(crate) fn from_paho(props: &paho_mqtt::Properties) -> Properties {
    let mut out = Properties::new();
    if props.is_empty() {
        return out;
    }

    out.payload_format_indicator =
        byte(props, Code::PayloadFormatIndicator).and_then(PayloadFormat::from_byte);
    out.message_expiry_interval = four_byte(props, Code::MessageExpiryInterval);
    out.content_type = props.get_string(Code::ContentType);
    out.response_topic = props.get_string(Code::ResponseTopic);
    out.correlation_data = props.get_binary(Code::CorrelationData);
    out.subscription_identifiers = all(props, Code::SubscriptionIdentifier, |prop| {
        // A Variable Byte Integer is at most 268,435,455, so it fits in an `i32`.
        prop.get_int().and_then(|id| u32::try_from(id).ok())
    });
    out.session_expiry_interval = four_byte(props, Code::SessionExpiryInterval);
    out.assigned_client_identifier = props.get_string(Code::AssignedClientIdentifer);
    out.server_keep_alive = two_byte(props, Code::ServerKeepAlive);
    out.authentication_method = props.get_string(Code::AuthenticationMethod);
    out.authentication_data = props.get_binary(Code::AuthenticationData);
    out.request_problem_information = boolean(props, Code::RequestProblemInformation);
    out.will_delay_interval = four_byte(props, Code::WillDelayInterval);
    out.request_response_information = boolean(props, Code::RequestResponseInformation);
    out.response_information = props.get_string(Code::ResponseInformation);
    out.server_reference = props.get_string(Code::ServerReference);
    out.reason_string = props.get_string(Code::ReasonString);
    out.receive_maximum = two_byte(props, Code::ReceiveMaximum);
    out.topic_alias_maximum = two_byte(props, Code::TopicAliasMaximum);
    out.topic_alias = two_byte(props, Code::TopicAlias);
    out.maximum_qos = byte(props, Code::MaximumQos).and_then(|qos| QoS::try_from(qos).ok());
    out.retain_available = boolean(props, Code::RetainAvailable);
    out.user_properties = all(props, Code::UserProperty, |prop| prop.get_string_pair());
    out.maximum_packet_size = four_byte(props, Code::MaximumPacketSize);
    out.wildcard_subscription_available = boolean(props, Code::WildcardSubscriptionAvailable);
    out.subscription_identifiers_available = boolean(props, Code::SubscriptionIdentifiersAvailable);
    out.shared_subscription_available = boolean(props, Code::SharedSubscriptionAvailable);
    out
}

/// The property list being built, and what could not go into it.
struct Encoder {
    out: paho_mqtt::Properties,
    errors: Vec<Error>,
}

impl Encoder {
    /// Runs one paho-mqtt push; its error is recorded, mapped to ours.
    fn push(
        &mut self,
        code: Code,
        f: impl FnOnce(&mut paho_mqtt::Properties, Code) -> PahoResult<()>,
    ) {
        if let Err(e) = f(&mut self.out, code) {
            self.errors.push(Error::Engine {
                // MQTTASYNC_FAILURE: paho-mqtt does not keep Paho C's return code here.
                code: -1,
                message: format!("cannot encode the MQTT 5 property {code:?}: {e}"),
            });
        }
    }

    fn byte(&mut self, code: Code, value: Option<u8>) {
        if let Some(value) = value {
            self.push(code, |out, code| out.push_byte(code, value));
        }
    }

    fn boolean(&mut self, code: Code, value: Option<bool>) {
        self.byte(code, value.map(u8::from));
    }

    fn two_byte(&mut self, code: Code, value: Option<u16>) {
        if let Some(value) = value {
            self.push(code, |out, code| out.push_u16(code, value));
        }
    }

    fn four_byte(&mut self, code: Code, value: Option<u32>) {
        if let Some(value) = value {
            self.push(code, |out, code| out.push_u32(code, value));
        }
    }

    fn string(&mut self, code: Code, value: &Option<String>) {
        if let Some(value) = value {
            match check_c_string(code, value) {
                Ok(()) => self.push(code, |out, code| out.push_string(code, value)),
                Err(error) => self.errors.push(error),
            }
        }
    }

    fn binary(&mut self, code: Code, value: &Option<Vec<u8>>) {
        match value {
            Some(value) if value.len() > MAX_PROPERTY_LEN => {
                self.errors.push(Error::InvalidArgument(format!(
                    "the MQTT 5 property {code:?} is longer than 65,535 bytes"
                )));
            }
            Some(value) => self.push(code, |out, code| out.push_binary(code, value.clone())),
            None => {}
        }
    }
}

/// Refuses what `CString::new(..).unwrap()` in paho-mqtt would panic on, and what the
/// two-byte length prefix cannot carry.
fn check_c_string(code: Code, value: &str) -> Result<(), Error> {
    if value.contains('\0') {
        Err(Error::InvalidArgument(format!(
            "the MQTT 5 property {code:?} contains the character U+0000"
        )))
    } else if value.len() > MAX_PROPERTY_LEN {
        Err(Error::InvalidArgument(format!(
            "the MQTT 5 property {code:?} is longer than 65,535 bytes"
        )))
    } else {
        Ok(())
    }
}

fn byte(props: &paho_mqtt::Properties, code: Code) -> Option<u8> {
    props.get(code).and_then(|prop| prop.get_byte())
}

fn two_byte(props: &paho_mqtt::Properties, code: Code) -> Option<u16> {
    props.get(code).and_then(|prop| prop.get_u16())
}

fn four_byte(props: &paho_mqtt::Properties, code: Code) -> Option<u32> {
    props.get(code).and_then(|prop| prop.get_u32())
}

/// `0` is false, `1` is true; any other byte is malformed and read as absent.
fn boolean(props: &paho_mqtt::Properties, code: Code) -> Option<bool> {
    match byte(props, code)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Every occurrence of a repeatable property, in order. `get_at(code, idx)` is `None` both
/// past the last occurrence and for an unreadable one (paho-mqtt refuses a string with U+0000
/// or invalid UTF-8), so the index runs over the whole property count and unreadable
/// occurrences are skipped rather than taken as the end of the list.
fn all<T>(
    props: &paho_mqtt::Properties,
    code: Code,
    read: impl Fn(&paho_mqtt::Property) -> Option<T>,
) -> Vec<T> {
    (0..props.len())
        .filter_map(|idx| props.get_at(code, idx))
        .filter_map(|prop| read(&prop))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Properties {
        Properties::new()
            .payload_format_indicator(PayloadFormat::Utf8)
            .message_expiry_interval(u32::MAX)
            .content_type("application/json; charset=utf-8")
            .response_topic("replies/é/1")
            .correlation_data(vec![0, 1, 2, 0xff, 0, 0x80])
            .subscription_identifier(1)
            .subscription_identifier(MAX_SUBSCRIPTION_IDENTIFIER)
            .subscription_identifier(200_000)
            .session_expiry_interval(0x8000_0001)
            .assigned_client_identifier("auto-7F3A")
            .server_keep_alive(u16::MAX)
            .authentication_method("SCRAM-SHA-1")
            .authentication_data(vec![9, 0, 8])
            .request_problem_information(false)
            .will_delay_interval(3600)
            .request_response_information(true)
            .response_information("resp/base/")
            .server_reference("broker2:1883")
            .reason_string("all good")
            .receive_maximum(20)
            .topic_alias_maximum(10)
            .topic_alias(3)
            .maximum_qos(QoS::AtLeastOnce)
            .retain_available(false)
            .user_property("b", "2")
            .user_property("a", "1")
            .user_property("b", "3")
            .user_property("", "")
            .user_property("ключ", "значение")
            .maximum_packet_size(268_435_460)
            .wildcard_subscription_available(true)
            .subscription_identifiers_available(false)
            .shared_subscription_available(true)
    }

    #[test]
    fn round_trip_of_every_property() {
        let props = full();
        let paho = try_to_paho(&props).unwrap();
        // 27 property kinds, with 3 subscription identifiers and 5 user properties.
        assert_eq!(paho.len(), 27 - 2 + 3 + 5);
        assert_eq!(from_paho(&paho), props);
        // A clone made by Paho C (MQTTProperties_copy) reads the same.
        assert_eq!(from_paho(&paho.clone()), props);
    }

    #[test]
    fn round_trip_of_empty_and_edge_values() {
        assert!(to_paho(&Properties::new()).is_empty());
        assert!(from_paho(&paho_mqtt::Properties::new()).is_empty());

        let props = Properties::new()
            .payload_format_indicator(PayloadFormat::Unspecified)
            .message_expiry_interval(0)
            .content_type("")
            .correlation_data(Vec::new())
            .request_problem_information(true)
            .maximum_qos(QoS::AtMostOnce)
            .user_property("k", "");
        assert_eq!(from_paho(&to_paho(&props)), props);
    }

    #[test]
    fn to_paho_refuses_what_would_panic_in_paho() {
        for props in [
            Properties::new().content_type("a\0"),
            Properties::new().reason_string("\0"),
            Properties::new().user_property("k\0", "v"),
            Properties::new().user_property("k", "v\0"),
            Properties::new().content_type("x".repeat(MAX_PROPERTY_LEN + 1)),
            Properties::new().correlation_data(vec![0; MAX_PROPERTY_LEN + 1]),
            Properties::new().subscription_identifier(u32::MAX),
            Properties::new().subscription_identifier(268_435_456),
        ] {
            match try_to_paho(&props) {
                Err(Error::InvalidArgument(_)) => {}
                other => panic!("{props:?}: {other:?}"),
            }
            // The infallible form leaves the one bad property out.
            assert!(to_paho(&props).is_empty(), "{props:?}");
        }
        let props = Properties::new()
            .content_type("ok")
            .user_property("bad\0", "v")
            .user_property("good", "v");
        let back = from_paho(&to_paho(&props));
        assert_eq!(back.content_type.as_deref(), Some("ok"));
        assert_eq!(back.user_properties, vec![("good".into(), "v".into())]);
    }

    #[test]
    fn odd_received_values_are_dropped() {
        let mut paho = paho_mqtt::Properties::new();
        paho.push_byte(Code::PayloadFormatIndicator, 7).unwrap();
        paho.push_byte(Code::MaximumQos, 3).unwrap();
        paho.push_byte(Code::RetainAvailable, 2).unwrap();
        paho.push_byte(Code::WildcardSubscriptionAvailable, 0)
            .unwrap();
        paho.push_u16(Code::ReceiveMaximum, 0).unwrap();
        paho.push_string_pair(Code::UserProperty, "x", "1").unwrap();
        paho.push_string_pair(Code::UserProperty, "y", "2").unwrap();
        let props = from_paho(&paho);
        assert_eq!(props.payload_format_indicator, None);
        assert_eq!(props.maximum_qos, None);
        assert_eq!(props.retain_available, None);
        assert_eq!(props.wildcard_subscription_available, Some(false));
        // Read as received; check() is only for what we send.
        assert_eq!(props.receive_maximum, Some(0));
        assert_eq!(
            props.user_properties,
            vec![("x".into(), "1".into()), ("y".into(), "2".into())]
        );
    }
}
