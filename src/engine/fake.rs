//! A fake engine for unit tests of the facade's own state machines (the session, the
//! operations runner, the claim and release of a client): every call is recorded and
//! answered when the test says so, and losses and messages are injected through the
//! same `Events` the Paho engine reports to. No socket, no Paho, and tokio's paused
//! clock works (nothing runs on another thread): its calls are never armed, so the
//! runner's own timer and end waiter serve them.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::{Call, ConnectInfo, Driver, Events, Loss, Reply, Ticket, slot};
use crate::{Error, Properties, QoS, SubscribeOptions, Topic};

/// One call the facade made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Connect {
        clean: bool,
    },
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
    },
    Subscribe {
        filters: Vec<String>,
    },
    Unsubscribe {
        filters: Vec<String>,
    },
    Disconnect,
    CloseQuietly(u8),
}

#[derive(Default)]
struct State {
    commands: Vec<Command>,
    /// Replies to give, oldest command first.
    waiting: VecDeque<slot::Sender>,
    /// What the next connects return (default: success without a session).
    connects: VecDeque<Result<ConnectInfo, Error>>,
    /// The link of the next successful connect is lost before the connect returns.
    lose_next_connection: bool,
    events: Option<Arc<dyn Events>>,
}

/// The fake engine; clones share it.
#[derive(Clone, Default)]
pub(crate) struct FakeEngine {
    state: Arc<Mutex<State>>,
}

impl FakeEngine {
    pub(crate) fn new() -> FakeEngine {
        FakeEngine::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where losses and messages go (the client's router).
    pub(crate) fn report_to(&self, events: Arc<dyn Events>) {
        self.lock().events = Some(events);
    }

    /// Every call so far.
    pub(crate) fn commands(&self) -> Vec<Command> {
        self.lock().commands.clone()
    }

    /// How many calls of a kind were made.
    pub(crate) fn count(&self, pred: impl Fn(&Command) -> bool) -> usize {
        self.lock().commands.iter().filter(|c| pred(c)).count()
    }

    /// Answers the oldest unanswered call.
    pub(crate) fn reply(&self, reply: Reply) {
        if let Some(tx) = self.lock().waiting.pop_front() {
            tx.send(reply);
        }
    }

    /// The next connect fails with `e`.
    pub(crate) fn fail_next_connect(&self, e: Error) {
        self.lock().connects.push_back(Err(e));
    }

    /// The link of the next successful connect is lost between its CONNACK and the
    /// connect's return.
    pub(crate) fn lose_next_connection(&self) {
        self.lock().lose_next_connection = true;
    }

    /// The link is lost.
    pub(crate) fn lose(&self, loss: Loss) {
        let events = self.lock().events.clone();
        if let Some(events) = events {
            events.lost(loss);
        }
    }

    /// A message arrives.
    pub(crate) fn deliver(&self, message: crate::Message) {
        let events = self.lock().events.clone();
        if let Some(events) = events {
            events.message(message);
        }
    }

    fn record(&self, command: Command) -> Call {
        let (tx, rx) = slot::channel();
        let mut state = self.lock();
        state.commands.push(command);
        state.waiting.push_back(tx);
        Call::sent(Ok(rx.into()))
    }
}

impl Driver for FakeEngine {
    fn connect(
        &self,
        clean: bool,
        _deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<ConnectInfo, Error>> + Send + '_>> {
        let events = self.lock().events.clone();
        if let Some(events) = events {
            events.connect_started();
        }
        let (result, lose) = {
            let mut state = self.lock();
            state.commands.push(Command::Connect { clean });
            let result = state.connects.pop_front().unwrap_or(Ok(ConnectInfo {
                session_present: false,
                properties: None,
            }));
            let lose = result.is_ok() && std::mem::take(&mut state.lose_next_connection);
            (result, lose)
        };
        if lose {
            self.lose(Loss::Network(None));
        }
        Box::pin(std::future::ready(result))
    }

    fn publish(
        &self,
        topic: Topic,
        payload: Vec<u8>,
        qos: QoS,
        _retain: bool,
        _props: Option<&Properties>,
        _ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.record(Command::Publish {
            topic: topic.into_string(),
            payload,
            qos,
        })
    }

    fn subscribe(
        &self,
        filters: Vec<(String, SubscribeOptions)>,
        _props: Option<&Properties>,
        _ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.record(Command::Subscribe {
            filters: filters.into_iter().map(|(f, _)| f).collect(),
        })
    }

    fn unsubscribe(
        &self,
        filters: Vec<String>,
        _props: Option<&Properties>,
        _ticket: Option<&Ticket<'_>>,
    ) -> Call {
        self.record(Command::Unsubscribe { filters })
    }

    fn disconnect(&self) -> Call {
        self.record(Command::Disconnect)
    }

    fn close_quietly(&self, reason: u8) {
        self.lock().commands.push(Command::CloseQuietly(reason));
    }

    fn tls_errors(&self) -> Vec<String> {
        Vec::new()
    }
}
