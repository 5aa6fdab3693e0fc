//! The end of a connection: decided once, then seen by everyone.
//!
//! Ending takes two steps so that side effects come before anyone can observe the end:
//! the one caller that wins [`End::begin`] frees the client, closes the queue and so on,
//! then [`End::finish`] makes the end visible and wakes every waiter. Whoever sees it
//! (`is_ended()`, a waiter of [`End::wait`]) can rely on those effects, e.g. call
//! `connect()` again at once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use crate::{Error, ReasonCode};

/// Why a connection ended.
#[derive(Debug, Clone)]
pub(crate) enum EndCause {
    /// Lost: by the network, or a DISCONNECT from the broker (with its code).
    Lost {
        rc: Option<ReasonCode>,
        detail: String,
    },
    /// The broker broke the protocol; the client closed the connection.
    Protocol(String),
    /// Closed by this client (`disconnect()` or the last handle dropped).
    Closed,
}

impl EndCause {
    /// The error of a call that finds the connection ended.
    pub(crate) fn to_error(&self) -> Error {
        match self {
            EndCause::Lost { rc, detail } => Error::ConnectionLost {
                rc: *rc,
                detail: detail.clone(),
            },
            EndCause::Protocol(what) => Error::Protocol(what.clone()),
            EndCause::Closed => Error::NotConnected,
        }
    }

    /// The cause inside the stream's `Err(Error::Disconnected(cause))`.
    pub(crate) fn to_stream_error(&self) -> Error {
        match self {
            EndCause::Closed => Error::Closed,
            other => other.to_error(),
        }
    }
}

/// The end signal of one connection.
///
/// Waiting is kept cheap: the cause is read without a lock, and a waiter costs one
/// registration with a [`Notify`] (a `watch` channel cost three times as many
/// instructions: a receiver, and a waiter on one of its eight `Notify`s picked at
/// random). Calls the engine armed do not wait here at all: the session's registry
/// scope ends them (see `ops::run`).
pub(crate) struct End {
    claimed: AtomicBool,
    cause: OnceLock<EndCause>,
    ended: Notify,
}

impl End {
    pub(crate) fn new() -> End {
        End {
            claimed: AtomicBool::new(false),
            cause: OnceLock::new(),
            ended: Notify::new(),
        }
    }

    /// `true` for the one caller that gets to end the connection.
    pub(crate) fn begin(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// `true` once [`begin`](End::begin) was won, before the end is visible.
    pub(crate) fn is_ending(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Makes the end visible and wakes every waiter.
    pub(crate) fn finish(&self, cause: EndCause) {
        // Only the winner of `begin` finishes, once.
        let _ = self.cause.set(cause);
        self.ended.notify_waiters();
    }

    /// `true` once the end is visible.
    pub(crate) fn is_ended(&self) -> bool {
        self.cause.get().is_some()
    }

    /// The cause, once visible.
    pub(crate) fn cause(&self) -> Option<EndCause> {
        self.cause.get().cloned()
    }

    /// Resolves with the cause once the end is visible.
    pub(crate) async fn wait(&self) -> EndCause {
        let notified = self.ended.notified();
        tokio::pin!(notified);
        // Registered before the cause is read: `finish` sets the cause before it wakes
        // the registered waiters (the only wake-up), so the end is either seen here or
        // wakes us with the cause set.
        notified.as_mut().enable();
        if self.cause.get().is_none() {
            notified.await;
        }
        self.cause().unwrap_or(EndCause::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_winner_and_waiters_see_the_cause_after_finish() {
        let end = std::sync::Arc::new(End::new());
        let waiter = tokio::spawn({
            let end = end.clone();
            async move { end.wait().await }
        });
        assert!(end.begin());
        assert!(!end.begin(), "only once");
        assert!(
            end.is_ending() && !end.is_ended(),
            "not visible before finish"
        );
        end.finish(EndCause::Protocol("bad".into()));
        assert!(end.is_ended());
        assert!(matches!(waiter.await.unwrap(), EndCause::Protocol(w) if w == "bad"));
        assert!(
            matches!(end.wait().await, EndCause::Protocol(_)),
            "late waiters too"
        );
    }

    #[tokio::test]
    async fn every_waiter_already_waiting_is_woken_by_finish() {
        let end = End::new();
        let mut waiters: Vec<_> = (0..3).map(|_| Box::pin(end.wait())).collect();
        for w in &mut waiters {
            assert!(futures::poll!(w.as_mut()).is_pending());
        }
        assert!(end.begin());
        end.finish(EndCause::Closed);
        for w in waiters {
            assert!(matches!(
                tokio::time::timeout(std::time::Duration::from_secs(5), w).await,
                Ok(EndCause::Closed)
            ));
        }
    }
}
