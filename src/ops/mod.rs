//! Outgoing operations: builders that implement `IntoFuture`, and the runner
//! that applies the timeout, the concurrency bound and the pending-call count.

mod publish;
mod subscribe;
mod unsubscribe;

use std::future::Future;
use std::time::Duration;

use crate::Error;
use crate::engine::{self, Engine};
use crate::session::Session;

pub use publish::Publish;
pub use subscribe::{
    Filters, IntoFilter, IntoFilters, RetainHandling, Subscribe, SubscribeOptions,
};
pub use unsubscribe::{IntoUnsubscribeFilters, Unsubscribe, UnsubscribeFilters};

/// Runs one operation: waits for a `max_concurrent_outgoing_calls` slot, starts
/// it on the engine, and waits for the broker — all within `timeout` — failing
/// at once if the connection ends first.
pub(crate) async fn run<T, F>(
    session: &Session,
    timeout: Option<Duration>,
    start: impl FnOnce(&Engine) -> Result<F, Error> + Send + 'static,
) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
{
    session.check_live()?;
    let timeout = timeout.unwrap_or(session.options.timeout);
    let work = async {
        let _slot = match &session.calls.slots {
            Some(slots) => Some(slots.acquire().await.map_err(|_| Error::NotConnected)?),
            None => None,
        };
        session.check_live()?;
        let _pending = session.enter_call();
        let operation = if engine::connect_in_flight() {
            // Paho's global mutex may be held for seconds: wait on a blocking
            // thread, so this call's timeout still applies.
            let engine = session.engine.clone();
            tokio::task::spawn_blocking(move || start(&engine))
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))??
        } else {
            start(&session.engine)?
        };
        let result = tokio::select! {
            biased;
            result = operation => result,
            cause = session.ended() => Err(cause),
        };
        // When the broker ends the session, Paho reports the end first and fails
        // the pending calls after: the end's cause (e.g. the broker's DISCONNECT
        // reason code) says more than the engine's "operation incomplete".
        // A reason code from the broker about this very call is kept.
        match result {
            Err(e) if session.is_ended() && !matches!(e, Error::Code(_)) => {
                Err(session.end_error())
            }
            result => result,
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
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
