//! The engine: the only part of the crate that knows Paho C, and the only one that
//! knows how to call it safely. The layers above see futures and `Result`s.
//!
//! # The invariant
//!
//! **No lock of this crate is ever held across a call into Paho, and nothing a Paho
//! callback does waits on anything a thread calling Paho may hold.** Paho runs its
//! callbacks on its own threads while holding its process-wide mutex, and every Paho
//! call takes that mutex; a lock of ours held across a call and also taken in a
//! callback deadlocks every client of the process (seen: a keep-alive registry lock
//! against a broker restart, ENGINE.md 21). So:
//! - callbacks ([`paho`], [`hooks`]) copy what they are given, take only leaf locks
//!   (locks under which nothing else is locked and nothing is called), wake tasks and
//!   queue jobs — they never call Paho, never block, never run user code;
//! - every call into Paho is made here, with no lock of ours held, either directly
//!   from the caller's task (operations, while no connect in the process can be
//!   holding Paho's mutex for long) or from the [engine thread](thread) (create,
//!   connect, destroy, and operations while some connect may stall Paho);
//! - the last reference to a Paho client is never dropped on a Paho thread: dropping
//!   the engine only queues its destruction on the engine thread.
//!
//! # What else it takes care of
//! - **Reconnects on the same client handle.** After a loss callback Paho goes on
//!   tearing the connection down under its mutex (ENGINE.md 18); a CONNECT started
//!   meanwhile crashed the process. Every connect first calls `MQTTAsync_isConnected`
//!   from the engine thread: it takes the mutex, so it returns only once that teardown
//!   is over. The handle, and with it Paho's session state (unacknowledged QoS 1/2
//!   messages, packet identifiers, QoS 2 receipts), survives the loss.
//! - **A CONNECT ignored** because the same client's DISCONNECT is still queued
//!   (`MQTTASYNC_COMMAND_IGNORED`) is retried within the caller's deadline.
//! - **Another client's failure.** After failing a connect on its receive thread (a TLS
//!   failure, or no CONNACK), Paho fails whichever client holds the closed socket's
//!   number once it has its mutex back; a connect that opened a socket meanwhile got that number. A connect
//!   failed with that report ("socket error") is made again, up to
//!   [`MISATTRIBUTED_RETRIES`] times within its deadline
//!   ([`errors::is_misattributed_connect_failure`]).
//! - **A connect whose caller gave up** cannot be cancelled in Paho; the next one waits
//!   for it to finish, and a late success is closed ([`hooks::Hooks::connect_done`]).
//! - **A QoS 1/2 PUBLISH whose write fails at a loss.** Paho C 1.3.16 frees the failed
//!   command's topic and payload while the copy it keeps for the resend still points at
//!   them (a resend of freed memory, then a double free). The publish's failure callback
//!   first gives that copy buffers of its own (`paho::publish_failed`, through the
//!   [shim]); on a session that outlives the link the call then waits for the resend's
//!   acknowledgement, reported by Paho's delivery-complete callback ([registry]).
//! - **Writes Paho would leave waiting.** Paho continues a partly written packet, and
//!   sends the commands queued behind it, only when its threads wake (up to a second
//!   later). While a large publish is pending the [pump] wakes them every millisecond,
//!   while QoS 0 publishes stand still for 10 ms (not for one that completes at once):
//!   large messages move at link speed, QoS 0 streams never stall for long.
//! - **QoS 0 completions Paho loses** (a report of a write in parts names the wrong
//!   command when the next one starts in between): a later QoS 0 completion of the same
//!   client completes the earlier publishes it proves written ([registry]).
//! - **Paho's wake-up socket.** Paho C wakes its receive thread with a byte on a
//!   blocking socket pair, one per socket opened or closed, and reads one per cycle
//!   under its global mutex; hundreds of connects at once filled it and hung the process
//!   (a send blocked under the mutex the reader waits for). Its writing end is made
//!   non-blocking once, at initialisation (`shim::unblock_interrupts`).
//! - **Sockets the facade dials.** For the options and transports Paho C cannot dial well
//!   (bind address, socket options, proxies, Unix sockets, its own TLS, WebSockets) the
//!   `relay` dials the broker, then hands a bare socket to Paho — replacing, under Paho's
//!   socket mutexes (taken on the engine thread, like any blocking call), the descriptor
//!   of Paho's connection to a private endpoint — or carries a layered link through its
//!   thread.
//! - **Paho's walk of its command queue.** Paho's send thread looks for its next command
//!   by walking one queue shared by every client, past every command of a client whose
//!   window is full; a connection hands it at most its window plus a little ([admission]),
//!   so that a burst stays linear and other clients are not held up.
//! - Per-command completions go through the [registry], which tolerates any pattern of
//!   callbacks.
//!
//! # What it cannot take care of
//! - **A resumed session resends every client's messages.** At a CONNACK that resumes a
//!   session with messages in flight, Paho resends the unacknowledged QoS 1/2 PUBLISHes
//!   (with DUP) and PUBRELs of every connected client of the process, not only that
//!   client's (`MQTTAsync_receiveThread` calls `MQTTProtocol_retry(zero, 1, 1)`, which
//!   walks `bstate->clients`). A QoS 1 subscriber may get the message twice; Mosquitto
//!   (Debian's 2.0.11, with the fix for CVE-2023-28366) closes a connection whose QoS 2
//!   PUBLISH comes a third time before its PUBREL, so two resumptions while another
//!   client's QoS 2 exchange waits for its PUBREC end that client's connection. There is
//!   no hook to confine it (tests
//!   `faults::a_resumed_session_makes_paho_resend_every_clients_messages`,
//!   `faults::two_resumed_sessions_get_another_clients_qos2_exchange_closed_by_mosquitto`).

mod admission;
mod call;
mod cprops;
mod diagnose;
mod errors;
mod expiry;
#[cfg(test)]
pub(crate) mod fake;
mod hooks;
mod keepalive;
mod on_drop;
mod paho;
mod pump;
mod registry;
mod relay;
mod shim;
mod slot;
mod socket;
#[cfg(test)]
mod test_waker;
mod thread;
mod tls_config;
mod transport;

use std::ffi::CString;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::options::Options;
use crate::{Error, Properties, ProtocolVersion, QoS, ReasonCode, SubscribeOptions, Topic};
use on_drop::OnDrop;

pub(crate) use admission::{Admission, Claim};
pub(crate) use call::{Abandoned, Call, Handed, Replies};
pub(crate) use diagnose::{Report, diagnose, preflight};
pub(crate) use hooks::{Events, Loss};
#[cfg(test)]
pub(crate) use registry::Response;
pub(crate) use registry::{Failure, Reply, Scope, Ticket};
pub(crate) use relay::LinkEnd;
pub(crate) use transport::check_transport;

use cprops::CProps;
use hooks::{Hooks, SlowConnect};

/// Paho C's version, as it reports it (e.g. `"1.3.16"`).
pub(crate) fn paho_version() -> Option<&'static str> {
    static VERSION: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    VERSION.get_or_init(paho::version).as_deref()
}

/// What CONNACK told us.
#[derive(Debug)]
pub(crate) struct ConnectInfo {
    pub(crate) session_present: bool,
    pub(crate) properties: Option<Properties>,
}

/// What the layers above call on an engine: the Paho engine, or a fake one in the unit
/// tests of the facade's own state machines. Calls return at once; their effects are
/// awaited through the returned [`Call`] (or future). A call given a [`Ticket`] may be
/// [armed](Call::is_armed): its wait then ends at the ticket's deadline or scope's close
/// without a timer or waiter of the caller's.
pub(crate) trait Driver: Send + Sync + 'static {
    /// CONNECT, then CONNACK, within `deadline`.
    fn connect(
        &self,
        clean: bool,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<ConnectInfo, Error>> + Send + '_>>;
    /// Queues a PUBLISH (properties already checked for the packet).
    fn publish(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call;
    /// Queues a SUBSCRIBE for every filter.
    fn subscribe(
        &self,
        filters: Vec<(String, SubscribeOptions)>,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call;
    /// Queues an UNSUBSCRIBE for every filter.
    fn unsubscribe(
        &self,
        filters: Vec<String>,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call;
    /// Sends DISCONNECT.
    fn disconnect(&self) -> Call;
    /// Queues a DISCONNECT without waiting (safe from any thread, Paho's callbacks too).
    fn close_quietly(&self, reason: u8);
    /// The OpenSSL error lines of the last connect attempt.
    fn tls_errors(&self) -> Vec<String>;
}

/// An engine as the layers above hold it.
pub(crate) type Driven = Arc<dyn Driver>;

/// One Paho client: cheap to clone, destroyed (on the engine thread) with the last clone.
#[derive(Clone)]
pub(crate) struct Engine(Arc<Inner>);

pub(crate) struct Inner {
    id: u64,
    handle: paho::Handle,
    /// The server URI, for log records (it carries no credentials).
    uri: String,
    /// The handle's callback context; freed only after the handle is destroyed.
    hooks: Arc<Hooks>,
    /// Paho keeps pointers into these (HTTP headers) for the handle's lifetime.
    options: Arc<paho::ConnectOptions>,
    v5: bool,
    /// Whether this client's connects may hold Paho's mutex for long.
    slow_connect: bool,
    /// The relay, when the facade owns the socket (see `relay`).
    relay: Option<relay::Relay>,
    /// The client's options (the relay dials with them).
    client_options: Arc<Options>,
    outgoing_limit: Option<usize>,
    /// This client's pumped publishes (see `pump`).
    progress: Arc<pump::Progress>,
    /// This engine's keep-alive, as the process-wide check period counts it.
    keepalive: keepalive::Registration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (id, handle, hooks, options) = (
            self.id,
            self.handle,
            self.hooks.clone(),
            self.options.clone(),
        );
        let destroy = move || {
            // SAFETY: this is the handle's last owner: no call on it runs or follows.
            #[allow(unsafe_code)]
            unsafe {
                paho::destroy(handle)
            };
            // Paho failed its queued and unacknowledged commands while destroying;
            // anything left cannot be answered any more.
            registry::sweep(id, || {
                Reply::Failed(Failure::code(errors::OPERATION_INCOMPLETE))
            });
            drop((hooks, options));
        };
        if let Err(e) = thread::submit(destroy) {
            // Without the engine thread the client is leaked rather than destroyed on
            // a thread that might be Paho's.
            crate::logging::log_error!(target: "aiomqtt::engine", "leaking a Paho client: {e}");
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The pause before retrying a CONNECT that Paho ignored.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// How often a connect failed with another connection's failure is tried again
/// ([`errors::is_misattributed_connect_failure`]).
const MISATTRIBUTED_RETRIES: u32 = 3;

impl Engine {
    fn from_inner(inner: Arc<Inner>) -> Engine {
        Engine(inner)
    }

    /// Creates a Paho client for `options` that reports to `events`.
    pub(crate) async fn create(
        client_options: &Arc<Options>,
        client_id: &str,
        events: Arc<dyn Events>,
        deadline: Instant,
    ) -> Result<Engine, Error> {
        // With the relay, Paho speaks plain MQTT to its private endpoint.
        let relay = relay::needed(client_options).then(relay::Relay::new);
        let view;
        let options: &Options = if relay.is_some() {
            view = relay::engine_view(client_options);
            &view
        } else {
            client_options
        };
        let v5 = options.protocol == ProtocolVersion::V5;
        let no_nul = |what: &str, s: &str| {
            CString::new(s).map_err(|_| {
                Error::InvalidArgument(format!("{what} must not contain a NUL character"))
            })
        };
        // With the relay each connect names its link's private endpoint; this one is
        // never dialled.
        let uri = match &relay {
            Some(_) => "tcp://127.0.0.1:1".to_owned(),
            None => transport::server_uri(options),
        };
        let spec = paho::CreateSpec {
            uri: no_nul("hostname", &uri)?,
            client_id: no_nul("identifier", client_id)?,
            protocol: options.protocol,
            // Paho's own default (100) refuses publishes while connected (hazard 17);
            // unbounded unless the user bounds it. build() keeps it within i32.
            max_buffered: options
                .max_queued_outgoing_messages
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(i32::MAX),
            send_while_disconnected: options.keeps_session() || options.reconnect.is_some(),
        };
        let connect_options = Arc::new(paho::ConnectOptions::new(options)?);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let hooks = Arc::new(
            Hooks::new(id, v5, Arc::from(options.logger.as_str()), events).limit_packets(
                options
                    .properties
                    .as_ref()
                    .and_then(|p| p.maximum_packet_size),
            ),
        );
        let keepalive = requested_keepalive(options);
        let slow_connect = relay.is_none() && transport::connect_may_stall(options);
        let client_options = client_options.clone();
        let outgoing_limit = options.max_queued_outgoing_messages;
        let created = thread::submit_withdrawable(move || {
            // SAFETY: `hooks` is kept by the Inner built below, which destroys the handle
            // before releasing it.
            #[allow(unsafe_code)]
            let handle = unsafe { paho::create(&spec, Arc::as_ptr(&hooks)) };
            handle.map(|handle| {
                // Built here, so that a result nobody receives any more is destroyed.
                Arc::new(Inner {
                    id,
                    handle,
                    uri,
                    hooks,
                    options: connect_options,
                    v5,
                    slow_connect,
                    relay,
                    client_options,
                    outgoing_limit,
                    progress: pump::Progress::watched(),
                    keepalive: keepalive::Registration::new(keepalive),
                })
            })
        });
        let (rx, withdraw) = created?;
        let inner = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(inner))) => inner,
            Ok(Ok(Err(rc))) => return Err(errors::from_rc(rc, None)),
            Ok(Err(_)) => return Err(engine_thread_gone()),
            Err(_) => {
                withdraw.withdraw();
                return Err(Error::Timeout);
            }
        };
        inner.hooks.set_engine(Arc::downgrade(&inner));
        Ok(Engine(inner))
    }

    /// Connects (CONNECT, then CONNACK) within `deadline`. `clean` is Clean Session
    /// (3.x) or Clean Start (5). The client's session state from earlier connections
    /// is kept by Paho unless `clean` (or the broker says it kept no session).
    async fn connect_logged(&self, clean: bool, deadline: Instant) -> Result<ConnectInfo, Error> {
        crate::logging::log_debug!(
            target: &self.0.hooks.logger,
            "Connecting to {} (MQTT {}, clean {}: {clean})",
            self.0.uri,
            if self.0.v5 { "5" } else { "3.x" },
            if self.0.v5 { "start" } else { "session" },
        );
        // Cancelled (the caller's future dropped), the attempt's link goes as a failed
        // one's does, below.
        let cancelled = OnDrop::new(|| self.abandon_link());
        let mut tries = 0;
        let result = loop {
            let result = self.connect_attempt(clean, deadline).await;
            match &result {
                Err(e)
                    if errors::is_misattributed_connect_failure(e)
                        && tries < MISATTRIBUTED_RETRIES
                        && Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tries += 1;
                    crate::logging::log_debug!(
                        target: &self.0.hooks.logger,
                        "The engine failed this connect with another connection's failure \
                         (\"socket error\" for a reused socket number); connecting again"
                    );
                    self.abandon_link();
                }
                _ => break result,
            }
        };
        match &result {
            Ok(info) => {
                crate::logging::log_debug!(
                    target: &self.0.hooks.logger,
                    "Connected (session present: {})",
                    info.session_present
                );
                // Paho C keeps to a Server Keep Alive (MQTT 5) until the next connect.
                let assigned = info.properties.as_ref().and_then(|p| p.server_keep_alive);
                self.0
                    .keepalive
                    .set(assigned.unwrap_or_else(|| requested_keepalive(&self.0.client_options)));
                // Paho dropped its session state: nothing parked will be resent.
                if !info.session_present {
                    registry::fail_parked(self.0.id, || {
                        Reply::Failed(Failure {
                            code: errors::OPERATION_INCOMPLETE,
                            message: Some("the broker kept no session to resume".to_owned()),
                            ..Failure::default()
                        })
                    });
                }
            }
            Err(e) => {
                crate::logging::log_debug!(target: &self.0.hooks.logger, "Connect failed: {e}");
                self.abandon_link();
            }
        }
        cancelled.disarm();
        result
    }

    /// One connect: through a new relay link when the facade dials, else directly.
    async fn connect_attempt(&self, clean: bool, deadline: Instant) -> Result<ConnectInfo, Error> {
        match &self.0.relay {
            // The facade dials the broker first: its failures are precise.
            Some(relay) => match relay.dial(self.0.client_options.clone(), deadline).await {
                Ok(uri) => match CString::new(uri) {
                    // A link that fails before the CONNACK: the relay knows why.
                    Ok(uri) => self
                        .connect_inner(clean, deadline, Some(uri))
                        .await
                        .map_err(|e| relay.explain(e)),
                    Err(_) => Err(Error::InvalidArgument("endpoint URI".to_owned())),
                },
                Err(e) => Err(e),
            },
            None => self.connect_inner(clean, deadline, None).await,
        }
    }

    async fn connect_inner(
        &self,
        clean: bool,
        deadline: Instant,
        uri: Option<CString>,
    ) -> Result<ConnectInfo, Error> {
        loop {
            // An earlier attempt whose caller gave up may still be running in Paho.
            let mut idle = self.0.hooks.idle();
            match tokio::time::timeout_at(deadline, idle.wait_for(|busy| !*busy)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(engine_thread_gone()),
                Err(_) => return Err(Error::Timeout),
            }
            let (waiter, outcome) = oneshot::channel();
            let mut outcome = Outcome {
                rx: outcome,
                hooks: self.0.hooks.clone(),
            };
            let inner = self.0.clone();
            let uri = uri.clone();
            let start = move || {
                // The barrier: returns once Paho's threads let go of its mutex, i.e.
                // after the teardown that follows a loss callback.
                if paho::is_connected(inner.handle) {
                    // A connection no session owns (a late success): close it first.
                    paho::disconnect(inner.handle, inner.v5, 0, None);
                    return errors::COMMAND_IGNORED;
                }
                inner
                    .hooks
                    .attempt_started(waiter, inner.slow_connect.then(SlowConnect::new));
                // SAFETY: the hooks are the handle's context and outlive it.
                #[allow(unsafe_code)]
                let rc = unsafe {
                    paho::connect(
                        inner.handle,
                        &inner.options,
                        clean,
                        Arc::as_ptr(&inner.hooks),
                        uri.as_deref(),
                    )
                };
                if rc == 0 {
                    // MQTTAsync_connect has just reset the process-wide check period.
                    keepalive::apply();
                } else {
                    inner.hooks.attempt_refused();
                }
                rc
            };
            let (started, withdraw) = thread::submit_withdrawable(start)?;
            let rc = match tokio::time::timeout_at(deadline, started).await {
                Ok(Ok(rc)) => rc,
                Ok(Err(_)) => return Err(engine_thread_gone()),
                Err(_) => {
                    // If it has started after all, its outcome finds no waiter and a
                    // success is closed.
                    withdraw.withdraw();
                    return Err(Error::Timeout);
                }
            };
            if rc == errors::COMMAND_IGNORED {
                if Instant::now() + RETRY_PAUSE >= deadline {
                    return Err(Error::Timeout);
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            if rc != 0 {
                return Err(errors::from_rc(rc, None));
            }
            let result = match tokio::time::timeout_at(deadline, &mut outcome.rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => return Err(engine_thread_gone()),
                Err(_) => {
                    // Closing first makes a late outcome either ours or refused.
                    outcome.rx.close();
                    match outcome.rx.try_recv() {
                        Ok(result) => result,
                        Err(_) => return Err(Error::Timeout),
                    }
                }
            };
            return match result {
                Ok((session_present, properties)) => Ok(ConnectInfo {
                    session_present,
                    properties,
                }),
                Err(f) if f.code == errors::COMMAND_IGNORED => {
                    if Instant::now() + RETRY_PAUSE >= deadline {
                        return Err(Error::Timeout);
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                Err(f) => Err(errors::from_connect_failure(f)),
            };
        }
    }

    /// Runs `send` (which hands one or more commands to Paho) directly, or on the engine
    /// thread while a connect in the process may be holding Paho's mutex for long. Run
    /// directly, the commands are registered with `ticket` and the call is armed; on the
    /// engine thread, without (the caller's timer covers the wait for that thread too).
    fn call(
        &self,
        ticket: Option<&Ticket<'_>>,
        send: impl FnOnce(&Inner, Option<&Ticket<'_>>) -> Result<Handed, Error> + Send + 'static,
    ) -> Call {
        if !hooks::slow_connect_in_flight() {
            let mut call = Call::sent(send(&self.0, ticket));
            call.armed = ticket.is_some();
            return call;
        }
        let inner = self.0.clone();
        match thread::submit_withdrawable(move || send(&inner, None)) {
            Ok((rx, withdraw)) => Call::queued(rx, withdraw),
            Err(e) => Call::sent(Err(e)),
        }
    }

    /// Hands one command to Paho under a fresh registry key.
    fn one(
        inner: &Inner,
        ticket: Option<&Ticket<'_>>,
        send: impl FnOnce(registry::Key) -> Result<i32, Error>,
    ) -> Result<slot::Receiver, Error> {
        Engine::hand(inner, registry::register(inner.id, ticket), send)
    }

    /// Hands one command to Paho under `registered` (`None`: its ticket's scope closed);
    /// the registration is withdrawn if Paho refuses the command.
    fn hand(
        inner: &Inner,
        registered: Option<registry::Registered>,
        send: impl FnOnce(registry::Key) -> Result<i32, Error>,
    ) -> Result<slot::Receiver, Error> {
        let (key, rx) = registered.ok_or_else(closed_scope)?;
        match send(key) {
            Ok(0) => Ok(rx),
            Ok(rc) => {
                registry::cancel(key);
                Err(errors::from_rc(rc, inner.outgoing_limit))
            }
            Err(e) => {
                registry::cancel(key);
                Err(e)
            }
        }
    }

    /// Queues a PUBLISH; the call completes on the acknowledgement its QoS needs.
    fn publish_c(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        props: Option<CProps>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.call(ticket, move |inner, ticket| {
            // A QoS 1/2 publish whose write fails at a loss is resent on resume when the
            // session outlives the link: its call then waits for that (see registry).
            let resumable = qos != QoS::AtMostOnce && inner.client_options.keeps_session();
            let (key, rx) = if qos == QoS::AtMostOnce {
                registry::register_qos0(inner.id, ticket, &inner.progress, payload.len())
            } else {
                registry::register_publish(
                    inner.id,
                    ticket,
                    &inner.progress,
                    payload.len(),
                    resumable,
                )
            }
            .ok_or_else(closed_scope)?;
            let m = paho::Outgoing {
                topic: topic.as_str(),
                payload: &payload,
                qos,
                retain,
                props: props.as_ref(),
            };
            match paho::publish(inner.handle, inner.v5, m, key) {
                Ok((0, packet_id)) => {
                    if resumable {
                        registry::sent(key, packet_id);
                    } else if qos == QoS::AtMostOnce {
                        registry::qos0_sent(inner.id, key);
                    }
                    Ok(rx.into())
                }
                Ok((rc, _)) => {
                    registry::cancel(key);
                    Err(errors::from_rc(rc, inner.outgoing_limit))
                }
                Err(e) => {
                    registry::cancel(key);
                    Err(e)
                }
            }
        })
    }

    /// Queues a SUBSCRIBE for every filter. On MQTT 3 each filter goes in its own
    /// packet: Paho's MQTT 3 success callback does not say how many codes the SUBACK
    /// carried, so a SUBACK with fewer codes than filters would make it read past them.
    /// MQTT 3.1.1 (§3.8.4) makes a multi-filter SUBSCRIBE equivalent to a sequence of
    /// single ones.
    fn subscribe_c(
        &self,
        filters: Vec<(String, SubscribeOptions)>,
        props: Option<CProps>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.call(ticket, move |inner, ticket| {
            let filters: Vec<(CString, SubscribeOptions)> = filters
                .into_iter()
                .map(|(f, o)| {
                    CString::new(f)
                        .map(|f| (f, o))
                        .map_err(|_| Error::InvalidArgument("a filter contains NUL".to_owned()))
                })
                .collect::<Result<_, _>>()?;
            if inner.v5 {
                return Engine::one(inner, ticket, |key| {
                    Ok(paho::subscribe(
                        inner.handle,
                        true,
                        &filters,
                        props.as_ref(),
                        key,
                    ))
                })
                .map(Handed::from);
            }
            filters
                .chunks(1)
                .map(|one| {
                    Engine::one(inner, ticket, |key| {
                        Ok(paho::subscribe(inner.handle, false, one, None, key))
                    })
                })
                .collect()
        })
    }

    /// Queues an UNSUBSCRIBE for every filter.
    fn unsubscribe_c(
        &self,
        filters: Vec<String>,
        props: Option<CProps>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.call(ticket, move |inner, ticket| {
            let filters: Vec<CString> = filters
                .into_iter()
                .map(|f| {
                    CString::new(f)
                        .map_err(|_| Error::InvalidArgument("a filter contains NUL".to_owned()))
                })
                .collect::<Result<_, _>>()?;
            Engine::one(inner, ticket, |key| {
                Ok(paho::unsubscribe(
                    inner.handle,
                    inner.v5,
                    &filters,
                    props.as_ref(),
                    key,
                ))
            })
            .map(Handed::from)
        })
    }

    /// Sends DISCONNECT; the call completes once it is written and the socket closed.
    fn disconnect_c(&self) -> Call {
        self.release_link();
        self.call(None, |inner, _| {
            Engine::send_disconnect(inner, 0).map(Handed::from)
        })
    }

    /// Hands Paho a DISCONNECT (`reason` on MQTT 5) under a registry entry that marks
    /// the client's link down once Paho reports it (see [`pump::Disconnecting`]).
    fn send_disconnect(inner: &Inner, reason: u8) -> Result<slot::Receiver, Error> {
        let registered = registry::register_disconnect(inner.id, &inner.progress);
        Engine::hand(inner, registered, |key| {
            Ok(paho::disconnect(inner.handle, inner.v5, reason, Some(key)))
        })
    }

    /// Queues a DISCONNECT on the engine thread without waiting for it (safe from any
    /// thread, including Paho's callbacks). `reason` is sent on MQTT 5.
    fn close_quietly_c(&self, reason: u8) {
        self.release_link();
        let inner = self.0.clone();
        let queued = thread::submit(move || {
            if paho::is_connected(inner.handle) {
                // No one waits for the reply.
                let _ = Engine::send_disconnect(&inner, reason);
            }
        });
        if let Err(e) = queued {
            crate::logging::log_error!(target: &self.0.hooks.logger, "cannot close the connection: {e}");
        }
    }
}

impl Engine {
    /// The engine is closing the connection: a link handed to Paho is Paho's alone now,
    /// so that its close is the connection's.
    fn release_link(&self) {
        if let Some(relay) = &self.0.relay {
            relay.release();
        }
    }

    /// A connect failed: the endpoint of its link closes if Paho never reached it, and
    /// the link is released. Only for the connect's own link: a close of an earlier
    /// connection must not close the endpoint a reconnect is about to use.
    fn abandon_link(&self) {
        if let Some(relay) = &self.0.relay {
            relay.abandon();
        }
    }
}

/// Converts our properties into Paho's form (after `check` for the packet).
fn c_props(props: Option<&Properties>) -> Result<Option<CProps>, Error> {
    props.map(CProps::new).transpose()
}

impl Driver for Engine {
    fn connect(
        &self,
        clean: bool,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<ConnectInfo, Error>> + Send + '_>> {
        Box::pin(self.connect_logged(clean, deadline))
    }

    fn publish(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        match c_props(props) {
            Ok(props) => self.publish_c(topic, payload, qos, retain, props, ticket),
            Err(e) => Call::failed(e),
        }
    }

    fn subscribe(
        &self,
        filters: Vec<(String, SubscribeOptions)>,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        match c_props(props) {
            Ok(props) => self.subscribe_c(filters, props, ticket),
            Err(e) => Call::failed(e),
        }
    }

    fn unsubscribe(
        &self,
        filters: Vec<String>,
        props: Option<&Properties>,
        ticket: Option<&Ticket<'_>>,
    ) -> Call {
        match c_props(props) {
            Ok(props) => self.unsubscribe_c(filters, props, ticket),
            Err(e) => Call::failed(e),
        }
    }

    fn disconnect(&self) -> Call {
        self.disconnect_c()
    }

    fn close_quietly(&self, reason: u8) {
        self.close_quietly_c(reason);
    }

    fn tls_errors(&self) -> Vec<String> {
        self.0.hooks.tls_errors()
    }
}

/// The receiving end of a CONNECT's outcome. A success delivered to a `connect()` that
/// is then dropped before reading it leaves a connection no session owns: closed here,
/// as the callback closes one that finds no receiver (`Hooks::close_unclaimed`).
struct Outcome {
    rx: oneshot::Receiver<hooks::ConnectOutcome>,
    hooks: Arc<Hooks>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.rx.close();
        if matches!(self.rx.try_recv(), Ok(Ok(_))) {
            self.hooks.close_unclaimed();
        }
    }
}

/// A command refused because its connection is closing (see [`Scope`]): the caller
/// reports the connection's end.
fn closed_scope() -> Error {
    Error::NotConnected
}

fn engine_thread_gone() -> Error {
    Error::Io(std::io::Error::other("the engine thread has stopped"))
}

/// Maps the replies of a publish.
pub(crate) fn publish_result(replies: Replies) -> Result<(), Error> {
    match replies.into_iter().next() {
        Some(Reply::Done(_)) => Ok(()),
        Some(Reply::Failed(f)) => Err(errors::from_failure(f)),
        Some(Reply::Expired) => Err(Error::Timeout),
        Some(Reply::Ended) | None => Err(Error::NotConnected),
    }
}

/// Maps the replies of a subscribe to one code per filter; a refused filter is a
/// code, not an error (as aiomqtt). A SUBACK that does not fit the SUBSCRIBE (another
/// number of codes, a code MQTT does not define) is [`Error::Protocol`].
pub(crate) fn subscribe_result(
    replies: Replies,
    filters: usize,
    v5: bool,
) -> Result<Vec<ReasonCode>, Error> {
    let mut codes = Vec::with_capacity(filters);
    for reply in replies {
        match reply {
            Reply::Done(r) => codes.extend(r.codes.into_iter().map(ReasonCode::from)),
            // A refused single filter: Paho reports it as a failure (MQTT 5: with its
            // reason code; MQTT 3: with code 0x80).
            Reply::Failed(f) if f.reason.is_some() => {
                codes.push(ReasonCode::from(f.reason.unwrap_or(0x80)))
            }
            Reply::Failed(f) if f.code == errors::BAD_SUBSCRIBE => {
                codes.push(ReasonCode::UNSPECIFIED_ERROR)
            }
            Reply::Failed(f) => return Err(errors::from_failure(f)),
            Reply::Expired => return Err(Error::Timeout),
            Reply::Ended => return Err(Error::NotConnected),
        }
    }
    if codes.len() != filters {
        return Err(Error::Protocol(format!(
            "the broker's SUBACK carried {} codes for {filters} filters",
            codes.len()
        )));
    }
    if let Some(bad) = codes.iter().find(|c| !suback_code_defined(c.value(), v5)) {
        return Err(Error::Protocol(format!(
            "the broker's SUBACK carried the code {:#04x}, which MQTT does not define",
            bad.value()
        )));
    }
    Ok(codes)
}

/// The SUBACK codes MQTT defines: a granted QoS, or a failure (3.1.1: 0x80 only;
/// 5: table 3-8).
fn suback_code_defined(code: u8, v5: bool) -> bool {
    match code {
        0..=2 | 0x80 => true,
        0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2 => v5,
        _ => false,
    }
}

/// The keep-alive the options ask for, in seconds (build() checked it is 0..=65535 whole
/// seconds).
fn requested_keepalive(options: &Options) -> u16 {
    u16::try_from(options.keepalive.as_secs()).unwrap_or(u16::MAX)
}

/// Maps the replies of an unsubscribe of `filters` filters: the UNSUBACK's reason codes
/// on MQTT 5, one per filter (none on 3.x, whose UNSUBACK has none). A refusal of a
/// single filter comes as Paho's failure, with its reason code.
pub(crate) fn unsubscribe_result(
    replies: Replies,
    filters: usize,
    v5: bool,
) -> Result<Vec<ReasonCode>, Error> {
    let mut codes = Vec::new();
    for reply in replies {
        match reply {
            Reply::Done(r) => codes.extend(r.codes.into_iter().map(ReasonCode::from)),
            Reply::Failed(f) => return Err(errors::from_failure(f)),
            Reply::Expired => return Err(Error::Timeout),
            Reply::Ended => return Err(Error::NotConnected),
        }
    }
    if !v5 {
        return Ok(Vec::new());
    }
    if codes.len() != filters {
        return Err(Error::Protocol(format!(
            "the broker's UNSUBACK carried {} codes for {filters} filters",
            codes.len()
        )));
    }
    if let Some(bad) = codes.iter().find(|c| !unsuback_code_defined(c.value())) {
        return Err(Error::Protocol(format!(
            "the broker's UNSUBACK carried the code {:#04x}, which MQTT 5 does not define",
            bad.value()
        )));
    }
    Ok(codes)
}

/// The UNSUBACK reason codes MQTT 5 defines (table 3-9).
fn unsuback_code_defined(code: u8) -> bool {
    matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91)
}

/// Maps the replies of a disconnect: an already closed connection is fine.
pub(crate) fn disconnect_result(replies: Replies) -> Result<(), Error> {
    match replies.into_iter().next() {
        Some(Reply::Failed(f)) if f.code != errors::DISCONNECTED => Err(errors::from_failure(f)),
        _ => Ok(()),
    }
}
