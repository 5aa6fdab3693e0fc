//! Outgoing operations: builders that implement `IntoFuture`, and the runner that
//! applies the timeout, the concurrency bound and the pending-call count.

mod publish;
mod subscribe;
mod unsubscribe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::engine::{Abandoned, Call, Claim, Driver, Replies, Ticket};
use crate::session::{Session, Subscription};
use crate::{Error, QoS};

pub use publish::Publish;
pub use subscribe::{
    Filters, IntoFilter, IntoFilters, RetainHandling, Subscribe, SubscribeOptions,
};
pub use unsubscribe::{IntoUnsubscribeFilters, Unsubscribe, UnsubscribeFilters};

/// What an operation is, for the rules that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A PUBLISH at `qos`.
    Publish {
        qos: QoS,
    },
    Subscribe,
    Unsubscribe,
}

impl Kind {
    /// What the call takes of the engine's window (see
    /// [`Admission`](crate::engine::Admission)).
    fn claim(self) -> Claim {
        match self {
            Kind::Publish { qos } => match qos {
                QoS::AtMostOnce => Claim::Nothing,
                QoS::AtLeastOnce => Claim::AtLeastOnce,
                QoS::ExactlyOnce => Claim::ExactlyOnce,
            },
            Kind::Subscribe | Kind::Unsubscribe => Claim::Place,
        }
    }
}

/// Runs one operation within `timeout` (the client's by default): waits for a
/// `max_concurrent_outgoing_calls` slot and for its turn to enter the engine (see
/// [`Admission`](crate::engine::Admission)), hands the command to the engine and waits
/// for the broker. While automatic reconnects have the link down, a publish is handed
/// over at once (Paho queues it, in order, bounded by `max_queued_outgoing_messages`, and
/// sends it after the reconnect; beyond the window plus slack it waits for its turn); a
/// subscribe or unsubscribe waits for the link.
///
/// A call that times out before the engine got it is [`Error::Timeout`]; a publish
/// that times out after is [`Error::Unacknowledged`] (it may still be delivered). A
/// call fails as soon as the connection ends only when the engine will forget it
/// ([`Session::calls_fail_at_end`]).
///
/// The wait for the broker costs no timer and no waiter on the end of its own when the
/// engine arms the call (the usual case): the call's registry entries carry a
/// [`Ticket`] with the deadline, which the engine's expiry thread enforces, and the
/// session's scope, whose close at the end fails them. Otherwise (the fake engine, or a
/// call handed over on the engine thread) the runner keeps both itself.
pub(crate) async fn run<T>(
    session: Arc<Session>,
    timeout: Option<Duration>,
    kind: Kind,
    start: impl FnOnce(&dyn Driver, Option<&Ticket<'_>>) -> Call,
    finish: impl FnOnce(Replies) -> Result<T, Error>,
) -> Result<T, Error> {
    let session = &session;
    session.check_live()?;
    let deadline = crate::deadline::after(timeout.unwrap_or(session.options.timeout));
    let _slot = match &session.calls.slots {
        Some(slots) => Some(Box::pin(acquire_slot(session, slots, deadline)).await?),
        None => None,
    };
    // A call that was made before the end and waited for a slot fails as its
    // connection did (an end in progress finishes without waiting on anything).
    if session.is_ending() {
        return Err(session.ended().await);
    }
    let _pending = session.enter_call();
    if session.reconnects() && !session.is_up() && !matches!(kind, Kind::Publish { .. }) {
        Box::pin(wait_for_link(session, deadline)).await?;
    }
    // The call's place in the engine's window plus slack: held until the call's commands
    // are registered (their entries hold places until Paho reports them), or until the
    // call ends when they are not (the engine thread hands them over).
    let claim = kind.claim();
    let mut admitted = match session.admission.enter(claim) {
        Ok(admitted) => admitted,
        Err(queued) => {
            let admitted = Box::pin(before_deadline_or_end(session, deadline, queued)).await?;
            // Admitted as its time ran out: not handed over, so that it ends as what it is,
            // a call never sent.
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            admitted
        }
    };
    let fail_at_end = session.calls_fail_at_end();
    let call = {
        let ticket = Ticket::new(
            deadline.into_std(),
            fail_at_end.then_some(&session.scope),
            Some((&session.admission, claim)),
        );
        start(session.engine.as_ref(), ticket.as_ref())
    };
    admitted.handed_over(call.is_armed());
    let replies = if call.is_armed() {
        // The registry ends the wait at the deadline, and with the connection when calls
        // fail at its end: no timer and no waiter on the end per call.
        match call.await {
            Err(Error::Timeout) => Err(timed_out(kind, Abandoned::MaybeSent)),
            replies => replies,
        }
    } else {
        // Boxed: rare, and its timer and waiter would enlarge every call's future.
        Box::pin(wait_unarmed(session, deadline, call, kind, fail_at_end)).await
    };
    // A call that ran out of time says so, even if the connection has ended meanwhile.
    if let Err(e @ (Error::Timeout | Error::Unacknowledged)) = replies {
        return Err(e);
    }
    let result = replies.and_then(finish);
    // When the broker ends the session, Paho reports the end first and fails the
    // pending calls after: the end's cause (e.g. the broker's DISCONNECT reason code)
    // says more than "operation incomplete". A reason code about this very call is kept.
    match result {
        Err(e) if fail_at_end && session.is_ended() && !matches!(e, Error::Code(_)) => {
            Err(session.end_error())
        }
        // Paho learnt that the link was gone before the loss reached this session: the
        // session's end is on its way, and says why.
        Err(Error::NotConnected) if fail_at_end => {
            match Box::pin(tokio::time::timeout_at(deadline, session.ended())).await {
                Ok(cause) => Err(cause),
                Err(_) => Err(Error::NotConnected),
            }
        }
        result => result,
    }
}

/// Waits for a call the engine did not arm, until `deadline` or (with `fail_at_end`) the
/// connection's end.
async fn wait_unarmed(
    session: &Session,
    deadline: Instant,
    mut call: Call,
    kind: Kind,
    fail_at_end: bool,
) -> Result<Replies, Error> {
    tokio::select! {
        biased;
        replies = tokio::time::timeout_at(deadline, &mut call) => match replies {
            Ok(replies) => replies,
            Err(_) => Err(timed_out(kind, call.abandon())),
        },
        cause = session.ended(), if fail_at_end => Err(cause),
    }
}

/// The error of a call whose deadline passed: a publish that Paho may still send is
/// [`Error::Unacknowledged`].
fn timed_out(kind: Kind, abandoned: Abandoned) -> Error {
    match (abandoned, kind) {
        (Abandoned::MaybeSent, Kind::Publish { .. }) => Error::Unacknowledged,
        _ => Error::Timeout,
    }
}

/// Awaits `wait` until `deadline` ([`Error::Timeout`]) or the connection's end (its
/// error), whichever comes first: the waits of a call before it reaches the engine.
async fn before_deadline_or_end<F: Future>(
    session: &Session,
    deadline: Instant,
    wait: F,
) -> Result<F::Output, Error> {
    tokio::select! {
        out = tokio::time::timeout_at(deadline, wait) => out.map_err(|_| Error::Timeout),
        cause = session.ended() => Err(cause),
    }
}

/// Waits for a `max_concurrent_outgoing_calls` slot, within `deadline`.
async fn acquire_slot<'a>(
    session: &Session,
    slots: &'a tokio::sync::Semaphore,
    deadline: Instant,
) -> Result<tokio::sync::SemaphorePermit<'a>, Error> {
    // The semaphore is never closed.
    before_deadline_or_end(session, deadline, slots.acquire())
        .await?
        .map_err(|_| Error::NotConnected)
}

/// Waits for the link to come back (automatic reconnects), within `deadline`.
async fn wait_for_link(session: &Session, deadline: Instant) -> Result<(), Error> {
    let mut link = session.link();
    before_deadline_or_end(session, deadline, link.wait_for(|l| l.up.is_some()))
        .await?
        .map(|_| ())
        .map_err(|_| Error::NotConnected)
}

/// Subscribes again after a reconnect found no session (the supervisor's own call,
/// outside the runner: the link is not up yet).
pub(crate) async fn resubscribe(
    session: &Session,
    sub: &Subscription,
    deadline: Instant,
) -> Result<Vec<crate::ReasonCode>, Error> {
    let n = sub.filters.len();
    let call = session
        .engine
        .subscribe(sub.filters.clone(), sub.properties.as_ref(), None);
    match tokio::time::timeout_at(deadline, call).await {
        Ok(replies) => crate::engine::subscribe_result(
            replies?,
            n,
            session.options.protocol == crate::ProtocolVersion::V5,
        ),
        Err(_) => Err(Error::Timeout),
    }
}

/// Properties are an MQTT 5 feature; on 3.x they are refused, not ignored.
pub(crate) fn check_v5(session: &Session, what: &str) -> Result<(), Error> {
    if session.options.protocol == crate::ProtocolVersion::V5 {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!("{what} need MQTT 5")))
    }
}
