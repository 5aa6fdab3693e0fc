//! Keeping Paho's keep-alive checks frequent enough for every connection.
//!
//! Paho C checks keep-alives on a process-wide timer whose period each
//! `MQTTAsync_connect` overwrites with that connect's keepalive / 10, clamped to
//! 100 ms..5 s (`setRetryLoopInterval`, MQTTAsyncUtils.c; called from
//! MQTTAsync.c `MQTTAsync_connect`). So once a client with a 60 s keepalive
//! connects, a 2 s client is checked only every 5 s, misses its PINGREQ and is
//! dropped by the broker. The facade registers every live connection's keepalive
//! and, after each connect and each end, sets the period from the smallest.

use std::sync::Mutex;

/// Keepalives (seconds) of this process's connections, live or connecting.
static LIVE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

#[allow(unsafe_code)]
unsafe extern "C" {
    /// Paho C's setter of the keep-alive check period (non-static in
    /// MQTTAsyncUtils.c, linked in from the bundled `libpaho-mqtt3as`).
    fn setRetryLoopInterval(keepalive: std::os::raw::c_int);
}

fn lock() -> std::sync::MutexGuard<'static, Vec<u16>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn apply(live: &[u16]) {
    if let Some(&smallest) = live.iter().min() {
        #[allow(unsafe_code)]
        // SAFETY: the function only stores an int derived from its argument in a
        // static of Paho C; it takes no pointers and is valid at any time.
        unsafe {
            setRetryLoopInterval(i32::from(smallest))
        };
    }
}

/// One connection's keepalive, counted while alive.
pub(crate) struct Registration(u16);

impl Registration {
    /// Registers `keepalive` and runs `connect` (which lets Paho overwrite the
    /// period), then sets the period from the smallest live keepalive.
    pub(crate) fn around<T>(keepalive: u16, connect: impl FnOnce() -> T) -> (Registration, T) {
        let mut live = lock();
        live.push(keepalive);
        let out = connect();
        apply(&live);
        (Registration(keepalive), out)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = lock();
        if let Some(i) = live.iter().position(|&k| k == self.0) {
            live.swap_remove(i);
        }
        apply(&live);
    }
}
