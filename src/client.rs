//! The [`Client`]: configuration plus the reusable-but-not-reentrant connect.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::connection::{Connection, ConnectionHandle};
use crate::engine::{self, Driven, Engine};
use crate::options::Options;
use crate::session::{Router, Session};
use crate::{ClientBuilder, Error, ProtocolVersion};

/// An MQTT client: the configuration of connections to one broker.
///
/// Cheap to clone; clones are the same client. It is **reusable but not
/// reentrant**: [`connect`](Client::connect) fails with [`Error::Reentrant`] while a
/// [`Connection`] from it is alive, and works again once that connection has ended.
///
/// ```no_run
/// # async fn demo() -> Result<(), aiomqtt::Error> {
/// let client = aiomqtt::Client::new("localhost");
/// let conn = client.connect().await?;
/// conn.publish("greetings", "hello").await?;
/// conn.disconnect().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    shared: Arc<ClientShared>,
}

pub(crate) struct ClientShared {
    options: Arc<Options>,
    identifier: String,
    state: Mutex<ClientState>,
    /// Unit tests: every engine this client makes is this fake one.
    #[cfg(test)]
    fake: Mutex<Option<crate::engine::fake::FakeEngine>>,
}

#[derive(Default)]
struct ClientState {
    /// A `connect()` or a connection holds the client.
    busy: bool,
    /// Bumped by every claim; a session only releases its own.
    generation: u64,
    /// The engine and its router, kept across connections: with a persistent session
    /// the engine holds the session state (unacknowledged messages) between them.
    slot: Option<Slot>,
}

#[derive(Clone)]
struct Slot {
    engine: Driven,
    router: Arc<Router>,
}

impl ClientShared {
    /// A leaf lock: nothing is called while it is held.
    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identifier sent in CONNECT.
    pub(crate) fn identifier(&self) -> &str {
        &self.identifier
    }

    /// Ends the connection of `generation` if `begin` says it is the first to: frees
    /// the client under its lock, so that whoever sees the end begun and then calls
    /// `connect()` finds the client free. With `retire`, that engine is not reused: the
    /// next `connect()` makes a new one. `begin` must be quick and take no lock.
    pub(crate) fn end_connection(
        &self,
        generation: u64,
        retire: Option<&Driven>,
        begin: impl FnOnce() -> bool,
    ) -> bool {
        let mut state = self.lock();
        if !begin() {
            return false;
        }
        let retired = match (retire, &state.slot) {
            (Some(engine), Some(slot)) if Arc::ptr_eq(engine, &slot.engine) => state.slot.take(),
            _ => None,
        };
        if state.generation == generation {
            state.busy = false;
        }
        drop(state);
        // Dropped outside the lock; dropping an engine only queues its destruction.
        drop(retired);
        true
    }

    /// Frees the client after the connection of `generation` ended.
    pub(crate) fn release(&self, generation: u64, retire: Option<&Driven>) {
        self.end_connection(generation, retire, || true);
    }
}

/// Holds the client during `connect()`; dropped early (error, timeout, or the future
/// cancelled) it detaches the session and frees the client. An engine whose CONNECT
/// Paho may still be working on is retired, unless it holds a persistent session (then
/// the next `connect()` waits for that attempt to finish).
struct Claim<'a> {
    shared: &'a Arc<ClientShared>,
    generation: u64,
    /// The engine and session of the CONNECT in progress.
    started: Option<(Slot, Arc<Session>)>,
    /// Paho finished the attempt (with an error): its engine stays usable.
    engine_finished: bool,
    /// The CONNACK accepted the connection and the facade refused it (a protocol
    /// violation): the broker may have sent the session's messages meanwhile.
    connack_refused: bool,
    done: bool,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let resumes = self.shared.options.resumes_on_connect();
        let retire = self.started.as_ref().and_then(|(slot, session)| {
            // Paho may still finish a persistent session's attempt, or finished it with a
            // CONNACK refused here: what the broker sent the session is kept for the next
            // connect().
            let strays = resumes && (!self.engine_finished || self.connack_refused);
            slot.router.detach(session, strays);
            (!self.engine_finished && !resumes).then_some(&slot.engine)
        });
        self.shared.release(self.generation, retire);
    }
}

impl Client {
    /// A client for `hostname` with every option at its default.
    /// A bad hostname is reported by [`connect`](Client::connect).
    pub fn new(hostname: impl Into<String>) -> Client {
        Client::from_options(ClientBuilder::new(hostname).into_options())
    }

    /// A builder to set options, named after aiomqtt's keywords.
    pub fn builder(hostname: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(hostname)
    }

    pub(crate) fn from_options(options: Options) -> Client {
        let identifier = match &options.identifier {
            Some(id) => id.clone(),
            // MQTT 3.1 requires an identifier; 3.1.1 and 5 let the broker assign one.
            None if options.protocol == ProtocolVersion::V31 => random_identifier(),
            None => String::new(),
        };
        Client {
            shared: Arc::new(ClientShared {
                options: Arc::new(options),
                identifier,
                state: Mutex::new(ClientState::default()),
                #[cfg(test)]
                fake: Mutex::new(None),
            }),
        }
    }

    /// The client identifier sent in CONNECT (empty if the broker assigns it;
    /// see [`Connection::identifier`] for the assigned one).
    pub fn identifier(&self) -> &str {
        &self.shared.identifier
    }

    /// The default timeout of operations.
    pub fn timeout(&self) -> Duration {
        self.shared.options.timeout
    }

    /// Above this many pending calls a warning is logged.
    pub fn pending_calls_threshold(&self) -> usize {
        self.shared.options.pending_calls_threshold
    }

    /// Connects: CONNECT, then waits for CONNACK within the client's `timeout`.
    ///
    /// Fails with [`Error::Reentrant`] while another connection of this client is
    /// alive; [`Error::Connect`] carries a refused CONNACK's reason code. Any failure
    /// leaves the client ready for the next `connect()`.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let mut claim = self.claim()?;
        let options = &self.shared.options;
        let deadline = crate::deadline::after(options.timeout);

        engine::preflight(options, deadline).await?;
        let slot = self.slot(deadline).await?;
        let session = Arc::new(Session::new(
            claim.generation,
            slot.engine.clone(),
            slot.router.clone(),
            Arc::downgrade(&self.shared),
            options.clone(),
        ));
        slot.router.attach(session.clone());
        claim.started = Some((slot.clone(), session.clone()));

        let epoch = session.epoch();
        let info = match slot.engine.connect(options.clean_flag(), deadline).await {
            Ok(info) => info,
            Err(e) => {
                // Only our own deadline leaves Paho's attempt running.
                claim.engine_finished = !e.is_timeout();
                claim.connack_refused = matches!(e, Error::Protocol(_));
                return Err(match e {
                    // The engine's own connect failure: tell which it was.
                    e @ Error::Engine { .. } => {
                        let report = engine::Report {
                            error: e,
                            tls_lines: slot.engine.tls_errors(),
                        };
                        engine::diagnose(options, report, deadline).await
                    }
                    // A refusal by CONNACK, our own deadline, or one of ours says it all.
                    e => e,
                });
            }
        };
        // Lost since its CONNACK: without reconnects the connection has ended; with them
        // the supervisor finds the link down and reconnects. No event reader exists yet.
        let _ = session.link_up(info, epoch, None);
        claim.done = true;
        if let Some(policy) = &options.reconnect {
            crate::reconnect::supervise(&session, policy.clone());
        }
        Ok(Connection::new(Arc::new(ConnectionHandle { session })))
    }

    fn claim(&self) -> Result<Claim<'_>, Error> {
        let mut state = self.shared.lock();
        if state.busy {
            return Err(Error::Reentrant);
        }
        state.busy = true;
        state.generation += 1;
        Ok(Claim {
            shared: &self.shared,
            generation: state.generation,
            started: None,
            engine_finished: false,
            connack_refused: false,
            done: false,
        })
    }

    /// The current engine, created on first use (or after one was retired), outside
    /// the state lock (creating waits for Paho's mutex on the engine thread).
    async fn slot(&self, deadline: tokio::time::Instant) -> Result<Slot, Error> {
        if let Some(slot) = &self.shared.lock().slot {
            return Ok(slot.clone());
        }
        let router = Arc::new(Router::default());
        #[cfg(test)]
        {
            let fake = self
                .shared
                .fake
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(fake) = fake {
                fake.report_to(router.clone());
                let fresh = Slot {
                    engine: Arc::new(fake),
                    router,
                };
                return Ok(self.shared.lock().slot.get_or_insert(fresh).clone());
            }
        }
        let engine = Engine::create(
            &self.shared.options,
            &self.shared.identifier,
            router.clone(),
            deadline,
        )
        .await?;
        let fresh = Slot {
            engine: Arc::new(engine),
            router,
        };
        // Only this claim's holder creates slots, so the slot is still empty.
        Ok(self.shared.lock().slot.get_or_insert(fresh).clone())
    }
}

#[cfg(test)]
impl Client {
    /// A client whose engines are `fake` (unit tests of the facade).
    pub(crate) fn with_fake_engine(
        builder: ClientBuilder,
        fake: &crate::engine::fake::FakeEngine,
    ) -> Client {
        let client = builder.build().expect("valid options");
        *client.shared.fake.lock().unwrap_or_else(|e| e.into_inner()) = Some(fake.clone());
        client
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("identifier", &self.shared.identifier)
            .field("options", &self.shared.options)
            .finish()
    }
}

/// 22 random alphanumerics, the MQTT 3.1 maximum length, as paho-python makes.
fn random_identifier() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    // RandomState is seeded from the OS per process and varies per instance.
    let mut bits = 0u64;
    let mut left = 0;
    while out.len() < 22 {
        if left < 6 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(bits);
            bits = h.finish();
            left = 64;
        }
        let index = (bits & 63) as usize;
        bits >>= 6;
        left -= 6;
        if index < ALPHABET.len() {
            out.push(char::from(ALPHABET[index]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_identifiers_are_22_alphanumerics_and_differ() {
        let a = random_identifier();
        let b = random_identifier();
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
