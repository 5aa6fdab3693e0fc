//! Received messages.

use crate::{Error, Properties, QoS, Topic};

/// A message received from the broker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Message {
    /// The topic it was published on.
    pub topic: Topic,
    /// The raw payload.
    pub payload: Vec<u8>,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// The RETAIN flag as received: set for a message from the broker's retained store,
    /// and on MQTT 5, with `retain_as_published`, for a live one published retained.
    pub retain: bool,
    /// The packet identifier of the PUBLISH (0 for QoS 0), as aiomqtt's `mid`.
    pub mid: u16,
    /// The MQTT 5 properties; `None` on MQTT 3.x. Boxed so a queued 3.x message
    /// stays small.
    pub properties: Option<Box<Properties>>,
}

impl Message {
    /// The payload as UTF-8 text.
    pub fn payload_str(&self) -> Result<&str, Error> {
        Ok(std::str::from_utf8(&self.payload)?)
    }
}
