//! The connection's incoming message queue and the [`Messages`] stream over it.
//!
//! The engine's callback only pushes here (never blocks, never calls back into
//! Paho); users pop from their own tasks. One queue per connection, shared by
//! every `Messages` handle: each message goes to exactly one of them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_core::Stream;

use crate::connection::ConnectionHandle;
use crate::{Error, Message, QueueType};

/// A priority queue's key function.
type KeyFn = fn(&Message) -> i64;

/// Arrivals of a priority queue, with their arrival numbers, waiting to be keyed.
type Unkeyed = VecDeque<(u64, Message)>;

/// Queue storage in the order `QueueType` asks for.
enum Store {
    Fifo(VecDeque<Message>),
    Lifo(Vec<Message>),
    /// The user's key function runs on the consumer's task, never in `push` (which runs
    /// on Paho's thread under its global mutex): arrivals wait in `inbox` until a
    /// consumer keys them.
    Priority {
        key: KeyFn,
        heap: BinaryHeap<Reverse<Keyed>>,
        inbox: Unkeyed,
        seq: u64,
    },
}

/// A message with its priority key; ties broken by arrival order.
struct Keyed {
    key: i64,
    seq: u64,
    message: Message,
}

impl PartialEq for Keyed {
    fn eq(&self, other: &Self) -> bool {
        (self.key, self.seq) == (other.key, other.seq)
    }
}
impl Eq for Keyed {}
impl PartialOrd for Keyed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Keyed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.key, self.seq).cmp(&(other.key, other.seq))
    }
}

impl Store {
    fn new(kind: QueueType) -> Self {
        match kind {
            QueueType::Fifo => Store::Fifo(VecDeque::new()),
            QueueType::Lifo => Store::Lifo(Vec::new()),
            QueueType::Priority(key) => Store::Priority {
                key,
                heap: BinaryHeap::new(),
                inbox: VecDeque::new(),
                seq: 0,
            },
        }
    }
    fn len(&self) -> usize {
        match self {
            Store::Fifo(q) => q.len(),
            Store::Lifo(q) => q.len(),
            Store::Priority { heap, inbox, .. } => heap.len() + inbox.len(),
        }
    }
    fn push(&mut self, message: Message) {
        match self {
            Store::Fifo(q) => q.push_back(message),
            Store::Lifo(q) => q.push(message),
            Store::Priority { inbox, seq, .. } => {
                *seq += 1;
                inbox.push_back((*seq, message));
            }
        }
    }
    /// Arrivals still to be keyed, with the key function (priority queues only).
    fn take_unkeyed(&mut self) -> Option<(KeyFn, Unkeyed)> {
        match self {
            Store::Priority { key, inbox, .. } if !inbox.is_empty() => {
                Some((*key, std::mem::take(inbox)))
            }
            _ => None,
        }
    }
    fn insert_keyed(&mut self, keyed: Vec<Keyed>) {
        if let Store::Priority { heap, .. } = self {
            heap.extend(keyed.into_iter().map(Reverse));
        }
    }
    fn pop(&mut self) -> Option<Message> {
        match self {
            Store::Fifo(q) => q.pop_front(),
            Store::Lifo(q) => q.pop(),
            Store::Priority { heap, .. } => heap.pop().map(|Reverse(k)| k.message),
        }
    }
}

/// What the stream yields once the queue is drained after the connection ended.
enum End {
    /// Still connected.
    Open,
    /// Ended; the first consumer to find the queue empty gets this cause.
    Ended(Error),
    /// The error was handed out; everyone gets `None` now.
    Finished,
}

/// The waiting handles a change of the queue wakes, once its lock is released.
///
/// A change wakes every waiting handle, not one: a handle cannot withdraw its wait (a
/// stream's `next()` future can be dropped, or its task stop polling it, without the
/// stream knowing), so a message meant for one handle alone could sit in the queue
/// while another handle waits. Those that find nothing wait again.
enum Wake {
    None,
    One(Waker),
    All(VecDeque<(u64, Waker)>),
}

impl Wake {
    /// Takes every waiting handle; one alone without giving up the list's allocation.
    fn everyone(waiting: &mut VecDeque<(u64, Waker)>) -> Wake {
        match waiting.len() {
            0 => Wake::None,
            1 => waiting
                .pop_front()
                .map_or(Wake::None, |(_, waker)| Wake::One(waker)),
            _ => Wake::All(std::mem::take(waiting)),
        }
    }

    fn wake(self) {
        match self {
            Wake::None => {}
            Wake::One(waker) => waker.wake(),
            Wake::All(waiting) => waiting.into_iter().for_each(|(_, w)| w.wake()),
        }
    }
}

struct State {
    store: Store,
    end: End,
    /// The `Messages` handles waiting for a message, in the order they started waiting.
    waiting: VecDeque<(u64, Waker)>,
    /// Messages taken out to be keyed (priority queues), still counted in `len`.
    keying: usize,
}

/// The shared queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    limit: Option<usize>,
    discarded: AtomicU64,
    next_handle: AtomicU64,
    logger: Arc<str>,
}

impl Queue {
    pub(crate) fn new(kind: QueueType, limit: Option<usize>, logger: Arc<str>) -> Self {
        Queue {
            state: Mutex::new(State {
                store: Store::new(kind),
                end: End::Open,
                waiting: VecDeque::new(),
                keying: 0,
            }),
            limit,
            discarded: AtomicU64::new(0),
            next_handle: AtomicU64::new(0),
            logger,
        }
    }

    /// A leaf lock: no user code and no engine call runs under it. Poisoning cannot
    /// leave the queue inconsistent (every mutation is one call), so a poisoned lock
    /// is simply taken over.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called on Paho's thread: never blocks beyond the short lock, runs no user code,
    /// and wakes the waiting consumers (see [`Wake`]).
    pub(crate) fn push(&self, message: Message) {
        let mut state = self.lock();
        if !matches!(state.end, End::Open) {
            return;
        }
        if self
            .limit
            .is_some_and(|limit| state.store.len() + state.keying >= limit)
        {
            drop(state);
            self.discarded.fetch_add(1, Ordering::Relaxed);
            crate::logging::log_warn!(target: &self.logger, "Message queue is full. Discarding message.");
            return;
        }
        state.store.push(message);
        // Woken after the lock is released: a wake can run the reader at once on another
        // core, which would otherwise find the lock still held by this (Paho's) thread.
        let wake = Wake::everyone(&mut state.waiting);
        drop(state);
        wake.wake();
    }

    /// Marks the end of the connection; queued messages stay readable. Wakes everyone.
    pub(crate) fn close(&self, cause: Error) {
        let wake = {
            let mut state = self.lock();
            if !matches!(state.end, End::Open) {
                return;
            }
            state.end = End::Ended(cause);
            Wake::everyone(&mut state.waiting)
        };
        wake.wake();
    }

    /// Takes every queued message out, oldest first (a connection that never started,
    /// whose messages go to the next one). Messages a consumer is keying stay with it.
    pub(crate) fn take_all(&self) -> Vec<Message> {
        let mut state = self.lock();
        match &mut state.store {
            Store::Fifo(q) => q.drain(..).collect(),
            Store::Lifo(q) => std::mem::take(q),
            Store::Priority { heap, inbox, .. } => {
                let mut all: Vec<(u64, Message)> = std::mem::take(heap)
                    .into_iter()
                    .map(|Reverse(k)| (k.seq, k.message))
                    .chain(std::mem::take(inbox))
                    .collect();
                all.sort_by_key(|(seq, _)| *seq);
                all.into_iter().map(|(_, m)| m).collect()
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        let state = self.lock();
        state.store.len() + state.keying
    }

    pub(crate) fn discarded(&self) -> u64 {
        self.discarded.load(Ordering::Relaxed)
    }

    /// Keys the arrivals of a priority queue outside the lock, on the consumer's task.
    fn key_arrivals(&self) {
        let Some((key, unkeyed)) = ({
            let mut state = self.lock();
            let taken = state.store.take_unkeyed();
            if let Some((_, batch)) = &taken {
                state.keying += batch.len();
            }
            taken
        }) else {
            return;
        };
        // Restores the count and wakes consumers even if the user's key function panics
        // (the panic goes on in the consumer's task; the batch is lost with it).
        struct Keying<'a> {
            queue: &'a Queue,
            n: usize,
            keyed: Vec<Keyed>,
        }
        impl Drop for Keying<'_> {
            fn drop(&mut self) {
                let mut state = self.queue.lock();
                state.store.insert_keyed(std::mem::take(&mut self.keyed));
                state.keying -= self.n;
                let wake = Wake::everyone(&mut state.waiting);
                drop(state);
                wake.wake();
            }
        }
        let mut keying = Keying {
            queue: self,
            n: unkeyed.len(),
            keyed: Vec::with_capacity(unkeyed.len()),
        };
        for (seq, message) in unkeyed {
            keying.keyed.push(Keyed {
                key: key(&message),
                seq,
                message,
            });
        }
    }

    fn poll_next(&self, id: u64, cx: &mut Context<'_>) -> Poll<Option<Result<Message, Error>>> {
        self.key_arrivals();
        let mut state = self.lock();
        if let Some(message) = state.store.pop() {
            // Polled for another reason than its wake-up: its wait is over.
            if let Some(at) = state.waiting.iter().position(|(h, _)| *h == id) {
                state.waiting.remove(at);
            }
            return Poll::Ready(Some(Ok(message)));
        }
        // While another consumer keys arrivals, the end is not reported yet: it wakes
        // a waiter once they are in the queue.
        if state.keying == 0 {
            match std::mem::replace(&mut state.end, End::Finished) {
                End::Ended(cause) => {
                    return Poll::Ready(Some(Err(Error::Disconnected(Box::new(cause)))));
                }
                End::Finished => return Poll::Ready(None),
                End::Open => state.end = End::Open,
            }
        }
        match state.waiting.iter_mut().find(|(h, _)| *h == id) {
            Some((_, waker)) => waker.clone_from(cx.waker()),
            None => state.waiting.push_back((id, cx.waker().clone())),
        }
        Poll::Pending
    }

    /// A handle went away: its wait with it.
    fn forget(&self, id: u64) {
        self.lock().waiting.retain(|(h, _)| *h != id);
    }
}

/// The stream of incoming messages of a connection (aiomqtt's `client.messages`).
///
/// Several `Messages` of one connection share its queue: each message goes to
/// exactly one of them. When the connection ends, the messages already queued are
/// still yielded, then one `Err(Error::Disconnected(cause))` — to whichever handle
/// finds the queue empty first — and then `None`.
///
/// A `Messages` keeps its connection open, as a [`Connection`](crate::Connection)
/// clone does.
pub struct Messages {
    handle: Arc<ConnectionHandle>,
    id: u64,
}

impl Messages {
    pub(crate) fn new(handle: Arc<ConnectionHandle>) -> Self {
        let id = handle
            .session
            .queue
            .next_handle
            .fetch_add(1, Ordering::Relaxed);
        Messages { handle, id }
    }

    /// The number of messages waiting in the queue.
    pub fn len(&self) -> usize {
        self.handle.session.queue.len()
    }

    /// `true` when no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Stream for Messages {
    type Item = Result<Message, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.handle.session.queue.poll_next(self.id, cx)
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        self.handle.session.queue.forget(self.id);
    }
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages")
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{QoS, Topic};
    use std::task::Wake;

    /// A waker that records whether the queue's lock was free when it was woken.
    struct Probe {
        queue: Arc<Queue>,
        lock_was_free: Mutex<Option<bool>>,
    }

    impl Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            let free = self.queue.state.try_lock().is_ok();
            *self.lock_was_free.lock().unwrap() = Some(free);
        }
    }

    /// The engine's thread wakes a waiting reader only after it released the queue:
    /// a reader woken on another core would otherwise find the lock held and block.
    #[test]
    fn a_push_wakes_the_reader_after_releasing_the_lock() {
        let queue = Arc::new(Queue::new(QueueType::Fifo, None, Arc::from("test")));
        let probe = Arc::new(Probe {
            queue: queue.clone(),
            lock_was_free: Mutex::new(None),
        });
        let waker = Waker::from(probe.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(queue.poll_next(1, &mut cx).is_pending());
        queue.push(Message {
            topic: Topic::new("t").unwrap(),
            payload: b"x".to_vec(),
            qos: QoS::AtMostOnce,
            retain: false,
            mid: 0,
            properties: None,
        });
        assert_eq!(*probe.lock_was_free.lock().unwrap(), Some(true));
        queue.forget(1);
    }
}
