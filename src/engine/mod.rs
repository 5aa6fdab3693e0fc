//! The translation layer: the only module that talks to `paho-mqtt`.
//!
//! Everything here is shaped by the engine's hazards (ENGINE.md):
//! - callbacks run on Paho's receive thread under its global mutex, so they only
//!   hand data to [`Events`] and never call back into Paho;
//! - the final drop of a Paho client blocks (`MQTTAsync_destroy`) and a connect
//!   token keeps a client clone alive, so the last clone is always dropped on a
//!   reaper thread of our own, never on Paho's threads or an async worker;
//! - a pending connect cannot be cancelled (`MQTTAsync_disconnect1` returns
//!   `MQTTASYNC_DISCONNECTED` while connecting), so an abandoned connect retires
//!   its engine instead of racing the next one;
//! - the MQTT version, persistence and buffer sizes are always set explicitly.

mod diagnose;
mod errors;
mod keepalive;
mod properties;
mod secrets;
mod tls_config;
mod transport;
mod websocket;

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use paho_mqtt as paho;

use crate::options::Options;
use crate::{
    Error, Message, Properties, ProtocolVersion, QoS, ReasonCode, SubscribeOptions, Topic,
};

pub(crate) use diagnose::{diagnose, preflight};
pub(crate) use transport::check_transport;

/// What the engine reports from its own thread. Implementations must be quick
/// and must not call into the engine.
pub(crate) trait Events: Send + Sync + 'static {
    /// A PUBLISH arrived.
    fn message(&self, message: Message);
    /// The connection ended without our DISCONNECT: with the broker's reason code
    /// if it sent a DISCONNECT (MQTT 5).
    fn lost(&self, rc: Option<ReasonCode>, detail: String);
}

/// `true` if Paho ignored a CONNECT because a DISCONNECT of the same client is
/// still queued (`MQTTAsync_addCommand`: "ignore duplicate connect or disconnect").
pub(crate) fn is_command_ignored(e: &Error) -> bool {
    matches!(e, Error::Engine { code: -18, .. })
}

/// Connects in progress in this process. While any is, Paho's global mutex may
/// be held for seconds (DNS on its thread, hazard 11; `Proxy_connect` sleeping
/// up to 10 s for a silent proxy), so callers move engine calls off async workers.
static CONNECTING: AtomicUsize = AtomicUsize::new(0);

/// `true` while a connect is in progress anywhere in this process.
pub(crate) fn connect_in_flight() -> bool {
    CONNECTING.load(Ordering::Acquire) > 0
}

/// Counts one connect in progress while alive.
struct Connecting(());

impl Connecting {
    fn new() -> Connecting {
        CONNECTING.fetch_add(1, Ordering::AcqRel);
        Connecting(())
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        CONNECTING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What CONNACK told us.
pub(crate) struct ConnectInfo {
    pub(crate) session_present: bool,
    pub(crate) properties: Option<Properties>,
    /// To keep for as long as the connection lives.
    pub(crate) guards: ConnectionGuards,
}

/// Process-wide registrations a connection holds while alive.
#[derive(Default)]
pub(crate) struct ConnectionGuards {
    /// Keeps Paho's keep-alive checks frequent enough for this connection.
    _keepalive: Option<keepalive::Registration>,
    /// This process's one WebSocket connection.
    _websocket: Option<websocket::WebSocketClaim>,
}

/// One Paho client. Dropping it hands the client to a reaper thread.
pub(crate) struct Engine {
    cli: Option<paho::AsyncClient>,
    protocol: ProtocolVersion,
    outgoing_limit: Option<usize>,
}

fn paho_version(protocol: ProtocolVersion) -> u32 {
    match protocol {
        ProtocolVersion::V31 => paho::MQTT_VERSION_3_1,
        ProtocolVersion::V311 => paho::MQTT_VERSION_3_1_1,
        ProtocolVersion::V5 => paho::MQTT_VERSION_5,
    }
}

fn paho_qos(qos: QoS) -> i32 {
    i32::from(qos.as_u8())
}

/// The outgoing buffer when the user sets no bound: large enough never to be
/// the limit (Paho's own default of 100 refuses publishes while connected,
/// ENGINE.md hazard 17); Paho counts it in O(1).
const UNBOUNDED_BUFFER: i32 = i32::MAX;

impl Engine {
    /// Creates a Paho client for `options` that reports to `events`.
    pub(crate) fn create(
        options: &Options,
        client_id: &str,
        events: Arc<dyn Events>,
    ) -> Result<Engine, Error> {
        let buffered = match options.max_queued_outgoing_messages {
            // Paho's minimum is 1; our check in build() keeps it within i32.
            Some(n) => i32::try_from(n).unwrap_or(UNBOUNDED_BUFFER),
            None => UNBOUNDED_BUFFER,
        };
        let create = paho::CreateOptionsBuilder::new()
            .server_uri(transport::server_uri(options))
            .client_id(client_id)
            // Explicit: a bare (uri, id) pair would turn on file persistence (hazard 7).
            .persistence(paho::PersistenceType::None)
            .mqtt_version(paho_version(options.protocol))
            .max_buffered_messages(buffered)
            .finalize();
        let cli = paho::AsyncClient::new(create).map_err(errors::map_error)?;

        let v5 = options.protocol == ProtocolVersion::V5;
        let logger: Arc<str> = Arc::from(options.logger.as_str());
        let sink = events.clone();
        cli.set_message_callback(move |_, message| {
            let Some(message) = message else { return };
            // `paho::Message::topic()` panics on a non-UTF-8 topic; a panic must
            // not unwind into C (it would abort), so the conversion is fenced.
            match catch_unwind(AssertUnwindSafe(|| convert_message(&message, v5))) {
                Ok(Some(message)) => sink.message(message),
                Ok(None) => {
                    log::warn!(target: &logger, "Dropped a message with an invalid topic name")
                }
                Err(_) => {
                    log::warn!(target: &logger, "Dropped a message whose topic is not valid UTF-8")
                }
            }
        });
        let sink = events.clone();
        cli.set_connection_lost_callback(move |_| sink.lost(None, "connection lost".to_owned()));
        let sink = events;
        cli.set_disconnected_callback(move |_, props, rc| {
            let detail = properties::from_paho(&props)
                .reason_string
                .unwrap_or_default();
            sink.lost(Some(ReasonCode::from(rc as u8)), detail);
        });

        Ok(Engine {
            cli: Some(cli),
            protocol: options.protocol,
            outgoing_limit: options.max_queued_outgoing_messages,
        })
    }

    fn cli(&self) -> Result<&paho::AsyncClient, Error> {
        self.cli.as_ref().ok_or(Error::NotConnected)
    }

    fn v5(&self) -> bool {
        self.protocol == ProtocolVersion::V5
    }

    /// Starts CONNECT. `clean` is Clean Session (3.x) or Clean Start (5).
    pub(crate) fn connect(&self, options: &Options, clean: bool) -> Result<PendingConnect, Error> {
        let cli = self.cli()?;
        let mut b = paho::ConnectOptionsBuilder::with_mqtt_version(paho_version(options.protocol));
        b.keep_alive_interval(options.keepalive)
            .max_inflight(i32::from(options.max_inflight_messages))
            // Paho's own timer (whole seconds, ~3 s granularity), never shorter than
            // the facade's exact one.
            .connect_timeout(Duration::from_secs(
                options.timeout.as_secs_f64().ceil().max(1.0) as u64,
            ));
        if self.v5() {
            b.clean_start(clean);
        } else {
            b.clean_session(clean);
        }
        if let Some(username) = &options.username {
            b.user_name(username.as_str());
        }
        if let Some(password) = &options.password {
            b.password(password.as_str());
        }
        if let Some(will) = &options.will {
            let mut m = paho::MessageBuilder::new()
                .topic(will.topic.as_str())
                .payload(will.payload.as_bytes())
                .qos(paho_qos(will.qos))
                .retained(will.retain);
            if let Some(props) = &will.properties {
                m = m.properties(properties::to_paho(props));
            }
            b.will_message(m.finalize());
        }
        if let Some(props) = &options.properties {
            b.properties(properties::to_paho(props));
        }
        transport::apply(options, &mut b)?;
        let opts = b.finalize();

        let websocket = match options.transport {
            crate::Transport::WebSockets => Some(websocket::WebSocketClaim::take()?),
            _ => None,
        };
        let connecting = Connecting::new();
        let c_trace_mute = options
            .proxy
            .as_ref()
            .is_some_and(|p| p.password.is_some())
            .then(secrets::CTraceMute::new);
        // build() checked that the keepalive is 1..=65535 whole seconds.
        let keepalive = u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX);
        let (keepalive, token) = keepalive::Registration::around(keepalive, || {
            secrets::muted_if(options.has_secrets(), || cli.connect(opts))
        });
        Ok(PendingConnect {
            token: Some(token),
            cli: cli.clone(),
            v5: self.v5(),
            _c_trace_mute: c_trace_mute,
            connecting: Some(connecting),
            guards: Some(ConnectionGuards {
                _keepalive: Some(keepalive),
                _websocket: websocket,
            }),
        })
    }

    /// Queues a PUBLISH; the future completes on the acknowledgement its QoS needs.
    pub(crate) fn publish(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + use<>, Error> {
        let mut m = paho::MessageBuilder::new()
            .topic(topic.into_string())
            .payload(payload)
            .qos(paho_qos(qos))
            .retained(retain);
        if let Some(props) = props {
            m = m.properties(properties::to_paho(props));
        }
        let token = self
            .cli()?
            .try_publish(m.finalize())
            .map_err(|e| errors::map_publish_error(e, self.outgoing_limit))?;
        Ok(async move { token.await.map_err(errors::map_error) })
    }

    /// Queues a SUBSCRIBE for every filter; the future yields one code per filter.
    pub(crate) fn subscribe(
        &self,
        filters: &[(String, SubscribeOptions)],
        props: Option<&Properties>,
    ) -> Result<impl Future<Output = Result<Vec<ReasonCode>, Error>> + Send + use<>, Error> {
        let cli = self.cli()?;
        let topics: Vec<&str> = filters.iter().map(|(f, _)| f.as_str()).collect();
        let qos: Vec<i32> = filters.iter().map(|(_, o)| paho_qos(o.qos)).collect();
        // Always the "many" form: a single refused filter then reads like a list.
        let token = if self.v5() {
            let opts: Vec<paho::SubscribeOptions> = filters
                .iter()
                .map(|(_, o)| {
                    paho::SubscribeOptions::new(
                        o.no_local,
                        o.retain_as_published,
                        match o.retain_handling {
                            crate::RetainHandling::SendOnSubscribe => {
                                paho::RetainHandling::SendRetainedOnSubscribe
                            }
                            crate::RetainHandling::SendIfNew => {
                                paho::RetainHandling::SendRetainedOnNew
                            }
                            crate::RetainHandling::DoNotSend => {
                                paho::RetainHandling::DontSendRetained
                            }
                        },
                    )
                })
                .collect();
            cli.subscribe_many_with_options(&topics, &qos, &opts, props.map(properties::to_paho))
        } else {
            cli.subscribe_many(&topics, &qos)
        };
        let n = filters.len();
        let v5 = self.v5();
        Ok(async move {
            match token.await {
                Ok(rsp) => {
                    let codes = rsp.subscribe_many_response().unwrap_or_default();
                    if codes.len() != n {
                        return Err(Error::Engine {
                            code: -1,
                            message: format!(
                                "SUBACK carried {} codes for {n} filters",
                                codes.len()
                            ),
                        });
                    }
                    Ok(codes
                        .into_iter()
                        .map(|c| ReasonCode::from(c as u8))
                        .collect())
                }
                // Paho reports a refused single filter as a failure; as aiomqtt,
                // a refusal is a returned code, not an error.
                Err(paho::Error::ReasonCode(rc, _)) if n == 1 => {
                    Ok(vec![ReasonCode::from(rc as u8)])
                }
                // On 3.x Paho turns SUBACK 0x80 for a single filter into a bare
                // `Failure` (MQTTAsyncUtils.c, SUBACK handling: onFailure with code 0x80,
                // then paho-mqtt's on_complete maps the positive code to -1).
                Err(paho::Error::Failure) if n == 1 && !v5 => {
                    Ok(vec![ReasonCode::UNSPECIFIED_ERROR])
                }
                Err(e) => Err(errors::map_error(e)),
            }
        })
    }

    /// Queues an UNSUBSCRIBE for every filter.
    pub(crate) fn unsubscribe(
        &self,
        filters: &[String],
        props: Option<&Properties>,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + use<>, Error> {
        let cli = self.cli()?;
        let token = match props {
            Some(props) if self.v5() => {
                cli.unsubscribe_many_with_options(filters, properties::to_paho(props))
            }
            _ => cli.unsubscribe_many(filters),
        };
        Ok(async move {
            let rsp = token.await.map_err(errors::map_error)?;
            // Paho completes every UNSUBACK as a success; on v5 its codes say
            // whether the broker refused (paho-mqtt files them under
            // `SubscribeMany`, so both accessors are read).
            let codes = rsp
                .subscribe_many_response()
                .or_else(|| rsp.unsubscribe_many_response())
                .unwrap_or_default();
            match codes
                .into_iter()
                .map(|c| ReasonCode::from(c as u8))
                .find(|c| c.is_error())
            {
                Some(refused) => Err(Error::Code(refused)),
                None => Ok(()),
            }
        })
    }

    /// Sends DISCONNECT; the future completes once it is written and the socket closed.
    pub(crate) fn disconnect(
        &self,
    ) -> Result<impl Future<Output = Result<(), Error>> + Send + use<>, Error> {
        let token = self.cli()?.disconnect(None);
        Ok(async move {
            match token.await {
                Ok(_) | Err(paho::Error::Disconnected) => Ok(()),
                Err(e) => Err(errors::map_error(e)),
            }
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(cli) = self.cli.take() {
            reap(cli, None, (None, None, None));
        }
    }
}

/// Drops a Paho client on a thread of its own: `MQTTAsync_destroy` blocks, and it
/// must never run on Paho's threads (deadlock, hazard 1) or on an async worker.
/// A pending connect token is waited for first, so its client clone is not the
/// last one when Paho resolves it.
fn reap(
    cli: paho::AsyncClient,
    pending: Option<paho::ConnectToken>,
    holds: (
        Option<secrets::CTraceMute>,
        Option<Connecting>,
        Option<ConnectionGuards>,
    ),
) {
    let spawned = std::thread::Builder::new()
        .name("aiomqtt-reaper".to_owned())
        .spawn(move || {
            if let Some(token) = pending {
                // Paho's own connect timeout bounds this wait.
                let _ = token.wait_for(Duration::from_secs(600));
            }
            drop((holds.0, holds.1));
            if cli.is_connected() {
                let _ = cli.disconnect(None).wait_for(Duration::from_secs(5));
            }
            drop(cli);
            // Released only once Paho has let go of the connection.
            drop(holds.2);
        });
    if let Err(e) = spawned {
        // Without a thread the client is leaked rather than risking a deadlock.
        log::error!(target: "mqtt", "could not start the reaper thread ({e}); leaking a Paho client");
    }
}

/// A CONNECT in progress. If it is dropped before completing (timeout, cancelled
/// future), its engine must be retired: Paho will still finish the attempt.
pub(crate) struct PendingConnect {
    token: Option<paho::ConnectToken>,
    cli: paho::AsyncClient,
    v5: bool,
    /// Held until the connect completes (moved to the reaper if abandoned).
    _c_trace_mute: Option<secrets::CTraceMute>,
    /// Counted until Paho has finished the attempt.
    connecting: Option<Connecting>,
    /// Handed to the connection on success; dropped on failure; kept by the
    /// reaper while Paho finishes an abandoned attempt.
    guards: Option<ConnectionGuards>,
}

impl Future for PendingConnect {
    type Output = Result<ConnectInfo, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(token) = self.token.as_mut() else {
            return Poll::Ready(Err(Error::NotConnected));
        };
        let result = match Pin::new(token).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result,
        };
        self.token = None;
        self.connecting = None;
        Poll::Ready(match result {
            Ok(rsp) => Ok(ConnectInfo {
                session_present: rsp.connect_response().is_some_and(|c| c.session_present),
                properties: self.v5.then(|| properties::from_paho(rsp.properties())),
                guards: self.guards.take().unwrap_or_default(),
            }),
            Err(e) => Err(errors::map_connect_error(e)),
        })
    }
}

impl Drop for PendingConnect {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            let holds = (
                self._c_trace_mute.take(),
                self.connecting.take(),
                self.guards.take(),
            );
            reap(self.cli.clone(), Some(token), holds);
        }
    }
}

/// Converts an incoming PUBLISH; `None` if its topic is not a valid topic name.
fn convert_message(m: &paho::Message, v5: bool) -> Option<Message> {
    let topic = Topic::new(m.topic()).ok()?;
    Some(Message {
        topic,
        payload: m.payload().to_vec(),
        qos: match m.qos() {
            paho::QoS::AtMostOnce => QoS::AtMostOnce,
            paho::QoS::AtLeastOnce => QoS::AtLeastOnce,
            paho::QoS::ExactlyOnce => QoS::ExactlyOnce,
        },
        retain: m.retained(),
        mid: 0,
        properties: v5.then(|| Box::new(properties::from_paho(m.properties()))),
    })
}
