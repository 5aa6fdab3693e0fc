//! Where one command's [`Reply`] is left for the caller that awaits it.
//!
//! A one-reply channel like tokio's oneshot, but outside tokio's cooperative budget. The
//! oneshot spends a unit of its task's budget on every poll, so a task awaiting many calls
//! at once (a `FuturesUnordered` of a thousand QoS 0 publishes, whose replies come in
//! bursts) runs out of budget: its receivers then return `Pending` though their replies
//! are there, and the task goes back through the scheduler to poll them again. A call
//! needs no budget — it is ready once, on a wake-up of its own — and without it that
//! stream costs about 3,200 fewer instructions per message (BENCHMARKS.md, C7).
//!
//! The state sits behind a mutex that neither side holds while it wakes or is woken:
//! Paho's callback leaves the reply and takes the waker, the caller's poll takes the
//! reply or leaves its waker. A sender dropped without a reply closes the slot.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use super::registry::Reply;

/// A new slot: the sending half for the registry, the receiving half for the call.
pub(crate) fn channel() -> (Sender, Receiver) {
    let shared = Arc::new(Mutex::new(State::Waiting(None)));
    (Sender(Some(shared.clone())), Receiver(shared))
}

enum State {
    /// No reply yet; the waker of the last poll.
    Waiting(Option<Waker>),
    Ready(Reply),
    /// The reply was taken, or the sender dropped without one.
    Closed,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // Only a state's replacement runs under the lock (and a waker's clone): a poisoned
    // lock holds a whole state.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Leaves the reply (once); dropped without one, closes the slot.
#[derive(Debug)]
pub(crate) struct Sender(Option<Shared>);

impl Sender {
    /// Leaves `reply` for the receiver and wakes it (a receiver that is gone drops it).
    pub(crate) fn send(mut self, reply: Reply) {
        if let Some(shared) = self.0.take() {
            fill(&shared, State::Ready(reply));
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if let Some(shared) = self.0.take() {
            fill(&shared, State::Closed);
        }
    }
}

/// Ends the wait with `with` (a reply, or closed), unless it has ended.
fn fill(shared: &Shared, with: State) {
    let waiting = {
        let mut state = lock(shared);
        match &mut *state {
            State::Waiting(waker) => {
                let waker = waker.take();
                *state = with;
                waker
            }
            State::Ready(_) | State::Closed => None,
        }
    };
    if let Some(waker) = waiting {
        waker.wake();
    }
}

/// Keeps `waker` in `kept` for the next wake-up, unless the one there wakes the same task;
/// returns the one it replaced, for its caller to drop once its lock is released (a waker's
/// drop runs the executor's code).
pub(super) fn keep_waker(kept: &mut Option<Waker>, waker: &Waker) -> Option<Waker> {
    match kept {
        Some(w) if w.will_wake(waker) => None,
        _ => kept.replace(waker.clone()),
    }
}

/// The sender was dropped without a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closed;

/// Awaits the reply.
#[derive(Debug)]
pub(crate) struct Receiver(Shared);

impl Receiver {
    /// The reply if it is there: `Ok(None)` while there is none yet.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Option<Reply>, Closed> {
        let mut state = lock(&self.0);
        match std::mem::replace(&mut *state, State::Closed) {
            State::Ready(reply) => Ok(Some(reply)),
            State::Closed => Err(Closed),
            waiting @ State::Waiting(_) => {
                *state = waiting;
                Ok(None)
            }
        }
    }
}

impl Future for Receiver {
    type Output = Result<Reply, Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = lock(&self.0);
        match std::mem::replace(&mut *state, State::Closed) {
            State::Ready(reply) => Poll::Ready(Ok(reply)),
            State::Closed => Poll::Ready(Err(Closed)),
            State::Waiting(mut last) => {
                let stale = keep_waker(&mut last, cx.waker());
                *state = State::Waiting(last);
                // A waker's own code runs outside the lock, as in `fill`.
                drop(state);
                drop(stale);
                Poll::Pending
            }
        }
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Waiting(_) => f.write_str("Waiting"),
            State::Ready(reply) => f.debug_tuple("Ready").field(reply).finish(),
            State::Closed => f.write_str("Closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Response;
    use crate::engine::test_waker::counting;

    fn poll(rx: &mut Receiver, waker: &Waker) -> Poll<Result<Reply, Closed>> {
        Pin::new(rx).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_reply_wakes_the_last_poll_once_and_is_taken_once() {
        let (woken, waker) = counting();
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &waker).is_pending());
        assert!(poll(&mut rx, &waker).is_pending());
        assert!(matches!(rx.try_recv(), Ok(None)));
        tx.send(Reply::Done(Response::default()));
        assert_eq!(woken.get(), 1);
        assert!(matches!(
            poll(&mut rx, &waker),
            Poll::Ready(Ok(Reply::Done(_)))
        ));
        assert!(matches!(poll(&mut rx, &waker), Poll::Ready(Err(Closed))));
    }

    #[test]
    fn a_sender_dropped_without_a_reply_closes_the_slot() {
        let (woken, waker) = counting();
        let (tx, mut rx) = channel();
        assert!(poll(&mut rx, &waker).is_pending());
        drop(tx);
        assert_eq!(woken.get(), 1);
        assert!(matches!(poll(&mut rx, &waker), Poll::Ready(Err(Closed))));

        // A reply left before any poll, and a receiver gone before the reply.
        let (tx, mut rx) = channel();
        tx.send(Reply::Ended);
        assert!(matches!(rx.try_recv(), Ok(Some(Reply::Ended))));
        let (tx, rx) = channel();
        drop(rx);
        tx.send(Reply::Expired);
    }

    #[tokio::test]
    async fn a_task_takes_every_reply_that_is_there_in_one_poll() {
        // tokio's oneshot would answer `Pending` after its task's budget (128 polls).
        let mut receivers: Vec<Receiver> = (0..1000)
            .map(|_| {
                let (tx, rx) = channel();
                tx.send(Reply::Ended);
                rx
            })
            .collect();
        let ready = std::future::poll_fn(|cx| {
            let ready = receivers
                .iter_mut()
                .map(|rx| Pin::new(rx).poll(cx))
                .filter(Poll::is_ready)
                .count();
            Poll::Ready(ready)
        })
        .await;
        assert_eq!(ready, 1000);
    }

    #[test]
    fn a_reply_from_another_thread_reaches_a_blocked_waiter() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || tx.send(Reply::Ended));
        assert!(matches!(futures::executor::block_on(rx), Ok(Reply::Ended)));
        sender.join().unwrap();
    }
}
