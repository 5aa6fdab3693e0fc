//! Per-connection state shared by the engine's callbacks, the [`Connection`]
//! handles and every in-flight operation.
//!
//! [`Connection`]: crate::Connection

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{Notify, Semaphore};

use crate::client::ClientShared;
use crate::engine::{Engine, Events};
use crate::incoming::Queue;
use crate::options::Options;
use crate::{Error, Message, Properties, ReasonCode};

/// Why a connection ended.
#[derive(Debug, Clone)]
pub(crate) enum EndCause {
    /// Lost: by the network, or a DISCONNECT from the broker (with its code).
    Lost {
        rc: Option<ReasonCode>,
        detail: String,
    },
    /// Closed by this client (`disconnect()` or the last handle dropped).
    Closed,
}

impl EndCause {
    pub(crate) fn to_error(&self) -> Error {
        match self {
            EndCause::Lost { rc, detail } => Error::ConnectionLost {
                rc: *rc,
                detail: detail.clone(),
            },
            EndCause::Closed => Error::NotConnected,
        }
    }
}

/// What CONNACK established.
pub(crate) struct Established {
    pub(crate) identifier: String,
    pub(crate) session_present: bool,
    pub(crate) properties: Option<Properties>,
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

pub(crate) struct Session {
    /// The claim generation of the client that this connection holds.
    pub(crate) generation: u64,
    pub(crate) engine: Arc<Engine>,
    pub(crate) queue: Queue,
    pub(crate) calls: Calls,
    pub(crate) established: OnceLock<Established>,
    /// Released when the connection ends.
    pub(crate) guards: Mutex<Option<crate::engine::ConnectionGuards>>,
    pub(crate) logger: Arc<str>,
    pub(crate) options: Arc<Options>,
    /// Set once by the first `end()`; `ended` becomes visible only after the
    /// client has been released.
    ending: AtomicBool,
    ended: AtomicBool,
    end_cause: OnceLock<EndCause>,
    end_notify: Notify,
    client: Weak<ClientShared>,
    router: Arc<Router>,
}

impl Session {
    pub(crate) fn new(
        generation: u64,
        engine: Arc<Engine>,
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
            established: OnceLock::new(),
            guards: Mutex::new(None),
            logger,
            options,
            ending: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            end_cause: OnceLock::new(),
            end_notify: Notify::new(),
            client,
            router,
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// `Err(NotConnected)` once the connection has ended.
    pub(crate) fn check_live(&self) -> Result<(), Error> {
        if self.is_ended() {
            Err(Error::NotConnected)
        } else {
            Ok(())
        }
    }

    /// Resolves with the error an operation should fail with once the connection ends.
    pub(crate) async fn ended(&self) -> Error {
        let notified = self.end_notify.notified();
        if !self.is_ended() {
            notified.await;
        }
        self.end_error()
    }

    /// The error for an operation cut short by the end of the connection.
    pub(crate) fn end_error(&self) -> Error {
        self.end_cause
            .get()
            .map_or(Error::NotConnected, EndCause::to_error)
    }

    /// Counts a pending call, warning above the threshold as aiomqtt does.
    pub(crate) fn enter_call(&self) -> PendingGuard<'_> {
        let pending = self.calls.pending.fetch_add(1, Ordering::Relaxed) + 1;
        if pending > self.calls.threshold {
            log::warn!(target: &self.logger, "There are {pending} pending publish calls.");
        }
        PendingGuard(&self.calls.pending)
    }

    /// Ends the connection once: wakes waiting operations, closes the queue,
    /// detaches from the router and frees the client for the next `connect()`.
    /// Never calls into the engine (it may run on Paho's thread).
    ///
    /// The client is released before anything can observe the end, so whoever
    /// sees it (a consumer getting the `Err`, `is_connected()` turning false) can
    /// `connect()` again at once.
    pub(crate) fn end(&self, cause: EndCause) -> bool {
        if self.ending.swap(true, Ordering::AcqRel) {
            return false;
        }
        let _ = self.end_cause.set(cause.clone());
        drop(self.guards.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.router.detach(self);
        // After a loss, Paho goes on tearing the handle down after our callback
        // (MQTTAsyncUtils.c: the `disconnected` callback, then nextOrClose()), while a
        // reconnect on the same handle replaces the connect options it still uses:
        // seen crashing the process after a broker DISCONNECT. A lost connection's
        // engine is retired; the reconnect gets a fresh one.
        let retire = matches!(cause, EndCause::Lost { .. }).then_some(&self.engine);
        if let Some(client) = self.client.upgrade() {
            client.release(self.generation, retire);
        }
        self.ended.store(true, Ordering::Release);
        self.end_notify.notify_waiters();
        let queue_cause = match cause {
            EndCause::Lost { rc, detail } => Error::ConnectionLost { rc, detail },
            EndCause::Closed => Error::Closed,
        };
        self.queue.close(queue_cause);
        true
    }

    /// Ends the connection from our side, sending DISCONNECT first so that a
    /// following `connect()` is queued behind it. Returns the DISCONNECT's future.
    pub(crate) fn close(
        &self,
    ) -> Option<impl std::future::Future<Output = Result<(), Error>> + Send + use<>> {
        if self.ending.load(Ordering::Acquire) {
            return None;
        }
        let disconnect = self.engine.disconnect().ok();
        self.end(EndCause::Closed);
        disconnect
    }
}

/// Routes the engine's events to the connection currently using it.
#[derive(Default)]
pub(crate) struct Router {
    current: Mutex<Option<Arc<Session>>>,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Session>>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn attach(&self, session: Arc<Session>) {
        *self.lock() = Some(session);
    }

    /// Detaches `session` if it is the current one.
    pub(crate) fn detach(&self, session: &Session) {
        let mut current = self.lock();
        if current.as_deref().is_some_and(|s| std::ptr::eq(s, session)) {
            // Dropped outside the lock: it may be the last reference.
            let old = current.take();
            drop(current);
            drop(old);
        }
    }
}

impl Events for Router {
    fn message(&self, message: Message) {
        // Pushed under the router's lock: no reference count traffic per message.
        if let Some(session) = self.lock().as_deref() {
            session.queue.push(message);
        }
    }

    fn lost(&self, rc: Option<ReasonCode>, detail: String) {
        let session = self.lock().clone();
        if let Some(session) = session {
            log::warn!(target: &session.logger, "Unexpected disconnection: {}", EndCause::Lost { rc, detail: detail.clone() }.to_error());
            session.end(EndCause::Lost { rc, detail });
        }
    }
}
