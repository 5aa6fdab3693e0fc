//! `Connection::publish`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::Kind;
use crate::properties::PacketKind;
use crate::session::Session;
use crate::{Error, Payload, Properties, QoS, Topic};

/// A PUBLISH being prepared; `.await` it to send.
///
/// Completes when the packet is written (QoS 0), on PUBACK (QoS 1) or on PUBCOMP
/// (QoS 2). A v5 PUBACK/PUBREC with a failure reason code is [`Error::Code`].
/// The work starts when the future is first polled; dropping the future after
/// that stops the wait, not the delivery.
#[must_use = "a publish does nothing until it is awaited"]
pub struct Publish {
    session: Arc<Session>,
    topic: Result<Topic, Error>,
    payload: Payload,
    qos: QoS,
    retain: bool,
    /// Boxed: `Properties` is large, and this struct lives in every publish future.
    properties: Option<Box<Properties>>,
    timeout: Option<Duration>,
}

impl Publish {
    pub(crate) fn new(session: Arc<Session>, topic: &str, payload: Payload) -> Self {
        Publish {
            session,
            topic: Topic::new(topic),
            payload,
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            timeout: None,
        }
    }
    /// The QoS (default 0).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }
    /// Whether the broker retains the message (default `false`).
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }
    /// MQTT 5 PUBLISH properties.
    pub fn properties(mut self, properties: Properties) -> Self {
        self.properties = Some(Box::new(properties));
        self
    }
    /// Overrides the client's timeout for this call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    async fn send(self) -> Result<(), Error> {
        // Everything is moved out before the first await, so the future holds
        // only what the call needs.
        let Publish {
            session,
            topic,
            payload,
            qos,
            retain,
            properties,
            timeout,
        } = self;
        let topic = topic?;
        if let Some(props) = &properties {
            super::check_v5(&session, "PUBLISH properties")?;
            props.check(PacketKind::Publish)?;
        }
        super::run(
            &session,
            timeout,
            Kind::Publish,
            move |engine| engine.publish(topic, payload.0, qos, retain, properties.as_deref()),
            crate::engine::publish_result,
        )
        .await
    }
}

impl IntoFuture for Publish {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
