//! Keeping Paho's keep-alive checks frequent enough for every client.
//!
//! Paho C checks keep-alives on a process-wide timer whose period every
//! `MQTTAsync_connect` overwrites with that connect's keepalive / 10, clamped to
//! 100 ms..5 s (`setRetryLoopInterval`, called from `MQTTAsync_connect`; Paho C 1.3.16).
//! So once a client with a 60 s keepalive connects, a 2 s client is checked only every
//! 5 s, misses its PINGREQ and is dropped by the broker. Every engine registers its
//! keepalive; after each connect the engine thread sets the period from the smallest.
//!
//! The registry's lock is a leaf: Paho is called after it is released.

use std::sync::{Mutex, MutexGuard};

/// Keepalives (seconds) of this process's engines.
static LIVE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<u16>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One engine's keepalive, counted while alive; 0 (keep-alive off) is not counted.
pub(crate) struct Registration(u16);

impl Registration {
    pub(crate) fn new(keepalive: u16) -> Registration {
        if keepalive != 0 {
            lock().push(keepalive);
        }
        Registration(keepalive)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.0 == 0 {
            return;
        }
        let mut live = lock();
        if let Some(i) = live.iter().position(|&k| k == self.0) {
            live.swap_remove(i);
        }
    }
}

/// Sets Paho's check period from the smallest registered keepalive. Called on the
/// engine thread after each `MQTTAsync_connect`, which resets it.
pub(crate) fn apply() {
    let smallest = lock().iter().min().copied();
    if let Some(smallest) = smallest {
        super::shim::set_retry_loop_interval(smallest);
    }
}
