//! The [`Connection`] guard: a live session with the broker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ops::{IntoFilters, IntoUnsubscribeFilters, Publish, Subscribe, Unsubscribe};
use crate::reconnect::ConnectionEvents;
use crate::session::Session;
use crate::{Error, Messages, Payload, Properties, ProtocolVersion};

/// Ends the connection when the last [`Connection`] clone and [`Messages`] are gone.
pub(crate) struct ConnectionHandle {
    pub(crate) session: Arc<Session>,
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        // DISCONNECT is handed over (not awaited): Drop cannot wait, and must not block.
        if self.session.close().is_some() {
            crate::logging::log_debug!(target: &self.session.logger, "Connection dropped: DISCONNECT sent");
        }
    }
}

/// A live connection, returned by [`Client::connect`](crate::Client::connect)
/// (aiomqtt's `async with client`).
///
/// Cheap to clone: clones share the connection and can be moved into spawned
/// tasks. [`disconnect`](Connection::disconnect) ends it with a DISCONNECT; so does
/// dropping the last clone (and the last [`Messages`]). Neither publishes the
/// Will. Once the connection has ended, every call fails at once with
/// [`Error::NotConnected`].
#[derive(Clone)]
pub struct Connection {
    handle: Arc<ConnectionHandle>,
}

impl Connection {
    pub(crate) fn new(handle: Arc<ConnectionHandle>) -> Self {
        Connection { handle }
    }

    fn session(&self) -> &Arc<Session> {
        &self.handle.session
    }

    /// Publishes `payload` on `topic`; chain `.qos()`, `.retain()`, `.properties()`,
    /// `.timeout()`, then `.await`.
    ///
    /// ```no_run
    /// # async fn demo(conn: aiomqtt::Connection) -> Result<(), aiomqtt::Error> {
    /// use aiomqtt::QoS;
    /// conn.publish("sensors/temperature", 23.5).await?;
    /// conn.publish("status/online", "connected").qos(QoS::AtLeastOnce).retain(true).await?;
    /// # Ok(()) }
    /// ```
    pub fn publish(&self, topic: impl AsRef<str>, payload: impl Into<Payload>) -> Publish {
        Publish::new(self.session().clone(), topic.as_ref(), payload.into())
    }

    /// Subscribes to one filter or a list; the result has one code per filter
    /// (granted QoS on 3.x, reason codes on 5). A refused filter is a returned
    /// code (0x80 or above), not an error.
    ///
    /// ```no_run
    /// # async fn demo(conn: aiomqtt::Connection) -> Result<(), aiomqtt::Error> {
    /// use aiomqtt::QoS;
    /// conn.subscribe("sensors/#").await?;
    /// conn.subscribe("important/data").qos(QoS::AtLeastOnce).await?;
    /// let codes = conn
    ///     .subscribe(vec![("sensors/temperature", QoS::AtMostOnce), ("alerts/#", QoS::ExactlyOnce)])
    ///     .await?;
    /// assert_eq!(codes.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn subscribe(&self, filters: impl IntoFilters) -> Subscribe {
        Subscribe::new(self.session().clone(), filters.into_filters())
    }

    /// Unsubscribes from one filter or a list. On MQTT 5 a filter the broker refused
    /// fails the call with its reason code ([`Error::Code`]); the other filters of the
    /// call are unsubscribed all the same. An UNSUBACK whose codes do not match the
    /// filters is [`Error::Protocol`].
    pub fn unsubscribe(&self, filters: impl IntoUnsubscribeFilters) -> Unsubscribe {
        Unsubscribe::new(self.session().clone(), filters.into_unsubscribe_filters())
    }

    /// The stream of incoming messages. Every `Messages` of this connection shares
    /// one queue.
    pub fn messages(&self) -> Messages {
        Messages::new(self.handle.clone())
    }

    /// Sends DISCONNECT and waits until it is written and the socket closed.
    /// The client can `connect()` again as soon as this is called.
    pub async fn disconnect(self) -> Result<(), Error> {
        let session = self.session().clone();
        let Some(done) = session.close() else {
            return Err(Error::NotConnected);
        };
        let deadline = crate::deadline::after(session.options.timeout);
        match tokio::time::timeout_at(deadline, done).await {
            Ok(replies) => crate::engine::disconnect_result(replies?),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// `true` while the link to the broker is up. `false` once the connection has ended
    /// (lost, or closed by this client), and, with automatic reconnects, while it
    /// reconnects.
    pub fn is_connected(&self) -> bool {
        !self.session().is_ended() && self.session().is_up()
    }

    /// The client identifier in use, including one the broker assigned (MQTT 5).
    /// Empty on 3.1.1 when the broker assigned one (3.1.1 does not report it).
    pub fn identifier(&self) -> String {
        self.session()
            .established()
            .map(|e| e.identifier.clone())
            .unwrap_or_default()
    }

    /// The latest CONNACK's Session Present flag.
    pub fn session_present(&self) -> bool {
        self.session()
            .established()
            .is_some_and(|e| e.session_present)
    }

    /// The latest CONNACK's properties (MQTT 5), e.g. the broker's limits.
    pub fn connack_properties(&self) -> Option<Properties> {
        self.session()
            .established()
            .and_then(|e| e.properties.clone())
    }

    /// The connection's events: losses, reconnect attempts and reconnections (with a
    /// [`ReconnectPolicy`](crate::ReconnectPolicy); without one, a connection ends at
    /// its first loss and reports nothing here). The stream ends with the connection.
    pub fn events(&self) -> ConnectionEvents {
        ConnectionEvents::new(self.session().clone())
    }

    /// The protocol version of this connection.
    pub fn protocol(&self) -> ProtocolVersion {
        self.session().options.protocol
    }

    /// Incoming messages discarded because the queue was full
    /// (`max_queued_incoming_messages`).
    pub fn discarded_messages(&self) -> u64 {
        self.session().queue.discarded()
    }

    /// The default timeout of operations.
    pub fn timeout(&self) -> Duration {
        self.session().options.timeout
    }

    /// Above this many pending calls a warning is logged.
    pub fn pending_calls_threshold(&self) -> usize {
        self.session().options.pending_calls_threshold
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("identifier", &self.identifier())
            .field("connected", &self.is_connected())
            .finish()
    }
}
