//! Per-connection state shared by the engine's callbacks, the [`Connection`] handles,
//! the reconnect supervisor and every in-flight operation.
//!
//! A session lives from `Client::connect()` until the connection ends: `disconnect()`,
//! the last handle dropped, or — without automatic reconnects — the first loss. With
//! automatic reconnects a loss only takes the *link* down; the session, its queue and
//! its subscriptions carry on.
//!
//! Everything here may run on a Paho thread (through the [`Router`]): it takes only
//! leaf locks and never calls the engine except to queue work.
//!
//! [`Connection`]: crate::Connection

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{Semaphore, broadcast, watch};
use tokio::time::Instant;

use crate::client::ClientShared;
use crate::end::{End, EndCause};
use crate::engine::{ConnectInfo, Driven, Events, LinkEnd, Loss, Scope};
use crate::incoming::Queue;
use crate::options::Options;
use crate::reconnect::ConnectionEvent;
use crate::{Error, Message, Properties, ReasonCode, SubscribeOptions};

/// What a CONNACK established.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) identifier: String,
    pub(crate) session_present: bool,
    pub(crate) properties: Option<Properties>,
}

/// The link to the broker: up with its CONNACK, or down; `epoch` counts losses.
#[derive(Clone, Default)]
pub(crate) struct Link {
    pub(crate) up: Option<Arc<Established>>,
    pub(crate) epoch: u64,
    /// A loss of a connection not marked up yet (between its CONNACK and `link_up`): the
    /// connect or reconnect that was bringing it up reports it.
    early_loss: Option<Arc<Error>>,
}

/// Bounds and counts outgoing calls.
pub(crate) struct Calls {
    pub(crate) slots: Option<Semaphore>,
    pending: AtomicUsize,
    threshold: usize,
}

/// Counts one pending call while alive.
pub(crate) struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One subscribe call, kept to subscribe again when a reconnect finds no session.
#[derive(Clone)]
pub(crate) struct Subscription {
    pub(crate) filters: Vec<(String, SubscribeOptions)>,
    pub(crate) properties: Option<Properties>,
}

pub(crate) struct Session {
    /// The claim generation of the client that this connection holds.
    pub(crate) generation: u64,
    pub(crate) engine: Driven,
    pub(crate) queue: Queue,
    pub(crate) calls: Calls,
    /// The line of calls on their way to the engine (`ops::admission`).
    pub(crate) admission: Arc<crate::engine::Admission>,
    pub(crate) logger: Arc<str>,
    pub(crate) options: Arc<Options>,
    pub(crate) end: End,
    /// This connection's calls in the engine's registry: closed at the end when calls
    /// fail at the end ([`Session::calls_fail_at_end`]).
    pub(crate) scope: Scope,
    link: watch::Sender<Link>,
    /// The latest CONNACK, kept while the link is down.
    last: Mutex<Option<Arc<Established>>>,
    /// When the link last came up.
    up_since: Mutex<Instant>,
    /// The broker's limits of the current link (MQTT 5 CONNACK).
    pub(crate) limits: crate::limits::LimitCell,
    /// A QoS 2 publish completed on this connection (the broker has QoS 2).
    pub(crate) qos2_confirmed: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<ConnectionEvent>,
    subscriptions: Mutex<Vec<Subscription>>,
    client: Weak<ClientShared>,
    router: Arc<Router>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a few assignments: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Connection events kept for slow readers of `Connection::events()`.
const EVENTS: usize = 64;

impl Session {
    pub(crate) fn new(
        generation: u64,
        engine: Driven,
        router: Arc<Router>,
        client: Weak<ClientShared>,
        options: Arc<Options>,
    ) -> Session {
        let logger: Arc<str> = Arc::from(options.logger.as_str());
        Session {
            generation,
            engine,
            queue: Queue::new(
                options.queue_type,
                options.max_queued_incoming_messages,
                logger.clone(),
            ),
            calls: Calls {
                slots: options.max_concurrent_outgoing_calls.map(Semaphore::new),
                pending: AtomicUsize::new(0),
                threshold: options.pending_calls_threshold,
            },
            // Not bounded here when the user bounds the engine's queue (its refusals are
            // that option's contract).
            admission: Arc::new(crate::engine::Admission::new(
                options
                    .max_queued_outgoing_messages
                    .is_none()
                    .then(|| options.window()),
                options.qos2_window(),
            )),
            logger,
            options,
            end: End::new(),
            scope: Scope::new(),
            link: watch::Sender::new(Link::default()),
            last: Mutex::new(None),
            up_since: Mutex::new(Instant::now()),
            limits: crate::limits::LimitCell::new(),
            qos2_confirmed: std::sync::atomic::AtomicBool::new(false),
            events: broadcast::Sender::new(EVENTS),
            subscriptions: Mutex::new(Vec::new()),
            client,
            router,
        }
    }

    /// `true` with automatic reconnects: a loss takes the link down, not the session.
    pub(crate) fn reconnects(&self) -> bool {
        self.options.reconnect.is_some()
    }

    /// Whether a call still waiting for the broker fails as soon as the connection
    /// ends. Only when no later connection can complete it: no automatic reconnects,
    /// and the next `connect()` starts clean (the engine is retired at the loss).
    /// Otherwise the call stays pending, as Paho does: the resumed session completes
    /// it, or its timeout ends the wait.
    pub(crate) fn calls_fail_at_end(&self) -> bool {
        !self.reconnects() && !self.options.resumes_on_connect()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.end.is_ended()
    }

    pub(crate) fn is_ending(&self) -> bool {
        self.end.is_ending()
    }

    /// `Err(NotConnected)` for a call made once the connection has ended (or is ending).
    pub(crate) fn check_live(&self) -> Result<(), Error> {
        if self.end.is_ending() {
            Err(Error::NotConnected)
        } else {
            Ok(())
        }
    }

    /// The error for an operation cut short by the end of the connection.
    pub(crate) fn end_error(&self) -> Error {
        self.end
            .cause()
            .map_or(Error::NotConnected, |c| c.to_error())
    }

    /// Resolves with the error an operation should fail with once the connection ends.
    pub(crate) async fn ended(&self) -> Error {
        self.end.wait().await.to_error()
    }

    /// The latest CONNACK (the link may be down since).
    pub(crate) fn established(&self) -> Option<Arc<Established>> {
        lock(&self.last).clone()
    }

    /// The link's state, to wait on.
    pub(crate) fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// `true` while the link is up.
    pub(crate) fn is_up(&self) -> bool {
        self.link.borrow().up.is_some()
    }

    /// Marks the link up after a CONNACK, unless a loss came since `epoch`: then returns
    /// that loss. `connected` is emitted with the change, under the link's lock, so that a
    /// loss racing with it is emitted after it, never before.
    pub(crate) fn link_up(
        &self,
        info: ConnectInfo,
        epoch: u64,
        connected: Option<ConnectionEvent>,
    ) -> Result<(), Arc<Error>> {
        let identifier = info
            .properties
            .as_ref()
            .and_then(|p| p.assigned_client_identifier.clone())
            .or_else(|| self.client.upgrade().map(|c| c.identifier().to_owned()))
            .unwrap_or_default();
        // Paho lowers its window to the broker's Receive Maximum (MQTT 5).
        let receive_maximum = info.properties.as_ref().and_then(|p| p.receive_maximum);
        self.admission.set_window(
            receive_maximum.map_or(self.options.window(), |r| r.min(self.options.window())),
        );
        // Set before the link is up: no call sees the link without its limits.
        self.limits.set(info.properties.as_ref().map_or(
            crate::limits::Limits::NONE,
            crate::limits::Limits::from_connack,
        ));
        let established = Arc::new(Established {
            identifier,
            session_present: info.session_present,
            properties: info.properties,
        });
        *lock(&self.last) = Some(established.clone());
        let mut early_loss = None;
        let updated = self.link.send_if_modified(|link| {
            if link.epoch != epoch {
                early_loss = link.early_loss.take();
                return false;
            }
            link.up = Some(established);
            link.early_loss = None;
            if let Some(event) = connected {
                self.emit(event);
            }
            true
        });
        if !updated {
            return Err(early_loss.unwrap_or_else(|| {
                Arc::new(Error::ConnectionLost {
                    rc: None,
                    detail: "the connection was lost as it was established".to_owned(),
                })
            }));
        }
        *lock(&self.up_since) = Instant::now();
        Ok(())
    }

    /// The current loss epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.link.borrow().epoch
    }

    /// When the link last came up.
    pub(crate) fn up_since(&self) -> Instant {
        *lock(&self.up_since)
    }

    /// Counts a pending call, warning above the threshold as aiomqtt does.
    pub(crate) fn enter_call(&self) -> PendingGuard<'_> {
        let pending = self.calls.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if pending > self.calls.threshold {
            crate::logging::log_warn!(target: &self.logger, "There are {pending} pending publish calls.");
        }
        PendingGuard(&self.calls.pending)
    }

    fn pending_calls(&self) -> usize {
        self.calls.pending.load(Ordering::Relaxed)
    }

    /// Emits a connection event to every `ConnectionEvents` reader.
    pub(crate) fn emit(&self, event: ConnectionEvent) {
        // No reader is fine.
        let _ = self.events.send(event);
    }

    pub(crate) fn subscribe_events(&self) -> broadcast::Receiver<ConnectionEvent> {
        self.events.subscribe()
    }

    /// Remembers a successful subscribe, to repeat it when a reconnect finds no session.
    pub(crate) fn record_subscribe(&self, subscription: Subscription) {
        if self.reconnects() {
            lock(&self.subscriptions).push(subscription);
        }
    }

    /// Forgets unsubscribed filters.
    pub(crate) fn record_unsubscribe(&self, filters: &[String]) {
        if self.reconnects() {
            let mut subs = lock(&self.subscriptions);
            for sub in subs.iter_mut() {
                sub.filters.retain(|(f, _)| !filters.contains(f));
            }
            subs.retain(|s| !s.filters.is_empty());
        }
    }

    pub(crate) fn subscriptions(&self) -> Vec<Subscription> {
        lock(&self.subscriptions).clone()
    }

    /// The link was lost (from a Paho callback, or the engine's own protocol check).
    /// Without automatic reconnects, or when the broker gave the session to another
    /// client (MQTT 5: 0x8E — reconnecting would take it back, and the other client
    /// would do the same), this ends the connection; otherwise the supervisor
    /// reconnects.
    pub(crate) fn link_lost(&self, cause: EndCause) {
        if self.end.is_ending() {
            return;
        }
        let error = cause.to_error();
        crate::logging::log_warn!(target: &self.logger, "Unexpected disconnection: {error}");
        let taken_over = matches!(cause, EndCause::Lost { rc: Some(rc), .. } if rc == ReasonCode::SESSION_TAKEN_OVER);
        if !self.reconnects() || taken_over {
            self.end(cause);
            return;
        }
        // `Lost` under the link's lock: after the `Connected` of the connection it ends
        // (`link_up`), and before the supervisor, woken when the lock is released, emits
        // `Reconnecting`. A connection not marked up yet was never reported connected: its
        // loss goes to the connect that was bringing it up.
        let cause = Arc::new(error);
        self.link.send_modify(|link| {
            if link.up.take().is_some() {
                self.emit(ConnectionEvent::Lost { cause });
            } else {
                link.early_loss = Some(cause);
            }
            link.epoch += 1;
        });
    }

    /// Ends the connection once: closes the queue, detaches from the router, frees the
    /// client for the next `connect()`, then makes the end visible. Never calls into
    /// the engine (it may run on Paho's thread).
    ///
    /// The engine is retired (the next `connect()` gets a fresh Paho client) when Paho
    /// may still hold commands of this connection that nobody should see completed
    /// later: a clean session that ended by a loss, or was closed with calls pending.
    pub(crate) fn end(&self, cause: EndCause) -> bool {
        let clean = !self.options.resumes_on_connect();
        let retire = clean
            && match cause {
                EndCause::Closed => self.pending_calls() > 0,
                _ => true,
            };
        // The end begins and the client is freed in one step (under the client's lock):
        // an application that sees this connection ending — a call failed with the loss,
        // or its handles' drop found the end begun — can connect again at once.
        let begun = match self.client.upgrade() {
            Some(client) => {
                client.end_connection(self.generation, retire.then_some(&self.engine), || {
                    self.end.begin()
                })
            }
            None => self.end.begin(),
        };
        if !begun {
            return false;
        }
        self.link.send_modify(|link| {
            link.up = None;
            link.epoch += 1;
        });
        // What arrives from here on belongs to this ended connection: not kept.
        self.router.detach(self, false);
        self.queue.close(cause.to_stream_error());
        self.end.finish(cause);
        // After the cause is visible: the calls whose waits this ends read it.
        if self.calls_fail_at_end() {
            self.scope.close();
        }
        true
    }

    /// Ends the connection from our side, sending DISCONNECT first so that a following
    /// `connect()` is queued behind it. Returns the DISCONNECT call, or `None` if the
    /// connection had already ended.
    pub(crate) fn close(&self) -> Option<crate::engine::Call> {
        if self.end.is_ending() {
            return None;
        }
        let disconnect = self.engine.disconnect();
        self.end(EndCause::Closed);
        Some(disconnect)
    }
}

/// Routes the engine's callbacks to the current session of a client. One per engine;
/// sessions attach on `connect()` and detach when they end.
#[derive(Default)]
pub(crate) struct Router {
    current: Mutex<Routed>,
}

#[derive(Default)]
struct Routed {
    session: Option<Arc<Session>>,
    /// Whether the attached session's CONNECT has gone out. Until then what arrives is
    /// the engine's earlier connection's, still closing: dropped, unless `keep_strays`.
    connecting: bool,
    /// Whether messages of an earlier connection are kept: only after a persistent
    /// session's `connect()` gave up while the engine may still finish it (the same
    /// session, resumed by the next `connect()`).
    keep_strays: bool,
    /// Those messages. The CONNACK can come after `connect()` gave up: the broker then
    /// sends the messages it stored, which the engine has acknowledged by the time they
    /// reach us, until the engine's DISCONNECT of that stray connection goes out.
    orphans: Vec<Message>,
    /// Messages of an ended connection that came before its DISCONNECT went out: dropped
    /// (its queue's messages are dropped with it), counted for the next attach's record.
    dropped: usize,
}

impl Router {
    /// Attaches `session`, handing it first the messages that came while none was.
    pub(crate) fn attach(&self, session: Arc<Session>) {
        let mut routed = lock(&self.current);
        // Under the lock, so that they come before any message the engine hands over next.
        // Paho's receive thread may wait for this lock: a full queue's warnings are queued
        // for the log thread, not written to the application's logger here.
        let orphans = std::mem::take(&mut routed.orphans);
        let kept = orphans.len();
        let dropped = std::mem::take(&mut routed.dropped);
        {
            let _defer = crate::logging::DeferOnThisThread::new();
            for message in orphans {
                session.queue.push(message);
            }
        }
        let logger = session.logger.clone();
        routed.session = Some(session);
        routed.connecting = false;
        drop(routed);
        if kept > 0 {
            crate::logging::log_info!(
                target: &logger,
                "{kept} messages arrived after an earlier connect() gave up: delivered first"
            );
        }
        if dropped > 0 {
            crate::logging::log_debug!(
                target: &logger,
                "{dropped} messages arrived after the previous connection ended: dropped"
            );
        }
    }

    /// Detaches `session` if it is the current one. With `keep_strays`, the messages it
    /// has not handed out, and those that arrive before the next session's CONNECT, are
    /// kept for the next session (see [`Routed`]).
    pub(crate) fn detach(&self, session: &Session, keep_strays: bool) {
        let mut routed = lock(&self.current);
        if routed
            .session
            .as_deref()
            .is_some_and(|s| std::ptr::eq(s, session))
        {
            routed.keep_strays = keep_strays;
            if keep_strays {
                // Acknowledged by the engine already: the next connect() hands them out.
                let queued = session.queue.take_all();
                routed.orphans.splice(0..0, queued);
            }
            // Dropped outside the lock: it may be the last reference.
            let old = routed.session.take();
            drop(routed);
            drop(old);
        }
    }
}

impl Events for Router {
    fn message(&self, message: Message) {
        // Pushed under the router's lock (the queue's lock nests inside it, and nothing
        // else is taken): no reference count traffic per message.
        let mut routed = lock(&self.current);
        let current = routed.connecting || routed.keep_strays;
        match routed.session.as_deref() {
            Some(session) if current => session.queue.push(message),
            None if routed.keep_strays => routed.orphans.push(message),
            _ => routed.dropped += 1,
        }
    }

    fn connect_started(&self) {
        lock(&self.current).connecting = true;
    }

    fn lost(&self, loss: Loss) {
        let session = lock(&self.current).session.clone();
        let Some(session) = session else { return };
        let cause = match loss {
            Loss::Disconnect { reason, properties } => EndCause::Lost {
                rc: Some(reason),
                detail: properties.reason_string.unwrap_or_default(),
            },
            Loss::Network(end) => EndCause::Lost {
                rc: None,
                detail: match end {
                    None => "the network connection ended (closed or reset by the broker or \
                             the network, or a keep-alive timeout: the engine does not say \
                             which on a direct connection)"
                        .to_owned(),
                    Some(LinkEnd::PeerClosed) => "the broker closed the connection".to_owned(),
                    Some(LinkEnd::PeerEnded) => "the broker or the network ended the connection \
                             (closed or reset)"
                        .to_owned(),
                    Some(LinkEnd::Failed(e)) => format!("the connection to the broker failed: {e}"),
                    Some(LinkEnd::EngineClosed) => "the client closed the connection: no answer \
                             from the broker within 1.5 x keepalive (keep-alive timeout), or a \
                             protocol error"
                        .to_owned(),
                },
            },
            Loss::Malformed(what) => EndCause::Protocol(what),
        };
        session.link_lost(cause);
    }
}
