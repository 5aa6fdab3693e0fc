//! The relay's own thread and runtime: relays never depend on the runtime of the
//! application (which may be single-threaded, busy, or shut down before the client).

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

use crate::Error;
use crate::engine::on_drop::OnDrop;

fn handle() -> Result<&'static Handle, Error> {
    static HANDLE: OnceLock<Result<Handle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("aiomqtt-relay".to_owned())
                .spawn(move || {
                    // It carries every relayed link of the process (see `logging`).
                    crate::logging::defer_on_this_thread();
                    runtime.block_on(std::future::pending::<()>())
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "cannot start the relay thread: {e}"
            )))
        })
}

/// Spawns `task` on the relay runtime.
pub(crate) fn spawn<F>(task: F) -> Result<tokio::task::JoinHandle<F::Output>, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    Ok(handle()?.spawn(task))
}

/// Runs `task` on the relay runtime and waits for its result (from any runtime). Dropped
/// before the result, it aborts `task`: a dial nobody waits for ends (its sockets close)
/// instead of running on to its deadline.
pub(crate) async fn run<F>(task: F) -> Result<F::Output, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let task = spawn(async move {
        let _ = tx.send(task.await);
    })?;
    let abort = task.abort_handle();
    let _abort = OnDrop::new(move || abort.abort());
    rx.await
        .map_err(|_| Error::Io(std::io::Error::other("the relay thread has stopped")))
}
