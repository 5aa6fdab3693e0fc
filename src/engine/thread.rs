//! The engine thread: one OS thread per process on which the facade makes the Paho
//! calls that can block.
//!
//! Paho C serialises every call on one process-wide mutex, which its own threads hold
//! while they resolve a host name or wait for an HTTP proxy (ENGINE.md 11, 21). A call
//! made from an async worker could then stall the runtime; one made from a fresh
//! blocking thread per call piles up threads while the mutex is held. Since Paho
//! serialises these calls anyway, running them one after another on one thread costs
//! nothing and keeps the thread count flat. Client creation, connect and destroy all
//! run here too, so they never interleave (Paho's global state is set up by its first
//! create and torn down by its last destroy).
//!
//! Jobs only call Paho and hand back results; they never take a lock of ours.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Mutex, OnceLock};

use tokio::sync::oneshot;

use crate::Error;

type Job = Box<dyn FnOnce() + Send>;

static QUEUE: OnceLock<Result<Mutex<Sender<Job>>, String>> = OnceLock::new();

fn queue() -> Result<&'static Mutex<Sender<Job>>, Error> {
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("aiomqtt-engine".to_owned())
            .spawn(move || {
                crate::logging::defer_on_this_thread();
                for job in rx {
                    // A job never panics by design; if one did, the thread must live on
                    // for every other client of the process.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| e.to_string())
    });
    queue.as_ref().map_err(|e| {
        Error::Io(std::io::Error::other(format!(
            "cannot start the engine thread: {e}"
        )))
    })
}

/// Runs `job` on the engine thread; the receiver gets its result.
pub(crate) fn submit<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<oneshot::Receiver<T>, Error> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(job());
    });
    let sender = queue()?.lock().unwrap_or_else(|e| e.into_inner());
    sender
        .send(job)
        .map_err(|_| Error::Io(std::io::Error::other("the engine thread has stopped")))?;
    Ok(rx)
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const CANCELLED: u8 = 2;

/// Lets the submitter of a job withdraw it while it has not started.
#[derive(Clone)]
pub(crate) struct Withdraw(Arc<AtomicU8>);

impl Withdraw {
    /// `true` if the job will never run; `false` if it has started (its effect,
    /// e.g. a message handed to Paho, may happen).
    pub(crate) fn withdraw(&self) -> bool {
        self.0
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// [`submit`] for a job the caller may give up on before it starts.
pub(crate) fn submit_withdrawable<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<(oneshot::Receiver<T>, Withdraw), Error> {
    let state = Arc::new(AtomicU8::new(QUEUED));
    let withdraw = Withdraw(state.clone());
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        if state
            .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let _ = tx.send(job());
        }
    });
    let sender = queue()?.lock().unwrap_or_else(|e| e.into_inner());
    sender
        .send(job)
        .map_err(|_| Error::Io(std::io::Error::other("the engine thread has stopped")))?;
    Ok((rx, withdraw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_in_order_and_withdrawn_ones_never() {
        let first = submit(|| std::thread::current().name().map(str::to_owned)).unwrap();
        let (second, withdraw) = submit_withdrawable(|| 2).unwrap();
        let withdrawn = withdraw.withdraw();
        let third = submit(|| 3).unwrap();
        assert_eq!(
            first.blocking_recv().unwrap().as_deref(),
            Some("aiomqtt-engine")
        );
        assert_eq!(third.blocking_recv().unwrap(), 3);
        if withdrawn {
            assert!(second.blocking_recv().is_err(), "withdrawn: never ran");
        } else {
            assert_eq!(second.blocking_recv().unwrap(), 2);
        }
    }
}
