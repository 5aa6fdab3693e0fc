//! Keeping Paho's keep-alive checks frequent enough for every client.
//!
//! Paho C checks keep-alives on a process-wide timer whose period every
//! `MQTTAsync_connect` overwrites with that connect's keepalive / 10, clamped to
//! 100 ms..5 s (`setRetryLoopInterval`, called from `MQTTAsync_connect`; Paho C 1.3.16).
//! So once a client with a 60 s keepalive connects, a 2 s client is checked only every
//! 5 s, misses its PINGREQ and is dropped by the broker. Every engine registers its
//! keepalive; after each connect the engine thread sets the period from the smallest.
//! On MQTT 5 the broker may set a connection's keep-alive in its CONNACK (Server Keep
//! Alive), which Paho C then uses until the next connect: that value is registered in
//! place of the requested one.
//!
//! The registry's lock is a leaf: Paho is called after it is released.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Keepalives (seconds) of this process's engines.
static LIVE: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn lock() -> MutexGuard<'static, Vec<u16>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// One engine's keepalive, counted while alive; 0 (keep-alive off) is not counted.
pub(crate) struct Registration(AtomicU16);

impl Registration {
    pub(crate) fn new(keepalive: u16) -> Registration {
        if keepalive != 0 {
            lock().push(keepalive);
        }
        Registration(AtomicU16::new(keepalive))
    }

    /// The keep-alive the engine's connection now uses (the broker's Server Keep Alive,
    /// or the requested one after a CONNACK without it): counted in place of the last,
    /// and the check period set again.
    pub(crate) fn set(&self, keepalive: u16) {
        let old = self.0.swap(keepalive, Ordering::AcqRel);
        if old == keepalive {
            return;
        }
        {
            let mut live = lock();
            forget(&mut live, old);
            if keepalive != 0 {
                live.push(keepalive);
            }
        }
        apply();
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let current = *self.0.get_mut();
        if current != 0 {
            forget(&mut lock(), current);
        }
    }
}

/// Removes one count of `keepalive` (0 is never counted).
fn forget(live: &mut Vec<u16>, keepalive: u16) {
    if let Some(i) = live.iter().position(|&k| k == keepalive) {
        live.swap_remove(i);
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
