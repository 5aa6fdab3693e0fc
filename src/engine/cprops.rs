//! MQTT 5 properties in Paho C's form (`MQTTProperties`), built from and read into our
//! [`Properties`] through its wire walk (`Properties::for_each_wire` / `absorb`), so the
//! table in `properties.rs` is the only place that knows the properties.

use std::os::raw::c_char;

use paho_mqtt_sys as sys;

use crate::Error;
use crate::properties::{Properties, Wire};

/// An `MQTTProperties` list owned by us (Paho copies every value we add), freed on drop.
pub(crate) struct CProps(sys::MQTTProperties);

// SAFETY: the list is plain heap memory owned by this value; nothing else refers to it.
#[allow(unsafe_code)]
unsafe impl Send for CProps {}
#[allow(unsafe_code)]
unsafe impl Sync for CProps {}

/// Backing for empty strings: C must get a valid pointer even for zero bytes.
static EMPTY: [u8; 1] = [0];

fn len_string(bytes: &[u8]) -> Result<sys::MQTTLenString, Error> {
    let len = i32::try_from(bytes.len())
        .map_err(|_| Error::InvalidArgument("a property value is too long".to_owned()))?;
    let data = if bytes.is_empty() {
        EMPTY.as_ptr()
    } else {
        bytes.as_ptr()
    };
    Ok(sys::MQTTLenString {
        len,
        data: data as *mut c_char,
    })
}

impl CProps {
    /// An empty list.
    pub(crate) fn empty() -> CProps {
        CProps(sys::MQTTProperties::default())
    }

    /// Paho's form of `props`; call after `props.check(..)` for the packet.
    pub(crate) fn new(props: &Properties) -> Result<CProps, Error> {
        let mut out = CProps::empty();
        let mut failed = None;
        props.for_each_wire(&mut |code, wire| {
            if failed.is_none() {
                if let Err(e) = out.add(code, wire) {
                    failed = Some(e);
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    #[allow(unsafe_code)]
    fn add(&mut self, code: u8, wire: Wire<'_>) -> Result<(), Error> {
        // SAFETY: an all-zero MQTTProperty is a valid value (integers and null pointers).
        let mut p: sys::MQTTProperty = unsafe { std::mem::zeroed() };
        p.identifier = sys::MQTTPropertyCodes::from(code);
        match wire {
            Wire::Byte(v) => p.value.byte = v,
            Wire::Two(v) => p.value.integer2 = v,
            Wire::Four(v) | Wire::VarInt(v) => p.value.integer4 = v,
            Wire::Str(s) => p.value.__bindgen_anon_1.data = len_string(s.as_bytes())?,
            Wire::Bin(b) => p.value.__bindgen_anon_1.data = len_string(b)?,
            Wire::Pair(k, v) => {
                p.value.__bindgen_anon_1.data = len_string(k.as_bytes())?;
                p.value.__bindgen_anon_1.value = len_string(v.as_bytes())?;
            }
        }
        // SAFETY: `self.0` is a list Paho initialised or grew; `p` is a valid property
        // whose string pointers live for this call; MQTTProperties_add copies the
        // property and duplicates its data (`datadup`), keeping no pointer into ours.
        let rc = unsafe { sys::MQTTProperties_add(&mut self.0, &p) };
        if rc != 0 {
            return Err(Error::InvalidArgument(format!(
                "the engine refused MQTT 5 property {code:#04x} (code {rc})"
            )));
        }
        Ok(())
    }

    /// The list, to be copied by Paho into a command (`MQTTProperties_copy`): the copy
    /// has to be taken while `self` is alive.
    pub(crate) fn raw(&self) -> sys::MQTTProperties {
        sys::MQTTProperties {
            count: self.0.count,
            max_count: self.0.max_count,
            length: self.0.length,
            array: self.0.array,
        }
    }

    /// A pointer for Paho to read (and copy) during one call.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut sys::MQTTProperties {
        &mut self.0
    }
}

impl Drop for CProps {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the list and every value in it were allocated by Paho
        // (MQTTProperties_add); nothing else refers to them.
        unsafe { sys::MQTTProperties_free(&mut self.0) }
    }
}

/// [`read`] into a box, for a received message. An empty list — the common case — is not
/// read, and the box is made in place: a `Properties` is large, and moving it through
/// the message's construction cost more than the rest of the callback.
///
/// # Safety
/// `props` must point to a list valid for the duration of the call, or be null.
#[allow(unsafe_code)]
pub(crate) unsafe fn read_boxed(
    props: *const sys::MQTTProperties,
) -> (Box<Properties>, Option<Violation>) {
    // SAFETY: the caller guarantees `props` is null or valid for this call.
    match unsafe { props.as_ref() } {
        Some(list) if list.count > 0 && !list.array.is_null() => {
            // SAFETY: as above.
            let (props, violation) = unsafe { read_checked(props) };
            (Box::new(props), violation)
        }
        _ => (Box::default(), None),
    }
}

/// Reads a list Paho received, where nothing can be done about a malformed one (a
/// failure's or a DISCONNECT's properties): see [`read_checked`].
///
/// # Safety
/// `props` must point to a list valid for the duration of the call, or be null.
#[allow(unsafe_code)]
pub(crate) unsafe fn read(props: *const sys::MQTTProperties) -> Properties {
    // SAFETY: the caller's guarantee.
    unsafe { read_checked(props) }.0
}

/// Reads a list Paho received, and says what in it breaks MQTT 5's rules, which Paho C
/// does not check: a string that is not UTF-8 or holds U+0000 (§1.5.4), a value out of
/// range (a Payload Format Indicator of 2, say), a property other than User Property and
/// Subscription Identifier given twice (§2.2.2.2), a Topic Alias. A string that breaks them,
/// or a value the property's type cannot hold, is left out; a value out of range is kept as
/// read; of a repeated property the first counts, as in Paho C.
///
/// # Safety
/// `props` must point to a list valid for the duration of the call, or be null.
#[allow(unsafe_code)]
pub(crate) unsafe fn read_checked(
    props: *const sys::MQTTProperties,
) -> (Properties, Option<Violation>) {
    let mut out = Properties::new();
    let mut violation = None;
    // Identifiers seen, of those that may appear once.
    let mut seen = [false; 256];
    // SAFETY: the caller guarantees `props` is null or valid for this call.
    let Some(list) = (unsafe { props.as_ref() }) else {
        return (out, None);
    };
    if list.array.is_null() || list.count <= 0 {
        return (out, None);
    }
    let count = usize::try_from(list.count).unwrap_or(0);
    // SAFETY: Paho keeps `count` initialised properties in `array`.
    let items = unsafe { std::slice::from_raw_parts(list.array, count) };
    for p in items {
        let Ok(code) = u8::try_from(p.identifier) else {
            continue;
        };
        // SAFETY: a pure lookup in Paho's constant table of property types.
        let kind = unsafe { sys::MQTTProperty_getType(p.identifier) };
        // SAFETY: Paho fills the union member that `kind` names; the string members
        // point to `len` bytes owned by the list.
        let wire = unsafe {
            match kind as u32 {
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_BYTE => Some(Wire::Byte(p.value.byte)),
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER => {
                    Some(Wire::Two(p.value.integer2))
                }
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER => {
                    Some(Wire::Four(p.value.integer4))
                }
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER => {
                    Some(Wire::VarInt(p.value.integer4))
                }
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_BINARY_DATA => {
                    Some(Wire::Bin(bytes(&p.value.__bindgen_anon_1.data)))
                }
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING => {
                    std::str::from_utf8(bytes(&p.value.__bindgen_anon_1.data))
                        .ok()
                        .map(Wire::Str)
                }
                sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR => {
                    let k = std::str::from_utf8(bytes(&p.value.__bindgen_anon_1.data)).ok();
                    let v = std::str::from_utf8(bytes(&p.value.__bindgen_anon_1.value)).ok();
                    k.zip(v).map(|(k, v)| Wire::Pair(k, v))
                }
                _ => None,
            }
        };
        let has_nul = match wire {
            Some(Wire::Str(s)) => s.contains('\0'),
            Some(Wire::Pair(k, v)) => k.contains('\0') || v.contains('\0'),
            _ => false,
        };
        let problem = match wire {
            None => Some((MALFORMED_PACKET, "is not valid UTF-8")),
            Some(_) if has_nul => Some((MALFORMED_PACKET, "contains U+0000")),
            Some(wire) => {
                // An out-of-range value is kept as read (the type holds it).
                let range = out_of_range(code, &wire);
                if !out.absorb(code, wire) {
                    Some((PROTOCOL_ERROR, "has a value MQTT 5 does not allow"))
                } else if range.is_some() {
                    range
                } else if code == USER_PROPERTY || code == SUBSCRIPTION_IDENTIFIER {
                    None
                } else if std::mem::replace(&mut seen[usize::from(code)], true) {
                    Some((PROTOCOL_ERROR, "appears more than once"))
                } else {
                    None
                }
            }
        };
        if let (Some((reason, problem)), None) = (problem, &violation) {
            let name = Properties::name_of(code).unwrap_or("unknown");
            violation = Some(Violation {
                reason,
                what: format!("the {name} property ({code:#04x}) {problem}"),
            });
        }
    }
    (out, violation)
}

/// A received value the property's type holds but MQTT 5 forbids, with the reason code.
fn out_of_range(code: u8, wire: &Wire<'_>) -> Option<(u8, &'static str)> {
    match (code, wire) {
        // §3.2.2.3.4: 0 or 1 (a server that supports QoS 2 sends none).
        (MAXIMUM_QOS, Wire::Byte(qos)) if *qos > 1 => Some((PROTOCOL_ERROR, "is above 1")),
        // §3.2.2.3.3, §3.2.2.3.6, §3.3.2.3.8.
        (RECEIVE_MAXIMUM, Wire::Two(0))
        | (MAXIMUM_PACKET_SIZE, Wire::Four(0))
        | (SUBSCRIPTION_IDENTIFIER, Wire::VarInt(0)) => Some((PROTOCOL_ERROR, "is 0")),
        // This client never allows topic aliases (its Topic Alias Maximum is 0, see
        // `Properties::check`), so a broker may send none (§3.3.2.3.4).
        (TOPIC_ALIAS, _) => Some((
            TOPIC_ALIAS_INVALID,
            "is present, though this client allows no topic aliases",
        )),
        _ => None,
    }
}

/// What makes a received packet break MQTT's rules, and the reason code a client closes
/// the connection with for it (MQTT 5 §4.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) reason: u8,
    pub(crate) what: String,
}

const MALFORMED_PACKET: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const TOPIC_ALIAS_INVALID: u8 = 0x94;

const RECEIVE_MAXIMUM: u8 = 0x21;
const MAXIMUM_QOS: u8 = 0x24;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const TOPIC_ALIAS: u8 = 0x23;

/// The properties MQTT 5 lets a packet carry more than once.
const USER_PROPERTY: u8 = 0x26;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;

/// The bytes of a received string or binary value.
///
/// # Safety
/// `s.data` must point to `s.len` readable bytes, or be null.
#[allow(unsafe_code)]
unsafe fn bytes(s: &sys::MQTTLenString) -> &[u8] {
    match usize::try_from(s.len) {
        Ok(len) if len > 0 && !s.data.is_null() => {
            // SAFETY: the caller guarantees `len` readable bytes at `data`.
            unsafe { std::slice::from_raw_parts(s.data as *const u8, len) }
        }
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PayloadFormat, QoS};

    fn every_property() -> Properties {
        Properties::new()
            .payload_format_indicator(PayloadFormat::Utf8)
            .message_expiry_interval(60)
            .content_type("text/plain")
            .response_topic("r/t")
            .correlation_data(vec![0, 1, 255])
            .subscription_identifier(268_435_455)
            .session_expiry_interval(u32::MAX)
            .assigned_client_identifier("id")
            .server_keep_alive(30)
            .authentication_method("m")
            .authentication_data(vec![])
            .request_problem_information(false)
            .will_delay_interval(5)
            .request_response_information(true)
            .response_information("resp/")
            .server_reference("other:1883")
            .reason_string("why")
            .receive_maximum(10)
            .topic_alias_maximum(0)
            .topic_alias(3)
            .maximum_qos(QoS::AtLeastOnce)
            .retain_available(true)
            .user_property("k", "v")
            .user_property("k", "")
            .maximum_packet_size(1024)
            .wildcard_subscription_available(false)
            .subscription_identifiers_available(true)
            .shared_subscription_available(true)
    }

    /// Our wire type of every property is the one Paho's own table gives it, and every
    /// value survives the trip through Paho's list.
    #[test]
    #[allow(unsafe_code)]
    fn round_trip_through_paho() {
        let props = every_property();
        props.for_each_wire(&mut |code, wire| {
            // SAFETY: a pure table lookup.
            let kind = unsafe { sys::MQTTProperty_getType(sys::MQTTPropertyCodes::from(code)) };
            let expected = match wire {
                Wire::Byte(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_BYTE,
                Wire::Two(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_TWO_BYTE_INTEGER,
                Wire::Four(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_FOUR_BYTE_INTEGER,
                Wire::VarInt(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_VARIABLE_BYTE_INTEGER,
                Wire::Str(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_UTF_8_ENCODED_STRING,
                Wire::Bin(_) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_BINARY_DATA,
                Wire::Pair(..) => sys::MQTTPropertyTypes_MQTTPROPERTY_TYPE_UTF_8_STRING_PAIR,
            };
            assert_eq!(kind as u32, expected, "property {code:#04x}");
        });
        let mut c = CProps::new(&props).unwrap();
        // SAFETY: the list is alive for the call.
        let back = unsafe { read(c.as_mut_ptr()) };
        assert_eq!(back, props);
        // SAFETY: null is allowed.
        assert!(unsafe { read(std::ptr::null()) }.is_empty());
    }
}
