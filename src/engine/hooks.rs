//! What a Paho client's handle-level callbacks report to: the context registered with
//! the handle, alive until the handle is destroyed.
//!
//! Every method runs on a Paho thread under Paho's global mutex: it only copies data,
//! takes leaf locks and wakes tasks. A task woken here may call into Paho at once; it
//! then waits for the mutex until the callback has returned, which is what the
//! reconnect barrier relies on (see `Engine::connect`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use tokio::sync::{oneshot, watch};

use super::Inner;
use super::cprops::Violation;
use super::registry::Failure;
use crate::{Message, Properties, QoS, ReasonCode, Topic};

/// A PUBLISH as Paho handed it over, borrowed for the callback.
pub(crate) struct Incoming<'a> {
    pub(crate) topic: &'a [u8],
    pub(crate) payload: &'a [u8],
    pub(crate) qos: u8,
    pub(crate) retain: bool,
    pub(crate) dup: bool,
    pub(crate) packet_id: u16,
    pub(crate) properties: Option<Box<Properties>>,
    /// What in its properties breaks MQTT 5's rules, if anything.
    pub(crate) violation: Option<Violation>,
    /// The length of its properties on the wire (MQTT 5).
    pub(crate) properties_len: usize,
}

impl Incoming<'_> {
    /// The size of the PUBLISH packet as it was on the wire: fixed header, topic, packet
    /// identifier, properties (MQTT 5), payload.
    fn wire_size(&self, v5: bool) -> usize {
        let varint_len = |n: usize| match n {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            _ => 4,
        };
        let properties = if v5 {
            varint_len(self.properties_len) + self.properties_len
        } else {
            0
        };
        let remaining = 2
            + self.topic.len()
            + if self.qos > 0 { 2 } else { 0 }
            + properties
            + self.payload.len();
        1 + varint_len(remaining) + remaining
    }
}

/// Why a connection ended without our DISCONNECT.
#[derive(Debug, Clone)]
pub(crate) enum Loss {
    /// The broker sent DISCONNECT (MQTT 5) with this reason code and properties.
    Disconnect {
        reason: ReasonCode,
        properties: Box<Properties>,
    },
    /// The network connection ended. Through the relay, how it ended is known; on a
    /// direct connection Paho does not say (closed, reset, or a keep-alive timeout).
    Network(Option<super::relay::LinkEnd>),
    /// The broker sent something MQTT forbids; the client closed the connection.
    Malformed(String),
}

/// What the engine reports to the layer above. Implementations must be quick, must not
/// block and must not call into the engine.
pub(crate) trait Events: Send + Sync + 'static {
    /// A PUBLISH arrived.
    fn message(&self, message: Message);
    /// A CONNECT is about to go out: what arrives from now on belongs to its connection
    /// (the engine's earlier one, if any, is closed).
    fn connect_started(&self);
    /// The connection ended without our DISCONNECT.
    fn lost(&self, loss: Loss);
}

/// The outcome of a CONNECT: Session Present and the CONNACK properties (MQTT 5).
pub(crate) type ConnectOutcome = Result<(bool, Option<Properties>), Failure>;

/// Connects in progress in this process during which Paho may hold its global mutex
/// for long (a host name to resolve, an HTTP proxy to talk to): callers then make
/// their calls from the engine thread instead of their own.
static SLOW_CONNECTS: AtomicUsize = AtomicUsize::new(0);

/// `true` while some connect of the process may be holding Paho's mutex for long.
pub(crate) fn slow_connect_in_flight() -> bool {
    SLOW_CONNECTS.load(Ordering::Acquire) > 0
}

/// Counts one slow connect while alive.
pub(crate) struct SlowConnect(());

impl SlowConnect {
    pub(crate) fn new() -> SlowConnect {
        SLOW_CONNECTS.fetch_add(1, Ordering::AcqRel);
        SlowConnect(())
    }
}

impl Drop for SlowConnect {
    fn drop(&mut self) {
        SLOW_CONNECTS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The CONNECT Paho is working on, if any.
#[derive(Default)]
struct Attempt {
    /// Who waits for the outcome; gone if the caller gave up.
    waiter: Option<oneshot::Sender<ConnectOutcome>>,
    slow: Option<SlowConnect>,
}

/// The reason code of a DISCONNECT for a PUBLISH whose topic is not a topic name.
const TOPIC_NAME_INVALID: u8 = 0x90;
/// ... and for a packet over the client's Maximum Packet Size.
const PACKET_TOO_LARGE: u8 = 0x95;

/// TLS error lines kept per connect attempt.
const TLS_LINES: usize = 8;

pub(crate) struct Hooks {
    /// The engine's id (as the registry knows it).
    pub(crate) id: u64,
    pub(crate) v5: bool,
    pub(crate) logger: Arc<str>,
    events: Arc<dyn Events>,
    attempt: Mutex<Attempt>,
    /// `true` while a CONNECT is in progress in Paho.
    busy: watch::Sender<bool>,
    tls_errors: Mutex<Vec<String>>,
    /// The engine, to ask for a DISCONNECT from a callback (set once after creation).
    engine: OnceLock<Weak<Inner>>,
    /// The Maximum Packet Size this client set in CONNECT (MQTT 5), which Paho C does not
    /// enforce on what it receives.
    max_packet: Option<u32>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hooks {
    pub(crate) fn new(id: u64, v5: bool, logger: Arc<str>, events: Arc<dyn Events>) -> Hooks {
        Hooks {
            id,
            v5,
            logger,
            events,
            attempt: Mutex::new(Attempt::default()),
            busy: watch::Sender::new(false),
            tls_errors: Mutex::new(Vec::new()),
            engine: OnceLock::new(),
            max_packet: None,
        }
    }

    /// Makes a received PUBLISH larger than `max` a protocol violation (MQTT 5 §3.1.2.11.4:
    /// the client closes the connection with 0x95, Packet too large).
    pub(crate) fn limit_packets(mut self, max: Option<u32>) -> Hooks {
        self.max_packet = max;
        self
    }

    pub(crate) fn set_engine(&self, engine: Weak<Inner>) {
        let _ = self.engine.set(engine);
    }

    /// Called on the engine thread right before `MQTTAsync_connect`.
    pub(crate) fn attempt_started(
        &self,
        waiter: oneshot::Sender<ConnectOutcome>,
        slow: Option<SlowConnect>,
    ) {
        lock(&self.tls_errors).clear();
        *lock(&self.attempt) = Attempt {
            waiter: Some(waiter),
            slow,
        };
        self.busy.send_replace(true);
        self.events.connect_started();
    }

    /// Called when `MQTTAsync_connect` refused to start.
    pub(crate) fn attempt_refused(&self) {
        *lock(&self.attempt) = Attempt::default();
        self.busy.send_replace(false);
    }

    /// Waits until no CONNECT is in progress.
    pub(crate) fn idle(&self) -> watch::Receiver<bool> {
        self.busy.subscribe()
    }

    /// The connect callbacks: hands the outcome to the waiter. A success nobody waits
    /// for any more (the caller's deadline passed) leaves a connection no session owns:
    /// it is closed.
    pub(crate) fn connect_done(&self, outcome: ConnectOutcome) {
        let attempt = std::mem::take(&mut *lock(&self.attempt));
        let succeeded = outcome.is_ok();
        if succeeded {
            // Here, on Paho's thread, before any loss of this connection is reported.
            if let Some(inner) = self.inner() {
                inner.progress.set_link(true);
            }
        }
        let delivered = match attempt.waiter {
            Some(waiter) => waiter.send(outcome).is_ok(),
            None => false,
        };
        drop(attempt.slow);
        if succeeded && !delivered {
            self.close_unclaimed();
        }
        self.busy.send_replace(false);
    }

    /// An MQTT 5 CONNACK that accepted the connection. One whose properties break the
    /// protocol (`cprops::read_checked`: a Receive Maximum of 0, a malformed property)
    /// fails the connect with `Error::Protocol` and the connection is closed with the
    /// matching reason code: Paho C checks neither, and with a Receive Maximum of 0 it
    /// would hold back every command of the client (`MQTTAsync_processCommand`).
    pub(crate) fn connack5(
        &self,
        session_present: bool,
        properties: Properties,
        violation: Option<Violation>,
    ) {
        let Some(violation) = violation else {
            self.connect_done(Ok((session_present, Some(properties))));
            return;
        };
        let what = format!(
            "protocol violation by the broker in CONNACK: {}",
            violation.what
        );
        crate::logging::log_warn!(target: &self.logger, "{what}; closing the connection");
        self.close_with(violation.reason);
        self.connect_done(Err(Failure {
            violation: Some(what),
            ..Failure::default()
        }));
    }

    /// The engine, while it lives.
    fn inner(&self) -> Option<Arc<Inner>> {
        self.engine.get().and_then(Weak::upgrade)
    }

    /// Asks for a DISCONNECT (with `reason` on MQTT 5) of the engine's connection, from
    /// any thread.
    fn close_with(&self, reason: u8) {
        if let Some(inner) = self.inner() {
            super::Engine::from_inner(inner).close_quietly_c(reason);
        }
    }

    /// A connect succeeded after its caller gave up: the connection no session owns is
    /// closed (from any thread).
    pub(crate) fn close_unclaimed(&self) {
        crate::logging::log_debug!(target: &self.logger, "A connect finished after its caller gave up: closing it");
        self.close_with(0);
    }

    pub(crate) fn lost(&self) {
        let inner = self.inner();
        if let Some(inner) = &inner {
            inner.progress.set_link(false);
        }
        // Through the relay: how the link ended, as the relay knows it.
        let end = inner.and_then(|inner| inner.relay.as_ref().and_then(|r| r.loss_cause()));
        self.events.lost(Loss::Network(end));
    }

    pub(crate) fn disconnected(&self, reason: u8, properties: Properties) {
        if let Some(inner) = self.inner() {
            inner.progress.set_link(false);
        }
        self.events.lost(Loss::Disconnect {
            reason: ReasonCode::from(reason),
            properties: Box::new(properties),
        });
    }

    pub(crate) fn tls_error(&self, line: &str) {
        let mut lines = lock(&self.tls_errors);
        if lines.len() < TLS_LINES {
            lines.push(line.trim_end().to_owned());
        }
    }

    /// The OpenSSL error lines Paho reported during the last connect attempt.
    pub(crate) fn tls_errors(&self) -> Vec<String> {
        lock(&self.tls_errors).clone()
    }

    /// A PUBLISH arrived. One whose topic is not a valid topic name (not UTF-8, a NUL,
    /// a wildcard, empty — Paho C does not resolve topic aliases) is never delivered:
    /// MQTT requires closing the connection on such a packet, so the loss is reported
    /// and a DISCONNECT (MQTT 5: 0x90 Topic Name invalid) is sent.
    pub(crate) fn message(&self, m: Incoming<'_>) {
        let topic = match std::str::from_utf8(m.topic) {
            Ok(text) => Topic::new(text).map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "the topic of a received PUBLISH is not valid UTF-8 ({} bytes)",
                m.topic.len()
            )),
        };
        // Worked out only when the client set a limit.
        let too_large = self
            .max_packet
            .map(|max| (max, m.wire_size(self.v5)))
            .filter(|&(max, size)| size > usize::try_from(max).unwrap_or(usize::MAX));
        let fault = match (topic, m.violation, too_large) {
            (Err(why), _, _) => Err((why, TOPIC_NAME_INVALID)),
            (Ok(_), Some(v), _) => Err((format!("a received PUBLISH: {}", v.what), v.reason)),
            (Ok(_), None, Some((max, size))) => Err((
                format!(
                    "a received PUBLISH of {size} bytes, over the Maximum Packet Size of {max} \
                     this client set"
                ),
                PACKET_TOO_LARGE,
            )),
            (Ok(topic), None, None) => Ok(topic),
        };
        let topic = match fault {
            Ok(topic) => topic,
            Err((why, reason)) => {
                let why = format!("protocol violation by the broker: {why}");
                crate::logging::log_warn!(target: &self.logger, "{why}; closing the connection");
                self.events.lost(Loss::Malformed(why));
                self.close_with(reason);
                return;
            }
        };
        let qos = QoS::try_from(m.qos).unwrap_or(QoS::AtMostOnce);
        let _ = m.dup;
        self.events.message(Message {
            topic,
            payload: m.payload.to_vec(),
            qos,
            retain: m.retain,
            mid: m.packet_id,
            properties: m.properties,
        });
    }
}
