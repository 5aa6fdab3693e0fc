//! Automatic reconnection: the policy a client is built with, the events a connection
//! reports, and the supervisor task that reconnects.
//!
//! aiomqtt's way — a loop around `client.connect()` — needs none of this and keeps
//! working. With a [`ReconnectPolicy`] one [`Connection`](crate::Connection) outlives
//! losses instead: the supervisor reconnects with exponential backoff and jitter on
//! the same engine (Paho keeps the session state, so unacknowledged QoS 1/2 messages
//! are resent), subscribes again when the broker kept no session, and the message
//! stream goes on.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tokio::sync::broadcast;

use crate::end::EndCause;
use crate::session::Session;
use crate::{Error, ReasonCode};

/// How a client reconnects on its own after a lost connection
/// ([`ClientBuilder::reconnect`](crate::ClientBuilder::reconnect)).
///
/// Attempt *n* waits `initial_delay × multiplierⁿ⁻¹`, capped at `max_delay`, shortened
/// at random by up to `jitter` of itself (so many clients do not reconnect in step).
/// The count starts again only once a connection has stayed up for `stable_after`:
/// a connection the broker keeps closing (for example two clients with one identifier
/// on MQTT 3.1.1, each taking the session from the other) slows down to one attempt
/// per `max_delay` instead of flapping. On MQTT 5 a DISCONNECT with *Session taken
/// over* (0x8E) ends the connection: reconnecting would only take the session back.
///
/// ```
/// use std::time::Duration;
/// use aiomqtt::ReconnectPolicy;
///
/// let policy = ReconnectPolicy::new()
///     .initial_delay(Duration::from_millis(500))
///     .max_delay(Duration::from_secs(30))
///     .max_attempts(Some(20));
/// # let _ = policy;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The delay before the first attempt (default 1 s).
    pub initial_delay: Duration,
    /// The longest delay (default 60 s).
    pub max_delay: Duration,
    /// The factor from one delay to the next (default 2, at least 1).
    pub multiplier: f64,
    /// The share of a delay removed at random, from 0 to 1 (default 0.5).
    pub jitter: f64,
    /// How long a connection must stay up for the next loss to start counting
    /// attempts from 1 again (default 10 s).
    pub stable_after: Duration,
    /// Gives up after this many failed attempts in a row (default: never). An attempt
    /// that connects starts this count again, however short the connection it made;
    /// `stable_after` governs only the delays.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.5,
            stable_after: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// The default policy.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets [`initial_delay`](Self::initial_delay).
    #[must_use]
    pub fn initial_delay(mut self, delay: Duration) -> Self {
        self.initial_delay = delay;
        self
    }
    /// Sets [`max_delay`](Self::max_delay).
    #[must_use]
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }
    /// Sets [`multiplier`](Self::multiplier).
    #[must_use]
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = multiplier;
        self
    }
    /// Sets [`jitter`](Self::jitter).
    #[must_use]
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }
    /// Sets [`stable_after`](Self::stable_after).
    #[must_use]
    pub fn stable_after(mut self, duration: Duration) -> Self {
        self.stable_after = duration;
        self
    }
    /// Sets [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Checks the values for `ClientBuilder::build`.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let invalid = |what: &str| Err(Error::InvalidArgument(format!("reconnect: {what}")));
        if !self.multiplier.is_finite() || self.multiplier < 1.0 {
            return invalid("multiplier must be a finite number of at least 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return invalid("jitter must be from 0 to 1");
        }
        if self.max_delay < self.initial_delay {
            return invalid("max_delay must not be shorter than initial_delay");
        }
        if self.max_attempts == Some(0) {
            return invalid("max_attempts must be at least 1 (or None)");
        }
        Ok(())
    }

    /// The delay before attempt `attempt` (from 1), with `random` in `[0, 1)`.
    pub(crate) fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let base = self.initial_delay.as_secs_f64() * self.multiplier.powi(exponent);
        let base = base.min(self.max_delay.as_secs_f64());
        let delay = base * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::try_from_secs_f64(delay).unwrap_or(self.max_delay)
    }
}

/// What happened to a connection with automatic reconnects
/// ([`Connection::events`](crate::Connection::events)).
///
/// The events follow the connection's state: `Lost` only while it is up; `Reconnecting`,
/// `ReconnectFailed` and `Connected` only while it is down. A connection lost before the
/// client took it as up ends its attempt in `ReconnectFailed`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection was lost; the client reconnects.
    Lost {
        /// Why it was lost.
        cause: Arc<Error>,
    },
    /// The client waits `delay` before reconnect attempt `attempt` (from 1).
    Reconnecting {
        /// The attempt's number in this series.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
    },
    /// Reconnect attempt `attempt` failed.
    ReconnectFailed {
        /// The attempt's number in this series.
        attempt: u32,
        /// Why it failed.
        cause: Arc<Error>,
    },
    /// Connected again. When the broker kept no session (`session_present` false), the
    /// connection's subscriptions were made again: `resubscribed` filters.
    Connected {
        /// The CONNACK's Session Present flag.
        session_present: bool,
        /// How many filters were subscribed again.
        resubscribed: usize,
    },
}

/// The stream of a connection's [`ConnectionEvent`]s; it ends when the connection does.
/// A reader that falls more than 64 events behind skips the oldest.
pub struct ConnectionEvents {
    next: NextEvent,
}

/// The pending read of the next event.
type NextEvent = Pin<Box<dyn Future<Output = Option<(ConnectionEvent, Source)>> + Send>>;

/// Where the events come from: the session's broadcast and its end.
struct Source {
    rx: broadcast::Receiver<ConnectionEvent>,
    session: Arc<Session>,
}

impl Source {
    /// The next event, or `None` once the connection has ended and every event before
    /// its end was read.
    async fn next(mut self) -> Option<(ConnectionEvent, Source)> {
        loop {
            tokio::select! {
                biased;
                received = self.rx.recv() => match received {
                    Ok(event) => return Some((event, self)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = self.session.end.wait() => match self.rx.try_recv() {
                    Ok(event) => return Some((event, self)),
                    Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                    Err(_) => return None,
                },
            }
        }
    }
}

impl ConnectionEvents {
    pub(crate) fn new(session: Arc<Session>) -> ConnectionEvents {
        let source = Source {
            rx: session.subscribe_events(),
            session,
        };
        ConnectionEvents {
            next: Box::pin(source.next()),
        }
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some((event, source))) => {
                self.next = Box::pin(source.next());
                Poll::Ready(Some(event))
            }
            Poll::Ready(None) => {
                self.next = Box::pin(std::future::ready(None));
                Poll::Ready(None)
            }
        }
    }
}

impl std::fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectionEvents")
    }
}

/// A number in `[0, 1)` from the OS-seeded hasher (no random-number crate needed).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Starts the supervisor of a session with automatic reconnects.
pub(crate) fn supervise(session: &Arc<Session>, policy: ReconnectPolicy) {
    let weak = Arc::downgrade(session);
    tokio::spawn(run(weak, policy));
}

async fn run(weak: Weak<Session>, policy: ReconnectPolicy) {
    // The attempt number sets the delay and starts again after a stable connection; the
    // failures in a row are what `max_attempts` bounds.
    let mut attempt: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        // Wait for a loss, or the end. The link came up at `up_since` (a connect or the
        // reconnect that just worked): how long it stayed up is known only at the loss.
        let (mut link, up_since) = {
            let Some(session) = weak.upgrade() else {
                return;
            };
            (session.link(), session.up_since())
        };
        let lost = async {
            let _ = link.wait_for(|l| l.up.is_none()).await;
        };
        let Some(session) = weak.upgrade() else {
            return;
        };
        tokio::select! {
            _ = lost => {}
            _ = session.end.wait() => return,
        }
        if session.end.is_ending() {
            return;
        }
        if up_since.elapsed() >= policy.stable_after {
            attempt = 0;
        }
        drop(session);

        // Reconnect until it works, the policy gives up, or the connection is closed.
        loop {
            let Some(session) = weak.upgrade() else {
                return;
            };
            if policy.max_attempts.is_some_and(|max| failures >= max) {
                session.end(EndCause::Lost {
                    rc: None,
                    detail: format!("gave up reconnecting after {failures} attempts"),
                });
                return;
            }
            attempt = attempt.saturating_add(1);
            let delay = policy.delay(attempt, random_unit());
            session.emit(ConnectionEvent::Reconnecting { attempt, delay });
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = session.end.wait() => return,
            }
            if session.end.is_ending() {
                return;
            }
            match reconnect(&session).await {
                Ok(()) => {
                    failures = 0;
                    break;
                }
                // Cut short by the connection's end: nothing more to report.
                Err(_) if session.end.is_ending() => return,
                Err(cause) => {
                    failures = failures.saturating_add(1);
                    session.emit(ConnectionEvent::ReconnectFailed { attempt, cause });
                }
            }
        }
    }
}

/// One reconnect: CONNECT, subscriptions again if the broker kept no session, then the
/// link is up. Fails with the loss if the connection was lost before it was marked up.
async fn reconnect(session: &Arc<Session>) -> Result<(), Arc<Error>> {
    let epoch = session.epoch();
    let deadline = crate::deadline::after(session.options.timeout);
    let clean = session.options.reconnect_clean_flag();
    let info = session.engine.connect(clean, deadline).await?;
    if session.end.is_ending() {
        // Closed by the user meanwhile: this connection belongs to nobody.
        session.engine.close_quietly(0);
        return Ok(());
    }
    let session_present = info.session_present;
    let mut resubscribed = 0;
    if !session_present {
        for sub in session.subscriptions() {
            let codes = crate::ops::resubscribe(session, &sub, deadline).await?;
            resubscribed += codes.iter().filter(|c: &&ReasonCode| !c.is_error()).count();
        }
    }
    let connected = ConnectionEvent::Connected {
        session_present,
        resubscribed,
    };
    session.link_up(info, epoch, Some(connected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_are_capped_and_jittered() {
        let p = ReconnectPolicy::new()
            .initial_delay(Duration::from_secs(1))
            .max_delay(Duration::from_secs(10))
            .jitter(0.5);
        assert_eq!(p.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(p.delay(2, 0.0), Duration::from_secs(2));
        assert_eq!(p.delay(4, 0.0), Duration::from_secs(8));
        assert_eq!(p.delay(5, 0.0), Duration::from_secs(10), "capped");
        assert_eq!(p.delay(1000, 0.0), Duration::from_secs(10), "no overflow");
        assert_eq!(
            p.delay(1, 1.0),
            Duration::from_millis(500),
            "jitter removes half at most"
        );
        let r = random_unit();
        assert!((0.0..1.0).contains(&r));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(ReconnectPolicy::new().check().is_ok());
        assert!(ReconnectPolicy::new().multiplier(0.5).check().is_err());
        assert!(ReconnectPolicy::new().multiplier(f64::NAN).check().is_err());
        assert!(ReconnectPolicy::new().jitter(1.5).check().is_err());
        assert!(
            ReconnectPolicy::new()
                .max_attempts(Some(0))
                .check()
                .is_err()
        );
        assert!(
            ReconnectPolicy::new()
                .initial_delay(Duration::from_secs(5))
                .max_delay(Duration::from_secs(1))
                .check()
                .is_err()
        );
    }
}
