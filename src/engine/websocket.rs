//! One WebSocket connection per process.
//!
//! Paho C keeps its WebSocket frame state in process-wide statics
//! (WebSocket.c: `last_frame`, `in_frames`, `frame_buffer`, ...), so two
//! WebSocket connections alive at once corrupt each other's frames and drop
//! within a few messages. Rather than let that happen, a second one is refused.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::Error;

static LIVE: AtomicBool = AtomicBool::new(false);

/// Held by the one live (or connecting) WebSocket connection of the process.
pub(crate) struct WebSocketClaim(());

impl WebSocketClaim {
    pub(crate) fn take() -> Result<WebSocketClaim, Error> {
        if LIVE.swap(true, Ordering::AcqRel) {
            return Err(Error::Unsupported {
                option: "transport",
                reason: "a second WebSocket connection at once: Paho C keeps WebSocket frame state \
                         in process-wide statics (WebSocket.c in_frames, last_frame, frame_buffer), \
                         so two would corrupt each other; end the other one first",
            });
        }
        Ok(WebSocketClaim(()))
    }
}

impl Drop for WebSocketClaim {
    fn drop(&mut self) {
        LIVE.store(false, Ordering::Release);
    }
}
