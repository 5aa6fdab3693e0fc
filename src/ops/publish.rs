//! `Connection::publish`.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use super::Kind;
use crate::properties::PacketKind;
use crate::session::Session;
use crate::{Error, Payload, Properties, QoS, Topic};

/// A PUBLISH being prepared; `.await` it to send.
///
/// Completes when the packet is written (QoS 0), on PUBACK (QoS 1) or on PUBCOMP
/// (QoS 2). A v5 PUBACK/PUBREC with a failure reason code is [`Error::Code`].
/// The work starts when the future is first polled, which hands the message to the
/// engine at once unless the call must wait its turn (for a
/// `max_concurrent_outgoing_calls` slot, or beyond the in-flight window plus 32 calls).
/// Dropping the future after the engine has the message stops the wait, not the delivery;
/// dropping it while it waits its turn means it is never sent.
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
    /// Overrides the client's timeout for this call. Without one, a publish waits the
    /// client's timeout plus one second per MiB of payload beyond the first.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Checks the call's arguments — the topic, the properties, and the broker's limits as
    /// of now (a publish is made to be awaited at once) — and returns the future of the
    /// call, which does the rest when first polled.
    fn send(self) -> Result<impl Future<Output = Result<(), Error>> + Send + use<>, Error> {
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
        session.limits.get().check_publish(
            topic.as_str(),
            payload.0.len(),
            qos,
            retain,
            properties.as_deref(),
            session.options.protocol == crate::ProtocolVersion::V5,
        )?;
        let timeout =
            timeout.or_else(|| allow_for_payload(session.options.timeout, payload.0.len()));
        // The runner's future is the call's, not one nested in another: every publish in
        // flight holds it, and what a nesting future captured would stay in it too.
        let qos2 = (qos == QoS::ExactlyOnce).then(|| session.clone());
        let call = super::run(
            session,
            timeout,
            Kind::Publish { qos },
            move |engine, ticket| {
                engine.publish(topic, payload.0, qos, retain, properties.as_deref(), ticket)
            },
            crate::engine::publish_result,
        );
        Ok(call.map(move |result| match qos2 {
            Some(session) => qos2_outcome(&session, result),
            None => result,
        }))
    }
}

/// Time the client's timeout adds per MiB of payload beyond the first, for a publish
/// without its own timeout: one second, a link of 8 Mbit/s.
const PER_MIB: Duration = Duration::from_secs(1);

/// The timeout of a publish that has none of its own: the client's, and one more second
/// per MiB beyond the first, so that a large payload on a slow link does not time out
/// because of its size. `None` (the client's timeout unchanged) up to 1 MiB.
fn allow_for_payload(client: Duration, payload_len: usize) -> Option<Duration> {
    let extra_mib = (payload_len >> 20).checked_sub(1).filter(|&m| m > 0)?;
    let extra = PER_MIB.saturating_mul(u32::try_from(extra_mib).unwrap_or(u32::MAX));
    Some(client.saturating_add(extra))
}

/// A QoS 2 PUBLISH lost with the connection before any QoS 2 exchange completed on it
/// says that the broker may lack QoS 2: such brokers close the connection on it (NATS)
/// or answer PUBACK, which ends the link too (RabbitMQ).
fn qos2_outcome(session: &Session, result: Result<(), Error>) -> Result<(), Error> {
    use std::sync::atomic::Ordering;
    match result {
        Ok(()) => {
            session.qos2_confirmed.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(Error::ConnectionLost { rc, mut detail })
            if !session.qos2_confirmed.load(Ordering::Relaxed) =>
        {
            detail.push_str(
                "; no QoS 2 exchange had completed on this connection: a broker without \
                 QoS 2 (RabbitMQ and NATS, for example) ends the connection on a QoS 2 \
                 PUBLISH, so publish at QoS 1 there",
            );
            Err(Error::ConnectionLost { rc, detail })
        }
        result => result,
    }
}

impl IntoFuture for Publish {
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        match self.send() {
            Ok(call) => Box::pin(call),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_payloads_extend_the_clients_timeout() {
        let client = Duration::from_secs(10);
        assert_eq!(allow_for_payload(client, 0), None);
        assert_eq!(
            allow_for_payload(client, 2 << 20).map(|d| d.as_secs()),
            Some(11)
        );
        assert_eq!(allow_for_payload(client, (2 << 20) - 1), None);
        assert_eq!(
            allow_for_payload(client, 64 << 20).map(|d| d.as_secs()),
            Some(73)
        );
        assert_eq!(
            allow_for_payload(Duration::MAX, 64 << 20),
            Some(Duration::MAX)
        );
    }

    /// Every publish in flight holds this future: with a window of 1,000 its size is most of
    /// the facade's working set, and a larger one costs cache misses per message.
    #[tokio::test]
    async fn a_publish_in_flight_is_small() {
        let fake = crate::engine::fake::FakeEngine::new();
        let client = crate::Client::with_fake_engine(crate::Client::builder("127.0.0.1"), &fake);
        let conn = client.connect().await.unwrap();
        let send = conn.publish("a/b", "x").send().unwrap();
        // 432 bytes with Rust 1.95: 568 while the wait for an unarmed call (a tokio timer
        // and a waiter on the end) was inline, 920 when the call's future was nested in
        // one that captured the whole `Publish`.
        let size = std::mem::size_of_val(&send);
        assert!(size <= 480, "a publish in flight holds {size} bytes");
    }
}
