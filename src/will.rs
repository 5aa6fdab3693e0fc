//! The Last Will and Testament.

use crate::{Payload, Properties, QoS};

/// A Will: the message the broker publishes if the connection ends without a
/// DISCONNECT (aiomqtt's `Will`). Its topic is validated by
/// [`ClientBuilder::build`](crate::ClientBuilder::build).
#[derive(Debug, Clone)]
pub struct Will {
    pub(crate) topic: String,
    pub(crate) payload: Payload,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) properties: Option<Properties>,
}

impl Will {
    /// A Will with QoS 0, not retained, without properties.
    pub fn new(topic: impl Into<String>, payload: impl Into<Payload>) -> Self {
        Will {
            topic: topic.into(),
            payload: payload.into(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
        }
    }
    /// The Will's QoS.
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
    /// Whether the broker retains the Will.
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
    /// MQTT 5 Will properties (will delay, message expiry, content type, ...).
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = Some(properties);
        self
    }
}
